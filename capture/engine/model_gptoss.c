/* model_gptoss.c — what the gpt_oss architecture (GPT-OSS, transformers' modeling_gpt_oss.py) adds to the engine:
 * its config keys, the MXFP4 expert weights as the published checkpoint stores them (integrations/mxfp4.py
 * layout) widened a block of rows at a time, the clamped SwiGLU of its experts and the attention softmax with
 * per-head sink logits. The forward itself is model_forward.c's, which calls these. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* ---- config ---------------------------------------------------------------------------------------------- */

int mtr_gptoss_config(mtr_model_config *c, const void *json_root, const char *path)
{
    const json_t *root = json_root;
    const char *keys[2] = {"swiglu_alpha", "swiglu_limit"};
    double vals[2] = {1.702, 7.0}; /* the constants of GptOssExperts */
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(root, keys[i]);
        if (!v || json_is_null(v)) continue;
        if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
            return mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be a positive number", path, keys[i]);
        vals[i] = json_number_value(v);
    }
    c->swiglu_alpha = (float)vals[0];
    c->swiglu_limit = (float)vals[1];
    if (c->hidden_size % 32 || c->moe_intermediate_size % 32)
        return mtr_fail(MTR_EFORMAT, "%s: hidden_size %u and intermediate_size %u must be multiples of 32 (MXFP4 "
                        "blocks)", path, c->hidden_size, c->moe_intermediate_size);
    c->is_sliding = calloc(c->n_layers, sizeof *c->is_sliding);
    if (!c->is_sliding) return mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
    /* GptOssConfig: layer_types, else sliding on even (0-based) layers, full attention on odd ones */
    const json_t *lt = json_object_get(root, "layer_types");
    if (!lt || json_is_null(lt)) {
        for (uint32_t l = 0; l < c->n_layers; l++) c->is_sliding[l] = l % 2 == 0;
    } else {
        if (!json_is_array(lt) || json_array_size(lt) != c->n_layers)
            return mtr_fail(MTR_EFORMAT, "%s: \"layer_types\" must be a list of %u layer types", path, c->n_layers);
        for (uint32_t l = 0; l < c->n_layers; l++) {
            const char *t = json_string_value(json_array_get(lt, l));
            if (t && !strcmp(t, "sliding_attention")) c->is_sliding[l] = true;
            else if (!t || strcmp(t, "full_attention"))
                return mtr_fail(MTR_EFORMAT, "%s: layer_types[%u] is not \"sliding_attention\" or \"full_attention\"",
                                path, l);
        }
    }
    bool any = false;
    for (uint32_t l = 0; l < c->n_layers; l++) any |= c->is_sliding[l];
    if (any && c->sliding_window == 0)
        return mtr_fail(MTR_EFORMAT, "%s: layer_types has sliding_attention layers but no \"sliding_window\"", path);
    return 0;
}

int mtr_gptoss_prepare(mtr_model *m, const char *dir)
{
    if (!m->cfg.dtype_implicit) return 0;
    /* the published config.json has no torch_dtype: the model runs in the dtype its dense tensors are stored in */
    const mtr_st_tensor *t = mtr_st_find(m->st, "model.embed_tokens.weight");
    if (!t) return mtr_fail(MTR_EMISMATCH, "%s: the weights lack tensor 'model.embed_tokens.weight'", dir);
    switch (t->dtype) {
    case MTR_ST_F32: m->cfg.dtype = MTR_DTYPE_F32; break;
    case MTR_ST_BF16: m->cfg.dtype = MTR_DTYPE_BF16; break;
    case MTR_ST_F16: m->cfg.dtype = MTR_DTYPE_F16; break;
    default:
        return mtr_fail(MTR_EMISMATCH, "%s: tensor 'model.embed_tokens.weight' is %s (F32, BF16 or F16 expected)",
                        mtr_st_file_path(m->st, t->file), mtr_st_dtype_name(t->dtype));
    }
    return 0;
}

/* ---- weights --------------------------------------------------------------------------------------------- */

