/* send.c — how messages enter the bus: outbox drafts and `send` records.
 *
 * Everything that can refuse a message is checked before its last byte is accepted:
 * recipient, drain, capacity and the opener's open drafts to that inbox at open (a
 * reserved slot per recipient), size, the sending uid's budget and store space at
 * write. The commit itself — one journal record for a whole message, broadcast or
 * `send` write — can then fail only on a store I/O error.
 *
 * A draft's bytes count as they are written: what its commit will take is promised
 * from the store (bus_space_reserve: counted by bus_space_for() beside the store and
 * allocated on its filesystem) and added to the draft_bytes of the uid owning the
 * sending agent (quota.h), until the draft commits, is refused or closes. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <malloc.h>

#include "bus_impl.h"
#include "busfs/remote.h"
#include "busfs/clock.h"
#include "busfs/json.h"

/* Envelope text beyond the payload: field names, ids, names, timestamp. */
#define ENVELOPE_OVERHEAD 1024

struct bus_draft {
	uint64_t sender_id;
	char sender[BUS_NAME_MAX + 1];
	uid_t uid;                        /* the opener's */
	uid_t owner;                      /* the sending agent's, whose budget pays */
	bool broadcast;
	size_t nrcpt;
	char (*rcpt)[BUS_NAME_MAX + 1];   /* recipients in name order */
	bool reserved;                    /* a slot and a draft count in each recipient */
	uint64_t space;                   /* store bytes promised to this draft */
	uint64_t charged;                 /* bytes counted against the owner's budget */
	int poison;                       /* errno of a rejected write; nothing is sent */
	struct buf body;
	size_t text_len;                  /* the body's length as an escaped JSON string */
	void *hold;                       /* memory held for the commit of a large body */
	size_t hold_len;
	bool remote;                      /* its recipient is on another node (remote.c) */
	uint64_t sent_number;             /* the last commit's delivery number */
};

/* The longest the payload can be once in an envelope: kept JSON, an escaped string or
 * base64, whichever the body turns out to be. Known at write, so the commit at flush
 * never meets a size it did not expect. */
static size_t payload_bound(const struct bus_draft *d)
{
	size_t b64 = (d->body.len + 2) / 3 * 4;
	size_t m = d->text_len > b64 ? d->text_len : b64;
	return (m > d->body.len ? m : d->body.len) + 2;
}

/* A body from this size on has its commit's memory tried at each write. */
#define MEMORY_TRY_FROM (64u << 10)

/* Holds the memory this draft's commit will take (its payload, the store record and
 * the stored messages: the payload bound plus twice the record) from the write on,
 * and gives it back just before the commit allocates the same amount: a server short
 * of memory then refuses at write(), which every shell reports, rather than at
 * close(), which bash's echo does not. */
static bool commit_memory_hold(struct bus_draft *d, uint64_t record)
{
	if (d->body.len < MEMORY_TRY_FROM)
		return true;
	uint64_t need = payload_bound(d) + 2 * record;
	if (need <= d->hold_len)
		return true;
	void *p = need <= SIZE_MAX ? malloc((size_t)need) : NULL;
	if (!p)
		return false;
	free(d->hold);
	d->hold = p;
	d->hold_len = (size_t)need;
	return true;
}

static void commit_memory_release(struct bus_draft *d)
{
	free(d->hold);
	d->hold = NULL;
	d->hold_len = 0;
}

static size_t escaped_extra(const unsigned char *p, size_t n)
{
	size_t extra = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '"' || p[i] == '\\' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t' ||
		    p[i] == '\b' || p[i] == '\f')
			extra += 1;
		else if (p[i] < 0x20)
			extra += 5;
	}
	return extra;
}

const char *bus_draft_sender(const struct bus_draft *d) { return d->sender; }

bool bus_draft_remote(const struct bus_draft *d) { return d->remote; }

uint64_t bus_draft_remote_number(const struct bus_draft *d)
{
	return d->remote ? d->sent_number : 0;
}

bool bus_draft_poisoned(const struct bus_draft *d) { return d->poison != 0; }

/* Frees a draft's body; a large one gives its memory back to the system (glibc keeps
 * freed blocks inside its heaps otherwise). */
