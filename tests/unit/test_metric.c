/*
 * test_metric.c — core/metric.c: metric lines of one write (SPEC §5) in text and JSON
 * form, the all-or-nothing rule, the number grammar, and the stored JSONL point.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/json.h"
#include "busfs/metric.h"
#include "unit.h"

#define METRIC_TEST(name) Test(metric, name, .init = setup, .timeout = UNIT_TIMEOUT)

/* What fn saw: a copy of every point, in order. */
struct seen {
    char name[METRIC_NAME_MAX + 1];
    double value;
    char unit[METRIC_UNIT_MAX + 1];
    char tags[8192];
};

#define SEEN_MAX 64
static struct seen seen[SEEN_MAX];
static int calls;
static int stop_at;   /* fn returns 7 on this call (1-based), 0: never */
static struct bus_error err;

static void setup(void)
{
    memset(seen, 0, sizeof seen);
    calls = 0;
    stop_at = 0;
    memset(&err, 0, sizeof err);
}

static int collect(void *ctx, const struct metric_point *p)
{
    cr_assert_eq(ctx, (void *)&calls, "ctx is passed through");
    cr_assert_lt(calls, SEEN_MAX);
    struct seen *s = &seen[calls++];
    strcpy(s->name, p->name);
    s->value = p->value;
    strcpy(s->unit, p->unit);
    cr_assert_lt(p->tags.len, sizeof s->tags);
    memcpy(s->tags, p->tags.data, p->tags.len);
    s->tags[p->tags.len] = '\0';
    cr_assert_eq(strlen(s->tags), p->tags.len, "tags hold no NUL");
    return calls == stop_at ? 7 : 0;
}

static int parse_n(const char *text, size_t len)
{
    return metric_parse(text, len, collect, &calls, &err);
}

static int parse(const char *text)
{
    return parse_n(text, strlen(text));
}

/* ---------- accepted text lines ---------- */

METRIC_TEST(a_text_line_with_a_unit)
{
    cr_assert_eq(parse("coordination.time 150 ms\n"), 1, "%s", err.reason);
    cr_assert_eq(calls, 1);
    cr_assert_str_eq(seen[0].name, "coordination.time");
    cr_assert_eq(seen[0].value, 150.0);
    cr_assert_str_eq(seen[0].unit, "ms");
    cr_assert_str_eq(seen[0].tags, "{}");
}

METRIC_TEST(a_text_line_with_a_unit_and_a_tag)
{
    cr_assert_eq(parse("tasks.done 1 count phase=build\n"), 1, "%s", err.reason);
    cr_assert_str_eq(seen[0].name, "tasks.done");
    cr_assert_eq(seen[0].value, 1.0);
    cr_assert_str_eq(seen[0].unit, "count");
    cr_assert_str_eq(seen[0].tags, "{\"phase\":\"build\"}");
}

METRIC_TEST(a_text_line_with_only_name_and_value)
{
    cr_assert_eq(parse("queue:depth -3.25"), 1, "%s", err.reason);
    cr_assert_str_eq(seen[0].name, "queue:depth");
    cr_assert_eq(seen[0].value, -3.25);
    cr_assert_str_eq(seen[0].unit, "");
    cr_assert_str_eq(seen[0].tags, "{}");
}

METRIC_TEST(tags_may_come_before_and_after_the_unit_and_keep_their_order)
{
    cr_assert_eq(parse("lat 2.5 zone=b ms\tapp=x host=a"), 1, "%s", err.reason);
    cr_assert_str_eq(seen[0].unit, "ms");
    cr_assert_str_eq(seen[0].tags, "{\"zone\":\"b\",\"app\":\"x\",\"host\":\"a\"}");
}

METRIC_TEST(tags_without_a_unit)
{
    cr_assert_eq(parse("hits 4 path=/api/v1 code=200"), 1, "%s", err.reason);
    cr_assert_str_eq(seen[0].unit, "");
    cr_assert_str_eq(seen[0].tags, "{\"path\":\"/api/v1\",\"code\":\"200\"}");
}

METRIC_TEST(a_text_tag_value_keeps_equals_signs_utf8_and_is_json_escaped)
{
    cr_assert_eq(parse("m 1 q=a=b u=caf\xc3\xa9 s=say\"hi\"\\now"), 1, "%s", err.reason);
    json_error_t je;
    json_t *t = json_loads(seen[0].tags, JSON_REJECT_DUPLICATES, &je);
    cr_assert_not_null(t, "tags '%s' are not JSON: %s", seen[0].tags, je.text);
    cr_assert_eq(json_object_size(t), 3);
    cr_assert_str_eq(json_string_value(json_object_get(t, "q")), "a=b");
    cr_assert_str_eq(json_string_value(json_object_get(t, "u")), "caf\xc3\xa9");
    cr_assert_str_eq(json_string_value(json_object_get(t, "s")), "say\"hi\"\\now");
    json_decref(t);
}

METRIC_TEST(units_may_use_percent_slash_and_dots)
{
    static const char *const units[] = {"%", "req/s", "_x", "/s", "kB.s-1", "MiB"};
    for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
        char line[64];
        snprintf(line, sizeof line, "m 1 %s", units[i]);
        setup();
        cr_assert_eq(parse(line), 1, "'%s': %s", line, err.reason);
        cr_assert_str_eq(seen[0].unit, units[i]);
    }
}

/* ---------- accepted JSON lines ---------- */

