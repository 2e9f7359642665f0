/* cmd_run.c — `moetrace-capture run`: the native engine (mtr_model.h) over a corpus. Three modes: capture
 * (teacher-forced prefill, router logits of every MoE layer into a run; here, over the evaluation context's
 * tokenize / prefill / record), score (multiple-choice log-likelihood) and generate (greedy decoding, exact match),
 * both in the eval room (mtr_eval.h); each optionally under a steering file and each able to record its routing. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "mtr_corpus.h"
#include "mtr_eval.h"
#include "mtr_model.h"
#include "mtr_steer.h"
#include "mtr_tokenizer.h"

#define CMD "run"

void run_help(void)
{
    printf("Usage: %s run --model DIR --corpus PATH --out DIR [--mode capture|score|generate] [options]\n"
           "\n"
           "Run a Hugging Face MoE checkpoint (qwen3_moe, olmoe, mixtral, qwen2_moe; config.json, *.safetensors,\n"
           "tokenizer.json) natively over a corpus and record the router logits of every MoE layer.\n"
           "\n"
           "Modes:\n"
           "  capture   (default) teacher-forced forward over each item; --out is the trace run written\n"
           "  score     multiple-choice log-likelihood (Belebele / MMLU JSONL); --out is a results directory with\n"
           "            accuracy.tsv (lang task metric value n; read by moetrace-stats), accuracy.json, items.tsv\n"
           "  generate  greedy decoding with a KV cache (MGSM JSONL/TSV), exact match of the final number;\n"
           "            --out as for score, items.tsv also holds the generated text\n"
           "\n"
           "Input:\n"
           "  --model DIR            checkpoint directory (required)\n"
           "  --corpus PATH          capture: JSONL, TSV or a FLORES-style directory; score / generate: JSONL\n"
           "                         (or MGSM TSV) (required)\n"
           "  --format F             force the corpus format: jsonl, tsv, flores\n"
           "  --dataset NAME         dataset name for items without one\n"
           "  --langs A,B,...        only these languages\n"
           "  --limit N              at most N items (a capture packs its forwards as a run without --limit does)\n"
           "  --chat, --no-chat      pass each text as one user turn through the chat template (capture default:\n"
           "                         on when the tokenizer has a template; score / generate default: off)\n"
           "  --thinking on|off      enable_thinking passed to the chat template (default: left undefined)\n"
           "  --prompts FILE         prompt templates for score / generate (default: config/prompts.json)\n"
           "  --template NAME        template in that file (default: belebele for score, mgsm for generate)\n"
           "  --max-tokens N         longest sequence in tokens (default 4096); longer items are cut, and counted\n"
           "\n"
           "Output:\n"
           "  --out DIR              capture: run directory; score / generate: results directory (required)\n"
           "  --trace RUN            score / generate: also record the routing of prompts (and generated tokens)\n"
           "  --resume               continue a capture run: items already stored are skipped, and the run equals an\n"
           "                         uninterrupted one bit for bit; a resume with other settings than the run's\n"
           "                         (corpus, filters, chat, --max-tokens, --batch, --seed, --steer) is refused\n"
           "  --store logits|topk|both  what the trace stores (default logits)\n"
           "  --dtype bf16|f16|f32   stored logits dtype (default bf16)\n"
           "  --layers LIST          MoE layers to record, 1-based, e.g. 1-4,10 (default all)\n"
           "  --model-id ID          model id recorded in the trace (default config.json _name_or_path)\n"
           "  --steer FILE           apply a steering file (steer.h5 or its JSON twin) to the router logits\n"
           "  --shard-bytes BYTES    start a new shard after this many stored bytes (K/M/G; default 1G)\n"
           "\n"
           "Generation:\n"
           "  --max-new N            new tokens at most (default 256)\n"
           "  --stop STRING          stop when the text contains STRING (repeatable; eos always stops)\n"
           "\n"
           "Execution:\n"
           "  --threads N            OpenMP threads (default: OpenMP default)\n"
           "  --batch N              tokens per forward call in prefill (default 512)\n"
           "  --seed N               seed of the gaussian eps of hard/off steering (default: the file's)\n"
           "  --no-sync              do not fsync shards (tests, scratch runs)\n"
           "  --quiet                no progress or summary on stderr\n"
           "  --json                 print a JSON summary on stdout\n"
           "  -h, --help             this help\n"
           "\n"
           "%s",
           PROG, exit_status_text);
}

enum {
    R_MODEL, R_CORPUS, R_OUT, R_MODE, R_FORMAT, R_DATASET, R_LANGS, R_LIMIT, R_CHAT, R_NO_CHAT, R_THINKING,
    R_PROMPTS, R_TEMPLATE, R_MAX_TOKENS, R_TRACE, R_RESUME, R_STORE, R_DTYPE, R_LAYERS, R_MODEL_ID, R_STEER,
    R_MAX_NEW, R_STOP, R_THREADS, R_BATCH, R_SEED, R_NO_SYNC, R_QUIET, R_JSON, R_HELP, R_SHARD_BYTES
};

static const cli_option run_options[] = {
    {"model", R_MODEL, true},       {"corpus", R_CORPUS, true},     {"out", R_OUT, true},
    {"mode", R_MODE, true},         {"format", R_FORMAT, true},     {"dataset", R_DATASET, true},
    {"langs", R_LANGS, true},       {"limit", R_LIMIT, true},       {"chat", R_CHAT, false},
    {"no-chat", R_NO_CHAT, false},  {"thinking", R_THINKING, true}, {"prompts", R_PROMPTS, true},
    {"template", R_TEMPLATE, true}, {"max-tokens", R_MAX_TOKENS, true}, {"trace", R_TRACE, true},
    {"resume", R_RESUME, false},    {"store", R_STORE, true},       {"dtype", R_DTYPE, true},
    {"layers", R_LAYERS, true},     {"model-id", R_MODEL_ID, true}, {"steer", R_STEER, true},
    {"max-new", R_MAX_NEW, true},   {"stop", R_STOP, true},         {"threads", R_THREADS, true},
    {"batch", R_BATCH, true},       {"seed", R_SEED, true},         {"no-sync", R_NO_SYNC, false},
    {"quiet", R_QUIET, false},      {"json", R_JSON, false},        {"help", R_HELP, false},
    {"shard-bytes", R_SHARD_BYTES, true},
};

typedef enum { MODE_CAPTURE, MODE_SCORE, MODE_GENERATE } run_mode;

#define MAX_STOPS 16

typedef struct {
    const char *model_dir, *corpus, *out, *format, *dataset, *langs, *prompts, *template_name, *trace, *layers,
        *model_id, *steer_path;
    const char *stops[MAX_STOPS];
    size_t n_stops;
    run_mode mode;
    int chat; /* -1 auto */
    int thinking;
    uint64_t limit, seed, shard_bytes;
    bool have_seed, resume, no_sync, quiet, json;
    uint32_t max_tokens, max_new, batch, threads;
    mtr_dtype dtype;
    bool store_logits, store_topk;
} run_opts;

