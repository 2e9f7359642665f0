/* model_forward.c — the decoder forward pass of the supported MoE architectures with a KV cache.
 *
 * Matrix products go through OpenBLAS sgemm (single-threaded calls; the parallelism is ours, OpenMP over weight
 * row blocks, attention heads x query blocks, and experts), weights are read in place from the mapping, bf16/f16
 * blocks widened into per-thread scratch just before use. Expert outputs are combined per token in increasing
 * expert order, so results do not depend on the number of threads. For bf16/f16 models every tensor the eager
 * PyTorch code materialises in the model dtype is rounded to it here too. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

#define Q_BLOCK 32u /* query rows per attention task (few: little of the causal triangle computed and discarded) */
#define W_BLOCK_BYTES (1u << 22) /* widened weight rows per sgemm call (bf16/f16 models) */

struct mtr_session {
    const mtr_model *m;
    uint32_t max_tokens, max_batch, len;
    bool broken;             /* a forward stopped before the last layer: the cache is incomplete */
    int nt;                  /* threads */
    float *kc, *vc;          /* (n_layers, n_kv_heads, max_tokens, head_dim) */
    float *h, *x, *tmp;      /* (max_batch, hidden) */
    float *q, *att;          /* (max_batch, heads * head_dim) */
    float *k, *v;            /* (max_batch, kv_heads * head_dim) */
    float *rl;               /* (max_batch, n_experts) router logits */
    uint16_t *sel;           /* (max_batch, top_k) */
    float *selw;             /* (max_batch, top_k) */
    uint32_t *cnt, *off;     /* (n_experts + 1) */
    uint32_t *slot_tok;      /* (max_batch * top_k) token of each slot, slots grouped by expert */
    uint32_t *tok_slot;      /* (max_batch, top_k) slot of each (token, choice) */
    uint32_t *order;         /* (n_experts) experts by decreasing load */
    float *xe, *ye;          /* (max_batch * top_k, hidden) */
    float *ge, *ue;          /* (max_batch * top_k, moe_intermediate) */
    float *mg, *mu;          /* (max_batch, max(intermediate, shared intermediate)) */
    float *rope_cos, *rope_sin; /* (max_batch, head_dim / 2) */
    uint32_t *pos;           /* (max_batch) rotary position of each token of the batch */
    uint32_t *key0;          /* (max_batch) first cache index the token may attend to (its sequence's start) */
    uint32_t *tasks;         /* (max_batch, 3) attention query blocks: first token, end, first key */
    uint32_t n_qblocks;
    float *route_scratch;    /* (nt, n_experts) */
    float **wbuf;            /* (nt) widened weight rows */
    size_t wbuf_floats;
    uint64_t bytes;          /* everything allocated for the session */
    float **sbuf;            /* (nt) attention scratch: scores (Q_BLOCK * group, max_tokens), stacked q and out */
    mtr_forward_stats st;
    int32_t *hist;           /* (max_tokens) ids of the cached positions (LongRoPE recomputes them) */
    bool rope_long;          /* LongRoPE: the cached keys were rotated with the long factors */
    int rope_force;          /* LongRoPE: -1, or 0/1 = short/long while recomputing the cache */
    mtr_mla_state *mla;      /* deepseek_v2: latent attention's cache and scratch, or NULL */
};

/* ---- dtype emulation ------------------------------------------------------------------------------------- */

static inline float round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u; /* NaN stays NaN */
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
    if (dt == MTR_DTYPE_BF16)
#pragma omp simd
        for (size_t i = 0; i < n; i++) x[i] = round_bf16(x[i]);
    else if (dt == MTR_DTYPE_F16)
        for (size_t i = 0; i < n; i++) x[i] = (float)(_Float16)x[i];
}

/* x += y, rounded to the model dtype */
static void add_round(float *x, const float *y, size_t n, mtr_dtype dt)
{
    if (dt == MTR_DTYPE_F32) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) x[i] += y[i];
    } else if (dt == MTR_DTYPE_BF16) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) x[i] = round_bf16(x[i] + y[i]);
    } else
        for (size_t i = 0; i < n; i++) x[i] = round_dt(x[i] + y[i], dt);
}

/* ---- matrix products ------------------------------------------------------------------------------------- */

/* Y[:, r0:r1] = X W[r0:r1]^T, X (n, cols) with row stride ldx, Y row stride ldy. Single-threaded. */
static void gemm_rows(float *Y, size_t ldy, const float *X, size_t ldx, uint32_t n, const mtr_mat *W, uint32_t r0,
                      uint32_t r1, float *wbuf, size_t wbuf_floats)
{
    const uint32_t cols = W->cols;
    if (r1 <= r0 || n == 0) return;
    if (W->dtype == MTR_DTYPE_F32 && !W->scales) {
        const float *w = (const float *)W->data + (size_t)r0 * cols;
        if (n == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(r1 - r0), (int)cols, 1.f, w, (int)cols, X, 1, 0.f, Y + r0,
                        1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)(r1 - r0), (int)cols, 1.f, X, (int)ldx,
                        w, (int)cols, 0.f, Y + r0, (int)ldy);
        return;
    }
    uint32_t blk = (uint32_t)(wbuf_floats / cols);
    if (blk == 0) blk = 1;
    const size_t esz = 2;
    for (uint32_t b = r0; b < r1; b += blk) {
        uint32_t rb = r1 - b < blk ? r1 - b : blk;
        if (W->scales) /* MXFP4 (gpt_oss experts): dequantised here, a block of rows at a time */
            mtr_mxfp4_rows(wbuf, W, b, rb);
        else
            mtr_convert(wbuf, MTR_DTYPE_F32, (const unsigned char *)W->data + (size_t)b * cols * esz, W->dtype,
                        (size_t)rb * cols);
        if (n == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)rb, (int)cols, 1.f, wbuf, (int)cols, X, 1, 0.f, Y + b, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)rb, (int)cols, 1.f, X, (int)ldx, wbuf,
                        (int)cols, 0.f, Y + b, (int)ldy);
    }
}

