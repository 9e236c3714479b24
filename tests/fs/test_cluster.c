/*
 * test_cluster.c — SPEC §12: one bus across hosts on NATS JetStream. Each test starts
 * a real 3-server nats-server cluster on loopback (nats.c) and three busfs mounts,
 * nodes a, b and c, each with its own store, then uses them as users on three hosts
 * would: mkdir, echo, cat, ls, rm.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "nats.h"

#define NODES 3

static struct nats_group nats;
static struct bus_fixture node[NODES];
static const char *const names[NODES] = {"a", "b", "c"};

/* Starts node i's busfs with --cluster-timeout timeout, --inbox-capacity capacity and
 * --health-ttl ttl (strings); urls NULL: every server of the cluster. */
static void node_launch_with(int i, const char *urls, const char *timeout, const char *capacity,
                             const char *ttl)
{
    /* --no-sync: these tests are about NATS; three nodes syncing each commit to the
     * one disk beside three nats-servers only slow them (the stores are in /tmp). */
    const char *args[] = {"--cluster", urls ? urls : nats.urls, "--node", names[i],
                          "--cluster-timeout", timeout, "--inbox-capacity", capacity,
                          "--health-ttl", ttl, "--no-sync", NULL};
    bus_launch(&node[i], args);
}

/* Node i with --store-max-bytes max (a string) and the usual rest. */
static void node_launch_small_store(int i, const char *max)
{
    const char *args[] = {"--cluster", nats.urls, "--node", names[i], "--cluster-timeout", "5",
                          "--store-max-bytes", max, "--no-sync", NULL};
    bus_launch(&node[i], args);
}

static void node_launch(int i, const char *urls)
{
    node_launch_with(i, urls, "2", "100000", "30");
}

/* The cluster (with an edge server: a talks to it alone) and nodes a, b, c. */
static void start_nodes(bool edge)
{
    nats_start(&nats, edge);
    for (int i = 0; i < NODES; i++) {
        bus_prepare(&node[i]);
        node_launch(i, i == 0 && edge ? nats_url(&nats, NATS_EDGE) : NULL);
    }
}

static void setup(void) { start_nodes(false); }

static void teardown(void)
{
    for (int i = 0; i < NODES; i++) {
        if (node[i].pid)
            bus_kill9(&node[i]);
        if (node[i].dir[0])
            bus_stop(&node[i]);
    }
    nats_stop(&nats);
}

/* The nodes stop cleanly (exit 0, no mount left), then the cluster. */
static void stop_all(void)
{
    for (int i = 0; i < NODES; i++)
        bus_stop(&node[i]);
    nats_stop(&nats);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Waits (ms) until path exists. */
static void await_path(const char *path, int ms)
{
    long long end = bus_now_ms() + ms;
    while (!exists(path)) {
        cr_assert_lt(bus_now_ms(), end, "%s did not appear within %d ms", path, ms);
        bus_pause_ms(50);
    }
}

/* Waits (ms) until the directory holds n entries; returns how many it holds. */
static long await_count(const char *dir, long n, int ms)
{
    long long end = bus_now_ms() + ms;
    long c;
    while ((c = bus_count(dir)) < n && bus_now_ms() < end)
        bus_pause_ms(50);
    return c;
}

#define ON(i, ...) bus_path(&node[i], __VA_ARGS__)

/* alice on a, bob on b, each known on the other nodes. */
static void alice_and_bob(void)
{
    cr_assert_eq(mkdir(ON(0, "agents/alice"), 0755), 0, "%s", strerror(errno));
    cr_assert_eq(mkdir(ON(1, "agents/bob"), 0755), 0, "%s", strerror(errno));
    await_path(ON(0, "agents/bob@b"), 20000);
    await_path(ON(1, "agents/alice@a"), 20000);
}

/* The only file of a directory, parsed. */
static json_t *only_message(const char *dir)
{
    size_t n;
    char **files = bus_ls(dir, &n);
    cr_assert_eq(n, 1, "%s holds %zu files", dir, n);
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", dir, files[0]);
    bus_ls_free(files, n);
    json_t *m = bus_json_file(path, 0);
    cr_assert_not_null(m, "%s is one JSON envelope", path);
    return m;
}

/* The payloads of bob's inbox, oldest first, as "p1 p2 ...". */
static char *bob_payloads(void)
{
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&node[1], &r, "cat agents/bob/inbox/* 2>/dev/null | jq -r .payload | "
                                      "tr '\\n' ' '"), 0);
    char *s = strdup(r.out);
    bus_cmd_free(&r);
    return s;
}

