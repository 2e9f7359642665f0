/* tsv.c — the '#'-commented TSV every moetrace table uses: '#' provenance lines, a '#'-prefixed header line
 * (the last '#' line before the first row), then tab-separated rows. CRLF and blank lines are tolerated. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mtr_util.h"
#include "stats_internal.h"

#define TSV_MAX_BYTES ((size_t)1 << 32) /* refuse larger tables instead of trying to hold them */

int mtr_tsv_col(const mtr_tsv *t, const char *name)
{
    for (size_t i = 0; i < t->n_cols; i++)
        if (strcmp(t->cols[i], name) == 0) return (int)i;
    return -1;
}

/* Split s at tabs in place into at most cap fields; returns the field count (cap + 1 means too many). */
static size_t split_tabs(char *s, char **f, size_t cap)
{
    size_t n = 0;
    for (;;) {
        if (n < cap) f[n] = s;
        n++;
        char *tab = strchr(s, '\t');
        if (!tab) break;
        *tab = '\0';
        s = tab + 1;
        if (n > cap) break;
    }
    return n;
}

/* The text buffer the cells point into travels with the public struct (pub first, so a mtr_tsv * is a
 * tsv_impl *). */
typedef struct {
    mtr_tsv pub;
    char *text;
} tsv_impl;

void mtr_tsv_free(mtr_tsv *p)
{
    if (!p) return;
    tsv_impl *t = (tsv_impl *)p;
    free(p->path);
    free(p->cols);
    free(p->cells);
    free(p->line);
    free(p->prov);
    free(t->text);
    free(t);
}

int mtr_tsv_read(mtr_tsv **out, const char *path)
{
    int rc = 0;
    tsv_impl *t = NULL;
    char *text = NULL;
    size_t len = 0;
    *out = NULL;

    if ((rc = mtr_read_file(&text, &len, path, TSV_MAX_BYTES - 1))) goto out_close;
    if (memchr(text, '\0', len)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: binary data in a text table", path);
        goto out_close;
    }

    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++) n_lines += text[i] == '\n';
    t = calloc(1, sizeof *t);
    if (!t) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_close;
    }
    t->text = text;
    text = NULL;
    mtr_tsv *p = &t->pub;
    p->path = mtr_stats_strdup(path);
    p->prov = calloc(n_lines, sizeof *p->prov);
    p->line = calloc(n_lines, sizeof *p->line);
    if (!p->path || !p->prov || !p->line) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }

    /* pass 1: lines; find the header (last '#' line before data) */
    char **lines = calloc(n_lines, sizeof *lines);
    size_t *lno = calloc(n_lines, sizeof *lno);
    if (!lines || !lno) {
        free(lines);
        free(lno);
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    size_t nl = 0, header = (size_t)-1, first_data = (size_t)-1;
    char *s = t->text;
    for (size_t ln = 1; s; ln++) {
        char *nlp = strchr(s, '\n');
        if (nlp) *nlp = '\0';
        size_t l = strlen(s);
        if (l && s[l - 1] == '\r') s[--l] = '\0';
        if (l > 0) {
            if (s[0] == '#') {
                if (first_data == (size_t)-1) header = nl;
            } else if (first_data == (size_t)-1) {
                first_data = nl;
            }
            lines[nl] = s;
            lno[nl] = ln;
            nl++;
        }
        s = nlp ? nlp + 1 : NULL;
    }
    if (header == (size_t)-1) {
        free(lines);
        free(lno);
        rc = mtr_fail(MTR_EFORMAT, "%s: no '#' column header line", path);
        goto out_free;
    }
    /* header fields */
    char *h = lines[header] + 1;
    while (*h == ' ') h++;
    size_t nc = 1;
    for (char *c = h; *c; c++) nc += *c == '\t';
    p->cols = calloc(nc, sizeof *p->cols);
    size_t n_rows = 0;
    for (size_t i = 0; i < nl; i++) n_rows += lines[i][0] != '#';
    p->cells = calloc(n_rows * nc + 1, sizeof *p->cells);
    if (!p->cols || !p->cells) {
        free(lines);
        free(lno);
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    p->n_cols = split_tabs(h, p->cols, nc);
    for (size_t i = 0; i < nl; i++) {
        if (lines[i][0] == '#') {
            if (i != header) p->prov[p->n_prov++] = lines[i] + 1;
            continue;
        }
        size_t got = split_tabs(lines[i], p->cells + p->n_rows * nc, nc);
        if (got != nc) {
            rc = mtr_fail(MTR_EFORMAT, "%s:%zu: %zu fields, the header has %zu", path, lno[i], got, nc);
            break;
        }
        p->line[p->n_rows++] = lno[i];
    }
    free(lines);
    free(lno);
    if (rc) goto out_free;
    *out = p;
    goto out_close;

out_free:
    if (t) mtr_tsv_free(&t->pub);
out_close:
    free(text);
    return rc;
}
