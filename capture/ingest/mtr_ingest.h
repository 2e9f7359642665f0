/* mtr_ingest.h — the ingest stream (traces/INGEST.md is normative): router logits produced by another engine
 * (PyTorch, vLLM, llama.cpp), framed as a header with the model description and one frame per sequence, decoded
 * here and written as a moetrace run exactly as the native engine writes it.
 *
 * Three layers, each usable alone:
 *   - the encoder (mtr_ingest_encode_*): bytes of a header, a sequence frame and the end frame;
 *   - the decoder (mtr_ingest_decoder_*): pulls bytes from a read callback, validates every size against the
 *     limits and the header before allocating, and yields sequences; a bad frame is reported with its offset;
 *   - the pipeline (mtr_ingest_run): a reader thread decodes frames from a file descriptor into a fixed buffer
 *     budget while the calling thread appends them to a mtr_writer; when the writer is behind, the reader stops
 *     reading (back-pressure on the producer) — nothing is dropped.
 *
 * Conventions as moetrace.h: 0 (or a count) / a negative mtr_err; after an error mtr_errmsg() holds a
 * one-line detail for the calling thread. Nothing prints or exits. Objects are freed with _destroy (accepts NULL).
 */
#ifndef MTR_INGEST_H
#define MTR_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "moetrace.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- format constants (INGEST.md §2-§4) ------------------------------------------------------------------ */

#define MTR_INGEST_MAGIC "\x89MTRING\n"    /* 8 bytes, first in the stream */
#define MTR_INGEST_MAGIC_LEN 8
#define MTR_INGEST_VERSION 1               /* major: bumped only for structural changes */
#define MTR_INGEST_MINOR 0
#define MTR_INGEST_PRELUDE_BYTES 16        /* stream prelude: magic, u16 major, u16 minor, u32 json_len */
#define MTR_INGEST_FRAME_HEAD_BYTES 16     /* frame: tag[4], u32 reserved, u64 body_len */
#define MTR_INGEST_SEQ_FIXED_BYTES 32      /* fixed part of a sequence body */
#define MTR_INGEST_END_BODY_BYTES 8
#define MTR_INGEST_TAG_SEQ "SEQ\0"
#define MTR_INGEST_TAG_END "END\0"
#define MTR_INGEST_MAX_HEADER_JSON (16u << 20) /* bytes of the header's JSON text */
#define MTR_INGEST_MAX_TOKENS (1u << 24)       /* tokens per sequence */
#define MTR_INGEST_MAX_STRING 4096u            /* bytes of unit_id, lang, dataset each */
#define MTR_INGEST_MAX_BODY ((uint64_t)1 << 40) /* the decoder also applies its own max_frame_bytes */
#define MTR_INGEST_MIN_BUFFER (64u << 10)      /* smallest frame buffer of the pipeline */

/* which optional per-token arrays a frame carries (the fields byte) */
#define MTR_INGEST_HAS_TOKEN_IDS 0x1u
#define MTR_INGEST_HAS_POSITIONS 0x2u
#define MTR_INGEST_HAS_ROLES 0x4u
/* /seq/flags bits a producer may set (MTR_SEQ_NONFINITE is computed by the writer and ignored on input) */
#define MTR_INGEST_SEQ_FLAGS (MTR_SEQ_TRUNCATED | MTR_SEQ_STEERED | MTR_SEQ_NONFINITE)


/* ---- the stream header ----------------------------------------------------------------------------------- */

typedef struct {
    mtr_model_info model;       /* model.selection_bias points into selection_bias below (or NULL) */
    float *selection_bias;      /* (n_layers, n_experts) or NULL; owned */
    mtr_dtype logits_dtype;     /* dtype the producer computes the router in (the default stored dtype) */
    bool has_logits_dtype;      /* the header named one */
    char producer[MTR_MAX_NAME], producer_version[64];
    char corpus_id[MTR_MAX_NAME];
    char *capture_settings;     /* JSON object text (owned; "{}" if absent) */
    char *steering;             /* JSON object text of the steering spec in force, or NULL (none); owned */
    uint32_t minor;             /* minor version the producer wrote */
} mtr_ingest_header;

