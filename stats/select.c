/* select.c — expert selection (docs/ARCHITECTURE.md §3 "Specialisation") and the controls of §4: task experts
 * A+(D, tau, band), multilingual-specialised experts (Delta > tau for any non-English language, or the
 * 3-standard-deviation rule on mean weights), and control sets matched in size: outside the band, multilingual
 * instead of task experts, random experts matched per layer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_statistics_double.h>

#include "stats_internal.h"

void mtr_expert_set_free(mtr_expert_set *s)
{
    if (!s) return;
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

bool mtr_expert_set_has(const mtr_expert_set *s, uint32_t layer, uint32_t expert)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].layer == layer && s->v[i].expert == expert) return true;
    return false;
}

static int by_layer_expert(const void *a, const void *b)
{
    const mtr_expert *x = a, *y = b;
    if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
    return x->expert < y->expert ? -1 : x->expert > y->expert;
}

/* descending score, then (layer, expert): a total order so selections do not depend on qsort's stability */
static int by_score_desc(const void *a, const void *b)
{
    const mtr_expert *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return by_layer_expert(a, b);
}

static bool in_band(const mtr_band *band, uint32_t l0)
{
    return !band || (l0 + 1 >= band->first && l0 + 1 <= band->last);
}

/* Keep candidates (cand, n) into out: at most cap per layer (0 = no cap) and at most max_total (0 = all), by
 * descending score; out sorted by (layer, expert). cand is reordered. */
