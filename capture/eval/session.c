/* session.c — the evaluation context (mtr_eval.h): one engine session with its router and logits buffers over a
 * borrowed model and tokenizer, and the item machinery every mode of `moetrace-capture run` shares: an item's
 * tokens with their roles, prefill (plain and packed), and the recording of its routing into a trace. */
#include <stdlib.h>
#include <string.h>

#include "eval_internal.h"

mtr_forward_io eval_io(const mtr_eval *ev)
{
    mtr_forward_io io = MTR_FORWARD_IO_INIT;
    io.steer = ev->o.steer;
    io.steer_rng = ev->o.steer ? ev->steer_rng : NULL;
    return io;
}

bool eval_is_eos(const mtr_eval *ev, int32_t id)
{
    for (int i = 0; i < ev->n_eos; i++)
        if (ev->eos_ids[i] == id) return true;
    return false;
}

void eval_progress(const mtr_eval *ev, size_t done, size_t total)
{
    if (ev->o.progress) ev->o.progress(ev->o.progress_user, done, total, ev->tokens);
}

static void add_eos(mtr_eval *ev, int32_t id)
{
    if (id >= 0 && ev->n_eos < EVAL_MAX_EOS && !eval_is_eos(ev, id)) ev->eos_ids[ev->n_eos++] = id;
}

int mtr_eval_create(mtr_eval **out, const mtr_model *model, mtr_tok *tok, const mtr_eval_opts *opts)
{
    *out = NULL;
    mtr_eval_opts o = MTR_EVAL_OPTS_INIT;
    if (opts) o = *opts;
    if (!model || !tok) return mtr_fail(MTR_EINVAL, "evaluation: no model or no tokenizer");
    if (o.max_tokens < 2 || o.batch < 1 || o.max_new < 1 || o.thinking < -1 || o.thinking > 1)
        return mtr_fail(MTR_EINVAL, "evaluation: max_tokens must be >= 2, batch and max_new >= 1, thinking -1, 0 or 1");
    for (size_t s = 0; s < o.n_stops; s++)
        if (!o.stops[s] || !*o.stops[s]) return mtr_fail(MTR_EINVAL, "evaluation: stop string %zu is empty", s + 1);
    if (o.batch > o.max_tokens) o.batch = o.max_tokens;
    if (o.chat && !mtr_tok_has_chat_template(tok))
        return mtr_fail(MTR_EINVAL, "chat is on, but the tokenizer has no chat template");
    const mtr_model_config *cfg = mtr_model_get_config(model);
    if (mtr_tok_vocab_size(tok) > cfg->vocab_size)
        return mtr_fail(MTR_EMISMATCH, "the tokenizer has %zu ids, the model's vocabulary %u", mtr_tok_vocab_size(tok),
                        cfg->vocab_size);
    const uint32_t L = cfg->n_moe_layers, E = cfg->n_experts;
    mtr_eval *ev = calloc(1, sizeof *ev);
    if (!ev) return mtr_fail(MTR_ENOMEM, "evaluation: out of memory");
    int rc = 0;
    ev->o = o;
    ev->o.record_layers = NULL; /* read here only */
    ev->model = model;
    ev->cfg = cfg;
    ev->tok = tok;
    add_eos(ev, cfg->eos_token_id);
    const char *eos_s = mtr_tok_eos_token(tok);
    add_eos(ev, eos_s ? mtr_tok_token_to_id(tok, eos_s) : -1);
    add_eos(ev, mtr_tok_token_to_id(tok, "<|im_end|>"));

    mtr_model_info_of(&ev->info, model, o.model_id);
    ev->rec = calloc(L ? L : 1, sizeof *ev->rec);
    if (!ev->rec) goto oom;
    if (o.record_layers) {
        uint32_t k = 0;
        for (uint32_t l = 0; l < L; l++)
            if (o.record_layers[l]) ev->rec[k] = l, ev->info.layer_index[k++] = cfg->moe_layer_index[l];
        if (k == 0) {
            rc = mtr_fail(MTR_EINVAL, "evaluation: record_layers names no MoE layer");
            goto fail;
        }
        ev->info.n_layers = k;
        if (ev->info.selection_bias) { /* the recorded layers' rows of the model's selection-only bias */
            if (!(ev->sel_bias = malloc((size_t)k * E * sizeof *ev->sel_bias))) goto oom;
            for (uint32_t i = 0; i < k; i++)
                memcpy(ev->sel_bias + (size_t)i * E, ev->info.selection_bias + (size_t)ev->rec[i] * E,
                       E * sizeof(float));
            ev->info.selection_bias = ev->sel_bias;
        }
    } else
        for (uint32_t l = 0; l < L; l++) ev->rec[l] = l;
    if (o.steer) {
        ev->steer_rng = calloc(L ? L : 1, sizeof *ev->steer_rng);
        if (!ev->steer_rng) goto oom;
        for (uint32_t l = 0; l < L; l++)
            ev->steer_rng[l] = mtr_steer_layer_seed(o.steer_seed_set ? o.steer_seed : o.steer->seed, l);
    }
    if ((rc = mtr_session_create(&ev->sess, model, o.max_tokens + 1, ev->o.batch))) goto fail;
    ev->router = malloc(((size_t)o.max_tokens + 1) * L * E * sizeof *ev->router);
    if (ev->info.n_layers < L)
        ev->rec_buf = malloc(((size_t)o.max_tokens + 1) * ev->info.n_layers * E * sizeof *ev->rec_buf);
    ev->logits = malloc((size_t)ev->o.batch * cfg->vocab_size * sizeof *ev->logits);
    if (!ev->router || (ev->info.n_layers < L && !ev->rec_buf) || !ev->logits) goto oom;
    *out = ev;
    return 0;
oom:
    rc = mtr_fail(MTR_ENOMEM, "evaluation: out of memory for %u tokens", o.max_tokens);
fail:
    mtr_eval_destroy(ev);
    return rc;
}

