/* health.c — parsing health reports and the rules that turn them into a status. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/health.h"
#include "busfs/json.h"

static const char *const status_names[HEALTH_NSTATUS] = {
	"unknown", "healthy", "degraded", "unhealthy", "stale",
};

/* Fields every rendering of an agent's health sets itself. */
static const char *const computed_fields[] = {
	"agent", "last_seen", "age_s", "state", "inbox_depth",
};

#define WORDS "healthy, degraded or unhealthy"

void health_report_init(struct health_report *r)
{
	r->status = HEALTH_UNKNOWN;
	buf_init(&r->reason);
	buf_init(&r->extra);
}

void health_report_free(struct health_report *r)
{
	buf_free(&r->reason);
	buf_free(&r->extra);
}

const char *health_status_name(enum health_status s)
{
	return (unsigned)s < HEALTH_NSTATUS ? status_names[s] : NULL;
}

/* Only the three words an agent may report. */
static enum health_status reported_word(const char *w, size_t n)
{
	for (int s = HEALTH_HEALTHY; s <= HEALTH_UNHEALTHY; s++)
		if (strlen(status_names[s]) == n && memcmp(status_names[s], w, n) == 0)
			return (enum health_status)s;
	return HEALTH_UNKNOWN;
}

static int set_reason(struct health_report *r, const char *p, size_t n, struct bus_error *err)
{
	if (n > HEALTH_REASON_MAX)
		return bus_fail(err, EINVAL, "the reason is %zu bytes; at most %d are kept", n,
				HEALTH_REASON_MAX);
	buf_reset(&r->reason);
	buf_append(&r->reason, p, n);
	return 0;
}

static int parse_text(const char *p, size_t len, struct health_report *r, struct bus_error *err)
{
	if (memchr(p, '\n', len))
		return bus_fail(err, EINVAL, "a health report is one line (one report per write)");
	if (!utf8_text_valid(p, len))
		return bus_fail(err, EINVAL, "a health report must be UTF-8 text or a JSON object");
	size_t w = 0;
	while (w < len && p[w] != ' ' && p[w] != '\t')
		w++;
	r->status = reported_word(p, w);
	if (r->status == HEALTH_UNKNOWN)
		return bus_fail(err, EINVAL, "unknown health status '%.*s': use " WORDS,
				(int)(w > 40 ? 40 : w), p);
	size_t at = w;
	while (at < len && (p[at] == ' ' || p[at] == '\t'))
		at++;
	return set_reason(r, p + at, len - at, err);
}

/* A JSON string member decoded by jansson (which refuses \u0000). */
static json_t *decode_string(const struct json_member *m)
{
	json_t *v = json_loadb(m->value, m->value_len, JSON_DECODE_ANY, NULL);
	if (v && !json_is_string(v)) {
		json_decref(v);
		return NULL;
	}
	return v;
}

static int parse_object(const char *p, size_t len, struct health_report *r,
			struct bus_error *err)
{
	struct json_member m[HEALTH_FIELDS_MAX + 2];
	if (!json_is_value(p, len))
		return bus_fail(err, EINVAL, "the health report is not valid JSON");
	char *keys = malloc(len + 1);
	if (!keys)
		return bus_fail(err, ENOMEM, "out of memory");
	int n = json_object_members(p, len, m, HEALTH_FIELDS_MAX + 2, keys);
	int rc = 0, extras = 0;
	bool have_status = false;
	if (n < 0)
		rc = bus_fail(err, EINVAL, "a JSON health report must be an object with unique keys "
			      "and at most %d fields besides status and reason", HEALTH_FIELDS_MAX);
	for (int i = 0; i < n && rc == 0; i++) {
		const char *key = m[i].key;
		if (strcmp(key, "status") == 0 || strcmp(key, "reason") == 0) {
			bool is_status = key[0] == 's';
			json_t *v = decode_string(&m[i]);
			if (!v && !(!is_status && m[i].value_len == 4 &&
				    memcmp(m[i].value, "null", 4) == 0)) {
				rc = bus_fail(err, EINVAL, "\"%s\" must be a string", key);
			} else if (is_status) {
				r->status = reported_word(json_string_value(v), json_string_length(v));
				have_status = true;
				if (r->status == HEALTH_UNKNOWN)
					rc = bus_fail(err, EINVAL, "unknown health status \"%.40s\": "
						      "use " WORDS, json_string_value(v));
			} else if (v) {
				rc = set_reason(r, json_string_value(v), json_string_length(v), err);
			}
			json_decref(v);
			continue;
		}
		for (size_t k = 0; k < sizeof computed_fields / sizeof *computed_fields; k++)
			if (strcmp(key, computed_fields[k]) == 0)
				rc = bus_fail(err, EINVAL, "\"%s\" is set by busfs, not by a report", key);
		if (rc < 0)
			break;
		if (++extras > HEALTH_FIELDS_MAX) {
			rc = bus_fail(err, EINVAL, "a JSON health report has at most %d fields "
				      "besides status and reason", HEALTH_FIELDS_MAX);
			break;
		}
		buf_putc(&r->extra, ',');
		json_append_string(&r->extra, key, strlen(key));
		buf_putc(&r->extra, ':');
		json_append_compact(&r->extra, m[i].value, m[i].value_len);
	}
	free(keys);
	if (rc == 0 && !have_status)
		rc = bus_fail(err, EINVAL, "a JSON health report needs \"status\": " WORDS);
	if (rc == 0 && (!buf_ok(&r->extra) || !buf_ok(&r->reason)))
		rc = bus_fail(err, ENOMEM, "out of memory");
	return rc;
}

int health_parse(const char *data, size_t len, struct health_report *r, struct bus_error *err)
{
	r->status = HEALTH_UNKNOWN;
	buf_reset(&r->reason);
	buf_reset(&r->extra);
	if (len > HEALTH_REPORT_MAX)
		return bus_fail(err, EINVAL, "a health report is at most %u bytes", HEALTH_REPORT_MAX);
	while (len && json_space(data[len - 1]))
		len--;
	while (len && json_space(data[0])) {
		data++;
		len--;
	}
	if (len == 0)
		return bus_fail(err, EINVAL, "empty health report: write " WORDS
				", optionally followed by a reason");
	if (data[0] == '{')
		return parse_object(data, len, r, err);
	return parse_text(data, len, r, err);
}

enum health_status health_effective(enum health_status reported, int64_t last_seen_us,
				    int64_t now_us, int64_t ttl_us)
{
	/* now - ttl cannot overflow (both are sane times); now - last_seen could. */
	if (last_seen_us && last_seen_us < now_us - ttl_us)
		return HEALTH_STALE;
	return reported;
}

enum health_status health_worst(const unsigned counts[HEALTH_NSTATUS])
{
	if (counts[HEALTH_UNHEALTHY] || counts[HEALTH_STALE])
		return HEALTH_UNHEALTHY;
	if (counts[HEALTH_DEGRADED])
		return HEALTH_DEGRADED;
	return HEALTH_HEALTHY;
}
