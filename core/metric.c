/* metric.c — parsing metric lines (text or JSON) and writing stored points.
 *
 * A write is parsed whole before anything is handed on, so one bad line leaves no
 * trace. Numbers are read with strtod() only after a strict grammar check, since
 * strtod() alone would also take hex, "nan", "inf" and leading spaces. */
#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/json.h"
#include "busfs/metric.h"


#define NAME_RULE "[a-zA-Z_][a-zA-Z0-9_.:-], at most 128 bytes"
#define UNIT_RULE "[A-Za-z%%_/][A-Za-z0-9%%_/.-], at most 32 bytes"
#define KEY_RULE "[A-Za-z_][A-Za-z0-9_.-], at most 64 bytes"

struct points {
	struct metric_point *v;
	size_t n, cap;
};

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_blank(char c) { return c == ' ' || c == '\t'; }
/* strchr() would also find the terminating NUL. */
static bool in_set(char c, const char *set) { return c && strchr(set, c); }


bool metric_name_valid(const char *name, size_t len)
{
	if (len == 0 || len > METRIC_NAME_MAX || !(is_alpha(name[0]) || name[0] == '_'))
		return false;
	for (size_t i = 1; i < len; i++) {
		char c = name[i];
		if (!is_alpha(c) && !is_digit(c) && !in_set(c, "_.:-"))
			return false;
	}
	return true;
}

static bool unit_valid(const char *u, size_t len)
{
	if (len == 0 || len > METRIC_UNIT_MAX || !(is_alpha(u[0]) || in_set(u[0], "%_/")))
		return false;
	for (size_t i = 1; i < len; i++) {
		char c = u[i];
		if (!is_alpha(c) && !is_digit(c) && !in_set(c, "%_/.-"))
			return false;
	}
	return true;
}

static bool tag_key_valid(const char *k, size_t len)
{
	if (len == 0 || len > METRIC_TAG_KEY_MAX || !(is_alpha(k[0]) || k[0] == '_'))
		return false;
	for (size_t i = 1; i < len; i++) {
		char c = k[i];
		if (!is_alpha(c) && !is_digit(c) && !in_set(c, "_.-"))
			return false;
	}
	return true;
}

/* NULL when v is a valid tag value, else what is wrong with it. */
static const char *tag_value_problem(const char *v, size_t len)
{
	if (len == 0)
		return "is empty";
	if (len > METRIC_TAG_VALUE_MAX)
		return "is over 256 bytes";
	if (!utf8_text_valid(v, len))
		return "is not UTF-8 text";
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
			return "holds a control character";
	return NULL;
}

bool metric_number_parse(const char *p, size_t len, double *out)
{
	size_t i = 0, d;
	if (len == 0 || len > METRIC_LINE_MAX)
		return false;
	if (p[i] == '+' || p[i] == '-')
		i++;
	for (d = i; i < len && is_digit(p[i]); i++)
		;
	if (i == d)
		return false;
	if (i < len && p[i] == '.') {
		for (d = ++i; i < len && is_digit(p[i]); i++)
			;
		if (i == d)
			return false;
	}
	if (i < len && (p[i] == 'e' || p[i] == 'E')) {
		i++;
		if (i < len && (p[i] == '+' || p[i] == '-'))
			i++;
		for (d = i; i < len && is_digit(p[i]); i++)
			;
		if (i == d)
			return false;
	}
	if (i != len)
		return false;

	char text[METRIC_LINE_MAX + 1];
	char *end;
	int saved = errno;
	memcpy(text, p, len);
	text[len] = '\0';
	double v = strtod(text, &end);
	errno = saved;
	if (end != text + len || !isfinite(v))
		return false;
	*out = v;
	return true;
}

static void tag_begin(struct buf *tags)
{
	buf_reset(tags);
	buf_putc(tags, '{');
}

static void tag_add(struct buf *tags, const char *k, size_t kn, const char *v, size_t vn)
{
	if (tags->len > 1)
		buf_putc(tags, ',');
	json_append_string(tags, k, kn);
	buf_putc(tags, ':');
	json_append_string(tags, v, vn);
}

