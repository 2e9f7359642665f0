/* tokenizer_internal.h — private types shared by the files of the tokenizer module (capture/tokenizer_*.c):
 * byte buffers and spans, hash maps, the BPE model, normalizer / pre-tokenizer / decoder steps, the Jinja
 * renderer. Not installed; the public interface is capture/mtr_tokenizer.h. */
#ifndef MTR_TOKENIZER_INTERNAL_H
#define MTR_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdarg.h>

#include "mtr_tokenizer.h"
#include "mtr_util.h"


/* ---- byte buffers and spans ------------------------------------------------------------------------------ */

/* the tokenizer's growable buffers and UTF-8 checks are libmoetrace's (mtr_util.h), under the names the
 * tokenizer's files use */
typedef mtr_buf tk_buf;
#define tk_buf_reserve mtr_buf_reserve
#define tk_buf_put mtr_buf_put
#define tk_buf_free mtr_buf_free

typedef struct {
    uint32_t off, len; /* bytes of a tk_buf */
} tk_span;

typedef struct {
    tk_span *v;
    size_t n, cap;
} tk_spans;

int tk_spans_push(tk_spans *s, uint32_t off, uint32_t len);
void tk_spans_free(tk_spans *s);
int tk_ids_push(mtr_tok_ids *v, int32_t id);

/* ---- UTF-8 ----------------------------------------------------------------------------------------------- */

/* Length of the longest well-formed UTF-8 prefix (NUL bytes allowed). */
#define tk_utf8_valid_prefix(s, n) mtr_utf8_valid_prefix((s), (n), true)
/* Decode one code point of valid UTF-8 at s (n > 0); returns its byte length. */
int tk_utf8_next(const char *s, size_t n, int32_t *cp);
/* Encode cp; returns bytes written to out (1..4). */
int tk_utf8_put(char *out, int32_t cp);
/* Unicode White_Space */
bool tk_is_ws(int32_t cp);
/* Append s (n bytes of any content) to b with each invalid UTF-8 sequence replaced by U+FFFD. */
int tk_utf8_lossy(tk_buf *b, const char *s, size_t n);

/* ---- hash maps ------------------------------------------------------------------------------------------- */

/* bytes -> int32, keys copied into a pool */
typedef struct {
    uint32_t koff, klen; /* key bytes in the pool */
    int32_t val;
} tk_strent;

typedef struct {
    uint64_t *slot;  /* (mask + 1) upper 32 bits of the key's hash << 32 | entry index + 1; 0 = empty */
    size_t mask;
    tk_strent *ent;  /* (n) */
    size_t n, cap;
    tk_buf pool;
} tk_strmap;

/* Room for n entries and pool_bytes of keys without rehashing (a hint: more may still be put). */
int tk_strmap_reserve(tk_strmap *m, size_t n, size_t pool_bytes);
int tk_strmap_put(tk_strmap *m, const char *k, size_t klen, int32_t val); /* replaces an existing value */
/* Insert k -> val unless k is present; *old gets the present value or -1 when k was inserted. */
int tk_strmap_add(tk_strmap *m, const char *k, size_t klen, int32_t val, int32_t *old);
int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t klen);    /* -1 if absent */
/* val[i] = tk_strmap_get(m, k[i], klen[i]) for n keys, the memory of all fetched before any compare: much faster
 * than n single lookups in a table larger than the caches. */
#define TK_MAP_BATCH 128
void tk_strmap_get_many(const tk_strmap *m, const char *const *k, const uint32_t *klen, int32_t *val, size_t n);
/* Start fetching the slot of k for an insert or lookup soon after; returns the hash of k for the _h calls. */
uint64_t tk_strmap_prefetch(const tk_strmap *m, const char *k, size_t klen);
/* tk_strmap_put / tk_strmap_add with hv = tk_hash_bytes(k, klen) already computed */
int tk_strmap_put_h(tk_strmap *m, const char *k, size_t klen, uint64_t hv, int32_t val);
int tk_strmap_add_h(tk_strmap *m, const char *k, size_t klen, uint64_t hv, int32_t val, int32_t *old);
void tk_strmap_free(tk_strmap *m);
uint64_t tk_hash_bytes(const void *p, size_t n);

/* (left id, right id) -> (rank, merged id) */
typedef struct {
    uint64_t key;  /* (left << 32 | right) + 1, 0 = empty */
    int32_t rank;
    int32_t id;
} tk_pairent;

typedef struct {
    tk_pairent *e; /* (mask + 1) */
    size_t mask, n;
} tk_pairmap;

int tk_pairmap_init(tk_pairmap *m, size_t expected);
int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id); /* keeps the first rank */
void tk_pairmap_prefetch(const tk_pairmap *m, int32_t a, int32_t b); /* before a put or get of (a, b) */
bool tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id);
void tk_pairmap_free(tk_pairmap *m);

/* ---- JSON scanner (tokenizer_json.c) --------------------------------------------------------------------- */

