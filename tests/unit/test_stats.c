/* test_stats.c — libmtrstats: statistics against scipy values and textbook cases, seeded resampling, band
 * detection, language normalisation, accuracy inputs (TSV, lm-eval JSON), the reduce-table loader, expert
 * selection and its controls. */
#include <math.h>

#include "mtr_stats.h"
#include "testutil.h"

#define NEAR(a, b, tol) ck_assert_msg(fabs((a) - (b)) <= (tol), "%s = %.17g, want %.17g", #a, (double)(a), (double)(b))
#define SOK(expr)                                                                                          \
    do {                                                                                                   \
        int s_rc_ = (expr);                                                                                \
        ck_assert_msg(s_rc_ == 0, "%s -> %s: %s", #expr, mtr_strerror(s_rc_), mtr_errmsg());         \
    } while (0)

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* values from scipy.stats 1.10 (Debian 12): pearsonr, spearmanr, binomtest */
static const double X7[] = {1.2, 2.3, 2.9, 4.1, 5.5, 6.0, 7.7}, Y7[] = {2.0, 2.9, 3.1, 4.8, 4.9, 7.1, 6.8};

START_TEST(test_pearson_spearman_scipy)
{
    double r, p, rho;
    SOK(mtr_stats_pearson(&r, X7, 1, Y7, 1, 7));
    NEAR(r, 0.949117035985894, 1e-12);
    SOK(mtr_stats_corr_pvalue(&p, r, 7));
    NEAR(p, 0.0010912960845572953, 1e-12);
    SOK(mtr_stats_spearman(&rho, X7, 1, Y7, 1, 7));
    NEAR(rho, 0.9642857142857145, 1e-12);
    SOK(mtr_stats_corr_pvalue(&p, rho, 7));
    NEAR(p, 0.0004541491691941689, 1e-12);
    /* ties: average ranks */
    const double x[] = {1, 2, 2, 3, 4, 4, 4, 5}, y[] = {3, 1, 4, 1, 5, 9, 2, 6};
    double rk[8];
    SOK(mtr_stats_rank(rk, x, 1, 8));
    const double want[] = {1, 2.5, 2.5, 4, 6, 6, 6, 8};
    for (int i = 0; i < 8; i++) NEAR(rk[i], want[i], 0);
    SOK(mtr_stats_spearman(&rho, x, 1, y, 1, 8));
    NEAR(rho, 0.5495502618648208, 1e-12);
    SOK(mtr_stats_corr_pvalue(&p, rho, 8));
    NEAR(p, 0.1582561276787799, 1e-10);
    SOK(mtr_stats_corr_pvalue(&p, -1.0, 5));
    NEAR(p, 0.0, 0);
}
END_TEST

START_TEST(test_stride)
{
    /* a column of a row-major (n, 3) buffer, without a copy */
    double m[7 * 3];
    for (int i = 0; i < 7; i++) {
        m[i * 3] = -1;
        m[i * 3 + 1] = X7[i];
        m[i * 3 + 2] = Y7[i];
    }
    double r;
    SOK(mtr_stats_pearson(&r, m + 1, 3, m + 2, 3, 7));
    NEAR(r, 0.949117035985894, 1e-12);
}
END_TEST

START_TEST(test_corr_errors)
{
    double r;
    const double c[] = {1, 1, 1, 1}, v[] = {1, 2, 3, 4}, nanv[] = {1, NAN, 3, 4};
    ck_assert_int_eq(mtr_stats_pearson(&r, v, 1, v, 1, 2), MTR_EDATA);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "at least 3"));
    ck_assert_int_eq(mtr_stats_pearson(&r, c, 1, v, 1, 4), MTR_EDATA);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "constant"));
    ck_assert_int_eq(mtr_stats_spearman(&r, nanv, 1, v, 1, 4), MTR_EDATA);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "finite"));
    mtr_corr_result res;
    ck_assert_int_eq(mtr_stats_correlate(&res, v, 1, nanv, 1, 4, NULL), MTR_EDATA);
}
END_TEST

