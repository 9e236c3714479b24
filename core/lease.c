/* lease.c — work that survives its worker (SPEC §10): claims and their leases, ack,
 * extend and nak by fencing token, expiry and redelivery, dead letters and retry,
 * and the timers the ticker runs them by.
 *
 * A claim moves the oldest claimable message from the inbox to inflight/ under a new
 * token (a store-wide counter that only grows: the fencing token) and a deadline. A
 * lease ends by an ack (the message is consumed), a nak or its deadline passing (the
 * message goes back to its place in the inbox, or to dead/ once it has been leased
 * --max-deliver times). Every one of these steps is one journal record, and the
 * decision (redeliver or dead, and which dead letter a full dead/ pushes out) is
 * taken before the record is written, so a restart replays exactly what happened,
 * whatever the options are then.
 *
 * The one thing to know: timers are hints. Each deadline, nak delay and ttl adds an
 * entry to a min-heap; when an entry comes due, the message's own state decides
 * whether it still applies (an extended lease has a later deadline, an acked message
 * is gone). So nothing is ever scanned per tick: a tick pops what is due and stops.
 * Under the bus lock, like all state. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"
#include "busfs/clock.h"

#define MAX_SECONDS BUS_MAX_SECONDS

/* ---------- timers: a binary min-heap on `when` ---------- */

static bool timer_before(const struct timer *a, const struct timer *b) { return a->when < b->when; }

void timer_add(struct bus *bus, int64_t when, uint64_t number, uint64_t token,
	       enum timer_kind kind)
{
	if (bus->ntimers == bus->timers_cap) {
		size_t cap = bus->timers_cap ? bus->timers_cap * 2 : 64;
		struct timer *v = realloc(bus->timers, cap * sizeof *v);
		if (!v) {
			bus->timers_lost = true; /* the next tick rebuilds them from the state */
			return;
		}
		bus->timers = v;
		bus->timers_cap = cap;
	}
	size_t i = bus->ntimers++;
	struct timer t = {when, number, token, (uint8_t)kind};
	while (i > 0 && timer_before(&t, &bus->timers[(i - 1) / 2])) {
		bus->timers[i] = bus->timers[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	bus->timers[i] = t;
}

static struct timer timer_pop(struct bus *bus)
{
	struct timer top = bus->timers[0];
	struct timer last = bus->timers[--bus->ntimers];
	size_t i = 0, n = bus->ntimers;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && timer_before(&bus->timers[c + 1], &bus->timers[c]))
			c++;
		if (!timer_before(&bus->timers[c], &last))
			break;
		bus->timers[i] = bus->timers[c];
		i = c;
	}
	if (n)
		bus->timers[i] = last;
	return top;
}

void lease_timers_of(struct bus *bus, const struct bus_message *m)
{
	if (m->in_inflight)
		timer_add(bus, m->deadline_us, m->number, m->token, TIMER_LEASE_END);
	if (m->in_inbox && m->ready_us)
		timer_add(bus, m->ready_us, m->number, 0, TIMER_READY);
	if ((m->in_inbox || m->in_inflight) && m->expires_us)
		timer_add(bus, m->expires_us, m->number, 0, TIMER_TTL);
}

/* After a timer was lost for memory: every timer again, from the messages. */
static void timers_rebuild(struct bus *bus)
{
	bus->ntimers = 0;
	bus->timers_lost = false;
	for (size_t k = 0; k < bus->nagents + bus->ngateways; k++) {
		struct agent *a = k < bus->nagents ? bus->by_id[k] : bus->gateways[k - bus->nagents];
		for (enum bus_place p = BUS_INBOX; p <= BUS_INFLIGHT; p++) {
			const struct inbox *in = agent_place(a, p);
			for (size_t i = in->head; i < in->tail; i++)
				if (in->msgs[i])
					lease_timers_of(bus, in->msgs[i]);
		}
	}
}

/* ---------- the lease index: token -> message number ---------- */

static void token_key(char *key, uint64_t token) { snprintf(key, 24, "%" PRIu64, token); }

