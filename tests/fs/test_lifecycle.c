/*
 * test_lifecycle.c — SPEC §1: starting, stopping, restarting, a second
 * server, a stale mount, --help, --version and --check.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The output of `busfs ARGS...` (stdout and stderr), and its status. */
static int run_busfs(struct bus_cmd *r, const char *a1, const char *a2, const char *a3,
                     const char *a4, const char *a5)
{
    char *argv[] = {(char *)bus_bin(), (char *)a1, (char *)a2, (char *)a3,
                    (char *)a4,        (char *)a5, NULL};
    return bus_exec(NULL, argv, BUS_WAIT_MS, r);
}

/* `busfs --help` exits 0 and mentions every option given (NULL-terminated). */
static void assert_help_mentions(const char *option, ...)
{
    struct bus_cmd r;
    int status = run_busfs(&r, "--help", NULL, NULL, NULL, NULL);
    cr_assert_eq(status, 0, "busfs --help exited %d: %s", status, r.err);
    cr_assert(r.out_len + r.err_len > 0, "busfs --help printed nothing");
    va_list ap;
    va_start(ap, option);
    for (const char *o = option; o; o = va_arg(ap, const char *))
        cr_assert(strstr(r.out, o) || strstr(r.err, o), "busfs --help does not mention %s", o);
    va_end(ap);
    bus_cmd_free(&r);
}

Test(lifecycle, help_lists_the_store_and_message_options, .timeout = BUS_TEST_TIMEOUT)
{
    assert_help_mentions("--store", "--inbox-capacity", "--max-message-size", "--store-max-bytes",
                         "--health-ttl", "--summary-window", "--metrics-retention",
                         "--alert-interval", "--log-level", "--check", "--version", "-o", NULL);
}

Test(lifecycle, version_prints_a_version_and_exits_zero, .timeout = BUS_TEST_TIMEOUT)
{
    struct bus_cmd r;
    int status = run_busfs(&r, "--version", NULL, NULL, NULL, NULL);
    cr_assert_eq(status, 0, "busfs --version exited %d: %s", status, r.err);
    cr_assert(strpbrk(r.out, "0123456789") || strpbrk(r.err, "0123456789"),
              "busfs --version printed no version number: [%s%s]", r.out, r.err);
    bus_cmd_free(&r);
}

BUS_TEST(lifecycle, mount_shows_readme_errors_and_an_empty_agents_dir)
{
    size_t n;
    char **top = bus_ls(bus.mnt, &n);
    cr_assert(top, "ls of the mount: %s", strerror(errno));
    const char *want[] = {"README", "agents", "errors"};
    for (size_t i = 0; i < 3; i++) {
        bool found = false;
        for (size_t j = 0; j < n; j++)
            found = found || strcmp(top[j], want[i]) == 0;
        cr_assert(found, "the mount root does not list %s", want[i]);
    }
    bus_ls_free(top, n);
    struct stat st;
    cr_assert(stat(AT("agents"), &st) == 0 && S_ISDIR(st.st_mode), "agents/ is not a directory");
    cr_assert_eq(bus_count(AT("agents")), 0, "a fresh store has agents");

    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "ls agents"), 0, "ls agents: %s", r.err);
    cr_assert_str_empty(r.out, "ls agents on a fresh store: %s", r.out);
    bus_cmd_free(&r);
}

BUS_TEST(lifecycle, sigterm_gives_eof_to_a_blocked_next_reader_and_exits_zero)
{
    bus_agents(&bus, "bob", NULL);
    struct bus_proc cat;
    bus_spawn(&bus, &cat, "exec cat agents/bob/next");
    cr_assert(bus_wait_in_syscall(cat.pid, SYS_read, -1, BUS_WAIT_MS),
              "cat agents/bob/next never blocked in read()");
    bus_sync(&bus);
    cr_assert(bus_proc_running(&cat), "cat of an empty next returned at once");

    bus_terminate(&bus); /* SIGTERM; exit 0 within 10 s; mount gone */

    char *out;
    int status = bus_proc_wait(&cat, BUS_WAIT_MS, &out);
    cr_assert_eq(status, 0, "the blocked cat ended with status %d (want 0: end-of-file)", status);
    cr_assert_str_empty(out, "the blocked cat printed something: %s", out);
    free(out);
}

