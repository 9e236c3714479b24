/*
 * peers — the load generator of peers.sh: busfs against the systems users would pick
 * instead, each doing the same workload with the same 200-byte payloads.
 *
 *   peers flow  SYS TARGET N P   W1 (P = 1) and W2 (P = 8): P producer processes send
 *                                N/P messages each, every send waiting for its
 *                                acknowledgement, while one consumer process receives
 *                                one message per call and acknowledges each. The clock
 *                                runs from the release of the producers (all connected)
 *                                to the consumer having received and acknowledged
 *                                every message. Each payload carries its producer and
 *                                sequence ("P03 S000000042 abc..."); the consumer
 *                                counts distinct messages and duplicates, and checks
 *                                nothing is left queued at the end: any loss, duplicate
 *                                or stray message fails the run (exit 1, "FAIL").
 *   peers batch SYS TARGET N B   W3: one producer, N messages in batches of B with the
 *                                system's own batching, all acknowledged; no consumer.
 *                                mq and maildir have none: N single sends (mq with a
 *                                consumer draining, as its queue holds only msg_max).
 *   peers wake  SYS TARGET N     W5: a forked consumer blocks in its receive call; once
 *                                it sleeps there (/proc/PID/stat says S), this process
 *                                sends one message. Latency = from just before the send
 *                                to the consumer's call returning with the message
 *                                (CLOCK_MONOTONIC, shared memory); the consumer
 *                                acknowledges it after the send returned. N samples.
 *   peers mq-unlink NAME         remove a POSIX message queue (peers.sh's clean-up)
 *
 * SYS and TARGET, and what one send, one receive and one acknowledgement are:
 *   busfs  MOUNT  open(MOUNT/agents/alice/outbox/bob, O_WRONLY|O_CREAT|O_TRUNC) + write
 *                 + close; read() of agents/bob/claim (lease); unlink of the
 *                 inflight/ file the lease names. Batch: agents/alice/send, B records
 *                 {"to":"bob","payload":"<200 bytes>"} per write().
 *   redis-list   PORT  LPUSH peers:list; BRPOP (takes it: no separate ack). Batch: one
 *                 LPUSH with B values.
 *   redis-stream PORT  XADD peers:stream * p <body>; XREADGROUP GROUP g c COUNT 1;
 *                 XACK. Batch: B pipelined XADDs, then their B replies.
 *   js     URL    js_Publish to peers.q of stream PEERS (file storage, 1 replica; made
 *                 when missing, purged by the consumer); a push consumer's
 *                 natsSubscription_NextMsg (ack explicit); natsMsg_AckSync. Batch:
 *                 js_PublishAsync with at most B unacknowledged, then
 *                 js_PublishAsyncComplete.
 *   mq     NAME   mq_send (mq_maxmsg = /proc/sys/fs/mqueue/msg_max, at most 1000);
 *                 mq_receive (takes it). The consumer creates the queue afresh.
 *   maildir DIR   write DIR/tmp/<unique> (open + write + close), rename into new/;
 *                 readdir of new/ (inotify IN_MOVED_TO on new/ when it is empty),
 *                 open + read + close of the file; unlink.
 *
 * Prints one line: flow "<rate> msgs/s (<count> msgs, <seconds> s, <P> producers, send
 * p50 <us> us, p99 <us> us, <distinct> distinct, <dups> duplicates)"; batch "<rate>
 * msgs/s (<count> msgs, <seconds> s, ...)"; wake "<rate> wakes/s (<count> wakes, p50
 * <us> us, p99 <us> us, max <us> us, send p50 <us> us)". Any failing call is fatal: a
 * message naming it, exit 1. No receive waits longer than 30 s, and every process
 * ends itself (SIGALRM) after PEERS_TIMEOUT seconds (environment, default 300).
 */
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis.h>
#include <limits.h>
#include <mqueue.h>
#include <nats/nats.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BODY 200            /* payload bytes, every system */
#define RECV_WAIT_MS 30000  /* a receive that waits longer than this is a hang */
#define MQ_MSGSIZE 256
#define JS_STREAM "PEERS"
#define JS_SUBJECT "peers.q"
#define REDIS_LIST "peers:list"
#define REDIS_STREAM "peers:stream"

static const char *prog = "peers";

#include "tools.h"

/* ---------- helpers ---------- */

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static struct timespec deadline_rt(int ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static void *xmalloc(size_t n)
{
	void *p = calloc(1, n ? n : 1);
	if (!p)
		die("calloc", "-", -1);
	return p;
}

/* "P03 S000000042 " and letters up to BODY bytes: no quote, backslash or newline, and
 * not JSON, so busfs keeps it as a plain string payload. */
static void make_body(char *b, long prod, long seq)
{
	char head[32];
	int k = snprintf(head, sizeof head, "P%02ld S%09ld ", prod % 100, seq % 1000000000L);
	memcpy(b, head, (size_t)k);
	for (int j = k; j < BODY; j++)
		b[j] = (char)('a' + j % 26);
}

/* The producer and sequence of a payload made by make_body; 0 when it is not one. */
static int parse_body(const char *p, size_t len, long *prod, long *seq)
{
	if (len < 15 || p[0] != 'P' || p[3] != ' ' || p[4] != 'S' || p[14] != ' ')
		return 0;
	long a = 0, b = 0;
	for (int k = 1; k < 3; k++) {
		if (p[k] < '0' || p[k] > '9')
			return 0;
		a = a * 10 + (p[k] - '0');
	}
	for (int k = 5; k < 14; k++) {
		if (p[k] < '0' || p[k] > '9')
			return 0;
		b = b * 10 + (p[k] - '0');
	}
	*prod = a;
	*seq = b;
	return 1;
}

static void put_byte(int fd, char c)
{
	if (write(fd, &c, 1) != 1)
		die("write", "pipe", -1);
}

static unsigned timeout_s(void)
{
	const char *t = getenv("PEERS_TIMEOUT");
	long v = t && *t ? atol(t) : 300;
	return v > 0 ? (unsigned)v : 300;
}

/* A child: killed with its parent, and never older than PEERS_TIMEOUT. */
static void child_setup(const char *name)
{
	prog = name;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1)
		_exit(1);
	alarm(timeout_s()); /* a fork does not inherit its parent's alarm */
}

