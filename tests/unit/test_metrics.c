/*
 * test_metrics.c — metrics and alerts through the public bus API (SPEC §5, §6):
 *
 *   writes      all-or-nothing metric writes, ownership (EACCES, root allowed), ENOENT
 *               for a removed agent id;
 *   log/views   metrics/metrics.jsonl and agents/A/metrics: offsets, sizes that only
 *               grow, reads at any offset (byte by byte, mid-line), empty views;
 *   retention   segments dropped by bus_tick or by an append once time moved; reads
 *               at 0 skip to the first kept byte; sizes never shrink;
 *   window      summary.json over --summary-window, Prometheus NaN quantiles with
 *               cumulative _sum/_count;
 *   summaries   exact count/min/max/avg, quantiles within 1%, agents merged in
 *               summary.json, units split in busfs.prom;
 *   rebuild     clean restart, kill -9 (fork), torn last line of the points log;
 *   busfs.prom  parsed: HELP and TYPE before samples, quoted labels, no duplicate series;
 *   alerts      rules replace/merge/clear/restore, pending then firing after for=,
 *               one firing and one resolved record, per agent, NaN never fires, rule
 *               or agent removal resolves, built-ins agent_stale and inbox_high,
 *               firing alerts and rules across a restart and a kill -9.
 *
 * The things a reader must know:
 * - Time is the fake clock of unit.h, moved with advance(). setup() starts it at the
 *   real time rather than at UNIT_T0_US, because the points log (seglog) takes the age
 *   of a segment found at open from the file's mtime, which is real time: starting the
 *   fake clock there keeps the two consistent across a restart. A test that restarts
 *   after moving the clock far sets the segments' mtimes itself (touch_points).
 * - A kill -9 is simulated as in test_bus.c: a child opens the bus, works, writes what
 *   it saw to files and _exit()s without closing; the parent then opens the store.
 *   Helpers check with CHECK(), which makes a child exit 1 (the parent's waitpid
 *   assertion then fails). The child's fake clock is its own: it saves it to a file,
 *   and the parent continues from there.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "busfs/buf.h"
#include "busfs/bus.h"
#include "busfs/clock.h"
#include "busfs/message.h"
#include "unit.h"

#define METRICS_TEST(name) \
    Test(metrics, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

#define OWNER 1000
#define OTHER 2000
#define SEC INT64_C(1000000)

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

/* ========== set-up, opening, time ========== */

static int64_t real_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * SEC + ts.tv_nsec / 1000;
}

static void setup(void)
{
    unit_setup();
    unit_path(store_dir, "store");
    unit_clock_set(real_now_us());
    cfg = (struct bus_config){
        .store_dir = store_dir,
        .store_max_bytes = UINT64_C(256) << 20,
    };
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
    CHECK(rc == 0, "bus_open: %d %s", rc, err.reason);
}

/* A clean restart: bus_close (which compacts) and bus_open on the same store. */
static void reopen(void)
{
    bus_close(the_bus);
    the_bus = NULL;
    start();
}

/* Moves the fake clock forward. */
static void advance(double seconds)
{
    unit_clock_set(unit_clock_get() + (int64_t)(seconds * 1e6));
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
        start();
        body();
        _exit(0); /* no bus_close: no compaction, no cleanup */
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the child failed (status %#x); see its stderr", status);
}

/* ========== files the child leaves for the parent ========== */

static void save_text(const char *file, const char *text)
{
    char path[PATH_MAX];
    int rc = unit_write_file(unit_path(path, file), text, strlen(text));
    CHECK(rc == 0, "write %s: %d", file, rc);
}

/* The file's text; the caller frees it. */
static char *load_text(const char *file)
{
    struct buf b;
    buf_init(&b);
    char path[PATH_MAX];
    int rc = unit_read_file(unit_path(path, file), &b);
    CHECK(rc == 0, "read %s: %d", file, rc);
    buf_append(&b, "", 0);
    return b.data;
}

static void save_clock(void)
{
    char t[32];
    snprintf(t, sizeof t, "%" PRId64, unit_clock_get());
    save_text("clock", t);
}

/* The parent continues the child's clock. */
static void load_clock(void)
{
    char *t = load_text("clock");
    unit_clock_set(strtoll(t, NULL, 10) + 1000);
    free(t);
}

/* ========== small text helpers ========== */

/* The buffer's text (never NULL); the buffer is handed over. */
static char *take(struct buf *b)
{
    buf_append(b, "", 0);
    CHECK(buf_ok(b), "out of memory");
    return b->data;
}

/* Fails with the first place where two texts differ. */
static void assert_same_text(const char *what, const char *want, const char *got)
{
    if (strcmp(want, got) == 0)
        return;
    size_t i = 0;
    while (want[i] && want[i] == got[i])
        i++;
    size_t from = i > 80 ? i - 80 : 0;
    CHECK(0, "%s differs at byte %zu (lengths %zu and %zu):\n  want ...%.160s\n  got  ...%.160s",
          what, i, strlen(want), strlen(got), want + from, got + from);
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* The lines of text that start with prefix, concatenated. The caller frees it. */
static char *lines_starting(const char *text, const char *prefix)
{
    struct buf b;
    buf_init(&b);
    size_t pl = strlen(prefix);
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) + 1 : strlen(p);
        if (strncmp(p, prefix, pl) == 0)
            buf_append(&b, p, n);
        p += n;
    }
    return take(&b);
}

static json_t *parse_json(const char *text, size_t len, const char *what)
{
    json_error_t e;
    json_t *j = json_loadb(text, len, 0, &e);
    CHECK(j != NULL, "%s is not JSON: %s: %.*s", what, e.text, (int)len, text);
    return j;
}

/* Every line of a JSONL text parsed, in an array; each must be a JSON object ending
 * with a newline. */
static json_t *parse_jsonl(const char *text, const char *what)
{
    json_t *arr = json_array();
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        CHECK(nl != NULL, "%s: the last line has no newline: %s", what, p);
        json_t *o = parse_json(p, (size_t)(nl - p), what);
        CHECK(json_is_object(o), "%s: a line is not an object", what);
        json_array_append_new(arr, o);
        p = nl + 1;
    }
    return arr;
}

static const char *jstr(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    CHECK(json_is_string(v), "\"%s\" is not a string", key);
    return json_string_value(v);
}

static double jnum(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    CHECK(json_is_number(v), "\"%s\" is not a number", key);
    return json_number_value(v);
}

/* RFC 3339 UTC with microseconds, as every busfs timestamp. */
static bool is_bus_time(const char *s)
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

/* ========== agents and metric writes ========== */

static uint64_t agent_as(const char *name, uid_t uid)
{
    struct bus_agent_info info;
    struct bus_error err = {0};
    int rc = bus_agent_create(the_bus, name, uid, uid, &info, &err);
    CHECK(rc == 0, "create %s: %d %s", name, rc, err.reason);
    return info.id;
}

static uint64_t agent(const char *name)
{
    return agent_as(name, OWNER);
}

static uint64_t id_of(const char *name)
{
    struct bus_agent_info info;
    int rc = bus_agent_by_name(the_bus, name, &info);
    CHECK(rc == 0, "no agent %s", name);
    return info.id;
}

static void remove_agent(const char *name, uid_t uid)
{
    struct bus_error err = {0};
    int rc = bus_agent_remove(the_bus, name, uid, &err);
    CHECK(rc == 0, "remove %s: %d %s", name, rc, err.reason);
}

/* One write() of text to agents/NAME/metrics by uid. */
static int put_as(const char *name, uid_t uid, const char *text, struct bus_error *err)
{
    return bus_metrics_write(the_bus, id_of(name), uid, text, strlen(text), err);
}

static void put(const char *name, const char *text)
{
    struct bus_error err = {0};
    int rc = put_as(name, OWNER, text, &err);
    CHECK(rc == 0, "metrics of %s <- %s: %d %s", name, text, rc, err.reason);
}

/* n values of one metric as one write of text lines ("NAME VALUE [UNIT]"). */
static void put_values(const char *name, const char *metric, const char *unit,
                       const double *v, size_t n)
{
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < n; i++)
        buf_printf(&b, "%s %.17g%s%s\n", metric, v[i], unit ? " " : "", unit ? unit : "");
    put(name, take(&b));
    buf_free(&b);
}

/* ========== reading the log and the views ========== */

/* Reads the log (id 0) or an agent's view from *off to its end, `chunk` bytes per
 * read, appending to out. Only the first read may move *off forward (to the first
 * kept byte); after it, the reads must be contiguous. */
static void read_view_from(uint64_t id, uint64_t *off, size_t chunk, struct buf *out)
{
    static char tmp[1 << 16];
    CHECK(chunk > 0 && chunk <= sizeof tmp, "chunk %zu", chunk);
    bool first = true;
    for (;;) {
        uint64_t want = *off;
        ssize_t r = bus_metrics_read(the_bus, id, off, tmp, chunk);
        CHECK(r >= 0, "read view %" PRIu64 " at %" PRIu64 ": %zd", id, want, r);
        if (r == 0)
            break;
        CHECK((size_t)r <= chunk, "read %zd bytes for %zu", r, chunk);
        CHECK(first || *off == want,
              "a read at %" PRIu64 " moved to %" PRIu64 " in the middle of a view", want, *off);
        CHECK(*off >= want, "a read moved back from %" PRIu64 " to %" PRIu64, want, *off);
        buf_append(out, tmp, (size_t)r);
        *off += (uint64_t)r;
        first = false;
    }
}

/* The whole view from offset 0; *start (when not NULL) gets the offset of its first
 * byte. The caller frees it. */
static char *view_text(uint64_t id, uint64_t *start)
{
    struct buf b;
    buf_init(&b);
    uint64_t off = 0, first = 0;
    static char one[1 << 16];
    ssize_t r = bus_metrics_read(the_bus, id, &off, one, sizeof one);
    CHECK(r >= 0, "read view %" PRIu64 ": %zd", id, r);
    first = off;
    if (r > 0) {
        buf_append(&b, one, (size_t)r);
        off += (uint64_t)r;
        read_view_from(id, &off, sizeof one, &b);
    }
    if (start)
        *start = first;
    return take(&b);
}

static char *log_text(void)
{
    return view_text(0, NULL);
}

/* The lines of the log written by agent, in order. The caller frees it. */
static char *log_lines_of(const char *log, const char *agent_name)
{
    char key[128];
    snprintf(key, sizeof key, ",\"agent\":\"%s\",", agent_name);
    struct buf b;
    buf_init(&b);
    for (const char *p = log; *p;) {
        const char *nl = strchr(p, '\n');
        CHECK(nl != NULL, "a log line without newline");
        size_t n = (size_t)(nl - p) + 1;
        char *line = strndup(p, n);
        if (strstr(line, key))
            buf_append(&b, p, n);
        free(line);
        p += n;
    }
    return take(&b);
}

/* ========== documents ========== */

static char *summary_text(void)
{
    struct buf b;
    buf_init(&b);
    bus_summary_render(the_bus, &b);
    return take(&b);
}

static json_t *summary_doc(void)
{
    char *t = summary_text();
    json_t *j = parse_json(t, strlen(t), "summary.json");
    CHECK(json_is_object(json_object_get(j, "metrics")), "summary.json has no metrics object");
    free(t);
    return j;
}

/* summary.json's entry for metric (borrowed from doc), or NULL. */
static json_t *summary_entry(json_t *doc, const char *metric)
{
    return json_object_get(json_object_get(doc, "metrics"), metric);
}

