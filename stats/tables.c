/* tables.c — the reduce tables stats works on (reduce issue: div_from_en, entropy, freq, delta), loaded into
 * dense arrays behind one entry point, mtr_tables_open(). Files are TSVs with '#' provenance lines, a '#' header,
 * 1-based layers and 0-based experts. tables.h5 goes through the same entry point (tables_load_h5) once its
 * layout is fixed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "stats_internal.h"

#define TABLES_MAX_CELLS ((size_t)1 << 28) /* dense arrays above this many doubles are refused */

enum { T_DIV, T_ENT, T_FREQ, T_DELTA, T_COUNT };
static const char *const table_file[T_COUNT] = {"div_from_en.tsv", "entropy.tsv", "freq.tsv", "delta.tsv"};
/* columns each table must have, in order: the key columns, then the values */
static const char *const table_cols[T_COUNT][7] = {
    {"lang", "layer", "div", NULL},
    {"lang", "layer", "entropy", NULL},
    {"dataset", "lang", "layer", "expert", "freq", "weight", NULL},
    {"dataset", "lang", "layer", "expert", "delta", NULL},
};

void mtr_tables_free(mtr_tables *t)
{
    if (!t) return;
    free(t->source);
    for (size_t i = 0; i < t->n_langs; i++) free(t->langs[i]);
    free(t->langs);
    for (size_t i = 0; i < t->n_datasets; i++) free(t->datasets[i]);
    free(t->datasets);
    free(t->div_en);
    free(t->entropy);
    free(t->freq);
    free(t->weight);
    free(t->delta);
    for (size_t i = 0; i < t->n_prov; i++) free(t->prov[i]);
    free(t->prov);
    free(t);
}

int mtr_tables_lang(const mtr_tables *t, const char *lang)
{
    for (size_t i = 0; i < t->n_langs; i++)
        if (!strcmp(t->langs[i], lang)) return (int)i;
    return -1;
}

int mtr_tables_dataset(const mtr_tables *t, const char *dataset)
{
    for (size_t i = 0; i < t->n_datasets; i++)
        if (!strcmp(t->datasets[i], dataset)) return (int)i;
    return -1;
}

/* index of s in *v (n), appended if absent */
static int intern(char ***v, size_t *n, const char *s)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp((*v)[i], s)) return (int)i;
    char **nv = realloc(*v, (*n + 1) * sizeof *nv);
    if (!nv) return mtr_stats_fail(MTR_ENOMEM, "out of memory");
    *v = nv;
    if (!(nv[*n] = mtr_stats_strdup(s))) return MTR_ENOMEM;
    return (int)(*n)++;
}

static double *nan_array(size_t n)
{
    double *a = malloc((n ? n : 1) * sizeof *a);
    if (a)
        for (size_t i = 0; i < n; i++) a[i] = NAN;
    return a;
}

static int parse_layer(uint32_t *l0, const char *s, const mtr_tsv *f, size_t r)
{
    uint32_t l;
    if (mtr_stats_parse_u32(&l, s) || l < 1 || l > MTR_MAX_LAYERS)
        return mtr_stats_fail(MTR_EFORMAT, "%s:%zu: layer '%s' is not in 1..%d (layers are 1-based)", f->path,
                              f->line[r], s, MTR_MAX_LAYERS);
    *l0 = l - 1;
    return 0;
}

static int parse_expert(uint32_t *e, const char *s, const mtr_tsv *f, size_t r)
{
    if (mtr_stats_parse_u32(e, s) || *e >= MTR_MAX_EXPERTS)
        return mtr_stats_fail(MTR_EFORMAT, "%s:%zu: expert '%s' is not in 0..%d", f->path, f->line[r], s,
                              MTR_MAX_EXPERTS - 1);
    return 0;
}

static int parse_value(double *v, const char *s, const mtr_tsv *f, size_t r, const char *col)
{
    if (mtr_stats_parse_double(v, s) || !isfinite(*v))
        return mtr_stats_fail(MTR_EFORMAT, "%s:%zu: %s '%s' is not a finite number", f->path, f->line[r], col, s);
    return 0;
}

