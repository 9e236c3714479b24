/* bus_impl.h — the bus's internal state, shared by the core files that change it.
 *
 * Lock: bus->lock protects everything below. It is never held across a call into
 * the FUSE layer: wake-ups gathered during a change are delivered after unlocking
 * (bus_unlock_and_wake). There is no other lock in the core. */
#ifndef BUSFS_BUS_IMPL_H
#define BUSFS_BUS_IMPL_H

#include <pthread.h>

#include "busfs/bus.h"
#include "busfs/clock.h"
#include "busfs/errlog.h"
#include "busfs/health.h"
#include "busfs/store.h"
#include "busfs/strmap.h"
#include "metrics.h"
#include "msgindex.h"
#include "quota.h"
#include "records.h"

#define BUS_ERRNO_MAX 160
/* Freeing this much at once (a large message, draft or outbox) trims the heap. */
#define BUS_TRIM_BYTES (256u << 10)


/* Pending messages in delivery order. Removal leaves a hole (NULL) that compaction
 * of the array reclaims; nums[] stays sorted, so lookups are a binary search. */
struct inbox {
	uint64_t *nums;
	struct bus_message **msgs;
	size_t head, tail, cap, live;
};

/* The newest BUS_OUTBOX_KEEP sent messages, oldest first. */
struct outbox {
	struct bus_message **ring;
	size_t start, count;
};

struct agent {
	uint64_t id;
	char name[BUS_NAME_MAX + 1];
	uid_t uid;
	gid_t gid;
	int64_t created_us;
	bool draining;
	struct inbox inbox;
	uint32_t reserved;
	struct quota_drafts drafts;  /* open drafts to this inbox, per opening uid */
	uint64_t delivered_total;
	uint64_t acked_total;
	struct outbox outbox;
	/* Leased messages (inflight/) and dead letters (dead/), by delivery number. */
	struct inbox inflight;
	struct inbox dead;
	uint64_t redelivered_total;  /* leases that ended without an ack */
	struct errlog errors;
	/* The last health report, and when it or a heartbeat came (0: never). */
	enum health_status health;
	int64_t last_seen_us;
	char last_seen_text[BUS_TIME_LEN + 1];  /* last_seen_us formatted, "" when 0 */
	struct buf health_reason;
	struct buf health_extra;
	/* Scratch for one `send` write, valid only under the lock within it. */
	uint32_t batch_count;
	uint64_t batch_seq;
	bool batch_touched;
	bool wake_queued;       /* its id is in bus->wake_ids */
	uint32_t prep_count;    /* messages to it in the record being prepared (bus.c) */
};

/* A moment the ticker must act at (lease.c): a min-heap on `when`. An entry is only
 * a hint: when it comes due, the message's state says whether it still applies. */
enum timer_kind { TIMER_LEASE_END = 1, TIMER_READY = 2, TIMER_TTL = 3 };
struct timer {
	int64_t when;
	uint64_t number;
	uint64_t token;      /* TIMER_LEASE_END: the lease it ends */
	uint8_t kind;
};

enum dead_reason { DEAD_MAX_DELIVER = 1, DEAD_EXPIRED = 2, DEAD_NREASONS = 3 };

/* Idempotency keys within --dedupe-window (dedupe.c). */
#define DEDUPE_KEY_MAX 128
#define DEDUPE_KEY_BUF (11 + 1 + BUS_NAME_MAX + 1 + DEDUPE_KEY_MAX + 1)
struct dedupe_entry {
	char *key;                   /* "UID/SENDER\x01KEY": the sending agent and its owner */
	int64_t at;
};
struct dedupe {
	struct strmap map;           /* key -> first seen (us) + 1 */
	struct dedupe_entry *q;      /* a ring, oldest first */
	size_t head, n, cap;
};

/* The events log (events.c). */
struct events {
	struct seglog *log;          /* NULL for --check and --salvage */
	uint64_t seq;                /* the last seq given */
	uint64_t logged;             /* the last seq the log holds */
	uint64_t *first_seq;         /* the first seq of each segment */
	size_t nsegs, cap;
	struct buf lines;            /* the lines of the record being applied, after any held */
	uint64_t lines_first, lines_last;
	bool held;                   /* lines found no room in the log: written later */
	bool stalled;                /* a line could not be made: the next start writes it */
};

/* An alert of one rule for one agent: pending (its condition holds, `for=` has not
 * passed yet; not stored) or firing (stored). */
struct alert {
	char rule[RULE_NAME_MAX + 1];
	char agent[BUS_NAME_MAX + 1];
	int64_t pending_since;
	bool firing;
	int64_t since_us;
	double value;               /* at the last evaluation */
	enum rule_severity severity; /* of the rule when it fired */
};

