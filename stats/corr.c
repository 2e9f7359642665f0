/* corr.c — correlation with uncertainty (docs/ARCHITECTURE.md §3 "Correlation with performance"): Pearson and Spearman
 * with p-values (t-test; Spearman exact by enumeration for n <= 10), a percentile bootstrap CI over observations,
 * a permutation p-value (exact for n <= 10, else sampled); the exact sign test
 * and the bootstrap CI of a mean used for intervention effects. Everything numeric goes through GSL with its
 * abort handler off; the resampling order is documented in mtr_stats.h so an independent implementation can
 * reproduce every number from the seed (tests/stats/oracle.py). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_cdf.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_permutation.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_sort_vector.h>
#include <gsl/gsl_statistics_double.h>

#include "stats_internal.h"

/* |r_perm| counts as "at least as extreme" within this tolerance: permutations that tie the observed
 * statistic mathematically may differ from it in the last bits. */
#define PERM_TOL 1e-12

static bool is_constant(const double *x, size_t stride, size_t n)
{
    for (size_t i = 1; i < n; i++)
        if (x[i * stride] != x[0]) return false;
    return true;
}

/* Pearson r or NaN when undefined (constant input). */
static double pearson_raw(const double *x, size_t xs, const double *y, size_t ys, size_t n)
{
    if (n < 2 || is_constant(x, xs, n) || is_constant(y, ys, n)) return NAN;
    double r = gsl_stats_correlation(x, xs, y, ys, n);
    if (!isfinite(r)) return NAN;
    return r > 1.0 ? 1.0 : r < -1.0 ? -1.0 : r; /* rounding can step just outside [-1, 1] */
}

static int check_input(const double *x, size_t xs, const double *y, size_t ys, size_t n)
{
    if (n < MTR_STATS_MIN_N)
        return mtr_fail(MTR_EDATA, "%zu observations: a correlation needs at least %d", n, MTR_STATS_MIN_N);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i * xs]) || !isfinite(y[i * ys]))
            return mtr_fail(MTR_EDATA, "observation %zu is not a finite number", i + 1);
    if (is_constant(x, xs, n) || is_constant(y, ys, n))
        return mtr_fail(MTR_EDATA, "one variable is constant: the correlation is undefined");
    return 0;
}

int mtr_stats_rank(double *out, const double *x, size_t stride, size_t n)
{
    int rc = 0;
    size_t *idx = NULL;
    mtr_stats_gsl_init();
    if (n == 0) return mtr_fail(MTR_EDATA, "nothing to rank");
    for (size_t i = 0; i < n; i++)
        if (isnan(x[i * stride])) return mtr_fail(MTR_EDATA, "value %zu is NaN", i + 1);
    idx = malloc(n * sizeof *idx);
    if (!idx) return mtr_fail(MTR_ENOMEM, "out of memory");
    gsl_sort_index(idx, x, stride, n);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && x[idx[j] * stride] == x[idx[i] * stride]) j++;
        double avg = 0.5 * (double)(i + 1 + j); /* mean of ranks i+1 .. j */
        for (size_t k = i; k < j; k++) out[idx[k]] = avg;
        i = j;
    }
    free(idx);
    return rc;
}

int mtr_stats_pearson(double *r, const double *x, size_t xstride, const double *y, size_t ystride, size_t n)
{
    mtr_stats_gsl_init();
    int rc = check_input(x, xstride, y, ystride, n);
    if (rc) return rc;
    *r = pearson_raw(x, xstride, y, ystride, n);
    return 0;
}

int mtr_stats_spearman(double *rho, const double *x, size_t xstride, const double *y, size_t ystride, size_t n)
{
    int rc = check_input(x, xstride, y, ystride, n);
    double *rx = NULL, *ry = NULL;
    if (rc) return rc;
    rx = malloc(n * sizeof *rx);
    ry = malloc(n * sizeof *ry);
    if (!rx || !ry) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    if ((rc = mtr_stats_rank(rx, x, xstride, n)) || (rc = mtr_stats_rank(ry, y, ystride, n))) goto out_free;
    *rho = pearson_raw(rx, 1, ry, 1, n);
out_free:
    free(rx);
    free(ry);
    return rc;
}