int lease_index_put(struct bus *bus, uint64_t token, uint64_t number)
{
	char key[24];
	token_key(key, token);
	return strmap_set(&bus->leases, key, number);
}

void lease_forget(struct bus *bus, uint64_t token)
{
	char key[24];
	token_key(key, token);
	strmap_del(&bus->leases, key);
}


/* ---------- records ---------- */

/* Moves m from one of the agent's places to another; the new place's room was made
 * first, so this cannot fail for memory (a number already there is damage). */
static int move(struct bus *bus, struct agent *a, struct bus_message *m, enum bus_place from,
		enum bus_place to)
{
	int rc = place_put(bus, a, to, m);
	if (rc == 0)
		place_take(bus, a, from, m->number);
	return rc;
}

/* REC_LEASE: str agent, u64 number, u64 token, u64 deadline_us, u32 delivery. A claim
 * takes a pending message under a new token; an extension moves a lease's deadline. */
int lease_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	struct bus_message *m;
	rd_str(r, name, sizeof name);
	uint64_t number = rd_u64(r), token = rd_u64(r), deadline = rd_u64(r);
	uint32_t delivery = rd_u32(r);
	if (r->bad || !(a = bus_find(bus, name)) || deadline > (uint64_t)INT64_MAX / 2 || !token)
		return -EINVAL;
	if ((m = inbox_find(&a->inbox, number))) {
		if (token <= bus->last_token || delivery != m->deliveries + 1)
			return -EINVAL;
		if (inbox_reserve(&a->inflight, 1) < 0 || lease_index_put(bus, token, number) < 0)
			return -ENOMEM;
		if (move(bus, a, m, BUS_INBOX, BUS_INFLIGHT) < 0) {
			lease_forget(bus, token);
			return -EINVAL;
		}
		bus->leased++;
		bus->last_token = token;
		m->token = token;
		m->deliveries = delivery;
		m->ready_us = 0;
		char f[64];
		snprintf(f, sizeof f, ",\"token\":%" PRIu64 ",\"delivery\":%" PRIu32, token,
			 delivery);
		event_message(bus, "leased", a->name, m, 0, f);
	} else if (!(m = inbox_find(&a->inflight, number)) || m->token != token ||
		   delivery != m->deliveries) {
		return -EINVAL;
	}
	m->deadline_us = (int64_t)deadline;
	timer_add(bus, m->deadline_us, number, token, TIMER_LEASE_END);
	return 0;
}

static void put_lease(struct buf *b, const struct agent *a, const struct bus_message *m,
		      uint64_t token, int64_t deadline, uint32_t delivery)
{
	buf_put_u8(b, REC_LEASE);
	buf_put_str(b, a->name);
	buf_put_u64(b, m->number);
	buf_put_u64(b, token);
	buf_put_u64(b, (uint64_t)deadline);
	buf_put_u32(b, delivery);
}

enum release_why { RELEASE_NAK = 1, RELEASE_EXPIRED = 2 };

/* REC_RELEASE: str agent, u64 number, u64 token, u64 ready_us, u8 why. */
int release_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	struct bus_message *m;
	rd_str(r, name, sizeof name);
	uint64_t number = rd_u64(r), token = rd_u64(r), ready = rd_u64(r);
	uint8_t why = rd_u8(r);
	if (r->bad || !(a = bus_find(bus, name)) || !(m = inbox_find(&a->inflight, number)) ||
	    m->token != token || !token || ready > (uint64_t)INT64_MAX / 2 ||
	    (why != RELEASE_NAK && why != RELEASE_EXPIRED))
		return -EINVAL;
	if (inbox_reserve(&a->inbox, 1) < 0)
		return -ENOMEM;
	if (move(bus, a, m, BUS_INFLIGHT, BUS_INBOX) < 0)
		return -EINVAL;
	lease_forget(bus, token);
	m->token = 0;
	m->ready_us = (int64_t)ready;
	bus->leased--;
	bus->redeliveries_total++;
	a->redelivered_total++;
	char f[80];
	snprintf(f, sizeof f, ",\"token\":%" PRIu64 ",\"delivery\":%" PRIu32 ",\"reason\":\"%s\"",
		 token, m->deliveries, why == RELEASE_NAK ? "nak" : "expired");
	event_message(bus, "redelivered", a->name, m, 0, f);
	lease_timers_of(bus, m);
	want_wake(bus, a->id);
	return 0;
}

