/* files.c — the requests that open, read, write and change: how file operations
 * become bus calls, and bus refusals become errno replies plus a line in `errors`.
 *
 * Ownership: each open file has one struct handle (fi->fh), made at OPEN or CREATE
 * and freed at RELEASE. A handle owns its draft, its rendered document, its message
 * reference and, until a notification takes it, its poll handle. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "busfs/json.h"
#include "busfs/metric.h"
#include "busfs/remote.h"
#include "cluster.h"
#include "fs.h"

static struct fs *fs_of(fuse_req_t req) { return fuse_req_userdata(req); }

/* Replies with the error and records why, in `errors` and the agent's own log. */
static void refuse(fuse_req_t req, const char *op, const char *path, uint64_t agent_id,
		   const struct bus_error *err)
{
	struct fs *fs = fs_of(req);
	struct bus_agent_info a;
	const char *agent = NULL;
	if (agent_id && bus_agent_by_id(fs->bus, agent_id, &a) == 0)
		agent = a.name;
	bus_log_error(fs->bus, agent, op, path, fuse_req_ctx(req)->uid, err);
	log_msg(err->code == EIO ? LOG_ERR : LOG_INFO, "%s %s by uid %u: %s: %s", op, path, (unsigned)fuse_req_ctx(req)->uid,
		bus_errno_name(err->code), err->reason);
	fuse_reply_err(req, err->code);
}

static void refuse_at(fuse_req_t req, const char *op, fuse_ino_t ino, const char *name,
		      int code, const char *reason)
{
	struct fs *fs = fs_of(req);
	struct node_ref r = ref_of(fs, ino);
	char path[256];
	struct bus_error err;
	node_path(fs, &r, name, path, sizeof path);
	bus_fail(&err, code, "%s", reason);
	refuse(req, op, path, r.node >= N_AGENT_DIR ? r.agent_id : 0, &err);
}

static struct handle *handle_new(struct fs *fs, enum node node, uint64_t agent_id)
{
	struct handle *h = calloc(1, sizeof *h);
	if (!h)
		return NULL;
	fs->open_files++;
	h->open_next = fs->open_list;
	if (fs->open_list)
		fs->open_list->open_prev = h;
	fs->open_list = h;
	h->node = node;
	h->agent_id = agent_id;
	buf_init(&h->pending);
	buf_init(&h->doc);
	return h;
}

static void handle_free(struct fs *fs, struct handle *h)
{
	if (h->draft)
		bus_draft_close(fs->bus, h->draft);
	cluster_verdict_put(h->verdict);
	waiters_forget_handle(fs, h);
	buf_free(&h->pending);
	buf_free(&h->doc);
	message_unref(h->msg);
	if (h->open_prev)
		h->open_prev->open_next = h->open_next;
	else
		fs->open_list = h->open_next;
	if (h->open_next)
		h->open_next->open_prev = h->open_prev;
	free(h);
	fs->open_files--;
}

/* At exit, files the kernel never released (their RELEASE can come after unmount). */
void files_close_all(struct fs *fs)
{
	while (fs->open_list)
		handle_free(fs, fs->open_list);
}

static bool owner_ok(fuse_req_t req, const struct bus_agent_info *a)
{
	uid_t uid = fuse_req_ctx(req)->uid;
	return uid == 0 || uid == a->uid;
}

