/* metrics.c — metric points: the log, the per-agent views, the sketches (metrics.h).
 *
 * Ownership: struct metrics owns the seglog, every series (and its sketches) and
 * every view's arrays; metrics_close frees them all. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "busfs/clock.h"
#include "busfs/json.h"
#include "busfs/regfile.h"
#include "metrics.h"

/* ---------- series ---------- */

#define SERIES_KEY_MAX (METRIC_NAME_MAX + 64 + METRIC_UNIT_MAX + 8)

static void series_key(char *key, const char *metric, const char *agent, const char *unit)
{
	snprintf(key, SERIES_KEY_MAX, "%s\x01%s\x01%s", metric, agent, unit);
}

/* The series, created when new (whatever max_series: metrics_add checks it first,
 * and a rebuild keeps what was accepted); NULL when out of memory. */
static struct series *series_get(struct metrics *m, const char *metric, const char *agent,
				 const char *unit)
{
	char key[SERIES_KEY_MAX];
	series_key(key, metric, agent, unit);
	uint64_t at = strmap_get(&m->series_at, key);
	if (at)
		return m->series[at - 1];
	if (m->nseries == m->series_cap) {
		size_t cap = m->series_cap ? m->series_cap * 2 : 32;
		struct series **p = realloc(m->series, cap * sizeof *p);
		if (!p)
			return NULL;
		m->series = p;
		m->series_cap = cap;
	}
	struct series *s = calloc(1, sizeof *s);
	if (!s || strmap_set(&m->series_at, key, m->nseries + 1) < 0) {
		free(s);
		return NULL;
	}
	snprintf(s->metric, sizeof s->metric, "%s", metric);
	snprintf(s->agent, sizeof s->agent, "%s", agent);
	snprintf(s->unit, sizeof s->unit, "%s", unit);
	s->last_us = INT64_MIN;
	for (int i = 0; i < METRIC_SLICES; i++)
		s->slice_k[i] = INT64_MIN;
	s->past_k = INT64_MIN;
	sketch_init(&s->past);
	m->series[m->nseries++] = s;
	return s;
}

static void slice_free(struct series *s, int i)
{
	if (s->slice[i]) {
		sketch_free(s->slice[i]);
		free(s->slice[i]);
		s->slice[i] = NULL;
	}
	s->unshrunk &= ~(UINT32_C(1) << i);
}

static void series_free(struct series *s)
{
	for (int i = 0; i < METRIC_SLICES; i++)
		slice_free(s, i);
	sketch_free(&s->past);
	free(s);
}

/* Frees series i; the last one takes its place in the array and in the index. */
static void series_remove(struct metrics *m, size_t i)
{
	char key[SERIES_KEY_MAX];
	struct series *s = m->series[i];
	series_key(key, s->metric, s->agent, s->unit);
	strmap_del(&m->series_at, key);
	series_free(s);
	if (i != --m->nseries) {
		struct series *moved = m->series[m->nseries];
		m->series[i] = moved;
		series_key(key, moved->metric, moved->agent, moved->unit);
		strmap_set(&m->series_at, key, i + 1);   /* the key is there: no allocation */
	}
}

static int64_t slice_of(const struct metrics *m, int64_t us)
{
	return us >= 0 ? us / m->slice_us : -1;
}

/* Counts a point; only points inside the window reach a sketch. */
static int series_add(struct metrics *m, struct series *s, double v, int64_t ts, int64_t now)
{
	int64_t k = slice_of(m, ts), now_k = slice_of(m, now);
	if (k > now_k - METRIC_SLICES && k >= 0) {
		int i = (int)(k % METRIC_SLICES);
		if (s->slice_k[i] != k) {
			slice_free(s, i);
			s->slice_k[i] = k;
		}
		if (!s->slice[i]) {
			if (!(s->slice[i] = malloc(sizeof *s->slice[i])))
				return -ENOMEM;
			sketch_init(s->slice[i]);
		}
		if (sketch_add(s->slice[i], v) < 0)
			return -ENOMEM;
		s->unshrunk |= UINT32_C(1) << i;
		if (k < s->past_k)
			s->past_k = INT64_MIN;   /* a finished slice changed (a rebuild, a clock step) */
	}
	if (ts > s->last_us)
		s->last_us = ts;
	s->count_total++;
	s->sum_total += v;
	return 0;
}

