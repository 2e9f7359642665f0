/* fuzz_ingest.c — libFuzzer target for the ingest stream decoder (capture/ingest/ingest.c, traces/INGEST.md): arbitrary
 * bytes must decode to sequences and a clean end or a pinned error, never a crash, a read past the input or an
 * allocation sized by unchecked numbers (frames are capped at 16 MiB here, as --buffer caps them in ingest). */
#include <stddef.h>
#include <stdint.h>

#include "mtr_ingest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mtr_ingest_mem m = {data, size, 0};
    mtr_ingest_decoder *d = NULL;
    if (mtr_ingest_decoder_create(&d, mtr_ingest_mem_read, &m, 16u << 20)) return 0;
    mtr_ingest_seq q;
    volatile uint64_t sink = 0;
    while (mtr_ingest_decoder_next(d, &q) == 1) {
        sink += q.meta.seq_id + q.meta.n_tokens + (uint64_t)q.meta.unit_id[0] + (uint64_t)q.meta.lang[0];
        if (q.roles) sink += q.roles[q.meta.n_tokens - 1];
        if (q.token_ids) sink += (uint64_t)q.token_ids[q.meta.n_tokens - 1];
    }
    mtr_ingest_decoder_destroy(d);
    return 0;
}
