/*
 * client — load generator for `make bench`.
 *
 *   client outbox       PATH N          N x (open(O_WRONLY|O_CREAT|O_TRUNC) + write 200 B + close)
 *   client outbox-procs P PATH N        the same from P processes in parallel, N/P each;
 *                                       a "%d" in PATH is the writer's number, 1..P
 *   client send-procs P PATH N          P processes, N/P each, each with one
 *                                       open(O_WRONLY|O_APPEND) of PATH (a `send` file)
 *                                       writing one record with a 200-byte payload to
 *                                       bob per write(); PATH may hold "%d" too
 *   client batch        PATH LINES N [TO]
 *                                       one open(O_WRONLY|O_APPEND), N messages written
 *                                       LINES newline-terminated JSON records per write(),
 *                                       each to TO (bob)
 *   client read         PATH N          N x (open(O_RDONLY) + read() with a 64 KiB buffer
 *                                       until it returns 0 + close)
 *   client append       PATH LINES N [METRICS]
 *                                       one open(O_WRONLY|O_APPEND), N metric points written
 *                                       LINES lines per write(), e.g.
 *                                       "coordination.time 123.4 ms phase=build\n", then close;
 *                                       the values vary, and with METRICS > 1 (at most 10)
 *                                       the lines cycle through METRICS metric names
 *
 *   client wake next NEXT OUTBOX CTL N [SAMPLES]
 *                                       wake-up latency: a forked reader blocks in read()
 *                                       of NEXT (agents/B/next); the sender (this process)
 *                                       waits until the reader sleeps in that read(), then
 *                                       open(OUTBOX, O_CREAT|O_WRONLY) + write 200 B + close.
 *                                       Latency = from just before the open() to the
 *                                       reader's read() returning (CLOCK_MONOTONIC, shared
 *                                       memory). Once the sender's close() returned, the
 *                                       reader consumes the message
 *                                       ("ack <msg_id>" written to CTL), closes NEXT and
 *                                       opens it again for the next sample. N samples.
 *   client wake inotify DIR N [SAMPLES] the same with the reader blocked in read() of an
 *                                       inotify fd watching DIR for IN_CLOSE_WRITE, the
 *                                       sender creating DIR/msg; the reader unlinks it.
 *                                       SAMPLES: a file each sample is appended to, one
 *                                       line "<latency us> <send us>"
 *   client fanout   PATH PREFIX WIDTH AGENTS PER LINES
 *                                       one open(O_WRONLY|O_APPEND) of a `send` file,
 *                                       AGENTS x PER records {"to":"<PREFIX><k>",...}
 *                                       (k = 1..AGENTS in turn, zero-padded to WIDTH
 *                                       digits), LINES records per write(), close
 *   client startup  PATH TIMEOUT RESULT -- PROGRAM ARGS...
 *                                       start-up time: execs PROGRAM (so it keeps this
 *                                       process's pid); a detached helper polls
 *                                       stat(PATH) every 0.5 ms and writes to RESULT the
 *                                       milliseconds from just before the exec to the
 *                                       first successful stat, or "exited" when PROGRAM
 *                                       died first, "timeout" after TIMEOUT seconds
 *   client shell    SHELL PATH N        N x spawn SHELL -c 'echo x > "$1"' sh PATH and wait;
 *                                       a non-zero exit status is fatal
 *   client consume  next|claim DIR N    N messages consumed from the agent directory DIR,
 *                                       each as a worker would: `next` (open + read
 *                                       until 0 + close, then unlink of its inbox file)
 *                                       or `claim` (the same read of claim, then unlink
 *                                       of the inflight/ file its lease names)
 *
 * Prints one line: "<rate> msgs/s (<count> msgs, <seconds> s, <us> us/op)", or for
 * read "<rate> reads/s (<count> reads, <seconds> s, <us> us/op, <bytes> bytes/read)"
 * where bytes/read is the mean over the N reads of the file, followed by
 * ", <min>-<max> bytes" when not every read returned the same size, and by
 * ", slowest <us> us", the longest single open+read+close; for append
 * "<rate> points/s (<count> points, <seconds> s, <us> us/write, <writes> writes,
 * <bytes> bytes)"; for wake "<rate> wakes/s (<count> wakes, p50 <us> us, p99 <us> us,
 * max <us> us, send p50 <us> us)", the send being the sender's open+write+close.
 * Any failing system call (including a short write, EAGAIN from a full inbox,
 * ENOSPC, EINTR, ...) is fatal: a message naming the call and the error, exit 1.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define OUTBOX_BODY 200
#define READ_BUF (64 * 1024)

static const char *prog = "client";

#include "tools.h"

static void report(long count, double secs)
{
	if (secs <= 0)
		secs = 1e-9;
	printf("%.1f msgs/s (%ld msgs, %.3f s, %.2f us/op)\n",
	       (double)count / secs, count, secs, secs * 1e6 / (double)count);
	fflush(stdout);
}

/* write() all of buf, treating a short write as an error (a message would be split). */
static void outbox_loop(const char *path, long n)
{
	char body[OUTBOX_BODY];
	for (size_t k = 0; k < sizeof body - 1; k++)
		body[k] = (char)('a' + k % 26);
	body[sizeof body - 1] = '\n';

	for (long i = 0; i < n; i++) {
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			die("open", path, i);
		write_all(fd, body, sizeof body, path, i);
		if (close(fd) != 0)
			die("close", path, i);
	}
}

