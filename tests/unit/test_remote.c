/*
 * test_remote.c — core/remote.c: messages to and from agents on other nodes (SPEC §12)
 * as the core keeps them, without NATS. A send to NAME@NODE is queued for that node
 * and survives a restart until the cluster layer says it was stored there; a message
 * fetched from another node is delivered once, also when it is fetched again after a
 * restart; one for an agent that does not exist queues an "undeliverable" reply, and
 * an ack of a message that asked for one travels back the same way.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/buf.h"
#include "busfs/clock.h"
#include "busfs/bus.h"
#include "busfs/remote.h"
#include "unit.h"

#define REMOTE_TEST(name) \
    Test(remote, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

#define OWNER 1000

static struct bus *the_bus;
static struct bus_config cfg;
static char store_dir[PATH_MAX];

static void open_bus(void)
{
    struct bus_error err = {0};
    cr_assert_eq(bus_open(&cfg, &the_bus, &err), 0, "bus_open: %s", err.reason);
    bus_set_node(the_bus, "a");
    cr_assert_eq(bus_remote_known(the_bus, "bob@b", true), 0);
}

static void setup(void)
{
    unit_setup();
    unit_path(store_dir, "store");
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(64) << 20,
                              .lease_s = 10, .max_deliver = 2, .dedupe_window_s = 120,
                              .inbox_capacity = 1000};
    open_bus();
}

static void teardown(void)
{
    if (the_bus)
        bus_close(the_bus);
    the_bus = NULL;
    unit_teardown();
}

static void reopen(void)
{
    bus_close(the_bus);
    the_bus = NULL;
    open_bus();
}

static uint64_t agent(const char *name)
{
    struct bus_agent_info a;
    struct bus_error err = {0};
    if (bus_agent_by_name(the_bus, name, &a) == 0)
        return a.id;
    cr_assert_eq(bus_agent_create(the_bus, name, OWNER, OWNER, &a, &err), 0, "%s", err.reason);
    return a.id;
}

/* One `send` record from alice; the errno (0 on success) and the queued numbers. */
static int send_record(const char *rec, struct bus_sent *sent, struct bus_error *err)
{
    struct buf pending;
    unsigned delivered = 0;
    buf_init(&pending);
    int rc = bus_send_write_ex(the_bus, agent("alice"), OWNER, &pending, rec, strlen(rec),
                               &delivered, sent, err);
    buf_free(&pending);
    return rc;
}

/* Claims the next queued message; returns its envelope, parsed. */
static json_t *claim_outgoing(struct bus_outgoing *out)
{
    cr_assert_eq(bus_outgoing_claim(the_bus, 5, out), 0, "a message is queued");
    json_t *env = json_loadb(out->m->envelope, out->m->len, 0, NULL);
    cr_assert_not_null(env);
    return env;
}

REMOTE_TEST(a_send_to_a_remote_agent_is_queued_until_it_is_stored_there)
{
    struct bus_sent sent = {0};
    struct bus_error err = {0};
    cr_assert_eq(send_record("{\"to\":\"bob@b\",\"payload\":{\"n\":1}}", &sent, &err), 0, "%s",
                 err.reason);
    cr_assert_eq(sent.n, 1);
    cr_assert(bus_outgoing_queued(the_bus, sent.remote[0]));
    cr_assert_eq(bus_outgoing_depth(the_bus), 1);

    /* Queued messages survive a restart; a lease lost with it ends and comes back. */
    reopen();
    struct bus_outgoing out = {0};
    json_t *env = claim_outgoing(&out);
    cr_assert_eq(out.number, sent.remote[0]);
    cr_assert_str_eq(out.node, "b");
    cr_assert_str_eq(out.agent, "bob");
    cr_assert_str_eq(json_string_value(json_object_get(env, "to")), "bob@b");
    cr_assert_str_eq(json_string_value(json_object_get(env, "from")), "alice");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(env, "payload"), "n")), 1);
    json_decref(env);
    struct bus_outgoing none;
    cr_assert_eq(bus_outgoing_claim(the_bus, 5, &none), -EAGAIN, "one lease at a time");

    /* Not published: queued again (never a dead letter, whatever --max-deliver says). */
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(bus_outgoing_retry(the_bus, out.number, out.token, 0), 0);
        bus_outgoing_release(&out);
        json_decref(claim_outgoing(&out));
    }
    cr_assert_eq(bus_outgoing_done(the_bus, out.number, out.token - 1), -ESTALE);
    cr_assert_eq(bus_outgoing_done(the_bus, out.number, out.token), 0);
    bus_outgoing_release(&out);
    cr_assert_not(bus_outgoing_queued(the_bus, sent.remote[0]));
    cr_assert_eq(bus_outgoing_depth(the_bus), 0);
    reopen();
    cr_assert_eq(bus_outgoing_depth(the_bus), 0, "stored there: gone for good");
    free(sent.remote);
}

