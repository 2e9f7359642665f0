/* mtr_model.h — native inference for Hugging Face Mixture-of-Experts checkpoints (docs/ARCHITECTURE.md §5).
 *
 * A checkpoint directory exactly as the Hub ships it: config.json, model.safetensors or model-*.safetensors +
 * model.safetensors.index.json. Weights are memory-mapped and used in their stored dtype (bf16, f16, f32): matrix
 * products convert a bf16/f16 weight block to f32 into per-thread scratch right before OpenBLAS sgemm, so a bf16
 * model is never copied to f32 as a whole. Activations are f32; for bf16/f16 models they are rounded to the model
 * dtype at the points where the Hugging Face eager code materialises a tensor in that dtype (linear outputs, norm
 * outputs, residual sums), so the router logits captured are the gate outputs in the model's dtype.
 *
 * Architectures (model_type): qwen3_moe, olmoe, mixtral, qwen2_moe, gpt_oss (MXFP4 experts dequantised a weight
 * block at a time into the same scratch), phimoe, deepseek_v2 — faithful to the transformers modeling code.
 *
 * Conventions as libmoetrace (traces/moetrace.h): 0 or a negative mtr_err; the one-line detail is mtr_errmsg()
 * and names the file and what is wrong. Nothing prints or exits. A model is immutable after loading and may be
 * shared by threads; a session (KV cache + scratch) belongs to one caller at a time.
 */
#ifndef MTR_MODEL_H
#define MTR_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moetrace.h"
#include "mtr_steer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- safetensors ----------------------------------------------------------------------------------------- */

#define MTR_ST_DTYPE_LIST(X) \
    X(MTR_ST_F32, "F32", 4)  \
    X(MTR_ST_F16, "F16", 2)  \
    X(MTR_ST_BF16, "BF16", 2) \
    X(MTR_ST_F64, "F64", 8)  \
    X(MTR_ST_I64, "I64", 8)  \
    X(MTR_ST_I32, "I32", 4)  \
    X(MTR_ST_I16, "I16", 2)  \
    X(MTR_ST_I8, "I8", 1)    \
    X(MTR_ST_U8, "U8", 1)    \
    X(MTR_ST_BOOL, "BOOL", 1)

#define MTR_X_ENUM(name, str, size) name,
typedef enum { MTR_ST_DTYPE_LIST(MTR_X_ENUM) MTR_ST_DTYPE_COUNT } mtr_st_dtype;
#undef MTR_X_ENUM

#define MTR_ST_MAX_DIMS 8

typedef struct {
    const char *name;              /* borrowed */
    mtr_st_dtype dtype;
    uint32_t ndim;
    uint64_t shape[MTR_ST_MAX_DIMS]; /* (ndim) */
    uint64_t n_elems;
    const void *data;              /* inside the read-only mapping; aligned to its element size only when the
                                      file aligns it (mtr_st_to_f32 reads any offset) */
    uint64_t nbytes;
    uint32_t file;                 /* index of the shard file */
} mtr_st_tensor;

typedef struct mtr_st mtr_st;

/* Open a safetensors file, or a directory holding model.safetensors or model.safetensors.index.json with its
 * shards. Every header is validated before use: length inside the file, JSON object, known dtypes, shapes,
 * offsets inside the data area and matching dtype x shape, no overlapping tensors, no tensor named twice, every
 * index entry present in the shard it names. Files are memory-mapped read-only. Errors: MTR_ENOTFOUND,
 * MTR_EIO, MTR_EFORMAT, MTR_ETRUNCATED. */
int mtr_st_open(mtr_st **out, const char *path);
void mtr_st_close(mtr_st *st); /* accepts NULL */
size_t mtr_st_count(const mtr_st *st);
const mtr_st_tensor *mtr_st_get(const mtr_st *st, size_t i);
/* NULL when absent. */
const mtr_st_tensor *mtr_st_find(const mtr_st *st, const char *name);
/* Value of a "__metadata__" key of the (first) file; NULL when absent. Borrowed. */
const char *mtr_st_metadata(const mtr_st *st, const char *key);
/* Path of shard file i (for messages). */
const char *mtr_st_file_path(const mtr_st *st, uint32_t file);
/* Copy a tensor into f32 (F32/F16/BF16/F64 and the integer dtypes); dst holds t->n_elems floats. */
void mtr_st_to_f32(float *dst, const mtr_st_tensor *t);
const char *mtr_st_dtype_name(mtr_st_dtype d);

/* ---- configuration --------------------------------------------------------------------------------------- */

