/*
 * test_series.c — metric series (SPEC §11 "Metric series"): --max-series distinct
 * (metric, agent, unit) series; a write that would start one more gets ENOSPC "too
 * many metric series" and stores nothing; series with no point within
 * --metrics-retention are freed at a tick (or at the cap), so new ones can start;
 * and what a series costs in memory, counted from the sketches it holds.
 *
 * The bus tests go through the public API with the fake clock of unit.h; the memory
 * tests open core/metrics.h's struct metrics directly, to count its bytes.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../../core/metrics.h"
#include "busfs/bus.h"
#include "busfs/clock.h"
#include "unit.h"

#define SERIES_TEST(name) \
    Test(series, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

#define OWNER 1000
#define SEC INT64_C(1000000)

static struct bus *the_bus;
static struct bus_config cfg;
static char store_dir[PATH_MAX];

static void setup(void)
{
    struct timespec ts;
    unit_setup();
    unit_path(store_dir, "store");
    /* real time, as test_metrics.c: the points log dates segments by mtime */
    clock_gettime(CLOCK_REALTIME, &ts);
    unit_clock_set((int64_t)ts.tv_sec * SEC + ts.tv_nsec / 1000);
    cfg = (struct bus_config){.store_dir = store_dir, .store_max_bytes = UINT64_C(256) << 20};
}

static void teardown(void)
{
    if (the_bus)
        bus_close(the_bus);
    the_bus = NULL;
    unit_teardown();
}

static void start(void)
{
    struct bus_error err = {0};
    int rc = bus_open(&cfg, &the_bus, &err);
    cr_assert_eq(rc, 0, "bus_open: %d %s", rc, err.reason);
}

static void advance(double seconds)
{
    unit_clock_set(unit_clock_get() + (int64_t)(seconds * 1e6));
}

static uint64_t agent(const char *name)
{
    struct bus_agent_info info;
    struct bus_error err = {0};
    int rc = bus_agent_create(the_bus, name, OWNER, OWNER, &info, &err);
    cr_assert_eq(rc, 0, "create %s: %d %s", name, rc, err.reason);
    return info.id;
}

static int put_err(uint64_t id, const char *text, struct bus_error *err)
{
    memset(err, 0, sizeof *err);
    return bus_metrics_write(the_bus, id, OWNER, text, strlen(text), err);
}

static void put(uint64_t id, const char *text)
{
    struct bus_error err;
    int rc = put_err(id, text, &err);
    cr_assert_eq(rc, 0, "metrics <- %s: %d %s", text, rc, err.reason);
}

static void assert_too_many(uint64_t id, const char *text)
{
    struct bus_error err;
    uint64_t before = bus_metrics_size(the_bus, 0);
    int rc = put_err(id, text, &err);
    cr_assert_eq(rc, -ENOSPC, "metrics <- %s: %d %s", text, rc, err.reason);
    cr_assert_eq(err.code, ENOSPC);
    cr_assert_not_null(strstr(err.reason, "too many metric series"), "reason: %s", err.reason);
    cr_assert_eq(bus_metrics_size(the_bus, 0), before, "a refused write stores nothing");
}

/* summary.json's count for a metric, 0 when it is not listed. */
static int summary_count(const char *metric)
{
    struct buf b;
    json_error_t e;
    buf_init(&b);
    bus_summary_render(the_bus, &b);
    json_t *j = json_loadb(b.data, b.len, 0, &e);
    cr_assert_not_null(j, "summary.json: %s", e.text);
    json_t *c = json_object_get(json_object_get(json_object_get(j, "metrics"), metric), "count");
    int n = c ? (int)json_integer_value(c) : 0;
    json_decref(j);
    buf_free(&b);
    return n;
}

/* ========== the cap ========== */

SERIES_TEST(a_point_that_would_start_one_series_too_many_gets_enospc)
{
    cfg.max_series = 4;
    start();
    uint64_t a = agent("alice"), b = agent("bob");
    put(a, "m1 1\nm2 2 ms\n");
    put(a, "m2 3 s\n");          /* another unit: another series */
    put(b, "m1 4\n");            /* another agent: another series */
    assert_too_many(a, "m3 5\n");
    assert_too_many(b, "m2 1 ms\n");
    /* all or nothing: points of existing series in the same write are refused too */
    assert_too_many(a, "m1 7\nm9 8\n");
    cr_assert_eq(summary_count("m1"), 2);
    cr_assert_eq(summary_count("m9"), 0);
}

