/* tokenizer.c — loading tokenizer.json / tokenizer_config.json (jansson), the encode pipeline (added tokens ->
 * normalizer -> pre-tokenizer -> BPE -> post-processor), the decoder chain and the chat-template entry points.
 * Semantics follow the Hugging Face tokenizers library; the public contract is capture/mtr_tokenizer.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "jinja.h"
#include "tokenizer_internal.h"

/* ids above this are refused before anything is sized from them */
#define MAX_IDS (1 << 24)
#define MAX_FILE ((size_t)1 << 30)

/* ---- errors ---------------------------------------------------------------------------------------------- */


/* ---- small JSON helpers ---------------------------------------------------------------------------------- */

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool jbool(json_t *o, const char *key, bool dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* A token given as a string or as {"content": ...} (tokenizer_config.json AddedToken) */
static const char *jtoken(json_t *v)
{
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) return jstr(v, "content");
    return NULL;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}

/* ---- vocabulary ------------------------------------------------------------------------------------------ */

static int grow_ids(mtr_tok *t, size_t n)
{
    if (n <= t->n_ids) return 0;
    if (n > MAX_IDS) return mtr_fail(MTR_EFORMAT, "token id %zu out of range", n - 1);
    if (n > t->ids_cap) {
        size_t cap = t->ids_cap ? 2 * t->ids_cap : 1024;
        while (cap < n) cap *= 2;
        if (cap > MAX_IDS) cap = MAX_IDS;
        int64_t *o = realloc(t->tok_off, cap * sizeof *o);
        if (!o) return mtr_fail(MTR_ENOMEM, "out of memory");
        t->tok_off = o;
        bool *sp = realloc(t->special, cap * sizeof *sp);
        if (!sp) return mtr_fail(MTR_ENOMEM, "out of memory");
        t->special = sp;
        t->ids_cap = cap;
    }
    for (size_t i = t->n_ids; i < n; i++) {
        t->tok_off[i] = -1;
        t->special[i] = false;
    }
    t->n_ids = n;
    return 0;
}

/* Record the spelling of id (first spelling wins, as the vocabulary's does); hv is its tk_hash_bytes(). *dup
 * (may be NULL) is set when the spelling was already known, keeping its id. */
static int set_spelling_h(mtr_tok *t, int32_t id, const char *s, size_t n, uint64_t hv, bool *dup)
{
    int rc;
    int32_t old;
    if (id < 0) return mtr_fail(MTR_EFORMAT, "negative token id for '%.40s'", s);
    if ((rc = grow_ids(t, (size_t)id + 1))) return rc;
    if (t->tok_off[id] < 0) {
        t->tok_off[id] = (int64_t)t->tok_pool.n;
        if ((rc = tk_buf_put(&t->tok_pool, s, n)) || (rc = tk_buf_put(&t->tok_pool, "", 1))) return rc;
    }
    if ((rc = tk_strmap_add_h(&t->tok_index, s, n, hv, id, &old))) return rc;
    if (dup) *dup = old >= 0;
    return 0;
}

static int set_spelling(mtr_tok *t, int32_t id, const char *s, size_t n, bool *dup)
{
    return set_spelling_h(t, id, s, n, tk_hash_bytes(s, n), dup);
}

const char *mtr_tok_id_to_token(const mtr_tok *t, int32_t id)
{
    if (!t || id < 0 || (size_t)id >= t->n_ids || t->tok_off[id] < 0) return NULL;
    return t->tok_pool.p + t->tok_off[id];
}

int32_t mtr_tok_token_to_id(const mtr_tok *t, const char *token)
{
    return t && token ? tk_strmap_get(&t->tok_index, token, strlen(token)) : -1;
}

size_t mtr_tok_vocab_size(const mtr_tok *t) { return t ? t->n_ids : 0; }

bool mtr_tok_is_special(const mtr_tok *t, int32_t id)
{
    return t && id >= 0 && (size_t)id < t->n_ids && t->special[id];
}

const char *mtr_tok_bos_token(const mtr_tok *t) { return t ? t->bos : NULL; }
const char *mtr_tok_eos_token(const mtr_tok *t) { return t ? t->eos : NULL; }

/* ---- loading: model -------------------------------------------------------------------------------------- */

/* Model-side form of a vocabulary string: raw bytes when the model works on bytes */
static const char *model_key(tk_model *m, tk_buf *tmp, const char *s, size_t n, size_t *kn)
{
    if (m->byte_raw) {
        tmp->n = 0;
        if (tk_bytelevel_unmap(tmp, s, n)) {
            *kn = tmp->n;
            return tmp->p;
        }
    }
    *kn = n;
    return s;
}

/* Vocabulary entries are applied in batches, in document order: the slots of a batch in both maps are fetched
 * before any is written. */
#define VOCAB_BATCH 64

typedef struct {
    uint32_t s, sn, k, kn; /* spelling and model key, in the arena */
    int32_t id;
    uint64_t hs, hk;       /* their hashes */
} vocab_job;

typedef struct {
    vocab_job job[VOCAB_BATCH];
    size_t n;
    tk_buf arena;
} vocab_batch;

/* Returns TK_JS_WHOLE when a spelling was seen before: only the scanner sees duplicate keys (jansson keeps the
 * last value at the first position), so that document is loaded through jansson whole, which defines what
 * duplicates mean. */
static int vocab_flush(mtr_tok *t, vocab_batch *vb)
{
    tk_model *m = &t->model;
    size_t n = vb->n;
    int rc;
    bool dup;
    vb->n = 0;
    const char *ar = vb->arena.p;
    for (size_t i = 0; i < n; i++) {
        vocab_job *j = &vb->job[i];
        j->hs = tk_strmap_prefetch(&t->tok_index, ar + j->s, j->sn);
        j->hk = j->k == j->s && j->kn == j->sn ? j->hs : tk_strmap_prefetch(&m->vocab, ar + j->k, j->kn);
    }
    for (size_t i = 0; i < n; i++) {
        const vocab_job *j = &vb->job[i];
        const char *key = ar + j->s, *k = ar + j->k;
        if ((rc = set_spelling_h(t, j->id, key, j->sn, j->hs, &dup))) return rc;
        if (dup) return TK_JS_WHOLE;
        if ((rc = tk_strmap_put_h(&m->vocab, k, j->kn, j->hk, j->id))) return rc;
        if (m->byte_raw && j->kn == 1) m->byte_tok[(unsigned char)k[0]] = j->id;
        if (m->byte_fallback && j->sn == 6 && memcmp(key, "<0x", 3) == 0 && key[5] == '>') {
            unsigned v;
            if (sscanf(key + 3, "%2X", &v) == 1) m->byte_tok[v & 0xff] = j->id;
        }
    }
    vb->arena.n = 0;
    return 0;
}

/* One vocabulary entry, in document order */
static int vocab_add(mtr_tok *t, vocab_batch *vb, const char *key, size_t klen, int32_t id)
{
    tk_buf *ar = &vb->arena;
    vocab_job *j = &vb->job[vb->n];
    int rc;
    j->s = (uint32_t)ar->n;
    j->sn = (uint32_t)klen;
    j->id = id;
    if ((rc = tk_buf_put(ar, key, klen))) return rc;
    j->k = j->s;
    j->kn = j->sn;
    if (t->model.byte_raw) { /* model_key() */
        size_t k0 = ar->n;
        if (tk_bytelevel_unmap(ar, key, klen)) {
            j->k = (uint32_t)k0;
            j->kn = (uint32_t)(ar->n - k0);
        }
    }
    return ++vb->n == VOCAB_BATCH ? vocab_flush(t, vb) : 0;
}

/* An error found while reading an entry comes after those of the entries before it, still in the batch */
static int vocab_fail(mtr_tok *t, vocab_batch *vb, int rc)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mtr_errmsg());
    int rc2 = vocab_flush(t, vb);
    return rc2 ? rc2 : mtr_fail(rc, "%s", msg);
}

static int bad_merge(size_t i, const char *a, size_t an, const char *b, size_t bn)
{
    return mtr_fail(MTR_EFORMAT, "merge %zu ('%.*s' '%.*s') uses a token outside the vocabulary", i,
                   (int)(an > 40 ? 40 : an), a, (int)(bn > 40 ? 40 : bn), b);
}

