/* corpus.c — the inputs of `moetrace-capture run` (capture/mtr_corpus.h is the contract): capture corpora in JSONL,
 * FLORES-style directories and TSV, multiple-choice and generation sets, the prompt templates that render them,
 * and the numeric answer check of generation sets. Files are read whole, checked for UTF-8 first, then parsed
 * line by line so that every error can name its line. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mtr_corpus.h"

#define ARENA_BLOCK ((size_t)1 << 20)
#define SHOW 80 /* bytes of a user string quoted in an error detail */

/* ---- errors ---------------------------------------------------------------------------------------------- */

static _Thread_local char tl_msg[1024];

const char *mtr_corpus_errmsg(void) { return tl_msg; }

static int fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_msg, sizeof tl_msg, fmt, ap);
    va_end(ap);
    for (char *p = tl_msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return err;
}

static int oom(void) { return fail(MTR_ENOMEM, "out of memory"); }

/* ---- formats --------------------------------------------------------------------------------------------- */

static const char *const format_names[] = {
#define MTR_X_FMT(name, str) str,
    MTR_CORPUS_FORMAT_LIST(MTR_X_FMT)
#undef MTR_X_FMT
};
#define N_FORMATS (sizeof format_names / sizeof format_names[0])

const char *mtr_corpus_format_name(mtr_corpus_format f)
{
    return (unsigned)f < N_FORMATS ? format_names[f] : NULL;
}

int mtr_corpus_format_parse(mtr_corpus_format *out, const char *s)
{
    for (size_t i = 0; s && i < N_FORMATS; i++)
        if (strcmp(s, format_names[i]) == 0) {
            *out = (mtr_corpus_format)i;
            return 0;
        }
    return fail(MTR_EINVAL, "unknown corpus format \"%.*s\" (auto, jsonl, flores, tsv)", SHOW, s ? s : "");
}

/* ---- arena: every string of a loaded object lives here, freed at once ------------------------------------ */

typedef struct blk {
    struct blk *next;
    size_t used, cap;
} blk;

typedef struct {
    blk *head;
} arena;

static void *arena_alloc(arena *a, size_t n)
{
    n = (n + 7) & ~(size_t)7; /* blk is 24 bytes, so 8-byte steps keep pointer arrays aligned */
    blk *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    void *p = (char *)(b + 1) + b->used;
    b->used += n;
    return p;
}

static char *arena_strndup(arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static char *arena_strdup(arena *a, const char *s) { return arena_strndup(a, s, strlen(s)); }

static void arena_free(arena *a)
{
    for (blk *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
}

/* room for one more element in a growable array */
static int grow(void **p, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 64;
    void *q = realloc(*p, nc * elem);
    if (!q) return oom();
    *p = q;
    *cap = nc;
    return 0;
}

/* ---- growable string ------------------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static int sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->cap - b->n < n + 1) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc - b->n < n + 1) nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q) return oom();
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

static int sb_puts(sbuf *b, const char *s) { return sb_put(b, s, strlen(s)); }

/* ---- ASCII classes (locale-free) ------------------------------------------------------------------------- */

static bool is_digit(int c) { return c >= '0' && c <= '9'; }
static bool is_alpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static bool is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_space((unsigned char)s[i])) return false;
    return true;
}

/* ---- files ----------------------------------------------------------------------------------------------- */

/* The whole file, NUL-terminated (malloc'd). */
static int read_all(char **out, size_t *len, const char *path)
{
    *out = NULL;
    *len = 0;
    int rc = 0;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = errno == ENOENT ? fail(MTR_ENOTFOUND, "%s: no such file", path)
                             : fail(MTR_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = fail(MTR_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = fail(MTR_EINVAL, "%s: not a regular file", path);
        goto out;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    buf = malloc(cap);
    if (!buf) {
        rc = oom();
        goto out;
    }
    for (;;) {
        if (n + 1 == cap) { /* the file grew while being read */
            char *q = realloc(buf, cap * 2);
            if (!q) {
                rc = oom();
                goto out;
            }
            buf = q;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = fail(MTR_EIO, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    if (fd >= 0) close(fd);
    return rc;
}

/* Offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, nothing
 * past U+10FFFF) or is NUL (it would end the C string early); len if there is none. */
static size_t utf8_bad(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c >= 0x01 && c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) k = 1;
        else if (c == 0xe0) k = 2, lo = 0xa0;
        else if (c >= 0xe1 && c <= 0xec) k = 2;
        else if (c == 0xed) k = 2, hi = 0x9f;
        else if (c >= 0xee && c <= 0xef) k = 2;
        else if (c == 0xf0) k = 3, lo = 0x90;
        else if (c >= 0xf1 && c <= 0xf3) k = 3;
        else if (c == 0xf4) k = 3, hi = 0x8f;
        else return i; /* NUL, continuation byte, 0xc0/0xc1, 0xf5.. */
        if (len - i <= k) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xbf) return i;
        i += k + 1;
    }
    return len;
}

/* Refuse a file holding invalid UTF-8 or NUL, naming the line and the byte offset in the file. */
static int check_utf8(const char *path, const char *buf, size_t len)
{
    size_t bad = utf8_bad((const unsigned char *)buf, len);
    if (bad == len) return 0;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < bad; i++) {
        if (buf[i] == '\n') line++, col = 1;
        else col++;
    }
    if (buf[bad] == '\0')
        return fail(MTR_EFORMAT, "%s:%zu: NUL byte at byte %zu (column %zu)", path, line, bad, col);
    return fail(MTR_EFORMAT, "%s:%zu: invalid UTF-8 at byte %zu (column %zu)", path, line, bad, col);
}

/* Line iterator: lines without '\n' and one '\r' before it; a final line without '\n' counts, an empty one after
 * the last '\n' does not. */
typedef struct {
    const char *p, *end;
    size_t line; /* 1-based number of the line last returned */
} lines;

static void lines_init(lines *it, const char *buf, size_t len)
{
    it->p = buf;
    it->end = buf + len;
    it->line = 0;
    if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0) it->p += 3; /* byte-order mark */
}

static bool lines_next(lines *it, const char **s, size_t *n)
{
    if (it->p >= it->end) return false;
    const char *nl = memchr(it->p, '\n', (size_t)(it->end - it->p));
    const char *e = nl ? nl : it->end;
    *s = it->p;
    *n = (size_t)(e - it->p);
    if (*n && (*s)[*n - 1] == '\r') (*n)--;
    it->p = nl ? nl + 1 : it->end;
    it->line++;
    return true;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ---- field checks ---------------------------------------------------------------------------------------- */

/* unit_id, lang and dataset key the trace and the TSV tables of moetrace-stats: short, no control characters */
static int check_key(const char *path, size_t line, const char *field, const char *v)
{
    size_t n = strlen(v);
    if (n == 0) return fail(MTR_EFORMAT, "%s:%zu: empty \"%s\"", path, line, field);
    if (n > MTR_CORPUS_MAX_KEY)
        return fail(MTR_EFORMAT, "%s:%zu: \"%s\" is %zu bytes (at most %d)", path, line, field, n,
                    MTR_CORPUS_MAX_KEY);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            return fail(MTR_EFORMAT, "%s:%zu: \"%s\" holds a control character", path, line, field);
    return 0;
}

static int check_text(const char *path, size_t line, const char *field, const char *v, size_t n)
{
    if (is_blank(v, n)) return fail(MTR_EFORMAT, "%s:%zu: empty \"%s\"", path, line, field);
    return 0;
}

/* ---- filters --------------------------------------------------------------------------------------------- */

typedef struct {
    char **v;
    bool *seen;
    size_t n;
} strlist;

/* comma-separated, empty entries dropped */
static int strlist_parse(strlist *l, const char *s)
{
    memset(l, 0, sizeof *l);
    if (!s) return 0;
    size_t max = 1;
    for (const char *p = s; *p; p++) max += *p == ',';
    l->v = calloc(max, sizeof *l->v);
    l->seen = calloc(max, sizeof *l->seen);
    if (!l->v || !l->seen) return oom();
    for (const char *p = s;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n) {
            l->v[l->n] = strndup(p, n);
            if (!l->v[l->n]) return oom();
            l->n++;
        }
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

static void strlist_free(strlist *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    free(l->seen);
    memset(l, 0, sizeof *l);
}

/* true if the list is empty or holds v; marks v seen */
static bool strlist_take(strlist *l, const char *v)
{
    if (!l->n) return true;
    bool hit = false;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], v) == 0) l->seen[i] = hit = true;
    return hit;
}

typedef struct {
    const mtr_corpus_opts *o;
    strlist langs, datasets, require;
    size_t kept;
} filt;

static const mtr_corpus_opts default_opts = MTR_CORPUS_OPTS_INIT;

static int filt_init(filt *f, const mtr_corpus_opts *o)
{
    memset(f, 0, sizeof *f);
    f->o = o ? o : &default_opts;
    int rc;
    if ((rc = strlist_parse(&f->langs, f->o->langs)) || (rc = strlist_parse(&f->datasets, f->o->datasets)) ||
        (rc = strlist_parse(&f->require, f->o->require_lang)))
        return rc;
    return 0;
}

static void filt_free(filt *f)
{
    strlist_free(&f->langs);
    strlist_free(&f->datasets);
    strlist_free(&f->require);
}

