/*
 * fuzz_ctl.c — ctl commands (core/ctl.c bus_ctl: drain, resume, ack MSG_ID [TOKEN],
 * extend, nak, retry) on the fuzz bus, checked against a reference model of the
 * command grammar.
 *
 * Input: byte 0 = flags (bit 0: written by another uid; bit 1: bob first sends alice a
 * message that requires an ack, with a correlation_id; bit 2: alice starts draining),
 * then the bytes written to agents/alice/ctl. Every "$ID" in them is replaced by the
 * msg_id of alice's oldest pending message (when there is one), so `ack` commands can
 * name a real message.
 *
 * Invariants: bus_ctl returns what the model says (trailing blanks and line ends, and
 * leading blanks, do not count; one command; `ack` needs a well-formed msg_id of a
 * pending message; the owner or root only); an accepted drain/resume sets the state,
 * an accepted ack removes exactly that message and, when it required an ack, sends bob
 * an ack carrying its msg_id and correlation_id; a refused command changes nothing.
 * agents/alice/ctl renders as one line of valid JSON; a refusal, logged as the FUSE
 * layer logs it, is one valid JSON line in `errors`, carrying the reason.
 * A NUL byte is never a blank: "drain\0" is refused.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/bus.h"
#include "busfs/message.h"
#include "common.h"

static struct fuzz_world world;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	world.reset_every = 500;   /* outboxes keep 1000 messages: keep reloads cheap */
	fuzz_world_init(&world, "ctl");
	return 0;
}

static bool is_draining(uint64_t id)
{
	struct bus_agent_info info;
	FUZZ_CHECK(bus_agent_by_id(world.bus, id, &info) == 0, "agent %" PRIu64 " gone", id);
	return info.draining;
}

static void set_draining(bool on)
{
	struct bus_error err = {0};
	const char *cmd = on ? "drain" : "resume";
	FUZZ_CHECK(bus_ctl(world.bus, world.alice, 0, cmd, strlen(cmd), &err) == 0, "%s: %s", cmd,
		   err.reason);
}

/* A lease token: decimal digits, 1 to 2^64 - 1. */
static bool model_token(const char *w)
{
	if (!*w || strspn(w, "0123456789") != strlen(w))
		return false;
	while (*w == '0')
		w++;
	if (!*w)
		return false; /* 0 */
	size_t n = strlen(w);
	return n < 20 || (n == 20 && strcmp(w, "18446744073709551615") <= 0);
}

/* Seconds: digits, an optional '.' and fraction digits, at most 8 whole digits, at
 * most 31 days. */
static bool model_seconds(const char *w, double *out)
{
	size_t digits = strspn(w, "0123456789");
	const char *frac = w + digits;
	if (*frac == '.')
		frac += 1 + strspn(frac + 1, "0123456789");
	if (digits == 0 || digits > 8 || *frac)
		return false;
	*out = strtod(w, NULL);
	return *out <= BUS_MAX_SECONDS;
}

/* What bus_ctl must answer, from the command grammar: `drain`, `resume`, `ack MSG_ID
 * [TOKEN]`, `extend MSG_ID TOKEN [SECONDS]`, `nak MSG_ID TOKEN [DELAY_S]`, `retry
 * MSG_ID`. Nothing in this harness is leased or dead, so every command with a token
 * finds no lease (ESTALE for the pending message, ENOENT for others) and retry finds
 * no dead letter (ENOENT). */