/* Y (n, W->rows) = X (n, W->cols) W^T over the threads. Many tokens against a weight of comparable size: blocks of T_BLOCK token rows, each against
 * the whole weight (OpenBLAS packs each weight panel once per block and the activations once); few tokens
 * (decoding): blocks of weight rows. The blocks depend on the shapes only, never on the thread count, so every
 * output element comes from the same sgemm call shape and results are identical for any number of threads. */
#define T_BLOCK 256u
static void linear(mtr_session *s, float *Y, const float *X, uint32_t n, const mtr_mat *W)
{
    const uint32_t rows = W->rows, cols = W->cols;
    s->st.flops += 2.0 * n * rows * cols;
    if (n >= T_BLOCK / 2 && rows < 4 * (size_t)n) {
        const uint32_t nb = (n + T_BLOCK - 1) / T_BLOCK;
#pragma omp parallel for num_threads(s->nt) schedule(dynamic, 1) if (nb > 1 && s->nt > 1)
        for (uint32_t b = 0; b < nb; b++) {
            uint32_t t0 = b * T_BLOCK, tn = n - t0 < T_BLOCK ? n - t0 : T_BLOCK;
            gemm_rows(Y + (size_t)t0 * rows, rows, X + (size_t)t0 * cols, cols, tn, W, 0, rows,
                      s->wbuf[omp_get_thread_num()], s->wbuf_floats);
        }
        return;
    }
    /* weight-row blocks: each call packs its weight rows once and the (smaller) activations again; many tokens
     * against a large weight (the LM head) take four blocks, decoding eight */
    uint32_t chunk = (rows + (n >= T_BLOCK / 2 ? 3 : 7)) / (n >= T_BLOCK / 2 ? 4 : 8);
    chunk = (chunk + 15) / 16 * 16;
    if (chunk < 64) chunk = 64;
    const uint32_t nb = (rows + chunk - 1) / chunk;
#pragma omp parallel for num_threads(s->nt) schedule(dynamic, 1) if (nb > 1 && s->nt > 1)
    for (uint32_t b = 0; b < nb; b++) {
        uint32_t r0 = b * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        gemm_rows(Y, rows, X, cols, n, W, r0, r1, s->wbuf[omp_get_thread_num()], s->wbuf_floats);
    }
}

void mtr_session_linear(mtr_session *s, float *Y, const float *X, uint32_t n, const mtr_mat *W) { linear(s, Y, X, n, W); }

static void add_bias(float *Y, const float *b, uint32_t n, uint32_t d)
{
    if (!b) return;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < d; j++) Y[(size_t)i * d + j] += b[j];
}

/* HF RMSNorm: x * rsqrt(mean(x^2) + eps) in f32, cast to the model dtype, then times the weight. */
static void rmsnorm(float *out, const float *in, const float *w, uint32_t d, double eps, mtr_dtype dt)
{
    if (dt == MTR_DTYPE_F32) {
        mtr_mk_rmsnorm(out, in, w, d, (float)eps);
        return;
    }
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (uint32_t j = 0; j < d; j++) ss += in[j] * in[j];
    float r = 1.f / sqrtf(ss / (float)d + (float)eps);
    if (dt == MTR_DTYPE_BF16) {
#pragma omp simd
        for (uint32_t j = 0; j < d; j++) out[j] = round_bf16(round_bf16(in[j] * r) * w[j]);
    } else
        for (uint32_t j = 0; j < d; j++) out[j] = round_dt(round_dt(in[j] * r, dt) * w[j], dt);
}

/* The decoder's norms: gpt_oss keeps the norm weights in f32 (_keep_in_fp32_modules) and rounds weight * x once. */
static void hidden_norm(const mtr_model *m, float *out, const float *in, const float *w)
{
    const mtr_model_config *c = &m->cfg;
    if (c->arch != MTR_ARCH_GPT_OSS || c->dtype == MTR_DTYPE_F32) {
        rmsnorm(out, in, w, c->hidden_size, c->rms_eps, c->dtype);
        return;
    }
    const uint32_t d = c->hidden_size;
    float ss = 0;
    for (uint32_t j = 0; j < d; j++) ss += in[j] * in[j];
    const float r = 1.f / sqrtf(ss / (float)d + (float)c->rms_eps);
    for (uint32_t j = 0; j < d; j++) out[j] = round_dt(in[j] * r * w[j], c->dtype);
}

static inline float silu(float x) { return x / (1.f + expf(-x)); }

/* the decoder's norms: RMSNorm as hidden_norm, or LayerNorm with bias (phimoe) */
static void norm(const mtr_model *m, float *out, const float *in, const float *w, const float *b)
{
    const mtr_model_config *c = &m->cfg;
    if (c->norm_bias) mtr_layernorm(out, in, w, b, c->hidden_size, c->rms_eps, c->dtype);
    else hidden_norm(m, out, in, w);
}

/* ---- sessions -------------------------------------------------------------------------------------------- */

static void *zalloc(uint64_t *bytes, size_t n, size_t size)
{
    *bytes += (uint64_t)(n > 0 ? n : 1) * size;
    return calloc(n > 0 ? n : 1, size);
}

#define ALLOC(p, n)                                                       \
    do {                                                                  \
        if (!((p) = zalloc(&s->bytes, (size_t)(n), sizeof *(p)))) goto nomem; \
    } while (0)

