/*
 * fuzz_rules.c — alert rules (core/rules.c rules_parse) and their canonical form.
 *
 * Invariants:
 *  - every parsed rule is well formed (names valid, threshold finite, for_s finite and
 *    >= 0 and never -0, stat/op/severity in range), names are unique;
 *  - round trip: rule_format then rules_parse gives the very same rule (bit for bit),
 *    one rule at a time and for the whole set at once, which is what a snapshot's
 *    REC_RULES record holds: a rule that did not read back would make the store
 *    unloadable;
 *  - a refused write leaves the set empty and says why (EINVAL, with a line number);
 *  - rule_set_merge/replace keep names unique.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "busfs/metric.h"
#include "busfs/rules.h"
#include "common.h"

static bool same_double(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static bool same_rule(const struct rule *a, const struct rule *b)
{
	return strcmp(a->name, b->name) == 0 && strcmp(a->metric, b->metric) == 0 &&
	       a->stat == b->stat && a->op == b->op && same_double(a->threshold, b->threshold) &&
	       a->severity == b->severity && same_double(a->for_s, b->for_s);
}

static void check_rule(const struct rule *r)
{
	FUZZ_CHECK(strlen(r->name) >= 1 && strlen(r->name) <= RULE_NAME_MAX, "name length");
	FUZZ_CHECK(metric_name_valid(r->metric, strlen(r->metric)), "metric %s", r->metric);
	FUZZ_CHECK(rule_stat_name(r->stat) && rule_op_name(r->op) &&
		   rule_severity_name(r->severity), "enum out of range");
	FUZZ_CHECK(isfinite(r->threshold), "threshold not finite");
	FUZZ_CHECK(isfinite(r->for_s) && r->for_s >= 0 && !signbit(r->for_s), "for_s %g",
		   r->for_s);

	struct buf line;
	buf_init(&line);
	rule_format(&line, r);
	FUZZ_CHECK(buf_ok(&line) && line.len > 1 && line.data[line.len - 1] == '\n' &&
		   !memchr(line.data, '\n', line.len - 1), "rule_format is not one line");
	struct rule_set back;
	rule_set_init(&back);
	struct bus_error err = {0};
	int rc = rules_parse(line.data, line.len, &back, &err);
	FUZZ_CHECK(rc == 0 && back.n == 1, "the canonical line of rule %s is refused (%s): %s",
		   r->name, err.reason, line.data);
	FUZZ_CHECK(same_rule(&back.v[0], r), "rule %s reads back differently from its "
		   "canonical line: %s", r->name, line.data);
	rule_set_free(&back);
	buf_free(&line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *p = malloc(size ? size : 1);
	memcpy(p, data, size);

	struct rule_set s;
	rule_set_init(&s);
	struct bus_error err = {0};
	int rc = rules_parse(p, size, &s, &err);
	if (rc < 0) {
		FUZZ_CHECK(s.n == 0, "a refused write left %zu rule(s)", s.n);
		FUZZ_CHECK(rc == -ENOMEM || (rc == -EINVAL && err.code == EINVAL &&
						    strncmp(err.reason, "line ", 5) == 0),
			   "refused with %d (%d) '%s'", rc, err.code, err.reason);
	}
	for (size_t i = 0; i < s.n; i++) {
		check_rule(&s.v[i]);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(s.v[i].name, s.v[j].name) != 0, "rule %s given twice",
				   s.v[i].name);
		FUZZ_CHECK(rule_set_find(&s, s.v[i].name) == &s.v[i], "rule_set_find");
	}

	/* The whole set, as a snapshot stores it. */
	struct buf text;
	buf_init(&text);
	for (size_t i = 0; i < s.n; i++)
		rule_format(&text, &s.v[i]);
	struct rule_set back;
	rule_set_init(&back);
	rc = rules_parse(text.data ? text.data : "", text.len, &back, &err);
	FUZZ_CHECK(rc == 0 && back.n == s.n, "the canonical text of %zu rule(s) is refused (%s)",
		   s.n, err.reason);
	for (size_t i = 0; i < s.n; i++)
		FUZZ_CHECK(same_rule(&back.v[i], &s.v[i]), "rule %zu differs after a round trip", i);

	/* `>>` of the set onto itself and onto a copy keeps names unique. */
	struct rule_set merged;
	rule_set_init(&merged);
	FUZZ_CHECK(rule_set_replace(&merged, &s) == 0 && merged.n == s.n, "replace");
	FUZZ_CHECK(rule_set_merge(&merged, &back) == 0 && merged.n == s.n, "merge of the same "
		   "names grew the set");
	rule_set_free(&merged);
	rule_set_free(&back);
	buf_free(&text);
	rule_set_free(&s);
	free(p);
	return 0;
}
