/*
 * test_agents.c — SPEC §2 (agents, the tree, README, errors, honest modes
 * and sizes) and the rmdir rules of §7/§8.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

BUS_TEST(agents, mkdir_registers_an_agent_with_its_files)
{
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "mkdir agents/alice && ls agents"), 0, "mkdir: %s", r.err);
    cr_assert_str_eq(r.out, "alice\n");
    bus_cmd_free(&r);

    static const char *const files[] = {"inbox", "outbox", "send", "next", "ctl", "errors"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        struct stat st;
        cr_assert(stat(AT("agents/alice/%s", files[i]), &st) == 0, "agents/alice/%s: %s", files[i],
                  strerror(errno));
        bool dir = i < 2;
        cr_assert(dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode), "agents/alice/%s is not a %s",
                  files[i], dir ? "directory" : "regular file");
    }
    cr_assert_eq(bus_count(AT("agents/alice/inbox")), 0);
    cr_assert_eq(bus_count(AT("agents/alice/outbox")), 0);
}

BUS_TEST(agents, rmdir_removes_an_agent_without_messages)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "rmdir agents/alice && ls agents"), 0, "rmdir: %s", r.err);
    cr_assert_str_eq(r.out, "bob\n");
    bus_cmd_free(&r);
    struct stat st;
    errno = 0;
    cr_assert(stat(AT("agents/alice"), &st) < 0 && errno == ENOENT,
              "a removed agent still stats: %s", strerror(errno));
    /* The name can be registered again. */
    cr_assert_eq(bus_sh(&bus, NULL, "mkdir agents/alice"), 0);
    cr_assert_eq(bus_count(AT("agents")), 2);
}

BUS_TEST(agents, mkdir_of_an_existing_agent_fails_with_eexist)
{
    bus_agents(&bus, "alice", NULL);
    errno = 0;
    cr_assert(mkdir(AT("agents/alice"), 0755) < 0 && errno == EEXIST,
              "second mkdir gave %s, want EEXIST", strerror(errno));
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "mkdir agents/alice"), 0, "shell mkdir succeeded twice");
    cr_assert(strstr(r.err, strerror(EEXIST)), "mkdir said: %s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_count(AT("agents")), 1);
}

BUS_TEST(agents, mkdir_rejects_bad_names_with_einval_and_logs_a_reason)
{
    char long_name[66];
    memset(long_name, 'a', 65);
    long_name[65] = '\0';
    const char *bad[] = {"bad name", "a:b",   long_name, "1abc",       ".hidden",
                         "all",      "-dash", "_under",  "caf\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t before = bus_jsonl_count(AT("errors"));
        errno = 0;
        cr_assert(mkdir(AT("agents/%s", bad[i]), 0755) < 0 && errno == EINVAL,
                  "mkdir agents/'%s' gave %s, want EINVAL", bad[i], strerror(errno));
        bus_assert_logged(AT("errors"), before, bad[i]);

        struct bus_cmd r;
        cr_assert_neq(bus_sh(&bus, &r, "mkdir 'agents/%s'", bad[i]), 0,
                      "shell mkdir of '%s' succeeded", bad[i]);
        cr_assert(strstr(r.err, strerror(EINVAL)), "mkdir '%s' said: %s", bad[i], r.err);
        bus_cmd_free(&r);
    }
    cr_assert_eq(bus_count(AT("agents")), 0, "a bad name was registered");
}

BUS_TEST(agents, mkdir_accepts_names_of_one_to_64_characters)
{
    char longest[65];
    longest[0] = 'Z';
    for (size_t i = 1; i < 64; i++)
        longest[i] = "a1._-"[i % 5];
    longest[64] = '\0';
    const char *good[] = {"a", "B", longest, "x.y-z_1", "Agent-7"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        cr_assert(mkdir(AT("agents/%s", good[i]), 0755) == 0, "mkdir agents/%s: %s", good[i],
                  strerror(errno));
    cr_assert_eq(bus_count(AT("agents")), 5);
    struct stat st;
    cr_assert(stat(AT("agents/%s/inbox", longest), &st) == 0 && S_ISDIR(st.st_mode));
}

BUS_TEST(agents, readme_is_a_readable_usage_guide)
{
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat README"), 0, "cat README: %s", r.err);
    cr_assert(r.out_len > 100, "README is nearly empty: [%s]", r.out);
    cr_assert(strstr(r.out, "outbox") && strstr(r.out, "next") && strstr(r.out, "mkdir"),
              "README does not explain mkdir, outbox and next");
    bus_cmd_free(&r);
}

/* `ls -lnd PATH`: its mode string and size. */
static void ls_l(const char *rel, char mode[16], long long *size)
{
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "ls -lnd '%s'", rel), 0, "ls -lnd %s: %s", rel, r.err);
    cr_assert(sscanf(r.out, "%15s %*s %*s %*s %lld", mode, size) == 2, "ls -lnd %s: [%s]", rel,
              r.out);
    bus_cmd_free(&r);
}

