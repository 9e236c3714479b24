/*
 * test_json.c — core/json.c: the strict scanner (complete, incomplete, invalid),
 * whole-value checks, compaction, string escaping, object members, UTF-8 and base64.
 *
 * The scanner must tell "incomplete" (-EAGAIN: a `send` record split across writes)
 * from "invalid" (-EINVAL: it can never become valid), so every prefix of a valid
 * object is tried.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/buf.h"
#include "busfs/json.h"
#include "unit.h"

#define JSON_TEST(name) Test(json, name, .timeout = UNIT_TIMEOUT)

/* json_scan_value over a whole NUL-terminated string from 0; *end receives the end. */
static int scan(const char *s, size_t *end)
{
    size_t pos = 0;
    int rc = json_scan_value(s, strlen(s), &pos);
    if (end)
        *end = pos;
    return rc;
}

/* A string of n copies of open followed by n copies of close, NUL-terminated. */
static char *nested(size_t n, const char *open, const char *close, const char *middle)
{
    size_t lo = strlen(open), lc = strlen(close), lm = strlen(middle);
    char *s = malloc(n * (lo + lc) + lm + 1);
    cr_assert_not_null(s);
    char *p = s;
    for (size_t i = 0; i < n; i++, p += lo)
        memcpy(p, open, lo);
    memcpy(p, middle, lm);
    p += lm;
    for (size_t i = 0; i < n; i++, p += lc)
        memcpy(p, close, lc);
    *p = '\0';
    return s;
}

/* ---------- json_scan_value: complete values ---------- */

JSON_TEST(scan_finds_the_end_of_a_complete_object)
{
    const char *s = "{\"a\":[1,-2.5e+3,true,false,null,\"x\"],\"b\":{}}";
    size_t end;
    cr_assert_eq(scan(s, &end), 0);
    cr_assert_eq(end, strlen(s));
}

JSON_TEST(scan_stops_after_the_first_value_and_leaves_the_rest)
{
    const char *s = "  {\"to\":\"bob\"}{\"to\":\"carol\"}\n";
    size_t end;
    cr_assert_eq(scan(s, &end), 0);
    cr_assert_eq(end, strlen("  {\"to\":\"bob\"}"));
    size_t pos = end;
    cr_assert_eq(json_scan_value(s, strlen(s), &pos), 0);
    cr_assert_eq(pos, strlen(s) - 1);
}

JSON_TEST(scan_accepts_every_kind_of_scalar_inside_containers)
{
    const char *ok[] = {
        "[0]", "[-0]", "[0.5]", "[-0.0e0]", "[1E5]", "[1e-5]", "[123456789012345678901234567890]",
        "[true]", "[false]", "[null]", "[\"\"]", "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\"]",
        "[\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"]", "[ ]", "{ }", "[[],{}]",
        " \t\r\n[ 1 , 2 ]",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        size_t end;
        cr_assert_eq(scan(ok[i], &end), 0, "'%s' should scan", ok[i]);
        cr_assert_eq(end, strlen(ok[i]), "'%s' ends at %zu", ok[i], end);
    }
}

JSON_TEST(scan_leaves_pos_unchanged_when_the_value_is_not_complete)
{
    const char *s = "{\"a\":";
    size_t pos = 0;
    cr_assert_eq(json_scan_value(s, strlen(s), &pos), -EAGAIN);
    cr_assert_eq(pos, 0);
}

/* ---------- json_scan_value: incomplete values ---------- */

JSON_TEST(every_proper_prefix_of_a_valid_object_is_incomplete)
{
    /* Every construct, with multi-byte UTF-8 and escapes a split can land inside. */
    const char *s = "{ \"a\" : [1, -2.5e-3, 0, 10E+2, true, false, null],\n"
                    "  \"caf\xc3\xa9\": \"\xe2\x82\xac\xf0\x9f\x98\x80 \\u00e9\\\"\\\\\\n\",\n"
                    "  \"o\": {\"n\": {}, \"l\": [], \"z\": -0},\n"
                    "  \"big\": 18446744073709551615 }";
    size_t len = strlen(s);
    for (size_t k = 0; k < len; k++) {
        size_t pos = 0;
        int rc = json_scan_value(s, k, &pos);
        cr_assert_eq(rc, -EAGAIN, "prefix of %zu bytes ('%.*s'): got %d, want -EAGAIN", k,
                     (int)k, s, rc);
    }
    size_t pos = 0;
    cr_assert_eq(json_scan_value(s, len, &pos), 0);
    cr_assert_eq(pos, len);
}

