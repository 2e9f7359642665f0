/* mc.c — multiple-choice sets (Belebele / MMLU-style JSONL) for `moetrace-capture run --mode score`. */
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

/* ---- multiple-choice sets -------------------------------------------------------------------------------- */

struct mtr_mc {
    arena a;
    mtr_mc_item *items; /* (n) */
    size_t n, cap;
};

/* choices from "choices", else Belebele's mc_answer1.., else Global-MMLU's option_a..: borrowed from o */
static int mc_choices(const char **ch, size_t *n, json_t *o, bool *raw, const char *path, size_t line)
{
    *n = 0;
    json_t *arr = json_object_get(o, "choices");
    if (arr && !json_is_null(arr)) {
        if (!json_is_array(arr)) return mtr_fail(MTR_EFORMAT, "%s:%zu: \"choices\" must be an array", path, line);
        if (json_array_size(arr) < 2 || json_array_size(arr) > MTR_CORPUS_MAX_CHOICES)
            return mtr_fail(MTR_EFORMAT, "%s:%zu: %zu choices (2 to %d allowed)", path, line, json_array_size(arr),
                        MTR_CORPUS_MAX_CHOICES);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            json_t *v = json_array_get(arr, i);
            if (!json_is_string(v)) return mtr_fail(MTR_EFORMAT, "%s:%zu: choice %zu is not a string", path, line, i);
            ch[(*n)++] = json_string_value(v);
        }
    } else {
        char key[32];
        for (int style = 0; style < 2 && !*n; style++)
            for (size_t i = 0; i < MTR_CORPUS_MAX_CHOICES; i++) {
                if (style == 0) snprintf(key, sizeof key, "mc_answer%zu", i + 1);
                else snprintf(key, sizeof key, "option_%c", (char)('a' + i));
                json_t *v = json_object_get(o, key);
                if (!v || json_is_null(v)) break;
                if (!json_is_string(v)) return mtr_fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be a string", path, line, key);
                ch[(*n)++] = json_string_value(v);
                *raw |= style == 0;
            }
        if (!*n) return mtr_fail(MTR_EFORMAT, "%s:%zu: missing \"choices\"", path, line);
        if (*n < 2) return mtr_fail(MTR_EFORMAT, "%s:%zu: 1 choice (2 to %d allowed)", path, line, MTR_CORPUS_MAX_CHOICES);
    }
    for (size_t i = 0; i < *n; i++)
        if (corp_is_blank(ch[i], strlen(ch[i]))) return mtr_fail(MTR_EFORMAT, "%s:%zu: choice %zu is empty", path, line, i);
    return 0;
}

/* the correct choice from "answer" (index, letter or text) or Belebele's 1-based "correct_answer_num" */
static int mc_answer(size_t *out, json_t *o, const char **ch, size_t n, const char *path, size_t line)
{
    json_t *v = json_object_get(o, "answer");
    const char *key = "answer";
    bool one_based = false;
    if (!v || json_is_null(v)) {
        v = json_object_get(o, "correct_answer_num");
        key = "correct_answer_num";
        one_based = true;
    }
    if (!v || json_is_null(v)) return mtr_fail(MTR_EFORMAT, "%s:%zu: missing \"answer\"", path, line);
    if (one_based) {
        long long k = -1;
        if (json_is_integer(v)) k = json_integer_value(v);
        else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            char *e;
            k = corp_is_digit((unsigned char)s[0]) ? strtoll(s, &e, 10) : -1;
            if (k >= 0 && *e) k = -1;
        } else return mtr_fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be a number", path, line, key);
        if (k < 1 || (unsigned long long)k > n)
            return mtr_fail(MTR_EFORMAT, "%s:%zu: \"%s\" must be 1 to %zu", path, line, key, n);
        *out = (size_t)(k - 1);
        return 0;
    }
    if (json_is_integer(v)) {
        json_int_t k = json_integer_value(v);
        if (k < 0 || (unsigned long long)k >= n)
            return mtr_fail(MTR_EFORMAT, "%s:%zu: \"answer\" %" JSON_INTEGER_FORMAT " is not a choice index (0 to %zu)",
                        path, line, k, n - 1);
        *out = (size_t)k;
        return 0;
    }
    if (!json_is_string(v))
        return mtr_fail(MTR_EFORMAT, "%s:%zu: \"answer\" must be an index, a letter or the text of a choice", path, line);
    const char *s = json_string_value(v);
    size_t by_text = SIZE_MAX, n_text = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(ch[i], s) == 0) by_text = i, n_text++;
    if (s[0] >= 'A' && s[0] <= 'Z' && !s[1]) {
        size_t k = (size_t)(s[0] - 'A');
        if (k >= n)
            return mtr_fail(MTR_EFORMAT, "%s:%zu: \"answer\" \"%s\" but the item has %zu choices (A to %c)", path, line, s,
                        n, (char)('A' + n - 1));
        if (n_text && by_text != k)
            return mtr_fail(MTR_EFORMAT, "%s:%zu: \"answer\" \"%s\" is ambiguous: letter of choice %zu, text of choice %zu",
                        path, line, s, k, by_text);
        *out = k;
        return 0;
    }
    if (n_text == 1) {
        *out = by_text;
        return 0;
    }
    if (n_text > 1)
        return mtr_fail(MTR_EFORMAT, "%s:%zu: \"answer\" \"%.*s\" is the text of %zu choices", path, line, SHOW, s, n_text);
    return mtr_fail(MTR_EFORMAT, "%s:%zu: \"answer\" \"%.*s\" is neither a letter A to %c nor the text of a choice", path,
                line, SHOW, s, (char)('A' + n - 1));
}

