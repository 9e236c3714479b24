/* alerts.c — alert rules, their evaluation, active.json and alerts.jsonl (SPEC §6).
 *
 * The user's rules and every firing alert are journal records (REC_RULES, REC_ALERT),
 * so a restart shows the same rules and does not fire again what was firing. A rule
 * is evaluated per agent: for a metric, each registered agent that wrote it; for the
 * built-in gauges busfs.agent_stale (1 when stale), busfs.inbox_fill (pending and
 * leased messages over capacity) and busfs.dead_letters (letters in dead/), every
 * agent, whatever the stat. A condition must hold for `for=`
 * seconds, measured from the first evaluation that saw it, before the alert fires. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_impl.h"
#include "busfs/clock.h"
#include "busfs/json.h"

#define GAUGE_STALE "busfs.agent_stale"
#define GAUGE_FILL "busfs.inbox_fill"
#define GAUGE_DEAD "busfs.dead_letters"

static const struct rule builtin_rules[] = {
	{"agent_stale", GAUGE_STALE, STAT_MAX, OP_GE, 1, SEV_WARNING, 0},
	{"inbox_high", GAUGE_FILL, STAT_MAX, OP_GT, 0.8, SEV_WARNING, 0},
	{"dead_letter", GAUGE_DEAD, STAT_MAX, OP_GE, 1, SEV_WARNING, 0},
};
/* The built-ins of SPEC §6, shown as rules; the later ones (§10's dead_letter) are
 * shown in a comment, so the listing keeps the form scripts read. */
#define NBUILTIN_V1 2
#define NBUILTIN (sizeof builtin_rules / sizeof builtin_rules[0])

/* ---------- state ---------- */

static struct alert *alert_find(struct alerts *al, const char *rule, const char *agent)
{
	for (size_t i = 0; i < al->n; i++)
		if (strcmp(al->v[i].rule, rule) == 0 && strcmp(al->v[i].agent, agent) == 0)
			return &al->v[i];
	return NULL;
}

static struct alert *alert_get(struct alerts *al, const char *rule, const char *agent)
{
	struct alert *a = alert_find(al, rule, agent);
	if (a)
		return a;
	if (al->n == al->cap) {
		size_t cap = al->cap ? al->cap * 2 : 16;
		struct alert *v = realloc(al->v, cap * sizeof *v);
		if (!v)
			return NULL;
		al->v = v;
		al->cap = cap;
	}
	a = &al->v[al->n++];
	memset(a, 0, sizeof *a);
	snprintf(a->rule, sizeof a->rule, "%s", rule);
	snprintf(a->agent, sizeof a->agent, "%s", agent);
	a->value = NAN;
	return a;
}

static void alert_remove(struct alerts *al, struct alert *a)
{
	size_t i = (size_t)(a - al->v);
	memmove(al->v + i, al->v + i + 1, (al->n - i - 1) * sizeof *al->v);
	al->n--;
}

/* REC_RULES: bytes, the user's rules, one canonical line each. */
int rules_apply(struct bus *bus, struct reader *r)
{
	size_t len = 0;
	const char *text = rd_bytes(r, &len);
	if (r->bad)
		return -EINVAL;
	struct rule_set s;
	rule_set_init(&s);
	int rc = rules_parse(text, len, &s, NULL);
	if (rc == 0)
		rc = rule_set_replace(&bus->alerts.user, &s);
	rule_set_free(&s);
	return rc < 0 ? -EINVAL : 0;
}

/* REC_ALERT: str rule, str agent, u8 firing, u64 since_us, u64 value (double bits),
 * u8 severity. */