static int keep(mtr_expert_set *out, mtr_expert *cand, size_t n, uint32_t cap, size_t max_total, uint32_t n_layers)
{
    uint32_t *per = calloc(n_layers + 1, sizeof *per);
    memset(out, 0, sizeof *out);
    if (!per) return mtr_fail(MTR_ENOMEM, "out of memory");
    out->v = malloc((n + 1) * sizeof *out->v);
    if (!out->v) {
        free(per);
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    qsort(cand, n, sizeof *cand, by_score_desc);
    for (size_t i = 0; i < n; i++) {
        if (max_total && out->n == max_total) break;
        if (cap && per[cand[i].layer] >= cap) {
            out->n_dropped++;
            continue;
        }
        per[cand[i].layer]++;
        out->v[out->n++] = cand[i];
    }
    qsort(out->v, out->n, sizeof *out->v, by_layer_expert);
    free(per);
    return 0;
}

int mtr_select_delta(double *delta, const mtr_tables *t, const char *dataset, const char *lang,
                     const char *base_dataset, const char *base_lang)
{
    int d = mtr_tables_dataset(t, dataset), g = mtr_tables_lang(t, lang);
    int bd = mtr_tables_dataset(t, base_dataset), bg = mtr_tables_lang(t, base_lang);
    size_t nle = (size_t)t->n_layers * t->n_experts;
    if (d < 0) return mtr_fail(MTR_ENOTFOUND, "%s: no dataset '%s' in the frequency tables", t->source, dataset);
    if (g < 0) return mtr_fail(MTR_ENOTFOUND, "%s: no language '%s' in the tables", t->source, lang);
    if (t->delta) {
        const double *src = t->delta + ((size_t)d * t->n_langs + (size_t)g) * nle;
        size_t have = 0;
        for (size_t i = 0; i < nle; i++) have += !isnan(src[i]);
        if (have) {
            memcpy(delta, src, nle * sizeof *delta);
            return 0;
        }
    }
    if (!t->freq)
        return mtr_fail(MTR_ENOTFOUND, "%s: no Delta for %s/%s in delta.tsv and no freq.tsv to compute it",
                              t->source, dataset, lang);
    if (bd < 0 || bg < 0)
        return mtr_fail(MTR_ENOTFOUND, "%s: base corpus %s/%s not in freq.tsv", t->source, base_dataset,
                              base_lang);
    const double *f = t->freq + ((size_t)d * t->n_langs + (size_t)g) * nle;
    const double *b = t->freq + ((size_t)bd * t->n_langs + (size_t)bg) * nle;
    size_t have = 0;
    for (size_t i = 0; i < nle; i++) {
        delta[i] = f[i] - b[i];
        have += !isnan(delta[i]);
    }
    if (!have)
        return mtr_fail(MTR_ENOTFOUND, "%s: no frequencies for %s/%s in freq.tsv", t->source, dataset, lang);
    return 0;
}

int mtr_select_task(mtr_expert_set *out, const mtr_tables *t, const char *dataset, const char *generic,
                    const char *english, double tau, const mtr_band *band, uint32_t max_per_layer)
{
    int rc;
    size_t nle = (size_t)t->n_layers * t->n_experts, n = 0;
    double *delta = malloc((nle + 1) * sizeof *delta);
    mtr_expert *cand = malloc((nle + 1) * sizeof *cand);
    memset(out, 0, sizeof *out);
    if (!delta || !cand) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    if ((rc = mtr_select_delta(delta, t, dataset, english, generic, english))) goto out_free;
    for (uint32_t l = 0; l < t->n_layers; l++)
        for (uint32_t e = 0; e < t->n_experts && in_band(band, l); e++) {
            double v = delta[(size_t)l * t->n_experts + e];
            if (!isnan(v) && v > tau) cand[n++] = (mtr_expert){l, e, v};
        }
    rc = keep(out, cand, n, max_per_layer, 0, t->n_layers);
out_free:
    free(cand);
    free(delta);
    return rc;
}

int mtr_select_multilingual(mtr_expert_set *out, const mtr_tables *t, const char *generic, const char *english,
                            mtr_ml_rule rule, double tau, const mtr_band *band)
{
    int rc = 0;
    int gd = mtr_tables_dataset(t, generic), ge = mtr_tables_lang(t, english);
    size_t nle = (size_t)t->n_layers * t->n_experts, n = 0;
    double *best = NULL, *diff = NULL;
    mtr_expert *cand = NULL;
    memset(out, 0, sizeof *out);
    if (!t->freq) return mtr_fail(MTR_ENOTFOUND, "%s: multilingual experts need freq.tsv", t->source);
    if (gd < 0 || ge < 0)
        return mtr_fail(MTR_ENOTFOUND, "%s: generic corpus %s/%s not in freq.tsv", t->source, generic, english);
    best = malloc((nle + 1) * sizeof *best);
    diff = malloc(((size_t)t->n_experts + 1) * sizeof *diff);
    cand = malloc((nle + 1) * sizeof *cand);
    if (!best || !diff || !cand) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    for (size_t i = 0; i < nle; i++) best[i] = -INFINITY;
    const double *src = rule == MTR_ML_3SD ? t->weight : t->freq;
    const double *eng = src + ((size_t)gd * t->n_langs + (size_t)ge) * nle;
    size_t n_langs_used = 0;
    for (size_t g = 0; g < t->n_langs; g++) {
        if ((int)g == ge) continue;
        const double *x = src + ((size_t)gd * t->n_langs + g) * nle;
        bool any = false;
        for (uint32_t l = 0; l < t->n_layers; l++) {
            size_t m = 0;
            for (uint32_t e = 0; e < t->n_experts; e++) {
                double v = x[(size_t)l * t->n_experts + e] - eng[(size_t)l * t->n_experts + e];
                diff[e] = v;
                m += !isnan(v);
            }
            if (m < t->n_experts) continue; /* the layer is not complete for this language */
            any = true;
            double thr = tau;
            if (rule == MTR_ML_3SD) {
                double mean = gsl_stats_mean(diff, 1, t->n_experts);
                thr = mean + 3.0 * gsl_stats_sd_with_fixed_mean(diff, 1, t->n_experts, mean);
            }
            for (uint32_t e = 0; e < t->n_experts; e++) {
                double margin = rule == MTR_ML_3SD ? diff[e] - thr : diff[e];
                if (diff[e] > thr && margin > best[(size_t)l * t->n_experts + e])
                    best[(size_t)l * t->n_experts + e] = rule == MTR_ML_3SD ? margin : diff[e];
            }
        }
        n_langs_used += any;
    }
    if (!n_langs_used) {
        rc = mtr_fail(MTR_ENOTFOUND, "%s: no non-English language on %s in freq.tsv", t->source, generic);
        goto out_free;
    }
    for (uint32_t l = 0; l < t->n_layers; l++)
        for (uint32_t e = 0; e < t->n_experts && in_band(band, l); e++)
            if (isfinite(best[(size_t)l * t->n_experts + e]))
                cand[n++] = (mtr_expert){l, e, best[(size_t)l * t->n_experts + e]};
    rc = keep(out, cand, n, 0, 0, t->n_layers);
out_free:
    free(cand);
    free(diff);
    free(best);
    return rc;
}

int mtr_control_outside(mtr_expert_set *out, const mtr_expert_set *sel, const double *delta, uint32_t n_layers,
                        uint32_t n_experts, const mtr_band *band, uint32_t max_per_layer)
{
    size_t nle = (size_t)n_layers * n_experts, n = 0;
    mtr_expert *cand = malloc((nle + 1) * sizeof *cand);
    memset(out, 0, sizeof *out);
    if (!cand) return mtr_fail(MTR_ENOMEM, "out of memory");
    for (uint32_t l = 0; l < n_layers; l++)
        for (uint32_t e = 0; e < n_experts && !in_band(band, l); e++) {
            double v = delta[(size_t)l * n_experts + e];
            if (!isnan(v)) cand[n++] = (mtr_expert){l, e, v};
        }
    int rc = keep(out, cand, n, max_per_layer, sel->n, n_layers);
    free(cand);
    return rc;
}

int mtr_control_multilingual(mtr_expert_set *out, const mtr_expert_set *sel, const mtr_expert_set *ml)
{
    uint32_t n_layers = 0;
    mtr_expert *cand = malloc((ml->n + 1) * sizeof *cand);
    memset(out, 0, sizeof *out);
    if (!cand) return mtr_fail(MTR_ENOMEM, "out of memory");
    memcpy(cand, ml->v, ml->n * sizeof *cand);
    for (size_t i = 0; i < ml->n; i++)
        if (ml->v[i].layer + 1 > n_layers) n_layers = ml->v[i].layer + 1;
    int rc = keep(out, cand, ml->n, 0, sel->n, n_layers);
    free(cand);
    return rc;
}

int mtr_control_random(mtr_expert_set *out, const mtr_expert_set *sel, uint32_t n_experts, uint64_t seed)
{
    int rc = 0;
    gsl_rng *rng = mtr_stats_rng(seed);
    uint32_t *pool = malloc(((size_t)n_experts + 1) * sizeof *pool);
    memset(out, 0, sizeof *out);
    out->v = malloc((sel->n + 1) * sizeof *out->v);
    if (!rng || !pool || !out->v) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    /* sel is sorted by layer: walk its layers in order, drawing a partial Fisher-Yates over the layer's other experts */
    for (size_t i = 0; i < sel->n;) {
        uint32_t l = sel->v[i].layer;
        size_t j = i;
        while (j < sel->n && sel->v[j].layer == l) j++;
        size_t want = j - i, m = 0;
        for (uint32_t e = 0; e < n_experts; e++)
            if (!mtr_expert_set_has(sel, l, e)) pool[m++] = e;
        if (want > m) want = m;
        for (size_t k = 0; k < want; k++) {
            size_t r = k + (size_t)gsl_rng_uniform_int(rng, (unsigned long)(m - k));
            uint32_t tmp = pool[k];
            pool[k] = pool[r];
            pool[r] = tmp;
            out->v[out->n++] = (mtr_expert){l, pool[k], NAN};
        }
        i = j;
    }
    qsort(out->v, out->n, sizeof *out->v, by_layer_expert);
out_free:
    if (rc) mtr_expert_set_free(out);
    free(pool);
    gsl_rng_free(rng);
    return rc;
}
