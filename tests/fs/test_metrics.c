/*
 * test_metrics.c — SPEC §5: agents/A/metrics (text and JSON lines, many per
 * write, all-or-nothing; bad lines fail with EINVAL, are logged (§8) and
 * store nothing), the stored points in metrics/metrics.jsonl and in each
 * agent's view, summary.json (exact count/min/max/avg, quantiles within 1%,
 * the window), retention, busfs.prom under `promtool check metrics`, growing
 * logs that `tail -f` follows with honest sizes and modes (§2), concurrent
 * writers, and everything kept across a restart and a kill -9 (§1).
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------- */

#define LOG "metrics/metrics.jsonl"
#define SUMMARY "metrics/summary.json"
#define PROM "metrics/busfs.prom"

/* A growing byte buffer to build writes in. */
struct text {
    char *data;
    size_t len, cap;
};

static void text_add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    cr_assert(n >= 0);
    if (t->len + (size_t)n + 1 > t->cap) {
        t->cap = (t->len + (size_t)n + 1) * 2;
        t->data = realloc(t->data, t->cap);
        cr_assert(t->data, "out of memory");
    }
    va_start(ap, fmt);
    vsnprintf(t->data + t->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

static void text_free(struct text *t)
{
    free(t->data);
    memset(t, 0, sizeof *t);
}

/* `echo 'LINE' >> agents/AGENT/metrics`, which must succeed. */
static void echo_point(const char *agent, const char *line)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "echo '%s' >> agents/%s/metrics", line, agent);
    cr_assert_eq(status, 0, "echo '%s' >> agents/%s/metrics: status %d: %s", line, agent, status,
                 r.err);
    bus_cmd_free(&r);
}

/* One open(O_APPEND) + write() + close() of agents/AGENT/metrics, which must
 * succeed. */
static void put_n(const char *agent, const char *data, size_t len)
{
    enum bus_step step;
    int err = bus_write_ex(AT("agents/%s/metrics", agent), O_WRONLY | O_APPEND, data, len, &step);
    cr_assert(err == 0, "writing %zu bytes to agents/%s/metrics failed at step %d: %s [%.200s]",
              len, agent, (int)step, strerror(err), data);
}

static void put(const char *agent, const char *text)
{
    put_n(agent, text, strlen(text));
}

static off_t size_of(const char *path)
{
    struct stat st;
    cr_assert(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
    return st.st_size;
}

/* Reads the file at offset off to its end (malloc'd, NUL-terminated). */
static char *read_from(const char *path, off_t off, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
    size_t cap = 65536, n = 0;
    char *data = malloc(cap);
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap *= 2;
            data = realloc(data, cap);
        }
        ssize_t got = pread(fd, data + n, cap - n - 1, off + (off_t)n);
        cr_assert(got >= 0, "pread %s at %lld: %s", path, (long long)(off + (off_t)n),
                  strerror(errno));
        if (got == 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    data[n] = '\0';
    if (len)
        *len = n;
    return data;
}

/* The fields of a stored point: exactly the six keys, with their types. */
static void assert_point_format(const json_t *p)
{
    char *dump = json_dumps(p, JSON_COMPACT);
    bus_assert_keys(p, "timestamp", "agent", "metric", "value", "unit", "tags", NULL);
    json_t *ts = json_object_get(p, "timestamp");
    cr_assert(json_is_string(ts) && bus_match(BUS_TIMESTAMP_RE, json_string_value(ts)),
              "timestamp is not RFC 3339 UTC with microseconds: %s", dump);
    cr_assert(json_is_string(json_object_get(p, "agent")), "agent is not a string: %s", dump);
    cr_assert(json_is_string(json_object_get(p, "metric")), "metric is not a string: %s", dump);
    cr_assert(json_is_number(json_object_get(p, "value")), "value is not a number: %s", dump);
    cr_assert(json_is_string(json_object_get(p, "unit")), "unit is not a string: %s", dump);
    json_t *tags = json_object_get(p, "tags");
    cr_assert(json_is_object(tags), "tags is not an object: %s", dump);
    const char *k;
    json_t *v;
    json_object_foreach(tags, k, v)
    {
        cr_assert(json_is_string(v), "tag %s is not a string: %s", k, dump);
    }
    free(dump);
}

/* A stored point: its format and these fields (tags as JSON text). */
static void assert_point(const json_t *p, const char *agent, const char *metric, double value,
                         const char *unit, const char *tags)
{
    cr_assert(p, "a point is missing (want %s %s)", agent, metric);
    assert_point_format(p);
    char *dump = json_dumps(p, JSON_COMPACT);
    cr_assert_str_eq(bus_str(p, "agent"), agent, "agent of %s", dump);
    cr_assert_str_eq(bus_str(p, "metric"), metric, "metric of %s", dump);
    cr_assert(json_number_value(json_object_get(p, "value")) == value, "value of %s, want %.17g",
              dump, value);
    cr_assert_str_eq(bus_str(p, "unit"), unit, "unit of %s", dump);
    json_t *want = json_loads(tags, 0, NULL);
    cr_assert(want, "bad test tags %s", tags);
    cr_assert(json_equal(json_object_get(p, "tags"), want), "tags of %s, want %s", dump, tags);
    json_decref(want);
    free(dump);
}

/* Every line of a JSONL file, each a stored point. */
static json_t *points(const char *path)
{
    json_t *all = bus_jsonl(path);
    for (size_t i = 0; i < json_array_size(all); i++)
        assert_point_format(json_array_get(all, i));
    return all;
}

static size_t count_lines(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += s[i] == '\n';
    return n;
}

/* The lines of a JSONL text whose "agent" is agent, in order (malloc'd). */
static char *lines_of(const char *log, const char *agent)
{
    struct text t = {0};
    text_add(&t, "%s", "");
    for (const char *line = log; *line;) {
        const char *end = strchr(line, '\n');
        cr_assert(end, "a line without newline: [%s]", line);
        json_t *p = json_loadb(line, (size_t)(end - line), 0, NULL);
        cr_assert(json_is_object(p), "not a JSON object: [%.*s]", (int)(end - line), line);
        if (strcmp(bus_str(p, "agent"), agent) == 0)
            text_add(&t, "%.*s", (int)(end - line + 1), line);
        json_decref(p);
        line = end + 1;
    }
    return t.data;
}

/* summary.json parsed, and one metric's entry (NULL when absent). */
static json_t *summary(void)
{
    json_t *doc = bus_json_file(AT(SUMMARY), 0);
    bus_assert_keys(doc, "window_s", "metrics", NULL);
    cr_assert(json_is_number(json_object_get(doc, "window_s")), "window_s is not a number");
    cr_assert(json_is_object(json_object_get(doc, "metrics")), "metrics is not an object");
    return doc;
}

static json_t *stats_of(const json_t *doc, const char *metric)
{
    json_t *s = json_object_get(json_object_get(doc, "metrics"), metric);
    if (s) {
        bus_assert_keys(s, "count", "min", "max", "avg", "p50", "p95", "p99", NULL);
        const char *k;
        json_t *v;
        json_object_foreach(s, k, v)
        {
            cr_assert(json_is_number(v), "%s.%s is not a number", metric, k);
        }
        cr_assert(json_is_integer(json_object_get(s, "count")), "%s.count is not an integer",
                  metric);
    }
    return s;
}

static double num(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    cr_assert(json_is_number(v), "%s is not a number", key);
    return json_number_value(v);
}

/* ---- exact statistics, computed here ---------------------------------- */

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The exact order statistic x[floor(q * (n - 1))] of the sorted values. */
static double exact_quantile(const double *sorted, size_t n, double q)
{
    return sorted[(size_t)floor(q * (double)(n - 1))];
}

static bool within_1pct(double est, double exact)
{
    return fabs(est - exact) <= 0.01 * fabs(exact) + 1e-12;
}

/* A metric's summary entry against the values written (in any order). */
static void assert_summary_of(const json_t *doc, const char *metric, const double *values, size_t n)
{
    json_t *s = stats_of(doc, metric);
    char *dump = json_dumps(json_object_get(doc, "metrics"), JSON_COMPACT);
    cr_assert(s, "summary.json has no %s: %s", metric, dump);
    double *sorted = malloc(n * sizeof *sorted);
    memcpy(sorted, values, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, by_value);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += values[i];
    cr_assert_eq(bus_int(s, "count"), (json_int_t)n, "%s count", metric);
    cr_assert(num(s, "min") == sorted[0], "%s min %.17g, want %.17g", metric, num(s, "min"),
              sorted[0]);
    cr_assert(num(s, "max") == sorted[n - 1], "%s max %.17g, want %.17g", metric, num(s, "max"),
              sorted[n - 1]);
    /* Exact up to the order of the floating-point additions. */
    double avg = sum / (double)n;
    cr_assert(fabs(num(s, "avg") - avg) <= 1e-9 * fabs(avg) + 1e-12, "%s avg %.17g, want %.17g",
              metric, num(s, "avg"), avg);
    const char *keys[] = {"p50", "p95", "p99"};
    const double qs[] = {0.5, 0.95, 0.99};
    for (size_t i = 0; i < 3; i++) {
        double want = exact_quantile(sorted, n, qs[i]);
        cr_assert(within_1pct(num(s, keys[i]), want),
                  "%s %s is %.17g, not within 1%% of the exact %.17g (n %zu)", metric, keys[i],
                  num(s, keys[i]), want, n);
    }
    free(sorted);
    free(dump);
}

/* Writes values as "METRIC VALUE[ UNIT]" lines, `per_write` lines per
 * write(), alternating between the agents (NULL-terminated list). */
static void put_values(const char *const *agents, const char *metric, const char *unit,
                       const double *values, size_t n, size_t per_write)
{
    size_t nagents = 0;
    while (agents[nagents])
        nagents++;
    for (size_t a = 0; a < nagents; a++) {
        struct text t = {0};
        size_t lines = 0;
        for (size_t i = a; i < n; i += nagents) {
            text_add(&t, "%s %.17g%s%s\n", metric, values[i], unit ? " " : "", unit ? unit : "");
            if (++lines == per_write) {
                put_n(agents[a], t.data, t.len);
                t.len = 0;
                lines = 0;
            }
        }
        if (t.len)
            put_n(agents[a], t.data, t.len);
        text_free(&t);
    }
}

/* A fixed-seed PRNG (splitmix64), so every run writes the same values. */
static uint64_t rng_state;

static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]. */
static double rng_unit(void)
{
    return ((double)(rng() >> 11) + 1.0) * 0x1.0p-53;
}

