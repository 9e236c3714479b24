/*
 * test_ownership.c — SPEC §9 under `-o allow_other`: agents/A belongs to
 * the uid that made it (`ls -l` shows it); only that uid, or root, may send
 * as A, write A's health, metrics and ctl, read or remove A's inbox, read
 * `next`, or rmdir A; anyone may read health, metrics, alerts and agents/;
 * `from` cannot be forged; the alert rules are the operator's (§6). Each
 * refusal is EACCES with a reason in `errors` (and in agents/A/errors when
 * it concerns A, §8) and changes nothing. access(2) answers by the same
 * rules.
 *
 * The tests run as root. Other users are bare numeric uids: a forked child
 * drops to one (setgroups, setgid, setuid) to make the exact syscall and
 * report its errno (struct op, as_user), and shell commands run under
 * setpriv(1) (as_sh), as a user would type them.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OWNER 4101   /* the uid that registers alice */
#define MALLORY 4102 /* another user, who registers mallory */

/* ---- set-up ----------------------------------------------------------- */

/* Not root, or no setpriv: skipped, unless CI=true: then failed. */
static void require(bool ok, const char *why)
{
    if (ok)
        return;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0)
        cr_assert_fail("%s and CI=true", why);
    cr_skip_test("%s", why);
}

/* A bus mounted with -o allow_other, its temp dir open to other uids. */
static void start_allow_other(void)
{
    bus_require_fuse();
    require(geteuid() == 0, "the ownership tests switch uids: they must run as root");
    char *argv[] = {"setpriv", "--version", NULL};
    require(bus_exec(NULL, argv, 5000, NULL) == 0, "setpriv (util-linux) is missing");
    bus_start(&bus, "-o", "allow_other", NULL);
    cr_assert(chmod(bus.dir, 0755) == 0, "chmod %s: %s", bus.dir, strerror(errno));
}

/* ---- running as another uid: shell commands ----------------------------- */

/* `SHELL -c CMD` in the mount dir as uid (and gid) uid, through setpriv. */
static int as_shell(uid_t uid, const char *shell, struct bus_cmd *r, const char *cmd)
{
    char ruid[32], rgid[32];
    snprintf(ruid, sizeof ruid, "--reuid=%u", (unsigned)uid);
    snprintf(rgid, sizeof rgid, "--regid=%u", (unsigned)uid);
    char *argv[] = {"setpriv",     ruid, rgid, "--clear-groups", (char *)shell, "-c",
                    (char *)cmd, NULL};
    return bus_exec(bus.mnt, argv, 20000, r);
}

/* `sh -c CMD` as uid; r may be NULL. */
static int as_sh(uid_t uid, struct bus_cmd *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int as_sh(uid_t uid, struct bus_cmd *r, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return as_shell(uid, "sh", r, cmd);
}

/* as_sh that must succeed. */
static void as_sh_ok(uid_t uid, const char *cmd)
{
    struct bus_cmd r;
    int status = as_sh(uid, &r, "%s", cmd);
    cr_assert_eq(status, 0, "uid %u: `%s`: status %d: %s", (unsigned)uid, cmd, status, r.err);
    bus_cmd_free(&r);
}

/* ---- running as another uid: exact syscalls ----------------------------- */

enum op_kind {
    OP_READ,     /* open(flags | O_RDONLY), read to the end, close */
    OP_WRITE,    /* open(flags, 0644), one write(data), close */
    OP_LIST,     /* opendir, readdir: the names, one a line */
    OP_TOUCH,    /* utimensat(path, NULL): what `touch` does */
    OP_TRUNCATE, /* truncate(path, 0) */
    OP_UNLINK,
    OP_RMDIR,
    OP_MKDIR,
    OP_ACCESS, /* access(path, flags) */
};

/*
 * One operation as a user makes it. In path and data, {file1} and {file2}
 * stand for the names of alice's two messages (agents/alice/inbox/...),
 * {id1} and {id2} for their msg_ids, {sent} for the name of the message
 * alice sent bob (agents/alice/outbox/...).
 */
struct op {
    const char *what;
    enum op_kind kind;
    const char *path; /* relative to the mount */
    int flags;        /* open flags (OP_READ, OP_WRITE), or access(2)'s mask */
    const char *data; /* OP_WRITE */
};

enum step { STEP_NONE, STEP_SETUID, STEP_OPEN, STEP_IO, STEP_CLOSE };
static const char *const step_names[] = {"-", "setuid", "open", "read/write", "close"};

struct outcome {
    enum step step; /* where it failed */
    int err;        /* 0, or the errno */
    char *out;      /* what OP_READ read; OP_LIST's names one a line (malloc'd) */
    size_t len;
};

/* The two messages in alice's inbox (populate). */
static struct {
    char file[2][200];
    char id[2][120];
    char sent[200];
} msgs;

/* tmpl with {file1}, {file2}, {id1}, {id2} replaced. */
static void fill(char *out, size_t n, const char *tmpl)
{
    static const char *const tokens[] = {"{file1}", "{file2}", "{id1}", "{id2}", "{sent}"};
    const char *values[] = {msgs.file[0], msgs.file[1], msgs.id[0], msgs.id[1], msgs.sent};
    const size_t ntokens = sizeof tokens / sizeof *tokens;
    size_t w = 0;
    while (*tmpl && w + 1 < n) {
        size_t t = 0;
        while (t < ntokens && strncmp(tmpl, tokens[t], strlen(tokens[t])) != 0)
            t++;
        if (t < ntokens) {
            w += (size_t)snprintf(out + w, n - w, "%s", values[t]);
            if (w >= n)
                w = n - 1;
            tmpl += strlen(tokens[t]);
        } else {
            out[w++] = *tmpl++;
        }
    }
    out[w] = '\0';
}

struct growing {
    char *data;
    size_t len, cap;
};

static void grow_add(struct growing *g, const void *p, size_t n)
{
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 4096;
        while (cap < g->len + n + 1)
            cap *= 2;
        char *d = realloc(g->data, cap);
        if (!d)
            return;
        g->data = d;
        g->cap = cap;
    }
    memcpy(g->data + g->len, p, n);
    g->len += n;
    g->data[g->len] = '\0';
}

/* In the child: performs op on path; the errno of the failed step, or 0. */
static int perform(const struct op *op, const char *path, const char *data, struct growing *out,
                   enum step *step)
{
    *step = STEP_OPEN;
    switch (op->kind) {
    case OP_READ: {
        int fd = open(path, op->flags | O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return errno;
        *step = STEP_IO;
        char buf[65536];
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0) {
                int err = errno;
                close(fd);
                return err;
            }
            if (n == 0)
                break;
            grow_add(out, buf, (size_t)n);
        }
        *step = STEP_CLOSE;
        return close(fd) < 0 ? errno : 0;
    }
    case OP_WRITE: {
        int fd = open(path, op->flags | O_CLOEXEC, 0644);
        if (fd < 0)
            return errno;
        *step = STEP_IO;
        size_t len = strlen(data);
        ssize_t n = write(fd, data, len);
        if (n < 0 || (size_t)n != len) {
            int err = n < 0 ? errno : EIO;
            close(fd);
            return err;
        }
        *step = STEP_CLOSE;
        return close(fd) < 0 ? errno : 0;
    }
    case OP_LIST: {
        DIR *d = opendir(path);
        if (!d)
            return errno;
        *step = STEP_IO;
        struct dirent *e;
        errno = 0;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            grow_add(out, e->d_name, strlen(e->d_name));
            grow_add(out, "\n", 1);
        }
        int err = errno;
        closedir(d);
        return err;
    }
    case OP_TOUCH:
        return utimensat(AT_FDCWD, path, NULL, 0) < 0 ? errno : 0;
    case OP_TRUNCATE:
        return truncate(path, 0) < 0 ? errno : 0;
    case OP_UNLINK:
        return unlink(path) < 0 ? errno : 0;
    case OP_RMDIR:
        return rmdir(path) < 0 ? errno : 0;
    case OP_MKDIR:
        return mkdir(path, 0755) < 0 ? errno : 0;
    case OP_ACCESS:
        return access(path, op->flags) < 0 ? errno : 0;
    }
    return EINVAL;
}

