/* score.c — multiple-choice scoring (mtr_eval_score): the log-likelihood of every choice's continuation after the
 * rendered prompt, as lm-evaluation-harness computes it, the prediction and the per-byte prediction, accuracy per
 * (language, dataset). The prompt's KV cache serves every choice whose tokens extend the prompt's. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval_internal.h"

/* log softmax(logits)[id] over V entries, in double */
static double log_softmax_at(const float *logits, uint32_t V, int32_t id)
{
    float mx = logits[0];
    for (uint32_t v = 1; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
    double s = 0;
    for (uint32_t v = 0; v < V; v++) s += exp((double)logits[v] - mx);
    return (double)logits[id] - mx - log(s);
}

/* Scratch of one scoring run. */
typedef struct {
    mtr_tok_ids ctx, whole;
    uint8_t *roles;
    float *last;    /* (vocab) the logits after the prompt */
    double *lln;    /* (MTR_CORPUS_MAX_CHOICES) per-byte log-likelihoods */
} score_scratch;

/* The tokens of prompt + continuation k into s->whole: with a chat template the continuation's tokens follow the
 * rendered prompt's directly; else, as lm-evaluation-harness, encode(context + continuation). */
static int continuation_tokens(mtr_eval *ev, score_scratch *s, const mtr_prompt_mc *pm, size_t k)
{
    size_t clen = strlen(pm->continuations[k]);
    if (ev->o.chat) {
        s->whole.n = 0;
        if (s->whole.cap < s->ctx.n) {
            int32_t *grown = realloc(s->whole.ids, s->ctx.n * sizeof *grown);
            if (!grown) return mtr_fail(MTR_ENOMEM, "out of memory for %zu tokens", s->ctx.n);
            s->whole.ids = grown, s->whole.cap = s->ctx.n;
        }
        memcpy(s->whole.ids, s->ctx.ids, s->ctx.n * sizeof *s->whole.ids);
        s->whole.n = s->ctx.n;
        return mtr_tok_encode(&s->whole, ev->tok, pm->continuations[k], clen, 0);
    }
    size_t plen = strlen(pm->prompt);
    char *joint = malloc(plen + clen + 1);
    if (!joint) return mtr_fail(MTR_ENOMEM, "out of memory for a prompt of %zu bytes", plen + clen);
    memcpy(joint, pm->prompt, plen);
    memcpy(joint + plen, pm->continuations[k], clen + 1);
    int rc = mtr_eval_tokenize(&s->whole, &s->roles, ev, joint, NULL, 0, true);
    free(joint);
    return rc;
}

/* Score item i (index in the set) into *item and ll (n_choices). Errors carry "FILE: item N: ". */
static int score_item(mtr_eval *ev, score_scratch *s, mtr_eval_item *item, double *ll, const mtr_mc_item *it,
                      size_t i, const mtr_prompts *prompts, const char *name)
{
    const uint32_t V = ev->cfg->vocab_size;
    mtr_prompt_mc pm = {NULL, NULL, 0};
    int rc = mtr_prompt_render_mc(&pm, prompts, name, it);
    if (rc) return mtr_fail(rc == MTR_ENOMEM ? rc : MTR_EDATA, "%s: item %zu: %s", it->file, i + 1, mtr_errmsg());
    if ((rc = mtr_eval_tokenize(&s->ctx, &s->roles, ev, pm.prompt, NULL, 0, true))) {
        rc = mtr_fail(rc == MTR_ENOMEM ? rc : MTR_EDATA, "%s: item %zu: %s", it->file, i + 1, mtr_errmsg());
        goto done;
    }
    if (s->ctx.n + 1 > ev->o.max_tokens) {
        rc = mtr_fail(MTR_EDATA, "%s: item %zu: the prompt has %zu tokens, more than max_tokens %u allows (%u)",
                      it->file, i + 1, s->ctx.n, ev->o.max_tokens, ev->o.max_tokens - 1);
        goto done;
    }
    const uint32_t c = (uint32_t)s->ctx.n;
    if ((rc = mtr_eval_prefill(ev, s->ctx.ids, c, ev->w != NULL, 1))) goto engine_error;
    mtr_seq_meta meta = {i, it->unit_id, it->lang, it->dataset, c, 0};
    if (ev->w && (rc = mtr_eval_record(ev, 0, &meta, s->ctx.ids, s->roles))) {
        rc = mtr_fail(rc, "%s: item %zu: recording: %s", it->file, i + 1, mtr_errmsg());
        goto done;
    }
    /* logits were asked, so the cache holds the whole prompt and each choice continues from it */
    bool cache_is_ctx = true;
    memcpy(s->last, ev->logits, (size_t)V * sizeof *s->last);
    for (size_t k = 0; k < it->n_choices; k++) {
        size_t clen = strlen(pm.continuations[k]);
        if ((rc = continuation_tokens(ev, s, &pm, k))) {
            rc = mtr_fail(rc == MTR_ENOMEM ? rc : MTR_EDATA, "%s: item %zu: %s", it->file, i + 1, mtr_errmsg());
            goto done;
        }
        const mtr_tok_ids *w = &s->whole;
        uint32_t p = 0;
        while (p < c && p < w->n && w->ids[p] == s->ctx.ids[p]) p++;
        if (w->n <= c || w->n > ev->o.max_tokens) {
            ll[k] = -INFINITY;
            s->lln[k] = -INFINITY;
            continue;
        }
        uint32_t nc = (uint32_t)w->n - c;
        if (nc > ev->o.batch) {
            rc = mtr_fail(MTR_EDATA, "%s: item %zu: choice %zu has %u tokens, more than batch %u", it->file, i + 1,
                          k, nc, ev->o.batch);
            goto done;
        }
        double sum = 0;
        if (p == c) {
            /* the prompt's cache and last logits serve every choice */
            if (!cache_is_ctx && (rc = mtr_eval_prefill(ev, s->ctx.ids, c, false, 1))) goto engine_error;
            cache_is_ctx = true;
            sum += log_softmax_at(s->last, V, w->ids[c]);
            if (nc > 1) {
                if ((rc = mtr_session_truncate(ev->sess, c))) goto engine_error;
                mtr_forward_io io = eval_io(ev);
                io.logits = ev->logits;
                io.n_logits = nc - 1;
                if ((rc = mtr_model_forward(ev->sess, w->ids + c, nc - 1, &io))) goto engine_error;
                for (uint32_t q = 1; q < nc; q++)
                    sum += log_softmax_at(ev->logits + (size_t)(q - 1) * V, V, w->ids[c + q]);
            }
        } else {
            /* the continuation changed how the prompt's end tokenises: run the whole text, read the rows that
             * predict the continuation (positions c-1 .. n-2) */
            cache_is_ctx = false;
            if ((rc = mtr_eval_prefill(ev, w->ids, (uint32_t)w->n - 1, false, nc))) goto engine_error;
            for (uint32_t q = 0; q < nc; q++) sum += log_softmax_at(ev->logits + (size_t)q * V, V, w->ids[c + q]);
        }
        ll[k] = sum;
        s->lln[k] = sum / (double)(clen ? clen : 1);
        ev->tokens += nc;
    }
    size_t pred = 0, pred_n = 0;
    for (size_t k = 1; k < it->n_choices; k++) {
        if (ll[k] > ll[pred]) pred = k;
        if (s->lln[k] > s->lln[pred_n]) pred_n = k;
    }
    item->gold = it->answer;
    item->pred = pred;
    item->pred_norm = pred_n;
    item->correct = pred == it->answer;
    item->correct_norm = pred_n == it->answer;
    goto done;
engine_error:
    rc = mtr_fail(rc, "%s: item %zu: %s", it->file, i + 1, mtr_errmsg());
done:
    mtr_prompt_mc_free(&pm);
    return rc;
}

int mtr_eval_score(mtr_eval_result *out, mtr_eval *ev, const mtr_mc *set, const mtr_prompts *prompts,
                   const char *template_name)
{
    mtr_eval_result r = MTR_EVAL_RESULT_INIT;
    r.kind = MTR_EVAL_SCORE;
    *out = r;
    int rc = mtr_eval_check_template(prompts, template_name, MTR_EVAL_SCORE);
    if (rc) return rc;
    score_scratch s = {MTR_TOK_IDS_INIT, MTR_TOK_IDS_INIT, NULL, NULL, NULL};
    s.last = malloc((size_t)ev->cfg->vocab_size * sizeof *s.last);
    s.lln = malloc(MTR_CORPUS_MAX_CHOICES * sizeof *s.lln);
    if (!s.last || !s.lln) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory for the logits of %u ids", ev->cfg->vocab_size);
        goto done;
    }
    const size_t n = mtr_mc_count(set);
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        const mtr_mc_item *it = mtr_mc_get(set, i);
        mtr_eval_item *item = eval_item_add(&r, &cap);
        if (!item) {
            rc = MTR_ENOMEM;
            goto done;
        }
        item->unit_id = it->unit_id, item->lang = it->lang, item->dataset = it->dataset;
        item->n_choices = it->n_choices;
        if (!(item->loglik = calloc(it->n_choices ? it->n_choices : 1, sizeof *item->loglik))) {
            rc = mtr_fail(MTR_ENOMEM, "out of memory for %zu choices", it->n_choices);
            goto done;
        }
        if ((rc = score_item(ev, &s, item, item->loglik, it, i, prompts, template_name))) goto done;
        mtr_eval_acc *a = eval_acc_row(&r, it->lang, it->dataset);
        if (!a) {
            rc = MTR_ENOMEM;
            goto done;
        }
        a->n++;
        a->correct += item->correct;
        a->correct_norm += item->correct_norm;
        eval_progress(ev, i + 1, n);
    }
done:
    mtr_tok_ids_free(&s.ctx);
    mtr_tok_ids_free(&s.whole);
    free(s.roles);
    free(s.last);
    free(s.lln);
    if (rc) mtr_eval_result_free(&r);
    *out = r;
    return rc;
}
