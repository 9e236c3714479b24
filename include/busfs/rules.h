/* rules.h — alert rules written to alerts/rules (SPEC §6), without state.
 *
 * A write is lines of `NAME METRIC STAT OP THRESHOLD [SEVERITY] [for=SECONDS]`;
 * `#` starts a comment, blank lines are skipped, and an empty write means "no
 * rules". One bad line refuses the whole write (EINVAL naming the line). Evaluating
 * rules against metrics, and the built-in rules, belong to the caller. */
#ifndef BUSFS_RULES_H
#define BUSFS_RULES_H

#include <stdbool.h>
#include <stddef.h>

#include "busfs/buf.h"
#include "busfs/error.h"
#include "busfs/metric.h"

#define RULE_NAME_MAX 64   /* [A-Za-z_][A-Za-z0-9_.-]{0,63} */

enum rule_stat {
	STAT_COUNT, STAT_MIN, STAT_MAX, STAT_AVG, STAT_P50, STAT_P95, STAT_P99, STAT_RATE,
};
enum rule_op { OP_GT, OP_GE, OP_LT, OP_LE };
enum rule_severity { SEV_INFO, SEV_WARNING, SEV_CRITICAL };

struct rule {
	char name[RULE_NAME_MAX + 1];
	char metric[METRIC_NAME_MAX + 1];
	enum rule_stat stat;
	enum rule_op op;
	double threshold;             /* finite */
	enum rule_severity severity;  /* SEV_WARNING when not given */
	double for_s;                 /* finite, >= 0; 0 when not given */
};

/* Rules in the order they were given; names are unique. */
struct rule_set {
	struct rule *v;
	size_t n, cap;
};

void rule_set_init(struct rule_set *s);
void rule_set_free(struct rule_set *s);

/* Parses one write into out, which is emptied first. Returns 0, or -EINVAL (a bad
 * line or a name given twice) / -ENOMEM with err filled; out is then empty. */
int rules_parse(const char *data, size_t len, struct rule_set *out, struct bus_error *err);

/* `>`: dst becomes a copy of src. `>>`: each rule of src replaces the rule of the
 * same name in dst (keeping its position) or is appended. Return 0 or -ENOMEM, in
 * which case dst is unchanged. */
int rule_set_replace(struct rule_set *dst, const struct rule_set *src);
int rule_set_merge(struct rule_set *dst, const struct rule_set *src);

/* The rule of that name, or NULL. */
const struct rule *rule_set_find(const struct rule_set *s, const char *name);

/* Appends one canonical line, e.g. "slow coordination.time p95 > 10000 critical for=10\n"
 * (severity always, for= only when not 0); rules_parse reads it back to the same rule. */
void rule_format(struct buf *b, const struct rule *r);

/* "p95", ">=", "critical"; NULL for an out-of-range value. */
const char *rule_stat_name(enum rule_stat stat);
const char *rule_op_name(enum rule_op op);
const char *rule_severity_name(enum rule_severity sev);

/* value OP threshold; false when either is NaN. */
bool rule_compare(enum rule_op op, double value, double threshold);

#endif