JSON_TEST(every_proper_prefix_of_a_nested_array_is_incomplete)
{
    const char *s = "[[\"x\",[1.5,[true,[null,{\"k\":[\"\\u0041\"]}]]]],-7]";
    size_t len = strlen(s);
    for (size_t k = 0; k < len; k++) {
        size_t pos = 0;
        cr_assert_eq(json_scan_value(s, k, &pos), -EAGAIN, "prefix of %zu bytes", k);
    }
}

JSON_TEST(a_number_at_the_end_of_input_is_incomplete_for_the_scanner)
{
    /* More digits may follow in the next write. */
    cr_assert_eq(scan("123", NULL), -EAGAIN);
    cr_assert_eq(scan("-1.5e", NULL), -EAGAIN);
    cr_assert_eq(scan("-", NULL), -EAGAIN);
    size_t end;
    cr_assert_eq(scan("123 ", &end), 0);
    cr_assert_eq(end, 3);
    cr_assert_eq(scan("123,", &end), 0);
    cr_assert_eq(end, 3);
}

JSON_TEST(empty_or_blank_input_is_incomplete)
{
    cr_assert_eq(scan("", NULL), -EAGAIN);
    cr_assert_eq(scan(" \n\t\r", NULL), -EAGAIN);
}

/* ---------- json_scan_value: invalid values ---------- */

static void assert_invalid(const char *s)
{
    size_t pos = 0;
    int rc = json_scan_value(s, strlen(s), &pos);
    cr_assert_eq(rc, -EINVAL, "'%s': got %d, want -EINVAL", s, rc);
}

JSON_TEST(bad_escapes_are_invalid)
{
    assert_invalid("\"\\x\"");
    assert_invalid("\"\\'\"");
    assert_invalid("\"\\a\"");
    assert_invalid("\"\\U0041\"");
    assert_invalid("\"\\u12G4\"");
    assert_invalid("\"\\u-123\"");
    assert_invalid("[\"ok\",\"\\0\"]");
}

JSON_TEST(an_escaped_nul_byte_after_a_backslash_is_invalid)
{
    const char s[] = "\"\\\0\"";
    size_t pos = 0;
    cr_assert_eq(json_scan_value(s, sizeof s - 1, &pos), -EINVAL);
}

JSON_TEST(raw_control_characters_in_strings_are_invalid)
{
    assert_invalid("\"a\tb\"");
    assert_invalid("\"a\nb\"");
    assert_invalid("\"a\rb\"");
    assert_invalid("\"\x01\"");
    assert_invalid("\"\x1f\"");
    assert_invalid("{\"k\x02\":1}");
    const char nul[] = "\"a\0b\"";
    size_t pos = 0;
    cr_assert_eq(json_scan_value(nul, sizeof nul - 1, &pos), -EINVAL);
}

JSON_TEST(leading_zeros_are_invalid)
{
    assert_invalid("[01]");
    assert_invalid("[-01]");
    assert_invalid("[00]");
    assert_invalid("{\"a\":007}");
    assert_invalid("[0.5,012.5]");
    cr_assert_not(json_is_value("01", 2));
    cr_assert_not(json_is_value("-00", 3));
}

JSON_TEST(malformed_numbers_are_invalid)
{
    assert_invalid("[+1]");
    assert_invalid("[.5]");
    assert_invalid("[1.]");
    assert_invalid("[1.e3]");
    assert_invalid("[1e]");
    assert_invalid("[1e+]");
    assert_invalid("[-]");
    assert_invalid("[--1]");
    assert_invalid("[0x10]");
    assert_invalid("[NaN]");
    assert_invalid("[Infinity]");
    assert_invalid("[-Infinity]");
}

JSON_TEST(trailing_and_stray_commas_are_invalid)
{
    assert_invalid("[1,]");
    assert_invalid("[1,2,]");
    assert_invalid("{\"a\":1,}");
    assert_invalid("[,1]");
    assert_invalid("{,\"a\":1}");
    assert_invalid("[1,,2]");
    assert_invalid("[,]");
}

