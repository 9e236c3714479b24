/* records.c — the journal's record kinds as one table, and the commit.
 *
 * Every change to the bus is one record: an operation builds it in bus->rec,
 * bus_commit appends it to the journal and then applies it, and recovery applies the
 * snapshot's and the journal's records with the very same functions, so a restart
 * rebuilds exactly what the running server had. Each row of record_kinds names a
 * kind, says whether it may appear in the journal or only in a snapshot, and gives
 * its apply (decode and change the state; a refusal during loading means damage) and
 * its save (write the live state of that concept into a snapshot). The rows are in
 * snapshot order: a snapshot restates counters, then agents, then what refers to them.
 * `busfs --check` and `--salvage` load through the same table (check.c). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bus_impl.h"

/* ---------- counters: REC_SNAP_HEAD, REC_REJECT, REC_SNAP_REJECT ---------- */

/* REC_SNAP_HEAD: u64 counter, u64 delivered_total, u64 rejected_total, then (stores
 * that had leases) u64 last_token, u64 redeliveries_total and u64 dead letters made
 * by reason: discarded, max_deliver, expired, then u64 duplicates_total, then u64 the
 * events log's last seq. */
static int head_apply(struct bus *bus, struct reader *r)
{
	bus->counter = rd_u64(r);
	bus->delivered_total = rd_u64(r);
	bus->rejected_total = rd_u64(r);
	if (r->pos < r->len) {
		bus->last_token = rd_u64(r);
		bus->redeliveries_total = rd_u64(r);
		for (int i = 0; i < DEAD_NREASONS; i++)
			bus->dead_total[i] = rd_u64(r);
	}
	if (r->pos < r->len)
		bus->duplicates_total = rd_u64(r);
	if (r->pos < r->len)
		bus->events.seq = rd_u64(r);
	return r->bad ? -EINVAL : 0;
}

static int head_save(struct bus *bus, struct buf *b)
{
	buf_put_u8(b, REC_SNAP_HEAD);
	buf_put_u64(b, bus->counter);
	buf_put_u64(b, bus->delivered_total);
	buf_put_u64(b, bus->rejected_total);
	buf_put_u64(b, bus->last_token);
	buf_put_u64(b, bus->redeliveries_total);
	for (int i = 0; i < DEAD_NREASONS; i++)
		buf_put_u64(b, bus->dead_total[i]);
	buf_put_u64(b, bus->duplicates_total);
	buf_put_u64(b, bus->events.seq);
	return bus_snapshot_put(bus, b);
}

/* REC_REJECT: u32 errno, one refused operation. */
static int reject_apply(struct bus *bus, struct reader *r)
{
	uint32_t code = rd_u32(r);
	if (r->bad)
		return -EINVAL;
	bus->rejected_total++;
	bus->rejected_by[code < BUS_ERRNO_MAX ? code : 0]++;
	return 0;
}

/* REC_SNAP_REJECT: u32 errno, u64 count. */
static int reject_count_apply(struct bus *bus, struct reader *r)
{
	uint32_t code = rd_u32(r);
	uint64_t n = rd_u64(r);
	if (r->bad)
		return -EINVAL;
	bus->rejected_by[code < BUS_ERRNO_MAX ? code : 0] = n;
	return 0;
}

static int reject_count_save(struct bus *bus, struct buf *b)
{
	int rc = 0;
	for (uint32_t code = 0; code < BUS_ERRNO_MAX && rc == 0; code++) {
		if (!bus->rejected_by[code])
			continue;
		buf_put_u8(b, REC_SNAP_REJECT);
		buf_put_u32(b, code);
		buf_put_u64(b, bus->rejected_by[code]);
		rc = bus_snapshot_put(bus, b);
	}
	return rc;
}

/* ---------- the table ---------- */

#define JOURNAL false
#define SNAPSHOT_ONLY true