/* unit_id, else Belebele's link (+ "#" + question_number) */
static int mc_unit(const char **out, arena *a, json_t *o, bool *raw, const char *path, size_t line)
{
    char num[32], qnum[32];
    const char *u, *link, *q;
    int rc;
    if ((rc = corp_jfield(&u, num, o, "unit_id", true, path, line))) return rc;
    if (u) return corp_key_field(out, a, o, "unit_id", NULL, path, line);
    if ((rc = corp_jfield(&link, num, o, "link", false, path, line)) ||
        (rc = corp_jfield(&q, qnum, o, "question_number", true, path, line)))
        return rc;
    if (!link) return mtr_fail(MTR_EFORMAT, "%s:%zu: missing \"unit_id\"", path, line);
    *raw = true;
    size_t k = strlen(link) + (q ? strlen(q) + 1 : 0) + 1;
    char *s = corp_arena_alloc(a, k);
    if (!s) return corp_oom();
    snprintf(s, k, q ? "%s#%s" : "%s", link, q);
    *out = s;
    return corp_check_key(path, line, "unit_id", s);
}

static int mc_jsonl(mtr_mc *m, const char *buf, size_t len, const char *path, const char *file, filt *f)
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
        mtr_mc_item item = {0};
        item.file = file;
        item.line = line;
        bool raw = false;
        char num[32];
        const char *lang, *dataset, *passage, *question, *ch[MTR_CORPUS_MAX_CHOICES];
        if ((rc = mc_unit(&item.unit_id, &m->a, o, &raw, path, line)) ||
            (rc = corp_jfield(&lang, num, o, "lang", false, path, line)) ||
            (!lang && (rc = corp_jfield(&lang, num, o, "dialect", false, path, line))) ||
            (rc = corp_jfield(&dataset, num, o, "dataset", false, path, line)) ||
            (rc = corp_jfield(&passage, num, o, "passage", false, path, line)) ||
            (!passage && (rc = corp_jfield(&passage, num, o, "flores_passage", false, path, line))) ||
            (rc = corp_jfield(&question, num, o, "question", false, path, line)) ||
            (rc = mc_choices(ch, &item.n_choices, o, &raw, path, line)) ||
            (rc = mc_answer(&item.answer, o, ch, item.n_choices, path, line)))
            goto out;
        if (!lang) lang = f->o->lang;
        if (!dataset) dataset = f->o->dataset ? f->o->dataset : raw ? "belebele" : NULL;
        if (!lang || !dataset || !question) {
            rc = mtr_fail(MTR_EFORMAT, "%s:%zu: missing \"%s\"", path, line,
                      !lang ? "lang" : !dataset ? "dataset" : "question");
            goto out;
        }
        if ((rc = corp_check_key(path, line, "lang", lang)) || (rc = corp_check_key(path, line, "dataset", dataset)) ||
            (rc = corp_check_text(path, line, "question", question, strlen(question))) ||
            (passage && (rc = corp_check_text(path, line, "passage", passage, strlen(passage)))))
            goto out;
        if (!(item.lang = corp_arena_strdup(&m->a, lang)) || !(item.dataset = corp_arena_strdup(&m->a, dataset))) {
            rc = corp_oom();
            goto out;
        }
        if ((rc = corp_check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset))) goto out;
        if (corp_filt_keep(f, item.lang, item.dataset)) {
            const char **cc = corp_arena_alloc(&m->a, item.n_choices * sizeof *cc);
            if (!cc || !(item.question = corp_arena_strdup(&m->a, question)) ||
                (passage && !(item.passage = corp_arena_strdup(&m->a, passage)))) {
                rc = corp_oom();
                goto out;
            }
            for (size_t i = 0; i < item.n_choices; i++)
                if (!(cc[i] = corp_arena_strdup(&m->a, ch[i]))) {
                    rc = corp_oom();
                    goto out;
                }
            item.choices = cc;
            if ((rc = corp_grow((void **)&m->items, &m->cap, m->n, sizeof *m->items))) goto out;
            m->items[m->n++] = item;
        }
        json_decref(o);
        o = NULL;
    }
out:
    json_decref(o);
    corp_dup_free(&dups);
    return rc;
}

int mtr_mc_load(mtr_mc **out, const char *path, const mtr_corpus_opts *opts)
{
    *out = NULL;
    mtr_clear_error();
    filt f;
    char *buf = NULL;
    size_t len = 0;
    mtr_corpus_format fmt;
    const char *file;
    mtr_mc *m = calloc(1, sizeof *m);
    int rc = corp_filt_init(&f, opts);
    if (!m && !rc) rc = corp_oom();
    if (rc || (rc = corp_detect(&fmt, path, f.o->format))) goto out;
    if (fmt != MTR_CORPUS_JSONL) {
        rc = mtr_fail(MTR_EINVAL, "%s: multiple-choice sets are read from JSONL, not %s", path, mtr_corpus_format_name(fmt));
        goto out;
    }
    if (!(file = corp_arena_strdup(&m->a, path))) rc = corp_oom();
    if (rc || (rc = mtr_read_file(&buf, &len, path, CORPUS_MAX_FILE)) || (rc = corp_check_utf8(path, buf, len)) ||
        (rc = mc_jsonl(m, buf, len, path, file, &f)))
        goto out;
    rc = corp_filt_finish(&f, path);
out:
    free(buf);
    corp_filt_free(&f);
    if (rc) {
        mtr_mc_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

size_t mtr_mc_count(const mtr_mc *s) { return s ? s->n : 0; }

const mtr_mc_item *mtr_mc_get(const mtr_mc *s, size_t i) { return s && i < s->n ? &s->items[i] : NULL; }

void mtr_mc_destroy(mtr_mc *s)
{
    if (!s) return;
    corp_arena_free(&s->a);
    free(s->items);
    free(s);
}
