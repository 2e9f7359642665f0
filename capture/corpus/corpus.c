/* corpus.c — capture corpora (capture/corpus/mtr_corpus.h): JSONL (text or chat messages), FLORES-style
 * directories (one file per language, line-aligned) and TSV, read whole and parsed line by line so that every
 * error names its line. */
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

/* ---- capture corpora ------------------------------------------------------------------------------------- */

struct mtr_corpus {
    arena a;
    mtr_corpus_item *items; /* (n) */
    size_t n, cap;
    mtr_corpus_format format;
};

static int corpus_push(mtr_corpus *c, const mtr_corpus_item *it)
{
    int rc = corp_grow((void **)&c->items, &c->cap, c->n, sizeof *c->items);
    if (rc) return rc;
    c->items[c->n++] = *it;
    return 0;
}

/* messages of a JSONL chat item: validated; copied into the arena only when keep */
static int corpus_messages(mtr_corpus_item *it, arena *a, json_t *msgs, bool keep, const char *path, size_t line)
{
    if (!json_is_array(msgs)) return mtr_fail(MTR_EFORMAT, "%s:%zu: \"messages\" must be an array", path, line);
    size_t n = json_array_size(msgs);
    if (!n) return mtr_fail(MTR_EFORMAT, "%s:%zu: empty \"messages\"", path, line);
    mtr_corpus_message *m = keep ? corp_arena_alloc(a, n * sizeof *m) : NULL;
    if (keep && !m) return corp_oom();
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(msgs, i);
        json_t *r = json_object_get(e, "role"), *c = json_object_get(e, "content");
        if (!json_is_object(e))
            return mtr_fail(MTR_EFORMAT, "%s:%zu: message %zu is not an object", path, line, i + 1);
        if (!json_is_string(r) || !json_string_length(r))
            return mtr_fail(MTR_EFORMAT, "%s:%zu: message %zu: \"role\" must be a non-empty string", path, line, i + 1);
        if (!json_is_string(c))
            return mtr_fail(MTR_EFORMAT, "%s:%zu: message %zu: \"content\" must be a string", path, line, i + 1);
        if (corp_is_blank(json_string_value(c), json_string_length(c)))
            return mtr_fail(MTR_EFORMAT, "%s:%zu: message %zu: empty \"content\"", path, line, i + 1);
        if (keep) {
            m[i].role = corp_arena_strdup(a, json_string_value(r));
            m[i].content = corp_arena_strdup(a, json_string_value(c));
            if (!m[i].role || !m[i].content) return corp_oom();
        }
    }
    it->messages = m;
    it->n_messages = keep ? n : 0;
    return 0;
}

static int corpus_jsonl(mtr_corpus *c, const char *buf, size_t len, const char *path, const char *file, filt *f)
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
        mtr_corpus_item item = {0};
        item.file = file;
        item.line = line;
        const char *text, *id;
        char num[32];
        if ((rc = corp_key_field(&item.unit_id, &c->a, o, "unit_id", NULL, path, line)) ||
            (rc = corp_key_field(&item.lang, &c->a, o, "lang", f->o->lang, path, line)) ||
            (rc = corp_key_field(&item.dataset, &c->a, o, "dataset", f->o->dataset, path, line)) ||
            (rc = corp_jfield(&text, num, o, "text", false, path, line)))
            goto out;
        json_t *msgs = json_object_get(o, "messages");
        if (json_is_null(msgs)) msgs = NULL;
        if (text && msgs) {
            rc = mtr_fail(MTR_EFORMAT, "%s:%zu: both \"text\" and \"messages\"", path, line);
            goto out;
        }
        if (!text && !msgs) {
            rc = mtr_fail(MTR_EFORMAT, "%s:%zu: missing \"text\" (or \"messages\")", path, line);
            goto out;
        }
        if (text && (rc = corp_check_text(path, line, "text", text, strlen(text)))) goto out;
        if ((rc = corp_check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset))) goto out;
        bool keep = corp_filt_keep(f, item.lang, item.dataset);
        if (msgs && (rc = corpus_messages(&item, &c->a, msgs, keep, path, line))) goto out;
        if ((rc = corp_jfield(&id, num, o, "id", true, path, line))) goto out;
        if (keep) {
            if ((text && !(item.text = corp_arena_strdup(&c->a, text))) ||
                (id && !(item.item_id = corp_arena_strdup(&c->a, id)))) {
                rc = corp_oom();
                goto out;
            }
            if ((rc = corpus_push(c, &item))) goto out;
        }
        json_decref(o);
        o = NULL;
    }