static char *prom_text(void)
{
    struct buf b;
    buf_init(&b);
    bus_prom_render(the_bus, &b);
    return take(&b);
}

/* The user-metric sample lines of busfs.prom. The caller frees it. */
static char *prom_user_lines(void)
{
    char *p = prom_text();
    char *u = lines_starting(p, "busfs_user_metric");
    free(p);
    return u;
}

/* The value of the sample whose name and labels are exactly `series` (as printed);
 * false when there is no such line. */
static bool prom_value(const char *text, const char *series, double *out)
{
    size_t sl = strlen(series);
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n > sl && strncmp(p, series, sl) == 0 && p[sl] == ' ') {
            char v[64];
            snprintf(v, sizeof v, "%.*s", (int)(n - sl - 1), p + sl + 1);
            char *end;
            *out = strtod(v, &end);
            CHECK(end != v && *end == '\0', "sample %s has value '%s'", series, v);
            return true;
        }
        p += n + (nl != NULL);
    }
    return false;
}

static double prom_must(const char *text, const char *series)
{
    double v = 0;
    CHECK(prom_value(text, series, &v), "no sample %s in:\n%s", series, text);
    return v;
}

static char *rules_text(void)
{
    struct buf b;
    buf_init(&b);
    bus_rules_render(the_bus, &b);
    return take(&b);
}

/* The part of alerts/rules after "# yours:\n": the user's rules. */
static char *user_rules(void)
{
    char *all = rules_text();
    const char *mark = strstr(all, "# yours:\n");
    CHECK(mark != NULL, "alerts/rules has no '# yours:' line:\n%s", all);
    char *u = strdup(mark + strlen("# yours:\n"));
    free(all);
    return u;
}

static int set_rules(const char *text, bool replace)
{
    struct bus_error err = {0};
    return bus_rules_write(the_bus, text, strlen(text), replace, &err);
}

static void set_rules_ok(const char *text, bool replace)
{
    struct bus_error err = {0};
    int rc = bus_rules_write(the_bus, text, strlen(text), replace, &err);
    CHECK(rc == 0, "rules %s: %d %s", text, rc, err.reason);
}

/* active.json, parsed and checked for its shape; the caller decrefs. */
static json_t *active_doc(void)
{
    struct buf b;
    buf_init(&b);
    bus_active_render(the_bus, &b);
    json_t *j = parse_json(b.data, b.len, "active.json");
    buf_free(&b);
    CHECK(json_is_object(j) && json_object_size(j) == 2, "active.json has 2 fields");
    CHECK(is_bus_time(jstr(j, "timestamp")), "active.json timestamp");
    json_t *arr = json_object_get(j, "alerts");
    CHECK(json_is_array(arr), "active.json alerts is not an array");
    size_t i;
    json_t *a;
    json_array_foreach(arr, i, a) {
        CHECK(json_object_size(a) == 6, "an active alert has 6 fields");
        jstr(a, "alert");
        jstr(a, "agent");
        jstr(a, "severity");
        CHECK(is_bus_time(jstr(a, "since")), "since");
        jnum(a, "threshold");
        CHECK(json_is_number(json_object_get(a, "value")) ||
                  json_is_null(json_object_get(a, "value")), "value");
    }
    return j;
}

/* The active alerts, serialised without the document's timestamp. The caller frees. */
static char *active_alerts_text(void)
{
    json_t *j = active_doc();
    char *s = json_dumps(json_object_get(j, "alerts"), JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(j);
    return s;
}

/* The active alert of rule for agent (borrowed from doc), or NULL. */
static json_t *active_find(json_t *doc, const char *rule, const char *agent_name)
{
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(doc, "alerts"), i, a) {
        if (strcmp(jstr(a, "alert"), rule) == 0 && strcmp(jstr(a, "agent"), agent_name) == 0)
            return a;
    }
    return NULL;
}

static size_t active_count(void)
{
    json_t *j = active_doc();
    size_t n = json_array_size(json_object_get(j, "alerts"));
    json_decref(j);
    return n;
}

/* alerts/alerts.jsonl from offset 0. The caller frees it. */
static char *alerts_log_text(void)
{
    struct buf b;
    buf_init(&b);
    char tmp[4096];
    uint64_t off = 0;
    for (;;) {
        ssize_t r = bus_alerts_read(the_bus, &off, tmp, sizeof tmp);
        CHECK(r >= 0, "alerts read: %zd", r);
        if (r == 0)
            break;
        buf_append(&b, tmp, (size_t)r);
        off += (uint64_t)r;
    }
    char *t = take(&b);
    CHECK(strlen(t) == bus_alerts_size(the_bus), "alerts.jsonl: %zu bytes read, size %" PRIu64,
          strlen(t), bus_alerts_size(the_bus));
    return t;
}

/* The records of alerts.jsonl, each checked for its shape; the caller decrefs. */
static json_t *alert_records(void)
{
    char *t = alerts_log_text();
    json_t *arr = parse_jsonl(t, "alerts.jsonl");
    free(t);
    size_t i;
    json_t *r;
    json_array_foreach(arr, i, r) {
        CHECK(is_bus_time(jstr(r, "timestamp")), "record timestamp");
        jstr(r, "alert");
        const char *st = jstr(r, "state");
        CHECK(strcmp(st, "firing") == 0 || strcmp(st, "resolved") == 0, "state %s", st);
        jstr(r, "message");
        jstr(r, "severity");
        CHECK(json_is_object(json_object_get(r, "metadata")), "metadata");
    }
    return arr;
}

/* How many records of alerts.jsonl have this alert, agent and state. */
static size_t records_of(json_t *recs, const char *rule, const char *agent_name,
                         const char *state)
{
    size_t n = 0, i;
    json_t *r;
    json_array_foreach(recs, i, r) {
        json_t *md = json_object_get(r, "metadata");
        if (strcmp(jstr(r, "alert"), rule) == 0 && strcmp(jstr(r, "state"), state) == 0 &&
            strcmp(jstr(md, "agent"), agent_name) == 0)
            n++;
    }
    return n;
}

static size_t record_count(void)
{
    json_t *r = alert_records();
    size_t n = json_array_size(r);
    json_decref(r);
    return n;
}

/* ========== statistics ========== */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* x[floor(q * (n - 1))] of the sorted values. */
static double exact_quantile(const double *v, size_t n, double q)
{
    double *s = malloc(n * sizeof *s);
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double x = s[(size_t)floor(q * (double)(n - 1))];
    free(s);
    return x;
}

/* Checks one summary.json entry against the values it summarises. */
static void assert_summary_of(json_t *entry, const char *what, const double *v, size_t n)
{
    cr_assert_not_null(entry, "%s: not in summary.json", what);
    cr_assert_eq(json_object_size(entry), 7, "%s: count/min/max/avg/p50/p95/p99", what);
    double min = v[0], max = v[0], sum = 0;
    for (size_t i = 0; i < n; i++) {
        min = v[i] < min ? v[i] : min;
        max = v[i] > max ? v[i] : max;
        sum += v[i];
    }
    cr_assert(json_is_integer(json_object_get(entry, "count")), "%s: count is an integer", what);
    cr_assert_eq(jnum(entry, "count"), (double)n, "%s: count %g, want %zu", what,
                 jnum(entry, "count"), n);
    cr_assert_eq(jnum(entry, "min"), min, "%s: min %.17g, want %.17g", what, jnum(entry, "min"),
                 min);
    cr_assert_eq(jnum(entry, "max"), max, "%s: max %.17g, want %.17g", what, jnum(entry, "max"),
                 max);
    double avg = sum / (double)n;
    cr_assert(fabs(jnum(entry, "avg") - avg) <= 1e-12 * fabs(avg) + 1e-12,
              "%s: avg %.17g, want %.17g", what, jnum(entry, "avg"), avg);
    static const struct { const char *key; double q; } qs[] = {
        {"p50", 0.50}, {"p95", 0.95}, {"p99", 0.99},
    };
    for (size_t k = 0; k < 3; k++) {
        double want = exact_quantile(v, n, qs[k].q), got = jnum(entry, qs[k].key);
        cr_assert(fabs(got - want) <= 0.01 * fabs(want),
                  "%s: %s %.17g, exact %.17g (more than 1%% off)", what, qs[k].key, got, want);
    }
}

/* ========== busfs.prom, parsed ========== */

#define PROM_MAX_FAMILIES 64

struct prom_family {
    char name[128];
    char type[16];
    bool help, closed;
    unsigned samples;
};

static struct prom_family *prom_family_get(struct prom_family *f, size_t *n, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(f[i].name, name) == 0)
            return &f[i];
    cr_assert_lt(*n, PROM_MAX_FAMILIES, "too many families");
    struct prom_family *x = &f[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    return x;
}

static bool prom_name_char(char c, bool first, bool colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
           (!first && c >= '0' && c <= '9');
}

