/* cmd_run.c — `moetrace-capture run`: the native engine (capture/mtr_model.h) over a corpus. Three modes:
 * capture (teacher-forced prefill, router logits of every MoE layer into a run), score (multiple-choice
 * log-likelihood, accuracy per language) and generate (greedy decoding with the KV cache, exact-match accuracy),
 * each optionally under a steering file and each able to record its routing. */
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
           "  --limit N              at most N items\n"
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
           "  --resume               continue a capture run: items already stored are skipped\n"
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
    mtr_session *sess;
    mtr_steer *steer;
    uint64_t *steer_rng;       /* (n_moe_layers) gaussian-eps generator states */
    mtr_model_info info;       /* the recorded layers */
    uint32_t *rec;             /* (info.n_layers) recorded MoE layer -> engine MoE layer */
    mtr_writer *w;
    float *router;             /* (max_tokens, n_moe_layers, n_experts) */
    float *rec_buf;            /* (max_tokens, info.n_layers, n_experts) with --layers, else NULL */
    float *sel_bias;           /* (info.n_layers, n_experts) the recorded layers' selection bias with --layers */
    float *logits;             /* (max_tokens, vocab) */
    int32_t eos_ids[4];
    int n_eos;
    uint64_t n_truncated, tokens;
    double t0, last_progress;
} engine;

static int fail_lib(const char *what, int rc)
{
    errorf(CMD, "%s%s%s", what ? what : "", what ? ": " : "", mtr_errmsg()[0] ? mtr_errmsg() : mtr_strerror(rc));
    return exit_code_for(rc);
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
    double el = now - e->t0, rate = el > 0 ? (double)e->tokens / el : 0;
    double eta = done ? el / (double)done * (double)(total - done) : 0;
    fprintf(stderr, "\r%s %s: %zu/%zu items, %llu tokens, %.0f tokens/s, ETA %.0f s   %s", PROG, CMD, done, total,
            (unsigned long long)e->tokens, rate, eta, final ? "\n" : "");
    fflush(stderr);
}

/* Tokens of one text: plain (with the tokenizer's special tokens) or as one user turn through the chat template.
 * roles: template tokens (chat scaffolding, bos) vs prompt tokens (the text itself). A token straddling a boundary
 * counts as prompt. add_gen: the template's generation prompt (score / generate). */
static int tokenize_item(engine *e, mtr_tok_ids *ids, uint8_t **roles, const char *text,
                         const mtr_corpus_message *msgs, size_t n_msgs, bool add_gen)
{
    ids->n = 0;
    bool chat = e->o.chat == 1 || (e->o.chat == -1 && e->o.mode == MODE_CAPTURE && mtr_tok_has_chat_template(e->tok));
    int rc;
    if (!chat && !msgs) {
        mtr_tok_ids plain = MTR_TOK_IDS_INIT;
        if ((rc = mtr_tok_encode(ids, e->tok, text, strlen(text), MTR_TOK_ADD_SPECIAL))) return rc;
        if ((rc = mtr_tok_encode(&plain, e->tok, text, strlen(text), 0))) return rc;
        /* the post-processor's additions (bos / eos) are template tokens */
        size_t pre = 0;
        while (pre < ids->n && (ids->n - pre < plain.n || memcmp(ids->ids + pre, plain.ids, plain.n * 4) != 0)) pre++;
        *roles = realloc(*roles, ids->n + 1);
        for (size_t i = 0; i < ids->n; i++)
            (*roles)[i] = pre < ids->n && i >= pre && i < pre + plain.n ? MTR_ROLE_PROMPT : MTR_ROLE_TEMPLATE;
        mtr_tok_ids_free(&plain);
        return 0;
    }
    mtr_tok_message one = {"user", text};
    mtr_tok_message *m = &one;
    size_t nm = 1;
    if (msgs) {
        m = calloc(n_msgs, sizeof *m);
        if (!m) return MTR_ENOMEM;
        for (size_t i = 0; i < n_msgs; i++) m[i] = (mtr_tok_message){msgs[i].role, msgs[i].content};
        nm = n_msgs;
    }
    mtr_tok_chat_opts co = MTR_TOK_CHAT_OPTS_INIT;
    co.add_generation_prompt = add_gen;
    co.enable_thinking = e->o.thinking;
    char *rendered = NULL;
    rc = mtr_tok_apply_chat_template(&rendered, e->tok, m, nm, &co);
    if (m != &one) free(m);
    if (rc) return rc;
    if ((rc = mtr_tok_encode(ids, e->tok, rendered, strlen(rendered), 0))) {
        free(rendered);
        return rc;
    }
    *roles = realloc(*roles, ids->n + 1);
    for (size_t i = 0; i < ids->n; i++) (*roles)[i] = MTR_ROLE_TEMPLATE;
    /* the content of every turn is prompt: find each content's bytes in the rendering, then the tokens whose
     * prefix/suffix encodings leave it (longest common prefix and suffix with the whole) */
    size_t from = 0;
    for (size_t k = 0; k < (msgs ? n_msgs : 1); k++) {
        const char *content = msgs ? msgs[k].content : text;
        /* assistant turns of a chat item are the response, every other turn's content is prompt */
        const uint8_t role = msgs && msgs[k].role && strcmp(msgs[k].role, "assistant") == 0 ? MTR_ROLE_RESPONSE
                                                                                           : MTR_ROLE_PROMPT;
        if (!*content) continue;
        const char *at = strstr(rendered + from, content);
        if (!at) continue;
        size_t b0 = (size_t)(at - rendered), b1 = b0 + strlen(content);
        from = b1;
        mtr_tok_ids pre = MTR_TOK_IDS_INIT, suf = MTR_TOK_IDS_INIT;
        if (mtr_tok_encode(&pre, e->tok, rendered, b0, 0) == 0 &&
            mtr_tok_encode(&suf, e->tok, rendered + b1, strlen(rendered + b1), 0) == 0) {
            size_t lp = 0, ls = 0;
            while (lp < pre.n && lp < ids->n && pre.ids[lp] == ids->ids[lp]) lp++;
            while (ls < suf.n && ls < ids->n - lp && suf.ids[suf.n - 1 - ls] == ids->ids[ids->n - 1 - ls]) ls++;
            for (size_t i = lp; i < ids->n - ls; i++) (*roles)[i] = role;
        }
        mtr_tok_ids_free(&pre);
        mtr_tok_ids_free(&suf);
    }
    free(rendered);
    return 0;
}