int mtr_session_create(mtr_session **out, const mtr_model *m, uint32_t max_tokens, uint32_t max_batch)
{
    *out = NULL;
    if (max_tokens == 0 || max_batch == 0 || max_batch > max_tokens)
        return mtr_fail(MTR_EINVAL, "session: need 0 < max_batch (%u) <= max_tokens (%u)", max_batch, max_tokens);
    const mtr_model_config *c = &m->cfg;
    mtr_session *s = calloc(1, sizeof *s);
    if (!s) return mtr_fail(MTR_ENOMEM, "session: out of memory");
    s->m = m;
    s->max_tokens = max_tokens;
    s->max_batch = max_batch;
    s->nt = m->n_threads > 0 ? m->n_threads : omp_get_max_threads();
    openblas_set_num_threads(1);
    const size_t B = max_batch, H = c->hidden_size, qd = (size_t)c->n_heads * c->head_dim,
                 kd = (size_t)c->n_kv_heads * c->head_dim, E = c->n_experts, K = c->top_k;
    size_t kv = (size_t)c->n_layers * kd * max_tokens;
    ALLOC(s->kc, kv);
    ALLOC(s->vc, kv);
    ALLOC(s->h, B * H);
    ALLOC(s->x, B * H);
    ALLOC(s->tmp, B * H);
    ALLOC(s->q, B * qd);
    ALLOC(s->att, B * qd);
    ALLOC(s->k, B * kd);
    ALLOC(s->v, B * kd);
    ALLOC(s->rl, B * E);
    ALLOC(s->sel, B * K);
    ALLOC(s->selw, B * K);
    ALLOC(s->cnt, E + 1);
    ALLOC(s->off, E + 1);
    ALLOC(s->slot_tok, B * K);
    ALLOC(s->tok_slot, B * K);
    ALLOC(s->order, E);
    ALLOC(s->xe, B * K * H);
    ALLOC(s->ye, B * K * H);
    ALLOC(s->ge, B * K * 2 * (size_t)c->moe_intermediate_size); /* gate and up side by side when fused */
    ALLOC(s->ue, B * K * c->moe_intermediate_size);
    size_t mi = c->intermediate_size > c->shared_expert_intermediate_size ? c->intermediate_size
                                                                         : c->shared_expert_intermediate_size;
    ALLOC(s->mg, B * mi);
    ALLOC(s->mu, B * mi);
    ALLOC(s->pos, B);
    ALLOC(s->key0, B);
    ALLOC(s->tasks, 3 * B);
    ALLOC(s->rope_cos, B * c->head_dim / 2);
    ALLOC(s->rope_sin, B * c->head_dim / 2);
    ALLOC(s->route_scratch, (size_t)s->nt * E);
    ALLOC(s->hist, max_tokens);
    s->rope_force = -1;
    if (c->arch == MTR_ARCH_DEEPSEEK_V2 && mtr_mla_state_create(&s->mla, m, max_tokens, max_batch, s->nt, &s->bytes))
        goto nomem;
    ALLOC(s->wbuf, s->nt);
    ALLOC(s->sbuf, s->nt);
    uint32_t maxcols = H > c->moe_intermediate_size ? (uint32_t)H : c->moe_intermediate_size;
    if (qd > maxcols) maxcols = (uint32_t)qd;
    if (mi > maxcols) maxcols = (uint32_t)mi;
    s->wbuf_floats = W_BLOCK_BYTES / 4 > maxcols ? W_BLOCK_BYTES / 4 : maxcols;
    for (int t = 0; t < s->nt; t++) {
        ALLOC(s->wbuf[t], m->cfg.dtype == MTR_DTYPE_F32 && c->arch != MTR_ARCH_GPT_OSS ? 1 : s->wbuf_floats);
        /* attention scores (Q_BLOCK * group, max_tokens), then the stacked queries and outputs */
        const size_t group = c->n_heads / c->n_kv_heads;
        ALLOC(s->sbuf[t], (size_t)Q_BLOCK * group * (max_tokens + 2 * (size_t)c->head_dim));
    }
    *out = s;
    return 0;
nomem:
    mtr_session_destroy(s);
    return mtr_fail(MTR_ENOMEM, "session: out of memory for %u positions x %u batch", max_tokens, max_batch);
}

