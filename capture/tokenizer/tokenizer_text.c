/* tokenizer_text.c — text-level stages of the tokenizer: UTF-8 checks, buffers, PCRE2 regexes, normalizers
 * (utf8proc) and pre-tokenizers. Each pre-tokenizer behaves as its counterpart in the Hugging Face tokenizers
 * library: a list of pieces in, a finer list of pieces out, in order, empty pieces dropped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer_internal.h"

/* ---- buffers --------------------------------------------------------------------------------------------- */

int tk_spans_push(tk_spans *s, uint32_t off, uint32_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        tk_span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return mtr_fail(MTR_ENOMEM, "out of memory");
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n].off = off;
    s->v[s->n].len = len;
    s->n++;
    return 0;
}

void tk_spans_free(tk_spans *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

int tk_ids_push(mtr_tok_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        int32_t *p = realloc(v->ids, cap * sizeof *p);
        if (!p) return mtr_fail(MTR_ENOMEM, "out of memory");
        v->ids = p;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return 0;
}

/* ---- UTF-8 ----------------------------------------------------------------------------------------------- */

int tk_utf8_next(const char *s, size_t n, int32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned c = u[0];
    if (c < 0x80 || n < 2) {
        *cp = (int32_t)c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = (int32_t)(((c & 0x1F) << 6) | (u[1] & 0x3F));
        return 2;
    }
    if (c < 0xF0 && n >= 3) {
        *cp = (int32_t)(((c & 0x0F) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3F));
        return 3;
    }
    if (n >= 4) {
        *cp = (int32_t)(((c & 0x07) << 18) | ((u[1] & 0x3Fu) << 12) | ((u[2] & 0x3Fu) << 6) | (u[3] & 0x3F));
        return 4;
    }
    *cp = (int32_t)c;
    return 1;
}

int tk_utf8_put(char *out, int32_t cp)
{
    unsigned char *o = (unsigned char *)out;
    uint32_t c = (uint32_t)cp;
    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xC0 | (c >> 6));
        o[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12));
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18));
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* Replacement per maximal invalid subpart, as Rust's String::from_utf8_lossy (and the WHATWG decoder) do. */
int tk_utf8_lossy(tk_buf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    int rc;
    while (i < n) {
        size_t k = mtr_utf8_seq(u + i, n - i);
        if (k) {
            if ((rc = tk_buf_put(b, u + i, k))) return rc;
            i += k;
            continue;
        }
        /* skip the longest prefix of a valid sequence (at least one byte) */
        size_t skip = 1;
        unsigned c = u[i];
        size_t need = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 1;
        while (skip < need && i + skip < n && (u[i + skip] & 0xC0) == 0x80) {
            unsigned lo = 0x80, hi = 0xBF;
            if (skip == 1) {
                if (c == 0xE0) lo = 0xA0;
                if (c == 0xED) hi = 0x9F;
                if (c == 0xF0) lo = 0x90;
                if (c == 0xF4) hi = 0x8F;
            }
            if (u[i + skip] < lo || u[i + skip] > hi) break;
            skip++;
        }
        if ((rc = tk_buf_put(b, "\xEF\xBF\xBD", 3))) return rc;
        i += skip;
    }
    return 0;
}

/* ---- the byte-level alphabet ----------------------------------------------------------------------------- */

/* Printable bytes stand for themselves; the others take the code points from U+0100 on, in byte order. */
const int32_t tk_byte_to_cp[256] = {
#define R4(a) a, a + 1, a + 2, a + 3
#define R16(a) R4(a), R4(a + 4), R4(a + 8), R4(a + 12)
    R16(256), R16(272),                                       /* 0x00-0x1F -> U+0100.. */
    288,                                                      /* 0x20 space -> U+0120 (Ġ) */
    R4(33), R4(37), R4(41), R4(45), R16(49), R16(65), R16(81), R16(97), R4(113), R4(117), R4(121), 125, 126,
    289,                                                      /* 0x7F */
    R16(290), R16(306),                                       /* 0x80-0x9F */
    322,                                                      /* 0xA0 */
    R4(161), R4(165), R4(169),                                /* 0xA1-0xAC */
    323,                                                      /* 0xAD */
    174, 175, R16(176), R16(192), R16(208), R16(224), R16(240) /* 0xAE-0xFF */
#undef R16
#undef R4
};

