/*
 * test_lease.c — core/lease.c and core/ctl.c: claims, fencing tokens, ack/extend/nak,
 * expiry and redelivery, --max-deliver and dead letters, retry, ttl, and that all of
 * it survives a clean restart (a snapshot) and a kill -9 (the journal) (SPEC §10).
 *
 * The one thing a reader must know: time is the fake clock of unit.h, and expiry runs
 * only when a test calls bus_tick_second(), as the server's ticker does every second.
 * A kill -9 is a child that opens the store, works and _exit()s without closing.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "busfs/buf.h"
#include "busfs/bus.h"
#include "busfs/clock.h"
#include "busfs/message.h"
#include "failalloc.h"
#include "unit.h"

#define LEASE_TEST(name) \
    Test(lease, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

#define OWNER 1000
#define OTHER 2000
#define SEC INT64_C(1000000)

static struct bus *the_bus;
static struct bus_config cfg;
static char store_dir[PATH_MAX];

static void setup(void)
{
    unit_setup();
    unit_path(store_dir, "store");
}

static void teardown(void)
{
    if (the_bus)
        bus_close(the_bus);
    the_bus = NULL;
    unit_teardown();
}

static void open_bus(void)
{
    struct bus_error err = {0};
    int rc = bus_open(&cfg, &the_bus, &err);
    cr_assert_eq(rc, 0, "bus_open: %s", err.reason);
}

/* A bus with a 10 s lease, max_deliver as given (0: the default 5). */
static void start(uint32_t max_deliver, double message_ttl_s)
{
    cfg = (struct bus_config){
        .store_dir = store_dir,
        .store_max_bytes = UINT64_C(64) << 20,
        .lease_s = 10,
        .max_deliver = max_deliver,
        .message_ttl_s = message_ttl_s,
    };
    open_bus();
}

static void reopen(void)
{
    bus_close(the_bus);
    the_bus = NULL;
    open_bus();
}

static uint64_t id_of(const char *name)
{
    struct bus_agent_info a;
    cr_assert_eq(bus_agent_by_name(the_bus, name, &a), 0, "no agent %s", name);
    return a.id;
}

static struct bus_agent_info info(const char *name)
{
    struct bus_agent_info a;
    cr_assert_eq(bus_agent_by_name(the_bus, name, &a), 0, "no agent %s", name);
    return a;
}

static void agents(void)
{
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_create(the_bus, "alice", OWNER, OWNER, NULL, &err), 0);
    cr_assert_eq(bus_agent_create(the_bus, "bob", OWNER, OWNER, NULL, &err), 0);
}

/* Sends one `send` record from alice: the JSON fields after "to":"bob". */
static void send_record(const char *fields)
{
    char rec[512];
    struct buf pending;
    struct bus_error err = {0};
    unsigned delivered = 0;
    buf_init(&pending);
    snprintf(rec, sizeof rec, "{\"to\":\"bob\",%s}\n", fields);
    int rc = bus_send_write(the_bus, id_of("alice"), OWNER, &pending, rec, strlen(rec),
                            &delivered, &err);
    cr_assert_eq(rc, 0, "send %s: %s", rec, err.reason);
    cr_assert_eq(delivered, 1);
    buf_free(&pending);
}

static void send_task(int n)
{
    char fields[64];
    snprintf(fields, sizeof fields, "\"payload\":{\"task\":%d}", n);
    send_record(fields);
}

/* A claim's document, parsed. */
struct claim {
    json_t *doc;
    uint64_t number;
    char msg_id[BUS_MSG_ID_LEN + 1];
    uint64_t token;
    uint32_t delivery;
    int task;
};

static int try_claim(struct claim *c, bool *draining)
{
    struct buf out;
    struct bus_error err = {0};
    buf_init(&out);
    memset(c, 0, sizeof *c);
    int rc = bus_claim(the_bus, id_of("bob"), OWNER, &out, draining, &err);
    if (rc == 0) {
        c->doc = json_loadb(out.data, out.len, 0, NULL);
        cr_assert_not_null(c->doc, "a claim is one JSON object: %.*s", (int)out.len, out.data);
        cr_assert_eq(out.data[out.len - 1], '\n');
        json_t *lease = json_object_get(c->doc, "lease");
        cr_assert(json_is_object(lease), "no lease in %.*s", (int)out.len, out.data);
        c->token = (uint64_t)json_integer_value(json_object_get(lease, "token"));
        c->delivery = (uint32_t)json_integer_value(json_object_get(lease, "delivery"));
        snprintf(c->msg_id, sizeof c->msg_id, "%s",
                 json_string_value(json_object_get(c->doc, "msg_id")));
        c->number = message_id_number(c->msg_id);
        c->task = (int)json_integer_value(
            json_object_get(json_object_get(c->doc, "payload"), "task"));
        const char *file = json_string_value(json_object_get(lease, "file"));
        cr_assert(file && strncmp(file, "inflight/", 9) == 0, "file: %s", file);
        char id[BUS_MSG_ID_LEN + 1];
        uint64_t token = 0;
        cr_assert_eq(lease_parse_file_name(file + 9, id, &token), c->number, "%s", file);
        cr_assert_eq(token, c->token);
        cr_assert_str_eq(id, c->msg_id);
    }
    buf_free(&out);
    return rc;
}

