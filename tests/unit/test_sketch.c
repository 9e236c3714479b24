/*
 * test_sketch.c — core/sketch.c: quantiles within 1% of the exact order statistics
 * x[floor(q (n - 1))] on known distributions, exact count/sum/min/max, merging (the
 * same buckets as one sketch), the bucket cap, add_n, reset, and shrinking (the same
 * answers in less memory).
 *
 * The data come from a fixed-seed splitmix64 (no rand()), shaped by libm.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/sketch.h"

#define SKETCH_TEST(name) Test(sketch, name, .timeout = 30)

#define N 100000

/* ---------- data ---------- */

static uint64_t rng_state;

static void seed(uint64_t s) { rng_state = s; }

static uint64_t next(void)   /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(void) { return (double)(next() >> 11) * 0x1p-53; }   /* [0, 1) */

/* Irwin-Hall: mean 0, variance 1, within [-6, 6]. */
static double normal(void)
{
    double s = 0;
    for (int i = 0; i < 12; i++)
        s += uniform();
    return s - 6;
}

static double exponential(double mean) { return -mean * log(1 - uniform()); }

/* 10^x for x uniform in [lo, hi): log-uniform between 10^lo and 10^hi. */
static double decades(double lo, double hi) { return pow(10, lo + (hi - lo) * uniform()); }

/* ---------- checks ---------- */

static const double qs[] = {0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999};
#define NQ (sizeof qs / sizeof qs[0])

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double *sorted_copy(const double *v, size_t n)
{
    double *c = malloc(n * sizeof *c);
    cr_assert_not_null(c);
    memcpy(c, v, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp_double);
    return c;
}

static double exact_quantile(const double *sorted, size_t n, double q)
{
    return sorted[(size_t)(q * (double)(n - 1))];
}

static double rel_err(double est, double exact)
{
    if (exact == 0)
        return est == 0 ? 0 : INFINITY;
    return fabs(est - exact) / fabs(exact);
}

static void build(struct sketch *s, const double *v, size_t n)
{
    sketch_init(s);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(sketch_add(s, v[i]), 0);
}

/* Builds a sketch of v, checks count/min/max and every quantile of qs to 1%, and
 * returns the largest relative error seen. */
static double check_accuracy(const char *what, const double *v, size_t n)
{
    struct sketch s;
    build(&s, v, n);
    double *x = sorted_copy(v, n), worst = 0;
    cr_assert_eq(s.count, n, "%s", what);
    cr_assert(s.min == x[0] && s.max == x[n - 1], "%s: min/max %g/%g, not %g/%g", what, s.min,
              s.max, x[0], x[n - 1]);
    for (size_t k = 0; k < NQ; k++) {
        double est = sketch_quantile(&s, qs[k]), ex = exact_quantile(x, n, qs[k]);
        double e = rel_err(est, ex);
        cr_assert(e <= 0.01, "%s: q=%g gives %.9g, exact %.9g (error %.4f)", what, qs[k], est, ex,
                  e);
        worst = e > worst ? e : worst;
    }
    cr_log_info("%s: worst relative error %.5f", what, worst);
    free(x);
    sketch_free(&s);
    return worst;
}

/* Bucket j's count, whether the store is a dense array or a sparse list. */
static uint64_t bucket_count(const struct sketch_store *st, int32_t j)
{
    if (!st->index)
        return st->counts[j - st->offset];
    for (int32_t k = 0; k < st->nnz; k++)
        if (st->index[k] == j)
            return st->counts[k];
    return 0;
}

/* The bytes a store's counts need at least: its span dense, 12 a bucket sparse. */
static size_t store_used(const struct sketch_store *st)
{
    if (st->index)
        return (size_t)st->nnz * (sizeof(uint64_t) + sizeof(int32_t));
    return (size_t)(st->hi - st->lo + 1) * sizeof(uint64_t);
}

