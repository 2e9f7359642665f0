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
    /* the tail (most tokens are shorter than 8 bytes) in fixed-size loads; the length is in h already */
    uint64_t w = 0;
    if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, s, 4);
        memcpy(&hi, s + n - 4, 4);
        w = (uint64_t)hi << 32 | lo;
    } else if (n) {
        w = (uint64_t)s[0] | (uint64_t)s[n / 2] << 8 | (uint64_t)s[n - 1] << 16;
    }
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    return mix64(h);
}

/* ---- bytes -> int32 -------------------------------------------------------------------------------------- */

/* Slots hold the upper half of the hash beside the entry index, so a probe past another key rarely touches the
 * entries or the pool (the vocabulary is probed over a million times while loading). */
#define SLOT_TAG(h) ((h) & 0xFFFFFFFF00000000ULL)

static int strmap_rehash(tk_strmap *m, size_t cap)
{
    uint64_t *slot = calloc(cap, sizeof *slot);
    if (!slot) return mtr_fail(MTR_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->n; i++) {
        uint64_t hv = tk_hash_bytes(m->pool.p + m->ent[i].koff, m->ent[i].klen);
        size_t h = (size_t)hv & (cap - 1);
        while (slot[h]) h = (h + 1) & (cap - 1);
        slot[h] = SLOT_TAG(hv) | ((uint64_t)i + 1);
    }
    free(m->slot);
    m->slot = slot;
    m->mask = cap - 1;
    return 0;
}

static int strmap_ent_reserve(tk_strmap *m, size_t n)
{
    if (n <= m->cap) return 0;
    if (n > UINT32_MAX - 1) return mtr_fail(MTR_ENOMEM, "map too large");
    size_t cap = m->cap ? m->cap : 1024;
    while (cap < n) cap *= 2;
    tk_strent *e = realloc(m->ent, cap * sizeof *e);
    if (!e) return mtr_fail(MTR_ENOMEM, "out of memory");
    m->ent = e;
    m->cap = cap;
    return 0;
}

int tk_strmap_reserve(tk_strmap *m, size_t n, size_t pool_bytes)
{
    int rc;
    size_t cap = 1024;
    while (cap < 2 * (m->n + n) + 2) cap *= 2;
    if (cap > m->mask + 1 && (rc = strmap_rehash(m, cap))) return rc;
    if ((rc = strmap_ent_reserve(m, m->n + n))) return rc;
    return tk_buf_reserve(&m->pool, pool_bytes);
}

/* The value of k (hash hv) probing from slot h; -1 if absent */
static int32_t strmap_probe(const tk_strmap *m, const char *k, size_t klen, uint64_t hv, size_t h)
{
    uint64_t tag = SLOT_TAG(hv);
    for (;;) {
        uint64_t x = m->slot[h];
        if (!x) return -1;
        if ((x & 0xFFFFFFFF00000000ULL) == tag) {
            const tk_strent *e = &m->ent[(uint32_t)x - 1];
            if (e->klen == klen && memcmp(m->pool.p + e->koff, k, klen) == 0) return e->val;
        }
        h = (h + 1) & m->mask;
    }
}

int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t klen)
{
    if (!m->mask) return -1;
    uint64_t hv = tk_hash_bytes(k, klen);
    return strmap_probe(m, k, klen, hv, (size_t)hv & m->mask);
}

/* Lookups of n <= TK_MAP_BATCH keys at once (val[i] = tk_strmap_get(m, k[i], klen[i])). Loading probes the
 * vocabulary three times per merge at random places in tables larger than the caches, so the slots, then the
 * entries, then the key bytes of the whole batch are fetched before any is compared. */