static struct claim claim_ok(void)
{
    struct claim c;
    bool draining;
    int rc = try_claim(&c, &draining);
    cr_assert_eq(rc, 0, "claim: %d", rc);
    return c;
}

static void claim_free(struct claim *c) { json_decref(c->doc); }

/* The task numbers of bob's inbox, oldest first, as text ("1 2 3"). */
static int add_task(void *ctx, const struct bus_message *m)
{
    struct buf *b = ctx;
    const char *t = strstr(m->envelope, "\"task\":");
    buf_printf(b, "%s%d", b->len ? " " : "", t ? atoi(t + 7) : -1);
    return 0;
}

static void assert_place(enum bus_place place, const char *want)
{
    struct buf b;
    buf_init(&b);
    bus_place_list(the_bus, id_of("bob"), place, 0, add_task, &b);
    cr_assert_str_eq(b.len ? b.data : "", want, "place %d holds [%s], not [%s]", (int)place,
                     b.len ? b.data : "", want);
    buf_free(&b);
}

static void tick_at(int64_t us)
{
    unit_clock_set(us);
    bus_tick_second(the_bus);
}

static json_t *ctl_doc(void)
{
    struct buf b;
    buf_init(&b);
    cr_assert_eq(bus_ctl_render(the_bus, id_of("bob"), &b), 0);
    json_t *v = json_loadb(b.data, b.len, 0, NULL);
    cr_assert_not_null(v);
    buf_free(&b);
    return v;
}

static json_int_t ctl_int(const char *key)
{
    json_t *v = ctl_doc();
    json_int_t n = json_integer_value(json_object_get(v, key));
    json_decref(v);
    return n;
}