/* Forward ids[0..n) from the start of a fresh session in batches; router rows into e->router when capturing;
 * the logits of the last n_logits tokens into e->logits. */
static int prefill(engine *e, const int32_t *ids, uint32_t n, bool want_router, uint32_t n_logits)
{
    mtr_session_reset(e->sess);
    const size_t row = (size_t)e->cfg->n_moe_layers * e->cfg->n_experts;
    for (uint32_t at = 0; at < n; at += e->o.batch) {
        uint32_t b = n - at < e->o.batch ? n - at : e->o.batch;
        mtr_forward_io io = MTR_FORWARD_IO_INIT;
        io.router = want_router ? e->router + (size_t)at * row : NULL;
        io.steer = e->steer;
        io.steer_rng = e->steer ? e->steer_rng : NULL;
        /* logits only for the rows asked, which may start in an earlier batch */
        uint32_t first = n - n_logits;
        if (n_logits && at + b > first) {
            uint32_t lo = first > at ? first - at : 0;
            io.n_logits = b - lo;
            io.logits = e->logits + (size_t)(at + lo - first) * e->cfg->vocab_size;
        }
        /* a capture-only forward may stop after the last MoE layer, but only for the final batch: earlier ones
         * must fill the cache of every layer */
        if (want_router && !io.n_logits && at + b < n) io.stop_after_layer = e->cfg->n_layers;
        int rc = mtr_model_forward(e->sess, ids + at, b, &io);
        if (rc) return rc;
    }
    e->tokens += n;
    return 0;
}

/* The recorded layers of n tokens whose router rows start at row first, as the writer takes them. */
static const float *recorded(engine *e, size_t first, uint32_t n)
{
    const mtr_model_config *c = e->cfg;
    const float *z = e->router + first * c->n_moe_layers * c->n_experts;
    if (e->info.n_layers == c->n_moe_layers) return z;
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t l = 0; l < e->info.n_layers; l++)
            memcpy(e->rec_buf + ((size_t)t * e->info.n_layers + l) * c->n_experts,
                   z + ((size_t)t * c->n_moe_layers + e->rec[l]) * c->n_experts, c->n_experts * sizeof(float));
    return e->rec_buf;
}

static int record_at(engine *e, size_t first, uint64_t seq, const char *unit, const char *lang, const char *dataset,
                     const int32_t *ids, const uint8_t *roles, uint32_t n)
{
    if (!e->w) return 0;
    mtr_seq_meta meta = {seq, unit, lang, dataset, n, e->steer ? MTR_SEQ_STEERED : 0u};
    return mtr_writer_append(e->w, &meta, ids, NULL, roles, recorded(e, first, n), MTR_DTYPE_F32);
}

static int record(engine *e, uint64_t seq, const char *unit, const char *lang, const char *dataset,
                  const int32_t *ids, const uint8_t *roles, uint32_t n)
{
    return record_at(e, 0, seq, unit, lang, dataset, ids, roles, n);
}

