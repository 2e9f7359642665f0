/* fuzz_stats.c — libFuzzer target for the inputs of moetrace-stats (stats/tsv.c, stats/accuracy.c,
 * stats/tables.c, stats/lang.c, stats/profile.c): '#'-commented TSVs, accuracy files (moetrace TSV / JSON,
 * lm-evaluation-harness JSON, task maps), reduce table directories, language tables and model profiles, then the
 * band detection and expert selection that consume the tables. Arbitrary bytes must load or fail with a pinned
 * error; never a crash or a read past the input. The first byte chooses the reader; several files are parts of
 * the input split at FUZZ_SEP. Run from the repository root (config/languages.tsv) or set MOETRACE_CONFIG. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mtr_stats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile double sink;

static const mtr_langs *langs(void)
{
    static int tried;
    static mtr_langs *t;
    if (!tried) {
        tried = 1;
        char dir[4096], path[4200];
        mtr_stats_config_dir(dir, sizeof dir);
        snprintf(path, sizeof path, "%s/languages.tsv", dir);
        if (mtr_langs_load(&t, path)) t = NULL;
    }
    return t;
}

static void use_accuracy(const char *path, const mtr_acc_opts *o)
{
    if (!langs()) return;
    mtr_accuracy *a = NULL;
    if (mtr_accuracy_load(&a, path, langs(), o) == 0) {
        const char **tasks = NULL;
        size_t n = 0;
        if (mtr_accuracy_tasks(&tasks, &n, a) == 0 && n) {
            for (size_t i = 0; i < a->n; i++) {
                const mtr_acc_row *r = mtr_accuracy_find(a, a->rows[i].lang, tasks[i % n]);
                if (r) sink += r->value;
            }
        }
        free(tasks);
    }
    mtr_accuracy_free(a);
}

static void use_tables(const mtr_tables *t)
{
    if (t->n_layers == 0 || t->n_layers > 4096) return;
    double *curve = malloc(t->n_layers * sizeof *curve);
    if (!curve) return;
    mtr_band band;
    if (mtr_band_curve(curve, t, "eng_Latn") == 0 && mtr_band_detect(&band, curve, 1, t->n_layers, 0.5) == 0)
        sink += band.first + band.last;
    else if (mtr_band_parse(&band, "1-1", t->n_layers))
        band.first = band.last = 1;
    free(curve);
    if (t->n_experts == 0 || (size_t)t->n_layers * t->n_experts > (1u << 22) || t->n_datasets == 0 || t->n_langs == 0)
        return;
    double *delta = malloc((size_t)t->n_layers * t->n_experts * sizeof *delta);
    if (!delta) return;
    const char *ds = t->datasets[0], *gen = t->datasets[t->n_datasets - 1], *lang = t->langs[t->n_langs - 1];
    if (mtr_select_delta(delta, t, ds, lang, gen, t->langs[0]) == 0) sink += delta[0];
    mtr_expert_set task = {0}, ml = {0}, ctl = {0};
    if (mtr_select_task(&task, t, ds, gen, t->langs[0], 0.01, &band, 2) == 0) {
        if (mtr_control_random(&ctl, &task, t->n_experts, 1) == 0) sink += (double)ctl.n;
        mtr_expert_set_free(&ctl);
        if (mtr_select_delta(delta, t, ds, t->langs[0], gen, t->langs[0]) == 0 &&
            mtr_control_outside(&ctl, &task, delta, t->n_layers, t->n_experts, &band, 2) == 0)
            sink += (double)ctl.n;
        mtr_expert_set_free(&ctl);
    }
    if (mtr_select_multilingual(&ml, t, gen, t->langs[0], MTR_ML_3SD, 0.01, NULL) == 0 &&
        mtr_control_multilingual(&ctl, &task, &ml) == 0)
        sink += (double)ctl.n;
    mtr_expert_set_free(&ctl);
    mtr_expert_set_free(&ml);
    mtr_expert_set_free(&task);
    free(delta);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned mode = data[0] % 6;
    data++, size--;
    char path[512], map[512];
    const uint8_t *ptr[FUZZ_MAX_PARTS];
    size_t len[FUZZ_MAX_PARTS];
    switch (mode) {
    case 0: { /* a generic reduce TSV */
        if (fuzz_write(path, sizeof path, "t.tsv", data, size)) return 0;
        mtr_tsv *t = NULL;
        if (mtr_tsv_read(&t, path) == 0) {
            for (size_t r = 0; r < t->n_rows; r++)
                for (size_t c = 0; c < t->n_cols; c++) sink += (double)strlen(t->cells[r * t->n_cols + c]);
            sink += mtr_tsv_col(t, "layer");
        }
        mtr_tsv_free(t);
        break;
    }
    case 1: { /* an accuracy file, whichever form its content has */
        if (fuzz_write(path, sizeof path, "acc", data, size)) return 0;
        mtr_acc_opts o = MTR_ACC_OPTS_INIT;
        use_accuracy(path, &o);
        break;
    }
    case 2: { /* lm-eval results with a task map, subjects merged */
        size_t n = fuzz_split(ptr, len, 2, data, size);
        if (fuzz_write(path, sizeof path, "lm.json", ptr[0], len[0])) return 0;
        if (fuzz_write(map, sizeof map, "map.tsv", n > 1 ? ptr[1] : data, n > 1 ? len[1] : 0)) return 0;
        mtr_acc_opts o = MTR_ACC_OPTS_INIT;
        o.task_map = map;
        o.merge_subtasks = true;
        o.metric = n > 1 ? NULL : "acc,none";
        use_accuracy(path, &o);
        break;
    }
    case 3: { /* a reduce tables directory: div_from_en, entropy, freq, delta (a part absent or empty: no file) */
        static const char *const names[] = {"div_from_en.tsv", "entropy.tsv", "freq.tsv", "delta.tsv"};
        char dir[512], f[700];
        fuzz_empty_dir(dir, sizeof dir, "tables");
        size_t n = fuzz_split(ptr, len, 4, data, size);
        for (size_t i = 0; i < n; i++) {
            if (len[i] == 0) continue;
            char name[64];
            snprintf(name, sizeof name, "tables/%s", names[i]);
            if (fuzz_write(f, sizeof f, name, ptr[i], len[i])) return 0;
        }
        mtr_tables *t = NULL;
        if (mtr_tables_open(&t, dir) == 0) use_tables(t);
        mtr_tables_free(t);
        break;
    }
    case 4: { /* a language table */
        if (fuzz_write(path, sizeof path, "languages.tsv", data, size)) return 0;
        mtr_langs *t = NULL;
        if (mtr_langs_load(&t, path) == 0) {
            static const char *const codes[] = {"en", "eng_Latn", "ENG-latn", "fra", "Chinese", "zz", ""};
            for (size_t i = 0; i < sizeof codes / sizeof *codes; i++) {
                const char *c = NULL;
                if (mtr_langs_normalize(&c, t, codes[i]) == 0) sink += (double)strlen(c);
            }
        }
        mtr_langs_free(t);
        break;
    }
    case 5: { /* a model profile */
        if (fuzz_write(path, sizeof path, "profile.json", data, size)) return 0;
        static mtr_profile p; /* 5 KB of paths: not on the stack */
        if (mtr_profile_load(&p, path) == 0) sink += p.band_first + p.band_last + p.n_layers;
        break;
    }
    }
    return 0;
}
