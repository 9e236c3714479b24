/*
 * test_stress.c — the bus under load (SPEC §3, §7, §1's SIGTERM):
 *
 *  - 1,000 `next` readers parked at once, all threads of ONE helper process
 *    (DESIGN: never 1,000 processes), woken by messages, interrupted by a
 *    signal each, and given end-of-file by SIGTERM; busfs grows no thread and
 *    no fd for them;
 *  - 32 writer processes (outbox/hub and `send` batches) next to `ls`, `cat`,
 *    `rm`, a `next` worker and mkdir/rmdir churn: every count exact;
 *  - one poll() over 200 `next` fds.
 *
 * The one thing a reader must know: children and helper threads never call
 * Criterion. They report through exit codes, fixed-size records on a pipe,
 * and files outside the mount (bus.dir); every one has a deadline (alarm,
 * and the test kills a late child). No assertion is about time.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef SYS_poll
#define POLL_SYSCALL SYS_poll
#else
#define POLL_SYSCALL (-1L)
#endif

/* Seconds after which any child or helper of this file dies by SIGALRM. */
#define CHILD_DEADLINE_S 50

/* Entries of a directory (no . and ..), or -1. */
static int entries_in(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* The server's thread count and fd count. */
static void server_load(int *threads, int *fds)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)bus.pid);
    *threads = entries_in(path);
    snprintf(path, sizeof path, "/proc/%d/fd", (int)bus.pid);
    *fds = entries_in(path);
    cr_assert(*threads > 0 && *fds > 0, "cannot count the threads and fds of busfs (pid %d)",
              (int)bus.pid);
}

/* Registers agents PREFIX0 .. PREFIX<n-1>. */
static void register_many(const char *prefix, int n)
{
    for (int i = 0; i < n; i++) {
        const char *dir = AT("agents/%s%d", prefix, i);
        cr_assert(mkdir(dir, 0755) == 0, "mkdir agents/%s%d: %s", prefix, i, strerror(errno));
    }
}

/* ======================================================================
 * 1. 1,000 parked readers in one helper process
 * ====================================================================== */

#define READERS 1000
#define READER_STACK (64 * 1024) /* 1,000 x 64 KiB = 64 MiB of address space */
#define PARK_WAIT_MS 25000       /* until all 1,000 sit in read() */
#define REPORT_WAIT_MS 20000     /* until all 1,000 have returned */
/* What busfs may add while 1,000 readers are parked: nothing per reader. */
#define SERVER_SLACK 4

enum reader_phase { PHASE_MESSAGE, PHASE_SIGNAL, PHASE_SIGTERM, PHASES };

static const char *const phase_names[PHASES] = {"woken by a message", "interrupted by SIGUSR1",
                                                "ended by SIGTERM of the server"};

/* What a reader saw; READ_OK means what its phase wants (its own envelope,
 * EINTR, end-of-file). */
enum read_outcome {
    READ_OK,
    READ_OPEN_FAILED,
    READ_ERROR, /* read() failed with another errno */
    READ_EOF,   /* end-of-file where something else was due */
    READ_EINTR, /* EINTR where something else was due */
    READ_DATA,  /* bytes where something else was due */
    READ_BAD_ENVELOPE,
    READ_WRONG_MESSAGE, /* another agent's message */
    READ_CLOSE_FAILED,
    OUTCOMES
};

static const char *const outcome_names[OUTCOMES] = {
    [READ_OK] = "ok",
    [READ_OPEN_FAILED] = "open failed",
    [READ_ERROR] = "read failed",
    [READ_EOF] = "end-of-file",
    [READ_EINTR] = "EINTR",
    [READ_DATA] = "data",
    [READ_BAD_ENVELOPE] = "not one JSON envelope + newline",
    [READ_WRONG_MESSAGE] = "another agent's message",
    [READ_CLOSE_FAILED] = "close failed",
};

/* One report per reader and phase; 16 bytes, so a pipe write is atomic. */
struct reader_report {
    int reader;
    int phase;
    int outcome;
    int err;
};

/* The helper process's shared state (its own copy after fork). */
static struct {
    char mnt[PATH_MAX];
    int agents; /* reader i reads agents/r<i % agents>/next */
    int report_fd;
    pthread_mutex_t lock;
    pthread_cond_t go;
    int phase; /* the last phase released, -1 before the first */
} pool;

static void on_usr1(int sig)
{
    (void)sig;
}

/* Checks a message read from next: one JSON object + "\n" from src to agent
 * carrying "for-<agent>". */
static enum read_outcome check_message(const char *text, size_t len, const char *agent)
{
    if (len < 3 || text[len - 1] != '\n' || memchr(text, '\n', len) != text + len - 1)
        return READ_BAD_ENVELOPE;
    json_error_t e;
    json_t *env = json_loadb(text, len - 1, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(env)) {
        json_decref(env);
        return READ_BAD_ENVELOPE;
    }
    const char *to = json_string_value(json_object_get(env, "to"));
    const char *from = json_string_value(json_object_get(env, "from"));
    const char *payload = json_string_value(json_object_get(env, "payload"));
    char want[32];
    snprintf(want, sizeof want, "for-%s", agent);
    enum read_outcome o = READ_OK;
    if (!to || !from || !payload)
        o = READ_BAD_ENVELOPE;
    else if (strcmp(to, agent) != 0 || strcmp(from, "src") != 0 || strcmp(payload, want) != 0)
        o = READ_WRONG_MESSAGE;
    json_decref(env);
    return o;
}

/* One open + read (until end-of-file, like cat, when a message came) + close
 * of next, judged for the phase. */
static enum read_outcome read_next(const char *path, const char *agent, int phase, int *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *err = errno;
        return READ_OPEN_FAILED;
    }
    char buf[8192];
    size_t len = 0;
    enum read_outcome o;
    ssize_t n = read(fd, buf, sizeof buf);
    *err = n < 0 ? errno : 0;
    if (n < 0)
        o = *err == EINTR ? READ_EINTR : READ_ERROR;
    else if (n == 0)
        o = READ_EOF;
    else
        o = READ_DATA;
    if (o == READ_DATA) {
        len = (size_t)n;
        while (len < sizeof buf && (n = read(fd, buf + len, sizeof buf - len)) > 0)
            len += (size_t)n;
        if (n < 0) {
            *err = errno;
            o = READ_ERROR;
        }
    }
    if (phase == PHASE_MESSAGE && o == READ_DATA)
        o = len < sizeof buf ? check_message(buf, len, agent) : READ_BAD_ENVELOPE;
    else if ((phase == PHASE_SIGNAL && o == READ_EINTR) ||
             (phase == PHASE_SIGTERM && o == READ_EOF))
        o = READ_OK;
    if (close(fd) < 0 && o == READ_OK) {
        *err = errno;
        o = READ_CLOSE_FAILED;
    }
    return o;
}

