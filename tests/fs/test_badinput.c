/*
 * test_badinput.c — SPEC §8 as one table: every writable file and every
 * operation on the tree, fed bad input.
 *
 * Each row is one operation a user might try. For each row:
 *   1. the errno is exactly the one SPEC names, or the kernel's own where the
 *      kernel answers before busfs does (EEXIST for `.` or a name that
 *      exists, ENAMETOOLONG past PATH_MAX, EXDEV across mounts, ESPIPE for
 *      pwrite on a stream, ENOENT for a name no lookup finds);
 *   2. when busfs saw and refused the operation, a reason line appeared in
 *      `errors` — and in agents/A/errors when the operation concerns A — and
 *      it is one JSON object with the documented fields (timestamp, op, path,
 *      uid, errno, reason, and agent when there is one); when the kernel
 *      answered, or busfs accepted a harmless no-op, no line appeared;
 *   3. the bus is unchanged: agents, inboxes, outboxes, ctl, health, metric
 *      logs, rules and alerts read the same, logs and rejection counters
 *      aside (snapshot()).
 *
 * The rows are grouped by the file they target; one group shares one mount,
 * and every group starts from the same bus (populate()): alice, bob and carol
 * (draining), one message alice -> bob, one bob -> alice asking for an ack, a
 * health report for alice and bob, two metric points of alice and one rule;
 * the server runs with --max-message-size 4096 and a health TTL long enough
 * that nobody turns stale while the rows run.
 * A failing row prints its name and the test goes on with the next row. At
 * the end of a group the server must stop with status 0 and `busfs --check`
 * must find the store consistent.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

/* ---- the table -------------------------------------------------------- */

enum op {
    OP_MKDIR,
    OP_RMDIR,
    OP_UNLINK,
    OP_WRITE, /* open(flags), then up to two writes, then close */
    OP_TRUNCATE,
    OP_RENAME,
    OP_LINK,
    OP_SYMLINK,
    OP_MKNOD,
    OP_SETXATTR,
    OP_REMOVEXATTR,
    OP_CHMOD,
    OP_CHOWN,
};

/* Where the reason for the errno must be written. */
enum logged {
    NO_LINE,   /* the kernel answered, or busfs accepted a no-op: no new line */
    BUS_LOG,   /* a line in `errors` */
    AGENT_LOG, /* a line in `errors` and in agents/<agent>/errors, naming the agent */
};

struct row {
    const char *name; /* printed when the row fails */
    enum op op;
    const char *path; /* relative to the mount, or absolute (outside it) */
    const char *arg;  /* rename/link: the new path; symlink: the target; xattr: the name */
    int flags;        /* OP_WRITE: open flags */
    long long num;    /* pwrite offset (with at), truncate size, mknod/chmod mode, chown id */
    bool at;          /* OP_WRITE: the first write is a pwrite at num */
    const char *data; /* OP_WRITE: the first write (NULL: none) */
    size_t len;
    const char *data2; /* OP_WRITE: a second write (NULL: none) */
    size_t len2;
    int want;           /* the errno; 0: the call succeeds (and must change nothing) */
    enum bus_step step; /* OP_WRITE: the step that must give want */
    enum logged logged;
    const char *agent; /* AGENT_LOG: whose errors log */
};

/* Literal bytes (embedded NULs included) or a filled buffer. */
#define LIT(s) .data = (s), .len = sizeof(s) - 1
#define LIT2(s) .data2 = (s), .len2 = sizeof(s) - 1
#define TXT(s) .data = (s), .len = strlen(s)
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

#define APPEND (O_WRONLY | O_APPEND)
#define TRUNC (O_WRONLY | O_TRUNC)
#define CREATE (O_WRONLY | O_CREAT | O_TRUNC)
#define CREATE_NEW (O_WRONLY | O_CREAT | O_EXCL)

/* A write to agents/alice/FILE refused at write() with err, logged for alice. */
#define ALICE_WRITE(what, file, fl, err)                                                           \
    .name = (what), .op = OP_WRITE, .path = "agents/alice/" file, .flags = (fl), .want = (err),    \
    .step = BUS_STEP_WRITE, .logged = AGENT_LOG, .agent = "alice"
#define SEND(what, text, err) {ALICE_WRITE(what, "send", APPEND, err), LIT(text)}
#define HEALTH(what, text) {ALICE_WRITE(what, "health", TRUNC, EINVAL), LIT(text)}
#define METRIC(what, text) {ALICE_WRITE(what, "metrics", APPEND, EINVAL), LIT(text)}
#define CTL(what, text, err) {ALICE_WRITE(what, "ctl", TRUNC, err), LIT(text)}
/* A write to alerts/rules (>> or >) refused with EINVAL, logged bus-wide. */
#define RULE(what, fl, text)                                                                       \
    {.name = (what), .op = OP_WRITE, .path = "alerts/rules", .flags = (fl), LIT(text),             \
     .want = EINVAL, .step = BUS_STEP_WRITE, .logged = BUS_LOG}
/* mkdir agents/NAME refused with EINVAL, logged bus-wide (no agent A exists). */
#define BAD_NAME(what, dir)                                                                        \
    {.name = (what), .op = OP_MKDIR, .path = "agents/" dir, .want = EINVAL, .logged = BUS_LOG}
/* Opening path with flags refused at open() with err. */
#define OPEN(what, p, fl, err, lg, ag)                                                             \
    .name = (what), .op = OP_WRITE, .path = (p), .flags = (fl), .want = (err),                     \
    .step = BUS_STEP_OPEN, .logged = (lg), .agent = (ag)
/* Any other operation on path refused with err. */
#define REFUSED(what, o, p, err, lg, ag)                                                           \
    .name = (what), .op = (o), .path = (p), .want = (err), .logged = (lg), .agent = (ag)

/* ---- the starting bus ------------------------------------------------- */

static void start_badinput(void)
{
    bus_start(&bus, "--health-ttl", "3600", "--max-message-size", "4096", NULL);
}

/* Names of the starting bus's files, set by populate(). */
static char in_file[512];  /* bob's pending message, relative to the mount */
static char out_file[512]; /* the same message in alice's outbox */
static char msg_id[128];   /* its msg_id */
static char outside[PATH_MAX + 32]; /* a file outside the mount */

static void populate(void)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    bus_send("alice", "bob", "keep me\n");
    cr_assert_eq(bus_append(AT("agents/bob/send"), "{\"to\":\"alice\",\"payload\":{\"n\":1},"
                                                   "\"requires_ack\":true,\"correlation_id\":"
                                                   "\"c1\"}\n"),
                 0);
    cr_assert_eq(bus_write(AT("agents/carol/ctl"), "drain\n"), 0);
    cr_assert_eq(bus_write(AT("agents/alice/health"), "degraded baseline\n"), 0);
    cr_assert_eq(bus_write(AT("agents/bob/health"), "{\"status\":\"healthy\",\"queue\":3}\n"), 0);
    cr_assert_eq(bus_append(AT("agents/alice/metrics"),
                            "cpu 5 ms host=a\n{\"metric\":\"mem\",\"value\":1.5}\n"),
                 0);
    cr_assert_eq(bus_write(AT("alerts/rules"), "slow cpu p95 > 100 critical\n"), 0);

    size_t n;
    char **names = bus_ls(AT("agents/bob/inbox"), &n);
    cr_assert(names && n == 1);
    snprintf(in_file, sizeof in_file, "agents/bob/inbox/%s", names[0]);
    snprintf(msg_id, sizeof msg_id, "%.*s", (int)(strlen(names[0]) - 26), names[0] + 21);
    bus_ls_free(names, n);
    names = bus_ls(AT("agents/alice/outbox"), &n);
    cr_assert(names && n == 1);
    snprintf(out_file, sizeof out_file, "agents/alice/outbox/%s", names[0]);
    bus_ls_free(names, n);
    cr_assert(bus_match(BUS_MSG_ID_RE, msg_id), "msg_id %s", msg_id);

    snprintf(outside, sizeof outside, "%s/outside.txt", bus.dir);
    FILE *f = fopen(outside, "w");
    cr_assert(f);
    fputs("outside\n", f);
    fclose(f);
}

/* prefix followed by n copies of c and suffix (malloc'd; freed at exit). */
static char *repeat(const char *prefix, size_t n, char c, const char *suffix)
{
    size_t p = strlen(prefix), s = strlen(suffix);
    char *out = malloc(p + n + s + 1);
    cr_assert(out);
    memcpy(out, prefix, p);
    memset(out + p, c, n);
    memcpy(out + p + n, suffix, s + 1);
    return out;
}

/* ---- the state of the bus --------------------------------------------- */

static json_t *listing(const char *rel)
{
    size_t n;
    char **names = bus_ls(AT("%s", rel), &n);
    cr_assert(names, "ls %s: %s", rel, strerror(errno));
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(list, json_string(names[i]));
    bus_ls_free(names, n);
    return list;
}