static int cmd_outbox(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s outbox PATH N\n", prog);
		return 2;
	}
	long n = parse_count(argv[3], "N");
	double t0 = now();
	outbox_loop(argv[2], n);
	report(n, now() - t0);
	return 0;
}

/* One open `send` file, one record (a 200-byte payload, to bob) per write(), each
 * write answered before the next: a sender that keeps its file open as a Redis client
 * keeps its connection. */
static void send_loop(const char *path, long n)
{
	char rec[256];
	int rlen = snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":\"%0200d\"}\n", 0);
	int fd = open(path, O_WRONLY | O_APPEND);
	if (fd < 0)
		die("open", path, -1);
	for (long i = 0; i < n; i++)
		write_all(fd, rec, (size_t)rlen, path, i);
	if (close(fd) != 0)
		die("close", path, n);
}

static int cmd_procs(int argc, char **argv, void (*loop)(const char *, long))
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s %s P PATH N\n", prog, argv[1]);
		return 2;
	}
	long p = parse_count(argv[2], "P");
	const char *path = argv[3];
	long n = parse_count(argv[4], "N");
	long each = n / p;
	if (each < 1)
		each = 1;

	/* Children block on a pipe until all are forked; closing it starts them together. */
	int go[2];
	if (pipe(go) != 0)
		die("pipe", "-", -1);
	pid_t *pids = calloc((size_t)p, sizeof *pids);
	if (!pids)
		die("calloc", "-", -1);
	for (long k = 0; k < p; k++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork", "-", -1);
		if (pid == 0) {
			close(go[1]);
			char c;
			ssize_t r;
			do
				r = read(go[0], &c, 1);
			while (r < 0 && errno == EINTR);
			close(go[0]);
			char own[4096];
			if (strstr(path, "%d")) {
				/* %d: this writer's number, 1..P (its own agent, say) */
				const char *at = strstr(path, "%d");
				snprintf(own, sizeof own, "%.*s%ld%s", (int)(at - path), path, k + 1,
					 at + 2);
				path = own;
			}
			loop(path, each);
			_exit(0);
		}
		pids[k] = pid;
	}
	close(go[0]);
	double t0 = now();
	close(go[1]);
	int failed = 0;
	for (long k = 0; k < p; k++) {
		int st;
		if (waitpid(pids[k], &st, 0) < 0)
			die("waitpid", "-", -1);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			failed++;
	}
	double secs = now() - t0;
	free(pids);
	if (failed) {
		fprintf(stderr, "%s: %d of %ld writer processes failed\n", prog, failed, p);
		return 1;
	}
	report(each * p, secs);
	return 0;
}