/* Merges are resolved in batches: each needs the ids of a, b and the merged token a + b, three lookups at random
 * places of a vocabulary larger than the caches, which tk_strmap_get_many() overlaps. Results are applied in
 * order, so ranks and the first error are those of one-by-one processing. */
#define MERGE_BATCH (TK_MAP_BATCH / 3)

typedef struct {
    size_t rank;
    uint32_t a, an, b, bn;  /* spellings, in the arena */
    uint32_t k[3], kn[3];   /* model keys of a, b and a + b, in the arena */
} merge_job;

typedef struct {
    merge_job job[MERGE_BATCH];
    size_t n;
    tk_buf arena;
} merge_batch;

static int merge_flush(mtr_tok *t, merge_batch *mb)
{
    const char *k[3 * MERGE_BATCH] = {0};
    uint32_t kn[3 * MERGE_BATCH] = {0};
    int32_t id[3 * MERGE_BATCH];
    size_t n = mb->n;
    int rc;
    mb->n = 0;
    for (size_t i = 0; i < n; i++)
        for (int x = 0; x < 3; x++) {
            k[3 * i + x] = mb->arena.p + mb->job[i].k[x];
            kn[3 * i + x] = mb->job[i].kn[x];
        }
    tk_strmap_get_many(&t->model.vocab, k, kn, id, 3 * n);
    for (size_t i = 0; i < n; i++) tk_pairmap_prefetch(&t->model.merges, id[3 * i], id[3 * i + 1]);
    for (size_t i = 0; i < n; i++) {
        const merge_job *j = &mb->job[i];
        if (id[3 * i] < 0 || id[3 * i + 1] < 0 || id[3 * i + 2] < 0)
            return bad_merge(j->rank, mb->arena.p + j->a, j->an, mb->arena.p + j->b, j->bn);
        if ((rc = tk_pairmap_put(&t->model.merges, id[3 * i], id[3 * i + 1], (int32_t)j->rank, id[3 * i + 2])))
            return rc;
    }
    mb->arena.n = 0;
    return 0;
}

/* An error found while reading merge i comes after the errors of the merges before it, still in the batch */
static int merge_fail(mtr_tok *t, merge_batch *mb, int rc)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mtr_errmsg());
    int rc2 = merge_flush(t, mb);
    return rc2 ? rc2 : mtr_fail(rc, "%s", msg);
}

static int arena_put(tk_buf *ar, uint32_t *off, const char *s, size_t n)
{
    *off = (uint32_t)ar->n;
    return tk_buf_put(ar, s, n);
}

/* Merge number rank: a, b and the merged token a + b (without b's continuing-subword prefix) */
static int merge_add(mtr_tok *t, merge_batch *mb, tk_buf *tmp, size_t rank, const char *a, size_t an,
                     const char *b, size_t bn)
{
    tk_model *m = &t->model;
    tk_buf *ar = &mb->arena;
    merge_job *j = &mb->job[mb->n];
    int rc;
    j->rank = rank;
    j->an = (uint32_t)an;
    j->bn = (uint32_t)bn;
    if ((rc = arena_put(ar, &j->a, a, an)) || (rc = arena_put(ar, &j->b, b, bn))) return rc;
    if (m->byte_raw && !m->prefix) {
        /* the byte-level alphabet is undone character by character, so the merged key is the two keys joined */
        size_t k0 = ar->n;
        if (tk_bytelevel_unmap(ar, a, an)) {
            size_t k1 = ar->n;
            if (tk_bytelevel_unmap(ar, b, bn)) {
                j->k[0] = j->k[2] = (uint32_t)k0;
                j->k[1] = (uint32_t)k1;
                j->kn[0] = (uint32_t)(k1 - k0);
                j->kn[1] = (uint32_t)(ar->n - k1);
                j->kn[2] = (uint32_t)(ar->n - k0);
                goto queued;
            }
        }
        ar->n = k0;
    }
    size_t kn, plen = m->prefix ? strlen(m->prefix) : 0, skip;
    const char *k = model_key(m, tmp, a, an, &kn);
    if ((rc = arena_put(ar, &j->k[0], k, kn))) return rc;
    j->kn[0] = (uint32_t)kn;
    k = model_key(m, tmp, b, bn, &kn);
    if ((rc = arena_put(ar, &j->k[1], k, kn))) return rc;
    j->kn[1] = (uint32_t)kn;
    skip = (plen && bn >= plen && memcmp(b, m->prefix, plen) == 0) ? plen : 0;
    /* the merged spelling goes to the arena, then its model key after it */
    size_t c0 = ar->n;
    if ((rc = tk_buf_put(ar, a, an)) || (rc = tk_buf_put(ar, b + skip, bn - skip))) return rc;
    k = model_key(m, tmp, ar->p + c0, ar->n - c0, &kn);
    if (k == tmp->p) {
        ar->n = c0;
        if ((rc = arena_put(ar, &j->k[2], k, kn))) return rc;
    } else {
        j->k[2] = (uint32_t)c0;
    }
    j->kn[2] = (uint32_t)kn;
queued:
    return ++mb->n == MERGE_BATCH ? merge_flush(t, mb) : 0;
}

/* A merge given as one string "a b" (exactly one space) */
static int merge_string(mtr_tok *t, merge_batch *mb, tk_buf *tmp, size_t i, const char *s, size_t n)
{
    const char *sp = memchr(s, ' ', n);
    if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
        return mtr_fail(MTR_EFORMAT, "merge %zu ('%.*s') is not two tokens", i, (int)(n > 40 ? 40 : n), s);
    return merge_add(t, mb, tmp, i, s, (size_t)(sp - s), sp + 1, n - (size_t)(sp + 1 - s));
}

static int bad_vocab(const char *key, size_t klen)
{
    return mtr_fail(MTR_EFORMAT, "vocab entry '%.*s' has no valid id", (int)(klen > 40 ? 40 : klen), key);
}

/* The scanner met key with no valid id at byte vat. A later duplicate of key replaces the value (jansson keeps
 * the last one), so the rest of the vocabulary is searched for it: then the whole-document path decides
 * (TK_JS_WHOLE), else the entry is refused with its place. */
static int bad_vocab_at(tk_js *s, size_t vat, const char *key, size_t klen)
{
    char *bad = malloc(klen + 1);
    tk_buf kb = {0};
    size_t count, depth;
    bool more = true;
    int rc = 0;
    if (!bad) return mtr_fail(MTR_ENOMEM, "out of memory");
    memcpy(bad, key, klen);
    s->i = vat;
    if (tk_js_skip(s, &count, &depth) || tk_js_next(s, '}', &more)) rc = TK_JS_WHOLE;
    while (!rc && more) {
        const char *k;
        size_t kn;
        if (tk_js_string(s, &kb, &k, &kn) || tk_js_expect(s, ':') || tk_js_skip(s, &count, &depth) ||
            (kn == klen && memcmp(k, bad, klen) == 0) || tk_js_next(s, '}', &more))
            rc = TK_JS_WHOLE;
    }
    if (!rc) rc = tk_js_fail(s, vat, "vocab entry '%.*s' has no valid id", (int)(klen > 40 ? 40 : klen), bad);
    tk_buf_free(&kb);
    free(bad);
    return rc;
}