void tk_strmap_get_many(const tk_strmap *m, const char *const *k, const uint32_t *klen, int32_t *val, size_t n)
{
    uint64_t hv[TK_MAP_BATCH];
    uint32_t hit[TK_MAP_BATCH];
    if (!m->mask || n > TK_MAP_BATCH) {
        for (size_t i = 0; i < n; i++) val[i] = tk_strmap_get(m, k[i], klen[i]);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        hv[i] = tk_hash_bytes(k[i], klen[i]);
        __builtin_prefetch(&m->slot[(size_t)hv[i] & m->mask]);
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t x = m->slot[(size_t)hv[i] & m->mask];
        hit[i] = x && (x & 0xFFFFFFFF00000000ULL) == SLOT_TAG(hv[i]) ? (uint32_t)x : 0;
        if (hit[i]) __builtin_prefetch(&m->ent[hit[i] - 1]);
    }
    for (size_t i = 0; i < n; i++)
        if (hit[i]) __builtin_prefetch(m->pool.p + m->ent[hit[i] - 1].koff);
    for (size_t i = 0; i < n; i++) {
        if (hit[i]) {
            const tk_strent *e = &m->ent[hit[i] - 1];
            if (e->klen == klen[i] && memcmp(m->pool.p + e->koff, k[i], klen[i]) == 0) {
                val[i] = e->val;
                continue;
            }
        }
        val[i] = strmap_probe(m, k[i], klen[i], hv[i], (size_t)hv[i] & m->mask);
    }
}

uint64_t tk_strmap_prefetch(const tk_strmap *m, const char *k, size_t klen)
{
    uint64_t hv = tk_hash_bytes(k, klen);
    if (m->mask) __builtin_prefetch(&m->slot[(size_t)hv & m->mask], 1);
    return hv;
}

/* Find k; if absent insert it with val. Returns the entry's index in *idx and whether it existed in *found. */
static int strmap_upsert(tk_strmap *m, const char *k, size_t klen, uint64_t hv, int32_t val, size_t *idx,
                         bool *found)
{
    int rc;
    if ((m->n + 1) * 2 > m->mask + 1 && (rc = strmap_rehash(m, m->mask ? 2 * (m->mask + 1) : 1024))) return rc;
    uint64_t tag = SLOT_TAG(hv);
    size_t h = (size_t)hv & m->mask;
    for (;;) {
        uint64_t x = m->slot[h];
        if (!x) break;
        if ((x & 0xFFFFFFFF00000000ULL) == tag) {
            const tk_strent *e = &m->ent[(uint32_t)x - 1];
            if (e->klen == klen && memcmp(m->pool.p + e->koff, k, klen) == 0) {
                *idx = (uint32_t)x - 1;
                *found = true;
                return 0;
            }
        }
        h = (h + 1) & m->mask;
    }
    if ((rc = strmap_ent_reserve(m, m->n + 1))) return rc;
    uint32_t off = (uint32_t)m->pool.n;
    if ((rc = tk_buf_put(&m->pool, k, klen))) return rc;
    m->ent[m->n].koff = off;
    m->ent[m->n].klen = (uint32_t)klen;
    m->ent[m->n].val = val;
    m->slot[h] = tag | ((uint64_t)m->n + 1);
    *idx = m->n++;
    *found = false;
    return 0;
}

int tk_strmap_put_h(tk_strmap *m, const char *k, size_t klen, uint64_t hv, int32_t val)
{
    size_t i;
    bool found;
    int rc = strmap_upsert(m, k, klen, hv, val, &i, &found);
    if (!rc && found) m->ent[i].val = val;
    return rc;
}

int tk_strmap_add_h(tk_strmap *m, const char *k, size_t klen, uint64_t hv, int32_t val, int32_t *old)
{
    size_t i;
    bool found;
    int rc = strmap_upsert(m, k, klen, hv, val, &i, &found);
    if (!rc) *old = found ? m->ent[i].val : -1;
    return rc;
}

int tk_strmap_put(tk_strmap *m, const char *k, size_t klen, int32_t val)
{
    return tk_strmap_put_h(m, k, klen, tk_hash_bytes(k, klen), val);
}