START_TEST(test_correlate_seeded)
{
    mtr_corr_opts o = MTR_CORR_OPTS_INIT;
    mtr_corr_result a, b, c;
    o.n_boot = 2000;
    o.n_perm = 2000;
    SOK(mtr_stats_correlate(&a, X7, 1, Y7, 1, 7, &o));
    SOK(mtr_stats_correlate(&b, X7, 1, Y7, 1, 7, &o));
    ck_assert(memcmp(&a, &b, sizeof a) == 0); /* same seed, same numbers */
    o.seed = 2;
    SOK(mtr_stats_correlate(&c, X7, 1, Y7, 1, 7, &o));
    ck_assert(a.pearson.ci_lo != c.pearson.ci_lo || a.pearson.p_perm != c.pearson.p_perm);
    NEAR(a.pearson.r, 0.949117035985894, 1e-12);
    ck_assert(a.pearson.ci_lo <= a.pearson.r && a.pearson.r <= a.pearson.ci_hi && a.pearson.ci_hi <= 1.0);
    ck_assert(a.pearson.ci_lo > 0.5);
    /* 7! = 5040 orderings, 2 of which reach |rho| = 0.964 or more: the permutation p is near 2 x 2/5040 x ... */
    ck_assert(a.spearman.p_perm > 0 && a.spearman.p_perm < 0.02);
    ck_assert_uint_gt(a.pearson.n_boot_used, 1900);
}
END_TEST

/* next lexicographic permutation of a (n); false after the last */
static bool next_perm(size_t *a, size_t n)
{
    size_t i = n - 1;
    while (i > 0 && a[i - 1] >= a[i]) i--;
    if (i == 0) return false;
    size_t j = n - 1;
    while (a[j] <= a[i - 1]) j--;
    size_t t = a[i - 1];
    a[i - 1] = a[j];
    a[j] = t;
    for (size_t k = i, m = n - 1; k < m; k++, m--) {
        t = a[k];
        a[k] = a[m];
        a[m] = t;
    }
    return true;
}

/* textbook Pearson r, two passes */
static double naive_r(const double *x, const double *y, size_t n)
{
    double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
    for (size_t i = 0; i < n; i++) mx += x[i], my += y[i];
    mx /= (double)n;
    my /= (double)n;
    for (size_t i = 0; i < n; i++) {
        sxy += (x[i] - mx) * (y[i] - my);
        sxx += (x[i] - mx) * (x[i] - mx);
        syy += (y[i] - my) * (y[i] - my);
    }
    return sxy / sqrt(sxx * syy);
}

/* brute force: every ordering of y, r recomputed from scratch (ranks by counting, ties averaged) */
static void brute_perm_p(double *pp, double *ps, const double *x, const double *y, size_t n)
{
    double rx[16], ry[16], py[16], pry[16];
    size_t a[16];
    for (size_t i = 0; i < n; i++) {
        double lx = 0, ex = 0, ly = 0, ey = 0;
        for (size_t j = 0; j < n; j++) {
            lx += x[j] < x[i], ex += x[j] == x[i];
            ly += y[j] < y[i], ey += y[j] == y[i];
        }
        rx[i] = lx + (ex + 1) / 2;
        ry[i] = ly + (ey + 1) / 2;
        a[i] = i;
    }
    double r0 = fabs(naive_r(x, y, n)), s0 = fabs(naive_r(rx, ry, n));
    size_t hp = 0, hs = 0, total = 0;
    do {
        for (size_t i = 0; i < n; i++) py[i] = y[a[i]], pry[i] = ry[a[i]];
        hp += fabs(naive_r(x, py, n)) >= r0 - 1e-12;
        hs += fabs(naive_r(rx, pry, n)) >= s0 - 1e-12;
        total++;
    } while (next_perm(a, n));
    *pp = (double)hp / (double)total;
    *ps = (double)hs / (double)total;
}

