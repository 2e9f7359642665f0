/* reduce_internal.h — private parts of moetrace-reduce shared between its files. */
#ifndef MTR_REDUCE_INTERNAL_H
#define MTR_REDUCE_INTERNAL_H

#include "mtr_reduce.h"

int mtr_reduce_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mtr_reduce_clear_error(void);

/* One finished sequence. */
typedef struct {
    uint64_t seq_id;
    const char *unit_id, *lang, *dataset;
    uint32_t n_tokens, n_used, n_nonfinite, jaccard_pairs;
    const double *q;     /* (n_layers, n_experts) */
    const uint32_t *a;   /* (n_layers, n_experts) */
    const double *ent;   /* (n_layers) entropy of q */
    const double *tent;  /* (n_layers) mean token entropy */
    const double *jac;   /* (n_layers) */
} summ_row;

typedef struct summ_writer summ_writer;
/* Create path.partial; summ_writer_close renames it to path. */
int summ_writer_create(summ_writer **out, const char *path, const mtr_model_info *m, bool topk_weights,
                       const char *settings_json);
int summ_writer_append(summ_writer *w, const summ_row *row);
int summ_writer_close(summ_writer *w);
void summ_writer_destroy(summ_writer *w);

/* JSON of the phase-1 settings recorded in the summaries file; malloc'd. */
char *mtr_summ_settings_json(const mtr_summ_opts *o, const char *const *sources, size_t n_sources);

#endif