int alert_apply(struct bus *bus, struct reader *r)
{
	char rule[RULE_NAME_MAX + 1], agent[BUS_NAME_MAX + 1];
	rd_str(r, rule, sizeof rule);
	rd_str(r, agent, sizeof agent);
	uint8_t firing = rd_u8(r);
	int64_t since_us = (int64_t)rd_u64(r);
	uint64_t bits = rd_u64(r);
	uint8_t severity = rd_u8(r);
	double value;
	memcpy(&value, &bits, sizeof value);
	if (r->bad || severity > SEV_CRITICAL)
		return -EINVAL;
	struct alert *a = alert_get(&bus->alerts, rule, agent);
	if (!a)
		return -ENOMEM;
	char f[RULE_NAME_MAX + 64];
	snprintf(f, sizeof f, ",\"alert\":\"%s\",\"status\":\"%s\"", rule,
		 firing ? "firing" : "resolved");
	if (firing != a->firing)
		event_emit(bus, "alert", agent, f);
	if (!firing) {
		alert_remove(&bus->alerts, a);
		return 0;
	}
	a->firing = true;
	a->since_us = since_us;
	a->value = value;
	a->severity = (enum rule_severity)severity;
	return 0;
}

static void put_rules_record(struct buf *b, const struct rule_set *s)
{
	struct buf text;
	buf_init(&text);
	for (size_t i = 0; i < s->n; i++)
		rule_format(&text, &s->v[i]);
	buf_put_u8(b, REC_RULES);
	buf_put_bytes(b, text.data, text.len);
	buf_free(&text);
}

static void put_alert_record(struct buf *b, const struct alert *a, bool firing)
{
	uint64_t bits;
	double v = a->value;
	memcpy(&bits, &v, sizeof bits);
	buf_put_u8(b, REC_ALERT);
	buf_put_str(b, a->rule);
	buf_put_str(b, a->agent);
	buf_put_u8(b, firing);
	buf_put_u64(b, (uint64_t)a->since_us);
	buf_put_u64(b, bits);
	buf_put_u8(b, (uint8_t)a->severity);
}

int rules_save(struct bus *bus, struct buf *b)
{
	if (!bus->alerts.user.n)
		return 0;
	put_rules_record(b, &bus->alerts.user);
	return bus_snapshot_put(bus, b);
}

int alert_save(struct bus *bus, struct buf *b)
{
	int rc = 0;
	for (size_t i = 0; i < bus->alerts.n && rc == 0; i++) {
		if (!bus->alerts.v[i].firing)
			continue;
		put_alert_record(b, &bus->alerts.v[i], true);
		rc = bus_snapshot_put(bus, b);
	}
	return rc;
}

/* ---------- the history log ---------- */

int alerts_open(struct bus *bus, struct bus_error *err)
{
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/alerts", bus->cfg.store_dir);
	struct seglog_config cfg = {
		.dir = dir,
		.prefix = "alerts",
		.rotate_bytes = 1u << 20,
		.keep_bytes = 16u << 20,
	};
	return seglog_open(&cfg, bus_clock_now_us(), &bus->alerts.log, err);
}

void alerts_close(struct bus *bus)
{
	seglog_close(bus->alerts.log);
	bus->alerts.log = NULL;
	rule_set_free(&bus->alerts.user);
	rule_set_init(&bus->alerts.user);
	free(bus->alerts.v);
	bus->alerts.v = NULL;
	bus->alerts.n = bus->alerts.cap = 0;
}

static void put_value(struct buf *b, double v)
{
	if (isfinite(v))
		metric_format_value(b, v);
	else
		buf_puts(b, "null");
}