/* The next space- or tab-separated token of p[*at..len), or false at the end. */
static bool next_token(const char *p, size_t len, size_t *at, const char **tok, size_t *n)
{
	size_t i = *at;
	while (i < len && is_blank(p[i]))
		i++;
	if (i == len)
		return false;
	size_t start = i;
	while (i < len && !is_blank(p[i]))
		i++;
	*tok = p + start;
	*n = i - start;
	*at = i;
	return true;
}

/* NAME VALUE [UNIT] [key=value ...], tags before or after the unit. */
static int parse_text(const char *p, size_t len, size_t line, struct metric_point *pt,
		      struct bus_error *err)
{
	char s1[BUS_SHOWN_MAX], s2[BUS_SHOWN_MAX];
	const char *tok, *unit = NULL;
	size_t n, unit_n = 0, at = 0;
	const char *keys[METRIC_TAGS_MAX];
	size_t key_n[METRIC_TAGS_MAX];
	int ntags = 0;

	next_token(p, len, &at, &tok, &n);   /* the caller trimmed: a token exists */
	if (!metric_name_valid(tok, n))
		return bus_fail(err, EINVAL, "line %zu: metric name '%s' is invalid: use "
				NAME_RULE, line, bus_shown(s1, tok, n));
	memcpy(pt->name, tok, n);
	pt->name[n] = '\0';

	if (!next_token(p, len, &at, &tok, &n))
		return bus_fail(err, EINVAL, "line %zu: missing value after '%s'", line, pt->name);
	if (!metric_number_parse(tok, n, &pt->value))
		return bus_fail(err, EINVAL, "line %zu: value '%s' is not a finite number", line,
				bus_shown(s1, tok, n));

	tag_begin(&pt->tags);
	while (next_token(p, len, &at, &tok, &n)) {
		const char *eq = memchr(tok, '=', n);
		if (!eq) {
			if (unit)
				return bus_fail(err, EINVAL, "line %zu: more than one unit "
						"('%s' and '%s')", line, bus_shown(s1, unit, unit_n),
						bus_shown(s2, tok, n));
			if (!unit_valid(tok, n))
				return bus_fail(err, EINVAL, "line %zu: unit '%s' is invalid: use "
						UNIT_RULE, line, bus_shown(s1, tok, n));
			unit = tok;
			unit_n = n;
			continue;
		}
		size_t kn = (size_t)(eq - tok), vn = n - kn - 1;
		if (!tag_key_valid(tok, kn))
			return bus_fail(err, EINVAL, "line %zu: tag key '%s' is invalid: use "
					KEY_RULE, line, bus_shown(s1, tok, kn));
		const char *problem = tag_value_problem(eq + 1, vn);
		if (problem)
			return bus_fail(err, EINVAL, "line %zu: the value of tag '%s' %s", line,
					bus_shown(s1, tok, kn), problem);
		for (int i = 0; i < ntags; i++)
			if (key_n[i] == kn && memcmp(keys[i], tok, kn) == 0)
				return bus_fail(err, EINVAL, "line %zu: tag '%s' is given twice",
						line, bus_shown(s1, tok, kn));
		if (ntags == METRIC_TAGS_MAX)
			return bus_fail(err, EINVAL, "line %zu: more than %d tags", line,
					METRIC_TAGS_MAX);
		keys[ntags] = tok;
		key_n[ntags++] = kn;
		tag_add(&pt->tags, tok, kn, eq + 1, vn);
	}
	buf_putc(&pt->tags, '}');
	if (unit)
		memcpy(pt->unit, unit, unit_n);
	pt->unit[unit_n] = '\0';
	return 0;
}

/* A JSON string member decoded by jansson (which refuses \u0000); NULL otherwise. */
static json_t *decode_string(const char *p, size_t len)
{
	json_t *v = json_loadb(p, len, JSON_DECODE_ANY, NULL);
	if (v && !json_is_string(v)) {
		json_decref(v);
		return NULL;
	}
	return v;
}

static bool is_null(const struct json_member *m)
{
	return m->value_len == 4 && memcmp(m->value, "null", 4) == 0;
}

/* The members of an object value: m and keys are allocated for the worst case
 * (every member takes at least 5 bytes: "":0,). */