Test(cluster, messages_cross_nodes_both_ways_with_acks_and_health, .init = setup,
     .fini = teardown, .timeout = BUS_TEST_TIMEOUT)
{
    alice_and_bob();
    await_path(ON(2, "agents/alice@a"), 20000);
    await_path(ON(2, "agents/bob@b"), 20000);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&node[2], &r, "ls agents"), 0);
    cr_assert(bus_match("^alice@a\nbob@b\n$", r.out), "ls agents on c: %s", r.out);
    bus_cmd_free(&r);

    /* a -> b: success only once JetStream stored it; b commits it as alice@a's. */
    cr_assert_eq(bus_sh(&node[0], &r, "echo hello > agents/alice/outbox/bob@b"), 0, "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(await_count(ON(1, "agents/bob/inbox"), 1, 10000), 1);
    json_t *m = only_message(ON(1, "agents/bob/inbox"));
    cr_assert_str_eq(bus_str(m, "from"), "alice@a");
    cr_assert_str_eq(bus_str(m, "to"), "bob");
    cr_assert_str_eq(bus_str(m, "payload"), "hello");
    cr_assert_eq(bus_int(m, "sequence"), 1);
    json_decref(m);

    /* b -> a with requires_ack: alice's rm sends the ack back to bob@b. */
    cr_assert_eq(bus_sh(&node[1], &r, "echo '{\"to\":\"alice@a\",\"payload\":{\"n\":1},"
                                      "\"requires_ack\":true}' > agents/bob/send"),
                 0, "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(await_count(ON(0, "agents/alice/inbox"), 1, 10000), 1);
    m = only_message(ON(0, "agents/alice/inbox"));
    cr_assert_str_eq(bus_str(m, "from"), "bob@b");
    cr_assert(json_is_true(json_object_get(m, "requires_ack")));
    json_decref(m);
    cr_assert_eq(bus_sh(&node[0], &r, "rm agents/alice/inbox/*"), 0, "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(await_count(ON(1, "agents/bob/inbox"), 2, 10000), 2, "the ack came back");
    cr_assert_eq(bus_sh(&node[1], &r, "cat agents/bob/inbox/* | jq -r .type | sort | tr '\\n' ' '"),
                 0);
    cr_assert_str_eq(r.out, "ack message ");
    bus_cmd_free(&r);

    /* An agent no node has: ENOENT at once, with the reason logged. */
    cr_assert_eq(bus_write(ON(0, "agents/alice/outbox/nobody@b"), "x\n"), ENOENT);

    /* Health: remote agents and the nodes in health/status; agents/bob@b/health. */
    cr_assert_eq(bus_sh(&node[1], &r, "echo '{\"status\":\"healthy\"}' > agents/bob/health"),
                 0);
    bus_cmd_free(&r);
    long long end = bus_now_ms() + 10000;
    json_t *st = NULL;
    for (;;) {
        json_decref(st);
        st = bus_json_file(ON(0, "health/status"), 0);
        cr_assert_not_null(st);
        const char *bob = json_string_value(
            json_object_get(json_object_get(json_object_get(st, "agents"), "bob@b"), "status"));
        bool all_up = true;
        for (int i = 0; i < NODES; i++) {
            const char *ns = json_string_value(json_object_get(
                json_object_get(json_object_get(st, "nodes"), names[i]), "status"));
            all_up = all_up && ns && strcmp(ns, "up") == 0;
        }
        /* Each node's own record too comes back through its KV watcher. */
        if ((bob && strcmp(bob, "healthy") == 0 && all_up) || bus_now_ms() > end)
            break;
        bus_pause_ms(100);
    }
    json_t *nodes = json_object_get(st, "nodes");
    for (int i = 0; i < NODES; i++)
        cr_assert_str_eq(json_string_value(json_object_get(json_object_get(nodes, names[i]),
                                                           "status")),
                         "up", "node %s in health/status", names[i]);
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_object_get(st, "agents"), "bob@b"), "status")),
                     "healthy");
    json_decref(st);
    json_t *h = bus_json_file(ON(0, "agents/bob@b/health"), 0);
    cr_assert_str_eq(bus_str(h, "agent"), "bob@b");
    cr_assert_str_eq(bus_str(h, "status"), "healthy");
    json_decref(h);
    struct stat sb;
    cr_assert_eq(stat(ON(0, "agents/bob@b"), &sb), 0);
    cr_assert_eq(sb.st_mode & 07777, 0555, "a remote agent is a read-only directory");
    cr_assert_neq(mkdir(ON(0, "agents/bob@b/inbox"), 0755), 0);
    stop_all();
}

