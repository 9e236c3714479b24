/* bus.h — the message bus: agents, inboxes, outboxes, sends, acks, drain, errors.
 *
 * The bus is the whole state of busfs, kept in memory and made durable by the store.
 * Every change is one journal record, appended BEFORE the change is applied, and the
 * function that applies records is the same for live changes and for recovery: what
 * a restart rebuilds is exactly what the running server had. All public functions
 * take the bus lock themselves; none may be called from the wake callback. */
#ifndef BUSFS_BUS_H
#define BUSFS_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "busfs/buf.h"
#include "busfs/error.h"
#include "busfs/message.h"

#define BUS_OUTBOX_KEEP 1000
#define BUS_AGENT_ERRORS_KEEP 100
#define BUS_ERRORS_KEEP 1000
#define BUS_ERRORS_KEEP_PER_UID 100  /* of the top-level log's lines */
#define BUS_ERRORS_PER_SECOND 10     /* a uid's refusals logged a second, the rest counted */
#define BUS_MAX_SECONDS 2678400.0    /* the longest lease, nak delay or ttl: 31 days */

struct bus_config {
	const char *store_dir;
	uint32_t inbox_capacity;     /* default 1000 */
	uint64_t max_message_size;   /* default 1 MiB */
	uint64_t store_max_bytes;    /* 0: half of the store filesystem's free space */
	double health_ttl_s;         /* default 30: older reports make an agent stale */
	double summary_window_s;     /* default 60: what summaries and alert rules look at */
	double metrics_retention_s;  /* default 3600: older metric points are dropped, and
				      * series without a point in it are freed */
	uint32_t max_series;         /* default 10000 metric series (metric, agent, unit);
				      * a point starting one more gets ENOSPC */
	double alert_interval_s;     /* default 5: how often alert rules are evaluated */
	/* Per uid, except the server's own (SPEC §11); 0 means the default. */
	uint32_t max_agents_per_uid;    /* default 1000: beyond, mkdir gives EDQUOT */
	uint64_t max_bytes_per_uid;     /* default store_max_bytes / 4: pending + drafts */
	uint32_t max_drafts_per_sender; /* default 64 open drafts of one uid to one inbox */
	/* Leases (SPEC §10); 0 means the default. */
	double lease_s;              /* default 60: a claim's lease, and what extend adds */
	uint32_t max_deliver;        /* default 5: the lease that many ends dead */
	double message_ttl_s;        /* default 0 (none): a message's ttl unless it has one */
	double dedupe_window_s;      /* default 120: how long an idempotency key is kept */
	uint64_t events_retention;   /* default 100000: the events log keeps at least these */
};

struct bus_agent_info {
	uint64_t id;                 /* stable for this server run, never reused */
	char name[BUS_NAME_MAX + 1];
	uid_t uid;
	gid_t gid;
	int64_t created_us;
	bool draining;
	uint32_t depth;              /* pending messages */
	uint32_t reserved;           /* slots held by open outbox files */
	uint64_t delivered_total;
	uint64_t acked_total;
	uint32_t leased;             /* messages in inflight/ */
	uint32_t dead;               /* messages in dead/ */
	uint64_t redelivered_total;
	uint32_t outbox_count;
	size_t errors_bytes;
	int64_t last_seen_us;        /* last health report or heartbeat, 0 if none */
};

struct bus_stats {
	double uptime_s;
	uint32_t agents;
	uint64_t pending;
	uint64_t remote_queued;  /* of pending: queued for other nodes (remote.h) */
	uint64_t delivered_total;
	uint64_t rejected_total;
	uint64_t store_bytes;
	uint64_t store_max_bytes;
	size_t errors_bytes;
};

struct bus;

/* Called after a change that may make an agent's `next` answerable (a delivery, a
 * drain, a removal), with the bus lock released; agent_id BUS_EVENTS_WAKE_ID when the
 * events log grew. */
typedef void (*bus_wake_fn)(void *ctx, uint64_t agent_id);
#define BUS_EVENTS_WAKE_ID 0

int bus_open(const struct bus_config *cfg, struct bus **out, struct bus_error *err);
/* Compacts the store into a snapshot and frees everything. */
void bus_close(struct bus *bus);
void bus_set_wake(struct bus *bus, bus_wake_fn fn, void *ctx);
void bus_write_pid(struct bus *bus);
const struct bus_config *bus_config(const struct bus *bus);
void bus_stats(struct bus *bus, struct bus_stats *out);
/* Grows with every change to the bus: a document rendered at one version is current
 * until it moves. */
