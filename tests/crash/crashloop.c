/*
 * crashloop.c — the conductor: kill -9 busfs at random moments while the
 * writers (crashwriter.c) send, restart it on the same store (crashserver.c),
 * N times; then stop everything cleanly, run `busfs --check`, and let
 * crashcheck.c prove that nothing recorded was lost or duplicated (see
 * crashloop.h). Options, the kill loop, the summary.
 *
 *   crashloop [options] [BUSFS]        (or BUSFS_BIN=...; --help lists options)
 *
 * Processes: the conductor owns the server process, the W writer processes
 * and the temp dir /tmp/busfs-crash-XXXXXX (store/, mnt/, logs/, and a copy of
 * the busfs binary, so a rebuild during a long run changes nothing). Writers
 * are forked before any file of the mount is opened here, so no process ever
 * shares (and so flushes) another's open file. The writers
 * share one anonymous MAP_SHARED page with the conductor: the stop flag and
 * their counters. The server gets PR_SET_PDEATHSIG=SIGTERM and the writers
 * SIGKILL, so nothing outlives a conductor that dies.
 *
 * A writer is never killed: only the server is. Its sends fail while the
 * server is down (ENOTCONN from the dead connection, ENOENT from the empty
 * mountpoint once the stale mount is cleared), are logged as failed and it
 * goes on with new identities (a retry with the same identity could be
 * present twice for good reasons). A FUSE request is only interrupted by a
 * fatal signal; a writer blocked on a dead server gets ENOTCONN when the
 * connection is aborted, so the conductor's deadline is for a live server that
 * stops answering (a hang is a failure).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "crashloop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WRITER_STOP_MS 30000

static struct crash_shared *shared;
static struct crash_config cfg;
static struct crash_paths paths;
static pid_t writer_pids[CRASH_MAX_WRITERS];
static pid_t consumer_pids[CRASH_MAX_CONSUMERS];
static volatile sig_atomic_t interrupted;
static long long t_start;

long long crash_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void crash_pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !interrupted) {
    }
}

double crash_elapsed_s(void)
{
    return (double)(crash_now_ms() - t_start) / 1000.0;
}

/* xorshift64*: each writer and the conductor have their own. */
uint64_t crash_rnd_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

uint64_t crash_rnd_seed(uint64_t seed, uint64_t stream)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + stream * 0xBF58476D1CE4E5B9ULL + 1;
    return s ? s : 1;
}

/* ---- violations (shared with crashcheck.c) ----------------------------- */

#define MAX_KINDS 32
#define EXAMPLES 12

static struct {
    const char *kind;
    long long count;
    char *examples[EXAMPLES];
} kinds[MAX_KINDS];
static int n_kinds;
static long long n_violations;

void crash_violation(const char *kind, const char *fmt, ...)
{
    int k = 0;
    while (k < n_kinds && strcmp(kinds[k].kind, kind) != 0)
        k++;
    if (k == n_kinds) {
        if (n_kinds == MAX_KINDS)
            k = MAX_KINDS - 1;
        else
            kinds[n_kinds++].kind = kind;
    }
    n_violations++;
    if (kinds[k].count < EXAMPLES) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&kinds[k].examples[kinds[k].count], fmt, ap) < 0)
            kinds[k].examples[kinds[k].count] = NULL;
        va_end(ap);
    }
    kinds[k].count++;
}

long long crash_violation_count(void)
{
    return n_violations;
}

void crash_violation_report(void)
{
    for (int k = 0; k < n_kinds; k++) {
        printf("  VIOLATION %-28s x %lld\n", kinds[k].kind, kinds[k].count);
        for (long long e = 0; e < kinds[k].count && e < EXAMPLES; e++)
            printf("      %s\n", kinds[k].examples[e] ? kinds[k].examples[e] : "(no memory)");
        if (kinds[k].count > EXAMPLES)
            printf("      ... and %lld more\n", kinds[k].count - EXAMPLES);
    }
}

/* ---- the writers ------------------------------------------------------- */