static void shuffle(double *v, size_t n)
{
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)(rng() % (i + 1));
        double t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* ---- background readers ------------------------------------------------ */

/* Reads from a background command until it has printed n more lines (or
 * 10 s went by); appends to *t; returns the lines read. */
static size_t read_lines(struct bus_proc *p, size_t n, struct text *t)
{
    size_t lines = 0;
    long long end = bus_now_ms() + BUS_WAIT_MS;
    while (lines < n && bus_now_ms() < end) {
        struct pollfd pf = {p->out_fd, POLLIN, 0};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        char buf[65536];
        ssize_t got = read(p->out_fd, buf, sizeof buf);
        if (got <= 0)
            break;
        text_add(t, "%.*s", (int)got, buf);
        lines += count_lines(buf, (size_t)got);
    }
    return lines;
}

/* ---- Prometheus exposition ------------------------------------------- */

/* The samples of busfs.prom, each series written name{k="v",...} with its
 * labels sorted by key and unescaped, and the # TYPE of each family. */
struct prom {
    size_t n;
    char **series;
    double *value;
    size_t ntypes;
    char **type_name, **type_kind;
    char *text;
};

static int by_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One sample line into its canonical series; false if it does not parse. */
static bool prom_sample(const char *line, char **series, double *value)
{
    const char *p = line;
    size_t nl = strcspn(p, "{ ");
    if (nl == 0)
        return false;
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)nl, p);
    p += nl;
    char *labels[64];
    size_t nlabels = 0;
    if (*p == '{') {
        p++;
        while (*p != '}') {
            size_t kl = strcspn(p, "=");
            if (p[kl] != '=' || p[kl + 1] != '"' || nlabels == 64)
                return false;
            struct text l = {0};
            text_add(&l, "%.*s=\"", (int)kl, p);
            p += kl + 2;
            while (*p && *p != '"') {
                if (*p == '\\') {
                    p++;
                    if (*p == 'n')
                        text_add(&l, "\n");
                    else if (*p == '\\' || *p == '"')
                        text_add(&l, "%c", *p);
                    else
                        return false;
                } else {
                    text_add(&l, "%c", *p);
                }
                p++;
            }
            if (*p != '"')
                return false;
            text_add(&l, "\"");
            labels[nlabels++] = l.data;
            p++;
            if (*p == ',')
                p++;
            else if (*p != '}')
                return false;
        }
        p++;
    }
    if (*p != ' ')
        return false;
    char *end;
    *value = strtod(p + 1, &end);
    if (end == p + 1)
        return false;
    qsort(labels, nlabels, sizeof *labels, by_str);
    struct text s = {0};
    text_add(&s, "%s{", name);
    for (size_t i = 0; i < nlabels; i++) {
        text_add(&s, "%s%s", i ? "," : "", labels[i]);
        free(labels[i]);
    }
    text_add(&s, "}");
    *series = s.data;
    return true;
}

static void prom_load(struct prom *pr)
{
    memset(pr, 0, sizeof *pr);
    pr->text = bus_read_ok(AT(PROM), NULL);
    size_t cap = 1024;
    pr->series = malloc(cap * sizeof *pr->series);
    pr->value = malloc(cap * sizeof *pr->value);
    pr->type_name = malloc(cap * sizeof *pr->type_name);
    pr->type_kind = malloc(cap * sizeof *pr->type_kind);
    char *copy = strdup(pr->text);
    for (char *line = strtok(copy, "\n"); line; line = strtok(NULL, "\n")) {
        if (pr->n == cap || pr->ntypes == cap) {
            cap *= 2;
            pr->series = realloc(pr->series, cap * sizeof *pr->series);
            pr->value = realloc(pr->value, cap * sizeof *pr->value);
            pr->type_name = realloc(pr->type_name, cap * sizeof *pr->type_name);
            pr->type_kind = realloc(pr->type_kind, cap * sizeof *pr->type_kind);
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[256], kind[64];
            cr_assert_eq(sscanf(line + 7, "%255s %63s", name, kind), 2, "bad TYPE line: %s", line);
            pr->type_name[pr->ntypes] = strdup(name);
            pr->type_kind[pr->ntypes++] = strdup(kind);
            continue;
        }
        if (line[0] == '#')
            continue;
        cr_assert(prom_sample(line, &pr->series[pr->n], &pr->value[pr->n]),
                  "busfs.prom: a sample line does not parse: [%s]", line);
        pr->n++;
    }
    free(copy);
}

static void prom_free(struct prom *pr)
{
    for (size_t i = 0; i < pr->n; i++)
        free(pr->series[i]);
    for (size_t i = 0; i < pr->ntypes; i++) {
        free(pr->type_name[i]);
        free(pr->type_kind[i]);
    }
    free(pr->series);
    free(pr->value);
    free(pr->type_name);
    free(pr->type_kind);
    free(pr->text);
}

/* The canonical series of NAME with label pairs (key, value, ..., NULL). */
static char *prom_series(const char *name, va_list ap)
{
    char *labels[64];
    size_t n = 0;
    const char *k;
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        struct text l = {0};
        text_add(&l, "%s=\"%s\"", k, v);
        labels[n++] = l.data;
    }
    qsort(labels, n, sizeof *labels, by_str);
    struct text s = {0};
    text_add(&s, "%s{", name);
    for (size_t i = 0; i < n; i++) {
        text_add(&s, "%s%s", i ? "," : "", labels[i]);
        free(labels[i]);
    }
    text_add(&s, "}");
    return s.data;
}

/* The value of one sample; the test fails when it is not there (once). */
static double prom_get(const struct prom *pr, const char *name, ...)
{
    va_list ap;
    va_start(ap, name);
    char *want = prom_series(name, ap);
    va_end(ap);
    double v = NAN;
    size_t found = 0;
    for (size_t i = 0; i < pr->n; i++)
        if (strcmp(pr->series[i], want) == 0) {
            v = pr->value[i];
            found++;
        }
    cr_assert_eq(found, 1, "busfs.prom has %zu samples %s:\n%s", found, want, pr->text);
    free(want);
    return v;
}

/* How many samples of exactly this metric name (any labels). */
static size_t prom_count_named(const struct prom *pr, const char *name)
{
    size_t n = 0, len = strlen(name);
    for (size_t i = 0; i < pr->n; i++)
        n += strncmp(pr->series[i], name, len) == 0 && pr->series[i][len] == '{';
    return n;
}

static const char *prom_type(const struct prom *pr, const char *family)
{
    for (size_t i = 0; i < pr->ntypes; i++)
        if (strcmp(pr->type_name[i], family) == 0)
            return pr->type_kind[i];
    return NULL;
}

/* The busfs_user_metric* lines of busfs.prom, as they are (malloc'd). */
static char *user_metric_lines(void)
{
    char *text = bus_read_ok(AT(PROM), NULL);
    struct text t = {0};
    text_add(&t, "%s", "");
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
        if (strncmp(line, "busfs_user_metric", 17) == 0)
            text_add(&t, "%s\n", line);
    free(text);
    return t.data;
}

/* ---- 1. the SPEC examples ------------------------------------------------ */

BUS_TEST(metrics, spec_examples_are_stored_as_spec_points_in_order)
{
    bus_agents(&bus, "alice", "bob", NULL);
    echo_point("alice", "coordination.time 150 ms");
    echo_point("bob", "queue.len 7");
    echo_point("alice", "tasks.done 1 count phase=build");
    echo_point("alice", "{\"metric\":\"memory.mb\",\"value\":512.5,\"unit\":\"mb\","
                        "\"tags\":{\"host\":\"a\"}}");
    echo_point("bob",
               "{\"metric\":\"queue.len\",\"value\":-3,\"tags\":{\"q\":\"in\",\"z\":\"1\"}}");
    echo_point("bob", "queue.wait 0.25 s host=b phase=x");

    json_t *all = points(AT(LOG));
    cr_assert_eq(json_array_size(all), 6, "metrics.jsonl holds %zu points, want 6",
                 json_array_size(all));
    assert_point(json_array_get(all, 0), "alice", "coordination.time", 150, "ms", "{}");
    assert_point(json_array_get(all, 1), "bob", "queue.len", 7, "", "{}");
    assert_point(json_array_get(all, 2), "alice", "tasks.done", 1, "count",
                 "{\"phase\":\"build\"}");
    assert_point(json_array_get(all, 3), "alice", "memory.mb", 512.5, "mb", "{\"host\":\"a\"}");
    assert_point(json_array_get(all, 4), "bob", "queue.len", -3, "", "{\"q\":\"in\",\"z\":\"1\"}");
    assert_point(json_array_get(all, 5), "bob", "queue.wait", 0.25, "s",
                 "{\"host\":\"b\",\"phase\":\"x\"}");
    for (size_t i = 1; i < json_array_size(all); i++)
        cr_assert(strcmp(bus_str(json_array_get(all, i), "timestamp"),
                         bus_str(json_array_get(all, i - 1), "timestamp")) >= 0,
                  "timestamps go back at point %zu", i);
    json_decref(all);

    /* Each line is one JSON object and a newline, nothing else. */
    size_t len;
    char *log = bus_read_ok(AT(LOG), &len);
    cr_assert_eq(count_lines(log, len), 6, "metrics.jsonl: [%s]", log);

    /* An agent's view is its own lines of the log, byte for byte. */
    json_t *mine = points(AT("agents/alice/metrics"));
    cr_assert_eq(json_array_size(mine), 3, "alice's view holds %zu points", json_array_size(mine));
    assert_point(json_array_get(mine, 0), "alice", "coordination.time", 150, "ms", "{}");
    assert_point(json_array_get(mine, 1), "alice", "tasks.done", 1, "count",
                 "{\"phase\":\"build\"}");
    assert_point(json_array_get(mine, 2), "alice", "memory.mb", 512.5, "mb", "{\"host\":\"a\"}");
    json_decref(mine);
    json_t *bobs = points(AT("agents/bob/metrics"));
    cr_assert_eq(json_array_size(bobs), 3, "bob's view holds %zu points", json_array_size(bobs));
    for (size_t i = 0; i < 3; i++)
        cr_assert_str_eq(bus_str(json_array_get(bobs, i), "agent"), "bob",
                         "bob's view shows another agent's point");
    json_decref(bobs);
    const char *const names[] = {"alice", "bob"};
    for (size_t i = 0; i < 2; i++) {
        char *want = lines_of(log, names[i]);
        char *view = bus_read_ok(AT("agents/%s/metrics", names[i]), NULL);
        cr_assert_str_eq(view, want, "agents/%s/metrics is not its lines of metrics.jsonl",
                         names[i]);
        free(want);
        free(view);
    }
    free(log);

    /* cat through the shell shows the same. */
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "grep -c '\"agent\":\"alice\"' metrics/metrics.jsonl"), 0);
    cr_assert_str_eq(r.out, "3\n");
    bus_cmd_free(&r);
    cr_assert_eq(bus_sh(&bus, &r, "jq -r '.metric' agents/alice/metrics"), 0, "jq: %s", r.err);
    cr_assert_str_eq(r.out, "coordination.time\ntasks.done\nmemory.mb\n");
    bus_cmd_free(&r);
}