static int ctl(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static struct bus_error last_err;
static int ctl(const char *fmt, ...)
{
    char cmd[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    memset(&last_err, 0, sizeof last_err);
    return bus_ctl(the_bus, id_of("bob"), OWNER, cmd, strlen(cmd), &last_err);
}

/* ---------- claims ---------- */

LEASE_TEST(a_claim_leases_the_oldest_and_takes_it_out_of_the_inbox_and_next)
{
    start(0, 0);
    agents();
    send_task(1);
    send_task(2);
    struct claim c = claim_ok();
    cr_assert_eq(c.task, 1);
    cr_assert_eq(c.delivery, 1);
    cr_assert_gt(c.token, 0);
    assert_place(BUS_INBOX, "2");
    assert_place(BUS_INFLIGHT, "1");
    struct bus_message *m = NULL;
    bool draining;
    cr_assert_eq(bus_next_peek(the_bus, id_of("bob"), &m, &draining), 0);
    cr_assert_not_null(strstr(m->envelope, "\"task\":2"), "next shows the leased message");
    message_unref(m);
    cr_assert_eq(info("bob").depth, 1);
    cr_assert_eq(info("bob").leased, 1);
    /* The deadline is now + --lease. */
    char want[BUS_TIME_LEN + 1];
    const char *got = json_string_value(json_object_get(json_object_get(c.doc, "lease"),
                                                        "deadline"));
    int64_t deadline;
    cr_assert(got && bus_time_parse(got, &deadline));
    bus_time_format(UNIT_T0_US + 10 * SEC, want);
    cr_assert(deadline >= UNIT_T0_US + 10 * SEC && deadline < UNIT_T0_US + 11 * SEC, "%s", got);
    /* A second claim takes the next one under a larger token. */
    struct claim d = claim_ok();
    cr_assert_eq(d.task, 2);
    cr_assert_gt(d.token, c.token);
    claim_free(&c);
    claim_free(&d);
}

LEASE_TEST(an_empty_claim_is_eagain_and_says_whether_the_agent_drains)
{
    start(0, 0);
    agents();
    struct claim c;
    bool draining = true;
    cr_assert_eq(try_claim(&c, &draining), -EAGAIN);
    cr_assert(!draining);
    cr_assert(!bus_claim_ready(the_bus, id_of("bob"), &draining));
    cr_assert_eq(ctl("drain"), 0);
    cr_assert_eq(try_claim(&c, &draining), -EAGAIN);
    cr_assert(draining);
}

LEASE_TEST(a_draining_claimer_waits_while_a_lease_or_a_delayed_message_may_come_back)
{
    start(0, 0);
    agents();
    send_task(1);
    struct claim c = claim_ok();
    cr_assert_eq(ctl("drain"), 0);
    struct claim none;
    bool draining = true;
    cr_assert_eq(try_claim(&none, &draining), -EAGAIN);
    cr_assert(!draining, "a lease is out: it may come back");
    cr_assert_eq(ctl("nak %s %" PRIu64 " 5", c.msg_id, c.token), 0);
    cr_assert_eq(try_claim(&none, &draining), -EAGAIN);
    cr_assert(!draining, "a delayed message is pending");
    tick_at(UNIT_T0_US + 6 * SEC);
    struct claim again = claim_ok();
    cr_assert_eq(ctl("ack %s %" PRIu64, again.msg_id, again.token), 0);
    cr_assert_eq(try_claim(&none, &draining), -EAGAIN);
    cr_assert(draining, "drained and empty: the claimer ends");
    claim_free(&c);
    claim_free(&again);
}

LEASE_TEST(only_the_owner_or_root_may_claim)
{
    start(0, 0);
    agents();
    send_task(1);
    struct buf out;
    struct bus_error err = {0};
    bool draining;
    buf_init(&out);
    cr_assert_eq(bus_claim(the_bus, id_of("bob"), OTHER, &out, &draining, &err), -EACCES);
    cr_assert_eq(out.len, 0);
    cr_assert_eq(bus_claim(the_bus, id_of("bob"), 0, &out, &draining, &err), 0);
    buf_free(&out);
}

/* ---------- ack, extend, nak ---------- */

LEASE_TEST(an_ack_with_the_token_consumes_and_a_wrong_token_is_estale)
{
    start(0, 0);
    agents();
    send_task(1);
    struct claim c = claim_ok();
    cr_assert_eq(ctl("ack %s %" PRIu64, c.msg_id, c.token + 1), -ESTALE);
    cr_assert_eq(last_err.code, ESTALE);
    cr_assert_eq(ctl("ack %s", c.msg_id), -ESTALE, "a v1 ack of a leased message");
    cr_assert_eq(info("bob").leased, 1, "a refused ack changed nothing");
    cr_assert_eq(ctl("ack %s %" PRIu64, c.msg_id, c.token), 0, "%s", last_err.reason);
    cr_assert_eq(info("bob").leased, 0);
    cr_assert_eq(info("bob").acked_total, 1);
    cr_assert_eq(ctl("ack %s %" PRIu64, c.msg_id, c.token), -ENOENT, "acked twice");
    claim_free(&c);
}

LEASE_TEST(a_late_workers_ack_after_its_lease_was_granted_again_is_estale)
{
    start(0, 0);
    agents();
    send_task(1);
    struct claim first = claim_ok();
    tick_at(UNIT_T0_US + 11 * SEC);
    assert_place(BUS_INBOX, "1");
    struct claim second = claim_ok();
    cr_assert_eq(second.delivery, 2);
    cr_assert_gt(second.token, first.token);
    cr_assert_eq(ctl("ack %s %" PRIu64, first.msg_id, first.token), -ESTALE);
    cr_assert_eq(ctl("extend %s %" PRIu64, first.msg_id, first.token), -ESTALE);
    cr_assert_eq(ctl("nak %s %" PRIu64, first.msg_id, first.token), -ESTALE);
    assert_place(BUS_INFLIGHT, "1");
    cr_assert_eq(ctl("ack %s %" PRIu64, second.msg_id, second.token), 0);
    cr_assert_eq(ctl_int("redelivered_total"), 1);
    claim_free(&first);
    claim_free(&second);
}

LEASE_TEST(an_expired_lease_puts_the_message_back_in_its_place)
{
    start(0, 0);
    agents();
    for (int i = 1; i <= 3; i++)
        send_task(i);
    struct claim c = claim_ok();
    tick_at(UNIT_T0_US + 9 * SEC);
    assert_place(BUS_INFLIGHT, "1");
    tick_at(UNIT_T0_US + 10 * SEC + SEC / 2);
    assert_place(BUS_INBOX, "1 2 3");
    assert_place(BUS_INFLIGHT, "");
    cr_assert_eq(info("bob").redelivered_total, 1);
    claim_free(&c);
}

LEASE_TEST(extend_moves_the_deadline_and_the_old_one_ends_nothing)
{
    start(0, 0);
    agents();
    send_task(1);
    struct claim c = claim_ok();
    unit_clock_set(UNIT_T0_US + 8 * SEC);
    cr_assert_eq(ctl("extend %s %" PRIu64 " 30", c.msg_id, c.token), 0, "%s", last_err.reason);
    tick_at(UNIT_T0_US + 20 * SEC);
    assert_place(BUS_INFLIGHT, "1");
    /* touch: --lease (10 s) from now. */
    unit_clock_set(UNIT_T0_US + 35 * SEC);
    cr_assert_eq(bus_lease_touch(the_bus, c.token, OWNER, &last_err), 0);
    tick_at(UNIT_T0_US + 44 * SEC);
    assert_place(BUS_INFLIGHT, "1");
    tick_at(UNIT_T0_US + 46 * SEC);
    assert_place(BUS_INBOX, "1");
    cr_assert_eq(ctl("extend %s %" PRIu64 " 0", c.msg_id, c.token), -EINVAL);
    claim_free(&c);
}

LEASE_TEST(nak_gives_it_back_at_once_or_after_its_delay)
{
    start(0, 0);
    agents();
    send_task(1);
    send_task(2);
    struct claim c = claim_ok();
    cr_assert_eq(ctl("nak %s %" PRIu64, c.msg_id, c.token), 0);
    assert_place(BUS_INBOX, "1 2");
    claim_free(&c);
    c = claim_ok();
    cr_assert_eq(c.task, 1);
    cr_assert_eq(c.delivery, 2);
    cr_assert_eq(ctl("nak %s %" PRIu64 " 5", c.msg_id, c.token), 0);
    claim_free(&c);
    /* Task 1 waits 5 s; task 2 is claimable meanwhile. */
    c = claim_ok();
    cr_assert_eq(c.task, 2);
    bool draining;
    struct claim none;
    cr_assert_eq(try_claim(&none, &draining), -EAGAIN);
    cr_assert(!bus_claim_ready(the_bus, id_of("bob"), &draining));
    tick_at(UNIT_T0_US + 5 * SEC + 100);
    cr_assert(bus_claim_ready(the_bus, id_of("bob"), &draining));
    struct claim later = claim_ok();
    cr_assert_eq(later.task, 1);
    cr_assert_eq(later.delivery, 3);
    cr_assert_eq(ctl("nak %s %" PRIu64 " -1", later.msg_id, later.token), -EINVAL);
    cr_assert_eq(ctl("nak %s %" PRIu64 " 9999999", later.msg_id, later.token), -EINVAL);
    claim_free(&c);
    claim_free(&later);
}

LEASE_TEST(ctl_refuses_malformed_lease_commands_with_einval)
{
    start(0, 0);
    agents();
    send_task(1);
    struct claim c = claim_ok();
    /* A verb and what follows the msg_id ("-" for no msg_id at all). */
    const char *bad[][2] = {{"extend", "-"}, {"nak", "-"}, {"ack", "-"}, {"retry", "-"},
                            {"extend", ""}, {"nak", ""}, {"ack", " x"}, {"ack", " 0"},
                            {"ack", " -3"}, {"extend", " 1 x"}, {"retry", " 1"},
                            {"ack", " 1 2"}, {"nak", " 1 2 3"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cmd[200];
        if (strcmp(bad[i][1], "-") == 0)
            snprintf(cmd, sizeof cmd, "%s", bad[i][0]);
        else
            snprintf(cmd, sizeof cmd, "%s %s%s", bad[i][0], c.msg_id, bad[i][1]);
        cr_assert_eq(ctl("%s", cmd), -EINVAL, "%s: %s", cmd, last_err.reason);
    }
    assert_place(BUS_INFLIGHT, "1");
    claim_free(&c);
}

/* ---------- dead letters ---------- */

LEASE_TEST(the_max_deliver_th_lease_that_ends_makes_a_dead_letter_and_retry_undoes_it)
{
    start(2, 0);
    agents();
    send_task(1);
    struct claim c = claim_ok();
    tick_at(UNIT_T0_US + 11 * SEC);
    claim_free(&c);
    c = claim_ok();
    cr_assert_eq(c.delivery, 2);
    tick_at(UNIT_T0_US + 22 * SEC);
    assert_place(BUS_INBOX, "");
    assert_place(BUS_DEAD, "1");
    cr_assert_eq(info("bob").dead, 1);
    struct buf doc;
    buf_init(&doc);
    cr_assert_eq(bus_place_render(the_bus, id_of("bob"), BUS_DEAD, c.number, &doc), 0);
    json_t *v = json_loadb(doc.data, doc.len, 0, NULL);
    cr_assert_not_null(v, "%s", doc.data);
    json_t *dead = json_object_get(v, "dead");
    cr_assert_str_eq(json_string_value(json_object_get(dead, "reason")), "max_deliver");
    cr_assert_eq(json_integer_value(json_object_get(dead, "deliveries")), 2);
    json_decref(v);
    buf_free(&doc);
    /* A nak of the last delivery makes it dead too. */
    cr_assert_eq(ctl("retry %s", c.msg_id), 0, "%s", last_err.reason);
    assert_place(BUS_INBOX, "1");
    struct claim again = claim_ok();
    cr_assert_eq(again.delivery, 1, "retry resets the deliveries");
    cr_assert_eq(ctl("nak %s %" PRIu64, again.msg_id, again.token), 0);
    claim_free(&again);
    again = claim_ok();
    cr_assert_eq(ctl("nak %s %" PRIu64, again.msg_id, again.token), 0);
    assert_place(BUS_DEAD, "1");
    cr_assert_eq(ctl("retry %s", again.msg_id), 0);
    cr_assert_eq(ctl("retry %s", again.msg_id), -ENOENT, "retried twice");
    claim_free(&again);
    claim_free(&c);
}

LEASE_TEST(a_full_dead_box_discards_its_oldest_letter_and_logs_it)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(64) << 20,
                              .lease_s = 10, .max_deliver = 1, .inbox_capacity = 2};
    open_bus();
    agents();
    char first[BUS_MSG_ID_LEN + 1] = "";
    for (int i = 1; i <= 3; i++) {
        send_task(i);
        struct claim c = claim_ok();
        if (i == 1)
            memcpy(first, c.msg_id, sizeof first);
        cr_assert_eq(ctl("nak %s %" PRIu64, c.msg_id, c.token), 0);
        claim_free(&c);
    }
    assert_place(BUS_DEAD, "2 3");
    struct buf log;
    buf_init(&log);
    bus_errors_read(the_bus, 0, 0, 1 << 20, &log);
    cr_assert_not_null(strstr(log.data ? log.data : "", first), "the discard is logged: %s",
                       log.data);
    buf_free(&log);
    struct buf prom;
    buf_init(&prom);
    bus_prom_render(the_bus, &prom);
    cr_assert_not_null(strstr(prom.data, "busfs_dead_letters_total{reason=\"discarded\"} 1\n"),
                       "%s", prom.data);
    cr_assert_not_null(strstr(prom.data, "busfs_dead_letters_total{reason=\"max_deliver\"} 3\n"));
    buf_free(&prom);
}

LEASE_TEST(discard_removes_a_dead_letter_and_rmdir_waits_for_leases_and_letters)
{
    start(1, 0);
    agents();
    send_task(1);
    struct claim c = claim_ok();
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), -ENOTEMPTY);
    cr_assert_eq(ctl("nak %s %" PRIu64, c.msg_id, c.token), 0);
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), -ENOTEMPTY);
    cr_assert_not_null(strstr(err.reason, "dead"), "%s", err.reason);
    cr_assert_eq(bus_dead_discard(the_bus, id_of("bob"), c.number, c.msg_id, OTHER, &err),
                 -EACCES);
    cr_assert_eq(bus_dead_discard(the_bus, id_of("bob"), c.number, c.msg_id, OWNER, &err), 0);
    assert_place(BUS_DEAD, "");
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), 0, "%s", err.reason);
    claim_free(&c);
}

