/*
 * test_quota.c — SPEC §11 on a shared host, under `-o allow_other`: one uid past
 * --max-agents-per-uid or --max-bytes-per-uid gets EDQUOT while another uid keeps
 * working; one uid's idle open outbox files past --max-drafts-per-sender get EAGAIN
 * at open while another uid still sends to that inbox; unfinished messages count
 * against the store as they are written and their memory comes back when their
 * writers are killed; one uid's flood of refusals does not push another uid's
 * reasons out of `errors`.
 *
 * The tests run as root (the server's uid, which has no quotas). The users are bare
 * numeric uids: a forked child drops to one (setgroups, setgid, setuid) and makes the
 * syscalls (as_uid, struct holder), and shell commands run under setpriv(1) (as_sh),
 * as in test_ownership.c. A holder child keeps its files open until it is killed,
 * so the test process itself never holds a half-written message.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define UID_A 4301 /* the uid that goes over its quota */
#define UID_B 4302 /* another user, who must not notice */
#define MIB (1024 * 1024)

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

/* A bus mounted with -o allow_other and these options (NULL-terminated), its temp dir
 * open to other uids. */
static void start_shared(const char *first, ...)
{
    bus_require_fuse();
    require(geteuid() == 0, "the quota tests switch uids: they must run as root");
    char *argv[] = {"setpriv", "--version", NULL};
    require(bus_exec(NULL, argv, 5000, NULL) == 0, "setpriv (util-linux) is missing");
    const char *args[16] = {"-o", "allow_other"};
    size_t n = 2;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && n < 15; a = va_arg(ap, const char *))
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    bus_prepare(&bus);
    bus_launch(&bus, args);
    cr_assert(chmod(bus.dir, 0755) == 0, "chmod %s: %s", bus.dir, strerror(errno));
}

static void start_default(void) { start_shared(NULL); }
static void start_small_store(void) { start_shared("--store-max-bytes", "8M", NULL); }
static void start_for_memory(void) { start_shared("--store-max-bytes", "64M", NULL); }

/* ---- running as another uid ------------------------------------------- */

/* `sh -c CMD` in the mount dir as uid (and gid) uid, through setpriv; r may be NULL. */
static int as_sh(uid_t uid, struct bus_cmd *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int as_sh(uid_t uid, struct bus_cmd *r, const char *fmt, ...)
{
    char cmd[4096], ruid[32], rgid[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(ruid, sizeof ruid, "--reuid=%u", (unsigned)uid);
    snprintf(rgid, sizeof rgid, "--regid=%u", (unsigned)uid);
    char *argv[] = {"setpriv", ruid, rgid, "--clear-groups", "sh", "-c", cmd, NULL};
    return bus_exec(bus.mnt, argv, 20000, r);
}

static void as_sh_ok(uid_t uid, const char *cmd)
{
    struct bus_cmd r;
    int status = as_sh(uid, &r, "%s", cmd);
    cr_assert_eq(status, 0, "uid %u: `%s`: status %d: %s", (unsigned)uid, cmd, status, r.err);
    bus_cmd_free(&r);
}

static bool become(uid_t uid)
{
    return setgroups(0, NULL) == 0 && setgid(uid) == 0 && setuid(uid) == 0 && getuid() == uid;
}

/* What a child did: how many steps succeeded, and the errno of the first that failed
 * (0 when none did). */
struct tally {
    int done;
    int err;
    int opened;   /* holders: files opened */
    int open_err; /* holders: errno of the first open that failed */
};

static struct tally read_tally(int fd, pid_t pid)
{
    struct tally t = {0};
    struct pollfd p = {fd, POLLIN, 0};
    cr_assert_gt(poll(&p, 1, BUS_WAIT_MS), 0, "child %d did not report", (int)pid);
    cr_assert_eq(read(fd, &t, sizeof t), (ssize_t)sizeof t, "child %d did not report", (int)pid);
    return t;
}

/* mkdir of each path in turn as uid until one fails. */
static struct tally mkdirs_as(uid_t uid, const char *const *paths, int n)
{
    int fds[2];
    cr_assert(pipe2(fds, O_CLOEXEC) == 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct tally t = {0};
        if (!become(uid))
            t.err = EPERM;
        for (int i = 0; i < n && !t.err; i++) {
            if (mkdir(paths[i], 0755) == 0)
                t.done++;
            else
                t.err = errno;
        }
        _exit(write(fds[1], &t, sizeof t) == sizeof t ? 0 : 2);
    }
    close(fds[1]);
    struct tally t = read_tally(fds[0], pid);
    close(fds[0]);
    cr_assert_eq(bus_wait_child(pid, BUS_WAIT_MS), 0);
    cr_assert_neq(t.err, EPERM, "cannot switch to uid %u", (unsigned)uid);
    return t;
}

/* n refused mkdirs of path as uid (a bad agent name); returns how many gave EINVAL. */
static int refusals_as(uid_t uid, const char *path, int n)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int einval = 0;
        if (!become(uid))
            _exit(255);
        for (int i = 0; i < n; i++)
            einval += mkdir(path, 0755) < 0 && errno == EINVAL;
        _exit(einval == n ? 0 : 1);
    }
    int status = bus_wait_child(pid, 20000);
    cr_assert_neq(status, 255, "cannot switch to uid %u", (unsigned)uid);
    return status == 0 ? n : -1;
}