Test(cluster, a_message_for_an_agent_gone_there_comes_back_undeliverable, .init = setup,
     .fini = teardown, .timeout = BUS_TEST_TIMEOUT)
{
    alice_and_bob();
    /* b stops; JetStream keeps what is sent to it. */
    bus_terminate(&node[1]);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&node[0], &r, "echo '{\"to\":\"bob@b\",\"payload\":1,"
                                      "\"correlation_id\":\"q-1\"}' > agents/alice/send"),
                 0, "%s", r.err);
    bus_cmd_free(&r);
    /* b comes back on an empty store: there is no bob there any more. */
    cr_assert_eq(bus_sh(&node[1], NULL, "rm -rf %s && mkdir %s", node[1].store, node[1].store),
                 0);
    node_launch(1, NULL);
    cr_assert_eq(await_count(ON(0, "agents/alice/inbox"), 1, 15000), 1);
    json_t *m = only_message(ON(0, "agents/alice/inbox"));
    cr_assert_str_eq(bus_str(m, "type"), "undeliverable");
    cr_assert_str_eq(bus_str(m, "from"), "bob@b");
    char *text = json_dumps(m, JSON_COMPACT);
    cr_assert_str_eq(json_string_value(json_object_get(m, "correlation_id")), "q-1", "%s", text);
    free(text);
    json_t *p = json_object_get(m, "payload");
    cr_assert(strstr(json_string_value(json_object_get(p, "reason")), "bob"));
    json_decref(m);
    /* ... and the node that lost bob no longer offers it. */
    long long end = bus_now_ms() + 5000;
    while (exists(ON(0, "agents/bob@b")) && bus_now_ms() < end)
        bus_pause_ms(100);
    cr_assert_not(exists(ON(0, "agents/bob@b")), "bob@b is gone from a's agents/");
    stop_all();
}

/* a talks to the edge server only (as to the NATS server on its own host), so
 * stopping that server cuts a off while the JetStream servers go on. */
static void setup_a_on_the_edge(void) { start_nodes(true); }

Test(cluster, a_node_cut_off_keeps_its_local_bus_and_resumes_without_a_restart,
     .init = setup_a_on_the_edge, .fini = teardown, .timeout = BUS_TEST_TIMEOUT)
{
    alice_and_bob();
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&node[0], &r, "echo before > agents/alice/outbox/bob@b"), 0, "%s",
                 r.err);
    bus_cmd_free(&r);
    nats_kill9(&nats, NATS_EDGE);

    /* The local bus works; a remote send fails with ETIMEDOUT and is not sent. */
    cr_assert_eq(mkdir(ON(0, "agents/carol"), 0755), 0);
    cr_assert_eq(bus_sh(&node[0], &r, "echo local > agents/alice/outbox/carol"), 0, "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_count(ON(0, "agents/carol/inbox")), 1);
    long long t0 = bus_now_ms();
    char *argv[] = {"bash", "-c", "echo cut-off > agents/alice/outbox/bob@b", NULL};
    cr_assert_neq(bus_exec(node[0].mnt, argv, 30000, &r), 0, "bash's echo fails");
    cr_assert(strstr(r.err, "Connection timed out"), "ETIMEDOUT: %s", r.err);
    cr_assert_lt(bus_now_ms() - t0, 8000, "within --cluster-timeout and a little");
    bus_cmd_free(&r);
    cr_assert_eq(bus_sh(&node[0], &r, "grep -c ETIMEDOUT agents/alice/errors"), 0,
                 "the reason is in alice's errors");
    bus_cmd_free(&r);
    /* Meanwhile b sends to alice: JetStream holds it for a. */
    cr_assert_eq(bus_sh(&node[1], &r, "echo while-away > agents/bob/outbox/alice@a"), 0, "%s",
                 r.err);
    bus_cmd_free(&r);

    /* The server comes back: a resumes by itself. */
    nats_restart(&nats, NATS_EDGE);
    long long end = bus_now_ms() + 20000;
    int rc;
    while ((rc = bus_sh(&node[0], NULL, "echo after > agents/alice/outbox/bob@b")) != 0 &&
           bus_now_ms() < end)
        bus_pause_ms(200);
    cr_assert_eq(rc, 0, "a remote send works again after the reconnect");
    if (await_count(ON(0, "agents/alice/inbox"), 1, 15000) != 1) {
        struct bus_cmd d;
        bus_sh(&node[0], &d, "cat %s %s; curl -s 'http://127.0.0.1:%d/jsz?consumers=true' | jq -c '.account_details[0].stream_detail[0].consumer_detail[] | {name, num_pending, num_ack_pending, num_waiting, num_redelivered, delivered, ack_floor, cluster: .cluster.leader}'", node[0].log, node[1].log, nats.http_port[1]);
        cr_assert_fail("b's message did not arrive: %s", d.out);
    }
    cr_assert_eq(await_count(ON(1, "agents/bob/inbox"), 2, 10000), 2);
    bus_pause_ms(500);
    cr_assert_eq(bus_sh(&node[1], &r, "cat agents/bob/inbox/* | jq -r .payload | tr '\\n' ' '"),
                 0);
    cr_assert_str_eq(r.out, "before after ", "the timed-out send was not delivered");
    bus_cmd_free(&r);
    stop_all();
}