/* a U8 tensor of exactly this shape (ndim 3 or 4) */
static const uint8_t *bind_u8(mtr_binder *b, const char *name, const uint64_t *shape, uint32_t ndim)
{
    if (b->rc) return NULL;
    const mtr_st_tensor *t = mtr_st_find(b->m->st, name);
    if (!t) {
        b->rc = mtr_fail(MTR_EMISMATCH, "%s: the weights lack tensor '%s' that config.json implies (MXFP4 experts)",
                         b->dir, name);
        return NULL;
    }
    bool ok = t->ndim == ndim && t->dtype == MTR_ST_U8;
    for (uint32_t i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[128] = "", want[128] = "";
        size_t o = 0, w = 0;
        for (uint32_t i = 0; i < t->ndim && o < sizeof got - 24; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
        for (uint32_t i = 0; i < ndim; i++)
            w += (size_t)snprintf(want + w, sizeof want - w, "%s%llu", i ? ", " : "", (unsigned long long)shape[i]);
        b->rc = mtr_fail(MTR_EMISMATCH, "%s: tensor '%s' is %s [%s], config.json implies U8 [%s]",
                         mtr_st_file_path(b->m->st, t->file), name, mtr_st_dtype_name(t->dtype), got, want);
        return NULL;
    }
    b->used++;
    return t->data;
}

/* an (E, R, C) MXFP4 expert tensor pair: one mtr_mat (R, C) per expert into mats */
static void bind_mxfp4(mtr_binder *b, const char *prefix, uint32_t E, uint32_t R, uint32_t C, mtr_mat *mats)
{
    char n[256];
    uint64_t bs[4] = {E, R, C / 32, 16};
    snprintf(n, sizeof n, "%s_blocks", prefix);
    const uint8_t *blocks = bind_u8(b, n, bs, 4);
    snprintf(n, sizeof n, "%s_scales", prefix);
    const uint8_t *scales = bind_u8(b, n, bs, 3);
    if (!blocks || !scales) return;
    b->m->n_params += (uint64_t)E * R * C;
    const size_t per_b = (size_t)R * (C / 32) * 16, per_s = (size_t)R * (C / 32);
    for (uint32_t e = 0; e < E; e++)
        mats[e] = (mtr_mat){blocks + e * per_b, b->m->cfg.dtype, R, C, scales + e * per_s};
}

/* a (rows, cols) bias table in the model dtype widened to f32 */
static float *bind_table(mtr_binder *b, const char *name, uint32_t rows, uint32_t cols)
{
    mtr_mat t = mtr_bind_mat(b, name, rows, cols);
    if (b->rc) return NULL;
    float *v = malloc((size_t)rows * cols * sizeof *v);
    if (!v) {
        b->rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", b->dir);
        return NULL;
    }
    mtr_convert(v, MTR_DTYPE_F32, t.data, t.dtype, (size_t)rows * cols);
    return v;
}

void mtr_gptoss_bind_layer(mtr_binder *b, uint32_t l)
{
    mtr_model *m = b->m;
    const mtr_model_config *c = &m->cfg;
    mtr_layer *L = &m->layers[l];
    const uint32_t E = c->n_experts, H = c->hidden_size, NI = c->moe_intermediate_size;
    char n[256], p[200];
    snprintf(n, sizeof n, "model.layers.%u.self_attn.sinks", l);
    L->sinks = mtr_bind_vec(b, n, c->n_heads);
    snprintf(n, sizeof n, "model.layers.%u.mlp.router.weight", l);
    L->router = mtr_bind_mat(b, n, E, H);
    snprintf(n, sizeof n, "model.layers.%u.mlp.router.bias", l);
    L->router_bias = mtr_bind_vec(b, n, E);
    L->e_gate = calloc(E, sizeof *L->e_gate);
    L->e_down = calloc(E, sizeof *L->e_down);
    if (!L->e_gate || !L->e_down) {
        if (!b->rc) b->rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", b->dir);
        return;
    }
    /* gate_up_proj: (E, 2 NI rows, H) with gate and up rows interleaved; down_proj: (E, H rows, NI) */
    snprintf(p, sizeof p, "model.layers.%u.mlp.experts.gate_up_proj", l);
    bind_mxfp4(b, p, E, 2 * NI, H, L->e_gate);
    snprintf(n, sizeof n, "%s_bias", p);
    L->e_gu_bias = bind_table(b, n, E, 2 * NI);
    snprintf(p, sizeof p, "model.layers.%u.mlp.experts.down_proj", l);
    bind_mxfp4(b, p, E, H, NI, L->e_down);
    snprintf(n, sizeof n, "%s_bias", p);
    L->e_down_bias = bind_table(b, n, E, H);
}

/* ---- MXFP4 ----------------------------------------------------------------------------------------------- */

/* the e2m1 code points (FP4_VALUES of transformers' mxfp4.py) */
static const float fp4[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};

void mtr_mxfp4_rows(float *dst, const mtr_mat *W, uint32_t r0, uint32_t n)
{
    const uint32_t nb = W->cols / 32;
    const uint8_t *blk = (const uint8_t *)W->data + (size_t)r0 * nb * 16, *sc = W->scales + (size_t)r0 * nb;
    for (size_t g = 0; g < (size_t)n * nb; g++) {
        /* 2^(scale - 127), exact in f32 down to 2^-127 (and the products of the code points with it) */
        const float f = ldexpf(1.f, (int)sc[g] - 127);
        const uint8_t *q = blk + g * 16;
        float *o = dst + g * 32;
        for (int k = 0; k < 16; k++) {
            o[2 * k] = fp4[q[k] & 15] * f;
            o[2 * k + 1] = fp4[q[k] >> 4] * f;
        }
    }
}

/* ---- experts and attention ------------------------------------------------------------------------------- */

static inline float rnd(float f, mtr_dtype dt)
{
    if (dt == MTR_DTYPE_BF16) {
        uint32_t u;
        memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u;
        else u += 0x7fffu + ((u >> 16) & 1u);
        u &= 0xffff0000u;
        memcpy(&f, &u, 4);
        return f;
    }
    return dt == MTR_DTYPE_F16 ? (float)(_Float16)f : f;
}

void mtr_gptoss_glu(float *gu, size_t ld, uint32_t n, uint32_t NI, const float *bias, float alpha, float limit,
                    mtr_dtype dt)
{
    for (uint32_t r = 0; r < n; r++) {
        float *row = gu + r * ld;
        if (dt == MTR_DTYPE_F32) {
            for (uint32_t j = 0; j < NI; j++) { /* writes j, reads 2j and 2j + 1: in place, front to back */
                float g = row[2 * j] + bias[2 * j], u = row[2 * j + 1] + bias[2 * j + 1];
                g = fminf(g, limit);
                u = fminf(fmaxf(u, -limit), limit);
                row[j] = (u + 1.f) * (g / (1.f + expf(-g * alpha)));
            }
            continue;
        }
        /* the eager code in the model dtype: bmm, + bias, clamps, gate * alpha, sigmoid, gate * sigmoid, up + 1,
         * product: each result rounded */
        for (uint32_t j = 0; j < NI; j++) {
            float g = rnd(rnd(row[2 * j], dt) + bias[2 * j], dt), u = rnd(rnd(row[2 * j + 1], dt) + bias[2 * j + 1], dt);
            g = fminf(g, limit);
            u = fminf(fmaxf(u, -limit), limit);
            float sg = rnd(1.f / (1.f + expf(-rnd(g * alpha, dt))), dt);
            row[j] = rnd(rnd(u + 1.f, dt) * rnd(g * sg, dt), dt);
        }
    }
}

void mtr_gptoss_softmax_sink(float *row, uint32_t n, float scale, float sink, mtr_dtype dt)
{
    if (dt == MTR_DTYPE_F32) {
        float mx = sink;
        for (uint32_t j = 0; j < n; j++) mx = fmaxf(mx, row[j] * scale);
        float sum = expf(sink - mx);
        for (uint32_t j = 0; j < n; j++) {
            row[j] = expf(row[j] * scale - mx);
            sum += row[j];
        }
        const float inv = 1.f / sum;
        for (uint32_t j = 0; j < n; j++) row[j] *= inv;
        return;
    }
    /* scores q.k and times the scaling each in the dtype, the sink appended, the maximum subtracted in the dtype,
     * softmax in f32, probabilities back in the dtype */
    float mx = sink;
    for (uint32_t j = 0; j < n; j++) {
        row[j] = rnd(rnd(row[j], dt) * scale, dt);
        mx = fmaxf(mx, row[j]);
    }
    const float s = rnd(sink - mx, dt);
    float sum = expf(s);
    for (uint32_t j = 0; j < n; j++) {
        row[j] = expf(rnd(row[j] - mx, dt));
        sum += row[j];
    }
    const float inv = 1.f / sum;
    for (uint32_t j = 0; j < n; j++) row[j] = rnd(row[j] * inv, dt);
}
