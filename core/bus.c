/* bus.c — the bus state: agents, inboxes, outboxes, the apply function, compaction.
 *
 * apply_record() is the only code that changes the state. Live operations build a
 * record, append it to the journal (bus_commit) and then apply it; recovery applies
 * the snapshot's and the journal's records with the same function. A record that
 * does not apply during recovery means a damaged store, and loading stops.
 *
 * Ownership: the bus owns its agents; an agent owns its inbox and outbox arrays and
 * holds one message reference per entry in each. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus_impl.h"
#include "busfs/clock.h"
#include "busfs/json.h"

/* ---------- small helpers ---------- */

void bus_lock(struct bus *bus) { pthread_mutex_lock(&bus->lock); }

/* Unmarks the agents in the list of agents to wake (under the lock). */
static void wake_flags_clear(struct bus *bus)
{
	for (size_t i = 0; i < bus->wake_n; i++) {
		struct agent *a = bus_find_id(bus, bus->wake_ids[i]);
		if (a)
			a->wake_queued = false;
	}
}

void bus_unlock_and_wake(struct bus *bus)
{
	uint64_t small[16];
	uint64_t *ids = small;
	wake_flags_clear(bus);
	size_t n = bus->wake_n;
	if (n > 16) {
		ids = bus->wake_ids;
		bus->wake_ids = NULL;
		bus->wake_cap = 0;
	} else if (n) {
		memcpy(small, bus->wake_ids, n * sizeof *ids);
	}
	bus->wake_n = 0;
	bus->version++;
	bus_wake_fn fn = bus->wake;
	void *ctx = bus->wake_ctx;
	pthread_mutex_unlock(&bus->lock);
	for (size_t i = 0; i < n && fn; i++)
		fn(ctx, ids[i]);
	if (ids != small)
		free(ids);
}

/* Each agent is queued once per change, without searching the list: a broadcast to
 * every agent stays linear. (An agent deleted while queued is not found again; its
 * id is never reused.) */
static int wake_reserve(struct bus *bus, size_t more)
{
	if (bus->wake_n + more <= bus->wake_cap)
		return 0;
	size_t cap = bus->wake_cap ? bus->wake_cap : 16;
	while (cap < bus->wake_n + more)
		cap *= 2;
	uint64_t *p = realloc(bus->wake_ids, cap * sizeof *p);
	if (!p)
		return -ENOMEM;
	bus->wake_ids = p;
	bus->wake_cap = cap;
	return 0;
}

static void want_wake(struct bus *bus, uint64_t id)
{
	struct agent *a = bus_find_id(bus, id);
	if (a && a->wake_queued)
		return;
	if (wake_reserve(bus, 1) < 0)
		return;
	bus->wake_ids[bus->wake_n++] = id;
	if (a)
		a->wake_queued = true;
}

