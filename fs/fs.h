/* fs.h — the FUSE server's shared state: the node table, open files, parked readers.
 *
 * The server runs ONE dispatch thread (fuse_session_loop): on these machines a
 * thread hand-off costs more than a request, and no handler ever blocks — a `next`
 * reader that must wait is a parked request, not a sleeping thread. A second thread,
 * the notifier, sends poll notifications, because fuse_lowlevel_notify_* must never
 * run inside a request handler. */
#ifndef BUSFS_FS_H
#define BUSFS_FS_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <syslog.h>

#include "busfs/bus.h"

/* ---- inode numbers: derived from what a node is, nothing is allocated ----
 * The kind is in the top 4 bits; below it:
 *   INO_FIXED   2 + the node's row in the table of fixed nodes (1 is the root)
 *   INO_AGENT   agent id << 8 | the file's row in the agent table
 *   INO_PAIR    the sender's agent id << 8 | the create's number mod 256: an outbox
 *               file being written. The kernel lets one WRITE at a time into one
 *               inode, so a sender's concurrent messages get inodes of their own
 *   INO_INBOX   the message's store-wide number; the bus knows whose inbox holds it
 *   INO_OUTBOX  the same number, for the copy in the sender's outbox
 *   INO_LEASE   a lease's token: an inflight/ file is one lease, so a file of an old
 *               lease never names the message's next one
 *   INO_DEAD    the message's number, for its file in dead/
 *   INO_REMOTE  a remote agent's id (cluster.c) << 8 | 0 its directory, 1 its health
 * Agent ids (2^52 of them: over a century at a million mkdirs a second) and message
 * numbers (2^60) only grow and are never reused, so an inode number is unique for the
 * life of a mount and a stale one can only ever answer ENOENT. */
#define INO_KIND_SHIFT 60
#define INO_AGENT_ID_MAX ((UINT64_C(1) << (INO_KIND_SHIFT - 8)) - 1)
enum ino_kind { INO_FIXED = 0, INO_AGENT = 1, INO_PAIR = 2, INO_INBOX = 3, INO_OUTBOX = 4,
		INO_LEASE = 5, INO_DEAD = 6, INO_REMOTE = 7 };

/* What a node is. Fixed nodes and agent nodes come from the tables in tree.c. */
enum node {
	N_NONE = 0,
	N_ROOT, N_README, N_ERRORS, N_AGENTS,              /* fixed */
	N_HEALTH_DIR, N_HEALTH_STATUS,
	N_METRICS_DIR, N_METRICS_LOG, N_SUMMARY, N_PROM,
	N_ALERTS_DIR, N_RULES, N_ACTIVE, N_ALERTS_LOG, N_EVENTS,
	N_REMOTE_DIR, N_REMOTE_HEALTH,                     /* agents/NAME@NODE (cluster.c) */
	N_AGENT_DIR, N_INBOX, N_OUTBOX, N_SEND, N_NEXT,    /* per agent */
	N_CTL, N_AGENT_ERRORS, N_HEALTH, N_AGENT_METRICS,
	N_CLAIM, N_INFLIGHT, N_DEAD,
	N_AGENT_LAST = N_DEAD,
	N_PAIR,                                            /* outbox/B being written */
	N_INBOX_MSG, N_OUTBOX_MSG, N_LEASE_MSG, N_DEAD_MSG, /* message files */
};

struct node_ref {
	enum node node;
	uint64_t agent_id;     /* agent nodes, messages; sender for N_PAIR; the remote
				* agent's id for N_REMOTE_* */
	uint64_t number;       /* messages; recipient id for N_PAIR (0 = all, PAIR_UNKNOWN
				* when only the inode number is known) */
	uint64_t token;        /* N_LEASE_MSG: the lease; N_PAIR: 0..255, which inode */
};
#define PAIR_UNKNOWN UINT64_MAX

struct fs;
fuse_ino_t ino_of(const struct node_ref *r);
/* What an inode number names; for a message, the bus tells whose it is (agent_id 0
 * when it is gone). */
struct node_ref ref_of(struct fs *fs, fuse_ino_t ino);

/* ---- open files ---- */
struct handle {
	enum node node;
	uint64_t agent_id;
	char path[160];               /* for the errors log */
	struct bus_draft *draft;      /* N_PAIR */
	struct cluster_verdict *verdict; /* N_PAIR to another node: shared with parked
				       * writes (cluster.h) */
	struct buf pending;           /* N_SEND: a record split across writes */
	struct buf doc;               /* generated documents: rendered once at open */
	struct bus_message *msg;      /* message files; N_NEXT once answered */
	bool next_done;               /* N_NEXT, N_CLAIM answered with end-of-file */
	bool claimed;                 /* N_CLAIM: h->doc holds the message it leased */
	uid_t uid;                    /* the opener's */
	size_t unflushed;             /* N_PAIR: bytes accepted since the last flush */
	pid_t writer;                 /* the thread of the last accepted write: a killed
				       * process's FLUSH drops the pending bytes unless
				       * their writer is another, live, process */
	bool wrote;                   /* N_HEALTH, N_CTL, N_RULES: a write was accepted */
	bool truncating;              /* N_RULES opened with O_TRUNC (`>`), not written yet:
				       * its first write replaces the rules */
	bool cleared;                 /* ... and an empty flush cleared them meanwhile */
	bool saved;                   /* N_RULES: h->pending holds the rules as they were
				       * before this file changed them; h->doc the names
				       * its writes gave */
	uint64_t log_expect, log_pos; /* logs: the offset the next sequential read asks
				       * for, and where in the log it continues */
	struct fuse_pollhandle *ph;   /* N_NEXT, N_CLAIM: owned here until handed to the
				       * notifier */
	struct handle *poll_next, *poll_prev;  /* list of handles holding a poll handle */
	struct handle *open_next, *open_prev;  /* list of all open handles (struct fs) */
};

