/*
 * test_series.c — SPEC §11 "Metric series" on a real mount: with --max-series 50,
 * fifty distinct agent+metric+unit series written with `echo ... >>
 * agents/X/metrics` succeed, the point that would start the 51st fails with ENOSPC
 * at write() and stores nothing, `errors` (and the agent's) say "too many metric
 * series", and the existing series still take points; with a short
 * --metrics-retention, idle series are freed and new ones can start.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void start_max_series_50(void)
{
    bus_require_fuse();
    bus_start(&bus, "--max-series", "50", NULL);
}

static void start_max_series_2_retention_2(void)
{
    bus_require_fuse();
    bus_start(&bus, "--max-series", "2", "--metrics-retention", "2", "--alert-interval", "0.2",
              NULL);
}

static void echo_point(const char *agent, const char *line)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "echo '%s' >> agents/%s/metrics", line, agent);
    cr_assert_eq(status, 0, "echo '%s' >> agents/%s/metrics: status %d: %s", line, agent, status,
                 r.err);
    bus_cmd_free(&r);
}

static long long size_of(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
    return (long long)st.st_size;
}

/* A write of text that starts a series too many: ENOSPC at write(), nothing stored,
 * and the same bytes written by the shell fail too. */
static void assert_refused(const char *agent, const char *text)
{
    long long before = size_of(AT("metrics/metrics.jsonl"));
    enum bus_step step = BUS_STEP_NONE;
    int err = bus_write_ex(AT("agents/%s/metrics", agent), O_WRONLY | O_APPEND, text,
                           strlen(text), &step);
    cr_assert(err == ENOSPC && step == BUS_STEP_WRITE, "%s <- %s: %s at step %d, want ENOSPC",
              agent, text, strerror(err), (int)step);
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "printf '%%s' '%s' >> agents/%s/metrics", text, agent), 0,
                  "the shell saw no error");
    cr_assert(r.err_len > 0, "echo failed silently");   /* dash says "I/O error" whatever */
    bus_cmd_free(&r);
    cr_assert_eq(size_of(AT("metrics/metrics.jsonl")), before, "a refused point was stored");
}

BUS_TEST_WITH(series, the_51st_series_fails_with_enospc_and_is_logged, start_max_series_50)
{
    char line[64];
    bus_agents(&bus, "alice", "bob", NULL);
    for (int i = 0; i < 30; i++) {
        snprintf(line, sizeof line, "job.time%d %d ms", i, i);
        echo_point("alice", line);
    }
    for (int i = 0; i < 10; i++) {
        snprintf(line, sizeof line, "job.time%d %d ms", i, i);
        echo_point("bob", line);   /* the same metric, another agent: another series */
        snprintf(line, sizeof line, "job.time%d %d s", i, i);
        echo_point("bob", line);   /* another unit: another series */
    }
    cr_assert_eq(bus_jsonl_count(AT("metrics/metrics.jsonl")), 50);

    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    assert_refused("alice", "job.time30 1 ms\n");
    bus_assert_logged(AT("errors"), top, "too many metric series");
    bus_assert_logged(AT("agents/alice/errors"), mine, "too many metric series");
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "grep -c 'too many metric series' errors"), 0, "%s", r.err);
    bus_cmd_free(&r);

    /* all or nothing: a point of an existing series in the same write is refused too */
    assert_refused("bob", "job.time0 5 ms\njob.time0 5 min\n");

    /* the fifty series still take points */
    echo_point("alice", "job.time0 7 ms");
    echo_point("bob", "job.time9 7 s");
    cr_assert_eq(bus_jsonl_count(AT("metrics/metrics.jsonl")), 52);
    json_t *doc = bus_json_file(AT("metrics/summary.json"), 0);
    json_t *m = json_object_get(json_object_get(doc, "metrics"), "job.time0");
    cr_assert_eq(bus_int(m, "count"), 4, "alice's two, bob's ms and s");
    json_decref(doc);
}

BUS_TEST_WITH(series, idle_series_are_freed_after_the_retention_and_new_ones_start,
              start_max_series_2_retention_2)
{
    bus_agents(&bus, "alice", NULL);
    echo_point("alice", "a 1");
    echo_point("alice", "b 2");
    assert_refused("alice", "c 3\n");
    bus_pause_ms(2600);
    echo_point("alice", "c 3");
    echo_point("alice", "d 4");
    assert_refused("alice", "e 5\n");
}