/* ---- 2. many lines per write ------------------------------------------- */

BUS_TEST(metrics, many_lines_per_write_crlf_and_a_last_line_without_newline)
{
    bus_agents(&bus, "alice", NULL);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", AT("agents/alice/metrics"));

    /* 500 points in one write(): text and JSON lines, blank lines between,
     * the last one without its newline. */
    struct text t = {0};
    for (int i = 0; i < 500; i++) {
        if (i % 5 == 4)
            text_add(&t, "{\"metric\":\"batch.json\",\"value\":%d,\"tags\":{\"i\":\"%d\"}}\n", i,
                     i);
        else
            text_add(&t, "batch.text %d.5 ms i=%d\n", i, i);
        if (i % 100 == 50)
            text_add(&t, "\n   \n\t\n");
    }
    t.len--;
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    cr_assert(fd >= 0, "open: %s", strerror(errno));
    ssize_t n = write(fd, t.data, t.len);
    cr_assert_eq(n, (ssize_t)t.len, "one write() of 500 lines: %zd of %zu bytes (%s)", n, t.len,
                 n < 0 ? strerror(errno) : "short");
    cr_assert_eq(close(fd), 0);
    text_free(&t);
    json_t *all = points(AT(LOG));
    cr_assert_eq(json_array_size(all), 500, "500 lines in one write gave %zu points",
                 json_array_size(all));
    for (int i = 0; i < 500; i++) {
        char tags[32];
        snprintf(tags, sizeof tags, "{\"i\":\"%d\"}", i);
        if (i % 5 == 4)
            assert_point(json_array_get(all, (size_t)i), "alice", "batch.json", i, "", tags);
        else
            assert_point(json_array_get(all, (size_t)i), "alice", "batch.text", i + 0.5, "ms",
                         tags);
    }
    json_decref(all);

    /* CRLF line ends are not part of a unit, a tag or a value; a text last
     * line without a newline. */
    const char crlf[] = "crlf.a 1 ms\r\ncrlf.b 2 k=v\r\n\r\n{\"metric\":\"crlf.c\",\"value\":3}\r\n"
                        "crlf.d 4\r\ncrlf.e 5 s";
    cr_assert_eq(bus_write_ex(path, O_WRONLY | O_APPEND, crlf, sizeof crlf - 1, NULL), 0,
                 "a CRLF write was refused");
    all = points(AT(LOG));
    cr_assert_eq(json_array_size(all), 505);
    assert_point(json_array_get(all, 500), "alice", "crlf.a", 1, "ms", "{}");
    assert_point(json_array_get(all, 501), "alice", "crlf.b", 2, "", "{\"k\":\"v\"}");
    assert_point(json_array_get(all, 502), "alice", "crlf.c", 3, "", "{}");
    assert_point(json_array_get(all, 503), "alice", "crlf.d", 4, "", "{}");
    assert_point(json_array_get(all, 504), "alice", "crlf.e", 5, "s", "{}");
    json_decref(all);

    /* A newline written by itself after an accepted write is its tail. */
    size_t errs = bus_jsonl_count(AT("errors"));
    fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, "tail.x 1", 8), 8);
    cr_assert_eq(write(fd, "\n", 1), 1, "the newline after a point: %s", strerror(errno));
    cr_assert_eq(write(fd, " \r\n\n", 4), 4, "blanks after a point: %s", strerror(errno));
    cr_assert_eq(write(fd, "tail.y 2\n", 9), 9);
    cr_assert_eq(close(fd), 0);
    cr_assert_eq(bus_jsonl_count(AT("errors")), errs, "nothing was refused");
    all = points(AT(LOG));
    cr_assert_eq(json_array_size(all), 507);
    assert_point(json_array_get(all, 505), "alice", "tail.x", 1, "", "{}");
    assert_point(json_array_get(all, 506), "alice", "tail.y", 2, "", "{}");
    json_decref(all);

    /* A blank first write stores nothing (README: it is refused). */
    off_t before = size_of(AT(LOG));
    fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    cr_assert(fd >= 0);
    errno = 0;
    ssize_t w = write(fd, "\n", 1);
    cr_assert(w == 1 || (w < 0 && errno == EINVAL), "a blank first write: %zd %s", w,
              strerror(errno));
    close(fd);
    cr_assert_eq(size_of(AT(LOG)), before, "a blank write stored something");

    /* The view and the log agree: alice is the only agent. */
    cr_assert_eq(size_of(AT("agents/alice/metrics")), size_of(AT(LOG)));
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "wc -l < agents/alice/metrics"), 0);
    cr_assert_eq(atoi(r.out), 507, "wc -l: %s", r.out);
    bus_cmd_free(&r);
}

/* ---- 3. bad input ------------------------------------------------------- */

/* A valid text line of exactly len bytes: "long.line 1" and up to 16 tags
 * t00..t15 of up to 256 bytes each (malloc'd). */
static char *exact_line(size_t len)
{
    char *s = malloc(len + 1);
    size_t n = (size_t)sprintf(s, "long.line 1");
    for (int k = 0; n < len; k++) {
        cr_assert(k < 16 && len - n > 5, "cannot build a line of %zu bytes", len);
        size_t v = len - n - 5 > 256 ? 256 : len - n - 5;
        n += (size_t)sprintf(s + n, " t%02d=", k);
        memset(s + n, 'a' + k, v);
        n += v;
    }
    s[n] = '\0';
    cr_assert_eq(n, len);
    return s;
}

struct bad_point {
    const char *what;
    const char *data;
    size_t len;
    int line; /* the line the reason must name */
};
#define LIT(s) s, sizeof s - 1

/* Every string value of the last line of a JSONL log, joined. */
static char *last_reason(const char *path)
{
    json_t *lines = bus_jsonl(path);
    json_t *last = json_array_get(lines, json_array_size(lines) - 1);
    cr_assert(last, "%s is empty", path);
    struct text t = {0};
    text_add(&t, "%s", "");
    const char *k;
    json_t *v;
    json_object_foreach(last, k, v)
    {
        if (json_is_string(v))
            text_add(&t, "%s ", json_string_value(v));
    }
    json_decref(lines);
    return t.data;
}