/* A writer or consumer process: main(index, ...) never returns. */
typedef void (*child_main_fn)(int index, const struct crash_config *cfg,
                              const struct crash_paths *paths, struct crash_shared *shared);

static pid_t child_start(child_main_fn child_main, int index)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    child_main(index, &cfg, &paths, shared);
    _exit(127);
}

static long long recorded_messages(void)
{
    long long n = 0;
    for (int i = 0; i < cfg.writers; i++)
        n += atomic_load(&shared->w[i].ok_messages);
    return n;
}

static long long failed_ops(void)
{
    long long n = 0;
    for (int i = 0; i < cfg.writers; i++)
        n += atomic_load(&shared->w[i].failed_ops);
    return n;
}

static long long consumer_sum(size_t offset)
{
    long long n = 0;
    for (int i = 0; i < cfg.consumers; i++)
        n += atomic_load((_Atomic long long *)((char *)&shared->c[i] + offset));
    return n;
}

/* Waits for one child the stop flag ended; one that does not end in time is
 * blocked on a live server that does not answer: a violation. */
static void child_stop(pid_t *pid, const char *what, int i, long long end)
{
    if (*pid <= 0)
        return;
    int st;
    pid_t r;
    while ((r = waitpid(*pid, &st, WNOHANG)) == 0 && crash_now_ms() < end)
        crash_pause_ms(5);
    if (r == 0) {
        crash_violation("writer-hang", "%s %d did not stop within %d ms (blocked on the mount?)",
                        what, i, WRITER_STOP_MS);
        kill(*pid, SIGKILL);
        waitpid(*pid, &st, 0);
    } else if (r == *pid && (!WIFEXITED(st) || WEXITSTATUS(st) != 0)) {
        crash_violation("writer-exit", "%s %d ended with status %d", what, i,
                        WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    *pid = 0;
}

/* Sets the stop flag and waits for every writer and consumer. */
static void writers_stop(void)
{
    atomic_store(&shared->stop, 1);
    long long end = crash_now_ms() + WRITER_STOP_MS;
    for (int i = 0; i < cfg.writers; i++)
        child_stop(&writer_pids[i], "writer", i, end);
    for (int i = 0; i < cfg.consumers; i++)
        child_stop(&consumer_pids[i], "consumer", i, end);
}

/* The errnos writers (or consumers) saw, and a violation for any that a dead
 * or absent server does not explain (EAGAIN, ENOSPC, EINVAL ... mean something
 * else broke). A consumer may also see ESTALE and ENOENT for an ack that came
 * after its lease had ended: it waited for a server that was down. */
static void report_errnos(const char *who, struct crash_writer_stats *stats, int n_stats)
{
    printf("  failed %s operations by errno:", who);
    long long total = 0;
    for (int e = 0; e < CRASH_ERRNO_SLOTS; e++) {
        long long n = 0;
        for (int i = 0; i < n_stats; i++)
            n += atomic_load(&stats[i].errno_count[e]);
        if (!n)
            continue;
        total += n;
        printf(" %s=%lld", e ? strerrorname_np(e) : "other", n);
        bool expected = e == ENOTCONN || e == ECONNABORTED || e == ENOENT || e == EIO ||
                        (stats == shared->c && e == ESTALE);
        if (!expected)
            crash_violation("unexpected-errno",
                            "%lld %s operations failed with %s (%s): not explained by a "
                            "server that is down",
                            n, who, e ? strerrorname_np(e) : "an out-of-range errno",
                            e ? strerror(e) : "?");
    }
    printf("%s\n", total ? "" : " none");
}

/* ---- the temp dir ------------------------------------------------------ */

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (type == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

static bool make_dirs(void)
{
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof tmpl, "%s/busfs-crash-XXXXXX", cfg.base);
    if (!mkdtemp(tmpl)) {
        printf("crashloop: mkdtemp %s: %s\n", tmpl, strerror(errno));
        return false;
    }
    char real[PATH_MAX];
    if (!realpath(tmpl, real) || strlen(real) >= sizeof paths.dir) {
        printf("crashloop: realpath %s: %s\n", tmpl, strerror(errno));
        return false;
    }
    snprintf(paths.dir, sizeof paths.dir, "%s", real);
    snprintf(paths.store, sizeof paths.store, "%s/store", paths.dir);
    snprintf(paths.mnt, sizeof paths.mnt, "%s/mnt", paths.dir);
    snprintf(paths.logs, sizeof paths.logs, "%s/logs", paths.dir);
    return mkdir(paths.store, 0700) == 0 && mkdir(paths.mnt, 0755) == 0 &&
           mkdir(paths.logs, 0755) == 0;
}

/* Copies the busfs binary into the temp dir: every restart runs the same
 * server even when `make` rebuilds ./busfs during a long run. */
static bool copy_binary(void)
{
    static char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s/busfs", paths.dir);
    int in = open(cfg.bin, O_RDONLY | O_CLOEXEC);
    int out = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
    bool ok = in >= 0 && out >= 0;
    char buf[1 << 16];
    ssize_t n;
    while (ok && (n = read(in, buf, sizeof buf)) != 0)
        ok = n > 0 && write(out, buf, (size_t)n) == n;
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) != 0)
        ok = false;
    if (!ok) {
        printf("crashloop: cannot copy %s to %s: %s\n", cfg.bin, copy, strerror(errno));
        return false;
    }
    cfg.bin = copy;
    return true;
}