REMOTE_TEST(unknown_remote_agents_and_a_bus_outside_a_cluster_give_enoent)
{
    struct bus_sent sent = {0};
    struct bus_error err = {0};
    cr_assert_eq(send_record("{\"to\":\"carol@b\",\"payload\":1}", &sent, &err), -ENOENT);
    cr_assert(strstr(err.reason, "carol@b"), "%s", err.reason);
    cr_assert_eq(send_record("{\"to\":\"bob@a\",\"payload\":1}", &sent, &err), -ENOENT,
                 "this node's own name is not remote");
    cr_assert_eq(send_record("{\"to\":\"bob@\",\"payload\":1}", &sent, &err), -EINVAL);
    cr_assert_eq(bus_remote_known(the_bus, "bob@b", false), 0);
    cr_assert_eq(send_record("{\"to\":\"bob@b\",\"payload\":1}", &sent, &err), -ENOENT,
                 "forgotten");
    bus_set_node(the_bus, "");
    cr_assert_eq(bus_remote_known(the_bus, "bob@b", true), 0);
    cr_assert_eq(send_record("{\"to\":\"bob@b\",\"payload\":1}", &sent, &err), -ENOENT);
    cr_assert(strstr(err.reason, "cluster"), "%s", err.reason);
    cr_assert_eq(bus_outgoing_depth(the_bus), 0);
    free(sent.remote);
}

REMOTE_TEST(a_cancelled_send_leaves_the_queue_and_one_being_published_stays)
{
    struct bus_sent sent = {0};
    struct bus_error err = {0};
    cr_assert_eq(send_record("{\"to\":\"bob@b\",\"payload\":1}\n{\"to\":\"bob@b\",\"payload\":2}",
                             &sent, &err), 0, "%s", err.reason);
    cr_assert_eq(sent.n, 2);
    struct bus_outgoing out = {0};
    json_decref(claim_outgoing(&out));
    cr_assert_eq(bus_outgoing_cancel(the_bus, sent.remote[0]), -EBUSY);
    cr_assert_eq(bus_outgoing_cancel(the_bus, sent.remote[1]), 0);
    cr_assert_eq(bus_outgoing_cancel(the_bus, sent.remote[1]), -ENOENT);
    cr_assert_eq(bus_outgoing_done(the_bus, out.number, out.token), 0);
    bus_outgoing_release(&out);
    cr_assert_eq(bus_outgoing_depth(the_bus), 0);
    free(sent.remote);
}

static const char ENVELOPE[] =
    "{\"version\":1,\"msg_id\":\"MSG-20261207-120000-0badcafe-00000000000000000007\","
    "\"from\":\"alice\",\"to\":\"bob@a\",\"timestamp\":\"2026-12-07T12:00:00.000001Z\","
    "\"sequence\":7,\"type\":\"task\",\"payload\":{\"x\":1.50},\"requires_ack\":true,"
    "\"priority\":\"normal\",\"correlation_id\":\"c-1\"}\n";

/* The envelopes of an agent's inbox, parsed, in order. */
static int collect(void *ctx, const struct bus_message *m)
{
    json_array_append_new(ctx, json_loadb(m->envelope, m->len, 0, NULL));
    return 0;
}