/* REC_DEAD: str agent, u64 number, u64 token, u8 reason, u64 at_us, u64 discarded. */
int dead_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	struct bus_message *m, *old = NULL;
	rd_str(r, name, sizeof name);
	uint64_t number = rd_u64(r), token = rd_u64(r);
	uint8_t reason = rd_u8(r);
	uint64_t at = rd_u64(r), discarded = rd_u64(r);
	if (r->bad || !(a = bus_find(bus, name)) || at > (uint64_t)INT64_MAX / 2 ||
	    (reason != DEAD_MAX_DELIVER && reason != DEAD_EXPIRED))
		return -EINVAL;
	enum bus_place from = token ? BUS_INFLIGHT : BUS_INBOX;
	if (!(m = inbox_find(agent_place(a, from), number)) || m->token != token ||
	    (discarded && !(old = inbox_find(&a->dead, discarded))))
		return -EINVAL;
	if (inbox_reserve(&a->dead, 1) < 0)
		return -ENOMEM;
	if (inbox_find(&a->dead, number))
		return -EINVAL;
	if (old) {
		old = place_take(bus, a, BUS_DEAD, discarded);
		bus_uncharge(bus, old);
		bus->dead--;
		bus->dead_total[0]++;
		message_unref(old);
	}
	move(bus, a, m, from, BUS_DEAD); /* cannot fail: room made, number not there */
	if (token) {
		lease_forget(bus, token);
		bus->leased--;
	}
	m->token = 0;
	m->ready_us = 0;
	m->dead_reason = reason;
	m->dead_us = (int64_t)at;
	bus->pending--;
	bus->dead++;
	bus->dead_total[reason]++;
	char f[80];
	snprintf(f, sizeof f, ",\"delivery\":%" PRIu32 ",\"reason\":\"%s\"", m->deliveries,
		 bus_dead_reason_name(reason));
	event_message(bus, "dead", a->name, m, 0, f);
	want_wake(bus, a->id); /* a draining agent's claimers may have nothing left now */
	return 0;
}

/* REC_RETRY: str agent, u64 number. */
int retry_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	struct bus_message *m;
	rd_str(r, name, sizeof name);
	uint64_t number = rd_u64(r);
	if (r->bad || !(a = bus_find(bus, name)) || !(m = inbox_find(&a->dead, number)))
		return -EINVAL;
	if (inbox_reserve(&a->inbox, 1) < 0)
		return -ENOMEM;
	if (move(bus, a, m, BUS_DEAD, BUS_INBOX) < 0)
		return -EINVAL;
	m->dead_reason = 0;
	m->dead_us = 0;
	m->deliveries = 0;
	m->expires_us = 0; /* retried on purpose: its ttl no longer applies */
	bus->dead--;
	bus->pending++;
	want_wake(bus, a->id);
	return 0;
}

/* REC_DISCARD: str agent, u64 number. */
int discard_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	struct bus_message *m;
	rd_str(r, name, sizeof name);
	uint64_t number = rd_u64(r);
	if (r->bad || !(a = bus_find(bus, name)) || !(m = place_take(bus, a, BUS_DEAD, number)))
		return -EINVAL;
	bus_uncharge(bus, m);
	bus->dead--;
	size_t freed = m->len;
	message_unref(m);
	bus_give_back(freed);
	return 0;
}

/* ---------- decisions: what ends a lease, what a dead letter pushes out ---------- */

static const char *const dead_reason_names[DEAD_NREASONS] = {"discarded", "max_deliver",
							      "expired"};

const char *bus_dead_reason_name(int reason)
{
	return reason >= 0 && reason < DEAD_NREASONS ? dead_reason_names[reason] : "unknown";
}

/* Builds and commits the REC_DEAD that moves m (leased under token, or pending when
 * token is 0) to dead/; a full dead/ gives up its oldest letter, which is logged. */