static void log_transition(struct bus *bus, const struct rule *r, const struct alert *a,
			   const char *state, const char *why, int64_t now)
{
	char ts[BUS_TIME_LEN + 1];
	struct buf line, msg;
	buf_init(&line);
	buf_init(&msg);
	bus_time_format(now, ts);
	if (why || !r) {
		buf_printf(&msg, "%s for %s: %s", a->rule, a->agent, why ? why : state);
	} else {
		buf_printf(&msg, "%s: %s of %s for %s is %.6g (%s%s %.6g)", a->rule,
			   rule_stat_name(r->stat), r->metric, a->agent, a->value,
			   strcmp(state, "firing") == 0 ? "" : "no longer ", rule_op_name(r->op),
			   r->threshold);
	}
	buf_printf(&line, "{\"timestamp\":\"%s\",\"alert\":\"%s\",\"state\":\"%s\",\"message\":",
		   ts, a->rule, state);
	json_append_string(&line, msg.data, msg.len);
	buf_printf(&line, ",\"severity\":\"%s\",\"metadata\":{\"agent\":\"%s\"",
		   rule_severity_name(a->severity),
		   a->agent);
	if (r) {
		buf_printf(&line, ",\"metric\":\"%s\",\"stat\":\"%s\",\"op\":\"%s\",\"threshold\":",
			   r->metric, rule_stat_name(r->stat), rule_op_name(r->op));
		metric_format_value(&line, r->threshold);
		buf_puts(&line, ",\"for_s\":");
		metric_format_value(&line, r->for_s);
	}
	buf_puts(&line, ",\"value\":");
	put_value(&line, a->value);
	buf_puts(&line, "}}\n");
	if (buf_ok(&line))
		seglog_append(bus->alerts.log, line.data, line.len, now, NULL);
	buf_free(&line);
	buf_free(&msg);
}

/* ---------- rules ---------- */

/* The rule in force under that name: the user's, else a built-in. */
static const struct rule *rule_in_force(const struct bus *bus, const char *name)
{
	const struct rule *r = rule_set_find(&bus->alerts.user, name);
	for (size_t i = 0; !r && i < NBUILTIN; i++)
		if (strcmp(builtin_rules[i].name, name) == 0)
			r = &builtin_rules[i];
	return r;
}

/* Is name a line of the "name\n" list? */
static bool listed(const struct buf *names, const char *name)
{
	size_t n = strlen(name);
	for (size_t at = 0; names && at < names->len;) {
		const char *nl = memchr(names->data + at, '\n', names->len - at);
		size_t len = nl ? (size_t)(nl - (names->data + at)) : names->len - at;
		if (len == n && memcmp(names->data + at, name, n) == 0)
			return true;
		at += len + 1;
	}
	return false;
}

int bus_rules_write_seen(struct bus *bus, const char *data, size_t len, bool replace,
			 struct buf *seen, struct bus_error *err)
{
	struct rule_set s, next;
	rule_set_init(&s);
	rule_set_init(&next);
	int rc = rules_parse(data, len, &s, err);
	for (size_t i = 0; rc == 0 && i < s.n; i++)
		if (listed(seen, s.v[i].name))
			rc = bus_fail(err, EINVAL, "rule '%s' was already given earlier in this file",
				      s.v[i].name);
	if (rc < 0) {
		rule_set_free(&s);
		return rc;
	}
	bus_lock(bus);
	rc = rule_set_replace(&next, &bus->alerts.user);
	if (rc == 0)
		rc = replace ? rule_set_replace(&next, &s) : rule_set_merge(&next, &s);
	if (rc < 0) {
		rc = bus_fail(err, ENOMEM, "out of memory");
	} else {
		buf_reset(&bus->rec);
		put_rules_record(&bus->rec, &next);
		rc = bus_commit(bus, err);
	}
	bus->alerts.cleared_at = 0;
	bus_unlock_and_wake(bus);
	for (size_t i = 0; rc == 0 && seen && i < s.n; i++)
		buf_printf(seen, "%s\n", s.v[i].name);
	rule_set_free(&s);
	rule_set_free(&next);
	return rc;
}

int bus_rules_write(struct bus *bus, const char *data, size_t len, bool replace,
		    struct bus_error *err)
{
	return bus_rules_write_seen(bus, data, len, replace, NULL, err);
}

