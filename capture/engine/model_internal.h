/* model_internal.h — private structures of the inference engine shared by model.c (loading) and
 * model_forward.c (the forward pass). Not installed. */
#ifndef MTR_MODEL_INTERNAL_H
#define MTR_MODEL_INTERNAL_H

#include "mtr_model.h"

/* A Linear weight (out, in) row-major as PyTorch stores it, in the mapping, in its stored dtype. */
typedef struct {
    const void *data;
    mtr_dtype dtype;
    uint32_t rows, cols; /* out_features, in_features */
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

/* f32 element kernels (model_kernels.c, vectorised): softmax of row (n) scaled by scale, in place; RMSNorm of in
 * (d) times w into out (may alias in); g (n) = silu(g) * u. */
void mtr_mk_softmax(float *row, uint32_t n, float scale);
void mtr_mk_rmsnorm(float *out, const float *in, const float *w, uint32_t d, float eps);
void mtr_mk_silu_mul(float *g, const float *u, size_t n);

#endif