/* Adds the series' sketches of the current window to acc. */
static int series_window(const struct metrics *m, struct series *s, int64_t now,
			 struct sketch *acc)
{
	int64_t now_k = slice_of(m, now);
	if (s->past_k != now_k) {
		sketch_reset(&s->past);
		s->past_k = now_k;
		for (int i = 0; i < METRIC_SLICES; i++) {
			int64_t k = s->slice_k[i];
			if (k > now_k - METRIC_SLICES && k < now_k && s->slice[i] &&
			    sketch_merge(&s->past, s->slice[i]) < 0) {
				s->past_k = INT64_MIN;
				return -ENOMEM;
			}
		}
		sketch_shrink(&s->past);   /* read, not written, until the next slice */
	}
	if (sketch_merge(acc, &s->past) < 0)
		return -ENOMEM;
	int cur = (int)((now_k >= 0 ? now_k : 0) % METRIC_SLICES);
	if (s->slice_k[cur] == now_k && s->slice[cur] && sketch_merge(acc, s->slice[cur]) < 0)
		return -ENOMEM;
	return 0;
}

static void stats_of(const struct metrics *m, const struct sketch *sk, struct window_stats *w)
{
	w->count = sk->count;
	w->rate = (double)sk->count / ((double)m->window_us / 1e6);
	if (!sk->count) {
		w->min = w->max = w->avg = w->p50 = w->p95 = w->p99 = NAN;
		return;
	}
	w->min = sk->min;
	w->max = sk->max;
	w->avg = sk->sum / (double)sk->count;
	w->p50 = sketch_quantile(sk, 0.50);
	w->p95 = sketch_quantile(sk, 0.95);
	w->p99 = sketch_quantile(sk, 0.99);
}

double window_stat(const struct window_stats *w, enum rule_stat stat)
{
	switch (stat) {
	case STAT_COUNT: return (double)w->count;
	case STAT_MIN: return w->min;
	case STAT_MAX: return w->max;
	case STAT_AVG: return w->avg;
	case STAT_P50: return w->p50;
	case STAT_P95: return w->p95;
	case STAT_P99: return w->p99;
	case STAT_RATE: return w->rate;
	}
	return NAN;
}

void metrics_window(struct metrics *m, const char *metric, const char *agent, int64_t now_us,
		    struct window_stats *out)
{
	struct sketch acc;
	sketch_init(&acc);
	for (size_t i = 0; i < m->nseries; i++) {
		struct series *s = m->series[i];
		if (strcmp(s->metric, metric) == 0 && (!agent || strcmp(s->agent, agent) == 0))
			series_window(m, s, now_us, &acc);
	}
	stats_of(m, &acc, out);
	sketch_free(&acc);
}

static int cmp_series_agent(const void *a, const void *b)
{
	const struct series *x = *(struct series *const *)a, *y = *(struct series *const *)b;
	return strcmp(x->agent, y->agent);
}

void metrics_each_agent(struct metrics *m, const char *metric, int64_t now_us,
			void (*fn)(void *ctx, const char *agent, const struct window_stats *w),
			void *ctx)
{
	struct series **v = malloc((m->nseries + 1) * sizeof *v);
	size_t n = 0;
	if (!v)
		return;
	for (size_t i = 0; i < m->nseries; i++)
		if (strcmp(m->series[i]->metric, metric) == 0)
			v[n++] = m->series[i];
	if (n)
		qsort(v, n, sizeof *v, cmp_series_agent);
	for (size_t i = 0; i < n;) {
		/* A metric written with several units is several series of one agent. */
		struct sketch acc;
		struct window_stats w;
		sketch_init(&acc);
		size_t j = i;
		for (; j < n && strcmp(v[j]->agent, v[i]->agent) == 0; j++)
			series_window(m, v[j], now_us, &acc);
		stats_of(m, &acc, &w);
		sketch_free(&acc);
		fn(ctx, v[i]->agent, &w);
		i = j;
	}
	free(v);
}

