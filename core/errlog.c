/* errlog.c — capped JSONL logs of rejections. */
#include <string.h>

#include "busfs/errlog.h"

void errlog_init(struct errlog *l, size_t cap)
{
	buf_init(&l->text);
	l->lines = 0;
	l->cap = cap;
}

void errlog_free(struct errlog *l) { buf_free(&l->text); }

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

size_t errlog_read(const struct errlog *l, size_t off, size_t size, struct buf *out)
{
	if (off >= l->text.len)
		return 0;
	size_t n = l->text.len - off < size ? l->text.len - off : size;
	buf_append(out, l->text.data + off, n);
	return n;
}
