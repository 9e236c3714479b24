/*
 * harness.h — mount busfs for real in a temp dir and drive it like a user
 * (harness.c: mounting; harness_proc.c: processes; harness_bus.c: files,
 * JSON and envelope checks).
 *
 * Every test runs in its own process (Criterion). Its .init mounts a fresh
 * busfs with its own store under /tmp/busfs-test-XXXXXX/{store,mnt}; the test
 * body then uses the very shell commands (sh -c) and syscalls a user would.
 * The one thing a reader must know: a FUSE FLUSH is sent whenever a process
 * that shares an open file exits or execs, so while a message is half
 * written the test never forks — a separate "writer" process holds such a
 * file instead (struct bus_writer).
 *
 * Criterion ignores assertions made in .fini, so BUS_TEST() stops the server
 * at the end of the test body, where the assertion that it exited 0 counts;
 * .fini (bus_teardown) only cleans up after a failed or timed-out test.
 */
#ifndef BUSFS_TESTS_FS_HARNESS_H
#define BUSFS_TESTS_FS_HARNESS_H

#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define BUS_TEST_TIMEOUT 60 /* seconds, every test */
#define BUS_WAIT_MS 10000   /* mount, exit and child deadlines */

/* One mounted bus: the temp dir, its store and mountpoint, the server. */
struct bus_fixture {
    char dir[PATH_MAX];   /* /tmp/busfs-test-XXXXXX */
    char store[PATH_MAX]; /* dir/store */
    char mnt[PATH_MAX];   /* dir/mnt */
    char log[PATH_MAX];   /* dir/server.log: the server's stdout and stderr */
    pid_t pid;            /* the running server, 0 when none */
};

/* The fixture of the current test (one per test process). */
extern struct bus_fixture bus;

/*
 * BUS_TEST(suite, name) { body }: a test with a fresh bus mounted by
 * bus_setup (default options); BUS_TEST_WITH(suite, name, setup) mounts with
 * setup() instead (a function calling bus_start with options). After the
 * body the server is stopped with SIGTERM and must exit 0 (bus_stop).
 */
#define BUS_TEST_WITH(suite, name, setup)                                                          \
    static void suite##_##name##_body(void);                                                       \
    Test(suite, name, .init = setup, .fini = bus_teardown, .timeout = BUS_TEST_TIMEOUT)            \
    {                                                                                              \
        suite##_##name##_body();                                                                   \
        bus_stop(&bus);                                                                            \
    }                                                                                              \
    static void suite##_##name##_body(void)
#define BUS_TEST(suite, name) BUS_TEST_WITH(suite, name, bus_setup)

/* ---- lifecycle (harness.c) -------------------------------------------- */

/* BUSFS_BIN, or the test fails. */
const char *bus_bin(void);
/* Skips the test when /dev/fuse cannot be opened, unless CI=true: then fails. */
void bus_require_fuse(void);
/* Makes the temp dir with store/ and mnt/ (no server). */
void bus_prepare(struct bus_fixture *f);
/* Starts `busfs -f --store STORE ARGS... MNT` (ARGS: NULL-terminated) on a
 * prepared fixture and waits (10 s) until mountinfo lists MNT and a live
 * FUSE server answers there (a stale mount does not count). */
void bus_launch(struct bus_fixture *f, const char *const *args);
/* bus_prepare + bus_launch; the extra arguments end with NULL. */
void bus_start(struct bus_fixture *f, ...);
/* SIGTERM, wait (10 s), assert exit status 0 and that the mount is gone.
 * Keeps the temp dir (and so the store). */
void bus_terminate(struct bus_fixture *f);
/* The same with another signal (SIGINT). */
void bus_terminate_with(struct bus_fixture *f, int sig);
/* Waits (10 s) for the server to exit by itself (after `fusermount3 -u`),
 * asserting exit 0 and no mount left; after names the cause in messages. */
