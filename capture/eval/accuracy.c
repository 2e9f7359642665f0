/* accuracy.c — results of scoring and generation (mtr_eval.h): the per-item list, the accuracy rows per
 * (language, dataset), and the files other tools read: accuracy.tsv and accuracy.json (moetrace-stats'
 * accuracy inputs) and items.tsv, in the formats the header describes. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval_internal.h"

void mtr_eval_result_free(mtr_eval_result *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_items; i++) {
        free(r->items[i].loglik);
        free(r->items[i].generated);
    }
    free(r->items);
    free(r->acc);
    mtr_eval_kind kind = r->kind;
    *r = (mtr_eval_result)MTR_EVAL_RESULT_INIT;
    r->kind = kind;
}

mtr_eval_item *eval_item_add(mtr_eval_result *r, size_t *cap)
{
    if (r->n_items == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        mtr_eval_item *g = realloc(r->items, nc * sizeof *g);
        if (!g) {
            mtr_fail(MTR_ENOMEM, "out of memory for %zu items", nc);
            return NULL;
        }
        r->items = g;
        *cap = nc;
    }
    mtr_eval_item *it = &r->items[r->n_items++];
    memset(it, 0, sizeof *it);
    return it;
}

mtr_eval_acc *eval_acc_row(mtr_eval_result *r, const char *lang, const char *dataset)
{
    for (size_t i = 0; i < r->n_acc; i++)
        if (!strcmp(r->acc[i].lang, lang) && !strcmp(r->acc[i].dataset, dataset)) return &r->acc[i];
    mtr_eval_acc *g = realloc(r->acc, (r->n_acc + 1) * sizeof *g);
    if (!g) {
        mtr_fail(MTR_ENOMEM, "out of memory for %zu accuracy rows", r->n_acc + 1);
        return NULL;
    }
    r->acc = g;
    g = &g[r->n_acc++];
    memset(g, 0, sizeof *g);
    g->lang = lang;
    g->dataset = dataset;
    return g;
}

int mtr_eval_check_template(const mtr_prompts *p, const char *name, mtr_eval_kind kind)
{
    int want = kind == MTR_EVAL_SCORE ? MTR_PROMPT_MC : MTR_PROMPT_GEN;
    if (!name || mtr_prompts_kind(p, name) != want)
        return mtr_fail(MTR_EINVAL, "no %s template '%s'", kind == MTR_EVAL_SCORE ? "multiple-choice" : "generation",
                        name ? name : "");
    return 0;
}

/* ---- accuracy files -------------------------------------------------------------------------------------- */

static int check_rows(const mtr_eval_result *r, const char *path)
{
    for (size_t i = 0; i < r->n_acc; i++)
        if (r->acc[i].n == 0)
            return mtr_fail(MTR_EINVAL, "%s: accuracy row %s/%s has no items", path, r->acc[i].lang, r->acc[i].dataset);
    return 0;
}

static double ratio(uint64_t a, uint64_t n) { return (double)a / (double)n; }

static const char *or_empty(const char *s) { return s ? s : ""; }

int mtr_eval_write_accuracy_tsv(const char *path, const mtr_eval_result *r, const mtr_eval_meta *meta)
{
    int rc = check_rows(r, path);
    if (rc) return rc;
    size_t len = strlen(path);
    char *tmp = malloc(len + 5);
    if (!tmp) return mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp", 5);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        rc = mtr_fail(MTR_EIO, "%s: cannot write: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    fprintf(f, "# %s: model=%s corpus=%s steer=%s\n", or_empty(meta->producer), or_empty(meta->model_id),
            or_empty(meta->corpus), meta->steer ? meta->steer : "none");
    fprintf(f, "#lang\ttask\tmetric\tvalue\tn\n");
    for (size_t i = 0; i < r->n_acc; i++) {
        const mtr_eval_acc *a = &r->acc[i];
        fprintf(f, "%s\t%s\taccuracy\t%.6f\t%llu\n", a->lang, a->dataset, ratio(a->correct, a->n),
                (unsigned long long)a->n);
        if (r->kind == MTR_EVAL_SCORE)
            fprintf(f, "%s\t%s\taccuracy_norm\t%.6f\t%llu\n", a->lang, a->dataset, ratio(a->correct_norm, a->n),
                    (unsigned long long)a->n);
    }
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        rc = mtr_fail(MTR_EIO, "%s: cannot write: %s", path, strerror(errno));
        remove(tmp);
    }
    free(tmp);
    return rc;
}