/* ---- the engine and what it needs ------------------------------------------------------------------------ */

typedef struct {
    run_opts o;
    mtr_model *model;
    const mtr_model_config *cfg;
    mtr_tok *tok;
    mtr_steer *steer;
    mtr_eval *ev;              /* the session, its buffers and the item machinery (mtr_eval.h) */
    mtr_writer *w;
    uint64_t n_truncated;
    double t0, last_progress;
} engine;

static int fail_lib(const char *what, int rc)
{
    return mtr_cli_fail(CMD, rc, what);
}

/* "1-4,10" (1-based, inclusive) into a sorted mask over n layers. */
static int parse_layers(bool *mask, uint32_t n, const char *spec)
{
    memset(mask, 0, n * sizeof *mask);
    const char *p = spec;
    while (*p) {
        char *end;
        unsigned long a = strtoul(p, &end, 10), b = a;
        if (end == p) return -1;
        p = end;
        if (*p == '-') {
            b = strtoul(p + 1, &end, 10);
            if (end == p + 1) return -1;
            p = end;
        }
        if (a < 1 || b < a || b > n) return -1;
        for (unsigned long i = a; i <= b; i++) mask[i - 1] = true;
        if (*p == ',') p++;
        else if (*p) return -1;
    }
    return 0;
}

static void progress(engine *e, size_t done, size_t total, bool final)
{
    if (e->o.quiet || !isatty(STDERR_FILENO)) return;
    double now = now_seconds();
    if (!final && now - e->last_progress < 1.0) return;
    e->last_progress = now;
    const uint64_t tokens = mtr_eval_tokens(e->ev);
    double el = now - e->t0, rate = el > 0 ? (double)tokens / el : 0;
    double eta = done ? el / (double)done * (double)(total - done) : 0;
    fprintf(stderr, "\r%s %s: %zu/%zu items, %llu tokens, %.0f tokens/s, ETA %.0f s   %s", PROG, CMD, done, total,
            (unsigned long long)tokens, rate, eta, final ? "\n" : "");
    fflush(stderr);
}