struct alerts {
	struct rule_set user;       /* the rules written to alerts/rules */
	struct alert *v;
	size_t n, cap;
	struct seglog *log;         /* alerts.jsonl */
	int64_t cleared_at;         /* when `>` last cleared the rules, until its write */
};

struct bus {
	pthread_mutex_t lock;
	struct bus_config cfg;
	struct store *store;
	double started;

	/* The live agents twice, sorted by id and by name (nagents each). Ids are 64-bit,
	 * handed out in increasing order and never reused, so a million agents created
	 * and removed leave nothing behind. */
	struct agent **by_id;
	size_t by_id_cap;
	uint64_t next_id;
	struct agent **by_name;
	size_t nagents, by_name_cap;
	struct msgindex messages;    /* every message in an inbox or outbox, by number */

	struct strmap seqs;          /* "from\x01to" -> last sequence */
	uint64_t counter;            /* last delivery number = msg_id counter */
	uint64_t snap_last;          /* while loading: the last snapshot message's number */
	uint64_t pending;            /* in inboxes and inflight: not consumed, not dead */
	uint64_t leased;             /* in inflight */
	uint64_t dead;               /* in dead */
	uint64_t last_token;         /* the newest lease's fencing token */
	uint64_t redeliveries_total; /* leases that ended (expired or nak) without an ack */
	uint64_t dead_total[DEAD_NREASONS]; /* dead letters made, by reason; [0] discarded */
	struct timer *timers;        /* lease ends, nak delays, ttls (lease.c) */
	size_t ntimers, timers_cap;
	bool timers_lost;            /* a timer could not be kept: rebuild at the next tick */
	struct strmap leases;        /* "token" -> number of each leased message */
	struct dedupe dedupe;
	uint64_t duplicates_total;   /* send records not delivered again for their key */
	struct events events;
	bool restating;              /* applying a snapshot's record: it makes no event */
	bool events_wake_queued;     /* BUS_EVENTS_WAKE_ID is in wake_ids */
	uint64_t delivered_total;
	uint64_t rejected_total;
	uint64_t rejected_by[BUS_ERRNO_MAX]; /* per errno; [0] holds codes beyond the table */
	uint64_t compacted_at;       /* journal bytes after the last compaction attempt */
	uint64_t space_version;      /* version when bus_space_for last made room */
	uint64_t compacted_part;     /* what its messages took of the last snapshot written
				      * (records.c: messages_part) */

	struct errlog errors;
	struct buf rec;              /* scratch record */
	/* The messages of the record bus_commit is committing, decoded before it goes to
	 * the journal, with the reader offset after each: its apply takes them in order
	 * instead of decoding, so nothing in it allocates once the record is written. */
	struct bus_message **prep;
	size_t *prep_end;
	size_t prep_n, prep_next;
	struct quota quota;          /* per uid: agents, pending and draft bytes */
	uid_t server_uid;            /* the uid the quotas spare */
	struct metrics metrics;
	struct alerts alerts;

	uint64_t version;            /* counts changes (bus_unlock_and_wake) */
	uint64_t records_by_kind[256]; /* records applied since the start, by kind (--check) */

	/* Other nodes (remote.c): this node's name ("" outside a cluster), the remote
	 * agents learned, and one gateway per node messages went to. */
	char node[BUS_NAME_MAX + 1];
	struct strmap remote_known;  /* "NAME@NODE" -> 1 */
	struct agent **gateways;
	size_t ngateways, gateways_cap, gateway_next;

	bus_wake_fn wake;
	void *wake_ctx;
	uint64_t *wake_ids;
	size_t wake_n, wake_cap;
};

/* bus.c: the lock, wake-ups, life cycle. */
void bus_lock(struct bus *bus);
void bus_unlock_and_wake(struct bus *bus);
/* Queues the agent's parked readers to be woken at bus_unlock_and_wake. */
void want_wake(struct bus *bus, uint64_t id);
/* Room for `more` wake-ups that then cannot fail for memory. */
int wake_reserve(struct bus *bus, size_t more);
void wake_flags_clear(struct bus *bus);
/* A line in the errors logs for something the bus did on its own (a dead letter
 * pushed out), as the server's uid, not counted as a refusal. Under the lock. */
void bus_note_locked(struct bus *bus, const char *agent, const char *op, const char *path,
		     const struct bus_error *err);
struct bus *bus_alloc(const struct bus_config *cfg);
void bus_free(struct bus *bus);

/* remote.c: gateways, the queues of messages to other nodes. Their ids start at
 * BUS_GATEWAY_ID0 and bus_find_id never returns one: no file reaches them. */