static void draft_free_body(struct bus_draft *d)
{
	bool large = d->body.cap >= BUS_TRIM_BYTES;
	commit_memory_release(d);
	buf_free(&d->body);
	if (large)
		malloc_trim(0);
}

/* Whether the draft may take a slot in r: registered, active, room, and fewer than
 * --max-drafts-per-sender open drafts of its opener there. */
static int draft_check(struct bus *bus, const struct bus_draft *d, const struct agent *r,
		       const char *name, struct bus_error *err)
{
	uint32_t most = bus->cfg.max_drafts_per_sender;
	if (!r)
		return bus_fail(err, ENOENT, "recipient %s is not registered", name);
	if (r->draining)
		return bus_fail(err, ESHUTDOWN, "recipient %s is draining", r->name);
	if (agent_room(bus, r, 1, err) < 0)
		return -EAGAIN;
	if (bus_quota_applies(bus, d->uid) && quota_drafts_open(&r->drafts, d->uid) >= most)
		return bus_fail(err, EAGAIN, "uid %u already has %u unfinished messages open to %s, "
				"the most --max-drafts-per-sender allows", (unsigned)d->uid, most,
				r->name);
	return 0;
}

static void draft_release(struct bus *bus, struct bus_draft *d, size_t upto)
{
	for (size_t i = 0; i < upto; i++) {
		struct agent *r = bus_find(bus, d->rcpt[i]);
		if (!r)
			continue;
		if (r->reserved)
			r->reserved--;
		quota_drafts_sub(&r->drafts, d->uid);
	}
}

/* Checks every recipient and reserves one slot in each, all or nothing. */
static int draft_reserve(struct bus *bus, struct bus_draft *d, struct bus_error *err)
{
	for (size_t i = 0; i < d->nrcpt; i++) {
		int rc = draft_check(bus, d, bus_find(bus, d->rcpt[i]), d->rcpt[i], err);
		if (rc < 0)
			return rc;
	}
	for (size_t i = 0; i < d->nrcpt; i++) {
		struct agent *r = bus_find(bus, d->rcpt[i]);
		if (quota_drafts_add(&r->drafts, d->uid) < 0) {
			draft_release(bus, d, i);
			return bus_fail(err, ENOMEM, "out of memory");
		}
		r->reserved++;
	}
	d->reserved = true;
	return 0;
}

static void draft_unreserve(struct bus *bus, struct bus_draft *d)
{
	bus_space_release(bus, &d->space);
	if (!d->reserved)
		return;
	draft_release(bus, d, d->nrcpt);
	d->reserved = false;
}

/* Counts the draft's bytes as `record` (what its commit will take), refusing growth
 * beyond the owner's --max-bytes-per-uid (EDQUOT), or beyond --store-max-bytes or the
 * room on the store's filesystem (ENOSPC): the space is promised and allocated now. */
static int draft_charge(struct bus *bus, struct bus_draft *d, uint64_t record,
			struct bus_error *err)
{
	uint64_t grow = record > d->charged ? record - d->charged : 0;
	uint64_t most = bus->cfg.max_bytes_per_uid;
	if (bus_quota_applies(bus, d->owner) && quota_bytes(&bus->quota, d->owner) + grow > most)
		return bus_fail(err, EDQUOT, "uid %u would hold more than --max-bytes-per-uid %"
				PRIu64 " bytes in pending messages and unfinished ones",
				(unsigned)d->owner, most);
	struct quota_uid *u = quota_of(&bus->quota, d->owner);
	if (!u)
		return bus_fail(err, ENOMEM, "out of memory");
	int rc = bus_space_reserve(bus, &d->space, record, err);
	if (rc < 0)
		return rc;
	u->draft_bytes += grow;
	d->charged += grow;
	return 0;
}

static void draft_uncharge(struct bus *bus, struct bus_draft *d)
{
	struct quota_uid *u = d->charged ? quota_of(&bus->quota, d->owner) : NULL;
	if (u)
		u->draft_bytes -= u->draft_bytes < d->charged ? u->draft_bytes : d->charged;
	d->charged = 0;
}

