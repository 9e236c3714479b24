/* deliver.c — the records that move messages: a delivery (one message, a broadcast
 * or a whole `send` write: REC_DELIVER), a consumption with its ack message (REC_ACK),
 * and the snapshot's messages and pair sequences (REC_SNAP_MSG, REC_SNAP_SEQ).
 *
 * A live record's messages are decoded and given room in every structure they touch
 * BEFORE the record goes to the journal (bus_prepare_messages), so applying it after
 * cannot fail for memory: the journal never holds a change the bus could not make.
 * A message in an inbox is charged to the uid owning its sender (quota.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"

/* A message entering an inbox is charged to the uid owning its sender, if registered. */
static void charge(struct bus *bus, struct bus_message *m)
{
	struct agent *from = bus_find(bus, m->from);
	struct quota_uid *u = from ? quota_of(&bus->quota, from->uid) : NULL;
	m->charged = u != NULL;
	m->charged_uid = u ? (uint32_t)u->uid : 0;
	if (u)
		u->pending_bytes += m->len;
}

void bus_uncharge(struct bus *bus, struct bus_message *m)
{
	struct quota_uid *u = m->charged ? quota_of(&bus->quota, (uid_t)m->charged_uid) : NULL;
	if (u)
		u->pending_bytes -= u->pending_bytes < m->len ? u->pending_bytes : m->len;
	m->charged = false;
}

void bus_uncharge_all(struct bus *bus, struct inbox *in)
{
	for (size_t i = in->head; i < in->tail; i++)
		if (in->msgs[i])
			bus_uncharge(bus, in->msgs[i]);
}

/* After freeing `bytes` of messages: glibc keeps freed memory inside its heaps (a
 * large block freed after smaller ones were allocated above it stays), so once a
 * megabyte-sized message or an outbox of them is gone, the heaps are trimmed. */
void bus_give_back(size_t bytes)
{
	if (bytes >= BUS_TRIM_BYTES)
		malloc_trim(0);
}

static int set_sequence(struct bus *bus, const char *from, const char *to, uint64_t seq)
{
	char key[2 * BUS_NAME_MAX + 2];
	pair_key(key, from, to);
	if (strmap_get(&bus->seqs, key) >= seq)
		return 0;
	return strmap_set(&bus->seqs, key, seq);
}

/* The next message of a record: the one bus_commit decoded before writing it, or
 * one decoded now (loading). */
static struct bus_message *next_message(struct bus *bus, struct reader *r)
{
	if (bus->prep_next < bus->prep_n) {
		r->pos = bus->prep_end[bus->prep_next];
		return bus->prep[bus->prep_next++];
	}
	return message_decode(r);
}

void bus_prepared_clear(struct bus *bus)
{
	for (size_t i = bus->prep_next; i < bus->prep_n; i++)
		message_unref(bus->prep[i]);
	free(bus->prep);
	free(bus->prep_end);
	bus->prep = NULL;
	bus->prep_end = NULL;
	bus->prep_n = bus->prep_next = 0;
}

/* Decodes the messages of a live record and makes room for them in every structure
 * their delivery touches (the number index, the inboxes, the outbox ring, the pair
 * sequences, the sender's quota entry, the wake list), so that applying the record
 * after it is in the journal cannot fail for memory. 0, -ENOMEM or -EINVAL. */
