/*
 * test_send.c — SPEC §3: the agents/A/send file (records, batches, splits,
 * validation) and acknowledgements (rm of an inbox file, `ack` in ctl).
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *payload_str(json_t *list, size_t i)
{
    return bus_str(json_array_get(list, i), "payload");
}

/* Appends text to agents/AGENT/send in one write(); returns 0 or errno. */
static int send_records(const char *agent, const char *text)
{
    return bus_append(AT("agents/%s/send", agent), text);
}

BUS_TEST(send, one_record_is_delivered_with_defaults)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "echo '{\"to\":\"bob\",\"payload\":\"x\"}' >> agents/alice/send"),
                 0, "%s", r.err);
    bus_cmd_free(&r);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    json_t *env = json_array_get(in, 0);
    bus_assert_keys(env, "version", "msg_id", "from", "to", "timestamp", "sequence", "type",
                    "payload", "requires_ack", "priority", NULL);
    bus_assert_envelope(env, "alice", "bob");
    cr_assert_str_eq(bus_str(env, "payload"), "x");
    cr_assert_str_eq(bus_str(env, "type"), "message");
    cr_assert_str_eq(bus_str(env, "priority"), "normal");
    cr_assert(json_is_false(json_object_get(env, "requires_ack")));
    cr_assert_eq(bus_int(env, "sequence"), 1);
    json_decref(in);
}

BUS_TEST(send, every_field_is_carried_into_the_envelope)
{
    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(send_records("alice", "{\"to\":\"bob\",\"type\":\"task-delegation\","
                                       "\"payload\":{\"task\":\"x\"},\"requires_ack\":true,"
                                       "\"priority\":\"urgent\",\"correlation_id\":\"c-42\","
                                       "\"from\":\"alice\"}\n"),
                 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    json_t *env = json_array_get(in, 0);
    bus_assert_keys(env, "version", "msg_id", "from", "to", "timestamp", "sequence", "type",
                    "payload", "requires_ack", "priority", "correlation_id", NULL);
    cr_assert_str_eq(bus_str(env, "type"), "task-delegation");
    cr_assert_str_eq(bus_str(env, "priority"), "urgent");
    cr_assert_str_eq(bus_str(env, "correlation_id"), "c-42");
    cr_assert_str_eq(bus_str(env, "from"), "alice");
    cr_assert(json_is_true(json_object_get(env, "requires_ack")));
    json_t *payload = json_object_get(env, "payload");
    cr_assert(json_is_object(payload) && json_object_size(payload) == 1);
    cr_assert_str_eq(bus_str(payload, "task"), "x");
    json_decref(in);
}

BUS_TEST(send, many_records_in_one_write_are_all_delivered_in_order)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    cr_assert_eq(send_records("alice",
                              "{\"to\":\"bob\",\"payload\":1}\n"
                              "{\"to\":\"carol\",\"payload\":2}\n"
                              "{\"to\":\"bob\",\"payload\":3}{\"to\":\"bob\",\"payload\":4}\n"),
                 0);
    json_t *bob = bus_inbox("bob"), *carol = bus_inbox("carol");
    cr_assert_eq(json_array_size(bob), 3);
    cr_assert_eq(json_array_size(carol), 1);
    for (size_t i = 0; i < 3; i++) {
        json_t *env = json_array_get(bob, i);
        cr_assert_eq(json_integer_value(json_object_get(env, "payload")),
                     (json_int_t)(i ? i + 2 : 1));
        cr_assert_eq(bus_int(env, "sequence"), (json_int_t)i + 1);
    }
    cr_assert_eq(bus_int(json_array_get(carol, 0), "sequence"), 1);
    json_decref(bob);
    json_decref(carol);
}

BUS_TEST(send, a_record_without_a_trailing_newline_is_delivered_at_its_write)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_writer w;
    cr_assert_eq(bus_writer_open(&w, AT("agents/alice/send"), O_WRONLY | O_APPEND), 0);
    const char *rec = "{\"to\":\"bob\",\"payload\":\"no newline\"}";
    cr_assert_eq(bus_writer_write(&w, rec, strlen(rec)), 0);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1,
                 "a complete record was not delivered by its write()");
    cr_assert_eq(bus_writer_close(&w), 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1, "close delivered the record again");
    cr_assert_str_eq(payload_str(in, 0), "no newline");
    json_decref(in);
}

