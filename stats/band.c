/* band.c — the middle band (docs/ARCHITECTURE.md §3 "Middle band"): parsed from "A-B", or detected from the U-shaped
 * divergence-from-English curve as the longest run of layers whose language-mean divergence is at most
 * min + alpha (max - min). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats_internal.h"

int mtr_band_parse(mtr_band *out, const char *s, uint32_t n_layers)
{
    char buf[64];
    memset(out, 0, sizeof *out);
    if (!s || strlen(s) >= sizeof buf) return mtr_fail(MTR_EINVAL, "band '%s' is not A-B", s ? s : "");
    snprintf(buf, sizeof buf, "%s", s);
    char *dash = strchr(buf, '-');
    if (!dash) return mtr_fail(MTR_EINVAL, "band '%s' is not A-B (1-based, inclusive)", s);
    *dash = '\0';
    if (mtr_stats_parse_u32(&out->first, buf) || mtr_stats_parse_u32(&out->last, dash + 1) || out->first < 1 ||
        out->first > out->last || (n_layers && out->last > n_layers))
        return mtr_fail(MTR_EINVAL, "band '%s' is not A-B with 1 <= A <= B <= %u (1-based, inclusive)", s,
                              n_layers);
    out->threshold = NAN;
    out->alpha = NAN;
    return 0;
}

int mtr_band_detect(mtr_band *out, const double *curve, size_t stride, size_t n_layers, double alpha)
{
    memset(out, 0, sizeof *out);
    if (n_layers < 3) return mtr_fail(MTR_EDATA, "%zu layers: band detection needs at least 3", n_layers);
    if (!(alpha >= 0.0 && alpha <= 1.0)) return mtr_fail(MTR_EINVAL, "alpha %g is not in [0, 1]", alpha);
    double lo = INFINITY, hi = -INFINITY;
    for (size_t l = 0; l < n_layers; l++) {
        double v = curve[l * stride];
        if (isnan(v)) continue;
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    if (!isfinite(lo)) return mtr_fail(MTR_EDATA, "the divergence curve has no finite value");
    double thr = lo + alpha * (hi - lo);
    size_t best_a = 0, best_n = 0, run_a = 0, run_n = 0;
    for (size_t l = 0; l < n_layers; l++) {
        double v = curve[l * stride];
        if (!isnan(v) && v <= thr) {
            if (run_n == 0) run_a = l;
            run_n++;
            if (run_n > best_n) {
                best_n = run_n;
                best_a = run_a;
            }
        } else {
            run_n = 0;
        }
    }
    out->first = (uint32_t)best_a + 1;
    out->last = (uint32_t)(best_a + best_n);
    out->threshold = thr;
    out->alpha = alpha;
    out->detected = true;
    return 0;
}

int mtr_band_curve(double *curve, const mtr_tables *t, const char *reference)
{
    if (!t->div_en) return mtr_fail(MTR_ENOTFOUND, "%s: no divergence-from-English table (div_from_en.tsv)",
                                          t->source);
    for (uint32_t l = 0; l < t->n_layers; l++) {
        double s = 0.0;
        size_t n = 0;
        for (size_t g = 0; g < t->n_langs; g++) {
            double v = t->div_en[g * t->n_layers + l];
            if (!strcmp(t->langs[g], reference) || isnan(v)) continue;
            s += v;
            n++;
        }
        curve[l] = n ? s / (double)n : NAN;
    }
    return 0;
}
