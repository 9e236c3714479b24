/*
 * test_leases.c — SPEC §10: agents/A/claim leases the oldest pending message
 * under a fencing token; inflight/ lists the leases (rm acks, touch
 * extends); ctl ack/extend/nak with ESTALE for a token that is not the
 * current lease; expiry puts a message back in its place, the N-th lease
 * (--max-deliver) sends it to dead/ (rm discards, retry brings it back);
 * leases, dead letters and the token counter survive SIGTERM and kill -9;
 * §9 ownership of claim, inflight/ and dead/; §7 capacity and rmdir.
 *
 * Waits for the server's expiry (checked every second) poll the agent's
 * ctl for up to 15 s (BUS_EXPIRY_MS), many times the interval; no test
 * asserts how fast anything happens.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifdef SYS_poll
#define POLL_SYSCALL SYS_poll
#else
#define POLL_SYSCALL (-1L)
#endif

#define BUS_EXPIRY_MS 15000 /* waiting for an expiry checked every second */

/* ---- claims ------------------------------------------------------------ */

/* One claim document: the envelope plus "lease". */
struct lease {
    json_t *doc;     /* the whole document */
    char text[8192]; /* as read, with its newline */
    char msg_id[128];
    char payload[256]; /* the payload when it is a string, else "" */
    json_int_t token;
    json_int_t delivery;
    char deadline[64];
    char file[512]; /* "inflight/<name>" */
    char name[512]; /* <name> */
};

static void lease_free(struct lease *l)
{
    json_decref(l->doc);
    l->doc = NULL;
}

/* Parses and checks what one open of claim gave (SPEC §10). */
static void parse_lease(const char *text, size_t len, struct lease *l, const char *what)
{
    memset(l, 0, sizeof *l);
    cr_assert(len >= 3 && len < sizeof l->text, "%s: a claim of %zu bytes: [%s]", what, len, text);
    memcpy(l->text, text, len);
    l->text[len] = '\0';
    cr_assert(l->text[len - 1] == '\n' && strchr(l->text, '\n') == l->text + len - 1,
              "%s: the claim is not one line ending in a newline: [%s]", what, l->text);
    json_error_t e;
    l->doc = json_loadb(l->text, len - 1, JSON_REJECT_DUPLICATES, &e);
    cr_assert(l->doc && json_is_object(l->doc), "%s: the claim is not a JSON object (%s): [%s]",
              what, l->doc ? "other value" : e.text, l->text);
    /* "lease" is the last field: the document ends with the lease object. */
    const char *at = strstr(l->text, ",\"lease\":{");
    cr_assert(at && strcmp(strchr(at, '}'), "}}\n") == 0,
              "%s: \"lease\" is not the last field: [%s]", what, l->text);

    json_t *lease = json_object_get(l->doc, "lease");
    cr_assert(json_is_object(lease), "%s: no lease object: [%s]", what, l->text);
    bus_assert_keys(lease, "token", "deadline", "delivery", "file", NULL);
    json_t *env = json_deep_copy(l->doc);
    json_object_del(env, "lease");
    bus_assert_envelope(env, NULL, NULL);
    json_decref(env);

    snprintf(l->msg_id, sizeof l->msg_id, "%s", bus_str(l->doc, "msg_id"));
    const char *p = json_string_value(json_object_get(l->doc, "payload"));
    snprintf(l->payload, sizeof l->payload, "%s", p ? p : "");
    l->token = bus_int(lease, "token");
    l->delivery = bus_int(lease, "delivery");
    snprintf(l->deadline, sizeof l->deadline, "%s", bus_str(lease, "deadline"));
    snprintf(l->file, sizeof l->file, "%s", bus_str(lease, "file"));
    cr_assert(l->token > 0, "%s: token %lld is not positive", what, (long long)l->token);
    cr_assert(l->delivery >= 1, "%s: delivery %lld", what, (long long)l->delivery);
    cr_assert(bus_match(BUS_TIMESTAMP_RE, l->deadline), "%s: deadline %s is not RFC 3339 UTC", what,
              l->deadline);
    char re[512];
    snprintf(re, sizeof re, "inflight/[0-9]{20}-%s\\.%lld\\.json", l->msg_id, (long long)l->token);
    cr_assert(bus_match(re, l->file), "%s: lease file %s is not inflight/<number>-%s.%lld.json",
              what, l->file, l->msg_id, (long long)l->token);
    snprintf(l->name, sizeof l->name, "%s", l->file + strlen("inflight/"));
}

/* `cat agents/AGENT/claim`, which must lease one message. */
static void claim(const char *agent, struct lease *l)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "timeout 10 cat agents/%s/claim", agent);
    cr_assert_eq(status, 0, "cat agents/%s/claim: status %d (124: it blocked): %s", agent, status,
                 r.err);
    parse_lease(r.out, r.out_len, l, "cat claim");
    bus_cmd_free(&r);
}

/* A claim with O_NONBLOCK: 0 and the lease, the errno, or -1 at
 * end-of-file (l untouched but for the errno and end-of-file). */
static int claim_nonblock(const char *agent, struct lease *l)
{
    int fd = open(AT("agents/%s/claim", agent), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    cr_assert(fd >= 0, "open agents/%s/claim: %s", agent, strerror(errno));
    char buf[8192];
    size_t n = 0;
    for (;;) {
        ssize_t got = read(fd, buf + n, sizeof buf - 1 - n);
        if (got < 0) {
            int err = errno;
            close(fd);
            cr_assert(n == 0, "a read of claim failed (%s) after %zu bytes", strerror(err), n);
            return err;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        cr_assert(n < sizeof buf - 1, "a claim larger than %zu bytes", sizeof buf);
    }
    close(fd);
    buf[n] = '\0';
    if (n == 0)
        return -1;
    parse_lease(buf, n, l, "O_NONBLOCK claim");
    return 0;
}

/* ---- small helpers ----------------------------------------------------- */

/* A send record from FROM to TO with a string payload; extra: more fields
 * (",\"requires_ack\":true"), or "". */
static void send_rec(const char *from, const char *to, const char *payload, const char *extra)
{
    char rec[1024];
    snprintf(rec, sizeof rec, "{\"to\":\"%s\",\"payload\":\"%s\"%s}\n", to, payload, extra);
    int err = bus_append(AT("agents/%s/send", from), rec);
    cr_assert_eq(err, 0, "send %s from %s: %s", rec, from, strerror(err));
}

/* Writes one line to agents/AGENT/ctl; 0 or the errno. */
static int ctl(const char *agent, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ctl(const char *agent, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    size_t n = strlen(line);
    line[n++] = '\n';
    line[n] = '\0';
    return bus_write(AT("agents/%s/ctl", agent), line);
}

static json_int_t ctl_int(const char *agent, const char *key)
{
    json_t *c = bus_ctl(agent);
    json_int_t v = bus_int(c, key);
    json_decref(c);
    return v;
}

/* Polls agents/AGENT/ctl until KEY is WANT (up to timeout_ms). */
static void await_ctl(const char *agent, const char *key, json_int_t want, int timeout_ms)
{
    long long end = bus_now_ms() + timeout_ms;
    json_int_t got;
    while ((got = ctl_int(agent, key)) != want) {
        cr_assert(bus_now_ms() < end, "agents/%s/ctl: %s stayed %lld for %d ms (want %lld)", agent,
                  key, (long long)got, timeout_ms, (long long)want);
        bus_pause_ms(50);
    }
}

/* The names in a directory of the mount, one a line ("" when empty). */
static char *listing(const char *rel)
{
    size_t n;
    char **names = bus_ls(AT("%s", rel), &n);
    cr_assert(names, "ls %s: %s", rel, strerror(errno));
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(names[i]) + 1;
    char *out = calloc(1, len);
    for (size_t i = 0; i < n; i++) {
        strcat(out, names[i]);
        strcat(out, "\n");
    }
    bus_ls_free(names, n);
    return out;
}

/* The one file in a directory of the mount. */
static char *only_file(const char *rel)
{
    size_t n;
    char **names = bus_ls(AT("%s", rel), &n);
    cr_assert(names, "ls %s: %s", rel, strerror(errno));
    cr_assert_eq(n, 1, "%s holds %zu files, want 1", rel, n);
    char *name = strdup(names[0]);
    bus_ls_free(names, n);
    return name;
}

/* The lease as agents/AGENT/<lease file> shows it now. */
static void reread_lease(const char *agent, const char *file, struct lease *l)
{
    size_t len;
    char *text = bus_read_ok(AT("agents/%s/%s", agent, file), &len);
    parse_lease(text, len, l, file);
    free(text);
}

/* `sh -c CMD` that must fail, with strerror(err) in its stderr. (dash
 * reports any failed write of its builtin echo as "I/O error": commands
 * whose write() fails run under bash.) */
static void sh_fails(int err, const char *cmd)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "%s", cmd);
    cr_assert(status > 0 && status < 124, "`%s` ended with %d, want a failure (%s)", cmd, status,
              strerror(err));
    cr_assert(strstr(r.err, strerror(err)), "`%s` said [%s], want \"%s\"", cmd, r.err,
              strerror(err));
    bus_cmd_free(&r);
}

static void sh_ok(const char *cmd)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "%s", cmd);
    cr_assert_eq(status, 0, "`%s`: status %d: %s", cmd, status, r.err);
    bus_cmd_free(&r);
}