START_TEST(test_spearman_exact_small_n)
{
    /* 5 languages, perfectly reversed order: rho = -1; of the 120 orderings of y, 2 reach |rho| = 1 */
    const double x[] = {0.11, 0.25, 0.31, 0.47, 0.52}, y[] = {0.9, 0.8, 0.62, 0.41, 0.33};
    mtr_corr_result c;
    mtr_corr_opts o = MTR_CORR_OPTS_INIT;
    o.n_boot = 500;
    SOK(mtr_stats_correlate(&c, x, 1, y, 1, 5, &o));
    NEAR(c.spearman.r, -1.0, 1e-15);
    NEAR(c.spearman.p, 2.0 / 120.0, 1e-15);
    ck_assert_int_eq(c.spearman.p_method, MTR_P_EXACT);
    ck_assert_str_eq(mtr_stats_p_method_name(c.spearman.p_method), "exact");
    NEAR(c.spearman.p_perm, 2.0 / 120.0, 1e-15);
    ck_assert_int_eq(c.spearman.p_perm_method, MTR_P_EXACT);
    ck_assert_uint_eq(c.spearman.n_perm_used, 120);
    ck_assert_int_eq(c.pearson.p_method, MTR_P_T); /* Pearson's p stays the t-test */
    double tp;
    SOK(mtr_stats_corr_pvalue(&tp, c.spearman.r, 5)); /* what the t approximation says: 0 */
    ck_assert(tp < 1e-10);
    /* the same through the direct call; n! reported */
    double pp, ps, bp, bs;
    uint64_t np = 0;
    SOK(mtr_stats_perm_exact(&pp, &ps, &np, x, 1, y, 1, 5));
    ck_assert_uint_eq(np, 120);
    NEAR(ps, 2.0 / 120.0, 1e-15);
    brute_perm_p(&bp, &bs, x, y, 5);
    NEAR(pp, bp, 0);
    NEAR(ps, bs, 0);
    /* random inputs at n = 6..8 (with ties at n = 8) against the brute force */
    uint64_t st = 12345;
    for (size_t n = 6; n <= 8; n++)
        for (int rep = 0; rep < 3; rep++) {
            double xr[8], yr[8];
            for (size_t i = 0; i < n; i++) {
                st = st * 6364136223846793005ULL + 1442695040888963407ULL;
                xr[i] = (double)(st >> 40) / 16777216.0;
                st = st * 6364136223846793005ULL + 1442695040888963407ULL;
                yr[i] = 0.3 * xr[i] + (double)(st >> 40) / 16777216.0;
                if (n == 8 && i % 3 == 2) yr[i] = yr[i - 1]; /* ties in y */
            }
            SOK(mtr_stats_perm_exact(&pp, &ps, &np, xr, 1, yr, 1, n));
            brute_perm_p(&bp, &bs, xr, yr, n);
            ck_assert_msg(pp == bp && ps == bs, "n=%zu rep %d: exact %.17g %.17g, brute %.17g %.17g", n, rep, pp, ps,
                          bp, bs);
            SOK(mtr_stats_correlate(&c, xr, 1, yr, 1, n, &o));
            ck_assert(c.spearman.p == ps && c.pearson.p_perm == pp && c.spearman.p_method == MTR_P_EXACT);
        }
    /* above 10 observations: t approximation and sampled permutations, and no enumeration */
    double x11[11], y11[11];
    for (int i = 0; i < 11; i++) x11[i] = i, y11[i] = (i * 7) % 11;
    o.n_perm = 1000;
    SOK(mtr_stats_correlate(&c, x11, 1, y11, 1, 11, &o));
    ck_assert_int_eq(c.spearman.p_method, MTR_P_T);
    ck_assert_int_eq(c.spearman.p_perm_method, MTR_P_MONTE_CARLO);
    ck_assert_uint_eq(c.spearman.n_perm_used, 1000);
    SOK(mtr_stats_corr_pvalue(&tp, c.spearman.r, 11));
    NEAR(c.spearman.p, tp, 0);
    ck_assert_int_eq(mtr_stats_perm_exact(&pp, &ps, NULL, x11, 1, y11, 1, 11), MTR_EINVAL);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "at most 10!"));
}
END_TEST

START_TEST(test_sign_bootstrap_mean)
{
    double p;
    SOK(mtr_stats_sign_test(&p, 2, 8));
    NEAR(p, 0.109375, 1e-15);
    SOK(mtr_stats_sign_test(&p, 7, 2));
    NEAR(p, 0.1796875, 1e-15);
    SOK(mtr_stats_sign_test(&p, 3, 3));
    NEAR(p, 1.0, 0);
    SOK(mtr_stats_sign_test(&p, 0, 0));
    NEAR(p, 1.0, 0);
    const double d[] = {0.01, 0.02, -0.01, 0.03, 0.0, 0.015};
    double m, lo, hi, m2, lo2, hi2;
    SOK(mtr_stats_bootstrap_mean(&m, &lo, &hi, d, 1, 6, 5, 5000, 0.95));
    SOK(mtr_stats_bootstrap_mean(&m2, &lo2, &hi2, d, 1, 6, 5, 5000, 0.95));
    NEAR(m, 0.0108333333333333, 1e-12);
    ck_assert(lo == lo2 && hi == hi2 && lo < m && m < hi && lo >= -0.01 && hi <= 0.03);
    ck_assert_int_eq(mtr_stats_bootstrap_mean(&m, &lo, &hi, d, 1, 1, 5, 100, 0.95), MTR_EDATA);
}
END_TEST

