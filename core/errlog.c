/* errlog.c — capped JSONL logs of rejections, shared fairly between uids.
 *
 * Lines live in one text buffer, oldest first, so a read is a copy. With limits by
 * uid, line_uid[i] is the uid of line i; dropping a uid's oldest line from the middle
 * moves the text after it, at most the log's size (about 300 KiB for 1000 lines). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/clock.h"
#include "busfs/errlog.h"

void errlog_init(struct errlog *l, size_t cap)
{
	memset(l, 0, sizeof *l);
	buf_init(&l->text);
	l->cap = cap;
}

void errlog_limit(struct errlog *l, size_t per_uid, unsigned per_second, uid_t spared)
{
	l->per_uid = per_uid;
	l->per_second = per_second;
	l->spared = spared;
}

void errlog_free(struct errlog *l)
{
	buf_free(&l->text);
	free(l->line_uid);
	free(l->uids);
	memset(l, 0, sizeof *l);
}

/* The byte offset of line i and its length. */
static size_t line_at(const struct errlog *l, size_t i, size_t *len)
{
	size_t off = 0;
	for (size_t k = 0; k < i; k++)
		off += (size_t)((const char *)memchr(l->text.data + off, '\n', l->text.len - off) -
				(l->text.data + off)) + 1;
	const char *nl = memchr(l->text.data + off, '\n', l->text.len - off);
	*len = nl ? (size_t)(nl - (l->text.data + off)) + 1 : l->text.len - off;
	return off;
}

static struct errlog_uid *uid_entry(struct errlog *l, uid_t uid, bool make)
{
	size_t lo = 0, hi = l->nuids;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->uids[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < l->nuids && l->uids[lo].uid == uid)
		return &l->uids[lo];
	if (!make)
		return NULL;
	if (l->nuids == l->uids_cap) {
		size_t cap = l->uids_cap ? l->uids_cap * 2 : 8;
		struct errlog_uid *p = realloc(l->uids, cap * sizeof *p);
		if (!p)
			return NULL;
		l->uids = p;
		l->uids_cap = cap;
	}
	memmove(l->uids + lo + 1, l->uids + lo, (l->nuids - lo) * sizeof *l->uids);
	l->nuids++;
	memset(&l->uids[lo], 0, sizeof l->uids[lo]);
	l->uids[lo].uid = uid;
	l->uids[lo].second = INT64_MIN;
	return &l->uids[lo];
}

/* Removes line i (with limits by uid). */
static void drop_line(struct errlog *l, size_t i)
{
	size_t len, off = line_at(l, i, &len);
	memmove(l->text.data + off, l->text.data + off + len, l->text.len - off - len);
	l->text.len -= len;
	if (l->text.data)
		l->text.data[l->text.len] = '\0';
	struct errlog_uid *u = uid_entry(l, l->line_uid[i], false);
	if (u && u->lines)
		u->lines--;
	memmove(l->line_uid + i, l->line_uid + i + 1, (l->lines - i - 1) * sizeof *l->line_uid);
	l->lines--;
}

void errlog_add(struct errlog *l, const char *line, size_t len)
{
	buf_append(&l->text, line, len);
	l->lines++;
	while (l->lines > l->cap) {
		const char *nl = memchr(l->text.data, '\n', l->text.len);
		buf_consume(&l->text, nl ? (size_t)(nl - l->text.data) + 1 : l->text.len);
		l->lines--;
	}
}

/* Appends a line of uid u, then drops u's oldest beyond per_uid and the log's oldest
 * beyond cap. */
static void add_line(struct errlog *l, struct errlog_uid *u, const char *line, size_t len)
{
	if (l->lines == l->line_uid_cap) {
		size_t cap = l->line_uid_cap ? l->line_uid_cap * 2 : 64;
		uid_t *p = realloc(l->line_uid, cap * sizeof *p);
		if (!p)
			return;
		l->line_uid = p;
		l->line_uid_cap = cap;
	}
	size_t before = l->text.len;
	buf_append(&l->text, line, len);
	if (!buf_ok(&l->text)) {
		l->text.failed = false;
		l->text.len = before;
		return;
	}
	l->line_uid[l->lines++] = u->uid;
	u->lines++;
	if (u->lines > l->per_uid && u->uid != l->spared) {
		size_t i = 0;
		while (l->line_uid[i] != u->uid)
			i++;
		drop_line(l, i);
	}
	while (l->lines > l->cap)
		drop_line(l, 0);
}

static void report_suppressed(struct errlog *l, struct errlog_uid *u)
{
	char ts[BUS_TIME_LEN + 1];
	struct buf line;
	buf_init(&line);
	bus_time_format(u->last_suppressed_us, ts);
	buf_printf(&line, "{\"timestamp\":\"%s\",\"uid\":%u,\"suppressed\":%" PRIu64 ",\"reason\":"
		   "\"%" PRIu64 " more refusal(s) of uid %u within one second were not logged: "
		   "at most %u a second are\"}\n", ts, (unsigned)u->uid, u->suppressed,
		   u->suppressed, (unsigned)u->uid, l->per_second);
	if (buf_ok(&line)) {
		add_line(l, u, line.data, line.len);
		u->suppressed = 0;
	}
	buf_free(&line);
}

void errlog_flush(struct errlog *l, int64_t now_us)
{
	int64_t second = now_us / 1000000;
	for (size_t i = 0; i < l->nuids; i++) {
		struct errlog_uid *u = &l->uids[i];
		if (u->suppressed && u->second < second)
			report_suppressed(l, u);
	}
}

bool errlog_add_by(struct errlog *l, uid_t uid, int64_t now_us, const char *line, size_t len)
{
	if (!l->per_uid) {
		errlog_add(l, line, len);
		return true;
	}
	errlog_flush(l, now_us);
	struct errlog_uid *u = uid_entry(l, uid, true);
	if (!u)
		return false;
	int64_t second = now_us / 1000000;
	if (u->second != second) {
		u->second = second;
		u->in_second = 0;
	}
	if (l->per_second && ++u->in_second > l->per_second && uid != l->spared) {
		u->suppressed++;
		u->last_suppressed_us = now_us;
		return false;
	}
	add_line(l, u, line, len);
	return true;
}

size_t errlog_read(const struct errlog *l, size_t off, size_t size, struct buf *out)
{
	if (off >= l->text.len)
		return 0;
	size_t n = l->text.len - off < size ? l->text.len - off : size;
	buf_append(out, l->text.data + off, n);
	return n;
}