void bus_await_exit(struct bus_fixture *f, const char *after);
/* Restarts on the same store: bus_terminate + bus_launch (NULL-terminated). */
void bus_restart(struct bus_fixture *f, ...);
/* bus_terminate if running, then remove the temp dir. */
void bus_stop(struct bus_fixture *f);
/* kill -9 the server and reap it; the stale mount stays (ENOTCONN). */
void bus_kill9_leave_stale(struct bus_fixture *f);
/* `fusermount3 -uz MNT` (a stale mount after kill -9). */
void bus_clear_mount(struct bus_fixture *f);
/* kill -9 the server, reap it and clear the stale mount. */
void bus_kill9(struct bus_fixture *f);
/* Is there a mount at exactly this path? */
bool bus_is_mounted(const char *path);

/* Criterion .init / .fini for the global fixture. */
void bus_setup(void);
void bus_teardown(void);

/* ---- paths ----------------------------------------------------------- */

/* MNT/<formatted>, in one of 16 rotating static buffers. */
const char *bus_path(const struct bus_fixture *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define AT(...) bus_path(&bus, __VA_ARGS__)

/* ---- process utilities (harness_proc.c) ------------------------------ */

long long bus_now_ms(void); /* CLOCK_MONOTONIC */
void bus_pause_ms(long ms);
/* In a child before exec: closes every fd >= lowest. */
void bus_close_fds_from(int lowest);
/* A wait status as a shell shows it: the exit code, or 128 + signal. */
int bus_status_code(int wstatus);
/* waitpid with a deadline: the pid, 0 on timeout, -1 on error. */
pid_t bus_waitpid_deadline(pid_t pid, int *wstatus, int timeout_ms);

/* ---- commands (harness_proc.c) ---------------------------------------- */

/* The result of a command: exit status (128+N when killed by signal N, -1
 * when it did not end within its deadline) and its output, NUL-terminated. */
struct bus_cmd {
    int status;
    char *out;
    size_t out_len;
    char *err;
    size_t err_len;
};

/* Runs argv[0] (PATH search) in cwd (NULL: inherit) with LC_ALL=C, stdin
 * from /dev/null, capturing stdout and stderr; returns the status. r may be
 * NULL. Kills the command's process group after timeout_ms. */
int bus_exec(const char *cwd, char *const argv[], int timeout_ms, struct bus_cmd *r);
/* `sh -c CMD` in the mount dir (deadline 20 s); returns the status. */
int bus_sh(const struct bus_fixture *f, struct bus_cmd *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void bus_cmd_free(struct bus_cmd *r);

/* A command left running in the background with its stdout on a pipe. */
struct bus_proc {
    pid_t pid;
    int out_fd;
};
/* `sh -c CMD` in the mount dir, in the background (use `exec` in CMD so
 * that pid is the command itself). */
void bus_spawn(const struct bus_fixture *f, struct bus_proc *p, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Waits for it (timeout_ms) collecting stdout into *out (malloc'd, may be
 * NULL); returns its status, or -1 if it is still running (then it is
 * killed). */
int bus_proc_wait(struct bus_proc *p, int timeout_ms, char **out);
/* A round trip through the server (a readdir of the root): a request that
 * was queued before it, such as the READ of a reader just seen blocking in
 * read(), has been received by then. */
void bus_sync(const struct bus_fixture *f);
/* Waits for a child (timeout_ms); returns its status, or -1 if it did not
 * end in time (then it is killed). */
int bus_wait_child(pid_t pid, int timeout_ms);
/* Has the process exited? (does not reap) */
bool bus_proc_running(const struct bus_proc *p);
/* Polls /proc/PID/syscall until PID sits in syscall nr (or nr2 if >= 0) on
 * a file descriptor >= 3; false after timeout_ms. */
bool bus_wait_in_syscall(pid_t pid, long nr, long nr2, int timeout_ms);

/* ---- files (harness_bus.c) -------------------------------------------- */

/* Whole content of a file (NUL-terminated, *len without the NUL);
 * NULL with errno set on failure. */
char *bus_read(const char *path, size_t *len);
/* Like bus_read but the test fails on error. */
char *bus_read_ok(const char *path, size_t *len);

enum bus_step { BUS_STEP_NONE, BUS_STEP_OPEN, BUS_STEP_WRITE, BUS_STEP_CLOSE };
/* open(flags, 0644) + one write() + close(); returns 0 or the errno of the
 * step that failed (reported in *failed when not NULL). */
int bus_write_ex(const char *path, int flags, const void *data, size_t len, enum bus_step *failed);
/* O_WRONLY|O_CREAT|O_TRUNC, the string without its NUL; returns 0 or errno. */
int bus_write(const char *path, const char *text);
/* O_WRONLY|O_APPEND; returns 0 or errno. */
int bus_append(const char *path, const char *text);

/* Sorted names in a directory (no . and ..); NULL with errno on failure. */
char **bus_ls(const char *path, size_t *n);
void bus_ls_free(char **names, size_t n);
/* Number of entries, or -1 with errno. */
long bus_count(const char *path);

/*
 * A separate process that holds one file open, so the test can look at
 * the bus while a message is half written (see the top of this file).
 * Each call returns 0 or the errno of that step.
 */
struct bus_writer {
    pid_t pid;
    int cmd_fd;
    int res_fd;
};
int bus_writer_open(struct bus_writer *w, const char *path, int flags);
int bus_writer_write(struct bus_writer *w, const void *data, size_t len);
int bus_writer_close(struct bus_writer *w);

/* ---- stores made with the core library (harness_store.c) --------------- */

/* Registers and removes an agent `cycles` times in the store at path, leaving the
 * journal with every record. Call it in a child process that then _exits: the bus
 * is not closed (a clean close would compact the journal away). -1 on failure. */
int bus_store_churn_agents(const char *store, long cycles);

/* ---- JSON and the bus (harness_bus.c) -------------------------------- */

/* Parses one JSON document from a file; fails unless it is exactly one
 * JSON object followed by one newline. flags: jansson decoding flags. */
json_t *bus_json_file(const char *path, size_t flags);
/* Each line of a JSONL file must parse as a JSON object; returns them. */
json_t *bus_jsonl(const char *path);
/* Line count of a JSONL file, each line checked to be a JSON object. */
size_t bus_jsonl_count(const char *path);
/* The log at path has more lines than `before`, and every new line is a
 * JSON object carrying a non-empty string (a reason). */
void bus_assert_logged(const char *path, size_t before, const char *what);

/* Registers agents (mkdir agents/NAME), NULL-terminated. */
void bus_agents(struct bus_fixture *f, ...);
/* Writes text to agents/FROM/outbox/TO and asserts it was accepted. */
void bus_send(const char *from, const char *to, const char *text);

/* Envelopes in agents/AGENT/inbox in `ls` order. Each file name must be
 * <20 digits>-<msg_id>.json and its content one JSON object + newline that
 * passes bus_assert_envelope. */
json_t *bus_inbox(const char *agent);
/* The same for agents/AGENT/outbox (sent messages). */
json_t *bus_outbox(const char *agent);
/* Field formats and types of an envelope, and its from/to (NULL: any). */
void bus_assert_envelope(const json_t *env, const char *from, const char *to);
/* The object has exactly these keys (NULL-terminated). */
void bus_assert_keys(const json_t *obj, ...);
/* POSIX ERE match of a whole string. */
bool bus_match(const char *re, const char *s);
/* agents/AGENT/ctl parsed. */
json_t *bus_ctl(const char *agent);
/* Integer member of an object, or the test fails. */
json_int_t bus_int(const json_t *obj, const char *key);
/* String member of an object, or the test fails. */
const char *bus_str(const json_t *obj, const char *key);

#define BUS_MSG_ID_RE "MSG-[0-9]{8}-[0-9]{6}-[0-9a-f]{8}-[0-9]{20}"
#define BUS_TIMESTAMP_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z"

#endif
