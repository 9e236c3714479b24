/* seglog.c — append-only logs of lines in segment files (see seglog.h).
 *
 * Ownership: the log owns one fd per kept segment (O_RDWR|O_APPEND: appends go to
 * the last one, reads to any) and closes it when the segment is dropped or the log
 * is closed. Appends hold flock(LOCK_EX) on the segment for their write. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busfs/regfile.h"
#include "busfs/seglog.h"

struct seg {
	uint64_t start, bytes;
	int fd;
	int64_t created_us, last_us;
};

struct seglog {
	struct seglog_config cfg;
	char prefix[32];
	int dirfd;
	struct seg *segs;
	size_t n, cap;
	uint64_t end;
	uint64_t kept;
};

static int64_t mtime_us(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000 + st->st_mtim.tv_nsec / 1000;
}

static void seg_name(const struct seglog *l, uint64_t start, char *out, size_t n)
{
	snprintf(out, n, "%s-%020" PRIu64 ".jsonl", l->prefix, start);
}

/* PREFIX-<20 digits>.jsonl -> its offset; false for any other name. */
static bool parse_name(const struct seglog *l, const char *name, uint64_t *start)
{
	size_t p = strlen(l->prefix);
	if (strncmp(name, l->prefix, p) != 0 || name[p] != '-' || strlen(name) != p + 1 + 20 + 6 ||
	    strcmp(name + p + 21, ".jsonl") != 0)
		return false;
	uint64_t v = 0;
	for (size_t i = p + 1; i < p + 21; i++) {
		if (name[i] < '0' || name[i] > '9' || v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(name[i] - '0');
	}
	*start = v;
	return true;
}

static int add_seg(struct seglog *l, const struct seg *s)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct seg *p = realloc(l->segs, cap * sizeof *p);
		if (!p)
			return -ENOMEM;
		l->segs = p;
		l->cap = cap;
	}
	l->segs[l->n++] = *s;
	l->kept += s->bytes;
	return 0;
}

static int cmp_seg(const void *a, const void *b)
{
	const struct seg *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

/* A crash can leave the last segment ending inside a line: cut it at the last newline. */
static int cut_torn_tail(struct seg *s)
{
	char buf[4096];
	uint64_t keep = s->bytes;
	while (keep > 0) {
		size_t n = keep < sizeof buf ? (size_t)keep : sizeof buf;
		ssize_t r = pread(s->fd, buf, n, (off_t)(keep - n));
		if (r != (ssize_t)n)
			return -EIO;
		size_t i = n;
		while (i > 0 && buf[i - 1] != '\n')
			i--;
		if (i > 0) {
			keep -= n - i;
			break;
		}
		keep -= n;
	}
	if (keep == s->bytes)
		return 0;
	if (ftruncate(s->fd, (off_t)keep) < 0)
		return -errno;
	s->bytes = keep;
	return 0;
}

static int load_segments(struct seglog *l, struct bus_error *err)
{
	int fd = openat(l->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return bus_fail(err, EIO, "cannot list %s: %s", l->cfg.dir, strerror(errno));
	}
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d))) {
		struct seg s = {0};
		struct stat st;
		if (!parse_name(l, e->d_name, &s.start))
			continue;
		s.fd = open_regular_at(l->dirfd, e->d_name,
				       l->cfg.readonly ? O_RDONLY : O_RDWR | O_APPEND, 0);
		if (s.fd < 0 || fstat(s.fd, &st) < 0) {
			rc = bus_fail(err, s.fd == -EMEDIUMTYPE ? EMEDIUMTYPE : EIO,
				      "cannot open %s/%s: %s", l->cfg.dir, e->d_name,
				      s.fd == -EMEDIUMTYPE ? regfile_kind(l->dirfd, e->d_name)
							   : strerror(s.fd < 0 ? -s.fd : errno));
			if (s.fd >= 0)
				close(s.fd);
			break;
		}
		s.bytes = (uint64_t)st.st_size;
		s.created_us = s.last_us = mtime_us(&st);
		if (add_seg(l, &s) < 0) {
			close(s.fd);
			rc = bus_fail(err, ENOMEM, "out of memory");
		}
	}
	closedir(d);
	if (rc < 0)
		return rc;
	if (l->n)
		qsort(l->segs, l->n, sizeof *l->segs, cmp_seg);
	for (size_t i = 1; i < l->n; i++)
		if (l->segs[i].start < l->segs[i - 1].start + l->segs[i - 1].bytes)
			return bus_fail(err, EIO, "%s: segments %" PRIu64 " and %" PRIu64 " overlap",
					l->cfg.dir, l->segs[i - 1].start, l->segs[i].start);
	if (l->n) {
		struct seg *last = &l->segs[l->n - 1];
		uint64_t before = last->bytes;
		if (!l->cfg.readonly && cut_torn_tail(last) < 0)
			return bus_fail(err, EIO, "%s: cannot cut a torn line", l->cfg.dir);
		l->kept -= before - last->bytes;
		l->end = last->start + last->bytes;
	}
	return 0;
}

