/*
 * test_events.c — core/events.c: the `events` log (SPEC §10). Every change a record
 * makes to a message or an agent is one line with a store-wide, gapless seq; a
 * restart (snapshot) and a kill -9 (journal replay) neither repeat nor skip a seq,
 * and an event a crash kept out of the log is written at the replay; retention keeps
 * at least the newest N.
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
#include "unit.h"

#define EVENTS_TEST(name) \
    Test(events, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

#define OWNER 1000

static struct bus *the_bus;
static struct bus_config cfg;
static char store_dir[PATH_MAX];

static void setup(void)
{
    unit_setup();
    unit_path(store_dir, "store");
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(64) << 20,
                              .lease_s = 10, .max_deliver = 5};
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
    cr_assert_eq(bus_open(&cfg, &the_bus, &err), 0, "bus_open: %s", err.reason);
}

static uint64_t id_of(const char *name)
{
    struct bus_agent_info a;
    cr_assert_eq(bus_agent_by_name(the_bus, name, &a), 0, "no agent %s", name);
    return a.id;
}

static void agent(const char *name)
{
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_create(the_bus, name, OWNER, OWNER, NULL, &err), 0, "%s", err.reason);
}

static void send_one(int n)
{
    char rec[128];
    struct buf pending;
    struct bus_error err = {0};
    unsigned delivered = 0;
    buf_init(&pending);
    snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":%d}", n);
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, rec, strlen(rec),
                                &delivered, &err), 0, "%s", err.reason);
    buf_free(&pending);
}

/* Every line of the events log, parsed. */
static json_t *events(void)
{
    struct buf all;
    buf_init(&all);
    char chunk[4096];
    uint64_t off = 0;
    for (;;) {
        uint64_t at = off;
        ssize_t n = bus_events_read(the_bus, &at, chunk, sizeof chunk);
        cr_assert_geq(n, 0);
        if (n == 0)
            break;
        buf_append(&all, chunk, (size_t)n);
        off = at + (uint64_t)n;
    }
    json_t *list = json_array();
    for (char *p = all.data, *nl; p && (nl = memchr(p, '\n', all.data + all.len - p)); p = nl + 1) {
        json_t *v = json_loadb(p, (size_t)(nl - p), 0, NULL);
        cr_assert_not_null(v, "a line of events is not JSON: %.*s", (int)(nl - p), p);
        json_array_append_new(list, v);
    }
    buf_free(&all);
    return list;
}

static const char *kind_of(json_t *e) { return json_string_value(json_object_get(e, "event")); }
static json_int_t seq_of(json_t *e) { return json_integer_value(json_object_get(e, "seq")); }

/* The seqs are first, first + 1, ... with nothing missing or repeated. */
static void assert_gapless(json_t *list, json_int_t first)
{
    for (size_t i = 0; i < json_array_size(list); i++)
        cr_assert_eq(seq_of(json_array_get(list, i)), first + (json_int_t)i,
                     "event %zu has seq %lld, want %lld", i,
                     (long long)seq_of(json_array_get(list, i)), (long long)(first + (json_int_t)i));
}

/* `VERB ID TOKEN` to bob's ctl, or VERB alone when id is NULL. */
static void ctl(const char *verb, const char *id, uint64_t token)
{
    char cmd[200];
    struct bus_error err = {0};
    if (id)
        snprintf(cmd, sizeof cmd, "%s %s %" PRIu64, verb, id, token);
    else
        snprintf(cmd, sizeof cmd, "%s", verb);
    cr_assert_eq(bus_ctl(the_bus, id_of("bob"), OWNER, cmd, strlen(cmd), &err), 0, "%s: %s", cmd,
                 err.reason);
}

static void claim(char *id, uint64_t *token)
{
    struct buf out;
    struct bus_error err = {0};
    bool draining;
    buf_init(&out);
    cr_assert_eq(bus_claim(the_bus, id_of("bob"), OWNER, &out, &draining, &err), 0, "%s",
                 err.reason);
    json_t *v = json_loadb(out.data, out.len, 0, NULL);
    snprintf(id, 64, "%s", json_string_value(json_object_get(v, "msg_id")));
    *token = (uint64_t)json_integer_value(json_object_get(json_object_get(v, "lease"), "token"));
    json_decref(v);
    buf_free(&out);
}