void bus_rules_user(struct bus *bus, struct buf *out)
{
	bus_lock(bus);
	for (size_t i = 0; i < bus->alerts.user.n; i++)
		rule_format(out, &bus->alerts.user.v[i]);
	pthread_mutex_unlock(&bus->lock);
}

int bus_rules_clear(struct bus *bus, struct buf *saved, struct bus_error *err)
{
	bus_lock(bus);
	if (saved)
		for (size_t i = 0; i < bus->alerts.user.n; i++)
			rule_format(saved, &bus->alerts.user.v[i]);
	buf_reset(&bus->rec);
	buf_put_u8(&bus->rec, REC_RULES);
	buf_put_bytes(&bus->rec, "", 0);
	int rc = bus_commit(bus, err);
	bus->alerts.cleared_at = bus_clock_now_us();
	bus_unlock_and_wake(bus);
	return rc;
}

void bus_rules_render(struct bus *bus, struct buf *out)
{
	bus_lock(bus);
	buf_puts(out, "# NAME METRIC STAT OP THRESHOLD [SEVERITY] [for=SECONDS]   "
		      "(> replaces your rules, >> adds or replaces by name)\n"
		      "# built-in, replaced by a rule of the same name:\n");
	for (size_t i = 0; i < NBUILTIN; i++) {
		bool replaced = rule_set_find(&bus->alerts.user, builtin_rules[i].name);
		if (i >= NBUILTIN_V1)
			buf_puts(out, replaced ? "#   (replaced) " : "#   (built in) ");
		else if (replaced)
			buf_puts(out, "#   (replaced) ");
		rule_format(out, &builtin_rules[i]);
	}
	buf_puts(out, "# yours:\n");
	for (size_t i = 0; i < bus->alerts.user.n; i++)
		rule_format(out, &bus->alerts.user.v[i]);
	pthread_mutex_unlock(&bus->lock);
}

/* ---------- evaluation ---------- */

struct eval {
	struct bus *bus;
	const struct rule *rule;
	int64_t now;
};

static void fire_or_resolve(struct eval *e, const char *agent, double value)
{
	struct bus *bus = e->bus;
	const struct rule *r = e->rule;
	bool holds = rule_compare(r->op, value, r->threshold);
	struct alert *a = alert_find(&bus->alerts, r->name, agent);
	if (!holds) {
		if (a && a->firing) {
			a->value = value;
			log_transition(bus, r, a, "resolved", NULL, e->now);
			buf_reset(&bus->rec);
			put_alert_record(&bus->rec, a, false);
			bus_commit(bus, NULL);   /* applying it removes the alert */
		} else if (a) {
			alert_remove(&bus->alerts, a);
		}
		return;
	}
	if (!a) {
		if (bus->alerts.n == bus->alerts.cap && bus->alerts.n >= 4096)
			return;  /* bounded: at most this many alerts pending or firing */
		a = alert_get(&bus->alerts, r->name, agent);
		if (!a)
			return;
		a->pending_since = e->now;
	}
	a->value = value;
	if (a->firing)
		return;
	if (!a->pending_since)
		a->pending_since = e->now;
	if ((double)(e->now - a->pending_since) < r->for_s * 1e6)
		return;
	a->since_us = e->now;
	a->severity = r->severity;
	buf_reset(&bus->rec);
	put_alert_record(&bus->rec, a, true);
	if (bus_commit(bus, NULL) == 0)
		log_transition(bus, r, a, "firing", NULL, e->now);
}

static void eval_metric_agent(void *ctx, const char *agent, const struct window_stats *w)
{
	struct eval *e = ctx;
	if (bus_find(e->bus, agent))
		fire_or_resolve(e, agent, window_stat(w, e->rule->stat));
}

