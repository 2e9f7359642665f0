/* mtr_reduce.h — moetrace-reduce: routing metrics over trace sets (docs/ARCHITECTURE.md §3; outputs in reduce/SUMMARIES.md).
 *
 * Phase 1 (mtr_summarize) streams the logits of every sequence once and writes per-sequence, per-layer summaries:
 * importance q (mean routing weights), top-k activation counts, entropy of q, mean token entropy and top-k Jaccard
 * consistency. Chunks are read and decoded by OpenMP workers that accumulate per (sequence, chunk) pieces; pieces
 * are merged in a fixed order, so every output is bit-identical for any number of threads or MPI ranks.
 * Phase 2 (mtr_tables) turns summaries into tables: divergence from English, pairwise divergences, entropy and
 * consistency profiles, activation frequencies, Delta against a base slice, risk difference, specialisation.
 *
 * Errors follow libmoetrace: 0 or a negative mtr_err; mtr_errmsg() holds the one-line detail.
 */
#ifndef MTR_REDUCE_H
#define MTR_REDUCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moetrace.h"

#define MTR_SUMMARIES_FORMAT "moetrace-summaries"
#define MTR_SUMMARIES_VERSION 1


/* ---- per-token kernels (kernels.c; plain references in reference.c) --------------------------------------- */

/* What one token contributes to its sequence at one layer. */
typedef struct {
    double *q;        /* (n_experts) += routing weights (full softmax, or the model's top-k weights) */
    uint32_t *a;      /* (n_experts) += 1 for each selected expert */
    double *ent;      /* += entropy of the token's full softmax distribution */
    uint64_t *bits;   /* (ceil(n_experts / 64)) set to the selection as a bitset */
    float *hint;      /* this layer's selection threshold from the previous token of the same worker (a speed hint
                         only: any value gives the same selection); start it at -FLT_MAX */
    float *qf;        /* (n_experts) or NULL: full-softmax weights are added here in f32 instead of to q; the caller
                         adds qf into q (mtr_token_flush) every MTR_TOKEN_FLUSH tokens, so f32 sums stay short */
} mtr_token_acc;

#define MTR_TOKEN_FLUSH 8

/* q (n) += qf (n) in double, then qf = 0. */
void mtr_token_flush(double *q, float *qf, size_t n);

/* Accumulate one token row z (n_experts logits of layer `layer`) into acc. topk_weights: add the weights the model
 * applies to its selection instead of the full softmax. scratch: (2 * n_experts) floats. z must be finite. */
void mtr_token_accumulate(const mtr_model_info *m, uint32_t layer, const float *z, bool topk_weights,
                          mtr_token_acc *acc, float *scratch);

/* Entropy of a distribution (n), natural log, 0 ln 0 = 0. */
double mtr_entropy(const double *p, size_t n);
/* Jensen-Shannon divergence of two distributions (n), natural log. */
double mtr_jsd(const double *p, const double *q, size_t n);
/* Entropy-normalised JSD: JSD / max(ln n - (H(p) + H(q)) / 2, 1e-6), given the two entropies. */
double mtr_jsd_normalised(const double *p, const double *q, size_t n, double hp, double hq);

/* Mean Jaccard similarity of the top-k sets of token pairs of one sequence, per layer: out (n_layers). bits:
 * (n_tokens, n_layers, words) selection bitsets with exactly k bits set in each (token, layer). All pairs if there are at most max_pairs, else max_pairs pairs
 * drawn with replacement by a generator seeded with `seed` (the same pairs at every layer). *n_pairs receives the
 * number of pairs used; NaN for fewer than two tokens. */
void mtr_jaccard_layers(double *out, const uint64_t *bits, uint32_t n_tokens, uint32_t n_layers, uint32_t words,
                        uint32_t k, uint32_t max_pairs, uint64_t seed, uint32_t *n_pairs);

/* ---- phase 1: summaries --------------------------------------------------------------------------------- */

