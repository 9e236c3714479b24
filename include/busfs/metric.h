/* metric.h — metric points written to agents/A/metrics (SPEC §5), without state.
 *
 * One write carries one or many lines; each is a point, as text
 * ("coordination.time 150 ms phase=build") or as a JSON object
 * ({"metric":..,"value":..,"unit":..,"tags":{..}}). A write is all-or-nothing: one
 * bad line refuses the whole write with EINVAL and a reason naming the line.
 * Where points are stored and summarised is the caller's business. */
#ifndef BUSFS_METRIC_H
#define BUSFS_METRIC_H

#include <stdbool.h>
#include <stddef.h>

#include "busfs/buf.h"
#include "busfs/error.h"

#define METRIC_NAME_MAX 128       /* bytes of a metric name */
#define METRIC_UNIT_MAX 32        /* bytes of a unit */
#define METRIC_TAGS_MAX 16        /* tags of one point */
#define METRIC_TAG_KEY_MAX 64     /* bytes of a tag key */
#define METRIC_TAG_VALUE_MAX 256  /* bytes of a tag value (at least 1) */
#define METRIC_LINE_MAX 4096      /* bytes of a line, without its "\n" or "\r\n" */

struct metric_point {
	char name[METRIC_NAME_MAX + 1];
	double value;                    /* always finite */
	char unit[METRIC_UNIT_MAX + 1];  /* "" when none */
	struct buf tags;  /* compact JSON object, keys in given order: {"phase":"build"};
			   * "{}" when none */
};

/* Parses every line of one write. Blank lines are skipped; the last line needs no
 * newline. Only when ALL lines are valid is fn called, once per point in order; if
 * fn returns non-zero, parsing stops and that value is returned. Returns the number
 * of points (> 0), or -EINVAL (a bad line, or no point at all) / -ENOMEM with err
 * filled. The point passed to fn is valid only during the call; a NULL fn only
 * validates. */
int metric_parse(const char *data, size_t len,
		 int (*fn)(void *ctx, const struct metric_point *p), void *ctx,
		 struct bus_error *err);

/* A finite decimal number: [+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)? whose value is
 * not out of range (1e999 is refused; 1e-999 reads as 0). No hex, nan or inf.
 * p[0..len) need not be NUL-terminated. Shared by metric values and alert thresholds. */
bool metric_number_parse(const char *p, size_t len, double *out);

/* Appends the value as the shortest decimal text that strtod() reads back exactly
 * ("150", "512.5", "1e-07", "-0"); a valid JSON number. A non-finite value, which
 * metric_parse never yields, is written as null. */
void metric_format_value(struct buf *b, double v);

/* Appends one stored point as a JSONL line:
 * {"timestamp":"…","agent":"…","metric":"…","value":…,"unit":"…","tags":{…}}\n
 * timestamp is the caller's RFC 3339 text; strings are JSON-escaped. */
void metric_format_point(struct buf *b, const char *timestamp, const char *agent,
			 const struct metric_point *p);

/* [a-zA-Z_][a-zA-Z0-9_.:-]{0,127} */
bool metric_name_valid(const char *name, size_t len);

#endif