/* Whether an item that passed validation is kept: both filters (each marks what it saw), then the limit. */
static bool filt_keep(filt *f, const char *lang, const char *dataset)
{
    bool l = strlist_take(&f->langs, lang);
    bool d = strlist_take(&f->datasets, dataset);
    if (!l || !d) return false;
    if (f->o->max_items && f->kept >= f->o->max_items) return false;
    f->kept++;
    for (size_t i = 0; i < f->require.n; i++)
        if (strcmp(f->require.v[i], lang) == 0) f->require.seen[i] = true;
    return true;
}

/* After the last item: every filter entry was seen, and require_lang is met. */
static int filt_finish(const filt *f, const char *path)
{
    for (size_t i = 0; i < f->langs.n; i++)
        if (!f->langs.seen[i])
            return fail(MTR_ENOTFOUND, "%s: no item has lang \"%.*s\" (asked for by the language filter)", path,
                        SHOW, f->langs.v[i]);
    for (size_t i = 0; i < f->datasets.n; i++)
        if (!f->datasets.seen[i])
            return fail(MTR_ENOTFOUND, "%s: no item has dataset \"%.*s\" (asked for by the dataset filter)", path,
                        SHOW, f->datasets.v[i]);
    if (f->require.n) {
        for (size_t i = 0; i < f->require.n; i++)
            if (f->require.seen[i]) return 0;
        return fail(MTR_ENOTFOUND, "%s: none of the required languages (%.*s) is among the items kept", path, 200,
                    f->o->require_lang);
    }
    return 0;
}

/* ---- duplicate (unit_id, lang, dataset) ------------------------------------------------------------------ */

typedef struct {
    const char *u, *l, *d; /* arena strings */
    size_t line;
    uint64_t h;
} dkey;

typedef struct {
    dkey *e;
    size_t n, cap;
    size_t *slot; /* (nslot) entry index + 1, 0 = empty; open addressing, at most half full */
    size_t nslot;
} dupset;

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return (h ^ 0x1f) * 0x100000001b3ULL; /* a separator no key holds (control characters are refused) */
}

static void dup_free(dupset *s)
{
    free(s->e);
    free(s->slot);
    memset(s, 0, sizeof *s);
}

/* 0 if new (recorded), 1 if (u, l, d) was seen before (*prev = its line), or MTR_ENOMEM */
static int dup_add(dupset *s, const char *u, const char *l, const char *d, size_t line, size_t *prev)
{
    if ((s->n + 1) * 2 > s->nslot) {
        size_t ns = s->nslot ? s->nslot * 2 : 1024;
        size_t *slot = calloc(ns, sizeof *slot);
        if (!slot) return oom();
        for (size_t i = 0; i < s->n; i++) {
            size_t j = s->e[i].h & (ns - 1);
            while (slot[j]) j = (j + 1) & (ns - 1);
            slot[j] = i + 1;
        }
        free(s->slot);
        s->slot = slot;
        s->nslot = ns;
    }
    uint64_t h = fnv(fnv(fnv(0xcbf29ce484222325ULL, u), l), d);
    size_t j = h & (s->nslot - 1);
    for (; s->slot[j]; j = (j + 1) & (s->nslot - 1)) {
        const dkey *k = &s->e[s->slot[j] - 1];
        if (k->h == h && strcmp(k->u, u) == 0 && strcmp(k->l, l) == 0 && strcmp(k->d, d) == 0) {
            *prev = k->line;
            return 1;
        }
    }
    int rc = grow((void **)&s->e, &s->cap, s->n, sizeof *s->e);
    if (rc) return rc;
    s->e[s->n] = (dkey){u, l, d, line, h};
    s->slot[j] = ++s->n;
    return 0;
}

static int check_dup(dupset *s, const char *path, size_t line, const char *u, const char *l, const char *d)
{
    size_t prev = 0;
    int r = dup_add(s, u, l, d, line, &prev);
    if (r < 0) return r;
    if (r == 1)
        return fail(MTR_EDUP, "%s:%zu: duplicate unit \"%.*s\" (lang \"%.*s\", dataset \"%.*s\"): also on line %zu",
                    path, line, SHOW, u, SHOW, l, SHOW, d, prev);
    return 0;
}

/* ---- JSON fields ----------------------------------------------------------------------------------------- */

/* Parse one line as a JSON object. */
static int parse_object(json_t **out, const char *s, size_t n, const char *path, size_t line)
{
    json_error_t je;
    *out = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
    if (!*out) return fail(MTR_EFORMAT, "%s:%zu: not JSON: %s (column %d)", path, line, je.text, je.column);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return fail(MTR_EFORMAT, "%s:%zu: not a JSON object", path, line);
    }
    return 0;
}

/* *out = the string member key (borrowed from o), NULL when absent or null. int_ok: an integer is accepted too
 * and written as decimal text into num. */
static int jfield(const char **out, char num[32], json_t *o, const char *key, bool int_ok, const char *path,
                  size_t line)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        *out = json_string_value(v);
        return 0;
    }
    if (int_ok && json_is_integer(v)) {
        snprintf(num, 32, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        *out = num;
        return 0;
    }
    return fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be a string%s", path, line, key, int_ok ? " or an integer" : "");
}

/* A required key field: the member, else dflt, else "missing"; checked and copied into the arena. Only unit_id
 * may be an integer. */
static int key_field(const char **out, arena *a, json_t *o, const char *key, const char *dflt, const char *path,
                     size_t line)
{
    char num[32];
    const char *v;
    int rc = jfield(&v, num, o, key, strcmp(key, "unit_id") == 0, path, line);
    if (rc) return rc;
    if (!v) v = dflt;
    if (!v) return fail(MTR_EFORMAT, "%s:%zu: missing \"%s\"", path, line, key);
    if ((rc = check_key(path, line, key, v))) return rc;
    *out = arena_strdup(a, v);
    return *out ? 0 : oom();
}

/* ---- format detection ------------------------------------------------------------------------------------ */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

static int detect(mtr_corpus_format *out, const char *path, mtr_corpus_format forced)
{
    struct stat st;
    if (!path) return fail(MTR_EINVAL, "no corpus path");
    if ((unsigned)forced >= N_FORMATS) return fail(MTR_EINVAL, "%s: unknown corpus format %d", path, (int)forced);
    if (stat(path, &st) != 0)
        return errno == ENOENT ? fail(MTR_ENOTFOUND, "%s: no such file or directory", path)
                               : fail(MTR_EIO, "%s: %s", path, strerror(errno));
    bool dir = S_ISDIR(st.st_mode);
    if (forced != MTR_CORPUS_AUTO) {
        if (dir != (forced == MTR_CORPUS_FLORES))
            return fail(MTR_EINVAL, "%s: %s, but the format asked for is %s", path,
                        dir ? "a directory" : "not a directory", format_names[forced]);
        *out = forced;
        return 0;
    }
    if (dir) *out = MTR_CORPUS_FLORES;
    else if (ends_with(path, ".jsonl") || ends_with(path, ".json")) *out = MTR_CORPUS_JSONL;
    else if (ends_with(path, ".tsv")) *out = MTR_CORPUS_TSV;
    else
        return fail(MTR_EINVAL, "%s: cannot tell the format from the name (*.jsonl, *.json, *.tsv or a directory); "
                                "name it", path);
    return 0;
}

/* ---- TSV rows -------------------------------------------------------------------------------------------- */

typedef struct {
    const char *s;
    size_t n;
} span;

/* Split a line on tabs into f (at most max fields); returns the number of fields (max + 1 if there are more). */
static size_t split_tabs(span *f, size_t max, const char *s, size_t n)
{
    size_t k = 0;
    const char *p = s, *end = s + n;
    for (;;) {
        const char *t = memchr(p, '\t', (size_t)(end - p));
        const char *e = t ? t : end;
        if (k == max) return max + 1;
        f[k++] = (span){p, (size_t)(e - p)};
        if (!t) return k;
        p = t + 1;
    }
}

/* Decode \t \n \\ of a TSV text field into b (reset first); other backslashes stay. */
static int tsv_unescape(sbuf *b, const char *s, size_t n)
{
    b->n = 0;
    int rc = sb_put(b, "", 0);
    for (size_t i = 0; !rc && i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n && (s[i + 1] == 't' || s[i + 1] == 'n' || s[i + 1] == '\\')) {
            c = s[i + 1] == 't' ? '\t' : s[i + 1] == 'n' ? '\n' : '\\';
            i++;
        }
        rc = sb_put(b, &c, 1);
    }
    return rc;
}

#define TSV_MAX_COLS 64

typedef struct {
    span f[TSV_MAX_COLS];
    size_t n;
} tsv_header;

static int tsv_read_header(tsv_header *h, const char *s, size_t n, const char *path, size_t line)
{
    h->n = split_tabs(h->f, TSV_MAX_COLS, s, n);
    if (h->n > TSV_MAX_COLS) return fail(MTR_EFORMAT, "%s:%zu: more than %d columns", path, line, TSV_MAX_COLS);
    for (size_t i = 0; i < h->n; i++)
        for (size_t j = 0; j < i; j++)
            if (h->f[i].n == h->f[j].n && memcmp(h->f[i].s, h->f[j].s, h->f[i].n) == 0)
                return fail(MTR_EFORMAT, "%s:%zu: column \"%.*s\" twice in the header", path, line,
                            (int)(h->f[i].n < SHOW ? h->f[i].n : SHOW), h->f[i].s);
    return 0;
}

/* index of column name, or -1 */
static int tsv_col(const tsv_header *h, const char *name)
{
    size_t k = strlen(name);
    for (size_t i = 0; i < h->n; i++)
        if (h->f[i].n == k && memcmp(h->f[i].s, name, k) == 0) return (int)i;
    return -1;
}

