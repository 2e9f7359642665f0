/* fuzz_summaries.c — libFuzzer target for the readers of reduce's outputs that travel between machines:
 * summaries.h5 (reduce/summaries.c, read by `moetrace-reduce tables`) and tables.h5 (stats/tables.c, read by
 * moetrace-stats). A small run is captured, summarised and tabulated once; then the input's first byte chooses
 * the file (even: summaries.h5, odd: tables.h5) and the rest are bit flips as in fuzz_trace (4 bytes each: a 29-bit
 * byte offset modulo the file's size and a 3-bit bit number). The damaged file must load (summaries: every
 * layer's q and counts too) or fail with a pinned error and a one-line message naming it; never a crash, a hang
 * or a read past a buffer. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "moetrace.h"
#include "mtr_reduce.h"
#include "fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define L 3
#define E 8
#define K 2

static uint8_t *file_bytes[2]; /* summaries.h5, tables.h5 */
static size_t file_size[2];

static int slurp(const char *path, int i)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    file_size[i] = (size_t)ftell(f);
    rewind(f);
    file_bytes[i] = malloc(file_size[i]);
    int rc = file_bytes[i] && fread(file_bytes[i], 1, file_size[i], f) == file_size[i] ? 0 : -1;
    fclose(f);
    return rc;
}

/* a run of parallel units in three languages (two datasets), summarised and tabulated */
static int make_files(void)
{
    char dir[] = "/tmp/mtr-fuzz-summ-XXXXXX", run[64], summ[80], tab[64], cmd[96];
    if (!mkdtemp(dir)) return -1;
    snprintf(run, sizeof run, "%s/run", dir);
    snprintf(summ, sizeof summ, "%s/summaries.h5", dir);
    snprintf(tab, sizeof tab, "%s/tab", dir);
    mtr_model_info m;
    mtr_model_info_init(&m, "fuzz/tiny", "qwen3_moe", L, E, K);
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.sync = false;
    o.chunk_tokens = 4;
    o.n_threads = 1;
    o.run_id = "fuzz-run";
    mtr_writer *w = NULL;
    int rc = mtr_writer_create(&w, run, &m, &o);
    static const char *langs[] = {"eng_Latn", "fra_Latn", "bam_Latn"};
    float z[6 * L * E];
    for (uint64_t s = 0; !rc && s < 12; s++) {
        for (size_t i = 0; i < sizeof z / sizeof *z; i++) z[i] = (float)((s * 131 + i * 17) % 97) / 9.0f - 5.0f;
        char unit[16];
        snprintf(unit, sizeof unit, "u%llu", (unsigned long long)(s / 3 % 2));
        mtr_seq_meta meta = {s, unit, langs[s % 3], s < 6 ? "flores" : "math", (uint32_t)(2 + s % 5), 0};
        rc = mtr_writer_append(w, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32);
    }
    if (w) rc = rc ? (mtr_writer_destroy(w), rc) : mtr_writer_close(w);
    mtr_run *r = NULL;
    mtr_summ_opts so = MTR_SUMM_OPTS_INIT;
    so.n_threads = 1;
    const char *src[] = {run};
    if (!rc) rc = mtr_run_open(&r, run, 0);
    mtr_summ_stats st;
    if (!rc) rc = mtr_summarize(summ, r, src, 1, &so, &st);
    mtr_run_close(r);
    mtr_summaries *s = NULL;
    mtr_tables_opts to = MTR_TABLES_OPTS_INIT;
    to.n_threads = 1;
    to.min_count = 1;
    if (!rc) rc = mtr_summaries_open(&s, summ);
    if (!rc) rc = mtr_tables(tab, s, &to);
    mtr_summaries_close(s);
    char tp[80];
    snprintf(tp, sizeof tp, "%s/tables.h5", tab);
    if (!rc) rc = slurp(summ, 0) || slurp(tp, 1) ? -1 : 0;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) rc = rc ? rc : -1;
    H5garbage_collect(); /* HDF5's free lists from the setup, so leak checks of the runs start clean */
    return rc;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (make_files() != 0) {
        fprintf(stderr, "fuzz_summaries: cannot write the seed files: %s\n", mtr_errmsg());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const int which = data[0] & 1;
    const size_t n = file_size[which];
    uint8_t *b = malloc(n);
    if (!b) return 0;
    memcpy(b, file_bytes[which], n);
    for (size_t i = 1; i + 4 <= size && i < 1 + 4 * 64; i += 4) {
        uint32_t v = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16 |
                     (uint32_t)data[i + 3] << 24;
        b[(v >> 3) % n] ^= (uint8_t)(1u << (v & 7));
    }
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/mtr-fuzz-summ-%ld.h5", (long)getpid());
    FILE *f = fopen(path, "wb");
    bool written = f && fwrite(b, 1, n, f) == n;
    if (f && fclose(f) != 0) written = false;
    if (written) {
        int rc;
        if (which == 0) {
            mtr_summaries *s = NULL;
            rc = mtr_summaries_open(&s, path);
            if (rc == 0) {
                const size_t ns = s->n_seqs ? s->n_seqs : 1;
                double *q = s->n_seqs <= 4096 ? malloc(ns * s->model.n_experts * sizeof *q) : NULL;
                uint32_t *c = s->n_seqs <= 4096 ? malloc(ns * s->model.n_experts * sizeof *c) : NULL;
                volatile double sink = 0;
                for (uint32_t l = 0; q && c && l < s->model.n_layers && !rc; l++)
                    if ((rc = mtr_summaries_read_layer(s, l, q, c)) == 0 && s->n_seqs) sink += q[0] + c[0];
                for (size_t i = 0; i < s->n_seqs; i++) sink += s->lang[i][0] + s->unit_id[i][0] + s->dataset[i][0];
                free(q);
                free(c);
                mtr_summaries_close(s);
            }
        } else {
            rc = fuzz_tables_open(path);
        }
        if (rc != 0 && (rc > 0 || !strstr(mtr_errmsg(), path) || strchr(mtr_errmsg(), '\n'))) {
            fprintf(stderr, "fuzz_summaries: error %d without a one-line message naming the file: '%s'\n", rc,
                    mtr_errmsg());
            abort();
        }
    }
    unlink(path);
    free(b);
    return 0;
}
