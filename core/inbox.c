/* inbox.c — where messages are kept: inboxes, outbox rings, the number index, and
 * the views the FUSE layer lists and reads (inbox/, outbox/, next).
 *
 * An inbox is an array sorted by delivery number with holes where messages left;
 * the same structure keeps an agent's leased (inflight/) and dead (dead/) messages.
 * A message is in the bus's number index while any of those places holds it. Every
 * place holds one reference to the message. Under the bus lock. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"

int inbox_depth(const struct agent *a) { return (int)a->inbox.live; }

size_t inbox_search(const struct inbox *in, uint64_t number)
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
int inbox_reserve(struct inbox *in, size_t more)
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

int inbox_add(struct inbox *in, struct bus_message *m)
{
	if (in->tail - in->head > 2 * in->live + 32 || (in->tail == in->cap && in->head > 0))
		inbox_compact(in);
	if (inbox_reserve(in, 1) < 0)
		return -ENOMEM;
	/* Numbers arrive in increasing order; keep the array sorted if one does not. */
	size_t at = in->tail;
	if (at > in->head && in->nums[at - 1] >= m->number) {
		at = inbox_search(in, m->number);
		if (at < in->tail && in->nums[at] == m->number) {
			/* The hole it left when it was taken out (a lease that ended). */
			if (in->msgs[at])
				return -EEXIST;
			in->msgs[at] = m;
			in->live++;
			return 0;
		}
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
struct bus_message *inbox_take(struct inbox *in, uint64_t number)
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

struct bus_message *inbox_oldest(const struct inbox *in)
{
	for (size_t i = in->head; i < in->tail; i++)
		if (in->msgs[i])
			return in->msgs[i];
	return NULL;
}

void inbox_free(struct inbox *in)
{
	for (size_t i = in->head; i < in->tail; i++)
		message_unref(in->msgs[i]);
	free(in->nums);
	free(in->msgs);
	memset(in, 0, sizeof *in);
}

struct bus_message *outbox_at(const struct outbox *o, size_t i)
{
	return o->ring[(o->start + i) % BUS_OUTBOX_KEEP];
}

/* Adds a reference to m; a full ring hands its oldest message (and the reference to
 * it) to *evicted. */
int outbox_reserve(struct outbox *o)
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
size_t outbox_search(const struct outbox *o, uint64_t after)
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

void outbox_free(struct outbox *o)
{
	for (size_t i = 0; i < o->count; i++)
		message_unref(outbox_at(o, i));
	free(o->ring);
	memset(o, 0, sizeof *o);
}

/* ---------- the number index: a message is in it while any place holds it ---------- */

static bool held(const struct bus_message *m)
{
	return m->in_inbox || m->in_outbox || m->in_inflight || m->in_dead;
}

static int index_enter(struct bus *bus, struct bus_message *m)
{
	return held(m) ? 0 : msgindex_put(&bus->messages, m);
}

static void index_leave(struct bus *bus, struct bus_message *m)
{
	if (!held(m))
		msgindex_remove(&bus->messages, m->number);
}

struct inbox *agent_place(struct agent *a, enum bus_place p)
{
	return p == BUS_INFLIGHT ? &a->inflight : p == BUS_DEAD ? &a->dead : &a->inbox;
}

static bool *place_flag(struct bus_message *m, enum bus_place p)
{
	return p == BUS_INFLIGHT ? &m->in_inflight : p == BUS_DEAD ? &m->in_dead : &m->in_inbox;
}

/* Puts m in one of the agent's sorted places, handing it the caller's reference. A
 * message moving between places is put in the new one before it is taken from the
 * old, so it never leaves the number index on the way. */
int place_put(struct bus *bus, struct agent *a, enum bus_place p, struct bus_message *m)
{
	int rc = index_enter(bus, m);
	if (rc == 0 && (rc = inbox_add(agent_place(a, p), m)) < 0)
		index_leave(bus, m);
	if (rc == 0)
		*place_flag(m, p) = true;
	return rc;
}

/* Takes the message out of the place; the caller owns that place's reference. */
struct bus_message *place_take(struct bus *bus, struct agent *a, enum bus_place p,
			       uint64_t number)
{
	struct bus_message *m = inbox_take(agent_place(a, p), number);
	if (m) {
		*place_flag(m, p) = false;
		index_leave(bus, m);
	}
	return m;
}

int inbox_put(struct bus *bus, struct agent *to, struct bus_message *m)
{
	return place_put(bus, to, BUS_INBOX, m);
}

struct bus_message *inbox_remove(struct bus *bus, struct agent *a, uint64_t number)
{
	return place_take(bus, a, BUS_INBOX, number);
}

void outbox_put(struct bus *bus, struct agent *from, struct bus_message *m)
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

/* Drops from one outbox the copies of messages no other place holds; the bytes they
 * took (as messages_part counts them). */
static uint64_t outbox_drop_consumed(struct bus *bus, struct outbox *o)
{
	uint64_t freed = 0;
	size_t kept = 0;
	for (size_t i = 0; i < o->count; i++) {
		struct bus_message *m = outbox_at(o, i);
		if (m->in_inbox || m->in_inflight || m->in_dead) {
			o->ring[(o->start + kept++) % BUS_OUTBOX_KEEP] = m;
			continue;
		}
		m->in_outbox = false;
		index_leave(bus, m);
		freed += m->len + 128;
		message_unref(m);
	}
	for (size_t i = kept; i < o->count; i++)
		o->ring[(o->start + i) % BUS_OUTBOX_KEEP] = NULL;
	o->count = kept;
	return freed;
}

uint64_t outbox_trim(struct bus *bus)
{
	uint64_t freed = 0;
	for (size_t i = 0; i < bus->nagents; i++)
		freed += outbox_drop_consumed(bus, &bus->by_id[i]->outbox);
	for (size_t i = 0; i < bus->ngateways; i++)
		freed += outbox_drop_consumed(bus, &bus->gateways[i]->outbox);
	return freed;
}

/* Before an agent goes: its messages leave the index (agent_free drops them). */
void agent_forget_messages(struct bus *bus, struct agent *a)
{
	static const enum bus_place places[] = {BUS_INBOX, BUS_INFLIGHT, BUS_DEAD};
	for (size_t k = 0; k < 3; k++) {
		struct inbox *in = agent_place(a, places[k]);
		for (size_t i = in->head; i < in->tail; i++) {
			struct bus_message *m = in->msgs[i];
			if (m) {
				*place_flag(m, places[k]) = false;
				index_leave(bus, m);
			}
		}
	}
	for (size_t i = 0; i < a->outbox.count; i++) {
		struct bus_message *m = outbox_at(&a->outbox, i);
		m->in_outbox = false;
		index_leave(bus, m);
	}
}


/* ---------- views ---------- */

uint64_t bus_message_holder(struct bus *bus, uint64_t number, enum bus_place place)
{
	bus_lock(bus);
	struct bus_message *m = msgindex_get(&bus->messages, number);
	struct agent *a = NULL;
	if (m && (place == BUS_OUTBOX ? m->in_outbox : *place_flag(m, place)))
		a = bus_find(bus, place == BUS_OUTBOX ? m->from : m->to);
	uint64_t id = a ? a->id : 0;
	pthread_mutex_unlock(&bus->lock);
	return id;
}

static struct bus_message *place_find(struct agent *a, enum bus_place place, uint64_t number)
{
	if (place != BUS_OUTBOX)
		return inbox_find(agent_place(a, place), number);
	if (!a->outbox.count || !number)
		return NULL;
	size_t k = outbox_search(&a->outbox, number - 1);
	return k < a->outbox.count && outbox_at(&a->outbox, k)->number == number
		       ? outbox_at(&a->outbox, k) : NULL;
}

struct bus_message *bus_place_get(struct bus *bus, uint64_t agent_id, enum bus_place place,
				  uint64_t number)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	struct bus_message *m = a ? place_find(a, place, number) : NULL;
	if (m)
		message_ref(m);
	pthread_mutex_unlock(&bus->lock);
	return m;
}

