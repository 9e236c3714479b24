/*
 * fuzz_store.c — store records on recovery: core/store.c (journal and snapshot
 * framing) and core/bus.c apply_record (every record type), through bus_open,
 * bus_check_store and bus_close on a fresh store made from the input.
 *
 * Input:
 *   byte 0   flags: 1 = the first K records go to a snapshot (and the rest to the
 *            journal); 2 = the journal's generation is covered by the snapshot's (the
 *            journal is ignored); 4 = the snapshot has no end frame; 8 = the bytes after
 *            the last whole record are appended raw to the journal (a torn tail);
 *            16 = one frame's CRC is wrong; 32 = the format file says format 2;
 *            64 = the journal has no valid header; 128 = headers of version 2 (with
 *            their CRC) instead of version 1
 *   byte 1   K, and which frame (16) is damaged
 *   then     records, each a u16 little-endian length and that many bytes (the record:
 *            type byte, then its fields); each becomes a frame with a valid CRC-32, so
 *            the apply function sees exactly these bytes.
 * (tests/fuzz/gen_store_seeds.c writes real stores in this form for the seed corpus.)
 *
 * Invariants: crc32_compute is CRC-32 (checked against a bitwise reference on every
 * record); nothing crashes, leaks or reads out of bounds; a store that cannot load
 * gives an error with a reason. When bus_open accepts the store, the bus invariant
 * holds (pending == the sum of inbox depths and leases), and what bus_close then writes (a
 * snapshot of the loaded state) opens again into the same state: same agents with the
 * same depth, outbox, drain state and counters; the store busfs wrote itself must
 * always load. A store refused as damaged (EBADMSG) is salvaged, and what the salvage
 * writes must then open.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include "busfs/store.h"
#include "common.h"

#define MAX_AGENTS 64

static char root[4200];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	snprintf(root, sizeof root, "%s/store", fuzz_tmpdir("store"));
	return 0;
}

static void put_le32(struct buf *b, uint32_t v) { buf_put_u32(b, v); }

/* CRC-32 (zlib polynomial) bit by bit, to hold crc32_compute (sliced by 8) to the
 * format: a different checksum would make every existing store unloadable. */
static uint32_t ref_crc32(const uint8_t *p, size_t n)
{
	uint32_t c = 0xffffffffu;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
	}
	return c ^ 0xffffffffu;
}

static void header(struct buf *b, const char *magic, uint64_t gen, bool v2)
{
	uint8_t h[16] = {0};
	memcpy(h, magic, 7);
	if (!v2) {
		buf_append(b, h, 8);
		buf_put_u64(b, gen);
		return;
	}
	h[6] = '2';
	for (int i = 0; i < 4; i++)
		h[8 + i] = (uint8_t)(gen >> (8 * i));
	uint32_t crc = ref_crc32(h, 12);
	buf_append(b, h, 12);
	put_le32(b, crc);
}

static void frame(struct buf *b, const uint8_t *rec, size_t len, bool bad_crc)
{
	/* From every offset (alignment) of the record, for the sliced loop's tail. */
	for (size_t skip = 0; skip < 8 && skip <= len; skip++)
		FUZZ_CHECK(crc32_compute(rec + skip, len - skip) == ref_crc32(rec + skip, len - skip),
			   "crc32_compute differs from CRC-32 on %zu byte(s)", len - skip);
	put_le32(b, (uint32_t)len);
	put_le32(b, crc32_compute(rec, len) ^ (bad_crc ? 1u : 0u));
	buf_append(b, rec, len);
}

struct state {
	struct bus_stats st;
	size_t n;
	struct bus_agent_info a[MAX_AGENTS];
};

static int take_agent(void *ctx, const struct bus_agent_info *a)
{
	struct state *s = ctx;
	if (s->n < MAX_AGENTS)
		s->a[s->n++] = *a;
	return 0;
}