static void assert_mode(const char *rel, mode_t want)
{
    struct stat st;
    cr_assert(stat(AT("%s", rel), &st) == 0, "stat %s: %s", rel, strerror(errno));
    cr_assert_eq(st.st_mode, want, "%s has mode %o, want %o", rel, (unsigned)st.st_mode,
                 (unsigned)want);
}

/* The payloads of the inbox in `ls` order, one a line. */
static char *inbox_payloads(const char *agent)
{
    json_t *in = bus_inbox(agent);
    char *out = calloc(1, 4096);
    size_t i;
    json_t *env;
    json_array_foreach(in, i, env)
    {
        const char *p = json_string_value(json_object_get(env, "payload"));
        strncat(out, p ? p : "?", 4000 - strlen(out));
        strcat(out, "\n");
    }
    json_decref(in);
    return out;
}

/* The payload `cat next` shows ("" if it fails). */
static char *next_payload(const char *agent)
{
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "timeout 10 cat agents/%s/next", agent);
    cr_assert_eq(status, 0, "cat agents/%s/next: status %d", agent, status);
    json_error_t e;
    json_t *env = json_loads(r.out, 0, &e);
    cr_assert(env, "next is not JSON (%s): [%s]", e.text, r.out);
    char *p = strdup(bus_str(env, "payload"));
    json_decref(env);
    bus_cmd_free(&r);
    return p;
}

/* ---- set-ups ----------------------------------------------------------- */

static void start_lease_30(void)
{
    bus_start(&bus, "--lease", "30", NULL);
}

static void start_lease_2(void)
{
    bus_start(&bus, "--lease", "2", NULL);
}

static void start_lease_1_max_2(void)
{
    bus_start(&bus, "--lease", "1", "--max-deliver", "2", NULL);
}

static void start_max_1(void)
{
    bus_start(&bus, "--lease", "300", "--max-deliver", "1", NULL);
}

static void start_capacity_2(void)
{
    bus_start(&bus, "--lease", "300", "--inbox-capacity", "2", NULL);
}

/* ---- claim ------------------------------------------------------------- */

BUS_TEST_WITH(leases, cat_claim_leases_the_oldest_and_shows_the_lease, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    json_t *before = bus_inbox("bob");
    const char *first_id = bus_str(json_array_get(before, 0), "msg_id");
    char *names_before = listing("agents/bob/inbox");

    struct lease l;
    claim("bob", &l);
    cr_assert_str_eq(l.payload, "one", "claim did not lease the oldest message");
    cr_assert_str_eq(l.msg_id, first_id);
    cr_assert_str_eq(bus_str(l.doc, "from"), "alice");
    cr_assert_str_eq(bus_str(l.doc, "to"), "bob");
    cr_assert_eq(l.delivery, 1, "the first claim has delivery %lld", (long long)l.delivery);
    /* The envelope part is the inbox envelope, unchanged. */
    json_t *env = json_deep_copy(l.doc);
    json_object_del(env, "lease");
    cr_assert(json_equal(env, json_array_get(before, 0)), "the claimed envelope differs from the "
                                                          "inbox file it came from");
    json_decref(env);

    /* inflight/ lists it under the lease's file name, with the same content. */
    char *name = only_file("agents/bob/inflight");
    cr_assert_str_eq(name, l.name, "inflight/ lists %s, the lease says %s", name, l.file);
    size_t len;
    char *text = bus_read_ok(AT("agents/bob/%s", l.file), &len);
    cr_assert_str_eq(text, l.text, "cat of the inflight file differs from the claim");
    struct stat st;
    cr_assert(stat(AT("agents/bob/%s", l.file), &st) == 0);
    cr_assert_eq((size_t)st.st_size, len, "the inflight file's size %lld is not its %zu bytes",
                 (long long)st.st_size, len);
    free(text);
    free(name);
    assert_mode("agents/bob/claim", S_IFREG | 0400);
    assert_mode("agents/bob/inflight", S_IFDIR | 0700);
    assert_mode("agents/bob/dead", S_IFDIR | 0700);
    char rel[600];
    snprintf(rel, sizeof rel, "agents/bob/%s", l.file);
    assert_mode(rel, S_IFREG | 0600);
    /* The number in the inflight name is the inbox file's delivery number. */
    cr_assert(strncmp(names_before, l.name, 21) == 0, "inflight/%s does not carry the delivery "
              "number of the inbox file %s", l.name, names_before);

    /* It left inbox/ and next. */
    char *payloads = inbox_payloads("bob");
    cr_assert_str_eq(payloads, "two\n", "inbox after the claim: %s", payloads);
    free(payloads);
    char *np = next_payload("bob");
    cr_assert_str_eq(np, "two", "next still shows the leased message");
    free(np);
    free(names_before);

    json_t *c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "leased"), 1);
    cr_assert_eq(bus_int(c, "inbox_depth"), 1);
    cr_assert_eq(bus_int(c, "dead"), 0);
    cr_assert_eq(bus_int(c, "redelivered_total"), 0);
    json_decref(c);

    /* The next claim gets the other one, with a larger token. */
    struct lease l2;
    claim("bob", &l2);
    cr_assert_str_eq(l2.payload, "two");
    cr_assert_gt(l2.token, l.token, "tokens %lld then %lld", (long long)l.token,
                 (long long)l2.token);
    cr_assert_eq(bus_count(AT("agents/bob/inflight")), 2);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0);
    lease_free(&l);
    lease_free(&l2);
    json_decref(before);
}

BUS_TEST_WITH(leases, one_open_leases_one_message_and_then_reads_eof, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    bus_send("alice", "bob", "three");

    /* Reads of 7 bytes: together one document, then end-of-file. */
    int fd = open(AT("agents/bob/claim"), O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0, "open claim: %s", strerror(errno));
    char buf[8192];
    size_t n = 0;
    int reads = 0;
    for (;;) {
        ssize_t got = read(fd, buf + n, 7);
        cr_assert(got >= 0, "read of claim: %s", strerror(errno));
        if (got == 0)
            break;
        n += (size_t)got;
        reads++;
        cr_assert(n < sizeof buf - 8, "claim gives more than one document");
    }
    cr_assert_gt(reads, 2);
    /* More reads after end-of-file stay at end-of-file and lease nothing. */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(read(fd, buf + n, 100), 0, "a read after end-of-file gave data");
    cr_assert_eq(close(fd), 0);
    buf[n] = '\0';
    struct lease l;
    parse_lease(buf, n, &l, "claim read 7 bytes at a time");
    cr_assert_str_eq(l.payload, "one");
    cr_assert_eq(ctl_int("bob", "leased"), 1, "one open leased more than one message");
    cr_assert_eq(ctl_int("bob", "inbox_depth"), 2);

    /* `cat claim` leases exactly one. */
    struct lease l2;
    claim("bob", &l2);
    cr_assert_str_eq(l2.payload, "two");
    cr_assert_eq(ctl_int("bob", "leased"), 2);
    char *payloads = inbox_payloads("bob");
    cr_assert_str_eq(payloads, "three\n");
    free(payloads);

    /* An open that never reads leases nothing. */
    fd = open(AT("agents/bob/claim"), O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0);
    cr_assert_eq(close(fd), 0);
    cr_assert_eq(ctl_int("bob", "leased"), 2, "an open without a read leased a message");
    cr_assert_eq(ctl_int("bob", "inbox_depth"), 1);
    lease_free(&l);
    lease_free(&l2);
}