struct report {
    int step;
    int err;
};

/*
 * Runs op as uid (and gid uid, no supplementary groups) in a forked child;
 * uid 0 runs it as root. The test process holds no file open meanwhile, so
 * the fork sends no FLUSH to busfs.
 */
static struct outcome as_user(uid_t uid, const struct op *op)
{
    char rel[1024], data[4096];
    fill(rel, sizeof rel, op->path);
    fill(data, sizeof data, op->data ? op->data : "");
    const char *path = AT("%s", rel);
    int fds[2];
    cr_assert(pipe2(fds, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(fds[0]);
        struct growing out = {0};
        enum step step = STEP_SETUID;
        int err = 0;
        if (uid != 0 && (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0))
            err = errno;
        else if (getuid() != uid || geteuid() != uid)
            err = EPERM;
        else
            err = perform(op, path, data, &out, &step);
        struct report rep = {.step = err ? (int)step : STEP_NONE, .err = err};
        if (write(fds[1], &rep, sizeof rep) != sizeof rep)
            _exit(2);
        for (size_t off = 0; off < out.len;) {
            ssize_t n = write(fds[1], out.data + off, out.len - off);
            if (n <= 0)
                _exit(2);
            off += (size_t)n;
        }
        _exit(0);
    }
    close(fds[1]);
    struct growing got = {0};
    long long end = bus_now_ms() + BUS_WAIT_MS;
    for (;;) {
        long long left = end - bus_now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {fds[0], POLLIN, 0};
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            break;
        char buf[65536];
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        grow_add(&got, buf, (size_t)n);
    }
    close(fds[0]);
    int status = bus_wait_child(pid, 5000);
    cr_assert(status == 0 && got.len >= sizeof(struct report),
              "uid %u: %s (%s): the child did not report (status %d)", (unsigned)uid, op->what,
              rel, status);
    struct report rep;
    memcpy(&rep, got.data, sizeof rep);
    cr_assert(rep.step != STEP_SETUID, "uid %u: cannot switch to the uid: %s", (unsigned)uid,
              strerror(rep.err));
    struct outcome o = {.step = (enum step)rep.step, .err = rep.err};
    o.len = got.len - sizeof rep;
    o.out = malloc(o.len + 1);
    cr_assert(o.out);
    memcpy(o.out, got.data + sizeof rep, o.len);
    o.out[o.len] = '\0';
    free(got.data);
    return o;
}

static const char *describe(const struct outcome *o)
{
    static char text[160];
    if (o->err == 0)
        return "success";
    snprintf(text, sizeof text, "%s at %s", strerror(o->err), step_names[o->step]);
    return text;
}

/* as_user that must succeed; returns what it read (malloc'd). */
static char *allowed(uid_t uid, const struct op *op)
{
    struct outcome o = as_user(uid, op);
    cr_assert(o.err == 0, "uid %u: %s (%s) gave %s, want success", (unsigned)uid, op->what,
              op->path, describe(&o));
    return o.out;
}

/* Does one of the log's lines from `before` on say "errno":"EACCES"? */
static bool logged_eacces(const char *log, size_t before)
{
    json_t *lines = bus_jsonl(log);
    bool found = false;
    for (size_t i = before; i < json_array_size(lines); i++) {
        const char *e = json_string_value(json_object_get(json_array_get(lines, i), "errno"));
        found = found || (e && strcmp(e, "EACCES") == 0);
    }
    json_decref(lines);
    return found;
}

/*
 * Is a refusal of uid from line `before` on accounted for in `errors`: an EACCES
 * line, or, past BUS_ERRORS_PER_SECOND refusals of uid within a second (SPEC
 * §11), the {"suppressed":N} record that follows once that second is over?
 */
static bool accounted_in_errors(uid_t uid, size_t before)
{
    long long end = bus_now_ms() + BUS_WAIT_MS;
    for (;;) {
        json_t *lines = bus_jsonl(AT("errors"));
        bool found = false;
        for (size_t i = before; i < json_array_size(lines) && !found; i++) {
            const json_t *v = json_array_get(lines, i);
            const char *e = json_string_value(json_object_get(v, "errno"));
            bool mine = json_integer_value(json_object_get(v, "uid")) == (json_int_t)uid;
            found = (e && strcmp(e, "EACCES") == 0) || (mine && json_object_get(v, "suppressed"));
        }
        json_decref(lines);
        if (found || bus_now_ms() > end)
            return found;
        bus_pause_ms(50);
    }
}

/*
 * op as uid fails with EACCES (at open when at_open), with a reason line
 * in `errors` (or counted there, see accounted_in_errors) and, when agent is
 * not NULL, in agents/AGENT/errors.
 */
static void refused(uid_t uid, const struct op *op, const char *agent, bool at_open)
{
    size_t top = bus_jsonl_count(AT("errors"));
    size_t agent_top = agent ? bus_jsonl_count(AT("agents/%s/errors", agent)) : 0;
    struct outcome o = as_user(uid, op);
    cr_assert(o.err == EACCES, "uid %u: %s (%s) gave %s, want EACCES", (unsigned)uid, op->what,
              op->path, describe(&o));
    if (at_open)
        cr_assert(o.step == STEP_OPEN, "uid %u: %s (%s): EACCES came at %s, not at open",
                  (unsigned)uid, op->what, op->path, step_names[o.step]);
    else
        cr_assert(o.step == STEP_OPEN || o.step == STEP_IO,
                  "uid %u: %s (%s): EACCES came only at close, which `echo` ignores",
                  (unsigned)uid, op->what, op->path);
    cr_assert(accounted_in_errors(uid, top), "%s: errors has no EACCES line for it", op->what);
    if (agent) {
        bus_assert_logged(AT("agents/%s/errors", agent), agent_top, op->what);
        cr_assert(logged_eacces(AT("agents/%s/errors", agent), agent_top),
                  "%s: agents/%s/errors has no EACCES line for it", op->what, agent);
    }
    free(o.out);
}

/* ---- the bus these tests share ------------------------------------------ */

/* The names in a directory, one a line (malloc'd); "" when it cannot be listed. */
static char *names_of(const char *path)
{
    size_t n = 0;
    char **names = bus_ls(path, &n);
    struct growing g = {0};
    grow_add(&g, "", 0);
    for (size_t i = 0; names && i < n; i++) {
        grow_add(&g, names[i], strlen(names[i]));
        grow_add(&g, "\n", 1);
    }
    if (names)
        bus_ls_free(names, n);
    return g.data;
}

/*
 * alice is registered by OWNER (`mkdir agents/alice` as that uid), mallory
 * by MALLORY, bob by root. alice has reported `healthy` and one metric
 * point and sent bob one message; bob has sent alice two messages, the
 * first asking for an ack (their names and ids in msgs).
 */
static void populate(void)
{
    as_sh_ok(OWNER, "mkdir agents/alice");
    as_sh_ok(MALLORY, "mkdir agents/mallory");
    bus_agents(&bus, "bob", NULL);
    as_sh_ok(OWNER, "echo healthy > agents/alice/health");
    as_sh_ok(OWNER, "echo 'alice.metric 1 ms' >> agents/alice/metrics");
    as_sh_ok(OWNER, "echo 'hello bob' > agents/alice/outbox/bob");
    cr_assert_eq(bus_append(AT("agents/bob/send"),
                            "{\"to\":\"alice\",\"payload\":\"one\",\"requires_ack\":true}\n"
                            "{\"to\":\"alice\",\"payload\":\"two\"}\n"),
                 0, "bob's send to alice failed");
    size_t n;
    char **names = bus_ls(AT("agents/alice/inbox"), &n);
    cr_assert(names && n == 2, "alice's inbox lists %zu files, want 2", names ? n : 0);
    json_t *inbox = bus_inbox("alice");
    for (size_t i = 0; i < 2; i++) {
        snprintf(msgs.file[i], sizeof msgs.file[i], "%s", names[i]);
        snprintf(msgs.id[i], sizeof msgs.id[i], "%s",
                 bus_str(json_array_get(inbox, i), "msg_id"));
    }
    json_decref(inbox);
    bus_ls_free(names, n);
    names = bus_ls(AT("agents/alice/outbox"), &n);
    cr_assert(names && n == 1, "alice's outbox lists %zu files, want 1", names ? n : 0);
    snprintf(msgs.sent, sizeof msgs.sent, "%s", names[0]);
    bus_ls_free(names, n);
}

/* A health object as JSON without age_s (malloc'd), "" when unreadable. */
static char *health_without_age(const char *agent)
{
    char *text = bus_read(AT("agents/%s/health", agent), NULL);
    json_t *h = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    if (!h)
        return strdup("");
    json_object_del(h, "age_s");
    char *dump = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    return dump;
}

/*
 * Everything a refusal must leave as it was, read as root: the agents,
 * and for each of alice, bob and mallory the inbox, outbox, ctl, health
 * (but its age) and metrics; and the alert rules (malloc'd).
 */
static char *bus_state(void)
{
    struct growing g = {0};
    char *part = names_of(AT("agents"));
    grow_add(&g, part, strlen(part));
    free(part);
    const char *agents[] = {"alice", "bob", "mallory"};
    for (size_t i = 0; i < 3; i++) {
        char head[64];
        int n = snprintf(head, sizeof head, "== %s\n", agents[i]);
        grow_add(&g, head, (size_t)n);
        char *parts[5] = {
            names_of(AT("agents/%s/inbox", agents[i])),
            names_of(AT("agents/%s/outbox", agents[i])),
            bus_read(AT("agents/%s/ctl", agents[i]), NULL),
            health_without_age(agents[i]),
            bus_read(AT("agents/%s/metrics", agents[i]), NULL),
        };
        for (size_t k = 0; k < 5; k++) {
            if (parts[k])
                grow_add(&g, parts[k], strlen(parts[k]));
            grow_add(&g, "\n--\n", 4);
            free(parts[k]);
        }
    }
    char *rules = bus_read(AT("alerts/rules"), NULL);
    if (rules)
        grow_add(&g, rules, strlen(rules));
    free(rules);
    return g.data;
}

static void assert_state_unchanged(const char *before, const char *what)
{
    char *now = bus_state();
    cr_assert_str_eq(now, before, "%s changed the bus", what);
    free(now);
}

/* ---- 1. mkdir makes the caller the owner ---------------------------------- */

/* `ls -ln DIR` as root: the owner and group of each name (not "total"). */
static void assert_ls_owner(const char *dir, const char *name, unsigned uid)
{
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "ls -ln '%s'", dir), 0, "ls -ln %s: %s", dir, r.err);
    bool seen = false;
    char *save = NULL;
    for (char *line = strtok_r(r.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "total", 5) == 0)
            continue;
        char mode[32], entry[256];
        unsigned links, u, g;
        cr_assert(sscanf(line, "%31s %u %u %u %*s %*s %*s %*s %255s", mode, &links, &u, &g,
                         entry) == 5,
                  "ls -ln %s: cannot read %s", dir, line);
        if (name && strcmp(entry, name) != 0)
            continue;
        seen = true;
        cr_assert(u == uid && g == uid, "ls -ln %s: %s is owned by %u:%u, want %u:%u", dir, entry,
                  u, g, uid, uid);
    }
    cr_assert(seen, "ls -ln %s lists no %s", dir, name ? name : "file");
    bus_cmd_free(&r);
}