static void *reader_main(void *arg)
{
    int i = (int)(intptr_t)arg;
    char agent[16], path[PATH_MAX + 32];
    snprintf(agent, sizeof agent, "r%d", i % pool.agents);
    snprintf(path, sizeof path, "%s/agents/%s/next", pool.mnt, agent);
    for (int phase = 0; phase < PHASES; phase++) {
        pthread_mutex_lock(&pool.lock);
        while (pool.phase < phase)
            pthread_cond_wait(&pool.go, &pool.lock);
        pthread_mutex_unlock(&pool.lock);
        struct reader_report r = {i, phase, READ_OK, 0};
        r.outcome = (int)read_next(path, agent, phase, &r.err);
        if (write(pool.report_fd, &r, sizeof r) != (ssize_t)sizeof r)
            _exit(5);
    }
    return NULL;
}

/*
 * The helper: READERS threads with small stacks, driven by one-byte
 * commands: '0' + phase releases the threads into that phase, 'k' sends
 * SIGUSR1 to every thread (no SA_RESTART), 'q' joins them and exits 0.
 */
static _Noreturn void helper_main(int cmd_fd, int report_fd, const char *mnt, int agents)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(CHILD_DEADLINE_S);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART: a blocked read() ends with EINTR */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) < 0)
        _exit(2);
    json_object_seed(0); /* before any thread makes a JSON object */
    snprintf(pool.mnt, sizeof pool.mnt, "%s", mnt);
    pool.agents = agents;
    pool.report_fd = report_fd;
    pool.phase = -1;
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.go, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (pthread_attr_setstacksize(&attr, READER_STACK) != 0)
        _exit(3);
    static pthread_t tids[READERS];
    for (int i = 0; i < READERS; i++)
        if (pthread_create(&tids[i], &attr, reader_main, (void *)(intptr_t)i) != 0)
            _exit(4);
    for (;;) {
        char c;
        ssize_t n = read(cmd_fd, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            _exit(1); /* the test is gone */
        if (c >= '0' && c < '0' + PHASES) {
            pthread_mutex_lock(&pool.lock);
            pool.phase = c - '0';
            pthread_cond_broadcast(&pool.go);
            pthread_mutex_unlock(&pool.lock);
        } else if (c == 'k') {
            for (int i = 0; i < READERS; i++)
                pthread_kill(tids[i], SIGUSR1);
        } else if (c == 'q') {
            for (int i = 0; i < READERS; i++)
                pthread_join(tids[i], NULL);
            _exit(0);
        }
    }
}

struct helper {
    pid_t pid;
    int cmd_fd;
    int report_fd;
};

static void helper_start(struct helper *h, int agents)
{
    int cmd[2], rep[2];
    cr_assert(pipe2(cmd, O_CLOEXEC) == 0 && pipe2(rep, O_CLOEXEC) == 0, "pipe: %s",
              strerror(errno));
    char mnt[PATH_MAX];
    snprintf(mnt, sizeof mnt, "%s", bus.mnt);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(cmd[1]);
        close(rep[0]);
        helper_main(cmd[0], rep[1], mnt, agents);
    }
    close(cmd[0]);
    close(rep[1]);
    h->pid = pid;
    h->cmd_fd = cmd[1];
    h->report_fd = rep[0];
}

static void helper_command(struct helper *h, char c)
{
    cr_assert(write(h->cmd_fd, &c, 1) == 1, "cannot command the helper: %s", strerror(errno));
}

/* Threads of the helper (its main thread aside) blocked in read() on an
 * fd >= 3, that is, on next. */
static int readers_in_read(pid_t helper)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)helper);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == (int)helper)
            continue;
        char path[128];
        snprintf(path, sizeof path, "/proc/%d/task/%.20s/syscall", (int)helper, e->d_name);
        FILE *in = fopen(path, "re");
        if (!in)
            continue;
        long nr = -1;
        unsigned long fd = 0;
        if (fscanf(in, "%ld 0x%lx", &nr, &fd) == 2 && nr == SYS_read && fd >= 3)
            n++;
        fclose(in);
    }
    closedir(d);
    return n;
}

/* Nothing may come back from parked readers before they are released. */
static void assert_no_report(struct helper *h, const char *what)
{
    struct pollfd p = {h->report_fd, POLLIN, 0};
    if (poll(&p, 1, 0) > 0) {
        struct reader_report r;
        ssize_t n = read(h->report_fd, &r, sizeof r);
        cr_assert(n != (ssize_t)sizeof r,
                  "%s: reader %d returned while it should be parked (%s, %s)", what, r.reader,
                  r.outcome >= 0 && r.outcome < OUTCOMES ? outcome_names[r.outcome] : "?",
                  strerror(r.err));
        cr_assert_fail("%s: the helper's report pipe closed (helper died?)", what);
    }
}

/* Waits until every reader sits in read() and the server has their READs. */
static void await_parked(struct helper *h, const char *what)
{
    long long end = bus_now_ms() + PARK_WAIT_MS;
    int n;
    while ((n = readers_in_read(h->pid)) < READERS && bus_now_ms() < end) {
        assert_no_report(h, what);
        bus_pause_ms(20);
    }
    cr_assert_eq(n, READERS, "%s: %d of %d reader threads blocked in read() within %d ms", what, n,
                 READERS, PARK_WAIT_MS);
    bus_sync(&bus);
    assert_no_report(h, what);
    cr_assert_eq(readers_in_read(h->pid), READERS, "%s: a parked reader returned by itself", what);
}