/* The same buckets, counts and extremes (sum aside: it depends on the order of adds). */
static void assert_same_store(const struct sketch_store *a, const struct sketch_store *b,
                              const char *sign)
{
    cr_assert(a->lo == b->lo && a->hi == b->hi, "%s buckets [%d, %d] vs [%d, %d]", sign, a->lo,
              a->hi, b->lo, b->hi);
    for (int32_t j = a->lo; j <= a->hi; j++)
        cr_assert_eq(bucket_count(a, j), bucket_count(b, j), "%s bucket %d", sign, j);
}

static void assert_same_sketch(const struct sketch *a, const struct sketch *b)
{
    cr_assert_eq(a->count, b->count);
    cr_assert_eq(a->zeros, b->zeros);
    cr_assert(a->min == b->min && a->max == b->max, "min/max %g/%g vs %g/%g", a->min, a->max,
              b->min, b->max);
    assert_same_store(&a->pos, &b->pos, "positive");
    assert_same_store(&a->neg, &b->neg, "negative");
    for (int k = 0; k <= 1000; k++) {
        double q = k / 1000.0, ea = sketch_quantile(a, q), eb = sketch_quantile(b, q);
        cr_assert(ea == eb, "q=%g: %.17g vs %.17g", q, ea, eb);
    }
}

static double *alloc_values(size_t n)
{
    double *v = malloc(n * sizeof *v);
    cr_assert_not_null(v);
    return v;
}

/* ---------- accuracy on known distributions ---------- */

/* Worst relative errors observed over qs (0.01 ... 0.999), n = 100000 (run with
 * --verbose to see them): uniform 0.0068, exponential 0.0066, lognormal 0.0059,
 * normal around zero 0.0065, constant 0 (clamped), 1e-6..1e8 0.0070, integers
 * 0.0068, mixed with zeros 0.0076. The bound, SKETCH_ALPHA, is 0.008. */

SKETCH_TEST(uniform_1_to_1000_is_within_1_percent)
{
    double *v = alloc_values(N);
    seed(1);
    for (size_t i = 0; i < N; i++)
        v[i] = 1 + 999 * uniform();
    check_accuracy("uniform", v, N);
    free(v);
}

SKETCH_TEST(exponential_is_within_1_percent)
{
    double *v = alloc_values(N);
    seed(2);
    for (size_t i = 0; i < N; i++)
        v[i] = exponential(150);
    check_accuracy("exponential", v, N);
    free(v);
}

SKETCH_TEST(a_heavy_tailed_lognormal_is_within_1_percent)
{
    double *v = alloc_values(N);
    seed(3);
    for (size_t i = 0; i < N; i++)
        v[i] = exp(3 + 2 * normal());   /* median e^3 ~ 20, max near e^15 */
    check_accuracy("lognormal", v, N);
    free(v);
}

SKETCH_TEST(a_normal_around_zero_with_negatives_is_within_1_percent)
{
    double *v = alloc_values(N);
    seed(4);
    for (size_t i = 0; i < N; i++)
        v[i] = 10 * normal();
    struct sketch s;
    build(&s, v, N);
    cr_assert(s.neg.lo <= s.neg.hi && s.pos.lo <= s.pos.hi, "both signs have buckets");
    sketch_free(&s);
    check_accuracy("normal around zero", v, N);
    free(v);
}

SKETCH_TEST(a_constant_gives_itself_at_every_quantile)
{
    double *v = alloc_values(N);
    for (size_t i = 0; i < N; i++)
        v[i] = 42.5;
    check_accuracy("constant", v, N);
    struct sketch s;
    build(&s, v, N);
    for (size_t k = 0; k < NQ; k++)
        cr_assert(sketch_quantile(&s, qs[k]) == 42.5, "clamped to min = max");
    sketch_free(&s);
    free(v);
}

SKETCH_TEST(fourteen_decades_1e_6_to_1e8_are_within_1_percent)
{
    double *v = alloc_values(N);
    seed(5);
    for (size_t i = 0; i < N; i++)
        v[i] = decades(-6, 8);
    v[0] = 1e-6;
    v[1] = 1e8;
    check_accuracy("1e-6..1e8", v, N);
    free(v);
}

