/* test_eval.c — the evaluation room (capture/eval/, mtr_eval.h) on the committed tiny checkpoints: multiple-choice
 * log-likelihoods and greedy generations equal the PyTorch reference (tests/golden/eval-tiny.json, made by
 * tests/golden/make_eval_golden.py), also when a continuation re-tokenises the prompt's end; the accuracy files are
 * what `moetrace-capture run` wrote before the room existed and read back through moetrace-stats' reader; prefill
 * and recording against the model goldens; token roles; steering; and the error cases with their codes and
 * one-line details. */
#include <jansson.h>
#include <math.h>
#include <sys/stat.h>

#include "mtr_eval.h"
#include "mtr_stats.h"
#include "testutil.h"

#define TINY "tests/models/tiny"
#define MC_SET "tests/data/mc-mini.jsonl"
#define GEN_SET "tests/data/gen-mini.jsonl"
#define PROMPTS "config/prompts.json"
#define GOLDEN "tests/golden/eval-tiny.json"
#define MERGES_TOK "tests/golden/eval-merges"
/* the same template as MERGES_TEMPLATE in tests/golden/make_eval_golden.py */
#define MERGES_TEMPLATE \
    "{\"templates\": {\"merges\": {\"kind\": \"mc\", \"prompt\": \"{question}\\nAnswer: \", "   \
    "\"continuation\": \"{choice}\"}}}"
/* log-likelihoods: f32 engine vs the reference's double log-softmax over f32 logits */
#define LL_TOL 1e-4

/* A loaded model, its tokenizer and the evaluation inputs. */
typedef struct {
    mtr_model *model;
    mtr_tok *tok;
    mtr_mc *mc;
    mtr_gen *gen;
    mtr_prompts *prompts;
} fixture;

static void fx_open(fixture *f, const char *model)
{
    memset(f, 0, sizeof *f);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", TINY, model);
    TU_OK(mtr_model_load(&f->model, dir, NULL));
    TU_OK(mtr_tok_load(&f->tok, dir));
    TU_OK(mtr_mc_load(&f->mc, MC_SET, NULL));
    TU_OK(mtr_gen_load(&f->gen, GEN_SET, NULL));
    TU_OK(mtr_prompts_load(&f->prompts, PROMPTS));
}

static void fx_close(fixture *f)
{
    mtr_model_destroy(f->model);
    mtr_tok_destroy(f->tok);
    mtr_mc_destroy(f->mc);
    mtr_gen_destroy(f->gen);
    mtr_prompts_destroy(f->prompts);
}