/* A child as uid that opens n files at path (O_WRONLY|O_CREAT), writes `bytes` to
 * each in turn until a write fails, reports, and then holds them all open until it is
 * killed. */
struct holder {
    pid_t pid;
    struct tally t;
};

static void hold_drafts(struct holder *h, uid_t uid, const char *path, int n, size_t bytes)
{
    int fds[2];
    cr_assert(pipe2(fds, O_CLOEXEC) == 0);
    char *chunk = bytes ? malloc(bytes) : NULL;
    if (bytes)
        memset(chunk, 'h', bytes);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct tally t = {0};
        bool writing = bytes > 0;
        if (!become(uid))
            t.err = t.open_err = EPERM;
        /* Dies with the test, even a failed one (set after the uid changes, which
         * clears it). */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(3);
        for (int i = 0; i < n && !t.open_err; i++) {
            int fd = open(path, O_WRONLY | O_CREAT, 0644);
            if (fd < 0) {
                t.open_err = errno;
                break;
            }
            t.opened++;
            if (!writing)
                continue;
            if (write(fd, chunk, bytes) == (ssize_t)bytes) {
                t.done++;
            } else {
                t.err = errno;
                writing = false;
            }
        }
        if (write(fds[1], &t, sizeof t) != sizeof t)
            _exit(2);
        for (;;)
            pause();
    }
    free(chunk);
    close(fds[1]);
    h->pid = pid;
    h->t = read_tally(fds[0], pid);
    close(fds[0]);
    cr_assert_neq(h->t.open_err, EPERM, "cannot switch to uid %u", (unsigned)uid);
}

static void holder_kill(struct holder *h)
{
    if (h->pid <= 0)
        return;
    kill(h->pid, SIGKILL);
    int status = bus_wait_child(h->pid, BUS_WAIT_MS);
    cr_assert_neq(status, -1, "holder %d did not die", (int)h->pid);
    h->pid = 0;
}

/* ---- the errors log --------------------------------------------------- */

struct errors_seen {
    size_t of_a, of_b, of_a_edquot, of_b_reasons, suppressed_records;
    long long suppressed_of_a;
};

static struct errors_seen read_errors(void)
{
    struct errors_seen s = {0};
    json_t *lines = bus_jsonl(AT("errors"));
    size_t i;
    json_t *v;
    json_array_foreach(lines, i, v)
    {
        json_int_t uid = json_integer_value(json_object_get(v, "uid"));
        const char *err = json_string_value(json_object_get(v, "errno"));
        json_t *sup = json_object_get(v, "suppressed");
        cr_assert(json_is_string(json_object_get(v, "timestamp")), "a record has no timestamp");
        if (sup) {
            cr_assert(json_is_integer(sup) && json_integer_value(sup) > 0);
            cr_assert(json_is_string(json_object_get(v, "reason")));
            s.suppressed_records++;
            if (uid == UID_A)
                s.suppressed_of_a += json_integer_value(sup);
        }
        s.of_a += uid == UID_A && !sup;
        s.of_b += uid == UID_B && !sup;
        s.of_a_edquot += uid == UID_A && err && strcmp(err, "EDQUOT") == 0;
        s.of_b_reasons += uid == UID_B && json_string_length(json_object_get(v, "reason")) > 0;
    }
    json_decref(lines);
    return s;
}

