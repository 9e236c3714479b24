/*
 * test_limits.c — SPEC §7 and §8: inbox capacity (EAGAIN, reservations,
 * all-or-nothing broadcast), --max-message-size (EFBIG) and
 * --store-max-bytes (ENOSPC); a rejected write sends nothing and every
 * rejection leaves a reason line.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void start_capacity_3(void)
{
    bus_start(&bus, "--inbox-capacity", "3", NULL);
}

static void start_capacity_1(void)
{
    bus_start(&bus, "--inbox-capacity", "1", NULL);
}

static void start_max_size_1000(void)
{
    bus_start(&bus, "--max-message-size", "1000", NULL);
}

static void start_store_256k(void)
{
    bus_start(&bus, "--store-max-bytes", "262144", NULL);
}

static const char *payload_str(json_t *list, size_t i)
{
    return bus_str(json_array_get(list, i), "payload");
}

/* A message of n bytes of c plus a newline (malloc'd). */
static char *filler(size_t n, char c)
{
    char *s = malloc(n + 2);
    memset(s, c, n);
    s[n] = '\n';
    s[n + 1] = '\0';
    return s;
}

BUS_TEST_WITH(limits, send_to_full_inbox_fails_with_eagain_and_loses_nothing, start_capacity_3)
{
    bus_agents(&bus, "alice", "bob", NULL);
    const char *words[] = {"one", "two", "three"};
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(bus_sh(&bus, NULL, "echo %s > agents/alice/outbox/bob", words[i]), 0);

    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "echo four > agents/alice/outbox/bob");
    cr_assert_neq(status, 0, "echo to a full inbox succeeded");
    cr_assert(strstr(r.err, strerror(EAGAIN)), "the shell said: %s", r.err);
    bus_cmd_free(&r);
    bus_assert_logged(AT("errors"), top, "send to a full inbox");
    bus_assert_logged(AT("agents/alice/errors"), mine, "send to a full inbox");

    enum bus_step step;
    int err = bus_write_ex(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, "five\n", 5,
                           &step);
    cr_assert(err == EAGAIN && step == BUS_STEP_OPEN,
              "send to a full inbox: %s at step %d, want EAGAIN at open", strerror(err), (int)step);

    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 3, "a full inbox holds %zu messages", json_array_size(in));
    for (size_t i = 0; i < 3; i++)
        cr_assert_str_eq(payload_str(in, i), words[i], "a message was lost or evicted");
    json_decref(in);

    /* Consuming one makes room again, and the rejected sends took no sequence. */
    cr_assert_eq(bus_sh(&bus, NULL, "rm \"agents/bob/inbox/$(ls agents/bob/inbox | head -1)\""), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "echo six > agents/alice/outbox/bob"), 0,
                 "an inbox with room refused a message");
    in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 3);
    cr_assert_str_eq(payload_str(in, 2), "six");
    cr_assert_eq(bus_int(json_array_get(in, 2), "sequence"), 4);
    json_decref(in);
}

BUS_TEST_WITH(limits, send_record_to_full_inbox_fails_with_eagain, start_capacity_1)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "fill");
    int err = bus_append(AT("agents/alice/send"), "{\"to\":\"bob\",\"payload\":\"more\"}\n");
    cr_assert_eq(err, EAGAIN, "a send record to a full inbox gave %s", strerror(err));
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1);
}

BUS_TEST_WITH(limits, an_open_outbox_file_reserves_a_slot, start_capacity_1)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    struct bus_writer w;
    cr_assert_eq(bus_writer_open(&w, AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC),
                 0);
    json_t *ctl = bus_ctl("bob");
    cr_assert_eq(bus_int(ctl, "reserved"), 1, "an open outbox file reserved nothing");
    cr_assert_eq(bus_int(ctl, "inbox_depth"), 0);
    json_decref(ctl);

    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "echo other > agents/carol/outbox/bob"), 0,
                  "the reserved slot was given to another sender");
    cr_assert(strstr(r.err, strerror(EAGAIN)), "the shell said: %s", r.err);
    bus_cmd_free(&r);

    cr_assert_eq(bus_writer_write(&w, "held\n", 5), 0);
    cr_assert_eq(bus_writer_close(&w), 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    cr_assert_str_eq(payload_str(in, 0), "held");
    json_decref(in);
    ctl = bus_ctl("bob");
    cr_assert_eq(bus_int(ctl, "reserved"), 0);
    cr_assert_eq(bus_int(ctl, "inbox_depth"), 1);
    json_decref(ctl);
}