BUS_TEST_WITH(leases, a_blocked_claim_is_woken_by_a_send, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_proc cat;
    bus_spawn(&bus, &cat, "exec cat agents/bob/claim");
    cr_assert(bus_wait_in_syscall(cat.pid, SYS_read, -1, BUS_WAIT_MS),
              "cat agents/bob/claim never blocked in read()");
    bus_sync(&bus);
    cr_assert(bus_proc_running(&cat), "cat of an empty claim returned at once");

    sh_ok("echo wake up > agents/alice/outbox/bob");
    char *out;
    int status = bus_proc_wait(&cat, BUS_WAIT_MS, &out);
    cr_assert_eq(status, 0, "the blocked claim ended with status %d (-1: still blocked)", status);
    struct lease l;
    parse_lease(out, strlen(out), &l, "blocked cat claim");
    cr_assert_str_eq(l.payload, "wake up");
    cr_assert_eq(l.delivery, 1);
    free(out);
    cr_assert_eq(ctl_int("bob", "leased"), 1);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0);
    char *name = only_file("agents/bob/inflight");
    cr_assert_str_eq(name, l.name);
    free(name);
    lease_free(&l);
}

BUS_TEST_WITH(leases, nonblocking_claim_of_an_empty_inbox_gives_eagain, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct lease l;
    int err = claim_nonblock("bob", &l);
    cr_assert_eq(err, EAGAIN, "O_NONBLOCK claim of an empty inbox: %s, want EAGAIN",
                 strerror(err));
    cr_assert_eq(ctl_int("bob", "leased"), 0);

    bus_send("alice", "bob", "there now");
    err = claim_nonblock("bob", &l);
    cr_assert_eq(err, 0, "O_NONBLOCK claim with a message pending: %s", strerror(err));
    cr_assert_str_eq(l.payload, "there now");
    /* Only a leased message left: EAGAIN again, the lease unchanged. */
    struct lease again;
    err = claim_nonblock("bob", &again);
    cr_assert_eq(err, EAGAIN, "O_NONBLOCK claim with only a leased message: %s", strerror(err));
    char *name = only_file("agents/bob/inflight");
    cr_assert_str_eq(name, l.name);
    free(name);
    lease_free(&l);
}

BUS_TEST_WITH(leases, poll_reports_pollin_when_a_message_arrives, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    const char *outbox = AT("agents/alice/outbox/bob");
    int fd = open(AT("agents/bob/claim"), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    cr_assert(fd >= 0, "open claim: %s", strerror(errno));
    struct pollfd p = {fd, POLLIN, 0};
    int ready = poll(&p, 1, 0);
    cr_assert_eq(ready, 0, "poll of an empty claim reports %#x", (unsigned)p.revents);

    pid_t parent = (pid_t)syscall(SYS_gettid);
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        if (!bus_wait_in_syscall(parent, POLL_SYSCALL, SYS_ppoll, BUS_WAIT_MS))
            _exit(2);
        _exit(bus_write(outbox, "ring") == 0 ? 0 : 1);
    }
    p.revents = 0;
    ready = poll(&p, 1, 15000);
    int sender = bus_wait_child(child, BUS_WAIT_MS);
    cr_assert_eq(sender, 0, "the sending child ended with %d", sender);
    cr_assert(ready == 1 && (p.revents & POLLIN),
              "poll did not report POLLIN when a message arrived (ready %d, revents %#x)", ready,
              (unsigned)p.revents);
    char buf[8192];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    cr_assert(n > 0, "read of claim after POLLIN: %s", strerror(errno));
    buf[n] = '\0';
    close(fd);
    struct lease l;
    parse_lease(buf, (size_t)n, &l, "claim after POLLIN");
    cr_assert_str_eq(l.payload, "ring");
    cr_assert_eq(ctl_int("bob", "leased"), 1);
    lease_free(&l);
}

BUS_TEST_WITH(leases, a_draining_agents_empty_claim_gives_eof, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "left over");
    sh_ok("echo drain > agents/bob/ctl");
    /* Pending messages are still claimed while draining. */
    struct lease l;
    claim("bob", &l);
    cr_assert_str_eq(l.payload, "left over");

    /* While a lease is out it may come back (its worker may die): a claimer waits. */
    struct lease none;
    int err = claim_nonblock("bob", &none);
    cr_assert_eq(err, EAGAIN, "O_NONBLOCK claim of a draining agent with a lease out: %s "
                 "(want EAGAIN)", err == 0 ? "a lease" : err < 0 ? "end-of-file" : strerror(err));
    struct bus_proc cat;
    bus_spawn(&bus, &cat, "exec cat agents/bob/claim");
    cr_assert(bus_wait_in_syscall(cat.pid, SYS_read, -1, BUS_WAIT_MS),
              "cat agents/bob/claim did not wait for the lease");
    cr_assert_eq(ctl_int("bob", "leased"), 1);

    /* The lease acked, nothing can come any more: end-of-file, for the waiter too. */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm agents/bob/%s", l.file);
    sh_ok(cmd);
    char *out = NULL;
    int status = bus_proc_wait(&cat, BUS_WAIT_MS, &out);
    cr_assert_eq(status, 0, "the waiting claim ended with %d", status);
    cr_assert_str_empty(out ? out : "", "a draining agent's empty claim printed: %s", out);
    free(out);
    struct bus_cmd r;
    status = bus_sh(&bus, &r, "timeout 10 cat agents/bob/claim");
    cr_assert_eq(status, 0, "cat of a draining agent's empty claim: status %d (124: it blocked)",
                 status);
    cr_assert_str_empty(r.out, "a draining agent's empty claim printed: %s", r.out);
    bus_cmd_free(&r);
    err = claim_nonblock("bob", &none);
    cr_assert_eq(err, -1, "O_NONBLOCK claim of a draining empty agent: %s (want end-of-file)",
                 err == 0 ? "a lease" : strerror(err));
    lease_free(&l);
}

BUS_TEST_WITH(leases, drain_wakes_a_blocked_claim_with_eof, start_lease_30)
{
    bus_agents(&bus, "bob", NULL);
    struct bus_proc cat;
    bus_spawn(&bus, &cat, "exec cat agents/bob/claim");
    cr_assert(bus_wait_in_syscall(cat.pid, SYS_read, -1, BUS_WAIT_MS),
              "cat agents/bob/claim never blocked");
    bus_sync(&bus);
    sh_ok("echo drain > agents/bob/ctl");
    char *out;
    int status = bus_proc_wait(&cat, BUS_WAIT_MS, &out);
    cr_assert_eq(status, 0, "a blocked claim ended with %d after drain (-1: still blocked)",
                 status);
    cr_assert_str_empty(out);
    free(out);
}

/* ---- ack --------------------------------------------------------------- */