int bus_draft_open(struct bus *bus, uint64_t sender_id, const char *target, uid_t uid,
		   struct bus_draft **out, struct bus_error *err)
{
	struct bus_draft *d = calloc(1, sizeof *d);
	if (!d)
		return bus_fail(err, ENOMEM, "out of memory");
	buf_init(&d->body);
	d->uid = uid;
	d->sender_id = sender_id;
	bus_lock(bus);
	int rc = 0;
	struct agent *s = bus_find_id(bus, sender_id);
	if (!s) {
		rc = bus_fail(err, ENOENT, "the sending agent is gone");
		goto out;
	}
	memcpy(d->sender, s->name, sizeof d->sender);
	d->owner = s->uid;
	if (!bus_may_act_as(s, uid)) {
		rc = bus_fail(err, EACCES, "uid %u may not send as %s (owned by uid %u)",
			      (unsigned)uid, s->name, (unsigned)s->uid);
		goto out;
	}
	if (strcmp(target, "all") == 0) {
		d->broadcast = true;
		d->rcpt = calloc(bus->nagents ? bus->nagents : 1, sizeof *d->rcpt);
		if (!d->rcpt) {
			rc = bus_fail(err, ENOMEM, "out of memory");
			goto out;
		}
		for (size_t i = 0; i < bus->nagents; i++) {
			struct agent *r = bus->by_name[i];
			if (r != s && !r->draining)
				memcpy(d->rcpt[d->nrcpt++], r->name, sizeof *d->rcpt);
		}
		if (!d->nrcpt) {
			rc = bus_fail(err, ENOENT, "no agent to broadcast to: %s is alone or the "
				      "others are draining", s->name);
			goto out;
		}
	} else {
		d->remote = strchr(target, '@') != NULL;
		if (d->remote ? !remote_recipient(bus, target, err) : !bus_find(bus, target)) {
			rc = d->remote ? -err->code
				       : bus_fail(err, ENOENT, "recipient %.80s is not registered",
						  target);
			goto out;
		}
		d->rcpt = calloc(1, sizeof *d->rcpt);
		if (!d->rcpt) {
			rc = bus_fail(err, ENOMEM, "out of memory");
			goto out;
		}
		snprintf(d->rcpt[0], sizeof d->rcpt[0], "%s", target);
		d->nrcpt = 1;
	}
	rc = draft_reserve(bus, d, err);
out:
	bus_unlock_and_wake(bus);
	if (rc < 0) {
		free(d->rcpt);
		free(d);
		return rc;
	}
	*out = d;
	return 0;
}

