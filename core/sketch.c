/* sketch.c — log-bucketed quantile sketch (see sketch.h).
 *
 * A store is dense (counts[j - offset] for bucket j) or sparse (index[] and counts[]
 * side by side, nnz entries ascending, room for scap). A store starts sparse and
 * turns dense once its list would outgrow the array its span needs, or when low
 * buckets must collapse, or when a sketch is merged into it; sketch_shrink makes it
 * sparse again when that is smaller. Both forms hold the very same buckets. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/sketch.h"

/* log(gamma) = 2 atanh(alpha) = 2 alpha (1 + alpha^2/3 + alpha^4/5 + ...), a constant
 * expression; the terms left out are below alpha^10/11 relatively. */
#define ALPHA2 (SKETCH_ALPHA * SKETCH_ALPHA)
#define LN_GAMMA (2 * SKETCH_ALPHA * \
		  (1 + ALPHA2 * (1.0 / 3 + ALPHA2 * (1.0 / 5 + ALPHA2 * (1.0 / 7 + ALPHA2 / 9)))))
#define INV_LN_GAMMA (1 / LN_GAMMA)
#define MAXB SKETCH_MAX_BUCKETS

_Static_assert(SKETCH_MAX_BUCKETS >= 2 && SKETCH_MAX_BUCKETS <= (1 << 20),
	       "bucket indexes are int32_t");

/* The bucket of a magnitude a >= SKETCH_ZERO_BELOW: ceil(log(a) / log(gamma)). */
static inline int32_t bucket_of(double a)
{
	double t = log(a) * INV_LN_GAMMA;
	int32_t i = (int32_t)t;   /* truncation, which is ceil for t <= 0 */
	return i + (i < t);
}

/* What bucket i answers: (1 - alpha) gamma^i = 2 gamma^i / (gamma + 1); DBL_MAX where
 * that is within 0.3% of it or above (exp would overflow, and set errno). */
static double bucket_value(int32_t i)
{
	double y = i * LN_GAMMA + log1p(-SKETCH_ALPHA);
	return y < 709.78 ? exp(y) : DBL_MAX;
}

/* ---------- one sign's store ---------- */

static void store_init(struct sketch_store *st)
{
	st->counts = NULL;
	st->index = NULL;
	st->nnz = 0;
	st->scap = 0;
	st->offset = 0;
	st->cap = 0;
	st->lo = INT32_MAX;
	st->hi = INT32_MIN;
}

static int store_empty(const struct sketch_store *st) { return st->lo > st->hi; }

static void store_free(struct sketch_store *st)
{
	free(st->counts);
	free(st->index);
	store_init(st);
}

static void store_reset(struct sketch_store *st)
{
	if (st->index) {
		store_free(st);
		return;
	}
	if (!store_empty(st))
		memset(st->counts + (st->lo - st->offset), 0,
		       (size_t)(st->hi - st->lo + 1) * sizeof *st->counts);
	st->lo = INT32_MAX;
	st->hi = INT32_MIN;
}

/* The range [*lo, *hi] the store needs to also hold buckets [lo, hi], at most
 * MAXB wide: buckets below *lo will fold into *lo. */
static void store_span(const struct sketch_store *st, int32_t lo, int32_t hi,
		       int32_t *nlo, int32_t *nhi)
{
	if (!store_empty(st)) {
		lo = lo < st->lo ? lo : st->lo;
		hi = hi > st->hi ? hi : st->hi;
	}
	if (hi - lo >= MAXB)
		lo = hi - MAXB + 1;
	*nlo = lo;
	*nhi = hi;
}

static int store_covers(const struct sketch_store *st, int32_t lo, int32_t hi)
{
	return st->counts && lo >= st->offset && hi < st->offset + st->cap;
}

/* The array a store needs to hold [lo, hi]: NULL (*cap = 0) when its own will do,
 * after a slide if need be; else a zeroed new one of *cap slots. */