/* The status of node `name` in node i's health/status, "" when it is not listed. */
static char *node_status(int i, const char *name)
{
    json_t *st = bus_json_file(ON(i, "health/status"), 0);
    cr_assert_not_null(st);
    const char *v = json_string_value(
        json_object_get(json_object_get(json_object_get(st, "nodes"), name), "status"));
    char *out = strdup(v ? v : "");
    json_decref(st);
    return out;
}

static void await_node_status(int i, const char *name, const char *want, int ms)
{
    long long end = bus_now_ms() + ms;
    for (;;) {
        char *got = node_status(i, name);
        bool done = strcmp(got, want) == 0;
        if (!done && bus_now_ms() > end)
            cr_assert_fail("node %s is \"%s\" on %s, not \"%s\"", name, got, names[i], want);
        free(got);
        if (done)
            return;
        bus_pause_ms(200);
    }
}

/* --health-ttl 4, so that a node's silence shows within seconds. */
static void setup_short_health_ttl(void)
{
    nats_start(&nats, false);
    for (int i = 0; i < NODES; i++) {
        bus_prepare(&node[i]);
        node_launch_with(i, NULL, "2", "100000", "4");
    }
}

Test(cluster, retries_are_stored_once_and_ttls_and_silence_cross_nodes, .init = setup_short_health_ttl,
     .fini = teardown, .timeout = BUS_TEST_TIMEOUT)
{
    alice_and_bob();
    /* A send with an idempotency key, retried after node a lost its whole store (a
     * tmpfs store after a reboot): JetStream knows the key, bob gets it once. */
    static const char once[] = "{\"to\":\"bob@b\",\"payload\":\"k1\",\"idempotency_key\":\"order 1\"}\n";
    cr_assert_eq(bus_write(ON(0, "agents/alice/send"), once), 0);
    cr_assert_eq(await_count(ON(1, "agents/bob/inbox"), 1, 10000), 1);
    bus_terminate(&node[0]);
    cr_assert_eq(bus_sh(&node[1], NULL, "rm -rf %s && mkdir %s", node[0].store, node[0].store),
                 0);
    node_launch_with(0, NULL, "2", "100000", "4");
    cr_assert_eq(mkdir(ON(0, "agents/alice"), 0755), 0);
    await_path(ON(0, "agents/bob@b"), 20000);
    cr_assert_eq(bus_write(ON(0, "agents/alice/send"), once), 0, "the retry succeeds");
    cr_assert_eq(bus_write(ON(0, "agents/alice/send"),
                           "{\"to\":\"bob@b\",\"payload\":\"k2\",\"idempotency_key\":\"order 2\"}\n"),
                 0);
    cr_assert_eq(await_count(ON(1, "agents/bob/inbox"), 2, 10000), 2);
    bus_pause_ms(1000);
    char *got = bob_payloads();
    cr_assert_str_eq(got, "k1 k2 ", "the retry was not delivered again");
    free(got);

    /* b stops: past --health-ttl (4 s) it is stale on a. A message with a ttl of 1 s
     * waits in JetStream meanwhile; when b is back it is past its ttl there: a dead
     * letter with reason "expired", not a pending message. */
    await_node_status(0, "b", "up", 10000);
    bus_terminate(&node[1]);
    await_node_status(0, "b", "stale", 15000);
    cr_assert_eq(bus_write(ON(0, "agents/alice/send"),
                           "{\"to\":\"bob@b\",\"payload\":\"late\",\"ttl_s\":1}\n"), 0);
    bus_pause_ms(2000);
    node_launch_with(1, NULL, "2", "100000", "4");
    await_count(ON(1, "agents/bob/dead"), 1, 15000);
    json_t *m = only_message(ON(1, "agents/bob/dead"));
    cr_assert_str_eq(bus_str(m, "payload"), "late");
    cr_assert_str_eq(bus_str(json_object_get(m, "dead"), "reason"), "expired");
    json_decref(m);
    cr_assert_eq(bus_count(ON(1, "agents/bob/inbox")), 2);
    await_node_status(0, "b", "up", 10000);
    stop_all();
}