/* ---------- ttl ---------- */

LEASE_TEST(a_pending_message_past_its_ttl_is_a_dead_letter_and_a_leased_one_at_its_lease_end)
{
    start(0, 0);
    agents();
    send_record("\"payload\":{\"task\":1},\"ttl_s\":5");
    send_record("\"payload\":{\"task\":2},\"ttl_s\":3");
    send_task(3);
    struct claim c = claim_ok(); /* task 1, leased for 10 s */
    tick_at(UNIT_T0_US + 4 * SEC);
    assert_place(BUS_INBOX, "3");
    assert_place(BUS_DEAD, "2");
    tick_at(UNIT_T0_US + 6 * SEC);
    assert_place(BUS_INFLIGHT, "1");
    tick_at(UNIT_T0_US + 11 * SEC);
    assert_place(BUS_DEAD, "1 2");
    struct buf doc;
    buf_init(&doc);
    cr_assert_eq(bus_place_render(the_bus, id_of("bob"), BUS_DEAD, c.number, &doc), 0);
    cr_assert_not_null(strstr(doc.data, "\"reason\":\"expired\""), "%s", doc.data);
    buf_free(&doc);
    /* Retried on purpose, its ttl no longer applies. */
    cr_assert_eq(ctl("retry %s", c.msg_id), 0);
    tick_at(UNIT_T0_US + 30 * SEC);
    assert_place(BUS_INBOX, "1 3");
    claim_free(&c);
}

