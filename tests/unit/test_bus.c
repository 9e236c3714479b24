/*
 * test_bus.c — core/bus.c and core/send.c: agents, drafts (outbox/B), `send`
 * records, capacity and reservations, size and space limits, broadcast, acks, drain,
 * and durability across a clean close, a compaction and a kill -9 (SPEC §3, §7, §8).
 *
 * The one thing a reader must know: a kill -9 is simulated with fork(): a child opens
 * the bus on the test's store, works, writes what it saw to a file and _exit()s without
 * closing anything; the parent then opens the same store. The child cannot use
 * Criterion's asserts, so every helper checks with CHECK(), which makes the child exit
 * with status 1 and the parent's waitpid assertion fail.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "busfs/buf.h"
#include "busfs/bus.h"
#include "busfs/clock.h"
#include "busfs/message.h"
#include "busfs/store.h"
#include "unit.h"

#define BUS_TEST(name) \
    Test(bus, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

#define OWNER 1000
#define OTHER 2000

static struct bus *the_bus;
static struct bus_config cfg;
static char store_dir[PATH_MAX];
static bool in_child;

#define CHECK(cond, ...)                                                                \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            if (in_child) {                                                             \
                fprintf(stderr, "child, line %d: ", __LINE__);                          \
                fprintf(stderr, __VA_ARGS__);                                           \
                fprintf(stderr, "\n");                                                  \
                _exit(1);                                                               \
            }                                                                           \
            cr_assert(0, __VA_ARGS__);                                                  \
        }                                                                               \
    } while (0)

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

/* ---------- opening ---------- */

static struct bus *open_with(const struct bus_config *c)
{
    struct bus *b = NULL;
    struct bus_error err = {0};
    int rc = bus_open(c, &b, &err);
    CHECK(rc == 0, "bus_open: %d %s", rc, err.reason);
    return b;
}

/* Opens the test's bus; 0 means the default for each limit (store: 256 MiB). A store
 * limit given here gives OWNER twice as much byte budget, so the store's own limit is
 * what these tests meet. */
static void start(uint32_t capacity, uint64_t max_message, uint64_t store_max)
{
    cfg = (struct bus_config){
        .store_dir = store_dir,
        .inbox_capacity = capacity,
        .max_message_size = max_message,
        .store_max_bytes = store_max ? store_max : UINT64_C(256) << 20,
        .max_bytes_per_uid = store_max * 2,
    };
    the_bus = open_with(&cfg);
}

/* A clean restart: bus_close (which compacts) and bus_open on the same store. */
static void reopen(void)
{
    bus_close(the_bus);
    the_bus = NULL;
    the_bus = open_with(&cfg);
}

/* Runs body in a child that "dies" with _exit(0) holding the bus open (kill -9). The
 * parent must not hold the bus. */
static void in_crashing_child(void (*body)(void))
{
    cr_assert_null(the_bus, "the parent must close its bus first");
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        in_child = true;
        the_bus = open_with(&cfg);
        body();
        _exit(0); /* no bus_close: no compaction, no cleanup */
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the child failed (status %#x); see its stderr", status);
}

/* ---------- agents ---------- */

static struct bus_agent_info info_of(const char *name)
{
    struct bus_agent_info info;
    int rc = bus_agent_by_name(the_bus, name, &info);
    CHECK(rc == 0, "no agent %s", name);
    return info;
}

static uint64_t id_of(const char *name)
{
    return info_of(name).id;
}

static uint64_t agent_as(const char *name, uid_t uid)
{
    struct bus_agent_info info;
    struct bus_error err = {0};
    int rc = bus_agent_create(the_bus, name, uid, uid, &info, &err);
    CHECK(rc == 0, "create %s: %d %s", name, rc, err.reason);
    CHECK(strcmp(info.name, name) == 0, "info names %s", info.name);
    return info.id;
}

static uint64_t agent(const char *name)
{
    return agent_as(name, OWNER);
}

/* ---------- sending ---------- */

/* outbox/TO: open, one write, flush, close — as `echo BODY > outbox/TO`. */
static int send_text(const char *from, const char *to, const char *body, struct bus_error *err)
{
    struct bus_draft *d = NULL;
    int rc = bus_draft_open(the_bus, id_of(from), to, OWNER, &d, err);
    if (rc < 0)
        return rc;
    rc = bus_draft_write(the_bus, d, body, strlen(body), err);
    if (rc == 0)
        rc = bus_draft_flush(the_bus, d, err);
    bus_draft_close(the_bus, d);
    return rc;
}

static void send_ok(const char *from, const char *to, const char *body)
{
    struct bus_error err = {0};
    int rc = send_text(from, to, body, &err);
    CHECK(rc == 0, "send %s -> %s: %d %s", from, to, rc, err.reason);
}

/* One write() of text to agents/FROM/send with a fresh pending buffer. */
static int send_json(const char *from, const char *text, unsigned *delivered,
                     struct bus_error *err)
{
    struct buf pending;
    buf_init(&pending);
    unsigned n = 99;
    int rc = bus_send_write(the_bus, id_of(from), OWNER, &pending, text, strlen(text), &n, err);
    buf_free(&pending);
    if (delivered)
        *delivered = n;
    return rc;
}

static void send_json_ok(const char *from, const char *text, unsigned want)
{
    struct bus_error err = {0};
    unsigned n;
    int rc = send_json(from, text, &n, &err);
    CHECK(rc == 0, "send %s: %d %s", text, rc, err.reason);
    CHECK(n == want, "%u delivered, want %u", n, want);
}

static int ctl(const char *name, const char *cmd)
{
    struct bus_error err = {0};
    return bus_ctl(the_bus, id_of(name), OWNER, cmd, strlen(cmd), &err);
}

/* ---------- reading ---------- */

struct msg_list {
    size_t n, cap;
    struct bus_message **m;
};

static int collect_msg(void *ctx, const struct bus_message *m)
{
    struct msg_list *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->m = realloc(l->m, l->cap * sizeof *l->m);
        if (!l->m)
            abort();
    }
    message_ref((struct bus_message *)m);
    l->m[l->n++] = (struct bus_message *)m;
    return 0;
}

static struct msg_list inbox_of(const char *name)
{
    struct msg_list l = {0};
    bus_inbox_list(the_bus, id_of(name), 0, collect_msg, &l);
    return l;
}

static struct msg_list outbox_of(const char *name)
{
    struct msg_list l = {0};
    bus_outbox_list(the_bus, id_of(name), 0, collect_msg, &l);
    return l;
}

static void msg_list_free(struct msg_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        message_unref(l->m[i]);
    free(l->m);
    memset(l, 0, sizeof *l);
}

static uint32_t depth_of(const char *name)
{
    return info_of(name).depth;
}

static uint32_t reserved_of(const char *name)
{
    return info_of(name).reserved;
}

static json_t *env_json(const struct bus_message *m)
{
    json_error_t e;
    json_t *v = json_loadb(m->envelope, m->len, 0, &e);
    cr_assert_not_null(v, "envelope is not JSON (%s): %s", e.text, m->envelope);
    cr_assert_eq(m->envelope[m->len - 1], '\n');
    cr_assert_eq(strchr(m->envelope, '\n'), m->envelope + m->len - 1, "one line");
    return v;
}

static const char *jstr(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    CHECK(json_is_string(v), "%s is not a string", key);
    return json_string_value(v);
}

static long long jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_integer(v), "%s is not an integer", key);
    return json_integer_value(v);
}

/* The only message in NAME's inbox, as JSON. */
static json_t *only_message(const char *name)
{
    struct msg_list l = inbox_of(name);
    cr_assert_eq(l.n, 1, "%s holds %zu messages", name, l.n);
    json_t *v = env_json(l.m[0]);
    msg_list_free(&l);
    return v;
}

/* ---------- the whole observable state, as text ---------- */

#define NAMES_MAX 256

struct names {
    size_t n;
    char name[NAMES_MAX][BUS_NAME_MAX + 1];
};

static int collect_name(void *ctx, const struct bus_agent_info *a)
{
    struct names *ns = ctx;
    CHECK(ns->n < NAMES_MAX, "more agents than the test helper lists");
    memcpy(ns->name[ns->n++], a->name, sizeof ns->name[0]);
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void dump_messages(struct buf *out, const char *what, const struct msg_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        const struct bus_message *m = l->m[i];
        buf_printf(out, "  %s #%" PRIu64 " seq %" PRIu64 " %s->%s ack=%d %s", what, m->number,
                   m->sequence, m->from, m->to, m->requires_ack, m->envelope);
    }
}

/* Agents (by name), their counters, inbox and outbox envelopes, and the bus totals.
 * Leaves out what is not persisted: ids, error logs, rejection counts, uptime. */
static void dump_state(struct buf *out)
{
    static struct names ns;
    ns.n = 0;
    bus_agent_list(the_bus, 0, collect_name, &ns);
    qsort(ns.name, ns.n, sizeof ns.name[0], cmp_name);
    for (size_t i = 0; i < ns.n; i++) {
        struct bus_agent_info a = info_of(ns.name[i]);
        buf_printf(out, "agent %s uid %u gid %u created %" PRId64 " draining %d depth %u "
                        "reserved %u delivered %" PRIu64 " acked %" PRIu64 " outbox %u\n",
                   a.name, (unsigned)a.uid, (unsigned)a.gid, a.created_us, a.draining, a.depth,
                   a.reserved, a.delivered_total, a.acked_total, a.outbox_count);
        struct msg_list in = inbox_of(a.name), ob = outbox_of(a.name);
        dump_messages(out, "inbox", &in);
        dump_messages(out, "outbox", &ob);
        msg_list_free(&in);
        msg_list_free(&ob);
    }
    struct bus_stats st;
    bus_stats(the_bus, &st);
    buf_printf(out, "agents %u pending %" PRIu64 " delivered %" PRIu64 "\n", st.agents,
               st.pending, st.delivered_total);
}

static void assert_same_state(const char *before, const char *after)
{
    if (strcmp(before, after) == 0)
        return;
    size_t i = 0;
    while (before[i] && before[i] == after[i])
        i++;
    size_t from = i > 200 ? i - 200 : 0;
    cr_assert(0, "state differs at byte %zu:\n--- before ...%.400s\n--- after ...%.400s", i,
              before + from, after + from);
}

static char *current_dump(void)
{
    struct buf d;
    buf_init(&d);
    dump_state(&d);
    return d.data;
}

/* The highest message number any inbox or outbox shows. */
static uint64_t max_number(void)
{
    static struct names ns;
    ns.n = 0;
    bus_agent_list(the_bus, 0, collect_name, &ns);
    uint64_t max = 0;
    for (size_t i = 0; i < ns.n; i++) {
        struct msg_list in = inbox_of(ns.name[i]), ob = outbox_of(ns.name[i]);
        for (size_t k = 0; k < in.n; k++)
            max = in.m[k]->number > max ? in.m[k]->number : max;
        for (size_t k = 0; k < ob.n; k++)
            max = ob.m[k]->number > max ? ob.m[k]->number : max;
        msg_list_free(&in);
        msg_list_free(&ob);
    }
    return max;
}

/* The newest message in NAME's inbox (referenced). */
static struct bus_message *newest_in(const char *name)
{
    struct msg_list l = inbox_of(name);
    CHECK(l.n > 0, "%s's inbox is empty", name);
    struct bus_message *m = l.m[l.n - 1];
    message_ref(m);
    msg_list_free(&l);
    return m;
}

/* ========== agents ========== */

BUS_TEST(agents_are_created_with_their_owner_and_listed)
{
    start(0, 0, 0);
    uint64_t a = agent("alice");
    uint64_t b = agent_as("bob", OTHER);
    cr_assert_neq(a, b);
    struct bus_agent_info info = info_of("bob");
    cr_assert_eq(info.id, b);
    cr_assert_eq(info.uid, OTHER);
    cr_assert(info.created_us >= UNIT_T0_US);
    cr_assert_not(info.draining);
    cr_assert_eq(info.depth, 0);
    struct bus_agent_info by_id;
    cr_assert_eq(bus_agent_by_id(the_bus, a, &by_id), 0);
    cr_assert_str_eq(by_id.name, "alice");
    cr_assert_eq(bus_agent_by_name(the_bus, "carol", &info), -ENOENT);
    static struct names ns;
    ns.n = 0;
    bus_agent_list(the_bus, 0, collect_name, &ns);
    cr_assert_eq(ns.n, 2);
}

BUS_TEST(bad_agent_names_are_refused_with_einval)
{
    start(0, 0, 0);
    char long65[66], long64[65];
    memset(long65, 'a', 65);
    long65[65] = '\0';
    memset(long64, 'a', 64);
    long64[64] = '\0';
    const char *bad[] = {"", "all", "with space", "a:b", long65, "1abc", "9", ".hidden",
                         "-dash", "_under", "a/b", "a\\b", "caf\xc3\xa9", "a\nb", "..", ".",
                         "tab\there", "a*", "x'y"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct bus_error err = {0};
        int rc = bus_agent_create(the_bus, bad[i], OWNER, OWNER, NULL, &err);
        cr_assert_eq(rc, -EINVAL, "'%s' gave %d", bad[i], rc);
        cr_assert_eq(err.code, EINVAL);
        cr_assert_neq(err.reason[0], '\0');
        cr_assert_not(bus_name_valid(bad[i]), "'%s'", bad[i]);
    }
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_eq(st.agents, 0, "nothing was registered");
    const char *good[] = {"a", "Z", long64, "alice.v2", "b_o-b", "All", "ALL", "x123"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        cr_assert(bus_name_valid(good[i]), "'%s'", good[i]);
        agent(good[i]);
    }
}

