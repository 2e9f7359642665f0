/* mtr_stats.h — libmtrstats: the statistics behind `moetrace-stats` (docs/ARCHITECTURE.md §3 "Correlation with
 * performance", "Middle band", "Specialisation"; §4 controls).
 *
 * Pieces, each usable on its own:
 *   - correlation with confidence (Pearson r + t-test p, Spearman rho + p, percentile bootstrap CI over the
 *     observations, permutation p), sign test, paired bootstrap of a mean — through GSL, seeded, reproducible;
 *   - the language table (config/languages.tsv) and code normalisation;
 *   - accuracy inputs: moetrace TSV/JSON and lm-evaluation-harness results JSON with task -> language mapping;
 *   - model profiles (config/models/NAME.json): dimensions, router semantics, the paper's middle band;
 *   - the reduce tables (div_from_en, freq, delta, ...) behind one loader, mtr_tables_open();
 *   - middle-band detection from the U-curve, task / multilingual expert selection and the controls.
 *
 * Conventions (as libmoetrace, traces/moetrace.h): functions return 0 or a negative mtr_err; after an error
 * mtr_errmsg() holds a one-line detail for the calling thread. Nothing here prints or exits. GSL's abort
 * handler is switched off on first use and every GSL status is checked. Statistics take (data, stride, n) like
 * GSL, so a column of a row-major buffer needs no copy. Layers are 0-based in memory and 1-based in text
 * (the `band` options and every table that people read), experts 0-based everywhere.
 *
 * Random numbers: every resampling routine makes its own generator, GSL's mt19937 seeded with (seed mod 2^32),
 * and draws indices with gsl_rng_uniform_int, so results depend only on the seed and the data (and an
 * independent implementation of mt19937 can reproduce them: tests/stats/oracle.py does).
 */
#ifndef MTR_STATS_H
#define MTR_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moetrace.h"