/* ---- options ----------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: crashloop [options] [BUSFS]     (BUSFS, --busfs or BUSFS_BIN: the binary)\n"
            "  --writers W        writer processes (4)\n"
            "  --agents K         registered agents, K > W (W + 2)\n"
            "  --kills N          kill -9s at least (20)\n"
            "  --messages M       recorded messages at least before stopping (0)\n"
            "  --interval MS      mean up-time between kills, jittered 0.25x..1.75x (1000)\n"
            "  --max-seconds S    FAIL if the targets are not reached in S seconds (0: no limit)\n"
            "  --batch-max B      records per send write, 2..B (16)\n"
            "  --mix O,S          percent of outbox/B sends and send batches; the rest are\n"
            "                     outbox/all broadcasts (60,35)\n"
            "  --payload-bytes P  padding added to each payload (0)\n"
            "  --rate R           messages per second, all writers together (0: no limit)\n"
            "  --check-every N    busfs --check on the crashed store after every Nth kill\n"
            "                     (5; 0: never)\n"
            "  --aim PCT          share of kills aimed at a writer inside a commit (50)\n"
            "  --readers R        threads reading the inboxes at the end (4)\n"
            "  --inbox-capacity N busfs --inbox-capacity (10000000)\n"
            "  --store-max-bytes X busfs --store-max-bytes (64G)\n"
            "  --consumers C      consumer processes that claim and ack from every agent\n"
            "                     (0, at most 8)\n"
            "  --lease S          busfs --lease with consumers (1)\n"
            "  --seed S           random seed (from the clock)\n"
            "  --base DIR         where busfs-crash-XXXXXX goes (/tmp)\n"
            "  --keep             keep the temp dir when the run passes (always kept on FAIL)\n"
            "  --quiet            no line per kill\n"
            "  --tamper HOW       test the checker: rm, dup or fake before verifying (must FAIL);\n"
            "                     with consumers also unack or reack\n"
            "Exit: 0 PASS, 1 FAIL, 2 usage or set-up error.\n");
}

static long long number(const char *opt, const char *s, long long min)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min) {
        fprintf(stderr, "crashloop: %s needs a number >= %lld, not '%s'\n", opt, min, s);
        exit(2);
    }
    return v;
}

static void parse_options(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"busfs", required_argument, NULL, 'b'},
        {"writers", required_argument, NULL, 'w'},
        {"agents", required_argument, NULL, 'k'},
        {"kills", required_argument, NULL, 'n'},
        {"messages", required_argument, NULL, 'm'},
        {"interval", required_argument, NULL, 'i'},
        {"max-seconds", required_argument, NULL, 'x'},
        {"batch-max", required_argument, NULL, 'B'},
        {"mix", required_argument, NULL, 'M'},
        {"payload-bytes", required_argument, NULL, 'p'},
        {"rate", required_argument, NULL, 'R'},
        {"aim", required_argument, NULL, 'A'},
        {"check-every", required_argument, NULL, 'C'},
        {"tamper", required_argument, NULL, 'T'},
        {"readers", required_argument, NULL, 'r'},
        {"inbox-capacity", required_argument, NULL, 'c'},
        {"store-max-bytes", required_argument, NULL, 'S'},
        {"seed", required_argument, NULL, 's'},
        {"consumers", required_argument, NULL, 'u'},
        {"lease", required_argument, NULL, 'L'},
        {"base", required_argument, NULL, 'd'},
        {"keep", no_argument, NULL, 'K'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    cfg = (struct crash_config){
        .bin = getenv("BUSFS_BIN"),
        .writers = 4,
        .agents = 0,
        .kills = 20,
        .interval_ms = 1000,
        .batch_max = 16,
        .pct_outbox = 60,
        .pct_send = 35,
        .readers = 4,
        .aim_pct = 50,
        .check_every = 5,
        .verbose = true,
        .base = "/tmp",
        .inbox_capacity = "10000000",
        .store_max_bytes = "64G",
        .lease = "1",
    };
    bool seeded = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': cfg.bin = optarg; break;
        case 'w': cfg.writers = (int)number("--writers", optarg, 1); break;
        case 'k': cfg.agents = (int)number("--agents", optarg, 2); break;
        case 'n': cfg.kills = (int)number("--kills", optarg, 0); break;
        case 'm': cfg.messages = number("--messages", optarg, 0); break;
        case 'i': cfg.interval_ms = (long)number("--interval", optarg, 10); break;
        case 'x': cfg.max_seconds = (long)number("--max-seconds", optarg, 0); break;
        case 'B': cfg.batch_max = (int)number("--batch-max", optarg, 2); break;
        case 'M':
            if (sscanf(optarg, "%d,%d", &cfg.pct_outbox, &cfg.pct_send) != 2 ||
                cfg.pct_outbox < 0 || cfg.pct_send < 0 || cfg.pct_outbox + cfg.pct_send > 100) {
                fprintf(stderr, "crashloop: --mix wants O,S with O + S <= 100\n");
                exit(2);
            }
            break;
        case 'p': cfg.payload_bytes = (int)number("--payload-bytes", optarg, 0); break;
        case 'R': cfg.rate = (long)number("--rate", optarg, 0); break;
        case 'T': cfg.tamper = optarg; break;
        case 'C': cfg.check_every = (int)number("--check-every", optarg, 0); break;
        case 'A': cfg.aim_pct = (int)number("--aim", optarg, 0); break;
        case 'r': cfg.readers = (int)number("--readers", optarg, 1); break;
        case 'c':
            number("--inbox-capacity", optarg, 1);
            cfg.inbox_capacity = optarg;
            break;
        case 'S': cfg.store_max_bytes = optarg; break;
        case 'u': cfg.consumers = (int)number("--consumers", optarg, 0); break;
        case 'L':
            number("--lease", optarg, 1);
            cfg.lease = optarg;
            break;
        case 's':
            cfg.seed = (unsigned long long)number("--seed", optarg, 0);
            seeded = true;
            break;
        case 'd': cfg.base = optarg; break;
        case 'K': cfg.keep = true; break;
        case 'q': cfg.verbose = false; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc)
        cfg.bin = argv[optind++];
    if (optind < argc || !cfg.bin || !cfg.bin[0]) {
        usage(stderr);
        exit(2);
    }
    if (cfg.agents == 0)
        cfg.agents = cfg.writers + 2;
    if (cfg.writers > CRASH_MAX_WRITERS || cfg.agents > CRASH_MAX_AGENTS ||
        cfg.agents <= cfg.writers) {
        fprintf(stderr, "crashloop: want writers < agents <= %d\n", CRASH_MAX_AGENTS);
        exit(2);
    }
    if (cfg.consumers > CRASH_MAX_CONSUMERS) {
        fprintf(stderr, "crashloop: at most %d consumers\n", CRASH_MAX_CONSUMERS);
        exit(2);
    }
    if (cfg.batch_max > 512)
        cfg.batch_max = 512;
    if (!seeded) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        cfg.seed = (unsigned long long)ts.tv_nsec ^ ((unsigned long long)getpid() << 20);
    }
    static char real[PATH_MAX];
    if (!realpath(cfg.bin, real) || access(real, X_OK) != 0) {
        fprintf(stderr, "crashloop: busfs binary %s: %s\n", cfg.bin, strerror(errno));
        exit(2);
    }
    cfg.bin = real;
}

/* ---- the run ----------------------------------------------------------- */