BUS_TEST(metrics, bad_lines_fail_with_einval_are_logged_and_store_nothing)
{
    char name129[160], tag257[300], key65[100], tags17[400];
    memset(name129, 'n', 129);
    snprintf(name129 + 129, sizeof name129 - 129, " 1\n");
    memcpy(tag257, "x 1 k=", 6);
    memset(tag257 + 6, 'v', 257);
    snprintf(tag257 + 263, sizeof tag257 - 263, "\n");
    memcpy(key65, "x 1 ", 4);
    memset(key65 + 4, 'k', 65);
    snprintf(key65 + 69, sizeof key65 - 69, "=v\n");
    int off = snprintf(tags17, sizeof tags17, "x 1");
    for (int k = 0; k < 17; k++)
        off += snprintf(tags17 + off, sizeof tags17 - (size_t)off, " t%d=v", k);
    snprintf(tags17 + off, sizeof tags17 - (size_t)off, "\n");
    char *line4097 = exact_line(4097);
    char *long_bad = malloc(4200);
    snprintf(long_bad, 4200, "%s\n", line4097);
    struct text many = {0};
    for (int i = 0; i < 2000; i++)
        text_add(&many, "good.many %d\n", i);
    text_add(&many, "good.many inf\n");

    const struct bad_point bad[] = {
        {"a name starting with a digit", LIT("3bad 1\n"), 1},
        {"a name with a slash", LIT("a/b 1\n"), 1},
        {"a name with a dollar", LIT("cpu$ 1\n"), 1},
        {"a name starting with a dot", LIT(".hidden 1\n"), 1},
        {"a name of 129 bytes", name129, strlen(name129), 1},
        {"nan", LIT("x nan\n"), 1},
        {"NaN", LIT("x NaN\n"), 1},
        {"inf", LIT("x inf\n"), 1},
        {"-Infinity", LIT("x -Infinity\n"), 1},
        {"a hex value", LIT("x 0x10\n"), 1},
        {"a value out of range", LIT("x 1e999\n"), 1},
        {"a missing value", LIT("x\n"), 1},
        {"a value with a comma", LIT("x 1,5\n"), 1},
        {"a value with letters after it", LIT("x 12abc\n"), 1},
        {"two units", LIT("x 1 ms s\n"), 1},
        {"a line of 4097 bytes", long_bad, strlen(long_bad), 1},
        {"a tag key starting with a digit", LIT("x 1 1k=v\n"), 1},
        {"an empty tag key", LIT("x 1 =v\n"), 1},
        {"an empty tag value", LIT("x 1 k=\n"), 1},
        {"a tag value of 257 bytes", tag257, strlen(tag257), 1},
        {"a tag key of 65 bytes", key65, strlen(key65), 1},
        {"a duplicate tag", LIT("x 1 k=a k=b\n"), 1},
        {"17 tags", tags17, strlen(tags17), 1},
        {"a tag value that is not UTF-8", LIT("x 1 k=\xff\xfe\n"), 1},
        {"bad JSON", LIT("{\"metric\":\"x\",\"value\":1\n"), 1},
        {"a JSON array", LIT("[\"x\",1]\n"), 1},
        {"an unknown JSON field", LIT("{\"metric\":\"x\",\"value\":1,\"host\":\"a\"}\n"), 1},
        {"a JSON value as a string", LIT("{\"metric\":\"x\",\"value\":\"1\"}\n"), 1},
        {"an empty JSON value", LIT("{\"metric\":\"x\",\"value\":\"\"}\n"), 1},
        {"a null JSON value", LIT("{\"metric\":\"x\",\"value\":null}\n"), 1},
        {"JSON without value", LIT("{\"metric\":\"x\"}\n"), 1},
        {"JSON without metric", LIT("{\"value\":1}\n"), 1},
        {"a bad JSON metric name", LIT("{\"metric\":\"3x\",\"value\":1}\n"), 1},
        {"NaN in JSON", LIT("{\"metric\":\"x\",\"value\":NaN}\n"), 1},
        {"JSON tags that are not an object", LIT("{\"metric\":\"x\",\"value\":1,\"tags\":[1]}\n"),
         1},
        {"a duplicate JSON tag",
         LIT("{\"metric\":\"x\",\"value\":1,\"tags\":{\"k\":\"a\",\"k\":\"b\"}}\n"), 1},
        {"a bad third line after two good ones", LIT("good.a 1\ngood.b 2 ms\n3bad 1\n"), 3},
        {"a bad second CRLF line", LIT("good.a 1\r\nx nan\r\ngood.c 3\r\n"), 2},
        {"a bad line after 2000 good ones", many.data, many.len, 2001},
    };

    bus_agents(&bus, "alice", NULL);
    put("alice", "baseline.point 1 ms\n");
    char path[PATH_MAX], log_path[PATH_MAX], view_path[PATH_MAX];
    snprintf(path, sizeof path, "%s", AT("agents/alice/metrics"));
    snprintf(log_path, sizeof log_path, "%s", AT(LOG));
    snprintf(view_path, sizeof view_path, "%s", AT("agents/alice/metrics"));
    off_t log_size = size_of(log_path), view_size = size_of(view_path);

    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t top = bus_jsonl_count(AT("errors"));
        size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
        enum bus_step step;
        int err = bus_write_ex(path, O_WRONLY | O_APPEND, bad[i].data, bad[i].len, &step);
        cr_assert(err == EINVAL && step == BUS_STEP_WRITE,
                  "%s: %s at step %d, want EINVAL at write()", bad[i].what,
                  err ? strerror(err) : "success", (int)step);
        bus_assert_logged(AT("errors"), top, bad[i].what);
        bus_assert_logged(AT("agents/alice/errors"), mine, bad[i].what);
        char want[32];
        snprintf(want, sizeof want, "line %d", bad[i].line);
        const char *logs[] = {AT("errors"), AT("agents/alice/errors")};
        for (size_t j = 0; j < 2; j++) {
            char *reason = last_reason(logs[j]);
            cr_assert(strstr(reason, want), "%s: the reason does not name %s: %s", bad[i].what,
                      want, reason);
            free(reason);
        }
        cr_assert_eq(size_of(log_path), log_size, "%s: metrics.jsonl changed", bad[i].what);
        cr_assert_eq(size_of(view_path), view_size, "%s: alice's metrics changed", bad[i].what);
    }
    json_t *all = points(log_path);
    cr_assert_eq(json_array_size(all), 1, "bad writes stored points");
    json_decref(all);
    json_t *doc = summary();
    cr_assert_eq(json_object_size(json_object_get(doc, "metrics")), 1,
                 "summary.json shows a refused metric");
    json_decref(doc);

    /* What a user sees in the shell. */
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "echo 'x nan' >> agents/alice/metrics"), 0,
                  "echo 'x nan' >> metrics succeeded");
    cr_assert(r.err_len > 0, "echo 'x nan' >> metrics failed silently");
    bus_cmd_free(&r);
    cr_assert_eq(size_of(log_path), log_size);

    /* The limits themselves are accepted: a line of exactly 4096 bytes (with
     * 16 tags of up to 256 bytes), a 128-byte name, a 64-byte tag key. */
    char *line4096 = exact_line(4096);
    char *ok = malloc(4200);
    snprintf(ok, 4200, "%s\n", line4096);
    cr_assert_eq(bus_write_ex(path, O_WRONLY | O_APPEND, ok, strlen(ok), NULL), 0,
                 "a line of exactly 4096 bytes was refused");
    snprintf(ok, 4200, "%s\r\n", line4096);
    cr_assert_eq(bus_write_ex(path, O_WRONLY | O_APPEND, ok, strlen(ok), NULL), 0,
                 "a line of exactly 4096 bytes and CRLF was refused");
    cr_assert_eq(bus_write_ex(path, O_WRONLY | O_APPEND, line4096, 4096, NULL), 0,
                 "a last line of exactly 4096 bytes without newline was refused");
    char limits[300];
    memset(limits, 'N', 128);
    memcpy(limits + 128, " -2.5e-3 u ", 11);
    memset(limits + 139, 'k', 64);
    snprintf(limits + 203, sizeof limits - 203, "=v");
    put("alice", limits);
    all = points(log_path);
    cr_assert_eq(json_array_size(all), 5);
    for (size_t i = 1; i <= 3; i++) {
        json_t *p = json_array_get(all, i);
        cr_assert_str_eq(bus_str(p, "metric"), "long.line");
        json_t *tags = json_object_get(p, "tags");
        cr_assert_eq(json_object_size(tags), 16, "the 16 tags of the 4096-byte line");
        cr_assert_eq(json_string_length(json_object_get(tags, "t00")), 256);
        cr_assert_eq(json_string_length(json_object_get(tags, "t15")), 4096 - 11 - 15 * 261 - 5);
    }
    json_t *p = json_array_get(all, 4);
    cr_assert_eq(strlen(bus_str(p, "metric")), 128);
    cr_assert(num(p, "value") == -2.5e-3);
    cr_assert_str_eq(bus_str(p, "unit"), "u");
    cr_assert_eq(json_object_size(json_object_get(p, "tags")), 1);
    char key64[65];
    memset(key64, 'k', 64);
    key64[64] = '\0';
    cr_assert_str_eq(bus_str(json_object_get(p, "tags"), key64), "v", "a 64-byte tag key");
    json_decref(all);

    free(ok);
    free(line4096);
    free(line4097);
    free(long_bad);
    text_free(&many);
}

/* ---- 4. summary.json ----------------------------------------------------- */

BUS_TEST(metrics, summary_has_exact_counts_and_quantiles_within_one_percent)
{
    bus_agents(&bus, "alice", "bob", NULL);
    rng_state = 20261123;

    /* 1..1000 shuffled, half by alice and half by bob: one summary. */
    double uniform[1000];
    for (int i = 0; i < 1000; i++)
        uniform[i] = i + 1;
    shuffle(uniform, 1000);
    const char *const both[] = {"alice", "bob", NULL};
    put_values(both, "coordination.time", "ms", uniform, 1000, 100);

    /* A lognormal-ish set (Box-Muller), heavy-tailed. */
    enum { NLOG = 3000 };
    static double lognormal[NLOG];
    for (int i = 0; i < NLOG; i++) {
        double z = sqrt(-2.0 * log(rng_unit())) * cos(2.0 * M_PI * rng_unit());
        lognormal[i] = exp(3.0 + 1.2 * z);
    }
    const char *const alice[] = {"alice", NULL};
    put_values(alice, "latency.lognormal", "s", lognormal, NLOG, 250);

    /* Negative and positive values, no unit. */
    double mixed[2000];
    for (int i = 0; i < 500; i++)
        mixed[i] = -(i + 1);
    for (int i = 0; i < 1500; i++)
        mixed[500 + i] = i + 1;
    shuffle(mixed, 2000);
    const char *const bob[] = {"bob", NULL};
    put_values(bob, "balance.delta", NULL, mixed, 2000, 400);

    /* All zeros: every quantile is 0. */
    double zeros[20] = {0};
    put_values(bob, "errors.zero", "count", zeros, 20, 7);

    /* One point through JSON. */
    put("alice", "{\"metric\":\"single.point\",\"value\":42.25,\"unit\":\"mb\"}");
    double single[] = {42.25};

    json_t *doc = summary();
    cr_assert(num(doc, "window_s") == 60, "window_s %g, want the default 60", num(doc, "window_s"));
    cr_assert_eq(json_object_size(json_object_get(doc, "metrics")), 5,
                 "summary.json has %zu metrics, want 5",
                 json_object_size(json_object_get(doc, "metrics")));
    assert_summary_of(doc, "coordination.time", uniform, 1000);
    assert_summary_of(doc, "latency.lognormal", lognormal, NLOG);
    assert_summary_of(doc, "balance.delta", mixed, 2000);
    assert_summary_of(doc, "errors.zero", zeros, 20);
    assert_summary_of(doc, "single.point", single, 1);
    json_t *s = stats_of(doc, "coordination.time");
    cr_assert(num(s, "avg") == 500.5, "avg of 1..1000: %.17g", num(s, "avg"));
    json_decref(doc);

    /* The shell way. */
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "jq '.metrics[\"coordination.time\"].p95' metrics/summary.json"),
                 0, "jq: %s", r.err);
    char *end;
    double p95 = strtod(r.out, &end);
    cr_assert(end != r.out && *end == '\n', "jq printed [%s]", r.out);
    cr_assert(within_1pct(p95, 950), "jq p95 %s, want 950 within 1%%", r.out);
    bus_cmd_free(&r);
    cr_assert_eq(bus_sh(&bus, &r, "jq -e '.metrics | length == 5' metrics/summary.json"), 0,
                 "jq -e: %s %s", r.out, r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_sh(&bus, &r, "jq -r '.metrics | keys | join(\" \")' metrics/summary.json"), 0);
    cr_assert_str_eq(r.out, "balance.delta coordination.time errors.zero latency.lognormal "
                            "single.point\n");
    bus_cmd_free(&r);
}

/* ---- 5. the summary window --------------------------------------------- */

static void start_window_1(void)
{
    bus_start(&bus, "--summary-window", "1", NULL);
}

