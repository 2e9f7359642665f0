/* reduce_internal.h — private parts of moetrace-reduce shared between its files. */
#ifndef MTR_REDUCE_INTERNAL_H
#define MTR_REDUCE_INTERNAL_H

#include "mtr_reduce.h"


/* ---- kernel selection (kernels.c) ---- */

/* true when the AVX2 + FMA kernels run: the CPU has both and they are not switched off */
bool mtr_reduce_simd(void);
/* switch the AVX2 + FMA kernels off (false) or back on, so tests can compare both paths; not thread-safe */
void mtr_reduce_set_simd(bool on);
/* mtr_widen_checked with the AVX2 path for bf16 */
bool mtr_reduce_widen_checked(float *dst, const void *src, mtr_dtype t, size_t n);

/* Rows stored as bf16 can go to the token kernel without widening when the AVX2 kernel takes them: full-softmax
 * weights, no selection bias, top-k <= 8, and mtr_reduce_simd(). */
bool mtr_token_bf16_direct(const mtr_model_info *m, bool topk_weights);
/* mtr_token_accumulate of a bf16 row z (n_experts), full-softmax weights; only when mtr_token_bf16_direct(). */
void mtr_token_accumulate_bf16(const mtr_model_info *m, const uint16_t *z, mtr_token_acc *acc, float *scratch);
/* true if any of n bf16 values is NaN or +-Inf */
bool mtr_reduce_nonfinite_bf16(const uint16_t *src, size_t n);

#if defined(__x86_64__) && defined(__GNUC__)
/* kernels_avx2.c, only when mtr_reduce_simd(). One token row z (n) at one layer: full-softmax weights into acc->q,
 * the top-k (k <= 8) of z into acc->a and acc->bits, the token entropy into acc->ent; e: (n) floats of scratch. */
void mtr_token_full_avx2(const float *z, uint32_t n, uint32_t k, mtr_token_acc *acc, float *e);
/* the same for a bf16 row */
void mtr_token_full_bf16_avx2(const uint16_t *z, uint32_t n, uint32_t k, mtr_token_acc *acc, float *e);
/* true if any of n bf16 values is NaN or +-Inf */
bool mtr_nonfinite_bf16_avx2(const uint16_t *src, size_t n);
/* one token pair's top-k sets at every layer (rows (n_layers, words), words 1 or 2, k <= 8): h[l] += 1 << (7 *
 * |A n B|), i.e. 7-bit counters of pairs by intersection size, good for 127 pairs */
void mtr_jaccard_count_avx2(uint64_t *h, const uint64_t *a, const uint64_t *b, uint32_t n_layers, uint32_t words);
/* bf16 src (n) -> f32 dst (n); true if any element is NaN or +-Inf */
bool mtr_widen_bf16_avx2(float *dst, const uint16_t *src, size_t n);
#endif

/* One finished sequence. */
typedef struct {
    uint64_t seq_id;
    const char *unit_id, *lang, *dataset;
    uint32_t n_tokens, n_used, n_nonfinite, jaccard_pairs;
    const double *q;     /* (n_layers, n_experts) */
    const uint32_t *a;   /* (n_layers, n_experts) */
    const double *ent;   /* (n_layers) entropy of q */
    const double *tent;  /* (n_layers) mean token entropy */
    const double *jac;   /* (n_layers) */
} summ_row;

typedef struct summ_writer summ_writer;
#define SUMM_CHUNK_ROWS 64 /* rows per chunk of every summaries dataset */
/* Create path.partial; summ_writer_close renames it to path. */
int summ_writer_create(summ_writer **out, const char *path, const mtr_model_info *m, bool topk_weights,
                       const char *settings_json);
/* The same for one rank's part: its first row sits at row0 (its row in the whole file modulo the chunk rows), so
 * mtr_summaries_concat can copy its compressed chunks as they are. */
int summ_writer_create_at(summ_writer **out, const char *path, const mtr_model_info *m, bool topk_weights,
                          const char *settings_json, size_t row0);
int summ_writer_append(summ_writer *w, const summ_row *row);
int summ_writer_close(summ_writer *w);
void summ_writer_destroy(summ_writer *w);

/* JSON of the phase-1 settings recorded in the summaries file; malloc'd. */
char *mtr_summ_settings_json(const mtr_summ_opts *o, const char *const *sources, size_t n_sources);

#endif