#define BUS_GATEWAY_ID0 (UINT64_C(1) << 60)
bool gateway_is(const struct agent *a);
struct agent *gateway_for(struct bus *bus, const char *name, bool create);
void gateways_free(struct bus *bus);
/* The gateway a send to the remote agent `name` goes through; NULL with err filled
 * (ENOENT: not known, not in a cluster; EINVAL; ENOMEM). */
struct agent *remote_recipient(struct bus *bus, const char *name, struct bus_error *err);

/* lease.c: a new lease on a's pending message m, or m's lease ended (a nak, ready
 * again at ready_us); one committed record each. */
int lease_grant_locked(struct bus *bus, struct agent *a, struct bus_message *m, double seconds,
		       int64_t now, struct bus_error *err);
int lease_release_locked(struct bus *bus, struct agent *a, struct bus_message *m,
			 int64_t ready_us, int64_t now, struct bus_error *err);

/* agents.c: bus_find also resolves "NAME@NODE" and "@NODE" to an existing gateway;
 * bus_find_agent only finds agents (records and calls about agents use it). */
struct agent *bus_find(struct bus *bus, const char *name);
struct agent *bus_find_agent(struct bus *bus, const char *name);
struct agent *bus_find_id(struct bus *bus, uint64_t id);
/* The index in bus->by_id of the first agent whose id is >= id. */
size_t bus_id_index(const struct bus *bus, uint64_t id);
bool bus_may_act_as(const struct agent *a, uid_t uid);
/* Whether the per-uid limits apply to uid (all but the server's own). */
bool bus_quota_applies(const struct bus *bus, uid_t uid);
/* The agent, when uid may act for it (`what` names the act in the refusal); NULL with
 * err filled (ENOENT, EACCES) otherwise. Under the lock. */
struct agent *bus_owned_agent(struct bus *bus, uint64_t agent_id, uid_t uid, const char *what,
			      struct bus_error *err);
/* "FROM\x01TO" into key (2 * BUS_NAME_MAX + 2 bytes). */
void pair_key(char *key, const char *from, const char *to);
uint64_t bus_pair_sequence(struct bus *bus, const char *from, const char *to);
void agent_free(struct agent *a);
/* Messages the agent holds against --inbox-capacity besides reservations: pending and
 * leased. */
static inline size_t agent_held(const struct agent *a) { return a->inbox.live + a->inflight.live; }
/* 0 when `more` messages fit in the agent's inbox beside what it holds and what is
 * being written to it, else EAGAIN with the reason. */
int agent_room(const struct bus *bus, const struct agent *a, uint32_t more,
	       struct bus_error *err);
void agent_info(const struct agent *a, struct bus_agent_info *out);

/* inbox.c: sorted message arrays (inboxes, inflight, dead) and outbox rings. */
int inbox_depth(const struct agent *a);
size_t inbox_search(const struct inbox *in, uint64_t number);
struct bus_message *inbox_find(const struct inbox *in, uint64_t number);
/* Room for `more` adds that then do not allocate. */
int inbox_reserve(struct inbox *in, size_t more);
int inbox_add(struct inbox *in, struct bus_message *m);
/* Removes and returns the message (the caller owns the inbox's reference). */
struct bus_message *inbox_take(struct inbox *in, uint64_t number);
struct bus_message *inbox_oldest(const struct inbox *in);
void inbox_free(struct inbox *in);
struct bus_message *outbox_at(const struct outbox *o, size_t i);
int outbox_reserve(struct outbox *o);
/* First index whose number is > after. */
size_t outbox_search(const struct outbox *o, uint64_t after);
void outbox_free(struct outbox *o);
int inbox_put(struct bus *bus, struct agent *to, struct bus_message *m);
/* Takes the message out of the inbox; the caller owns the inbox's reference. */
struct bus_message *inbox_remove(struct bus *bus, struct agent *a, uint64_t number);
void outbox_put(struct bus *bus, struct agent *from, struct bus_message *m);
/* Every outbox (agents' and gateways') lets go of its copies of messages no other
 * place holds: the sent history, given up when the store is full. Returns the bytes
 * those messages took, counted as messages_part counts them. */
uint64_t outbox_trim(struct bus *bus);
/* The agent's sorted array for a place other than BUS_OUTBOX. */
struct inbox *agent_place(struct agent *a, enum bus_place p);
/* Puts m in a sorted place, handing it the caller's reference; place_take gives the
 * place's reference back. Moving: put in the new place first, then take. */
int place_put(struct bus *bus, struct agent *a, enum bus_place p, struct bus_message *m);
struct bus_message *place_take(struct bus *bus, struct agent *a, enum bus_place p,
			       uint64_t number);
/* Before an agent goes: its messages leave the index (agent_free drops them). */
void agent_forget_messages(struct bus *bus, struct agent *a);