static json_t *text_of(const char *rel)
{
    size_t len;
    char *text = bus_read_ok(AT("%s", rel), &len);
    json_t *s = json_stringn_nocheck(text, len);
    free(text);
    return s;
}

/* A generated JSON document without the members that move with the clock. */
static json_t *doc_of(const char *rel)
{
    json_t *doc = bus_json_file(AT("%s", rel), 0);
    json_object_del(doc, "timestamp");
    json_object_del(doc, "age_s");
    json_t *busobj = json_object_get(doc, "bus");
    json_object_del(busobj, "uptime_s");
    json_object_del(busobj, "messages_rejected_total"); /* a counter of rejections */
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(doc, "agents"), key, v) json_object_del(v, "age_s");
    return doc;
}

/* What a user sees of the bus, logs and rejection counters aside: compact
 * JSON with sorted keys (malloc'd). */
static char *snapshot(void)
{
    json_t *s = json_object();
    const char *dirs[] = {".", "agents", "health", "metrics", "alerts"};
    for (size_t i = 0; i < COUNT(dirs); i++)
        json_object_set_new(s, dirs[i], listing(dirs[i]));
    size_t n;
    char **agents = bus_ls(AT("agents"), &n);
    cr_assert(agents);
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_object();
        char dir[128], rel[256];
        snprintf(dir, sizeof dir, "agents/%s", agents[i]);
        json_object_set_new(a, "files", listing(dir));
        json_object_set_new(a, "inbox", bus_inbox(agents[i]));
        json_object_set_new(a, "outbox", bus_outbox(agents[i]));
        json_object_set_new(a, "ctl", bus_ctl(agents[i]));
        snprintf(rel, sizeof rel, "agents/%s/health", agents[i]);
        json_object_set_new(a, "health", doc_of(rel));
        snprintf(rel, sizeof rel, "agents/%s/metrics", agents[i]);
        json_object_set_new(a, "metrics", text_of(rel));
        json_object_set_new(s, dir, a);
    }
    bus_ls_free(agents, n);
    json_object_set_new(s, "health/status", doc_of("health/status"));
    json_object_set_new(s, "metrics/metrics.jsonl", text_of("metrics/metrics.jsonl"));
    json_object_set_new(s, "alerts/rules", text_of("alerts/rules"));
    json_object_set_new(s, "alerts/active.json", doc_of("alerts/active.json"));
    json_object_set_new(s, "alerts/alerts.jsonl", text_of("alerts/alerts.jsonl"));
    char *text = json_dumps(s, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert(text, "the snapshot cannot be written as JSON");
    json_decref(s);
    return text;
}

/* Where two snapshots first differ, with some context, for a message. */
static void describe_change(const char *before, const char *after, char *out, size_t size)
{
    size_t i = 0;
    while (before[i] && before[i] == after[i])
        i++;
    size_t from = i > 80 ? i - 80 : 0;
    snprintf(out, size, "before ...%.240s\n   after ...%.240s", before + from, after + from);
}

/* ---- the errors logs -------------------------------------------------- */

/* The last line of a log, newline included ("" when empty): the lines a
 * refusal adds come after it, even once the log is capped and drops its
 * oldest lines. Each line carries a timestamp in microseconds, so it is
 * unique. */
static char *log_mark(const char *rel)
{
    char *text = bus_read_ok(AT("%s", rel), NULL);
    size_t len = strlen(text);
    if (len == 0)
        return text;
    cr_assert(text[len - 1] == '\n', "%s does not end with a newline", rel);
    size_t start = len - 1;
    while (start > 0 && text[start - 1] != '\n')
        start--;
    memmove(text, text + start, len - start + 1);
    return text;
}

/* The lines added to a log since mark, as strings. */
static json_t *lines_since(const char *rel, const char *mark)
{
    char *text = bus_read_ok(AT("%s", rel), NULL);
    const char *p = text;
    if (mark[0]) {
        const char *hit = strstr(text, mark);
        if (hit)
            p = hit + strlen(mark);
    }
    json_t *lines = json_array();
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        json_array_append_new(lines, json_stringn_nocheck(p, n));
        p += n + (nl != NULL);
    }
    free(text);
    return lines;
}

static const char *errno_name(int code)
{
    static const struct {
        int code;
        const char *name;
    } names[] = {
        {EINVAL, "EINVAL"},   {ENOENT, "ENOENT"},       {EFBIG, "EFBIG"},     {EAGAIN, "EAGAIN"},
        {ENOSPC, "ENOSPC"},   {ESHUTDOWN, "ESHUTDOWN"}, {EACCES, "EACCES"},   {EEXIST, "EEXIST"},
        {ENOTEMPTY, "ENOTEMPTY"}, {EBUSY, "EBUSY"},     {EXDEV, "EXDEV"},     {ESPIPE, "ESPIPE"},
        {ENAMETOOLONG, "ENAMETOOLONG"}, {EISDIR, "EISDIR"}, {EPERM, "EPERM"},
    };
    for (size_t i = 0; i < COUNT(names); i++)
        if (names[i].code == code)
            return names[i].name;
    return "?";
}

/* Is this line a reason for the row's refusal? Every line must be well formed
 * (fails the row otherwise); it matches when it names the row's errno (and
 * agent). */
static bool reason_matches(const struct row *r, const char *log, const char *line, bool *bad)
{
    json_error_t e;
    json_t *v = json_loads(line, JSON_REJECT_DUPLICATES, &e);
    if (!v || !json_is_object(v)) {
        cr_expect_fail("[%s] a line of %s is not a JSON object (%s): %s", r->name, log,
                       v ? "other value" : e.text, line);
        json_decref(v);
        *bad = true;
        return false;
    }
    static const char *const known[] = {"timestamp", "op", "path", "agent", "uid", "errno",
                                        "reason"};
    const char *key;
    json_t *val;
    bool ok = true;
    json_object_foreach(v, key, val)
    {
        bool found = false;
        for (size_t i = 0; i < COUNT(known); i++)
            found = found || strcmp(key, known[i]) == 0;
        ok = ok && found;
    }
    const char *ts = json_string_value(json_object_get(v, "timestamp"));
    const char *op = json_string_value(json_object_get(v, "op"));
    const char *errname = json_string_value(json_object_get(v, "errno"));
    const char *reason = json_string_value(json_object_get(v, "reason"));
    json_t *agent = json_object_get(v, "agent");
    ok = ok && ts && bus_match(BUS_TIMESTAMP_RE, ts) && op && op[0] &&
         json_is_string(json_object_get(v, "path")) && json_is_integer(json_object_get(v, "uid")) &&
         errname && reason && reason[0] && (!agent || json_is_string(agent));
    if (!ok) {
        cr_expect_fail("[%s] a line of %s lacks a documented field or has another: %s", r->name,
                       log, line);
        *bad = true;
    }
    bool match = ok && strcmp(errname, errno_name(r->want)) == 0 &&
                 (r->logged != AGENT_LOG || (agent && strcmp(json_string_value(agent), r->agent) == 0));
    json_decref(v);
    return match;
}

/* The row's reason is in the log (want_line), or no line was added. */
static bool check_log(const struct row *r, const char *log, const char *mark, bool want_line)
{
    json_t *lines = lines_since(log, mark);
    size_t n = json_array_size(lines);
    bool bad = false, found = false;
    for (size_t i = 0; i < n; i++)
        found = reason_matches(r, log, json_string_value(json_array_get(lines, i)), &bad) || found;
    bool ok = !bad;
    if (want_line && !found) {
        cr_expect_fail("[%s] no reason with errno %s%s%s was added to %s (%zu new lines%s%s)",
                       r->name, errno_name(r->want), r->logged == AGENT_LOG ? " and agent " : "",
                       r->logged == AGENT_LOG ? r->agent : "", log, n, n ? ", last: " : "",
                       n ? json_string_value(json_array_get(lines, n - 1)) : "");
        ok = false;
    }
    if (!want_line && n > 0) {
        cr_expect_fail("[%s] %s got %zu line(s) for an operation busfs did not refuse: %s",
                       r->name, log, n, json_string_value(json_array_get(lines, n - 1)));
        ok = false;
    }
    json_decref(lines);
    return ok;
}

/* ---- running a row ---------------------------------------------------- */

static const char *where(const char *path)
{
    return path[0] == '/' ? path : AT("%s", path);
}

/* write() or pwrite() all of data; 0 or the errno. */
static int write_all(int fd, const char *data, size_t len, long long at)
{
    size_t done = 0;
    do {
        ssize_t n = at >= 0 ? pwrite(fd, data + done, len - done, (off_t)(at + (long long)done))
                            : write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? errno : EIO;
        done += (size_t)n;
    } while (done < len);
    return 0;
}

