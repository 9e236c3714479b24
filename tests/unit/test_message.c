/*
 * test_message.c — core/message.c: msg_id shape and counter, inbox file names,
 * payloads made from outbox bodies, and the message record codec (the envelope the
 * recipient reads, SPEC §3).
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/buf.h"
#include "busfs/clock.h"
#include "busfs/json.h"
#include "busfs/message.h"
#include "unit.h"

#define MESSAGE_TEST(name) Test(message, name, .timeout = UNIT_TIMEOUT)

#define STORE_ID 0x7f3a9c21u
#define SPEC_ID "MSG-20261123-050512-7f3a9c21-00000000000000000042"

static void assert_matches(const char *s, const char *pattern)
{
    regex_t re;
    cr_assert_eq(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, s, 0, NULL, 0);
    regfree(&re);
    cr_assert_eq(rc, 0, "'%s' does not match %s", s, pattern);
}

/* ---------- msg_id ---------- */

MESSAGE_TEST(msg_id_has_the_spec_shape)
{
    char id[BUS_MSG_ID_LEN + 1];
    message_id_format(id, STORE_ID, UNIT_T0_US, 42);
    cr_assert_str_eq(id, SPEC_ID);
    cr_assert_eq(strlen(id), BUS_MSG_ID_LEN);
    assert_matches(id, "^MSG-[0-9]{8}-[0-9]{6}-[0-9a-f]{8}-[0-9]{20}$");
}

MESSAGE_TEST(msg_id_uses_utc_and_zero_pads_every_field)
{
    char id[BUS_MSG_ID_LEN + 1];
    /* 2001-02-03T04:05:06Z, store id with leading zeros, counter 1. */
    message_id_format(id, 0xabu, INT64_C(981173106) * 1000000 + 999999, 1);
    cr_assert_str_eq(id, "MSG-20010203-040506-000000ab-00000000000000000001");
    message_id_format(id, 0xffffffffu, 0, UINT64_MAX);
    cr_assert_str_eq(id, "MSG-19700101-000000-ffffffff-18446744073709551615");
    assert_matches(id, "^MSG-[0-9]{8}-[0-9]{6}-[0-9a-f]{8}-[0-9]{20}$");
}

MESSAGE_TEST(msg_id_number_reads_the_counter)
{
    cr_assert_eq(message_id_number(SPEC_ID), 42);
    char id[BUS_MSG_ID_LEN + 1];
    message_id_format(id, STORE_ID, UNIT_T0_US, UINT64_C(12345678901234567890));
    cr_assert_eq(message_id_number(id), UINT64_C(12345678901234567890));
}

