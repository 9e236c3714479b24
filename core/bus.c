/* bus.c — the bus as a whole: its lock and wake-ups, opening (load the store, then
 * the metrics and alerts logs), closing (compact), counters and the errors logs.
 *
 * The state is changed only by applying records (records.c); this file owns the
 * struct bus and everything hung on it, freed by bus_free. Wake-ups gathered while
 * the lock is held are delivered after it is released (bus_unlock_and_wake). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus_impl.h"
#include "busfs/clock.h"
#include "busfs/json.h"

/* ---------- the lock and wake-ups ---------- */

void bus_tick_second(struct bus *bus)
{
	bus_lock(bus);
	int64_t now = bus_clock_now_us();
	store_mark(bus->store);
	events_flush(bus); /* lines held for want of room, when there is room again */
	dedupe_expire(bus, now);
	lease_tick_locked(bus, now);
	bus_unlock_and_wake(bus);
}

void bus_lock(struct bus *bus) { pthread_mutex_lock(&bus->lock); }

/* Unmarks the agents in the list of agents to wake (under the lock). */
void wake_flags_clear(struct bus *bus)
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
	bus->events_wake_queued = false;
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
int wake_reserve(struct bus *bus, size_t more)
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

void want_wake(struct bus *bus, uint64_t id)
{
	/* Agent ids start at 1: BUS_EVENTS_WAKE_ID (0) is the events log's. */
	bool events = id == BUS_EVENTS_WAKE_ID;
	struct agent *a = events ? NULL : bus_find_id(bus, id);
	if ((a && a->wake_queued) || (events && bus->events_wake_queued))
		return;
	if (wake_reserve(bus, 1) < 0)
		return;
	bus->wake_ids[bus->wake_n++] = id;
	if (a)
		a->wake_queued = true;
	bus->events_wake_queued |= events;
}


/* ---------- life cycle ---------- */

struct bus *bus_alloc(const struct bus_config *cfg)
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
	if (!(bus->cfg.lease_s > 0))
		bus->cfg.lease_s = 60;
	if (!bus->cfg.max_deliver)
		bus->cfg.max_deliver = 5;
	if (!(bus->cfg.message_ttl_s >= 0))
		bus->cfg.message_ttl_s = 0;
	if (!(bus->cfg.dedupe_window_s > 0))
		bus->cfg.dedupe_window_s = 120;
	if (!bus->cfg.events_retention)
		bus->cfg.events_retention = 100000;
	bus->server_uid = getuid();
	quota_init(&bus->quota);
	bus->next_id = 1;
	bus->started = bus_clock_monotonic();
	strmap_init(&bus->seqs);
	strmap_init(&bus->remote_known);
	strmap_init(&bus->leases);
	strmap_init(&bus->dedupe.map);
	errlog_init(&bus->errors, BUS_ERRORS_KEEP);
	errlog_limit(&bus->errors, BUS_ERRORS_KEEP_PER_UID, BUS_ERRORS_PER_SECOND, bus->server_uid);
	buf_init(&bus->rec);
	rule_set_init(&bus->alerts.user);
	return bus;
}

void bus_free(struct bus *bus)
{
	for (size_t i = 0; i < bus->nagents; i++)
		agent_free(bus->by_id[i]);
	free(bus->by_id);
	gateways_free(bus);
	msgindex_free(&bus->messages);
	free(bus->by_name);
	strmap_free(&bus->seqs);
	strmap_free(&bus->leases);
	dedupe_free(&bus->dedupe);
	free(bus->timers);
	errlog_free(&bus->errors);
	quota_free(&bus->quota);
	buf_free(&bus->rec);
	if (bus->metrics.log)
		metrics_close(&bus->metrics);
	alerts_close(bus);
	events_close(bus);
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
	/* The events log first: the replay writes the events a crash kept out of it. */
	if (rc == 0)
		rc = events_open(bus, err);
	if (rc == 0)
		rc = store_load(bus->store, bus_apply_record, bus, NULL, err);
	if (rc < 0) {
		bus_free(bus);
		return rc;
	}
	wake_flags_clear(bus);
	bus->wake_n = 0;
	bus->events_wake_queued = false;
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
	bus_compaction_baseline(bus);
	*out = bus;
	return 0;
}

void bus_close(struct bus *bus)
{
	if (!bus)
		return;
	bus_lock(bus);
	bus_compact_locked(bus);
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
	out->remote_queued = 0;
	for (size_t i = 0; i < bus->ngateways; i++)
		out->remote_queued += agent_held(bus->gateways[i]);
	out->delivered_total = bus->delivered_total;
	out->rejected_total = bus->rejected_total;
	out->store_bytes = store_bytes(bus->store);
	out->store_max_bytes = bus->cfg.store_max_bytes;
	out->errors_bytes = bus->errors.text.len;
	pthread_mutex_unlock(&bus->lock);
}


/* ---------- errors ---------- */

/* One line of the errors logs. */
static void error_line(struct buf *line, int64_t now, const char *agent, const char *op,
		       const char *path, uid_t uid, const struct bus_error *err)
{
	char ts[BUS_TIME_LEN + 1];
	bus_time_format(now, ts);
	buf_printf(line, "{\"timestamp\":\"%s\",\"op\":\"%s\",\"path\":", ts, op);
	json_append_string(line, path, strlen(path));
	if (agent)
		buf_printf(line, ",\"agent\":\"%s\"", agent);
	buf_printf(line, ",\"uid\":%u,\"errno\":\"%s\",\"reason\":", (unsigned)uid,
		   bus_errno_name(err->code));
	json_append_string(line, err->reason, strlen(err->reason));
	buf_puts(line, "}\n");
}

void bus_log_error(struct bus *bus, const char *agent, const char *op, const char *path,
		   uid_t uid, const struct bus_error *err)
{
	struct buf line;
	buf_init(&line);
	int64_t now = bus_clock_now_us();
	error_line(&line, now, agent, op, path, uid, err);
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

void bus_note_locked(struct bus *bus, const char *agent, const char *op, const char *path,
		     const struct bus_error *err)
{
	struct buf line;
	buf_init(&line);
	int64_t now = bus_clock_now_us();
	error_line(&line, now, agent, op, path, bus->server_uid, err);
	if (buf_ok(&line)) {
		errlog_add_by(&bus->errors, bus->server_uid, now, line.data, line.len);
		struct agent *a = agent ? bus_find(bus, agent) : NULL;
		if (a)
			errlog_add(&a->errors, line.data, line.len);
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

