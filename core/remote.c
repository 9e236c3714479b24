/* remote.c — agents on other nodes (SPEC §12), as the core sees them. Nothing here
 * speaks NATS: the cluster layer (fs/cluster.c) moves bytes, the core keeps them.
 *
 * A message to a remote agent ("bob@nodeB") is delivered like any other, into the
 * queue of that node: a gateway, an agent kept outside the agent tables (no one lists,
 * opens or broadcasts to it) whose name is "@nodeB". bus_find resolves both names to
 * it, so every record kind (delivery, lease, ack, snapshot) works on gateways as on
 * agents, and a queued message survives kill -9 like any pending one. The cluster
 * layer leases the oldest queued message (bus_outgoing_claim), publishes it, and acks
 * it (bus_outgoing_done) once JetStream stored it; a lease lost with the server ends
 * and the message is published again under the same Nats-Msg-Id, which JetStream's
 * duplicate window drops. Gateway messages never become dead letters.
 *
 * The other way, bus_remote_receive commits a fetched message into a local inbox with
 * its msg_id as an idempotency key, so one fetched again after a crash is recognised.
 *
 * Which remote agents exist is what the cluster layer last learned (bus_remote_known):
 * memory only, sends to others get ENOENT. Under the bus lock unless said otherwise. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus_impl.h"
#include "busfs/clock.h"
#include "busfs/json.h"
#include "busfs/remote.h"

bool bus_remote_split(const char *name, char *agent, char *node)
{
	const char *at = strchr(name, '@');
	size_t n = strlen(name);
	if (!at || at == name || n > BUS_NAME_MAX)
		return false;
	char a[BUS_NAME_MAX + 1], d[BUS_NAME_MAX + 1];
	memcpy(a, name, (size_t)(at - name));
	a[at - name] = '\0';
	snprintf(d, sizeof d, "%s", at + 1);
	if (!bus_name_valid(a) || !bus_name_valid(d))
		return false;
	if (agent)
		memcpy(agent, a, strlen(a) + 1);
	if (node)
		memcpy(node, d, strlen(d) + 1);
	return true;
}

bool gateway_is(const struct agent *a) { return a && a->name[0] == '@'; }

/* The gateway of the node in "NAME@NODE" or "@NODE"; made when create (NULL for
 * memory or a malformed name). */
struct agent *gateway_for(struct bus *bus, const char *name, bool create)
{
	const char *at = strchr(name, '@');
	if (!at || !at[1] || strchr(at + 1, '@'))
		return NULL;
	for (size_t i = 0; i < bus->ngateways; i++)
		if (strcmp(bus->gateways[i]->name + 1, at + 1) == 0)
			return bus->gateways[i];
	if (!create || strlen(at) > BUS_NAME_MAX)
		return NULL;
	if (bus->ngateways == bus->gateways_cap) {
		size_t cap = bus->gateways_cap ? bus->gateways_cap * 2 : 4;
		struct agent **p = realloc(bus->gateways, cap * sizeof *p);
		if (!p)
			return NULL;
		bus->gateways = p;
		bus->gateways_cap = cap;
	}
	struct agent *g = calloc(1, sizeof *g);
	if (!g)
		return NULL;
	snprintf(g->name, sizeof g->name, "%s", at);
	g->id = BUS_GATEWAY_ID0 + bus->ngateways;
	g->uid = bus->server_uid;
	g->gid = getgid();
	g->created_us = bus_clock_now_us();
	errlog_init(&g->errors, 1);
	buf_init(&g->health_reason);
	buf_init(&g->health_extra);
	bus->gateways[bus->ngateways++] = g;
	return g;
}

void gateways_free(struct bus *bus)
{
	for (size_t i = 0; i < bus->ngateways; i++)
		agent_free(bus->gateways[i]);
	free(bus->gateways);
	bus->gateways = NULL;
	bus->ngateways = bus->gateways_cap = 0;
	strmap_free(&bus->remote_known);
}

/* ---------- the directory of remote agents ---------- */