static int model(const char *p, size_t n, uid_t uid, const struct bus_message *oldest,
		 bool *drain, bool *resume, bool *ack)
{
	*drain = *resume = *ack = false;
	/* Blanks are spaces, tabs, CR and LF only: a NUL is never trimmed. */
	while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' || p[n - 1] == '\n'))
		n--;
	while (n && (p[0] == ' ' || p[0] == '\t')) {
		p++;
		n--;
	}
	if (n == 0 || n >= 160 || memchr(p, '\0', n) || memchr(p, '\n', n))
		return -EINVAL;
	bool owner = uid == 0 || uid == FUZZ_UID;
	char text[160], *w[5] = {0};
	int nw = 0;
	memcpy(text, p, n);
	text[n] = '\0';
	for (char *save = NULL, *t = strtok_r(text, " \t", &save); t; t = strtok_r(NULL, " \t", &save))
		if (nw < 5)
			w[nw++] = t;
	if (nw == 1 && (strcmp(w[0], "drain") == 0 || strcmp(w[0], "resume") == 0)) {
		*drain = strcmp(w[0], "drain") == 0;
		*resume = !*drain;
		return owner ? 0 : -EACCES;
	}
	const char *verb = w[0];
	bool retry = strcmp(verb, "retry") == 0, ackv = strcmp(verb, "ack") == 0;
	bool extend = strcmp(verb, "extend") == 0, nak = strcmp(verb, "nak") == 0;
	if (!retry && !ackv && !extend && !nak)
		return -EINVAL;
	int most = retry ? 2 : ackv ? 3 : 4, least = extend || nak ? 3 : 2;
	if (nw < least || nw > most || !message_id_number(w[1]))
		return -EINVAL;
	if (nw >= 3 && !model_token(w[2]))
		return -EINVAL;
	double seconds = 0;
	if (nw == 4 && !model_seconds(w[3], &seconds))
		return -EINVAL;
	if (extend && nw == 4 && seconds < 1)
		return -EINVAL;
	if (!owner)
		return -EACCES;
	bool names_oldest = oldest && strcmp(w[1], oldest->msg_id) == 0;
	if (retry)
		return -ENOENT;
	if (nw >= 3)
		return names_oldest ? -ESTALE : -ENOENT;
	if (!names_oldest)
		return -ENOENT;
	*ack = true;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t flags = data[0];
	uid_t uid = flags & 1 ? FUZZ_OTHER_UID : FUZZ_UID;

	if (flags & 2) {
		static const char rec[] = "{\"to\":\"alice\",\"payload\":{\"n\":1},\"requires_ack\":true,"
					  "\"correlation_id\":\"corr-1\"}\n";
		struct buf pending;
		buf_init(&pending);
		unsigned delivered = 0;
		struct bus_error err = {0};
		int rc = bus_send_write(world.bus, world.bob, FUZZ_UID, &pending, rec,
					sizeof rec - 1, &delivered, &err);
		FUZZ_CHECK(rc == 0 && delivered == 1, "bob -> alice: %s", err.reason);
		buf_free(&pending);
	}
	if (flags & 4)
		set_draining(true);

	/* The command, with $ID replaced by the oldest pending msg_id. */
	struct bus_message *oldest = NULL;
	bool draining_dummy;
	if (bus_next_peek(world.bus, world.alice, &oldest, &draining_dummy) != 0)
		oldest = NULL;
	struct buf cmd;
	buf_init(&cmd);
	for (size_t i = 1; i < size; i++) {
		if (oldest && i + 3 <= size && memcmp(data + i, "$ID", 3) == 0) {
			buf_puts(&cmd, oldest->msg_id);
			i += 2;
		} else {
			buf_putc(&cmd, (char)data[i]);
		}
	}
	/* An exact-size copy: ASan sees a read past the end. */
	char *p = malloc(cmd.len ? cmd.len : 1);
	memcpy(p, cmd.data ? cmd.data : "", cmd.len);

	bool want_drain, want_resume, want_ack;
	int want = model(p, cmd.len, uid, oldest, &want_drain, &want_resume, &want_ack);
	bool was_draining = is_draining(world.alice);
	uint32_t depth = fuzz_depth(world.bus, world.alice);
	uint32_t bob_depth = fuzz_depth(world.bus, world.bob);

	struct bus_error err = {0};
	int rc = bus_ctl(world.bus, world.alice, uid, p, cmd.len, &err);
	FUZZ_CHECK(rc == want, "bus_ctl gives %d (%s), the model %d, for '%.*s'", rc, err.reason,
		   want, (int)cmd.len, cmd.data ? cmd.data : "");
	if (rc < 0) {
		FUZZ_CHECK(err.code == -rc && err.reason[0], "refusal %d without a reason", rc);
		fuzz_refused(&world, "write", "agents/alice/ctl", uid, &err);
		FUZZ_CHECK(is_draining(world.alice) == was_draining &&
			   fuzz_depth(world.bus, world.alice) == depth &&
			   fuzz_depth(world.bus, world.bob) == bob_depth,
			   "a refused command changed the bus");
	} else if (want_drain || want_resume) {
		FUZZ_CHECK(is_draining(world.alice) == want_drain, "drain state not set");
		FUZZ_CHECK(fuzz_depth(world.bus, world.alice) == depth, "drain/resume moved messages");
	} else if (want_ack) {
		FUZZ_CHECK(fuzz_depth(world.bus, world.alice) == depth - 1, "ack did not consume");
		struct bus_message *gone = bus_inbox_get(world.bus, world.alice, oldest->number);
		FUZZ_CHECK(!gone, "the acked message is still there");
		if (oldest->requires_ack) {
			FUZZ_CHECK(fuzz_depth(world.bus, world.bob) == bob_depth + 1, "no ack to bob");
			struct bus_message *a = fuzz_newest(world.bus, world.bob);
			fuzz_check_envelope(a);
			size_t n = 0;
			const char *pl = fuzz_member(a->envelope, a->len, "payload", &n);
			json_t *v = pl ? json_loadb(pl, n, 0, NULL) : NULL;
			const char *id = json_string_value(json_object_get(v, "ack"));
			FUZZ_CHECK(id && strcmp(id, oldest->msg_id) == 0, "the ack names %s, not %s: %s",
				   id ? id : "nothing", oldest->msg_id, a->envelope);
			json_decref(v);
			FUZZ_CHECK(a->corr_len == oldest->corr_len &&
				   memcmp(a->envelope + a->corr_off, oldest->envelope + oldest->corr_off,
					  a->corr_len) == 0,
				   "the ack lost the correlation_id: %s", a->envelope);
			message_unref(a);
		}
	}
	struct buf out;
	buf_init(&out);
	FUZZ_CHECK(bus_ctl_render(world.bus, world.alice, &out) == 0, "render");
	FUZZ_CHECK(out.len && out.data[out.len - 1] == '\n' && !memchr(out.data, '\n', out.len - 1),
		   "ctl is not one line");
	fuzz_check_jansson_agrees(out.data, out.len, "agents/alice/ctl");
	buf_free(&out);

	message_unref(oldest);
	free(p);
	buf_free(&cmd);
	if (is_draining(world.alice))
		set_draining(false);
	fuzz_settle(&world);
	return 0;
}