LEASE_TEST(message_ttl_is_the_default_and_a_claim_never_hands_out_an_expired_message)
{
    start(0, 2);
    agents();
    send_task(1);
    unit_clock_set(UNIT_T0_US + 3 * SEC);
    send_task(2);
    /* No tick yet: the claim itself sees task 1 expired. */
    struct claim c = claim_ok();
    cr_assert_eq(c.task, 2);
    assert_place(BUS_DEAD, "1");
    claim_free(&c);
}

LEASE_TEST(ttl_s_out_of_range_is_einval)
{
    start(0, 0);
    agents();
    const char *bad[] = {"0", "-1", "2678401", "1.5", "\"5\"", "true"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char rec[128];
        struct buf pending;
        struct bus_error err = {0};
        unsigned delivered = 0;
        buf_init(&pending);
        snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":1,\"ttl_s\":%s}", bad[i]);
        cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, rec, strlen(rec),
                                    &delivered, &err), -EINVAL, "%s", rec);
        buf_free(&pending);
    }
    assert_place(BUS_INBOX, "");
}

/* ---------- durability ---------- */

/* Leases, a nak's delay, dead letters and the token counter, as a restart sees them. */
static void make_state(void)
{
    for (int i = 1; i <= 4; i++)
        send_task(i);
    struct claim a = claim_ok(); /* 1: leased, stays */
    struct claim b = claim_ok(); /* 2: nak'd with a delay */
    cr_assert_eq(ctl("nak %s %" PRIu64 " 100", b.msg_id, b.token), 0);
    for (int i = 0; i < 2; i++) { /* 3: nak'd to death (--max-deliver 2) */
        struct claim d = claim_ok();
        cr_assert_eq(d.task, 3, "round %d claimed task %d (delivery %u)", i, d.task, d.delivery);
        cr_assert_eq(ctl("nak %s %" PRIu64, d.msg_id, d.token), 0);
        claim_free(&d);
    }
    claim_free(&a);
    claim_free(&b);
}

