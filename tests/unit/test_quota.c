/*
 * test_quota.c — per-uid limits of the bus (SPEC §11): agents per uid, bytes of pending
 * messages and drafts per uid, open drafts per uid and inbox, drafts counted against
 * --store-max-bytes, and the top-level `errors` log's share per uid and flood limit.
 *
 * The one thing a reader must know: the limits spare the server's own uid (getuid() of
 * this test process), so the uids that test them are others (UID_A, UID_B), and a test
 * of the store-wide limit alone uses the server's uid.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "busfs/buf.h"
#include "busfs/bus.h"
#include "busfs/clock.h"
#include "busfs/message.h"
#include "unit.h"

#define QUOTA_TEST(name) \
    Test(quota, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

#define UID_A 4201
#define UID_B 4202
#define MIB (UINT64_C(1) << 20)

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
    cr_assert_eq(rc, 0, "bus_open: %d %s", rc, err.reason);
}

/* A bus with default limits and this store budget (0: 256 MiB). */
static void start(uint64_t store_max)
{
    cfg = (struct bus_config){
        .store_dir = store_dir,
        .store_max_bytes = store_max ? store_max : UINT64_C(256) << 20,
    };
    open_bus();
}

static void reopen(void)
{
    bus_close(the_bus);
    the_bus = NULL;
    open_bus();
}

static int create(const char *name, uid_t uid, struct bus_error *err)
{
    return bus_agent_create(the_bus, name, uid, uid, NULL, err);
}

static uint64_t agent_as(const char *name, uid_t uid)
{
    struct bus_agent_info info;
    struct bus_error err = {0};
    int rc = bus_agent_create(the_bus, name, uid, uid, &info, &err);
    cr_assert_eq(rc, 0, "create %s: %d %s", name, rc, err.reason);
    return info.id;
}

static uint64_t id_of(const char *name)
{
    struct bus_agent_info info;
    cr_assert_eq(bus_agent_by_name(the_bus, name, &info), 0, "no agent %s", name);
    return info.id;
}

static uint32_t depth_of(const char *name)
{
    struct bus_agent_info info;
    cr_assert_eq(bus_agent_by_name(the_bus, name, &info), 0, "no agent %s", name);
    return info.depth;
}

/* outbox/TO as uid: open, one write of len bytes, flush, close. */
static int send_bytes(const char *from, const char *to, uid_t uid, size_t len,
                      struct bus_error *err)
{
    char *body = malloc(len);
    cr_assert_not_null(body);
    memset(body, 'q', len);
    struct bus_draft *d = NULL;
    int rc = bus_draft_open(the_bus, id_of(from), to, uid, &d, err);
    if (rc == 0)
        rc = bus_draft_write(the_bus, d, body, len, err);
    if (rc == 0)
        rc = bus_draft_flush(the_bus, d, err);
    bus_draft_close(the_bus, d);
    free(body);
    return rc;
}

/* Consumes every message in NAME's inbox (as root, which may act for anyone). */
static int ack_one(void *ctx, const struct bus_message *m)
{
    uint64_t *number = ctx;
    *number = m->number;
    return 1;
}

static void consume_all(const char *name)
{
    struct bus_error err = {0};
    for (;;) {
        uint64_t number = 0;
        bus_inbox_list(the_bus, id_of(name), 0, ack_one, &number);
        if (!number)
            return;
        cr_assert_eq(bus_ack(the_bus, id_of(name), number, NULL, 0, &err), 0, "%s", err.reason);
    }
}

/* ---------- agents per uid ---------- */

