/* model_deepseek.c — what DeepSeek-V2 (model_type deepseek_v2) adds to the engine: its config.json keys,
 * multi-head latent attention (q through an optional low-rank path, keys and values from a normalised latent,
 * interleaved rotary embedding on a separate part of each query and the shared key) with an expanded K/V cache,
 * shared experts, and DeepSeek's router: softmax or sigmoid scores of f32 gate logits, greedy, group-limited or
 * bias-corrected group top-k (noaux_tc), weights renormalised if asked and scaled by routed_scaling_factor.
 * Written from transformers modeling_deepseek_v2.py and DeepSeek's own modeling code (see the notes below). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

#define MLA_Q_BLOCK 32u /* query rows per attention task: the blocks model_forward.c plans (Q_BLOCK) */
#define MLA_NORM_EPS 1e-6 /* q_a_layernorm and kv_a_layernorm keep DeepseekV2RMSNorm's default eps */
#define MTR_DEEPSEEK_MAX_EXPERTS 4096 /* routed experts (DeepSeek-V3 has 256) */

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

static void round_buf(float *x, size_t n, mtr_dtype dt)
{
    if (dt != MTR_DTYPE_F32)
        for (size_t i = 0; i < n; i++) x[i] = round_dt(x[i], dt);
}

/* HF RMSNorm: statistics in f32, the normalised value cast to the dtype, then times the weight */
static void rmsnorm(float *out, const float *in, const float *w, uint32_t d, mtr_dtype dt)
{
    if (dt == MTR_DTYPE_F32) {
        mtr_mk_rmsnorm(out, in, w, d, (float)MLA_NORM_EPS);
        return;
    }
    float ss = 0;
    for (uint32_t j = 0; j < d; j++) ss += in[j] * in[j];
    const float r = 1.f / sqrtf(ss / (float)d + (float)MLA_NORM_EPS);
    for (uint32_t j = 0; j < d; j++) out[j] = round_dt(round_dt(in[j] * r, dt) * w[j], dt);
}

/* ---- config.json ----------------------------------------------------------------------------------------- */

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

static double num_key(json_t *obj, const char *key, double def, double lo, double hi, const char *path, int *rc)
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

static bool bool_key(json_t *obj, const char *key, bool def, const char *path, int *rc)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_boolean(v)) {
        if (!*rc) *rc = mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be true or false", path, key);
        return def;
    }
    return json_is_true(v);
}

