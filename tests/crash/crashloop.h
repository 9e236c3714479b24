/*
 * crashloop.h — the crash loop of "prove that nothing is lost": writers send
 * without pause while the server is kill -9'd and restarted again and again;
 * then every inbox is read and held against what the writers recorded.
 *
 * crashloop.c conducts it (options, the kill loop, the clean stop, the
 * summary); crashserver.c starts, kills and stops the server and runs
 * `busfs --check`; crashwriter.c is one writer process; crashconsumer.c one
 * consumer process (claim, then ack, nak or walk away); crashcheck.c reads
 * the logs, the inboxes and `events` and finds the violations.
 *
 * The one thing a reader must know: a writer records a message only after
 * its send returned success (close() returned 0 for outbox/B, write()
 * returned the full length for `send`), and it logs failed sends too, with
 * the step that failed. The checker accepts exactly one kind of surprise:
 * a message whose commit reached the store but whose reply died with the
 * server ("delivered but not recorded", DESIGN.md); it must still be whole
 * (a whole broadcast, a whole `send` write) and take its sequence number.
 * Consumers are held to the same rule: a message a consumer acked with
 * success is gone from the inbox and counts as present there exactly once;
 * an ack that failed with the server may have taken effect, and then the
 * message is in no inbox and no other ack; every token is handed out once.
 */
#ifndef BUSFS_TESTS_CRASH_CRASHLOOP_H
#define BUSFS_TESTS_CRASH_CRASHLOOP_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define CRASH_MAX_AGENTS 64 /* recipients are kept as a 64-bit mask */
#define CRASH_MAX_WRITERS (CRASH_MAX_AGENTS - 1)
#define CRASH_ALL (-1)      /* the recipient of a broadcast */
#define CRASH_ERRNO_SLOTS 160
#define CRASH_MAX_CONSUMERS 8

/* What the run needs to know; filled from the command line. */
struct crash_config {
    const char *bin;     /* the busfs binary */
    int writers;         /* writer processes, agents a0..a<writers-1> */
    int agents;          /* registered agents a0..a<agents-1>, fixed for the run */
    int kills;           /* kill -9s before stopping (at least) */
    long long messages;  /* recorded messages before stopping (at least) */
    long interval_ms;    /* mean time the server is up between kills */
    long max_seconds;    /* give up (FAIL) when the targets take longer; 0: never */
    int batch_max;       /* records per `send` write: 2..batch_max */
    int pct_outbox;      /* share of operations that are outbox/B sends */
    int pct_send;        /* ... `send` batches; the rest are outbox/all broadcasts */
    int payload_bytes;   /* padding after the identity in each payload */
    int check_every;     /* busfs --check on the crashed store after every Nth kill */
    int aim_pct;         /* share of kills aimed at a writer inside a commit */
    long rate;           /* messages per second, all writers together; 0: as fast as they go */
    int readers;         /* threads reading the inboxes at the end */
    unsigned long long seed;
    const char *tamper;  /* the checker's self-test: rm, dup or fake (see crashloop.c) */
    bool keep;           /* keep the temp dir even when the run passes */
    bool verbose;        /* a line per kill */
    const char *base;    /* where the temp dir goes (/tmp) */
    const char *inbox_capacity;  /* busfs --inbox-capacity (10000000: never full) */
    const char *store_max_bytes; /* busfs --store-max-bytes (64G: never full) */
    int consumers;       /* consumer processes that claim and ack (0: none, the v1 loop) */
    const char *lease;   /* busfs --lease, seconds (1: abandoned leases come back soon) */
};

/* The temp dir of one run. */
struct crash_paths {
    char dir[PATH_MAX - 64]; /* /tmp/busfs-crash-XXXXXX */
    char store[PATH_MAX];    /* dir/store */
    char mnt[PATH_MAX];      /* dir/mnt */
    char logs[PATH_MAX];     /* dir/logs: w<i>.log, server.log, check.log */
};

