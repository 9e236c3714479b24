/* seglog.h — an append-only log of lines, kept as segment files, read by offset.
 *
 *   DIR/PREFIX-<20-digit offset>.jsonl     one segment; the number is the log offset
 *                                          of its first byte
 *
 * A log has logical offsets that only grow: the end is the number of bytes ever
 * appended, and dropping old segments (by age or by total size) moves the start
 * forward without renumbering anything. That is what lets a file showing the log keep
 * a size that never shrinks, so `tail -f` follows it across rotations.
 *
 * Every append is whole lines in one write(2), so after a crash a segment can only
 * end in a torn line, which opening cuts off. The caller serialises all calls. */
#ifndef BUSFS_SEGLOG_H
#define BUSFS_SEGLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "busfs/error.h"

struct seglog_config {
	const char *dir;        /* created (0700) when missing; symlinks are refused */
	const char *prefix;     /* segment names: PREFIX-<offset>.jsonl */
	int64_t rotate_us;      /* a segment older than this takes no more appends (0: no limit) */
	uint64_t rotate_bytes;  /* ... nor one larger than this (0: no limit) */
	int64_t keep_us;        /* drop segments whose last append is older (0: keep all) */
	uint64_t keep_bytes;    /* drop the oldest segments while more is kept (0: no limit) */
	/* Called before segments are dropped, with the offset the log will then start
	 * at, so the caller can record what it derives from the dropped lines first. */
	void (*before_drop)(void *ctx, uint64_t new_start);
	void *ctx;
	bool readonly;          /* for busfs --check: create, cut and append nothing */
};

struct seglog;

/* Opens the log; nothing is dropped until the first seglog_expire or append. */
int seglog_open(const struct seglog_config *cfg, int64_t now_us, struct seglog **out,
		struct bus_error *err);
void seglog_close(struct seglog *l);

/* Calls fn for each whole line kept (newline excluded), oldest first, with the log
 * offset of its first byte. Stops when fn returns non-zero and returns that. */
int seglog_scan(struct seglog *l, int (*fn)(void *ctx, uint64_t off, const char *line,
					   size_t len), void *ctx);

/* Appends data (whole lines) with one write(2); *off receives the offset of its first
 * byte. -errno on failure, with nothing appended. */
int seglog_append(struct seglog *l, const void *data, size_t len, int64_t now_us, uint64_t *off);

/* Reads up to n bytes at the first kept byte at or after *off, which is updated to
 * where the bytes came from. Returns the byte count (0: at the end) or -errno. */
ssize_t seglog_read(struct seglog *l, uint64_t *off, void *buf, size_t n);

/* Drops the segments that keep_us and keep_bytes no longer allow. Returns how many. */
int seglog_expire(struct seglog *l, int64_t now_us);

uint64_t seglog_start(const struct seglog *l);  /* offset of the first kept byte */
uint64_t seglog_end(const struct seglog *l);    /* bytes ever appended */
uint64_t seglog_bytes(const struct seglog *l);  /* bytes kept */
size_t seglog_segments(const struct seglog *l);
/* The offset segment i starts at (the log's end past the last one). */
uint64_t seglog_segment_start(const struct seglog *l, size_t i);
/* Drops the oldest segment when another follows it (a caller's own retention rule):
 * 1 when one was dropped, else 0. */
int seglog_drop_oldest(struct seglog *l);

#endif