int tk_strmap_add(tk_strmap *m, const char *k, size_t klen, int32_t val, int32_t *old)
{
    return tk_strmap_add_h(m, k, klen, tk_hash_bytes(k, klen), val, old);
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
    free(m->ent);
    tk_buf_free(&m->pool);
    memset(m, 0, sizeof *m);
}

/* ---- pairs ----------------------------------------------------------------------------------------------- */

/* Keys are stored plus one so that an empty slot is zero and a new table is calloc's untouched pages */
#define PAIR_KEY(a, b) (((uint64_t)(uint32_t)(a) << 32 | (uint32_t)(b)) + 1)

static int pairmap_alloc(tk_pairmap *m, size_t cap)
{
    tk_pairent *e = calloc(cap, sizeof *e);
    if (!e) return mtr_fail(MTR_ENOMEM, "out of memory");
    m->e = e;
    m->mask = cap - 1;
    return 0;
}

int tk_pairmap_init(tk_pairmap *m, size_t expected)
{
    size_t cap = 1024;
    while (cap < 2 * expected + 2) cap *= 2;
    free(m->e);
    m->e = NULL;
    m->n = 0;
    return pairmap_alloc(m, cap);
}

int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    int rc;
    if (!m->e && (rc = tk_pairmap_init(m, 0))) return rc;
    if ((m->n + 1) * 2 > m->mask + 1) { /* more than announced: double */
        tk_pairmap old = *m;
        if ((rc = pairmap_alloc(m, 2 * (old.mask + 1)))) {
            *m = old;
            return rc;
        }
        for (size_t i = 0; i <= old.mask; i++) {
            if (!old.e[i].key) continue;
            size_t h = (size_t)mix64(old.e[i].key) & m->mask;
            while (m->e[h].key) h = (h + 1) & m->mask;
            m->e[h] = old.e[i];
        }
        free(old.e);
    }
    uint64_t k = PAIR_KEY(a, b);
    size_t h = (size_t)mix64(k) & m->mask;
    while (m->e[h].key) {
        if (m->e[h].key == k) return 0; /* a repeated merge keeps its first (lowest) rank */
        h = (h + 1) & m->mask;
    }
    m->e[h].key = k;
    m->e[h].rank = rank;
    m->e[h].id = id;
    m->n++;
    return 0;
}

void tk_pairmap_prefetch(const tk_pairmap *m, int32_t a, int32_t b)
{
    if (m->e) __builtin_prefetch(&m->e[(size_t)mix64(PAIR_KEY(a, b)) & m->mask], 1);
}

bool tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id)
{
    if (!m->e) return false;
    uint64_t k = PAIR_KEY(a, b);
    size_t h = (size_t)mix64(k) & m->mask;
    for (;;) {
        const tk_pairent *e = &m->e[h];
        if (e->key == k) {
            *rank = e->rank;
            *id = e->id;
            return true;
        }
        if (!e->key) return false;
        h = (h + 1) & m->mask;
    }
}

void tk_pairmap_free(tk_pairmap *m)
{
    free(m->e);
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
        if (!p) return mtr_fail(MTR_ENOMEM, "out of memory");
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
    if (!a) return mtr_fail(MTR_ENOMEM, "out of memory");
    m->sym_id = a;
    int32_t *b = realloc(m->sym_prev, cap * sizeof *b);
    if (!b) return mtr_fail(MTR_ENOMEM, "out of memory");
    m->sym_prev = b;
    int32_t *c = realloc(m->sym_next, cap * sizeof *c);
    if (!c) return mtr_fail(MTR_ENOMEM, "out of memory");
    m->sym_next = c;
    uint32_t *d = realloc(m->sym_len, cap * sizeof *d);
    if (!d) return mtr_fail(MTR_ENOMEM, "out of memory");
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
            if (m->unk_id < 0) return mtr_fail(MTR_EFORMAT, "no token for '%.*s' and no unk_token", (int)ul, w + i);
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
