/*
 * test_concurrency.c — many processes sending at once (SPEC §3 sequences),
 * and a kill -9 of the server in the middle of it (SPEC §1: a crash loses
 * nothing that was acknowledged).
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SENDERS 8
#define PER_SENDER 200

#define CRASH_SENDERS 4
#define CRASH_PER_SENDER 500

static void start_capacity_5000(void)
{
    bus_start(&bus, "--inbox-capacity", "5000", NULL);
}

/*
 * Forks a process that sends count messages "s<i>-<n>" from agent s<i> to
 * sink, one open/write/close each, stopping at the first failure. When
 * record is not NULL, it appends n to that file after each close that
 * returned 0. Exits 0 when all were sent.
 */
static pid_t fork_sender(int i, int count, const char *record)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", AT("agents/s%d/outbox/sink", i));
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid != 0)
        return pid;
    int rec = -1;
    if (record) {
        rec = open(record, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (rec < 0)
            _exit(3);
    }
    for (int n = 0; n < count; n++) {
        char text[64];
        int len = snprintf(text, sizeof text, "s%d-%d\n", i, n);
        /* A crash test kills the server once a quarter is recorded: past it, the senders
         * pace themselves, so a fast machine cannot finish every send before the kill. */
        if (record && n >= count / 4)
            usleep(1000);
        if (bus_write_ex(path, O_WRONLY | O_CREAT | O_TRUNC, text, (size_t)len, NULL) != 0)
            _exit(1);
        if (rec >= 0) {
            char line[32];
            int l = snprintf(line, sizeof line, "%d\n", n);
            if (write(rec, line, (size_t)l) != l)
                _exit(4);
        }
    }
    _exit(0);
}

/* Parses "s<i>-<n>" into i and n. */
static bool parse_payload(const char *p, int *i, int *n)
{
    char tail;
    return p && sscanf(p, "s%d-%d%c", i, n, &tail) == 2;
}

/*
 * Every envelope in sink's inbox; per sender the payload numbers seen
 * (counts[i][n]) checking from, sequence = n + 1 and no foreign payload.
 */
static size_t collect(int senders, int per_sender, int counts[][CRASH_PER_SENDER])
{
    json_t *in = bus_inbox("sink");
    size_t total = json_array_size(in);
    for (size_t k = 0; k < total; k++) {
        json_t *env = json_array_get(in, k);
        const char *payload = json_string_value(json_object_get(env, "payload"));
        int i, n;
        cr_assert(parse_payload(payload, &i, &n) && i >= 0 && i < senders && n >= 0 &&
                      n < per_sender,
                  "a foreign payload in the inbox: %s", payload ? payload : "(not a string)");
        char from[16];
        snprintf(from, sizeof from, "s%d", i);
        cr_assert_str_eq(bus_str(env, "from"), from, "payload %s came from %s", payload,
                         bus_str(env, "from"));
        cr_assert_eq(bus_int(env, "sequence"), n + 1,
                     "payload %s has sequence %d, want %d (gap or reorder)", payload,
                     (int)bus_int(env, "sequence"), n + 1);
        counts[i][n]++;
    }
    json_decref(in);
    return total;
}

BUS_TEST_WITH(concurrency, eight_senders_into_one_inbox_deliver_every_message_in_sequence,
              start_capacity_5000)
{
    bus_agents(&bus, "sink", NULL);
    for (int i = 0; i < SENDERS; i++) {
        char name[8];
        snprintf(name, sizeof name, "s%d", i);
        bus_agents(&bus, name, NULL);
    }
    pid_t kids[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        kids[i] = fork_sender(i, PER_SENDER, NULL);
    for (int i = 0; i < SENDERS; i++) {
        int status = bus_wait_child(kids[i], 40000);
        cr_assert_eq(status, 0, "sender s%d ended with %d (1: a send failed)", i, status);
    }

    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "ls agents/sink/inbox | wc -l"), 0);
    cr_assert_eq(atoi(r.out), SENDERS * PER_SENDER, "ls counts %s files", r.out);
    bus_cmd_free(&r);

    static int counts[CRASH_SENDERS > SENDERS ? CRASH_SENDERS : SENDERS][CRASH_PER_SENDER];
    memset(counts, 0, sizeof counts);
    size_t total = collect(SENDERS, PER_SENDER, counts);
    cr_assert_eq(total, (size_t)SENDERS * PER_SENDER);
    for (int i = 0; i < SENDERS; i++)
        for (int n = 0; n < PER_SENDER; n++)
            cr_assert_eq(counts[i][n], 1, "s%d-%d was delivered %d times", i, n, counts[i][n]);
    json_t *ctl = bus_ctl("sink");
    cr_assert_eq(bus_int(ctl, "inbox_depth"), SENDERS * PER_SENDER);
    cr_assert_eq(bus_int(ctl, "delivered_total"), SENDERS * PER_SENDER);
    json_decref(ctl);
}