/* 15 decades are more than 2048 buckets span (gamma^2048 ~ 1.7e14): the lowest
 * ~0.8 decade collapses into one bucket, below 6.05e-6. Quantiles above it keep 1%
 * (p10 0.0060 ... p999 0.0077); those in it are estimated by that bucket, an
 * overestimate no higher than its upper bound (p01: 6.0e-6 for 1.41e-6). */
SKETCH_TEST(fifteen_decades_1e_6_to_1e9_collapse_only_the_lowest_buckets)
{
    double *v = alloc_values(N);
    seed(6);
    for (size_t i = 0; i < N; i++)
        v[i] = decades(-6, 9);
    v[0] = 1e-6;
    v[1] = 1e9;
    struct sketch s;
    build(&s, v, N);
    double *x = sorted_copy(v, N);
    cr_assert_eq(s.pos.hi - s.pos.lo + 1, SKETCH_MAX_BUCKETS, "the store is full");
    /* The lowest bucket holds (gamma^(lo-1), gamma^lo] and all that collapsed into it. */
    double gamma = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA);
    double floor_hi = exp(s.pos.lo * log(gamma)), floor_lo = floor_hi / gamma;
    cr_assert(floor_hi > 5e-6 && floor_hi < 7e-6, "collapsed below %g", floor_hi);
    for (size_t k = 0; k < NQ; k++) {
        double est = sketch_quantile(&s, qs[k]), ex = exact_quantile(x, N, qs[k]);
        if (ex > floor_lo)
            cr_assert(rel_err(est, ex) <= 0.01, "q=%g: %.9g, exact %.9g", qs[k], est, ex);
        else
            cr_assert(est >= ex && est <= floor_hi, "q=%g: %.9g, exact %.9g", qs[k], est, ex);
    }
    cr_assert(exact_quantile(x, N, 0.1) > floor_lo, "p10 and above are accurate");
    cr_assert(sketch_quantile(&s, 0) == 1e-6 && sketch_quantile(&s, 1) == 1e9);
    free(x);
    sketch_free(&s);
    free(v);
}

SKETCH_TEST(integers_1_to_100_with_many_duplicates_are_within_1_percent)
{
    double *v = alloc_values(N);
    seed(7);
    for (size_t i = 0; i < N; i++)
        v[i] = (double)(1 + next() % 100);
    check_accuracy("integers", v, N);
    free(v);
}

SKETCH_TEST(a_mix_with_zeros_and_negatives_is_within_1_percent)
{
    double *v = alloc_values(N);
    seed(8);
    for (size_t i = 0; i < N; i++) {
        uint64_t r = next() % 10;
        v[i] = r < 3 ? 0 : r < 5 ? -exponential(20) : exp(2 + normal());
    }
    check_accuracy("mixed with zeros", v, N);
    struct sketch s;
    build(&s, v, N);
    cr_assert(s.zeros > N / 4 && s.zeros < N / 3, "%llu zeros", (unsigned long long)s.zeros);
    double *x = sorted_copy(v, N);
    cr_assert(exact_quantile(x, N, 0.3) == 0 && sketch_quantile(&s, 0.3) == 0,
              "a quantile among the zeros is 0");
    free(x);
    sketch_free(&s);
    free(v);
}

SKETCH_TEST(small_samples_are_within_1_percent)
{
    double v[7];
    seed(9);
    for (size_t n = 1; n <= 7; n++) {
        for (size_t i = 0; i < n; i++)
            v[i] = decades(-3, 3) * (next() & 1 ? 1 : -1);
        check_accuracy("small", v, n);
    }
}

/* The bucket guarantee itself: any value, between neighbours that keep the clamp
 * out of the way, is estimated within SKETCH_ALPHA (worst seen: 0.0079999). */
