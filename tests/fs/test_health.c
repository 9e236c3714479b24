/*
 * test_health.c — SPEC §4: agents/A/health (the three report forms, each
 * write() one report replacing the last; `touch` as a heartbeat; unknown
 * and stale; bad reports fail with EINVAL, are logged and change nothing)
 * and health/status (the worst status, counts, bus counters; read-only; a
 * snapshot per open). Also: drain state and inbox depth as health shows
 * them (§7), consistency under concurrent reports, and health kept across
 * a restart and a kill -9 (§1).
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------- */

static void start_ttl_1(void)
{
    bus_start(&bus, "--health-ttl", "1", NULL);
}

/* `echo 'TEXT' > agents/AGENT/health`, which must succeed. */
static void report(const char *agent, const char *text)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "echo '%s' > agents/%s/health", text, agent);
    cr_assert_eq(status, 0, "echo '%s' > agents/%s/health: status %d: %s", text, agent, status,
                 r.err);
    bus_cmd_free(&r);
}

/* `touch agents/AGENT/health`, which must succeed. */
static void heartbeat(const char *agent)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "touch agents/%s/health", agent);
    cr_assert_eq(status, 0, "touch agents/%s/health: status %d: %s", agent, status, r.err);
    bus_cmd_free(&r);
}

/* agents/AGENT/health parsed (one JSON object + newline). */
static json_t *health(const char *agent)
{
    return bus_json_file(AT("agents/%s/health", agent), 0);
}

/* health/status parsed (one JSON object + newline). */
static json_t *status_doc(void)
{
    return bus_json_file(AT("health/status"), 0);
}

/* doc.agents.NAME, which must be an object. */
static json_t *entry(const json_t *doc, const char *name)
{
    json_t *a = json_object_get(json_object_get(doc, "agents"), name);
    cr_assert(json_is_object(a), "health/status lists no agent %s", name);
    return a;
}

static json_int_t count(const json_t *doc, const char *which)
{
    return bus_int(json_object_get(doc, "counts"), which);
}

static void assert_counts(const json_t *doc, int healthy, int degraded, int unhealthy, int stale,
                          int unknown)
{
    char *dump = json_dumps(json_object_get(doc, "counts"), JSON_COMPACT);
    cr_assert(count(doc, "healthy") == healthy && count(doc, "degraded") == degraded &&
                  count(doc, "unhealthy") == unhealthy && count(doc, "stale") == stale &&
                  count(doc, "unknown") == unknown,
              "counts %s, want healthy %d degraded %d unhealthy %d stale %d unknown %d", dump,
              healthy, degraded, unhealthy, stale, unknown);
    free(dump);
}

/* age_s of a health object: a number >= 0. */
static double age(const json_t *h)
{
    json_t *v = json_object_get(h, "age_s");
    cr_assert(json_is_number(v), "age_s is not a number");
    double a = json_number_value(v);
    cr_assert(a >= 0, "age_s is negative: %f", a);
    return a;
}

/* Field types of an agent's health object (a file or a status entry). */
static void assert_health_types(const json_t *h)
{
    char *dump = json_dumps(h, JSON_COMPACT);
    const char *st = json_string_value(json_object_get(h, "status"));
    cr_assert(st && (strcmp(st, "healthy") == 0 || strcmp(st, "degraded") == 0 ||
                     strcmp(st, "unhealthy") == 0 || strcmp(st, "stale") == 0 ||
                     strcmp(st, "unknown") == 0),
              "bad status: %s", dump);
    cr_assert(json_is_string(json_object_get(h, "reason")), "reason is not a string: %s", dump);
    json_t *seen = json_object_get(h, "last_seen");
    if (json_is_null(seen)) {
        cr_assert(json_is_null(json_object_get(h, "age_s")), "age_s without last_seen: %s", dump);
    } else {
        cr_assert(json_is_string(seen) && bus_match(BUS_TIMESTAMP_RE, json_string_value(seen)),
                  "last_seen is not RFC 3339 UTC with microseconds: %s", dump);
        age(h);
    }
    const char *state = json_string_value(json_object_get(h, "state"));
    cr_assert(state && (strcmp(state, "active") == 0 || strcmp(state, "draining") == 0),
              "state is not active/draining: %s", dump);
    cr_assert(bus_int(h, "inbox_depth") >= 0, "inbox_depth < 0: %s", dump);
    free(dump);
}

/* A health object without age_s, dumped with sorted keys (malloc'd). */
static char *without_age(const json_t *h)
{
    json_t *copy = json_deep_copy(h);
    json_object_del(copy, "age_s");
    char *dump = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(copy);
    return dump;
}

/* The same report: every field equal but age_s. */
static void assert_same_report(const json_t *before, const json_t *after, const char *what)
{
    char *b = without_age(before), *a = without_age(after);
    cr_assert_str_eq(a, b, "%s: health changed", what);
    free(a);
    free(b);
}