/* Bytes that `cat PATH` prints. */
static long long cat_bytes(const char *rel)
{
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "cat '%s'", rel), 0, "cat %s: %s", rel, r.err);
    long long n = (long long)r.out_len;
    bus_cmd_free(&r);
    return n;
}

/* The first file in a directory (by name). */
static char *first_in(const char *rel)
{
    size_t n;
    char **names = bus_ls(AT("%s", rel), &n);
    cr_assert(names && n > 0, "%s is empty", rel);
    char *first = strdup(names[0]);
    bus_ls_free(names, n);
    return first;
}

/* Produces content in every kind of file: messages and error lines. */
static void populate(void)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "hello bob");
    bus_send("alice", "bob", "{\"n\":2}");
    errno = 0;
    cr_assert(mkdir(AT("agents/bad name"), 0755) < 0);
    cr_assert_neq(bus_write(AT("agents/alice/outbox/nobody"), "x"), 0);
}

BUS_TEST(agents, ls_l_shows_honest_modes)
{
    populate();
    char *in = first_in("agents/bob/inbox");
    char *out = first_in("agents/alice/outbox");
    char mode[16];
    long long size;
    struct {
        const char *path;
        const char *want; /* per position: '.' any, else exact */
    } cases[] = {
        {"README", "-r-..-..-."},
        {"errors", "-r-..-..-."},
        {"agents", "d........."},
        {"agents/alice", "d........."},
        {"agents/alice/inbox", "d........."},
        {"agents/alice/outbox", "d........."},
        {"agents/alice/errors", "-r-..-..-."},
        {"agents/alice/ctl", "-rw......."},
        {"agents/alice/send", "-.w......."},
        {"agents/alice/next", "-r-..-..-."},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ls_l(cases[i].path, mode, &size);
        for (size_t k = 0; k < 10; k++)
            cr_assert(cases[i].want[k] == '.' || mode[k] == cases[i].want[k],
                      "ls -l %s shows %s, want %s", cases[i].path, mode, cases[i].want);
    }
    char rel[512];
    snprintf(rel, sizeof rel, "agents/bob/inbox/%s", in);
    ls_l(rel, mode, &size);
    cr_assert_str_eq(mode, "-rw-------", "an inbox file is %s, want -rw-------", mode);
    snprintf(rel, sizeof rel, "agents/alice/outbox/%s", out);
    ls_l(rel, mode, &size);
    cr_assert(mode[0] == '-' && !strchr(mode, 'w') && mode[1] == 'r',
              "an outbox file is %s, want read-only", mode);
    free(in);
    free(out);
}

BUS_TEST(agents, ls_l_sizes_match_the_bytes_cat_prints)
{
    populate();
    char *in = first_in("agents/bob/inbox");
    char *out = first_in("agents/alice/outbox");
    char inbox_file[512], outbox_file[512];
    snprintf(inbox_file, sizeof inbox_file, "agents/bob/inbox/%s", in);
    snprintf(outbox_file, sizeof outbox_file, "agents/alice/outbox/%s", out);
    const char *files[] = {"README",           "errors",   "agents/alice/errors",
                           "agents/alice/ctl", inbox_file, outbox_file};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char mode[16];
        long long size;
        ls_l(files[i], mode, &size);
        long long bytes = cat_bytes(files[i]);
        cr_assert(bytes > 0, "cat %s printed nothing", files[i]);
        cr_assert_eq(size, bytes, "ls -l says %s has %lld bytes, cat prints %lld", files[i], size,
                     bytes);
    }
    free(in);
    free(out);
}

BUS_TEST(agents, errors_files_are_jsonl_with_reasons)
{
    bus_agents(&bus, "alice", NULL);
    size_t top = bus_jsonl_count(AT("errors"));
    size_t mine = bus_jsonl_count(AT("agents/alice/errors"));
    cr_assert_eq(bus_write(AT("agents/alice/outbox/nobody"), "x"), ENOENT);
    bus_assert_logged(AT("errors"), top, "send to an unknown agent");
    bus_assert_logged(AT("agents/alice/errors"), mine, "send to an unknown agent");
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "tail -n 1 errors"), 0);
    cr_assert(r.out_len > 2 && r.out[0] == '{', "tail -n 1 errors: [%s]", r.out);
    bus_cmd_free(&r);
}

