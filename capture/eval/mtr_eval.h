/* mtr_eval.h — evaluation over the native engine (libmtr_eval.a; docs/ARCHITECTURE.md §1 and §5): multiple-choice
 * scoring and greedy generation of the sets of mtr_corpus.h, accuracy per (language, dataset), and the item
 * machinery every mode of `moetrace-capture run` shares (an item tokenized with token roles, prefill, its routing
 * recorded into a trace).
 *
 * An evaluation context (mtr_eval_create) borrows a loaded model and its tokenizer, optionally a steering file
 * (applied to the router logits of every forward) and a trace writer (the routing of every prompt and generated
 * token is recorded), and owns one session: the KV cache, the router rows of the current sequence and the logits.
 *
 * Scoring (mtr_eval_score), as lm-evaluation-harness: each item is rendered through an mc template into a prompt
 * and one continuation per choice; a choice's log-likelihood is the sum over its continuation's tokens of the
 * log-softmax of the model's logits. Without a chat template, prompt + continuation is encoded as one text and
 * the prompt's tokens taken off (when the continuation changes how the prompt's end tokenises, the whole text is
 * run again); with one, the prompt goes as one user turn with the generation prompt and the continuation's tokens
 * follow. The prediction is the highest log-likelihood; the "norm" prediction the highest per byte of the
 * continuation. A continuation that adds no token or does not fit max_tokens scores -inf.
 *
 * Generation (mtr_eval_generate): the rendered prompt (with the template's generation prompt when chat is on) is
 * decoded greedily with the KV cache until an end-of-sequence token (the config's eos, the tokenizer's eos token,
 * "<|im_end|>"), a stop string (opts.stops, then the template's "stop" list; the text is cut where the first of
 * them in that order occurs), max_new tokens or max_tokens. Correct when the last number of the text equals the
 * gold answer (mtr_corpus_answer_matches).
 *
 * Files (mtr_eval_write_*), the formats moetrace-stats and the tests read:
 *   accuracy.tsv   "# PRODUCER: model=M corpus=C steer=S", "#lang\ttask\tmetric\tvalue\tn", then per (lang,
 *                  dataset) row "lang\tdataset\taccuracy\t%.6f\tn" and, for scoring, "...\taccuracy_norm\t...";
 *                  written as accuracy.tsv.tmp and renamed;
 *   accuracy.json  {"accuracy": [{"lang", "metric", "n", "task", "value"}, ...], "corpus", "model", "steer"}
 *                  (keys sorted, indent 1);
 *   items.tsv      score: "#unit_id\tlang\ttask\tgold\tpred\tpred_norm\tcorrect\tloglik" with the log-likelihoods
 *                  as %.6f joined by ','; generate: "#unit_id\tlang\ttask\tgold\tcorrect\tn_new\tgenerated".
 *                  Text fields escape tab, newline, carriage return and backslash as \t \n \r \\.
 *
 * Conventions as libmoetrace (traces/moetrace.h): functions return 0 or a negative mtr_err and leave a one-line
 * detail in mtr_errmsg() that names the file and item and what is wrong. Nothing prints or exits; progress goes
 * through the callback in the options. A context is used by one thread at a time (its forwards use OpenMP inside).
 */
#ifndef MTR_EVAL_H
#define MTR_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moetrace.h"
#include "mtr_corpus.h"
#include "mtr_model.h"
#include "mtr_steer.h"
#include "mtr_tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mtr_eval mtr_eval;

/* Called on the calling thread after every item of mtr_eval_score / mtr_eval_generate: done of total items,
 * tokens forwarded by the context so far (as mtr_eval_tokens). */
typedef void (*mtr_eval_progress_fn)(void *user, size_t done, size_t total, uint64_t tokens);

typedef struct {
    bool chat;                 /* items through the tokenizer's chat template (which it must have); else plain
                                  text with the tokenizer's special tokens; default false */
    int thinking;              /* enable_thinking passed to the chat template: -1 undefined (default), 0, 1 */
    uint32_t max_tokens;       /* longest sequence in tokens, >= 2; default 4096 */
    uint32_t batch;            /* tokens per forward in prefill, >= 1 (above max_tokens: max_tokens); default 512 */
    const char *model_id;      /* model name recorded in traces; NULL = config.json's _name_or_path */
    const bool *record_layers; /* (n_moe_layers) the MoE layers a trace records; NULL = all (at least one) */
    const mtr_steer *steer;    /* applied to the router logits of every forward, or NULL; borrowed, outlives the
                                  context; must fit the model (mtr_steer_check_model) */
    bool steer_seed_set;       /* seed the gaussian eps of hard/off steering with steer_seed, not the file's */
    uint64_t steer_seed;
    uint32_t max_new;          /* generate: new tokens at most, >= 1; default 256 */
    const char *const *stops;  /* (n_stops) generate: non-empty stop strings tried before the template's; borrowed */
    size_t n_stops;
    mtr_eval_progress_fn progress; /* or NULL */
    void *progress_user;
} mtr_eval_opts;
#define MTR_EVAL_OPTS_INIT {false, -1, 4096, 512, NULL, NULL, NULL, false, 0, 256, NULL, 0, NULL, NULL}