static json_t *steer_json(const mtr_steer *s, const char *path)
{
    json_t *j = json_object();
    json_object_set_new(j, "file", json_string(path));
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
    json_object_set_new(cs, "model_dir", json_string(e->o.model_dir));
    json_object_set_new(cs, "corpus", json_string(e->o.corpus));
    json_object_set_new(cs, "chat", e->o.chat == -1 ? json_string("auto") : json_boolean(e->o.chat));
    json_object_set_new(cs, "max_tokens", json_integer(e->o.max_tokens));
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
    int rc = mtr_writer_create(&e->w, dir, &e->info, &wo);
    free(cs_text);
    free(st_text);
    return rc;
}

/* ---- capture --------------------------------------------------------------------------------------------- */

/* Items shorter than --batch are packed into one forward (each attends only within itself) until the batch is
 * full; longer ones run alone in --batch chunks. */
typedef struct {
    size_t item;
    uint32_t start, len;
} packed_item;

static int flush_packed(engine *e, const mtr_corpus *corpus, const packed_item *pk, size_t n_pk,
                        const int32_t *ids, const uint8_t *roles, uint32_t *lens, uint64_t *written)
{
    if (n_pk == 0) return 0;
    uint32_t total = pk[n_pk - 1].start + pk[n_pk - 1].len;
    int rc;
    if (n_pk == 1) rc = prefill(e, ids, total, true, 0);
    else {
        for (size_t q = 0; q < n_pk; q++) lens[q] = pk[q].len;
        mtr_session_reset(e->sess);
        mtr_forward_io io = MTR_FORWARD_IO_INIT;
        io.router = e->router;
        io.steer = e->steer;
        io.steer_rng = e->steer ? e->steer_rng : NULL;
        io.seq_lens = lens;
        io.n_seqs = (uint32_t)n_pk;
        rc = mtr_model_forward(e->sess, ids, total, &io);
        e->tokens += total;
    }
    if (rc) return fail_lib(e->o.corpus, rc);
    for (size_t q = 0; q < n_pk; q++) {
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
        const mtr_corpus_item *it = mtr_corpus_get(corpus, i);
        if (mtr_writer_has_seq(e->w, i)) {
            skipped++;
            continue;
        }
        if ((rc = tokenize_item(e, &ids, &roles, it->text, it->messages, it->n_messages, false))) {
            errorf(CMD, "%s: item %zu (line %zu): %s", e->o.corpus, i + 1, it->line, mtr_tok_errmsg());
            rc = exit_code_for(rc);
            goto done;
        }
        uint32_t T = ids.n > e->o.max_tokens ? e->o.max_tokens : (uint32_t)ids.n;
        if (T < ids.n) e->n_truncated++;
        if (T == 0) continue;
        if (used + T > B) {
            if ((rc = flush_packed(e, corpus, pk, n_pk, pids, proles, lens, &written))) goto done;
            n_pk = 0;
            used = 0;
        }
        if (T > B) { /* alone, in chunks */
            if ((rc = prefill(e, ids.ids, T, true, 0))) {
                rc = fail_lib(e->o.corpus, rc);
                goto done;
            }
            if ((rc = record(e, i, it->unit_id, it->lang, it->dataset, ids.ids, roles, T))) {
                rc = fail_lib(e->o.out, rc);
                goto done;
            }
            written++;
        } else {
            memcpy(pids + used, ids.ids, T * sizeof *pids);
            memcpy(proles + used, roles, T);
            pk[n_pk++] = (packed_item){i, used, T};
            used += T;
        }
        progress(e, i + 1, n, false);
    }
    if ((rc = flush_packed(e, corpus, pk, n_pk, pids, proles, lens, &written))) goto done;
    progress(e, n, n, true);
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

/* ---- accuracy tables ------------------------------------------------------------------------------------- */

typedef struct {
    char lang[64], dataset[64];
    uint64_t n, correct, correct_norm;
} acc_row;

static acc_row *acc_find(acc_row **rows, size_t *n, const char *lang, const char *dataset)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp((*rows)[i].lang, lang) && !strcmp((*rows)[i].dataset, dataset)) return &(*rows)[i];
    acc_row *r = realloc(*rows, (*n + 1) * sizeof *r);
    if (!r) return NULL;
    *rows = r;
    r = &r[(*n)++];
    memset(r, 0, sizeof *r);
    snprintf(r->lang, sizeof r->lang, "%s", lang);
    snprintf(r->dataset, sizeof r->dataset, "%s", dataset);
    return r;
}