/* model.vocab straight from the document: {"token": id, ...} */
static int scan_vocab(mtr_tok *t, vocab_batch *vb, const char *doc, const tk_js_span *sp)
{
    tk_js s = {doc, sp->off + sp->len, sp->off, "tokenizer.json"};
    tk_buf kb = {0};
    int rc;
    bool empty, more = true;
    size_t est = sp->count < MAX_IDS ? sp->count : MAX_IDS;
    if ((rc = tk_strmap_reserve(&t->model.vocab, est, 0)) || (rc = tk_strmap_reserve(&t->tok_index, est, 0)))
        goto done;
    if ((rc = tk_js_expect(&s, '{'))) goto done;
    tk_js_empty(&s, '}', &empty);
    while (!empty && more) {
        const char *key;
        size_t klen, at = (tk_js_ws(&s), s.i);
        int64_t id;
        bool is_int;
        if ((rc = tk_js_string(&s, &kb, &key, &klen))) goto done;
        if (memchr(key, '\0', klen)) {
            rc = tk_js_fail(&s, at, "NUL byte in object key not supported");
            goto done;
        }
        if ((rc = tk_js_expect(&s, ':'))) goto done;
        size_t vat = (tk_js_ws(&s), s.i);
        if (s.i < s.n && (s.p[s.i] == '-' || (s.p[s.i] >= '0' && s.p[s.i] <= '9'))) {
            if ((rc = tk_js_number(&s, &id, &is_int))) goto done;
        } else {
            is_int = false;
        }
        if (!is_int || id < 0 || id >= MAX_IDS) {
            rc = bad_vocab_at(&s, vat, key, klen);
            goto done;
        }
        if ((rc = vocab_add(t, vb, key, klen, (int32_t)id))) goto done;
        if ((rc = tk_js_next(&s, '}', &more))) goto done;
    }
    if (tk_js_ws(&s), s.i != s.n) rc = tk_js_fail(&s, s.i, "unexpected text after model.vocab");
done:
    tk_buf_free(&kb);
    return rc;
}

/* model.merges straight from the document: ["a b", ...] or [["a", "b"], ...] */
static int scan_merges(mtr_tok *t, merge_batch *mb, tk_buf *tmp, const char *doc, const tk_js_span *sp)
{
    tk_js s = {doc, sp->off + sp->len, sp->off, "tokenizer.json"};
    tk_buf ka = {0}, kb = {0};
    int rc;
    bool empty, more = true;
    if ((rc = tk_pairmap_init(&t->model.merges, sp->count < MAX_IDS ? sp->count : MAX_IDS))) goto done;
    if ((rc = tk_js_expect(&s, '['))) goto done;
    tk_js_empty(&s, ']', &empty);
    for (size_t i = 0; !empty && more; i++) {
        const char *a, *b;
        size_t an, bn, at = (tk_js_ws(&s), s.i);
        char c = s.i < s.n ? s.p[s.i] : 0;
        if (c == '"') {
            if ((rc = tk_js_string(&s, &ka, &a, &an)) || (rc = merge_string(t, mb, tmp, i, a, an))) goto done;
        } else if (c == '[') {
            bool more2 = false;
            s.i++;
            tk_js_ws(&s);
            if (s.i < s.n && s.p[s.i] == '"' && !(rc = tk_js_string(&s, &ka, &a, &an)) &&
                !(rc = tk_js_next(&s, ']', &more2)) && more2 && (tk_js_ws(&s), s.i < s.n && s.p[s.i] == '"') &&
                !(rc = tk_js_string(&s, &kb, &b, &bn)) && !(rc = tk_js_next(&s, ']', &more2)) && !more2) {
                if ((rc = merge_add(t, mb, tmp, i, a, an, b, bn))) goto done;
            } else {
                if (!rc) rc = tk_js_fail(&s, at, "merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
                goto done;
            }
        } else {
            rc = tk_js_fail(&s, at, "merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
            goto done;
        }
        if ((rc = tk_js_next(&s, ']', &more))) goto done;
    }
    if (tk_js_ws(&s), s.i != s.n) rc = tk_js_fail(&s, s.i, "unexpected text after model.merges");
done:
    tk_buf_free(&ka);
    tk_buf_free(&kb);
    return rc;
}

/* The model section. doc, vocab_sp and merges_sp (may be NULL) give the sections tk_js_split() left out of the
 * tree; otherwise they come from the tree. */
static int load_model(mtr_tok *t, json_t *model, const char *doc, const tk_js_span *vocab_sp,
                      const tk_js_span *merges_sp)
{
    tk_model *m = &t->model;
    tk_buf tmp = {0};
    merge_batch mb = {.n = 0};
    vocab_batch vb = {.n = 0};
    int rc = 0;
    if (!json_is_object(model)) return mtr_fail(MTR_EFORMAT, "tokenizer.json: no \"model\" object");
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE") != 0)
        return mtr_fail(MTR_EFORMAT, "model type '%.40s' is not supported (BPE only)", type);
    bool scan_v = vocab_sp && vocab_sp->set, scan_m = merges_sp && merges_sp->set;
    json_t *vocab = json_object_get(model, "vocab"), *merges = scan_m ? NULL : json_object_get(model, "merges");
    if (!scan_v && !json_is_object(vocab)) return mtr_fail(MTR_EFORMAT, "model.vocab is not an object");
    if (merges && !json_is_array(merges) && !json_is_null(merges))
        return mtr_fail(MTR_EFORMAT, "model.merges is not an array");
    m->byte_fallback = jbool(model, "byte_fallback", false);
    m->ignore_merges = jbool(model, "ignore_merges", false);
    m->fuse_unk = jbool(model, "fuse_unk", false);
    if (m->byte_fallback) m->byte_raw = false;
    const char *p = jstr(model, "continuing_subword_prefix"), *s = jstr(model, "end_of_word_suffix");
    if (p && *p && !(m->prefix = xstrdup(p))) return mtr_fail(MTR_ENOMEM, "out of memory");
    if (s && *s && !(m->suffix = xstrdup(s))) return mtr_fail(MTR_ENOMEM, "out of memory");
    for (int b = 0; b < 256; b++) m->byte_tok[b] = -1;

    if (scan_v) {
        rc = scan_vocab(t, &vb, doc, vocab_sp);
    } else {
        const char *key;
        size_t klen;
        json_t *val;
        json_object_keylen_foreach(vocab, key, klen, val) {
            if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= MAX_IDS)
                rc = bad_vocab(key, klen);
            else
                rc = vocab_add(t, &vb, key, klen, (int32_t)json_integer_value(val));
            if (rc) break;
        }
    }
    rc = rc == TK_JS_WHOLE ? rc : rc ? vocab_fail(t, &vb, rc) : vocab_flush(t, &vb);
    if (rc) goto done;
    const char *unk = jstr(model, "unk_token");
    m->unk_id = unk ? tk_strmap_get(&t->tok_index, unk, strlen(unk)) : -1;

    if (scan_m) {
        rc = scan_merges(t, &mb, &tmp, doc, merges_sp);
    } else {
        size_t nm = merges ? json_array_size(merges) : 0;
        rc = tk_pairmap_init(&m->merges, nm);
        for (size_t i = 0; i < nm && !rc; i++) {
            json_t *e = json_array_get(merges, i), *ea = json_array_get(e, 0), *eb = json_array_get(e, 1);
            if (json_is_string(e)) rc = merge_string(t, &mb, &tmp, i, json_string_value(e), json_string_length(e));
            else if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(ea) && json_is_string(eb))
                rc = merge_add(t, &mb, &tmp, i, json_string_value(ea), json_string_length(ea), json_string_value(eb),
                               json_string_length(eb));
            else rc = mtr_fail(MTR_EFORMAT, "merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
        }
    }
    rc = rc ? merge_fail(t, &mb, rc) : merge_flush(t, &mb);
done:
    tk_buf_free(&tmp);
    tk_buf_free(&mb.arena);
    tk_buf_free(&vb.arena);
    return rc;
}

/* ---- loading: normalizers, pre-tokenizers, post-processor, decoder --------------------------------------- */

static int parse_pattern(tk_regex *re, json_t *pat, const char *what)
{
    json_t *v;
    if ((v = json_object_get(pat, "Regex")) && json_is_string(v))
        return tk_regex_compile(re, json_string_value(v), json_string_length(v), false);
    if ((v = json_object_get(pat, "String")) && json_is_string(v)) {
        if (json_string_length(v) == 0) return mtr_fail(MTR_EFORMAT, "%s: empty pattern", what);
        return tk_regex_compile(re, json_string_value(v), json_string_length(v), true);
    }
    return mtr_fail(MTR_EFORMAT, "%s: pattern is neither String nor Regex", what);
}

static int push_norm(mtr_tok *t, tk_norm *n)
{
    tk_norm *v = realloc(t->norm, (t->n_norm + 1) * sizeof *v);
    if (!v) return mtr_fail(MTR_ENOMEM, "out of memory");
    t->norm = v;
    t->norm[t->n_norm++] = *n;
    return 0;
}

static int load_normalizer(mtr_tok *t, json_t *o, int depth)
{
    if (json_is_null(o) || !o) return 0;
    if (depth > 8) return mtr_fail(MTR_EFORMAT, "normalizers nested too deeply");
    const char *type = jstr(o, "type");
    if (!type) return mtr_fail(MTR_EFORMAT, "normalizer without type");
    tk_norm n;
    memset(&n, 0, sizeof n);
    int rc;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(o, "normalizers");
        if (!json_is_array(list)) return mtr_fail(MTR_EFORMAT, "Sequence normalizer without a list");
        for (size_t i = 0; i < json_array_size(list); i++)
            if ((rc = load_normalizer(t, json_array_get(list, i), depth + 1))) return rc;
        return 0;
    }
    if (strcmp(type, "NFC") == 0) n.kind = TK_NORM_NFC;
    else if (strcmp(type, "NFD") == 0) n.kind = TK_NORM_NFD;
    else if (strcmp(type, "NFKC") == 0) n.kind = TK_NORM_NFKC;
    else if (strcmp(type, "NFKD") == 0) n.kind = TK_NORM_NFKD;
    else if (strcmp(type, "Lowercase") == 0) n.kind = TK_NORM_LOWER;
    else if (strcmp(type, "Strip") == 0) {
        n.kind = TK_NORM_STRIP;
        n.left = jbool(o, "strip_left", true);
        n.right = jbool(o, "strip_right", true);
    } else if (strcmp(type, "Prepend") == 0 || strcmp(type, "Replace") == 0) {
        const char *s = jstr(o, strcmp(type, "Prepend") == 0 ? "prepend" : "content");
        if (!s) return mtr_fail(MTR_EFORMAT, "%s normalizer without its text", type);
        n.kind = strcmp(type, "Prepend") == 0 ? TK_NORM_PREPEND : TK_NORM_REPLACE;
        if (!(n.str = xstrdup(s))) return mtr_fail(MTR_ENOMEM, "out of memory");
        if (n.kind == TK_NORM_REPLACE && (rc = parse_pattern(&n.re, json_object_get(o, "pattern"), "Replace"))) {
            free(n.str);
            return rc;
        }
    } else {
        return mtr_fail(MTR_EFORMAT, "normalizer '%.40s' is not supported", type);
    }
    if ((rc = push_norm(t, &n))) {
        free(n.str);
        tk_regex_free(&n.re);
    }
    return rc;
}