/* Collects the reports of one phase: each reader exactly once, all READ_OK. */
static void collect_phase(struct helper *h, int phase)
{
    static bool seen[READERS];
    int counts[OUTCOMES] = {0};
    int first_bad[OUTCOMES] = {0}, first_err[OUTCOMES] = {0};
    memset(seen, 0, sizeof seen);
    int got = 0;
    long long end = bus_now_ms() + REPORT_WAIT_MS;
    while (got < READERS) {
        long long left = end - bus_now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {h->report_fd, POLLIN, 0};
        if (poll(&p, 1, (int)(left > 200 ? 200 : left)) <= 0)
            continue;
        struct reader_report r;
        ssize_t n = read(h->report_fd, &r, sizeof r);
        cr_assert_eq(n, (ssize_t)sizeof r, "%s: the helper's report pipe gave %zd bytes",
                     phase_names[phase], n);
        cr_assert(r.reader >= 0 && r.reader < READERS && r.outcome >= 0 && r.outcome < OUTCOMES,
                  "a garbled report");
        cr_assert_eq(r.phase, phase, "reader %d reported phase %d during phase %d", r.reader,
                     r.phase, phase);
        cr_assert(!seen[r.reader], "%s: reader %d returned twice", phase_names[phase], r.reader);
        seen[r.reader] = true;
        if (counts[r.outcome]++ == 0) {
            first_bad[r.outcome] = r.reader;
            first_err[r.outcome] = r.err;
        }
        got++;
    }
    for (int o = 1; o < OUTCOMES; o++)
        cr_assert_eq(counts[o], 0,
                     "%s: %d of %d readers saw \"%s\" (the first: reader %d, errno %s); %d ok",
                     phase_names[phase], counts[o], READERS, outcome_names[o], first_bad[o],
                     strerror(first_err[o]), counts[READ_OK]);
    cr_assert_eq(got, READERS, "%s: only %d of %d readers returned within %d ms",
                 phase_names[phase], got, READERS, REPORT_WAIT_MS);
}

static void assert_server_did_not_grow(int threads0, int fds0, const char *when)
{
    int threads, fds;
    server_load(&threads, &fds);
    cr_log_info("%s: busfs has %d threads and %d fds (%d and %d before)", when, threads, fds,
                threads0, fds0);
    cr_assert(threads <= threads0 + SERVER_SLACK,
              "%s: busfs has %d threads, %d before the readers (a thread per reader?)", when,
              threads, threads0);
    cr_assert(fds <= fds0 + SERVER_SLACK,
              "%s: busfs has %d fds, %d before the readers (an fd per reader?)", when, fds, fds0);
}

/* Removes the one message each agent got (so next blocks again). */
static void consume_all(int agents, int per_agent_readers)
{
    for (int k = 0; k < agents; k++) {
        size_t n;
        char **names = bus_ls(AT("agents/r%d/inbox", k), &n);
        cr_assert(names, "ls agents/r%d/inbox: %s", k, strerror(errno));
        cr_assert_eq(n, 1, "agents/r%d/inbox holds %zu messages after %d readers read next, want 1",
                     k, n, per_agent_readers);
        cr_assert(unlink(AT("agents/r%d/inbox/%s", k, names[0])) == 0, "rm agents/r%d/inbox/%s: %s",
                  k, names[0], strerror(errno));
        bus_ls_free(names, n);
    }
}

/*
 * READERS readers over `agents` agents (reader i reads r<i % agents>): parked,
 * woken by one message per agent; parked, interrupted; parked, ended by
 * SIGTERM with end-of-file while the server exits 0.
 */
static void parked_readers(int agents)
{
    struct rlimit rl;
    cr_assert(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_cur < READERS + 64) {
        rl.rlim_cur = rl.rlim_max < READERS + 256 ? rl.rlim_max : READERS + 256;
        setrlimit(RLIMIT_NOFILE, &rl);
        cr_assert(getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur >= READERS + 64,
                  "RLIMIT_NOFILE %llu is too low for %d readers in one process",
                  (unsigned long long)rl.rlim_cur, READERS);
    }
    bus_agents(&bus, "src", NULL);
    register_many("r", agents);
    int threads0, fds0;
    server_load(&threads0, &fds0);

    struct helper h;
    helper_start(&h, agents);

    /* Phase 1: each reader gets its own agent's message. */
    helper_command(&h, '0' + PHASE_MESSAGE);
    await_parked(&h, "first park");
    assert_server_did_not_grow(threads0, fds0, "1,000 readers parked");
    for (int k = 0; k < agents; k++) {
        char text[32];
        snprintf(text, sizeof text, "for-r%d\n", k);
        char to[16];
        snprintf(to, sizeof to, "r%d", k);
        bus_send("src", to, text);
    }
    collect_phase(&h, PHASE_MESSAGE);
    consume_all(agents, READERS / agents);

    /* Phase 2: a caught signal ends each parked read with EINTR. */
    helper_command(&h, '0' + PHASE_SIGNAL);
    await_parked(&h, "second park");
    helper_command(&h, 'k');
    collect_phase(&h, PHASE_SIGNAL);
    int step = agents > 10 ? agents / 10 : 1; /* a sample of the inboxes */
    for (int k = 0; k < agents; k += step)
        cr_assert_eq(bus_count(AT("agents/r%d/inbox", k)), 0,
                     "interrupted readers changed agents/r%d/inbox", k);

    /* Phase 3: SIGTERM; every parked read gives end-of-file; exit 0. */
    helper_command(&h, '0' + PHASE_SIGTERM);
    await_parked(&h, "third park");
    assert_server_did_not_grow(threads0, fds0, "1,000 readers parked again");
    bus_terminate(&bus); /* SIGTERM, exit 0 within 10 s, mount gone */
    collect_phase(&h, PHASE_SIGTERM);

    helper_command(&h, 'q');
    int status = bus_wait_child(h.pid, BUS_WAIT_MS);
    cr_assert_eq(status, 0, "the reader helper ended with %d", status);
    close(h.cmd_fd);
    close(h.report_fd);
}

BUS_TEST(stress, a_thousand_parked_readers_on_a_thousand_agents_wake_interrupt_and_get_eof)
{
    parked_readers(READERS); /* 1,000 agents, one reader each */
}

BUS_TEST(stress, a_thousand_parked_readers_on_ten_agents_wake_interrupt_and_get_eof)
{
    parked_readers(10); /* 10 agents, 100 readers each */
}

/* ======================================================================
 * 2. writers, listers, readers, a consumer, a worker and churn at once
 * ====================================================================== */

#define WRITERS 16      /* outbox writers w<i> -> hub, and send writers s<i> */
#define PER_WRITER 200  /* messages each: 3,200 into hub, 3,200 over in0..in3 */
#define BATCH 10        /* records per write() of send */
#define INBOXES 4       /* in0 .. in3 */
#define WORKER_MSGS 200 /* feeder -> worker, read with next, acked with ctl */
#define WRITERS_WAIT_MS 35000
#define OTHERS_WAIT_MS 8000
#define BOXES (1 + INBOXES) /* what ls, cat and rm look at: hub, in0 .. in3 */

static void start_big_inboxes(void)
{
    bus_start(&bus, "--inbox-capacity", "10000", NULL);
}