/* ---------- OPEN ---------- */

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct node_ref r = ref_of(fs, ino);
	int acc = fi->flags & O_ACCMODE;
	bool writing = acc != O_RDONLY || (fi->flags & O_TRUNC);
	bool reading = acc != O_WRONLY;
	struct bus_agent_info a;
	char why[160];

	if (r.node >= N_AGENT_DIR && bus_agent_by_id(fs->bus, r.agent_id, &a) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct handle *h = handle_new(fs, r.node, r.agent_id);
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	node_path(fs, &r, NULL, h->path, sizeof h->path);
	fi->direct_io = 1;
	why[0] = '\0';
	uid_t uid = fuse_req_ctx(req)->uid;
	h->uid = uid;
	switch (r.node) {
	case N_README:
		if (writing)
			snprintf(why, sizeof why, "README is read-only");
		else
			doc_for_open(fs, &r, &h->doc);
		fi->direct_io = 0;
		fi->keep_cache = 1;
		break;
	case N_ERRORS:
	case N_AGENT_ERRORS:
	case N_METRICS_LOG:
	case N_ALERTS_LOG:
	case N_EVENTS:
		if (writing)
			snprintf(why, sizeof why, "%.80s is read-only", h->path);
		break;
	case N_HEALTH_STATUS:
	case N_SUMMARY:
	case N_PROM:
	case N_ACTIVE:
	case N_REMOTE_HEALTH:
		if (writing)
			snprintf(why, sizeof why, "%.80s is read-only%s", h->path,
				 r.node == N_HEALTH_STATUS ? ": write agents/NAME/health" : "");
		else
			doc_for_open(fs, &r, &h->doc);
		break;
	case N_SEND:
		if (reading)
			snprintf(why, sizeof why, "send is write-only: read the inbox or next");
		else if (!owner_ok(req, &a))
			snprintf(why, sizeof why, "uid %u may not send as %s", (unsigned)uid, a.name);
		fi->nonseekable = 1;
		break;
	case N_NEXT:
	case N_CLAIM:
		if (writing)
			snprintf(why, sizeof why, "%s is read-only", r.node == N_NEXT ? "next" : "claim");
		else if (!owner_ok(req, &a))
			snprintf(why, sizeof why, "uid %u may not %s the inbox of %s", (unsigned)uid,
				 r.node == N_NEXT ? "read" : "claim from", a.name);
		fi->nonseekable = 1;
		break;
	case N_LEASE_MSG:
	case N_DEAD_MSG:
		if (writing)
			snprintf(why, sizeof why, "%s files are read-only; rm %s",
				 r.node == N_LEASE_MSG ? "inflight" : "dead",
				 r.node == N_LEASE_MSG ? "acks the message" : "discards the letter");
		else if (!owner_ok(req, &a))
			snprintf(why, sizeof why, "uid %u may not read the %s of %s", (unsigned)uid,
				 r.node == N_LEASE_MSG ? "leases" : "dead letters", a.name);
		else if (bus_place_render(fs->bus, r.agent_id,
					  r.node == N_LEASE_MSG ? BUS_INFLIGHT : BUS_DEAD, r.number,
					  &h->doc) < 0) {
			handle_free(fs, h);
			fuse_reply_err(req, ENOENT);
			return;
		}
		break;
	case N_CTL:
	case N_HEALTH:
	case N_AGENT_METRICS:
		/* Anyone may read health and metrics; ctl (0600) is its owner's. */
		if ((writing || r.node == N_CTL) && !owner_ok(req, &a))
			snprintf(why, sizeof why, "uid %u may not %s %s", (unsigned)uid,
				 r.node == N_CTL ? (writing ? "control" : "read the state of")
				 : r.node == N_HEALTH
				 ? "report the health of" : "write the metrics of", a.name);
		else if (reading && r.node != N_AGENT_METRICS)
			doc_for_open(fs, &r, &h->doc);
		break;
	case N_RULES:
		/* The rules are the bus operator's: the uid that runs busfs, or root. */
		if (writing && uid != 0 && uid != fs->uid)
			snprintf(why, sizeof why, "uid %u may not change the alert rules (uid %u "
				 "runs busfs)", (unsigned)uid, (unsigned)fs->uid);
		else if (reading)
			doc_for_open(fs, &r, &h->doc);
		h->truncating = writing && (fi->flags & O_TRUNC);
		break;
	case N_INBOX_MSG:
	case N_OUTBOX_MSG:
		h->msg = r.node == N_INBOX_MSG ? bus_inbox_get(fs->bus, r.agent_id, r.number)
					       : bus_outbox_get(fs->bus, r.agent_id, r.number);
		if (!h->msg) {
			handle_free(fs, h);
			fuse_reply_err(req, ENOENT);
			return;
		}
		if (writing)
			snprintf(why, sizeof why, "message files are read-only; rm consumes one");
		else if (!owner_ok(req, &a))
			snprintf(why, sizeof why, "uid %u may not read the %s of %s",
				 (unsigned)fuse_req_ctx(req)->uid,
				 r.node == N_INBOX_MSG ? "inbox" : "outbox", a.name);
		/* A message never changes: let the page cache keep it. */
		fi->direct_io = 0;
		fi->keep_cache = 1;
		break;
	case N_PAIR:
		snprintf(why, sizeof why, "a message being written cannot be reopened");
		break;
	default:
		handle_free(fs, h);
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (why[0]) {
		struct bus_error err;
		bus_fail(&err, EACCES, "%s", why);
		refuse(req, "open", h->path, r.node >= N_AGENT_DIR ? r.agent_id : 0, &err);
		handle_free(fs, h);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	if (fuse_reply_open(req, fi) != 0)
		handle_free(fs, h);
}

/* ---------- CREATE: outbox/B starts a message ---------- */

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct node_ref p = ref_of(fs, parent);
	if (p.node == N_INFLIGHT || p.node == N_DEAD) {
		/* A name not there is a lease that ended or a letter gone: `touch` of an old
		 * inflight/ file says so, not "permission denied". */
		refuse_at(req, "create", parent, name, ENOENT,
			  p.node == N_INFLIGHT ? "no such lease: it ended (inflight/ files are made "
						 "by claims)"
					       : "no such dead letter");
		return;
	}
	if (p.node != N_OUTBOX) {
		refuse_at(req, "create", parent, name, EACCES,
			  p.node == N_INBOX ? "inbox files are made by deliveries, not by create"
					    : "files cannot be created here");
		return;
	}
	struct handle *h = handle_new(fs, N_PAIR, p.agent_id);
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	node_path(fs, &p, name, h->path, sizeof h->path);
	struct bus_error err = {0};
	struct bus_agent_info to = {0};
	int rc;
	bool remote = bus_remote_split(name, NULL, NULL);
	if (strcmp(name, "all") != 0 && !bus_name_valid(name) && !remote)
		rc = bus_fail(&err, EINVAL, "'%.80s' is not an agent name", name);
	else if (strcmp(name, "all") != 0 && !remote && bus_agent_by_name(fs->bus, name, &to) < 0)
		rc = bus_fail(&err, ENOENT, "recipient %.80s is not registered", name);
	else
		rc = bus_draft_open(fs->bus, p.agent_id, name, fuse_req_ctx(req)->uid, &h->draft,
				    &err);
	if (rc < 0) {
		refuse(req, "create", h->path, p.agent_id, &err);
		handle_free(fs, h);
		return;
	}
	struct fuse_entry_param e;
	memset(&e, 0, sizeof e);
	struct node_ref r = {N_PAIR, p.agent_id, to.id, fs->pair_next++};
	node_attr(fs, &r, &e.attr);
	e.ino = e.attr.st_ino;
	e.generation = 1;
	fi->direct_io = 1;
	fi->nonseekable = 1;
	fi->fh = (uint64_t)(uintptr_t)h;
	if (fuse_reply_create(req, &e, fi) != 0)
		handle_free(fs, h);
}

/* ---------- READ ---------- */

static void reply_slice(fuse_req_t req, const char *data, size_t len, size_t size, off_t off)
{
	if (off < 0 || (size_t)off >= len)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_buf(req, data + off, len - (size_t)off < size ? len - (size_t)off : size);
}

/* A log that drops old lines keeps its offsets: a read at an offset that was dropped
 * continues at the oldest line kept, and the next sequential read continues from
 * there. h->log_expect and h->log_pos map the reader's offsets onto the log's. */
static void reply_log(fuse_req_t req, struct fs *fs, struct handle *h, size_t size, off_t off)
{
	uint64_t pos = off >= 0 && (uint64_t)off == h->log_expect && h->log_pos ? h->log_pos
										 : (uint64_t)off;
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t done = 0;
	while (done < size) {
		uint64_t at = pos + done;
		ssize_t n = h->node == N_ALERTS_LOG
			? bus_alerts_read(fs->bus, &at, buf + done, size - done)
			: h->node == N_EVENTS
			? bus_events_read(fs->bus, &at, buf + done, size - done)
			: bus_metrics_read(fs->bus, h->node == N_METRICS_LOG ? 0 : h->agent_id, &at,
					   buf + done, size - done);
		if (n <= 0)
			break;
		if (done == 0)
			pos = at;          /* the first kept byte may be later than asked */
		else if (at != pos + done)
			break;             /* never splice across a gap */
		done += (size_t)n;
	}
	h->log_expect = (uint64_t)off + done;
	h->log_pos = pos + done;
	fuse_reply_buf(req, buf, done);
	free(buf);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	switch (h->node) {
	case N_README:
	case N_CTL:
	case N_HEALTH:
	case N_HEALTH_STATUS:
	case N_SUMMARY:
	case N_PROM:
	case N_ACTIVE:
	case N_RULES:
	case N_LEASE_MSG:
	case N_DEAD_MSG:
	case N_REMOTE_HEALTH:
		reply_slice(req, h->doc.data, h->doc.len, size, off);
		return;
	case N_METRICS_LOG:
	case N_AGENT_METRICS:
	case N_ALERTS_LOG:
	case N_EVENTS:
		reply_log(req, fs, h, size, off);
		return;
	case N_ERRORS:
	case N_AGENT_ERRORS: {
		struct buf b;
		buf_init(&b);
		bus_errors_read(fs->bus, h->node == N_ERRORS ? 0 : h->agent_id, (size_t)off, size, &b);
		fuse_reply_buf(req, b.data, b.len);
		buf_free(&b);
		return;
	}
	case N_INBOX_MSG:
	case N_OUTBOX_MSG:
		reply_slice(req, h->msg->envelope, h->msg->len, size, off);
		return;
	case N_NEXT:
	case N_CLAIM:
		if (next_answered(h) || off > 0) {
			next_reply(req, h, size, off);
			return;
		}
		/* fi->flags is the reader's O_NONBLOCK as it is now, fcntl included. */
		waiters_park(fs, req, h, size, fi->flags & O_NONBLOCK);
		return;
	default:
		fuse_reply_err(req, EBADF);
	}
}

/* ---------- WRITE, FLUSH, RELEASE ---------- */

/* Metric points are lines, but writers do not always write whole lines: `cat` of a
 * large file writes 128 KiB at a time. A write stores the lines it completes; the
 * bytes after its last newline wait in h->pending for the next write, or for the
 * close, where they are the last line (which needs no newline). */
static int metrics_write(struct fs *fs, struct handle *h, uid_t uid, const char *data,
			 size_t size, struct bus_error *err)
{
	const char *p = data;
	size_t n = size;
	if (h->pending.len) {
		buf_append(&h->pending, data, size);
		if (!buf_ok(&h->pending))
			return bus_fail(err, ENOMEM, "out of memory");
		p = h->pending.data;
		n = h->pending.len;
	}
	size_t whole = n;
	while (whole && p[whole - 1] != '\n')
		whole--;
	if (n - whole > METRIC_LINE_MAX + 2) {
		buf_reset(&h->pending);
		return bus_fail(err, EINVAL, "a metric line is longer than %d bytes",
				METRIC_LINE_MAX);
	}
	int rc = whole ? bus_metrics_write(fs->bus, h->agent_id, uid, p, whole, err) : 0;
	if (rc < 0) {
		buf_reset(&h->pending);
		return rc;
	}
	if (p == h->pending.data) {
		buf_consume(&h->pending, whole);
	} else {
		buf_reset(&h->pending);
		buf_append(&h->pending, p + whole, n - whole);
	}
	return buf_ok(&h->pending) ? 0 : bus_fail(err, ENOMEM, "out of memory");
}

static bool blank(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!json_space(p[i]))
			return false;
	return true;
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	struct bus_error err = {0};
	uid_t uid = fuse_req_ctx(req)->uid;
	unsigned delivered;
	int rc;
	/* A report or command is one write, but some writers send its newline by itself
	 * (an unbuffered print(), printf's second line): after an accepted write, a write
	 * of only blanks in the same open file is that tail, not an empty report. */
	if ((h->node == N_HEALTH || h->node == N_CTL || h->node == N_RULES ||
	     (h->node == N_AGENT_METRICS && !h->pending.len)) && h->wrote && blank(data, size)) {
		fuse_reply_write(req, size);
		return;
	}
	switch (h->node) {
	case N_PAIR:
		rc = bus_draft_write(fs->bus, h->draft, data, size, &err);
		break;
	case N_SEND: {
		struct bus_sent sent = {0};
		rc = bus_send_write_ex(fs->bus, h->agent_id, uid, &h->pending, data, size, &delivered,
				       &sent, &err);
		if (rc == 0 && sent.n && fs->cluster) {
			/* Records to other nodes: answered once JetStream stored them. */
			h->wrote = true;
			h->writer = fuse_req_ctx(req)->pid;
			cluster_park(fs->cluster, req, sent.remote, sent.n, size, h->agent_id, h->path);
			free(sent.remote);
			return;
		}
		free(sent.remote);
		break;
	}
	case N_CTL:
		rc = bus_ctl(fs->bus, h->agent_id, uid, data, size, &err);
		break;
	case N_HEALTH:
		rc = bus_health_report(fs->bus, h->agent_id, uid, data, size, &err);
		break;
	case N_AGENT_METRICS:
		rc = metrics_write(fs, h, uid, data, size, &err);
		break;
	case N_RULES:
		/* One open file is one change of the rules, however many writes carry it
		 * (bash's printf writes line by line): `>` replaces at the first write,
		 * later writes add, and a refused write puts back the rules as they were
		 * before this file changed them (h->pending). */
		if (!h->saved) {
			buf_reset(&h->pending);
			bus_rules_user(fs->bus, &h->pending);
			h->saved = true;
		}
		rc = bus_rules_write_seen(fs->bus, data, size, h->truncating, &h->doc, &err);
		if (rc < 0 && (h->cleared || h->wrote))
			bus_rules_write(fs->bus, h->pending.data, h->pending.len, true, NULL);
		h->truncating = false;
		break;
	default:
		rc = bus_fail(&err, EACCES, "this file is read-only");
	}
	if (rc < 0) {
		refuse(req, "write", h->path, h->agent_id, &err);
		return;
	}
	h->wrote = true;
	h->writer = fuse_req_ctx(req)->pid;
	if (h->node == N_PAIR)
		h->unflushed += size;
	if (h->node == N_PAIR && fs->cluster && bus_draft_remote(h->draft) &&
	    !cluster_connected(fs->cluster)) {
		/* Cut off: the write waits for the connection, and fails if it does not
		 * come back in time (bash would not see an error at close). */
		h->verdict = cluster_park_write(fs->cluster, req, size, h->verdict, h->agent_id,
						h->path);
		return;
	}
	fuse_reply_write(req, size);
}

