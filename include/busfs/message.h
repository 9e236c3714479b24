/* message.h — a delivered message: its envelope text and what the bus needs to know.
 *
 * A message is immutable once made and reference-counted: the recipient's inbox, the
 * sender's outbox and every open file that reads it hold a reference, so `rm` of an
 * inbox file never pulls the bytes from under a reader. */
#ifndef BUSFS_MESSAGE_H
#define BUSFS_MESSAGE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "busfs/buf.h"

#define BUS_NAME_MAX 64
#define BUS_MSG_ID_LEN 49 /* MSG-YYYYMMDD-HHMMSS-xxxxxxxx-<20 digits> */
#define BUS_FILE_NAME_LEN (20 + 1 + BUS_MSG_ID_LEN + 5)

struct bus_message {
	atomic_uint refs;
	uint64_t number;        /* store-wide delivery number, also the msg_id counter */
	uint64_t sequence;      /* per (from, to) pair */
	bool requires_ack;
	/* Whether an inbox and an outbox hold it: the bus's number index keeps it while
	 * either does. Under the bus lock. */
	bool in_inbox, in_outbox;
	bool charged;           /* held by the bus, its bytes charged to charged_uid (quota.h) */
	uint32_t charged_uid;
	/* Where the recipient holds it besides its inbox (SPEC §10), and the lease state.
	 * Under the bus lock; kept in snapshots, changed only by records. */
	bool in_inflight, in_dead;
	uint8_t dead_reason;    /* enum dead_reason, while in_dead */
	uint32_t deliveries;    /* leases granted so far (reset by retry) */
	uint64_t token;         /* the current lease's fencing token, 0 when not leased */
	int64_t deadline_us;    /* the current lease's end */
	int64_t ready_us;       /* not claimable before this (a nak's delay), 0 = now */
	int64_t expires_us;     /* its ttl ends (0: none); carried by its record */
	int64_t dead_us;        /* when it became a dead letter */
	/* In the same allocation, after the envelope: a pending message costs its
	 * envelope and little more (1,000 agents x 100 messages fit in 64 MiB). */
	const char *from;
	const char *to;
	const char *msg_id;
	/* To another node with an idempotency key: that key (it names the message in
	 * JetStream), else NULL. In the same allocation. */
	const char *idem_key;
	uint32_t corr_off;      /* raw correlation_id token inside envelope; 0 length = none */
	uint32_t corr_len;
	size_t len;             /* envelope bytes, trailing newline included */
	char envelope[];        /* NUL-terminated, then from, to and msg_id */
};

void message_ref(struct bus_message *m);
void message_unref(struct bus_message *m);
/* "<20-digit number>-<msg_id>.json" into out (BUS_FILE_NAME_LEN + 1 bytes). */
void message_file_name(const struct bus_message *m, char *out);
/* Parses a file name; returns the number, 0 when the name is not one of ours.
 * When msg_id is not NULL the msg_id part is copied there. */
uint64_t message_parse_file_name(const char *name, char *msg_id);
/* The same for any message: one from another node (SPEC §12) keeps the msg_id its
 * node gave it, so its counter is not the number here; only the shape is checked.
 * A caller compares the msg_id with the message the number names. */
uint64_t message_parse_any_file_name(const char *name, char *msg_id);
/* The counter of a msg_id, 0 when malformed. */
uint64_t message_id_number(const char *msg_id);

/* What an envelope is made of. Tokens are raw JSON (already valid). */
struct envelope {
	const char *from, *to;
	uint64_t number, sequence;
	int64_t time_us;
	uint32_t store_id;
	const char *type_token;     /* JSON string token, e.g. "\"message\"" */
	size_t type_len;
	const char *payload;        /* JSON value (compacted to one line) */
	size_t payload_len;
	bool base64;
	bool requires_ack;
	bool urgent;
	const char *corr_token;     /* JSON string token or NULL */
	size_t corr_len;
	int64_t expires_us;         /* ttl end, 0 for none: kept in the record, not the text */
	const char *idem_key;       /* idempotency key of a message to another node, or NULL */
	const char *msg_id;         /* a message from another node keeps its own; NULL: made */
	const char *timestamp;      /* ... and its own timestamp text; NULL: from time_us */
};

void message_id_format(char *out, uint32_t store_id, int64_t time_us, uint64_t number);

/* The message record of the journal: header fields and the envelope text, then
 * (flag 2) the ttl's end and (flag 4) the idempotency key. Appends to rec. */
void message_encode(struct buf *rec, const struct envelope *env);

/* The same record for a message that already exists (snapshots). */
void message_encode_again(struct buf *rec, const struct bus_message *m);

/* Decodes one message from a record reader; NULL on malformed input. */
struct bus_message *message_decode(struct reader *r);

/* Turns an outbox body into a payload token: JSON kept as written (line breaks
 * outside strings removed), else UTF-8 text minus one trailing newline as a string,
 * else base64 (sets *base64). */
void payload_from_body(struct buf *out, const char *body, size_t len, bool *base64);

#endif
