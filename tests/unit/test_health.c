/*
 * test_health.c — core/health.c: parsing one health report (SPEC §4), the status an
 * agent shows at a given moment (unknown, stale), and the bus-wide worst-of rule.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/health.h"

#define SEC INT64_C(1000000)

static struct health_report rep;
static struct bus_error err;

static void setup(void) { health_report_init(&rep); memset(&err, 0, sizeof err); }
static void teardown(void) { health_report_free(&rep); }

#define HEALTH_TEST(name) Test(health, name, .init = setup, .fini = teardown, .timeout = 30)

static int parse(const char *text)
{
    return health_parse(text, strlen(text), &rep, &err);
}

/* The reason as a C string (reports never contain NUL). */
static const char *reason(void)
{
    static char out[HEALTH_REASON_MAX + 1];
    memcpy(out, rep.reason.data ? rep.reason.data : "", rep.reason.len);
    out[rep.reason.len] = '\0';
    return out;
}

static const char *extra(void)
{
    static char out[4096];
    size_t n = rep.extra.len < sizeof out - 1 ? rep.extra.len : sizeof out - 1;
    memcpy(out, rep.extra.data ? rep.extra.data : "", n);
    out[n] = '\0';
    return out;
}

/* ---------- accepted reports ---------- */

HEALTH_TEST(a_status_word_alone_is_a_report_with_an_empty_reason)
{
    cr_assert_eq(parse("healthy\n"), 0, "%s", err.reason);
    cr_assert_eq(rep.status, HEALTH_HEALTHY);
    cr_assert_str_eq(reason(), "");
    cr_assert_str_eq(extra(), "");
    cr_assert_eq(parse("unhealthy"), 0, "no newline is needed: %s", err.reason);
    cr_assert_eq(rep.status, HEALTH_UNHEALTHY);
}

HEALTH_TEST(text_after_the_word_is_the_reason)
{
    cr_assert_eq(parse("degraded disk 91% full\n"), 0, "%s", err.reason);
    cr_assert_eq(rep.status, HEALTH_DEGRADED);
    cr_assert_str_eq(reason(), "disk 91% full");
    cr_assert_eq(parse("  degraded \t  spaced   out  \r\n"), 0, "%s", err.reason);
    cr_assert_str_eq(reason(), "spaced   out", "inner spaces are kept, outer ones trimmed");
}

HEALTH_TEST(a_json_report_keeps_its_extra_fields_compact_and_in_order)
{
    cr_assert_eq(parse("{\"status\":\"unhealthy\",\"reason\":\"api down\",\"queue\":17,\n"
                       "  \"tags\": {\"a\": [1, 2.50]}, \"big\": 123456789012345678901234567890}\n"),
                 0, "%s", err.reason);
    cr_assert_eq(rep.status, HEALTH_UNHEALTHY);
    cr_assert_str_eq(reason(), "api down");
    cr_assert_str_eq(extra(), ",\"queue\":17,\"tags\":{\"a\": [1, 2.50]},"
                              "\"big\":123456789012345678901234567890",
                     "numbers are kept byte for byte, line breaks removed");
}

HEALTH_TEST(a_json_report_may_omit_the_reason_or_give_null)
{
    cr_assert_eq(parse("{\"status\":\"healthy\"}"), 0, "%s", err.reason);
    cr_assert_str_eq(reason(), "");
    cr_assert_eq(parse("{\"reason\":null,\"status\":\"degraded\"}"), 0, "%s", err.reason);
    cr_assert_eq(rep.status, HEALTH_DEGRADED);
    cr_assert_str_eq(reason(), "");
}

HEALTH_TEST(escaped_strings_are_decoded_into_the_reason_and_keys_are_reencoded)
{
    cr_assert_eq(parse("{\"status\":\"degraded\",\"reason\":\"tab\\there \\u00e9\","
                       "\"k\\u0065y\":\"v\"}"), 0, "%s", err.reason);
    cr_assert_str_eq(reason(), "tab\there \xc3\xa9");
    cr_assert_str_eq(extra(), ",\"key\":\"v\"");
}

HEALTH_TEST(a_key_escaped_as_a_surrogate_pair_keeps_its_character)
{
    /* U+1F600 escaped as \ud83d\ude00 is one character: the field keeps it. */
    cr_assert_eq(parse("{\"status\":\"healthy\",\"\\ud83d\\ude00\":1}"), 0, "%s", err.reason);
    cr_assert_str_eq(extra(), ",\"\xf0\x9f\x98\x80\":1");
}