/* ---------- views ---------- */

static struct pview *view_get(struct metrics *m, const char *agent, bool create)
{
	uint64_t at = strmap_get(&m->view_at, agent);
	if (at)
		return &m->views[at - 1];
	if (!create)
		return NULL;
	if (m->nviews == m->views_cap) {
		size_t cap = m->views_cap ? m->views_cap * 2 : 16;
		struct pview *p = realloc(m->views, cap * sizeof *p);
		if (!p)
			return NULL;
		m->views = p;
		m->views_cap = cap;
	}
	if (strmap_set(&m->view_at, agent, m->nviews + 1) < 0)
		return NULL;
	struct pview *v = &m->views[m->nviews++];
	memset(v, 0, sizeof *v);
	snprintf(v->agent, sizeof v->agent, "%s", agent);
	return v;
}

static void view_expire(struct metrics *m, struct pview *v)
{
	uint64_t start = seglog_start(m->log);
	while (v->head < v->n && v->goff[v->head] < start)
		v->head++;
	if (v->head > 1024 && v->head > v->n / 2) {
		memmove(v->voff, v->voff + v->head, (v->n - v->head) * sizeof *v->voff);
		memmove(v->goff, v->goff + v->head, (v->n - v->head) * sizeof *v->goff);
		v->n -= v->head;
		v->head = 0;
	}
}

static int view_add(struct metrics *m, const char *agent, uint64_t goff, size_t len)
{
	struct pview *v = view_get(m, agent, true);
	if (!v)
		return -ENOMEM;
	if (v->n == v->cap) {
		view_expire(m, v);
		if (v->n == v->cap) {
			size_t cap = v->cap ? v->cap * 2 : 64;
			uint64_t *a = realloc(v->voff, cap * sizeof *a);
			if (!a)
				return -ENOMEM;
			v->voff = a;
			uint64_t *b = realloc(v->goff, cap * sizeof *b);
			if (!b)
				return -ENOMEM;
			v->goff = b;
			v->cap = cap;
		}
	}
	v->voff[v->n] = v->vend;
	v->goff[v->n] = goff;
	v->n++;
	v->vend += len;
	return 0;
}

ssize_t metrics_read(struct metrics *m, const char *agent, uint64_t *off, char *buf, size_t n)
{
	if (!agent)
		return seglog_read(m->log, off, buf, n);
	struct pview *v = view_get(m, agent, false);
	if (!v)
		return 0;
	view_expire(m, v);
	if (v->head == v->n)
		return 0;
	if (*off < v->voff[v->head])
		*off = v->voff[v->head];
	if (*off >= v->vend)
		return 0;
	size_t lo = v->head, hi = v->n;   /* the last entry with voff <= *off */
	while (hi - lo > 1) {
		size_t mid = (lo + hi) / 2;
		if (v->voff[mid] <= *off)
			lo = mid;
		else
			hi = mid;
	}
	size_t done = 0;
	for (size_t i = lo; i < v->n && done < n; i++) {
		uint64_t end = i + 1 < v->n ? v->voff[i + 1] : v->vend;
		uint64_t from = *off + done;
		uint64_t want = end - from < n - done ? end - from : n - done;
		uint64_t g = v->goff[i] + (from - v->voff[i]);
		while (want > 0) {
			uint64_t at = g;
			ssize_t r = seglog_read(m->log, &at, buf + done, (size_t)want);
			if (r <= 0 || at != g)
				return done ? (ssize_t)done : (r < 0 ? r : 0);
			done += (size_t)r;
			g += (uint64_t)r;
			want -= (uint64_t)r;
		}
	}
	return (ssize_t)done;
}

uint64_t metrics_size(struct metrics *m, const char *agent)
{
	if (!agent)
		return seglog_end(m->log);
	struct pview *v = view_get(m, agent, false);
	return v ? v->vend : 0;
}

/* One pass over the series: frees those with no point within the retention and the
 * slices that left the window, shrinks the slices that ended since the last pass,
 * and frees the merged past of a series not read since its slice ended (a reading
 * rebuilds it, exactly as it would have). */