static int members(const char *p, size_t len, struct json_member **m, char **keys)
{
	size_t max = len / 4 + 1;
	*m = malloc(max * sizeof **m);
	*keys = malloc(len + 1);
	if (!*m || !*keys)
		return -ENOMEM;
	return json_object_members(p, len, *m, (int)max, *keys);
}

static int parse_tags(const struct json_member *t, size_t line, struct metric_point *pt,
		      struct bus_error *err)
{
	char s1[BUS_SHOWN_MAX];
	struct json_member *m = NULL;
	char *keys = NULL;
	int rc = 0, n;

	tag_begin(&pt->tags);
	if (is_null(t))
		goto done;
	if (t->value[0] != '{') {
		rc = bus_fail(err, EINVAL, "line %zu: \"tags\" must be an object of strings", line);
		goto done;
	}
	n = members(t->value, t->value_len, &m, &keys);
	if (n == -ENOMEM)
		rc = bus_fail(err, ENOMEM, "out of memory");
	else if (n < 0)
		rc = bus_fail(err, EINVAL, "line %zu: \"tags\" has a key given twice or an "
			      "invalid key", line);
	else if (n > METRIC_TAGS_MAX)
		rc = bus_fail(err, EINVAL, "line %zu: more than %d tags", line, METRIC_TAGS_MAX);
	for (int i = 0; i < n && rc == 0; i++) {
		const char *k = m[i].key;
		if (!tag_key_valid(k, strlen(k))) {
			rc = bus_fail(err, EINVAL, "line %zu: tag key '%s' is invalid: use "
				      KEY_RULE, line, bus_shown(s1, k, strlen(k)));
			break;
		}
		json_t *v = decode_string(m[i].value, m[i].value_len);
		if (!v) {
			rc = bus_fail(err, EINVAL, "line %zu: the value of tag '%s' must be a "
				      "string", line, k);
			break;
		}
		const char *s = json_string_value(v);
		size_t sn = json_string_length(v);
		const char *problem = tag_value_problem(s, sn);
		if (problem)
			rc = bus_fail(err, EINVAL, "line %zu: the value of tag '%s' %s", line, k,
				      problem);
		else
			tag_add(&pt->tags, k, strlen(k), s, sn);
		json_decref(v);
	}
done:
	buf_putc(&pt->tags, '}');
	free(m);
	free(keys);
	return rc;
}

static int parse_field(const struct json_member *f, size_t line, struct metric_point *pt,
		       struct bus_error *err)
{
	char s1[BUS_SHOWN_MAX];
	const char *key = f->key;

	if (strcmp(key, "value") == 0) {
		if (f->value[0] != '-' && !is_digit(f->value[0]))
			return bus_fail(err, EINVAL, "line %zu: \"value\" must be a JSON number%s",
					line, f->value[0] == '"' ? ", not a string" : "");
		if (!metric_number_parse(f->value, f->value_len, &pt->value))
			return bus_fail(err, EINVAL, "line %zu: value '%s' is not a finite number",
					line, bus_shown(s1, f->value, f->value_len));
		return 0;
	}
	if (strcmp(key, "tags") == 0)
		return parse_tags(f, line, pt, err);
	if (strcmp(key, "metric") != 0 && strcmp(key, "unit") != 0)
		return bus_fail(err, EINVAL, "line %zu: unknown field \"%s\": use metric, value, "
				"unit and tags", line, bus_shown(s1, key, strlen(key)));

	bool is_metric = key[0] == 'm';
	if (!is_metric && is_null(f))
		return 0;
	json_t *v = decode_string(f->value, f->value_len);
	if (!v)
		return bus_fail(err, EINVAL, "line %zu: \"%s\" must be a string", line, key);
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	int rc = 0;
	if (is_metric && !metric_name_valid(s, n)) {
		rc = bus_fail(err, EINVAL, "line %zu: metric name '%s' is invalid: use " NAME_RULE,
			      line, bus_shown(s1, s, n));
	} else if (!is_metric && n && !unit_valid(s, n)) {
		rc = bus_fail(err, EINVAL, "line %zu: unit '%s' is invalid: use " UNIT_RULE, line,
			      bus_shown(s1, s, n));
	} else {
		char *dst = is_metric ? pt->name : pt->unit;
		memcpy(dst, s, n);
		dst[n] = '\0';
	}
	json_decref(v);
	return rc;
}