uint64_t bus_version(struct bus *bus);

/* Agent names: [A-Za-z][A-Za-z0-9._-]{0,63}; `all` is reserved. */
bool bus_name_valid(const char *name);

int bus_agent_create(struct bus *bus, const char *name, uid_t uid, gid_t gid,
		     struct bus_agent_info *out, struct bus_error *err);
int bus_agent_remove(struct bus *bus, const char *name, uid_t uid, struct bus_error *err);
int bus_agent_by_name(struct bus *bus, const char *name, struct bus_agent_info *out);
int bus_agent_by_id(struct bus *bus, uint64_t id, struct bus_agent_info *out);
/* Calls fn for each agent with id > after_id in id order until fn returns non-zero. */
void bus_agent_list(struct bus *bus, uint64_t after_id,
		    int (*fn)(void *ctx, const struct bus_agent_info *a), void *ctx);

/* The places an agent keeps messages in: what it sent (outbox/), what waits for it
 * (inbox/), what a worker holds a lease on (inflight/) and its dead letters (dead/).
 * BUS_INBOX is 1 and BUS_OUTBOX 0, as the `inbox` flag they replace. */
enum bus_place { BUS_OUTBOX = 0, BUS_INBOX = 1, BUS_INFLIGHT = 2, BUS_DEAD = 3 };

/* The agent whose place holds message `number` (a store-wide delivery number): its
 * id, or 0 when none does. */
uint64_t bus_message_holder(struct bus *bus, uint64_t number, enum bus_place place);
/* Views of the places. _get returns a referenced message or NULL. */
struct bus_message *bus_place_get(struct bus *bus, uint64_t agent_id, enum bus_place place,
				  uint64_t number);
void bus_place_list(struct bus *bus, uint64_t agent_id, enum bus_place place,
		    uint64_t after_number, int (*fn)(void *ctx, const struct bus_message *m),
		    void *ctx);
struct bus_message *bus_inbox_get(struct bus *bus, uint64_t agent_id, uint64_t number);
struct bus_message *bus_outbox_get(struct bus *bus, uint64_t agent_id, uint64_t number);
void bus_inbox_list(struct bus *bus, uint64_t agent_id, uint64_t after_number,
		    int (*fn)(void *ctx, const struct bus_message *m), void *ctx);
void bus_outbox_list(struct bus *bus, uint64_t agent_id, uint64_t after_number,
		     int (*fn)(void *ctx, const struct bus_message *m), void *ctx);
/* The oldest pending message (referenced) -> 0; empty -> -EAGAIN with *draining set;
 * no such agent -> -ENOENT. */
int bus_next_peek(struct bus *bus, uint64_t agent_id, struct bus_message **out, bool *draining);

/* A message being written to outbox/B: opened at CREATE, fed by WRITE, committed at a
 * FLUSH that has bytes. Owned by the open file; bus_draft_close() frees it. */
struct bus_draft;
int bus_draft_open(struct bus *bus, uint64_t sender_id, const char *target, uid_t uid,
		   struct bus_draft **out, struct bus_error *err);
int bus_draft_write(struct bus *bus, struct bus_draft *d, const void *data, size_t len,
		    struct bus_error *err);
int bus_draft_flush(struct bus *bus, struct bus_draft *d, struct bus_error *err);
/* Drops the bytes written so far and frees the reservation, as if nothing had been
 * written (a later write reserves again): the writer was killed before it closed. */
void bus_draft_discard(struct bus *bus, struct bus_draft *d);
void bus_draft_close(struct bus *bus, struct bus_draft *d);
const char *bus_draft_sender(const struct bus_draft *d);
/* For a draft to an agent on another node: the delivery number its last flush queued
 * (0 before one, and for local drafts). */
uint64_t bus_draft_remote_number(const struct bus_draft *d);
/* Whether the draft's recipient is on another node. */
bool bus_draft_remote(const struct bus_draft *d);
/* An earlier write was refused (and logged): the draft sends nothing. */
bool bus_draft_poisoned(const struct bus_draft *d);