static void series_tidy(struct metrics *m, int64_t now)
{
	int64_t now_k = slice_of(m, now);
	m->tidied_us = now;
	for (size_t n = m->nseries; n-- > 0;) {
		struct series *s = m->series[n];
		if (s->last_us < now - m->keep_us) {
			series_remove(m, n);
			continue;
		}
		for (int i = 0; i < METRIC_SLICES; i++) {
			if (!s->slice[i])
				continue;
			if (s->slice_k[i] <= now_k - METRIC_SLICES) {
				slice_free(s, i);
			} else if ((s->unshrunk >> i & 1) && s->slice_k[i] < now_k) {
				sketch_shrink(s->slice[i]);
				s->unshrunk &= ~(UINT32_C(1) << i);
			}
		}
		if (s->past_k != now_k) {
			sketch_free(&s->past);
			s->past_k = INT64_MIN;
		}
	}
}

void metrics_expire(struct metrics *m, int64_t now_us)
{
	seglog_expire(m->log, now_us);
	series_tidy(m, now_us);
}

/* Where each view will start once the log starts at new_start, written to
 * STORE/metrics/views before the segments go (a crash in between leaves a base a
 * little too high: sizes still never shrink). */
static void write_bases(void *ctx, uint64_t new_start)
{
	struct metrics *m = ctx;
	struct buf b;
	char path[4200], tmp[4200];
	buf_init(&b);
	for (size_t i = 0; i < m->nviews; i++) {
		const struct pview *v = &m->views[i];
		size_t lo = v->head, hi = v->n;   /* the first line kept */
		while (lo < hi) {
			size_t mid = (lo + hi) / 2;
			if (v->goff[mid] < new_start)
				lo = mid + 1;
			else
				hi = mid;
		}
		buf_printf(&b, "%s %" PRIu64 "\n", v->agent, lo < v->n ? v->voff[lo] : v->vend);
	}
	snprintf(path, sizeof path, "%s/views", m->dir);
	snprintf(tmp, sizeof tmp, "%s/views.tmp", m->dir);
	int fd = open_regular_at(AT_FDCWD, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	bool ok = fd >= 0 && buf_ok(&b) && write(fd, b.data, b.len) == (ssize_t)b.len;
	if (fd >= 0)
		close(fd);
	if (ok)
		rename(tmp, path);
	else
		unlink(tmp);
	buf_free(&b);
}

static void read_bases(struct metrics *m)
{
	char path[4200], line[128];
	snprintf(path, sizeof path, "%s/views", m->dir);
	int fd = open_regular_at(AT_FDCWD, path, O_RDONLY, 0);
	FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
	if (!f) {
		if (fd >= 0)
			close(fd);
		return;
	}
	/* "NAME BASE\n": BASE is decimal digits only (no sign, below 2^63); any other
	 * line is ignored, and that view starts at the oldest point kept. */
	while (fgets(line, sizeof line, f)) {
		char name[65], *sp = strchr(line, ' '), *end;
		struct pview *v;
		if (!sp || sp == line || (size_t)(sp - line) >= sizeof name || sp[1] < '0' ||
		    sp[1] > '9')
			continue;
		errno = 0;
		unsigned long long base = strtoull(sp + 1, &end, 10);
		if (errno || base > INT64_MAX || (*end != '\n' && *end != '\0'))
			continue;
		memcpy(name, line, (size_t)(sp - line));
		name[sp - line] = '\0';
		if ((v = view_get(m, name, true)))
			v->vend = base;   /* the view's lines kept continue from here */
	}
	fclose(f);
}

/* ---------- adding points ---------- */

static int index_point(struct metrics *m, const char *agent, const char *metric,
		       const char *unit, double v, int64_t ts, uint64_t off, size_t len,
		       int64_t now)
{
	struct series *s = series_get(m, metric, agent, unit);
	if (!s || view_add(m, agent, off, len) < 0)
		return -ENOMEM;
	return series_add(m, s, v, ts, now);
}

/* How many series the points would start; -ENOMEM. */
static ssize_t series_new_in(struct metrics *m, const char *agent,
			     const struct metric_point *pts, size_t n)
{
	char key[SERIES_KEY_MAX];
	struct strmap fresh;
	strmap_init(&fresh);
	for (size_t i = 0; i < n; i++) {
		series_key(key, pts[i].name, agent, pts[i].unit);
		if (!strmap_get(&m->series_at, key) && !strmap_get(&fresh, key) &&
		    strmap_set(&fresh, key, 1) < 0) {
			strmap_free(&fresh);
			return -ENOMEM;
		}
	}
	ssize_t count = (ssize_t)fresh.count;
	strmap_free(&fresh);
	return count;
}

/* 0 when the points may start the series they need; at the cap, series gone idle
 * since the last tick are freed first (at most one pass a slice). */
static int series_room(struct metrics *m, const char *agent, const struct metric_point *pts,
		       size_t n, int64_t now, struct bus_error *err)
{
	ssize_t fresh = series_new_in(m, agent, pts, n);
	if (fresh < 0)
		return bus_fail(err, ENOMEM, "out of memory");
	if (m->nseries + (size_t)fresh <= m->max_series)
		return 0;
	if (now - m->tidied_us >= m->slice_us) {
		series_tidy(m, now);
		if (m->nseries + (size_t)fresh <= m->max_series)
			return 0;
	}
	return bus_fail(err, ENOSPC,
			"too many metric series: %zu of --max-series %zu, and this write starts "
			"%zd more", m->nseries, m->max_series, fresh);
}

int metrics_add(struct metrics *m, const char *agent, const struct metric_point *pts, size_t n,
		int64_t now_us, struct bus_error *err)
{
	char ts[BUS_TIME_LEN + 1];
	int room = series_room(m, agent, pts, n, now_us, err);
	if (room < 0)
		return room;
	size_t *ends = malloc(n * sizeof *ends);
	if (!ends)
		return bus_fail(err, ENOMEM, "out of memory");
	bus_time_format(now_us, ts);
	buf_reset(&m->scratch);
	for (size_t i = 0; i < n; i++) {
		metric_format_point(&m->scratch, ts, agent, &pts[i]);
		ends[i] = m->scratch.len;
	}
	uint64_t off;
	int rc = buf_ok(&m->scratch) ? seglog_append(m->log, m->scratch.data, m->scratch.len,
						      now_us, &off)
				     : -ENOMEM;
	if (rc < 0) {
		free(ends);
		if (rc == -ENOSPC)
			return bus_fail(err, ENOSPC, "no space left for metric points in the store");
		return bus_fail(err, rc == -ENOMEM ? ENOMEM : EIO,
				"the store could not record the points: %s", strerror(-rc));
	}
	size_t start = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		rc = index_point(m, agent, pts[i].name, pts[i].unit, pts[i].value, now_us,
				 off + start, ends[i] - start, now_us);
		start = ends[i];
	}
	free(ends);
	m->points_total += n;
	if (m->scratch.cap > (1u << 20)) {
		buf_free(&m->scratch);
		buf_init(&m->scratch);
	}
	/* The points are stored; only the in-memory summary could be short of memory. */
	return rc < 0 ? bus_fail(err, ENOMEM, "out of memory indexing metric points") : 0;
}