/* ---- agents per uid --------------------------------------------------- */

BUS_TEST_WITH(quota, a_uid_past_max_agents_per_uid_gets_edquot_while_another_uid_registers,
              start_default)
{
    enum { N = 1001 };
    static char names[N][64];
    const char *paths[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "%s", AT("agents/a%d", i));
        paths[i] = names[i];
    }
    struct tally t = mkdirs_as(UID_A, paths, N);
    cr_assert_eq(t.done, 1000, "uid A registered %d agents", t.done);
    cr_assert_eq(t.err, EDQUOT, "the 1001st mkdir gave %s, want EDQUOT", strerror(t.err));
    struct stat st;
    cr_assert(stat(AT("agents/a1000"), &st) < 0 && errno == ENOENT, "the refused agent exists");

    /* The shell sees "Disk quota exceeded"; another uid and root still register. */
    struct bus_cmd r;
    cr_assert_neq(as_sh(UID_A, &r, "mkdir agents/one-more"), 0);
    cr_assert(strstr(r.err, "Disk quota exceeded"), "mkdir said: %s", r.err);
    bus_cmd_free(&r);
    as_sh_ok(UID_B, "mkdir agents/bee && echo hi > agents/bee/outbox/a1");
    cr_assert_eq(mkdir(AT("agents/root-agent"), 0755), 0, "the server's own uid: %s",
                 strerror(errno));
    cr_assert_gt(read_errors().of_a_edquot, 0, "no EDQUOT reason of uid A in errors");

    /* rmdir gives the place back. */
    as_sh_ok(UID_A, "rmdir agents/a0 && mkdir agents/one-more");
}

/* ---- bytes per uid ---------------------------------------------------- */

BUS_TEST_WITH(quota, a_uid_past_its_byte_budget_gets_edquot_while_another_uid_sends,
              start_small_store)
{
    /* --store-max-bytes 8M: 2 MiB a uid. */
    as_sh_ok(UID_A, "mkdir agents/alice");
    as_sh_ok(UID_B, "mkdir agents/bob agents/carol");
    int sent = 0;
    struct bus_cmd r = {0};
    int status = 0;
    while (sent < 40) {
        status = as_sh(UID_A, &r, "head -c 262144 /dev/zero | tr '\\0' a > agents/alice/outbox/bob");
        if (status != 0)
            break;
        bus_cmd_free(&r);
        sent++;
    }
    cr_assert_neq(status, 0, "uid A sent %d messages of 256 KiB under a 2 MiB budget", sent);
    cr_assert(strstr(r.err, "Disk quota exceeded"), "the shell said: %s", r.err);
    bus_cmd_free(&r);
    cr_assert(sent >= 4 && sent < 8, "%d messages of 256 KiB fit in 2 MiB", sent);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), sent, "the refused message arrived");
    cr_assert_gt(read_errors().of_a_edquot, 0, "no EDQUOT reason of uid A in errors");
    char *prom = bus_read_ok(AT("metrics/busfs.prom"), NULL);
    cr_assert(strstr(prom, "busfs_messages_rejected_total{reason=\"EDQUOT\"} "),
              "busfs.prom counts no EDQUOT:\n%s", prom);
    free(prom);

    /* Another uid sends, by outbox and by send. */
    as_sh_ok(UID_B, "head -c 262144 /dev/zero | tr '\\0' b > agents/carol/outbox/bob");
    as_sh_ok(UID_B, "echo '{\"to\":\"bob\",\"payload\":\"hi\"}' > agents/carol/send");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), sent + 2);

    /* A restart charges the pending bytes again; consuming them gives them back. */
    bus_restart(&bus, "-o", "allow_other", "--store-max-bytes", "8M", NULL);
    cr_assert_neq(as_sh(UID_A, NULL, "head -c 262144 /dev/zero > agents/alice/outbox/bob"), 0,
                  "after a restart uid A is still over its budget");
    as_sh_ok(UID_B, "rm -f agents/bob/inbox/*");
    as_sh_ok(UID_A, "head -c 262144 /dev/zero | tr '\\0' a > agents/alice/outbox/bob");
}