out:
    json_decref(o);
    corp_dup_free(&dups);
    return rc;
}

static int corpus_tsv(mtr_corpus *c, const char *buf, size_t len, const char *path, const char *file, filt *f)
{
    int rc = 0;
    dupset dups = {0};
    sbuf text = {0};
    span fl[TSV_MAX_COLS];
    tsv_header h;
    lines it;
    const char *s;
    size_t n;
    corp_lines_init(&it, buf, len);
    bool have = false;
    while ((have = corp_lines_next(&it, &s, &n)) && corp_is_blank(s, n)) {}
    if (!have) {
        rc = mtr_fail(MTR_EFORMAT, "%s:1: no header line (unit_id, lang, text, optional dataset, id)", path);
        goto out;
    }
    if ((rc = corp_tsv_read_header(&h, s, n, path, it.line))) goto out;
    int cu = corp_tsv_col(&h, "unit_id"), cl = corp_tsv_col(&h, "lang"), ct = corp_tsv_col(&h, "text"), cd = corp_tsv_col(&h, "dataset"),
        ci = corp_tsv_col(&h, "id");
    if (cu < 0 || cl < 0 || ct < 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s:%zu: the header lacks column \"%s\" (needs unit_id, lang, text)", path, it.line,
                  cu < 0 ? "unit_id" : cl < 0 ? "lang" : "text");
        goto out;
    }
    while (corp_lines_next(&it, &s, &n)) {
        size_t line = it.line;
        if (!n) continue;
        if ((rc = corp_tsv_row(fl, &h, s, n, path, line))) goto out;
        mtr_corpus_item item = {0};
        item.file = file;
        item.line = line;
        if ((rc = corp_tsv_key(&item.unit_id, &c->a, fl, cu, "unit_id", NULL, path, line)) ||
            (rc = corp_tsv_key(&item.lang, &c->a, fl, cl, "lang", NULL, path, line)) ||
            (rc = corp_tsv_key(&item.dataset, &c->a, fl, cd, "dataset", f->o->dataset, path, line)) ||
            (rc = corp_tsv_unescape(&text, fl[ct].s, fl[ct].n)) || (rc = corp_check_text(path, line, "text", text.p, text.n)) ||
            (rc = corp_check_dup(&dups, path, line, item.unit_id, item.lang, item.dataset)))
            goto out;
        if (corp_filt_keep(f, item.lang, item.dataset)) {
            if (!(item.text = corp_arena_strndup(&c->a, text.p, text.n)) ||
                (ci >= 0 && fl[ci].n && !(item.item_id = corp_arena_strndup(&c->a, fl[ci].s, fl[ci].n)))) {
                rc = corp_oom();
                goto out;
            }
            if ((rc = corpus_push(c, &item))) goto out;
        }
    }
out:
    free(text.p);
    corp_dup_free(&dups);
    return rc;
}

/* one language file of a FLORES directory */
typedef struct {
    char *name;         /* file name */
    const char *path;   /* dir/name, arena */
    const char *lang;   /* arena */
    const char **lines; /* (n_lines) arena strings */
    size_t n_lines;
} flores_file;

static int cmp_flores(const void *a, const void *b)
{
    return strcmp(((const flores_file *)a)->name, ((const flores_file *)b)->name);
}