static int make_dead(struct bus *bus, struct agent *a, struct bus_message *m, uint64_t token,
		     enum dead_reason reason, int64_t now, struct bus_error *err)
{
	struct bus_message *oldest = a->dead.live >= bus->cfg.inbox_capacity ? inbox_oldest(&a->dead)
									     : NULL;
	char old_id[BUS_MSG_ID_LEN + 1] = "";
	if (oldest)
		snprintf(old_id, sizeof old_id, "%s", oldest->msg_id);
	struct buf *b = &bus->rec;
	buf_reset(b);
	buf_put_u8(b, REC_DEAD);
	buf_put_str(b, a->name);
	buf_put_u64(b, m->number);
	buf_put_u64(b, token);
	buf_put_u8(b, (uint8_t)reason);
	buf_put_u64(b, (uint64_t)now);
	buf_put_u64(b, oldest ? oldest->number : 0);
	int rc = bus_commit(bus, err);
	if (rc == 0 && old_id[0]) {
		struct bus_error note;
		char path[BUS_NAME_MAX + 16];
		snprintf(path, sizeof path, "agents/%s/dead", a->name);
		bus_fail(&note, ENOSPC, "dead letter %s discarded: dead/ of %s holds --inbox-capacity "
			 "(%u) letters", old_id, a->name, bus->cfg.inbox_capacity);
		bus_note_locked(bus, a->name, "dead", path, &note);
	}
	return rc;
}

/* Ends m's lease (token) without an ack: back to the inbox, claimable from ready_us,
 * or dead when its ttl has passed or it was leased --max-deliver times. */
static int end_lease(struct bus *bus, struct agent *a, struct bus_message *m, int64_t ready_us,
		     enum release_why why, int64_t now, struct bus_error *err)
{
	uint64_t token = m->token;
	if (m->expires_us && m->expires_us <= now && !gateway_is(a))
		return make_dead(bus, a, m, token, DEAD_EXPIRED, now, err);
	/* A message queued for another node is published until it is stored there. */
	if (m->deliveries >= bus->cfg.max_deliver && !gateway_is(a))
		return make_dead(bus, a, m, token, DEAD_MAX_DELIVER, now, err);
	struct buf *b = &bus->rec;
	buf_reset(b);
	buf_put_u8(b, REC_RELEASE);
	buf_put_str(b, a->name);
	buf_put_u64(b, m->number);
	buf_put_u64(b, token);
	buf_put_u64(b, (uint64_t)ready_us);
	buf_put_u8(b, (uint8_t)why);
	return bus_commit(bus, err);
}

/* ---------- what files show ---------- */

void lease_file_name(const struct bus_message *m, char *out, size_t n)
{
	char base[BUS_FILE_NAME_LEN + 1];
	message_file_name(m, base);
	snprintf(out, n, "%.*s.%" PRIu64 ".json", BUS_FILE_NAME_LEN - 5, base, m->token);
}

uint64_t lease_parse_file_name(const char *name, char *msg_id, uint64_t *token)
{
	/* <20 digits>-<msg_id>.<token>.json */
	char base[BUS_FILE_NAME_LEN + 1];
	size_t n = strlen(name), stem = BUS_FILE_NAME_LEN - 5;
	if (n < stem + 7 || n > stem + 26 || name[stem] != '.' || strcmp(name + n - 5, ".json"))
		return 0;
	uint64_t t = 0;
	for (size_t i = stem + 1; i < n - 5; i++) {
		if (name[i] < '0' || name[i] > '9' || t > (UINT64_MAX - 9) / 10)
			return 0;
		t = t * 10 + (uint64_t)(name[i] - '0');
	}
	if (!t || (name[stem + 1] == '0'))
		return 0;
	memcpy(base, name, stem);
	memcpy(base + stem, ".json", 6);
	*token = t;
	return message_parse_any_file_name(base, msg_id);
}

