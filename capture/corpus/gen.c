/* gen.c — generation sets (MGSM-style JSONL or TSV) for `moetrace-capture run --mode generate`. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "corpus_internal.h"

/* ---- generation sets ------------------------------------------------------------------------------------- */

struct mtr_gen {
    arena a;
    mtr_gen_item *items; /* (n) */
    size_t n, cap;
};

/* the gold answer as text: a string, or a JSON number as JSON writes it; checked to be a plain decimal */
static int gen_answer(const char **out, arena *a, json_t *o, const char *path, size_t line)
{
    const char *key = "answer_number";
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) v = json_object_get(o, key = "answer");
    if (!v || json_is_null(v)) return mtr_fail(MTR_EFORMAT, "%s:%zu: missing \"answer\"", path, line);
    char *txt = NULL;
    if (json_is_string(v)) *out = corp_arena_strdup(a, json_string_value(v));
    else if (json_is_number(v)) {
        txt = json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
        if (!txt) return corp_oom();
        *out = corp_arena_strdup(a, txt);
        free(txt);
    } else return mtr_fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be a number or a string", path, line, key);
    if (!*out) return corp_oom();
    char norm[MTR_CORPUS_NUMBER_MAX];
    if (corp_parse_gold(norm, sizeof norm, *out) != 0)
        return mtr_fail(MTR_EFORMAT, "%s:%zu: \"%s\" \"%.*s\" is not a plain decimal number", path, line, key, SHOW, *out);
    return 0;
}

static int gen_push(mtr_gen *g, const mtr_gen_item *it)
{
    int rc = corp_grow((void **)&g->items, &g->cap, g->n, sizeof *g->items);
    if (rc) return rc;
    g->items[g->n++] = *it;
    return 0;
}

static int line_unit(const char **out, arena *a, const char *prefix, size_t line, const char *path)
{
    char unit[64 + MTR_CORPUS_MAX_KEY];
    snprintf(unit, sizeof unit, "%s%zu", prefix ? prefix : "", line);
    int rc = corp_check_key(path, line, "unit_id", unit);
    if (rc) return rc;
    *out = corp_arena_strdup(a, unit);
    return *out ? 0 : corp_oom();
}

static int gen_jsonl(mtr_gen *g, const char *buf, size_t len, const char *path, const char *file, filt *f)
{
    int rc = 0;
    json_t *o = NULL;
    dupset dups = {0};
    lines it;
    const char *s;
    size_t n;
    corp_lines_init(&it, buf, len);
    while (corp_lines_next(&it, &s, &n)) {
        size_t line = it.line;
        if (corp_is_blank(s, n)) continue;
        if ((rc = corp_parse_object(&o, s, n, path, line))) goto out;
        mtr_gen_item item = {0};
        item.file = file;
        item.line = line;
        char num[32];
        const char *u, *question;
        if ((rc = corp_jfield(&u, num, o, "unit_id", true, path, line))) goto out;
        if (u) rc = corp_key_field(&item.unit_id, &g->a, o, "unit_id", NULL, path, line);
        else rc = line_unit(&item.unit_id, &g->a, f->o->unit_prefix, line, path);
        if (rc || (rc = corp_key_field(&item.lang, &g->a, o, "lang", f->o->lang, path, line)) ||
            (rc = corp_key_field(&item.dataset, &g->a, o, "dataset", f->o->dataset, path, line)) ||
            (rc = corp_jfield(&question, num, o, "question", false, path, line)))
            goto out;
        if (!question) {
            rc = mtr_fail(MTR_EFORMAT, "%s:%zu: missing \"question\"", path, line);
            goto out;
        }
        if ((rc = corp_check_text(path, line, "question", question, strlen(question))) ||
            (rc = gen_answer(&item.answer, &g->a, o, path, line)) ||
            (rc = corp_check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset)))
            goto out;
        if (corp_filt_keep(f, item.lang, item.dataset)) {
            if (!(item.question = corp_arena_strdup(&g->a, question))) {
                rc = corp_oom();
                goto out;
            }
            if ((rc = gen_push(g, &item))) goto out;
        }
        json_decref(o);
        o = NULL;
    }
out:
    json_decref(o);
    corp_dup_free(&dups);
    return rc;
}

/* lang and dataset from a file name prefix_lang.ext (mgsm_fr.tsv): into the arena */
static int name_parts(const char **lang, const char **dataset, arena *a, const char *path)
{
    const char *b = corp_base_name(path);
    const char *dot = strchr(b, '.');
    size_t stem = dot ? (size_t)(dot - b) : strlen(b);
    const char *us = NULL;
    for (const char *p = b; p < b + stem; p++)
        if (*p == '_') us = p;
    *lang = us ? corp_arena_strndup(a, us + 1, stem - (size_t)(us + 1 - b)) : corp_arena_strndup(a, b, stem);
    *dataset = corp_arena_strndup(a, b, us ? (size_t)(us - b) : stem);
    return *lang && *dataset ? 0 : corp_oom();
}