/* ---- the context ----------------------------------------------------------------------------------------- */

/* A context over model and tok (borrowed; both outlive it) with opts (NULL: defaults; copied, except the
 * borrowed pointers in it). *out is owned by the caller (mtr_eval_destroy) and NULL on error. Errors: MTR_EINVAL
 * (an option out of range, record_layers with no layer, chat without a chat template in the tokenizer),
 * MTR_EMISMATCH (the tokenizer has more ids than the model's vocabulary), MTR_ENOMEM. */
int mtr_eval_create(mtr_eval **out, const mtr_model *model, mtr_tok *tok, const mtr_eval_opts *opts);

/* Free the context (not what it borrows); accepts NULL. */
void mtr_eval_destroy(mtr_eval *ev);

/* The routing description of the recorded layers (model id, opts.record_layers), as mtr_writer_create takes it.
 * Borrowed, valid while the context lives. */
const mtr_model_info *mtr_eval_info(const mtr_eval *ev);

/* Record into w from now on (borrowed: the caller creates it with mtr_eval_info() and closes it after the last
 * record); NULL stops recording. */
void mtr_eval_set_writer(mtr_eval *ev, mtr_writer *w);

/* Tokens forwarded through the model by this context so far (prompts, continuations, generated tokens). */
uint64_t mtr_eval_tokens(const mtr_eval *ev);

/* Per-phase wall time and matrix-product operations of the context's forwards so far (mtr_session_stats). */
void mtr_eval_stats(const mtr_eval *ev, mtr_forward_stats *out);

/* ---- items: tokens, prefill, recording ------------------------------------------------------------------- */

/* The tokens of one item into *ids (its contents replaced) and their roles into *roles ((ids->n) MTR_ROLE_*,
 * realloc'd; the caller frees it). Text items (msgs NULL): with opts.chat off, text as the tokenizer encodes it
 * with its special tokens (those it adds are MTR_ROLE_TEMPLATE, the text's MTR_ROLE_PROMPT); with chat on, text
 * as one user turn through the chat template. Chat items (msgs, n_msgs turns) always go through the template.
 * Template scaffolding is MTR_ROLE_TEMPLATE, the content of assistant turns MTR_ROLE_RESPONSE, every other turn's
 * content MTR_ROLE_PROMPT (a token straddling a boundary counts as content). add_generation_prompt: the
 * template's assistant prompt at the end. Errors: the tokenizer's (MTR_EINVAL for invalid UTF-8, MTR_ENOTFOUND
 * for a template error, ...), MTR_ENOMEM. */
int mtr_eval_tokenize(mtr_tok_ids *ids, uint8_t **roles, mtr_eval *ev, const char *text,
                      const mtr_corpus_message *msgs, size_t n_msgs, bool add_generation_prompt);

/* Forward ids (n tokens, n <= max_tokens + 1) from the start of a fresh sequence, in forwards of opts.batch
 * tokens. want_router: keep the router rows of the n tokens for mtr_eval_record. n_logits (<= n and <= batch):
 * the logits of the last n_logits tokens, read with mtr_eval_logits (0: the forward may stop after the last MoE
 * layer). Errors: MTR_EINVAL (sizes), the engine's. */
int mtr_eval_prefill(mtr_eval *ev, const int32_t *ids, uint32_t n, bool want_router, uint32_t n_logits);

/* Restart the gaussian-eps generators of the steering (opts.steer; nothing without it) at states fixed by the
 * steering seed (opts.steer_seed when set) and stream alone, so what the next forwards draw does not depend on
 * the forwards run before them: capture restarts them per forward with its first item's index as the stream. */
void mtr_eval_steer_restart(mtr_eval *ev, uint64_t stream);

/* Forward n_seqs short sequences packed in one forward (each from position 0, attending only within itself):
 * ids holds them back to back, lens (n_seqs) their lengths, summing to at most opts.batch. Their router rows are
 * kept in that order for mtr_eval_record (sequence q from row lens[0] + ... + lens[q-1]). Errors as
 * mtr_eval_prefill. */
int mtr_eval_prefill_packed(mtr_eval *ev, const int32_t *ids, const uint32_t *lens, uint32_t n_seqs);

/* The logits kept by the last prefill or scoring step: (n_logits, vocab_size). Borrowed, overwritten by the next
 * forward. */
const float *mtr_eval_logits(const mtr_eval *ev);

