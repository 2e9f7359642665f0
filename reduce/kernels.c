/* kernels.c — the per-token and per-distribution arithmetic of moetrace-reduce (docs/ARCHITECTURE.md §3).
 *
 * Compiled with -O3 -ffast-math so the exp loop vectorises through glibc's vector math (libmvec), with an AVX2
 * clone picked at run time. Inputs are checked finite before they get here (fast-math assumes it). Every function
 * has a plain double-precision counterpart in reference.c that the tests compare with.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "reduce_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* clones picked at load time by CPU feature (not by CPU model, which VMs often hide); the default runs anywhere */
#define MTR_CLONES __attribute__((target_clones("avx2", "default")))
#define MTR_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define MTR_CLONES
#define MTR_POPCNT_CLONES
#endif

/* exp of the shifted logits, their sum and the sum of e * (z - max): the entropy follows without a log per expert,
 * H = ln s - (sum e (z - max)) / s */
MTR_CLONES static void softmax_terms(float *e, const float *z, uint32_t n, float mx, float *s_out, float *sz_out)
{
    float s = 0.0f, sz = 0.0f;
#pragma omp simd reduction(+ : s, sz)
    for (uint32_t i = 0; i < n; i++) {
        float d = z[i] - mx;
        d = d > -87.0f ? d : -87.0f; /* z - max may overflow for extreme logits; exp(-87) is as good as 0 */
        float v = expf(d);
        e[i] = v;
        s += v;
        sz += v * d;
    }
    *s_out = s;
    *sz_out = sz;
}

MTR_CLONES static void add_scaled(double *q, const float *e, float inv, uint32_t n)
{
#pragma omp simd
    for (uint32_t i = 0; i < n; i++) q[i] += (double)(e[i] * inv);
}

MTR_CLONES static void add_scaled_f(float *q, const float *e, float inv, uint32_t n)
{
#pragma omp simd
    for (uint32_t i = 0; i < n; i++) q[i] += e[i] * inv;
}

MTR_CLONES void mtr_token_flush(double *q, float *qf, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        q[i] += (double)qf[i];
        qf[i] = 0;
    }
}

MTR_CLONES static float row_max(const float *z, uint32_t n)
{
    float mx = z[0];
#pragma omp simd reduction(max : mx)
    for (uint32_t i = 0; i < n; i++) mx = z[i] > mx ? z[i] : mx;
    return mx;
}

/* ---- top-k selection ----
 * The selection of a finite row, descending, ties to the lower index, in three steps: collect the candidates at or
 * above a threshold (branch-free, or 8 at a time with AVX2), check there are at least k, then insert them in index
 * order into the sorted top-k (an element displaces only strictly smaller ones). The threshold is first the
 * previous token's k-th value at this layer, lowered by a margin (routing is consistent within a sequence, so this
 * usually leaves k plus a few candidates); when that yields fewer than k, or too many, it is the k-th largest of
 * the maxima of groups of 4, which at least k elements always reach. */

static uint32_t compact_scalar(uint16_t *cand, const float *z, uint32_t e0, uint32_t n, float thr)
{
    uint32_t c = 0;
    for (uint32_t e = e0; e < n; e++) {
        cand[c] = (uint16_t)e; /* written always, kept when it qualifies: no branch to mispredict */
        c += z[e] >= thr;
    }
    return c;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static uint32_t compact_avx2(uint16_t *cand, const float *z, uint32_t n, float thr)
{
    const __m256 t = _mm256_set1_ps(thr);
    uint32_t c = 0, e = 0;
    for (; e + 8 <= n; e += 8) {
        unsigned m = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(z + e), t, _CMP_GE_OQ));
        while (m) {
            cand[c++] = (uint16_t)(e + (unsigned)__builtin_ctz(m));
            m &= m - 1;
        }
    }
    return c + compact_scalar(cand + c, z, e, n, thr);
}
#endif