static void assert_state(void)
{
    assert_place(BUS_INFLIGHT, "1");
    assert_place(BUS_INBOX, "2 4");
    assert_place(BUS_DEAD, "3");
    cr_assert_eq(info("bob").leased, 1);
    cr_assert_eq(info("bob").dead, 1);
    cr_assert_eq(info("bob").redelivered_total, 2);
    /* Task 2 still waits for its delay; task 4 is next, under a larger token. */
    struct claim c = claim_ok();
    cr_assert_eq(c.task, 4);
    cr_assert_gt(c.token, 4);
    claim_free(&c);
    /* Task 1's lease still ends at its deadline, as does task 4's; task 2's delay too. */
    tick_at(UNIT_T0_US + 200 * SEC);
    assert_place(BUS_INBOX, "1 2 4");
    assert_place(BUS_INFLIGHT, "");
    c = claim_ok();
    cr_assert_eq(c.task, 1);
    claim_free(&c);
}

LEASE_TEST(a_clean_restart_keeps_leases_delays_dead_letters_and_tokens)
{
    start(2, 0);
    agents();
    make_state();
    reopen();
    assert_state();
}

static void crash_body(void)
{
    open_bus();
    agents();
    make_state();
    fflush(NULL);
    _exit(0);
}

LEASE_TEST(a_kill_9_keeps_leases_delays_dead_letters_and_tokens)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(64) << 20,
                              .lease_s = 10, .max_deliver = 2};
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        crash_body(); /* Criterion asserts in the child end it with a non-zero status */
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    open_bus();
    assert_state();
    struct buf report;
    buf_init(&report);
    bus_close(the_bus);
    the_bus = NULL;
    cr_assert_eq(bus_check_store(store_dir, &report), 0, "%s", report.data);
    buf_free(&report);
}

/* ---------- memory ---------- */

/* Every allocation of a claim fails in turn: the claim gives ENOMEM and nothing
 * changes, or it is whole. */
LEASE_TEST(a_claim_short_of_memory_changes_nothing)
{
    start(0, 0);
    agents();
    send_task(1);
    long run;
    for (run = 1; run < 200; run++) {
        struct buf out;
        struct bus_error err = {0};
        bool draining;
        buf_init(&out);
        failalloc_arm(run);
        int rc = bus_claim(the_bus, id_of("bob"), OWNER, &out, &draining, &err);
        bool fired = failalloc_disarm();
        buf_free(&out);
        if (rc == 0) {
            cr_assert_eq(info("bob").leased, 1);
            break;
        }
        cr_assert_eq(rc, -ENOMEM, "run %ld: %d %s", run, rc, err.reason);
        cr_assert_eq(info("bob").leased, 0, "run %ld", run);
        assert_place(BUS_INBOX, "1");
        cr_assert(fired);
    }
    cr_assert_gt(run, 1, "the claim made no allocation: the injection is not wired");
    reopen();
    cr_assert_eq(info("bob").leased, 1, "the claim that succeeded is in the store");
}