/* ---- drafts per uid and inbox ----------------------------------------- */

BUS_TEST_WITH(quota, the_65th_idle_draft_to_one_inbox_gets_eagain_while_another_uid_sends,
              start_default)
{
    as_sh_ok(UID_A, "mkdir agents/alice");
    as_sh_ok(UID_B, "mkdir agents/bob agents/carol");
    struct holder h;
    hold_drafts(&h, UID_A, AT("agents/alice/outbox/bob"), 200, 0);
    cr_assert_eq(h.t.opened, 64, "uid A holds %d idle drafts to bob", h.t.opened);
    cr_assert_eq(h.t.open_err, EAGAIN, "the 65th open gave %s, want EAGAIN",
                 strerror(h.t.open_err));
    json_t *ctl = bus_ctl("bob");
    cr_assert_eq(bus_int(ctl, "reserved"), 64);
    json_decref(ctl);

    /* Another uid sends to bob; uid A sends elsewhere; the shell names the refusal. */
    as_sh_ok(UID_B, "echo hello > agents/carol/outbox/bob");
    as_sh_ok(UID_A, "echo hello > agents/alice/outbox/carol");
    struct bus_cmd r;
    cr_assert_neq(as_sh(UID_A, &r, "echo more > agents/alice/outbox/bob"), 0);
    cr_assert(strstr(r.err, "Resource temporarily unavailable"), "the shell said: %s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1);
    json_t *lines = bus_jsonl(AT("agents/alice/errors"));
    const char *reason = json_string_value(
        json_object_get(json_array_get(lines, json_array_size(lines) - 1), "reason"));
    cr_assert(reason && strstr(reason, "--max-drafts-per-sender"), "reason: %s", reason);
    json_decref(lines);

    /* Once the idle files are gone, uid A sends to bob again. */
    holder_kill(&h);
    long long end = bus_now_ms() + BUS_WAIT_MS;
    while (as_sh(UID_A, NULL, "echo again > agents/alice/outbox/bob") != 0) {
        cr_assert_lt(bus_now_ms(), end, "uid A still cannot send after its files closed");
        bus_pause_ms(50);
    }
}

/* ---- the errors log --------------------------------------------------- */

BUS_TEST_WITH(quota, a_flood_of_refusals_by_one_uid_leaves_another_uids_reasons_in_errors,
              start_default)
{
    enum { FLOOD = 500 };
    cr_assert_eq(refusals_as(UID_B, AT("agents/9bee"), 1), 1);
    cr_assert_eq(refusals_as(UID_A, AT("agents/bad name"), FLOOD), FLOOD);
    cr_assert_eq(refusals_as(UID_B, AT("agents/9bee"), 2), 2);

    /* A's share is counted once its seconds are over. */
    struct errors_seen s;
    long long end = bus_now_ms() + BUS_WAIT_MS;
    for (;;) {
        s = read_errors();
        if ((long long)s.of_a + s.suppressed_of_a == FLOOD)
            break;
        cr_assert_lt(bus_now_ms(), end, "uid A: %zu logged + %lld suppressed of %d", s.of_a,
                     s.suppressed_of_a, FLOOD);
        bus_pause_ms(100);
    }
    cr_assert_eq(s.of_b, 3, "uid B's refusals: %zu of 3 kept", s.of_b);
    cr_assert_eq(s.of_b_reasons, 3);
    cr_assert_leq(s.of_a, 100, "uid A has %zu records", s.of_a);
    cr_assert_gt(s.suppressed_records, 0, "no suppressed record");
    json_t *st = bus_json_file(AT("health/status"), 0);
    json_int_t rejected =
        json_integer_value(json_object_get(json_object_get(st, "bus"), "messages_rejected_total"));
    cr_assert_geq(rejected, FLOOD + 3, "every refusal is counted: %lld", (long long)rejected);
    json_decref(st);
}

/* ---- memory ----------------------------------------------------------- */

static long rss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    size_t len;
    char *s = bus_read_ok(path, &len);
    const char *p = strstr(s, "VmRSS:");
    cr_assert_not_null(p);
    long kib = strtol(p + 6, NULL, 10);
    free(s);
    return kib;
}

