/* fuzz_corpus.c — libFuzzer target for the corpus readers (capture/corpus.c, capture/mtr_corpus.h): capture corpora
 * (JSONL, TSV, FLORES-style directories), multiple-choice and generation sets, prompt templates and the answer
 * parser. Arbitrary bytes must load with every item's strings valid, or fail with a pinned error and a detail;
 * never a crash or a read past the input. The first byte chooses the reader; the rest is the file (a FLORES
 * directory: parts split at FUZZ_SEP, each a file-name line then the file's text). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mtr_corpus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile size_t sink;

static void touch(const char *s)
{
    if (s) sink += strlen(s);
}

/* templates to render loaded items with: the shipped prompts.json (run from the repository root), if present */
static mtr_prompts *shipped(void)
{
    static int tried;
    static mtr_prompts *p;
    if (!tried) {
        tried = 1;
        if (mtr_prompts_load(&p, "config/prompts.json")) p = NULL;
    }
    return p;
}

static void render_mc(const mtr_prompts *p, const mtr_mc_item *it)
{
    for (size_t t = 0; p && t < mtr_prompts_count(p); t++) {
        mtr_prompt_mc r = {0};
        if (mtr_prompt_render_mc(&r, p, mtr_prompts_name(p, t), it) == 0) {
            touch(r.prompt);
            for (size_t c = 0; c < r.n_continuations; c++) touch(r.continuations[c]);
        }
        mtr_prompt_mc_free(&r);
    }
}

static void render_gen(const mtr_prompts *p, const mtr_gen_item *it)
{
    for (size_t t = 0; p && t < mtr_prompts_count(p); t++) {
        char *s = NULL;
        if (mtr_prompt_render_gen(&s, p, mtr_prompts_name(p, t), it) == 0) touch(s);
        free(s);
        const char *const *stops = NULL;
        size_t n = 0;
        if (mtr_prompts_stops(&stops, &n, p, mtr_prompts_name(p, t)) == 0)
            for (size_t i = 0; i < n; i++) touch(stops[i]);
    }
}

static void use_corpus(const char *path, const mtr_corpus_opts *o)
{
    mtr_corpus *c = NULL;
    if (mtr_corpus_load(&c, path, o) == 0) {
        for (size_t i = 0; i < mtr_corpus_count(c); i++) {
            const mtr_corpus_item *it = mtr_corpus_get(c, i);
            touch(it->unit_id), touch(it->lang), touch(it->dataset), touch(it->item_id), touch(it->text);
            for (size_t m = 0; m < it->n_messages; m++) touch(it->messages[m].role), touch(it->messages[m].content);
        }
    } else
        touch(mtr_errmsg());
    mtr_corpus_destroy(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned mode = data[0] % 9;
    data++, size--;
    char path[512];
    mtr_corpus_opts o = MTR_CORPUS_OPTS_INIT;
    switch (mode) {
    case 0: /* capture corpus, JSONL */
        if (fuzz_write(path, sizeof path, "c.jsonl", data, size)) return 0;
        use_corpus(path, &o);
        break;
    case 1: /* capture corpus, TSV */
        if (fuzz_write(path, sizeof path, "c.tsv", data, size)) return 0;
        use_corpus(path, &o);
        break;
    case 2: { /* FLORES-style directory: parts "name\ntext" */
        char dir[512], f[600];
        fuzz_empty_dir(dir, sizeof dir, "flores");
        const uint8_t *ptr[FUZZ_MAX_PARTS];
        size_t len[FUZZ_MAX_PARTS];
        size_t n = fuzz_split(ptr, len, FUZZ_MAX_PARTS, data, size);
        for (size_t i = 0; i < n; i++) {
            const uint8_t *nl = memchr(ptr[i], '\n', len[i]);
            size_t nlen = nl ? (size_t)(nl - ptr[i]) : 0;
            if (nlen == 0 || nlen > 64) continue;
            char name[80] = "flores/";
            bool clean = true;
            for (size_t k = 0; k < nlen; k++) {
                char ch = (char)ptr[i][k];
                clean &= (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                         ch == '_' || ch == '.' || ch == '-';
            }
            if (!clean) continue;
            memcpy(name + 7, ptr[i], nlen);
            name[7 + nlen] = 0;
            if (fuzz_write(f, sizeof f, name, nl + 1, len[i] - nlen - 1)) return 0;
        }
        o.dataset = "flores";
        use_corpus(dir, &o);
        break;
    }
    case 3: { /* multiple-choice set, rendered through the shipped templates */
        if (fuzz_write(path, sizeof path, "mc.jsonl", data, size)) return 0;
        mtr_mc *s = NULL;
        if (mtr_mc_load(&s, path, &o) == 0)
            for (size_t i = 0; i < mtr_mc_count(s); i++) render_mc(shipped(), mtr_mc_get(s, i));
        mtr_mc_destroy(s);
        break;
    }
    case 4:   /* generation set, JSONL */
    case 5: { /* generation set, TSV (language and dataset from the file name) */
        if (fuzz_write(path, sizeof path, mode == 4 ? "gen.jsonl" : "mgsm_fr.tsv", data, size)) return 0;
        mtr_gen *s = NULL;
        if (mtr_gen_load(&s, path, &o) == 0)
            for (size_t i = 0; i < mtr_gen_count(s); i++) {
                const mtr_gen_item *it = mtr_gen_get(s, i);
                render_gen(shipped(), it);
                sink += mtr_corpus_answer_matches(it->answer, it->question);
            }
        mtr_gen_destroy(s);
        break;
    }
    case 6: { /* prompt templates, rendered with fixed items */
        mtr_prompts *p = NULL;
        if (mtr_prompts_load_buffer(&p, (const char *)data, size, "fuzz.json") == 0) {
            static const char *const choices[] = {"one", "two {x}", "", "{{four}}"};
            mtr_mc_item mc = {"u1", "eng_Latn", "mc", "a passage", "why?", choices, 4, 1, "mc.jsonl", 1};
            mtr_gen_item gen = {"u1", "fra_Latn", "mgsm", "2 + 2 ?", "4", "gen.jsonl", 1};
            render_mc(p, &mc);
            mc.passage = NULL;
            mc.n_choices = 2;
            render_mc(p, &mc);
            render_gen(p, &gen);
        }
        mtr_prompts_destroy(p);
        break;
    }
    case 7: /* capture corpus with the filters run's options use */
        if (fuzz_write(path, sizeof path, "f.jsonl", data, size)) return 0;
        o.langs = "eng_Latn,fra_Latn";
        o.max_items = 3;
        o.require_lang = MTR_CORPUS_ENGLISH;
        use_corpus(path, &o);
        break;
    case 8: { /* the number extraction of generated answers, on text that is not NUL-terminated in the input */
        char *s = malloc(size + 1);
        if (!s) return 0;
        memcpy(s, data, size);
        s[size] = 0;
        char num[MTR_CORPUS_NUMBER_MAX];
        if (mtr_corpus_extract_number(num, sizeof num, s) == 0) sink += mtr_corpus_answer_matches(num, s);
        free(s);
        break;
    }
    }
    return 0;
}
