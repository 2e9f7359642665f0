/* bench_trace.c — writer and reader throughput of libmoetrace against peers measured in the same process.
 *
 * 1. Writer: MB/s of f32 input per compression thread (1 and 2 threads; the calling thread copies and writes),
 *    writing (48 layers x 128 experts, bf16) runs of 1 GiB f32 input with the default settings (fsync on),
 *    alternating 1 and 2 threads for 3 rounds (median). Then a run of MTR_BENCH_BYTES f32 input (default 2 GiB,
 *    i.e. >= 1 GiB of bf16) for the reader.
 * 2. Reader: the block iterator (pread + zstd + unshuffle + bf16->f32, blocks per sequence) against the floor:
 *    raw chunk pread + ZSTD_decompressDCtx + unshuffle of the same chunks alone, on the same file, alternated
 *    over several rounds (median), on 1 and 2 threads.
 * Prints each ratio with its target; exit 1 if a target is missed (MTR_BENCH_NO_FAIL=1 to only report).
 * Throughputs are in MB/s of f32-equivalent logits (10^6 bytes), so all ratios share one denominator. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#include "moetrace.h"

#define L 48
#define E 128

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((rng_state >> 11) + 0.5) / 9007199254740992.0;
}

/* logits that look like a router's: a per-layer profile plus Gaussian noise */
static float *make_pool(size_t tokens)
{
    float *z = malloc(tokens * L * E * sizeof *z);
    float profile[L * E];
    for (int i = 0; i < L * E; i++) profile[i] = (float)(2.0 * uniform() - 1.0);
    for (size_t t = 0; t < tokens; t++)
        for (int i = 0; i < L * E; i += 2) {
            double u1 = uniform(), u2 = uniform(), r = sqrt(-2 * log(u1));
            z[t * L * E + i] = profile[i] + (float)(r * cos(6.283185307179586 * u2));
            z[t * L * E + i + 1] = profile[i + 1] + (float)(r * sin(6.283185307179586 * u2));
        }
    return z;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int write_run(const char *dir, int threads, uint64_t input_bytes, const float *pool, size_t pool_tokens,
                     double *mbps)
{
    mtr_model_info m;
    mtr_model_info_init(&m, "bench/moe-L48-E128", "qwen3_moe", L, E, 8);
    m.renormalize = true;
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.n_threads = threads;
    o.sync = getenv("MTR_BENCH_NOSYNC") == NULL; /* fsync on by default, as users run it */
    mtr_writer *w = NULL;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    double t0 = now();
    if (mtr_writer_create(&w, dir, &m, &o)) goto fail;
    uint64_t done = 0, seq = 0;
    size_t pos = 0;
    const size_t row = (size_t)L * E;
    while (done < input_bytes) {
        uint32_t n = 64 + (uint32_t)(uniform() * 200); /* sequence lengths 64..263 */
        if (pos + n > pool_tokens) pos = 0;
        char unit[32];
        snprintf(unit, sizeof unit, "u%06llu", (unsigned long long)(seq / 4));
        static const char *langs[4] = {"eng_Latn", "fra_Latn", "zho_Hans", "bam_Latn"};
        mtr_seq_meta meta = {seq, unit, langs[seq % 4], "flores", n, 0};
        if (mtr_writer_append(w, &meta, NULL, NULL, NULL, pool + pos * row, MTR_DTYPE_F32)) goto fail;
        pos += n;
        seq++;
        done += (uint64_t)n * row * 4;
    }
    if (mtr_writer_close(w)) {
        w = NULL;
        goto fail;
    }
    *mbps = (double)done / 1e6 / (now() - t0);
    return 0;
fail:
    fprintf(stderr, "bench: writer: %s\n", mtr_errmsg());
    mtr_writer_destroy(w);
    return 1;
}

/* the floor: pread + zstd + unshuffle of every logits chunk, nothing else */
static double floor_pass(mtr_run *r, int threads, uint64_t *bytes_out)
{
    const mtr_shard_info *s0 = mtr_run_shard(r, 0);
    size_t chunk_elems = (size_t)s0->chunk_tokens * L * E, chunk_bytes = chunk_elems * 2;
    uint64_t f32_bytes = 0;
    double t0 = now();
    for (size_t s = 0; s < mtr_run_n_shards(r); s++) {
        const mtr_shard_info *si = mtr_run_shard(r, s);
        const mtr_chunk_ref *ch = mtr_run_chunks(r, s);
#pragma omp parallel num_threads(threads) reduction(+ : f32_bytes)
        {
            ZSTD_DCtx *dctx = ZSTD_createDCtx();
            uint8_t *raw = malloc(ZSTD_compressBound(chunk_bytes)), *tmp = malloc(chunk_bytes),
                    *out = malloc(chunk_bytes);
#pragma omp for schedule(dynamic, 1)
            for (size_t c = 0; c < si->n_chunks; c++) {
                if (mtr_chunk_read(r, s, c, raw)) abort();
                size_t n = ZSTD_decompressDCtx(dctx, tmp, chunk_bytes, raw, ch[c].size);
                if (ZSTD_isError(n)) abort();
                mtr_unshuffle(out, tmp, chunk_elems, 2);
                f32_bytes += (uint64_t)ch[c].n_tok * L * E * 4;
            }
            ZSTD_freeDCtx(dctx);
            free(raw);
            free(tmp);
            free(out);
        }
    }
    *bytes_out = f32_bytes;
    return now() - t0;
}

/* the reader: every sequence's logits as f32 blocks through the iterator */
static double reader_pass(mtr_run *r, int threads, uint64_t *bytes_out, double *checksum)
{
    mtr_iter *it = NULL;
    mtr_iter_opts o = {threads, 0};
    mtr_block b;
    uint64_t bytes = 0;
    double sum = 0, t0 = now();
    int rc;
    if (mtr_iter_create(&it, r, NULL, 0, &o)) abort();
    while ((rc = mtr_iter_next(it, &b)) == 1) {
        sum += b.logits[0] + b.logits[(size_t)b.n_tokens * L * E - 1]; /* touch the block */
        bytes += (uint64_t)b.n_tokens * L * E * 4;
    }
    if (rc) {
        fprintf(stderr, "bench: reader: %s\n", mtr_errmsg());
        abort();
    }
    mtr_iter_destroy(it);
    *bytes_out = bytes;
    *checksum = sum;
    return now() - t0;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "build/bench-data";
    uint64_t input = getenv("MTR_BENCH_BYTES") ? strtoull(getenv("MTR_BENCH_BYTES"), NULL, 10) : (2ULL << 30);
    int rounds = getenv("MTR_BENCH_ROUNDS") ? atoi(getenv("MTR_BENCH_ROUNDS")) : 5;
    bool no_fail = getenv("MTR_BENCH_NO_FAIL") != NULL;
    char d1[512], d2[512];
    snprintf(d1, sizeof d1, "%s/w1", dir);
    snprintf(d2, sizeof d2, "%s/w2", dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    if (system(cmd) != 0) return 1;

    printf("# bench_trace: %d layers x %d experts, bf16 stored, %.2f GB of f32 input, %d cores\n", L, E,
           (double)input / 1e9, omp_get_num_procs());
    size_t pool_tokens = 4096;
    float *pool = make_pool(pool_tokens);
    /* writer: alternate 1 and 2 threads; between runs, wait for writeback and delete, so one run's dirty pages
     * are not flushed on another run's time */
    double w1s[32], w2s[32], w1, w2;
    int wrounds = rounds < 3 ? rounds : 3;
    uint64_t wbytes = input < (1ULL << 30) ? input : (1ULL << 30);
    for (int i = 0; i < wrounds; i++) {
        if (write_run(d1, 1, wbytes, pool, pool_tokens, &w1s[i])) return 1;
        snprintf(cmd, sizeof cmd, "sync; rm -rf '%s'; sync", d1);
        if (system(cmd) != 0) return 1;
        if (write_run(d2, 2, wbytes, pool, pool_tokens, &w2s[i])) return 1;
        snprintf(cmd, sizeof cmd, "sync; rm -rf '%s'; sync", d2);
        if (system(cmd) != 0) return 1;
    }
    w1 = median(w1s, wrounds);
    w2 = median(w2s, wrounds);
    /* the trace the reader benchmarks read: the full input size */
    double wbig;
    if (write_run(d2, 2, input, pool, pool_tokens, &wbig)) return 1;
    free(pool);

    mtr_run *r = NULL;
    if (mtr_run_open(&r, d2, 0)) {
        fprintf(stderr, "bench: %s\n", mtr_errmsg());
        return 1;
    }
    uint64_t stored = 0, bytes = 0;
    for (size_t s = 0; s < mtr_run_n_shards(r); s++) stored += mtr_run_shard(r, s)->stored_bytes;
    double f1[32], f2[32], r1[32], r2[32], sum = 0;
    if (rounds > 32) rounds = 32;
    floor_pass(r, 2, &bytes); /* warm the page cache */
    printf("# trace: %zu sequences, %.2f GB f32 equivalent (%.2f GB bf16), %.2f GB stored, %zu shards\n",
           mtr_run_n_seqs(r), (double)bytes / 1e9, (double)bytes / 2e9, (double)stored / 1e9, mtr_run_n_shards(r));
    for (int i = 0; i < rounds; i++) {
        f1[i] = (double)bytes / 1e6 / floor_pass(r, 1, &bytes);
        r1[i] = (double)bytes / 1e6 / reader_pass(r, 1, &bytes, &sum);
        f2[i] = (double)bytes / 1e6 / floor_pass(r, 2, &bytes);
        r2[i] = (double)bytes / 1e6 / reader_pass(r, 2, &bytes, &sum);
    }
    mtr_run_close(r);
    double mf1 = median(f1, rounds), mr1 = median(r1, rounds), mf2 = median(f2, rounds), mr2 = median(r2, rounds);

    int miss = 0;
#define REPORT(name, value, target, unit)                                                                       \
    do {                                                                                                        \
        bool met = (value) >= (target);                                                                         \
        miss += !met;                                                                                           \
        printf("%-44s %9.2f %-5s (target >= %.2f) %s\n", name, value, unit, (double)(target), met ? "ok" : "MISSED"); \
    } while (0)
    printf("writer, 1 thread                             %9.0f MB/s of f32 input (median of %d x %.2f GB)\n", w1,
           wrounds, (double)wbytes / 1e9);
    printf("writer, 2 threads                            %9.0f MB/s of f32 input (%.0f on the %.2f GB trace)\n", w2,
           wbig, (double)input / 1e9);
    REPORT("writer MB/s of f32 input per thread (1 thr)", w1, 300, "MB/s");
    REPORT("writer MB/s of f32 input per thread (2 thr)", w2 / 2, 300, "MB/s");
    printf("floor (pread+zstd+unshuffle), 1 thread       %9.0f MB/s\n", mf1);
    printf("reader (iterator, f32 blocks), 1 thread      %9.0f MB/s\n", mr1);
    printf("floor, 2 threads                             %9.0f MB/s\n", mf2);
    printf("reader, 2 threads                            %9.0f MB/s\n", mr2);
    REPORT("reader / floor, 1 thread", mr1 / mf1, 0.8, "x");
    REPORT("reader 2 threads / reader 1 thread", mr2 / mr1, 1.6, "x");
    printf("# medians of %d alternating rounds; checksum %g\n", rounds, sum);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d2);
    if (system(cmd) != 0) return 1;
    return miss && !no_fail ? 1 : 0;
}