/* The bytes a FLUSH would commit: a message being written, an unfinished metric line
 * or `send` record. */
static size_t flush_pending(const struct handle *h)
{
	switch (h->node) {
	case N_PAIR: return h->unflushed;
	case N_AGENT_METRICS: return h->pending.len;
	case N_SEND: return blank(h->pending.data, h->pending.len) ? 0 : h->pending.len;
	default: return 0;
	}
}

/* A FLUSH sent by the exit of a process killed by a signal commits nothing. When that
 * process wrote the pending bytes (or their writer is dying or gone too: the threads
 * of one killed process), they are dropped and the reason logged. When their writer
 * is another process, alive (a child that shared the file was killed), they stay
 * pending for that writer's own close. True when the request was answered. */
static bool flush_of_killed_writer(fuse_req_t req, struct fs *fs, struct handle *h)
{
	size_t pending = flush_pending(h);
	pid_t pid = fuse_req_ctx(req)->pid;
	if (!pending)
		return false;
	int sig = dying_signal(pid);
	if (!sig)
		return false;
	if (h->writer != pid && !dying_or_gone(h->writer)) {
		fuse_reply_err(req, 0);
		return true;
	}
	if (h->node == N_PAIR) {
		bus_draft_discard(fs->bus, h->draft);
		h->unflushed = 0;
	} else {
		buf_reset(&h->pending);
	}
	struct bus_error err;
	bus_fail(&err, EINTR, "writer killed by signal %d; %zu bytes dropped", sig, pending);
	refuse(req, "flush", h->path, h->agent_id, &err);
	return true;
}

