/* accuracy.c — accuracy inputs for moetrace-stats: moetrace's own TSV/JSON evaluation output and
 * lm-evaluation-harness results JSON, with task names mapped to languages (built-in rules for Belebele, MGSM,
 * Global-MMLU and XNLI, then a user map) and language codes normalised through the language table. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "stats_internal.h"

void mtr_accuracy_free(mtr_accuracy *a)
{
    if (!a) return;
    free(a->rows);
    free(a);
}

static int push_row(mtr_accuracy *a, size_t *cap, const char *lang, const char *task, const char *metric,
                    double value, double n, const char *where)
{
    if (!isfinite(value))
        return mtr_fail(MTR_EFORMAT, "%s: %s accuracy for %s %s", where, isnan(value) ? "NaN" : "infinite",
                              lang, task);
    /* a fraction: a percentage (or a typo) would change every correlation without a word */
    if (value < 0 || value > 1)
        return mtr_fail(MTR_EFORMAT, "%s: accuracy %g for %s %s is outside [0, 1]%s", where, value, lang, task,
                              value > 1 && value <= 100 ? " (a percentage? give fractions)" : "");
    if (strlen(task) >= sizeof a->rows[0].task || strlen(metric) >= sizeof a->rows[0].metric)
        return mtr_fail(MTR_EFORMAT, "%s: task or metric name too long", where);
    for (size_t i = 0; i < a->n; i++)
        if (!strcmp(a->rows[i].lang, lang) && !strcmp(a->rows[i].task, task) && !strcmp(a->rows[i].metric, metric))
            return mtr_fail(MTR_EFORMAT, "%s: %s %s %s given twice", where, lang, task, metric);
    if (a->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        mtr_acc_row *r = realloc(a->rows, nc * sizeof *r);
        if (!r) return mtr_fail(MTR_ENOMEM, "out of memory");
        a->rows = r;
        *cap = nc;
    }
    mtr_acc_row *r = &a->rows[a->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->lang, sizeof r->lang, "%s", lang);
    snprintf(r->task, sizeof r->task, "%s", task);
    snprintf(r->metric, sizeof r->metric, "%s", metric);
    r->value = value;
    r->n = n;
    return 0;
}

static int norm_lang(const char **out, const mtr_langs *langs, const char *code, const char *where)
{
    if (mtr_langs_normalize(out, langs, code) == 0) return 0;
    return mtr_fail(MTR_EFORMAT, "%s: unknown language code '%s'", where, code);
}

/* ---- moetrace TSV -------------------------------------------------------------------------------------- */

static int load_tsv(mtr_accuracy *a, const char *path, const mtr_langs *langs)
{
    static const char *const need[] = {"lang", "task", "metric", "value", "n"};
    int rc, col[5];
    size_t cap = 0;
    mtr_tsv *f = NULL;
    char where[4200];
    if ((rc = mtr_tsv_read(&f, path))) return rc;
    for (int i = 0; i < 5; i++)
        if ((col[i] = mtr_tsv_col(f, need[i])) < 0 && i < 4) {
            rc = mtr_fail(MTR_EFORMAT, "%s: no column '%s' (want lang, task, metric, value, n)", path, need[i]);
            goto out_free;
        }
    for (size_t r = 0; r < f->n_rows; r++) {
        char **c = f->cells + r * f->n_cols;
        const char *lang;
        double v, n = NAN;
        snprintf(where, sizeof where, "%s:%zu", path, f->line[r]);
        if ((rc = norm_lang(&lang, langs, c[col[0]], where))) goto out_free;
        if (mtr_stats_parse_double(&v, c[col[3]])) {
            rc = mtr_fail(MTR_EFORMAT, "%s: value '%s' is not a number", where, c[col[3]]);
            goto out_free;
        }
        if (col[4] >= 0 && *c[col[4]] && mtr_stats_parse_double(&n, c[col[4]])) {
            rc = mtr_fail(MTR_EFORMAT, "%s: n '%s' is not a number", where, c[col[4]]);
            goto out_free;
        }
        if ((rc = push_row(a, &cap, lang, c[col[1]], c[col[2]], v, n, where))) goto out_free;
    }
    snprintf(a->format, sizeof a->format, "tsv");
out_free:
    mtr_tsv_free(f);
    return rc;
}