/* "YYYY-MM-DDTHH:MM:SS" of a file's mtime (UTC). */
static void mtime_seconds(const char *path, char out[32])
{
    struct stat st;
    cr_assert(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
    struct tm tm;
    gmtime_r(&st.st_mtim.tv_sec, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
}

/* ---- 1. unknown and empty --------------------------------------------- */

BUS_TEST(health, fresh_agent_is_unknown_and_an_empty_bus_is_healthy)
{
    json_t *doc = status_doc();
    bus_assert_keys(doc, "status", "timestamp", "agents", "counts", "bus", NULL);
    cr_assert_str_eq(bus_str(doc, "status"), "healthy", "a bus with no agents");
    cr_assert(bus_match(BUS_TIMESTAMP_RE, bus_str(doc, "timestamp")), "timestamp %s",
              bus_str(doc, "timestamp"));
    cr_assert(json_is_object(json_object_get(doc, "agents")), "agents is not an object");
    cr_assert_eq(json_object_size(json_object_get(doc, "agents")), 0, "agents is not empty");
    bus_assert_keys(json_object_get(doc, "counts"), "healthy", "degraded", "unhealthy", "stale",
                    "unknown", NULL);
    assert_counts(doc, 0, 0, 0, 0, 0);
    json_t *b = json_object_get(doc, "bus");
    bus_assert_keys(b, "uptime_s", "agents", "messages_pending", "messages_delivered_total",
                    "messages_rejected_total", NULL);
    cr_assert(json_is_number(json_object_get(b, "uptime_s")), "uptime_s is not a number");
    cr_assert(json_number_value(json_object_get(b, "uptime_s")) >= 0);
    cr_assert_eq(bus_int(b, "agents"), 0);
    cr_assert_eq(bus_int(b, "messages_pending"), 0);
    cr_assert_eq(bus_int(b, "messages_delivered_total"), 0);
    cr_assert(bus_int(b, "messages_rejected_total") >= 0);
    json_decref(doc);

    bus_agents(&bus, "alice", NULL);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat agents/alice/health"), 0, "cat: %s", r.err);
    char *nl = strchr(r.out, '\n');
    cr_assert(nl && nl[1] == '\0', "cat agents/alice/health is not one line: [%s]", r.out);
    bus_cmd_free(&r);

    json_t *h = health("alice");
    bus_assert_keys(h, "agent", "status", "reason", "last_seen", "age_s", "state", "inbox_depth",
                    NULL);
    cr_assert_str_eq(bus_str(h, "agent"), "alice");
    cr_assert_str_eq(bus_str(h, "status"), "unknown");
    cr_assert_str_eq(bus_str(h, "reason"), "");
    cr_assert(json_is_null(json_object_get(h, "last_seen")), "last_seen of a fresh agent");
    cr_assert(json_is_null(json_object_get(h, "age_s")), "age_s of a fresh agent");
    cr_assert_str_eq(bus_str(h, "state"), "active");
    cr_assert_eq(bus_int(h, "inbox_depth"), 0);
    json_decref(h);

    doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "healthy", "only an unknown agent");
    json_t *e = entry(doc, "alice");
    bus_assert_keys(e, "status", "reason", "last_seen", "age_s", "state", "inbox_depth", NULL);
    cr_assert_str_eq(bus_str(e, "status"), "unknown");
    assert_health_types(e);
    assert_counts(doc, 0, 0, 0, 0, 1);
    cr_assert_eq(bus_int(json_object_get(doc, "bus"), "agents"), 1);
    json_decref(doc);
}

/* ---- 2. the three report forms ------------------------------------------ */

BUS_TEST(health, three_report_forms_each_replacing_the_last)
{
    bus_agents(&bus, "alice", NULL);

    report("alice", "healthy");
    json_t *h = health("alice");
    bus_assert_keys(h, "agent", "status", "reason", "last_seen", "age_s", "state", "inbox_depth",
                    NULL);
    assert_health_types(h);
    cr_assert_str_eq(bus_str(h, "status"), "healthy");
    cr_assert_str_eq(bus_str(h, "reason"), "");
    cr_assert(age(h) < 5, "age_s of a fresh report: %f", age(h));
    char first_seen[40];
    snprintf(first_seen, sizeof first_seen, "%s", bus_str(h, "last_seen"));
    json_decref(h);

    /* age_s is printed with three decimals. */
    char *raw = bus_read_ok(AT("agents/alice/health"), NULL);
    cr_assert(bus_match(".*\"age_s\":[0-9]+\\.[0-9]{3}[,}].*", raw), "age_s format: %s", raw);
    free(raw);

    report("alice", "degraded disk 91% full");
    h = health("alice");
    bus_assert_keys(h, "agent", "status", "reason", "last_seen", "age_s", "state", "inbox_depth",
                    NULL);
    cr_assert_str_eq(bus_str(h, "status"), "degraded");
    cr_assert_str_eq(bus_str(h, "reason"), "disk 91% full");
    cr_assert(strcmp(bus_str(h, "last_seen"), first_seen) >= 0, "last_seen went back: %s < %s",
              bus_str(h, "last_seen"), first_seen);
    json_decref(h);

    report("alice", "{\"status\":\"unhealthy\",\"reason\":\"api down\",\"queue\":17}");
    h = health("alice");
    bus_assert_keys(h, "agent", "status", "reason", "last_seen", "age_s", "state", "inbox_depth",
                    "queue", NULL);
    assert_health_types(h);
    cr_assert_str_eq(bus_str(h, "agent"), "alice");
    cr_assert_str_eq(bus_str(h, "status"), "unhealthy");
    cr_assert_str_eq(bus_str(h, "reason"), "api down");
    cr_assert_eq(bus_int(h, "queue"), 17);
    json_decref(h);
    json_t *doc = status_doc();
    json_t *e = entry(doc, "alice");
    cr_assert_str_eq(bus_str(e, "status"), "unhealthy");
    cr_assert_str_eq(bus_str(e, "reason"), "api down");
    cr_assert_eq(bus_int(e, "queue"), 17, "an extra field is not shown in health/status");
    json_decref(doc);

    /* A plain word replaces everything: no reason, no extra field left. */
    report("alice", "healthy");
    h = health("alice");
    bus_assert_keys(h, "agent", "status", "reason", "last_seen", "age_s", "state", "inbox_depth",
                    NULL);
    cr_assert_str_eq(bus_str(h, "status"), "healthy");
    cr_assert_str_eq(bus_str(h, "reason"), "", "the old reason lingers");
    json_decref(h);
    doc = status_doc();
    cr_assert_null(json_object_get(entry(doc, "alice"), "queue"),
                   "an old extra field lingers in health/status");
    json_decref(doc);

    /* Nested extras are kept as given; a JSON report without reason has "". */
    report("alice", "{\"status\":\"degraded\",\"disk\":{\"used\":91,\"dev\":\"sda\"},"
                    "\"tags\":[\"a\",1]}");
    h = health("alice");
    cr_assert_str_eq(bus_str(h, "status"), "degraded");
    cr_assert_str_eq(bus_str(h, "reason"), "");
    json_t *want = json_loads("{\"used\":91,\"dev\":\"sda\"}", 0, NULL);
    cr_assert(json_equal(json_object_get(h, "disk"), want), "nested extra field changed");
    json_decref(want);
    want = json_loads("[\"a\",1]", 0, NULL);
    cr_assert(json_equal(json_object_get(h, "tags"), want), "array extra field changed");
    json_decref(want);
    json_decref(h);

    /* No newline needed; trailing whitespace is not part of the reason. */
    cr_assert_eq(bus_write(AT("agents/alice/health"), "unhealthy no newline"), 0);
    h = health("alice");
    cr_assert_str_eq(bus_str(h, "status"), "unhealthy");
    cr_assert_str_eq(bus_str(h, "reason"), "no newline");
    cr_assert_null(json_object_get(h, "disk"));
    json_decref(h);
    cr_assert_eq(bus_write(AT("agents/alice/health"), "degraded  two  spaces  \n"), 0);
    h = health("alice");
    cr_assert_str_eq(bus_str(h, "reason"), "two  spaces", "inner spacing of a reason");
    json_decref(h);

    /* Quotes, backslashes and tabs in a reason come back as written. */
    cr_assert_eq(bus_write(AT("agents/alice/health"), "degraded say \"hi\" \\ then\ttab\n"), 0);
    h = health("alice");
    cr_assert_str_eq(bus_str(h, "reason"), "say \"hi\" \\ then\ttab");
    json_decref(h);

    /* Extra JSON fields are kept as written (numbers not re-serialised). */
    report("alice", "{\"status\":\"healthy\",\"big\":12345678901234567890,\"f\":1.50e300}");
    raw = bus_read_ok(AT("agents/alice/health"), NULL);
    cr_assert(strstr(raw, "\"big\":12345678901234567890") && strstr(raw, "\"f\":1.50e300"),
              "extra fields were rewritten: %s", raw);
    free(raw);

    /* `>>` is a report as well. */
    cr_assert_eq(bus_sh(&bus, NULL, "echo 'unhealthy appended' >> agents/alice/health"), 0);
    h = health("alice");
    cr_assert_str_eq(bus_str(h, "status"), "unhealthy");
    cr_assert_str_eq(bus_str(h, "reason"), "appended");
    cr_assert_null(json_object_get(h, "big"));
    json_decref(h);
}

/* ---- 3. the aggregate --------------------------------------------------- */

BUS_TEST(health, status_is_the_worst_and_counts_every_agent)
{
    bus_agents(&bus, "a", "b", "c", "d", NULL);
    json_t *doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "healthy", "only unknown agents");
    assert_counts(doc, 0, 0, 0, 0, 4);
    cr_assert_eq(json_object_size(json_object_get(doc, "agents")), 4);
    json_decref(doc);

    report("a", "healthy");
    doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "healthy");
    assert_counts(doc, 1, 0, 0, 0, 3);
    json_decref(doc);

    report("b", "degraded slow");
    doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "degraded", "healthy + degraded");
    assert_counts(doc, 1, 1, 0, 0, 2);
    json_decref(doc);

    report("c", "unhealthy down");
    doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "unhealthy", "healthy + degraded + unhealthy");
    assert_counts(doc, 1, 1, 1, 0, 1);
    cr_assert_str_eq(bus_str(entry(doc, "c"), "reason"), "down");
    cr_assert_str_eq(bus_str(entry(doc, "d"), "status"), "unknown");
    json_decref(doc);

    /* The worst is recomputed, not remembered. */
    report("c", "healthy");
    report("b", "healthy");
    doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "healthy", "after every agent recovered");
    assert_counts(doc, 3, 0, 0, 0, 1);
    json_t *b = json_object_get(doc, "bus");
    cr_assert_eq(bus_int(b, "agents"), 4);
    cr_assert_eq(bus_int(b, "messages_pending"), 0);
    cr_assert_eq(bus_int(b, "messages_delivered_total"), 0);
    json_int_t rejected = bus_int(b, "messages_rejected_total");
    json_decref(doc);

    bus_send("a", "b", "one");
    bus_send("a", "c", "two");
    cr_assert_eq(bus_sh(&bus, NULL, "echo drain > agents/d/ctl"), 0);
    cr_assert_neq(bus_sh(&bus, NULL, "echo refused > agents/a/outbox/d"), 0,
                  "a send to a draining agent succeeded");
    doc = status_doc();
    b = json_object_get(doc, "bus");
    cr_assert_eq(bus_int(b, "messages_pending"), 2);
    cr_assert_eq(bus_int(b, "messages_delivered_total"), 2);
    cr_assert(bus_int(b, "messages_rejected_total") > rejected,
              "messages_rejected_total did not grow on a refused send");
    cr_assert_eq(bus_int(entry(doc, "b"), "inbox_depth"), 1);
    cr_assert_eq(bus_int(entry(doc, "c"), "inbox_depth"), 1);
    cr_assert_eq(bus_int(entry(doc, "a"), "inbox_depth"), 0);
    json_decref(doc);

    cr_assert_eq(bus_sh(&bus, NULL, "rm agents/b/inbox/*"), 0);
    cr_assert_eq(bus_sh(&bus, NULL, "rmdir agents/b"), 0);
    doc = status_doc();
    cr_assert_eq(bus_int(json_object_get(doc, "bus"), "agents"), 3);
    cr_assert_eq(bus_int(json_object_get(doc, "bus"), "messages_pending"), 1);
    cr_assert_null(json_object_get(json_object_get(doc, "agents"), "b"), "a removed agent");
    assert_counts(doc, 2, 0, 0, 0, 1);
    json_decref(doc);

    /* A re-registered agent starts unknown. */
    bus_agents(&bus, "b", NULL);
    json_t *h = health("b");
    cr_assert_str_eq(bus_str(h, "status"), "unknown", "b's old report came back");
    cr_assert(json_is_null(json_object_get(h, "last_seen")));
    json_decref(h);
}