static int parse_behavior(int *out, const char *s)
{
    if (!s || strcmp(s, "Isolated") == 0) *out = TK_BEH_ISOLATED;
    else if (strcmp(s, "Removed") == 0) *out = TK_BEH_REMOVED;
    else if (strcmp(s, "MergedWithPrevious") == 0) *out = TK_BEH_MERGED_PREV;
    else if (strcmp(s, "MergedWithNext") == 0) *out = TK_BEH_MERGED_NEXT;
    else if (strcmp(s, "Contiguous") == 0) *out = TK_BEH_CONTIGUOUS;
    else return mtr_fail(MTR_EFORMAT, "split behaviour '%.40s' is unknown", s);
    return 0;
}

static const char GPT2_RE[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_prepend(json_t *o)
{
    const char *ps = jstr(o, "prepend_scheme");
    if (ps) return strcmp(ps, "first") == 0 ? TK_PREPEND_FIRST : strcmp(ps, "never") == 0 ? TK_PREPEND_NEVER
                                                                                          : TK_PREPEND_ALWAYS;
    return jbool(o, "add_prefix_space", true) ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
}

static int load_pretok(mtr_tok *t, json_t *o, int depth)
{
    if (json_is_null(o) || !o) return 0;
    if (depth > 8) return mtr_fail(MTR_EFORMAT, "pre-tokenizers nested too deeply");
    const char *type = jstr(o, "type");
    if (!type) return mtr_fail(MTR_EFORMAT, "pre-tokenizer without type");
    int rc = 0;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(o, "pretokenizers");
        if (!json_is_array(list)) return mtr_fail(MTR_EFORMAT, "Sequence pre-tokenizer without a list");
        for (size_t i = 0; i < json_array_size(list); i++)
            if ((rc = load_pretok(t, json_array_get(list, i), depth + 1))) return rc;
        return 0;
    }
    tk_pre p;
    memset(&p, 0, sizeof p);
    p.behavior = TK_BEH_ISOLATED;
    if (strcmp(type, "Split") == 0) {
        p.kind = TK_PRE_SPLIT;
        p.invert = jbool(o, "invert", false);
        if (!(rc = parse_behavior(&p.behavior, jstr(o, "behavior"))))
            rc = parse_pattern(&p.re, json_object_get(o, "pattern"), "Split");
    } else if (strcmp(type, "ByteLevel") == 0) {
        p.kind = TK_PRE_BYTELEVEL;
        p.add_prefix_space = jbool(o, "add_prefix_space", true);
        p.use_regex = jbool(o, "use_regex", true);
        p.map_bytes = true;
        if (p.use_regex) rc = tk_regex_compile(&p.re, GPT2_RE, sizeof GPT2_RE - 1, false);
    } else if (strcmp(type, "Metaspace") == 0) {
        p.kind = TK_PRE_METASPACE;
        const char *r = jstr(o, "replacement");
        if (!r) r = "\xE2\x96\x81";
        if (strlen(r) >= sizeof p.repl || !*r) return mtr_fail(MTR_EFORMAT, "Metaspace replacement is not one character");
        strcpy(p.repl, r);
        p.prepend_scheme = parse_prepend(o);
        p.split = jbool(o, "split", true);
    } else if (strcmp(type, "Digits") == 0) {
        p.kind = TK_PRE_DIGITS;
        p.behavior = jbool(o, "individual_digits", false) ? TK_BEH_ISOLATED : TK_BEH_CONTIGUOUS;
        rc = tk_regex_compile(&p.re, "\\p{N}", 5, false);
    } else if (strcmp(type, "Punctuation") == 0) {
        static const char re[] = "[\\p{P}!-/:-@\\[-`{-~]";
        p.kind = TK_PRE_PUNCT;
        if (!(rc = parse_behavior(&p.behavior, jstr(o, "behavior")))) rc = tk_regex_compile(&p.re, re, sizeof re - 1, false);
    } else if (strcmp(type, "Whitespace") == 0) {
        static const char re[] = "\\w+|[^\\w\\s]+";
        p.kind = TK_PRE_WHITESPACE;
        p.behavior = TK_BEH_REMOVED;
        p.invert = true;
        rc = tk_regex_compile(&p.re, re, sizeof re - 1, false);
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        p.kind = TK_PRE_WSSPLIT;
        p.behavior = TK_BEH_REMOVED;
        rc = tk_regex_compile(&p.re, "\\s+", 3, false);
    } else {
        return mtr_fail(MTR_EFORMAT, "pre-tokenizer '%.40s' is not supported", type);
    }
    if (rc) {
        tk_regex_free(&p.re);
        return rc;
    }
    tk_pre *v = realloc(t->pre, (t->n_pre + 1) * sizeof *v);
    if (!v) {
        tk_regex_free(&p.re);
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    t->pre = v;
    t->pre[t->n_pre++] = p;
    return 0;
}

static int push_ids_of(mtr_tok_ids *dst, json_t *arr)
{
    int rc;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MAX_IDS)
            return mtr_fail(MTR_EFORMAT, "post-processor: bad id");
        if ((rc = tk_ids_push(dst, (int32_t)json_integer_value(v)))) return rc;
    }
    return 0;
}

