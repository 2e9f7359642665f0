/* moetrace.h — libmoetrace: write and read router-logit traces (trace format v1, traces/FORMAT.md).
 *
 * A run is a directory holding run.json (the manifest) and shard files shard-NNNNNN.h5, each with whole
 * sequences. The writer converts logits to the stored dtype, byte-shuffles and zstd-compresses full chunks in
 * worker threads and writes them with direct chunk writes; a shard is written as *.partial, fsynced and renamed,
 * and the manifest is replaced atomically, so a killed writer loses at most the shard in progress.
 * The reader validates every dimension before allocating, refuses partial shards and unknown major versions,
 * and decodes raw chunks (pread + zstd + unshuffle) in OpenMP workers without going through HDF5's global lock.
 *
 * Conventions: functions return 0 (MTR_OK) or a negative mtr_err; after an error, mtr_errmsg() holds a one-line
 * detail for the calling thread (file, what is wrong). Library code never prints and never exits. Objects are
 * made with _create/_open and released with _destroy/_close, which accept NULL. Out-parameters come first.
 */
#ifndef MOETRACE_H
#define MOETRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mtr_format.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Symbols of the installed libraries carry MTR_API; everything else is hidden (-fvisibility=hidden). */
#ifndef MTR_API
#define MTR_API __attribute__((visibility("default")))
#endif

#define MTR_VERSION_STRING "0.1.0"
#define MTR_MAX_LAYERS 1024
#define MTR_MAX_EXPERTS 65535
#define MTR_MAX_TOPK 64
#define MTR_MAX_NAME 256

/* ---- errors ---------------------------------------------------------------------------------------------- */

#define MTR_ERROR_LIST(X)                                     \
    X(MTR_OK, 0, "success")                                   \
    X(MTR_EINVAL, -1, "invalid argument")                     \
    X(MTR_ENOMEM, -2, "out of memory")                        \
    X(MTR_EIO, -3, "I/O error")                               \
    X(MTR_EFORMAT, -4, "malformed trace")                     \
    X(MTR_EVERSION, -5, "unsupported format version")         \
    X(MTR_EPARTIAL, -6, "partial shard")                      \
    X(MTR_ECORRUPT, -7, "corrupted compressed chunk")         \
    X(MTR_EMISMATCH, -8, "model dimensions differ")           \
    X(MTR_ENOTFOUND, -9, "not found")                         \
    X(MTR_EEXIST, -10, "already exists")                      \
    X(MTR_ETRUNCATED, -11, "truncated file")                  \
    X(MTR_EHDF5, -12, "HDF5 library error")                   \
    X(MTR_EDUP, -13, "duplicate sequence id")                 \
    X(MTR_EDATA, -14, "bad input data")

#define MTR_X_ERR(name, val, str) name = (val),
typedef enum { MTR_ERROR_LIST(MTR_X_ERR) } mtr_err;
#undef MTR_X_ERR

/* Every library of moetrace (libmoetrace and the capture, reduce and stats libraries) reports through this one
 * per-thread channel: a failing function records its detail with mtr_fail() and returns the code; the caller
 * either adds context (mtr_fail(rc, "%s: %s", file, mtr_errmsg()) is safe: the detail is formatted before it is
 * replaced) or passes the code up unchanged. */

/* Static name of an error code ("unknown error" for anything else). */
MTR_API const char *mtr_strerror(int err);
/* Detail of the last error on this thread: one line, no trailing newline; "" if none. Borrowed. */
MTR_API const char *mtr_errmsg(void);
/* Record a one-line detail for mtr_errmsg() (newlines folded into spaces, truncated at 1 KiB) and return err, so
 * `return mtr_fail(MTR_EFORMAT, "%s: ...", path)` reads naturally. The arguments may include mtr_errmsg(). */
MTR_API int mtr_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Forget the detail of this thread (functions that report "" on success call it first). */
MTR_API void mtr_clear_error(void);
/* The exit status a program gives for an error code: 0 success, 1 bad usage (MTR_EINVAL, MTR_EEXIST), 2 bad
 * input data (malformed, truncated, mismatched, missing or duplicated contents), 3 I/O or internal failure
 * (MTR_EIO, MTR_ENOMEM, MTR_EHDF5). The one mapping every moetrace program uses. */
MTR_API int mtr_exit_code(int err);

/* ---- enums as text --------------------------------------------------------------------------------------- */