/* {"metric":NAME,"value":NUMBER,"unit":STRING,"tags":{STRING:STRING}} */
static int parse_object(const char *p, size_t len, size_t line, struct metric_point *pt,
			struct bus_error *err)
{
	struct json_member *m = NULL;
	char *keys = NULL;
	bool have_metric = false, have_value = false;
	int rc = 0;

	if (!json_is_value(p, len))
		return bus_fail(err, EINVAL, "line %zu: not valid JSON", line);
	int n = members(p, len, &m, &keys);
	if (n == -ENOMEM)
		rc = bus_fail(err, ENOMEM, "out of memory");
	else if (n < 0)
		rc = bus_fail(err, EINVAL, "line %zu: a JSON point must be an object with unique "
			      "keys", line);
	tag_begin(&pt->tags);
	buf_putc(&pt->tags, '}');
	for (int i = 0; i < n && rc == 0; i++) {
		rc = parse_field(&m[i], line, pt, err);
		have_metric |= strcmp(m[i].key, "metric") == 0;
		have_value |= strcmp(m[i].key, "value") == 0;
	}
	if (rc == 0 && !have_metric)
		rc = bus_fail(err, EINVAL, "line %zu: a JSON point needs \"metric\"", line);
	if (rc == 0 && !have_value)
		rc = bus_fail(err, EINVAL, "line %zu: a JSON point needs \"value\"", line);
	free(m);
	free(keys);
	return rc;
}

static void points_free(struct points *ps)
{
	for (size_t i = 0; i < ps->n; i++)
		buf_free(&ps->v[i].tags);
	free(ps->v);
}

static struct metric_point *points_add(struct points *ps)
{
	if (ps->n == ps->cap) {
		size_t cap = ps->cap ? ps->cap * 2 : 16;
		struct metric_point *v = realloc(ps->v, cap * sizeof *v);
		if (!v)
			return NULL;
		ps->v = v;
		ps->cap = cap;
	}
	struct metric_point *pt = &ps->v[ps->n++];
	memset(pt, 0, sizeof *pt);
	buf_init(&pt->tags);
	return pt;
}

int metric_parse(const char *data, size_t len,
		 int (*fn)(void *ctx, const struct metric_point *p), void *ctx,
		 struct bus_error *err)
{
	struct points ps = {0};
	size_t at = 0, line = 0;
	int rc = 0;

	while (at < len && rc == 0) {
		const char *p = data + at;
		const char *nl = memchr(p, '\n', len - at);
		size_t n = nl ? (size_t)(nl - p) : len - at;
		at += n + (nl != NULL);
		line++;
		if (n && p[n - 1] == '\r')
			n--;
		if (n > METRIC_LINE_MAX) {
			rc = bus_fail(err, EINVAL, "line %zu: longer than %d bytes", line,
				      METRIC_LINE_MAX);
			break;
		}
		while (n && is_blank(p[n - 1]))
			n--;
		while (n && is_blank(p[0])) {
			p++;
			n--;
		}
		if (n == 0)
			continue;
		if (ps.n == INT_MAX) {
			rc = bus_fail(err, EINVAL, "line %zu: too many points in one write", line);
			break;
		}
		struct metric_point *pt = points_add(&ps);
		if (!pt) {
			rc = bus_fail(err, ENOMEM, "out of memory");
			break;
		}
		if (p[0] == '{')
			rc = parse_object(p, n, line, pt, err);
		else
			rc = parse_text(p, n, line, pt, err);
		if (rc == 0 && !buf_ok(&pt->tags))
			rc = bus_fail(err, ENOMEM, "out of memory");
	}
	if (rc == 0 && ps.n == 0)
		rc = bus_fail(err, EINVAL, "no metric point in the write: write NAME VALUE [UNIT] "
			      "[key=value ...] or a JSON object");
	for (size_t i = 0; i < ps.n && rc == 0 && fn; i++)
		rc = fn(ctx, &ps.v[i]);
	if (rc == 0)
		rc = (int)ps.n;
	points_free(&ps);
	return rc;
}