struct parked;

/* --sync: replies held until the journal behind them is on stable storage (sync.c). */
struct held_reply;
struct syncer {
	bool on;                      /* --sync */
	bool installed, started, stop;
	_Atomic uint64_t synced;      /* journal bytes written that a sync covered */
	pthread_mutex_t lock;         /* the queue, stop */
	pthread_cond_t cond;
	struct held_reply *head, *tail;
	size_t held;                  /* replies in the queue */
	size_t last_group;            /* replies the last fdatasync answered */
	int64_t last_sync_us;         /* how long it took */
	pthread_t thread;
	uint64_t syncs, replies;      /* the syncer's, for its last log line */
};

struct fs {
	struct bus *bus;
	struct fuse_session *se;
	const char *mountpoint;
	uid_t uid;                    /* the server's: owns the fixed files, edits alert rules */
	gid_t gid;
	uint8_t pair_next;            /* the N_PAIR token of the next create */
	size_t open_files;            /* handles alive; only the dispatch thread changes it */
	struct handle *open_list;     /* every open handle, freed at RELEASE or at exit */
	bool stopping;                /* after SIGTERM: `next` answers end-of-file at once */

	pthread_mutex_t park_lock;    /* protects parked, polls, notify queue */
	struct parked *parked;        /* parked `next` reads, a doubly linked list */
	size_t nparked;
	struct handle *polls;         /* handles whose poll handle waits for a message */
	pthread_cond_t notify_cond;
	struct fuse_pollhandle **notify_q;
	size_t notify_n, notify_cap;
	bool notify_stop;
	pthread_t notifier;
	bool notifier_started;

	/* The document a GETATTR just rendered (for its size): an OPEN that follows at
	 * once serves it, so `stat` and `cat` agree and it is rendered once. Only the
	 * dispatch thread uses it. */
	struct node_ref cached_ref;
	double cached_at;
	uint64_t cached_version;
	struct buf cached_doc;

	struct cluster *cluster;      /* --cluster: the other nodes (cluster.c), else NULL */
	struct syncer sync;           /* --sync (sync.c) */

	/* The ticker evaluates alert rules every --alert-interval. */
	pthread_t ticker;
	bool ticker_started, ticker_stop;
	pthread_mutex_t ticker_lock;
	pthread_cond_t ticker_cond;
};

/* Starts a helper thread with every signal blocked: signals must land on the dispatch
 * thread, whose read of /dev/fuse they end. 0 or -errno. */
int fs_thread_start(pthread_t *t, void *(*fn)(void *), void *arg);

/* sync.c: install after the mount (before any request), start after daemonizing,
 * stop after the last reply (it sends what it holds). */
int syncer_install(struct fs *fs);
int syncer_start(struct fs *fs);
void syncer_stop(struct fs *fs);

/* tree.c */
struct fuse_lowlevel_ops busfs_make_ops(void);
int node_attr(struct fs *fs, const struct node_ref *r, struct stat *st);
/* How long the kernel may keep a node's attributes. */
double attr_timeout(enum node n);
void node_path(struct fs *fs, const struct node_ref *r, const char *name, char *out, size_t n);
void readme_render(struct fs *fs, struct buf *out);
/* Renders a generated document (README, ctl, health, health/status, summary.json,
 * busfs.prom, active.json, rules) into out; false for any other node. */
bool doc_render(struct fs *fs, const struct node_ref *r, struct buf *out);
/* The document for an OPEN: the one GETATTR rendered a moment ago, or a new one. */
void doc_for_open(struct fs *fs, const struct node_ref *r, struct buf *out);
/* The size of a log (errors, metrics, alerts.jsonl); false for any other node. */
bool log_size(struct fs *fs, const struct node_ref *r, uint64_t *size);

/* files.c */
void files_close_all(struct fs *fs);

/* dying.c */
/* The signal killing pid, which is exiting now (at the FLUSH its exit sends); 0 when
 * it is not exiting, ends normally, or /proc cannot tell. */
int dying_signal(pid_t pid);
/* pid is exiting or no longer exists (or is unknown: 0). */
bool dying_or_gone(pid_t pid);
/* Threads a and b belong to one process. */
bool same_process(pid_t a, pid_t b);

/* log.c */
int log_parse_level(const char *name);   /* LOG_ERR..LOG_DEBUG, -1 when unknown */
void log_set_level(int prio);
void log_use_syslog(void);
bool log_enabled(int prio);
void log_msg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ticker.c */
int ticker_start(struct fs *fs, double interval_s);
void ticker_stop(struct fs *fs);

/* waiters.c */
void waiters_init(struct fs *fs);
int waiters_start(struct fs *fs);
void waiters_wake(void *ctx, uint64_t agent_id);
void waiters_park(struct fs *fs, fuse_req_t req, struct handle *h, size_t size, bool nonblock);
void waiters_poll(struct fs *fs, fuse_req_t req, struct handle *h, struct fuse_pollhandle *ph);
void waiters_forget_handle(struct fs *fs, struct handle *h);
void waiters_shutdown(struct fs *fs);
/* Answers a `next` or `claim` read from what it holds, or with end-of-file. */
void next_reply(struct fuse_req *req, struct handle *h, size_t size, off_t off);
/* Whether a read of this waiting file has its answer already (no need to park). */
bool next_answered(const struct handle *h);

#endif