/* models.<model>.<key> of the golden file: an array of per-item objects (borrowed from *doc) */
static json_t *golden(json_t **doc, const char *model, const char *key)
{
    json_error_t err;
    *doc = json_load_file(GOLDEN, JSON_ALLOW_NUL, &err);
    ck_assert_msg(*doc != NULL, "%s: %s", GOLDEN, err.text);
    json_t *a = json_object_get(json_object_get(json_object_get(*doc, "models"), model), key);
    ck_assert_msg(json_is_array(a), "%s: no models.%s.%s", GOLDEN, model, key);
    return a;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: cannot open", path);
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* one line, no newline, naming what it should */
static void assert_detail(const char *want)
{
    const char *m = mtr_errmsg();
    ck_assert_msg(strstr(m, want) != NULL, "detail '%s' does not name '%s'", m, want);
    ck_assert_msg(strchr(m, '\n') == NULL, "detail '%s' spans lines", m);
}

/* Scores of the set equal the reference's log-likelihoods; predictions and accuracy rows follow from them. */
static void check_score(const mtr_eval_result *r, json_t *gold, const char *what)
{
    ck_assert_int_eq(r->kind, MTR_EVAL_SCORE);
    ck_assert_uint_eq(r->n_items, json_array_size(gold));
    uint64_t correct[8] = {0}, n[8] = {0};
    const char *langs[8] = {0};
    size_t n_langs = 0;
    for (size_t i = 0; i < r->n_items; i++) {
        const mtr_eval_item *it = &r->items[i];
        json_t *g = json_array_get(gold, i);
        ck_assert_str_eq(it->unit_id, json_string_value(json_object_get(g, "unit_id")));
        ck_assert_str_eq(it->lang, json_string_value(json_object_get(g, "lang")));
        json_t *ll = json_object_get(g, "loglik");
        ck_assert_uint_eq(it->n_choices, json_array_size(ll));
        size_t best = 0;
        for (size_t k = 0; k < it->n_choices; k++) {
            double ref = json_real_value(json_array_get(ll, k));
            ck_assert_msg(fabs(it->loglik[k] - ref) < LL_TOL, "%s item %zu choice %zu: loglik %.6f, reference %.6f",
                          what, i, k, it->loglik[k], ref);
            if (ref > json_real_value(json_array_get(ll, best))) best = k;
        }
        ck_assert_msg(it->pred == best, "%s item %zu: predicted %zu, reference %zu", what, i, it->pred, best);
        ck_assert_int_eq(it->correct, it->pred == it->gold);
        size_t l = 0;
        while (l < n_langs && strcmp(langs[l], it->lang)) l++;
        if (l == n_langs) langs[n_langs++] = it->lang;
        n[l]++;
        correct[l] += it->pred == it->gold;
    }
    ck_assert_uint_eq(r->n_acc, n_langs);
    for (size_t l = 0; l < n_langs; l++) {
        ck_assert_str_eq(r->acc[l].lang, langs[l]);
        ck_assert_uint_eq(r->acc[l].n, n[l]);
        ck_assert_uint_eq(r->acc[l].correct, correct[l]);
    }
}

START_TEST(test_score_reference)
{
    const char *models[] = {"qwen3_moe", "olmoe"};
    for (size_t m = 0; m < 2; m++) {
        fixture f;
        fx_open(&f, models[m]);
        mtr_eval *ev = NULL;
        TU_OK(mtr_eval_create(&ev, f.model, f.tok, NULL));
        mtr_eval_result r = MTR_EVAL_RESULT_INIT;
        TU_OK(mtr_eval_score(&r, ev, f.mc, f.prompts, "belebele"));
        json_t *doc;
        check_score(&r, golden(&doc, models[m], "score"), models[m]);
        /* the continuations " A".." D" have the same length: the per-byte prediction is the prediction */
        for (size_t i = 0; i < r.n_items; i++) ck_assert_uint_eq(r.items[i].pred_norm, r.items[i].pred);
        ck_assert_uint_eq(r.n_acc, 4);
        /* a second run on the same context gives the same numbers (the cache and buffers are reset per item) */
        mtr_eval_result r2 = MTR_EVAL_RESULT_INIT;
        TU_OK(mtr_eval_score(&r2, ev, f.mc, f.prompts, "belebele"));
        for (size_t i = 0; i < r.n_items; i++)
            for (size_t k = 0; k < r.items[i].n_choices; k++)
                ck_assert(r.items[i].loglik[k] == r2.items[i].loglik[k]);
        json_decref(doc);
        mtr_eval_result_free(&r);
        mtr_eval_result_free(&r2);
        ck_assert_ptr_null(r.items);
        mtr_eval_destroy(ev);
        fx_close(&f);
    }
}
END_TEST

/* With a tokenizer that merges " f" and " i", continuations starting so change the prompt's last token: those
 * choices run the whole text, the others continue the prompt's cache (which must then be rebuilt). */
START_TEST(test_score_retokenised)
{
    fixture f;
    fx_open(&f, "qwen3_moe");
    mtr_tok *merges = NULL;
    TU_OK(mtr_tok_load(&merges, MERGES_TOK));
    mtr_prompts *p = NULL;
    TU_OK(mtr_prompts_load_buffer(&p, MERGES_TEMPLATE, strlen(MERGES_TEMPLATE), "merges.json"));
    mtr_eval *ev = NULL;
    TU_OK(mtr_eval_create(&ev, f.model, merges, NULL));
    mtr_eval_result r = MTR_EVAL_RESULT_INIT;
    TU_OK(mtr_eval_score(&r, ev, f.mc, p, "merges"));
    json_t *doc;
    json_t *gold = golden(&doc, "qwen3_moe", "score_merges");
    int retok = 0;
    for (size_t i = 0; i < json_array_size(gold); i++)
        retok += (int)json_integer_value(json_object_get(json_array_get(gold, i), "retokenised"));
    ck_assert_msg(retok >= 3, "the golden has only %d re-tokenised continuations", retok);
    check_score(&r, gold, "merges");
    /* choices of different byte lengths: the per-byte prediction is the best log-likelihood per byte */
    const mtr_mc_item *it0 = mtr_mc_get(f.mc, 0);
    size_t bn = 0;
    for (size_t k = 1; k < it0->n_choices; k++)
        if (r.items[0].loglik[k] / strlen(it0->choices[k]) > r.items[0].loglik[bn] / strlen(it0->choices[bn])) bn = k;
    ck_assert_uint_eq(r.items[0].pred_norm, bn);
    json_decref(doc);
    mtr_eval_result_free(&r);
    mtr_eval_destroy(ev);
    mtr_prompts_destroy(p);
    mtr_tok_destroy(merges);
    fx_close(&f);
}
END_TEST

static void on_progress(void *user, size_t done, size_t total, uint64_t tokens)
{
    uint64_t *st = user; /* calls, last done, total, last tokens */
    ck_assert_uint_eq(done, st[1] + 1);
    ck_assert_uint_ge(tokens, st[3]);
    st[0]++, st[1] = done, st[2] = total, st[3] = tokens;
}

START_TEST(test_generate_reference)
{
    const char *models[] = {"qwen3_moe", "olmoe"};
    for (size_t m = 0; m < 2; m++) {
        fixture f;
        fx_open(&f, models[m]);
        json_t *doc;
        json_t *gold = golden(&doc, models[m], "generate");
        mtr_eval_opts o = MTR_EVAL_OPTS_INIT;
        o.max_new = (uint32_t)json_integer_value(json_object_get(doc, "max_new"));
        uint64_t st[4] = {0};
        o.progress = on_progress;
        o.progress_user = st;
        mtr_eval *ev = NULL;
        TU_OK(mtr_eval_create(&ev, f.model, f.tok, &o));
        mtr_eval_result r = MTR_EVAL_RESULT_INIT;
        TU_OK(mtr_eval_generate(&r, ev, f.gen, f.prompts, "mgsm"));
        ck_assert_int_eq(r.kind, MTR_EVAL_GENERATE);
        ck_assert_uint_eq(r.n_items, json_array_size(gold));
        for (size_t i = 0; i < r.n_items; i++) {
            json_t *g = json_array_get(gold, i);
            ck_assert_str_eq(r.items[i].unit_id, json_string_value(json_object_get(g, "unit_id")));
            ck_assert_uint_eq(r.items[i].n_new, json_integer_value(json_object_get(g, "n_new")));
            /* a generated NUL byte ends the text as stored (C strings): compare up to it */
            ck_assert_str_eq(r.items[i].generated, json_string_value(json_object_get(g, "generated")));
            ck_assert_str_eq(r.items[i].answer, mtr_gen_get(f.gen, i)->answer);
            ck_assert_int_eq(r.items[i].correct, mtr_corpus_answer_matches(r.items[i].answer, r.items[i].generated));
        }
        ck_assert_uint_eq(st[0], r.n_items);
        ck_assert_uint_eq(st[2], r.n_items);
        ck_assert_uint_eq(st[3], mtr_eval_tokens(ev));
        ck_assert_uint_eq(r.n_acc, 2); /* eng_Latn, fra_Latn */
        json_decref(doc);
        mtr_eval_result_free(&r);
        mtr_eval_destroy(ev);
        fx_close(&f);
    }
}
END_TEST

/* stop strings: a stop found in the text ends generation and cuts the text there */
START_TEST(test_generate_stops)
{
    fixture f;
    fx_open(&f, "qwen3_moe");
    json_t *doc;
    json_t *gold = golden(&doc, "qwen3_moe", "generate");
    const char *text = json_string_value(json_object_get(json_array_get(gold, 0), "generated"));
    /* the golden's first printable ASCII character after the first byte as a stop: the text is cut before it,
     * fewer tokens are made */
    size_t at = 1;
    while (text[at] && (text[at] < 0x20 || text[at] > 0x7e)) at++;
    ck_assert_msg(text[at] != '\0', "golden text without a printable character");
    char stop[2] = {text[at], 0};
    const char *cut_at = text + at;
    const char *stops[] = {stop};
    mtr_eval_opts o = MTR_EVAL_OPTS_INIT;
    o.max_new = 12;
    o.stops = stops;
    o.n_stops = 1;
    mtr_eval *ev = NULL;
    TU_OK(mtr_eval_create(&ev, f.model, f.tok, &o));
    mtr_eval_result r = MTR_EVAL_RESULT_INIT;
    TU_OK(mtr_eval_generate(&r, ev, f.gen, f.prompts, "mgsm"));
    ck_assert_uint_eq(strlen(r.items[0].generated), (size_t)(cut_at - text));
    ck_assert_int_eq(strncmp(r.items[0].generated, text, (size_t)(cut_at - text)), 0);
    ck_assert_uint_lt(r.items[0].n_new, 12);
    /* max_tokens bounds prompt + new tokens */
    mtr_eval_result_free(&r);
    mtr_eval_destroy(ev);
    o.n_stops = 0;
    o.max_tokens = 90; /* the first prompt has 83 tokens here */
    TU_OK(mtr_eval_create(&ev, f.model, f.tok, &o));
    mtr_eval_result_free(&r);
    r = (mtr_eval_result)MTR_EVAL_RESULT_INIT;
    mtr_gen *one = NULL;
    mtr_corpus_opts co = MTR_CORPUS_OPTS_INIT;
    co.max_items = 1;
    TU_OK(mtr_gen_load(&one, GEN_SET, &co));
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    uint8_t *roles = NULL;
    char *prompt = NULL;
    TU_OK(mtr_prompt_render_gen(&prompt, f.prompts, "mgsm", mtr_gen_get(one, 0)));
    TU_OK(mtr_eval_tokenize(&ids, &roles, ev, prompt, NULL, 0, true));
    ck_assert_uint_lt(ids.n, 90);
    ck_assert_uint_lt(90 - ids.n, 12);
    TU_OK(mtr_eval_generate(&r, ev, one, f.prompts, "mgsm"));
    ck_assert_uint_eq(r.items[0].n_new, 90 - ids.n);
    free(prompt);
    free(roles);
    mtr_tok_ids_free(&ids);
    mtr_gen_destroy(one);
    json_decref(doc);
    mtr_eval_result_free(&r);
    mtr_eval_destroy(ev);
    fx_close(&f);
}
END_TEST

/* The files: byte for byte what `moetrace-capture run --mode score` wrote for this set before the eval room
 * existed (qwen3_moe), and read back by moetrace-stats. */
static const char cli_accuracy_tsv[] =
    "# moetrace-capture run score: model=qwen3_moe corpus=tests/data/mc-mini.jsonl steer=none\n"
    "#lang\ttask\tmetric\tvalue\tn\n"
    "eng_Latn\tmc-mini\taccuracy\t0.500000\t2\n"
    "eng_Latn\tmc-mini\taccuracy_norm\t0.500000\t2\n"
    "fra_Latn\tmc-mini\taccuracy\t0.500000\t2\n"
    "fra_Latn\tmc-mini\taccuracy_norm\t0.500000\t2\n"
    "deu_Latn\tmc-mini\taccuracy\t0.500000\t2\n"
    "deu_Latn\tmc-mini\taccuracy_norm\t0.500000\t2\n"
    "zho_Hans\tmc-mini\taccuracy\t0.000000\t2\n"
    "zho_Hans\tmc-mini\taccuracy_norm\t0.000000\t2\n";
static const char cli_items_head[] =
    "#unit_id\tlang\ttask\tgold\tpred\tpred_norm\tcorrect\tloglik\n"
    "q1\teng_Latn\tmc-mini\t0\t1\t1\t0\t";

START_TEST(test_accuracy_files)
{
    fixture f;
    fx_open(&f, "qwen3_moe");
    mtr_eval *ev = NULL;
    mtr_eval_opts o = MTR_EVAL_OPTS_INIT;
    o.max_new = 12;
    TU_OK(mtr_eval_create(&ev, f.model, f.tok, &o));
    mtr_eval_result r = MTR_EVAL_RESULT_INIT;
    TU_OK(mtr_eval_score(&r, ev, f.mc, f.prompts, "belebele"));
    char dir[512], p_tsv[600], p_json[600], p_items[600];
    tu_tmpdir(dir, sizeof dir, "eval");
    snprintf(p_tsv, sizeof p_tsv, "%s/accuracy.tsv", dir);
    snprintf(p_json, sizeof p_json, "%s/accuracy.json", dir);
    snprintf(p_items, sizeof p_items, "%s/items.tsv", dir);
    mtr_eval_meta meta = {"moetrace-capture run score", mtr_eval_info(ev)->model_id, MC_SET, NULL};
    TU_OK(mtr_eval_write_accuracy_tsv(p_tsv, &r, &meta));
    TU_OK(mtr_eval_write_accuracy_json(p_json, &r, &meta));
    TU_OK(mtr_eval_write_items(p_items, &r));
    char *t = read_text(p_tsv);
    ck_assert_str_eq(t, cli_accuracy_tsv);
    free(t);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.tmp", p_tsv);
    ck_assert_int_ne(access(tmp, F_OK), 0);
    /* items.tsv: one line per item, the log-likelihoods as %.6f */
    t = read_text(p_items);
    ck_assert_int_eq(strncmp(t, cli_items_head, strlen(cli_items_head)), 0);
    size_t lines = 0;
    for (const char *c = t; *c; c++) lines += *c == '\n';
    ck_assert_uint_eq(lines, 1 + r.n_items);
    char want[128];
    snprintf(want, sizeof want, "\t%.6f,%.6f,%.6f,%.6f\n", r.items[0].loglik[0], r.items[0].loglik[1],
             r.items[0].loglik[2], r.items[0].loglik[3]);
    ck_assert_ptr_nonnull(strstr(t, want));
    free(t);

    /* both accuracy files through moetrace-stats' reader */
    mtr_langs *langs = NULL;
    TU_OK(mtr_langs_load(&langs, "config/languages.tsv"));
    const char *paths[] = {p_tsv, p_json};
    for (int k = 0; k < 4; k++) {
        /* the reader keeps one metric per (language, task): accuracy by default, else the one asked */
        mtr_accuracy *a = NULL;
        mtr_acc_opts ao = MTR_ACC_OPTS_INIT;
        const bool norm = k >= 2;
        if (norm) ao.metric = "accuracy_norm";
        TU_OK(mtr_accuracy_load(&a, paths[k % 2], langs, &ao));
        ck_assert_str_eq(a->format, k % 2 == 0 ? "tsv" : "json");
        ck_assert_uint_eq(a->n, r.n_acc);
        for (size_t i = 0; i < r.n_acc; i++) {
            const mtr_acc_row *row = &a->rows[i];
            ck_assert_str_eq(row->lang, r.acc[i].lang);
            ck_assert_str_eq(row->task, "mc-mini");
            ck_assert_str_eq(row->metric, norm ? "accuracy_norm" : "accuracy");
            const uint64_t c = norm ? r.acc[i].correct_norm : r.acc[i].correct;
            ck_assert(fabs(row->value - (double)c / (double)r.acc[i].n) < 1e-6);
            ck_assert(row->n == (double)r.acc[i].n);
        }
        mtr_accuracy_free(a);
    }
    /* the JSON document carries the provenance */
    json_t *doc = json_load_file(p_json, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "model")), "qwen3_moe");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "corpus")), MC_SET);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "steer")), "none");
    json_decref(doc);

    /* generation: accuracy only, items with the text (tabs and newlines escaped) */
    mtr_eval_result g = MTR_EVAL_RESULT_INIT;
    TU_OK(mtr_eval_generate(&g, ev, f.gen, f.prompts, "mgsm"));
    free(g.items[0].generated);
    g.items[0].generated = strdup("a\tb\nc\\d 7");
    g.items[0].correct = true;
    g.acc[0].correct = 1;
    TU_OK(mtr_eval_write_items(p_items, &g));
    TU_OK(mtr_eval_write_accuracy_tsv(p_tsv, &g, &meta));
    t = read_text(p_items);
    snprintf(want, sizeof want, "#unit_id\tlang\ttask\tgold\tcorrect\tn_new\tgenerated\n"
                                "g1\teng_Latn\tgen-mini\t7\t1\t%u\ta\\tb\\nc\\\\d 7\n", g.items[0].n_new);
    ck_assert_msg(strncmp(t, want, strlen(want)) == 0, "items.tsv starts '%.120s'", t);
    free(t);
    t = read_text(p_tsv);
    ck_assert_ptr_nonnull(
        strstr(t, "\neng_Latn\tgen-mini\taccuracy\t0.500000\t2\nfra_Latn\tgen-mini\taccuracy\t0.000000\t2\n"));
    ck_assert_ptr_null(strstr(t, "accuracy_norm"));
    free(t);
    mtr_eval_result_free(&g);

    /* errors: an unwritable place names the file */
    char bad[700];
    snprintf(bad, sizeof bad, "%s/no/such/dir/accuracy.tsv", dir);
    ck_assert_int_eq(mtr_eval_write_accuracy_tsv(bad, &r, &meta), MTR_EIO);
    assert_detail("no/such/dir/accuracy.tsv.tmp");
    snprintf(bad, sizeof bad, "%s/no/such/dir/accuracy.json", dir);
    ck_assert_int_eq(mtr_eval_write_accuracy_json(bad, &r, &meta), MTR_EIO);
    assert_detail("no/such/dir/accuracy.json");
    snprintf(bad, sizeof bad, "%s/no/such/dir/items.tsv", dir);
    ck_assert_int_eq(mtr_eval_write_items(bad, &r), MTR_EIO);
    assert_detail("no/such/dir/items.tsv");
    ck_assert_int_eq(mtr_exit_code(MTR_EIO), 3);

    mtr_langs_free(langs);
    mtr_eval_result_free(&r);
    mtr_eval_destroy(ev);
    tu_rmrf(dir);
    fx_close(&f);
}
END_TEST