int seglog_open(const struct seglog_config *cfg, int64_t now_us, struct seglog **out,
		struct bus_error *err)
{
	struct seglog *l = calloc(1, sizeof *l);
	if (!l)
		return bus_fail(err, ENOMEM, "out of memory");
	l->cfg = *cfg;
	snprintf(l->prefix, sizeof l->prefix, "%s", cfg->prefix);
	l->dirfd = -1;
	if (!cfg->readonly && mkdir(cfg->dir, 0700) < 0 && errno != EEXIST) {
		int e = errno;
		free(l);
		return bus_fail(err, e, "cannot create %s: %s", cfg->dir, strerror(e));
	}
	l->dirfd = open(cfg->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (l->dirfd < 0) {
		int e = errno;
		free(l);
		return bus_fail(err, e == ELOOP || e == ENOTDIR ? EIO : e,
				"cannot open %s: %s", cfg->dir, strerror(e));
	}
	int rc = load_segments(l, err);
	if (rc < 0) {
		seglog_close(l);
		return rc;
	}
	*out = l;
	return 0;
}

void seglog_close(struct seglog *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++)
		close(l->segs[i].fd);
	free(l->segs);
	if (l->dirfd >= 0)
		close(l->dirfd);
	free(l);
}

static void drop_first(struct seglog *l)
{
	char name[64];
	struct seg *s = &l->segs[0];
	seg_name(l, s->start, name, sizeof name);
	unlinkat(l->dirfd, name, 0);
	close(s->fd);
	l->kept -= s->bytes;
	memmove(l->segs, l->segs + 1, (l->n - 1) * sizeof *l->segs);
	l->n--;
}

int seglog_expire(struct seglog *l, int64_t now_us)
{
	if (l->cfg.readonly)
		return 0;
	size_t n = 0;
	uint64_t kept = l->kept;
	while (n < l->n) {
		const struct seg *s = &l->segs[n];
		bool old = l->cfg.keep_us && s->last_us < now_us - l->cfg.keep_us;
		bool big = l->cfg.keep_bytes && kept > l->cfg.keep_bytes && n + 1 < l->n;
		if (!old && !big)
			break;
		kept -= s->bytes;
		n++;
	}
	if (n && l->cfg.before_drop)
		l->cfg.before_drop(l->cfg.ctx, n < l->n ? l->segs[n].start : l->end);
	for (size_t i = 0; i < n; i++)
		drop_first(l);
	return (int)n;
}

static int new_segment(struct seglog *l, int64_t now_us)
{
	char name[64];
	struct seg s = {.start = l->end, .created_us = now_us, .last_us = now_us};
	seg_name(l, s.start, name, sizeof name);
	/* A segment of the same name can only be an empty leftover: reuse it. */
	s.fd = open_regular_at(l->dirfd, name, O_RDWR | O_APPEND | O_CREAT, 0600);
	if (s.fd < 0)
		return s.fd;
	int rc = ftruncate(s.fd, 0) < 0 ? -errno : add_seg(l, &s);
	if (rc < 0) {
		close(s.fd);
		unlinkat(l->dirfd, name, 0);
	}
	return rc;
}

