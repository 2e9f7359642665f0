/* tables.c — phase 2 of moetrace-reduce: tables from per-sequence summaries (docs/ARCHITECTURE.md §3, reduce/SUMMARIES.md).
 *
 * Reads the summaries one layer at a time (q and counts of every sequence), so memory holds one layer, not the
 * trace set. TSVs carry '#' provenance lines and a '#' column header; layers are 1-based, experts 0-based.
 * The same numbers go into DIR/tables.h5 for programs.
 */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "reduce_internal.h"

typedef struct {
    const char **v;
    size_t n;
} strset;

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* distinct strings, sorted */
static int strset_build(strset *out, char **items, size_t n, const bool *keep)
{
    out->v = malloc((n ? n : 1) * sizeof *out->v);
    out->n = 0;
    if (!out->v) return MTR_ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!keep || keep[i]) out->v[out->n++] = items[i];
    qsort(out->v, out->n, sizeof *out->v, cmp_str);
    size_t k = 0;
    for (size_t i = 0; i < out->n; i++)
        if (k == 0 || strcmp(out->v[i], out->v[k - 1]) != 0) out->v[k++] = out->v[i];
    out->n = k;
    return 0;
}

static long strset_find(const strset *s, const char *x)
{
    const char **p = bsearch(&x, s->v, s->n, sizeof *s->v, cmp_str);
    return p ? (long)(p - s->v) : -1;
}

typedef struct {
    FILE *f;
    char path[4200];
} tsv;

static int tsv_open(tsv *t, const char *dir, const char *name, const mtr_summaries *s, const mtr_tables_opts *o,
                    const char *base, const char *header)
{
    snprintf(t->path, sizeof t->path, "%s/%s", dir, name);
    t->f = fopen(t->path, "w");
    if (!t->f) return mtr_fail(MTR_EIO, "%s: %s", t->path, strerror(errno));
    fprintf(t->f, "# moetrace-reduce %s: %s\n", MTR_VERSION_STRING, name);
    fprintf(t->f, "# summaries: %s\n", s->path);
    fprintf(t->f, "# model: %s (%u layers, %u experts, top-%u); weights: %s\n", s->model.model_id,
            s->model.n_layers, s->model.n_experts, s->model.top_k, s->topk_weights ? "topk" : "full");
    fprintf(t->f, "# english: %s; base dataset: %s; base slice: %s:%s; layers 1-based, experts 0-based\n",
            o->english, base, base, o->base_lang ? o->base_lang : o->english);
    fprintf(t->f, "# phase 1 settings: %s\n", s->settings ? s->settings : "{}");
    fprintf(t->f, "#%s\n", header);
    return 0;
}

static int tsv_close(tsv *t)
{
    if (!t->f) return 0;
    int bad = ferror(t->f);
    if (fclose(t->f) != 0 || bad) return mtr_fail(MTR_EIO, "%s: write failed", t->path);
    t->f = NULL;
    return 0;
}

static int h5_put(hid_t f, const char *name, hid_t mtype, hid_t ftype, int rank, const hsize_t *dims, const void *data)
{
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int rc = d < 0 || H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0 ? MTR_EHDF5 : 0;
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    return rc;
}

static int h5_put_attr(hid_t obj, const char *name, const char *v)
{
    hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, t, &v) < 0 ? MTR_EHDF5 : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return rc;
}

static int h5_put_strs(hid_t f, const char *name, const char **v, size_t n)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hsize_t d = n;
    int rc = n ? h5_put(f, name, t, t, 1, &d, v) : 0;
    H5Tclose(t);
    return rc;
}

/* pick the generic dataset: "flores" if present, else the one with the most languages */
static const char *pick_base(const mtr_summaries *s, const strset *datasets)
{
    if (strset_find(datasets, "flores") >= 0) return "flores";
    const char *best = datasets->n ? datasets->v[0] : "";
    size_t best_n = 0;
    for (size_t d = 0; d < datasets->n; d++) {
        bool *keep = calloc(s->n_seqs ? s->n_seqs : 1, 1);
        for (size_t i = 0; keep && i < s->n_seqs; i++) keep[i] = strcmp(s->dataset[i], datasets->v[d]) == 0;
        strset langs = {0};
        if (keep && !strset_build(&langs, s->lang, s->n_seqs, keep) && langs.n > best_n) {
            best_n = langs.n;
            best = datasets->v[d];
        }
        free(langs.v);
        free(keep);
    }
    return best;
}

