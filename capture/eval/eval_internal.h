/* eval_internal.h — the evaluation context and the helpers the files of libmtr_eval.a (capture/eval/) share;
 * other components see only mtr_eval.h. */
#ifndef MTR_EVAL_INTERNAL_H
#define MTR_EVAL_INTERNAL_H

#include "mtr_eval.h"

#define EVAL_MAX_EOS 4

struct mtr_eval {
    mtr_eval_opts o;           /* batch clamped to max_tokens; record_layers not kept */
    const mtr_model *model;
    const mtr_model_config *cfg;
    mtr_tok *tok;
    mtr_session *sess;
    uint64_t *steer_rng;       /* (n_moe_layers) gaussian-eps generator states; NULL without steering */
    mtr_model_info info;       /* the recorded layers */
    uint32_t *rec;             /* (info.n_layers) recorded MoE layer -> engine MoE layer */
    float *sel_bias;           /* (info.n_layers, n_experts) the recorded layers' selection bias when not every
                                  layer is recorded and the model has one, else NULL */
    mtr_writer *w;             /* borrowed, or NULL */
    float *router;             /* (max_tokens + 1, n_moe_layers, n_experts) */
    uint32_t router_rows;      /* rows of router the last prefill filled */
    float *rec_buf;            /* (max_tokens + 1, info.n_layers, n_experts) when not every layer is recorded */
    float *logits;             /* (batch, vocab_size) */
    int32_t eos_ids[EVAL_MAX_EOS];
    int n_eos;
    uint64_t tokens;
};

/* A forward io with the context's steering set. */
mtr_forward_io eval_io(const mtr_eval *ev);
/* Is id one of the end-of-sequence ids? */
bool eval_is_eos(const mtr_eval *ev, int32_t id);
/* The accuracy row of (lang, dataset) in r, appended when new; NULL when out of memory (detail set). */
mtr_eval_acc *eval_acc_row(mtr_eval_result *r, const char *lang, const char *dataset);
/* Room for one more item in r (zeroed, returned); NULL when out of memory (detail set). */
mtr_eval_item *eval_item_add(mtr_eval_result *r, size_t *cap);
/* Report progress through the callback, if any. */
void eval_progress(const mtr_eval *ev, size_t done, size_t total);

#endif