MTR_API const char *mtr_dtype_name(mtr_dtype t);          /* "f32", "bf16", "f16"; NULL if out of range */
MTR_API int mtr_dtype_parse(mtr_dtype *out, const char *s); /* 0 or MTR_EINVAL */
MTR_API size_t mtr_dtype_size(mtr_dtype t);                /* bytes per element */
MTR_API const char *mtr_score_fn_name(mtr_score_fn f);
MTR_API int mtr_score_fn_parse(mtr_score_fn *out, const char *s);
MTR_API const char *mtr_role_name(mtr_role r);
MTR_API int mtr_role_parse(mtr_role *out, const char *s);
MTR_API const char *mtr_stored_name(mtr_stored s);

/* ---- element conversion (dtype.c) ------------------------------------------------------------------------ */

/* f32 -> bf16 with round-to-nearest-even (NaN stays NaN, quiet). */
MTR_API uint16_t mtr_f32_to_bf16(float x);
MTR_API float mtr_bf16_to_f32(uint16_t h);
/* f32 -> IEEE binary16 with round-to-nearest-even, overflow to Inf. */
MTR_API uint16_t mtr_f32_to_f16(float x);
MTR_API float mtr_f16_to_f32(uint16_t h);
/* Convert n elements between dtypes; src and dst must not overlap. */
MTR_API void mtr_convert(void *dst, mtr_dtype dst_t, const void *src, mtr_dtype src_t, size_t n);
/* HDF5-compatible byte shuffle of n elements of elem_size bytes (output grouped by byte position). */
MTR_API void mtr_shuffle(void *dst, const void *src, size_t n, size_t elem_size);
MTR_API void mtr_unshuffle(void *dst, const void *src, size_t n, size_t elem_size);
/* Fused kernels of the chunk codec. pack: f32 src (n) -> dtype t, byte-shuffled into dst (n * size bytes), the
 * same bytes as mtr_convert then mtr_shuffle. unpack: the first n elements of a byte-shuffled buffer of t whose
 * byte planes are plane_stride elements long -> f32 dst (n), as mtr_unshuffle then mtr_convert. */
MTR_API void mtr_pack_shuffled(void *dst, const float *src, size_t n, mtr_dtype t);
MTR_API void mtr_unpack_shuffled(float *dst, const void *src, size_t n, size_t plane_stride, mtr_dtype t);
/* true if any of n elements of dtype t is NaN or +-Inf */
MTR_API bool mtr_any_nonfinite(const void *src, mtr_dtype t, size_t n);
/* Convert n elements of dtype t to f32 in one pass and report whether any is NaN or +-Inf (dst is then
 * written but should not be used). */
MTR_API bool mtr_widen_checked(float *dst, const void *src, mtr_dtype t, size_t n);

/* ---- model description ----------------------------------------------------------------------------------- */

typedef struct {
    char model_id[MTR_MAX_NAME];   /* e.g. "Qwen/Qwen3-30B-A3B" */
    char model_type[64];           /* config.json model_type, e.g. "qwen3_moe" */
    uint32_t n_layers;             /* MoE layers stored */
    uint32_t n_decoder_layers;     /* decoder layers of the model (>= n_layers) */
    int32_t layer_index[MTR_MAX_LAYERS]; /* MoE layer -> 0-based decoder layer */
    uint32_t n_experts;
    uint32_t top_k;
    mtr_score_fn score_fn;         /* how the model turns logits into weights */
    bool renormalize;              /* top-k weights renormalised to sum 1 */
    bool router_bias;              /* the gate Linear has a bias (included in stored logits) */
    const float *selection_bias;   /* (n_layers, n_experts) selection-only bias, or NULL; borrowed */
    double sparsemixer_eps;        /* score_fn sparsemixer: its jitter eps (router_jitter_noise); 0 otherwise */
} mtr_model_info;

/* Fill defaults: softmax, no renormalisation, identity layer map for n_layers. */
MTR_API void mtr_model_info_init(mtr_model_info *m, const char *model_id, const char *model_type, uint32_t n_layers,
                         uint32_t n_experts, uint32_t top_k);
/* 0 if the model description is self-consistent, else MTR_EINVAL with a detail message. */
MTR_API int mtr_model_info_check(const mtr_model_info *m);
/* The model description recorded at the root of a moetrace HDF5 file (a shard, or moetrace-reduce's
 * summaries.h5). *selection_bias (may be NULL: not read) gets a malloc'd (n_layers, n_experts) copy or NULL.
 * MTR_ENOTFOUND (not an HDF5 file), MTR_EFORMAT (attributes missing or inconsistent). */
