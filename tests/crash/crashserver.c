/*
 * crashserver.c — the busfs server of the crash loop (see crashloop.h):
 * start it in the foreground on the run's store and wait until a live server
 * answers at the mountpoint, kill -9 it and clear its stale mount, stop it
 * cleanly, run `busfs --check` on the store.
 *
 * Ownership: this file owns the one server process (server_pid; 0 when none).
 * The server gets PR_SET_PDEATHSIG=SIGTERM, so it never outlives the
 * conductor. Its stdout and stderr go to logs/server.log, between the
 * conductor's own "=== ... ===" notes (kills, restarts, stops).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "crashloop.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define MOUNT_WAIT_MS 60000 /* a restart replays the journal: generous */
#define STOP_WAIT_MS 30000

static const struct crash_config *cfg;
static const struct crash_paths *paths;
static pid_t server_pid;

void crash_server_init(const struct crash_config *config, const struct crash_paths *p)
{
    cfg = config;
    paths = p;
}

pid_t crash_server_pid(void)
{
    return server_pid;
}

/* ---- mounts ------------------------------------------------------------ */

/* Is anything mounted at exactly path (mountinfo; octal escapes undone)? */
bool crash_is_mounted(const char *path)
{
    FILE *in = fopen("/proc/self/mountinfo", "re");
    if (!in)
        return false;
    char line[3 * PATH_MAX];
    bool found = false;
    while (!found && fgets(line, sizeof line, in)) {
        char point[2 * PATH_MAX];
        if (sscanf(line, "%*d %*d %*s %*s %8191s", point) != 1)
            continue;
        char *w = point;
        for (char *r = point; *r; r++) {
            if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] && r[3]) {
                *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
                r += 3;
            } else {
                *w++ = *r;
            }
        }
        *w = '\0';
        found = strcmp(point, path) == 0;
    }
    fclose(in);
    return found;
}

/* A live server answers statfs at the mountpoint; a stale mount gives ENOTCONN. */
static bool live_fuse_mount(const char *path)
{
    struct statfs sf;
    return crash_is_mounted(path) && statfs(path, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC;
}

/* Appends a line to logs/server.log (the conductor's notes between the server's). */
void crash_server_note(const char *fmt, ...)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/server.log", paths->logs);
    FILE *f = fopen(path, "ae");
    if (!f)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(f, "=== crashloop %.3fs: ", crash_elapsed_s());
    vfprintf(f, fmt, ap);
    fputs(" ===\n", f);
    va_end(ap);
    fclose(f);
}

/* Runs argv with stdout and stderr appended to log; its exit status (128+sig
 * when killed), -1 when it did not end within timeout_ms (then it is killed). */
static int run_command(char *const argv[], const char *log, int timeout_ms)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (fd < 0 || null < 0)
            _exit(127);
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        close_range(3, ~0U, 0);
        execvp(argv[0], argv);
        _exit(127);
    }
    long long end = crash_now_ms() + timeout_ms;
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return -1;
        if (crash_now_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        crash_pause_ms(2);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* fusermount3 -uz MNT (and a lazy umount2 if that left it mounted). */
bool crash_clear_mount(void)
{
    char log[PATH_MAX + 16];
    snprintf(log, sizeof log, "%s/server.log", paths->logs);
    char *argv[] = {"fusermount3", "-uz", (char *)paths->mnt, NULL};
    if (crash_is_mounted(paths->mnt))
        run_command(argv, log, 10000);
    if (crash_is_mounted(paths->mnt))
        umount2(paths->mnt, MNT_DETACH);
    return !crash_is_mounted(paths->mnt);
}

/* ---- the server -------------------------------------------------------- */

/* Starts `busfs -f --store S ... M` and waits until a live server answers at M.
 * Returns 0, or -1 after printing why (the server exited, or no mount in time). */
int crash_server_start(bool clear_stale)
{
    char log[PATH_MAX + 16];
    snprintf(log, sizeof log, "%s/server.log", paths->logs);
    const char *argv[20];
    int n = 0;
    argv[n++] = cfg->bin;
    argv[n++] = "-f";
    argv[n++] = "--store";
    argv[n++] = paths->store;
    argv[n++] = "--inbox-capacity";
    argv[n++] = cfg->inbox_capacity;
    argv[n++] = "--store-max-bytes";
    argv[n++] = cfg->store_max_bytes;
    if (cfg->consumers) {
        /* Leases end soon (abandoned claims come back within the run) and no
         * message turns into a dead letter: each must stay countable. */
        argv[n++] = "--lease";
        argv[n++] = cfg->lease;
        argv[n++] = "--max-deliver";
        argv[n++] = "1000000";
    }
    if (clear_stale)
        argv[n++] = "--clear-stale";
    argv[n++] = paths->mnt;
    argv[n] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        printf("crashloop: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (fd < 0 || null < 0)
            _exit(127);
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        close_range(3, ~0U, 0);
        execv(cfg->bin, (char *const *)argv);
        _exit(127);
    }
    server_pid = pid;
    long long end = crash_now_ms() + MOUNT_WAIT_MS;
    for (;;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            server_pid = 0;
            printf("crashloop: busfs exited (status %d) before mounting; see %s\n",
                   WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), log);
            return -1;
        }
        if (live_fuse_mount(paths->mnt))
            break;
        if (crash_now_ms() >= end || crash_interrupted()) {
            printf("crashloop: no live mount at %s within %d ms; see %s\n", paths->mnt,
                   MOUNT_WAIT_MS, log);
            return -1;
        }
        crash_pause_ms(2);
    }
    return 0;
}