static int cmd_batch(int argc, char **argv)
{
	if (argc != 5 && argc != 6) {
		fprintf(stderr, "usage: %s batch PATH LINES N [TO]\n", prog);
		return 2;
	}
	const char *path = argv[2];
	long lines = parse_count(argv[3], "LINES");
	long n = parse_count(argv[4], "N");
	const char *to = argc == 6 ? argv[5] : "bob";

	/* One record: {"to":"bob","payload":"<150 characters>"}\n  (178 bytes with bob) */
	char text[151];
	for (int k = 0; k < 150; k++)
		text[k] = (char)('a' + k % 26);
	text[150] = '\0';
	char rec[256];
	int rlen = snprintf(rec, sizeof rec, "{\"to\":\"%s\",\"payload\":\"%s\"}\n", to, text);
	if (rlen <= 0 || (size_t)rlen >= sizeof rec) {
		fprintf(stderr, "%s: record does not fit\n", prog);
		return 1;
	}

	size_t bufsz = (size_t)rlen * (size_t)lines;
	char *buf = malloc(bufsz);
	if (!buf)
		die("malloc", "-", -1);
	for (long k = 0; k < lines; k++)
		memcpy(buf + (size_t)k * (size_t)rlen, rec, (size_t)rlen);

	int fd = open(path, O_WRONLY | O_APPEND);
	if (fd < 0)
		die("open", path, -1);
	double t0 = now();
	long sent = 0, op = 0;
	while (sent < n) {
		long k = n - sent < lines ? n - sent : lines;
		write_all(fd, buf, (size_t)k * (size_t)rlen, path, op++);
		sent += k;
	}
	if (close(fd) != 0)
		die("close", path, -1);
	report(sent, now() - t0);
	free(buf);
	return 0;
}

static int cmd_read(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s read PATH N\n", prog);
		return 2;
	}
	const char *path = argv[2];
	long n = parse_count(argv[3], "N");
	char *buf = malloc(READ_BUF);
	if (!buf)
		die("malloc", "-", -1);
	long long total = 0, lo = -1, hi = -1;
	double slowest = 0;

	double t0 = now(), ti = t0;
	for (long i = 0; i < n; i++) {
		int fd = open(path, O_RDONLY);
		if (fd < 0)
			die("open", path, i);
		long long got = 0;
		for (;;) {
			ssize_t r = read(fd, buf, READ_BUF);
			if (r < 0)
				die("read", path, i);
			if (r == 0)
				break;
			got += r;
		}
		if (close(fd) != 0)
			die("close", path, i);
		total += got;
		if (lo < 0 || got < lo)
			lo = got;
		if (got > hi)
			hi = got;
		double te = now();
		if (te - ti > slowest)
			slowest = te - ti;
		ti = te;
	}
	double secs = ti - t0;
	free(buf);

	if (secs <= 0)
		secs = 1e-9;
	printf("%.1f reads/s (%ld reads, %.3f s, %.2f us/op, %.0f bytes/read",
	       (double)n / secs, n, secs, secs * 1e6 / (double)n, (double)total / (double)n);
	if (lo != hi)
		printf(", %lld-%lld bytes", lo, hi);
	printf(", slowest %.0f us)\n", slowest * 1e6);
	fflush(stdout);
	return 0;
}

/* Metric names of the append workload: the first one alone when METRICS is 1. */
static const char *const metric_names[] = {
	"coordination.time", "tasks.done",  "memory.mb",  "queue.depth", "tokens.in",
	"tokens.out",        "cpu.percent", "errors.seen", "retries",    "latency.llm",
};
static const char *const metric_units[] = {
	"ms", "count", "mb", "count", "count", "count", "percent", "count", "count", "ms",
};
#define N_METRIC_NAMES (sizeof metric_names / sizeof metric_names[0])