static int store(double *a, size_t i, double v, const mtr_tsv *f, size_t r)
{
    if (!isnan(a[i])) return mtr_stats_fail(MTR_EFORMAT, "%s:%zu: duplicate row", f->path, f->line[r]);
    a[i] = v;
    return 0;
}

static int tables_load_h5(mtr_tables *t, const char *path)
{
    (void)t;
    return mtr_stats_fail(MTR_EFORMAT, "%s: HDF5 tables are not readable yet; pass the directory of reduce TSVs",
                          path);
}

static int tables_load_dir(mtr_tables *t, const char *dir)
{
    int rc = 0;
    mtr_tsv *f[T_COUNT] = {NULL};
    int col[T_COUNT][7];
    size_t n_found = 0;

    for (int k = 0; k < T_COUNT; k++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, table_file[k]);
        rc = mtr_tsv_read(&f[k], p);
        if (rc == MTR_ENOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc) goto out_free;
        n_found++;
        for (int c = 0; table_cols[k][c]; c++)
            if ((col[k][c] = mtr_tsv_col(f[k], table_cols[k][c])) < 0) {
                rc = mtr_stats_fail(MTR_EFORMAT, "%s: no column '%s'", p, table_cols[k][c]);
                goto out_free;
            }
        for (size_t i = 0; i < f[k]->n_prov; i++) {
            /* reduce repeats its settings in every file: keep each distinct line once, with the first file's name */
            bool seen = false;
            for (size_t j = 0; j < t->n_prov && !seen; j++) {
                const char *colon = strchr(t->prov[j], ':');
                seen = colon && !strcmp(colon + 1, f[k]->prov[i]);
            }
            if (seen) continue;
            char **np = realloc(t->prov, (t->n_prov + 1) * sizeof *np);
            if (!np) {
                rc = mtr_stats_fail(MTR_ENOMEM, "out of memory");
                goto out_free;
            }
            t->prov = np;
            size_t need = strlen(table_file[k]) + strlen(f[k]->prov[i]) + 4;
            if (!(np[t->n_prov] = malloc(need))) {
                rc = mtr_stats_fail(MTR_ENOMEM, "out of memory");
                goto out_free;
            }
            snprintf(np[t->n_prov++], need, "%s:%s", table_file[k], f[k]->prov[i]);
        }
    }
    if (n_found == 0) {
        rc = mtr_stats_fail(MTR_ENOTFOUND, "%s: no reduce tables (div_from_en.tsv, freq.tsv, delta.tsv, ...)", dir);
        goto out_free;
    }

    /* pass 1: dimensions and names (English first so index 0 is the reference when present) */
    for (int k = 0; k < T_COUNT; k++)
        for (size_t r = 0; f[k] && r < f[k]->n_rows; r++) {
            char **c = f[k]->cells + r * f[k]->n_cols;
            if (!strcmp(c[col[k][k >= T_FREQ ? 1 : 0]], "eng_Latn") && t->n_langs == 0 &&
                intern(&t->langs, &t->n_langs, "eng_Latn") < 0) {
                rc = MTR_ENOMEM;
                goto out_free;
            }
        }
    for (int k = 0; k < T_COUNT; k++)
        for (size_t r = 0; f[k] && r < f[k]->n_rows; r++) {
            char **c = f[k]->cells + r * f[k]->n_cols;
            uint32_t l, e;
            int li = k >= T_FREQ ? 1 : 0;
            if (intern(&t->langs, &t->n_langs, c[col[k][li]]) < 0) {
                rc = MTR_ENOMEM;
                goto out_free;
            }
            if ((rc = parse_layer(&l, c[col[k][li + 1]], f[k], r))) goto out_free;
            if (l + 1 > t->n_layers) t->n_layers = l + 1;
            if (k >= T_FREQ) {
                if (intern(&t->datasets, &t->n_datasets, c[col[k][0]]) < 0) {
                    rc = MTR_ENOMEM;
                    goto out_free;
                }
                if ((rc = parse_expert(&e, c[col[k][3]], f[k], r))) goto out_free;
                if (e + 1 > t->n_experts) t->n_experts = e + 1;
            }
        }

    size_t nll = t->n_langs * t->n_layers;
    size_t nf = t->n_datasets * nll * t->n_experts;
    if (nll > TABLES_MAX_CELLS || nf > TABLES_MAX_CELLS) {
        rc = mtr_stats_fail(MTR_EFORMAT, "%s: tables too large (%zu languages, %u layers, %u experts)", dir,
                            t->n_langs, t->n_layers, t->n_experts);
        goto out_free;
    }
    if ((f[T_DIV] && !(t->div_en = nan_array(nll))) || (f[T_ENT] && !(t->entropy = nan_array(nll))) ||
        (f[T_FREQ] && (!(t->freq = nan_array(nf)) || !(t->weight = nan_array(nf)))) ||
        (f[T_DELTA] && !(t->delta = nan_array(nf)))) {
        rc = mtr_stats_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }

    /* pass 2: values */
    for (int k = 0; k < T_COUNT; k++)
        for (size_t r = 0; f[k] && r < f[k]->n_rows; r++) {
            char **c = f[k]->cells + r * f[k]->n_cols;
            uint32_t l, e = 0;
            double v, w;
            if (k < T_FREQ) {
                size_t g = (size_t)mtr_tables_lang(t, c[col[k][0]]);
                parse_layer(&l, c[col[k][1]], f[k], r);
                if ((rc = parse_value(&v, c[col[k][2]], f[k], r, table_cols[k][2]))) goto out_free;
                if ((rc = store(k == T_DIV ? t->div_en : t->entropy, g * t->n_layers + l, v, f[k], r))) goto out_free;
                continue;
            }
            size_t d = (size_t)mtr_tables_dataset(t, c[col[k][0]]);
            size_t g = (size_t)mtr_tables_lang(t, c[col[k][1]]);
            parse_layer(&l, c[col[k][2]], f[k], r);
            parse_expert(&e, c[col[k][3]], f[k], r);
            size_t i = ((d * t->n_langs + g) * t->n_layers + l) * t->n_experts + e;
            if ((rc = parse_value(&v, c[col[k][4]], f[k], r, table_cols[k][4]))) goto out_free;
            if (k == T_FREQ) {
                if ((rc = parse_value(&w, c[col[k][5]], f[k], r, "weight"))) goto out_free;
                if ((rc = store(t->freq, i, v, f[k], r))) goto out_free;
                t->weight[i] = w;
            } else if ((rc = store(t->delta, i, v, f[k], r))) {
                goto out_free;
            }
        }
out_free:
    for (int k = 0; k < T_COUNT; k++) mtr_tsv_free(f[k]);
    return rc;
}

int mtr_tables_open(mtr_tables **out, const char *path)
{
    int rc = 0;
    struct stat st;
    mtr_tables *t = NULL;
    *out = NULL;
    if (stat(path, &st) != 0) return mtr_stats_fail(MTR_ENOTFOUND, "%s: no such file or directory", path);
    t = calloc(1, sizeof *t);
    if (!t || !(t->source = mtr_stats_strdup(path))) {
        free(t);
        return mtr_stats_fail(MTR_ENOMEM, "out of memory");
    }
    size_t n = strlen(path);
    if (S_ISDIR(st.st_mode)) rc = tables_load_dir(t, path);
    else if (n > 3 && !strcmp(path + n - 3, ".h5")) rc = tables_load_h5(t, path);
    else rc = mtr_stats_fail(MTR_EFORMAT, "%s: expected a directory of reduce TSVs or a tables.h5 file", path);
    if (rc) {
        mtr_tables_free(t);
        return rc;
    }
    *out = t;
    return 0;
}