/* A FLUSH from another process than the one that wrote the pending bytes (a child
 * that inherited the file and closes its copy, at exit or before an exec) leaves
 * them for the writer's own close: a message is sent by its writer, whole, or not
 * at all when the writer is killed. When the writer is gone, whoever closes last
 * sends them. True when the request was answered. */
static bool flush_of_another_process(fuse_req_t req, struct handle *h)
{
	pid_t pid = fuse_req_ctx(req)->pid;
	if (!flush_pending(h) || !h->writer || h->writer == pid || same_process(pid, h->writer) ||
	    dying_or_gone(h->writer))
		return false;
	fuse_reply_err(req, 0);
	return true;
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	struct bus_error err = {0};
	if (flush_of_killed_writer(req, fs, h) || flush_of_another_process(req, h))
		return;
	if (h->node == N_RULES && h->truncating && !h->cleared) {
		/* `: > alerts/rules` clears the rules. bash's `echo ... >` flushes once
		 * before it writes: the write then replaces (or, if refused, restores). */
		buf_reset(&h->pending);
		if (bus_rules_clear(fs->bus, &h->pending, &err) < 0) {
			refuse(req, "flush", h->path, 0, &err);
			return;
		}
		h->cleared = h->saved = true;
	}
	if (h->node == N_AGENT_METRICS && h->pending.len) {
		/* The last line of what this file wrote, without its newline. */
		int rc = blank(h->pending.data, h->pending.len)
			 ? 0 : bus_metrics_write(fs->bus, h->agent_id, fuse_req_ctx(req)->uid,
						  h->pending.data, h->pending.len, &err);
		buf_reset(&h->pending);
		if (rc < 0) {
			refuse(req, "flush", h->path, h->agent_id, &err);
			return;
		}
	}
	if (h->node == N_SEND && h->pending.len && !blank(h->pending.data, h->pending.len)) {
		/* Whole records were sent as they arrived; what is left is an unfinished one,
		 * and closing ends it. */
		bus_fail(&err, EINVAL, "the file ended inside a send record (%zu bytes, dropped): "
			 "a record is one whole JSON object", h->pending.len);
		buf_reset(&h->pending);
		refuse(req, "flush", h->path, h->agent_id, &err);
		return;
	}
	if (h->node == N_PAIR && cluster_verdict_error(h->verdict)) {
		/* A write of it failed while the node was cut off: nothing is sent. */
		bus_draft_discard(fs->bus, h->draft);
		h->unflushed = 0;
		fuse_reply_err(req, cluster_verdict_error(h->verdict));
		return;
	}
	if (h->node == N_PAIR)
		h->unflushed = 0;
	bool refused_before = h->node == N_PAIR && bus_draft_poisoned(h->draft);
	uint64_t before = h->node == N_PAIR ? bus_draft_remote_number(h->draft) : 0;
	if (h->node == N_PAIR && bus_draft_flush(fs->bus, h->draft, &err) < 0) {
		/* The write that was refused already logged its reason; a failure of the
		 * commit itself (memory, the store) is new and is logged now. */
		if (refused_before)
			fuse_reply_err(req, err.code);
		else
			refuse(req, "flush", h->path, h->agent_id, &err);
		return;
	}
	uint64_t queued = h->node == N_PAIR ? bus_draft_remote_number(h->draft) : 0;
	if (queued && queued != before && fs->cluster) {
		/* To another node: success once JetStream stored it. */
		cluster_park(fs->cluster, req, &queued, 1, 0, h->agent_id, h->path);
		return;
	}
	fuse_reply_err(req, 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	handle_free(fs_of(req), (struct handle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
		    struct fuse_pollhandle *ph)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	if (h->node == N_NEXT || h->node == N_CLAIM || h->node == N_EVENTS) {
		waiters_poll(fs_of(req), req, h, ph);
		return;
	}
	if (ph)
		fuse_pollhandle_destroy(ph);
	fuse_reply_poll(req, POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM);
}

/* ---------- directories: opendir, mkdir, rmdir, unlink ---------- */

/* An inbox or outbox is listed only by its agent's owner (or root), as its files are
 * read: the outbox holds the envelopes its agent sent, the same as its recipients
 * received. */
static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct node_ref r = ref_of(fs, ino);
	struct bus_agent_info a;
	if ((r.node == N_INBOX || r.node == N_OUTBOX || r.node == N_INFLIGHT || r.node == N_DEAD) &&
	    bus_agent_by_id(fs->bus, r.agent_id, &a) == 0 && !owner_ok(req, &a)) {
		char why[160];
		snprintf(why, sizeof why, "uid %u may not list the %s of %s",
			 (unsigned)fuse_req_ctx(req)->uid,
			 r.node == N_INBOX ? "inbox" : r.node == N_OUTBOX ? "outbox"
			 : r.node == N_INFLIGHT ? "leases" : "dead letters", a.name);
		refuse_at(req, "opendir", ino, NULL, EACCES, why);
		return;
	}
	fi->fh = 0;
	fuse_reply_open(req, fi);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fs *fs = fs_of(req);
	struct node_ref p = ref_of(fs, parent);
	if (p.node != N_AGENTS) {
		refuse_at(req, "mkdir", parent, name, EACCES,
			  "directories are made only in agents/ (mkdir agents/NAME registers NAME)");
		return;
	}
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct bus_error err = {0};
	struct bus_agent_info a;
	if (bus_agent_create(fs->bus, name, ctx->uid, ctx->gid, &a, &err) < 0) {
		refuse_at(req, "mkdir", parent, name, err.code, err.reason);
		return;
	}
	struct fuse_entry_param e;
	memset(&e, 0, sizeof e);
	struct node_ref r = {N_AGENT_DIR, a.id, 0, 0};
	node_attr(fs, &r, &e.attr);
	e.ino = e.attr.st_ino;
	e.generation = 1;
	e.entry_timeout = 3600.0;
	fuse_reply_entry(req, &e);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct node_ref p = ref_of(fs, parent);
	if (p.node != N_AGENTS) {
		refuse_at(req, "rmdir", parent, name, EACCES,
			  "only agent directories can be removed (rmdir agents/NAME)");
		return;
	}
	struct bus_error err = {0};
	struct bus_agent_info a;
	bool known = bus_agent_by_name(fs->bus, name, &a) == 0;
	if (bus_agent_remove(fs->bus, name, fuse_req_ctx(req)->uid, &err) < 0) {
		char path[256];
		snprintf(path, sizeof path, "agents/%s", name);
		refuse(req, "rmdir", path, known ? a.id : 0, &err);
		return;
	}
	fuse_reply_err(req, 0);
}

/* `rm inflight/F` acks the lease F names (a file of an old lease is gone: ENOENT);
 * `rm dead/F` discards the dead letter. */
static void unlink_lease_or_dead(fuse_req_t req, struct fs *fs, const struct node_ref *p,
				 fuse_ino_t parent, const char *name)
{
	char id[BUS_MSG_ID_LEN + 1];
	uint64_t token = 0;
	uint64_t number = p->node == N_INFLIGHT ? lease_parse_file_name(name, id, &token)
						: message_parse_any_file_name(name, id);
	struct bus_error err = {0};
	if (!number) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	uid_t uid = fuse_req_ctx(req)->uid;
	int rc = p->node == N_INFLIGHT
		 ? bus_lease_ack(fs->bus, p->agent_id, number, id, token, uid, &err)
		 : bus_dead_discard(fs->bus, p->agent_id, number, id, uid, &err);
	if (rc == -ENOENT || rc == -ESTALE)
		fuse_reply_err(req, ENOENT);
	else if (rc < 0)
		refuse_at(req, "unlink", parent, name, err.code, err.reason);
	else
		fuse_reply_err(req, 0);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct node_ref p = ref_of(fs, parent);
	if (p.node == N_INFLIGHT || p.node == N_DEAD) {
		unlink_lease_or_dead(req, fs, &p, parent, name);
		return;
	}
	if (p.node != N_INBOX) {
		refuse_at(req, "unlink", parent, name, EACCES,
			  p.node == N_OUTBOX ? "the outbox is a read-only record of sent messages"
					     : "only inbox, inflight and dead messages can be removed");
		return;
	}
	char id[BUS_MSG_ID_LEN + 1];
	uint64_t number = message_parse_any_file_name(name, id);
	struct bus_error err = {0};
	if (!number) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (bus_ack(fs->bus, p.agent_id, number, id, fuse_req_ctx(req)->uid, &err) < 0) {
		if (err.code == ENOENT)
			fuse_reply_err(req, ENOENT);
		else
			refuse_at(req, "unlink", parent, name, err.code, err.reason);
		return;
	}
	fuse_reply_err(req, 0);
}

/* ---------- SETATTR and the operations that mean nothing here ---------- */

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct node_ref r = ref_of(fs, ino);
	struct stat st;
	if (node_attr(fs, &r, &st) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		refuse_at(req, "setattr", ino, NULL, EACCES,
			  "modes and owners are fixed by busfs (chmod and chown mean nothing here)");
		return;
	}
	bool writable = r.node == N_SEND || r.node == N_CTL || r.node == N_PAIR ||
			r.node == N_HEALTH || r.node == N_AGENT_METRICS || r.node == N_RULES;
	if ((to_set & FUSE_SET_ATTR_SIZE) && !writable) {
		refuse_at(req, "truncate", ino, NULL, EACCES, "this file is read-only");
		return;
	}
	uid_t uid = fuse_req_ctx(req)->uid;
	struct bus_agent_info a;
	if ((to_set & FUSE_SET_ATTR_SIZE) && r.node >= N_AGENT_DIR &&
	    bus_agent_by_id(fs->bus, r.agent_id, &a) == 0 && !owner_ok(req, &a)) {
		char why[160];
		snprintf(why, sizeof why, "uid %u may not truncate the files of %s", (unsigned)uid,
			 a.name);
		refuse_at(req, "truncate", ino, NULL, EACCES, why);
		return;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size != 0) {
		refuse_at(req, "truncate", ino, NULL, EACCES,
			  "truncating to a non-zero size means nothing here (only to 0)");
		return;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) && r.node == N_RULES) {
		if (uid != 0 && uid != fs->uid) {
			refuse_at(req, "truncate", ino, NULL, EACCES,
				  "only the uid that runs busfs (or root) may change the alert rules");
			return;
		}
		/* `truncate -s 0 alerts/rules` clears them (an O_TRUNC open sends no SETATTR
		 * here: libfuse asks for atomic_o_trunc, and op_flush handles those). */
		struct handle *th = fi ? (struct handle *)(uintptr_t)fi->fh : NULL;
		struct bus_error err = {0};
		if (attr->st_size == 0 && !(th && th->truncating) &&
		    bus_rules_clear(fs->bus, NULL, &err) < 0) {
			refuse_at(req, "truncate", ino, NULL, err.code, err.reason);
			return;
		}
	}
	/* `touch health` is a heartbeat. The truncation that `echo ... > health` makes
	 * before its write also carries a time, and is not one. */
	const int times = FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
			  FUSE_SET_ATTR_MTIME_NOW;
	if (r.node == N_LEASE_MSG && (to_set & times) && !(to_set & FUSE_SET_ATTR_SIZE)) {
		/* `touch inflight/F`: the lease gets --lease from now. */
		struct bus_error err = {0};
		if (bus_lease_touch(fs->bus, r.token, uid, &err) < 0) {
			if (err.code == ENOENT)
				fuse_reply_err(req, ENOENT);
			else
				refuse_at(req, "touch", ino, NULL, err.code, err.reason);
			return;
		}
		node_attr(fs, &r, &st);
	}
	if (r.node == N_HEALTH && (to_set & times) && !(to_set & FUSE_SET_ATTR_SIZE)) {
		struct bus_error err = {0};
		if (bus_health_beat(fs->bus, r.agent_id, uid, &err) < 0) {
			refuse_at(req, "touch", ino, NULL, err.code, err.reason);
			return;
		}
		node_attr(fs, &r, &st);
	}
	/* Truncation of send/ctl/health/a message being written, and other times, mean
	 * nothing. */
	fuse_reply_attr(req, &st, 0.0);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	refuse_at(req, "rename", parent, name, EACCES, "nothing in busfs can be renamed");
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	refuse_at(req, "link", newparent, newname, EACCES, "links cannot be made in busfs");
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	refuse_at(req, "symlink", parent, name, EACCES, "links cannot be made in busfs");
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	refuse_at(req, "mknod", parent, name, EACCES, "special files cannot be made in busfs");
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	refuse_at(req, "setxattr", ino, NULL, EACCES, "busfs files carry no extended attributes");
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	refuse_at(req, "removexattr", ino, NULL, EACCES,
		  "busfs files carry no extended attributes");
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	/* Merged writes would turn two messages into one. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

void files_init_ops(struct fuse_lowlevel_ops *ops);
void files_init_ops(struct fuse_lowlevel_ops *ops)
{
	ops->init = op_init;
	ops->open = op_open;
	ops->create = op_create;
	ops->read = op_read;
	ops->write = op_write;
	ops->flush = op_flush;
	ops->release = op_release;
	ops->poll = op_poll;
	ops->opendir = op_opendir;
	ops->mkdir = op_mkdir;
	ops->rmdir = op_rmdir;
	ops->unlink = op_unlink;
	ops->setattr = op_setattr;
	ops->rename = op_rename;
	ops->link = op_link;
	ops->symlink = op_symlink;
	ops->mknod = op_mknod;
	ops->setxattr = op_setxattr;
	ops->removexattr = op_removexattr;
}