static int cmd_append(int argc, char **argv)
{
	if (argc != 5 && argc != 6) {
		fprintf(stderr, "usage: %s append PATH LINES N [METRICS]\n", prog);
		return 2;
	}
	const char *path = argv[2];
	long lines = parse_count(argv[3], "LINES");
	long n = parse_count(argv[4], "N");
	long metrics = argc == 6 ? parse_count(argv[5], "METRICS") : 1;
	if (metrics > (long)N_METRIC_NAMES) {
		fprintf(stderr, "%s: METRICS is at most %zu\n", prog, N_METRIC_NAMES);
		return 2;
	}

	/* A pool of lines, built before the clock starts: a whole number of writes of LINES
	 * lines, at least 10,000 lines, so that values vary from write to write. Writes take
	 * consecutive slices of it and wrap around. */
	long per = lines;
	long pool = ((10000 + per - 1) / per) * per;
	if (pool > n + per)
		pool = ((n + per - 1) / per) * per;
	size_t *off = malloc(((size_t)pool + 1) * sizeof *off);
	size_t cap = (size_t)pool * 64, len = 0;
	char *text = malloc(cap);
	if (!off || !text)
		die("malloc", "-", -1);
	static const char *const phases[] = {"build", "test", "deploy", "review"};
	for (long k = 0; k < pool; k++) {
		long m = k % metrics;
		/* A spread of values: 0.1 .. 99999.9, not monotone. */
		unsigned long v = ((unsigned long)k * 2654435761UL) % 1000000UL;
		off[k] = len;
		int w = snprintf(text + len, cap - len, "%s %lu.%lu %s phase=%s\n", metric_names[m],
				 v / 10, v % 10, metric_units[m], phases[(k / metrics) % 4]);
		if (w <= 0 || (size_t)w >= cap - len) {
			fprintf(stderr, "%s: metric line does not fit\n", prog);
			return 1;
		}
		len += (size_t)w;
	}
	off[pool] = len;

	int fd = open(path, O_WRONLY | O_APPEND);
	if (fd < 0)
		die("open", path, -1);
	double t0 = now();
	long sent = 0, op = 0, at = 0;
	long long bytes = 0;
	while (sent < n) {
		long k = n - sent < per ? n - sent : per;
		if (at + k > pool)
			at = 0;
		size_t b = off[at + k] - off[at];
		write_all(fd, text + off[at], b, path, op++);
		bytes += (long long)b;
		at += k;
		sent += k;
	}
	if (close(fd) != 0)
		die("close", path, -1);
	double secs = now() - t0;
	if (secs <= 0)
		secs = 1e-9;
	printf("%.1f points/s (%ld points, %.6f s, %.2f us/write, %ld writes, %lld bytes)\n",
	       (double)sent / secs, sent, secs, secs * 1e6 / (double)op, op, bytes);
	fflush(stdout);
	free(off);
	free(text);
	return 0;
}

/* ---------- wake: latency from a send to a blocked reader's read() returning ---------- */

#define WAKE_WAIT_MS 30000 /* a sample that takes longer than this is a hang */

struct wake_shared {
	_Atomic double t0;   /* the current sample's start, set by the sender */
	double lat[];        /* per sample, set by the reader */
};

static void wake_reader_next(const char *next, const char *ctl, long n,
			     struct wake_shared *sh, int ready, int sent)
{
	char *buf = malloc(READ_BUF);
	if (!buf)
		die("malloc", "-", -1);
	for (long i = 0; i < n; i++) {
		int fd = open(next, O_RDONLY);
		if (fd < 0)
			die("open", next, i);
		if (write(ready, "r", 1) != 1)
			die("write", "ready pipe", i);
		ssize_t r = read(fd, buf, READ_BUF - 1);
		double t1 = now();
		if (r < 0)
			die("read", next, i);
		sh->lat[i] = t1 - atomic_load(&sh->t0);
		if (r == 0) {
			fprintf(stderr, "%s: read(%s) at op %ld: end-of-file, no message\n", prog,
				next, i);
			exit(1);
		}
		buf[r] = '\0';
		/* Consume only after the sender's close() returned: its send stays undisturbed. */
		if (wait_byte(sent, WAKE_WAIT_MS) != 's') {
			fprintf(stderr, "%s: the sender did not finish sample %ld\n", prog, i);
			exit(1);
		}
		/* Consume it: "ack <msg_id>" to ctl, so the next read blocks again. */
		char *id = strstr(buf, "\"msg_id\":\"");
		char *end = id ? strchr(id + 10, '"') : NULL;
		if (!id || !end || end - (id + 10) > 200) {
			fprintf(stderr, "%s: no msg_id in the envelope read from %s: %.200s\n",
				prog, next, buf);
			exit(1);
		}
		char ack[256];
		int len = snprintf(ack, sizeof ack, "ack %.*s\n", (int)(end - (id + 10)), id + 10);
		int c = open(ctl, O_WRONLY);
		if (c < 0)
			die("open", ctl, i);
		write_all(c, ack, (size_t)len, ctl, i);
		if (close(c) != 0)
			die("close", ctl, i);
		if (close(fd) != 0)
			die("close", next, i);
	}
	free(buf);
}