/* A strict JSON scanner over a document in memory, for the bulk sections of tokenizer.json (model.vocab,
 * model.merges). It accepts what jansson accepts with JSON_ALLOW_NUL (escapes, \uXXXX with surrogate pairs,
 * valid UTF-8, no raw control characters in strings) and fails with MTR_EFORMAT naming the line and byte
 * offset in the document. Offsets are absolute: p is the whole document, n where scanning must stop. */
typedef struct {
    const char *p;    /* the document */
    size_t n;         /* end of the scanned region (bytes of p) */
    size_t i;         /* current offset */
    const char *name; /* document name for messages */
} tk_js;

/* Record "name: line L, byte B: what" for mtr_errmsg(); returns MTR_EFORMAT. */
int tk_js_fail(const tk_js *s, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Skip JSON whitespace. */
static inline void tk_js_ws(tk_js *s)
{
    while (s->i < s->n && (s->p[s->i] == ' ' || s->p[s->i] == '\n' || s->p[s->i] == '\r' || s->p[s->i] == '\t'))
        s->i++;
}
/* Skip whitespace, then require the character c and step over it. */
int tk_js_expect(tk_js *s, char c);
/* After a member or element: skip whitespace, then ',' (*more = true) or close (*more = false). */
int tk_js_next(tk_js *s, char close, bool *more);
/* Skip whitespace; if close follows, step over it and set *empty (an empty object or array). */
void tk_js_empty(tk_js *s, char close, bool *empty);
/* A string after optional whitespace. *str points into the document when the string has no escapes, else into
 * scratch (replaced); *len is its decoded length (it may contain NUL bytes from \u0000). */
int tk_js_string(tk_js *s, tk_buf *scratch, const char **str, size_t *len);
/* A number after optional whitespace. *is_int is false for a fraction or exponent, or beyond int64 (then *v
 * saturates). */
int tk_js_number(tk_js *s, int64_t *v, bool *is_int);
/* Step over one value after optional whitespace without checking its content (whoever parses the span checks
 * it): strings and brackets are matched. *count gets the number of members or elements of an object or array
 * (exact for valid JSON), *depth the deepest bracket nesting (0 for a scalar). */
int tk_js_skip(tk_js *s, size_t *count, size_t *depth);

/* A value's place in the document */
typedef struct {
    size_t off, len; /* bytes of the document */
    size_t count;    /* members or elements */
    bool set;
} tk_js_span;

/* tk_js_split() result when the document is not a JSON object (or nests deeper than the scanner walks): parse
 * it whole with jansson. */
#define TK_JS_WHOLE 1

/* Parse tokenizer.json (n bytes) into a jansson tree of everything except model.vocab and model.merges, whose
 * spans are returned for the scanner (unset when absent or not an object/array; then the tree has them).
 * Returns 0, TK_JS_WHOLE, or MTR_EFORMAT / MTR_ENOMEM with the detail naming line and byte. */
int tk_js_split(json_t **root, tk_js_span *vocab, tk_js_span *merges, const char *doc, size_t n);

/* ---- regex (PCRE2, UTF + UCP, JIT) ----------------------------------------------------------------------- */

typedef struct {
    pcre2_code *re;
    pcre2_match_data *md;
} tk_regex;

/* Compile a Rust-regex pattern (literal when is_literal). Errors: MTR_EFORMAT naming the pattern. */
int tk_regex_compile(tk_regex *r, const char *pattern, size_t len, bool is_literal);
void tk_regex_free(tk_regex *r);

/* ---- normalizers and pre-tokenizers (tokenizer_text.c) --------------------------------------------------- */

enum { TK_BEH_REMOVED, TK_BEH_ISOLATED, TK_BEH_MERGED_PREV, TK_BEH_MERGED_NEXT, TK_BEH_CONTIGUOUS };
enum { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };

enum {
    TK_NORM_NFC, TK_NORM_NFD, TK_NORM_NFKC, TK_NORM_NFKD, TK_NORM_LOWER, TK_NORM_PREPEND, TK_NORM_REPLACE,
    TK_NORM_STRIP
};

typedef struct {
    int kind;
    char *str;        /* Prepend text, Replace content */
    tk_regex re;      /* Replace pattern */
    bool left, right; /* Strip */
} tk_norm;

enum {
    TK_PRE_SPLIT, TK_PRE_BYTELEVEL, TK_PRE_METASPACE, TK_PRE_DIGITS, TK_PRE_PUNCT, TK_PRE_WHITESPACE,
    TK_PRE_WSSPLIT
};

typedef struct {
    int kind;
    tk_regex re;           /* Split pattern; ByteLevel/Digits/Punctuation/Whitespace built-ins */
    int behavior;          /* TK_BEH_* */
    bool invert;           /* Split */
    bool add_prefix_space; /* ByteLevel */
    bool use_regex;        /* ByteLevel */
    bool map_bytes;        /* ByteLevel: map bytes to the byte-level alphabet here (false when the model
                              works on raw bytes, see tk_model.byte_raw) */
    char repl[8];          /* Metaspace replacement, UTF-8 */
    int prepend_scheme;    /* Metaspace */
    bool split;            /* Metaspace */
} tk_pre;

/* Normalize s (n) through steps into out (replacing its contents). */
int tk_normalize(tk_buf *out, const tk_norm *steps, size_t n_steps, const char *s, size_t n);
/* Pre-tokenize: pieces of s (n) after every step, as spans of *out_buf (one of the two scratch buffers).
 * first: the text starts at offset 0 of the input (Metaspace prepend_scheme "first"). */
int tk_pretokenize(tk_spans *out, tk_buf **out_buf, tk_buf scratch[2], tk_spans *tmp, const tk_pre *steps,
                   size_t n_steps, const char *s, size_t n, bool first);

/* The GPT-2 byte-level alphabet: byte -> code point, and code point (< 512) -> byte or -1. */
extern const int32_t tk_byte_to_cp[256];
int tk_cp_to_byte(int32_t cp);
/* Bytes of a token spelled in the byte-level alphabet into out; false (out untouched) when some character is
 * not in the alphabet. */
bool tk_bytelevel_unmap(tk_buf *out, const char *s, size_t n);

/* ---- BPE model (tokenizer_bpe.c) ------------------------------------------------------------------------- */

typedef struct {
    tk_strmap vocab;      /* model vocabulary, keys in model form (raw bytes when byte_raw) */
    tk_pairmap merges;
    int32_t unk_id;       /* -1 if none */
    bool fuse_unk, byte_fallback, ignore_merges;
    bool byte_raw;        /* words are raw bytes and the byte-level alphabet was undone in vocab keys */
    char *prefix;         /* continuing_subword_prefix or NULL */
    char *suffix;         /* end_of_word_suffix or NULL */
    int32_t byte_tok[256]; /* byte_fallback: id of <0xXX>; byte_raw: id of the one-byte token; -1 if none */
    /* word cache: word bytes -> ids */
    tk_strmap cache;
    mtr_tok_ids cache_ids;
    /* scratch */
    int32_t *sym_id, *sym_prev, *sym_next;
    uint32_t *sym_off, *sym_len;
    size_t sym_cap;
    void *heap;
    size_t heap_cap;
    tk_buf word;
} tk_model;

/* Append the ids of one pre-tokenized word. Errors: MTR_EFORMAT (a symbol without id and no unk). */
int tk_bpe_word(tk_model *m, mtr_tok_ids *out, const char *w, size_t n);
void tk_model_free(tk_model *m);

/* ---- decoder steps --------------------------------------------------------------------------------------- */

enum { TK_DEC_BYTELEVEL, TK_DEC_METASPACE, TK_DEC_BYTEFALLBACK, TK_DEC_FUSE, TK_DEC_STRIP, TK_DEC_REPLACE };

typedef struct {
    int kind;
    char *a, *b;        /* Replace pattern/content, Strip content, Metaspace replacement */
    int start, stop;    /* Strip */
    int prepend_scheme; /* Metaspace */
} tk_dec;

/* ---- added tokens ---------------------------------------------------------------------------------------- */

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    bool single_word, lstrip, rstrip, normalized, special;
} tk_added;

