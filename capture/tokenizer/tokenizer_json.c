/* tokenizer_json.c — a strict JSON scanner for the bulk of tokenizer.json. A large vocabulary is hundreds of
 * thousands of strings that jansson would turn into as many heap objects only to be copied into hash tables, so
 * the document is walked once to find model.vocab and model.merges, which the loader scans straight into its
 * tables (tokenizer.c), and every other value goes to jansson span by span. Together they accept what
 * json_loadb(JSON_ALLOW_NUL) accepts; errors name the line and byte offset. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

/* deeper documents are handed to jansson whole, so its depth limit applies exactly as before */
#define SPLIT_MAX_DEPTH 1000

/* ---- errors ---------------------------------------------------------------------------------------------- */

static size_t line_of(const char *p, size_t at)
{
    size_t line = 1;
    const char *q = p, *end = p + at;
    while ((q = memchr(q, '\n', (size_t)(end - q)))) {
        line++;
        q++;
    }
    return line;
}

int tk_js_fail(const tk_js *s, size_t at, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return mtr_fail(MTR_EFORMAT, "%s: line %zu, byte %zu: %s", s->name, line_of(s->p, at), at, what);
}

/* ---- tokens ---------------------------------------------------------------------------------------------- */

static inline bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

int tk_js_expect(tk_js *s, char c)
{
    tk_js_ws(s);
    if (s->i >= s->n) return tk_js_fail(s, s->i, "'%c' expected, end of input found", c);
    if (s->p[s->i] != c) return tk_js_fail(s, s->i, "'%c' expected", c);
    s->i++;
    return 0;
}

int tk_js_next(tk_js *s, char close, bool *more)
{
    tk_js_ws(s);
    if (s->i < s->n && s->p[s->i] == ',') *more = true;
    else if (s->i < s->n && s->p[s->i] == close) *more = false;
    else return tk_js_fail(s, s->i, "',' or '%c' expected%s", close, s->i >= s->n ? ", end of input found" : "");
    s->i++;
    return 0;
}

void tk_js_empty(tk_js *s, char close, bool *empty)
{
    tk_js_ws(s);
    *empty = s->i < s->n && s->p[s->i] == close;
    if (*empty) s->i++;
}

/* bytes that end the plain run of a string: the quote, the backslash and control characters */
static const bool str_stop[256] = {
    [0x00] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    ['"'] = 1, ['\\'] = 1,
};

static int hex4(const char *p)
{
    int v = 0;
    for (int k = 0; k < 4; k++) {
        int c = (unsigned char)p[k], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v << 4 | d;
    }
    return v;
}

/* Raw bytes [a, b) of a string must be valid UTF-8 */
static int check_utf8(const tk_js *s, size_t a, size_t b)
{
    size_t ok = tk_utf8_valid_prefix(s->p + a, b - a);
    if (ok != b - a) return tk_js_fail(s, a + ok, "invalid UTF-8 byte 0x%02x", (unsigned char)s->p[a + ok]);
    return 0;
}

int tk_js_string(tk_js *s, tk_buf *scratch, const char **str, size_t *len)
{
    int rc;
    tk_js_ws(s);
    const unsigned char *u = (const unsigned char *)s->p;
    size_t start = s->i, n = s->n, i = start + 1, seg = i;
    if (start >= n) return tk_js_fail(s, start, "string expected, end of input found");
    if (u[start] != '"') return tk_js_fail(s, start, "string expected");
    while (i < n && !str_stop[u[i]]) i++;
    if (i < n && u[i] == '"') { /* no escapes: the string is the document's bytes */
        if ((rc = check_utf8(s, seg, i))) return rc;
        *str = s->p + seg;
        *len = i - seg;
        s->i = i + 1;
        return 0;
    }
    scratch->n = 0;
    for (;;) {
        while (i < n && !str_stop[u[i]]) i++;
        if (i >= n) return tk_js_fail(s, start, "unterminated string");
        if ((rc = check_utf8(s, seg, i)) || (rc = tk_buf_put(scratch, s->p + seg, i - seg))) return rc;
        if (u[i] == '"') break;
        if (u[i] < 0x20) return tk_js_fail(s, i, "control character 0x%02x in a string", u[i]);
        /* an escape */
        if (i + 1 >= n) return tk_js_fail(s, start, "unterminated string");
        char c = 0;
        switch (u[i + 1]) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            int cp = i + 6 <= n ? hex4(s->p + i + 2) : -1;
            if (cp < 0) return tk_js_fail(s, i, "invalid \\u escape");
            size_t esc = i;
            i += 6;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                int lo = i + 6 <= n && u[i] == '\\' && u[i + 1] == 'u' ? hex4(s->p + i + 2) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return tk_js_fail(s, esc, "unpaired surrogate \\u%04X", (unsigned)cp);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return tk_js_fail(s, esc, "unpaired surrogate \\u%04X", (unsigned)cp);
            }
            char out[4];
            if ((rc = tk_buf_put(scratch, out, (size_t)tk_utf8_put(out, cp)))) return rc;
            seg = i;
            continue;
        }
        default:
            return tk_js_fail(s, i, "invalid escape '\\%c'", u[i + 1] >= 0x20 && u[i + 1] < 0x7F ? u[i + 1] : '?');
        }
        if ((rc = tk_buf_put(scratch, &c, 1))) return rc;
        i += 2;
        seg = i;
    }
    *str = scratch->p;
    *len = scratch->n;
    s->i = i + 1;
    return 0;
}