BUS_TEST(a_duplicate_agent_fails_with_eexist)
{
    start(0, 0, 0);
    agent("alice");
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_create(the_bus, "alice", OTHER, OTHER, NULL, &err), -EEXIST);
    cr_assert_eq(err.code, EEXIST);
    cr_assert_eq(info_of("alice").uid, OWNER, "the first owner stays");
}

BUS_TEST(agent_removal_checks_existence_and_owner)
{
    start(0, 0, 0);
    agent("alice");
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_remove(the_bus, "nobody", OWNER, &err), -ENOENT);
    cr_assert_eq(bus_agent_remove(the_bus, "alice", OTHER, &err), -EACCES);
    cr_assert_eq(err.code, EACCES);
    cr_assert_eq(bus_agent_remove(the_bus, "alice", OWNER, &err), 0);
    struct bus_agent_info info;
    cr_assert_eq(bus_agent_by_name(the_bus, "alice", &info), -ENOENT);
    agent_as("alice", OTHER);
    cr_assert_eq(bus_agent_remove(the_bus, "alice", 0, &err), 0, "root may remove any agent");
}

BUS_TEST(removing_an_agent_with_pending_messages_fails_with_enotempty)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "hi");
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), -ENOTEMPTY);
    cr_assert_eq(err.code, ENOTEMPTY);
    cr_assert_eq(depth_of("bob"), 1);
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, m->msg_id, OWNER, &err), 0);
    message_unref(m);
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), 0);
}

BUS_TEST(many_agents_come_and_go_and_survive_a_reopen)
{
    start(0, 0, 0);
    char name[32];
    for (int i = 0; i < 150; i++) {
        snprintf(name, sizeof name, "agent-%03d", 149 - i);
        agent(name);
    }
    send_ok("agent-000", "all", "hello\n");
    struct bus_error err = {0};
    for (int i = 1; i < 150; i += 2) {
        snprintf(name, sizeof name, "agent-%03d", i);
        struct bus_message *m = newest_in(name);
        cr_assert_eq(bus_ack(the_bus, id_of(name), m->number, NULL, OWNER, &err), 0);
        message_unref(m);
        cr_assert_eq(bus_agent_remove(the_bus, name, OWNER, &err), 0);
    }
    static struct names ns;
    ns.n = 0;
    bus_agent_list(the_bus, 0, collect_name, &ns);
    cr_assert_eq(ns.n, 75);
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_eq(st.agents, 75);
    cr_assert_eq(st.pending, 74);
    for (int i = 0; i < 150; i++) {
        snprintf(name, sizeof name, "agent-%03d", i);
        struct bus_agent_info info;
        cr_assert_eq(bus_agent_by_name(the_bus, name, &info), i % 2 ? -ENOENT : 0, "%s", name);
    }
    char *before = current_dump();
    reopen();
    char *after = current_dump();
    assert_same_state(before, after);
    free(before);
    free(after);
    bus_stats(the_bus, &st);
    cr_assert_eq(st.agents, 75);
}

/* ========== drafts (outbox/B) ========== */

BUS_TEST(a_draft_delivers_one_message_with_the_spec_envelope)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "build finished\n");
    json_t *env = only_message("bob");
    cr_assert_eq(json_object_size(env), 10, "exactly the SPEC fields");
    cr_assert_eq(jint(env, "version"), 1);
    cr_assert_str_eq(jstr(env, "from"), "alice");
    cr_assert_str_eq(jstr(env, "to"), "bob");
    cr_assert_str_eq(jstr(env, "payload"), "build finished");
    cr_assert_str_eq(jstr(env, "type"), "message");
    cr_assert_str_eq(jstr(env, "priority"), "normal");
    cr_assert(json_is_false(json_object_get(env, "requires_ack")));
    cr_assert_eq(jint(env, "sequence"), 1);
    const char *ts = jstr(env, "timestamp");
    cr_assert_eq(strlen(ts), BUS_TIME_LEN);
    cr_assert_eq(strncmp(ts, "2026-11-23T05:05:12.", 20), 0, "timestamp %s", ts);
    const char *id = jstr(env, "msg_id");
    cr_assert_eq(strncmp(id, "MSG-20261123-050512-", 20), 0, "%s", id);
    cr_assert_eq(message_id_number(id), 1);
    json_decref(env);

    struct bus_message *m = newest_in("bob");
    char name[BUS_FILE_NAME_LEN + 1];
    message_file_name(m, name);
    cr_assert_eq(message_parse_file_name(name, NULL), m->number);
    struct bus_message *got = bus_inbox_get(the_bus, id_of("bob"), m->number);
    cr_assert_eq(got, m);
    message_unref(got);
    got = bus_outbox_get(the_bus, id_of("alice"), m->number);
    cr_assert_eq(got, m, "the sender's outbox holds the same message");
    message_unref(got);
    message_unref(m);
    cr_assert_eq(info_of("bob").delivered_total, 1);
    cr_assert_eq(info_of("alice").outbox_count, 1);
}

BUS_TEST(json_text_and_binary_bodies_become_the_right_payloads)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "{\"task\":\"lint\",\"n\":0.1,\"big\":18446744073709551615}\n");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, "\xff\x00\x80", 3, &err), 0);
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0);
    bus_draft_close(the_bus, d);
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, 2);
    cr_assert_not_null(strstr(l.m[0]->envelope,
                              ",\"payload\":{\"task\":\"lint\",\"n\":0.1,"
                              "\"big\":18446744073709551615},"),
                       "%s", l.m[0]->envelope);
    json_t *b64 = env_json(l.m[1]);
    cr_assert_str_eq(jstr(b64, "payload"), "/wCA");
    cr_assert_str_eq(jstr(b64, "encoding"), "base64");
    json_decref(b64);
    msg_list_free(&l);
}

BUS_TEST(sequences_count_per_sender_recipient_pair)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    for (int i = 0; i < 3; i++)
        send_ok("alice", "bob", "a->b");
    send_ok("carol", "bob", "c->b");
    send_ok("alice", "carol", "a->c");
    send_ok("alice", "bob", "a->b");
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, 5);
    uint64_t want_seq[] = {1, 2, 3, 1, 4};
    for (size_t i = 0; i < l.n; i++) {
        cr_assert_eq(l.m[i]->sequence, want_seq[i], "message %zu", i);
        cr_assert_eq(l.m[i]->number, i == 4 ? 6 : i + 1, "delivery numbers are store-wide");
    }
    msg_list_free(&l);
    l = inbox_of("carol");
    cr_assert_eq(l.n, 1);
    cr_assert_eq(l.m[0]->sequence, 1);
    msg_list_free(&l);
}

BUS_TEST(several_writes_then_one_flush_send_one_message)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_str_eq(bus_draft_sender(d), "alice");
    cr_assert_eq(bus_draft_write(the_bus, d, "{\"a\":", 5, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, "1}\n", 3, &err), 0);
    cr_assert_eq(depth_of("bob"), 0, "nothing is sent before the flush");
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0);
    cr_assert_eq(depth_of("bob"), 1);
    /* A second flush with new bytes sends a second message. */
    cr_assert_eq(bus_draft_write(the_bus, d, "again\n", 6, &err), 0);
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0);
    bus_draft_close(the_bus, d);
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, 2);
    cr_assert_not_null(strstr(l.m[0]->envelope, "\"payload\":{\"a\":1},"));
    cr_assert_not_null(strstr(l.m[1]->envelope, "\"payload\":\"again\","));
    cr_assert_eq(l.m[1]->sequence, 2);
    msg_list_free(&l);
}

BUS_TEST(an_empty_flush_sends_nothing_and_releases_the_reservation)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(reserved_of("bob"), 1, "create reserves a slot");
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0);
    cr_assert_eq(depth_of("bob"), 0);
    cr_assert_eq(reserved_of("bob"), 0, "an empty flush frees the slot");
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0, "a second empty flush is harmless");
    /* The handle stays usable: a later write reserves again and the flush sends. */
    cr_assert_eq(bus_draft_write(the_bus, d, "late\n", 5, &err), 0);
    cr_assert_eq(reserved_of("bob"), 1);
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0);
    cr_assert_eq(depth_of("bob"), 1);
    cr_assert_eq(reserved_of("bob"), 0);
    bus_draft_close(the_bus, d);
    cr_assert_eq(reserved_of("bob"), 0);
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_eq(st.delivered_total, 1);
}

BUS_TEST(closing_an_unwritten_draft_sends_nothing)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    bus_draft_close(the_bus, d);
    cr_assert_eq(depth_of("bob"), 0);
    cr_assert_eq(reserved_of("bob"), 0);
}

BUS_TEST(a_draft_to_an_unknown_recipient_fails_with_enoent)
{
    start(0, 0, 0);
    agent("alice");
    struct bus_draft *d = NULL;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "nobody", OWNER, &d, &err), -ENOENT);
    cr_assert_eq(err.code, ENOENT);
    cr_assert_null(d);
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "all", OWNER, &d, &err), -ENOENT,
                 "alone on the bus, `all` has no recipient");
    cr_assert_eq(bus_draft_open(the_bus, 9999, "alice", OWNER, &d, &err), -ENOENT);
}

BUS_TEST(only_the_owner_or_root_may_open_a_draft_as_an_agent)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d = NULL;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OTHER, &d, &err), -EACCES);
    cr_assert_eq(err.code, EACCES);
    cr_assert_eq(reserved_of("bob"), 0);
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", 0, &d, &err), 0);
    bus_draft_close(the_bus, d);
}

BUS_TEST(a_draft_from_a_removed_sender_does_not_send_as_the_names_new_owner)
{
    /* alice (uid OWNER) starts a message, removes herself; uid OTHER registers "alice".
     * The old handle must not deliver a message "from alice" now owned by OTHER. */
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, "sent as whom?", 13, &err), 0);
    cr_assert_eq(bus_agent_remove(the_bus, "alice", OWNER, &err), 0);
    agent_as("alice", OTHER);
    int rc = bus_draft_flush(the_bus, d, &err);
    bus_draft_close(the_bus, d);
    cr_assert_lt(rc, 0, "the flush delivered a message from alice for a uid that no longer "
                        "owns the name");
    cr_assert_eq(depth_of("bob"), 0);
    cr_assert_eq(info_of("alice").outbox_count, 0);
}

BUS_TEST(a_write_after_the_sender_was_removed_fails_at_the_write)
{
    /* bash's echo ignores close() errors, so the refusal must come from write(). */
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(bus_agent_remove(the_bus, "alice", OWNER, &err), 0);
    int rc = bus_draft_write(the_bus, d, "orphan", 6, &err);
    int flushed = bus_draft_flush(the_bus, d, &err);
    bus_draft_close(the_bus, d);
    cr_assert_eq(depth_of("bob"), 0, "a removed agent sent a message");
    cr_assert_eq(reserved_of("bob"), 0);
    cr_assert_lt(rc, 0, "the write was accepted, then the flush failed with %d: the writer "
                        "never learns that nothing was sent", flushed);
}

/* ========== capacity and reservations ========== */

BUS_TEST(a_full_inbox_refuses_a_new_draft_with_eagain_and_evicts_nothing)
{
    start(3, 0, 0);
    agent("alice");
    agent("bob");
    for (int i = 0; i < 3; i++)
        send_ok("alice", "bob", "m");
    struct msg_list before = inbox_of("bob");
    struct bus_draft *d = NULL;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), -EAGAIN);
    cr_assert_eq(err.code, EAGAIN);
    cr_assert_null(d);
    struct msg_list after = inbox_of("bob");
    cr_assert_eq(after.n, 3);
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(after.m[i], before.m[i], "message %zu is still the same", i);
    cr_assert_eq(reserved_of("bob"), 0);
    msg_list_free(&before);
    msg_list_free(&after);

    /* Consuming one frees one slot. */
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, NULL, OWNER, &err), 0);
    message_unref(m);
    send_ok("alice", "bob", "fits again");
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), -EAGAIN);
}

BUS_TEST(reservations_count_toward_capacity)
{
    start(3, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    struct bus_draft *d[3];
    struct bus_error err = {0};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(bus_draft_open(the_bus, id_of(i ? "carol" : "alice"), "bob", OWNER, &d[i],
                                    &err), 0);
    cr_assert_eq(reserved_of("bob"), 3);
    struct bus_draft *extra = NULL;
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &extra, &err), -EAGAIN);
    unsigned n;
    cr_assert_eq(send_json("alice", "{\"to\":\"bob\",\"payload\":1}", &n, &err), -EAGAIN,
                 "a send record counts reserved slots too");
    cr_assert_eq(n, 0);
    bus_draft_close(the_bus, d[0]);
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &extra, &err), 0);
    /* The reserved slots deliver. */
    cr_assert_eq(bus_draft_write(the_bus, extra, "x", 1, &err), 0);
    cr_assert_eq(bus_draft_flush(the_bus, extra, &err), 0);
    bus_draft_close(the_bus, extra);
    for (int i = 1; i < 3; i++) {
        cr_assert_eq(bus_draft_write(the_bus, d[i], "y", 1, &err), 0);
        cr_assert_eq(bus_draft_flush(the_bus, d[i], &err), 0);
        bus_draft_close(the_bus, d[i]);
    }
    cr_assert_eq(depth_of("bob"), 3);
    cr_assert_eq(reserved_of("bob"), 0);
}

