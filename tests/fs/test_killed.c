/*
 * test_killed.c — SPEC §11: a writer killed by a signal before it closed
 * its file sends nothing. The kernel flushes a dying process's files, and
 * that FLUSH must not commit the bytes it left pending: an outbox message,
 * the unfinished last line of `metrics`, an unfinished `send` record. A
 * writer that ends normally without close() (`_exit(0)`, `exit(3)`) sends
 * them, as a close would.
 *
 * Each case forks a child from the test process, which holds no busfs
 * file meanwhile (so the fork itself flushes nothing): the child opens the
 * file, writes, says so on a pipe, and then waits to be killed or ends.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum end { END_SIGKILL, END_SIGTERM, END_EXIT0, END_EXIT3, END_THREAD_SIGKILL };

struct written {
    const char *path;
    int flags;
    const char *data;
};

static void *thread_write(void *arg)
{
    const struct written *w = arg;
    int fd = open(w->path, w->flags, 0644);
    if (fd < 0 || write(fd, w->data, strlen(w->data)) != (ssize_t)strlen(w->data))
        _exit(2);
    return NULL;
}

/* A child opens path, writes data without closing and ends as `end` says;
 * returns its wait status as the shell shows it. */
static int writer_ends(const char *path, int flags, const char *data, enum end end)
{
    int ready[2];
    cr_assert(pipe2(ready, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(ready[0]);
        struct written w = {path, flags, data};
        if (end == END_THREAD_SIGKILL) {
            pthread_t t;
            if (pthread_create(&t, NULL, thread_write, &w) != 0 || pthread_join(t, NULL) != 0)
                _exit(2);
        } else {
            thread_write(&w);
        }
        if (write(ready[1], "w", 1) != 1)
            _exit(2);
        if (end == END_EXIT0)
            _exit(0);
        if (end == END_EXIT3)
            exit(3);
        for (;;)
            pause();
    }
    close(ready[1]);
    char c;
    ssize_t n = read(ready[0], &c, 1);
    close(ready[0]);
    cr_assert_eq(n, 1, "the writer did not write (is %s writable?)", path);
    if (end == END_SIGKILL || end == END_THREAD_SIGKILL)
        kill(pid, SIGKILL);
    else if (end == END_SIGTERM)
        kill(pid, SIGTERM);
    return bus_wait_child(pid, BUS_WAIT_MS);
}

/* agents/AGENT/errors has a line holding text. */
static bool agent_logged(const char *agent, const char *text)
{
    char *log = bus_read_ok(AT("agents/%s/errors", agent), NULL);
    bool found = strstr(log, text) != NULL;
    free(log);
    return found;
}

/* ---- outbox/B ------------------------------------------------------------ */

static void killed_outbox_writer_sends_nothing(enum end end, int sig)
{
    bus_agents(&bus, "alice", "bob", NULL);
    int status = writer_ends(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC,
                             "half a mess", end);
    cr_assert_eq(status, 128 + sig, "the writer ended with %d, want %d", status, 128 + sig);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0,
                 "a writer killed by signal %d delivered its prefix", sig);
    cr_assert_eq(bus_count(AT("agents/alice/outbox")), 0, "the outbox lists a message");
    char want[64];
    snprintf(want, sizeof want, "writer killed by signal %d; 11 bytes dropped", sig);
    cr_assert(agent_logged("alice", want), "agents/alice/errors does not say \"%s\"", want);
    char *errors = bus_read_ok(AT("errors"), NULL);
    cr_assert(strstr(errors, want), "errors does not say \"%s\"", want);
    free(errors);
    /* The reservation was freed: bob's inbox takes a whole message and counts 1. */
    json_t *ctl = bus_ctl("bob");
    cr_assert_eq(bus_int(ctl, "reserved"), 0, "the killed writer's slot is still reserved");
    json_decref(ctl);
    bus_send("alice", "bob", "whole");
    json_t *inbox = bus_inbox("bob");
    cr_assert_eq(json_array_size(inbox), 1);
    cr_assert_str_eq(bus_str(json_array_get(inbox, 0), "payload"), "whole");
    json_decref(inbox);
}

BUS_TEST(killed, an_outbox_writer_killed_by_sigkill_sends_nothing)
{
    killed_outbox_writer_sends_nothing(END_SIGKILL, SIGKILL);
}

BUS_TEST(killed, an_outbox_writer_killed_by_sigterm_sends_nothing)
{
    killed_outbox_writer_sends_nothing(END_SIGTERM, SIGTERM);
}