/* kill -9, reap, clear the stale mount. */
bool crash_server_kill9(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        int st;
        waitpid(server_pid, &st, 0);
        server_pid = 0;
    }
    return crash_clear_mount();
}

/* SIGTERM and wait: true when it exited 0 and left no mount. */
bool crash_server_stop(const char *when)
{
    if (server_pid <= 0)
        return false;
    kill(server_pid, SIGTERM);
    long long end = crash_now_ms() + STOP_WAIT_MS;
    int st = 0;
    pid_t r;
    while ((r = waitpid(server_pid, &st, WNOHANG)) == 0 && crash_now_ms() < end)
        crash_pause_ms(5);
    bool ok = true;
    if (r != server_pid) {
        crash_violation("server-stop", "%s: busfs did not exit within %d ms of SIGTERM", when,
                        STOP_WAIT_MS);
        kill(server_pid, SIGKILL);
        waitpid(server_pid, &st, 0);
        ok = false;
    } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        crash_violation("server-stop", "%s: busfs ended with status %d after SIGTERM (want 0)",
                        when, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        ok = false;
    }
    server_pid = 0;
    if (crash_is_mounted(paths->mnt)) {
        crash_violation("server-stop", "%s: busfs exited but left its mount", when);
        ok = false;
    }
    crash_clear_mount();
    return ok;
}

/* busfs --check --store S: must exit 0. */
bool crash_store_check(const char *when)
{
    char log[PATH_MAX + 16];
    snprintf(log, sizeof log, "%s/check.log", paths->logs);
    FILE *f = fopen(log, "ae");
    if (f) {
        fprintf(f, "=== busfs --check %s ===\n", when);
        fclose(f);
    }
    char *argv[] = {(char *)cfg->bin, "--check", "--store", (char *)paths->store, NULL};
    int status = run_command(argv, log, 600000);
    if (status != 0) {
        crash_violation("store-check", "%s: busfs --check --store %s exited %d (see %s)", when,
                        paths->store, status, log);
        return false;
    }
    return true;
}

/* Waits ms while the server is up; a server that exits by itself (a crash,
 * not our kill) is a violation. Returns false when it died or on Ctrl-C. */
bool crash_server_up_for(long ms)
{
    long long end = crash_now_ms() + ms;
    while (crash_now_ms() < end && !crash_interrupted()) {
        int st;
        if (server_pid > 0 && waitpid(server_pid, &st, WNOHANG) == server_pid) {
            crash_violation("server-died",
                            "at %.3fs busfs exited by itself with status %d (see logs/server.log)",
                            crash_elapsed_s(),
                            WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
            server_pid = 0;
            return false;
        }
        crash_pause_ms(ms < 20 ? 1 : 5);
    }
    return !crash_interrupted();
}

/* After Ctrl-C or a set-up failure: SIGTERM (SIGKILL after 10 s), no mount left. */
void crash_server_abort(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        int st;
        long long end = crash_now_ms() + 10000;
        while (waitpid(server_pid, &st, WNOHANG) == 0 && crash_now_ms() < end)
            crash_pause_ms(5);
        kill(server_pid, SIGKILL);
        waitpid(server_pid, &st, 0);
        server_pid = 0;
    }
    crash_clear_mount();
}