BUS_TEST(a_reservation_makes_rmdir_fail_with_ebusy)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), -EBUSY);
    cr_assert_eq(err.code, EBUSY);
    bus_draft_close(the_bus, d);
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), 0);
}

BUS_TEST(a_write_after_an_empty_flush_fails_with_eagain_when_the_inbox_filled_meanwhile)
{
    start(1, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0); /* bash's early empty flush */
    send_ok("carol", "bob", "took the slot");
    cr_assert_eq(bus_draft_write(the_bus, d, "late", 4, &err), -EAGAIN);
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), -EAGAIN, "the handle is poisoned");
    bus_draft_close(the_bus, d);
    cr_assert_eq(depth_of("bob"), 1);
    cr_assert_eq(reserved_of("bob"), 0);
}

/* ========== size and space ========== */

BUS_TEST(a_message_over_max_message_size_fails_with_efbig_and_sends_nothing)
{
    start(0, 100, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d;
    struct bus_error err = {0};
    char body[101];
    memset(body, 'x', sizeof body);
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, body, 100, &err), 0, "exactly the limit fits");
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0);
    cr_assert_eq(depth_of("bob"), 1);
    bus_draft_close(the_bus, d);

    /* Split writes: the third part crosses the limit; the first two must not go out. */
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, body, 40, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, body, 40, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, body, 21, &err), -EFBIG);
    cr_assert_eq(err.code, EFBIG);
    cr_assert_eq(reserved_of("bob"), 0, "a poisoned draft holds no slot");
    cr_assert_eq(bus_draft_write(the_bus, d, "y", 1, &err), -EFBIG, "later writes fail too");
    cr_assert_lt(bus_draft_flush(the_bus, d, &err), 0);
    bus_draft_close(the_bus, d);
    cr_assert_eq(depth_of("bob"), 1, "the poisoned draft sent nothing");
    cr_assert_eq(reserved_of("bob"), 0);
}

BUS_TEST(a_send_payload_over_max_message_size_fails_with_efbig)
{
    start(0, 100, 0);
    agent("alice");
    agent("bob");
    char rec[400];
    snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":\"%0150d\"}", 0);
    struct bus_error err = {0};
    unsigned n;
    cr_assert_eq(send_json("alice", rec, &n, &err), -EFBIG);
    cr_assert_eq(depth_of("bob"), 0);
}

BUS_TEST(an_unfinished_send_record_beyond_the_size_limit_fails_with_efbig)
{
    start(0, 100, 0);
    agent("alice");
    agent("bob");
    struct buf pending;
    buf_init(&pending);
    struct bus_error err = {0};
    unsigned n;
    uint64_t alice = id_of("alice");
    const char *head = "{\"to\":\"bob\",\"payload\":\"";
    cr_assert_eq(bus_send_write(the_bus, alice, OWNER, &pending, head, strlen(head), &n, &err),
                 0);
    static char chunk[70000];
    memset(chunk, 'x', sizeof chunk);
    cr_assert_eq(bus_send_write(the_bus, alice, OWNER, &pending, chunk, sizeof chunk, &n, &err),
                 -EFBIG, "an endless record must not grow the pending buffer for ever");
    cr_assert_eq(pending.len, 0);
    buf_free(&pending);
    cr_assert_eq(depth_of("bob"), 0);
}

BUS_TEST(a_full_store_fails_the_write_with_enospc)
{
    start(0, 0, 4096);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "small messages still fit");
    struct bus_draft *d;
    struct bus_error err = {0};
    char body[3600];
    memset(body, 'z', sizeof body);
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, body, sizeof body, &err), -ENOSPC, "%s", err.reason);
    cr_assert_eq(err.code, ENOSPC);
    cr_assert_lt(bus_draft_flush(the_bus, d, &err), 0);
    bus_draft_close(the_bus, d);
    cr_assert_eq(depth_of("bob"), 1);
    cr_assert_eq(reserved_of("bob"), 0);

    char rec[3800];
    snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":\"%.3600s\"}", body);
    unsigned n;
    cr_assert_eq(send_json("alice", rec, &n, &err), -ENOSPC);
    cr_assert_eq(depth_of("bob"), 1);
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_leq(st.store_bytes, 4096);
    cr_assert_eq(st.store_max_bytes, 4096);
}

BUS_TEST(the_store_never_grows_past_store_max_bytes)
{
    /* ENOSPC must come before the store passes its limit, also for the largest envelope
     * a small record makes: longest names, a correlation_id of 256 escaped characters
     * (a 1538-byte token), a long type. */
    enum { MAX = 64 * 1024 };
    start(0, 0, MAX);
    char from[BUS_NAME_MAX + 1], to[BUS_NAME_MAX + 1];
    snprintf(from, sizeof from, "f%063d", 1);
    snprintf(to, sizeof to, "t%063d", 2);
    agent(from);
    agent(to);
    struct buf rec;
    buf_init(&rec);
    buf_printf(&rec, "{\"to\":\"%s\",\"payload\":1,\"type\":\"%0128d\",\"correlation_id\":\"",
               to, 0);
    for (int i = 0; i < 256; i++)
        buf_puts(&rec, "\\u0001");
    buf_puts(&rec, "\",\"priority\":\"urgent\",\"requires_ack\":true}");
    struct bus_stats st;
    struct bus_error err = {0};
    int sent = 0, rc = 0;
    uint64_t most = 0;
    while (sent < 1000) {
        unsigned n;
        rc = send_json(from, rec.data, &n, &err);
        bus_stats(the_bus, &st);
        most = st.store_bytes > most ? st.store_bytes : most;
        if (rc < 0)
            break;
        sent++;
    }
    buf_free(&rec);
    cr_assert_eq(rc, -ENOSPC, "after %d records: %d %s", sent, rc, err.reason);
    cr_assert_gt(sent, 0);
    cr_assert_leq(most, MAX, "after %d records the store held %" PRIu64 " bytes, over "
                  "--store-max-bytes %d", sent, most, MAX);
}

BUS_TEST(consumed_messages_do_not_fill_the_store_for_good)
{
    /* The journal keeps consumed messages until a compaction; the space check compacts
     * before it refuses. The store must hold the live state (here: alice's outbox, at
     * most BUS_OUTBOX_KEEP envelopes of about 300 bytes) but not the whole history. */
    start(0, 0, 512 * 1024);
    agent("alice");
    agent("bob");
    struct bus_error err = {0};
    enum { SENDS = 2500 };
    for (int i = 0; i < SENDS; i++) {
        int rc = send_text("alice", "bob", "a message of modest size, sent and consumed", &err);
        cr_assert_eq(rc, 0, "send %d: %s", i, err.reason);
        struct bus_message *m = newest_in("bob");
        cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, NULL, OWNER, &err), 0);
        message_unref(m);
    }
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_leq(st.store_bytes, 512 * 1024);
    cr_assert_eq(st.delivered_total, SENDS);
    cr_assert_eq(st.pending, 0);
    reopen();
    send_ok("alice", "bob", "still fine");
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(m->sequence, SENDS + 1);
    cr_assert_eq(m->number, SENDS + 1);
    message_unref(m);
}

enum { FULL_MAX = 256 * 1024, FULL_BODY = 12000 };

/* A FULL_MAX store with alice, bob and carol, filled with alice's FULL_BODY-byte
 * messages to bob until a send gets ENOSPC. Returns how many were taken; *body (the caller frees
 * it) is the text they carried. */
static int fill_store_alice_to_bob(char **body)
{
    start(0, 0, FULL_MAX);
    agent("alice");
    agent("bob");
    agent("carol");
    *body = malloc(FULL_BODY + 1);
    cr_assert_not_null(*body);
    memset(*body, 'y', FULL_BODY);
    (*body)[FULL_BODY] = '\0';
    struct bus_error err = {0};
    int sent = 0, rc;
    while ((rc = send_text("alice", "bob", *body, &err)) == 0)
        sent++;
    cr_assert_eq(rc, -ENOSPC, "%s", err.reason);
    return sent;
}

BUS_TEST(the_outbox_history_of_consumed_messages_gives_way_to_new_sends)
{
    /* Sent copies stay in the sender's outbox (the newest BUS_OUTBOX_KEEP) after bob
     * consumed them. When only they fill the store, they must not refuse every send
     * from then on: the oldest consumed copies go, the pending ones stay listed. */
    char *body;
    int sent = fill_store_alice_to_bob(&body);
    cr_assert_gt(sent, 5);
    struct bus_error err = {0};
    int rc;
    struct msg_list in = inbox_of("bob");
    cr_assert_eq(in.n, (size_t)sent);
    for (size_t i = 0; i + 1 < in.n; i++) /* the newest stays pending */
        cr_assert_eq(bus_ack(the_bus, id_of("bob"), in.m[i]->number, NULL, OWNER, &err), 0);
    uint64_t pending_number = in.m[in.n - 1]->number;
    msg_list_free(&in);
    for (int i = 0; i < 3; i++) {
        rc = send_text("carol", "bob", body, &err);
        cr_assert_eq(rc, 0, "send %d after bob consumed: %s", i, err.reason);
    }
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_leq(st.store_bytes, FULL_MAX);
    struct msg_list out = outbox_of("alice");
    bool listed = false;
    for (size_t i = 0; i < out.n; i++)
        listed = listed || out.m[i]->number == pending_number;
    cr_assert(listed, "the copy of the message still pending stays in alice's outbox");
    cr_assert_lt(out.n, (size_t)sent, "consumed copies went");
    msg_list_free(&out);
    reopen();
    cr_assert_eq(depth_of("bob"), 4);
    free(body);
}

BUS_TEST(a_store_reopened_full_of_outbox_history_takes_sends_again)
{
    /* The same history, restarted before any send: nothing changes in the bus until a
     * send is taken, so the first one must already make room. */
    char *body;
    fill_store_alice_to_bob(&body);
    struct bus_error err = {0};
    struct msg_list in = inbox_of("bob");
    for (size_t i = 0; i < in.n; i++)
        cr_assert_eq(bus_ack(the_bus, id_of("bob"), in.m[i]->number, NULL, OWNER, &err), 0);
    msg_list_free(&in);
    reopen();
    cr_assert_eq(send_text("alice", "bob", body, &err), 0, "%s", err.reason);
    cr_assert_eq(depth_of("bob"), 1);
    free(body);
}

/* The snapshot's inode: each compaction writes a new file in its place. */
static ino_t snapshot_ino(void)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/snapshot", store_dir);
    struct stat st;
    return stat(path, &st) == 0 ? st.st_ino : 0;
}

BUS_TEST(a_growing_backlog_is_not_rewritten_but_a_consumed_one_is_compacted)
{
    /* Compacting a store whose messages are all still pending gives nothing back and
     * costs a rewrite of all of them: with the journal's threshold at 2 MiB (a quarter
     * of --store-max-bytes), 7 MiB of pending messages are snapshotted at most once. */
    start(100000, 0, UINT64_C(8) << 20);
    agent("alice");
    agent("bob");
    struct bus_error err = {0};
    char body[300];
    memset(body, 'x', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    int rewrites = 0, sent = 0;
    ino_t ino = snapshot_ino();
    struct bus_stats st;
    do {
        cr_assert_eq(send_text("alice", "bob", body, &err), 0, "send %d: %s", sent, err.reason);
        sent++;
        if (snapshot_ino() != ino) {
            ino = snapshot_ino();
            rewrites++;
        }
        bus_stats(the_bus, &st);
    } while (st.store_bytes < (UINT64_C(7) << 20));
    cr_assert_leq(rewrites, 1, "%d snapshots written for %d pending messages", rewrites, sent);
    /* Consumed, the same messages are dead weight: the commits past the threshold
     * compact them away (what stays: alice's outbox, the journal since). */
    uint64_t bob = id_of("bob");
    for (int i = 1; i <= sent; i++) {
        struct bus_message *m = newest_in("bob");
        cr_assert_not_null(m);
        cr_assert_eq(bus_ack(the_bus, bob, m->number, NULL, OWNER, &err), 0, "%s", err.reason);
        message_unref(m);
    }
    send_ok("alice", "bob", "one more");
    bus_stats(the_bus, &st);
    cr_assert_lt(st.store_bytes, UINT64_C(5) << 20, "%" PRIu64 " bytes after all was consumed",
                 st.store_bytes);
    cr_assert_neq(snapshot_ino(), ino, "no compaction after all was consumed");
    cr_assert_eq(st.pending, 1);
}

BUS_TEST(a_large_state_with_few_messages_still_compacts_what_is_consumed)
{
    /* A snapshot made mostly of agents, then a few hundred pending messages and a
     * stream of messages sent and consumed: the consumed ones are compacted away as the
     * journal passes its threshold (2 MiB here), long before the store is full. */
    start(100000, 0, UINT64_C(8) << 20);
    char name[32];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "agent-with-a-long-name-%04d", i);
        agent(name);
    }
    agent("alice");
    agent("bob");
    agent("carol");
    send_ok("alice", "bob", "the one message of the first snapshot");
    cr_assert_eq(bus_compact(the_bus), 0);
    char body[300];
    memset(body, 'y', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    for (int i = 0; i < 200; i++)
        send_ok("alice", "bob", body);
    struct bus_error err = {0};
    struct bus_stats st;
    uint64_t most = 0, carol = id_of("carol");
    for (int i = 0; i < 15000; i++) {
        cr_assert_eq(send_text("alice", "carol", body, &err), 0, "send %d: %s", i, err.reason);
        struct bus_message *m = newest_in("carol");
        cr_assert_eq(bus_ack(the_bus, carol, m->number, NULL, OWNER, &err), 0, "%s", err.reason);
        message_unref(m);
        bus_stats(the_bus, &st);
        if (st.store_bytes > most)
            most = st.store_bytes;
    }
    cr_assert_lt(most, UINT64_C(4) << 20, "the store reached %" PRIu64 " bytes", most);
    cr_assert_eq(st.pending, 201);
}