static int write_steps(const struct row *r, enum bus_step *step)
{
    *step = BUS_STEP_OPEN;
    int fd = open(where(r->path), r->flags | O_CLOEXEC, 0644);
    if (fd < 0)
        return errno;
    *step = BUS_STEP_WRITE;
    int err = r->data ? write_all(fd, r->data, r->len, r->at ? r->num : -1) : 0;
    if (!err && r->data2)
        err = write_all(fd, r->data2, r->len2, -1);
    if (err) {
        close(fd);
        return err;
    }
    *step = BUS_STEP_CLOSE;
    if (close(fd) < 0)
        return errno;
    *step = BUS_STEP_NONE;
    return 0;
}

/* Performs the row's operation; 0 or the errno, and the step for OP_WRITE. */
static int perform(const struct row *r, enum bus_step *step)
{
    const char *p = where(r->path);
    int rc;
    *step = BUS_STEP_NONE;
    errno = 0;
    switch (r->op) {
    case OP_WRITE:
        return write_steps(r, step);
    case OP_MKDIR:
        rc = mkdir(p, 0755);
        break;
    case OP_RMDIR:
        rc = rmdir(p);
        break;
    case OP_UNLINK:
        rc = unlink(p);
        break;
    case OP_TRUNCATE:
        rc = truncate(p, (off_t)r->num);
        break;
    case OP_RENAME:
        rc = rename(p, where(r->arg));
        break;
    case OP_LINK:
        rc = link(p, where(r->arg));
        break;
    case OP_SYMLINK:
        rc = symlink(r->arg, p);
        break;
    case OP_MKNOD:
        rc = mknod(p, (mode_t)r->num, S_ISCHR((mode_t)r->num) ? makedev(1, 3) : 0);
        break;
    case OP_SETXATTR:
        rc = setxattr(p, r->arg, "1", 1, 0);
        break;
    case OP_REMOVEXATTR:
        rc = removexattr(p, r->arg);
        break;
    case OP_CHMOD:
        rc = chmod(p, (mode_t)r->num);
        break;
    case OP_CHOWN:
        rc = chown(p, (uid_t)r->num, (gid_t)r->num);
        break;
    default:
        cr_assert_fail("[%s] unknown operation %d", r->name, (int)r->op);
    }
    return rc < 0 ? errno : 0;
}

static const char *step_name(enum bus_step s)
{
    static const char *const names[] = {"-", "open", "write", "close"};
    return names[s];
}

/* Runs one row against the bus whose snapshot is *base; false if it failed.
 * When the row changed the bus, *base becomes the new state, so the rows
 * that follow are judged on their own. */
static bool run_row(const struct row *r, char **base)
{
    char agent_log[128] = "";
    if (r->agent)
        snprintf(agent_log, sizeof agent_log, "agents/%s/errors", r->agent);
    char *bus_mark = log_mark("errors");
    char *agent_mark = r->agent ? log_mark(agent_log) : NULL;

    enum bus_step step;
    int err = perform(r, &step);
    bool ok = err == r->want && (r->op != OP_WRITE || r->want == 0 || step == r->step);
    cr_expect(ok, "[%s] gave %s at %s, want %s at %s", r->name, err ? strerror(err) : "success",
              step_name(step), r->want ? strerror(r->want) : "success",
              r->op == OP_WRITE ? step_name(r->step) : "-");

    struct stat st;
    cr_assert(stat(AT("README"), &st) == 0, "[%s] the server is gone: %s", r->name,
              strerror(errno));

    ok = check_log(r, "errors", bus_mark, r->logged != NO_LINE) && ok;
    if (r->agent)
        ok = check_log(r, agent_log, agent_mark, r->logged == AGENT_LOG) && ok;
    free(bus_mark);
    free(agent_mark);

    char *now = snapshot();
    if (strcmp(now, *base) != 0) {
        char change[640];
        describe_change(*base, now, change, sizeof change);
        cr_expect_fail("[%s] the bus changed:\n  %s", r->name, change);
        free(*base);
        *base = now;
        return false;
    }
    free(now);
    return ok;
}

/* Runs a group of rows on the bus populate() made, then stops the server
 * (exit status 0) and checks the store offline. */
static void run_group(const char *group, const struct row *rows, size_t n)
{
    cr_log_info("%s: %zu rows", group, n);
    char *base = snapshot();
    size_t failed = 0;
    for (size_t i = 0; i < n; i++)
        failed += !run_row(&rows[i], &base);
    free(base);
    cr_expect_eq(failed, 0, "%s: %zu of %zu rows failed", group, failed, n);

    bus_terminate(&bus);
    char *argv[] = {(char *)bus_bin(), "--check", "--store", bus.store, NULL};
    struct bus_cmd c;
    int status = bus_exec(NULL, argv, BUS_WAIT_MS, &c);
    cr_expect_eq(status, 0, "%s: busfs --check after bad input: %d: %s%s", group, status, c.out,
                 c.err);
    bus_cmd_free(&c);
}

#define RUN(group, rows) run_group(group, rows, COUNT(rows))

/* ---- agent names and agent directories (§2, §7) ------------------------- */

BUS_TEST_WITH(badinput, agent_names, start_badinput)
{
    populate();
    char *name65 = repeat("agents/", 65, 'a', "");
    char *name256 = repeat("agents/", 256, 'b', "");
    char mnt_agents[PATH_MAX + 16];
    snprintf(mnt_agents, sizeof mnt_agents, "%s/agents/", bus.mnt);
    char *name4100 = repeat(mnt_agents, 4100, 'c', ""); /* absolute: longer than AT() makes */
    const struct row rows[] = {
        BAD_NAME("a name starting with a digit", "1abc"),
        BAD_NAME("a name starting with _", "_abc"),
        BAD_NAME("a name starting with -", "-abc"),
        BAD_NAME("a dot name", ".hidden"),
        BAD_NAME("a name with a space", "a b"),
        BAD_NAME("a name with a colon", "a:b"),
        BAD_NAME("a name with @", "a@b"),
        BAD_NAME("a name with a tab", "a\tb"),
        BAD_NAME("a name with a newline", "a\nb"),
        BAD_NAME("a name with a glob", "a*b"),
        BAD_NAME("a name with a backslash", "a\\b"),
        BAD_NAME("a name with a format directive", "%s%n"),
        BAD_NAME("a name with a shell metacharacter", "a;rm"),
        BAD_NAME("a name with DEL", "ab\x7f"),
        BAD_NAME("a name with a control byte", "a\x01"),
        BAD_NAME("the reserved name all", "all"),
        BAD_NAME("a name with UTF-8 letters", "caf\xc3\xa9"),
        BAD_NAME("a name with a zero-width space", "\xe2\x80\x8b" "bob"),
        BAD_NAME("a name that is not UTF-8", "a\xff\xfe"),
        {REFUSED("a name of 65 bytes", OP_MKDIR, name65, EINVAL, BUS_LOG, NULL)},
        {REFUSED("a name of 256 bytes", OP_MKDIR, name256, EINVAL, BUS_LOG, NULL)},
        /* A path longer than PATH_MAX: the kernel answers. */
        {REFUSED("a name of 4100 bytes", OP_MKDIR, name4100, ENAMETOOLONG, NO_LINE, NULL)},
        {REFUSED("mkdir agents/.", OP_MKDIR, "agents/.", EEXIST, NO_LINE, NULL)},
        {REFUSED("mkdir agents/..", OP_MKDIR, "agents/..", EEXIST, NO_LINE, NULL)},
        /* The kernel finds the name and answers EEXIST without asking busfs. */
        {REFUSED("an agent that exists", OP_MKDIR, "agents/alice", EEXIST, NO_LINE, NULL)},
        {REFUSED("mkdir agents itself", OP_MKDIR, "agents", EEXIST, NO_LINE, NULL)},
        {REFUSED("rmdir of an agent with pending messages", OP_RMDIR, "agents/bob", ENOTEMPTY,
                 AGENT_LOG, "bob")},
        {REFUSED("rmdir of an unknown agent", OP_RMDIR, "agents/nobody", ENOENT, NO_LINE, NULL)},
        {REFUSED("rmdir of an agent given a bad name", OP_RMDIR, "agents/1abc", ENOENT, NO_LINE,
                 NULL)},
    };
    RUN("agent names", rows);
    free(name65);
    free(name256);
    free(name4100);
}

/* ---- outbox/B (§3) ------------------------------------------------------ */