METRIC_TEST(a_json_line_as_in_the_spec)
{
    cr_assert_eq(parse("{\"metric\":\"memory.mb\",\"value\":512.5,\"unit\":\"mb\","
                       "\"tags\":{\"host\":\"a\"}}\n"), 1, "%s", err.reason);
    cr_assert_str_eq(seen[0].name, "memory.mb");
    cr_assert_eq(seen[0].value, 512.5);
    cr_assert_str_eq(seen[0].unit, "mb");
    cr_assert_str_eq(seen[0].tags, "{\"host\":\"a\"}");
}

METRIC_TEST(a_json_line_needs_only_metric_and_value_in_any_order)
{
    cr_assert_eq(parse(" { \"value\" : -1.5e3 , \"metric\" : \"m\" } "), 1, "%s", err.reason);
    cr_assert_str_eq(seen[0].name, "m");
    cr_assert_eq(seen[0].value, -1500.0);
    cr_assert_str_eq(seen[0].unit, "");
    cr_assert_str_eq(seen[0].tags, "{}");
}

METRIC_TEST(an_empty_or_null_unit_and_null_or_empty_tags_mean_none)
{
    cr_assert_eq(parse("{\"metric\":\"m\",\"value\":0,\"unit\":\"\",\"tags\":{}}\n"
                       "{\"metric\":\"n\",\"value\":2,\"unit\":null,\"tags\":null}"), 2,
                 "%s", err.reason);
    cr_assert_str_eq(seen[0].unit, "");
    cr_assert_str_eq(seen[0].tags, "{}");
    cr_assert_str_eq(seen[1].unit, "");
    cr_assert_str_eq(seen[1].tags, "{}");
}

METRIC_TEST(json_strings_are_decoded_and_tags_reencoded_compactly_in_order)
{
    cr_assert_eq(parse("{\"metric\":\"d\\u0069sk\",\"value\":1,\"tags\":{\"z\": \"two words\", "
                       "\"a\":\"caf\\u00e9 \\\"q\\\"\", \"m\\u0069d\":\"x/y\"}}"), 1, "%s",
                 err.reason);
    cr_assert_str_eq(seen[0].name, "disk");
    json_error_t je;
    json_t *t = json_loads(seen[0].tags, JSON_REJECT_DUPLICATES, &je);
    cr_assert_not_null(t, "'%s': %s", seen[0].tags, je.text);
    cr_assert_str_eq(json_string_value(json_object_get(t, "z")), "two words",
                     "a JSON tag value may hold spaces");
    cr_assert_str_eq(json_string_value(json_object_get(t, "a")), "caf\xc3\xa9 \"q\"");
    cr_assert_str_eq(json_string_value(json_object_get(t, "mid")), "x/y");
    json_decref(t);
    cr_assert_eq(strncmp(seen[0].tags, "{\"z\":", 5), 0, "given order, no spaces: %s",
                 seen[0].tags);
    cr_assert(strstr(seen[0].tags, "\"a\":") < strstr(seen[0].tags, "\"mid\":"), "%s",
              seen[0].tags);
}

/* ---------- many lines ---------- */

METRIC_TEST(many_lines_mixed_forms_blank_lines_crlf_and_no_final_newline)
{
    const char *text = "\n"
                       "a 1\r\n"
                       "   \t \r\n"
                       "{\"metric\":\"b\",\"value\":2}\r\n"
                       "\n"
                       "  c 3 s  k=v  \n"
                       "d 4 ms";
    cr_assert_eq(parse(text), 4, "%s", err.reason);
    cr_assert_eq(calls, 4);
    cr_assert_str_eq(seen[0].name, "a");
    cr_assert_eq(seen[0].value, 1.0);
    cr_assert_str_eq(seen[1].name, "b");
    cr_assert_eq(seen[1].value, 2.0);
    cr_assert_str_eq(seen[2].name, "c");
    cr_assert_str_eq(seen[2].unit, "s");
    cr_assert_str_eq(seen[2].tags, "{\"k\":\"v\"}");
    cr_assert_str_eq(seen[3].name, "d");
    cr_assert_str_eq(seen[3].unit, "ms", "the last line needs no newline");
}

METRIC_TEST(a_crlf_ending_is_not_part_of_the_unit_or_tag)
{
    cr_assert_eq(parse("a 1 ms\r\nb 2 k=v\r\n"), 2, "%s", err.reason);
    cr_assert_str_eq(seen[0].unit, "ms");
    cr_assert_str_eq(seen[1].tags, "{\"k\":\"v\"}");
}

METRIC_TEST(a_bad_third_line_means_fn_is_never_called)
{
    cr_assert_eq(parse("a 1\nb 2\nc abc\nd 4\n"), -EINVAL);
    cr_assert_eq(calls, 0, "all or nothing");
    cr_assert_eq(err.code, EINVAL);
    cr_assert_str_eq(err.reason, "line 3: value 'abc' is not a finite number");
}

METRIC_TEST(a_nonzero_return_of_fn_stops_and_is_returned)
{
    stop_at = 2;
    cr_assert_eq(parse("a 1\nb 2\nc 3\n"), 7);
    cr_assert_eq(calls, 2);
    cr_assert_str_eq(seen[1].name, "b");
}

METRIC_TEST(a_null_fn_only_validates)
{
    cr_assert_eq(metric_parse("a 1\nb 2", 7, NULL, NULL, &err), 2, "%s", err.reason);
    cr_assert_eq(metric_parse("a 1\nb x", 7, NULL, NULL, &err), -EINVAL);
}