static int tsv_row(span *f, const tsv_header *h, const char *s, size_t n, const char *path, size_t line)
{
    size_t k = split_tabs(f, h->n, s, n);
    if (k != h->n)
        return fail(MTR_EFORMAT, "%s:%zu: %s%zu fields, the header has %zu", path, line, k > h->n ? "more than " : "",
                    k > h->n ? h->n : k, h->n);
    return 0;
}

/* A key field of a TSV row, checked and copied; an absent column (col < 0) takes dflt. */
static int tsv_key(const char **out, arena *a, const span *f, int col, const char *name, const char *dflt,
                   const char *path, size_t line)
{
    if (col < 0 && !dflt) return fail(MTR_EFORMAT, "%s:%zu: no \"%s\" column and no default", path, line, name);
    *out = col >= 0 ? arena_strndup(a, f[col].s, f[col].n) : arena_strdup(a, dflt);
    if (!*out) return oom();
    return check_key(path, line, name, *out);
}

/* ---- capture corpora ------------------------------------------------------------------------------------- */

struct mtr_corpus {
    arena a;
    mtr_corpus_item *items; /* (n) */
    size_t n, cap;
    mtr_corpus_format format;
};

static int corpus_push(mtr_corpus *c, const mtr_corpus_item *it)
{
    int rc = grow((void **)&c->items, &c->cap, c->n, sizeof *c->items);
    if (rc) return rc;
    c->items[c->n++] = *it;
    return 0;
}

/* messages of a JSONL chat item: validated; copied into the arena only when keep */
static int corpus_messages(mtr_corpus_item *it, arena *a, json_t *msgs, bool keep, const char *path, size_t line)
{
    if (!json_is_array(msgs)) return fail(MTR_EFORMAT, "%s:%zu: \"messages\" must be an array", path, line);
    size_t n = json_array_size(msgs);
    if (!n) return fail(MTR_EFORMAT, "%s:%zu: empty \"messages\"", path, line);
    mtr_corpus_message *m = keep ? arena_alloc(a, n * sizeof *m) : NULL;
    if (keep && !m) return oom();
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(msgs, i);
        json_t *r = json_object_get(e, "role"), *c = json_object_get(e, "content");
        if (!json_is_object(e))
            return fail(MTR_EFORMAT, "%s:%zu: message %zu is not an object", path, line, i + 1);
        if (!json_is_string(r) || !json_string_length(r))
            return fail(MTR_EFORMAT, "%s:%zu: message %zu: \"role\" must be a non-empty string", path, line, i + 1);
        if (!json_is_string(c))
            return fail(MTR_EFORMAT, "%s:%zu: message %zu: \"content\" must be a string", path, line, i + 1);
        if (is_blank(json_string_value(c), json_string_length(c)))
            return fail(MTR_EFORMAT, "%s:%zu: message %zu: empty \"content\"", path, line, i + 1);
        if (keep) {
            m[i].role = arena_strdup(a, json_string_value(r));
            m[i].content = arena_strdup(a, json_string_value(c));
            if (!m[i].role || !m[i].content) return oom();
        }
    }
    it->messages = m;
    it->n_messages = keep ? n : 0;
    return 0;
}

static int corpus_jsonl(mtr_corpus *c, const char *buf, size_t len, const char *path, const char *file, filt *f)
{
    int rc = 0;
    json_t *o = NULL;
    dupset dups = {0};
    lines it;
    const char *s;
    size_t n;
    lines_init(&it, buf, len);
    while (lines_next(&it, &s, &n)) {
        size_t line = it.line;
        if (is_blank(s, n)) continue;
        if ((rc = parse_object(&o, s, n, path, line))) goto out;
        mtr_corpus_item item = {0};
        item.file = file;
        item.line = line;
        const char *text, *id;
        char num[32];
        if ((rc = key_field(&item.unit_id, &c->a, o, "unit_id", NULL, path, line)) ||
            (rc = key_field(&item.lang, &c->a, o, "lang", f->o->lang, path, line)) ||
            (rc = key_field(&item.dataset, &c->a, o, "dataset", f->o->dataset, path, line)) ||
            (rc = jfield(&text, num, o, "text", false, path, line)))
            goto out;
        json_t *msgs = json_object_get(o, "messages");
        if (json_is_null(msgs)) msgs = NULL;
        if (text && msgs) {
            rc = fail(MTR_EFORMAT, "%s:%zu: both \"text\" and \"messages\"", path, line);
            goto out;
        }
        if (!text && !msgs) {
            rc = fail(MTR_EFORMAT, "%s:%zu: missing \"text\" (or \"messages\")", path, line);
            goto out;
        }
        if (text && (rc = check_text(path, line, "text", text, strlen(text)))) goto out;
        if ((rc = check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset))) goto out;
        bool keep = filt_keep(f, item.lang, item.dataset);
        if (msgs && (rc = corpus_messages(&item, &c->a, msgs, keep, path, line))) goto out;
        if ((rc = jfield(&id, num, o, "id", true, path, line))) goto out;
        if (keep) {
            if ((text && !(item.text = arena_strdup(&c->a, text))) ||
                (id && !(item.item_id = arena_strdup(&c->a, id)))) {
                rc = oom();
                goto out;
            }
            if ((rc = corpus_push(c, &item))) goto out;
        }
        json_decref(o);
        o = NULL;
    }
out:
    json_decref(o);
    dup_free(&dups);
    return rc;
}

static int corpus_tsv(mtr_corpus *c, const char *buf, size_t len, const char *path, const char *file, filt *f)
{
    int rc = 0;
    dupset dups = {0};
    sbuf text = {0};
    span fl[TSV_MAX_COLS];
    tsv_header h;
    lines it;
    const char *s;
    size_t n;
    lines_init(&it, buf, len);
    bool have = false;
    while ((have = lines_next(&it, &s, &n)) && is_blank(s, n)) {}
    if (!have) {
        rc = fail(MTR_EFORMAT, "%s:1: no header line (unit_id, lang, text, optional dataset, id)", path);
        goto out;
    }
    if ((rc = tsv_read_header(&h, s, n, path, it.line))) goto out;
    int cu = tsv_col(&h, "unit_id"), cl = tsv_col(&h, "lang"), ct = tsv_col(&h, "text"), cd = tsv_col(&h, "dataset"),
        ci = tsv_col(&h, "id");
    if (cu < 0 || cl < 0 || ct < 0) {
        rc = fail(MTR_EFORMAT, "%s:%zu: the header lacks column \"%s\" (needs unit_id, lang, text)", path, it.line,
                  cu < 0 ? "unit_id" : cl < 0 ? "lang" : "text");
        goto out;
    }
    while (lines_next(&it, &s, &n)) {
        size_t line = it.line;
        if (!n) continue;
        if ((rc = tsv_row(fl, &h, s, n, path, line))) goto out;
        mtr_corpus_item item = {0};
        item.file = file;
        item.line = line;
        if ((rc = tsv_key(&item.unit_id, &c->a, fl, cu, "unit_id", NULL, path, line)) ||
            (rc = tsv_key(&item.lang, &c->a, fl, cl, "lang", NULL, path, line)) ||
            (rc = tsv_key(&item.dataset, &c->a, fl, cd, "dataset", f->o->dataset, path, line)) ||
            (rc = tsv_unescape(&text, fl[ct].s, fl[ct].n)) || (rc = check_text(path, line, "text", text.p, text.n)) ||
            (rc = check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset)))
            goto out;
        if (filt_keep(f, item.lang, item.dataset)) {
            if (!(item.text = arena_strndup(&c->a, text.p, text.n)) ||
                (ci >= 0 && fl[ci].n && !(item.item_id = arena_strndup(&c->a, fl[ci].s, fl[ci].n)))) {
                rc = oom();
                goto out;
            }
            if ((rc = corpus_push(c, &item))) goto out;
        }
    }
out:
    free(text.p);
    dup_free(&dups);
    return rc;
}

/* one language file of a FLORES directory */
typedef struct {
    char *name;         /* file name */
    const char *path;   /* dir/name, arena */
    const char *lang;   /* arena */
    const char **lines; /* (n_lines) arena strings */
    size_t n_lines;
} flores_file;

static int cmp_flores(const void *a, const void *b)
{
    return strcmp(((const flores_file *)a)->name, ((const flores_file *)b)->name);
}

static int flores_read(flores_file *ff, arena *a)
{
    char *buf = NULL;
    size_t len, cap = 0;
    int rc = read_all(&buf, &len, ff->path);
    if (rc || (rc = check_utf8(ff->path, buf, len))) goto out;
    lines it;
    const char *s;
    size_t n;
    lines_init(&it, buf, len);
    while (lines_next(&it, &s, &n)) {
        if ((rc = check_text(ff->path, it.line, "text", s, n))) goto out;
        if ((rc = grow((void **)&ff->lines, &cap, ff->n_lines, sizeof *ff->lines))) goto out;
        if (!(ff->lines[ff->n_lines++] = arena_strndup(a, s, n))) {
            rc = oom();
            goto out;
        }
    }
    if (!ff->n_lines) rc = fail(MTR_EFORMAT, "%s:1: empty file", ff->path);
out:
    free(buf);
    return rc;
}