BUS_TEST_WITH(badinput, outbox, start_badinput)
{
    populate();
    char *to65 = repeat("agents/alice/outbox/", 65, 'a', "");
    char *big = repeat("", 5000, 'x', "\n");
    char *half = repeat("", 3000, 'y', "");
    const struct row rows[] = {
        {OPEN("to an unknown agent", "agents/alice/outbox/nobody", CREATE, ENOENT, AGENT_LOG,
              "alice"),
         LIT("hi\n")},
        {OPEN(">> to an unknown agent", "agents/alice/outbox/nobody", O_WRONLY | O_CREAT | O_APPEND,
              ENOENT, AGENT_LOG, "alice"),
         LIT("hi\n")},
        {OPEN("to ALL (names are case-sensitive)", "agents/alice/outbox/ALL", CREATE, ENOENT,
              AGENT_LOG, "alice"),
         LIT("hi\n")},
        {OPEN("to a bad agent name", "agents/alice/outbox/1bad", CREATE, EINVAL, AGENT_LOG,
              "alice"),
         LIT("hi\n")},
        {OPEN("to a name with a space", "agents/alice/outbox/all ", CREATE, EINVAL, AGENT_LOG,
              "alice"),
         LIT("hi\n")},
        {OPEN("to a name of 65 bytes", to65, CREATE, EINVAL, AGENT_LOG, "alice"), LIT("hi\n")},
        {OPEN("to a draining agent", "agents/alice/outbox/carol", CREATE, ESHUTDOWN, AGENT_LOG,
              "alice"),
         LIT("hi\n")},
        {OPEN("from an unknown agent", "agents/nobody/outbox/bob", CREATE, ENOENT, NO_LINE, NULL),
         LIT("hi\n")},
        {OPEN("reading outbox/B, which never exists", "agents/alice/outbox/bob", O_RDONLY, ENOENT,
              NO_LINE, "alice")},
        {ALICE_WRITE("a message over --max-message-size", "outbox/bob", CREATE, EFBIG), TXT(big)},
        {ALICE_WRITE("a message over the size in its second write", "outbox/bob", CREATE, EFBIG),
         TXT(half), .data2 = half, .len2 = strlen(half)},
        {ALICE_WRITE("a broadcast over the size", "outbox/all", CREATE, EFBIG), TXT(big)},
        {.name = "an empty message (open and close) sends nothing", .op = OP_WRITE,
         .path = "agents/alice/outbox/bob", .flags = CREATE, .logged = NO_LINE, .agent = "alice"},
        {.name = "an empty broadcast sends nothing", .op = OP_WRITE,
         .path = "agents/alice/outbox/all", .flags = CREATE, .logged = NO_LINE, .agent = "alice"},
        {OPEN("writing a sent message", out_file, O_WRONLY, EACCES, AGENT_LOG, "alice"),
         LIT("x\n")},
        {REFUSED("rm of a sent message", OP_UNLINK, out_file, EACCES, AGENT_LOG, "alice")},
        {REFUSED("mkdir in an outbox", OP_MKDIR, "agents/alice/outbox/bob", EACCES, AGENT_LOG,
                 "alice")},
    };
    RUN("outbox", rows);
    free(to65);
    free(big);
    free(half);
}

/* ---- send (§3) ---------------------------------------------------------- */

BUS_TEST_WITH(badinput, send, start_badinput)
{
    populate();
    char *big = repeat("{\"to\":\"bob\",\"payload\":\"", 5000, 'x', "\"}\n");
    char *long_type = repeat("{\"to\":\"bob\",\"payload\":1,\"type\":\"", 129, 't', "\"}\n");
    char *long_corr =
        repeat("{\"to\":\"bob\",\"payload\":1,\"correlation_id\":\"", 257, 'c', "\"}\n");
    char *deep = repeat("{\"to\":\"bob\",\"payload\":", 600, '[', "");
    char *unfinished = repeat("{\"to\":\"bob\",\"payload\":\"", 80000, 'u', "");
    char *deep_record = repeat(deep, 600, ']', "}\n");
    const struct row rows[] = {
        SEND("a lone }", "}\n", EINVAL),
        SEND("a JSON array", "[]\n", EINVAL),
        SEND("JSON null", "null\n", EINVAL),
        SEND("a JSON string", "\"to bob\"\n", EINVAL),
        SEND("a JSON number", "42\n", EINVAL),
        SEND("plain text", "hello bob\n", EINVAL),
        SEND("an empty object", "{}\n", EINVAL),
        SEND("no to", "{\"payload\":1}\n", EINVAL),
        SEND("no payload", "{\"to\":\"bob\"}\n", EINVAL),
        SEND("an unknown recipient", "{\"to\":\"nobody\",\"payload\":1}\n", ENOENT),
        SEND("a draining recipient", "{\"to\":\"carol\",\"payload\":1}\n", ESHUTDOWN),
        SEND("a bad recipient name", "{\"to\":\"1bad\",\"payload\":1}\n", EINVAL),
        SEND("an empty recipient", "{\"to\":\"\",\"payload\":1}\n", EINVAL),
        SEND("to as an array", "{\"to\":[\"bob\"],\"payload\":1}\n", EINVAL),
        SEND("to as a number", "{\"to\":7,\"payload\":1}\n", EINVAL),
        SEND("an unknown field", "{\"to\":\"bob\",\"payload\":1,\"extra\":true}\n", EINVAL),
        SEND("requires_ack as a string", "{\"to\":\"bob\",\"payload\":1,\"requires_ack\":\"yes\"}\n",
             EINVAL),
        SEND("requires_ack null", "{\"to\":\"bob\",\"payload\":1,\"requires_ack\":null}\n", EINVAL),
        SEND("an unknown priority", "{\"to\":\"bob\",\"payload\":1,\"priority\":\"high\"}\n", EINVAL),
        SEND("an upper-case priority", "{\"to\":\"bob\",\"payload\":1,\"priority\":\"URGENT\"}\n",
             EINVAL),
        SEND("an empty type", "{\"to\":\"bob\",\"payload\":1,\"type\":\"\"}\n", EINVAL),
        SEND("a numeric type", "{\"to\":\"bob\",\"payload\":1,\"type\":5}\n", EINVAL),
        {ALICE_WRITE("a type of 129 bytes", "send", APPEND, EINVAL), TXT(long_type)},
        {ALICE_WRITE("a correlation_id of 257 bytes", "send", APPEND, EINVAL), TXT(long_corr)},
        /* Deeper than the JSON scanner's limit (512): refused, not a crash. */
        {ALICE_WRITE("a payload nested 600 deep", "send", APPEND, EINVAL), TXT(deep_record)},
        SEND("a null priority", "{\"to\":\"bob\",\"payload\":1,\"priority\":null}\n", EINVAL),
        SEND("a raw newline inside a string", "{\"to\":\"bob\",\"payload\":\"a\nb\"}\n", EINVAL),
        SEND("a numeric correlation_id", "{\"to\":\"bob\",\"payload\":1,\"correlation_id\":7}\n",
             EINVAL),
        SEND("a forged from", "{\"to\":\"bob\",\"payload\":1,\"from\":\"bob\"}\n", EACCES),
        SEND("a numeric from", "{\"to\":\"bob\",\"payload\":1,\"from\":5}\n", EINVAL),
        SEND("a duplicate key", "{\"to\":\"bob\",\"to\":\"carol\",\"payload\":1}\n", EINVAL),
        SEND("a trailing comma", "{\"to\":\"bob\",\"payload\":1,}\n", EINVAL),
        SEND("single quotes", "{'to':'bob','payload':1}\n", EINVAL),
        SEND("a comment", "{\"to\":\"bob\",/* hi */\"payload\":1}\n", EINVAL),
        SEND("NaN as payload", "{\"to\":\"bob\",\"payload\":NaN}\n", EINVAL),
        SEND("text after a record", "{\"to\":\"bob\",\"payload\":1} and more\n", EINVAL),
        SEND("a good record, then a bad one",
             "{\"to\":\"bob\",\"payload\":1}\n{\"to\":\"bob\",\"payload\":2,\"x\":0}\n", EINVAL),
        SEND("a good record, then an unknown recipient",
             "{\"to\":\"bob\",\"payload\":1}\n{\"to\":\"nobody\",\"payload\":2}\n", ENOENT),
        SEND("a good record, then a draining recipient",
             "{\"to\":\"bob\",\"payload\":1}\n{\"to\":\"carol\",\"payload\":2}\n", ESHUTDOWN),
        SEND("bytes that are not UTF-8", "\xff\xfe\n", EINVAL),
        SEND("a payload string that is not UTF-8", "{\"to\":\"bob\",\"payload\":\"\xff\"}\n",
             EINVAL),
        SEND("a NUL between members", "{\"to\":\"bob\",\0\"payload\":1}\n", EINVAL),
        SEND("a NUL inside a string", "{\"to\":\"bob\",\"payload\":\"a\0b\"}\n", EINVAL),
        SEND("an escaped NUL in to", "{\"to\":\"bo\\u0000b\",\"payload\":1}\n", EINVAL),
        {ALICE_WRITE("a record over --max-message-size", "send", APPEND, EFBIG), TXT(big)},
        /* An unfinished record waits for the write that completes it, up to
         * --max-message-size plus 64 KiB. */
        {ALICE_WRITE("an unfinished record over the limit", "send", APPEND, EFBIG),
         TXT(unfinished)},
        {ALICE_WRITE("a record split across writes, bad once complete", "send", APPEND, EINVAL),
         LIT("{\"to\":\"bob\","), LIT2("\"payload\":1,\"x\":2}\n")},
        {OPEN("reading send", "agents/alice/send", O_RDONLY, EACCES, AGENT_LOG, "alice")},
        {OPEN("opening send read-write", "agents/alice/send", O_RDWR, EACCES, AGENT_LOG, "alice")},
    };
    RUN("send", rows);
    free(big);
    free(long_type);
    free(long_corr);
    free(deep);
    free(deep_record);
    free(unfinished);
}

