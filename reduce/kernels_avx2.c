/* kernels_avx2.c — the AVX2 + FMA path of the per-token kernel (DESIGN.md §3), picked at run time by kernels.c:
 * one token at one layer with full-softmax weights and a selection of at most 8 experts that is the top-k of the
 * logits themselves (no selection bias). Also the bf16 widen-and-check of a token row.
 *
 * Nothing here branches on the data in the common case: the k-th largest logit comes out of min/max networks
 * (every lane keeps its sorted 8 largest, then lanes are merged by bitonic steps), the selection is the bitmask of
 * logits at or above it (ties at the threshold go to the lower index), and exp is a polynomial fused with the sums
 * the softmax and the token entropy need. Compiled without -ffast-math: the comparisons and the clamp below must
 * mean exactly what they say.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "reduce_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define AVX2_FN __attribute__((target("avx2,fma")))
#define AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

/* compare-exchange: a keeps the larger, b the smaller, lane by lane */
#define CE(a, b)                                                                                                     \
    do {                                                                                                             \
        __m256 hi_ = _mm256_max_ps(a, b);                                                                            \
        b = _mm256_min_ps(a, b);                                                                                     \
        a = hi_;                                                                                                     \
    } while (0)

/* sort 8 registers lane-wise, descending (the 19-comparator network) */
AVX2_INLINE void sort8(__m256 *r)
{
    CE(r[0], r[2]); CE(r[1], r[3]); CE(r[4], r[6]); CE(r[5], r[7]);
    CE(r[0], r[4]); CE(r[1], r[5]); CE(r[2], r[6]); CE(r[3], r[7]);
    CE(r[0], r[1]); CE(r[2], r[3]); CE(r[4], r[5]); CE(r[6], r[7]);
    CE(r[2], r[4]); CE(r[3], r[5]);
    CE(r[1], r[4]); CE(r[3], r[6]);
    CE(r[1], r[2]); CE(r[3], r[4]); CE(r[5], r[6]);
}

/* sort a lane-wise bitonic sequence of 8 registers, descending */
AVX2_INLINE void bitonic8(__m256 *r)
{
    CE(r[0], r[4]); CE(r[1], r[5]); CE(r[2], r[6]); CE(r[3], r[7]);
    CE(r[0], r[2]); CE(r[1], r[3]); CE(r[4], r[6]); CE(r[5], r[7]);
    CE(r[0], r[1]); CE(r[2], r[3]); CE(r[4], r[5]); CE(r[6], r[7]);
}

/* r, x sorted descending lane-wise: r = the 8 largest of both, sorted (max(r_i, x_7-i) is bitonic) */
AVX2_INLINE void merge8(__m256 *r, const __m256 *x)
{
    for (int i = 0; i < 8; i++) r[i] = _mm256_max_ps(r[i], x[7 - i]);
    bitonic8(r);
}

/* merge the sorted lists of lanes paired by a permutation (an involution) of the lanes */
#define LANE_MERGE(r, PERM)                                                                                          \
    do {                                                                                                             \
        for (int i_ = 0; i_ < 4; i_++) {                                                                             \
            __m256 a_ = r[i_], b_ = r[7 - i_];                                                                       \
            r[i_] = _mm256_max_ps(a_, PERM(b_));                                                                     \
            r[7 - i_] = _mm256_max_ps(b_, PERM(a_));                                                                 \
        }                                                                                                            \
        bitonic8(r);                                                                                                 \
    } while (0)
#define SWAP4(x) _mm256_permute2f128_ps(x, x, 1)
#define SWAP2(x) _mm256_permute_ps(x, 0x4e)
#define SWAP1(x) _mm256_permute_ps(x, 0xb1)