BUS_TEST_WITH(metrics, points_leave_the_summary_after_the_window_but_stay_in_the_log,
              start_window_1)
{
    bus_agents(&bus, "alice", NULL);
    put("alice", "old.metric 5 ms\nold.metric 7 ms\nkept.metric 1\n");
    json_t *doc = summary();
    cr_assert(num(doc, "window_s") == 1, "window_s %g, want 1", num(doc, "window_s"));
    json_t *s = stats_of(doc, "old.metric");
    /* Read at once, the points are within the window (unless this machine
     * stalled for a second). */
    if (s)
        cr_assert_eq(bus_int(s, "count"), 2);
    json_decref(doc);

    long long deadline = bus_now_ms() + 20000;
    for (;;) {
        doc = summary();
        bool gone = !stats_of(doc, "old.metric") && !stats_of(doc, "kept.metric");
        char *dump = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        if (gone) {
            free(dump);
            break;
        }
        cr_assert(bus_now_ms() < deadline, "points 20 s old are still summarised: %s", dump);
        free(dump);
        bus_pause_ms(100);
    }
    doc = summary();
    cr_assert_eq(json_object_size(json_object_get(doc, "metrics")), 0,
                 "a metric without points in the window is listed");
    json_decref(doc);

    /* The log keeps them (retention is an hour). */
    json_t *all = points(AT(LOG));
    cr_assert_eq(json_array_size(all), 3, "metrics.jsonl lost points that left the window");
    json_decref(all);

    /* A new point is summarised alone. */
    long long t0 = bus_now_ms();
    put("alice", "old.metric 9 ms\n");
    doc = summary();
    s = stats_of(doc, "old.metric");
    if (bus_now_ms() - t0 < 900) {
        cr_assert(s, "a new point is not summarised");
        cr_assert_eq(bus_int(s, "count"), 1, "old points came back into the window");
        cr_assert(num(s, "min") == 9 && num(s, "max") == 9 && num(s, "p50") == 9);
        cr_assert_null(stats_of(doc, "kept.metric"));
    }
    json_decref(doc);
}

/* ---- 6. retention --------------------------------------------------------- */

static void start_retention_1(void)
{
    bus_start(&bus, "--metrics-retention", "1", "--summary-window", "0.5", "--alert-interval",
              "0.2", NULL);
}

/* Reads a log from offset 0; true when it holds no line with `old`; every
 * line must be a whole point. */
static bool only_new(const char *path, const char *old, size_t *len)
{
    char *text = read_from(path, 0, len);
    bool clean = strstr(text, old) == NULL;
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        cr_assert(end, "%s ends in a partial line: [%s]", path, line);
        json_t *p = json_loadb(line, (size_t)(end - line), 0, NULL);
        cr_assert(json_is_object(p), "%s read from 0 has a partial line: [%.*s]", path,
                  (int)(end - line), line);
        assert_point_format(p);
        json_decref(p);
        line = end + 1;
    }
    free(text);
    return clean;
}

BUS_TEST_WITH(metrics, points_older_than_the_retention_are_dropped_and_sizes_only_grow,
              start_retention_1)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct text t = {0};
    for (int i = 0; i < 20; i++)
        text_add(&t, "old.point %d ms\n", i);
    put_n("alice", t.data, t.len);
    text_free(&t);
    put("bob", "old.point 100\nold.point 101\n");
    char log_path[PATH_MAX], alice_path[PATH_MAX], bob_path[PATH_MAX];
    snprintf(log_path, sizeof log_path, "%s", AT(LOG));
    snprintf(alice_path, sizeof alice_path, "%s", AT("agents/alice/metrics"));
    snprintf(bob_path, sizeof bob_path, "%s", AT("agents/bob/metrics"));
    const off_t log0 = size_of(log_path), alice0 = size_of(alice_path), bob0 = size_of(bob_path);
    cr_assert(log0 > 0 && alice0 > 0 && bob0 > 0);
    cr_assert_eq(log0, alice0 + bob0);
    json_t *doc = summary();
    cr_assert(num(doc, "window_s") == 0.5, "window_s %g, want 0.5", num(doc, "window_s"));
    json_decref(doc);

    /* Without any append the points expire (every --alert-interval); the
     * sizes stay: they count the bytes ever appended. */
    size_t log_len = 0, alice_len = 0, bob_len = 0;
    long long deadline = bus_now_ms() + 30000;
    for (;;) {
        bool gone = only_new(log_path, "old.point", &log_len) &&
                    only_new(alice_path, "old.point", &alice_len) &&
                    only_new(bob_path, "old.point", &bob_len);
        off_t l = size_of(log_path), a = size_of(alice_path), b = size_of(bob_path);
        cr_assert(l == log0 && a == alice0 && b == bob0,
                  "a size changed without an append: log %lld -> %lld, alice %lld -> %lld, "
                  "bob %lld -> %lld",
                  (long long)log0, (long long)l, (long long)alice0, (long long)a, (long long)bob0,
                  (long long)b);
        if (gone)
            break;
        cr_assert(bus_now_ms() < deadline, "points 30 s old are still in metrics.jsonl "
                                           "with --metrics-retention 1");
        bus_pause_ms(100);
    }
    cr_assert_eq(log_len + alice_len + bob_len, 0,
                 "only old points were written, yet a read "
                 "from 0 returns %zu + %zu + %zu bytes",
                 log_len, alice_len, bob_len);
    doc = summary();
    cr_assert_null(stats_of(doc, "old.point"), "dropped points are summarised");
    json_decref(doc);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat metrics/metrics.jsonl agents/alice/metrics | wc -c"), 0);
    cr_assert_str_eq(r.out, "0\n", "cat shows dropped points");
    bus_cmd_free(&r);

    /* New points: a read from 0 starts at them, which sit at the old end
     * (checked unless this machine stalled for most of the retention). */
    long long t0 = bus_now_ms();
    const char news[] = "new.point 1 ms\nnew.point 2 ms\n";
    put("alice", news);
    put("bob", "new.point 3\n");
    char *from0 = read_from(log_path, 0, &log_len);
    char *at_end = read_from(log_path, log0, NULL);
    char *alice_from0 = read_from(alice_path, 0, &alice_len);
    char *alice_at_end = read_from(alice_path, alice0, NULL);
    char *bob_from0 = read_from(bob_path, 0, &bob_len);
    if (bus_now_ms() - t0 < 800) {
        cr_assert_eq(count_lines(from0, log_len), 3, "metrics.jsonl from 0: [%s]", from0);
        cr_assert_str_eq(from0, at_end, "metrics.jsonl: a read from 0 is not the new points");
        cr_assert_eq(size_of(log_path), log0 + (off_t)log_len,
                     "metrics.jsonl: st_size is not the bytes ever appended");
        cr_assert_eq(count_lines(alice_from0, alice_len), 2, "[%s]", alice_from0);
        cr_assert_str_eq(alice_from0, alice_at_end);
        cr_assert_eq(size_of(alice_path), alice0 + (off_t)alice_len);
        cr_assert_eq(count_lines(bob_from0, bob_len), 1, "[%s]", bob_from0);
        cr_assert_eq(size_of(bob_path), bob0 + (off_t)bob_len);
        json_t *p = json_loads(alice_from0, JSON_DISABLE_EOF_CHECK, NULL);
        assert_point(p, "alice", "new.point", 1, "ms", "{}");
        json_decref(p);
        p = json_loads(bob_from0, JSON_DISABLE_EOF_CHECK, NULL);
        assert_point(p, "bob", "new.point", 3, "", "{}");
        json_decref(p);
    }
    free(from0);
    free(at_end);
    free(alice_from0);
    free(alice_at_end);
    free(bob_from0);

    /* And they expire in turn; the sizes never go down. */
    off_t l = size_of(log_path), a = size_of(alice_path), b = size_of(bob_path);
    deadline = bus_now_ms() + 30000;
    while (!only_new(log_path, "new.point", &log_len)) {
        cr_assert(bus_now_ms() < deadline, "new points 30 s old are still in metrics.jsonl");
        bus_pause_ms(100);
    }
    cr_assert(size_of(log_path) == l && size_of(alice_path) == a && size_of(bob_path) == b,
              "a size changed when points expired");
}

/* An agent's view and the log keep counting every byte ever appended across a
 * restart, also after retention dropped points (SPEC §2: logs grow). */
static void start_retention_2(void)
{
    bus_start(&bus, "--metrics-retention", "2", "--alert-interval", "0.2", NULL);
}

BUS_TEST_WITH(metrics, sizes_keep_growing_across_a_restart_after_retention, start_retention_2)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct text t = {0};
    for (int i = 0; i < 200; i++)
        text_add(&t, "old.point %d ms\n", i);
    put_n("alice", t.data, t.len);
    text_free(&t);
    put("bob", "old.point 100\nold.point 101\n");
    char log_path[PATH_MAX], alice_path[PATH_MAX], bob_path[PATH_MAX];
    snprintf(log_path, sizeof log_path, "%s", AT(LOG));
    snprintf(alice_path, sizeof alice_path, "%s", AT("agents/alice/metrics"));
    snprintf(bob_path, sizeof bob_path, "%s", AT("agents/bob/metrics"));
    long long deadline = bus_now_ms() + 30000;
    size_t len;
    for (int round = 0;; round++) {
        char line[64];
        snprintf(line, sizeof line, "new.point %d ms\n", round);
        put("alice", line);
        if (only_new(log_path, "old.point", &len))
            break;
        cr_assert(bus_now_ms() < deadline, "points 30 s old are still in metrics.jsonl "
                                           "with --metrics-retention 2");
        bus_pause_ms(200);
    }
    const off_t log0 = size_of(log_path), alice0 = size_of(alice_path), bob0 = size_of(bob_path);
    cr_assert(bob0 > 0 && alice0 > 0);

    bus_restart(&bus, "--metrics-retention", "2", "--alert-interval", "0.2", NULL);
    off_t log1 = size_of(log_path), alice1 = size_of(alice_path), bob1 = size_of(bob_path);
    cr_assert(log1 >= log0, "metrics.jsonl shrank across a restart: %lld -> %lld", (long long)log0,
              (long long)log1);
    cr_assert(alice1 >= alice0, "agents/alice/metrics shrank across a restart: %lld -> %lld",
              (long long)alice0, (long long)alice1);
    cr_assert(bob1 >= bob0, "agents/bob/metrics shrank across a restart: %lld -> %lld",
              (long long)bob0, (long long)bob1);

    /* What is appended next is read at the old end. */
    put("alice", "after.restart 1 ms\n");
    char *tail = read_from(alice_path, alice1, &len);
    cr_assert(strstr(tail, "\"after.restart\"") && count_lines(tail, len) == 1,
              "alice's metrics at its old end after a restart: [%s]", tail);
    free(tail);
}