static int corpus_flores(mtr_corpus *c, const char *dir, filt *f)
{
    int rc = 0;
    DIR *d = NULL;
    flores_file *files = NULL;
    size_t nf = 0, cap = 0;
    char *real = NULL, *root = strdup(dir);
    if (!root) return oom();
    for (size_t k = strlen(root); k > 1 && root[k - 1] == '/'; k--) root[k - 1] = '\0';
    const char *dataset = f->o->dataset;
    if (!dataset) { /* "." or "..": the directory's real name */
        dataset = base_name(root);
        if ((strcmp(dataset, ".") == 0 || strcmp(dataset, "..") == 0) && (real = realpath(root, NULL)))
            dataset = base_name(real);
    }
    if (!*dataset || check_key(root, 0, "dataset", dataset)) {
        rc = fail(MTR_EINVAL, "%s: no usable dataset name from the directory; give one", root);
        goto out;
    }
    if (!(dataset = arena_strdup(&c->a, dataset))) {
        rc = oom();
        goto out;
    }
    if (!(d = opendir(root))) {
        rc = fail(MTR_EIO, "%s: %s", root, strerror(errno));
        goto out;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *dot = strchr(de->d_name, '.');
        if (de->d_name[0] == '.' || !dot) continue;
        size_t plen = strlen(root) + 1 + strlen(de->d_name) + 1;
        char *p = arena_alloc(&c->a, plen);
        if (!p) {
            rc = oom();
            goto out;
        }
        snprintf(p, plen, "%s/%s", root, de->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        const char *lang = arena_strndup(&c->a, de->d_name, (size_t)(dot - de->d_name));
        if (!lang) {
            rc = oom();
            goto out;
        }
        if ((rc = check_key(p, 0, "lang", lang))) {
            rc = fail(MTR_EFORMAT, "%s: the file name does not give a language code", p);
            goto out;
        }
        if (f->langs.n) { /* read only the languages asked for */
            bool want = false;
            for (size_t i = 0; i < f->langs.n; i++) want |= strcmp(f->langs.v[i], lang) == 0;
            if (!want) continue;
        }
        if ((rc = grow((void **)&files, &cap, nf, sizeof *files))) goto out;
        files[nf] = (flores_file){strdup(de->d_name), p, lang, NULL, 0};
        if (!files[nf++].name) {
            rc = oom();
            goto out;
        }
    }
    if (!nf) {
        rc = f->langs.n ? fail(MTR_ENOTFOUND, "%s: no file of the languages asked for (%.*s)", root, 200, f->o->langs)
                        : fail(MTR_EFORMAT, "%s: no language files (named like eng_Latn.devtest or en.txt)", root);
        goto out;
    }
    qsort(files, nf, sizeof *files, cmp_flores);
    for (size_t i = 1; i < nf; i++)
        if (strcmp(files[i].lang, files[i - 1].lang) == 0) {
            rc = fail(MTR_EFORMAT, "%s: language \"%s\" again (also %s)", files[i].path, files[i].lang,
                      files[i - 1].path);
            goto out;
        }
    for (size_t i = 0; i < nf; i++) {
        if ((rc = flores_read(&files[i], &c->a))) goto out;
        if (files[i].n_lines != files[0].n_lines) {
            size_t a = files[i].n_lines, b = files[0].n_lines;
            rc = fail(MTR_EFORMAT, "%s:%zu: %zu lines, but %s has %zu (files must be line-aligned)", files[i].path,
                      (a < b ? a : b) + 1, a, files[0].path, b);
            goto out;
        }
    }
    const char *prefix = f->o->unit_prefix ? f->o->unit_prefix : "";
    for (size_t u = 0; u < files[0].n_lines; u++) {
        char unit[64 + MTR_CORPUS_MAX_KEY];
        snprintf(unit, sizeof unit, "%s%zu", prefix, u + 1);
        if ((rc = check_key(files[0].path, u + 1, "unit_id", unit))) goto out;
        const char *uid = NULL;
        for (size_t i = 0; i < nf; i++) {
            if (!filt_keep(f, files[i].lang, dataset)) continue;
            if (!uid && !(uid = arena_strdup(&c->a, unit))) {
                rc = oom();
                goto out;
            }
            mtr_corpus_item item = {.unit_id = uid, .lang = files[i].lang, .dataset = dataset,
                                    .text = files[i].lines[u], .file = files[i].path, .line = u + 1};
            if ((rc = corpus_push(c, &item))) goto out;
        }
    }
out:
    if (d) closedir(d);
    for (size_t i = 0; i < nf; i++) {
        free(files[i].name);
        free(files[i].lines);
    }
    free(files);
    free(real);
    free(root);
    return rc;
}

int mtr_corpus_load(mtr_corpus **out, const char *path, const mtr_corpus_opts *opts)
{
    *out = NULL;
    tl_msg[0] = '\0';
    filt f;
    char *buf = NULL;
    size_t len = 0;
    mtr_corpus *c = calloc(1, sizeof *c);
    int rc = filt_init(&f, opts);
    if (!c && !rc) rc = oom();
    if (rc || (rc = detect(&c->format, path, f.o->format))) goto out;
    if (c->format == MTR_CORPUS_FLORES) {
        rc = corpus_flores(c, path, &f);
    } else {
        const char *file = arena_strdup(&c->a, path);
        if (!file) rc = oom();
        if (rc || (rc = read_all(&buf, &len, path)) || (rc = check_utf8(path, buf, len))) goto out;
        rc = c->format == MTR_CORPUS_JSONL ? corpus_jsonl(c, buf, len, path, file, &f)
                                           : corpus_tsv(c, buf, len, path, file, &f);
    }
    if (!rc) rc = filt_finish(&f, path);
out:
    free(buf);
    filt_free(&f);
    if (rc) {
        mtr_corpus_destroy(c);
        return rc;
    }
    *out = c;
    return 0;
}

size_t mtr_corpus_count(const mtr_corpus *c) { return c ? c->n : 0; }

const mtr_corpus_item *mtr_corpus_get(const mtr_corpus *c, size_t i) { return c && i < c->n ? &c->items[i] : NULL; }

mtr_corpus_format mtr_corpus_format_of(const mtr_corpus *c) { return c ? c->format : MTR_CORPUS_AUTO; }

void mtr_corpus_destroy(mtr_corpus *c)
{
    if (!c) return;
    arena_free(&c->a);
    free(c->items);
    free(c);
}

/* ---- multiple-choice sets -------------------------------------------------------------------------------- */

struct mtr_mc {
    arena a;
    mtr_mc_item *items; /* (n) */
    size_t n, cap;
};

/* choices from "choices", else Belebele's mc_answer1.., else Global-MMLU's option_a..: borrowed from o */
static int mc_choices(const char **ch, size_t *n, json_t *o, bool *raw, const char *path, size_t line)
{
    *n = 0;
    json_t *arr = json_object_get(o, "choices");
    if (arr && !json_is_null(arr)) {
        if (!json_is_array(arr)) return fail(MTR_EFORMAT, "%s:%zu: \"choices\" must be an array", path, line);
        if (json_array_size(arr) < 2 || json_array_size(arr) > MTR_CORPUS_MAX_CHOICES)
            return fail(MTR_EFORMAT, "%s:%zu: %zu choices (2 to %d allowed)", path, line, json_array_size(arr),
                        MTR_CORPUS_MAX_CHOICES);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            json_t *v = json_array_get(arr, i);
            if (!json_is_string(v)) return fail(MTR_EFORMAT, "%s:%zu: choice %zu is not a string", path, line, i);
            ch[(*n)++] = json_string_value(v);
        }
    } else {
        char key[32];
        for (int style = 0; style < 2 && !*n; style++)
            for (size_t i = 0; i < MTR_CORPUS_MAX_CHOICES; i++) {
                if (style == 0) snprintf(key, sizeof key, "mc_answer%zu", i + 1);
                else snprintf(key, sizeof key, "option_%c", (char)('a' + i));
                json_t *v = json_object_get(o, key);
                if (!v || json_is_null(v)) break;
                if (!json_is_string(v)) return fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be a string", path, line, key);
                ch[(*n)++] = json_string_value(v);
                *raw |= style == 0;
            }
        if (!*n) return fail(MTR_EFORMAT, "%s:%zu: missing \"choices\"", path, line);
        if (*n < 2) return fail(MTR_EFORMAT, "%s:%zu: 1 choice (2 to %d allowed)", path, line, MTR_CORPUS_MAX_CHOICES);
    }
    for (size_t i = 0; i < *n; i++)
        if (is_blank(ch[i], strlen(ch[i]))) return fail(MTR_EFORMAT, "%s:%zu: choice %zu is empty", path, line, i);
    return 0;
}

