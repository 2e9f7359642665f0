/* reference.c — the plain serial reference of phase 1, for tests: whole sequences read with mtr_run_read_logits,
 * every quantity in double precision with the textbook formula (softmax with exp and log per expert, a full stable
 * sort for the top-k, sets compared element by element for Jaccard). Slow on purpose; shares no kernel with
 * kernels.c. It writes the same summaries layout, so the two files can be compared field by field. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "reduce_internal.h"

static uint64_t ref_splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

typedef struct {
    double v;
    uint32_t e;
} scored;

static int by_score(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->e < y->e ? -1 : 1;
}

/* selection and weights from the definitions of docs/ARCHITECTURE.md §3 / FORMAT.md §2.2 */
static void ref_route(const mtr_model_info *m, uint32_t l, const double *z, uint32_t *ids, double *w)
{
    const uint32_t E = m->n_experts, K = m->top_k;
    double *score = malloc(E * sizeof *score), mx = -INFINITY, sum = 0;
    scored *sc = malloc(E * sizeof *sc);
    for (uint32_t e = 0; e < E; e++) mx = fmax(mx, z[e]);
    for (uint32_t e = 0; e < E; e++) sum += exp(z[e] - mx);
    for (uint32_t e = 0; e < E; e++) {
        if (m->score_fn == MTR_SCORE_SOFTMAX)
            score[e] = exp(z[e] - mx) / sum;
        else if (m->score_fn == MTR_SCORE_SIGMOID)
            score[e] = 1.0 / (1.0 + exp(-z[e]));
        else
            score[e] = z[e];
        sc[e].v = score[e] + (m->selection_bias ? m->selection_bias[(size_t)l * E + e] : 0.0);
        sc[e].e = e;
    }
    qsort(sc, E, sizeof *sc, by_score);
    double tot = 0, mk = -INFINITY, sk = 0;
    for (uint32_t i = 0; i < K; i++) {
        ids[i] = sc[i].e;
        tot += score[ids[i]];
        mk = fmax(mk, z[ids[i]]);
    }
    for (uint32_t i = 0; i < K; i++) sk += exp(z[ids[i]] - mk);
    for (uint32_t i = 0; i < K; i++) {
        if (m->score_fn == MTR_SCORE_TOPK_SOFTMAX)
            w[i] = exp(z[ids[i]] - mk) / sk;
        else if (m->score_fn == MTR_SCORE_SPARSEMIXER) {
            /* round i: softmax at the i-th largest logit t over the experts left whose relative gap
             * (t - z_e) / max(|z_e|, t) is at most 2 eps */
            double t = z[ids[i]], se = 0;
            for (uint32_t e = 0; e < E; e++) {
                bool earlier = false;
                for (uint32_t j = 0; j < i; j++) earlier = earlier || ids[j] == e;
                double gap = (t - z[e]) / fmax(fabs(z[e]), t);
                if (!earlier && !(gap > 2 * m->sparsemixer_eps)) se += exp(z[e] - t);
            }
            w[i] = 1.0 / se;
        } else
            w[i] = m->renormalize ? score[ids[i]] / tot : score[ids[i]];
    }
    free(score);
    free(sc);
}