/* ---- kill -9 under traffic -------------------------------------------- */

#define SENDERS 4
#define PER_SENDER 2000

/* Sender k's log: "K i" for each send that returned success, "F i" for each that did
 * not; outcome[k][i] = 'K' or 'F'. */
static void read_sender_log(const char *out, char *outcome)
{
    for (const char *p = out; p && *p;) {
        char what;
        int i;
        if (sscanf(p, "%c %d", &what, &i) == 2 && i >= 1 && i <= PER_SENDER)
            outcome[i] = what;
        p = strchr(p, '\n');
        if (p)
            p++;
    }
}

/* Waits until bob's inbox stops growing for 3 s (at least want files). */
static long settle_inbox(long want, int ms)
{
    long long end = bus_now_ms() + ms, still_since = bus_now_ms();
    long last = -1, n;
    for (;;) {
        n = bus_count(ON(1, "agents/bob/inbox"));
        if (n != last)
            still_since = bus_now_ms();
        last = n;
        if ((n >= want && bus_now_ms() - still_since >= 3000) || bus_now_ms() > end)
            return n;
        bus_pause_ms(200);
    }
}

Test(cluster, sends_survive_kill_9_of_a_nats_server_and_of_the_receiving_node, .init = setup,
     .fini = teardown, .timeout = 240)
{
    /* Senders s0, s1 on a and s2, s3 on c, all to bob on b. */
    static const int on[SENDERS] = {0, 0, 2, 2};
    for (int k = 0; k < SENDERS; k++) {
        char path[64];
        snprintf(path, sizeof path, "agents/s%d", k);
        cr_assert_eq(mkdir(ON(on[k], "%s", path), 0755), 0);
    }
    cr_assert_eq(mkdir(ON(1, "agents/bob"), 0755), 0);
    await_path(ON(0, "agents/bob@b"), 20000);
    await_path(ON(2, "agents/bob@b"), 20000);

    struct bus_proc senders[SENDERS];
    for (int k = 0; k < SENDERS; k++)
        bus_spawn(&node[on[k]], &senders[k],
                  "i=1; while [ $i -le %d ]; do "
                  "if echo '{\"to\":\"bob@b\",\"payload\":\"s%d-'$i'\"}' > agents/s%d/send "
                  "2>/dev/null; then echo K $i; else echo F $i; fi; i=$((i+1)); done",
                  PER_SENDER, k, k);

    /* Mid-traffic: a JetStream server dies and comes back, then b's busfs. */
    bus_pause_ms(1500);
    nats_kill9(&nats, 1);
    bus_pause_ms(2000);
    nats_restart(&nats, 1);
    bus_pause_ms(1000);
    bus_kill9(&node[1]);
    bus_pause_ms(1000);
    node_launch(1, NULL);

    char outcome[SENDERS][PER_SENDER + 1];
    long ok = 0, failed = 0;
    for (int k = 0; k < SENDERS; k++) {
        char *out = NULL;
        cr_assert_eq(bus_proc_wait(&senders[k], 180000, &out), 0, "sender %d", k);
        memset(outcome[k], 0, sizeof outcome[k]);
        read_sender_log(out, outcome[k]);
        free(out);
        for (int i = 1; i <= PER_SENDER; i++) {
            cr_assert(outcome[k][i] == 'K' || outcome[k][i] == 'F', "sender %d, send %d: "
                      "no outcome", k, i);
            ok += outcome[k][i] == 'K';
            failed += outcome[k][i] == 'F';
        }
    }
    cr_assert_gt(ok, SENDERS * PER_SENDER / 2, "most sends succeeded (%ld failed)", failed);

    /* Every send that returned success is in bob's inbox exactly once; per sender,
     * sequences go 1, 2, 3 ... in inbox order and the payloads only grow. */
    long n = settle_inbox(ok, 60000);
    size_t count;
    char **files = bus_ls(ON(1, "agents/bob/inbox"), &count);
    cr_assert_eq((long)count, n);
    int seen[SENDERS][PER_SENDER + 1];
    memset(seen, 0, sizeof seen);
    long long last_seq[SENDERS] = {0};
    int last_i[SENDERS] = {0};
    for (size_t f = 0; f < count; f++) {
        json_t *m = bus_json_file(ON(1, "agents/bob/inbox/%s", files[f]), 0);
        cr_assert_not_null(m, "%s", files[f]);
        int k, i;
        cr_assert_eq(sscanf(bus_str(m, "payload"), "s%d-%d", &k, &i), 2);
        cr_assert(k >= 0 && k < SENDERS && i >= 1 && i <= PER_SENDER);
        char from[32];
        snprintf(from, sizeof from, "s%d@%s", k, names[on[k]]);
        cr_assert_str_eq(bus_str(m, "from"), from);
        cr_assert_eq(seen[k][i], 0, "s%d-%d delivered twice", k, i);
        seen[k][i] = 1;
        cr_assert_eq(bus_int(m, "sequence"), last_seq[k] + 1, "s%d: sequence %lld after %lld",
                     k, (long long)bus_int(m, "sequence"), last_seq[k]);
        last_seq[k]++;
        cr_assert_gt(i, last_i[k], "s%d-%d after s%d-%d", k, i, k, last_i[k]);
        last_i[k] = i;
        cr_assert(outcome[k][i] == 'K' || outcome[k][i] == 'F');
        json_decref(m);
    }
    bus_ls_free(files, count);
    long lost = 0;
    for (int k = 0; k < SENDERS; k++)
        for (int i = 1; i <= PER_SENDER; i++)
            lost += outcome[k][i] == 'K' && !seen[k][i];
    cr_assert_eq(lost, 0, "%ld sends that returned success are not in bob's inbox", lost);
    cr_log_info("kill -9 under traffic: %ld sent, %ld failed, %ld delivered", ok, failed, n);
    stop_all();
}