void mtr_eval_destroy(mtr_eval *ev)
{
    if (!ev) return;
    mtr_session_destroy(ev->sess);
    free(ev->steer_rng);
    free(ev->rec);
    free(ev->sel_bias);
    free(ev->router);
    free(ev->rec_buf);
    free(ev->logits);
    free(ev);
}

void mtr_eval_steer_restart(mtr_eval *ev, uint64_t stream)
{
    if (!ev->steer_rng) return;
    /* the stream through a 64-bit finaliser (murmur3's), so neighbouring streams start far apart */
    uint64_t x = stream + 1;
    x = (x ^ (x >> 33)) * 0xff51afd7ed558ccdULL;
    x = (x ^ (x >> 33)) * 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    const uint64_t seed = (ev->o.steer_seed_set ? ev->o.steer_seed : ev->o.steer->seed) ^ x;
    for (uint32_t l = 0; l < ev->cfg->n_moe_layers; l++) ev->steer_rng[l] = mtr_steer_layer_seed(seed, l);
}

const mtr_model_info *mtr_eval_info(const mtr_eval *ev) { return &ev->info; }

void mtr_eval_set_writer(mtr_eval *ev, mtr_writer *w) { ev->w = w; }

uint64_t mtr_eval_tokens(const mtr_eval *ev) { return ev->tokens; }

void mtr_eval_stats(const mtr_eval *ev, mtr_forward_stats *out) { mtr_session_stats(ev->sess, out); }

const float *mtr_eval_logits(const mtr_eval *ev) { return ev->logits; }

/* roles for n tokens, all set to role */
static int roles_fill(uint8_t **roles, size_t n, uint8_t role)
{
    uint8_t *r = realloc(*roles, n + 1);
    if (!r) return mtr_fail(MTR_ENOMEM, "out of memory for the roles of %zu tokens", n);
    *roles = r;
    memset(r, role, n);
    return 0;
}

/* Plain text: the post-processor's additions (bos / eos) are template tokens, the text's own tokens prompt. */
static int tokenize_plain(mtr_tok_ids *ids, uint8_t **roles, mtr_eval *ev, const char *text)
{
    mtr_tok_ids plain = MTR_TOK_IDS_INIT;
    int rc;
    if ((rc = mtr_tok_encode(ids, ev->tok, text, strlen(text), MTR_TOK_ADD_SPECIAL))) return rc;
    if ((rc = mtr_tok_encode(&plain, ev->tok, text, strlen(text), 0))) return rc;
    size_t pre = 0;
    while (pre < ids->n && (ids->n - pre < plain.n || memcmp(ids->ids + pre, plain.ids, plain.n * 4) != 0)) pre++;
    if ((rc = roles_fill(roles, ids->n, MTR_ROLE_TEMPLATE)) == 0)
        for (size_t i = 0; i < ids->n; i++)
            if (pre < ids->n && i >= pre && i < pre + plain.n) (*roles)[i] = MTR_ROLE_PROMPT;
    mtr_tok_ids_free(&plain);
    return rc;
}