static int load_post(mtr_tok *t, json_t *o, int depth)
{
    if (json_is_null(o) || !o) return 0;
    if (depth > 8) return mtr_fail(MTR_EFORMAT, "post-processors nested too deeply");
    const char *type = jstr(o, "type");
    int rc;
    if (!type) return mtr_fail(MTR_EFORMAT, "post-processor without type");
    if (strcmp(type, "ByteLevel") == 0) return 0; /* offsets only */
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(o, "processors");
        for (size_t i = 0; i < json_array_size(list); i++)
            if ((rc = load_post(t, json_array_get(list, i), depth + 1))) return rc;
        return 0;
    }
    if (strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(o, "single"), *sp = json_object_get(o, "special_tokens");
        bool seen_seq = false;
        for (size_t i = 0; i < json_array_size(single); i++) {
            json_t *e = json_array_get(single, i), *st;
            if (json_object_get(e, "Sequence")) {
                seen_seq = true;
            } else if ((st = json_object_get(e, "SpecialToken"))) {
                const char *name = jstr(st, "id");
                json_t *def = name ? json_object_get(sp, name) : NULL;
                if (!def) return mtr_fail(MTR_EFORMAT, "TemplateProcessing: special token '%.40s' undefined", name ? name : "?");
                if ((rc = push_ids_of(seen_seq ? &t->post_suffix : &t->post_prefix, json_object_get(def, "ids")))) return rc;
            } else {
                return mtr_fail(MTR_EFORMAT, "TemplateProcessing: unknown piece");
            }
        }
        return 0;
    }
    if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
        json_t *cls = json_object_get(o, "cls"), *sep = json_object_get(o, "sep");
        json_t *ci = json_array_get(cls, 1), *si = json_array_get(sep, 1);
        if (!json_is_integer(ci) || !json_is_integer(si) || json_integer_value(ci) < 0 ||
            json_integer_value(si) < 0 || json_integer_value(ci) >= MAX_IDS || json_integer_value(si) >= MAX_IDS)
            return mtr_fail(MTR_EFORMAT, "%s without cls/sep ids", type);
        if ((rc = tk_ids_push(&t->post_prefix, (int32_t)json_integer_value(ci)))) return rc;
        return tk_ids_push(&t->post_suffix, (int32_t)json_integer_value(si));
    }
    return mtr_fail(MTR_EFORMAT, "post-processor '%.40s' is not supported", type);
}

static int load_decoder(mtr_tok *t, json_t *o, int depth)
{
    if (json_is_null(o) || !o) return 0;
    if (depth > 8) return mtr_fail(MTR_EFORMAT, "decoders nested too deeply");
    const char *type = jstr(o, "type");
    int rc;
    if (!type) return mtr_fail(MTR_EFORMAT, "decoder without type");
    t->has_decoder = true;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(o, "decoders");
        for (size_t i = 0; i < json_array_size(list); i++)
            if ((rc = load_decoder(t, json_array_get(list, i), depth + 1))) return rc;
        return 0;
    }
    tk_dec d;
    memset(&d, 0, sizeof d);
    const char *a = NULL, *b = NULL;
    if (strcmp(type, "ByteLevel") == 0) d.kind = TK_DEC_BYTELEVEL;
    else if (strcmp(type, "ByteFallback") == 0) d.kind = TK_DEC_BYTEFALLBACK;
    else if (strcmp(type, "Fuse") == 0) d.kind = TK_DEC_FUSE;
    else if (strcmp(type, "Metaspace") == 0) {
        d.kind = TK_DEC_METASPACE;
        a = jstr(o, "replacement");
        if (!a) a = "\xE2\x96\x81";
        d.prepend_scheme = parse_prepend(o);
    } else if (strcmp(type, "Strip") == 0) {
        d.kind = TK_DEC_STRIP;
        a = jstr(o, "content");
        json_t *s = json_object_get(o, "start"), *e = json_object_get(o, "stop");
        d.start = json_is_integer(s) ? (int)json_integer_value(s) : 0;
        d.stop = json_is_integer(e) ? (int)json_integer_value(e) : 0;
        if (!a || d.start < 0 || d.stop < 0) return mtr_fail(MTR_EFORMAT, "Strip decoder without content");
    } else if (strcmp(type, "Replace") == 0) {
        d.kind = TK_DEC_REPLACE;
        a = jstr(json_object_get(o, "pattern"), "String");
        b = jstr(o, "content");
        if (!a || !*a || !b) return mtr_fail(MTR_EFORMAT, "Replace decoder needs a String pattern and content");
    } else {
        return mtr_fail(MTR_EFORMAT, "decoder '%.40s' is not supported", type);
    }
    if ((a && !(d.a = xstrdup(a))) || (b && !(d.b = xstrdup(b)))) {
        free(d.a);
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    tk_dec *v = realloc(t->dec, (t->n_dec + 1) * sizeof *v);
    if (!v) {
        free(d.a);
        free(d.b);
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    t->dec = v;
    t->dec[t->n_dec++] = d;
    return 0;
}

/* ---- added tokens ---------------------------------------------------------------------------------------- */

static int trie_new_node(tk_trie *tr, uint8_t byte, int32_t *out)
{
    if (tr->n == tr->cap) {
        size_t cap = tr->cap ? 2 * tr->cap : 256;
        tk_trie_node *v = realloc(tr->node, cap * sizeof *v);
        if (!v) return mtr_fail(MTR_ENOMEM, "out of memory");
        tr->node = v;
        tr->cap = cap;
    }
    tk_trie_node *nd = &tr->node[tr->n];
    nd->child = nd->sibling = nd->token = -1;
    nd->byte = byte;
    *out = (int32_t)tr->n++;
    return 0;
}

static int trie_insert(tk_trie *tr, const char *s, size_t n, int32_t token)
{
    int rc;
    int32_t cur = -1; /* parent node, -1 = root */
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        int32_t head = cur < 0 ? tr->root_child[c] : tr->node[cur].child;
        int32_t x = head;
        while (x >= 0 && tr->node[x].byte != c) x = tr->node[x].sibling;
        if (x < 0) {
            if ((rc = trie_new_node(tr, c, &x))) return rc;
            tr->node[x].sibling = cur < 0 ? -1 : head;
            if (cur < 0) tr->root_child[c] = x;
            else tr->node[cur].child = x;
        }
        cur = x;
    }
    if (tr->node[cur].token < 0) tr->node[cur].token = token;
    return 0;
}

static int add_token(mtr_tok *t, const char *content, size_t len, int32_t id, json_t *o)
{
    int rc;
    if (!len) return mtr_fail(MTR_EFORMAT, "empty added token (id %d)", id);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return 0;
    tk_added *v = realloc(t->added, (t->n_added + 1) * sizeof *v);
    if (!v) return mtr_fail(MTR_ENOMEM, "out of memory");
    t->added = v;
    tk_added *a = &t->added[t->n_added];
    memset(a, 0, sizeof *a);
    if (!(a->content = malloc(len + 1))) return mtr_fail(MTR_ENOMEM, "out of memory");
    memcpy(a->content, content, len);
    a->content[len] = '\0';
    a->len = len;
    a->id = id;
    a->special = jbool(o, "special", false);
    a->single_word = jbool(o, "single_word", false);
    a->lstrip = jbool(o, "lstrip", false);
    a->rstrip = jbool(o, "rstrip", false);
    a->normalized = jbool(o, "normalized", !a->special);
    t->n_added++;
    if ((rc = set_spelling(t, id, content, len, NULL))) return rc;
    t->special[id] = a->special;
    return 0;
}

/* Tries once every added token is known: normalized tokens are matched in normalized form */
static int build_tries(mtr_tok *t)
{
    int rc = 0;
    tk_buf nb = {0};
    for (int b = 0; b < 256; b++) t->trie_raw.root_child[b] = t->trie_norm.root_child[b] = -1;
    for (size_t i = 0; i < t->n_added; i++) {
        tk_added *a = &t->added[i];
        if (tk_utf8_valid_prefix(a->content, a->len) != a->len) {
            rc = mtr_fail(MTR_EFORMAT, "added token %d is not valid UTF-8", a->id);
            break;
        }
        if (!a->normalized) {
            rc = trie_insert(&t->trie_raw, a->content, a->len, (int32_t)i);
        } else {
            if ((rc = tk_normalize(&nb, t->norm, t->n_norm, a->content, a->len))) break;
            if (nb.n) rc = trie_insert(&t->trie_norm, nb.p, nb.n, (int32_t)i);
        }
        if (rc) break;
    }
    tk_buf_free(&nb);
    return rc;
}

