/*
 * harness_proc.c — processes for the tests (see harness.h): shell commands
 * with captured output and a deadline, background commands, waiting for a
 * process to block in a syscall, and the writer process that holds a file
 * open while a message is half written.
 *
 * Every fd opened here is O_CLOEXEC and every child closes all fds above 2,
 * so no child ever shares (and so flushes) a file of the test.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- small utilities ------------------------------------------------- */

long long bus_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void bus_pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

void bus_close_fds_from(int lowest)
{
    if (close_range((unsigned)lowest, ~0U, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = lowest; fd < (max > 0 ? max : 1024); fd++)
        close((int)fd);
}

int bus_status_code(int wstatus)
{
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return -1;
}

pid_t bus_waitpid_deadline(pid_t pid, int *wstatus, int timeout_ms)
{
    long long end = bus_now_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(pid, wstatus, WNOHANG);
        if (r != 0)
            return r;
        if (bus_now_ms() >= end)
            return 0;
        bus_pause_ms(5);
    }
}

/* ---- commands -------------------------------------------------------- */

struct buffer {
    char *data;
    size_t len;
    size_t cap;
};

static void buffer_add(struct buffer *b, const char *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        cr_assert(grown, "out of memory");
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

/* Reads what is there on fd into b; returns false at end-of-file. */
static bool drain_fd(int fd, struct buffer *b)
{
    char chunk[65536];
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n > 0) {
        buffer_add(b, chunk, (size_t)n);
        return true;
    }
    return n < 0 && (errno == EINTR || errno == EAGAIN);
}

