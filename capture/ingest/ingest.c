/* ingest.c — the ingest stream of traces/INGEST.md: encoder, validating decoder and the bounded reader/writer
 * pipeline behind `moetrace-capture ingest` (capture/mtr_ingest.h). Every size read from the stream is checked
 * against the limits and the header before anything is allocated from it. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mtr_ingest.h"
#include "mtr_util.h"

/* arrays are used in place, so the host must share the stream's byte order */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ingest decoder uses little-endian arrays in place; add byte swapping for this host"
#endif


/* ---- little-endian fields ------------------------------------------------------------------------------ */

static void put_u16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }
static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint16_t get_u16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

static uint64_t pad8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

/* ---- sizes ------------------------------------------------------------------------------------------------ */

typedef struct {
    uint64_t strings, token_ids, positions, roles, logits, body;
} seq_layout; /* byte offsets inside the body; body = total body length */

static int layout_of(seq_layout *o, uint32_t L, uint32_t E, uint32_t T, mtr_dtype dt, uint64_t slen, unsigned fields)
{
    if (L == 0 || L > MTR_MAX_LAYERS || E == 0 || E > MTR_MAX_EXPERTS || T == 0 || T > MTR_INGEST_MAX_TOKENS ||
        (unsigned)dt >= MTR_DTYPE_COUNT || (fields & ~7u))
        return -1;
    uint64_t p = MTR_INGEST_SEQ_FIXED_BYTES;
    o->strings = p;
    p += pad8(slen);
    o->token_ids = p;
    if (fields & MTR_INGEST_HAS_TOKEN_IDS) p += pad8((uint64_t)T * 4);
    o->positions = p;
    if (fields & MTR_INGEST_HAS_POSITIONS) p += pad8((uint64_t)T * 4);
    o->roles = p;
    if (fields & MTR_INGEST_HAS_ROLES) p += pad8(T);
    o->logits = p;
    p += pad8((uint64_t)T * L * E * mtr_dtype_size(dt)); /* < 2^24 * 2^10 * 2^16 * 4: no overflow */
    o->body = p;
    return 0;
}

uint64_t mtr_ingest_seq_frame_bytes(uint32_t n_layers, uint32_t n_experts, uint32_t n_tokens, mtr_dtype dtype,
                                    size_t unit_len, size_t lang_len, size_t dataset_len, unsigned fields)
{
    seq_layout lo;
    if (unit_len > MTR_INGEST_MAX_STRING || lang_len > MTR_INGEST_MAX_STRING || dataset_len > MTR_INGEST_MAX_STRING ||
        layout_of(&lo, n_layers, n_experts, n_tokens, dtype, unit_len + lang_len + dataset_len, fields))
        return 0;
    return MTR_INGEST_FRAME_HEAD_BYTES + lo.body;
}

/* ---- encoder ---------------------------------------------------------------------------------------------- */

static json_t *json_object_text(const char *text, const char *what, int *rc)
{
    json_error_t err;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(j)) {
        json_decref(j);
        *rc = mtr_fail(MTR_EINVAL, "%s is not a JSON object", what);
        return NULL;
    }
    return j;
}

int mtr_ingest_encode_header(void **out, size_t *len, const mtr_model_info *m, const mtr_ingest_header_extra *x)
{
    static const mtr_ingest_header_extra none = MTR_INGEST_HEADER_EXTRA_INIT;
    int rc = 0;
    json_t *root = NULL;
    char *text = NULL;
    unsigned char *buf = NULL;
    *out = NULL;
    *len = 0;
    if (!x) x = &none;
    if (mtr_model_info_check(m)) return mtr_fail(MTR_EINVAL, "model description: %s", mtr_errmsg());
    root = json_object();
    json_t *lmap = json_array(), *sb = json_null();
    for (uint32_t l = 0; l < m->n_layers; l++) json_array_append_new(lmap, json_integer(m->layer_index[l]));
    if (m->selection_bias) {
        json_decref(sb);
        sb = json_array();
        for (uint32_t l = 0; l < m->n_layers; l++) {
            json_t *row = json_array();
            for (uint32_t e = 0; e < m->n_experts; e++)
                json_array_append_new(row, json_real(m->selection_bias[(size_t)l * m->n_experts + e]));
            json_array_append_new(sb, row);
        }
    }
    json_object_set_new(root, "model_id", json_string(m->model_id));
    json_object_set_new(root, "model_type", json_string(m->model_type));
    json_object_set_new(root, "n_layers", json_integer(m->n_layers));
    json_object_set_new(root, "n_decoder_layers", json_integer(m->n_decoder_layers));
    json_object_set_new(root, "layer_index", lmap);
    json_object_set_new(root, "n_experts", json_integer(m->n_experts));
    json_object_set_new(root, "top_k", json_integer(m->top_k));
    json_object_set_new(root, "score_fn", json_string(mtr_score_fn_name(m->score_fn)));
    json_object_set_new(root, "renormalize", json_boolean(m->renormalize));
    json_object_set_new(root, "router_bias", json_boolean(m->router_bias));
    json_object_set_new(root, "selection_bias", sb);
    if (m->score_fn == MTR_SCORE_SPARSEMIXER)
        json_object_set_new(root, MTR_A_SPARSEMIXER_EPS, json_real(m->sparsemixer_eps));
    if (x->has_logits_dtype) json_object_set_new(root, "logits_dtype", json_string(mtr_dtype_name(x->logits_dtype)));
    if (x->producer) json_object_set_new(root, "producer", json_string(x->producer));
    if (x->producer_version) json_object_set_new(root, "producer_version", json_string(x->producer_version));
    if (x->corpus_id) json_object_set_new(root, "corpus_id", json_string(x->corpus_id));
    if (x->capture_settings) {
        json_t *j = json_object_text(x->capture_settings, "capture_settings", &rc);
        if (!j) goto out_free;
        json_object_set_new(root, "capture_settings", j);
    }
    if (x->steering) {
        json_t *j = json_object_text(x->steering, "steering", &rc);
        if (!j) goto out_free;
        json_object_set_new(root, "steering", j);
    }
    text = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(9) | JSON_ENSURE_ASCII);
    if (!text) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    size_t n = strlen(text);
    if (n > MTR_INGEST_MAX_HEADER_JSON) {
        rc = mtr_fail(MTR_EINVAL, "header JSON of %zu bytes exceeds %u", n, MTR_INGEST_MAX_HEADER_JSON);
        goto out_free;
    }
    buf = malloc(MTR_INGEST_PRELUDE_BYTES + n);
    if (!buf) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    memcpy(buf, MTR_INGEST_MAGIC, MTR_INGEST_MAGIC_LEN);
    put_u16(buf + 8, MTR_INGEST_VERSION);
    put_u16(buf + 10, MTR_INGEST_MINOR);
    put_u32(buf + 12, (uint32_t)n);
    memcpy(buf + MTR_INGEST_PRELUDE_BYTES, text, n);
    *out = buf;
    *len = MTR_INGEST_PRELUDE_BYTES + n;