/* ---- 4. stale ------------------------------------------------------------ */

BUS_TEST_WITH(health, a_report_older_than_the_ttl_is_stale_until_a_heartbeat, start_ttl_1)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    report("alice", "{\"status\":\"healthy\",\"reason\":\"fine so far\",\"jobs\":3}");
    bus_pause_ms(1500);
    report("carol", "degraded busy");

    json_t *h = health("alice");
    cr_assert_str_eq(bus_str(h, "status"), "stale", "a report 1.5 s old with --health-ttl 1");
    cr_assert_str_eq(bus_str(h, "reason"), "fine so far", "stale dropped the reason");
    cr_assert_eq(bus_int(h, "jobs"), 3, "stale dropped an extra field");
    cr_assert(age(h) >= 1.0, "age_s of a stale report: %f", age(h));
    json_decref(h);
    h = health("bob");
    cr_assert_str_eq(bus_str(h, "status"), "unknown", "an agent that never reported");
    json_decref(h);

    json_t *doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "unhealthy", "stale counts as unhealthy");
    assert_counts(doc, 0, 1, 0, 1, 1);
    cr_assert_str_eq(bus_str(entry(doc, "alice"), "status"), "stale");
    json_decref(doc);

    heartbeat("alice");
    h = health("alice");
    cr_assert_str_eq(bus_str(h, "status"), "healthy", "touch did not refresh a stale agent");
    cr_assert_str_eq(bus_str(h, "reason"), "fine so far");
    cr_assert_eq(bus_int(h, "jobs"), 3);
    cr_assert(age(h) < 1.0, "age_s right after touch: %f", age(h));
    json_decref(h);
    doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "degraded");
    assert_counts(doc, 1, 1, 0, 0, 1);
    json_decref(doc);

    /* Staleness is computed when read, for every agent. */
    bus_pause_ms(1500);
    doc = status_doc();
    assert_counts(doc, 0, 0, 0, 2, 1);
    cr_assert_str_eq(bus_str(doc, "status"), "unhealthy");
    cr_assert_str_eq(bus_str(entry(doc, "bob"), "status"), "unknown");
    json_decref(doc);

    /* A fresh report also ends staleness. */
    report("carol", "healthy");
    h = health("carol");
    cr_assert_str_eq(bus_str(h, "status"), "healthy");
    json_decref(h);

    /* A heartbeat without a report: unknown, until it goes stale (README). */
    bus_agents(&bus, "dave", NULL);
    heartbeat("dave");
    h = health("dave");
    cr_assert_str_eq(bus_str(h, "status"), "unknown", "a heartbeat is not a report");
    cr_assert(bus_match(BUS_TIMESTAMP_RE, bus_str(h, "last_seen")), "dave's last_seen");
    json_decref(h);
    bus_pause_ms(1500);
    h = health("dave");
    cr_assert_str_eq(bus_str(h, "status"), "stale", "a 1.5 s old heartbeat");
    json_decref(h);
    h = health("bob");
    cr_assert_str_eq(bus_str(h, "status"), "unknown", "bob never reported nor touched");
    json_decref(h);
}

