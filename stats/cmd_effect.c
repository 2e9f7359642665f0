/* cmd_effect.c — `moetrace-stats effect`: the effect of an intervention from baseline and steered accuracies:
 * per-language gains, their mean over the non-English languages with a paired bootstrap CI and a sign test, in
 * the layout of the paper's main table (model, task, layers, tau, op, #experts, baseline, steered, gain). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "mtr_steer.h"

#define VERB "effect"

static void help(void)
{
    printf("Usage: %s " VERB " --baseline FILE --steered FILE [options]\n"
           "\n"
           "Per language: steered - baseline accuracy. Per task: the mean over non-English languages of baseline,\n"
           "steered and gain, a percentile paired bootstrap CI of the mean gain (languages resampled, seeded), an\n"
           "exact two-sided sign test over the languages that moved, and English's own change.\n"
           "\n"
           "  --baseline FILE        accuracies without steering (moetrace TSV/JSON or lm-eval results JSON)\n"
           "  --steered FILE         accuracies under the intervention, same format rules\n"
           "  --steer FILE           the steering file used: fills model, layers, tau, op and #experts\n"
           "  --task NAME            only this task (default: every task in both files)\n"
           "  --model NAME, --layers A-B, --tau X, --op TEXT, --n-experts N   the table's columns by hand\n"
           "  --metric KEY, --task-map FILE, --merge-subtasks, --languages FILE   as in `correlate`\n"
           "  --english CODE         excluded from the mean, reported apart (default eng_Latn)\n"
           "  --skip-missing         drop languages missing from one file instead of failing\n"
           "  --seed S               bootstrap seed (default 1)\n"
           "  --bootstrap N          resamples (default 10000)\n"
           "  --level X              CI level (default 0.95)\n"
           "  --per-lang             print the per-language rows (lang baseline steered gain) instead of the table\n"
           "  --json                 JSON with both\n"
           "  -h, --help             this help\n"
           "\n"
           "TSV columns: model task layers tau op n_experts baseline steered gain gain_ci_lo gain_ci_hi sign_p\n"
           "n_langs n_up n_down english_gain. Values are in the unit of the inputs.\n\n%s",
           PROG, exit_status_text);
}

int cmd_effect(int argc, char **argv)
{
    enum { O_BASE = 256, O_STEERED, O_STEER, O_TASK, O_MODEL, O_LAYERS, O_TAU, O_OP, O_NEXP, O_METRIC, O_MAP,
           O_MERGE, O_LANGS, O_ENG, O_SKIP, O_SEED, O_BOOT, O_LEVEL, O_PERLANG, O_JSON };
    static const mtr_cli_option opts[] = {
        {"baseline", O_BASE, true}, {"steered", O_STEERED, true}, {"steer", O_STEER, true},
        {"task", O_TASK, true}, {"model", O_MODEL, true}, {"layers", O_LAYERS, true}, {"tau", O_TAU, true},
        {"op", O_OP, true}, {"n-experts", O_NEXP, true}, {"metric", O_METRIC, true},
        {"task-map", O_MAP, true}, {"merge-subtasks", O_MERGE, false}, {"languages", O_LANGS, true},
        {"english", O_ENG, true}, {"skip-missing", O_SKIP, false}, {"seed", O_SEED, true},
        {"bootstrap", O_BOOT, true}, {"level", O_LEVEL, true}, {"per-lang", O_PERLANG, false},
        {"json", O_JSON, false}, {"help", 'h', false}};
    const char *base_path = NULL, *steered_path = NULL, *steer_path = NULL, *only_task = NULL, *langs_path = NULL;
    const char *english = "eng_Latn";
    char model[MTR_MAX_NAME] = "model", layers[512] = "-", tau[64] = "-", op[128] = "-", n_exp[32] = "-";
    bool skip = false, per_lang = false, json = false;
    uint64_t seed = 1;
    uint32_t n_boot = 10000;
    double level = 0.95;
    mtr_acc_opts ao = MTR_ACC_OPTS_INIT;
    int c;
    const char *first_pos = NULL;
    for (int ai = 1; ai < argc; ai++) {
        const char *val = NULL;
        c = mtr_cli_id(VERB, argc, argv, &ai, opts, sizeof opts / sizeof opts[0], &val, &first_pos);
        if (c <= 0) {
            if (c < 0) return EXIT_USAGE;
            continue;
        }
        switch (c) {
        case 'h': help(); return EXIT_OK;
        case O_BASE: base_path = val; break;
        case O_STEERED: steered_path = val; break;
        case O_STEER: steer_path = val; break;
        case O_TASK: only_task = val; break;
        case O_MODEL: snprintf(model, sizeof model, "%s", val); break;
        case O_LAYERS: snprintf(layers, sizeof layers, "%s", val); break;
        case O_TAU: snprintf(tau, sizeof tau, "%s", val); break;
        case O_OP: snprintf(op, sizeof op, "%s", val); break;
        case O_NEXP: snprintf(n_exp, sizeof n_exp, "%s", val); break;
        case O_METRIC: ao.metric = val; break;
        case O_MAP: ao.task_map = val; break;
        case O_MERGE: ao.merge_subtasks = true; break;
        case O_LANGS: langs_path = val; break;
        case O_ENG: english = val; break;
        case O_SKIP: skip = true; break;
        case O_PERLANG: per_lang = true; break;
        case O_JSON: json = true; break;
        case O_SEED:
            if (cli_parse_u64(&seed, val)) {
                cli_error(VERB, "--seed '%s' is not a non-negative integer", val);
                return EXIT_USAGE;
            }
            break;
        case O_BOOT:
            if (cli_parse_u32(&n_boot, val) || n_boot < 100) {
                cli_error(VERB, "--bootstrap '%s' is not an integer >= 100", val);
                return EXIT_USAGE;
            }
            break;
        case O_LEVEL:
            if (cli_parse_double(&level, val) || level <= 0 || level >= 1) {
                cli_error(VERB, "--level '%s' is not a number in (0, 1)", val);
                return EXIT_USAGE;
            }
            break;
        default:
            break;
        }
    }
    if (first_pos || !base_path || !steered_path) {
        cli_error(VERB, first_pos ? "unexpected argument '%s'" : "--baseline and --steered are required%s",
                  first_pos ? first_pos : " (see --help)");
        return EXIT_USAGE;
    }
    int rc, ex = EXIT_OK;
    mtr_langs *langs = NULL;
    mtr_accuracy *ba = NULL, *sa = NULL;
    mtr_steer *st = NULL;
    const char **tasks = NULL;
    size_t n_tasks = 0;
    double *d = NULL;
    json_t *root = NULL, *jrows = NULL;
    if ((ex = cli_load_langs(&langs, VERB, langs_path))) goto out_free;
    const char *eng;
    if (mtr_langs_normalize(&eng, langs, english)) {
        cli_error(VERB, "--english: %s", mtr_errmsg());
        ex = EXIT_USAGE;
        goto out_free;
    }
    if ((rc = mtr_accuracy_load(&ba, base_path, langs, &ao)) || (rc = mtr_accuracy_load(&sa, steered_path, langs, &ao))) {
        ex = cli_fail(VERB, rc, mtr_errmsg());
        goto out_free;
    }
    if (steer_path) {
        if ((rc = mtr_steer_load(&st, steer_path))) {
            ex = cli_fail(VERB, rc, mtr_errmsg());
            goto out_free;
        }
        snprintf(model, sizeof model, "%s", st->model_id);
        size_t o = 0;
        layers[0] = '\0';
        for (uint32_t i = 0; i < st->n_target && o + 16 < sizeof layers; i++) {
            uint32_t j = i;
            while (j + 1 < st->n_target && st->target_layers[j + 1] == st->target_layers[j] + 1) j++;
            o += (size_t)snprintf(layers + o, sizeof layers - o, j > i ? "%s%u-%u" : "%s%u", o ? "," : "",
                                  st->target_layers[i] + 1, st->target_layers[j] + 1);
            i = j;
        }
        json_t *p = json_loads(st->provenance, 0, NULL), *jt = json_object_get(p, "tau");
        if (json_is_number(jt)) snprintf(tau, sizeof tau, "%g", json_number_value(jt));
        json_decref(p);
        if (st->op == MTR_STEER_SOFT) snprintf(op, sizeof op, "soft, lambda=%g", st->lambda);
        else if (st->op == MTR_STEER_BIAS) snprintf(op, sizeof op, "bias");
        else snprintf(op, sizeof op, "%s, eps %s %g", mtr_steer_op_name(st->op), mtr_steer_eps_name(st->eps_mode), st->eps);
        snprintf(n_exp, sizeof n_exp, "%zu", st->n_sel);
    }
    if ((rc = mtr_accuracy_tasks(&tasks, &n_tasks, ba))) {
        ex = cli_fail(VERB, rc, mtr_errmsg());
        goto out_free;
    }
    d = malloc((ba->n * 3 + 1) * sizeof *d);
    if (!d) {
        ex = cli_fail(VERB, MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    if (json) {
        root = json_object();
        jrows = json_array();
        json_object_set_new(root, "producer", json_string(PROG " " VERB " " MTR_VERSION_STRING));
        json_object_set_new(root, "command", json_string(cli_command_line));
        json_object_set_new(root, "baseline", json_string(base_path));
        json_object_set_new(root, "steered", json_string(steered_path));
        /* the intervention by the name its steering file gives it (task, outside_band, random, ...) */
        json_object_set_new(root, "steer", steer_path ? json_string(steer_path) : json_null());
        json_object_set_new(root, "intervention", st ? json_string(st->name) : json_null());
        json_object_set_new(root, "bootstrap", json_pack("{s:I,s:i,s:f}", "seed", (json_int_t)seed, "resamples",
                                                         (int)n_boot, "level", level));
    } else {
        cli_provenance(stdout, VERB);
        printf("# baseline: %s (%s)\n# steered: %s (%s)\n", base_path, ba->format, steered_path, sa->format);
        if (steer_path) printf("# steering file: %s (intervention %s)\n", steer_path, st->name);
        printf("# mean over non-English languages; gain CI: paired percentile bootstrap over languages, %u resamples, "
               "seed %llu, level %g; sign test: exact binomial, two-sided, ties dropped\n",
               n_boot, (unsigned long long)seed, level);
        if (per_lang) printf("#task\tlang\tbaseline\tsteered\tgain\n");
        else printf("#model\ttask\tlayers\ttau\top\tn_experts\tbaseline\tsteered\tgain\tgain_ci_lo\tgain_ci_hi\t"
                    "sign_p\tn_langs\tn_up\tn_down\tenglish_gain\n");
    }
    size_t n_done = 0;
    for (size_t k = 0; k < n_tasks; k++) {
        const char *task = tasks[k];
        if (only_task && strcmp(task, only_task)) continue;
        size_t n = 0, up = 0, down = 0;
        double *bv = d, *sv = d + ba->n, *gv = d + 2 * ba->n, eng_gain = NAN, bm = 0, sm = 0;
        json_t *jl = json ? json_array() : NULL;
        for (size_t i = 0; i < ba->n; i++) {
            const mtr_acc_row *b = &ba->rows[i];
            if (strcmp(b->task, task)) continue;
            const mtr_acc_row *s = mtr_accuracy_find(sa, b->lang, task);
            if (!s) {
                if (skip) continue;
                cli_error(VERB, "%s: no accuracy for %s (task %s) (use --skip-missing to drop it)", steered_path,
                          b->lang, task);
                json_decref(jl);
                ex = EXIT_DATA;
                goto out_free;
            }
            double g = s->value - b->value;
            if (per_lang && !json) printf("%s\t%s\t%.6g\t%.6g\t%.6g\n", task, b->lang, b->value, s->value, g);
            if (jl)
                json_array_append_new(jl, json_pack("{s:s,s:f,s:f,s:f}", "lang", b->lang, "baseline", b->value,
                                                    "steered", s->value, "gain", g));
            if (!strcmp(b->lang, eng)) {
                eng_gain = g;
                continue;
            }
            bv[n] = b->value;
            sv[n] = s->value;
            gv[n++] = g;
            bm += b->value;
            sm += s->value;
            up += g > 0;
            down += g < 0;
        }
        for (size_t i = 0; i < sa->n && !skip; i++)
            if (!strcmp(sa->rows[i].task, task) && !mtr_accuracy_find(ba, sa->rows[i].lang, task)) {
                cli_error(VERB, "%s: no accuracy for %s (task %s) (use --skip-missing to drop it)", base_path,
                          sa->rows[i].lang, task);
                json_decref(jl);
                ex = EXIT_DATA;
                goto out_free;
            }
        if (n < MTR_STATS_MIN_N) {
            cli_error(VERB, "task %s: %zu non-English languages in both files: need at least %d", task, n, MTR_STATS_MIN_N);
            json_decref(jl);
            ex = EXIT_DATA;
            goto out_free;
        }
        double mean, lo, hi, sp;
        if ((rc = mtr_stats_bootstrap_mean(&mean, &lo, &hi, gv, 1, n, seed, n_boot, level)) ||
            (rc = mtr_stats_sign_test(&sp, up, down))) {
            json_decref(jl);
            ex = cli_fail(VERB, rc, mtr_errmsg());
            goto out_free;
        }
        bm /= (double)n;
        sm /= (double)n;
        if (json) {
            json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:f,s:f,s:f,s:[f,f],s:f,s:i,s:i,s:i}", "model", model,
                                  "task", task, "layers", layers, "tau", tau, "op", op, "n_experts", n_exp,
                                  "baseline", bm, "steered", sm, "gain", mean, "gain_ci", lo, hi, "sign_p", sp,
                                  "n_langs", (int)n, "n_up", (int)up, "n_down", (int)down);
            json_object_set_new(o, "english_gain", cli_jnum(eng_gain));
            json_object_set_new(o, "per_lang", jl);
            json_array_append_new(jrows, o);
        } else if (!per_lang) {
            printf("%s\t%s\t%s\t%s\t%s\t%s\t%.6g\t%.6g\t%.6g\t%.6g\t%.6g\t%.6g\t%zu\t%zu\t%zu\t%.6g\n", model, task,
                   layers, tau, op, n_exp, bm, sm, mean, lo, hi, sp, n, up, down, eng_gain);
        }
        n_done++;
    }
    if (!n_done) {
        cli_error(VERB, "%s: no task%s%s in common", base_path, only_task ? " " : "", only_task ? only_task : "");
        ex = EXIT_DATA;
        goto out_free;
    }
    if (json) {
        json_object_set_new(root, "rows", jrows);
        jrows = NULL;
        ex = cli_print_json(VERB, root);
        root = NULL;
    }
out_free:
    json_decref(jrows);
    json_decref(root);
    free(d);
    free(tasks);
    mtr_steer_destroy(st);
    mtr_accuracy_free(ba);
    mtr_accuracy_free(sa);
    mtr_langs_free(langs);
    return ex;
}