/* ---------- idempotent sends ---------- */

static unsigned send_raw(const char *text)
{
    struct buf pending;
    struct bus_error err = {0};
    unsigned delivered = 99;
    buf_init(&pending);
    int rc = bus_send_write(the_bus, id_of("alice"), OWNER, &pending, text, strlen(text),
                            &delivered, &err);
    cr_assert_eq(rc, 0, "send %s: %s", text, err.reason);
    buf_free(&pending);
    return delivered;
}

static uint64_t duplicates_total(void)
{
    struct buf prom;
    buf_init(&prom);
    bus_prom_render(the_bus, &prom);
    const char *p = strstr(prom.data, "\nbusfs_duplicates_total ");
    cr_assert_not_null(p, "%s", prom.data);
    uint64_t n = strtoull(p + strlen("\nbusfs_duplicates_total "), NULL, 10);
    buf_free(&prom);
    return n;
}

LEASE_TEST(a_key_seen_within_the_window_is_accepted_and_not_delivered_again)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(64) << 20,
                              .dedupe_window_s = 60};
    open_bus();
    agents();
    cr_assert_eq(send_raw("{\"to\":\"bob\",\"payload\":{\"task\":1},\"idempotency_key\":\"k1\"}"), 1);
    cr_assert_eq(send_raw("{\"to\":\"bob\",\"payload\":{\"task\":1},\"idempotency_key\":\"k1\"}"), 0);
    /* In one write: the second record with a key is the duplicate. */
    cr_assert_eq(send_raw("{\"to\":\"bob\",\"payload\":{\"task\":2},\"idempotency_key\":\"k2\"}"
                          "{\"to\":\"bob\",\"payload\":{\"task\":2},\"idempotency_key\":\"k2\"}"
                          "{\"to\":\"bob\",\"payload\":{\"task\":3}}"), 2);
    assert_place(BUS_INBOX, "1 2 3");
    cr_assert_eq(duplicates_total(), 2);
    /* Another sender's key of the same name is its own. */
    struct bus_error err = {0};
    struct buf pending;
    unsigned delivered = 0;
    buf_init(&pending);
    const char *rec = "{\"to\":\"alice\",\"payload\":{\"task\":4},\"idempotency_key\":\"k1\"}";
    cr_assert_eq(bus_send_write(the_bus, id_of("bob"), OWNER, &pending, rec, strlen(rec),
                                &delivered, &err), 0);
    cr_assert_eq(delivered, 1);
    buf_free(&pending);
    /* Past the window the key is forgotten: the same record is delivered again. */
    tick_at(UNIT_T0_US + 61 * SEC);
    cr_assert_eq(send_raw("{\"to\":\"bob\",\"payload\":{\"task\":1},\"idempotency_key\":\"k1\"}"), 1);
    assert_place(BUS_INBOX, "1 2 3 1");
}

LEASE_TEST(the_window_survives_a_restart_and_a_kill_9)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(64) << 20};
    open_bus();
    agents();
    cr_assert_eq(send_raw("{\"to\":\"bob\",\"payload\":{\"task\":1},\"idempotency_key\":\"a\"}"), 1);
    reopen(); /* a snapshot */
    cr_assert_eq(send_raw("{\"to\":\"bob\",\"payload\":{\"task\":1},\"idempotency_key\":\"a\"}"), 0);
    cr_assert_eq(send_raw("{\"to\":\"bob\",\"payload\":{\"task\":2},\"idempotency_key\":\"b\"}"), 1);
    bus_close(the_bus);
    the_bus = NULL;
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        open_bus();
        send_raw("{\"to\":\"bob\",\"payload\":{\"task\":3},\"idempotency_key\":\"c\"}");
        _exit(0); /* the key is only in the journal */
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    open_bus();
    for (const char *k = "abc"; *k; k++) {
        char rec[128];
        snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":0,\"idempotency_key\":\"%c\"}", *k);
        cr_assert_eq(send_raw(rec), 0, "key %c delivered again after a restart", *k);
    }
    assert_place(BUS_INBOX, "1 2 3");
    cr_assert_eq(duplicates_total(), 4);
}

LEASE_TEST(a_bad_idempotency_key_is_einval)
{
    start(0, 0);
    agents();
    char long_key[200];
    memset(long_key, 'x', 129);
    long_key[129] = '\0';
    const char *bad[] = {"\"\"", "1", "null", "[\"k\"]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0] + 1; i++) {
        char rec[400];
        struct buf pending;
        struct bus_error err = {0};
        unsigned delivered = 0;
        buf_init(&pending);
        if (i < sizeof bad / sizeof bad[0])
            snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":1,\"idempotency_key\":%s}", bad[i]);
        else
            snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":1,\"idempotency_key\":\"%s\"}",
                     long_key);
        cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, rec, strlen(rec),
                                    &delivered, &err), -EINVAL, "%s", rec);
        buf_free(&pending);
    }
    assert_place(BUS_INBOX, "");
}