SKETCH_TEST(every_value_is_estimated_within_alpha)
{
    struct sketch s;
    sketch_init(&s);
    seed(19);
    double worst = 0;
    for (int i = 0; i < 200000; i++) {
        double v = decades(-8.9, 300) * (i & 1 ? 1 : -1);
        sketch_reset(&s);
        cr_assert_eq(sketch_add(&s, v / 2), 0);
        cr_assert_eq(sketch_add(&s, v), 0);
        cr_assert_eq(sketch_add(&s, v * 2), 0);
        double e = rel_err(sketch_quantile(&s, 0.5), v);
        cr_assert(e <= SKETCH_ALPHA * (1 + 1e-9), "%.17g gives %.17g", v,
                  sketch_quantile(&s, 0.5));
        worst = e > worst ? e : worst;
    }
    cr_log_info("every value: worst relative error %.7f", worst);
    sketch_free(&s);
}

/* ---------- exact statistics, edges ---------- */

SKETCH_TEST(an_empty_sketch_has_no_quantiles)
{
    struct sketch s;
    sketch_init(&s);
    cr_assert_eq(s.count, 0);
    cr_assert(isnan(sketch_quantile(&s, 0)) && isnan(sketch_quantile(&s, 0.5)) &&
              isnan(sketch_quantile(&s, 1)));
    cr_assert(isnan(s.min) && isnan(s.max));
    cr_assert_eq(sketch_bytes(&s), 0);
    sketch_free(&s);
}

SKETCH_TEST(count_sum_min_max_are_exact)
{
    struct sketch s;
    sketch_init(&s);
    seed(10);
    double sum = 0, min = INFINITY, max = -INFINITY;
    for (int i = 0; i < 10000; i++) {
        double v = (uniform() - 0.3) * decades(-2, 4);
        cr_assert_eq(sketch_add(&s, v), 0);
        sum += v;
        min = v < min ? v : min;
        max = v > max ? v : max;
    }
    cr_assert_eq(s.count, 10000);
    cr_assert(s.sum == sum, "sum %.17g, not %.17g", s.sum, sum);
    cr_assert(s.min == min && s.max == max);
    cr_assert(sketch_quantile(&s, 0) == min && sketch_quantile(&s, 1) == max,
              "q=0 and q=1 are min and max exactly");
    cr_assert(sketch_quantile(&s, -1) == min && sketch_quantile(&s, 2) == max);
    cr_assert(isnan(sketch_quantile(&s, NAN)));
    sketch_free(&s);
}

SKETCH_TEST(a_single_value_is_every_quantile)
{
    struct sketch s;
    sketch_init(&s);
    cr_assert_eq(sketch_add(&s, -3.14159), 0);
    cr_assert(s.min == -3.14159 && s.max == -3.14159 && s.sum == -3.14159);
    for (size_t k = 0; k < NQ; k++)
        cr_assert(sketch_quantile(&s, qs[k]) == -3.14159);
    sketch_free(&s);
}

SKETCH_TEST(magnitudes_below_1e_9_count_as_zero)
{
    struct sketch s;
    sketch_init(&s);
    cr_assert_eq(sketch_add(&s, 5e-10), 0);
    cr_assert_eq(sketch_add(&s, -5e-10), 0);
    cr_assert_eq(sketch_add(&s, 0.0), 0);
    cr_assert_eq(sketch_add(&s, -0.0), 0);
    cr_assert_eq(s.zeros, 4);
    cr_assert_eq(sketch_add(&s, SKETCH_ZERO_BELOW), 0);
    cr_assert_eq(s.zeros, 4, "the threshold itself is a value");
    cr_assert_eq(s.pos.lo, s.pos.hi);
    cr_assert(s.min == -5e-10 && s.max == SKETCH_ZERO_BELOW, "min/max stay exact");
    cr_assert(sketch_quantile(&s, 0.5) == 0);
    sketch_free(&s);

    sketch_init(&s);
    cr_assert_eq(sketch_add_n(&s, 3e-10, 5), 0);
    cr_assert(sketch_quantile(&s, 0.5) == 3e-10, "0, clamped to min = max");
    sketch_free(&s);

    sketch_init(&s);
    cr_assert_eq(sketch_add(&s, 0.0), 0);
    cr_assert_eq(sketch_add(&s, 3), 0);
    cr_assert(s.min == 0 && s.max == 3 && sketch_quantile(&s, 0) == 0);
    sketch_free(&s);
}

