/* agents.c — the registered agents: names, ownership, the two sorted arrays that
 * find them by name and by id, registration and removal, and the records that
 * change them (REC_AGENT_ADD, REC_AGENT_DEL, REC_STATE).
 *
 * Ownership: the bus owns its agents; agent_delete frees one with everything it
 * holds. Ids only grow and are never reused. Under the bus lock. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"
#include "busfs/clock.h"

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

struct agent *bus_find_agent(struct bus *bus, const char *name)
{
	struct agent *a = bus_find(bus, name);
	return gateway_is(a) ? NULL : a;
}

struct agent *bus_find(struct bus *bus, const char *name)
{
	if (strchr(name, '@'))
		return gateway_for(bus, name, false);
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
void pair_key(char *key, const char *from, const char *to)
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

void agent_free(struct agent *a)
{
	quota_drafts_free(&a->drafts);
	inbox_free(&a->inbox);
	inbox_free(&a->inflight);
	inbox_free(&a->dead);
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
	bus->pending -= agent_held(a);
	bus->leased -= a->inflight.live;
	bus->dead -= a->dead.live;
	agent_forget_messages(bus, a);
	agent_free(a);
}

void agent_info(const struct agent *a, struct bus_agent_info *out)
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
	out->leased = (uint32_t)a->inflight.live;
	out->dead = (uint32_t)a->dead.live;
	out->redelivered_total = a->redelivered_total;
	out->outbox_count = (uint32_t)a->outbox.count;
	out->errors_bytes = a->errors.text.len;
	out->last_seen_us = a->last_seen_us;
}


int agent_room(const struct bus *bus, const struct agent *a, uint32_t more,
	       struct bus_error *err)
{
	size_t held = agent_held(a);
	if (held + a->reserved + more <= bus->cfg.inbox_capacity)
		return 0;
	return bus_fail(err, EAGAIN, "the inbox of %s is full (%zu pending + %u being written, "
			"capacity %u)", a->name, held, a->reserved, bus->cfg.inbox_capacity);
}

/* A uid's count of agents, for --max-agents-per-uid. */
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

static void put_agent(struct buf *b, const struct agent *a)
{
	buf_put_u8(b, REC_AGENT_ADD);
	buf_put_str(b, a->name);
	buf_put_u32(b, (uint32_t)a->uid);
	buf_put_u32(b, (uint32_t)a->gid);
	buf_put_u64(b, (uint64_t)a->created_us);
	buf_put_u8(b, a->draining);
	buf_put_u64(b, a->delivered_total);
	buf_put_u64(b, a->acked_total);
	if (a->redelivered_total)
		buf_put_u64(b, a->redelivered_total);
}

/* REC_AGENT_ADD: str name, u32 uid, u32 gid, u64 created_us, u8 draining,
 * u64 delivered_total, u64 acked_total[, u64 redelivered_total]. */
int agent_add_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	rd_str(r, name, sizeof name);
	uint32_t uid = rd_u32(r), gid = rd_u32(r);
	uint64_t created = rd_u64(r);
	uint8_t draining = rd_u8(r);
	uint64_t delivered = rd_u64(r), acked = rd_u64(r);
	uint64_t redelivered = r->pos < r->len ? rd_u64(r) : 0;
	if (r->bad || !bus_name_valid(name) || bus_find(bus, name))
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
	a->redelivered_total = redelivered;
	char f[48];
	snprintf(f, sizeof f, ",\"uid\":%u", (unsigned)uid);
	event_emit(bus, "agent_added", a->name, f);
	return 0;
}

int agent_save(struct bus *bus, struct buf *b)
{
	int rc = 0;
	for (size_t k = 0; k < bus->nagents && rc == 0; k++) {
		put_agent(b, bus->by_id[k]);
		rc = bus_snapshot_put(bus, b);
	}
	return rc;
}

static size_t outbox_bytes(const struct outbox *o)
{
	size_t n = 0;
	for (size_t i = 0; i < o->count; i++)
		n += outbox_at(o, i)->len;
	return n;
}

/* REC_AGENT_DEL: str name. */
int agent_del_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	rd_str(r, name, sizeof name);
	if (r->bad || !(a = bus_find_agent(bus, name)))
		return -EINVAL;
	want_wake(bus, a->id);
	event_emit(bus, "agent_removed", a->name, NULL);
	bus_uncharge_all(bus, &a->inbox);
	bus_uncharge_all(bus, &a->inflight);
	bus_uncharge_all(bus, &a->dead);
	count_agent(bus, a->uid, -1);
	size_t held = outbox_bytes(&a->outbox);
	agent_delete(bus, a);
	bus_give_back(held);
	return 0;
}

/* REC_STATE: str name, u8 draining. */
int state_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	rd_str(r, name, sizeof name);
	uint8_t draining = rd_u8(r);
	if (r->bad || !(a = bus_find_agent(bus, name)))
		return -EINVAL;
	if (a->draining != (bool)draining)
		event_emit(bus, draining ? "drained" : "resumed", a->name, NULL);
	a->draining = draining;
	want_wake(bus, a->id);
	return 0;
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
		struct agent tmpl = {.uid = uid, .gid = gid, .created_us = bus_clock_now_us()};
		snprintf(tmpl.name, sizeof tmpl.name, "%s", name);
		buf_reset(&bus->rec);
		put_agent(&bus->rec, &tmpl);
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
	struct agent *a = bus_find_agent(bus, name);
	int rc = 0;
	if (!a)
		rc = bus_fail(err, ENOENT, "no agent named %.80s", name);
	else if (!bus_may_act_as(a, uid))
		rc = bus_fail(err, EACCES, "agent %s belongs to uid %u", name, (unsigned)a->uid);
	else if (a->inbox.live)
		rc = bus_fail(err, ENOTEMPTY, "the inbox of %s holds %zu message(s)", name,
			      a->inbox.live);
	else if (a->inflight.live)
		rc = bus_fail(err, ENOTEMPTY, "%zu message(s) of %s are leased (inflight/)", a->inflight.live,
			      name);
	else if (a->dead.live)
		rc = bus_fail(err, ENOTEMPTY, "%s holds %zu dead letter(s): rm dead/* or retry them",
			      name, a->dead.live);
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
	struct agent *a = bus_find_agent(bus, name);
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