/* ---- 5. heartbeat ------------------------------------------------------- */

BUS_TEST(health, touch_keeps_the_report_and_moves_last_seen_and_mtime)
{
    bus_agents(&bus, "alice", NULL);
    report("alice", "{\"status\":\"degraded\",\"reason\":\"slow disk\",\"queue\":4}");
    json_t *before = health("alice");
    char seen[40], mt[32];
    snprintf(seen, sizeof seen, "%s", bus_str(before, "last_seen"));
    mtime_seconds(AT("agents/alice/health"), mt);
    cr_assert(strncmp(mt, seen, 19) == 0, "mtime %s is not last_seen %s after a report", mt, seen);

    bus_pause_ms(1100);
    /* A truncation alone (`: > health`) is not a heartbeat. */
    cr_assert_eq(bus_sh(&bus, NULL, ": > agents/alice/health"), 0);
    json_t *h = health("alice");
    assert_same_report(before, h, "`: > health`");
    json_decref(h);

    heartbeat("alice");
    json_t *after = health("alice");
    cr_assert_str_eq(bus_str(after, "status"), "degraded");
    cr_assert_str_eq(bus_str(after, "reason"), "slow disk");
    cr_assert_eq(bus_int(after, "queue"), 4, "touch dropped an extra field");
    const char *now = bus_str(after, "last_seen");
    cr_assert(bus_match(BUS_TIMESTAMP_RE, now), "last_seen %s", now);
    cr_assert(strcmp(now, seen) > 0, "touch did not move last_seen: %s, was %s", now, seen);
    cr_assert(strncmp(now, seen, 19) != 0, "last_seen moved by less than a second: %s, %s", now,
              seen);
    cr_assert(age(after) < age(before) + 1.0, "age_s did not restart at the heartbeat");
    mtime_seconds(AT("agents/alice/health"), mt);
    cr_assert(strncmp(mt, now, 19) == 0, "mtime %s is not last_seen %s after touch", mt, now);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "date -u -r agents/alice/health +%%Y-%%m-%%dT%%H:%%M:%%S"), 0);
    cr_assert(strncmp(r.out, now, 19) == 0, "date -r of health: %s, last_seen %s", r.out, now);
    bus_cmd_free(&r);
    json_decref(before);
    json_decref(after);

    /* The same through the syscall touch uses. */
    before = health("alice");
    bus_pause_ms(20);
    cr_assert(utimensat(AT_FDCWD, AT("agents/alice/health"), NULL, 0) == 0, "utimensat: %s",
              strerror(errno));
    after = health("alice");
    cr_assert(strcmp(bus_str(after, "last_seen"), bus_str(before, "last_seen")) > 0,
              "utimensat(NULL) is no heartbeat");
    cr_assert_str_eq(bus_str(after, "status"), "degraded");
    json_decref(before);
    json_decref(after);
}

/* ---- 6. bad reports ------------------------------------------------------ */

struct bad_report {
    const char *what;
    const char *data;
    size_t len;
};
/* A string literal and its length (it may hold a NUL byte). */
#define LIT(s) s, sizeof s - 1