/* Pending messages: in inboxes, or leased (inflight/). */
static int count_depth(void *ctx, const struct bus_agent_info *a)
{
	*(uint64_t *)ctx += a->depth + a->leased;
	return 0;
}

static void snapshot_state(struct bus *bus, struct state *s)
{
	memset(s, 0, sizeof *s);
	bus_stats(bus, &s->st);
	bus_agent_list(bus, 0, take_agent, s);
	uint64_t sum = 0;
	bus_agent_list(bus, 0, count_depth, &sum);
	FUZZ_CHECK(sum + s->st.remote_queued == s->st.pending, "a loaded store: pending %" PRIu64
		   " != the sum of inbox depths and leases %" PRIu64 " + %" PRIu64 " queued for other "
		   "nodes", s->st.pending, sum, s->st.remote_queued);
}

static void compare(const struct state *x, const struct state *y, const char *dir)
{
	FUZZ_CHECK(x->st.agents == y->st.agents && x->st.pending == y->st.pending &&
		   x->st.remote_queued == y->st.remote_queued &&
		   x->st.delivered_total == y->st.delivered_total &&
		   x->st.rejected_total == y->st.rejected_total,
		   "the snapshot busfs wrote reloads differently: agents %u/%u, pending %" PRIu64
		   "/%" PRIu64 ", delivered %" PRIu64 "/%" PRIu64 ", rejected %" PRIu64 "/%" PRIu64
		   " (%s)", x->st.agents, y->st.agents, x->st.pending, y->st.pending,
		   x->st.delivered_total, y->st.delivered_total, x->st.rejected_total,
		   y->st.rejected_total, dir);
	FUZZ_CHECK(x->n == y->n, "agent lists differ");
	for (size_t i = 0; i < x->n; i++) {
		const struct bus_agent_info *a = &x->a[i], *b = &y->a[i];
		FUZZ_CHECK(strcmp(a->name, b->name) == 0 && a->depth == b->depth &&
			   a->draining == b->draining && a->uid == b->uid && a->gid == b->gid &&
			   a->created_us == b->created_us &&
			   a->delivered_total == b->delivered_total &&
			   a->acked_total == b->acked_total && a->last_seen_us == b->last_seen_us &&
			   a->outbox_count == b->outbox_count,
			   "agent %s reloads differently: depth %u/%u, draining %d/%d, outbox %u/%u, "
			   "delivered %" PRIu64 "/%" PRIu64 ", acked %" PRIu64 "/%" PRIu64,
			   a->name, a->depth, b->depth, a->draining, b->draining, a->outbox_count,
			   b->outbox_count, a->delivered_total, b->delivered_total, a->acked_total,
			   b->acked_total);
	}
}

static int noop_msg(void *ctx, const struct bus_message *m)
{
	(*(size_t *)ctx) += m->len;
	return 0;
}

/* Reads everything a mounted bus would show, to reach the code that renders state. */
static void render_all(struct bus *bus, const struct state *s)
{
	struct buf out;
	buf_init(&out);
	bus_status_render(bus, &out);
	bus_prom_render(bus, &out);
	bus_summary_render(bus, &out);
	bus_rules_render(bus, &out);
	bus_rules_user(bus, &out);
	bus_active_render(bus, &out);
	for (size_t i = 0; i < s->n; i++) {
		uint64_t id = s->a[i].id;
		bus_health_render(bus, id, &out);
		bus_ctl_render(bus, id, &out);
		size_t bytes = 0;
		bus_inbox_list(bus, id, 0, noop_msg, &bytes);
		bus_outbox_list(bus, id, 0, noop_msg, &bytes);
		struct bus_message *m = NULL;
		bool draining;
		if (bus_next_peek(bus, id, &m, &draining) == 0)
			message_unref(m);
	}
	FUZZ_CHECK(buf_ok(&out), "render failed");
	buf_free(&out);
	bus_tick(bus);
}