MTR_API int mtr_model_info_read(mtr_model_info *out, float **selection_bias, const char *path);

/* Route one token at one MoE layer as the model does: ids (top_k) = the selection, in descending order of the
 * selection score (the score function's output plus the selection-only bias where the model has one; ties go to
 * the lower expert index; NaN never beats a number); weights (top_k, may be NULL) = the weights the model applies
 * (score_fn, renormalize; for sparsemixer its own weights, mtr_sparsemixer, with sparsemixer_eps). z: (n_experts)
 * raw logits; scratch: (n_experts) floats. */
MTR_API void mtr_route(const mtr_model_info *m, uint32_t layer, const float *z, uint16_t *ids, float *weights,
               float *scratch);
/* Sparsemixer's routing weights in its inference form (PhiMoE, FORMAT.md 2.2): w (k) for the experts ids (k), the
 * k largest logits of z (n) in descending order (ties to the lower index, as mtr_topk gives them). Round r keeps,
 * of the experts not chosen in rounds before it, those whose relative gap (z[ids[r]] - z_e) / max(|z_e|,
 * z[ids[r]]) is not above 2 eps and takes the softmax over them at ids[r]. f32 arithmetic as PyTorch's in f32. */
MTR_API void mtr_sparsemixer(float *w, const float *z, uint32_t n, const uint16_t *ids, uint32_t k, double eps);
/* The k largest of score (n) by partial selection: ids (k) in descending order, ties to the lower index, NaN
 * ranked below every number. k <= MTR_MAX_TOPK. */
MTR_API void mtr_topk(uint16_t *ids, const float *score, uint32_t n, uint32_t k);
/* Softmax of z (n) into p with max subtraction; returns the log-sum-exp. */
MTR_API double mtr_softmax(float *p, const float *z, uint32_t n);

/* ---- writer ---------------------------------------------------------------------------------------------- */

typedef struct {
    mtr_dtype stored_dtype;        /* default bf16 */
    bool store_logits;             /* default true: /router/logits */
    bool store_topk;               /* default false: /router/topk_ids + /router/topk_weights */
    int zstd_level;                /* default 1 */
    uint32_t chunk_tokens;         /* default 256 (1..256) */
    uint64_t shard_bytes;          /* rotate to a new shard after this many stored bytes; default 1 GiB */
    int n_threads;                 /* compression workers; 0 = OpenMP default */
    bool resume;                   /* continue an existing run (see mtr_writer_has_seq) */
    bool sync;                     /* fsync shards and manifest (default true) */
    const char *producer;          /* default "libmoetrace" */
    const char *producer_version;  /* default MTR_VERSION_STRING */
    const char *run_id;            /* default: generated */
    const char *corpus_id;         /* default "" */
    const char *capture_settings;  /* JSON text, default "{}" */
    const char *steering;          /* JSON text of the steering spec in force, default "none" */
} mtr_writer_opts;

#define MTR_WRITER_OPTS_INIT                                                                          \
    { MTR_DTYPE_BF16, true, false, MTR_ZSTD_DEFAULT_LEVEL, MTR_CHUNK_TOKENS_MAX, (uint64_t)1 << 30, 0, \
      false, true, NULL, NULL, NULL, NULL, NULL, NULL }

typedef struct {
    uint64_t seq_id;     /* unique within the run */
    const char *unit_id; /* parallel-alignment key */
    const char *lang;    /* FLORES-200 style code */
    const char *dataset; /* domain / task tag */
    uint32_t n_tokens;   /* >= 1 */
    uint32_t flags;      /* MTR_SEQ_* */
} mtr_seq_meta;

typedef struct mtr_writer mtr_writer;

/* Create a run in directory dir (made if missing). Fails with MTR_EEXIST if dir already holds a manifest, unless
 * opts->resume: then the model, the stored dtype, opts->capture_settings and opts->steering must equal the
 * manifest's (MTR_EMISMATCH, naming the first setting that differs), finished shards are kept, leftover
 * *.partial files are removed, and finished shards missing from the manifest (a kill between rename and manifest
 * update) are adopted. The model description is copied. */