/* score / generate report each item through the eval context's callback */
static void on_item(void *user, size_t done, size_t total, uint64_t tokens)
{
    (void)tokens;
    progress(user, done, total, false);
}

/* The item machinery of the evaluation context (mtr_eval.h), under the names capture mode uses. */
static int tokenize_item(engine *e, mtr_tok_ids *ids, uint8_t **roles, const char *text,
                         const mtr_corpus_message *msgs, size_t n_msgs, bool add_gen)
{
    return mtr_eval_tokenize(ids, roles, e->ev, text, msgs, n_msgs, add_gen);
}

static int prefill(engine *e, const int32_t *ids, uint32_t n, bool want_router, uint32_t n_logits)
{
    return mtr_eval_prefill(e->ev, ids, n, want_router, n_logits);
}

static int record_at(engine *e, size_t first, uint64_t seq, const char *unit, const char *lang, const char *dataset,
                     const int32_t *ids, const uint8_t *roles, uint32_t n)
{
    if (!e->w) return 0;
    mtr_seq_meta meta = {seq, unit, lang, dataset, n, 0};
    return mtr_eval_record(e->ev, first, &meta, ids, roles);
}

static int record(engine *e, uint64_t seq, const char *unit, const char *lang, const char *dataset,
                  const int32_t *ids, const uint8_t *roles, uint32_t n)
{
    return record_at(e, 0, seq, unit, lang, dataset, ids, roles, n);
}

/* a path as recorded in the run: absolute when it resolves, so a resume from another directory names the same file */
static json_t *path_json(const char *path)
{
    char *abs = realpath(path, NULL);
    json_t *j = json_string(abs ? abs : path);
    free(abs);
    return j;
}

static json_t *steer_json(const mtr_steer *s, const char *path)
{
    json_t *j = json_object();
    json_object_set_new(j, "file", path_json(path));
    json_object_set_new(j, "name", json_string(s->name));
    json_object_set_new(j, "op", json_string(mtr_steer_op_name(s->op)));
    json_object_set_new(j, "lambda", json_real(s->lambda));
    json_object_set_new(j, "eps_mode", json_string(mtr_steer_eps_name(s->eps_mode)));
    json_object_set_new(j, "eps", json_real(s->eps));
    json_object_set_new(j, "seed", json_integer((json_int_t)s->seed));
    json_t *tl = json_array(), *ex = json_array();
    for (uint32_t i = 0; i < s->n_target; i++) json_array_append_new(tl, json_integer(s->target_layers[i]));
    for (size_t i = 0; i < s->n_sel; i++) {
        json_t *p = json_array();
        json_array_append_new(p, json_integer(s->experts[i].layer));
        json_array_append_new(p, json_integer(s->experts[i].expert));
        json_array_append_new(p, json_real(s->coef[(size_t)s->experts[i].layer * s->n_experts + s->experts[i].expert]));
        json_array_append_new(ex, p);
    }
    json_object_set_new(j, "target_layers", tl);
    json_object_set_new(j, "experts", ex);
    return j;
}