QUOTA_TEST(a_uid_past_max_agents_per_uid_gets_edquot_while_another_uid_registers)
{
    start(0);
    struct bus_error err = {0};
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "a%d", i);
        cr_assert_eq(create(name, UID_A, &err), 0, "agent %d: %s", i, err.reason);
    }
    cr_assert_eq(create("one-more", UID_A, &err), -EDQUOT, "the 1001st agent of a uid");
    cr_assert_eq(err.code, EDQUOT);
    cr_assert_not_null(strstr(err.reason, "--max-agents-per-uid"), "reason: %s", err.reason);
    cr_assert_eq(bus_agent_by_name(the_bus, "one-more", &(struct bus_agent_info){0}), -ENOENT);
    cr_assert_eq(create("b0", UID_B, &err), 0, "another uid still registers: %s", err.reason);
    cr_assert_eq(create("server-own", getuid(), &err), 0, "the server's uid has no quota");

    /* Removing one makes room; the count is rebuilt by a restart. */
    cr_assert_eq(bus_agent_remove(the_bus, "a0", UID_A, &err), 0);
    cr_assert_eq(create("one-more", UID_A, &err), 0, "%s", err.reason);
    reopen();
    cr_assert_eq(create("two-more", UID_A, &err), -EDQUOT, "a restart keeps the count");
    cr_assert_eq(create("b1", UID_B, &err), 0);
}

QUOTA_TEST(max_agents_per_uid_is_configurable)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = 64 * MIB,
                              .max_agents_per_uid = 2};
    open_bus();
    struct bus_error err = {0};
    cr_assert_eq(create("a1", UID_A, &err), 0);
    cr_assert_eq(create("a2", UID_A, &err), 0);
    cr_assert_eq(create("a3", UID_A, &err), -EDQUOT);
    cr_assert_eq(create("b1", UID_B, &err), 0);
}

/* ---------- drafts per uid and inbox ---------- */

QUOTA_TEST(drafts_past_max_drafts_per_sender_get_eagain_while_another_uid_sends)
{
    start(0);
    agent_as("alice", UID_A);
    agent_as("bob", UID_B);
    agent_as("carol", UID_B);
    struct bus_draft *d[65] = {0};
    struct bus_error err = {0};
    for (int i = 0; i < 64; i++)
        cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", UID_A, &d[i], &err), 0,
                     "draft %d: %s", i, err.reason);
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", UID_A, &d[64], &err), -EAGAIN,
                 "the 65th open draft of one uid to one inbox");
    cr_assert_not_null(strstr(err.reason, "--max-drafts-per-sender"), "reason: %s", err.reason);
    /* Another uid sends to the same inbox; the same uid to another inbox. */
    cr_assert_eq(send_bytes("carol", "bob", UID_B, 10, &err), 0, "%s", err.reason);
    cr_assert_eq(send_bytes("alice", "carol", UID_A, 10, &err), 0, "%s", err.reason);
    cr_assert_eq(depth_of("bob"), 1);
    /* A draft that ends frees its place. */
    cr_assert_eq(bus_draft_write(the_bus, d[0], "x", 1, &err), 0);
    cr_assert_eq(bus_draft_flush(the_bus, d[0], &err), 0);
    bus_draft_close(the_bus, d[0]);
    d[0] = NULL;
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", UID_A, &d[0], &err), 0,
                 "%s", err.reason);
    for (int i = 0; i < 64; i++)
        bus_draft_close(the_bus, d[i]);
    cr_assert_eq(send_bytes("alice", "bob", UID_A, 10, &err), 0, "%s", err.reason);
}

QUOTA_TEST(a_broadcast_draft_counts_in_every_inbox)
{
    start(0);
    agent_as("alice", UID_A);
    agent_as("bob", UID_B);
    agent_as("carol", UID_B);
    struct bus_draft *d[64] = {0};
    struct bus_error err = {0};
    for (int i = 0; i < 64; i++)
        cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), i % 2 ? "all" : "bob", UID_A, &d[i],
                                    &err), 0, "draft %d: %s", i, err.reason);
    struct bus_draft *x = NULL;
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", UID_A, &x, &err), -EAGAIN);
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "carol", UID_A, &x, &err), 0,
                 "carol holds 32 of alice's drafts: %s", err.reason);
    bus_draft_close(the_bus, x);
    for (int i = 0; i < 64; i++)
        bus_draft_close(the_bus, d[i]);
}

/* ---------- bytes: the store and the uid ---------- */