/* Paths the children need, made before forking. */
struct mix {
    char mnt[PATH_MAX];
    char stop[PATH_MAX];     /* exists: background children finish */
    char log[PATH_MAX];      /* a line per child failure */
    char consumed[PATH_MAX]; /* the envelopes the consumer removed */
    char worked[PATH_MAX];   /* the envelopes the worker read from next */
    char stats[PATH_MAX];    /* what each background child did, a line each */
    char ready[PATH_MAX];    /* a byte per background child that is under way */
};

static const char *const boxes[BOXES] = {"hub", "in0", "in1", "in2", "in3"};

/* Appends a line to the failure log (children only). */
static void note(const struct mix *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const struct mix *m, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    int fd = open(m->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, line, (size_t)n) < 0) {
        }
        close(fd);
    }
}

/* Appends text to a record file (children only); false on failure. */
static bool record(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return false;
    bool ok = write(fd, text, len) == (ssize_t)len;
    return close(fd) == 0 && ok;
}

/* Appends "what: count" to the stats file (children only). */
static void stat_line(const struct mix *m, const char *what, long count)
{
    char line[128];
    int n = snprintf(line, sizeof line, "%s: %ld\n", what, count);
    record(m->stats, line, (size_t)n);
}

/* A background child has done its first round (children only). */
static void say_ready(const struct mix *m)
{
    record(m->ready, "r", 1);
}

static bool stopped(const struct mix *m)
{
    return access(m->stop, F_OK) == 0;
}

static const char *mpath(const struct mix *m, char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const char *mpath(const struct mix *m, char *buf, size_t size, const char *fmt, ...)
{
    int n = snprintf(buf, size, "%s/", m->mnt);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, size - (size_t)n, fmt, ap);
    va_end(ap);
    return buf;
}

#define INBOX_NAME_RE "^[0-9]{20}-MSG-[0-9]{8}-[0-9]{6}-[0-9a-f]{8}-[0-9]{20}\\.json$"

/* Why text (len bytes) is not one envelope + "\n" to agent whose msg_id is
 * in the file name (NULL: name not checked); NULL when it is. */
static const char *envelope_problem(const char *text, size_t len, const char *name,
                                    const char *agent)
{
    if (len < 3 || text[len - 1] != '\n' || memchr(text, '\n', len) != text + len - 1)
        return "not exactly one line ending in a newline (torn?)";
    json_error_t e;
    json_t *env = json_loadb(text, len - 1, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(env)) {
        json_decref(env);
        return "not a JSON object";
    }
    const char *id = json_string_value(json_object_get(env, "msg_id"));
    const char *to = json_string_value(json_object_get(env, "to"));
    const char *problem = NULL;
    if (!id || !to || !json_is_integer(json_object_get(env, "sequence")))
        problem = "msg_id, to or sequence missing";
    else if (strcmp(to, agent) != 0)
        problem = "\"to\" is not the inbox's agent";
    else if (name &&
             (strlen(name) != 21 + strlen(id) + 5 || strncmp(name + 21, id, strlen(id)) != 0))
        problem = "msg_id differs from the file name";
    json_decref(env);
    return problem;
}

/* Sorted listing of an inbox with every name checked; NULL (and a note)
 * on failure. */
static char **checked_listing(const struct mix *m, const regex_t *rx, const char *who,
                              const char *agent, size_t *n)
{
    char dir[PATH_MAX + 32];
    mpath(m, dir, sizeof dir, "agents/%s/inbox", agent);
    errno = 0;
    char **names = bus_ls(dir, n);
    if (!names) {
        note(m, "%s: ls agents/%s/inbox: %s", who, agent, strerror(errno));
        return NULL;
    }
    for (size_t i = 0; i < *n; i++) {
        if (regexec(rx, names[i], 0, NULL, 0) != 0) {
            note(m, "%s: agents/%s/inbox lists a bad name: %s", who, agent, names[i]);
            bus_ls_free(names, *n);
            return NULL;
        }
        if (i > 0 && strcmp(names[i - 1], names[i]) == 0) {
            note(m, "%s: agents/%s/inbox lists %s twice", who, agent, names[i]);
            bus_ls_free(names, *n);
            return NULL;
        }
    }
    return names;
}

/* w<i>: PER_WRITER messages "w<i>-<n>" into outbox/hub, one open/write/close each. */
static int outbox_writer(const struct mix *m, int i)
{
    char path[PATH_MAX + 64];
    mpath(m, path, sizeof path, "agents/w%d/outbox/hub", i);
    for (int n = 0; n < PER_WRITER; n++) {
        char text[32];
        int len = snprintf(text, sizeof text, "w%d-%d\n", i, n);
        enum bus_step step;
        int err = bus_write_ex(path, O_WRONLY | O_CREAT | O_TRUNC, text, (size_t)len, &step);
        if (err) {
            note(m, "w%d: message %d failed at step %d: %s", i, n, (int)step, strerror(err));
            return 1;
        }
    }
    return 0;
}

/* s<i>: PER_WRITER records "s<i>-<n>" to in<(i + n) % INBOXES> through send,
 * BATCH records per write (one open/write/close each). */
static int send_writer(const struct mix *m, int i)
{
    char path[PATH_MAX + 64];
    mpath(m, path, sizeof path, "agents/s%d/send", i);
    for (int b = 0; b < PER_WRITER / BATCH; b++) {
        char batch[BATCH * 64];
        size_t len = 0;
        for (int n = b * BATCH; n < (b + 1) * BATCH; n++)
            len += (size_t)snprintf(batch + len, sizeof batch - len,
                                    "{\"to\":\"in%d\",\"payload\":\"s%d-%d\"}\n", (i + n) % INBOXES,
                                    i, n);
        enum bus_step step;
        int err = bus_write_ex(path, O_WRONLY | O_APPEND, batch, len, &step);
        if (err) {
            note(m, "s%d: batch %d failed at step %d: %s", i, b, (int)step, strerror(err));
            return 1;
        }
    }
    return 0;
}

/* feeder: WORKER_MSGS messages "f-<n>" to worker. */
static int feeder(const struct mix *m, int unused)
{
    (void)unused;
    char path[PATH_MAX + 64];
    mpath(m, path, sizeof path, "agents/feeder/outbox/worker");
    for (int n = 0; n < WORKER_MSGS; n++) {
        char text[32];
        int len = snprintf(text, sizeof text, "f-%d\n", n);
        int err = bus_write_ex(path, O_WRONLY | O_CREAT | O_TRUNC, text, (size_t)len, NULL);
        if (err) {
            note(m, "feeder: message %d: %s", n, strerror(err));
            return 1;
        }
    }
    return 0;
}