BUS_TEST_WITH(ownership, mkdir_makes_the_caller_the_owner, start_allow_other)
{
    populate();
    assert_ls_owner("agents", "alice", OWNER);
    assert_ls_owner("agents", "mallory", MALLORY);
    assert_ls_owner("agents", "bob", 0);
    assert_ls_owner("agents/alice", NULL, OWNER); /* every file of alice's */
    assert_ls_owner("agents/alice/inbox", NULL, OWNER);
    assert_ls_owner("agents/alice/outbox", NULL, OWNER);
    assert_ls_owner("agents/mallory", NULL, MALLORY);

    /* The same through stat(2), as the other user sees it. */
    const char *files[] = {"",     "/inbox", "/outbox", "/send",   "/next",
                           "/ctl", "/health", "/metrics", "/errors"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        struct stat st;
        cr_assert(stat(AT("agents/alice%s", files[i]), &st) == 0, "stat agents/alice%s: %s",
                  files[i], strerror(errno));
        cr_assert(st.st_uid == OWNER && st.st_gid == OWNER,
                  "agents/alice%s is owned by %u:%u, want %u:%u", files[i], (unsigned)st.st_uid,
                  (unsigned)st.st_gid, OWNER, OWNER);
    }
    struct bus_cmd r;
    cr_assert_eq(as_sh(MALLORY, &r, "stat -c %%u agents/alice agents/alice/inbox/%s",
                       msgs.file[0]),
                 0, "stat as mallory: %s", r.err);
    cr_assert_str_eq(r.out, "4101\n4101\n", "owners as mallory sees them");
    bus_cmd_free(&r);

    /* A name is taken once, whoever asks (the kernel, which knows the name,
     * may answer EEXIST without asking busfs). */
    const struct op again = {"mkdir agents/alice again", OP_MKDIR, "agents/alice", 0, NULL};
    struct outcome o = as_user(MALLORY, &again);
    cr_assert(o.err == EEXIST, "mkdir of alice by another uid gave %s, want EEXIST",
              describe(&o));
    free(o.out);
    assert_ls_owner("agents", "alice", OWNER);
}

BUS_TEST_WITH(ownership, the_outbox_shows_owner_only_modes, start_allow_other)
{
    /* Its files are the envelopes the recipients received: like inbox/, the
     * owner's only, and read-only (rm is refused: it is a record). */
    populate();
    struct stat st;
    cr_assert(stat(AT("agents/alice/outbox"), &st) == 0, "stat outbox: %s", strerror(errno));
    cr_assert_eq(st.st_mode, S_IFDIR | 0700, "agents/alice/outbox has mode %o, want %o",
                 (unsigned)st.st_mode, (unsigned)(S_IFDIR | 0700));
    cr_assert(stat(AT("agents/alice/outbox/%s", msgs.sent), &st) == 0, "stat %s: %s", msgs.sent,
              strerror(errno));
    cr_assert_eq(st.st_mode, S_IFREG | 0400, "an outbox file has mode %o, want %o",
                 (unsigned)st.st_mode, (unsigned)(S_IFREG | 0400));
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "ls -ld agents/alice/outbox agents/alice/inbox"), 0);
    cr_assert(strncmp(r.out, "drwx------", 10) == 0 && strstr(r.out, "\ndrwx------"),
              "ls -ld shows: %s", r.out);
    bus_cmd_free(&r);
}

/* ---- 2. what only the owner (or root) may do ------------------------------ */

struct guarded {
    struct op op;
    bool at_open; /* the refusal must come at open (create), §3 */
};

