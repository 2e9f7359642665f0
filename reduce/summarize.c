/* summarize.c — phase 1 of moetrace-reduce: per-sequence, per-layer summaries in one pass over the logits.
 *
 * Work is cut into pieces, the part of one sequence inside one logits chunk. A batch of chunks is read and decoded
 * by OpenMP workers; each worker converts one token row at a time to f32 (kept in L1) and accumulates it into its
 * piece. The calling thread then merges pieces into their sequences in piece order, so sums never depend on the
 * number of threads, and finished sequences are finalised in parallel (entropy, Jaccard) and appended in run order.
 * Under MPI each rank takes a contiguous share of the sequences, balanced by tokens.
 */
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reduce_internal.h"

typedef struct {
    size_t seq;            /* index into the run */
    uint32_t shard, chunk;
    uint32_t tok0, n_tok;  /* rows within the sequence */
    uint32_t row0;         /* first row within the chunk */
    uint32_t job;          /* index of its chunk in the job list */
} piece;

typedef struct {
    double *q;      /* (L, E) */
    uint32_t *a;    /* (L, E) */
    double *ent;    /* (L) sum of token entropies */
    uint32_t n_used, n_bad;
} accum;

typedef struct {
    accum acc;
    uint64_t *bits;   /* (n_tokens, L, words) top-k sets; rows of excluded tokens stay zero */
    uint8_t *used;    /* (n_tokens) */
    uint8_t *roles;   /* (n_tokens) or NULL when every role counts */
    uint32_t pieces_left;
    double *fin_ent, *fin_tent, *fin_jac; /* (L) finalised scalars */
    uint32_t jpairs;
} seq_state;

typedef struct {
    mtr_decoder *dec;
    uint8_t *raw, *stored;
    float *row, *scratch;
    float *hints; /* (L) top-k thresholds carried from token to token */
    float *qf;    /* (L, E) f32 partial sums of q over up to MTR_TOKEN_FLUSH tokens of one piece */
} worker;

static int accum_alloc(accum *a, size_t le, size_t L)
{
    a->q = calloc(le, sizeof *a->q);
    a->a = calloc(le, sizeof *a->a);
    a->ent = calloc(L, sizeof *a->ent);
    a->n_used = a->n_bad = 0;
    return a->q && a->a && a->ent ? 0 : MTR_ENOMEM;
}

static void accum_free(accum *a)
{
    free(a->q);
    free(a->a);
    free(a->ent);
}

static void accum_zero(accum *a, size_t le, size_t L)
{
    memset(a->q, 0, le * sizeof *a->q);
    memset(a->a, 0, le * sizeof *a->a);
    memset(a->ent, 0, L * sizeof *a->ent);
    a->n_used = a->n_bad = 0;
}

static void seq_free(seq_state *s)
{
    if (!s) return;
    accum_free(&s->acc);
    free(s->bits);
    free(s->used);
    free(s->roles);
    free(s->fin_ent);
    free(s->fin_tent);
    free(s->fin_jac);
    free(s);
}

char *mtr_summ_settings_json(const mtr_summ_opts *o, const char *const *sources, size_t n_sources)
{
    json_t *src = json_array();
    for (size_t i = 0; i < n_sources; i++) json_array_append_new(src, json_string(sources[i]));
    json_t *j = json_pack("{s:s, s:i, s:I, s:I, s:o, s:s}", "weights", o->topk_weights ? "topk" : "full",
                          "role_mask", (json_int_t)o->role_mask, "jaccard_pairs", (json_int_t)o->jaccard_pairs,
                          "seed", (json_int_t)o->seed, "sources", src, "producer",
                          "moetrace-reduce " MTR_VERSION_STRING);
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    return s;
}