/* ---- 7. tail -f ------------------------------------------------------------ */

BUS_TEST(metrics, tail_f_follows_the_log_and_sizes_grow_by_the_new_lines)
{
    bus_agents(&bus, "alice", "bob", NULL);
    put("alice", "first.point 1\n");
    put("bob", "first.point 2\n");
    struct bus_proc all, mine;
    bus_spawn(&bus, &all, "exec tail -n +1 -s 0.1 -f metrics/metrics.jsonl");
    bus_spawn(&bus, &mine, "exec tail -n +1 -s 0.1 -f agents/alice/metrics");

    struct text got = {0};
    text_add(&got, "%s", "");
    cr_assert_eq(read_lines(&all, 2, &got), 2, "tail -f metrics.jsonl printed [%s]", got.data);
    char *log = bus_read_ok(AT(LOG), NULL);
    cr_assert_str_eq(got.data, log, "tail printed other than cat");
    free(log);
    got.len = 0;
    cr_assert_eq(read_lines(&mine, 1, &got), 1, "tail -f alice's metrics printed [%s]", got.data);
    cr_assert(strstr(got.data, "\"agent\":\"alice\""), "[%s]", got.data);

    for (int round = 0; round < 5; round++) {
        off_t before = size_of(AT(LOG)), mine_before = size_of(AT("agents/alice/metrics"));
        /* bob's point first: alice's tail must skip it. */
        char text[256];
        snprintf(text, sizeof text, "bob.point %d\n", round);
        put("bob", text);
        int nlines = round % 2 ? 3 : 1;
        struct text t = {0};
        for (int i = 0; i < nlines; i++)
            text_add(&t, "follow.point %d ms round=%d\n", round * 10 + i, round);
        put_n("alice", t.data, t.len);
        text_free(&t);
        off_t after = size_of(AT(LOG)), mine_after = size_of(AT("agents/alice/metrics"));

        got.len = 0;
        got.data[0] = '\0';
        size_t n = read_lines(&all, (size_t)nlines + 1, &got);
        cr_assert_eq(n, (size_t)nlines + 1, "round %d: tail -f printed [%s]", round, got.data);
        cr_assert_eq((off_t)got.len, after - before,
                     "round %d: metrics.jsonl grew by %lld bytes, the new lines are %zu", round,
                     (long long)(after - before), got.len);
        char *appended = read_from(AT(LOG), before, NULL);
        cr_assert_str_eq(appended, got.data, "round %d: what tail printed is not the log", round);
        free(appended);

        got.len = 0;
        got.data[0] = '\0';
        n = read_lines(&mine, (size_t)nlines, &got);
        cr_assert_eq(n, (size_t)nlines, "round %d: tail -f alice printed [%s]", round, got.data);
        cr_assert_eq((off_t)got.len, mine_after - mine_before,
                     "round %d: alice's metrics grew by %lld bytes, the new lines are %zu", round,
                     (long long)(mine_after - mine_before), got.len);
        cr_assert_null(strstr(got.data, "bob"), "alice's tail printed bob's point: %s", got.data);
        for (int i = 0; i < nlines; i++) {
            char want[64];
            snprintf(want, sizeof want, "\"value\":%d,", round * 10 + i);
            cr_assert(strstr(got.data, want), "round %d: no %s in [%s]", round, want, got.data);
        }
    }
    text_free(&got);
    kill(all.pid, SIGTERM);
    kill(mine.pid, SIGTERM);
    bus_proc_wait(&all, BUS_WAIT_MS, NULL);
    bus_proc_wait(&mine, BUS_WAIT_MS, NULL);
}

/* ---- 8. modes and sizes --------------------------------------------------- */

BUS_TEST(metrics, modes_and_sizes_are_honest_and_the_generated_files_read_only)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    struct text t = {0};
    for (int i = 0; i < 300; i++)
        text_add(&t, "size.point %d ms i=%d\n", i * 7, i);
    put_n("alice", t.data, t.len);
    text_free(&t);
    put("bob", "{\"metric\":\"b.x\",\"value\":1e-7,\"tags\":{\"q\":\"with \\\"quotes\\\" \\\\\"}}");
    put("alice", "tail.point 3");

    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "ls metrics"), 0, "ls metrics: %s", r.err);
    cr_assert_str_eq(r.out, "busfs.prom\nmetrics.jsonl\nsummary.json\n");
    bus_cmd_free(&r);
    cr_assert_eq(bus_sh(&bus, &r, "ls -l metrics | grep -c '^-r--r--r-- '"), 0, "ls -l: %s", r.out);
    cr_assert_str_eq(r.out, "3\n", "ls -l metrics does not show three 0444 files");
    bus_cmd_free(&r);
    cr_assert_eq(bus_sh(&bus, &r, "ls -l agents/alice/metrics"), 0);
    cr_assert(strncmp(r.out, "-rw-r--r-- ", 11) == 0, "ls -l agents/alice/metrics: %s", r.out);
    bus_cmd_free(&r);
    const char *const generated[] = {LOG, SUMMARY, PROM};
    struct stat st;
    for (size_t i = 0; i < 3; i++) {
        cr_assert(stat(AT("%s", generated[i]), &st) == 0);
        cr_assert(S_ISREG(st.st_mode), "%s is not a regular file", generated[i]);
        cr_assert_eq(st.st_mode & 07777, 0444, "%s mode %o", generated[i], st.st_mode & 07777);
    }
    cr_assert(stat(AT("agents/alice/metrics"), &st) == 0);
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0644, "agents/alice/metrics mode %o", st.st_mode & 07777);

    /* The logs: stat says exactly what cat prints. */
    const char *const logs[] = {LOG, "agents/alice/metrics", "agents/bob/metrics",
                                "agents/carol/metrics"};
    off_t views = 0;
    for (size_t i = 0; i < 4; i++) {
        off_t size = size_of(AT("%s", logs[i]));
        cr_assert_eq(bus_sh(&bus, &r, "cat %s", logs[i]), 0);
        cr_assert_eq((size_t)size, r.out_len, "%s: stat says %lld bytes, cat printed %zu", logs[i],
                     (long long)size, r.out_len);
        bus_cmd_free(&r);
        /* Read 7 bytes at a time (wc -c alone would only ask stat). */
        cr_assert_eq(bus_sh(&bus, &r, "dd if=%s bs=7 status=none | wc -c", logs[i]), 0);
        cr_assert_eq(atoll(r.out), (long long)size, "%s: dd bs=7 | wc -c: %s", logs[i], r.out);
        bus_cmd_free(&r);
        if (i > 0)
            views += size;
    }
    cr_assert_eq(views, size_of(AT(LOG)), "the views do not add up to the log");
    cr_assert_eq(size_of(AT("agents/carol/metrics")), 0, "an agent without points");
    json_t *all = points(AT(LOG));
    cr_assert_eq(json_array_size(all), 302);
    assert_point(json_array_get(all, 300), "bob", "b.x", 1e-7, "",
                 "{\"q\":\"with \\\"quotes\\\" \\\\\"}");
    json_decref(all);

    /* The documents: a snapshot per open, the size stat gives is what cat
     * prints (the uptime in busfs.prom may gain a digit). */
    off_t size = size_of(AT(SUMMARY));
    cr_assert_eq(bus_sh(&bus, &r, "cat " SUMMARY), 0);
    cr_assert_eq((size_t)size, r.out_len, "summary.json: stat %lld, cat %zu", (long long)size,
                 r.out_len);
    bus_cmd_free(&r);
    size = size_of(AT(PROM));
    cr_assert_eq(bus_sh(&bus, &r, "cat " PROM), 0);
    long diff = (long)size - (long)r.out_len;
    cr_assert(size > 0 && diff >= -4 && diff <= 4, "busfs.prom: stat %lld, cat %zu",
              (long long)size, r.out_len);
    bus_cmd_free(&r);

    /* Read-only: every way of writing is refused and logged. */
    const int modes[] = {O_WRONLY, O_RDWR, O_WRONLY | O_APPEND, O_WRONLY | O_TRUNC};
    for (size_t i = 0; i < 3; i++) {
        for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
            size_t top = bus_jsonl_count(AT("errors"));
            errno = 0;
            int fd = open(AT("%s", generated[i]), modes[m] | O_CLOEXEC);
            int err = errno;
            if (fd >= 0)
                close(fd);
            cr_assert(fd < 0 && err == EACCES, "open(%s, %#o) gave %s, want EACCES", generated[i],
                      (unsigned)modes[m], fd >= 0 ? "success" : strerror(err));
            bus_assert_logged(AT("errors"), top, generated[i]);
        }
        errno = 0;
        cr_assert(truncate(AT("%s", generated[i]), 0) < 0 && errno == EACCES,
                  "truncate(%s) gave %s", generated[i], strerror(errno));
        cr_assert_neq(bus_sh(&bus, &r, "echo 'x 1' >> %s", generated[i]), 0, "echo >> %s succeeded",
                      generated[i]);
        cr_assert(strstr(r.err, strerror(EACCES)), "the shell said: %s", r.err);
        bus_cmd_free(&r);
    }
    cr_assert_eq(size_of(AT(LOG)), views, "a refused write changed metrics.jsonl");
}

/* ---- 9. busfs.prom ---------------------------------------------------------- */

static void start_prom(void)
{
    bus_start(&bus, "--inbox-capacity", "2", "--store-max-bytes", "64M", NULL);
}

/* Fails (CI=true) or skips when promtool is not installed. */
static void require_promtool(void)
{
    if (bus_sh(&bus, NULL, "command -v promtool >/dev/null") == 0)
        return;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0)
        cr_assert_fail("promtool is not installed (apt-get install prometheus) and CI=true");
    bus_stop(&bus);
    cr_skip_test("promtool is not installed (apt-get install prometheus)");
}

