/* json.c — strict JSON scanning, compaction, string escaping, UTF-8 and base64.
 *
 * The scanner is recursive with a depth limit (JSON_MAX_DEPTH), so no input can
 * exhaust the stack. It distinguishes "incomplete" from "invalid" because a `send`
 * record may arrive split across writes. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "busfs/json.h"

struct scan {
	const char *p;
	size_t len;
	size_t pos;
	bool final; /* no more bytes will come: a number may end at the end of input */
};

static void skip_ws(struct scan *s)
{
	while (s->pos < s->len) {
		char c = s->p[s->pos];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		s->pos++;
	}
}

/* Whether any of 8 bytes is a control character, '"', '\\' or not ASCII (each test
 * is exact: a lane's borrow only reaches lanes above one that matched). */
static inline bool special8(const unsigned char *p)
{
	const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
	uint64_t v, q, b;
	memcpy(&v, p, sizeof v);
	q = v ^ (ones * '"');
	b = v ^ (ones * '\\');
	return (((v - ones * 0x20) & ~v) | ((q - ones) & ~q) | ((b - ones) & ~b) | v) & highs;
}

/* Whether 8 bytes are all ASCII other than NUL. */
static inline bool ascii8(const unsigned char *p)
{
	const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
	uint64_t v;
	memcpy(&v, p, sizeof v);
	return !((((v - ones) & ~v) | v) & highs);
}

