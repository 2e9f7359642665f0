/* mtr_dump.c — test tool: read a run or shard with libmoetrace and dump what it holds, for comparison with an
 * independent reader (h5py). stdout: one line per sequence "seq_id unit_id lang dataset n_tokens flags";
 * --logits FILE: all logits as little-endian f32 in sequence order; --tokens FILE: token_id, position, role
 * per token as text. Exit 0, or 2 with the library's one-line error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetrace.h"

int main(int argc, char **argv)
{
    const char *path = NULL, *logits_path = NULL, *tokens_path = NULL;
    unsigned flags = 0;
    int threads = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--logits") == 0 && i + 1 < argc)
            logits_path = argv[++i];
        else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc)
            tokens_path = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--allow-partial") == 0)
            flags |= MTR_OPEN_ALLOW_PARTIAL;
        else
            path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "usage: mtr_dump RUN|SHARD [--logits FILE] [--tokens FILE] [--threads N]\n");
        return 1;
    }
    mtr_run *r = NULL;
    int rc = mtr_run_open(&r, path, flags);
    if (rc) {
        fprintf(stderr, "mtr_dump: %s\n", mtr_errmsg());
        return 2;
    }
    for (size_t i = 0; i < mtr_run_n_seqs(r); i++) {
        const mtr_seq_info *s = mtr_run_seq(r, i);
        printf("%llu %s %s %s %u %u\n", (unsigned long long)s->seq_id, s->unit_id, s->lang, s->dataset, s->n_tokens,
               s->flags);
    }
    if (logits_path) {
        FILE *f = fopen(logits_path, "wb");
        mtr_iter *it = NULL;
        mtr_iter_opts o = {threads, 0};
        mtr_block b;
        const mtr_model_info *m = mtr_run_model(r);
        rc = f ? mtr_iter_create(&it, r, NULL, 0, &o) : MTR_EIO;
        while (!rc && (rc = mtr_iter_next(it, &b)) == 1) {
            fwrite(b.logits, 4, (size_t)b.n_tokens * m->n_layers * m->n_experts, f);
            rc = 0;
        }
        mtr_iter_destroy(it);
        if (f) fclose(f);
        if (rc) {
            fprintf(stderr, "mtr_dump: %s\n", mtr_errmsg());
            mtr_run_close(r);
            return 2;
        }
    }
    if (tokens_path) {
        FILE *f = fopen(tokens_path, "w");
        for (size_t i = 0; f && i < mtr_run_n_seqs(r); i++) {
            uint32_t n = mtr_run_seq(r, i)->n_tokens;
            int32_t *ids = malloc(n * 4), *pos = malloc(n * 4);
            uint8_t *roles = malloc(n);
            if (mtr_run_read_tokens(r, i, ids, pos, roles)) {
                fprintf(stderr, "mtr_dump: %s\n", mtr_errmsg());
                return 2;
            }
            for (uint32_t t = 0; t < n; t++) fprintf(f, "%d %d %u\n", ids[t], pos[t], roles[t]);
            free(ids);
            free(pos);
            free(roles);
        }
        if (f) fclose(f);
    }
    mtr_run_close(r);
    return 0;
}