/* The envelope with the lease or the dead letter's record added as its last field. */
static void render(const struct bus_message *m, enum bus_place place, struct buf *out)
{
	char ts[BUS_TIME_LEN + 1];
	if (place != BUS_INFLIGHT && place != BUS_DEAD) {
		buf_append(out, m->envelope, m->len);
		return;
	}
	buf_append(out, m->envelope, m->len - 2); /* without its closing "}\n" */
	if (place == BUS_INFLIGHT) {
		char name[BUS_FILE_NAME_LEN + 32];
		lease_file_name(m, name, sizeof name);
		bus_time_format(m->deadline_us, ts);
		buf_printf(out, ",\"lease\":{\"token\":%" PRIu64 ",\"deadline\":\"%s\",\"delivery\":%"
			   PRIu32 ",\"file\":\"inflight/%s\"}}\n", m->token, ts, m->deliveries, name);
	} else {
		bus_time_format(m->dead_us, ts);
		buf_printf(out, ",\"dead\":{\"reason\":\"%s\",\"deliveries\":%" PRIu32
			   ",\"at\":\"%s\"}}\n", bus_dead_reason_name(m->dead_reason), m->deliveries,
			   ts);
	}
}

int bus_place_render(struct bus *bus, uint64_t agent_id, enum bus_place place, uint64_t number,
		     struct buf *out)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	struct bus_message *m = a && place != BUS_OUTBOX ? inbox_find(agent_place(a, place), number)
							 : NULL;
	if (m)
		render(m, place, out);
	pthread_mutex_unlock(&bus->lock);
	return m ? 0 : -ENOENT;
}

int bus_lease_find(struct bus *bus, uint64_t token, uint64_t *agent_id, uint64_t *number)
{
	char key[24];
	token_key(key, token);
	bus_lock(bus);
	uint64_t n = strmap_get(&bus->leases, key);
	struct bus_message *m = n ? msgindex_get(&bus->messages, n) : NULL;
	struct agent *a = m && m->in_inflight && m->token == token ? bus_find(bus, m->to) : NULL;
	*agent_id = a ? a->id : 0;
	*number = a ? n : 0;
	pthread_mutex_unlock(&bus->lock);
	return a ? 0 : -ENOENT;
}

/* ---------- claims ---------- */

/* The oldest pending message that may be leased now; a pending message whose ttl has
 * passed becomes a dead letter on the way. */
static struct bus_message *claimable(struct bus *bus, struct agent *a, int64_t now)
{
	struct inbox *in = &a->inbox;
	for (size_t i = in->head; i < in->tail; i++) {
		struct bus_message *m = in->msgs[i];
		if (!m || (m->ready_us && m->ready_us > now))
			continue;
		if (m->expires_us && m->expires_us <= now) {
			/* Taking it out leaves a hole (or empties the array): i stays valid. */
			if (make_dead(bus, a, m, 0, DEAD_EXPIRED, now, NULL) == 0)
				continue;
			return NULL;
		}
		return m;
	}
	return NULL;
}

int lease_grant_locked(struct bus *bus, struct agent *a, struct bus_message *m, double seconds,
		       int64_t now, struct bus_error *err)
{
	buf_reset(&bus->rec);
	put_lease(&bus->rec, a, m, bus->last_token + 1, now + (int64_t)(seconds * 1e6),
		  m->deliveries + 1);
	return bus_commit(bus, err);
}

int lease_release_locked(struct bus *bus, struct agent *a, struct bus_message *m,
			 int64_t ready_us, int64_t now, struct bus_error *err)
{
	return end_lease(bus, a, m, ready_us, RELEASE_NAK, now, err);
}

int bus_claim(struct bus *bus, uint64_t agent_id, uid_t uid, struct buf *out, bool *draining,
	      struct bus_error *err)
{
	bus_lock(bus);
	struct agent *a = bus_owned_agent(bus, agent_id, uid, "claim the messages of", err);
	int rc;
	*draining = false;
	if (!a) {
		rc = -err->code;
		goto out;
	}
	int64_t now = bus_clock_now_us();
	struct bus_message *m = claimable(bus, a, now);
	/* A draining claimer ends only when nothing can come back to claim: no pending
	 * message (a nak's delay ends) and no lease (it may expire). */
	*draining = a->draining && !agent_held(a);
	if (!m) {
		rc = bus_fail(err, EAGAIN, "no message to claim in the inbox of %s", a->name);
		goto out;
	}
	int64_t deadline = now + (int64_t)(bus->cfg.lease_s * 1e6);
	buf_reset(&bus->rec);
	put_lease(&bus->rec, a, m, bus->last_token + 1, deadline, m->deliveries + 1);
	rc = bus_commit(bus, err);
	if (rc == 0)
		render(m, BUS_INFLIGHT, out);
out:
	bus_unlock_and_wake(bus);
	return rc;
}