METRIC_TEST(many_points_in_one_write_keep_their_order)
{
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < SEEN_MAX; i++)
        buf_printf(&b, "m%d %d\n", i, i * 3);
    cr_assert_eq(parse_n(b.data, b.len), SEEN_MAX, "%s", err.reason);
    for (int i = 0; i < SEEN_MAX; i++) {
        char name[16];
        snprintf(name, sizeof name, "m%d", i);
        cr_assert_str_eq(seen[i].name, name);
        cr_assert_eq(seen[i].value, i * 3.0);
    }
    buf_free(&b);
}

METRIC_TEST(the_write_need_not_be_nul_terminated)
{
    const char text[] = {'a', ' ', '1', '2'};
    cr_assert_eq(parse_n(text, 3), 1, "%s", err.reason);
    cr_assert_eq(seen[0].value, 1.0, "the byte after len is not read");
}

/* ---------- numbers ---------- */

struct number {
    char text[48];
    double want;
    bool json;   /* also a JSON number */
};

static const struct number numbers[] = {
    {"0", 0.0, true},
    {"-0", -0.0, true},
    {"+5", 5.0, false},
    {"150", 150.0, true},
    {"512.5", 512.5, true},
    {"007", 7.0, false},
    {"1e3", 1000.0, true},
    {"1E-3", 0.001, true},
    {"-2.5e+2", -250.0, true},
    {"0.1", 0.1, true},
    {"1e-999", 0.0, true},
    {"1.7976931348623157e308", 1.7976931348623157e308, true},
    {"4.9406564584124654e-324", 4.9406564584124654e-324, true},
    {"123456789012345678901234567890", 1.2345678901234568e29, true},
};

ParameterizedTestParameters(metric, finite_decimal_values_are_accepted)
{
    return cr_make_param_array(struct number, (void *)numbers,
                               sizeof numbers / sizeof numbers[0]);
}

ParameterizedTest(const struct number *n, metric, finite_decimal_values_are_accepted,
                  .init = setup, .timeout = UNIT_TIMEOUT)
{
    char line[96];
    snprintf(line, sizeof line, "m %s", n->text);
    cr_assert_eq(parse(line), 1, "'%s': %s", line, err.reason);
    cr_assert_eq(seen[0].value, n->want, "'%s' read as %.17g", n->text, seen[0].value);
    cr_assert_eq(signbit(seen[0].value), signbit(n->want), "'%s' keeps its sign", n->text);

    double v = 99;
    cr_assert(metric_number_parse(n->text, strlen(n->text), &v), "%s", n->text);
    cr_assert_eq(v, n->want);

    snprintf(line, sizeof line, "{\"metric\":\"m\",\"value\":%s}", n->text);
    setup();
    if (n->json) {
        cr_assert_eq(parse(line), 1, "'%s': %s", line, err.reason);
        cr_assert_eq(seen[0].value, n->want);
        cr_assert_eq(signbit(seen[0].value), signbit(n->want));
    } else {
        cr_assert_eq(parse(line), -EINVAL, "'%s' is not JSON", line);
    }
}

METRIC_TEST(number_parsing_reads_only_len_bytes)
{
    double v = 0;
    cr_assert(metric_number_parse("12345", 2, &v));
    cr_assert_eq(v, 12.0);
    cr_assert(!metric_number_parse("12x45", 3, &v));
    cr_assert(!metric_number_parse("", 0, &v));
}

/* ---------- refused writes: EINVAL with a reason naming the line ---------- */

/* Arrays, not pointers: Criterion copies parameters into a new process image. */
struct bad {
    char text[160];
    char why[64];         /* words the reason must contain */
};