static int16_t cp_byte[512];
static bool cp_byte_ready;

int tk_cp_to_byte(int32_t cp)
{
    if (!cp_byte_ready) {
        /* benign race: every thread writes the same values */
        for (int i = 0; i < 512; i++) cp_byte[i] = -1;
        for (int b = 0; b < 256; b++) cp_byte[tk_byte_to_cp[b]] = (int16_t)b;
        cp_byte_ready = true;
    }
    return cp >= 0 && cp < 512 ? cp_byte[cp] : -1;
}

bool tk_bytelevel_unmap(tk_buf *out, const char *s, size_t n)
{
    /* the alphabet is U+0000..U+0143: one- and two-byte characters; the bytes are never more than the text */
    const unsigned char *u = (const unsigned char *)s;
    size_t start = out->n;
    if (tk_buf_reserve(out, n)) return false;
    if (!cp_byte_ready) tk_cp_to_byte(0);
    char *o = out->p + start;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        if (u[i] < 0x80) {
            cp = u[i++];
        } else if ((u[i] & 0xE0) == 0xC0 && i + 1 < n) {
            cp = (int32_t)((u[i] & 0x1Fu) << 6 | (u[i + 1] & 0x3Fu));
            i += 2;
        } else {
            cp = 512; /* three bytes or more: outside the alphabet */
        }
        if (cp >= 512 || cp_byte[cp] < 0) {
            out->p[start] = '\0';
            return false;
        }
        *o++ = (char)cp_byte[cp];
    }
    out->n = (size_t)(o - out->p);
    out->p[out->n] = '\0';
    return true;
}

/* ---- regex ----------------------------------------------------------------------------------------------- */