#ifdef __cplusplus
extern "C" {
#endif


/* ---- correlation and tests (corr.c) ---------------------------------------------------------------------- */

#define MTR_STATS_MIN_N 3 /* correlations need at least this many observations */

/* Pearson r of x and y (n observations each, strides in elements). MTR_EINVAL if n < 3, a value is not finite,
 * or x or y is constant. */
int mtr_stats_pearson(double *r, const double *x, size_t xstride, const double *y, size_t ystride, size_t n);
/* Spearman rho: Pearson r of the ranks, ties given their average rank (as scipy.stats.spearmanr). Errors as
 * mtr_stats_pearson. */
int mtr_stats_spearman(double *rho, const double *x, size_t xstride, const double *y, size_t ystride, size_t n);
/* Ranks 1..n of x into out (n, contiguous), ties averaged. MTR_EINVAL if n == 0 or a value is NaN. */
int mtr_stats_rank(double *out, const double *x, size_t stride, size_t n);
/* Two-sided p-value of a correlation r over n observations: t = r sqrt((n-2)/(1-r^2)) against Student's t with
 * n-2 degrees of freedom (the p of scipy's pearsonr and spearmanr). |r| = 1 gives 0. For Pearson's r this is the
 * exact test under bivariate normality; for Spearman's rho it is a large-sample approximation that is far off
 * for few observations (n = 5, rho = -1: about 1e-24 where the exact p is 2/120). */
int mtr_stats_corr_pvalue(double *p, double r, size_t n);

/* Up to this many observations, permutation p-values enumerate all n! orderings (10! = 3628800) and Spearman's p
 * is the exact permutation p; above, permutations are sampled and Spearman's p is the t approximation. */
#define MTR_STATS_EXACT_MAX_N 10

/* How a p-value was obtained (value, printed name); enums only grow at the end. */
#define MTR_P_METHOD_LIST(X)                                                                                     \
    X(MTR_P_T, "t")                     /* Student's t with n-2 degrees of freedom */                            \
    X(MTR_P_EXACT, "exact")             /* all n! permutations of the observations */                           \
    X(MTR_P_MONTE_CARLO, "monte-carlo") /* (1 + hits) / (1 + n_perm) over n_perm random permutations */

#define MTR_X_ENUM(name, str) name,
typedef enum { MTR_P_METHOD_LIST(MTR_X_ENUM) MTR_P_METHOD_COUNT } mtr_p_method;
#undef MTR_X_ENUM
/* "t", "exact", "monte-carlo"; NULL if out of range. */
const char *mtr_stats_p_method_name(mtr_p_method m);

/* Exact two-sided permutation p-values of Pearson's r and Spearman's rho: the share of all n! pairings of x with
 * a reordering of y (the identity included) whose |statistic| reaches the observed one (within 1e-12 on the
 * correlation scale, so mathematical ties count). Ties in the data are kept (ranks averaged), so the Spearman
 * value is the exact conditional p also with tied ranks. Either output may be NULL. n_perms (may be NULL) gets n!.
 * Errors as mtr_stats_pearson; MTR_EINVAL also when n > MTR_STATS_EXACT_MAX_N. */
int mtr_stats_perm_exact(double *p_pearson, double *p_spearman, uint64_t *n_perms, const double *x, size_t xstride,
                         const double *y, size_t ystride, size_t n);

typedef struct {
    double r;          /* the statistic on all observations */
    double p;          /* two-sided p-value: Pearson the t-test; Spearman exact (n <= 10) or the t approximation */
    double ci_lo;      /* percentile bootstrap CI (level of the options) */
    double ci_hi;
    double p_perm;     /* permutation p, two-sided: exact #{|r_perm| >= |r|} / n! for n <= 10, else
                        * (1 + #{|r_perm| >= |r|}) / (1 + n_perm) */
    uint32_t n_boot_used; /* resamples with a defined statistic (degenerate ones, e.g. all one observation, skipped) */
    mtr_p_method p_method;      /* how p was obtained: MTR_P_T or MTR_P_EXACT */
    mtr_p_method p_perm_method; /* MTR_P_EXACT or MTR_P_MONTE_CARLO */
    uint64_t n_perm_used;       /* permutations behind p_perm: n! or n_perm */
} mtr_corr_stat;

typedef struct {
    mtr_corr_stat pearson, spearman;
    size_t n;          /* observations */
} mtr_corr_result;

typedef struct {
    uint64_t seed;     /* default 1 */
    uint32_t n_boot;   /* bootstrap resamples, default 10000 */
    uint32_t n_perm;   /* permutations, default 10000 */
    double level;      /* CI level, default 0.95 */
} mtr_corr_opts;
#define MTR_CORR_OPTS_INIT {1, 10000, 10000, 0.95}

/* Pearson and Spearman with p-values, bootstrap CIs and permutation p-values for paired observations (x, y).
 * Bootstrap: n_boot resamples of n indices drawn with replacement from a generator seeded with `seed`; both
 * statistics use the same resamples; the CI is the linear-interpolation percentile (numpy's default) of the
 * defined values (with few observations, say n <= 10, such CIs are unreliable: a perfectly monotone sample gives
 * [-1, -1] or [1, 1]). Permutation: for n <= MTR_STATS_EXACT_MAX_N every ordering (mtr_stats_perm_exact), and
 * Spearman's p is that exact p; above, n_perm shuffles of y (gsl_ran_shuffle) from a second generator seeded with
 * seed + 1, and Spearman's p is the t approximation. Pearson's p is always the t-test. Errors as
 * mtr_stats_pearson; MTR_ENOMEM. */
int mtr_stats_correlate(mtr_corr_result *out, const double *x, size_t xstride, const double *y, size_t ystride,
                        size_t n, const mtr_corr_opts *opts);

/* Exact two-sided sign test: p of observing a split at least as uneven as (n_pos, n_neg) under Binomial(n, 1/2)
 * (ties are dropped by the caller), as scipy.stats.binomtest(n_pos, n, 0.5).pvalue. 1 when n == 0. */
int mtr_stats_sign_test(double *p, size_t n_pos, size_t n_neg);

/* Mean of d (n values) and its percentile bootstrap CI (n_boot resamples of the values, seeded as above). For
 * paired differences this is the paired bootstrap. MTR_EINVAL if n < 2 or a value is not finite. */
int mtr_stats_bootstrap_mean(double *mean, double *lo, double *hi, const double *d, size_t stride, size_t n,
                             uint64_t seed, uint32_t n_boot, double level);

/* ---- languages (lang.c) ---------------------------------------------------------------------------------- */

typedef struct {
    char flores[24];  /* FLORES-200 code, e.g. "zho_Hans": the canonical form */
    char iso3[8];     /* ISO 639-3 */
    char bcp47[24];   /* BCP-47 tag, e.g. "zh" */
    char name[64];    /* English name */
    char script[8];   /* ISO 15924 */
} mtr_lang;

typedef struct {
    mtr_lang *v;      /* (n) in file order */
    size_t n;
} mtr_langs;

/* Load a language table: TSV with '#' comment lines and columns flores, iso639_3, bcp47, name, script.
 * MTR_ENOTFOUND / MTR_EIO / MTR_EFORMAT (line number in the detail). Free with mtr_langs_free (accepts NULL). */
int mtr_langs_load(mtr_langs **out, const char *path);
void mtr_langs_free(mtr_langs *t);
/* Canonical FLORES code of `code`, which may be a FLORES code (any case, '-' or '_'), a BCP-47 tag, an ISO 639-3
 * code (the first row with it wins, so list the default script first) or an English name. *out is borrowed
 * from the table. MTR_ENOTFOUND "unknown language code 'x'" otherwise. */
int mtr_langs_normalize(const char **out, const mtr_langs *t, const char *code);

/* ---- accuracy inputs (accuracy.c) ------------------------------------------------------------------------ */

typedef struct {
    char lang[24];    /* canonical FLORES code */
    char task[128];   /* e.g. "belebele", "mgsm_direct", "global_mmlu_full:anatomy" */
    char metric[64];
    double value;     /* finite, checked on load */
    double n;         /* items behind the value, NaN if unknown */
} mtr_acc_row;

typedef struct {
    mtr_acc_row *rows; /* (n) in file order */
    size_t n;
    char format[32];   /* "tsv", "json", "lm-eval" */
} mtr_accuracy;

typedef struct {
    const char *metric;     /* lm-eval: metric key to take; NULL = first of "acc,none",
                               "exact_match,flexible-extract", "acc_norm,none", "exact_match,strict-match" */
    const char *task_map;   /* TSV file: task_name, lang[, task_label] for tasks the built-in rules miss; may be NULL */
    bool merge_subtasks;    /* average rows whose tasks share the part before ':' (Global-MMLU subjects) */
} mtr_acc_opts;
#define MTR_ACC_OPTS_INIT {NULL, NULL, false}

/* Load accuracies from a moetrace TSV (lang, task, metric, value, n; '#' comments, a '#'-prefixed header line),
 * a moetrace JSON ({"accuracy": [{"lang", "task", "metric", "value", "n"}, ...]} or that array alone) or an
 * lm-evaluation-harness results JSON (results.<task>.<metric>), chosen by content. lm-eval task names map to
 * languages by rule: belebele_<flores>, mgsm_direct_<lang>, mgsm_native_cot_<lang>, global_mmlu_full_<lang>_<subject>
 * (task "global_mmlu_full:<subject>"), xnli_<lang>, then the task map. Language codes are normalised through
 * langs. Errors (MTR_EFORMAT, detail naming the file and row/task): unknown language code, NaN or infinite
 * value, a task no rule or map entry places, duplicate (lang, task, metric). Free with mtr_accuracy_free. */
int mtr_accuracy_load(mtr_accuracy **out, const char *path, const mtr_langs *langs, const mtr_acc_opts *opts);
void mtr_accuracy_free(mtr_accuracy *a);
/* Distinct task names in file order: *tasks (n) points into a's rows (borrowed); the array is malloc'd. */
int mtr_accuracy_tasks(const char ***tasks, size_t *n, const mtr_accuracy *a);
/* The row for (lang, task); NULL if absent. task NULL matches any task only when a holds one task. */
const mtr_acc_row *mtr_accuracy_find(const mtr_accuracy *a, const char *lang, const char *task);

/* ---- model profiles (profile.c) -------------------------------------------------------------------------- */

typedef struct {
    char name[64];          /* profile name, e.g. "qwen3-30b-a3b" */
    char model_id[MTR_MAX_NAME];
    char model_type[64];
    uint32_t n_layers, n_experts, top_k;
    char score_fn[32];      /* softmax | sigmoid | topk_softmax | sparsemixer (mtr_score_fn names) */
    bool renormalize;
    bool router_bias;
    char routing[256];      /* free-text routing note */
    uint32_t band_first;    /* middle band, 1-based inclusive; 0 and 0 when the profile gives none */
    uint32_t band_last;
    char band_source[256];
    char path[4096];        /* file it came from */
} mtr_profile;

/* Load a profile from a path (contains '/' or ends in ".json") or a name looked up as models/NAME.json in the
 * config directory (mtr_stats_config_dir). MTR_ENOTFOUND, MTR_EFORMAT (missing or inconsistent fields). */
int mtr_profile_load(mtr_profile *out, const char *name_or_path);
/* The configuration directory: $MOETRACE_CONFIG, else ../config or ../share/moetrace beside the running
 * executable (whichever holds languages.tsv), else "config". Writes into buf. */
void mtr_stats_config_dir(char *buf, size_t cap);

/* ---- reduce tables (tables.c) ---------------------------------------------------------------------------- */

/* A generic '#'-commented TSV: provenance lines, a '#'-prefixed header, rows. */
typedef struct {
    char *path;
    size_t n_rows, n_cols;
    char **cols;      /* (n_cols) header names */
    char **cells;     /* (n_rows, n_cols) pointing into one buffer */
    size_t *line;     /* (n_rows) 1-based line numbers, for messages */
    char **prov;      /* (n_prov) provenance lines without the leading '#' */
    size_t n_prov;
} mtr_tsv;

/* Read a TSV. The header is the last '#' line before the first data line. MTR_ENOTFOUND / MTR_EIO /
 * MTR_EFORMAT (ragged row, no header). Free with mtr_tsv_free (accepts NULL). */
int mtr_tsv_read(mtr_tsv **out, const char *path);
void mtr_tsv_free(mtr_tsv *t);
/* Column index of name, or -1. */
int mtr_tsv_col(const mtr_tsv *t, const char *name);

/* The tables stats needs, dense and NaN where a combination is absent. */
typedef struct {
    char *source;        /* directory (or file) loaded */
    uint32_t n_layers;   /* 1 + largest 0-based layer seen */
    uint32_t n_experts;  /* 1 + largest expert id seen (0 without freq/delta) */
    size_t n_langs;
    char **langs;        /* (n_langs) in first-seen order, English (if present) first */
    size_t n_datasets;
    char **datasets;     /* (n_datasets) in first-seen order */
    double *div_en;      /* (n_langs, n_layers) divergence from English, or NULL without div_from_en */
    double *entropy;     /* (n_langs, n_layers) or NULL */
    double *freq;        /* (n_datasets, n_langs, n_layers, n_experts) activation frequency, or NULL */
    double *weight;      /* same shape: mean full-softmax weight, or NULL */
    double *delta;       /* same shape: Delta from delta.tsv, or NULL */
    char **prov;         /* provenance lines of the files read, "file: line" */
    size_t n_prov;
} mtr_tables;

/* Load the tables at path: a directory of reduce TSVs (div_from_en.tsv, entropy.tsv, freq.tsv, delta.tsv; each
 * optional, at least one required), or a tables.h5 file (read through the mtr_h5.h checks). Layers in the TSV
 * files are 1-based and become 0-based. MTR_ENOTFOUND, MTR_EFORMAT (bad number, layer 0, duplicate row...),
 * MTR_ECORRUPT (a damaged tables.h5).
 * Free with mtr_tables_free (accepts NULL). */
int mtr_tables_open(mtr_tables **out, const char *path);
void mtr_tables_free(mtr_tables *t);
/* Index of a language / dataset, or -1. */
int mtr_tables_lang(const mtr_tables *t, const char *lang);
int mtr_tables_dataset(const mtr_tables *t, const char *dataset);

/* ---- middle band (band.c) -------------------------------------------------------------------------------- */

typedef struct {
    uint32_t first, last;   /* 1-based inclusive */
    double threshold;       /* min + alpha (max - min) of the curve (detected bands) */
    double alpha;
    bool detected;          /* false: from a profile or the user */
} mtr_band;

/* Detect the middle band from a U-curve: curve (n_layers, stride) is the language-mean divergence per layer;
 * the band is the longest run of layers with curve <= min + alpha (max - min) (ties: the earliest run). NaN
 * layers break runs. MTR_EINVAL if n_layers < 3, alpha outside [0, 1] or the curve has no finite value. */
int mtr_band_detect(mtr_band *out, const double *curve, size_t stride, size_t n_layers, double alpha);
/* Mean over the non-English languages (all languages but `reference`) of t->div_en for each layer, ignoring
 * NaN; curve has t->n_layers entries. MTR_ENOTFOUND without div_en. */
int mtr_band_curve(double *curve, const mtr_tables *t, const char *reference);
/* Parse "A-B" (1-based inclusive, 1 <= A <= B <= n_layers). MTR_EINVAL otherwise. */
int mtr_band_parse(mtr_band *out, const char *s, uint32_t n_layers);

/* ---- expert selection (select.c) ------------------------------------------------------------------------- */

typedef struct {
    uint32_t layer;   /* 0-based */
    uint32_t expert;
    double score;     /* what it was selected by (Delta, or the 3-SD margin) */
} mtr_expert;

typedef struct {
    mtr_expert *v;    /* (n) sorted by (layer, expert) */
    size_t n;
    size_t n_dropped; /* candidates refused by the per-layer cap */
} mtr_expert_set;

void mtr_expert_set_free(mtr_expert_set *s); /* frees s->v; s itself is the caller's */
bool mtr_expert_set_has(const mtr_expert_set *s, uint32_t layer, uint32_t expert);

/* Delta[l,e] of (dataset, lang) against the base corpus (base_dataset, base_lang): from the delta table when it
 * holds (dataset, lang), else freq(dataset, lang) - freq(base_dataset, base_lang). delta: (n_layers, n_experts),
 * NaN where absent. MTR_ENOTFOUND naming what is missing. */
int mtr_select_delta(double *delta, const mtr_tables *t, const char *dataset, const char *lang,
                     const char *base_dataset, const char *base_lang);

/* Task experts A+(D, tau, band) = {(l, e): l in band, Delta[l,e] > tau} with Delta = mtr_select_delta(dataset,
 * English vs generic English). max_per_layer > 0 keeps at most that many per layer (largest Delta first; the
 * rest counted in n_dropped), for the hard operation's top-k cap. */
int mtr_select_task(mtr_expert_set *out, const mtr_tables *t, const char *dataset, const char *generic,
                    const char *english, double tau, const mtr_band *band, uint32_t max_per_layer);

typedef enum { MTR_ML_DELTA, MTR_ML_3SD } mtr_ml_rule;
/* Multilingual-specialised experts: (l, e) with Delta(lang) = freq(generic, lang) - freq(generic, English) > tau
 * for any non-English language (MTR_ML_DELTA), or, MTR_ML_3SD, a mean-weight difference weight(generic, lang) -
 * weight(generic, English) above 3 population standard deviations of that layer's differences. band NULL = all
 * layers. score = the largest margin over languages. */
int mtr_select_multilingual(mtr_expert_set *out, const mtr_tables *t, const char *generic, const char *english,
                            mtr_ml_rule rule, double tau, const mtr_band *band);

/* Controls, each with the same number of experts as `sel` where the data allow:
 *   outside: the experts with the largest task Delta outside the band (early and late layers), at most
 *            max_per_layer per layer (0 = no cap);
 *   multilingual: the n experts of `ml` with the largest score (ml already restricted as wanted);
 *   random: per layer of sel, as many experts drawn uniformly (seeded) from the experts of that layer not in sel.
 * delta: (n_layers, n_experts) task Delta. */
int mtr_control_outside(mtr_expert_set *out, const mtr_expert_set *sel, const double *delta, uint32_t n_layers,
                        uint32_t n_experts, const mtr_band *band, uint32_t max_per_layer);
int mtr_control_multilingual(mtr_expert_set *out, const mtr_expert_set *sel, const mtr_expert_set *ml);
int mtr_control_random(mtr_expert_set *out, const mtr_expert_set *sel, uint32_t n_experts, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