bool crash_interrupted(void)
{
    return interrupted;
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* An aimed kill: waits (up to 200 ms) until a writer or consumer is inside a
 * commit syscall (close of outbox/B, write to `send`, an ack or nak), then lets a random 0..60 us
 * pass, so that the kill lands before, inside or after the server's commit.
 * Returns true when it found one. */
static bool wait_for_commit(uint64_t *rng)
{
    long long end = crash_now_ms() + 200;
    while (crash_now_ms() < end && !interrupted) {
        for (int i = 0; i < cfg.writers + cfg.consumers; i++) {
            struct crash_writer_stats *st =
                i < cfg.writers ? &shared->w[i] : &shared->c[i - cfg.writers];
            if (!atomic_load(&st->in_commit))
                continue;
            struct timespec t0, t;
            long spin_ns = (long)(crash_rnd_next(rng) % 60000);
            clock_gettime(CLOCK_MONOTONIC, &t0);
            do
                clock_gettime(CLOCK_MONOTONIC, &t);
            while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < spin_ns);
            return true;
        }
    }
    return false;
}

/* --tamper: the checker's own test. Before the verification, do on purpose
 * what busfs must never do, so the run must FAIL naming it: `rm` consumes one
 * message from a1's inbox (lost + sequence), `dup` sends a recorded identity
 * of writer 0 again (duplicate + reordered), `fake` adds to writer 0's log a
 * recorded send that never happened (lost). With consumers: `unack` drops an
 * acked claim from consumer 0's log, as if an ack had eaten a message nobody
 * finished (lost + sequence); `reack` logs one acked message as acked again
 * under a new token (duplicate). */
