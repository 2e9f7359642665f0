/* model_internal.h — private structures of the inference engine shared by model.c (loading) and
 * model_forward.c (the forward pass). Not installed. */
#ifndef MTR_MODEL_INTERNAL_H
#define MTR_MODEL_INTERNAL_H

#include <jansson.h>

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

/* deepseek_v2 multi-head latent attention weights of one layer */
typedef struct {
    mtr_mat q;                         /* (heads * (nope + rope), hidden) when q_lora_rank is 0 */
    mtr_mat q_a, q_b;                  /* (q_lora, hidden), (heads * (nope + rope), q_lora) */
    mtr_mat kv_a;                      /* (kv_lora + rope, hidden): kv_a_proj_with_mqa */
    mtr_mat kv_b;                      /* (heads * (nope + v), kv_lora) */
    float *q_a_norm, *kv_a_norm;       /* (q_lora), (kv_lora) RMSNorm weights */
    float *q_a_bias, *kv_a_bias;       /* attention_bias, or NULL */
} mtr_mla;

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
    float *in_norm_b, *post_norm_b;    /* LayerNorm biases (hidden) (phimoe), or NULL */
    mtr_mla *mla;                      /* deepseek_v2, or NULL */
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
    float *final_norm_b;               /* (hidden) LayerNorm bias (phimoe), or NULL */
    float *lm_head_b;                  /* (vocab) lm_head.bias (phimoe lm_head_bias), or NULL */
    float *inv_freq_long;              /* longrope: (head_dim / 2) the long factors' frequencies; inv_freq the short */
    float *selection_bias;             /* deepseek_v2 noaux_tc: (n_moe_layers, n_experts) e_score_correction_bias */
    void **copies;                     /* aligned copies of weights stored at offsets their dtype cannot be read at */
    size_t n_copies;
};

/* Binding checkpoint tensors to a model (model.c): the first error is kept in rc (later calls do nothing), every
 * tensor bound is counted in used, so the loader can refuse tensors nobody claimed. */
typedef struct {
    mtr_model *m;
    const char *dir;
    size_t used;
    int rc;
    bool f32_ok;                       /* the next tensor may also be F32 in a bf16/f16 model */
} mtr_binder;
/* A 2-D tensor of the model dtype with this shape (zeroed on error). */
mtr_mat mtr_bind_mat(mtr_binder *b, const char *name, uint32_t rows, uint32_t cols);
/* A 1-D tensor of the model dtype, widened into a malloc'd f32 copy (NULL on error). */
float *mtr_bind_vec(mtr_binder *b, const char *name, uint32_t n);
/* As mtr_bind_vec, also accepting an F32 tensor in a bf16/f16 model (parameters kept in f32, as DeepSeek's
 * correction bias). */
float *mtr_bind_vec_f32(mtr_binder *b, const char *name, uint32_t n);
/* An allocation failed: the load fails with MTR_ENOMEM (unless it failed already). */
void mtr_bind_nomem(mtr_binder *b);

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

/* phimoe (model_phimoe.c). Config: its keys into c (0 or MTR_EFORMAT naming path); LongRoPE from rope_scaling rs
 * (and root's original_max_position_embeddings). */
int mtr_phimoe_config(mtr_model_config *c, json_t *root, const char *path);
int mtr_longrope_config(mtr_model_config *c, json_t *rs, json_t *root, const char *path);
/* inv_freq from the short factors, inv_freq_long (allocated here) from the long ones. */
int mtr_longrope_frequencies(mtr_model *m);
/* cos/sin (n, head_dim / 2) of tokens at pos (n) whose sequences start at key0 (n): long factors and mscale
 * where the sequence's length in this forward exceeds the original, or as force says (0 short, 1 long; -1 by
 * length). */
void mtr_longrope_tables(const mtr_model *m, float *cs, float *sn, const uint32_t *pos, const uint32_t *key0,
                         uint32_t n, int force);
/* nn.LayerNorm of in (d) with weight w and bias b into out (may alias in), rounded to dt once. */
void mtr_layernorm(float *out, const float *in, const float *w, const float *b, uint32_t d, double eps,
                   mtr_dtype dt);
/* sparsemixer of the router logits z (n_experts) of MoE layer `layer`: ids (2) and weights (2) in the model
 * dtype; logits of a layer steer targets are f32 values and take the f32 rule. scratch: (n_experts). */
void mtr_phimoe_route(const mtr_model *m, uint32_t layer, const float *z, const mtr_steer *steer, uint16_t *ids,
                      float *w, float *scratch);
/* the routing description: sparsemixer with the config's eps */
void mtr_phimoe_info(mtr_model *m);

/* Y (n, W->rows) = X (n, W->cols) W^T with the session's threads and scratch (model_forward.c). */
void mtr_session_linear(mtr_session *s, float *Y, const float *X, uint32_t n, const mtr_mat *W);

/* deepseek_v2 (model_deepseek.c). Config keys into c; the weights of layer l beyond the shared ones (attention,
 * shared experts, correction bias); the routing description. */
int mtr_deepseek_config(mtr_model_config *c, json_t *root, const char *path);
void mtr_deepseek_bind_attention(mtr_binder *b, mtr_model *m, uint32_t l);
void mtr_deepseek_bind_moe(mtr_binder *b, mtr_model *m, uint32_t l);
void mtr_deepseek_info(mtr_model *m);
void mtr_deepseek_free_layer(mtr_layer *L);
/* Per-session state: the expanded K/V cache and scratch; *bytes grows by what is allocated. */
typedef struct mtr_mla_state mtr_mla_state;
int mtr_mla_state_create(mtr_mla_state **out, const mtr_model *m, uint32_t max_tokens, uint32_t max_batch, int nt,
                         uint64_t *bytes);
void mtr_mla_state_destroy(mtr_mla_state *st);
/* Attention of layer l for the n tokens x (n, hidden) into out (n, hidden): positions pos (n), len0 cached
 * positions before them, query blocks tasks (nqb, 3) = first token, end, first key (as model_forward.c). */
void mtr_mla_attention(mtr_session *s, const mtr_model *m, mtr_mla_state *st, uint32_t l, uint32_t n,
                       const float *x, float *out, const uint32_t *pos, uint32_t len0, const uint32_t *tasks,
                       uint32_t nqb);
/* Routing of the f32 router logits z (n_experts) of MoE layer ml: ids (top_k), f32 weights (top_k). */
void mtr_deepseek_route(const mtr_model *m, uint32_t ml, const float *z, uint16_t *ids, float *w, float *scratch);

#endif