/* Prefill, packed prefill and recording against the model's own goldens (router logits and final logits of
 * prompt_1 and prompt_2); only the recorded layers are stored. */
static float *golden_f32(const mtr_st *g, const char *name, size_t *n)
{
    const mtr_st_tensor *t = mtr_st_find(g, name);
    ck_assert_msg(t != NULL, "golden %s missing", name);
    float *v = malloc((size_t)t->n_elems * sizeof *v + 1);
    mtr_st_to_f32(v, t);
    *n = (size_t)t->n_elems;
    return v;
}

static int32_t *golden_ids(const mtr_st *g, const char *name, uint32_t *n)
{
    size_t k;
    float *f = golden_f32(g, name, &k);
    int32_t *ids = malloc(k * sizeof *ids + 1);
    for (size_t i = 0; i < k; i++) ids[i] = (int32_t)f[i];
    free(f);
    *n = (uint32_t)k;
    return ids;
}

START_TEST(test_prefill_record)
{
    fixture f;
    fx_open(&f, "qwen3_moe");
    mtr_st *g = NULL;
    TU_OK(mtr_st_open(&g, TINY "/qwen3_moe/golden.safetensors"));
    uint32_t n1, n2;
    int32_t *p1 = golden_ids(g, "prompt_1", &n1), *p2 = golden_ids(g, "prompt_2", &n2);
    size_t nz1, nz2, nl2;
    float *z1 = golden_f32(g, "router_1", &nz1), *z2 = golden_f32(g, "router_2", &nz2); /* (L, T, E) */
    float *lg2 = golden_f32(g, "logits_2", &nl2);                                          /* (T, V) */
    const mtr_model_config *c = mtr_model_get_config(f.model);
    const uint32_t L = c->n_moe_layers, E = c->n_experts, V = c->vocab_size;
    ck_assert_uint_eq(L, 2);

    bool second_only[2] = {false, true};
    mtr_eval_opts o = MTR_EVAL_OPTS_INIT;
    o.max_tokens = 64;
    o.batch = 8; /* prompt_2 (23 tokens) in three forwards, the logits rows spanning two */
    o.record_layers = second_only;
    o.model_id = "tiny-eval";
    mtr_eval *ev = NULL;
    TU_OK(mtr_eval_create(&ev, f.model, f.tok, &o));
    const mtr_model_info *info = mtr_eval_info(ev);
    ck_assert_uint_eq(info->n_layers, 1);
    ck_assert_str_eq(info->model_id, "tiny-eval");

    char dir[512], run[600];
    tu_tmpdir(dir, sizeof dir, "evalrun");
    snprintf(run, sizeof run, "%s/run", dir);
    mtr_writer_opts wo = MTR_WRITER_OPTS_INIT;
    wo.stored_dtype = MTR_DTYPE_F32;
    wo.sync = false;
    mtr_writer *w = NULL;
    TU_OK(mtr_writer_create(&w, run, info, &wo));
    mtr_eval_set_writer(ev, w);

    /* prefill prompt_2 keeping the last 5 logits (more than one batch back) */
    TU_OK(mtr_eval_prefill(ev, p2, n2, true, 5));
    const float *lg = mtr_eval_logits(ev);
    double worst = 0;
    for (size_t i = 0; i < 5 * (size_t)V; i++) {
        double d = fabs(lg[i] - lg2[(size_t)(n2 - 5) * V + i]);
        worst = d > worst ? d : worst;
    }
    ck_assert_msg(worst < 1e-3, "prefill logits differ from the golden by %g", worst);
    uint8_t roles[64];
    memset(roles, MTR_ROLE_PROMPT, sizeof roles);
    mtr_seq_meta m2 = {7, "u2", "eng_Latn", "d", n2, 0};
    TU_OK(mtr_eval_record(ev, 0, &m2, p2, roles));
    /* rows outside the prefill are refused */
    mtr_seq_meta too_long = {8, "u3", "eng_Latn", "d", n2, 0};
    ck_assert_int_eq(mtr_eval_record(ev, 1, &too_long, p2, roles), MTR_EINVAL);
    assert_detail("router rows");
    /* packed: prompt_1 and the first 7 tokens of prompt_2 in one forward, each from position 0 */
    int32_t packed[16];
    memcpy(packed, p1, n1 * sizeof *packed);
    memcpy(packed + n1, p2, 1 * sizeof *packed);
    uint32_t lens[2] = {n1, 1};
    TU_OK(mtr_eval_prefill_packed(ev, packed, lens, 2));
    mtr_seq_meta m1 = {1, "u1", "eng_Latn", "d", n1, 0}, m3 = {3, "u2b", "eng_Latn", "d", 1, 0};
    TU_OK(mtr_eval_record(ev, 0, &m1, packed, roles));
    TU_OK(mtr_eval_record(ev, n1, &m3, packed + n1, roles));
    uint32_t too_many[2] = {8, 1};
    ck_assert_int_eq(mtr_eval_prefill_packed(ev, packed, too_many, 2), MTR_EINVAL);
    ck_assert_int_eq(mtr_eval_prefill(ev, p2, 66, false, 0), MTR_EINVAL);
    ck_assert_int_eq(mtr_eval_prefill(ev, p2, n2, false, 9), MTR_EINVAL);
    TU_OK(mtr_writer_close(w));
    mtr_eval_set_writer(ev, NULL);
    ck_assert_uint_eq(mtr_eval_tokens(ev), n2 + n1 + 1);

    /* read back: the second MoE layer of each sequence equals the golden router rows */
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, run, 0));
    ck_assert_uint_eq(mtr_run_n_seqs(r), 3);
    ck_assert_uint_eq(mtr_run_model(r)->n_layers, 1);
    for (size_t s = 0; s < 3; s++) {
        const mtr_seq_info *si = mtr_run_seq(r, s);
        const float *gz = si->seq_id == 1 ? z1 : z2;
        const uint32_t T = si->seq_id == 1 ? n1 : n2;
        float *z = malloc((size_t)si->n_tokens * E * sizeof *z);
        TU_OK(mtr_run_read_logits(r, s, z));
        for (uint32_t t = 0; t < si->n_tokens; t++)
            for (uint32_t e = 0; e < E; e++) {
                double d = fabs(z[(size_t)t * E + e] - gz[((size_t)1 * T + t) * E + e]);
                ck_assert_msg(d < 1e-3, "seq %llu token %u expert %u: %g from the golden",
                              (unsigned long long)si->seq_id, t, e, d);
            }
        free(z);
    }
    mtr_run_close(r);
    tu_rmrf(dir);
    free(p1), free(p2), free(z1), free(z2), free(lg2);
    mtr_st_close(g);
    mtr_eval_destroy(ev);
    fx_close(&f);
}
END_TEST