typedef struct {
    int32_t child;   /* first child node or -1 */
    int32_t sibling; /* next sibling or -1 */
    int32_t token;   /* index into added tokens if a token ends here, else -1 */
    uint8_t byte;
} tk_trie_node;

typedef struct {
    tk_trie_node *node;
    size_t n, cap;
    int32_t root_child[256]; /* first-level node per byte, -1 if none */
} tk_trie;

/* ---- the tokenizer --------------------------------------------------------------------------------------- */

struct mtr_tok {
    tk_model model;
    size_t n_ids;           /* vocab size including added tokens */
    size_t ids_cap;         /* allocated length of tok_off and special */
    int64_t *tok_off;       /* (n_ids) offset of the token spelling in tok_pool, -1 if the id has none */
    tk_buf tok_pool;        /* NUL-separated spellings */
    bool *special;          /* (n_ids) */
    tk_strmap tok_index;    /* spelling -> id (model vocab and added tokens) */

    tk_added *added;
    size_t n_added;
    tk_trie trie_raw;       /* non-normalized added tokens, matched on the raw text */
    tk_trie trie_norm;      /* normalized added tokens, matched after normalization */

    tk_norm *norm;
    size_t n_norm;
    tk_pre *pre;
    size_t n_pre;
    tk_dec *dec;
    size_t n_dec;
    bool has_decoder;
    mtr_tok_ids post_prefix, post_suffix; /* ids added around a single sequence by the post-processor */

    char *bos, *eos;        /* from tokenizer_config.json */
    char *chat_template;

    /* encode scratch */
    tk_buf norm_buf;
    tk_buf pre_buf[2];
    tk_spans pieces, pieces_tmp;
};

/* mtr_tok_load_buffers() with a choice of parser: whole = true parses all of tokenizer.json with jansson (the
 * reference for the scanner path, which the default false takes). */
int tk_load_buffers(mtr_tok **out, const char *json, size_t len, const char *config, size_t config_len, bool whole);

#endif