/* ---- answered as soon as JetStream stored it ---------------------------- */

static void setup_long_timeout(void)
{
    nats_start(&nats, false);
    for (int i = 0; i < NODES; i++) {
        bus_prepare(&node[i]);
        node_launch_with(i, NULL, "30", "100000", "30");
    }
}

Test(cluster, concurrent_sends_are_answered_once_stored_not_at_the_timeout,
     .init = setup_long_timeout, .fini = teardown, .timeout = 240)
{
    /* Four senders on a at once keep the publisher busy, so it often takes a message
     * from the queue in the instant between its commit and the send starting to wait
     * for it. Each send must still return when JetStream stored it, not when
     * --cluster-timeout (30 s) ends. */
    cr_assert_eq(mkdir(ON(1, "agents/bob"), 0755), 0);
    await_path(ON(0, "agents/bob@b"), 20000);
    struct bus_proc senders[SENDERS];
    for (int k = 0; k < SENDERS; k++) {
        char path[64];
        snprintf(path, sizeof path, "agents/q%d", k);
        cr_assert_eq(mkdir(ON(0, "%s", path), 0755), 0);
        /* Prints the longest send in ms, then "failed N". */
        bus_spawn(&node[0], &senders[k],
                  "exec bash -c 'max=0; failed=0; for i in $(seq 400); do t0=${EPOCHREALTIME/./}; "
                  "echo q%d-$i > agents/q%d/outbox/bob@b || failed=$((failed+1)); "
                  "t=$(( (${EPOCHREALTIME/./} - t0) / 1000 )); [ $t -gt $max ] && max=$t; "
                  "done; echo $max; echo failed $failed'", k, k);
    }
    for (int k = 0; k < SENDERS; k++) {
        char *out = NULL;
        cr_assert_eq(bus_proc_wait(&senders[k], 200000, &out), 0, "sender %d", k);
        long max = -1, failed = -1;
        cr_assert_eq(sscanf(out, "%ld failed %ld", &max, &failed), 2, "%s", out);
        free(out);
        cr_assert_eq(failed, 0, "sender %d: %ld sends failed", k, failed);
        cr_assert_lt(max, 10000, "sender %d: a send took %ld ms: it waited for the timeout, "
                     "not for JetStream", k, max);
    }
    cr_assert_eq(await_count(ON(1, "agents/bob/inbox"), SENDERS * 400, 30000), SENDERS * 400);
    stop_all();
}