/* Roles: plain text is all prompt (the tiny tokenizer adds no bos); through the chat template the scaffolding is
 * template, the user turn prompt and the assistant turn response. */
START_TEST(test_tokenize_roles)
{
    fixture f;
    fx_open(&f, "qwen3_moe");
    mtr_eval *plain = NULL, *chat = NULL;
    TU_OK(mtr_eval_create(&plain, f.model, f.tok, NULL));
    mtr_eval_opts o = MTR_EVAL_OPTS_INIT;
    o.chat = true;
    TU_OK(mtr_eval_create(&chat, f.model, f.tok, &o));
    mtr_tok_ids ids = MTR_TOK_IDS_INIT, alone = MTR_TOK_IDS_INIT;
    uint8_t *roles = NULL;
    const char *text = "What is two plus two?";
    TU_OK(mtr_eval_tokenize(&ids, &roles, plain, text, NULL, 0, false));
    TU_OK(mtr_tok_encode(&alone, f.tok, text, strlen(text), 0));
    ck_assert_uint_eq(ids.n, alone.n);
    for (size_t i = 0; i < ids.n; i++) ck_assert_int_eq(roles[i], MTR_ROLE_PROMPT);
    /* chat: runs template, prompt, template, response, template; the contents tokenise as alone */
    mtr_corpus_message msgs[2] = {{"user", "What is two plus two?"}, {"assistant", "Two plus two is four."}};
    TU_OK(mtr_eval_tokenize(&ids, &roles, chat, NULL, msgs, 2, false));
    int runs[8], n_runs = 0;
    mtr_tok_ids pr = MTR_TOK_IDS_INIT, re = MTR_TOK_IDS_INIT, want_r = MTR_TOK_IDS_INIT;
    for (size_t i = 0; i < ids.n; i++) {
        if (n_runs == 0 || runs[n_runs - 1] != roles[i]) {
            ck_assert_int_lt(n_runs, 8);
            runs[n_runs++] = roles[i];
        }
        if (roles[i] == MTR_ROLE_PROMPT) pr.n++;
        if (roles[i] == MTR_ROLE_RESPONSE) re.n++;
    }
    ck_assert_int_eq(n_runs, 5);
    ck_assert_int_eq(runs[0], MTR_ROLE_TEMPLATE);
    ck_assert_int_eq(runs[1], MTR_ROLE_PROMPT);
    ck_assert_int_eq(runs[2], MTR_ROLE_TEMPLATE);
    ck_assert_int_eq(runs[3], MTR_ROLE_RESPONSE);
    ck_assert_int_eq(runs[4], MTR_ROLE_TEMPLATE);
    TU_OK(mtr_tok_encode(&want_r, f.tok, msgs[1].content, strlen(msgs[1].content), 0));
    ck_assert_uint_eq(pr.n, alone.n);
    ck_assert_uint_eq(re.n, want_r.n);
    /* a text with chat on: one user turn, with the generation prompt at the end (template tokens) */
    mtr_tok_ids gen = MTR_TOK_IDS_INIT;
    TU_OK(mtr_eval_tokenize(&ids, &roles, chat, text, NULL, 0, false));
    size_t n_no_gen = ids.n;
    TU_OK(mtr_eval_tokenize(&gen, &roles, chat, text, NULL, 0, true));
    ck_assert_uint_gt(gen.n, n_no_gen);
    ck_assert_int_eq(roles[gen.n - 1], MTR_ROLE_TEMPLATE);
    /* invalid UTF-8 is the tokenizer's error, with a detail */
    ck_assert_int_eq(mtr_eval_tokenize(&ids, &roles, plain, "ab\xff", NULL, 0, false), MTR_EINVAL);
    ck_assert_str_ne(mtr_errmsg(), "");
    mtr_tok_ids_free(&ids);
    mtr_tok_ids_free(&alone);
    mtr_tok_ids_free(&want_r);
    mtr_tok_ids_free(&gen);
    free(roles);
    mtr_eval_destroy(plain);
    mtr_eval_destroy(chat);
    fx_close(&f);
}
END_TEST