int mtr_stats_corr_pvalue(double *p, double r, size_t n)
{
    mtr_stats_gsl_init();
    if (n < MTR_STATS_MIN_N) return mtr_fail(MTR_EDATA, "%zu observations: no p-value below 3", n);
    if (!(fabs(r) <= 1.0)) return mtr_fail(MTR_EDATA, "correlation %g outside [-1, 1]", r);
    if (fabs(r) == 1.0) {
        *p = 0.0;
        return 0;
    }
    double df = (double)n - 2.0;
    double t = fabs(r) * sqrt(df / ((1.0 - r) * (1.0 + r)));
    double q = gsl_cdf_tdist_Q(t, df);
    if (!isfinite(q)) return mtr_fail(MTR_EDATA, "t distribution tail undefined for t=%g df=%g", t, df);
    *p = fmin(1.0, 2.0 * q);
    return 0;
}

const char *mtr_stats_p_method_name(mtr_p_method m)
{
#define MTR_X_NAME(name, str) case name: return str;
    switch (m) {
        MTR_P_METHOD_LIST(MTR_X_NAME)
    default: return NULL;
    }
#undef MTR_X_NAME
}

/* Exhaustive permutation test. Every ordering of y is visited once (the swap recursion: position `depth` takes
 * each remaining element in turn), and the cross sums S = sum_i xc[i] yc[perm[i]] of the centred data build up
 * along the path, so a leaf costs O(1) and the tree about e n! steps. |r_perm| >= |r| <=> |S_perm| >= |S_obs|. */
typedef struct {
    size_t n;
    const double *xc, *yc, *rxc, *ryc; /* (n) centred x, y and centred ranks */
    size_t idx[MTR_STATS_EXACT_MAX_N];  /* the current ordering of y */
    double thr_p, thr_s;                /* |S| thresholds that count as "at least as extreme" */
    uint64_t hit_p, hit_s, n_perms;
} perm_walk;

static void perm_visit(perm_walk *w, size_t depth, double sp, double ss)
{
    if (depth == w->n) {
        w->hit_p += fabs(sp) >= w->thr_p;
        w->hit_s += fabs(ss) >= w->thr_s;
        w->n_perms++;
        return;
    }
    for (size_t k = depth; k < w->n; k++) {
        size_t t = w->idx[depth];
        w->idx[depth] = w->idx[k];
        w->idx[k] = t;
        size_t j = w->idx[depth];
        perm_visit(w, depth + 1, sp + w->xc[depth] * w->yc[j], ss + w->rxc[depth] * w->ryc[j]);
        w->idx[k] = w->idx[depth];
        w->idx[depth] = t;
    }
}

static void centre(double *out, const double *v, size_t stride, size_t n, double *ss)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m += v[i * stride];
    m /= (double)n;
    *ss = 0.0;
    for (size_t i = 0; i < n; i++) {
        out[i] = v[i * stride] - m;
        *ss += out[i] * out[i];
    }
}

int mtr_stats_perm_exact(double *p_pearson, double *p_spearman, uint64_t *n_perms, const double *x, size_t xstride,
                         const double *y, size_t ystride, size_t n)
{
    enum { N = MTR_STATS_EXACT_MAX_N };
    double xc[N], yc[N], rx[N], ry[N], rxc[N], ryc[N], sxx, syy, srx, sry;
    mtr_stats_gsl_init();
    int rc = check_input(x, xstride, y, ystride, n);
    if (rc) return rc;
    if (n > N)
        return mtr_fail(MTR_EINVAL, "%zu observations: exact permutation p-values enumerate at most %d! orderings",
                              n, N);
    if ((rc = mtr_stats_rank(rx, x, xstride, n)) || (rc = mtr_stats_rank(ry, y, ystride, n))) return rc;
    centre(xc, x, xstride, n, &sxx);
    centre(yc, y, ystride, n, &syy);
    centre(rxc, rx, 1, n, &srx);
    centre(ryc, ry, 1, n, &sry);
    perm_walk w;
    memset(&w, 0, sizeof w);
    w.n = n;
    w.xc = xc;
    w.yc = yc;
    w.rxc = rxc;
    w.ryc = ryc;
    double sp = 0.0, ss = 0.0; /* the observed cross sums, added in the order the walk adds them */
    for (size_t i = 0; i < n; i++) {
        sp += xc[i] * yc[i];
        ss += rxc[i] * ryc[i];
        w.idx[i] = i;
    }
    /* PERM_TOL on the correlation scale: r = S / sqrt(Sxx Syy) */
    w.thr_p = fabs(sp) - PERM_TOL * sqrt(sxx * syy);
    w.thr_s = fabs(ss) - PERM_TOL * sqrt(srx * sry);
    perm_visit(&w, 0, 0.0, 0.0);
    if (p_pearson) *p_pearson = (double)w.hit_p / (double)w.n_perms;
    if (p_spearman) *p_spearman = (double)w.hit_s / (double)w.n_perms;
    if (n_perms) *n_perms = w.n_perms;
    return 0;
}

