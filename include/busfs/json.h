/* json.h — a strict JSON scanner that finds where values end, without building them.
 *
 * busfs keeps payload bytes exactly as the writer sent them (re-serialising would
 * change numbers and drop big integers), so it needs the raw extent of a value, which
 * jansson does not give. The scanner validates RFC 8259 syntax (UTF-8 included) and
 * reports where one value ends; jansson decodes only small scalar fields. */
#ifndef BUSFS_JSON_H
#define BUSFS_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "busfs/buf.h"

#define JSON_MAX_DEPTH 512

/* JSON's four whitespace characters (and never NUL, which strchr would match). */
static inline bool json_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Scans one JSON value starting at p[*pos] (leading whitespace skipped).
 * Returns 0 and sets *pos past the value, -EAGAIN if the input ends inside the
 * value (more bytes may complete it), -EINVAL if it can never be valid. */
int json_scan_value(const char *p, size_t len, size_t *pos);

/* True when p[0..len) is exactly one JSON value with optional surrounding whitespace. */
bool json_is_value(const char *p, size_t len);

/* Appends the value with leading/trailing whitespace and line breaks outside strings
 * removed; every other byte is kept (p must hold one valid value). */
void json_append_compact(struct buf *b, const char *p, size_t len);

/* Appends s as a JSON string literal, quotes included. Bytes that are not valid UTF-8
 * (a cut sequence, a lone surrogate) become U+FFFD, so the result is always JSON. */
void json_append_string(struct buf *b, const char *s, size_t len);

/* One member of a top-level object: the raw key token and the raw value extent. */
struct json_member {
	const char *key;       /* decoded key, NUL-terminated, in the caller's storage */
	const char *value;
	size_t value_len;
};

/* Splits a valid object (p..len) into at most max members. Keys are decoded into
 * keybuf (must be >= len bytes). Returns the count, or -EINVAL (not an object,
 * a duplicate key, a key with an escaped NUL, or more than max members). */
int json_object_members(const char *p, size_t len, struct json_member *out, int max,
			char *keybuf);

/* UTF-8 validity (no overlongs, no surrogates); NUL bytes are rejected. */
bool utf8_text_valid(const char *p, size_t len);

/* Standard base64 with padding. */
void base64_append(struct buf *b, const unsigned char *p, size_t len);

#endif