int seglog_append(struct seglog *l, const void *data, size_t len, int64_t now_us, uint64_t *off)
{
	if (l->cfg.readonly)
		return -EROFS;
	struct seg *s = l->n ? &l->segs[l->n - 1] : NULL;
	bool full = s && ((l->cfg.rotate_bytes && s->bytes > 0 &&
			   s->bytes + len > l->cfg.rotate_bytes) ||
			  (l->cfg.rotate_us && now_us - s->created_us >= l->cfg.rotate_us));
	if (!s || full) {
		int rc = new_segment(l, now_us);
		if (rc < 0)
			return rc;
		s = &l->segs[l->n - 1];
	}
	/* A tool reading the store (a backup) takes LOCK_SH to see whole lines only. */
	flock(s->fd, LOCK_EX);
	ssize_t w = write(s->fd, data, len);
	if (w != (ssize_t)len) {
		int e = w < 0 ? errno : ENOSPC;
		if (w > 0 && ftruncate(s->fd, (off_t)s->bytes) < 0)
			e = EIO;
		flock(s->fd, LOCK_UN);
		return -e;
	}
	flock(s->fd, LOCK_UN);
	if (off)
		*off = l->end;
	s->bytes += len;
	s->last_us = now_us;
	l->end += len;
	l->kept += len;
	seglog_expire(l, now_us);
	return 0;
}

ssize_t seglog_read(struct seglog *l, uint64_t *off, void *buf, size_t n)
{
	/* The last segment whose start is <= *off, or the first one after a gap. */
	size_t lo = 0, hi = l->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->segs[mid].start <= *off)
			lo = mid + 1;
		else
			hi = mid;
	}
	size_t i = lo ? lo - 1 : 0;
	for (; i < l->n; i++) {
		const struct seg *s = &l->segs[i];
		if (*off < s->start)
			*off = s->start;
		if (*off < s->start + s->bytes)
			break;
	}
	if (i == l->n || n == 0)
		return 0;
	const struct seg *s = &l->segs[i];
	uint64_t left = s->start + s->bytes - *off;
	ssize_t r = pread(s->fd, buf, left < n ? (size_t)left : n, (off_t)(*off - s->start));
	return r < 0 ? -errno : r;
}

int seglog_scan(struct seglog *l, int (*fn)(void *ctx, uint64_t off, const char *line,
					   size_t len), void *ctx)
{
	size_t cap = 1 << 16;
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	int rc = 0;
	for (size_t i = 0; i < l->n && rc == 0; i++) {
		const struct seg *s = &l->segs[i];
		uint64_t pos = 0;   /* where buf[0] is, in the segment */
		size_t have = 0;
		while (rc == 0) {
			if (have == cap) {
				/* A line longer than the buffer: grow it. */
				char *p = realloc(buf, cap * 2);
				if (!p) {
					rc = -ENOMEM;
					break;
				}
				buf = p;
				cap *= 2;
			}
			ssize_t r = pread(s->fd, buf + have, cap - have, (off_t)(pos + have));
			if (r < 0) {
				rc = -errno;
				break;
			}
			if (r == 0)
				break;
			have += (size_t)r;
			size_t at = 0;
			char *nl;
			while (rc == 0 && (nl = memchr(buf + at, '\n', have - at))) {
				size_t len = (size_t)(nl - (buf + at));
				rc = fn(ctx, s->start + pos + at, buf + at, len);
				at += len + 1;
			}
			memmove(buf, buf + at, have - at);
			pos += at;
			have -= at;
		}
	}
	free(buf);
	return rc;
}

uint64_t seglog_start(const struct seglog *l) { return l->n ? l->segs[0].start : l->end; }
uint64_t seglog_end(const struct seglog *l) { return l->end; }
uint64_t seglog_bytes(const struct seglog *l) { return l->kept; }
size_t seglog_segments(const struct seglog *l) { return l->n; }

uint64_t seglog_segment_start(const struct seglog *l, size_t i)
{
	return i < l->n ? l->segs[i].start : l->end;
}

int seglog_drop_oldest(struct seglog *l)
{
	if (l->cfg.readonly || l->n < 2)
		return 0;
	if (l->cfg.before_drop)
		l->cfg.before_drop(l->cfg.ctx, l->segs[1].start);
	drop_first(l);
	return 1;
}