HEALTH_TEST(a_reason_of_exactly_1024_bytes_is_accepted)
{
    char text[16 + HEALTH_REASON_MAX];
    strcpy(text, "healthy ");
    memset(text + 8, 'r', HEALTH_REASON_MAX);
    text[8 + HEALTH_REASON_MAX] = '\0';
    cr_assert_eq(parse(text), 0, "%s", err.reason);
    cr_assert_eq(rep.reason.len, HEALTH_REASON_MAX);
}

HEALTH_TEST(a_utf8_reason_is_kept)
{
    cr_assert_eq(parse("degraded caf\xc3\xa9 \xe2\x9c\x93"), 0, "%s", err.reason);
    cr_assert_str_eq(reason(), "caf\xc3\xa9 \xe2\x9c\x93");
}

/* ---------- refused reports: EINVAL with a reason ---------- */

/* Arrays, not pointers: Criterion copies parameters into a new process image. */
struct bad {
    char text[64];
    char why[32];         /* words the reason must contain */
};

static const struct bad bad_reports[] = {
    {"", "empty"},
    {"\n", "empty"},
    {"   \t\r\n", "empty"},
    {"fine", "unknown health status"},
    {"HEALTHY", "unknown health status"},
    {"stale", "unknown health status"},
    {"unknown", "unknown health status"},
    {"healthy\ndegraded\n", "one line"},
    {"healthy all good\nsecond line", "one line"},
    {"healthy \xff\xfe", "UTF-8"},
    {"[1]", "unknown health status"},
    {"{\"status\":", "not valid JSON"},
    {"{\"status\":\"healthy\"} trailing", "not valid JSON"},
    {"{\"reason\":\"no status\"}", "needs \"status\""},
    {"{\"status\":3}", "must be a string"},
    {"{\"status\":null}", "must be a string"},
    {"{\"status\":\"healthy\",\"reason\":5}", "must be a string"},
    {"{\"status\":\"stale\"}", "unknown health status"},
    {"{\"status\":\"healthy\",\"status\":\"degraded\"}", "unique keys"},
    {"{\"status\":\"heal\\u0000thy\"}", "must be a string"},
    {"{\"status\":\"healthy\",\"agent\":\"x\"}", "set by busfs"},
    {"{\"status\":\"healthy\",\"last_seen\":1}", "set by busfs"},
    {"{\"status\":\"healthy\",\"age_s\":1}", "set by busfs"},
    {"{\"status\":\"healthy\",\"state\":\"active\"}", "set by busfs"},
    {"{\"status\":\"healthy\",\"inbox_depth\":0}", "set by busfs"},
};

ParameterizedTestParameters(health, bad_reports_are_einval_with_a_reason)
{
    return cr_make_param_array(struct bad, (void *)bad_reports,
                               sizeof bad_reports / sizeof bad_reports[0]);
}

ParameterizedTest(const struct bad *b, health, bad_reports_are_einval_with_a_reason,
                  .init = setup, .fini = teardown, .timeout = 30)
{
    int rc = parse(b->text);
    cr_assert_eq(rc, -EINVAL, "'%s' gave %d", b->text, rc);
    cr_assert_eq(err.code, EINVAL);
    cr_assert(strstr(err.reason, b->why), "'%s': reason '%s' lacks '%s'", b->text, err.reason,
              b->why);
}

HEALTH_TEST(a_reason_over_1024_bytes_is_refused_in_text_and_json)
{
    static char text[4096];
    strcpy(text, "degraded ");
    memset(text + 9, 'x', HEALTH_REASON_MAX + 1);
    cr_assert_eq(parse(text), -EINVAL);
    cr_assert(strstr(err.reason, "1024"), "%s", err.reason);

    strcpy(text, "{\"status\":\"degraded\",\"reason\":\"");
    size_t at = strlen(text);
    memset(text + at, 'x', HEALTH_REASON_MAX + 1);
    strcpy(text + at + HEALTH_REASON_MAX + 1, "\"}");
    cr_assert_eq(parse(text), -EINVAL);
}

HEALTH_TEST(a_report_over_64_kib_is_refused)
{
    size_t n = HEALTH_REPORT_MAX + 1;
    char *text = malloc(n);
    cr_assert_not_null(text);
    memset(text, ' ', n);
    memcpy(text, "healthy", 7);
    cr_assert_eq(health_parse(text, n, &rep, &err), -EINVAL);
    cr_assert(strstr(err.reason, "at most"), "%s", err.reason);
    free(text);
}