/* worker: WORKER_MSGS times cat next, record it, `echo ack ID > ctl`. */
static int worker(const struct mix *m, int unused)
{
    (void)unused;
    char next[PATH_MAX + 64], ctl[PATH_MAX + 64];
    mpath(m, next, sizeof next, "agents/worker/next");
    mpath(m, ctl, sizeof ctl, "agents/worker/ctl");
    for (int k = 0; k < WORKER_MSGS; k++) {
        size_t len;
        char *text = bus_read(next, &len);
        if (!text || len == 0) {
            note(m, "worker: message %d: next gave %s", k, text ? "end-of-file" : strerror(errno));
            return 1;
        }
        const char *problem = envelope_problem(text, len, NULL, "worker");
        if (problem) {
            note(m, "worker: message %d: %s: [%s]", k, problem, text);
            return 1;
        }
        json_t *env = json_loadb(text, len, 0, NULL);
        char ack[200];
        snprintf(ack, sizeof ack, "ack %s\n", json_string_value(json_object_get(env, "msg_id")));
        json_decref(env);
        if (!record(m->worked, text, len)) {
            note(m, "worker: cannot record message %d", k);
            return 1;
        }
        free(text);
        int err = bus_write(ctl, ack);
        if (err) {
            note(m, "worker: %s> ctl: %s", ack, strerror(err));
            return 1;
        }
    }
    return 0;
}

/* ls: lists every inbox again and again; names well formed, none twice. */
static int lister(const struct mix *m, int unused)
{
    (void)unused;
    regex_t rx;
    if (regcomp(&rx, INBOX_NAME_RE, REG_EXTENDED | REG_NOSUB) != 0)
        return 2;
    long listings = 0;
    while (!stopped(m)) {
        for (int b = 0; b < BOXES; b++) {
            size_t n;
            char **names = checked_listing(m, &rx, "ls", boxes[b], &n);
            if (!names)
                return 1;
            bus_ls_free(names, n);
            listings++;
        }
        if (listings == BOXES)
            say_ready(m);
        bus_pause_ms(10);
    }
    regfree(&rx);
    stat_line(m, "inbox listings", listings);
    if (listings == 0)
        note(m, "ls: no listing was made");
    return listings > 0 ? 0 : 1;
}

/* cat: reads random inbox files; each is one whole envelope or gone (ENOENT). */
static int catter(const struct mix *m, int seed)
{
    regex_t rx;
    if (regcomp(&rx, INBOX_NAME_RE, REG_EXTENDED | REG_NOSUB) != 0)
        return 2;
    srand((unsigned)seed);
    long reads = 0;
    bool ready_said = false;
    while (!stopped(m)) {
        const char *agent = boxes[rand() % BOXES];
        size_t n;
        char **names = checked_listing(m, &rx, "cat", agent, &n);
        if (!names)
            return 1;
        for (int j = 0; j < 20 && n > 0 && !stopped(m); j++) {
            const char *name = names[(size_t)rand() % n];
            char path[PATH_MAX + 128];
            mpath(m, path, sizeof path, "agents/%s/inbox/%s", agent, name);
            size_t len;
            char *text = bus_read(path, &len);
            if (!text && errno != ENOENT) {
                note(m, "cat: agents/%s/inbox/%s: %s", agent, name, strerror(errno));
                return 1;
            }
            const char *problem = text ? envelope_problem(text, len, name, agent) : NULL;
            if (problem) {
                note(m, "cat: agents/%s/inbox/%s: %s: [%s]", agent, name, problem, text);
                return 1;
            }
            reads += text != NULL;
            free(text);
        }
        bus_ls_free(names, n);
        if (!ready_said) {
            ready_said = true;
            say_ready(m);
        }
        bus_pause_ms(2);
    }
    regfree(&rx);
    stat_line(m, "inbox files read by cat", reads);
    if (reads == 0)
        note(m, "cat %d: no inbox file was read", seed);
    return reads > 0 ? 0 : 1;
}

/* rm: removes every other listed message (at most 200 per inbox per pass),
 * reading it first and recording the envelope once rm succeeded. */
static int consumer(const struct mix *m, int unused)
{
    (void)unused;
    regex_t rx;
    if (regcomp(&rx, INBOX_NAME_RE, REG_EXTENDED | REG_NOSUB) != 0)
        return 2;
    long removed = 0;
    bool ready_said = false;
    while (!stopped(m)) {
        for (int b = 0; b < BOXES; b++) {
            size_t n;
            char **names = checked_listing(m, &rx, "rm", boxes[b], &n);
            if (!names)
                return 1;
            for (size_t k = 0; k < n && k < 400 && !stopped(m); k += 2) {
                char path[PATH_MAX + 128];
                mpath(m, path, sizeof path, "agents/%s/inbox/%s", boxes[b], names[k]);
                size_t len;
                char *text = bus_read(path, &len);
                if (!text) {
                    note(m, "rm: cat %s: %s", names[k], strerror(errno));
                    return 1;
                }
                const char *problem = envelope_problem(text, len, names[k], boxes[b]);
                if (problem) {
                    note(m, "rm: agents/%s/inbox/%s: %s: [%s]", boxes[b], names[k], problem, text);
                    return 1;
                }
                if (unlink(path) != 0) {
                    note(m, "rm agents/%s/inbox/%s: %s", boxes[b], names[k], strerror(errno));
                    return 1;
                }
                if (!record(m->consumed, text, len)) {
                    note(m, "rm: cannot record a removed message");
                    return 1;
                }
                free(text);
                removed++;
            }
            bus_ls_free(names, n);
        }
        if (!ready_said) {
            ready_said = true;
            say_ready(m);
        }
        bus_pause_ms(5);
    }
    regfree(&rx);
    stat_line(m, "messages removed", removed);
    return 0;
}

/* mkdir/rmdir of unrelated agents churn<k>, again and again. */
static int churner(const struct mix *m, int unused)
{
    (void)unused;
    long cycles = 0;
    while (!stopped(m)) {
        char dir[PATH_MAX + 64];
        mpath(m, dir, sizeof dir, "agents/churn%ld", cycles % 4);
        if (mkdir(dir, 0755) != 0) {
            note(m, "churn: mkdir %s: %s", dir, strerror(errno));
            return 1;
        }
        if (rmdir(dir) != 0) {
            note(m, "churn: rmdir %s: %s", dir, strerror(errno));
            return 1;
        }
        if (cycles++ == 0)
            say_ready(m);
        bus_pause_ms(2);
    }
    stat_line(m, "mkdir/rmdir cycles", cycles);
    if (cycles == 0)
        note(m, "churn: no mkdir/rmdir cycle was made");
    return cycles > 0 ? 0 : 1;
}