/* ========== broadcast ========== */

BUS_TEST(a_broadcast_delivers_one_envelope_per_other_agent)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    agent("dave");
    ctl("dave", "drain");
    send_ok("alice", "all", "hello everyone\n");
    cr_assert_eq(depth_of("alice"), 0, "not to the sender");
    cr_assert_eq(depth_of("dave"), 0, "not to a draining agent");
    json_t *b = only_message("bob"), *c = only_message("carol");
    cr_assert_str_eq(jstr(b, "to"), "bob");
    cr_assert_str_eq(jstr(c, "to"), "carol");
    cr_assert_str_neq(jstr(b, "msg_id"), jstr(c, "msg_id"));
    cr_assert_str_eq(jstr(b, "payload"), "hello everyone");
    cr_assert_eq(jint(b, "sequence"), 1);
    cr_assert_eq(jint(c, "sequence"), 1);
    json_decref(b);
    json_decref(c);
    cr_assert_eq(info_of("alice").outbox_count, 2);
}

BUS_TEST(a_broadcast_is_all_or_nothing_when_one_recipient_is_full)
{
    start(2, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    agent("dave");
    send_ok("bob", "carol", "1");
    send_ok("bob", "carol", "2");
    struct bus_draft *d = NULL;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "all", OWNER, &d, &err), -EAGAIN);
    cr_assert_not_null(strstr(err.reason, "carol"), "%s", err.reason);
    cr_assert_eq(reserved_of("bob"), 0, "no slot is left reserved");
    cr_assert_eq(reserved_of("dave"), 0);
    unsigned n;
    cr_assert_eq(send_json("alice", "{\"to\":\"all\",\"payload\":\"x\"}", &n, &err), -EAGAIN);
    cr_assert_eq(n, 0);
    cr_assert_eq(depth_of("bob"), 0);
    cr_assert_eq(depth_of("dave"), 0);
    cr_assert_eq(depth_of("carol"), 2);
    /* With room again, the same broadcast reaches everybody. */
    struct bus_message *m = newest_in("carol");
    cr_assert_eq(bus_ack(the_bus, id_of("carol"), m->number, NULL, OWNER, &err), 0);
    message_unref(m);
    send_json_ok("alice", "{\"to\":\"all\",\"payload\":\"x\"}", 3);
}

/* Whether a draft from FROM to TARGET accepts a body of len bytes of 0xff at write. */
static bool write_accepted(const char *from, const char *target, const char *body, size_t len)
{
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of(from), target, OWNER, &d, &err), 0, "%s",
                 err.reason);
    int rc = bus_draft_write(the_bus, d, body, len, &err);
    bus_draft_close(the_bus, d);
    cr_assert(rc == 0 || rc == -EFBIG || rc == -ENOSPC, "write of %zu bytes: %d", len, rc);
    return rc == 0;
}

BUS_TEST(the_largest_broadcast_a_write_accepts_commits_at_flush)
{
    /* Longest names and a binary (base64) body make each envelope as large as it gets;
     * the size check at write must not undercount what the flush then commits. */
    start(0, 0, UINT64_C(4) << 30);
    size_t max = 1u << 20; /* the default --max-message-size */
    /* Enough recipients that a max-size body (4/3 larger in base64) outgrows a commit. */
    const int AGENTS = (int)(STORE_MAX_RECORD / (max / 3 * 4)) + 3;
    char name[BUS_NAME_MAX + 1], sender[BUS_NAME_MAX + 1];
    for (int i = 0; i < AGENTS; i++) {
        snprintf(name, sizeof name, "a%063d", i);
        agent(name);
        if (i == 0)
            memcpy(sender, name, sizeof sender);
    }
    char *body = malloc(max);
    cr_assert_not_null(body);
    memset(body, 0xff, max);
    cr_assert(write_accepted(sender, "all", body, 1));
    cr_assert_not(write_accepted(sender, "all", body, max),
                  "with %d recipients a max-size body must outgrow one commit", AGENTS - 1);
    size_t lo = 1, hi = max; /* lo is accepted, hi is not */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (write_accepted(sender, "all", body, mid))
            lo = mid;
        else
            hi = mid;
    }
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of(sender), "all", OWNER, &d, &err), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, body, lo, &err), 0);
    int rc = bus_draft_flush(the_bus, d, &err);
    bus_draft_close(the_bus, d);
    free(body);
    cr_assert_eq(rc, 0, "a %zu-byte broadcast to %d recipients was accepted at write, then the "
                        "flush failed with %d (%s)", lo, AGENTS - 1, rc, err.reason);
    snprintf(name, sizeof name, "a%063d", AGENTS - 1);
    cr_assert_eq(depth_of(name), 1);
}

BUS_TEST(a_broadcast_reserves_a_slot_in_every_recipient)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "all", OWNER, &d, &err), 0);
    cr_assert_eq(reserved_of("bob"), 1);
    cr_assert_eq(reserved_of("carol"), 1);
    cr_assert_eq(reserved_of("alice"), 0);
    cr_assert_eq(bus_agent_remove(the_bus, "carol", OWNER, &err), -EBUSY);
    bus_draft_close(the_bus, d);
    cr_assert_eq(reserved_of("bob"), 0);
    cr_assert_eq(reserved_of("carol"), 0);
}

/* ========== send records ========== */

BUS_TEST(one_send_write_may_carry_several_records)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    send_json_ok("alice",
                 "{\"to\":\"bob\",\"payload\":1}\n"
                 "{\"to\":\"carol\",\"payload\":{\"x\":[1,\n2]}}"
                 "  {\"to\":\"bob\",\"payload\":\"three\",\"type\":\"note\"}\n\n",
                 3);
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, 2);
    cr_assert_eq(l.m[0]->sequence, 1);
    cr_assert_eq(l.m[1]->sequence, 2);
    json_t *v = env_json(l.m[1]);
    cr_assert_str_eq(jstr(v, "type"), "note");
    json_decref(v);
    msg_list_free(&l);
    l = inbox_of("carol");
    cr_assert_eq(l.n, 1);
    cr_assert_not_null(strstr(l.m[0]->envelope, "\"payload\":{\"x\":[1,2]},"), "%s",
                       l.m[0]->envelope);
    msg_list_free(&l);
}

BUS_TEST(a_broadcast_and_direct_records_in_one_write_number_each_pair_in_order)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    send_json_ok("alice",
                 "{\"to\":\"all\",\"payload\":1}{\"to\":\"bob\",\"payload\":2}"
                 "{\"to\":\"all\",\"payload\":3}",
                 5);
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, 3);
    for (size_t i = 0; i < l.n; i++)
        cr_assert_eq(l.m[i]->sequence, i + 1);
    cr_assert_not_null(strstr(l.m[1]->envelope, "\"payload\":2,"));
    msg_list_free(&l);
    l = inbox_of("carol");
    cr_assert_eq(l.n, 2);
    cr_assert_eq(l.m[1]->sequence, 2);
    cr_assert_not_null(strstr(l.m[1]->envelope, "\"payload\":3,"));
    msg_list_free(&l);
    l = outbox_of("alice");
    cr_assert_eq(l.n, 5);
    for (size_t i = 0; i < l.n; i++)
        cr_assert_eq(l.m[i]->number, i + 1, "one write, consecutive numbers");
    msg_list_free(&l);
}

BUS_TEST(a_send_record_carries_every_field_into_the_envelope)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_json_ok("alice",
                 "{\"to\":\"bob\",\"type\":\"task-delegation\",\"payload\":{\"task\":\"x\","
                 "\"n\":0.1},\"requires_ack\":true,\"priority\":\"urgent\","
                 "\"correlation_id\":\"c-42\",\"from\":\"alice\"}",
                 1);
    json_t *env = only_message("bob");
    cr_assert_eq(json_object_size(env), 11);
    cr_assert_str_eq(jstr(env, "type"), "task-delegation");
    cr_assert_str_eq(jstr(env, "priority"), "urgent");
    cr_assert_str_eq(jstr(env, "correlation_id"), "c-42");
    cr_assert(json_is_true(json_object_get(env, "requires_ack")));
    cr_assert_str_eq(jstr(env, "from"), "alice");
    json_decref(env);
    struct bus_message *m = newest_in("bob");
    cr_assert(m->requires_ack);
    cr_assert_not_null(strstr(m->envelope, "\"payload\":{\"task\":\"x\",\"n\":0.1},"));
    message_unref(m);
}

BUS_TEST(a_record_split_across_writes_is_delivered_by_the_write_that_completes_it)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    const char *rec = "{\"to\":\"bob\",\"payload\":{\"s\":\"caf\xc3\xa9 \\u00e9\",\"n\":-12.5e3}}\n";
    size_t len = strlen(rec);
    uint64_t id = id_of("alice");
    for (size_t cut = 1; cut < len; cut++) {
        struct buf pending;
        buf_init(&pending);
        struct bus_error err = {0};
        unsigned n = 99;
        cr_assert_eq(bus_send_write(the_bus, id, OWNER, &pending, rec, cut, &n, &err), 0,
                     "cut %zu: %s", cut, err.reason);
        bool complete = cut >= len - 1; /* only the newline is missing */
        cr_assert_eq(n, complete ? 1u : 0u, "cut %zu delivered %u", cut, n);
        cr_assert_eq(bus_send_write(the_bus, id, OWNER, &pending, rec + cut, len - cut, &n,
                                    &err), 0, "cut %zu: %s", cut, err.reason);
        cr_assert_eq(n, complete ? 0u : 1u, "cut %zu second write delivered %u", cut, n);
        buf_free(&pending);
    }
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, len - 1);
    for (size_t i = 0; i < l.n; i++) {
        cr_assert_eq(l.m[i]->sequence, i + 1);
        cr_assert_not_null(strstr(l.m[i]->envelope,
                                  "\"payload\":{\"s\":\"caf\xc3\xa9 \\u00e9\",\"n\":-12.5e3},"));
    }
    msg_list_free(&l);
}

BUS_TEST(a_write_delivers_the_records_it_completes_and_keeps_the_unfinished_one)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct buf pending;
    buf_init(&pending);
    struct bus_error err = {0};
    unsigned n;
    const char *w1 = "{\"to\":\"bob\",\"payload\":1}{\"to\":\"bob\",\"pay";
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, w1, strlen(w1), &n,
                                &err), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(depth_of("bob"), 1);
    const char *w2 = "load\":2}";
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, w2, strlen(w2), &n,
                                &err), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(pending.len, 0);
    cr_assert_eq(depth_of("bob"), 2);
    buf_free(&pending);
}

BUS_TEST(an_invalid_record_fails_the_whole_write_and_delivers_nothing)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    const char *bad[] = {
        "{\"to\":\"bob\",\"payload\":1}\n{\"to\":\"bob\",\"payload\":}\n",
        "{\"to\":\"bob\",\"payload\":1}\n[1,2]\n",
        "{\"to\":\"bob\",\"payload\":1}\nhello\n",
        "{\"to\":\"bob\",\"payload\":1}{\"to\":\"bob\"}",
        "{\"to\":\"bob\",\"payload\":1}{\"payload\":1}",
        "{\"to\":\"bob\",\"payload\":1}{\"to\":\"bob\",\"payload\":1,\"to\":\"bob\"}",
        "{\"to\":\"bob\",\"payload\":1}{\"to\":\"bob\",\"payload\":01}",
        "{\"to\":\"bob\",\"payload\":1}{\"to\":\"bob\",\"payload\":1,}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct bus_error err = {0};
        unsigned n = 99;
        cr_assert_eq(send_json("alice", bad[i], &n, &err), -EINVAL, "case %zu", i);
        cr_assert_eq(err.code, EINVAL);
        cr_assert_neq(err.reason[0], '\0');
        cr_assert_eq(n, 0);
        cr_assert_eq(depth_of("bob"), 0, "case %zu delivered something", i);
    }
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_eq(st.delivered_total, 0);
}

BUS_TEST(a_rejected_write_discards_the_unfinished_record_before_it)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct buf pending;
    buf_init(&pending);
    struct bus_error err = {0};
    unsigned n;
    const char *w1 = "{\"to\":\"bob\",";
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, w1, strlen(w1), &n,
                                &err), 0);
    const char *w2 = "\"payload\":1} garbage";
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, w2, strlen(w2), &n,
                                &err), -EINVAL);
    cr_assert_eq(depth_of("bob"), 0);
    cr_assert_eq(pending.len, 0);
    const char *w3 = "{\"to\":\"bob\",\"payload\":3}";
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, w3, strlen(w3), &n,
                                &err), 0);
    cr_assert_eq(n, 1);
    buf_free(&pending);
}