/* ---------- the systems ---------- */

struct conn {
	const char *target;
	long seq;        /* maildir: unique names */
	double t_have;   /* when the last receive had its message in hand */
	/* busfs */
	char path[PATH_MAX];     /* producer: outbox/bob; consumer: agents/bob */
	char claim[PATH_MAX + 16];
	char ackpath[PATH_MAX + 256];
	int fd;                  /* an open claim */
	char *buf;
	size_t len;
	/* redis */
	redisContext *rc;
	redisReply *reply;
	char id[64];
	/* nats */
	natsConnection *nc;
	jsCtx *js;
	natsSubscription *sub;
	natsMsg *msg;
	atomic_long js_errors;
	/* mq */
	mqd_t mq;
	/* maildir */
	int ino;
	char **names;
	size_t nnames, at, cap;
	char cur[NAME_MAX + 1];
};

struct sysops {
	const char *name;
	void (*open_prod)(struct conn *c);
	void (*send)(struct conn *c, const char *body, size_t len, long i);
	void (*open_cons)(struct conn *c);   /* and empty the queue (or check it is) */
	void (*prep)(struct conn *c, long i);  /* before a wake sample's ready (optional) */
	const char *(*recv)(struct conn *c, size_t *len, long i);
	void (*ack)(struct conn *c, long i);
	long (*leftover)(struct conn *c);    /* messages still queued or leased */
	void (*batch)(struct conn *c, const char *body, long n, long b); /* optional */
	void (*close)(struct conn *c);
};

/* ----- busfs ----- */

static long count_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		die("opendir", dir, -1);
	long n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static void busfs_open_prod(struct conn *c)
{
	snprintf(c->path, sizeof c->path, "%s/agents/alice/outbox/bob", c->target);
}

static void busfs_send(struct conn *c, const char *body, size_t len, long i)
{
	int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open", c->path, i);
	write_all(fd, body, len, c->path, i);
	if (close(fd) != 0)
		die("close", c->path, i);
}

static long busfs_leftover(struct conn *c)
{
	char d[PATH_MAX + 16];
	snprintf(d, sizeof d, "%s/inbox", c->path);
	long n = count_dir(d);
	snprintf(d, sizeof d, "%s/inflight", c->path);
	return n + count_dir(d);
}

static void busfs_open_cons(struct conn *c)
{
	snprintf(c->path, sizeof c->path, "%s/agents/bob", c->target);
	snprintf(c->claim, sizeof c->claim, "%s/claim", c->path);
	c->buf = xmalloc(1 << 16);
	c->fd = -1;
	long left = busfs_leftover(c);
	if (left)
		fail("%s holds %ld messages before the run", c->path, left);
}

static void busfs_prep(struct conn *c, long i)
{
	c->fd = open(c->claim, O_RDONLY);
	if (c->fd < 0)
		die("open", c->claim, i);
}

/* Reads claim until the envelope's line is complete: the message is in hand. */
static const char *busfs_recv(struct conn *c, size_t *len, long i)
{
	if (c->fd < 0)
		busfs_prep(c, i);
	c->len = 0;
	while (!memchr(c->buf, '\n', c->len)) {
		ssize_t r = read(c->fd, c->buf + c->len, (1 << 16) - 1 - c->len);
		if (r < 0)
			die("read", c->claim, i);
		if (r == 0)
			fail("read(%s) at op %ld: end-of-file, no message", c->claim, i);
		c->len += (size_t)r;
		if (c->len >= (1 << 16) - 1)
			fail("%s: envelope over 64 KiB at op %ld", c->claim, i);
	}
	c->t_have = now();
	c->buf[c->len] = '\0';
	const char *p = strstr(c->buf, "\"payload\":\"");
	const char *e = p ? strchr(p + 11, '"') : NULL;
	if (!p || !e)
		fail("no string payload in the envelope at op %ld: %.300s", i, c->buf);
	*len = (size_t)(e - (p + 11));
	return p + 11;
}

/* The rest of the read (end-of-file), close, then rm of the inflight/ file named by
 * the lease: the ack. */
static void busfs_ack(struct conn *c, long i)
{
	for (;;) {
		ssize_t r = read(c->fd, c->buf + c->len, (1 << 16) - 1 - c->len);
		if (r < 0)
			die("read", c->claim, i);
		if (r == 0)
			break;
		c->len += (size_t)r;
		if (c->len >= (1 << 16) - 1)
			fail("%s: claim over 64 KiB at op %ld", c->claim, i);
	}
	c->buf[c->len] = '\0';
	if (close(c->fd) != 0)
		die("close", c->claim, i);
	c->fd = -1;
	const char *l = strstr(c->buf, "\"lease\":");
	const char *f = l ? strstr(l, "\"file\":\"") : NULL;
	const char *e = f ? strchr(f + 8, '"') : NULL;
	if (!e || e - (f + 8) > 250)
		fail("no lease file in the claim at op %ld: %.300s", i, c->buf);
	snprintf(c->ackpath, sizeof c->ackpath, "%s/%.*s", c->path, (int)(e - (f + 8)), f + 8);
	if (unlink(c->ackpath) != 0)
		die("unlink", c->ackpath, i);
}

static void busfs_batch(struct conn *c, const char *body, long n, long b)
{
	char path[PATH_MAX + 32];
	snprintf(path, sizeof path, "%s/agents/alice/send", c->target);
	char rec[BODY + 64];
	int rl = snprintf(rec, sizeof rec, "{\"to\":\"bob\",\"payload\":\"%.*s\"}\n", BODY, body);
	char *buf = xmalloc((size_t)rl * (size_t)b);
	for (long k = 0; k < b; k++)
		memcpy(buf + (size_t)k * (size_t)rl, rec, (size_t)rl);
	int fd = open(path, O_WRONLY | O_APPEND);
	if (fd < 0)
		die("open", path, -1);
	long op = 0;
	for (long sent = 0; sent < n;) {
		long k = n - sent < b ? n - sent : b;
		write_all(fd, buf, (size_t)k * (size_t)rl, path, op++);
		sent += k;
	}
	if (close(fd) != 0)
		die("close", path, -1);
	free(buf);
}

static void busfs_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->buf);
}

/* ----- Redis (list and stream) ----- */