START_TEST(test_band)
{
    const double u[] = {0.40, 0.37, 0.23, 0.17, 0.17, 0.18, 0.17, 0.17, 0.23, 0.39};
    mtr_band b;
    SOK(mtr_band_detect(&b, u, 1, 10, 0.2));
    ck_assert_uint_eq(b.first, 4);
    ck_assert_uint_eq(b.last, 8);
    ck_assert(b.detected);
    SOK(mtr_band_detect(&b, u, 1, 10, 0.5));
    ck_assert_uint_eq(b.first, 3);
    ck_assert_uint_eq(b.last, 9);
    /* a NaN layer breaks the run; the longest remaining run wins, the earliest on ties */
    const double g[] = {0.5, 0.1, 0.1, NAN, 0.1, 0.1, 0.1, 0.5};
    SOK(mtr_band_detect(&b, g, 1, 8, 0.2));
    ck_assert_uint_eq(b.first, 5);
    ck_assert_uint_eq(b.last, 7);
    ck_assert_int_eq(mtr_band_detect(&b, g, 1, 2, 0.2), MTR_EDATA);
    ck_assert_int_eq(mtr_band_detect(&b, g, 1, 8, 1.5), MTR_EINVAL);
    SOK(mtr_band_parse(&b, "8-35", 48));
    ck_assert_uint_eq(b.first, 8);
    ck_assert_uint_eq(b.last, 35);
    ck_assert_int_eq(mtr_band_parse(&b, "8-49", 48), MTR_EINVAL);
    ck_assert_int_eq(mtr_band_parse(&b, "0-4", 48), MTR_EINVAL);
    ck_assert_int_eq(mtr_band_parse(&b, "9-8", 48), MTR_EINVAL);
    ck_assert_int_eq(mtr_band_parse(&b, "x", 48), MTR_EINVAL);
}
END_TEST

static char dir[256];
static mtr_langs *langs;

static void setup_langs(void)
{
    char p[512];
    tu_tmpdir(dir, sizeof dir, "stats");
    snprintf(p, sizeof p, "%s/languages.tsv", dir);
    write_file(p, "# test table\n#flores\tiso639_3\tbcp47\tname\tscript\n"
                  "eng_Latn\teng\ten\tEnglish\tLatn\nfra_Latn\tfra\tfr\tFrench\tLatn\n"
                  "zho_Hans\tzho\tzh\tChinese (Simplified)\tHans\nzho_Hant\tzho\tzh-Hant\tChinese (Traditional)\tHant\n"
                  "swh_Latn\tswh\tsw\tSwahili\tLatn\nbam_Latn\tbam\tbm\tBambara\tLatn\n");
    SOK(mtr_langs_load(&langs, p));
}

static void teardown_langs(void)
{
    mtr_langs_free(langs);
    langs = NULL;
    tu_rmrf(dir);
}

START_TEST(test_langs)
{
    const char *c;
    SOK(mtr_langs_normalize(&c, langs, "fra_Latn"));
    ck_assert_str_eq(c, "fra_Latn");
    SOK(mtr_langs_normalize(&c, langs, "ZHO-hant"));
    ck_assert_str_eq(c, "zho_Hant");
    SOK(mtr_langs_normalize(&c, langs, "zh"));
    ck_assert_str_eq(c, "zho_Hans");
    SOK(mtr_langs_normalize(&c, langs, "zho")); /* first row of an ISO code = default script */
    ck_assert_str_eq(c, "zho_Hans");
    SOK(mtr_langs_normalize(&c, langs, "sw"));
    ck_assert_str_eq(c, "swh_Latn");
    SOK(mtr_langs_normalize(&c, langs, "bambara"));
    ck_assert_str_eq(c, "bam_Latn");
    ck_assert_int_eq(mtr_langs_normalize(&c, langs, "xx"), MTR_ENOTFOUND);
    ck_assert_str_eq(mtr_errmsg(), "unknown language code 'xx'");
    /* the shipped table loads and knows the paper's languages */
    mtr_langs *real = NULL;
    if (mtr_langs_load(&real, "config/languages.tsv") == 0) {
        SOK(mtr_langs_normalize(&c, real, "ary_Arab"));
        SOK(mtr_langs_normalize(&c, real, "ar"));
        ck_assert_str_eq(c, "arb_Arab");
        mtr_langs_free(real);
    }
}
END_TEST

