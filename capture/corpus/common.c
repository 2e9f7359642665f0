/* common.c — the parsing helpers every corpus reader shares (corpus_internal.h): format names, the string
 * arena, file reads checked for UTF-8, line iteration, field checks, filters, duplicates, JSON fields, TSV rows. */
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

#include "corpus_internal.h"

int corp_oom(void) { return mtr_fail(MTR_ENOMEM, "out of memory"); }

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
    return mtr_fail(MTR_EINVAL, "unknown corpus format \"%.*s\" (auto, jsonl, flores, tsv)", SHOW, s ? s : "");
}

/* ---- arena: every string of a loaded object lives here, freed at once ------------------------------------ */



void *corp_arena_alloc(arena *a, size_t n)
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

char *corp_arena_strndup(arena *a, const char *s, size_t n)
{
    char *p = corp_arena_alloc(a, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

char *corp_arena_strdup(arena *a, const char *s) { return corp_arena_strndup(a, s, strlen(s)); }

void corp_arena_free(arena *a)
{
    for (blk *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
}

/* room for one more element in a growable array */
int corp_grow(void **p, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 64;
    void *q = realloc(*p, nc * elem);
    if (!q) return corp_oom();
    *p = q;
    *cap = nc;
    return 0;
}

/* ---- growable string ------------------------------------------------------------------------------------- */


/* ---- ASCII classes (locale-free) ------------------------------------------------------------------------- */

bool corp_is_digit(int c) { return c >= '0' && c <= '9'; }
bool corp_is_alpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool corp_is_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

bool corp_is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!corp_is_space((unsigned char)s[i])) return false;
    return true;
}

/* ---- files ----------------------------------------------------------------------------------------------- */

int corp_check_utf8(const char *path, const char *buf, size_t len)
{
    size_t bad = mtr_utf8_valid_prefix(buf, len, false);
    if (bad == len) return 0;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < bad; i++) {
        if (buf[i] == '\n') line++, col = 1;
        else col++;
    }
    if (buf[bad] == '\0')
        return mtr_fail(MTR_EFORMAT, "%s:%zu: NUL byte at byte %zu (column %zu)", path, line, bad, col);
    return mtr_fail(MTR_EFORMAT, "%s:%zu: invalid UTF-8 at byte %zu (column %zu)", path, line, bad, col);
}


void corp_lines_init(lines *it, const char *buf, size_t len)
{
    it->p = buf;
    it->end = buf + len;
    it->line = 0;
    if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0) it->p += 3; /* byte-order mark */
}

bool corp_lines_next(lines *it, const char **s, size_t *n)
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

const char *corp_base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ---- field checks ---------------------------------------------------------------------------------------- */

/* unit_id, lang and dataset key the trace and the TSV tables of moetrace-stats: short, no control characters */
int corp_check_key(const char *path, size_t line, const char *field, const char *v)
{
    size_t n = strlen(v);
    if (n == 0) return mtr_fail(MTR_EFORMAT, "%s:%zu: empty \"%s\"", path, line, field);
    if (n > MTR_CORPUS_MAX_KEY)
        return mtr_fail(MTR_EFORMAT, "%s:%zu: \"%s\" is %zu bytes (at most %d)", path, line, field, n,
                    MTR_CORPUS_MAX_KEY);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            return mtr_fail(MTR_EFORMAT, "%s:%zu: \"%s\" holds a control character", path, line, field);
    return 0;
}

int corp_check_text(const char *path, size_t line, const char *field, const char *v, size_t n)
{
    if (corp_is_blank(v, n)) return mtr_fail(MTR_EFORMAT, "%s:%zu: empty \"%s\"", path, line, field);
    return 0;
}

/* ---- filters --------------------------------------------------------------------------------------------- */


