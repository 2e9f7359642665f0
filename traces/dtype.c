/* dtype.c — element types of stored logits (FORMAT.md "Element types"): bf16/f16 <-> f32 with
 * round-to-nearest-even, the HDF5-compatible byte shuffle, enum names, and the top-k selection rule. */
#include <math.h>
#include <string.h>

#include "internal.h"

#define MTR_X_NAME(name, str) [name] = str,
static const char *const dtype_names[] = {MTR_DTYPE_LIST(MTR_X_NAME)};
static const char *const score_names[] = {MTR_SCORE_FN_LIST(MTR_X_NAME)};
static const char *const role_names[] = {MTR_ROLE_LIST(MTR_X_NAME)};
static const char *const stored_names[] = {MTR_STORED_LIST(MTR_X_NAME)};
#undef MTR_X_NAME

static int parse_name(int *out, const char *s, const char *const *names, int n)
{
    for (int i = 0; s && i < n; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return MTR_EINVAL;
}

const char *mtr_dtype_name(mtr_dtype t) { return (unsigned)t < MTR_DTYPE_COUNT ? dtype_names[t] : NULL; }
const char *mtr_score_fn_name(mtr_score_fn f) { return (unsigned)f < MTR_SCORE_FN_COUNT ? score_names[f] : NULL; }
const char *mtr_role_name(mtr_role r) { return (unsigned)r < MTR_ROLE_COUNT ? role_names[r] : NULL; }
const char *mtr_stored_name(mtr_stored s) { return (unsigned)s < MTR_STORED_COUNT ? stored_names[s] : NULL; }

int mtr_dtype_parse(mtr_dtype *out, const char *s)
{
    int v = 0, rc = parse_name(&v, s, dtype_names, MTR_DTYPE_COUNT);
    if (rc == 0) *out = (mtr_dtype)v;
    return rc;
}

int mtr_score_fn_parse(mtr_score_fn *out, const char *s)
{
    int v = 0, rc = parse_name(&v, s, score_names, MTR_SCORE_FN_COUNT);
    if (rc == 0) *out = (mtr_score_fn)v;
    return rc;
}

int mtr_role_parse(mtr_role *out, const char *s)
{
    int v = 0, rc = parse_name(&v, s, role_names, MTR_ROLE_COUNT);
    if (rc == 0) *out = (mtr_role)v;
    return rc;
}

size_t mtr_dtype_size(mtr_dtype t) { return t == MTR_DTYPE_F32 ? 4 : 2; }

static inline uint32_t f2u(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static inline float u2f(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static inline uint16_t bf16_bits(uint32_t u);

/* NaN becomes a quiet NaN with its sign kept; everything else rounds to nearest, ties to even */
uint16_t mtr_f32_to_bf16(float x) { return bf16_bits(f2u(x)); }

float mtr_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t mtr_f32_to_f16(float x)
{
    uint32_t u = f2u(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: Inf */
    if (a < 0x38800000u) {                                   /* below the smallest normal f16: subnormal */
        if (a < 0x33000000u) return sign;                    /* < 2^-25 rounds to zero */
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23); /* 14 .. 24 */
        uint32_t half = 1u << (shift - 1 + 0);
        uint32_t r = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    /* normal: rebias exponent, round the 13 dropped mantissa bits to nearest even */
    uint32_t r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

float mtr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        if (m == 0) return u2f(sign);
        float v = ldexpf((float)m, -24); /* subnormal: m * 2^-24 */
        return u2f(sign | f2u(v));
    }
    if (e == 31) return u2f(sign | 0x7f800000u | (m << 13));
    return u2f(sign | ((e + 112u) << 23) | (m << 13));
}

/* Loads through memcpy: src may sit at any byte offset of a mapped file (a safetensors tensor need not be
 * aligned); the compiler turns these into plain (vector) loads. */
static inline uint16_t ld16(const unsigned char *p, size_t i)
{
    uint16_t v;
    memcpy(&v, p + 2 * i, 2);
    return v;
}

static inline uint32_t ld32(const unsigned char *p, size_t i)
{
    uint32_t v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

void mtr_convert(void *dst, mtr_dtype dst_t, const void *src, mtr_dtype src_t, size_t n)
{
    const unsigned char *s = src;
    if (dst_t == src_t) {
        memcpy(dst, src, n * mtr_dtype_size(dst_t));
        return;
    }
    if (src_t == MTR_DTYPE_F32) {
        uint16_t *d = dst;
        if (dst_t == MTR_DTYPE_BF16)
            for (size_t i = 0; i < n; i++) d[i] = bf16_bits(ld32(s, i));
        else
            for (size_t i = 0; i < n; i++) d[i] = mtr_f32_to_f16(u2f(ld32(s, i)));
        return;
    }
    if (dst_t == MTR_DTYPE_F32) {
        float *d = dst;
        uint32_t *o = dst;
        if (src_t == MTR_DTYPE_BF16)
            for (size_t i = 0; i < n; i++) o[i] = (uint32_t)ld16(s, i) << 16;
        else
            for (size_t i = 0; i < n; i++) d[i] = mtr_f16_to_f32(ld16(s, i));
        return;
    }
    /* bf16 <-> f16 goes through f32 (exact widening, one rounding) */
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) {
        float x = src_t == MTR_DTYPE_BF16 ? mtr_bf16_to_f32(ld16(s, i)) : mtr_f16_to_f32(ld16(s, i));
        d[i] = dst_t == MTR_DTYPE_BF16 ? mtr_f32_to_bf16(x) : mtr_f32_to_f16(x);
    }
}

/* Byte shuffle as HDF5's H5Z_FILTER_SHUFFLE lays it out: byte j of element i goes to j*n + i. Elements of 2 and
 * 4 bytes have their own loops so the compiler vectorises them; trailing bytes that do not form a whole element
 * are copied unchanged, as HDF5 does. */
void mtr_shuffle(void *dst, const void *src, size_t n, size_t elem_size)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    if (elem_size == 2) {
        uint8_t *d0 = d, *d1 = d + n;
        for (size_t i = 0; i < n; i++) {
            d0[i] = s[2 * i];
            d1[i] = s[2 * i + 1];
        }
    } else if (elem_size == 4) {
        uint8_t *d0 = d, *d1 = d + n, *d2 = d + 2 * n, *d3 = d + 3 * n;
        for (size_t i = 0; i < n; i++) {
            d0[i] = s[4 * i];
            d1[i] = s[4 * i + 1];
            d2[i] = s[4 * i + 2];
            d3[i] = s[4 * i + 3];
        }
    } else {
        for (size_t j = 0; j < elem_size; j++)
            for (size_t i = 0; i < n; i++) d[j * n + i] = s[i * elem_size + j];
    }
}

void mtr_unshuffle(void *dst, const void *src, size_t n, size_t elem_size)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    if (elem_size == 2) {
        const uint8_t *s0 = s, *s1 = s + n;
        for (size_t i = 0; i < n; i++) {
            d[2 * i] = s0[i];
            d[2 * i + 1] = s1[i];
        }
    } else if (elem_size == 4) {
        const uint8_t *s0 = s, *s1 = s + n, *s2 = s + 2 * n, *s3 = s + 3 * n;
        for (size_t i = 0; i < n; i++) {
            d[4 * i] = s0[i];
            d[4 * i + 1] = s1[i];
            d[4 * i + 2] = s2[i];
            d[4 * i + 3] = s3[i];
        }
    } else {
        for (size_t j = 0; j < elem_size; j++)
            for (size_t i = 0; i < n; i++) d[i * elem_size + j] = s[j * n + i];
    }
}

/* bf16 rounding written without branches so the loops below vectorise (see mtr_f32_to_bf16 for the rule) */
static inline uint16_t bf16_bits(uint32_t u)
{
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

void mtr_pack_shuffled(void *dst, const float *src, size_t n, mtr_dtype t)
{
    uint8_t *d = dst;
    const uint32_t *u = (const uint32_t *)(const void *)src;
    if (t == MTR_DTYPE_F32) {
        mtr_shuffle(dst, src, n, 4);
    } else if (t == MTR_DTYPE_BF16) {
        uint8_t *lo = d, *hi = d + n;
        for (size_t i = 0; i < n; i++) {
            uint16_t h = bf16_bits(u[i]);
            lo[i] = (uint8_t)h;
            hi[i] = (uint8_t)(h >> 8);
        }
    } else {
        uint8_t *lo = d, *hi = d + n;
        for (size_t i = 0; i < n; i++) {
            uint16_t h = mtr_f32_to_f16(src[i]);
            lo[i] = (uint8_t)h;
            hi[i] = (uint8_t)(h >> 8);
        }
    }
}

void mtr_unpack_shuffled(float *dst, const void *src, size_t n, size_t plane_stride, mtr_dtype t)
{
    const uint8_t *s = src;
    uint32_t *o = (uint32_t *)(void *)dst;
    if (t == MTR_DTYPE_BF16) {
        const uint8_t *lo = s, *hi = s + plane_stride;
        for (size_t i = 0; i < n; i++) o[i] = ((uint32_t)hi[i] << 24) | ((uint32_t)lo[i] << 16);
    } else if (t == MTR_DTYPE_F32) {
        const uint8_t *b0 = s, *b1 = s + plane_stride, *b2 = s + 2 * plane_stride, *b3 = s + 3 * plane_stride;
        for (size_t i = 0; i < n; i++)
            o[i] = (uint32_t)b0[i] | ((uint32_t)b1[i] << 8) | ((uint32_t)b2[i] << 16) | ((uint32_t)b3[i] << 24);
    } else {
        const uint8_t *lo = s, *hi = s + plane_stride;
        for (size_t i = 0; i < n; i++) dst[i] = mtr_f16_to_f32((uint16_t)(lo[i] | (hi[i] << 8)));
    }
}

bool mtr_any_nonfinite(const void *src, mtr_dtype t, size_t n)
{
    uint32_t bad = 0;
    if (t == MTR_DTYPE_F32) {
        const uint32_t *u = src;
        for (size_t i = 0; i < n; i++) bad |= (u[i] & 0x7f800000u) == 0x7f800000u;
    } else {
        const uint16_t *u = src;
        const uint16_t m = t == MTR_DTYPE_BF16 ? 0x7f80u : 0x7c00u;
        for (size_t i = 0; i < n; i++) bad |= (u[i] & m) == m;
    }
    return bad != 0;
}

bool mtr_widen_checked(float *dst, const void *src, mtr_dtype t, size_t n)
{
    uint32_t bad = 0;
    uint32_t *o = (uint32_t *)(void *)dst;
    if (t == MTR_DTYPE_BF16) {
        const uint16_t *u = src;
        for (size_t i = 0; i < n; i++) {
            bad |= (u[i] & 0x7f80u) == 0x7f80u;
            o[i] = (uint32_t)u[i] << 16;
        }
    } else if (t == MTR_DTYPE_F32) {
        const uint32_t *u = src;
        for (size_t i = 0; i < n; i++) {
            bad |= (u[i] & 0x7f800000u) == 0x7f800000u;
            o[i] = u[i];
        }
    } else {
        bad = mtr_any_nonfinite(src, t, n);
        mtr_convert(dst, MTR_DTYPE_F32, src, t, n);
    }
    return bad != 0;
}

/* Partial selection of the k largest scores: a running sorted list of k, ties to the lower index because an
 * element only displaces strictly smaller ones. O(n k) with k <= 64, no sort of the whole row. NaN scores are
 * never selected over finite ones. */
void mtr_topk(uint16_t *ids, const float *score, uint32_t n, uint32_t k)
{
    float best[MTR_MAX_TOPK];
    uint32_t m = 0;
    if (k > n) k = n;
    for (uint32_t e = 0; e < n; e++) {
        float v = score[e];
        if (isnan(v)) v = -INFINITY;
        if (m == k && !(v > best[k - 1])) continue;
        uint32_t pos = m < k ? m++ : k - 1;
        while (pos > 0 && v > best[pos - 1]) {
            best[pos] = best[pos - 1];
            ids[pos] = ids[pos - 1];
            pos--;
        }
        best[pos] = v;
        ids[pos] = (uint16_t)e;
    }
}

double mtr_softmax(float *p, const float *z, uint32_t n)
{
    float mx = -INFINITY;
    for (uint32_t e = 0; e < n; e++) mx = z[e] > mx ? z[e] : mx;
    double sum = 0;
    for (uint32_t e = 0; e < n; e++) {
        p[e] = expf(z[e] - mx);
        sum += p[e];
    }
    float inv = (float)(1.0 / sum);
    for (uint32_t e = 0; e < n; e++) p[e] *= inv;
    return (double)mx + log(sum);
}

void mtr_sparsemixer(float *w, const float *z, uint32_t n, const uint16_t *ids, uint32_t k, double eps)
{
    /* PyTorch compares the f32 ratio with the Python float 2 eps cast to f32 */
    const float lim = (float)(2.0 * eps);
    for (uint32_t r = 0; r < k; r++) {
        const float t = z[ids[r]]; /* the largest logit not chosen yet: the max of the masked row */
        double sum = 0;
        for (uint32_t e = 0; e < n; e++) {
            bool chosen = false;
            for (uint32_t q = 0; q < r; q++) chosen |= ids[q] == e;
            /* masked when the relative gap exceeds 2 eps (a NaN ratio, 0 / 0, keeps the expert) */
            if (chosen || (t - z[e]) / fmaxf(fabsf(z[e]), t) > lim) continue;
            sum += expf(z[e] - t);
        }
        w[r] = (float)(1.0 / sum);
    }
}

void mtr_route(const mtr_model_info *m, uint32_t layer, const float *z, uint16_t *ids, float *weights,
               float *scratch)
{
    const uint32_t n = m->n_experts, k = m->top_k;
    if (m->score_fn == MTR_SCORE_SPARSEMIXER) {
        /* round r picks the largest logit left: the selection is the top-k of z (no selection bias here) */
        mtr_topk(ids, z, n, k);
        if (weights) mtr_sparsemixer(weights, z, n, ids, k, m->sparsemixer_eps);
        return;
    }
    const float *bias = m->selection_bias ? m->selection_bias + (size_t)layer * n : NULL;
    float w[MTR_MAX_TOPK];
    /* scratch holds the score function's output over all experts (softmax or sigmoid), or z for top-k-softmax */
    if (m->score_fn == MTR_SCORE_SOFTMAX)
        mtr_softmax(scratch, z, n);
    else if (m->score_fn == MTR_SCORE_SIGMOID)
        for (uint32_t e = 0; e < n; e++) scratch[e] = 1.0f / (1.0f + expf(-z[e]));
    else
        memcpy(scratch, z, n * sizeof *scratch);
    if (bias) {
        /* selection-only bias: rank on score + bias, but weigh with the unbiased score */
        for (uint32_t e = 0; e < n; e++) scratch[e] += bias[e];
        mtr_topk(ids, scratch, n, k);
        for (uint32_t i = 0; i < k; i++) w[i] = scratch[ids[i]] - bias[ids[i]];
    } else {
        mtr_topk(ids, scratch, n, k);
        for (uint32_t i = 0; i < k; i++) w[i] = scratch[ids[i]];
    }
    if (!weights) return;
    if (m->score_fn == MTR_SCORE_TOPK_SOFTMAX) {
        float zz[MTR_MAX_TOPK];
        for (uint32_t i = 0; i < k; i++) zz[i] = z[ids[i]];
        mtr_softmax(weights, zz, k);
        return;
    }
    double sum = 0;
    for (uint32_t i = 0; i < k; i++) sum += w[i];
    for (uint32_t i = 0; i < k; i++) weights[i] = m->renormalize && sum > 0 ? (float)(w[i] / sum) : w[i];
}