static pid_t fork_child(int (*fn)(const struct mix *, int), const struct mix *m, int arg)
{
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        alarm(CHILD_DEADLINE_S);
        _exit(fn(m, arg));
    }
    return pid;
}

/* Waits for a child until the shared deadline; its status (-1: killed late). */
static int wait_until(pid_t pid, long long end)
{
    long long left = end - bus_now_ms();
    return bus_wait_child(pid, left > 100 ? (int)left : 100);
}

/* The failure log, for messages (static buffer). */
static const char *failures(const struct mix *m)
{
    static char text[4096];
    size_t len;
    char *log = bus_read(m->log, &len);
    snprintf(text, sizeof text, "%s", log ? log : "(no failure noted)");
    free(log);
    return text;
}

/* What was delivered, remaining or consumed. */
struct tally {
    int hub[WRITERS][PER_WRITER];
    int box[WRITERS][PER_WRITER];
    int remaining[BOXES];
    int consumed[BOXES];
    json_t *ids; /* every msg_id seen */
};

static void tally_id(struct tally *t, const char *id)
{
    cr_assert(!json_object_get(t->ids, id), "msg_id %s seen twice", id);
    json_object_set_new(t->ids, id, json_true());
}

/* One delivered envelope of hub or in<k>: known payload, exactly its pair's
 * next sequence (each pair has one writer sending in order). */
static void tally_envelope(struct tally *t, const json_t *env, bool consumed)
{
    bus_assert_envelope(env, NULL, NULL);
    tally_id(t, bus_str(env, "msg_id"));
    const char *to = bus_str(env, "to");
    const char *from = bus_str(env, "from");
    const char *payload = json_string_value(json_object_get(env, "payload"));
    json_int_t seq = bus_int(env, "sequence");
    char want_from[16], tail;
    int i, n, k;
    if (strcmp(to, "hub") == 0) {
        cr_assert(payload && sscanf(payload, "w%d-%d%c", &i, &n, &tail) == 2 && i >= 0 &&
                      i < WRITERS && n >= 0 && n < PER_WRITER,
                  "a foreign payload in hub: %s", payload ? payload : "(not a string)");
        snprintf(want_from, sizeof want_from, "w%d", i);
        cr_assert_str_eq(from, want_from, "payload %s came from %s", payload, from);
        cr_assert_eq(seq, n + 1, "w%d -> hub: message %d has sequence %lld, want %d", i, n,
                     (long long)seq, n + 1);
        t->hub[i][n]++;
        k = 0;
    } else {
        cr_assert(sscanf(to, "in%d%c", &k, &tail) == 1 && k >= 0 && k < INBOXES,
                  "an envelope to %s", to);
        cr_assert(payload && sscanf(payload, "s%d-%d%c", &i, &n, &tail) == 2 && i >= 0 &&
                      i < WRITERS && n >= 0 && n < PER_WRITER,
                  "a foreign payload in %s: %s", to, payload ? payload : "(not a string)");
        snprintf(want_from, sizeof want_from, "s%d", i);
        cr_assert_str_eq(from, want_from, "payload %s came from %s", payload, from);
        cr_assert_eq(k, (i + n) % INBOXES, "payload %s was delivered to %s", payload, to);
        cr_assert_eq(seq, n / INBOXES + 1, "s%d -> %s: message %d has sequence %lld, want %d", i,
                     to, n, (long long)seq, n / INBOXES + 1);
        t->box[i][n]++;
        k++;
    }
    if (consumed)
        t->consumed[k]++;
    else
        t->remaining[k]++;
}

/* Each line of a record file: one envelope. */
static json_t *record_lines(const char *path)
{
    size_t len;
    char *text = bus_read(path, &len);
    json_t *all = json_array();
    if (!text)
        return all; /* nothing recorded */
    for (char *line = text, *end; line < text + len; line = end + 1) {
        end = strchr(line, '\n');
        cr_assert(end, "%s: a record without its newline", path);
        json_error_t e;
        json_t *env = json_loadb(line, (size_t)(end - line), JSON_REJECT_DUPLICATES, &e);
        cr_assert(json_is_object(env), "%s: a record is not an envelope (%s)", path, e.text);
        json_array_append_new(all, env);
    }
    free(text);
    return all;
}

static void assert_counters(const char *agent, int delivered, int acked, int depth)
{
    json_t *ctl = bus_ctl(agent);
    cr_assert_eq(bus_int(ctl, "delivered_total"), delivered, "%s: delivered_total %lld, want %d",
                 agent, (long long)bus_int(ctl, "delivered_total"), delivered);
    cr_assert_eq(bus_int(ctl, "acked_total"), acked, "%s: acked_total %lld, want %d (consumed)",
                 agent, (long long)bus_int(ctl, "acked_total"), acked);
    cr_assert_eq(bus_int(ctl, "inbox_depth"), depth, "%s: inbox_depth %lld, want %d (remaining)",
                 agent, (long long)bus_int(ctl, "inbox_depth"), depth);
    cr_assert_eq(bus_int(ctl, "reserved"), 0, "%s: a slot is still reserved", agent);
    json_decref(ctl);
}