typedef struct {
    int n_threads;          /* 0 = OpenMP default */
    bool topk_weights;      /* q from the weights the model applies (zero outside the top-k) */
    uint32_t role_mask;     /* bit r set = tokens of role r are counted; default all */
    uint32_t jaccard_pairs; /* all token pairs up to this many per sequence, then a seeded sample; default 4096 */
    uint64_t seed;          /* for the Jaccard sample */
    int rank, n_ranks;      /* MPI: this process takes the rank-th share of the sequences (0, 1 = all) */
    /* called from the calling thread after every batch: tokens done of total; may be NULL */
    void (*progress)(void *ctx, uint64_t tokens_done, uint64_t tokens_total);
    void *progress_ctx;
} mtr_summ_opts;

#define MTR_SUMM_OPTS_INIT {0, false, 0xffu, 4096, 0x6d6f65747261ULL, 0, 1, NULL, NULL}

typedef struct {
    uint64_t n_sequences, n_tokens, n_used, n_nonfinite; /* tokens counted / excluded as NaN or Inf */
    uint64_t n_empty;                                    /* sequences with no token left after filtering */
} mtr_summ_stats;

/* Summarise the sequences of r (this rank's share) into a new summaries file at out_path (written as
 * out_path.partial, then renamed). */
int mtr_summarize(const char *out_path, mtr_run *r, const char *const *sources, size_t n_sources,
                  const mtr_summ_opts *opts, mtr_summ_stats *stats);
/* Concatenate summaries files (the ranks' parts, in order) into out_path; the parts must describe the same model
 * and settings. */
int mtr_summaries_concat(const char *out_path, const char *const *parts, size_t n_parts);

/* Plain serial reference of phase 1 (whole sequences read with mtr_run_read_logits, double precision, sorted
 * top-k): the same file layout, for tests. */
int mtr_summarize_reference(const char *out_path, mtr_run *r, const mtr_summ_opts *opts);

/* ---- summaries in memory (phase 2 input) ------------------------------------------------------------------ */

typedef struct {
    mtr_model_info model;
    float *selection_bias;
    size_t n_seqs;
    uint64_t *seq_id;      /* (n_seqs) */
    char **unit_id, **lang, **dataset; /* (n_seqs) */
    uint32_t *n_tokens, *n_used, *n_nonfinite; /* (n_seqs) */
    double *entropy;       /* (n_seqs, n_layers) entropy of q */
    double *token_entropy; /* (n_seqs, n_layers) */
    double *jaccard;       /* (n_seqs, n_layers) */
    bool topk_weights;
    char *settings;        /* JSON of the phase-1 settings and sources */
    char path[4096];
    size_t row0;           /* first row of the data in the file: 0, except in a rank's part (internal) */
} mtr_summaries;

/* Open a summaries file: sequence table and per-layer scalars are loaded; q and counts are read per layer. */
int mtr_summaries_open(mtr_summaries **out, const char *path);
void mtr_summaries_close(mtr_summaries *s);
/* q (n_seqs, n_experts) and counts (n_seqs, n_experts) of one layer; either may be NULL. */
int mtr_summaries_read_layer(const mtr_summaries *s, uint32_t layer, double *q, uint32_t *counts);

/* ---- phase 2: tables ------------------------------------------------------------------------------------- */

typedef struct {
    const char *english;       /* default "eng_Latn" */
    const char *base_dataset;  /* the generic dataset: divergences pair units in it; Delta base; default: "flores"
                                  if present, else the dataset with the most languages */
    const char *base_lang;     /* Delta base language, default = english */
    const char *rd_a, *rd_b;   /* risk difference between slices "dataset:lang" (both or neither) */
    uint32_t min_count;        /* specialisation: experts with fewer activations are not scored; default 100 */
    uint32_t top_n;            /* top experts per language and layer; default 10 */
    int n_threads;
} mtr_tables_opts;

#define MTR_TABLES_OPTS_INIT {"eng_Latn", NULL, NULL, NULL, NULL, 100, 10, 0}

/* Write every table as TSV into dir (created if missing) and as datasets of dir/tables.h5. */
int mtr_tables(const char *dir, const mtr_summaries *s, const mtr_tables_opts *opts);

#endif