void mtr_session_destroy(mtr_session *s)
{
    if (!s) return;
    float **bufs[] = {&s->kc, &s->vc, &s->h, &s->x, &s->tmp, &s->q, &s->att, &s->k, &s->v, &s->rl, &s->selw,
                      &s->xe, &s->ye, &s->ge, &s->ue, &s->mg, &s->mu, &s->rope_cos, &s->rope_sin,
                      &s->route_scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
    free(s->sel);
    free(s->pos);
    free(s->key0);
    free(s->tasks);
    free(s->cnt);
    free(s->off);
    free(s->slot_tok);
    free(s->tok_slot);
    free(s->order);
    free(s->hist);
    mtr_mla_state_destroy(s->mla);
    for (int t = 0; t < s->nt; t++) {
        if (s->wbuf) free(s->wbuf[t]);
        if (s->sbuf) free(s->sbuf[t]);
    }
    free(s->wbuf);
    free(s->sbuf);
    free(s);
}

void mtr_session_reset(mtr_session *s)
{
    s->len = 0;
    s->broken = false;
}

int mtr_session_truncate(mtr_session *s, uint32_t n)
{
    if (n > s->len) return mtr_fail(MTR_EINVAL, "session: cannot truncate %u cached positions to %u", s->len, n);
    if (s->broken) return mtr_fail(MTR_EINVAL, "session: the cache is incomplete (a forward stopped early)");
    s->len = n;
    return 0;
}

uint32_t mtr_session_length(const mtr_session *s) { return s->len; }
uint64_t mtr_session_bytes(const mtr_session *s) { return s->bytes; }
void mtr_session_stats(const mtr_session *s, mtr_forward_stats *out) { *out = s->st; }

/* ---- attention ------------------------------------------------------------------------------------------- */

static void rope_tables(mtr_session *s, uint32_t n)
{
    const mtr_model *m = s->m;
    const mtr_model_config *c = &m->cfg;
    const uint32_t half = c->head_dim / 2;
    float dyn[2048]; /* head_dim <= 4096 (config.json is checked) */
    const float *inv = m->inv_freq;
    if (c->rope_type == MTR_ROPE_LONGROPE) {
        mtr_longrope_tables(m, s->rope_cos, s->rope_sin, s->pos, s->key0, n, s->rope_force);
        return;
    }
    uint32_t seq_len = 0;
    for (uint32_t t = 0; t < n; t++) seq_len = s->pos[t] + 1 > seq_len ? s->pos[t] + 1 : seq_len;
    if (c->rope_type == MTR_ROPE_DYNAMIC && seq_len > c->rope_orig_max_pos) {
        /* transformers recomputes the base for the longest position of the call */
        double f = c->rope_factor, dim = c->head_dim;
        double base = c->rope_theta * pow(f * seq_len / c->rope_orig_max_pos - (f - 1), dim / (dim - 2));
        for (uint32_t i = 0; i < half; i++) dyn[i] = (float)(1.0 / pow(base, (double)((float)(2 * i) / (float)dim)));
        inv = dyn;
    }
    for (uint32_t t = 0; t < n; t++) {
        float pos = (float)s->pos[t];
        for (uint32_t i = 0; i < half; i++) {
            float a = pos * inv[i];
            s->rope_cos[(size_t)t * half + i] = round_dt(cosf(a) * m->attn_factor, c->dtype);
            s->rope_sin[(size_t)t * half + i] = round_dt(sinf(a) * m->attn_factor, c->dtype);
        }
    }
}

/* rotate_half convention: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) over the two halves of each head */
static void apply_rope(float *x, uint32_t n, uint32_t heads, uint32_t hd, const float *cs, const float *sn,
                       mtr_dtype dt)
{
    const uint32_t half = hd / 2;
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t h = 0; h < heads; h++) {
            float *v = x + ((size_t)t * heads + h) * hd;
            const float *c = cs + (size_t)t * half, *s = sn + (size_t)t * half;
            if (dt == MTR_DTYPE_F32) {
#pragma omp simd
                for (uint32_t i = 0; i < half; i++) {
                    float a = v[i], b = v[i + half];
                    v[i] = a * c[i] - b * s[i];
                    v[i + half] = b * c[i] + a * s[i];
                }
            } else if (dt == MTR_DTYPE_BF16) {
#pragma omp simd
                for (uint32_t i = 0; i < half; i++) {
                    float a = v[i], b = v[i + half];
                    v[i] = round_bf16(round_bf16(a * c[i]) - round_bf16(b * s[i]));
                    v[i + half] = round_bf16(round_bf16(b * c[i]) + round_bf16(a * s[i]));
                }
            } else
                for (uint32_t i = 0; i < half; i++) {
                    float a = v[i], b = v[i + half];
                    v[i] = round_dt(round_dt(a * c[i], dt) - round_dt(b * s[i], dt), dt);
                    v[i + half] = round_dt(round_dt(b * c[i], dt) + round_dt(a * s[i], dt), dt);
                }
        }
}

static void attention(mtr_session *s, uint32_t l, uint32_t n)
{
    const mtr_model *m = s->m;
    const mtr_model_config *c = &m->cfg;
    const mtr_layer *L = &m->layers[l];
    const mtr_dtype dt = c->dtype;
    const uint32_t hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, qd = nh * hd, kd = nkv * hd;
    linear(s, s->q, s->x, n, &L->q);
    linear(s, s->k, s->x, n, &L->k);
    linear(s, s->v, s->x, n, &L->v);
    add_bias(s->q, L->q_bias, n, qd);
    add_bias(s->k, L->k_bias, n, kd);
    add_bias(s->v, L->v_bias, n, kd);
    round_buf(s->q, (size_t)n * qd, dt);
    round_buf(s->k, (size_t)n * kd, dt);
    round_buf(s->v, (size_t)n * kd, dt);
    if (c->arch == MTR_ARCH_QWEN3_MOE) {
        for (size_t r = 0; r < (size_t)n * nh; r++) rmsnorm(s->q + r * hd, s->q + r * hd, L->q_norm, hd, c->rms_eps, dt);
        for (size_t r = 0; r < (size_t)n * nkv; r++) rmsnorm(s->k + r * hd, s->k + r * hd, L->k_norm, hd, c->rms_eps, dt);
    } else if (c->arch == MTR_ARCH_OLMOE) {
        for (size_t r = 0; r < n; r++) rmsnorm(s->q + r * qd, s->q + r * qd, L->q_norm, qd, c->rms_eps, dt);
        for (size_t r = 0; r < n; r++) rmsnorm(s->k + r * kd, s->k + r * kd, L->k_norm, kd, c->rms_eps, dt);
    }
    if (c->clip_qkv > 0) {
        float cl = c->clip_qkv;
        float *bufs[3] = {s->q, s->k, s->v};
        size_t lens[3] = {(size_t)n * qd, (size_t)n * kd, (size_t)n * kd};
        for (int b = 0; b < 3; b++)
            for (size_t i = 0; i < lens[b]; i++) bufs[b][i] = fminf(fmaxf(bufs[b][i], -cl), cl);
    }
    apply_rope(s->q, n, nh, hd, s->rope_cos, s->rope_sin, dt);
    apply_rope(s->k, n, nkv, hd, s->rope_cos, s->rope_sin, dt);
    /* append to the cache: (layer, kv head, position, head_dim) */
    const size_t lay = (size_t)l * nkv * s->max_tokens * hd;
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t h = 0; h < nkv; h++) {
            size_t dst = lay + ((size_t)h * s->max_tokens + s->len + t) * hd;
            memcpy(s->kc + dst, s->k + (size_t)t * kd + (size_t)h * hd, hd * sizeof(float));
            memcpy(s->vc + dst, s->v + (size_t)t * kd + (size_t)h * hd, hd * sizeof(float));
        }
    const uint32_t nqb = s->n_qblocks, group = nh / nkv;
    const float scale = 1.f / sqrtf((float)hd);
    const uint32_t win = L->window;
    const uint32_t len0 = s->len;
    for (uint32_t t = 0; t < n; t++) s->st.flops += 4.0 * nh * hd * (double)(len0 + t + 1 - s->key0[t]);
    /* one task per (key-value head, query block): the query heads sharing that key-value head are stacked into
     * one matrix (rows token-major: token i, head j at i * group + j), so each product is group times taller */
