/* kernels_avx2.c — the AVX2 + FMA path of the per-token kernel (docs/ARCHITECTURE.md §3), picked at run time by kernels.c:
 * one token at one layer, f32 or bf16 logits, with full-softmax weights and a selection of at most 8 experts that
 * is the top-k of the logits themselves (no selection bias). Also the NaN/Inf scan and widening of bf16 rows and
 * the counting of Jaccard pairs by intersection size.
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

/* ln x for a sum of exps whose largest term is 1 (x >= 1, finite): x = 2^k m with m in [sqrt(1/2), sqrt(2)), and
 * ln m = 2 atanh(f / (2 + f)), f = m - 1, by its series (error below 1e-10) */
AVX2_INLINE double log_sum(float x)
{
    uint32_t ix;
    memcpy(&ix, &x, sizeof ix);
    ix += 0x3f800000u - 0x3f3504f3u;
    const int k = (int)(ix >> 23) - 0x7f;
    ix = (ix & 0x007fffffu) + 0x3f3504f3u;
    float m;
    memcpy(&m, &ix, sizeof m);
    const double f = (double)m - 1.0, t = f / (2.0 + f), t2 = t * t;
    const double p = 1.0 + t2 * (1.0 / 3 + t2 * (1.0 / 5 + t2 * (1.0 / 7 + t2 * (1.0 / 9 + t2 * (1.0 / 11)))));
    return (double)k * 0.69314718055994530942 + 2.0 * t * p;
}

/* A row is f32, or bf16 (widened here: its f32 value is its bits shifted up by 16). `bf16` is a constant in each
 * instantiation, so the choice costs nothing in the loops. */
AVX2_INLINE __m256 load8(const void *z, uint32_t i, bool bf16)
{
    if (bf16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)z + i))), 16));
    return _mm256_loadu_ps((const float *)z + i);
}