bool bus_claim_ready(struct bus *bus, uint64_t agent_id, bool *draining)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	bool ready = !a;
	*draining = a && a->draining && !agent_held(a);
	if (a) {
		int64_t now = bus_clock_now_us();
		for (size_t i = a->inbox.head; i < a->inbox.tail && !ready; i++) {
			const struct bus_message *m = a->inbox.msgs[i];
			ready = m && (!m->ready_us || m->ready_us <= now);
		}
	}
	pthread_mutex_unlock(&bus->lock);
	return ready;
}

/* ---------- ack, extend, nak, retry, discard ---------- */

/* The agent's leased message `number` (msg_id, when given, must match) under the
 * lease `token`: ENOENT when the agent holds no such message, ESTALE when it is not
 * leased under that token (an old lease, another worker's, or none). */
struct bus_message *lease_check(struct bus *bus, struct agent *a, uint64_t number,
				const char *msg_id, uint64_t token, struct bus_error *err)
{
	struct bus_message *m = inbox_find(&a->inflight, number);
	if (!m)
		m = inbox_find(&a->inbox, number);
	if (!m)
		m = inbox_find(&a->dead, number);
	if (!m || (msg_id && strcmp(m->msg_id, msg_id) != 0)) {
		bus_fail(err, ENOENT, "no message %s at %s", msg_id ? msg_id : "with that number",
			 a->name);
		return NULL;
	}
	if (!m->in_inflight || m->token != token) {
		if (m->in_inflight)
			bus_fail(err, ESTALE, "token %" PRIu64 " is not the current lease of %s (a "
				 "later claim holds it)", token, m->msg_id);
		else
			bus_fail(err, ESTALE, "token %" PRIu64 " is not a lease of %s: it is %s now",
				 token, m->msg_id, m->in_dead ? "a dead letter" : "pending");
		return NULL;
	}
	return m;
}

/* An extension is 1 s to 31 days (0: --lease); a nak's delay 0 to 31 days. */
static bool seconds_ok(double s, bool extension)
{
	return (extension ? s == 0 || s >= 1 : s >= 0) && s <= MAX_SECONDS;
}

