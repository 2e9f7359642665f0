/* engine_prefill.c — prefill speed of the native engine on a checkpoint, the machine's sgemm peak measured in the
 * same process, and what writing the trace costs on top of the forward.
 *
 *   engine_prefill MODEL_DIR IDS_FILE THREADS REPEAT RUN_DIR [all|last]
 *
 * all (default): the logits of every position, as a Hugging Face forward computes them; last: the next-token
 * logits only, as a serving engine's prefill does (the packed batch yields the last row of the batch, one row
 * where the peer computes one per sequence: 3 x 2 x hidden x vocab flops less, under 0.2% of the work here).
 *
 * IDS_FILE: one sequence per line, space-separated token ids (the same file the PyTorch peer times). Prints
 * key=value lines; tests/bench/bench_engine.sh turns them into ratios against the peer. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "moetrace.h"
#include "mtr_model.h"

#define TRACE_BATCHES 3 /* forwards per traced capture run */
/* traced and untraced runs alternate this many times per round. The cost is the median over the pairs of (traced
 * run / the untraced run just before it) - 1: a pair shares the machine's load of its few seconds, so a
 * neighbour's burst moves both. (The fastest of three of each, as before, gave -5%..+10% between identical runs
 * on a shared machine: the two minima came from different moments.) */
#define TRACE_ALTERNATIONS 5

static double now(void) { return omp_get_wtime(); }

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* sgemm GFLOP/s of OpenBLAS on this machine with `threads` threads (its own threading), best of 3 */
static double sgemm_peak(int threads)
{
    const int n = 1536;
    float *a = malloc((size_t)n * n * 4), *b = malloc((size_t)n * n * 4), *c = malloc((size_t)n * n * 4);
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
    openblas_set_num_threads(threads);
    double best = 0;
    for (int r = 0; r < 4; r++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.f, a, n, b, n, 0.f, c, n);
        t = now() - t;
        double g = 2.0 * n * n * n / t / 1e9;
        if (r && g > best) best = g;
    }
    openblas_set_num_threads(1);
    free(a);
    free(b);
    free(c);
    return best;
}