/* Steering changes the log-likelihoods; the trace flags every sequence steered and numbers it by item. */
START_TEST(test_steering)
{
    fixture f;
    fx_open(&f, "qwen3_moe");
    mtr_steer *st = NULL;
    TU_OK(mtr_steer_load(&st, TINY "/qwen3_moe/steer_hard.json"));
    mtr_eval *plain = NULL, *steered = NULL;
    TU_OK(mtr_eval_create(&plain, f.model, f.tok, NULL));
    mtr_eval_opts o = MTR_EVAL_OPTS_INIT;
    o.steer = st;
    TU_OK(mtr_eval_create(&steered, f.model, f.tok, &o));
    char dir[512], run[600];
    tu_tmpdir(dir, sizeof dir, "evalsteer");
    snprintf(run, sizeof run, "%s/run", dir);
    mtr_writer_opts wo = MTR_WRITER_OPTS_INIT;
    wo.sync = false;
    mtr_writer *w = NULL;
    TU_OK(mtr_writer_create(&w, run, mtr_eval_info(steered), &wo));
    mtr_eval_set_writer(steered, w);
    mtr_eval_result a = MTR_EVAL_RESULT_INIT, b = MTR_EVAL_RESULT_INIT;
    TU_OK(mtr_eval_score(&a, plain, f.mc, f.prompts, "belebele"));
    TU_OK(mtr_eval_score(&b, steered, f.mc, f.prompts, "belebele"));
    TU_OK(mtr_writer_close(w));
    size_t differ = 0;
    for (size_t i = 0; i < a.n_items; i++)
        for (size_t k = 0; k < a.items[i].n_choices; k++)
            differ += fabs(a.items[i].loglik[k] - b.items[i].loglik[k]) > 1e-6;
    ck_assert_uint_gt(differ, a.n_items);
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, run, 0));
    ck_assert_uint_eq(mtr_run_n_seqs(r), a.n_items);
    for (size_t s = 0; s < mtr_run_n_seqs(r); s++) {
        const mtr_seq_info *si = mtr_run_seq(r, s);
        ck_assert(si->flags & MTR_SEQ_STEERED);
        ck_assert_uint_eq(si->seq_id, s);
    }
    mtr_run_close(r);
    tu_rmrf(dir);
    mtr_eval_result_free(&a);
    mtr_eval_result_free(&b);
    mtr_eval_destroy(plain);
    mtr_eval_destroy(steered);
    mtr_steer_destroy(st);
    fx_close(&f);
}
END_TEST