static void wake_reader_inotify(const char *dir, const char *file, long n,
				struct wake_shared *sh, int ready, int sent)
{
	int fd = inotify_init1(IN_CLOEXEC);
	if (fd < 0)
		die("inotify_init1", dir, -1);
	if (inotify_add_watch(fd, dir, IN_CLOSE_WRITE) < 0)
		die("inotify_add_watch", dir, -1);
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (long i = 0; i < n; i++) {
		if (write(ready, "r", 1) != 1)
			die("write", "ready pipe", i);
		ssize_t r = read(fd, buf, sizeof buf);
		double t1 = now();
		if (r <= 0)
			die("read", "inotify fd", i);
		sh->lat[i] = t1 - atomic_load(&sh->t0);
		if (wait_byte(sent, WAKE_WAIT_MS) != 's') {
			fprintf(stderr, "%s: the sender did not finish sample %ld\n", prog, i);
			exit(1);
		}
		if (unlink(file) != 0) /* consume */
			die("unlink", file, i);
	}
	close(fd);
}

static int cmd_wake(int argc, char **argv)
{
	int is_next = argc >= 3 && strcmp(argv[2], "next") == 0;
	int is_ino = argc >= 3 && strcmp(argv[2], "inotify") == 0;
	if (!((is_next && (argc == 7 || argc == 8)) || (is_ino && (argc == 5 || argc == 6)))) {
		fprintf(stderr, "usage: %s wake next NEXT OUTBOX CTL N [SAMPLES]\n"
				"       %s wake inotify DIR N [SAMPLES]\n", prog, prog);
		return 2;
	}
	const char *target, *next = NULL, *ctl = NULL, *samples;
	char file[4096];
	long n;
	if (is_next) {
		next = argv[3];
		target = argv[4];
		ctl = argv[5];
		n = parse_count(argv[6], "N");
		samples = argc == 8 ? argv[7] : NULL;
	} else {
		snprintf(file, sizeof file, "%s/msg", argv[3]);
		target = file;
		n = parse_count(argv[4], "N");
		samples = argc == 6 ? argv[5] : NULL;
		unlink(file);
	}

	size_t shsz = sizeof(struct wake_shared) + (size_t)n * sizeof(double);
	struct wake_shared *sh = mmap(NULL, shsz, PROT_READ | PROT_WRITE,
				      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		die("mmap", "-", -1);
	double *send = malloc((size_t)n * sizeof *send);
	if (!send)
		die("malloc", "-", -1);
	int rp[2], sp[2]; /* reader -> sender: ready/done; sender -> reader: sent */
	if (pipe(rp) != 0 || pipe(sp) != 0)
		die("pipe", "-", -1);

	pid_t pid = fork();
	if (pid < 0)
		die("fork", "-", -1);
	if (pid == 0) {
		close(rp[0]);
		close(sp[1]);
		prog = "client wake reader";
		/* A sender that dies must not leave the reader parked on the mount for good. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1)
			_exit(1);
		if (is_next)
			wake_reader_next(next, ctl, n, sh, rp[1], sp[0]);
		else
			wake_reader_inotify(argv[3], file, n, sh, rp[1], sp[0]);
		if (write(rp[1], "d", 1) != 1)
			_exit(1);
		_exit(0);
	}
	close(rp[1]);
	close(sp[0]);
	int statfd = proc_stat_open(pid);

	char body[OUTBOX_BODY];
	for (size_t k = 0; k < sizeof body - 1; k++)
		body[k] = (char)('a' + k % 26);
	body[sizeof body - 1] = '\n';

	int failed = 0;
	long unparked = 0;
	double tstart = now();
	for (long i = 0; i < n; i++) {
		if (wait_byte(rp[0], WAKE_WAIT_MS) != 'r') {
			fprintf(stderr, "%s: the reader did not get ready for sample %ld (it failed or "
					"hung for %d s)\n", prog, i, WAKE_WAIT_MS / 1000);
			failed = 1;
			break;
		}
		/* Until the reader sleeps in its read() (at most 1 s, then send anyway). */
		double dl = now() + 1.0;
		while (proc_state(statfd) != 'S') {
			if (now() > dl) {
				unparked++;
				break;
			}
			sched_yield();
		}
		double t0 = now();
		atomic_store(&sh->t0, t0);
		int fd = open(target, O_CREAT | O_WRONLY, 0644);
		if (fd < 0)
			die("open", target, i);
		write_all(fd, body, sizeof body, target, i);
		if (close(fd) != 0)
			die("close", target, i);
		send[i] = now() - t0;
		if (write(sp[1], "s", 1) != 1)
			die("write", "sent pipe", i);
	}
	if (!failed && wait_byte(rp[0], WAKE_WAIT_MS) != 'd') {
		fprintf(stderr, "%s: the reader did not finish (it failed or hung for %d s)\n",
			prog, WAKE_WAIT_MS / 1000);
		failed = 1;
	}
	double secs = now() - tstart;
	if (failed)
		kill(pid, SIGKILL);
	int st;
	if (waitpid(pid, &st, 0) < 0)
		die("waitpid", "-", -1);
	if (failed || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "%s: wake reader failed\n", prog);
		return 1;
	}
	close(statfd);
	close(rp[0]);
	close(sp[1]);

	if (samples) {
		FILE *f = fopen(samples, "a");
		if (!f)
			die("fopen", samples, -1);
		for (long i = 0; i < n; i++)
			fprintf(f, "%.3f %.3f\n", sh->lat[i] * 1e6, send[i] * 1e6);
		if (fclose(f) != 0)
			die("fclose", samples, -1);
	}
	double *lat = malloc((size_t)n * sizeof *lat);
	if (!lat)
		die("malloc", "-", -1);
	memcpy(lat, sh->lat, (size_t)n * sizeof *lat);
	qsort(lat, (size_t)n, sizeof *lat, cmp_double);
	qsort(send, (size_t)n, sizeof *send, cmp_double);
	if (secs <= 0)
		secs = 1e-9;
	printf("%.1f wakes/s (%ld wakes, p50 %.1f us, p99 %.1f us, max %.1f us, send p50 %.1f us",
	       (double)n / secs, n, pct(lat, n, 0.5) * 1e6, pct(lat, n, 0.99) * 1e6,
	       lat[n - 1] * 1e6, pct(send, n, 0.5) * 1e6);
	if (unparked)
		printf(", %ld samples sent before the reader slept", unparked);
	printf(")\n");
	fflush(stdout);
	free(lat);
	free(send);
	munmap(sh, shsz);
	return 0;
}