out_free:
    free(text);
    json_decref(root);
    return rc;
}

int mtr_ingest_encode_seq(void *buf, size_t cap, size_t *len, uint32_t n_layers, uint32_t n_experts,
                          const mtr_seq_meta *meta, const int32_t *token_ids, const int32_t *positions,
                          const uint8_t *roles, const void *logits, mtr_dtype dtype)
{
    const char *u = meta->unit_id ? meta->unit_id : "", *g = meta->lang ? meta->lang : "",
               *ds = meta->dataset ? meta->dataset : "";
    size_t ul = strlen(u), gl = strlen(g), dl = strlen(ds);
    unsigned fields = (token_ids ? MTR_INGEST_HAS_TOKEN_IDS : 0u) | (positions ? MTR_INGEST_HAS_POSITIONS : 0u) |
                      (roles ? MTR_INGEST_HAS_ROLES : 0u);
    uint32_t T = meta->n_tokens;
    uint64_t total = mtr_ingest_seq_frame_bytes(n_layers, n_experts, T, dtype, ul, gl, dl, fields);
    *len = 0;
    if (!total) return mtr_fail(MTR_EINVAL, "sequence %llu: sizes outside the ingest limits", (unsigned long long)meta->seq_id);
    if (total > cap) return mtr_fail(MTR_EINVAL, "frame of %llu bytes does not fit %zu", (unsigned long long)total, cap);
    if (meta->flags & ~MTR_INGEST_SEQ_FLAGS) return mtr_fail(MTR_EINVAL, "unknown sequence flags 0x%x", meta->flags);
    seq_layout lo;
    layout_of(&lo, n_layers, n_experts, T, dtype, ul + gl + dl, fields);
    unsigned char *f = buf, *b = f + MTR_INGEST_FRAME_HEAD_BYTES;
    memcpy(f, MTR_INGEST_TAG_SEQ, 4);
    put_u32(f + 4, 0);
    put_u64(f + 8, lo.body);
    put_u64(b, meta->seq_id);
    put_u32(b + 8, T);
    put_u32(b + 12, meta->flags);
    b[16] = (unsigned char)dtype;
    b[17] = (unsigned char)fields;
    put_u16(b + 18, (uint16_t)ul);
    put_u16(b + 20, (uint16_t)gl);
    put_u16(b + 22, (uint16_t)dl);
    put_u32(b + 24, n_layers);
    put_u32(b + 28, n_experts);
    memset(b + lo.strings, 0, lo.body - lo.strings); /* padding is zero */
    memcpy(b + lo.strings, u, ul);
    memcpy(b + lo.strings + ul, g, gl);
    memcpy(b + lo.strings + ul + gl, ds, dl);
    if (token_ids) memcpy(b + lo.token_ids, token_ids, (size_t)T * 4);
    if (positions) memcpy(b + lo.positions, positions, (size_t)T * 4);
    if (roles) memcpy(b + lo.roles, roles, T);
    memcpy(b + lo.logits, logits, (size_t)T * n_layers * n_experts * mtr_dtype_size(dtype));
    *len = (size_t)total;
    return 0;
}

void mtr_ingest_encode_end(unsigned char buf[24], uint64_t n_sequences)
{
    memcpy(buf, MTR_INGEST_TAG_END, 4);
    put_u32(buf + 4, 0);
    put_u64(buf + 8, MTR_INGEST_END_BODY_BYTES);
    put_u64(buf + 16, n_sequences);
}

/* ---- header ----------------------------------------------------------------------------------------------- */

void mtr_ingest_header_destroy(mtr_ingest_header *h)
{
    if (!h) return;
    free(h->selection_bias);
    free(h->capture_settings);
    free(h->steering);
    memset(h, 0, sizeof *h);
}

static int j_uint(uint32_t *out, json_t *o, const char *key, uint32_t lo, uint32_t hi)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return mtr_fail(MTR_EFORMAT, "header: '%s' must be an integer in %u..%u", key, lo, hi);
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

