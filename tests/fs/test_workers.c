/*
 * test_workers.c — SPEC §10 under fire: a pool of worker processes claims
 * tasks from one agent (--lease 2) while the test SIGKILLs two random
 * workers every ~2 s and starts replacements; a producer sends the tasks
 * through `send`, many records per write. Every task must be acked exactly
 * once, none lost, and no message held by two workers at once.
 *
 * A worker is the loop a user would write: open agents/pool/claim, one
 * read(), close; parse the lease; append "C ..." to its own results file
 * (O_APPEND, no fsync); ack with unlink(2) of the inflight file or with
 * `ack MSG_ID TOKEN` written to ctl (alternating by token); append "A ..."
 * for a successful ack or "X ... ERRNO" when the ack was refused (ESTALE /
 * ENOENT: the lease was lost). Results lines:
 *
 *   C task token pid delivery claimed_us deadline_us msg_id
 *   A task token pid
 *   X task token pid errno
 *   E what errno             (anything unexpected; fails the test)
 *
 * claimed_us is the wall clock (CLOCK_REALTIME, µs) after read() returned,
 * deadline_us the lease's deadline: a later claim of the same message must
 * come after the earlier lease's deadline (no nak, no extend here), which is
 * "never held by two workers at once" measured, not assumed.
 *
 * Each task costs a worker WORK_US of "work" between claim and ack, so the
 * run spans several kill rounds and killed workers die holding leases; the
 * first delivery of every STALL_EVERY-th task stalls for STALL_US, longer
 * than the lease, so its worker acks late, after another worker may have
 * claimed it: that ack must be refused (ESTALE / ENOENT).
 *
 * Speed (2 cores, 8 workers): with no work at all the 10,000 tasks are
 * claimed and acked in about 1.7 s (open/read/close of claim, then an ack,
 * per task), so the full count fits easily; WORK_US stretches the run to
 * ~20 s so that about ten kill rounds happen.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TASKS 10000
#define WORKERS 8
#define BATCH 500          /* send records per write() */
#define WORK_US 12000      /* a task's "work": 10000 tasks take 8 workers ~15 s */
#define STALL_EVERY 997    /* tasks 0, 997, ... stall on their first delivery */
#define STALL_US 5000000   /* for 5 s: 2.5 times the lease, so they lose it */
#define KILL_EVERY_MS 2000 /* two workers SIGKILLed this often */
#define RUN_LIMIT_MS 100000 /* all acked within this, or the test fails */
#define MAX_WORKERS 4096   /* worker processes over the whole run */

/* ---- the worker (a child process: no Criterion calls) ------------------ */

static void append_line(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void append_line(int fd, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0 && write(fd, line, (size_t)n) != n)
        _exit(5);
}

static long long wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* "2026-12-07T18:12:57.925488Z" as µs since the epoch, or -1. */
static long long stamp_us(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    long us;
    if (!rest || sscanf(rest, ".%6ldZ", &us) != 1)
        return -1;
    return (long long)timegm(&tm) * 1000000 + us;
}