int mtr_deepseek_config(mtr_model_config *c, json_t *root, const char *path)
{
    int rc = 0;
    const uint32_t big = 1u << 24;
    /* DeepseekV2Config's defaults where config.json is silent */
    c->n_experts = uint_key(root, "n_routed_experts", 64, 1, MTR_DEEPSEEK_MAX_EXPERTS, path, &rc);
    c->moe_intermediate_size = uint_key(root, "moe_intermediate_size", 1407, 1, big, path, &rc);
    c->intermediate_size = uint_key(root, "intermediate_size", 11008, 1, big, path, &rc);
    c->n_shared_experts = uint_key(root, "n_shared_experts", 2, 0, 64, path, &rc);
    c->shared_expert_intermediate_size = c->n_shared_experts * c->moe_intermediate_size;
    c->first_k_dense_replace = uint_key(root, "first_k_dense_replace", 0, 0, MTR_MAX_LAYERS, path, &rc);
    c->moe_layer_freq = uint_key(root, "moe_layer_freq", 1, 1, MTR_MAX_LAYERS, path, &rc);
    json_t *ql = json_object_get(root, "q_lora_rank");
    c->q_lora_rank = ql && json_is_null(ql) ? 0 : uint_key(root, "q_lora_rank", 1536, 1, big, path, &rc);
    c->kv_lora_rank = uint_key(root, "kv_lora_rank", 512, 1, big, path, &rc);
    c->qk_nope_head_dim = uint_key(root, "qk_nope_head_dim", 128, 0, 4096, path, &rc);
    c->head_dim = uint_key(root, "qk_rope_head_dim", 64, 2, 4096, path, &rc); /* the rotary part */
    c->v_head_dim = uint_key(root, "v_head_dim", 128, 1, 4096, path, &rc);
    c->n_kv_heads = c->n_heads; /* every head has its own key and value, from the shared latent */
    c->qkv_bias = false;
    c->o_bias = bool_key(root, "attention_bias", false, path, &rc); /* q_a_proj, kv_a_proj_with_mqa, o_proj */
    c->norm_topk_prob = bool_key(root, "norm_topk_prob", false, path, &rc);
    c->routed_scaling_factor = num_key(root, "routed_scaling_factor", 1.0, 0, 1e6, path, &rc);
    c->n_group = uint_key(root, "n_group", 1, 1, MTR_MAX_EXPERTS, path, &rc);
    c->topk_group = uint_key(root, "topk_group", 1, 1, MTR_MAX_EXPERTS, path, &rc);
    if (rc) return rc;
    if (bool_key(root, "mlp_bias", false, path, &rc) && !rc)
        return mtr_fail(MTR_EFORMAT, "%s: \"mlp_bias\" true is not supported for deepseek_v2", path);
    const char *tm = json_string_value(json_object_get(root, "topk_method"));
    if (!tm || !strcmp(tm, "greedy")) c->topk_method = 0;
    else if (!strcmp(tm, "group_limited_greedy")) c->topk_method = 1;
    else if (!strcmp(tm, "noaux_tc")) c->topk_method = 2;
    else
        return mtr_fail(MTR_EFORMAT, "%s: topk_method \"%s\" is not greedy, group_limited_greedy or noaux_tc", path, tm);
    const char *sf = json_string_value(json_object_get(root, "scoring_func"));
    if (sf && strcmp(sf, "softmax") && strcmp(sf, "sigmoid"))
        return mtr_fail(MTR_EFORMAT, "%s: scoring_func \"%s\" is not softmax or sigmoid", path, sf);
    c->score_sigmoid = sf && !strcmp(sf, "sigmoid");
    if (c->topk_method == 0) c->n_group = c->topk_group = 1;
    const uint32_t gsz = c->n_experts / c->n_group;
    if (c->n_experts % c->n_group || c->topk_group > c->n_group || c->top_k > c->topk_group * gsz ||
        (c->topk_method == 2 && gsz < 2))
        return mtr_fail(MTR_EFORMAT, "%s: %u experts in n_group %u, topk_group %u cannot route %u experts%s", path,
                        c->n_experts, c->n_group, c->topk_group, c->top_k,
                        c->topk_method == 2 ? " (noaux_tc scores groups by their two best)" : "");
    /* the softmax scale of DeepSeek's code (and transformers' deepseek_v3): (nope + rope)^-0.5, times YaRN's
     * mscale(factor, mscale_all_dim)^2 when rope_scaling has mscale_all_dim */
    c->attn_scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->head_dim));
    json_t *rs = json_object_get(root, "rope_scaling");
    if (json_is_object(rs)) {
        double f = num_key(rs, "factor", 1, 0, 1e9, path, &rc), mad = num_key(rs, "mscale_all_dim", 0, -1e9, 1e9, path, &rc);
        if (mad != 0 && f > 1) {
            double ms = 0.1 * mad * log(f) + 1.0;
            c->attn_scale *= ms * ms;
        }
    }
    return rc;
}

/* ---- weights --------------------------------------------------------------------------------------------- */