int bus_prepare_messages(struct bus *bus, const uint8_t *rec, size_t len)
{
	struct reader r = {rec, len, 1, false};
	char name[BUS_NAME_MAX + 1];
	uint32_t n;
	if (rec[0] == REC_DELIVER) {
		n = rd_u32(&r);
	} else if (rec[0] == REC_DELIVER_KEYED) {
		(void)rd_u32(&r);
		uint32_t k = rd_u32(&r);
		for (uint32_t i = 0; i < k && !r.bad; i++) {
			size_t klen;
			(void)rd_bytes(&r, &klen);
			(void)rd_u64(&r);
		}
		n = rd_u32(&r);
	} else if (rec[0] == REC_ACK) {
		rd_str(&r, name, sizeof name);
		(void)rd_u64(&r);
		n = rd_u8(&r) ? 1 : 0;
		if (wake_reserve(bus, n + 1) < 0) /* the acking agent's claimers, and the sender */
			return -ENOMEM;
	} else {
		return 0;
	}
	if (r.bad || n > len)
		return -EINVAL;
	if (n == 0)
		return 0;
	bus->prep = malloc(n * sizeof *bus->prep);
	bus->prep_end = malloc(n * sizeof *bus->prep_end);
	if (!bus->prep || !bus->prep_end)
		return -ENOMEM;
	int rc = 0;
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		struct bus_message *m = message_decode(&r);
		if (!m) {
			rc = r.bad ? -EINVAL : -ENOMEM;
			break;
		}
		bus->prep[bus->prep_n] = m;
		bus->prep_end[bus->prep_n++] = r.pos;
		struct agent *to = bus_find(bus, m->to), *from = bus_find(bus, m->from);
		if (!to && strchr(m->to, '@') && !(to = gateway_for(bus, m->to, true))) {
			rc = -ENOMEM;
			break;
		}
		char key[2 * BUS_NAME_MAX + 2];
		pair_key(key, m->from, m->to);
		if (to && inbox_reserve(&to->inbox, ++to->prep_count) < 0)
			rc = -ENOMEM;
		else if (from && outbox_reserve(&from->outbox) < 0)
			rc = -ENOMEM;
		else if (from && !quota_of(&bus->quota, from->uid))
			rc = -ENOMEM;
		else if (strmap_set(&bus->seqs, key, strmap_get(&bus->seqs, key)) < 0)
			rc = -ENOMEM; /* an absent pair enters at 0, which reads as absent */
	}
	for (size_t i = 0; i < bus->prep_n; i++) {
		struct agent *to = bus_find(bus, bus->prep[i]->to);
		if (to)
			to->prep_count = 0;
	}
	if (rc == 0 && (msgindex_reserve(&bus->messages, n) < 0 || wake_reserve(bus, n) < 0))
		rc = -ENOMEM;
	return rc;
}

/* Puts a decoded message into its recipient's inbox and its sender's outbox. */
static int deliver(struct bus *bus, struct bus_message *m, bool count)
{
	struct agent *to = bus_find(bus, m->to);
	if (!to && strchr(m->to, '@') && !(to = gateway_for(bus, m->to, true))) {
		message_unref(m);
		return -ENOMEM;
	}
	/* Numbers are handed out in order and never twice: a record that breaks that
	 * comes from a damaged store. */
	if (!to || m->number <= bus->counter || inbox_put(bus, to, m) < 0) {
		message_unref(m);
		return -EINVAL;
	}
	struct agent *from = bus_find(bus, m->from);
	if (from)
		outbox_put(bus, from, m);
	if (m->number > bus->counter)
		bus->counter = m->number;
	bus->pending++;
	charge(bus, m);
	if (m->expires_us && !gateway_is(to))
		timer_add(bus, m->expires_us, m->number, 0, TIMER_TTL);
	if (count) {
		to->delivered_total++;
		bus->delivered_total++;
	}
	event_message(bus, "delivered", to->name, m, m->len, NULL);
	want_wake(bus, to->id);
	return set_sequence(bus, m->from, m->to, m->sequence);
}

int64_t bus_message_expiry(const struct bus *bus, uint32_t ttl_s, int64_t now)
{
	double ttl = ttl_s ? (double)ttl_s : bus->cfg.message_ttl_s;
	return ttl > 0 ? now + (int64_t)(ttl * 1e6) : 0;
}

/* REC_DELIVER: u32 n, n x message. */
int deliver_apply(struct bus *bus, struct reader *r)
{
	uint32_t n = rd_u32(r);
	for (uint32_t i = 0; i < n; i++) {
		struct bus_message *m = next_message(bus, r);
		if (!m || deliver(bus, m, true) < 0)
			return -EINVAL;
	}
	return r->bad ? -EINVAL : 0;
}

/* REC_DELIVER_KEYED: u32 duplicates, u32 k, k x (str key, u64 at_us), u32 n,
 * n x message. The keys enter first; a key that cannot is taken back with the ones
 * before it, so the record changes nothing unless it changes all. */
int deliver_keyed_apply(struct bus *bus, struct reader *r)
{
	uint32_t dups = rd_u32(r), k = rd_u32(r);
	char key[DEDUPE_KEY_BUF];
	uint32_t added = 0;
	int rc = 0;
	for (uint32_t i = 0; i < k && rc == 0; i++) {
		rd_str(r, key, sizeof key);
		uint64_t at = rd_u64(r);
		if (r->bad || !strchr(key, '\x01') || at > (uint64_t)INT64_MAX / 2)
			rc = -EINVAL;
		else if ((rc = dedupe_add(bus, key, (int64_t)at)) == 0)
			added++;
	}
	if (rc < 0) {
		while (added--)
			dedupe_undo_last(bus);
		return rc;
	}
	bus->duplicates_total += dups;
	return deliver_apply(bus, r);
}