static const struct bad bad_writes[] = {
    /* nothing to store */
    {"", "no metric point"},
    {"\n\n  \t\r\n", "no metric point"},
    /* names */
    {"1abc 5", "line 1: metric name '1abc' is invalid"},
    {"-x 5", "line 1: metric name '-x'"},
    {".x 5", "line 1: metric name '.x'"},
    {"a/b 5", "line 1: metric name 'a/b'"},
    {"caf\xc3\xa9 5", "line 1: metric name"},
    {"a=b 5", "line 1: metric name 'a=b'"},
    {"[1]", "line 1: metric name"},
    /* values */
    {"m", "line 1: missing value after 'm'"},
    {"m   \t", "line 1: missing value"},
    {"m abc", "line 1: value 'abc' is not a finite number"},
    {"m nan", "line 1: value 'nan' is not a finite number"},
    {"m NaN", "line 1: value 'NaN'"},
    {"m -nan", "line 1: value '-nan'"},
    {"m inf", "line 1: value 'inf'"},
    {"m -inf", "line 1: value '-inf'"},
    {"m Infinity", "line 1: value 'Infinity'"},
    {"m infinity", "line 1: value 'infinity'"},
    {"m 0x10", "line 1: value '0x10'"},
    {"m 0x1p3", "line 1: value '0x1p3'"},
    {"m 1e999", "line 1: value '1e999'"},
    {"m -1e999", "line 1: value '-1e999'"},
    {"m 1.", "line 1: value '1.'"},
    {"m .5", "line 1: value '.5'"},
    {"m 1e", "line 1: value '1e'"},
    {"m 1e+", "line 1: value '1e+'"},
    {"m --1", "line 1: value '--1'"},
    {"m +-1", "line 1: value '+-1'"},
    {"m 1,5", "line 1: value '1,5'"},
    {"m 12abc", "line 1: value '12abc'"},
    {"m k=v", "line 1: value 'k=v'"},
    {"m ''", "line 1: value ''''"},
    /* units */
    {"m 1 ms s", "line 1: more than one unit ('ms' and 's')"},
    {"m 1 ms k=v s", "line 1: more than one unit"},
    {"m 1 9ms", "line 1: unit '9ms' is invalid"},
    {"m 1 .ms", "line 1: unit '.ms'"},
    {"m 1 m$", "line 1: unit 'm$'"},
    {"m 1 abcdefghijklmnopqrstuvwxyz0123456", "line 1: unit 'abcdefghij"},
    /* tags */
    {"m 1 =v", "line 1: tag key '' is invalid"},
    {"m 1 1k=v", "line 1: tag key '1k' is invalid"},
    {"m 1 k:x=v", "line 1: tag key 'k:x'"},
    {"m 1 k=", "line 1: the value of tag 'k' is empty"},
    {"m 1 k=a k=b", "line 1: tag 'k' is given twice"},
    {"m 1 k=a j=c k=a", "line 1: tag 'k' is given twice"},
    {"m 1 k=a\x01", "line 1: the value of tag 'k' holds a control character"},
    {"m 1 k=a\x7f", "control character"},
    {"m 1 k=\xff", "line 1: the value of tag 'k' is not UTF-8"},
    {"m 1 k=\xc3", "is not UTF-8"},
    {"m 1 t1=v t2=v t3=v t4=v t5=v t6=v t7=v t8=v t9=v ta=v tb=v tc=v td=v te=v tf=v "
     "tg=v th=v", "line 1: more than 16 tags"},
    /* JSON */
    {"{\"metric\":\"m\"", "line 1: not valid JSON"},
    {"{\"metric\":\"m\",\"value\":1} x", "line 1: not valid JSON"},
    {"{\"metric\":\"m\",\"value\":01}", "line 1: not valid JSON"},
    {"{\"metric\":\"m\",\"value\":NaN}", "line 1: not valid JSON"},
    {"{\"metric\":'m',\"value\":1}", "line 1: not valid JSON"},
    {"{\"metric\":\"m\",\"value\":\"1\"}", "line 1: \"value\" must be a JSON number, not a string"},
    {"{\"metric\":\"m\",\"value\":true}", "line 1: \"value\" must be a JSON number"},
    {"{\"metric\":\"m\",\"value\":null}", "line 1: \"value\" must be a JSON number"},
    {"{\"metric\":\"m\",\"value\":[1]}", "line 1: \"value\" must be a JSON number"},
    {"{\"metric\":\"m\",\"value\":1e999}", "line 1: value '1e999' is not a finite number"},
    {"{\"metric\":\"m\",\"value\":-1e400}", "line 1: value '-1e400'"},
    {"{\"metric\":\"m\",\"value\":1,\"extra\":2}", "line 1: unknown field \"extra\""},
    {"{\"metric\":\"m\",\"value\":1,\"Unit\":\"ms\"}", "line 1: unknown field \"Unit\""},
    {"{\"metric\":\"m\",\"value\":1,\"timestamp\":\"x\"}", "unknown field \"timestamp\""},
    {"{\"value\":1}", "line 1: a JSON point needs \"metric\""},
    {"{\"metric\":\"m\"}", "line 1: a JSON point needs \"value\""},
    {"{}", "line 1: a JSON point needs \"metric\""},
    {"{\"metric\":5,\"value\":1}", "line 1: \"metric\" must be a string"},
    {"{\"metric\":null,\"value\":1}", "line 1: \"metric\" must be a string"},
    {"{\"metric\":\"1m\",\"value\":1}", "line 1: metric name '1m' is invalid"},
    {"{\"metric\":\"\",\"value\":1}", "line 1: metric name '' is invalid"},
    {"{\"metric\":\"m\\u0000\",\"value\":1}", "line 1: \"metric\" must be a string"},
    {"{\"metric\":\"m\",\"value\":1,\"unit\":5}", "line 1: \"unit\" must be a string"},
    {"{\"metric\":\"m\",\"value\":1,\"unit\":\"9x\"}", "line 1: unit '9x' is invalid"},
    {"{\"metric\":\"m\",\"value\":1,\"unit\":\"m s\"}", "line 1: unit 'm s' is invalid"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":[]}", "line 1: \"tags\" must be an object"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":\"k=v\"}", "line 1: \"tags\" must be an object"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":1}}",
     "line 1: the value of tag 'k' must be a string"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":null}}", "tag 'k' must be a string"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":\"\"}}",
     "line 1: the value of tag 'k' is empty"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":\"a\",\"k\":\"b\"}}",
     "line 1: \"tags\" has a key given twice"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"1k\":\"a\"}}", "line 1: tag key '1k' is invalid"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"\":\"a\"}}", "line 1: tag key '' is invalid"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":\"a\\nb\"}}",
     "line 1: the value of tag 'k' holds a control"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":\"a\\tb\"}}", "holds a control character"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":\"a\\u0000\"}}", "tag 'k' must be a string"},
    {"{\"metric\":\"m\",\"metric\":\"n\",\"value\":1}",
     "line 1: a JSON point must be an object with unique keys"},
    {"{\"metric\":\"m\",\"value\":1,\"tags\":{},\"tags\":{}}", "unique keys"},
    {"{\"metric\":\"m\",\n\"value\":1}", "line 1: not valid JSON"},
    /* the line number */
    {"a 1\nb 2\nc abc\n", "line 3: value 'abc' is not a finite number"},
    {"a 1\n\n\nbad\n", "line 4: missing value after 'bad'"},
    {"a 1\r\nb x\r\n", "line 2: value 'x'"},
    {"a 1\n{\"metric\":\"b\",\"value\":\"2\"}", "line 2: \"value\" must be a JSON number"},
    {"a 1\nb 2\nc 3 ms s", "line 3: more than one unit"},
    {"bad\nb x\n", "line 1: missing value"},
};

