/* fuzz_config.c — libFuzzer target for the model config parser (config.json in capture/engine/model.c): arbitrary bytes
 * as config.json beside the weights of one of the committed tiny checkpoints (the first byte picks which), then,
 * when the model loads, a short forward. The load must succeed with shapes that fit the weights or fail with a
 * pinned error; never a crash, an allocation sized by unchecked numbers or a forward that reads past a tensor.
 * Run from the repository root (tests/models/tiny), or set MTR_FUZZ_MODELS to that directory. */
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "mtr_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const models[] = {"qwen3_moe", "olmoe", "mixtral", "qwen2_moe", "qwen3_moe_bf16",
                                     "mixtral_llama3", "qwen3_moe_yarn", "qwen3_moe_yarn_ratio"};
#define N_MODELS (sizeof models / sizeof *models)
static const char *const weights[] = {"model.safetensors", "model.safetensors.index.json",
                                      "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};

/* one scratch directory per checkpoint holding links to its weights; config.json is rewritten per input */
static const char *model_dir(size_t i)
{
    static char dirs[N_MODELS][512];
    if (!dirs[i][0]) {
        const char *root = getenv("MTR_FUZZ_MODELS");
        char src[PATH_MAX], rsrc[PATH_MAX], dst[1024];
        snprintf(dirs[i], sizeof dirs[i], "%s/%s", fuzz_dir(), models[i]);
        mkdir(dirs[i], 0700);
        for (size_t w = 0; w < sizeof weights / sizeof *weights; w++) {
            snprintf(src, sizeof src, "%s/%s/%s", root && *root ? root : "tests/models/tiny", models[i], weights[w]);
            if (!realpath(src, rsrc)) continue;
            snprintf(dst, sizeof dst, "%s/%s", dirs[i], weights[w]);
            unlink(dst);
            if (symlink(rsrc, dst)) abort();
        }
    }
    return dirs[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *dir = model_dir(data[0] % N_MODELS);
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data + 1, 1, size - 1, f);
    fclose(f);
    mtr_model_opts o = MTR_MODEL_OPTS_INIT;
    o.n_threads = 1;
    mtr_model *m = NULL;
    if (mtr_model_load(&m, dir, &o) == 0) {
        const mtr_model_config *c = mtr_model_get_config(m);
        mtr_session *s = NULL;
        if (mtr_session_create(&s, m, 8, 4) == 0) {
            int32_t ids[4];
            for (int i = 0; i < 4; i++) ids[i] = (int32_t)((uint32_t)(i * 7 + 1) % c->vocab_size);
            float *router = malloc((size_t)4 * c->n_moe_layers * c->n_experts * sizeof *router);
            float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
            if (router && logits) {
                mtr_forward_io io = MTR_FORWARD_IO_INIT;
                io.router = router;
                io.logits = logits;
                io.n_logits = 1;
                if (mtr_model_forward(s, ids, 4, &io) == 0) {
                    volatile float sum = router[0] + logits[0];
                    (void)sum;
                }
            }
            free(router);
            free(logits);
        }
        mtr_session_destroy(s);
        mtr_model_info info;
        mtr_model_info_of(&info, m, NULL);
    }
    mtr_model_destroy(m);
    return 0;
}