JSON_TEST(structural_errors_are_invalid)
{
    assert_invalid("{\"a\" 1}");
    assert_invalid("{\"a\":1 \"b\":2}");
    assert_invalid("{a:1}");
    assert_invalid("{1:2}");
    assert_invalid("{\"a\"::1}");
    assert_invalid("[1 2]");
    assert_invalid("[1}");
    assert_invalid("{\"a\":1]");
    assert_invalid("]");
    assert_invalid("}");
    assert_invalid(":");
    assert_invalid("tru e");
    assert_invalid("nul!");
    assert_invalid("[True]");
    assert_invalid("'single'");
    assert_invalid("[undefined]");
}

JSON_TEST(nesting_up_to_json_max_depth_is_accepted)
{
    char *s = nested(JSON_MAX_DEPTH, "[", "]", "1");
    size_t end;
    cr_assert_eq(scan(s, &end), 0);
    cr_assert_eq(end, strlen(s));
    free(s);
    s = nested(JSON_MAX_DEPTH, "{\"k\":", "}", "{}");
    /* JSON_MAX_DEPTH objects around one more empty object: one level too many. */
    cr_assert_eq(scan(s, NULL), -EINVAL);
    free(s);
    s = nested(JSON_MAX_DEPTH - 1, "{\"k\":", "}", "{}");
    cr_assert_eq(scan(s, &end), 0);
    cr_assert_eq(end, strlen(s));
    free(s);
}

JSON_TEST(nesting_deeper_than_json_max_depth_is_invalid)
{
    char *s = nested(JSON_MAX_DEPTH + 1, "[", "]", "");
    cr_assert_eq(scan(s, NULL), -EINVAL);
    cr_assert_not(json_is_value(s, strlen(s)));
    free(s);
    /* Even before the closing brackets arrive: it can never become valid. */
    s = nested(JSON_MAX_DEPTH + 1, "[", "", "");
    cr_assert_eq(scan(s, NULL), -EINVAL);
    free(s);
    /* A very deep input does not exhaust the stack. */
    s = nested(200000, "[", "", "");
    cr_assert_eq(scan(s, NULL), -EINVAL);
    free(s);
}

JSON_TEST(bad_utf8_in_strings_is_invalid)
{
    assert_invalid("\"\xff\"");
    assert_invalid("\"\xfe\"");
    assert_invalid("\"\x80\"");                 /* lone continuation byte */
    assert_invalid("\"\xc3\x28\"");             /* bad continuation */
    assert_invalid("\"\xc0\xaf\"");             /* overlong '/' */
    assert_invalid("\"\xc1\xbf\"");             /* overlong */
    assert_invalid("\"\xe0\x80\xaf\"");         /* overlong 3-byte */
    assert_invalid("\"\xf0\x80\x80\xaf\"");     /* overlong 4-byte */
    assert_invalid("\"\xed\xa0\x80\"");         /* surrogate U+D800 */
    assert_invalid("\"\xed\xbf\xbf\"");         /* surrogate U+DFFF */
    assert_invalid("\"\xf4\x90\x80\x80\"");     /* above U+10FFFF */
    assert_invalid("\"\xf5\x80\x80\x80\"");
    assert_invalid("{\"k\xff\":1}");            /* in a key too */
}

JSON_TEST(a_multibyte_character_cut_at_the_end_is_incomplete)
{
    const char *s = "\"\xf0\x9f\x98\x80\"";
    for (size_t k = 1; k < 5; k++) {
        size_t pos = 0;
        cr_assert_eq(json_scan_value(s, k, &pos), -EAGAIN, "cut after %zu bytes", k);
    }
}

/* ---------- json_is_value ---------- */

JSON_TEST(is_value_accepts_a_number_that_ends_the_input)
{
    cr_assert(json_is_value("0", 1));
    cr_assert(json_is_value("123", 3));
    cr_assert(json_is_value("-1.5e+10", 8));
    cr_assert(json_is_value("18446744073709551615", 20));
    cr_assert(json_is_value("0.1", 3));
}

