/* model_phimoe.c — what Phi-3.5-MoE (model_type phimoe, transformers modeling_phimoe.py) adds to the engine: its
 * config.json keys, LayerNorm with bias, LongRoPE (short and long factors and mscales chosen by the length of the
 * forward against original_max_position_embeddings) and sparsemixer routing in its inference form, in the model's
 * dtype as the eager PyTorch code computes it. model.c and model_forward.c call these at their few hook points. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* ---- dtype emulation (the rounding of model_forward.c) --------------------------------------------------- */

static inline float round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u;
    else u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static inline float round_dt(float f, mtr_dtype dt)
{
    return dt == MTR_DTYPE_BF16 ? round_bf16(f) : dt == MTR_DTYPE_F16 ? (float)(_Float16)f : f;
}

/* ---- config.json ----------------------------------------------------------------------------------------- */

/* A number under key in obj: def when absent or null; *rc set (first error only) when not a number in [lo, hi]. */
static double num(json_t *obj, const char *key, double def, double lo, double hi, const char *path, int *rc)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return def;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x >= lo && x <= hi)) {
        if (!*rc) *rc = mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be a number in [%g, %g]", path, key, lo, hi);
        return def;
    }
    return x;
}

/* An integer under key: def when absent or null; *rc set when not an integer in [lo, hi]. */
static uint32_t uint_key(json_t *obj, const char *key, uint32_t def, uint32_t lo, uint32_t hi, const char *path,
                         int *rc)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        if (!*rc) *rc = mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be an integer in [%u, %u]", path, key, lo, hi);
        return def;
    }
    return (uint32_t)json_integer_value(v);
}

static bool boolean(json_t *obj, const char *key, bool def, const char *path, int *rc)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_boolean(v)) {
        if (!*rc) *rc = mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be true or false", path, key);
        return def;
    }
    return json_is_true(v);
}

int mtr_phimoe_config(mtr_model_config *c, json_t *root, const char *path)
{
    int rc = 0;
    /* PhimoeConfig's defaults where config.json is silent */
    c->n_experts = uint_key(root, "num_local_experts", 16, 1, MTR_MAX_EXPERTS, path, &rc);
    c->moe_intermediate_size = uint_key(root, "intermediate_size", 6400, 1, 1u << 24, path, &rc);
    if (!json_object_get(root, "rms_norm_eps")) c->rms_eps = 1e-5;
    if (!json_object_get(root, "rope_theta")) c->rope_theta = 1e6;
    c->norm_topk_prob = false;
    c->qkv_bias = c->o_bias = boolean(root, "attention_bias", false, path, &rc);
    c->lm_head_bias = boolean(root, "lm_head_bias", false, path, &rc);
    c->norm_bias = true;
    c->router_jitter = num(root, "router_jitter_noise", 0.01, 0, 0.999999, path, &rc);
    c->sliding_window = uint_key(root, "sliding_window", 0, 1, 1u << 30, path, &rc); /* null: full attention */
    /* sparsemixer routes in exactly two rounds (modeling_phimoe refuses any other top_k) */
    if (!rc && c->top_k != 2)
        rc = mtr_fail(MTR_EFORMAT, "%s: phimoe routes with sparsemixer, which needs num_experts_per_tok 2 (not %u)",
                      path, c->top_k);
    return rc;
}

static int factor_list(float **out, json_t *rs, const char *key, uint32_t half, const char *path)
{
    json_t *a = json_object_get(rs, key);
    if (!json_is_array(a) || json_array_size(a) != half)
        return mtr_fail(MTR_EFORMAT, "%s: rope_scaling \"%s\" must list head_dim / 2 = %u numbers", path, key, half);
    float *f = malloc(half * sizeof *f);
    if (!f) return mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
    for (uint32_t i = 0; i < half; i++) {
        json_t *v = json_array_get(a, i);
        double x = json_is_number(v) ? json_number_value(v) : NAN;
        if (!(x > 0 && isfinite(x))) {
            free(f);
            return mtr_fail(MTR_EFORMAT, "%s: rope_scaling %s[%u] is not a positive number", path, key, i);
        }
        f[i] = (float)x; /* torch.tensor(list, dtype=float32) */
    }
    *out = f;
    return 0;
}

int mtr_longrope_config(mtr_model_config *c, json_t *rs, json_t *root, const char *path)
{
    int rc = 0;
    const uint32_t half = c->head_dim / 2;
    c->rope_type = MTR_ROPE_LONGROPE;
    if ((rc = factor_list(&c->rope_short_factor, rs, "short_factor", half, path)) ||
        (rc = factor_list(&c->rope_long_factor, rs, "long_factor", half, path)))
        return rc;
    double top = num(root, "original_max_position_embeddings", c->max_position_embeddings, 1, 1u << 30, path, &rc);
    c->rope_orig_max_pos = num(rs, "original_max_position_embeddings", top, 1, 1u << 30, path, &rc);
    c->rope_factor = num(rs, "factor", c->max_position_embeddings / c->rope_orig_max_pos, 1e-9, 1e9, path, &rc);
    /* without mscales the attention factor: given, or sqrt(1 + ln(factor) / ln(original)) */
    double f = c->rope_factor, orig = c->rope_orig_max_pos;
    double af = f <= 1 ? 1.0 : sqrt(1 + log(f) / log(orig));
    af = num(rs, "attention_factor", af, 1e-9, 1e9, path, &rc);
    c->rope_attention_factor = af;
    c->rope_short_mscale = num(rs, "short_mscale", af, 1e-9, 1e9, path, &rc);
    c->rope_long_mscale = num(rs, "long_mscale", af, 1e-9, 1e9, path, &rc);
    return rc;
}

