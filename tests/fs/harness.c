/*
 * harness.c — mounting busfs for a test (see harness.h): the temp dir, the
 * server process, waiting for the mount, stopping, kill -9 and stale mounts.
 *
 * Ownership: the fixture owns its temp dir and its server process; the
 * server is started with PR_SET_PDEATHSIG=SIGTERM so a test killed by its
 * timeout (when Criterion skips .fini) still takes its server down cleanly.
 * The temp dir is removed without crossing into a mount (FTW_MOUNT) and
 * only after every mount inside it is gone.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

struct bus_fixture bus;

/* The last bytes of the server log, for failure messages (static buffer). */
static const char *log_tail(const struct bus_fixture *f)
{
    static char tail[3000];
    tail[0] = '\0';
    int fd = open(f->log, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return "(no server log)";
    off_t size = lseek(fd, 0, SEEK_END);
    off_t from = size > (off_t)sizeof tail - 1 ? size - (off_t)sizeof tail + 1 : 0;
    ssize_t n = pread(fd, tail, sizeof tail - 1, from);
    close(fd);
    tail[n > 0 ? n : 0] = '\0';
    return tail[0] ? tail : "(empty server log)";
}

/* ---- mounts ---------------------------------------------------------- */

/* Undoes mountinfo's octal escapes (\040 for a space ...) in place. */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] && r[3]) {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 3;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
}

/*
 * Calls fn(mount id, mount point, arg) for every line of mountinfo; stops
 * when fn returns non-zero.
 */
static void each_mount(int (*fn)(int, const char *, void *), void *arg)
{
    FILE *in = fopen("/proc/self/mountinfo", "re");
    if (!in)
        return;
    char line[4 * PATH_MAX];
    while (fgets(line, sizeof line, in)) {
        int id;
        char point[2 * PATH_MAX];
        if (sscanf(line, "%d %*d %*s %*s %8191s", &id, point) != 2)
            continue;
        unescape(point);
        if (fn(id, point, arg))
            break;
    }
    fclose(in);
}

struct mount_query {
    const char *path;
    int n;
};

static int count_at(int id, const char *point, void *arg)
{
    (void)id;
    struct mount_query *q = arg;
    q->n += strcmp(point, q->path) == 0;
    return 0;
}

bool bus_is_mounted(const char *path)
{
    struct mount_query q = {.path = path, .n = 0};
    each_mount(count_at, &q);
    return q.n > 0;
}

/*
 * Is a live FUSE file system mounted at path? mountinfo must list a mount
 * there, and statfs must reach a server: a stale mount left by a killed
 * server answers ENOTCONN, and its id may be reused by the new mount.
 */
static bool live_fuse_mount(const char *path)
{
    if (!bus_is_mounted(path))
        return false;
    struct statfs sf;
    return statfs(path, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC;
}

static void unmount_lazily(const char *path)
{
    char *argv[] = {"fusermount3", "-uz", (char *)path, NULL};
    bus_exec(NULL, argv, 5000, NULL);
    if (bus_is_mounted(path))
        umount2(path, MNT_DETACH);
}

struct under_query {
    char prefix[PATH_MAX + 1];
    char found[PATH_MAX];
};

static int find_under(int id, const char *point, void *arg)
{
    (void)id;
    struct under_query *q = arg;
    if (strncmp(point, q->prefix, strlen(q->prefix)) == 0) {
        snprintf(q->found, sizeof q->found, "%s", point);
        return 1;
    }
    return 0;
}

/* Lazily unmounts everything mounted inside dir (at most a few). */
static void unmount_all_under(const char *dir)
{
    for (int round = 0; round < 16; round++) {
        struct under_query q = {.found = ""};
        snprintf(q.prefix, sizeof q.prefix, "%s/", dir);
        each_mount(find_under, &q);
        if (!q.found[0])
            return;
        unmount_lazily(q.found);
    }
}

/* ---- lifecycle ------------------------------------------------------- */

const char *bus_bin(void)
{
    const char *bin = getenv("BUSFS_BIN");
    cr_assert(bin && bin[0], "BUSFS_BIN is not set (the absolute path of busfs)");
    cr_assert(access(bin, X_OK) == 0, "BUSFS_BIN=%s is not executable: %s", bin, strerror(errno));
    return bin;
}

void bus_require_fuse(void)
{
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        return;
    }
    int err = errno;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0)
        cr_assert_fail("/dev/fuse cannot be opened (%s) and CI=true", strerror(err));
    cr_skip_test("/dev/fuse cannot be opened: %s", strerror(err));
}