int mtr_summarize_reference(const char *out_path, mtr_run *r, const mtr_summ_opts *opts)
{
    const mtr_model_info *m = mtr_run_model(r);
    const uint32_t L = m->n_layers, E = m->n_experts, K = m->top_k;
    const size_t le = (size_t)L * E;
    summ_writer *out = NULL;
    char *settings = mtr_summ_settings_json(opts, NULL, 0);
    int rc = summ_writer_create(&out, out_path, m, opts->topk_weights, settings);
    free(settings);
    if (rc) return rc;
    double *q = malloc(le * 8), *ent = malloc(L * 8), *tent = malloc(L * 8), *jac = malloc(L * 8);
    double *z = malloc(E * 8), *w = malloc(K * 8);
    uint32_t *a = malloc(le * 4), ids[MTR_MAX_TOPK];
    for (size_t i = 0; i < mtr_run_n_seqs(r) && !rc; i++) {
        const mtr_seq_info *s = mtr_run_seq(r, i);
        const uint32_t T = s->n_tokens;
        float *logits = malloc((size_t)T * le * 4);
        uint8_t *roles = malloc(T);
        uint32_t *sets = malloc((size_t)T * L * K * 4), nu = 0, nbad = 0;
        if ((rc = mtr_run_read_logits(r, i, logits)) || (rc = mtr_run_read_tokens(r, i, NULL, NULL, roles))) {
            rc = mtr_fail(rc, "%s", mtr_errmsg());
            free(logits);
            free(roles);
            free(sets);
            break;
        }
        memset(q, 0, le * 8);
        memset(a, 0, le * 4);
        memset(tent, 0, L * 8);
        for (uint32_t t = 0; t < T; t++) {
            const float *row = logits + (size_t)t * le;
            if (!(opts->role_mask & (1u << roles[t]))) continue;
            bool finite = true;
            for (size_t x = 0; x < le; x++) finite &= isfinite(row[x]) != 0;
            if (!finite) {
                nbad++;
                continue;
            }
            for (uint32_t l = 0; l < L; l++) {
                double mx = -INFINITY, sum = 0, h = 0;
                for (uint32_t e = 0; e < E; e++) z[e] = row[(size_t)l * E + e], mx = fmax(mx, z[e]);
                for (uint32_t e = 0; e < E; e++) sum += exp(z[e] - mx);
                for (uint32_t e = 0; e < E; e++) {
                    double p = exp(z[e] - mx) / sum;
                    if (p > 0) h -= p * log(p);
                    if (!opts->topk_weights) q[(size_t)l * E + e] += p;
                }
                tent[l] += h;
                ref_route(m, l, z, ids, w);
                for (uint32_t k = 0; k < K; k++) {
                    a[(size_t)l * E + ids[k]]++;
                    sets[((size_t)nu * L + l) * K + k] = ids[k];
                    if (opts->topk_weights) q[(size_t)l * E + ids[k]] += w[k];
                }
            }
            nu++;
        }
        uint32_t jp = 0;
        for (uint32_t l = 0; l < L; l++) {
            double hq = 0;
            for (uint32_t e = 0; e < E; e++) {
                double p = q[(size_t)l * E + e] / nu;
                q[(size_t)l * E + e] = nu ? p : NAN;
                if (p > 0) hq -= p * log(p);
            }
            ent[l] = nu ? hq : NAN;
            tent[l] = nu ? tent[l] / nu : NAN;
            /* Jaccard: the same pair rule as the fast path (all pairs, or the same seeded sample) */
            uint64_t all = nu > 1 ? (uint64_t)nu * (nu - 1) / 2 : 0, st = opts->seed ^ (s->seq_id * 0x9e3779b97f4a7c15ULL);
            double sum = 0;
            uint32_t np = 0;
            for (uint64_t p = 0; nu > 1 && p < (all <= opts->jaccard_pairs ? all : opts->jaccard_pairs); p++) {
                uint32_t x, y;
                if (all <= opts->jaccard_pairs) {
                    /* p-th pair in (i, j > i) order */
                    uint64_t rem = p;
                    x = 0;
                    while (rem >= nu - 1 - x) rem -= nu - 1 - x++;
                    y = x + 1 + (uint32_t)rem;
                } else {
                    x = (uint32_t)(ref_splitmix(&st) % nu);
                    y = (uint32_t)(ref_splitmix(&st) % (nu - 1));
                    if (y >= x) y++;
                }
                const uint32_t *A = sets + ((size_t)x * L + l) * K, *B = sets + ((size_t)y * L + l) * K;
                uint32_t inter = 0;
                for (uint32_t u = 0; u < K; u++)
                    for (uint32_t v = 0; v < K; v++) inter += A[u] == B[v];
                sum += (double)inter / (double)(2 * K - inter);
                np++;
            }
            jac[l] = np ? sum / np : NAN;
            jp = np;
        }
        summ_row row = {s->seq_id, s->unit_id, s->lang, s->dataset, T, nu, nbad, jp, q, a, ent, tent, jac};
        rc = summ_writer_append(out, &row);
        free(logits);
        free(roles);
        free(sets);
    }
    free(q);
    free(ent);
    free(tent);
    free(jac);
    free(z);
    free(w);
    free(a);
    if (!rc) return summ_writer_close(out);
    summ_writer_destroy(out);
    return rc;
}