static int store_prepare(const struct sketch_store *st, int32_t lo, int32_t hi,
			 uint64_t **buf, int32_t *cap)
{
	int32_t need = hi - lo + 1;
	*buf = NULL;
	*cap = 0;
	if (store_covers(st, lo, hi) || need <= st->cap)
		return 0;
	int32_t c = st->cap + st->cap / 2;
	c = need > c ? need : c;
	c = (c + 63) & ~63;
	c = c < MAXB ? c : MAXB;
	*buf = calloc((size_t)c, sizeof **buf);
	if (!*buf)
		return -ENOMEM;
	*cap = c;
	return 0;
}

/* Where an array of cap slots starts to hold [lo, hi]: the spare slots go the way
 * the range grew, or half each way for a new store. */
static int32_t store_place(const struct sketch_store *st, int32_t lo, int32_t hi, int32_t cap)
{
	int32_t spare = cap - (hi - lo + 1);
	if (store_empty(st) || (lo < st->lo && hi > st->hi))
		return lo - spare / 2;
	return lo < st->lo ? lo - spare : lo;
}

/* Makes the store's array hold [lo, hi] (as store_span gave, so no wider than
 * MAXB), folding buckets below lo into lo; buf is store_prepare's. lo and hi are
 * left for the caller to set once it has added its counts. */
static void store_fit(struct sketch_store *st, int32_t lo, int32_t hi, uint64_t *buf,
		      int32_t cap)
{
	uint64_t folded = 0;
	if (buf) {
		int32_t off = store_place(st, lo, hi, cap);
		for (int32_t j = st->lo; j <= st->hi; j++)
			buf[(j > lo ? j : lo) - off] += st->counts[j - st->offset];
		free(st->counts);
		st->counts = buf;
		st->offset = off;
		st->cap = cap;
		return;
	}
	if (store_empty(st)) {
		if (!store_covers(st, lo, hi))
			st->offset = store_place(st, lo, hi, st->cap);
		return;
	}
	int32_t keep = st->lo;   /* the first bucket that stays where it is */
	for (; keep <= st->hi && keep < lo; keep++) {
		folded += st->counts[keep - st->offset];
		st->counts[keep - st->offset] = 0;
	}
	if (!store_covers(st, lo, hi)) {
		int32_t off = store_place(st, lo, hi, st->cap);
		int32_t n = keep <= st->hi ? st->hi - keep + 1 : 0;
		if (n)
			memmove(st->counts + (keep - off), st->counts + (keep - st->offset),
				(size_t)n * sizeof *st->counts);
		/* zero all but the moved run */
		int32_t at = n ? keep - off : 0;
		memset(st->counts, 0, (size_t)at * sizeof *st->counts);
		memset(st->counts + at + n, 0, (size_t)(st->cap - at - n) * sizeof *st->counts);
		st->offset = off;
	}
	st->counts[lo - st->offset] += folded;
}

/* A sparse store made dense again: an array with spare slots both ways, as a new
 * store gets. The same buckets, so the same answers. */
static int store_densify(struct sketch_store *st)
{
	if (!st->index)
		return 0;
	int32_t need = st->hi - st->lo + 1;   /* <= MAXB: sparse stores come from dense ones */
	int32_t c = (need + 63) & ~63;
	c = c < MAXB ? c : MAXB;
	uint64_t *buf = calloc((size_t)c, sizeof *buf);
	if (!buf)
		return -ENOMEM;
	int32_t off = st->lo - (c - need) / 2;
	for (int32_t k = 0; k < st->nnz; k++)
		buf[st->index[k] - off] = st->counts[k];
	free(st->counts);
	free(st->index);
	st->counts = buf;
	st->index = NULL;
	st->nnz = 0;
	st->scap = 0;
	st->offset = off;
	st->cap = c;
	return 0;
}