BUS_TEST(killed, a_multithreaded_outbox_writer_killed_sends_nothing)
{
    killed_outbox_writer_sends_nothing(END_THREAD_SIGKILL, SIGKILL);
}

static void exiting_outbox_writer_sends(enum end end, int code)
{
    bus_agents(&bus, "alice", "bob", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    int status = writer_ends(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC,
                             "all of it\n", end);
    cr_assert_eq(status, code, "the writer ended with %d, want %d", status, code);
    json_t *inbox = bus_inbox("bob");
    cr_assert_eq(json_array_size(inbox), 1, "a writer that exited %d without close sent %zu",
                 code, json_array_size(inbox));
    cr_assert_str_eq(bus_str(json_array_get(inbox, 0), "payload"), "all of it");
    json_decref(inbox);
    cr_assert_eq(bus_jsonl_count(AT("errors")), top, "the exit logged a refusal");
}

BUS_TEST(killed, an_outbox_writer_that_exits_0_without_close_sends)
{
    exiting_outbox_writer_sends(END_EXIT0, 0);
}

BUS_TEST(killed, an_outbox_writer_that_exits_3_without_close_sends)
{
    exiting_outbox_writer_sends(END_EXIT3, 3);
}

BUS_TEST(killed, an_outbox_writer_that_closes_sends_even_if_killed_later)
{
    /* The shell's way; then a killed process that wrote nothing changes nothing. */
    bus_agents(&bus, "alice", "bob", NULL);
    cr_assert_eq(bus_sh(&bus, NULL, "echo done > agents/alice/outbox/bob"), 0);
    int status = writer_ends(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, "",
                             END_SIGKILL);
    cr_assert_eq(status, 128 + SIGKILL);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1);
}

/* ---- metrics ------------------------------------------------------------- */

BUS_TEST(killed, a_killed_metrics_writer_leaves_no_partial_line)
{
    bus_agents(&bus, "alice", NULL);
    int status = writer_ends(AT("agents/alice/metrics"), O_WRONLY | O_APPEND,
                             "whole.line 1 ms\npart.line 12", END_SIGKILL);
    cr_assert_eq(status, 128 + SIGKILL);
    json_t *points = bus_jsonl(AT("agents/alice/metrics"));
    cr_assert_eq(json_array_size(points), 1, "%zu points stored, want the whole line only",
                 json_array_size(points));
    cr_assert_str_eq(bus_str(json_array_get(points, 0), "metric"), "whole.line");
    json_decref(points);
    cr_assert(agent_logged("alice", "writer killed by signal 9; 12 bytes dropped"),
              "agents/alice/errors does not say why the partial line was dropped");
}

BUS_TEST(killed, a_metrics_writer_that_exits_without_close_keeps_its_last_line)
{
    bus_agents(&bus, "alice", NULL);
    int status = writer_ends(AT("agents/alice/metrics"), O_WRONLY | O_APPEND, "last.line 3",
                             END_EXIT0);
    cr_assert_eq(status, 0);
    json_t *points = bus_jsonl(AT("agents/alice/metrics"));
    cr_assert_eq(json_array_size(points), 1, "the last line without newline was not stored");
    cr_assert_str_eq(bus_str(json_array_get(points, 0), "metric"), "last.line");
    json_decref(points);
}

/* ---- send ---------------------------------------------------------------- */

BUS_TEST(killed, a_killed_send_writer_drops_its_partial_record)
{
    bus_agents(&bus, "alice", "bob", NULL);
    int status = writer_ends(AT("agents/alice/send"), O_WRONLY | O_APPEND,
                             "{\"to\":\"bob\",\"payload\":1}\n{\"to\":\"bob\",\"payl",
                             END_SIGKILL);
    cr_assert_eq(status, 128 + SIGKILL);
    json_t *inbox = bus_inbox("bob");
    cr_assert_eq(json_array_size(inbox), 1, "want the whole record only, got %zu",
                 json_array_size(inbox));
    json_decref(inbox);
    cr_assert(agent_logged("alice", "writer killed by signal 9; "),
              "agents/alice/errors does not say the writer was killed");
}

/* ---- a killed process that only shared the file -------------------------- */