START_TEST(test_accuracy_tsv)
{
    char p[512];
    mtr_accuracy *a = NULL;
    snprintf(p, sizeof p, "%s/acc.tsv", dir);
    write_file(p, "# prov\n#lang\ttask\tmetric\tvalue\tn\nen\tmath\tacc\t0.9\t100\nfr\tmath\tacc\t0.8\t\n"
                  "sw\tmath\tacc\t0.5\t100\n");
    SOK(mtr_accuracy_load(&a, p, langs, NULL));
    ck_assert_uint_eq(a->n, 3);
    ck_assert_str_eq(a->format, "tsv");
    ck_assert_str_eq(a->rows[2].lang, "swh_Latn");
    ck_assert(isnan(a->rows[1].n));
    ck_assert_ptr_nonnull(mtr_accuracy_find(a, "fra_Latn", "math"));
    ck_assert_ptr_null(mtr_accuracy_find(a, "bam_Latn", "math"));
    mtr_accuracy_free(a);
    write_file(p, "#lang\ttask\tmetric\tvalue\tn\nen\tmath\tacc\tnan\t1\n");
    ck_assert_int_eq(mtr_accuracy_load(&a, p, langs, NULL), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), ":2: NaN accuracy for eng_Latn"));
    write_file(p, "#lang\ttask\tmetric\tvalue\tn\nqq_Qqqq\tmath\tacc\t0.5\t1\n");
    ck_assert_int_eq(mtr_accuracy_load(&a, p, langs, NULL), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "unknown language code 'qq_Qqqq'"));
    write_file(p, "#lang\ttask\tmetric\tvalue\tn\nen\tmath\tacc\t0.5\t1\nen\tmath\tacc\t0.6\t1\n");
    ck_assert_int_eq(mtr_accuracy_load(&a, p, langs, NULL), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "twice"));
    /* an accuracy is a fraction: 7.5 (a percentage, or a typo) would move r silently */
    write_file(p, "#lang\ttask\tmetric\tvalue\tn\nen\tmath\tacc\t0.5\t1\nfr\tmath\tacc\t7.5\t1\n");
    ck_assert_int_eq(mtr_accuracy_load(&a, p, langs, NULL), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), ":3: accuracy 7.5 for fra_Latn math is outside [0, 1]"));
    write_file(p, "#lang\ttask\tmetric\tvalue\tn\nen\tmath\tacc\t-0.01\t1\n");
    ck_assert_int_eq(mtr_accuracy_load(&a, p, langs, NULL), MTR_EFORMAT);
    write_file(p, "#lang\ttask\tmetric\tvalue\tn\nen\tmath\tacc\t0\t1\nfr\tmath\tacc\t1\t1\n");
    SOK(mtr_accuracy_load(&a, p, langs, NULL));
    mtr_accuracy_free(a);
}
END_TEST

START_TEST(test_accuracy_lmeval)
{
    char p[512], m[512];
    mtr_accuracy *a = NULL;
    snprintf(p, sizeof p, "%s/results.json", dir);
    snprintf(m, sizeof m, "%s/map.tsv", dir);
    write_file(p, "{\"results\": {\"belebele_fra_Latn\": {\"acc,none\": 0.8, \"alias\": \"x\"},"
                  " \"mgsm_direct_sw\": {\"exact_match,flexible-extract\": 0.4},"
                  " \"global_mmlu_full_zh_virology\": {\"acc,none\": 0.5},"
                  " \"global_mmlu_full_zh_anatomy\": {\"acc,none\": 0.7},"
                  " \"my_task_bm\": {\"acc,none\": 0.3}, \"mgsm_direct\": {\"acc,none\": 0.1}}}");
    ck_assert_int_eq(mtr_accuracy_load(&a, p, langs, NULL), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "results.my_task_bm: no language"));
    write_file(m, "#task\tlang\tlabel\nmy_task_bm\tbm\tmy_task\n");
    mtr_acc_opts o = MTR_ACC_OPTS_INIT;
    o.task_map = m;
    SOK(mtr_accuracy_load(&a, p, langs, &o));
    ck_assert_str_eq(a->format, "lm-eval");
    ck_assert_uint_eq(a->n, 5); /* the mgsm_direct group is skipped */
    const mtr_acc_row *r = mtr_accuracy_find(a, "swh_Latn", "mgsm_direct");
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->metric, "exact_match,flexible-extract");
    ck_assert_ptr_nonnull(mtr_accuracy_find(a, "zho_Hans", "global_mmlu_full:virology"));
    ck_assert_ptr_nonnull(mtr_accuracy_find(a, "bam_Latn", "my_task"));
    mtr_accuracy_free(a);
    o.merge_subtasks = true;
    SOK(mtr_accuracy_load(&a, p, langs, &o));
    r = mtr_accuracy_find(a, "zho_Hans", "global_mmlu_full");
    ck_assert_ptr_nonnull(r);
    NEAR(r->value, 0.6, 1e-15);
    mtr_accuracy_free(a);
    write_file(p, "{\"accuracy\": [{\"lang\": \"fr\", \"task\": \"t\", \"value\": 0.5}, {\"lang\": \"en\", \"task\": \"t\", \"value\": null}]}");
    ck_assert_int_eq(mtr_accuracy_load(&a, p, langs, NULL), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "NaN accuracy"));
}
END_TEST

