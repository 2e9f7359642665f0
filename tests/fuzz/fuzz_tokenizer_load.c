/* fuzz_tokenizer_load.c — libFuzzer target for the tokenizer.json loader: arbitrary bytes as tokenizer.json
 * (the part after a first NUL byte, if any, as tokenizer_config.json); a loaded tokenizer also encodes and
 * decodes a fixed text and renders its chat template. Differential: the document is also loaded with jansson
 * parsing all of it (the path the scanner of model.vocab / model.merges replaces), and both must fail alike or
 * build identical tables. Build and run with `make fuzz-tokenizer`. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mtr_tokenizer.h"
#include "tokenizer_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SAME(cond, ...)                                      \
    do {                                                     \
        if (!(cond)) {                                       \
            snprintf(why, why_len, __VA_ARGS__);             \
            return false;                                    \
        }                                                    \
    } while (0)

static bool same_str(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

/* every entry of x is in y with the same value (sizes compared by the caller) */
static bool strmap_within(const tk_strmap *x, const tk_strmap *y, const char *what, char *why, size_t why_len)
{
    for (size_t i = 0; i < x->n; i++) {
        const tk_strent *e = &x->ent[i];
        int32_t v = tk_strmap_get(y, x->pool.p + e->koff, e->klen);
        SAME(v == e->val, "%s: '%.*s' -> %d vs %d", what, (int)(e->klen > 40 ? 40 : e->klen), x->pool.p + e->koff,
             e->val, v);
    }
    return true;
}

/* The loaded tables of a and b are identical: ids, spellings, both maps, merges, model options, added tokens,
 * pipeline steps, post-processor and config. why gets the first difference. */
static bool tok_tables_equal(const mtr_tok *a, const mtr_tok *b, char *why, size_t why_len)
{
    SAME(a->n_ids == b->n_ids, "n_ids %zu vs %zu", a->n_ids, b->n_ids);
    for (size_t i = 0; i < a->n_ids; i++) {
        SAME(same_str(mtr_tok_id_to_token(a, (int32_t)i), mtr_tok_id_to_token(b, (int32_t)i)), "spelling of id %zu", i);
        SAME(a->special[i] == b->special[i], "special %zu", i);
    }
    SAME(a->tok_index.n == b->tok_index.n, "tok_index size %zu vs %zu", a->tok_index.n, b->tok_index.n);
    if (!strmap_within(&a->tok_index, &b->tok_index, "tok_index", why, why_len)) return false;
    const tk_model *ma = &a->model, *mb = &b->model;
    SAME(ma->vocab.n == mb->vocab.n, "vocab size %zu vs %zu", ma->vocab.n, mb->vocab.n);
    if (!strmap_within(&ma->vocab, &mb->vocab, "vocab", why, why_len)) return false;
    SAME(ma->merges.n == mb->merges.n, "merges %zu vs %zu", ma->merges.n, mb->merges.n);
    for (size_t i = 0; ma->merges.e && i <= ma->merges.mask; i++) {
        const tk_pairent *e = &ma->merges.e[i];
        if (!e->key) continue;
        int32_t l = (int32_t)((e->key - 1) >> 32), r = (int32_t)((e->key - 1) & 0xffffffffu), rank, id;
        SAME(tk_pairmap_get(&mb->merges, l, r, &rank, &id) && rank == e->rank && id == e->id, "merge (%d, %d)", l, r);
    }
    SAME(ma->unk_id == mb->unk_id && ma->fuse_unk == mb->fuse_unk && ma->byte_fallback == mb->byte_fallback &&
             ma->ignore_merges == mb->ignore_merges && ma->byte_raw == mb->byte_raw,
         "model options");
    SAME(same_str(ma->prefix, mb->prefix) && same_str(ma->suffix, mb->suffix), "prefix/suffix");
    SAME(memcmp(ma->byte_tok, mb->byte_tok, sizeof ma->byte_tok) == 0, "byte tokens");
    SAME(a->n_added == b->n_added, "added tokens %zu vs %zu", a->n_added, b->n_added);
    for (size_t i = 0; i < a->n_added; i++) {
        const tk_added *x = &a->added[i], *y = &b->added[i];
        SAME(x->id == y->id && x->len == y->len && memcmp(x->content, y->content, x->len) == 0 &&
                 x->single_word == y->single_word && x->lstrip == y->lstrip && x->rstrip == y->rstrip &&
                 x->normalized == y->normalized && x->special == y->special,
             "added token %zu", i);
    }
    SAME(a->n_norm == b->n_norm && a->n_pre == b->n_pre && a->n_dec == b->n_dec, "pipeline steps");
    for (size_t i = 0; i < a->n_norm; i++) SAME(a->norm[i].kind == b->norm[i].kind, "normalizer %zu", i);
    for (size_t i = 0; i < a->n_pre; i++) SAME(a->pre[i].kind == b->pre[i].kind, "pre-tokenizer %zu", i);
    for (size_t i = 0; i < a->n_dec; i++) SAME(a->dec[i].kind == b->dec[i].kind, "decoder %zu", i);
    SAME(a->post_prefix.n == b->post_prefix.n && a->post_suffix.n == b->post_suffix.n &&
             (!a->post_prefix.n || !memcmp(a->post_prefix.ids, b->post_prefix.ids, a->post_prefix.n * sizeof(int32_t))) &&
             (!a->post_suffix.n || !memcmp(a->post_suffix.ids, b->post_suffix.ids, a->post_suffix.n * sizeof(int32_t))),
         "post-processor");
    SAME(same_str(a->bos, b->bos) && same_str(a->eos, b->eos) && same_str(a->chat_template, b->chat_template), "config");
    return true;
}
#undef SAME

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *json = (const char *)data, *cfg = NULL;
    size_t jlen = size, clen = 0;
    const uint8_t *nul = memchr(data, 0, size);
    if (nul) {
        jlen = (size_t)(nul - data);
        cfg = (const char *)nul + 1;
        clen = size - jlen - 1;
    }
    mtr_tok *t = NULL, *w = NULL;
    int rc = mtr_tok_load_buffers(&t, json, jlen, cfg, clen);
    int rcw = tk_load_buffers(&w, json, jlen, cfg, clen, true);
    char why[256];
    if (rc != rcw || (t && w && !tok_tables_equal(t, w, why, sizeof why))) {
        fprintf(stderr, "scanner and jansson loads differ: %d vs %d: %s\n", rc, rcw, rc != rcw ? "" : why);
        abort();
    }
    mtr_tok_destroy(w);
    if (rc == 0) {
        static const char text[] = "Hello, world! 123 \xc3\xa9t\xc3\xa9 <|endoftext|>  \n\n\xe4\xb8\x96";
        mtr_tok_ids ids = MTR_TOK_IDS_INIT;
        if (mtr_tok_encode(&ids, t, text, sizeof text - 1, MTR_TOK_ADD_SPECIAL) == 0) {
            char *s = NULL;
            if (mtr_tok_decode(&s, NULL, t, ids.ids, ids.n, 0) == 0) free(s);
        }
        mtr_tok_ids_free(&ids);
        if (mtr_tok_has_chat_template(t)) {
            mtr_tok_message m[2] = {{"system", "s"}, {"user", "u"}};
            char *r = NULL;
            if (mtr_tok_apply_chat_template(&r, t, m, 2, NULL) == 0) free(r);
        }
        mtr_tok_destroy(t);
    }
    return 0;
}