/* Percentile (linear interpolation between order statistics, numpy's default) of v (n, sorted in place). */
static void percentile_ci(double *lo, double *hi, double *v, size_t n, double level)
{
    if (n == 0) {
        *lo = *hi = NAN;
        return;
    }
    gsl_sort(v, 1, n);
    double a = 0.5 * (1.0 - level);
    *lo = gsl_stats_quantile_from_sorted_data(v, 1, n, a);
    *hi = gsl_stats_quantile_from_sorted_data(v, 1, n, 1.0 - a);
}

int mtr_stats_correlate(mtr_corr_result *out, const double *x, size_t xstride, const double *y, size_t ystride,
                        size_t n, const mtr_corr_opts *opts)
{
    static const mtr_corr_opts defaults = MTR_CORR_OPTS_INIT;
    int rc = 0;
    double *buf = NULL, *bp = NULL, *bs = NULL;
    size_t *perm = NULL;
    gsl_rng *rng = NULL;
    if (!opts) opts = &defaults;
    mtr_stats_gsl_init();
    if ((rc = check_input(x, xstride, y, ystride, n))) return rc;
    if (!(opts->level > 0.0 && opts->level < 1.0))
        return mtr_fail(MTR_EINVAL, "confidence level %g is not in (0, 1)", opts->level);
    memset(out, 0, sizeof *out);
    out->n = n;

    /* layout of buf: xs, ys (contiguous copies), rx, ry (ranks), gx, gy, grx, gry (gathered resample) */
    buf = malloc(8 * n * sizeof *buf);
    bp = malloc(((size_t)opts->n_boot + 1) * sizeof *bp);
    bs = malloc(((size_t)opts->n_boot + 1) * sizeof *bs);
    perm = malloc(n * sizeof *perm);
    if (!buf || !bp || !bs || !perm) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    double *xs = buf, *ys = buf + n, *rx = buf + 2 * n, *ry = buf + 3 * n;
    double *gx = buf + 4 * n, *gy = buf + 5 * n, *grx = buf + 6 * n, *gry = buf + 7 * n;
    for (size_t i = 0; i < n; i++) {
        xs[i] = x[i * xstride];
        ys[i] = y[i * ystride];
    }
    if ((rc = mtr_stats_rank(rx, xs, 1, n)) || (rc = mtr_stats_rank(ry, ys, 1, n))) goto out_free;

    out->pearson.r = pearson_raw(xs, 1, ys, 1, n);
    out->spearman.r = pearson_raw(rx, 1, ry, 1, n);
    if ((rc = mtr_stats_corr_pvalue(&out->pearson.p, out->pearson.r, n))) goto out_free;
    out->pearson.p_method = MTR_P_T;
    if (isnan(out->spearman.r)) {
        rc = mtr_fail(MTR_EDATA, "ranks are constant: Spearman's rho is undefined");
        goto out_free;
    }
    bool exact = n <= MTR_STATS_EXACT_MAX_N;
    if (exact) {
        /* few observations: the t approximation of rho's null distribution is far off (n = 5, rho = -1: 1e-24
         * instead of 2/120); the permutation distribution is the exact one, and cheap to enumerate */
        uint64_t np_all = 0;
        if ((rc = mtr_stats_perm_exact(&out->pearson.p_perm, &out->spearman.p_perm, &np_all, xs, 1, ys, 1, n)))
            goto out_free;
        out->spearman.p = out->spearman.p_perm;
        out->spearman.p_method = MTR_P_EXACT;
        out->pearson.p_perm_method = out->spearman.p_perm_method = MTR_P_EXACT;
        out->pearson.n_perm_used = out->spearman.n_perm_used = np_all;
    } else {
        if ((rc = mtr_stats_corr_pvalue(&out->spearman.p, out->spearman.r, n))) goto out_free;
        out->spearman.p_method = MTR_P_T;
        out->pearson.p_perm_method = out->spearman.p_perm_method = MTR_P_MONTE_CARLO;
        out->pearson.n_perm_used = out->spearman.n_perm_used = opts->n_perm;
    }

    /* bootstrap over observations: the same resample for both statistics */
    rng = mtr_stats_rng(opts->seed);
    if (!rng) {
        rc = mtr_fail(MTR_ENOMEM, "cannot allocate a random number generator");
        goto out_free;
    }
    size_t np = 0, ns = 0;
    for (uint32_t b = 0; b < opts->n_boot; b++) {
        for (size_t i = 0; i < n; i++) {
            size_t k = (size_t)gsl_rng_uniform_int(rng, (unsigned long)n);
            gx[i] = xs[k];
            gy[i] = ys[k];
        }
        double r = pearson_raw(gx, 1, gy, 1, n);
        if (!isnan(r)) bp[np++] = r;
        if (mtr_stats_rank(grx, gx, 1, n) == 0 && mtr_stats_rank(gry, gy, 1, n) == 0) {
            double s = pearson_raw(grx, 1, gry, 1, n);
            if (!isnan(s)) bs[ns++] = s;
        }
    }
    out->pearson.n_boot_used = (uint32_t)np;
    out->spearman.n_boot_used = (uint32_t)ns;
    percentile_ci(&out->pearson.ci_lo, &out->pearson.ci_hi, bp, np, opts->level);
    percentile_ci(&out->spearman.ci_lo, &out->spearman.ci_hi, bs, ns, opts->level);

    if (exact) goto out_free;
    /* permutation test: y shuffled cumulatively (each shuffle is a uniform permutation of the previous one) */
    gsl_rng_set(rng, (unsigned long)((opts->seed + 1) & 0xffffffffu));
    for (size_t i = 0; i < n; i++) perm[i] = i;
    size_t hit_p = 0, hit_s = 0;
    double ap = fabs(out->pearson.r) - PERM_TOL, as = fabs(out->spearman.r) - PERM_TOL;
    for (uint32_t b = 0; b < opts->n_perm; b++) {
        gsl_ran_shuffle(rng, perm, n, sizeof *perm);
        for (size_t i = 0; i < n; i++) {
            gy[i] = ys[perm[i]];
            gry[i] = ry[perm[i]];
        }
        if (fabs(pearson_raw(xs, 1, gy, 1, n)) >= ap) hit_p++;
        if (fabs(pearson_raw(rx, 1, gry, 1, n)) >= as) hit_s++;
    }
    out->pearson.p_perm = ((double)hit_p + 1.0) / ((double)opts->n_perm + 1.0);
    out->spearman.p_perm = ((double)hit_s + 1.0) / ((double)opts->n_perm + 1.0);

out_free:
    gsl_rng_free(rng);
    free(perm);
    free(bs);
    free(bp);
    free(buf);
    return rc;
}