/* the correct choice from "answer" (index, letter or text) or Belebele's 1-based "correct_answer_num" */
static int mc_answer(size_t *out, json_t *o, const char **ch, size_t n, const char *path, size_t line)
{
    json_t *v = json_object_get(o, "answer");
    const char *key = "answer";
    bool one_based = false;
    if (!v || json_is_null(v)) {
        v = json_object_get(o, "correct_answer_num");
        key = "correct_answer_num";
        one_based = true;
    }
    if (!v || json_is_null(v)) return fail(MTR_EFORMAT, "%s:%zu: missing \"answer\"", path, line);
    if (one_based) {
        long long k = -1;
        if (json_is_integer(v)) k = json_integer_value(v);
        else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            char *e;
            k = is_digit((unsigned char)s[0]) ? strtoll(s, &e, 10) : -1;
            if (k >= 0 && *e) k = -1;
        } else return fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be a number", path, line, key);
        if (k < 1 || (unsigned long long)k > n)
            return fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be 1 to %zu", path, line, key, n);
        *out = (size_t)(k - 1);
        return 0;
    }
    if (json_is_integer(v)) {
        json_int_t k = json_integer_value(v);
        if (k < 0 || (unsigned long long)k >= n)
            return fail(MTR_EFORMAT, "%s:%zu: \"answer\" %" JSON_INTEGER_FORMAT " is not a choice index (0 to %zu)",
                        path, line, k, n - 1);
        *out = (size_t)k;
        return 0;
    }
    if (!json_is_string(v))
        return fail(MTR_EFORMAT, "%s:%zu: \"answer\" must be an index, a letter or the text of a choice", path, line);
    const char *s = json_string_value(v);
    size_t by_text = SIZE_MAX, n_text = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(ch[i], s) == 0) by_text = i, n_text++;
    if (s[0] >= 'A' && s[0] <= 'Z' && !s[1]) {
        size_t k = (size_t)(s[0] - 'A');
        if (k >= n)
            return fail(MTR_EFORMAT, "%s:%zu: \"answer\" \"%s\" but the item has %zu choices (A to %c)", path, line, s,
                        n, (char)('A' + n - 1));
        if (n_text && by_text != k)
            return fail(MTR_EFORMAT, "%s:%zu: \"answer\" \"%s\" is ambiguous: letter of choice %zu, text of choice %zu",
                        path, line, s, k, by_text);
        *out = k;
        return 0;
    }
    if (n_text == 1) {
        *out = by_text;
        return 0;
    }
    if (n_text > 1)
        return fail(MTR_EFORMAT, "%s:%zu: \"answer\" \"%.*s\" is the text of %zu choices", path, line, SHOW, s, n_text);
    return fail(MTR_EFORMAT, "%s:%zu: \"answer\" \"%.*s\" is neither a letter A to %c nor the text of a choice", path,
                line, SHOW, s, (char)('A' + n - 1));
}

/* unit_id, else Belebele's link (+ "#" + question_number) */
static int mc_unit(const char **out, arena *a, json_t *o, bool *raw, const char *path, size_t line)
{
    char num[32], qnum[32];
    const char *u, *link, *q;
    int rc;
    if ((rc = jfield(&u, num, o, "unit_id", true, path, line))) return rc;
    if (u) return key_field(out, a, o, "unit_id", NULL, path, line);
    if ((rc = jfield(&link, num, o, "link", false, path, line)) ||
        (rc = jfield(&q, qnum, o, "question_number", true, path, line)))
        return rc;
    if (!link) return fail(MTR_EFORMAT, "%s:%zu: missing \"unit_id\"", path, line);
    *raw = true;
    size_t k = strlen(link) + (q ? strlen(q) + 1 : 0) + 1;
    char *s = arena_alloc(a, k);
    if (!s) return oom();
    snprintf(s, k, q ? "%s#%s" : "%s", link, q);
    *out = s;
    return check_key(path, line, "unit_id", s);
}

static int mc_jsonl(mtr_mc *m, const char *buf, size_t len, const char *path, const char *file, filt *f)
{
    int rc = 0;
    json_t *o = NULL;
    dupset dups = {0};
    lines it;
    const char *s;
    size_t n;
    lines_init(&it, buf, len);
    while (lines_next(&it, &s, &n)) {
        size_t line = it.line;
        if (is_blank(s, n)) continue;
        if ((rc = parse_object(&o, s, n, path, line))) goto out;
        mtr_mc_item item = {0};
        item.file = file;
        item.line = line;
        bool raw = false;
        char num[32];
        const char *lang, *dataset, *passage, *question, *ch[MTR_CORPUS_MAX_CHOICES];
        if ((rc = mc_unit(&item.unit_id, &m->a, o, &raw, path, line)) ||
            (rc = jfield(&lang, num, o, "lang", false, path, line)) ||
            (!lang && (rc = jfield(&lang, num, o, "dialect", false, path, line))) ||
            (rc = jfield(&dataset, num, o, "dataset", false, path, line)) ||
            (rc = jfield(&passage, num, o, "passage", false, path, line)) ||
            (!passage && (rc = jfield(&passage, num, o, "flores_passage", false, path, line))) ||
            (rc = jfield(&question, num, o, "question", false, path, line)) ||
            (rc = mc_choices(ch, &item.n_choices, o, &raw, path, line)) ||
            (rc = mc_answer(&item.answer, o, ch, item.n_choices, path, line)))
            goto out;
        if (!lang) lang = f->o->lang;
        if (!dataset) dataset = f->o->dataset ? f->o->dataset : raw ? "belebele" : NULL;
        if (!lang || !dataset || !question) {
            rc = fail(MTR_EFORMAT, "%s:%zu: missing \"%s\"", path, line,
                      !lang ? "lang" : !dataset ? "dataset" : "question");
            goto out;
        }
        if ((rc = check_key(path, line, "lang", lang)) || (rc = check_key(path, line, "dataset", dataset)) ||
            (rc = check_text(path, line, "question", question, strlen(question))) ||
            (passage && (rc = check_text(path, line, "passage", passage, strlen(passage)))))
            goto out;
        if (!(item.lang = arena_strdup(&m->a, lang)) || !(item.dataset = arena_strdup(&m->a, dataset))) {
            rc = oom();
            goto out;
        }
        if ((rc = check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset))) goto out;
        if (filt_keep(f, item.lang, item.dataset)) {
            const char **cc = arena_alloc(&m->a, item.n_choices * sizeof *cc);
            if (!cc || !(item.question = arena_strdup(&m->a, question)) ||
                (passage && !(item.passage = arena_strdup(&m->a, passage)))) {
                rc = oom();
                goto out;
            }
            for (size_t i = 0; i < item.n_choices; i++)
                if (!(cc[i] = arena_strdup(&m->a, ch[i]))) {
                    rc = oom();
                    goto out;
                }
            item.choices = cc;
            if ((rc = grow((void **)&m->items, &m->cap, m->n, sizeof *m->items))) goto out;
            m->items[m->n++] = item;
        }
        json_decref(o);
        o = NULL;
    }
out:
    json_decref(o);
    dup_free(&dups);
    return rc;
}

