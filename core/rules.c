/* rules.c — parsing, merging and printing alert rules. Pure: no bus state. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/rules.h"

#define FORM "NAME METRIC STAT OP THRESHOLD [SEVERITY] [for=SECONDS]"

static const char *const stat_names[] = {
	"count", "min", "max", "avg", "p50", "p95", "p99", "rate",
};
static const char *const op_names[] = { ">", ">=", "<", "<=" };
static const char *const severity_names[] = { "info", "warning", "critical" };

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const char *rule_stat_name(enum rule_stat stat)
{
	return (unsigned)stat < COUNT(stat_names) ? stat_names[stat] : NULL;
}

const char *rule_op_name(enum rule_op op)
{
	return (unsigned)op < COUNT(op_names) ? op_names[op] : NULL;
}

const char *rule_severity_name(enum rule_severity sev)
{
	return (unsigned)sev < COUNT(severity_names) ? severity_names[sev] : NULL;
}

bool rule_compare(enum rule_op op, double value, double threshold)
{
	switch (op) {
	case OP_GT: return value > threshold;
	case OP_GE: return value >= threshold;
	case OP_LT: return value < threshold;
	case OP_LE: return value <= threshold;
	}
	return false;
}

void rule_set_init(struct rule_set *s)
{
	memset(s, 0, sizeof *s);
}

void rule_set_free(struct rule_set *s)
{
	free(s->v);
	rule_set_init(s);
}

static int reserve(struct rule_set *s, size_t n)
{
	if (n <= s->cap)
		return 0;
	size_t cap = s->cap ? s->cap : 8;
	while (cap < n)
		cap *= 2;
	struct rule *v = realloc(s->v, cap * sizeof *v);
	if (!v)
		return -ENOMEM;
	s->v = v;
	s->cap = cap;
	return 0;
}

static struct rule *find(const struct rule_set *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->v[i].name, name) == 0)
			return &s->v[i];
	return NULL;
}

const struct rule *rule_set_find(const struct rule_set *s, const char *name)
{
	return find(s, name);
}

int rule_set_replace(struct rule_set *dst, const struct rule_set *src)
{
	if (dst == src)
		return 0;
	struct rule *v = NULL;
	if (src->n) {
		v = malloc(src->n * sizeof *v);
		if (!v)
			return -ENOMEM;
		memcpy(v, src->v, src->n * sizeof *v);
	}
	free(dst->v);
	dst->v = v;
	dst->n = dst->cap = src->n;
	return 0;
}

int rule_set_merge(struct rule_set *dst, const struct rule_set *src)
{
	if (dst == src)
		return 0;
	/* Room for the worst case first, so nothing can fail half-way. */
	if (reserve(dst, dst->n + src->n) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < src->n; i++) {
		struct rule *r = find(dst, src->v[i].name);
		if (!r)
			r = &dst->v[dst->n++];
		*r = src->v[i];
	}
	return 0;
}

void rule_format(struct buf *b, const struct rule *r)
{
	buf_printf(b, "%s %s %s %s ", r->name, r->metric, rule_stat_name(r->stat),
		   rule_op_name(r->op));
	metric_format_value(b, r->threshold);
	buf_putc(b, ' ');
	buf_puts(b, rule_severity_name(r->severity));
	if (r->for_s != 0) {
		buf_puts(b, " for=");
		metric_format_value(b, r->for_s);
	}
	buf_putc(b, '\n');
}


static bool rule_name_valid(const char *p, size_t n)
{
	if (n == 0 || n > RULE_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
		bool more = (c >= '0' && c <= '9') || c == '.' || c == '-';
		if (!alpha && !(i > 0 && more))
			return false;
	}
	return true;
}

/* The index of the word p[0..n) in names, or -1. */
static int word(const char *const *names, size_t count, const char *p, size_t n)
{
	for (size_t i = 0; i < count; i++)
		if (strlen(names[i]) == n && memcmp(names[i], p, n) == 0)
			return (int)i;
	return -1;
}

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

struct token {
	const char *p;
	size_t n;
};

/* Splits a line (comment already cut) into at most max tokens; returns how many
 * there are, which may exceed max. */
static size_t tokens(const char *p, size_t len, struct token *out, size_t max)
{
	size_t count = 0, i = 0;
	for (;;) {
		while (i < len && is_blank(p[i]))
			i++;
		if (i == len)
			return count;
		size_t start = i;
		while (i < len && !is_blank(p[i]))
			i++;
		if (count < max)
			out[count] = (struct token){p + start, i - start};
		count++;
	}
}

#define TOKENS_MAX 7

static int parse_line(const char *p, size_t len, size_t line, struct rule *r,
		      struct bus_error *err)
{
	static const char *const fields[] = {"NAME", "METRIC", "STAT", "OP", "THRESHOLD"};
	char s1[BUS_SHOWN_MAX];
	struct token t[TOKENS_MAX];
	size_t n = tokens(p, len, t, TOKENS_MAX);
	int k;