/* ---- agents/A/health (§4) ------------------------------------------------- */

BUS_TEST_WITH(badinput, health, start_badinput)
{
    populate();
    char *long_reason = repeat("degraded ", 1025, 'r', "\n");
    char *huge = repeat("{\"status\":\"healthy\",\"blob\":\"", 70 * 1024, 'h', "\"}\n");
    char fields[2048];
    int at = snprintf(fields, sizeof fields, "{\"status\":\"healthy\"");
    for (int i = 0; i < 70; i++)
        at += snprintf(fields + at, sizeof fields - (size_t)at, ",\"f%d\":%d", i, i);
    snprintf(fields + at, sizeof fields - (size_t)at, "}\n");
    char *deep_open = repeat("{\"status\":\"healthy\",\"x\":", 600, '[', "");
    char *deep = repeat(deep_open, 600, ']', "}\n");
    const struct row rows[] = {
        HEALTH("an unknown word", "fine\n"),
        HEALTH("an upper-case word", "HEALTHY\n"),
        HEALTH("the word stale", "stale\n"),
        HEALTH("the word unknown", "unknown\n"),
        HEALTH("an unknown word with a reason", "ok all good\n"),
        HEALTH("a lone newline", "\n"),
        HEALTH("only blanks", " \t \r\n"),
        HEALTH("two reports in one write", "healthy\ndegraded slow\n"),
        HEALTH("a JSON array", "[1]\n"),
        HEALTH("a JSON string", "\"healthy\"\n"),
        HEALTH("invalid JSON", "{\"status\":\n"),
        HEALTH("JSON without status", "{\"reason\":\"x\"}\n"),
        HEALTH("a numeric status", "{\"status\":1}\n"),
        HEALTH("a null status", "{\"status\":null}\n"),
        HEALTH("a JSON status stale", "{\"status\":\"stale\"}\n"),
        HEALTH("the reserved field agent", "{\"status\":\"healthy\",\"agent\":\"bob\"}\n"),
        HEALTH("the reserved field last_seen",
               "{\"status\":\"healthy\",\"last_seen\":\"2000-01-01T00:00:00.000000Z\"}\n"),
        HEALTH("the reserved field age_s", "{\"status\":\"healthy\",\"age_s\":0}\n"),
        HEALTH("the reserved field state", "{\"status\":\"healthy\",\"state\":\"draining\"}\n"),
        HEALTH("the reserved field inbox_depth", "{\"status\":\"healthy\",\"inbox_depth\":0}\n"),
        HEALTH("a duplicate status", "{\"status\":\"healthy\",\"status\":\"degraded\"}\n"),
        HEALTH("a numeric reason", "{\"status\":\"healthy\",\"reason\":5}\n"),
        HEALTH("text after a JSON report", "{\"status\":\"healthy\"} trailing\n"),
        HEALTH("NaN in a JSON report", "{\"status\":\"healthy\",\"n\":NaN}\n"),
        HEALTH("a reason that is not UTF-8", "degraded \xff\xfe\n"),
        HEALTH("a JSON field that is not UTF-8", "{\"status\":\"healthy\",\"x\":\"\xff\"}\n"),
        HEALTH("a raw tab inside a JSON string", "{\"status\":\"healthy\",\"x\":\"a\tb\"}\n"),
        HEALTH("a NUL in the word", "healthy\0x\n"),
        HEALTH("a NUL in the reason", "healthy a\0b\n"),
        {ALICE_WRITE("a reason of 1025 bytes", "health", TRUNC, EINVAL), TXT(long_reason)},
        {ALICE_WRITE("a JSON report over 64 KiB", "health", TRUNC, EINVAL), TXT(huge)},
        {ALICE_WRITE("a JSON report with 70 extra fields", "health", TRUNC, EINVAL), TXT(fields)},
        {ALICE_WRITE("a JSON field nested 600 deep", "health", TRUNC, EINVAL), TXT(deep)},
    };
    RUN("health", rows);
    free(long_reason);
    free(huge);
    free(deep_open);
    free(deep);
}

/* ---- agents/A/metrics (§5) ------------------------------------------------ */

BUS_TEST_WITH(badinput, metrics, start_badinput)
{
    populate();
    char *long_name = repeat("", 129, 'm', " 1\n");
    char *long_line = repeat("cpu 1 ms note=", 4100, 'v', "\n");
    char *long_value = repeat("cpu 1 ms note=", 257, 'v', "\n");
    char *long_partial = repeat("cpu 1 ms note=", 5000, 'v', "");
    char tags[1024];
    int at = snprintf(tags, sizeof tags, "cpu 1");
    for (int i = 0; i < 17; i++)
        at += snprintf(tags + at, sizeof tags - (size_t)at, " k%d=v", i);
    snprintf(tags + at, sizeof tags - (size_t)at, "\n");
    const struct row rows[] = {
        METRIC("a name without a value", "cpu\n"),
        METRIC("a name starting with a digit", "1cpu 5\n"),
        METRIC("a name starting with a dot", ".cpu 5\n"),
        METRIC("a name with a slash", "cpu/s 5\n"),
        METRIC("a value NaN", "cpu NaN\n"),
        METRIC("a value nan", "cpu nan\n"),
        METRIC("a value inf", "cpu inf\n"),
        METRIC("a value -Infinity", "cpu -Infinity\n"),
        METRIC("a value that overflows to infinity", "cpu 1e999\n"),
        METRIC("a hexadecimal value", "cpu 0x10\n"),
        METRIC("a value with a trailing letter", "cpu 5x\n"),
        METRIC("two units", "cpu 5 ms s\n"),
        METRIC("a unit starting with a digit", "cpu 5 5ms\n"),
        METRIC("a tag without a key", "cpu 5 ms =v\n"),
        METRIC("a tag given twice", "cpu 5 ms k=v k=w\n"),
        METRIC("a tag value that is not UTF-8", "cpu 5 ms k=\xff\n"),
        METRIC("a unit that is not UTF-8", "cpu 5 m\xffs\n"),
        {ALICE_WRITE("17 tags", "metrics", APPEND, EINVAL), TXT(tags)},
        {ALICE_WRITE("a tag value of 257 bytes", "metrics", APPEND, EINVAL), TXT(long_value)},
        {ALICE_WRITE("a name of 129 bytes", "metrics", APPEND, EINVAL), TXT(long_name)},
        {ALICE_WRITE("a line over 4 KiB", "metrics", APPEND, EINVAL), TXT(long_line)},
        {ALICE_WRITE("an unfinished line over 4 KiB", "metrics", APPEND, EINVAL),
         TXT(long_partial)},
        METRIC("blank lines only", "\n\n"),
        METRIC("a JSON array", "[1,2]\n"),
        METRIC("JSON without value", "{\"metric\":\"cpu\"}\n"),
        METRIC("JSON without metric", "{\"value\":1}\n"),
        METRIC("a JSON value as a string", "{\"metric\":\"cpu\",\"value\":\"5\"}\n"),
        METRIC("a JSON value that overflows", "{\"metric\":\"cpu\",\"value\":1e999}\n"),
        METRIC("an unknown JSON field", "{\"metric\":\"cpu\",\"value\":1,\"extra\":1}\n"),
        METRIC("a numeric JSON tag", "{\"metric\":\"cpu\",\"value\":1,\"tags\":{\"a\":1}}\n"),
        METRIC("unterminated JSON", "{\"metric\":\"cpu\",\"value\":1\n"),
        METRIC("a good line, then a bad one", "cpu 1 ms\ncpu NaN\n"),
        METRIC("a name that is not UTF-8", "cpu\xff 5\n"),
        METRIC("a NUL after the value", "cpu 5\0\n"),
        {ALICE_WRITE("a line split across writes, bad once complete", "metrics", APPEND, EINVAL),
         LIT("cp"), LIT2("u NaN\n")},
        /* The last line needs no newline: it is judged at close. */
        {.name = "a bad last line without a newline", .op = OP_WRITE,
         .path = "agents/alice/metrics", .flags = APPEND, LIT("cpu"), .want = EINVAL,
         .step = BUS_STEP_CLOSE, .logged = AGENT_LOG, .agent = "alice"},
        {OPEN("writing metrics/metrics.jsonl", "metrics/metrics.jsonl", APPEND, EACCES, BUS_LOG,
              NULL),
         LIT("cpu 1\n")},
    };
    RUN("metrics", rows);
    free(long_name);
    free(long_line);
    free(long_value);
    free(long_partial);
}