static void eval_rule(struct eval *e)
{
	struct bus *bus = e->bus;
	const char *metric = e->rule->metric;
	bool stale = strcmp(metric, GAUGE_STALE) == 0, fill = strcmp(metric, GAUGE_FILL) == 0;
	if (stale || fill || strcmp(metric, GAUGE_DEAD) == 0) {
		for (size_t i = 0; i < bus->nagents; i++) {
			const struct agent *a = bus->by_name[i];
			double v = stale ? (bus_agent_health(bus, a, e->now) == HEALTH_STALE)
				 : fill ? (double)agent_held(a) /
					  (double)bus->cfg.inbox_capacity
					: (double)a->dead.live;
			fire_or_resolve(e, a->name, v);
		}
		return;
	}
	metrics_each_agent(&bus->metrics, metric, e->now, eval_metric_agent, e);
}

void bus_tick(struct bus *bus)
{
	bus_lock(bus);
	int64_t now = bus_clock_now_us();
	metrics_expire(&bus->metrics, now);
	/* `> alerts/rules` clears the rules at its first (empty) flush and sets them at
	 * its write a moment later: do not resolve everything in between. */
	if (bus->alerts.cleared_at && now - bus->alerts.cleared_at < 1000000) {
		bus_unlock_and_wake(bus);
		return;
	}
	struct eval e = {bus, NULL, now};
	/* Alerts of rules or agents that are gone resolve. */
	for (size_t i = bus->alerts.n; i-- > 0;) {
		struct alert *a = &bus->alerts.v[i];
		const struct rule *r = rule_in_force(bus, a->rule);
		const char *why = !r ? "resolved, its rule was removed"
			       : !bus_find(bus, a->agent) ? "resolved, the agent was removed" : NULL;
		if (!why)
			continue;
		if (a->firing) {
			log_transition(bus, r, a, "resolved", why, now);
			buf_reset(&bus->rec);
			put_alert_record(&bus->rec, a, false);
			bus_commit(bus, NULL);
		} else {
			alert_remove(&bus->alerts, a);
		}
	}
	for (size_t i = 0; i < NBUILTIN; i++) {
		if (rule_set_find(&bus->alerts.user, builtin_rules[i].name))
			continue;
		e.rule = &builtin_rules[i];
		eval_rule(&e);
	}
	for (size_t i = 0; i < bus->alerts.user.n; i++) {
		e.rule = &bus->alerts.user.v[i];
		eval_rule(&e);
	}
	bus_unlock_and_wake(bus);
}

/* ---------- documents ---------- */

void bus_active_render(struct bus *bus, struct buf *out)
{
	char ts[BUS_TIME_LEN + 1];
	bus_lock(bus);
	bus_time_format(bus_clock_now_us(), ts);
	buf_printf(out, "{\"timestamp\":\"%s\",\"alerts\":[", ts);
	bool first = true;
	for (size_t i = 0; i < bus->alerts.n; i++) {
		const struct alert *a = &bus->alerts.v[i];
		const struct rule *r = rule_in_force(bus, a->rule);
		if (!a->firing || !r)
			continue;
		bus_time_format(a->since_us, ts);
		buf_printf(out, "%s{\"alert\":\"%s\",\"agent\":\"%s\",\"severity\":\"%s\","
			   "\"since\":\"%s\",\"value\":", first ? "" : ",", a->rule, a->agent,
			   rule_severity_name(r->severity), ts);
		put_value(out, a->value);
		buf_puts(out, ",\"threshold\":");
		metric_format_value(out, r->threshold);
		buf_putc(out, '}');
		first = false;
	}
	buf_puts(out, "]}\n");
	pthread_mutex_unlock(&bus->lock);
}

ssize_t bus_alerts_read(struct bus *bus, uint64_t *off, char *buf, size_t n)
{
	bus_lock(bus);
	ssize_t r = seglog_read(bus->alerts.log, off, buf, n);
	pthread_mutex_unlock(&bus->lock);
	return r;
}

uint64_t bus_alerts_size(struct bus *bus)
{
	bus_lock(bus);
	uint64_t n = seglog_end(bus->alerts.log);
	pthread_mutex_unlock(&bus->lock);
	return n;
}