static const struct record_kind record_kinds[] = {
	{REC_SNAP_HEAD, "counters", SNAPSHOT_ONLY, head_apply, head_save},
	{REC_SNAP_REJECT, "refusal counts", SNAPSHOT_ONLY, reject_count_apply, reject_count_save},
	{REC_SNAP_SEQ, "pair sequence", SNAPSHOT_ONLY, seq_apply, seq_save},
	{REC_SNAP_DEDUPE, "idempotency key", SNAPSHOT_ONLY, dedupe_apply, dedupe_save},
	{REC_AGENT_ADD, "agent added", JOURNAL, agent_add_apply, agent_save},
	{REC_HEALTH, "health report", JOURNAL, health_apply, health_save},
	{REC_RULES, "alert rules", JOURNAL, rules_apply, rules_save},
	{REC_ALERT, "alert", JOURNAL, alert_apply, alert_save},
	{REC_SNAP_MSG, "message", SNAPSHOT_ONLY, snap_msg_apply, snap_msg_save},
	{REC_AGENT_DEL, "agent removed", JOURNAL, agent_del_apply, NULL},
	{REC_STATE, "drain or resume", JOURNAL, state_apply, NULL},
	{REC_DELIVER, "delivery", JOURNAL, deliver_apply, NULL},
	{REC_ACK, "ack", JOURNAL, ack_apply, NULL},
	{REC_BEAT, "heartbeat", JOURNAL, beat_apply, NULL},
	{REC_REJECT, "refusal", JOURNAL, reject_apply, NULL},
	{REC_LEASE, "lease", JOURNAL, lease_apply, NULL},
	{REC_RELEASE, "lease ended", JOURNAL, release_apply, NULL},
	{REC_DEAD, "dead letter", JOURNAL, dead_apply, NULL},
	{REC_RETRY, "retry", JOURNAL, retry_apply, NULL},
	{REC_DISCARD, "dead discarded", JOURNAL, discard_apply, NULL},
	{REC_DELIVER_KEYED, "keyed delivery", JOURNAL, deliver_keyed_apply, NULL},
};

#define NKINDS (sizeof record_kinds / sizeof record_kinds[0])

const struct record_kind *record_kind_of(uint8_t type)
{
	for (size_t i = 0; i < NKINDS; i++)
		if (record_kinds[i].type == type)
			return &record_kinds[i];
	return NULL;
}

int bus_apply_record(void *ctx, const uint8_t *rec, size_t len, bool from_snapshot)
{
	struct bus *bus = ctx;
	const struct record_kind *k = record_kind_of(rec[0]);
	/* An unknown kind is damage; snapshot records in a journal would repeat state. */
	if (!k || (!from_snapshot && k->snapshot_only))
		return -EINVAL;
	struct reader r = {rec, len, 1, false};
	uint64_t seq = bus->events.seq;
	size_t lines_len = bus->events.lines.len;
	bus->restating = from_snapshot;
	int rc = k->apply(bus, &r);
	bus->restating = false;
	if (rc < 0)
		events_discard(bus, seq, lines_len); /* a record that did not apply happened not */
	else
		events_flush(bus);
	if (rc == 0)
		bus->records_by_kind[rec[0]]++;
	return rc;
}

void bus_records_report(const struct bus *bus, struct buf *report)
{
	for (size_t i = 0; i < NKINDS; i++) {
		uint64_t n = bus->records_by_kind[record_kinds[i].type];
		if (n)
			buf_printf(report, "  %-16s %" PRIu64 "\n", record_kinds[i].name, n);
	}
}

/* ---------- commit and space ---------- */

static int compact_locked(struct bus *bus);

/* What the messages held take in a snapshot, near enough: each envelope and, for the
 * rest of its record (names, msg_id, numbers, framing), 128 bytes. */
static uint64_t messages_part(const struct bus *bus)
{
	return bus->messages.bytes + 128 * (uint64_t)bus->messages.count;
}

/* The size of a snapshot written now, foreseen as the last snapshot's (snap bytes)
 * with the part its messages took replaced by what the messages held now take. */
static uint64_t snapshot_foreseen(const struct bus *bus, uint64_t snap)
{
	uint64_t rest = snap > bus->compacted_part ? snap - bus->compacted_part : 0;
	return rest + messages_part(bus);
}

/* Whether a snapshot now would at least halve the store: a store that only grew, a
 * backlog filling up, would be rewritten whole for nothing, again and again. */
static bool compaction_pays(struct bus *bus, uint64_t journal, uint64_t snap)
{
	return journal + snap > 2 * snapshot_foreseen(bus, snap);
}