/* ---- alerts/rules (§6) ---------------------------------------------------- */

BUS_TEST_WITH(badinput, rules, start_badinput)
{
    populate();
    char *long_name = repeat("", 65, 'r', " cpu p95 > 5\n");
    const struct row rows[] = {
        RULE("a name alone", APPEND, "r1\n"),
        RULE("no threshold", APPEND, "r1 cpu p95 >\n"),
        RULE("an unknown statistic", APPEND, "r1 cpu p42 > 5\n"),
        RULE("an upper-case statistic", APPEND, "r1 cpu P95 > 5\n"),
        RULE("an unknown comparison =>", APPEND, "r1 cpu p95 => 5\n"),
        RULE("an unknown comparison ==", APPEND, "r1 cpu p95 == 5\n"),
        RULE("a threshold NaN", APPEND, "r1 cpu p95 > NaN\n"),
        RULE("a threshold inf", APPEND, "r1 cpu p95 > inf\n"),
        RULE("a threshold that is a word", APPEND, "r1 cpu p95 > high\n"),
        RULE("an unknown severity", APPEND, "r1 cpu p95 > 5 fatal\n"),
        RULE("two severities", APPEND, "r1 cpu p95 > 5 critical warning\n"),
        RULE("a negative for=", APPEND, "r1 cpu p95 > 5 warning for=-1\n"),
        RULE("a for= that is not a number", APPEND, "r1 cpu p95 > 5 warning for=x\n"),
        RULE("a for= that overflows", APPEND, "r1 cpu p95 > 5 warning for=1e999\n"),
        RULE("a field too many", APPEND, "r1 cpu p95 > 5 warning for=1 extra\n"),
        RULE("a rule name starting with a digit", APPEND, "1r cpu p95 > 5\n"),
        RULE("a rule name with a slash", APPEND, "a/b cpu p95 > 5\n"),
        RULE("a threshold with a bare exponent", APPEND, "r1 cpu p95 > 5e\n"),
        RULE("an empty for=", APPEND, "r1 cpu p95 > 5 for=\n"),
        RULE("a bad metric name", APPEND, "r1 1cpu p95 > 5\n"),
        RULE("a rule name that is not UTF-8", APPEND, "r\xff cpu p95 > 5\n"),
        RULE("a NUL in a rule", APPEND, "r1 cpu p95 > 5\0\n"),
        RULE("a rule given twice in one write", APPEND, "r1 cpu p95 > 5\nr1 cpu p99 > 6\n"),
        RULE("a good rule, then a bad one (>>)", APPEND, "r1 cpu p95 > 5\nr2 cpu p95\n"),
        {.name = "a rule name of 65 bytes", .op = OP_WRITE, .path = "alerts/rules",
         .flags = APPEND, TXT(long_name), .want = EINVAL, .step = BUS_STEP_WRITE,
         .logged = BUS_LOG},
        /* `>` with a bad line keeps the old rules. */
        RULE("> with a bad line", TRUNC, "r1 cpu p95 >\n"),
        RULE("> with a good rule, then a bad one", TRUNC, "r1 cpu p95 > 5\nr2 cpu\n"),
        /* One open file is one change: a refused second write puts back the rules
         * the first write replaced. */
        {.name = "> with a good write, then a bad write", .op = OP_WRITE, .path = "alerts/rules",
         .flags = TRUNC, LIT("r1 cpu p95 > 5\n"), LIT2("r2 cpu p95 > x\n"), .want = EINVAL,
         .step = BUS_STEP_WRITE, .logged = BUS_LOG},
        {.name = ">> with a good write, then a bad write", .op = OP_WRITE, .path = "alerts/rules",
         .flags = APPEND, LIT("r1 cpu p95 > 5\n"), LIT2("r2 cpu p95 > x\n"), .want = EINVAL,
         .step = BUS_STEP_WRITE, .logged = BUS_LOG},
        {OPEN("writing alerts/alerts.jsonl", "alerts/alerts.jsonl", APPEND, EACCES, BUS_LOG, NULL),
         LIT("{}\n")},
    };
    RUN("rules", rows);
    free(long_name);
}

/* ---- agents/A/ctl (§7) ---------------------------------------------------- */

BUS_TEST_WITH(badinput, ctl, start_badinput)
{
    populate();
    char *long_cmd = repeat("drain", 200, ' ', "x\n");
    char ack_bobs[256], ack_extra[256], ack_unknown[256];
    snprintf(ack_bobs, sizeof ack_bobs, "ack %s\n", msg_id);
    snprintf(ack_extra, sizeof ack_extra, "ack %s extra\n", msg_id);
    snprintf(ack_unknown, sizeof ack_unknown, "ack %.*s99999\n", (int)strlen(msg_id) - 5, msg_id);
    const struct row rows[] = {
        CTL("a lone newline", "\n", EINVAL),
        CTL("only blanks", "  \t\n", EINVAL),
        CTL("an upper-case command", "DRAIN\n", EINVAL),
        CTL("a command with an argument", "drain now\n", EINVAL),
        CTL("resume with an argument", "resume please\n", EINVAL),
        CTL("an unknown command", "stop\n", EINVAL),
        CTL("ack without an id", "ack\n", EINVAL),
        CTL("ack of something that is not a msg_id", "ack MSG-bogus\n", EINVAL),
        CTL("two commands in one write", "drain\nresume\n", EINVAL),
        CTL("a NUL after the command", "drain\0\n", EINVAL),
        CTL("bytes that are not UTF-8", "\xff\xfe\n", EINVAL),
        {ALICE_WRITE("a command of 207 bytes", "ctl", TRUNC, EINVAL), TXT(long_cmd)},
        /* bob's message is not alice's to consume: it stays in bob's inbox. */
        {ALICE_WRITE("ack of another agent's message", "ctl", TRUNC, ENOENT), TXT(ack_bobs)},
        {ALICE_WRITE("ack of a msg_id and more", "ctl", TRUNC, EINVAL), TXT(ack_extra)},
        {ALICE_WRITE("ack of a msg_id nobody sent", "ctl", TRUNC, ENOENT), TXT(ack_unknown)},
    };
    RUN("ctl", rows);
    free(long_cmd);
}

/* ---- offsets, O_TRUNC and O_APPEND opens, truncate (§2, §8) ---------------- */

