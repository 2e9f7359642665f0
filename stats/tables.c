/* tables.c — the reduce tables stats works on (div_from_en, entropy, freq, delta; reduce/SUMMARIES.md), loaded
 * into dense arrays behind one entry point, mtr_tables_open(): a directory of reduce TSVs ('#' provenance lines,
 * a '#' header, 1-based layers, 0-based experts) or the tables.h5 written beside them. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mtr_h5.h"
#include "stats_internal.h"

#define TABLES_MAX_CELLS ((size_t)1 << 28) /* dense arrays above this many doubles are refused */

enum { T_DIV, T_ENT, T_FREQ, T_DELTA, T_COUNT };
static const char *const table_file[T_COUNT] = {MTR_TSV_DIV_FROM_EN, MTR_TSV_ENTROPY, MTR_TSV_FREQ, MTR_TSV_DELTA};
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
    if (!nv) return mtr_fail(MTR_ENOMEM, "out of memory");
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
        return mtr_fail(MTR_EFORMAT, "%s:%zu: layer '%s' is not in 1..%d (layers are 1-based)", f->path,
                              f->line[r], s, MTR_MAX_LAYERS);
    *l0 = l - 1;
    return 0;
}

static int parse_expert(uint32_t *e, const char *s, const mtr_tsv *f, size_t r)
{
    if (mtr_stats_parse_u32(e, s) || *e >= MTR_MAX_EXPERTS)
        return mtr_fail(MTR_EFORMAT, "%s:%zu: expert '%s' is not in 0..%d", f->path, f->line[r], s,
                              MTR_MAX_EXPERTS - 1);
    return 0;
}

static int parse_value(double *v, const char *s, const mtr_tsv *f, size_t r, const char *col)
{
    if (mtr_stats_parse_double(v, s) || !isfinite(*v))
        return mtr_fail(MTR_EFORMAT, "%s:%zu: %s '%s' is not a finite number", f->path, f->line[r], col, s);
    return 0;
}

static int store(double *a, size_t i, double v, const mtr_tsv *f, size_t r)
{
    if (!isnan(a[i])) return mtr_fail(MTR_EFORMAT, "%s:%zu: duplicate row", f->path, f->line[r]);
    a[i] = v;
    return 0;
}

/* ---- tables.h5 (reduce/SUMMARIES.md): langs, slices "dataset:lang", div_from_en and entropy (langs, L), freq and
 * weight (slices, L, E); Delta is freq minus the base slice, as in delta.tsv ---- */