int mtr_mc_load(mtr_mc **out, const char *path, const mtr_corpus_opts *opts)
{
    *out = NULL;
    tl_msg[0] = '\0';
    filt f;
    char *buf = NULL;
    size_t len = 0;
    mtr_corpus_format fmt;
    const char *file;
    mtr_mc *m = calloc(1, sizeof *m);
    int rc = filt_init(&f, opts);
    if (!m && !rc) rc = oom();
    if (rc || (rc = detect(&fmt, path, f.o->format))) goto out;
    if (fmt != MTR_CORPUS_JSONL) {
        rc = fail(MTR_EINVAL, "%s: multiple-choice sets are read from JSONL, not %s", path, format_names[fmt]);
        goto out;
    }
    if (!(file = arena_strdup(&m->a, path))) rc = oom();
    if (rc || (rc = read_all(&buf, &len, path)) || (rc = check_utf8(path, buf, len)) ||
        (rc = mc_jsonl(m, buf, len, path, file, &f)))
        goto out;
    rc = filt_finish(&f, path);
out:
    free(buf);
    filt_free(&f);
    if (rc) {
        mtr_mc_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

size_t mtr_mc_count(const mtr_mc *s) { return s ? s->n : 0; }

const mtr_mc_item *mtr_mc_get(const mtr_mc *s, size_t i) { return s && i < s->n ? &s->items[i] : NULL; }

void mtr_mc_destroy(mtr_mc *s)
{
    if (!s) return;
    arena_free(&s->a);
    free(s->items);
    free(s);
}

/* ---- numbers --------------------------------------------------------------------------------------------- */

/* Normalise sign + a run of digits, ',' and '.' (commas dropped, anything from a second '.' on ignored) into out.
 * MTR_ENOTFOUND without a digit, MTR_EINVAL if it does not fit. */
static int norm_number(char *out, size_t cap, bool neg, const char *s, size_t n)
{
    size_t i = 0, ib = 0, fb = 0;
    char ip[MTR_CORPUS_NUMBER_MAX], fp[MTR_CORPUS_NUMBER_MAX];
    bool digit = false, frac = false;
    for (; i < n; i++) {
        char c = s[i];
        if (c == ',') continue;
        if (c == '.') {
            if (frac) break;
            frac = true;
            continue;
        }
        digit = true;
        if (!frac) {
            if (ib == 0 && c == '0') continue; /* leading zero */
            if (ib + 1 >= sizeof ip) return MTR_EINVAL;
            ip[ib++] = c;
        } else {
            if (fb + 1 >= sizeof fp) return MTR_EINVAL;
            fp[fb++] = c;
        }
    }
    if (!digit) return MTR_ENOTFOUND;
    while (fb && fp[fb - 1] == '0') fb--;
    if (!ib && !fb) neg = false; /* no "-0" */
    size_t need = (neg ? 1 : 0) + (ib ? ib : 1) + (fb ? fb + 1 : 0) + 1;
    if (need > cap) return MTR_EINVAL;
    size_t k = 0;
    if (neg) out[k++] = '-';
    if (ib) memcpy(out + k, ip, ib), k += ib;
    else out[k++] = '0';
    if (fb) {
        out[k++] = '.';
        memcpy(out + k, fp, fb);
        k += fb;
    }
    out[k] = '\0';
    return 0;
}

static bool is_num_char(int c) { return is_digit(c) || c == ',' || c == '.'; }

/* A gold answer: white space, an optional sign, digits with ',' and at most one '.', white space. */
static int parse_gold(char *out, size_t cap, const char *s)
{
    size_t n = strlen(s), b = 0, e = n;
    while (b < e && is_space((unsigned char)s[b])) b++;
    while (e > b && is_space((unsigned char)s[e - 1])) e--;
    bool neg = false;
    if (b < e && (s[b] == '-' || s[b] == '+')) neg = s[b++] == '-';
    size_t dots = 0;
    for (size_t i = b; i < e; i++) {
        if (!is_num_char((unsigned char)s[i])) return MTR_EINVAL;
        dots += s[i] == '.';
    }
    if (dots > 1) return MTR_EINVAL;
    int rc = norm_number(out, cap, neg, s + b, e - b);
    return rc == MTR_ENOTFOUND ? MTR_EINVAL : rc;
}

int mtr_corpus_extract_number(char *out, size_t cap, const char *text)
{
    if (!text) return MTR_ENOTFOUND;
    size_t n = strlen(text), bs = 0, be = 0;
    bool found = false;
    for (size_t i = 0; i < n;) {
        if (!is_num_char((unsigned char)text[i])) {
            i++;
            continue;
        }
        size_t s = i;
        bool digit = false;
        for (; i < n && is_num_char((unsigned char)text[i]); i++) digit |= is_digit((unsigned char)text[i]);
        if (digit) bs = s, be = i, found = true;
    }
    if (!found) return MTR_ENOTFOUND;
    while (be > bs && (text[be - 1] == '.' || text[be - 1] == ',')) be--; /* "... is 42." */
    while (bs < be && (text[bs] == ',' || (text[bs] == '.' && !(bs + 1 < be && is_digit((unsigned char)text[bs + 1])))))
        bs++;
    bool neg = bs > 0 && text[bs - 1] == '-' &&
               !(bs > 1 && (is_digit((unsigned char)text[bs - 2]) || is_alpha((unsigned char)text[bs - 2])));
    return norm_number(out, cap, neg, text + bs, be - bs);
}

bool mtr_corpus_answer_matches(const char *gold, const char *generated)
{
    char g[MTR_CORPUS_NUMBER_MAX], p[MTR_CORPUS_NUMBER_MAX];
    if (!gold || parse_gold(g, sizeof g, gold) != 0) return false;
    if (mtr_corpus_extract_number(p, sizeof p, generated) != 0) return false;
    return strcmp(g, p) == 0;
}

/* ---- generation sets ------------------------------------------------------------------------------------- */

struct mtr_gen {
    arena a;
    mtr_gen_item *items; /* (n) */
    size_t n, cap;
};

/* the gold answer as text: a string, or a JSON number as JSON writes it; checked to be a plain decimal */
static int gen_answer(const char **out, arena *a, json_t *o, const char *path, size_t line)
{
    const char *key = "answer_number";
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) v = json_object_get(o, key = "answer");
    if (!v || json_is_null(v)) return fail(MTR_EFORMAT, "%s:%zu: missing \"answer\"", path, line);
    char *txt = NULL;
    if (json_is_string(v)) *out = arena_strdup(a, json_string_value(v));
    else if (json_is_number(v)) {
        txt = json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
        if (!txt) return oom();
        *out = arena_strdup(a, txt);
        free(txt);
    } else return fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be a number or a string", path, line, key);
    if (!*out) return oom();
    char norm[MTR_CORPUS_NUMBER_MAX];
    if (parse_gold(norm, sizeof norm, *out) != 0)
        return fail(MTR_EFORMAT, "%s:%zu: \"%s\" \"%.*s\" is not a plain decimal number", path, line, key, SHOW, *out);
    return 0;
}

static int gen_push(mtr_gen *g, const mtr_gen_item *it)
{
    int rc = grow((void **)&g->items, &g->cap, g->n, sizeof *g->items);
    if (rc) return rc;
    g->items[g->n++] = *it;
    return 0;
}

static int line_unit(const char **out, arena *a, const char *prefix, size_t line, const char *path)
{
    char unit[64 + MTR_CORPUS_MAX_KEY];
    snprintf(unit, sizeof unit, "%s%zu", prefix ? prefix : "", line);
    int rc = check_key(path, line, "unit_id", unit);
    if (rc) return rc;
    *out = arena_strdup(a, unit);
    return *out ? 0 : oom();
}

static int gen_jsonl(mtr_gen *g, const char *buf, size_t len, const char *path, const char *file, filt *f)
{
    int rc = 0;
    json_t *o = NULL;
    dupset dups = {0};
    lines it;
    const char *s;
    size_t n;
    lines_init(&it, buf, len);
    while (lines_next(&it, &s, &n)) {
        size_t line = it.line;
        if (is_blank(s, n)) continue;
        if ((rc = parse_object(&o, s, n, path, line))) goto out;
        mtr_gen_item item = {0};
        item.file = file;
        item.line = line;
        char num[32];
        const char *u, *question;
        if ((rc = jfield(&u, num, o, "unit_id", true, path, line))) goto out;
        if (u) rc = key_field(&item.unit_id, &g->a, o, "unit_id", NULL, path, line);
        else rc = line_unit(&item.unit_id, &g->a, f->o->unit_prefix, line, path);
        if (rc || (rc = key_field(&item.lang, &g->a, o, "lang", f->o->lang, path, line)) ||
            (rc = key_field(&item.dataset, &g->a, o, "dataset", f->o->dataset, path, line)) ||
            (rc = jfield(&question, num, o, "question", false, path, line)))
            goto out;
        if (!question) {
            rc = fail(MTR_EFORMAT, "%s:%zu: missing \"question\"", path, line);
            goto out;
        }
        if ((rc = check_text(path, line, "question", question, strlen(question))) ||
            (rc = gen_answer(&item.answer, &g->a, o, path, line)) ||
            (rc = check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset)))
            goto out;
        if (filt_keep(f, item.lang, item.dataset)) {
            if (!(item.question = arena_strdup(&g->a, question))) {
                rc = oom();
                goto out;
            }
            if ((rc = gen_push(g, &item))) goto out;
        }
        json_decref(o);
        o = NULL;
    }
out:
    json_decref(o);
    dup_free(&dups);
    return rc;
}

/* lang and dataset from a file name prefix_lang.ext (mgsm_fr.tsv): into the arena */
static int name_parts(const char **lang, const char **dataset, arena *a, const char *path)
{
    const char *b = base_name(path);
    const char *dot = strchr(b, '.');
    size_t stem = dot ? (size_t)(dot - b) : strlen(b);
    const char *us = NULL;
    for (const char *p = b; p < b + stem; p++)
        if (*p == '_') us = p;
    *lang = us ? arena_strndup(a, us + 1, stem - (size_t)(us + 1 - b)) : arena_strndup(a, b, stem);
    *dataset = arena_strndup(a, b, us ? (size_t)(us - b) : stem);
    return *lang && *dataset ? 0 : oom();
}

static int gen_tsv(mtr_gen *g, const char *buf, size_t len, const char *path, const char *file, filt *f)
{
    int rc = 0;
    dupset dups = {0};
    sbuf q = {0};
    span fl[TSV_MAX_COLS];
    tsv_header h;
    lines it;
    const char *s, *flang, *fdataset;
    size_t n;
    if ((rc = name_parts(&flang, &fdataset, &g->a, path))) goto out;
    const char *dlang = f->o->lang ? f->o->lang : flang, *ddataset = f->o->dataset ? f->o->dataset : fdataset;
    lines_init(&it, buf, len);
    bool have;
    while ((have = lines_next(&it, &s, &n)) && !n) {}
    if (!have) {
        rc = fail(MTR_EFORMAT, "%s:1: empty file", path);
        goto out;
    }
    if ((rc = tsv_read_header(&h, s, n, path, it.line))) goto out;
    int cq = tsv_col(&h, "question"), ca = tsv_col(&h, "answer");
    /* MGSM's own files: question<TAB>answer, no header, no escapes */
    bool raw = cq < 0 && h.n == 2;
    if (raw) {
        memset(&h, 0, sizeof h);
        h.n = 2;
        cq = 0, ca = 1;
        it.p = s; /* the first line is data: read it again */
        it.line--;
    } else if (cq < 0 || ca < 0) {
        rc = fail(MTR_EFORMAT, "%s:%zu: the header lacks column \"%s\" (or the file is not MGSM's two columns "
                               "question<TAB>answer)", path, it.line, cq < 0 ? "question" : "answer");
        goto out;
    }
    int cu = raw ? -1 : tsv_col(&h, "unit_id"), cl = raw ? -1 : tsv_col(&h, "lang"),
        cd = raw ? -1 : tsv_col(&h, "dataset");
    while (lines_next(&it, &s, &n)) {
        size_t line = it.line;
        if (!n) continue;
        if ((rc = tsv_row(fl, &h, s, n, path, line))) goto out;
        mtr_gen_item item = {0};
        item.file = file;
        item.line = line;
        if (cu >= 0) rc = tsv_key(&item.unit_id, &g->a, fl, cu, "unit_id", NULL, path, line);
        else rc = line_unit(&item.unit_id, &g->a, f->o->unit_prefix, line, path);
        if (rc || (rc = tsv_key(&item.lang, &g->a, fl, cl, "lang", dlang, path, line)) ||
            (rc = tsv_key(&item.dataset, &g->a, fl, cd, "dataset", ddataset, path, line)))
            goto out;
        if (raw) {
            q.n = 0;
            rc = sb_put(&q, fl[cq].s, fl[cq].n);
        } else rc = tsv_unescape(&q, fl[cq].s, fl[cq].n);
        if (rc || (rc = check_text(path, line, "question", q.p, q.n))) goto out;
        char norm[MTR_CORPUS_NUMBER_MAX];
        if (!(item.answer = arena_strndup(&g->a, fl[ca].s, fl[ca].n))) {
            rc = oom();
            goto out;
        }
        if (parse_gold(norm, sizeof norm, item.answer) != 0) {
            rc = fail(MTR_EFORMAT, "%s:%zu: answer \"%.*s\" is not a plain decimal number", path, line, SHOW,
                      item.answer);
            goto out;
        }
        if ((rc = check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset))) goto out;
        if (filt_keep(f, item.lang, item.dataset)) {
            if (!(item.question = arena_strndup(&g->a, q.p, q.n))) {
                rc = oom();
                goto out;
            }
            if ((rc = gen_push(g, &item))) goto out;
        }
    }