BUS_TEST(lifecycle, restart_keeps_agents_pending_messages_and_sequences)
{
    bus_agents(&bus, "alice", "bob", "carol", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    bus_send("bob", "carol", "three");
    json_t *before = bus_inbox("bob");
    size_t n_before;
    char **names_before = bus_ls(AT("agents/bob/inbox"), &n_before);
    char last_id[128];
    json_t *carol = bus_inbox("carol");
    snprintf(last_id, sizeof last_id, "%s", bus_str(json_array_get(carol, 0), "msg_id"));
    json_decref(carol);

    bus_restart(&bus, NULL);

    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "ls agents"), 0, "ls agents: %s", r.err);
    cr_assert_str_eq(r.out, "alice\nbob\ncarol\n", "agents after restart");
    bus_cmd_free(&r);

    json_t *after = bus_inbox("bob");
    cr_assert(json_equal(before, after), "bob's inbox changed across the restart");
    size_t n_after;
    char **names_after = bus_ls(AT("agents/bob/inbox"), &n_after);
    cr_assert_eq(n_after, n_before);
    for (size_t i = 0; i < n_after; i++)
        cr_assert_str_eq(names_after[i], names_before[i], "inbox file names changed");
    cr_assert_eq(bus_count(AT("agents/carol/inbox")), 1);

    bus_send("alice", "bob", "four");
    json_t *now = bus_inbox("bob");
    cr_assert_eq(json_array_size(now), 3);
    json_t *latest = json_array_get(now, 2);
    cr_assert_str_eq(bus_str(latest, "payload"), "four");
    cr_assert_eq(bus_int(latest, "sequence"), 3, "sequence did not continue after restart");
    const char *id = bus_str(latest, "msg_id");
    /* The last 20 digits are the store-wide counter: it must keep growing. */
    cr_assert(strcmp(id + strlen(id) - 20, last_id + strlen(last_id) - 20) > 0,
              "msg_id counter went back after restart: %s after %s", id, last_id);
    cr_assert(strncmp(id + 20, last_id + 20, 8) == 0, "the store id changed: %s, %s", last_id, id);
    for (size_t i = 0; i < 2; i++)
        cr_assert_str_neq(id, bus_str(json_array_get(now, i), "msg_id"));
    bus_ls_free(names_before, n_before);
    bus_ls_free(names_after, n_after);
    json_decref(before);
    json_decref(after);
    json_decref(now);
}

BUS_TEST(lifecycle, second_server_on_the_same_store_exits_nonzero_naming_the_pid)
{
    char mnt2[PATH_MAX + 8];
    snprintf(mnt2, sizeof mnt2, "%s/mnt2", bus.dir);
    cr_assert(mkdir(mnt2, 0755) == 0);
    struct bus_cmd r;
    int status = run_busfs(&r, "-f", "--store", bus.store, mnt2, NULL);
    bool mounted = bus_is_mounted(mnt2);
    cr_assert(status > 0 && status < 128,
              "a second server on a store in use ended with status %d (want an exit >0)", status);
    cr_assert(!mounted, "the second server mounted");
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)bus.pid);
    cr_assert(strstr(r.err, pid) || strstr(r.out, pid), "the refusal does not name pid %s: [%s%s]",
              pid, r.out, r.err);
    bus_cmd_free(&r);
    /* The first server is unharmed. */
    bus_agents(&bus, "alice", NULL);
    cr_assert_eq(bus_count(AT("agents")), 1);
}