SKETCH_TEST(values_that_are_not_finite_are_refused)
{
    struct sketch s;
    sketch_init(&s);
    cr_assert_eq(sketch_add(&s, 1), 0);
    cr_assert_eq(sketch_add(&s, NAN), -EINVAL);
    cr_assert_eq(sketch_add(&s, INFINITY), -EINVAL);
    cr_assert_eq(sketch_add_n(&s, -INFINITY, 3), -EINVAL);
    cr_assert(s.count == 1 && s.sum == 1 && s.min == 1 && s.max == 1, "unchanged");
    sketch_free(&s);
}

SKETCH_TEST(the_extremes_of_double_are_counted)
{
    struct sketch s;
    sketch_init(&s);
    cr_assert_eq(sketch_add(&s, 1.7976931348623157e308), 0);
    cr_assert_eq(sketch_add(&s, -1.7976931348623157e308), 0);
    cr_assert_eq(sketch_add(&s, 1e300), 0);
    cr_assert_eq(sketch_add(&s, 1e295), 0);
    /* sorted: -max, 1e295, 1e300, max */
    cr_assert(sketch_quantile(&s, 0.2) == -1.7976931348623157e308, "clamped to min");
    cr_assert(rel_err(sketch_quantile(&s, 0.5), 1e295) <= 0.01, "%g",
              sketch_quantile(&s, 0.5));
    cr_assert(rel_err(sketch_quantile(&s, 0.7), 1e300) <= 0.01);
    sketch_free(&s);

    sketch_init(&s);
    cr_assert_eq(sketch_add(&s, 1), 0);
    cr_assert_eq(sketch_add_n(&s, 1.7976931348623157e308, 3), 0);
    errno = 0;
    double top = sketch_quantile(&s, 0.5);
    cr_assert(isfinite(top) && rel_err(top, 1.7976931348623157e308) <= 0.01, "%g", top);
    cr_assert_eq(errno, 0, "no ERANGE from exp near the top of double");
    sketch_free(&s);
}

SKETCH_TEST(add_n_is_n_adds)
{
    struct sketch a, b;
    sketch_init(&a);
    sketch_init(&b);
    seed(11);
    for (int i = 0; i < 200; i++) {
        double v = decades(-1, 5) * (i % 3 ? 1 : -1);
        uint64_t n = 1 + next() % 50;
        cr_assert_eq(sketch_add_n(&a, v, n), 0);
        for (uint64_t k = 0; k < n; k++)
            cr_assert_eq(sketch_add(&b, v), 0);
    }
    cr_assert_eq(sketch_add_n(&a, 12345, 0), 0);
    assert_same_sketch(&a, &b);
    cr_assert(fabs(a.sum - b.sum) <= 1e-9 * fabs(b.sum));
    sketch_free(&a);
    sketch_free(&b);
}

/* ---------- merge ---------- */

SKETCH_TEST(seven_merged_parts_give_the_same_sketch_as_one)
{
    double *v = alloc_values(N);
    seed(12);
    for (size_t i = 0; i < N; i++) {
        uint64_t r = next() % 8;
        v[i] = r == 0 ? 0 : r < 3 ? -decades(-4, 2) : decades(-2, 6);
    }
    struct sketch one, part[7], all;
    build(&one, v, N);
    for (int p = 0; p < 7; p++)
        sketch_init(&part[p]);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(sketch_add(&part[next() % 7], v[i]), 0);
    sketch_init(&all);
    for (int p = 0; p < 7; p++) {
        cr_assert(part[p].count > N / 8, "each part has values");
        cr_assert_eq(sketch_merge(&all, &part[p]), 0);
    }
    assert_same_sketch(&all, &one);
    cr_assert(fabs(all.sum - one.sum) <= 1e-9 * fabs(one.sum), "%g vs %g", all.sum, one.sum);

    /* merging parts into a part (not an empty sketch) too */
    for (int p = 1; p < 7; p++)
        cr_assert_eq(sketch_merge(&part[0], &part[p]), 0);
    assert_same_sketch(&part[0], &one);
    for (int p = 0; p < 7; p++)
        sketch_free(&part[p]);
    sketch_free(&all);
    sketch_free(&one);
    free(v);
}