/* a small reduce-table directory: 3 layers x 4 experts, datasets flores and math, languages eng/fra/bam */
static void write_tables(const char *d)
{
    char p[512];
    snprintf(p, sizeof p, "%s/div_from_en.tsv", d);
    write_file(p, "# moetrace-reduce test\n#lang\tlayer\tdiv\tn_pairs\nfra_Latn\t1\t0.3\t5\nfra_Latn\t2\t0.1\t5\n"
                  "fra_Latn\t3\t0.3\t5\nbam_Latn\t1\t0.5\t5\nbam_Latn\t2\t0.4\t5\nbam_Latn\t3\t0.5\t5\n");
    snprintf(p, sizeof p, "%s/freq.tsv", d);
    FILE *f = fopen(p, "w");
    fprintf(f, "# test\n#dataset\tlang\tlayer\texpert\tfreq\tweight\tn_seqs\n");
    const char *ds[] = {"flores", "math"}, *lg[] = {"eng_Latn", "fra_Latn", "bam_Latn"};
    for (int a = 0; a < 2; a++)
        for (int g = 0; g < 3; g++)
            for (int l = 1; l <= 3; l++)
                for (int e = 0; e < 4; e++) {
                    double v = 0.25;
                    if (a == 1 && g == 0 && l == 2 && e == 3) v = 0.75;  /* the task expert: Delta 0.5 */
                    if (a == 1 && g == 0 && l == 2 && e == 1) v = 0.45;  /* Delta 0.2 */
                    if (a == 1 && g == 0 && l == 1 && e == 0) v = 0.70;  /* outside the band */
                    if (a == 0 && g == 2 && e == 2) v = 0.95;           /* Bambara's own expert, every layer */
                    fprintf(f, "%s\t%s\t%d\t%d\t%.2f\t%.2f\t5\n", ds[a], lg[g], l, e, v, v / 4);
                }
    fclose(f);
}