BUS_TEST(lifecycle, start_on_a_stale_mount_names_fusermount3_and_clear_stale_recovers)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "kept");
    bus_kill9_leave_stale(&bus);

    /* The root's attributes may be cached: ask for something uncached. */
    struct stat st;
    errno = 0;
    cr_assert(stat(AT("agents/never-looked-up"), &st) < 0 && errno == ENOTCONN,
              "a killed server's mount gives %s, not ENOTCONN", strerror(errno));
    struct bus_cmd r;
    char *ls[] = {"ls", bus.mnt, NULL};
    cr_assert_neq(bus_exec(NULL, ls, BUS_WAIT_MS, &r), 0, "ls of a stale mount succeeded");
    cr_assert(strstr(r.err, strerror(ENOTCONN)), "ls of a stale mount said: %s", r.err);
    bus_cmd_free(&r);

    int status = run_busfs(&r, "-f", "--store", bus.store, bus.mnt, NULL);
    cr_assert(status > 0 && status < 128,
              "busfs on a stale mount ended with status %d (want an exit >0)", status);
    cr_assert(strstr(r.err, "fusermount3 -u") || strstr(r.out, "fusermount3 -u"),
              "the message does not say `fusermount3 -u`: [%s%s]", r.out, r.err);
    bus_cmd_free(&r);

    const char *args[] = {"--clear-stale", NULL};
    bus_launch(&bus, args);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1, "the pending message did not survive kill -9");
    cr_assert_str_eq(bus_str(json_array_get(in, 0), "payload"), "kept");
    json_decref(in);
}

BUS_TEST(lifecycle, check_accepts_the_store_after_a_clean_stop)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    cr_assert_eq(bus_sh(&bus, NULL, "rm agents/bob/inbox/\"$(ls agents/bob/inbox | head -1)\""), 0);
    bus_terminate(&bus);
    struct bus_cmd r;
    int status = run_busfs(&r, "--check", "--store", bus.store, NULL, NULL);
    cr_assert_eq(status, 0, "busfs --check on a cleanly stopped store: status %d: %s%s", status,
                 r.out, r.err);
    bus_cmd_free(&r);
}

BUS_TEST(lifecycle, sigint_unmounts_and_exits_zero)
{
    bus_agents(&bus, "alice", NULL);
    bus_terminate_with(&bus, SIGINT); /* exit 0 within 10 s, mount gone */
}

/* nohup and `trap '' INT` start programs with the stop signals ignored, and an
 * ignored disposition survives exec: busfs must reset them (SPEC §11). */
static void setup_with_stop_signals_ignored(void)
{
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    bus_setup();
}

BUS_TEST_WITH(lifecycle, sigint_stops_cleanly_when_started_with_it_ignored,
              setup_with_stop_signals_ignored)
{
    bus_agents(&bus, "alice", NULL);
    bus_terminate_with(&bus, SIGINT);
}

BUS_TEST_WITH(lifecycle, sighup_stops_cleanly_when_started_with_it_ignored,
              setup_with_stop_signals_ignored)
{
    bus_agents(&bus, "alice", NULL);
    bus_terminate_with(&bus, SIGHUP);
}

/* bus_stop at the end sends SIGTERM, which must work too. */
BUS_TEST_WITH(lifecycle, sigterm_stops_cleanly_when_started_with_it_ignored,
              setup_with_stop_signals_ignored)
{
    bus_agents(&bus, "alice", NULL);
}

BUS_TEST(lifecycle, fusermount3_u_stops_the_server_cleanly_when_no_file_is_open)
{
    bus_agents(&bus, "alice", NULL);
    char *argv[] = {"fusermount3", "-u", bus.mnt, NULL};
    struct bus_cmd r;
    int status = bus_exec(NULL, argv, BUS_WAIT_MS, &r);
    cr_assert_eq(status, 0, "fusermount3 -u: status %d: %s", status, r.err);
    bus_cmd_free(&r);
    bus_await_exit(&bus, "fusermount3 -u");
}