SKETCH_TEST(merging_collapsed_parts_gives_the_same_buckets_as_one)
{
    double *v = alloc_values(N);
    seed(13);
    for (size_t i = 0; i < N; i++)
        v[i] = decades(-300, 300) * (next() & 1 ? 1 : -1);
    struct sketch one, part[7], all;
    build(&one, v, N);
    cr_assert_eq(one.pos.hi - one.pos.lo + 1, SKETCH_MAX_BUCKETS, "collapsed");
    for (int p = 0; p < 7; p++)
        sketch_init(&part[p]);
    /* parts of very different ranges: each collapses at its own level */
    for (size_t i = 0; i < N; i++) {
        double a = fabs(v[i]);
        int p = a < 1e-100 ? 0 : a < 1 ? 1 : a < 1e100 ? 2 : (int)(3 + next() % 4);
        cr_assert_eq(sketch_add(&part[p], v[i]), 0);
    }
    sketch_init(&all);
    for (int p = 0; p < 7; p++)
        cr_assert_eq(sketch_merge(&all, &part[p]), 0);
    assert_same_sketch(&all, &one);
    sketch_free(&all);
    for (int p = 6; p >= 0; p--)   /* the other order: the biggest values first */
        cr_assert_eq(sketch_merge(&all, &part[p]), 0);
    assert_same_sketch(&all, &one);
    for (int p = 0; p < 7; p++)
        sketch_free(&part[p]);
    sketch_free(&all);
    sketch_free(&one);
    free(v);
}

SKETCH_TEST(merging_an_empty_sketch_changes_nothing)
{
    struct sketch s, empty, copy;
    sketch_init(&s);
    sketch_init(&empty);
    seed(14);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(sketch_add(&s, decades(0, 3) - 50), 0);
    double sum = s.sum;
    size_t bytes = sketch_bytes(&s);
    build(&copy, NULL, 0);
    cr_assert_eq(sketch_merge(&copy, &s), 0);   /* into an empty one: a copy */
    cr_assert_eq(sketch_merge(&s, &empty), 0);
    cr_assert(s.sum == sum && sketch_bytes(&s) == bytes);
    assert_same_sketch(&s, &copy);
    cr_assert(copy.sum == sum);
    cr_assert_eq(sketch_merge(&empty, &empty), 0);
    cr_assert(empty.count == 0 && isnan(sketch_quantile(&empty, 0.5)) &&
              sketch_bytes(&empty) == 0);
    sketch_free(&s);
    sketch_free(&empty);
    sketch_free(&copy);
}

SKETCH_TEST(merging_a_sketch_with_itself_doubles_it)
{
    struct sketch s, twice;
    sketch_init(&s);
    sketch_init(&twice);
    seed(15);
    for (int i = 0; i < 1000; i++) {
        double v = decades(-3, 3) * (i % 4 ? 1 : -1) * (i % 10 ? 1 : 0);
        cr_assert_eq(sketch_add(&s, v), 0);
        cr_assert_eq(sketch_add_n(&twice, v, 2), 0);
    }
    cr_assert_eq(sketch_merge(&s, &s), 0);
    assert_same_sketch(&s, &twice);
    sketch_free(&s);
    sketch_free(&twice);
}

/* ---------- the bucket cap ---------- */

