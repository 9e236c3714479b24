/*
 * test_rules.c — core/rules.c: alert rule lines (SPEC §6), comments and defaults,
 * refused writes, replace (>) and merge (>>) of rule sets, the canonical line
 * format, and the comparison operators.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/rules.h"
#include "unit.h"

static struct rule_set set;
static struct bus_error err;

static void setup(void)
{
    rule_set_init(&set);
    memset(&err, 0, sizeof err);
}

static void teardown(void) { rule_set_free(&set); }

#define RULES_TEST(name) Test(rules, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

static int parse_into(struct rule_set *s, const char *text)
{
    return rules_parse(text, strlen(text), s, &err);
}

static int parse(const char *text)
{
    return parse_into(&set, text);
}

static const char *formatted(const struct rule *r)
{
    static char out[512];
    struct buf b;
    buf_init(&b);
    rule_format(&b, r);
    cr_assert(buf_ok(&b));
    cr_assert_lt(b.len, sizeof out);
    memcpy(out, b.data, b.len);
    out[b.len] = '\0';
    buf_free(&b);
    return out;
}

/* The names of a set, space-separated, in order. */
static const char *names(const struct rule_set *s)
{
    static char out[1024];
    out[0] = '\0';
    for (size_t i = 0; i < s->n; i++) {
        if (i)
            strcat(out, " ");
        strcat(out, s->v[i].name);
    }
    return out;
}

/* ---------- accepted rules ---------- */

RULES_TEST(the_spec_examples)
{
    cr_assert_eq(parse("slow_coordination coordination.time p95 > 10000 critical\n"
                       "many_tasks tasks.done rate > 5 warning for=30\n"), 0, "%s", err.reason);
    cr_assert_eq(set.n, 2);
    const struct rule *r = &set.v[0];
    cr_assert_str_eq(r->name, "slow_coordination");
    cr_assert_str_eq(r->metric, "coordination.time");
    cr_assert_eq(r->stat, STAT_P95);
    cr_assert_eq(r->op, OP_GT);
    cr_assert_eq(r->threshold, 10000.0);
    cr_assert_eq(r->severity, SEV_CRITICAL);
    cr_assert_eq(r->for_s, 0.0);
    r = &set.v[1];
    cr_assert_str_eq(r->name, "many_tasks");
    cr_assert_str_eq(r->metric, "tasks.done");
    cr_assert_eq(r->stat, STAT_RATE);
    cr_assert_eq(r->op, OP_GT);
    cr_assert_eq(r->threshold, 5.0);
    cr_assert_eq(r->severity, SEV_WARNING);
    cr_assert_eq(r->for_s, 30.0);
}

RULES_TEST(severity_defaults_to_warning_and_for_to_zero)
{
    cr_assert_eq(parse("r m avg < 1.5"), 0, "%s", err.reason);
    cr_assert_eq(set.n, 1);
    cr_assert_eq(set.v[0].stat, STAT_AVG);
    cr_assert_eq(set.v[0].op, OP_LT);
    cr_assert_eq(set.v[0].threshold, 1.5);
    cr_assert_eq(set.v[0].severity, SEV_WARNING);
    cr_assert_eq(set.v[0].for_s, 0.0);
    cr_assert_eq(signbit(set.v[0].for_s), 0);
}

RULES_TEST(every_statistic_word)
{
    static const struct {
        const char *word;
        enum rule_stat stat;
    } stats[] = {
        {"count", STAT_COUNT}, {"min", STAT_MIN}, {"max", STAT_MAX}, {"avg", STAT_AVG},
        {"p50", STAT_P50},     {"p95", STAT_P95}, {"p99", STAT_P99}, {"rate", STAT_RATE},
    };
    for (size_t i = 0; i < sizeof stats / sizeof *stats; i++) {
        char line[64];
        snprintf(line, sizeof line, "r m %s >= 1", stats[i].word);
        cr_assert_eq(parse(line), 0, "'%s': %s", line, err.reason);
        cr_assert_eq(set.v[0].stat, stats[i].stat, "'%s'", stats[i].word);
        cr_assert_str_eq(rule_stat_name(stats[i].stat), stats[i].word);
    }
    cr_assert_null(rule_stat_name((enum rule_stat)8));
    cr_assert_null(rule_stat_name((enum rule_stat)-1));
}