/* The user metric summary of one series: quantiles, _sum and _count. */
static void assert_user_series(const struct prom *pr, const char *name, const char *agent,
                               const char *unit, const double *values, size_t n)
{
    double *sorted = malloc(n * sizeof *sorted), sum = 0;
    memcpy(sorted, values, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, by_value);
    for (size_t i = 0; i < n; i++)
        sum += values[i];
    const char *qs[] = {"0.5", "0.95", "0.99"};
    for (size_t i = 0; i < 3; i++) {
        double v = prom_get(pr, "busfs_user_metric", "name", name, "agent", agent, "unit", unit,
                            "quantile", qs[i], NULL);
        double want = exact_quantile(sorted, n, strtod(qs[i], NULL));
        cr_assert(within_1pct(v, want), "%s/%s/%s quantile %s: %g, want %g", name, agent, unit,
                  qs[i], v, want);
    }
    double s =
        prom_get(pr, "busfs_user_metric_sum", "name", name, "agent", agent, "unit", unit, NULL);
    cr_assert(fabs(s - sum) <= 1e-9 * fabs(sum), "%s/%s/%s _sum %.17g, want %.17g", name, agent,
              unit, s, sum);
    double c =
        prom_get(pr, "busfs_user_metric_count", "name", name, "agent", agent, "unit", unit, NULL);
    cr_assert(c == (double)n, "%s/%s/%s _count %g, want %zu", name, agent, unit, c, n);
    free(sorted);
}

BUS_TEST_WITH(metrics, busfs_prom_passes_promtool_and_carries_bus_and_user_metrics, start_prom)
{
    require_promtool();
    bus_agents(&bus, "alice", "bob", "worker.1-a", NULL);

    /* Messages: three delivered, one refused for a full inbox, one for an
     * unknown recipient. */
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    enum bus_step step;
    int err = bus_write_ex(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, "three", 5,
                           &step);
    cr_assert_eq(err, EAGAIN, "a send to a full inbox: %s", strerror(err));
    bus_send("bob", "worker.1-a", "{\"task\":1}");
    cr_assert_eq(bus_write(AT("agents/alice/outbox/nobody"), "x"), ENOENT);
    cr_assert_neq(bus_sh(&bus, NULL, "echo 'x nan' >> agents/alice/metrics"), 0);

    /* Health: one of each reported status. */
    cr_assert_eq(bus_write(AT("agents/alice/health"), "healthy"), 0);
    cr_assert_eq(bus_write(AT("agents/bob/health"), "degraded slow"), 0);
    cr_assert_eq(bus_write(AT("agents/worker.1-a/health"), "unhealthy down"), 0);

    /* Metrics with and without units, one name with ':' and '-', an agent
     * with '.' and '-', one metric in two units. */
    put("alice", "coordination.time 150 ms\ncoordination.time 250 ms\ncoordination.time 50 ms\n");
    put("alice", "plain.count 3\nplain.count 4 phase=x\n");
    put("bob", "coordination.time 99 ms\n");
    put("worker.1-a", "ns:sub-metric 2.5 s\nns:sub-metric 3.5 s\n"
                      "{\"metric\":\"ns:sub-metric\",\"value\":1,\"unit\":\"s\"}\n");
    put("worker.1-a", "dual 1 ms\ndual 2 s\ndual 3 ms\n");
    const size_t npoints = 3 + 2 + 1 + 3 + 3;

    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "promtool check metrics < " PROM);
    cr_assert_eq(status, 0, "promtool check metrics: status %d\n%s%s", status, r.out, r.err);
    bus_cmd_free(&r);

    struct prom pr;
    prom_load(&pr);
    const char *const families[][2] = {
        {"busfs_messages_delivered_total", "counter"},
        {"busfs_messages_rejected_total", "counter"},
        {"busfs_messages_pending", "gauge"},
        {"busfs_inbox_depth", "gauge"},
        {"busfs_inbox_capacity", "gauge"},
        {"busfs_agents", "gauge"},
        {"busfs_metric_points_total", "counter"},
        {"busfs_store_bytes", "gauge"},
        {"busfs_store_max_bytes", "gauge"},
        {"busfs_uptime_seconds", "gauge"},
        {"busfs_user_metric", "summary"},
    };
    for (size_t i = 0; i < sizeof families / sizeof *families; i++) {
        const char *type = prom_type(&pr, families[i][0]);
        cr_assert(type, "busfs.prom has no # TYPE %s:\n%s", families[i][0], pr.text);
        cr_assert_str_eq(type, families[i][1], "the type of %s", families[i][0]);
    }

    cr_assert(prom_get(&pr, "busfs_messages_delivered_total", NULL) == 3);
    cr_assert(prom_get(&pr, "busfs_messages_rejected_total", "reason", "EAGAIN", NULL) >= 1,
              "the EAGAIN is not counted");
    cr_assert(prom_get(&pr, "busfs_messages_rejected_total", "reason", "ENOENT", NULL) >= 1,
              "the ENOENT is not counted");
    cr_assert(prom_get(&pr, "busfs_messages_pending", NULL) == 3);
    cr_assert(prom_get(&pr, "busfs_inbox_depth", "agent", "alice", NULL) == 0);
    cr_assert(prom_get(&pr, "busfs_inbox_depth", "agent", "bob", NULL) == 2);
    cr_assert(prom_get(&pr, "busfs_inbox_depth", "agent", "worker.1-a", NULL) == 1);
    cr_assert_eq(prom_count_named(&pr, "busfs_inbox_depth"), 3);
    cr_assert(prom_get(&pr, "busfs_inbox_capacity", NULL) == 2);
    cr_assert(prom_get(&pr, "busfs_agents", "status", "healthy", NULL) == 1);
    cr_assert(prom_get(&pr, "busfs_agents", "status", "degraded", NULL) == 1);
    cr_assert(prom_get(&pr, "busfs_agents", "status", "unhealthy", NULL) == 1);
    cr_assert(prom_get(&pr, "busfs_agents", "status", "stale", NULL) == 0);
    cr_assert(prom_get(&pr, "busfs_agents", "status", "unknown", NULL) == 0);
    cr_assert_eq(prom_count_named(&pr, "busfs_agents"), 5);
    cr_assert(prom_get(&pr, "busfs_metric_points_total", NULL) == (double)npoints,
              "busfs_metric_points_total %g, want %zu",
              prom_get(&pr, "busfs_metric_points_total", NULL), npoints);
    cr_assert(prom_get(&pr, "busfs_store_bytes", NULL) > 0);
    cr_assert(prom_get(&pr, "busfs_store_max_bytes", NULL) == 64.0 * 1024 * 1024);
    double up = prom_get(&pr, "busfs_uptime_seconds", NULL);
    cr_assert(up >= 0 && up < 600, "busfs_uptime_seconds %g", up);

    const double coord_alice[] = {150, 250, 50}, coord_bob[] = {99}, plain[] = {3, 4},
                 sub[] = {2.5, 3.5, 1}, dual_ms[] = {1, 3}, dual_s[] = {2};
    assert_user_series(&pr, "coordination.time", "alice", "ms", coord_alice, 3);
    assert_user_series(&pr, "coordination.time", "bob", "ms", coord_bob, 1);
    assert_user_series(&pr, "plain.count", "alice", "", plain, 2);
    assert_user_series(&pr, "ns:sub-metric", "worker.1-a", "s", sub, 3);
    assert_user_series(&pr, "dual", "worker.1-a", "ms", dual_ms, 2);
    assert_user_series(&pr, "dual", "worker.1-a", "s", dual_s, 1);
    cr_assert_eq(prom_count_named(&pr, "busfs_user_metric_count"), 6, "series: %s", pr.text);
    cr_assert_eq(prom_count_named(&pr, "busfs_user_metric"), 18);
    prom_free(&pr);

    /* _count and _sum are cumulative: a new point adds to them. */
    put("alice", "coordination.time 1000 ms\n");
    prom_load(&pr);
    cr_assert(prom_get(&pr, "busfs_user_metric_count", "name", "coordination.time", "agent",
                       "alice", "unit", "ms", NULL) == 4);
    cr_assert(prom_get(&pr, "busfs_user_metric_sum", "name", "coordination.time", "agent", "alice",
                       "unit", "ms", NULL) == 1450);
    prom_free(&pr);
    status = bus_sh(&bus, &r, "promtool check metrics < " PROM);
    cr_assert_eq(status, 0, "promtool check metrics: status %d\n%s%s", status, r.out, r.err);
    bus_cmd_free(&r);
}

/* ---- 10. restart and kill -9 ------------------------------------------------ */

struct kept {
    char *log, *alice, *bob, *user_prom;
    off_t log_size, alice_size, bob_size;
    json_t *summary;
};

static void varied_points(void)
{
    bus_agents(&bus, "alice", "bob", "w.1-x", NULL);
    rng_state = 42;
    double lat[400];
    for (int i = 0; i < 400; i++)
        lat[i] = floor(exp(2.0 + rng_unit() * 5.0) * 1000) / 1000;
    const char *const ab[] = {"alice", "bob", NULL};
    put_values(ab, "coordination.time", "ms", lat, 400, 50);
    put("alice", "tasks.done 1 count phase=build\ntasks.done 2 count phase=test\n");
    put("bob",
        "{\"metric\":\"memory.mb\",\"value\":512.5,\"unit\":\"mb\",\"tags\":{\"host\":\"a\"}}");
    put("w.1-x", "ns:odd-name -3.25\n");
}

static void keep(struct kept *k)
{
    k->log = bus_read_ok(AT(LOG), NULL);
    k->alice = bus_read_ok(AT("agents/alice/metrics"), NULL);
    k->bob = bus_read_ok(AT("agents/bob/metrics"), NULL);
    k->log_size = size_of(AT(LOG));
    k->alice_size = size_of(AT("agents/alice/metrics"));
    k->bob_size = size_of(AT("agents/bob/metrics"));
    k->user_prom = user_metric_lines();
    k->summary = summary();
}