MESSAGE_TEST(msg_id_number_is_zero_for_malformed_ids)
{
    const char *bad[] = {
        "",
        "MSG-",
        "hello",
        "MSG-20261123-050512-7f3a9c21-0000000000000000004",     /* 19 digits */
        "MSG-20261123-050512-7f3a9c21-000000000000000000042",   /* 21 digits */
        "MSX-20261123-050512-7f3a9c21-00000000000000000042",
        "msg-20261123-050512-7f3a9c21-00000000000000000042",
        "MSG-20261123_050512-7f3a9c21-00000000000000000042",
        "MSG-20261123-050512_7f3a9c21-00000000000000000042",
        "MSG-20261123-050512-7f3a9c21_00000000000000000042",
        "MSG-20261123-050512-7f3a9c21-0000000000000000004x",
        "MSG-20261123-050512-7f3a9c21-+0000000000000000042",
        "MSG-20261123-050512-7f3a9c21-0000000000000000004 ",
        "MSG-20261123-050512-7f3a9c21-00000000000000000000",   /* counter 0 is never used */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(message_id_number(bad[i]), 0, "'%s'", bad[i]);
}

MESSAGE_TEST(msg_id_number_rejects_ids_whose_date_time_or_store_id_are_not_digits)
{
    /* Only "MSG-<8 digits>-<6 digits>-<8 lowercase hex>-<20 digits>" is a msg_id; anything
     * else would let another name alias a message. */
    const char *bad[] = {
        "MSG-2026112X-050512-7f3a9c21-00000000000000000042",
        "MSG-XXXXXXXX-XXXXXX-XXXXXXXX-00000000000000000042",
        "MSG-20261123-05051 -7f3a9c21-00000000000000000042",
        "MSG-20261123-050512-7F3A9C21-00000000000000000042",
        "MSG-20261123-050512-7f3a9c2g-00000000000000000042",
        "MSG-20261123-050512-/../../x-00000000000000000042",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(message_id_number(bad[i]), 0, "'%s' read as %" PRIu64, bad[i],
                     message_id_number(bad[i]));
}

/* ---------- inbox file names ---------- */

static struct bus_message *fake_message(uint64_t number, const char *id)
{
    struct bus_message *m = calloc(1, sizeof *m + 2 + strlen(id) + 1);
    cr_assert_not_null(m);
    atomic_init(&m->refs, 1);
    m->number = number;
    m->msg_id = strcpy(m->envelope + 2, id);
    m->len = 1;
    m->envelope[0] = '\n';
    return m;
}

MESSAGE_TEST(file_name_is_the_delivery_number_then_the_msg_id)
{
    struct bus_message *m = fake_message(42, SPEC_ID);
    char name[BUS_FILE_NAME_LEN + 1];
    message_file_name(m, name);
    cr_assert_str_eq(name, "00000000000000000042-" SPEC_ID ".json");
    cr_assert_eq(strlen(name), BUS_FILE_NAME_LEN);
    message_unref(m);
}

MESSAGE_TEST(file_names_sort_in_delivery_order)
{
    char a[BUS_FILE_NAME_LEN + 1], b[BUS_FILE_NAME_LEN + 1], id[BUS_MSG_ID_LEN + 1];
    /* A later message with an earlier clock still sorts after. */
    message_id_format(id, STORE_ID, UNIT_T0_US, 9);
    struct bus_message *m9 = fake_message(9, id);
    message_id_format(id, STORE_ID, UNIT_T0_US - INT64_C(86400000000), 10);
    struct bus_message *m10 = fake_message(10, id);
    message_file_name(m9, a);
    message_file_name(m10, b);
    cr_assert_lt(strcmp(a, b), 0);
    message_unref(m9);
    message_unref(m10);
}

MESSAGE_TEST(file_name_parses_back_to_number_and_msg_id)
{
    for (uint64_t n = 1; n < UINT64_C(10000000000000000000); n = n * 7 + 3) {
        char id[BUS_MSG_ID_LEN + 1], name[BUS_FILE_NAME_LEN + 1], back[BUS_MSG_ID_LEN + 1];
        message_id_format(id, STORE_ID, UNIT_T0_US + (int64_t)n, n);
        struct bus_message *m = fake_message(n, id);
        message_file_name(m, name);
        cr_assert_eq(message_parse_file_name(name, back), n, "%s", name);
        cr_assert_str_eq(back, id);
        cr_assert_eq(message_parse_file_name(name, NULL), n);
        message_unref(m);
    }
}

MESSAGE_TEST(foreign_names_are_not_message_files)
{
    const char *bad[] = {
        "",
        "README",
        "alice",
        "all",
        ".json",
        "00000000000000000042",
        "00000000000000000042-" SPEC_ID,
        "00000000000000000042-" SPEC_ID ".jsonx",
        "00000000000000000042-" SPEC_ID ".JSON",
        "00000000000000000042-" SPEC_ID ".txt ",
        "00000000000000000042_" SPEC_ID ".json",
        "0000000000000000042-" SPEC_ID ".json",                   /* 19 digits */
        "000000000000000000042-" SPEC_ID ".json",                 /* 21 digits */
        "00000000000000000043-" SPEC_ID ".json",                  /* number != msg_id's */
        "0000000000000000004x-" SPEC_ID ".json",
        "00000000000000000000-MSG-20261123-050512-7f3a9c21-00000000000000000000.json",
        "00000000000000000042-MSX-20261123-050512-7f3a9c21-00000000000000000042.json",
        "00000000000000000042-" SPEC_ID ".json.swp",
        "x00000000000000000042-" SPEC_ID ".json",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char id[BUS_MSG_ID_LEN + 1] = "untouched";
        cr_assert_eq(message_parse_file_name(bad[i], id), 0, "'%s'", bad[i]);
    }
}

MESSAGE_TEST(names_with_a_malformed_msg_id_are_not_message_files)
{
    const char *bad[] = {
        "00000000000000000042-MSG-2026112X-050512-7f3a9c21-00000000000000000042.json",
        "00000000000000000042-MSG-20261123-050512-7F3A9C21-00000000000000000042.json",
        "00000000000000000042-MSG-aaaaaaaa-bbbbbb-cccccccc-00000000000000000042.json",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(message_parse_file_name(bad[i], NULL), 0, "'%s'", bad[i]);
}

/* ---------- payload_from_body ---------- */

static char *payload(const char *body, size_t len, bool *b64)
{
    struct buf out;
    buf_init(&out);
    *b64 = true;
    payload_from_body(&out, body, len, b64);
    cr_assert(buf_ok(&out));
    return out.data ? out.data : strdup("");
}

static void assert_payload(const char *body, size_t len, const char *want, bool want_b64)
{
    bool b64;
    char *p = payload(body, len, &b64);
    cr_assert_str_eq(p, want, "body '%.*s'", (int)len, body);
    cr_assert_eq(b64, want_b64, "body '%.*s'", (int)len, body);
    free(p);
}

#define PAYLOAD(body, want, b64) assert_payload(body, sizeof body - 1, want, b64)

MESSAGE_TEST(json_bodies_are_kept_byte_for_byte)
{
    PAYLOAD("{\"task\":\"lint\",\"files\":3}\n", "{\"task\":\"lint\",\"files\":3}", false);
    PAYLOAD("{\"b\" : 0.1, \"a\" : 18446744073709551615}",
            "{\"b\" : 0.1, \"a\" : 18446744073709551615}", false);
    PAYLOAD("{\"a\":1,\"a\":2}", "{\"a\":1,\"a\":2}", false);
    PAYLOAD("42\n", "42", false);
    PAYLOAD("0.1", "0.1", false);
    PAYLOAD("\"already a string\"\n", "\"already a string\"", false);
    PAYLOAD("true", "true", false);
    PAYLOAD("null\n", "null", false);
    PAYLOAD("[1, 2,\n 3]\n", "[1, 2, 3]", false);
}

MESSAGE_TEST(multi_line_json_bodies_become_one_line)
{
    PAYLOAD("{\n  \"task\": \"x\\ny\",\n  \"n\": 1\n}\n", "{  \"task\": \"x\\ny\",  \"n\": 1}",
            false);
}

MESSAGE_TEST(text_bodies_lose_one_trailing_newline)
{
    PAYLOAD("build finished\n", "\"build finished\"", false);
    PAYLOAD("build finished", "\"build finished\"", false);
    PAYLOAD("two\n\n", "\"two\\n\"", false);
    PAYLOAD("a\nb\n", "\"a\\nb\"", false);
    PAYLOAD("\n", "\"\"", false);
    PAYLOAD("", "\"\"", false);
    PAYLOAD("  padded  \n", "\"  padded  \"", false);
    PAYLOAD("crlf\r\n", "\"crlf\\r\"", false);
    PAYLOAD("say \"hi\" \\ \t\x01\n", "\"say \\\"hi\\\" \\\\ \\t\\u0001\"", false);
    PAYLOAD("caf\xc3\xa9 \xe2\x82\xac\n", "\"caf\xc3\xa9 \xe2\x82\xac\"", false);
    PAYLOAD("{\"half\":\n", "\"{\\\"half\\\":\"", false);
    PAYLOAD("01\n", "\"01\"", false);
    PAYLOAD("1 2\n", "\"1 2\"", false);
}

MESSAGE_TEST(binary_bodies_become_base64_with_the_flag)
{
    PAYLOAD("\xff\x00\x80", "\"/wCA\"", true);
    PAYLOAD("foobar\xff", "\"Zm9vYmFy/w==\"", true);
    PAYLOAD("text with a nul\0 byte\n", "\"dGV4dCB3aXRoIGEgbnVsACBieXRlCg==\"", true);
    PAYLOAD("\xc0\xaf", "\"wK8=\"", true);
    PAYLOAD("\xed\xa0\x80\n", "\"7aCACg==\"", true);
}

MESSAGE_TEST(every_payload_is_one_line_of_valid_json)
{
    const char *bodies[] = {"hello\n", "{\"a\":\n[1,\n2]}\n", "\xff\xfe", "\"q\"", "x\ty\n"};
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        bool b64;
        char *p = payload(bodies[i], strlen(bodies[i]), &b64);
        cr_assert(json_is_value(p, strlen(p)), "%s", p);
        cr_assert_null(strchr(p, '\n'), "%s", p);
        free(p);
    }
}

/* ---------- message records ---------- */

static const char TYPE_MESSAGE[] = "\"message\"";

static struct envelope spec_envelope(const char *payload_token)
{
    struct envelope env = {
        .from = "alice", .to = "bob", .number = 42, .sequence = 5, .time_us = UNIT_T0_US,
        .store_id = STORE_ID, .type_token = TYPE_MESSAGE, .type_len = sizeof TYPE_MESSAGE - 1,
        .payload = payload_token, .payload_len = strlen(payload_token),
    };
    return env;
}

static struct bus_message *round_trip(const struct envelope *env)
{
    struct buf rec;
    buf_init(&rec);
    message_encode(&rec, env);
    cr_assert(buf_ok(&rec));
    struct reader r = {(const uint8_t *)rec.data, rec.len, 0, false};
    struct bus_message *m = message_decode(&r);
    cr_assert_not_null(m);
    cr_assert_not(r.bad);
    cr_assert_eq(r.pos, rec.len, "the decoder reads the whole record");
    buf_free(&rec);
    return m;
}

/* Parses the envelope and checks it has exactly the fields named (NULL-terminated). */
static json_t *parse_envelope(const struct bus_message *m, size_t flags, ...)
{
    cr_assert_eq(m->len, strlen(m->envelope));
    cr_assert_eq(m->envelope[m->len - 1], '\n', "the envelope ends with a newline");
    cr_assert_eq(strchr(m->envelope, '\n'), m->envelope + m->len - 1, "one line");
    json_error_t e;
    json_t *v = json_loadb(m->envelope, m->len, flags, &e);
    cr_assert_not_null(v, "jansson: %s in %s", e.text, m->envelope);
    cr_assert(json_is_object(v));
    va_list ap;
    va_start(ap, flags);
    size_t n = 0;
    for (const char *k = va_arg(ap, const char *); k; k = va_arg(ap, const char *), n++)
        cr_assert_not_null(json_object_get(v, k), "field %s is missing in %s", k, m->envelope);
    va_end(ap);
    cr_assert_eq(json_object_size(v), n, "extra fields in %s", m->envelope);
    return v;
}

#define SPEC_FIELDS "version", "msg_id", "from", "to", "timestamp", "sequence", "type", \
                    "payload", "requires_ack", "priority"

MESSAGE_TEST(the_envelope_is_the_spec_example_byte_for_byte)
{
    struct envelope env = spec_envelope("\"build finished\"");
    struct bus_message *m = round_trip(&env);
    cr_assert_str_eq(m->envelope,
                     "{\"version\":1,\"msg_id\":\"" SPEC_ID "\",\"from\":\"alice\",\"to\":\"bob\","
                     "\"timestamp\":\"2026-11-23T05:05:12.123456Z\",\"sequence\":5,"
                     "\"type\":\"message\",\"payload\":\"build finished\","
                     "\"requires_ack\":false,\"priority\":\"normal\"}\n");
    message_unref(m);
}

MESSAGE_TEST(encode_then_decode_keeps_every_header_field)
{
    struct envelope env = spec_envelope("{\"task\":\"x\"}");
    env.requires_ack = true;
    struct bus_message *m = round_trip(&env);
    cr_assert_eq(atomic_load(&m->refs), 1);
    cr_assert_eq(m->number, 42);
    cr_assert_eq(m->sequence, 5);
    cr_assert(m->requires_ack);
    cr_assert_str_eq(m->from, "alice");
    cr_assert_str_eq(m->to, "bob");
    cr_assert_str_eq(m->msg_id, SPEC_ID);
    cr_assert_eq(m->corr_len, 0);
    cr_assert_eq(message_id_number(m->msg_id), m->number);
    message_unref(m);
}

MESSAGE_TEST(the_envelope_has_exactly_the_spec_fields)
{
    struct envelope env = spec_envelope("{\"task\":\"lint\",\"files\":3}");
    struct bus_message *m = round_trip(&env);
    json_t *v = parse_envelope(m, 0, SPEC_FIELDS, NULL);
    cr_assert_eq(json_integer_value(json_object_get(v, "version")), 1);
    cr_assert_str_eq(json_string_value(json_object_get(v, "msg_id")), SPEC_ID);
    cr_assert_str_eq(json_string_value(json_object_get(v, "from")), "alice");
    cr_assert_str_eq(json_string_value(json_object_get(v, "to")), "bob");
    cr_assert_str_eq(json_string_value(json_object_get(v, "timestamp")),
                     "2026-11-23T05:05:12.123456Z");
    cr_assert_eq(json_integer_value(json_object_get(v, "sequence")), 5);
    cr_assert_str_eq(json_string_value(json_object_get(v, "type")), "message");
    json_t *p = json_object_get(v, "payload");
    cr_assert_str_eq(json_string_value(json_object_get(p, "task")), "lint");
    cr_assert_eq(json_integer_value(json_object_get(p, "files")), 3);
    cr_assert(json_is_false(json_object_get(v, "requires_ack")));
    cr_assert_str_eq(json_string_value(json_object_get(v, "priority")), "normal");
    json_decref(v);
    message_unref(m);
}

MESSAGE_TEST(correlation_id_and_urgent_priority_appear_when_given)
{
    static const char corr[] = "\"c-42\"";
    static const char type[] = "\"task-delegation\"";
    struct envelope env = spec_envelope("1");
    env.corr_token = corr;
    env.corr_len = sizeof corr - 1;
    env.urgent = true;
    env.requires_ack = true;
    env.type_token = type;
    env.type_len = sizeof type - 1;
    struct bus_message *m = round_trip(&env);
    json_t *v = parse_envelope(m, 0, SPEC_FIELDS, "correlation_id", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(v, "correlation_id")), "c-42");
    cr_assert_str_eq(json_string_value(json_object_get(v, "priority")), "urgent");
    cr_assert_str_eq(json_string_value(json_object_get(v, "type")), "task-delegation");
    cr_assert(json_is_true(json_object_get(v, "requires_ack")));
    /* corr_off/corr_len locate the raw token inside the envelope. */
    cr_assert_eq(m->corr_len, sizeof corr - 1);
    cr_assert_eq(memcmp(m->envelope + m->corr_off, corr, m->corr_len), 0);
    json_decref(v);
    message_unref(m);
}

MESSAGE_TEST(base64_payloads_carry_the_encoding_field)
{
    struct envelope env = spec_envelope("\"/wCA\"");
    env.base64 = true;
    struct bus_message *m = round_trip(&env);
    json_t *v = parse_envelope(m, 0, SPEC_FIELDS, "encoding", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(v, "encoding")), "base64");
    cr_assert_str_eq(json_string_value(json_object_get(v, "payload")), "/wCA");
    json_decref(v);
    message_unref(m);
}