BUS_TEST(killed, a_killed_child_that_shared_the_file_leaves_its_parents_message)
{
    /* The writer forks a child that inherits the open file and is killed; the
     * writer, alive, then closes: its message is sent whole. */
    bus_agents(&bus, "alice", "bob", NULL);
    int ready[2];
    cr_assert(pipe2(ready, O_CLOEXEC) == 0);
    pid_t writer = fork();
    cr_assert(writer >= 0);
    if (writer == 0) {
        close(ready[0]);
        int fd = open(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, "parent's ", 9) != 9)
            _exit(2);
        pid_t child = fork();
        if (child == 0) {
            for (;;)
                pause();
        }
        if (child < 0 || kill(child, SIGKILL) < 0 || bus_wait_child(child, BUS_WAIT_MS) != 137)
            _exit(3);
        if (write(fd, "message", 7) != 7 || close(fd) < 0)
            _exit(4);
        _exit(0);
    }
    close(ready[1]);
    close(ready[0]);
    cr_assert_eq(bus_wait_child(writer, BUS_WAIT_MS), 0, "the writer failed");
    json_t *inbox = bus_inbox("bob");
    cr_assert_eq(json_array_size(inbox), 1, "bob has %zu messages, want 1",
                 json_array_size(inbox));
    cr_assert_str_eq(bus_str(json_array_get(inbox, 0), "payload"), "parent's message");
    json_decref(inbox);
}

/* ---- exec and fork: closes that are not the writer's ---------------------- */

BUS_TEST(killed, a_writer_that_execs_with_its_message_open_close_on_exec_sends_it)
{
    /* exec closes an O_CLOEXEC file while the kernel holds the exec lock that
     * /proc/PID/stat waits for: the server must answer that FLUSH without
     * waiting on it, and the bus must go on answering everyone. */
    bus_agents(&bus, "alice", "bob", NULL);
    pid_t writer = fork();
    cr_assert(writer >= 0);
    if (writer == 0) {
        int fd = open(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, "sent at exec", 12) != 12)
            _exit(2);
        execl("/bin/true", "true", (char *)NULL);
        _exit(3);
    }
    cr_assert_eq(bus_wait_child(writer, BUS_WAIT_MS), 0, "the writer did not exec and end");
    json_t *inbox = bus_inbox("bob");
    cr_assert_eq(json_array_size(inbox), 1, "bob has %zu messages, want 1",
                 json_array_size(inbox));
    cr_assert_str_eq(bus_str(json_array_get(inbox, 0), "payload"), "sent at exec");
    json_decref(inbox);
    bus_send("alice", "bob", "the bus still answers");
}

BUS_TEST(killed, a_child_that_closes_its_copy_does_not_send_the_writers_unfinished_message)
{
    /* The writer forks (subprocess, system()): the child's close of the inherited
     * file is not the writer's close. The writer then dies by a signal: nothing is
     * sent. */
    bus_agents(&bus, "alice", "bob", NULL);
    int status = 0;
    pid_t writer = fork();
    cr_assert(writer >= 0);
    if (writer == 0) {
        int fd = open(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT, 0644);
        if (fd < 0 || write(fd, "{\"half\":", 8) != 8)
            _exit(2);
        pid_t child = fork();
        if (child == 0) {
            close(fd);
            _exit(0);
        }
        if (child < 0 || bus_wait_child(child, BUS_WAIT_MS) != 0)
            _exit(3);
        kill(getpid(), SIGKILL);
        _exit(4);
    }
    status = bus_wait_child(writer, BUS_WAIT_MS);
    cr_assert_eq(status, 128 + SIGKILL, "the writer ended with %d", status);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 0, "the child's close sent the writer's half");
    cr_assert(agent_logged("alice", "writer killed by signal 9; 8 bytes dropped"),
              "agents/alice/errors does not say the writer's bytes were dropped");
}

BUS_TEST(killed, a_writer_that_forks_before_it_finishes_sends_one_whole_message)
{
    bus_agents(&bus, "alice", "bob", NULL);
    pid_t writer = fork();
    cr_assert(writer >= 0);
    if (writer == 0) {
        int fd = open(AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT, 0644);
        if (fd < 0 || write(fd, "one ", 4) != 4)
            _exit(2);
        pid_t child = fork();
        if (child == 0) {
            close(fd);
            _exit(0);
        }
        if (child < 0 || bus_wait_child(child, BUS_WAIT_MS) != 0)
            _exit(3);
        if (write(fd, "whole message", 13) != 13 || close(fd) < 0)
            _exit(4);
        _exit(0);
    }
    cr_assert_eq(bus_wait_child(writer, BUS_WAIT_MS), 0, "the writer failed");
    json_t *inbox = bus_inbox("bob");
    cr_assert_eq(json_array_size(inbox), 1, "bob has %zu messages, want 1",
                 json_array_size(inbox));
    cr_assert_str_eq(bus_str(json_array_get(inbox, 0), "payload"), "one whole message");
    json_decref(inbox);
}