BUS_TEST(health, bad_reports_fail_with_einval_are_logged_and_change_nothing)
{
    static char long_text[1200], long_json[1200], just_fits[1100];
    memset(long_text, 0, sizeof long_text);
    memcpy(long_text, "degraded ", 9);
    memset(long_text + 9, 'x', 1025);
    snprintf(long_json, sizeof long_json, "{\"status\":\"degraded\",\"reason\":\"%s\"}",
             long_text + 9);
    memset(just_fits, 0, sizeof just_fits);
    memcpy(just_fits, "degraded ", 9);
    memset(just_fits + 9, 'y', 1024);

    const struct bad_report bad[] = {
        {"an unknown status word", LIT("fine\n")},
        {"the word stale", LIT("stale\n")},
        {"the word unknown", LIT("unknown\n")},
        {"an upper-case word", LIT("HEALTHY\n")},
        {"an unknown word with a reason", LIT("ok all good\n")},
        {"a lone newline", LIT("\n")},
        {"only spaces", LIT("   ")},
        {"only whitespace lines", LIT(" \n\t\n")},
        {"a multi-line text report", LIT("healthy\ndegraded x\n")},
        {"a reason over two lines", LIT("degraded a\nb")},
        {"JSON that is an array", LIT("[1]\n")},
        {"a JSON string", LIT("\"healthy\"\n")},
        {"invalid JSON", LIT("{\"status\":\n")},
        {"JSON without status", LIT("{\"reason\":\"x\"}\n")},
        {"a numeric status", LIT("{\"status\":1}\n")},
        {"a null status", LIT("{\"status\":null}\n")},
        {"an unknown JSON status", LIT("{\"status\":\"fine\"}\n")},
        {"a JSON status stale", LIT("{\"status\":\"stale\"}\n")},
        {"a text reason of 1025 bytes", long_text, strlen(long_text)},
        {"a JSON reason of 1025 bytes", long_json, strlen(long_json)},
        {"a reported agent field", LIT("{\"status\":\"healthy\",\"agent\":\"bob\"}\n")},
        {"a reported last_seen", LIT("{\"status\":\"healthy\",\"last_seen\":\"2000-01-01\"}\n")},
        {"a reported age_s", LIT("{\"status\":\"healthy\",\"age_s\":0}\n")},
        {"a reported state", LIT("{\"status\":\"healthy\",\"state\":\"active\"}\n")},
        {"a reported inbox_depth", LIT("{\"status\":\"healthy\",\"inbox_depth\":0}\n")},
        {"a duplicate status key", LIT("{\"status\":\"healthy\",\"status\":\"degraded\"}\n")},
        {"a reason that is not a string", LIT("{\"status\":\"healthy\",\"reason\":5}\n")},
        {"text after a JSON object", LIT("{\"status\":\"healthy\"} trailing\n")},
        {"NaN in a JSON report", LIT("{\"status\":\"healthy\",\"n\":NaN}\n")},
        {"invalid UTF-8 in a reason", LIT("degraded \xff\xfe\n")},
        {"a NUL byte in a reason", LIT("degraded a\0b\n")},
    };

    bus_agents(&bus, "alice", NULL);
    report("alice", "{\"status\":\"degraded\",\"reason\":\"baseline\",\"queue\":5}");
    json_t *baseline = health("alice");
    char path[PATH_MAX]; /* AT() returns one of 16 rotating buffers */
    snprintf(path, sizeof path, "%s", AT("agents/alice/health"));

    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t top = bus_jsonl_count(AT("errors"));
        size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
        enum bus_step step;
        int err = bus_write_ex(path, O_WRONLY | O_TRUNC, bad[i].data, bad[i].len, &step);
        cr_assert(err == EINVAL && step == BUS_STEP_WRITE,
                  "%s: %s at step %d, want EINVAL at write()", bad[i].what,
                  err ? strerror(err) : "success", (int)step);
        bus_assert_logged(AT("errors"), top, bad[i].what);
        bus_assert_logged(AT("agents/alice/errors"), mine, bad[i].what);
        json_t *h = health("alice");
        assert_same_report(baseline, h, bad[i].what);
        json_decref(h);
    }

    /* What a user sees in the shell. */
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "echo fine > agents/alice/health"), 0,
                  "echo fine > health succeeded");
    cr_assert(r.err_len > 0, "echo fine > health failed silently");
    bus_cmd_free(&r); /* dash's echo says "I/O error" for any write error */
    json_t *h = health("alice");
    assert_same_report(baseline, h, "echo fine > health");
    json_decref(h);
    json_t *doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "degraded");
    cr_assert_str_eq(bus_str(entry(doc, "alice"), "reason"), "baseline");
    json_decref(doc);
    json_decref(baseline);

    /* The boundary: a reason of exactly 1024 bytes is kept whole. */
    cr_assert_eq(bus_write(path, just_fits), 0, "a 1024-byte reason was refused");
    h = health("alice");
    cr_assert_str_eq(bus_str(h, "reason"), just_fits + 9);
    cr_assert_null(json_object_get(h, "queue"));
    json_decref(h);
}

/* ---- 7. modes, sizes, read-only status ---------------------------------- */

