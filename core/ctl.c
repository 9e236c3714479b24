/* ctl.c — consuming messages and the agent's ctl file: acks (`rm inbox/F`, `ack
 * MSG_ID`), lease commands (`ack MSG_ID TOKEN`, `extend`, `nak`), dead letters
 * (`retry`), drain and resume, and the state that reading ctl shows.
 *
 * An ack is one record with its ack message (REC_ACK): consuming a message that asked
 * for one and telling its sender happen together or not at all. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"
#include "busfs/clock.h"
#include "busfs/json.h"

/* Consumes m (in a's inbox, or leased with its token checked): one REC_ACK, with the
 * ack message to its sender when it asked for one and the sender is registered. */
static int ack_message(struct bus *bus, struct agent *a, struct bus_message *m,
		       struct bus_error *err, bool *dropped)
{
	struct agent *sender = !m->requires_ack	 ? NULL
			       : strchr(m->from, '@') ? gateway_for(bus, m->from, true)
						      : bus_find(bus, m->from);
	*dropped = m->requires_ack && !sender;
	struct buf *rec = &bus->rec;
	buf_reset(rec);
	buf_put_u8(rec, REC_ACK);
	buf_put_str(rec, a->name);
	buf_put_u64(rec, m->number);
	buf_put_u8(rec, sender ? 1 : 0);
	if (sender) {
		struct buf payload;
		buf_init(&payload);
		buf_printf(&payload, "{\"ack\":\"%s\"}", m->msg_id);
		int64_t now = bus_clock_now_us();
		static const char TYPE_ACK[] = "\"ack\"";
		struct envelope env = {
			.from = a->name, .to = m->from,
			.number = bus->counter + 1,
			.sequence = bus_pair_sequence(bus, a->name, m->from) + 1,
			.time_us = now, .store_id = store_id(bus->store),
			.type_token = TYPE_ACK, .type_len = sizeof TYPE_ACK - 1,
			.expires_us = bus_message_expiry(bus, 0, now),
			.payload = payload.data, .payload_len = payload.len,
			.corr_token = m->corr_len ? m->envelope + m->corr_off : NULL,
			.corr_len = m->corr_len,
		};
		message_encode(rec, &env);
		if (!buf_ok(&payload))
			buf_fail(rec);
		buf_free(&payload);
	}
	return bus_commit(bus, err);
}

static void log_dropped_ack(struct bus *bus, const char *agent, const char *from, const char *id)
{
	struct bus_error note;
	bus_fail(&note, ENOENT, "ack of %s dropped: its sender %s is no longer registered", id,
		 from);
	bus_log_error(bus, agent, "ack", "ack", 0, &note);
}

/* The delivery number of the agent's message msg_id: its counter, unless a message
 * from another node (which keeps its own msg_id) holds that id. */
static uint64_t number_of(struct bus *bus, uint64_t agent_id, const char *id, uint64_t counter)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	uint64_t number = 0;
	for (enum bus_place p = BUS_INBOX; a && !number && p <= BUS_DEAD; p++) {
		const struct inbox *in = agent_place(a, p);
		struct bus_message *m = inbox_find(in, counter);
		if (m && strcmp(m->msg_id, id) == 0)
			number = counter;
		for (size_t i = in->head; i < in->tail && !number; i++)
			if (in->msgs[i] && strcmp(in->msgs[i]->msg_id, id) == 0)
				number = in->msgs[i]->number;
	}
	pthread_mutex_unlock(&bus->lock);
	return number ? number : counter;
}

/* The v1 ack (token 0: the message must be pending in the inbox) or the ack of a
 * lease (token: it must be the message's current lease). */
