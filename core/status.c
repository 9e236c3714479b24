/* status.c — agent health and the bus status document (SPEC §4).
 *
 * The store keeps each agent's last report and the time of its last report or
 * heartbeat. `stale` and `unknown`, ages and the bus-wide status are computed when a
 * document is rendered, from the wall clock at that moment. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bus_impl.h"
#include "busfs/clock.h"
#include "busfs/json.h"

enum health_status bus_agent_health(const struct bus *bus, const struct agent *a, int64_t now_us)
{
	return health_effective(a->health, a->last_seen_us, now_us,
				(int64_t)(bus->cfg.health_ttl_s * 1e6));
}

static void put_health(struct buf *b, const struct agent *a)
{
	buf_put_u8(b, REC_HEALTH);
	buf_put_str(b, a->name);
	buf_put_u8(b, (uint8_t)a->health);
	buf_put_u64(b, (uint64_t)a->last_seen_us);
	buf_put_bytes(b, a->health_reason.data, a->health_reason.len);
	buf_put_bytes(b, a->health_extra.data, a->health_extra.len);
}

/* REC_HEALTH: str agent, u8 status, u64 last_seen_us, bytes reason, bytes extra. */
int health_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	rd_str(r, name, sizeof name);
	uint8_t status = rd_u8(r);
	uint64_t seen = rd_u64(r);
	size_t rlen = 0, xlen = 0;
	if (seen > (uint64_t)INT64_MAX / 2)
		return -EINVAL;
	const char *reason = rd_bytes(r, &rlen);
	const char *extra = rd_bytes(r, &xlen);
	if (r->bad || status > HEALTH_UNHEALTHY || !(a = bus_find_agent(bus, name)))
		return -EINVAL;
	if (a->health != (enum health_status)status || !a->last_seen_us) {
		char f[48];
		snprintf(f, sizeof f, ",\"status\":\"%s\"", health_status_name(status));
		event_emit(bus, "health", a->name, f);
	}
	a->health = (enum health_status)status;
	a->last_seen_us = (int64_t)seen;
	bus_time_format(a->last_seen_us, a->last_seen_text);
	buf_reset(&a->health_reason);
	buf_append(&a->health_reason, reason, rlen);
	buf_reset(&a->health_extra);
	buf_append(&a->health_extra, extra, xlen);
	return buf_ok(&a->health_reason) && buf_ok(&a->health_extra) ? 0 : -ENOMEM;
}

/* REC_BEAT: str agent, u64 last_seen_us. */
int beat_apply(struct bus *bus, struct reader *r)
{
	char name[BUS_NAME_MAX + 1];
	struct agent *a;
	rd_str(r, name, sizeof name);
	uint64_t seen = rd_u64(r);
	if (r->bad || seen > (uint64_t)INT64_MAX / 2 || !(a = bus_find_agent(bus, name)))
		return -EINVAL;
	a->last_seen_us = (int64_t)seen;
	bus_time_format(a->last_seen_us, a->last_seen_text);
	return 0;
}

/* Every agent that ever reported or beat. */
int health_save(struct bus *bus, struct buf *b)
{
	int rc = 0;
	for (size_t k = 0; k < bus->nagents && rc == 0; k++) {
		const struct agent *a = bus->by_id[k];
		if (!a->health && !a->last_seen_us)
			continue;
		put_health(b, a);
		rc = bus_snapshot_put(bus, b);
	}
	return rc;
}

int bus_health_report(struct bus *bus, uint64_t agent_id, uid_t uid, const char *data,
		      size_t len, struct bus_error *err)
{
	struct health_report rep;
	health_report_init(&rep);
	int rc = health_parse(data, len, &rep, err);
	if (rc < 0) {
		health_report_free(&rep);
		return rc;
	}
	bus_lock(bus);
	struct agent *a = bus_owned_agent(bus, agent_id, uid, "report the health of", err);
	if (!a) {
		rc = -err->code;
	} else {
		struct buf *b = &bus->rec;
		buf_reset(b);
		buf_put_u8(b, REC_HEALTH);
		buf_put_str(b, a->name);
		buf_put_u8(b, (uint8_t)rep.status);
		buf_put_u64(b, (uint64_t)bus_clock_now_us());
		buf_put_bytes(b, rep.reason.data, rep.reason.len);
		buf_put_bytes(b, rep.extra.data, rep.extra.len);
		rc = bus_commit(bus, err);
	}
	bus_unlock_and_wake(bus);
	health_report_free(&rep);
	return rc;
}