/* REC_ACK: str agent, u64 number, u8 has_ack, [message]. */
int ack_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	rd_str(r, name, sizeof name);
	uint64_t number = rd_u64(r);
	uint8_t has_ack = rd_u8(r);
	if (r->bad || !(a = bus_find(bus, name)))
		return -EINVAL;
	/* A pending message, or a leased one (its token was checked before the record). */
	struct bus_message *m = inbox_remove(bus, a, number);
	char token[40] = "";
	if (!m && (m = place_take(bus, a, BUS_INFLIGHT, number))) {
		bus->leased--;
		snprintf(token, sizeof token, ",\"token\":%" PRIu64, m->token);
		lease_forget(bus, m->token);
	}
	if (!m)
		return -EINVAL;
	event_message(bus, "acked", a->name, m, 0, token);
	m->token = 0;
	bus_uncharge(bus, m);
	size_t freed = m->len;
	message_unref(m);
	bus_give_back(freed);
	a->acked_total++;
	bus->pending--;
	want_wake(bus, a->id); /* a draining agent's claimers may have nothing left now */
	if (has_ack) {
		struct bus_message *ack = next_message(bus, r);
		if (!ack || deliver(bus, ack, true) < 0)
			return -EINVAL;
	}
	return 0;
}

/* REC_SNAP_SEQ: str pair key, u64 sequence. */
int seq_apply(struct bus *bus, struct reader *r)
{
	char key[2 * BUS_NAME_MAX + 2];
	rd_str(r, key, sizeof key);
	uint64_t seq = rd_u64(r);
	if (r->bad)
		return -EINVAL;
	return strmap_set(&bus->seqs, key, seq);
}

int seq_save(struct bus *bus, struct buf *b)
{
	int rc = 0;
	strmap_foreach(&bus->seqs, s) {
		if (rc < 0)
			break;
		buf_put_u8(b, REC_SNAP_SEQ);
		buf_put_str(b, s->key);
		buf_put_u64(b, s->value);
		rc = bus_snapshot_put(bus, b);
	}
	return rc;
}

/* REC_SNAP_MSG: u8 where (1 inbox, 2 outbox, 4 inflight, 8 dead, 16 lease state
 * follows), message, then with 16: u32 deliveries, u64 token, u64 deadline_us,
 * u64 ready_us, u8 dead_reason, u64 dead_us. */
#define WHERE_INBOX 1
#define WHERE_OUTBOX 2
#define WHERE_INFLIGHT 4
#define WHERE_DEAD 8
#define WHERE_STATE 16

int snap_msg_apply(struct bus *bus, struct reader *r)
{
	uint8_t where = rd_u8(r);
	struct bus_message *m = message_decode(r);
	if (!m)
		return -EINVAL;
	if (where & WHERE_STATE) {
		m->deliveries = rd_u32(r);
		m->token = rd_u64(r);
		m->deadline_us = (int64_t)rd_u64(r);
		m->ready_us = (int64_t)rd_u64(r);
		m->dead_reason = rd_u8(r);
		m->dead_us = (int64_t)rd_u64(r);
	}
	enum bus_place held = where & WHERE_INFLIGHT ? BUS_INFLIGHT
			      : where & WHERE_DEAD ? BUS_DEAD : BUS_INBOX;
	int places = !!(where & WHERE_INBOX) + !!(where & WHERE_INFLIGHT) + !!(where & WHERE_DEAD);
	if (r->bad || places > 1 || (where & ~31) || m->deadline_us < 0 || m->ready_us < 0 ||
	    m->dead_us < 0 || (held == BUS_INFLIGHT) != (m->token != 0) ||
	    m->token > bus->last_token || (held == BUS_DEAD && !m->dead_reason) ||
	    m->dead_reason >= DEAD_NREASONS) {
		message_unref(m);
		return -EINVAL;
	}
	/* A snapshot lists each message once, in number order, within its counter. */
	if (m->number <= bus->snap_last || m->number > bus->counter) {
		message_unref(m);
		return -EINVAL;
	}
	bus->snap_last = m->number;
	int rc = 0;
	if (where & 2) {
		struct agent *from = bus_find(bus, m->from);
		if (from)
			outbox_put(bus, from, m);
	}
	if (places) {
		struct agent *a = bus_find(bus, m->to);
		if (!a && strchr(m->to, '@') && !(a = gateway_for(bus, m->to, true))) {
			message_unref(m);
			return -ENOMEM;
		}
		if (a && held == BUS_INFLIGHT && lease_index_put(bus, m->token, m->number) < 0) {
			message_unref(m);
			return -ENOMEM;
		}
		if (a && place_put(bus, a, held, m) == 0) {
			if (held != BUS_DEAD)
				bus->pending++;
			if (held == BUS_INFLIGHT)
				bus->leased++;
			if (held == BUS_DEAD)
				bus->dead++;
			charge(bus, m);
			lease_timers_of(bus, m);
			return 0;
		}
		rc = -EINVAL;
	}
	message_unref(m);
	return rc;
}