RULES_TEST(every_comparison)
{
    static const struct {
        const char *word;
        enum rule_op op;
    } ops[] = {{">", OP_GT}, {">=", OP_GE}, {"<", OP_LT}, {"<=", OP_LE}};
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        char line[64];
        snprintf(line, sizeof line, "r m max %s -2", ops[i].word);
        cr_assert_eq(parse(line), 0, "'%s': %s", line, err.reason);
        cr_assert_eq(set.v[0].op, ops[i].op, "'%s'", ops[i].word);
        cr_assert_eq(set.v[0].threshold, -2.0);
        cr_assert_str_eq(rule_op_name(ops[i].op), ops[i].word);
    }
    cr_assert_null(rule_op_name((enum rule_op)4));
}

RULES_TEST(every_severity)
{
    static const struct {
        const char *word;
        enum rule_severity sev;
    } sevs[] = {{"info", SEV_INFO}, {"warning", SEV_WARNING}, {"critical", SEV_CRITICAL}};
    for (size_t i = 0; i < sizeof sevs / sizeof *sevs; i++) {
        char line[64];
        snprintf(line, sizeof line, "r m min <= 0 %s", sevs[i].word);
        cr_assert_eq(parse(line), 0, "'%s': %s", line, err.reason);
        cr_assert_eq(set.v[0].severity, sevs[i].sev, "'%s'", sevs[i].word);
        cr_assert_str_eq(rule_severity_name(sevs[i].sev), sevs[i].word);
    }
    cr_assert_null(rule_severity_name((enum rule_severity)3));
}

RULES_TEST(for_takes_any_finite_number_of_seconds_from_zero)
{
    static const struct {
        const char *text;
        double want;
    } fors[] = {{"for=0", 0}, {"for=-0", 0}, {"for=0.5", 0.5}, {"for=30", 30}, {"for=1e3", 1000},
                {"for=+7", 7}};
    for (size_t i = 0; i < sizeof fors / sizeof *fors; i++) {
        char line[64];
        snprintf(line, sizeof line, "r m p99 > 1 info %s", fors[i].text);
        cr_assert_eq(parse(line), 0, "'%s': %s", line, err.reason);
        cr_assert_eq(set.v[0].for_s, fors[i].want, "'%s'", fors[i].text);
        cr_assert_eq(signbit(set.v[0].for_s), 0, "'%s' is not negative", fors[i].text);
        cr_assert_eq(set.v[0].severity, SEV_INFO);
    }
}

RULES_TEST(severity_and_for_may_come_in_either_order)
{
    cr_assert_eq(parse("a m count > 1 for=5 critical\nb m count > 1 for=5"), 0, "%s", err.reason);
    cr_assert_eq(set.n, 2);
    cr_assert_eq(set.v[0].severity, SEV_CRITICAL);
    cr_assert_eq(set.v[0].for_s, 5.0);
    cr_assert_eq(set.v[1].severity, SEV_WARNING);
    cr_assert_eq(set.v[1].for_s, 5.0);
}

RULES_TEST(names_and_metrics_use_their_full_alphabets)
{
    char name[RULE_NAME_MAX + 1], metric[METRIC_NAME_MAX + 1], line[512];
    memset(name, 'N', RULE_NAME_MAX);
    name[RULE_NAME_MAX] = '\0';
    memset(metric, 'm', METRIC_NAME_MAX);
    metric[METRIC_NAME_MAX] = '\0';
    snprintf(line, sizeof line, "%s %s max > 1\n_a.b-9 x:y-z.w_1 max > 1", name, metric);
    cr_assert_eq(parse(line), 0, "%s", err.reason);
    cr_assert_eq(set.n, 2);
    cr_assert_str_eq(set.v[0].name, name, "a name of 64 bytes");
    cr_assert_str_eq(set.v[0].metric, metric, "a metric name of 128 bytes");
    cr_assert_str_eq(set.v[1].name, "_a.b-9");
    cr_assert_str_eq(set.v[1].metric, "x:y-z.w_1");
}

RULES_TEST(comments_blank_lines_and_crlf)
{
    const char *text = "# alert rules\n"
                       "\n"
                       "   \t\n"
                       "a m p50 > 1 # trailing comment critical\n"
                       "   # indented comment\r\n"
                       "b m p50 > 2 info#no space before the comment\r\n"
                       "c m p50 > 3\r\n"
                       "#last";
    cr_assert_eq(parse(text), 0, "%s", err.reason);
    cr_assert_str_eq(names(&set), "a b c");
    cr_assert_eq(set.v[0].severity, SEV_WARNING, "the comment's words are ignored");
    cr_assert_eq(set.v[1].severity, SEV_INFO);
    cr_assert_eq(set.v[2].threshold, 3.0, "CRLF is not part of the threshold");
}