SERIES_TEST(series_at_the_cap_still_take_points)
{
    cfg.max_series = 3;
    start();
    uint64_t a = agent("alice");
    put(a, "m1 1\nm2 2\nm3 3\n");
    for (int i = 0; i < 50; i++)
        put(a, "m1 1\nm2 2\nm3 3\nm1 4\n");
    cr_assert_eq(summary_count("m1"), 101);
    cr_assert_eq(summary_count("m3"), 51);
    assert_too_many(a, "m4 1\n");
}

SERIES_TEST(the_default_cap_is_ten_thousand)
{
    start();
    cr_assert_eq(bus_config(the_bus)->max_series, 10000);
    uint64_t a = agent("alice");
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < 10000; i++)
        buf_printf(&b, "m%d %d\n", i, i);
    cr_assert(buf_ok(&b));
    cr_assert_eq(bus_metrics_write(the_bus, a, OWNER, b.data, b.len, &(struct bus_error){0}), 0);
    assert_too_many(a, "one.more 1\n");
    /* a write naming one new series many times counts it once */
    buf_free(&b);
}

SERIES_TEST(one_new_series_named_many_times_in_a_write_counts_once)
{
    cfg.max_series = 2;
    start();
    uint64_t a = agent("alice");
    put(a, "m1 1\n");
    put(a, "m2 1\nm2 2\nm2 3\nm1 4\nm2 5\n");
    cr_assert_eq(summary_count("m2"), 4);
}

/* ========== expiry ========== */

SERIES_TEST(series_idle_past_the_retention_are_freed_at_a_tick_and_new_ones_start)
{
    cfg.max_series = 3;
    cfg.metrics_retention_s = 10;
    cfg.summary_window_s = 60;
    start();
    uint64_t a = agent("alice");
    put(a, "old1 1\nold2 2\nkept 3\n");
    assert_too_many(a, "new1 1\n");
    advance(6);
    put(a, "kept 4\n");
    advance(5); /* old1 and old2: 11 s without a point; kept: 5 s */
    bus_tick(the_bus);
    put(a, "new1 1\nnew2 2\n");
    assert_too_many(a, "new3 1\n");
    /* the index still finds every series that moved in the array */
    put(a, "kept 5\nnew1 2\nnew2 3\n");
    cr_assert_eq(summary_count("kept"), 3);
    cr_assert_eq(summary_count("new1"), 2);
    cr_assert_eq(summary_count("new2"), 2);
    cr_assert_eq(summary_count("old1"), 0, "a freed series is gone from the summary");
    /* a freed series can start again, from nothing */
    advance(11);
    bus_tick(the_bus);
    put(a, "old1 9\n");
    cr_assert_eq(summary_count("old1"), 1);
}

SERIES_TEST(at_the_cap_idle_series_are_freed_without_waiting_for_the_tick)
{
    cfg.max_series = 2;
    cfg.metrics_retention_s = 10;
    start();
    uint64_t a = agent("alice");
    put(a, "m1 1\nm2 2\n");
    advance(10.5);
    put(a, "m3 3\nm4 4\n");
    assert_too_many(a, "m5 5\n");
}

SERIES_TEST(freeing_series_keeps_the_index_consistent_over_many_rounds)
{
    cfg.max_series = 64;
    cfg.metrics_retention_s = 10;
    start();
    uint64_t a = agent("alice");
    char line[64];
    /* Rounds of 40 series where every third one is kept alive: the frees hit
     * every position of the array. */
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 40; i++) {
            snprintf(line, sizeof line, "r%d.s%d %d\n", round, i, i);
            put(a, line);
        }
        for (int i = 0; i < 64; i += 3) {
            snprintf(line, sizeof line, "keep%d 1\n", i % 6);
            put(a, line);
        }
        advance(11);
        bus_tick(the_bus);
    }
    for (int i = 0; i < 6; i += 3) {
        snprintf(line, sizeof line, "keep%d", i);
        cr_assert_eq(summary_count(line), 0, "keep%d went idle at the last tick", i);
    }
    /* everything idle is gone: a full cap of new series fits */
    for (int i = 0; i < 64; i++) {
        snprintf(line, sizeof line, "fresh%d %d\n", i, i);
        put(a, line);
    }
    assert_too_many(a, "fresh64 1\n");
    for (int i = 0; i < 64; i++) {
        snprintf(line, sizeof line, "fresh%d", i);
        cr_assert_eq(summary_count(line), 1, "%s", line);
    }
}