int mtr_stats_sign_test(double *p, size_t n_pos, size_t n_neg)
{
    mtr_stats_gsl_init();
    size_t n = n_pos + n_neg;
    if (n == 0) {
        *p = 1.0;
        return 0;
    }
    if (n > 0xffffffffu) return mtr_fail(MTR_EDATA, "sign test over %zu pairs is too large", n);
    size_t k = n_pos < n_neg ? n_pos : n_neg;
    double tail = gsl_cdf_binomial_P((unsigned)k, 0.5, (unsigned)n);
    if (!isfinite(tail)) return mtr_fail(MTR_EDATA, "binomial tail undefined for k=%zu n=%zu", k, n);
    *p = fmin(1.0, 2.0 * tail);
    return 0;
}

int mtr_stats_bootstrap_mean(double *mean, double *lo, double *hi, const double *d, size_t stride, size_t n,
                             uint64_t seed, uint32_t n_boot, double level)
{
    int rc = 0;
    double *v = NULL, *bm = NULL;
    gsl_rng *rng = NULL;
    mtr_stats_gsl_init();
    if (n < 2) return mtr_fail(MTR_EDATA, "%zu values: a bootstrap needs at least 2", n);
    if (!(level > 0.0 && level < 1.0)) return mtr_fail(MTR_EINVAL, "confidence level %g is not in (0, 1)", level);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(d[i * stride])) return mtr_fail(MTR_EDATA, "value %zu is not a finite number", i + 1);
    v = malloc(n * sizeof *v);
    bm = malloc(((size_t)n_boot + 1) * sizeof *bm);
    rng = mtr_stats_rng(seed);
    if (!v || !bm || !rng) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) v[i] = d[i * stride];
    *mean = gsl_stats_mean(v, 1, n);
    for (uint32_t b = 0; b < n_boot; b++) {
        double s = 0.0;
        for (size_t i = 0; i < n; i++) s += v[gsl_rng_uniform_int(rng, (unsigned long)n)];
        bm[b] = s / (double)n;
    }
    percentile_ci(lo, hi, bm, n_boot, level);
out_free:
    gsl_rng_free(rng);
    free(bm);
    free(v);
    return rc;
}