RULES_TEST(the_last_line_needs_no_newline)
{
    cr_assert_eq(parse("a m p50 > 1\nb m max < 2 critical for=3"), 0, "%s", err.reason);
    cr_assert_eq(set.n, 2);
    cr_assert_eq(set.v[1].for_s, 3.0);
}

RULES_TEST(an_empty_write_means_no_rules_and_empties_the_set)
{
    static const char *const empty[] = {"", "\n", "# nothing\n", "  \n\t\n# a\n#b", "\r\n"};
    for (size_t i = 0; i < sizeof empty / sizeof *empty; i++) {
        cr_assert_eq(parse("x m max > 1\ny m max > 1"), 0, "%s", err.reason);
        cr_assert_eq(set.n, 2);
        cr_assert_eq(parse(empty[i]), 0, "'%s': %s", empty[i], err.reason);
        cr_assert_eq(set.n, 0, "'%s' gives no rules", empty[i]);
    }
}

RULES_TEST(rules_keep_the_order_they_were_written_in)
{
    cr_assert_eq(parse("z m max > 1\na m max > 1\nm m max > 1\n"), 0, "%s", err.reason);
    cr_assert_str_eq(names(&set), "z a m");
}

/* ---------- refused writes ---------- */

/* Arrays, not pointers: Criterion copies parameters into a new process image. */
struct bad {
    char text[200];
    char why[80];          /* words the reason must contain */
};

static const struct bad bad_writes[] = {
    /* missing fields */
    {"r", "line 1: missing METRIC"},
    {"r m", "line 1: missing STAT"},
    {"r m p95", "line 1: missing OP"},
    {"r m p95 >", "line 1: missing THRESHOLD"},
    {"r m p95 > # 5", "line 1: missing THRESHOLD"},
    /* names */
    {"9r m p95 > 1", "line 1: rule name '9r' is invalid"},
    {"-r m p95 > 1", "line 1: rule name '-r'"},
    {"r:x m p95 > 1", "line 1: rule name 'r:x'"},
    {"r/x m p95 > 1", "line 1: rule name 'r/x'"},
    {"caf\xc3\xa9 m p95 > 1", "line 1: rule name 'caf?" "?'"},
    {"NNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNN m p95 > 1",
     "line 1: rule name 'NNNNN"},
    {"r 9m p95 > 1", "line 1: metric name '9m' is invalid"},
    {"r m/x p95 > 1", "line 1: metric name 'm/x'"},
    /* statistics */
    {"r m P95 > 1", "line 1: unknown statistic 'P95'"},
    {"r m p90 > 1", "line 1: unknown statistic 'p90'"},
    {"r m mean > 1", "line 1: unknown statistic 'mean'"},
    {"r m > 1 info", "line 1: unknown statistic '>'"},
    /* comparisons */
    {"r m p95 = 1", "line 1: unknown comparison '='"},
    {"r m p95 == 1", "line 1: unknown comparison '=='"},
    {"r m p95 >> 1", "line 1: unknown comparison '>>'"},
    {"r m p95 => 1", "line 1: unknown comparison '=>'"},
    {"r m p95 != 1", "line 1: unknown comparison '!='"},
    {"r m p95 gt 1", "line 1: unknown comparison 'gt'"},
    {"r m p95 >1", "line 1: missing THRESHOLD"},
    {"r m p95 >1 2", "line 1: unknown comparison '>1'"},
    /* thresholds */
    {"r m p95 > abc", "line 1: threshold 'abc' is not a finite number"},
    {"r m p95 > nan", "line 1: threshold 'nan' is not a finite number"},
    {"r m p95 > inf", "line 1: threshold 'inf'"},
    {"r m p95 > -Infinity", "line 1: threshold '-Infinity'"},
    {"r m p95 > 0x10", "line 1: threshold '0x10'"},
    {"r m p95 > 1e999", "line 1: threshold '1e999'"},
    {"r m p95 > 1.", "line 1: threshold '1.'"},
    {"r m p95 > 10ms", "line 1: threshold '10ms'"},
    /* severity and for= */
    {"r m p95 > 1 error", "line 1: unexpected 'error'"},
    {"r m p95 > 1 CRITICAL", "line 1: unexpected 'CRITICAL'"},
    {"r m p95 > 1 critical info", "line 1: unexpected 'info'"},
    {"r m p95 > 1 for=1 for=2", "line 1: unexpected 'for=2'"},
    {"r m p95 > 1 for=-1", "line 1: 'for=-1' needs a number of seconds >= 0"},
    {"r m p95 > 1 for=abc", "line 1: 'for=abc' needs a number of seconds"},
    {"r m p95 > 1 for=", "line 1: 'for=' needs a number of seconds"},
    {"r m p95 > 1 for=inf", "line 1: 'for=inf' needs"},
    {"r m p95 > 1 for=30s", "line 1: 'for=30s' needs"},
    {"r m p95 > 1 for 30", "line 1: unexpected 'for'"},
    {"r m p95 > 1 FOR=3", "line 1: unexpected 'FOR=3'"},
    {"r m p95 > 1 warning for=1 extra", "line 1: too many fields"},
    {"r m p95 > 1 2", "line 1: unexpected '2'"},
    /* duplicates and line numbers */
    {"a m max > 1\nb m max > 1\na m min < 2\n", "line 3: rule 'a' was already given on line 1"},
    {"# c\n\na m max > 1\n\nb m max > 1\nb m max > 1\n",
     "line 6: rule 'b' was already given on line 5"},
    {"a m max > 1\r\nb m max\r\n", "line 2: missing OP"},
    {"# one\n# two\nr m p95 > x\n", "line 3: threshold 'x'"},
    {"a m max > 1\nb m max > 1\nc m max > 1 severe\n", "line 3: unexpected 'severe'"},
};