#pragma omp parallel for num_threads(s->nt) schedule(dynamic, 1)
    for (uint32_t task = 0; task < nkv * nqb; task++) {
        uint32_t kvh = task / nqb, qb = task % nqb;
        const uint32_t *tk = s->tasks + 3 * (size_t)qb;
        uint32_t q0 = tk[0], q1 = tk[1], k0 = tk[2], qn = q1 - q0, rows = qn * group;
        uint32_t n_keys = len0 + q1 - k0; /* cache indices k0 .. that of the last query */
        float *S = s->sbuf[omp_get_thread_num()];
        float *Qg = S + (size_t)Q_BLOCK * group * s->max_tokens, *Og = Qg + (size_t)Q_BLOCK * group * hd;
        const size_t kv_off = lay + (size_t)kvh * s->max_tokens * hd + (size_t)k0 * hd;
        const float *K = s->kc + kv_off, *V = s->vc + kv_off;
        for (uint32_t i = 0; i < qn; i++)
            memcpy(Qg + (size_t)i * group * hd, s->q + (size_t)(q0 + i) * qd + (size_t)kvh * group * hd,
                   (size_t)group * hd * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n_keys, (int)hd, 1.f, Qg, (int)hd, K,
                    (int)hd, 0.f, S, (int)n_keys);
        for (uint32_t r = 0; r < rows; r++) {
            const uint32_t i = r / group;
            float *row = S + (size_t)r * n_keys;
            /* visible keys, relative to k0: the token's own sequence up to itself, within the sliding window */
            uint32_t self = len0 + q0 + i - k0, pos = s->pos[q0 + i];
            uint32_t lo = win && pos + 1 > win ? self - (win - 1) : 0;
            if (L->sinks) { /* gpt_oss: the head's sink logit joins the softmax denominator */
                mtr_gptoss_softmax_sink(row + lo, self + 1 - lo, scale, L->sinks[kvh * group + r % group], dt);
                for (uint32_t j = 0; j < lo; j++) row[j] = 0;
                for (uint32_t j = self + 1; j < n_keys; j++) row[j] = 0;
                continue;
            }
            if (dt == MTR_DTYPE_F32) {
                mtr_mk_softmax(row + lo, self + 1 - lo, scale);
                for (uint32_t j = 0; j < lo; j++) row[j] = 0;
                for (uint32_t j = self + 1; j < n_keys; j++) row[j] = 0;
                continue;
            }
            /* scores in the model dtype, scaled in it; the softmax in f32; probabilities back in the dtype */
            if (dt == MTR_DTYPE_BF16) {
#pragma omp simd
                for (uint32_t j = lo; j <= self; j++) row[j] = round_bf16(round_bf16(row[j]) * scale);
            } else
                for (uint32_t j = lo; j <= self; j++) row[j] = round_dt(round_dt(row[j], dt) * scale, dt);
            mtr_mk_softmax(row + lo, self + 1 - lo, 1.f);
            for (uint32_t j = 0; j < lo; j++) row[j] = 0;
            round_buf(row + lo, self + 1 - lo, dt);
            for (uint32_t j = self + 1; j < n_keys; j++) row[j] = 0;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)hd, (int)n_keys, 1.f, S, (int)n_keys, V,
                    (int)hd, 0.f, Og, (int)hd);
        for (uint32_t i = 0; i < qn; i++)
            memcpy(s->att + (size_t)(q0 + i) * qd + (size_t)kvh * group * hd, Og + (size_t)i * group * hd,
                   (size_t)group * hd * sizeof(float));
    }
    round_buf(s->att, (size_t)n * qd, dt);
    linear(s, s->tmp, s->att, n, &L->o);
    add_bias(s->tmp, L->o_bias, n, c->hidden_size);
    round_buf(s->tmp, (size_t)n * c->hidden_size, dt);
}

/* ---- MLP and mixture of experts -------------------------------------------------------------------------- */

/* out (n, hidden) = down(silu(gate(x)) * up(x)) */
static void dense_mlp(mtr_session *s, float *out, const float *x, uint32_t n, const mtr_mat *g, const mtr_mat *u,
                      const mtr_mat *d)
{
    const mtr_dtype dt = s->m->cfg.dtype;
    const size_t NI = g->rows;
    linear(s, s->mg, x, n, g);
    linear(s, s->mu, x, n, u);
    if (dt == MTR_DTYPE_F32) mtr_mk_silu_mul(s->mg, s->mu, (size_t)n * NI);
    else
        for (size_t i = 0; i < (size_t)n * NI; i++)
            s->mg[i] = round_dt(round_dt(silu(round_dt(s->mg[i], dt)), dt) * round_dt(s->mu[i], dt), dt);
    linear(s, out, s->mg, n, d);
    round_buf(out, (size_t)n * d->rows, dt);
}

static int cmp_load_desc(const void *a, const void *b, void *ctx)
{
    const uint32_t *cnt = ctx, x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return cnt[x] != cnt[y] ? (cnt[x] < cnt[y]) - (cnt[x] > cnt[y]) : (x > y) - (x < y);
}