BUS_TEST(health, status_is_read_only_and_modes_and_sizes_are_honest)
{
    bus_agents(&bus, "alice", NULL);
    report("alice", "healthy");

    const int modes[] = {O_WRONLY, O_RDWR, O_WRONLY | O_TRUNC, O_WRONLY | O_APPEND};
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        size_t top = bus_jsonl_count(AT("errors"));
        errno = 0;
        int fd = open(AT("health/status"), modes[i] | O_CLOEXEC);
        int err = errno;
        if (fd >= 0)
            close(fd);
        cr_assert(fd < 0 && err == EACCES, "open(health/status, %#o) gave %s, want EACCES",
                  (unsigned)modes[i], fd >= 0 ? "success" : strerror(err));
        bus_assert_logged(AT("errors"), top, "open health/status for writing");
    }
    errno = 0;
    cr_assert(truncate(AT("health/status"), 0) < 0 && errno == EACCES,
              "truncate(health/status) gave %s", strerror(errno));
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "echo unhealthy > health/status"), 0,
                  "echo > health/status succeeded");
    cr_assert(strstr(r.err, strerror(EACCES)), "the shell said: %s", r.err);
    bus_cmd_free(&r);
    json_t *doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "healthy", "a write to health/status changed it");
    json_decref(doc);

    cr_assert_eq(bus_sh(&bus, &r, "ls health"), 0, "ls health: %s", r.err);
    cr_assert_str_eq(r.out, "status\n");
    bus_cmd_free(&r);
    cr_assert_eq(bus_sh(&bus, &r, "ls -l health/status agents/alice/health"), 0);
    char *line2 = strchr(r.out, '\n');
    cr_assert(line2, "ls -l: %s", r.out);
    /* ls sorts its arguments: agents/alice/health first. */
    cr_assert(strncmp(r.out, "-rw-r--r--", 10) == 0, "agents/alice/health: %s", r.out);
    cr_assert(strncmp(line2 + 1, "-r--r--r--", 10) == 0, "health/status: %s", line2 + 1);
    bus_cmd_free(&r);
    struct stat st;
    cr_assert(stat(AT("health/status"), &st) == 0);
    cr_assert_eq(st.st_mode & 07777, 0444, "health/status mode %o", st.st_mode & 07777);
    cr_assert(S_ISREG(st.st_mode));
    cr_assert(stat(AT("agents/alice/health"), &st) == 0);
    cr_assert_eq(st.st_mode & 07777, 0644, "agents/alice/health mode %o", st.st_mode & 07777);
    cr_assert(S_ISREG(st.st_mode));

    /* Sizes: what stat says is (about) what cat prints. age_s and
     * uptime_s may gain a digit between the two, nothing else changes. */
    report("alice", "degraded a reason long enough to change the size of the document by far");
    const char *files[] = {"agents/alice/health", "health/status"};
    for (size_t i = 0; i < 2; i++) {
        cr_assert(stat(AT("%s", files[i]), &st) == 0);
        cr_assert_eq(bus_sh(&bus, &r, "cat %s", files[i]), 0);
        long diff = (long)st.st_size - (long)r.out_len;
        cr_assert(st.st_size > 0 && diff >= -4 && diff <= 4,
                  "%s: stat says %lld bytes, cat printed %zu", files[i], (long long)st.st_size,
                  r.out_len);
        bus_cmd_free(&r);
    }
    cr_assert_eq(bus_sh(&bus, &r, "wc -c < agents/alice/health"), 0);
    cr_assert(atol(r.out) > 70 + 100, "wc -c of health: %s", r.out);
    bus_cmd_free(&r);
}

/* ---- 8. a snapshot per open --------------------------------------------- */

/* Reads fd to its end, chunk bytes per read() (malloc'd, NUL-terminated). */
static char *read_fd(int fd, size_t chunk)
{
    size_t cap = 65536, n = 0;
    char *data = malloc(cap);
    for (;;) {
        if (n + chunk + 1 > cap) {
            cap *= 2;
            data = realloc(data, cap);
        }
        ssize_t got = read(fd, data + n, chunk);
        cr_assert(got >= 0, "read: %s", strerror(errno));
        if (got == 0)
            break;
        n += (size_t)got;
    }
    data[n] = '\0';
    return data;
}

static json_t *parse_doc(const char *text, const char *what)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    cr_assert(json_is_object(v), "%s is not a JSON object (%s): [%s]", what, e.text, text);
    size_t len = strlen(text);
    cr_assert(len > 0 && text[len - 1] == '\n', "%s does not end with a newline", what);
    return v;
}

BUS_TEST(health, an_open_file_reads_the_document_as_it_was_at_open)
{
    bus_agents(&bus, "alice", "bob", NULL);
    report("alice", "healthy");

    int status_fd = open(AT("health/status"), O_RDONLY | O_CLOEXEC);
    cr_assert(status_fd >= 0, "open health/status: %s", strerror(errno));
    int health_fd = open(AT("agents/alice/health"), O_RDONLY | O_CLOEXEC);
    cr_assert(health_fd >= 0, "open agents/alice/health: %s", strerror(errno));
    /* A third one read partly before the change, the rest after. */
    int part_fd = open(AT("health/status"), O_RDONLY | O_CLOEXEC);
    cr_assert(part_fd >= 0);
    char head[16];
    cr_assert_eq(read(part_fd, head, sizeof head), (ssize_t)sizeof head);

    report("alice", "{\"status\":\"unhealthy\",\"reason\":\"boom\",\"code\":500}");
    report("bob", "degraded");

    char *text = read_fd(status_fd, 65536);
    json_t *old = parse_doc(text, "health/status opened before the change");
    cr_assert_str_eq(bus_str(old, "status"), "healthy", "an fd opened before saw the change");
    cr_assert_str_eq(bus_str(entry(old, "alice"), "status"), "healthy");
    cr_assert_str_eq(bus_str(entry(old, "bob"), "status"), "unknown");
    assert_counts(old, 1, 0, 0, 0, 1);
    free(text);
    json_decref(old);

    text = read_fd(health_fd, 7);
    old = parse_doc(text, "agents/alice/health opened before the change");
    cr_assert_str_eq(bus_str(old, "status"), "healthy");
    cr_assert_null(json_object_get(old, "code"));
    free(text);
    json_decref(old);

    char *rest = read_fd(part_fd, 5);
    size_t rest_len = strlen(rest);
    char *whole = malloc(sizeof head + rest_len + 1);
    memcpy(whole, head, sizeof head);
    memcpy(whole + sizeof head, rest, rest_len + 1);
    old = parse_doc(whole, "health/status read across a change");
    cr_assert_str_eq(bus_str(old, "status"), "healthy");
    free(rest);
    free(whole);
    json_decref(old);
    close(status_fd);
    close(health_fd);
    close(part_fd);

    json_t *doc = status_doc();
    cr_assert_str_eq(bus_str(doc, "status"), "unhealthy", "a fresh open shows the change");
    assert_counts(doc, 0, 1, 1, 0, 0);
    cr_assert_eq(bus_int(entry(doc, "alice"), "code"), 500);
    json_decref(doc);
    json_t *h = health("alice");
    cr_assert_str_eq(bus_str(h, "reason"), "boom");
    json_decref(h);
}