/* ---------- rebuilding from the log ---------- */

/* Copies the string value that follows `"key":"` at *p (the bus wrote it, so it has no
 * escapes in these fields) and advances *p past its closing quote. */
static bool take_string(const char **p, const char *end, const char *key, char *out,
			size_t size)
{
	size_t kl = strlen(key);
	if ((size_t)(end - *p) < kl || memcmp(*p, key, kl) != 0)
		return false;
	const char *s = *p + kl;
	const char *q = memchr(s, '"', (size_t)(end - s));
	if (!q || (size_t)(q - s) >= size || memchr(s, '\\', (size_t)(q - s)))
		return false;
	memcpy(out, s, (size_t)(q - s));
	out[q - s] = '\0';
	*p = q + 1;
	return true;
}

struct rebuild {
	struct metrics *m;
	int64_t now;
	uint64_t skipped;
};

static int rebuild_line(void *ctx, uint64_t off, const char *line, size_t len)
{
	struct rebuild *rb = ctx;
	const char *p = line, *end = line + len;
	char ts[BUS_TIME_LEN + 8], agent[65], metric[METRIC_NAME_MAX + 1], unit[METRIC_UNIT_MAX + 1];
	char num[64];
	int64_t when;
	double v;
	if (!take_string(&p, end, "{\"timestamp\":\"", ts, sizeof ts) ||
	    !bus_time_parse(ts, &when) || !take_string(&p, end, ",\"agent\":\"", agent, sizeof agent) ||
	    !take_string(&p, end, ",\"metric\":\"", metric, sizeof metric) ||
	    (size_t)(end - p) < 9 || memcmp(p, ",\"value\":", 9) != 0) {
		rb->skipped++;
		return 0;
	}
	p += 9;
	const char *comma = memchr(p, ',', (size_t)(end - p));
	if (!comma || (size_t)(comma - p) >= sizeof num ||
	    !metric_number_parse(p, (size_t)(comma - p), &v)) {
		rb->skipped++;
		return 0;
	}
	p = comma;
	if (!take_string(&p, end, ",\"unit\":\"", unit, sizeof unit)) {
		rb->skipped++;
		return 0;
	}
	return index_point(rb->m, agent, metric, unit, v, when, off, len + 1, rb->now);
}

