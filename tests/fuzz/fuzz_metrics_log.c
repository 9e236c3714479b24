/*
 * fuzz_metrics_log.c — the metric points log on recovery: core/seglog.c (segment
 * names, torn tails, reads by offset) and core/metrics.c (rebuilding summaries and
 * agent views from the JSONL lines, the STORE/metrics/views file), through bus_open.
 *
 * Input: byte 0 = flags (1: the bytes up to the cut are STORE/metrics/views; 2: the
 * log starts at offset 1000, not 0; 4: the log is two segments, cut at the same
 * point; 8: the second segment overlaps the first), byte 1 = the cut, as a share of
 * the rest, which is the log's text (lines as metric_format_point writes them).
 *
 * Invariants: nothing crashes; a log that cannot be opened gives an error with a
 * reason. When it opens: the log reads back exactly as the segments hold it, up to
 * the last newline of the last segment (a torn line is cut, nothing else is lost);
 * its size only grows: a new point appends exactly its line, and a restart keeps
 * every byte and the size; summaries, the Prometheus text and alert evaluation run
 * over whatever the lines held.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

static char root[4200];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	snprintf(root, sizeof root, "%s/store", fuzz_tmpdir("mlog"));
	return 0;
}

/* The whole log as the bus shows it (metrics/metrics.jsonl). */
static void read_log(struct bus *bus, struct buf *out, uint64_t *first)
{
	char chunk[4096];
	uint64_t off = 0;
	bool started = false;
	for (;;) {
		uint64_t at = off;
		ssize_t r = bus_metrics_read(bus, 0, &at, chunk, sizeof chunk);
		FUZZ_CHECK(r >= 0, "bus_metrics_read: %zd", r);
		if (r == 0)
			break;
		if (!started) {
			*first = at;
			started = true;
		}
		FUZZ_CHECK(at == off || at > off, "read went backwards");
		buf_append(out, chunk, (size_t)r);
		off = at + (uint64_t)r;
	}
	if (!started)
		*first = off;
}

static struct bus *open_bus(struct bus_error *err, int *rc)
{
	struct bus_config cfg = {.store_dir = root, .store_max_bytes = 1ull << 30};
	struct bus *bus = NULL;
	*rc = bus_open(&cfg, &bus, err);
	return bus;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint8_t flags = data[0];
	const char *text = (const char *)data + 2;
	size_t len = size - 2, cut = (size_t)data[1] * len / 255;

	fuzz_rmtree(root);
	char path[4400];
	FUZZ_CHECK(mkdir(root, 0700) == 0, "mkdir");
	snprintf(path, sizeof path, "%s/metrics", root);
	FUZZ_CHECK(mkdir(path, 0700) == 0, "mkdir");
	const char *log = text;
	size_t loglen = len;
	if (flags & 1) {
		snprintf(path, sizeof path, "%s/metrics/views", root);
		fuzz_write_file(path, text, cut);
		log = text + cut;
		loglen = len - cut;
		cut = loglen / 2;
	}
	uint64_t start = flags & 2 ? 1000 : 0;
	/* What the segments hold, in log order. */
	size_t first_len = flags & 4 ? cut : loglen;
	snprintf(path, sizeof path, "%s/metrics/points-%020" PRIu64 ".jsonl", root, start);
	fuzz_write_file(path, log, first_len);
	if (flags & 4) {
		/* (With fewer than 2 bytes in the first, no overlap: the names would clash.) */
		uint64_t second = start + first_len - (flags & 8 && first_len >= 2 ? 1 : 0);
		snprintf(path, sizeof path, "%s/metrics/points-%020" PRIu64 ".jsonl", root, second);
		fuzz_write_file(path, log + first_len, loglen - first_len);
	}

	struct bus_error err = {0};
	int rc;
	struct bus *bus = open_bus(&err, &rc);
	if (rc < 0) {
		FUZZ_CHECK(!bus && err.code == -rc && err.reason[0], "open refused with %d, no reason",
			   rc);
		return 0;
	}
	FUZZ_CHECK(!(flags & 8) || !(flags & 4) || first_len < 2,
		   "overlapping segments were accepted");

	/* Nothing but a torn last line is lost. */
	struct buf got;
	buf_init(&got);
	uint64_t first = 0;
	read_log(bus, &got, &first);
	size_t keep = loglen;
	while (keep > (flags & 4 ? first_len : 0) && log[keep - 1] != '\n')
		keep--;
	FUZZ_CHECK(got.len == keep && (keep == 0 || memcmp(got.data, log, keep) == 0),
		   "the log reads back %zu byte(s), the segments hold %zu up to the last newline",
		   got.len, keep);
	uint64_t logsize = bus_metrics_size(bus, 0);
	FUZZ_CHECK(logsize == start + keep, "log size %" PRIu64 ", expected %" PRIu64, logsize,
		   start + keep);

	struct buf out;
	buf_init(&out);
	bus_summary_render(bus, &out);
	bus_prom_render(bus, &out);
	bus_tick(bus);
	bus_active_render(bus, &out);
	FUZZ_CHECK(buf_ok(&out), "render");
	buf_free(&out);

	/* A new point appends exactly its line. */
	struct bus_agent_info alice;
	rc = bus_agent_create(bus, "alice", FUZZ_UID, FUZZ_UID, &alice, &err);
	FUZZ_CHECK(rc == 0, "create alice: %s", err.reason);
	rc = bus_metrics_write(bus, alice.id, FUZZ_UID, "jobs.done 1 ms", 14, &err);
	FUZZ_CHECK(rc == 0, "metrics write: %s", err.reason);
	uint64_t grown = bus_metrics_size(bus, 0);
	FUZZ_CHECK(grown > logsize, "a point did not grow the log");
	uint64_t view = bus_metrics_size(bus, alice.id);
	FUZZ_CHECK(view >= grown - logsize, "alice's view is smaller than her point");
	bus_close(bus);

	/* A restart keeps every byte and the size. */
	bus = open_bus(&err, &rc);
	FUZZ_CHECK(rc == 0, "the log busfs wrote does not open again: %s", err.reason);
	FUZZ_CHECK(bus_metrics_size(bus, 0) == grown, "the log size went from %" PRIu64 " to %"
		   PRIu64 " at a restart", grown, bus_metrics_size(bus, 0));
	struct buf again;
	buf_init(&again);
	read_log(bus, &again, &first);
	FUZZ_CHECK(again.len >= got.len &&
		   (got.len == 0 || memcmp(again.data, got.data, got.len) == 0),
		   "a restart changed the log");
	bus_close(bus);
	buf_free(&again);
	buf_free(&got);
	return 0;
}