/* Operations on alice's files that only OWNER and root may make. */
static const struct guarded owner_only[] = {
    {{"send as alice through outbox/bob", OP_WRITE, "agents/alice/outbox/bob",
      O_WRONLY | O_CREAT | O_TRUNC, "forged"},
     true},
    {{"send as alice through outbox/all", OP_WRITE, "agents/alice/outbox/all",
      O_WRONLY | O_CREAT | O_TRUNC, "forged"},
     true},
    {{"send as alice through outbox/mallory", OP_WRITE, "agents/alice/outbox/mallory",
      O_WRONLY | O_CREAT | O_EXCL, "forged"},
     true},
    {{"send as alice through send", OP_WRITE, "agents/alice/send", O_WRONLY | O_APPEND,
      "{\"to\":\"bob\",\"payload\":1}\n"},
     true},
    {{"send as alice through send with from alice", OP_WRITE, "agents/alice/send", O_WRONLY,
      "{\"to\":\"bob\",\"from\":\"alice\",\"payload\":1}\n"},
     true},
    {{"report alice's health", OP_WRITE, "agents/alice/health", O_WRONLY | O_TRUNC,
      "unhealthy hacked"},
     false},
    {{"append to alice's health", OP_WRITE, "agents/alice/health", O_WRONLY | O_APPEND,
      "{\"status\":\"degraded\",\"reason\":\"hacked\"}"},
     false},
    {{"heartbeat alice (touch health)", OP_TOUCH, "agents/alice/health", 0, NULL}, false},
    {{"write alice's metrics", OP_WRITE, "agents/alice/metrics", O_WRONLY | O_APPEND,
      "forged.metric 99 ms\n"},
     false},
    {{"drain alice through ctl", OP_WRITE, "agents/alice/ctl", O_WRONLY | O_TRUNC, "drain\n"},
     false},
    {{"ack alice's message through ctl", OP_WRITE, "agents/alice/ctl", O_WRONLY | O_TRUNC,
      "ack {id1}\n"},
     false},
    {{"read alice's ctl", OP_READ, "agents/alice/ctl", 0, NULL}, false},
    {{"read alice's next", OP_READ, "agents/alice/next", O_NONBLOCK, NULL}, false},
    {{"list alice's inbox", OP_LIST, "agents/alice/inbox", 0, NULL}, false},
    {{"read a message in alice's inbox", OP_READ, "agents/alice/inbox/{file1}", 0, NULL}, false},
    {{"remove a message from alice's inbox", OP_UNLINK, "agents/alice/inbox/{file1}", 0, NULL},
     false},
    {{"rmdir alice (her inbox not empty)", OP_RMDIR, "agents/alice", 0, NULL}, false},
    /* The outbox holds the same envelopes as the recipients' inboxes. */
    {{"list alice's outbox", OP_LIST, "agents/alice/outbox", 0, NULL}, false},
    {{"read a message in alice's outbox", OP_READ, "agents/alice/outbox/{sent}", 0, NULL},
     true},
};

BUS_TEST_WITH(ownership, others_may_not_act_as_alice, start_allow_other)
{
    populate();
    char *before = bus_state();
    for (size_t i = 0; i < sizeof owner_only / sizeof *owner_only; i++) {
        refused(MALLORY, &owner_only[i].op, "alice", owner_only[i].at_open);
        assert_state_unchanged(before, owner_only[i].op.what);
    }
    /* The messages are where they were, unread and unacknowledged. */
    json_t *inbox = bus_inbox("alice");
    cr_assert_eq(json_array_size(inbox), 2);
    cr_assert_str_eq(bus_str(json_array_get(inbox, 0), "msg_id"), msgs.id[0]);
    json_decref(inbox);
    json_t *ctl = bus_ctl("alice");
    cr_assert_str_eq(bus_str(ctl, "state"), "active");
    json_decref(ctl);
    free(before);
}

BUS_TEST_WITH(ownership, the_owner_of_one_agent_may_not_act_as_another, start_allow_other)
{
    /* OWNER owns alice, not mallory: the same refusals on mallory's files. */
    populate();
    as_sh_ok(OWNER, "echo 'for mallory' > agents/alice/outbox/mallory");
    const struct guarded ops[] = {
        {{"send as mallory", OP_WRITE, "agents/mallory/outbox/alice", O_WRONLY | O_CREAT, "x"},
         true},
        {{"send as mallory through send", OP_WRITE, "agents/mallory/send", O_WRONLY,
          "{\"to\":\"alice\",\"payload\":1}"},
         true},
        {{"report mallory's health", OP_WRITE, "agents/mallory/health", O_WRONLY | O_TRUNC,
          "healthy"},
         false},
        {{"heartbeat mallory", OP_TOUCH, "agents/mallory/health", 0, NULL}, false},
        {{"write mallory's metrics", OP_WRITE, "agents/mallory/metrics", O_WRONLY | O_APPEND,
          "m 1"},
         false},
        {{"drain mallory", OP_WRITE, "agents/mallory/ctl", O_WRONLY | O_TRUNC, "drain"}, false},
        {{"read mallory's ctl", OP_READ, "agents/mallory/ctl", 0, NULL}, false},
        {{"read mallory's next", OP_READ, "agents/mallory/next", O_NONBLOCK, NULL}, false},
        {{"list mallory's inbox", OP_LIST, "agents/mallory/inbox", 0, NULL}, false},
        {{"rmdir mallory", OP_RMDIR, "agents/mallory", 0, NULL}, false},
    };
    char *before = bus_state();
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        refused(OWNER, &ops[i].op, "mallory", ops[i].at_open);
        assert_state_unchanged(before, ops[i].op.what);
    }
    free(before);
}

BUS_TEST_WITH(ownership, others_may_not_remove_alice_even_when_her_inbox_is_empty,
              start_allow_other)
{
    populate();
    /* Emptied by root, who may. */
    cr_assert(unlink(AT("agents/alice/inbox/%s", msgs.file[0])) == 0, "rm as root: %s",
              strerror(errno));
    cr_assert(unlink(AT("agents/alice/inbox/%s", msgs.file[1])) == 0, "rm as root: %s",
              strerror(errno));
    char *before = bus_state();
    const struct op rm = {"rmdir alice (her inbox empty)", OP_RMDIR, "agents/alice", 0, NULL};
    refused(MALLORY, &rm, "alice", false);
    assert_state_unchanged(before, rm.what);
    struct bus_cmd r;
    cr_assert_neq(as_sh(MALLORY, &r, "rmdir agents/alice"), 0, "rmdir by another uid succeeded");
    cr_assert(strstr(r.err, "Permission denied"), "rmdir as mallory said: %s", r.err);
    bus_cmd_free(&r);
    assert_state_unchanged(before, "`rmdir agents/alice` as mallory");
    /* Removed by its owner, it may be registered again by anyone. */
    as_sh_ok(OWNER, "rmdir agents/alice");
    as_sh_ok(MALLORY, "mkdir agents/alice");
    assert_ls_owner("agents", "alice", MALLORY);
    free(before);
}

BUS_TEST_WITH(ownership, others_may_not_truncate_alices_files, start_allow_other)
{
    /* truncate(2) is a write: of the files only the owner may write, it is
     * refused to others even where it would change nothing. */
    populate();
    const struct op truncs[] = {
        {"truncate alice's health", OP_TRUNCATE, "agents/alice/health", 0, NULL},
        {"truncate alice's metrics", OP_TRUNCATE, "agents/alice/metrics", 0, NULL},
        {"truncate alice's ctl", OP_TRUNCATE, "agents/alice/ctl", 0, NULL},
        {"truncate alice's send", OP_TRUNCATE, "agents/alice/send", 0, NULL},
    };
    char *before = bus_state();
    char wrong[1024] = "";
    for (size_t i = 0; i < sizeof truncs / sizeof *truncs; i++) {
        struct outcome o = as_user(MALLORY, &truncs[i]);
        assert_state_unchanged(before, truncs[i].what);
        if (o.err != EACCES)
            snprintf(wrong + strlen(wrong), sizeof wrong - strlen(wrong), "; %s gave %s",
                     truncs[i].what, describe(&o));
        free(o.out);
    }
    cr_assert(!wrong[0], "as uid %u, want EACCES%s", MALLORY, wrong);
    for (size_t i = 0; i < sizeof truncs / sizeof *truncs; i++)
        refused(MALLORY, &truncs[i], "alice", false);
    free(before);
}

BUS_TEST_WITH(ownership, ones_own_ctl_and_inbox_reach_only_ones_own_messages, start_allow_other)
{
    /* mallory names alice's message through mallory's own files: nothing of
     * alice's is read or consumed. */
    populate();
    char *before = bus_state();
    const struct op ack = {"ack alice's message through mallory's ctl", OP_WRITE,
                           "agents/mallory/ctl", O_WRONLY | O_TRUNC, "ack {id1}\n"};
    struct outcome o = as_user(MALLORY, &ack);
    cr_assert(o.err != 0 && o.step != STEP_CLOSE, "%s gave %s, want a refusal at write",
              ack.what, describe(&o));
    free(o.out);
    assert_state_unchanged(before, ack.what);
    const struct op others[] = {
        {"rm alice's message under mallory's inbox", OP_UNLINK, "agents/mallory/inbox/{file1}", 0,
         NULL},
        {"read alice's message under mallory's inbox", OP_READ, "agents/mallory/inbox/{file1}", 0,
         NULL},
    };
    for (size_t i = 0; i < sizeof others / sizeof *others; i++) {
        o = as_user(MALLORY, &others[i]);
        cr_assert(o.err == ENOENT, "%s gave %s, want ENOENT", others[i].what, describe(&o));
        free(o.out);
        assert_state_unchanged(before, others[i].what);
    }
    free(before);
}

