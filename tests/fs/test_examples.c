/*
 * test_examples.c — the scripts in examples/ run against a real mount, as the
 * README tells a user to run them: the monitoring check (monitor.sh) and the worker
 * loop (worker.sh: health, heartbeat, drain).
 */
#include "harness.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* examples/NAME of the repository that holds the busfs binary under test (./busfs,
 * or build-asan/busfs one level down). */
static const char *example(const char *name)
{
    static char path[PATH_MAX + 64];
    char dir[PATH_MAX];
    cr_assert(realpath(bus_bin(), dir), "realpath %s", bus_bin());
    for (int up = 0; up < 3; up++) {
        char parent[PATH_MAX];
        snprintf(parent, sizeof parent, "%s", dirname(dir));
        snprintf(dir, sizeof dir, "%s", parent);
        snprintf(path, sizeof path, "%s/examples/%s", dir, name);
        if (access(path, R_OK) == 0)
            return path;
    }
    cr_assert_fail("no examples/%s near %s", name, bus_bin());
    return NULL;
}

static void fast_alerts(void)
{
    bus_require_fuse();
    bus_start(&bus, "--alert-interval", "0.1", NULL);
}

static int monitor_once(struct bus_cmd *r)
{
    return bus_sh(&bus, r, "%s . --once", example("monitor.sh"));
}

BUS_TEST_WITH(examples, monitor_once_exits_with_the_bus_status, fast_alerts)
{
    struct bus_cmd r;
    cr_assert_eq(monitor_once(&r), 0, "no agents: healthy; said %s %s", r.out, r.err);
    cr_assert(strstr(r.out, "bus healthy (no agents)"), "%s", r.out);
    bus_cmd_free(&r);

    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(bus_write(AT("agents/alice/health"), "healthy\n"), 0);
    cr_assert_eq(monitor_once(&r), 0, "said %s", r.out);
    cr_assert(strstr(r.out, "bus healthy (1 healthy, 1 unknown)"), "%s", r.out);
    bus_cmd_free(&r);

    cr_assert_eq(bus_write(AT("agents/bob/health"), "degraded disk 91% full\n"), 0);
    cr_assert_eq(monitor_once(&r), 1, "said %s", r.out);
    cr_assert(strstr(r.out, "bob: degraded — disk 91% full"), "%s", r.out);
    cr_assert_null(strstr(r.out, "alice:"), "healthy agents are not listed: %s", r.out);
    bus_cmd_free(&r);

    cr_assert_eq(bus_write(AT("agents/alice/health"), "{\"status\":\"unhealthy\"}"), 0);
    cr_assert_eq(monitor_once(&r), 2, "said %s", r.out);
    cr_assert(strstr(r.out, "bus unhealthy"), "%s", r.out);
    bus_cmd_free(&r);

    /* Alerts firing now are listed too. */
    cr_assert_eq(bus_write(AT("alerts/rules"), "slow task.ms max > 100 critical\n"), 0);
    cr_assert_eq(bus_append(AT("agents/alice/metrics"), "task.ms 500 ms\n"), 0);
    bool listed = false;
    for (int i = 0; i < 200 && !listed; i++) {
        monitor_once(&r);
        listed = strstr(r.out, "alert slow [critical] on alice: 500 (threshold 100)") != NULL;
        bus_cmd_free(&r);
        if (!listed)
            bus_pause_ms(100);
    }
    cr_assert(listed, "monitor.sh never listed the firing alert");

    cr_assert_eq(bus_sh(&bus, &r, "%s ./nowhere --once", example("monitor.sh")), 3);
    bus_cmd_free(&r);
}

static void short_ttl(void)
{
    bus_require_fuse();
    bus_start(&bus, "--health-ttl", "1", NULL);
}

BUS_TEST_WITH(examples, monitor_once_counts_a_stale_agent_as_unhealthy, short_ttl)
{
    bus_agents(&bus, "alice", NULL);
    cr_assert_eq(bus_write(AT("agents/alice/health"), "healthy\n"), 0);
    bus_pause_ms(1300);
    struct bus_cmd r;
    cr_assert_eq(monitor_once(&r), 2, "said %s", r.out);
    cr_assert(strstr(r.out, "alice: stale"), "%s", r.out);
    bus_cmd_free(&r);
}

/* The worker reports healthy, keeps its heartbeat while it waits past the ttl,
 * handles messages, and ends by itself once drained. */
BUS_TEST_WITH(examples, worker_reports_health_beats_and_ends_when_drained, short_ttl)
{
    bus_agents(&bus, "alice", NULL);
    struct bus_proc w;
    bus_spawn(&bus, &w, "exec %s . bob 0.3", example("worker.sh"));

    json_t *h = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(h);
        char *text = bus_read(AT("agents/bob/health"), NULL); /* bob may not exist yet */
        h = text ? bus_json_file(AT("agents/bob/health"), 0) : NULL;
        free(text);
        if (h && strcmp(bus_str(h, "status"), "healthy") == 0)
            break;
        bus_pause_ms(100);
    }
    cr_assert(h && strcmp(bus_str(h, "status"), "healthy") == 0, "the worker never reported");
    json_decref(h);

    bus_pause_ms(1500); /* longer than the ttl: only the heartbeat keeps bob fresh */
    h = bus_json_file(AT("agents/bob/health"), 0);
    cr_assert_str_eq(bus_str(h, "status"), "healthy", "bob went stale while waiting");
    json_decref(h);

    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "{\"n\":2}");
    bus_send("alice", "bob", "three");
    cr_assert_eq(bus_write(AT("agents/bob/ctl"), "drain\n"), 0);

    char *out = NULL;
    int status = bus_proc_wait(&w, BUS_WAIT_MS, &out);
    cr_assert_eq(status, 0, "worker status %d, said: %s", status, out ? out : "");
    cr_assert(strstr(out, "bob: got \"one\" from alice"), "%s", out);
    cr_assert(strstr(out, "bob: got {\"n\":2} from alice"), "%s", out);
    cr_assert(strstr(out, "bob: drained after 3 message(s)"), "%s", out);
    free(out);

    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "every message was consumed");
    json_t *points = bus_jsonl(AT("agents/bob/metrics"));
    cr_assert_eq(json_array_size(points), 3, "one task.ms point per message");
    cr_assert_str_eq(bus_str(json_array_get(points, 0), "metric"), "task.ms");
    cr_assert_str_eq(bus_str(json_array_get(points, 0), "unit"), "ms");
    json_decref(points);
    h = bus_json_file(AT("agents/bob/health"), 0);
    cr_assert_str_eq(bus_str(h, "status"), "degraded");
    cr_assert_str_eq(bus_str(h, "reason"), "drained after 3 message(s)");
    cr_assert_str_eq(bus_str(h, "state"), "draining");
    json_decref(h);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "rmdir agents/bob"), 0, "rmdir after the drain: %s", r.err);
    bus_cmd_free(&r);
}