int mtr_longrope_frequencies(mtr_model *m)
{
    const mtr_model_config *c = &m->cfg;
    const uint32_t half = c->head_dim / 2;
    if (!(m->inv_freq_long = malloc(half * sizeof *m->inv_freq_long))) return mtr_fail(MTR_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < half; i++) {
        /* 1 / (ext_factors * base ** (float32 arange(0, dim, 2) / dim)) */
        double p = pow(c->rope_theta, (double)((float)(2 * i) / (float)c->head_dim));
        m->inv_freq[i] = (float)(1.0 / ((double)c->rope_short_factor[i] * p));
        m->inv_freq_long[i] = (float)(1.0 / ((double)c->rope_long_factor[i] * p));
    }
    return 0;
}

void mtr_longrope_tables(const mtr_model *m, float *cs, float *sn, const uint32_t *pos, const uint32_t *key0,
                         uint32_t n, int force)
{
    const mtr_model_config *c = &m->cfg;
    const uint32_t half = c->head_dim / 2;
    uint32_t end = 0;
    /* a token's forward length is that of its own sequence in this call (packed batches hold several: each
     * from position 0, contiguous, sharing key0) */
    for (uint32_t t = n; t-- > 0;) {
        if (t == n - 1 || key0[t] != key0[t + 1]) end = pos[t] + 1;
        const bool lng = force >= 0 ? force > 0 : (double)end > c->rope_orig_max_pos;
        const float *inv = lng ? m->inv_freq_long : m->inv_freq;
        const float ms = (float)(lng ? c->rope_long_mscale : c->rope_short_mscale);
        const float p = (float)pos[t];
        for (uint32_t i = 0; i < half; i++) {
            float a = p * inv[i];
            cs[(size_t)t * half + i] = round_dt(cosf(a) * ms, c->dtype);
            sn[(size_t)t * half + i] = round_dt(sinf(a) * ms, c->dtype);
        }
    }
}

/* ---- LayerNorm ------------------------------------------------------------------------------------------- */

void mtr_layernorm(float *out, const float *in, const float *w, const float *b, uint32_t d, double eps,
                   mtr_dtype dt)
{
    /* nn.LayerNorm: biased variance, statistics and affine map in f32, one rounding to the model dtype */
    double s = 0;
    for (uint32_t j = 0; j < d; j++) s += in[j];
    const float mean = (float)(s / d);
    double v = 0;
    for (uint32_t j = 0; j < d; j++) v += (double)(in[j] - mean) * (in[j] - mean);
    const float r = 1.f / sqrtf((float)(v / d) + (float)eps);
    if (dt == MTR_DTYPE_F32) {
#pragma omp simd
        for (uint32_t j = 0; j < d; j++) out[j] = (in[j] - mean) * r * w[j] + b[j];
    } else
        for (uint32_t j = 0; j < d; j++) out[j] = round_dt((in[j] - mean) * r * w[j] + b[j], dt);
}

/* ---- sparsemixer ----------------------------------------------------------------------------------------- */

static bool targets(const mtr_steer *st, uint32_t layer)
{
    for (uint32_t i = 0; st && i < st->n_target; i++)
        if (st->target_layers[i] == layer) return true;
    return false;
}

void mtr_phimoe_route(const mtr_model *m, uint32_t layer, const float *z, const mtr_steer *steer, uint16_t *ids,
                      float *w, float *scratch)
{
    const mtr_model_config *c = &m->cfg;
    const uint32_t n = c->n_experts, k = c->top_k;
    const mtr_dtype dt = c->dtype;
    /* f32 models, and steered logits (f32 values): PyTorch's f32 arithmetic, as libmoetrace computes it */
    if (dt == MTR_DTYPE_F32 || targets(steer, layer)) {
        mtr_route(&m->info, layer, z, ids, w, scratch);
        for (uint32_t r = 0; r < k; r++) w[r] = round_dt(w[r], dt);
        return;
    }
    /* bf16/f16 logits: each element-wise step of modeling_phimoe.sparsemixer rounded to the dtype (the Python
     * float 2 eps becomes a dtype scalar too); the softmax accumulates in f32 and rounds its output */
    mtr_topk(ids, z, n, k);
    const float lim = round_dt((float)(2.0 * c->router_jitter), dt);
    for (uint32_t r = 0; r < k; r++) {
        const float t = z[ids[r]];
        float sum = 0;
        for (uint32_t e = 0; e < n; e++) {
            bool chosen = false;
            for (uint32_t q = 0; q < r; q++) chosen |= ids[q] == e;
            float gap = round_dt(round_dt(t - z[e], dt) / fmaxf(fabsf(z[e]), t), dt);
            if (chosen || gap > lim) continue;
            sum += expf(z[e] - t);
        }
        w[r] = round_dt(1.f / sum, dt);
    }
}

void mtr_phimoe_info(mtr_model *m)
{
    m->info.score_fn = MTR_SCORE_SPARSEMIXER;
    m->info.sparsemixer_eps = m->cfg.router_jitter;
    m->info.renormalize = false;
}
