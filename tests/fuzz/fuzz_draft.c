/*
 * fuzz_draft.c — outbox drafts (core/send.c bus_draft_open/write/flush/close, and the
 * payload rules of core/message.c payload_from_body) with arbitrary body bytes.
 *
 * Input: byte 0 = flags (bits 0-1: the target bob, all, carol (draining) or nobody;
 * bit 2: written by another uid; bit 3: send the body a second time on the same open
 * file), bytes 1 and 2 = two cut points of the body into up to three writes, then the
 * body: text, JSON or binary.
 *
 * Invariants, when the flush commits: each recipient gets exactly one message, whose
 * envelope is one line of valid JSON (see fuzz_check_envelope) and whose payload is
 * the body, losslessly:
 *  - a body that is one JSON value is kept as written minus line breaks outside
 *    strings (json_append_compact), and nothing says base64;
 *  - else UTF-8 text (no NUL) is a JSON string that decodes (jansson) to the body
 *    minus one trailing newline;
 *  - else the payload is base64 of the body and "encoding":"base64" says so.
 * A refused write poisons the file: later writes and the flush fail, nothing is sent,
 * and no inbox slot stays reserved once the file is closed. Every refusal, logged as
 * the FUSE layer logs it, is one valid JSON line in `errors`, carrying the reason.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <string.h>

#include "busfs/json.h"
#include "common.h"

static struct fuzz_world world;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	world.reset_every = 500;   /* outboxes keep 1000 messages: keep reloads cheap */
	fuzz_world_init(&world, "draft");
	return 0;
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

static long b64_decode(const char *s, size_t n, unsigned char *out)
{
	if (n % 4)
		return -1;
	size_t o = 0;
	for (size_t i = 0; i < n; i += 4) {
		int v[4];
		for (int k = 0; k < 4; k++)
			v[k] = s[i + k] == '=' ? 0 : b64val(s[i + k]);
		if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0)
			return -1;
		unsigned x = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 |
			     (unsigned)v[3];
		out[o++] = (unsigned char)(x >> 16);
		if (s[i + 2] != '=')
			out[o++] = (unsigned char)(x >> 8);
		if (s[i + 3] != '=')
			out[o++] = (unsigned char)x;
	}
	return (long)o;
}

/* The payload of the newest message of `to` is the body, losslessly. */
static void check_payload(uint64_t to, const char *body, size_t len)
{
	struct bus_message *m = fuzz_newest(world.bus, to);
	FUZZ_CHECK(m, "no message arrived");
	fuzz_check_envelope(m);
	size_t n = 0, en = 0;
	const char *pl = fuzz_member(m->envelope, m->len, "payload", &n);
	const char *enc = fuzz_member(m->envelope, m->len, "encoding", &en);
	FUZZ_CHECK(pl, "no payload: %s", m->envelope);
	if (json_is_value(body, len)) {
		struct buf c;
		buf_init(&c);
		json_append_compact(&c, body, len);
		FUZZ_CHECK(!enc && n == c.len && memcmp(pl, c.data, n) == 0,
			   "a JSON body is not kept as written: %s", m->envelope);
		buf_free(&c);
	} else if (utf8_text_valid(body, len)) {
		size_t want = len && body[len - 1] == '\n' ? len - 1 : len;
		json_t *v = json_loadb(pl, n, JSON_DECODE_ANY, NULL);
		FUZZ_CHECK(!enc && json_is_string(v) && json_string_length(v) == want &&
			   memcmp(json_string_value(v), body, want) == 0,
			   "a text body does not come back as itself: %s", m->envelope);
		json_decref(v);
	} else {
		FUZZ_CHECK(enc && en == 8 && memcmp(enc, "\"base64\"", 8) == 0,
			   "a binary body is not marked base64: %s", m->envelope);
		FUZZ_CHECK(n >= 2 && pl[0] == '"' && pl[n - 1] == '"', "base64 payload not a string");
		unsigned char *back = malloc(n);
		long k = b64_decode(pl + 1, n - 2, back);
		FUZZ_CHECK(k == (long)len && memcmp(back, body, len) == 0,
			   "a binary body does not decode back to itself: %s", m->envelope);
		free(back);
	}
	message_unref(m);
}

