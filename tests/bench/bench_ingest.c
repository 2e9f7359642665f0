/* bench_ingest.c — what the ingest framing costs: the same sequences written (a) by mtr_writer_append straight
 * from memory and (b) through the ingest pipeline, a producer thread writing the encoded stream into a pipe that
 * mtr_ingest_run reads (decode, frame buffer, writer). 48 layers x 128 experts, bf16 logits in and stored, default
 * compression threads, fsync off for both (the disk is not what is compared). Alternating rounds, medians.
 * Target: ingest >= 0.9x the writer's throughput. MTR_BENCH_BYTES sets the bf16 logits per round (default
 * 256 MiB); exit 1 if the target is missed (MTR_BENCH_NO_FAIL=1 to only report). */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mtr_ingest.h"

#define L 48
#define E 128
#define T 256

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    unsigned char *data;
    size_t len;
    size_t *logits_off; /* (n) offset of each sequence's logits in data */
    size_t n;
} stream;

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static double uniform(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((rng >> 11) + 0.5) / 9007199254740992.0;
}

static int build(stream *s, size_t n, const mtr_model_info *m)
{
    void *h = NULL;
    size_t hl = 0;
    mtr_ingest_header_extra x = MTR_INGEST_HEADER_EXTRA_INIT;
    x.has_logits_dtype = true;
    x.logits_dtype = MTR_DTYPE_BF16;
    if (mtr_ingest_encode_header(&h, &hl, m, &x)) return -1;
    size_t fb = (size_t)mtr_ingest_seq_frame_bytes(L, E, T, MTR_DTYPE_BF16, 7, 8, 5, 7);
    s->len = hl + n * fb + 24;
    s->data = malloc(s->len);
    s->logits_off = malloc(n * sizeof *s->logits_off);
    uint16_t *z = malloc((size_t)T * L * E * 2);
    float prof[L * E];
    int32_t ids[T], pos[T];
    uint8_t roles[T];
    if (!s->data || !s->logits_off || !z) return -1;
    for (int i = 0; i < L * E; i++) prof[i] = (float)(2 * uniform() - 1);
    for (int t = 0; t < T; t++) ids[t] = t * 7, pos[t] = t, roles[t] = 1;
    memcpy(s->data, h, hl);
    free(h);
    size_t off = hl;
    for (size_t q = 0; q < n; q++) {
        for (size_t i = 0; i < (size_t)T * L * E; i++)
            z[i] = mtr_f32_to_bf16(prof[i % (L * E)] + (float)(2 * uniform() - 1));
        char unit[8];
        snprintf(unit, sizeof unit, "u%06zu", q % 1000000);
        mtr_seq_meta meta = {q, unit, "eng_Latn", "bench", T, 0};
        size_t len = 0;
        if (mtr_ingest_encode_seq(s->data + off, fb, &len, L, E, &meta, ids, pos, roles, z, MTR_DTYPE_BF16)) return -1;
        s->logits_off[q] = off + len - (size_t)T * L * E * 2;
        off += len;
    }
    mtr_ingest_encode_end(s->data + off, n);
    s->n = n;
    free(z);
    return 0;
}

static void rmrf(const char *d)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd)) fprintf(stderr, "bench: cannot remove %s\n", d);
}

static double run_writer(const stream *s, const mtr_model_info *m, const char *dir)
{
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.sync = false;
    mtr_writer *w = NULL;
    int32_t ids[T], pos[T];
    uint8_t roles[T];
    for (int t = 0; t < T; t++) ids[t] = t * 7, pos[t] = t, roles[t] = 1;
    double t0 = now();
    if (mtr_writer_create(&w, dir, m, &o)) return -1;
    for (size_t q = 0; q < s->n; q++) {
        char unit[8];
        snprintf(unit, sizeof unit, "u%06zu", q % 1000000);
        mtr_seq_meta meta = {q, unit, "eng_Latn", "bench", T, 0};
        if (mtr_writer_append(w, &meta, ids, pos, roles, s->data + s->logits_off[q], MTR_DTYPE_BF16)) return -1;
    }
    if (mtr_writer_close(w)) return -1;
    return now() - t0;
}

typedef struct {
    int fd;
    const stream *s;
} feeder;

static void *feed(void *arg)
{
    feeder *f = arg;
    for (size_t o = 0; o < f->s->len;) {
        ssize_t k = write(f->fd, f->s->data + o, f->s->len - o < (1u << 20) ? f->s->len - o : (1u << 20));
        if (k <= 0) break;
        o += (size_t)k;
    }
    close(f->fd);
    return NULL;
}

/* ingest reading the stream from a file in the page cache: the producer's cost is not counted */
static double run_ingest_file(const char *path, const char *dir, mtr_ingest_result *res)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    mtr_ingest_opts o = MTR_INGEST_OPTS_INIT;
    o.writer.sync = false;
    double t0 = now();
    int rc = mtr_ingest_run(res, fd, dir, &o);
    double t = now() - t0;
    close(fd);
    if (rc) {
        fprintf(stderr, "bench: ingest: %s\n", mtr_errmsg());
        return -1;
    }
    return t;
}