/* ---- 3. what the owner and root may do ------------------------------------ */

/* bob's inbox as envelopes; its size must be n. */
static json_t *bob_inbox(size_t n)
{
    json_t *inbox = bus_inbox("bob");
    cr_assert_eq(json_array_size(inbox), n, "bob's inbox holds %zu messages, want %zu",
                 json_array_size(inbox), n);
    return inbox;
}

static void check_outbox_send(const struct outcome *o)
{
    json_t *inbox = bob_inbox(2);
    json_t *env = json_array_get(inbox, 1);
    bus_assert_envelope(env, "alice", "bob");
    cr_assert_str_eq(bus_str(env, "payload"), "sent as alice");
    json_decref(inbox);
}

static void check_send_file(const struct outcome *o)
{
    json_t *inbox = bob_inbox(3);
    json_t *env = json_array_get(inbox, 2);
    bus_assert_envelope(env, "alice", "bob");
    cr_assert_eq(json_integer_value(json_object_get(env, "payload")), 2, "payload of send");
    json_decref(inbox);
}

static char last_seen[64];

static void check_health_report(const struct outcome *o)
{
    json_t *h = bus_json_file(AT("agents/alice/health"), 0);
    cr_assert_str_eq(bus_str(h, "status"), "degraded");
    cr_assert_str_eq(bus_str(h, "reason"), "by the owner");
    snprintf(last_seen, sizeof last_seen, "%s", bus_str(h, "last_seen"));
    json_decref(h);
}

static void check_heartbeat(const struct outcome *o)
{
    json_t *h = bus_json_file(AT("agents/alice/health"), 0);
    cr_assert_str_eq(bus_str(h, "status"), "degraded", "a heartbeat keeps the status");
    cr_assert_str_neq(bus_str(h, "last_seen"), last_seen, "touch did not move last_seen");
    json_decref(h);
}

static void check_metrics(const struct outcome *o)
{
    json_t *points = bus_jsonl(AT("agents/alice/metrics"));
    json_t *last = json_array_get(points, json_array_size(points) - 1);
    cr_assert_str_eq(bus_str(last, "metric"), "owner.metric");
    cr_assert_str_eq(bus_str(last, "agent"), "alice");
    json_decref(points);
}

static void check_ctl_read(const struct outcome *o)
{
    json_t *ctl = json_loads(o->out, 0, NULL);
    cr_assert(json_is_object(ctl), "ctl read: %s", o->out);
    cr_assert_str_eq(bus_str(ctl, "agent"), "alice");
    cr_assert_eq(bus_int(ctl, "inbox_depth"), 2);
    json_decref(ctl);
}

static void check_next(const struct outcome *o)
{
    json_t *env = json_loads(o->out, 0, NULL);
    cr_assert(json_is_object(env), "next read: %s", o->out);
    bus_assert_envelope(env, "bob", "alice");
    cr_assert_str_eq(bus_str(env, "msg_id"), msgs.id[0], "next is not the oldest message");
    json_decref(env);
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 2, "reading next consumed a message");
}

static void check_list(const struct outcome *o)
{
    char want[512];
    snprintf(want, sizeof want, "%s\n%s\n", msgs.file[0], msgs.file[1]);
    cr_assert_str_eq(o->out, want, "alice's inbox as listed");
}

static void check_message_read(const struct outcome *o)
{
    json_t *env = json_loads(o->out, 0, NULL);
    cr_assert(json_is_object(env), "message read: %s", o->out);
    cr_assert_str_eq(bus_str(env, "msg_id"), msgs.id[0]);
    cr_assert_str_eq(bus_str(env, "payload"), "one");
    json_decref(env);
}

static void check_ack(const struct outcome *o)
{
    char *names = names_of(AT("agents/alice/inbox"));
    char want[256];
    snprintf(want, sizeof want, "%s\n", msgs.file[1]);
    cr_assert_str_eq(names, want, "ack through ctl did not consume the first message");
    free(names);
    json_t *inbox = bob_inbox(4); /* + the ack the first message asked for */
    json_t *ack = json_array_get(inbox, 3);
    bus_assert_envelope(ack, "alice", "bob");
    cr_assert_str_eq(bus_str(ack, "type"), "ack");
    cr_assert_str_eq(bus_str(json_object_get(ack, "payload"), "ack"), msgs.id[0]);
    json_decref(inbox);
}

static void check_unlink(const struct outcome *o)
{
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0, "rm did not consume the message");
}

static void check_drained(const struct outcome *o)
{
    json_t *ctl = bus_ctl("alice");
    cr_assert_str_eq(bus_str(ctl, "state"), "draining");
    json_decref(ctl);
}

static void check_resumed(const struct outcome *o)
{
    json_t *ctl = bus_ctl("alice");
    cr_assert_str_eq(bus_str(ctl, "state"), "active");
    json_decref(ctl);
}

static void check_removed(const struct outcome *o)
{
    char *names = names_of(AT("agents"));
    cr_assert_str_eq(names, "bob\nmallory\n", "agents after rmdir alice");
    free(names);
}

static void check_outbox_list(const struct outcome *o)
{
    cr_assert(strstr(o->out, msgs.sent) != NULL, "alice's outbox as listed: %s", o->out);
}

static void check_outbox_read(const struct outcome *o)
{
    json_t *env = json_loads(o->out, 0, NULL);
    cr_assert(json_is_object(env), "outbox message read: %s", o->out);
    bus_assert_envelope(env, "alice", "bob");
    cr_assert_str_eq(bus_str(env, "payload"), "hello bob");
    json_decref(env);
}

/* Everything owner_only refuses to others, in an order that works, and its effect. */
static const struct {
    struct op op;
    void (*check)(const struct outcome *o);
} owner_may[] = {
    {{"send as alice through outbox/bob", OP_WRITE, "agents/alice/outbox/bob",
      O_WRONLY | O_CREAT | O_TRUNC, "sent as alice"},
     check_outbox_send},
    {{"send as alice through send, from alice", OP_WRITE, "agents/alice/send",
      O_WRONLY | O_APPEND, "{\"to\":\"bob\",\"from\":\"alice\",\"payload\":2}\n"},
     check_send_file},
    {{"report alice's health", OP_WRITE, "agents/alice/health", O_WRONLY | O_TRUNC,
      "degraded by the owner\n"},
     check_health_report},
    {{"heartbeat alice (touch health)", OP_TOUCH, "agents/alice/health", 0, NULL},
     check_heartbeat},
    {{"write alice's metrics", OP_WRITE, "agents/alice/metrics", O_WRONLY | O_APPEND,
      "owner.metric 7 ms\n"},
     check_metrics},
    {{"read alice's ctl", OP_READ, "agents/alice/ctl", 0, NULL}, check_ctl_read},
    {{"read alice's next", OP_READ, "agents/alice/next", O_NONBLOCK, NULL}, check_next},
    {{"list alice's inbox", OP_LIST, "agents/alice/inbox", 0, NULL}, check_list},
    {{"read a message in alice's inbox", OP_READ, "agents/alice/inbox/{file1}", 0, NULL},
     check_message_read},
    {{"ack alice's message through ctl", OP_WRITE, "agents/alice/ctl", O_WRONLY | O_TRUNC,
      "ack {id1}\n"},
     check_ack},
    {{"remove a message from alice's inbox", OP_UNLINK, "agents/alice/inbox/{file2}", 0, NULL},
     check_unlink},
    {{"drain alice through ctl", OP_WRITE, "agents/alice/ctl", O_WRONLY | O_TRUNC, "drain\n"},
     check_drained},
    {{"resume alice through ctl", OP_WRITE, "agents/alice/ctl", O_WRONLY | O_TRUNC, "resume\n"},
     check_resumed},
    {{"list alice's outbox", OP_LIST, "agents/alice/outbox", 0, NULL}, check_outbox_list},
    {{"read a message in alice's outbox", OP_READ, "agents/alice/outbox/{sent}", 0, NULL},
     check_outbox_read},
    {{"rmdir alice", OP_RMDIR, "agents/alice", 0, NULL}, check_removed},
};

