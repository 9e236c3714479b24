/* buf.h — a growable byte buffer, the one string builder of busfs.
 *
 * Appends never fail silently: on allocation failure the buffer is marked and
 * every later append is a no-op, so a builder checks buf_ok() once at the end. */
#ifndef BUSFS_BUF_H
#define BUSFS_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
	bool failed;
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);                 /* len = 0, keeps the memory */
bool buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_consume(struct buf *b, size_t n);     /* drops the first n bytes */
void buf_put_uint(struct buf *b, uint64_t v);  /* decimal text, without printf */
static inline bool buf_ok(const struct buf *b) { return !b->failed; }
/* Marks b failed, as an allocation failure would: for a builder whose input, made in
 * another buffer, is incomplete. */
static inline void buf_fail(struct buf *b) { b->failed = true; }

/* Little-endian binary fields for store records. */
void buf_put_u8(struct buf *b, uint8_t v);
void buf_put_u32(struct buf *b, uint32_t v);
void buf_put_u64(struct buf *b, uint64_t v);
void buf_put_bytes(struct buf *b, const void *p, size_t n);   /* u32 length + bytes */
void buf_put_str(struct buf *b, const char *s);               /* as bytes */

/* A reader over a record; any overrun sets `bad` and yields zeros. */
struct reader {
	const uint8_t *p;
	size_t len;
	size_t pos;
	bool bad;
};

uint8_t rd_u8(struct reader *r);
uint32_t rd_u32(struct reader *r);
uint64_t rd_u64(struct reader *r);
/* Points into the record; *n receives the length. NULL on overrun. */
const char *rd_bytes(struct reader *r, size_t *n);
/* Copies a string field into dst (NUL-terminated); overrun or too long sets bad. */
void rd_str(struct reader *r, char *dst, size_t dstsize);

#endif