static int write_accuracy(engine *e, const acc_row *rows, size_t n, bool with_norm, json_t *summary)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/accuracy.tsv", e->o.out);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        errorf(CMD, "%s: cannot write: %s", tmp, strerror(errno));
        return EXIT_IO;
    }
    fprintf(f, "# %s run %s: model=%s corpus=%s steer=%s\n", PROG, e->o.mode == MODE_SCORE ? "score" : "generate",
            e->info.model_id, e->o.corpus, e->o.steer_path ? e->o.steer_path : "none");
    fprintf(f, "#lang\ttask\tmetric\tvalue\tn\n");
    json_t *ja = json_array();
    for (size_t i = 0; i < n; i++) {
        double acc = rows[i].n ? (double)rows[i].correct / (double)rows[i].n : NAN;
        fprintf(f, "%s\t%s\taccuracy\t%.6f\t%llu\n", rows[i].lang, rows[i].dataset, acc,
                (unsigned long long)rows[i].n);
        json_array_append_new(ja, json_pack("{s:s, s:s, s:s, s:f, s:I}", "lang", rows[i].lang, "task",
                                            rows[i].dataset, "metric", "accuracy", "value", acc, "n",
                                            (json_int_t)rows[i].n));
        if (with_norm) {
            double an = rows[i].n ? (double)rows[i].correct_norm / (double)rows[i].n : NAN;
            fprintf(f, "%s\t%s\taccuracy_norm\t%.6f\t%llu\n", rows[i].lang, rows[i].dataset, an,
                    (unsigned long long)rows[i].n);
            json_array_append_new(ja, json_pack("{s:s, s:s, s:s, s:f, s:I}", "lang", rows[i].lang, "task",
                                                rows[i].dataset, "metric", "accuracy_norm", "value", an, "n",
                                                (json_int_t)rows[i].n));
        }
    }
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        json_decref(ja);
        errorf(CMD, "%s: cannot write", path);
        return EXIT_IO;
    }
    snprintf(path, sizeof path, "%s/accuracy.json", e->o.out);
    json_t *doc = json_pack("{s:s, s:s, s:s, s:O}", "model", e->info.model_id, "corpus", e->o.corpus, "steer",
                            e->o.steer_path ? e->o.steer_path : "none", "accuracy", ja);
    int rc = json_dump_file(doc, path, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(doc);
    json_object_set_new(summary, "accuracy", ja);
    if (rc) {
        errorf(CMD, "%s: cannot write", path);
        return EXIT_IO;
    }
    return 0;
}

static FILE *open_items(engine *e, const char *header)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/items.tsv", e->o.out);
    FILE *f = fopen(path, "w");
    if (!f) errorf(CMD, "%s: cannot write: %s", path, strerror(errno));
    else fprintf(f, "%s\n", header);
    return f;
}

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