bool bus_space_for(struct bus *bus, uint64_t need)
{
	uint64_t max = bus->cfg.store_max_bytes;
	need += store_reserved(bus->store);
	if (store_bytes(bus->store) + need <= max)
		return true;
	/* Consumed messages still take space, in the journal or in the last snapshot; a
	 * snapshot gives it back. Once per change of the bus (or 4 KiB of journal), so a
	 * flood of refused sends does not rewrite the store for each. */
	uint64_t journal = store_journal_bytes(bus->store), snap = store_snapshot_bytes(bus->store);
	bool grown = journal > bus->compacted_at + 4096;
	if (!grown && bus->version == bus->space_version)
		return false;
	bus->space_version = bus->version;
	if (grown || journal + snap > snapshot_foreseen(bus, snap) + 4096) {
		compact_locked(bus);
		bus->compacted_at = store_journal_bytes(bus->store);
		if (store_bytes(bus->store) + need <= max)
			return true;
	}
	/* What is left may be outboxes' copies of messages consumed long ago, which would
	 * refuse every send from now on (and stall every message from other nodes). That
	 * history gives way to new messages. */
	if (outbox_trim(bus) > 0 && compact_locked(bus) == 0)
		bus->compacted_at = store_journal_bytes(bus->store);
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
	int rc = bus_prepare_messages(bus, rec, len);
	if (rc < 0) {
		bus_prepared_clear(bus);
		return rc == -ENOMEM ? bus_fail(err, ENOMEM, "out of memory for the change")
				     : bus_fail(err, EIO, "internal error: a malformed record");
	}
	rc = store_append(bus->store, rec, len);
	if (rc < 0) {
		bus_prepared_clear(bus);
		if (rc == -ENOSPC)
			return bus_fail(err, ENOSPC, "no space left on the store's filesystem");
		return bus_fail(err, EIO, "the store could not record the change: %s",
				strerror(-rc));
	}
	rc = bus_apply_record(bus, rec, len, false);
	bus_prepared_clear(bus);
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
	if (journal > big && journal > 2 * snap && compaction_pays(bus, journal, snap))
		compact_locked(bus);
	return 0;
}

/* ---------- compaction ---------- */

int bus_snapshot_put(struct bus *bus, struct buf *b)
{
	int rc = buf_ok(b) ? store_snapshot_add(bus->store, b->data, b->len) : -ENOMEM;
	buf_reset(b);
	return rc;
}

/* Writes the live state as a snapshot, each kind saving its part in table order;
 * the journal then restarts empty. */
static int compact_locked(struct bus *bus)
{
	/* A snapshot restates records without their events: while the log is behind, the
	 * journal keeps what it must still tell. */
	events_flush(bus);
	if (events_behind(bus))
		return -EAGAIN;
	struct buf b;
	buf_init(&b);
	int rc = store_snapshot_begin(bus->store);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < NKINDS && rc == 0; i++)
		if (record_kinds[i].save)
			rc = record_kinds[i].save(bus, &b);
	buf_free(&b);
	if (rc < 0) {
		store_snapshot_abort(bus->store);
		return rc;
	}
	rc = store_snapshot_commit(bus->store);
	if (rc == 0)
		bus->compacted_part = messages_part(bus);
	return rc;
}

int bus_compact(struct bus *bus)
{
	bus_lock(bus);
	int rc = compact_locked(bus);
	bus_unlock_and_wake(bus);
	return rc;
}

void bus_compact_locked(struct bus *bus) { compact_locked(bus); }

void bus_compaction_baseline(struct bus *bus)
{
	uint64_t snap = store_snapshot_bytes(bus->store), part = messages_part(bus);
	bus->compacted_part = part < snap ? part : snap;
	/* A store opened full of what a snapshot would give back makes room at the first
	 * send, before any change. */
	bus->space_version = bus->version - 1;
}

uint64_t bus_journal_written(struct bus *bus) { return store_appended(bus->store); }

int bus_journal_sync(struct bus *bus, uint64_t *synced)
{
	bus_lock(bus);
	uint64_t covers = 0;
	int fd = store_sync_handle(bus->store, &covers);
	pthread_mutex_unlock(&bus->lock);
	if (fd < 0)
		return fd;
	/* Outside the lock: commits go on meanwhile, and the next sync covers them. */
	int rc = fdatasync(fd) < 0 ? -errno : 0;
	close(fd);
	if (rc == 0)
		*synced = covers;
	return rc;
}