void mtr_ingest_header_destroy(mtr_ingest_header *h);

/* Extra header fields for the encoder; any may be NULL. */
typedef struct {
    const char *producer, *producer_version, *corpus_id;
    const char *capture_settings; /* JSON object text */
    const char *steering;         /* JSON object text or NULL */
    bool has_logits_dtype;
    mtr_dtype logits_dtype;
} mtr_ingest_header_extra;
#define MTR_INGEST_HEADER_EXTRA_INIT {NULL, NULL, NULL, NULL, NULL, false, MTR_DTYPE_F32}

/* ---- encoder ---------------------------------------------------------------------------------------------- */

/* The stream prelude and header for model m (checked with mtr_model_info_check). *out is malloc'd (free()),
 * *len its size. MTR_EINVAL for a bad model or extra JSON that is not an object; MTR_ENOMEM. */
int mtr_ingest_encode_header(void **out, size_t *len, const mtr_model_info *m, const mtr_ingest_header_extra *x);

/* Bytes of a sequence frame (head included) for these sizes; 0 if a size is outside the limits. */
uint64_t mtr_ingest_seq_frame_bytes(uint32_t n_layers, uint32_t n_experts, uint32_t n_tokens, mtr_dtype dtype,
                                    size_t unit_len, size_t lang_len, size_t dataset_len, unsigned fields);

/* Encode one sequence frame into buf (cap bytes); *len = bytes written (mtr_ingest_seq_frame_bytes). token_ids,
 * positions, roles (n_tokens) may be NULL (not sent: the writer's defaults). logits: (n_tokens, n_layers,
 * n_experts) in dtype. MTR_EINVAL if cap is too small or a size is outside the limits. */
int mtr_ingest_encode_seq(void *buf, size_t cap, size_t *len, uint32_t n_layers, uint32_t n_experts,
                          const mtr_seq_meta *meta, const int32_t *token_ids, const int32_t *positions,
                          const uint8_t *roles, const void *logits, mtr_dtype dtype);

/* The end frame (MTR_INGEST_FRAME_HEAD_BYTES + 8 = 24 bytes) announcing n_sequences sequence frames. */
void mtr_ingest_encode_end(unsigned char buf[24], uint64_t n_sequences);

/* ---- decoder ---------------------------------------------------------------------------------------------- */

/* Read up to n bytes into buf: bytes read (> 0), 0 at end of input, or a negative mtr_err (detail set with
 * mtr_errmsg() already, or none). */
typedef ssize_t (*mtr_ingest_read_fn)(void *ctx, void *buf, size_t n);

typedef struct {
    mtr_seq_meta meta;          /* unit_id/lang/dataset point into the frame buffer (NUL-terminated) */
    const int32_t *token_ids;   /* (n_tokens) or NULL */
    const int32_t *positions;   /* (n_tokens) or NULL */
    const uint8_t *roles;       /* (n_tokens) or NULL */
    const void *logits;         /* (n_tokens, n_layers, n_experts) in dtype */
    mtr_dtype dtype;
    uint64_t offset;            /* byte offset of the frame in the stream */
    uint64_t index;             /* 0-based number of the sequence frame in the stream */
} mtr_ingest_seq;

typedef struct mtr_ingest_decoder mtr_ingest_decoder;

/* Read and validate the stream prelude and header. max_frame_bytes bounds the body of any frame (0: no bound
 * beyond MTR_INGEST_MAX_BODY). Errors: MTR_EFORMAT (bad magic, malformed header), MTR_EVERSION (unknown major),
 * MTR_ETRUNCATED (input ends inside the header), MTR_EIO (read error), MTR_ENOMEM. */
int mtr_ingest_decoder_create(mtr_ingest_decoder **out, mtr_ingest_read_fn fn, void *ctx, uint64_t max_frame_bytes);
void mtr_ingest_decoder_destroy(mtr_ingest_decoder *d);
/* The decoded header. Borrowed. */
const mtr_ingest_header *mtr_ingest_decoder_header(const mtr_ingest_decoder *d);
/* Bytes consumed so far (the offset of the next frame). */
uint64_t mtr_ingest_decoder_offset(const mtr_ingest_decoder *d);

