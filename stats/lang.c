/* lang.c — the language table (config/languages.tsv) and normalisation of language codes to FLORES-200 codes,
 * the canonical form in traces and tables (docs/ARCHITECTURE.md §2 `lang`). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "stats_internal.h"

void mtr_langs_free(mtr_langs *t)
{
    if (!t) return;
    free(t->v);
    free(t);
}

static int copy_field(char *dst, size_t cap, const char *src, const mtr_tsv *f, size_t row, const char *what)
{
    size_t n = strlen(src);
    if (n == 0 || n >= cap)
        return mtr_fail(MTR_EFORMAT, "%s:%zu: %s '%s' is empty or longer than %zu bytes", f->path,
                              f->line[row], what, src, cap - 1);
    memcpy(dst, src, n + 1);
    return 0;
}

int mtr_langs_load(mtr_langs **out, const char *path)
{
    static const char *const need[] = {"flores", "iso639_3", "bcp47", "name", "script"};
    int rc = 0, col[5];
    mtr_tsv *f = NULL;
    mtr_langs *t = NULL;
    *out = NULL;
    if ((rc = mtr_tsv_read(&f, path))) return rc;
    for (int i = 0; i < 5; i++)
        if ((col[i] = mtr_tsv_col(f, need[i])) < 0) {
            rc = mtr_fail(MTR_EFORMAT, "%s: no column '%s'", path, need[i]);
            goto out_free;
        }
    t = calloc(1, sizeof *t);
    if (!t || !(t->v = calloc(f->n_rows + 1, sizeof *t->v))) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    for (size_t r = 0; r < f->n_rows; r++) {
        char **c = f->cells + r * f->n_cols;
        mtr_lang *l = &t->v[r];
        if ((rc = copy_field(l->flores, sizeof l->flores, c[col[0]], f, r, "FLORES code")) ||
            (rc = copy_field(l->iso3, sizeof l->iso3, c[col[1]], f, r, "ISO 639-3 code")) ||
            (rc = copy_field(l->bcp47, sizeof l->bcp47, c[col[2]], f, r, "BCP-47 tag")) ||
            (rc = copy_field(l->name, sizeof l->name, c[col[3]], f, r, "name")) ||
            (rc = copy_field(l->script, sizeof l->script, c[col[4]], f, r, "script")))
            goto out_free;
        const char *us = strchr(l->flores, '_');
        if (!us || us == l->flores || strlen(us + 1) != 4) {
            rc = mtr_fail(MTR_EFORMAT, "%s:%zu: '%s' is not a FLORES-200 code (xxx_Scrp)", path, f->line[r],
                                l->flores);
            goto out_free;
        }
        for (size_t k = 0; k < r; k++)
            if (strcmp(t->v[k].flores, l->flores) == 0) {
                rc = mtr_fail(MTR_EFORMAT, "%s:%zu: %s listed twice", path, f->line[r], l->flores);
                goto out_free;
            }
        t->n++;
    }
    *out = t;
    t = NULL;
out_free:
    mtr_langs_free(t);
    mtr_tsv_free(f);
    return rc;
}

/* case-insensitive comparison that treats '-' and '_' as the same character */
static bool same_code(const char *a, const char *b)
{
    for (;; a++, b++) {
        int ca = *a == '-' ? '_' : tolower((unsigned char)*a);
        int cb = *b == '-' ? '_' : tolower((unsigned char)*b);
        if (ca != cb) return false;
        if (!ca) return true;
    }
}

int mtr_langs_normalize(const char **out, const mtr_langs *t, const char *code)
{
    *out = NULL;
    if (!code || !*code) return mtr_fail(MTR_ENOTFOUND, "empty language code");
    for (size_t i = 0; i < t->n; i++)
        if (same_code(t->v[i].flores, code)) return (*out = t->v[i].flores, 0);
    for (size_t i = 0; i < t->n; i++)
        if (same_code(t->v[i].bcp47, code)) return (*out = t->v[i].flores, 0);
    for (size_t i = 0; i < t->n; i++)
        if (strcasecmp(t->v[i].iso3, code) == 0) return (*out = t->v[i].flores, 0);
    for (size_t i = 0; i < t->n; i++)
        if (strcasecmp(t->v[i].name, code) == 0) return (*out = t->v[i].flores, 0);
    return mtr_fail(MTR_ENOTFOUND, "unknown language code '%s'", code);
}