static uint64_t delivered_total(void)
{
	struct bus_stats st;
	bus_stats(world.bus, &st);
	return st.delivered_total;
}

/* Writes the body in up to three pieces and flushes; returns the flush's result. */
static int send_body(struct bus_draft *d, const char *body, size_t len, size_t c1, size_t c2,
		     uint64_t to, unsigned nrcpt)
{
	size_t cuts[4] = {0, c1, c2, len};
	int poison = 0;
	for (int i = 0; i < 3; i++) {
		size_t n = cuts[i + 1] - cuts[i];
		if (!n)
			continue;
		/* An exact-size copy: ASan sees a read past the piece. */
		char *piece = malloc(n);
		memcpy(piece, body + cuts[i], n);
		struct bus_error err = {0};
		int rc = bus_draft_write(world.bus, d, piece, n, &err);
		free(piece);
		if (poison)
			FUZZ_CHECK(rc == -poison, "a write after a refused one gives %d, not %d", rc,
				   -poison);
		else if (rc < 0)
			poison = -rc;
		if (rc < 0) {
			FUZZ_CHECK(err.code == -rc && err.reason[0], "refusal %d without a reason", rc);
			fuzz_refused(&world, "write", "agents/alice/outbox/bob", FUZZ_UID, &err);
		}
	}
	uint32_t depth = fuzz_depth(world.bus, to);
	uint64_t before = delivered_total();
	struct bus_error err = {0};
	int rc = bus_draft_flush(world.bus, d, &err);
	uint64_t sent = delivered_total() - before;
	if (rc < 0)
		fuzz_refused(&world, "flush", "agents/alice/outbox/bob", FUZZ_UID, &err);
	if (poison) {
		FUZZ_CHECK(rc == -poison && sent == 0, "a poisoned draft flushed with %d, sent %" PRIu64,
			   rc, sent);
	} else if (rc == 0 && len) {
		FUZZ_CHECK(sent == nrcpt && fuzz_depth(world.bus, to) == depth + 1,
			   "one flush sent %" PRIu64 " message(s) to %u recipient(s)", sent, nrcpt);
		check_payload(to, body, len);
	} else {
		FUZZ_CHECK(sent == 0, "a flush that failed (%d) or had nothing sent %" PRIu64, rc,
			   sent);
	}
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	static const char *const targets[] = {"bob", "all", "carol", "nobody"};
	uint8_t flags = data[0];
	const char *target = targets[flags & 3];
	uid_t uid = flags & 4 ? FUZZ_OTHER_UID : FUZZ_UID;
	const char *body = (const char *)data + 3;
	size_t len = size - 3;
	size_t c1 = len ? data[1] % (len + 1) : 0, c2 = len ? data[2] % (len + 1) : 0;
	if (c1 > c2) {
		size_t t = c1;
		c1 = c2;
		c2 = t;
	}

	struct bus_draft *d = NULL;
	struct bus_error err = {0};
	int rc = bus_draft_open(world.bus, world.alice, target, uid, &d, &err);
	if (rc < 0) {
		FUZZ_CHECK(!d && err.code == -rc && err.reason[0], "open refused with %d", rc);
		char path[128];
		snprintf(path, sizeof path, "agents/alice/outbox/%s", target);
		fuzz_refused(&world, "create", path, uid, &err);
	} else {
		FUZZ_CHECK(strcmp(target, "bob") == 0 || strcmp(target, "all") == 0,
			   "a draft to %s was opened", target);
		FUZZ_CHECK(strcmp(bus_draft_sender(d), "alice") == 0, "sender %s",
			   bus_draft_sender(d));
		rc = send_body(d, body, len, c1, c2, world.bob, 1);
		if (rc == 0 && (flags & 8))
			send_body(d, body, len, len, len, world.bob, 1);
		bus_draft_close(world.bus, d);
	}
	fuzz_settle(&world);
	return 0;
}