static int h5_strings(hid_t f, const char *name, char ***out, size_t *n, const char *path)
{
    int rc = 0;
    hid_t d = mtr_h5_open_dataset(f, name, true, path, &rc);
    if (rc) return rc;
    hid_t sp = H5Dget_space(d), t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hssize_t m = H5Sget_simple_extent_ndims(sp) == 1 ? H5Sget_simple_extent_npoints(sp) : -1;
    char **v = m > 0 && m < (1 << 24) ? calloc((size_t)m, sizeof *v) : NULL;
    if (!v) {
        rc = m > 0 && m < (1 << 24) ? mtr_fail(MTR_ENOMEM, "out of memory")
                                    : mtr_fail(MTR_EFORMAT, "%s: /%s is not a list of 1 to 2^24 names", path, name);
    } else if ((rc = mtr_h5_check_vlen_dset(d, (uint64_t)m, name, path))) {
        ; /* a damaged string heap: refused before HDF5 reads it */
    } else if (mtr_h5_dread(d, t, H5S_ALL, H5S_ALL, v) < 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: cannot read /%s", path, name);
    } else {
        *out = malloc((size_t)m * sizeof **out);
        for (hssize_t i = 0; *out && i < m; i++) (*out)[i] = strdup(v[i] ? v[i] : "");
        if (!*out) rc = mtr_fail(MTR_ENOMEM, "out of memory");
        *n = (size_t)m;
        H5Dvlen_reclaim(t, sp, H5P_DEFAULT, v);
    }
    free(v);
    H5Tclose(t);
    H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

static int h5_doubles(hid_t f, const char *name, double **out, const hsize_t *want, int rank, const char *path)
{
    int rc = 0;
    hid_t d = mtr_h5_open_dataset(f, name, true, path, &rc);
    if (rc) return rc;
    hid_t sp = H5Dget_space(d);
    hsize_t dims[3] = {0, 0, 0};
    size_t n = 1;
    if (H5Sget_simple_extent_ndims(sp) != rank || H5Sget_simple_extent_dims(sp, dims, NULL) < 0)
        rc = mtr_fail(MTR_EFORMAT, "%s: /%s has the wrong rank", path, name);
    for (int i = 0; !rc && i < rank; i++) {
        if (dims[i] != want[i]) rc = mtr_fail(MTR_EFORMAT, "%s: /%s has the wrong shape", path, name);
        n *= dims[i];
    }
    if (!rc && n > TABLES_MAX_CELLS) rc = mtr_fail(MTR_EFORMAT, "%s: /%s too large", path, name);
    if (!rc && !(*out = malloc((n ? n : 1) * sizeof **out))) rc = mtr_fail(MTR_ENOMEM, "out of memory");
    if (!rc && n && mtr_h5_dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, *out) < 0)
        rc = mtr_fail(MTR_EFORMAT, "%s: cannot read /%s", path, name);
    H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

/* a string attribute into *out, NULL when missing (the caller names what it needed); an error when damaged */
static int h5_attr(hid_t f, const char *name, char **out, const char *path)
{
    *out = NULL;
    return H5Aexists(f, name) > 0 ? mtr_h5_get_str_alloc(f, name, out, path) : 0;
}

static int tables_load_h5(mtr_tables *t, const char *path)
{
    int rc = 0;
    char **langs = NULL, **slices = NULL, *fmt = NULL, *en = NULL, *base = NULL;
    size_t nl = 0, ns = 0;
    double *div = NULL, *ent = NULL, *freq = NULL, *weight = NULL;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if ((rc = mtr_h5_check_file(path))) return rc;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_EFORMAT, "%s: not an HDF5 file", path);
    /* the root group's header, attributes and local heap before any of them is read or a name looked up */
    if ((rc = mtr_h5_check_attrs(f, path))) goto done;
    if ((rc = h5_attr(f, "format", &fmt, path)) || (rc = h5_attr(f, "english", &en, path)) ||
        (rc = h5_attr(f, "base_slice", &base, path)))
        goto done;
    if (!fmt || strcmp(fmt, "moetrace-tables") != 0 || !en || !base) {
        rc = mtr_fail(MTR_EFORMAT, "%s: not moetrace-reduce tables (attribute 'format')", path);
        goto done;
    }
    if ((rc = h5_strings(f, MTR_T_LANGS, &langs, &nl, path)) || (rc = h5_strings(f, MTR_T_SLICES, &slices, &ns, path)))
        goto done;
    hid_t d = H5Lexists(f, MTR_T_FREQ, H5P_DEFAULT) > 0 ? mtr_h5_open_dataset(f, MTR_T_FREQ, true, path, &rc)
                                                        : H5I_INVALID_HID;
    hsize_t fd[3] = {0, 0, 0};
    if (rc) goto done;
    if (d >= 0) {
        hid_t sp = H5Dget_space(d);
        if (H5Sget_simple_extent_ndims(sp) == 3) H5Sget_simple_extent_dims(sp, fd, NULL);
        H5Sclose(sp);
        H5Dclose(d);
    }
    if (d < 0 || fd[0] != ns || fd[1] < 1 || fd[2] < 1) {
        rc = mtr_fail(MTR_EFORMAT, "%s: /freq missing or not (slices, layers, experts)", path);
        goto done;
    }
    const uint32_t L = (uint32_t)fd[1], E = (uint32_t)fd[2];
    hsize_t d2[2] = {nl, L};
    if ((rc = h5_doubles(f, MTR_T_DIV_FROM_EN, &div, d2, 2, path)) || (rc = h5_doubles(f, MTR_T_ENTROPY, &ent, d2, 2, path)) ||
        (rc = h5_doubles(f, MTR_T_FREQ, &freq, fd, 3, path)) || (rc = h5_doubles(f, MTR_T_WEIGHT, &weight, fd, 3, path)))
        goto done;
    /* names: English first, then the languages of the base dataset, then any other slice's language */
    if (intern(&t->langs, &t->n_langs, en) < 0) goto nomem;
    for (size_t i = 0; i < nl; i++)
        if (intern(&t->langs, &t->n_langs, langs[i]) < 0) goto nomem;
    for (size_t i = 0; i < ns; i++) {
        char *colon = strchr(slices[i], ':');
        if (!colon) {
            rc = mtr_fail(MTR_EFORMAT, "%s: slice '%s' is not dataset:lang", path, slices[i]);
            goto done;
        }
        *colon = '\0';
        if (intern(&t->datasets, &t->n_datasets, slices[i]) < 0 || intern(&t->langs, &t->n_langs, colon + 1) < 0)
            goto nomem;
        *colon = ':';
    }
    t->n_layers = L;
    t->n_experts = E;
    const size_t nll = t->n_langs * L, nf = t->n_datasets * nll * E;
    if (nll > TABLES_MAX_CELLS || nf > TABLES_MAX_CELLS) {
        rc = mtr_fail(MTR_EFORMAT, "%s: tables too large", path);
        goto done;
    }
    if (!(t->div_en = nan_array(nll)) || !(t->entropy = nan_array(nll)) || !(t->freq = nan_array(nf)) ||
        !(t->weight = nan_array(nf)) || !(t->delta = nan_array(nf)))
        goto nomem;
    for (size_t i = 0; i < nl; i++) {
        size_t g = (size_t)mtr_tables_lang(t, langs[i]);
        for (uint32_t l = 0; l < L; l++) {
            /* as in div_from_en.tsv, English has no row of its own */
            if (strcmp(langs[i], en) != 0) t->div_en[g * L + l] = div[i * L + l];
            t->entropy[g * L + l] = ent[i * L + l];
        }
    }
    long base_i = -1;
    for (size_t i = 0; i < ns; i++)
        if (!strcmp(slices[i], base)) base_i = (long)i;
    for (size_t i = 0; i < ns; i++) {
        char *colon = strchr(slices[i], ':');
        *colon = '\0';
        size_t dd = (size_t)mtr_tables_dataset(t, slices[i]), g = (size_t)mtr_tables_lang(t, colon + 1);
        *colon = ':';
        for (size_t x = 0; x < (size_t)L * E; x++) {
            size_t o = (dd * t->n_langs + g) * L * E + x;
            t->freq[o] = freq[i * L * E + x];
            t->weight[o] = weight[i * L * E + x];
            if (base_i >= 0 && (long)i != base_i) t->delta[o] = freq[i * L * E + x] - freq[(size_t)base_i * L * E + x];
        }
    }
    char *summ = NULL, *settings = NULL;
    if ((rc = h5_attr(f, "summaries", &summ, path)) || (rc = h5_attr(f, "settings", &settings, path))) {
        free(summ);
        goto done;
    }
    const char *pv[3][2] = {{"summaries", summ}, {"base slice", base}, {"phase 1 settings", settings}};
    for (int i = 0; i < 3; i++) {
        if (!pv[i][1]) continue;
        char **np = realloc(t->prov, (t->n_prov + 1) * sizeof *np);
        if (!np) break;
        t->prov = np;
        size_t need = strlen(pv[i][0]) + strlen(pv[i][1]) + 16;
        if ((np[t->n_prov] = malloc(need))) snprintf(np[t->n_prov++], need, "tables.h5: %s: %s", pv[i][0], pv[i][1]);
    }
    free(summ);
    free(settings);
    goto done;
nomem:
    rc = mtr_fail(MTR_ENOMEM, "out of memory");
done:
    for (size_t i = 0; langs && i < nl; i++) free(langs[i]);
    for (size_t i = 0; slices && i < ns; i++) free(slices[i]);
    free(langs);
    free(slices);
    free(fmt);
    free(en);
    free(base);
    free(div);
    free(ent);
    free(freq);
    free(weight);
    H5Fclose(f);
    return rc;
}