/* ---- loading: the whole tokenizer ------------------------------------------------------------------------ */

static int load_config(mtr_tok *t, json_t *cfg)
{
    int rc;
    const char *b = jtoken(json_object_get(cfg, "bos_token")), *e = jtoken(json_object_get(cfg, "eos_token"));
    if (b && !(t->bos = xstrdup(b))) return mtr_fail(MTR_ENOMEM, "out of memory");
    if (e && !(t->eos = xstrdup(e))) return mtr_fail(MTR_ENOMEM, "out of memory");
    json_t *ct = json_object_get(cfg, "chat_template");
    const char *tpl = json_is_string(ct) ? json_string_value(ct) : NULL;
    if (json_is_array(ct)) /* named templates: the "default" one */
        for (size_t i = 0; i < json_array_size(ct); i++) {
            json_t *x = json_array_get(ct, i);
            const char *name = jstr(x, "name");
            if (name && strcmp(name, "default") == 0) tpl = jstr(x, "template");
        }
    if (tpl && !(t->chat_template = xstrdup(tpl))) return mtr_fail(MTR_ENOMEM, "out of memory");
    json_t *atd = json_object_get(cfg, "added_tokens_decoder");
    const char *key;
    json_t *val;
    json_object_foreach(atd, key, val) {
        char *end = NULL;
        errno = 0;
        long id = strtol(key, &end, 10);
        const char *content = jstr(val, "content");
        if (errno || *end || id < 0 || id >= MAX_IDS || !content) continue;
        if ((size_t)id < t->n_ids && t->tok_off[id] >= 0) continue; /* tokenizer.json already has it */
        if ((rc = add_token(t, content, strlen(content), (int32_t)id, val))) return rc;
    }
    return 0;
}

static int load_json(mtr_tok *t, json_t *root, json_t *cfg, const char *doc, const tk_js_span *vocab_sp,
                     const tk_js_span *merges_sp)
{
    int rc;
    if (!json_is_object(root)) return mtr_fail(MTR_EFORMAT, "tokenizer.json: not a JSON object");
    if ((rc = load_normalizer(t, json_object_get(root, "normalizer"), 0))) return rc;
    if ((rc = load_pretok(t, json_object_get(root, "pre_tokenizer"), 0))) return rc;
    /* the model works on raw bytes when the byte-level mapping is the last pre-tokenizer step */
    if (t->n_pre && t->pre[t->n_pre - 1].kind == TK_PRE_BYTELEVEL) {
        t->pre[t->n_pre - 1].map_bytes = false;
        t->model.byte_raw = true;
    }
    if ((rc = load_model(t, json_object_get(root, "model"), doc, vocab_sp, merges_sp))) return rc;
    if (t->model.byte_raw && t->model.byte_fallback) return mtr_fail(MTR_EFORMAT, "byte-level model with byte_fallback");
    json_t *added = json_object_get(root, "added_tokens");
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i), *idv = json_object_get(a, "id"), *cv = json_object_get(a, "content");
        if (!json_is_integer(idv) || !json_is_string(cv) || json_integer_value(idv) < 0 ||
            json_integer_value(idv) >= MAX_IDS)
            return mtr_fail(MTR_EFORMAT, "added token %zu has no valid id or content", i);
        if ((rc = add_token(t, json_string_value(cv), json_string_length(cv), (int32_t)json_integer_value(idv), a)))
            return rc;
    }
    if (cfg && (rc = load_config(t, cfg))) return rc;
    if ((rc = build_tries(t))) return rc;
    if ((rc = load_post(t, json_object_get(root, "post_processor"), 0))) return rc;
    for (size_t i = 0; i < t->post_prefix.n; i++)
        if ((size_t)t->post_prefix.ids[i] >= t->n_ids) return mtr_fail(MTR_EFORMAT, "post-processor id out of range");
    for (size_t i = 0; i < t->post_suffix.n; i++)
        if ((size_t)t->post_suffix.ids[i] >= t->n_ids) return mtr_fail(MTR_EFORMAT, "post-processor id out of range");
    if (t->model.unk_id >= 0 && (size_t)t->model.unk_id >= t->n_ids) t->model.unk_id = -1;
    return load_decoder(t, json_object_get(root, "decoder"), 0);
}

/* whole: jansson parses the entire document (the reference path); otherwise the scanner takes the bulk */
int tk_load_buffers(mtr_tok **out, const char *json, size_t len, const char *config, size_t config_len, bool whole)
{
    json_error_t jerr;
    json_t *root = NULL, *cfg = NULL;
    tk_js_span vocab_sp = {0}, merges_sp = {0};
    mtr_tok *t = NULL;
    int rc = 0;
    *out = NULL;
    if (!json) return mtr_fail(MTR_EINVAL, "no tokenizer.json text");
again:
    if (!whole && (rc = tk_js_split(&root, &vocab_sp, &merges_sp, json, len)) == TK_JS_WHOLE) whole = true;
    if (rc < 0) goto cleanup;
    rc = 0;
    if (whole && !(root = json_loadb(json, len, JSON_ALLOW_NUL, &jerr))) {
        rc = mtr_fail(MTR_EFORMAT, "tokenizer.json: line %d, byte %d: %s", jerr.line, jerr.position, jerr.text);
        goto cleanup;
    }
    if (config && !cfg && !(cfg = json_loadb(config, config_len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &jerr))) {
        rc = mtr_fail(MTR_EFORMAT, "tokenizer_config.json: line %d: %s", jerr.line, jerr.text);
        goto cleanup;
    }
    if (!(t = calloc(1, sizeof *t))) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto cleanup;
    }
    rc = load_json(t, root, json_is_object(cfg) ? cfg : NULL, json, whole ? NULL : &vocab_sp,
                   whole ? NULL : &merges_sp);
    if (rc == TK_JS_WHOLE && !whole) { /* duplicate vocabulary keys: jansson decides what they mean */
        mtr_tok_destroy(t);
        t = NULL;
        json_decref(root);
        root = NULL;
        whole = true;
        goto again;
    }
    if (rc) goto cleanup;
    *out = t;
    t = NULL;
cleanup:
    mtr_tok_destroy(t);
    json_decref(root);
    json_decref(cfg);
    return rc > 0 ? mtr_fail(MTR_EFORMAT, "tokenizer.json: duplicate keys") : rc;
}

int mtr_tok_load_buffers(mtr_tok **out, const char *json, size_t len, const char *config, size_t config_len)
{
    return tk_load_buffers(out, json, len, config, config_len, false);
}

int mtr_tok_load(mtr_tok **out, const char *path)
{
    char *json = NULL, *cfg = NULL, *dir = NULL, *file = NULL;
    size_t len = 0, clen = 0;
    int rc = 0;
    struct stat st;
    *out = NULL;
    if (!path) return mtr_fail(MTR_EINVAL, "no tokenizer path");
    size_t pl = strlen(path);
    if (!(dir = malloc(pl + 32)) || !(file = malloc(pl + 32))) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto cleanup;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dir, pl + 32, "%s", path);
        snprintf(file, pl + 32, "%s/tokenizer.json", path);
    } else {
        snprintf(file, pl + 32, "%s", path);
        snprintf(dir, pl + 32, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else strcpy(dir, ".");
    }
    /* read, not mapped: a file truncated by someone else while it loads is then a short read, never a fault */
    rc = mtr_read_file(&json, &len, file, MAX_FILE);
    if (rc) goto cleanup;
    char cpath[4200];
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    rc = mtr_read_file(&cfg, &clen, cpath, MAX_FILE);
    if (rc == MTR_ENOTFOUND) rc = 0;
    else if (rc) goto cleanup;
    if ((rc = mtr_tok_load_buffers(out, json, len, cfg, clen))) {
        /* the detail names the file by its base name ("tokenizer.json: ..."): name it by its path, once */
        const char *msg = mtr_errmsg(), *name = file;
        if (strncmp(msg, "tokenizer_config.json", 21) == 0) name = cpath, msg += 21;
        else if (strncmp(msg, "tokenizer.json", 14) == 0) msg += 14;
        if (*msg == ':') msg++;
        while (*msg == ' ') msg++;
        mtr_fail(rc, "%s: %s", name, msg);
    }
cleanup:
    free(json);
    free(cfg);
    free(dir);
    free(file);
    return rc;
}