/* ---------- fanout: many recipients through one `send` fd ---------- */

static int cmd_fanout(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: %s fanout PATH PREFIX WIDTH AGENTS PER LINES\n", prog);
		return 2;
	}
	const char *path = argv[2], *prefix = argv[3];
	long width = parse_count(argv[4], "WIDTH");
	long agents = parse_count(argv[5], "AGENTS");
	long per = parse_count(argv[6], "PER");
	long lines = parse_count(argv[7], "LINES");
	if (strlen(prefix) > 32 || width > 16) {
		fprintf(stderr, "%s: PREFIX at most 32 characters, WIDTH at most 16\n", prog);
		return 2;
	}
	char text[151];
	for (int k = 0; k < 150; k++)
		text[k] = (char)('a' + k % 26);
	text[150] = '\0';
	size_t cap = (size_t)lines * 256;
	char *buf = malloc(cap);
	if (!buf)
		die("malloc", "-", -1);

	int fd = open(path, O_WRONLY | O_APPEND);
	if (fd < 0)
		die("open", path, -1);
	long n = agents * per, sent = 0, op = 0;
	double t0 = now();
	while (sent < n) {
		size_t len = 0;
		long k;
		for (k = 0; k < lines && sent + k < n; k++)
			len += (size_t)snprintf(buf + len, cap - len,
						"{\"to\":\"%s%0*ld\",\"payload\":\"%s\"}\n", prefix,
						(int)width, (sent + k) % agents + 1, text);
		write_all(fd, buf, len, path, op++);
		sent += k;
	}
	if (close(fd) != 0)
		die("close", path, -1);
	report(sent, now() - t0);
	free(buf);
	return 0;
}

