/*
 * fuzz_metric.c — metric lines (core/metric.c metric_parse), the JSONL line each
 * accepted point is stored as (metric_format_point), and the same write to the fuzz
 * bus (bus_metrics_write), whose summary.json must stay valid.
 *
 * Invariants, for every accepted point:
 *  - metric_format_point writes exactly one line of valid JSON (json_is_value, and
 *    jansson up to the known differences) whose "value" reads back as the point's value;
 *  - metric_format_value's text reads back (metric_number_parse) to the same double;
 *  - the point written back as a JSON line {"metric","value","unit","tags"} parses to
 *    the same point (name, value, unit, tags text): nothing is lost;
 *  - the name is valid, the value finite, the tags a JSON object of strings.
 * A write is all or nothing: metric_parse without a callback gives the same result,
 * and bus_metrics_write accepts exactly what metric_parse accepts; a refusal, logged
 * as the FUSE layer logs it, is one valid JSON line in `errors`, carrying the reason.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "busfs/json.h"
#include "busfs/metric.h"
#include "common.h"

static struct fuzz_world world;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	world.reset_every = 2000;   /* metric series are never dropped: start afresh */
	fuzz_world_init(&world, "metric");
	return 0;
}

static const char TS[] = "2026-11-23T05:05:12.123456Z";

static bool same_double(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

struct again {
	struct metric_point p;
	bool got;
};

static int keep_point(void *ctx, const struct metric_point *p)
{
	struct again *a = ctx;
	FUZZ_CHECK(!a->got, "one line gave two points");
	a->p = *p;
	buf_init(&a->p.tags);
	buf_append(&a->p.tags, p->tags.data, p->tags.len);
	a->got = true;
	return 0;
}

static int check_point(void *ctx, const struct metric_point *p)
{
	unsigned *count = ctx;
	(*count)++;
	FUZZ_CHECK(metric_name_valid(p->name, strlen(p->name)), "invalid name accepted: %s",
		   p->name);
	FUZZ_CHECK(isfinite(p->value), "non-finite value accepted");
	FUZZ_CHECK(strlen(p->unit) <= METRIC_UNIT_MAX, "unit too long");
	FUZZ_CHECK(buf_ok(&p->tags) && p->tags.len >= 2, "no tags object");
	fuzz_check_jansson_agrees(p->tags.data, p->tags.len, "a point's tags");
	json_t *tags = json_loadb(p->tags.data, p->tags.len, 0, NULL);
	FUZZ_CHECK(json_is_object(tags) && json_object_size(tags) <= METRIC_TAGS_MAX,
		   "tags are not an object of at most 16: %s", p->tags.data);
	const char *k;
	json_t *v;
	json_object_foreach(tags, k, v)
		FUZZ_CHECK(json_is_string(v), "tag %s is not a string", k);
	json_decref(tags);

	/* The stored line. */
	struct buf line;
	buf_init(&line);
	metric_format_point(&line, TS, "alice", p);
	FUZZ_CHECK(buf_ok(&line) && line.len > 1 && line.data[line.len - 1] == '\n' &&
		   !memchr(line.data, '\n', line.len - 1) && !memchr(line.data, '\r', line.len),
		   "the stored point is not one line: %s", line.data);
	fuzz_check_jansson_agrees(line.data, line.len, "a stored point");
	json_t *o = json_loadb(line.data, line.len, 0, NULL);
	json_t *jv = json_object_get(o, "value");
	FUZZ_CHECK(json_is_number(jv) && json_number_value(jv) == p->value,
		   "the stored value differs from %.17g: %s", p->value, line.data);
	json_decref(o);

	/* The value's text. */
	struct buf num;
	buf_init(&num);
	metric_format_value(&num, p->value);
	double back;
	FUZZ_CHECK(metric_number_parse(num.data, num.len, &back) && same_double(back, p->value),
		   "%.17g is written as %s, which reads back differently", p->value, num.data);

	/* The point written back as a JSON line parses to the same point. */
	struct buf again;
	buf_init(&again);
	buf_puts(&again, "{\"metric\":");
	json_append_string(&again, p->name, strlen(p->name));
	buf_printf(&again, ",\"value\":%s,\"unit\":", num.data);
	json_append_string(&again, p->unit, strlen(p->unit));
	buf_puts(&again, ",\"tags\":");
	buf_append(&again, p->tags.data, p->tags.len);
	buf_puts(&again, "}");
	struct again a = {.got = false};
	struct bus_error err = {0};
	int rc = metric_parse(again.data, again.len, keep_point, &a, &err);
	FUZZ_CHECK(rc == 1 && a.got, "the point written back is refused (%s): %s", err.reason,
		   again.data);
	FUZZ_CHECK(strcmp(a.p.name, p->name) == 0 && same_double(a.p.value, p->value) &&
		   strcmp(a.p.unit, p->unit) == 0 && a.p.tags.len == p->tags.len &&
		   memcmp(a.p.tags.data, p->tags.data, p->tags.len) == 0,
		   "the point written back parses differently: %s", again.data);
	buf_free(&a.p.tags);
	buf_free(&again);
	buf_free(&num);
	buf_free(&line);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *p = malloc(size ? size : 1);
	memcpy(p, data, size);

	unsigned count = 0;
	struct bus_error err = {0};
	int rc = metric_parse(p, size, check_point, &count, &err);
	if (rc > 0) {
		FUZZ_CHECK((unsigned)rc == count, "%d points, %u seen", rc, count);
	} else {
		FUZZ_CHECK(count == 0, "a refused write handed on %u point(s)", count);
		FUZZ_CHECK((rc == -EINVAL || rc == -ENOMEM) && err.code == -rc && err.reason[0],
			   "refused with %d (%d) '%s'", rc, err.code, err.reason);
	}
	struct bus_error err2 = {0};
	int rc2 = metric_parse(p, size, NULL, NULL, &err2);
	FUZZ_CHECK(rc2 == rc, "with a callback %d, without %d", rc, rc2);

	struct bus_error err3 = {0};
	int rc3 = bus_metrics_write(world.bus, world.alice, FUZZ_UID, p, size, &err3);
	FUZZ_CHECK((rc > 0) == (rc3 == 0), "metric_parse says %d, bus_metrics_write %d (%s)", rc,
		   rc3, err3.reason);
	if (rc3 < 0)
		fuzz_refused(&world, "write", "agents/alice/metrics", FUZZ_UID, &err3);
	if (rc3 == 0) {
		struct buf out;
		buf_init(&out);
		bus_summary_render(world.bus, &out);
		fuzz_check_jansson_agrees(out.data, out.len, "summary.json");
		buf_free(&out);
	}
	free(p);
	fuzz_settle(&world);
	return 0;
}
