/*
 * test_drain.c — SPEC §7: agents/A/ctl (state as JSON; drain, resume),
 * ESHUTDOWN for senders to a draining agent, end-of-file from its empty
 * next.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void drain(const char *agent)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "echo drain > agents/%s/ctl", agent);
    cr_assert_eq(status, 0, "echo drain > ctl: status %d: %s", status, r.err);
    bus_cmd_free(&r);
}

static void assert_state(const char *agent, const char *state)
{
    json_t *ctl = bus_ctl(agent);
    cr_assert_str_eq(bus_str(ctl, "state"), state, "agents/%s/ctl state", agent);
    json_decref(ctl);
}

BUS_TEST(drain, ctl_reports_the_agent_state_and_counters)
{
    bus_agents(&bus, "alice", "bob", NULL);
    json_t *ctl = bus_ctl("bob");
    /* SPEC §7's fields, and the lease counters §10 adds. */
    bus_assert_keys(ctl, "agent", "state", "inbox_depth", "reserved", "delivered_total",
                    "acked_total", "leased", "dead", "redelivered_total", NULL);
    cr_assert_str_eq(bus_str(ctl, "agent"), "bob");
    cr_assert_str_eq(bus_str(ctl, "state"), "active");
    cr_assert_eq(bus_int(ctl, "inbox_depth"), 0);
    cr_assert_eq(bus_int(ctl, "reserved"), 0);
    cr_assert_eq(bus_int(ctl, "delivered_total"), 0);
    cr_assert_eq(bus_int(ctl, "acked_total"), 0);
    json_decref(ctl);

    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    cr_assert_eq(bus_sh(&bus, NULL, "rm \"agents/bob/inbox/$(ls agents/bob/inbox | head -1)\""), 0);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat agents/bob/ctl"), 0);
    json_error_t e;
    ctl = json_loads(r.out, 0, &e);
    cr_assert(ctl, "cat ctl is not JSON: %s: %s", e.text, r.out);
    cr_assert_eq(bus_int(ctl, "inbox_depth"), 1);
    cr_assert_eq(bus_int(ctl, "delivered_total"), 2);
    cr_assert_eq(bus_int(ctl, "acked_total"), 1);
    cr_assert_eq(bus_int(ctl, "reserved"), 0);
    json_decref(ctl);
    bus_cmd_free(&r);
}

BUS_TEST(drain, draining_agent_rejects_sends_with_eshutdown)
{
    bus_agents(&bus, "alice", "bob", NULL);
    drain("bob");
    assert_state("bob", "draining");

    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "echo hi > agents/alice/outbox/bob"), 0,
                  "echo to a draining agent succeeded");
    cr_assert(strstr(r.err, strerror(ESHUTDOWN)), "the shell said: %s", r.err);
    bus_cmd_free(&r);
    bus_assert_logged(AT("errors"), top, "send to a draining agent");
    bus_assert_logged(AT("agents/alice/errors"), mine, "send to a draining agent");

    enum bus_step step;
    int err =
        bus_write_ex(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, "hi\n", 3, &step);
    cr_assert(err == ESHUTDOWN && step == BUS_STEP_OPEN,
              "send to a draining agent: %s at step %d, want ESHUTDOWN at open", strerror(err),
              (int)step);
    err = bus_append(AT("agents/alice/send"), "{\"to\":\"bob\",\"payload\":1}\n");
    cr_assert_eq(err, ESHUTDOWN, "a send record to a draining agent gave %s", strerror(err));
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0);
}

BUS_TEST(drain, draining_agent_keeps_pending_messages_and_its_empty_next_gives_eof)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    drain("bob");

    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "timeout 10 cat agents/bob/next"), 0);
    cr_assert(strstr(r.out, "\"one\""), "next of a draining agent: %s", r.out);
    bus_cmd_free(&r);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 2, "pending messages vanished on drain");
    json_decref(in);

    cr_assert_eq(bus_sh(&bus, NULL, "rm agents/bob/inbox/*"), 0);
    int status = bus_sh(&bus, &r, "timeout 10 cat agents/bob/next");
    cr_assert_eq(status, 0, "cat of a draining agent's empty next: status %d (124: it blocked)",
                 status);
    cr_assert_str_empty(r.out, "a draining agent's empty next printed: %s", r.out);
    bus_cmd_free(&r);
}