/* Router logits of the n tokens in s->x into s->rl (model dtype), steered if asked, copied out, routed. */
static void route(mtr_session *s, uint32_t l, uint32_t n, const mtr_forward_io *io)
{
    const mtr_model *m = s->m;
    const mtr_model_config *c = &m->cfg;
    const mtr_layer *L = &m->layers[l];
    const uint32_t E = c->n_experts, K = c->top_k, ml = (uint32_t)L->moe_index;
    linear(s, s->rl, s->x, n, &L->router);
    add_bias(s->rl, L->router_bias, n, E);
    if (c->arch != MTR_ARCH_DEEPSEEK_V2) /* DeepSeek's gate computes in f32 whatever the model dtype */
        round_buf(s->rl, (size_t)n * E, c->dtype);
    /* the raw gate outputs are what a trace stores (FORMAT.md 2.2); the model routes on the steered ones */
    if (io->router)
        for (uint32_t t = 0; t < n; t++)
            memcpy(io->router + ((size_t)t * c->n_moe_layers + ml) * E, s->rl + (size_t)t * E, E * sizeof(float));
    if (io->steer)
        for (uint32_t t = 0; t < n; t++)
            mtr_steer_apply(io->steer, ml, s->rl + (size_t)t * E, io->steer_rng ? &io->steer_rng[ml] : NULL);
    for (uint32_t t = 0; t < n; t++) {
        if (c->arch == MTR_ARCH_DEEPSEEK_V2) { /* its f32 weights multiply the expert outputs unrounded */
            mtr_deepseek_route(m, ml, s->rl + (size_t)t * E, s->sel + (size_t)t * K, s->selw + (size_t)t * K,
                               s->route_scratch);
            continue;
        }
        if (c->arch == MTR_ARCH_PHIMOE)
            mtr_phimoe_route(m, ml, s->rl + (size_t)t * E, io->steer, s->sel + (size_t)t * K, s->selw + (size_t)t * K,
                             s->route_scratch);
        else
            mtr_route(&m->info, ml, s->rl + (size_t)t * E, s->sel + (size_t)t * K, s->selw + (size_t)t * K,
                      s->route_scratch);
        for (uint32_t j = 0; j < K; j++) s->selw[(size_t)t * K + j] = round_dt(s->selw[(size_t)t * K + j], c->dtype);
    }
}

static void moe(mtr_session *s, uint32_t l, uint32_t n)
{
    const mtr_model *m = s->m;
    const mtr_model_config *c = &m->cfg;
    const mtr_layer *L = &m->layers[l];
    const mtr_dtype dt = c->dtype;
    const uint32_t E = c->n_experts, K = c->top_k, H = c->hidden_size, NI = c->moe_intermediate_size;
    const size_t esz = dt == MTR_DTYPE_F32 ? 4 : 2;
    /* group the (token, choice) slots by expert: counting sort, tokens in order within an expert */
    memset(s->cnt, 0, (E + 1) * sizeof *s->cnt);
    for (size_t i = 0; i < (size_t)n * K; i++) s->cnt[s->sel[i]]++;
    s->off[0] = 0;
    for (uint32_t e = 0; e < E; e++) s->off[e + 1] = s->off[e] + s->cnt[e];
    memset(s->cnt, 0, (E + 1) * sizeof *s->cnt);
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t j = 0; j < K; j++) {
            uint32_t e = s->sel[(size_t)t * K + j], slot = s->off[e] + s->cnt[e]++;
            s->slot_tok[slot] = t;
            s->tok_slot[(size_t)t * K + j] = slot;
            memcpy(s->xe + (size_t)slot * H, s->x + (size_t)t * H, H * sizeof(float));
        }
    uint32_t n_active = 0;
    for (uint32_t e = 0; e < E; e++)
        if (s->cnt[e]) s->order[n_active++] = e;
    qsort_r(s->order, n_active, sizeof *s->order, cmp_load_desc, s->cnt);
    for (uint32_t i = 0; i < n_active; i++) s->st.flops += 6.0 * s->cnt[s->order[i]] * H * NI;