static int j_str(char *out, size_t cap, json_t *o, const char *key, bool required)
{
    json_t *v = json_object_get(o, key);
    if (!v && !required) return 0;
    if (!json_is_string(v) || json_string_length(v) >= cap || strlen(json_string_value(v)) != json_string_length(v))
        return mtr_fail(MTR_EFORMAT, "header: '%s' must be a string of at most %zu bytes", key, cap - 1);
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

static int j_bool(bool *out, json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!v) return (*out = false, 0);
    if (!json_is_boolean(v)) return mtr_fail(MTR_EFORMAT, "header: '%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

static int parse_header_json(mtr_ingest_header *h, const char *text, size_t n)
{
    int rc = 0;
    json_error_t err;
    json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(root)) {
        rc = mtr_fail(MTR_EFORMAT, "header: %s", root ? "not a JSON object" : err.text);
        goto out_free;
    }
    mtr_model_info *m = &h->model;
    uint32_t L, E, K, ND;
    if ((rc = j_uint(&L, root, "n_layers", 1, MTR_MAX_LAYERS)) || (rc = j_uint(&E, root, "n_experts", 1, MTR_MAX_EXPERTS)) ||
        (rc = j_uint(&K, root, "top_k", 1, MTR_MAX_TOPK)))
        goto out_free;
    mtr_model_info_init(m, "", "", L, E, K);
    if ((rc = j_str(m->model_id, sizeof m->model_id, root, "model_id", true)) ||
        (rc = j_str(m->model_type, sizeof m->model_type, root, "model_type", true)))
        goto out_free;
    if (json_object_get(root, "n_decoder_layers")) {
        if ((rc = j_uint(&ND, root, "n_decoder_layers", L, 1u << 20))) goto out_free;
        m->n_decoder_layers = ND;
    }
    json_t *lmap = json_object_get(root, "layer_index");
    if (lmap) {
        if (!json_is_array(lmap) || json_array_size(lmap) != L) {
            rc = mtr_fail(MTR_EFORMAT, "header: 'layer_index' must list %u layers", L);
            goto out_free;
        }
        for (uint32_t l = 0; l < L; l++) {
            json_t *v = json_array_get(lmap, l);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
                rc = mtr_fail(MTR_EFORMAT, "header: layer_index[%u] is not a non-negative integer", l);
                goto out_free;
            }
            m->layer_index[l] = (int32_t)json_integer_value(v);
        }
    }
    json_t *sf = json_object_get(root, "score_fn");
    if (sf && (!json_is_string(sf) || mtr_score_fn_parse(&m->score_fn, json_string_value(sf)))) {
        rc = mtr_fail(MTR_EFORMAT, "header: 'score_fn' must be softmax, sigmoid, topk_softmax or sparsemixer");
        goto out_free;
    }
    if (m->score_fn == MTR_SCORE_SPARSEMIXER) {
        json_t *eps = json_object_get(root, MTR_A_SPARSEMIXER_EPS);
        if (!json_is_number(eps) || !(json_number_value(eps) >= 0 && json_number_value(eps) < 1)) {
            rc = mtr_fail(MTR_EFORMAT, "header: score_fn sparsemixer needs '%s', a number in [0, 1)",
                          MTR_A_SPARSEMIXER_EPS);
            goto out_free;
        }
        m->sparsemixer_eps = json_number_value(eps);
    }
    if ((rc = j_bool(&m->renormalize, root, "renormalize")) || (rc = j_bool(&m->router_bias, root, "router_bias")))
        goto out_free;
    json_t *sb = json_object_get(root, "selection_bias");
    if (sb && !json_is_null(sb)) {
        if (!json_is_array(sb) || json_array_size(sb) != L) {
            rc = mtr_fail(MTR_EFORMAT, "header: 'selection_bias' must be null or %u rows of %u numbers", L, E);
            goto out_free;
        }
        h->selection_bias = malloc((size_t)L * E * sizeof *h->selection_bias);
        if (!h->selection_bias) {
            rc = mtr_fail(MTR_ENOMEM, "out of memory");
            goto out_free;
        }
        for (uint32_t l = 0; l < L; l++) {
            json_t *row = json_array_get(sb, l);
            if (!json_is_array(row) || json_array_size(row) != E) {
                rc = mtr_fail(MTR_EFORMAT, "header: selection_bias row %u does not have %u numbers", l, E);
                goto out_free;
            }
            for (uint32_t e = 0; e < E; e++) {
                json_t *v = json_array_get(row, e);
                if (!json_is_number(v) || !isfinite(json_number_value(v))) {
                    rc = mtr_fail(MTR_EFORMAT, "header: selection_bias[%u][%u] is not a finite number", l, e);
                    goto out_free;
                }
                h->selection_bias[(size_t)l * E + e] = (float)json_number_value(v);
            }
        }
        m->selection_bias = h->selection_bias;
    }
    json_t *dt = json_object_get(root, "logits_dtype");
    if (dt) {
        if (!json_is_string(dt) || mtr_dtype_parse(&h->logits_dtype, json_string_value(dt))) {
            rc = mtr_fail(MTR_EFORMAT, "header: 'logits_dtype' must be f32, bf16 or f16");
            goto out_free;
        }
        h->has_logits_dtype = true;
    }
    if ((rc = j_str(h->producer, sizeof h->producer, root, "producer", false)) ||
        (rc = j_str(h->producer_version, sizeof h->producer_version, root, "producer_version", false)) ||
        (rc = j_str(h->corpus_id, sizeof h->corpus_id, root, "corpus_id", false)))
        goto out_free;
    json_t *cs = json_object_get(root, "capture_settings"), *st = json_object_get(root, "steering");
    if (cs && !json_is_object(cs)) {
        rc = mtr_fail(MTR_EFORMAT, "header: 'capture_settings' must be a JSON object");
        goto out_free;
    }
    if (st && !json_is_object(st) && !json_is_null(st)) {
        rc = mtr_fail(MTR_EFORMAT, "header: 'steering' must be a JSON object or null");
        goto out_free;
    }
    h->capture_settings = cs ? json_dumps(cs, JSON_COMPACT | JSON_PRESERVE_ORDER) : strdup("{}");
    if (st && json_is_object(st)) h->steering = json_dumps(st, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!h->capture_settings || (st && json_is_object(st) && !h->steering)) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    if (mtr_model_info_check(m)) {
        rc = mtr_fail(MTR_EFORMAT, "header: %s", mtr_errmsg());
        goto out_free;
    }
out_free:
    json_decref(root);
    return rc;
}