BUS_TEST_WITH(leases, rm_of_the_inflight_file_acks_and_sends_the_ack_message, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    send_rec("alice", "bob", "do it", ",\"requires_ack\":true,\"correlation_id\":\"job-7\"");
    send_rec("alice", "bob", "and this", ",\"requires_ack\":true");
    struct lease l;
    claim("bob", &l);
    cr_assert_str_eq(l.payload, "do it");

    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm agents/bob/%s", l.file);
    sh_ok(cmd);
    cr_assert_eq(bus_count(AT("agents/bob/inflight")), 0, "the acked lease is still listed");
    json_t *c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "leased"), 0);
    cr_assert_eq(bus_int(c, "acked_total"), 1);
    cr_assert_eq(bus_int(c, "inbox_depth"), 1);
    json_decref(c);

    json_t *in = bus_inbox("alice");
    cr_assert_eq(json_array_size(in), 1, "alice got %zu messages, want the ack",
                 json_array_size(in));
    json_t *ack = json_array_get(in, 0);
    bus_assert_envelope(ack, "bob", "alice");
    cr_assert_str_eq(bus_str(ack, "type"), "ack");
    json_t *want = json_pack("{s:s}", "ack", l.msg_id);
    cr_assert(json_equal(json_object_get(ack, "payload"), want), "the ack's payload is not "
                                                                 "{\"ack\":\"<msg_id>\"}");
    json_decref(want);
    cr_assert_str_eq(bus_str(ack, "correlation_id"), "job-7");
    json_decref(in);

    /* The same with ctl: ack MSG_ID TOKEN. */
    struct lease l2;
    claim("bob", &l2);
    snprintf(cmd, sizeof cmd, "echo 'ack %s %lld' > agents/bob/ctl", l2.msg_id,
             (long long)l2.token);
    sh_ok(cmd);
    cr_assert_eq(bus_count(AT("agents/bob/inflight")), 0);
    cr_assert_eq(ctl_int("bob", "acked_total"), 2);
    in = bus_inbox("alice");
    cr_assert_eq(json_array_size(in), 2);
    ack = json_array_get(in, 1);
    cr_assert_str_eq(bus_str(ack, "type"), "ack");
    cr_assert_str_eq(bus_str(json_object_get(ack, "payload"), "ack"), l2.msg_id);
    json_decref(in);

    /* Acked is gone: the old name and a second ack find nothing. */
    errno = 0;
    cr_assert(unlink(AT("agents/bob/%s", l.file)) < 0 && errno == ENOENT,
              "rm of an acked lease file: %s", strerror(errno));
    int err = ctl("bob", "ack %s %lld", l2.msg_id, (long long)l2.token);
    cr_assert_eq(err, ENOENT, "a second ack of an acked message: %s, want ENOENT", strerror(err));
    lease_free(&l);
    lease_free(&l2);
}

BUS_TEST_WITH(leases, a_late_workers_ack_is_estale_after_its_lease_was_granted_again,
              start_lease_2)
{
    bus_agents(&bus, "alice", "bob", NULL);
    send_rec("alice", "bob", "slow job", ",\"requires_ack\":true");
    struct lease late;
    claim("bob", &late);
    /* The late worker sleeps past its deadline: the message is pending again. */
    await_ctl("bob", "leased", 0, BUS_EXPIRY_MS);
    cr_assert_eq(ctl_int("bob", "inbox_depth"), 1);
    cr_assert_eq(ctl_int("bob", "redelivered_total"), 1);

    struct lease now;
    claim("bob", &now);
    /* Keep the new lease well clear of expiry while the test looks at it. */
    cr_assert_eq(ctl("bob", "extend %s %lld 600", now.msg_id, (long long)now.token), 0);
    cr_assert_str_eq(now.msg_id, late.msg_id);
    cr_assert_eq(now.delivery, 2, "the second claim has delivery %lld", (long long)now.delivery);
    cr_assert_gt(now.token, late.token);
    lease_free(&now); /* its document is read again */
    reread_lease("bob", now.file, &now);
    char before[sizeof now.text];
    memcpy(before, now.text, sizeof before);

    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/bob/errors"));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash -c \"echo 'ack %s %lld' > agents/bob/ctl\"", late.msg_id,
             (long long)late.token);
    sh_fails(ESTALE, cmd);
    bus_assert_logged(AT("errors"), top, "ack with an old token");
    bus_assert_logged(AT("agents/bob/errors"), mine, "ack with an old token");
    /* The other verbs with the old token, and ack without a token. */
    cr_assert_eq(ctl("bob", "extend %s %lld 900", late.msg_id, (long long)late.token), ESTALE);
    cr_assert_eq(ctl("bob", "nak %s %lld", late.msg_id, (long long)late.token), ESTALE);
    cr_assert_eq(ctl("bob", "ack %s", late.msg_id), ESTALE,
                 "ack MSG_ID without a token of a leased message");
    /* A token from the future is not the current lease either. */
    cr_assert_eq(ctl("bob", "ack %s %lld", late.msg_id, (long long)now.token + 1000), ESTALE);
    /* The old file name is gone. */
    errno = 0;
    cr_assert(unlink(AT("agents/bob/%s", late.file)) < 0 && errno == ENOENT,
              "rm of the old lease's file: %s, want ENOENT", strerror(errno));
    errno = 0;
    struct stat st;
    cr_assert(stat(AT("agents/bob/%s", late.file), &st) < 0 && errno == ENOENT);

    /* Nothing changed: still leased to the new token, same deadline. */
    char *name = only_file("agents/bob/inflight");
    cr_assert_str_eq(name, now.name);
    free(name);
    struct lease still;
    reread_lease("bob", now.file, &still);
    cr_assert_str_eq(still.text, before, "a refused ack/extend/nak changed the lease");
    json_t *c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "leased"), 1);
    cr_assert_eq(bus_int(c, "acked_total"), 0);
    cr_assert_eq(bus_int(c, "inbox_depth"), 0);
    json_decref(c);
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0, "a refused ack sent an ack message");

    /* The current holder acks. */
    cr_assert_eq(ctl("bob", "ack %s %lld", now.msg_id, (long long)now.token), 0);
    cr_assert_eq(ctl_int("bob", "acked_total"), 1);
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 1);
    lease_free(&late);
    lease_free(&now);
    lease_free(&still);
}

BUS_TEST_WITH(leases, unknown_msg_id_in_ctl_gives_enoent, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    struct lease l;
    claim("bob", &l);
    /* Same store id and date, another counter. */
    char other[128];
    snprintf(other, sizeof other, "%.*s00000000000000009999", (int)(strlen(l.msg_id) - 20),
             l.msg_id);
    cr_assert_eq(ctl("bob", "ack %s %lld", other, (long long)l.token), ENOENT);
    cr_assert_eq(ctl("bob", "extend %s %lld", other, (long long)l.token), ENOENT);
    cr_assert_eq(ctl("bob", "nak %s %lld", other, (long long)l.token), ENOENT);
    cr_assert_eq(ctl("bob", "retry %s", other), ENOENT);
    cr_assert_eq(ctl_int("bob", "leased"), 1);
    lease_free(&l);
}

/* ---- extend ------------------------------------------------------------ */

BUS_TEST_WITH(leases, touch_and_ctl_extend_move_the_deadline_later, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "long job");
    struct lease l0;
    claim("bob", &l0);
    bus_pause_ms(20); /* so that "now + lease" is after the claim's */

    char cmd[1024];
    snprintf(cmd, sizeof cmd, "touch agents/bob/%s", l0.file);
    sh_ok(cmd);
    struct lease l1;
    reread_lease("bob", l0.file, &l1);
    cr_assert_eq(l1.token, l0.token, "touch changed the token");
    cr_assert_str_eq(l1.file, l0.file);
    cr_assert(strcmp(l1.deadline, l0.deadline) > 0, "touch: deadline %s, was %s", l1.deadline,
              l0.deadline);

    snprintf(cmd, sizeof cmd, "echo 'extend %s %lld 600' > agents/bob/ctl", l0.msg_id,
             (long long)l0.token);
    sh_ok(cmd);
    struct lease l2;
    reread_lease("bob", l0.file, &l2);
    cr_assert_eq(l2.token, l0.token, "extend changed the token");
    cr_assert(strcmp(l2.deadline, l1.deadline) > 0, "extend 600: deadline %s, was %s",
              l2.deadline, l1.deadline);
    /* 600 s from about now: at least 500 s after the first deadline (now + 30 s). */
    struct tm a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    cr_assert(strptime(l0.deadline, "%Y-%m-%dT%H:%M:%S", &a));
    cr_assert(strptime(l2.deadline, "%Y-%m-%dT%H:%M:%S", &b));
    double moved = difftime(timegm(&b), timegm(&a));
    cr_assert(moved >= 500, "extend 600 moved the deadline by %.0f s", moved);
    /* An extended lease is still the same lease: it acks. */
    cr_assert_eq(ctl_int("bob", "leased"), 1);
    cr_assert_eq(unlink(AT("agents/bob/%s", l0.file)), 0, "rm after extend: %s",
                 strerror(errno));
    cr_assert_eq(ctl_int("bob", "acked_total"), 1);
    lease_free(&l0);
    lease_free(&l1);
    lease_free(&l2);
}