BUS_TEST(unknown_fields_and_bad_types_fail_with_einval)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    const char *bad[] = {
        "{\"to\":\"bob\",\"payload\":1,\"colour\":\"red\"}",
        "{\"to\":\"bob\",\"payload\":1,\"msg_id\":\"x\"}",
        "{\"to\":\"bob\",\"payload\":1,\"sequence\":3}",
        "{\"to\":7,\"payload\":1}",
        "{\"to\":[\"bob\"],\"payload\":1}",
        "{\"to\":\"not a name\",\"payload\":1}",
        "{\"to\":\"bob\",\"payload\":1,\"type\":3}",
        "{\"to\":\"bob\",\"payload\":1,\"type\":\"\"}",
        "{\"to\":\"bob\",\"payload\":1,\"requires_ack\":\"yes\"}",
        "{\"to\":\"bob\",\"payload\":1,\"requires_ack\":1}",
        "{\"to\":\"bob\",\"payload\":1,\"priority\":\"high\"}",
        "{\"to\":\"bob\",\"payload\":1,\"priority\":1}",
        "{\"to\":\"bob\",\"payload\":1,\"correlation_id\":42}",
        "{\"to\":\"bob\",\"payload\":1,\"from\":42}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct bus_error err = {0};
        unsigned n;
        int rc = send_json("alice", bad[i], &n, &err);
        cr_assert_eq(rc, -EINVAL, "'%s' gave %d", bad[i], rc);
        cr_assert_eq(depth_of("bob"), 0);
    }
}

BUS_TEST(a_recipient_name_with_an_escaped_nul_is_not_that_agent)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_error err = {0};
    unsigned n;
    int rc = send_json("alice", "{\"to\":\"bob\\u0000evil\",\"payload\":1}", &n, &err);
    cr_assert_lt(rc, 0, "\"bob\\u0000evil\" was delivered to bob");
    cr_assert_eq(depth_of("bob"), 0);
}

BUS_TEST(a_forged_from_fails_with_eacces)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    agent("mallory");
    struct bus_error err = {0};
    unsigned n;
    cr_assert_eq(send_json("mallory", "{\"to\":\"bob\",\"payload\":1,\"from\":\"alice\"}", &n,
                           &err), -EACCES);
    cr_assert_eq(err.code, EACCES);
    cr_assert_eq(depth_of("bob"), 0);
    /* And the whole write fails, the honest record included. */
    cr_assert_eq(send_json("mallory",
                           "{\"to\":\"bob\",\"payload\":1}{\"to\":\"bob\",\"payload\":2,"
                           "\"from\":\"alice\"}", &n, &err), -EACCES);
    cr_assert_eq(depth_of("bob"), 0);
    /* Naming oneself is fine. */
    send_json_ok("mallory", "{\"to\":\"bob\",\"payload\":1,\"from\":\"mallory\"}", 1);
}

BUS_TEST(only_the_owner_or_root_may_write_an_agents_send_file)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct buf pending;
    buf_init(&pending);
    struct bus_error err = {0};
    unsigned n;
    const char *rec = "{\"to\":\"bob\",\"payload\":1}";
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OTHER, &pending, rec, strlen(rec), &n,
                                &err), -EACCES);
    cr_assert_eq(depth_of("bob"), 0);
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), 0, &pending, rec, strlen(rec), &n,
                                &err), 0);
    cr_assert_eq(depth_of("bob"), 1);
    buf_free(&pending);
}

BUS_TEST(an_unknown_recipient_fails_with_enoent_and_delivers_nothing)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_error err = {0};
    unsigned n;
    cr_assert_eq(send_json("alice",
                           "{\"to\":\"bob\",\"payload\":1}{\"to\":\"nobody\",\"payload\":2}", &n,
                           &err), -ENOENT);
    cr_assert_eq(err.code, ENOENT);
    cr_assert_eq(depth_of("bob"), 0);
}

BUS_TEST(a_send_write_is_all_or_nothing_against_capacity)
{
    start(2, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "one");
    struct bus_error err = {0};
    unsigned n;
    cr_assert_eq(send_json("alice", "{\"to\":\"bob\",\"payload\":2}{\"to\":\"bob\",\"payload\":3}",
                           &n, &err), -EAGAIN);
    cr_assert_eq(depth_of("bob"), 1);
    send_json_ok("alice", "{\"to\":\"bob\",\"payload\":2}", 1);
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(m->sequence, 2, "the rejected write consumed no sequence number");
    message_unref(m);
}

/* ========== acks ========== */

BUS_TEST(an_ack_of_a_requires_ack_message_sends_an_ack_to_the_sender)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_json_ok("alice",
                 "{\"to\":\"bob\",\"payload\":{\"task\":1},\"requires_ack\":true,"
                 "\"correlation_id\":\"c-1\"}",
                 1);
    struct bus_message *m = newest_in("bob");
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ack %s\n", m->msg_id);
    cr_assert_eq(ctl("bob", cmd), 0);
    cr_assert_eq(depth_of("bob"), 0, "the acked message is consumed");
    cr_assert_eq(info_of("bob").acked_total, 1);
    json_t *ack = only_message("alice");
    cr_assert_str_eq(jstr(ack, "type"), "ack");
    cr_assert_str_eq(jstr(ack, "from"), "bob");
    cr_assert_str_eq(jstr(ack, "to"), "alice");
    cr_assert_str_eq(jstr(ack, "correlation_id"), "c-1");
    cr_assert(json_is_false(json_object_get(ack, "requires_ack")));
    cr_assert_eq(jint(ack, "sequence"), 1);
    json_t *p = json_object_get(ack, "payload");
    cr_assert(json_is_object(p));
    cr_assert_eq(json_object_size(p), 1);
    cr_assert_str_eq(jstr(p, "ack"), m->msg_id);
    json_decref(ack);
    message_unref(m);
}

BUS_TEST(an_ack_without_requires_ack_only_consumes)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "fyi");
    struct bus_message *m = newest_in("bob");
    struct bus_error err = {0};
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, m->msg_id, OWNER, &err), 0);
    message_unref(m);
    cr_assert_eq(depth_of("bob"), 0);
    cr_assert_eq(depth_of("alice"), 0);
}

BUS_TEST(acks_ignore_the_senders_capacity_and_drain_state)
{
    start(1, 0, 0);
    agent("alice");
    agent("bob");
    agent("carol");
    send_json_ok("alice", "{\"to\":\"bob\",\"payload\":1,\"requires_ack\":true}", 1);
    send_ok("carol", "alice", "fills alice");
    cr_assert_eq(ctl("alice", "drain"), 0);
    struct bus_message *m = newest_in("bob");
    struct bus_error err = {0};
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, NULL, OWNER, &err), 0, "%s",
                 err.reason);
    message_unref(m);
    cr_assert_eq(depth_of("alice"), 2, "the ack is delivered beyond capacity");
}

BUS_TEST(an_ack_whose_sender_is_gone_is_dropped_and_logged)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_json_ok("alice", "{\"to\":\"bob\",\"payload\":1,\"requires_ack\":true}", 1);
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_remove(the_bus, "alice", OWNER, &err), 0);
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, m->msg_id, OWNER, &err), 0, "%s",
                 err.reason);
    cr_assert_eq(depth_of("bob"), 0);
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_eq(st.pending, 0, "the ack went nowhere");
    cr_assert_eq(st.delivered_total, 1);
    struct buf log;
    buf_init(&log);
    bus_errors_read(the_bus, 0, 0, 1 << 20, &log);
    cr_assert_not_null(log.data);
    cr_assert_not_null(strstr(log.data, "dropped"), "errors: %s", log.data);
    cr_assert_not_null(strstr(log.data, m->msg_id));
    buf_free(&log);
    /* A new alice does not receive the old ack. */
    agent("alice");
    cr_assert_eq(depth_of("alice"), 0);
    message_unref(m);
}

BUS_TEST(an_ack_checks_owner_number_and_msg_id)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "x");
    struct bus_message *m = newest_in("bob");
    struct bus_error err = {0};
    uint64_t bob = id_of("bob");
    cr_assert_eq(bus_ack(the_bus, bob, m->number, NULL, OTHER, &err), -EACCES);
    cr_assert_eq(bus_ack(the_bus, bob, m->number + 1, NULL, OWNER, &err), -ENOENT);
    char wrong[BUS_MSG_ID_LEN + 1];
    memcpy(wrong, m->msg_id, sizeof wrong);
    wrong[5] = wrong[5] == '1' ? '2' : '1';
    cr_assert_eq(bus_ack(the_bus, bob, m->number, wrong, OWNER, &err), -ENOENT);
    cr_assert_eq(bus_ack(the_bus, id_of("alice"), m->number, NULL, OWNER, &err), -ENOENT,
                 "a message is acked in its recipient's inbox only");
    cr_assert_eq(depth_of("bob"), 1);
    cr_assert_eq(bus_ack(the_bus, bob, m->number, m->msg_id, OWNER, &err), 0);
    cr_assert_eq(bus_ack(the_bus, bob, m->number, m->msg_id, OWNER, &err), -ENOENT,
                 "a second ack finds nothing");
    message_unref(m);
}

BUS_TEST(consuming_out_of_order_keeps_the_inbox_in_delivery_order)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct buf w;
    buf_init(&w);
    for (int i = 0; i < 100; i++)
        buf_printf(&w, "{\"to\":\"bob\",\"payload\":%d}", i);
    send_json_ok("alice", w.data, 100);
    struct bus_error err = {0};
    uint64_t bob = id_of("bob");
    /* Consume every message whose number is not a multiple of 3, newest first. */
    for (uint64_t n = 100; n >= 1; n--)
        if (n % 3)
            cr_assert_eq(bus_ack(the_bus, bob, n, NULL, OWNER, &err), 0, "ack %" PRIu64, n);
    send_json_ok("alice", w.data, 100); /* numbers 101..200 */
    buf_free(&w);
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, 33 + 100);
    for (size_t i = 0; i < l.n; i++) {
        uint64_t want = i < 33 ? 3 * (i + 1) : 101 + (i - 33);
        cr_assert_eq(l.m[i]->number, want, "entry %zu", i);
        struct bus_message *got = bus_inbox_get(the_bus, bob, want);
        cr_assert_eq(got, l.m[i]);
        message_unref(got);
    }
    msg_list_free(&l);
    for (uint64_t n = 1; n <= 200; n++) {
        struct bus_message *got = bus_inbox_get(the_bus, bob, n);
        cr_assert_eq(got != NULL, n > 100 || n % 3 == 0, "message %" PRIu64, n);
        message_unref(got);
    }
    struct bus_message *m;
    bool draining;
    cr_assert_eq(bus_next_peek(the_bus, bob, &m, &draining), 0);
    cr_assert_eq(m->number, 3);
    message_unref(m);
    struct msg_list later = {0};
    bus_inbox_list(the_bus, bob, 99, collect_msg, &later);
    cr_assert_eq(later.n, 100, "listing after 99 starts at 101");
    cr_assert_eq(later.m[0]->number, 101);
    msg_list_free(&later);
    char *before = current_dump();
    reopen();
    char *after = current_dump();
    assert_same_state(before, after);
    free(before);
    free(after);
}

BUS_TEST(next_peek_gives_the_oldest_without_consuming_it)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_message *m = NULL;
    bool draining = true;
    cr_assert_eq(bus_next_peek(the_bus, id_of("bob"), &m, &draining), -EAGAIN);
    cr_assert_not(draining);
    send_ok("alice", "bob", "first");
    send_ok("alice", "bob", "second");
    cr_assert_eq(bus_next_peek(the_bus, id_of("bob"), &m, &draining), 0);
    cr_assert_not_null(strstr(m->envelope, "\"first\""));
    struct bus_error err = {0};
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, NULL, OWNER, &err), 0);
    message_unref(m);
    cr_assert_eq(bus_next_peek(the_bus, id_of("bob"), &m, &draining), 0);
    cr_assert_not_null(strstr(m->envelope, "\"second\""));
    message_unref(m);
    cr_assert_eq(bus_next_peek(the_bus, 9999, &m, &draining), -ENOENT);
}

/* ========== drain and ctl ========== */

BUS_TEST(a_draining_agent_refuses_new_messages_with_eshutdown_and_resume_undoes_it)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "before");
    cr_assert_eq(ctl("bob", "drain\n"), 0);
    cr_assert(info_of("bob").draining);
    struct bus_draft *d = NULL;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), -ESHUTDOWN);
    cr_assert_eq(err.code, ESHUTDOWN);
    unsigned n;
    cr_assert_eq(send_json("alice", "{\"to\":\"bob\",\"payload\":1}", &n, &err), -ESHUTDOWN);
    cr_assert_eq(depth_of("bob"), 1, "pending messages stay");
    struct bus_message *m = NULL;
    bool draining = false;
    cr_assert_eq(bus_next_peek(the_bus, id_of("bob"), &m, &draining), 0);
    cr_assert(draining);
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, NULL, OWNER, &err), 0);
    message_unref(m);
    cr_assert_eq(bus_next_peek(the_bus, id_of("bob"), &m, &draining), -EAGAIN);
    cr_assert(draining, "an empty draining inbox says so (next gives end-of-file)");

    cr_assert_eq(ctl("bob", "resume"), 0);
    cr_assert_not(info_of("bob").draining);
    send_ok("alice", "bob", "after");
    cr_assert_eq(depth_of("bob"), 1);
}