static size_t prom_name_len(const char *p, bool colon)
{
    size_t i = 0;
    while (prom_name_char(p[i], i == 0, colon))
        i++;
    return i;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Checks busfs.prom as the text format 0.0.4 and promtool require it: every sample's
 * family has one HELP and one TYPE before its first sample; a family's samples are
 * contiguous; names and label names are valid; label values are quoted with only
 * \\, \" and \n escapes; no label twice in a sample; no series twice; values are
 * numbers, NaN or ±Inf; summaries have a numeric quantile label (except _sum and
 * _count). Returns the number of samples. */
static unsigned check_prom(const char *text)
{
    struct prom_family fam[PROM_MAX_FAMILIES];
    size_t nfam = 0;
    struct prom_family *current = NULL;
    char **series = NULL;
    size_t nseries = 0;
    unsigned lineno = 0;
    cr_assert(*text && text[strlen(text) - 1] == '\n', "busfs.prom ends with a newline");
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = (size_t)(nl - p);
        char *line = strndup(p, len);
        p = nl + 1;
        lineno++;
        cr_assert(len > 0, "line %u is empty", lineno);
        if (line[0] == '#') {
            char kw[8], name[128], rest[512] = "";
            int k = sscanf(line, "# %7s %127s %511[^\n]", kw, name, rest);
            if (k >= 2 && (strcmp(kw, "HELP") == 0 || strcmp(kw, "TYPE") == 0)) {
                cr_assert_eq(prom_name_len(name, true), strlen(name), "line %u: name %s",
                             lineno, name);
                struct prom_family *f = prom_family_get(fam, &nfam, name);
                cr_assert(!f->samples, "line %u: %s %s after its samples", lineno, kw, name);
                if (kw[0] == 'H') {
                    cr_assert(!f->help, "line %u: a second HELP for %s", lineno, name);
                    f->help = true;
                } else {
                    cr_assert(!f->type[0], "line %u: a second TYPE for %s", lineno, name);
                    cr_assert(strcmp(rest, "counter") == 0 || strcmp(rest, "gauge") == 0 ||
                                  strcmp(rest, "summary") == 0 ||
                                  strcmp(rest, "histogram") == 0 ||
                                  strcmp(rest, "untyped") == 0,
                              "line %u: TYPE %s", lineno, rest);
                    snprintf(f->type, sizeof f->type, "%s", rest);
                }
            }
            free(line);
            continue;
        }
        /* A sample: NAME[{LABELS}] VALUE */
        size_t nlen = prom_name_len(line, true);
        cr_assert_gt(nlen, 0, "line %u: no metric name: %s", lineno, line);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)nlen, line);
        char family_name[128];
        snprintf(family_name, sizeof family_name, "%s", name);
        struct prom_family *f = NULL;
        for (size_t i = 0; i < nfam && !f; i++)
            if (strcmp(fam[i].name, name) == 0)
                f = &fam[i];
        bool suffix_sample = false;
        if (!f) {
            static const char *const suffixes[] = {"_sum", "_count", "_bucket"};
            for (size_t s = 0; s < 3 && !f; s++) {
                size_t sl = strlen(suffixes[s]);
                if (nlen > sl && strcmp(name + nlen - sl, suffixes[s]) == 0) {
                    snprintf(family_name, sizeof family_name, "%.*s", (int)(nlen - sl), name);
                    for (size_t i = 0; i < nfam && !f; i++)
                        if (strcmp(fam[i].name, family_name) == 0 &&
                            (strcmp(fam[i].type, "summary") == 0 ||
                             strcmp(fam[i].type, "histogram") == 0))
                            f = &fam[i];
                    suffix_sample = f != NULL;
                }
            }
        }
        cr_assert_not_null(f, "line %u: sample %s has no HELP/TYPE before it", lineno, name);
        cr_assert(f->help && f->type[0], "line %u: family %s lacks HELP or TYPE", lineno,
                  f->name);
        cr_assert(!f->closed, "line %u: family %s is not contiguous", lineno, f->name);
        if (current && current != f)
            current->closed = true;
        current = f;
        f->samples++;

        /* labels */
        const char *q = line + nlen;
        char *labels[16];
        size_t nlabels = 0;
        bool has_quantile = false;
        if (*q == '{') {
            q++;
            while (*q != '}') {
                size_t ll = prom_name_len(q, false);
                cr_assert_gt(ll, 0, "line %u: bad label name at '%s'", lineno, q);
                char lname[64];
                snprintf(lname, sizeof lname, "%.*s", (int)ll, q);
                q += ll;
                cr_assert_eq(*q, '=', "line %u: label %s has no '='", lineno, lname);
                q++;
                cr_assert_eq(*q, '"', "line %u: label %s is not quoted", lineno, lname);
                q++;
                struct buf val;
                buf_init(&val);
                while (*q && *q != '"') {
                    if (*q == '\\') {
                        q++;
                        cr_assert(*q == '\\' || *q == '"' || *q == 'n',
                                  "line %u: bad escape in label %s", lineno, lname);
                    }
                    buf_putc(&val, *q);
                    q++;
                }
                cr_assert_eq(*q, '"', "line %u: label %s is not closed", lineno, lname);
                q++;
                char *v = take(&val);
                if (strcmp(lname, "quantile") == 0) {
                    char *end;
                    double qv = strtod(v, &end);
                    cr_assert(end != v && *end == '\0' && qv >= 0 && qv <= 1,
                              "line %u: quantile \"%s\"", lineno, v);
                    has_quantile = true;
                }
                for (size_t i = 0; i < nlabels; i++)
                    cr_assert(strncmp(labels[i], lname, strlen(lname)) != 0 ||
                                  labels[i][strlen(lname)] != '=',
                              "line %u: label %s given twice", lineno, lname);
                cr_assert_lt(nlabels, 16, "line %u: too many labels", lineno);
                labels[nlabels] = malloc(strlen(lname) + strlen(v) + 2);
                sprintf(labels[nlabels++], "%s=%s", lname, v);
                free(v);
                if (*q == ',')
                    q++;
                else
                    cr_assert_eq(*q, '}', "line %u: labels end badly at '%s'", lineno, q);
            }
            q++;
        }
        if (strcmp(f->type, "summary") == 0)
            cr_assert(suffix_sample ? !has_quantile : has_quantile,
                      "line %u: a summary needs a quantile label on exactly its quantile "
                      "samples", lineno);
        cr_assert_eq(*q, ' ', "line %u: no space before the value", lineno);
        q++;
        char *end;
        if (strcmp(q, "NaN") != 0 && strcmp(q, "+Inf") != 0 && strcmp(q, "-Inf") != 0) {
            strtod(q, &end);
            cr_assert(end != q && *end == '\0', "line %u: value '%s'", lineno, q);
        }

        /* the series, canonical: name and sorted labels */
        qsort(labels, nlabels, sizeof *labels, cmp_str);
        struct buf key;
        buf_init(&key);
        buf_puts(&key, name);
        for (size_t i = 0; i < nlabels; i++) {
            buf_printf(&key, "\x01%s", labels[i]);
            free(labels[i]);
        }
        char *k = take(&key);
        for (size_t i = 0; i < nseries; i++)
            cr_assert(strcmp(series[i], k) != 0, "line %u: series given twice: %s", lineno,
                      line);
        series = realloc(series, (nseries + 1) * sizeof *series);
        series[nseries++] = k;
        free(line);
    }
    for (size_t i = 0; i < nseries; i++)
        free(series[i]);
    free(series);
    return (unsigned)nseries;
}

/* ========== writes ========== */

METRICS_TEST(a_write_with_one_bad_line_stores_nothing)
{
    start();
    uint64_t alice = agent("alice");
    put("alice", "good 1 ms\n");
    uint64_t size = bus_metrics_size(the_bus, 0), view = bus_metrics_size(the_bus, alice);
    char *log = log_text(), *sum = summary_text(), *prom = prom_user_lines();
    cr_assert_gt(size, 0);
    cr_assert_eq(view, size);

    static const char *const bad[] = {
        "good 2\nbad-line\n",                          /* no value */
        "good 2\ngood nan\n",                          /* not a finite number */
        "good 2\ngood 1e999\n",                        /* out of range */
        "good 2\n1good 3\n",                           /* bad name */
        "good 2\ngood 3 ms s\n",                       /* two units */
        "good 2\n{\"metric\":\"good\",\"value\":\"3\"}", /* value is a string */
        "good 2\n{\"metric\":\"good\"}\n",             /* no value */
        "{\"metric\":\"good\",\"value\":3,\"x\":1}\n",   /* unknown field */
        "",                                            /* no point at all */
        "\n\n   \n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct bus_error err = {0};
        int rc = put_as("alice", OWNER, bad[i], &err);
        cr_assert_eq(rc, -EINVAL, "write %zu (%s) gave %d, want -EINVAL", i, bad[i], rc);
        cr_assert_eq(err.code, EINVAL);
        cr_assert_gt(strlen(err.reason), 0, "a refusal has a reason");
        cr_assert_eq(bus_metrics_size(the_bus, 0), size, "write %zu stored something", i);
        cr_assert_eq(bus_metrics_size(the_bus, alice), view, "write %zu grew the view", i);
    }
    char *log2 = log_text(), *sum2 = summary_text(), *prom2 = prom_user_lines();
    assert_same_text("metrics.jsonl", log, log2);
    assert_same_text("summary.json", sum, sum2);
    assert_same_text("busfs.prom user metrics", prom, prom2);

    /* Many lines, CRLF, blank lines and a last line without newline: all stored. */
    put("alice", "good 2\r\n\n  good 3 ms  \ngood 4");
    cr_assert_gt(bus_metrics_size(the_bus, 0), size);
    char *log3 = log_text();
    cr_assert_eq(count_lines(log3), 4);
    json_t *s = summary_doc();
    cr_assert_eq(jnum(summary_entry(s, "good"), "count"), 4);
    cr_assert_eq(jnum(summary_entry(s, "good"), "max"), 4);
    json_decref(s);
    free(log);
    free(log2);
    free(log3);
    free(sum);
    free(sum2);
    free(prom);
    free(prom2);
}

METRICS_TEST(only_the_owner_or_root_may_write_an_agents_metrics)
{
    start();
    uint64_t alice = agent("alice");
    struct bus_error err = {0};
    cr_assert_eq(put_as("alice", OTHER, "x 1", &err), -EACCES);
    cr_assert_eq(err.code, EACCES);
    cr_assert(strstr(err.reason, "uid"), "the reason names the uid: %s", err.reason);
    cr_assert_eq(bus_metrics_size(the_bus, 0), 0, "a refused write stores nothing");
    cr_assert_eq(bus_metrics_size(the_bus, alice), 0);

    cr_assert_eq(put_as("alice", 0, "x 1", &err), 0, "root may: %s", err.reason);
    cr_assert_eq(put_as("alice", OWNER, "x 2", &err), 0, "the owner may: %s", err.reason);
    char *log = log_text();
    json_t *lines = parse_jsonl(log, "metrics.jsonl");
    cr_assert_eq(json_array_size(lines), 2);
    cr_assert_str_eq(jstr(json_array_get(lines, 0), "agent"), "alice",
                     "root's point is alice's, not root's");
    json_decref(lines);
    free(log);

    /* Reading is anyone's: the read API takes no uid. */
    char *v = view_text(alice, NULL);
    cr_assert_eq(count_lines(v), 2);
    free(v);
}

METRICS_TEST(a_removed_agent_id_gives_enoent)
{
    start();
    uint64_t old = agent("alice");
    put("alice", "x 1");
    uint64_t size = bus_metrics_size(the_bus, 0);
    remove_agent("alice", OWNER);

    struct bus_error err = {0};
    cr_assert_eq(bus_metrics_write(the_bus, old, OWNER, "x 2", 3, &err), -ENOENT);
    cr_assert_eq(err.code, ENOENT);
    char tmp[64];
    uint64_t off = 0;
    cr_assert_eq(bus_metrics_read(the_bus, old, &off, tmp, sizeof tmp), -ENOENT);
    cr_assert_eq(bus_metrics_size(the_bus, old), 0);
    cr_assert_eq(bus_metrics_size(the_bus, 0), size, "the log keeps the removed agent's points");
    char *log = log_text();
    cr_assert_eq(count_lines(log), 1);
    free(log);

    /* A new alice has a new id; the old id stays dead. */
    uint64_t fresh = agent("alice");
    cr_assert_neq(fresh, old);
    cr_assert_eq(bus_metrics_write(the_bus, old, OWNER, "x 2", 3, &err), -ENOENT);
    cr_assert_eq(bus_metrics_write(the_bus, fresh, OWNER, "x 2", 3, &err), 0, "%s", err.reason);
    cr_assert_eq(bus_metrics_write(the_bus, 9999, OWNER, "x 2", 3, &err), -ENOENT,
                 "an id never used");
}

/* ========== the log and the views ========== */

/* Interleaved writes of three agents; the expected log grows with each. */
static const char *const writes[][2] = {
    {"alice", "coordination.time 150 ms"},
    {"bob", "tasks.done 1 count phase=build\ntasks.done 2 count phase=test"},
    {"alice", "{\"metric\":\"memory.mb\",\"value\":512.5,\"unit\":\"mb\",\"tags\":{\"host\":\"a\"}}"},
    {"carol", "x 0.1"},
    {"alice", "coordination.time 250 ms\ncoordination.time 1e-07 ms\n"},
    {"bob", "neg -42 s"},
};