int tk_regex_compile(tk_regex *r, const char *pattern, size_t len, bool is_literal)
{
    int err = 0;
    PCRE2_SIZE off = 0;
    uint32_t opt = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (is_literal ? PCRE2_LITERAL : PCRE2_UCP);
    r->re = pcre2_compile((PCRE2_SPTR)pattern, len, opt, &err, &off, NULL);
    if (!r->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return mtr_fail(MTR_EFORMAT, "regex /%.80s/ does not compile at offset %zu: %s", pattern, (size_t)off,
                       (char *)msg);
    }
    /* JIT is an optimisation: when it is unavailable the interpreter gives the same matches */
    (void)pcre2_jit_compile(r->re, PCRE2_JIT_COMPLETE);
    r->md = pcre2_match_data_create_from_pattern(r->re, NULL);
    if (!r->md) {
        pcre2_code_free(r->re);
        r->re = NULL;
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    return 0;
}

void tk_regex_free(tk_regex *r)
{
    if (r->md) pcre2_match_data_free(r->md);
    if (r->re) pcre2_code_free(r->re);
    r->md = NULL;
    r->re = NULL;
}

/* Call fn(start, end, is_match) for the matches of r in s (n) and the gaps between them, in order, as the
 * reference's find_matches does (empty matches are passed on and dropped later as empty pieces). */
typedef int (*match_fn)(void *ctx, size_t a, size_t b, bool is_match);

static int regex_walk(const tk_regex *r, const char *s, size_t n, match_fn fn, void *ctx)
{
    size_t pos = 0, prev = 0;
    int rc;
    while (pos <= n) {
        int m = pcre2_match(r->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, r->md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(m, msg, sizeof msg);
            return mtr_fail(MTR_EINVAL, "regex match failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        size_t a = ov[0], b = ov[1];
        if (a > prev && (rc = fn(ctx, prev, a, false))) return rc;
        if ((rc = fn(ctx, a, b, true))) return rc;
        prev = b;
        if (b == a) {
            /* empty match: step over one character */
            if (b >= n) break;
            int32_t cp;
            pos = b + (size_t)tk_utf8_next(s + b, n - b, &cp);
        } else {
            pos = b;
        }
    }
    if (prev < n && (rc = fn(ctx, prev, n, false))) return rc;
    return 0;
}

/* ---- normalizers ----------------------------------------------------------------------------------------- */

/* true if no byte can start a code point >= U+0300 (the first that can change under NFC/NFD) */
static bool below_u0300(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++)
        if (u[i] >= 0xCC) return false;
    return true;
}

static int norm_unicode(tk_buf *out, int kind, const char *s, size_t n)
{
    if ((kind == TK_NORM_NFC || kind == TK_NORM_NFD) && below_u0300(s, n)) return tk_buf_put(out, s, n);
    int opt = UTF8PROC_STABLE;
    switch (kind) {
    case TK_NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
    case TK_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case TK_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, (utf8proc_option_t)opt);
    if (m < 0) return mtr_fail(MTR_EINVAL, "normalization failed: %s", utf8proc_errmsg(m));
    int rc = tk_buf_put(out, dst, (size_t)m);
    free(dst);
    return rc;
}

static int norm_lower(tk_buf *out, const char *s, size_t n)
{
    int rc;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += (size_t)tk_utf8_next(s + i, n - i, &cp);
        char e[4];
        int k = tk_utf8_put(e, cp < 0x80 ? (cp >= 'A' && cp <= 'Z' ? cp + 32 : cp) : utf8proc_tolower(cp));
        if ((rc = tk_buf_put(out, e, (size_t)k))) return rc;
    }
    return 0;
}

typedef struct {
    tk_buf *out;
    const char *s;
    const char *content;
} replace_ctx;

static int replace_cb(void *vctx, size_t a, size_t b, bool is_match)
{
    replace_ctx *c = vctx;
    if (is_match) return tk_buf_put(c->out, c->content, strlen(c->content));
    return tk_buf_put(c->out, c->s + a, b - a);
}

bool tk_is_ws(int32_t cp)
{
    if (cp == ' ' || (cp >= 9 && cp <= 13)) return true;
    if (cp < 0x85) return false;
    if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
        cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000)
        return true;
    return false;
}

static int norm_strip(tk_buf *out, const tk_norm *st, const char *s, size_t n)
{
    size_t a = 0, b = n;
    while (st->left && a < b) {
        int32_t cp;
        int k = tk_utf8_next(s + a, b - a, &cp);
        if (!tk_is_ws(cp)) break;
        a += (size_t)k;
    }
    while (st->right && b > a) {
        size_t k = b - 1;
        while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        int32_t cp;
        tk_utf8_next(s + k, b - k, &cp);
        if (!tk_is_ws(cp)) break;
        b = k;
    }
    return tk_buf_put(out, s + a, b - a);
}

int tk_normalize(tk_buf *out, const tk_norm *steps, size_t n_steps, const char *s, size_t n)
{
    int rc = 0;
    tk_buf tmp = {0};
    out->n = 0;
    if ((rc = tk_buf_put(out, s, n))) goto done;
    for (size_t i = 0; i < n_steps; i++) {
        const tk_norm *st = &steps[i];
        tmp.n = 0;
        if ((rc = tk_buf_reserve(&tmp, out->n))) goto done;
        switch (st->kind) {
        case TK_NORM_NFC: case TK_NORM_NFD: case TK_NORM_NFKC: case TK_NORM_NFKD:
            rc = norm_unicode(&tmp, st->kind, out->p, out->n);
            break;
        case TK_NORM_LOWER:
            rc = norm_lower(&tmp, out->p, out->n);
            break;
        case TK_NORM_PREPEND:
            /* the reference prepends only to non-empty text */
            if (out->n && (rc = tk_buf_put(&tmp, st->str, strlen(st->str)))) break;
            rc = tk_buf_put(&tmp, out->p, out->n);
            break;
        case TK_NORM_REPLACE: {
            replace_ctx c = {&tmp, out->p, st->str};
            rc = regex_walk(&st->re, out->p, out->n, replace_cb, &c);
            break;
        }
        case TK_NORM_STRIP:
            rc = norm_strip(&tmp, st, out->p, out->n);
            break;
        }
        if (rc) goto done;
        tk_buf swap = *out;
        *out = tmp;
        tmp = swap;
    }
    if (!out->p && (rc = tk_buf_reserve(out, 0))) goto done;
    out->p[out->n] = '\0';
done:
    tk_buf_free(&tmp);
    return rc;
}