int metrics_open(struct metrics *m, const char *store_dir, double window_s, double retention_s,
		 uint64_t max_bytes, size_t max_series, int64_t now_us, struct bus_error *err)
{
	memset(m, 0, sizeof *m);
	strmap_init(&m->series_at);
	strmap_init(&m->view_at);
	buf_init(&m->scratch);
	m->window_us = (int64_t)(window_s * 1e6);
	m->slice_us = m->window_us / METRIC_SLICES > 1000 ? m->window_us / METRIC_SLICES : 1000;
	int64_t keep = (int64_t)(retention_s * 1e6);
	m->keep_us = keep;
	m->max_series = max_series ? max_series : METRICS_MAX_SERIES;
	m->tidied_us = 0;
	snprintf(m->dir, sizeof m->dir, "%s/metrics", store_dir);
	struct seglog_config cfg = {
		.dir = m->dir,
		.prefix = "points",
		.rotate_us = keep / 16 > 1000000 ? keep / 16 : 1000000,
		.rotate_bytes = 64u << 20,
		.keep_us = keep,
		.keep_bytes = max_bytes,
		.before_drop = write_bases,
		.ctx = m,
	};
	int rc = seglog_open(&cfg, now_us, &m->log, err);
	if (rc < 0)
		return rc;
	read_bases(m);
	struct rebuild rb = {m, now_us, 0};
	rc = seglog_scan(m->log, rebuild_line, &rb);
	if (rc < 0) {
		metrics_close(m);
		return bus_fail(err, -rc, "cannot rebuild metric summaries from %s: %s", m->dir,
				strerror(-rc));
	}
	metrics_expire(m, now_us);
	return 0;
}

void metrics_close(struct metrics *m)
{
	for (size_t i = 0; i < m->nseries; i++)
		series_free(m->series[i]);
	free(m->series);
	for (size_t i = 0; i < m->nviews; i++) {
		free(m->views[i].voff);
		free(m->views[i].goff);
	}
	free(m->views);
	strmap_free(&m->series_at);
	strmap_free(&m->view_at);
	buf_free(&m->scratch);
	seglog_close(m->log);
	memset(m, 0, sizeof *m);
}

/* ---------- documents ---------- */

static int cmp_series(const void *a, const void *b)
{
	const struct series *x = *(struct series *const *)a, *y = *(struct series *const *)b;
	int c = strcmp(x->metric, y->metric);
	if (!c)
		c = strcmp(x->agent, y->agent);
	return c ? c : strcmp(x->unit, y->unit);
}

/* The series sorted by metric, agent, unit (a copy of the pointers; free it). */
static struct series **sorted_series(struct metrics *m)
{
	struct series **v = malloc((m->nseries + 1) * sizeof *v);
	if (!v)
		return NULL;
	if (m->nseries) {
		memcpy(v, m->series, m->nseries * sizeof *v);
		qsort(v, m->nseries, sizeof *v, cmp_series);
	}
	return v;
}