BUS_TEST(a_reservation_made_before_a_drain_is_honoured)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    cr_assert_eq(ctl("bob", "drain"), 0);
    cr_assert_eq(bus_draft_write(the_bus, d, "x", 1, &err), 0);
    cr_assert_eq(bus_draft_flush(the_bus, d, &err), 0);
    bus_draft_close(the_bus, d);
    cr_assert_eq(depth_of("bob"), 1);
}

BUS_TEST(ctl_refuses_bad_commands_and_other_uids)
{
    start(0, 0, 0);
    agent("alice");
    struct bus_error err = {0};
    const char *bad[] = {"", "\n", "stop", "drain now", "drain\nresume", "ack", "ack nothing",
                         "DRAIN"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(bus_ctl(the_bus, id_of("alice"), OWNER, bad[i], strlen(bad[i]), &err),
                     -EINVAL, "'%s'", bad[i]);
    cr_assert_eq(bus_ctl(the_bus, id_of("alice"), OTHER, "drain", 5, &err), -EACCES);
    cr_assert_not(info_of("alice").draining);
    cr_assert_eq(bus_ctl(the_bus, id_of("alice"), OWNER, "  drain \n", 9, &err), 0);
    cr_assert(info_of("alice").draining);
    cr_assert_eq(bus_ctl(the_bus, id_of("alice"), OWNER, "drain", 5, &err), 0, "idempotent");
}

BUS_TEST(a_nul_byte_is_not_blank_in_ctl_or_send)
{
    /* NUL is no whitespace: a command or a record followed by NULs is refused whole. */
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    struct bus_error err = {0};
    cr_assert_eq(bus_ctl(the_bus, id_of("alice"), OWNER, "drain\0", 6, &err), -EINVAL);
    cr_assert_eq(bus_ctl(the_bus, id_of("alice"), OWNER, "\0drain", 6, &err), -EINVAL);
    cr_assert_not(info_of("alice").draining);
    static const char rec[] = "{\"to\":\"bob\",\"payload\":\"x\"}\n\0{\"to\":\"bob\",\"payload\":\"y\"}\n";
    struct buf pending;
    buf_init(&pending);
    unsigned n = 99;
    cr_assert_eq(bus_send_write(the_bus, id_of("alice"), OWNER, &pending, rec, sizeof rec - 1, &n,
                                &err),
                 -EINVAL);
    buf_free(&pending);
    cr_assert_eq(n, 0, "nothing of a refused write is sent");
    cr_assert_eq(depth_of("bob"), 0);
    send_json_ok("alice", "{\"to\":\"bob\",\"payload\":\"x\"}\n \t\r\n{\"to\":\"bob\",\"payload\":\"y\"}\n", 2);
}

BUS_TEST(ctl_render_shows_the_agents_state_as_json)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "x");
    struct bus_draft *d;
    struct bus_error err = {0};
    cr_assert_eq(bus_draft_open(the_bus, id_of("alice"), "bob", OWNER, &d, &err), 0);
    ctl("bob", "drain");
    struct buf out;
    buf_init(&out);
    cr_assert_eq(bus_ctl_render(the_bus, id_of("bob"), &out), 0);
    json_t *v = json_loadb(out.data, out.len, 0, NULL);
    cr_assert_not_null(v, "%s", out.data);
    /* SPEC §7's six fields, and the three of §10's leases. */
    cr_assert_eq(json_object_size(v), 9);
    cr_assert_eq(jint(v, "leased"), 0);
    cr_assert_eq(jint(v, "dead"), 0);
    cr_assert_eq(jint(v, "redelivered_total"), 0);
    cr_assert_str_eq(jstr(v, "agent"), "bob");
    cr_assert_str_eq(jstr(v, "state"), "draining");
    cr_assert_eq(jint(v, "inbox_depth"), 1);
    cr_assert_eq(jint(v, "reserved"), 1);
    cr_assert_eq(jint(v, "delivered_total"), 1);
    cr_assert_eq(jint(v, "acked_total"), 0);
    json_decref(v);
    buf_free(&out);
    bus_draft_close(the_bus, d);
    cr_assert_eq(bus_ctl_render(the_bus, 9999, &out), -ENOENT);
}

/* ========== views, wake-ups, errors ========== */

BUS_TEST(the_outbox_keeps_the_newest_messages)
{
    start(2 * BUS_OUTBOX_KEEP, 0, 0);
    agent("alice");
    agent("bob");
    unsigned total = BUS_OUTBOX_KEEP + 5;
    struct buf w;
    buf_init(&w);
    for (unsigned i = 0; i < total; i++)
        buf_printf(&w, "{\"to\":\"bob\",\"payload\":%u}\n", i);
    send_json_ok("alice", w.data, total);
    buf_free(&w);
    cr_assert_eq(info_of("alice").outbox_count, BUS_OUTBOX_KEEP);
    struct msg_list l = outbox_of("alice");
    cr_assert_eq(l.n, BUS_OUTBOX_KEEP);
    cr_assert_eq(l.m[0]->number, 6, "the oldest five rolled off");
    cr_assert_eq(l.m[l.n - 1]->number, total);
    msg_list_free(&l);
    struct msg_list later = {0};
    bus_outbox_list(the_bus, id_of("alice"), total - 3, collect_msg, &later);
    cr_assert_eq(later.n, 3, "listing resumes after a number");
    msg_list_free(&later);
    cr_assert_eq(depth_of("bob"), total, "the inbox keeps every pending message");
}

struct wakes {
    int n;
    uint64_t ids[16];
};

static void record_wake(void *ctx, uint64_t id)
{
    struct wakes *w = ctx;
    if (w->n < 16)
        w->ids[w->n++] = id;
}

BUS_TEST(a_delivery_wakes_the_recipient)
{
    start(0, 0, 0);
    agent("alice");
    uint64_t bob = agent("bob");
    struct wakes w = {0};
    bus_set_wake(the_bus, record_wake, &w);
    send_ok("alice", "bob", "wake up");
    cr_assert_geq(w.n, 1);
    bool found = false;
    for (int i = 0; i < w.n; i++)
        found |= w.ids[i] == bob;
    cr_assert(found, "bob was not woken");
    w.n = 0;
    ctl("bob", "drain");
    cr_assert_geq(w.n, 1, "a drain wakes the agent's readers");
    bus_set_wake(the_bus, NULL, NULL);
}

BUS_TEST(error_logs_keep_the_newest_lines_per_agent_and_bus_wide)
{
    start(0, 0, 0);
    agent("alice");
    struct bus_error e;
    for (int i = 0; i < BUS_AGENT_ERRORS_KEEP + 20; i++) {
        bus_fail(&e, EAGAIN, "refusal %d", i);
        bus_log_error(the_bus, "alice", "create", "agents/alice/outbox/bob", OWNER, &e);
    }
    bus_fail(&e, EINVAL, "no agent");
    bus_log_error(the_bus, NULL, "mkdir", "agents/bad name", OTHER, &e);
    struct buf log;
    buf_init(&log);
    size_t size = bus_errors_size(the_bus, id_of("alice"));
    cr_assert_eq(bus_errors_read(the_bus, id_of("alice"), 0, 1 << 20, &log), size);
    size_t lines = 0;
    for (size_t i = 0; i < log.len; i++)
        lines += log.data[i] == '\n';
    cr_assert_eq(lines, BUS_AGENT_ERRORS_KEEP);
    cr_assert_not_null(strstr(log.data, "refusal 20\""), "the oldest kept is #20");
    cr_assert_null(strstr(log.data, "refusal 19\""));
    /* Every line is a JSON object with the errno name and the reason. */
    char *nl = strchr(log.data, '\n');
    json_t *v = json_loadb(log.data, (size_t)(nl - log.data), 0, NULL);
    cr_assert_not_null(v);
    cr_assert_str_eq(jstr(v, "errno"), "EAGAIN");
    cr_assert_str_eq(jstr(v, "agent"), "alice");
    cr_assert_str_eq(jstr(v, "reason"), "refusal 20");
    json_decref(v);
    buf_reset(&log);
    bus_errors_read(the_bus, 0, 0, 1 << 20, &log);
    lines = 0;
    for (size_t i = 0; i < log.len; i++)
        lines += log.data[i] == '\n';
    /* Within one second the bus-wide log takes BUS_ERRORS_PER_SECOND lines of a uid and
     * counts the rest (test_quota.c); the other uid's line is there. */
    cr_assert_eq(lines, BUS_ERRORS_PER_SECOND + 1, "the bus-wide log has %zu lines", lines);
    cr_assert_not_null(strstr(log.data, "\"no agent\""));
    cr_assert_eq(bus_errors_size(the_bus, 0), log.len);
    buf_free(&log);
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_eq(st.rejected_total, BUS_AGENT_ERRORS_KEEP + 21);
}

/* ========== durability ========== */

/* A state that uses every kind of record: agents, drafts, batches, broadcast, acks with
 * ack messages, a drain, a removal and a re-registration. */
static void build_rich_state(void)
{
    agent("alice");
    agent("bob");
    agent("carol");
    agent_as("dave", OTHER);
    for (int i = 0; i < 5; i++)
        send_ok("alice", "bob", "task\n");
    send_json_ok("alice",
                 "{\"to\":\"carol\",\"payload\":{\"n\":0.1,\"big\":18446744073709551615}}"
                 "{\"to\":\"bob\",\"payload\":\"b\",\"requires_ack\":true,"
                 "\"correlation_id\":\"corr-7\"}",
                 2);
    send_ok("carol", "all", "broadcast\n");
    struct msg_list l = inbox_of("bob");
    struct bus_error err = {0};
    for (size_t i = 0; i < l.n; i++) {
        if (l.m[i]->requires_ack || i < 2) {
            int rc = bus_ack(the_bus, id_of("bob"), l.m[i]->number, l.m[i]->msg_id, OWNER, &err);
            CHECK(rc == 0, "ack: %s", err.reason);
        }
    }
    msg_list_free(&l);
    CHECK(ctl("carol", "drain") == 0, "drain");
    /* dave goes away and comes back: the pair sequences outlive him. */
    send_ok("alice", "dave", "to the old dave");
    l = inbox_of("dave");
    CHECK(l.n == 2, "the old dave holds the broadcast and one message");
    for (size_t i = 0; i < l.n; i++) {
        int rc = bus_ack(the_bus, id_of("dave"), l.m[i]->number, NULL, OTHER, &err);
        CHECK(rc == 0, "ack dave: %s", err.reason);
    }
    msg_list_free(&l);
    int rc = bus_agent_remove(the_bus, "dave", OTHER, &err);
    CHECK(rc == 0, "remove dave: %s", err.reason);
    agent_as("dave", OTHER);
    send_ok("alice", "dave", "to the new dave");
    /* erin leaves a message in bob's inbox, goes away and comes back. */
    agent("erin");
    send_ok("erin", "bob", "from the old erin");
    rc = bus_agent_remove(the_bus, "erin", OWNER, &err);
    CHECK(rc == 0, "remove erin: %s", err.reason);
    agent("erin");
    send_ok("erin", "bob", "from the new erin");
}

static void write_dump(const char *file)
{
    struct buf d;
    buf_init(&d);
    dump_state(&d);
    char path[PATH_MAX];
    int rc = unit_write_file(unit_path(path, file), d.data, d.len);
    CHECK(rc == 0, "write dump");
    buf_free(&d);
}

static char *read_dump(const char *file)
{
    struct buf d;
    buf_init(&d);
    char path[PATH_MAX];
    cr_assert_eq(unit_read_file(unit_path(path, file), &d), 0);
    return d.data;
}

/* After a restart: the next message of each pair continues its sequence and takes a
 * number above every number used before. */
static void assert_counters_continue(uint64_t max_before, uint64_t alice_to_bob)
{
    send_ok("alice", "bob", "after restart");
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(m->sequence, alice_to_bob + 1, "alice->bob sent %" PRIu64 " before the restart",
                 alice_to_bob);
    cr_assert_gt(m->number, max_before, "msg_id counter %" PRIu64 " repeats (max was %" PRIu64
                 ")", m->number, max_before);
    cr_assert_eq(message_id_number(m->msg_id), m->number);
    message_unref(m);
    send_ok("alice", "dave", "after restart");
    m = newest_in("dave");
    cr_assert_eq(m->sequence, 3, "alice->dave continues across dave's re-registration");
    message_unref(m);
}

BUS_TEST(a_clean_close_and_reopen_keeps_the_whole_state)
{
    start(0, 0, 0);
    build_rich_state();
    char *before = current_dump();
    uint64_t max = max_number();
    reopen();
    char *after = current_dump();
    assert_same_state(before, after);
    assert_counters_continue(max, 6);
    free(before);
    free(after);
}

BUS_TEST(a_state_reopened_twice_is_still_the_same)
{
    start(0, 0, 0);
    build_rich_state();
    char *before = current_dump();
    uint64_t max = max_number();
    reopen();
    reopen();
    char *after = current_dump();
    assert_same_state(before, after);
    assert_counters_continue(max, 6);
    free(before);
    free(after);
}