MTR_API int mtr_writer_create(mtr_writer **out, const char *dir, const mtr_model_info *model, const mtr_writer_opts *opts);
/* true if seq_id is already stored in a finished shard (resume) or was appended in this session. */
MTR_API bool mtr_writer_has_seq(const mtr_writer *w, uint64_t seq_id);
/* Append one whole sequence. token_ids, positions, roles: (n_tokens), any may be NULL (stored as -1, index,
 * MTR_ROLE_PROMPT). logits: (n_tokens, n_layers, n_experts) in logits_dtype; may be NULL only if neither logits
 * nor top-k are stored. Errors: MTR_EDUP for a seq_id already present, MTR_EINVAL, MTR_EIO, MTR_EHDF5. After an
 * I/O error the writer is unusable except for mtr_writer_close. */
MTR_API int mtr_writer_append(mtr_writer *w, const mtr_seq_meta *meta, const int32_t *token_ids, const int32_t *positions,
                      const uint8_t *roles, const void *logits, mtr_dtype logits_dtype);
/* Finish the shard in progress (if any) now: later sequences go to a new shard. */
MTR_API int mtr_writer_flush(mtr_writer *w);
/* Finish the shard in progress, mark the manifest complete, free the writer. Returns the first error. */
MTR_API int mtr_writer_close(mtr_writer *w);
/* Free without finishing: the shard in progress stays *.partial (what a crash leaves). Accepts NULL. */
MTR_API void mtr_writer_destroy(mtr_writer *w);

typedef struct {
    uint64_t n_sequences, n_tokens;
    uint64_t raw_bytes;    /* f32 logits equivalent: n_tokens * n_layers * n_experts * 4 */
    uint64_t stored_bytes; /* compressed logits bytes written */
    uint32_t n_shards;
} mtr_writer_stats;
MTR_API void mtr_writer_get_stats(const mtr_writer *w, mtr_writer_stats *out);

/* ---- reader ---------------------------------------------------------------------------------------------- */

typedef struct {
    uint64_t seq_id;
    const char *unit_id, *lang, *dataset; /* borrowed from the run */
    uint64_t token_offset;                /* first token row inside its shard */
    uint32_t n_tokens;
    uint32_t flags;
    uint32_t shard;                       /* index into the run's shard list */
    uint32_t run;                         /* which of the opened runs */
} mtr_seq_info;

typedef struct {
    const char *path;
    uint64_t n_sequences, n_tokens;
    uint32_t chunk_tokens, n_chunks;     /* logits chunking (0 chunks when logits are not stored) */
    uint64_t stored_bytes;               /* bytes of the logits chunks */
    uint64_t file_bytes;
    bool has_logits, has_topk;
} mtr_shard_info;

typedef struct {
    char run_id[MTR_MAX_NAME];
    char producer[MTR_MAX_NAME], producer_version[64];
    char corpus_id[MTR_MAX_NAME];
    mtr_dtype stored_dtype;
    mtr_stored stored;
    const char *steering;         /* JSON or "none"; borrowed */
    const char *capture_settings; /* JSON; borrowed */
    bool manifest_complete;       /* the writer closed normally */
    uint32_t n_partial;           /* *.partial files found beside the shards (ignored) */
    uint32_t n_orphans;           /* finished shards on disk that the manifest does not list (ignored) */
} mtr_run_meta;

typedef struct mtr_run mtr_run;

#define MTR_OPEN_ALLOW_PARTIAL 0x1u /* open a *.partial shard given by path (for inspection), instead of refusing */

/* Open a run directory or one shard file. Every shard is validated (format, version, dimensions, chunk index
 * inside the file) before anything is allocated from its numbers. Errors: MTR_ENOTFOUND, MTR_EFORMAT,
 * MTR_EVERSION, MTR_EPARTIAL, MTR_ETRUNCATED, MTR_EHDF5, MTR_EIO. */
MTR_API int mtr_run_open(mtr_run **out, const char *path, unsigned flags);
/* Open several runs as one trace set; their model dimensions must agree (MTR_EMISMATCH). */
MTR_API int mtr_run_open_many(mtr_run **out, const char *const *paths, size_t n_paths, unsigned flags);
MTR_API void mtr_run_close(mtr_run *r);

MTR_API const mtr_model_info *mtr_run_model(const mtr_run *r);
MTR_API const mtr_run_meta *mtr_run_get_meta(const mtr_run *r, size_t run_index);
MTR_API size_t mtr_run_n_runs(const mtr_run *r);
MTR_API size_t mtr_run_n_shards(const mtr_run *r);
MTR_API const mtr_shard_info *mtr_run_shard(const mtr_run *r, size_t shard);
MTR_API size_t mtr_run_n_seqs(const mtr_run *r);
MTR_API const mtr_seq_info *mtr_run_seq(const mtr_run *r, size_t i);