static _Noreturn void worker_main(const char *mnt, const char *results)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int out = open(results, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out < 0)
        _exit(3);
    char claim_path[2 * PATH_MAX], ctl_path[2 * PATH_MAX];
    snprintf(claim_path, sizeof claim_path, "%s/agents/pool/claim", mnt);
    snprintf(ctl_path, sizeof ctl_path, "%s/agents/pool/ctl", mnt);
    int pid = (int)getpid();
    static char buf[65536];
    for (;;) {
        int fd = open(claim_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            append_line(out, "E open-claim %d\n", errno);
            _exit(4);
        }
        ssize_t got = read(fd, buf, sizeof buf - 1);
        int err = errno;
        close(fd);
        if (got < 0) {
            append_line(out, "E read-claim %d\n", err);
            _exit(4);
        }
        if (got == 0)
            _exit(0); /* draining */
        long long claimed = wall_us();
        buf[got] = '\0';

        json_error_t e;
        json_t *doc = json_loadb(buf, (size_t)got, 0, &e);
        json_t *lease = json_object_get(doc, "lease");
        json_t *payload = json_object_get(doc, "payload");
        const char *id = json_string_value(json_object_get(doc, "msg_id"));
        const char *file = json_string_value(json_object_get(lease, "file"));
        const char *deadline = json_string_value(json_object_get(lease, "deadline"));
        json_int_t token = json_integer_value(json_object_get(lease, "token"));
        json_int_t delivery = json_integer_value(json_object_get(lease, "delivery"));
        json_int_t task = json_integer_value(json_object_get(payload, "task"));
        bool whole = doc && id && file && deadline && token > 0 &&
                     json_is_integer(json_object_get(payload, "task"));
        if (!whole) {
            append_line(out, "E parse 0 %.*s\n", (int)(got > 300 ? 300 : got), buf);
            _exit(6);
        }
        append_line(out, "C %lld %lld %d %lld %lld %lld %s\n", (long long)task, (long long)token,
                    pid, (long long)delivery, claimed, stamp_us(deadline), id);

        long long work_us = task % STALL_EVERY == 0 && delivery == 1 ? STALL_US : WORK_US;
        struct timespec work = {(time_t)(work_us / 1000000), (long)(work_us % 1000000) * 1000L};
        nanosleep(&work, NULL);

        int ack_err = 0;
        if (token % 2 == 0) {
            char path[3 * PATH_MAX];
            snprintf(path, sizeof path, "%s/agents/pool/%s", mnt, file);
            if (unlink(path) < 0)
                ack_err = errno;
        } else {
            char line[256];
            int n = snprintf(line, sizeof line, "ack %s %lld\n", id, (long long)token);
            int cfd = open(ctl_path, O_WRONLY | O_CLOEXEC);
            if (cfd < 0) {
                ack_err = errno;
            } else {
                if (write(cfd, line, (size_t)n) != n)
                    ack_err = errno;
                if (close(cfd) < 0 && !ack_err)
                    ack_err = errno;
            }
        }
        if (ack_err)
            append_line(out, "X %lld %lld %d %d\n", (long long)task, (long long)token, pid,
                        ack_err);
        else
            append_line(out, "A %lld %lld %d\n", (long long)task, (long long)token, pid);
        json_decref(doc);
    }
}

/* ---- the producer (a child process) ------------------------------------- */

static _Noreturn void producer_main(const char *mnt)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char path[2 * PATH_MAX];
    snprintf(path, sizeof path, "%s/agents/boss/send", mnt);
    static char batch[BATCH * 128];
    for (int first = 0; first < TASKS; first += BATCH) {
        size_t len = 0;
        for (int t = first; t < first + BATCH && t < TASKS; t++)
            len += (size_t)snprintf(
                batch + len, sizeof batch - len,
                "{\"to\":\"pool\",\"payload\":{\"task\":%d,\"name\":\"task-%05d\"}}\n", t, t);
        for (;;) {
            int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
            if (fd < 0)
                _exit(2);
            ssize_t n = write(fd, batch, len);
            int err = errno;
            close(fd);
            if (n == (ssize_t)len)
                break;
            if (n < 0 && err == EAGAIN) { /* all or nothing: send it again */
                struct timespec ts = {0, 50 * 1000000L};
                nanosleep(&ts, NULL);
                continue;
            }
            _exit(3);
        }
    }
    _exit(0);
}

/* ---- the test ------------------------------------------------------------ */

struct worker {
    pid_t pid;
    bool killed;
    char results[2 * PATH_MAX];
};

static struct worker workers[MAX_WORKERS];
static size_t nworkers;

static size_t start_worker(void)
{
    cr_assert(nworkers < MAX_WORKERS, "too many workers");
    struct worker *w = &workers[nworkers];
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        char results[2 * PATH_MAX];
        snprintf(results, sizeof results, "%s/results-%d", bus.dir, (int)getpid());
        worker_main(bus.mnt, results);
    }
    w->pid = pid;
    w->killed = false;
    snprintf(w->results, sizeof w->results, "%s/results-%d", bus.dir, (int)pid);
    return nworkers++;
}

struct claim_rec {
    long long token;
    int pid;
    long long delivery;
    long long claimed_us;
    long long deadline_us;
    char msg_id[80];
    bool unresolved; /* the last line of a killed worker's file */
};

struct task {
    struct claim_rec *claims;
    size_t n, cap;
    int acks;             /* "A" lines */
    long long ack_token;  /* of the (last) "A" line */
    int ack_pid;
    long long lost_max;   /* largest token of an "X" line */
};