int mtr_tables(const char *dir, const mtr_summaries *s, const mtr_tables_opts *opts)
{
    mtr_tables_opts dflt = MTR_TABLES_OPTS_INIT;
    if (!opts) opts = &dflt;
    int rc = 0;
    mtr_clear_error();
    const uint32_t L = s->model.n_layers, E = s->model.n_experts;
    const size_t S = s->n_seqs;
    const char *en = opts->english ? opts->english : "eng_Latn";
    const int nt = opts->n_threads > 0 ? opts->n_threads : omp_get_max_threads();
    strset datasets = {0}, langs = {0}, units = {0}, slices_ds = {0};
    long *unit_seq = NULL, *seq_slice = NULL;
    char **slice_names = NULL;
    size_t n_slices = 0;
    double *q = NULL, *freq = NULL, *weight = NULL, *div_en = NULL, *div_pair = NULL, *ent_tab = NULL;
    uint32_t *cnt = NULL, *npairs_en = NULL, *npairs_pair = NULL, *slice_nseq = NULL;
    uint64_t *slice_act = NULL, *slice_used = NULL;
    tsv t_div = {0}, t_pair = {0}, t_ent = {0}, t_jac = {0}, t_freq = {0}, t_delta = {0}, t_spec = {0}, t_top = {0},
        t_rd = {0}, t_miss = {0};
    hid_t h5 = H5I_INVALID_HID;

    if (mkdir(dir, 0777) < 0 && errno != EEXIST) return mtr_fail(MTR_EIO, "%s: %s", dir, strerror(errno));
    if (S == 0) return mtr_fail(MTR_EFORMAT, "%s: holds no sequences", s->path);
    if ((rc = strset_build(&datasets, s->dataset, S, NULL))) goto nomem;
    const char *base = opts->base_dataset ? opts->base_dataset : pick_base(s, &datasets);
    if (strset_find(&datasets, base) < 0) {
        rc = mtr_fail(MTR_EINVAL, "%s: no sequences of base dataset '%s'", s->path, base);
        goto done;
    }
    const char *base_lang = opts->base_lang ? opts->base_lang : en;

    /* languages and parallel units of the base dataset; (lang, unit) -> sequence */
    bool *in_base = calloc(S, 1);
    if (!in_base) goto nomem;
    for (size_t i = 0; i < S; i++) in_base[i] = strcmp(s->dataset[i], base) == 0 && s->n_used[i] > 0;
    rc = strset_build(&langs, s->lang, S, in_base) || strset_build(&units, s->unit_id, S, in_base);
    if (rc) {
        free(in_base);
        goto nomem;
    }
    const size_t NL = langs.n, NU = units.n;
    const long en_idx = strset_find(&langs, en);
    if (en_idx < 0) {
        free(in_base);
        rc = mtr_fail(MTR_EINVAL, "%s: no %s sequences in dataset '%s': divergence from English needs them",
                             s->path, en, base);
        goto done;
    }
    unit_seq = malloc(NL * NU * sizeof *unit_seq);
    if (!unit_seq) {
        free(in_base);
        goto nomem;
    }
    for (size_t i = 0; i < NL * NU; i++) unit_seq[i] = -1;
    for (size_t i = 0; i < S; i++) {
        if (!in_base[i]) continue;
        long li = strset_find(&langs, s->lang[i]), ui = strset_find(&units, s->unit_id[i]);
        if (unit_seq[li * NU + ui] >= 0) {
            free(in_base);
            rc = mtr_fail(MTR_EFORMAT, "%s: unit '%s' appears twice for %s in dataset '%s'", s->path,
                                 s->unit_id[i], s->lang[i], base);
            goto done;
        }
        unit_seq[li * NU + ui] = (long)i;
    }
    free(in_base);

    /* slices (dataset, lang) for frequencies */
    slice_names = calloc(S, sizeof *slice_names);
    seq_slice = malloc(S * sizeof *seq_slice);
    n_slices = S;
    if (!slice_names || !seq_slice) goto nomem;
    for (size_t i = 0; i < S; i++) {
        size_t n = strlen(s->dataset[i]) + strlen(s->lang[i]) + 2;
        if (!(slice_names[i] = malloc(n))) goto nomem;
        snprintf(slice_names[i], n, "%s:%s", s->dataset[i], s->lang[i]);
    }
    if ((rc = strset_build(&slices_ds, slice_names, S, NULL))) goto nomem;
    for (size_t i = 0; i < S; i++) seq_slice[i] = strset_find(&slices_ds, slice_names[i]);
    const size_t NS = slices_ds.n;
    char base_slice[512];
    snprintf(base_slice, sizeof base_slice, "%s:%s", base, base_lang);
    const long base_si = strset_find(&slices_ds, base_slice);
    if (base_si < 0) {
        rc = mtr_fail(MTR_EINVAL, "%s: no sequences in the base slice %s", s->path, base_slice);
        goto done;
    }
    long rd_a = -1, rd_b = -1;
    if (opts->rd_a && opts->rd_b) {
        rd_a = strset_find(&slices_ds, opts->rd_a);
        rd_b = strset_find(&slices_ds, opts->rd_b);
        if (rd_a < 0 || rd_b < 0) {
            rc = mtr_fail(MTR_EINVAL, "%s: no sequences in slice '%s' (slices are dataset:lang)", s->path,
                                 rd_a < 0 ? opts->rd_a : opts->rd_b);
            goto done;
        }
    }

    q = malloc(S * E * sizeof *q);
    cnt = malloc(S * E * sizeof *cnt);
    freq = calloc(NS * L * E, sizeof *freq);
    weight = calloc(NS * L * E, sizeof *weight);
    slice_act = calloc(NS * L * E, sizeof *slice_act);
    slice_used = calloc(NS, sizeof *slice_used);
    slice_nseq = calloc(NS, sizeof *slice_nseq);
    div_en = malloc(NL * L * sizeof *div_en);
    npairs_en = calloc(NL, sizeof *npairs_en);
    div_pair = malloc(NL * NL * L * sizeof *div_pair);
    npairs_pair = calloc(NL * NL, sizeof *npairs_pair);
    if (!q || !cnt || !freq || !weight || !slice_act || !slice_used || !slice_nseq || !div_en || !npairs_en ||
        !div_pair || !npairs_pair)
        goto nomem;
    for (size_t i = 0; i < S; i++)
        if (s->n_used[i] > 0) {
            slice_nseq[seq_slice[i]]++;
            slice_used[seq_slice[i]] += s->n_used[i];
        }

    for (uint32_t l = 0; l < L; l++) {
        if ((rc = mtr_summaries_read_layer(s, l, q, cnt))) goto done;
        /* frequencies and weights per slice: means over the slice's sequences, in sequence order */
        for (size_t i = 0; i < S; i++) {
            if (s->n_used[i] == 0) continue;
            size_t sl = (size_t)seq_slice[i];
            double *fr = freq + (sl * L + l) * E, *wt = weight + (sl * L + l) * E;
            uint64_t *ac = slice_act + (sl * L + l) * E;
            for (uint32_t e = 0; e < E; e++) {
                fr[e] += (double)cnt[i * E + e] / s->n_used[i];
                wt[e] += q[i * E + e];
                ac[e] += cnt[i * E + e];
            }
        }
        /* divergences: every language pair over the units both have (the English row is Div from English) */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (size_t a = 0; a < NL; a++) {
            for (size_t b = 0; b < NL; b++) {
                if (b <= a) continue;
                double sum = 0;
                uint32_t np = 0;
                for (size_t u = 0; u < NU; u++) {
                    long sa = unit_seq[a * NU + u], sb = unit_seq[b * NU + u];
                    if (sa < 0 || sb < 0) continue;
                    sum += mtr_jsd_normalised(q + (size_t)sa * E, q + (size_t)sb * E, E, s->entropy[sa * L + l],
                                              s->entropy[sb * L + l]);
                    np++;
                }
                double d = np ? sum / np : NAN;
                div_pair[(a * NL + b) * L + l] = div_pair[(b * NL + a) * L + l] = d;
                npairs_pair[a * NL + b] = npairs_pair[b * NL + a] = np;
            }
            div_pair[(a * NL + a) * L + l] = 0;
        }
    }
    for (size_t sl = 0; sl < NS; sl++)
        for (size_t x = 0; x < (size_t)L * E; x++) {
            freq[sl * L * E + x] /= slice_nseq[sl] ? slice_nseq[sl] : 1;
            weight[sl * L * E + x] /= slice_nseq[sl] ? slice_nseq[sl] : 1;
        }
    for (size_t a = 0; a < NL; a++) {
        npairs_en[a] = npairs_pair[(size_t)en_idx * NL + a];
        for (uint32_t l = 0; l < L; l++) div_en[a * L + l] = div_pair[((size_t)en_idx * NL + a) * L + l];
    }

    /* ---- TSVs ---- */
    char hdr[256];
    if ((rc = tsv_open(&t_div, dir, MTR_TSV_DIV_FROM_EN, s, opts, base, "lang\tlayer\tdiv\tn_pairs"))) goto done;
    for (size_t a = 0; a < NL; a++) {
        if ((long)a == en_idx) continue;
        for (uint32_t l = 0; l < L; l++)
            fprintf(t_div.f, "%s\t%u\t%.17g\t%u\n", langs.v[a], l + 1, div_en[a * L + l], npairs_en[a]);
    }
    if ((rc = tsv_open(&t_miss, dir, MTR_TSV_UNITS_MISSING_EN, s, opts, base, "lang\tdataset\tunit_id"))) goto done;
    for (size_t a = 0; a < NL; a++)
        for (size_t u = 0; u < NU; u++)
            if ((long)a != en_idx && unit_seq[a * NU + u] >= 0 && unit_seq[(size_t)en_idx * NU + u] < 0)
                fprintf(t_miss.f, "%s\t%s\t%s\n", langs.v[a], base, units.v[u]);
    if ((rc = tsv_open(&t_pair, dir, MTR_TSV_DIV_PAIRWISE, s, opts, base, "layer\tlang_a\tlang_b\tdiv\tn_pairs")))
        goto done;
    for (uint32_t l = 0; l < L; l++)
        for (size_t a = 0; a < NL; a++)
            for (size_t b = a + 1; b < NL; b++)
                fprintf(t_pair.f, "%u\t%s\t%s\t%.17g\t%u\n", l + 1, langs.v[a], langs.v[b],
                        div_pair[(a * NL + b) * L + l], npairs_pair[a * NL + b]);
    /* entropy and consistency profiles over the base dataset */
    ent_tab = malloc(NL * L * sizeof *ent_tab);
    if (!ent_tab) goto nomem;
    if ((rc = tsv_open(&t_ent, dir, MTR_TSV_ENTROPY, s, opts, base, "lang\tlayer\tentropy\tn_seqs\ttoken_entropy")) ||
        (rc = tsv_open(&t_jac, dir, MTR_TSV_JACCARD, s, opts, base, "lang\tlayer\tjaccard\tn_seqs")))
        goto done;
    for (size_t a = 0; a < NL; a++)
        for (uint32_t l = 0; l < L; l++) {
            double h = 0, th = 0, j = 0;
            uint32_t n = 0, nj = 0;
            for (size_t u = 0; u < NU; u++) {
                long si = unit_seq[a * NU + u];
                if (si < 0) continue;
                h += s->entropy[si * L + l];
                th += s->token_entropy[si * L + l];
                n++;
                if (!isnan(s->jaccard[si * L + l])) {
                    j += s->jaccard[si * L + l];
                    nj++;
                }
            }
            ent_tab[a * L + l] = n ? h / n : NAN;
            fprintf(t_ent.f, "%s\t%u\t%.17g\t%u\t%.17g\n", langs.v[a], l + 1, n ? h / n : NAN, n, n ? th / n : NAN);
            fprintf(t_jac.f, "%s\t%u\t%.17g\t%u\n", langs.v[a], l + 1, nj ? j / nj : NAN, nj);
        }
    /* frequencies of every slice, and Delta against the base slice */
    if ((rc = tsv_open(&t_freq, dir, MTR_TSV_FREQ, s, opts, base, "dataset\tlang\tlayer\texpert\tfreq\tweight\tn_seqs")) ||
        (rc = tsv_open(&t_delta, dir, MTR_TSV_DELTA, s, opts, base,
                       "dataset\tlang\tlayer\texpert\tfreq\tbase_freq\tdelta")))
        goto done;
    for (size_t sl = 0; sl < NS; sl++) {
        const char *name = slices_ds.v[sl], *colon = strchr(name, ':');
        int dl = (int)(colon - name);
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t e = 0; e < E; e++) {
                size_t x = (sl * L + l) * E + e, bx = ((size_t)base_si * L + l) * E + e;
                fprintf(t_freq.f, "%.*s\t%s\t%u\t%u\t%.17g\t%.17g\t%u\n", dl, name, colon + 1, l + 1, e, freq[x],
                        weight[x], slice_nseq[sl]);
                if ((long)sl != base_si)
                    fprintf(t_delta.f, "%.*s\t%s\t%u\t%u\t%.17g\t%.17g\t%.17g\n", dl, name, colon + 1, l + 1, e,
                            freq[x], freq[bx], freq[x] - freq[bx]);
            }
    }
    if (rd_a >= 0) {
        snprintf(hdr, sizeof hdr, "layer\texpert\tp_a\tp_b\trd\t(a=%s b=%s, over tokens)", opts->rd_a, opts->rd_b);
        if ((rc = tsv_open(&t_rd, dir, MTR_TSV_RD, s, opts, base, hdr))) goto done;
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t e = 0; e < E; e++) {
                double pa = (double)slice_act[((size_t)rd_a * L + l) * E + e] / (double)slice_used[rd_a];
                double pb = (double)slice_act[((size_t)rd_b * L + l) * E + e] / (double)slice_used[rd_b];
                fprintf(t_rd.f, "%u\t%u\t%.17g\t%.17g\t%.17g\n", l + 1, e, pa, pb, pa - pb);
            }
    }
    /* specialisation over the languages of the base dataset, from per-language activation rates */
    if ((rc = tsv_open(&t_spec, dir, MTR_TSV_SPECIALISATION, s, opts, base,
                       "layer\texpert\ttop_lang\ttop_share\tnorm_entropy\tn_activations\tscored")))
        goto done;
    if ((rc = tsv_open(&t_top, dir, MTR_TSV_TOP_EXPERTS, s, opts, base, "lang\tlayer\trank\texpert\tfreq\tdelta_en")))
        goto done;
    {
        long *lang_slice = malloc(NL * sizeof *lang_slice);
        if (!lang_slice) goto nomem;
        for (size_t a = 0; a < NL; a++) {
            char name[512];
            snprintf(name, sizeof name, "%s:%s", base, langs.v[a]);
            lang_slice[a] = strset_find(&slices_ds, name);
        }
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t e = 0; e < E; e++) {
                double tot = 0, best = -1, h = 0;
                uint64_t nact = 0;
                size_t top = 0;
                for (size_t a = 0; a < NL; a++) {
                    double f = freq[((size_t)lang_slice[a] * L + l) * E + e];
                    nact += slice_act[((size_t)lang_slice[a] * L + l) * E + e];
                    tot += f;
                    if (f > best) best = f, top = a;
                }
                for (size_t a = 0; a < NL && tot > 0; a++) {
                    double p = freq[((size_t)lang_slice[a] * L + l) * E + e] / tot;
                    if (p > 0) h -= p * log(p);
                }
                bool scored = nact >= opts->min_count && tot > 0 && NL > 1;
                fprintf(t_spec.f, "%u\t%u\t%s\t%.17g\t%.17g\t%llu\t%d\n", l + 1, e, langs.v[top],
                        scored ? best / tot : NAN, scored ? h / log((double)NL) : NAN, (unsigned long long)nact,
                        scored);
            }
        /* top experts per language and layer, by frequency (ties: lower expert id) */
        uint16_t ids[MTR_MAX_TOPK];
        float *f32 = malloc(E * sizeof *f32);
        uint32_t topn = opts->top_n < MTR_MAX_TOPK ? opts->top_n : MTR_MAX_TOPK;
        if (topn > E) topn = E;
        for (size_t a = 0; f32 && a < NL; a++)
            for (uint32_t l = 0; l < L; l++) {
                const double *fr = freq + ((size_t)lang_slice[a] * L + l) * E;
                const double *fe = freq + ((size_t)lang_slice[en_idx] * L + l) * E;
                for (uint32_t e = 0; e < E; e++) f32[e] = (float)fr[e];
                mtr_topk(ids, f32, E, topn);
                for (uint32_t k = 0; k < topn; k++)
                    fprintf(t_top.f, "%s\t%u\t%u\t%u\t%.17g\t%.17g\n", langs.v[a], l + 1, k + 1, ids[k], fr[ids[k]],
                            fr[ids[k]] - fe[ids[k]]);
            }
        free(f32);
        free(lang_slice);
    }

    /* ---- tables.h5 ---- */
    {
        char path[4200];
        snprintf(path, sizeof path, "%s/" MTR_OUT_TABLES, dir);
        h5 = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        if (h5 < 0) {
            rc = mtr_fail(MTR_EIO, "%s: cannot create", path);
            goto done;
        }
        hsize_t d2[2] = {NL, L}, d3[3] = {NL, NL, L}, dsl[3] = {NS, L, E};
        if (h5_put_strs(h5, MTR_T_LANGS, langs.v, NL) || h5_put_strs(h5, MTR_T_SLICES, slices_ds.v, NS) ||
            h5_put(h5, MTR_T_DIV_FROM_EN, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, 2, d2, div_en) ||
            h5_put(h5, MTR_T_DIV_PAIRWISE, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, 3, d3, div_pair) ||
            h5_put(h5, MTR_T_FREQ, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, 3, dsl, freq) ||
            h5_put(h5, MTR_T_WEIGHT, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, 3, dsl, weight) ||
            h5_put(h5, MTR_T_ENTROPY, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, 2, d2, ent_tab) ||
            h5_put_attr(h5, "format", "moetrace-tables") || h5_put_attr(h5, "english", en) ||
            h5_put_attr(h5, "base_dataset", base) || h5_put_attr(h5, "base_slice", base_slice) ||
            h5_put_attr(h5, "summaries", s->path) || h5_put_attr(h5, "settings", s->settings ? s->settings : "{}")) {
            rc = mtr_fail(MTR_EIO, "%s: cannot write tables", path);
            goto done;
        }
    }
    goto done;
nomem:
    rc = mtr_fail(MTR_ENOMEM, "out of memory");
done:;
    tsv *all[] = {&t_div, &t_pair, &t_ent, &t_jac, &t_freq, &t_delta, &t_spec, &t_top, &t_rd, &t_miss};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        int c = tsv_close(all[i]);
        if (!rc) rc = c;
    }
    if (h5 >= 0) H5Fclose(h5);
    free(datasets.v);
    free(langs.v);
    free(units.v);
    free(slices_ds.v);
    free(unit_seq);
    if (slice_names)
        for (size_t i = 0; i < n_slices; i++) free(slice_names[i]);
    free(slice_names);
    free(seq_slice);
    free(q);
    free(cnt);
    free(freq);
    free(weight);
    free(div_en);
    free(ent_tab);
    free(div_pair);
    free(npairs_en);
    free(npairs_pair);
    free(slice_nseq);
    free(slice_act);
    free(slice_used);
    return rc;
}