/* Indices of sequences matching all non-NULL filters, in run order. *out is malloc'd (free()); may be NULL
 * when *n_out is 0. */
MTR_API int mtr_run_select(size_t **out, size_t *n_out, const mtr_run *r, const char *lang, const char *dataset,
                   const char *unit_id);

/* Token arrays of sequence i; any output may be NULL. Each is (n_tokens). */
MTR_API int mtr_run_read_tokens(mtr_run *r, size_t i, int32_t *token_ids, int32_t *positions, uint8_t *roles);
/* Logits of sequence i as f32: out is (n_tokens, n_layers, n_experts). MTR_ENOTFOUND if logits are not stored. */
MTR_API int mtr_run_read_logits(mtr_run *r, size_t i, float *out);
/* Stored top-k of sequence i: ids (n_tokens, n_layers, top_k), weights likewise (either may be NULL). */
MTR_API int mtr_run_read_topk(mtr_run *r, size_t i, uint16_t *ids, float *weights);

/* ---- raw chunk access (for reducers that decode in their own threads) ------------------------------------ */

typedef struct {
    uint64_t addr, size;  /* byte range in the shard file */
    uint32_t filter_mask; /* HDF5 filter mask: bit i set = filter i of the pipeline skipped */
    uint32_t tok0, n_tok; /* token rows covered (n_tok < chunk_tokens only in the last chunk) */
} mtr_chunk_ref;

/* Chunk table of a shard's logits: n_chunks entries (mtr_shard_info.n_chunks). Borrowed. */
MTR_API const mtr_chunk_ref *mtr_run_chunks(const mtr_run *r, size_t shard);
/* Read the raw (filtered) bytes of one chunk with pread. Thread-safe. buf must hold ref->size bytes. */
MTR_API int mtr_chunk_read(const mtr_run *r, size_t shard, size_t chunk, void *buf);

typedef struct mtr_decoder mtr_decoder; /* one per thread */
MTR_API int mtr_decoder_create(mtr_decoder **out, const mtr_run *r);
MTR_API void mtr_decoder_destroy(mtr_decoder *d);
/* Decode the raw bytes of a chunk into its stored elements (bf16/f16 as u16, or f32): out holds
 * chunk_tokens * n_layers * n_experts elements. MTR_ECORRUPT if the data does not decompress to that size. */
MTR_API int mtr_decoder_decode(mtr_decoder *d, size_t shard, size_t chunk, const void *raw, void *out);
/* Read + decode + convert to f32 into out (n_tok rows of the chunk only). Thread-safe per decoder. */
MTR_API int mtr_decoder_load_f32(mtr_decoder *d, size_t shard, size_t chunk, float *out);

/* ---- block iterator over sequences ----------------------------------------------------------------------- */

typedef struct {
    size_t seq;            /* index into the run's sequences */
    uint32_t tok0;         /* first token of the block within the sequence */
    uint32_t n_tokens;     /* rows in logits */
    const float *logits;   /* (n_tokens, n_layers, n_experts); valid until the next call; borrowed */
} mtr_block;

typedef struct {
    int n_threads;     /* decode workers; 0 = OpenMP default */
    uint32_t batch;    /* chunks decoded per parallel step; 0 = 4 per thread */
} mtr_iter_opts;
#define MTR_ITER_OPTS_INIT {0, 0}

typedef struct mtr_iter mtr_iter;
/* Iterate the logits of the given sequences (all if seqs is NULL) in run order, block by block, each chunk read
 * and decoded once. */
MTR_API int mtr_iter_create(mtr_iter **out, mtr_run *r, const size_t *seqs, size_t n_seqs, const mtr_iter_opts *opts);
/* 1 and *out filled, 0 at the end, or a negative error. */
MTR_API int mtr_iter_next(mtr_iter *it, mtr_block *out);
MTR_API void mtr_iter_destroy(mtr_iter *it);

/* ---- zstd HDF5 filter ------------------------------------------------------------------------------------ */

/* Register filter 32015 with the HDF5 library of this process (idempotent, thread-safe). */
MTR_API int mtr_h5zstd_register(void);

#ifdef __cplusplus
}
#endif
#endif