/* ---- a full inbox on the receiving node ----------------------------------- */

static void setup_small_inbox_on_b(void)
{
    nats_start(&nats, false);
    for (int i = 0; i < NODES; i++) {
        bus_prepare(&node[i]);
        node_launch_with(i, NULL, "5", i == 1 ? "3" : "100000", "30");
    }
}

Test(cluster, a_full_inbox_on_the_other_node_delays_delivery_in_order, .init = setup_small_inbox_on_b,
     .fini = teardown, .timeout = BUS_TEST_TIMEOUT)
{
    alice_and_bob();
    /* Eight sends succeed (JetStream has them); bob's inbox holds three. */
    for (int i = 1; i <= 8; i++) {
        char text[16];
        snprintf(text, sizeof text, "m%d\n", i);
        cr_assert_eq(bus_write(ON(0, "agents/alice/outbox/bob@b"), text), 0, "send %d", i);
    }
    cr_assert_eq(await_count(ON(1, "agents/bob/inbox"), 3, 10000), 3);
    bus_pause_ms(300);
    char *got = bob_payloads();
    cr_assert_str_eq(got, "m1 m2 m3 ", "the first three, in order");
    free(got);
    /* bob takes one; a ninth message comes at once, while m4 ... m8 wait for their
     * delay: it must not pass them. Then bob reads on, one at a time. */
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&node[1], &r, "rm agents/bob/inbox/$(ls agents/bob/inbox | head -1)"), 0,
                 "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_write(ON(0, "agents/alice/outbox/bob@b"), "m9\n"), 0);
    char order[256] = "m1 ";
    long long end = bus_now_ms() + 60000;
    while (strlen(order) < sizeof "m1 m2 m3 m4 m5 m6 m7 m8 m9 " - 1 && bus_now_ms() < end) {
        size_t n;
        char **files = bus_ls(ON(1, "agents/bob/inbox"), &n);
        if (n) {
            json_t *m = bus_json_file(ON(1, "agents/bob/inbox/%s", files[0]), 0);
            cr_assert_not_null(m);
            char one[16];
            snprintf(one, sizeof one, "%s ", bus_str(m, "payload"));
            strcat(order, one);
            cr_assert_eq(bus_int(m, "sequence"), (long long)(strlen(order) / 3),
                         "%s: sequence %lld", order, (long long)bus_int(m, "sequence"));
            json_decref(m);
            cr_assert_eq(unlink(ON(1, "agents/bob/inbox/%s", files[0])), 0);
        } else {
            bus_pause_ms(50);
        }
        bus_ls_free(files, n);
    }
    cr_assert_str_eq(order, "m1 m2 m3 m4 m5 m6 m7 m8 m9 ", "delivered late, never out of order: %s", order);
    bus_pause_ms(1500);
    cr_assert_eq(bus_count(ON(1, "agents/bob/inbox")), 0, "and never twice");
    stop_all();
}

static void setup_no_nats(void)
{
    nats_require();
    bus_prepare(&node[0]);
    /* A port nothing listens on: the node starts, and keeps trying in the background. */
    node_launch(0, "nats://127.0.0.1:1");
}

Test(cluster, a_node_starts_and_stops_while_nats_is_unreachable, .init = setup_no_nats,
     .fini = teardown, .timeout = BUS_TEST_TIMEOUT)
{
    cr_assert_eq(mkdir(ON(0, "agents/alice"), 0755), 0, "%s", strerror(errno));
    cr_assert_eq(mkdir(ON(0, "agents/carol"), 0755), 0);
    cr_assert_eq(bus_write(ON(0, "agents/alice/outbox/carol"), "local\n"), 0);
    cr_assert_eq(bus_count(ON(0, "agents/carol/inbox")), 1, "the local bus works");
    cr_assert_eq(bus_write(ON(0, "agents/alice/outbox/bob@b"), "x\n"), ENOENT,
                 "no remote agent is known");
    json_t *st = bus_json_file(ON(0, "health/status"), 0);
    cr_assert(json_is_object(json_object_get(st, "nodes")));
    json_decref(st);
    long long t0 = bus_now_ms();
    bus_stop(&node[0]); /* SIGTERM: exit 0, no mount left */
    cr_assert_lt(bus_now_ms() - t0, 5000, "the stop does not wait for NATS");
}

/* ---- joining a cluster that has no leader yet ------------------------------- */