START_TEST(test_tables_and_selection)
{
    mtr_tables *t = NULL;
    write_tables(dir);
    SOK(mtr_tables_open(&t, dir));
    ck_assert_uint_eq(t->n_layers, 3);
    ck_assert_uint_eq(t->n_experts, 4);
    ck_assert_uint_eq(t->n_langs, 3);
    ck_assert_str_eq(t->langs[0], "eng_Latn");
    ck_assert_ptr_nonnull(t->div_en);
    ck_assert_ptr_null(t->delta);
    int g = mtr_tables_lang(t, "fra_Latn");
    NEAR(t->div_en[(size_t)g * 3 + 1], 0.1, 0);
    double curve[3];
    SOK(mtr_band_curve(curve, t, "eng_Latn"));
    NEAR(curve[1], 0.25, 1e-15);

    mtr_band band = {2, 2, NAN, NAN, false};
    mtr_expert_set task = {0}, ml = {0}, ctl = {0};
    SOK(mtr_select_task(&task, t, "math", "flores", "eng_Latn", 0.3, &band, 0));
    ck_assert_uint_eq(task.n, 1);
    ck_assert_uint_eq(task.v[0].layer, 1);
    ck_assert_uint_eq(task.v[0].expert, 3);
    NEAR(task.v[0].score, 0.5, 1e-12);
    mtr_expert_set_free(&task);
    SOK(mtr_select_task(&task, t, "math", "flores", "eng_Latn", 0.1, &band, 1)); /* cap 1 per layer */
    ck_assert_uint_eq(task.n, 1);
    ck_assert_uint_eq(task.n_dropped, 1);
    mtr_expert_set_free(&task);
    SOK(mtr_select_task(&task, t, "math", "flores", "eng_Latn", 0.1, &band, 0));
    ck_assert_uint_eq(task.n, 2);

    SOK(mtr_select_multilingual(&ml, t, "flores", "eng_Latn", MTR_ML_DELTA, 0.3, NULL));
    ck_assert_uint_eq(ml.n, 3); /* Bambara's expert 2 in every layer */
    for (size_t i = 0; i < ml.n; i++) ck_assert_uint_eq(ml.v[i].expert, 2);

    double delta[12];
    SOK(mtr_select_delta(delta, t, "math", "eng_Latn", "flores", "eng_Latn"));
    SOK(mtr_control_outside(&ctl, &task, delta, 3, 4, &band, 0));
    ck_assert_uint_eq(ctl.n, 2);
    ck_assert_uint_eq(ctl.v[0].layer, 0); /* the largest Delta outside the band: layer 1, expert 0 */
    ck_assert_uint_eq(ctl.v[0].expert, 0);
    for (size_t i = 0; i < ctl.n; i++) ck_assert_uint_ne(ctl.v[i].layer, 1);
    mtr_expert_set_free(&ctl);
    SOK(mtr_control_multilingual(&ctl, &task, &ml));
    ck_assert_uint_eq(ctl.n, 2);
    mtr_expert_set_free(&ctl);
    mtr_expert_set r1 = {0}, r2 = {0};
    SOK(mtr_control_random(&r1, &task, 4, 3));
    SOK(mtr_control_random(&r2, &task, 4, 3));
    ck_assert_uint_eq(r1.n, 2);
    for (size_t i = 0; i < r1.n; i++) {
        ck_assert_uint_eq(r1.v[i].layer, 1);
        ck_assert(!mtr_expert_set_has(&task, r1.v[i].layer, r1.v[i].expert));
        ck_assert_uint_eq(r1.v[i].expert, r2.v[i].expert);
    }
    mtr_expert_set_free(&r1);
    mtr_expert_set_free(&r2);
    mtr_expert_set_free(&task);
    mtr_expert_set_free(&ml);
    mtr_tables_free(t);
}
END_TEST

START_TEST(test_tables_errors)
{
    char p[512];
    mtr_tables *t = NULL;
    ck_assert_int_eq(mtr_tables_open(&t, dir), MTR_ENOTFOUND); /* only languages.tsv there */
    snprintf(p, sizeof p, "%s/div_from_en.tsv", dir);
    write_file(p, "#lang\tlayer\tdiv\tn_pairs\nfra_Latn\t0\t0.3\t5\n");
    ck_assert_int_eq(mtr_tables_open(&t, dir), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "layers are 1-based"));
    write_file(p, "#lang\tlayer\tdiv\tn_pairs\nfra_Latn\t1\t0.3\t5\nfra_Latn\t1\t0.3\t5\n");
    ck_assert_int_eq(mtr_tables_open(&t, dir), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), ":3: duplicate row"));
    write_file(p, "#lang\tlayer\tdiv\tn_pairs\nfra_Latn\t1\t0.3\n");
    ck_assert_int_eq(mtr_tables_open(&t, dir), MTR_EFORMAT);
    snprintf(p, sizeof p, "%s/tables.h5", dir);
    write_file(p, "x");
    ck_assert_int_eq(mtr_tables_open(&t, p), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "not an HDF5 file"));
}
END_TEST

/* incomplete tables are bad data: a (language, layer) row, a layer of every language, or the last layers of the
 * model the provenance names, missing from div_from_en.tsv, would move the band and the correlations silently */