/* comma-separated, empty entries dropped */
static int strlist_parse(strlist *l, const char *s)
{
    memset(l, 0, sizeof *l);
    if (!s) return 0;
    size_t max = 1;
    for (const char *p = s; *p; p++) max += *p == ',';
    l->v = calloc(max, sizeof *l->v);
    l->seen = calloc(max, sizeof *l->seen);
    if (!l->v || !l->seen) return corp_oom();
    for (const char *p = s;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n) {
            l->v[l->n] = strndup(p, n);
            if (!l->v[l->n]) return corp_oom();
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


static const mtr_corpus_opts default_opts = MTR_CORPUS_OPTS_INIT;

int corp_filt_init(filt *f, const mtr_corpus_opts *o)
{
    memset(f, 0, sizeof *f);
    f->o = o ? o : &default_opts;
    int rc;
    if ((rc = strlist_parse(&f->langs, f->o->langs)) || (rc = strlist_parse(&f->datasets, f->o->datasets)) ||
        (rc = strlist_parse(&f->require, f->o->require_lang)))
        return rc;
    return 0;
}

void corp_filt_free(filt *f)
{
    strlist_free(&f->langs);
    strlist_free(&f->datasets);
    strlist_free(&f->require);
}

/* Whether an item that passed validation is kept: both filters (each marks what it saw), then the limit. */
bool corp_filt_keep(filt *f, const char *lang, const char *dataset)
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
int corp_filt_finish(const filt *f, const char *path)
{
    for (size_t i = 0; i < f->langs.n; i++)
        if (!f->langs.seen[i])
            return mtr_fail(MTR_ENOTFOUND, "%s: no item has lang \"%.*s\" (asked for by the language filter)", path,
                        SHOW, f->langs.v[i]);
    for (size_t i = 0; i < f->datasets.n; i++)
        if (!f->datasets.seen[i])
            return mtr_fail(MTR_ENOTFOUND, "%s: no item has dataset \"%.*s\" (asked for by the dataset filter)", path,
                        SHOW, f->datasets.v[i]);
    if (f->require.n) {
        for (size_t i = 0; i < f->require.n; i++)
            if (f->require.seen[i]) return 0;
        return mtr_fail(MTR_ENOTFOUND, "%s: none of the required languages (%.*s) is among the items kept", path, 200,
                    f->o->require_lang);
    }
    return 0;
}

/* ---- duplicate (unit_id, lang, dataset) ------------------------------------------------------------------ */



static uint64_t fnv(uint64_t h, const char *s)
{
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return (h ^ 0x1f) * 0x100000001b3ULL; /* a separator no key holds (control characters are refused) */
}

void corp_dup_free(dupset *s)
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
        if (!slot) return corp_oom();
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
    int rc = corp_grow((void **)&s->e, &s->cap, s->n, sizeof *s->e);
    if (rc) return rc;
    s->e[s->n] = (dkey){u, l, d, line, h};
    s->slot[j] = ++s->n;
    return 0;
}

int corp_check_dup(dupset *s, const char *path, size_t line, const char *u, const char *l, const char *d)
{
    size_t prev = 0;
    int r = dup_add(s, u, l, d, line, &prev);
    if (r < 0) return r;
    if (r == 1)
        return mtr_fail(MTR_EDUP, "%s:%zu: duplicate unit \"%.*s\" (lang \"%.*s\", dataset \"%.*s\"): also on line %zu",
                    path, line, SHOW, u, SHOW, l, SHOW, d, prev);
    return 0;
}

/* ---- JSON fields ----------------------------------------------------------------------------------------- */

/* Parse one line as a JSON object. */
int corp_parse_object(json_t **out, const char *s, size_t n, const char *path, size_t line)
{
    json_error_t je;
    *out = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
    if (!*out) return mtr_fail(MTR_EFORMAT, "%s:%zu: not JSON: %s (column %d)", path, line, je.text, je.column);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return mtr_fail(MTR_EFORMAT, "%s:%zu: not a JSON object", path, line);
    }
    return 0;
}

/* *out = the string member key (borrowed from o), NULL when absent or null. int_ok: an integer is accepted too
 * and written as decimal text into num. */
int corp_jfield(const char **out, char num[32], json_t *o, const char *key, bool int_ok, const char *path,
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
    return mtr_fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be a string%s", path, line, key, int_ok ? " or an integer" : "");
}

/* A required key field: the member, else dflt, else "missing"; checked and copied into the arena. Only unit_id
 * may be an integer. */
int corp_key_field(const char **out, arena *a, json_t *o, const char *key, const char *dflt, const char *path,
                     size_t line)
{
    char num[32];
    const char *v;
    int rc = corp_jfield(&v, num, o, key, strcmp(key, "unit_id") == 0, path, line);
    if (rc) return rc;
    if (!v) v = dflt;
    if (!v) return mtr_fail(MTR_EFORMAT, "%s:%zu: missing \"%s\"", path, line, key);
    if ((rc = corp_check_key(path, line, key, v))) return rc;
    *out = corp_arena_strdup(a, v);
    return *out ? 0 : corp_oom();
}

