/*
 * test_nomem.c — an allocation failure anywhere in a send fails that send with ENOMEM
 * and leaves the bus and its store as they were (SPEC §11): no half-applied change,
 * no malformed record in the journal, and the next send works.
 *
 * The one thing a reader must know: each test repeats one operation with the 1st,
 * 2nd, 3rd ... allocation of core code failing (failalloc.h), until a run reaches the
 * end without meeting the armed failure. After every run the bus must hold exactly
 * the messages of the runs that succeeded, each a well-formed envelope, and the store
 * must load back to the same state.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "busfs/buf.h"
#include "busfs/bus.h"
#include "busfs/message.h"
#include "failalloc.h"
#include "unit.h"

#define NOMEM_TEST(name) \
    Test(nomem, name, .init = setup, .fini = teardown, .timeout = UNIT_TIMEOUT)

#define MAX_RUNS 5000 /* far more allocations than one send makes */

static struct bus *the_bus;
static struct bus_config cfg;
static char store_dir[PATH_MAX];

static void setup(void)
{
    unit_setup();
    unit_path(store_dir, "store");
    cfg = (struct bus_config){.store_dir = store_dir};
    struct bus_error err = {0};
    cr_assert_eq(bus_open(&cfg, &the_bus, &err), 0, "%s", err.reason);
}

static void teardown(void)
{
    failalloc_disarm();
    if (the_bus)
        bus_close(the_bus);
    the_bus = NULL;
    unit_teardown();
}

static uint64_t make_agent(const char *name)
{
    struct bus_agent_info info;
    struct bus_error err = {0};
    cr_assert_eq(bus_agent_create(the_bus, name, getuid(), getgid(), &info, &err), 0, "%s",
                 err.reason);
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

static long long journal_size(void)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/journal", store_dir);
    return unit_file_size(path);
}

/* Every message of the inbox is one line of JSON with the fields of an envelope and,
 * when want_payload is given, that payload. The listing holds the bus lock, so the
 * callback only notes the first bad message and the test asserts after it. */
struct inbox_check {
    const char *want_payload; /* compact JSON text, or NULL for any */
    unsigned n;
    char bad[512];
};

static int check_message(void *ctx, const struct bus_message *m)
{
    struct inbox_check *c = ctx;
    json_error_t e;
    json_t *v = json_loadb(m->envelope, m->len, 0, &e);
    json_t *payload = v ? json_object_get(v, "payload") : NULL;
    char *text = payload ? json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    if (!v || m->envelope[m->len - 1] != '\n' || !json_is_string(json_object_get(v, "msg_id")) ||
        !payload || (c->want_payload && strcmp(text, c->want_payload) != 0))
        snprintf(c->bad, sizeof c->bad, "a malformed envelope (%s): %.300s",
                 v ? "fields" : e.text, m->envelope);
    free(text);
    json_decref(v);
    c->n++;
    return c->bad[0] != '\0';
}

static unsigned check_inbox(const char *name, const char *want_payload)
{
    struct inbox_check c = {want_payload, 0, ""};
    bus_inbox_list(the_bus, id_of(name), 0, check_message, &c);
    cr_assert_eq(c.bad[0], '\0', "%s", c.bad);
    cr_assert_eq(c.n, depth_of(name));
    return c.n;
}

/* After the runs: the store passes --check, and loads back to the same inboxes. */
static void reload_and_compare(const char *const *names, size_t n, const char *want_payload)
{
    uint32_t depth[8];
    cr_assert_leq(n, 8);
    for (size_t i = 0; i < n; i++)
        depth[i] = depth_of(names[i]);
    bus_close(the_bus);
    the_bus = NULL;
    struct buf report;
    buf_init(&report);
    cr_assert_eq(bus_check_store(store_dir, &report), 0, "%s", report.data);
    buf_free(&report);
    struct bus_error err = {0};
    cr_assert_eq(bus_open(&cfg, &the_bus, &err), 0, "%s", err.reason);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(depth_of(names[i]), depth[i], "%s after a restart", names[i]);
        check_inbox(names[i], want_payload);
    }
}