void mtr_deepseek_bind_attention(mtr_binder *b, mtr_model *m, uint32_t l)
{
    const mtr_model_config *c = &m->cfg;
    mtr_layer *L = &m->layers[l];
    const uint32_t H = c->hidden_size, nh = c->n_heads, qkd = c->qk_nope_head_dim + c->head_dim;
    char n[256];
#define NAME(x) (snprintf(n, sizeof n, "model.layers.%u.self_attn.%s", l, x), n)
    mtr_mla *a = L->mla = calloc(1, sizeof *L->mla);
    if (!a) {
        mtr_bind_nomem(b);
        return;
    }
    if (c->q_lora_rank) {
        a->q_a = mtr_bind_mat(b, NAME("q_a_proj.weight"), c->q_lora_rank, H);
        if (c->o_bias) a->q_a_bias = mtr_bind_vec(b, NAME("q_a_proj.bias"), c->q_lora_rank);
        a->q_a_norm = mtr_bind_vec(b, NAME("q_a_layernorm.weight"), c->q_lora_rank);
        a->q_b = mtr_bind_mat(b, NAME("q_b_proj.weight"), nh * qkd, c->q_lora_rank);
    } else
        a->q = mtr_bind_mat(b, NAME("q_proj.weight"), nh * qkd, H);
    a->kv_a = mtr_bind_mat(b, NAME("kv_a_proj_with_mqa.weight"), c->kv_lora_rank + c->head_dim, H);
    if (c->o_bias) a->kv_a_bias = mtr_bind_vec(b, NAME("kv_a_proj_with_mqa.bias"), c->kv_lora_rank + c->head_dim);
    a->kv_a_norm = mtr_bind_vec(b, NAME("kv_a_layernorm.weight"), c->kv_lora_rank);
    a->kv_b = mtr_bind_mat(b, NAME("kv_b_proj.weight"), nh * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank);
    L->o = mtr_bind_mat(b, NAME("o_proj.weight"), H, nh * c->v_head_dim);
    if (c->o_bias) L->o_bias = mtr_bind_vec(b, NAME("o_proj.bias"), H);
#undef NAME
}

void mtr_deepseek_bind_moe(mtr_binder *b, mtr_model *m, uint32_t l)
{
    const mtr_model_config *c = &m->cfg;
    mtr_layer *L = &m->layers[l];
    char n[256];
    if (!c->is_moe[l]) return;
    if (c->n_shared_experts) {
        const uint32_t S = c->shared_expert_intermediate_size, H = c->hidden_size;
        snprintf(n, sizeof n, "model.layers.%u.mlp.shared_experts.gate_proj.weight", l);
        L->gate = mtr_bind_mat(b, n, S, H);
        snprintf(n, sizeof n, "model.layers.%u.mlp.shared_experts.up_proj.weight", l);
        L->up = mtr_bind_mat(b, n, S, H);
        snprintf(n, sizeof n, "model.layers.%u.mlp.shared_experts.down_proj.weight", l);
        L->down = mtr_bind_mat(b, n, H, S);
        L->has_mlp = true; /* added ungated (shared_gate stays NULL) */
    }
    if (c->topk_method == 2) {
        /* e_score_correction_bias: one row per MoE layer of the model's selection bias (DeepSeek keeps it in f32) */
        uint32_t ml = 0;
        for (uint32_t i = 0; i < l; i++) ml += c->is_moe[i];
        if (!m->selection_bias && !(m->selection_bias = calloc((size_t)c->n_moe_layers * c->n_experts, sizeof(float)))) {
            mtr_bind_nomem(b);
            return;
        }
        snprintf(n, sizeof n, "model.layers.%u.mlp.gate.e_score_correction_bias", l);
        float *v = mtr_bind_vec_f32(b, n, c->n_experts);
        if (v) memcpy(m->selection_bias + (size_t)ml * c->n_experts, v, c->n_experts * sizeof *v);
        free(v);
    }
}

void mtr_deepseek_free_layer(mtr_layer *L)
{
    if (!L->mla) return;
    free(L->mla->q_a_norm);
    free(L->mla->kv_a_norm);
    free(L->mla->q_a_bias);
    free(L->mla->kv_a_bias);
    free(L->mla);
    L->mla = NULL;
}

void mtr_deepseek_info(mtr_model *m)
{
    const mtr_model_config *c = &m->cfg;
    m->info.score_fn = c->score_sigmoid ? MTR_SCORE_SIGMOID : MTR_SCORE_SOFTMAX;
    m->info.renormalize = c->norm_topk_prob && c->top_k > 1;
    m->info.selection_bias = m->selection_bias;
}

/* ---- routing --------------------------------------------------------------------------------------------- */