int mtr_eval_tokenize(mtr_tok_ids *ids, uint8_t **roles, mtr_eval *ev, const char *text,
                      const mtr_corpus_message *msgs, size_t n_msgs, bool add_generation_prompt)
{
    ids->n = 0;
    if (!msgs && !text) return mtr_fail(MTR_EINVAL, "an item with neither text nor messages");
    if (!ev->o.chat && !msgs) return tokenize_plain(ids, roles, ev, text);
    mtr_tok_message one = {"user", text};
    mtr_tok_message *m = &one;
    size_t nm = 1;
    int rc;
    if (msgs) {
        m = calloc(n_msgs ? n_msgs : 1, sizeof *m);
        if (!m) return mtr_fail(MTR_ENOMEM, "out of memory for %zu chat turns", n_msgs);
        for (size_t i = 0; i < n_msgs; i++) m[i] = (mtr_tok_message){msgs[i].role, msgs[i].content};
        nm = n_msgs;
    }
    mtr_tok_chat_opts co = MTR_TOK_CHAT_OPTS_INIT;
    co.add_generation_prompt = add_generation_prompt;
    co.enable_thinking = ev->o.thinking;
    char *rendered = NULL;
    rc = mtr_tok_apply_chat_template(&rendered, ev->tok, m, nm, &co);
    if (m != &one) free(m);
    if (rc) return rc;
    if ((rc = mtr_tok_encode(ids, ev->tok, rendered, strlen(rendered), 0)) ||
        (rc = roles_fill(roles, ids->n, MTR_ROLE_TEMPLATE))) {
        free(rendered);
        return rc;
    }
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
        if (mtr_tok_encode(&pre, ev->tok, rendered, b0, 0) == 0 &&
            mtr_tok_encode(&suf, ev->tok, rendered + b1, strlen(rendered + b1), 0) == 0) {
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

int mtr_eval_prefill(mtr_eval *ev, const int32_t *ids, uint32_t n, bool want_router, uint32_t n_logits)
{
    const uint32_t B = ev->o.batch;
    if (n > ev->o.max_tokens + 1 || n_logits > n || n_logits > B)
        return mtr_fail(MTR_EINVAL, "prefill of %u tokens with %u logits: at most %u tokens and %u logits", n, n_logits,
                        ev->o.max_tokens + 1, B < n ? B : n);
    mtr_session_reset(ev->sess);
    ev->router_rows = 0;
    const size_t row = (size_t)ev->cfg->n_moe_layers * ev->cfg->n_experts;
    for (uint32_t at = 0; at < n; at += B) {
        uint32_t b = n - at < B ? n - at : B;
        mtr_forward_io io = eval_io(ev);
        io.router = want_router ? ev->router + (size_t)at * row : NULL;
        /* logits only for the rows asked, which may start in an earlier batch */
        uint32_t first = n - n_logits;
        if (n_logits && at + b > first) {
            uint32_t lo = first > at ? first - at : 0;
            io.n_logits = b - lo;
            io.logits = ev->logits + (size_t)(at + lo - first) * ev->cfg->vocab_size;
        }
        /* a capture-only forward may stop after the last MoE layer, but only for the final batch: earlier ones
         * must fill the cache of every layer */
        if (want_router && !io.n_logits && at + b < n) io.stop_after_layer = ev->cfg->n_layers;
        int rc = mtr_model_forward(ev->sess, ids + at, b, &io);
        if (rc) return rc;
    }
    ev->tokens += n;
    if (want_router) ev->router_rows = n;
    return 0;
}

int mtr_eval_prefill_packed(mtr_eval *ev, const int32_t *ids, const uint32_t *lens, uint32_t n_seqs)
{
    uint64_t total = 0;
    for (uint32_t q = 0; q < n_seqs; q++) total += lens[q];
    if (n_seqs == 0 || total > ev->o.batch)
        return mtr_fail(MTR_EINVAL, "packed prefill of %u sequences, %llu tokens: at most %u tokens", n_seqs,
                        (unsigned long long)total, ev->o.batch);
    mtr_session_reset(ev->sess);
    ev->router_rows = 0;
    mtr_forward_io io = eval_io(ev);
    io.router = ev->router;
    io.seq_lens = lens;
    io.n_seqs = n_seqs;
    int rc = mtr_model_forward(ev->sess, ids, (uint32_t)total, &io);
    ev->tokens += total;
    if (rc) return rc;
    ev->router_rows = (uint32_t)total;
    return 0;
}

/* The recorded layers of n tokens whose router rows start at row first, as the writer takes them. */
static const float *recorded(mtr_eval *ev, size_t first, uint32_t n)
{
    const mtr_model_config *c = ev->cfg;
    const float *z = ev->router + first * c->n_moe_layers * c->n_experts;
    if (ev->info.n_layers == c->n_moe_layers) return z;
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t l = 0; l < ev->info.n_layers; l++)
            memcpy(ev->rec_buf + ((size_t)t * ev->info.n_layers + l) * c->n_experts,
                   z + ((size_t)t * c->n_moe_layers + ev->rec[l]) * c->n_experts, c->n_experts * sizeof(float));
    return ev->rec_buf;
}

int mtr_eval_record(mtr_eval *ev, size_t first, const mtr_seq_meta *meta, const int32_t *ids, const uint8_t *roles)
{
    if (!ev->w) return 0;
    if (first + meta->n_tokens > ev->router_rows)
        return mtr_fail(MTR_EINVAL, "record of router rows %zu..%zu: the last prefill kept %u", first,
                        first + meta->n_tokens, ev->router_rows);
    mtr_seq_meta m = *meta;
    if (ev->o.steer) m.flags |= MTR_SEQ_STEERED;
    return mtr_writer_append(ev->w, &m, ids, NULL, roles, recorded(ev, first, m.n_tokens), MTR_DTYPE_F32);
}