/* The smallest form of a store's buckets (see sketch_shrink). */
static void store_shrink(struct sketch_store *st)
{
	if (store_empty(st)) {
		store_free(st);
		return;
	}
	if (st->index) {
		if (st->scap > st->nnz) {   /* the list's spare room */
			uint64_t *counts = malloc((size_t)st->nnz * sizeof *counts);
			int32_t *index = malloc((size_t)st->nnz * sizeof *index);
			if (!counts || !index) {
				free(counts);
				free(index);
				return;
			}
			memcpy(counts, st->counts, (size_t)st->nnz * sizeof *counts);
			memcpy(index, st->index, (size_t)st->nnz * sizeof *index);
			free(st->counts);
			free(st->index);
			st->counts = counts;
			st->index = index;
			st->scap = st->nnz;
		}
		return;
	}
	int32_t span = st->hi - st->lo + 1, nnz = 0;
	const uint64_t *c = st->counts + (st->lo - st->offset);
	for (int32_t j = 0; j < span; j++)
		nnz += c[j] != 0;
	size_t dense = (size_t)span * sizeof *st->counts;
	size_t sparse = (size_t)nnz * (sizeof *st->counts + sizeof *st->index);
	if (sparse < dense) {
		uint64_t *counts = malloc((size_t)nnz * sizeof *counts);
		int32_t *index = malloc((size_t)nnz * sizeof *index);
		if (!counts || !index) {
			free(counts);
			free(index);
			return;
		}
		for (int32_t j = 0, k = 0; j < span; j++) {
			if (c[j]) {
				index[k] = st->lo + j;
				counts[k++] = c[j];
			}
		}
		free(st->counts);
		st->counts = counts;
		st->index = index;
		st->nnz = nnz;
		st->scap = nnz;
		st->offset = 0;
		st->cap = 0;
		return;
	}
	if (span == st->cap)
		return;
	uint64_t *exact = malloc(dense);
	if (!exact)
		return;
	memcpy(exact, c, dense);
	free(st->counts);
	st->counts = exact;
	st->offset = st->lo;
	st->cap = span;
}