static int open_writer(engine *e, const char *dir, bool resume)
{
    mtr_writer_opts wo = MTR_WRITER_OPTS_INIT;
    wo.stored_dtype = e->o.dtype;
    wo.store_logits = e->o.store_logits;
    wo.store_topk = e->o.store_topk;
    wo.resume = resume;
    wo.sync = !e->o.no_sync;
    if (e->o.shard_bytes) wo.shard_bytes = e->o.shard_bytes;
    wo.producer = "moetrace-capture run";
    json_t *cs = json_object();
    json_object_set_new(cs, "mode", json_string(e->o.mode == MODE_CAPTURE ? "capture" : e->o.mode == MODE_SCORE ? "score" : "generate"));
    /* everything that decides what is stored (a resume must match it: mtr_writer_opts.capture_settings); not
     * --limit (a limited run is resumed to the end) nor --threads (the bits do not depend on it) */
    json_object_set_new(cs, "model_dir", path_json(e->o.model_dir));
    json_object_set_new(cs, "corpus", path_json(e->o.corpus));
    json_object_set_new(cs, "format", json_string(e->o.format ? e->o.format : "auto"));
    json_object_set_new(cs, "dataset", e->o.dataset ? json_string(e->o.dataset) : json_null());
    json_object_set_new(cs, "langs", e->o.langs ? json_string(e->o.langs) : json_null());
    json_object_set_new(cs, "chat", e->o.chat == -1 ? json_string("auto") : json_boolean(e->o.chat));
    json_object_set_new(cs, "thinking", e->o.thinking == -1 ? json_null() : json_boolean(e->o.thinking));
    json_object_set_new(cs, "max_tokens", json_integer(e->o.max_tokens));
    json_object_set_new(cs, "batch", json_integer(e->o.batch));
    json_object_set_new(cs, "steer_seed", e->o.have_seed ? json_integer((json_int_t)e->o.seed) : json_null());
    json_object_set_new(cs, "model_dtype", json_string(mtr_dtype_name(e->cfg->dtype)));
    json_object_set_new(cs, "engine", json_string("moetrace native"));
    char *cs_text = json_dumps(cs, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(cs);
    char *st_text = NULL;
    if (e->steer) {
        json_t *sj = steer_json(e->steer, e->o.steer_path);
        st_text = json_dumps(sj, JSON_COMPACT);
        json_decref(sj);
    }
    wo.capture_settings = cs_text;
    if (st_text) wo.steering = st_text;
    const char *base = strrchr(e->o.corpus, '/');
    wo.corpus_id = base && base[1] ? base + 1 : e->o.corpus;
    int rc = mtr_writer_create(&e->w, dir, mtr_eval_info(e->ev), &wo);
    if (rc == 0) mtr_eval_set_writer(e->ev, e->w);
    free(cs_text);
    free(st_text);
    return rc;
}

/* ---- capture --------------------------------------------------------------------------------------------- */

/* Items shorter than --batch are packed into one forward (each attends only within itself) until the batch is
 * full; longer ones run alone in --batch chunks. A sequence's numbers depend on the forward it shares (the sgemm
 * shapes, the tokens each expert gets), so the batches are a function of the corpus alone: packed from item 0
 * in order, whatever a resume has already stored (a batch with nothing left to record is skipped, one with some
 * is run whole and only those recorded) and whatever --limit cuts (the items after it complete the last batch
 * as a run without --limit has it, unrecorded). Gaussian steering eps restarts per forward from its first item
 * (mtr_eval_steer_restart). Then a resumed or limited capture equals an uninterrupted one. */
typedef struct {
    size_t item;
    uint32_t start, len;
    bool rec; /* to be recorded (not stored yet, within --limit) */
} packed_item;

static int flush_packed(engine *e, const mtr_corpus *corpus, const packed_item *pk, size_t n_pk,
                        const int32_t *ids, const uint8_t *roles, uint32_t *lens, uint64_t *written)
{
    bool any = false;
    for (size_t q = 0; q < n_pk; q++) any |= pk[q].rec;
    if (!any) return 0;
    uint32_t total = pk[n_pk - 1].start + pk[n_pk - 1].len;
    int rc;
    mtr_eval_steer_restart(e->ev, pk[0].item);
    if (n_pk == 1) rc = prefill(e, ids, total, true, 0);
    else {
        for (size_t q = 0; q < n_pk; q++) lens[q] = pk[q].len;
        rc = mtr_eval_prefill_packed(e->ev, ids, lens, (uint32_t)n_pk);
    }
    if (rc) return fail_lib(e->o.corpus, rc);
    for (size_t q = 0; q < n_pk; q++) {
        if (!pk[q].rec) continue;
        const mtr_corpus_item *it = mtr_corpus_get(corpus, pk[q].item);
        if ((rc = record_at(e, pk[q].start, pk[q].item, it->unit_id, it->lang, it->dataset, ids + pk[q].start,
                            roles + pk[q].start, pk[q].len)))
            return fail_lib(e->o.out, rc);
        (*written)++;
    }
    return 0;
}

static int run_capture(engine *e, const mtr_corpus *corpus, json_t *summary)
{
    size_t n = mtr_corpus_count(corpus);
    /* the corpus holds up to --batch items past --limit, read only to complete the last batch */
    const size_t n_rec = e->o.limit && e->o.limit < n ? (size_t)e->o.limit : n;
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    uint8_t *roles = NULL;
    const uint32_t B = e->o.batch;
    int32_t *pids = malloc((size_t)B * sizeof *pids);
    uint8_t *proles = malloc(B);
    packed_item *pk = malloc((size_t)B * sizeof *pk);
    uint32_t *lens = malloc((size_t)B * sizeof *lens);
    size_t n_pk = 0;
    uint32_t used = 0;
    int rc = 0;
    uint64_t skipped = 0, written = 0;
    if (!pids || !proles || !pk || !lens) {
        rc = fail_lib(NULL, MTR_ENOMEM);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (i >= n_rec && n_pk == 0) break; /* past --limit with no batch to complete */
        const mtr_corpus_item *it = mtr_corpus_get(corpus, i);
        const bool stored = i < n_rec && mtr_writer_has_seq(e->w, i), rec = i < n_rec && !stored;
        if (stored) skipped++;
        if ((rc = tokenize_item(e, &ids, &roles, it->text, it->messages, it->n_messages, false))) {
            if (i >= n_rec) { /* a run without --limit would stop here: so does the batch */
                rc = 0;
                break;
            }
            errorf(CMD, "%s: item %zu (line %zu): %s", e->o.corpus, i + 1, it->line, mtr_errmsg());
            rc = exit_code_for(rc);
            goto done;
        }
        uint32_t T = ids.n > e->o.max_tokens ? e->o.max_tokens : (uint32_t)ids.n;
        if (T < ids.n && rec) e->n_truncated++;
        if (T == 0) continue;
        if (used + T > B) {
            if ((rc = flush_packed(e, corpus, pk, n_pk, pids, proles, lens, &written))) goto done;
            n_pk = 0;
            used = 0;
            if (i >= n_rec) break;
        }
        if (T > B) { /* alone, in chunks */
            if (i >= n_rec) break;
            if (rec) {
                mtr_eval_steer_restart(e->ev, i);
                if ((rc = prefill(e, ids.ids, T, true, 0))) {
                    rc = fail_lib(e->o.corpus, rc);
                    goto done;
                }
                if ((rc = record(e, i, it->unit_id, it->lang, it->dataset, ids.ids, roles, T))) {
                    rc = fail_lib(e->o.out, rc);
                    goto done;
                }
                written++;
            }
        } else {
            memcpy(pids + used, ids.ids, T * sizeof *pids);
            memcpy(proles + used, roles, T);
            pk[n_pk++] = (packed_item){i, used, T, rec};
            used += T;
        }
        if (i < n_rec) progress(e, i + 1, n_rec, false);
    }
    if ((rc = flush_packed(e, corpus, pk, n_pk, pids, proles, lens, &written))) goto done;
    progress(e, n_rec, n_rec, true);
    json_object_set_new(summary, "items_written", json_integer((json_int_t)written));
    json_object_set_new(summary, "items_skipped_resume", json_integer((json_int_t)skipped));
done:
    mtr_tok_ids_free(&ids);
    free(roles);
    free(pids);
    free(proles);
    free(pk);
    free(lens);
    return rc;
}

/* ---- score and generate --------------------------------------------------------------------------------- */

/* Score or generate over the set, then write items.tsv, accuracy.tsv and accuracy.json into --out; the accuracy
 * rows also go into the summary. */
static int run_eval(engine *e, const mtr_mc *mc, const mtr_gen *gen, const mtr_prompts *prompts, json_t *summary)
{
    mtr_eval_result r = MTR_EVAL_RESULT_INIT;
    const run_opts *o = &e->o;
    size_t n = mc ? mtr_mc_count(mc) : mtr_gen_count(gen);
    int rc = mc ? mtr_eval_score(&r, e->ev, mc, prompts, o->template_name)
                : mtr_eval_generate(&r, e->ev, gen, prompts, o->template_name);
    if (rc) return fail_lib(NULL, rc);
    progress(e, n, n, true);
    char path[4096];
    const mtr_eval_meta meta = {mc ? PROG " " CMD " score" : PROG " " CMD " generate", mtr_eval_info(e->ev)->model_id,
                                o->corpus, o->steer_path};
    snprintf(path, sizeof path, "%s/items.tsv", o->out);
    if ((rc = mtr_eval_write_items(path, &r))) goto done;
    snprintf(path, sizeof path, "%s/accuracy.tsv", o->out);
    if ((rc = mtr_eval_write_accuracy_tsv(path, &r, &meta))) goto done;
    snprintf(path, sizeof path, "%s/accuracy.json", o->out);
    if ((rc = mtr_eval_write_accuracy_json(path, &r, &meta))) goto done;
    /* the summary's rows are the file's */
    json_t *doc = json_load_file(path, 0, NULL);
    json_t *acc = doc ? json_object_get(doc, "accuracy") : NULL;
    if (acc) json_object_set(summary, "accuracy", acc);
    json_decref(doc);
done:
    mtr_eval_result_free(&r);
    return rc ? fail_lib(NULL, rc) : 0;
}

/* ---- command line ---------------------------------------------------------------------------------------- */

static int parse_args(run_opts *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->chat = -1;
    o->thinking = -1;
    o->max_tokens = 4096;
    o->max_new = 256;
    o->batch = 512;
    o->dtype = MTR_DTYPE_BF16;
    o->store_logits = true;
    for (int i = 1; i < argc; i++) {
        const cli_option *opt;
        const char *v;
        int rc = cli_next_option(CMD, argc, argv, &i, run_options, sizeof run_options / sizeof run_options[0], &opt,
                                 &v);
        if (rc == CLI_HELP || (rc == 0 && opt->id == R_HELP)) {
            run_help();
            return -1;
        }
        if (rc) return rc;
        uint64_t u;
        switch (opt->id) {
        case R_MODEL: o->model_dir = v; break;
        case R_CORPUS: o->corpus = v; break;
        case R_OUT: o->out = v; break;
        case R_MODE:
            if (!strcmp(v, "capture")) o->mode = MODE_CAPTURE;
            else if (!strcmp(v, "score")) o->mode = MODE_SCORE;
            else if (!strcmp(v, "generate")) o->mode = MODE_GENERATE;
            else {
                errorf(CMD, "--mode must be capture, score or generate, not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_FORMAT: o->format = v; break;
        case R_DATASET: o->dataset = v; break;
        case R_LANGS: o->langs = v; break;
        case R_LIMIT:
            if (parse_u64(&o->limit, v) || o->limit == 0) {
                errorf(CMD, "--limit must be a positive integer, not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_CHAT: o->chat = 1; break;
        case R_NO_CHAT: o->chat = 0; break;
        case R_THINKING:
            if (!strcmp(v, "on")) o->thinking = 1;
            else if (!strcmp(v, "off")) o->thinking = 0;
            else {
                errorf(CMD, "--thinking must be on or off, not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_PROMPTS: o->prompts = v; break;
        case R_TEMPLATE: o->template_name = v; break;
        case R_MAX_TOKENS:
            if (parse_u32_in(&o->max_tokens, v, 2, 1u << 20)) {
                errorf(CMD, "--max-tokens must be an integer in [2, 1048576], not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_TRACE: o->trace = v; break;
        case R_RESUME: o->resume = true; break;
        case R_STORE:
            if (!strcmp(v, "logits")) o->store_logits = true, o->store_topk = false;
            else if (!strcmp(v, "topk")) o->store_logits = false, o->store_topk = true;
            else if (!strcmp(v, "both")) o->store_logits = o->store_topk = true;
            else {
                errorf(CMD, "--store must be logits, topk or both, not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_DTYPE:
            if (mtr_dtype_parse(&o->dtype, v)) {
                errorf(CMD, "--dtype must be bf16, f16 or f32, not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_LAYERS: o->layers = v; break;
        case R_MODEL_ID: o->model_id = v; break;
        case R_STEER: o->steer_path = v; break;
        case R_MAX_NEW:
            if (parse_u32_in(&o->max_new, v, 1, 1u << 20)) {
                errorf(CMD, "--max-new must be a positive integer, not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_STOP:
            if (o->n_stops == MAX_STOPS || !*v) {
                errorf(CMD, "--stop: at most %d non-empty strings", MAX_STOPS);
                return EXIT_USAGE;
            }
            o->stops[o->n_stops++] = v;
            break;
        case R_THREADS:
            if (parse_u32_in(&o->threads, v, 1, 1024)) {
                errorf(CMD, "--threads must be an integer in [1, 1024], not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_BATCH:
            if (parse_u32_in(&o->batch, v, 1, 1u << 16)) {
                errorf(CMD, "--batch must be an integer in [1, 65536], not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_SEED:
            if (parse_u64(&u, v)) {
                errorf(CMD, "--seed must be a non-negative integer, not '%s'", v);
                return EXIT_USAGE;
            }
            o->seed = u;
            o->have_seed = true;
            break;
        case R_NO_SYNC: o->no_sync = true; break;
        case R_SHARD_BYTES:
            if (parse_bytes(&o->shard_bytes, v) || o->shard_bytes == 0) {
                errorf(CMD, "--shard-bytes must be a positive byte count (K/M/G suffixes), not '%s'", v);
                return EXIT_USAGE;
            }
            break;
        case R_QUIET: o->quiet = true; break;
        case R_JSON: o->json = true; break;
        default: break;
        }
    }
    if (!o->model_dir || !o->corpus || !o->out) {
        errorf(CMD, "--model, --corpus and --out are required (see --help)");
        return EXIT_USAGE;
    }
    if (o->mode == MODE_CAPTURE && o->trace) {
        errorf(CMD, "--trace is for score and generate (capture writes its run to --out)");
        return EXIT_USAGE;
    }
    if (o->mode != MODE_CAPTURE && o->resume) {
        errorf(CMD, "--resume is for capture runs");
        return EXIT_USAGE;
    }
    if (!o->template_name && o->mode != MODE_CAPTURE) o->template_name = o->mode == MODE_SCORE ? "belebele" : "mgsm";
    if (o->batch > o->max_tokens) o->batch = o->max_tokens;
    return 0;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0777) == 0 || errno == EEXIST) return 0;
    errorf(CMD, "%s: cannot create: %s", path, strerror(errno));
    return EXIT_IO;
}

/* The default prompts file: next to the binary's share directory when installed, else the source tree. */
static const char *default_prompts(void)
{
    static char buf[4096];
    const char *env = getenv("MOETRACE_PROMPTS");
    if (env) return env;
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 64);
    if (n > 0) {
        buf[n] = '\0';
        char *slash = strrchr(buf, '/');
        if (slash) {
            *slash = '\0';
            slash = strrchr(buf, '/');
            if (slash) {
                strcpy(slash, "/share/moetrace/prompts.json");
                if (access(buf, R_OK) == 0) return buf;
                strcpy(slash, "/config/prompts.json");
                if (access(buf, R_OK) == 0) return buf;
            }
        }
    }
    return "config/prompts.json";
}

int cmd_run(int argc, char **argv)
{
    engine e;
    memset(&e, 0, sizeof e);
    int rc = parse_args(&e.o, argc, argv);
    if (rc) return rc < 0 ? EXIT_OK : rc;
    run_opts *o = &e.o;
    mtr_corpus *corpus = NULL;
    mtr_mc *mc = NULL;
    mtr_gen *gen = NULL;
    mtr_prompts *prompts = NULL;
    json_t *summary = json_object();
    bool *mask = NULL;
    e.t0 = now_seconds();

    /* inputs first: a bad corpus fails before the model is mapped */
    mtr_corpus_opts co = MTR_CORPUS_OPTS_INIT;
    if (o->format && mtr_corpus_format_parse(&co.format, o->format)) {
        errorf(CMD, "--format must be jsonl, tsv or flores, not '%s'", o->format);
        rc = EXIT_USAGE;
        goto done;
    }
    co.dataset = o->dataset;
    co.langs = o->langs;
    co.max_items = (size_t)o->limit;
    /* a capture reads up to --batch items past --limit, to pack its last forward as a run without --limit does */
    if (o->mode == MODE_CAPTURE && o->limit && o->limit < SIZE_MAX - o->batch) co.max_items += o->batch;
    if (o->mode == MODE_CAPTURE) rc = mtr_corpus_load(&corpus, o->corpus, &co);
    else if (o->mode == MODE_SCORE) rc = mtr_mc_load(&mc, o->corpus, &co);
    else rc = mtr_gen_load(&gen, o->corpus, &co);
    if (rc) {
        errorf(CMD, "%s", mtr_errmsg());
        rc = exit_code_for(rc);
        goto done;
    }
    if (o->mode != MODE_CAPTURE) {
        const char *pp = o->prompts ? o->prompts : default_prompts();
        if ((rc = mtr_prompts_load(&prompts, pp))) {
            errorf(CMD, "%s", mtr_errmsg());
            rc = exit_code_for(rc);
            goto done;
        }
        if ((rc = mtr_eval_check_template(prompts, o->template_name,
                                          o->mode == MODE_SCORE ? MTR_EVAL_SCORE : MTR_EVAL_GENERATE))) {
            rc = fail_lib(pp, rc);
            goto done;
        }
    }
    mtr_model_opts mo = MTR_MODEL_OPTS_INIT;
    mo.n_threads = (int)o->threads;
    if ((rc = mtr_model_load(&e.model, o->model_dir, &mo))) {
        rc = fail_lib(NULL, rc);
        goto done;
    }
    e.cfg = mtr_model_get_config(e.model);
    if ((rc = mtr_tok_load(&e.tok, o->model_dir))) {
        errorf(CMD, "%s", mtr_errmsg());
        rc = exit_code_for(rc);
        goto done;
    }
    const uint32_t L = e.cfg->n_moe_layers;
    mask = calloc(L, sizeof *mask);
    if (!mask) {
        rc = fail_lib(NULL, MTR_ENOMEM);
        goto done;
    }
    if (o->layers && parse_layers(mask, L, o->layers)) {
        errorf(CMD, "--layers '%s': want 1-based MoE layers in 1..%u like 1-4,10", o->layers, L);
        rc = EXIT_USAGE;
        goto done;
    }
    if (o->steer_path) {
        if ((rc = mtr_steer_load(&e.steer, o->steer_path))) {
            rc = fail_lib(NULL, rc);
            goto done;
        }
        mtr_model_info full;
        mtr_model_info_of(&full, e.model, e.steer->model_id);
        if ((rc = mtr_steer_check_model(e.steer, &full))) {
            rc = fail_lib(o->steer_path, rc);
            goto done;
        }
    }
    /* chat: --chat, or in capture mode by default when the tokenizer has a template */
    mtr_eval_opts eo = MTR_EVAL_OPTS_INIT;
    eo.chat = o->chat == 1 || (o->chat == -1 && o->mode == MODE_CAPTURE && mtr_tok_has_chat_template(e.tok));
    eo.thinking = o->thinking;
    eo.max_tokens = o->max_tokens;
    eo.batch = o->batch;
    eo.model_id = o->model_id;
    eo.record_layers = o->layers ? mask : NULL;
    eo.steer = e.steer;
    eo.steer_seed_set = o->have_seed;
    eo.steer_seed = o->seed;
    eo.max_new = o->max_new;
    eo.stops = o->stops;
    eo.n_stops = o->n_stops;
    eo.progress = on_item;
    eo.progress_user = &e;
    if ((rc = mtr_eval_create(&e.ev, e.model, e.tok, &eo))) {
        rc = fail_lib(o->model_dir, rc);
        goto done;
    }
    if (o->mode == MODE_CAPTURE) {
        if ((rc = open_writer(&e, o->out, o->resume))) {
            rc = fail_lib(NULL, rc);
            goto done;
        }
        rc = run_capture(&e, corpus, summary);
    } else {
        if ((rc = make_dir(o->out))) goto done;
        if (o->trace && (rc = open_writer(&e, o->trace, false))) {
            rc = fail_lib(NULL, rc);
            goto done;
        }
        rc = run_eval(&e, mc, gen, prompts, summary);
    }
    if (rc < 0) rc = exit_code_for(rc);
    if (e.w) {
        int crc = mtr_writer_close(e.w);
        e.w = NULL;
        if (crc && !rc) rc = fail_lib("closing the run", crc);
    }
    if (!rc) {
        mtr_forward_stats fs;
        mtr_eval_stats(e.ev, &fs);
        const uint64_t tokens = mtr_eval_tokens(e.ev);
        double el = now_seconds() - e.t0;
        json_object_set_new(summary, "model", json_string(mtr_eval_info(e.ev)->model_id));
        json_object_set_new(summary, "model_type", json_string(e.cfg->model_type));
        json_object_set_new(summary, "tokens", json_integer((json_int_t)tokens));
        json_object_set_new(summary, "items_truncated", json_integer((json_int_t)e.n_truncated));
        json_object_set_new(summary, "seconds", json_real(el));
        json_object_set_new(summary, "forward_tokens_per_s", json_real(el > 0 ? tokens / el : 0));
        json_object_set_new(summary, "gflops", json_real(fs.flops / 1e9));
        json_object_set_new(summary, "out", json_string(o->out));
        if (e.n_truncated && !o->quiet)
            fprintf(stderr, "%s %s: %llu items were longer than --max-tokens %u and were cut\n", PROG, CMD,
                    (unsigned long long)e.n_truncated, o->max_tokens);
        if (o->json) {
            char *s = json_dumps(summary, JSON_COMPACT | JSON_SORT_KEYS);
            if (s) puts(s);
            free(s);
        } else if (!o->quiet)
            fprintf(stderr, "%s %s: %llu tokens in %.1f s (%.0f tokens/s); results in %s\n", PROG, CMD,
                    (unsigned long long)tokens, el, el > 0 ? tokens / el : 0, o->out);
    }
done:
    if (e.w) mtr_writer_destroy(e.w);
    json_decref(summary);
    free(mask);
    mtr_eval_destroy(e.ev);
    mtr_steer_destroy(e.steer);
    mtr_tok_destroy(e.tok);
    mtr_model_destroy(e.model);
    mtr_corpus_destroy(corpus);
    mtr_mc_destroy(mc);
    mtr_gen_destroy(gen);
    mtr_prompts_destroy(prompts);
    return rc;
}
