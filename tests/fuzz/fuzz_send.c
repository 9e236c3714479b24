/*
 * fuzz_send.c — `send` records (core/send.c bus_send_write) through the public bus API.
 *
 * Input: byte 0 = flags, bytes 1-2 = where to split the rest into two writes, then the
 * bytes written to agents/alice/send (as alice's owner, or as another uid when flag 1).
 * Each input is sent twice on the same bus, whole (one write) and split (two writes on
 * one open file, i.e. one pending buffer), with every message acked in between.
 *
 * Invariants:
 *  - any outcome is fine, but a refused write delivers nothing and keeps nothing
 *    pending; an accepted one delivers exactly what it reports (bus delivered_total
 *    moves by that much) and keeps only an unfinished record ('{'...) pending;
 *  - splitting a write does not change what is sent: when the whole write delivers D
 *    messages, the two writes deliver D in all (a record cut anywhere, even inside a
 *    number, a string or a UTF-8 sequence, must wait for its end, not be refused);
 *    the split send comes after the whole one's --dedupe-window (the bus clock is
 *    moved on), so idempotency keys count the same in both;
 *  - after each write the bus invariants hold (pending == the sum of inbox depths,
 *    no reservation left, every envelope one line of valid JSON with msg_id, from,
 *    to and correlation_id where the message record says);
 *  - a refusal, logged as the FUSE layer logs it, is one valid JSON line in `errors`
 *    and agents/alice/errors, carrying the reason;
 *  - flag 2: a read-only reload of the store (busfs --check) is consistent and holds
 *    what the live bus holds, before the messages are acked.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "busfs/clock.h"
#include "common.h"

static struct fuzz_world world;

/* The bus's clock runs ahead of the real one by `ahead`: the split send comes after the
 * --dedupe-window of the whole one, so the idempotency keys the whole send used are
 * forgotten and the two deliver the same. */
static int64_t ahead;

static int64_t shifted_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 + ahead;
}

static void forget_keys(void)
{
	ahead += (int64_t)(bus_config(world.bus)->dedupe_window_s * 1e6) + 1000000;
	bus_tick_second(world.bus);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	world.reset_every = 500;   /* outboxes keep 1000 messages: keep reloads cheap */
	bus_clock_set(shifted_now);
	fuzz_world_init(&world, "send");
	return 0;
}

static uint64_t delivered_total(void)
{
	struct bus_stats st;
	bus_stats(world.bus, &st);
	return st.delivered_total;
}

/* One write on an open `send` file; checks what a write promises. */
static int send_write(struct buf *pending, uid_t uid, const char *p, size_t n,
		      unsigned *delivered)
{
	struct bus_error err = {0};
	uint64_t before = delivered_total();
	size_t had = pending->len;
	int rc = bus_send_write(world.bus, world.alice, uid, pending, p, n, delivered, &err);
	uint64_t after = delivered_total();
	if (rc < 0) {
		FUZZ_CHECK(*delivered == 0 && after == before,
			   "a refused write (%s) delivered %u (%" PRIu64 " -> %" PRIu64 ")",
			   err.reason, *delivered, before, after);
		FUZZ_CHECK(pending->len == 0, "a refused write keeps %zu byte(s) pending",
			   pending->len);
		FUZZ_CHECK(err.code == -rc && err.reason[0], "refusal %d without a reason", rc);
		fuzz_refused(&world, "write", "agents/alice/send", uid, &err);
	} else {
		FUZZ_CHECK(rc == 0, "bus_send_write returned %d", rc);
		FUZZ_CHECK(after - before == *delivered, "reported %u delivered, the bus counted "
			   "%" PRIu64, *delivered, after - before);
		FUZZ_CHECK(pending->len <= had + n, "pending grew beyond what was written");
		FUZZ_CHECK(pending->len == 0 || pending->data[0] == '{',
			   "pending holds more than an unfinished record: %.*s",
			   (int)(pending->len > 100 ? 100 : pending->len), pending->data);
	}
	fuzz_check_bus(world.bus);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	uint8_t flags = data[0];
	size_t len = size - 3;
	size_t split = len ? ((size_t)data[1] | (size_t)data[2] << 8) % (len + 1) : 0;
	uid_t uid = flags & 1 ? FUZZ_OTHER_UID : FUZZ_UID;
	/* Exact-size copies, so ASan sees a read past either write's end. */
	char *whole = malloc(len ? len : 1);
	memcpy(whole, data + 3, len);
	char *first = malloc(split ? split : 1);
	memcpy(first, data + 3, split);
	char *second = malloc(len - split ? len - split : 1);
	memcpy(second, data + 3 + split, len - split);

	/* Whole. */
	struct buf pending;
	buf_init(&pending);
	unsigned d_whole = 0;
	int rc_whole = send_write(&pending, uid, whole, len, &d_whole);
	if (flags & 2)
		fuzz_check_recovery(&world);
	struct buf rest = pending;   /* the unfinished record the whole write keeps */
	fuzz_settle(&world);
	forget_keys();

	/* Split in two writes on one open file. */
	buf_init(&pending);
	unsigned d1 = 0, d2 = 0;
	int rc1 = send_write(&pending, uid, first, split, &d1);
	int rc2 = rc1 == 0 ? send_write(&pending, uid, second, len - split, &d2) : rc1;
	if (flags & 2)
		fuzz_check_recovery(&world);
	if (rc_whole == 0) {
		FUZZ_CHECK(rc1 == 0 && rc2 == 0 && d1 + d2 == d_whole,
			   "one write delivers %u, the same bytes split at %zu deliver %u + %u "
			   "(rc %d, %d)", d_whole, split, d1, d2, rc1, rc2);
		FUZZ_CHECK(pending.len == rest.len &&
			   (rest.len == 0 || memcmp(pending.data, rest.data, rest.len) == 0),
			   "one write keeps %zu byte(s) pending, the same bytes split at %zu keep %zu",
			   rest.len, split, pending.len);
	}
	buf_free(&rest);
	buf_free(&pending);
	fuzz_settle(&world);

	free(whole);
	free(first);
	free(second);
	return 0;
}