static uint32_t compact(uint16_t *cand, const float *z, uint32_t n, float thr)
{
#if defined(__x86_64__) && defined(__GNUC__)
    static int has_avx2 = -1;
    if (has_avx2 < 0) has_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (has_avx2) return compact_avx2(cand, z, n, thr);
#endif
    return compact_scalar(cand, z, 0, n, thr);
}

/* k-th largest of the maxima of groups of 4: at least k elements are >= it (k <= n / 4), else -FLT_MAX */
static float group_threshold(const float *z, uint32_t n, uint32_t k)
{
    const uint32_t ng = n / 4;
    if (ng < k) return -FLT_MAX;
    float best[MTR_MAX_TOPK];
    uint32_t m = 0;
    for (uint32_t g = 0; g < ng; g++) {
        const float *x = z + 4 * g;
        float a = x[0] > x[1] ? x[0] : x[1], b = x[2] > x[3] ? x[2] : x[3], v = a > b ? a : b;
        if (m == k && !(v > best[k - 1])) continue;
        uint32_t pos = m < k ? m++ : k - 1;
        while (pos > 0 && v > best[pos - 1]) {
            best[pos] = best[pos - 1];
            pos--;
        }
        best[pos] = v;
    }
    return best[k - 1];
}

static void topk_finite(uint16_t *ids, const float *z, uint32_t n, uint32_t k, float *hint, uint16_t *cand)
{
    uint32_t c = *hint > -FLT_MAX ? compact(cand, z, n, *hint) : 0;
    if (c < k || c > 4 * k) c = compact(cand, z, n, group_threshold(z, n, k));
    float best[MTR_MAX_TOPK];
    uint32_t m = 0;
    for (uint32_t i = 0; i < c; i++) {
        uint16_t e = cand[i];
        float v = z[e];
        if (m == k && !(v > best[k - 1])) continue;
        uint32_t pos = m < k ? m++ : k - 1;
        while (pos > 0 && v > best[pos - 1]) {
            best[pos] = best[pos - 1];
            ids[pos] = ids[pos - 1];
            pos--;
        }
        best[pos] = v;
        ids[pos] = e;
    }
    *hint = best[k - 1] - 0.25f * (best[0] - best[k - 1]);
}

/* the AVX2 + FMA kernels (kernels_avx2.c) run when the CPU has both, unless switched off for a comparison */
static bool simd_off;

void mtr_reduce_set_simd(bool on)
{
    simd_off = !on;
}

bool mtr_reduce_simd(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    static int cpu = -1; /* found once: every thread finds the same */
    int c = __atomic_load_n(&cpu, __ATOMIC_RELAXED);
    if (c < 0) {
        c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        __atomic_store_n(&cpu, c, __ATOMIC_RELAXED);
    }
    return c && !simd_off;
#else
    return false;
#endif
}

bool mtr_reduce_widen_checked(float *dst, const void *src, mtr_dtype t, size_t n)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (t == MTR_DTYPE_BF16 && mtr_reduce_simd()) return mtr_widen_bf16_avx2(dst, src, n);
#endif
    return mtr_widen_checked(dst, src, t, n);
}

bool mtr_token_bf16_direct(const mtr_model_info *m, bool topk_weights)
{
    return !topk_weights && !m->selection_bias && m->top_k <= 8 && mtr_reduce_simd();
}

bool mtr_reduce_nonfinite_bf16(const uint16_t *src, size_t n)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (mtr_reduce_simd()) return mtr_nonfinite_bf16_avx2(src, n);
#endif
    return mtr_any_nonfinite(src, MTR_DTYPE_BF16, n);
}

void mtr_token_accumulate_bf16(const mtr_model_info *m, const uint16_t *z, mtr_token_acc *acc, float *scratch)
{
#if defined(__x86_64__) && defined(__GNUC__)
    mtr_token_full_bf16_avx2(z, m->n_experts, m->top_k, acc, scratch);
#else
    (void)m, (void)z, (void)acc, (void)scratch;
#endif
}

