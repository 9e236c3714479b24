/*
 * test_next.c — SPEC §3: agents/A/next blocks until a message arrives,
 * returns the oldest without consuming it, honours O_NONBLOCK, poll() and
 * signals.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef SYS_poll
#define POLL_SYSCALL SYS_poll
#else
#define POLL_SYSCALL (-1L)
#endif

/* The payload of an envelope printed by `cat next`. */
static char *payload_of(const char *text)
{
    json_error_t e;
    json_t *env = json_loads(text, 0, &e);
    cr_assert(env && json_is_object(env), "next gave no envelope (%s): [%s]", e.text, text);
    bus_assert_envelope(env, NULL, NULL);
    char *p = strdup(bus_str(env, "payload"));
    json_decref(env);
    return p;
}

BUS_TEST(next, cat_next_blocks_until_another_process_sends)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_proc cat;
    bus_spawn(&bus, &cat, "exec cat agents/bob/next");
    cr_assert(bus_wait_in_syscall(cat.pid, SYS_read, -1, BUS_WAIT_MS),
              "cat agents/bob/next never blocked in read()");
    bus_sync(&bus);
    cr_assert(bus_proc_running(&cat), "cat of an empty next returned at once");

    cr_assert_eq(bus_sh(&bus, NULL, "echo wake up > agents/alice/outbox/bob"), 0);
    char *out;
    int status = bus_proc_wait(&cat, BUS_WAIT_MS, &out);
    cr_assert_eq(status, 0, "the blocked cat ended with status %d", status);
    char *payload = payload_of(out);
    cr_assert_str_eq(payload, "wake up");

    size_t n;
    char **names = bus_ls(AT("agents/bob/inbox"), &n);
    cr_assert(names && n == 1);
    char *file = bus_read_ok(AT("agents/bob/inbox/%s", names[0]), NULL);
    cr_assert_str_eq(out, file, "next and the inbox file differ");
    bus_ls_free(names, n);
    free(file);
    free(payload);
    free(out);
}

BUS_TEST(next, nonblocking_read_of_an_empty_next_fails_with_eagain)
{
    bus_agents(&bus, "alice", "bob", NULL);
    int fd = open(AT("agents/bob/next"), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    cr_assert(fd >= 0, "open next O_NONBLOCK: %s", strerror(errno));
    char buf[4096];
    errno = 0;
    ssize_t n = read(fd, buf, sizeof buf);
    cr_assert(n < 0 && errno == EAGAIN, "read of an empty next with O_NONBLOCK: %zd, %s", n,
              strerror(errno));
    close(fd);

    bus_send("alice", "bob", "there now");
    fd = open(AT("agents/bob/next"), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    cr_assert(fd >= 0);
    n = read(fd, buf, sizeof buf - 1);
    cr_assert(n > 0, "O_NONBLOCK read with a message pending: %s", strerror(errno));
    buf[n] = '\0';
    char *payload = payload_of(buf);
    cr_assert_str_eq(payload, "there now");
    free(payload);
    close(fd);
}

BUS_TEST(next, poll_reports_pollin_when_a_message_arrives)
{
    bus_agents(&bus, "alice", "bob", NULL);
    const char *outbox = AT("agents/alice/outbox/bob");
    int fd = open(AT("agents/bob/next"), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    cr_assert(fd >= 0, "open next: %s", strerror(errno));
    struct pollfd p = {fd, POLLIN, 0};
    int ready = poll(&p, 1, 0);
    cr_assert_eq(ready, 0, "poll of an empty next reports %#x", (unsigned)p.revents);

    pid_t parent = (pid_t)syscall(SYS_gettid); /* the thread that will poll */
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        /* Send once the test sits in poll(). */
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
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    cr_assert(n > 0, "read after POLLIN: %s", strerror(errno));
    buf[n] = '\0';
    char *payload = payload_of(buf);
    cr_assert_str_eq(payload, "ring");
    free(payload);
    close(fd);
}

BUS_TEST(next, timeout_interrupts_cat_next_and_the_server_keeps_working)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_cmd r;
    int status = bus_sh(&bus, &r, "timeout 2 cat agents/bob/next");
    cr_assert_eq(status, 124, "timeout 2 cat next ended with %d (want 124: interrupted)", status);
    bus_cmd_free(&r);

    cr_assert_eq(bus_sh(&bus, NULL, "echo after > agents/alice/outbox/bob"), 0,
                 "send after an interrupted next failed");
    status = bus_sh(&bus, &r, "timeout 10 cat agents/bob/next");
    cr_assert_eq(status, 0, "cat next after an interrupted one: status %d", status);
    char *payload = payload_of(r.out);
    cr_assert_str_eq(payload, "after");
    free(payload);
    bus_cmd_free(&r);
}

static void on_signal(int sig)
{
    (void)sig;
}

BUS_TEST(next, a_caught_signal_interrupts_a_blocked_read_with_eintr)
{
    bus_agents(&bus, "bob", NULL);
    const char *next = AT("agents/bob/next");
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal; /* no SA_RESTART */
        sigaction(SIGUSR1, &sa, NULL);
        int fd = open(next, O_RDONLY);
        if (fd < 0)
            _exit(4);
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf);
        _exit(n < 0 && errno == EINTR ? 0 : n < 0 ? 2 : 3);
    }
    cr_assert(bus_wait_in_syscall(child, SYS_read, -1, BUS_WAIT_MS),
              "the reader never blocked in read()");
    bus_sync(&bus);
    kill(child, SIGUSR1);
    int status = bus_wait_child(child, BUS_WAIT_MS);
    cr_assert_eq(status, 0,
                 "the signalled reader ended with %d (0: EINTR, 2: other error, 3: data, -1: "
                 "still blocked)",
                 status);
    /* Nothing was consumed or broken. */
    bus_agents(&bus, "alice", NULL);
    bus_send("alice", "bob", "fine");
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1);
}

BUS_TEST(next, next_returns_the_oldest_and_does_not_consume_it)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    struct bus_cmd a, b;
    cr_assert_eq(bus_sh(&bus, &a, "timeout 10 cat agents/bob/next"), 0);
    cr_assert_eq(bus_sh(&bus, &b, "timeout 10 cat agents/bob/next"), 0);
    cr_assert_str_eq(a.out, b.out, "two reads of next differ");
    char *payload = payload_of(a.out);
    cr_assert_str_eq(payload, "one", "next is not the oldest");
    free(payload);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 2, "reading next consumed a message");

    size_t n;
    char **names = bus_ls(AT("agents/bob/inbox"), &n);
    char *oldest = bus_read_ok(AT("agents/bob/inbox/%s", names[0]), NULL);
    cr_assert_str_eq(a.out, oldest, "next differs from the oldest inbox file");
    free(oldest);
    cr_assert(unlink(AT("agents/bob/inbox/%s", names[0])) == 0);
    bus_ls_free(names, n);
    bus_cmd_free(&a);
    bus_cmd_free(&b);

    cr_assert_eq(bus_sh(&bus, &a, "timeout 10 cat agents/bob/next"), 0);
    payload = payload_of(a.out);
    cr_assert_str_eq(payload, "two", "after rm of the oldest, next is not the following one");
    free(payload);
    bus_cmd_free(&a);
}