/* Length of the UTF-8 sequence at p (1..4) or 0 when invalid; -1 when cut short. */
static int utf8_seq(const unsigned char *p, size_t avail)
{
	unsigned char c = p[0];
	int n;
	unsigned min;
	unsigned cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1f; min = 0x80; }
	else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0f; min = 0x800; }
	else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07; min = 0x10000; }
	else return 0;
	for (int i = 1; i < n; i++) {
		if ((size_t)i >= avail)
			return -1;
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

bool utf8_text_valid(const char *p, size_t len)
{
	const unsigned char *u = (const unsigned char *)p;
	size_t i = 0;
	while (i < len) {
		if (i + 8 <= len && ascii8(u + i)) {
			i += 8;
			continue;
		}
		if (u[i] == 0)
			return false;
		int n = utf8_seq(u + i, len - i);
		if (n <= 0)
			return false;
		i += (size_t)n;
	}
	return true;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static int scan_string(struct scan *s)
{
	s->pos++; /* opening quote */
	while (s->pos < s->len) {
		/* Printable ASCII other than '"' and '\\' is most of any string: skip it in
		 * a tight loop before looking at what ends or escapes it. */
		const unsigned char *u = (const unsigned char *)s->p;
		size_t i = s->pos, end = s->len;
		while (i + 8 <= end && !special8(u + i))
			i += 8;
		while (i < end && u[i] >= 0x20 && u[i] < 0x80 && u[i] != '"' && u[i] != '\\')
			i++;
		s->pos = i;
		if (i >= end)
			break;
		unsigned char c = u[i];
		if (c == '"') {
			s->pos++;
			return 0;
		}
		if (c < 0x20)
			return -EINVAL;
		if (c == '\\') {
			if (s->pos + 1 >= s->len)
				return -EAGAIN;
			char e = s->p[s->pos + 1];
			if (e == 'u') {
				for (int k = 0; k < 4; k++) {
					if (s->pos + 2 + k >= s->len)
						return -EAGAIN;
					if (hexval(s->p[s->pos + 2 + k]) < 0)
						return -EINVAL;
				}
				s->pos += 6;
			} else if (strchr("\"\\/bfnrt", e) && e) {
				s->pos += 2;
			} else {
				return -EINVAL;
			}
			continue;
		}
		int n = utf8_seq((const unsigned char *)s->p + s->pos, s->len - s->pos);
		if (n < 0)
			return -EAGAIN;
		if (n == 0)
			return -EINVAL;
		s->pos += (size_t)n;
	}
	return -EAGAIN;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* A number ends at the first byte that cannot continue it; at the end of input it
 * is incomplete, since more digits might follow. */
static int scan_number(struct scan *s)
{
	size_t i = s->pos;
	if (i < s->len && s->p[i] == '-')
		i++;
	if (i >= s->len)
		return -EAGAIN;
	if (s->p[i] == '0') {
		i++;
	} else if (is_digit(s->p[i])) {
		while (i < s->len && is_digit(s->p[i]))
			i++;
	} else {
		return -EINVAL;
	}
	if (i < s->len && s->p[i] == '.') {
		i++;
		if (i >= s->len)
			return -EAGAIN;
		if (!is_digit(s->p[i]))
			return -EINVAL;
		while (i < s->len && is_digit(s->p[i]))
			i++;
	}
	if (i < s->len && (s->p[i] == 'e' || s->p[i] == 'E')) {
		i++;
		if (i < s->len && (s->p[i] == '+' || s->p[i] == '-'))
			i++;
		if (i >= s->len)
			return -EAGAIN;
		if (!is_digit(s->p[i]))
			return -EINVAL;
		while (i < s->len && is_digit(s->p[i]))
			i++;
	}
	if (i >= s->len && !s->final)
		return -EAGAIN;
	s->pos = i;
	return 0;
}

static int scan_literal(struct scan *s, const char *word)
{
	size_t n = strlen(word);
	size_t avail = s->len - s->pos;
	if (memcmp(s->p + s->pos, word, avail < n ? avail : n) != 0)
		return -EINVAL;
	if (avail < n)
		return -EAGAIN;
	s->pos += n;
	return 0;
}

static int scan_value(struct scan *s, int depth);

static int scan_container(struct scan *s, int depth, char close, bool object)
{
	if (depth >= JSON_MAX_DEPTH)
		return -EINVAL;
	s->pos++;
	skip_ws(s);
	if (s->pos >= s->len)
		return -EAGAIN;
	if (s->p[s->pos] == close) {
		s->pos++;
		return 0;
	}
	for (;;) {
		int rc;
		if (object) {
			skip_ws(s);
			if (s->pos >= s->len)
				return -EAGAIN;
			if (s->p[s->pos] != '"')
				return -EINVAL;
			if ((rc = scan_string(s)) < 0)
				return rc;
			skip_ws(s);
			if (s->pos >= s->len)
				return -EAGAIN;
			if (s->p[s->pos] != ':')
				return -EINVAL;
			s->pos++;
		}
		if ((rc = scan_value(s, depth + 1)) < 0)
			return rc;
		skip_ws(s);
		if (s->pos >= s->len)
			return -EAGAIN;
		char c = s->p[s->pos++];
		if (c == close)
			return 0;
		if (c != ',')
			return -EINVAL;
	}
}

static int scan_value(struct scan *s, int depth)
{
	skip_ws(s);
	if (s->pos >= s->len)
		return -EAGAIN;
	switch (s->p[s->pos]) {
	case '{': return scan_container(s, depth, '}', true);
	case '[': return scan_container(s, depth, ']', false);
	case '"': return scan_string(s);
	case 't': return scan_literal(s, "true");
	case 'f': return scan_literal(s, "false");
	case 'n': return scan_literal(s, "null");
	default: return scan_number(s);
	}
}

int json_scan_value(const char *p, size_t len, size_t *pos)
{
	struct scan s = {p, len, *pos, false};
	int rc = scan_value(&s, 0);
	if (rc == 0)
		*pos = s.pos;
	return rc;
}

bool json_is_value(const char *p, size_t len)
{
	struct scan s = {p, len, 0, true};
	if (scan_value(&s, 0) != 0)
		return false;
	skip_ws(&s);
	return s.pos == len;
}

void json_append_compact(struct buf *b, const char *p, size_t len)
{
	size_t start = 0, end = len;
	while (start < end && json_space(p[start]))
		start++;
	while (end > start && json_space(p[end - 1]))
		end--;
	if (!memchr(p + start, '\n', end - start) && !memchr(p + start, '\r', end - start)) {
		buf_append(b, p + start, end - start);
		return;
	}
	bool in_string = false;
	for (size_t i = start; i < end; i++) {
		char c = p[i];
		if (in_string) {
			if (c == '\\') {
				buf_append(b, p + i, 2);
				i++;
				continue;
			}
			if (c == '"')
				in_string = false;
		} else if (c == '"') {
			in_string = true;
		} else if (c == '\n' || c == '\r') {
			continue;
		}
		buf_putc(b, c);
	}
}

void json_append_string(struct buf *b, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	buf_reserve(b, len + 2);
	buf_putc(b, '"');
	size_t run = 0;
	for (size_t i = 0; i < len; i++) {
		/* Runs of bytes that need no escape are copied as they are. */
		while (i + 8 <= len && !special8((const unsigned char *)s + i))
			i += 8;
		if (i >= len)
			break;
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x80) {
			/* Valid UTF-8 passes; any other byte becomes U+FFFD, so the result is
			 * always JSON (file names and quoted input can be any bytes). */
			int n = utf8_seq((const unsigned char *)s + i, len - i);
			if (n > 0) {
				i += (size_t)n - 1;
				continue;
			}
			buf_append(b, s + run, i - run);
			buf_puts(b, "\xef\xbf\xbd");
			run = i + 1;
			continue;
		}
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		buf_append(b, s + run, i - run);
		run = i + 1;
		switch (c) {
		case '"': buf_puts(b, "\\\""); break;
		case '\\': buf_puts(b, "\\\\"); break;
		case '\n': buf_puts(b, "\\n"); break;
		case '\r': buf_puts(b, "\\r"); break;
		case '\t': buf_puts(b, "\\t"); break;
		case '\b': buf_puts(b, "\\b"); break;
		case '\f': buf_puts(b, "\\f"); break;
		default: {
			char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
			buf_append(b, u, 6);
		}
		}
	}
	buf_append(b, s + run, len - run);
	buf_putc(b, '"');
}

/* Decodes a JSON string token (quotes included) into dst; returns its length or -1
 * when it holds an escaped NUL (keys with NUL are refused). */
static long decode_string(const char *p, size_t len, char *dst)
{
	size_t o = 0;
	for (size_t i = 1; i + 1 < len; i++) {
		if (p[i] != '\\') {
			dst[o++] = p[i];
			continue;
		}
		char e = p[++i];
		switch (e) {
		case 'b': dst[o++] = '\b'; break;
		case 'f': dst[o++] = '\f'; break;
		case 'n': dst[o++] = '\n'; break;
		case 'r': dst[o++] = '\r'; break;
		case 't': dst[o++] = '\t'; break;
		case 'u': {
			unsigned cp = 0;
			for (int k = 1; k <= 4; k++)
				cp = cp << 4 | (unsigned)hexval(p[i + k]);
			i += 4;
			if (cp == 0)
				return -1;
			/* A high surrogate followed by an escaped low one is one code point
			 * (U+10000 and up, 4 bytes of UTF-8). A lone surrogate stays its own 3
			 * bytes: the key stays distinct, and is shown as U+FFFD. */
			if (cp >= 0xd800 && cp < 0xdc00 && i + 6 < len && p[i + 1] == '\\' &&
			    p[i + 2] == 'u') {
				unsigned lo = 0;
				for (int k = 3; k <= 6; k++)
					lo = lo << 4 | (unsigned)hexval(p[i + k]);
				if (lo >= 0xdc00 && lo < 0xe000) {
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					i += 6;
					dst[o++] = (char)(0xf0 | cp >> 18);
					dst[o++] = (char)(0x80 | ((cp >> 12) & 0x3f));
					dst[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
					dst[o++] = (char)(0x80 | (cp & 0x3f));
					break;
				}
			}
			if (cp < 0x80) {
				dst[o++] = (char)cp;
			} else if (cp < 0x800) {
				dst[o++] = (char)(0xc0 | cp >> 6);
				dst[o++] = (char)(0x80 | (cp & 0x3f));
			} else {
				dst[o++] = (char)(0xe0 | cp >> 12);
				dst[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
				dst[o++] = (char)(0x80 | (cp & 0x3f));
			}
			break;
		}
		default: dst[o++] = e;
		}
	}
	dst[o] = '\0';
	return (long)o;
}

int json_object_members(const char *p, size_t len, struct json_member *out, int max,
			char *keybuf)
{
	struct scan s = {p, len, 0, true};
	int n = 0;
	size_t koff = 0;

	skip_ws(&s);
	if (s.pos >= len || p[s.pos] != '{')
		return -EINVAL;
	s.pos++;
	skip_ws(&s);
	if (s.pos < len && p[s.pos] == '}')
		return 0;
	for (;;) {
		skip_ws(&s);
		size_t kstart = s.pos;
		if (s.pos >= len || p[s.pos] != '"' || scan_string(&s) != 0)
			return -EINVAL;
		if (n >= max)
			return -EINVAL;
		char *key = keybuf + koff;
		long klen = decode_string(p + kstart, s.pos - kstart, key);
		if (klen < 0)
			return -EINVAL;
		for (int i = 0; i < n; i++)
			if (strcmp(out[i].key, key) == 0)
				return -EINVAL;
		koff += (size_t)klen + 1;
		skip_ws(&s);
		if (s.pos >= len || p[s.pos] != ':')
			return -EINVAL;
		s.pos++;
		skip_ws(&s);
		size_t vstart = s.pos;
		if (scan_value(&s, 1) != 0)
			return -EINVAL;
		out[n].key = key;
		out[n].value = p + vstart;
		out[n].value_len = s.pos - vstart;
		n++;
		skip_ws(&s);
		if (s.pos >= len)
			return -EINVAL;
		char c = p[s.pos++];
		if (c == '}')
			return n;
		if (c != ',')
			return -EINVAL;
	}
}

void base64_append(struct buf *b, const unsigned char *p, size_t len)
{
	static const char tbl[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	if (!buf_reserve(b, (len + 2) / 3 * 4))
		return;
	char *o = b->data + b->len;
	size_t i = 0;
	for (; i + 2 < len; i += 3) {
		unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
		*o++ = tbl[v >> 18];
		*o++ = tbl[(v >> 12) & 63];
		*o++ = tbl[(v >> 6) & 63];
		*o++ = tbl[v & 63];
	}
	if (i < len) {
		unsigned v = (unsigned)p[i] << 16 | (i + 1 < len ? (unsigned)p[i + 1] << 8 : 0);
		*o++ = tbl[v >> 18];
		*o++ = tbl[(v >> 12) & 63];
		*o++ = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
		*o++ = '=';
	}
	b->len = (size_t)(o - b->data);
	b->data[b->len] = '\0';
}