JSON_TEST(is_value_allows_surrounding_whitespace_only)
{
    const char *yes[] = {" 1 ", "\n{\"a\":1}\n", "\t[1, 2]\r\n", "  \"s\"  ", "true\n", "null"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        cr_assert(json_is_value(yes[i], strlen(yes[i])), "'%s'", yes[i]);
    const char *no[] = {"", "  ", "1 2", "{} {}", "[1] x", "1.", "-", "\"open", "{\"a\":1",
                        "hello", "build finished", "1,", "[1]]", "\f1"};
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        cr_assert_not(json_is_value(no[i], strlen(no[i])), "'%s'", no[i]);
}

JSON_TEST(is_value_looks_only_at_the_given_length)
{
    const char *s = "[1]garbage";
    cr_assert(json_is_value(s, 3));
    cr_assert_not(json_is_value(s, 4));
    cr_assert(json_is_value("12345", 2));
}

/* ---------- json_append_compact ---------- */

static void assert_compact(const char *in, const char *want)
{
    struct buf b;
    buf_init(&b);
    json_append_compact(&b, in, strlen(in));
    cr_assert(buf_ok(&b));
    cr_assert_eq(b.len, strlen(want), "compact('%s') = '%s', want '%s'", in, b.data, want);
    cr_assert_str_eq(b.data, want);
    buf_free(&b);
}

JSON_TEST(compact_removes_line_breaks_outside_strings_only)
{
    assert_compact("{\n  \"a\": 1,\n  \"b\": [1,\r\n 2]\n}", "{  \"a\": 1,  \"b\": [1, 2]}");
    assert_compact("[\"x\\ny\",\n\"\\r\\n\"]", "[\"x\\ny\",\"\\r\\n\"]");
    assert_compact("[\"a\\\"\",\n1]", "[\"a\\\"\",1]");
    assert_compact("[\"a\\\\\",\n1]", "[\"a\\\\\",1]");
    assert_compact("[\"\\\\\\\"\\n\",\n\"}\"\n]", "[\"\\\\\\\"\\n\",\"}\"]");
}

JSON_TEST(compact_trims_surrounding_whitespace)
{
    assert_compact("  \t\n{\"a\":1}\n\n", "{\"a\":1}");
    assert_compact("\r\n42\r\n", "42");
    assert_compact(" \"s p a c e\" ", "\"s p a c e\"");
}

JSON_TEST(compact_keeps_every_other_byte_verbatim)
{
    /* Re-serialising would print 0.10000000000000001 and drop the big integer. */
    assert_compact("{\"x\":0.1,\n\"big\":18446744073709551615,\n\"e\":1E+400}",
                   "{\"x\":0.1,\"big\":18446744073709551615,\"e\":1E+400}");
    assert_compact("{\"b\" : 2 , \"a\" : 1}", "{\"b\" : 2 , \"a\" : 1}");
    assert_compact("{\"a\":1,\"a\":2}", "{\"a\":1,\"a\":2}");
    assert_compact("\"\\u00e9 caf\xc3\xa9\"", "\"\\u00e9 caf\xc3\xa9\"");
    assert_compact("[1.0, -0, 1e5]", "[1.0, -0, 1e5]");
}

JSON_TEST(compact_appends_to_what_the_buffer_holds)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "payload=");
    json_append_compact(&b, "[\n1\n]", 5);
    cr_assert_str_eq(b.data, "payload=[1]");
    buf_free(&b);
}

/* ---------- json_append_string ---------- */

static char *quote(const char *s, size_t len)
{
    struct buf b;
    buf_init(&b);
    json_append_string(&b, s, len);
    cr_assert(buf_ok(&b));
    return b.data;
}

JSON_TEST(append_string_escapes_quotes_backslashes_and_control_characters)
{
    const char *in = "a\"b\\c\n\r\t\b\f\x01\x1f/";
    char *q = quote(in, strlen(in));
    cr_assert_str_eq(q, "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f/\"");
    free(q);
    q = quote("", 0);
    cr_assert_str_eq(q, "\"\"");
    free(q);
    q = quote("plain text", 10);
    cr_assert_str_eq(q, "\"plain text\"");
    free(q);
}

JSON_TEST(append_string_escapes_a_nul_byte)
{
    char *q = quote("a\0b", 3);
    cr_assert_str_eq(q, "\"a\\u0000b\"");
    free(q);
}

JSON_TEST(append_string_output_is_a_valid_json_value)
{
    char all[256];
    for (int i = 0; i < 128; i++)
        all[i] = (char)i;
    char *q = quote(all, 128);
    cr_assert(json_is_value(q, strlen(q)), "%s", q);
    free(q);
}