static void setup_without_quorum(void)
{
    nats_start(&nats, false);
    /* Two of three servers down: the one left cannot elect a JetStream leader, and a
     * stream request sent to it now is never answered. */
    nats_kill9(&nats, 1);
    nats_kill9(&nats, 2);
    for (int i = 0; i < 2; i++) {
        bus_prepare(&node[i]);
        node_launch_with(i, nats_url(&nats, 0), "30", "100000", "30");
    }
}

Test(cluster, nodes_join_soon_after_the_cluster_has_a_leader_whatever_the_cluster_timeout,
     .init = setup_without_quorum, .fini = teardown, .timeout = 120)
{
    /* --cluster-timeout (30 s) bounds a send; it must not also be how long a node that
     * asked while the servers were electing waits before it asks again. */
    cr_assert_eq(mkdir(ON(1, "agents/bob"), 0755), 0);
    bus_pause_ms(2000);
    cr_assert(!exists(ON(0, "agents/bob@b")), "no JetStream yet, so no directory of agents");
    nats_restart(&nats, 1);
    nats_restart(&nats, 2);
    long long t0 = bus_now_ms();
    await_path(ON(0, "agents/bob@b"), 60000);
    long long took = bus_now_ms() - t0;
    cr_assert_lt(took, 20000, "a learned of bob@b %lld ms after the cluster was whole again", took);
    /* Node b is up and has been for a moment only: what a does not know yet is not
     * silence past --health-ttl (30 s). */
    json_t *h = bus_json_file(ON(0, "agents/bob@b/health"), 0);
    cr_assert_not_null(h);
    cr_assert_str_neq(bus_str(h, "status"), "stale", "bob@b is stale the moment it is known: %s",
                      bus_str(h, "reason"));
    json_decref(h);
    cr_assert_eq(bus_write(ON(0, "agents/alice/outbox/bob@b"), "hi\n"), ENOENT, "no alice yet");
    cr_assert_eq(mkdir(ON(0, "agents/alice"), 0755), 0);
    cr_assert_eq(bus_write(ON(0, "agents/alice/outbox/bob@b"), "hi\n"), 0);
    cr_assert_eq(await_count(ON(1, "agents/bob/inbox"), 1, 20000), 1);
    stop_all();
}

/* ---- a full store on the receiving node ------------------------------------ */

static void setup_small_store_on_b(void)
{
    nats_start(&nats, false);
    for (int i = 0; i < 2; i++) {
        bus_prepare(&node[i]);
        if (i == 1)
            node_launch_small_store(i, "256K");
        else
            node_launch(i, NULL);
    }
}

Test(cluster, a_full_store_on_the_other_node_delays_delivery_until_it_is_consumed,
     .init = setup_small_store_on_b, .fini = teardown, .timeout = 180)
{
    /* Sixty 12 KB messages to bob, whose node's store holds about twenty: the rest wait
     * in JetStream and come, in order, as bob consumes; none is lost. */
    alice_and_bob();
    enum { N = 60, BODY = 12000 };
    char *text = malloc(BODY + 16);
    cr_assert_not_null(text);
    for (int i = 1; i <= N; i++) {
        int n = snprintf(text, BODY + 16, "m%d ", i);
        memset(text + n, 'y', BODY);
        text[n + BODY] = '\n';
        text[n + BODY + 1] = '\0';
        cr_assert_eq(bus_write(ON(0, "agents/alice/outbox/bob@b"), text), 0, "send %d", i);
    }
    free(text);
    int next = 1;
    long long end = bus_now_ms() + 90000;
    while (next <= N) {
        cr_assert_lt(bus_now_ms(), end, "only %d of %d arrived", next - 1, N);
        size_t n;
        char **files = bus_ls(ON(1, "agents/bob/inbox"), &n);
        for (size_t k = 0; k < n; k++) {
            json_t *m = bus_json_file(ON(1, "agents/bob/inbox/%s", files[k]), 0);
            cr_assert_not_null(m);
            int got = atoi(bus_str(m, "payload") + 1);
            cr_assert_eq(got, next, "m%d arrived where m%d was due", got, next);
            json_decref(m);
            cr_assert_eq(unlink(ON(1, "agents/bob/inbox/%s", files[k])), 0);
            next++;
        }
        bus_ls_free(files, n);
        if (!n)
            bus_pause_ms(100);
    }
    cr_assert_eq(bus_write(ON(1, "agents/bob/outbox/bob"), "after\n"), 0,
                 "and the store takes local sends again");
    stop_all();
}