bool bus_name_valid(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > BUS_NAME_MAX || strcmp(name, "all") == 0)
		return false;
	if (!((name[0] >= 'A' && name[0] <= 'Z') || (name[0] >= 'a' && name[0] <= 'z')))
		return false;
	for (size_t i = 1; i < n; i++) {
		char c = name[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

bool bus_may_act_as(const struct agent *a, uid_t uid) { return uid == 0 || uid == a->uid; }

bool bus_quota_applies(const struct bus *bus, uid_t uid) { return uid != bus->server_uid; }

struct agent *bus_owned_agent(struct bus *bus, uint64_t agent_id, uid_t uid, const char *what,
			      struct bus_error *err)
{
	struct agent *a = bus_find_id(bus, agent_id);
	if (!a)
		bus_fail(err, ENOENT, "no such agent");
	else if (!bus_may_act_as(a, uid))
		bus_fail(err, EACCES, "uid %u may not %s %s (owned by uid %u)", (unsigned)uid, what,
			 a->name, (unsigned)a->uid);
	else
		return a;
	return NULL;
}

static size_t name_index(struct bus *bus, const char *name, bool *found)
{
	size_t lo = 0, hi = bus->nagents;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(bus->by_name[mid]->name, name);
		if (c == 0) {
			*found = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = false;
	return lo;
}

struct agent *bus_find(struct bus *bus, const char *name)
{
	bool found;
	size_t i = name_index(bus, name, &found);
	return found ? bus->by_name[i] : NULL;
}

size_t bus_id_index(const struct bus *bus, uint64_t id)
{
	size_t lo = 0, hi = bus->nagents;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (bus->by_id[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct agent *bus_find_id(struct bus *bus, uint64_t id)
{
	size_t i = bus_id_index(bus, id);
	return i < bus->nagents && bus->by_id[i]->id == id ? bus->by_id[i] : NULL;
}

/* "FROM\x01TO" (both names are valid, so at most 2 * BUS_NAME_MAX + 1 bytes). */
static void pair_key(char *key, const char *from, const char *to)
{
	size_t f = strnlen(from, BUS_NAME_MAX), t = strnlen(to, BUS_NAME_MAX);
	memcpy(key, from, f);
	key[f] = '\x01';
	memcpy(key + f + 1, to, t);
	key[f + 1 + t] = '\0';
}

uint64_t bus_pair_sequence(struct bus *bus, const char *from, const char *to)
{
	char key[2 * BUS_NAME_MAX + 2];
	pair_key(key, from, to);
	return strmap_get(&bus->seqs, key);
}

/* ---------- inbox and outbox ---------- */

int inbox_depth(const struct agent *a) { return (int)a->inbox.live; }

static size_t inbox_search(const struct inbox *in, uint64_t number)
{
	size_t lo = in->head, hi = in->tail;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (in->nums[mid] < number)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct bus_message *inbox_find(const struct inbox *in, uint64_t number)
{
	size_t i = inbox_search(in, number);
	return i < in->tail && in->nums[i] == number ? in->msgs[i] : NULL;
}

/* Moves the live entries to the front when holes dominate. */
static void inbox_compact(struct inbox *in)
{
	size_t o = 0;
	for (size_t i = in->head; i < in->tail; i++) {
		if (!in->msgs[i])
			continue;
		in->nums[o] = in->nums[i];
		in->msgs[o] = in->msgs[i];
		o++;
	}
	in->head = 0;
	in->tail = o;
}

/* Room for `more` adds that then do not allocate. */
static int inbox_reserve(struct inbox *in, size_t more)
{
	if (in->tail + more > in->cap && in->head > 0)
		inbox_compact(in);
	if (in->tail + more <= in->cap)
		return 0;
	size_t cap = in->cap ? in->cap : 16;
	while (cap < in->tail + more)
		cap *= 2;
	uint64_t *nums = realloc(in->nums, cap * sizeof *nums);
	if (!nums)
		return -ENOMEM;
	in->nums = nums;
	struct bus_message **msgs = realloc(in->msgs, cap * sizeof *msgs);
	if (!msgs)
		return -ENOMEM;
	in->msgs = msgs;
	in->cap = cap;
	return 0;
}

static int inbox_add(struct inbox *in, struct bus_message *m)
{
	if (in->tail - in->head > 2 * in->live + 32 || (in->tail == in->cap && in->head > 0))
		inbox_compact(in);
	if (inbox_reserve(in, 1) < 0)
		return -ENOMEM;
	/* Numbers arrive in increasing order; keep the array sorted if one does not. */
	size_t at = in->tail;
	if (at > in->head && in->nums[at - 1] >= m->number) {
		at = inbox_search(in, m->number);
		if (at < in->tail && in->nums[at] == m->number)
			return -EEXIST;
		memmove(in->nums + at + 1, in->nums + at, (in->tail - at) * sizeof *in->nums);
		memmove(in->msgs + at + 1, in->msgs + at, (in->tail - at) * sizeof *in->msgs);
	}
	in->nums[at] = m->number;
	in->msgs[at] = m;
	in->tail++;
	in->live++;
	return 0;
}

/* Removes and returns the message (the caller owns the inbox's reference). */
static struct bus_message *inbox_take(struct inbox *in, uint64_t number)
{
	size_t i = inbox_search(in, number);
	if (i >= in->tail || in->nums[i] != number || !in->msgs[i])
		return NULL;
	struct bus_message *m = in->msgs[i];
	in->msgs[i] = NULL;
	in->live--;
	while (in->head < in->tail && !in->msgs[in->head])
		in->head++;
	if (in->head == in->tail)
		in->head = in->tail = 0;
	return m;
}

static struct bus_message *inbox_oldest(const struct inbox *in)
{
	for (size_t i = in->head; i < in->tail; i++)
		if (in->msgs[i])
			return in->msgs[i];
	return NULL;
}

static void inbox_free(struct inbox *in)
{
	for (size_t i = in->head; i < in->tail; i++)
		message_unref(in->msgs[i]);
	free(in->nums);
	free(in->msgs);
	memset(in, 0, sizeof *in);
}

static struct bus_message *outbox_at(const struct outbox *o, size_t i)
{
	return o->ring[(o->start + i) % BUS_OUTBOX_KEEP];
}

/* Adds a reference to m; a full ring hands its oldest message (and the reference to
 * it) to *evicted. */
static int outbox_reserve(struct outbox *o)
{
	if (!o->ring)
		o->ring = calloc(BUS_OUTBOX_KEEP, sizeof *o->ring);
	return o->ring ? 0 : -ENOMEM;
}

static int outbox_add(struct outbox *o, struct bus_message *m, struct bus_message **evicted)
{
	*evicted = NULL;
	if (outbox_reserve(o) < 0)
		return -ENOMEM;
	message_ref(m);
	if (o->count == BUS_OUTBOX_KEEP) {
		*evicted = o->ring[o->start];
		o->ring[o->start] = m;
		o->start = (o->start + 1) % BUS_OUTBOX_KEEP;
	} else {
		o->ring[(o->start + o->count) % BUS_OUTBOX_KEEP] = m;
		o->count++;
	}
	return 0;
}

/* First index whose number is > after. */
static size_t outbox_search(const struct outbox *o, uint64_t after)
{
	size_t lo = 0, hi = o->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (outbox_at(o, mid)->number <= after)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void outbox_free(struct outbox *o)
{
	for (size_t i = 0; i < o->count; i++)
		message_unref(outbox_at(o, i));
	free(o->ring);
	memset(o, 0, sizeof *o);
}

/* ---------- the number index: a message is in it while an inbox or outbox holds it ---------- */

static int index_enter(struct bus *bus, struct bus_message *m)
{
	return m->in_inbox || m->in_outbox ? 0 : msgindex_put(&bus->messages, m);
}

static void index_leave(struct bus *bus, struct bus_message *m)
{
	if (!m->in_inbox && !m->in_outbox)
		msgindex_remove(&bus->messages, m->number);
}

static int inbox_put(struct bus *bus, struct agent *to, struct bus_message *m)
{
	int rc = index_enter(bus, m);
	if (rc == 0 && (rc = inbox_add(&to->inbox, m)) < 0)
		index_leave(bus, m);
	m->in_inbox = rc == 0;
	return rc;
}

/* Takes the message out of the inbox; the caller owns the inbox's reference. */
static struct bus_message *inbox_remove(struct bus *bus, struct agent *a, uint64_t number)
{
	struct bus_message *m = inbox_take(&a->inbox, number);
	if (m) {
		m->in_inbox = false;
		index_leave(bus, m);
	}
	return m;
}

static void outbox_put(struct bus *bus, struct agent *from, struct bus_message *m)
{
	struct bus_message *old;
	if (index_enter(bus, m) < 0)
		return;
	if (outbox_add(&from->outbox, m, &old) < 0) {
		index_leave(bus, m);
		return;
	}
	m->in_outbox = true;
	if (old) {
		old->in_outbox = false;
		index_leave(bus, old);
		message_unref(old);
	}
}

/* Before an agent goes: its messages leave the index (agent_free drops them). */
static void agent_forget_messages(struct bus *bus, struct agent *a)
{
	for (size_t i = a->inbox.head; i < a->inbox.tail; i++) {
		struct bus_message *m = a->inbox.msgs[i];
		if (m) {
			m->in_inbox = false;
			index_leave(bus, m);
		}
	}
	for (size_t i = 0; i < a->outbox.count; i++) {
		struct bus_message *m = outbox_at(&a->outbox, i);
		m->in_outbox = false;
		index_leave(bus, m);
	}
}

/* ---------- agents ---------- */

static struct agent *agent_insert(struct bus *bus, const char *name)
{
	bool found;
	size_t at = name_index(bus, name, &found);
	if (found)
		return NULL;
	if (bus->nagents == bus->by_id_cap) {
		size_t cap = bus->by_id_cap ? bus->by_id_cap * 2 : 64;
		struct agent **p = realloc(bus->by_id, cap * sizeof *p);
		if (!p)
			return NULL;
		bus->by_id = p;
		bus->by_id_cap = cap;
	}
	if (bus->nagents == bus->by_name_cap) {
		size_t cap = bus->by_name_cap ? bus->by_name_cap * 2 : 64;
		struct agent **p = realloc(bus->by_name, cap * sizeof *p);
		if (!p)
			return NULL;
		bus->by_name = p;
		bus->by_name_cap = cap;
	}
	struct agent *a = calloc(1, sizeof *a);
	if (!a)
		return NULL;
	snprintf(a->name, sizeof a->name, "%s", name);
	a->id = bus->next_id++;
	errlog_init(&a->errors, BUS_AGENT_ERRORS_KEEP);
	buf_init(&a->health_reason);
	buf_init(&a->health_extra);
	bus->by_id[bus->nagents] = a; /* the newest id is the largest */
	memmove(bus->by_name + at + 1, bus->by_name + at, (bus->nagents - at) * sizeof *bus->by_name);
	bus->by_name[at] = a;
	bus->nagents++;
	return a;
}

static void agent_free(struct agent *a)
{
	quota_drafts_free(&a->drafts);
	inbox_free(&a->inbox);
	outbox_free(&a->outbox);
	errlog_free(&a->errors);
	buf_free(&a->health_reason);
	buf_free(&a->health_extra);
	free(a);
}

static void agent_delete(struct bus *bus, struct agent *a)
{
	bool found;
	size_t at = name_index(bus, a->name, &found);
	memmove(bus->by_name + at, bus->by_name + at + 1,
		(bus->nagents - at - 1) * sizeof *bus->by_name);
	size_t i = bus_id_index(bus, a->id);
	memmove(bus->by_id + i, bus->by_id + i + 1, (bus->nagents - i - 1) * sizeof *bus->by_id);
	bus->nagents--;
	bus->pending -= a->inbox.live;
	agent_forget_messages(bus, a);
	agent_free(a);
}

static void agent_info(const struct agent *a, struct bus_agent_info *out)
{
	memset(out, 0, sizeof *out);
	out->id = a->id;
	memcpy(out->name, a->name, sizeof out->name);
	out->uid = a->uid;
	out->gid = a->gid;
	out->created_us = a->created_us;
	out->draining = a->draining;
	out->depth = (uint32_t)a->inbox.live;
	out->reserved = a->reserved;
	out->delivered_total = a->delivered_total;
	out->acked_total = a->acked_total;
	out->outbox_count = (uint32_t)a->outbox.count;
	out->errors_bytes = a->errors.text.len;
	out->last_seen_us = a->last_seen_us;
}

/* ---------- applying records ---------- */

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

static void uncharge(struct bus *bus, struct bus_message *m)
{
	struct quota_uid *u = m->charged ? quota_of(&bus->quota, (uid_t)m->charged_uid) : NULL;
	if (u)
		u->pending_bytes -= u->pending_bytes < m->len ? u->pending_bytes : m->len;
	m->charged = false;
}

static void uncharge_inbox(struct bus *bus, struct inbox *in)
{
	for (size_t i = in->head; i < in->tail; i++)
		if (in->msgs[i])
			uncharge(bus, in->msgs[i]);
}

/* After freeing `bytes` of messages: glibc keeps freed memory inside its heaps (a
 * large block freed after smaller ones were allocated above it stays), so once a
 * megabyte-sized message or an outbox of them is gone, the heaps are trimmed. */
static void give_back(size_t bytes)
{
	if (bytes >= BUS_TRIM_BYTES)
		malloc_trim(0);
}

static size_t outbox_bytes(const struct outbox *o)
{
	size_t n = 0;
	for (size_t i = 0; i < o->count; i++)
		n += outbox_at(o, i)->len;
	return n;
}

static int count_agent(struct bus *bus, uid_t uid, int delta)
{
	struct quota_uid *u = quota_of(&bus->quota, uid);
	if (!u)
		return -ENOMEM;
	if (delta > 0)
		u->agents++;
	else if (u->agents)
		u->agents--;
	return 0;
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

static void prepared_clear(struct bus *bus)
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
static int prepare_messages(struct bus *bus, const uint8_t *rec, size_t len)
{
	struct reader r = {rec, len, 1, false};
	char name[BUS_NAME_MAX + 1];
	uint32_t n;
	if (rec[0] == REC_DELIVER) {
		n = rd_u32(&r);
	} else if (rec[0] == REC_ACK) {
		rd_str(&r, name, sizeof name);
		(void)rd_u64(&r);
		n = rd_u8(&r) ? 1 : 0;
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
	if (count) {
		to->delivered_total++;
		bus->delivered_total++;
	}
	want_wake(bus, to->id);
	return set_sequence(bus, m->from, m->to, m->sequence);
}

static int apply_record(void *ctx, const uint8_t *rec, size_t len, bool from_snapshot)
{
	struct bus *bus = ctx;
	struct reader r = {rec, len, 1, false};
	char name[BUS_NAME_MAX + 1];
	struct agent *a;

	/* Snapshot records restate the state; in a journal one would repeat it. */
	if (!from_snapshot && rec[0] >= REC_SNAP_HEAD && rec[0] <= REC_SNAP_REJECT)
		return -EINVAL;

	switch (rec[0]) {
	case REC_AGENT_ADD: {
		rd_str(&r, name, sizeof name);
		uint32_t uid = rd_u32(&r), gid = rd_u32(&r);
		uint64_t created = rd_u64(&r);
		uint8_t draining = rd_u8(&r);
		uint64_t delivered = rd_u64(&r), acked = rd_u64(&r);
		if (r.bad || !bus_name_valid(name) || bus_find(bus, name))
			return -EINVAL;
		if (!(a = agent_insert(bus, name)))
			return -ENOMEM;
		if (count_agent(bus, uid, 1) < 0) {
			agent_delete(bus, a);
			return -ENOMEM;
		}
		a->uid = uid;
		a->gid = gid;
		a->created_us = (int64_t)created;
		a->draining = draining;
		a->delivered_total = delivered;
		a->acked_total = acked;
		return 0;
	}
	case REC_AGENT_DEL:
		rd_str(&r, name, sizeof name);
		if (r.bad || !(a = bus_find(bus, name)))
			return -EINVAL;
		want_wake(bus, a->id);
		uncharge_inbox(bus, &a->inbox);
		count_agent(bus, a->uid, -1);
		size_t held = outbox_bytes(&a->outbox);
		agent_delete(bus, a);
		give_back(held);
		return 0;
	case REC_DELIVER: {
		uint32_t n = rd_u32(&r);
		for (uint32_t i = 0; i < n; i++) {
			struct bus_message *m = next_message(bus, &r);
			if (!m || deliver(bus, m, true) < 0)
				return -EINVAL;
		}
		return r.bad ? -EINVAL : 0;
	}
	case REC_ACK: {
		rd_str(&r, name, sizeof name);
		uint64_t number = rd_u64(&r);
		uint8_t has_ack = rd_u8(&r);
		if (r.bad || !(a = bus_find(bus, name)))
			return -EINVAL;
		struct bus_message *m = inbox_remove(bus, a, number);
		if (!m)
			return -EINVAL;
		uncharge(bus, m);
		size_t freed = m->len;
		message_unref(m);
		give_back(freed);
		a->acked_total++;
		bus->pending--;
		if (has_ack) {
			struct bus_message *ack = next_message(bus, &r);
			if (!ack || deliver(bus, ack, true) < 0)
				return -EINVAL;
		}
		return 0;
	}
	case REC_STATE: {
		rd_str(&r, name, sizeof name);
		uint8_t draining = rd_u8(&r);
		if (r.bad || !(a = bus_find(bus, name)))
			return -EINVAL;
		a->draining = draining;
		want_wake(bus, a->id);
		return 0;
	}
	case REC_HEALTH: {
		rd_str(&r, name, sizeof name);
		uint8_t status = rd_u8(&r);
		uint64_t seen = rd_u64(&r);
		size_t rlen = 0, xlen = 0;
		if (seen > (uint64_t)INT64_MAX / 2)
			return -EINVAL;
		const char *reason = rd_bytes(&r, &rlen);
		const char *extra = rd_bytes(&r, &xlen);
		if (r.bad || status > HEALTH_UNHEALTHY || !(a = bus_find(bus, name)))
			return -EINVAL;
		a->health = (enum health_status)status;
		a->last_seen_us = (int64_t)seen;
		bus_time_format(a->last_seen_us, a->last_seen_text);
		buf_reset(&a->health_reason);
		buf_append(&a->health_reason, reason, rlen);
		buf_reset(&a->health_extra);
		buf_append(&a->health_extra, extra, xlen);
		return buf_ok(&a->health_reason) && buf_ok(&a->health_extra) ? 0 : -ENOMEM;
	}
	case REC_BEAT: {
		rd_str(&r, name, sizeof name);
		uint64_t seen = rd_u64(&r);
		if (r.bad || seen > (uint64_t)INT64_MAX / 2 || !(a = bus_find(bus, name)))
			return -EINVAL;
		a->last_seen_us = (int64_t)seen;
		bus_time_format(a->last_seen_us, a->last_seen_text);
		return 0;
	}
	case REC_REJECT: {
		uint32_t code = rd_u32(&r);
		if (r.bad)
			return -EINVAL;
		bus->rejected_total++;
		bus->rejected_by[code < BUS_ERRNO_MAX ? code : 0]++;
		return 0;
	}
	case REC_SNAP_REJECT: {
		uint32_t code = rd_u32(&r);
		uint64_t n = rd_u64(&r);
		if (r.bad)
			return -EINVAL;
		bus->rejected_by[code < BUS_ERRNO_MAX ? code : 0] = n;
		return 0;
	}
	case REC_RULES: {
		size_t n = 0;
		const char *text = rd_bytes(&r, &n);
		if (r.bad || alerts_apply_rules(bus, text, n) < 0)
			return -EINVAL;
		return 0;
	}
	case REC_ALERT: {
		char rule[RULE_NAME_MAX + 1];
		rd_str(&r, rule, sizeof rule);
		rd_str(&r, name, sizeof name);
		uint8_t firing = rd_u8(&r);
		uint64_t since = rd_u64(&r), bits = rd_u64(&r);
		uint8_t severity = rd_u8(&r);
		double value;
		memcpy(&value, &bits, sizeof value);
		if (r.bad || severity > SEV_CRITICAL)
			return -EINVAL;
		return alerts_apply_alert(bus, rule, name, firing, (int64_t)since, value,
					  (enum rule_severity)severity);
	}
	case REC_SNAP_HEAD:
		bus->counter = rd_u64(&r);
		bus->delivered_total = rd_u64(&r);
		bus->rejected_total = rd_u64(&r);
		return r.bad ? -EINVAL : 0;
	case REC_SNAP_SEQ: {
		char key[2 * BUS_NAME_MAX + 2];
		rd_str(&r, key, sizeof key);
		uint64_t seq = rd_u64(&r);
		if (r.bad)
			return -EINVAL;
		return strmap_set(&bus->seqs, key, seq);
	}
	case REC_SNAP_MSG: {
		uint8_t where = rd_u8(&r);
		struct bus_message *m = message_decode(&r);
		if (!m)
			return -EINVAL;
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
		if (where & 1) {
			a = bus_find(bus, m->to);
			if (a && inbox_put(bus, a, m) == 0) {
				bus->pending++;
				charge(bus, m);
				return 0;
			}
			rc = -EINVAL;
		}
		message_unref(m);
		return rc;
	}
	}
	return -EINVAL;
}

/* ---------- commit, space, compaction ---------- */

static int compact_locked(struct bus *bus);

bool bus_space_for(struct bus *bus, uint64_t need)
{
	uint64_t max = bus->cfg.store_max_bytes;
	need += store_reserved(bus->store);
	if (store_bytes(bus->store) + need <= max)
		return true;
	/* Acked messages still take journal space; a snapshot may give it back. */
	if (store_journal_bytes(bus->store) > bus->compacted_at + 4096) {
		compact_locked(bus);
		bus->compacted_at = store_journal_bytes(bus->store);
	}
	return store_bytes(bus->store) + need <= max;
}

int bus_space_reserve(struct bus *bus, uint64_t *held, uint64_t want, struct bus_error *err)
{
	if (want <= *held)
		return 0;
	uint64_t more = want - *held;
	if (!bus_space_for(bus, more))
		return bus_fail(err, ENOSPC, "the store is full (--store-max-bytes %" PRIu64 ")",
				bus->cfg.store_max_bytes);
	int rc = store_reserve(bus->store, more);
	if (rc < 0)
		return bus_fail(err, -rc, "no space on the store's filesystem for %" PRIu64
				" bytes: %s", more, strerror(-rc));
	*held = want;
	return 0;
}

void bus_space_release(struct bus *bus, uint64_t *held)
{
	store_release(bus->store, *held);
	*held = 0;
}

int bus_commit(struct bus *bus, struct bus_error *err)
{
	if (!buf_ok(&bus->rec))
		return bus_fail(err, ENOMEM, "out of memory building a store record");
	const uint8_t *rec = (const uint8_t *)bus->rec.data;
	size_t len = bus->rec.len;
	int rc = prepare_messages(bus, rec, len);
	if (rc < 0) {
		prepared_clear(bus);
		return rc == -ENOMEM ? bus_fail(err, ENOMEM, "out of memory for the change")
				     : bus_fail(err, EIO, "internal error: a malformed record");
	}
	rc = store_append(bus->store, rec, len);
	if (rc < 0) {
		prepared_clear(bus);
		if (rc == -ENOSPC)
			return bus_fail(err, ENOSPC, "no space left on the store's filesystem");
		return bus_fail(err, EIO, "the store could not record the change: %s",
				strerror(-rc));
	}
	rc = apply_record(bus, rec, len, false);
	prepared_clear(bus);
	if (rc < 0) {
		/* Not applied (only a record kind whose apply still allocates can get here, and
		 * its apply changes nothing when it fails): take it back out of the journal, so
		 * a restart does not see a change the caller was told failed. */
		int cut = store_unappend(bus->store, len);
		if (rc == -ENOMEM && cut == 0)
			return bus_fail(err, ENOMEM, "out of memory applying the change");
		return bus_fail(err, EIO, "internal error applying a committed record");
	}
	/* Reclaim journal space before it takes a large share of --store-max-bytes. */
	uint64_t journal = store_journal_bytes(bus->store);
	uint64_t snap = store_snapshot_bytes(bus->store);
	uint64_t big = bus->cfg.store_max_bytes / 4 < (64u << 20) ? bus->cfg.store_max_bytes / 4
								 : (64u << 20);
	if (journal > big && journal > 2 * snap)
		compact_locked(bus);
	return 0;
}

static int cmp_msg_number(const void *a, const void *b)
{
	const struct bus_message *x = *(struct bus_message *const *)a;
	const struct bus_message *y = *(struct bus_message *const *)b;
	return x->number < y->number ? -1 : x->number > y->number;
}

static int snap_add(struct bus *bus, struct buf *b)
{
	int rc = buf_ok(b) ? store_snapshot_add(bus->store, b->data, b->len) : -ENOMEM;
	buf_reset(b);
	return rc;
}

/* Writes the live state as a snapshot; the journal then restarts empty. */
static int compact_locked(struct bus *bus)
{
	struct buf b;
	buf_init(&b);
	struct bus_message **msgs = NULL;
	size_t nmsgs = 0, cap = 0;
	int rc = store_snapshot_begin(bus->store);
	if (rc < 0)
		return rc;

	buf_put_u8(&b, REC_SNAP_HEAD);
	buf_put_u64(&b, bus->counter);
	buf_put_u64(&b, bus->delivered_total);
	buf_put_u64(&b, bus->rejected_total);
	rc = snap_add(bus, &b);
	for (uint32_t code = 0; code < BUS_ERRNO_MAX && rc == 0; code++) {
		if (!bus->rejected_by[code])
			continue;
		buf_put_u8(&b, REC_SNAP_REJECT);
		buf_put_u32(&b, code);
		buf_put_u64(&b, bus->rejected_by[code]);
		rc = snap_add(bus, &b);
	}
	strmap_foreach(&bus->seqs, s) {
		if (rc < 0)
			break;
		buf_put_u8(&b, REC_SNAP_SEQ);
		buf_put_str(&b, s->key);
		buf_put_u64(&b, s->value);
		rc = snap_add(bus, &b);
	}
	for (size_t k = 0; k < bus->nagents && rc == 0; k++) {
		struct agent *a = bus->by_id[k];
		buf_put_u8(&b, REC_AGENT_ADD);
		buf_put_str(&b, a->name);
		buf_put_u32(&b, (uint32_t)a->uid);
		buf_put_u32(&b, (uint32_t)a->gid);
		buf_put_u64(&b, (uint64_t)a->created_us);
		buf_put_u8(&b, a->draining);
		buf_put_u64(&b, a->delivered_total);
		buf_put_u64(&b, a->acked_total);
		rc = snap_add(bus, &b);
		if (rc == 0 && (a->health || a->last_seen_us)) {
			bus_put_health(&b, a);
			rc = snap_add(bus, &b);
		}
		size_t need = nmsgs + a->inbox.live + a->outbox.count;
		if (need > cap) {
			cap = need * 2;
			struct bus_message **p = realloc(msgs, cap * sizeof *p);
			if (!p) {
				rc = -ENOMEM;
				break;
			}
			msgs = p;
		}
		for (size_t i = a->inbox.head; i < a->inbox.tail; i++)
			if (a->inbox.msgs[i])
				msgs[nmsgs++] = a->inbox.msgs[i];
		for (size_t i = 0; i < a->outbox.count; i++)
			msgs[nmsgs++] = outbox_at(&a->outbox, i);
	}
	alerts_snapshot(bus, snap_add, &b, &rc);
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
			where |= 1;
		if (from && from->outbox.count) {
			size_t k = outbox_search(&from->outbox, m->number - 1);
			if (k < from->outbox.count && outbox_at(&from->outbox, k) == m)
				where |= 2;
		}
		buf_put_u8(&b, REC_SNAP_MSG);
		buf_put_u8(&b, where);
		message_encode_again(&b, m);
		rc = snap_add(bus, &b);
	}
	free(msgs);
	buf_free(&b);
	if (rc < 0) {
		store_snapshot_abort(bus->store);
		return rc;
	}
	return store_snapshot_commit(bus->store);
}

int bus_compact(struct bus *bus)
{
	bus_lock(bus);
	int rc = compact_locked(bus);
	bus_unlock_and_wake(bus);
	return rc;
}

/* ---------- life cycle ---------- */

static struct bus *bus_alloc(const struct bus_config *cfg)
{
	struct bus *bus = calloc(1, sizeof *bus);
	if (!bus)
		return NULL;
	pthread_mutex_init(&bus->lock, NULL);
	bus->cfg = *cfg;
	if (!bus->cfg.inbox_capacity)
		bus->cfg.inbox_capacity = 1000;
	if (!bus->cfg.max_message_size)
		bus->cfg.max_message_size = 1u << 20;
	if (!(bus->cfg.health_ttl_s > 0))
		bus->cfg.health_ttl_s = 30;
	if (!(bus->cfg.summary_window_s > 0))
		bus->cfg.summary_window_s = 60;
	if (!(bus->cfg.metrics_retention_s > 0))
		bus->cfg.metrics_retention_s = 3600;
	if (!(bus->cfg.alert_interval_s > 0))
		bus->cfg.alert_interval_s = 5;
	if (!bus->cfg.max_agents_per_uid)
		bus->cfg.max_agents_per_uid = 1000;
	if (!bus->cfg.max_drafts_per_sender)
		bus->cfg.max_drafts_per_sender = 64;
	if (!bus->cfg.max_series)
		bus->cfg.max_series = METRICS_MAX_SERIES;
	bus->server_uid = getuid();
	quota_init(&bus->quota);
	bus->next_id = 1;
	bus->started = bus_clock_monotonic();
	strmap_init(&bus->seqs);
	errlog_init(&bus->errors, BUS_ERRORS_KEEP);
	errlog_limit(&bus->errors, BUS_ERRORS_KEEP_PER_UID, BUS_ERRORS_PER_SECOND, bus->server_uid);
	buf_init(&bus->rec);
	rule_set_init(&bus->alerts.user);
	return bus;
}

static void bus_free(struct bus *bus)
{
	for (size_t i = 0; i < bus->nagents; i++)
		agent_free(bus->by_id[i]);
	free(bus->by_id);
	msgindex_free(&bus->messages);
	free(bus->by_name);
	strmap_free(&bus->seqs);
	errlog_free(&bus->errors);
	quota_free(&bus->quota);
	buf_free(&bus->rec);
	if (bus->metrics.log)
		metrics_close(&bus->metrics);
	alerts_close(bus);
	free(bus->wake_ids);
	store_close(bus->store);
	pthread_mutex_destroy(&bus->lock);
	free(bus);
}

int bus_open(const struct bus_config *cfg, struct bus **out, struct bus_error *err)
{
	struct bus *bus = bus_alloc(cfg);
	if (!bus)
		return bus_fail(err, ENOMEM, "out of memory");
	int rc = store_open(cfg->store_dir, false, &bus->store, err);
	if (rc == 0)
		rc = store_load(bus->store, apply_record, bus, NULL, err);
	if (rc < 0) {
		bus_free(bus);
		return rc;
	}
	wake_flags_clear(bus);
	bus->wake_n = 0;
	if (!bus->cfg.store_max_bytes)
		bus->cfg.store_max_bytes = store_fs_free(bus->store) / 2;
	if (!bus->cfg.max_bytes_per_uid)
		bus->cfg.max_bytes_per_uid = bus->cfg.store_max_bytes / 4;
	rc = metrics_open(&bus->metrics, cfg->store_dir, bus->cfg.summary_window_s,
			  bus->cfg.metrics_retention_s, bus->cfg.store_max_bytes, bus->cfg.max_series,
			  bus_clock_now_us(), err);
	if (rc == 0)
		rc = alerts_open(bus, err);
	if (rc < 0) {
		bus_free(bus);
		return rc;
	}
	bus->compacted_at = store_journal_bytes(bus->store);
	*out = bus;
	return 0;
}

void bus_close(struct bus *bus)
{
	if (!bus)
		return;
	bus_lock(bus);
	compact_locked(bus);
	pthread_mutex_unlock(&bus->lock);
	bus_free(bus);
}

void bus_set_wake(struct bus *bus, bus_wake_fn fn, void *ctx)
{
	bus_lock(bus);
	bus->wake = fn;
	bus->wake_ctx = ctx;
	pthread_mutex_unlock(&bus->lock);
}

void bus_write_pid(struct bus *bus) { store_write_pid(bus->store); }

const struct bus_config *bus_config(const struct bus *bus) { return &bus->cfg; }

uint64_t bus_version(struct bus *bus)
{
	bus_lock(bus);
	uint64_t v = bus->version;
	pthread_mutex_unlock(&bus->lock);
	return v;
}

void bus_stats(struct bus *bus, struct bus_stats *out)
{
	bus_lock(bus);
	out->uptime_s = bus_clock_monotonic() - bus->started;
	out->agents = (uint32_t)bus->nagents;
	out->pending = bus->pending;
	out->delivered_total = bus->delivered_total;
	out->rejected_total = bus->rejected_total;
	out->store_bytes = store_bytes(bus->store);
	out->store_max_bytes = bus->cfg.store_max_bytes;
	out->errors_bytes = bus->errors.text.len;
	pthread_mutex_unlock(&bus->lock);
}

/* ---------- agents: public ---------- */

int bus_agent_create(struct bus *bus, const char *name, uid_t uid, gid_t gid,
		     struct bus_agent_info *out, struct bus_error *err)
{
	if (!bus_name_valid(name)) {
		if (strcmp(name, "all") == 0)
			return bus_fail(err, EINVAL, "'all' is reserved for broadcast");
		return bus_fail(err, EINVAL,
				"bad agent name '%.80s': it must match [A-Za-z][A-Za-z0-9._-]{0,63}",
				name);
	}
	bus_lock(bus);
	int rc = 0;
	const struct quota_uid *q = quota_find(&bus->quota, uid);
	if (bus_find(bus, name)) {
		rc = bus_fail(err, EEXIST, "agent %s already exists", name);
	} else if (bus_quota_applies(bus, uid) && q && q->agents >= bus->cfg.max_agents_per_uid) {
		rc = bus_fail(err, EDQUOT, "uid %u already has %u agents, the most "
			      "--max-agents-per-uid allows", (unsigned)uid, (unsigned)q->agents);
	} else if (!bus_space_for(bus, 256)) {
		rc = bus_fail(err, ENOSPC, "the store is full (--store-max-bytes %" PRIu64 ")",
			      bus->cfg.store_max_bytes);
	} else {
		struct buf *b = &bus->rec;
		buf_reset(b);
		buf_put_u8(b, REC_AGENT_ADD);
		buf_put_str(b, name);
		buf_put_u32(b, (uint32_t)uid);
		buf_put_u32(b, (uint32_t)gid);
		buf_put_u64(b, (uint64_t)bus_clock_now_us());
		buf_put_u8(b, 0);
		buf_put_u64(b, 0);
		buf_put_u64(b, 0);
		rc = bus_commit(bus, err);
		if (rc == 0 && out)
			agent_info(bus_find(bus, name), out);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

int bus_agent_remove(struct bus *bus, const char *name, uid_t uid, struct bus_error *err)
{
	bus_lock(bus);
	struct agent *a = bus_find(bus, name);
	int rc = 0;
	if (!a)
		rc = bus_fail(err, ENOENT, "no agent named %.80s", name);
	else if (!bus_may_act_as(a, uid))
		rc = bus_fail(err, EACCES, "agent %s belongs to uid %u", name, (unsigned)a->uid);
	else if (a->inbox.live)
		rc = bus_fail(err, ENOTEMPTY, "the inbox of %s holds %zu message(s)", name,
			      a->inbox.live);
	else if (a->reserved)
		rc = bus_fail(err, EBUSY, "%u message(s) to %s are being written", a->reserved, name);
	else {
		buf_reset(&bus->rec);
		buf_put_u8(&bus->rec, REC_AGENT_DEL);
		buf_put_str(&bus->rec, name);
		rc = bus_commit(bus, err);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

int bus_agent_by_name(struct bus *bus, const char *name, struct bus_agent_info *out)
{
	bus_lock(bus);
	struct agent *a = bus_find(bus, name);
	if (a)
		agent_info(a, out);
	pthread_mutex_unlock(&bus->lock);
	return a ? 0 : -ENOENT;
}

int bus_agent_by_id(struct bus *bus, uint64_t id, struct bus_agent_info *out)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, id);
	if (a)
		agent_info(a, out);
	pthread_mutex_unlock(&bus->lock);
	return a ? 0 : -ENOENT;
}

void bus_agent_list(struct bus *bus, uint64_t after_id,
		    int (*fn)(void *ctx, const struct bus_agent_info *a), void *ctx)
{
	struct bus_agent_info info;
	bus_lock(bus);
	for (size_t i = bus_id_index(bus, after_id + 1); i < bus->nagents; i++) {
		agent_info(bus->by_id[i], &info);
		if (fn(ctx, &info))
			break;
	}
	pthread_mutex_unlock(&bus->lock);
}

/* ---------- views ---------- */

uint64_t bus_message_holder(struct bus *bus, uint64_t number, bool inbox)
{
	bus_lock(bus);
	struct bus_message *m = msgindex_get(&bus->messages, number);
	struct agent *a = NULL;
	if (m && (inbox ? m->in_inbox : m->in_outbox))
		a = bus_find(bus, inbox ? m->to : m->from);
	uint64_t id = a ? a->id : 0;
	pthread_mutex_unlock(&bus->lock);
	return id;
}

struct bus_message *bus_inbox_get(struct bus *bus, uint64_t agent_id, uint64_t number)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	struct bus_message *m = a ? inbox_find(&a->inbox, number) : NULL;
	if (m)
		message_ref(m);
	pthread_mutex_unlock(&bus->lock);
	return m;
}

struct bus_message *bus_outbox_get(struct bus *bus, uint64_t agent_id, uint64_t number)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	struct bus_message *m = NULL;
	if (a && a->outbox.count && number) {
		size_t k = outbox_search(&a->outbox, number - 1);
		if (k < a->outbox.count && outbox_at(&a->outbox, k)->number == number) {
			m = outbox_at(&a->outbox, k);
			message_ref(m);
		}
	}
	pthread_mutex_unlock(&bus->lock);
	return m;
}

void bus_inbox_list(struct bus *bus, uint64_t agent_id, uint64_t after_number,
		    int (*fn)(void *ctx, const struct bus_message *m), void *ctx)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	if (a) {
		for (size_t i = inbox_search(&a->inbox, after_number + 1); i < a->inbox.tail; i++)
			if (a->inbox.msgs[i] && fn(ctx, a->inbox.msgs[i]))
				break;
	}
	pthread_mutex_unlock(&bus->lock);
}

void bus_outbox_list(struct bus *bus, uint64_t agent_id, uint64_t after_number,
		     int (*fn)(void *ctx, const struct bus_message *m), void *ctx)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	if (a) {
		for (size_t i = outbox_search(&a->outbox, after_number); i < a->outbox.count; i++)
			if (fn(ctx, outbox_at(&a->outbox, i)))
				break;
	}
	pthread_mutex_unlock(&bus->lock);
}

int bus_next_peek(struct bus *bus, uint64_t agent_id, struct bus_message **out, bool *draining)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	int rc = -ENOENT;
	*out = NULL;
	if (a) {
		struct bus_message *m = inbox_oldest(&a->inbox);
		*draining = a->draining;
		if (m) {
			message_ref(m);
			*out = m;
			rc = 0;
		} else {
			rc = -EAGAIN;
		}
	}
	pthread_mutex_unlock(&bus->lock);
	return rc;
}

/* ---------- errors ---------- */

void bus_log_error(struct bus *bus, const char *agent, const char *op, const char *path,
		   uid_t uid, const struct bus_error *err)
{
	char ts[BUS_TIME_LEN + 1];
	struct buf line;
	buf_init(&line);
	int64_t now = bus_clock_now_us();
	bus_time_format(now, ts);
	buf_printf(&line, "{\"timestamp\":\"%s\",\"op\":\"%s\",\"path\":", ts, op);
	json_append_string(&line, path, strlen(path));
	if (agent)
		buf_printf(&line, ",\"agent\":\"%s\"", agent);
	buf_printf(&line, ",\"uid\":%u,\"errno\":\"%s\",\"reason\":", (unsigned)uid,
		   bus_errno_name(err->code));
	json_append_string(&line, err->reason, strlen(err->reason));
	buf_puts(&line, "}\n");
	if (buf_ok(&line)) {
		bus_lock(bus);
		/* The counters are journalled so they survive a crash; the log lines are not. */
		buf_reset(&bus->rec);
		buf_put_u8(&bus->rec, REC_REJECT);
		buf_put_u32(&bus->rec, (uint32_t)err->code);
		if (bus_commit(bus, NULL) < 0) {
			bus->rejected_total++;
			bus->rejected_by[(unsigned)err->code < BUS_ERRNO_MAX ? err->code : 0]++;
		}
		errlog_add_by(&bus->errors, uid, now, line.data, line.len);
		struct agent *a = agent ? bus_find(bus, agent) : NULL;
		if (a)
			errlog_add(&a->errors, line.data, line.len);
		pthread_mutex_unlock(&bus->lock);
	}
	buf_free(&line);
}

size_t bus_errors_read(struct bus *bus, uint64_t agent_id, size_t off, size_t size,
		       struct buf *out)
{
	bus_lock(bus);
	struct agent *a = agent_id ? bus_find_id(bus, agent_id) : NULL;
	size_t n = 0;
	if (!agent_id) {
		errlog_flush(&bus->errors, bus_clock_now_us());
		n = errlog_read(&bus->errors, off, size, out);
	}
	else if (a)
		n = errlog_read(&a->errors, off, size, out);
	pthread_mutex_unlock(&bus->lock);
	return n;
}

size_t bus_errors_size(struct bus *bus, uint64_t agent_id)
{
	bus_lock(bus);
	struct agent *a = agent_id ? bus_find_id(bus, agent_id) : NULL;
	if (!agent_id)
		errlog_flush(&bus->errors, bus_clock_now_us());
	size_t n = agent_id ? (a ? a->errors.text.len : 0) : bus->errors.text.len;
	pthread_mutex_unlock(&bus->lock);
	return n;
}

/* ---------- offline check ---------- */

/* Files a store holds; anything else in it was put there by someone else. */
static int check_stray(const char *dir, struct buf *report)
{
	static const char *const known[] = {
		"lock", "format", "journal", "snapshot", "journal.tmp", "snapshot.tmp", "metrics",
		"alerts", ".", "..",
	};
	DIR *d = opendir(dir);
	int problems = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		bool ok = false;
		for (size_t i = 0; i < sizeof known / sizeof known[0] && !ok; i++)
			ok = strcmp(e->d_name, known[i]) == 0;
		if (!ok && strncmp(e->d_name, "damaged-", 8) == 0) {
			buf_printf(report, "note: %s/%s holds files a salvage replaced\n", dir,
				   e->d_name);
			ok = true;
		}
		if (!ok) {
			buf_printf(report, "FAIL: %s/%s is not a store file\n", dir, e->d_name);
			problems++;
		}
	}
	if (d)
		closedir(d);
	return problems;
}

struct log_check {
	uint64_t lines, bad, first_bad;
};

static int check_line(void *ctx, uint64_t off, const char *line, size_t len)
{
	struct log_check *c = ctx;
	c->lines++;
	if (!json_is_value(line, len) || len == 0 || line[0] != '{') {
		if (!c->bad++)
			c->first_bad = off;
	}
	return 0;
}

/* A points or alerts log: contiguous segments of whole JSON lines. */
static int check_log(const char *dir, const char *sub, const char *prefix, struct buf *report)
{
	char path[4200];
	struct stat st;
	snprintf(path, sizeof path, "%s/%s", dir, sub);
	if (lstat(path, &st) < 0)
		return 0;
	struct seglog_config cfg = {.dir = path, .prefix = prefix, .readonly = true};
	struct seglog *l = NULL;
	struct bus_error err = {0};
	if (!S_ISDIR(st.st_mode) || seglog_open(&cfg, 0, &l, &err) < 0) {
		buf_printf(report, "FAIL: %s: %s\n", path, err.reason[0] ? err.reason
							       : "not a directory");
		return 1;
	}
	struct log_check c = {0};
	seglog_scan(l, check_line, &c);
	buf_printf(report, "%s: %" PRIu64 " line(s) in %zu segment(s), offsets %" PRIu64 "..%" PRIu64
		   "\n", path, c.lines, seglog_segments(l), seglog_start(l), seglog_end(l));
	seglog_close(l);
	if (c.bad)
		buf_printf(report, "FAIL: %s: %" PRIu64 " line(s) are not JSON objects, the first at "
			   "offset %" PRIu64 "\n", path, c.bad, c.first_bad);
	return c.bad ? 1 : 0;
}

int bus_check_store(const char *dir, struct buf *report)
{
	struct bus_config cfg = {.store_dir = dir};
	struct bus *bus = bus_alloc(&cfg);
	struct bus_error err = {0};
	struct store_load_report rep;
	if (!bus)
		return -ENOMEM;
	int rc = store_open(dir, true, &bus->store, &err);
	if (rc == 0)
		rc = store_load(bus->store, apply_record, bus, &rep, &err);
	if (rc < 0) {
		buf_printf(report, "FAIL: %s\n", err.reason);
		bus_free(bus);
		return rc;
	}
	int problems = 0;
	buf_printf(report, "store %s (id %08x): %" PRIu64 " snapshot record(s), %" PRIu64
		   " journal record(s)%s\n", dir, store_id(bus->store), rep.snapshot_records,
		   rep.journal_records, rep.journal_ignored ? " (journal covered by snapshot)" : "");
	if (rep.torn_bytes)
		buf_printf(report, "note: %" PRIu64 " byte(s) of a torn final record will be cut at "
			   "the next start\n", rep.torn_bytes);
	/* Every pending message: number within the counter, sequence within its pair. */
	for (size_t k = 0; k < bus->nagents; k++) {
		struct agent *a = bus->by_id[k];
		uint64_t last = 0;
		for (size_t i = a->inbox.head; i < a->inbox.tail; i++) {
			struct bus_message *m = a->inbox.msgs[i];
			if (!m)
				continue;
			if (m->number > bus->counter || m->number <= last) {
				buf_printf(report, "FAIL: %s: message %" PRIu64 " out of order or beyond "
					   "the counter %" PRIu64 "\n", a->name, m->number, bus->counter);
				problems++;
			}
			if (m->sequence == 0 || m->sequence > bus_pair_sequence(bus, m->from, m->to)) {
				buf_printf(report, "FAIL: %s: message %" PRIu64 " has sequence %" PRIu64
					   " beyond its pair's\n", a->name, m->number, m->sequence);
				problems++;
			}
			if (message_id_number(m->msg_id) != m->number || m->len == 0 ||
			    m->envelope[m->len - 1] != '\n' ||
			    !json_is_value(m->envelope, m->len - 1) || strcmp(m->to, a->name) != 0) {
				buf_printf(report, "FAIL: %s: message %" PRIu64 " is malformed\n",
					   a->name, m->number);
				problems++;
			}
			last = m->number;
		}
	}
	buf_printf(report, "%zu agent(s), %" PRIu64 " pending message(s), counter %" PRIu64
		   ", %zu sender/recipient pair(s)\n", bus->nagents, bus->pending, bus->counter,
		   bus->seqs.count);
	problems += check_stray(dir, report);
	problems += check_log(dir, "metrics", "points", report);
	problems += check_log(dir, "alerts", "alerts", report);
	buf_printf(report, problems ? "FAIL: %d problem(s)\n" : "OK\n", problems);
	bus_free(bus);
	return problems ? -EIO : 0;
}

/* ---------- salvage ---------- */

static int salvage_damaged(const char *dir, struct buf *report)
{
	struct bus_config cfg = {.store_dir = dir};
	struct bus *bus = bus_alloc(&cfg);
	struct bus_error err = {0};
	struct store_salvage_report rep;
	if (!bus)
		return -ENOMEM;
	int rc = store_open(dir, false, &bus->store, &err);
	if (rc == 0)
		rc = store_salvage(bus->store, apply_record, bus, &rep, report, &err);
	if (rc < 0) {
		buf_printf(report, "FAIL: %s\n", err.reason);
	} else {
		buf_printf(report, "salvaged %s: kept %" PRIu64 " snapshot and %" PRIu64 " journal "
			   "record(s); lost %" PRIu64 " record(s) that do not apply and %" PRIu64
			   " unreadable byte(s); the damaged files are in %s/%s\n", dir,
			   rep.snapshot_kept, rep.journal_kept, rep.dropped_records, rep.lost_bytes,
			   dir, rep.moved_to);
	}
	bus_free(bus);
	return rc;
}

/* Opens and loads dir into a fresh bus and frees it: 0, or the load's error in err. */
static int try_load(const char *dir, struct bus_error *err)
{
	struct bus_config cfg = {.store_dir = dir};
	struct bus *bus = bus_alloc(&cfg);
	if (!bus)
		return bus_fail(err, ENOMEM, "out of memory");
	int rc = store_open(dir, false, &bus->store, err);
	if (rc == 0)
		rc = store_load(bus->store, apply_record, bus, NULL, err);
	bus_free(bus); /* releases the lock before a salvage takes it again */
	return rc;
}

/* A record refused half-way can leave part of its change in the bus the salvage
 * applies to, so a later record that applied there may not apply without it: the
 * rebuilt store is loaded again, and salvaged again until it loads (each pass drops
 * at least one record). */
int bus_salvage_store(const char *dir, struct buf *report)
{
	struct bus_error err = {0};
	int rc = try_load(dir, &err);
	if (rc == 0) {
		buf_printf(report, "store %s is not damaged; nothing to salvage\n", dir);
		return 0;
	}
	for (int pass = 0; pass < 64; pass++) {
		if (rc != -EBADMSG && rc != -EMEDIUMTYPE) {
			buf_printf(report, "FAIL: %s\n", err.reason);
			return rc;
		}
		buf_printf(report, "damaged: %s\n", err.reason);
		rc = salvage_damaged(dir, report);
		if (rc < 0)
			return rc;
		err = (struct bus_error){0};
		rc = try_load(dir, &err);
		if (rc == 0)
			return 0;
	}
	buf_printf(report, "FAIL: %s still does not load: %s\n", dir, err.reason);
	return -EBADMSG;
}
