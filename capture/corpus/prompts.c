/* prompts.c — prompt templates (config/prompts.json) and their rendering of multiple-choice and generation items. */
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

/* ---- prompt templates ------------------------------------------------------------------------------------ */

typedef struct {
    const char *name;
    mtr_prompt_kind kind;
    const char *prompt, *choice_line, *continuation; /* choice_line, continuation: mc only */
    const char **stops;                              /* (n_stops): gen only */
    size_t n_stops;
    size_t line; /* where the template starts in its file (0 if not found) */
} tpl;

struct mtr_prompts {
    arena a;
    tpl *t; /* (n) */
    size_t n, cap;
    const char *file;
};

/* which placeholders a template string may use */
typedef enum { SC_MC_PROMPT, SC_CHOICE, SC_GEN_PROMPT } scope;

typedef struct {
    scope sc;
    const mtr_mc_item *mc;   /* NULL for gen, and when only checking names */
    const mtr_gen_item *gen;
    size_t choice;           /* SC_CHOICE: the choice rendered */
    const char *choices;     /* SC_MC_PROMPT: {choices} already rendered */
} rctx;

static bool name_is(const char *s, size_t n, const char *want) { return strlen(want) == n && memcmp(s, want, n) == 0; }

/* The value of placeholder s[0..n) (tmp holds short generated values). 0 with *val; MTR_EFORMAT for a name the
 * scope does not know; MTR_EINVAL when the item has no value (message set by the caller from *why). */
static int resolve(const char **val, char tmp[32], const char **why, const char *s, size_t n, const rctx *c)
{
    bool check = !c->mc && !c->gen;
    *val = "";
    *why = NULL;
    if (c->sc == SC_CHOICE) {
        if (!name_is(s, n, "letter") && !name_is(s, n, "choice") && !name_is(s, n, "number")) return MTR_EFORMAT;
        if (check) return 0;
        if (s[0] == 'c') {
            *val = c->mc->choices[c->choice];
            return 0;
        }
        if (s[0] == 'l') snprintf(tmp, 32, "%c", 'A' + (int)c->choice);
        else snprintf(tmp, 32, "%zu", c->choice + 1);
        *val = tmp;
        return 0;
    }
    if (name_is(s, n, "question")) {
        if (!check) *val = c->mc ? c->mc->question : c->gen->question;
        return 0;
    }
    if (name_is(s, n, "unit_id") || name_is(s, n, "lang") || name_is(s, n, "dataset")) {
        if (check) return 0;
        const char *u = c->mc ? c->mc->unit_id : c->gen->unit_id, *l = c->mc ? c->mc->lang : c->gen->lang,
                   *d = c->mc ? c->mc->dataset : c->gen->dataset;
        *val = s[0] == 'u' ? u : s[0] == 'l' ? l : d;
        return 0;
    }
    if (c->sc != SC_MC_PROMPT) return MTR_EFORMAT;
    if (name_is(s, n, "passage")) {
        if (check) return 0;
        if (!c->mc->passage) {
            *why = "the item has no passage";
            return MTR_EINVAL;
        }
        *val = c->mc->passage;
        return 0;
    }
    if (name_is(s, n, "choices")) {
        if (!check) *val = c->choices;
        return 0;
    }
    if (name_is(s, n, "n_choices")) {
        if (check) return 0;
        snprintf(tmp, 32, "%zu", c->mc->n_choices);
        *val = tmp;
        return 0;
    }
    if (n > 7 && memcmp(s, "choice_", 7) == 0 && n <= 9) { /* choice_0 .. choice_25, no leading zeros */
        size_t k = 0;
        for (size_t i = 7; i < n; i++) {
            if (!corp_is_digit((unsigned char)s[i]) || (i == 7 && s[i] == '0' && n > 8)) return MTR_EFORMAT;
            k = k * 10 + (size_t)(s[i] - '0');
        }
        if (k >= MTR_CORPUS_MAX_CHOICES) return MTR_EFORMAT;
        if (check) return 0;
        if (k >= c->mc->n_choices) {
            *why = "the item has fewer choices";
            return MTR_EINVAL;
        }
        *val = c->mc->choices[k];
        return 0;
    }
    return MTR_EFORMAT;
}