BUS_TEST_WITH(badinput, offsets_and_truncation, start_badinput)
{
    populate();
    const struct row rows[] = {
        /* send and outbox/B are streams: the kernel refuses pwrite (ESPIPE), and
         * an outbox file with nothing written sends nothing. */
        {.name = "pwrite to send", .op = OP_WRITE, .path = "agents/alice/send", .flags = O_WRONLY,
         .at = true, .num = 10, LIT("{\"to\":\"bob\",\"payload\":1}\n"), .want = ESPIPE,
         .step = BUS_STEP_WRITE, .logged = NO_LINE, .agent = "alice"},
        {.name = "pwrite to outbox/B", .op = OP_WRITE, .path = "agents/alice/outbox/bob",
         .flags = CREATE, .at = true, .num = 10, LIT("hi\n"), .want = ESPIPE,
         .step = BUS_STEP_WRITE, .logged = NO_LINE, .agent = "alice"},
        /* An offset does not get a bad report, point, rule or command past the checks. */
        {ALICE_WRITE("a bad report at offset 100", "health", O_WRONLY, EINVAL), .at = true,
         .num = 100, LIT("fine\n")},
        {ALICE_WRITE("a bad point at offset 1000", "metrics", O_WRONLY, EINVAL), .at = true,
         .num = 1000, LIT("cpu NaN\n")},
        {ALICE_WRITE("a bad command at offset 50", "ctl", O_WRONLY, EINVAL), .at = true, .num = 50,
         LIT("stop\n")},
        {.name = "a bad rule at offset 500", .op = OP_WRITE, .path = "alerts/rules",
         .flags = O_WRONLY, .at = true, .num = 500, LIT("r1 cpu\n"), .want = EINVAL,
         .step = BUS_STEP_WRITE, .logged = BUS_LOG},
        /* Opening with O_TRUNC and writing nothing erases nothing. */
        {.name = "O_TRUNC open of metrics, nothing written", .op = OP_WRITE,
         .path = "agents/alice/metrics", .flags = TRUNC, .logged = NO_LINE, .agent = "alice"},
        {.name = "O_TRUNC open of send, nothing written", .op = OP_WRITE,
         .path = "agents/alice/send", .flags = TRUNC, .logged = NO_LINE, .agent = "alice"},
        {.name = "O_TRUNC open of ctl, nothing written", .op = OP_WRITE,
         .path = "agents/alice/ctl", .flags = TRUNC, .logged = NO_LINE, .agent = "alice"},
        {.name = "O_TRUNC open of health, nothing written", .op = OP_WRITE,
         .path = "agents/alice/health", .flags = TRUNC, .logged = NO_LINE, .agent = "alice"},
        /* Read-only files refuse O_TRUNC and O_APPEND opens. */
        {OPEN("O_TRUNC open of an inbox message", in_file, O_RDWR | O_TRUNC, EACCES, AGENT_LOG,
              "bob")},
        {OPEN("O_TRUNC read-only open of an inbox message", in_file, O_RDONLY | O_TRUNC, EACCES,
              AGENT_LOG, "bob")},
        {OPEN("O_APPEND open of an inbox message", in_file, APPEND, EACCES, AGENT_LOG, "bob"),
         LIT("more\n")},
        {OPEN("O_APPEND open of next", "agents/bob/next", APPEND, EACCES, AGENT_LOG, "bob"),
         LIT("x\n")},
        {OPEN("O_TRUNC open of errors", "errors", TRUNC, EACCES, BUS_LOG, NULL)},
        {OPEN("O_TRUNC open of alerts.jsonl", "alerts/alerts.jsonl", TRUNC, EACCES, BUS_LOG,
              NULL)},
        /* truncate() of read-only files. */
        {REFUSED("truncate of an inbox message", OP_TRUNCATE, in_file, EACCES, AGENT_LOG, "bob")},
        {REFUSED("truncate of a sent message", OP_TRUNCATE, out_file, EACCES, AGENT_LOG,
                 "alice")},
        {REFUSED("truncate of errors", OP_TRUNCATE, "errors", EACCES, BUS_LOG, NULL)},
        {REFUSED("truncate of an agent's errors", OP_TRUNCATE, "agents/alice/errors", EACCES,
                 AGENT_LOG, "alice")},
        {REFUSED("truncate of metrics.jsonl", OP_TRUNCATE, "metrics/metrics.jsonl", EACCES,
                 BUS_LOG, NULL)},
        {REFUSED("truncate of health/status", OP_TRUNCATE, "health/status", EACCES, BUS_LOG,
                 NULL)},
        {REFUSED("truncate of summary.json", OP_TRUNCATE, "metrics/summary.json", EACCES, BUS_LOG,
                 NULL)},
        {REFUSED("truncate of alerts.jsonl", OP_TRUNCATE, "alerts/alerts.jsonl", EACCES, BUS_LOG,
                 NULL)},
        {REFUSED("truncate of next", OP_TRUNCATE, "agents/bob/next", EACCES, AGENT_LOG, "bob")},
        {REFUSED("truncate of README to 10 bytes", OP_TRUNCATE, "README", EACCES, BUS_LOG, NULL),
         .num = 10},
    };
    RUN("offsets and truncation", rows);
}

/* ---- rename, link, symlink, mknod, xattrs, chmod, chown, rm, mkdir (§8) ---- */

BUS_TEST_WITH(badinput, namespace, start_badinput)
{
    populate();
    char renamed[600];
    snprintf(renamed, sizeof renamed, "%s.old", in_file);
    char alice_view[600];
    snprintf(alice_view, sizeof alice_view, "agents/alice/inbox/%s",
             in_file + strlen("agents/bob/inbox/"));
    const struct row rows[] = {
        {REFUSED("rename of an inbox message", OP_RENAME, in_file, EACCES, AGENT_LOG, "bob"),
         .arg = renamed},
        {REFUSED("rename of an inbox message to another inbox", OP_RENAME, in_file, EACCES,
                 AGENT_LOG, "bob"),
         .arg = "agents/alice/inbox/x.json"},
        {REFUSED("rename of an agent", OP_RENAME, "agents/bob", EACCES, BUS_LOG, NULL),
         .arg = "agents/robert"},
        {REFUSED("rename of an agent to the top", OP_RENAME, "agents/bob", EACCES, BUS_LOG, NULL),
         .arg = "bob"},
        {REFUSED("rename of README", OP_RENAME, "README", EACCES, BUS_LOG, NULL),
         .arg = "README.old"},
        {REFUSED("rename of send over ctl", OP_RENAME, "agents/alice/send", EACCES, AGENT_LOG,
                 "alice"),
         .arg = "agents/alice/ctl"},
        {REFUSED("rename out of the mount", OP_RENAME, "README", EXDEV, NO_LINE, NULL),
         .arg = outside},
        {REFUSED("rename into the mount", OP_RENAME, outside, EXDEV, NO_LINE, NULL),
         .arg = "agents/alice/notes"},
        {REFUSED("link of README into an agent", OP_LINK, "README", EACCES, AGENT_LOG, "alice"),
         .arg = "agents/alice/readme"},
        {REFUSED("link of an inbox message", OP_LINK, in_file, EACCES, AGENT_LOG, "bob"),
         .arg = "agents/bob/inbox/copy.json"},
        {REFUSED("link out of the mount", OP_LINK, "README", EXDEV, NO_LINE, NULL),
         .arg = "/tmp/busfs-badinput-link"},
        {REFUSED("symlink in an agent", OP_SYMLINK, "agents/alice/l", EACCES, AGENT_LOG, "alice"),
         .arg = "../../README"},
        {REFUSED("symlink in an inbox", OP_SYMLINK, "agents/bob/inbox/l", EACCES, AGENT_LOG,
                 "bob"),
         .arg = "../../../README"},
        {REFUSED("symlink at the top", OP_SYMLINK, "readme-link", EACCES, BUS_LOG, NULL),
         .arg = "README"},
        {REFUSED("symlink as an agent", OP_SYMLINK, "agents/dave", EACCES, BUS_LOG, NULL),
         .arg = "alice"},
        {REFUSED("mkfifo in an agent", OP_MKNOD, "agents/alice/fifo", EACCES, AGENT_LOG, "alice"),
         .num = S_IFIFO | 0600},
        {REFUSED("mknod of a file in an inbox", OP_MKNOD, "agents/bob/inbox/node", EACCES,
                 AGENT_LOG, "bob"),
         .num = S_IFREG | 0600},
        {REFUSED("mknod of a device", OP_MKNOD, "agents/alice/null", EACCES, AGENT_LOG, "alice"),
         .num = S_IFCHR | 0600},
        {REFUSED("mknod at the top", OP_MKNOD, "node", EACCES, BUS_LOG, NULL),
         .num = S_IFREG | 0600},
        {REFUSED("setxattr on README", OP_SETXATTR, "README", EACCES, BUS_LOG, NULL),
         .arg = "user.note"},
        {REFUSED("setxattr on an inbox message", OP_SETXATTR, in_file, EACCES, AGENT_LOG, "bob"),
         .arg = "user.note"},
        {REFUSED("setxattr trusted.* on an agent", OP_SETXATTR, "agents/alice", EACCES,
                 AGENT_LOG, "alice"),
         .arg = "trusted.note"},
        {REFUSED("removexattr on health", OP_REMOVEXATTR, "agents/alice/health", EACCES,
                 AGENT_LOG, "alice"),
         .arg = "user.note"},
        {REFUSED("chmod of an agent", OP_CHMOD, "agents/alice", EACCES, AGENT_LOG, "alice"),
         .num = 0700},
        {REFUSED("chmod of send", OP_CHMOD, "agents/alice/send", EACCES, AGENT_LOG, "alice"),
         .num = 0666},
        {REFUSED("chmod of an inbox message", OP_CHMOD, in_file, EACCES, AGENT_LOG, "bob"),
         .num = 0644},
        {REFUSED("chmod of README", OP_CHMOD, "README", EACCES, BUS_LOG, NULL), .num = 0777},
        {REFUSED("chmod of alerts/rules", OP_CHMOD, "alerts/rules", EACCES, BUS_LOG, NULL),
         .num = 0600},
        {REFUSED("chmod of agents/", OP_CHMOD, "agents", EACCES, BUS_LOG, NULL), .num = 0755},
        {REFUSED("chown of health", OP_CHOWN, "agents/alice/health", EACCES, AGENT_LOG, "alice"),
         .num = 4242},
        {REFUSED("chown of health/status", OP_CHOWN, "health/status", EACCES, BUS_LOG, NULL),
         .num = 4242},
        {REFUSED("chown of a sent message", OP_CHOWN, out_file, EACCES, AGENT_LOG, "alice"),
         .num = 4242},
        {REFUSED("rmdir of an inbox", OP_RMDIR, "agents/alice/inbox", EACCES, AGENT_LOG, "alice")},
        {REFUSED("rmdir of an outbox", OP_RMDIR, "agents/alice/outbox", EACCES, AGENT_LOG,
                 "alice")},
        {REFUSED("rmdir of health/", OP_RMDIR, "health", EACCES, BUS_LOG, NULL)},
        {REFUSED("rmdir of agents/", OP_RMDIR, "agents", EACCES, BUS_LOG, NULL)},
        {REFUSED("rm of send", OP_UNLINK, "agents/alice/send", EACCES, AGENT_LOG, "alice")},
        {REFUSED("rm of README", OP_UNLINK, "README", EACCES, BUS_LOG, NULL)},
        {REFUSED("rm of health/status", OP_UNLINK, "health/status", EACCES, BUS_LOG, NULL)},
        {REFUSED("rm of alerts/rules", OP_UNLINK, "alerts/rules", EACCES, BUS_LOG, NULL)},
        {REFUSED("rm of an inbox name that is no message", OP_UNLINK,
                 "agents/bob/inbox/00000000000000000001-x.json", ENOENT, NO_LINE, "bob")},
        {.name = "rm of bob's message through alice's inbox", .op = OP_UNLINK,
         .path = alice_view, .want = ENOENT, .logged = NO_LINE, .agent = "alice"},
        {REFUSED("link onto a name that exists", OP_LINK, "README", EEXIST, NO_LINE, "alice"),
         .arg = "agents/alice/send"},
        {REFUSED("rm of an agent directory", OP_UNLINK, "agents/alice", EISDIR, NO_LINE, NULL)},
        {REFUSED("mkdir at the top", OP_MKDIR, "topdir", EACCES, BUS_LOG, NULL)},
        {REFUSED("mkdir in health/", OP_MKDIR, "health/x", EACCES, BUS_LOG, NULL)},
        {REFUSED("mkdir in an agent", OP_MKDIR, "agents/alice/sub", EACCES, AGENT_LOG, "alice")},
        {REFUSED("mkdir in an inbox", OP_MKDIR, "agents/alice/inbox/sub", EACCES, AGENT_LOG,
                 "alice")},
    };
    RUN("namespace", rows);
    unlink("/tmp/busfs-badinput-link");
}