ParameterizedTestParameters(rules, bad_writes_are_einval_naming_the_line)
{
    return cr_make_param_array(struct bad, (void *)bad_writes,
                               sizeof bad_writes / sizeof bad_writes[0]);
}

ParameterizedTest(const struct bad *b, rules, bad_writes_are_einval_naming_the_line,
                  .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)
{
    cr_assert_eq(parse("old m max > 1\nolder m max > 2"), 0, "%s", err.reason);
    cr_assert_eq(set.n, 2);
    int rc = parse(b->text);
    cr_assert_eq(rc, -EINVAL, "'%s' gave %d", b->text, rc);
    cr_assert_eq(err.code, EINVAL);
    cr_assert(strstr(err.reason, b->why), "'%s': reason '%s' lacks '%s'", b->text, err.reason,
              b->why);
    cr_assert_eq(set.n, 0, "'%s': the set is empty after an error", b->text);
}

/* ---------- replace (>) and merge (>>) ---------- */

RULES_TEST(replace_makes_an_independent_copy)
{
    struct rule_set src;
    rule_set_init(&src);
    cr_assert_eq(parse("a m max > 1\nb m max > 2"), 0, "%s", err.reason);
    cr_assert_eq(parse_into(&src, "c m min < 3 critical"), 0, "%s", err.reason);
    cr_assert_eq(rule_set_replace(&set, &src), 0);
    cr_assert_str_eq(names(&set), "c");
    cr_assert_eq(set.v[0].threshold, 3.0);
    cr_assert_eq(set.v[0].severity, SEV_CRITICAL);
    cr_assert_null(rule_set_find(&set, "a"));

    src.v[0].threshold = 99;     /* the copy does not share storage */
    rule_set_free(&src);
    cr_assert_eq(set.v[0].threshold, 3.0);
    cr_assert_str_eq(set.v[0].name, "c");
}

RULES_TEST(replace_with_an_empty_set_clears)
{
    struct rule_set src;
    rule_set_init(&src);
    cr_assert_eq(parse("a m max > 1\nb m max > 2"), 0, "%s", err.reason);
    cr_assert_eq(parse_into(&src, ""), 0, "%s", err.reason);
    cr_assert_eq(rule_set_replace(&set, &src), 0);
    cr_assert_eq(set.n, 0);
    cr_assert_eq(rule_set_merge(&set, &src), 0);
    cr_assert_eq(set.n, 0);
    rule_set_free(&src);
}

RULES_TEST(replace_or_merge_with_itself_changes_nothing)
{
    cr_assert_eq(parse("a m max > 1\nb m max > 2"), 0, "%s", err.reason);
    cr_assert_eq(rule_set_replace(&set, &set), 0);
    cr_assert_str_eq(names(&set), "a b");
    cr_assert_eq(rule_set_merge(&set, &set), 0);
    cr_assert_str_eq(names(&set), "a b");
    cr_assert_eq(set.v[1].threshold, 2.0);
}