BUS_TEST(send, a_record_split_across_two_writes_is_delivered_by_the_second)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_writer w;
    cr_assert_eq(bus_writer_open(&w, AT("agents/alice/send"), O_WRONLY | O_APPEND), 0);
    cr_assert_eq(bus_writer_write(&w, "{\"to\":\"bob\",\"pay", 16), 0,
                 "the first half of a record was refused");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "half a record was delivered");
    cr_assert_eq(bus_writer_write(&w, "load\":\"joined\"}\n", 16), 0);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1,
                 "the write that completed the record did not deliver it");
    cr_assert_eq(bus_writer_close(&w), 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    cr_assert_str_eq(payload_str(in, 0), "joined");
    json_decref(in);
}

BUS_TEST(send, a_batch_with_an_invalid_record_fails_with_einval_and_delivers_none)
{
    bus_agents(&bus, "alice", "bob", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    int err = send_records("alice", "{\"to\":\"bob\",\"payload\":1}\n"
                                    "{\"to\":\"bob\",\"payload\":}\n"
                                    "{\"to\":\"bob\",\"payload\":3}\n");
    cr_assert_eq(err, EINVAL, "a batch with bad JSON gave %s", strerror(err));
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "part of a rejected batch was delivered");
    bus_assert_logged(AT("errors"), top, "bad record in send");
    bus_assert_logged(AT("agents/alice/errors"), mine, "bad record in send");

    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r,
                         "printf '%%s\\n' '{\"to\":\"bob\",\"payload\":1}' "
                         "'{\"to\":\"bob\",\"payload\":}' >> agents/alice/send"),
                  0, "the shell saw no error for an invalid batch");
    bus_cmd_free(&r);

    /* The rejected records consumed no sequence number. */
    cr_assert_eq(send_records("alice", "{\"to\":\"bob\",\"payload\":\"ok\"}\n"), 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    cr_assert_eq(bus_int(json_array_get(in, 0), "sequence"), 1);
    json_decref(in);
}

BUS_TEST(send, unknown_fields_and_bad_types_fail_with_einval)
{
    bus_agents(&bus, "alice", "bob", NULL);
    static const char *const bad[] = {
        "{\"to\":\"bob\",\"payload\":\"x\",\"colour\":\"red\"}",
        "{\"to\":\"bob\",\"payload\":\"x\",\"requires_ack\":\"yes\"}",
        "{\"to\":\"bob\",\"payload\":\"x\",\"priority\":\"high\"}",
        "{\"to\":\"bob\",\"payload\":\"x\",\"type\":5}",
        "{\"to\":\"bob\",\"payload\":\"x\",\"correlation_id\":7}",
        "{\"to\":5,\"payload\":\"x\"}",
        "{\"payload\":\"x\"}",
        "{\"to\":\"bob\"}",
        "[\"bob\",\"x\"]",
        "not json at all",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t top = bus_jsonl_count(AT("errors"));
        char rec[256];
        snprintf(rec, sizeof rec, "%s\n", bad[i]);
        int err = send_records("alice", rec);
        cr_assert_eq(err, EINVAL, "record %s gave %s, want EINVAL", bad[i], strerror(err));
        bus_assert_logged(AT("errors"), top, bad[i]);
    }
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0);
}

BUS_TEST(send, an_unknown_recipient_fails_with_enoent_and_delivers_none)
{
    bus_agents(&bus, "alice", "bob", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    int err = send_records("alice", "{\"to\":\"nobody\",\"payload\":\"x\"}\n");
    cr_assert_eq(err, ENOENT, "send to nobody gave %s", strerror(err));
    bus_assert_logged(AT("errors"), top, "send record to nobody");
    err = send_records("alice",
                       "{\"to\":\"bob\",\"payload\":1}\n{\"to\":\"nobody\",\"payload\":2}\n");
    cr_assert_eq(err, ENOENT, "a batch with an unknown recipient gave %s", strerror(err));
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "half a rejected batch was delivered");
    cr_assert_eq(bus_sh(&bus, NULL, "rmdir agents/bob"), 0);
    err = send_records("alice", "{\"to\":\"all\",\"payload\":\"anyone?\"}\n");
    cr_assert_eq(err, ENOENT, "a record to all with no other agent gave %s", strerror(err));
}

BUS_TEST(send, a_forged_from_fails_with_eacces)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    int err = send_records("alice", "{\"from\":\"bob\",\"to\":\"carol\",\"payload\":\"x\"}\n");
    cr_assert_eq(err, EACCES, "a forged from gave %s, want EACCES", strerror(err));
    cr_assert_eq(bus_count(AT("agents/carol/inbox")), 0, "the forged message was delivered");
    bus_assert_logged(AT("errors"), top, "forged from");
    bus_assert_logged(AT("agents/alice/errors"), mine, "forged from");
}