int bus_draft_write(struct bus *bus, struct bus_draft *d, const void *data, size_t len,
		    struct bus_error *err)
{
	if (d->poison)
		return bus_fail(err, d->poison, "an earlier write to this file was rejected; it "
				"sends nothing");
	bus_lock(bus);
	int rc = 0;
	uint64_t max = bus->cfg.max_message_size;
	size_t old_text = d->text_len;
	d->text_len += len + escaped_extra(data, len);
	size_t body_len = d->body.len;
	d->body.len += len; /* for the bound only; restored below */
	uint64_t record = (uint64_t)(payload_bound(d) + ENVELOPE_OVERHEAD) * d->nrcpt;
	d->body.len = body_len;
	if (!bus_find_id(bus, d->sender_id)) {
		rc = bus_fail(err, ENOENT, "the sending agent %s was removed", d->sender);
	} else if (d->body.len + len > max) {
		rc = bus_fail(err, EFBIG, "message of %zu bytes or more exceeds "
			      "--max-message-size %" PRIu64, d->body.len + len, max);
	} else if (record > STORE_MAX_RECORD) {
		rc = bus_fail(err, EFBIG, "a message of %zu bytes to %zu recipients exceeds the "
			      "%u MiB a single commit may hold", d->body.len + len, d->nrcpt,
			      STORE_MAX_RECORD >> 20);
	} else if (!d->reserved && (rc = draft_reserve(bus, d, err)) < 0) {
		/* reason filled in */
	} else if ((rc = draft_charge(bus, d, record, err)) < 0) {
		/* reason filled in */
	} else {
		buf_append(&d->body, data, len);
		if (!buf_ok(&d->body) || !commit_memory_hold(d, record))
			rc = bus_fail(err, ENOMEM, "out of memory for a message of %zu bytes",
				      d->body.len);
	}
	if (rc < 0) {
		d->text_len = old_text;
		d->poison = -rc;
		draft_unreserve(bus, d);
		draft_uncharge(bus, d);
		draft_free_body(d);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

static const char TYPE_MESSAGE[] = "\"message\"";

int bus_draft_flush(struct bus *bus, struct bus_draft *d, struct bus_error *err)
{
	if (d->poison)
		return bus_fail(err, d->poison, "an earlier write to this file was rejected");
	bus_lock(bus);
	int rc = 0;
	struct agent *s = bus_find_id(bus, d->sender_id);
	if (!s) {
		/* The name may belong to a new agent by now; this draft must not speak for it. */
		d->poison = ENOENT;
		draft_unreserve(bus, d);
		draft_uncharge(bus, d);
		bus_unlock_and_wake(bus);
		return bus_fail(err, ENOENT, "the sending agent %s was removed", d->sender);
	}
	if (d->body.len == 0) {
		/* bash opens, dup2()s and closes before writing: nothing to send yet. */
		draft_unreserve(bus, d);
		draft_uncharge(bus, d);
		bus_unlock_and_wake(bus);
		return 0;
	}
	struct buf payload;
	buf_init(&payload);
	bool base64;
	commit_memory_release(d); /* the commit takes it now */
	payload_from_body(&payload, d->body.data, d->body.len, &base64);
	int64_t now = bus_clock_now_us();
	struct buf *rec = &bus->rec;
	buf_reset(rec);
	buf_put_u8(rec, REC_DELIVER);
	buf_put_u32(rec, (uint32_t)d->nrcpt);
	for (size_t i = 0; i < d->nrcpt; i++) {
		struct envelope env = {
			.from = d->sender, .to = d->rcpt[i],
			.number = bus->counter + 1 + i,
			.sequence = bus_pair_sequence(bus, d->sender, d->rcpt[i]) + 1,
			.time_us = now, .store_id = store_id(bus->store),
			.type_token = TYPE_MESSAGE, .type_len = sizeof TYPE_MESSAGE - 1,
			.payload = payload.data, .payload_len = payload.len, .base64 = base64,
			.expires_us = bus_message_expiry(bus, 0, now),
		};
		message_encode(rec, &env);
	}
	if (!buf_ok(&payload))
		buf_fail(rec); /* the envelope would have no payload: commit nothing */
	buf_free(&payload);
	draft_unreserve(bus, d);
	draft_uncharge(bus, d);
	rc = bus_commit(bus, err);
	if (rc == 0)
		d->sent_number = bus->counter;
	draft_free_body(d);
	d->text_len = 0;
	if (rc < 0)
		d->poison = -rc;
	bus_unlock_and_wake(bus);
	return rc;
}

void bus_draft_discard(struct bus *bus, struct bus_draft *d)
{
	bus_lock(bus);
	draft_unreserve(bus, d);
	draft_uncharge(bus, d);
	bus_unlock_and_wake(bus);
	draft_free_body(d);
	d->text_len = 0;
}

void bus_draft_close(struct bus *bus, struct bus_draft *d)
{
	if (!d)
		return;
	bus_lock(bus);
	draft_unreserve(bus, d);
	draft_uncharge(bus, d);
	bus_unlock_and_wake(bus);
	draft_free_body(d);
	free(d->rcpt);
	free(d);
}

/* ---------- send records ---------- */

struct send_record {
	char to[BUS_NAME_MAX + 1];
	bool broadcast;
	const char *payload;
	size_t payload_len;
	const char *type;
	size_t type_len;
	const char *corr;
	size_t corr_len;
	bool requires_ack;
	bool urgent;
	uint32_t ttl_s;         /* 0: --message-ttl */
	char key[DEDUPE_KEY_BUF];  /* "OWNER/SENDER\x01KEY", "" for none */
	bool duplicate;         /* its key was seen within --dedupe-window: not delivered */
};

/* Decodes a JSON scalar token with jansson (tokens are small: names, flags, ids). */
static json_t *decode_token(const char *p, size_t len)
{
	return json_loadb(p, len, JSON_DECODE_ANY, NULL); /* \u0000 is refused */
}

/* A string token without escapes is its own bytes between the quotes (the scanner
 * has checked it: no control characters, valid UTF-8), so most fields need no
 * decoding. */
static bool plain_string(const char *p, size_t len)
{
	return len >= 2 && p[0] == '"' && !memchr(p + 1, '\\', len - 2);
}

/* Sets r->to from the token of "to": true when it is an agent name or "all". The
 * common "to":"bob" is taken in place; a token with escapes goes through jansson. */
static bool record_to(struct send_record *r, const char *p, size_t len)
{
	if (plain_string(p, len) && len - 2 < sizeof r->to) {
		memcpy(r->to, p + 1, len - 2);
		r->to[len - 2] = '\0';
	} else {
		json_t *v = decode_token(p, len);
		const char *s = json_is_string(v) ? json_string_value(v) : NULL;
		bool fits = s && strlen(s) < sizeof r->to;
		if (fits)
			memcpy(r->to, s, strlen(s) + 1);
		json_decref(v);
		if (!fits)
			return false;
	}
	return strcmp(r->to, "all") == 0 || bus_name_valid(r->to) ||
	       bus_remote_split(r->to, NULL, NULL);
}

static int parse_record(struct bus *bus, const struct agent *sender, const char *p, size_t len,
			unsigned index, struct send_record *r, struct bus_error *err)
{
	struct json_member m[16];
	char *keys = malloc(len + 1);
	if (!keys)
		return bus_fail(err, ENOMEM, "out of memory");
	int n = json_object_members(p, len, m, 16, keys);
	int rc = 0;
	bool have_to = false, have_payload = false;
	memset(r, 0, sizeof *r);
	r->type = TYPE_MESSAGE;
	r->type_len = sizeof TYPE_MESSAGE - 1;
	if (n < 0)
		rc = bus_fail(err, EINVAL, "record %u: not a JSON object with distinct keys", index);
	for (int i = 0; i < n && rc == 0; i++) {
		const char *k = m[i].key;
		json_t *v = NULL;
		if (strcmp(k, "payload") == 0) {
			r->payload = m[i].value;
			r->payload_len = m[i].value_len;
			have_payload = true;
			continue;
		}
		if (strcmp(k, "to") == 0) {
			if (!record_to(r, m[i].value, m[i].value_len)) {
				rc = bus_fail(err, EINVAL, "record %u: \"to\" must be an agent name, "
					      "NAME@NODE or \"all\"", index);
			} else {
				r->broadcast = strcmp(r->to, "all") == 0;
				have_to = true;
			}
			continue;
		}
		v = decode_token(m[i].value, m[i].value_len);
		if (strcmp(k, "type") == 0) {
			if (!json_is_string(v) || json_string_length(v) == 0 ||
			    json_string_length(v) > 128)
				rc = bus_fail(err, EINVAL, "record %u: \"type\" must be a string of 1 to "
					      "128 bytes", index);
			r->type = m[i].value;
			r->type_len = m[i].value_len;
		} else if (strcmp(k, "requires_ack") == 0) {
			if (!json_is_boolean(v))
				rc = bus_fail(err, EINVAL, "record %u: \"requires_ack\" must be true or "
					      "false", index);
			r->requires_ack = json_is_true(v);
		} else if (strcmp(k, "priority") == 0) {
			const char *pr = json_is_string(v) ? json_string_value(v) : "";
			if (strcmp(pr, "normal") != 0 && strcmp(pr, "urgent") != 0)
				rc = bus_fail(err, EINVAL, "record %u: \"priority\" must be \"normal\" or "
					      "\"urgent\"", index);
			r->urgent = strcmp(pr, "urgent") == 0;
		} else if (strcmp(k, "correlation_id") == 0) {
			if (!json_is_string(v) || json_string_length(v) > 256)
				rc = bus_fail(err, EINVAL, "record %u: \"correlation_id\" must be a string "
					      "of at most 256 bytes", index);
			r->corr = m[i].value;
			r->corr_len = m[i].value_len;
		} else if (strcmp(k, "ttl_s") == 0) {
			json_int_t t = json_is_integer(v) ? json_integer_value(v) : 0;
			if (t < 1 || t > (json_int_t)BUS_MAX_SECONDS)
				rc = bus_fail(err, EINVAL, "record %u: \"ttl_s\" must be an integer from 1 "
					      "to %.0f", index, BUS_MAX_SECONDS);
			r->ttl_s = (uint32_t)(t > 0 ? t : 0);
		} else if (strcmp(k, "idempotency_key") == 0) {
			const char *key = json_is_string(v) ? json_string_value(v) : NULL;
			if (!key || dedupe_key(r->key, sizeof r->key, sender->uid, sender->name, key,
					       json_string_length(v)) < 0)
				rc = bus_fail(err, EINVAL, "record %u: \"idempotency_key\" must be a "
					      "string of 1 to %d bytes", index, DEDUPE_KEY_MAX);
		} else if (strcmp(k, "from") == 0) {
			if (!json_is_string(v))
				rc = bus_fail(err, EINVAL, "record %u: \"from\" must be a string", index);
			else if (strcmp(json_string_value(v), sender->name) != 0)
				rc = bus_fail(err, EACCES, "record %u: \"from\" must be %s, the owner of "
					      "this send file", index, sender->name);
		} else {
			rc = bus_fail(err, EINVAL, "record %u: unknown field \"%.40s\"", index, k);
		}
		json_decref(v);
	}
	free(keys);
	if (rc == 0 && !have_to)
		rc = bus_fail(err, EINVAL, "record %u: \"to\" is required", index);
	if (rc == 0 && !have_payload)
		rc = bus_fail(err, EINVAL, "record %u: \"payload\" is required", index);
	if (rc == 0 && r->payload_len > bus->cfg.max_message_size)
		rc = bus_fail(err, EFBIG, "record %u: payload of %zu bytes exceeds "
			      "--max-message-size %" PRIu64, index, r->payload_len,
			      bus->cfg.max_message_size);
	return rc;
}

/* Calls fn for each recipient of a record (every other active agent for `all`). */
static int record_recipients(struct bus *bus, const struct agent *sender,
			     const struct send_record *r, unsigned index,
			     int (*fn)(struct bus *, struct agent *, void *), void *ctx,
			     struct bus_error *err)
{
	if (!r->broadcast && strchr(r->to, '@')) {
		struct bus_error why;
		struct agent *g = remote_recipient(bus, r->to, &why);
		if (!g)
			return bus_fail(err, why.code, "record %u: %s", index, why.reason);
		return fn(bus, g, ctx);
	}
	if (!r->broadcast) {
		struct agent *to = bus_find(bus, r->to);
		if (!to)
			return bus_fail(err, ENOENT, "record %u: recipient %s is not registered", index,
					r->to);
		return fn(bus, to, ctx);
	}
	int count = 0;
	for (size_t i = 0; i < bus->nagents; i++) {
		struct agent *a = bus->by_name[i];
		if (a == sender || a->draining)
			continue;
		int rc = fn(bus, a, ctx);
		if (rc < 0)
			return rc;
		count++;
	}
	if (!count)
		return bus_fail(err, ENOENT, "record %u: no agent to broadcast to", index);
	return 0;
}

struct batch {
	struct agent **touched;
	size_t ntouched, cap;
	struct bus_error *err;
	const struct agent *sender;
	/* for encoding */
	const struct send_record *rec;
	int64_t now;
	uint32_t count;
	struct bus_sent *sent;  /* the delivery numbers of messages to other nodes */
};

static int count_recipient(struct bus *bus, struct agent *a, void *ctx)
{
	struct batch *b = ctx;
	if (a->draining)
		return bus_fail(b->err, ESHUTDOWN, "recipient %s is draining", a->name);
	if (!a->batch_touched) {
		if (b->ntouched == b->cap) {
			size_t cap = b->cap ? b->cap * 2 : 16;
			struct agent **p = realloc(b->touched, cap * sizeof *p);
			if (!p)
				return bus_fail(b->err, ENOMEM, "out of memory");
			b->touched = p;
			b->cap = cap;
		}
		b->touched[b->ntouched++] = a;
		a->batch_touched = true;
		a->batch_count = 0;
		a->batch_seq = bus_pair_sequence(bus, b->sender->name, a->name);
	}
	a->batch_count++;
	return agent_room(bus, a, a->batch_count, b->err);
}

static int encode_for_recipient(struct bus *bus, struct agent *a, void *ctx)
{
	struct batch *b = ctx;
	struct buf payload;
	buf_init(&payload);
	json_append_compact(&payload, b->rec->payload, b->rec->payload_len);
	if (gateway_is(a)) {
		struct bus_sent *s = b->sent;
		uint64_t *p = s ? realloc(s->remote, (s->n + 1) * sizeof *p) : NULL;
		if (!p) {
			buf_fail(&bus->rec); /* commit nothing: ENOMEM */
		} else {
			s->remote = p;
			s->remote[s->n++] = bus->counter + 1 + b->count;
		}
	}
	struct envelope env = {
		.from = b->sender->name, .to = gateway_is(a) ? b->rec->to : a->name,
		.number = bus->counter + 1 + b->count,
		.sequence = ++a->batch_seq,
		.time_us = b->now, .store_id = store_id(bus->store),
		.type_token = b->rec->type, .type_len = b->rec->type_len,
		.payload = payload.data, .payload_len = payload.len,
		.requires_ack = b->rec->requires_ack, .urgent = b->rec->urgent,
		.expires_us = bus_message_expiry(bus, b->rec->ttl_s, b->now),
		.corr_token = b->rec->corr, .corr_len = b->rec->corr_len,
		/* To another node, the key names it in JetStream (SPEC §12). */
		.idem_key = gateway_is(a) && b->rec->key[0] ? strchr(b->rec->key, '\x01') + 1 : NULL,
	};
	message_encode(&bus->rec, &env);
	if (!buf_ok(&payload))
		buf_fail(&bus->rec);
	buf_free(&payload);
	b->count++;
	return 0;
}

int bus_send_write(struct bus *bus, uint64_t agent_id, uid_t uid, struct buf *pending,
		   const char *data, size_t len, unsigned *delivered, struct bus_error *err)
{
	struct bus_sent sent = {0};
	int rc = bus_send_write_ex(bus, agent_id, uid, pending, data, len, delivered, &sent, err);
	free(sent.remote);
	return rc;
}

int bus_send_write_ex(struct bus *bus, uint64_t agent_id, uid_t uid, struct buf *pending,
		      const char *data, size_t len, unsigned *delivered, struct bus_sent *sent,
		      struct bus_error *err)
{
	struct send_record *recs = NULL;
	size_t nrecs = 0, cap = 0, consumed = 0;
	struct batch batch = {.err = err, .sent = sent};
	int rc = 0;
	*delivered = 0;

	bus_lock(bus);
	struct agent *sender = bus_find_id(bus, agent_id);
	if (!sender) {
		rc = bus_fail(err, ENOENT, "the sending agent is gone");
		goto out;
	}
	batch.sender = sender;
	if (!bus_may_act_as(sender, uid)) {
		rc = bus_fail(err, EACCES, "uid %u may not send as %s (owned by uid %u)",
			      (unsigned)uid, sender->name, (unsigned)sender->uid);
		goto out;
	}
	buf_append(pending, data, len);
	if (!buf_ok(pending)) {
		rc = bus_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	/* Split what this write completes into records; an unfinished one waits. */
	size_t pos = 0;
	for (;;) {
		while (pos < pending->len && json_space(pending->data[pos]))
			pos++;
		if (pos >= pending->len) {
			consumed = pos;
			break;
		}
		if (pending->data[pos] != '{') {
			rc = bus_fail(err, EINVAL, "record %zu: a send record is one JSON object",
				      nrecs + 1);
			goto out;
		}
		size_t start = pos;
		int s = json_scan_value(pending->data, pending->len, &pos);
		if (s == -EAGAIN) {
			consumed = start;
			break;
		}
		if (s < 0) {
			rc = bus_fail(err, EINVAL, "record %zu: invalid JSON", nrecs + 1);
			goto out;
		}
		if (nrecs == cap) {
			cap = cap ? cap * 2 : 16;
			struct send_record *p = realloc(recs, cap * sizeof *p);
			if (!p) {
				rc = bus_fail(err, ENOMEM, "out of memory");
				goto out;
			}
			recs = p;
		}
		rc = parse_record(bus, sender, pending->data + start, pos - start,
				  (unsigned)nrecs + 1, &recs[nrecs], err);
		if (rc < 0)
			goto out;
		nrecs++;
	}
	if (pending->len - consumed > bus->cfg.max_message_size + 65536) {
		rc = bus_fail(err, EFBIG, "an unfinished record exceeds --max-message-size %" PRIu64,
			      bus->cfg.max_message_size);
		goto out;
	}
	if (nrecs == 0)
		goto out;

	/* A record whose idempotency key this sender used within --dedupe-window (in an
	 * earlier write or earlier in this one) is accepted and not delivered again. */
	int64_t now = bus_clock_now_us();
	uint32_t dups = 0, keys = 0;
	for (size_t i = 0; i < nrecs; i++) {
		if (!recs[i].key[0])
			continue;
		recs[i].duplicate = dedupe_seen(bus, recs[i].key, now);
		for (size_t j = 0; j < i && !recs[i].duplicate; j++)
			recs[i].duplicate = !recs[j].duplicate && strcmp(recs[j].key, recs[i].key) == 0;
		dups += recs[i].duplicate;
		keys += !recs[i].duplicate;
	}

	/* Every recipient: registered, not draining, room for all this write sends it. */
	uint64_t need = 0;
	for (size_t i = 0; i < nrecs && rc == 0; i++) {
		size_t before = batch.ntouched;
		if (recs[i].duplicate)
			continue;
		rc = record_recipients(bus, sender, &recs[i], (unsigned)i + 1, count_recipient,
				       &batch, err);
		need += (recs[i].payload_len + recs[i].type_len + recs[i].corr_len +
			 ENVELOPE_OVERHEAD) *
			(recs[i].broadcast ? bus->nagents : 1);
		(void)before;
	}
	if (rc < 0)
		goto out;
	if (need > STORE_MAX_RECORD) {
		rc = bus_fail(err, EFBIG, "this write's records come to more than the %u MiB a "
			      "single commit may hold; write fewer per write", STORE_MAX_RECORD >> 20);
		goto out;
	}
	if (!bus_space_for(bus, need)) {
		rc = bus_fail(err, ENOSPC, "the store is full (--store-max-bytes %" PRIu64 ")",
			      bus->cfg.store_max_bytes);
		goto out;
	}
	if (bus_quota_applies(bus, sender->uid) &&
	    quota_bytes(&bus->quota, sender->uid) + need > bus->cfg.max_bytes_per_uid) {
		rc = bus_fail(err, EDQUOT, "uid %u would hold more than --max-bytes-per-uid %" PRIu64
			      " bytes in pending messages and unfinished ones",
			      (unsigned)sender->uid, bus->cfg.max_bytes_per_uid);
		goto out;
	}

	/* Sequences restart from the pair counters as encoding assigns them. */
	for (size_t i = 0; i < batch.ntouched; i++)
		batch.touched[i]->batch_seq =
			bus_pair_sequence(bus, sender->name, batch.touched[i]->name);
	struct buf *rec = &bus->rec;
	buf_reset(rec);
	batch.now = now;
	if (keys || dups) {
		buf_put_u8(rec, REC_DELIVER_KEYED);
		buf_put_u32(rec, dups);
		buf_put_u32(rec, keys);
		for (size_t i = 0; i < nrecs; i++) {
			if (!recs[i].key[0] || recs[i].duplicate)
				continue;
			buf_put_str(rec, recs[i].key);
			buf_put_u64(rec, (uint64_t)now);
		}
	} else {
		buf_put_u8(rec, REC_DELIVER);
	}
	size_t count_at = rec->len;
	buf_put_u32(rec, 0);
	for (size_t i = 0; i < nrecs; i++) {
		if (recs[i].duplicate)
			continue;
		batch.rec = &recs[i];
		record_recipients(bus, sender, &recs[i], (unsigned)i + 1, encode_for_recipient,
				  &batch, err);
	}
	if (buf_ok(rec)) {
		uint8_t *p = (uint8_t *)rec->data + count_at;
		for (int k = 0; k < 4; k++)
			p[k] = (uint8_t)(batch.count >> (8 * k));
	}
	rc = bus_commit(bus, err);
	if (rc == 0)
		*delivered = batch.count;
	else
		sent->n = 0;
out:
	for (size_t i = 0; i < batch.ntouched; i++)
		batch.touched[i]->batch_touched = false;
	free(batch.touched);
	free(recs);
	if (rc < 0)
		buf_reset(pending); /* nothing of a rejected write, nor what it completed, stays */
	else
		buf_consume(pending, consumed);
	bus_unlock_and_wake(bus);
	return rc;
}