int bus_lease_extend(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		     uint64_t token, double seconds, uid_t uid, struct bus_error *err)
{
	bus_lock(bus);
	struct agent *a = bus_owned_agent(bus, agent_id, uid, "extend the leases of", err);
	struct bus_message *m = NULL;
	int rc;
	if (!seconds_ok(seconds, true))
		rc = bus_fail(err, EINVAL, "a lease is extended by 1 to %.0f seconds", MAX_SECONDS);
	else if (!a || !(m = lease_check(bus, a, number, msg_id, token, err)))
		rc = -err->code;
	else {
		double s = seconds > 0 ? seconds : bus->cfg.lease_s;
		buf_reset(&bus->rec);
		put_lease(&bus->rec, a, m, m->token, bus_clock_now_us() + (int64_t)(s * 1e6),
			  m->deliveries);
		rc = bus_commit(bus, err);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

int bus_lease_touch(struct bus *bus, uint64_t token, uid_t uid, struct bus_error *err)
{
	uint64_t agent_id, number;
	if (bus_lease_find(bus, token, &agent_id, &number) < 0)
		return bus_fail(err, ENOENT, "no lease with token %" PRIu64, token);
	return bus_lease_extend(bus, agent_id, number, NULL, token, 0, uid, err);
}

int bus_lease_nak(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		  uint64_t token, double delay_s, uid_t uid, struct bus_error *err)
{
	bus_lock(bus);
	struct agent *a = bus_owned_agent(bus, agent_id, uid, "give back the leases of", err);
	struct bus_message *m = NULL;
	int rc;
	if (!seconds_ok(delay_s, false))
		rc = bus_fail(err, EINVAL, "a nak's delay is 0 to %.0f seconds", MAX_SECONDS);
	else if (!a || !(m = lease_check(bus, a, number, msg_id, token, err)))
		rc = -err->code;
	else {
		int64_t now = bus_clock_now_us();
		rc = end_lease(bus, a, m, delay_s > 0 ? now + (int64_t)(delay_s * 1e6) : 0,
			       RELEASE_NAK, now, err);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

/* A dead letter of the agent's, by number and msg_id. */
static struct bus_message *dead_letter(struct agent *a, uint64_t number, const char *msg_id,
				       struct bus_error *err)
{
	struct bus_message *m = inbox_find(&a->dead, number);
	if (!m || (msg_id && strcmp(m->msg_id, msg_id) != 0)) {
		bus_fail(err, ENOENT, "no dead letter %s at %s", msg_id ? msg_id : "with that number",
			 a->name);
		return NULL;
	}
	return m;
}

/* One record about a dead letter of the agent's: REC_RETRY (which needs room in the
 * inbox) or REC_DISCARD. */
static int dead_letter_record(struct bus *bus, uint64_t agent_id, uint64_t number,
			      const char *msg_id, uid_t uid, uint8_t kind, struct bus_error *err)
{
	bus_lock(bus);
	struct agent *a = bus_owned_agent(bus, agent_id, uid, kind == REC_RETRY
					  ? "retry the dead letters of"
					  : "discard the dead letters of", err);
	int rc;
	if (!a || !dead_letter(a, number, msg_id, err)) {
		rc = -err->code;
	} else if (kind == REC_RETRY && agent_room(bus, a, 1, err) < 0) {
		rc = -EAGAIN;
	} else {
		buf_reset(&bus->rec);
		buf_put_u8(&bus->rec, kind);
		buf_put_str(&bus->rec, a->name);
		buf_put_u64(&bus->rec, number);
		rc = bus_commit(bus, err);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

int bus_dead_retry(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		   uid_t uid, struct bus_error *err)
{
	return dead_letter_record(bus, agent_id, number, msg_id, uid, REC_RETRY, err);
}

int bus_dead_discard(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		     uid_t uid, struct bus_error *err)
{
	return dead_letter_record(bus, agent_id, number, msg_id, uid, REC_DISCARD, err);
}

/* ---------- the ticker's part ---------- */

void lease_tick_locked(struct bus *bus, int64_t now)
{
	if (bus->timers_lost)
		timers_rebuild(bus);
	/* Due entries that cannot act now (a full store) come back a second later. */
	struct timer later[64];
	size_t nlater = 0;
	while (bus->ntimers && bus->timers[0].when <= now) {
		struct timer t = timer_pop(bus);
		struct bus_message *m = msgindex_get(&bus->messages, t.number);
		struct agent *a = m ? bus_find(bus, m->to) : NULL;
		int rc = 0;
		if (!a)
			continue;
		switch (t.kind) {
		case TIMER_LEASE_END:
			if (m->in_inflight && m->token == t.token && m->deadline_us <= now)
				rc = end_lease(bus, a, m, 0, RELEASE_EXPIRED, now, NULL);
			break;
		case TIMER_READY:
			if (m->in_inbox && m->ready_us <= now)
				want_wake(bus, a->id);
			break;
		case TIMER_TTL:
			/* A leased message expires when its lease ends. */
			if (!gateway_is(a) && m->in_inbox && m->expires_us && m->expires_us <= now)
				rc = make_dead(bus, a, m, 0, DEAD_EXPIRED, now, NULL);
			break;
		}
		if (rc < 0 && nlater < sizeof later / sizeof later[0]) {
			t.when = now + 1000000;
			later[nlater++] = t;
		} else if (rc < 0) {
			bus->timers_lost = true;
		}
	}
	for (size_t i = 0; i < nlater; i++)
		timer_add(bus, later[i].when, later[i].number, later[i].token,
			  (enum timer_kind)later[i].kind);
}