/* The run's result: rc 0, or -ENOMEM with err saying so and nothing changed. */
static void expect_done_or_enomem(int rc, const struct bus_error *err, long run)
{
    cr_assert(rc == 0 || rc == -ENOMEM, "run %ld: %d (%s), not 0 or -ENOMEM", run, rc,
              err->reason);
    if (rc < 0)
        cr_assert_eq(err->code, ENOMEM, "run %ld: errno %d (%s)", run, err->code, err->reason);
}

static int draft_send(const char *from, const char *to, const char *body, size_t len,
                      struct bus_error *err)
{
    struct bus_draft *d = NULL;
    int rc = bus_draft_open(the_bus, id_of(from), to, getuid(), &d, err);
    if (rc < 0)
        return rc;
    /* Two writes, as a writer with a large message makes: the body grows. */
    size_t half = len / 2;
    rc = bus_draft_write(the_bus, d, body, half, err);
    if (rc == 0)
        rc = bus_draft_write(the_bus, d, body + half, len - half, err);
    if (rc == 0)
        rc = bus_draft_flush(the_bus, d, err);
    bus_draft_close(the_bus, d);
    return rc;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The events log on disk (STORE/events/events-*.jsonl in order): seq goes up by one
 * from line to line; returns how many lines say `event` (as "\"event\":\"KIND\""). */
static unsigned events_gapless(const char *kind)
{
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/events", store_dir);
    char *names[256];
    size_t n = 0;
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s: %s", dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < 256)
        if (strncmp(de->d_name, "events-", 7) == 0)
            names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    char want[64];
    snprintf(want, sizeof want, "\"event\":\"%s\"", kind);
    unsigned count = 0;
    unsigned long long prev = 0;
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "re");
        cr_assert_not_null(f, "%s", path);
        char line[4096];
        while (fgets(line, sizeof line, f)) {
            unsigned long long seq;
            cr_assert_eq(sscanf(line, "{\"seq\":%llu,", &seq), 1, "%s: %s", path, line);
            cr_assert(prev == 0 || seq == prev + 1, "events: seq %llu after %llu", seq, prev);
            prev = seq;
            count += strstr(line, want) != NULL;
        }
        fclose(f);
        free(names[i]);
    }
    return count;
}

static void draft_runs(const char *body, const char *want_payload)
{
    make_agent("alice");
    make_agent("bob");
    static const char *const names[] = {"alice", "bob"};
    unsigned sent = 0;
    long run;
    for (run = 1; run <= MAX_RUNS; run++) {
        long long before = journal_size();
        struct bus_error err = {0};
        failalloc_arm(run);
        int rc = draft_send("alice", "bob", body, strlen(body), &err);
        bool fired = failalloc_disarm();
        expect_done_or_enomem(rc, &err, run);
        if (rc == 0)
            sent++;
        else
            cr_assert_eq(journal_size(), before, "run %ld: a failed send changed the journal",
                         run);
        cr_assert_eq(check_inbox("bob", want_payload), sent, "run %ld", run);
        if (!fired)
            break;
    }
    cr_assert_leq(run, MAX_RUNS, "every run met a failure");
    cr_assert_gt(run, 3, "the send made almost no allocations: the injection is not wired");
    /* The bus works on after every failure. */
    struct bus_error err = {0};
    cr_assert_eq(draft_send("alice", "bob", body, strlen(body), &err), 0, "%s", err.reason);
    cr_assert_eq(check_inbox("bob", want_payload), sent + 1);
    reload_and_compare(names, 2, want_payload);
    /* An event line that could not be made stopped the log rather than skip its seq;
     * the start wrote the rest from the journal. */
    cr_assert_eq(events_gapless("delivered"), sent + 1, "one delivered event per message");
}