static void tamper_consumer_log(const char *how)
{
    char log[PATH_MAX + 16];
    snprintf(log, sizeof log, "%s/c0.log", paths.logs);
    FILE *in = fopen(log, "re");
    char (*lines)[512] = calloc(1u << 20, sizeof *lines);
    size_t n = 0, victim = (size_t)-1;
    while (in && lines && n < (1u << 20) && fgets(lines[n], sizeof lines[n], in))
        if (lines[n++][0] == 'k' && victim == (size_t)-1 && n > 100)
            victim = n - 1;
    if (in)
        fclose(in);
    FILE *out = victim != (size_t)-1 ? fopen(log, "we") : NULL;
    for (size_t k = 0; out && k < n; k++)
        if (k != victim || strcmp(how, "reack") == 0)
            fputs(lines[k], out);
    if (out && strcmp(how, "reack") == 0) {
        char outcome, name[300];
        int agent, writer, err;
        long long id, seq, token, delivery;
        if (sscanf(lines[victim], "%c %d %299s %d %lld %lld %lld %lld %d", &outcome, &agent, name,
                   &writer, &id, &seq, &token, &delivery, &err) == 9)
            fprintf(out, "k %d %s %d %lld %lld %lld %lld 0\n", agent, name, writer, id, seq,
                    token + 1000000000000LL, delivery + 1);
    }
    printf("crashloop: tamper: %s %s", how, victim != (size_t)-1 && out ? lines[victim] : "nothing\n");
    if (out)
        fclose(out);
    free(lines);
}