/* ---------- startup: exec a server, time until stat(PATH) succeeds ---------- */

static void put_result(const char *result, const char *text)
{
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", result);
	FILE *f = fopen(tmp, "w");
	if (!f)
		_exit(1);
	fputs(text, f);
	if (fclose(f) != 0 || rename(tmp, result) != 0)
		_exit(1);
}

static int cmd_startup(int argc, char **argv)
{
	if (argc < 7 || strcmp(argv[5], "--") != 0) {
		fprintf(stderr, "usage: %s startup PATH TIMEOUT RESULT -- PROGRAM ARGS...\n", prog);
		return 2;
	}
	const char *path = argv[2], *result = argv[4];
	long tmo = parse_count(argv[3], "TIMEOUT");
	int statfd = proc_stat_open(getpid());

	double t0 = now();
	pid_t a = fork();
	if (a < 0)
		die("fork", "-", -1);
	if (a == 0) {
		/* Detach: the helper is a grandchild, so the server never has a child to reap. */
		pid_t b = fork();
		if (b != 0)
			_exit(b < 0);
		int nul = open("/dev/null", O_RDWR);
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
		}
		double dl = t0 + (double)tmo;
		struct stat st;
		for (;;) {
			if (stat(path, &st) == 0) {
				char msg[64];
				snprintf(msg, sizeof msg, "%.3f\n", (now() - t0) * 1e3);
				put_result(result, msg);
				_exit(0);
			}
			char s = proc_state(statfd);
			if (s == '?' || s == 'Z' || s == 'X') {
				put_result(result, "exited\n");
				_exit(0);
			}
			if (now() > dl) {
				put_result(result, "timeout\n");
				_exit(0);
			}
			struct timespec ts = {0, 500000};
			nanosleep(&ts, NULL);
		}
	}
	int st;
	if (waitpid(a, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die("fork", "helper", -1);
	execv(argv[6], argv + 6);
	die("execv", argv[6], -1);
	return 1;
}

/* ---------- shell: echo x > PATH as a whole process ---------- */

extern char **environ;

static int cmd_shell(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s shell SHELL PATH N\n", prog);
		return 2;
	}
	const char *sh = argv[2], *path = argv[3];
	long n = parse_count(argv[4], "N");
	char *args[] = {(char *)"sh", (char *)"-c", (char *)"echo x > \"$1\"", (char *)"sh",
			(char *)path, NULL};
	double t0 = now();
	for (long i = 0; i < n; i++) {
		pid_t pid;
		int rc = posix_spawn(&pid, sh, NULL, NULL, args, environ);
		if (rc != 0) {
			errno = rc;
			die("posix_spawn", sh, i);
		}
		int st;
		if (waitpid(pid, &st, 0) < 0)
			die("waitpid", sh, i);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "%s: %s -c 'echo x > %s' failed at op %ld (status %d)\n", prog,
				sh, path, i, st);
			exit(1);
		}
	}
	report(n, now() - t0);
	return 0;
}

/* Reads a whole file (open + read until 0 + close) into buf; returns its length. */
static size_t read_whole(const char *path, char *buf, size_t size, long i)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		die("open", path, i);
	size_t len = 0;
	for (;;) {
		ssize_t r = read(fd, buf + len, size - 1 - len);
		if (r < 0)
			die("read", path, i);
		if (r == 0)
			break;
		len += (size_t)r;
		if (len >= size - 1) {
			fprintf(stderr, "%s: %s: more than %zu bytes at op %ld\n", prog, path, size, i);
			exit(1);
		}
	}
	buf[len] = '\0';
	if (close(fd) != 0)
		die("close", path, i);
	if (len == 0) {
		fprintf(stderr, "%s: %s: end-of-file at op %ld (nothing left to consume)\n", prog,
			path, i);
		exit(1);
	}
	return len;
}