SKETCH_TEST(the_bucket_cap_bounds_memory_and_keeps_high_quantiles)
{
    double *v = alloc_values(N);
    seed(16);
    for (size_t i = 0; i < N; i++)
        v[i] = decades(-300, 300) * (i % 5 ? 1 : -1);
    v[0] = 1e-300;
    v[1] = 1e300;
    struct sketch s;
    sketch_init(&s);
    size_t bound = 2 * SKETCH_MAX_BUCKETS * sizeof(uint64_t);
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(sketch_add(&s, v[i]), 0);
        if (i % 1000 == 0)
            cr_assert(sketch_bytes(&s) <= bound, "%zu bytes", sketch_bytes(&s));
    }
    cr_assert(sketch_bytes(&s) <= bound, "%zu bytes", sketch_bytes(&s));
    size_t used = store_used(&s.pos) + store_used(&s.neg);
    cr_assert(sketch_bytes(&s) >= used, "%zu bytes for %zu of counts", sketch_bytes(&s), used);
    cr_assert(s.pos.hi - s.pos.lo < SKETCH_MAX_BUCKETS && s.neg.hi - s.neg.lo < SKETCH_MAX_BUCKETS);
    double *x = sorted_copy(v, N);
    cr_assert(sketch_quantile(&s, 1) == 1e300 && s.max == 1e300 && s.min == x[0]);
    for (double q = 0.99; q < 1; q += 0.001) {
        double est = sketch_quantile(&s, q), ex = exact_quantile(x, N, q);
        cr_assert(rel_err(est, ex) <= 0.01, "q=%g: %g, exact %g", q, est, ex);
    }
    /* The most negative values are the negative store's highest: accurate too. */
    for (double q = 0.0001; q < 0.002; q += 0.0005) {
        double est = sketch_quantile(&s, q), ex = exact_quantile(x, N, q);
        cr_assert(rel_err(est, ex) <= 0.01, "q=%g: %g, exact %g", q, est, ex);
    }
    free(x);
    sketch_free(&s);
    free(v);
}

SKETCH_TEST(the_order_of_adds_does_not_change_the_buckets)
{
    enum { M = 20000 };
    static double v[M];
    for (int i = 0; i < M; i++)   /* 1e-100 .. 1e100 ascending: it collapses at each step */
        v[i] = pow(10, -100 + 200.0 * i / (M - 1));
    struct sketch up, down, mixed;
    build(&up, v, M);
    sketch_init(&down);
    for (int i = M - 1; i >= 0; i--)
        cr_assert_eq(sketch_add(&down, v[i]), 0);
    seed(17);
    for (int i = M - 1; i > 0; i--) {
        int j = (int)(next() % (uint64_t)(i + 1));
        double t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
    build(&mixed, v, M);
    assert_same_sketch(&up, &down);
    assert_same_sketch(&up, &mixed);
    sketch_free(&up);
    sketch_free(&down);
    sketch_free(&mixed);
}

/* ---------- reset ---------- */

SKETCH_TEST(reset_empties_the_sketch_keeps_its_memory_and_it_works_after)
{
    struct sketch s, fresh;
    sketch_init(&s);
    seed(18);
    for (int i = 0; i < 10000; i++)
        cr_assert_eq(sketch_add(&s, decades(-200, 200) * (i & 1 ? 1 : -1)), 0);
    size_t bytes = sketch_bytes(&s);
    cr_assert(bytes > 0);
    sketch_reset(&s);
    cr_assert(s.count == 0 && s.zeros == 0 && s.sum == 0 && isnan(sketch_quantile(&s, 0.5)));
    cr_assert_eq(sketch_bytes(&s), bytes, "memory kept");

    /* A range far from the old one: the arrays slide. */
    double v[5000];
    for (int i = 0; i < 5000; i++)
        v[i] = 1e250 * (1 + uniform());
    for (int i = 0; i < 5000; i++)
        cr_assert_eq(sketch_add(&s, v[i]), 0);
    build(&fresh, v, 5000);
    assert_same_sketch(&s, &fresh);
    cr_assert(s.sum == fresh.sum);
    cr_assert_eq(sketch_bytes(&s), bytes, "no new memory");

    sketch_reset(&s);
    sketch_reset(&fresh);
    for (int i = 0; i < 5000; i++) {
        v[i] = -exponential(3);
        cr_assert_eq(sketch_add(&s, v[i]), 0);
        cr_assert_eq(sketch_add(&fresh, v[i]), 0);
    }
    assert_same_sketch(&s, &fresh);
    check_accuracy("after reset", v, 5000);
    sketch_free(&s);
    cr_assert_eq(sketch_bytes(&s), 0);
    cr_assert_eq(sketch_add(&s, 1), 0, "usable after free");
    cr_assert(sketch_quantile(&s, 0.5) == 1);
    sketch_free(&s);
    sketch_free(&fresh);
}

/* A copy of s made by merging it into an empty sketch: dense, the same buckets. */
static void copy_of(struct sketch *out, const struct sketch *s)
{
    sketch_init(out);
    cr_assert_eq(sketch_merge(out, s), 0);
}

SKETCH_TEST(a_shrunk_sketch_gives_the_same_answers_and_merges_the_same)
{
    static const struct { double lo, hi; int n; } cases[] = {
        {-6, 9, 20},     /* few values, wide: sparse */
        {-6, 9, 50000},  /* many values, wide and collapsed: exact dense */
        {0, 3, 5000},    /* narrow and full */
        {2, 2.001, 3},   /* one bucket */
    };
    seed(21);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct sketch s, dense, merged, again;
        sketch_init(&s);
        for (int i = 0; i < cases[c].n; i++) {
            double v = decades(cases[c].lo, cases[c].hi);
            cr_assert_eq(sketch_add(&s, next() % 3 ? v : next() % 2 ? -v : 0), 0);
        }
        copy_of(&dense, &s);
        size_t before = sketch_bytes(&s);
        sketch_shrink(&s);
        cr_assert(sketch_bytes(&s) <= before, "case %zu: %zu > %zu bytes", c, sketch_bytes(&s),
                  before);
        for (int k = 0; k <= 1000; k++) {
            double q = k / 1000.0, a = sketch_quantile(&s, q), b = sketch_quantile(&dense, q);
            cr_assert(a == b, "case %zu q=%g: %.17g vs %.17g", c, q, a, b);
        }
        cr_assert(s.count == dense.count && s.sum == dense.sum && s.min == dense.min &&
                  s.max == dense.max && s.zeros == dense.zeros);
        copy_of(&merged, &s);   /* merging from the shrunk form */
        assert_same_sketch(&merged, &dense);
        /* merging into the shrunk form, and adding to it: dense again, same buckets */
        cr_assert_eq(sketch_merge(&s, &dense), 0);
        cr_assert_eq(sketch_merge(&merged, &dense), 0);
        assert_same_sketch(&s, &merged);
        sketch_shrink(&s);
        cr_assert_eq(sketch_add(&s, 1e12), 0);
        cr_assert_eq(sketch_add(&merged, 1e12), 0);
        copy_of(&again, &s);
        assert_same_sketch(&again, &merged);
        sketch_reset(&s);
        cr_assert(s.count == 0 && isnan(sketch_quantile(&s, 0.5)));
        sketch_free(&s);
        sketch_free(&dense);
        sketch_free(&merged);
        sketch_free(&again);
    }
}

