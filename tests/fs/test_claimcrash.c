/*
 * test_claimcrash.c — SPEC §10 when the SERVER dies: workers claim and ack while
 * busfs is killed -9 and started again, three times; the producer sends its tasks
 * with idempotency keys and simply sends a batch again when a write fails (it cannot
 * know whether that write was stored). In the end every task was delivered once
 * (delivered_total), consumed once (acked_total), nothing is left pending, leased or
 * dead, and no lease token was ever handed out twice, restarts included.
 *
 * Workers and producer are forked children (no Criterion calls); each writes what it
 * saw to its own file: "C task token" per claim, "A task token" per ack that
 * returned success. An ack whose reply died with the server may have been stored
 * without an "A" line: the server's counters, not the lines, say what was consumed.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CC_TASKS 2000
#define CC_BATCH 100
#define CC_WORKERS 4
#define CC_KILLS 3
#define CC_WORK_US 8000   /* 2000 tasks / 4 workers: ~4 s of work, spanning the kills */

struct cc_paths {
    char send[PATH_MAX], claim[PATH_MAX], agent[PATH_MAX], ctl[PATH_MAX];
    char results[CC_WORKERS][PATH_MAX + 32];
};

/* Appends "KIND task token" to fd (a results file): one write. */
static void note(int fd, char kind, long task, unsigned long long token)
{
    char line[96];
    int n = snprintf(line, sizeof line, "%c %ld %llu\n", kind, task, token);
    if (write(fd, line, (size_t)n) != n)
        _exit(5);
}

/* The producer: every batch until it was written once with success. */
static void producer(const struct cc_paths *p)
{
    static char batch[CC_BATCH * 96];
    for (int first = 0; first < CC_TASKS; first += CC_BATCH) {
        size_t len = 0;
        for (int t = first; t < first + CC_BATCH; t++)
            len += (size_t)snprintf(batch + len, sizeof batch - len,
                                    "{\"to\":\"pool\",\"payload\":{\"task\":%d},"
                                    "\"idempotency_key\":\"task-%d\"}\n", t, t);
        for (;;) {
            int fd = open(p->send, O_WRONLY | O_APPEND);
            ssize_t w = fd >= 0 ? write(fd, batch, len) : -1;
            int closed = fd >= 0 ? close(fd) : -1;
            if (w == (ssize_t)len && closed == 0)
                break;
            usleep(20 * 1000); /* the server is down: send the same batch again */
        }
        usleep(100 * 1000); /* about 2 s of sending: the first kill comes meanwhile */
    }
    _exit(0);
}

/* A worker: claim, "work", ack by unlink; ends at the end-of-file of a drained pool. */
static void worker(const struct cc_paths *p, int i)
{
    int out = open(p->results[i], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0)
        _exit(2);
    char buf[8192], file[PATH_MAX + 256];
    for (;;) {
        int fd = open(p->claim, O_RDONLY);
        if (fd < 0) {
            usleep(20 * 1000);
            continue;
        }
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n < 0) {
            usleep(20 * 1000); /* ENOTCONN: the server died under the read */
            continue;
        }
        if (n == 0)
            _exit(0); /* drained, nothing pending or leased */
        buf[n] = '\0';
        const char *t = strstr(buf, "\"task\":"), *k = strstr(buf, "\"token\":");
        const char *f = strstr(buf, "\"file\":\"");
        if (!t || !k || !f)
            _exit(3);
        long task = strtol(t + 7, NULL, 10);
        unsigned long long token = strtoull(k + 8, NULL, 10);
        const char *end = strchr(f + 8, '"');
        if (!end)
            _exit(4);
        snprintf(file, sizeof file, "%s/%.*s", p->agent, (int)(end - f - 8), f + 8);
        note(out, 'C', task, token);
        usleep(CC_WORK_US);
        if (unlink(file) == 0)
            note(out, 'A', task, token);
    }
}

/* Lines in the workers' results files so far. */
static long claims_so_far(const struct cc_paths *p)
{
    long n = 0;
    for (int i = 0; i < CC_WORKERS; i++) {
        size_t len = 0;
        char *text = bus_read(p->results[i], &len);
        for (size_t k = 0; text && k < len; k++)
            n += text[k] == 'C';
        free(text);
    }
    return n;
}

static void start_short_lease(void)
{
    bus_require_fuse();
    bus_start(&bus, "--lease", "2", "--max-deliver", "1000", "--inbox-capacity", "5000", NULL);
}