void mtr_deepseek_route(const mtr_model *m, uint32_t ml, const float *z, uint16_t *ids, float *w, float *scratch)
{
    const mtr_model_config *c = &m->cfg;
    const uint32_t E = c->n_experts, K = c->top_k, G = c->n_group, gsz = E / G;
    float *score = scratch, ch[MTR_DEEPSEEK_MAX_EXPERTS], gscore[MTR_DEEPSEEK_MAX_EXPERTS];
    /* scores in f32 from the f32 gate logits */
    if (c->score_sigmoid)
        for (uint32_t e = 0; e < E; e++) score[e] = 1.f / (1.f + expf(-z[e]));
    else
        mtr_softmax(score, z, E);
    const float *bias = c->topk_method == 2 && m->selection_bias ? m->selection_bias + (size_t)ml * E : NULL;
    for (uint32_t e = 0; e < E; e++) ch[e] = bias ? score[e] + bias[e] : score[e];
    if (c->topk_method && G > 1) {
        /* a group's score: its best expert (group_limited_greedy) or the sum of its best two (noaux_tc); the
         * experts outside the topk_group best groups are masked to 0.0 (as masked_fill does) */
        uint16_t top2[2], gid[MTR_DEEPSEEK_MAX_EXPERTS];
        for (uint32_t g = 0; g < G; g++) {
            mtr_topk(top2, ch + (size_t)g * gsz, gsz, c->topk_method == 2 ? 2 : 1);
            gscore[g] = ch[(size_t)g * gsz + top2[0]];
            if (c->topk_method == 2) gscore[g] += ch[(size_t)g * gsz + top2[1]];
        }
        mtr_topk(gid, gscore, G, c->topk_group);
        for (uint32_t g = 0; g < G; g++) {
            bool keep = false;
            for (uint32_t i = 0; i < c->topk_group; i++) keep |= gid[i] == g;
            if (!keep)
                for (uint32_t j = 0; j < gsz; j++) ch[(size_t)g * gsz + j] = 0.f;
        }
    }
    mtr_topk(ids, ch, E, K);
    /* weights: the unbiased scores, renormalised if norm_topk_prob, then times routed_scaling_factor (DeepSeek-V3's
     * rule and transformers'; DeepSeek-V2's own code left out the factor when renormalising, no V2 release does) */
    float sum = 0;
    for (uint32_t i = 0; i < K; i++) sum += (w[i] = score[ids[i]]);
    const float scale = (float)c->routed_scaling_factor;
    for (uint32_t i = 0; i < K; i++) {
        if (c->norm_topk_prob && K > 1) w[i] /= sum + 1e-20f;
        w[i] *= scale;
    }
}

/* ---- attention ------------------------------------------------------------------------------------------- */

struct mtr_mla_state {
    uint32_t max_tokens;
    int nt;
    float *kc, *vc;    /* (n_layers, heads, max_tokens, nope + rope), (n_layers, heads, max_tokens, v) */
    float *q;          /* (max_batch, heads * (nope + rope)) */
    float *qa;         /* (max_batch, q_lora_rank) */
    float *lat;        /* (max_batch, kv_lora + rope): kv_a_proj_with_mqa's output */
    float *kvn;        /* (max_batch, kv_lora): the normalised latent */
    float *kvb;        /* (max_batch, heads * (nope + v)) */
    float *att;        /* (max_batch, heads * v) */
    float *cs, *sn;    /* (max_batch, rope / 2) f32 rotary tables */
    float **sbuf;      /* (nt) scores (MLA_Q_BLOCK, max_tokens) */
};

void mtr_mla_state_destroy(mtr_mla_state *st)
{
    if (!st) return;
    float *bufs[] = {st->kc, st->vc, st->q, st->qa, st->lat, st->kvn, st->kvb, st->att, st->cs, st->sn};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    for (int t = 0; st->sbuf && t < st->nt; t++) free(st->sbuf[t]);
    free(st->sbuf);
    free(st);
}

static float *falloc(uint64_t *bytes, size_t n, int *bad)
{
    n = n ? n : 1;
    *bytes += n * sizeof(float);
    float *p = calloc(n, sizeof(float));
    if (!p) *bad = 1;
    return p;
}