/* A damaged store: after busfs --salvage it must open and pass the check. */
static void salvage_then_open(const struct bus_config *cfg)
{
	struct buf report;
	buf_init(&report);
	int rc = bus_salvage_store(cfg->store_dir, &report);
	FUZZ_CHECK(rc == 0, "salvage failed: %s", report.data ? report.data : "");
	buf_free(&report);
	struct bus *bus = NULL;
	struct bus_error err = {0};
	rc = bus_open(cfg, &bus, &err);
	FUZZ_CHECK(rc == 0, "the salvaged store does not open: %s", err.reason);
	bus_close(bus);
}

static void check_store(const char *dir)
{
	struct buf report;
	buf_init(&report);
	bus_check_store(dir, &report);
	FUZZ_CHECK(buf_ok(&report) && report.len && report.data[report.len - 1] == '\n',
		   "bus_check_store wrote no report");
	buf_free(&report);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint8_t flags = data[0], k = data[1];

	/* The records. */
	const uint8_t *recs[1024];
	size_t lens[1024], n = 0, at = 2;
	while (n < 1024 && at + 2 <= size) {
		size_t len = (size_t)data[at] | (size_t)data[at + 1] << 8;
		if (at + 2 + len > size)
			break;
		recs[n] = data + at + 2;
		lens[n++] = len;
		at += 2 + len;
	}
	size_t nsnap = flags & 1 ? k % (n + 1) : 0;
	size_t bad = flags & 16 && n ? k % n : (size_t)-1;

	fuzz_rmtree(root);
	FUZZ_CHECK(mkdir(root, 0700) == 0, "mkdir %s", root);
	char path[4300];
	snprintf(path, sizeof path, "%s/format", root);
	const char *format = flags & 32 ? "busfs-store 2\nid 0000abcd\n" : "busfs-store 1\nid 0000abcd\n";
	fuzz_write_file(path, format, strlen(format));

	/* Without a snapshot the journal is the first one, of generation 1. */
	uint64_t snap_gen = 7, journal_gen = !(flags & 1) ? 1 : flags & 2 ? 7 : 8;
	bool v2 = flags & 128;
	struct buf b;
	buf_init(&b);
	if (flags & 1) {
		header(&b, "BUSFSS1", snap_gen, v2);
		for (size_t i = 0; i < nsnap; i++)
			frame(&b, recs[i], lens[i], i == bad);
		if (!(flags & 4))
			frame(&b, (const uint8_t *)"", 0, false);
		snprintf(path, sizeof path, "%s/snapshot", root);
		fuzz_write_file(path, b.data, b.len);
		buf_reset(&b);
	}
	header(&b, flags & 64 ? "BUSFSX1" : "BUSFSJ1", journal_gen, v2);
	for (size_t i = nsnap; i < n; i++)
		frame(&b, recs[i], lens[i], i == bad);
	if (flags & 8)
		buf_append(&b, data + at, size - at);
	snprintf(path, sizeof path, "%s/journal", root);
	fuzz_write_file(path, b.data, b.len);
	buf_free(&b);

	/* Read-only, as busfs --check does. */
	check_store(root);

	struct bus_config cfg = {.store_dir = root, .store_max_bytes = 1ull << 30};
	struct bus *bus = NULL;
	struct bus_error err = {0};
	int rc = bus_open(&cfg, &bus, &err);
	if (rc < 0) {
		FUZZ_CHECK(!bus && err.code == -rc && err.reason[0], "open refused with %d, no reason",
			   rc);
		if (rc == -EBADMSG)
			salvage_then_open(&cfg);
		return 0;
	}
	struct state before, after;
	snapshot_state(bus, &before);
	bus_close(bus);

	/* What bus_close wrote must open again, into the same state. */
	bus = NULL;
	rc = bus_open(&cfg, &bus, &err);
	FUZZ_CHECK(rc == 0, "the store busfs itself wrote at close does not open again: %s",
		   err.reason);
	snapshot_state(bus, &after);
	compare(&before, &after, root);
	render_all(bus, &after);
	bus_close(bus);
	check_store(root);
	return 0;
}