static int cmp_msg_number(const void *a, const void *b)
{
	const struct bus_message *x = *(struct bus_message *const *)a;
	const struct bus_message *y = *(struct bus_message *const *)b;
	return x->number < y->number ? -1 : x->number > y->number;
}

/* Every message an inbox or outbox holds, once each, in number order. */
int snap_msg_save(struct bus *bus, struct buf *b)
{
	struct bus_message **msgs = NULL;
	size_t nmsgs = 0, cap = 0;
	int rc = 0;
	for (size_t k = 0; k < bus->nagents + bus->ngateways && rc == 0; k++) {
		struct agent *a = k < bus->nagents ? bus->by_id[k] : bus->gateways[k - bus->nagents];
		size_t need = nmsgs + a->inbox.live + a->inflight.live + a->dead.live +
			      a->outbox.count;
		if (need > cap) {
			cap = need * 2;
			struct bus_message **p = realloc(msgs, cap * sizeof *p);
			if (!p) {
				rc = -ENOMEM;
				break;
			}
			msgs = p;
		}
		for (enum bus_place p = BUS_INBOX; p <= BUS_DEAD; p++) {
			const struct inbox *in = agent_place(a, p);
			for (size_t i = in->head; i < in->tail; i++)
				if (in->msgs[i])
					msgs[nmsgs++] = in->msgs[i];
		}
		for (size_t i = 0; i < a->outbox.count; i++)
			msgs[nmsgs++] = outbox_at(&a->outbox, i);
	}
	if (rc == 0 && nmsgs)
		qsort(msgs, nmsgs, sizeof *msgs, cmp_msg_number);
	for (size_t i = 0; i < nmsgs && rc == 0; i++) {
		if (i > 0 && msgs[i] == msgs[i - 1])
			continue;
		struct bus_message *m = msgs[i];
		struct agent *to = bus_find(bus, m->to);
		struct agent *from = bus_find(bus, m->from);
		uint8_t where = 0;
		if (to && inbox_find(&to->inbox, m->number) == m)
			where |= WHERE_INBOX;
		if (to && inbox_find(&to->inflight, m->number) == m)
			where |= WHERE_INFLIGHT;
		if (to && inbox_find(&to->dead, m->number) == m)
			where |= WHERE_DEAD;
		if ((where & (WHERE_INBOX | WHERE_INFLIGHT | WHERE_DEAD)) &&
		    (m->deliveries || m->token || m->ready_us || m->dead_reason))
			where |= WHERE_STATE;
		if (from && from->outbox.count) {
			size_t k = outbox_search(&from->outbox, m->number - 1);
			if (k < from->outbox.count && outbox_at(&from->outbox, k) == m)
				where |= WHERE_OUTBOX;
		}
		buf_put_u8(b, REC_SNAP_MSG);
		buf_put_u8(b, where);
		message_encode_again(b, m);
		if (where & WHERE_STATE) {
			buf_put_u32(b, m->deliveries);
			buf_put_u64(b, m->token);
			buf_put_u64(b, (uint64_t)m->deadline_us);
			buf_put_u64(b, (uint64_t)m->ready_us);
			buf_put_u8(b, m->dead_reason);
			buf_put_u64(b, (uint64_t)m->dead_us);
		}
		rc = bus_snapshot_put(bus, b);
	}
	free(msgs);
	return rc;
}