EVENTS_TEST(a_message_life_is_told_in_order_with_gapless_seqs)
{
    open_bus();
    agent("alice");
    agent("bob");
    send_one(1);
    char id[64];
    uint64_t token;
    claim(id, &token);
    ctl("nak", id, token);
    claim(id, &token);
    ctl("ack", id, token);
    ctl("drain", NULL, 0);
    json_t *list = events();
    const char *want[] = {"agent_added", "agent_added", "delivered", "leased", "redelivered",
                          "leased", "acked", "drained"};
    cr_assert_eq(json_array_size(list), sizeof want / sizeof want[0]);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert_str_eq(kind_of(json_array_get(list, i)), want[i], "event %zu", i);
    assert_gapless(list, 1);
    json_t *d = json_array_get(list, 2);
    cr_assert_str_eq(json_string_value(json_object_get(d, "agent")), "bob");
    cr_assert_str_eq(json_string_value(json_object_get(d, "from")), "alice");
    cr_assert_str_eq(json_string_value(json_object_get(d, "msg_id")), id);
    cr_assert_gt(json_integer_value(json_object_get(d, "bytes")), 0);
    cr_assert_null(json_object_get(d, "payload"), "no payloads in events");
    json_t *r = json_array_get(list, 4);
    cr_assert_str_eq(json_string_value(json_object_get(r, "reason")), "nak");
    json_t *a = json_array_get(list, 6);
    cr_assert_eq((uint64_t)json_integer_value(json_object_get(a, "token")), token);
    json_decref(list);
}

static void crash_child(void)
{
    open_bus();
    send_one(3);
    send_one(4);
    fflush(NULL);
    _exit(0);
}

/* A kill -9: a child opens the store, sends two messages and _exit()s without closing. */
static void crash_in_child(void)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        crash_child();
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
}

EVENTS_TEST(seqs_continue_across_a_restart_and_a_kill_9_without_gaps_or_repeats)
{
    open_bus();
    agent("alice");
    agent("bob");
    send_one(1);
    bus_close(the_bus); /* a snapshot: its records make no event again */
    the_bus = NULL;
    open_bus();
    send_one(2);
    bus_close(the_bus);
    the_bus = NULL;
    crash_in_child();
    open_bus(); /* replays the child's journal: its events are in the log already */
    send_one(5);
    json_t *list = events();
    cr_assert_eq(json_array_size(list), 7, "2 agents and 5 deliveries, got %zu",
                 json_array_size(list));
    assert_gapless(list, 1);
    json_decref(list);
}

EVENTS_TEST(an_event_a_crash_kept_out_of_the_log_is_written_at_the_replay)
{
    open_bus();
    agent("alice");
    agent("bob");
    bus_close(the_bus);
    the_bus = NULL;
    crash_in_child();
    /* The child's last line never reached the log: its record did reach the journal. */
    char seg[PATH_MAX + 64];
    snprintf(seg, sizeof seg, "%s/events/events-00000000000000000000.jsonl", store_dir);
    struct buf b;
    buf_init(&b);
    cr_assert_eq(unit_read_file(seg, &b), 0);
    cr_assert_gt(b.len, 1);
    size_t cut = b.len - 1;
    while (cut > 0 && b.data[cut - 1] != '\n')
        cut--;
    cr_assert_eq(unit_write_file(seg, b.data, cut), 0);
    buf_free(&b);
    open_bus();
    json_t *list = events();
    cr_assert_eq(json_array_size(list), 4, "got %zu events", json_array_size(list));
    assert_gapless(list, 1);
    cr_assert_str_eq(kind_of(json_array_get(list, 3)), "delivered");
    json_decref(list);
}

EVENTS_TEST(retention_keeps_at_least_the_newest_n_with_their_seqs)
{
    cfg.events_retention = 40;
    cfg.inbox_capacity = 100000;
    open_bus();
    agent("alice");
    agent("bob");
    for (int i = 0; i < 600; i++)
        send_one(i);
    json_t *list = events();
    size_t n = json_array_size(list);
    cr_assert_geq(n, 40, "only %zu events kept", n);
    cr_assert_lt(n, 200, "%zu events kept of a retention of 40", n);
    json_int_t first = seq_of(json_array_get(list, 0));
    cr_assert_eq(first + (json_int_t)n - 1, 602, "the newest is seq %lld",
                 (long long)(first + (json_int_t)n - 1));
    assert_gapless(list, first);
    json_decref(list);
    /* A restart finds the same, and goes on. */
    bus_close(the_bus);
    the_bus = NULL;
    open_bus();
    send_one(1000);
    list = events();
    json_int_t last = seq_of(json_array_get(list, json_array_size(list) - 1));
    cr_assert_eq(last, 603);
    assert_gapless(list, seq_of(json_array_get(list, 0)));
    json_decref(list);
}
