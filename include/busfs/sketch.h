/* sketch.h — a mergeable quantile sketch with relative error (DDSketch-style), the
 * summary behind a metric's count/min/max/avg/p50/p95/p99 (SPEC §5).
 *
 * A value v > 0 is counted in bucket i = ceil(log(v) / log(gamma)), which holds
 * (gamma^(i-1), gamma^i], gamma = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA); the
 * bucket answers for its values with (1 - SKETCH_ALPHA) * gamma^i, which is within
 * SKETCH_ALPHA of each of them, relatively. Negative values are counted by magnitude
 * in a store of their own; values with |v| < SKETCH_ZERO_BELOW count as zero.
 *
 * Each store is a dense array of counts grown on demand, never beyond
 * SKETCH_MAX_BUCKETS; 2048 buckets span gamma^2048 ≈ 1.7e14, about 14.2 decades.
 * A dense array costs its span, not its values: 1e-3 and 1e9 take 1,700 slots. So a
 * store starts as a sparse list of its nonzero buckets (12 bytes each) and turns
 * dense only when the list would take more than the array; a sketch that is done
 * growing can be shrunk (sketch_shrink) to the smaller of an exact-size array and
 * a list. Every form holds the same buckets, so gives the same answers.
 * When a store would span more, its lowest-magnitude buckets collapse into one:
 * quantiles falling in that bucket lose their accuracy, higher ones keep it. A
 * value's bucket is max(its own, the highest bucket of its sign - MAX_BUCKETS + 1)
 * whatever the order of adds, so merging sketches gives the very buckets one sketch
 * fed with all the values would have.
 *
 * count, sum, min and max are exact (sum is a double accumulated in add order).
 * No global state; a sketch is thread-compatible: callers lock. */
#ifndef BUSFS_SKETCH_H
#define BUSFS_SKETCH_H

#include <stddef.h>
#include <stdint.h>

#define SKETCH_ALPHA 0.008          /* relative accuracy of a bucket; keeps quantile error < 1% */
#define SKETCH_MAX_BUCKETS 2048     /* per sign; beyond it the lowest-magnitude buckets collapse */
#define SKETCH_ZERO_BELOW 1e-9      /* |v| below this counts as zero (estimated as 0) */

/* The buckets of one sign: counts[k] is bucket offset + k. Only [lo, hi] is nonzero
 * (lo > hi when empty), and lies within the array. */
struct sketch_store {
	uint64_t *counts;   /* NULL until the first value */
	int32_t *index;     /* sparse: counts[k] is bucket index[k], k < nnz; NULL: dense */
	int32_t nnz;        /* sparse only: nonzero buckets, ascending */
	int32_t scap;       /* sparse only: room for that many */
	int32_t offset;
	int32_t cap;        /* dense slots allocated, <= SKETCH_MAX_BUCKETS; 0 when sparse */
	int32_t lo, hi;     /* lowest and highest nonempty bucket */
};

struct sketch {
	uint64_t count;
	double sum, min, max;   /* min and max are NAN while empty */
	uint64_t zeros;
	struct sketch_store pos, neg;
};

void sketch_init(struct sketch *s);
/* Frees the buckets; the sketch is then empty, as after sketch_init. */
void sketch_free(struct sketch *s);
/* Empties the sketch and keeps its memory. */
void sketch_reset(struct sketch *s);

/* Adds v (n times). Returns 0, -EINVAL when v is not finite, or -ENOMEM; the sketch
 * is unchanged on error. n = 0 adds nothing. */
int sketch_add(struct sketch *s, double v);
int sketch_add_n(struct sketch *s, double v, uint64_t n);

/* dst += src (they may be the same sketch). 0 or -ENOMEM, dst unchanged then. */
int sketch_merge(struct sketch *dst, const struct sketch *src);

/* An estimate of x[floor(q * (count - 1))], the sorted values numbered from 0, within
 * SKETCH_ALPHA of it relatively (unless it fell in a collapsed bucket or counted as
 * zero), clamped to [min, max]. q <= 0 gives min, q >= 1 max; NAN when empty or q is
 * NAN. Linear in the number of buckets. */
double sketch_quantile(const struct sketch *s, double q);

/* Makes the buckets take as little memory as they can: an exact-size dense array or
 * a sparse list, whichever is smaller; no memory at all when empty. Nothing changes
 * when memory is short. A sketch merged into turns dense again. */
void sketch_shrink(struct sketch *s);

/* Heap bytes held by the sketch, for memory accounting: at most
 * 2 * SKETCH_MAX_BUCKETS * sizeof(uint64_t) dense, 12 bytes a nonzero bucket sparse. */
size_t sketch_bytes(const struct sketch *s);

#endif