START_TEST(test_tables_incomplete)
{
    char p[512];
    mtr_tables *t = NULL;
    write_tables(dir);
    snprintf(p, sizeof p, "%s/div_from_en.tsv", dir);
    write_file(p, "#lang\tlayer\tdiv\tn_pairs\nfra_Latn\t1\t0.3\t5\nfra_Latn\t2\t0.1\t5\nfra_Latn\t3\t0.3\t5\n"
                  "bam_Latn\t1\t0.5\t5\nbam_Latn\t3\t0.5\t5\n");
    ck_assert_int_eq(mtr_tables_open(&t, dir), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "div_from_en.tsv: no row for bam_Latn layer 2"));
    write_file(p, "#lang\tlayer\tdiv\tn_pairs\nfra_Latn\t1\t0.3\t5\nfra_Latn\t3\t0.3\t5\n"
                  "bam_Latn\t1\t0.5\t5\nbam_Latn\t3\t0.5\t5\n");
    ck_assert_int_eq(mtr_tables_open(&t, dir), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "no row for fra_Latn layer 2"));
    /* the last layer gone from every table: only the model line of the provenance tells */
    snprintf(p, sizeof p, "%s/freq.tsv", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/div_from_en.tsv", dir);
    write_file(p, "# model: test/m (3 layers, 4 experts, top-2); weights: full\n#lang\tlayer\tdiv\tn_pairs\n"
                  "fra_Latn\t1\t0.3\t5\nfra_Latn\t2\t0.3\t5\nbam_Latn\t1\t0.5\t5\nbam_Latn\t2\t0.5\t5\n");
    ck_assert_int_eq(mtr_tables_open(&t, dir), MTR_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "layers 1..2 but the model has 3"));
    write_file(p, "# model: test/m (2 layers, 4 experts, top-2); weights: full\n#lang\tlayer\tdiv\tn_pairs\n"
                  "fra_Latn\t1\t0.3\t5\nfra_Latn\t2\t0.3\t5\nbam_Latn\t1\t0.5\t5\nbam_Latn\t2\t0.5\t5\n");
    SOK(mtr_tables_open(&t, dir));
    ck_assert_uint_eq(t->n_layers, 2);
    mtr_tables_free(t);
}
END_TEST

START_TEST(test_profile)
{
    char p[512];
    mtr_profile pr;
    snprintf(p, sizeof p, "%s/m.json", dir);
    write_file(p, "{\"name\": \"m\", \"model_id\": \"x/m\", \"n_layers\": 24, \"n_experts\": 32, \"top_k\": 4,"
                  " \"router\": {\"score_fn\": \"topk_softmax\", \"router_bias\": true},"
                  " \"middle_band\": {\"first\": 4, \"last\": 19, \"source\": \"paper\"}}");
    SOK(mtr_profile_load(&pr, p));
    ck_assert_uint_eq(pr.band_first, 4);
    ck_assert_uint_eq(pr.band_last, 19);
    ck_assert(pr.router_bias);
    write_file(p, "{\"model_id\": \"x/m\", \"n_layers\": 24, \"n_experts\": 32, \"top_k\": 4,"
                  " \"middle_band\": {\"first\": 4, \"last\": 25}}");
    ck_assert_int_eq(mtr_profile_load(&pr, p), MTR_EFORMAT);
    /* the shipped profiles carry the paper's bands */
    static const struct { const char *f; uint32_t L, a, b; } paper[] = {
        {"config/models/qwen3-30b-a3b.json", 48, 8, 35},
        {"config/models/phi-3.5-moe.json", 32, 8, 17},
        {"config/models/gpt-oss-20b.json", 24, 4, 19},
        {"config/models/olmoe-1b-7b.json", 16, 0, 0},
    };
    for (size_t i = 0; i < 4; i++) {
        if (access(paper[i].f, R_OK) != 0) continue; /* run from elsewhere than the repository root */
        SOK(mtr_profile_load(&pr, paper[i].f));
        ck_assert_uint_eq(pr.n_layers, paper[i].L);
        ck_assert_uint_eq(pr.band_first, paper[i].a);
        ck_assert_uint_eq(pr.band_last, paper[i].b);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("stats");
    TCase *c = tcase_create("statistics");
    tcase_add_test(c, test_pearson_spearman_scipy);
    tcase_add_test(c, test_stride);
    tcase_add_test(c, test_corr_errors);
    tcase_add_test(c, test_correlate_seeded);
    tcase_add_test(c, test_spearman_exact_small_n);
    tcase_add_test(c, test_sign_bootstrap_mean);
    tcase_add_test(c, test_band);
    suite_add_tcase(s, c);
    TCase *d = tcase_create("inputs");
    tcase_add_checked_fixture(d, setup_langs, teardown_langs);
    tcase_add_test(d, test_langs);
    tcase_add_test(d, test_accuracy_tsv);
    tcase_add_test(d, test_accuracy_lmeval);
    tcase_add_test(d, test_tables_and_selection);
    tcase_add_test(d, test_tables_errors);
    tcase_add_test(d, test_tables_incomplete);
    tcase_add_test(d, test_profile);
    suite_add_tcase(s, d);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