/* Does the process run with AddressSanitizer's allocator (libasan mapped)? */
static bool sanitized(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    char *maps = bus_read_ok(path, NULL);
    bool asan = strstr(maps, "libasan") != NULL;
    free(maps);
    return asan;
}

BUS_TEST_WITH(quota, refused_big_drafts_leave_no_memory_behind_once_their_writers_are_killed,
              start_for_memory)
{
    /* --store-max-bytes 64M: 16 MiB a uid. Two uids and the server's own write 1 MiB
     * drafts until refused. */
    as_sh_ok(UID_A, "mkdir agents/alice");
    as_sh_ok(UID_B, "mkdir agents/bee");
    cr_assert_eq(mkdir(AT("agents/root"), 0755), 0);
    cr_assert_eq(mkdir(AT("agents/bob"), 0755), 0);
    long start = rss_kib(bus.pid);
    struct holder h[3];
    hold_drafts(&h[0], UID_A, AT("agents/alice/outbox/bob"), 60, MIB);
    hold_drafts(&h[1], UID_B, AT("agents/bee/outbox/bob"), 60, MIB);
    hold_drafts(&h[2], 0, AT("agents/root/outbox/bob"), 60, MIB);
    long peak = rss_kib(bus.pid);
    cr_assert_eq(h[0].t.err, EDQUOT, "uid A: %d drafts of 1 MiB, then %s", h[0].t.done,
                 strerror(h[0].t.err));
    cr_assert_eq(h[1].t.err, EDQUOT, "uid B: %d drafts of 1 MiB, then %s", h[1].t.done,
                 strerror(h[1].t.err));
    cr_assert_eq(h[2].t.err, ENOSPC, "root: %d drafts of 1 MiB, then %s", h[2].t.done,
                 strerror(h[2].t.err));
    int accepted = h[0].t.done + h[1].t.done + h[2].t.done;
    cr_assert_leq(accepted, 64, "%d MiB of unfinished messages under a 64 MiB store", accepted);
    cr_assert_leq(h[0].t.done, 16);
    cr_assert_leq(h[1].t.done, 16);
    cr_assert_leq(peak - start, 3L * 64 * 1024, "the server grew by %ld KiB", peak - start);
    cr_assert_geq(peak - start, 8 * 1024, "the drafts' bytes are held: %ld KiB", peak - start);

    for (int i = 0; i < 3; i++)
        holder_kill(&h[i]);
    if (sanitized(bus.pid)) {
        /* AddressSanitizer keeps freed memory in quarantine: RSS says nothing here, and
         * its own leak check runs when the server exits. */
        cr_log_info("the server runs under AddressSanitizer: RSS not checked");
        return;
    }
    /* Whatever the killed writers' last flush delivered is consumed, and the senders
     * (whose outboxes keep what they sent) are removed: no state is left that could
     * hold the memory. */
    cr_assert_eq(bus_sh(&bus, NULL, "rm -f agents/bob/inbox/* && rmdir agents/alice agents/bee "
                        "agents/root"), 0);
    long long end = bus_now_ms() + BUS_WAIT_MS;
    long now;
    while ((now = rss_kib(bus.pid)) > start + 32 * 1024) {
        cr_assert_lt(bus_now_ms(), end, "RSS %ld KiB at start, %ld at the peak, still %ld KiB "
                     "after the writers were killed", start, peak, now);
        bus_pause_ms(100);
    }
    cr_log_info("server RSS: %ld KiB at start, %ld with the drafts, %ld after", start, peak, now);
}