/* ---- nak --------------------------------------------------------------- */

BUS_TEST_WITH(leases, nak_puts_the_message_back_in_its_place, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    bus_send("alice", "bob", "three");
    char *names_before = listing("agents/bob/inbox");
    struct lease l;
    claim("bob", &l);
    cr_assert_str_eq(l.payload, "one");

    char cmd[1024];
    snprintf(cmd, sizeof cmd, "echo 'nak %s %lld' > agents/bob/ctl", l.msg_id,
             (long long)l.token);
    sh_ok(cmd);
    char *names_after = listing("agents/bob/inbox");
    cr_assert_str_eq(names_after, names_before, "the inbox after nak differs from before the "
                                                "claim");
    char *payloads = inbox_payloads("bob");
    cr_assert_str_eq(payloads, "one\ntwo\nthree\n");
    free(payloads);
    char *np = next_payload("bob");
    cr_assert_str_eq(np, "one", "next after nak");
    free(np);
    cr_assert_eq(bus_count(AT("agents/bob/inflight")), 0);
    cr_assert_eq(ctl_int("bob", "leased"), 0);
    /* The nak'd lease is over. */
    cr_assert_eq(ctl("bob", "ack %s %lld", l.msg_id, (long long)l.token), ESTALE);

    struct lease again;
    claim("bob", &again);
    cr_assert_str_eq(again.payload, "one", "the nak'd message is not claimed first");
    cr_assert_eq(again.delivery, 2);
    cr_assert_gt(again.token, l.token);
    free(names_before);
    free(names_after);
    lease_free(&l);
    lease_free(&again);
}

BUS_TEST_WITH(leases, nak_with_a_delay_defers_the_message, start_lease_30)
{
    const int delay_s = 3;
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    struct lease l;
    claim("bob", &l);
    cr_assert_str_eq(l.payload, "one");

    long long naked = bus_now_ms();
    cr_assert_eq(ctl("bob", "nak %s %lld %d", l.msg_id, (long long)l.token, delay_s), 0);
    /* Pending again, in its place, but not claimable before the delay. */
    char *payloads = inbox_payloads("bob");
    cr_assert_str_eq(payloads, "one\ntwo\n", "the inbox after a delayed nak");
    free(payloads);
    struct lease other, third;
    int err = claim_nonblock("bob", &other);
    cr_assert_eq(err, 0, "claim after a delayed nak: %s", strerror(err));
    if (strcmp(other.payload, "one") == 0)
        cr_assert(bus_now_ms() - naked >= delay_s * 1000,
                  "the message nak'd with a delay of %d s was claimed after %lld ms", delay_s,
                  bus_now_ms() - naked);
    cr_assert_str_eq(other.payload, "two", "the claim after a delayed nak got %s", other.payload);
    err = claim_nonblock("bob", &third);
    if (err == 0) {
        cr_assert_str_eq(third.payload, "one");
        cr_assert(bus_now_ms() - naked >= delay_s * 1000,
                  "the message nak'd with a delay of %d s was claimed after %lld ms", delay_s,
                  bus_now_ms() - naked);
        lease_free(&third);
    } else {
        cr_assert_eq(err, EAGAIN, "O_NONBLOCK claim with only a delayed message: %s",
                     strerror(err));
        /* A blocked claim gets it once the delay has passed. */
        struct lease later;
        claim("bob", &later);
        long long waited = bus_now_ms() - naked;
        cr_assert_str_eq(later.payload, "one");
        cr_assert(waited >= delay_s * 1000 - 100,
                  "the message nak'd with a delay of %d s was claimed after %lld ms", delay_s,
                  waited);
        cr_assert_eq(later.delivery, 2);
        cr_assert_gt(later.token, other.token);
        lease_free(&later);
    }
    lease_free(&l);
    lease_free(&other);
}

/* ---- expiry, dead letters, retry ---------------------------------------- */

BUS_TEST_WITH(leases, expiry_redelivers_then_max_deliver_moves_to_dead_and_retry_brings_it_back,
              start_lease_1_max_2)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "flaky");
    bus_send("alice", "bob", "later");
    char *names_before = listing("agents/bob/inbox");
    json_t *orig = bus_inbox("bob");
    json_t *orig_env = json_array_get(orig, 0);

    struct lease l1;
    claim("bob", &l1);
    cr_assert_str_eq(l1.payload, "flaky");
    cr_assert_eq(l1.delivery, 1);
    /* The worker dies: the lease expires and the message is pending again. */
    await_ctl("bob", "leased", 0, BUS_EXPIRY_MS);
    json_t *c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "redelivered_total"), 1);
    cr_assert_eq(bus_int(c, "inbox_depth"), 2);
    cr_assert_eq(bus_int(c, "dead"), 0);
    json_decref(c);
    char *names_after = listing("agents/bob/inbox");
    cr_assert_str_eq(names_after, names_before, "the expired message is not back in its place");
    free(names_after);
    char *np = next_payload("bob");
    cr_assert_str_eq(np, "flaky");
    free(np);

    struct lease l2;
    claim("bob", &l2);
    cr_assert_str_eq(l2.msg_id, l1.msg_id);
    cr_assert_eq(l2.delivery, 2, "the redelivery has delivery %lld", (long long)l2.delivery);
    cr_assert_gt(l2.token, l1.token);
    cr_assert_str_neq(l2.file, l1.file);

    /* Its second lease (--max-deliver 2) expires too: dead/. */
    await_ctl("bob", "dead", 1, BUS_EXPIRY_MS);
    c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "leased"), 0);
    cr_assert_eq(bus_int(c, "inbox_depth"), 1);
    /* A move to dead/ is not a redelivery. */
    cr_assert_eq(bus_int(c, "redelivered_total"), 1);
    json_decref(c);
    char *payloads = inbox_payloads("bob");
    cr_assert_str_eq(payloads, "later\n");
    free(payloads);
    cr_assert_eq(bus_count(AT("agents/bob/inflight")), 0);

    char *dead = only_file("agents/bob/dead");
    char want[512];
    snprintf(want, sizeof want, "%.20s-%s.json", l1.name, l1.msg_id);
    cr_assert_str_eq(dead, want, "dead/ lists %s", dead);
    cr_assert(strstr(names_before, dead), "the dead letter's name %s is not its inbox name", dead);
    char rel[600];
    snprintf(rel, sizeof rel, "agents/bob/dead/%s", dead);
    assert_mode(rel, S_IFREG | 0600);
    json_t *d = bus_json_file(AT("%s", rel), JSON_REJECT_DUPLICATES);
    json_t *info = json_object_get(d, "dead");
    cr_assert(json_is_object(info), "the dead letter has no \"dead\" object");
    bus_assert_keys(info, "reason", "deliveries", "at", NULL);
    cr_assert_str_eq(bus_str(info, "reason"), "max_deliver");
    cr_assert_eq(bus_int(info, "deliveries"), 2);
    cr_assert(bus_match(BUS_TIMESTAMP_RE, bus_str(info, "at")), "dead.at: %s",
              bus_str(info, "at"));
    cr_assert(strcmp(bus_str(info, "at"), l2.deadline) >= 0, "dead at %s, before the deadline %s",
              bus_str(info, "at"), l2.deadline);
    json_object_del(d, "dead");
    cr_assert(json_equal(d, orig_env), "the dead letter's envelope differs from the message's");
    json_decref(d);
    /* The old leases are over. */
    cr_assert_eq(ctl("bob", "ack %s %lld", l2.msg_id, (long long)l2.token), ESTALE);

    /* retry: pending again, in its place, its delivery count reset. */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "echo 'retry %s' > agents/bob/ctl", l1.msg_id);
    sh_ok(cmd);
    cr_assert_eq(bus_count(AT("agents/bob/dead")), 0);
    c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "dead"), 0);
    cr_assert_eq(bus_int(c, "inbox_depth"), 2);
    json_decref(c);
    names_after = listing("agents/bob/inbox");
    cr_assert_str_eq(names_after, names_before, "retry did not put it back in its place");
    free(names_after);
    struct lease l3;
    claim("bob", &l3);
    cr_assert_str_eq(l3.msg_id, l1.msg_id);
    cr_assert_eq(l3.delivery, 1, "after retry the claim has delivery %lld",
                 (long long)l3.delivery);
    cr_assert_gt(l3.token, l2.token);
    cr_assert_eq(unlink(AT("agents/bob/%s", l3.file)), 0, "ack after retry: %s",
                 strerror(errno));
    free(dead);
    free(names_before);
    json_decref(orig);
    lease_free(&l1);
    lease_free(&l2);
    lease_free(&l3);
}