METRICS_TEST(the_log_holds_every_line_in_order_and_its_size_only_grows)
{
    start();
    agent("alice");
    agent("bob");
    agent("carol");
    uint64_t size = bus_metrics_size(the_bus, 0);
    cr_assert_eq(size, 0);
    char *empty = log_text();
    cr_assert_str_eq(empty, "");
    free(empty);
    size_t want_lines = 0;
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        char *before = log_text();
        put(writes[i][0], writes[i][1]);
        advance(0.25);
        uint64_t now = bus_metrics_size(the_bus, 0);
        cr_assert_gt(now, size, "write %zu: the size grows", i);
        char *after = log_text();
        cr_assert_eq(strlen(after), now, "the size is the bytes the log holds (none expired)");
        cr_assert(strncmp(after, before, strlen(before)) == 0, "write %zu: the log only appends",
                  i);
        /* The new lines are at the old end, and a read there gives exactly them. */
        uint64_t off = size;
        struct buf tail;
        buf_init(&tail);
        read_view_from(0, &off, 4096, &tail);
        char *t = take(&tail);
        cr_assert_str_eq(t, after + size);
        free(t);
        want_lines += count_lines(writes[i][1]) + (writes[i][1][strlen(writes[i][1]) - 1] != '\n');
        cr_assert_eq(count_lines(after), want_lines);
        size = now;
        free(before);
        free(after);
    }

    /* Each line: the six fields, in order, with the defaults of §5. */
    char *log = log_text();
    json_t *lines = parse_jsonl(log, "metrics.jsonl");
    static const struct { const char *agent, *metric, *unit, *tags; double value; } want[] = {
        {"alice", "coordination.time", "ms", "{}", 150},
        {"bob", "tasks.done", "count", "{\"phase\": \"build\"}", 1},
        {"bob", "tasks.done", "count", "{\"phase\": \"test\"}", 2},
        {"alice", "memory.mb", "mb", "{\"host\": \"a\"}", 512.5},
        {"carol", "x", "", "{}", 0.1},
        {"alice", "coordination.time", "ms", "{}", 250},
        {"alice", "coordination.time", "ms", "{}", 1e-07},
        {"bob", "neg", "s", "{}", -42},
    };
    cr_assert_eq(json_array_size(lines), sizeof want / sizeof want[0]);
    const char *prev = "";
    for (size_t i = 0; i < json_array_size(lines); i++) {
        json_t *o = json_array_get(lines, i);
        cr_assert_eq(json_object_size(o), 6, "line %zu has 6 fields", i);
        const char *ts = jstr(o, "timestamp");
        cr_assert(is_bus_time(ts), "line %zu: timestamp %s", i, ts);
        cr_assert_geq(strcmp(ts, prev), 0, "line %zu: timestamps in order", i);
        prev = ts;
        cr_assert_str_eq(jstr(o, "agent"), want[i].agent, "line %zu", i);
        cr_assert_str_eq(jstr(o, "metric"), want[i].metric, "line %zu", i);
        cr_assert_eq(jnum(o, "value"), want[i].value, "line %zu: value %.17g", i,
                     jnum(o, "value"));
        cr_assert_str_eq(jstr(o, "unit"), want[i].unit, "line %zu", i);
        char *tags = json_dumps(json_object_get(o, "tags"), JSON_SORT_KEYS);
        cr_assert_str_eq(tags, want[i].tags, "line %zu", i);
        free(tags);
    }
    /* Field order as §5 lists it. */
    const char *first = log;
    cr_assert(strncmp(first, "{\"timestamp\":\"", 14) == 0, "%.60s", first);
    const char *a = strstr(first, "\"agent\""), *m = strstr(first, "\"metric\""),
               *v = strstr(first, "\"value\""), *u = strstr(first, "\"unit\""),
               *t = strstr(first, "\"tags\"");
    cr_assert(a < m && m < v && v < u && u < t, "field order: %.*s", (int)(strchr(log, '\n') - log),
              log);
    json_decref(lines);
    free(log);
}

METRICS_TEST(an_agents_view_holds_exactly_its_lines)
{
    start();
    uint64_t ids[3] = {agent("alice"), agent("bob"), agent("carol")};
    uint64_t dave = agent("dave");
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++)
            put(writes[i][0], writes[i][1]);
    char *log = log_text();
    static const char *const names[] = {"alice", "bob", "carol"};
    uint64_t total = 0;
    for (int k = 0; k < 3; k++) {
        char *want = log_lines_of(log, names[k]);
        uint64_t start_off = 99;
        char *got = view_text(ids[k], &start_off);
        cr_assert_eq(start_off, 0, "%s: nothing expired, the view starts at 0", names[k]);
        assert_same_text(names[k], want, got);
        cr_assert_eq(bus_metrics_size(the_bus, ids[k]), strlen(want), "%s: size", names[k]);
        total += strlen(want);
        free(want);
        free(got);
    }
    cr_assert_eq(total, bus_metrics_size(the_bus, 0), "the views partition the log");

    /* dave has no points: an empty view. */
    cr_assert_eq(bus_metrics_size(the_bus, dave), 0);
    char tmp[16];
    uint64_t off = 0;
    cr_assert_eq(bus_metrics_read(the_bus, dave, &off, tmp, sizeof tmp), 0);
    off = 12345;
    cr_assert_eq(bus_metrics_read(the_bus, dave, &off, tmp, sizeof tmp), 0);
    free(log);
}

METRICS_TEST(the_log_and_a_view_read_correctly_at_any_offset)
{
    start();
    uint64_t alice = agent("alice");
    agent("bob");
    agent("carol");
    for (int round = 0; round < 2; round++)
        for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++)
            put(writes[i][0], writes[i][1]);
    char *log = log_text();
    char *mine = view_text(alice, NULL);
    const struct { uint64_t id; const char *text; const char *what; } views[] = {
        {0, log, "the log"},
        {alice, mine, "alice's view"},
    };
    for (size_t v = 0; v < 2; v++) {
        const char *text = views[v].text;
        size_t len = strlen(text);
        cr_assert_eq(bus_metrics_size(the_bus, views[v].id), len);
        /* Byte by byte from 0 reassembles the text. */
        struct buf b;
        buf_init(&b);
        uint64_t off = 0;
        read_view_from(views[v].id, &off, 1, &b);
        char *bytes = take(&b);
        assert_same_text(views[v].what, text, bytes);
        cr_assert_eq(off, len);
        free(bytes);
        /* One read at every offset (mid-line included) gives the bytes there; from
         * every 7th offset, reads in odd chunks give the rest of the text. */
        for (size_t at = 0; at <= len; at++) {
            char tmp[128];
            size_t want = 1 + at % sizeof tmp;
            want = want < len - at ? want : len - at;
            uint64_t o = at;
            ssize_t r = bus_metrics_read(the_bus, views[v].id, &o, tmp, want);
            cr_assert_eq(o, at, "%s: a read at %zu moved to %" PRIu64, views[v].what, at, o);
            cr_assert(r > 0 || at == len, "%s at %zu: %zd", views[v].what, at, r);
            cr_assert(memcmp(tmp, text + at, (size_t)(r > 0 ? r : 0)) == 0,
                      "%s at %zu: wrong bytes", views[v].what, at);
            if (at % 7)
                continue;
            struct buf rb;
            buf_init(&rb);
            o = at;
            read_view_from(views[v].id, &o, 1 + at % 13, &rb);
            char *rest = take(&rb);
            cr_assert_eq(strlen(rest), len - at, "%s at %zu: %zu bytes", views[v].what, at,
                         strlen(rest));
            cr_assert(memcmp(rest, text + at, len - at) == 0, "%s at %zu: wrong bytes",
                      views[v].what, at);
            free(rest);
        }
        /* Beyond the end: nothing, and the offset stays. */
        char tmp[8];
        uint64_t o = len + 10;
        cr_assert_eq(bus_metrics_read(the_bus, views[v].id, &o, tmp, sizeof tmp), 0);
        /* A zero-byte read is harmless. */
        o = 0;
        cr_assert_eq(bus_metrics_read(the_bus, views[v].id, &o, tmp, 0), 0);
    }
    /* One read of alice's view across line boundaries returns the bytes of several
     * lines that are not contiguous in the log. */
    char big[4096];
    uint64_t o = 5;
    ssize_t r = bus_metrics_read(the_bus, alice, &o, big, sizeof big);
    cr_assert_gt(r, 0);
    cr_assert_eq(o, 5);
    cr_assert(memcmp(big, mine + 5, (size_t)r) == 0);
    free(log);
    free(mine);
}

/* ========== retention ========== */

/* With retention 32 s segments rotate every 2 s: A alone in the first segment, B and C
 * in a second one written 10 s later. Returns A's line length. */
static size_t write_old_and_kept(void)
{
    cfg.metrics_retention_s = 32;
    start();
    agent("alice");
    agent("bob");
    put("alice", "old.point 1");
    size_t a = (size_t)bus_metrics_size(the_bus, 0);
    advance(10);
    put("alice", "kept.point 2");
    put("bob", "kept.point 3");
    return a;
}

/* After A expired: the log and alice's view start after A; bob's view is whole. */
static void assert_old_dropped(size_t a_len, uint64_t size, uint64_t alice_size,
                               const char *full_log)
{
    cr_assert_eq(bus_metrics_size(the_bus, 0), size, "the log's size does not shrink");
    cr_assert_eq(bus_metrics_size(the_bus, id_of("alice")), alice_size,
                 "the view's size does not shrink");
    uint64_t start_off = 0;
    char *log = view_text(0, &start_off);
    cr_assert_eq(start_off, a_len, "a read at 0 moves to the first kept byte");
    assert_same_text("the kept log", full_log + a_len, log);
    cr_assert_null(strstr(log, "old.point"));
    cr_assert_eq(count_lines(log), 2);

    char *mine = view_text(id_of("alice"), &start_off);
    cr_assert_eq(start_off, a_len, "alice's view: A was its first line, of the same length");
    cr_assert_null(strstr(mine, "old.point"), "the view skips the expired line");
    cr_assert_not_null(strstr(mine, "kept.point"));
    cr_assert_eq(count_lines(mine), 1);
    /* A read inside the expired line also moves to the first kept byte. */
    char tmp[4096];
    uint64_t off = 3;
    ssize_t r = bus_metrics_read(the_bus, id_of("alice"), &off, tmp, sizeof tmp);
    cr_assert_eq(off, a_len);
    cr_assert_eq((size_t)r, strlen(mine));

    char *bobs = view_text(id_of("bob"), &start_off);
    cr_assert_eq(start_off, 0);
    cr_assert_eq(count_lines(bobs), 1);
    free(log);
    free(mine);
    free(bobs);
}

METRICS_TEST(old_points_expire_at_a_tick)
{
    size_t a_len = write_old_and_kept();
    uint64_t size = bus_metrics_size(the_bus, 0);
    uint64_t alice_size = bus_metrics_size(the_bus, id_of("alice"));
    char *full = log_text();
    advance(30); /* A is 40 s old, B and C 30 s: only A is beyond the retention */
    char *still = log_text();
    assert_same_text("nothing expires without a tick or an append", full, still);
    bus_tick(the_bus);
    assert_old_dropped(a_len, size, alice_size, full);

    /* Minutes later, everything is gone, and the sizes still stand. */
    advance(180);
    bus_tick(the_bus);
    char *none = log_text();
    cr_assert_str_eq(none, "");
    char *v = view_text(id_of("alice"), NULL);
    cr_assert_str_eq(v, "");
    cr_assert_eq(bus_metrics_size(the_bus, 0), size);
    cr_assert_eq(bus_metrics_size(the_bus, id_of("alice")), alice_size);

    /* A new point lands at the old end. */
    put("alice", "new.point 4");
    uint64_t start_off = 0;
    char *now = view_text(0, &start_off);
    cr_assert_eq(start_off, size);
    cr_assert_not_null(strstr(now, "new.point"));
    cr_assert_eq(count_lines(now), 1);
    char *mine = view_text(id_of("alice"), &start_off);
    cr_assert_eq(start_off, alice_size);
    cr_assert_not_null(strstr(mine, "new.point"));
    cr_assert_gt(bus_metrics_size(the_bus, 0), size);
    free(full);
    free(still);
    free(none);
    free(v);
    free(now);
    free(mine);
}