JSON_TEST(append_string_round_trips_through_jansson)
{
    const char *cases[] = {
        "build finished", "quote \" and backslash \\ and slash /", "line1\nline2\r\n\ttab",
        "\x01\x02\x03\x1f\x7f", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "{\"not\":\"json\"}",
        "\\u0041 stays literal",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *q = quote(cases[i], strlen(cases[i]));
        json_error_t e;
        json_t *v = json_loads(q, JSON_DECODE_ANY, &e);
        cr_assert_not_null(v, "jansson rejects %s: %s", q, e.text);
        cr_assert(json_is_string(v));
        cr_assert_str_eq(json_string_value(v), cases[i]);
        json_decref(v);
        free(q);
    }
    /* With an embedded NUL (jansson needs JSON_ALLOW_NUL to keep it). */
    char *q = quote("a\0b", 3);
    json_t *v = json_loads(q, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    cr_assert_not_null(v);
    cr_assert_eq(json_string_length(v), 3);
    cr_assert_eq(memcmp(json_string_value(v), "a\0b", 3), 0);
    json_decref(v);
    free(q);
}

/* ---------- json_object_members ---------- */

struct members {
    struct json_member m[16];
    char *keys;
    int n;
};

static void split(struct members *out, const char *s, int max)
{
    out->keys = malloc(strlen(s) + 1);
    cr_assert_not_null(out->keys);
    out->n = json_object_members(s, strlen(s), out->m, max, out->keys);
}

static void assert_member(const struct members *ms, int i, const char *key, const char *value)
{
    cr_assert_lt(i, ms->n);
    cr_assert_str_eq(ms->m[i].key, key);
    cr_assert_eq(ms->m[i].value_len, strlen(value), "member %s: '%.*s'", key,
                 (int)ms->m[i].value_len, ms->m[i].value);
    cr_assert_eq(memcmp(ms->m[i].value, value, strlen(value)), 0);
}

JSON_TEST(object_members_gives_raw_value_extents_in_order)
{
    const char *s = " { \"to\" : \"bob\" ,\n \"payload\":{\"x\":[1, 0.1, 18446744073709551615]},"
                    "\"n\":-0.5e3,\"t\":true,\"z\":null,\"s\":\"a\\\"b\"}\n";
    struct members ms;
    split(&ms, s, 16);
    cr_assert_eq(ms.n, 6);
    assert_member(&ms, 0, "to", "\"bob\"");
    assert_member(&ms, 1, "payload", "{\"x\":[1, 0.1, 18446744073709551615]}");
    assert_member(&ms, 2, "n", "-0.5e3");
    assert_member(&ms, 3, "t", "true");
    assert_member(&ms, 4, "z", "null");
    assert_member(&ms, 5, "s", "\"a\\\"b\"");
    /* Value pointers point into the input. */
    cr_assert(ms.m[1].value > s && ms.m[1].value < s + strlen(s));
    free(ms.keys);
}

JSON_TEST(object_members_of_an_empty_object_is_zero)
{
    struct members ms;
    split(&ms, "{}", 16);
    cr_assert_eq(ms.n, 0);
    free(ms.keys);
    split(&ms, " { \n } ", 16);
    cr_assert_eq(ms.n, 0);
    free(ms.keys);
}

JSON_TEST(object_members_decodes_escaped_keys)
{
    struct members ms;
    split(&ms, "{\"t\\u006f\":\"bob\",\"a\\nb\":1,\"q\\\"\":2}", 16);
    cr_assert_eq(ms.n, 3);
    assert_member(&ms, 0, "to", "\"bob\"");
    assert_member(&ms, 1, "a\nb", "1");
    assert_member(&ms, 2, "q\"", "2");
    free(ms.keys);
}

JSON_TEST(object_members_joins_escaped_surrogate_pairs)
{
    /* U+1F600 escaped as a pair is one code point, the same key as its raw UTF-8;
     * a lone surrogate is kept (it shows as U+FFFD when written) and stays distinct. */
    struct members ms;
    split(&ms, "{\"\\ud83d\\ude00\":1,\"\\ud83d\":2,\"x\\ud83dy\":3,\"\\ude00\\ud83d\":4}", 16);
    cr_assert_eq(ms.n, 4);
    assert_member(&ms, 0, "\xf0\x9f\x98\x80", "1");
    assert_member(&ms, 1, "\xed\xa0\xbd", "2");
    assert_member(&ms, 2, "x\xed\xa0\xbdy", "3");
    assert_member(&ms, 3, "\xed\xb8\x80\xed\xa0\xbd", "4");
    free(ms.keys);
    split(&ms, "{\"\\ud83d\\ude00\":1,\"\xf0\x9f\x98\x80\":2}", 16);
    cr_assert_eq(ms.n, -EINVAL, "an escaped pair and its UTF-8 are the same key");
    free(ms.keys);
}

JSON_TEST(object_members_rejects_duplicate_keys)
{
    struct members ms;
    split(&ms, "{\"to\":\"bob\",\"to\":\"eve\"}", 16);
    cr_assert_eq(ms.n, -EINVAL);
    free(ms.keys);
    /* The same key spelled with an escape is still the same key. */
    split(&ms, "{\"to\":\"bob\",\"t\\u006f\":\"eve\"}", 16);
    cr_assert_eq(ms.n, -EINVAL);
    free(ms.keys);
    split(&ms, "{\"a\":1,\"b\":2,\"c\":3,\"b\":4}", 16);
    cr_assert_eq(ms.n, -EINVAL);
    free(ms.keys);
}

JSON_TEST(object_members_keeps_distinct_non_ascii_escaped_keys_distinct)
{
    /* U+00E9 and U+00EA are different keys; neither is a duplicate of the other. */
    struct members ms;
    split(&ms, "{\"\\u00e9\":1,\"\\u00ea\":2}", 16);
    cr_assert_eq(ms.n, 2, "distinct keys \\u00e9 and \\u00ea reported as %d", ms.n);
    free(ms.keys);
    split(&ms, "{\"x\\u0100\":1,\"x\\u0200\":2}", 16);
    cr_assert_eq(ms.n, 2, "distinct keys x\\u0100 and x\\u0200 reported as %d", ms.n);
    free(ms.keys);
}

JSON_TEST(object_members_rejects_a_key_with_an_escaped_nul)
{
    struct members ms;
    split(&ms, "{\"to\\u0000x\":\"bob\"}", 16);
    cr_assert_eq(ms.n, -EINVAL);
    free(ms.keys);
}

JSON_TEST(object_members_rejects_more_than_max_members)
{
    struct members ms;
    split(&ms, "{\"a\":1,\"b\":2,\"c\":3}", 2);
    cr_assert_eq(ms.n, -EINVAL);
    free(ms.keys);
    split(&ms, "{\"a\":1,\"b\":2}", 2);
    cr_assert_eq(ms.n, 2);
    free(ms.keys);
}

JSON_TEST(object_members_rejects_what_is_not_an_object)
{
    const char *bad[] = {"[1,2]", "\"s\"", "1", "null", "", "{\"a\":1", "{\"a\"}", "{\"a\":}",
                         "{\"a\":1,}", "{\"a\":01}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct members ms;
        split(&ms, bad[i], 16);
        cr_assert_eq(ms.n, -EINVAL, "'%s' gave %d", bad[i], ms.n);
        free(ms.keys);
    }
}

/* ---------- utf8_text_valid ---------- */

JSON_TEST(utf8_accepts_ascii_and_well_formed_sequences)
{
    const char *ok[] = {"", "hello", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                        "\xed\x9f\xbf" /* U+D7FF */, "\xee\x80\x80" /* U+E000 */,
                        "\xf4\x8f\xbf\xbf" /* U+10FFFF */, "\xc2\x80", "\x7f", "tab\tnl\n"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        cr_assert(utf8_text_valid(ok[i], strlen(ok[i])), "case %zu", i);
}

JSON_TEST(utf8_rejects_overlong_encodings)
{
    cr_assert_not(utf8_text_valid("\xc0\x80", 2));
    cr_assert_not(utf8_text_valid("\xc0\xaf", 2));
    cr_assert_not(utf8_text_valid("\xc1\xbf", 2));
    cr_assert_not(utf8_text_valid("\xe0\x80\x80", 3));
    cr_assert_not(utf8_text_valid("\xe0\x9f\xbf", 3));
    cr_assert_not(utf8_text_valid("\xf0\x80\x80\x80", 4));
    cr_assert_not(utf8_text_valid("\xf0\x8f\xbf\xbf", 4));
}

JSON_TEST(utf8_rejects_surrogates_and_code_points_above_the_range)
{
    cr_assert_not(utf8_text_valid("\xed\xa0\x80", 3));
    cr_assert_not(utf8_text_valid("\xed\xaf\xbf", 3));
    cr_assert_not(utf8_text_valid("\xed\xb0\x80", 3));
    cr_assert_not(utf8_text_valid("\xed\xbf\xbf", 3));
    cr_assert_not(utf8_text_valid("\xed\xa0\xbd\xed\xb8\x80", 6)); /* CESU-8 pair */
    cr_assert_not(utf8_text_valid("\xf4\x90\x80\x80", 4));
    cr_assert_not(utf8_text_valid("\xf5\x80\x80\x80", 4));
    cr_assert_not(utf8_text_valid("\xf8\x88\x80\x80\x80", 5));
    cr_assert_not(utf8_text_valid("\xff", 1));
    cr_assert_not(utf8_text_valid("\xfe", 1));
}

JSON_TEST(utf8_rejects_nul_bytes)
{
    cr_assert_not(utf8_text_valid("\0", 1));
    cr_assert_not(utf8_text_valid("ab\0cd", 5));
    cr_assert_not(utf8_text_valid("ab\n\0", 4));
}

JSON_TEST(utf8_rejects_truncated_and_broken_sequences)
{
    cr_assert_not(utf8_text_valid("\xc3", 1));
    cr_assert_not(utf8_text_valid("abc\xe2\x82", 5));
    cr_assert_not(utf8_text_valid("\xf0\x9f\x98", 3));
    cr_assert_not(utf8_text_valid("\x80", 1));
    cr_assert_not(utf8_text_valid("\xc3\x28", 2));
    cr_assert_not(utf8_text_valid("\xe2\x28\xa1", 3));
    /* The length is honoured: a valid prefix of a longer buffer. */
    cr_assert(utf8_text_valid("caf\xc3\xa9\xff", 5));
}

/* ---------- base64_append ---------- */

static void assert_base64(const char *in, size_t len, const char *want)
{
    struct buf b;
    buf_init(&b);
    base64_append(&b, (const unsigned char *)in, len);
    cr_assert(buf_ok(&b));
    cr_assert_eq(b.len, strlen(want));
    cr_assert_str_eq(b.data ? b.data : "", want);
    buf_free(&b);
}

JSON_TEST(base64_matches_the_rfc4648_test_vectors)
{
    assert_base64("", 0, "");
    assert_base64("f", 1, "Zg==");
    assert_base64("fo", 2, "Zm8=");
    assert_base64("foo", 3, "Zm9v");
    assert_base64("foob", 4, "Zm9vYg==");
    assert_base64("fooba", 5, "Zm9vYmE=");
    assert_base64("foobar", 6, "Zm9vYmFy");
}

JSON_TEST(base64_encodes_every_byte_value)
{
    assert_base64("\x00\x00\x00", 3, "AAAA");
    assert_base64("\xff\xff\xff", 3, "////");
    assert_base64("\xfb\xff\xbf", 3, "+/+/");
    assert_base64("\xff\x00\x80", 3, "/wCA");
    assert_base64("\x00", 1, "AA==");
}

JSON_TEST(base64_appends_after_existing_content)
{
    struct buf b;
    buf_init(&b);
    buf_putc(&b, '"');
    base64_append(&b, (const unsigned char *)"foobar", 6);
    buf_putc(&b, '"');
    cr_assert_str_eq(b.data, "\"Zm9vYmFy\"");
    /* Long input crosses buffer growth. */
    buf_reset(&b);
    unsigned char big[3000];
    memset(big, 0, sizeof big);
    base64_append(&b, big, sizeof big);
    cr_assert_eq(b.len, 4000);
    for (size_t i = 0; i < b.len; i++)
        cr_assert_eq(b.data[i], 'A');
    buf_free(&b);
}

Test(json, append_string_replaces_bytes_that_are_not_utf8, .timeout = 30)
{
    struct buf b;
    buf_init(&b);
    /* a cut 3-byte sequence, a lone byte, an encoded surrogate, then valid text */
    json_append_string(&b, "a\xe2\x82" "b\xff" "c\xed\xa0\x80" "d\xc3\xa9", 12);
    cr_assert_eq(b.len, strlen("\"a\xef\xbf\xbd\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "d\xc3\xa9\""),
                 "%.*s", (int)b.len, b.data);
    cr_assert(json_is_value(b.data, b.len), "%.*s", (int)b.len, b.data);
    json_t *v = json_loadb(b.data, b.len, JSON_DECODE_ANY, NULL);
    cr_assert_not_null(v, "jansson reads it back");
    cr_assert(strstr(json_string_value(v), "d\xc3\xa9"), "valid text is kept");
    json_decref(v);
    buf_free(&b);
}