BUS_TEST_WITH(stress, writers_listers_readers_a_consumer_and_churn_keep_every_count_exact,
              start_big_inboxes)
{
    struct mix m;
    snprintf(m.mnt, sizeof m.mnt, "%s", bus.mnt);
    snprintf(m.stop, sizeof m.stop, "%.4000s/stop", bus.dir);
    snprintf(m.log, sizeof m.log, "%.4000s/failures.log", bus.dir);
    snprintf(m.consumed, sizeof m.consumed, "%.4000s/consumed.jsonl", bus.dir);
    snprintf(m.worked, sizeof m.worked, "%.4000s/worked.jsonl", bus.dir);
    snprintf(m.stats, sizeof m.stats, "%.4000s/stats.txt", bus.dir);
    snprintf(m.ready, sizeof m.ready, "%.4000s/ready", bus.dir);
    bus_agents(&bus, "hub", "in0", "in1", "in2", "in3", "feeder", "worker", NULL);
    register_many("w", WRITERS);
    register_many("s", WRITERS);

    enum { LISTER, CAT1, CAT2, CONSUMER, CHURN, BACKGROUND };
    pid_t bg[BACKGROUND];
    bg[LISTER] = fork_child(lister, &m, 0);
    bg[CAT1] = fork_child(catter, &m, 1);
    bg[CAT2] = fork_child(catter, &m, 2);
    bg[CONSUMER] = fork_child(consumer, &m, 0);
    bg[CHURN] = fork_child(churner, &m, 0);
    /* The writers start once every background child is under way. */
    struct stat st;
    long long ready_end = bus_now_ms() + BUS_WAIT_MS;
    while ((stat(m.ready, &st) != 0 || st.st_size < BACKGROUND) && bus_now_ms() < ready_end)
        bus_pause_ms(5);
    cr_assert(stat(m.ready, &st) == 0 && st.st_size == BACKGROUND,
              "only %lld of %d background children got under way; %s",
              stat(m.ready, &st) == 0 ? (long long)st.st_size : 0LL, BACKGROUND, failures(&m));
    pid_t work = fork_child(worker, &m, 0);
    pid_t feed = fork_child(feeder, &m, 0);
    pid_t writers[2 * WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        writers[i] = fork_child(outbox_writer, &m, i);
        writers[WRITERS + i] = fork_child(send_writer, &m, i);
    }

    long long start = bus_now_ms(), end = start + WRITERS_WAIT_MS;
    int status[2 * WRITERS];
    for (int i = 0; i < 2 * WRITERS; i++)
        status[i] = wait_until(writers[i], end);
    int feed_status = wait_until(feed, end);
    int work_status = wait_until(work, end);
    long long writing_ms = bus_now_ms() - start;
    cr_assert(close(open(m.stop, O_WRONLY | O_CREAT | O_CLOEXEC, 0644)) == 0, "cannot create %s",
              m.stop);
    end = bus_now_ms() + OTHERS_WAIT_MS;
    int bg_status[BACKGROUND];
    for (int i = 0; i < BACKGROUND; i++)
        bg_status[i] = wait_until(bg[i], end);
    long long stopping_ms = bus_now_ms() - (end - OTHERS_WAIT_MS);

    static const char *const bg_names[BACKGROUND] = {"ls", "cat 1", "cat 2", "rm", "mkdir/rmdir"};
    for (int i = 0; i < WRITERS; i++) {
        cr_assert_eq(status[i], 0, "outbox writer w%d ended with %d (-1: deadline); %s", i,
                     status[i], failures(&m));
        cr_assert_eq(status[WRITERS + i], 0, "send writer s%d ended with %d (-1: deadline); %s", i,
                     status[WRITERS + i], failures(&m));
    }
    cr_assert_eq(feed_status, 0, "the feeder ended with %d; %s", feed_status, failures(&m));
    cr_assert_eq(work_status, 0, "the next worker ended with %d (-1: deadline); %s", work_status,
                 failures(&m));
    for (int i = 0; i < BACKGROUND; i++)
        cr_assert_eq(bg_status[i], 0, "the %s child ended with %d (-1: deadline); %s", bg_names[i],
                     bg_status[i], failures(&m));

    /* Delivered = sent; consumed + remaining = delivered; sequences exact. */
    static struct tally t;
    memset(&t, 0, sizeof t);
    t.ids = json_object();
    json_t *gone = record_lines(m.consumed);
    for (size_t k = 0; k < json_array_size(gone); k++)
        tally_envelope(&t, json_array_get(gone, k), true);
    for (int b = 0; b < BOXES; b++) {
        json_t *in = bus_inbox(boxes[b]);
        for (size_t k = 0; k < json_array_size(in); k++)
            tally_envelope(&t, json_array_get(in, k), false);
        json_decref(in);
    }
    for (int i = 0; i < WRITERS; i++)
        for (int n = 0; n < PER_WRITER; n++) {
            cr_assert_eq(t.hub[i][n], 1, "w%d-%d is in hub or consumed %d times", i, n,
                         t.hub[i][n]);
            cr_assert_eq(t.box[i][n], 1, "s%d-%d is in its inbox or consumed %d times", i, n,
                         t.box[i][n]);
        }
    int consumed = 0;
    for (int b = 0; b < BOXES; b++)
        consumed += t.consumed[b];
    cr_assert(consumed > 0, "the consumer removed nothing: the test proved nothing about rm");
    char *stats = bus_read(m.stats, NULL);
    cr_log_info("stress mix: %d writers sent %d messages in %lld ms; %d consumed; the "
                "background children stopped in %lld ms and did:\n%s",
                2 * WRITERS, 2 * WRITERS * PER_WRITER, writing_ms, consumed, stopping_ms,
                stats ? stats : "");
    free(stats);
    assert_counters("hub", WRITERS * PER_WRITER, t.consumed[0], t.remaining[0]);
    for (int b = 1; b < BOXES; b++)
        assert_counters(boxes[b], WRITERS * PER_WRITER / INBOXES, t.consumed[b], t.remaining[b]);
    json_decref(gone);

    /* The worker read every feeder message once, in order, and acked it. */
    json_t *worked = record_lines(m.worked);
    cr_assert_eq(json_array_size(worked), WORKER_MSGS, "the worker recorded %zu messages",
                 json_array_size(worked));
    for (size_t k = 0; k < WORKER_MSGS; k++) {
        json_t *env = json_array_get(worked, k);
        bus_assert_envelope(env, "feeder", "worker");
        tally_id(&t, bus_str(env, "msg_id"));
        char want[32];
        snprintf(want, sizeof want, "f-%zu", k);
        cr_assert_str_eq(bus_str(env, "payload"), want, "the worker's message %zu", k);
        cr_assert_eq(bus_int(env, "sequence"), (json_int_t)k + 1, "feeder -> worker sequence");
    }
    json_decref(worked);
    assert_counters("worker", WORKER_MSGS, WORKER_MSGS, 0);
    json_decref(t.ids);

    /* No churn agent is left, and the server still answers. */
    cr_assert_eq(bus_count(AT("agents")), 7 + 2 * WRITERS, "agents/ after the churn");
    bus_send("feeder", "worker", "still here");
    struct bus_cmd r;
    cr_assert_eq(bus_sh(&bus, &r, "timeout 10 cat agents/worker/next"), 0);
    cr_assert(strstr(r.out, "\"still here\""), "next after the stress: %s", r.out);
    bus_cmd_free(&r);
}

/* ======================================================================
 * 3. one poll() over 200 next fds
 * ====================================================================== */

#define POLL_AGENTS 20
#define POLL_PER_AGENT 10 /* 200 fds */
#define POLL_EVERY 4      /* mail goes to p0, p4, p8, p12, p16 */

