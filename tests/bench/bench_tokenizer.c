/* bench_tokenizer.c — encode throughput (MB/s of UTF-8 text, one thread) of the C tokenizer for Qwen3, gpt-oss
 * and DeepSeek-V3 on the UDHR texts, against the JavaScript oracle (@lenml/tokenizers) timed on the same texts in
 * the same run by tests/tokenizer/bench_oracle.mjs; prints the ratio. Needs the npm cache (tests/tokenizer/
 * setup.sh); skips with a note when node or the packages are unavailable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mtr_tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char nm[1024] = "";
    FILE *p = popen("sh tests/tokenizer/setup.sh 2>/dev/null", "r");
    if (!p || !fgets(nm, sizeof nm, p) || pclose(p) != 0) {
        printf("tokenizer: skipped (reference packages unavailable)\n");
        return 0;
    }
    nm[strcspn(nm, "\n")] = '\0';
    /* the texts: one paragraph per line, as the oracle reads them */
    char cmd[2300];
    snprintf(cmd, sizeof cmd, "node tests/tokenizer/texts.mjs '%s' > build/bench-data/tok-texts.jsonl", nm);
    if (system(cmd) != 0) {
        printf("tokenizer: skipped (node failed)\n");
        return 0;
    }
    static const char *const models[] = {"qwen3", "gptoss", "deepseek_v3"};
    int status = 0;
    for (size_t m = 0; m < 3; m++) {
        /* the texts as the JSON decoder gives them, via the tokenize CLI's own input format: read jsonl */
        snprintf(cmd, sizeof cmd, "node -e 'for (const l of require(\"fs\").readFileSync(0,\"utf8\").split(\"\\n\")) if (l) "
                                  "process.stdout.write(Buffer.from(JSON.parse(l).text).toString(\"base64\")+\"\\n\")' "
                                  "< build/bench-data/tok-texts.jsonl > build/bench-data/tok-texts.b64");
        if (system(cmd) != 0) return 1;
        char path[1200];
        snprintf(path, sizeof path, "%s/@lenml/tokenizer-%s/models", nm, models[m]);
        mtr_tok *t = NULL;
        double t0 = now();
        if (mtr_tok_load(&t, path) != 0) {
            printf("%s: load failed: %s\n", models[m], mtr_tok_errmsg());
            return 1;
        }
        double load_s = now() - t0;
        /* decode base64 lines into texts */
        FILE *f = fopen("build/bench-data/tok-texts.b64", "r");
        char *line = NULL;
        size_t cap = 0, ntext = 0, bytes = 0;
        ssize_t n;
        char **texts = NULL;
        size_t *lens = NULL;
        static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        while (f && (n = getline(&line, &cap, f)) > 0) {
            texts = realloc(texts, (ntext + 1) * sizeof *texts);
            lens = realloc(lens, (ntext + 1) * sizeof *lens);
            char *out = malloc((size_t)n);
            size_t k = 0;
            unsigned acc = 0;
            int bits = 0;
            for (ssize_t i = 0; i < n; i++) {
                const char *q = line[i] ? strchr(b64, line[i]) : NULL;
                if (!q) continue;
                acc = (acc << 6) | (unsigned)(q - b64);
                bits += 6;
                if (bits >= 8) {
                    bits -= 8;
                    out[k++] = (char)((acc >> bits) & 0xff);
                }
            }
            texts[ntext] = out;
            lens[ntext++] = k;
            bytes += k;
        }
        if (f) fclose(f);
        free(line);
        mtr_tok_ids ids = MTR_TOK_IDS_INIT;
        size_t ntok = 0;
        int reps = 0;
        t0 = now();
        double el;
        do { /* at least 3 passes and 2 s */
            for (size_t i = 0; i < ntext; i++) {
                ids.n = 0;
                if (mtr_tok_encode(&ids, t, texts[i], lens[i], 0) != 0) {
                    printf("%s: encode failed: %s\n", models[m], mtr_tok_errmsg());
                    return 1;
                }
                ntok += ids.n;
            }
            reps++;
            el = now() - t0;
        } while (reps < 3 || el < 2.0);
        double mbs = (double)bytes * reps / el / 1e6;
        /* the oracle on the same texts */
        snprintf(cmd, sizeof cmd, "node tests/tokenizer/bench_oracle.mjs '%s' %s build/bench-data/tok-texts.jsonl", nm, models[m]);
        double js = 0;
        FILE *o = popen(cmd, "r");
        if (!o || fscanf(o, "%lf", &js) != 1) js = 0;
        if (o) pclose(o);
        printf("tokenizer %-12s load %.2f s, %zu texts, %.2f MB: %.1f MB/s (%.0f tokens/s); oracle %.2f MB/s; ratio %.1fx\n",
               models[m], load_s, ntext, (double)bytes / 1e6, mbs, (double)ntok / el, js, js > 0 ? mbs / js : 0);
        if (js <= 0) status = 1;
        for (size_t i = 0; i < ntext; i++) free(texts[i]);
        free(texts);
        free(lens);
        mtr_tok_ids_free(&ids);
        mtr_tok_destroy(t);
    }
    return status;
}