/* Substitute the placeholders of t into out (NULL: check names only). who prefixes error details ("prompts.json:3:
 * template \"mmlu\""), field names the template string. */
static int expand(sbuf *out, const char *t, const rctx *c, const char *who, const char *field)
{
    int rc = 0;
    for (const char *p = t; *p && !rc;) {
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            if (out) rc = mtr_buf_put(out, p, 1);
            p += 2;
            continue;
        }
        if (*p != '{') {
            size_t k = strcspn(p, "{}");
            if (!k) k = 1; /* a lone '}' is literal */
            if (out) rc = mtr_buf_put(out, p, k);
            p += k;
            continue;
        }
        const char *s = p + 1;
        size_t n = 0;
        while (corp_is_alpha((unsigned char)s[n]) || corp_is_digit((unsigned char)s[n]) || s[n] == '_') n++;
        if (s[n] != '}' || !n)
            return mtr_fail(MTR_EFORMAT, "%s: \"%s\" has a '{' that opens no placeholder (write {{ for a brace) at "
                                     "\"%.20s\"", who, field, p);
        const char *val, *why;
        char tmp[32];
        rc = resolve(&val, tmp, &why, s, n, c);
        if (rc == MTR_EFORMAT)
            return mtr_fail(MTR_EFORMAT, "%s: unknown placeholder {%.*s} in \"%s\"", who, (int)(n < SHOW ? n : SHOW), s,
                        field);
        if (rc) return mtr_fail(rc, "%s: \"%s\" uses {%.*s} but %s", who, field, (int)n, s, why);
        if (out) rc = mtr_buf_put(out, val, strlen(val));
        p = s + n + 1;
    }
    return rc;
}

/* 1-based line of "name": in the file text (a key of the templates object), 0 if not found */
static size_t key_line(const char *text, size_t len, const char *name)
{
    size_t k = strlen(name);
    for (size_t i = 0; i + k + 2 <= len; i++) {
        if (text[i] != '"' || (i && text[i - 1] == '\\') || memcmp(text + i + 1, name, k) != 0 ||
            text[i + k + 1] != '"')
            continue;
        size_t j = i + k + 2;
        while (j < len && corp_is_space((unsigned char)text[j])) j++;
        if (j < len && text[j] == ':') {
            size_t line = 1;
            for (size_t m = 0; m < i; m++) line += text[m] == '\n';
            return line;
        }
    }
    return 0;
}

static int tpl_string(const char **out, arena *a, json_t *v, const char *who, const char *key)
{
    if (!json_is_string(v)) return mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be a string", who, key);
    *out = corp_arena_strdup(a, json_string_value(v));
    return *out ? 0 : corp_oom();
}