static struct task tasks[TASKS];

static int by_token(const void *a, const void *b)
{
    const struct claim_rec *x = a, *y = b;
    return (x->token > y->token) - (x->token < y->token);
}

static int by_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static int by_string(const void *a, const void *b)
{
    return strcmp(a, b);
}

static struct worker *worker_of(int pid)
{
    for (size_t i = 0; i < nworkers; i++)
        if (workers[i].pid == pid)
            return &workers[i];
    return NULL;
}

/* Reads every results file into tasks[]; returns the number of C lines. */
static size_t collect(void)
{
    size_t claims = 0;
    for (size_t w = 0; w < nworkers; w++) {
        FILE *in = fopen(workers[w].results, "re");
        if (!in)
            continue; /* killed before it opened its file */
        char line[1024];
        struct claim_rec *last_claim = NULL;
        bool last_was_claim = false;
        while (fgets(line, sizeof line, in)) {
            cr_assert(strchr(line, '\n'), "worker %d: a line without a newline: %s",
                      (int)workers[w].pid, line);
            long long task, token, delivery, claimed, deadline;
            int pid, err;
            char id[80];
            if (line[0] == 'C') {
                cr_assert(sscanf(line, "C %lld %lld %d %lld %lld %lld %79s", &task, &token, &pid,
                                 &delivery, &claimed, &deadline, id) == 7,
                          "bad line %s", line);
                cr_assert(task >= 0 && task < TASKS, "task %lld", task);
                struct task *t = &tasks[task];
                if (t->n == t->cap) {
                    t->cap = t->cap ? t->cap * 2 : 4;
                    t->claims = realloc(t->claims, t->cap * sizeof *t->claims);
                }
                struct claim_rec *c = &t->claims[t->n++];
                memset(c, 0, sizeof *c);
                c->token = token;
                c->pid = pid;
                c->delivery = delivery;
                c->claimed_us = claimed;
                c->deadline_us = deadline;
                snprintf(c->msg_id, sizeof c->msg_id, "%s", id);
                last_claim = c;
                last_was_claim = true;
                claims++;
            } else if (line[0] == 'A') {
                cr_assert(sscanf(line, "A %lld %lld %d", &task, &token, &pid) == 3, "bad line %s",
                          line);
                cr_assert(task >= 0 && task < TASKS, "task %lld", task);
                tasks[task].acks++;
                tasks[task].ack_token = token;
                tasks[task].ack_pid = pid;
                last_was_claim = false;
            } else if (line[0] == 'X') {
                cr_assert(sscanf(line, "X %lld %lld %d %d", &task, &token, &pid, &err) == 4,
                          "bad line %s", line);
                cr_assert(err == ESTALE || err == ENOENT,
                          "worker %d: an ack of task %lld (token %lld) failed with %s", pid, task,
                          token, strerror(err));
                if (token > tasks[task].lost_max)
                    tasks[task].lost_max = token;
                last_was_claim = false;
            } else {
                cr_assert_fail("worker %d: %s", (int)workers[w].pid, line);
            }
        }
        fclose(in);
        /* A claim with no outcome: the worker was killed between them. The
         * pointer may have moved with realloc: mark it by token instead. */
        if (last_was_claim && last_claim) {
            cr_assert(workers[w].killed, "worker %d ended after a claim without acking it",
                      (int)workers[w].pid);
            long long token = last_claim->token;
            int pid = last_claim->pid;
            for (size_t t = 0; t < TASKS; t++)
                for (size_t i = 0; i < tasks[t].n; i++)
                    if (tasks[t].claims[i].token == token && tasks[t].claims[i].pid == pid)
                        tasks[t].claims[i].unresolved = true;
        }
    }
    return claims;
}

static void start_pool(void)
{
    bus_start(&bus, "--lease", "2", "--max-deliver", "50", "--inbox-capacity", "11000", NULL);
}

