/*
 * fuzz_json.c — core/json.c on arbitrary bytes: json_scan_value, json_is_value,
 * json_object_members, json_append_compact, json_append_string, utf8_text_valid,
 * base64_append.
 *
 * Invariants:
 *  - json_is_value(p) => jansson parses p too, except for the known differences
 *    (lone surrogate escapes \ud800, which busfs keeps and jansson refuses; numbers
 *    beyond jansson's int64/double range). The converse too: jansson accepts =>
 *    busfs accepts, unless the nesting is deeper than JSON_MAX_DEPTH or the input
 *    holds a NUL byte (jansson's json_loadb takes a NUL for the end of the input).
 *  - json_scan_value: 0 => pos advanced within the input and p[0..pos) is a value;
 *    every prefix of a valid value scans as 0 or -EAGAIN, never -EINVAL (a `send`
 *    record split across writes must not be refused).
 *  - json_append_compact of a valid value is one line (no \n, \r), valid, and decodes
 *    (jansson) to the same value.
 *  - json_object_members never writes beyond keybuf (exactly len bytes here); on
 *    success every value extent is a valid value inside the input.
 *  - json_append_string of any bytes is a valid JSON string, and of UTF-8 text one
 *    that decodes to the same bytes; utf8_text_valid agrees with a reference
 *    decoder; base64 round trips.
 */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "busfs/json.h"
#include "common.h"

/* RFC 3629 by its table, independently of json.c; NUL refused like utf8_text_valid
 * unless nul_ok. */
static bool ref_utf8(const unsigned char *p, size_t n, bool nul_ok)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = p[i];
		if (c == 0 && !nul_ok)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t k;
		unsigned char lo = 0x80, hi = 0xbf;
		if (c >= 0xc2 && c <= 0xdf)
			k = 1;
		else if (c == 0xe0) {
			k = 2;
			lo = 0xa0;
		} else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef)
			k = 2;
		else if (c == 0xed) {
			k = 2;
			hi = 0x9f;
		} else if (c == 0xf0) {
			k = 3;
			lo = 0x90;
		} else if (c >= 0xf1 && c <= 0xf3)
			k = 3;
		else if (c == 0xf4) {
			k = 3;
			hi = 0x8f;
		} else
			return false;
		if (n - i <= k)
			return false;
		if (p[i + 1] < lo || p[i + 1] > hi)
			return false;
		for (size_t j = 2; j <= k; j++)
			if (p[i + j] < 0x80 || p[i + j] > 0xbf)
				return false;
		i += k + 1;
	}
	return true;
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

/* Decodes padded base64; -1 when malformed. */
static long b64_decode(const char *s, size_t n, unsigned char *out)
{
	if (n % 4)
		return -1;
	size_t o = 0;
	for (size_t i = 0; i < n; i += 4) {
		int v[4];
		for (int k = 0; k < 4; k++)
			v[k] = s[i + k] == '=' ? 0 : b64val(s[i + k]);
		if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0)
			return -1;
		unsigned x = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | (unsigned)v[3];
		out[o++] = (unsigned char)(x >> 16);
		if (s[i + 2] != '=')
			out[o++] = (unsigned char)(x >> 8);
		if (s[i + 3] != '=')
			out[o++] = (unsigned char)x;
	}
	return (long)o;
}

/* Nesting depth of brackets outside strings (for the converse check). */
static int depth_of(const char *p, size_t n)
{
	int d = 0, max = 0;
	bool in = false;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (in) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in = false;
		} else if (c == '"') {
			in = true;
		} else if (c == '[' || c == '{') {
			if (++d > max)
				max = d;
		} else if (c == ']' || c == '}') {
			d--;
		}
	}
	return max;
}

static void check_prefixes(const char *p, size_t len)
{
	/* Every prefix when short, else 64 of them spread over the input. */
	size_t step = len <= 256 ? 1 : len / 64;
	for (size_t k = 0; k < len; k += step) {
		size_t pos = 0;
		int rc = json_scan_value(p, k, &pos);
		FUZZ_CHECK(rc == 0 || rc == -EAGAIN,
			   "a prefix of %zu bytes of a valid value scans as %d: %.*s", k, rc,
			   (int)(len > 200 ? 200 : len), p);
		if (rc == 0)
			FUZZ_CHECK(pos <= k && json_is_value(p, pos), "prefix scan ended at %zu", pos);
	}
}