/* ---- 9. concurrent reports and reads ------------------------------------ */

#define REPORTERS 4
#define REPORTS 200

/* Forks a process that writes REPORTS reports to agents/w<i>/health, one
 * open/write/close each, alternating healthy and degraded with extras.
 * Exits 0 when every write succeeded. */
static pid_t fork_reporter(int i)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", AT("agents/w%d/health", i));
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid != 0)
        return pid;
    for (int n = 0; n < REPORTS; n++) {
        char text[128];
        int len;
        if (n % 2 == 0)
            len = snprintf(text, sizeof text, "{\"status\":\"healthy\",\"n\":%d,\"worker\":%d}\n",
                           n, i);
        else
            len = snprintf(text, sizeof text,
                           "{\"status\":\"degraded\",\"reason\":\"tick %d\",\"n\":%d,"
                           "\"worker\":%d}\n",
                           n, n, i);
        if (bus_write_ex(path, O_WRONLY | O_TRUNC, text, (size_t)len, NULL) != 0)
            _exit(1);
    }
    _exit(0);
}

BUS_TEST(health, concurrent_reports_never_tear_health_status)
{
    bus_agents(&bus, "w0", "w1", "w2", "w3", NULL); /* REPORTERS of them */
    pid_t pids[REPORTERS];
    for (int i = 0; i < REPORTERS; i++)
        pids[i] = fork_reporter(i);

    const char *const kinds[] = {"healthy", "degraded", "unhealthy", "stale", "unknown"};
    /* At least REPORTS reads, and on until every reporter has ended. */
    int status[REPORTERS], running = REPORTERS, reads = 0;
    for (int i = 0; i < REPORTERS; i++)
        status[i] = -1;
    while (reads < REPORTS || running > 0) {
        cr_assert(reads < 1000000, "the reporters never ended");
        reads++;
        size_t len;
        char *text = bus_read_ok(AT("health/status"), &len);
        json_t *doc = parse_doc(text, "health/status under concurrent reports");
        json_int_t sum = 0;
        for (size_t j = 0; j < 5; j++)
            sum += count(doc, kinds[j]);
        cr_assert_eq(sum, REPORTERS, "counts sum to %lld: %s", (long long)sum, text);
        cr_assert_eq(json_object_size(json_object_get(doc, "agents")), REPORTERS);
        cr_assert_eq(count(doc, "unhealthy") + count(doc, "stale"), 0, "%s", text);
        const char *st = bus_str(doc, "status");
        cr_assert(strcmp(st, "healthy") == 0 || strcmp(st, "degraded") == 0, "status %s", st);
        cr_assert_eq(strcmp(st, "degraded") == 0, count(doc, "degraded") > 0,
                     "status %s does not match the counts: %s", st, text);
        for (int i = 0; i < REPORTERS; i++) {
            char name[8];
            snprintf(name, sizeof name, "w%d", i);
            json_t *e = entry(doc, name);
            assert_health_types(e);
            json_t *n = json_object_get(e, "n");
            if (!n)
                continue;
            cr_assert(json_is_integer(n), "n is not an integer: %s", text);
            cr_assert_eq(bus_int(e, "worker"), i, "a report landed on another agent: %s", text);
            int got = (int)json_integer_value(n);
            char reason[32] = "";
            if (got % 2)
                snprintf(reason, sizeof reason, "tick %d", got);
            cr_assert_str_eq(bus_str(e, "status"), got % 2 ? "degraded" : "healthy",
                             "a torn report: %s", text);
            cr_assert_str_eq(bus_str(e, "reason"), reason, "a torn report: %s", text);
        }
        free(text);
        json_decref(doc);
        for (int i = 0; i < REPORTERS; i++) {
            int wstatus;
            if (status[i] < 0 && waitpid(pids[i], &wstatus, WNOHANG) == pids[i]) {
                status[i] = bus_status_code(wstatus);
                running--;
            }
        }
    }
    for (int i = 0; i < REPORTERS; i++)
        cr_assert_eq(status[i], 0, "reporter %d failed (status %d)", i, status[i]);
    json_t *doc = status_doc();
    assert_counts(doc, 0, REPORTERS, 0, 0, 0);
    cr_assert_str_eq(bus_str(doc, "status"), "degraded");
    for (int i = 0; i < REPORTERS; i++) {
        char name[8];
        snprintf(name, sizeof name, "w%d", i);
        json_t *e = entry(doc, name);
        cr_assert_eq(bus_int(e, "n"), REPORTS - 1, "the last report of %s", name);
        char reason[32];
        snprintf(reason, sizeof reason, "tick %d", REPORTS - 1);
        cr_assert_str_eq(bus_str(e, "reason"), reason);
    }
    json_decref(doc);
}

/* ---- 10. drain and inbox depth ----------------------------------------- */

BUS_TEST(health, drain_and_pending_messages_show_in_health)
{
    bus_agents(&bus, "alice", "bob", NULL);
    report("bob", "healthy");
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");

    json_t *h = health("bob");
    cr_assert_str_eq(bus_str(h, "state"), "active");
    cr_assert_eq(bus_int(h, "inbox_depth"), 2);
    json_t *ctl = bus_ctl("bob");
    cr_assert_eq(bus_int(h, "inbox_depth"), bus_int(ctl, "inbox_depth"), "health and ctl differ");
    json_decref(ctl);
    json_decref(h);

    cr_assert_eq(bus_sh(&bus, NULL, "echo drain > agents/bob/ctl"), 0);
    h = health("bob");
    cr_assert_str_eq(bus_str(h, "state"), "draining");
    cr_assert_str_eq(bus_str(h, "status"), "healthy", "drain changed the reported status");
    cr_assert_eq(bus_int(h, "inbox_depth"), 2);
    json_decref(h);
    json_t *doc = status_doc();
    cr_assert_str_eq(bus_str(entry(doc, "bob"), "state"), "draining");
    cr_assert_str_eq(bus_str(entry(doc, "alice"), "state"), "active");
    cr_assert_eq(bus_int(entry(doc, "bob"), "inbox_depth"), 2);
    cr_assert_eq(bus_int(json_object_get(doc, "bus"), "messages_pending"), 2);
    cr_assert_str_eq(bus_str(doc, "status"), "healthy", "drain is not a health status");
    json_decref(doc);

    cr_assert_eq(bus_sh(&bus, NULL, "rm \"agents/bob/inbox/$(ls agents/bob/inbox | head -1)\""), 0);
    h = health("bob");
    cr_assert_eq(bus_int(h, "inbox_depth"), 1, "an ack did not lower inbox_depth");
    json_decref(h);

    cr_assert_eq(bus_sh(&bus, NULL, "echo resume > agents/bob/ctl"), 0);
    h = health("bob");
    cr_assert_str_eq(bus_str(h, "state"), "active");
    json_decref(h);
    h = health("alice");
    cr_assert_eq(bus_int(h, "inbox_depth"), 0, "the sender's inbox_depth");
    json_decref(h);
}