METRICS_TEST(old_points_expire_at_an_append_once_time_moved)
{
    size_t a_len = write_old_and_kept();
    char *full = log_text();
    advance(30);
    agent("carol");
    put("carol", "trigger 1");
    uint64_t size = bus_metrics_size(the_bus, 0);
    uint64_t alice_size = bus_metrics_size(the_bus, id_of("alice"));
    /* The expected kept log is B, C and carol's line. */
    char *carol = view_text(id_of("carol"), NULL);
    struct buf all;
    buf_init(&all);
    buf_puts(&all, full);
    buf_puts(&all, carol);
    char *want = take(&all);
    uint64_t start_off = 0;
    char *log = view_text(0, &start_off);
    cr_assert_eq(start_off, a_len, "the append dropped A's segment");
    assert_same_text("the kept log", want + a_len, log);
    char *mine = view_text(id_of("alice"), &start_off);
    cr_assert_eq(start_off, a_len);
    cr_assert_null(strstr(mine, "old.point"));
    cr_assert_eq(bus_metrics_size(the_bus, id_of("alice")), alice_size);
    cr_assert_eq(bus_metrics_size(the_bus, 0), size);
    free(full);
    free(carol);
    free(want);
    free(log);
    free(mine);
}

METRICS_TEST(points_within_the_retention_are_kept)
{
    cfg.metrics_retention_s = 32;
    start();
    agent("alice");
    for (int i = 0; i < 10; i++) {
        put("alice", "p 1");
        advance(3);
        bus_tick(the_bus);
    }
    /* The newest point is 3 s old, the oldest 30 s: all within 32 s. */
    char *log = log_text();
    cr_assert_eq(count_lines(log), 10);
    /* 40 s later than the newest, beyond retention + rotation: all dropped. */
    advance(37);
    bus_tick(the_bus);
    char *none = log_text();
    cr_assert_str_eq(none, "");
    free(log);
    free(none);
}

/* ========== the summary window ========== */

METRICS_TEST(summary_json_counts_only_the_window)
{
    cfg.summary_window_s = 10;
    start();
    agent("alice");
    put("alice", "lat 5 ms");
    advance(4);
    put("alice", "lat 7 ms");
    json_t *s = summary_doc();
    cr_assert_eq(jnum(s, "window_s"), 10);
    json_t *e = summary_entry(s, "lat");
    cr_assert_eq(jnum(e, "count"), 2);
    cr_assert_eq(jnum(e, "min"), 5);
    cr_assert_eq(jnum(e, "max"), 7);
    cr_assert_eq(jnum(e, "avg"), 6);
    json_decref(s);

    advance(4); /* 8 s and 4 s old */
    s = summary_doc();
    cr_assert_eq(jnum(summary_entry(s, "lat"), "count"), 2, "both within 10 s");
    json_decref(s);

    advance(3); /* 11 s and 7 s old: a slice (1/30 of the window) of slack at most */
    s = summary_doc();
    e = summary_entry(s, "lat");
    cr_assert_not_null(e);
    cr_assert_eq(jnum(e, "count"), 1, "the 11 s old point is out of the window");
    cr_assert_eq(jnum(e, "min"), 7);
    cr_assert_eq(jnum(e, "p99"), 7);
    json_decref(s);

    advance(60);
    s = summary_doc();
    cr_assert_null(summary_entry(s, "lat"), "no point in the window: no entry");
    cr_assert_eq(json_object_size(json_object_get(s, "metrics")), 0);
    json_decref(s);

    /* Prometheus: NaN quantiles, cumulative sum and count. */
    char *prom = prom_text();
    static const char *const qs[] = {"0.5", "0.95", "0.99"};
    for (int k = 0; k < 3; k++) {
        char series[256];
        snprintf(series, sizeof series,
                 "busfs_user_metric{name=\"lat\",agent=\"alice\",unit=\"ms\",quantile=\"%s\"}",
                 qs[k]);
        cr_assert(isnan(prom_must(prom, series)), "%s is NaN with an empty window", series);
    }
    cr_assert_eq(prom_must(prom, "busfs_user_metric_count{name=\"lat\",agent=\"alice\",unit=\"ms\"}"),
                 2);
    cr_assert_eq(prom_must(prom, "busfs_user_metric_sum{name=\"lat\",agent=\"alice\",unit=\"ms\"}"),
                 12);
    check_prom(prom);
    free(prom);

    /* A new point starts a new window. */
    put("alice", "lat 100 ms");
    s = summary_doc();
    e = summary_entry(s, "lat");
    cr_assert_eq(jnum(e, "count"), 1);
    cr_assert_eq(jnum(e, "p50"), 100);
    json_decref(s);
    prom = prom_text();
    cr_assert_eq(prom_must(prom, "busfs_user_metric_count{name=\"lat\",agent=\"alice\",unit=\"ms\"}"),
                 3);
    cr_assert_eq(prom_must(prom, "busfs_user_metric{name=\"lat\",agent=\"alice\",unit=\"ms\","
                                 "quantile=\"0.5\"}"),
                 100);
    free(prom);
}

/* ========== summary values ========== */

enum { DIST_N = 2000 };

static void fill_distribution(int which, double *v, size_t *n)
{
    switch (which) {
    case 0: /* 1..1000, shuffled */
        *n = 1000;
        for (size_t i = 0; i < *n; i++)
            v[i] = (double)((i * 617) % 1000 + 1);
        break;
    case 1: /* geometric: 0.5 * 1.013^i, ten decades */
        *n = DIST_N;
        for (size_t i = 0; i < *n; i++)
            v[i] = 0.5 * pow(1.013, (double)((i * 7) % DIST_N));
        break;
    case 2: /* -500..499, zero included */
        *n = 1000;
        for (size_t i = 0; i < *n; i++)
            v[i] = (double)((i * 389) % 1000) - 500;
        break;
    case 3: /* skewed with duplicates: 900 x 3, 90 x 1000, 10 x 1e6 */
        *n = 1000;
        for (size_t i = 0; i < *n; i++)
            v[i] = i % 100 < 90 ? 3 : i % 100 < 99 ? 1000 : 1e6;
        break;
    default: /* small fractions */
        *n = 500;
        for (size_t i = 0; i < *n; i++)
            v[i] = 0.001 * (double)(i + 1) + 1e-6 * (double)(i % 7);
        break;
    }
}

METRICS_TEST(summary_statistics_are_exact_and_quantiles_within_one_percent)
{
    start();
    agent("alice");
    static double v[DIST_N];
    char names[5][16];
    for (int d = 0; d < 5; d++) {
        size_t n;
        fill_distribution(d, v, &n);
        snprintf(names[d], sizeof names[d], "dist%d", d);
        for (size_t at = 0; at < n; at += 250)
            put_values("alice", names[d], NULL, v + at, n - at < 250 ? n - at : 250);
    }
    json_t *s = summary_doc();
    for (int d = 0; d < 5; d++) {
        size_t n;
        fill_distribution(d, v, &n);
        assert_summary_of(summary_entry(s, names[d]), names[d], v, n);
    }
    cr_assert_eq(json_object_size(json_object_get(s, "metrics")), 5);
    json_decref(s);
}

METRICS_TEST(agents_merge_in_summary_json_and_units_split_in_busfs_prom)
{
    start();
    agent("alice");
    agent("bob");
    static double v[1000];
    for (int i = 0; i < 1000; i++)
        v[i] = (double)(i + 1) * 1.5;
    put_values("alice", "lat", "ms", v, 500);
    put_values("bob", "lat", "ms", v + 500, 500);
    json_t *s = summary_doc();
    assert_summary_of(summary_entry(s, "lat"), "lat of alice and bob", v, 1000);
    json_decref(s);

    char *prom = prom_text();
    cr_assert_eq(prom_must(prom, "busfs_user_metric_count{name=\"lat\",agent=\"alice\",unit=\"ms\"}"),
                 500);
    cr_assert_eq(prom_must(prom, "busfs_user_metric_count{name=\"lat\",agent=\"bob\",unit=\"ms\"}"),
                 500);
    double p50 = prom_must(prom, "busfs_user_metric{name=\"lat\",agent=\"bob\",unit=\"ms\","
                                 "quantile=\"0.5\"}");
    double want = exact_quantile(v + 500, 500, 0.5);
    cr_assert(fabs(p50 - want) <= 0.01 * want, "bob's own p50 %g, exact %g", p50, want);
    free(prom);

    /* The same metric in another unit: another series in busfs.prom, the same entry
     * in summary.json. */
    put("alice", "lat 2 s");
    prom = prom_text();
    cr_assert_eq(prom_must(prom, "busfs_user_metric_count{name=\"lat\",agent=\"alice\",unit=\"s\"}"),
                 1);
    cr_assert_eq(prom_must(prom, "busfs_user_metric_count{name=\"lat\",agent=\"alice\",unit=\"ms\"}"),
                 500);
    cr_assert_eq(prom_must(prom, "busfs_user_metric{name=\"lat\",agent=\"alice\",unit=\"s\","
                                 "quantile=\"0.99\"}"),
                 2);
    char *user = lines_starting(prom, "busfs_user_metric_count{");
    cr_assert_eq(count_lines(user), 3, "three series: %s", user);
    check_prom(prom);
    free(user);
    free(prom);
    s = summary_doc();
    cr_assert_eq(json_object_size(json_object_get(s, "metrics")), 1);
    json_t *e = summary_entry(s, "lat");
    cr_assert_eq(jnum(e, "count"), 1001);
    cr_assert_eq(jnum(e, "min"), 1.5);
    json_decref(s);
}

/* ========== busfs.prom ========== */

METRICS_TEST(busfs_prom_is_well_formed)
{
    cfg.summary_window_s = 10;
    start();
    char *prom = prom_text();
    unsigned empty = check_prom(prom);
    cr_assert_gt(empty, 0, "bus counters even without agents");
    cr_assert_not_null(strstr(prom, "# TYPE busfs_user_metric summary\n"));
    free(prom);

    agent("alice");
    agent("bob-2.x");
    agent_as("carol", OTHER);
    struct bus_error err = {0};
    cr_assert_eq(bus_health_report(the_bus, id_of("alice"), OWNER, "healthy", 7, &err), 0);
    cr_assert_eq(bus_health_report(the_bus, id_of("bob-2.x"), OWNER, "degraded slow", 13, &err),
                 0);
    bus_fail(&err, EAGAIN, "full");
    bus_log_error(the_bus, "alice", "create", "agents/alice/outbox/bob", OWNER, &err);
    bus_fail(&err, EINVAL, "bad");
    bus_log_error(the_bus, NULL, "write", "agents/x/metrics", OWNER, &err);
    put("alice", "coordination.time 150 ms\nweird:name-1.x 3 %\nrate 5 req/s host=a");
    put("alice", "{\"metric\":\"memory.mb\",\"value\":512.5,\"unit\":\"mb\",\"tags\":{\"k\":\"v\\\"q\"}}");
    put("bob-2.x", "coordination.time 1 ms\ncoordination.time 2 s\n_under 1e-300");
    struct bus_error e2 = {0};
    cr_assert_eq(put_as("carol", OTHER, "neg -1.5e300", &e2), 0);
    prom = prom_text();
    unsigned n = check_prom(prom);
    /* 8 user series of 5 samples each, beside the bus's: alice 4, bob-2.x 3 (one
     * metric in two units), carol 1. */
    char *user = lines_starting(prom, "busfs_user_metric");
    cr_assert_eq(count_lines(user), 8 * 5, "%s", user);
    cr_assert_gt(n, 40);
    cr_assert_eq(prom_must(prom, "busfs_messages_rejected_total{reason=\"EAGAIN\"}"), 1);
    cr_assert_eq(prom_must(prom, "busfs_messages_rejected_total{reason=\"EINVAL\"}"), 1);
    cr_assert_eq(prom_must(prom, "busfs_agents{status=\"healthy\"}"), 1);
    cr_assert_eq(prom_must(prom, "busfs_agents{status=\"degraded\"}"), 1);
    cr_assert_eq(prom_must(prom, "busfs_agents{status=\"unknown\"}"), 1);
    cr_assert_eq(prom_must(prom, "busfs_inbox_depth{agent=\"bob-2.x\"}"), 0);
    cr_assert_eq(prom_must(prom, "busfs_metric_points_total"), 8);
    cr_assert_eq(prom_must(prom, "busfs_user_metric_sum{name=\"neg\",agent=\"carol\",unit=\"\"}"),
                 -1.5e300);
    cr_assert_eq(prom_must(prom, "busfs_user_metric{name=\"weird:name-1.x\",agent=\"alice\","
                                 "unit=\"%\",quantile=\"0.95\"}"),
                 3);
    free(user);
    free(prom);

    /* With the window empty (NaN quantiles) it is still well-formed. */
    advance(60);
    prom = prom_text();
    cr_assert_eq(check_prom(prom), n);
    free(prom);
}