/* Finish one sequence: importance, entropies and Jaccard from its accumulated state. */
static void finalise(seq_state *s, const mtr_model_info *m, uint32_t n_tokens, const mtr_summ_opts *o, uint64_t seq_id)
{
    const uint32_t L = m->n_layers, E = m->n_experts, W = (E + 63) / 64;
    const size_t le = (size_t)L * E;
    const double inv = s->acc.n_used ? 1.0 / s->acc.n_used : NAN;
    for (size_t i = 0; i < le; i++) s->acc.q[i] *= inv;
    /* Jaccard over the counted tokens only: compact their rows first */
    uint32_t nu = 0;
    for (uint32_t t = 0; t < n_tokens; t++) {
        if (!s->used[t]) continue;
        if (nu != t) memmove(s->bits + (size_t)nu * L * W, s->bits + (size_t)t * L * W, (size_t)L * W * 8);
        nu++;
    }
    for (uint32_t l = 0; l < L; l++) {
        s->fin_ent[l] = s->acc.n_used ? mtr_entropy(s->acc.q + (size_t)l * E, E) : NAN;
        s->fin_tent[l] = s->acc.ent[l] * inv;
    }
    /* the same token pairs at every layer: the sample depends only on the seed and the sequence */
    mtr_jaccard_layers(s->fin_jac, s->bits, nu, L, W, m->top_k, o->jaccard_pairs,
                       o->seed ^ (seq_id * 0x9e3779b97f4a7c15ULL), &s->jpairs);
}

/* This rank's sequences [*first, *last): contiguous, balanced by tokens. */
static void rank_share(const mtr_run *r, int rank, int n_ranks, size_t *first, size_t *last)
{
    size_t n = mtr_run_n_seqs(r);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) total += mtr_run_seq(r, i)->n_tokens;
    uint64_t lo = total * (uint64_t)rank / (uint64_t)n_ranks, hi = total * (uint64_t)(rank + 1) / (uint64_t)n_ranks;
    uint64_t cum = 0;
    *first = n;
    *last = n;
    for (size_t i = 0; i < n; i++) {
        if (cum >= lo && *first == n) *first = i;
        if (cum >= hi) {
            *last = i;
            break;
        }
        cum += mtr_run_seq(r, i)->n_tokens;
    }
    if (*first > *last) *first = *last;
}

/* Write the finished sequences fin (n_fin), in order, and free their state. */
static int append_finished(summ_writer *out, seq_state **states, const size_t *fin, size_t n_fin, const mtr_run *r,
                           mtr_summ_stats *stats)
{
    int rc = 0;
    for (size_t f = 0; f < n_fin && !rc; f++) {
        size_t si = fin[f];
        seq_state *s = states[si];
        const mtr_seq_info *q = mtr_run_seq(r, si);
        summ_row row = {q->seq_id, q->unit_id, q->lang, q->dataset, q->n_tokens, s->acc.n_used, s->acc.n_bad,
                        s->jpairs, s->acc.q, s->acc.a, s->fin_ent, s->fin_tent, s->fin_jac};
        rc = summ_writer_append(out, &row);
        stats->n_sequences++;
        stats->n_tokens += q->n_tokens;
        stats->n_used += s->acc.n_used;
        stats->n_nonfinite += s->acc.n_bad;
        stats->n_empty += s->acc.n_used == 0;
        seq_free(s);
        states[si] = NULL;
    }
    return rc;
}