BUS_TEST_WITH(workers, claims_and_acks_survive_kill_9_of_the_server, start_short_lease)
{
    bus_agents(&bus, "producer", "pool", NULL);
    static struct cc_paths p;
    snprintf(p.send, sizeof p.send, "%s", AT("agents/producer/send"));
    snprintf(p.claim, sizeof p.claim, "%s", AT("agents/pool/claim"));
    snprintf(p.agent, sizeof p.agent, "%s", AT("agents/pool"));
    snprintf(p.ctl, sizeof p.ctl, "%s", AT("agents/pool/ctl"));
    for (int i = 0; i < CC_WORKERS; i++)
        snprintf(p.results[i], sizeof p.results[i], "%s/claims-%d", bus.dir, i);
    fflush(NULL);
    pid_t prod = fork();
    cr_assert_geq(prod, 0);
    if (prod == 0)
        producer(&p);
    pid_t kids[CC_WORKERS];
    for (int i = 0; i < CC_WORKERS; i++) {
        kids[i] = fork();
        cr_assert_geq(kids[i], 0);
        if (kids[i] == 0)
            worker(&p, i);
    }
    const char *args[] = {"--lease", "2", "--max-deliver", "1000", "--inbox-capacity", "5000",
                          NULL};
    long claims_at_last_kill = 0;
    for (int k = 0; k < CC_KILLS; k++) {
        bus_pause_ms(1000);
        claims_at_last_kill = claims_so_far(&p);
        bus_kill9(&bus);
        bus_pause_ms(200);
        bus_launch(&bus, args);
    }
    cr_assert_eq(bus_wait_child(prod, 60000), 0, "the producer did not finish");
    /* Everything sent: drain, and the workers end once nothing is pending or leased
     * (leases a killed server held come back when they expire). */
    int drained = -1;
    for (int tries = 0; tries < 100 && drained != 0; tries++) {
        drained = bus_write(p.ctl, "drain\n");
        if (drained != 0)
            bus_pause_ms(50);
    }
    cr_assert_eq(drained, 0, "drain: %s", strerror(drained));
    for (int i = 0; i < CC_WORKERS; i++)
        cr_assert_eq(bus_wait_child(kids[i], 60000), 0, "worker %d did not end cleanly", i);

    json_t *ctl = bus_ctl("pool");
    cr_assert_eq(bus_int(ctl, "delivered_total"), CC_TASKS, "delivered %lld, sent %d",
                 (long long)bus_int(ctl, "delivered_total"), CC_TASKS);
    cr_assert_eq(bus_int(ctl, "acked_total"), CC_TASKS, "consumed %lld of %d",
                 (long long)bus_int(ctl, "acked_total"), CC_TASKS);
    cr_assert_eq(bus_int(ctl, "inbox_depth"), 0);
    cr_assert_eq(bus_int(ctl, "leased"), 0);
    cr_assert_eq(bus_int(ctl, "dead"), 0);
    json_decref(ctl);

    /* No token twice; no task acked twice with success. */
    static unsigned char acked[CC_TASKS];
    size_t cap = 1 << 16, ntok = 0;
    unsigned long long *tokens = malloc(cap * sizeof *tokens);
    cr_assert_not_null(tokens);
    for (int i = 0; i < CC_WORKERS; i++) {
        FILE *f = fopen(p.results[i], "r");
        cr_assert_not_null(f, "%s", p.results[i]);
        char kind;
        long task;
        unsigned long long token;
        while (fscanf(f, " %c %ld %llu", &kind, &task, &token) == 3) {
            cr_assert(task >= 0 && task < CC_TASKS, "task %ld", task);
            if (kind == 'C') {
                cr_assert_lt(ntok, cap);
                tokens[ntok++] = token;
            } else {
                cr_assert(!acked[task], "task %ld acked twice with success", task);
                acked[task] = 1;
            }
        }
        fclose(f);
    }
    for (size_t i = 0; i < ntok; i++)
        for (size_t j = i + 1; j < ntok; j++)
            cr_assert_neq(tokens[i], tokens[j], "token %llu was handed out twice", tokens[i]);
    cr_assert_geq(ntok, (size_t)CC_TASKS, "%zu claims for %d tasks", ntok, CC_TASKS);
    cr_assert_gt(claims_at_last_kill, 0, "nothing was claimed before the kills");
    cr_assert_lt(claims_at_last_kill, (long)ntok, "every claim came before the last kill: "
                 "the kills proved nothing");
    free(tokens);
}