static inline bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

int tk_js_number(tk_js *s, int64_t *v, bool *is_int)
{
    tk_js_ws(s);
    const unsigned char *u = (const unsigned char *)s->p;
    size_t i = s->i, n = s->n;
    bool neg = i < n && u[i] == '-';
    if (neg) i++;
    if (i >= n || !is_digit(u[i])) return tk_js_fail(s, s->i, "number expected");
    uint64_t x = 0;
    bool big = false;
    if (u[i] == '0') i++; /* no leading zeros: "01" ends the number after the 0 and fails at the 1 */
    else
        for (; i < n && is_digit(u[i]); i++) {
            if (x > (UINT64_MAX - 9) / 10) big = true;
            else x = x * 10 + (uint64_t)(u[i] - '0');
        }
    bool real = false;
    if (i < n && u[i] == '.') {
        if (++i >= n || !is_digit(u[i])) return tk_js_fail(s, i, "digit expected after '.'");
        while (i < n && is_digit(u[i])) i++;
        real = true;
    }
    if (i < n && (u[i] == 'e' || u[i] == 'E')) {
        if (++i < n && (u[i] == '+' || u[i] == '-')) i++;
        if (i >= n || !is_digit(u[i])) return tk_js_fail(s, i, "digit expected in the exponent");
        while (i < n && is_digit(u[i])) i++;
        real = true;
    }
    if (x > (uint64_t)INT64_MAX) big = true;
    *is_int = !real && !big;
    *v = big ? (neg ? INT64_MIN : INT64_MAX) : neg ? -(int64_t)x : (int64_t)x;
    s->i = i;
    return 0;
}

/* ---- skipping -------------------------------------------------------------------------------------------- */

enum { SK_PLAIN, SK_QUOTE, SK_OPEN, SK_CLOSE, SK_COMMA };
static const unsigned char sk_class[256] = {
    ['"'] = SK_QUOTE, ['{'] = SK_OPEN, ['['] = SK_OPEN, ['}'] = SK_CLOSE, [']'] = SK_CLOSE, [','] = SK_COMMA,
};

/* The closing quote of the string opening at q; n if there is none. Tokens are short: a byte loop beats memchr. */
static size_t string_end(const char *p, size_t n, size_t q)
{
    size_t j = q + 1;
    while (j < n) {
        char c = p[j];
        if (c == '"') return j;
        j += c == '\\' ? 2 : 1;
    }
    return n;
}

int tk_js_skip(tk_js *s, size_t *count, size_t *depth)
{
    tk_js_ws(s);
    const char *p = s->p;
    size_t i = s->i, n = s->n, start = i;
    *count = 0;
    *depth = 0;
    if (i >= n) return tk_js_fail(s, i, "value expected, end of input found");
    unsigned char c = (unsigned char)p[i];
    if (c == '"') {
        if ((i = string_end(p, n, i)) >= n) return tk_js_fail(s, start, "unterminated string");
        s->i = i + 1;
        return 0;
    }
    if (c != '{' && c != '[') { /* a literal or number: up to the next delimiter */
        while (i < n && !is_ws((unsigned char)p[i]) && p[i] != ',' && p[i] != '}' && p[i] != ']' && p[i] != ':') i++;
        if (i == start) return tk_js_fail(s, start, "value expected");
        s->i = i;
        return 0;
    }
    /* empty? then the count is 0, else one more than the commas at the first level */
    size_t d = 1, commas = 0, maxd = 1;
    tk_js t = {p, n, i + 1, s->name};
    tk_js_ws(&t);
    bool empty = t.i < n && (p[t.i] == '}' || p[t.i] == ']');
    for (i++; i < n; i++) {
        while (i < n && sk_class[(unsigned char)p[i]] == SK_PLAIN) i++;
        if (i >= n) break;
        switch (sk_class[(unsigned char)p[i]]) {
        case SK_QUOTE:
            if ((i = string_end(p, n, i)) >= n) return tk_js_fail(s, start, "unterminated string");
            break;
        case SK_OPEN:
            if (++d > maxd) maxd = d;
            break;
        case SK_COMMA:
            commas += d == 1;
            break;
        case SK_CLOSE:
            if (--d == 0) {
                s->i = i + 1;
                *count = empty ? 0 : commas + 1;
                *depth = maxd;
                return 0;
            }
            break;
        }
    }
    return tk_js_fail(s, start, "unterminated %s", c == '{' ? "object" : "array");
}

/* ---- splitting tokenizer.json ---------------------------------------------------------------------------- */

