/*
 * client — load generator for `make bench`.
 *
 *   client outbox       PATH N          N x (open(O_WRONLY|O_CREAT|O_TRUNC) + write 200 B + close)
 *   client outbox-procs P PATH N        the same from P processes in parallel, N/P each
 *   client batch        PATH LINES N    one open(O_WRONLY|O_APPEND), N messages written
 *                                       LINES newline-terminated JSON records per write()
 *   client read         PATH N          N x (open(O_RDONLY) + read() with a 64 KiB buffer
 *                                       until it returns 0 + close)
 *   client append       PATH LINES N [METRICS]
 *                                       one open(O_WRONLY|O_APPEND), N metric points written
 *                                       LINES lines per write(), e.g.
 *                                       "coordination.time 123.4 ms phase=build\n", then close;
 *                                       the values vary, and with METRICS > 1 (at most 10)
 *                                       the lines cycle through METRICS metric names
 *
 * Prints one line: "<rate> msgs/s (<count> msgs, <seconds> s, <us> us/op)", or for
 * read "<rate> reads/s (<count> reads, <seconds> s, <us> us/op, <bytes> bytes/read)"
 * where bytes/read is the mean over the N reads of the file, followed by
 * ", <min>-<max> bytes" when not every read returned the same size, and by
 * ", slowest <us> us", the longest single open+read+close; for append
 * "<rate> points/s (<count> points, <seconds> s, <us> us/write, <writes> writes,
 * <bytes> bytes)".
 * Any failing system call (including a short write, EAGAIN from a full inbox,
 * ENOSPC, EINTR, ...) is fatal: a message naming the call and the error, exit 1.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define OUTBOX_BODY 200
#define READ_BUF (64 * 1024)

static const char *prog = "client";

static void die(const char *what, const char *path, long i)
{
	int e = errno;
	if (i >= 0)
		fprintf(stderr, "%s: %s(%s) failed at op %ld: %s (errno %d)\n",
			prog, what, path, i, strerror(e), e);
	else
		fprintf(stderr, "%s: %s(%s) failed: %s (errno %d)\n",
			prog, what, path, strerror(e), e);
	exit(1);
}

static double now(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		perror("clock_gettime");
		exit(1);
	}
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long parse_count(const char *s, const char *what)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v <= 0) {
		fprintf(stderr, "%s: bad %s '%s' (a positive integer)\n", prog, what, s);
		exit(2);
	}
	return v;
}

static void report(long count, double secs)
{
	if (secs <= 0)
		secs = 1e-9;
	printf("%.1f msgs/s (%ld msgs, %.3f s, %.2f us/op)\n",
	       (double)count / secs, count, secs, secs * 1e6 / (double)count);
	fflush(stdout);
}

/* write() all of buf, treating a short write as an error (a message would be split). */
static void write_all(int fd, const char *buf, size_t len, const char *path, long i)
{
	ssize_t w = write(fd, buf, len);
	if (w < 0)
		die("write", path, i);
	if ((size_t)w != len) {
		fprintf(stderr, "%s: write(%s) at op %ld: short write %zd of %zu bytes\n",
			prog, path, i, w, len);
		exit(1);
	}
}

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

static int cmd_outbox_procs(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s outbox-procs P PATH N\n", prog);
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
			outbox_loop(path, each);
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
	if (argc != 5) {
		fprintf(stderr, "usage: %s batch PATH LINES N\n", prog);
		return 2;
	}
	const char *path = argv[2];
	long lines = parse_count(argv[3], "LINES");
	long n = parse_count(argv[4], "N");

	/* One record: {"to":"bob","payload":"<150 characters>"}\n  (178 bytes) */
	char text[151];
	for (int k = 0; k < 150; k++)
		text[k] = (char)('a' + k % 26);
	text[150] = '\0';
	char rec[256];
	int rlen = snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":\"%s\"}\n", text);
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

int main(int argc, char **argv)
{
	if (argc >= 2) {
		if (strcmp(argv[1], "outbox") == 0)
			return cmd_outbox(argc, argv);
		if (strcmp(argv[1], "outbox-procs") == 0)
			return cmd_outbox_procs(argc, argv);
		if (strcmp(argv[1], "batch") == 0)
			return cmd_batch(argc, argv);
		if (strcmp(argv[1], "read") == 0)
			return cmd_read(argc, argv);
		if (strcmp(argv[1], "append") == 0)
			return cmd_append(argc, argv);
	}
	fprintf(stderr,
		"usage: %s outbox PATH N\n"
		"       %s outbox-procs P PATH N\n"
		"       %s batch PATH LINES N\n"
		"       %s read PATH N\n"
		"       %s append PATH LINES N [METRICS]\n",
		prog, prog, prog, prog, prog);
	return 2;
}