/* Two-step frame reading, for callers that place frame bodies in their own memory:
 * begin reads the frame head and a sequence's fixed part and validates them; it returns 1 with *body_bytes =
 * the bytes the caller must provide to _finish (8-aligned memory), 0 for a valid end frame (the stream is
 * over), or a negative error: MTR_EFORMAT (bad tag, sizes, counts), MTR_ETRUNCATED (input ends inside a frame,
 * or without an end frame), MTR_EIO. finish reads the rest of the frame into buf and validates it (strings,
 * roles), filling *out with pointers into buf. After an error the decoder is unusable; the error detail
 * names the frame's byte offset (mtr_ingest_decoder_bad_offset). */
int mtr_ingest_decoder_begin(mtr_ingest_decoder *d, size_t *body_bytes);
int mtr_ingest_decoder_finish(mtr_ingest_decoder *d, void *buf, mtr_ingest_seq *out);
/* One-step: begin + finish into the decoder's own buffer (valid until the next call). 1 = a sequence, 0 = end. */
int mtr_ingest_decoder_next(mtr_ingest_decoder *d, mtr_ingest_seq *out);
/* Offset of the frame the last error is about (or of the end of input). */
uint64_t mtr_ingest_decoder_bad_offset(const mtr_ingest_decoder *d);

/* A read callback over a memory buffer (for tests and fuzzing). */
typedef struct {
    const unsigned char *data;
    size_t len, pos;
} mtr_ingest_mem;
ssize_t mtr_ingest_mem_read(void *ctx, void *buf, size_t n);

/* ---- pipeline --------------------------------------------------------------------------------------------- */

typedef struct {
    mtr_writer_opts writer;        /* producer/corpus/settings/steering default to the stream header's */
    bool stored_dtype_set;         /* writer.stored_dtype was chosen; else the header's logits_dtype (or bf16) */
    uint64_t buffer_bytes;         /* frame buffer budget (default 256 MiB, at least 64 KiB); a frame body larger
                                      than the budget less 12 KiB is an error */
    uint32_t max_frames;           /* frames buffered at most (default 8) */
    uint32_t throttle_us;          /* test hook: sleep this long after each append (a slow disk) */
    const char *model_id;          /* override the header's model id; NULL keeps it */
    void (*progress)(void *ctx, uint64_t n_sequences, uint64_t n_tokens, uint64_t bytes_read);
    void *progress_ctx;
} mtr_ingest_opts;
#define MTR_INGEST_OPTS_INIT {MTR_WRITER_OPTS_INIT, false, (uint64_t)256 << 20, 8, 0, NULL, NULL, NULL}

typedef struct {
    uint64_t n_frames;          /* sequence frames decoded */
    uint64_t n_written;         /* sequences appended */
    uint64_t n_skipped;         /* already in the run (resume) */
    uint64_t n_tokens;          /* tokens appended */
    uint64_t bytes_read;        /* stream bytes consumed */
    uint64_t peak_buffered;     /* most frame bytes held at once (<= buffer_bytes) */
    uint32_t peak_frames;       /* most frames held at once (<= max_frames) */
    uint64_t n_stalls;          /* times the reader waited for the writer (back-pressure) */
    bool bad_frame;             /* the stream had a malformed frame / ended early */
    uint64_t bad_offset;        /* its byte offset */
    mtr_writer_stats writer;
} mtr_ingest_result;

/* Decode the stream read from fd and write it as a run in dir (see mtr_writer_create; opts->writer.resume skips
 * sequences already stored). A malformed or truncated frame stops reading: every earlier sequence is written
 * and the run is closed cleanly, then the decoder's error is returned (res->bad_frame, res->bad_offset). Errors
 * of the writer (MTR_EIO, MTR_EHDF5, MTR_EMISMATCH on resume, MTR_EEXIST) are returned as they are; a duplicate
 * seq_id in the stream is MTR_EDUP. res may be NULL. */
int mtr_ingest_run(mtr_ingest_result *res, int fd, const char *dir, const mtr_ingest_opts *opts);

#ifdef __cplusplus
}
#endif
#endif