/* ---- lm-evaluation-harness ------------------------------------------------------------------------------ */

typedef struct {
    char task[128];
    char lang[24];
    char label[128];
} task_map_entry;

static int load_task_map(task_map_entry **out, size_t *n_out, const char *path, const mtr_langs *langs)
{
    int rc;
    mtr_tsv *f = NULL;
    task_map_entry *m = NULL;
    *out = NULL;
    *n_out = 0;
    if ((rc = mtr_tsv_read(&f, path))) return rc;
    int ct = mtr_tsv_col(f, "task"), cl = mtr_tsv_col(f, "lang"), cb = mtr_tsv_col(f, "label");
    if (ct < 0 || cl < 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: task map needs columns task, lang (and optionally label)", path);
        goto out_free;
    }
    m = calloc(f->n_rows + 1, sizeof *m);
    if (!m) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    for (size_t r = 0; r < f->n_rows; r++) {
        char **c = f->cells + r * f->n_cols;
        char where[4200];
        const char *lang;
        snprintf(where, sizeof where, "%s:%zu", path, f->line[r]);
        if ((rc = norm_lang(&lang, langs, c[cl], where))) goto out_free;
        snprintf(m[r].task, sizeof m[r].task, "%s", c[ct]);
        snprintf(m[r].lang, sizeof m[r].lang, "%s", lang);
        snprintf(m[r].label, sizeof m[r].label, "%s", cb >= 0 && *c[cb] ? c[cb] : c[ct]);
    }
    *n_out = f->n_rows;
    *out = m;
    m = NULL;
out_free:
    free(m);
    mtr_tsv_free(f);
    return rc;
}

/* Place an lm-eval task name: 1 and (lang code as written, task label) if a rule matches, 0 for an aggregate
 * group to skip, -1 if nothing matches. */
static int task_rule(const char *name, char *code, size_t ccap, char *label, size_t lcap)
{
    static const char *const simple[] = {"belebele_", "mgsm_direct_", "mgsm_native_cot_", "mgsm_en_cot_", "xnli_",
                                         "global_mmlu_"};
    static const char *const groups[] = {"belebele", "mgsm_direct", "mgsm_native_cot", "mgsm_en_cot", "xnli",
                                         "global_mmlu", "global_mmlu_full"};
    for (size_t i = 0; i < sizeof groups / sizeof *groups; i++)
        if (!strcmp(name, groups[i])) return 0;
    const char *gm = "global_mmlu_full_";
    if (!strncmp(name, gm, strlen(gm))) {
        const char *rest = name + strlen(gm), *us = strchr(rest, '_');
        size_t cl = us ? (size_t)(us - rest) : strlen(rest);
        if (cl == 0 || cl >= ccap) return -1;
        memcpy(code, rest, cl);
        code[cl] = '\0';
        if (us) snprintf(label, lcap, "global_mmlu_full:%s", us + 1);
        else snprintf(label, lcap, "global_mmlu_full");
        return 1;
    }
    for (size_t i = 0; i < sizeof simple / sizeof *simple; i++) {
        size_t pl = strlen(simple[i]);
        if (strncmp(name, simple[i], pl) || !name[pl] || strlen(name + pl) >= ccap) continue;
        snprintf(code, ccap, "%s", name + pl);
        snprintf(label, lcap, "%.*s", (int)(pl - 1), simple[i]);
        return 1;
    }
    return -1;
}

