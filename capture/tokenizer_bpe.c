/* tokenizer_bpe.c — the BPE model: vocabulary and merge tables (open-addressing hash maps) and the merge loop,
 * which applies the lowest-ranked adjacent pair first and the leftmost among equal ranks, as the reference's
 * priority-queue implementation does. Words seen before come from a bounded cache. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

/* ---- hashing --------------------------------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    return x;
}

uint64_t tk_hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    return mix64(h);
}

/* ---- bytes -> int32 -------------------------------------------------------------------------------------- */

static int strmap_grow(tk_strmap *m)
{
    size_t cap = m->mask ? 2 * (m->mask + 1) : 1024;
    uint32_t *slot = calloc(cap, sizeof *slot);
    if (!slot) return tk_fail(MTR_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->n; i++) {
        size_t h = (size_t)tk_hash_bytes(m->pool.p + m->koff[i], m->klen[i]) & (cap - 1);
        while (slot[h]) h = (h + 1) & (cap - 1);
        slot[h] = (uint32_t)i + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->mask = cap - 1;
    return 0;
}

int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t klen)
{
    if (!m->mask) return -1;
    size_t h = (size_t)tk_hash_bytes(k, klen) & m->mask;
    for (;;) {
        uint32_t e = m->slot[h];
        if (!e) return -1;
        e--;
        if (m->klen[e] == klen && memcmp(m->pool.p + m->koff[e], k, klen) == 0) return m->val[e];
        h = (h + 1) & m->mask;
    }
}

int tk_strmap_put(tk_strmap *m, const char *k, size_t klen, int32_t val)
{
    int rc;
    if ((m->n + 1) * 2 > m->mask + 1 && (rc = strmap_grow(m))) return rc;
    size_t h = (size_t)tk_hash_bytes(k, klen) & m->mask;
    for (;;) {
        uint32_t e = m->slot[h];
        if (!e) break;
        e--;
        if (m->klen[e] == klen && memcmp(m->pool.p + m->koff[e], k, klen) == 0) {
            m->val[e] = val;
            return 0;
        }
        h = (h + 1) & m->mask;
    }
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 1024;
        uint32_t *ko = realloc(m->koff, cap * sizeof *ko);
        if (!ko) return tk_fail(MTR_ENOMEM, "out of memory");
        m->koff = ko;
        uint32_t *kl = realloc(m->klen, cap * sizeof *kl);
        if (!kl) return tk_fail(MTR_ENOMEM, "out of memory");
        m->klen = kl;
        int32_t *v = realloc(m->val, cap * sizeof *v);
        if (!v) return tk_fail(MTR_ENOMEM, "out of memory");
        m->val = v;
        m->cap = cap;
    }
    uint32_t off = (uint32_t)m->pool.n;
    if ((rc = tk_buf_put(&m->pool, k, klen))) return rc;
    m->koff[m->n] = off;
    m->klen[m->n] = (uint32_t)klen;
    m->val[m->n] = val;
    m->slot[h] = (uint32_t)++m->n;
    return 0;
}

static void strmap_clear(tk_strmap *m)
{
    if (m->slot) memset(m->slot, 0, (m->mask + 1) * sizeof *m->slot);
    m->n = 0;
    m->pool.n = 0;
}

void tk_strmap_free(tk_strmap *m)
{
    free(m->slot);
    free(m->koff);
    free(m->klen);
    free(m->val);
    tk_buf_free(&m->pool);
    memset(m, 0, sizeof *m);
}

/* ---- pairs ----------------------------------------------------------------------------------------------- */

int tk_pairmap_init(tk_pairmap *m, size_t expected)
{
    size_t cap = 1024;
    while (cap < 2 * expected + 2) cap *= 2;
    m->key = malloc(cap * sizeof *m->key);
    m->rank = malloc(cap * sizeof *m->rank);
    m->id = malloc(cap * sizeof *m->id);
    if (!m->key || !m->rank || !m->id) return tk_fail(MTR_ENOMEM, "out of memory");
    memset(m->key, 0xff, cap * sizeof *m->key);
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    if ((m->n + 1) * 2 > m->mask + 1) return tk_fail(MTR_EFORMAT, "more merges than announced");
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t h = (size_t)mix64(k) & m->mask;
    while (m->key[h] != UINT64_MAX) {
        if (m->key[h] == k) return 0; /* a repeated merge keeps its first (lowest) rank */
        h = (h + 1) & m->mask;
    }
    m->key[h] = k;
    m->rank[h] = rank;
    m->id[h] = id;
    m->n++;
    return 0;
}