static void assert_kept(const struct kept *before, const char *what)
{
    struct kept after;
    keep(&after);
    cr_assert_str_eq(after.log, before->log, "%s: metrics.jsonl changed", what);
    cr_assert_str_eq(after.alice, before->alice, "%s: alice's metrics changed", what);
    cr_assert_str_eq(after.bob, before->bob, "%s: bob's metrics changed", what);
    cr_assert_eq(after.log_size, before->log_size, "%s: size of metrics.jsonl", what);
    cr_assert_eq(after.alice_size, before->alice_size, "%s: size of alice's metrics", what);
    cr_assert_eq(after.bob_size, before->bob_size, "%s: size of bob's metrics", what);
    cr_assert_str_eq(after.user_prom, before->user_prom, "%s: busfs_user_metric changed", what);
    char *a = json_dumps(after.summary, JSON_COMPACT | JSON_SORT_KEYS);
    char *b = json_dumps(before->summary, JSON_COMPACT | JSON_SORT_KEYS);
    cr_assert_str_eq(a, b, "%s: summary.json changed", what);
    free(a);
    free(b);
    free(after.log);
    free(after.alice);
    free(after.bob);
    free(after.user_prom);
    json_decref(after.summary);
}

/* After a restart, points go on adding to what was kept. */
static void assert_goes_on(const struct kept *before)
{
    put("alice", "coordination.time 7 ms\n");
    json_t *all = points(AT(LOG));
    size_t n = json_array_size(all);
    assert_point(json_array_get(all, n - 1), "alice", "coordination.time", 7, "ms", "{}");
    json_decref(all);
    char *log = bus_read_ok(AT(LOG), NULL);
    cr_assert(strncmp(log, before->log, strlen(before->log)) == 0,
              "metrics.jsonl does not go on from the kept log");
    free(log);
    cr_assert(size_of(AT(LOG)) > before->log_size);
    json_t *doc = summary();
    json_int_t was = bus_int(stats_of(before->summary, "coordination.time"), "count");
    cr_assert_eq(bus_int(stats_of(doc, "coordination.time"), "count"), was + 1);
    json_decref(doc);
    struct prom pr;
    prom_load(&pr);
    size_t alice_points = 0;
    for (const char *p = before->alice; (p = strstr(p, "coordination.time")); p++)
        alice_points++;
    cr_assert(prom_get(&pr, "busfs_user_metric_count", "name", "coordination.time", "agent",
                       "alice", "unit", "ms", NULL) == (double)alice_points + 1,
              "_count does not go on from the kept points");
    prom_free(&pr);
}

static void kept_free(struct kept *k)
{
    free(k->log);
    free(k->alice);
    free(k->bob);
    free(k->user_prom);
    json_decref(k->summary);
}

BUS_TEST(metrics, restart_keeps_points_summaries_and_counts)
{
    varied_points();
    struct kept before;
    keep(&before);
    cr_assert_eq(json_object_size(json_object_get(before.summary, "metrics")), 4);
    bus_restart(&bus, NULL);
    assert_kept(&before, "after a restart");
    assert_goes_on(&before);
    kept_free(&before);
}

BUS_TEST(metrics, kill9_keeps_points_summaries_and_counts)
{
    varied_points();
    struct kept before;
    keep(&before);
    bus_kill9(&bus);
    bus_launch(&bus, NULL);
    assert_kept(&before, "after kill -9");
    assert_goes_on(&before);
    kept_free(&before);
    bus_terminate(&bus);
    char *argv[] = {(char *)bus_bin(), "--check", "--store", bus.store, NULL};
    struct bus_cmd r;
    int status = bus_exec(NULL, argv, BUS_WAIT_MS, &r);
    cr_assert_eq(status, 0, "busfs --check after kill -9 and a restart: %d: %s%s", status, r.out,
                 r.err);
    bus_cmd_free(&r);
}

/* ---- 11. ownership ---------------------------------------------------------- */

Test(metrics, a_non_owner_cannot_write_another_agents_metrics)
{
    cr_skip_test("needs -o allow_other and a second uid; covered with the allow_other tests");
}

/* ---- 12. concurrency -------------------------------------------------------- */

#define WRITERS 4
#define POINTS 500

/* Forks a process that appends POINTS points to agents/w<i>/metrics, one per
 * write(), values i*1000 + n. Exits 0 when every write succeeded. */
static pid_t fork_writer(int i)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", AT("agents/w%d/metrics", i));
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid != 0)
        return pid;
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        _exit(1);
    for (int n = 0; n < POINTS; n++) {
        char text[128];
        int len = snprintf(text, sizeof text, "conc.value %d ms w=%d\n", i * 1000 + n, i);
        if (write(fd, text, (size_t)len) != len)
            _exit(2);
    }
    _exit(close(fd) == 0 ? 0 : 3);
}

BUS_TEST(metrics, concurrent_writers_lose_nothing_and_summary_stays_whole)
{
    bus_agents(&bus, "w0", "w1", "w2", "w3", NULL); /* WRITERS of them */
    pid_t pids[WRITERS];
    for (int i = 0; i < WRITERS; i++)
        pids[i] = fork_writer(i);

    int status[WRITERS], running = WRITERS, reads = 0;
    json_int_t last_count = 0;
    for (int i = 0; i < WRITERS; i++)
        status[i] = -1;
    while (reads < 50 || running > 0) {
        cr_assert(reads < 1000000, "the writers never ended");
        reads++;
        json_t *doc = summary();
        json_t *s = stats_of(doc, "conc.value");
        if (s) {
            json_int_t c = bus_int(s, "count");
            cr_assert(c >= last_count && c <= WRITERS * POINTS, "count went from %lld to %lld",
                      (long long)last_count, (long long)c);
            last_count = c;
            double mn = num(s, "min"), mx = num(s, "max");
            cr_assert(mn >= 0 && mx <= (WRITERS - 1) * 1000 + POINTS - 1 && mn <= mx,
                      "min %g max %g", mn, mx);
            cr_assert(num(s, "p50") <= num(s, "p95") && num(s, "p95") <= num(s, "p99"),
                      "quantiles out of order");
        }
        json_decref(doc);
        for (int i = 0; i < WRITERS; i++) {
            int wstatus;
            if (status[i] < 0 && waitpid(pids[i], &wstatus, WNOHANG) == pids[i]) {
                status[i] = bus_status_code(wstatus);
                running--;
            }
        }
    }
    for (int i = 0; i < WRITERS; i++)
        cr_assert_eq(status[i], 0, "writer %d failed (status %d)", i, status[i]);

    double values[WRITERS * POINTS];
    for (int i = 0; i < WRITERS; i++)
        for (int n = 0; n < POINTS; n++)
            values[i * POINTS + n] = i * 1000 + n;
    json_t *doc = summary();
    assert_summary_of(doc, "conc.value", values, WRITERS * POINTS);
    cr_assert(num(stats_of(doc, "conc.value"), "avg") == 1749.5);
    json_decref(doc);

    json_t *all = points(AT(LOG));
    cr_assert_eq(json_array_size(all), WRITERS * POINTS, "metrics.jsonl holds %zu points",
                 json_array_size(all));
    int next[WRITERS] = {0};
    for (size_t k = 0; k < json_array_size(all); k++) {
        json_t *p = json_array_get(all, k);
        const char *agent = bus_str(p, "agent");
        cr_assert(agent[0] == 'w' && agent[1] >= '0' && agent[1] < '0' + WRITERS && !agent[2],
                  "agent %s", agent);
        int i = agent[1] - '0';
        char tags[16];
        snprintf(tags, sizeof tags, "{\"w\":\"%d\"}", i);
        assert_point(p, agent, "conc.value", i * 1000 + next[i], "ms", tags);
        next[i]++;
    }
    json_decref(all);
    char *log = bus_read_ok(AT(LOG), NULL);
    struct prom pr;
    prom_load(&pr);
    for (int i = 0; i < WRITERS; i++) {
        char name[16];
        snprintf(name, sizeof name, "w%d", i);
        char *want = lines_of(log, name);
        char *view = bus_read_ok(AT("agents/%s/metrics", name), NULL);
        cr_assert_str_eq(view, want, "agents/%s/metrics is not its lines of the log", name);
        cr_assert_eq(count_lines(view, strlen(view)), POINTS);
        free(want);
        free(view);
        cr_assert(prom_get(&pr, "busfs_user_metric_count", "name", "conc.value", "agent", name,
                           "unit", "ms", NULL) == POINTS);
    }
    prom_free(&pr);
    free(log);
}

/* Writers do not always write whole lines: `cat` of a large file writes 128 KiB at a
 * time, an unbuffered print() writes a line and then its newline. The lines a write
 * completes are stored at once; a last line without a newline at close. */
BUS_TEST(metrics, lines_split_across_writes_are_joined)
{
    bus_agents(&bus, "alice", NULL);
    char src[PATH_MAX + 16];
    snprintf(src, sizeof src, "%s/points.txt", bus.dir);
    FILE *f = fopen(src, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 20000; i++)
        fprintf(f, "split.point %d.25 ms phase=p%d\n", i, i % 7);
    cr_assert_eq(fclose(f), 0);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat %s > agents/alice/metrics", src), 0, "%s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_jsonl_count(AT("agents/alice/metrics")), 20000);

    int fd = open(AT("agents/alice/metrics"), O_WRONLY | O_APPEND);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "half.line 4", 11), 11);
    cr_assert_eq(write(fd, "2 ms\n", 5), 5);
    cr_assert_eq(write(fd, "no.newline 7", 12), 12);
    cr_assert_eq(close(fd), 0);
    json_t *all = bus_jsonl(AT("agents/alice/metrics"));
    size_t n = json_array_size(all);
    cr_assert_eq(n, 20002);
    cr_assert_str_eq(bus_str(json_array_get(all, n - 2), "metric"), "half.line");
    cr_assert(json_real_value(json_object_get(json_array_get(all, n - 2), "value")) == 42.0 ||
              json_integer_value(json_object_get(json_array_get(all, n - 2), "value")) == 42);
    cr_assert_str_eq(bus_str(json_array_get(all, n - 1), "metric"), "no.newline");
    json_decref(all);

    /* A bad last line is refused at close, with its reason. */
    size_t errs = bus_jsonl_count(AT("errors"));
    fd = open(AT("agents/alice/metrics"), O_WRONLY | O_APPEND);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "bad line here", 13), 13);
    errno = 0;
    cr_assert_eq(close(fd), -1, "close stored a bad line");
    cr_assert_eq(errno, EINVAL);
    bus_assert_logged(AT("errors"), errs, "a bad last line refused at close");
    cr_assert_eq(bus_jsonl_count(AT("agents/alice/metrics")), 20002);
}