/* deliver.c */
void bus_uncharge(struct bus *bus, struct bus_message *m);
void bus_uncharge_all(struct bus *bus, struct inbox *in);
void bus_give_back(size_t bytes);
/* When a message sent at now with ttl_s (0: --message-ttl) expires; 0 for never. */
int64_t bus_message_expiry(const struct bus *bus, uint32_t ttl_s, int64_t now);
int bus_prepare_messages(struct bus *bus, const uint8_t *rec, size_t len);
void bus_prepared_clear(struct bus *bus);

/* records.c */
/* Appends the record in bus->rec to the journal, then applies it. Everything the
 * apply of a message record needs is allocated first, so an allocation failure gives
 * ENOMEM with the journal and the state as they were. */
int bus_commit(struct bus *bus, struct bus_error *err);
/* Whether `need` more bytes fit under --store-max-bytes beside the store and the open
 * drafts (compacting first if useful). */
bool bus_space_for(struct bus *bus, uint64_t need);
/* Raises a write's promise of store space (*held) to want bytes: within
 * --store-max-bytes (every promise counted) and allocated on the store's filesystem
 * now, else ENOSPC with the reason. bus_space_release gives all of *held back. */
int bus_space_reserve(struct bus *bus, uint64_t *held, uint64_t want, struct bus_error *err);
void bus_space_release(struct bus *bus, uint64_t *held);
void bus_compact_locked(struct bus *bus);
/* After loading: the snapshot on disk is taken to hold the messages loaded (at most
 * its size), as if this run had written it. */
void bus_compaction_baseline(struct bus *bus);
/* The records applied since the bus was opened, per kind, one line each. */
void bus_records_report(const struct bus *bus, struct buf *report);

/* lease.c */
void timer_add(struct bus *bus, int64_t when, uint64_t number, uint64_t token,
	       enum timer_kind kind);
/* The timers a message's state asks for (loading a snapshot). */
void lease_timers_of(struct bus *bus, const struct bus_message *m);
/* Enters a loaded lease in the token index; 0 or -ENOMEM. */
int lease_index_put(struct bus *bus, uint64_t token, uint64_t number);
/* Ends the leases whose deadline passed, wakes claimers of messages whose nak delay
 * ended, makes dead letters of pending messages past their ttl. Under the lock. */
void lease_tick_locked(struct bus *bus, int64_t now);
/* Takes an ended lease out of the token index. */
void lease_forget(struct bus *bus, uint64_t token);
/* The agent's message `number` leased under `token`, else NULL with ENOENT (no such
 * message) or ESTALE (not leased under that token) in err. */
struct bus_message *lease_check(struct bus *bus, struct agent *a, uint64_t number,
				const char *msg_id, uint64_t token, struct bus_error *err);
/* "discarded", "max_deliver", "expired". */
const char *bus_dead_reason_name(int reason);

/* dedupe.c */
/* "OWNER/FROM\x01KEY" into out; -EINVAL for an empty, too long or NUL-holding key. */
int dedupe_key(char *out, size_t n, uid_t owner, const char *from, const char *key,
	       size_t keylen);
bool dedupe_seen(const struct bus *bus, const char *k, int64_t now);
int dedupe_add(struct bus *bus, const char *k, int64_t at);
void dedupe_undo_last(struct bus *bus);
void dedupe_expire(struct bus *bus, int64_t now);
void dedupe_free(struct dedupe *d);

/* events.c: one line in `events`, of kind, about agent (or NULL), with fields (JSON
 * members, each starting with a comma, or NULL). Only from applying a record. */
void event_emit(struct bus *bus, const char *kind, const char *agent, const char *fields);
/* The same with the message's msg_id, from and to first, and its "bytes" unless 0. */
void event_message(struct bus *bus, const char *kind, const char *agent,
		   const struct bus_message *m, uint64_t bytes, const char *more);
/* Appends the lines the record just applied made (bus_apply_record), or forgets
 * them and gives the counter back (seq) for a record that did not apply. */
void events_flush(struct bus *bus);
/* Back to the counter and the lines as they were before a record that did not apply. */
void events_discard(struct bus *bus, uint64_t seq, size_t lines_len);
/* Lines are held or could not be made: the journal must keep the records behind them. */
bool events_behind(struct bus *bus);
int events_open(struct bus *bus, struct bus_error *err);
void events_close(struct bus *bus);

/* alerts.c */
int alerts_open(struct bus *bus, struct bus_error *err);
void alerts_close(struct bus *bus);

/* status.c: the agent's health status at now_us (stale and unknown included). */
enum health_status bus_agent_health(const struct bus *bus, const struct agent *a, int64_t now_us);

#endif