static int ack(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
	       uint64_t token, uid_t uid, struct bus_error *err)
{
	bool dropped = false;
	char from[BUS_NAME_MAX + 1] = "", id[BUS_MSG_ID_LEN + 1] = "", name[BUS_NAME_MAX + 1] = "";
	bus_lock(bus);
	struct agent *a = bus_owned_agent(bus, agent_id, uid, "consume messages of", err);
	struct bus_message *m = NULL;
	int rc;
	if (!a) {
		rc = -err->code;
	} else if (token) {
		m = lease_check(bus, a, number, msg_id, token, err);
		rc = m ? 0 : -err->code;
	} else if (!(m = inbox_find(&a->inbox, number)) ||
		   (msg_id && strcmp(m->msg_id, msg_id) != 0)) {
		struct bus_message *leased = inbox_find(&a->inflight, number);
		if (leased && msg_id && strcmp(leased->msg_id, msg_id) == 0)
			rc = bus_fail(err, ESTALE, "%s is leased: ack it with its lease token (ack "
				      "MSG_ID TOKEN, or rm its file in inflight/)", msg_id);
		else
			rc = bus_fail(err, ENOENT, "no message %s in the inbox of %s",
				      msg_id ? msg_id : "with that number", a->name);
		m = NULL;
	} else {
		rc = 0;
	}
	if (m) {
		snprintf(from, sizeof from, "%s", m->from);
		snprintf(id, sizeof id, "%s", m->msg_id);
		memcpy(name, a->name, sizeof name);
		rc = ack_message(bus, a, m, err, &dropped);
	}
	bus_unlock_and_wake(bus);
	if (rc == 0 && dropped)
		log_dropped_ack(bus, name, from, id);
	return rc;
}

int bus_ack(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id, uid_t uid,
	    struct bus_error *err)
{
	return ack(bus, agent_id, number, msg_id, 0, uid, err);
}

int bus_lease_ack(struct bus *bus, uint64_t agent_id, uint64_t number, const char *msg_id,
		  uint64_t token, uid_t uid, struct bus_error *err)
{
	if (!token)
		return bus_fail(err, ESTALE, "token 0 is never a lease");
	return ack(bus, agent_id, number, msg_id, token, uid, err);
}

/* ---------- ctl ---------- */

#define CTL_USAGE "drain, resume, ack MSG_ID [TOKEN], extend MSG_ID TOKEN [SECONDS], " \
		  "nak MSG_ID TOKEN [DELAY_S] or retry MSG_ID"