/* ========== rebuilding at open ========== */

/* Points of several agents, units, tags, forms, over a few seconds. */
static void build_points(void)
{
    agent("alice");
    agent("bob");
    agent_as("carol", OTHER);
    put("alice", "coordination.time 150 ms\ncoordination.time 250 ms phase=build\n");
    put("bob", "{\"metric\":\"memory.mb\",\"value\":512.5,\"unit\":\"mb\",\"tags\":{\"host\":\"a\"}}");
    struct bus_error err = {0};
    CHECK(put_as("carol", OTHER, "tasks.done 1 count\ntasks.done 3 count", &err) == 0, "carol");
    static double v[300];
    for (int i = 0; i < 300; i++)
        v[i] = 0.37 * (double)((i * 113) % 300) + 0.01;
    for (int k = 0; k < 3; k++) {
        put_values("alice", "lat", "ms", v + k * 100, 100);
        put_values("bob", "lat", "s", v + k * 100, 50);
        advance(1.5);
    }
    put("alice", "neg -42.25\ntiny 1e-07 x");
    put("bob", "coordination.time 3 ms");
}

/* Everything the points show, as one text: summary.json, the user metrics of
 * busfs.prom, the log, each view, the sizes. The caller frees it. */
static char *metrics_dump(void)
{
    struct buf d;
    buf_init(&d);
    char *t = summary_text();
    buf_printf(&d, "== summary.json\n%s", t);
    free(t);
    t = prom_user_lines();
    buf_printf(&d, "== busfs.prom\n%s", t);
    free(t);
    t = log_text();
    buf_printf(&d, "== metrics.jsonl (%" PRIu64 " bytes)\n%s", bus_metrics_size(the_bus, 0), t);
    free(t);
    static const char *const names[] = {"alice", "bob", "carol"};
    for (int k = 0; k < 3; k++) {
        uint64_t id = id_of(names[k]);
        t = view_text(id, NULL);
        buf_printf(&d, "== %s (%" PRIu64 " bytes)\n%s", names[k], bus_metrics_size(the_bus, id),
                   t);
        free(t);
    }
    return take(&d);
}

METRICS_TEST(a_clean_restart_rebuilds_the_same_summaries_log_and_views)
{
    start();
    build_points();
    char *before = metrics_dump();
    reopen();
    char *after = metrics_dump();
    assert_same_text("after a restart", before, after);
    reopen();
    char *again = metrics_dump();
    assert_same_text("after a second restart", before, again);

    /* And it goes on: a new point is appended after the old ones everywhere. */
    uint64_t size = bus_metrics_size(the_bus, 0);
    uint64_t alice = bus_metrics_size(the_bus, id_of("alice"));
    put("alice", "lat 1 ms");
    cr_assert_gt(bus_metrics_size(the_bus, 0), size);
    cr_assert_gt(bus_metrics_size(the_bus, id_of("alice")), alice);
    char *prom = prom_text();
    cr_assert_eq(prom_must(prom, "busfs_user_metric_count{name=\"lat\",agent=\"alice\",unit=\"ms\"}"),
                 301);
    free(prom);
    free(before);
    free(after);
    free(again);
}

static void crash_after_points(void)
{
    build_points();
    char *d = metrics_dump();
    save_text("dump", d);
    free(d);
    save_clock();
}

METRICS_TEST(a_kill_9_keeps_every_point_and_rebuilds_the_same_documents)
{
    in_crashing_child(crash_after_points);
    load_clock();
    start();
    char *before = load_text("dump");
    char *after = metrics_dump();
    assert_same_text("after a kill -9", before, after);
    /* The bus works on: a point goes in after the rebuilt ones. */
    put("bob", "lat 1 s");
    char *prom = prom_text();
    cr_assert_eq(prom_must(prom, "busfs_user_metric_count{name=\"lat\",agent=\"bob\",unit=\"s\"}"),
                 151);
    free(prom);
    reopen();
    char *d = metrics_dump();
    cr_assert(strstr(d, "\"count\":"), "%s", d);
    free(d);
    free(before);
    free(after);
}

/* The newest STORE/metrics/points-*.jsonl. */
static void newest_points_file(char *out)
{
    char dir[PATH_MAX];
    int n = snprintf(dir, sizeof dir, "%s/metrics", store_dir);
    cr_assert(n > 0 && n < PATH_MAX);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "no %s", dir);
    char best[256] = "";
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "points-", 7) == 0 && strstr(e->d_name, ".jsonl") &&
            strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", e->d_name);
    closedir(d);
    cr_assert(best[0], "no points segment in %s", dir);
    n = snprintf(out, PATH_MAX, "%s/%s", dir, best);
    cr_assert(n > 0 && n < PATH_MAX);
}

/* Sets the mtime of every points segment, as the real clock would have left it at
 * that (fake) time: at open, a segment's age comes from its mtime. */
static void touch_points(int64_t us)
{
    char dir[PATH_MAX];
    int n = snprintf(dir, sizeof dir, "%s/metrics", store_dir);
    cr_assert(n > 0 && n < PATH_MAX);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "no %s", dir);
    struct timespec ts[2] = {
        {.tv_sec = us / SEC, .tv_nsec = (us % SEC) * 1000},
        {.tv_sec = us / SEC, .tv_nsec = (us % SEC) * 1000},
    };
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "points-", 7) == 0)
            cr_assert_eq(utimensat(dirfd(d), e->d_name, ts, 0), 0, "touch %s", e->d_name);
    closedir(d);
}

METRICS_TEST(a_torn_last_line_is_cut_at_open_and_the_bus_works_on)
{
    start();
    build_points();
    char *before = metrics_dump();
    uint64_t size = bus_metrics_size(the_bus, 0);
    bus_close(the_bus);
    the_bus = NULL;

    char path[PATH_MAX];
    newest_points_file(path);
    long long file_size = unit_file_size(path);
    static const char torn[] = "{\"timestamp\":\"2026-11-23T05:05:12.123456Z\",\"agent\":\"ali";
    cr_assert_eq(unit_append_file(path, torn, sizeof torn - 1), 0);
    start();
    cr_assert_eq(unit_file_size(path), file_size, "the torn line is cut from the file");
    char *after = metrics_dump();
    assert_same_text("after cutting a torn line", before, after);
    cr_assert_eq(bus_metrics_size(the_bus, 0), size);

    put("alice", "after.cut 7 ms");
    char *log = log_text();
    cr_assert_eq(strlen(log), bus_metrics_size(the_bus, 0));
    json_t *lines = parse_jsonl(log, "metrics.jsonl after the cut");
    json_t *last = json_array_get(lines, json_array_size(lines) - 1);
    cr_assert_str_eq(jstr(last, "metric"), "after.cut");
    cr_assert_str_eq(jstr(last, "agent"), "alice");
    cr_assert_null(strstr(log, "\"ali{"), "no trace of the torn bytes");
    char *mine = view_text(id_of("alice"), NULL);
    const char *tail = strstr(mine, "after.cut");
    cr_assert_not_null(tail);
    cr_assert_eq(strchr(tail, '\n')[1], '\0', "the new line is the view's last");
    json_t *s = summary_doc();
    cr_assert_eq(jnum(summary_entry(s, "after.cut"), "count"), 1);
    json_decref(s);

    reopen();
    char *again = log_text();
    assert_same_text("the log after a restart", log, again);
    json_decref(lines);
    free(before);
    free(after);
    free(log);
    free(mine);
    free(again);
}

METRICS_TEST(a_new_segment_holding_only_a_torn_line_is_emptied_at_open)
{
    start();
    build_points();
    char *before = metrics_dump();
    uint64_t size = bus_metrics_size(the_bus, 0);
    bus_close(the_bus);
    the_bus = NULL;
    /* A crash right after a rotation: the new segment holds half a line. */
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/metrics/points-%020" PRIu64 ".jsonl", store_dir, size);
    cr_assert(n > 0 && n < PATH_MAX);
    static const char torn[] = "{\"timestamp\":\"2026-11-23T05:0";
    cr_assert_eq(unit_write_file(path, torn, sizeof torn - 1), 0);
    start();
    char *after = metrics_dump();
    assert_same_text("after emptying a torn segment", before, after);
    put("alice", "after.cut 7 ms");
    char *log = log_text();
    json_t *lines = parse_jsonl(log, "metrics.jsonl after the cut");
    cr_assert_str_eq(jstr(json_array_get(lines, json_array_size(lines) - 1), "metric"),
                     "after.cut");
    cr_assert_eq(strlen(log), bus_metrics_size(the_bus, 0));
    reopen();
    char *again = log_text();
    assert_same_text("the log after a restart", log, again);
    json_decref(lines);
    free(before);
    free(after);
    free(log);
    free(again);
}

METRICS_TEST(an_agents_view_keeps_its_size_and_offsets_across_a_restart_after_expiry)
{
    cfg.metrics_retention_s = 32;
    start();
    uint64_t alice = agent("alice");
    put("alice", "old.point 1");
    uint64_t a_len = bus_metrics_size(the_bus, 0);
    advance(10);
    int64_t b_time = unit_clock_get();
    put("alice", "kept.point 2");
    advance(30);
    bus_tick(the_bus); /* A expires, B stays */
    uint64_t log_size = bus_metrics_size(the_bus, 0), view_size = bus_metrics_size(the_bus, alice);
    uint64_t log_start = 0, view_start = 0;
    char *log = view_text(0, &log_start), *mine = view_text(alice, &view_start);
    cr_assert_eq(log_start, a_len);
    cr_assert_eq(view_start, a_len);
    bus_close(the_bus);
    the_bus = NULL;
    touch_points(b_time);
    start();
    alice = id_of("alice");
    uint64_t s0 = 0, s1 = 0;
    char *log2 = view_text(0, &s0), *mine2 = view_text(alice, &s1);
    assert_same_text("the kept log after a restart", log, log2);
    cr_assert_eq(s0, log_start, "the log's offsets stay");
    cr_assert_eq(bus_metrics_size(the_bus, 0), log_size, "the log's size stays");
    assert_same_text("alice's kept view after a restart", mine, mine2);
    cr_assert_eq(bus_metrics_size(the_bus, alice), view_size,
                 "alice's view: size %" PRIu64 " after the restart, %" PRIu64 " before: a size "
                 "that only grows must not shrink at a restart",
                 bus_metrics_size(the_bus, alice), view_size);
    cr_assert_eq(s1, view_start, "alice's view: the kept line moved from offset %" PRIu64
                 " to %" PRIu64, view_start, s1);
    free(log);
    free(mine);
    free(log2);
    free(mine2);
}