static redisReply *rcmd_check(struct conn *c, redisReply *r, const char *what, long i)
{
	if (!r)
		fail("redis %s at op %ld: %s", what, i, c->rc->errstr[0] ? c->rc->errstr : "no reply");
	if (r->type == REDIS_REPLY_ERROR)
		fail("redis %s at op %ld: %s", what, i, r->str);
	return r;
}

static void redis_connect(struct conn *c)
{
	struct timeval tv = {5, 0};
	c->rc = redisConnectWithTimeout("127.0.0.1", atoi(c->target), tv);
	if (!c->rc || c->rc->err)
		fail("redis connect to port %s: %s", c->target, c->rc ? c->rc->errstr : "out of memory");
	/* Longer than any blocking command's own timeout. */
	struct timeval io = {RECV_WAIT_MS / 1000 + 30, 0};
	if (redisSetTimeout(c->rc, io) != REDIS_OK)
		fail("redis: cannot set the socket timeout");
}

static void redis_simple(struct conn *c, const char *cmd)
{
	freeReplyObject(rcmd_check(c, redisCommand(c->rc, cmd), cmd, -1));
}

static void rlist_send(struct conn *c, const char *body, size_t len, long i)
{
	redisReply *r = rcmd_check(c, redisCommand(c->rc, "LPUSH " REDIS_LIST " %b", body, len),
				   "LPUSH", i);
	if (r->type != REDIS_REPLY_INTEGER)
		fail("redis LPUSH at op %ld: reply type %d", i, r->type);
	freeReplyObject(r);
}

static void rlist_open_cons(struct conn *c)
{
	redis_connect(c);
	redis_simple(c, "DEL " REDIS_LIST);
}

static const char *rlist_recv(struct conn *c, size_t *len, long i)
{
	redisReply *r = rcmd_check(c, redisCommand(c->rc, "BRPOP " REDIS_LIST " %d",
						   RECV_WAIT_MS / 1000), "BRPOP", i);
	c->t_have = now();
	if (r->type == REDIS_REPLY_NIL)
		fail("redis BRPOP at op %ld: nothing within %d s", i, RECV_WAIT_MS / 1000);
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[1]->type != REDIS_REPLY_STRING)
		fail("redis BRPOP at op %ld: unexpected reply", i);
	c->reply = r;
	*len = r->element[1]->len;
	return r->element[1]->str;
}

static void redis_free_reply(struct conn *c, long i)
{
	(void)i;
	freeReplyObject(c->reply);
	c->reply = NULL;
}

static long rlist_leftover(struct conn *c)
{
	redisReply *r = rcmd_check(c, redisCommand(c->rc, "LLEN " REDIS_LIST), "LLEN", -1);
	long n = r->type == REDIS_REPLY_INTEGER ? (long)r->integer : -1;
	freeReplyObject(r);
	return n;
}

/* One LPUSH with b values per batch, each batch waiting for its reply. */
static void rlist_batch(struct conn *c, const char *body, long n, long b)
{
	const char **argv = xmalloc(((size_t)b + 2) * sizeof *argv);
	size_t *argl = xmalloc(((size_t)b + 2) * sizeof *argl);
	argv[0] = "LPUSH";
	argl[0] = 5;
	argv[1] = REDIS_LIST;
	argl[1] = strlen(REDIS_LIST);
	for (long k = 0; k < b; k++) {
		argv[k + 2] = body;
		argl[k + 2] = BODY;
	}
	long op = 0;
	for (long sent = 0; sent < n; op++) {
		long k = n - sent < b ? n - sent : b;
		redisReply *r = rcmd_check(c, redisCommandArgv(c->rc, (int)k + 2, argv, argl),
					   "LPUSH", op);
		if (r->type != REDIS_REPLY_INTEGER)
			fail("redis LPUSH at op %ld: reply type %d", op, r->type);
		freeReplyObject(r);
		sent += k;
	}
	free(argv);
	free(argl);
}

static void redis_close(struct conn *c)
{
	if (c->reply)
		freeReplyObject(c->reply);
	if (c->rc)
		redisFree(c->rc);
}

static void rstream_send(struct conn *c, const char *body, size_t len, long i)
{
	redisReply *r = rcmd_check(
		c, redisCommand(c->rc, "XADD " REDIS_STREAM " * p %b", body, len), "XADD", i);
	if (r->type != REDIS_REPLY_STRING)
		fail("redis XADD at op %ld: reply type %d", i, r->type);
	freeReplyObject(r);
}

static void rstream_open_cons(struct conn *c)
{
	redis_connect(c);
	redis_simple(c, "DEL " REDIS_STREAM);
	redis_simple(c, "XGROUP CREATE " REDIS_STREAM " g $ MKSTREAM");
}

static const char *rstream_recv(struct conn *c, size_t *len, long i)
{
	redisReply *r = rcmd_check(c, redisCommand(c->rc, "XREADGROUP GROUP g c COUNT 1 BLOCK %d "
						   "STREAMS " REDIS_STREAM " >", RECV_WAIT_MS),
				   "XREADGROUP", i);
	c->t_have = now();
	if (r->type == REDIS_REPLY_NIL)
		fail("redis XREADGROUP at op %ld: nothing within %d s", i, RECV_WAIT_MS / 1000);
	/* [[stream, [[id, [field, value]]]]] */
	redisReply *s = r->type == REDIS_REPLY_ARRAY && r->elements == 1 ? r->element[0] : NULL;
	redisReply *l = s && s->type == REDIS_REPLY_ARRAY && s->elements == 2 ? s->element[1] : NULL;
	redisReply *e = l && l->type == REDIS_REPLY_ARRAY && l->elements == 1 ? l->element[0] : NULL;
	redisReply *f = e && e->type == REDIS_REPLY_ARRAY && e->elements == 2 ? e->element[1] : NULL;
	if (!f || f->type != REDIS_REPLY_ARRAY || f->elements != 2 ||
	    e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= sizeof c->id)
		fail("redis XREADGROUP at op %ld: unexpected reply", i);
	memcpy(c->id, e->element[0]->str, e->element[0]->len);
	c->id[e->element[0]->len] = '\0';
	c->reply = r;
	*len = f->element[1]->len;
	return f->element[1]->str;
}

