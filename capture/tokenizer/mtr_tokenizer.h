/* mtr_tokenizer.h — Hugging Face tokenizer.json in C: the ids a model was trained with, and back to text.
 *
 * mtr_tok_load() reads a tokenizer.json (BPE models: byte-level, byte-fallback, merges as ["a","b"] pairs or
 * "a b" strings, ignore_merges, unk, subword prefix/suffix) and, beside it, tokenizer_config.json (bos/eos, extra
 * added tokens, the Jinja chat template). Encoding runs the same pipeline as the reference library: added and
 * special tokens are split out first (lstrip/rstrip/single_word/normalized honoured), then the normalizer (NFC,
 * NFKC, NFD, NFKD, Lowercase, Prepend, Replace, Strip, Sequence), the pre-tokenizer (Split with every behaviour,
 * ByteLevel, Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit, Sequence; regexes through PCRE2 with
 * UTF + UCP and JIT), the BPE model and the post-processor (TemplateProcessing, Bert, Roberta, ByteLevel). The
 * decoder chain (ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence) turns ids back into text.
 *
 * Input text must be valid UTF-8: anything else is refused with MTR_EINVAL naming the byte offset (never a
 * crash, never a silent replacement). Decoded bytes that are not valid UTF-8 come out as U+FFFD per bad sequence,
 * as the reference's lossy decode does.
 *
 * Conventions (as libmoetrace, traces/moetrace.h): functions return 0 or a negative mtr_err; after an error,
 * mtr_errmsg() holds a one-line detail for the calling thread. Nothing prints or exits. A tokenizer is
 * immutable after loading except for an internal word cache and regex scratch, so one mtr_tok must not be used
 * by two threads at once: load one per thread.
 */
#ifndef MTR_TOKENIZER_H
#define MTR_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moetrace.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mtr_tok mtr_tok;

/* A growable id vector. Start from MTR_TOK_IDS_INIT; encode appends; free with mtr_tok_ids_free(). */
typedef struct {
    int32_t *ids; /* (n) token ids */
    size_t n;
    size_t cap;
} mtr_tok_ids;
#define MTR_TOK_IDS_INIT {NULL, 0, 0}

/* Encode flags */
#define MTR_TOK_ADD_SPECIAL 1u   /* run the post-processor (bos/eos, cls/sep) as add_special_tokens=True */
#define MTR_TOK_SPLIT_SPECIAL 2u /* treat special-token strings in the text as plain text */
/* Decode flags */
#define MTR_TOK_SKIP_SPECIAL 1u  /* leave special tokens out of the text */

/* One chat turn: role ("system", "user", "assistant", ...) and content, both UTF-8, borrowed. */
typedef struct {
    const char *role;
    const char *content;
} mtr_tok_message;

typedef struct {
    bool add_generation_prompt; /* default false */
    int enable_thinking;        /* -1 undefined (default), 0 false, 1 true; passed to the template */
} mtr_tok_chat_opts;
#define MTR_TOK_CHAT_OPTS_INIT {false, -1}

/* ---- lifecycle ------------------------------------------------------------------------------------------- */

/* Load a tokenizer from a directory holding tokenizer.json (and optionally tokenizer_config.json) or from a path
 * to a tokenizer.json (its directory is searched for tokenizer_config.json). *out is owned by the caller: free
 * with mtr_tok_destroy(). Errors: MTR_ENOTFOUND (no tokenizer.json), MTR_EIO, MTR_EFORMAT (not JSON, or a
 * component, model type or regex this implementation does not support — the detail names it, with line and
 * byte offset for malformed JSON), MTR_ENOMEM. The file is read into memory for the duration of the call (the
 * tokenizer keeps nothing of it). */
int mtr_tok_load(mtr_tok **out, const char *path);

/* Same from memory: tokenizer.json text (len bytes) and optional tokenizer_config.json text (config may be NULL).
 * Used by the fuzz targets; errors as mtr_tok_load() without MTR_ENOTFOUND/MTR_EIO. */