static void owner_may_act(uid_t uid)
{
    populate();
    for (size_t i = 0; i < sizeof owner_may / sizeof *owner_may; i++) {
        size_t top = bus_jsonl_count(AT("errors"));
        char *out = allowed(uid, &owner_may[i].op);
        struct outcome o = {.out = out, .len = strlen(out)};
        owner_may[i].check(&o);
        free(out);
        cr_assert_eq(bus_jsonl_count(AT("errors")), top, "uid %u: %s logged an error",
                     (unsigned)uid, owner_may[i].op.what);
    }
}

BUS_TEST_WITH(ownership, the_owner_may_act_as_alice, start_allow_other)
{
    owner_may_act(OWNER);
}

BUS_TEST_WITH(ownership, root_may_act_as_alice, start_allow_other)
{
    owner_may_act(0);
}

/* ---- 4. what everyone may read ------------------------------------------- */

BUS_TEST_WITH(ownership, everyone_may_read_health_metrics_alerts_and_agents, start_allow_other)
{
    populate();
    cr_assert_eq(bus_write(AT("alerts/rules"), "slow alice.metric p95 > 100000 warning\n"), 0);
    /* Files whose content does not move between two reads: the same for all. */
    const struct op same[] = {
        {"read alice's metrics", OP_READ, "agents/alice/metrics", 0, NULL},
        {"read metrics/metrics.jsonl", OP_READ, "metrics/metrics.jsonl", 0, NULL},
        {"read alerts/rules", OP_READ, "alerts/rules", 0, NULL},
        {"read alerts/alerts.jsonl", OP_READ, "alerts/alerts.jsonl", 0, NULL},
        {"read README", OP_READ, "README", 0, NULL},
        {"ls agents", OP_LIST, "agents", 0, NULL},
        {"ls agents/alice", OP_LIST, "agents/alice", 0, NULL},
    };
    size_t top = bus_jsonl_count(AT("errors"));
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        char *mine = allowed(0, &same[i]);
        char *theirs = allowed(MALLORY, &same[i]);
        cr_assert_str_eq(theirs, mine, "%s: another uid reads something else than root",
                         same[i].what);
        free(mine);
        free(theirs);
    }
    /* Rendered documents: one JSON object each. */
    const struct op docs[] = {
        {"read alice's health", OP_READ, "agents/alice/health", 0, NULL},
        {"read health/status", OP_READ, "health/status", 0, NULL},
        {"read metrics/summary.json", OP_READ, "metrics/summary.json", 0, NULL},
        {"read alerts/active.json", OP_READ, "alerts/active.json", 0, NULL},
    };
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
        char *text = allowed(MALLORY, &docs[i]);
        json_error_t e;
        json_t *doc = json_loads(text, 0, &e);
        cr_assert(json_is_object(doc), "%s: not JSON (%s): %s", docs[i].what, e.text, text);
        json_decref(doc);
        free(text);
    }
    const struct op prom = {"read metrics/busfs.prom", OP_READ, "metrics/busfs.prom", 0, NULL};
    char *text = allowed(MALLORY, &prom);
    cr_assert(strstr(text, "busfs_user_metric{") && strstr(text, "agent=\"alice\""),
              "busfs.prom as another uid reads it: %s", text);
    free(text);
    const struct op health = {"read alice's health", OP_READ, "agents/alice/health", 0, NULL};
    text = allowed(MALLORY, &health);
    json_t *h = json_loads(text, 0, NULL);
    cr_assert_str_eq(bus_str(h, "agent"), "alice");
    cr_assert_str_eq(bus_str(h, "status"), "healthy");
    json_decref(h);
    free(text);
    struct bus_cmd r;
    cr_assert_eq(as_sh(MALLORY, &r, "ls agents"), 0, "ls agents as another uid: %s", r.err);
    cr_assert_str_eq(r.out, "alice\nbob\nmallory\n", "ls agents as another uid");
    bus_cmd_free(&r);
    cr_assert_eq(bus_jsonl_count(AT("errors")), top, "reading logged refusals");

    /* And the shell's way. */
    as_sh_ok(MALLORY, "cat agents/alice/health health/status metrics/summary.json "
                      "metrics/busfs.prom metrics/metrics.jsonl agents/alice/metrics "
                      "alerts/active.json alerts/rules >/dev/null");
    as_sh_ok(MALLORY, "ls -l agents agents/alice >/dev/null");
}

/* ---- 5. sending to alice from one's own agent ------------------------------ */

BUS_TEST_WITH(ownership, others_may_send_to_alice_from_their_own_agent, start_allow_other)
{
    populate();
    const struct op sends[] = {
        {"send to alice through outbox/alice", OP_WRITE, "agents/mallory/outbox/alice",
         O_WRONLY | O_CREAT | O_TRUNC, "hello from mallory"},
        {"send to alice through send", OP_WRITE, "agents/mallory/send", O_WRONLY | O_APPEND,
         "{\"to\":\"alice\",\"payload\":{\"n\":2}}\n"},
        {"send to alice through send, from mallory", OP_WRITE, "agents/mallory/send", O_WRONLY,
         "{\"to\":\"alice\",\"from\":\"mallory\",\"payload\":3}"},
        {"broadcast through outbox/all", OP_WRITE, "agents/mallory/outbox/all",
         O_WRONLY | O_CREAT | O_TRUNC, "to everyone"},
    };
    size_t top = bus_jsonl_count(AT("errors"));
    for (size_t i = 0; i < sizeof sends / sizeof *sends; i++)
        free(allowed(MALLORY, &sends[i]));
    as_sh_ok(MALLORY, "echo 'by the shell' > agents/mallory/outbox/alice");
    cr_assert_eq(bus_jsonl_count(AT("errors")), top, "the sends logged refusals");

    json_t *inbox = bus_inbox("alice");
    cr_assert_eq(json_array_size(inbox), 7, "alice's inbox holds %zu messages, want 2 + 5",
                 json_array_size(inbox));
    for (size_t i = 2; i < 7; i++)
        bus_assert_envelope(json_array_get(inbox, i), "mallory", "alice");
    cr_assert_str_eq(bus_str(json_array_get(inbox, 2), "payload"), "hello from mallory");
    cr_assert_eq(json_integer_value(json_object_get(
                     json_object_get(json_array_get(inbox, 3), "payload"), "n")),
                 2);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(inbox, 4), "payload")), 3);
    cr_assert_str_eq(bus_str(json_array_get(inbox, 5), "payload"), "to everyone");
    cr_assert_str_eq(bus_str(json_array_get(inbox, 6), "payload"), "by the shell");
    json_decref(inbox);
    json_t *bob = bob_inbox(2); /* alice's hello, mallory's broadcast */
    bus_assert_envelope(json_array_get(bob, 1), "mallory", "bob");
    json_decref(bob);

    /* mallory is the owner of mallory: her outbox, health, metrics, inbox, next. */
    const struct op outbox = {"ls mallory's outbox", OP_LIST, "agents/mallory/outbox", 0, NULL};
    char *names = allowed(MALLORY, &outbox);
    size_t lines = 0;
    for (const char *p = names; *p; p++)
        lines += *p == '\n';
    cr_assert_eq(lines, 6, "mallory's outbox lists: %s", names);
    free(names);
    as_sh_ok(MALLORY, "echo healthy > agents/mallory/health && touch agents/mallory/health && "
                      "echo 'm.x 1' >> agents/mallory/metrics");
    as_sh_ok(OWNER, "echo 'hi mallory' > agents/alice/outbox/mallory");
    struct bus_cmd r;
    cr_assert_eq(as_sh(MALLORY, &r,
                       "ls agents/mallory/inbox | wc -l && timeout 5 cat agents/mallory/next && "
                       "rm agents/mallory/inbox/* && ls agents/mallory/inbox | wc -l"),
                 0, "mallory's own inbox: %s", r.err);
    cr_assert(strstr(r.out, "\"payload\":\"hi mallory\"") && strncmp(r.out, "1\n", 2) == 0 &&
                  strstr(r.out, "}\n0\n"),
              "mallory's own inbox: %s", r.out);
    bus_cmd_free(&r);
}