static void put_number(struct buf *b, double v)
{
	if (isfinite(v))
		metric_format_value(b, v);
	else
		buf_puts(b, "null");
}

void metrics_summary_render(struct metrics *m, int64_t now_us, struct buf *out)
{
	struct series **v = sorted_series(m);
	buf_puts(out, "{\"window_s\":");
	metric_format_value(out, (double)m->window_us / 1e6);
	buf_puts(out, ",\"metrics\":{");
	bool first = true;
	for (size_t i = 0; v && i < m->nseries;) {
		struct sketch acc;
		sketch_init(&acc);
		size_t j = i;
		for (; j < m->nseries && strcmp(v[j]->metric, v[i]->metric) == 0; j++)
			series_window(m, v[j], now_us, &acc);
		if (acc.count) {
			struct window_stats w;
			stats_of(m, &acc, &w);
			buf_puts(out, first ? "\"" : ",\"");
			buf_puts(out, v[i]->metric);
			buf_printf(out, "\":{\"count\":%" PRIu64 ",\"min\":", w.count);
			put_number(out, w.min);
			buf_puts(out, ",\"max\":");
			put_number(out, w.max);
			buf_puts(out, ",\"avg\":");
			put_number(out, w.avg);
			buf_puts(out, ",\"p50\":");
			put_number(out, w.p50);
			buf_puts(out, ",\"p95\":");
			put_number(out, w.p95);
			buf_puts(out, ",\"p99\":");
			put_number(out, w.p99);
			buf_putc(out, '}');
			first = false;
		}
		sketch_free(&acc);
		i = j;
	}
	buf_puts(out, "}}\n");
	free(v);
}

/* A Prometheus label value: backslash, double quote and newline escaped. */
static void prom_label(struct buf *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			buf_putc(b, '\\');
		if (*s == '\n') {
			buf_puts(b, "\\n");
			continue;
		}
		buf_putc(b, *s);
	}
}

static void prom_value(struct buf *b, double v)
{
	if (isnan(v))
		buf_puts(b, "NaN");
	else if (isinf(v))
		buf_puts(b, v > 0 ? "+Inf" : "-Inf");
	else
		metric_format_value(b, v);
}

void metrics_prom_render(struct metrics *m, int64_t now_us, struct buf *out)
{
	static const struct { const char *label; double q; } qs[] = {
		{"0.5", 0.50}, {"0.95", 0.95}, {"0.99", 0.99},
	};
	struct series **v = sorted_series(m);
	buf_puts(out, "# HELP busfs_user_metric Points written to agents/NAME/metrics: quantiles "
		      "over the summary window, sum and count since the oldest kept point.\n"
		      "# TYPE busfs_user_metric summary\n");
	for (size_t i = 0; v && i < m->nseries; i++) {
		struct series *s = v[i];
		struct sketch acc;
		sketch_init(&acc);
		series_window(m, s, now_us, &acc);
		struct buf labels;
		buf_init(&labels);
		buf_puts(&labels, "name=\"");
		prom_label(&labels, s->metric);
		buf_puts(&labels, "\",agent=\"");
		prom_label(&labels, s->agent);
		buf_puts(&labels, "\",unit=\"");
		prom_label(&labels, s->unit);
		buf_putc(&labels, '"');
		for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
			buf_printf(out, "busfs_user_metric{%.*s,quantile=\"%s\"} ", (int)labels.len,
				   labels.data, qs[k].label);
			prom_value(out, sketch_quantile(&acc, qs[k].q));
			buf_putc(out, '\n');
		}
		buf_printf(out, "busfs_user_metric_sum{%.*s} ", (int)labels.len, labels.data);
		prom_value(out, s->sum_total);
		buf_printf(out, "\nbusfs_user_metric_count{%.*s} %" PRIu64 "\n", (int)labels.len,
			   labels.data, s->count_total);
		buf_free(&labels);
		sketch_free(&acc);
	}
	free(v);
}