ParameterizedTestParameters(metric, bad_writes_are_einval_naming_the_line)
{
    return cr_make_param_array(struct bad, (void *)bad_writes,
                               sizeof bad_writes / sizeof bad_writes[0]);
}

ParameterizedTest(const struct bad *b, metric, bad_writes_are_einval_naming_the_line,
                  .init = setup, .timeout = UNIT_TIMEOUT)
{
    int rc = parse(b->text);
    cr_assert_eq(rc, -EINVAL, "'%s' gave %d", b->text, rc);
    cr_assert_eq(err.code, EINVAL);
    cr_assert(strstr(err.reason, b->why), "'%s': reason '%s' lacks '%s'", b->text, err.reason,
              b->why);
    cr_assert_eq(calls, 0, "'%s': fn was called", b->text);
    /* The reason is printable ASCII, whatever bytes the line held. */
    for (const char *p = err.reason; *p; p++)
        cr_assert(*p >= 0x20 && *p < 0x7f, "'%s': reason has byte 0x%02x", b->text,
                  (unsigned char)*p);
}

METRIC_TEST(a_long_bad_token_is_cut_in_the_reason)
{
    char line[400];
    memset(line, 'x', sizeof line);
    memcpy(line, "m 1", 3);    /* "m 1xxx...": a 398-byte value */
    cr_assert_eq(parse_n(line, sizeof line), -EINVAL);
    cr_assert(strstr(err.reason, "..."), "%s", err.reason);
    cr_assert_lt(strlen(err.reason), 120, "%s", err.reason);
}

/* ---------- limits: at the limit accepted, one over refused ---------- */

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    cr_assert_not_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* Parses pre + mid + post. */
static int parse3(const char *pre, const char *mid, const char *post)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, pre);
    buf_puts(&b, mid);
    buf_puts(&b, post);
    cr_assert(buf_ok(&b));
    int rc = parse_n(b.data, b.len);
    buf_free(&b);
    return rc;
}

METRIC_TEST(a_line_of_4096_bytes_is_accepted_and_4097_refused)
{
    /* "m" + padding + "1": padding between tokens counts toward the line length */
    for (int crlf = 0; crlf < 2; crlf++) {
        for (size_t n = METRIC_LINE_MAX - 1; n <= METRIC_LINE_MAX + 1; n++) {
            struct buf b;
            buf_init(&b);
            buf_puts(&b, "a 1\n");
            buf_putc(&b, 'm');
            for (size_t i = 0; i < n - 2; i++)
                buf_putc(&b, i % 2 ? ' ' : '\t');
            buf_putc(&b, '1');
            buf_puts(&b, crlf ? "\r\n" : "\n");
            buf_puts(&b, "z 2");
            setup();
            int rc = parse_n(b.data, b.len);
            if (n <= METRIC_LINE_MAX) {
                cr_assert_eq(rc, 3, "%zu bytes (crlf %d): %s", n, crlf, err.reason);
                cr_assert_str_eq(seen[1].name, "m");
            } else {
                cr_assert_eq(rc, -EINVAL, "%zu bytes (crlf %d)", n, crlf);
                cr_assert(strstr(err.reason, "line 2: longer than 4096 bytes"), "%s",
                          err.reason);
                cr_assert_eq(calls, 0);
            }
            buf_free(&b);
        }
    }
}

METRIC_TEST(a_json_line_of_4096_bytes_is_accepted_and_4097_refused)
{
    for (size_t n = METRIC_LINE_MAX; n <= METRIC_LINE_MAX + 1; n++) {
        struct buf b;
        buf_init(&b);
        /* the tag value stays <= 256 bytes: pad with whitespace outside strings */
        buf_puts(&b, "{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":\"v\"}");
        while (b.len < n - 1)
            buf_putc(&b, ' ');
        buf_putc(&b, '}');
        cr_assert_eq(b.len, n);
        setup();
        int rc = parse_n(b.data, b.len);
        if (n == METRIC_LINE_MAX) {
            cr_assert_eq(rc, 1, "%s", err.reason);
            cr_assert_str_eq(seen[0].tags, "{\"k\":\"v\"}");
        } else {
            cr_assert_eq(rc, -EINVAL);
            cr_assert(strstr(err.reason, "line 1: longer than 4096 bytes"), "%s", err.reason);
        }
        buf_free(&b);
    }
}

METRIC_TEST(a_name_of_128_bytes_is_accepted_and_129_refused)
{
    char *name = repeat('n', METRIC_NAME_MAX);
    cr_assert_eq(parse3("", name, " 1"), 1, "%s", err.reason);
    cr_assert_str_eq(seen[0].name, name);
    cr_assert_eq(parse3("{\"metric\":\"", name, "\",\"value\":1}"), 1, "%s", err.reason);
    free(name);
    name = repeat('n', METRIC_NAME_MAX + 1);
    cr_assert_eq(parse3("", name, " 1"), -EINVAL);
    cr_assert(strstr(err.reason, "line 1: metric name 'nnn"), "%s", err.reason);
    cr_assert_eq(parse3("{\"metric\":\"", name, "\",\"value\":1}"), -EINVAL);
    free(name);
}