/* ---- 6. `from` cannot be forged ------------------------------------------- */

BUS_TEST_WITH(ownership, from_cannot_be_forged, start_allow_other)
{
    populate();
    char *before = bus_state();
    const struct op forged[] = {
        {"from alice in mallory's send", OP_WRITE, "agents/mallory/send", O_WRONLY | O_APPEND,
         "{\"to\":\"alice\",\"from\":\"alice\",\"payload\":1}"},
        {"from bob in mallory's send", OP_WRITE, "agents/mallory/send", O_WRONLY | O_APPEND,
         "{\"to\":\"alice\",\"from\":\"bob\",\"payload\":1}\n"},
        {"a good record and a forged one in one write", OP_WRITE, "agents/mallory/send",
         O_WRONLY | O_APPEND,
         "{\"to\":\"alice\",\"payload\":\"fine\"}\n"
         "{\"to\":\"bob\",\"from\":\"alice\",\"payload\":\"forged\"}\n"},
    };
    for (size_t i = 0; i < sizeof forged / sizeof *forged; i++) {
        size_t top = bus_jsonl_count(AT("errors"));
        size_t agent_top = bus_jsonl_count(AT("agents/mallory/errors"));
        struct outcome o = as_user(MALLORY, &forged[i]);
        cr_assert(o.err == EACCES && o.step == STEP_IO,
                  "%s gave %s, want EACCES at write (the record names another agent)",
                  forged[i].what, describe(&o));
        free(o.out);
        bus_assert_logged(AT("errors"), top, forged[i].what);
        bus_assert_logged(AT("agents/mallory/errors"), agent_top, forged[i].what);
        cr_assert(logged_eacces(AT("errors"), top), "%s: no EACCES line in errors",
                  forged[i].what);
        assert_state_unchanged(before, forged[i].what);
    }
    /* Sending through alice's own file is refused at open. */
    const struct op theirs = {"the record in alice's send", OP_WRITE, "agents/alice/send",
                              O_WRONLY | O_APPEND,
                              "{\"to\":\"alice\",\"from\":\"alice\",\"payload\":1}"};
    refused(MALLORY, &theirs, "alice", true);
    assert_state_unchanged(before, theirs.what);
    /* bash's echo, as §3 has it (dash's says "I/O error" whatever the errno). */
    struct bus_cmd r;
    cr_assert_neq(as_shell(MALLORY, "bash", &r,
                           "echo '{\"to\":\"bob\",\"from\":\"alice\",\"payload\":1}' >> "
                           "agents/mallory/send"),
                  0, "a forged from sent by the shell succeeded");
    cr_assert(strstr(r.err, "Permission denied"), "bash said: %s", r.err);
    bus_cmd_free(&r);
    assert_state_unchanged(before, "a forged from sent by the shell");

    /* `from` names the send file's agent, also for its owner and for root. */
    const struct op as_bob = {"from bob in alice's send", OP_WRITE, "agents/alice/send",
                              O_WRONLY | O_APPEND,
                              "{\"to\":\"mallory\",\"from\":\"bob\",\"payload\":1}"};
    const uid_t uids[] = {OWNER, 0};
    for (size_t i = 0; i < 2; i++) {
        size_t top = bus_jsonl_count(AT("agents/alice/errors"));
        struct outcome o = as_user(uids[i], &as_bob);
        cr_assert(o.err == EACCES, "uid %u: %s gave %s, want EACCES", (unsigned)uids[i],
                  as_bob.what, describe(&o));
        free(o.out);
        bus_assert_logged(AT("agents/alice/errors"), top, as_bob.what);
        assert_state_unchanged(before, as_bob.what);
    }
    free(before);
}

/* ---- 7. alert rules are the operator's ------------------------------------ */

BUS_TEST_WITH(ownership, only_the_operator_may_write_alert_rules, start_allow_other)
{
    populate();
    cr_assert_eq(bus_write(AT("alerts/rules"), "mine alice.metric max > 1000 critical\n"), 0,
                 "root writes the rules");
    char *rules = bus_read_ok(AT("alerts/rules"), NULL);
    cr_assert(strstr(rules, "mine alice.metric"), "rules: %s", rules);
    char *before = bus_state();
    const struct op writes[] = {
        {"replace the rules", OP_WRITE, "alerts/rules", O_WRONLY | O_TRUNC,
         "evil alice.metric max > 0 critical\n"},
        {"add a rule", OP_WRITE, "alerts/rules", O_WRONLY | O_APPEND,
         "evil alice.metric max > 0 critical\n"},
        {"open the rules for writing", OP_WRITE, "alerts/rules", O_RDWR, "evil x max > 0\n"},
        {"clear the rules by truncate", OP_TRUNCATE, "alerts/rules", 0, NULL},
    };
    const uid_t uids[] = {MALLORY, OWNER}; /* owning an agent is not running the bus */
    for (size_t u = 0; u < 2; u++)
        for (size_t i = 0; i < sizeof writes / sizeof *writes; i++) {
            refused(uids[u], &writes[i], NULL, false);
            assert_state_unchanged(before, writes[i].what);
        }
    struct bus_cmd r;
    cr_assert_neq(as_sh(MALLORY, &r, ": > alerts/rules"), 0, "`: > alerts/rules` succeeded");
    cr_assert(strstr(r.err, "Permission denied"), "the shell said: %s", r.err);
    bus_cmd_free(&r);
    assert_state_unchanged(before, "`: > alerts/rules` as another uid");

    /* Reading them is allowed, and reads the same. */
    const struct op read = {"read the rules", OP_READ, "alerts/rules", 0, NULL};
    char *theirs = allowed(MALLORY, &read);
    cr_assert_str_eq(theirs, rules, "the rules as another uid reads them");
    free(theirs);

    /* The operator still may. */
    cr_assert_eq(bus_append(AT("alerts/rules"), "more alice.metric count > 1000\n"), 0);
    free(rules);
    rules = bus_read_ok(AT("alerts/rules"), NULL);
    cr_assert(strstr(rules, "mine alice.metric") && strstr(rules, "more alice.metric"),
              "rules: %s", rules);
    free(rules);
    free(before);
}

/* ---- 8. access(2) ----------------------------------------------------------- */