#pragma omp parallel for num_threads(s->nt) schedule(dynamic, 1)
    for (uint32_t i = 0; i < n_active; i++) {
        uint32_t e = s->order[i], r0 = s->off[e], rn = s->cnt[e];
        float *wb = s->wbuf[omp_get_thread_num()];
        const mtr_mat *G = &L->e_gate[e], *U = L->e_up ? &L->e_up[e] : NULL;
        const float *xe = s->xe + (size_t)r0 * H;
        /* gate and up stored back to back (safetensors writes tensors in name order, so gate_proj is followed by
         * up_proj) are one weight of 2 * NI rows: one product instead of two, the activations packed once */
        const bool fused = U && U->data == (const unsigned char *)G->data + (size_t)NI * H * esz;
        float *g, *u;
        size_t ld;
        if (!U) { /* gpt_oss: gate_up_proj (2 NI interleaved rows) + bias, clamped SwiGLU into each row's front */
            ld = 2 * (size_t)NI;
            g = s->ge + (size_t)r0 * ld;
            gemm_rows(g, ld, xe, H, rn, G, 0, 2 * NI, wb, s->wbuf_floats);
            mtr_gptoss_glu(g, ld, rn, NI, L->e_gu_bias + (size_t)e * ld, c->swiglu_alpha, c->swiglu_limit, dt);
            float *y = s->ye + (size_t)r0 * H;
            gemm_rows(y, H, g, ld, rn, &L->e_down[e], 0, H, wb, s->wbuf_floats);
            const float *db = L->e_down_bias + (size_t)e * H;
            for (uint32_t r = 0; r < rn; r++)
                for (uint32_t d = 0; d < H; d++) y[(size_t)r * H + d] = round_dt(round_dt(y[(size_t)r * H + d], dt) + db[d], dt);
            continue;
        } else if (fused) {
            const mtr_mat GU = {G->data, G->dtype, 2 * NI, H, NULL};
            ld = 2 * (size_t)NI;
            g = s->ge + (size_t)r0 * ld;
            u = g + NI;
            gemm_rows(g, ld, xe, H, rn, &GU, 0, 2 * NI, wb, s->wbuf_floats);
        } else {
            ld = NI;
            g = s->ge + (size_t)r0 * ld;
            u = s->ue + (size_t)r0 * ld;
            gemm_rows(g, ld, xe, H, rn, G, 0, NI, wb, s->wbuf_floats);
            gemm_rows(u, ld, xe, H, rn, U, 0, NI, wb, s->wbuf_floats);
        }
        for (uint32_t r = 0; r < rn; r++) {
            float *gr = g + r * ld;
            const float *ur = u + r * ld;
            if (dt == MTR_DTYPE_F32) mtr_mk_silu_mul(gr, ur, NI);
            else
                for (uint32_t k = 0; k < NI; k++)
                    gr[k] = round_dt(round_dt(silu(round_dt(gr[k], dt)), dt) * round_dt(ur[k], dt), dt);
        }
        gemm_rows(s->ye + (size_t)r0 * H, H, g, ld, rn, &L->e_down[e], 0, H, wb, s->wbuf_floats);
    }
    /* combine per token in increasing expert order, as index_add_ over the expert loop does */
    for (uint32_t t = 0; t < n; t++) {
        float *o = s->tmp + (size_t)t * H;
        memset(o, 0, H * sizeof(float));
        uint64_t done = 0;
        for (uint32_t j = 0; j < K; j++) {
            /* next-smallest expert id among this token's choices */
            uint32_t best = K;
            for (uint32_t q = 0; q < K; q++)
                if (!(done >> q & 1u) && (best == K || s->sel[(size_t)t * K + q] < s->sel[(size_t)t * K + best])) best = q;
            done |= (uint64_t)1 << best;
            const float *y = s->ye + (size_t)s->tok_slot[(size_t)t * K + best] * H;
            float w = s->selw[(size_t)t * K + best];
            if (dt == MTR_DTYPE_F32) {
#pragma omp simd
                for (uint32_t d = 0; d < H; d++) o[d] += y[d] * w;
            } else if (L->e_down_bias) { /* gpt_oss: weighted outputs in the dtype, their sum over experts in f32 */
                for (uint32_t d = 0; d < H; d++) o[d] += round_dt(y[d] * w, dt);
            } else if (dt == MTR_DTYPE_BF16) {
#pragma omp simd
                for (uint32_t d = 0; d < H; d++) o[d] = round_bf16(o[d] + round_bf16(round_bf16(y[d]) * w));
            } else
                for (uint32_t d = 0; d < H; d++) o[d] = round_dt(o[d] + round_dt(round_dt(y[d], dt) * w, dt), dt);
        }
        if (L->e_down_bias) round_buf(o, H, dt);
    }
    if (L->has_mlp) { /* qwen2_moe shared expert, gated by sigmoid(x . w); deepseek_v2's shared experts, added */
        dense_mlp(s, s->ye, s->x, n, &L->gate, &L->up, &L->down);
        if (!L->shared_gate) add_round(s->tmp, s->ye, (size_t)n * H, dt);
        for (uint32_t t = 0; t < n && L->shared_gate; t++) {
            const float *x = s->x + (size_t)t * H;
            float z = 0;
            for (uint32_t d = 0; d < H; d++) z += x[d] * L->shared_gate[d];
            float gsig = round_dt(1.f / (1.f + expf(-round_dt(z, dt))), dt);
            for (uint32_t d = 0; d < H; d++) {
                float *o = s->tmp + (size_t)t * H + d;
                *o = round_dt(*o + round_dt(gsig * s->ye[(size_t)t * H + d], dt), dt);
            }
        }
    }
}

/* ---- the forward ----------------------------------------------------------------------------------------- */

/* LongRoPE rotates every position by the factors of the forward's whole length: when a forward takes the
 * sequence across original_max_position_embeddings (either way, after a truncation), the cached keys were rotated
 * for the other side and are recomputed from the kept ids, as transformers' generate() drops its cache there. */
static int longrope_sync(mtr_session *s, uint32_t n, const mtr_forward_io *io)
{
    const bool want = (double)(s->len + n) > s->m->cfg.rope_orig_max_pos;
    int rc = 0;
    if (s->len > 0 && want != s->rope_long) {
        const uint32_t keep = s->len;
        mtr_forward_io rio = MTR_FORWARD_IO_INIT;
        rio.steer = io->steer;
        rio.steer_rng = io->steer_rng;
        s->len = 0;
        s->rope_force = want;
        for (uint32_t at = 0; at < keep && !rc; at += s->max_batch)
            rc = mtr_model_forward(s, s->hist + at, keep - at < s->max_batch ? keep - at : s->max_batch, &rio);
        s->rope_force = -1;
    }
    s->rope_long = want;
    return rc;
}