/* Appends the decimal r / 10^k (0 <= k <= 15) in plain notation. */
static void put_scaled(struct buf *b, long long r, int k)
{
	char out[48], *p = out + sizeof out;
	unsigned long long u = r < 0 ? 0ull - (unsigned long long)r : (unsigned long long)r;
	int i = 0;
	do {
		if (k && i == k)
			*--p = '.';
		*--p = (char)('0' + u % 10);
		u /= 10;
		i++;
	} while (u || i <= k);
	if (r < 0)
		*--p = '-';
	buf_append(b, p, (size_t)(out + sizeof out - p));
}

/* Values with a few decimals, the usual case: the fewest decimals k whose nearest
 * decimal r / 10^k reads back as v. The division of two exact doubles is correctly
 * rounded, as strtod is, so the test is exact; r < 2^53 keeps v * 10^k within far
 * less than 0.5 of r, so no shorter form is missed. */
static bool format_few_decimals(struct buf *b, double v)
{
	static const double pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8};
	double a = fabs(v);
	if (!(a >= 1e-4 && a < 1e15))
		return false;
	for (int k = 0; k < 9; k++) {
		double x = v * pow10[k];
		if (fabs(x) >= 9007199254740992.0)
			return false;
		long long r = llround(x);
		if ((double)r / pow10[k] == v) {
			put_scaled(b, r, k);
			return true;
		}
	}
	return false;
}

void metric_format_value(struct buf *b, double v)
{
	char e[40], f[48];
	int digits;

	if (!isfinite(v)) {
		buf_puts(b, "null");
		return;
	}
	/* Integers, the common case, print as they are. */
	if (fabs(v) < 1e15 && v == (double)(long long)v && !(v == 0 && signbit(v))) {
		put_scaled(b, (long long)v, 0);
		return;
	}
	if (format_few_decimals(b, v))
		return;
	/* The fewest significant digits that read back exactly; 17 always do. A double
	 * whose shortest form has k <= 15 digits prints at 15 digits as those k digits
	 * and zeros (it lies within 1.2e-16 of them, less than half a 15th digit), so
	 * three tries find it: 15 (then drop the zeros), 16, 17. Subnormals have fewer
	 * bits, so for them every length is tried. */
	for (digits = fabs(v) < DBL_MIN ? 1 : 15; digits < 17; digits++) {
		snprintf(e, sizeof e, "%.*e", digits - 1, v);
		if (strtod(e, NULL) == v)
			break;
	}
	if (digits == 15 && fabs(v) >= DBL_MIN) {
		const char *mant_end = strchr(e, 'e');
		while (digits > 1 && mant_end[-1] == '0') {
			mant_end--;
			digits--;
		}
	}
	snprintf(e, sizeof e, "%.*e", digits - 1, v);
	/* Plain notation for 1e-4 <= |v| < 1e16 (as Python's repr), else exponent form.
	 * Both round at the same decimal place, so they carry the same digits. */
	int exp10 = atoi(strchr(e, 'e') + 1);
	if (exp10 < -4 || exp10 >= 16) {
		buf_puts(b, e);
		return;
	}
	int decimals = digits - 1 - exp10;
	snprintf(f, sizeof f, "%.*f", decimals > 0 ? decimals : 0, v);
	buf_puts(b, f);
}

void metric_format_point(struct buf *b, const char *timestamp, const char *agent,
			 const struct metric_point *p)
{
	buf_puts(b, "{\"timestamp\":");
	json_append_string(b, timestamp, strlen(timestamp));
	buf_puts(b, ",\"agent\":");
	json_append_string(b, agent, strlen(agent));
	buf_puts(b, ",\"metric\":");
	json_append_string(b, p->name, strlen(p->name));
	buf_puts(b, ",\"value\":");
	metric_format_value(b, p->value);
	buf_puts(b, ",\"unit\":");
	json_append_string(b, p->unit, strlen(p->unit));
	buf_puts(b, ",\"tags\":");
	if (p->tags.len)
		buf_append(b, p->tags.data, p->tags.len);
	else
		buf_puts(b, "{}");
	buf_puts(b, "}\n");
}