out:
    free(q.p);
    dup_free(&dups);
    return rc;
}

int mtr_gen_load(mtr_gen **out, const char *path, const mtr_corpus_opts *opts)
{
    *out = NULL;
    tl_msg[0] = '\0';
    filt f;
    char *buf = NULL;
    size_t len = 0;
    mtr_corpus_format fmt;
    const char *file;
    mtr_gen *g = calloc(1, sizeof *g);
    int rc = filt_init(&f, opts);
    if (!g && !rc) rc = oom();
    if (rc || (rc = detect(&fmt, path, f.o->format))) goto out;
    if (fmt == MTR_CORPUS_FLORES) {
        rc = fail(MTR_EINVAL, "%s: generation sets are read from JSONL or TSV, not a directory", path);
        goto out;
    }
    if (!(file = arena_strdup(&g->a, path))) rc = oom();
    if (rc || (rc = read_all(&buf, &len, path)) || (rc = check_utf8(path, buf, len))) goto out;
    rc = fmt == MTR_CORPUS_JSONL ? gen_jsonl(g, buf, len, path, file, &f) : gen_tsv(g, buf, len, path, file, &f);
    if (!rc) rc = filt_finish(&f, path);
out:
    free(buf);
    filt_free(&f);
    if (rc) {
        mtr_gen_destroy(g);
        return rc;
    }
    *out = g;
    return 0;
}

size_t mtr_gen_count(const mtr_gen *s) { return s ? s->n : 0; }

const mtr_gen_item *mtr_gen_get(const mtr_gen *s, size_t i) { return s && i < s->n ? &s->items[i] : NULL; }

void mtr_gen_destroy(mtr_gen *s)
{
    if (!s) return;
    arena_free(&s->a);
    free(s->items);
    free(s);
}

/* ---- prompt templates ------------------------------------------------------------------------------------ */

typedef struct {
    const char *name;
    mtr_prompt_kind kind;
    const char *prompt, *choice_line, *continuation; /* choice_line, continuation: mc only */
    const char **stops;                              /* (n_stops): gen only */
    size_t n_stops;
    size_t line; /* where the template starts in its file (0 if not found) */
} tpl;

struct mtr_prompts {
    arena a;
    tpl *t; /* (n) */
    size_t n, cap;
    const char *file;
};

/* which placeholders a template string may use */
typedef enum { SC_MC_PROMPT, SC_CHOICE, SC_GEN_PROMPT } scope;

typedef struct {
    scope sc;
    const mtr_mc_item *mc;   /* NULL for gen, and when only checking names */
    const mtr_gen_item *gen;
    size_t choice;           /* SC_CHOICE: the choice rendered */
    const char *choices;     /* SC_MC_PROMPT: {choices} already rendered */
} rctx;

static bool name_is(const char *s, size_t n, const char *want) { return strlen(want) == n && memcmp(s, want, n) == 0; }

/* The value of placeholder s[0..n) (tmp holds short generated values). 0 with *val; MTR_EFORMAT for a name the
 * scope does not know; MTR_EINVAL when the item has no value (message set by the caller from *why). */
static int resolve(const char **val, char tmp[32], const char **why, const char *s, size_t n, const rctx *c)
{
    bool check = !c->mc && !c->gen;
    *val = "";
    *why = NULL;
    if (c->sc == SC_CHOICE) {
        if (!name_is(s, n, "letter") && !name_is(s, n, "choice") && !name_is(s, n, "number")) return MTR_EFORMAT;
        if (check) return 0;
        if (s[0] == 'c') {
            *val = c->mc->choices[c->choice];
            return 0;
        }
        if (s[0] == 'l') snprintf(tmp, 32, "%c", 'A' + (int)c->choice);
        else snprintf(tmp, 32, "%zu", c->choice + 1);
        *val = tmp;
        return 0;
    }
    if (name_is(s, n, "question")) {
        if (!check) *val = c->mc ? c->mc->question : c->gen->question;
        return 0;
    }
    if (name_is(s, n, "unit_id") || name_is(s, n, "lang") || name_is(s, n, "dataset")) {
        if (check) return 0;
        const char *u = c->mc ? c->mc->unit_id : c->gen->unit_id, *l = c->mc ? c->mc->lang : c->gen->lang,
                   *d = c->mc ? c->mc->dataset : c->gen->dataset;
        *val = s[0] == 'u' ? u : s[0] == 'l' ? l : d;
        return 0;
    }
    if (c->sc != SC_MC_PROMPT) return MTR_EFORMAT;
    if (name_is(s, n, "passage")) {
        if (check) return 0;
        if (!c->mc->passage) {
            *why = "the item has no passage";
            return MTR_EINVAL;
        }
        *val = c->mc->passage;
        return 0;
    }
    if (name_is(s, n, "choices")) {
        if (!check) *val = c->choices;
        return 0;
    }
    if (name_is(s, n, "n_choices")) {
        if (check) return 0;
        snprintf(tmp, 32, "%zu", c->mc->n_choices);
        *val = tmp;
        return 0;
    }
    if (n > 7 && memcmp(s, "choice_", 7) == 0 && n <= 9) { /* choice_0 .. choice_25, no leading zeros */
        size_t k = 0;
        for (size_t i = 7; i < n; i++) {
            if (!is_digit((unsigned char)s[i]) || (i == 7 && s[i] == '0' && n > 8)) return MTR_EFORMAT;
            k = k * 10 + (size_t)(s[i] - '0');
        }
        if (k >= MTR_CORPUS_MAX_CHOICES) return MTR_EFORMAT;
        if (check) return 0;
        if (k >= c->mc->n_choices) {
            *why = "the item has fewer choices";
            return MTR_EINVAL;
        }
        *val = c->mc->choices[k];
        return 0;
    }
    return MTR_EFORMAT;
}

/* Substitute the placeholders of t into out (NULL: check names only). who prefixes error details ("prompts.json:3:
 * template \"mmlu\""), field names the template string. */
static int expand(sbuf *out, const char *t, const rctx *c, const char *who, const char *field)
{
    int rc = 0;
    for (const char *p = t; *p && !rc;) {
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            if (out) rc = sb_put(out, p, 1);
            p += 2;
            continue;
        }
        if (*p != '{') {
            size_t k = strcspn(p, "{}");
            if (!k) k = 1; /* a lone '}' is literal */
            if (out) rc = sb_put(out, p, k);
            p += k;
            continue;
        }
        const char *s = p + 1;
        size_t n = 0;
        while (is_alpha((unsigned char)s[n]) || is_digit((unsigned char)s[n]) || s[n] == '_') n++;
        if (s[n] != '}' || !n)
            return fail(MTR_EFORMAT, "%s: \"%s\" has a '{' that opens no placeholder (write {{ for a brace) at "
                                     "\"%.20s\"", who, field, p);
        const char *val, *why;
        char tmp[32];
        rc = resolve(&val, tmp, &why, s, n, c);
        if (rc == MTR_EFORMAT)
            return fail(MTR_EFORMAT, "%s: unknown placeholder {%.*s} in \"%s\"", who, (int)(n < SHOW ? n : SHOW), s,
                        field);
        if (rc) return fail(rc, "%s: \"%s\" uses {%.*s} but %s", who, field, (int)n, s, why);
        if (out) rc = sb_puts(out, val);
        p = s + n + 1;
    }
    return rc;
}

/* 1-based line of "name": in the file text (a key of the templates object), 0 if not found */
static size_t key_line(const char *text, size_t len, const char *name)
{
    size_t k = strlen(name);
    for (size_t i = 0; i + k + 2 <= len; i++) {
        if (text[i] != '"' || (i && text[i - 1] == '\\') || memcmp(text + i + 1, name, k) != 0 ||
            text[i + k + 1] != '"')
            continue;
        size_t j = i + k + 2;
        while (j < len && is_space((unsigned char)text[j])) j++;
        if (j < len && text[j] == ':') {
            size_t line = 1;
            for (size_t m = 0; m < i; m++) line += text[m] == '\n';
            return line;
        }
    }
    return 0;
}

static int tpl_string(const char **out, arena *a, json_t *v, const char *who, const char *key)
{
    if (!json_is_string(v)) return fail(MTR_EFORMAT, "%s: \"%s\" must be a string", who, key);
    *out = arena_strdup(a, json_string_value(v));
    return *out ? 0 : oom();
}