NOMEM_TEST(a_text_message_to_outbox_is_sent_whole_or_not_at_all)
{
    draft_runs("hello from a shell\n", "\"hello from a shell\"");
}

NOMEM_TEST(a_json_message_to_outbox_is_sent_whole_or_not_at_all)
{
    draft_runs("{\"task\": [1, 2, {\"k\": \"v\"}]}\n", "{\"task\":[1,2,{\"k\":\"v\"}]}");
}

NOMEM_TEST(a_large_binary_message_is_sent_whole_or_not_at_all)
{
    static char body[20000];
    for (size_t i = 0; i + 1 < sizeof body; i++)
        body[i] = (char)(1 + i % 250); /* control bytes and non-UTF-8: base64 */
    body[sizeof body - 1] = '\0';
    draft_runs(body, NULL);
}

static int send_records(const char *from, const char *text, unsigned *delivered,
                        struct bus_error *err)
{
    struct buf pending;
    buf_init(&pending);
    int rc = bus_send_write(the_bus, id_of(from), getuid(), &pending, text, strlen(text),
                            delivered, err);
    buf_free(&pending);
    return rc;
}

NOMEM_TEST(send_records_and_broadcasts_are_all_or_nothing)
{
    make_agent("alice");
    make_agent("bob");
    make_agent("carol");
    static const char *const names[] = {"alice", "bob", "carol"};
    const char *text = "{\"to\":\"bob\",\"payload\":{\"n\":[1,2,3]},\"correlation_id\":\"c-1\"}\n"
                       "{\"to\":\"all\",\"payload\":{\"n\":[1,2,3]},\"type\":\"note\"}\n";
    unsigned sent = 0;
    long run;
    for (run = 1; run <= MAX_RUNS; run++) {
        long long before = journal_size();
        struct bus_error err = {0};
        unsigned n = 0;
        failalloc_arm(run);
        int rc = send_records("alice", text, &n, &err);
        bool fired = failalloc_disarm();
        expect_done_or_enomem(rc, &err, run);
        if (rc == 0) {
            cr_assert_eq(n, 3, "run %ld: bob twice, carol once", run);
            sent++;
        } else {
            cr_assert_eq(journal_size(), before, "run %ld: a failed send changed the journal",
                         run);
        }
        cr_assert_eq(check_inbox("bob", "{\"n\":[1,2,3]}"), 2 * sent, "run %ld", run);
        cr_assert_eq(check_inbox("carol", "{\"n\":[1,2,3]}"), sent, "run %ld", run);
        if (!fired)
            break;
    }
    cr_assert_leq(run, MAX_RUNS);
    cr_assert_gt(run, 3);
    reload_and_compare(names, 3, "{\"n\":[1,2,3]}");
}

struct first {
    uint64_t number;
};

static int first_number(void *ctx, const struct bus_message *m)
{
    struct first *f = ctx;
    f->number = m->number;
    return 1;
}

NOMEM_TEST(an_ack_and_its_reply_are_all_or_nothing)
{
    make_agent("alice");
    uint64_t bob = make_agent("bob");
    static const char *const names[] = {"alice", "bob"};
    const char *text = "{\"to\":\"bob\",\"payload\":\"do it\",\"requires_ack\":true}\n";
    unsigned acked = 0;
    long run;
    for (run = 1; run <= MAX_RUNS; run++) {
        struct bus_error err = {0};
        unsigned n = 0;
        if (depth_of("bob") == 0)
            cr_assert_eq(send_records("alice", text, &n, &err), 0, "%s", err.reason);
        struct first f = {0};
        bus_inbox_list(the_bus, bob, 0, first_number, &f);
        cr_assert_neq(f.number, 0);
        long long before = journal_size();
        uint32_t bob_depth = depth_of("bob");
        failalloc_arm(run);
        int rc = bus_ack(the_bus, bob, f.number, NULL, getuid(), &err);
        bool fired = failalloc_disarm();
        expect_done_or_enomem(rc, &err, run);
        if (rc == 0) {
            acked++;
            cr_assert_eq(depth_of("bob"), bob_depth - 1, "run %ld", run);
        } else {
            cr_assert_eq(journal_size(), before, "run %ld: a failed ack changed the journal",
                         run);
            cr_assert_eq(depth_of("bob"), bob_depth, "run %ld: a failed ack took the message",
                         run);
        }
        cr_assert_eq(check_inbox("alice", NULL), acked, "run %ld: one ack reply per ack", run);
        if (!fired)
            break;
    }
    cr_assert_leq(run, MAX_RUNS);
    cr_assert_gt(run, 3);
    reload_and_compare(names, 2, NULL);
}

