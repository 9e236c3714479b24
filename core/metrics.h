/* metrics.h — internal to the core: stored metric points, their file views and their
 * summaries. Every function here runs under the bus lock.
 *
 * Points are one time-ordered log (seglog "points" in STORE/metrics), so
 * metrics/metrics.jsonl is the log itself, read by offset. An agent's `metrics` file
 * is a view of the same log: per agent name, the log offsets of its lines and their
 * offsets within the view. Summaries come from sketches per series (metric, agent,
 * unit) and time slice: SLICES slices of window/SLICES each, reused round robin, so
 * a summary merges at most SLICES sketches per series, however many points the
 * window holds. A series holds memory for what it has: a slice's sketch exists once
 * a point lands in it, is shrunk (sketch_shrink) at the first tick after its slice
 * ends and freed once it leaves the window, so an idle series costs its struct and
 * little else. At most max_series series exist (a write that would start more gets
 * ENOSPC); one with no point within the retention is freed at a tick. Everything is
 * rebuilt from the log
 * at start, and STORE/metrics/views keeps where each agent's view began after the
 * dropped points ("NAME OFFSET" lines, rewritten before points are dropped), so a
 * view's size never shrinks, restarts included. */
#ifndef BUSFS_CORE_METRICS_H
#define BUSFS_CORE_METRICS_H

#include <stdint.h>
#include <sys/types.h>

#include "busfs/buf.h"
#include "busfs/error.h"
#include "busfs/metric.h"
#include "busfs/rules.h"
#include "busfs/seglog.h"
#include "busfs/sketch.h"
#include "busfs/strmap.h"

#define METRIC_SLICES 30

#define METRICS_MAX_SERIES 10000   /* the default of --max-series */

struct series {
	char metric[METRIC_NAME_MAX + 1];
	char agent[65];
	char unit[METRIC_UNIT_MAX + 1];
	uint64_t count_total;           /* since the oldest point kept at start */
	double sum_total;
	int64_t last_us;                /* the newest point's time */
	uint32_t unshrunk;              /* bit i: slice[i] took points since its last shrink */
	int64_t slice_k[METRIC_SLICES]; /* which slice (time / slice_us) each sketch holds */
	struct sketch *slice[METRIC_SLICES];   /* NULL: no point in that slice */
	/* The window's finished slices merged, for the current slice past_k: a reading
	 * then merges two sketches, not thirty. Invalid (INT64_MIN) when a point lands in
	 * a finished slice, which only a rebuild at start does. */
	int64_t past_k;
	struct sketch past;
};

/* One agent's view: entry i is a line at log offset goff[i] and view offset voff[i];
 * entries before head have expired. */
struct pview {
	char agent[65];
	uint64_t *voff, *goff;
	size_t head, n, cap;
	uint64_t vend;                  /* bytes ever in this view */
};

struct metrics {
	struct seglog *log;
	char dir[4096];                 /* STORE/metrics */
	int64_t window_us, slice_us;
	int64_t keep_us;                /* the retention: older points and idle series go */
	size_t max_series;
	int64_t tidied_us;              /* the last pass of series_tidy */
	struct strmap series_at;        /* "metric\x01agent\x01unit" -> index + 1 */
	struct series **series;
	size_t nseries, series_cap;
	struct strmap view_at;          /* agent name -> index + 1 */
	struct pview *views;
	size_t nviews, views_cap;
	uint64_t points_total;          /* points accepted since start */
	struct buf scratch;
};

/* The window statistic of the points of (metric, agent) over all units; NAN when
 * there is none (count and rate are then 0). */
struct window_stats {
	uint64_t count;
	double min, max, avg, p50, p95, p99, rate;
};

/* max_series 0 means METRICS_MAX_SERIES. */
int metrics_open(struct metrics *m, const char *store_dir, double window_s, double retention_s,
		 uint64_t max_bytes, size_t max_series, int64_t now_us, struct bus_error *err);
void metrics_close(struct metrics *m);

/* Stores the points of one write (already parsed) for agent, all or nothing: ENOSPC
 * ("too many metric series") when they would start series beyond max_series. */
int metrics_add(struct metrics *m, const char *agent, const struct metric_point *pts, size_t n,
		int64_t now_us, struct bus_error *err);

/* The log (agent NULL) or an agent's view: reads at the first byte at or after *off. */
ssize_t metrics_read(struct metrics *m, const char *agent, uint64_t *off, char *buf, size_t n);
uint64_t metrics_size(struct metrics *m, const char *agent);

/* Drops points past the retention, frees series with no point within it and the
 * slices that left the window, shrinks finished slices. A pass over the series:
 * call it per tick, not per point. */
void metrics_expire(struct metrics *m, int64_t now_us);

/* Stats over the window for one agent's metric (agent NULL: every agent). */
void metrics_window(struct metrics *m, const char *metric, const char *agent, int64_t now_us,
		    struct window_stats *out);
double window_stat(const struct window_stats *w, enum rule_stat stat);

void metrics_summary_render(struct metrics *m, int64_t now_us, struct buf *out);
/* The busfs_user_metric summary family of the Prometheus exposition. */
void metrics_prom_render(struct metrics *m, int64_t now_us, struct buf *out);

/* Calls fn once per agent name that wrote this metric, with its window stats (all
 * units together), in name order. One pass over the series, whatever the agents. */
void metrics_each_agent(struct metrics *m, const char *metric, int64_t now_us,
			void (*fn)(void *ctx, const char *agent, const struct window_stats *w),
			void *ctx);

#endif