BUS_TEST_WITH(leases, nak_of_the_last_delivery_moves_to_dead_and_rm_discards, start_max_1)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "poison");
    struct lease l;
    claim("bob", &l);
    /* --max-deliver 1: the first lease was the last; a nak ends it in dead/. */
    cr_assert_eq(ctl("bob", "nak %s %lld", l.msg_id, (long long)l.token), 0);
    char *dead = only_file("agents/bob/dead");
    char rel[600];
    snprintf(rel, sizeof rel, "agents/bob/dead/%s", dead);
    json_t *d = bus_json_file(AT("%s", rel), JSON_REJECT_DUPLICATES);
    cr_assert_str_eq(bus_str(d, "msg_id"), l.msg_id);
    json_t *info = json_object_get(d, "dead");
    cr_assert_str_eq(bus_str(info, "reason"), "max_deliver");
    cr_assert_eq(bus_int(info, "deliveries"), 1);
    json_decref(d);
    json_t *c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "dead"), 1);
    cr_assert_eq(bus_int(c, "leased"), 0);
    cr_assert_eq(bus_int(c, "inbox_depth"), 0);
    json_decref(c);
    /* A dead letter is not claimable. */
    struct lease none;
    cr_assert_eq(claim_nonblock("bob", &none), EAGAIN);

    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm %s", rel);
    sh_ok(cmd);
    cr_assert_eq(bus_count(AT("agents/bob/dead")), 0);
    c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "dead"), 0);
    cr_assert_eq(bus_int(c, "inbox_depth"), 0);
    cr_assert_eq(bus_int(c, "leased"), 0);
    json_decref(c);
    /* Discarded for good. */
    cr_assert_eq(ctl("bob", "retry %s", l.msg_id), ENOENT, "retry of a discarded dead letter");
    errno = 0;
    cr_assert(unlink(AT("%s", rel)) < 0 && errno == ENOENT);
    cr_assert_eq(claim_nonblock("bob", &none), EAGAIN);
    free(dead);
    lease_free(&l);
}

/* ---- rmdir and capacity -------------------------------------------------- */

BUS_TEST_WITH(leases, rmdir_of_an_agent_with_a_lease_or_a_dead_letter_is_enotempty, start_max_1)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "work");
    struct lease l;
    claim("bob", &l);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0);
    sh_fails(ENOTEMPTY, "rmdir agents/bob");
    errno = 0;
    cr_assert(rmdir(AT("agents/bob")) < 0 && errno == ENOTEMPTY,
              "rmdir of an agent with a leased message: %s", strerror(errno));
    char *name = only_file("agents/bob/inflight");
    cr_assert_str_eq(name, l.name, "rmdir changed the lease");
    free(name);

    cr_assert_eq(ctl("bob", "nak %s %lld", l.msg_id, (long long)l.token), 0);
    cr_assert_eq(bus_count(AT("agents/bob/dead")), 1);
    errno = 0;
    cr_assert(rmdir(AT("agents/bob")) < 0 && errno == ENOTEMPTY,
              "rmdir of an agent with a dead letter: %s", strerror(errno));
    sh_ok("rm agents/bob/dead/*");
    sh_ok("rmdir agents/bob");
    errno = 0;
    struct stat st;
    cr_assert(stat(AT("agents/bob"), &st) < 0 && errno == ENOENT);
    lease_free(&l);
}

BUS_TEST_WITH(leases, inbox_capacity_counts_leased_messages, start_capacity_2)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "a");
    bus_send("alice", "bob", "b");
    struct lease l;
    claim("bob", &l);
    cr_assert_eq(ctl_int("bob", "leased"), 1);
    cr_assert_eq(ctl_int("bob", "inbox_depth"), 1);

    sh_fails(EAGAIN, "echo c > agents/alice/outbox/bob");
    int err = bus_append(AT("agents/alice/send"), "{\"to\":\"bob\",\"payload\":\"c\"}\n");
    cr_assert_eq(err, EAGAIN, "send with one pending and one leased (capacity 2): %s",
                 strerror(err));
    cr_assert_eq(ctl_int("bob", "inbox_depth"), 1);
    cr_assert_eq(ctl_int("bob", "leased"), 1);

    /* Acking the leased one frees its slot. */
    cr_assert_eq(unlink(AT("agents/bob/%s", l.file)), 0);
    sh_ok("echo c > agents/alice/outbox/bob");
    char *payloads = inbox_payloads("bob");
    cr_assert_str_eq(payloads, "b\nc\n");
    free(payloads);
    lease_free(&l);
}

/* ---- ownership (§9) ---------------------------------------------------- */

#define OWNER 4101   /* registers bob */
#define MALLORY 4102 /* anyone else */

static void require(bool ok, const char *why)
{
    if (ok)
        return;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0)
        cr_assert_fail("%s and CI=true", why);
    cr_skip_test("%s", why);
}

static void start_allow_other(void)
{
    bus_require_fuse();
    require(geteuid() == 0, "the ownership test switches uids: it must run as root");
    char *argv[] = {"setpriv", "--version", NULL};
    require(bus_exec(NULL, argv, 5000, NULL) == 0, "setpriv (util-linux) is missing");
    bus_start(&bus, "-o", "allow_other", "--lease", "300", "--max-deliver", "1", NULL);
    cr_assert(chmod(bus.dir, 0755) == 0, "chmod %s: %s", bus.dir, strerror(errno));
}