static int gen_tsv(mtr_gen *g, const char *buf, size_t len, const char *path, const char *file, filt *f)
{
    int rc = 0;
    dupset dups = {0};
    sbuf q = {0};
    span fl[TSV_MAX_COLS];
    tsv_header h;
    lines it;
    const char *s, *flang, *fdataset;
    size_t n;
    if ((rc = name_parts(&flang, &fdataset, &g->a, path))) goto out;
    const char *dlang = f->o->lang ? f->o->lang : flang, *ddataset = f->o->dataset ? f->o->dataset : fdataset;
    corp_lines_init(&it, buf, len);
    bool have;
    while ((have = corp_lines_next(&it, &s, &n)) && !n) {}
    if (!have) {
        rc = mtr_fail(MTR_EFORMAT, "%s:1: empty file", path);
        goto out;
    }
    if ((rc = corp_tsv_read_header(&h, s, n, path, it.line))) goto out;
    int cq = corp_tsv_col(&h, "question"), ca = corp_tsv_col(&h, "answer");
    /* MGSM's own files: question<TAB>answer, no header, no escapes */
    bool raw = cq < 0 && h.n == 2;
    if (raw) {
        memset(&h, 0, sizeof h);
        h.n = 2;
        cq = 0, ca = 1;
        it.p = s; /* the first line is data: read it again */
        it.line--;
    } else if (cq < 0 || ca < 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s:%zu: the header lacks column \"%s\" (or the file is not MGSM's two columns "
                               "question<TAB>answer)", path, it.line, cq < 0 ? "question" : "answer");
        goto out;
    }
    int cu = raw ? -1 : corp_tsv_col(&h, "unit_id"), cl = raw ? -1 : corp_tsv_col(&h, "lang"),
        cd = raw ? -1 : corp_tsv_col(&h, "dataset");
    while (corp_lines_next(&it, &s, &n)) {
        size_t line = it.line;
        if (!n) continue;
        if ((rc = corp_tsv_row(fl, &h, s, n, path, line))) goto out;
        mtr_gen_item item = {0};
        item.file = file;
        item.line = line;
        if (cu >= 0) rc = corp_tsv_key(&item.unit_id, &g->a, fl, cu, "unit_id", NULL, path, line);
        else rc = line_unit(&item.unit_id, &g->a, f->o->unit_prefix, line, path);
        if (rc || (rc = corp_tsv_key(&item.lang, &g->a, fl, cl, "lang", dlang, path, line)) ||
            (rc = corp_tsv_key(&item.dataset, &g->a, fl, cd, "dataset", ddataset, path, line)))
            goto out;
        if (raw) {
            q.n = 0;
            rc = mtr_buf_put(&q, fl[cq].s, fl[cq].n);
        } else rc = corp_tsv_unescape(&q, fl[cq].s, fl[cq].n);
        if (rc || (rc = corp_check_text(path, line, "question", q.p, q.n))) goto out;
        char norm[MTR_CORPUS_NUMBER_MAX];
        if (!(item.answer = corp_arena_strndup(&g->a, fl[ca].s, fl[ca].n))) {
            rc = corp_oom();
            goto out;
        }
        if (corp_parse_gold(norm, sizeof norm, item.answer) != 0) {
            rc = mtr_fail(MTR_EFORMAT, "%s:%zu: answer \"%.*s\" is not a plain decimal number", path, line, SHOW,
                      item.answer);
            goto out;
        }
        if ((rc = corp_check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset))) goto out;
        if (corp_filt_keep(f, item.lang, item.dataset)) {
            if (!(item.question = corp_arena_strndup(&g->a, q.p, q.n))) {
                rc = corp_oom();
                goto out;
            }
            if ((rc = gen_push(g, &item))) goto out;
        }
    }
out:
    free(q.p);
    corp_dup_free(&dups);
    return rc;
}

int mtr_gen_load(mtr_gen **out, const char *path, const mtr_corpus_opts *opts)
{
    *out = NULL;
    mtr_clear_error();
    filt f;
    char *buf = NULL;
    size_t len = 0;
    mtr_corpus_format fmt;
    const char *file;
    mtr_gen *g = calloc(1, sizeof *g);
    int rc = corp_filt_init(&f, opts);
    if (!g && !rc) rc = corp_oom();
    if (rc || (rc = corp_detect(&fmt, path, f.o->format))) goto out;
    if (fmt == MTR_CORPUS_FLORES) {
        rc = mtr_fail(MTR_EINVAL, "%s: generation sets are read from JSONL or TSV, not a directory", path);
        goto out;
    }
    if (!(file = corp_arena_strdup(&g->a, path))) rc = corp_oom();
    if (rc || (rc = mtr_read_file(&buf, &len, path, CORPUS_MAX_FILE)) || (rc = corp_check_utf8(path, buf, len))) goto out;
    rc = fmt == MTR_CORPUS_JSONL ? gen_jsonl(g, buf, len, path, file, &f) : gen_tsv(g, buf, len, path, file, &f);
    if (!rc) rc = corp_filt_finish(&f, path);
out:
    free(buf);
    corp_filt_free(&f);
    if (rc) {
        mtr_gen_destroy(g);
        return rc;
    }
    *out = g;
    return 0;
}

size_t mtr_gen_count(const mtr_gen *s) { return s ? s->n : 0; }

const mtr_gen_item *mtr_gen_get(const mtr_gen *s, size_t i) { return s && i < s->n ? &s->items[i] : NULL; }

void mtr_gen_destroy(mtr_gen *s)
{
    if (!s) return;
    corp_arena_free(&s->a);
    free(s->items);
    free(s);
}