/* ---- decoder ---------------------------------------------------------------------------------------------- */

enum { D_IDLE, D_BEGUN, D_DEAD, D_ENDED };

struct mtr_ingest_decoder {
    mtr_ingest_read_fn fn;
    void *ctx;
    uint64_t off;         /* bytes consumed */
    uint64_t max_body;    /* bound on any frame body */
    mtr_ingest_header hdr;
    int state;
    uint64_t n_seq;       /* sequence frames completed */
    uint64_t bad_offset;
    /* the frame begun */
    uint64_t frame_off;
    unsigned char fixed[MTR_INGEST_SEQ_FIXED_BYTES];
    seq_layout lo;
    uint32_t ul, gl, dl;
    void *buf;            /* for _next */
    size_t cap;
};

/* Read exactly n bytes: 0, MTR_ETRUNCATED with *got < n at end of input, or the callback's error. */
static int read_full(mtr_ingest_decoder *d, void *buf, size_t n, size_t *got)
{
    size_t k = 0;
    while (k < n) {
        ssize_t r = d->fn(d->ctx, (char *)buf + k, n - k);
        if (r < 0) {
            if (got) *got = k;
            d->off += k;
            return (int)r;
        }
        if (r == 0) break;
        k += (size_t)r;
    }
    d->off += k;
    if (got) *got = k;
    return k == n ? 0 : MTR_ETRUNCATED;
}

static int dead(mtr_ingest_decoder *d, uint64_t at, int rc)
{
    d->state = D_DEAD;
    d->bad_offset = at;
    return rc;
}

int mtr_ingest_decoder_create(mtr_ingest_decoder **out, mtr_ingest_read_fn fn, void *ctx, uint64_t max_frame_bytes)
{
    int rc = 0;
    char *text = NULL;
    *out = NULL;
    mtr_ingest_decoder *d = calloc(1, sizeof *d);
    if (!d) return mtr_fail(MTR_ENOMEM, "out of memory");
    d->fn = fn;
    d->ctx = ctx;
    d->max_body = max_frame_bytes && max_frame_bytes < MTR_INGEST_MAX_BODY ? max_frame_bytes : MTR_INGEST_MAX_BODY;
    unsigned char pre[MTR_INGEST_PRELUDE_BYTES];
    size_t got = 0;
    rc = read_full(d, pre, sizeof pre, &got);
    if (rc == MTR_ETRUNCATED) {
        rc = got == 0 ? mtr_fail(MTR_ETRUNCATED, "byte 0: empty input (no stream header)")
                      : mtr_fail(MTR_ETRUNCATED, "byte %zu: input ends inside the stream prelude", got);
        goto out_free;
    }
    if (rc) goto out_free;
    if (memcmp(pre, MTR_INGEST_MAGIC, MTR_INGEST_MAGIC_LEN)) {
        rc = mtr_fail(MTR_EFORMAT, "byte 0: not a moetrace ingest stream (bad magic)");
        goto out_free;
    }
    uint16_t major = get_u16(pre + 8);
    uint32_t jlen = get_u32(pre + 12);
    d->hdr.minor = get_u16(pre + 10);
    if (major != MTR_INGEST_VERSION) {
        rc = mtr_fail(MTR_EVERSION, "byte 8: ingest stream version %u (this program reads %d)", major, MTR_INGEST_VERSION);
        goto out_free;
    }
    if (jlen == 0 || jlen > MTR_INGEST_MAX_HEADER_JSON) {
        rc = mtr_fail(MTR_EFORMAT, "byte 12: header length %u outside 1..%u", jlen, MTR_INGEST_MAX_HEADER_JSON);
        goto out_free;
    }
    text = malloc(jlen);
    if (!text) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    rc = read_full(d, text, jlen, &got);
    if (rc == MTR_ETRUNCATED) {
        rc = mtr_fail(MTR_ETRUNCATED, "byte %llu: input ends inside the stream header", (unsigned long long)d->off);
        goto out_free;
    }
    if (rc) goto out_free;
    if ((rc = parse_header_json(&d->hdr, text, jlen))) {
        char detail[900];
        snprintf(detail, sizeof detail, "%.800s", mtr_errmsg());
        mtr_fail(rc, "byte %d: %s", MTR_INGEST_PRELUDE_BYTES, detail);
        goto out_free;
    }
    *out = d;
    d = NULL;
out_free:
    free(text);
    mtr_ingest_decoder_destroy(d);
    return rc;
}

void mtr_ingest_decoder_destroy(mtr_ingest_decoder *d)
{
    if (!d) return;
    mtr_ingest_header_destroy(&d->hdr);
    free(d->buf);
    free(d);
}

const mtr_ingest_header *mtr_ingest_decoder_header(const mtr_ingest_decoder *d) { return &d->hdr; }
uint64_t mtr_ingest_decoder_offset(const mtr_ingest_decoder *d) { return d->off; }
uint64_t mtr_ingest_decoder_bad_offset(const mtr_ingest_decoder *d) { return d->bad_offset; }