/* {"lang", "task", "metric", "value", "n"} appended to ja */
static int acc_json(json_t *ja, const mtr_eval_acc *a, const char *metric, uint64_t correct)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:f, s:I}", "lang", a->lang, "task", a->dataset, "metric", metric,
                          "value", ratio(correct, a->n), "n", (json_int_t)a->n);
    return o && json_array_append_new(ja, o) == 0 ? 0 : -1;
}

int mtr_eval_write_accuracy_json(const char *path, const mtr_eval_result *r, const mtr_eval_meta *meta)
{
    int rc = check_rows(r, path);
    if (rc) return rc;
    json_t *ja = json_array(), *doc = NULL;
    bool ok = ja != NULL;
    for (size_t i = 0; i < r->n_acc && ok; i++) {
        ok = acc_json(ja, &r->acc[i], "accuracy", r->acc[i].correct) == 0;
        if (ok && r->kind == MTR_EVAL_SCORE)
            ok = acc_json(ja, &r->acc[i], "accuracy_norm", r->acc[i].correct_norm) == 0;
    }
    if (ok) ok = (doc = json_pack("{s:s, s:s, s:s, s:O}", "model", or_empty(meta->model_id), "corpus",
                                  or_empty(meta->corpus), "steer",
                                  meta->steer ? meta->steer : "none", "accuracy", ja)) != NULL;
    if (!ok) rc = mtr_fail(MTR_ENOMEM, "%s: cannot build the JSON document", path);
    else if (json_dump_file(doc, path, JSON_INDENT(1) | JSON_SORT_KEYS) != 0)
        rc = mtr_fail(MTR_EIO, "%s: cannot write: %s", path, strerror(errno));
    json_decref(ja);
    json_decref(doc);
    return rc;
}

/* ---- items.tsv ------------------------------------------------------------------------------------------- */

/* TSV field: tabs, newlines and backslashes escaped */
static void put_field(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\t') fputs("\\t", f);
        else if (*s == '\n') fputs("\\n", f);
        else if (*s == '\r') fputs("\\r", f);
        else if (*s == '\\') fputs("\\\\", f);
        else fputc(*s, f);
    }
}

int mtr_eval_write_items(const char *path, const mtr_eval_result *r)
{
    FILE *f = fopen(path, "w");
    if (!f) return mtr_fail(MTR_EIO, "%s: cannot write: %s", path, strerror(errno));
    const bool score = r->kind == MTR_EVAL_SCORE;
    fprintf(f, "%s\n", score ? "#unit_id\tlang\ttask\tgold\tpred\tpred_norm\tcorrect\tloglik"
                             : "#unit_id\tlang\ttask\tgold\tcorrect\tn_new\tgenerated");
    for (size_t i = 0; i < r->n_items; i++) {
        const mtr_eval_item *it = &r->items[i];
        put_field(f, it->unit_id);
        fputc('\t', f);
        put_field(f, it->lang);
        fputc('\t', f);
        put_field(f, it->dataset);
        if (score) {
            fprintf(f, "\t%zu\t%zu\t%zu\t%d\t", it->gold, it->pred, it->pred_norm, it->correct);
            for (size_t k = 0; k < it->n_choices; k++) fprintf(f, "%s%.6f", k ? "," : "", it->loglik[k]);
        } else {
            fputc('\t', f);
            put_field(f, it->answer ? it->answer : "");
            fprintf(f, "\t%d\t%u\t", it->correct, it->n_new);
            put_field(f, it->generated ? it->generated : "");
        }
        fputc('\n', f);
    }
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad) return mtr_fail(MTR_EIO, "%s: cannot write", path);
    return 0;
}