int mtr_mla_state_create(mtr_mla_state **out, const mtr_model *m, uint32_t max_tokens, uint32_t max_batch, int nt,
                         uint64_t *bytes)
{
    const mtr_model_config *c = &m->cfg;
    const size_t nh = c->n_heads, qkd = c->qk_nope_head_dim + c->head_dim, vd = c->v_head_dim, B = max_batch;
    int bad = 0;
    mtr_mla_state *st = calloc(1, sizeof *st);
    *out = NULL;
    if (!st) return MTR_ENOMEM;
    st->max_tokens = max_tokens;
    st->nt = nt;
    st->kc = falloc(bytes, (size_t)c->n_layers * nh * max_tokens * qkd, &bad);
    st->vc = falloc(bytes, (size_t)c->n_layers * nh * max_tokens * vd, &bad);
    st->q = falloc(bytes, B * nh * qkd, &bad);
    st->qa = falloc(bytes, B * c->q_lora_rank, &bad);
    st->lat = falloc(bytes, B * (c->kv_lora_rank + c->head_dim), &bad);
    st->kvn = falloc(bytes, B * c->kv_lora_rank, &bad);
    st->kvb = falloc(bytes, B * nh * (c->qk_nope_head_dim + vd), &bad);
    st->att = falloc(bytes, B * nh * vd, &bad);
    st->cs = falloc(bytes, B * c->head_dim / 2, &bad);
    st->sn = falloc(bytes, B * c->head_dim / 2, &bad);
    st->sbuf = calloc((size_t)nt, sizeof *st->sbuf);
    for (int t = 0; st->sbuf && t < nt; t++) st->sbuf[t] = falloc(bytes, (size_t)MLA_Q_BLOCK * max_tokens, &bad);
    if (bad || !st->sbuf) {
        mtr_mla_state_destroy(st);
        return MTR_ENOMEM;
    }
    *out = st;
    return 0;
}

/* the interleaved rotary embedding (apply_rotary_emb: pairs (2i, 2i + 1) as complex numbers times the f32
 * cos + i sin, scaled by the attention factor), computed in f32 and rounded once to the dtype */
static void rope_pairs(float *v, uint32_t half, const float *cs, const float *sn, mtr_dtype dt)
{
    for (uint32_t i = 0; i < half; i++) {
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = round_dt(a * cs[i] - b * sn[i], dt);
        v[2 * i + 1] = round_dt(a * sn[i] + b * cs[i], dt);
    }
}