int mtr_model_forward(mtr_session *s, const int32_t *ids, uint32_t n, const mtr_forward_io *io_in)
{
    mtr_forward_io io = MTR_FORWARD_IO_INIT;
    if (io_in) io = *io_in;
    const mtr_model *m = s->m;
    const mtr_model_config *c = &m->cfg;
    const mtr_dtype dt = c->dtype;
    const uint32_t H = c->hidden_size;
    if (n == 0 || n > s->max_batch)
        return mtr_fail(MTR_EINVAL, "forward: %u tokens (batch holds 1 to %u)", n, s->max_batch);
    if (s->len + n > s->max_tokens)
        return mtr_fail(MTR_EINVAL, "forward: %u cached + %u new tokens exceed the %u positions of the session",
                        s->len, n, s->max_tokens);
    if (s->broken) return mtr_fail(MTR_EINVAL, "forward: the cache is incomplete (reset the session first)");
    if (io.n_logits > n) return mtr_fail(MTR_EINVAL, "forward: %u logit rows asked of %u tokens", io.n_logits, n);
    if (io.steer && (io.steer->n_layers != c->n_moe_layers || io.steer->n_experts != c->n_experts))
        return mtr_fail(MTR_EINVAL, "forward: the steering file is for %u layers x %u experts, the model has %u x %u",
                        io.steer->n_layers, io.steer->n_experts, c->n_moe_layers, c->n_experts);
    for (uint32_t t = 0; t < n; t++)
        if (ids[t] < 0 || (uint32_t)ids[t] >= c->vocab_size)
            return mtr_fail(MTR_EINVAL, "forward: token id %d at %u is outside the vocabulary of %u", ids[t], t,
                            c->vocab_size);
    /* positions, visible key ranges and attention query blocks (never across a sequence boundary) */
    const bool packed = io.n_seqs > 1;
    if (c->rope_type == MTR_ROPE_LONGROPE && !packed && s->rope_force < 0) {
        int rc = longrope_sync(s, n, &io);
        if (rc) return rc;
    }
    if (!packed) memmove(s->hist + s->len, ids, n * sizeof *ids);
    if (packed) {
        if (s->len != 0) return mtr_fail(MTR_EINVAL, "forward: a packed batch needs an empty session");
        uint64_t total = 0;
        for (uint32_t q = 0; q < io.n_seqs; q++) {
            if (!io.seq_lens || io.seq_lens[q] == 0) return mtr_fail(MTR_EINVAL, "forward: packed sequence %u is empty", q);
            total += io.seq_lens[q];
        }
        if (total != n)
            return mtr_fail(MTR_EINVAL, "forward: packed lengths sum to %llu, the batch has %u tokens",
                            (unsigned long long)total, n);
    }
    s->n_qblocks = 0;
    for (uint32_t q = 0, start = 0; start < n; q++) {
        uint32_t len = packed ? io.seq_lens[q] : n;
        for (uint32_t t = 0; t < len; t++) {
            s->pos[start + t] = packed ? t : s->len + start + t;
            s->key0[start + t] = packed ? start : 0;
        }
        for (uint32_t b = 0; b < len; b += Q_BLOCK) {
            uint32_t *tk = s->tasks + 3 * (size_t)s->n_qblocks++;
            tk[0] = start + b;
            tk[1] = start + (b + Q_BLOCK < len ? b + Q_BLOCK : len);
            tk[2] = packed ? start : 0;
        }
        start += len;
    }
    uint32_t stop = c->n_layers;
    bool router_only_last = false;
    if (io.stop_after_layer && io.stop_after_layer < stop) stop = io.stop_after_layer;
    if (io.n_logits == 0 && io.router && io.stop_after_layer == 0) {
        uint32_t last = (uint32_t)c->moe_layer_index[c->n_moe_layers - 1] + 1;
        if (last < stop) stop = last;
        router_only_last = true; /* the experts of the last MoE layer feed nothing anyone reads */
    }
    double t0 = omp_get_wtime();
    const size_t esz = dt == MTR_DTYPE_F32 ? 4 : 2;
    for (uint32_t t = 0; t < n; t++) {
        const unsigned char *row = (const unsigned char *)m->embed.data + (size_t)ids[t] * H * esz;
        mtr_convert(s->h + (size_t)t * H, MTR_DTYPE_F32, row, dt, H);
    }
    rope_tables(s, n);
    s->st.t_other += omp_get_wtime() - t0;
    for (uint32_t l = 0; l < stop; l++) {
        const mtr_layer *L = &m->layers[l];
        double ta = omp_get_wtime();
        for (uint32_t t = 0; t < n; t++) norm(m, s->x + (size_t)t * H, s->h + (size_t)t * H, L->in_norm, L->in_norm_b);
        if (s->mla) mtr_mla_attention(s, m, s->mla, l, n, s->x, s->tmp, s->pos, s->len, s->tasks, s->n_qblocks);
        else attention(s, l, n);
        add_round(s->h, s->tmp, (size_t)n * H, dt);
        for (uint32_t t = 0; t < n; t++)
            norm(m, s->x + (size_t)t * H, s->h + (size_t)t * H, L->post_norm, L->post_norm_b);
        double tm = omp_get_wtime();
        s->st.t_attention += tm - ta;
        if (L->moe) {
            route(s, l, n, &io);
            if (router_only_last && l + 1 == stop) {
                s->st.t_moe += omp_get_wtime() - tm;
                break;
            }
            moe(s, l, n);
        } else
            dense_mlp(s, s->tmp, s->x, n, &L->gate, &L->up, &L->down);
        add_round(s->h, s->tmp, (size_t)n * H, dt);
        s->st.t_moe += omp_get_wtime() - tm;
    }
    if (stop < c->n_layers || packed) s->broken = true;
    s->len += n;
    s->st.tokens += n;
    if (io.n_logits && io.logits) {
        double th = omp_get_wtime();
        uint32_t first = n - io.n_logits;
        for (uint32_t t = 0; t < io.n_logits; t++)
            norm(m, s->x + (size_t)t * H, s->h + (size_t)(first + t) * H, m->final_norm, m->final_norm_b);
        linear(s, io.logits, s->x, io.n_logits, &m->lm_head);
        add_bias(io.logits, m->lm_head_b, io.n_logits, c->vocab_size);
        round_buf(io.logits, (size_t)io.n_logits * c->vocab_size, dt);
        s->st.t_head += omp_get_wtime() - th;
    }
    return 0;
}