static json_t *inbox_of(const char *name)
{
    json_t *list = json_array();
    bus_inbox_list(the_bus, agent(name), 0, collect, list);
    return list;
}

REMOTE_TEST(a_fetched_message_is_delivered_once_and_its_ack_goes_back)
{
    agent("bob");
    struct bus_error err = {0};
    cr_assert_eq(bus_remote_receive(the_bus, "bob", "b", ENVELOPE, sizeof ENVELOPE - 1, 0, &err), 0,
                 "%s", err.reason);
    cr_assert_eq(bus_remote_receive(the_bus, "bob", "b", ENVELOPE, sizeof ENVELOPE - 1, 0, &err), 1,
                 "the same msg_id again is not delivered again");
    reopen();
    cr_assert_eq(bus_remote_receive(the_bus, "bob", "b", ENVELOPE, sizeof ENVELOPE - 1, 0, &err), 1,
                 "... also after a restart");
    json_t *in = inbox_of("bob");
    cr_assert_eq(json_array_size(in), 1);
    json_t *m = json_array_get(in, 0);
    cr_assert_str_eq(json_string_value(json_object_get(m, "msg_id")),
                     "MSG-20261207-120000-0badcafe-00000000000000000007", "the msg_id is kept");
    cr_assert_str_eq(json_string_value(json_object_get(m, "from")), "alice@b");
    cr_assert_str_eq(json_string_value(json_object_get(m, "to")), "bob");
    cr_assert_str_eq(json_string_value(json_object_get(m, "timestamp")),
                     "2026-12-07T12:00:00.000001Z");
    cr_assert_eq(json_integer_value(json_object_get(m, "sequence")), 1, "this pair's first");
    cr_assert_str_eq(json_string_value(json_object_get(m, "type")), "task");
    cr_assert_str_eq(json_string_value(json_object_get(m, "correlation_id")), "c-1");
    cr_assert(json_is_true(json_object_get(m, "requires_ack")));
    json_decref(in);

    /* bob consumes it: the ack is queued for node b, to alice@b. */
    uint64_t number = 0;
    struct bus_agent_info bob;
    cr_assert_eq(bus_agent_by_name(the_bus, "bob", &bob), 0);
    struct bus_message *msg = NULL;
    bool draining;
    cr_assert_eq(bus_next_peek(the_bus, bob.id, &msg, &draining), 0);
    number = msg->number;
    message_unref(msg);
    cr_assert_eq(bus_ack(the_bus, bob.id, number, NULL, OWNER, &err), 0, "%s", err.reason);
    struct bus_outgoing out = {0};
    json_t *ack = claim_outgoing(&out);
    cr_assert_str_eq(out.node, "b");
    cr_assert_str_eq(out.agent, "alice");
    cr_assert_str_eq(json_string_value(json_object_get(ack, "type")), "ack");
    cr_assert_str_eq(json_string_value(json_object_get(ack, "to")), "alice@b");
    cr_assert_str_eq(json_string_value(json_object_get(ack, "from")), "bob");
    json_decref(ack);
    bus_outgoing_release(&out);
}

