/* fuzz_trace.c — libFuzzer target for the trace reader (traces/reader.c through HDF5): a small valid shard, written
 * once by the writer, gets the input's bit flips, and must then open and read (sequences, tokens, logits, top-k)
 * or fail with a pinned error and a one-line message; never a crash, a hang or a read past a buffer. The input is
 * a list of 4-byte flips: a 29-bit byte offset (modulo the shard's size) and a 3-bit bit number. The mutated
 * shard is written to a file of the process's own in /tmp. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "moetrace.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define L 3
#define E 8
#define K 2

static uint8_t *shard;    /* the valid shard's bytes */
static size_t shard_size;

/* write a run of a few sequences (strings in the heap, bf16 logits, top-k) and keep its one shard */
static int make_shard(void)
{
    char dir[] = "/tmp/mtr-fuzz-trace-XXXXXX", path[64], cmd[96];
    if (!mkdtemp(dir)) return -1;
    mtr_model_info m;
    mtr_model_info_init(&m, "fuzz/tiny", "qwen3_moe", L, E, K);
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.sync = false;
    o.chunk_tokens = 4;
    o.store_topk = true;
    o.n_threads = 1;
    o.run_id = "fuzz-run";
    mtr_writer *w = NULL;
    int rc = mtr_writer_create(&w, dir, &m, &o);
    static const char *langs[] = {"eng_Latn", "fra_Latn", "bam_Latn"};
    float z[6 * L * E];
    for (uint64_t s = 0; !rc && s < 5; s++) {
        for (size_t i = 0; i < sizeof z / sizeof *z; i++) z[i] = (float)((s * 131 + i * 17) % 97) / 9.0f - 5.0f;
        char unit[16];
        snprintf(unit, sizeof unit, "u%llu", (unsigned long long)(s / 3));
        mtr_seq_meta meta = {s, unit, langs[s % 3], s % 2 ? "math" : "flores", (uint32_t)(2 + s % 5), 0};
        rc = mtr_writer_append(w, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32);
    }
    if (w) rc = rc ? (mtr_writer_destroy(w), rc) : mtr_writer_close(w);
    snprintf(path, sizeof path, "%s/shard-000000.h5", dir);
    FILE *f = rc ? NULL : fopen(path, "rb");
    if (f) {
        fseek(f, 0, SEEK_END);
        shard_size = (size_t)ftell(f);
        rewind(f);
        shard = malloc(shard_size);
        if (!shard || fread(shard, 1, shard_size, f) != shard_size) rc = -1;
        fclose(f);
    } else {
        rc = -1;
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) rc = rc ? rc : -1;
    return rc;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (make_shard() != 0) {
        fprintf(stderr, "fuzz_trace: cannot write the seed shard: %s\n", mtr_errmsg());
        abort();
    }
    return 0;
}

static void read_all(mtr_run *r)
{
    volatile float sink = 0;
    for (size_t i = 0; i < mtr_run_n_seqs(r); i++) {
        const mtr_seq_info *s = mtr_run_seq(r, i);
        if (s->n_tokens > 4096) continue;
        size_t T = s->n_tokens;
        float *z = malloc(T * L * E * sizeof *z), *wt = malloc(T * L * K * sizeof *wt);
        int32_t *ids = malloc(T * sizeof *ids), *pos = malloc(T * sizeof *pos);
        uint8_t *roles = malloc(T);
        uint16_t *top = malloc(T * L * K * sizeof *top);
        if (z && wt && ids && pos && roles && top) {
            if (mtr_run_read_logits(r, i, z) == 0) sink += z[0] + z[T * L * E - 1];
            if (mtr_run_read_tokens(r, i, ids, pos, roles) == 0) sink += (float)(ids[0] + pos[T - 1] + roles[0]);
            if (mtr_run_read_topk(r, i, top, wt) == 0) sink += wt[0] + (float)top[0];
            sink += (float)(s->lang[0] + s->unit_id[0] + s->dataset[0]);
        }
        free(z);
        free(wt);
        free(ids);
        free(pos);
        free(roles);
        free(top);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *b = malloc(shard_size);
    if (!b) return 0;
    memcpy(b, shard, shard_size);
    for (size_t i = 0; i + 4 <= size && i < 4 * 64; i += 4) {
        uint32_t v = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16 |
                     (uint32_t)data[i + 3] << 24;
        b[(v >> 3) % shard_size] ^= (uint8_t)(1u << (v & 7));
    }
    /* a file of our own per process (HDF5 1.10 fails to open a memfd by its /proc path) */
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/mtr-fuzz-trace-%ld.h5", (long)getpid());
    FILE *f = fopen(path, "wb");
    bool written = f && fwrite(b, 1, shard_size, f) == shard_size;
    if (f && fclose(f) != 0) written = false;
    if (written) {
        mtr_run *r = NULL;
        int rc = mtr_run_open(&r, path, 0);
        if (rc == 0) {
            read_all(r);
            mtr_run_close(r);
        } else if (rc > 0 || !strstr(mtr_errmsg(), path) || strchr(mtr_errmsg(), '\n')) {
            fprintf(stderr, "fuzz_trace: error %d without a one-line message naming the file: '%s'\n", rc,
                    mtr_errmsg());
            abort();
        }
    }
    unlink(path);
    free(b);
    return 0;
}