/* Append one sequence to the writer: meta (n_tokens tokens; MTR_SEQ_STEERED is added under steering), ids and
 * roles (n_tokens), the recorded layers of the router rows first .. first + n_tokens - 1 kept by the last
 * prefill. Without a writer nothing happens. Errors: MTR_EINVAL (rows outside those kept), the writer's. */
int mtr_eval_record(mtr_eval *ev, size_t first, const mtr_seq_meta *meta, const int32_t *ids, const uint8_t *roles);

/* ---- scoring and generation ------------------------------------------------------------------------------ */

typedef enum { MTR_EVAL_SCORE = 1, MTR_EVAL_GENERATE = 2 } mtr_eval_kind;

/* One item's outcome. Strings marked borrowed point into the set and live as long as it. */
typedef struct {
    const char *unit_id, *lang, *dataset; /* borrowed */
    bool correct;
    /* score */
    size_t gold, pred, pred_norm;   /* 0-based choices: the answer, the highest log-likelihood, the highest per byte */
    bool correct_norm;
    double *loglik;                 /* (n_choices) log-likelihood of each choice's continuation, or -inf */
    size_t n_choices;
    /* generate */
    const char *answer;             /* the gold number as given; borrowed */
    char *generated;                /* the decoded text, cut at the stop string (a generated NUL byte ends it too);
                                       "" when nothing was generated */
    uint32_t n_new;                 /* tokens generated (the end-of-sequence token not counted) */
} mtr_eval_item;

/* Accuracy of one (lang, dataset): n items, correct (and, scoring, correct by the per-byte prediction). */
typedef struct {
    const char *lang, *dataset; /* borrowed */
    uint64_t n, correct, correct_norm;
} mtr_eval_acc;

typedef struct {
    mtr_eval_kind kind;
    mtr_eval_item *items; /* (n_items) in set order */
    size_t n_items;
    mtr_eval_acc *acc;    /* (n_acc) one row per (lang, dataset) in order of first appearance */
    size_t n_acc;
} mtr_eval_result;
#define MTR_EVAL_RESULT_INIT {MTR_EVAL_SCORE, NULL, 0, NULL, 0}

/* Free what a result owns and reset it to empty; accepts NULL. */
void mtr_eval_result_free(mtr_eval_result *r);

/* Is name a template of this kind in p? 0, or MTR_EINVAL "no multiple-choice template 'x'" ("no generation
 * template" for MTR_EVAL_GENERATE) for a missing template or one of the other kind. */
int mtr_eval_check_template(const mtr_prompts *p, const char *name, mtr_eval_kind kind);

/* Score every item of set through mc template template_name of prompts into *out (owned by the caller,
 * mtr_eval_result_free; empty on error). The routing of each prompt is recorded when a writer is set (seq_id =
 * the item's index). Errors (detail "FILE: item N: what", N 1-based in the set): MTR_EINVAL (no such mc
 * template), MTR_EDATA (the item cannot be rendered through the template, its text does not tokenize, the prompt
 * does not leave room for one more token in max_tokens, a continuation longer than opts.batch tokens), the
 * engine's and the writer's, MTR_ENOMEM. */
int mtr_eval_score(mtr_eval_result *out, mtr_eval *ev, const mtr_mc *set, const mtr_prompts *prompts,
                   const char *template_name);

/* Generate for every item of set through gen template template_name into *out (as mtr_eval_score). The routing
 * of the prompt and of every generated token that went through the model is recorded when a writer is set
 * (generated tokens MTR_ROLE_GENERATED). Errors as mtr_eval_score (MTR_EINVAL: no such gen template), and the
 * tokenizer's when decoding fails. */
int mtr_eval_generate(mtr_eval_result *out, mtr_eval *ev, const mtr_gen *set, const mtr_prompts *prompts,
                      const char *template_name);

/* ---- files ----------------------------------------------------------------------------------------------- */

/* Provenance in the accuracy files. */
typedef struct {
    const char *producer; /* the header's first words, e.g. "moetrace-capture run score" */
    const char *model_id;
    const char *corpus;
    const char *steer;    /* the steering file, NULL = "none" */
} mtr_eval_meta;

/* Write r's accuracy rows as accuracy.tsv at path (through path.tmp, renamed). Errors: MTR_EIO (naming the
 * file), MTR_EINVAL (a row with n = 0). */
int mtr_eval_write_accuracy_tsv(const char *path, const mtr_eval_result *r, const mtr_eval_meta *meta);

/* Write r's accuracy rows as accuracy.json at path. Errors: MTR_EIO, MTR_EINVAL (a row with n = 0), MTR_ENOMEM. */
int mtr_eval_write_accuracy_json(const char *path, const mtr_eval_result *r, const mtr_eval_meta *meta);

/* Write r's items as items.tsv at path. Errors: MTR_EIO. */
int mtr_eval_write_items(const char *path, const mtr_eval_result *r);

#ifdef __cplusplus
}
#endif

#endif