static int tpl_parse(tpl *t, arena *a, const char *name, json_t *o, const char *who)
{
    memset(t, 0, sizeof *t);
    if (!(t->name = corp_arena_strdup(a, name))) return corp_oom();
    if (!json_is_object(o)) return mtr_fail(MTR_EFORMAT, "%s: not a JSON object", who);
    json_t *kind = json_object_get(o, "kind");
    if (!json_is_string(kind) || (strcmp(json_string_value(kind), "mc") && strcmp(json_string_value(kind), "gen")))
        return mtr_fail(MTR_EFORMAT, "%s: \"kind\" must be \"mc\" or \"gen\"", who);
    t->kind = json_string_value(kind)[0] == 'm' ? MTR_PROMPT_MC : MTR_PROMPT_GEN;
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(o, key, v) {
        bool mc = t->kind == MTR_PROMPT_MC;
        if (strcmp(key, "kind") == 0) continue;
        if (strcmp(key, "prompt") == 0) rc = tpl_string(&t->prompt, a, v, who, key);
        else if (mc && strcmp(key, "choice_line") == 0) rc = tpl_string(&t->choice_line, a, v, who, key);
        else if (mc && strcmp(key, "continuation") == 0) rc = tpl_string(&t->continuation, a, v, who, key);
        else if (!mc && strcmp(key, "stop") == 0) {
            if (!json_is_array(v)) return mtr_fail(MTR_EFORMAT, "%s: \"stop\" must be an array of strings", who);
            t->n_stops = json_array_size(v);
            if (t->n_stops && !(t->stops = corp_arena_alloc(a, t->n_stops * sizeof *t->stops))) return corp_oom();
            for (size_t i = 0; i < t->n_stops; i++) {
                json_t *e = json_array_get(v, i);
                if (!json_is_string(e) || !json_string_length(e))
                    return mtr_fail(MTR_EFORMAT, "%s: \"stop\" must be an array of non-empty strings", who);
                if (!(t->stops[i] = corp_arena_strdup(a, json_string_value(e)))) return corp_oom();
            }
        } else return mtr_fail(MTR_EFORMAT, "%s: unknown key \"%.*s\" for a %s template", who, SHOW, key,
                           mc ? "mc" : "gen");
        if (rc) return rc;
    }
    if (!t->prompt) return mtr_fail(MTR_EFORMAT, "%s: missing \"prompt\"", who);
    if (t->kind == MTR_PROMPT_MC) {
        if (!t->choice_line) t->choice_line = "{letter}. {choice}";
        if (!t->continuation) t->continuation = " {letter}";
    }
    rctx c = {t->kind == MTR_PROMPT_MC ? SC_MC_PROMPT : SC_GEN_PROMPT, NULL, NULL, 0, NULL};
    if ((rc = expand(NULL, t->prompt, &c, who, "prompt"))) return rc;
    if (t->kind == MTR_PROMPT_MC) {
        c.sc = SC_CHOICE;
        if ((rc = expand(NULL, t->choice_line, &c, who, "choice_line")) ||
            (rc = expand(NULL, t->continuation, &c, who, "continuation")))
            return rc;
    }
    return 0;
}

int mtr_prompts_load_buffer(mtr_prompts **out, const char *json, size_t len, const char *name)
{
    *out = NULL;
    mtr_clear_error();
    if (!name) name = "prompts";
    json_error_t je;
    json_t *root = NULL;
    mtr_prompts *p = calloc(1, sizeof *p);
    int rc = 0;
    if (!p || !(p->file = corp_arena_strdup(&p->a, name))) {
        rc = corp_oom();
        goto out;
    }
    if ((rc = corp_check_utf8(name, json, len))) goto out;
    if (!(root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je))) {
        rc = mtr_fail(MTR_EFORMAT, "%s:%d: not JSON: %s (column %d)", name, je.line, je.text, je.column);
        goto out;
    }
    json_t *ts = json_object_get(root, "templates");
    if (!json_is_object(ts)) {
        rc = mtr_fail(MTR_EFORMAT, "%s:1: no \"templates\" object", name);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(ts, key, v) {
        char who[512];
        size_t line = key_line(json, len, key);
        snprintf(who, sizeof who, "%s:%zu: template \"%.*s\"", name, line, SHOW, key);
        if ((rc = corp_grow((void **)&p->t, &p->cap, p->n, sizeof *p->t)) ||
            (rc = tpl_parse(&p->t[p->n], &p->a, key, v, who)))
            goto out;
        p->t[p->n++].line = line;
    }
    if (!p->n) rc = mtr_fail(MTR_EFORMAT, "%s:1: no templates", name);
out:
    json_decref(root);
    if (rc) {
        mtr_prompts_destroy(p);
        return rc;
    }
    *out = p;
    return 0;
}

int mtr_prompts_load(mtr_prompts **out, const char *path)
{
    *out = NULL;
    char *buf = NULL;
    size_t len;
    int rc = mtr_read_file(&buf, &len, path, CORPUS_MAX_FILE);
    if (!rc) rc = mtr_prompts_load_buffer(out, buf, len, path);
    free(buf);
    return rc;
}

void mtr_prompts_destroy(mtr_prompts *p)
{
    if (!p) return;
    corp_arena_free(&p->a);
    free(p->t);
    free(p);
}

size_t mtr_prompts_count(const mtr_prompts *p) { return p ? p->n : 0; }

const char *mtr_prompts_name(const mtr_prompts *p, size_t i) { return p && i < p->n ? p->t[i].name : NULL; }