/* the tiny tokenizer.json with one more added token at id 305, past the model's 300 ids */
static mtr_tok *tokenizer_too_big(void)
{
    json_t *t = json_load_file(TINY "/qwen3_moe/tokenizer.json", 0, NULL);
    ck_assert_ptr_nonnull(t);
    json_array_append_new(json_object_get(t, "added_tokens"),
                          json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 305, "content", "<|extra|>",
                                    "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1));
    char *s = json_dumps(t, 0);
    mtr_tok *tok = NULL;
    TU_OK(mtr_tok_load_buffers(&tok, s, strlen(s), NULL, 0));
    free(s);
    json_decref(t);
    return tok;
}

START_TEST(test_errors)
{
    fixture f;
    fx_open(&f, "qwen3_moe");
    mtr_eval *ev = NULL;
    mtr_eval_result r = MTR_EVAL_RESULT_INIT;

    /* the prompt longer than max_tokens: bad input data (exit 2), naming the file and the item */
    mtr_eval_opts o = MTR_EVAL_OPTS_INIT;
    o.max_tokens = 20;
    TU_OK(mtr_eval_create(&ev, f.model, f.tok, &o));
    ck_assert_int_eq(mtr_eval_score(&r, ev, f.mc, f.prompts, "belebele"), MTR_EDATA);
    assert_detail(MC_SET ": item 1: the prompt has 168 tokens");
    assert_detail("max_tokens 20");
    ck_assert_int_eq(mtr_exit_code(MTR_EDATA), 2);
    ck_assert_ptr_null(r.items);
    ck_assert_uint_eq(r.n_acc, 0);
    ck_assert_int_eq(mtr_eval_generate(&r, ev, f.gen, f.prompts, "mgsm"), MTR_EDATA);
    assert_detail(GEN_SET ": item 1: the prompt has");
    mtr_eval_destroy(ev);
    TU_OK(mtr_eval_create(&ev, f.model, f.tok, NULL));

    /* an unknown template, or one of the other kind: bad usage (exit 1) */
    ck_assert_int_eq(mtr_eval_score(&r, ev, f.mc, f.prompts, "nope"), MTR_EINVAL);
    assert_detail("no multiple-choice template 'nope'");
    ck_assert_int_eq(mtr_eval_score(&r, ev, f.mc, f.prompts, "mgsm"), MTR_EINVAL);
    assert_detail("no multiple-choice template 'mgsm'");
    ck_assert_int_eq(mtr_eval_generate(&r, ev, f.gen, f.prompts, "belebele"), MTR_EINVAL);
    assert_detail("no generation template 'belebele'");
    ck_assert_int_eq(mtr_exit_code(MTR_EINVAL), 1);
    TU_OK(mtr_eval_check_template(f.prompts, "mmlu", MTR_EVAL_SCORE));

    /* an item the template cannot render (no passage for {passage}): exit 2, naming file and item */
    char dir[512], path[600];
    tu_tmpdir(dir, sizeof dir, "evalerr");
    snprintf(path, sizeof path, "%s/nopassage.jsonl", dir);
    FILE *fp = fopen(path, "w");
    fputs("{\"unit_id\": \"1\", \"lang\": \"en\", \"dataset\": \"d\", \"passage\": \"p\", \"question\": \"q?\", "
          "\"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 0}\n"
          "{\"unit_id\": \"2\", \"lang\": \"en\", \"dataset\": \"d\", \"question\": \"q?\", "
          "\"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 1}\n",
          fp);
    fclose(fp);
    mtr_mc *mc = NULL;
    TU_OK(mtr_mc_load(&mc, path, NULL));
    ck_assert_int_eq(mtr_eval_score(&r, ev, mc, f.prompts, "belebele"), MTR_EDATA);
    assert_detail("nopassage.jsonl: item 2:");
    assert_detail("passage");
    TU_OK(mtr_eval_score(&r, ev, mc, f.prompts, "mmlu")); /* mmlu uses no passage */
    ck_assert_uint_eq(r.n_items, 2);
    mtr_eval_result_free(&r);
    mtr_mc_destroy(mc);
    /* a missing answer never reaches scoring: the set does not load (exit 2, file and line) */
    snprintf(path, sizeof path, "%s/noanswer.jsonl", dir);
    fp = fopen(path, "w");
    fputs("{\"unit_id\": \"1\", \"lang\": \"en\", \"dataset\": \"d\", \"question\": \"q?\", "
          "\"choices\": [\"a\", \"b\"]}\n",
          fp);
    fclose(fp);
    int rc = mtr_mc_load(&mc, path, NULL);
    ck_assert_int_lt(rc, 0);
    ck_assert_int_eq(mtr_exit_code(rc), 2);
    assert_detail("noanswer.jsonl:1");
    ck_assert_ptr_null(mc);
    tu_rmrf(dir);
    mtr_eval_destroy(ev);

    /* options and inputs the context refuses */
    mtr_eval *bad = NULL;
    o = (mtr_eval_opts)MTR_EVAL_OPTS_INIT;
    o.max_tokens = 1;
    ck_assert_int_eq(mtr_eval_create(&bad, f.model, f.tok, &o), MTR_EINVAL);
    ck_assert_ptr_null(bad);
    o = (mtr_eval_opts)MTR_EVAL_OPTS_INIT;
    bool none[2] = {false, false};
    o.record_layers = none;
    ck_assert_int_eq(mtr_eval_create(&bad, f.model, f.tok, &o), MTR_EINVAL);
    assert_detail("record_layers");
    o = (mtr_eval_opts)MTR_EVAL_OPTS_INIT;
    const char *empty[] = {""};
    o.stops = empty;
    o.n_stops = 1;
    ck_assert_int_eq(mtr_eval_create(&bad, f.model, f.tok, &o), MTR_EINVAL);
    /* chat without a template in the tokenizer */
    char *tj = read_text(TINY "/qwen3_moe/tokenizer.json");
    mtr_tok *notmpl = NULL;
    TU_OK(mtr_tok_load_buffers(&notmpl, tj, strlen(tj), NULL, 0));
    free(tj);
    o = (mtr_eval_opts)MTR_EVAL_OPTS_INIT;
    o.chat = true;
    ck_assert_int_eq(mtr_eval_create(&bad, f.model, notmpl, &o), MTR_EINVAL);
    assert_detail("no chat template");
    TU_OK(mtr_eval_create(&bad, f.model, notmpl, NULL)); /* plain is fine */
    mtr_eval_destroy(bad);
    mtr_tok_destroy(notmpl);
    /* a tokenizer with ids past the model's vocabulary: mismatched inputs (exit 2) */
    mtr_tok *big = tokenizer_too_big();
    ck_assert_int_eq(mtr_eval_create(&bad, f.model, big, NULL), MTR_EMISMATCH);
    assert_detail("the model's vocabulary 300");
    ck_assert_int_eq(mtr_exit_code(MTR_EMISMATCH), 2);
    mtr_tok_destroy(big);
    mtr_eval_destroy(NULL);
    mtr_eval_result_free(NULL);
    fx_close(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("eval");
    TCase *c = tcase_create("eval");
    tcase_set_timeout(c, 600);
    tcase_add_test(c, test_score_reference);
    tcase_add_test(c, test_score_retokenised);
    tcase_add_test(c, test_generate_reference);
    tcase_add_test(c, test_generate_stops);
    tcase_add_test(c, test_accuracy_files);
    tcase_add_test(c, test_prefill_record);
    tcase_add_test(c, test_tokenize_roles);
    tcase_add_test(c, test_steering);
    tcase_add_test(c, test_errors);
    suite_add_tcase(s, c);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