QUOTA_TEST(open_drafts_count_against_store_max_bytes)
{
    start(8 * MIB);
    uid_t me = getuid(); /* the server's own uid: no per-uid budget, only the store's */
    agent_as("alice", me);
    agent_as("bob", me);
    char *chunk = malloc(MIB);
    memset(chunk, 'd', MIB);
    struct bus_draft *d[16] = {0};
    struct bus_error err = {0};
    int accepted = 0, rc = 0;
    for (int i = 0; i < 16; i++) {
        cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", me, &d[i], &err), 0);
        rc = bus_draft_write(the_bus, d[i], chunk, MIB, &err);
        if (rc < 0)
            break;
        accepted++;
    }
    cr_assert_eq(rc, -ENOSPC, "after %d drafts of 1 MiB: %d %s", accepted, rc, err.reason);
    cr_assert_lt(accepted, 8, "%d unfinished drafts of 1 MiB fit under 8 MiB", accepted);
    cr_assert_gt(accepted, 0);
    for (int i = 0; i < 16; i++)
        bus_draft_close(the_bus, d[i]);
    /* The drafts are gone: the space is back. */
    struct bus_draft *again = NULL;
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", me, &again, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, again, chunk, MIB, &err), 0, "%s", err.reason);
    cr_assert_eq(bus_draft_flush(the_bus, again, &err), 0);
    bus_draft_close(the_bus, again);
    cr_assert_eq(depth_of("bob"), 1);
    free(chunk);
}

QUOTA_TEST(a_uid_past_max_bytes_per_uid_gets_edquot_while_another_uid_sends)
{
    start(64 * MIB); /* 16 MiB a uid by default */
    agent_as("alice", UID_A);
    agent_as("bob", UID_B);
    agent_as("carol", UID_B);
    struct bus_error err = {0};
    int sent = 0, rc = 0;
    while (sent < 64) {
        rc = send_bytes("alice", "bob", UID_A, 512 * 1024, &err);
        if (rc < 0)
            break;
        sent++;
    }
    cr_assert_eq(rc, -EDQUOT, "after %d messages of 512 KiB: %d %s", sent, rc, err.reason);
    cr_assert_not_null(strstr(err.reason, "--max-bytes-per-uid"), "reason: %s", err.reason);
    cr_assert(sent >= 24 && sent < 32, "%d messages of 512 KiB fit in 16 MiB", sent);
    cr_assert_eq(depth_of("bob"), (uint32_t)sent, "the refused message was not delivered");
    /* A send record of the same uid is refused too; another uid's is not. */
    struct buf pending;
    buf_init(&pending);
    unsigned n = 0;
    char *rec = malloc(600 * 1024);
    int len = snprintf(rec, 600 * 1024, "{\"to\":\"bob\",\"payload\":\"%0*d\"}", 512 * 1024, 0);
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), UID_A, &pending, rec, (size_t)len, &n,
                                &err), -EDQUOT);
    cr_assert_eq(n, 0);
    buf_reset(&pending);
    cr_assert_eq(bus_send_write(the_bus, id_of("carol"), UID_B, &pending, rec, (size_t)len, &n,
                                &err), 0, "%s", err.reason);
    cr_assert_eq(n, 1);
    buf_free(&pending);
    free(rec);
    cr_assert_eq(send_bytes("carol", "bob", UID_B, 512 * 1024, &err), 0, "%s", err.reason);

    /* Pending bytes are charged after a restart too; consuming them frees the budget. */
    reopen();
    cr_assert_eq(send_bytes("alice", "bob", UID_A, 512 * 1024, &err), -EDQUOT,
                 "the charge is rebuilt from the pending messages");
    consume_all("bob");
    cr_assert_eq(send_bytes("alice", "bob", UID_A, 512 * 1024, &err), 0, "%s", err.reason);
}

QUOTA_TEST(open_drafts_count_against_max_bytes_per_uid)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = 256 * MIB,
                              .max_bytes_per_uid = 4 * MIB};
    open_bus();
    agent_as("alice", UID_A);
    agent_as("bob", UID_B);
    char *chunk = malloc(MIB);
    memset(chunk, 'd', MIB);
    struct bus_draft *d[8] = {0};
    struct bus_error err = {0};
    int accepted = 0, rc = 0;
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", UID_A, &d[i], &err), 0);
        rc = bus_draft_write(the_bus, d[i], chunk, MIB, &err);
        if (rc < 0)
            break;
        accepted++;
    }
    cr_assert_eq(rc, -EDQUOT, "after %d drafts: %d %s", accepted, rc, err.reason);
    cr_assert_lt(accepted, 4);
    for (int i = 0; i < 8; i++)
        bus_draft_close(the_bus, d[i]);
    cr_assert_eq(send_bytes("alice", "bob", UID_A, MIB, &err), 0, "%s", err.reason);
    free(chunk);
}