int bus_remote_known(struct bus *bus, const char *name, bool present)
{
	if (!bus_remote_split(name, NULL, NULL))
		return -EINVAL;
	bus_lock(bus);
	int rc = 0;
	if (present)
		rc = strmap_set(&bus->remote_known, name, 1);
	else
		strmap_del(&bus->remote_known, name);
	pthread_mutex_unlock(&bus->lock);
	return rc;
}

struct agent *remote_recipient(struct bus *bus, const char *name, struct bus_error *err)
{
	char node[BUS_NAME_MAX + 1];
	if (!bus_remote_split(name, NULL, node)) {
		bus_fail(err, EINVAL, "%.80s is not NAME@NODE", name);
		return NULL;
	}
	if (!bus->node[0]) {
		bus_fail(err, ENOENT, "recipient %.80s is on another node, and this bus is not in a "
			 "cluster (--cluster)", name);
		return NULL;
	}
	if (strcmp(node, bus->node) == 0 || !strmap_get(&bus->remote_known, name)) {
		bus_fail(err, ENOENT, "remote agent %.80s is not known (busfs_agents)", name);
		return NULL;
	}
	struct agent *g = gateway_for(bus, name, true);
	if (!g)
		bus_fail(err, ENOMEM, "out of memory");
	return g;
}

void bus_set_node(struct bus *bus, const char *node)
{
	bus_lock(bus);
	snprintf(bus->node, sizeof bus->node, "%s", node);
	pthread_mutex_unlock(&bus->lock);
}

/* ---------- the outgoing queues ---------- */

int bus_outgoing_claim(struct bus *bus, double lease_s, struct bus_outgoing *out)
{
	bus_lock(bus);
	int64_t now = bus_clock_now_us();
	int rc = -EAGAIN;
	size_t n = bus->ngateways;
	for (size_t k = 0; k < n && rc == -EAGAIN; k++) {
		struct agent *g = bus->gateways[(bus->gateway_next + k) % n];
		struct inbox *in = &g->inbox;
		struct bus_message *m = NULL;
		for (size_t i = in->head; i < in->tail && !m; i++)
			if (in->msgs[i] && (!in->msgs[i]->ready_us || in->msgs[i]->ready_us <= now))
				m = in->msgs[i];
		if (!m)
			continue;
		struct bus_error err;
		rc = lease_grant_locked(bus, g, m, lease_s, now, &err);
		if (rc == 0) {
			bus->gateway_next = (bus->gateway_next + k + 1) % n;
			message_ref(m);
			out->m = m;
			out->number = m->number;
			out->token = m->token;
			snprintf(out->node, sizeof out->node, "%s", g->name + 1);
			bus_remote_split(m->to, out->agent, NULL);
		}
	}
	pthread_mutex_unlock(&bus->lock);
	return rc;
}

void bus_outgoing_release(struct bus_outgoing *out)
{
	if (out->m)
		message_unref(out->m);
	out->m = NULL;
}

static struct agent *gateway_holding(struct bus *bus, uint64_t number)
{
	struct bus_message *m = msgindex_get(&bus->messages, number);
	struct agent *g = m ? gateway_for(bus, m->to, false) : NULL;
	return g && strchr(m->to, '@') ? g : NULL;
}

/* One REC_ACK without an ack message: the gateway's message leaves its queue. */
static int outgoing_remove(struct bus *bus, struct agent *g, uint64_t number)
{
	struct bus_error err;
	buf_reset(&bus->rec);
	buf_put_u8(&bus->rec, REC_ACK);
	buf_put_str(&bus->rec, g->name);
	buf_put_u64(&bus->rec, number);
	buf_put_u8(&bus->rec, 0);
	return bus_commit(bus, &err);
}

int bus_outgoing_done(struct bus *bus, uint64_t number, uint64_t token)
{
	bus_lock(bus);
	struct agent *g = gateway_holding(bus, number);
	struct bus_message *m = g ? inbox_find(&g->inflight, number) : NULL;
	int rc = !m || m->token != token ? -ESTALE : outgoing_remove(bus, g, number);
	bus_unlock_and_wake(bus);
	return rc;
}