int mtr_summarize(const char *out_path, mtr_run *r, const char *const *sources, size_t n_sources,
                  const mtr_summ_opts *opts, mtr_summ_stats *stats)
{
    mtr_summ_opts dflt = MTR_SUMM_OPTS_INIT;
    int rc = 0;
    mtr_clear_error();
    if (!opts) opts = &dflt;
    const mtr_model_info *m = mtr_run_model(r);
    const uint32_t L = m->n_layers, E = m->n_experts, W = (E + 63) / 64;
    const size_t le = (size_t)L * E;
    const int nt = opts->n_threads > 0 ? opts->n_threads : omp_get_max_threads();
    memset(stats, 0, sizeof *stats);

    size_t first = 0, last = mtr_run_n_seqs(r);
    if (opts->n_ranks > 1) rank_share(r, opts->rank, opts->n_ranks, &first, &last);

    piece *pieces = NULL;
    uint32_t (*jobs)[3] = NULL; /* shard, chunk, first piece */
    size_t n_pieces = 0, cap = 0, n_jobs = 0;
    seq_state **states = NULL;
    accum *pacc = NULL;
    worker *wk = NULL;
    summ_writer *out = NULL;
    char *settings = NULL;
    uint64_t total_tokens = 0, done_tokens = 0;
    size_t max_chunk_bytes = 0, max_raw = 0;

    for (size_t i = first; i < last; i++) {
        const mtr_seq_info *q = mtr_run_seq(r, i);
        const mtr_shard_info *sh = mtr_run_shard(r, q->shard);
        if (!sh->has_logits) {
            rc = mtr_fail(MTR_ENOTFOUND, "%s: logits are not stored (top-k only traces cannot be reduced)",
                                 sh->path);
            goto done;
        }
        const uint64_t ct = sh->chunk_tokens, t0 = q->token_offset, t1 = t0 + q->n_tokens;
        total_tokens += q->n_tokens;
        for (uint64_t c = t0 / ct; c * ct < t1; c++) {
            if (n_pieces == cap) {
                cap = cap ? 2 * cap : 4096;
                piece *np = realloc(pieces, cap * sizeof *np);
                if (!np) goto nomem;
                pieces = np;
            }
            uint64_t a = c * ct > t0 ? c * ct : t0, b = (c + 1) * ct < t1 ? (c + 1) * ct : t1;
            pieces[n_pieces++] = (piece){i, q->shard, (uint32_t)c, (uint32_t)(a - t0), (uint32_t)(b - a),
                                         (uint32_t)(a - c * ct), 0};
        }
    }
    jobs = malloc((n_pieces ? n_pieces : 1) * sizeof *jobs);
    if (!jobs) goto nomem;
    for (size_t p = 0; p < n_pieces; p++) {
        if (!n_jobs || jobs[n_jobs - 1][0] != pieces[p].shard || jobs[n_jobs - 1][1] != pieces[p].chunk) {
            jobs[n_jobs][0] = pieces[p].shard;
            jobs[n_jobs][1] = pieces[p].chunk;
            jobs[n_jobs][2] = (uint32_t)p;
            n_jobs++;
        }
        pieces[p].job = (uint32_t)(n_jobs - 1);
    }
    for (size_t s = 0; s < mtr_run_n_shards(r); s++) {
        const mtr_shard_info *sh = mtr_run_shard(r, s);
        size_t cb = (size_t)sh->chunk_tokens * le * 4; /* room for any stored dtype */
        if (cb > max_chunk_bytes) max_chunk_bytes = cb;
        for (uint32_t c = 0; c < sh->n_chunks; c++)
            if (mtr_run_chunks(r, s)[c].size > max_raw) max_raw = mtr_run_chunks(r, s)[c].size;
    }

    const size_t batch = (size_t)(4 * nt);
    size_t max_batch_pieces = 0;
    for (size_t j0 = 0; j0 < n_jobs; j0 += batch) {
        size_t j1 = j0 + batch < n_jobs ? j0 + batch : n_jobs;
        size_t p0 = jobs[j0][2], p1 = j1 < n_jobs ? jobs[j1][2] : n_pieces;
        if (p1 - p0 > max_batch_pieces) max_batch_pieces = p1 - p0;
    }
    if (!(pacc = calloc(max_batch_pieces ? max_batch_pieces : 1, sizeof *pacc))) goto nomem;
    for (size_t p = 0; p < max_batch_pieces; p++)
        if (accum_alloc(&pacc[p], le, L)) goto nomem;
    if (!(states = calloc(mtr_run_n_seqs(r) ? mtr_run_n_seqs(r) : 1, sizeof *states))) goto nomem;
    if (!(wk = calloc((size_t)nt, sizeof *wk))) goto nomem;
    for (int t = 0; t < nt; t++) {
        if ((rc = mtr_decoder_create(&wk[t].dec, r))) goto done;
        wk[t].raw = malloc(max_raw ? max_raw : 1);
        wk[t].stored = malloc(max_chunk_bytes ? max_chunk_bytes : 1);
        wk[t].row = malloc(le * sizeof(float));
        wk[t].scratch = malloc(2 * (size_t)E * sizeof(float));
        wk[t].hints = malloc(L * sizeof(float));
        wk[t].qf = calloc(le, sizeof(float));
        if (!wk[t].raw || !wk[t].stored || !wk[t].row || !wk[t].scratch || !wk[t].hints || !wk[t].qf) goto nomem;
        for (uint32_t l = 0; l < L; l++) wk[t].hints[l] = -FLT_MAX;
    }
    settings = mtr_summ_settings_json(opts, sources, n_sources);
    /* a rank's part starts at its row of the whole file modulo the chunk rows, so its chunks can be joined as
     * they are stored */
    if ((rc = summ_writer_create_at(&out, out_path, m, opts->topk_weights, settings,
                                    opts->n_ranks > 1 ? first % SUMM_CHUNK_ROWS : 0)))
        goto done;

    /* the sequences a batch finishes are written while the next batch is decoded (pending) */
    size_t *finished = malloc((mtr_run_n_seqs(r) ? mtr_run_n_seqs(r) : 1) * sizeof *finished);
    size_t *pending = malloc((mtr_run_n_seqs(r) ? mtr_run_n_seqs(r) : 1) * sizeof *pending), n_pending = 0;
    if (!finished || !pending) {
        free(finished);
        free(pending);
        goto nomem;
    }
    for (size_t j0 = 0; j0 < n_jobs && !rc; j0 += batch) {
        size_t j1 = j0 + batch < n_jobs ? j0 + batch : n_jobs;
        size_t p0 = jobs[j0][2], p1 = j1 < n_jobs ? jobs[j1][2] : n_pieces;
        /* start the sequences this batch touches (serial: token roles come through HDF5) */
        for (size_t p = p0; p < p1 && !rc; p++) {
            size_t si = pieces[p].seq;
            if (states[si]) continue;
            const mtr_seq_info *q = mtr_run_seq(r, si);
            seq_state *s = calloc(1, sizeof *s);
            if (!s || accum_alloc(&s->acc, le, L)) {
                seq_free(s);
                goto nomem_loop;
            }
            states[si] = s;
            s->bits = calloc((size_t)q->n_tokens * L * W, 8);
            s->used = calloc(q->n_tokens, 1);
            s->fin_ent = malloc(L * 8);
            s->fin_tent = malloc(L * 8);
            s->fin_jac = malloc(L * 8);
            if (!s->bits || !s->used || !s->fin_ent || !s->fin_tent || !s->fin_jac) goto nomem_loop;
            for (size_t pp = p; pp < n_pieces && pieces[pp].seq == si; pp++) s->pieces_left++;
            if ((opts->role_mask & 0xfu) != 0xfu) {
                if (!(s->roles = malloc(q->n_tokens))) goto nomem_loop;
                if ((rc = mtr_run_read_tokens(r, si, NULL, NULL, s->roles))) {
                    rc = mtr_fail(rc, "%s", mtr_errmsg());
                    break;
                }
            }
        }
        if (rc) break;

        int err = 0, arc = 0;
        /* one thread writes the previous batch's sequences (HDF5 is called by no other thread meanwhile: the
         * workers read chunks with pread), then joins the others on this batch's chunks */
#pragma omp parallel num_threads(nt) reduction(| : err)
        {
#pragma omp single nowait
        arc = append_finished(out, states, pending, n_pending, r, stats);
#pragma omp for schedule(dynamic, 1) nowait
        for (size_t j = j0; j < j1; j++) {
            worker *w = &wk[omp_get_thread_num()];
            uint32_t sh = jobs[j][0], ch = jobs[j][1];
            if (mtr_chunk_read(r, sh, ch, w->raw) || mtr_decoder_decode(w->dec, sh, ch, w->raw, w->stored)) {
                err = 1;
                continue;
            }
            const mtr_dtype dt = mtr_run_get_meta(r, mtr_run_seq(r, pieces[jobs[j][2]].seq)->run)->stored_dtype;
            const size_t esz = mtr_dtype_size(dt);
            /* bf16 rows straight into the kernel, checked but not widened, when it takes them */
            const bool direct = dt == MTR_DTYPE_BF16 && mtr_token_bf16_direct(m, opts->topk_weights);
            for (size_t p = jobs[j][2]; p < p1 && pieces[p].job == j; p++) {
                const piece *pc = &pieces[p];
                seq_state *s = states[pc->seq];
                accum *acc = &pacc[p - p0];
                accum_zero(acc, le, L);
                /* full weights go through f32 partial sums, added into the piece every MTR_TOKEN_FLUSH tokens */
                float *qf = opts->topk_weights ? NULL : w->qf;
                uint32_t in_qf = 0;
                for (uint32_t t = 0; t < pc->n_tok; t++) {
                    uint32_t tok = pc->tok0 + t;
                    const uint8_t *src = w->stored + (size_t)(pc->row0 + t) * le * esz;
                    if (s->roles && !(opts->role_mask & (1u << s->roles[tok]))) continue;
                    if (direct ? mtr_reduce_nonfinite_bf16((const uint16_t *)(const void *)src, le)
                               : mtr_reduce_widen_checked(w->row, src, dt, le)) {
                        acc->n_bad++;
                        continue;
                    }
                    uint64_t *bits = s->bits + (size_t)tok * L * W;
                    for (uint32_t l = 0; l < L; l++) {
                        mtr_token_acc ta = {acc->q + (size_t)l * E, acc->a + (size_t)l * E, acc->ent + l,
                                            bits + (size_t)l * W, w->hints + l, qf ? qf + (size_t)l * E : NULL};
                        if (direct)
                            mtr_token_accumulate_bf16(m, (const uint16_t *)(const void *)src + (size_t)l * E, &ta,
                                                      w->scratch);
                        else
                            mtr_token_accumulate(m, l, w->row + (size_t)l * E, opts->topk_weights, &ta, w->scratch);
                    }
                    s->used[tok] = 1;
                    acc->n_used++;
                    if (qf && ++in_qf == MTR_TOKEN_FLUSH) {
                        mtr_token_flush(acc->q, qf, le);
                        in_qf = 0;
                    }
                }
                if (in_qf) mtr_token_flush(acc->q, qf, le);
            }
        }
        }
        n_pending = 0;
        if (arc) {
            rc = arc;
            break;
        }
        if (err) {
            /* redo serially to get the message on this thread */
            for (size_t j = j0; j < j1 && !rc; j++) {
                if ((rc = mtr_chunk_read(r, jobs[j][0], jobs[j][1], wk[0].raw)) ||
                    (rc = mtr_decoder_decode(wk[0].dec, jobs[j][0], jobs[j][1], wk[0].raw, wk[0].stored)))
                    rc = mtr_fail(rc, "%s", mtr_errmsg());
            }
            if (!rc) rc = mtr_fail(MTR_EIO, "chunk decoding failed in a worker thread");
            break;
        }
        /* merge pieces in order; collect the sequences this completes */
        size_t n_fin = 0;
        for (size_t p = p0; p < p1; p++) {
            seq_state *s = states[pieces[p].seq];
            const accum *acc = &pacc[p - p0];
            for (size_t i = 0; i < le; i++) {
                s->acc.q[i] += acc->q[i];
                s->acc.a[i] += acc->a[i];
            }
            for (uint32_t l = 0; l < L; l++) s->acc.ent[l] += acc->ent[l];
            s->acc.n_used += acc->n_used;
            s->acc.n_bad += acc->n_bad;
            done_tokens += pieces[p].n_tok;
            if (--s->pieces_left == 0) finished[n_fin++] = pieces[p].seq;
        }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (size_t f = 0; f < n_fin; f++)
            finalise(states[finished[f]], m, mtr_run_seq(r, finished[f])->n_tokens, opts,
                     mtr_run_seq(r, finished[f])->seq_id);
        size_t *t = pending;
        pending = finished;
        finished = t;
        n_pending = n_fin;
        if (opts->progress) opts->progress(opts->progress_ctx, done_tokens, total_tokens);
        continue;
    nomem_loop:
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        break;
    }
    if (!rc) rc = append_finished(out, states, pending, n_pending, r, stats);
    free(finished);
    free(pending);
    if (!rc) {
        rc = summ_writer_close(out);
        out = NULL;
    }
    goto done;
nomem:
    rc = mtr_fail(MTR_ENOMEM, "out of memory");
done:
    summ_writer_destroy(out);
    if (states)
        for (size_t i = 0; i < mtr_run_n_seqs(r); i++) seq_free(states[i]);
    free(states);
    if (pacc)
        for (size_t p = 0; p < max_batch_pieces; p++) accum_free(&pacc[p]);
    free(pacc);
    if (wk)
        for (int t = 0; t < nt; t++) {
            mtr_decoder_destroy(wk[t].dec);
            free(wk[t].raw);
            free(wk[t].stored);
            free(wk[t].row);
            free(wk[t].scratch);
            free(wk[t].hints);
            free(wk[t].qf);
        }
    free(wk);
    free(settings);
    free(pieces);
    free(jobs);
    return rc;
}