static void rstream_ack(struct conn *c, long i)
{
	redisReply *r = rcmd_check(c, redisCommand(c->rc, "XACK " REDIS_STREAM " g %s", c->id),
				   "XACK", i);
	if (r->type != REDIS_REPLY_INTEGER || r->integer != 1)
		fail("redis XACK %s at op %ld: not acknowledged", c->id, i);
	freeReplyObject(r);
	redis_free_reply(c, i);
}

/* Pending (delivered, not acked) plus not yet delivered to the group. */
static long rstream_leftover(struct conn *c)
{
	redisReply *r = rcmd_check(c, redisCommand(c->rc, "XPENDING " REDIS_STREAM " g"),
				   "XPENDING", -1);
	long n = r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
			 r->element[0]->type == REDIS_REPLY_INTEGER
		 ? (long)r->element[0]->integer
		 : -1;
	freeReplyObject(r);
	r = rcmd_check(c, redisCommand(c->rc, "XREADGROUP GROUP g c COUNT 1000 STREAMS "
				       REDIS_STREAM " >"), "XREADGROUP", -1);
	if (n >= 0 && r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
		redisReply *s = r->element[0];
		if (s->type == REDIS_REPLY_ARRAY && s->elements == 2 &&
		    s->element[1]->type == REDIS_REPLY_ARRAY)
			n += (long)s->element[1]->elements;
	}
	freeReplyObject(r);
	return n;
}

/* b XADDs written in one go (pipelined), then their b replies; batch after batch. */
static void rstream_batch(struct conn *c, const char *body, long n, long b)
{
	long op = 0;
	for (long sent = 0; sent < n;) {
		long k = n - sent < b ? n - sent : b;
		for (long j = 0; j < k; j++)
			if (redisAppendCommand(c->rc, "XADD " REDIS_STREAM " * p %b", body,
					       (size_t)BODY) != REDIS_OK)
				fail("redis: cannot queue XADD");
		for (long j = 0; j < k; j++, op++) {
			void *v = NULL;
			if (redisGetReply(c->rc, &v) != REDIS_OK)
				v = NULL;
			redisReply *r = rcmd_check(c, v, "XADD", op);
			if (r->type != REDIS_REPLY_STRING)
				fail("redis XADD at op %ld: reply type %d", op, r->type);
			freeReplyObject(r);
		}
		sent += k;
	}
}

/* ----- NATS JetStream ----- */

static void js_fail(const char *what, natsStatus s, jsErrCode jerr, long i)
{
	const char *last = nats_GetLastError(NULL);
	fail("jetstream %s at op %ld: %s (%d)%s%s", what, i, natsStatus_GetText(s), (int)jerr,
	     last ? ": " : "", last ? last : "");
}

static void js_on_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
	(void)js;
	(void)pae;
	atomic_fetch_add(&((struct conn *)closure)->js_errors, 1);
}

/* Connect; the stream PEERS (peers.>, file storage, 1 replica) is made when missing. */
static void js_connect(struct conn *c, long window)
{
	natsStatus s = natsConnection_ConnectTo(&c->nc, c->target);
	if (s != NATS_OK)
		js_fail("connect", s, 0, -1);
	jsOptions jo;
	jsOptions_Init(&jo);
	if (window > 0) {
		jo.PublishAsync.MaxPending = window;
		jo.PublishAsync.StallWait = RECV_WAIT_MS;
		jo.PublishAsync.ErrHandler = js_on_error;
		jo.PublishAsync.ErrHandlerClosure = c;
	}
	if ((s = natsConnection_JetStream(&c->js, c->nc, &jo)) != NATS_OK)
		js_fail("context", s, 0, -1);
	jsStreamConfig sc;
	jsStreamConfig_Init(&sc);
	const char *subjects[] = {"peers.>"};
	sc.Name = JS_STREAM;
	sc.Subjects = subjects;
	sc.SubjectsLen = 1;
	sc.Storage = js_FileStorage;
	sc.Replicas = 1;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	s = js_AddStream(&si, c->js, &sc, NULL, &jerr);
	if (s != NATS_OK && jerr != JSStreamNameExistErr)
		js_fail("add stream " JS_STREAM, s, jerr, -1);
	jsStreamInfo_Destroy(si);
}

static void js_purge(struct conn *c)
{
	jsErrCode jerr = 0;
	natsStatus s = js_PurgeStream(c->js, JS_STREAM, NULL, &jerr);
	if (s != NATS_OK)
		js_fail("purge", s, jerr, -1);
}

static void js_open_prod(struct conn *c) { js_connect(c, 0); }

static void js_send(struct conn *c, const char *body, size_t len, long i)
{
	jsPubAck *pa = NULL;
	jsErrCode jerr = 0;
	natsStatus s = js_Publish(&pa, c->js, JS_SUBJECT, body, (int)len, NULL, &jerr);
	if (s != NATS_OK)
		js_fail("publish", s, jerr, i);
	jsPubAck_Destroy(pa);
}

static void js_open_cons(struct conn *c)
{
	js_connect(c, 0);
	js_purge(c);
	jsSubOptions so;
	jsSubOptions_Init(&so);
	so.Stream = JS_STREAM;
	so.Config.AckPolicy = js_AckExplicit;
	so.Config.DeliverPolicy = js_DeliverNew;
	jsErrCode jerr = 0;
	natsStatus s = js_SubscribeSync(&c->sub, c->js, JS_SUBJECT, NULL, &so, &jerr);
	if (s != NATS_OK)
		js_fail("subscribe", s, jerr, -1);
}

static const char *js_recv(struct conn *c, size_t *len, long i)
{
	natsStatus s = natsSubscription_NextMsg(&c->msg, c->sub, RECV_WAIT_MS);
	c->t_have = now();
	if (s != NATS_OK)
		js_fail("next message", s, 0, i);
	*len = (size_t)natsMsg_GetDataLength(c->msg);
	return natsMsg_GetData(c->msg);
}

/* natsMsg_AckSync: the ack waits for the server's confirmation, as an rm or XACK does. */
static void js_ack(struct conn *c, long i)
{
	jsErrCode jerr = 0;
	natsStatus s = natsMsg_AckSync(c->msg, NULL, &jerr);
	if (s != NATS_OK)
		js_fail("ack", s, jerr, i);
	natsMsg_Destroy(c->msg);
	c->msg = NULL;
}