/* bytes the caller provides: the body, then the three strings NUL-terminated */
static size_t need_of(const mtr_ingest_decoder *d) { return (size_t)(d->lo.body + pad8((uint64_t)d->ul + d->gl + d->dl + 3)); }

int mtr_ingest_decoder_begin(mtr_ingest_decoder *d, size_t *body_bytes)
{
    *body_bytes = 0;
    if (d->state == D_ENDED) return 0;
    if (d->state != D_IDLE) return mtr_fail(MTR_EINVAL, "decoder used after an error or out of order");
    uint64_t at = d->off;
    unsigned char head[MTR_INGEST_FRAME_HEAD_BYTES];
    size_t got = 0;
    int rc = read_full(d, head, sizeof head, &got);
    d->frame_off = at;
    if (rc == MTR_ETRUNCATED)
        return dead(d, at, got == 0 ? mtr_fail(MTR_ETRUNCATED, "byte %llu: stream ends without an end frame after %llu "
                                                           "sequences (producer stopped early?)",
                                           (unsigned long long)at, (unsigned long long)d->n_seq)
                                    : mtr_fail(MTR_ETRUNCATED, "byte %llu: frame %llu truncated inside its head",
                                           (unsigned long long)at, (unsigned long long)d->n_seq));
    if (rc) return dead(d, at, rc);
    uint64_t body = get_u64(head + 8);
    if (get_u32(head + 4) != 0)
        return dead(d, at, mtr_fail(MTR_EFORMAT, "byte %llu: frame %llu: reserved field is not zero", (unsigned long long)at,
                                (unsigned long long)d->n_seq));
    if (!memcmp(head, MTR_INGEST_TAG_END, 4)) {
        unsigned char eb[MTR_INGEST_END_BODY_BYTES];
        if (body != MTR_INGEST_END_BODY_BYTES)
            return dead(d, at, mtr_fail(MTR_EFORMAT, "byte %llu: end frame body of %llu bytes (expected 8)",
                                    (unsigned long long)at, (unsigned long long)body));
        if (read_full(d, eb, sizeof eb, NULL))
            return dead(d, at, mtr_fail(MTR_ETRUNCATED, "byte %llu: end frame truncated", (unsigned long long)at));
        uint64_t n = get_u64(eb);
        if (n != d->n_seq)
            return dead(d, at, mtr_fail(MTR_EFORMAT, "byte %llu: end frame announces %llu sequences, the stream had %llu",
                                    (unsigned long long)at, (unsigned long long)n, (unsigned long long)d->n_seq));
        d->state = D_ENDED;
        return 0;
    }
    if (memcmp(head, MTR_INGEST_TAG_SEQ, 4))
        return dead(d, at, mtr_fail(MTR_EFORMAT, "byte %llu: frame %llu: unknown frame tag %02x %02x %02x %02x",
                                (unsigned long long)at, (unsigned long long)d->n_seq, head[0], head[1], head[2], head[3]));
    if (body < MTR_INGEST_SEQ_FIXED_BYTES || body > d->max_body)
        return dead(d, at, mtr_fail(MTR_EFORMAT, "byte %llu: frame %llu: body of %llu bytes outside %d..%llu%s",
                                (unsigned long long)at, (unsigned long long)d->n_seq, (unsigned long long)body,
                                MTR_INGEST_SEQ_FIXED_BYTES, (unsigned long long)d->max_body,
                                body > d->max_body ? " (the frame buffer budget)" : ""));
    if (read_full(d, d->fixed, sizeof d->fixed, NULL))
        return dead(d, at, mtr_fail(MTR_ETRUNCATED, "byte %llu: frame %llu truncated", (unsigned long long)at,
                                (unsigned long long)d->n_seq));
    const unsigned char *f = d->fixed;
    uint64_t seq_id = get_u64(f);
    uint32_t T = get_u32(f + 8), flags = get_u32(f + 12), L = get_u32(f + 24), E = get_u32(f + 28);
    unsigned dt = f[16], fields = f[17];
    d->ul = get_u16(f + 18);
    d->gl = get_u16(f + 20);
    d->dl = get_u16(f + 22);
    const mtr_model_info *m = &d->hdr.model;
#define BAD(...)                                                                                             \
    do {                                                                                                     \
        char why_[600];                                                                                      \
        snprintf(why_, sizeof why_, __VA_ARGS__);                                                            \
        return dead(d, at, mtr_fail(MTR_EFORMAT, "byte %llu: frame %llu (seq_id %llu): %s", (unsigned long long)at, \
                                (unsigned long long)d->n_seq, (unsigned long long)seq_id, why_));           \
    } while (0)
    if (seq_id == UINT64_MAX) BAD("seq_id 2^64-1 is reserved");
    if (T == 0 || T > MTR_INGEST_MAX_TOKENS) BAD("n_tokens %u outside 1..%u", T, MTR_INGEST_MAX_TOKENS);
    if (flags & ~MTR_INGEST_SEQ_FLAGS) BAD("unknown flags 0x%x", flags);
    if (dt >= MTR_DTYPE_COUNT) BAD("unknown logits dtype %u", dt);
    if (fields & ~7u) BAD("unknown fields bits 0x%x", fields);
    if (L != m->n_layers || E != m->n_experts)
        BAD("logits are %u layers x %u experts, the header says %u x %u", L, E, m->n_layers, m->n_experts);
    if (d->ul > MTR_INGEST_MAX_STRING || d->gl > MTR_INGEST_MAX_STRING || d->dl > MTR_INGEST_MAX_STRING)
        BAD("a string is longer than %u bytes", MTR_INGEST_MAX_STRING);
    layout_of(&d->lo, L, E, T, (mtr_dtype)dt, (uint64_t)d->ul + d->gl + d->dl, fields);
    if (d->lo.body != body)
        BAD("body length %llu does not match its contents (%llu bytes)", (unsigned long long)body,
            (unsigned long long)d->lo.body);
#undef BAD
    d->state = D_BEGUN;
    *body_bytes = need_of(d);
    return 1;
}

