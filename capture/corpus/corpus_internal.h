/* corpus_internal.h — the parsing helpers shared by the files of libmtr_corpus (capture/corpus/): an arena for
 * the strings of a loaded object, growable strings, whole-file reads checked for UTF-8, line iteration, field
 * checks, language/dataset filters, duplicate detection, JSON fields, format detection and TSV rows. Not installed. */
#ifndef MTR_CORPUS_INTERNAL_H
#define MTR_CORPUS_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mtr_corpus.h"
#include "mtr_util.h"

/* corpus files are read whole; none may be larger than this */
#define CORPUS_MAX_FILE ((size_t)1 << 32)

#define ARENA_BLOCK ((size_t)1 << 20)
#define TSV_MAX_COLS 64
#define SHOW 80 /* bytes of a user string quoted in an error detail */

typedef struct blk {
    struct blk *next;
    size_t used, cap;
} blk;

typedef struct {
    blk *head;
} arena;

typedef mtr_buf sbuf; /* growable strings: libmoetrace's mtr_buf */

/* Line iterator: lines without '\n' and one '\r' before it; a final line without '\n' counts, an empty one after
 * the last '\n' does not. */
typedef struct {
    const char *p, *end;
    size_t line; /* 1-based number of the line last returned */
} lines;

typedef struct {
    char **v;
    bool *seen;
    size_t n;
} strlist;

typedef struct {
    const mtr_corpus_opts *o;
    strlist langs, datasets, require;
    size_t kept;
} filt;

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

typedef struct {
    const char *s;
    size_t n;
} span;

typedef struct {
    span f[TSV_MAX_COLS];
    size_t n;
} tsv_header;

void *corp_arena_alloc(arena *a, size_t n);
void corp_arena_free(arena *a);
char *corp_arena_strdup(arena *a, const char *s);
char *corp_arena_strndup(arena *a, const char *s, size_t n);
int corp_check_dup(dupset *s, const char *path, size_t line, const char *u, const char *l, const char *d);
int corp_check_key(const char *path, size_t line, const char *field, const char *v);
int corp_check_text(const char *path, size_t line, const char *field, const char *v, size_t n);
int corp_check_utf8(const char *path, const char *buf, size_t len);
int corp_detect(mtr_corpus_format *out, const char *path, mtr_corpus_format forced);
void corp_dup_free(dupset *s);
int corp_filt_finish(const filt *f, const char *path);
void corp_filt_free(filt *f);
int corp_filt_init(filt *f, const mtr_corpus_opts *o);
bool corp_filt_keep(filt *f, const char *lang, const char *dataset);
int corp_grow(void **p, size_t *cap, size_t n, size_t elem);
bool corp_is_alpha(int c);
bool corp_is_blank(const char *s, size_t n);
bool corp_is_digit(int c);
bool corp_is_space(int c);
int corp_jfield(const char **out, char num[32], json_t *o, const char *key, bool int_ok, const char *path, size_t line);
int corp_key_field(const char **out, arena *a, json_t *o, const char *key, const char *dflt, const char *path, size_t line);
void corp_lines_init(lines *it, const char *buf, size_t len);
bool corp_lines_next(lines *it, const char **s, size_t *n);
int corp_parse_gold(char *out, size_t cap, const char *s);
int corp_parse_object(json_t **out, const char *s, size_t n, const char *path, size_t line);
int corp_tsv_col(const tsv_header *h, const char *name);
int corp_tsv_key(const char **out, arena *a, const span *f, int col, const char *name, const char *dflt, const char *path, size_t line);
int corp_tsv_read_header(tsv_header *h, const char *s, size_t n, const char *path, size_t line);
int corp_tsv_row(span *f, const tsv_header *h, const char *s, size_t n, const char *path, size_t line);
int corp_tsv_unescape(sbuf *b, const char *s, size_t n);
/* Record MTR_ENOMEM ("out of memory") and return it. */
int corp_oom(void);
/* The last component of a path (borrowed from path). */
const char *corp_base_name(const char *path);

#endif