static long js_leftover(struct conn *c)
{
	long n = 0;
	natsMsg *m = NULL;
	while (natsSubscription_NextMsg(&m, c->sub, 300) == NATS_OK) {
		natsMsg_Destroy(m);
		n++;
	}
	return n;
}

static void js_batch(struct conn *c, const char *body, long n, long b)
{
	(void)b; /* the window was set at connect */
	for (long i = 0; i < n; i++) {
		natsStatus s = js_PublishAsync(c->js, JS_SUBJECT, body, BODY, NULL);
		if (s != NATS_OK)
			js_fail("publish async", s, 0, i);
	}
	jsPubOptions po;
	jsPubOptions_Init(&po);
	po.MaxWait = 60000;
	natsStatus s = js_PublishAsyncComplete(c->js, &po);
	if (s != NATS_OK)
		js_fail("publish async complete", s, 0, n);
	natsMsgList pend = {0};
	if (js_PublishAsyncGetPendingList(&pend, c->js) == NATS_OK && pend.Count) {
		int k = pend.Count;
		natsMsgList_Destroy(&pend);
		fail("jetstream: %d async publishes not acknowledged", k);
	}
	long e = atomic_load(&c->js_errors);
	if (e)
		fail("jetstream: %ld async publishes failed", e);
}

static void js_close(struct conn *c)
{
	if (c->msg)
		natsMsg_Destroy(c->msg);
	if (c->sub) {
		natsSubscription_Unsubscribe(c->sub);
		natsSubscription_Destroy(c->sub);
	}
	if (c->js)
		jsCtx_Destroy(c->js);
	if (c->nc)
		natsConnection_Destroy(c->nc);
	nats_Close();
}

/* ----- POSIX message queues ----- */

static long mq_maxmsg(void)
{
	long v = 10; /* the kernel's default msg_max */
	FILE *f = fopen("/proc/sys/fs/mqueue/msg_max", "r");
	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = 10;
		fclose(f);
	}
	return v < 1 ? 1 : v > 1000 ? 1000 : v;
}

static void mq_open_prod(struct conn *c)
{
	c->mq = mq_open(c->target, O_WRONLY);
	if (c->mq == (mqd_t)-1)
		die("mq_open", c->target, -1);
}

static void mq_send_one(struct conn *c, const char *body, size_t len, long i)
{
	struct timespec dl = deadline_rt(RECV_WAIT_MS);
	if (mq_timedsend(c->mq, body, len, 0, &dl) != 0)
		die("mq_timedsend", c->target, i);
}

static void mq_open_cons(struct conn *c)
{
	if (mq_unlink(c->target) != 0 && errno != ENOENT)
		die("mq_unlink", c->target, -1);
	struct mq_attr a = {.mq_maxmsg = mq_maxmsg(), .mq_msgsize = MQ_MSGSIZE};
	c->mq = mq_open(c->target, O_RDONLY | O_CREAT | O_EXCL, 0600, &a);
	if (c->mq == (mqd_t)-1)
		die("mq_open", c->target, -1);
	c->buf = xmalloc(MQ_MSGSIZE + 1);
}

static const char *mq_recv_one(struct conn *c, size_t *len, long i)
{
	struct timespec dl = deadline_rt(RECV_WAIT_MS);
	ssize_t r = mq_timedreceive(c->mq, c->buf, MQ_MSGSIZE, NULL, &dl);
	c->t_have = now();
	if (r < 0)
		die("mq_timedreceive", c->target, i);
	*len = (size_t)r;
	return c->buf;
}

static void no_ack(struct conn *c, long i)
{
	(void)c;
	(void)i;
}

static long mq_leftover(struct conn *c)
{
	struct mq_attr a;
	if (mq_getattr(c->mq, &a) != 0)
		die("mq_getattr", c->target, -1);
	return a.mq_curmsgs;
}

static void mq_close_one(struct conn *c)
{
	if (c->mq != (mqd_t)-1)
		mq_close(c->mq);
	free(c->buf);
}

/* ----- Maildir ----- */

static void mkdir_ok(const char *p)
{
	if (mkdir(p, 0755) != 0 && errno != EEXIST)
		die("mkdir", p, -1);
}

static void md_dirs(struct conn *c)
{
	char p[PATH_MAX + 8];
	mkdir_ok(c->target);
	snprintf(p, sizeof p, "%s/tmp", c->target);
	mkdir_ok(p);
	snprintf(p, sizeof p, "%s/new", c->target);
	mkdir_ok(p);
	snprintf(p, sizeof p, "%s/cur", c->target);
	mkdir_ok(p);
}

static void md_open_prod(struct conn *c) { md_dirs(c); }

static void md_send(struct conn *c, const char *body, size_t len, long i)
{
	char t[PATH_MAX + 96], n[PATH_MAX + 96];
	int k = snprintf(t, sizeof t, "%s/tmp/", c->target);
	int m = snprintf(n, sizeof n, "%s/new/", c->target);
	int u = snprintf(t + k, sizeof t - (size_t)k, "%ld.P%dQ%ld.peers", (long)time(NULL),
			 (int)getpid(), c->seq++);
	memcpy(n + m, t + k, (size_t)u + 1);
	int fd = open(t, O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0)
		die("open", t, i);
	write_all(fd, body, len, t, i);
	if (close(fd) != 0)
		die("close", t, i);
	if (rename(t, n) != 0)
		die("rename", n, i);
}

static void md_scan(struct conn *c)
{
	char p[PATH_MAX + 8];
	snprintf(p, sizeof p, "%s/new", c->target);
	for (size_t k = c->at; k < c->nnames; k++)
		free(c->names[k]);
	c->nnames = c->at = 0;
	DIR *d = opendir(p);
	if (!d)
		die("opendir", p, -1);
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		if (c->nnames == c->cap) {
			c->cap = c->cap ? c->cap * 2 : 256;
			c->names = realloc(c->names, c->cap * sizeof *c->names);
			if (!c->names)
				die("realloc", "-", -1);
		}
		if (!(c->names[c->nnames++] = strdup(e->d_name)))
			die("strdup", "-", -1);
	}
	closedir(d);
}