/* ---- writes to read-only files, creates where nothing can be made (§2, §8) -- */

BUS_TEST_WITH(badinput, read_only_and_create, start_badinput)
{
    populate();
    const struct row rows[] = {
        {OPEN("writing README", "README", O_WRONLY, EACCES, BUS_LOG, NULL), LIT("x\n")},
        {OPEN("writing README with O_CREAT", "README", CREATE, EACCES, BUS_LOG, NULL),
         LIT("x\n")},
        {OPEN("writing errors", "errors", APPEND, EACCES, BUS_LOG, NULL), LIT("{}\n")},
        {OPEN("writing an agent's errors", "agents/alice/errors", APPEND, EACCES, AGENT_LOG,
              "alice"),
         LIT("{}\n")},
        {OPEN("writing health/status", "health/status", O_WRONLY, EACCES, BUS_LOG, NULL),
         LIT("healthy\n")},
        {OPEN("opening health/status read-write", "health/status", O_RDWR, EACCES, BUS_LOG, NULL)},
        {OPEN("writing metrics/summary.json", "metrics/summary.json", CREATE, EACCES, BUS_LOG,
              NULL),
         LIT("{}\n")},
        {OPEN("writing metrics/busfs.prom", "metrics/busfs.prom", O_WRONLY, EACCES, BUS_LOG, NULL),
         LIT("x 1\n")},
        {OPEN("writing metrics/metrics.jsonl", "metrics/metrics.jsonl", O_WRONLY, EACCES, BUS_LOG,
              NULL),
         LIT("{}\n")},
        {OPEN("writing alerts/active.json", "alerts/active.json", O_WRONLY, EACCES, BUS_LOG, NULL),
         LIT("{}\n")},
        {OPEN("writing alerts/alerts.jsonl", "alerts/alerts.jsonl", O_WRONLY, EACCES, BUS_LOG,
              NULL),
         LIT("{}\n")},
        {OPEN("writing next", "agents/bob/next", O_WRONLY, EACCES, AGENT_LOG, "bob"), LIT("x\n")},
        {OPEN("opening next read-write", "agents/bob/next", O_RDWR, EACCES, AGENT_LOG, "bob")},
        {OPEN("writing an inbox message", in_file, O_WRONLY, EACCES, AGENT_LOG, "bob"),
         LIT("x\n")},
        {OPEN("writing a sent message", out_file, APPEND, EACCES, AGENT_LOG, "alice"),
         LIT("x\n")},
        {OPEN("creating a file at the top", "notes", CREATE_NEW, EACCES, BUS_LOG, NULL),
         LIT("x\n")},
        {OPEN("creating a file in agents/", "agents/notes.txt", CREATE_NEW, EACCES, BUS_LOG, NULL),
         LIT("x\n")},
        {OPEN("creating a file in an agent", "agents/alice/notes", CREATE_NEW, EACCES, AGENT_LOG,
              "alice"),
         LIT("x\n")},
        {OPEN("creating a file in health/", "health/mine", CREATE_NEW, EACCES, BUS_LOG, NULL),
         LIT("x\n")},
        {OPEN("creating a file in metrics/", "metrics/mine.jsonl", CREATE_NEW, EACCES, BUS_LOG,
              NULL),
         LIT("x\n")},
        {OPEN("creating a file in alerts/", "alerts/rules.d", CREATE_NEW, EACCES, BUS_LOG, NULL),
         LIT("x\n")},
        {OPEN("creating a message in an inbox", "agents/bob/inbox/00000000000000000009-fake.json",
              CREATE_NEW, EACCES, AGENT_LOG, "bob"),
         LIT("{}\n")},
        {OPEN("creating a file named like no message in an inbox", "agents/alice/inbox/x",
              CREATE, EACCES, AGENT_LOG, "alice"),
         LIT("x\n")},
        {OPEN("O_EXCL create of send, which exists", "agents/alice/send", CREATE_NEW, EEXIST,
              NO_LINE, "alice"),
         LIT("x\n")},
        {OPEN("creating a file in an unknown agent", "agents/nobody/send", CREATE, ENOENT,
              NO_LINE, NULL),
         LIT("x\n")},
    };
    RUN("read-only files and creates", rows);
}

/* ---- limits and endings -----------------------------------------------------
 *
 * A health report's count of extra fields, a send record cut off by close, and
 * truncate() to a size other than 0.
 */

BUS_TEST_WITH(badinput, limits_and_endings, start_badinput)
{
    populate();
    char fields[2048];
    int at = snprintf(fields, sizeof fields, "{\"status\":\"healthy\"");
    for (int i = 0; i < 65; i++)
        at += snprintf(fields + at, sizeof fields - (size_t)at, ",\"f%d\":%d", i, i);
    snprintf(fields + at, sizeof fields - (size_t)at, "}\n");
    const struct row rows[] = {
        /* README: a JSON report has status, reason and up to 64 other fields. */
        {ALICE_WRITE("a JSON report with 65 extra fields", "health", TRUNC, EINVAL), TXT(fields)},
        /* A record nobody completes is refused at close, with a reason:
         * `echo '{"to":"bob"' >> send` must not look as if it sent something. */
        {.name = "an unfinished record at close", .op = OP_WRITE, .path = "agents/alice/send",
         .flags = APPEND, LIT("{\"to\":\"bob\",\"payload\":"), .want = EINVAL,
         .step = BUS_STEP_CLOSE, .logged = AGENT_LOG, .agent = "alice"},
        /* truncate() to a size other than 0 means nothing on these files (§8: EACCES
         * where an operation means nothing). */
        {REFUSED("truncate of health to 5 bytes", OP_TRUNCATE, "agents/alice/health", EACCES,
                 AGENT_LOG, "alice"),
         .num = 5},
        {REFUSED("truncate of send to 5 bytes", OP_TRUNCATE, "agents/alice/send", EACCES,
                 AGENT_LOG, "alice"),
         .num = 5},
        {REFUSED("truncate of ctl to 5 bytes", OP_TRUNCATE, "agents/alice/ctl", EACCES, AGENT_LOG,
                 "alice"),
         .num = 5},
        {REFUSED("truncate of metrics to 5 bytes", OP_TRUNCATE, "agents/alice/metrics", EACCES,
                 AGENT_LOG, "alice"),
         .num = 5},
        {REFUSED("truncate of alerts/rules to 5 bytes", OP_TRUNCATE, "alerts/rules", EACCES,
                 BUS_LOG, NULL),
         .num = 5},
    };
    RUN("limits and endings", rows);
}