SERIES_TEST(a_restart_with_more_series_in_the_log_than_the_cap_keeps_them)
{
    cfg.max_series = 10;
    start();
    uint64_t a = agent("alice");
    put(a, "m1 1\nm2 2\nm3 3\nm4 4\nm5 5\n");
    bus_close(the_bus);
    the_bus = NULL;
    cfg.max_series = 3;
    start();
    cr_assert_eq(summary_count("m5"), 1, "rebuilt, though over the new cap");
    a = agent("bob");
    assert_too_many(a, "m1 1\n");
}

/* ========== memory ========== */

/* Heap bytes of the series: their structs, slice sketches and merged pasts. */
static size_t series_bytes(const struct metrics *m)
{
    size_t total = 0;
    for (size_t i = 0; i < m->nseries; i++) {
        const struct series *s = m->series[i];
        total += sizeof *s + sketch_bytes(&s->past);
        for (int k = 0; k < METRIC_SLICES; k++)
            if (s->slice[k])
                total += sizeof *s->slice[k] + sketch_bytes(s->slice[k]);
    }
    return total;
}

/* nseries series of one agent, a point each every step_ms for seconds, with values
 * over fourteen decades of both signs when wide; a tick every 5 s. */
static void feed(struct metrics *m, int nseries, double seconds, int step_ms, bool wide,
                 int64_t *now)
{
    struct metric_point p;
    struct bus_error err;
    memset(&p, 0, sizeof p);
    buf_init(&p.tags);
    buf_puts(&p.tags, "{}");
    int64_t end = *now + (int64_t)(seconds * 1e6), tick = *now;
    for (int j = 0; *now < end; j++, *now += step_ms * 1000) {
        for (int i = 0; i < nseries; i++) {
            snprintf(p.name, sizeof p.name, "m%d", i);
            p.value = wide ? (j % 2 ? -1 : 1) * pow(10.0, (i + j) % 15 - 6) : 100 + (i + j) % 50;
            cr_assert_eq(metrics_add(m, "agent", &p, 1, *now, &err), 0, "%s", err.reason);
        }
        if (*now - tick >= 5 * SEC) {
            metrics_expire(m, *now);
            tick = *now;
        }
    }
    buf_free(&p.tags);
}

static void memory_case(bool wide, size_t busy_bound, size_t idle_bound)
{
    struct metrics m;
    struct bus_error err;
    int64_t now = unit_clock_get();
    cr_assert_eq(metrics_open(&m, unit_dir, 60, 3600, UINT64_C(1) << 30, 0, now, &err), 0, "%s",
                 err.reason);
    /* a full window of points, five a second: every slice holds values */
    feed(&m, 100, 65, 200, wide, &now);
    struct window_stats w;
    metrics_window(&m, "m7", NULL, now, &w);
    cr_assert(w.count > 250, "the window holds the points (%" PRIu64 ")", w.count);
    size_t busy = series_bytes(&m) / m.nseries;
    cr_assert(busy <= busy_bound, "%s, busy: %zu bytes a series, bound %zu",
              wide ? "wide" : "narrow", busy, busy_bound);
    /* the writers stop: a window later only the struct remains */
    now += 61 * SEC;
    metrics_expire(&m, now);
    size_t idle = series_bytes(&m) / m.nseries;
    cr_assert(idle <= idle_bound, "%s, idle: %zu bytes a series, bound %zu",
              wide ? "wide" : "narrow", idle, idle_bound);
    cr_assert_eq(m.nseries, 100);
    /* past the retention nothing remains */
    now += 3600 * SEC;
    metrics_expire(&m, now);
    cr_assert_eq(m.nseries, 0);
    cr_assert_eq(m.series_at.count, 0);
    metrics_close(&m);
}

SERIES_TEST(a_series_of_narrow_values_holds_a_few_kilobytes)
{
    memory_case(false, 8 << 10, 1 << 10);
}

SERIES_TEST(a_series_of_values_fourteen_decades_apart_holds_kilobytes_not_a_megabyte)
{
    memory_case(true, 16 << 10, 1 << 10);
}