/* ========== alert rules ========== */

METRICS_TEST(rules_are_replaced_merged_and_cleared)
{
    start();
    char *none = user_rules();
    cr_assert_str_eq(none, "", "no user rules at first");
    char *all = rules_text();
    cr_assert_not_null(strstr(all, "agent_stale "), "built-ins are shown:\n%s", all);
    cr_assert_not_null(strstr(all, "inbox_high "), "built-ins are shown:\n%s", all);

    set_rules_ok("# a comment\n\nslow lat p95 > 100 critical\n"
                 "busy tasks.done rate >= 5 warning for=30 # trailing comment\n",
                 true);
    char *u = user_rules();
    cr_assert_str_eq(u, "slow lat p95 > 100 critical\nbusy tasks.done rate >= 5 warning for=30\n");
    free(u);

    /* >> : replaces by name in place, appends new names. */
    set_rules_ok("slow lat p99 > 200 info\nquiet lat count < 1\n", false);
    u = user_rules();
    cr_assert_str_eq(u, "slow lat p99 > 200 info\nbusy tasks.done rate >= 5 warning for=30\n"
                        "quiet lat count < 1 warning\n");
    free(u);

    /* A bad line refuses the whole write and keeps the rules. */
    static const char *const bad[] = {
        "ok lat p50 > 1\nbad lat p42 > 1\n",
        "ok lat p50 > 1\nbad lat p50 => 1\n",
        "ok lat p50 > 1\nbad lat p50 > nan\n",
        "ok lat p50 > 1\nbad lat p50 > 1 fatal\n",
        "ok lat p50 > 1\nok lat p50 > 2\n",
        "ok lat p50 > 1 for=-1\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(set_rules(bad[i], true), -EINVAL, "replace with %s", bad[i]);
        cr_assert_eq(set_rules(bad[i], false), -EINVAL, "merge with %s", bad[i]);
        u = user_rules();
        cr_assert_str_eq(u, "slow lat p99 > 200 info\nbusy tasks.done rate >= 5 warning for=30\n"
                            "quiet lat count < 1 warning\n", "after %s", bad[i]);
        free(u);
    }

    /* > : replaces them all. */
    set_rules_ok("only lat avg <= 0.5", true);
    u = user_rules();
    cr_assert_str_eq(u, "only lat avg <= 0.5 warning\n");
    free(u);

    /* A rule named like a built-in overrides it; the built-in shows as replaced. */
    set_rules_ok("agent_stale busfs.agent_stale max >= 1 critical\n", false);
    char *r = rules_text();
    cr_assert_not_null(strstr(r, "#   (replaced) agent_stale "), "%s", r);
    cr_assert_null(strstr(r, "#   (replaced) inbox_high"), "%s", r);
    free(r);

    /* : > rules clears them; the built-ins stay. */
    struct bus_error err = {0};
    cr_assert_eq(bus_rules_clear(the_bus, NULL, &err), 0, "%s", err.reason);
    u = user_rules();
    cr_assert_str_eq(u, "");
    free(u);
    r = rules_text();
    cr_assert_not_null(strstr(r, "inbox_high "));
    cr_assert_null(strstr(r, "(replaced)"));
    free(r);
    /* An empty replace also means no rules. */
    set_rules_ok("x lat p50 > 1", true);
    set_rules_ok("", true);
    u = user_rules();
    cr_assert_str_eq(u, "");
    free(u);
    free(none);
    free(all);
}

METRICS_TEST(clearing_with_saved_text_then_writing_it_back_restores_exactly)
{
    start();
    set_rules_ok("slow lat p95 > 100.25 critical for=2.5\nbusy x rate >= 5\n"
                 "inbox_high busfs.inbox_fill max > 0.5 info\nlow y min < -1e-07\n",
                 true);
    char *before = rules_text();
    struct buf saved;
    buf_init(&saved);
    struct bus_error err = {0};
    cr_assert_eq(bus_rules_clear(the_bus, &saved, &err), 0, "%s", err.reason);
    char *cleared = user_rules();
    cr_assert_str_eq(cleared, "");
    char *text = take(&saved);
    cr_assert_eq(bus_rules_write(the_bus, text, strlen(text), true, &err), 0, "%s", err.reason);
    char *after = rules_text();
    assert_same_text("alerts/rules", before, after);
    reopen();
    char *reopened = rules_text();
    assert_same_text("alerts/rules after a restart", before, reopened);
    free(before);
    free(cleared);
    free(text);
    free(after);
    free(reopened);
}

/* ========== alert evaluation ========== */

METRICS_TEST(an_alert_is_pending_for_its_for_then_fires_once_and_resolves_once)
{
    start();
    agent("alice");
    set_rules_ok("slow lat p95 > 100 critical for=10", true);
    put("alice", "lat 500 ms");
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0, "pending, not firing");
    cr_assert_eq(bus_alerts_size(the_bus), 0);
    advance(5);
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0, "still pending after 5 s of for=10");
    cr_assert_eq(bus_alerts_size(the_bus), 0);
    advance(5.5);
    bus_tick(the_bus);

    json_t *act = active_doc();
    cr_assert_eq(json_array_size(json_object_get(act, "alerts")), 1);
    json_t *a = active_find(act, "slow", "alice");
    cr_assert_not_null(a);
    cr_assert_str_eq(jstr(a, "severity"), "critical");
    cr_assert_eq(jnum(a, "value"), 500);
    cr_assert_eq(jnum(a, "threshold"), 100);
    char since[BUS_TIME_LEN + 1];
    snprintf(since, sizeof since, "%s", jstr(a, "since"));
    json_decref(act);

    json_t *recs = alert_records();
    cr_assert_eq(json_array_size(recs), 1, "exactly one firing record");
    json_t *r = json_array_get(recs, 0);
    cr_assert_str_eq(jstr(r, "alert"), "slow");
    cr_assert_str_eq(jstr(r, "state"), "firing");
    cr_assert_str_eq(jstr(r, "severity"), "critical");
    cr_assert_str_eq(jstr(r, "timestamp"), since, "the record is the moment it fired");
    json_t *md = json_object_get(r, "metadata");
    cr_assert_str_eq(jstr(md, "agent"), "alice");
    cr_assert_str_eq(jstr(md, "metric"), "lat");
    cr_assert_eq(jnum(md, "value"), 500);
    cr_assert_eq(jnum(md, "threshold"), 100);
    cr_assert_not_null(strstr(jstr(r, "message"), "slow"), "%s", jstr(r, "message"));
    json_decref(recs);

    /* It keeps firing: nothing more is logged, since stays. */
    uint64_t size = bus_alerts_size(the_bus);
    for (int i = 0; i < 5; i++) {
        advance(1);
        bus_tick(the_bus);
    }
    cr_assert_eq(bus_alerts_size(the_bus), size, "no repeat while it keeps firing");
    act = active_doc();
    cr_assert_str_eq(jstr(active_find(act, "slow", "alice"), "since"), since);
    json_decref(act);

    /* 99 low values: p95 = x[floor(0.95 * 99)] = 1, below the threshold. */
    static double low[99];
    for (int i = 0; i < 99; i++)
        low[i] = 1;
    put_values("alice", "lat", "ms", low, 99);
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0, "resolved");
    recs = alert_records();
    cr_assert_eq(json_array_size(recs), 2);
    r = json_array_get(recs, 1);
    cr_assert_str_eq(jstr(r, "state"), "resolved");
    cr_assert_str_eq(jstr(r, "alert"), "slow");
    cr_assert_str_eq(jstr(json_object_get(r, "metadata"), "agent"), "alice");
    cr_assert_str_eq(jstr(r, "severity"), "critical");
    json_decref(recs);
    size = bus_alerts_size(the_bus);
    for (int i = 0; i < 3; i++) {
        advance(1);
        bus_tick(the_bus);
    }
    cr_assert_eq(bus_alerts_size(the_bus), size, "no second resolved record");
}

METRICS_TEST(a_condition_that_stops_holding_while_pending_never_fires)
{
    start();
    agent("alice");
    set_rules_ok("slow lat max > 100 for=10", true);
    put("alice", "lat 500");
    bus_tick(the_bus);
    advance(61); /* the point leaves the window before for= */
    bus_tick(the_bus);
    put("alice", "lat 600");
    bus_tick(the_bus); /* pending again, from now */
    advance(5);
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0, "for= counts from the new pending start");
    cr_assert_eq(bus_alerts_size(the_bus), 0);
    advance(6);
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 1);
    cr_assert_eq(record_count(), 1);
}

METRICS_TEST(an_alert_resolves_when_new_values_after_the_window_are_low)
{
    cfg.summary_window_s = 10;
    start();
    agent("alice");
    set_rules_ok("hot temp avg >= 50 warning", true);
    put("alice", "temp 70 C\ntemp 80 C");
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 1, "for=0 fires at the first evaluation");
    json_t *recs = alert_records();
    cr_assert_eq(json_array_size(recs), 1);
    cr_assert_eq(jnum(json_object_get(json_array_get(recs, 0), "metadata"), "value"), 75);
    json_decref(recs);
    advance(15);
    put("alice", "temp 20 C");
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0);
    recs = alert_records();
    cr_assert_eq(json_array_size(recs), 2);
    json_t *r = json_array_get(recs, 1);
    cr_assert_str_eq(jstr(r, "state"), "resolved");
    cr_assert_eq(jnum(json_object_get(r, "metadata"), "value"), 20, "the value that cleared it");
    json_decref(recs);
    /* It can fire again: a second firing record. */
    advance(15);
    put("alice", "temp 99 C");
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 1);
    recs = alert_records();
    cr_assert_eq(records_of(recs, "hot", "alice", "firing"), 2);
    cr_assert_eq(records_of(recs, "hot", "alice", "resolved"), 1);
    json_decref(recs);
}

METRICS_TEST(alerts_are_per_agent)
{
    start();
    agent("alice");
    agent("bob");
    agent("carol"); /* writes no lat: never evaluated */
    set_rules_ok("slow lat p95 > 100", true);
    put("alice", "lat 500");
    put("bob", "lat 5");
    bus_tick(the_bus);
    json_t *act = active_doc();
    cr_assert_eq(json_array_size(json_object_get(act, "alerts")), 1);
    cr_assert_not_null(active_find(act, "slow", "alice"));
    cr_assert_str_eq(jstr(active_find(act, "slow", "alice"), "severity"), "warning",
                     "the default severity");
    json_decref(act);

    put("bob", "lat 900\nlat 900\nlat 900");
    bus_tick(the_bus);
    act = active_doc();
    cr_assert_eq(json_array_size(json_object_get(act, "alerts")), 2);
    cr_assert_not_null(active_find(act, "slow", "bob"));
    json_decref(act);
    json_t *recs = alert_records();
    cr_assert_eq(json_array_size(recs), 2);
    cr_assert_eq(records_of(recs, "slow", "alice", "firing"), 1);
    cr_assert_eq(records_of(recs, "slow", "bob", "firing"), 1);
    cr_assert_eq(records_of(recs, "slow", "carol", "firing"), 0);
    json_decref(recs);
}