NOMEM_TEST(an_agent_is_created_whole_or_not_at_all)
{
    long run;
    unsigned made = 0;
    for (run = 1; run <= MAX_RUNS; run++) {
        char name[32];
        snprintf(name, sizeof name, "agent%ld", run);
        long long before = journal_size();
        struct bus_agent_info info;
        struct bus_error err = {0};
        failalloc_arm(run);
        int rc = bus_agent_create(the_bus, name, getuid(), getgid(), &info, &err);
        bool fired = failalloc_disarm();
        expect_done_or_enomem(rc, &err, run);
        if (rc == 0) {
            made++;
            cr_assert_eq(bus_agent_by_name(the_bus, name, &info), 0, "run %ld", run);
        } else {
            cr_assert_eq(journal_size(), before, "run %ld: a failed mkdir changed the journal",
                         run);
            cr_assert_neq(bus_agent_by_name(the_bus, name, &info), 0, "run %ld", run);
        }
        if (!fired)
            break;
    }
    cr_assert_leq(run, MAX_RUNS);
    /* Every agent made is there after a restart, and only those. */
    bus_close(the_bus);
    the_bus = NULL;
    struct bus_error err = {0};
    cr_assert_eq(bus_open(&cfg, &the_bus, &err), 0, "%s", err.reason);
    unsigned found = 0;
    for (long i = 1; i <= run; i++) {
        char name[32];
        snprintf(name, sizeof name, "agent%ld", i);
        struct bus_agent_info info;
        found += bus_agent_by_name(the_bus, name, &info) == 0;
    }
    cr_assert_eq(found, made);
    /* The first event lines are made here: one that could not be made stopped the log
     * rather than skip its seq, and the start wrote the rest from the journal. */
    cr_assert_eq(events_gapless("agent_added"), made, "one agent_added event per agent");
}

NOMEM_TEST(a_health_report_is_taken_whole_or_not_at_all)
{
    uint64_t id = make_agent("alice");
    const char *report = "{\"status\":\"degraded\",\"reason\":\"disk slow\",\"queue\":12}\n";
    long run;
    for (run = 1; run <= MAX_RUNS; run++) {
        long long before = journal_size();
        struct bus_error err = {0};
        failalloc_arm(run);
        int rc = bus_health_report(the_bus, id, getuid(), report, strlen(report), &err);
        bool fired = failalloc_disarm();
        expect_done_or_enomem(rc, &err, run);
        if (rc < 0)
            cr_assert_eq(journal_size(), before, "run %ld: a failed report changed the journal",
                         run);
        struct buf out;
        buf_init(&out);
        cr_assert_eq(bus_health_render(the_bus, id, &out), 0);
        json_error_t e;
        json_t *v = json_loadb(out.data, out.len, 0, &e);
        cr_assert_not_null(v, "run %ld: health is not JSON (%s): %s", run, e.text, out.data);
        json_decref(v);
        buf_free(&out);
        if (!fired)
            break;
    }
    cr_assert_leq(run, MAX_RUNS);
}