/* ---- 11. restart and kill -9 -------------------------------------------- */

/* Four agents in four states; returns health/status's agents. */
static json_t *varied_health(void)
{
    bus_agents(&bus, "a", "b", "c", "d", NULL);
    report("a", "{\"status\":\"unhealthy\",\"reason\":\"api down\",\"queue\":17,"
                "\"detail\":{\"host\":\"x\"}}");
    report("b", "degraded disk 91% full");
    report("d", "healthy");
    heartbeat("d");
    cr_assert_eq(bus_sh(&bus, NULL, "echo drain > agents/c/ctl"), 0);
    bus_send("a", "b", "pending");
    json_t *doc = status_doc();
    json_t *agents = json_incref(json_object_get(doc, "agents"));
    json_decref(doc);
    return agents;
}

/* Every agent's health after a restart: the same report and last_seen,
 * an age that went on from the stored last_seen. */
static void assert_health_kept(json_t *before, const char *after_what)
{
    json_t *doc = status_doc();
    json_t *after = json_object_get(doc, "agents");
    cr_assert_eq(json_object_size(after), json_object_size(before), "%s: agents", after_what);
    const char *name;
    json_t *b;
    json_object_foreach(before, name, b)
    {
        json_t *a = entry(doc, name);
        char what[64];
        snprintf(what, sizeof what, "%s: agent %s", after_what, name);
        assert_same_report(b, a, what);
        if (!json_is_null(json_object_get(b, "age_s")))
            cr_assert(age(a) >= age(b), "%s: age_s went back from %f to %f", what, age(b), age(a));
        else
            cr_assert(json_is_null(json_object_get(a, "age_s")), "%s: age_s", what);
    }
    cr_assert_str_eq(bus_str(doc, "status"), "unhealthy", "%s", after_what);
    assert_counts(doc, 1, 1, 1, 0, 1);
    json_decref(doc);

    json_t *h = health("a");
    cr_assert_eq(bus_int(h, "queue"), 17, "%s: an extra field was lost", after_what);
    cr_assert_str_eq(bus_str(h, "agent"), "a");
    json_decref(h);
}

BUS_TEST(health, restart_keeps_every_report_and_last_seen)
{
    json_t *before = varied_health();
    bus_pause_ms(50);
    bus_restart(&bus, NULL);
    assert_health_kept(before, "after a restart");
    /* Reports still work, and still replace the restored one. */
    report("a", "healthy");
    json_t *h = health("a");
    cr_assert_null(json_object_get(h, "queue"));
    json_decref(h);
    json_decref(before);
}

BUS_TEST(health, kill9_keeps_every_report_and_last_seen)
{
    json_t *before = varied_health();
    bus_pause_ms(50);
    bus_kill9(&bus);
    bus_launch(&bus, NULL);
    assert_health_kept(before, "after kill -9");
    json_decref(before);
}

BUS_TEST(health, age_goes_on_from_the_stored_last_seen_across_a_restart)
{
    bus_agents(&bus, "alice", "bob", NULL);
    report("alice", "degraded still here");
    bus_pause_ms(1300);
    /* With --health-ttl 1 a report 1.3 s old is stale at once: the age did
     * not restart with the server. */
    bus_restart(&bus, "--health-ttl", "1", NULL);
    json_t *h = health("alice");
    cr_assert_str_eq(bus_str(h, "status"), "stale", "a 1.3 s old report after a restart");
    cr_assert_str_eq(bus_str(h, "reason"), "still here");
    cr_assert(age(h) >= 1.3, "age_s after the restart: %f", age(h));
    json_decref(h);
    h = health("bob");
    cr_assert_str_eq(bus_str(h, "status"), "unknown", "a never-reported agent after a restart");
    json_decref(h);
    heartbeat("alice");
    h = health("alice");
    cr_assert_str_eq(bus_str(h, "status"), "degraded");
    json_decref(h);
}

/* Some writers send a report's newline by itself (Python's unbuffered print(), a
 * second printf line): after an accepted report, blanks in the same open file are its
 * tail. As the first write of an open file they are still an empty report. */
BUS_TEST(health, a_newline_written_by_itself_after_a_report_is_its_tail)
{
    bus_agents(&bus, "alice", NULL);
    size_t errs = bus_jsonl_count(AT("errors"));
    int fd = open(AT("agents/alice/health"), O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "degraded slow", 13), 13);
    cr_assert_eq(write(fd, "\n", 1), 1, "the tail: %s", strerror(errno));
    cr_assert_eq(write(fd, " \r\n", 3), 3);
    cr_assert_eq(close(fd), 0);
    json_t *h = health("alice");
    cr_assert_str_eq(bus_str(h, "status"), "degraded");
    cr_assert_str_eq(bus_str(h, "reason"), "slow");
    json_decref(h);
    cr_assert_eq(bus_jsonl_count(AT("errors")), errs, "nothing was refused");

    fd = open(AT("agents/alice/health"), O_WRONLY);
    cr_assert_geq(fd, 0);
    errno = 0;
    cr_assert_eq(write(fd, "\n", 1), -1, "a blank first write is an empty report");
    cr_assert_eq(errno, EINVAL);
    close(fd);
    bus_assert_logged(AT("errors"), errs, "empty health report");
}
