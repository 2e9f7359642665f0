/* generate.c — greedy generation (mtr_eval_generate): each rendered prompt decoded with the KV cache until an
 * end-of-sequence token, a stop string, max_new or max_tokens; exact match of the final number, accuracy per
 * (language, dataset); the routing of the prompt and of every generated token recorded when tracing. */
#include <stdlib.h>
#include <string.h>

#include "eval_internal.h"

/* Scratch of one generation run. */
typedef struct {
    mtr_tok_ids ids;          /* prompt, then the generated tokens */
    uint8_t *roles;           /* (ids.n) */
    int32_t *text_ids;        /* (max_new) the generated ids the tokenizer knows */
    const char **stops;       /* (n_stops) opts.stops, then the template's */
    size_t n_stops;
} gen_scratch;

/* Greedy decoding after a prefilled prompt of c tokens: the text into *text (malloc'd, cut at a stop string),
 * the number of new tokens into *n_new. */
static int decode(mtr_eval *ev, gen_scratch *s, uint32_t c, char **text, uint32_t *n_new)
{
    const uint32_t V = ev->cfg->vocab_size;
    const size_t row = (size_t)ev->cfg->n_moe_layers * ev->cfg->n_experts;
    const size_t tok_vocab = mtr_tok_vocab_size(ev->tok);
    size_t text_len = 0;
    *text = NULL;
    *n_new = 0;
    for (;;) {
        const float *lg = ev->logits;
        int32_t best = 0;
        for (uint32_t v = 1; v < V; v++)
            if (lg[v] > lg[best]) best = (int32_t)v;
        if (eval_is_eos(ev, best)) break;
        if (s->ids.n == s->ids.cap) {
            size_t nc = s->ids.cap ? s->ids.cap * 2 : 64;
            int32_t *g = realloc(s->ids.ids, nc * sizeof *g);
            if (!g) return mtr_fail(MTR_ENOMEM, "out of memory for %zu tokens", nc);
            s->ids.ids = g;
            s->ids.cap = nc;
        }
        s->ids.ids[s->ids.n++] = best;
        (*n_new)++;
        free(*text);
        *text = NULL;
        /* ids past the tokenizer's (the model's padded vocabulary) decode to nothing, as in transformers */
        size_t n_text = 0;
        for (uint32_t q = 0; q < *n_new; q++)
            if ((size_t)s->ids.ids[c + q] < tok_vocab) s->text_ids[n_text++] = s->ids.ids[c + q];
        int rc = mtr_tok_decode(text, &text_len, ev->tok, s->text_ids, n_text, MTR_TOK_SKIP_SPECIAL);
        if (rc) return mtr_fail(rc, "decoding: %s", mtr_errmsg());
        bool stop = false;
        for (size_t k = 0; k < s->n_stops && !stop; k++) {
            char *at = strstr(*text, s->stops[k]);
            if (at) *at = '\0', stop = true;
        }
        if (stop || *n_new >= ev->o.max_new || c + *n_new >= ev->o.max_tokens) break;
        mtr_forward_io io = eval_io(ev);
        io.logits = ev->logits;
        io.n_logits = 1;
        io.router = ev->w ? ev->router + (size_t)(c + *n_new - 1) * row : NULL;
        if ((rc = mtr_model_forward(ev->sess, &best, 1, &io))) return rc;
        if (ev->w) ev->router_rows = c + *n_new;
        ev->tokens++;
    }
    return 0;
}