static const tpl *find_tpl(const mtr_prompts *p, const char *name)
{
    for (size_t i = 0; p && name && i < p->n; i++)
        if (strcmp(p->t[i].name, name) == 0) return &p->t[i];
    mtr_fail(MTR_ENOTFOUND, "%s: no template \"%.*s\"", p ? p->file : "prompts", SHOW, name ? name : "");
    return NULL;
}

int mtr_prompts_kind(const mtr_prompts *p, const char *name)
{
    const tpl *t = find_tpl(p, name);
    return t ? (int)t->kind : MTR_ENOTFOUND;
}

int mtr_prompts_stops(const char *const **out, size_t *n, const mtr_prompts *p, const char *name)
{
    *out = NULL;
    *n = 0;
    const tpl *t = find_tpl(p, name);
    if (!t) return MTR_ENOTFOUND;
    if (t->kind != MTR_PROMPT_GEN)
        return mtr_fail(MTR_EINVAL, "%s:%zu: template \"%s\" is not a generation template", p->file, t->line, t->name);
    *out = t->stops;
    *n = t->n_stops;
    return 0;
}

void mtr_prompt_mc_free(mtr_prompt_mc *m)
{
    if (!m) return;
    free(m->prompt);
    for (size_t i = 0; i < m->n_continuations; i++) free(m->continuations[i]);
    free(m->continuations);
    memset(m, 0, sizeof *m);
}

int mtr_prompt_render_mc(mtr_prompt_mc *out, const mtr_prompts *p, const char *name, const mtr_mc_item *item)
{
    memset(out, 0, sizeof *out);
    mtr_clear_error();
    sbuf choices = {0}, b = {0};
    int rc = 0;
    const tpl *t = find_tpl(p, name);
    if (!t) return MTR_ENOTFOUND;
    char who[512];
    snprintf(who, sizeof who, "template \"%.*s\" (%s:%zu) on %s:%zu", SHOW, t->name, p->file, t->line,
             item->file ? item->file : "item", item->line);
    if (t->kind != MTR_PROMPT_MC) return mtr_fail(MTR_EINVAL, "%s: not a multiple-choice template", who);
    rctx c = {SC_CHOICE, item, NULL, 0, NULL};
    if ((rc = mtr_buf_put(&choices, "", 0))) goto out;
    for (size_t i = 0; i < item->n_choices; i++) {
        c.choice = i;
        if ((i && (rc = mtr_buf_put(&choices, "\n", 1))) || (rc = expand(&choices, t->choice_line, &c, who, "choice_line")))
            goto out;
    }
    if (!(out->continuations = calloc(item->n_choices, sizeof *out->continuations))) {
        rc = corp_oom();
        goto out;
    }
    for (size_t i = 0; i < item->n_choices; i++) {
        c.choice = i;
        b = (sbuf){0};
        if ((rc = mtr_buf_put(&b, "", 0)) || (rc = expand(&b, t->continuation, &c, who, "continuation"))) goto out;
        out->continuations[out->n_continuations++] = b.p;
        b = (sbuf){0};
    }
    c.sc = SC_MC_PROMPT;
    c.choices = choices.p;
    if ((rc = mtr_buf_put(&b, "", 0)) || (rc = expand(&b, t->prompt, &c, who, "prompt"))) goto out;
    out->prompt = b.p;
    b = (sbuf){0};
out:
    free(b.p);
    free(choices.p);
    if (rc) mtr_prompt_mc_free(out);
    return rc;
}

int mtr_prompt_render_gen(char **out, const mtr_prompts *p, const char *name, const mtr_gen_item *item)
{
    *out = NULL;
    mtr_clear_error();
    const tpl *t = find_tpl(p, name);
    if (!t) return MTR_ENOTFOUND;
    char who[512];
    snprintf(who, sizeof who, "template \"%.*s\" (%s:%zu) on %s:%zu", SHOW, t->name, p->file, t->line,
             item->file ? item->file : "item", item->line);
    if (t->kind != MTR_PROMPT_GEN) return mtr_fail(MTR_EINVAL, "%s: not a generation template", who);
    sbuf b = {0};
    rctx c = {SC_GEN_PROMPT, NULL, item, 0, NULL};
    int rc = mtr_buf_put(&b, "", 0);
    if (rc || (rc = expand(&b, t->prompt, &c, who, "prompt"))) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    return 0;
}