AVX2_INLINE float value(const void *z, uint32_t i, bool bf16)
{
    if (bf16) {
        uint32_t u = (uint32_t)((const uint16_t *)z)[i] << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    return ((const float *)z)[i];
}

/* elements [i, n) of z (fewer than 8) as one vector, the lanes past the end = pad */
AVX2_INLINE __m256 load_tail(const void *z, uint32_t i, uint32_t n, bool bf16, float pad)
{
    float t[8];
    for (int j = 0; j < 8; j++) t[j] = pad;
    for (uint32_t j = i; j < n; j++) t[j - i] = value(z, j, bf16);
    return _mm256_loadu_ps(t);
}

/* The k-th largest of z (n), k <= 8, broadcast; *mx_out = the largest, broadcast. Blocks of 64 (8 registers) are
 * sorted lane-wise and merged into the 8 largest of each lane so far; then the lanes' lists are merged pairwise.
 * A partial last block is padded with -FLT_MAX, which is at most every value and so never above the k-th. */
AVX2_INLINE void kth_largest(const void *z, uint32_t n, uint32_t k, bool bf16, __m256 *thr, __m256 *mx_out)
{
    __m256 r[8], x[8];
    uint32_t b = 0;
    for (; b + 64 <= n; b += 64) {
        for (uint32_t i = 0; i < 8; i++) x[i] = load8(z, b + 8 * i, bf16);
        sort8(x);
        if (b == 0)
            for (int i = 0; i < 8; i++) r[i] = x[i];
        else
            merge8(r, x);
    }
    if (b < n) {
        for (uint32_t i = 0; i < 8; i++) {
            const uint32_t at = b + 8 * i;
            x[i] = at + 8 <= n ? load8(z, at, bf16)
                   : at < n    ? load_tail(z, at, n, bf16, -FLT_MAX)
                               : _mm256_set1_ps(-FLT_MAX);
        }
        sort8(x);
        if (b == 0)
            for (int i = 0; i < 8; i++) r[i] = x[i];
        else
            merge8(r, x);
    }
    LANE_MERGE(r, SWAP4);
    LANE_MERGE(r, SWAP2);
    if (k == 8) {
        /* the last merge without its sort: the 8 largest of lanes j and j^1 are c_0..c_3 of both lanes, so the
         * 8th largest is their minimum */
        __m256 c = _mm256_max_ps(r[0], SWAP1(r[7]));
        for (int i = 1; i < 4; i++) c = _mm256_min_ps(c, _mm256_max_ps(r[i], SWAP1(r[7 - i])));
        *thr = _mm256_min_ps(c, SWAP1(c));
        *mx_out = _mm256_max_ps(r[0], SWAP1(r[0]));
        return;
    }
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
AVX2_INLINE void drop_ties(uint64_t *bits, uint32_t *a, uint32_t words, const void *z, bool bf16, uint32_t c,
                           uint32_t k, float t)
{
    for (uint32_t w = words; w-- > 0 && c > k;)
        for (uint64_t x = bits[w]; x && c > k;) {
            uint32_t top = 63 - (uint32_t)__builtin_clzll(x);
            x &= ~((uint64_t)1 << top);
            if (value(z, 64 * w + top, bf16) == t) {
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

AVX2_INLINE void token_full(const void *z, bool bf16, uint32_t n, uint32_t k, mtr_token_acc *acc, float *e)
{
    const uint32_t nfull = n / 8, rem = n % 8, words = (n + 63) / 64;
    uint32_t *a = acc->a;
    __m256 thr, mx;
    kth_largest(z, n, k, bf16, &thr, &mx);

    /* one pass: exp of the shifted logits with their sum and the sum of e * (z - max); the experts at or above
     * the threshold counted and set in the bitmask, a word per 64 */
    const __m256 lo = _mm256_set1_ps(-86.0f);
    __m256 s = _mm256_setzero_ps(), sz = _mm256_setzero_ps();
    uint64_t *bits = acc->bits, m;
    uint32_t v = 0;
    for (; v + 8 <= nfull; v += 8) {
        uint64_t word = 0;
#pragma GCC unroll 8
        for (uint32_t j = 0; j < 8; j++) {
            EXP_STEP(load8(z, 8 * (v + j), bf16), 8 * (v + j), m);
            word |= m << (8 * j);
        }
        bits[v / 8] = word;
    }
    if (v < nfull || rem) {
        uint64_t word = 0;
        for (uint32_t j = 0; v + j < nfull; j++) {
            EXP_STEP(load8(z, 8 * (v + j), bf16), 8 * (v + j), m);
            word |= m << (8 * j);
        }
        if (rem) {
            /* lanes past the end load 0 and are masked out of every result */
            const __m256i tm = tail_mask(rem);
            const __m256 zv = load_tail(z, 8 * nfull, n, bf16, 0.0f), d = _mm256_max_ps(_mm256_sub_ps(zv, mx), lo);
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

    /* q += e / sum, in f32 partial sums when the caller keeps them */
    const float sum = hsum(s), sumz = hsum(sz);
    if (acc->qf) {
        const __m256 invf = _mm256_set1_ps(1.0f / sum);
        float *qf = acc->qf;
#pragma GCC unroll 4
        for (v = 0; v < nfull; v++)
            _mm256_storeu_ps(qf + 8 * v,
                             _mm256_fmadd_ps(_mm256_loadu_ps(e + 8 * v), invf, _mm256_loadu_ps(qf + 8 * v)));
        for (uint32_t i = 8 * nfull; i < n; i++) qf[i] += e[i] * (1.0f / sum);
    } else {
        const double inv = 1.0 / (double)sum;
        const __m256d invd = _mm256_set1_pd(inv);
        double *q = acc->q;
#pragma GCC unroll 4
        for (v = 0; v < nfull; v++) {
            __m256 x = _mm256_loadu_ps(e + 8 * v);
            __m256d lo4 = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
            __m256d hi4 = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
            _mm256_storeu_pd(q + 8 * v, _mm256_fmadd_pd(lo4, invd, _mm256_loadu_pd(q + 8 * v)));
            _mm256_storeu_pd(q + 8 * v + 4, _mm256_fmadd_pd(hi4, invd, _mm256_loadu_pd(q + 8 * v + 4)));
        }
        for (uint32_t i = 8 * nfull; i < n; i++) q[i] += (double)e[i] * inv;
    }
    *acc->ent += log_sum(sum) - (double)sumz / (double)sum;

    /* exactly k selected: more only when logits tie at the threshold */
    uint32_t c = 0;
    for (uint32_t w = 0; w < words; w++) c += (uint32_t)__builtin_popcountll(bits[w]);
    if (c > k) drop_ties(bits, a, words, z, bf16, c, k, _mm256_cvtss_f32(thr));
}

/* the common expert counts get their own copies, with every loop unrolled */
AVX2_FN void mtr_token_full_avx2(const float *z, uint32_t n, uint32_t k, mtr_token_acc *acc, float *e)
{
    if (n == 128)
        token_full(z, false, 128, k, acc, e);
    else if (n == 64)
        token_full(z, false, 64, k, acc, e);
    else
        token_full(z, false, n, k, acc, e);
}

AVX2_FN void mtr_token_full_bf16_avx2(const uint16_t *z, uint32_t n, uint32_t k, mtr_token_acc *acc, float *e)
{
    if (n == 128)
        token_full(z, true, 128, k, acc, e);
    else if (n == 64)
        token_full(z, true, 64, k, acc, e);
    else
        token_full(z, true, n, k, acc, e);
}

AVX2_FN bool mtr_nonfinite_bf16_avx2(const uint16_t *src, size_t n)
{
    /* NaN or Inf: exponent all ones, i.e. (u & 0x7fff) >= 0x7f80 */
    const __m256i mag = _mm256_set1_epi16(0x7fff);
    __m256i mx0 = _mm256_setzero_si256(), mx1 = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i u0 = _mm256_loadu_si256((const __m256i *)(const void *)(src + i));
        __m256i u1 = _mm256_loadu_si256((const __m256i *)(const void *)(src + i + 16));
        mx0 = _mm256_max_epu16(mx0, _mm256_and_si256(u0, mag));
        mx1 = _mm256_max_epu16(mx1, _mm256_and_si256(u1, mag));
    }
    __m256i big = _mm256_cmpeq_epi16(_mm256_max_epu16(_mm256_max_epu16(mx0, mx1), _mm256_set1_epi16(0x7f80)),
                                     _mm256_max_epu16(mx0, mx1));
    /* big lanes: max >= 0x7f80 (max(m, 0x7f80) == m) */
    uint32_t bad = (uint32_t)_mm256_movemask_epi8(big);
    for (; i < n; i++) bad |= (src[i] & 0x7fffu) >= 0x7f80u;
    return bad != 0;
}

/* bytes of x -> their popcounts */
AVX2_INLINE __m256i popcnt_bytes(__m256i x)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, /* per 128-bit lane */
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i nib = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x, nib)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), nib)));
}