BUS_TEST(lifecycle, fusermount3_u_is_refused_while_a_next_reader_waits)
{
    bus_agents(&bus, "bob", NULL);
    struct bus_proc cat;
    bus_spawn(&bus, &cat, "exec cat agents/bob/next");
    cr_assert(bus_wait_in_syscall(cat.pid, SYS_read, -1, BUS_WAIT_MS),
              "cat agents/bob/next never blocked in read()");
    bus_sync(&bus);
    char *argv[] = {"fusermount3", "-u", bus.mnt, NULL};
    struct bus_cmd r;
    int status = bus_exec(NULL, argv, BUS_WAIT_MS, &r);
    cr_assert(status > 0, "fusermount3 -u with a blocked reader: status %d", status);
    bus_cmd_free(&r);
    cr_assert(bus_is_mounted(bus.mnt), "the mount went away");
    cr_assert(bus_proc_running(&cat), "the blocked reader ended");
    cr_assert_eq(bus_count(AT("agents")), 1, "the server no longer answers");

    bus_terminate(&bus);
    char *out;
    status = bus_proc_wait(&cat, BUS_WAIT_MS, &out);
    cr_assert_eq(status, 0, "the reader ended with %d after SIGTERM", status);
    free(out);
}

BUS_TEST(lifecycle, restart_keeps_ctl_state_and_counters)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    cr_assert_eq(bus_sh(&bus, NULL,
                        "rm \"agents/bob/inbox/$(ls agents/bob/inbox | head -1)\" && "
                        "echo drain > agents/bob/ctl"),
                 0);
    json_t *before = bus_ctl("bob");
    cr_assert_str_eq(bus_str(before, "state"), "draining");
    bus_restart(&bus, NULL);
    json_t *after = bus_ctl("bob");
    char *b = json_dumps(before, JSON_SORT_KEYS), *a = json_dumps(after, JSON_SORT_KEYS);
    cr_assert_str_eq(a, b, "agents/bob/ctl changed across a restart");
    free(a);
    free(b);
    json_decref(before);
    json_decref(after);
    cr_assert_neq(bus_sh(&bus, NULL, "echo x > agents/alice/outbox/bob"), 0,
                  "bob accepts messages after a restart: the drain was lost");
}

BUS_TEST(lifecycle, restart_keeps_the_outbox_listing)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    json_t *before = bus_outbox("alice");
    cr_assert_eq(json_array_size(before), 2);
    bus_restart(&bus, NULL);
    json_t *after = bus_outbox("alice");
    cr_assert(json_equal(before, after), "alice's outbox changed across a restart (%zu files)",
              json_array_size(after));
    json_decref(before);
    json_decref(after);
}

/* The server's log: one line per refused operation at the default level, in the
 * foreground on stderr (the fixture's server.log); none at --log-level warning. */
BUS_TEST(lifecycle, each_refusal_is_one_line_of_the_server_log)
{
    bus_agents(&bus, "alice", NULL);
    cr_assert_eq(bus_write(AT("agents/alice/health"), "sideways\n"), EINVAL);
    bus_sync(&bus);
    char *log = bus_read_ok(bus.log, NULL);
    cr_assert(strstr(log, "busfs: write agents/alice/health by uid 0: EINVAL: unknown health "
                          "status 'sideways'"),
              "server.log: %s", log);
    free(log);
}

static void quiet(void)
{
    bus_require_fuse();
    bus_start(&bus, "--log-level", "warning", NULL);
}

BUS_TEST_WITH(lifecycle, log_level_warning_leaves_refusals_out, quiet)
{
    bus_agents(&bus, "alice", NULL);
    cr_assert_eq(bus_write(AT("agents/alice/health"), "sideways\n"), EINVAL);
    bus_sync(&bus);
    char *log = bus_read_ok(bus.log, NULL);
    cr_assert_null(strstr(log, "sideways"), "server.log: %s", log);
    free(log);
    struct bus_cmd r;
    cr_assert_neq(bus_exec(NULL, (char *[]){(char *)bus_bin(), "--log-level", "loud", "x", NULL},
                           BUS_WAIT_MS, &r),
                  0);
    cr_assert(strstr(r.err, "--log-level"), "%s", r.err);
    bus_cmd_free(&r);
}