/* Generate for item i (index in the set) into *item. Errors carry "FILE: item N: ". */
static int generate_item(mtr_eval *ev, gen_scratch *s, mtr_eval_item *item, const mtr_gen_item *it, size_t i,
                         const mtr_prompts *prompts, const char *name)
{
    char *prompt = NULL;
    int rc = mtr_prompt_render_gen(&prompt, prompts, name, it);
    if (rc) return mtr_fail(rc == MTR_ENOMEM ? rc : MTR_EDATA, "%s: item %zu: %s", it->file, i + 1, mtr_errmsg());
    rc = mtr_eval_tokenize(&s->ids, &s->roles, ev, prompt, NULL, 0, true);
    free(prompt);
    if (rc) return mtr_fail(rc == MTR_ENOMEM ? rc : MTR_EDATA, "%s: item %zu: %s", it->file, i + 1, mtr_errmsg());
    const uint32_t c = (uint32_t)s->ids.n;
    if (c + 1 > ev->o.max_tokens)
        return mtr_fail(MTR_EDATA, "%s: item %zu: the prompt has %u tokens, more than max_tokens %u allows (%u)",
                        it->file, i + 1, c, ev->o.max_tokens, ev->o.max_tokens - 1);
    char *text = NULL;
    uint32_t n_new = 0;
    if ((rc = mtr_eval_prefill(ev, s->ids.ids, c, ev->w != NULL, 1)) || (rc = decode(ev, s, c, &text, &n_new))) {
        free(text);
        return mtr_fail(rc, "%s: item %zu: %s", it->file, i + 1, mtr_errmsg());
    }
    /* routing of the prompt and of every generated token that went through the model */
    uint32_t routed = c + (n_new ? n_new - 1 : 0);
    if (ev->w) {
        uint8_t *r = realloc(s->roles, (size_t)routed + 1);
        if (!r) {
            free(text);
            return mtr_fail(MTR_ENOMEM, "out of memory for the roles of %u tokens", routed);
        }
        s->roles = r;
        for (uint32_t t = c; t < routed; t++) s->roles[t] = MTR_ROLE_GENERATED;
        mtr_seq_meta meta = {i, it->unit_id, it->lang, it->dataset, routed, 0};
        if ((rc = mtr_eval_record(ev, 0, &meta, s->ids.ids, s->roles))) {
            free(text);
            return mtr_fail(rc, "%s: item %zu: recording: %s", it->file, i + 1, mtr_errmsg());
        }
    }
    if (!text && !(text = calloc(1, 1))) return mtr_fail(MTR_ENOMEM, "out of memory");
    item->answer = it->answer;
    item->generated = text;
    item->n_new = n_new;
    item->correct = mtr_corpus_answer_matches(it->answer, text);
    return 0;
}

int mtr_eval_generate(mtr_eval_result *out, mtr_eval *ev, const mtr_gen *set, const mtr_prompts *prompts,
                      const char *template_name)
{
    mtr_eval_result r = MTR_EVAL_RESULT_INIT;
    r.kind = MTR_EVAL_GENERATE;
    *out = r;
    int rc = mtr_eval_check_template(prompts, template_name, MTR_EVAL_GENERATE);
    if (rc) return rc;
    gen_scratch s = {MTR_TOK_IDS_INIT, NULL, NULL, NULL, 0};
    const char *const *ts = NULL;
    size_t nts = 0;
    if (mtr_prompts_stops(&ts, &nts, prompts, template_name)) nts = 0;
    s.text_ids = malloc(((size_t)ev->o.max_new + 1) * sizeof *s.text_ids);
    s.stops = malloc((ev->o.n_stops + nts + 1) * sizeof *s.stops);
    if (!s.text_ids || !s.stops) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory for %u new tokens", ev->o.max_new);
        goto done;
    }
    for (size_t k = 0; k < ev->o.n_stops; k++) s.stops[s.n_stops++] = ev->o.stops[k];
    for (size_t k = 0; k < nts; k++) s.stops[s.n_stops++] = ts[k];
    const size_t n = mtr_gen_count(set);
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        const mtr_gen_item *it = mtr_gen_get(set, i);
        mtr_eval_item *item = eval_item_add(&r, &cap);
        if (!item) {
            rc = MTR_ENOMEM;
            goto done;
        }
        item->unit_id = it->unit_id, item->lang = it->lang, item->dataset = it->dataset;
        if ((rc = generate_item(ev, &s, item, it, i, prompts, template_name))) goto done;
        mtr_eval_acc *a = eval_acc_row(&r, it->lang, it->dataset);
        if (!a) {
            rc = MTR_ENOMEM;
            goto done;
        }
        a->n++;
        a->correct += item->correct;
        eval_progress(ev, i + 1, n);
    }
done:
    mtr_tok_ids_free(&s.ids);
    free(s.roles);
    free(s.text_ids);
    free(s.stops);
    if (rc) mtr_eval_result_free(&r);
    *out = r;
    return rc;
}