RULES_TEST(merge_replaces_by_name_in_place_and_appends_new_names)
{
    struct rule_set src;
    rule_set_init(&src);
    cr_assert_eq(parse("a m max > 1\nb m max > 2\nc m max > 3"), 0, "%s", err.reason);
    cr_assert_eq(parse_into(&src, "d n p99 >= 40 info\nb other avg <= 20 critical for=9"), 0,
                 "%s", err.reason);
    cr_assert_eq(rule_set_merge(&set, &src), 0);
    cr_assert_str_eq(names(&set), "a b c d", "b keeps its place, d is appended");
    const struct rule *b = rule_set_find(&set, "b");
    cr_assert_not_null(b);
    cr_assert_eq(b, &set.v[1]);
    cr_assert_str_eq(b->metric, "other");
    cr_assert_eq(b->stat, STAT_AVG);
    cr_assert_eq(b->op, OP_LE);
    cr_assert_eq(b->threshold, 20.0);
    cr_assert_eq(b->severity, SEV_CRITICAL);
    cr_assert_eq(b->for_s, 9.0);
    cr_assert_eq(rule_set_find(&set, "a")->threshold, 1.0, "other rules are untouched");
    cr_assert_eq(rule_set_find(&set, "c")->threshold, 3.0);
    cr_assert_eq(rule_set_find(&set, "d")->threshold, 40.0);
    cr_assert_str_eq(names(&src), "d b", "the source is unchanged");
    rule_set_free(&src);
}

RULES_TEST(merging_into_an_empty_set_copies)
{
    struct rule_set src;
    rule_set_init(&src);
    cr_assert_eq(parse_into(&src, "x m rate > 5 warning for=30"), 0, "%s", err.reason);
    cr_assert_eq(rule_set_merge(&set, &src), 0);
    cr_assert_str_eq(names(&set), "x");
    cr_assert_eq(set.v[0].for_s, 30.0);
    rule_set_free(&src);
}

RULES_TEST(many_merges_grow_the_set)
{
    struct rule_set src;
    rule_set_init(&src);
    for (int i = 0; i < 200; i++) {
        char line[64];
        snprintf(line, sizeof line, "r%d m max > %d", i % 150, i);
        cr_assert_eq(parse_into(&src, line), 0, "%s", err.reason);
        cr_assert_eq(rule_set_merge(&set, &src), 0);
    }
    cr_assert_eq(set.n, 150);
    cr_assert_eq(rule_set_find(&set, "r0")->threshold, 150.0, "the later rule won");
    cr_assert_eq(rule_set_find(&set, "r49")->threshold, 199.0);
    cr_assert_eq(rule_set_find(&set, "r50")->threshold, 50.0);
    cr_assert_eq(rule_set_find(&set, "r149")->threshold, 149.0);
    cr_assert_str_eq(set.v[149].name, "r149");
    rule_set_free(&src);
}

RULES_TEST(find_matches_whole_names_only)
{
    cr_assert_eq(parse("abc m max > 1\nab m max > 2"), 0, "%s", err.reason);
    cr_assert_eq(rule_set_find(&set, "ab"), &set.v[1]);
    cr_assert_eq(rule_set_find(&set, "abc"), &set.v[0]);
    cr_assert_null(rule_set_find(&set, "a"));
    cr_assert_null(rule_set_find(&set, "abcd"));
    cr_assert_null(rule_set_find(&set, "ABC"), "names are case-sensitive");
}

/* ---------- the canonical line ---------- */

RULES_TEST(format_prints_the_canonical_line)
{
    cr_assert_eq(parse("slow   coordination.time\tp95 >  1e4 critical   for=10.0 # c"), 0, "%s",
                 err.reason);
    cr_assert_str_eq(formatted(&set.v[0]), "slow coordination.time p95 > 10000 critical for=10\n");
    cr_assert_eq(parse("r m avg <= -0.5"), 0, "%s", err.reason);
    cr_assert_str_eq(formatted(&set.v[0]), "r m avg <= -0.5 warning\n",
                     "severity always, for= only when not 0");
    cr_assert_eq(parse("r m count >= 1e-7 info for=0"), 0, "%s", err.reason);
    cr_assert_str_eq(formatted(&set.v[0]), "r m count >= 1e-07 info\n");
}

static bool same_rule(const struct rule *a, const struct rule *b)
{
    return strcmp(a->name, b->name) == 0 && strcmp(a->metric, b->metric) == 0 &&
           a->stat == b->stat && a->op == b->op && a->severity == b->severity &&
           memcmp(&a->threshold, &b->threshold, sizeof a->threshold) == 0 &&
           memcmp(&a->for_s, &b->for_s, sizeof a->for_s) == 0;
}