/* A store others could write, a store that is a symlink, or one owned by another
 * user: busfs says so in one line and exits 1, mounting nothing. */
Test(lifecycle, a_store_others_could_tamper_with_is_refused_in_one_line,
     .init = bus_setup, .fini = bus_teardown, .timeout = BUS_TEST_TIMEOUT)
{
    char store[PATH_MAX + 16], link[PATH_MAX + 16], mnt2[PATH_MAX + 16];
    snprintf(store, sizeof store, "%s/open-store", bus.dir);
    snprintf(link, sizeof link, "%s/link-store", bus.dir);
    snprintf(mnt2, sizeof mnt2, "%s/mnt2", bus.dir);
    cr_assert(mkdir(store, 0700) == 0 && mkdir(mnt2, 0755) == 0);
    cr_assert(chmod(store, 0777) == 0 && symlink(bus.store, link) == 0);
    struct {
        const char *store, *says;
        uid_t owner;
    } cases[] = {
        {store, "writable by everyone", 0},
        {link, "symbolic link", 0},
        {store, "belongs to uid 4242", 4242},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].owner) {
            cr_assert(chmod(store, 0700) == 0 && chown(store, cases[i].owner, 0) == 0);
        }
        struct bus_cmd r;
        int status = run_busfs(&r, "-f", "--store", cases[i].store, mnt2, NULL);
        cr_assert_eq(status, 1, "%s: status %d", cases[i].says, status);
        cr_assert(!bus_is_mounted(mnt2), "%s: mounted", cases[i].says);
        cr_assert(strstr(r.err, cases[i].says), "%s: said [%s]", cases[i].says, r.err);
        cr_assert(strchr(r.err, '\n') == r.err + strlen(r.err) - 1, "one line: [%s]", r.err);
        bus_cmd_free(&r);
    }
    bus_stop(&bus);
}

/* libfuse changes to / once mounted: a relative mountpoint and store must still be
 * found at the clean stop (`make run` mounts ./bus). */
Test(lifecycle, a_relative_mountpoint_and_store_are_unmounted_at_sigterm,
     .init = bus_setup, .fini = bus_teardown, .timeout = BUS_TEST_TIMEOUT)
{
    char mnt2[PATH_MAX + 16];
    snprintf(mnt2, sizeof mnt2, "%s/rel", bus.dir);
    cr_assert(mkdir(mnt2, 0755) == 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (chdir(bus.dir) < 0)
            _exit(126);
        int log = open("rel.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (log < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
            _exit(126);
        bus_close_fds_from(3);
        execl(bus_bin(), "busfs", "-f", "--store", "rel-store", "rel", (char *)NULL);
        _exit(127);
    }
    bool up = false;
    for (int i = 0; i < 200 && !up; i++) {
        up = bus_is_mounted(mnt2);
        if (!up)
            bus_pause_ms(25);
    }
    cr_assert(up, "busfs never mounted rel");
    char agent[PATH_MAX + 64];
    snprintf(agent, sizeof agent, "%s/agents/alice", mnt2);
    cr_assert_eq(mkdir(agent, 0755), 0);
    snprintf(agent, sizeof agent, "%s/agents/alice/metrics", mnt2);
    cr_assert_eq(bus_append(agent, "x 1\n"), 0);
    kill(pid, SIGTERM);
    int status = bus_wait_child(pid, BUS_WAIT_MS);
    cr_assert_eq(status, 0, "busfs exited %d", status);
    cr_assert(!bus_is_mounted(mnt2), "the relative mount outlived the server");
    char store[PATH_MAX + 32];
    snprintf(store, sizeof store, "%s/rel-store/journal", bus.dir);
    cr_assert_eq(access(store, F_OK), 0, "the store was made where it was asked for");
    bus_stop(&bus);
}