void bus_prepare(struct bus_fixture *f)
{
    memset(f, 0, sizeof *f);
    char tmpl[] = "/tmp/busfs-test-XXXXXX";
    cr_assert(mkdtemp(tmpl), "mkdtemp: %s", strerror(errno));
    cr_assert(realpath(tmpl, f->dir), "realpath %s: %s", tmpl, strerror(errno));
    snprintf(f->store, sizeof f->store, "%.4000s/store", f->dir);
    snprintf(f->mnt, sizeof f->mnt, "%.4000s/mnt", f->dir);
    snprintf(f->log, sizeof f->log, "%.4000s/server.log", f->dir);
    cr_assert(mkdir(f->store, 0700) == 0, "mkdir %s: %s", f->store, strerror(errno));
    cr_assert(mkdir(f->mnt, 0755) == 0, "mkdir %s: %s", f->mnt, strerror(errno));
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (type == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

/* Stops a server without asserting anything, clears mounts, removes dir. */
static void cleanup(struct bus_fixture *f)
{
    if (f->pid > 0) {
        int st;
        kill(f->pid, SIGTERM);
        if (bus_waitpid_deadline(f->pid, &st, BUS_WAIT_MS) == 0) {
            kill(f->pid, SIGKILL);
            waitpid(f->pid, &st, 0);
        }
        f->pid = 0;
    }
    if (f->dir[0]) {
        unmount_all_under(f->dir);
        nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        f->dir[0] = '\0';
    }
}

void bus_launch(struct bus_fixture *f, const char *const *args)
{
    bus_require_fuse();
    const char *bin = bus_bin();
    const char *argv[48];
    size_t n = 0;
    argv[n++] = bin;
    argv[n++] = "-f";
    argv[n++] = "--store";
    argv[n++] = f->store;
    for (size_t i = 0; args && args[i]; i++) {
        cr_assert(n < 45, "too many server arguments");
        argv[n++] = args[i];
    }
    argv[n++] = f->mnt;
    argv[n] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        int log = open(f->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (log < 0 || null < 0)
            _exit(127);
        dup2(null, 0);
        dup2(log, 1);
        dup2(log, 2);
        bus_close_fds_from(3);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    f->pid = pid;

    long long end = bus_now_ms() + BUS_WAIT_MS;
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            f->pid = 0;
            char msg[sizeof "status -2147483648"];
            snprintf(msg, sizeof msg, "status %d", bus_status_code(st));
            const char *tail = log_tail(f);
            char copy[3000];
            snprintf(copy, sizeof copy, "%s", tail);
            cleanup(f);
            cr_assert_fail("busfs exited (%s) before mounting; its log:\n%s", msg, copy);
        }
        if (live_fuse_mount(f->mnt))
            break;
        if (bus_now_ms() >= end) {
            char copy[3000];
            snprintf(copy, sizeof copy, "%s", log_tail(f));
            cleanup(f);
            cr_assert_fail("no mount at the mountpoint within %d ms; server log:\n%s", BUS_WAIT_MS,
                           copy);
        }
        bus_pause_ms(5);
    }
    struct stat st;
    cr_assert(stat(f->mnt, &st) == 0, "stat of the fresh mount: %s", strerror(errno));
    cr_assert(S_ISDIR(st.st_mode), "the mount root is not a directory");
}

static void launch_va(struct bus_fixture *f, va_list ap)
{
    const char *args[40];
    size_t n = 0;
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        cr_assert(n < 39, "too many server arguments");
        args[n++] = a;
    }
    args[n] = NULL;
    bus_launch(f, args);
}

void bus_start(struct bus_fixture *f, ...)
{
    bus_require_fuse();
    bus_prepare(f);
    va_list ap;
    va_start(ap, f);
    launch_va(f, ap);
    va_end(ap);
}

void bus_await_exit(struct bus_fixture *f, const char *after)
{
    cr_assert(f->pid > 0, "no server is running");
    pid_t pid = f->pid;
    int st = 0;
    if (bus_waitpid_deadline(pid, &st, BUS_WAIT_MS) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        f->pid = 0;
        unmount_all_under(f->dir);
        cr_assert_fail("busfs did not exit within %d ms of %s; log:\n%s", BUS_WAIT_MS, after,
                       log_tail(f));
    }
    f->pid = 0;
    bool still_mounted = bus_is_mounted(f->mnt);
    if (still_mounted)
        unmount_lazily(f->mnt);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "busfs ended with status %d after %s (want exit 0); log:\n%s", bus_status_code(st),
              after, log_tail(f));
    cr_assert(!still_mounted, "busfs exited after %s but left its mount", after);
}

void bus_terminate_with(struct bus_fixture *f, int sig)
{
    cr_assert(f->pid > 0, "no server is running");
    cr_assert(kill(f->pid, sig) == 0, "kill: %s", strerror(errno));
    bus_await_exit(f, strsignal(sig));
}

void bus_terminate(struct bus_fixture *f)
{
    bus_terminate_with(f, SIGTERM);
}

void bus_restart(struct bus_fixture *f, ...)
{
    if (f->pid > 0)
        bus_terminate(f);
    va_list ap;
    va_start(ap, f);
    launch_va(f, ap);
    va_end(ap);
}

void bus_stop(struct bus_fixture *f)
{
    if (f->pid > 0)
        bus_terminate(f);
    cleanup(f);
}

void bus_kill9_leave_stale(struct bus_fixture *f)
{
    cr_assert(f->pid > 0, "no server is running");
    cr_assert(kill(f->pid, SIGKILL) == 0, "kill -9: %s", strerror(errno));
    int st;
    waitpid(f->pid, &st, 0);
    f->pid = 0;
}

void bus_clear_mount(struct bus_fixture *f)
{
    char *argv[] = {"fusermount3", "-uz", f->mnt, NULL};
    struct bus_cmd r;
    int status = bus_exec(NULL, argv, 5000, &r);
    bool mounted = bus_is_mounted(f->mnt);
    if (mounted)
        umount2(f->mnt, MNT_DETACH);
    cr_assert(status == 0 && !mounted, "fusermount3 -uz %s: status %d: %s", f->mnt, status, r.err);
    bus_cmd_free(&r);
}

void bus_kill9(struct bus_fixture *f)
{
    bus_kill9_leave_stale(f);
    bus_clear_mount(f);
}

void bus_setup(void)
{
    bus_start(&bus, NULL);
}

void bus_teardown(void)
{
    cleanup(&bus);
}

/* ---- paths ----------------------------------------------------------- */

const char *bus_path(const struct bus_fixture *f, const char *fmt, ...)
{
    static char ring[16][PATH_MAX];
    static unsigned next;
    char *buf = ring[next++ % 16];
    int n = snprintf(buf, PATH_MAX, "%s/", f->mnt);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, PATH_MAX - (size_t)n, fmt, ap);
    va_end(ap);
    return buf;
}