/* `sh -c CMD` in the mount as uid (and gid) uid, through setpriv. */
static int as_sh(uid_t uid, struct bus_cmd *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int as_sh(uid_t uid, struct bus_cmd *r, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char ruid[32], rgid[32];
    snprintf(ruid, sizeof ruid, "--reuid=%u", (unsigned)uid);
    snprintf(rgid, sizeof rgid, "--regid=%u", (unsigned)uid);
    char *argv[] = {"setpriv", ruid, rgid, "--clear-groups", "sh", "-c", cmd, NULL};
    return bus_exec(bus.mnt, argv, 20000, r);
}

/* What uid's `cat claim` gives (must succeed). */
static void claim_as(uid_t uid, const char *agent, struct lease *l)
{
    struct bus_cmd r;
    int status = as_sh(uid, &r, "timeout 10 cat agents/%s/claim", agent);
    cr_assert_eq(status, 0, "uid %u: cat agents/%s/claim: status %d: %s", (unsigned)uid, agent,
                 status, r.err);
    parse_lease(r.out, r.out_len, l, "cat claim as the owner");
    bus_cmd_free(&r);
}

/* MALLORY's command must fail with EACCES, with a reason in errors and in
 * agents/bob/errors. The top-level errors takes at most 10 refusals a
 * second from one uid (SPEC §11), so each command starts a new second. */
static void mallory_refused(const char *cmd)
{
    bus_pause_ms(1000);
    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/bob/errors"));
    struct bus_cmd r;
    int status = as_sh(MALLORY, &r, "%s", cmd);
    cr_assert(status > 0 && status < 124, "uid %u: `%s` ended with %d, want EACCES: %s",
              MALLORY, cmd, status, r.out);
    cr_assert(strstr(r.err, strerror(EACCES)), "uid %u: `%s` said [%s], want \"%s\"", MALLORY,
              cmd, r.err, strerror(EACCES));
    bus_cmd_free(&r);
    bus_assert_logged(AT("errors"), top, cmd);
    bus_assert_logged(AT("agents/bob/errors"), mine, cmd);
}

BUS_TEST_WITH(leases, claim_inflight_and_dead_are_the_owners_only, start_allow_other)
{
    struct bus_cmd r;
    cr_assert_eq(as_sh(OWNER, &r, "mkdir agents/bob"), 0, "mkdir as %u: %s", OWNER, r.err);
    bus_cmd_free(&r);
    bus_agents(&bus, "alice", NULL);
    bus_send("alice", "bob", "will die");
    bus_send("alice", "bob", "in flight");
    bus_send("alice", "bob", "pending");

    struct lease d, l;
    claim_as(OWNER, "bob", &d);
    cr_assert_eq(as_sh(OWNER, &r, "echo 'nak %s %lld' > agents/bob/ctl", d.msg_id,
                       (long long)d.token),
                 0, "nak as the owner: %s", r.err);
    bus_cmd_free(&r);
    claim_as(OWNER, "bob", &l);
    cr_assert_str_eq(l.payload, "in flight");
    char *dead = only_file("agents/bob/dead");
    /* The owner lists and reads them. */
    cr_assert_eq(as_sh(OWNER, &r, "ls agents/bob/inflight agents/bob/dead && cat agents/bob/%s "
                                  "agents/bob/dead/%s >/dev/null",
                       l.file, dead),
                 0, "the owner cannot list or read inflight/ and dead/: %s", r.err);
    bus_cmd_free(&r);
    const char *mine[] = {"agents/bob/claim", "agents/bob/inflight", "agents/bob/dead"};
    for (size_t i = 0; i < 3; i++) {
        struct stat st;
        cr_assert(stat(AT("%s", mine[i]), &st) == 0);
        cr_assert_eq(st.st_uid, OWNER, "%s is owned by %u", mine[i], (unsigned)st.st_uid);
    }

    json_t *before = bus_ctl("bob");
    char *inflight_before = listing("agents/bob/inflight");
    struct lease snap;
    reread_lease("bob", l.file, &snap);

    char cmd[1024];
    mallory_refused("cat agents/bob/claim");
    mallory_refused("ls agents/bob/inflight");
    snprintf(cmd, sizeof cmd, "cat agents/bob/%s", l.file);
    mallory_refused(cmd);
    snprintf(cmd, sizeof cmd, "rm -f agents/bob/%s", l.file);
    mallory_refused(cmd);
    snprintf(cmd, sizeof cmd, "touch agents/bob/%s", l.file);
    mallory_refused(cmd);
    mallory_refused("ls agents/bob/dead");
    snprintf(cmd, sizeof cmd, "cat agents/bob/dead/%s", dead);
    mallory_refused(cmd);
    snprintf(cmd, sizeof cmd, "rm -f agents/bob/dead/%s", dead);
    mallory_refused(cmd);
    snprintf(cmd, sizeof cmd, "echo 'ack %s %lld' > agents/bob/ctl", l.msg_id,
             (long long)l.token);
    mallory_refused(cmd);
    snprintf(cmd, sizeof cmd, "echo 'retry %s' > agents/bob/ctl", d.msg_id);
    mallory_refused(cmd);

    /* Nothing changed. */
    json_t *after = bus_ctl("bob");
    cr_assert(json_equal(before, after), "mallory's refused operations changed bob's ctl");
    char *inflight_after = listing("agents/bob/inflight");
    cr_assert_str_eq(inflight_after, inflight_before);
    struct lease snap2;
    reread_lease("bob", l.file, &snap2);
    cr_assert_str_eq(snap2.text, snap.text, "a refused touch changed the lease");
    cr_assert_eq(bus_count(AT("agents/bob/dead")), 1);
    char *payloads = inbox_payloads("bob");
    cr_assert_str_eq(payloads, "pending\n");
    free(payloads);

    /* The owner acks. */
    cr_assert_eq(as_sh(OWNER, &r, "rm agents/bob/%s && rm agents/bob/dead/%s", l.file, dead), 0,
                 "rm as the owner: %s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(ctl_int("bob", "leased"), 0);
    cr_assert_eq(ctl_int("bob", "dead"), 0);
    json_decref(before);
    json_decref(after);
    free(inflight_before);
    free(inflight_after);
    free(dead);
    lease_free(&d);
    lease_free(&l);
    lease_free(&snap);
    lease_free(&snap2);
}

/* ---- restart and kill -9 ------------------------------------------------ */

static void check_store(void)
{
    char *argv[] = {(char *)bus_bin(), "--check", "--store", bus.store, NULL};
    struct bus_cmd r;
    int status = bus_exec(NULL, argv, BUS_WAIT_MS, &r);
    cr_assert_eq(status, 0, "busfs --check: status %d: %s%s", status, r.out, r.err);
    bus_cmd_free(&r);
}

/* What must survive: inflight/ and dead/ with their contents, and ctl. */
struct kept {
    char *inflight, *dead;
    char *lease_text, *dead_text;
    json_t *ctl;
};

static void keep(struct kept *k, const struct lease *l, const char *dead)
{
    k->inflight = listing("agents/bob/inflight");
    k->dead = listing("agents/bob/dead");
    k->lease_text = bus_read_ok(AT("agents/bob/%s", l->file), NULL);
    k->dead_text = bus_read_ok(AT("agents/bob/dead/%s", dead), NULL);
    k->ctl = bus_ctl("bob");
}

static void kept_free(struct kept *k)
{
    free(k->inflight);
    free(k->dead);
    free(k->lease_text);
    free(k->dead_text);
    json_decref(k->ctl);
}

/* Sends d, x, y; d ends in dead/ (two claims and naks, --max-deliver 2),
 * x is leased with the default lease, y leased for 600 s. */
static void leases_and_a_dead_letter(struct lease *ld, struct lease *lx, struct lease *ly,
                                     char **dead)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "d");
    bus_send("alice", "bob", "x");
    bus_send("alice", "bob", "y");
    bus_send("alice", "bob", "z");
    struct lease first;
    claim("bob", &first);
    cr_assert_eq(ctl("bob", "nak %s %lld", first.msg_id, (long long)first.token), 0);
    claim("bob", ld);
    cr_assert_str_eq(ld->payload, "d");
    cr_assert_eq(ctl("bob", "nak %s %lld", ld->msg_id, (long long)ld->token), 0);
    *dead = only_file("agents/bob/dead");
    claim("bob", lx);
    cr_assert_str_eq(lx->payload, "x");
    claim("bob", ly);
    cr_assert_str_eq(ly->payload, "y");
    cr_assert_eq(ctl("bob", "extend %s %lld 600", ly->msg_id, (long long)ly->token), 0);
    lease_free(&first);
}

static void start_lease_20_max_2(void)
{
    bus_start(&bus, "--lease", "20", "--max-deliver", "2", NULL);
}