void mtr_tok_destroy(mtr_tok *t)
{
    if (!t) return;
    tk_model_free(&t->model);
    free(t->tok_off);
    tk_buf_free(&t->tok_pool);
    free(t->special);
    tk_strmap_free(&t->tok_index);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->trie_raw.node);
    free(t->trie_norm.node);
    for (size_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].str);
        tk_regex_free(&t->norm[i].re);
    }
    free(t->norm);
    for (size_t i = 0; i < t->n_pre; i++) tk_regex_free(&t->pre[i].re);
    free(t->pre);
    for (size_t i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    free(t->dec);
    mtr_tok_ids_free(&t->post_prefix);
    mtr_tok_ids_free(&t->post_suffix);
    free(t->bos);
    free(t->eos);
    free(t->chat_template);
    tk_buf_free(&t->norm_buf);
    tk_buf_free(&t->pre_buf[0]);
    tk_buf_free(&t->pre_buf[1]);
    tk_spans_free(&t->pieces);
    tk_spans_free(&t->pieces_tmp);
    free(t);
}

/* ---- encode ---------------------------------------------------------------------------------------------- */

static bool is_word_char(int32_t cp)
{
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    utf8proc_category_t c = utf8proc_category(cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) || (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

/* start of the character that ends at s[i] (i > 0) */
static size_t char_before(const char *s, size_t i)
{
    size_t k = i - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return k;
}

/* Leftmost-longest match of the trie in s[pos..n): start, end, token index; false if none */
static bool trie_find(const tk_trie *tr, const char *s, size_t n, size_t pos, size_t *ms, size_t *me, int32_t *tok)
{
    for (size_t p = pos; p < n; p++) {
        int32_t x = tr->root_child[(unsigned char)s[p]];
        if (x < 0) continue;
        int32_t best = -1;
        size_t best_end = 0;
        for (size_t q = p;;) {
            if (tr->node[x].token >= 0) {
                best = tr->node[x].token;
                best_end = q + 1;
            }
            if (++q >= n) break;
            int32_t c = tr->node[x].child;
            while (c >= 0 && tr->node[c].byte != (uint8_t)s[q]) c = tr->node[c].sibling;
            if (c < 0) break;
            x = c;
        }
        if (best >= 0) {
            *ms = p;
            *me = best_end;
            *tok = best;
            return true;
        }
    }
    return false;
}

typedef int (*segment_fn)(mtr_tok *t, mtr_tok_ids *out, const char *s, size_t n, bool first);

/* Split s by the added tokens of tr: text between them goes to fn, tokens straight to out */
static int split_added(mtr_tok *t, mtr_tok_ids *out, const tk_trie *tr, const char *s, size_t n, unsigned flags,
                       bool first, segment_fn fn)
{
    int rc;
    size_t pos = 0, seg = 0, ms, me;
    int32_t ti;
    if (tr->n) {
        while (pos < n && trie_find(tr, s, n, pos, &ms, &me, &ti)) {
            const tk_added *a = &t->added[ti];
            pos = me;
            if ((flags & MTR_TOK_SPLIT_SPECIAL) && a->special) continue;
            if (a->single_word) {
                int32_t cb = 0, ca = 0;
                if (ms > 0) tk_utf8_next(s + char_before(s, ms), ms - char_before(s, ms), &cb);
                if (me < n) tk_utf8_next(s + me, n - me, &ca);
                if ((ms > 0 && is_word_char(cb)) || (me < n && is_word_char(ca))) continue;
            }
            size_t a0 = ms, b0 = me;
            while (a->lstrip && a0 > seg) {
                size_t k = char_before(s, a0);
                int32_t cp;
                tk_utf8_next(s + k, a0 - k, &cp);
                if (!tk_is_ws(cp)) break;
                a0 = k;
            }
            while (a->rstrip && b0 < n) {
                int32_t cp;
                int k = tk_utf8_next(s + b0, n - b0, &cp);
                if (!tk_is_ws(cp)) break;
                b0 += (size_t)k;
            }
            if (a0 > seg && (rc = fn(t, out, s + seg, a0 - seg, first && seg == 0))) return rc;
            if ((rc = tk_ids_push(out, a->id))) return rc;
            seg = pos = b0;
        }
    }
    if (n > seg && (rc = fn(t, out, s + seg, n - seg, first && seg == 0))) return rc;
    return 0;
}

/* normalized text between added tokens: pre-tokenize, then BPE per piece */
static int encode_normalized(mtr_tok *t, mtr_tok_ids *out, const char *s, size_t n, bool first)
{
    int rc;
    tk_buf *buf;
    if ((rc = tk_pretokenize(&t->pieces, &buf, t->pre_buf, &t->pieces_tmp, t->pre, t->n_pre, s, n, first)))
        return rc;
    for (size_t i = 0; i < t->pieces.n; i++)
        if ((rc = tk_bpe_word(&t->model, out, buf->p + t->pieces.v[i].off, t->pieces.v[i].len))) return rc;
    return 0;
}

/* raw text between non-normalized added tokens: normalize, then split out the normalized added tokens */
static int encode_raw(mtr_tok *t, mtr_tok_ids *out, const char *s, size_t n, bool first)
{
    int rc;
    if (t->n_norm) {
        if ((rc = tk_normalize(&t->norm_buf, t->norm, t->n_norm, s, n))) return rc;
        s = t->norm_buf.p;
        n = t->norm_buf.n;
    }
    return split_added(t, out, &t->trie_norm, s, n, 0, first, encode_normalized);
}

int mtr_tok_encode(mtr_tok_ids *out, mtr_tok *t, const char *text, size_t len, unsigned flags)
{
    if (!out || !t || (!text && len)) return mtr_fail(MTR_EINVAL, "encode: NULL argument");
    size_t bad = tk_utf8_valid_prefix(text, len);
    if (bad != len) return mtr_fail(MTR_EINVAL, "invalid UTF-8 at byte %zu", bad);
    size_t first = out->n;
    int rc = 0;
    if (flags & MTR_TOK_ADD_SPECIAL)
        for (size_t i = 0; i < t->post_prefix.n && !rc; i++) rc = tk_ids_push(out, t->post_prefix.ids[i]);
    if (!rc && len) rc = split_added(t, out, &t->trie_raw, text, len, flags, true, encode_raw);
    if (flags & MTR_TOK_ADD_SPECIAL)
        for (size_t i = 0; i < t->post_suffix.n && !rc; i++) rc = tk_ids_push(out, t->post_suffix.ids[i]);
    if (rc) out->n = first;
    return rc;
}

void mtr_tok_ids_free(mtr_tok_ids *v)
{
    if (!v) return;
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

/* ---- decode ---------------------------------------------------------------------------------------------- */

/* One decoder step: token strings (spans of in) -> token strings (spans of out) */
static int decode_step(const tk_dec *d, tk_buf *ob, tk_spans *os, const tk_buf *ib, const tk_spans *is)
{
    int rc = 0;
    ob->n = 0;
    os->n = 0;
    if (d->kind == TK_DEC_BYTELEVEL || d->kind == TK_DEC_FUSE) {
        for (size_t i = 0; i < is->n; i++) {
            const char *s = ib->p + is->v[i].off;
            size_t n = is->v[i].len;
            if (d->kind == TK_DEC_FUSE || !tk_bytelevel_unmap(ob, s, n))
                if ((rc = tk_buf_put(ob, s, n))) return rc;
        }
        return tk_spans_push(os, 0, (uint32_t)ob->n);
    }
    size_t group = 0; /* ByteFallback: bytes pending since this output offset */
    uint32_t gstart = 0;
    for (size_t i = 0; i < is->n; i++) {
        const char *s = ib->p + is->v[i].off;
        size_t n = is->v[i].len;
        uint32_t start = (uint32_t)ob->n;
        switch (d->kind) {
        case TK_DEC_BYTEFALLBACK: {
            unsigned v;
            char hex[3] = {0};
            if (n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && (memcpy(hex, s + 3, 2), 1) &&
                strspn(hex, "0123456789ABCDEF") == 2 && sscanf(hex, "%2X", &v) == 1) {
                if (!group) gstart = start;
                char c = (char)v;
                if ((rc = tk_buf_put(ob, &c, 1))) return rc;
                group++;
                if (i + 1 < is->n) continue;
                start = gstart;
            } else if (group) {
                /* close the pending byte group first */
                if (tk_utf8_valid_prefix(ob->p + gstart, ob->n - gstart) != ob->n - gstart) {
                    ob->n = gstart;
                    for (size_t k = 0; k < group; k++)
                        if ((rc = tk_buf_put(ob, "\xEF\xBF\xBD", 3))) return rc;
                }
                if ((rc = tk_spans_push(os, gstart, (uint32_t)(ob->n - gstart)))) return rc;
                group = 0;
                start = (uint32_t)ob->n;
                if ((rc = tk_buf_put(ob, s, n))) return rc;
                break;
            } else {
                if ((rc = tk_buf_put(ob, s, n))) return rc;
                break;
            }
            /* last token closed a byte group */
            if (tk_utf8_valid_prefix(ob->p + gstart, ob->n - gstart) != ob->n - gstart) {
                ob->n = gstart;
                for (size_t k = 0; k < group; k++)
                    if ((rc = tk_buf_put(ob, "\xEF\xBF\xBD", 3))) return rc;
            }
            group = 0;
            break;
        }
        case TK_DEC_METASPACE: {
            size_t rl = strlen(d->a);
            for (size_t k = 0; k < n;) {
                if (k + rl <= n && memcmp(s + k, d->a, rl) == 0) {
                    if (!(i == 0 && d->prepend_scheme != TK_PREPEND_NEVER) && (rc = tk_buf_put(ob, " ", 1))) return rc;
                    k += rl;
                } else {
                    if ((rc = tk_buf_put(ob, s + k, 1))) return rc;
                    k++;
                }
            }
            break;
        }
        case TK_DEC_STRIP: {
            size_t cl = strlen(d->a), a = 0, b = n;
            for (int k = 0; k < d->start && cl && b - a >= cl && memcmp(s + a, d->a, cl) == 0; k++) a += cl;
            for (int k = 0; k < d->stop && cl && b - a >= cl && memcmp(s + b - cl, d->a, cl) == 0; k++) b -= cl;
            rc = tk_buf_put(ob, s + a, b - a);
            break;
        }
        case TK_DEC_REPLACE: {
            size_t pl = strlen(d->a), cl = strlen(d->b);
            for (size_t k = 0; k < n && !rc;) {
                if (k + pl <= n && memcmp(s + k, d->a, pl) == 0) {
                    rc = tk_buf_put(ob, d->b, cl);
                    k += pl;
                } else {
                    rc = tk_buf_put(ob, s + k, 1);
                    k++;
                }
            }
            break;
        }
        }
        if (rc) return rc;
        if ((rc = tk_spans_push(os, start, (uint32_t)(ob->n - start)))) return rc;
    }
    if (!ob->p && (rc = tk_buf_reserve(ob, 0))) return rc;
    return 0;
}

int mtr_tok_decode(char **out, size_t *out_len, const mtr_tok *t, const int32_t *ids, size_t n, unsigned flags)
{
    tk_buf b[2] = {{0}, {0}}, res = {0};
    tk_spans s[2] = {{0}, {0}};
    int rc = 0, cur = 0;
    *out = NULL;
    if (!t || (!ids && n)) return mtr_fail(MTR_EINVAL, "decode: NULL argument");
    for (size_t i = 0; i < n; i++) {
        const char *tok = mtr_tok_id_to_token(t, ids[i]);
        if (!tok) {
            rc = mtr_fail(MTR_EINVAL, "id %d is not in the vocabulary", ids[i]);
            goto cleanup;
        }
        if ((flags & MTR_TOK_SKIP_SPECIAL) && t->special[ids[i]]) continue;
        uint32_t off = (uint32_t)b[0].n;
        if ((rc = tk_buf_put(&b[0], tok, strlen(tok))) || (rc = tk_spans_push(&s[0], off, (uint32_t)strlen(tok))))
            goto cleanup;
    }
    if (!b[0].p && (rc = tk_buf_reserve(&b[0], 0))) goto cleanup;
    for (size_t k = 0; k < t->n_dec; k++) {
        if ((rc = decode_step(&t->dec[k], &b[1 - cur], &s[1 - cur], &b[cur], &s[cur]))) goto cleanup;
        cur = 1 - cur;
    }
    /* join (with spaces when there is no decoder at all), then replace invalid UTF-8 */
    tk_buf joined = {0};
    for (size_t i = 0; i < s[cur].n && !rc; i++) {
        if (i && !t->has_decoder) rc = tk_buf_put(&joined, " ", 1);
        /* an empty piece may come from a buffer never allocated (NULL): nothing to add */
        if (!rc && s[cur].v[i].len) rc = tk_buf_put(&joined, b[cur].p + s[cur].v[i].off, s[cur].v[i].len);
    }
    if (!rc) rc = tk_utf8_lossy(&res, joined.p ? joined.p : "", joined.n);
    tk_buf_free(&joined);
    if (!rc && !res.p) rc = tk_buf_reserve(&res, 0);
    if (rc) goto cleanup;
    res.p[res.n] = '\0';
    *out = res.p;
    if (out_len) *out_len = res.n;
    res.p = NULL;
cleanup:
    tk_buf_free(&b[0]);
    tk_buf_free(&b[1]);
    tk_buf_free(&res);
    tk_spans_free(&s[0]);
    tk_spans_free(&s[1]);
    return rc;
}

/* ---- chat template --------------------------------------------------------------------------------------- */

bool mtr_tok_has_chat_template(const mtr_tok *t) { return t && t->chat_template; }

int mtr_tok_set_chat_template(mtr_tok *t, const char *source)
{
    if (!t || !source) return mtr_fail(MTR_EINVAL, "no template");
    char *p = xstrdup(source);
    if (!p) return mtr_fail(MTR_ENOMEM, "out of memory");
    free(t->chat_template);
    t->chat_template = p;
    return 0;
}

int mtr_tok_render_template(char **out, const char *source, const mtr_tok_message *msgs, size_t n,
                            const mtr_tok_chat_opts *opts, const char *bos_token, const char *eos_token)
{
    mtr_tok_chat_opts dflt = MTR_TOK_CHAT_OPTS_INIT;
    if (!opts) opts = &dflt;
    *out = NULL;
    if (!source || (!msgs && n)) return mtr_fail(MTR_EINVAL, "render: NULL argument");
    int rc = 0;
    json_t *ctx = json_object(), *arr = json_array();
    if (!ctx || !arr) {
        json_decref(arr);
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto cleanup;
    }
    json_object_set_new(ctx, "messages", arr);
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            rc = mtr_fail(MTR_EINVAL, "message %zu lacks role or content", i);
            goto cleanup;
        }
        json_array_append_new(arr, json_pack("{s:s, s:s}", "role", msgs[i].role, "content", msgs[i].content));
    }
    if (bos_token) json_object_set_new(ctx, "bos_token", json_string(bos_token));
    if (eos_token) json_object_set_new(ctx, "eos_token", json_string(eos_token));
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(opts->add_generation_prompt));
    if (opts->enable_thinking >= 0) json_object_set_new(ctx, "enable_thinking", json_boolean(opts->enable_thinking));
    rc = tk_jinja_render(out, source, ctx);
cleanup:
    json_decref(ctx);
    return rc;
}

int mtr_tok_apply_chat_template(char **out, mtr_tok *t, const mtr_tok_message *msgs, size_t n,
                                const mtr_tok_chat_opts *opts)
{
    *out = NULL;
    if (!t) return mtr_fail(MTR_EINVAL, "no tokenizer");
    if (!t->chat_template) return mtr_fail(MTR_ENOTFOUND, "the tokenizer has no chat template");
    return mtr_tok_render_template(out, t->chat_template, msgs, n, opts, t->bos, t->eos);
}