static int flores_read(flores_file *ff, arena *a)
{
    char *buf = NULL;
    size_t len, cap = 0;
    int rc = mtr_read_file(&buf, &len, ff->path, CORPUS_MAX_FILE);
    if (rc || (rc = corp_check_utf8(ff->path, buf, len))) goto out;
    lines it;
    const char *s;
    size_t n;
    corp_lines_init(&it, buf, len);
    while (corp_lines_next(&it, &s, &n)) {
        if ((rc = corp_check_text(ff->path, it.line, "text", s, n))) goto out;
        if ((rc = corp_grow((void **)&ff->lines, &cap, ff->n_lines, sizeof *ff->lines))) goto out;
        if (!(ff->lines[ff->n_lines++] = corp_arena_strndup(a, s, n))) {
            rc = corp_oom();
            goto out;
        }
    }
    if (!ff->n_lines) rc = mtr_fail(MTR_EFORMAT, "%s:1: empty file", ff->path);
out:
    free(buf);
    return rc;
}

static int corpus_flores(mtr_corpus *c, const char *dir, filt *f)
{
    int rc = 0;
    DIR *d = NULL;
    flores_file *files = NULL;
    size_t nf = 0, cap = 0;
    char *real = NULL, *root = strdup(dir);
    if (!root) return corp_oom();
    for (size_t k = strlen(root); k > 1 && root[k - 1] == '/'; k--) root[k - 1] = '\0';
    const char *dataset = f->o->dataset;
    if (!dataset) { /* "." or "..": the directory's real name */
        dataset = corp_base_name(root);
        if ((strcmp(dataset, ".") == 0 || strcmp(dataset, "..") == 0) && (real = realpath(root, NULL)))
            dataset = corp_base_name(real);
    }
    if (!*dataset || corp_check_key(root, 0, "dataset", dataset)) {
        rc = mtr_fail(MTR_EINVAL, "%s: no usable dataset name from the directory; give one", root);
        goto out;
    }
    if (!(dataset = corp_arena_strdup(&c->a, dataset))) {
        rc = corp_oom();
        goto out;
    }
    if (!(d = opendir(root))) {
        rc = mtr_fail(MTR_EIO, "%s: %s", root, strerror(errno));
        goto out;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *dot = strchr(de->d_name, '.');
        if (de->d_name[0] == '.' || !dot) continue;
        size_t plen = strlen(root) + 1 + strlen(de->d_name) + 1;
        char *p = corp_arena_alloc(&c->a, plen);
        if (!p) {
            rc = corp_oom();
            goto out;
        }
        snprintf(p, plen, "%s/%s", root, de->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        const char *lang = corp_arena_strndup(&c->a, de->d_name, (size_t)(dot - de->d_name));
        if (!lang) {
            rc = corp_oom();
            goto out;
        }
        if ((rc = corp_check_key(p, 0, "lang", lang))) {
            rc = mtr_fail(MTR_EFORMAT, "%s: the file name does not give a language code", p);
            goto out;
        }
        if (f->langs.n) { /* read only the languages asked for */
            bool want = false;
            for (size_t i = 0; i < f->langs.n; i++) want |= strcmp(f->langs.v[i], lang) == 0;
            if (!want) continue;
        }
        if ((rc = corp_grow((void **)&files, &cap, nf, sizeof *files))) goto out;
        files[nf] = (flores_file){strdup(de->d_name), p, lang, NULL, 0};
        if (!files[nf++].name) {
            rc = corp_oom();
            goto out;
        }
    }
    if (!nf) {
        rc = f->langs.n ? mtr_fail(MTR_ENOTFOUND, "%s: no file of the languages asked for (%.*s)", root, 200, f->o->langs)
                        : mtr_fail(MTR_EFORMAT, "%s: no language files (named like eng_Latn.devtest or en.txt)", root);
        goto out;
    }
    qsort(files, nf, sizeof *files, cmp_flores);
    for (size_t i = 1; i < nf; i++)
        if (strcmp(files[i].lang, files[i - 1].lang) == 0) {
            rc = mtr_fail(MTR_EFORMAT, "%s: language \"%s\" again (also %s)", files[i].path, files[i].lang,
                      files[i - 1].path);
            goto out;
        }
    for (size_t i = 0; i < nf; i++) {
        if ((rc = flores_read(&files[i], &c->a))) goto out;
        if (files[i].n_lines != files[0].n_lines) {
            size_t a = files[i].n_lines, b = files[0].n_lines;
            rc = mtr_fail(MTR_EFORMAT, "%s:%zu: %zu lines, but %s has %zu (files must be line-aligned)", files[i].path,
                      (a < b ? a : b) + 1, a, files[0].path, b);
            goto out;
        }
    }
    const char *prefix = f->o->unit_prefix ? f->o->unit_prefix : "";
    for (size_t u = 0; u < files[0].n_lines; u++) {
        char unit[64 + MTR_CORPUS_MAX_KEY];
        snprintf(unit, sizeof unit, "%s%zu", prefix, u + 1);
        if ((rc = corp_check_key(files[0].path, u + 1, "unit_id", unit))) goto out;
        const char *uid = NULL;
        for (size_t i = 0; i < nf; i++) {
            if (!corp_filt_keep(f, files[i].lang, dataset)) continue;
            if (!uid && !(uid = corp_arena_strdup(&c->a, unit))) {
                rc = corp_oom();
                goto out;
            }
            mtr_corpus_item item = {.unit_id = uid, .lang = files[i].lang, .dataset = dataset,
                                    .text = files[i].lines[u], .file = files[i].path, .line = u + 1};
            if ((rc = corpus_push(c, &item))) goto out;
        }
    }
out:
    if (d) closedir(d);
    for (size_t i = 0; i < nf; i++) {
        free(files[i].name);
        free(files[i].lines);
    }
    free(files);
    free(real);
    free(root);
    return rc;
}

int mtr_corpus_load(mtr_corpus **out, const char *path, const mtr_corpus_opts *opts)
{
    *out = NULL;
    mtr_clear_error();
    filt f;
    char *buf = NULL;
    size_t len = 0;
    mtr_corpus *c = calloc(1, sizeof *c);
    int rc = corp_filt_init(&f, opts);
    if (!c && !rc) rc = corp_oom();
    if (rc || (rc = corp_detect(&c->format, path, f.o->format))) goto out;
    if (c->format == MTR_CORPUS_FLORES) {
        rc = corpus_flores(c, path, &f);
    } else {
        const char *file = corp_arena_strdup(&c->a, path);
        if (!file) rc = corp_oom();
        if (rc || (rc = mtr_read_file(&buf, &len, path, CORPUS_MAX_FILE)) || (rc = corp_check_utf8(path, buf, len))) goto out;
        rc = c->format == MTR_CORPUS_JSONL ? corpus_jsonl(c, buf, len, path, file, &f)
                                           : corpus_tsv(c, buf, len, path, file, &f);
    }
    if (!rc) rc = corp_filt_finish(&f, path);
out:
    free(buf);
    corp_filt_free(&f);
    if (rc) {
        mtr_corpus_destroy(c);
        return rc;
    }
    *out = c;
    return 0;
}

size_t mtr_corpus_count(const mtr_corpus *c) { return c ? c->n : 0; }

const mtr_corpus_item *mtr_corpus_get(const mtr_corpus *c, size_t i) { return c && i < c->n ? &c->items[i] : NULL; }

mtr_corpus_format mtr_corpus_format_of(const mtr_corpus *c) { return c ? c->format : MTR_CORPUS_AUTO; }

void mtr_corpus_destroy(mtr_corpus *c)
{
    if (!c) return;
    corp_arena_free(&c->a);
    free(c->items);
    free(c);
}