AVX2_FN void mtr_jaccard_count_avx2(uint64_t *h, const uint64_t *a, const uint64_t *b, uint32_t n_layers,
                                    uint32_t words)
{
    const __m256i one = _mm256_set1_epi64x(1), zero = _mm256_setzero_si256();
    uint32_t l = 0;
    if (words == 1) {
        for (; l + 4 <= n_layers; l += 4) {
            const __m256i x = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(a + l)),
                                               _mm256_loadu_si256((const __m256i *)(const void *)(b + l)));
            const __m256i inter = _mm256_sad_epu8(popcnt_bytes(x), zero);
            const __m256i sh = _mm256_sub_epi64(_mm256_slli_epi64(inter, 3), inter); /* 7 * inter */
            __m256i *hv = (__m256i *)(void *)(h + l);
            _mm256_storeu_si256(hv, _mm256_add_epi64(_mm256_loadu_si256(hv), _mm256_sllv_epi64(one, sh)));
        }
    } else {
        for (; l + 4 <= n_layers; l += 4) {
            const __m256i *pa = (const __m256i *)(const void *)(a + 2 * l);
            const __m256i *pb = (const __m256i *)(const void *)(b + 2 * l);
            const __m256i x0 = _mm256_and_si256(_mm256_loadu_si256(pa), _mm256_loadu_si256(pb));
            const __m256i x1 = _mm256_and_si256(_mm256_loadu_si256(pa + 1), _mm256_loadu_si256(pb + 1));
            const __m256i c0 = _mm256_sad_epu8(popcnt_bytes(x0), zero), c1 = _mm256_sad_epu8(popcnt_bytes(x1), zero);
            /* c0 = words of layers l, l+1; c1 of l+2, l+3: add the two words of each layer, back in layer order */
            const __m256i inter = _mm256_permute4x64_epi64(
                _mm256_add_epi64(_mm256_unpacklo_epi64(c0, c1), _mm256_unpackhi_epi64(c0, c1)), 0xd8);
            const __m256i sh = _mm256_sub_epi64(_mm256_slli_epi64(inter, 3), inter);
            __m256i *hv = (__m256i *)(void *)(h + l);
            _mm256_storeu_si256(hv, _mm256_add_epi64(_mm256_loadu_si256(hv), _mm256_sllv_epi64(one, sh)));
        }
    }
    for (; l < n_layers; l++) {
        uint32_t inter = 0;
        for (uint32_t w = 0; w < words; w++)
            inter += (uint32_t)__builtin_popcountll(a[l * words + w] & b[l * words + w]);
        h[l] += (uint64_t)1 << (7 * inter);
    }
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