int mtr_tok_load_buffers(mtr_tok **out, const char *json, size_t len, const char *config, size_t config_len);

/* Release everything; accepts NULL. */
void mtr_tok_destroy(mtr_tok *t);


/* ---- encode / decode ------------------------------------------------------------------------------------- */

/* Append the ids of text (len bytes of UTF-8, need not be NUL-terminated) to out. flags: MTR_TOK_ADD_SPECIAL,
 * MTR_TOK_SPLIT_SPECIAL. On error out->n is unchanged (capacity may have grown). Errors: MTR_EINVAL (invalid
 * UTF-8: the detail gives the byte offset), MTR_ENOMEM, MTR_EFORMAT (a token the vocabulary lacks and no unk). */
int mtr_tok_encode(mtr_tok_ids *out, mtr_tok *t, const char *text, size_t len, unsigned flags);

/* Free the id vector's storage and reset it to empty; accepts NULL. */
void mtr_tok_ids_free(mtr_tok_ids *v);

/* Text of ids (n) through the decoder chain. *out is malloc'd, NUL-terminated, owned by the caller (free());
 * *out_len (may be NULL) gets its length without the NUL. flags: MTR_TOK_SKIP_SPECIAL. Errors: MTR_EINVAL (an id
 * outside the vocabulary), MTR_ENOMEM. */
int mtr_tok_decode(char **out, size_t *out_len, const mtr_tok *t, const int32_t *ids, size_t n, unsigned flags);

/* ---- vocabulary ------------------------------------------------------------------------------------------ */

/* Number of ids (one more than the largest id of the model vocabulary and the added tokens). */
size_t mtr_tok_vocab_size(const mtr_tok *t);
/* The token string of id as tokenizer.json spells it (byte-level alphabet for byte-level models); NULL if id has
 * no token. Borrowed, valid until mtr_tok_destroy(). */
const char *mtr_tok_id_to_token(const mtr_tok *t, int32_t id);
/* Id of a token string (model vocabulary or added token); -1 if there is none. */
int32_t mtr_tok_token_to_id(const mtr_tok *t, const char *token);
/* true if id is an added token marked special */
bool mtr_tok_is_special(const mtr_tok *t, int32_t id);
/* bos/eos token strings from tokenizer_config.json; NULL when the config has none. Borrowed. */
const char *mtr_tok_bos_token(const mtr_tok *t);
const char *mtr_tok_eos_token(const mtr_tok *t);

/* ---- chat template --------------------------------------------------------------------------------------- */

/* true if tokenizer_config.json carried a chat template (or one was set with mtr_tok_set_chat_template()). */
bool mtr_tok_has_chat_template(const mtr_tok *t);

/* Replace the chat template by Jinja source (copied). Errors: MTR_EFORMAT (the detail says where the template
 * does not parse), MTR_ENOMEM. */
int mtr_tok_set_chat_template(mtr_tok *t, const char *source);

/* Render msgs (n) through the chat template with the variables transformers passes (messages, bos_token,
 * eos_token, add_generation_prompt, enable_thinking when 0 or 1). *out is malloc'd and NUL-terminated, owned by
 * the caller. Encode the result without MTR_TOK_ADD_SPECIAL, as apply_chat_template does. Errors: MTR_ENOTFOUND
 * (no template), MTR_EFORMAT (the template uses Jinja this interpreter lacks, or raises an exception; the detail
 * says which), MTR_ENOMEM. */
int mtr_tok_apply_chat_template(char **out, mtr_tok *t, const mtr_tok_message *msgs, size_t n,
                                const mtr_tok_chat_opts *opts);

/* Render any Jinja source with the same variables (tests, custom templates). Errors as above. */
int mtr_tok_render_template(char **out, const char *source, const mtr_tok_message *msgs, size_t n,
                            const mtr_tok_chat_opts *opts, const char *bos_token, const char *eos_token);

#ifdef __cplusplus
}
#endif

#endif