BUS_TEST(agents, rmdir_of_an_agent_with_a_pending_message_fails_with_enotempty)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "pending");
    size_t before = bus_jsonl_count(AT("errors"));
    size_t bob_before = bus_jsonl_count(AT("agents/bob/errors"));
    errno = 0;
    cr_assert(rmdir(AT("agents/bob")) < 0 && errno == ENOTEMPTY,
              "rmdir of bob with a pending message gave %s", strerror(errno));
    bus_assert_logged(AT("errors"), before, "rmdir ENOTEMPTY");
    bus_assert_logged(AT("agents/bob/errors"), bob_before, "rmdir ENOTEMPTY");

    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "rmdir agents/bob"), 0);
    cr_assert(strstr(r.err, strerror(ENOTEMPTY)), "rmdir said: %s", r.err);
    bus_cmd_free(&r);
    cr_assert_eq(bus_count(AT("agents/bob/inbox")), 1, "the pending message is gone");

    cr_assert_eq(bus_sh(&bus, NULL, "rm agents/bob/inbox/* && rmdir agents/bob"), 0,
                 "rmdir after consuming the message failed");
    cr_assert_eq(bus_count(AT("agents")), 1);
}

BUS_TEST(agents, rmdir_while_a_message_to_the_agent_is_being_written_fails_with_ebusy)
{
    bus_agents(&bus, "alice", "bob", NULL);
    struct bus_writer w;
    cr_assert_eq(bus_writer_open(&w, AT("agents/alice/outbox/bob"), O_WRONLY | O_CREAT | O_TRUNC),
                 0);
    cr_assert_eq(bus_writer_write(&w, "half ", 5), 0);
    size_t before = bus_jsonl_count(AT("errors"));
    errno = 0;
    cr_assert(rmdir(AT("agents/bob")) < 0 && errno == EBUSY,
              "rmdir during a write to bob gave %s, want EBUSY", strerror(errno));
    bus_assert_logged(AT("errors"), before, "rmdir EBUSY");
    struct bus_cmd r;
    cr_assert_neq(bus_sh(&bus, &r, "rmdir agents/bob"), 0);
    cr_assert(strstr(r.err, strerror(EBUSY)), "rmdir said: %s", r.err);
    bus_cmd_free(&r);

    cr_assert_eq(bus_writer_write(&w, "written\n", 8), 0);
    cr_assert_eq(bus_writer_close(&w), 0);
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1, "the message being written was lost");
    cr_assert_str_eq(bus_str(json_array_get(in, 0), "payload"), "half written");
    json_decref(in);
    errno = 0;
    cr_assert(rmdir(AT("agents/bob")) < 0 && errno == ENOTEMPTY);
}

BUS_TEST(agents, a_reregistered_agent_continues_its_sequences)
{
    bus_agents(&bus, "alice", "bob", NULL);
    bus_send("alice", "bob", "one");
    bus_send("alice", "bob", "two");
    cr_assert_eq(
        bus_sh(&bus, NULL, "rm agents/bob/inbox/* && rmdir agents/bob && mkdir agents/bob"), 0);
    bus_send("alice", "bob", "three");
    json_t *in = bus_inbox("bob");
    cr_assert_eq(json_array_size(in), 1);
    cr_assert_eq(bus_int(json_array_get(in, 0), "sequence"), 3,
                 "sequence restarted after re-registration");
    json_decref(in);
}

BUS_TEST(agents, an_agents_errors_keep_the_last_100)
{
    bus_agents(&bus, "alice", NULL);
    for (int i = 0; i < 105; i++)
        cr_assert_eq(bus_write(AT("agents/alice/outbox/nobody%d", i), "x"), ENOENT);
    cr_assert_eq(bus_jsonl_count(AT("agents/alice/errors")), 100,
                 "agents/alice/errors does not hold the last 100 rejections");
    cr_assert(bus_jsonl_count(AT("errors")) >= 100, "the bus errors log lost recent lines");
}

/* Reads from a background command until it has printed n lines (10 s). */
static int read_lines(struct bus_proc *p, int n, char *buf, size_t size)
{
    size_t len = 0;
    int lines = 0;
    for (int waited = 0; lines < n && waited < BUS_WAIT_MS; waited += 50) {
        struct pollfd pf = {p->out_fd, POLLIN, 0};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        ssize_t got = read(p->out_fd, buf + len, size - len - 1);
        if (got <= 0)
            break;
        for (ssize_t k = 0; k < got; k++)
            lines += buf[len + (size_t)k] == '\n';
        len += (size_t)got;
    }
    buf[len] = '\0';
    return lines;
}

BUS_TEST(agents, tail_f_follows_the_errors_log)
{
    bus_agents(&bus, "alice", NULL);
    struct bus_proc tail;
    bus_spawn(&bus, &tail, "exec tail -n +1 -f errors");
    char buf[8192];
    cr_assert_eq(bus_write(AT("agents/alice/outbox/nobody"), "x"), ENOENT);
    cr_assert_eq(read_lines(&tail, 1, buf, sizeof buf), 1, "tail -f errors printed: [%s]", buf);
    cr_assert_eq(bus_write(AT("agents/alice/outbox/nobody-else"), "x"), ENOENT);
    cr_assert_eq(read_lines(&tail, 1, buf, sizeof buf), 1,
                 "tail -f errors did not follow a new line: [%s]", buf);
    kill(tail.pid, SIGTERM);
    bus_proc_wait(&tail, BUS_WAIT_MS, NULL);
}