REMOTE_TEST(a_message_for_no_such_agent_queues_undeliverable_once)
{
    struct bus_error err = {0};
    cr_assert_eq(bus_remote_receive(the_bus, "nobody", "b", ENVELOPE, sizeof ENVELOPE - 1, 0, &err),
                 -ENOENT);
    cr_assert_eq(bus_remote_receive(the_bus, "nobody", "b", ENVELOPE, sizeof ENVELOPE - 1, 0, &err),
                 1, "fetched again: the reply is not sent twice");
    cr_assert_eq(bus_outgoing_depth(the_bus), 1);
    struct bus_outgoing out = {0};
    json_t *u = claim_outgoing(&out);
    cr_assert_str_eq(json_string_value(json_object_get(u, "type")), "undeliverable");
    cr_assert_str_eq(json_string_value(json_object_get(u, "to")), "alice@b");
    cr_assert_str_eq(json_string_value(json_object_get(u, "from")), "nobody");
    json_t *p = json_object_get(u, "payload");
    cr_assert_str_eq(json_string_value(json_object_get(p, "msg_id")),
                     "MSG-20261207-120000-0badcafe-00000000000000000007");
    cr_assert(strstr(json_string_value(json_object_get(p, "reason")), "nobody"));
    json_decref(u);
    bus_outgoing_release(&out);

    static const char *const bad[] = {
        "not json", "{}", "{\"msg_id\":\"x\"}",
        ("{\"msg_id\":\"MSG-1\",\"from\":\"a b\",\"timestamp\":\"2026-12-07T12:00:00Z\","
         "\"type\":\"t\",\"payload\":1,\"requires_ack\":false}"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(bus_remote_receive(the_bus, "bob", "b", bad[i], strlen(bad[i]), 0, &err),
                     -EINVAL, "%s", bad[i]);
}

REMOTE_TEST(a_full_inbox_delays_a_fetched_message)
{
    cfg.inbox_capacity = 1;
    reopen();
    agent("bob");
    struct bus_error err = {0};
    cr_assert_eq(bus_remote_receive(the_bus, "bob", "b", ENVELOPE, sizeof ENVELOPE - 1, 0, &err), 0);
    char other[sizeof ENVELOPE];
    memcpy(other, ENVELOPE, sizeof ENVELOPE);
    memcpy(strstr(other, "0007\""), "0008", 4);
    cr_assert_eq(bus_remote_receive(the_bus, "bob", "b", other, strlen(other), 0, &err), -EAGAIN);
    cr_assert_eq(bus_remote_receive(the_bus, "bob", "b", other, strlen(other), 0, &err), -EAGAIN,
                 "not remembered: it is delivered once there is room");
}

REMOTE_TEST(a_gateway_is_no_agent_to_find_remove_or_report_for)
{
    struct bus_sent sent = {0};
    struct bus_error err = {0};
    cr_assert_eq(send_record("{\"to\":\"bob@b\",\"payload\":1}", &sent, &err), 0, "%s", err.reason);
    struct bus_agent_info info;
    cr_assert_eq(bus_agent_by_name(the_bus, "bob@b", &info), -ENOENT);
    cr_assert_eq(bus_agent_by_name(the_bus, "@b", &info), -ENOENT);
    cr_assert_eq(bus_agent_remove(the_bus, "@b", 0, &err), -ENOENT);
    cr_assert_eq(bus_agent_remove(the_bus, "bob@b", 0, &err), -ENOENT);
    cr_assert_eq(bus_health_report(the_bus, (UINT64_C(1) << 60), 0, "{\"status\":\"healthy\"}",
                                   20, &err) < 0, true);
    cr_assert_eq(bus_outgoing_depth(the_bus), 1, "the queue is untouched");
    reopen();
    cr_assert_eq(bus_outgoing_depth(the_bus), 1);
    free(sent.remote);
}

static int collect_dead(void *ctx, const struct bus_message *m)
{
    json_array_append_new(ctx, json_loadb(m->envelope, m->len, 0, NULL));
    return 0;
}

REMOTE_TEST(a_queued_message_keeps_its_idempotency_key_and_ttl_through_restarts)
{
    struct bus_sent sent = {0};
    struct bus_error err = {0};
    int64_t t0 = bus_clock_now_us();
    cr_assert_eq(send_record("{\"to\":\"bob@b\",\"payload\":1,\"idempotency_key\":\"job 7\\n\","
                             "\"ttl_s\":60}\n{\"to\":\"bob@b\",\"payload\":2}", &sent, &err),
                 0, "%s", err.reason);
    cr_assert_eq(sent.n, 2);
    for (int round = 0; round < 3; round++) {
        /* 0: as sent; 1: replayed from the journal; 2: from a snapshot. */
        struct bus_outgoing out = {0}, out2 = {0};
        json_decref(claim_outgoing(&out));
        cr_assert_str_eq(out.m->idem_key, "job 7\n", "round %d", round);
        cr_assert(out.m->expires_us >= t0 + 60000000 && out.m->expires_us < t0 + 70000000,
                  "round %d: the ttl's end is kept", round);
        json_decref(claim_outgoing(&out2));
        cr_assert_null(out2.m->idem_key);
        cr_assert_eq(out2.m->expires_us, 0);
        cr_assert_eq(bus_outgoing_retry(the_bus, out.number, out.token, 0), 0);
        cr_assert_eq(bus_outgoing_retry(the_bus, out2.number, out2.token, 0), 0);
        bus_outgoing_release(&out);
        bus_outgoing_release(&out2);
        if (round == 1)
            cr_assert_eq(bus_compact(the_bus), 0);
        reopen();
    }
    free(sent.remote);
}

REMOTE_TEST(a_fetched_message_past_its_ttl_becomes_a_dead_letter_here)
{
    agent("bob");
    struct bus_error err = {0};
    cr_assert_eq(bus_remote_receive(the_bus, "bob", "b", ENVELOPE, sizeof ENVELOPE - 1,
                                    bus_clock_now_us() - 1000, &err), 0, "%s", err.reason);
    bus_tick_second(the_bus);
    json_t *in = inbox_of("bob");
    cr_assert_eq(json_array_size(in), 0, "not pending");
    json_decref(in);
    json_t *dead = json_array();
    bus_place_list(the_bus, agent("bob"), BUS_DEAD, 0, collect_dead, dead);
    cr_assert_eq(json_array_size(dead), 1, "in dead/");
    json_decref(dead);
    uint64_t number = 0;
    cr_assert(bus_message_holder(the_bus, 1, BUS_DEAD) == agent("bob"), "number 1 is bob's");
    number = 1;
    struct buf text;
    buf_init(&text);
    cr_assert_eq(bus_place_render(the_bus, agent("bob"), BUS_DEAD, number, &text), 0);
    buf_putc(&text, '\0');
    cr_assert(strstr(text.data, "\"expired\""), "%s", text.data);
    buf_free(&text);
}

REMOTE_TEST(messages_from_another_node_consumed_here_give_their_space_back)
{
    /* A store filled by messages from node b, then emptied by bob: the next ones from
     * b, and local sends, are taken again (they waited behind ENOSPC for good). */
    bus_close(the_bus);
    the_bus = NULL;
    cfg.store_max_bytes = 256 * 1024;
    open_bus();
    uint64_t bob = agent("bob");
    agent("carol");
    enum { BODY = 12000 };
    struct buf env;
    buf_init(&env);
    struct bus_error err = {0};
    int got = 0, rc = 0;
    for (int i = 1; i <= 60 && rc >= 0; i++) {
        buf_reset(&env);
        buf_printf(&env, "{\"version\":1,\"msg_id\":\"MSG-20261207-120000-0badcafe-%020d\","
                   "\"from\":\"alice\",\"to\":\"bob@a\",\"timestamp\":\"2026-12-07T12:00:00.000001Z\","
                   "\"sequence\":%d,\"type\":\"text\",\"payload\":\"", i, i);
        for (int k = 0; k < BODY; k++)
            buf_puts(&env, "y");
        buf_puts(&env, "\",\"requires_ack\":false,\"priority\":\"normal\"}\n");
        cr_assert(buf_ok(&env));
        rc = bus_remote_receive(the_bus, "bob", "b", env.data, env.len, 0, &err);
        if (rc >= 0)
            got++;
    }
    cr_assert_eq(rc, -ENOSPC, "%s", err.reason);
    cr_assert_gt(got, 5);
    for (int i = 0; i < got; i++) {
        struct bus_message *msg = NULL;
        bool draining;
        cr_assert_eq(bus_next_peek(the_bus, bob, &msg, &draining), 0);
        uint64_t number = msg->number;
        message_unref(msg);
        cr_assert_eq(bus_ack(the_bus, bob, number, NULL, OWNER, &err), 0, "%s", err.reason);
    }
    rc = bus_remote_receive(the_bus, "bob", "b", env.data, env.len, 0, &err);
    cr_assert_eq(rc, 0, "the next message from b once bob consumed the rest: %s", err.reason);
    buf_free(&env);
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_leq(st.store_bytes, 256 * 1024);
}