#define MTR_ARCH_LIST(X)                  \
    X(MTR_ARCH_QWEN3_MOE, "qwen3_moe")    \
    X(MTR_ARCH_OLMOE, "olmoe")            \
    X(MTR_ARCH_MIXTRAL, "mixtral")        \
    X(MTR_ARCH_QWEN2_MOE, "qwen2_moe")    \
    X(MTR_ARCH_GPT_OSS, "gpt_oss")        \
    X(MTR_ARCH_PHIMOE, "phimoe")          \
    X(MTR_ARCH_DEEPSEEK_V2, "deepseek_v2")

#define MTR_X_ENUM(name, str) name,
typedef enum { MTR_ARCH_LIST(MTR_X_ENUM) MTR_ARCH_COUNT } mtr_arch;
#undef MTR_X_ENUM

typedef enum {
    MTR_ROPE_DEFAULT,
    MTR_ROPE_LINEAR,
    MTR_ROPE_DYNAMIC,
    MTR_ROPE_YARN,
    MTR_ROPE_LLAMA3,
    MTR_ROPE_LONGROPE /* short/long factors and mscales by the forward's length vs rope_orig_max_pos */
} mtr_rope_type;

typedef struct {
    mtr_arch arch;
    char model_type[32];
    char name_or_path[256];     /* config.json _name_or_path, else the directory name */
    mtr_dtype dtype;            /* weights' dtype (torch_dtype; the stored tensors must agree) */
    uint32_t vocab_size, hidden_size, n_layers, n_heads, n_kv_heads, head_dim;
    uint32_t intermediate_size;        /* dense MLP layers */
    uint32_t moe_intermediate_size;    /* each expert */
    uint32_t shared_expert_intermediate_size; /* qwen2_moe; 0 = none */
    uint32_t n_experts, top_k;
    bool norm_topk_prob;        /* renormalise the top-k softmax weights */
    bool qkv_bias;              /* q/k/v projections have biases (qwen2_moe; attention_bias) */
    bool o_bias;                /* o_proj bias (attention_bias where it covers o_proj) */
    float clip_qkv;             /* olmoe: clamp q/k/v to [-c, c]; 0 = off */
    double rms_eps;
    double rope_theta;
    mtr_rope_type rope_type;
    double rope_factor;         /* linear/dynamic/yarn/llama3 */
    double rope_orig_max_pos;   /* original_max_position_embeddings (yarn, llama3, dynamic) */
    double rope_beta_fast, rope_beta_slow, rope_low_freq_factor, rope_high_freq_factor;
    bool rope_yarn_truncate;    /* yarn: correction range rounded to whole dimensions ("truncate", default true) */
    double rope_attention_factor; /* yarn: mscale applied to cos/sin; 1 otherwise */
    uint32_t max_position_embeddings;
    uint32_t sliding_window;    /* 0 = full attention */
    bool tie_word_embeddings;
    int32_t bos_token_id, eos_token_id; /* -1 if none */
    uint32_t n_moe_layers;
    bool *is_moe;               /* (n_layers) */
    int32_t *moe_layer_index;   /* (n_moe_layers) MoE layer -> 0-based decoder layer */
    bool *is_sliding;           /* (n_layers) layers with sliding-window attention (gpt_oss layer_types), or NULL:
                                   all of them when sliding_window > 0 */
    float swiglu_alpha, swiglu_limit; /* gpt_oss experts' clamped SwiGLU */
    bool dtype_implicit;        /* config.json names no dtype: that of the stored tensors (gpt_oss) */
    /* phimoe */
    bool norm_bias;             /* LayerNorm with bias in place of RMSNorm (decoder and final norms) */
    bool lm_head_bias;          /* lm_head.bias */
    double router_jitter;       /* sparsemixer's eps (router_jitter_noise) */
    float *rope_short_factor, *rope_long_factor; /* longrope: (head_dim / 2) */
    double rope_short_mscale, rope_long_mscale;  /* longrope: cos/sin scale of short and long forwards */
    /* deepseek_v2: multi-head latent attention (head_dim is qk_rope_head_dim, the rotary part) */
    uint32_t q_lora_rank;       /* 0: q_proj, else q_a_proj -> RMSNorm -> q_b_proj */
    uint32_t kv_lora_rank, qk_nope_head_dim, v_head_dim;
    double attn_scale;          /* softmax scale: (nope + rope)^-0.5, times YaRN's mscale(mscale_all_dim)^2 */
    uint32_t n_shared_experts;  /* ungated shared MLP of n x moe_intermediate_size; 0 = none */
    uint32_t first_k_dense_replace, moe_layer_freq;
    uint32_t n_group, topk_group;
    uint32_t topk_method;       /* 0 greedy, 1 group_limited_greedy, 2 noaux_tc */
    bool score_sigmoid;         /* scoring_func sigmoid (else softmax) */
    double routed_scaling_factor;
} mtr_model_config;

/* ---- model ----------------------------------------------------------------------------------------------- */