int bus_exec(const char *cwd, char *const argv[], int timeout_ms, struct bus_cmd *r)
{
    int out[2], err[2];
    cr_assert(pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0, "pipe: %s",
              strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        if (cwd && chdir(cwd) < 0)
            _exit(126);
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        bus_close_fds_from(3);
        setenv("LC_ALL", "C", 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    struct buffer ob = {0}, eb = {0};
    buffer_add(&ob, "", 0);
    buffer_add(&eb, "", 0);
    int status = -1;
    if (pid > 0) {
        long long end = bus_now_ms() + timeout_ms;
        bool out_open = true, err_open = true, timed_out = false;
        while (out_open || err_open) {
            long long left = end - bus_now_ms();
            if (left <= 0) {
                timed_out = true;
                break;
            }
            struct pollfd p[2] = {{out_open ? out[0] : -1, POLLIN, 0},
                                  {err_open ? err[0] : -1, POLLIN, 0}};
            if (poll(p, 2, (int)(left > 100 ? 100 : left)) < 0 && errno != EINTR)
                break;
            if (out_open && p[0].revents)
                out_open = drain_fd(out[0], &ob);
            if (err_open && p[1].revents)
                err_open = drain_fd(err[0], &eb);
        }
        int st;
        /* Both pipes closed: the command is ending; give it a moment more. */
        long long left = end - bus_now_ms();
        pid_t done = timed_out ? 0 : bus_waitpid_deadline(pid, &st, left > 2000 ? (int)left : 2000);
        if (done == pid) {
            status = bus_status_code(st);
        } else {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            /* A process stuck in a FUSE request may never die: give up. */
            bus_waitpid_deadline(pid, &st, 3000);
            status = -1;
        }
    }
    close(out[0]);
    close(err[0]);
    if (r) {
        r->status = status;
        r->out = ob.data;
        r->out_len = ob.len;
        r->err = eb.data;
        r->err_len = eb.len;
    } else {
        free(ob.data);
        free(eb.data);
    }
    return status;
}

int bus_sh(const struct bus_fixture *f, struct bus_cmd *r, const char *fmt, ...)
{
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char *argv[] = {"sh", "-c", cmd, NULL};
    return bus_exec(f->mnt, argv, 20000, r);
}

void bus_cmd_free(struct bus_cmd *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

void bus_spawn(const struct bus_fixture *f, struct bus_proc *p, const char *fmt, ...)
{
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int out[2];
    cr_assert(pipe2(out, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        if (chdir(f->mnt) < 0)
            _exit(126);
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(out[1], 1);
        bus_close_fds_from(3);
        setenv("LC_ALL", "C", 1);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    p->pid = pid;
    p->out_fd = out[0];
}

int bus_proc_wait(struct bus_proc *p, int timeout_ms, char **out)
{
    struct buffer b = {0};
    buffer_add(&b, "", 0);
    long long end = bus_now_ms() + timeout_ms;
    bool open_ = true;
    while (open_) {
        long long left = end - bus_now_ms();
        if (left <= 0)
            break;
        struct pollfd pf = {p->out_fd, POLLIN, 0};
        if (poll(&pf, 1, (int)(left > 100 ? 100 : left)) > 0)
            open_ = drain_fd(p->out_fd, &b);
    }
    int st, status = -1;
    long long left = end - bus_now_ms();
    if (!open_ && bus_waitpid_deadline(p->pid, &st, left > 2000 ? (int)left : 2000) == p->pid) {
        status = bus_status_code(st);
    } else {
        kill(-p->pid, SIGKILL);
        kill(p->pid, SIGKILL);
        bus_waitpid_deadline(p->pid, &st, 3000);
    }
    close(p->out_fd);
    p->out_fd = -1;
    if (out)
        *out = b.data;
    else
        free(b.data);
    return status;
}

void bus_sync(const struct bus_fixture *f)
{
    size_t n;
    char **names = bus_ls(f->mnt, &n);
    cr_assert(names, "readdir of the mount: %s", strerror(errno));
    bus_ls_free(names, n);
}

int bus_wait_child(pid_t pid, int timeout_ms)
{
    int st;
    if (bus_waitpid_deadline(pid, &st, timeout_ms) == pid)
        return bus_status_code(st);
    kill(pid, SIGKILL);
    bus_waitpid_deadline(pid, &st, 3000);
    return -1;
}

bool bus_proc_running(const struct bus_proc *p)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)p->pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0)
        return false;
    return info.si_pid == 0;
}

bool bus_wait_in_syscall(pid_t pid, long nr, long nr2, int timeout_ms)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    long long end = bus_now_ms() + timeout_ms;
    do {
        FILE *in = fopen(path, "re");
        if (!in)
            return false;
        long got = -1;
        unsigned long fd = 0;
        int n = fscanf(in, "%ld 0x%lx", &got, &fd);
        fclose(in);
        if (n == 2 && (got == nr || (nr2 >= 0 && got == nr2)) && fd >= 3)
            return true;
        bus_pause_ms(5);
    } while (bus_now_ms() < end);
    return false;
}

/* ---- the writer process ---------------------------------------------- */

enum { WRITER_OPEN = 'o', WRITER_WRITE = 'w', WRITER_CLOSE = 'c' };

static bool full_io(int fd, void *buf, size_t len, bool writing)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = writing ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static _Noreturn void writer_main(int cmd, int res)
{
    int fd = -1;
    for (;;) {
        char op;
        size_t len;
        int flags;
        if (!full_io(cmd, &op, 1, false) || !full_io(cmd, &flags, sizeof flags, false) ||
            !full_io(cmd, &len, sizeof len, false))
            _exit(1); /* the test is gone: exiting closes (flushes) fd */
        char *data = malloc(len + 1);
        if (!data || !full_io(cmd, data, len, false))
            _exit(1);
        data[len] = '\0';
        int err = 0;
        if (op == WRITER_OPEN) {
            fd = open(data, flags, 0644);
            err = fd < 0 ? errno : 0;
        } else if (op == WRITER_WRITE) {
            ssize_t n = write(fd, data, len);
            err = n < 0 ? errno : (size_t)n != len ? EIO : 0;
        } else {
            err = close(fd) < 0 ? errno : 0;
            fd = -1;
        }
        free(data);
        full_io(res, &err, sizeof err, true);
        if (op == WRITER_CLOSE)
            _exit(0);
    }
}

static int writer_call(struct bus_writer *w, char op, int flags, const void *data, size_t len)
{
    int err;
    if (!full_io(w->cmd_fd, &op, 1, true) || !full_io(w->cmd_fd, &flags, sizeof flags, true) ||
        !full_io(w->cmd_fd, &len, sizeof len, true) ||
        !full_io(w->cmd_fd, (void *)data, len, true) ||
        !full_io(w->res_fd, &err, sizeof err, false))
        return EPIPE;
    return err;
}

int bus_writer_open(struct bus_writer *w, const char *path, int flags)
{
    int cmd[2], res[2];
    cr_assert(pipe2(cmd, O_CLOEXEC) == 0 && pipe2(res, O_CLOEXEC) == 0, "pipe: %s",
              strerror(errno));
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(cmd[1]);
        close(res[0]);
        writer_main(cmd[0], res[1]);
    }
    close(cmd[0]);
    close(res[1]);
    w->pid = pid;
    w->cmd_fd = cmd[1];
    w->res_fd = res[0];
    return writer_call(w, WRITER_OPEN, flags, path, strlen(path));
}

int bus_writer_write(struct bus_writer *w, const void *data, size_t len)
{
    return writer_call(w, WRITER_WRITE, 0, data, len);
}

int bus_writer_close(struct bus_writer *w)
{
    int err = writer_call(w, WRITER_CLOSE, 0, "", 0);
    close(w->cmd_fd);
    close(w->res_fd);
    int st;
    if (bus_waitpid_deadline(w->pid, &st, BUS_WAIT_MS) == 0) {
        kill(w->pid, SIGKILL);
        bus_waitpid_deadline(w->pid, &st, 3000);
        if (err == 0)
            err = ETIMEDOUT;
    }
    w->pid = 0;
    return err;
}