METRIC_TEST(a_unit_of_32_bytes_is_accepted_and_33_refused)
{
    char *unit = repeat('u', METRIC_UNIT_MAX);
    cr_assert_eq(parse3("m 1 ", unit, ""), 1, "%s", err.reason);
    cr_assert_str_eq(seen[0].unit, unit);
    cr_assert_eq(parse3("{\"metric\":\"m\",\"value\":1,\"unit\":\"", unit, "\"}"), 1,
                 "%s", err.reason);
    free(unit);
    unit = repeat('u', METRIC_UNIT_MAX + 1);
    cr_assert_eq(parse3("m 1 ", unit, ""), -EINVAL);
    cr_assert(strstr(err.reason, "unit 'uuu"), "%s", err.reason);
    cr_assert_eq(parse3("{\"metric\":\"m\",\"value\":1,\"unit\":\"", unit, "\"}"), -EINVAL);
    free(unit);
}

METRIC_TEST(a_tag_key_of_64_bytes_is_accepted_and_65_refused)
{
    char *key = repeat('k', METRIC_TAG_KEY_MAX);
    cr_assert_eq(parse3("m 1 ", key, "=v"), 1, "%s", err.reason);
    cr_assert(strstr(seen[0].tags, key));
    cr_assert_eq(parse3("{\"metric\":\"m\",\"value\":1,\"tags\":{\"", key, "\":\"v\"}}"), 1,
                 "%s", err.reason);
    free(key);
    key = repeat('k', METRIC_TAG_KEY_MAX + 1);
    cr_assert_eq(parse3("m 1 ", key, "=v"), -EINVAL);
    cr_assert(strstr(err.reason, "tag key 'kkk"), "%s", err.reason);
    cr_assert_eq(parse3("{\"metric\":\"m\",\"value\":1,\"tags\":{\"", key, "\":\"v\"}}"),
                 -EINVAL);
    free(key);
}

METRIC_TEST(a_tag_value_of_256_bytes_is_accepted_and_257_refused)
{
    /* 2-byte UTF-8 characters: the limit is in bytes */
    char value[METRIC_TAG_VALUE_MAX + 2];
    for (int i = 0; i < METRIC_TAG_VALUE_MAX; i += 2)
        memcpy(value + i, "\xc3\xa9", 2);
    value[METRIC_TAG_VALUE_MAX] = '\0';
    cr_assert_eq(parse3("m 1 k=", value, ""), 1, "%s", err.reason);
    cr_assert_eq(parse3("{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":\"", value, "\"}}"), 1,
                 "%s", err.reason);
    value[METRIC_TAG_VALUE_MAX] = 'x';
    value[METRIC_TAG_VALUE_MAX + 1] = '\0';
    cr_assert_eq(parse3("m 1 k=", value, ""), -EINVAL);
    cr_assert(strstr(err.reason, "line 1: the value of tag 'k' is over 256 bytes"), "%s",
              err.reason);
    cr_assert_eq(parse3("{\"metric\":\"m\",\"value\":1,\"tags\":{\"k\":\"", value, "\"}}"),
                 -EINVAL);
    cr_assert(strstr(err.reason, "over 256 bytes"), "%s", err.reason);
}

METRIC_TEST(sixteen_tags_are_accepted_and_seventeen_refused)
{
    for (int ntags = METRIC_TAGS_MAX; ntags <= METRIC_TAGS_MAX + 1; ntags++) {
        struct buf text, json;
        buf_init(&text);
        buf_init(&json);
        buf_puts(&text, "m 1");
        buf_puts(&json, "{\"metric\":\"m\",\"value\":1,\"tags\":{");
        for (int i = 0; i < ntags; i++) {
            buf_printf(&text, " t%d=v%d", i, i);
            buf_printf(&json, "%s\"t%d\":\"v%d\"", i ? "," : "", i, i);
        }
        buf_puts(&json, "}}");
        setup();
        int rt = parse_n(text.data, text.len);
        int rj = parse_n(json.data, json.len);
        if (ntags == METRIC_TAGS_MAX) {
            cr_assert_eq(rt, 1, "%s", err.reason);
            cr_assert_eq(rj, 1, "%s", err.reason);
            cr_assert_str_eq(seen[0].tags, seen[1].tags, "text and JSON agree");
            json_t *t = json_loads(seen[0].tags, 0, NULL);
            cr_assert_eq(json_object_size(t), METRIC_TAGS_MAX);
            json_decref(t);
        } else {
            cr_assert_eq(rt, -EINVAL);
            cr_assert_eq(rj, -EINVAL);
            cr_assert(strstr(err.reason, "more than 16 tags"), "%s", err.reason);
        }
        buf_free(&text);
        buf_free(&json);
    }
}

/* ---------- names ---------- */