void mtr_token_accumulate(const mtr_model_info *m, uint32_t layer, const float *z, bool topk_weights,
                          mtr_token_acc *acc, float *scratch)
{
    const uint32_t n = m->n_experts, k = m->top_k;
#if defined(__x86_64__) && defined(__GNUC__)
    if (!topk_weights && !m->selection_bias && k <= 8 && mtr_reduce_simd()) {
        mtr_token_full_avx2(z, n, k, acc, scratch);
        return;
    }
#endif
    uint16_t ids[MTR_MAX_TOPK];
    float w[MTR_MAX_TOPK];
    float *e = scratch;
    float mx = row_max(z, n), s, sz;
    softmax_terms(e, z, n, mx, &s, &sz);
    *acc->ent += log((double)s) - (double)sz / (double)s;
    if (topk_weights || m->selection_bias) {
        /* the model's own rule (selection bias, score function, renormalisation) */
        mtr_route(m, layer, z, ids, w, scratch + n);
    } else {
        /* every score function is monotone in z, so the selection is the top-k of z itself */
        topk_finite(ids, z, n, k, acc->hint, (uint16_t *)(void *)(scratch + n));
    }
    if (topk_weights)
        for (uint32_t i = 0; i < k; i++) acc->q[ids[i]] += (double)w[i];
    else if (acc->qf)
        add_scaled_f(acc->qf, e, 1.0f / s, n);
    else
        add_scaled(acc->q, e, 1.0f / s, n);
    const uint32_t words = (n + 63) / 64;
    memset(acc->bits, 0, words * sizeof *acc->bits);
    for (uint32_t i = 0; i < k; i++) {
        acc->a[ids[i]]++;
        acc->bits[ids[i] >> 6] |= (uint64_t)1 << (ids[i] & 63);
    }
}

double mtr_entropy(const double *p, size_t n)
{
    double h = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] > 0) h -= p[i] * log(p[i]);
    return h;
}

double mtr_jsd(const double *p, const double *q, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++) {
        double mid = 0.5 * (p[i] + q[i]);
        if (p[i] > 0) d += 0.5 * p[i] * log(p[i] / mid);
        if (q[i] > 0) d += 0.5 * q[i] * log(q[i] / mid);
    }
    return d > 0 ? d : 0;
}

