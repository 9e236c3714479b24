/*
 * fuzz_health.c — health reports (core/health.c health_parse), then the same bytes as
 * a report to the fuzz bus (bus_health_report) and the documents that show it
 * (bus_health_render, bus_status_render).
 *
 * Invariants: an accepted report has a reportable status, a reason of at most
 * HEALTH_REASON_MAX bytes of UTF-8 text, and extra fields that, put in an object, are
 * valid JSON on one line; nothing of a JSON report is lost: when jansson reads it,
 * every field but status and reason comes back with the same key and an equal value
 * (keys written with escapes included), and the reason as given; a refused one says why (EINVAL). bus_health_report accepts
 * exactly what health_parse accepts; agents/A/health and health/status are one line
 * of valid JSON whatever was reported; a refusal, logged as the FUSE layer logs it,
 * is one valid JSON line in `errors`, carrying the reason.
 */
#include <errno.h>
#include <jansson.h>
#include <string.h>

#include "busfs/health.h"
#include "busfs/json.h"
#include "common.h"

static struct fuzz_world world;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_world_init(&world, "health");
	return 0;
}

/* A JSON report that jansson reads too must come back whole: every field but status
 * and reason, with the same key and an equal value, and the reason as given. */
static void check_lossless(const char *p, size_t len, const struct health_report *r)
{
	while (len && strchr(" \t\r\n", p[len - 1]))
		len--;
	while (len && strchr(" \t\r\n", p[0])) {
		p++;
		len--;
	}
	if (!len || p[0] != '{')
		return;
	json_t *orig = json_loadb(p, len, JSON_REJECT_DUPLICATES, NULL);
	if (!orig)
		return;   /* lone surrogates, big numbers: jansson cannot say */
	struct buf obj;
	buf_init(&obj);
	buf_putc(&obj, '{');
	if (r->extra.len)
		buf_append(&obj, r->extra.data + 1, r->extra.len - 1);
	buf_putc(&obj, '}');
	json_t *kept = json_loadb(obj.data, obj.len, JSON_REJECT_DUPLICATES, NULL);
	FUZZ_CHECK(kept, "the extra fields of a report jansson reads are not one JSON object "
		   "(duplicate keys?): %s", obj.data);
	size_t want = json_object_size(orig);
	const char *k;
	json_t *v;
	json_object_foreach(orig, k, v) {
		if (strcmp(k, "status") == 0 || strcmp(k, "reason") == 0) {
			want--;
			continue;
		}
		json_t *got = json_object_get(kept, k);
		FUZZ_CHECK(got && json_equal(got, v), "field \"%s\" of the report is %s: %s", k,
			   got ? "changed" : "lost", obj.data);
	}
	FUZZ_CHECK(json_object_size(kept) == want, "the report has %zu extra field(s), busfs "
		   "keeps %zu: %s", want, json_object_size(kept), obj.data);
	json_t *reason = json_object_get(orig, "reason");
	if (json_is_string(reason))
		FUZZ_CHECK(r->reason.len == json_string_length(reason) &&
			   memcmp(r->reason.data, json_string_value(reason), r->reason.len) == 0,
			   "the reason is not kept as given");
	json_decref(kept);
	json_decref(orig);
	buf_free(&obj);
}

static void check_one_line_json(const struct buf *b, const char *what)
{
	FUZZ_CHECK(buf_ok(b) && b->len > 1 && b->data[b->len - 1] == '\n', "%s: no final newline",
		   what);
	FUZZ_CHECK(!memchr(b->data, '\n', b->len - 1) && !memchr(b->data, '\r', b->len - 1),
		   "%s is not one line: %s", what, b->data);
	fuzz_check_jansson_agrees(b->data, b->len, what);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy: ASan sees a read past the end. */
	char *p = malloc(size ? size : 1);
	memcpy(p, data, size);

	struct health_report r;
	struct bus_error err = {0};
	health_report_init(&r);
	int rc = health_parse(p, size, &r, &err);
	if (rc == 0) {
		FUZZ_CHECK(r.status >= HEALTH_HEALTHY && r.status <= HEALTH_UNHEALTHY,
			   "accepted status %d", (int)r.status);
		FUZZ_CHECK(buf_ok(&r.reason) && buf_ok(&r.extra), "buffer failed");
		FUZZ_CHECK(r.reason.len <= HEALTH_REASON_MAX, "reason of %zu bytes", r.reason.len);
		FUZZ_CHECK(r.reason.len == 0 || utf8_text_valid(r.reason.data, r.reason.len),
			   "the reason is not UTF-8 text");
		if (r.extra.len) {
			FUZZ_CHECK(r.extra.data[0] == ',', "extra does not start with a comma: %s",
				   r.extra.data);
			FUZZ_CHECK(!memchr(r.extra.data, '\n', r.extra.len) &&
				   !memchr(r.extra.data, '\r', r.extra.len),
				   "extra fields are not one line: %s", r.extra.data);
			struct buf obj;
			buf_init(&obj);
			buf_puts(&obj, "{\"status\":\"healthy\"");
			buf_append(&obj, r.extra.data, r.extra.len);
			buf_puts(&obj, "}");
			fuzz_check_jansson_agrees(obj.data, obj.len, "a report's extra fields");
			buf_free(&obj);
		}
		check_lossless(p, size, &r);
	} else {
		FUZZ_CHECK(rc == -EINVAL && err.code == EINVAL && err.reason[0],
			   "refused with %d (%d) '%s'", rc, err.code, err.reason);
	}
	health_report_free(&r);

	struct bus_error err2 = {0};
	int rc2 = bus_health_report(world.bus, world.alice, FUZZ_UID, p, size, &err2);
	FUZZ_CHECK(rc2 == rc, "health_parse says %d, bus_health_report %d (%s)", rc, rc2,
		   err2.reason);
	if (rc2 < 0)
		fuzz_refused(&world, "write", "agents/alice/health", FUZZ_UID, &err2);

	struct buf out;
	buf_init(&out);
	FUZZ_CHECK(bus_health_render(world.bus, world.alice, &out) == 0, "render alice");
	check_one_line_json(&out, "agents/alice/health");
	buf_reset(&out);
	bus_status_render(world.bus, &out);
	check_one_line_json(&out, "health/status");
	buf_free(&out);

	free(p);
	fuzz_settle(&world);
	return 0;
}