/* ---------- the errors log ---------- */

struct log_count {
    size_t lines, of_a, of_b, suppressed_records;
    long long suppressed;
};

static struct log_count read_errors(void)
{
    struct buf log;
    buf_init(&log);
    size_t size = bus_errors_size(the_bus, 0);
    cr_assert_eq(bus_errors_read(the_bus, 0, 0, SIZE_MAX, &log), size);
    struct log_count c = {0};
    const char *p = log.data ? log.data : "";
    while (*p) {
        const char *nl = strchr(p, '\n');
        cr_assert_not_null(nl);
        json_t *v = json_loadb(p, (size_t)(nl - p), 0, NULL);
        cr_assert_not_null(v, "not JSON: %.*s", (int)(nl - p), p);
        cr_assert(json_is_string(json_object_get(v, "timestamp")));
        json_int_t uid = json_integer_value(json_object_get(v, "uid"));
        json_t *s = json_object_get(v, "suppressed");
        if (s) {
            cr_assert(json_is_integer(s) && json_integer_value(s) > 0);
            c.suppressed += json_integer_value(s);
            c.suppressed_records++;
        }
        c.lines++;
        c.of_a += uid == UID_A;
        c.of_b += uid == UID_B;
        json_decref(v);
        p = nl + 1;
    }
    buf_free(&log);
    return c;
}

static void refuse_as(uid_t uid, int i)
{
    struct bus_error e;
    bus_fail(&e, EINVAL, "bad agent name %d", i);
    bus_log_error(the_bus, NULL, "mkdir", "agents/bad name", uid, &e);
}

QUOTA_TEST(the_errors_log_keeps_at_most_100_records_per_uid)
{
    start(0);
    for (int i = 0; i < 20; i++) {
        refuse_as(UID_B, i);
        unit_clock_set(unit_clock_get() + 200000);
    }
    for (int i = 0; i < 300; i++) {
        refuse_as(UID_A, i);
        unit_clock_set(unit_clock_get() + 200000); /* 5 a second: never suppressed */
    }
    struct log_count c = read_errors();
    cr_assert_eq(c.of_a, 100, "uid A keeps its newest 100 records, not %zu", c.of_a);
    cr_assert_eq(c.of_b, 20, "uid B's older records stay");
    cr_assert_eq(c.suppressed_records, 0);
    cr_assert_eq(c.lines, 120);
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_eq(st.rejected_total, 320, "every refusal is counted");
}

QUOTA_TEST(the_errors_log_keeps_the_newest_1000_records)
{
    start(0);
    /* 20 uids, 60 refusals each, each uid about 8 a second: none suppressed. */
    for (int i = 0; i < 60; i++)
        for (uid_t uid = 5000; uid < 5020; uid++) {
            refuse_as(uid, i);
            unit_clock_set(unit_clock_get() + 6000);
        }
    struct log_count c = read_errors();
    cr_assert_eq(c.lines, 1000);
    cr_assert_eq(c.suppressed_records, 0);
}