/* The string value of "key":"..." in a JSON text (no escapes in the values read here). */
static void json_field(const char *text, const char *key, char *out, size_t n, long i)
{
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\":\"", key);
	const char *p = strstr(text, pat);
	const char *e = p ? strchr(p + strlen(pat), '"') : NULL;
	if (!p || !e || (size_t)(e - p - strlen(pat)) >= n) {
		fprintf(stderr, "%s: no %s in message %ld: %.200s\n", prog, key, i, text);
		exit(1);
	}
	p += strlen(pat);
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = '\0';
}

static int cmd_consume(int argc, char **argv)
{
	if (argc != 5 || (strcmp(argv[2], "next") != 0 && strcmp(argv[2], "claim") != 0)) {
		fprintf(stderr, "usage: %s consume next|claim DIR N\n", prog);
		return 2;
	}
	int claim = strcmp(argv[2], "claim") == 0;
	const char *dir = argv[3];
	long n = parse_count(argv[4], "N");
	char src[4096], file[4096 + 256], text[1 << 16], id[128], rel[256];
	snprintf(src, sizeof src, "%s/%s", dir, claim ? "claim" : "next");
	double t0 = now();
	for (long i = 0; i < n; i++) {
		read_whole(src, text, sizeof text, i);
		if (claim) {
			const char *lease = strstr(text, "\"lease\":");
			json_field(lease ? lease : text, "file", rel, sizeof rel, i);
			snprintf(file, sizeof file, "%s/%s", dir, rel);
		} else {
			/* inbox/<20-digit number>-<msg_id>.json, the number in the msg_id's tail */
			json_field(text, "msg_id", id, sizeof id, i);
			const char *num = strrchr(id, '-');
			snprintf(file, sizeof file, "%s/inbox/%s-%s.json", dir, num ? num + 1 : "", id);
		}
		if (unlink(file) != 0)
			die("unlink", file, i);
	}
	report(n, now() - t0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2) {
		if (strcmp(argv[1], "outbox") == 0)
			return cmd_outbox(argc, argv);
		if (strcmp(argv[1], "outbox-procs") == 0)
			return cmd_procs(argc, argv, outbox_loop);
		if (strcmp(argv[1], "send-procs") == 0)
			return cmd_procs(argc, argv, send_loop);
		if (strcmp(argv[1], "batch") == 0)
			return cmd_batch(argc, argv);
		if (strcmp(argv[1], "read") == 0)
			return cmd_read(argc, argv);
		if (strcmp(argv[1], "append") == 0)
			return cmd_append(argc, argv);
		if (strcmp(argv[1], "wake") == 0)
			return cmd_wake(argc, argv);
		if (strcmp(argv[1], "fanout") == 0)
			return cmd_fanout(argc, argv);
		if (strcmp(argv[1], "startup") == 0)
			return cmd_startup(argc, argv);
		if (strcmp(argv[1], "shell") == 0)
			return cmd_shell(argc, argv);
		if (strcmp(argv[1], "consume") == 0)
			return cmd_consume(argc, argv);
	}
	fprintf(stderr,
		"usage: %s outbox PATH N\n"
		"       %s outbox-procs P PATH N\n"
		"       %s send-procs P PATH N\n"
		"       %s batch PATH LINES N [TO]\n"
		"       %s read PATH N\n"
		"       %s append PATH LINES N [METRICS]\n"
		"       %s wake next NEXT OUTBOX CTL N [SAMPLES]\n"
		"       %s wake inotify DIR N [SAMPLES]\n"
		"       %s fanout PATH PREFIX WIDTH AGENTS PER LINES\n"
		"       %s startup PATH TIMEOUT RESULT -- PROGRAM ARGS...\n"
		"       %s shell SHELL PATH N\n"
		"       %s consume next|claim DIR N\n",
		prog, prog, prog, prog, prog, prog, prog, prog, prog, prog, prog, prog);
	return 2;
}