/* Lines in a file outside the mount (0 when missing). */
static int lines_in(const char *path)
{
    size_t len;
    char *text = bus_read(path, &len);
    int n = 0;
    for (size_t k = 0; text && k < len; k++)
        n += text[k] == '\n';
    free(text);
    return n;
}

BUS_TEST_WITH(crash, kill9_during_sends_loses_no_recorded_message, start_capacity_5000)
{
    bus_agents(&bus, "sink", NULL);
    char record[CRASH_SENDERS][PATH_MAX + 16];
    pid_t kids[CRASH_SENDERS];
    for (int i = 0; i < CRASH_SENDERS; i++) {
        char name[8];
        snprintf(name, sizeof name, "s%d", i);
        bus_agents(&bus, name, NULL);
        snprintf(record[i], sizeof record[i], "%s/sent-%d", bus.dir, i);
    }
    for (int i = 0; i < CRASH_SENDERS; i++)
        kids[i] = fork_sender(i, CRASH_PER_SENDER, record[i]);

    /* Kill once a good part has been sent, while the senders still run. */
    int recorded = 0;
    for (int spins = 0; spins < 20000; spins++) {
        recorded = 0;
        for (int i = 0; i < CRASH_SENDERS; i++)
            recorded += lines_in(record[i]);
        if (recorded >= CRASH_SENDERS * CRASH_PER_SENDER / 4)
            break;
        usleep(1000);
    }
    bus_kill9(&bus);
    for (int i = 0; i < CRASH_SENDERS; i++) {
        int status = bus_wait_child(kids[i], BUS_WAIT_MS);
        cr_assert(status == 0 || status == 1, "sender s%d ended with %d", i, status);
    }
    cr_assert(recorded > 0, "no message was sent before the kill");
    int after_kill = 0;
    for (int i = 0; i < CRASH_SENDERS; i++)
        after_kill += lines_in(record[i]);
    cr_assert(after_kill < CRASH_SENDERS * CRASH_PER_SENDER,
              "every send had finished before the kill: the test proved nothing");
    cr_log_info("kill -9 after %d recorded sends, %d when the senders stopped", recorded,
                after_kill);

    const char *args[] = {"--inbox-capacity", "5000", NULL};
    bus_launch(&bus, args);

    static int counts[CRASH_SENDERS][CRASH_PER_SENDER];
    memset(counts, 0, sizeof counts);
    collect(CRASH_SENDERS, CRASH_PER_SENDER, counts);
    for (int i = 0; i < CRASH_SENDERS; i++) {
        int sent = lines_in(record[i]);
        for (int n = 0; n < sent; n++)
            cr_assert_eq(counts[i][n], 1, "recorded message s%d-%d is present %d times", i, n,
                         counts[i][n]);
        /* Only the one in flight may be delivered without being recorded. */
        for (int n = sent; n < CRASH_PER_SENDER; n++)
            cr_assert(counts[i][n] == 0 || (n == sent && counts[i][n] == 1),
                      "s%d-%d is present %d times but s%d recorded only %d sends", i, n,
                      counts[i][n], i, sent);
    }

    /* Sequences go on without a gap after the crash. */
    cr_assert_eq(bus_sh(&bus, NULL, "echo after > agents/s0/outbox/sink"), 0);
    json_t *in = bus_inbox("sink");
    json_t *last = json_array_get(in, json_array_size(in) - 1);
    cr_assert_str_eq(bus_str(last, "payload"), "after");
    int delivered0 = 0;
    for (int n = 0; n < CRASH_PER_SENDER; n++)
        delivered0 += counts[0][n];
    cr_assert_eq(bus_int(last, "sequence"), delivered0 + 1, "sequence after the crash");
    json_decref(in);

    bus_terminate(&bus);
    char *argv[] = {(char *)bus_bin(), "--check", "--store", bus.store, NULL};
    struct bus_cmd r;
    int status = bus_exec(NULL, argv, BUS_WAIT_MS, &r);
    cr_assert_eq(status, 0, "busfs --check after the crash and a restart: %d: %s%s", status, r.out,
                 r.err);
    bus_cmd_free(&r);
}