static int tpl_parse(tpl *t, arena *a, const char *name, json_t *o, const char *who)
{
    memset(t, 0, sizeof *t);
    if (!(t->name = arena_strdup(a, name))) return oom();
    if (!json_is_object(o)) return fail(MTR_EFORMAT, "%s: not a JSON object", who);
    json_t *kind = json_object_get(o, "kind");
    if (!json_is_string(kind) || (strcmp(json_string_value(kind), "mc") && strcmp(json_string_value(kind), "gen")))
        return fail(MTR_EFORMAT, "%s: \"kind\" must be \"mc\" or \"gen\"", who);
    t->kind = json_string_value(kind)[0] == 'm' ? MTR_PROMPT_MC : MTR_PROMPT_GEN;
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(o, key, v) {
        bool mc = t->kind == MTR_PROMPT_MC;
        if (strcmp(key, "kind") == 0) continue;
        if (strcmp(key, "prompt") == 0) rc = tpl_string(&t->prompt, a, v, who, key);
        else if (mc && strcmp(key, "choice_line") == 0) rc = tpl_string(&t->choice_line, a, v, who, key);
        else if (mc && strcmp(key, "continuation") == 0) rc = tpl_string(&t->continuation, a, v, who, key);
        else if (!mc && strcmp(key, "stop") == 0) {
            if (!json_is_array(v)) return fail(MTR_EFORMAT, "%s: \"stop\" must be an array of strings", who);
            t->n_stops = json_array_size(v);
            if (t->n_stops && !(t->stops = arena_alloc(a, t->n_stops * sizeof *t->stops))) return oom();
            for (size_t i = 0; i < t->n_stops; i++) {
                json_t *e = json_array_get(v, i);
                if (!json_is_string(e) || !json_string_length(e))
                    return fail(MTR_EFORMAT, "%s: \"stop\" must be an array of non-empty strings", who);
                if (!(t->stops[i] = arena_strdup(a, json_string_value(e)))) return oom();
            }
        } else return fail(MTR_EFORMAT, "%s: unknown key \"%.*s\" for a %s template", who, SHOW, key,
                           mc ? "mc" : "gen");
        if (rc) return rc;
    }
    if (!t->prompt) return fail(MTR_EFORMAT, "%s: missing \"prompt\"", who);
    if (t->kind == MTR_PROMPT_MC) {
        if (!t->choice_line) t->choice_line = "{letter}. {choice}";
        if (!t->continuation) t->continuation = " {letter}";
    }
    rctx c = {t->kind == MTR_PROMPT_MC ? SC_MC_PROMPT : SC_GEN_PROMPT, NULL, NULL, 0, NULL};
    if ((rc = expand(NULL, t->prompt, &c, who, "prompt"))) return rc;
    if (t->kind == MTR_PROMPT_MC) {
        c.sc = SC_CHOICE;
        if ((rc = expand(NULL, t->choice_line, &c, who, "choice_line")) ||
            (rc = expand(NULL, t->continuation, &c, who, "continuation")))
            return rc;
    }
    return 0;
}

int mtr_prompts_load_buffer(mtr_prompts **out, const char *json, size_t len, const char *name)
{
    *out = NULL;
    tl_msg[0] = '\0';
    if (!name) name = "prompts";
    json_error_t je;
    json_t *root = NULL;
    mtr_prompts *p = calloc(1, sizeof *p);
    int rc = 0;
    if (!p || !(p->file = arena_strdup(&p->a, name))) {
        rc = oom();
        goto out;
    }
    if ((rc = check_utf8(name, json, len))) goto out;
    if (!(root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je))) {
        rc = fail(MTR_EFORMAT, "%s:%d: not JSON: %s (column %d)", name, je.line, je.text, je.column);
        goto out;
    }
    json_t *ts = json_object_get(root, "templates");
    if (!json_is_object(ts)) {
        rc = fail(MTR_EFORMAT, "%s:1: no \"templates\" object", name);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(ts, key, v) {
        char who[512];
        size_t line = key_line(json, len, key);
        snprintf(who, sizeof who, "%s:%zu: template \"%.*s\"", name, line, SHOW, key);
        if ((rc = grow((void **)&p->t, &p->cap, p->n, sizeof *p->t)) ||
            (rc = tpl_parse(&p->t[p->n], &p->a, key, v, who)))
            goto out;
        p->t[p->n++].line = line;
    }
    if (!p->n) rc = fail(MTR_EFORMAT, "%s:1: no templates", name);
out:
    json_decref(root);
    if (rc) {
        mtr_prompts_destroy(p);
        return rc;
    }
    *out = p;
    return 0;
}

int mtr_prompts_load(mtr_prompts **out, const char *path)
{
    *out = NULL;
    char *buf = NULL;
    size_t len;
    int rc = read_all(&buf, &len, path);
    if (!rc) rc = mtr_prompts_load_buffer(out, buf, len, path);
    free(buf);
    return rc;
}

void mtr_prompts_destroy(mtr_prompts *p)
{
    if (!p) return;
    arena_free(&p->a);
    free(p->t);
    free(p);
}

size_t mtr_prompts_count(const mtr_prompts *p) { return p ? p->n : 0; }

const char *mtr_prompts_name(const mtr_prompts *p, size_t i) { return p && i < p->n ? p->t[i].name : NULL; }

static const tpl *find_tpl(const mtr_prompts *p, const char *name)
{
    for (size_t i = 0; p && name && i < p->n; i++)
        if (strcmp(p->t[i].name, name) == 0) return &p->t[i];
    fail(MTR_ENOTFOUND, "%s: no template \"%.*s\"", p ? p->file : "prompts", SHOW, name ? name : "");
    return NULL;
}

int mtr_prompts_kind(const mtr_prompts *p, const char *name)
{
    const tpl *t = find_tpl(p, name);
    return t ? (int)t->kind : MTR_ENOTFOUND;
}

int mtr_prompts_stops(const char *const **out, size_t *n, const mtr_prompts *p, const char *name)
{
    *out = NULL;
    *n = 0;
    const tpl *t = find_tpl(p, name);
    if (!t) return MTR_ENOTFOUND;
    if (t->kind != MTR_PROMPT_GEN)
        return fail(MTR_EINVAL, "%s:%zu: template \"%s\" is not a generation template", p->file, t->line, t->name);
    *out = t->stops;
    *n = t->n_stops;
    return 0;
}

void mtr_prompt_mc_free(mtr_prompt_mc *m)
{
    if (!m) return;
    free(m->prompt);
    for (size_t i = 0; i < m->n_continuations; i++) free(m->continuations[i]);
    free(m->continuations);
    memset(m, 0, sizeof *m);
}

int mtr_prompt_render_mc(mtr_prompt_mc *out, const mtr_prompts *p, const char *name, const mtr_mc_item *item)
{
    memset(out, 0, sizeof *out);
    tl_msg[0] = '\0';
    sbuf choices = {0}, b = {0};
    int rc = 0;
    const tpl *t = find_tpl(p, name);
    if (!t) return MTR_ENOTFOUND;
    char who[512];
    snprintf(who, sizeof who, "template \"%.*s\" (%s:%zu) on %s:%zu", SHOW, t->name, p->file, t->line,
             item->file ? item->file : "item", item->line);
    if (t->kind != MTR_PROMPT_MC) return fail(MTR_EINVAL, "%s: not a multiple-choice template", who);
    rctx c = {SC_CHOICE, item, NULL, 0, NULL};
    if ((rc = sb_put(&choices, "", 0))) goto out;
    for (size_t i = 0; i < item->n_choices; i++) {
        c.choice = i;
        if ((i && (rc = sb_puts(&choices, "\n"))) || (rc = expand(&choices, t->choice_line, &c, who, "choice_line")))
            goto out;
    }
    if (!(out->continuations = calloc(item->n_choices, sizeof *out->continuations))) {
        rc = oom();
        goto out;
    }
    for (size_t i = 0; i < item->n_choices; i++) {
        c.choice = i;
        b = (sbuf){0};
        if ((rc = sb_put(&b, "", 0)) || (rc = expand(&b, t->continuation, &c, who, "continuation"))) goto out;
        out->continuations[out->n_continuations++] = b.p;
        b = (sbuf){0};
    }
    c.sc = SC_MC_PROMPT;
    c.choices = choices.p;
    if ((rc = sb_put(&b, "", 0)) || (rc = expand(&b, t->prompt, &c, who, "prompt"))) goto out;
    out->prompt = b.p;
    b = (sbuf){0};
out:
    free(b.p);
    free(choices.p);
    if (rc) mtr_prompt_mc_free(out);
    return rc;
}

int mtr_prompt_render_gen(char **out, const mtr_prompts *p, const char *name, const mtr_gen_item *item)
{
    *out = NULL;
    tl_msg[0] = '\0';
    const tpl *t = find_tpl(p, name);
    if (!t) return MTR_ENOTFOUND;
    char who[512];
    snprintf(who, sizeof who, "template \"%.*s\" (%s:%zu) on %s:%zu", SHOW, t->name, p->file, t->line,
             item->file ? item->file : "item", item->line);
    if (t->kind != MTR_PROMPT_GEN) return fail(MTR_EINVAL, "%s: not a generation template", who);
    sbuf b = {0};
    rctx c = {SC_GEN_PROMPT, NULL, item, 0, NULL};
    int rc = sb_put(&b, "", 0);
    if (rc || (rc = expand(&b, t->prompt, &c, who, "prompt"))) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    return 0;
}