static double log_softmax_at(const float *logits, uint32_t V, int32_t id)
{
    float mx = logits[0];
    for (uint32_t v = 1; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
    double s = 0;
    for (uint32_t v = 0; v < V; v++) s += exp((double)logits[v] - mx);
    return (double)logits[id] - mx - log(s);
}

/* ---- score ----------------------------------------------------------------------------------------------- */

static int run_score(engine *e, const mtr_mc *set, const mtr_prompts *prompts, json_t *summary)
{
    size_t n = mtr_mc_count(set);
    acc_row *rows = NULL;
    size_t n_rows = 0;
    int rc = 0;
    mtr_tok_ids ctx = MTR_TOK_IDS_INIT, whole = MTR_TOK_IDS_INIT;
    uint8_t *roles = NULL;
    double *ll = NULL;
    FILE *items = open_items(e, "#unit_id\tlang\ttask\tgold\tpred\tpred_norm\tcorrect\tloglik");
    if (!items) return EXIT_IO;
    const uint32_t V = e->cfg->vocab_size;
    for (size_t i = 0; i < n; i++) {
        const mtr_mc_item *it = mtr_mc_get(set, i);
        mtr_prompt_mc pm = {NULL, NULL, 0};
        if ((rc = mtr_prompt_render_mc(&pm, prompts, e->o.template_name, it))) {
            errorf(CMD, "%s: item %zu: %s", e->o.corpus, i + 1, mtr_corpus_errmsg());
            rc = EXIT_DATA;
            goto done;
        }
        if ((rc = tokenize_item(e, &ctx, &roles, pm.prompt, NULL, 0, true))) {
            errorf(CMD, "%s: item %zu: %s", e->o.corpus, i + 1, mtr_tok_errmsg());
            rc = EXIT_DATA;
            mtr_prompt_mc_free(&pm);
            goto done;
        }
        if (ctx.n + 1 > e->o.max_tokens) {
            errorf(CMD, "%s: item %zu: the prompt has %zu tokens, more than --max-tokens %u", e->o.corpus, i + 1,
                   ctx.n, e->o.max_tokens);
            rc = EXIT_DATA;
            mtr_prompt_mc_free(&pm);
            goto done;
        }
        const uint32_t c = (uint32_t)ctx.n;
        if ((rc = prefill(e, ctx.ids, c, e->w != NULL, 1))) {
            rc = fail_lib(e->o.corpus, rc);
            mtr_prompt_mc_free(&pm);
            goto done;
        }
        if (e->w && (rc = record(e, i, it->unit_id, it->lang, it->dataset, ctx.ids, roles, c))) {
            rc = fail_lib(e->o.trace, rc);
            mtr_prompt_mc_free(&pm);
            goto done;
        }
        /* the prefill ended after the last MoE layer when capturing without logits; here logits were asked, so
         * the cache is whole and each choice continues from the prompt */
        bool cache_is_ctx = true;
        float *last = malloc((size_t)V * sizeof *last);
        memcpy(last, e->logits, (size_t)V * sizeof *last);
        free(ll);
        ll = calloc(it->n_choices, sizeof *ll);
        double *lln = calloc(it->n_choices, sizeof *lln);
        for (size_t k = 0; k < it->n_choices && !rc; k++) {
            size_t clen = strlen(pm.continuations[k]);
            if (e->o.chat == 1) {
                /* with a chat template the continuation follows the rendered prompt's tokens directly */
                whole.n = 0;
                if (whole.cap < ctx.n) {
                    int32_t *grown = realloc(whole.ids, ctx.n * sizeof *grown);
                    if (grown) whole.ids = grown, whole.cap = ctx.n;
                    else rc = MTR_ENOMEM;
                }
                if (!rc) {
                    memcpy(whole.ids, ctx.ids, ctx.n * sizeof *whole.ids);
                    whole.n = ctx.n;
                    rc = mtr_tok_encode(&whole, e->tok, pm.continuations[k], clen, 0);
                }
            } else {
                /* as lm-evaluation-harness: encode(context + continuation), the context's tokens taken off below */
                size_t plen = strlen(pm.prompt);
                char *joint = malloc(plen + clen + 1);
                if (!joint) rc = MTR_ENOMEM;
                else {
                    memcpy(joint, pm.prompt, plen);
                    memcpy(joint + plen, pm.continuations[k], clen + 1);
                    rc = tokenize_item(e, &whole, &roles, joint, NULL, 0, true);
                    free(joint);
                }
            }
            if (rc) {
                errorf(CMD, "%s: item %zu: %s", e->o.corpus, i + 1, mtr_tok_errmsg());
                rc = EXIT_DATA;
                break;
            }
            uint32_t p = 0;
            while (p < c && p < whole.n && whole.ids[p] == ctx.ids[p]) p++;
            if (whole.n <= c || whole.n > e->o.max_tokens) {
                ll[k] = -INFINITY;
                lln[k] = -INFINITY;
                continue;
            }
            uint32_t nc = (uint32_t)whole.n - c;
            if (nc > e->o.batch) {
                errorf(CMD, "%s: item %zu: choice %zu has %u tokens, more than --batch %u", e->o.corpus, i + 1, k,
                       nc, e->o.batch);
                rc = EXIT_DATA;
                break;
            }
            double s = 0;
            if (p == c) {
                /* the prompt's cache and last logits serve every choice */
                if (!cache_is_ctx && (rc = prefill(e, ctx.ids, c, false, 1))) break;
                cache_is_ctx = true;
                s += log_softmax_at(last, V, whole.ids[c]);
                if (nc > 1) {
                    if ((rc = mtr_session_truncate(e->sess, c))) break;
                    mtr_forward_io io = MTR_FORWARD_IO_INIT;
                    io.logits = e->logits;
                    io.n_logits = nc - 1;
                    io.steer = e->steer;
                    io.steer_rng = e->steer ? e->steer_rng : NULL;
                    if ((rc = mtr_model_forward(e->sess, whole.ids + c, nc - 1, &io))) break;
                    for (uint32_t q = 1; q < nc; q++)
                        s += log_softmax_at(e->logits + (size_t)(q - 1) * V, V, whole.ids[c + q]);
                }
            } else {
                /* the continuation changed how the prompt's end tokenises: run the whole text, read the rows that
                 * predict the continuation (positions c-1 .. n-2) */
                cache_is_ctx = false;
                if ((rc = prefill(e, whole.ids, (uint32_t)whole.n - 1, false, nc))) break;
                for (uint32_t q = 0; q < nc; q++) s += log_softmax_at(e->logits + (size_t)q * V, V, whole.ids[c + q]);
            }
            ll[k] = s;
            lln[k] = s / (double)(clen ? clen : 1);
            e->tokens += nc;
        }
        free(last);
        if (rc) {
            free(lln);
            mtr_prompt_mc_free(&pm);
            rc = rc > 0 ? rc : fail_lib(e->o.corpus, rc);
            goto done;
        }
        size_t pred = 0, pred_n = 0;
        for (size_t k = 1; k < it->n_choices; k++) {
            if (ll[k] > ll[pred]) pred = k;
            if (lln[k] > lln[pred_n]) pred_n = k;
        }
        acc_row *r = acc_find(&rows, &n_rows, it->lang, it->dataset);
        r->n++;
        r->correct += pred == it->answer;
        r->correct_norm += pred_n == it->answer;
        put_field(items, it->unit_id);
        fputc('\t', items);
        put_field(items, it->lang);
        fputc('\t', items);
        put_field(items, it->dataset);
        fprintf(items, "\t%zu\t%zu\t%zu\t%d\t", it->answer, pred, pred_n, pred == it->answer);
        for (size_t k = 0; k < it->n_choices; k++) fprintf(items, "%s%.6f", k ? "," : "", ll[k]);
        fputc('\n', items);
        free(lln);
        mtr_prompt_mc_free(&pm);
        progress(e, i + 1, n, false);
    }
    progress(e, n, n, true);
    fclose(items);
    items = NULL;
    rc = write_accuracy(e, rows, n_rows, true, summary);
done:
    if (items) fclose(items);
    free(rows);
    free(ll);
    free(roles);
    mtr_tok_ids_free(&ctx);
    mtr_tok_ids_free(&whole);
    return rc;
}

/* ---- generate -------------------------------------------------------------------------------------------- */

static bool is_eos(const engine *e, int32_t id)
{
    for (int i = 0; i < e->n_eos; i++)
        if (e->eos_ids[i] == id) return true;
    return false;
}

static int run_generate(engine *e, const mtr_gen *set, const mtr_prompts *prompts, json_t *summary)
{
    size_t n = mtr_gen_count(set);
    acc_row *rows = NULL;
    size_t n_rows = 0;
    int rc = 0;
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    uint8_t *roles = NULL;
    FILE *items = open_items(e, "#unit_id\tlang\ttask\tgold\tcorrect\tn_new\tgenerated");
    if (!items) return EXIT_IO;
    const uint32_t V = e->cfg->vocab_size;
    const size_t row = (size_t)e->cfg->n_moe_layers * e->cfg->n_experts;
    const size_t tok_vocab = mtr_tok_vocab_size(e->tok);
    int32_t *text_ids = malloc(((size_t)e->o.max_new + 1) * sizeof *text_ids);
    if (!text_ids) return fail_lib(NULL, MTR_ENOMEM);
    for (size_t i = 0; i < n; i++) {
        const mtr_gen_item *it = mtr_gen_get(set, i);
        char *prompt = NULL;
        if ((rc = mtr_prompt_render_gen(&prompt, prompts, e->o.template_name, it))) {
            errorf(CMD, "%s: item %zu: %s", e->o.corpus, i + 1, mtr_corpus_errmsg());
            rc = EXIT_DATA;
            goto done;
        }
        rc = tokenize_item(e, &ids, &roles, prompt, NULL, 0, true);
        free(prompt);
        if (rc) {
            errorf(CMD, "%s: item %zu: %s", e->o.corpus, i + 1, mtr_tok_errmsg());
            rc = EXIT_DATA;
            goto done;
        }
        uint32_t c = (uint32_t)ids.n;
        if (c + 1 > e->o.max_tokens) {
            errorf(CMD, "%s: item %zu: the prompt has %u tokens, more than --max-tokens %u", e->o.corpus, i + 1, c,
                   e->o.max_tokens);
            rc = EXIT_DATA;
            goto done;
        }
        if ((rc = prefill(e, ids.ids, c, e->w != NULL, 1))) {
            rc = fail_lib(e->o.corpus, rc);
            goto done;
        }
        uint32_t n_new = 0;
        char *text = NULL;
        size_t text_len = 0;
        for (;;) {
            const float *lg = e->logits;
            int32_t best = 0;
            for (uint32_t v = 1; v < V; v++)
                if (lg[v] > lg[best]) best = (int32_t)v;
            if (is_eos(e, best)) break;
            if (ids.n == ids.cap) {
                size_t nc = ids.cap ? ids.cap * 2 : 64;
                int32_t *g = realloc(ids.ids, nc * sizeof *g);
                if (!g) {
                    free(text);
                    rc = fail_lib(NULL, MTR_ENOMEM);
                    goto done;
                }
                ids.ids = g;
                ids.cap = nc;
            }
            ids.ids[ids.n++] = best;
            n_new++;
            free(text);
            text = NULL;
            /* ids past the tokenizer's (the model's padded vocabulary) decode to nothing, as in transformers */
            size_t n_text = 0;
            for (uint32_t q = 0; q < n_new; q++)
                if ((size_t)ids.ids[c + q] < tok_vocab) text_ids[n_text++] = ids.ids[c + q];
            if ((rc = mtr_tok_decode(&text, &text_len, e->tok, text_ids, n_text, MTR_TOK_SKIP_SPECIAL))) {
                errorf(CMD, "%s: %s", e->o.model_dir, mtr_tok_errmsg());
                rc = exit_code_for(rc);
                goto done;
            }
            bool stop = false;
            for (size_t s = 0; s < e->o.n_stops && !stop; s++) {
                char *at = strstr(text, e->o.stops[s]);
                if (at) *at = '\0', stop = true;
            }
            if (stop || n_new >= e->o.max_new || c + n_new >= e->o.max_tokens) break;
            mtr_forward_io io = MTR_FORWARD_IO_INIT;
            io.logits = e->logits;
            io.n_logits = 1;
            io.router = e->w ? e->router + (size_t)(c + n_new - 1) * row : NULL;
            io.steer = e->steer;
            io.steer_rng = e->steer ? e->steer_rng : NULL;
            if ((rc = mtr_model_forward(e->sess, &best, 1, &io))) {
                free(text);
                rc = fail_lib(e->o.corpus, rc);
                goto done;
            }
            e->tokens++;
        }
        /* routing of the prompt and of every generated token that went through the model */
        uint32_t routed = c + (n_new ? n_new - 1 : 0);
        if (e->w) {
            roles = realloc(roles, routed + 1);
            for (uint32_t t = c; t < routed; t++) roles[t] = MTR_ROLE_GENERATED;
            if ((rc = record(e, i, it->unit_id, it->lang, it->dataset, ids.ids, roles, routed))) {
                free(text);
                rc = fail_lib(e->o.trace, rc);
                goto done;
            }
        }
        bool ok = text && mtr_corpus_answer_matches(it->answer, text);
        acc_row *r = acc_find(&rows, &n_rows, it->lang, it->dataset);
        r->n++;
        r->correct += ok;
        put_field(items, it->unit_id);
        fputc('\t', items);
        put_field(items, it->lang);
        fputc('\t', items);
        put_field(items, it->dataset);
        fputc('\t', items);
        put_field(items, it->answer);
        fprintf(items, "\t%d\t%u\t", ok, n_new);
        put_field(items, text ? text : "");
        fputc('\n', items);
        free(text);
        progress(e, i + 1, n, false);
    }
    progress(e, n, n, true);
    fclose(items);
    items = NULL;
    rc = write_accuracy(e, rows, n_rows, false, summary);
done:
    free(text_ids);
    if (items) fclose(items);
    free(rows);
    free(roles);
    mtr_tok_ids_free(&ids);
    return rc;
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
    if (o->mode == MODE_CAPTURE) rc = mtr_corpus_load(&corpus, o->corpus, &co);
    else if (o->mode == MODE_SCORE) rc = mtr_mc_load(&mc, o->corpus, &co);
    else rc = mtr_gen_load(&gen, o->corpus, &co);
    if (rc) {
        errorf(CMD, "%s", mtr_corpus_errmsg());
        rc = exit_code_for(rc);
        goto done;
    }
    if (o->mode != MODE_CAPTURE) {
        const char *pp = o->prompts ? o->prompts : default_prompts();
        if ((rc = mtr_prompts_load(&prompts, pp))) {
            errorf(CMD, "%s", mtr_corpus_errmsg());
            rc = exit_code_for(rc);
            goto done;
        }
        int kind = mtr_prompts_kind(prompts, o->template_name);
        if (kind != (o->mode == MODE_SCORE ? MTR_PROMPT_MC : MTR_PROMPT_GEN)) {
            errorf(CMD, "%s: no %s template '%s'", pp, o->mode == MODE_SCORE ? "multiple-choice" : "generation",
                   o->template_name);
            rc = EXIT_USAGE;
            goto done;
        }
        const char *const *ts = NULL;
        size_t nts = 0;
        if (o->mode == MODE_GENERATE && mtr_prompts_stops(&ts, &nts, prompts, o->template_name) == 0)
            for (size_t k = 0; k < nts && o->n_stops < MAX_STOPS; k++) o->stops[o->n_stops++] = ts[k];
    }
    mtr_model_opts mo = MTR_MODEL_OPTS_INIT;
    mo.n_threads = (int)o->threads;
    if ((rc = mtr_model_load(&e.model, o->model_dir, &mo))) {
        rc = fail_lib(NULL, rc);
        goto done;
    }
    e.cfg = mtr_model_get_config(e.model);
    if ((rc = mtr_tok_load(&e.tok, o->model_dir))) {
        errorf(CMD, "%s", mtr_tok_errmsg());
        rc = exit_code_for(rc);
        goto done;
    }
    if (o->chat == 1 && !mtr_tok_has_chat_template(e.tok)) {
        errorf(CMD, "%s: --chat, but the tokenizer has no chat template", o->model_dir);
        rc = EXIT_USAGE;
        goto done;
    }
    if (mtr_tok_vocab_size(e.tok) > e.cfg->vocab_size) {
        errorf(CMD, "%s: the tokenizer has %zu ids, the model's vocabulary %u", o->model_dir,
               mtr_tok_vocab_size(e.tok), e.cfg->vocab_size);
        rc = EXIT_DATA;
        goto done;
    }
    if (e.cfg->eos_token_id >= 0) e.eos_ids[e.n_eos++] = e.cfg->eos_token_id;
    const char *eos_s = mtr_tok_eos_token(e.tok);
    int32_t eid = eos_s ? mtr_tok_token_to_id(e.tok, eos_s) : -1;
    if (eid >= 0 && !is_eos(&e, eid)) e.eos_ids[e.n_eos++] = eid;
    int32_t im_end = mtr_tok_token_to_id(e.tok, "<|im_end|>");
    if (im_end >= 0 && !is_eos(&e, im_end)) e.eos_ids[e.n_eos++] = im_end;

    mtr_model_info_of(&e.info, e.model, o->model_id);
    const uint32_t L = e.cfg->n_moe_layers, E = e.cfg->n_experts;
    e.rec = calloc(L, sizeof *e.rec);
    mask = calloc(L, sizeof *mask);
    if (!e.rec || !mask) {
        rc = fail_lib(NULL, MTR_ENOMEM);
        goto done;
    }
    if (o->layers) {
        if (parse_layers(mask, L, o->layers)) {
            errorf(CMD, "--layers '%s': want 1-based MoE layers in 1..%u like 1-4,10", o->layers, L);
            rc = EXIT_USAGE;
            goto done;
        }
        uint32_t k = 0;
        for (uint32_t l = 0; l < L; l++)
            if (mask[l]) e.rec[k] = l, e.info.layer_index[k++] = e.cfg->moe_layer_index[l];
        e.info.n_layers = k;
        if (e.info.selection_bias) { /* the recorded layers' rows of the model's selection-only bias */
            if (!(e.sel_bias = malloc((size_t)k * E * sizeof *e.sel_bias))) {
                rc = fail_lib(NULL, MTR_ENOMEM);
                goto done;
            }
            for (uint32_t i = 0; i < k; i++)
                memcpy(e.sel_bias + (size_t)i * E, e.info.selection_bias + (size_t)e.rec[i] * E, E * sizeof(float));
            e.info.selection_bias = e.sel_bias;
        }
    } else
        for (uint32_t l = 0; l < L; l++) e.rec[l] = l;
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
        e.steer_rng = calloc(L, sizeof *e.steer_rng);
        if (!e.steer_rng) {
            rc = fail_lib(NULL, MTR_ENOMEM);
            goto done;
        }
        for (uint32_t l = 0; l < L; l++) e.steer_rng[l] = mtr_steer_layer_seed(o->have_seed ? o->seed : e.steer->seed, l);
    }
    if ((rc = mtr_session_create(&e.sess, e.model, o->max_tokens + 1, o->batch))) {
        rc = fail_lib(NULL, rc);
        goto done;
    }
    e.router = malloc(((size_t)o->max_tokens + 1) * L * E * sizeof *e.router);
    if (e.info.n_layers < L) e.rec_buf = malloc(((size_t)o->max_tokens + 1) * e.info.n_layers * E * sizeof *e.rec_buf);
    e.logits = malloc((size_t)(o->batch > 1 ? o->batch : 1) * e.cfg->vocab_size * sizeof *e.logits);
    if (!e.router || (e.info.n_layers < L && !e.rec_buf) || !e.logits) {
        rc = fail_lib(NULL, MTR_ENOMEM);
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
        rc = o->mode == MODE_SCORE ? run_score(&e, mc, prompts, summary) : run_generate(&e, gen, prompts, summary);
    }
    if (rc < 0) rc = exit_code_for(rc);
    if (e.w) {
        int crc = mtr_writer_close(e.w);
        e.w = NULL;
        if (crc && !rc) rc = fail_lib("closing the run", crc);
    }
    if (!rc) {
        mtr_forward_stats fs;
        mtr_session_stats(e.sess, &fs);
        double el = now_seconds() - e.t0;
        json_object_set_new(summary, "model", json_string(e.info.model_id));
        json_object_set_new(summary, "model_type", json_string(e.cfg->model_type));
        json_object_set_new(summary, "tokens", json_integer((json_int_t)e.tokens));
        json_object_set_new(summary, "items_truncated", json_integer((json_int_t)e.n_truncated));
        json_object_set_new(summary, "seconds", json_real(el));
        json_object_set_new(summary, "forward_tokens_per_s", json_real(el > 0 ? e.tokens / el : 0));
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
                    (unsigned long long)e.tokens, el, el > 0 ? e.tokens / el : 0, o->out);
    }
done:
    if (e.w) mtr_writer_destroy(e.w);
    json_decref(summary);
    free(mask);
    free(e.rec);
    free(e.router);
    free(e.rec_buf);
    free(e.sel_bias);
    free(e.logits);
    mtr_session_destroy(e.sess);
    mtr_steer_destroy(e.steer);
    free(e.steer_rng);
    mtr_tok_destroy(e.tok);
    mtr_model_destroy(e.model);
    mtr_corpus_destroy(corpus);
    mtr_mc_destroy(mc);
    mtr_gen_destroy(gen);
    mtr_prompts_destroy(prompts);
    return rc;
}