static void tamper(const char *how)
{
    char log[PATH_MAX + 16];
    snprintf(log, sizeof log, "%s/w0.log", paths.logs);
    if (strcmp(how, "unack") == 0 || strcmp(how, "reack") == 0) {
        tamper_consumer_log(how);
        return;
    }
    if (strcmp(how, "rm") == 0) {
        char dir[PATH_MAX + 32];
        snprintf(dir, sizeof dir, "%s/agents/a1/inbox", paths.mnt);
        DIR *d = opendir(dir);
        struct dirent *de;
        char victim[512] = "";
        int seen = 0;
        while (d && (de = readdir(d)) != NULL)
            if (de->d_name[0] != '.' && ++seen == 100)
                snprintf(victim, sizeof victim, "%s", de->d_name);
        if (d)
            closedir(d);
        char path[PATH_MAX + 600];
        snprintf(path, sizeof path, "%s/%s", dir, victim);
        printf("crashloop: tamper: rm %s: %s\n", path,
               victim[0] && unlink(path) == 0 ? "done" : strerror(errno));
        return;
    }
    FILE *in = fopen(log, "re");
    char line[256], kind, step;
    unsigned long long id = 0, op = 0, last = 0;
    int to = 0, err, found = 0;
    while (in && fgets(line, sizeof line, in)) {
        unsigned long long i;
        int t;
        if (sscanf(line, "%c %llu %d %llu %c %d", &kind, &i, &t, &op, &step, &err) != 6)
            continue;
        last = i;
        if (!found && kind == 'O' && step == '-' && i > 10) {
            found = 1;
            id = i;
            to = t;
        }
    }
    if (in)
        fclose(in);
    if (strcmp(how, "dup") == 0 && found) {
        char path[PATH_MAX + 64], body[64];
        snprintf(path, sizeof path, "%s/agents/a0/outbox/a%d", paths.mnt, to);
        int len = snprintf(body, sizeof body, "w0-%llu\n", id);
        int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
        bool ok = fd >= 0 && write(fd, body, (size_t)len) == len;
        ok = fd >= 0 && close(fd) == 0 && ok;
        printf("crashloop: tamper: sent w0-%llu to a%d again: %s\n", id, to,
               ok ? "done" : strerror(errno));
    } else if (strcmp(how, "fake") == 0) {
        FILE *out = fopen(log, "ae");
        if (out) {
            fprintf(out, "O %llu 1 999999999 - 0\n", last + 1);
            fclose(out);
        }
        printf("crashloop: tamper: w0-%llu to a1 added to %s as recorded\n", last + 1, log);
    } else {
        printf("crashloop: tamper: nothing done (%s)\n", how);
    }
}

/* VmRSS of a process in MiB, -1 when unknown. */
static double rss_mib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    double kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %lf kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib < 0 ? -1 : kib / 1024.0;
}