BUS_TEST(drain, drain_wakes_a_blocked_next_reader_with_eof)
{
    bus_agents(&bus, "bob", NULL);
    struct bus_proc cat;
    bus_spawn(&bus, &cat, "exec cat agents/bob/next");
    cr_assert(bus_wait_in_syscall(cat.pid, SYS_read, -1, BUS_WAIT_MS),
              "cat agents/bob/next never blocked");
    bus_sync(&bus);
    drain("bob");
    char *out;
    int status = bus_proc_wait(&cat, BUS_WAIT_MS, &out);
    cr_assert_eq(status, 0, "a blocked next reader ended with %d after drain (-1: still blocked)",
                 status);
    cr_assert_str_empty(out);
    free(out);
}

BUS_TEST(drain, resume_accepts_messages_again)
{
    bus_agents(&bus, "alice", "bob", NULL);
    drain("bob");
    cr_assert_neq(bus_sh(&bus, NULL, "echo lost > agents/alice/outbox/bob"), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "echo resume > agents/bob/ctl"), 0);
    assert_state("bob", "active");
    cr_assert_eq(bus_sh(&bus, NULL, "echo back > agents/alice/outbox/bob"), 0,
                 "a resumed agent refused a message");
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    cr_assert_str_eq(bus_str(json_array_get(in, 0), "payload"), "back");
    cr_assert_eq(bus_int(json_array_get(in, 0), "sequence"), 1);
    json_decref(in);
}

BUS_TEST(drain, broadcast_skips_a_draining_agent)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    drain("carol");
    cr_assert_eq(bus_sh(&bus, NULL, "echo hi > agents/alice/outbox/all"), 0,
                 "a broadcast failed because one agent drains");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1);
    cr_assert_eq(bus_count(AT("agents/carol/inbox")), 0, "a draining agent got a broadcast");
}

BUS_TEST(drain, a_message_opened_before_drain_is_still_delivered)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_writer w;
    cr_assert_eq(bus_writer_open(&w, AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC),
                 0);
    drain("bob");
    cr_assert_eq(bus_writer_write(&w, "just in time\n", 13), 0,
                 "a write to a handle opened before drain failed");
    cr_assert_eq(bus_writer_close(&w), 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1, "the reserved message was dropped by drain");
    cr_assert_str_eq(bus_str(json_array_get(in, 0), "payload"), "just in time");
    json_decref(in);
}

BUS_TEST(drain, a_bad_ctl_line_fails_with_einval)
{
    bus_agents(&bus, "bob", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/bob/errors"));
    int err = bus_write(AT("agents/bob/ctl"), "frobnicate\n");
    cr_assert_eq(err, EINVAL, "a bad ctl line gave %s", strerror(err));
    cr_assert_neq(bus_sh(&bus, NULL, "echo bogus-verb > agents/bob/ctl"), 0);
    bus_assert_logged(AT("errors"), top, "bad ctl line");
    bus_assert_logged(AT("agents/bob/errors"), mine, "bad ctl line");
    assert_state("bob", "active");
}

BUS_TEST(drain, acks_ignore_the_senders_drain_state)
{
    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(bus_append(AT("agents/alice/send"),
                            "{\"to\":\"bob\",\"payload\":\"p\",\"requires_ack\":true}\n"),
                 0);
    drain("alice");
    cr_assert_eq(bus_sh(&bus, NULL, "rm agents/bob/inbox/*"), 0);
    json_t *in = bus_inbox("alice");
    cr_assert_eq(json_array_size(in), 1, "the ack to a draining sender was not delivered");
    cr_assert_str_eq(bus_str(json_array_get(in, 0), "type"), "ack");
    json_decref(in);
}