/* lanes < rem of a partial vector */
AVX2_INLINE __m256i tail_mask(uint32_t rem)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2_INLINE float hsum(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* exp(d) for d in [-86, 0] (callers clamp): Cephes' expf polynomial, ~1 ulp; 2^n stays a normal number */
AVX2_INLINE __m256 exp_clamped(__m256 d)
{
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(d, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), d);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* The k-th largest of z (n), k <= 8, broadcast; *mx_out = the largest, broadcast. Blocks of 64 (8 registers) are
 * sorted lane-wise and merged into the 8 largest of each lane so far; then the lanes' lists are merged pairwise.
 * A partial last block is padded with -FLT_MAX, which is at most every value and so never above the k-th. */
AVX2_INLINE void kth_largest(const float *z, uint32_t n, uint32_t k, __m256 *thr, __m256 *mx_out)
{
    __m256 r[8], x[8];
    uint32_t b = 0;
    for (; b + 64 <= n; b += 64) {
        for (int i = 0; i < 8; i++) x[i] = _mm256_loadu_ps(z + b + 8 * i);
        sort8(x);
        if (b == 0)
            for (int i = 0; i < 8; i++) r[i] = x[i];
        else
            merge8(r, x);
    }
    if (b < n) {
        float buf[64];
        for (int i = 0; i < 64; i++) buf[i] = -FLT_MAX;
        memcpy(buf, z + b, (n - b) * sizeof *z);
        for (int i = 0; i < 8; i++) x[i] = _mm256_loadu_ps(buf + 8 * i);
        sort8(x);
        if (b == 0)
            for (int i = 0; i < 8; i++) r[i] = x[i];
        else
            merge8(r, x);
    }
    LANE_MERGE(r, SWAP4);
    LANE_MERGE(r, SWAP2);
    LANE_MERGE(r, SWAP1);
    /* every lane now holds the 8 largest of the row, sorted */
    *mx_out = r[0];
    switch (k) {
    case 1: *thr = r[0]; break;
    case 2: *thr = r[1]; break;
    case 3: *thr = r[2]; break;
    case 4: *thr = r[3]; break;
    case 5: *thr = r[4]; break;
    case 6: *thr = r[5]; break;
    case 7: *thr = r[6]; break;
    default: *thr = r[7]; break;
    }
}

/* exactly k of the c > k selected experts: deselect (and uncount) the highest-index ones whose logit equals the
 * threshold, as ties go to the lower index */
static void drop_ties(uint64_t *bits, uint32_t *a, uint32_t words, const float *z, uint32_t c, uint32_t k, float t)
{
    for (uint32_t w = words; w-- > 0 && c > k;)
        for (uint64_t x = bits[w]; x && c > k;) {
            uint32_t top = 63 - (uint32_t)__builtin_clzll(x);
            x &= ~((uint64_t)1 << top);
            if (z[64 * w + top] == t) {
                bits[w] &= ~((uint64_t)1 << top);
                a[64 * w + top]--;
                c--;
            }
        }
}

/* 8 logits zv at expert i: exp(z - mx) (clamped below at -86) into e, the sums, and the experts at or above the
 * threshold counted and returned as a bitmask */
#define EXP_STEP(zv, i, mask_out)                                                                                    \
    do {                                                                                                             \
        const __m256 d_ = _mm256_max_ps(_mm256_sub_ps(zv, mx), lo), e_ = exp_clamped(d_);                          \
        const __m256 ge_ = _mm256_cmp_ps(zv, thr, _CMP_GE_OQ);                                                      \
        _mm256_storeu_ps(e + (i), e_);                                                                               \
        s = _mm256_add_ps(s, e_);                                                                                    \
        sz = _mm256_fmadd_ps(e_, d_, sz);                                                                            \
        __m256i *a_ = (__m256i *)(void *)(a + (i));                                                                 \
        _mm256_storeu_si256(a_, _mm256_sub_epi32(_mm256_loadu_si256(a_), _mm256_castps_si256(ge_)));               \
        mask_out = (uint64_t)(uint32_t)_mm256_movemask_ps(ge_);                                                      \
    } while (0)

AVX2_FN void mtr_token_full_avx2(const float *z, uint32_t n, uint32_t k, mtr_token_acc *acc, float *e)
{
    const uint32_t nfull = n / 8, rem = n % 8, words = (n + 63) / 64;
    uint32_t *a = acc->a;
    __m256 thr, mx;
    kth_largest(z, n, k, &thr, &mx);

    /* one pass: exp of the shifted logits with their sum and the sum of e * (z - max); the experts at or above
     * the threshold counted and set in the bitmask, a word per 64 */
    const __m256 lo = _mm256_set1_ps(-86.0f);
    __m256 s = _mm256_setzero_ps(), sz = _mm256_setzero_ps();
    uint64_t *bits = acc->bits, m;
    uint32_t v = 0;
    for (; v + 8 <= nfull; v += 8) {
        uint64_t word = 0;
        for (uint32_t j = 0; j < 8; j++) {
            EXP_STEP(_mm256_loadu_ps(z + 8 * (v + j)), 8 * (v + j), m);
            word |= m << (8 * j);
        }
        bits[v / 8] = word;
    }
    if (v < nfull || rem) {
        uint64_t word = 0;
        for (uint32_t j = 0; v + j < nfull; j++) {
            EXP_STEP(_mm256_loadu_ps(z + 8 * (v + j)), 8 * (v + j), m);
            word |= m << (8 * j);
        }
        if (rem) {
            /* lanes past the end load 0 and are masked out of every result */
            const __m256i tm = tail_mask(rem);
            const __m256 zv = _mm256_maskload_ps(z + 8 * nfull, tm), d = _mm256_max_ps(_mm256_sub_ps(zv, mx), lo);
            const __m256 ev = _mm256_and_ps(exp_clamped(d), _mm256_castsi256_ps(tm));
            const __m256i ge = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(zv, thr, _CMP_GE_OQ)), tm);
            s = _mm256_add_ps(s, ev);
            sz = _mm256_fmadd_ps(ev, d, sz);
            _mm256_maskstore_ps(e + 8 * nfull, tm, ev);
            int *at = (int *)(void *)(a + 8 * nfull);
            _mm256_maskstore_epi32(at, tm, _mm256_sub_epi32(_mm256_maskload_epi32(at, tm), ge));
            m = (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(ge));
            word |= m << (8 * (nfull - v));
        }
        bits[words - 1] = word;
    }

    /* q += e / sum */
    const float sum = hsum(s), sumz = hsum(sz);
    const double inv = 1.0 / (double)sum;
    const __m256d invd = _mm256_set1_pd(inv);
    double *q = acc->q;