int main(int argc, char **argv)
{
    if (argc != 6 && !(argc == 7 && (!strcmp(argv[6], "all") || !strcmp(argv[6], "last")))) {
        fprintf(stderr, "usage: %s MODEL_DIR IDS_FILE THREADS REPEAT RUN_DIR [all|last]\n", argv[0]);
        return 1;
    }
    int threads = atoi(argv[3]), repeat = atoi(argv[4]);
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", argv[2]);
        return 1;
    }
    int32_t *ids[256];
    uint32_t lens[256], n_seq = 0, max_len = 0;
    char line[1 << 20];
    while (n_seq < 256 && fgets(line, sizeof line, f)) {
        ids[n_seq] = malloc(sizeof line / 2 * sizeof(int32_t));
        uint32_t k = 0;
        for (char *p = strtok(line, " \n"); p; p = strtok(NULL, " \n")) ids[n_seq][k++] = atoi(p);
        if (!k) continue;
        lens[n_seq++] = k;
        if (k > max_len) max_len = k;
    }
    fclose(f);
    mtr_model_opts mo = MTR_MODEL_OPTS_INIT;
    mo.n_threads = threads;
    mtr_model *m = NULL;
    if (mtr_model_load(&m, argv[1], &mo)) {
        fprintf(stderr, "%s\n", mtr_errmsg());
        return 1;
    }
    const mtr_model_config *c = mtr_model_get_config(m);
    double peak = sgemm_peak(threads);
    uint64_t tokens = 0;
    for (uint32_t i = 0; i < n_seq; i++) tokens += lens[i];
    /* the sequences go through as one packed batch (each attends only within itself), as the peer's batch does */
    int32_t *all = malloc(tokens * sizeof *all);
    for (uint32_t i = 0, at = 0; i < n_seq; at += lens[i], i++) memcpy(all + at, ids[i], lens[i] * sizeof *all);
    (void)max_len;
    mtr_session *s = NULL;
    if (mtr_session_create(&s, m, (uint32_t)tokens, (uint32_t)tokens)) {
        fprintf(stderr, "%s\n", mtr_errmsg());
        return 1;
    }
    const size_t rows = (size_t)c->n_moe_layers * c->n_experts;
    float *router = malloc((size_t)tokens * rows * sizeof(float));
    float *logits = malloc((size_t)tokens * c->vocab_size * sizeof(float));
    double t_full[16], t_cap[16], t_trace[16], c_trace[16], c_wcalls[16], flops = 0;
    if (repeat > 16) repeat = 16;
    mtr_model_info info;
    mtr_model_info_of(&info, m, "bench");
    /* one untimed forward first, as the peer runs one: first-touch faults of the session's buffers, the output
     * buffers and the weight mapping's page tables are start-up, not prefill */
    /* the timed forward: the prompt to the next-token logits (last) or the logits of every position (all) */
    mtr_forward_io full = MTR_FORWARD_IO_INIT;
    full.router = router;
    full.logits = logits;
    full.n_logits = argc == 7 && !strcmp(argv[6], "last") ? 1 : (uint32_t)tokens;
    full.seq_lens = lens;
    full.n_seqs = n_seq;
    if (mtr_model_forward(s, all, (uint32_t)tokens, &full)) {
        fprintf(stderr, "%s\n", mtr_errmsg());
        return 1;
    }
    for (int r = 0; r < repeat; r++) {
        mtr_forward_stats st0, st1;
        mtr_session_stats(s, &st0);
        double t = now();
        mtr_session_reset(s);
        if (mtr_model_forward(s, all, (uint32_t)tokens, &full)) {
            fprintf(stderr, "%s\n", mtr_errmsg());
            return 1;
        }
        t_full[r] = now() - t;
        mtr_session_stats(s, &st1);
        flops = st1.flops - st0.flops;
        if (r == repeat - 1)
            printf("engine_phase_seconds attention=%.3f moe=%.3f head=%.3f other=%.3f\n",
                   st1.t_attention - st0.t_attention, st1.t_moe - st0.t_moe, st1.t_head - st0.t_head,
                   st1.t_other - st0.t_other);
        /* a capture run as `moetrace-capture run` streams one: TRACE_BATCHES forwards of router logits only (each
         * stops after the last MoE layer's gate), each batch appended to one trace (compressed by the writer's
         * threads while the next forward runs), the trace closed, fsynced and renamed at the end; against the same
         * forwards alone, TRACE_ALTERNATIONS pairs. The writer's own calls (create, append, close) are also timed
         * inside the traced run. */
        double pair_cost[TRACE_ALTERNATIONS], pair_calls[TRACE_ALTERNATIONS];
        t_cap[r] = t_trace[r] = 1e30;
        mtr_forward_io io = MTR_FORWARD_IO_INIT;
        io.router = router;
        io.seq_lens = lens;
        io.n_seqs = n_seq;
        for (int k = 0; k < TRACE_ALTERNATIONS; k++) {
            double t0 = now();
            for (int b = 0; b < TRACE_BATCHES; b++) {
                mtr_session_reset(s);
                mtr_model_forward(s, all, (uint32_t)tokens, &io);
            }
            const double untraced = now() - t0;
            if (untraced < t_cap[r]) t_cap[r] = untraced;
            char dir[4096];
            snprintf(dir, sizeof dir, "%s/run-%d-%d", argv[5], r, k);
            mtr_writer_opts wo = MTR_WRITER_OPTS_INIT;
            wo.sync = true;
            mtr_writer *w = NULL;
            t0 = now();
            double tw = now();
            if (mtr_writer_create(&w, dir, &info, &wo)) {
                fprintf(stderr, "%s\n", mtr_errmsg());
                return 1;
            }
            tw = now() - tw;
            for (int b = 0; b < TRACE_BATCHES; b++) {
                mtr_session_reset(s);
                mtr_model_forward(s, all, (uint32_t)tokens, &io);
                double ta = now();
                for (uint32_t i = 0, at = 0; i < n_seq; at += lens[i], i++) {
                    mtr_seq_meta meta = {(uint64_t)b * n_seq + i, "u", "en", "bench", lens[i], 0};
                    if (mtr_writer_append(w, &meta, ids[i], NULL, NULL, router + (size_t)at * rows, MTR_DTYPE_F32)) {
                        fprintf(stderr, "%s\n", mtr_errmsg());
                        return 1;
                    }
                }
                tw += now() - ta;
            }
            double tcl = now();
            if (mtr_writer_close(w)) {
                fprintf(stderr, "%s\n", mtr_errmsg());
                return 1;
            }
            tw += now() - tcl;
            t0 = now() - t0;
            if (t0 < t_trace[r]) t_trace[r] = t0;
            pair_cost[k] = t0 / untraced - 1;
            pair_calls[k] = tw / untraced;
        }
        c_trace[r] = median(pair_cost, TRACE_ALTERNATIONS);
        c_wcalls[r] = median(pair_calls, TRACE_ALTERNATIONS);
    }
    double tf = median(t_full, repeat), tc = median(t_cap, repeat), tt = median(t_trace, repeat),
           ct = median(c_trace, repeat), cw = median(c_wcalls, repeat);
    printf("engine_params=%llu\n", (unsigned long long)mtr_model_n_params(m));
    printf("engine_threads=%d\n", threads);
    printf("engine_tokens=%llu\n", (unsigned long long)tokens);
    printf("engine_prefill_seconds=%.4f\n", tf);
    printf("engine_prefill_tokens_per_s=%.1f\n", (double)tokens / tf);
    printf("engine_gflops=%.2f\n", flops / tf / 1e9);
    printf("sgemm_peak_gflops=%.2f\n", peak);
    printf("engine_capture_seconds=%.4f\n", tc);
    printf("engine_capture_trace_seconds=%.4f\n", tt);
    printf("trace_batches=%d\n", TRACE_BATCHES);
    printf("trace_cost_fraction=%.4f\n", ct);
    printf("trace_writer_calls_fraction=%.4f\n", cw);
    /* memory: peak RSS against the mapped checkpoint plus what the session allocated (activations, cache) */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss = (double)ru.ru_maxrss * 1024, wb = (double)mtr_model_weight_bytes(m),
           sb = (double)mtr_session_bytes(s), bufs = (double)tokens * (rows + c->vocab_size) * 4;
    printf("engine_dtype=%s\n", mtr_dtype_name(c->dtype));
    printf("peak_rss_bytes=%.0f weight_bytes=%.0f session_bytes=%.0f output_bytes=%.0f\n", rss, wb, sb, bufs);
    printf("rss_ratio=%.3f\n", rss / (wb + sb + bufs));
    for (uint32_t i = 0; i < n_seq; i++) free(ids[i]);
    free(all);
    free(router);
    free(logits);
    mtr_session_destroy(s);
    mtr_model_destroy(m);
    return 0;
}