static int parse_with_extras(int extras, bool with_reason)
{
    char text[8192];
    size_t at = (size_t)sprintf(text, "{\"status\":\"healthy\"%s",
                                with_reason ? ",\"reason\":\"r\"" : "");
    for (int i = 0; i < extras; i++)
        at += (size_t)sprintf(text + at, ",\"f%d\":%d", i, i);
    strcpy(text + at, "}");
    return parse(text);
}

HEALTH_TEST(more_than_64_extra_fields_are_refused)
{
    cr_assert_eq(parse_with_extras(HEALTH_FIELDS_MAX, true), 0, "%s", err.reason);
    cr_assert_eq(parse_with_extras(HEALTH_FIELDS_MAX, false), 0, "%s", err.reason);
    cr_assert_eq(parse_with_extras(HEALTH_FIELDS_MAX + 1, false), -EINVAL,
                 "65 extra fields, no reason");
    cr_assert(strstr(err.reason, "at most 64 fields besides status and reason"), "%s",
              err.reason);
    cr_assert_eq(parse_with_extras(HEALTH_FIELDS_MAX + 1, true), -EINVAL);
    cr_assert_eq(parse_with_extras(HEALTH_FIELDS_MAX + 2, false), -EINVAL);
}

/* ---------- the status at a moment, and the worst-of rule ---------- */

HEALTH_TEST(never_reported_is_unknown_and_old_reports_are_stale)
{
    int64_t now = 1000 * SEC, ttl = 30 * SEC;
    cr_assert_eq(health_effective(HEALTH_UNKNOWN, 0, now, ttl), HEALTH_UNKNOWN);
    cr_assert_eq(health_effective(HEALTH_DEGRADED, now - 30 * SEC, now, ttl), HEALTH_DEGRADED,
                 "exactly the ttl old is not stale yet");
    cr_assert_eq(health_effective(HEALTH_DEGRADED, now - 30 * SEC - 1, now, ttl), HEALTH_STALE);
    cr_assert_eq(health_effective(HEALTH_HEALTHY, now + 5 * SEC, now, ttl), HEALTH_HEALTHY,
                 "a report from the future (clock stepped back) is fresh");
    cr_assert_eq(health_effective(HEALTH_UNKNOWN, now - 31 * SEC, now, ttl), HEALTH_STALE,
                 "a heartbeat without a report also goes stale");
}

static enum health_status worst(unsigned h, unsigned d, unsigned u, unsigned s, unsigned k)
{
    unsigned counts[HEALTH_NSTATUS] = {0};
    counts[HEALTH_HEALTHY] = h;
    counts[HEALTH_DEGRADED] = d;
    counts[HEALTH_UNHEALTHY] = u;
    counts[HEALTH_STALE] = s;
    counts[HEALTH_UNKNOWN] = k;
    return health_worst(counts);
}

HEALTH_TEST(the_bus_shows_the_worst_status_with_stale_as_unhealthy)
{
    cr_assert_eq(worst(0, 0, 0, 0, 0), HEALTH_HEALTHY, "no agents");
    cr_assert_eq(worst(0, 0, 0, 0, 7), HEALTH_HEALTHY, "unknown does not count");
    cr_assert_eq(worst(3, 0, 0, 0, 2), HEALTH_HEALTHY);
    cr_assert_eq(worst(3, 1, 0, 0, 0), HEALTH_DEGRADED);
    cr_assert_eq(worst(3, 1, 1, 0, 0), HEALTH_UNHEALTHY);
    cr_assert_eq(worst(3, 0, 0, 1, 0), HEALTH_UNHEALTHY, "stale counts as unhealthy");
    cr_assert_eq(worst(0, 1, 0, 1, 0), HEALTH_UNHEALTHY);
}

HEALTH_TEST(status_names_are_the_spec_words)
{
    cr_assert_str_eq(health_status_name(HEALTH_UNKNOWN), "unknown");
    cr_assert_str_eq(health_status_name(HEALTH_HEALTHY), "healthy");
    cr_assert_str_eq(health_status_name(HEALTH_DEGRADED), "degraded");
    cr_assert_str_eq(health_status_name(HEALTH_UNHEALTHY), "unhealthy");
    cr_assert_str_eq(health_status_name(HEALTH_STALE), "stale");
    cr_assert_null(health_status_name((enum health_status)9));
}