static void start_short_leases(void)
{
    bus_require_fuse();
    bus_start(&bus, "--lease", "2", "--max-deliver", "2", NULL);
}

/* Three workers share bob's inbox with leases: every task that succeeds is acked
 * once, the one that always fails is given back, retried and ends in dead/, and the
 * pool ends by itself once bob is drained. */
BUS_TEST_WITH(examples, worker_pool_acks_what_succeeds_and_dead_letters_what_keeps_failing,
              start_short_leases)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_proc w;
    bus_spawn(&bus, &w, "RENEW_SECONDS=1 exec %s . bob 3 sh -c "
              "'p=$(cat); case \"$p\" in *fail*) exit 1;; esac; sleep 0.2' 2>&1",
              example("worker-pool.sh"));
    for (int i = 0; i < 12; i++) {
        char text[32];
        snprintf(text, sizeof text, "{\"task\":%d}", i);
        bus_send("alice", "bob", text);
    }
    bus_send("alice", "bob", "{\"task\":\"fail\"}");
    cr_assert_eq(bus_write(AT("agents/bob/ctl"), "drain\n"), 0);
    /* About 5 s here (two 2 s leases for the failing task); the rest is slack for a
     * loaded machine (a sanitizer build beside the cluster tests). */
    char *out = NULL;
    int status = bus_proc_wait(&w, 40000, &out);
    cr_assert_eq(status, 0, "the pool's status %d, it said: %s", status, out ? out : "");
    cr_assert(strstr(out, "failed (delivery 2); giving it back"), "the failing task was tried "
              "twice: %s", out);
    free(out);
    json_t *ctl = bus_ctl("bob");
    cr_assert_eq(bus_int(ctl, "acked_total"), 12, "every good task acked once");
    cr_assert_eq(bus_int(ctl, "leased"), 0);
    cr_assert_eq(bus_int(ctl, "inbox_depth"), 0);
    cr_assert_eq(bus_int(ctl, "dead"), 1, "the failing task is a dead letter");
    json_decref(ctl);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat agents/bob/dead/* | jq -c .dead"), 0, "%s", r.err);
    cr_assert(strstr(r.out, "\"reason\":\"max_deliver\",\"deliveries\":2"), "%s", r.out);
    bus_cmd_free(&r);
}

/* Fetches http://127.0.0.1:PORT/metrics with bash's /dev/tcp (no curl needed). */
static int scrape(int port, struct bus_cmd *r)
{
    return bus_sh(&bus, r,
                  "bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d && "
                  "printf \"GET /metrics HTTP/1.0\\r\\n\\r\\n\" >&3 && cat <&3'",
                  port);
}

/* node_exporter's textfile collector serves busfs.prom as it is at each scrape. */
BUS_TEST(examples, node_exporter_serves_busfs_prom)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "hello");
    cr_assert_eq(bus_append(AT("agents/alice/metrics"), "coordination.time 150 ms\n"), 0);
    int port = 20000 + (int)(getpid() % 20000);
    struct bus_proc ne;
    bus_spawn(&bus, &ne, "exec bash %s . 127.0.0.1:%d 2>/dev/null", example("prometheus-textfile.sh"),
              port);
    struct bus_cmd r = {0};
    bool up = false;
    for (int i = 0; i < 200 && !up; i++) {
        bus_cmd_free(&r);
        up = scrape(port, &r) == 0 && strstr(r.out, "200 OK");
        if (!up)
            bus_pause_ms(50);
    }
    cr_assert(up, "node_exporter did not answer on port %d", port);
    cr_assert(strstr(r.out, "\nbusfs_messages_delivered_total 1\n"), "no delivered: %s", r.out);
    cr_assert(strstr(r.out, "busfs_user_metric_count{agent=\"alice\",name=\"coordination.time\","
                            "unit=\"ms\"} 1"),
              "no count line: %s", r.out);
    cr_assert_null(strstr(r.out, "\nnode_textfile_scrape_error 1\n"), "scrape error: %s", r.out);
    bus_cmd_free(&r);

    cr_assert_eq(bus_append(AT("agents/alice/metrics"), "coordination.time 170 ms\n"), 0);
    cr_assert_eq(scrape(port, &r), 0);
    cr_assert(strstr(r.out, "unit=\"ms\"} 2"), "a scrape sees the file as it is now: %s", r.out);
    bus_cmd_free(&r);
    kill(ne.pid, SIGTERM);
    bus_proc_wait(&ne, BUS_WAIT_MS, NULL);
}