static void md_open_cons(struct conn *c)
{
	md_dirs(c);
	char p[PATH_MAX + 8];
	snprintf(p, sizeof p, "%s/new", c->target);
	c->ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (c->ino < 0)
		die("inotify_init1", p, -1);
	if (inotify_add_watch(c->ino, p, IN_MOVED_TO) < 0)
		die("inotify_add_watch", p, -1);
	c->buf = xmalloc(BODY + 64);
	md_scan(c); /* leftovers of an earlier run: none expected */
	if (c->nnames)
		fail("%s holds %zu messages before the run", p, c->nnames);
}

/* The next file of new/: from the last readdir, else a new readdir, else wait on
 * inotify (the watch is older than every readdir, so no arrival is missed). */
static const char *md_recv(struct conn *c, size_t *len, long i)
{
	char f[PATH_MAX + NAME_MAX + 8];
	double dl = now() + RECV_WAIT_MS / 1000.0;
	for (;;) {
		while (c->at < c->nnames) {
			char *name = c->names[c->at++];
			snprintf(f, sizeof f, "%s/new/%s", c->target, name);
			snprintf(c->cur, sizeof c->cur, "%s", name);
			free(name);
			int fd = open(f, O_RDONLY);
			if (fd < 0) {
				if (errno == ENOENT)
					continue;
				die("open", f, i);
			}
			ssize_t r = read(fd, c->buf, BODY + 63);
			c->t_have = now();
			if (r < 0)
				die("read", f, i);
			close(fd);
			*len = (size_t)r;
			return c->buf;
		}
		md_scan(c);
		if (c->nnames)
			continue;
		int left = (int)((dl - now()) * 1000);
		if (left <= 0)
			fail("maildir %s/new: nothing within %d s at op %ld", c->target,
			     RECV_WAIT_MS / 1000, i);
		struct pollfd pf = {.fd = c->ino, .events = POLLIN};
		int r = poll(&pf, 1, left);
		if (r < 0 && errno != EINTR)
			die("poll", "inotify fd", i);
		char ev[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
		while (read(c->ino, ev, sizeof ev) > 0)
			; /* drain: the readdir that follows is what counts */
	}
}

static void md_ack(struct conn *c, long i)
{
	char f[PATH_MAX + NAME_MAX + 8];
	snprintf(f, sizeof f, "%s/new/%s", c->target, c->cur);
	if (unlink(f) != 0)
		die("unlink", f, i);
}

static long md_leftover(struct conn *c)
{
	char p[PATH_MAX + 8];
	snprintf(p, sizeof p, "%s/new", c->target);
	return count_dir(p);
}

static void md_close(struct conn *c)
{
	for (size_t k = c->at; k < c->nnames; k++)
		free(c->names[k]);
	free(c->names);
	if (c->ino >= 0)
		close(c->ino);
	free(c->buf);
}

static void redis_connect_prod(struct conn *c) { redis_connect(c); }

static const struct sysops systems[] = {
	{"busfs", busfs_open_prod, busfs_send, busfs_open_cons, busfs_prep, busfs_recv,
	 busfs_ack, busfs_leftover, busfs_batch, busfs_close},
	{"redis-list", redis_connect_prod, rlist_send, rlist_open_cons, NULL, rlist_recv,
	 redis_free_reply, rlist_leftover, rlist_batch, redis_close},
	{"redis-stream", redis_connect_prod, rstream_send, rstream_open_cons, NULL, rstream_recv,
	 rstream_ack, rstream_leftover, rstream_batch, redis_close},
	{"js", js_open_prod, js_send, js_open_cons, NULL, js_recv, js_ack, js_leftover,
	 js_batch, js_close},
	{"mq", mq_open_prod, mq_send_one, mq_open_cons, NULL, mq_recv_one, no_ack, mq_leftover,
	 NULL, mq_close_one},
	{"maildir", md_open_prod, md_send, md_open_cons, NULL, md_recv, md_ack, md_leftover,
	 NULL, md_close},
};

static const struct sysops *find_sys(const char *name)
{
	for (size_t k = 0; k < sizeof systems / sizeof systems[0]; k++)
		if (strcmp(systems[k].name, name) == 0)
			return &systems[k];
	fprintf(stderr, "%s: unknown system '%s' (busfs redis-list redis-stream js mq maildir)\n",
		prog, name);
	exit(2);
}

static struct conn *new_conn(const char *target)
{
	struct conn *c = xmalloc(sizeof *c);
	c->target = target;
	c->fd = -1;
	c->ino = -1;
	c->mq = (mqd_t)-1;
	atomic_init(&c->js_errors, 0);
	return c;
}

static void *shared(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap", "-", -1);
	return p;
}

/* Reaps the n children in pids; on the first failure kills the others (by pid) and
 * returns the number that failed. */
static int reap(pid_t *pids, long n, const char *const *roles)
{
	int failed = 0;
	for (long left = n; left > 0; left--) {
		int st;
		pid_t p = waitpid(-1, &st, 0);
		if (p < 0)
			die("waitpid", "-", -1);
		long k = 0;
		while (k < n && pids[k] != p)
			k++;
		if (k == n)
			continue;
		pids[k] = 0;
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			continue;
		if (WIFSIGNALED(st))
			fprintf(stderr, "%s: the %s (pid %d) was killed by signal %d%s\n", prog,
				roles[k], (int)p, WTERMSIG(st),
				WTERMSIG(st) == SIGALRM ? " (PEERS_TIMEOUT)" : "");
		if (!failed++)
			for (long j = 0; j < n; j++)
				if (pids[j] > 0)
					kill(pids[j], SIGKILL);
	}
	return failed;
}

/* ---------- flow: W1 and W2 ---------- */

struct flow_shared {
	double t_end;
	long distinct, dups, bad, leftover;
	double lat[];
};

static int cmd_flow(const struct sysops *sys, const char *target, long n, long p)
{
	if (p > 99)
		fail("at most 99 producers");
	long each = n / p < 1 ? 1 : n / p, total = each * p;
	size_t shsz = sizeof(struct flow_shared) + (size_t)total * sizeof(double);
	struct flow_shared *sh = shared(shsz);
	int ready[2], go[2];
	if (pipe(ready) != 0 || pipe(go) != 0)
		die("pipe", "-", -1);
	pid_t *pids = xmalloc(((size_t)p + 1) * sizeof *pids);
	const char **roles = xmalloc(((size_t)p + 1) * sizeof *roles);

	pid_t pid = fork();
	if (pid < 0)
		die("fork", "-", -1);
	if (pid == 0) {
		child_setup("peers consumer");
		close(ready[0]);
		close(go[1]);
		struct conn *c = new_conn(target);
		sys->open_cons(c);
		put_byte(ready[1], 'c');
		wait_byte(go[0], RECV_WAIT_MS); /* end-of-file: go */
		unsigned char *seen = xmalloc((size_t)total);
		long got = 0;
		while (sh->distinct < total) {
			size_t len;
			const char *b = sys->recv(c, &len, got);
			long pr, sq;
			if (!parse_body(b, len, &pr, &sq) || pr >= p || sq >= each) {
				fprintf(stderr, "%s: FAIL: message %ld is none of the run's: %.40s\n", prog,
					got, b);
				sh->bad++;
			} else if (seen[pr * each + sq]++) {
				fprintf(stderr, "%s: FAIL: duplicate of producer %ld message %ld\n", prog,
					pr, sq);
				sh->dups++;
			} else {
				sh->distinct++;
			}
			sys->ack(c, got);
			got++;
		}
		sh->t_end = now();
		sh->leftover = sys->leftover(c);
		sys->close(c);
		_exit(0);
	}
	pids[0] = pid;
	roles[0] = "consumer";
	/* The producers start once the consumer made (or emptied) the queue. */
	if (wait_byte(ready[0], RECV_WAIT_MS) != 'c') {
		kill(pid, SIGKILL);
		reap(pids, 1, roles);
		fail("FAIL: %s: the consumer did not get ready", sys->name);
	}
	for (long k = 0; k < p; k++) {
		pid = fork();
		if (pid < 0)
			die("fork", "-", -1);
		if (pid == 0) {
			child_setup("peers producer");
			close(ready[0]);
			close(go[1]);
			struct conn *c = new_conn(target);
			sys->open_prod(c);
			put_byte(ready[1], 'p');
			wait_byte(go[0], RECV_WAIT_MS);
			char body[BODY];
			for (long i = 0; i < each; i++) {
				make_body(body, k, i);
				double t = now();
				sys->send(c, body, BODY, i);
				sh->lat[k * each + i] = now() - t;
			}
			sys->close(c);
			_exit(0);
		}
		pids[k + 1] = pid;
		roles[k + 1] = "producer";
	}
	close(ready[1]);
	close(go[0]);
	int failed = 0;
	for (long k = 0; k < p; k++)
		if (wait_byte(ready[0], RECV_WAIT_MS) != 'p') {
			fprintf(stderr, "%s: a producer did not get ready\n", prog);
			failed = 1;
			for (long j = 0; j < p + 1; j++)
				kill(pids[j], SIGKILL);
			break;
		}
	double t0 = now();
	close(go[1]);
	failed += reap(pids, p + 1, roles);
	if (failed)
		fail("FAIL: %s: a process failed (above); %ld messages sent at most, the consumer "
		     "counted %ld distinct, %ld duplicates, %ld strays", sys->name, total,
		     sh->distinct, sh->dups, sh->bad);
	if (sh->distinct != total || sh->dups || sh->bad || sh->leftover)
		fail("FAIL: %s: %ld messages sent, the consumer counted %ld distinct, %ld duplicates, "
		     "%ld strays, and %ld were left queued", sys->name, total, sh->distinct, sh->dups,
		     sh->bad, sh->leftover);
	double secs = sh->t_end - t0;
	if (secs <= 0)
		secs = 1e-9;
	qsort(sh->lat, (size_t)total, sizeof(double), cmp_double);
	printf("%.1f msgs/s (%ld msgs, %.3f s, %ld producers, send p50 %.1f us, p99 %.1f us, "
	       "%ld distinct, %ld duplicates)\n", (double)total / secs, total, secs, p,
	       pct(sh->lat, total, 0.5) * 1e6, pct(sh->lat, total, 0.99) * 1e6, sh->distinct,
	       sh->dups);
	munmap(sh, shsz);
	free(pids);
	free(roles);
	return 0;
}

/* ---------- batch: W3 ---------- */

static int cmd_batch(const struct sysops *sys, const char *target, long n, long b)
{
	char body[BODY];
	make_body(body, 0, 0);
	pid_t drainer = 0;
	int drained = 0;
	int ready[2] = {-1, -1};
	/* A POSIX queue holds msg_max messages: a consumer drains it meanwhile. */
	if (!sys->batch && strcmp(sys->name, "mq") == 0) {
		if (pipe(ready) != 0)
			die("pipe", "-", -1);
		drained = 1;
		drainer = fork();
		if (drainer < 0)
			die("fork", "-", -1);
		if (drainer == 0) {
			child_setup("peers drainer");
			close(ready[0]);
			struct conn *c = new_conn(target);
			sys->open_cons(c);
			put_byte(ready[1], 'c');
			for (long i = 0; i < n; i++) {
				size_t len;
				sys->recv(c, &len, i);
			}
			sys->close(c);
			_exit(0);
		}
		close(ready[1]);
		if (!wait_byte(ready[0], RECV_WAIT_MS))
			fail("the mq drainer did not get ready");
	}
	struct conn *c = new_conn(target);
	double t0;
	if (sys->batch) {
		/* Connect and empty the queue before the clock starts. */
		if (strcmp(sys->name, "js") == 0) {
			js_connect(c, b);
			js_purge(c);
		} else if (strcmp(sys->name, "busfs") != 0) {
			sys->open_prod(c);
			redis_simple(c, strcmp(sys->name, "redis-list") == 0 ? "DEL " REDIS_LIST
									     : "DEL " REDIS_STREAM);
		}
		t0 = now();
		sys->batch(c, body, n, b);
	} else {
		sys->open_prod(c);
		t0 = now();
		for (long i = 0; i < n; i++) {
			make_body(body, 0, i);
			sys->send(c, body, BODY, i);
		}
	}
	double secs = now() - t0;
	if (secs <= 0)
		secs = 1e-9;
	/* Free the server's memory for what follows (not timed). */
	if (strcmp(sys->name, "redis-list") == 0)
		redis_simple(c, "DEL " REDIS_LIST);
	else if (strcmp(sys->name, "redis-stream") == 0)
		redis_simple(c, "DEL " REDIS_STREAM);
	else if (strcmp(sys->name, "js") == 0)
		js_purge(c);
	sys->close(c);
	if (drained) {
		const char *role[] = {"mq drainer"};
		if (reap(&drainer, 1, role))
			fail("FAIL: the mq drainer failed");
	}
	if (sys->batch)
		printf("%.1f msgs/s (%ld msgs, %.3f s, %ld per batch)\n", (double)n / secs, n, secs, b);
	else
		printf("%.1f msgs/s (%ld msgs, %.3f s, no batching: one send at a time%s)\n",
		       (double)n / secs, n, secs, drained ? ", a consumer draining" : "");
	return 0;
}

/* ---------- wake: W5 ---------- */

struct wake_shared {
	_Atomic double t0;
	double lat[];
};

static int cmd_wake(const struct sysops *sys, const char *target, long n)
{
	size_t shsz = sizeof(struct wake_shared) + (size_t)n * sizeof(double);
	struct wake_shared *sh = shared(shsz);
	int rp[2], sp[2]; /* consumer -> sender: ready/done; sender -> consumer: sent */
	if (pipe(rp) != 0 || pipe(sp) != 0)
		die("pipe", "-", -1);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", "-", -1);
	if (pid == 0) {
		child_setup("peers wake consumer");
		close(rp[0]);
		close(sp[1]);
		struct conn *c = new_conn(target);
		sys->open_cons(c);
		for (long i = 0; i < n; i++) {
			if (sys->prep)
				sys->prep(c, i);
			put_byte(rp[1], 'r');
			size_t len;
			sys->recv(c, &len, i);
			sh->lat[i] = c->t_have - atomic_load(&sh->t0);
			/* Acknowledge only once the send returned: it stays undisturbed. */
			if (wait_byte(sp[0], RECV_WAIT_MS) != 's')
				fail("the sender did not finish sample %ld", i);
			sys->ack(c, i);
		}
		long left = sys->leftover(c);
		if (left)
			fail("FAIL: %ld messages left queued after the wake samples", left);
		sys->close(c);
		put_byte(rp[1], 'd');
		_exit(0);
	}
	close(rp[1]);
	close(sp[0]);
	int statfd = proc_stat_open(pid);
	/* Connected after the fork (a client library's threads never cross one), once the
	 * consumer made the queue (its first ready). */
	struct conn *c = new_conn(target);
	double *send = xmalloc((size_t)n * sizeof *send);
	char body[BODY];
	int failed = 0;
	long unparked = 0;
	double tstart = now();
	for (long i = 0; i < n; i++) {
		if (wait_byte(rp[0], RECV_WAIT_MS) != 'r') {
			fprintf(stderr, "%s: the consumer did not get ready for sample %ld\n", prog, i);
			failed = 1;
			break;
		}
		if (i == 0)
			sys->open_prod(c);
		/* Until the consumer sleeps in its receive (at most 1 s, then send anyway). */
		double dl = now() + 1.0;
		while (proc_state(statfd) != 'S') {
			if (now() > dl) {
				unparked++;
				break;
			}
			sched_yield();
		}
		make_body(body, 0, i);
		double t0 = now();
		atomic_store(&sh->t0, t0);
		sys->send(c, body, BODY, i);
		send[i] = now() - t0;
		put_byte(sp[1], 's');
	}
	if (!failed && wait_byte(rp[0], RECV_WAIT_MS) != 'd') {
		fprintf(stderr, "%s: the consumer did not finish\n", prog);
		failed = 1;
	}
	double secs = now() - tstart;
	if (failed)
		kill(pid, SIGKILL);
	const char *role[] = {"wake consumer"};
	failed += reap(&pid, 1, role);
	sys->close(c);
	close(statfd);
	if (failed)
		fail("FAIL: %s wake: the consumer failed", sys->name);
	qsort(sh->lat, (size_t)n, sizeof(double), cmp_double);
	qsort(send, (size_t)n, sizeof(double), cmp_double);
	printf("%.1f wakes/s (%ld wakes, p50 %.1f us, p99 %.1f us, max %.1f us, send p50 %.1f us",
	       (double)n / secs, n, pct(sh->lat, n, 0.5) * 1e6, pct(sh->lat, n, 0.99) * 1e6,
	       sh->lat[n - 1] * 1e6, pct(send, n, 0.5) * 1e6);
	if (unparked)
		printf(", %ld samples sent before the consumer slept", unparked);
	printf(")\n");
	free(send);
	munmap(sh, shsz);
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: %s flow SYS TARGET N P\n"
			"       %s batch SYS TARGET N B\n"
			"       %s wake SYS TARGET N\n"
			"       %s mq-unlink NAME\n"
			"SYS: busfs (TARGET: mount point), redis-list, redis-stream (TARGET: port),\n"
			"     js (TARGET: nats URL), mq (TARGET: /name), maildir (TARGET: directory)\n",
		prog, prog, prog, prog);
	return 2;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	alarm(timeout_s()); /* children set their own (child_setup) */
	if (argc == 3 && strcmp(argv[1], "mq-unlink") == 0) {
		if (mq_unlink(argv[2]) != 0 && errno != ENOENT)
			die("mq_unlink", argv[2], -1);
		return 0;
	}
	if (argc < 5)
		return usage();
	const struct sysops *sys = find_sys(argv[2]);
	const char *target = argv[3];
	long n = parse_count(argv[4], "N");
	if (strcmp(argv[1], "flow") == 0 && argc == 6) {
		int rc = cmd_flow(sys, target, n, parse_count(argv[5], "P"));
		if (strcmp(sys->name, "mq") == 0)
			mq_unlink(target);
		return rc;
	}
	if (strcmp(argv[1], "batch") == 0 && argc == 6) {
		int rc = cmd_batch(sys, target, n, parse_count(argv[5], "B"));
		if (strcmp(sys->name, "mq") == 0)
			mq_unlink(target);
		return rc;
	}
	if (strcmp(argv[1], "wake") == 0 && argc == 5) {
		int rc = cmd_wake(sys, target, n);
		if (strcmp(sys->name, "mq") == 0)
			mq_unlink(target);
		return rc;
	}
	return usage();
}