double mtr_jsd_normalised(const double *p, const double *q, size_t n, double hp, double hq)
{
    double den = log((double)n) - 0.5 * (hp + hq);
    return mtr_jsd(p, q, n) / (den > 1e-6 ? den : 1e-6);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Jaccard of two tokens' top-k sets at every layer, added to sum (n_layers); rows are (n_layers, words). Every
 * set has exactly k members, so |A u B| = 2k - |A n B|: one popcount per word, and the quotient comes from a
 * table (frac[i] = i / (2k - i), the same double as the division). */
MTR_POPCNT_CLONES static void pair_jaccard_layers(double *sum, const uint64_t *a, const uint64_t *b, uint32_t n_layers,
                                                  uint32_t words, const double *frac)
{
    if (words == 2) {
        for (uint32_t l = 0; l < n_layers; l++)
            sum[l] += frac[__builtin_popcountll(a[2 * l] & b[2 * l]) +
                           __builtin_popcountll(a[2 * l + 1] & b[2 * l + 1])];
        return;
    }
    for (uint32_t l = 0; l < n_layers; l++) {
        uint32_t inter = 0;
        for (uint32_t w = 0; w < words; w++)
            inter += (uint32_t)__builtin_popcountll(a[l * words + w] & b[l * words + w]);
        sum[l] += frac[inter];
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The AVX2 way for k <= 8 and up to 128 experts: pairs are counted by intersection size (7-bit counters packed in a
 * word per layer, emptied into totals every 127 pairs), and the mean is taken from the totals at the end. */
typedef struct {
    uint64_t *h, *tot; /* (n_layers), (n_layers, 9) */
    uint32_t n_layers, in_h;
} pair_counts;

static void counts_empty(pair_counts *c)
{
    for (uint32_t l = 0; l < c->n_layers; l++) {
        for (uint32_t i = 0; i < 9; i++) c->tot[l * 9 + i] += (c->h[l] >> (7 * i)) & 127;
        c->h[l] = 0;
    }
    c->in_h = 0;
}

static void counts_add(pair_counts *c, const uint64_t *a, const uint64_t *b, uint32_t words)
{
    mtr_jaccard_count_avx2(c->h, a, b, c->n_layers, words);
    if (++c->in_h == 127) counts_empty(c);
}
#endif

void mtr_jaccard_layers(double *out, const uint64_t *bits, uint32_t n_tokens, uint32_t n_layers, uint32_t words,
                        uint32_t k, uint32_t max_pairs, uint64_t seed, uint32_t *n_pairs)
{
    const size_t stride = (size_t)n_layers * words;
    *n_pairs = 0;
    for (uint32_t l = 0; l < n_layers; l++) out[l] = 0;
    if (n_tokens < 2) {
        for (uint32_t l = 0; l < n_layers; l++) out[l] = NAN;
        return;
    }
    double frac[MTR_MAX_TOPK + 1];
    for (uint32_t i = 0; i <= k; i++) frac[i] = (double)i / (double)(2 * k - i);
    uint64_t all = (uint64_t)n_tokens * (n_tokens - 1) / 2, np;
#if defined(__x86_64__) && defined(__GNUC__)
    uint64_t *cbuf = k <= 8 && words <= 2 && mtr_reduce_simd() ? calloc((size_t)n_layers * 10, sizeof *cbuf) : NULL;
    if (cbuf) {
        pair_counts c = {cbuf, cbuf + n_layers, n_layers, 0};
        if (all <= max_pairs) {
            for (uint32_t i = 0; i < n_tokens; i++)
                for (uint32_t j = i + 1; j < n_tokens; j++) counts_add(&c, bits + i * stride, bits + j * stride, words);
            np = all;
        } else {
            uint64_t st = seed;
            for (uint32_t p = 0; p < max_pairs; p++) {
                uint32_t i = (uint32_t)(splitmix(&st) % n_tokens);
                uint32_t j = (uint32_t)(splitmix(&st) % (n_tokens - 1));
                if (j >= i) j++;
                counts_add(&c, bits + i * stride, bits + j * stride, words);
            }
            np = max_pairs;
        }
        counts_empty(&c);
        for (uint32_t l = 0; l < n_layers; l++) {
            double sum = 0;
            for (uint32_t i = 0; i <= k; i++) sum += (double)c.tot[l * 9 + i] * frac[i];
            out[l] = sum / (double)np;
        }
        free(cbuf);
        *n_pairs = (uint32_t)np;
        return;
    }
#endif
    if (all <= max_pairs) {
        for (uint32_t i = 0; i < n_tokens; i++)
            for (uint32_t j = i + 1; j < n_tokens; j++)
                pair_jaccard_layers(out, bits + i * stride, bits + j * stride, n_layers, words, frac);
        np = all;
    } else {
        /* uniform pairs of distinct tokens, drawn with replacement */
        uint64_t st = seed;
        for (uint32_t p = 0; p < max_pairs; p++) {
            uint32_t i = (uint32_t)(splitmix(&st) % n_tokens);
            uint32_t j = (uint32_t)(splitmix(&st) % (n_tokens - 1));
            if (j >= i) j++;
            pair_jaccard_layers(out, bits + i * stride, bits + j * stride, n_layers, words, frac);
        }
        np = max_pairs;
    }
    for (uint32_t l = 0; l < n_layers; l++) out[l] /= (double)np;
    *n_pairs = (uint32_t)np;
}