BUS_TEST_WITH(ownership, access_answers_by_the_same_rules, start_allow_other)
{
    populate();
    static const struct {
        uid_t uid;
        const char *path;
        int mask;
        int want; /* 0 or EACCES */
    } rows[] = {
        {MALLORY, "agents/alice/inbox", R_OK, EACCES},
        {OWNER, "agents/alice/inbox", R_OK, 0},
        {0, "agents/alice/inbox", R_OK, 0},
        {MALLORY, "agents/alice/inbox/{file1}", R_OK, EACCES},
        {OWNER, "agents/alice/inbox/{file1}", R_OK, 0},
        {MALLORY, "agents/alice/health", W_OK, EACCES},
        {MALLORY, "agents/alice/health", R_OK, 0},
        {OWNER, "agents/alice/health", R_OK | W_OK, 0},
        {0, "agents/alice/health", R_OK | W_OK, 0},
        {MALLORY, "agents/alice/metrics", R_OK, 0},
        {MALLORY, "agents/alice/metrics", W_OK, EACCES},
        {OWNER, "agents/alice/metrics", W_OK, 0},
        {OWNER, "agents/alice/send", W_OK, 0},
        {0, "agents/alice/send", W_OK, 0},
        {MALLORY, "agents/alice/send", W_OK, EACCES},
        {MALLORY, "agents/mallory/send", W_OK, 0},
        {OWNER, "agents/alice/next", R_OK, 0},
        {MALLORY, "agents/alice/next", R_OK, EACCES},
        {OWNER, "agents/alice/ctl", R_OK | W_OK, 0},
        {0, "agents/alice/ctl", R_OK | W_OK, 0},
        {MALLORY, "agents/alice/ctl", R_OK, EACCES},
        {MALLORY, "agents/alice/ctl", W_OK, EACCES},
        {MALLORY, "agents/alice/errors", R_OK, 0},
        {MALLORY, "agents/alice/outbox", R_OK, EACCES},
        /* Like inbox/: names may be looked up (stat), not listed or read. */
        {MALLORY, "agents/alice/outbox", X_OK, 0},
        {MALLORY, "agents/alice/outbox", W_OK, EACCES},
        {MALLORY, "agents/alice/outbox/{sent}", R_OK, EACCES},
        {OWNER, "agents/alice/outbox", R_OK | W_OK | X_OK, 0},
        {OWNER, "agents/alice/outbox/{sent}", R_OK, 0},
        {OWNER, "agents/alice/outbox/{sent}", W_OK, EACCES},
        {0, "agents/alice/outbox/{sent}", R_OK, 0},
        {MALLORY, "agents/mallory/outbox", W_OK, 0},
        {MALLORY, "agents", R_OK | X_OK, 0},
        {MALLORY, "health/status", R_OK, 0},
        {MALLORY, "metrics/metrics.jsonl", R_OK, 0},
        {MALLORY, "metrics/summary.json", R_OK, 0},
        {MALLORY, "metrics/busfs.prom", R_OK, 0},
        {MALLORY, "alerts/active.json", R_OK, 0},
        {MALLORY, "alerts/rules", R_OK, 0},
        {MALLORY, "alerts/rules", W_OK, EACCES},
        {OWNER, "alerts/rules", W_OK, EACCES},
        {0, "alerts/rules", W_OK, 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        struct op op = {"access", OP_ACCESS, rows[i].path, rows[i].mask, NULL};
        struct outcome o = as_user(rows[i].uid, &op);
        cr_assert(o.err == rows[i].want, "uid %u: access(%s, %s%s%s) gave %s, want %s",
                  (unsigned)rows[i].uid, rows[i].path, rows[i].mask & R_OK ? "R" : "",
                  rows[i].mask & W_OK ? "W" : "", rows[i].mask & X_OK ? "X" : "",
                  o.err ? strerror(o.err) : "0", rows[i].want ? strerror(rows[i].want) : "0");
        free(o.out);
    }
    /* The shell's tests ask access(2) too. */
    as_sh_ok(MALLORY, "[ -r agents/alice/health ] && [ ! -w agents/alice/health ] && "
                      "[ ! -r agents/alice/inbox ] && [ ! -w agents/alice/send ]");
    as_sh_ok(OWNER, "[ -r agents/alice/inbox ] && [ -w agents/alice/send ] && "
                    "[ -w agents/alice/health ]");
}

BUS_TEST_WITH(ownership, access_to_agents_for_writing_matches_mkdir, start_allow_other)
{
    /* Anyone may register an agent (mkdir agents/NAME): access(agents, W_OK)
     * must say so, as `[ -w agents ] && mkdir agents/me` would ask. */
    const struct op probe = {"access(agents, W_OK)", OP_ACCESS, "agents", W_OK | X_OK, NULL};
    struct outcome o = as_user(MALLORY, &probe);
    free(o.out);
    const struct op reg = {"mkdir agents/mallory", OP_MKDIR, "agents/mallory", 0, NULL};
    free(allowed(MALLORY, &reg));
    cr_assert(o.err == 0,
              "access(agents, W_OK|X_OK) as uid %u gave %s, yet mkdir agents/mallory "
              "succeeds for that uid",
              MALLORY, strerror(o.err));
}

/* ---- 9. the shell's way ----------------------------------------------------- */

BUS_TEST_WITH(ownership, shell_commands_of_others_get_permission_denied, start_allow_other)
{
    populate();
    char *before = bus_state();
    char cmds[16][512];
    size_t n = 0;
    snprintf(cmds[n++], 512, "ls agents/alice/inbox");
    snprintf(cmds[n++], 512, "echo hi > agents/alice/outbox/bob");
    snprintf(cmds[n++], 512, "echo '{\"to\":\"bob\",\"payload\":1}' >> agents/alice/send");
    snprintf(cmds[n++], 512, "timeout 5 cat agents/alice/next");
    snprintf(cmds[n++], 512, "cat agents/alice/ctl");
    snprintf(cmds[n++], 512, "echo drain > agents/alice/ctl");
    snprintf(cmds[n++], 512, "echo 'ack %s' > agents/alice/ctl", msgs.id[0]);
    snprintf(cmds[n++], 512, "echo unhealthy > agents/alice/health");
    snprintf(cmds[n++], 512, "touch agents/alice/health");
    snprintf(cmds[n++], 512, "echo 'm.x 1' >> agents/alice/metrics");
    snprintf(cmds[n++], 512, "cat agents/alice/inbox/%s", msgs.file[0]);
    snprintf(cmds[n++], 512, "rm -f agents/alice/inbox/%s", msgs.file[0]);
    snprintf(cmds[n++], 512, "rmdir agents/alice");
    snprintf(cmds[n++], 512, "ls agents/alice/outbox");
    snprintf(cmds[n++], 512, "cat agents/alice/outbox/%s", msgs.sent);
    for (size_t i = 0; i < n; i++) {
        size_t top = bus_jsonl_count(AT("agents/alice/errors"));
        struct bus_cmd r;
        int status = as_sh(MALLORY, &r, "%s", cmds[i]);
        cr_assert(status != 0 && strstr(r.err, "Permission denied"),
                  "as uid %u, `%s`: status %d, stderr: %s", MALLORY, cmds[i], status, r.err);
        bus_cmd_free(&r);
        bus_assert_logged(AT("agents/alice/errors"), top, cmds[i]);
        assert_state_unchanged(before, cmds[i]);
    }
    free(before);

    /* The same commands as the owner, in an order that works. */
    const char *mine[] = {
        "ls agents/alice/inbox | wc -l | grep -qx 2",
        "timeout 5 cat agents/alice/next | grep -q '\"payload\":\"one\"'",
        "cat agents/alice/ctl | grep -q '\"inbox_depth\":2'",
        "echo hi > agents/alice/outbox/bob",
        "echo '{\"to\":\"bob\",\"payload\":1}' >> agents/alice/send",
        "echo unhealthy > agents/alice/health",
        "touch agents/alice/health",
        "echo 'm.x 1' >> agents/alice/metrics",
        "echo drain > agents/alice/ctl && echo resume > agents/alice/ctl",
    };
    for (size_t i = 0; i < sizeof mine / sizeof *mine; i++)
        as_sh_ok(OWNER, mine[i]);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cat agents/alice/inbox/%s >/dev/null && echo 'ack %s' > "
                              "agents/alice/ctl && rm agents/alice/inbox/%s && rmdir agents/alice",
             msgs.file[0], msgs.id[0], msgs.file[1]);
    as_sh_ok(OWNER, cmd);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 4, "bob's inbox: hello, hi, 1 and the ack");
}

/* ---- 10. across a restart --------------------------------------------------- */

BUS_TEST_WITH(ownership, owners_are_kept_across_a_restart, start_allow_other)
{
    populate();
    bus_restart(&bus, "-o", "allow_other", NULL);
    assert_ls_owner("agents", "alice", OWNER);
    assert_ls_owner("agents", "mallory", MALLORY);
    assert_ls_owner("agents/alice", NULL, OWNER);
    char *before = bus_state();
    for (size_t i = 0; i < sizeof owner_only / sizeof *owner_only; i++) {
        refused(MALLORY, &owner_only[i].op, "alice", owner_only[i].at_open);
        assert_state_unchanged(before, owner_only[i].op.what);
    }
    free(before);
    as_sh_ok(OWNER, "echo healthy > agents/alice/health && ls agents/alice/inbox >/dev/null && "
                    "echo hi > agents/alice/outbox/mallory");
    as_sh_ok(MALLORY, "timeout 5 cat agents/mallory/next | grep -q '\"from\":\"alice\"'");
}