/* ---- format detection ------------------------------------------------------------------------------------ */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

int corp_detect(mtr_corpus_format *out, const char *path, mtr_corpus_format forced)
{
    struct stat st;
    if (!path) return mtr_fail(MTR_EINVAL, "no corpus path");
    if ((unsigned)forced >= N_FORMATS) return mtr_fail(MTR_EINVAL, "%s: unknown corpus format %d", path, (int)forced);
    if (stat(path, &st) != 0)
        return errno == ENOENT ? mtr_fail(MTR_ENOTFOUND, "%s: no such file or directory", path)
                               : mtr_fail(MTR_EIO, "%s: %s", path, strerror(errno));
    bool dir = S_ISDIR(st.st_mode);
    if (forced != MTR_CORPUS_AUTO) {
        if (dir != (forced == MTR_CORPUS_FLORES))
            return mtr_fail(MTR_EINVAL, "%s: %s, but the format asked for is %s", path,
                        dir ? "a directory" : "not a directory", format_names[forced]);
        *out = forced;
        return 0;
    }
    if (dir) *out = MTR_CORPUS_FLORES;
    else if (ends_with(path, ".jsonl") || ends_with(path, ".json")) *out = MTR_CORPUS_JSONL;
    else if (ends_with(path, ".tsv")) *out = MTR_CORPUS_TSV;
    else
        return mtr_fail(MTR_EINVAL, "%s: cannot tell the format from the name (*.jsonl, *.json, *.tsv or a directory); "
                                "name it", path);
    return 0;
}

/* ---- TSV rows -------------------------------------------------------------------------------------------- */


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
int corp_tsv_unescape(sbuf *b, const char *s, size_t n)
{
    b->n = 0;
    int rc = mtr_buf_put(b, "", 0);
    for (size_t i = 0; !rc && i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n && (s[i + 1] == 't' || s[i + 1] == 'n' || s[i + 1] == '\\')) {
            c = s[i + 1] == 't' ? '\t' : s[i + 1] == 'n' ? '\n' : '\\';
            i++;
        }
        rc = mtr_buf_put(b, &c, 1);
    }
    return rc;
}



int corp_tsv_read_header(tsv_header *h, const char *s, size_t n, const char *path, size_t line)
{
    h->n = split_tabs(h->f, TSV_MAX_COLS, s, n);
    if (h->n > TSV_MAX_COLS) return mtr_fail(MTR_EFORMAT, "%s:%zu: more than %d columns", path, line, TSV_MAX_COLS);
    for (size_t i = 0; i < h->n; i++)
        for (size_t j = 0; j < i; j++)
            if (h->f[i].n == h->f[j].n && memcmp(h->f[i].s, h->f[j].s, h->f[i].n) == 0)
                return mtr_fail(MTR_EFORMAT, "%s:%zu: column \"%.*s\" twice in the header", path, line,
                            (int)(h->f[i].n < SHOW ? h->f[i].n : SHOW), h->f[i].s);
    return 0;
}

/* index of column name, or -1 */
int corp_tsv_col(const tsv_header *h, const char *name)
{
    size_t k = strlen(name);
    for (size_t i = 0; i < h->n; i++)
        if (h->f[i].n == k && memcmp(h->f[i].s, name, k) == 0) return (int)i;
    return -1;
}

int corp_tsv_row(span *f, const tsv_header *h, const char *s, size_t n, const char *path, size_t line)
{
    size_t k = split_tabs(f, h->n, s, n);
    if (k != h->n)
        return mtr_fail(MTR_EFORMAT, "%s:%zu: %s%zu fields, the header has %zu", path, line, k > h->n ? "more than " : "",
                    k > h->n ? h->n : k, h->n);
    return 0;
}

/* A key field of a TSV row, checked and copied; an absent column (col < 0) takes dflt. */
int corp_tsv_key(const char **out, arena *a, const span *f, int col, const char *name, const char *dflt,
                   const char *path, size_t line)
{
    if (col < 0 && !dflt) return mtr_fail(MTR_EFORMAT, "%s:%zu: no \"%s\" column and no default", path, line, name);
    *out = col >= 0 ? corp_arena_strndup(a, f[col].s, f[col].n) : corp_arena_strdup(a, dflt);
    if (!*out) return corp_oom();
    return corp_check_key(path, line, name, *out);
}