/* The first entry of a sparse store at or above bucket i. */
static int32_t sparse_find(const struct sketch_store *st, int32_t i)
{
	int32_t lo = 0, hi = st->nnz;
	while (lo < hi) {
		int32_t mid = lo + (hi - lo) / 2;
		if (st->index[mid] < i)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Counts n in bucket i of a sparse store, or of one with no memory yet (which turns
 * sparse). Returns 1, leaving the store as it was, when it had better be dense: the
 * list would outgrow the array the span needs, or low buckets must collapse. */
static int store_sparse_add(struct sketch_store *st, int32_t i, uint64_t n)
{
	int32_t lo = i, hi = i;
	if (!store_empty(st)) {
		store_span(st, i, i, &lo, &hi);
		if (lo > st->lo)
			return 1;   /* low buckets collapse: the dense code does that */
	}
	int32_t b = i > lo ? i : lo;   /* where the value lands */
	int32_t k = st->index ? sparse_find(st, b) : 0;
	if (st->index && k < st->nnz && st->index[k] == b) {
		st->counts[k] += n;
		st->lo = lo;
		st->hi = hi;
		return 0;
	}
	/* The list never takes more than the dense array would: at most 16 KiB a store. */
	size_t dense = (size_t)((hi - lo + 1 + 63) & ~63) * sizeof *st->counts;
	size_t most = dense / (sizeof *st->counts + sizeof *st->index);
	if ((size_t)st->nnz + 1 > most)
		return 1;
	if (st->nnz == st->scap) {
		int32_t cap = st->scap ? st->scap * 2 : 4;
		cap = (size_t)cap < most ? cap : (int32_t)most;
		uint64_t *counts = malloc((size_t)cap * sizeof *counts);
		int32_t *index = malloc((size_t)cap * sizeof *index);
		if (!counts || !index) {
			free(counts);
			free(index);
			return -ENOMEM;
		}
		if (st->nnz) {
			memcpy(counts, st->counts, (size_t)st->nnz * sizeof *counts);
			memcpy(index, st->index, (size_t)st->nnz * sizeof *index);
		}
		free(st->counts);
		free(st->index);
		st->counts = counts;
		st->index = index;
		st->scap = cap;
		st->offset = 0;
		st->cap = 0;
	}
	memmove(st->counts + k + 1, st->counts + k, (size_t)(st->nnz - k) * sizeof *st->counts);
	memmove(st->index + k + 1, st->index + k, (size_t)(st->nnz - k) * sizeof *st->index);
	st->counts[k] = n;
	st->index[k] = b;
	st->nnz++;
	st->lo = lo;
	st->hi = hi;
	return 0;
}

/* Counts n in bucket i: the slow path, when i is outside the array (or the store is
 * sparse, its cap 0, or has no memory yet). */
static int store_insert(struct sketch_store *st, int32_t i, uint64_t n)
{
	int32_t lo, hi;
	uint64_t *buf;
	int32_t cap;
	if (st->index || !st->counts) {
		int rc = store_sparse_add(st, i, n);
		if (rc <= 0)
			return rc;
	}
	if (store_densify(st) < 0)
		return -ENOMEM;
	store_span(st, i, i, &lo, &hi);
	if (store_prepare(st, lo, hi, &buf, &cap) < 0)
		return -ENOMEM;
	store_fit(st, lo, hi, buf, cap);
	st->counts[(i > lo ? i : lo) - st->offset] += n;
	st->lo = lo;
	st->hi = hi;
	return 0;
}

static inline int store_add(struct sketch_store *st, int32_t i, uint64_t n)
{
	/* Inside the array, [lo, hi] and i span at most cap <= MAXB: nothing collapses. */
	if ((uint32_t)(i - st->offset) < (uint32_t)st->cap) {
		st->counts[i - st->offset] += n;
		if (i < st->lo)
			st->lo = i;
		if (i > st->hi)
			st->hi = i;
		return 0;
	}
	return store_insert(st, i, n);
}

/* ---------- the sketch ---------- */

void sketch_init(struct sketch *s)
{
	s->count = 0;
	s->sum = 0;
	s->min = s->max = NAN;
	s->zeros = 0;
	store_init(&s->pos);
	store_init(&s->neg);
}

void sketch_free(struct sketch *s)
{
	store_free(&s->pos);
	store_free(&s->neg);
	sketch_init(s);
}

void sketch_shrink(struct sketch *s)
{
	store_shrink(&s->pos);
	store_shrink(&s->neg);
}

void sketch_reset(struct sketch *s)
{
	s->count = 0;
	s->sum = 0;
	s->min = s->max = NAN;
	s->zeros = 0;
	store_reset(&s->pos);
	store_reset(&s->neg);
}

int sketch_add_n(struct sketch *s, double v, uint64_t n)
{
	if (!isfinite(v))
		return -EINVAL;
	if (n == 0)
		return 0;
	double a = v < 0 ? -v : v;
	if (a < SKETCH_ZERO_BELOW) {
		s->zeros += n;
	} else if (store_add(v > 0 ? &s->pos : &s->neg, bucket_of(a), n) < 0) {
		return -ENOMEM;
	}
	s->count += n;
	s->sum += v * (double)n;
	if (!(v >= s->min))   /* also when min is NAN (empty) */
		s->min = v;
	if (!(v <= s->max))
		s->max = v;
	return 0;
}

int sketch_add(struct sketch *s, double v)
{
	return sketch_add_n(s, v, 1);
}

int sketch_merge(struct sketch *dst, const struct sketch *src)
{
	struct sketch_store *d[2] = {&dst->pos, &dst->neg};
	const struct sketch_store *o[2] = {&src->pos, &src->neg};
	int32_t lo[2], hi[2], cap[2];
	uint64_t *buf[2] = {NULL, NULL};
	if (src->count == 0)
		return 0;
	/* Allocate everything first, so a failure leaves dst as it was (a sparse dst
	 * made dense holds the same buckets). When src is dst, it is dense after this. */
	for (int k = 0; k < 2; k++) {
		if (store_empty(o[k]))
			continue;
		if (store_densify(d[k]) < 0) {
			free(buf[0]);
			return -ENOMEM;
		}
		store_span(d[k], o[k]->lo, o[k]->hi, &lo[k], &hi[k]);
		if (store_prepare(d[k], lo[k], hi[k], &buf[k], &cap[k]) < 0) {
			free(buf[0]);
			return -ENOMEM;
		}
	}
	for (int k = 0; k < 2; k++) {
		if (store_empty(o[k]))
			continue;
		/* o[k]'s bounds before store_fit: it may be d[k] itself */
		int32_t olo = o[k]->lo, ohi = o[k]->hi;
		store_fit(d[k], lo[k], hi[k], buf[k], cap[k]);
		if (o[k]->index) {
			for (int32_t t = 0; t < o[k]->nnz; t++) {
				int32_t j = o[k]->index[t];
				d[k]->counts[(j > lo[k] ? j : lo[k]) - d[k]->offset] += o[k]->counts[t];
			}
		} else {
			for (int32_t j = olo; j <= ohi; j++)
				d[k]->counts[(j > lo[k] ? j : lo[k]) - d[k]->offset] +=
					o[k]->counts[j - o[k]->offset];
		}
		d[k]->lo = lo[k];
		d[k]->hi = hi[k];
	}
	dst->zeros += src->zeros;
	dst->count += src->count;
	dst->sum += src->sum;
	if (!(src->min >= dst->min))
		dst->min = src->min;
	if (!(src->max <= dst->max))
		dst->max = src->max;
	return 0;
}

static double clamp(const struct sketch *s, double v)
{
	return v < s->min ? s->min : v > s->max ? s->max : v;
}

/* A store's slots from its low end, k in [0, store_slots), as bucket and count:
 * a dense store's are [lo, hi] (zeros included), a sparse one's its list. */
static int32_t store_slots(const struct sketch_store *st)
{
	return store_empty(st) ? 0 : st->index ? st->nnz : st->hi - st->lo + 1;
}

static uint64_t store_slot(const struct sketch_store *st, int32_t k, int32_t *bucket)
{
	if (st->index) {
		*bucket = st->index[k];
		return st->counts[k];
	}
	*bucket = st->lo + k;
	return st->counts[st->lo + k - st->offset];
}

double sketch_quantile(const struct sketch *s, double q)
{
	if (s->count == 0 || isnan(q))
		return NAN;
	if (q <= 0)
		return s->min;
	if (q >= 1)
		return s->max;
	uint64_t rank = (uint64_t)(q * (double)(s->count - 1));
	int32_t j;
	/* Ascending: negatives by decreasing magnitude, zeros, positives. */
	for (int32_t k = store_slots(&s->neg); k-- > 0;) {
		uint64_t c = store_slot(&s->neg, k, &j);
		if (rank < c)
			return clamp(s, -bucket_value(j));
		rank -= c;
	}
	if (rank < s->zeros)
		return clamp(s, 0);
	rank -= s->zeros;
	for (int32_t k = 0, n = store_slots(&s->pos); k < n; k++) {
		uint64_t c = store_slot(&s->pos, k, &j);
		if (rank < c)
			return clamp(s, bucket_value(j));
		rank -= c;
	}
	return s->max;
}

static size_t store_bytes(const struct sketch_store *st)
{
	if (st->index)
		return (size_t)st->scap * (sizeof *st->counts + sizeof *st->index);
	return (size_t)st->cap * sizeof *st->counts;
}

size_t sketch_bytes(const struct sketch *s)
{
	return store_bytes(&s->pos) + store_bytes(&s->neg);
}
