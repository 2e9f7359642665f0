/* fuzz_safetensors.c — libFuzzer target for the safetensors reader (capture/engine/safetensors.c): arbitrary bytes as a
 * checkpoint file must open with every tensor inside the file, or fail with a pinned error; never a crash, a read
 * past the mapping or an allocation sized by unchecked header numbers. The input goes through a memfd so the
 * reader maps it exactly as it maps a file on disk. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mtr_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.safetensors", 0);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    mtr_st *st = NULL;
    if (mtr_st_open(&st, path) == 0) {
        volatile float sink = 0;
        for (size_t i = 0; i < mtr_st_count(st); i++) {
            const mtr_st_tensor *t = mtr_st_get(st, i);
            if (t->n_elems == 0 || t->n_elems > (1u << 20)) continue;
            float *f = malloc((size_t)t->n_elems * sizeof *f);
            if (!f) continue;
            mtr_st_to_f32(f, t);
            sink += f[0] + f[t->n_elems - 1];
            free(f);
        }
        (void)mtr_st_find(st, "a");
        (void)mtr_st_metadata(st, "format");
        mtr_st_close(st);
    }
    close(fd);
    return 0;
}
