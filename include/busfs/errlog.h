/* errlog.h — a capped JSONL log of rejected operations (the `errors` files).
 *
 * It keeps the newest `cap` lines; the file a reader sees is exactly the lines kept,
 * so its size is honest. Not persisted: it is a window on recent refusals. */
#ifndef BUSFS_ERRLOG_H
#define BUSFS_ERRLOG_H

#include <stddef.h>

#include "busfs/buf.h"

struct errlog {
	struct buf text;
	size_t lines;
	size_t cap;
};

void errlog_init(struct errlog *l, size_t cap);
void errlog_free(struct errlog *l);
void errlog_add(struct errlog *l, const char *line, size_t len); /* line ends with '\n' */
/* Copies up to size bytes from offset off into out; returns the count. */
size_t errlog_read(const struct errlog *l, size_t off, size_t size, struct buf *out);

#endif