/* ---- pre-tokenizers -------------------------------------------------------------------------------------- */

/* Collects the (start, end, is_match) triples of one piece, then applies a split behaviour. */
typedef struct {
    tk_spans *out;   /* pieces out (spans of the same buffer) */
    uint32_t base;   /* offset of the piece in its buffer */
    bool invert;
    int behavior;
    /* pending piece of the merging behaviours */
    bool have;
    uint32_t a, b;
    bool prev_match;
} split_ctx;

static int emit(split_ctx *c, uint32_t a, uint32_t b)
{
    return b > a ? tk_spans_push(c->out, c->base + a, b - a) : 0;
}

static int split_cb(void *vctx, size_t a, size_t b, bool is_match)
{
    split_ctx *c = vctx;
    int rc = 0;
    if (c->invert) is_match = !is_match;
    uint32_t ua = (uint32_t)a, ub = (uint32_t)b;
    switch (c->behavior) {
    case TK_BEH_REMOVED:
        if (!is_match) rc = emit(c, ua, ub);
        break;
    case TK_BEH_ISOLATED:
        rc = emit(c, ua, ub);
        break;
    case TK_BEH_MERGED_PREV:
        if (is_match && !c->prev_match && c->have) {
            c->b = ub;
        } else {
            if (c->have && (rc = emit(c, c->a, c->b))) return rc;
            c->have = true;
            c->a = ua;
            c->b = ub;
        }
        c->prev_match = is_match;
        break;
    case TK_BEH_MERGED_NEXT:
        /* a match joins the piece after it, unless that piece is a match too (gaps and matches alternate) */
        if (c->have) {
            if (!is_match) {
                c->have = false;
                rc = emit(c, c->a, ub);
                break;
            }
            if ((rc = emit(c, c->a, c->b))) return rc;
            c->have = false;
        }
        if (is_match) {
            c->have = true;
            c->a = ua;
            c->b = ub;
        } else {
            rc = emit(c, ua, ub);
        }
        break;
    case TK_BEH_CONTIGUOUS:
        if (c->have && is_match == c->prev_match) {
            c->b = ub;
        } else {
            if (c->have && (rc = emit(c, c->a, c->b))) return rc;
            c->have = true;
            c->a = ua;
            c->b = ub;
        }
        c->prev_match = is_match;
        break;
    }
    return rc;
}

static int split_piece(tk_spans *out, const tk_regex *re, int behavior, bool invert, const char *buf, tk_span sp)
{
    split_ctx c = {out, sp.off, invert, behavior, false, 0, 0, false};
    int rc = regex_walk(re, buf + sp.off, sp.len, split_cb, &c);
    if (!rc && c.have) rc = emit(&c, c.a, c.b);
    return rc;
}