typedef struct mtr_model mtr_model;

typedef struct {
    int n_threads;        /* OpenMP threads for the forward; 0 = OpenMP default */
} mtr_model_opts;
#define MTR_MODEL_OPTS_INIT {0}

/* Load the checkpoint in dir: parse config.json, open the weights, and check that every tensor the architecture
 * needs is present with the shape the config implies and the model dtype (extra tensors are an error too, so a
 * checkpoint of another architecture is not silently half-used). Errors: MTR_ENOTFOUND, MTR_EIO, MTR_EFORMAT
 * (config or weights malformed, unsupported model_type or rope scaling), MTR_EMISMATCH (a shape or dtype
 * disagreeing with config.json), MTR_ENOMEM. */
int mtr_model_load(mtr_model **out, const char *dir, const mtr_model_opts *opts);
void mtr_model_destroy(mtr_model *m); /* accepts NULL */
const mtr_model_config *mtr_model_get_config(const mtr_model *m);
/* The routing description of this model for traces and steering files (MoE layers only, the model's score
 * function and renormalisation). model_id: the name recorded in traces. */
void mtr_model_info_of(mtr_model_info *out, const mtr_model *m, const char *model_id);
/* Parameter count and the bytes of the mapped weights. */
uint64_t mtr_model_n_params(const mtr_model *m);
uint64_t mtr_model_weight_bytes(const mtr_model *m);

/* ---- sessions and the forward pass ----------------------------------------------------------------------- */

typedef struct mtr_session mtr_session;

/* A KV cache for sequences of up to max_tokens positions plus scratch for batches of up to max_batch tokens.
 * Errors: MTR_EINVAL (0 sizes, max_tokens beyond the model's positions is allowed), MTR_ENOMEM. */
int mtr_session_create(mtr_session **out, const mtr_model *m, uint32_t max_tokens, uint32_t max_batch);
void mtr_session_destroy(mtr_session *s); /* accepts NULL */
/* Forget the cached positions (next forward starts at position 0). */
void mtr_session_reset(mtr_session *s);
/* Drop cached positions from n on (n <= the current length): for scoring several continuations of one prompt. */
int mtr_session_truncate(mtr_session *s, uint32_t n);
uint32_t mtr_session_length(const mtr_session *s);
/* Bytes the session allocated (KV cache, activations, scratch): with the mapped weights, the engine's memory. */
uint64_t mtr_session_bytes(const mtr_session *s);

typedef struct {
    float *router;           /* (n, n_moe_layers, n_experts) raw gate outputs, or NULL; in f32 holding the
                                model-dtype values; under steering still the values before the intervention
                                (traces/FORMAT.md 2.2: the steered ones follow from the recorded spec) */
    float *logits;           /* (n_logits, vocab) final logits of the last n_logits tokens, or NULL */
    uint32_t n_logits;       /* 0: skip the LM head (and every layer after the last MoE layer when router is
                                set and logits is not) */
    const mtr_steer *steer;  /* applied to the router logits of its target layers before top-k, or NULL */
    uint64_t *steer_rng;     /* (n_moe_layers) gaussian-eps generator states, one per MoE layer (start them at
                                mtr_steer_layer_seed(steer->seed, l)), or NULL (eps = 0) */
    const uint32_t *seq_lens; /* packed prefill: the batch is n_seqs independent sequences of these lengths
                                 (summing to n), each from position 0, attending only within itself; needs
                                 an empty session and leaves it unable to continue (reset it) */
    uint32_t n_seqs;         /* 0 or 1: the batch continues the session's one sequence */
    uint32_t stop_after_layer; /* 0: automatic — all layers, except that a forward with router set and n_logits
                                  0 stops after the last MoE layer's router (the session then needs a reset);
                                  else run decoder layers [0, stop_after_layer) only */
} mtr_forward_io;
#define MTR_FORWARD_IO_INIT {NULL, NULL, 0, NULL, NULL, NULL, 0, 0}

/* Run ids (n tokens, positions continuing the session) through the model, appending their keys and values to the
 * cache. Errors: MTR_EINVAL (n == 0, n > max_batch, cache full, an id outside the vocabulary, n_logits > n, a
 * steering file for another model). */
int mtr_model_forward(mtr_session *s, const int32_t *ids, uint32_t n, const mtr_forward_io *io);

/* Per-phase wall time of the forwards of this session so far (seconds): attention block, MoE/MLP block, LM head,
 * and the number of floating-point operations performed by matrix products (for GFLOP/s). */
typedef struct {
    double t_attention, t_moe, t_head, t_other;
    double flops;
    uint64_t tokens;
} mtr_forward_stats;
void mtr_session_stats(const mtr_session *s, mtr_forward_stats *out);

#ifdef __cplusplus
}
#endif

#endif