static void check_compact(const char *p, size_t len)
{
	struct buf b;
	buf_init(&b);
	json_append_compact(&b, p, len);
	FUZZ_CHECK(buf_ok(&b) && b.len <= len, "compact grew the value");
	FUZZ_CHECK(b.len == 0 || (!memchr(b.data, '\n', b.len) && !memchr(b.data, '\r', b.len)),
		   "compact left a line break: %s", b.data);
	FUZZ_CHECK(json_is_value(b.data ? b.data : "", b.len), "compact broke the value: %.*s",
		   (int)b.len, b.data);
	json_t *x = json_loadb(p, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	json_t *y = json_loadb(b.data ? b.data : "", b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	FUZZ_CHECK(!x == !y, "jansson reads the value and its compact form differently");
	if (x && y)
		FUZZ_CHECK(json_equal(x, y), "compact changed the value: %.*s -> %s", (int)len, p,
			   b.data);
	json_decref(x);
	json_decref(y);
	buf_free(&b);
}

static void check_members(const char *p, size_t len, int max)
{
	struct json_member m[64];
	/* Exactly len bytes, as the contract says, so ASan sees any overrun. */
	char *keys = malloc(len ? len : 1);
	FUZZ_CHECK(keys, "out of memory");
	int n = json_object_members(p, len, m, max, keys);
	FUZZ_CHECK(n == -EINVAL || (n >= 0 && n <= max), "json_object_members returned %d", n);
	for (int i = 0; i < n; i++) {
		FUZZ_CHECK(m[i].value >= p && m[i].value + m[i].value_len <= p + len,
			   "member %d lies outside the input", i);
		FUZZ_CHECK(json_is_value(m[i].value, m[i].value_len), "member %d is not a value", i);
		FUZZ_CHECK(m[i].key >= keys && m[i].key + strlen(m[i].key) < keys + (len ? len : 1),
			   "key %d outside keybuf", i);
		for (int j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(m[i].key, m[j].key) != 0, "duplicate key %s accepted",
				   m[i].key);
	}
	free(keys);
}

static void check_string(const char *p, size_t len)
{
	struct buf b;
	buf_init(&b);
	json_append_string(&b, p, len);
	FUZZ_CHECK(buf_ok(&b) && b.len >= 2 && b.data[0] == '"' && b.data[b.len - 1] == '"',
		   "json_append_string is not a string literal");
	FUZZ_CHECK(!memchr(b.data, '\n', b.len), "json_append_string left a newline");
	bool text = utf8_text_valid(p, len);
	FUZZ_CHECK(text == ref_utf8((const unsigned char *)p, len, false),
		   "utf8_text_valid says %d, the reference decoder %d", text, !text);
	/* Any bytes give a JSON string (what is not UTF-8 becomes U+FFFD) ... */
	fuzz_check_jansson_agrees(b.data, b.len, "json_append_string's output");
	/* ... and UTF-8 text, NUL bytes included, decodes back to itself. */
	if (ref_utf8((const unsigned char *)p, len, true)) {
		json_t *v = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		FUZZ_CHECK(v && json_is_string(v) && json_string_length(v) == len &&
			   memcmp(json_string_value(v), p, len) == 0,
			   "escaped text does not decode to itself: %s", b.data);
		json_decref(v);
	}
	buf_reset(&b);
	base64_append(&b, (const unsigned char *)p, len);
	FUZZ_CHECK(buf_ok(&b) && b.len == (len + 2) / 3 * 4, "base64 of %zu bytes is %zu", len,
		   b.len);
	unsigned char *back = malloc(len + 3);
	long n = b64_decode(b.data ? b.data : "", b.len, back);
	FUZZ_CHECK(n == (long)len && memcmp(back, p, len) == 0, "base64 does not round trip");
	free(back);
	buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	/* The first byte picks max for json_object_members; the rest is the JSON text. */
	int max = data[0] % 64 + 1;
	/* An exact-size copy: ASan sees a read past the end. */
	size_t len = size - 1;
	char *p = malloc(len ? len : 1);
	memcpy(p, data + 1, len);

	size_t pos = 0;
	int rc = json_scan_value(p, len, &pos);
	FUZZ_CHECK(rc == 0 || rc == -EAGAIN || rc == -EINVAL, "json_scan_value returned %d", rc);
	if (rc == 0) {
		FUZZ_CHECK(pos > 0 && pos <= len, "json_scan_value: pos %zu of %zu", pos, len);
		FUZZ_CHECK(json_is_value(p, pos), "json_scan_value accepted what json_is_value "
			   "refuses: %.*s", (int)pos, p);
	}

	bool valid = json_is_value(p, len);
	if (valid) {
		fuzz_check_jansson_agrees(p, len, "the input");
		check_prefixes(p, len);
		check_compact(p, len);
	} else if (!memchr(p, '\0', len)) {
		/* jansson's json_loadb stops reading at a NUL byte, so only NUL-free input. */
		json_t *v = json_loadb(p, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		FUZZ_CHECK(!v || depth_of(p, len) > JSON_MAX_DEPTH - 2,
			   "jansson accepts what busfs refuses: %.*s", (int)(len > 300 ? 300 : len), p);
		json_decref(v);
	}
	check_members(p, len, max);
	check_string(p, len);
	free(p);
	return 0;
}