BUS_TEST(send, to_all_broadcasts_to_every_other_agent)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    cr_assert_eq(send_records("alice", "{\"to\":\"all\",\"payload\":\"hi all\"}\n"), 0);
    json_t *bob = bus_inbox("bob"), *carol = bus_inbox("carol");
    cr_assert_eq(json_array_size(bob), 1);
    cr_assert_eq(json_array_size(carol), 1);
    bus_assert_envelope(json_array_get(bob, 0), "alice", "bob");
    bus_assert_envelope(json_array_get(carol, 0), "alice", "carol");
    cr_assert_str_neq(bus_str(json_array_get(bob, 0), "msg_id"),
                      bus_str(json_array_get(carol, 0), "msg_id"));
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0);
    json_decref(bob);
    json_decref(carol);
}

/* Sends alice -> bob a message that requires an ack; returns its msg_id. */
static char *send_needing_ack(void)
{
    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(send_records("alice", "{\"to\":\"bob\",\"payload\":\"do it\","
                                       "\"requires_ack\":true,\"correlation_id\":\"c-1\"}\n"),
                 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    json_t *env = json_array_get(in, 0);
    cr_assert(json_is_true(json_object_get(env, "requires_ack")));
    cr_assert_str_eq(bus_str(env, "correlation_id"), "c-1");
    char *id = strdup(bus_str(env, "msg_id"));
    json_decref(in);
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0);
    return id;
}

/* alice's inbox holds exactly the ack of id from bob. */
static void assert_acked(const char *id)
{
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "the acknowledged message is still there");
    json_t *in = bus_inbox("alice");
    cr_assert_eq(json_array_size(in), 1, "the sender got %zu messages, want the ack",
                 json_array_size(in));
    json_t *ack = json_array_get(in, 0);
    bus_assert_envelope(ack, "bob", "alice");
    cr_assert_str_eq(bus_str(ack, "type"), "ack");
    cr_assert_str_eq(bus_str(ack, "correlation_id"), "c-1");
    json_t *payload = json_object_get(ack, "payload");
    cr_assert(json_is_object(payload) && json_object_size(payload) == 1,
              "the ack payload is not {\"ack\": MSG_ID}");
    cr_assert_str_eq(bus_str(payload, "ack"), id);
    json_decref(in);
}

BUS_TEST(send, rm_of_a_message_requiring_ack_sends_an_ack_to_the_sender)
{
    char *id = send_needing_ack();
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "rm agents/bob/inbox/*-%s.json", id), 0, "rm: %s", r.err);
    bus_cmd_free(&r);
    assert_acked(id);
    free(id);
}

BUS_TEST(send, ack_in_ctl_consumes_and_sends_an_ack_to_the_sender)
{
    char *id = send_needing_ack();
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "echo 'ack %s' > agents/bob/ctl", id), 0, "ack: %s", r.err);
    bus_cmd_free(&r);
    assert_acked(id);
    json_t *ctl = bus_ctl("bob");
    cr_assert_eq(bus_int(ctl, "acked_total"), 1);
    cr_assert_eq(bus_int(ctl, "inbox_depth"), 0);
    json_decref(ctl);
    free(id);
}

BUS_TEST(send, urgent_priority_keeps_first_in_first_out_order)
{
    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(send_records("alice", "{\"to\":\"bob\",\"payload\":\"first\"}\n"), 0);
    cr_assert_eq(send_records("alice", "{\"to\":\"bob\",\"payload\":\"second\","
                                       "\"priority\":\"urgent\"}\n"),
                 0);
    json_t *in = bus_inbox("bob");
    cr_assert_str_eq(payload_str(in, 0), "first", "an urgent message jumped the queue");
    cr_assert_str_eq(bus_str(json_array_get(in, 1), "priority"), "urgent");
    json_decref(in);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "timeout 10 cat agents/bob/next"), 0);
    cr_assert(strstr(r.out, "\"first\""), "next is not the oldest: %s", r.out);
    bus_cmd_free(&r);
}

BUS_TEST(send, an_ack_to_a_removed_sender_is_dropped_and_logged)
{
    char *id = send_needing_ack();
    cr_assert_eq(bus_sh(&bus, NULL, "rmdir agents/alice"), 0);
    size_t top = bus_jsonl_count(AT("errors"));
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "rm agents/bob/inbox/*-%s.json", id), 0,
                 "rm failed because the sender is gone: %s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0);
    bus_assert_logged(AT("errors"), top, "dropped ack");
    cr_assert_eq(bus_count(AT("agents")), 1);
    free(id);
}