/* Tears everything down after Ctrl-C or a set-up failure; keeps the temp dir. */
static void __attribute__((noreturn)) abort_run(const char *why)
{
    printf("crashloop: %s; stopping (temp dir kept: %s)\n", why, paths.dir);
    atomic_store(&shared->stop, 1);
    for (int i = 0; i < cfg.writers; i++)
        if (writer_pids[i] > 0) {
            kill(writer_pids[i], SIGKILL);
            waitpid(writer_pids[i], NULL, 0);
        }
    for (int i = 0; i < cfg.consumers; i++)
        if (consumer_pids[i] > 0) {
            kill(consumer_pids[i], SIGKILL);
            waitpid(consumer_pids[i], NULL, 0);
        }
    crash_server_abort();
    exit(2);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    parse_options(argc, argv);
    t_start = crash_now_ms();
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                  0);
    if (shared == MAP_FAILED) {
        perror("crashloop: mmap");
        return 2;
    }
    const char *original = cfg.bin;
    if (!make_dirs() || !copy_binary())
        return 2;
    crash_server_init(&cfg, &paths);
    printf("crashloop: %d writers, %d consumers, %d agents, %d kills, >= %lld messages, "
           "interval ~%ld ms, rate %ld/s, seed %llu\n  busfs %s\n  temp dir %s\n",
           cfg.writers, cfg.consumers, cfg.agents, cfg.kills, cfg.messages, cfg.interval_ms, cfg.rate, cfg.seed,
           original, paths.dir);

    crash_server_note("start #0");
    if (crash_server_start(false) < 0)
        abort_run("the first start failed");
    for (int k = 0; k < cfg.agents; k++) {
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/agents/a%d", paths.mnt, k);
        if (mkdir(path, 0755) != 0) {
            printf("crashloop: mkdir %s: %s\n", path, strerror(errno));
            abort_run("cannot register the agents");
        }
    }
    for (int i = 0; i < cfg.writers; i++) {
        writer_pids[i] = child_start(crash_writer_main, i);
        if (writer_pids[i] < 0)
            abort_run("fork of a writer failed");
    }
    for (int i = 0; i < cfg.consumers; i++) {
        consumer_pids[i] = child_start(crash_consumer_main, i);
        if (consumer_pids[i] < 0)
            abort_run("fork of a consumer failed");
    }

    /* The kill loop. */
    uint64_t rng = crash_rnd_seed(cfg.seed, 0);
    int kills = 0;
    long long restart_total = 0, restart_max = 0, last_recorded = 0;
    int idle_intervals = 0, aimed_kills = 0, checks_after_kill = 0;
    bool gave_up = false, broken = false;
    long long t_loop = crash_now_ms();
    while (kills < cfg.kills || recorded_messages() < cfg.messages) {
        if (interrupted)
            abort_run("interrupted");
        if (cfg.max_seconds && crash_now_ms() - t_start > cfg.max_seconds * 1000) {
            gave_up = true;
            break;
        }
        /* Up-time: 0.25x..1.75x the interval; one time in ten right after the
         * mount, so the first requests after a replay are hit too. */
        long up = crash_rnd_next(&rng) % 10 == 0
                      ? (long)(crash_rnd_next(&rng) % 30)
                      : cfg.interval_ms / 4 +
                            (long)(crash_rnd_next(&rng) % (uint64_t)(cfg.interval_ms * 3 / 2 + 1));
        bool alive = crash_server_up_for(up);
        if (interrupted)
            abort_run("interrupted");
        bool aimed = alive && (int)(crash_rnd_next(&rng) % 100) < cfg.aim_pct &&
                     wait_for_commit(&rng);
        aimed_kills += aimed;
        long long t_kill = crash_now_ms();
        crash_server_note("kill -9 #%d (pid %d)%s%s", kills + 1, (int)crash_server_pid(),
                          aimed ? " aimed at a commit" : "",
                          alive ? "" : " (it had died by itself)");
        if (!crash_server_kill9())
            abort_run("the stale mount could not be cleared");
        kills++;
        /* Now and then the offline checker on the crashed store: a kill -9
         * leaves a consistent store (a torn journal tail at most). */
        long long check_ms = 0;
        if (cfg.check_every && kills % cfg.check_every == 0) {
            long long t_check = crash_now_ms();
            char when[64];
            snprintf(when, sizeof when, "right after kill -9 #%d", kills);
            crash_store_check(when);
            checks_after_kill++;
            check_ms = crash_now_ms() - t_check;
        }
        crash_server_note("restart #%d", kills);
        if (crash_server_start(true) < 0) {
            /* A store that a crash left unusable: the worst finding of all. */
            crash_violation("restart", "busfs did not start after kill -9 #%d (see "
                            "logs/server.log)", kills);
            crash_server_abort();
            broken = true;
            break;
        }
        long long down = crash_now_ms() - t_kill - check_ms;
        restart_total += down;
        if (down > restart_max)
            restart_max = down;
        long long rec = recorded_messages();
        if (rec == last_recorded)
            idle_intervals++;
        if (cfg.verbose || kills % 25 == 0)
            printf("  %7.1fs kill %d after %ld ms up%s: recorded %lld (+%lld), failed ops %lld, "
                   "down %lld ms\n",
                   crash_elapsed_s(), kills, up, aimed ? " (aimed)" : "", rec, rec - last_recorded,
                   failed_ops(), down);
        last_recorded = rec;
    }
    double loop_s = (double)(crash_now_ms() - t_loop) / 1000.0;

    /* Stop: writers, then the server cleanly, then the offline check. */
    writers_stop();
    long long recorded_live = recorded_messages();
    double server_rss = -1;
    long long t_verify = crash_now_ms();
    struct crash_result res = {0};
    if (broken) {
        crash_store_check("after the failed restart");
    } else {
        server_rss = rss_mib(crash_server_pid());
        crash_server_note("SIGTERM (final stop)");
        crash_server_stop("after the kill loop");
        crash_store_check("after the kill loop and a clean stop");
        crash_server_note("start for verification");
    }
    /* Restart and read every inbox. */
    if (broken) {
        printf("crashloop: no verification: the server could not be restarted\n");
    } else if (crash_server_start(true) < 0) {
        crash_violation("restart", "busfs did not start on the store after the clean stop");
    } else {
        if (cfg.tamper)
            tamper(cfg.tamper);
        crash_verify(&cfg, &paths, &res);
        crash_server_note("SIGTERM (after verification)");
        crash_server_stop("after verification");
        crash_store_check("after verification");
    }
    double verify_s = (double)(crash_now_ms() - t_verify) / 1000.0;
    if (gave_up)
        crash_violation("targets", "gave up after %ld s: %d kills of %d, %lld messages of %lld",
                        cfg.max_seconds, kills, cfg.kills, recorded_live, cfg.messages);
    if (!broken && res.recorded != recorded_live)
        crash_violation("writer-logs", "the writers counted %lld recorded messages, their logs "
                        "hold %lld", recorded_live, res.recorded);

    long long failed = failed_ops();
    printf("\ncrashloop summary (seed %llu)\n", cfg.seed);
    printf("  kills survived             %d (%d aimed at a commit; down %lld ms on average, "
           "%lld ms at most; %d intervals without a recorded send)\n",
           kills, aimed_kills, kills ? restart_total / kills : 0, restart_max, idle_intervals);
    printf("  busfs --check              %d times on a crashed store, 2 after clean stops\n",
           checks_after_kill);
    printf("  messages recorded          %lld (%lld envelopes, %.0f msg/s under fire)\n",
           res.recorded, res.recorded_envelopes, loop_s > 0 ? (double)res.recorded / loop_s : 0);
    printf("  failed sends               %lld operations, %lld messages with an identity\n",
           failed, res.failed_messages);
    report_errnos("writer", shared->w, cfg.writers);
    if (cfg.consumers) {
        printf("  claims                     %lld (%lld of a message claimed before), "
               "%lld failed\n",
               consumer_sum(offsetof(struct crash_writer_stats, ok_ops)), res.claimed_again,
               consumer_sum(offsetof(struct crash_writer_stats, failed_ops)));
        printf("  acked                      %lld envelopes (%lld more whose ack failed with the "
               "server but took effect: allowed)\n",
               res.acked, res.acked_unrecorded);
        report_errnos("consumer", shared->c, cfg.consumers);
    }
    printf("  envelopes present          %lld (acked ones included)\n", res.present);
    printf("  events                     %lld lines, seq gapless\n", res.events);
    printf("  delivered but unrecorded   %lld messages (%lld outbox/B, %lld send records, %lld "
           "broadcasts; %lld envelopes): allowed\n",
           res.unrecorded_ids, res.unrecorded_by_kind[0], res.unrecorded_by_kind[1],
           res.unrecorded_by_kind[2], res.unrecorded_envelopes);
    printf("  elapsed                    %.1f s (kill loop %.1f s, verification %.1f s)\n",
           crash_elapsed_s(), loop_s, verify_s);
    struct rusage self;
    getrusage(RUSAGE_SELF, &self);
    printf("  memory                     busfs %.0f MiB RSS at the end of the kill loop; "
           "crashloop %.0f MiB at most\n",
           server_rss, (double)self.ru_maxrss / 1024.0);
    bool pass = crash_violation_count() == 0;
    if (!pass)
        crash_violation_report();
    if (pass && !cfg.keep) {
        if (!crash_is_mounted(paths.mnt))
            nftw(paths.dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    } else {
        printf("  temp dir kept: %s (store/, logs/w<i>.log, logs/server.log, logs/check.log)\n",
               paths.dir);
    }
    printf("%s\n", pass ? "PASS" : "FAIL");
    return pass ? 0 : 1;
}