QUOTA_TEST(a_flood_of_refusals_by_one_uid_becomes_one_suppressed_record_a_second)
{
    start(0);
    for (int i = 0; i < 500; i++) {
        refuse_as(UID_A, i);
        if (i % 50 == 0)
            refuse_as(UID_B, i);
    }
    struct log_count c = read_errors();
    cr_assert_eq(c.of_b, 10, "uid B's reasons are all there");
    cr_assert_leq(c.of_a, 11, "uid A logged %zu records within one second", c.of_a);
    /* A second later the count of what was left out is logged once. */
    unit_clock_set(unit_clock_get() + 1500000);
    refuse_as(UID_A, 1000);
    c = read_errors();
    cr_assert_eq(c.suppressed_records, 1);
    cr_assert_eq(c.suppressed + (long long)c.of_a - 1, 501,
                 "%lld suppressed and %zu logged of 501", c.suppressed, c.of_a);
    cr_assert_eq(c.of_b, 10);

    struct buf log;
    buf_init(&log);
    bus_errors_read(the_bus, 0, 0, SIZE_MAX, &log);
    const char *rec = strstr(log.data, "\"suppressed\":");
    cr_assert_not_null(rec);
    const char *start_of_line = rec;
    while (start_of_line > log.data && start_of_line[-1] != '\n')
        start_of_line--;
    json_t *v = json_loadb(start_of_line, (size_t)(strchr(rec, '\n') - start_of_line), 0, NULL);
    cr_assert_not_null(v);
    cr_assert_eq(json_integer_value(json_object_get(v, "uid")), UID_A);
    cr_assert(json_is_string(json_object_get(v, "reason")));
    json_decref(v);
    buf_free(&log);
}

QUOTA_TEST(a_suppressed_count_is_logged_without_a_later_refusal)
{
    start(0);
    for (int i = 0; i < 30; i++)
        refuse_as(UID_A, i);
    struct log_count c = read_errors();
    cr_assert_eq(c.suppressed_records, 0, "the second is not over");
    unit_clock_set(unit_clock_get() + 2000000);
    c = read_errors();
    cr_assert_eq(c.suppressed_records, 1, "a reader after that second sees the count");
    cr_assert_eq(c.suppressed + (long long)c.of_a - 1, 30);
}

QUOTA_TEST(the_servers_own_uid_logs_every_refusal)
{
    start(0);
    for (int i = 0; i < 150; i++)
        refuse_as(getuid(), i);
    struct buf log;
    buf_init(&log);
    bus_errors_read(the_bus, 0, 0, SIZE_MAX, &log);
    size_t lines = 0;
    for (size_t i = 0; i < log.len; i++)
        lines += log.data[i] == '\n';
    cr_assert_eq(lines, 150, "the operator's refusals are neither capped nor suppressed");
    buf_free(&log);
}

QUOTA_TEST(removing_the_sender_does_not_free_its_uids_pending_bytes)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = 256 * MIB,
                              .max_bytes_per_uid = 2 * MIB};
    open_bus();
    agent_as("alice", UID_A);
    agent_as("bob", UID_B);
    struct bus_error err = {0};
    int sent = 0;
    while (send_bytes("alice", "bob", UID_A, 256 * 1024, &err) == 0)
        sent++;
    cr_assert_eq(err.code, EDQUOT);
    cr_assert_eq(bus_agent_remove(the_bus, "alice", UID_A, &err), 0, "%s", err.reason);
    agent_as("alice2", UID_A);
    cr_assert_eq(send_bytes("alice2", "bob", UID_A, 256 * 1024, &err), -EDQUOT,
                 "the %d messages still pending in bob's inbox are uid A's", sent);
    consume_all("bob");
    cr_assert_eq(send_bytes("alice2", "bob", UID_A, 256 * 1024, &err), 0, "%s", err.reason);
}

QUOTA_TEST(an_empty_write_then_an_empty_flush_hold_no_bytes)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = 256 * MIB,
                              .max_bytes_per_uid = 64 * 1024};
    open_bus();
    agent_as("alice", UID_A);
    agent_as("bob", UID_B);
    struct bus_draft *d[64] = {0};
    struct bus_error err = {0};
    for (int i = 0; i < 64; i++) {
        cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", UID_A, &d[i], &err), 0);
        cr_assert_eq(bus_draft_write(the_bus, d[i], "", 0, &err), 0, "draft %d: %s", i,
                     err.reason);
        cr_assert_eq(bus_draft_flush(the_bus, d[i], &err), 0);
    }
    cr_assert_eq(send_bytes("alice", "bob", UID_A, 32 * 1024, &err), 0,
                 "64 emptied drafts hold nothing: %s", err.reason);
    for (int i = 0; i < 64; i++)
        bus_draft_close(the_bus, d[i]);
}