/* What the checker found; the counters are reported in the summary. */
struct crash_result {
    long long recorded;           /* message identities whose send returned success */
    long long recorded_envelopes; /* envelopes they must have produced */
    long long failed_messages;    /* identities whose send failed */
    long long present;            /* envelopes found in the inboxes */
    long long unrecorded_ids;     /* identities present although their send failed */
    long long unrecorded_envelopes;
    long long unrecorded_by_kind[3]; /* identities: outbox/B, send records, outbox/all */
    long long violations;
    long long acked;              /* envelopes a consumer acked with success */
    long long acked_unrecorded;   /* acks that failed with the server, yet took effect */
    long long claimed_again;      /* claims of a message that had been claimed before */
    long long events;             /* lines in `events` at the end, seq gapless */
};

/* One anonymous MAP_SHARED page between the conductor and the writers: the
 * stop flag and each writer's counters (each writer writes only its slot). */
struct crash_writer_stats {
    _Atomic long long ok_messages; /* identities recorded */
    _Atomic long long ok_ops;      /* operations that succeeded */
    _Atomic long long failed_ops;  /* operations that failed (any step) */
    _Atomic long long errno_count[CRASH_ERRNO_SLOTS];
    _Atomic int in_commit; /* 1 from just before a commit syscall until it returns */
};

/* A consumer's slot: ops are claims; ok_messages counts acks that succeeded. */
struct crash_shared {
    _Atomic int stop;
    struct crash_writer_stats w[CRASH_MAX_WRITERS];
    struct crash_writer_stats c[CRASH_MAX_CONSUMERS];
};

/* crashwriter.c: the writer process for agent a<index>; exits 0 once
 * shared->stop is set (3 when its log cannot be written). */
void crash_writer_main(int index, const struct crash_config *cfg, const struct crash_paths *paths,
                       struct crash_shared *shared) __attribute__((noreturn));

/* crashconsumer.c: consumer c<index> claims from every agent's `claim` and
 * acks (rm inflight/F or ctl ack), now and then naks or abandons the lease,
 * logging each claim to logs/c<index>.log; exits 0 once shared->stop is set. */
void crash_consumer_main(int index, const struct crash_config *cfg,
                         const struct crash_paths *paths, struct crash_shared *shared)
    __attribute__((noreturn));

/* crashserver.c: the one server process of the run. */
void crash_server_init(const struct crash_config *cfg, const struct crash_paths *paths);
pid_t crash_server_pid(void); /* 0 when none runs */
/* `busfs -f --store S --inbox-capacity .. --store-max-bytes .. [--clear-stale] M`;
 * waits (60 s) until a live server answers statfs at M. 0, or -1 after
 * printing why (it exited, or no mount in time). */
int crash_server_start(bool clear_stale);
/* Waits ms while the server runs; one that exits by itself is a violation
 * ("server-died"). False when it died or on Ctrl-C. */
bool crash_server_up_for(long ms);
/* kill -9, reap, `fusermount3 -uz M`; false when a mount is left. */
bool crash_server_kill9(void);
/* SIGTERM; it must exit 0 within 30 s and leave no mount (else a violation). */
bool crash_server_stop(const char *when);
/* After Ctrl-C or a set-up failure: stop it any way, clear the mount. */
void crash_server_abort(void);
/* `busfs --check --store S` must exit 0 (else a violation); output in logs/check.log. */
bool crash_store_check(const char *when);
/* A "=== crashloop T: ... ===" line in logs/server.log. */
void crash_server_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bool crash_is_mounted(const char *path);
bool crash_clear_mount(void);

/* Small utilities (crashloop.c). */
long long crash_now_ms(void); /* CLOCK_MONOTONIC */
double crash_elapsed_s(void); /* since the run started */
bool crash_interrupted(void); /* Ctrl-C or SIGTERM seen */
void crash_pause_ms(long ms); /* sleeps; cut short by Ctrl-C */
uint64_t crash_rnd_next(uint64_t *state); /* xorshift64* */
uint64_t crash_rnd_seed(uint64_t seed, uint64_t stream);

/* One line per violation kind with the first few examples; printed at the end. */
void crash_violation(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
long long crash_violation_count(void);
void crash_violation_report(void);

/* Reads the writers' logs (paths->logs/w<i>.log) and every inbox through the
 * mount (a running server), checks them and fills *res. Also sends one last
 * message from every writer to every other agent and checks that its sequence
 * follows the last one present. Returns the number of violations found. */
long long crash_verify(const struct crash_config *cfg, const struct crash_paths *paths,
                       struct crash_result *res);

#endif