void mtr_mla_attention(mtr_session *s, const mtr_model *m, mtr_mla_state *st, uint32_t l, uint32_t n,
                       const float *x, float *out, const uint32_t *pos, uint32_t len0, const uint32_t *tasks,
                       uint32_t nqb)
{
    const mtr_model_config *c = &m->cfg;
    const mtr_layer *L = &m->layers[l];
    const mtr_mla *a = L->mla;
    const mtr_dtype dt = c->dtype;
    const uint32_t nh = c->n_heads, nope = c->qk_nope_head_dim, rd = c->head_dim, half = rd / 2, vd = c->v_head_dim;
    const uint32_t qkd = nope + rd, kvl = c->kv_lora_rank, latd = kvl + rd, H = c->hidden_size;
    /* queries */
    if (c->q_lora_rank) {
        const uint32_t ql = c->q_lora_rank;
        mtr_session_linear(s, st->qa, x, n, &a->q_a);
        if (a->q_a_bias)
            for (uint32_t t = 0; t < n; t++)
                for (uint32_t j = 0; j < ql; j++) st->qa[(size_t)t * ql + j] += a->q_a_bias[j];
        round_buf(st->qa, (size_t)n * ql, dt);
        for (uint32_t t = 0; t < n; t++) rmsnorm(st->qa + (size_t)t * ql, st->qa + (size_t)t * ql, a->q_a_norm, ql, dt);
        mtr_session_linear(s, st->q, st->qa, n, &a->q_b);
    } else
        mtr_session_linear(s, st->q, x, n, &a->q);
    round_buf(st->q, (size_t)n * nh * qkd, dt);
    /* the latent: kv_lora_rank compressed values and keys, then the shared rotary key */
    mtr_session_linear(s, st->lat, x, n, &a->kv_a);
    if (a->kv_a_bias)
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t j = 0; j < latd; j++) st->lat[(size_t)t * latd + j] += a->kv_a_bias[j];
    round_buf(st->lat, (size_t)n * latd, dt);
    for (uint32_t t = 0; t < n; t++) rmsnorm(st->kvn + (size_t)t * kvl, st->lat + (size_t)t * latd, a->kv_a_norm, kvl, dt);
    mtr_session_linear(s, st->kvb, st->kvn, n, &a->kv_b);
    round_buf(st->kvb, (size_t)n * nh * (nope + vd), dt);
    /* rotary tables in f32 (torch.polar times the attention factor), not rounded */
    for (uint32_t t = 0; t < n; t++) {
        const float p = (float)pos[t];
        for (uint32_t i = 0; i < half; i++) {
            float ang = p * m->inv_freq[i];
            st->cs[(size_t)t * half + i] = cosf(ang) * m->attn_factor;
            st->sn[(size_t)t * half + i] = sinf(ang) * m->attn_factor;
        }
    }
    for (uint32_t t = 0; t < n; t++) {
        const float *cs = st->cs + (size_t)t * half, *sn = st->sn + (size_t)t * half;
        for (uint32_t h = 0; h < nh; h++) rope_pairs(st->q + ((size_t)t * nh + h) * qkd + nope, half, cs, sn, dt);
        rope_pairs(st->lat + (size_t)t * latd + kvl, half, cs, sn, dt);
    }
    /* the expanded cache: per head [k_nope, k_pe] and v, at (layer, head, position) */
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t h = 0; h < nh; h++) {
            const size_t slot = ((size_t)l * nh + h) * st->max_tokens + len0 + t;
            const float *kv = st->kvb + ((size_t)t * nh + h) * (nope + vd);
            memcpy(st->kc + slot * qkd, kv, nope * sizeof(float));
            memcpy(st->kc + slot * qkd + nope, st->lat + (size_t)t * latd + kvl, rd * sizeof(float));
            memcpy(st->vc + slot * vd, kv + nope, vd * sizeof(float));
        }
    const float scale = (float)c->attn_scale;
#pragma omp parallel for num_threads(st->nt) schedule(dynamic, 1)
    for (uint32_t task = 0; task < nh * nqb; task++) {
        const uint32_t h = task / nqb, *tk = tasks + 3 * (size_t)(task % nqb);
        const uint32_t q0 = tk[0], q1 = tk[1], k0 = tk[2], qn = q1 - q0, n_keys = len0 + q1 - k0;
        float *S = st->sbuf[omp_get_thread_num()];
        const size_t base = ((size_t)l * nh + h) * st->max_tokens + k0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)qn, (int)n_keys, (int)qkd, 1.f,
                    st->q + (size_t)q0 * nh * qkd + (size_t)h * qkd, (int)(nh * qkd), st->kc + base * qkd, (int)qkd,
                    0.f, S, (int)n_keys);
        for (uint32_t i = 0; i < qn; i++) {
            float *row = S + (size_t)i * n_keys;
            const uint32_t self = len0 + q0 + i - k0; /* the token's own key, relative to k0 */
            if (dt == MTR_DTYPE_F32) mtr_mk_softmax(row, self + 1, scale);
            else {
                for (uint32_t j = 0; j <= self; j++) row[j] = round_dt(round_dt(row[j], dt) * scale, dt);
                mtr_mk_softmax(row, self + 1, 1.f);
                round_buf(row, self + 1, dt);
            }
            for (uint32_t j = self + 1; j < n_keys; j++) row[j] = 0;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)qn, (int)vd, (int)n_keys, 1.f, S, (int)n_keys,
                    st->vc + base * vd, (int)vd, 0.f, st->att + (size_t)q0 * nh * vd + (size_t)h * vd, (int)(nh * vd));
    }
    round_buf(st->att, (size_t)n * nh * vd, dt);
    mtr_session_linear(s, out, st->att, n, &L->o);
    if (L->o_bias)
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t j = 0; j < H; j++) out[(size_t)t * H + j] += L->o_bias[j];
    round_buf(out, (size_t)n * H, dt);
}
