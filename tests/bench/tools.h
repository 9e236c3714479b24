/* tools.h — what the load generators client.c and peers.c share: failing with a
 * message, the clock, argument parsing, whole writes, percentiles, and the two ends of
 * a wake-up measurement (is the reader asleep yet, one byte from it). Each program
 * defines `prog` (its name in messages) before including this. */
#ifndef BUSFS_BENCH_TOOLS_H
#define BUSFS_BENCH_TOOLS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* what(arg) failed, at op i when i >= 0: says so with errno and exits 1. */
static inline void die(const char *what, const char *arg, long i)
{
	int e = errno;
	if (i >= 0)
		fprintf(stderr, "%s: %s(%s) failed at op %ld: %s (errno %d)\n",
			prog, what, arg, i, strerror(e), e);
	else
		fprintf(stderr, "%s: %s(%s) failed: %s (errno %d)\n",
			prog, what, arg, strerror(e), e);
	exit(1);
}

/* CLOCK_MONOTONIC in seconds. */
static inline double now(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		perror("clock_gettime");
		exit(1);
	}
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A positive integer argument, or a message and exit 2. */
static inline long parse_count(const char *s, const char *what)
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

/* One write() of all len bytes, or a message and exit 1. */
static inline void write_all(int fd, const char *buf, size_t len, const char *path, long i)
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

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The p-th quantile (0..1) of n sorted samples, by nearest rank. */
static inline double pct(const double *sorted, long n, double p)
{
	long k = (long)(p * (double)n + 0.999999) - 1;
	if (k < 0)
		k = 0;
	if (k >= n)
		k = n - 1;
	return sorted[k];
}

/* /proc/PID/stat of pid, opened for proc_state (dies when it cannot be). */
static inline int proc_stat_open(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open", path, -1);
	return fd;
}

/* The state letter of a process from its /proc/PID/stat fd ('S': asleep, i.e.
 * blocked in its receive). */
static inline char proc_state(int fd)
{
	char buf[512];
	ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
	if (r <= 0)
		return '?';
	buf[r] = '\0';
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

/* One byte from fd within ms milliseconds; 0 on end-of-file or timeout. */
static inline char wait_byte(int fd, int ms)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	int r;
	do
		r = poll(&pf, 1, ms);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return 0;
	char c;
	ssize_t n;
	do
		n = read(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	return n == 1 ? c : 0;
}

#endif