int bus_outgoing_retry(struct bus *bus, uint64_t number, uint64_t token, double delay_s)
{
	bus_lock(bus);
	struct agent *g = gateway_holding(bus, number);
	struct bus_message *m = g ? inbox_find(&g->inflight, number) : NULL;
	int rc = -ESTALE;
	if (m && m->token == token) {
		struct bus_error err;
		int64_t now = bus_clock_now_us();
		rc = lease_release_locked(bus, g, m, now + (int64_t)(delay_s * 1e6), now, &err);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

int bus_outgoing_cancel(struct bus *bus, uint64_t number)
{
	bus_lock(bus);
	struct agent *g = gateway_holding(bus, number);
	int rc = -ENOENT;
	if (g && inbox_find(&g->inflight, number))
		rc = -EBUSY;
	else if (g && inbox_find(&g->inbox, number))
		rc = outgoing_remove(bus, g, number);
	bus_unlock_and_wake(bus);
	return rc;
}

bool bus_outgoing_queued(struct bus *bus, uint64_t number)
{
	bus_lock(bus);
	struct agent *g = gateway_holding(bus, number);
	bool queued = g && (inbox_find(&g->inbox, number) || inbox_find(&g->inflight, number));
	pthread_mutex_unlock(&bus->lock);
	return queued;
}

size_t bus_outgoing_depth(struct bus *bus)
{
	bus_lock(bus);
	size_t n = 0;
	for (size_t i = 0; i < bus->ngateways; i++)
		n += agent_held(bus->gateways[i]);
	pthread_mutex_unlock(&bus->lock);
	return n;
}

/* ---------- receiving ---------- */

static const char TYPE_UNDELIVERABLE[] = "\"undeliverable\"";

/* The raw token of a member, or NULL. */
static const struct json_member *member(const struct json_member *m, int n, const char *key)
{
	for (int i = 0; i < n; i++)
		if (strcmp(m[i].key, key) == 0)
			return &m[i];
	return NULL;
}

/* A string member's value without quotes into out (no escapes allowed: names and ids
 * have none); false when absent, not such a string, or too long. */
static bool plain_member(const struct json_member *m, int n, const char *key, char *out,
			 size_t size)
{
	const struct json_member *v = member(m, n, key);
	if (!v || v->value_len < 2 || v->value[0] != '"' || v->value_len - 2 >= size ||
	    memchr(v->value + 1, '\\', v->value_len - 2))
		return false;
	memcpy(out, v->value + 1, v->value_len - 2);
	out[v->value_len - 2] = '\0';
	return true;
}

int bus_remote_receive(struct bus *bus, const char *agent, const char *from_node,
		       const char *data, size_t len, int64_t expires_us, struct bus_error *err)
{
	struct json_member m[16];
	char *keys = malloc(len + 1);
	if (!keys)
		return bus_fail(err, ENOMEM, "out of memory");
	while (len && (data[len - 1] == '\n' || data[len - 1] == ' '))
		len--;
	int n = json_object_members(data, len, m, 16, keys);
	char msg_id[BUS_MSG_ID_LEN + 1], sender[BUS_NAME_MAX + 1], ts[BUS_TIME_LEN + 1];
	char from[BUS_NAME_MAX + 1];
	const struct json_member *type = n > 0 ? member(m, n, "type") : NULL;
	const struct json_member *payload = n > 0 ? member(m, n, "payload") : NULL;
	const struct json_member *corr = n > 0 ? member(m, n, "correlation_id") : NULL;
	const struct json_member *ack = n > 0 ? member(m, n, "requires_ack") : NULL;
	const struct json_member *prio = n > 0 ? member(m, n, "priority") : NULL;
	const struct json_member *enc = n > 0 ? member(m, n, "encoding") : NULL;
	int64_t sent_us;
	int rc = 0;
	if (n < 0 || !plain_member(m, n, "msg_id", msg_id, sizeof msg_id) ||
	    !message_id_number(msg_id) ||
	    !plain_member(m, n, "from", sender, sizeof sender) || !bus_name_valid(sender) ||
	    !plain_member(m, n, "timestamp", ts, sizeof ts) || !bus_time_parse(ts, &sent_us) ||
	    !type || type->value[0] != '"' || !payload || !ack ||
	    !bus_name_valid(agent) || !bus_name_valid(from_node) ||
	    strlen(sender) + 1 + strlen(from_node) > BUS_NAME_MAX) {
		free(keys);
		return bus_fail(err, EINVAL, "a remote message from node %.64s that is not an "
				"envelope", from_node);
	}
	size_t sl = strlen(sender);
	memcpy(from, sender, sl);
	from[sl] = '@';
	memcpy(from + sl + 1, from_node, strlen(from_node) + 1);

	bus_lock(bus);
	char key[DEDUPE_KEY_BUF];
	snprintf(key, sizeof key, "0/@%s\x01%s", from_node, msg_id);
	int64_t now = bus_clock_now_us();
	struct agent *a = bus_find(bus, agent);
	struct agent *back = NULL;
	struct buf payload_buf;
	buf_init(&payload_buf);
	if (dedupe_seen(bus, key, now)) {
		rc = 1; /* fetched again after a crash: it is in the store already */
		goto out;
	}
	if (a && (rc = agent_room(bus, a, 1, err)) < 0)
		goto out;
	if (a && a->draining) {
		rc = bus_fail(err, EAGAIN, "%s is draining", a->name);
		goto out;
	}
	if (!a && !(back = gateway_for(bus, from, true))) {
		rc = bus_fail(err, ENOMEM, "out of memory");
		goto out;
	}
	if (!bus_space_for(bus, len + 512)) {
		rc = bus_fail(err, ENOSPC, "the store is full (--store-max-bytes %" PRIu64 ")",
			      bus->cfg.store_max_bytes);
		goto out;
	}
	struct buf *rec = &bus->rec;
	buf_reset(rec);
	buf_put_u8(rec, REC_DELIVER_KEYED);
	buf_put_u32(rec, 0);
	buf_put_u32(rec, 1);
	buf_put_str(rec, key);
	buf_put_u64(rec, (uint64_t)now);
	buf_put_u32(rec, 1);
	if (a) {
		struct envelope env = {
			.from = from, .to = a->name, .msg_id = msg_id, .timestamp = ts,
			.number = bus->counter + 1,
			.sequence = bus_pair_sequence(bus, from, a->name) + 1,
			.time_us = sent_us, .store_id = store_id(bus->store),
			.type_token = type->value, .type_len = type->value_len,
			.payload = payload->value, .payload_len = payload->value_len,
			.base64 = enc != NULL,
			.requires_ack = ack->value_len == 4 && memcmp(ack->value, "true", 4) == 0,
			.urgent = prio && prio->value_len == 8 && memcmp(prio->value, "\"urgent\"", 8) == 0,
			.corr_token = corr ? corr->value : NULL, .corr_len = corr ? corr->value_len : 0,
			.expires_us = expires_us > 0 && expires_us < INT64_MAX / 2 ? expires_us : 0,
		};
		message_encode(rec, &env);
	} else {
		/* No such agent here: the sender hears why, from the name it wrote to. */
		buf_printf(&payload_buf, "{\"msg_id\":\"%s\",\"to\":\"%s@%s\",\"reason\":\"no agent "
			   "%s on node %s\"}", msg_id, agent, bus->node, agent, bus->node);
		struct envelope env = {
			.from = agent, .to = from,
			.number = bus->counter + 1, .sequence = 1,
			.time_us = now, .store_id = store_id(bus->store),
			.type_token = TYPE_UNDELIVERABLE, .type_len = sizeof TYPE_UNDELIVERABLE - 1,
			.payload = payload_buf.data, .payload_len = payload_buf.len,
			.corr_token = corr ? corr->value : NULL, .corr_len = corr ? corr->value_len : 0,
		};
		message_encode(rec, &env);
		if (!buf_ok(&payload_buf))
			buf_fail(rec);
	}
	rc = bus_commit(bus, err);
	if (rc == 0 && !a)
		rc = bus_fail(err, ENOENT, "no agent %s here: undeliverable sent to %s", agent,
			      from);
out:
	buf_free(&payload_buf);
	bus_unlock_and_wake(bus);
	free(keys);
	return rc;
}