BUS_TEST_WITH(limits, broadcast_with_one_full_recipient_delivers_to_nobody, start_capacity_1)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    bus_send("bob", "carol", "fill");
    size_t top = bus_jsonl_count(AT("errors"));
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "echo hi > agents/alice/outbox/all"), 0,
                  "a broadcast with a full recipient succeeded");
    bus_cmd_free(&r);
    enum bus_step step;
    int err =
        bus_write_ex(AT("agents/alice/outbox/all"), O_WRONLY | O_CREAT | O_TRUNC, "hi\n", 3, &step);
    cr_assert(err == EAGAIN && step == BUS_STEP_OPEN,
              "broadcast with a full recipient: %s at step %d, want EAGAIN at open", strerror(err),
              (int)step);
    bus_assert_logged(AT("errors"), top, "broadcast to a full inbox");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "bob got part of a failed broadcast");
    json_t *in = bus_inbox("carol");
    cr_assert_eq(json_array_size(in), 1);
    cr_assert_str_eq(payload_str(in, 0), "fill");
    json_decref(in);
    json_t *ctl = bus_ctl("bob");
    cr_assert_eq(bus_int(ctl, "reserved"), 0, "the failed broadcast left a reservation in bob");
    json_decref(ctl);
}

BUS_TEST_WITH(limits, acks_ignore_the_senders_capacity, start_capacity_1)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("bob", "alice", "fill"); /* alice's inbox is full */
    cr_assert_eq(bus_append(AT("agents/alice/send"),
                            "{\"to\":\"bob\",\"payload\":\"p\",\"requires_ack\":true}\n"),
                 0);
    cr_assert_eq(bus_sh(&bus, NULL, "rm agents/bob/inbox/*"), 0);
    json_t *in = bus_inbox("alice");
    cr_assert_eq(json_array_size(in), 2, "the ack to a full inbox was not delivered");
    cr_assert_str_eq(bus_str(json_array_get(in, 1), "type"), "ack");
    json_decref(in);
}

BUS_TEST_WITH(limits, message_over_max_size_fails_with_efbig_and_sends_nothing, start_max_size_1000)
{
    bus_agents(&bus, "alice", "bob", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    char *big = filler(3000, 'x');
    enum bus_step step;
    int err = bus_write_ex(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, big,
                           strlen(big), &step);
    cr_assert(err == EFBIG && step == BUS_STEP_WRITE,
              "a 3000-byte message: %s at step %d, want EFBIG at write", strerror(err), (int)step);
    bus_assert_logged(AT("errors"), top, "message too big");
    bus_assert_logged(AT("agents/alice/errors"), mine, "message too big");

    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "head -c 3000 /dev/zero | tr '\\0' x > agents/alice/outbox/bob"),
                  0, "the shell saw no error for a too big message");
    bus_cmd_free(&r);

    /* A rejected write poisons the handle: the accepted first part is not sent. */
    struct bus_writer w;
    cr_assert_eq(bus_writer_open(&w, AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC),
                 0);
    char *part = filler(599, 'y');
    cr_assert_eq(bus_writer_write(&w, part, 600), 0, "the first 600 bytes were refused");
    cr_assert_eq(bus_writer_write(&w, part, 600), EFBIG, "1200 bytes were accepted");
    bus_writer_close(&w);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "a rejected message was sent");

    char *record = malloc(4000);
    snprintf(record, 4000, "{\"to\":\"bob\",\"payload\":\"%.3000s\"}\n", big);
    err = bus_append(AT("agents/alice/send"), record);
    cr_assert_eq(err, EFBIG, "a 3000-byte send record gave %s", strerror(err));
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0);

    bus_send("alice", "bob", "small");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1, "a small message was refused");
    free(record);
    free(part);
    free(big);
}

BUS_TEST_WITH(limits, full_store_fails_with_enospc_at_write, start_store_256k)
{
    bus_agents(&bus, "alice", "bob", NULL);
    char *msg = filler(8191, 'z');
    size_t sent = 0;
    int err = 0;
    enum bus_step step = BUS_STEP_NONE;
    while (sent < 200) {
        err = bus_write_ex(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, msg,
                           strlen(msg), &step);
        if (err)
            break;
        sent++;
    }
    cr_assert(sent > 0, "the first 8 KiB message was refused: %s", strerror(err));
    cr_assert(err == ENOSPC && step == BUS_STEP_WRITE,
              "after %zu messages: %s at step %d, want ENOSPC at write", sent, strerror(err),
              (int)step);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), (long)sent,
                 "the inbox does not hold exactly the accepted messages");

    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "head -c 8192 /dev/zero | tr '\\0' z > agents/alice/outbox/bob"),
                  0, "the shell saw no error on a full store");
    bus_cmd_free(&r);
    bus_assert_logged(AT("errors"), top, "store full");
    bus_assert_logged(AT("agents/alice/errors"), mine, "store full");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), (long)sent, "a rejected message was sent");
    free(msg);
}