SKETCH_TEST(a_few_values_decades_apart_take_a_few_bytes_each)
{
    struct sketch s, merged;
    sketch_init(&s);
    const double v[] = {1e-6, 1e8, -1e-6, -1e8, 3, 0};   /* 14 decades: no collapse */
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        cr_assert_eq(sketch_add(&s, v[i]), 0);
    cr_assert(sketch_bytes(&s) <= 2 * 4 * 12, "added: a list, %zu bytes", sketch_bytes(&s));
    copy_of(&merged, &s);
    cr_assert(sketch_bytes(&merged) >= 2 * 1700 * sizeof(uint64_t),
              "merged into: dense, the span, %zu bytes", sketch_bytes(&merged));
    for (int k = 0; k <= 100; k++)
        cr_assert(sketch_quantile(&s, k / 100.0) == sketch_quantile(&merged, k / 100.0));
    sketch_shrink(&merged);
    cr_assert(sketch_bytes(&merged) <= 5 * 12, "shrunk: %zu bytes", sketch_bytes(&merged));
    sketch_free(&merged);
    sketch_shrink(&s);
    cr_assert(sketch_bytes(&s) <= 5 * 12, "shrunk: %zu bytes", sketch_bytes(&s));
    sketch_reset(&s);
    sketch_shrink(&s);
    cr_assert_eq(sketch_bytes(&s), 0, "an empty sketch holds nothing");
    sketch_free(&s);
}