/* Is thread tid still in poll()/ppoll() after timeout_ms? (false: it left) */
static bool still_in_poll(pid_t tid, int timeout_ms)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)tid);
    long long end = bus_now_ms() + timeout_ms;
    for (;;) {
        FILE *in = fopen(path, "re");
        if (!in)
            return false;
        long nr = -1;
        int n = fscanf(in, "%ld", &nr);
        fclose(in);
        if (n != 1 || (nr != POLL_SYSCALL && nr != SYS_ppoll))
            return false;
        if (bus_now_ms() >= end)
            return true;
        bus_pause_ms(5);
    }
}

BUS_TEST(stress, one_poll_over_200_next_fds_reports_exactly_the_agents_that_got_mail)
{
    bus_agents(&bus, "src", NULL);
    register_many("p", POLL_AGENTS);

    /* The sender is forked before any next is open (no shared file). */
    int go[2];
    cr_assert(pipe2(go, O_CLOEXEC) == 0);
    pid_t parent = (pid_t)syscall(SYS_gettid), getpid_of_test = getpid();
    char outbox[POLL_AGENTS][PATH_MAX];
    for (int a = 0; a < POLL_AGENTS; a++)
        snprintf(outbox[a], sizeof outbox[a], "%s", AT("agents/src/outbox/p%d", a));
    pid_t child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        alarm(CHILD_DEADLINE_S);
        close(go[1]);
        char c;
        if (read(go[0], &c, 1) != 1)
            _exit(2);
        if (!bus_wait_in_syscall(parent, POLL_SYSCALL, SYS_ppoll, BUS_WAIT_MS))
            _exit(3);
        for (int a = 0; a < POLL_AGENTS; a += POLL_EVERY) {
            char text[32];
            snprintf(text, sizeof text, "mail for p%d\n", a);
            if (bus_write(outbox[a], text) != 0)
                _exit(1);
        }
        /* The deadline of the test's poll(): a notification must end it. */
        if (still_in_poll(parent, BUS_WAIT_MS)) {
            syscall(SYS_tgkill, getpid_of_test, parent, SIGUSR1);
            _exit(4);
        }
        _exit(0);
    }
    close(go[0]);

    struct pollfd fds[POLL_AGENTS * POLL_PER_AGENT];
    for (int k = 0; k < POLL_AGENTS * POLL_PER_AGENT; k++) {
        fds[k].fd =
            open(AT("agents/p%d/next", k / POLL_PER_AGENT), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        cr_assert(fds[k].fd >= 0, "open agents/p%d/next: %s", k / POLL_PER_AGENT, strerror(errno));
        fds[k].events = POLLIN;
        fds[k].revents = 0;
    }
    const int nfds = POLL_AGENTS * POLL_PER_AGENT;
    int ready = poll(fds, (nfds_t)nfds, 0);
    cr_assert_eq(ready, 0, "poll of 200 empty next fds reports %d ready", ready);

    /* Block in one poll(), without a timeout, until the sender's messages
     * wake it; the sender interrupts it (SIGUSR1) if none does within 10 s. */
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    cr_assert(sigaction(SIGUSR1, &sa, &old_sa) == 0);
    cr_assert(write(go[1], "g", 1) == 1);
    close(go[1]);
    ready = poll(fds, (nfds_t)nfds, -1);
    int poll_errno = errno;
    int sender = bus_wait_child(child, BUS_WAIT_MS);
    sigaction(SIGUSR1, &old_sa, NULL);
    cr_assert_eq(sender, 0,
                 "the sender ended with %d (1: a send failed, 3: never saw poll, 4: poll was not "
                 "woken by the messages within %d ms and was interrupted)",
                 sender, BUS_WAIT_MS);
    cr_assert(ready >= 1, "poll over 200 fds returned %d (%s)", ready,
              ready < 0 ? strerror(poll_errno) : "nothing ready");
    for (int k = 0; k < nfds; k++)
        cr_assert(!(fds[k].revents & POLLIN) || (k / POLL_PER_AGENT) % POLL_EVERY == 0,
                  "the blocking poll reported next of p%d, which got no mail (revents %#x)",
                  k / POLL_PER_AGENT, (unsigned)fds[k].revents);

    /* Every message is in: exactly the mailed agents' fds are readable. */
    ready = poll(fds, (nfds_t)nfds, 0);
    int want = POLL_PER_AGENT * ((POLL_AGENTS + POLL_EVERY - 1) / POLL_EVERY);
    for (int k = 0; k < nfds; k++) {
        bool mailed = (k / POLL_PER_AGENT) % POLL_EVERY == 0;
        if (mailed)
            cr_assert(fds[k].revents & POLLIN, "fd %d on next of p%d (mailed) is not POLLIN (%#x)",
                      k, k / POLL_PER_AGENT, (unsigned)fds[k].revents);
        else
            cr_assert_eq(fds[k].revents, 0, "fd %d on next of p%d (no mail) reports %#x", k,
                         k / POLL_PER_AGENT, (unsigned)fds[k].revents);
    }
    cr_assert_eq(ready, want, "poll reports %d ready fds, want %d", ready, want);

    /* A readable fd gives its agent's envelope; an empty one EAGAIN. */
    for (int k = 0; k < nfds; k++) {
        int a = k / POLL_PER_AGENT;
        char buf[4096];
        errno = 0;
        ssize_t n = read(fds[k].fd, buf, sizeof buf - 1);
        if (a % POLL_EVERY != 0) {
            cr_assert(n < 0 && errno == EAGAIN,
                      "O_NONBLOCK read of next of p%d (empty): %zd, %s (want EAGAIN)", a, n,
                      strerror(errno));
            continue;
        }
        cr_assert(n > 0, "read of next of p%d after POLLIN: %zd, %s", a, n, strerror(errno));
        buf[n] = '\0';
        json_error_t e;
        json_t *env = json_loads(buf, 0, &e);
        cr_assert(env, "next of p%d is not JSON (%s): [%s]", a, e.text, buf);
        char to[16], payload[32];
        snprintf(to, sizeof to, "p%d", a);
        snprintf(payload, sizeof payload, "mail for p%d", a);
        bus_assert_envelope(env, "src", to);
        cr_assert_str_eq(bus_str(env, "payload"), payload);
        json_decref(env);
    }
    for (int k = 0; k < nfds; k++)
        cr_assert(close(fds[k].fd) == 0, "close of next fd %d: %s", k, strerror(errno));
    for (int a = 0; a < POLL_AGENTS; a++)
        cr_assert_eq(bus_count(AT("agents/p%d/inbox", a)), a % POLL_EVERY == 0 ? 1 : 0,
                     "agents/p%d/inbox after the poll", a);
}