MESSAGE_TEST(the_payload_token_is_spliced_in_verbatim)
{
    const char *tok = "{\"x\":0.1,\"big\":18446744073709551615,\"dup\":1,\"dup\":2}";
    struct envelope env = spec_envelope(tok);
    struct bus_message *m = round_trip(&env);
    char *at = strstr(m->envelope, ",\"payload\":");
    cr_assert_not_null(at);
    cr_assert_eq(strncmp(at + strlen(",\"payload\":"), tok, strlen(tok)), 0, "%s", m->envelope);
    cr_assert(json_is_value(m->envelope, m->len));
    json_t *v = parse_envelope(m, JSON_DECODE_INT_AS_REAL, SPEC_FIELDS, NULL);
    json_decref(v);
    message_unref(m);
}

MESSAGE_TEST(a_payload_built_from_a_body_gives_a_parseable_envelope)
{
#define BODY(s) {s, sizeof s - 1}
    static const struct {
        const char *s;
        size_t len;
    } bodies[] = {BODY("build finished\n"), BODY("{\"task\":\"lint\",\n\"files\":3}\n"),
                  BODY("\xff\xfe\x00\x01"), BODY("tab\there \"quoted\"\n")};
#undef BODY
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        struct buf p;
        buf_init(&p);
        bool b64;
        payload_from_body(&p, bodies[i].s, bodies[i].len, &b64);
        struct envelope env = spec_envelope(p.data);
        env.base64 = b64;
        struct bus_message *m = round_trip(&env);
        json_t *v = b64 ? parse_envelope(m, 0, SPEC_FIELDS, "encoding", NULL)
                        : parse_envelope(m, 0, SPEC_FIELDS, NULL);
        json_decref(v);
        message_unref(m);
        buf_free(&p);
    }
}