/* Metaspace: spaces become the replacement, optionally prepended; with split, each replacement starts a piece */
static int metaspace_piece(tk_buf *ob, tk_spans *out, const tk_pre *st, const char *s, size_t n, bool first)
{
    size_t rl = strlen(st->repl);
    uint32_t start = (uint32_t)ob->n;
    int rc;
    bool prepend = st->prepend_scheme == TK_PREPEND_ALWAYS || (st->prepend_scheme == TK_PREPEND_FIRST && first);
    if (prepend && !(n >= rl && memcmp(s, st->repl, rl) == 0) && (rc = tk_buf_put(ob, st->repl, rl))) return rc;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') rc = tk_buf_put(ob, st->repl, rl);
        else rc = tk_buf_put(ob, s + i, 1);
        if (rc) return rc;
    }
    uint32_t end = (uint32_t)ob->n;
    if (!st->split) return end > start ? tk_spans_push(out, start, end - start) : 0;
    /* MergedWithNext on the replacement: each occurrence begins a new piece */
    uint32_t a = start;
    for (uint32_t i = start; i + rl <= end;) {
        if (i > a && memcmp(ob->p + i, st->repl, rl) == 0) {
            if ((rc = tk_spans_push(out, a, i - a))) return rc;
            a = i;
        }
        int32_t cp;
        i += (uint32_t)tk_utf8_next(ob->p + i, end - i, &cp);
    }
    return end > a ? tk_spans_push(out, a, end - a) : 0;
}

/* ByteLevel: optional prefix space, optional GPT-2 split, then bytes -> alphabet (unless the model takes bytes) */
static int bytelevel_piece(tk_buf *ob, tk_spans *out, const tk_pre *st, const char *s, size_t n)
{
    int rc;
    uint32_t start = (uint32_t)ob->n;
    if (st->add_prefix_space && !(n > 0 && s[0] == ' ') && (rc = tk_buf_put(ob, " ", 1))) return rc;
    if ((rc = tk_buf_put(ob, s, n))) return rc;
    uint32_t end = (uint32_t)ob->n;
    size_t first_new = out->n;
    if (st->use_regex) {
        tk_span sp = {start, end - start};
        if ((rc = split_piece(out, &st->re, TK_BEH_ISOLATED, false, ob->p, sp))) return rc;
    } else if (end > start && (rc = tk_spans_push(out, start, end - start))) {
        return rc;
    }
    if (!st->map_bytes) return 0;
    /* rewrite the new pieces in the alphabet, appended after the raw copy */
    for (size_t i = first_new; i < out->n; i++) {
        tk_span sp = out->v[i];
        if ((rc = tk_buf_reserve(ob, (size_t)sp.len * 2))) return rc;
        uint32_t a = (uint32_t)ob->n;
        for (uint32_t k = 0; k < sp.len; k++)
            ob->n += (size_t)tk_utf8_put(ob->p + ob->n, tk_byte_to_cp[(unsigned char)ob->p[sp.off + k]]);
        out->v[i].off = a;
        out->v[i].len = (uint32_t)ob->n - a;
    }
    return 0;
}

int tk_pretokenize(tk_spans *out, tk_buf **out_buf, tk_buf scratch[2], tk_spans *tmp, const tk_pre *steps,
                   size_t n_steps, const char *s, size_t n, bool first)
{
    int rc;
    int cur = 0;
    scratch[0].n = 0;
    if ((rc = tk_buf_put(&scratch[0], s, n))) return rc;
    out->n = 0;
    if (n && (rc = tk_spans_push(out, 0, (uint32_t)n))) return rc;
    for (size_t i = 0; i < n_steps; i++) {
        const tk_pre *st = &steps[i];
        tk_spans swap = *tmp;
        *tmp = *out;
        *out = swap;
        out->n = 0;
        const char *buf = scratch[cur].p;
        if (st->kind == TK_PRE_METASPACE || st->kind == TK_PRE_BYTELEVEL) {
            tk_buf *ob = &scratch[1 - cur];
            ob->n = 0;
            for (size_t k = 0; k < tmp->n; k++) {
                tk_span sp = tmp->v[k];
                if (st->kind == TK_PRE_METASPACE)
                    rc = metaspace_piece(ob, out, st, buf + sp.off, sp.len, first && k == 0 && sp.off == 0);
                else
                    rc = bytelevel_piece(ob, out, st, buf + sp.off, sp.len);
                if (rc) return rc;
            }
            cur = 1 - cur;
            continue;
        }
        for (size_t k = 0; k < tmp->n; k++)
            if ((rc = split_piece(out, &st->re, st->behavior, st->invert, buf, tmp->v[k]))) return rc;
    }
    *out_buf = &scratch[cur];
    return 0;
}