int bus_health_beat(struct bus *bus, uint64_t agent_id, uid_t uid, struct bus_error *err)
{
	bus_lock(bus);
	struct agent *a = bus_owned_agent(bus, agent_id, uid, "report the health of", err);
	int rc;
	if (!a) {
		rc = -err->code;
	} else {
		buf_reset(&bus->rec);
		buf_put_u8(&bus->rec, REC_BEAT);
		buf_put_str(&bus->rec, a->name);
		buf_put_u64(&bus->rec, (uint64_t)bus_clock_now_us());
		rc = bus_commit(bus, err);
	}
	bus_unlock_and_wake(bus);
	return rc;
}

/* One agent's health object; returns its effective status. */
static enum health_status render_agent(struct bus *bus, const struct agent *a, int64_t now,
				       bool with_name, struct buf *out)
{
	enum health_status s = bus_agent_health(bus, a, now);
	/* This runs once per agent for health/status: no printf, no gmtime. */
	buf_putc(out, '{');
	if (with_name) {
		buf_puts(out, "\"agent\":\"");
		buf_puts(out, a->name);
		buf_puts(out, "\",");
	}
	buf_puts(out, "\"status\":\"");
	buf_puts(out, health_status_name(s));
	buf_puts(out, "\",\"reason\":");
	json_append_string(out, a->health_reason.data ? a->health_reason.data : "",
			   a->health_reason.len);
	if (a->last_seen_us) {
		int64_t age = now > a->last_seen_us ? now - a->last_seen_us : 0;
		int ms = (int)(age % 1000000 / 1000);
		buf_puts(out, ",\"last_seen\":\"");
		buf_puts(out, a->last_seen_text);
		buf_puts(out, "\",\"age_s\":");
		buf_put_uint(out, (uint64_t)(age / 1000000));
		char frac[5] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10),
				(char)('0' + ms % 10), 0};
		buf_puts(out, frac);
	} else {
		buf_puts(out, ",\"last_seen\":null,\"age_s\":null");
	}
	buf_puts(out, a->draining ? ",\"state\":\"draining\",\"inbox_depth\":"
				  : ",\"state\":\"active\",\"inbox_depth\":");
	buf_put_uint(out, a->inbox.live);
	buf_append(out, a->health_extra.data, a->health_extra.len);
	buf_putc(out, '}');
	return s;
}

int bus_health_render(struct bus *bus, uint64_t agent_id, struct buf *out)
{
	bus_lock(bus);
	struct agent *a = bus_find_id(bus, agent_id);
	if (a) {
		render_agent(bus, a, bus_clock_now_us(), true, out);
		buf_putc(out, '\n');
	}
	pthread_mutex_unlock(&bus->lock);
	return a ? 0 : -ENOENT;
}

void bus_status_render(struct bus *bus, struct buf *out)
{
	unsigned counts[HEALTH_NSTATUS] = {0};
	char ts[BUS_TIME_LEN + 1];
	struct buf agents;
	buf_init(&agents);

	bus_lock(bus);
	int64_t now = bus_clock_now_us();
	for (size_t i = 0; i < bus->nagents; i++) {
		const struct agent *a = bus->by_name[i];
		buf_puts(&agents, i ? ",\"" : "\"");
		buf_puts(&agents, a->name);
		buf_puts(&agents, "\":");
		counts[render_agent(bus, a, now, false, &agents)]++;
	}
	bus_time_format(now, ts);
	double up = bus_clock_monotonic() - bus->started;
	buf_printf(out, "{\"status\":\"%s\",\"timestamp\":\"%s\",\"agents\":{",
		   health_status_name(health_worst(counts)), ts);
	buf_append(out, agents.data, agents.len);
	buf_puts(out, "},\"counts\":{");
	for (int s = HEALTH_HEALTHY; s <= HEALTH_NSTATUS; s++) {
		int k = s % HEALTH_NSTATUS; /* healthy, degraded, unhealthy, stale, unknown */
		buf_printf(out, "%s\"%s\":%u", s > HEALTH_HEALTHY ? "," : "", health_status_name(k),
			   counts[k]);
	}
	buf_printf(out, "},\"bus\":{\"uptime_s\":%.3f,\"agents\":%zu,\"messages_pending\":%" PRIu64
		   ",\"messages_delivered_total\":%" PRIu64 ",\"messages_rejected_total\":%" PRIu64
		   "}}\n", up > 0 ? up : 0.0, bus->nagents, bus->pending, bus->delivered_total,
		   bus->rejected_total);
	pthread_mutex_unlock(&bus->lock);
	buf_free(&agents);
}