BUS_TEST_WITH(leases, restart_keeps_leases_dead_letters_and_the_token_counter,
              start_lease_20_max_2)
{
    struct lease ld, lx, ly;
    char *dead;
    leases_and_a_dead_letter(&ld, &lx, &ly, &dead);
    struct kept k;
    keep(&k, &ly, dead);

    bus_restart(&bus, "--lease", "20", "--max-deliver", "2", NULL);
    char *inflight = listing("agents/bob/inflight");
    cr_assert_str_eq(inflight, k.inflight, "inflight/ changed across a restart");
    char *deadl = listing("agents/bob/dead");
    cr_assert_str_eq(deadl, k.dead, "dead/ changed across a restart");
    char *lt = bus_read_ok(AT("agents/bob/%s", ly.file), NULL);
    cr_assert_str_eq(lt, k.lease_text, "the lease (its deadline) changed across a restart");
    char *dt = bus_read_ok(AT("agents/bob/dead/%s", dead), NULL);
    cr_assert_str_eq(dt, k.dead_text, "the dead letter changed across a restart");
    json_t *c = bus_ctl("bob");
    cr_assert(json_equal(c, k.ctl), "ctl changed across a restart");
    json_decref(c);

    /* The old tokens still act: the current lease acks, an old one is stale. */
    cr_assert_eq(ctl("bob", "ack %s %lld", ld.msg_id, (long long)ld.token), ESTALE);
    cr_assert_eq(ctl("bob", "extend %s %lld 600", lx.msg_id, (long long)lx.token), 0,
                 "extend of a lease from before the restart");
    /* A new claim's token is larger than every earlier one. */
    struct lease lz;
    claim("bob", &lz);
    cr_assert_str_eq(lz.payload, "z");
    cr_assert_gt(lz.token, ly.token, "the token after a restart is %lld, before it %lld",
                 (long long)lz.token, (long long)ly.token);
    cr_assert_eq(unlink(AT("agents/bob/%s", ly.file)), 0, "rm of a lease from before the restart: "
                                                         "%s",
                 strerror(errno));
    bus_terminate(&bus);
    check_store();

    /* And once more: the counter is journalled, not guessed from the leases. */
    bus_launch(&bus, (const char *const[]){"--lease", "20", "--max-deliver", "2", NULL});
    cr_assert_eq(ctl("bob", "ack %s %lld", lz.msg_id, (long long)lz.token), 0);
    cr_assert_eq(ctl("bob", "retry %s", ld.msg_id), 0);
    struct lease again;
    claim("bob", &again);
    cr_assert_str_eq(again.payload, "d");
    cr_assert_gt(again.token, lz.token, "after a second restart the token is %lld, was %lld",
                 (long long)again.token, (long long)lz.token);
    bus_terminate(&bus);
    check_store();

    free(inflight);
    free(deadl);
    free(lt);
    free(dt);
    free(dead);
    kept_free(&k);
    lease_free(&ld);
    lease_free(&lx);
    lease_free(&ly);
    lease_free(&lz);
    lease_free(&again);
}

static void start_lease_2_max_2(void)
{
    bus_start(&bus, "--lease", "2", "--max-deliver", "2", NULL);
}

/* The wall clock in the format of the deadlines. */
static void wall_now(char *out, size_t n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char secs[32];
    strftime(secs, sizeof secs, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, n, "%s.%06ldZ", secs, ts.tv_nsec / 1000);
}

BUS_TEST_WITH(leases, kill9_keeps_leases_and_dead_letters_and_redelivers_what_expired_meanwhile,
              start_lease_2_max_2)
{
    struct lease ld, lx, ly;
    char *dead;
    leases_and_a_dead_letter(&ld, &lx, &ly, &dead);
    struct kept k;
    keep(&k, &ly, dead);

    bus_kill9(&bus);
    /* x's deadline (2 s) passes while no server runs. */
    char now[64];
    for (wall_now(now, sizeof now); strcmp(now, lx.deadline) <= 0; wall_now(now, sizeof now))
        bus_pause_ms(50);
    bus_pause_ms(100);
    bus_launch(&bus, (const char *const[]){"--lease", "2", "--max-deliver", "2", NULL});

    /* y, leased for 600 s, is kept as it was; d is still dead. */
    char *lt = bus_read_ok(AT("agents/bob/%s", ly.file), NULL);
    cr_assert_str_eq(lt, k.lease_text, "the lease changed across kill -9");
    char *deadl = listing("agents/bob/dead");
    cr_assert_str_eq(deadl, k.dead, "dead/ changed across kill -9");
    char *dt = bus_read_ok(AT("agents/bob/dead/%s", dead), NULL);
    cr_assert_str_eq(dt, k.dead_text, "the dead letter changed across kill -9");

    /* x, whose lease ended while the server was down, is pending again soon. */
    await_ctl("bob", "leased", 1, BUS_EXPIRY_MS);
    char *inflight = listing("agents/bob/inflight");
    char want[600];
    snprintf(want, sizeof want, "%s\n", ly.name);
    cr_assert_str_eq(inflight, want, "inflight/ after kill -9 and x's expiry");
    json_t *c = bus_ctl("bob");
    cr_assert_eq(bus_int(c, "dead"), 1);
    cr_assert_eq(bus_int(c, "inbox_depth"), 2);
    json_decref(c);
    char *payloads = inbox_payloads("bob");
    cr_assert_str_eq(payloads, "x\nz\n", "the inbox after x's lease ended while the server was "
                                         "down");
    free(payloads);

    struct lease lx2;
    claim("bob", &lx2);
    cr_assert_str_eq(lx2.payload, "x");
    cr_assert_eq(lx2.delivery, 2);
    cr_assert_gt(lx2.token, ly.token, "the token after kill -9 is %lld, before it %lld",
                 (long long)lx2.token, (long long)ly.token);
    cr_assert_eq(ctl("bob", "ack %s %lld", lx.msg_id, (long long)lx.token), ESTALE);
    cr_assert_eq(ctl("bob", "ack %s %lld", lx2.msg_id, (long long)lx2.token), 0);
    cr_assert_eq(unlink(AT("agents/bob/%s", ly.file)), 0, "rm of a lease from before kill -9: %s",
                 strerror(errno));
    bus_terminate(&bus);
    check_store();

    free(inflight);
    free(deadl);
    free(lt);
    free(dt);
    free(dead);
    kept_free(&k);
    lease_free(&ld);
    lease_free(&lx);
    lease_free(&ly);
    lease_free(&lx2);
}

/* ---- idempotent sends ----------------------------------------------------- */

/* A sender that retries a record after an ambiguous end (here: the server killed
 * right after it answered) names it with an idempotency_key: the retry is accepted
 * and bob gets it once, whatever happened in between. */
BUS_TEST(leases, a_retried_record_with_its_key_is_delivered_once_across_a_kill_9)
{
    bus_agents(&bus, "alice", "bob", NULL);
    const char *rec = "echo '{\"to\":\"bob\",\"payload\":{\"job\":7},\"idempotency_key\":\"job-7\"}' "
                      ">> agents/alice/send";
    sh_ok(rec);
    sh_ok(rec);
    bus_kill9(&bus);
    bus_launch(&bus, NULL);
    sh_ok(rec);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1, "the job was delivered more than once");
    char *prom = bus_read_ok(AT("metrics/busfs.prom"), NULL);
    cr_assert(strstr(prom, "\nbusfs_duplicates_total 2\n"), "two duplicates counted: %s", prom);
    free(prom);
    /* Another key is another record. */
    sh_ok("echo '{\"to\":\"bob\",\"payload\":{\"job\":8},\"idempotency_key\":\"job-8\"}' "
          ">> agents/alice/send");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 2);
}

/* A worker that renews with `touch` after its lease ended learns that it ended
 * (ENOENT), not "permission denied": touch tries to create the missing name. */
BUS_TEST_WITH(leases, touch_of_an_ended_lease_says_no_such_file, start_lease_30)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "task");
    struct lease l;
    claim("bob", &l);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "nak %s %lld", l.msg_id, (long long)l.token);
    cr_assert_eq(bus_write(AT("agents/bob/ctl"), cmd), 0);
    snprintf(cmd, sizeof cmd, "touch agents/bob/%s", l.file);
    sh_fails(ENOENT, cmd);
    snprintf(cmd, sizeof cmd, "touch agents/bob/dead/nothing-here.json");
    sh_fails(ENOENT, cmd);
    cr_assert_eq(bus_count(AT("agents/bob/inflight")), 0, "touch made a file in inflight/");
    lease_free(&l);
}