/* Leases (SPEC §10). A claim leases the agent's oldest claimable message and renders
 * it into out (the envelope plus its "lease"); -EAGAIN when none can be leased now
 * (*draining tells whether the agent is draining with nothing that could still come
 * to a claim: no pending message, no lease), -ENOENT, -EACCES, or the store's error.
 * The owner (or root) only. */
int bus_claim(struct bus *bus, uint64_t agent_id, uid_t uid, struct buf *out, bool *draining,
	      struct bus_error *err);
/* Whether a claim would find a message now (or the agent is gone, or draining with
 * nothing left to claim). */
bool bus_claim_ready(struct bus *bus, uint64_t agent_id, bool *draining);
/* Acks, extends (seconds 0: --lease) or naks (pending again after delay_s) the lease
 * `token` of message `number`: ESTALE when token is not its current lease. */
int bus_lease_ack(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		  uint64_t token, uid_t uid, struct bus_error *err);
int bus_lease_extend(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		     uint64_t token, double seconds, uid_t uid, struct bus_error *err);
int bus_lease_nak(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		  uint64_t token, double delay_s, uid_t uid, struct bus_error *err);
/* `touch inflight/F`: the lease `token` gets --lease from now. */
int bus_lease_touch(struct bus *bus, uint64_t token, uid_t uid, struct bus_error *err);
/* The agent and message of a live lease; -ENOENT when it is over. */
int bus_lease_find(struct bus *bus, uint64_t token, uint64_t *agent_id, uint64_t *number);
/* A dead letter pending again (its deliveries reset), or removed. */
int bus_dead_retry(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		   uid_t uid, struct bus_error *err);
int bus_dead_discard(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		     uid_t uid, struct bus_error *err);
/* A message file's content: the envelope, with "lease" in inflight/ and "dead" in
 * dead/. -ENOENT when the place does not hold it. */
int bus_place_render(struct bus *bus, uint64_t agent_id, enum bus_place place, uint64_t number,
		     struct buf *out);
/* The work of every second: ends the leases whose deadline passed, wakes claimers of
 * messages whose nak delay ended, makes dead letters of pending messages past their
 * ttl, forgets idempotency keys past --dedupe-window and records the journal's length
 * in the store's mark. */
void bus_tick_second(struct bus *bus);
/* inflight/ file names: "<20-digit number>-<msg_id>.<token>.json". */
void lease_file_name(const struct bus_message *m, char *out, size_t n);
/* The number (0 when the name is not one), the msg_id and the token of such a name. */
uint64_t lease_parse_file_name(const char *name, char *msg_id, uint64_t *token);

/* `send` records: `pending` (owned by the open file) carries a record split across
 * writes. Delivers every record this write completes, all or nothing. */
int bus_send_write(struct bus *bus, uint64_t agent_id, uid_t uid, struct buf *pending,
		   const char *data, size_t len, unsigned *delivered, struct bus_error *err);
/* The same, telling which messages went to another node's queue (remote.h): their
 * delivery numbers in sent->remote (sent->n of them; the caller frees remote). */
struct bus_sent {
	uint64_t *remote;
	size_t n;
};
int bus_send_write_ex(struct bus *bus, uint64_t agent_id, uid_t uid, struct buf *pending,
		      const char *data, size_t len, unsigned *delivered, struct bus_sent *sent,
		      struct bus_error *err);

/* Consumes message `number` of the agent's inbox (msg_id, when given, must match). */
int bus_ack(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id, uid_t uid,
	    struct bus_error *err);
/* `drain`, `resume`, `ack MSG_ID [TOKEN]`, `extend MSG_ID TOKEN [SECONDS]`, `nak MSG_ID
 * TOKEN [DELAY_S]`, `retry MSG_ID` — one command per write. */
int bus_ctl(struct bus *bus, uint64_t agent_id, uid_t uid, const char *data, size_t len,
	    struct bus_error *err);
int bus_ctl_render(struct bus *bus, uint64_t agent_id, struct buf *out);

/* Health (SPEC §4). A report is one write() (see busfs/health.h); a heartbeat keeps
 * the report and renews last_seen. Both need the agent's owner (or root). */
int bus_health_report(struct bus *bus, uint64_t agent_id, uid_t uid, const char *data,
		      size_t len, struct bus_error *err);