#pragma GCC unroll 4
    for (v = 0; v < nfull; v++) {
        __m256 x = _mm256_loadu_ps(e + 8 * v);
        __m256d lo4 = _mm256_cvtps_pd(_mm256_castps256_ps128(x)), hi4 = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
        _mm256_storeu_pd(q + 8 * v, _mm256_fmadd_pd(lo4, invd, _mm256_loadu_pd(q + 8 * v)));
        _mm256_storeu_pd(q + 8 * v + 4, _mm256_fmadd_pd(hi4, invd, _mm256_loadu_pd(q + 8 * v + 4)));
    }
    for (uint32_t i = 8 * nfull; i < n; i++) q[i] += (double)e[i] * inv;
    *acc->ent += log((double)sum) - (double)sumz / (double)sum;

    /* exactly k selected: more only when logits tie at the threshold */
    uint32_t c = 0;
    for (uint32_t w = 0; w < words; w++) c += (uint32_t)__builtin_popcountll(bits[w]);
    if (c > k) drop_ties(bits, a, words, z, c, k, _mm256_cvtss_f32(thr));
}

AVX2_FN bool mtr_widen_bf16_avx2(float *dst, const uint16_t *src, size_t n)
{
    const __m256i expo = _mm256_set1_epi16(0x7f80);
    __m256i bad = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(const void *)(src + i));
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi16(_mm256_and_si256(u, expo), expo));
        __m256i a = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(u));
        __m256i b = _mm256_cvtepu16_epi32(_mm256_extracti128_si256(u, 1));
        _mm256_storeu_si256((__m256i *)(void *)(dst + i), _mm256_slli_epi32(a, 16));
        _mm256_storeu_si256((__m256i *)(void *)(dst + i + 8), _mm256_slli_epi32(b, 16));
    }
    uint32_t tail_bad = 0, *o = (uint32_t *)(void *)dst;
    for (; i < n; i++) {
        tail_bad |= (src[i] & 0x7f80u) == 0x7f80u;
        o[i] = (uint32_t)src[i] << 16;
    }
    return !_mm256_testz_si256(bad, bad) || tail_bad;
}

#endif