/* A value's text to jansson */
static int parse_span(json_t **out, const tk_js *s, size_t a, size_t b)
{
    json_error_t jerr;
    *out = json_loadb(s->p + a, b - a, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (*out) return 0;
    size_t at = a + (jerr.position > 0 ? (size_t)jerr.position : 0);
    if (at > b) at = b;
    return tk_js_fail(s, at, "%s", jerr.text);
}

/* A recorded span replaced by a later duplicate key: never scanned, so jansson checks it is JSON (as it would
 * have on the whole document) */
static int discard_span(const tk_js *s, tk_js_span *sp)
{
    json_t *v = NULL;
    int rc = sp->set ? parse_span(&v, s, sp->off, sp->off + sp->len) : 0;
    json_decref(v);
    sp->set = false;
    return rc;
}

/* An object key: NUL bytes are refused as jansson refuses them */
static int js_key(tk_js *s, tk_buf *scratch, const char **k, size_t *kn)
{
    size_t at = (tk_js_ws(s), s->i);
    int rc = tk_js_string(s, scratch, k, kn);
    if (!rc && memchr(*k, '\0', *kn)) rc = tk_js_fail(s, at, "NUL byte in object key not supported");
    return rc;
}

static bool key_is(const char *k, size_t kn, const char *name)
{
    return kn == strlen(name) && memcmp(k, name, kn) == 0;
}

/* The members of the object opening at s->i into obj, jansson parsing each value; with bulk (the model object),
 * "vocab" objects and "merges" arrays are recorded as spans instead. */
static int split_object(tk_js *s, json_t *obj, tk_buf *kb, tk_js_span *vocab, tk_js_span *merges, bool *whole,
                        bool is_root)
{
    int rc;
    bool empty, more = true;
    if ((rc = tk_js_expect(s, '{'))) return rc;
    tk_js_empty(s, '}', &empty);
    if (empty) return 0;
    while (more) {
        const char *k;
        size_t kn, count, depth;
        if ((rc = js_key(s, kb, &k, &kn))) return rc;
        /* the key outlives the value's parse: copy it when it lives in the scratch buffer */
        char small[64], *key = small;
        if (kn >= sizeof small && !(key = malloc(kn + 1))) return mtr_fail(MTR_ENOMEM, "out of memory");
        memcpy(key, k, kn);
        key[kn] = '\0';
        if ((rc = tk_js_expect(s, ':'))) goto next;
        tk_js_ws(s);
        size_t a = s->i;
        char first = a < s->n ? s->p[a] : 0;
        json_t *v = NULL;
        bool is_model = is_root && key_is(key, kn, "model"), is_vocab = !is_root && key_is(key, kn, "vocab"),
             is_merges = !is_root && key_is(key, kn, "merges");
        /* a later duplicate key replaces an earlier one, as in jansson */
        if (((is_model || is_vocab) && (rc = discard_span(s, vocab))) ||
            ((is_model || is_merges) && (rc = discard_span(s, merges))))
            goto next;
        if (is_model && first == '{') { /* walked member by member */
            if (!(v = json_object())) rc = mtr_fail(MTR_ENOMEM, "out of memory");
            else rc = split_object(s, v, kb, vocab, merges, whole, false);
        } else {
            if ((rc = tk_js_skip(s, &count, &depth))) goto next;
            if (depth + !is_root > SPLIT_MAX_DEPTH) {
                *whole = true;
                goto next;
            }
            tk_js_span *bulk = is_vocab && first == '{' ? vocab : is_merges && first == '[' ? merges : NULL;
            if (bulk) {
                json_object_deln(obj, key, kn);
                *bulk = (tk_js_span){a, s->i - a, count, true};
                goto sep;
            }
            rc = parse_span(&v, s, a, s->i);
        }
        if (!rc && !*whole && json_object_setn_new(obj, key, kn, v)) rc = mtr_fail(MTR_ENOMEM, "out of memory");
        else if (rc || *whole) json_decref(v);
    sep:
        if (!rc && !*whole) rc = tk_js_next(s, '}', &more);
    next:
        if (key != small) free(key);
        if (rc || *whole) return rc;
    }
    return 0;
}

int tk_js_split(json_t **root, tk_js_span *vocab, tk_js_span *merges, const char *doc, size_t n)
{
    tk_js s = {doc, n, 0, "tokenizer.json"};
    tk_buf kb = {0};
    bool whole = false;
    int rc;
    *root = NULL;
    *vocab = *merges = (tk_js_span){0, 0, 0, false};
    tk_js_ws(&s);
    if (s.i >= n || doc[s.i] != '{') return TK_JS_WHOLE;
    if (!(*root = json_object())) return mtr_fail(MTR_ENOMEM, "out of memory");
    rc = split_object(&s, *root, &kb, vocab, merges, &whole, true);
    if (!rc && !whole && (tk_js_ws(&s), s.i != n)) rc = tk_js_fail(&s, s.i, "end of file expected");
    tk_buf_free(&kb);
    if (rc || whole) {
        json_decref(*root);
        *root = NULL;
        *vocab = *merges = (tk_js_span){0, 0, 0, false};
    }
    return rc ? rc : whole ? TK_JS_WHOLE : 0;
}