/* The layer count of the model the tables were made from, from reduce's provenance line "model: ID (L layers, ...";
 * 0 if no file says. */
static uint32_t declared_layers(mtr_tsv *const *f)
{
    for (int k = 0; k < T_COUNT; k++)
        for (size_t i = 0; f[k] && i < f[k]->n_prov; i++) {
            const char *m = strstr(f[k]->prov[i], "model: "), *q = m ? strchr(m, '(') : NULL;
            unsigned n = 0;
            if (q && sscanf(q, "(%u layers", &n) == 1 && n >= 1 && n <= MTR_MAX_LAYERS) return n;
        }
    return 0;
}

/* Missing rows are bad data (they would move the band and the correlations without a word): every language of
 * the per-layer tables has a row for every layer, and the layers are the model's when the provenance names it. */
static int check_complete(const mtr_tables *t, mtr_tsv *const *f, const char *dir)
{
    uint32_t want = declared_layers(f);
    if (want && want != t->n_layers)
        return mtr_fail(MTR_EFORMAT, "%s: the tables hold layers 1..%u but the model has %u (rows missing?)", dir,
                              t->n_layers, want);
    const double *a[2] = {t->div_en, t->entropy};
    for (int k = 0; k < 2; k++) {
        if (!a[k]) continue;
        for (size_t g = 0; g < t->n_langs; g++) {
            const double *row = a[k] + g * t->n_layers;
            uint32_t have = 0, gap = 0;
            for (uint32_t l = t->n_layers; l-- > 0;) {
                if (isnan(row[l])) gap = l + 1;
                else have++;
            }
            if (have && have < t->n_layers)
                return mtr_fail(MTR_EFORMAT, "%s: no row for %s layer %u (of 1..%u)", f[k]->path, t->langs[g],
                                      gap, t->n_layers);
        }
    }
    return 0;
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
                rc = mtr_fail(MTR_EFORMAT, "%s: no column '%s'", p, table_cols[k][c]);
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
                rc = mtr_fail(MTR_ENOMEM, "out of memory");
                goto out_free;
            }
            t->prov = np;
            size_t need = strlen(table_file[k]) + strlen(f[k]->prov[i]) + 4;
            if (!(np[t->n_prov] = malloc(need))) {
                rc = mtr_fail(MTR_ENOMEM, "out of memory");
                goto out_free;
            }
            snprintf(np[t->n_prov++], need, "%s:%s", table_file[k], f[k]->prov[i]);
        }
    }
    if (n_found == 0) {
        rc = mtr_fail(MTR_ENOTFOUND, "%s: no reduce tables (div_from_en.tsv, freq.tsv, delta.tsv, ...)", dir);
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
        rc = mtr_fail(MTR_EFORMAT, "%s: tables too large (%zu languages, %u layers, %u experts)", dir,
                            t->n_langs, t->n_layers, t->n_experts);
        goto out_free;
    }
    if ((f[T_DIV] && !(t->div_en = nan_array(nll))) || (f[T_ENT] && !(t->entropy = nan_array(nll))) ||
        (f[T_FREQ] && (!(t->freq = nan_array(nf)) || !(t->weight = nan_array(nf)))) ||
        (f[T_DELTA] && !(t->delta = nan_array(nf)))) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
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
    rc = check_complete(t, f, dir);
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
    if (stat(path, &st) != 0) return mtr_fail(MTR_ENOTFOUND, "%s: no such file or directory", path);
    t = calloc(1, sizeof *t);
    if (!t || !(t->source = mtr_stats_strdup(path))) {
        free(t);
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    size_t n = strlen(path);
    if (S_ISDIR(st.st_mode)) rc = tables_load_dir(t, path);
    else if (n > 3 && !strcmp(path + n - 3, ".h5")) rc = tables_load_h5(t, path);
    else rc = mtr_fail(MTR_EFORMAT, "%s: expected a directory of reduce TSVs or a tables.h5 file", path);
    if (rc) {
        mtr_tables_free(t);
        return rc;
    }
    *out = t;
    return 0;
}