int bus_health_beat(struct bus *bus, uint64_t agent_id, uid_t uid, struct bus_error *err);
/* agents/A/health as JSON, one line; -ENOENT when the agent is gone. */
int bus_health_render(struct bus *bus, uint64_t agent_id, struct buf *out);
/* health/status: every agent and the bus counters, rendered under one lock. */
void bus_status_render(struct bus *bus, struct buf *out);

/* Metrics (SPEC §5). A write is one or many point lines, all or nothing. */
int bus_metrics_write(struct bus *bus, uint64_t agent_id, uid_t uid, const char *data,
		      size_t len, struct bus_error *err);
/* The points log (agent_id 0: metrics/metrics.jsonl) or an agent's points: reads at
 * the first byte kept at or after *off (old points expire), updating *off. The size
 * is every byte the log ever held, so it only grows. */
ssize_t bus_metrics_read(struct bus *bus, uint64_t agent_id, uint64_t *off, char *buf, size_t n);
uint64_t bus_metrics_size(struct bus *bus, uint64_t agent_id);
void bus_summary_render(struct bus *bus, struct buf *out);
/* metrics/busfs.prom: bus counters and gauges, then the user metrics. */
void bus_prom_render(struct bus *bus, struct buf *out);

/* Alerts (SPEC §6). bus_rules_write parses one write of alerts/rules: replace (`>`)
 * or add/replace by name (`>>`); a bad line refuses it all and keeps the rules.
 * bus_rules_clear empties them (`: > alerts/rules`), appending the old rules' text
 * to saved (when not NULL) so that a write that then fails can put them back. */
int bus_rules_write(struct bus *bus, const char *data, size_t len, bool replace,
		    struct bus_error *err);
int bus_rules_clear(struct bus *bus, struct buf *saved, struct bus_error *err);
/* The same as bus_rules_write for one of several writes of one open file: seen lists
 * ("name\n") the rules its earlier writes gave; giving one again is EINVAL, as it is
 * within one write. The names written are appended to seen. */
int bus_rules_write_seen(struct bus *bus, const char *data, size_t len, bool replace,
			 struct buf *seen, struct bus_error *err);
/* The user's rules, one canonical line each. */
void bus_rules_user(struct bus *bus, struct buf *out);
void bus_rules_render(struct bus *bus, struct buf *out);
void bus_active_render(struct bus *bus, struct buf *out);
ssize_t bus_alerts_read(struct bus *bus, uint64_t *off, char *buf, size_t n);
uint64_t bus_alerts_size(struct bus *bus);
/* `events` (SPEC §10): reads at the first byte kept at or after *off (old segments
 * leave), updating *off; the size is every byte the log ever held. */
ssize_t bus_events_read(struct bus *bus, uint64_t *off, char *buf, size_t n);
uint64_t bus_events_size(struct bus *bus);

/* Periodic work (every --alert-interval): evaluates the rules, drops expired points. */
void bus_tick(struct bus *bus);

/* Records a rejected operation in the top-level log and, when agent is set and known,
 * in the agent's. */
void bus_log_error(struct bus *bus, const char *agent, const char *op, const char *path,
		   uid_t uid, const struct bus_error *err);
/* Reads a log: agent_id 0 is the top-level `errors`. Returns bytes appended to out. */
size_t bus_errors_read(struct bus *bus, uint64_t agent_id, size_t off, size_t size,
		       struct buf *out);
size_t bus_errors_size(struct bus *bus, uint64_t agent_id);

/* Writes a snapshot now and restarts the journal. */
int bus_compact(struct bus *bus);

/* --sync (SPEC §13). How many journal bytes commits have written so far (any thread,
 * no lock), and a sync of the journal to stable storage: *synced is then the count
 * it covers. The bus lock is held only to take the journal, not across the sync. */
uint64_t bus_journal_written(struct bus *bus);
int bus_journal_sync(struct bus *bus, uint64_t *synced);

/* Offline check of a store (busfs --check): loads it read-only and verifies that
 * counters cover every id and sequence. Writes a report; returns 0 when consistent. */
int bus_check_store(const char *dir, struct buf *report);
/* busfs --salvage: rebuilds a damaged store from its intact records (see
 * store_salvage); what was kept and lost goes to report. 0 also when not damaged. */
int bus_salvage_store(const char *dir, struct buf *report);

#endif