METRICS_TEST(nan_never_fires)
{
    cfg.summary_window_s = 10;
    start();
    agent("alice");
    put("alice", "lat 5");
    advance(30); /* alice's series exists, its window is empty: every stat but count is NaN */
    set_rules_ok("a lat min < 1e300\nb lat max > -1e300\nc lat avg <= 1e300\n"
                 "d lat p50 >= -1e300\ne lat p95 > -1e300\nf lat p99 < 1e300\n",
                 true);
    for (int i = 0; i < 3; i++) {
        bus_tick(the_bus);
        advance(1);
    }
    cr_assert_eq(active_count(), 0, "NaN compares false with every op");
    cr_assert_eq(bus_alerts_size(the_bus), 0);
    /* An empty window's count and rate are 0, real values that can fire. */
    set_rules_ok("idle lat count < 1\nidle_rate lat rate <= 0\n", true);
    bus_tick(the_bus);
    json_t *act = active_doc();
    cr_assert_not_null(active_find(act, "idle", "alice"));
    cr_assert_not_null(active_find(act, "idle_rate", "alice"));
    json_decref(act);
}

METRICS_TEST(rate_is_count_per_second_over_the_window)
{
    cfg.summary_window_s = 10;
    start();
    agent("alice");
    set_rules_ok("fast ev rate > 2", true);
    put("alice", "ev 1\nev 1\nev 1\nev 1\nev 1\nev 1\nev 1\nev 1\nev 1\nev 1\n"
                 "ev 1\nev 1\nev 1\nev 1\nev 1\nev 1\nev 1\nev 1\nev 1\nev 1");
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0, "20 points over 10 s is 2/s, not > 2");
    put("alice", "ev 1");
    bus_tick(the_bus);
    json_t *act = active_doc();
    json_t *a = active_find(act, "fast", "alice");
    cr_assert_not_null(a);
    cr_assert_eq(jnum(a, "value"), 2.1);
    json_decref(act);
}

METRICS_TEST(removing_the_rule_or_the_agent_resolves)
{
    start();
    agent("alice");
    agent("bob");
    set_rules_ok("big lat max > 10 critical\nhuge lat max > 100 info\n", true);
    put("alice", "lat 500");
    put("bob", "lat 500");
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 4);
    cr_assert_eq(record_count(), 4);

    /* > with only huge: big resolves for both agents at the next tick. */
    set_rules_ok("huge lat max > 100 info\n", true);
    json_t *act = active_doc();
    cr_assert_eq(json_array_size(json_object_get(act, "alerts")), 2,
                 "an alert of a removed rule is no longer shown");
    json_decref(act);
    bus_tick(the_bus);
    json_t *recs = alert_records();
    cr_assert_eq(json_array_size(recs), 6);
    cr_assert_eq(records_of(recs, "big", "alice", "resolved"), 1);
    cr_assert_eq(records_of(recs, "big", "bob", "resolved"), 1);
    json_t *r = json_array_get(recs, 4);
    cr_assert_not_null(strstr(jstr(r, "message"), "rule was removed"), "%s", jstr(r, "message"));
    cr_assert_str_eq(jstr(r, "severity"), "critical",
                     "the resolved record keeps the severity it fired with");
    json_decref(recs);

    /* bob goes away: his alert resolves. */
    remove_agent("bob", OWNER);
    bus_tick(the_bus);
    recs = alert_records();
    cr_assert_eq(json_array_size(recs), 7);
    cr_assert_eq(records_of(recs, "huge", "bob", "resolved"), 1);
    r = json_array_get(recs, 6);
    cr_assert_not_null(strstr(jstr(r, "message"), "agent was removed"), "%s", jstr(r, "message"));
    cr_assert_str_eq(jstr(r, "severity"), "info");
    json_decref(recs);
    act = active_doc();
    cr_assert_eq(json_array_size(json_object_get(act, "alerts")), 1);
    cr_assert_not_null(active_find(act, "huge", "alice"));
    json_decref(act);

    /* : > rules then nothing: resolved after the 1 s grace, not before. */
    struct bus_error err = {0};
    cr_assert_eq(bus_rules_clear(the_bus, NULL, &err), 0);
    bus_tick(the_bus);
    cr_assert_eq(record_count(), 7, "no resolution within a second of a clear");
    advance(2);
    bus_tick(the_bus);
    recs = alert_records();
    cr_assert_eq(records_of(recs, "huge", "alice", "resolved"), 1);
    json_decref(recs);
    cr_assert_eq(active_count(), 0);
}

METRICS_TEST(clear_and_restore_does_not_resolve_a_firing_alert)
{
    start();
    agent("alice");
    set_rules_ok("big lat max > 10 critical\n", true);
    put("alice", "lat 500");
    bus_tick(the_bus);
    cr_assert_eq(record_count(), 1);
    struct buf saved;
    buf_init(&saved);
    struct bus_error err = {0};
    cr_assert_eq(bus_rules_clear(the_bus, &saved, &err), 0);
    bus_tick(the_bus); /* `> alerts/rules`: an empty flush comes first */
    char *text = take(&saved);
    cr_assert_eq(bus_rules_write(the_bus, text, strlen(text), true, &err), 0);
    advance(2);
    bus_tick(the_bus);
    cr_assert_eq(record_count(), 1, "neither resolved nor fired again");
    cr_assert_eq(active_count(), 1);
    free(text);
}

/* ========== built-in alerts ========== */

METRICS_TEST(agent_stale_fires_when_an_agent_turns_stale)
{
    cfg.health_ttl_s = 10;
    start();
    agent("alice");
    agent("quiet"); /* never reports: unknown, not stale */
    struct bus_error err = {0};
    cr_assert_eq(bus_health_report(the_bus, id_of("alice"), OWNER, "healthy", 7, &err), 0);
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0);
    advance(11);
    bus_tick(the_bus);
    json_t *act = active_doc();
    cr_assert_eq(json_array_size(json_object_get(act, "alerts")), 1);
    json_t *a = active_find(act, "agent_stale", "alice");
    cr_assert_not_null(a);
    cr_assert_eq(jnum(a, "value"), 1);
    json_decref(act);
    json_t *recs = alert_records();
    cr_assert_eq(records_of(recs, "agent_stale", "alice", "firing"), 1);
    json_decref(recs);
    bus_tick(the_bus);
    cr_assert_eq(record_count(), 1);

    cr_assert_eq(bus_health_beat(the_bus, id_of("alice"), OWNER, &err), 0);
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0, "a heartbeat makes it fresh again");
    recs = alert_records();
    cr_assert_eq(records_of(recs, "agent_stale", "alice", "resolved"), 1);
    json_decref(recs);
}

/* `echo BODY > agents/FROM/outbox/TO`. */
static int send_text(const char *from, const char *to, const char *body)
{
    struct bus_error err = {0};
    struct bus_draft *d = NULL;
    int rc = bus_draft_open(the_bus, id_of(from), to, OWNER, &d, &err);
    if (rc < 0)
        return rc;
    rc = bus_draft_write(the_bus, d, body, strlen(body), &err);
    if (rc == 0)
        rc = bus_draft_flush(the_bus, d, &err);
    bus_draft_close(the_bus, d);
    return rc;
}

METRICS_TEST(inbox_high_fires_above_80_percent_of_capacity)
{
    cfg.inbox_capacity = 5;
    start();
    agent("alice");
    agent("bob");
    for (int i = 0; i < 4; i++)
        cr_assert_eq(send_text("alice", "bob", "m"), 0);
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0, "4 of 5 is 80%%, not above");
    cr_assert_eq(send_text("alice", "bob", "m"), 0);
    bus_tick(the_bus);
    json_t *act = active_doc();
    json_t *a = active_find(act, "inbox_high", "bob");
    cr_assert_not_null(a);
    cr_assert_eq(jnum(a, "value"), 1);
    cr_assert_eq(jnum(a, "threshold"), 0.8);
    cr_assert_null(active_find(act, "inbox_high", "alice"));
    json_decref(act);

    struct bus_message *m = NULL;
    bool draining = false;
    cr_assert_eq(bus_next_peek(the_bus, id_of("bob"), &m, &draining), 0);
    struct bus_error err = {0};
    cr_assert_eq(bus_ack(the_bus, id_of("bob"), m->number, NULL, OWNER, &err), 0, "%s",
                 err.reason);
    message_unref(m);
    bus_tick(the_bus);
    cr_assert_eq(active_count(), 0);
    json_t *recs = alert_records();
    cr_assert_eq(records_of(recs, "inbox_high", "bob", "firing"), 1);
    cr_assert_eq(records_of(recs, "inbox_high", "bob", "resolved"), 1);
    json_decref(recs);
}

/* ========== alerts across restarts ========== */

/* Everything the alerts show, as one text. The caller frees it. */
static char *alerts_dump(void)
{
    struct buf d;
    buf_init(&d);
    char *t = rules_text();
    buf_printf(&d, "== rules\n%s", t);
    free(t);
    t = active_alerts_text();
    buf_printf(&d, "== active\n%s\n", t);
    free(t);
    t = alerts_log_text();
    buf_printf(&d, "== alerts.jsonl (%" PRIu64 " bytes)\n%s", bus_alerts_size(the_bus), t);
    free(t);
    return take(&d);
}

static void fire_two_alerts(void)
{
    agent("alice");
    agent("bob");
    set_rules_ok("slow lat p95 > 100 critical\nmany lat count >= 3 info for=5\n", true);
    put("alice", "lat 500\nlat 400\nlat 300");
    put("bob", "lat 1");
    bus_tick(the_bus);
    advance(6);
    bus_tick(the_bus);
    CHECK(active_count() == 2, "two alerts of alice fire");
    CHECK(record_count() == 2, "two firing records");
}

/* After a restart: the same alerts, and ticks fire nothing again. */
static void assert_alerts_kept(const char *before)
{
    char *after = alerts_dump();
    assert_same_text("alerts after a restart", before, after);
    uint64_t size = bus_alerts_size(the_bus);
    for (int i = 0; i < 3; i++) {
        advance(1);
        bus_tick(the_bus);
    }
    cr_assert_eq(bus_alerts_size(the_bus), size, "a restart does not re-fire");
    char *ticked = active_alerts_text();
    cr_assert_not_null(strstr(after, ticked), "the same active alerts after ticks: %s", ticked);
    free(after);
    free(ticked);
}

METRICS_TEST(a_firing_alert_and_the_rules_survive_a_restart)
{
    start();
    fire_two_alerts();
    char *before = alerts_dump();
    reopen();
    assert_alerts_kept(before);
    reopen();
    assert_alerts_kept(before);

    /* It still resolves: one resolved record. */
    set_rules_ok("many lat count >= 3 info for=5\n", true);
    bus_tick(the_bus);
    json_t *recs = alert_records();
    cr_assert_eq(json_array_size(recs), 3);
    cr_assert_eq(records_of(recs, "slow", "alice", "resolved"), 1);
    cr_assert_eq(records_of(recs, "slow", "alice", "firing"), 1);
    json_decref(recs);
    reopen();
    cr_assert_eq(active_count(), 1, "the resolution is kept too");
    bus_tick(the_bus);
    cr_assert_eq(record_count(), 3);
    free(before);
}

static void crash_after_firing(void)
{
    fire_two_alerts();
    char *d = alerts_dump();
    save_text("alerts", d);
    free(d);
    save_clock();
}

METRICS_TEST(a_firing_alert_and_the_rules_survive_a_kill_9)
{
    in_crashing_child(crash_after_firing);
    load_clock();
    start();
    char *before = load_text("alerts");
    assert_alerts_kept(before);
    reopen();
    assert_alerts_kept(before);
    free(before);
}