static int load_lmeval(mtr_accuracy *a, const char *path, json_t *results, const mtr_langs *langs,
                       const mtr_acc_opts *o)
{
    static const char *const metrics[] = {"acc,none", "exact_match,flexible-extract", "acc_norm,none",
                                          "exact_match,strict-match"};
    int rc = 0;
    size_t cap = 0, n_map = 0;
    task_map_entry *map = NULL;
    const char *task;
    json_t *entry;
    if (o->task_map && (rc = load_task_map(&map, &n_map, o->task_map, langs))) return rc;
    json_object_foreach(results, task, entry) {
        char code[64], label[128], where[4400];
        const char *lang = NULL;
        int placed = -1;
        snprintf(where, sizeof where, "%s: results.%s", path, task);
        for (size_t i = 0; i < n_map; i++)
            if (!strcmp(map[i].task, task)) {
                lang = map[i].lang;
                snprintf(label, sizeof label, "%s", map[i].label);
                placed = 1;
            }
        if (placed < 0) {
            placed = task_rule(task, code, sizeof code, label, sizeof label);
            if (placed == 0) continue;
            if (placed < 0) {
                rc = mtr_fail(MTR_EFORMAT, "%s: no language for this task (give it in a task map)", where);
                goto out_free;
            }
            if ((rc = norm_lang(&lang, langs, code, where))) goto out_free;
        }
        if (!json_is_object(entry)) {
            rc = mtr_fail(MTR_EFORMAT, "%s: not an object", where);
            goto out_free;
        }
        const char *metric = o->metric;
        if (!metric)
            for (size_t i = 0; i < sizeof metrics / sizeof *metrics && !metric; i++)
                if (json_object_get(entry, metrics[i])) metric = metrics[i];
        json_t *v = metric ? json_object_get(entry, metric) : NULL;
        if (!v) {
            rc = mtr_fail(MTR_EFORMAT, "%s: no metric %s", where, metric ? metric : "(acc,none or exact_match)");
            goto out_free;
        }
        double value;
        if (json_is_number(v)) value = json_number_value(v);
        else if (json_is_string(v) && mtr_stats_parse_double(&value, json_string_value(v)) == 0) (void)0;
        else if (json_is_null(v)) value = NAN;
        else {
            rc = mtr_fail(MTR_EFORMAT, "%s: metric %s is not a number", where, metric);
            goto out_free;
        }
        if ((rc = push_row(a, &cap, lang, label, metric, value, NAN, where))) goto out_free;
    }
    snprintf(a->format, sizeof a->format, "lm-eval");
out_free:
    free(map);
    return rc;
}

/* ---- moetrace JSON -------------------------------------------------------------------------------------- */

static int load_json_rows(mtr_accuracy *a, const char *path, json_t *arr, const mtr_langs *langs)
{
    int rc = 0;
    size_t cap = 0, i;
    json_t *e;
    json_array_foreach(arr, i, e) {
        char where[4200];
        snprintf(where, sizeof where, "%s: accuracy[%zu]", path, i);
        json_t *jl = json_object_get(e, "lang"), *jt = json_object_get(e, "task"), *jm = json_object_get(e, "metric");
        json_t *jv = json_object_get(e, "value"), *jn = json_object_get(e, "n");
        if (!json_is_string(jl) || !json_is_string(jt) || !(json_is_number(jv) || json_is_null(jv)))
            return mtr_fail(MTR_EFORMAT, "%s: needs string lang, task and a number value", where);
        const char *lang;
        if ((rc = norm_lang(&lang, langs, json_string_value(jl), where))) return rc;
        double v = json_is_null(jv) ? NAN : json_number_value(jv);
        double n = json_is_number(jn) ? json_number_value(jn) : NAN;
        if ((rc = push_row(a, &cap, lang, json_string_value(jt), json_is_string(jm) ? json_string_value(jm) : "accuracy",
                           v, n, where)))
            return rc;
    }
    snprintf(a->format, sizeof a->format, "json");
    return 0;
}

/* ---- one metric per (language, task) -------------------------------------------------------------------- */

/* moetrace's own files may carry several metrics per language and task (score mode: accuracy and
 * accuracy_norm): keep the one asked for (--metric), else "accuracy" when a pair has several. */
static int filter_metric(mtr_accuracy *a, const char *want, const char *path)
{
    bool several = false;
    for (size_t i = 0; i < a->n && !several; i++)
        for (size_t j = i + 1; j < a->n && !several; j++)
            several = !strcmp(a->rows[i].lang, a->rows[j].lang) && !strcmp(a->rows[i].task, a->rows[j].task);
    if (!want && !several) return 0;
    const char *keep = want ? want : "accuracy";
    size_t k = 0;
    for (size_t i = 0; i < a->n; i++)
        if (!strcmp(a->rows[i].metric, keep)) a->rows[k++] = a->rows[i];
    if (k == 0)
        return mtr_fail(MTR_EFORMAT, "%s: no rows with metric '%s'%s", path, keep,
                              want ? "" : " among several metrics per language and task (choose one with --metric)");
    a->n = k;
    return 0;
}

/* ---- merging subtasks ----------------------------------------------------------------------------------- */