	if (n < COUNT(fields))
		return bus_fail(err, EINVAL, "line %zu: missing %s: a rule is " FORM, line,
				fields[n]);
	if (!rule_name_valid(t[0].p, t[0].n))
		return bus_fail(err, EINVAL, "line %zu: rule name '%s' is invalid: use "
				"[A-Za-z_][A-Za-z0-9_.-], at most 64 bytes", line,
				bus_shown(s1, t[0].p, t[0].n));
	memcpy(r->name, t[0].p, t[0].n);
	r->name[t[0].n] = '\0';
	if (!metric_name_valid(t[1].p, t[1].n))
		return bus_fail(err, EINVAL, "line %zu: metric name '%s' is invalid: use "
				"[a-zA-Z_][a-zA-Z0-9_.:-], at most 128 bytes", line,
				bus_shown(s1, t[1].p, t[1].n));
	memcpy(r->metric, t[1].p, t[1].n);
	r->metric[t[1].n] = '\0';
	if ((k = word(stat_names, COUNT(stat_names), t[2].p, t[2].n)) < 0)
		return bus_fail(err, EINVAL, "line %zu: unknown statistic '%s': use count, min, "
				"max, avg, p50, p95, p99 or rate", line, bus_shown(s1, t[2].p, t[2].n));
	r->stat = (enum rule_stat)k;
	if ((k = word(op_names, COUNT(op_names), t[3].p, t[3].n)) < 0)
		return bus_fail(err, EINVAL, "line %zu: unknown comparison '%s': use >, >=, < "
				"or <=", line, bus_shown(s1, t[3].p, t[3].n));
	r->op = (enum rule_op)k;
	if (!metric_number_parse(t[4].p, t[4].n, &r->threshold))
		return bus_fail(err, EINVAL, "line %zu: threshold '%s' is not a finite number",
				line, bus_shown(s1, t[4].p, t[4].n));

	bool have_severity = false, have_for = false;
	r->severity = SEV_WARNING;
	r->for_s = 0;
	for (size_t i = COUNT(fields); i < n; i++) {
		if (i >= TOKENS_MAX)
			return bus_fail(err, EINVAL, "line %zu: too many fields: a rule is " FORM,
					line);
		if (!have_severity &&
		    (k = word(severity_names, COUNT(severity_names), t[i].p, t[i].n)) >= 0) {
			r->severity = (enum rule_severity)k;
			have_severity = true;
		} else if (!have_for && t[i].n >= 4 && memcmp(t[i].p, "for=", 4) == 0) {
			if (!metric_number_parse(t[i].p + 4, t[i].n - 4, &r->for_s) ||
			    r->for_s < 0)
				return bus_fail(err, EINVAL, "line %zu: '%s' needs a number of "
						"seconds >= 0", line, bus_shown(s1, t[i].p, t[i].n));
			if (r->for_s == 0)
				r->for_s = 0;   /* not -0 */
			have_for = true;
		} else {
			return bus_fail(err, EINVAL, "line %zu: unexpected '%s': after THRESHOLD "
					"come an optional info, warning or critical and an "
					"optional for=SECONDS", line, bus_shown(s1, t[i].p, t[i].n));
		}
	}
	return 0;
}

/* The next line of data[*at..len) with its comment cut; false at the end. */
static bool next_line(const char *data, size_t len, size_t *at, const char **p, size_t *n)
{
	if (*at >= len)
		return false;
	*p = data + *at;
	const char *nl = memchr(*p, '\n', len - *at);
	*n = nl ? (size_t)(nl - *p) : len - *at;
	*at += *n + (nl != NULL);
	const char *hash = memchr(*p, '#', *n);
	if (hash)
		*n = (size_t)(hash - *p);
	return true;
}

/* The line where the rule `name` first appears (all lines before `until` are valid). */
static size_t first_line(const char *data, size_t len, const char *name, size_t until)
{
	const char *p;
	size_t n, at = 0, line = 0;
	struct token t;
	while (next_line(data, len, &at, &p, &n) && ++line < until)
		if (tokens(p, n, &t, 1) && t.n == strlen(name) && memcmp(t.p, name, t.n) == 0)
			return line;
	return 0;
}

int rules_parse(const char *data, size_t len, struct rule_set *out, struct bus_error *err)
{
	const char *p;
	size_t n, at = 0, line = 0;
	int rc = 0;

	out->n = 0;
	while (rc == 0 && next_line(data, len, &at, &p, &n)) {
		line++;
		if (tokens(p, n, NULL, 0) == 0)
			continue;
		if (reserve(out, out->n + 1) < 0) {
			rc = bus_fail(err, ENOMEM, "out of memory");
			break;
		}
		struct rule *r = &out->v[out->n];
		rc = parse_line(p, n, line, r, err);
		if (rc == 0 && find(out, r->name)) {
			size_t first = first_line(data, len, r->name, line);
			rc = bus_fail(err, EINVAL, "line %zu: rule '%s' was already given on "
				      "line %zu", line, r->name, first);
		}
		if (rc == 0)
			out->n++;
	}
	if (rc < 0)
		out->n = 0;
	return rc;
}