/* unit_id, lang and dataset: well-formed UTF-8 without NUL bytes */
static bool utf8_ok(const unsigned char *s, size_t n) { return mtr_utf8_valid_prefix((const char *)s, n, false) == n; }

static bool zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

int mtr_ingest_decoder_finish(mtr_ingest_decoder *d, void *buf, mtr_ingest_seq *out)
{
    if (d->state != D_BEGUN) return mtr_fail(MTR_EINVAL, "decoder: finish without begin");
    unsigned char *b = buf;
    const seq_layout *lo = &d->lo;
    uint64_t at = d->frame_off;
    const unsigned char *f = d->fixed;
    uint64_t seq_id = get_u64(f);
    memcpy(b, d->fixed, MTR_INGEST_SEQ_FIXED_BYTES);
    size_t got = 0;
    int rc = read_full(d, b + MTR_INGEST_SEQ_FIXED_BYTES, (size_t)(lo->body - MTR_INGEST_SEQ_FIXED_BYTES), &got);
    if (rc == MTR_ETRUNCATED)
        return dead(d, at, mtr_fail(MTR_ETRUNCATED, "byte %llu: frame %llu (seq_id %llu) truncated after %llu of %llu bytes",
                                (unsigned long long)at, (unsigned long long)d->n_seq, (unsigned long long)seq_id,
                                (unsigned long long)(MTR_INGEST_FRAME_HEAD_BYTES + MTR_INGEST_SEQ_FIXED_BYTES + got),
                                (unsigned long long)(MTR_INGEST_FRAME_HEAD_BYTES + lo->body)));
    if (rc) return dead(d, at, rc);
    uint32_t T = get_u32(f + 8);
    unsigned fields = f[17];
    size_t slen = (size_t)d->ul + d->gl + d->dl;
    const unsigned char *s = b + lo->strings;
    const char *bad = NULL;
    if (!utf8_ok(s, d->ul) || !utf8_ok(s + d->ul, d->gl) || !utf8_ok(s + d->ul + d->gl, d->dl))
        bad = "unit_id, lang or dataset is not UTF-8 without NUL bytes";
    else if (!zero(s + slen, (size_t)(lo->token_ids - lo->strings - slen)))
        bad = "string padding is not zero";
    else if (fields & MTR_INGEST_HAS_ROLES) {
        const uint8_t *r = b + lo->roles;
        for (uint32_t t = 0; t < T && !bad; t++)
            if (r[t] >= MTR_ROLE_COUNT) bad = "a role is outside 0..3";
    }
    if (bad)
        return dead(d, at, mtr_fail(MTR_EFORMAT, "byte %llu: frame %llu (seq_id %llu): %s", (unsigned long long)at,
                                (unsigned long long)d->n_seq, (unsigned long long)seq_id, bad));
    /* NUL-terminated copies of the strings after the body */
    char *str = (char *)b + lo->body;
    memcpy(str, s, d->ul);
    str[d->ul] = '\0';
    memcpy(str + d->ul + 1, s + d->ul, d->gl);
    str[d->ul + 1 + d->gl] = '\0';
    memcpy(str + d->ul + d->gl + 2, s + d->ul + d->gl, d->dl);
    str[slen + 2] = '\0';
    memset(out, 0, sizeof *out);
    out->meta.seq_id = seq_id;
    out->meta.unit_id = str;
    out->meta.lang = str + d->ul + 1;
    out->meta.dataset = str + d->ul + d->gl + 2;
    out->meta.n_tokens = T;
    out->meta.flags = get_u32(f + 12) & ~MTR_SEQ_NONFINITE;
    out->token_ids = fields & MTR_INGEST_HAS_TOKEN_IDS ? (const int32_t *)(const void *)(b + lo->token_ids) : NULL;
    out->positions = fields & MTR_INGEST_HAS_POSITIONS ? (const int32_t *)(const void *)(b + lo->positions) : NULL;
    out->roles = fields & MTR_INGEST_HAS_ROLES ? b + lo->roles : NULL;
    out->logits = b + lo->logits;
    out->dtype = (mtr_dtype)f[16];
    out->offset = at;
    out->index = d->n_seq++;
    d->state = D_IDLE;
    return 1;
}

int mtr_ingest_decoder_next(mtr_ingest_decoder *d, mtr_ingest_seq *out)
{
    size_t need = 0;
    int rc = mtr_ingest_decoder_begin(d, &need);
    if (rc <= 0) return rc;
    if (need > d->cap) {
        void *nb = NULL;
        if (posix_memalign(&nb, 64, need)) return dead(d, d->frame_off, mtr_fail(MTR_ENOMEM, "out of memory"));
        free(d->buf);
        d->buf = nb;
        d->cap = need;
    }
    return mtr_ingest_decoder_finish(d, d->buf, out);
}

ssize_t mtr_ingest_mem_read(void *ctx, void *buf, size_t n)
{
    mtr_ingest_mem *m = ctx;
    size_t k = m->len - m->pos < n ? m->len - m->pos : n;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return (ssize_t)k;
}

/* ---- pipeline --------------------------------------------------------------------------------------------- */

/* room a frame needs beyond its body: NUL-terminated copies of three strings, and alignment */
#define STRINGS_SLACK (3 * MTR_INGEST_MAX_STRING + 16)