LEASE_TEST(keys_belong_to_the_sender_and_its_owner_not_to_the_name)
{
    /* A uid that registers a name, plants keys and removes it must not make the next
     * owner's sends vanish. */
    start(0, 0);
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_create(the_bus, "bob", OWNER, OWNER, NULL, &err), 0);
    cr_assert_eq(bus_agent_create(the_bus, "svc", OTHER, OTHER, NULL, &err), 0);
    const char *rec = "{\"to\":\"bob\",\"payload\":\"planted\",\"idempotency_key\":\"job-1\"}";
    struct buf pending;
    unsigned delivered = 0;
    buf_init(&pending);
    cr_assert_eq(bus_send_write(the_bus, id_of("svc"), OTHER, &pending, rec, strlen(rec),
                                &delivered, &err), 0);
    cr_assert_eq(delivered, 1);
    struct bus_message *m = NULL;
    bool draining;
    cr_assert_eq(bus_next_peek(the_bus, id_of("bob"), &m, &draining), 0);
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, NULL, OWNER, &err), 0);
    message_unref(m);
    cr_assert_eq(bus_agent_remove(the_bus, "svc", OTHER, &err), 0, "%s", err.reason);
    cr_assert_eq(bus_agent_create(the_bus, "svc", OWNER, OWNER, NULL, &err), 0);
    rec = "{\"to\":\"bob\",\"payload\":\"legit\",\"idempotency_key\":\"job-1\"}";
    cr_assert_eq(bus_send_write(the_bus, id_of("svc"), OWNER, &pending, rec, strlen(rec),
                                &delivered, &err), 0);
    cr_assert_eq(delivered, 1, "the new owner's send was taken for the old owner's retry");
    buf_free(&pending);
}

LEASE_TEST(retry_respects_the_inbox_capacity)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(64) << 20,
                              .lease_s = 10, .max_deliver = 1, .inbox_capacity = 2};
    open_bus();
    agents();
    send_task(1);
    struct claim c = claim_ok();
    cr_assert_eq(ctl("nak %s %" PRIu64, c.msg_id, c.token), 0);
    assert_place(BUS_DEAD, "1");
    send_task(2);
    send_task(3);
    cr_assert_eq(ctl("retry %s", c.msg_id), -EAGAIN, "a retry past --inbox-capacity");
    assert_place(BUS_DEAD, "1");
    struct claim d = claim_ok();
    cr_assert_eq(ctl("ack %s %" PRIu64, d.msg_id, d.token), 0);
    cr_assert_eq(ctl("retry %s", c.msg_id), 0, "%s", last_err.reason);
    assert_place(BUS_INBOX, "1 3");
    claim_free(&c);
    claim_free(&d);
}

LEASE_TEST(lease_seconds_are_plain_decimals_from_1_and_tokens_use_all_64_bits)
{
    start(0, 0);
    agents();
    send_task(1);
    struct claim c = claim_ok();
    const char *bad_extend[] = {"0x10", "1e3", "0x1p4", "0.0001", "0.5", ".5", "+5", "-1",
                                "99999999999", "2678401", "1.5e1", "nan", "inf"};
    for (size_t i = 0; i < sizeof bad_extend / sizeof bad_extend[0]; i++)
        cr_assert_eq(ctl("extend %s %" PRIu64 " %s", c.msg_id, c.token, bad_extend[i]),
                     -EINVAL, "extend by %s", bad_extend[i]);
    const char *good_extend[] = {"1", "1.5", "1000.", "2678400", "30.25"};
    for (size_t i = 0; i < sizeof good_extend / sizeof good_extend[0]; i++)
        cr_assert_eq(ctl("extend %s %" PRIu64 " %s", c.msg_id, c.token, good_extend[i]), 0,
                     "extend by %s: %s", good_extend[i], last_err.reason);
    cr_assert_eq(ctl("nak %s %" PRIu64 " 0x5", c.msg_id, c.token), -EINVAL);
    cr_assert_eq(ctl("ack %s 18446744073709551615", c.msg_id), -ESTALE, "the largest token");
    cr_assert_eq(ctl("ack %s 18446744073709551616", c.msg_id), -EINVAL, "past 64 bits");
    cr_assert_eq(ctl("nak %s %" PRIu64 " 0.5", c.msg_id, c.token), 0, "%s", last_err.reason);
    claim_free(&c);
}