BUS_TEST(compaction_then_reopen_gives_the_same_state)
{
    start(0, 0, 0);
    build_rich_state();
    char *before = current_dump();
    uint64_t max = max_number();
    cr_assert_eq(bus_compact(the_bus), 0);
    char *compacted = current_dump();
    assert_same_state(before, compacted);
    reopen();
    char *after = current_dump();
    assert_same_state(before, after);
    assert_counters_continue(max, 6);
    free(before);
    free(compacted);
    free(after);
}

static void crash_after_rich_state(void)
{
    build_rich_state();
    write_dump("dump");
    char max[32];
    int n = snprintf(max, sizeof max, "%" PRIu64, max_number());
    char path[PATH_MAX];
    CHECK(unit_write_file(unit_path(path, "max"), max, (size_t)n) == 0, "write max");
}

BUS_TEST(a_kill_9_loses_nothing_committed_and_duplicates_nothing)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
    in_crashing_child(crash_after_rich_state);
    the_bus = open_with(&cfg);
    char *before = read_dump("dump");
    char *after = current_dump();
    assert_same_state(before, after);
    char *max = read_dump("max");
    assert_counters_continue(strtoull(max, NULL, 10), 6);
    free(before);
    free(after);
    free(max);
}

enum { CRASH_N = 25 };

static void crash_after_n_sends(void)
{
    agent("alice");
    agent("bob");
    for (int i = 0; i < CRASH_N; i++)
        send_ok("alice", "bob", "n");
}

BUS_TEST(after_a_kill_9_every_message_is_there_once_and_sequences_continue)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
    in_crashing_child(crash_after_n_sends);
    the_bus = open_with(&cfg);
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, CRASH_N);
    for (size_t i = 0; i < l.n; i++) {
        cr_assert_eq(l.m[i]->sequence, i + 1);
        cr_assert_eq(l.m[i]->number, i + 1);
    }
    msg_list_free(&l);
    send_ok("alice", "bob", "next");
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(m->sequence, CRASH_N + 1);
    cr_assert_eq(m->number, CRASH_N + 1);
    message_unref(m);
}

static void crash_after_acks_and_removal(void)
{
    /* Every message ever sent is acked and its sender removed: nothing in any inbox or
     * outbox remembers the numbers used, only the counter does. */
    agent("alice");
    agent("bob");
    for (int i = 0; i < 3; i++)
        send_ok("alice", "bob", "n");
    struct msg_list l = inbox_of("bob");
    struct bus_error err = {0};
    for (size_t i = 0; i < l.n; i++) {
        int rc = bus_ack(the_bus, id_of("bob"), l.m[i]->number, NULL, OWNER, &err);
        CHECK(rc == 0, "ack");
    }
    msg_list_free(&l);
    int rc = bus_agent_remove(the_bus, "alice", OWNER, &err);
    CHECK(rc == 0, "remove alice: %s", err.reason);
}

BUS_TEST(msg_id_counters_never_repeat_after_a_kill_9)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
    in_crashing_child(crash_after_acks_and_removal);
    the_bus = open_with(&cfg);
    agent("alice");
    send_ok("alice", "bob", "after");
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(m->number, 4, "numbers 1..3 were used before the crash");
    cr_assert_eq(m->sequence, 4, "alice->bob continues after alice's re-registration");
    message_unref(m);
    /* And the same after a clean restart, which compacts everything away. */
    struct bus_error err = {0};
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), 4, NULL, OWNER, &err), 0);
    cr_assert_eq(bus_agent_remove(the_bus, "alice", OWNER, &err), 0);
    reopen();
    agent("alice");
    send_ok("alice", "bob", "later");
    m = newest_in("bob");
    cr_assert_eq(m->number, 5);
    cr_assert_eq(m->sequence, 5);
    message_unref(m);
}

static void crash_after_compaction(void)
{
    build_rich_state();
    CHECK(bus_compact(the_bus) == 0, "compact");
    send_ok("bob", "alice", "after the snapshot\n");
    send_ok("alice", "bob", "after the snapshot\n");
    write_dump("dump");
    char max[32];
    int n = snprintf(max, sizeof max, "%" PRIu64, max_number());
    char path[PATH_MAX];
    CHECK(unit_write_file(unit_path(path, "max"), max, (size_t)n) == 0, "write max");
}

BUS_TEST(a_kill_9_after_a_compaction_keeps_snapshot_and_journal)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
    in_crashing_child(crash_after_compaction);
    the_bus = open_with(&cfg);
    char *before = read_dump("dump");
    char *after = current_dump();
    assert_same_state(before, after);
    char *max = read_dump("max");
    assert_counters_continue(strtoull(max, NULL, 10), 7);
    free(before);
    free(after);
    free(max);
}

static void crash_holding_the_store(void)
{
    bus_write_pid(the_bus);
    char path[PATH_MAX];
    /* Tell the parent we hold the store, then wait to be killed. */
    CHECK(unit_write_file(unit_path(path, "ready"), "1", 1) == 0, "ready");
    for (;;)
        pause();
}

BUS_TEST(a_second_bus_on_the_same_store_fails_with_ebusy_naming_the_pid)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        in_child = true;
        the_bus = open_with(&cfg);
        crash_holding_the_store();
    }
    char ready[PATH_MAX];
    unit_path(ready, "ready");
    while (unit_file_size(ready) != 1) {
        int status;
        cr_assert_eq(waitpid(pid, &status, WNOHANG), 0, "the child could not open the bus");
        usleep(1000);
    }
    struct bus *second = NULL;
    struct bus_error err = {0};
    int rc = bus_open(&cfg, &second, &err);
    char want[32];
    snprintf(want, sizeof want, "%ld", (long)pid);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    cr_assert_eq(rc, -EBUSY);
    cr_assert_null(second);
    cr_assert_not_null(strstr(err.reason, want), "reason '%s' lacks pid %s", err.reason, want);
    /* Once the holder is dead, the store opens. */
    the_bus = open_with(&cfg);
}

BUS_TEST(check_store_passes_a_good_store)
{
    start(0, 0, 0);
    build_rich_state();
    struct buf report;
    buf_init(&report);
    cr_assert_eq(bus_check_store(store_dir, &report), 0, "%s", report.data);
    cr_assert_not_null(strstr(report.data, "OK"), "%s", report.data);
    buf_reset(&report);
    reopen();
    cr_assert_eq(bus_check_store(store_dir, &report), 0, "after compaction: %s", report.data);
    bus_close(the_bus);
    the_bus = NULL;
    buf_reset(&report);
    cr_assert_eq(bus_check_store(store_dir, &report), 0, "closed: %s", report.data);
    buf_free(&report);
}

BUS_TEST(check_store_passes_a_store_left_by_a_kill_9)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
    in_crashing_child(crash_after_compaction);
    struct buf report;
    buf_init(&report);
    cr_assert_eq(bus_check_store(store_dir, &report), 0, "%s", report.data);
    buf_free(&report);
}

BUS_TEST(check_store_fails_a_store_that_cannot_load)
{
    start(0, 0, 0);
    agent("alice");
    bus_close(the_bus);
    the_bus = NULL;
    char path[PATH_MAX];
    cr_assert_eq(unit_write_file(unit_path(path, "store/snapshot"), "garbage", 7), 0);
    struct buf report;
    buf_init(&report);
    cr_assert_lt(bus_check_store(store_dir, &report), 0);
    cr_assert_not_null(strstr(report.data, "FAIL"), "%s", report.data);
    buf_free(&report);
}

BUS_TEST(msg_ids_stay_unique_when_the_clock_steps_back)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "now");
    unit_clock_set(UNIT_T0_US - INT64_C(86400) * 1000000);
    send_ok("alice", "bob", "yesterday");
    struct msg_list l = inbox_of("bob");
    cr_assert_eq(l.n, 2);
    cr_assert_str_neq(l.m[0]->msg_id, l.m[1]->msg_id);
    cr_assert_gt(l.m[1]->number, l.m[0]->number);
    cr_assert_eq(strncmp(l.m[1]->msg_id, "MSG-20261122-", 13), 0, "%s", l.m[1]->msg_id);
    char a[BUS_FILE_NAME_LEN + 1], b[BUS_FILE_NAME_LEN + 1];
    message_file_name(l.m[0], a);
    message_file_name(l.m[1], b);
    cr_assert_lt(strcmp(a, b), 0, "file names stay in delivery order");
    msg_list_free(&l);
}

BUS_TEST(sequences_continue_across_an_agents_removal_and_re_registration)
{
    start(0, 0, 0);
    agent("alice");
    agent("bob");
    send_ok("alice", "bob", "1");
    send_ok("alice", "bob", "2");
    struct msg_list l = inbox_of("bob");
    struct bus_error err = {0};
    for (size_t i = 0; i < l.n; i++)
        cr_assert_eq(bus_ack(the_bus, id_of("bob"), l.m[i]->number, NULL, OWNER, &err), 0);
    msg_list_free(&l);
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), 0);
    agent("bob");
    send_ok("alice", "bob", "3");
    struct bus_message *m = newest_in("bob");
    cr_assert_eq(m->sequence, 3);
    message_unref(m);
}

/* ---------- health (SPEC §4) ---------- */

static int report(const char *name, uid_t uid, const char *text, struct bus_error *err)
{
    return bus_health_report(the_bus, id_of(name), uid, text, strlen(text), err);
}

static void report_ok(const char *name, const char *text)
{
    struct bus_error err = {0};
    int rc = report(name, OWNER, text, &err);
    CHECK(rc == 0, "report %s: %d %s", text, rc, err.reason);
}

/* agents/NAME/health, parsed; the caller decrefs. */
static json_t *health_of(const char *name)
{
    struct buf b;
    buf_init(&b);
    CHECK(bus_health_render(the_bus, id_of(name), &b) == 0, "render %s", name);
    CHECK(b.len && b.data[b.len - 1] == '\n' && !memchr(b.data, '\n', b.len - 1),
          "one line and a newline");
    json_error_t e;
    json_t *j = json_loadb(b.data, b.len, 0, &e);
    CHECK(j && json_is_object(j), "health of %s is not a JSON object: %s: %.*s", name, e.text,
          (int)b.len, b.data);
    buf_free(&b);
    return j;
}

static json_t *status_doc(void)
{
    struct buf b;
    buf_init(&b);
    bus_status_render(the_bus, &b);
    json_error_t e;
    json_t *j = json_loadb(b.data, b.len, 0, &e);
    CHECK(j && json_is_object(j), "health/status is not a JSON object: %s", e.text);
    buf_free(&b);
    return j;
}

/* RFC 3339 UTC with microseconds, as every busfs timestamp. */
static bool bus_match_time(const char *s)
{
    if (strlen(s) != BUS_TIME_LEN)
        return false;
    for (int i = 0; i < BUS_TIME_LEN; i++) {
        char want = "0000-00-00T00:00:00.000000Z"[i];
        if (want == '0' ? !(s[i] >= '0' && s[i] <= '9') : s[i] != want)
            return false;
    }
    return true;
}

BUS_TEST(health_starts_unknown_and_shows_each_report)
{
    start(0, 0, 0);
    agent("bob");
    json_t *h = health_of("bob");
    cr_assert_str_eq(jstr(h, "agent"), "bob");
    cr_assert_str_eq(jstr(h, "status"), "unknown");
    cr_assert_str_eq(jstr(h, "reason"), "");
    cr_assert(json_is_null(json_object_get(h, "last_seen")));
    cr_assert(json_is_null(json_object_get(h, "age_s")));
    cr_assert_str_eq(jstr(h, "state"), "active");
    cr_assert_eq(json_integer_value(json_object_get(h, "inbox_depth")), 0);
    cr_assert_eq(json_object_size(h), 7);
    json_decref(h);

    report_ok("bob", "{\"status\":\"unhealthy\",\"reason\":\"api down\",\"queue\":17}");
    h = health_of("bob");
    cr_assert_str_eq(jstr(h, "status"), "unhealthy");
    cr_assert_str_eq(jstr(h, "reason"), "api down");
    cr_assert_eq(json_integer_value(json_object_get(h, "queue")), 17);
    cr_assert(bus_match_time(jstr(h, "last_seen")));
    json_decref(h);

    report_ok("bob", "degraded disk 91% full\n");
    h = health_of("bob");
    cr_assert_str_eq(jstr(h, "status"), "degraded");
    cr_assert_str_eq(jstr(h, "reason"), "disk 91% full");
    cr_assert_null(json_object_get(h, "queue"), "a new report replaces the old fields");
    json_decref(h);
}

BUS_TEST(a_refused_report_changes_nothing)
{
    start(0, 0, 0);
    agent("bob");
    report_ok("bob", "degraded slow");
    json_t *before = health_of("bob");
    struct bus_error err = {0};
    cr_assert_eq(report("bob", OWNER, "fine", &err), -EINVAL);
    cr_assert_eq(report("bob", OTHER, "healthy", &err), -EACCES, "another uid");
    cr_assert(strstr(err.reason, "uid"), "%s", err.reason);
    cr_assert_eq(report("bob", 0, "healthy", &err), 0, "root may report for anyone");
    report_ok("bob", "degraded slow");
    json_t *after = health_of("bob");
    cr_assert_str_eq(jstr(after, "status"), jstr(before, "status"));
    cr_assert_str_eq(jstr(after, "reason"), jstr(before, "reason"));
    json_decref(before);
    json_decref(after);
}