/* Average the rows whose tasks share the part before ':' (per language and metric), in place; n is summed when
 * every part knows it. */
static int merge_subtasks(mtr_accuracy *a)
{
    size_t w = 0, *count = calloc(a->n + 1, sizeof *count);
    if (!count) return mtr_fail(MTR_ENOMEM, "out of memory");
    for (size_t i = 0; i < a->n; i++) {
        mtr_acc_row r = a->rows[i];
        char *colon = strchr(r.task, ':');
        if (colon) *colon = '\0';
        size_t j;
        for (j = 0; j < w; j++)
            if (!strcmp(a->rows[j].lang, r.lang) && !strcmp(a->rows[j].task, r.task) &&
                !strcmp(a->rows[j].metric, r.metric))
                break;
        if (j == w) {
            a->rows[w++] = r;
        } else {
            a->rows[j].value += r.value;
            a->rows[j].n = isnan(a->rows[j].n) || isnan(r.n) ? NAN : a->rows[j].n + r.n;
        }
        count[j]++;
    }
    for (size_t j = 0; j < w; j++) a->rows[j].value /= (double)count[j];
    a->n = w;
    free(count);
    return 0;
}

int mtr_accuracy_load(mtr_accuracy **out, const char *path, const mtr_langs *langs, const mtr_acc_opts *opts)
{
    static const mtr_acc_opts defaults = MTR_ACC_OPTS_INIT;
    int rc = 0;
    mtr_accuracy *a = NULL;
    json_t *root = NULL;
    FILE *f = NULL;
    *out = NULL;
    if (!opts) opts = &defaults;
    a = calloc(1, sizeof *a);
    if (!a) return mtr_fail(MTR_ENOMEM, "out of memory");

    f = fopen(path, "rb");
    if (!f) {
        rc = mtr_fail(MTR_ENOTFOUND, "%s: no such file", path);
        goto out_free;
    }
    int c;
    do c = fgetc(f);
    while (c == ' ' || c == '\n' || c == '\r' || c == '\t');
    fclose(f);
    f = NULL;
    if (c == '{' || c == '[') {
        json_error_t jerr;
        root = json_load_file(path, 0, &jerr);
        if (!root) {
            rc = mtr_fail(MTR_EFORMAT, "%s:%d: invalid JSON: %s", path, jerr.line, jerr.text);
            goto out_free;
        }
        json_t *res = json_is_object(root) ? json_object_get(root, "results") : NULL;
        json_t *arr = json_is_array(root) ? root : json_object_get(root, "accuracy");
        if (json_is_object(res)) rc = load_lmeval(a, path, res, langs, opts);
        else if (json_is_array(arr)) rc = load_json_rows(a, path, arr, langs);
        else rc = mtr_fail(MTR_EFORMAT, "%s: neither lm-eval results (results.<task>.<metric>) nor a "
                                              "moetrace accuracy list", path);
    } else {
        rc = load_tsv(a, path, langs);
    }
    if (rc) goto out_free;
    if (a->n == 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: no accuracy rows", path);
        goto out_free;
    }
    if (strcmp(a->format, "tsv") == 0 || strcmp(a->format, "json") == 0)
        if ((rc = filter_metric(a, opts->metric, path))) goto out_free;
    if (opts->merge_subtasks && (rc = merge_subtasks(a))) goto out_free;
    *out = a;
    a = NULL;
out_free:
    if (f) fclose(f);
    json_decref(root);
    mtr_accuracy_free(a);
    return rc;
}

int mtr_accuracy_tasks(const char ***tasks, size_t *n, const mtr_accuracy *a)
{
    const char **t = malloc((a->n + 1) * sizeof *t);
    *tasks = NULL;
    *n = 0;
    if (!t) return mtr_fail(MTR_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < a->n; i++) {
        size_t j;
        for (j = 0; j < k; j++)
            if (!strcmp(t[j], a->rows[i].task)) break;
        if (j == k) t[k++] = a->rows[i].task;
    }
    *tasks = t;
    *n = k;
    return 0;
}

const mtr_acc_row *mtr_accuracy_find(const mtr_accuracy *a, const char *lang, const char *task)
{
    for (size_t i = 0; i < a->n; i++)
        if (!strcmp(a->rows[i].lang, lang) && (!task || !strcmp(a->rows[i].task, task))) return &a->rows[i];
    return NULL;
}