Test(workers, every_task_is_acked_once_while_workers_are_killed, .init = start_pool,
     .fini = bus_teardown, .timeout = 150)
{
    bus_agents(&bus, "boss", "pool", NULL);
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    cr_log_info("workers: random seed %u", seed);

    long long t0 = bus_now_ms();
    for (int i = 0; i < WORKERS; i++)
        start_worker();
    pid_t producer = fork();
    cr_assert(producer >= 0);
    if (producer == 0)
        producer_main(bus.mnt);

    /* Kill two random live workers every KILL_EVERY_MS until all is acked. */
    size_t live[WORKERS];
    for (size_t i = 0; i < WORKERS; i++)
        live[i] = i;
    int kills = 0;
    int producer_status = -2;
    long long next_kill = bus_now_ms() + KILL_EVERY_MS;
    long long produced_at = 0;
    json_int_t acked = 0;
    for (;;) {
        if (producer_status == -2) {
            int st;
            if (waitpid(producer, &st, WNOHANG) == producer) {
                producer_status = bus_status_code(st);
                produced_at = bus_now_ms();
                cr_assert_eq(producer_status, 0, "the producer ended with %d", producer_status);
            }
        }
        json_t *c = bus_ctl("pool");
        acked = bus_int(c, "acked_total");
        bool done = producer_status == 0 && acked == TASKS && bus_int(c, "inbox_depth") == 0 &&
                    bus_int(c, "leased") == 0;
        json_decref(c);
        if (done)
            break;
        cr_assert(bus_now_ms() - t0 < RUN_LIMIT_MS,
                  "after %d ms only %lld of %d tasks are acked (%d workers killed)", RUN_LIMIT_MS,
                  (long long)acked, TASKS, kills);
        if (bus_now_ms() >= next_kill) {
            for (int k = 0; k < 2; k++) {
                size_t slot = (size_t)rand_r(&seed) % WORKERS;
                struct worker *w = &workers[live[slot]];
                kill(w->pid, SIGKILL);
                int st;
                cr_assert(bus_waitpid_deadline(w->pid, &st, BUS_WAIT_MS) == w->pid,
                          "a SIGKILLed worker did not die");
                w->killed = true;
                kills++;
                live[slot] = start_worker();
            }
            next_kill = bus_now_ms() + KILL_EVERY_MS;
        }
        bus_pause_ms(100);
    }
    long long done_at = bus_now_ms();
    /* Stop the pool: drain, so that blocked claims end with end-of-file. */
    cr_assert_eq(bus_write(AT("agents/pool/ctl"), "drain\n"), 0);
    for (size_t i = 0; i < WORKERS; i++) {
        struct worker *w = &workers[live[i]];
        int status = bus_wait_child(w->pid, BUS_WAIT_MS);
        cr_assert_eq(status, 0, "worker %d ended with %d after drain (-1: still blocked)",
                     (int)w->pid, status);
    }
    cr_log_info("workers: %d tasks sent in %lld ms, all acked after %lld ms, %d workers killed",
                TASKS, produced_at - t0, done_at - t0, kills);

    /* ---- what the workers saw ---- */
    size_t claims = collect();
    json_t *c = bus_ctl("pool");
    json_int_t redelivered = bus_int(c, "redelivered_total");
    cr_assert_eq(bus_int(c, "acked_total"), TASKS);
    cr_assert_eq(bus_int(c, "delivered_total"), TASKS);
    cr_assert_eq(bus_int(c, "dead"), 0);
    cr_assert_eq(bus_int(c, "leased"), 0);
    cr_assert_eq(bus_int(c, "inbox_depth"), 0);
    json_decref(c);
    cr_assert_eq(bus_count(AT("agents/pool/dead")), 0, "dead/ is not empty");
    cr_assert_eq(bus_count(AT("agents/pool/inflight")), 0, "inflight/ is not empty");
    cr_assert_eq(bus_count(AT("agents/pool/inbox")), 0, "inbox/ is not empty");

    /* Tokens are store-wide: no two claims share one. */
    long long *all = malloc(claims * sizeof *all);
    size_t k = 0;
    for (size_t t = 0; t < TASKS; t++)
        for (size_t i = 0; i < tasks[t].n; i++)
            all[k++] = tasks[t].claims[i].token;
    qsort(all, claims, sizeof *all, by_ll);
    for (size_t i = 1; i < claims; i++)
        cr_assert(all[i] > all[i - 1], "token %lld was granted twice", all[i]);
    free(all);

    int ackless = 0, lost = 0;
    size_t redeliveries_seen = 0;
    char *seen_ids = calloc(TASKS, 80);
    for (size_t t = 0; t < TASKS; t++) {
        struct task *tk = &tasks[t];
        /* The claim that ended in a successful ack was recorded before the ack. */
        cr_assert(tk->n > 0, "task %zu was never claimed (lost)", t);
        qsort(tk->claims, tk->n, sizeof *tk->claims, by_token);
        const struct claim_rec *last = &tk->claims[tk->n - 1];
        for (size_t i = 0; i < tk->n; i++) {
            const struct claim_rec *cl = &tk->claims[i];
            cr_assert_str_eq(cl->msg_id, tk->claims[0].msg_id, "task %zu came as two messages", t);
            redeliveries_seen += cl->delivery > 1;
            if (i == 0)
                continue;
            const struct claim_rec *prev = &tk->claims[i - 1];
            cr_assert_gt(cl->delivery, prev->delivery,
                         "task %zu: delivery %lld (token %lld) after delivery %lld (token %lld)", t,
                         cl->delivery, cl->token, prev->delivery, prev->token);
            /* Held by two at once? The later lease starts after the earlier
             * one's deadline. */
            cr_assert(cl->claimed_us >= prev->deadline_us,
                      "task %zu: token %lld (pid %d) was claimed %lld us before the deadline of "
                      "token %lld (pid %d)",
                      t, cl->token, cl->pid, prev->deadline_us - cl->claimed_us, prev->token,
                      prev->pid);
        }
        cr_assert(tk->acks <= 1, "task %zu was acked %d times", t, tk->acks);
        if (tk->acks == 1) {
            cr_assert_eq(tk->ack_token, last->token,
                         "task %zu was acked with token %lld, but token %lld claimed it after", t,
                         tk->ack_token, last->token);
            cr_assert_eq(tk->ack_pid, last->pid, "task %zu: acked by pid %d, claimed by pid %d", t,
                         tk->ack_pid, last->pid);
        } else {
            /* Acked (the server says all are) by a worker killed before it
             * could write "A": its claim is the last one and has no outcome. */
            struct worker *w = worker_of(last->pid);
            cr_assert(w && w->killed && last->unresolved,
                      "task %zu has no successful ack, and its last claim (token %lld, pid %d) "
                      "was not cut short by a kill",
                      t, last->token, last->pid);
            ackless++;
        }
        if (tk->lost_max) {
            cr_assert_lt(tk->lost_max, last->token,
                         "task %zu: the ack of token %lld was refused but no later claim exists",
                         t, tk->lost_max);
            lost++;
        }
        snprintf(seen_ids + t * 80, 80, "%s", tk->claims[0].msg_id);
    }
    /* Distinct tasks are distinct messages. */
    qsort(seen_ids, TASKS, 80, by_string);
    for (size_t t = 1; t < TASKS; t++)
        cr_assert_str_neq(seen_ids + t * 80, seen_ids + (t - 1) * 80, "two tasks share msg_id %s",
                          seen_ids + t * 80);
    free(seen_ids);
    cr_assert_leq(ackless, kills, "%d tasks lack a recorded ack, but only %d workers were killed",
                  ackless, kills);

    /*
     * Every lease the server granted is one delivery: TASKS first ones plus
     * one per redelivery (no nak, nothing dead). The workers recorded all of
     * them but those a kill cut off between read() and the "C" line, at
     * most one per killed worker.
     */
    cr_assert_leq((json_int_t)claims, TASKS + redelivered,
                  "%zu claims recorded, but the server granted %lld leases", claims,
                  (long long)(TASKS + redelivered));
    cr_assert_geq((json_int_t)claims + kills, TASKS + redelivered,
                  "%zu claims recorded and %d kills, but the server granted %lld leases", claims,
                  kills, (long long)(TASKS + redelivered));
    cr_assert_leq((json_int_t)redeliveries_seen, redelivered);
    cr_assert_geq(kills, 2, "no worker was killed: the test proved little");
    cr_log_info("workers: %zu claims for %d tasks, redelivered_total %lld, %d tasks with a "
                "refused (late) ack, %d acks cut off by a kill, %d kills",
                claims, TASKS, (long long)redelivered, lost, ackless, kills);
    for (size_t t = 0; t < TASKS; t++)
        free(tasks[t].claims);
    bus_stop(&bus);
}