MESSAGE_TEST(a_truncated_record_does_not_decode)
{
    struct envelope env = spec_envelope("\"build finished\"");
    static const char corr[] = "\"c\"";
    env.corr_token = corr;
    env.corr_len = sizeof corr - 1;
    struct buf rec;
    buf_init(&rec);
    message_encode(&rec, &env);
    for (size_t k = 0; k < rec.len; k++) {
        struct reader r = {(const uint8_t *)rec.data, k, 0, false};
        struct bus_message *m = message_decode(&r);
        cr_assert_null(m, "a record cut at %zu of %zu bytes decoded", k, rec.len);
    }
    buf_free(&rec);
}

MESSAGE_TEST(a_record_with_number_zero_or_a_bad_correlation_extent_does_not_decode)
{
    struct envelope env = spec_envelope("1");
    env.number = 0;
    struct buf rec;
    buf_init(&rec);
    message_encode(&rec, &env);
    struct reader r = {(const uint8_t *)rec.data, rec.len, 0, false};
    cr_assert_null(message_decode(&r));

    /* corr_off + corr_len beyond the envelope. */
    buf_reset(&rec);
    env.number = 42;
    message_encode(&rec, &env);
    size_t corr_at = 8 + 8 + 1 + (4 + 3) + (4 + 5) + (4 + BUS_MSG_ID_LEN);
    uint8_t *p = (uint8_t *)rec.data + corr_at;
    p[0] = 0xf0; /* corr_off = 240 */
    p[4] = 0xff; /* corr_len = 65535 */
    p[5] = 0xff;
    struct reader r2 = {(const uint8_t *)rec.data, rec.len, 0, false};
    cr_assert_null(message_decode(&r2));
    buf_free(&rec);
}

MESSAGE_TEST(messages_are_freed_when_the_last_reference_goes)
{
    struct envelope env = spec_envelope("1");
    struct bus_message *m = round_trip(&env);
    message_ref(m);
    message_ref(m);
    cr_assert_eq(atomic_load(&m->refs), 3);
    message_unref(m);
    message_unref(m);
    cr_assert_eq(atomic_load(&m->refs), 1);
    message_unref(m); /* freed; ASan would catch a double free or a leak */
    message_unref(NULL);
}