typedef struct {
    size_t off, len;      /* place in the ring */
    mtr_ingest_seq seq;
} slot;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t can_put, can_get;
    unsigned char *ring;
    size_t cap;
    size_t head;          /* end of the newest slot */
    slot *q;              /* (qcap) FIFO of decoded frames */
    uint32_t qcap, qhead, count;
    uint64_t buffered;
    bool reader_done, stop;
    int reader_rc;
    char reader_msg[1024];
    int wake[2];          /* written to when the consumer stops: unblocks the reader's poll */
    int fd;
    mtr_ingest_decoder *dec;
    mtr_ingest_result *res;
} pipeline;

/* read callback on a descriptor that also returns when the consumer asks the reader to stop */
static ssize_t fd_read(void *ctx, void *buf, size_t n)
{
    pipeline *p = ctx;
    for (;;) {
        struct pollfd pf[2] = {{p->fd, POLLIN, 0}, {p->wake[0], POLLIN, 0}};
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return mtr_fail(MTR_EIO, "poll: %s", strerror(errno));
        }
        if (pf[1].revents) return mtr_fail(MTR_EIO, "stopped");
        ssize_t r = read(p->fd, buf, n);
        if (r >= 0) return r;
        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
            return mtr_fail(MTR_EIO, "read error: %s", strerror(errno));
    }
}

/* where a body of len bytes fits now (with the lock held), or false */
static bool ring_fit(const pipeline *p, size_t len, size_t *at)
{
    if (p->count == 0) return (*at = 0, len <= p->cap);
    size_t tail = p->q[p->qhead].off;
    if (p->head > tail) {
        /* wrap as early as possible: reusing the lowest addresses keeps the pages touched (and their first-touch
         * faults) bounded by the frames in flight rather than by the whole budget */
        if (tail >= len) return (*at = 0, true);
        if (p->cap - p->head >= len) return (*at = p->head, true);
        return false;
    }
    if (tail - p->head >= len) return (*at = p->head, true);
    return false;
}

static void *reader_main(void *arg)
{
    pipeline *p = arg;
    int rc;
    for (;;) {
        size_t need = 0, at = 0;
        rc = mtr_ingest_decoder_begin(p->dec, &need);
        if (rc <= 0) break;
        need = (size_t)pad8(need);
        pthread_mutex_lock(&p->mu);
        bool waited = false;
        while (!p->stop && (p->count == p->qcap || !ring_fit(p, need, &at))) {
            if (!waited) p->res->n_stalls++;
            waited = true;
            pthread_cond_wait(&p->can_put, &p->mu);
        }
        bool stop = p->stop;
        pthread_mutex_unlock(&p->mu);
        if (stop) {
            rc = 0;
            break;
        }
        mtr_ingest_seq seq;
        rc = mtr_ingest_decoder_finish(p->dec, p->ring + at, &seq);
        if (rc < 0) break;
        pthread_mutex_lock(&p->mu);
        slot *s = &p->q[(p->qhead + p->count) % p->qcap];
        s->off = at;
        s->len = need;
        s->seq = seq;
        p->count++;
        p->head = at + need;
        p->buffered += need;
        p->res->n_frames++;
        if (p->buffered > p->res->peak_buffered) p->res->peak_buffered = p->buffered;
        if (p->count > p->res->peak_frames) p->res->peak_frames = p->count;
        pthread_cond_signal(&p->can_get);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_lock(&p->mu);
    p->reader_done = true;
    p->reader_rc = rc < 0 ? rc : 0;
    if (rc < 0) snprintf(p->reader_msg, sizeof p->reader_msg, "%s", mtr_errmsg());
    pthread_cond_signal(&p->can_get);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* capture_settings of the run: the producer's, plus where the stream came from */
static char *run_settings(const mtr_ingest_header *h, const char *given)
{
    json_t *o = json_loads(given ? given : h->capture_settings, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        o = json_object();
    }
    json_t *src = json_object();
    json_object_set_new(src, "format", json_string("moetrace-ingest"));
    json_object_set_new(src, "format_version", json_integer(MTR_INGEST_VERSION));
    json_object_set_new(src, "format_minor", json_integer(h->minor));
    if (h->producer[0]) json_object_set_new(src, "producer", json_string(h->producer));
    if (h->producer_version[0]) json_object_set_new(src, "producer_version", json_string(h->producer_version));
    json_object_set_new(o, "ingest", src);
    char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return t;
}

/* the calling thread's side: append decoded frames in order, release their buffer space */
static int consume(pipeline *p, mtr_writer *w, const mtr_ingest_opts *o, bool resume)
{
    mtr_ingest_result *res = p->res;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->count == 0 && !p->reader_done) pthread_cond_wait(&p->can_get, &p->mu);
        if (p->count == 0) {
            pthread_mutex_unlock(&p->mu);
            return 0;
        }
        slot s = p->q[p->qhead];
        pthread_mutex_unlock(&p->mu);

        const mtr_ingest_seq *q = &s.seq;
        if (resume && mtr_writer_has_seq(w, q->meta.seq_id)) {
            res->n_skipped++;
        } else {
            int rc = mtr_writer_append(w, &q->meta, q->token_ids, q->positions, q->roles, q->logits, q->dtype);
            if (rc == MTR_EDUP) {
                res->bad_frame = true;
                res->bad_offset = q->offset;
                return mtr_fail(rc, "byte %llu: frame %llu: seq_id %llu appears twice in the stream",
                            (unsigned long long)q->offset, (unsigned long long)q->index,
                            (unsigned long long)q->meta.seq_id);
            }
            if (rc) return mtr_fail(rc, "%s", mtr_errmsg());
            res->n_written++;
            res->n_tokens += q->meta.n_tokens;
            if (o->throttle_us) {
                struct timespec ts = {(time_t)(o->throttle_us / 1000000), (long)(o->throttle_us % 1000000) * 1000};
                while (nanosleep(&ts, &ts) && errno == EINTR) {
                }
            }
        }
        if (o->progress) o->progress(o->progress_ctx, res->n_written, res->n_tokens, q->offset);

        pthread_mutex_lock(&p->mu);
        p->qhead = (p->qhead + 1) % p->qcap;
        p->count--;
        p->buffered -= s.len;
        pthread_cond_signal(&p->can_put);
        pthread_mutex_unlock(&p->mu);
    }
}