static uint64_t next_random(uint64_t *x)
{
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 0x2545f4914f6cdd1du;
}

static double random_finite(uint64_t *x)
{
    for (;;) {
        uint64_t bits = next_random(x);
        double v;
        memcpy(&v, &bits, sizeof v);
        if (isfinite(v))
            return v;
    }
}

RULES_TEST(parse_of_format_gives_back_the_same_rule)
{
    static const char alpha[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_";
    static const char more[] = "0123456789_.-";
    uint64_t x = 0x243f6a8885a308d3u;
    struct buf all;
    buf_init(&all);
    struct rule want[300];
    for (int i = 0; i < 300; i++) {
        struct rule *r = &want[i];
        memset(r, 0, sizeof *r);
        int len = snprintf(r->name, sizeof r->name, "%c%d.",
                           alpha[next_random(&x) % (sizeof alpha - 1)], i);
        size_t extra = next_random(&x) % (RULE_NAME_MAX - (size_t)len + 1);
        for (size_t k = 0; k < extra; k++)
            r->name[len + k] = more[next_random(&x) % (sizeof more - 1)];
        snprintf(r->metric, sizeof r->metric, "metric.%d:x-y", (int)(next_random(&x) % 1000));
        r->stat = (enum rule_stat)(next_random(&x) % 8);
        r->op = (enum rule_op)(next_random(&x) % 4);
        r->severity = (enum rule_severity)(next_random(&x) % 3);
        r->threshold = i % 3 ? random_finite(&x) : (double)(int64_t)(next_random(&x) % 2001) - 1000;
        r->for_s = i % 4 == 0 ? 0 : fabs(random_finite(&x));
        if (i % 5 == 0)
            r->for_s = (double)(next_random(&x) % 600) / 4;
        const char *line = formatted(r);
        cr_assert_eq(line[strlen(line) - 1], '\n');
        cr_assert_eq(parse(line), 0, "'%s': %s", line, err.reason);
        cr_assert_eq(set.n, 1);
        cr_assert(same_rule(&set.v[0], r), "'%s' read back as '%s'", line,
                  formatted(&set.v[0]));
        cr_assert_eq(strstr(line, "for=") != NULL, r->for_s != 0, "'%s'", line);
        buf_puts(&all, formatted(r));
    }
    /* All at once, as a reader of alerts/rules would write them back. */
    cr_assert_eq(rules_parse(all.data, all.len, &set, &err), 0, "%s", err.reason);
    cr_assert_eq(set.n, 300);
    for (int i = 0; i < 300; i++)
        cr_assert(same_rule(&set.v[i], &want[i]), "rule %d", i);
    buf_free(&all);
}

/* ---------- comparisons ---------- */

struct comparison {
    enum rule_op op;
    double value, threshold;
    bool want;
};

static const struct comparison comparisons[] = {
    {OP_GT, 2, 1, true},   {OP_GT, 1, 1, false},  {OP_GT, 0, 1, false},
    {OP_GE, 2, 1, true},   {OP_GE, 1, 1, true},   {OP_GE, 0, 1, false},
    {OP_LT, 2, 1, false},  {OP_LT, 1, 1, false},  {OP_LT, 0, 1, true},
    {OP_LE, 2, 1, false},  {OP_LE, 1, 1, true},   {OP_LE, 0, 1, true},
    {OP_GT, -0.5, -1, true}, {OP_LT, -1e300, 1e-300, true}, {OP_GE, -0.0, 0.0, true},
    {OP_GT, NAN, 1, false}, {OP_GE, NAN, 1, false}, {OP_LT, NAN, 1, false},
    {OP_LE, NAN, 1, false}, {OP_GT, 1e-9, 0, true}, {OP_LE, 10000.0001, 10000, false},
};

ParameterizedTestParameters(rules, compare_applies_the_operator)
{
    return cr_make_param_array(struct comparison, (void *)comparisons,
                               sizeof comparisons / sizeof comparisons[0]);
}

ParameterizedTest(const struct comparison *c, rules, compare_applies_the_operator,
                  .timeout = UNIT_TIMEOUT)
{
    cr_assert_eq(rule_compare(c->op, c->value, c->threshold), c->want, "%g %s %g",
                 c->value, rule_op_name(c->op), c->threshold);
}

RULES_TEST(an_unknown_operator_never_fires)
{
    cr_assert(!rule_compare((enum rule_op)7, 5, 1));
    cr_assert(!rule_compare((enum rule_op)7, 1, 5));
}
