/* model_internal.h — private structures of the inference engine shared by model.c (loading) and
 * model_forward.c (the forward pass). Not installed. */
#ifndef MTR_MODEL_INTERNAL_H
#define MTR_MODEL_INTERNAL_H

#include "mtr_model.h"

/* A Linear weight (out, in) row-major as PyTorch stores it, in the mapping, in its stored dtype; or MXFP4
 * (scales set): data holds each row's cols / 32 blocks of 16 bytes, two e2m1 values a byte (low nibble first),
 * scales one e8m0 byte per block (model_gptoss.c). */
typedef struct {
    const void *data;
    mtr_dtype dtype;
    uint32_t rows, cols; /* out_features, in_features */
    const uint8_t *scales; /* (rows, cols / 32) MXFP4, or NULL */
} mtr_mat;

typedef struct {
    float *in_norm, *post_norm;        /* (hidden) */
    mtr_mat q, k, v, o;
    float *q_bias, *k_bias, *v_bias, *o_bias; /* or NULL */
    float *q_norm, *k_norm;            /* qwen3_moe: (head_dim); olmoe: (heads*head_dim) / (kv*head_dim); or NULL */
    bool moe;
    int32_t moe_index;                 /* index among MoE layers, -1 for dense */
    mtr_mat router;                    /* (n_experts, hidden) */
    mtr_mat *e_gate, *e_up, *e_down;   /* (n_experts) */
    mtr_mat gate, up, down;            /* dense MLP, or the shared expert (qwen2_moe) */
    bool has_mlp;                      /* gate/up/down present (dense layer or shared expert) */
    float *shared_gate;                /* qwen2_moe: (hidden), the Linear(hidden, 1) */
    uint32_t window;                   /* sliding window of this layer (key j visible to i when i - j < window);
                                          0 = full causal attention */
    float *sinks;                      /* gpt_oss: (n_heads) attention sink logits, or NULL */
    float *router_bias;                /* gpt_oss: (n_experts), or NULL */
    float *e_gu_bias, *e_down_bias;    /* gpt_oss: (n_experts, 2 * moe_intermediate), (n_experts, hidden); e_gate
                                          holds gate_up_proj (2 * moe_intermediate rows, gate and up interleaved) */
} mtr_layer;

struct mtr_model {
    mtr_model_config cfg;
    mtr_st *st;
    mtr_mat embed;                     /* (vocab, hidden) */
    mtr_mat lm_head;                   /* (vocab, hidden), the embedding when tied */
    float *final_norm;                 /* (hidden) */
    mtr_layer *layers;                 /* (n_layers) */
    float *inv_freq;                   /* (head_dim / 2) */
    float attn_factor;                 /* rope cos/sin scale (yarn) */
    mtr_model_info info;               /* routing semantics */
    uint64_t n_params, weight_bytes;
    int n_threads;
};

/* Binding checkpoint tensors to a model (model.c): the first error is kept in rc (later calls do nothing), every
 * tensor bound is counted in used, so the loader can refuse tensors nobody claimed. */
typedef struct {
    mtr_model *m;
    const char *dir;
    size_t used;
    int rc;
} mtr_binder;
/* A 2-D tensor of the model dtype with this shape (zeroed on error). */
mtr_mat mtr_bind_mat(mtr_binder *b, const char *name, uint32_t rows, uint32_t cols);
/* A 1-D tensor of the model dtype, widened into a malloc'd f32 copy (NULL on error). */
float *mtr_bind_vec(mtr_binder *b, const char *name, uint32_t n);

/* gpt_oss (model_gptoss.c). Config: the keys of config.json beyond the common ones (layer_types, swiglu), into c;
 * 0 or MTR_EFORMAT / MTR_ENOMEM naming path. Load: the dtype from the stored tensors when config.json names none
 * (the published checkpoint does not). Bind: layer l's sinks, router bias and MXFP4 experts. */
int mtr_gptoss_config(mtr_model_config *c, const void *json_root, const char *path);
int mtr_gptoss_prepare(mtr_model *m, const char *dir);
void mtr_gptoss_bind_layer(mtr_binder *b, uint32_t l);
/* MXFP4 rows [r0, r0 + n) of W widened to f32 into dst (n, W->cols). */
void mtr_mxfp4_rows(float *dst, const mtr_mat *W, uint32_t r0, uint32_t n);
/* The experts' clamped SwiGLU over rows (n) of gu (stride ld) as gate_up_proj outputs (2 * NI, gate and up
 * interleaved) plus bias (2 * NI): each row's first NI values become (clamp(up) + 1) * glu(clamp(gate)), with the
 * model-dtype roundings of the eager code. */
void mtr_gptoss_glu(float *gu, size_t ld, uint32_t n, uint32_t NI, const float *bias, float alpha, float limit,
                    mtr_dtype dt);
/* Softmax of the visible scores row (n), scaled, with one more logit, the head's sink, in the denominator
 * (dropped from the output); bf16/f16: scores, shift and probabilities rounded as the eager code does. */
void mtr_gptoss_softmax_sink(float *row, uint32_t n, float scale, float sink, mtr_dtype dt);

/* f32 element kernels (model_kernels.c, vectorised): softmax of row (n) scaled by scale, in place; RMSNorm of in
 * (d) times w into out (may alias in); g (n) = silu(g) * u. */
void mtr_mk_softmax(float *row, uint32_t n, float scale);
void mtr_mk_rmsnorm(float *out, const float *in, const float *w, uint32_t d, float eps);
void mtr_mk_silu_mul(float *g, const float *u, size_t n);

#endif
