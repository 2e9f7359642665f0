/* mtr_floor.c — benchmark peer: the floor of any reader of a run, i.e. every logits chunk read (pread), zstd
 * decompressed and unshuffled, and nothing else, on N OpenMP threads. Prints seconds and f32-equivalent bytes. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#include "moetrace.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: mtr_floor RUN [THREADS]\n");
        return 1;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    mtr_run *r = NULL;
    if (mtr_run_open(&r, argv[1], 0)) {
        fprintf(stderr, "mtr_floor: %s\n", mtr_errmsg());
        return 2;
    }
    const mtr_model_info *m = mtr_run_model(r);
    const size_t esz = mtr_dtype_size(mtr_run_get_meta(r, 0)->stored_dtype);
    uint64_t bytes = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (size_t s = 0; s < mtr_run_n_shards(r); s++) {
        const mtr_shard_info *si = mtr_run_shard(r, s);
        const mtr_chunk_ref *ch = mtr_run_chunks(r, s);
        size_t elems = (size_t)si->chunk_tokens * m->n_layers * m->n_experts, cb = elems * esz;
#pragma omp parallel num_threads(threads) reduction(+ : bytes)
        {
            ZSTD_DCtx *d = ZSTD_createDCtx();
            uint8_t *raw = malloc(ZSTD_compressBound(cb)), *tmp = malloc(cb), *out = malloc(cb);
#pragma omp for schedule(dynamic, 1)
            for (size_t c = 0; c < si->n_chunks; c++) {
                if (mtr_chunk_read(r, s, c, raw)) abort();
                if (ZSTD_isError(ZSTD_decompressDCtx(d, tmp, cb, raw, ch[c].size))) abort();
                mtr_unshuffle(out, tmp, elems, esz);
                bytes += (uint64_t)ch[c].n_tok * m->n_layers * m->n_experts * 4;
            }
            ZSTD_freeDCtx(d);
            free(raw);
            free(tmp);
            free(out);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f %llu\n", (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9, (unsigned long long)bytes);
    mtr_run_close(r);
    return 0;
}