struct bus_message *bus_inbox_get(struct bus *bus, uint64_t agent_id, uint64_t number)
{
	return bus_place_get(bus, agent_id, BUS_INBOX, number);
}

struct bus_message *bus_outbox_get(struct bus *bus, uint64_t agent_id, uint64_t number)
{
	return bus_place_get(bus, agent_id, BUS_OUTBOX, number);
}

void bus_place_list(struct bus *bus, uint64_t agent_id, enum bus_place place,
		    uint64_t after_number, int (*fn)(void *ctx, const struct bus_message *m),
		    void *ctx)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	if (a && place == BUS_OUTBOX) {
		for (size_t i = outbox_search(&a->outbox, after_number); i < a->outbox.count; i++)
			if (fn(ctx, outbox_at(&a->outbox, i)))
				break;
	} else if (a) {
		const struct inbox *in = agent_place(a, place);
		for (size_t i = inbox_search(in, after_number + 1); i < in->tail; i++)
			if (in->msgs[i] && fn(ctx, in->msgs[i]))
				break;
	}
	pthread_mutex_unlock(&bus->lock);
}

void bus_inbox_list(struct bus *bus, uint64_t agent_id, uint64_t after_number,
		    int (*fn)(void *ctx, const struct bus_message *m), void *ctx)
{
	bus_place_list(bus, agent_id, BUS_INBOX, after_number, fn, ctx);
}

void bus_outbox_list(struct bus *bus, uint64_t agent_id, uint64_t after_number,
		     int (*fn)(void *ctx, const struct bus_message *m), void *ctx)
{
	bus_place_list(bus, agent_id, BUS_OUTBOX, after_number, fn, ctx);
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