METRIC_TEST(metric_name_validity)
{
    static const char *const good[] = {"a", "_", "A9", "coordination.time", "a:b-c_d.e",
                                       "_private", "Z"};
    static const char *const bad[] = {"", "9a", ".a", ":a", "-a", "a b", "a/b", "a=b",
                                      "a\tb", "a\xc3\xa9", "a#", "a%"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        cr_assert(metric_name_valid(good[i], strlen(good[i])), "'%s'", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert(!metric_name_valid(bad[i], strlen(bad[i])), "'%s'", bad[i]);
    cr_assert(metric_name_valid("ab\0", 2), "only len bytes are looked at");
    cr_assert(!metric_name_valid("ab\0", 3), "a NUL inside is refused");
}

/* ---------- formatting values ---------- */

static const char *fmt_value(double v)
{
    static char out[64];
    struct buf b;
    buf_init(&b);
    metric_format_value(&b, v);
    cr_assert(buf_ok(&b));
    cr_assert_lt(b.len, sizeof out);
    memcpy(out, b.data, b.len);
    out[b.len] = '\0';
    buf_free(&b);
    return out;
}

struct formatted {
    double v;
    char want[32];
};

static const struct formatted formatted[] = {
    {150, "150"},
    {512.5, "512.5"},
    {1e-7, "1e-07"},
    {0.1, "0.1"},
    {1e21, "1e+21"},
    {0.0, "0"},
    {-0.0, "-0"},
    {-3.25, "-3.25"},
    {1e15, "1000000000000000"},
    {1e16, "1e+16"},
    {0.0001, "0.0001"},
    {0.00001, "1e-05"},
    {100, "100"},
    {123456789.125, "123456789.125"},
    {0.30000000000000004, "0.30000000000000004"},
    {1.7976931348623157e308, "1.7976931348623157e+308"},
    {5e-324, "5e-324"},
    {9007199254740993.0, "9007199254740992"},
    {2.5e-5, "2.5e-05"},
};

ParameterizedTestParameters(metric, values_format_as_the_shortest_exact_text)
{
    return cr_make_param_array(struct formatted, (void *)formatted,
                               sizeof formatted / sizeof formatted[0]);
}

ParameterizedTest(const struct formatted *f, metric, values_format_as_the_shortest_exact_text,
                  .timeout = UNIT_TIMEOUT)
{
    const char *s = fmt_value(f->v);
    cr_assert_str_eq(s, f->want, "%.17g", f->v);
    cr_assert(json_is_value(s, strlen(s)), "'%s' is a JSON number", s);
}

/* Significant digits of a decimal text ("1.250e+03" -> 3 after stripping zeros). */
static int significant_digits(const char *s)
{
    char digits[64];
    int n = 0;
    for (const char *p = s; *p && *p != 'e' && *p != 'E'; p++)
        if (*p >= '0' && *p <= '9')
            digits[n++] = *p;
    int start = 0;
    while (start < n && digits[start] == '0')
        start++;
    while (n > start && digits[n - 1] == '0')
        n--;
    return n > start ? n - start : 1;
}

static void check_round_trip(double v)
{
    const char *s = fmt_value(v);
    cr_assert(json_is_value(s, strlen(s)), "%.17g gave '%s', not a JSON number", v, s);
    double back = strtod(s, NULL);
    cr_assert_eq(memcmp(&back, &v, sizeof v), 0, "%.17g gave '%s' which reads as %.17g", v, s,
                 back);
    json_t *j = json_loads(s, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
    cr_assert_not_null(j, "jansson refuses '%s'", s);
    cr_assert_eq(json_number_value(j), v, "'%s'", s);
    json_decref(j);
    /* Shortest: one significant digit fewer never reads back exactly. */
    int d = significant_digits(s);
    cr_assert_leq(d, 17, "'%s'", s);
    if (d > 1) {
        char shorter[64];
        snprintf(shorter, sizeof shorter, "%.*e", d - 2, v);
        cr_assert_neq(strtod(shorter, NULL), v, "'%s' is shorter than '%s'", shorter, s);
    }
}

METRIC_TEST(random_finite_doubles_round_trip_exactly)
{
    uint64_t x = 0x9e3779b97f4a7c15u;
    int checked = 0;
    while (checked < 20000) {
        /* xorshift64*: any bit pattern, so every exponent and subnormals appear */
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint64_t bits = x * 0x2545f4914f6cdd1du;
        double v;
        memcpy(&v, &bits, sizeof v);
        if (!isfinite(v))
            continue;
        check_round_trip(v);
        checked++;
    }
}

METRIC_TEST(everyday_values_round_trip_exactly)
{
    static const double vs[] = {0.1, 0.2, 0.3, 1e-7, 1e21, 1e22, 1e23, -0.0, 0.0, 1.0 / 3,
                                2.0 / 3, 12.34, 99.99, 1e-300, 123456.789, 4294967295.0,
                                9007199254740991.0, 1e100, -1e-100, 2.2250738585072014e-308,
                                2.2250738585072009e-308, 0.1 + 0.2};
    for (size_t i = 0; i < sizeof vs / sizeof *vs; i++)
        check_round_trip(vs[i]);
    for (int i = -323; i <= 308; i++) {
        char text[16];
        snprintf(text, sizeof text, "1e%d", i);
        check_round_trip(strtod(text, NULL));
        check_round_trip(-strtod(text, NULL) / 3);
    }
    for (int i = 0; i < 2000; i++)
        check_round_trip(i / 100.0);
}

METRIC_TEST(a_non_finite_value_is_written_as_null)
{
    cr_assert_str_eq(fmt_value(NAN), "null");
    cr_assert_str_eq(fmt_value(INFINITY), "null");
    cr_assert_str_eq(fmt_value(-INFINITY), "null");
}

METRIC_TEST(formatting_appends_to_what_the_buffer_holds)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "[");
    metric_format_value(&b, 2.5);
    buf_puts(&b, ",");
    metric_format_value(&b, -7);
    buf_puts(&b, "]");
    cr_assert_str_eq(b.data, "[2.5,-7]");
    buf_free(&b);
}

/* ---------- the stored point ---------- */

/* Parses one line of text and formats the point it gives. */
static json_t *stored(const char *line, const char *ts, const char *agent, char *raw,
                      size_t rawsize)
{
    setup();
    cr_assert_eq(parse(line), 1, "'%s': %s", line, err.reason);
    struct metric_point p;
    memset(&p, 0, sizeof p);
    strcpy(p.name, seen[0].name);
    p.value = seen[0].value;
    strcpy(p.unit, seen[0].unit);
    buf_init(&p.tags);
    buf_puts(&p.tags, seen[0].tags);

    struct buf b;
    buf_init(&b);
    metric_format_point(&b, ts, agent, &p);
    cr_assert(buf_ok(&b));
    cr_assert_gt(b.len, 0);
    cr_assert_eq(b.data[b.len - 1], '\n', "one JSONL line");
    cr_assert_eq(memchr(b.data, '\n', b.len), b.data + b.len - 1, "exactly one newline");
    cr_assert_lt(b.len, rawsize);
    memcpy(raw, b.data, b.len + 1);

    json_error_t je;
    json_t *j = json_loadb(b.data, b.len - 1, JSON_REJECT_DUPLICATES, &je);
    cr_assert_not_null(j, "'%s': %s", b.data, je.text);
    cr_assert(json_is_object(j));
    cr_assert_eq(json_object_size(j), 6, "exactly six keys: %s", b.data);
    buf_free(&b);
    buf_free(&p.tags);
    return j;
}

METRIC_TEST(a_stored_point_is_one_json_line_with_six_keys)
{
    char raw[1024];
    json_t *j = stored("tasks.done 1 count phase=build", "2026-11-23T05:05:12.123456Z",
                       "alice", raw, sizeof raw);
    cr_assert_str_eq(json_string_value(json_object_get(j, "timestamp")),
                     "2026-11-23T05:05:12.123456Z");
    cr_assert_str_eq(json_string_value(json_object_get(j, "agent")), "alice");
    cr_assert_str_eq(json_string_value(json_object_get(j, "metric")), "tasks.done");
    cr_assert(json_is_number(json_object_get(j, "value")));
    cr_assert_eq(json_number_value(json_object_get(j, "value")), 1.0);
    cr_assert_str_eq(json_string_value(json_object_get(j, "unit")), "count");
    json_t *tags = json_object_get(j, "tags");
    cr_assert(json_is_object(tags));
    cr_assert_eq(json_object_size(tags), 1);
    cr_assert_str_eq(json_string_value(json_object_get(tags, "phase")), "build");
    json_decref(j);
    cr_assert_str_eq(raw, "{\"timestamp\":\"2026-11-23T05:05:12.123456Z\",\"agent\":\"alice\","
                          "\"metric\":\"tasks.done\",\"value\":1,\"unit\":\"count\","
                          "\"tags\":{\"phase\":\"build\"}}\n",
                     "keys in SPEC order");
}

METRIC_TEST(a_stored_point_without_unit_or_tags_has_empty_ones)
{
    char raw[1024];
    json_t *j = stored("m 0.1", "t", "bob", raw, sizeof raw);
    cr_assert_str_eq(json_string_value(json_object_get(j, "unit")), "");
    cr_assert(json_is_object(json_object_get(j, "tags")));
    cr_assert_eq(json_object_size(json_object_get(j, "tags")), 0);
    cr_assert_eq(json_real_value(json_object_get(j, "value")), 0.1);
    cr_assert(strstr(raw, "\"value\":0.1,"), "%s", raw);
    json_decref(j);
}

METRIC_TEST(a_stored_point_escapes_agent_timestamp_and_tag_values)
{
    char raw[2048];
    json_t *j = stored("m 1e-7 k=a\"b\\c u=caf\xc3\xa9", "ts\"\n", "ag\\ent\t", raw, sizeof raw);
    cr_assert_str_eq(json_string_value(json_object_get(j, "timestamp")), "ts\"\n");
    cr_assert_str_eq(json_string_value(json_object_get(j, "agent")), "ag\\ent\t");
    cr_assert_eq(json_number_value(json_object_get(j, "value")), 1e-7);
    json_t *tags = json_object_get(j, "tags");
    cr_assert_str_eq(json_string_value(json_object_get(tags, "k")), "a\"b\\c");
    cr_assert_str_eq(json_string_value(json_object_get(tags, "u")), "caf\xc3\xa9");
    json_decref(j);
}

METRIC_TEST(a_point_with_an_unset_tags_buffer_is_stored_with_empty_tags)
{
    struct metric_point p;
    memset(&p, 0, sizeof p);
    strcpy(p.name, "m");
    p.value = -2;
    buf_init(&p.tags);
    struct buf b;
    buf_init(&b);
    metric_format_point(&b, "t", "a", &p);
    cr_assert_str_eq(b.data, "{\"timestamp\":\"t\",\"agent\":\"a\",\"metric\":\"m\",\"value\":-2,"
                             "\"unit\":\"\",\"tags\":{}}\n");
    buf_free(&b);
}

METRIC_TEST(a_nul_byte_anywhere_in_a_line_is_refused)
{
    static const struct {
        char text[24];
        size_t len;
        char why[48];
    } cases[] = {
        {"a\0b 1", 5, "line 1: metric name 'a?b'"},
        {"m 1\0", 4, "line 1: value '1?'"},
        {"m 1 m\0s", 7, "line 1: unit 'm?s'"},
        {"m 1 k\0=v", 8, "line 1: tag key 'k?'"},
        {"m 1 k=v\0", 8, "line 1: the value of tag 'k' is not UTF-8"},
        {"a 1\n\0", 5, "line 2: metric name '?'"},
        {"{\"metric\":\"m\0\"}", 15, "line 1: not valid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        setup();
        cr_assert_eq(parse_n(cases[i].text, cases[i].len), -EINVAL, "case %zu", i);
        cr_assert(strstr(err.reason, cases[i].why), "case %zu: '%s' lacks '%s'", i, err.reason,
                  cases[i].why);
    }
}