bool tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id)
{
    if (!m->key) return false;
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t h = (size_t)mix64(k) & m->mask;
    for (;;) {
        uint64_t x = m->key[h];
        if (x == k) {
            *rank = m->rank[h];
            *id = m->id[h];
            return true;
        }
        if (x == UINT64_MAX) return false;
        h = (h + 1) & m->mask;
    }
}

void tk_pairmap_free(tk_pairmap *m)
{
    free(m->key);
    free(m->rank);
    free(m->id);
    memset(m, 0, sizeof *m);
}

/* ---- the merge loop -------------------------------------------------------------------------------------- */

typedef struct {
    int32_t rank, pos, id;
} merge_cand;

static inline bool cand_less(const merge_cand *x, const merge_cand *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static int heap_push(tk_model *m, size_t *n, merge_cand c)
{
    if (*n == m->heap_cap) {
        size_t cap = m->heap_cap ? 2 * m->heap_cap : 256;
        void *p = realloc(m->heap, cap * sizeof(merge_cand));
        if (!p) return tk_fail(MTR_ENOMEM, "out of memory");
        m->heap = p;
        m->heap_cap = cap;
    }
    merge_cand *h = m->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
    return 0;
}

static merge_cand heap_pop(tk_model *m, size_t *n)
{
    merge_cand *h = m->heap;
    merge_cand top = h[0];
    merge_cand last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= *n) break;
        size_t r = l + 1;
        size_t c = (r < *n && cand_less(&h[r], &h[l])) ? r : l;
        if (!cand_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static int sym_reserve(tk_model *m, size_t n)
{
    if (n <= m->sym_cap) return 0;
    size_t cap = m->sym_cap ? m->sym_cap : 64;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(m->sym_id, cap * sizeof *a);
    if (!a) return tk_fail(MTR_ENOMEM, "out of memory");
    m->sym_id = a;
    int32_t *b = realloc(m->sym_prev, cap * sizeof *b);
    if (!b) return tk_fail(MTR_ENOMEM, "out of memory");
    m->sym_prev = b;
    int32_t *c = realloc(m->sym_next, cap * sizeof *c);
    if (!c) return tk_fail(MTR_ENOMEM, "out of memory");
    m->sym_next = c;
    uint32_t *d = realloc(m->sym_len, cap * sizeof *d);
    if (!d) return tk_fail(MTR_ENOMEM, "out of memory");
    m->sym_len = d;
    m->sym_cap = cap;
    return 0;
}

/* Initial symbols of a word: one per byte (byte_raw) or per character, with prefix/suffix, byte fallback and
 * unk as the reference applies them. Returns the symbol count in *ns. */
static int initial_symbols(tk_model *m, const char *w, size_t n, size_t *ns)
{
    int rc;
    size_t k = 0;
    bool prev_unk = false;
    if ((rc = sym_reserve(m, n + 1))) return rc;
    for (size_t i = 0; i < n;) {
        size_t ul = 1;
        if (!m->byte_raw) {
            int32_t cp;
            ul = (size_t)tk_utf8_next(w + i, n - i, &cp);
        }
        int32_t id;
        const char *key = w + i;
        size_t klen = ul;
        if ((m->prefix && i > 0) || (m->suffix && i + ul == n)) {
            m->word.n = 0;
            if (m->prefix && i > 0 && (rc = tk_buf_put(&m->word, m->prefix, strlen(m->prefix)))) return rc;
            if ((rc = tk_buf_put(&m->word, w + i, ul))) return rc;
            if (m->suffix && i + ul == n && (rc = tk_buf_put(&m->word, m->suffix, strlen(m->suffix)))) return rc;
            key = m->word.p;
            klen = m->word.n;
        }
        if (m->byte_raw && klen == 1)
            id = m->byte_tok[(unsigned char)key[0]];
        else
            id = tk_strmap_get(&m->vocab, key, klen);
        if (id < 0 && m->byte_fallback) {
            bool all = true;
            for (size_t b = 0; b < klen; b++)
                if (m->byte_tok[(unsigned char)key[b]] < 0) all = false;
            if (all) {
                if ((rc = sym_reserve(m, k + klen + n))) return rc;
                for (size_t b = 0; b < klen; b++) {
                    m->sym_id[k] = m->byte_tok[(unsigned char)key[b]];
                    m->sym_len[k] = b + 1 == klen ? (uint32_t)ul : 0;
                    k++;
                }
                prev_unk = false;
                i += ul;
                continue;
            }
        }
        if (id < 0) {
            if (m->unk_id < 0) return tk_fail(MTR_EFORMAT, "no token for '%.*s' and no unk_token", (int)ul, w + i);
            if (m->fuse_unk && prev_unk) {
                m->sym_len[k - 1] += (uint32_t)ul;
                i += ul;
                continue;
            }
            id = m->unk_id;
            prev_unk = true;
        } else {
            prev_unk = false;
        }
        if ((rc = sym_reserve(m, k + 1))) return rc;
        m->sym_id[k] = id;
        m->sym_len[k] = (uint32_t)ul;
        k++;
        i += ul;
    }
    *ns = k;
    return 0;
}

static int merge_word(tk_model *m, size_t ns)
{
    int rc;
    size_t hn = 0;
    for (size_t i = 0; i < ns; i++) {
        m->sym_prev[i] = (int32_t)i - 1;
        m->sym_next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < ns; i++) {
        merge_cand c;
        if (tk_pairmap_get(&m->merges, m->sym_id[i], m->sym_id[i + 1], &c.rank, &c.id)) {
            c.pos = (int32_t)i;
            if ((rc = heap_push(m, &hn, c))) return rc;
        }
    }
    while (hn) {
        merge_cand top = heap_pop(m, &hn);
        int32_t p = top.pos;
        if (m->sym_id[p] < 0) continue; /* merged into its left neighbour */
        int32_t r = m->sym_next[p];
        if (r < 0) continue;
        int32_t rank, id;
        if (!tk_pairmap_get(&m->merges, m->sym_id[p], m->sym_id[r], &rank, &id) || id != top.id) continue;
        m->sym_id[p] = id;
        m->sym_len[p] += m->sym_len[r];
        m->sym_id[r] = -1;
        m->sym_next[p] = m->sym_next[r];
        if (m->sym_next[r] >= 0) m->sym_prev[m->sym_next[r]] = p;
        merge_cand c;
        int32_t q = m->sym_prev[p];
        if (q >= 0 && tk_pairmap_get(&m->merges, m->sym_id[q], id, &c.rank, &c.id)) {
            c.pos = q;
            if ((rc = heap_push(m, &hn, c))) return rc;
        }
        int32_t s = m->sym_next[p];
        if (s >= 0 && tk_pairmap_get(&m->merges, id, m->sym_id[s], &c.rank, &c.id)) {
            c.pos = p;
            if ((rc = heap_push(m, &hn, c))) return rc;
        }
    }
    return 0;
}

#define CACHE_MAX_WORD 256
#define CACHE_MAX_ENTRIES 200000

int tk_bpe_word(tk_model *m, mtr_tok_ids *out, const char *w, size_t n)
{
    int rc;
    if (!n) return 0;
    bool cacheable = n <= CACHE_MAX_WORD;
    if (cacheable) {
        int32_t off = tk_strmap_get(&m->cache, w, n);
        if (off >= 0) {
            int32_t cnt = m->cache_ids.ids[off];
            for (int32_t i = 0; i < cnt; i++)
                if ((rc = tk_ids_push(out, m->cache_ids.ids[off + 1 + i]))) return rc;
            return 0;
        }
    }
    size_t first = out->n;
    int32_t whole = -1;
    if (m->ignore_merges) whole = n == 1 && m->byte_raw ? m->byte_tok[(unsigned char)w[0]] : tk_strmap_get(&m->vocab, w, n);
    if (whole >= 0) {
        if ((rc = tk_ids_push(out, whole))) return rc;
    } else {
        size_t ns = 0;
        if ((rc = initial_symbols(m, w, n, &ns))) return rc;
        if ((rc = merge_word(m, ns))) return rc;
        for (size_t i = 0; i < ns; i++)
            if (m->sym_id[i] >= 0 && (rc = tk_ids_push(out, m->sym_id[i]))) return rc;
    }
    if (cacheable) {
        if (m->cache.n >= CACHE_MAX_ENTRIES) {
            strmap_clear(&m->cache);
            m->cache_ids.n = 0;
        }
        int32_t off = (int32_t)m->cache_ids.n;
        if ((rc = tk_ids_push(&m->cache_ids, (int32_t)(out->n - first)))) return rc;
        for (size_t i = first; i < out->n; i++)
            if ((rc = tk_ids_push(&m->cache_ids, out->ids[i]))) return rc;
        if ((rc = tk_strmap_put(&m->cache, w, n, off))) return rc;
    }
    return 0;
}

void tk_model_free(tk_model *m)
{
    tk_strmap_free(&m->vocab);
    tk_pairmap_free(&m->merges);
    tk_strmap_free(&m->cache);
    mtr_tok_ids_free(&m->cache_ids);
    free(m->prefix);
    free(m->suffix);
    free(m->sym_id);
    free(m->sym_prev);
    free(m->sym_next);
    free(m->sym_off);
    free(m->sym_len);
    free(m->heap);
    tk_buf_free(&m->word);
}