BUS_TEST(stale_is_computed_from_the_ttl_and_a_heartbeat_renews_it)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20,
                              .health_ttl_s = 10};
    the_bus = open_with(&cfg);
    agent("alice");
    agent("quiet");
    report_ok("alice", "healthy all good");
    unit_clock_set(unit_clock_get() + INT64_C(11) * 1000000);
    json_t *h = health_of("alice");
    cr_assert_str_eq(jstr(h, "status"), "stale");
    cr_assert_str_eq(jstr(h, "reason"), "all good", "the last reason stays visible");
    cr_assert_geq(json_real_value(json_object_get(h, "age_s")), 11.0);
    json_decref(h);
    h = health_of("quiet");
    cr_assert_str_eq(jstr(h, "status"), "unknown", "never reported: not stale");
    json_decref(h);

    struct bus_error err = {0};
    cr_assert_eq(bus_health_beat(the_bus, id_of("alice"), OTHER, &err), -EACCES);
    cr_assert_eq(bus_health_beat(the_bus, id_of("alice"), OWNER, &err), 0, "%s", err.reason);
    h = health_of("alice");
    cr_assert_str_eq(jstr(h, "status"), "healthy", "a heartbeat keeps the reported status");
    cr_assert_str_eq(jstr(h, "reason"), "all good");
    cr_assert_lt(json_real_value(json_object_get(h, "age_s")), 1.0);
    json_decref(h);
}

BUS_TEST(health_status_counts_every_agent_and_takes_the_worst)
{
    start(0, 0, 0);
    json_t *s = status_doc();
    cr_assert_str_eq(jstr(s, "status"), "healthy", "no agents");
    cr_assert_eq(json_object_size(json_object_get(s, "agents")), 0);
    json_decref(s);

    agent("a");
    agent("b");
    agent("c");
    agent("d");
    report_ok("a", "healthy");
    report_ok("b", "degraded");
    s = status_doc();
    cr_assert_str_eq(jstr(s, "status"), "degraded", "d and c are unknown and do not count");
    json_t *counts = json_object_get(s, "counts");
    cr_assert_eq(json_object_size(counts), 5);
    cr_assert_eq(json_integer_value(json_object_get(counts, "healthy")), 1);
    cr_assert_eq(json_integer_value(json_object_get(counts, "degraded")), 1);
    cr_assert_eq(json_integer_value(json_object_get(counts, "unhealthy")), 0);
    cr_assert_eq(json_integer_value(json_object_get(counts, "stale")), 0);
    cr_assert_eq(json_integer_value(json_object_get(counts, "unknown")), 2);
    cr_assert_str_eq(jstr(json_object_get(json_object_get(s, "agents"), "b"), "status"),
                     "degraded");
    json_decref(s);

    report_ok("c", "{\"status\":\"unhealthy\"}");
    send_ok("a", "b", "one");
    send_ok("a", "b", "two");
    s = status_doc();
    cr_assert_str_eq(jstr(s, "status"), "unhealthy");
    json_t *busj = json_object_get(s, "bus");
    cr_assert_eq(json_integer_value(json_object_get(busj, "agents")), 4);
    cr_assert_eq(json_integer_value(json_object_get(busj, "messages_pending")), 2);
    cr_assert_eq(json_integer_value(json_object_get(busj, "messages_delivered_total")), 2);
    cr_assert(json_is_number(json_object_get(busj, "uptime_s")));
    cr_assert(json_is_integer(json_object_get(busj, "messages_rejected_total")));
    cr_assert_eq(json_integer_value(json_object_get(
                     json_object_get(json_object_get(s, "agents"), "b"), "inbox_depth")), 2);
    json_decref(s);
}

static void assert_health_kept(void)
{
    json_t *h = health_of("bob");
    CHECK(strcmp(jstr(h, "status"), "unhealthy") == 0, "status %s", jstr(h, "status"));
    CHECK(strcmp(jstr(h, "reason"), "api down") == 0, "reason");
    CHECK(json_integer_value(json_object_get(h, "queue")) == 17, "queue");
    char want[BUS_TIME_LEN + 1];
    char path[PATH_MAX];
    struct buf b;
    buf_init(&b);
    CHECK(unit_read_file(unit_path(path, "seen"), &b) == 0, "read seen");
    snprintf(want, sizeof want, "%.*s", (int)b.len, b.data);
    CHECK(strcmp(jstr(h, "last_seen"), want) == 0, "last_seen %s, want %s",
          jstr(h, "last_seen"), want);
    buf_free(&b);
    json_decref(h);
    h = health_of("alice");
    CHECK(strcmp(jstr(h, "status"), "unknown") == 0, "alice only sent a heartbeat");
    CHECK(json_is_string(json_object_get(h, "last_seen")), "alice's heartbeat is kept");
    json_decref(h);
}

static void report_then_crash(void)
{
    agent("alice");
    agent("bob");
    report_ok("bob", "healthy");
    report_ok("bob", "{\"status\":\"unhealthy\",\"reason\":\"api down\",\"queue\":17}");
    struct bus_error err = {0};
    CHECK(bus_health_beat(the_bus, id_of("alice"), OWNER, &err) == 0, "beat");
    json_t *h = health_of("bob");
    char path[PATH_MAX];
    const char *seen = jstr(h, "last_seen");
    CHECK(unit_write_file(unit_path(path, "seen"), seen, strlen(seen)) == 0, "write seen");
    json_decref(h);
}

BUS_TEST(health_survives_a_kill_9_a_restart_and_a_compaction)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
    in_crashing_child(report_then_crash);
    the_bus = open_with(&cfg);
    assert_health_kept();
    cr_assert_eq(bus_compact(the_bus), 0);
    reopen();
    assert_health_kept();
    reopen();
    assert_health_kept();
}

BUS_TEST(reregistering_an_agent_starts_its_health_afresh)
{
    start(0, 0, 0);
    agent("bob");
    report_ok("bob", "unhealthy down");
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_remove(the_bus, "bob", OWNER, &err), 0);
    agent("bob");
    json_t *h = health_of("bob");
    cr_assert_str_eq(jstr(h, "status"), "unknown");
    json_decref(h);
    reopen();
    h = health_of("bob");
    cr_assert_str_eq(jstr(h, "status"), "unknown", "the removed agent's record stays removed");
    json_decref(h);
}

static void refuse_three_then_crash(void)
{
    agent("alice");
    struct bus_error err = {0};
    bus_fail(&err, EAGAIN, "full");
    bus_log_error(the_bus, "alice", "create", "agents/alice/outbox/bob", OWNER, &err);
    bus_log_error(the_bus, NULL, "mkdir", "agents/x y", OWNER, &err);
    bus_fail(&err, EINVAL, "bad");
    bus_log_error(the_bus, "alice", "write", "agents/alice/send", OWNER, &err);
}

BUS_TEST(rejection_counters_survive_a_kill_9_and_a_restart)
{
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
    in_crashing_child(refuse_three_then_crash);
    the_bus = open_with(&cfg);
    struct bus_stats st;
    bus_stats(the_bus, &st);
    cr_assert_eq(st.rejected_total, 3);
    cr_assert_eq(bus_errors_size(the_bus, 0), 0, "the log lines themselves are not kept");
    reopen();
    bus_stats(the_bus, &st);
    cr_assert_eq(st.rejected_total, 3, "and the snapshot keeps them too");
}

static int check_report(struct buf *report)
{
    buf_reset(report);
    return bus_check_store(store_dir, report);
}

BUS_TEST(check_store_fails_on_stray_files_and_bad_log_lines)
{
    start(0, 0, 0);
    agent("alice");
    struct bus_error err = {0};
    const char *pt = "coordination.time 150 ms\n";
    cr_assert_eq(bus_metrics_write(the_bus, id_of("alice"), OWNER, pt, strlen(pt), &err), 0);
    bus_close(the_bus);
    the_bus = NULL;
    struct buf report;
    buf_init(&report);
    cr_assert_eq(check_report(&report), 0, "%.*s", (int)report.len, report.data);

    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/planted", store_dir);
    cr_assert_eq(unit_write_file(path, "x", 1), 0);
    cr_assert_neq(check_report(&report), 0);
    cr_assert(memmem(report.data, report.len, "planted is not a store file", 27), "%.*s",
              (int)report.len, report.data);
    unlink(path);

    snprintf(path, sizeof path, "%s/metrics/points-%020d.jsonl", store_dir, 0);
    cr_assert_eq(unit_append_file(path, "not json\n", 9), 0);
    cr_assert_neq(check_report(&report), 0);
    cr_assert(memmem(report.data, report.len, "are not JSON objects", 20), "%.*s",
              (int)report.len, report.data);
    buf_free(&report);
}

/* ---------- the number index (inode numbers of message files carry only the number) ---------- */

static uint64_t first_inbox_number(const char *name)
{
    struct bus_message *m = NULL;
    bool draining;
    CHECK(bus_next_peek(the_bus, id_of(name), &m, &draining) == 0, "%s's inbox is empty", name);
    uint64_t n = m->number;
    message_unref(m);
    return n;
}

Test(bus, a_message_number_names_the_inbox_and_outbox_that_hold_it, .init = setup,
     .fini = teardown, .timeout = UNIT_TIMEOUT)
{
    start(0, 0, 0);
    uint64_t alice = agent("alice"), bob = agent("bob");
    send_ok("alice", "bob", "one");
    uint64_t n = first_inbox_number("bob");
    cr_assert_eq(bus_message_holder(the_bus, n, true), bob);
    cr_assert_eq(bus_message_holder(the_bus, n, false), alice);
    cr_assert_eq(bus_message_holder(the_bus, n + 1, true), 0);

    /* Consumed: only the sender's outbox holds it. */
    struct bus_error err = {0};
    cr_assert_eq(bus_ack(the_bus, bob, n, NULL, OWNER, &err), 0, "%s", err.reason);
    cr_assert_eq(bus_message_holder(the_bus, n, true), 0);
    cr_assert_eq(bus_message_holder(the_bus, n, false), alice);

    /* After a restart, from the snapshot and from the journal. */
    send_ok("alice", "bob", "two");
    uint64_t m = first_inbox_number("bob");
    reopen();
    cr_assert_eq(bus_message_holder(the_bus, m, true), id_of("bob"));
    cr_assert_eq(bus_message_holder(the_bus, n, false), id_of("alice"));
}

Test(bus, a_message_leaves_the_index_with_the_last_place_that_holds_it, .init = setup,
     .fini = teardown, .timeout = UNIT_TIMEOUT)
{
    start(2 * BUS_OUTBOX_KEEP, 0, 0);
    agent("alice");
    uint64_t bob = agent("bob");
    /* More than an outbox keeps: the oldest fall out of alice's outbox. */
    for (int i = 0; i < BUS_OUTBOX_KEEP + 10; i++)
        send_ok("alice", "bob", "x");
    uint64_t oldest = first_inbox_number("bob");
    cr_assert_eq(bus_message_holder(the_bus, oldest, false), 0, "evicted from the outbox");
    cr_assert_eq(bus_message_holder(the_bus, oldest, true), bob);
    struct bus_error err = {0};
    cr_assert_eq(bus_ack(the_bus, bob, oldest, NULL, OWNER, &err), 0, "%s", err.reason);
    cr_assert_eq(bus_message_holder(the_bus, oldest, true), 0);
    /* The sender goes: its outbox copies go with it. */
    uint64_t newest = oldest + BUS_OUTBOX_KEEP + 9;
    cr_assert_eq(bus_message_holder(the_bus, newest, false), id_of("alice"));
    cr_assert_eq(bus_agent_remove(the_bus, "alice", OWNER, &err), 0, "%s", err.reason);
    cr_assert_eq(bus_message_holder(the_bus, newest, false), 0);
    cr_assert_eq(bus_message_holder(the_bus, newest, true), bob);
}

/* Agents by id: a million come and go, and every lookup still finds the live ones. */
Test(bus, agent_ids_past_2_to_the_20_are_found_and_listed, .init = setup, .fini = teardown,
     .timeout = UNIT_TIMEOUT)
{
    start(0, 0, UINT64_C(1) << 32);
    uint64_t first = agent("first");
    struct bus_error err = {0};
    for (int i = 0; i < 1050000; i++) {
        cr_assert_eq(bus_agent_create(the_bus, "c", OWNER, OWNER, NULL, &err), 0);
        cr_assert_eq(bus_agent_remove(the_bus, "c", OWNER, &err), 0);
    }
    uint64_t last = agent("last");
    cr_assert_gt(last, UINT64_C(1) << 20);
    struct bus_agent_info a;
    cr_assert_eq(bus_agent_by_id(the_bus, first, &a), 0);
    cr_assert_str_eq(a.name, "first");
    cr_assert_eq(bus_agent_by_id(the_bus, last, &a), 0);
    cr_assert_str_eq(a.name, "last");
    cr_assert_eq(bus_agent_by_id(the_bus, last - 1, &a), -ENOENT);
    send_ok("first", "last", "hello");
    cr_assert_eq(bus_message_holder(the_bus, first_inbox_number("last"), true), last);
}
