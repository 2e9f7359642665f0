/* mtr_format.h — on-disk names and constants of trace format v1.
 *
 * The single source of truth for every path, attribute name and enum of traces/FORMAT.md. Writers, readers,
 * reduce and stats include this header and never spell an on-disk name themselves. X-macro lists keep enum
 * values and their printed names in step; enums only grow at the end.
 */
#ifndef MTR_FORMAT_H
#define MTR_FORMAT_H

#define MTR_FORMAT_NAME "moetrace"
#define MTR_FORMAT_VERSION 1 /* bumped only for structural changes (FORMAT.md, "Versioning") */
#define MTR_FORMAT_MINOR 1   /* new optional metadata; readers accept any minor of their major */

#define MTR_ZSTD_FILTER_ID 32015      /* registered HDF5 filter id for zstd (cd_values[0] = level) */
#define MTR_ZSTD_DEFAULT_LEVEL 1
#define MTR_CHUNK_TOKENS_MAX 256      /* logits chunk: (<= 256 tokens, n_layers, n_experts) */
#define MTR_META_CHUNK 65536          /* chunk length of 1-D /seq and /tok datasets */

/* ---- file names inside a run directory ---- */
#define MTR_MANIFEST_NAME "run.json"
#define MTR_SHARD_FMT "shard-%06u.h5"
#define MTR_PARTIAL_SUFFIX ".partial"

/* ---- root attributes of a shard ---- */
#define MTR_A_FORMAT "format"
#define MTR_A_FORMAT_VERSION "format_version"
#define MTR_A_FORMAT_MINOR "format_minor"
#define MTR_A_PRODUCER "producer"
#define MTR_A_PRODUCER_VERSION "producer_version"
#define MTR_A_RUN_ID "run_id"
#define MTR_A_SHARD_INDEX "shard_index"
#define MTR_A_MODEL_ID "model_id"
#define MTR_A_MODEL_TYPE "model_type"
#define MTR_A_N_LAYERS "n_layers"
#define MTR_A_N_DECODER_LAYERS "n_decoder_layers"
#define MTR_A_LAYER_INDEX "layer_index"
#define MTR_A_N_EXPERTS "n_experts"
#define MTR_A_TOP_K "top_k"
#define MTR_A_SCORE_FN "score_fn"
#define MTR_A_RENORMALIZE "renormalize"
#define MTR_A_ROUTER_BIAS "router_bias"
#define MTR_A_SELECTION_BIAS "selection_bias"
#define MTR_A_SPARSEMIXER_EPS "sparsemixer_eps" /* format 1.1: present iff score_fn is sparsemixer */
#define MTR_A_STORED_DTYPE "stored_dtype"
#define MTR_A_STORED "stored"
#define MTR_A_STEERING "steering"
#define MTR_A_CORPUS_ID "corpus_id"
#define MTR_A_CAPTURE_SETTINGS "capture_settings"
#define MTR_A_N_SEQUENCES "n_sequences"
#define MTR_A_N_TOKENS "n_tokens"
#define MTR_A_CREATED "created"

/* attribute on /router/logits naming the element type of the stored integers */
#define MTR_A_DTYPE "dtype"

/* ---- groups and datasets ---- */
#define MTR_G_SEQ "seq"
#define MTR_D_SEQ_ID "seq/seq_id"
#define MTR_D_UNIT_ID "seq/unit_id"
#define MTR_D_LANG "seq/lang"
#define MTR_D_DATASET "seq/dataset"
#define MTR_D_TOKEN_OFFSET "seq/token_offset"
#define MTR_D_SEQ_N_TOKENS "seq/n_tokens"
#define MTR_D_FLAGS "seq/flags"
#define MTR_G_TOK "tok"
#define MTR_D_TOKEN_ID "tok/token_id"
#define MTR_D_POSITION "tok/position"
#define MTR_D_ROLE "tok/role"
#define MTR_G_ROUTER "router"
#define MTR_D_LOGITS "router/logits"
#define MTR_D_TOPK_IDS "router/topk_ids"
#define MTR_D_TOPK_WEIGHTS "router/topk_weights"
#define MTR_D_SELECTION_BIAS "router/selection_bias"

/* ---- enums (X-macros: value, printed name) ---- */
#define MTR_DTYPE_LIST(X) \
    X(MTR_DTYPE_F32, "f32")   \
    X(MTR_DTYPE_BF16, "bf16") \
    X(MTR_DTYPE_F16, "f16")

#define MTR_SCORE_FN_LIST(X)                 \
    X(MTR_SCORE_SOFTMAX, "softmax")          \
    X(MTR_SCORE_SIGMOID, "sigmoid")          \
    X(MTR_SCORE_TOPK_SOFTMAX, "topk_softmax") \
    X(MTR_SCORE_SPARSEMIXER, "sparsemixer")

#define MTR_ROLE_LIST(X)                  \
    X(MTR_ROLE_TEMPLATE, "template")      \
    X(MTR_ROLE_PROMPT, "prompt")          \
    X(MTR_ROLE_RESPONSE, "response")      \
    X(MTR_ROLE_GENERATED, "generated")

#define MTR_STORED_LIST(X)                                  \
    X(MTR_STORED_LOGITS, "pre_activation_logits")           \
    X(MTR_STORED_TOPK, "topk")                              \
    X(MTR_STORED_LOGITS_TOPK, "pre_activation_logits+topk")

#define MTR_X_ENUM(name, str) name,
typedef enum { MTR_DTYPE_LIST(MTR_X_ENUM) MTR_DTYPE_COUNT } mtr_dtype;
typedef enum { MTR_SCORE_FN_LIST(MTR_X_ENUM) MTR_SCORE_FN_COUNT } mtr_score_fn;
typedef enum { MTR_ROLE_LIST(MTR_X_ENUM) MTR_ROLE_COUNT } mtr_role;
typedef enum { MTR_STORED_LIST(MTR_X_ENUM) MTR_STORED_COUNT } mtr_stored;
#undef MTR_X_ENUM

/* /seq/flags bits */
#define MTR_SEQ_TRUNCATED 0x1u  /* the producer cut the sequence short */
#define MTR_SEQ_STEERED 0x2u    /* routing was steered while this sequence was captured */
#define MTR_SEQ_NONFINITE 0x4u  /* at least one logit is NaN or Inf */

/* ---- outputs of moetrace-reduce (reduce/SUMMARIES.md): written by reduce, read by stats and the notebooks ---- */
#define MTR_OUT_SUMMARIES "summaries.h5"
#define MTR_OUT_TABLES "tables.h5"
#define MTR_TSV_DIV_FROM_EN "div_from_en.tsv"
#define MTR_TSV_UNITS_MISSING_EN "units_missing_en.tsv"
#define MTR_TSV_DIV_PAIRWISE "div_pairwise.tsv"
#define MTR_TSV_ENTROPY "entropy.tsv"
#define MTR_TSV_JACCARD "jaccard.tsv"
#define MTR_TSV_FREQ "freq.tsv"
#define MTR_TSV_DELTA "delta.tsv"
#define MTR_TSV_RD "rd.tsv"
#define MTR_TSV_SPECIALISATION "specialisation.tsv"
#define MTR_TSV_TOP_EXPERTS "top_experts.tsv"
/* datasets of tables.h5 */
#define MTR_T_LANGS "langs"
#define MTR_T_SLICES "slices"
#define MTR_T_DIV_FROM_EN "div_from_en"
#define MTR_T_DIV_PAIRWISE "div_pairwise"
#define MTR_T_FREQ "freq"
#define MTR_T_WEIGHT "weight"
#define MTR_T_ENTROPY "entropy"

#endif