static double run_ingest(const stream *s, const char *dir, mtr_ingest_result *res)
{
    int p[2];
    if (pipe(p)) return -1;
    (void)fcntl(p[0], F_SETPIPE_SZ, 1 << 20);
    mtr_ingest_opts o = MTR_INGEST_OPTS_INIT;
    o.writer.sync = false;
    feeder f = {p[1], s};
    pthread_t th;
    double t0 = now();
    if (pthread_create(&th, NULL, feed, &f)) return -1;
    int rc = mtr_ingest_run(res, p[0], dir, &o);
    close(p[0]);
    pthread_join(th, NULL);
    double t = now() - t0;
    if (rc) {
        fprintf(stderr, "bench: ingest: %s\n", mtr_errmsg());
        return -1;
    }
    return t;
}

int main(int argc, char **argv)
{
    const char *base = argc > 1 ? argv[1] : "build/bench-data";
    const char *env = getenv("MTR_BENCH_BYTES");
    double bytes = env ? atof(env) : 256.0 * 1048576;
    size_t n = (size_t)(bytes / ((double)T * L * E * 2));
    if (n < 4) n = 4;
    mtr_model_info m;
    mtr_model_info_init(&m, "bench/moe", "qwen3_moe", L, E, 8);
    stream s;
    if (build(&s, n, &m)) {
        fprintf(stderr, "bench: cannot build the stream\n");
        return 1;
    }
    char dw[512];
    snprintf(dw, sizeof dw, "%s/ingest-run", base);
    double f32_mb = (double)n * T * L * E * 4 / 1e6;
    printf("# bench_ingest: %zu sequences x %d tokens, %d layers x %d experts, bf16 in and stored, %.0f MB of "
           "f32-equivalent logits per round, stream %.0f MB\n", n, T, L, E, f32_mb, (double)s.len / 1e6);
    char sf[512];
    snprintf(sf, sizeof sf, "%s/ingest-stream.bin", base);
    FILE *fp = fopen(sf, "wb");
    if (!fp || fwrite(s.data, 1, s.len, fp) != s.len || fclose(fp)) {
        fprintf(stderr, "bench: cannot write %s\n", sf);
        return 1;
    }
    enum { ROUNDS = 5 };
    double tw[ROUNDS], tf[ROUNDS], tp[ROUNDS], rf[ROUNDS], rp[ROUNDS];
    mtr_ingest_result res;
    for (int r = 0; r < ROUNDS; r++) {
        /* rotate the order so drift in the machine's load hits all three */
        for (int k = 0; k < 3; k++) {
            rmrf(dw);
            switch ((r + k) % 3) {
            case 0: tw[r] = run_writer(&s, &m, dw); break;
            case 1: tf[r] = run_ingest_file(sf, dw, &res); break;
            default: tp[r] = run_ingest(&s, dw, &res); break;
            }
        }
        if (tw[r] < 0 || tf[r] < 0 || tp[r] < 0) {
            fprintf(stderr, "bench: a round failed\n");
            return 1;
        }
        rf[r] = tw[r] / tf[r];
        rp[r] = tw[r] / tp[r];
    }
    rmrf(dw);
    remove(sf);
    qsort(tw, ROUNDS, sizeof *tw, cmp_double);
    qsort(tf, ROUNDS, sizeof *tf, cmp_double);
    qsort(tp, ROUNDS, sizeof *tp, cmp_double);
    qsort(rf, ROUNDS, sizeof *rf, cmp_double);
    qsort(rp, ROUNDS, sizeof *rp, cmp_double);
    double target = 0.9, med = rf[ROUNDS / 2];
    printf("writer (mtr_writer_append from memory)       %9.0f MB/s of f32 equivalent (median of %d)\n",
           f32_mb / tw[ROUNDS / 2], ROUNDS);
    printf("ingest, stream from a cached file            %9.0f MB/s\n", f32_mb / tf[ROUNDS / 2]);
    printf("ingest, stream from a pipe + producer thread %9.0f MB/s (the producer shares the cores)\n",
           f32_mb / tp[ROUNDS / 2]);
    printf("%-44s %9.2f x     (target >= %.2f) %s\n", "ingest (file) / writer", med, target,
           med >= target ? "ok" : "MISSED");
    printf("%-44s %9.2f x     (reported)\n", "ingest (pipe + in-process producer) / writer", rp[ROUNDS / 2]);
    printf("# medians of per-round ratios; file ratios %.2f..%.2f, pipe %.2f..%.2f\n", rf[0], rf[ROUNDS - 1], rp[0],
           rp[ROUNDS - 1]);
    free(s.data);
    free(s.logits_off);
    const char *nf = getenv("MTR_BENCH_NO_FAIL");
    return med >= target || (nf && *nf == '1') ? 0 : 1;
}