/* A token: decimal digits, no sign, 1 to 2^64 - 1. */
static bool parse_token(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (!*s)
		return false;
	for (; *s; s++) {
		uint64_t d = (uint64_t)(*s - '0');
		if (*s < '0' || *s > '9' || v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return v > 0;
}

/* Seconds: decimal digits, an optional fraction after a '.' (no sign, exponent or hex),
 * at most 31 days. */
static bool parse_seconds(const char *s, double *out)
{
	size_t digits = strspn(s, "0123456789");
	const char *frac = s + digits;
	if (*frac == '.')
		frac += 1 + strspn(frac + 1, "0123456789");
	if (digits == 0 || *frac != '\0' || digits > 8)
		return false;
	*out = strtod(s, NULL);
	return *out <= BUS_MAX_SECONDS;
}

static int set_draining(struct bus *bus, uint64_t agent_id, uid_t uid, bool drain,
			struct bus_error *err)
{
	bus_lock(bus);
	struct agent *a = bus_owned_agent(bus, agent_id, uid, "control", err);
	int rc = a ? 0 : -err->code;
	if (a && a->draining != drain) {
		buf_reset(&bus->rec);
		buf_put_u8(&bus->rec, REC_STATE);
		buf_put_str(&bus->rec, a->name);
		buf_put_u8(&bus->rec, drain);
		rc = bus_commit(bus, err);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

int bus_ctl(struct bus *bus, uint64_t agent_id, uid_t uid, const char *data, size_t len,
	    struct bus_error *err)
{
	char cmd[160];
	while (len && json_space(data[len - 1]))
		len--;
	while (len && (data[0] == ' ' || data[0] == '\t')) {
		data++;
		len--;
	}
	if (len == 0 || len >= sizeof cmd || memchr(data, '\0', len) || memchr(data, '\n', len))
		return bus_fail(err, EINVAL, "ctl takes one command: " CTL_USAGE);
	memcpy(cmd, data, len);
	cmd[len] = '\0';

	/* Words separated by blanks: the verb and up to three arguments. */
	char *w[5] = {0};
	int n = 0;
	for (char *p = strtok(cmd, " \t"); p; p = strtok(NULL, " \t"))
		if (n < 5)
			w[n++] = p;
	const char *verb = w[0];
	if (n == 1 && (strcmp(verb, "drain") == 0 || strcmp(verb, "resume") == 0))
		return set_draining(bus, agent_id, uid, strcmp(verb, "drain") == 0, err);

	bool with_token = strcmp(verb, "extend") == 0 || strcmp(verb, "nak") == 0;
	bool known = with_token || strcmp(verb, "ack") == 0 || strcmp(verb, "retry") == 0;
	if (!known)
		return bus_fail(err, EINVAL, "unknown ctl command '%.60s': use " CTL_USAGE, verb);
	int most = strcmp(verb, "retry") == 0 ? 2 : strcmp(verb, "ack") == 0 ? 3 : 4;
	if (n < 2 || n > most || (with_token && n < 3))
		return bus_fail(err, EINVAL, "'%s' takes %s", verb,
				strcmp(verb, "retry") == 0 ? "MSG_ID"
				: strcmp(verb, "ack") == 0 ? "MSG_ID [TOKEN]"
				: strcmp(verb, "extend") == 0 ? "MSG_ID TOKEN [SECONDS]"
							       : "MSG_ID TOKEN [DELAY_S]");
	const char *id = w[1];
	uint64_t number = message_id_number(id), token = 0;
	double seconds = 0;
	if (!number)
		return bus_fail(err, EINVAL, "'%.60s' is not a msg_id", id);
	number = number_of(bus, agent_id, id, number);
	if (n >= 3 && !parse_token(w[2], &token))
		return bus_fail(err, EINVAL, "'%.30s' is not a lease token", w[2]);
	if (n == 4 && !parse_seconds(w[3], &seconds))
		return bus_fail(err, EINVAL, "'%.30s' is not a number of seconds from 0 to %.0f "
				"(digits, an optional fraction)", w[3], BUS_MAX_SECONDS);
	if (n == 4 && strcmp(verb, "extend") == 0 && seconds < 1)
		return bus_fail(err, EINVAL, "a lease is extended by 1 to %.0f seconds",
				BUS_MAX_SECONDS);

	if (strcmp(verb, "retry") == 0)
		return bus_dead_retry(bus, agent_id, number, id, uid, err);
	if (strcmp(verb, "extend") == 0)
		return bus_lease_extend(bus, agent_id, number, id, token, seconds, uid, err);
	if (strcmp(verb, "nak") == 0)
		return bus_lease_nak(bus, agent_id, number, id, token, seconds, uid, err);
	return ack(bus, agent_id, number, id, token, uid, err);
}

int bus_ctl_render(struct bus *bus, uint64_t agent_id, struct buf *out)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	if (a)
		buf_printf(out, "{\"agent\":\"%s\",\"state\":\"%s\",\"inbox_depth\":%zu,"
			   "\"reserved\":%u,\"delivered_total\":%" PRIu64 ",\"acked_total\":%" PRIu64
			   ",\"leased\":%zu,\"dead\":%zu,\"redelivered_total\":%" PRIu64 "}\n",
			   a->name, a->draining ? "draining" : "active", a->inbox.live, a->reserved,
			   a->delivered_total, a->acked_total, a->inflight.live, a->dead.live,
			   a->redelivered_total);
	pthread_mutex_unlock(&bus->lock);
	return a ? 0 : -ENOENT;
}