int mtr_ingest_run(mtr_ingest_result *res, int fd, const char *dir, const mtr_ingest_opts *opts)
{
    static const mtr_ingest_opts defaults = MTR_INGEST_OPTS_INIT;
    mtr_ingest_result local;
    pipeline p;
    pthread_t reader;
    mtr_writer *w = NULL;
    char *settings = NULL;
    bool started = false, sync_ok = false;
    int rc = 0;
    if (!opts) opts = &defaults;
    if (!res) res = &local;
    memset(res, 0, sizeof *res);
    memset(&p, 0, sizeof p);
    p.wake[0] = p.wake[1] = -1;
    p.fd = fd;
    p.res = res;
    p.cap = (size_t)(opts->buffer_bytes ? opts->buffer_bytes : defaults.buffer_bytes);
    p.qcap = opts->max_frames ? opts->max_frames : defaults.max_frames;
    if (p.cap < MTR_INGEST_MIN_BUFFER)
        return mtr_fail(MTR_EINVAL, "the frame buffer must hold at least %u bytes", MTR_INGEST_MIN_BUFFER);
    if (pipe(p.wake)) return mtr_fail(MTR_EIO, "pipe: %s", strerror(errno));

    if ((rc = mtr_ingest_decoder_create(&p.dec, fd_read, &p, p.cap - STRINGS_SLACK))) {
        res->bad_frame = rc != MTR_EIO && rc != MTR_ENOMEM;
        goto out_free;
    }
    const mtr_ingest_header *h = mtr_ingest_decoder_header(p.dec);
    mtr_model_info model = h->model;
    if (opts->model_id) snprintf(model.model_id, sizeof model.model_id, "%s", opts->model_id);
    mtr_writer_opts wo = opts->writer;
    if (!opts->stored_dtype_set) wo.stored_dtype = h->has_logits_dtype ? h->logits_dtype : MTR_DTYPE_BF16;
    if (!wo.corpus_id && h->corpus_id[0]) wo.corpus_id = h->corpus_id;
    if (!wo.steering && h->steering) wo.steering = h->steering;
    if (!(settings = run_settings(h, wo.capture_settings))) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    wo.capture_settings = settings;
    if ((rc = mtr_writer_create(&w, dir, &model, &wo))) {
        rc = mtr_fail(rc, "%s", mtr_errmsg());
        goto out_free;
    }
    p.ring = malloc(p.cap);
    p.q = calloc(p.qcap, sizeof *p.q);
    if (!p.ring || !p.q) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory for the frame buffer");
        goto out_free;
    }
    if (pthread_mutex_init(&p.mu, NULL) || pthread_cond_init(&p.can_put, NULL) || pthread_cond_init(&p.can_get, NULL)) {
        rc = mtr_fail(MTR_EIO, "cannot create the reader's locks");
        goto out_free;
    }
    sync_ok = true;
    if (pthread_create(&reader, NULL, reader_main, &p) != 0) {
        rc = mtr_fail(MTR_EIO, "cannot start the reader thread");
        goto out_free;
    }
    started = true;

    rc = consume(&p, w, opts, wo.resume);
    if (rc) {
        /* stop the reader wherever it waits: for buffer space or for input */
        pthread_mutex_lock(&p.mu);
        p.stop = true;
        pthread_cond_broadcast(&p.can_put);
        pthread_mutex_unlock(&p.mu);
        ssize_t ignored = write(p.wake[1], "x", 1);
        (void)ignored;
    }
    pthread_join(reader, NULL);
    started = false;
    if (!rc && p.reader_rc) {
        rc = p.reader_rc;
        mtr_fail(rc, "%s", p.reader_msg);
        res->bad_frame = rc != MTR_EIO && rc != MTR_ENOMEM;
        res->bad_offset = mtr_ingest_decoder_bad_offset(p.dec);
    }
    /* every sequence before the bad frame is kept: close the run cleanly */
    if (w) {
        mtr_writer_get_stats(w, &res->writer);
        /* closing after a failed write fails too: the first error is the one to report */
        char first[512];
        snprintf(first, sizeof first, "%s", rc ? mtr_errmsg() : "");
        int crc = mtr_writer_close(w);
        w = NULL;
        if (crc && (!rc || res->bad_frame)) {
            rc = mtr_fail(crc, "closing the run: %s", mtr_errmsg());
            res->bad_frame = false;
        } else if (crc) {
            mtr_fail(rc, "%s", first);
        }
    }
out_free:
    res->bytes_read = p.dec ? mtr_ingest_decoder_offset(p.dec) : 0;
    if (started) pthread_join(reader, NULL);
    if (sync_ok) {
        pthread_cond_destroy(&p.can_get);
        pthread_cond_destroy(&p.can_put);
        pthread_mutex_destroy(&p.mu);
    }
    if (p.wake[0] >= 0) close(p.wake[0]);
    if (p.wake[1] >= 0) close(p.wake[1]);
    free(p.q);
    free(p.ring);
    mtr_writer_destroy(w);
    mtr_ingest_decoder_destroy(p.dec);
    free(settings);
    return rc;
}
