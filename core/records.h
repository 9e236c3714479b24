/* records.h — the kinds of journal and snapshot records, and the table row that
 * describes each (records.c holds the table; the concept files hold the rows'
 * functions). Record layouts are given beside the kinds; `str` and `bytes` are a u32
 * length and the bytes, integers are little-endian. */
#ifndef BUSFS_RECORDS_H
#define BUSFS_RECORDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "busfs/buf.h"

struct bus;

enum record_type {
	REC_AGENT_ADD = 1,  /* str name, u32 uid, u32 gid, u64 created_us, u8 draining,
			       u64 delivered_total, u64 acked_total */
	REC_AGENT_DEL = 2,  /* str name */
	REC_DELIVER = 3,    /* u32 n, n x message */
	REC_ACK = 4,        /* str agent, u64 number, u8 has_ack, [message] */
	REC_STATE = 5,      /* str agent, u8 draining */
	REC_HEALTH = 6,     /* str agent, u8 status, u64 last_seen_us, bytes reason, bytes extra */
	REC_BEAT = 7,       /* str agent, u64 last_seen_us */
	REC_REJECT = 8,     /* u32 errno: one refused operation, for the counters */
	REC_RULES = 9,      /* bytes: the user's alert rules, one canonical line each */
	REC_SNAP_HEAD = 10, /* u64 counter, u64 delivered_total, u64 rejected_total */
	REC_SNAP_SEQ = 11,  /* str pair key, u64 sequence */
	REC_SNAP_MSG = 12,  /* u8 where (1 inbox, 2 outbox), message */
	REC_SNAP_REJECT = 13, /* u32 errno, u64 count */
	REC_ALERT = 14,     /* str rule, str agent, u8 firing, u64 since_us, u64 value (double),
			       u8 severity */
	REC_LEASE = 15,     /* str agent, u64 number, u64 token, u64 deadline_us, u32 delivery:
			       a claim (from the inbox, a new token) or an extension */
	REC_RELEASE = 16,   /* str agent, u64 number, u64 token, u64 ready_us, u8 why (1 nak,
			       2 expired): the lease ends, the message is pending again */
	REC_DEAD = 17,      /* str agent, u64 number, u64 token (0: from the inbox), u8 reason,
			       u64 at_us, u64 discarded (the oldest dead letter pushed out, or 0) */
	REC_RETRY = 18,     /* str agent, u64 number: a dead letter is pending again */
	REC_DISCARD = 19,   /* str agent, u64 number: a dead letter removed (rm) */
	REC_DELIVER_KEYED = 20, /* u32 duplicates, u32 k, k x (str "UID/SENDER\x01KEY", u64 at_us),
				   u32 n, n x message: a `send` write with idempotency keys */
	REC_SNAP_DEDUPE = 21, /* str "UID/SENDER\x01KEY", u64 at_us */
};

struct record_kind {
	uint8_t type;
	const char *name;           /* for --check's report */
	bool snapshot_only;         /* restates state: in a journal it is damage */
	/* Decodes the record (the reader is past the type byte) and changes the state;
	 * 0, -EINVAL for a record that does not apply, -ENOMEM. */
	int (*apply)(struct bus *bus, struct reader *r);
	/* Writes this kind's part of the live state into a snapshot, one record at a time
	 * through bus_snapshot_put; NULL when the kind only records changes. */
	int (*save)(struct bus *bus, struct buf *b);
};

const struct record_kind *record_kind_of(uint8_t type);
/* The store_apply_fn of the bus (ctx is the bus). */
int bus_apply_record(void *ctx, const uint8_t *rec, size_t len, bool from_snapshot);
/* Adds b as one snapshot record, then empties b. */
int bus_snapshot_put(struct bus *bus, struct buf *b);

/* The rows' functions, by concept. */
int agent_add_apply(struct bus *bus, struct reader *r);       /* agents.c */
int agent_del_apply(struct bus *bus, struct reader *r);
int state_apply(struct bus *bus, struct reader *r);
int agent_save(struct bus *bus, struct buf *b);
int deliver_apply(struct bus *bus, struct reader *r);         /* deliver.c */
int deliver_keyed_apply(struct bus *bus, struct reader *r);
int dedupe_apply(struct bus *bus, struct reader *r);          /* dedupe.c */
int dedupe_save(struct bus *bus, struct buf *b);
int ack_apply(struct bus *bus, struct reader *r);
int seq_apply(struct bus *bus, struct reader *r);
int seq_save(struct bus *bus, struct buf *b);
int snap_msg_apply(struct bus *bus, struct reader *r);
int snap_msg_save(struct bus *bus, struct buf *b);
int health_apply(struct bus *bus, struct reader *r);          /* status.c */
int beat_apply(struct bus *bus, struct reader *r);
int health_save(struct bus *bus, struct buf *b);
int lease_apply(struct bus *bus, struct reader *r);           /* lease.c */
int release_apply(struct bus *bus, struct reader *r);
int dead_apply(struct bus *bus, struct reader *r);
int retry_apply(struct bus *bus, struct reader *r);
int discard_apply(struct bus *bus, struct reader *r);
int rules_apply(struct bus *bus, struct reader *r);           /* alerts.c */
int rules_save(struct bus *bus, struct buf *b);
int alert_apply(struct bus *bus, struct reader *r);
int alert_save(struct bus *bus, struct buf *b);

#endif
