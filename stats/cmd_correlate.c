/* cmd_correlate.c — `moetrace-stats correlate`: for every layer and for the band mean, across the non-English
 * languages, the correlation of divergence from English with task accuracy (docs/ARCHITECTURE.md §3 "Correlation with
 * performance"), as TSV or JSON, with a one-line verdict per model and task. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define VERB "correlate"

static void help(void)
{
    printf("Usage: %s " VERB " --tables DIR --accuracy FILE [options]\n"
           "\n"
           "Across the non-English languages, correlate divergence from English (div_from_en.tsv) with accuracy,\n"
           "for every layer and for the mean over the middle band: Pearson r with its t-test p, Spearman rho with\n"
           "its p, percentile bootstrap 95%% CIs over languages and permutation p-values (two-sided). Ends with a\n"
           "one-line verdict per task: sign and strength of the band correlation.\n"
           "\n"
           "p-values with few languages: up to %d languages every ordering of the accuracies is enumerated (n!), so\n"
           "the permutation p-values are exact and Spearman's p is the exact permutation p (with 5 languages and\n"
           "rho = -1 it is 2/120; the t approximation would say 1e-24); with more languages Spearman's p is the t\n"
           "approximation and the permutation p is sampled. Pearson's p is always the t-test (exact under bivariate\n"
           "normality). The method of each p is printed (columns spearman_p_method, p_perm_method: t, exact,\n"
           "monte-carlo). Bootstrap CIs over so few languages are unreliable (a perfectly ordered sample gives\n"
           "[-1, -1]): the verdict calls a band correlation conclusive only when the CI excludes 0 and the\n"
           "permutation p is below 1 - level.\n"
           "\n"
           "Inputs:\n"
           "  --tables DIR           reduce tables (a directory of TSVs; tables.h5 later)\n"
           "  --accuracy FILE        accuracies: moetrace TSV (lang task metric value n), moetrace JSON, or\n"
           "                         lm-evaluation-harness results JSON\n"
           "  --task NAME            only this task (default: every task in FILE)\n"
           "  --metric KEY           lm-eval metric (default acc,none, else exact_match,flexible-extract)\n"
           "  --task-map FILE        TSV task, lang[, label] for lm-eval tasks the built-in rules do not place\n"
           "  --merge-subtasks       average tasks that share the part before ':' (Global-MMLU subjects)\n"
           "  --languages FILE       language table (default: languages.tsv in the config directory)\n"
           "  --english CODE         reference language (default eng_Latn)\n"
           "  --skip-missing         drop languages without an accuracy instead of failing\n"
           "\n"
           "Band (1-based, inclusive):\n"
           "  --profile NAME|FILE    model profile (config/models/NAME.json): its middle band and name\n"
           "  --band A-B|detect|FILE  the band, detect it from the U-curve, or the band of a moetrace-stats output\n"
           "                         (band.txt or band.json from `band`; default: the profile's, else detect)\n"
           "  --alpha X              detection threshold min + X*(max-min) (default 0.2)\n"
           "  --model NAME           model name in the output (default: the profile's, else \"model\")\n"
           "\n"
           "Resampling:\n"
           "  --seed S               seed of the bootstrap and permutations (default 1)\n"
           "  --bootstrap N          bootstrap resamples (default 10000)\n"
           "  --permutations N       permutations (default 10000)\n"
           "  --level X              CI level (default 0.95)\n"
           "\n"
           "Output:\n"
           "  --json                 JSON instead of TSV\n"
           "  -h, --help             this help\n"
           "\n"
           "TSV columns: model task layer n_langs pearson_r pearson_p pearson_ci_lo pearson_ci_hi pearson_p_perm\n"
           "spearman_rho spearman_p spearman_ci_lo spearman_ci_hi spearman_p_perm spearman_p_method p_perm_method;\n"
           "layer is 1-based, or \"band\" for the band mean. The verdict is the last line, \"# verdict: ...\".\n"
           "\n%s",
           PROG, MTR_STATS_EXACT_MAX_N, exit_status_text);
}

static const char *strength(double r)
{
    double a = fabs(r);
    return a >= 0.7 ? "strong" : a >= 0.5 ? "moderate" : a >= 0.3 ? "weak" : "negligible";
}

/* "exact: all 120 orderings" / "t approximation" / "10000 random orderings" */
static void method_text(char *buf, size_t cap, mtr_p_method m, uint64_t n_perm)
{
    if (m == MTR_P_EXACT) snprintf(buf, cap, "exact: all %llu orderings", (unsigned long long)n_perm);
    else if (m == MTR_P_MONTE_CARLO) snprintf(buf, cap, "%llu random orderings", (unsigned long long)n_perm);
    else snprintf(buf, cap, "t approximation");
}

static void verdict(char *buf, size_t cap, const char *model, const char *task, const cli_band *b,
                    const mtr_corr_result *c, double level)
{
    const mtr_corr_stat *p = &c->pearson, *s = &c->spearman;
    bool excl = (p->ci_lo > 0.0 && p->ci_hi > 0.0) || (p->ci_lo < 0.0 && p->ci_hi < 0.0);
    bool sig = p->p_perm < 1.0 - level;
    char pm[64], sm[64], why[160], small[160] = "";
    method_text(pm, sizeof pm, p->p_perm_method, p->n_perm_used);
    method_text(sm, sizeof sm, s->p_method, s->n_perm_used);
    snprintf(why, sizeof why, !excl ? "the CI includes 0: not conclusive"
                              : !sig ? "the permutation p is not below %.3g: not conclusive"
                              : p->r < 0 ? "languages routed more like English in the middle layers score higher"
                                         : "languages routed more like English in the middle layers score lower",
             1.0 - level);
    if (c->n <= MTR_STATS_EXACT_MAX_N)
        snprintf(small, sizeof small, " (with %zu languages the bootstrap CI is unreliable; the permutation p-values are "
                                      "exact)", c->n);
    snprintf(buf, cap,
             "%s, %s, band %u-%u (%s): %s %s correlation between divergence from English and accuracy: Pearson r = "
             "%.3f [%.3g%% CI %.3f, %.3f], p = %.3g (t-test; permutation p = %.3g, %s); Spearman rho = %.3f, p = %.3g "
             "(%s); %zu languages; %s%s",
             model, task, b->band.first, b->band.last, b->band.detected ? "detected" : "profile/given",
             strength(p->r), p->r < 0 ? "negative" : "positive", p->r, 100.0 * level, p->ci_lo, p->ci_hi, p->p,
             p->p_perm, pm, s->r, s->p, sm, c->n, why, small);
}

int cmd_correlate(int argc, char **argv)
{
    enum { O_TABLES = 256, O_ACC, O_TASK, O_METRIC, O_MAP, O_MERGE, O_LANGS, O_ENG, O_SKIP, O_PROFILE, O_BAND,
           O_ALPHA, O_MODEL, O_SEED, O_BOOT, O_PERM, O_LEVEL, O_JSON };
    static const mtr_cli_option opts[] = {
        {"tables", O_TABLES, true}, {"accuracy", O_ACC, true}, {"task", O_TASK, true},
        {"metric", O_METRIC, true}, {"task-map", O_MAP, true}, {"merge-subtasks", O_MERGE, false},
        {"languages", O_LANGS, true}, {"english", O_ENG, true}, {"skip-missing", O_SKIP, false},
        {"profile", O_PROFILE, true}, {"band", O_BAND, true}, {"alpha", O_ALPHA, true},
        {"model", O_MODEL, true}, {"seed", O_SEED, true}, {"bootstrap", O_BOOT, true},
        {"permutations", O_PERM, true}, {"level", O_LEVEL, true}, {"json", O_JSON, false},
        {"help", 'h', false}};
    const char *tables_path = NULL, *acc_path = NULL, *only_task = NULL, *langs_path = NULL, *english = "eng_Latn";
    const char *profile_arg = NULL, *band_arg = NULL, *model = NULL;
    bool skip_missing = false, json = false;
    double alpha = 0.2;
    mtr_acc_opts ao = MTR_ACC_OPTS_INIT;
    mtr_corr_opts co = MTR_CORR_OPTS_INIT;
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
        case O_TABLES: tables_path = val; break;
        case O_ACC: acc_path = val; break;
        case O_TASK: only_task = val; break;
        case O_METRIC: ao.metric = val; break;
        case O_MAP: ao.task_map = val; break;
        case O_MERGE: ao.merge_subtasks = true; break;
        case O_LANGS: langs_path = val; break;
        case O_ENG: english = val; break;
        case O_SKIP: skip_missing = true; break;
        case O_PROFILE: profile_arg = val; break;
        case O_BAND: band_arg = val; break;
        case O_MODEL: model = val; break;
        case O_JSON: json = true; break;
        case O_ALPHA:
            if (cli_parse_double(&alpha, val) || alpha < 0 || alpha > 1) {
                cli_error(VERB, "--alpha '%s' is not a number in [0, 1]", val);
                return EXIT_USAGE;
            }
            break;
        case O_SEED:
            if (cli_parse_u64(&co.seed, val)) {
                cli_error(VERB, "--seed '%s' is not a non-negative integer", val);
                return EXIT_USAGE;
            }
            break;
        case O_BOOT:
        case O_PERM: {
            uint32_t v;
            if (cli_parse_u32(&v, val) || v < 100 || v > 100000000u) {
                cli_error(VERB, "--%s '%s' is not an integer in 100..100000000", c == O_BOOT ? "bootstrap" : "permutations",
                          val);
                return EXIT_USAGE;
            }
            *(c == O_BOOT ? &co.n_boot : &co.n_perm) = v;
            break;
        }
        case O_LEVEL:
            if (cli_parse_double(&co.level, val) || co.level <= 0 || co.level >= 1) {
                cli_error(VERB, "--level '%s' is not a number in (0, 1)", val);
                return EXIT_USAGE;
            }
            break;
        default:
            break;
        }
    }
    if (first_pos) {
        cli_error(VERB, "unexpected argument '%s'", first_pos);
        return EXIT_USAGE;
    }
    if (!tables_path || !acc_path) {
        cli_error(VERB, "--tables and --accuracy are required (see --help)");
        return EXIT_USAGE;
    }

    int rc = 0, ex = EXIT_OK;
    mtr_langs *langs = NULL;
    mtr_accuracy *acc = NULL;
    mtr_tables *t = NULL;
    mtr_profile prof;
    const char **tasks = NULL, **tl = NULL;
    size_t n_tasks = 0;
    double *x = NULL, *y = NULL;
    json_t *jroot = NULL;
    cli_band band;

    if ((ex = cli_load_langs(&langs, VERB, langs_path))) goto out_free;
    const char *eng;
    if (mtr_langs_normalize(&eng, langs, english)) {
        cli_error(VERB, "--english: %s", mtr_errmsg());
        ex = EXIT_USAGE;
        goto out_free;
    }
    if ((rc = mtr_accuracy_load(&acc, acc_path, langs, &ao)) || (rc = mtr_tables_open(&t, tables_path))) {
        ex = cli_fail(VERB, rc, mtr_errmsg());
        goto out_free;
    }
    if (!t->div_en) {
        cli_error(VERB, "%s: no div_from_en.tsv: nothing to correlate", tables_path);
        ex = EXIT_DATA;
        goto out_free;
    }
    if (profile_arg && (rc = mtr_profile_load(&prof, profile_arg))) {
        ex = cli_fail(VERB, rc, mtr_errmsg());
        goto out_free;
    }
    if (profile_arg && prof.n_layers != t->n_layers) {
        cli_error(VERB, "%s: tables have %u layers, profile %s has %u", tables_path, t->n_layers, prof.name,
                  prof.n_layers);
        ex = EXIT_DATA;
        goto out_free;
    }
    if ((ex = cli_resolve_band(&band, VERB, band_arg, profile_arg ? &prof : NULL, t, eng, alpha))) goto out_free;
    if (band.band.last > t->n_layers) {
        cli_error(VERB, "band %u-%u lies outside the %u layers of %s", band.band.first, band.band.last, t->n_layers,
                  tables_path);
        ex = EXIT_DATA;
        goto out_free;
    }
    if (!model) model = profile_arg ? prof.name : "model";

    /* the languages of the tables, normalised; English is the reference, not an observation */
    size_t L = t->n_layers, G = 0;
    tl = calloc(t->n_langs + 1, sizeof *tl);
    x = malloc((t->n_langs * (L + 1) + 1) * sizeof *x);
    y = malloc((t->n_langs + 1) * sizeof *y);
    if (!tl || !x || !y) {
        ex = cli_fail(VERB, MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    if ((rc = mtr_accuracy_tasks(&tasks, &n_tasks, acc))) {
        ex = cli_fail(VERB, rc, mtr_errmsg());
        goto out_free;
    }
    if (only_task) {
        bool found = false;
        for (size_t i = 0; i < n_tasks; i++) found |= !strcmp(tasks[i], only_task);
        if (!found) {
            cli_error(VERB, "%s: no task '%s'", acc_path, only_task);
            ex = EXIT_DATA;
            goto out_free;
        }
    }

    if (json) {
        jroot = json_object();
        json_object_set_new(jroot, "producer", json_string(PROG " " VERB " " MTR_VERSION_STRING));
        json_object_set_new(jroot, "command", json_string(cli_command_line));
        json_object_set_new(jroot, "tables", json_string(tables_path));
        json_object_set_new(jroot, "accuracy", json_string(acc_path));
        json_object_set_new(jroot, "accuracy_format", json_string(acc->format));
        json_object_set_new(jroot, "model", json_string(model));
        json_t *jb = json_object();
        json_object_set_new(jb, "first", json_integer(band.band.first));
        json_object_set_new(jb, "last", json_integer(band.band.last));
        json_object_set_new(jb, "indexing", json_string("1-based inclusive"));
        json_object_set_new(jb, "detected", json_boolean(band.band.detected));
        json_object_set_new(jb, "source", json_string(band.source));
        json_object_set_new(jroot, "band", jb);
        json_t *js = json_object();
        json_object_set_new(js, "seed", json_integer((json_int_t)co.seed));
        json_object_set_new(js, "bootstrap", json_integer(co.n_boot));
        json_object_set_new(js, "permutations", json_integer(co.n_perm));
        json_object_set_new(js, "level", json_real(co.level));
        json_object_set_new(js, "ci", json_string("percentile bootstrap over languages"));
        json_object_set_new(js, "exact_max_n", json_integer(MTR_STATS_EXACT_MAX_N));
        json_object_set_new(js, "p_methods",
                            json_string("pearson p: t-test; spearman p: exact permutation p for n <= exact_max_n, else t "
                                        "approximation; p_perm: exact (all n! orderings) for n <= exact_max_n, else "
                                        "monte-carlo"));
        json_object_set_new(jroot, "settings", js);
        json_object_set_new(jroot, "results", json_array());
    } else {
        cli_provenance(stdout, VERB);
        printf("# tables: %s\n# accuracy: %s (%s)\n", tables_path, acc_path, acc->format);
        printf("# band: %u-%u (1-based, inclusive): %s\n", band.band.first, band.band.last, band.source);
        printf("# x: divergence from %s (div_from_en), per layer and averaged over the band; y: accuracy\n", eng);
        printf("# bootstrap: %u resamples of the languages, %.0f%% percentile CI, seed %llu; permutations: %u, "
               "two-sided\n", co.n_boot, 100 * co.level, (unsigned long long)co.seed, co.n_perm);
        printf("# p-values: Pearson p is the t-test; up to %d languages the permutation p-values and Spearman's p are "
               "exact (all n! orderings), above, permutations are sampled and Spearman's p is the t approximation "
               "(columns spearman_p_method, p_perm_method)\n", MTR_STATS_EXACT_MAX_N);
        for (size_t i = 0; i < t->n_prov; i++) printf("# input %s\n", t->prov[i]);
        printf("#model\ttask\tlayer\tn_langs\tpearson_r\tpearson_p\tpearson_ci_lo\tpearson_ci_hi\tpearson_p_perm\t"
               "spearman_rho\tspearman_p\tspearman_ci_lo\tspearman_ci_hi\tspearman_p_perm\tspearman_p_method\t"
               "p_perm_method\n");
    }

    char verdicts[16][1024];
    size_t n_verdicts = 0;
    for (size_t k = 0; k < n_tasks; k++) {
        const char *task = tasks[k];
        if (only_task && strcmp(task, only_task)) continue;
        /* observations: languages with an accuracy for this task; x (G, L+1) with the band mean last */
        G = 0;
        for (size_t g = 0; g < t->n_langs; g++) {
            const char *code;
            if (mtr_langs_normalize(&code, langs, t->langs[g])) {
                cli_error(VERB, "%s: unknown language code '%s' in the tables", tables_path, t->langs[g]);
                ex = EXIT_DATA;
                goto out_free;
            }
            if (!strcmp(code, eng)) continue;
            const mtr_acc_row *row = mtr_accuracy_find(acc, code, task);
            if (!row) {
                if (skip_missing) continue;
                cli_error(VERB, "%s: no accuracy for %s (task %s) (use --skip-missing to drop it)", acc_path, code, task);
                ex = EXIT_DATA;
                goto out_free;
            }
            double bs = 0.0;
            size_t bn = 0;
            for (size_t l = 0; l < L; l++) {
                double v = t->div_en[g * L + l];
                x[G * (L + 1) + l] = v;
                if (l + 1 >= band.band.first && l + 1 <= band.band.last && !isnan(v)) {
                    bs += v;
                    bn++;
                }
            }
            x[G * (L + 1) + L] = bn ? bs / (double)bn : NAN;
            y[G] = row->value;
            tl[G++] = code;
        }
        if (G < MTR_STATS_MIN_N) {
            cli_error(VERB, "%s: %zu non-English languages with an accuracy for task %s: a correlation needs at least %d",
                      acc_path, G, task, MTR_STATS_MIN_N);
            ex = EXIT_DATA;
            goto out_free;
        }
        json_t *jtask = NULL, *jlayers = NULL;
        if (json) {
            jtask = json_object();
            json_t *jl = json_array();
            for (size_t g = 0; g < G; g++) json_array_append_new(jl, json_string(tl[g]));
            json_object_set_new(jtask, "task", json_string(task));
            json_object_set_new(jtask, "languages", jl);
            jlayers = json_array();
        } else {
            printf("# languages (%s): ", task);
            for (size_t g = 0; g < G; g++) printf("%s%s", g ? "," : "", tl[g]);
            printf("\n");
        }
        mtr_corr_result band_res;
        memset(&band_res, 0, sizeof band_res);
        for (size_t l = 0; l <= L; l++) {
            double xs[1024], ys[1024];
            size_t n = 0;
            for (size_t g = 0; g < G && n < 1024; g++)
                if (!isnan(x[g * (L + 1) + l])) {
                    xs[n] = x[g * (L + 1) + l];
                    ys[n++] = y[g];
                }
            mtr_corr_result r;
            memset(&r, 0, sizeof r);
            r.n = n;
            if (n < MTR_STATS_MIN_N || mtr_stats_correlate(&r, xs, 1, ys, 1, n, &co) != 0) {
                if (l == L) {
                    cli_error(VERB, "task %s, band mean: %s", task,
                              n < MTR_STATS_MIN_N ? "fewer than 3 languages with values" : mtr_errmsg());
                    json_decref(jtask);
                    json_decref(jlayers);
                    ex = EXIT_DATA;
                    goto out_free;
                }
                r.pearson.r = r.pearson.p = r.pearson.ci_lo = r.pearson.ci_hi = r.pearson.p_perm = NAN;
                r.pearson.p_method = r.pearson.p_perm_method = MTR_P_METHOD_COUNT; /* printed as "-" / null */
                r.spearman = r.pearson;
            }
            if (l == L) band_res = r;
            char lname[32];
            if (l == L) snprintf(lname, sizeof lname, "band");
            else snprintf(lname, sizeof lname, "%zu", l + 1);
            if (json) {
                json_t *o = json_object();
                json_object_set_new(o, "layer", l == L ? json_string("band") : json_integer((json_int_t)l + 1));
                json_object_set_new(o, "n_langs", json_integer((json_int_t)r.n));
                const mtr_corr_stat *st[2] = {&r.pearson, &r.spearman};
                for (int q = 0; q < 2; q++) {
                    json_t *s = json_object(), *ci = json_array();
                    json_object_set_new(s, "r", cli_jnum(st[q]->r));
                    json_object_set_new(s, "p", cli_jnum(st[q]->p));
                    json_array_append_new(ci, cli_jnum(st[q]->ci_lo));
                    json_array_append_new(ci, cli_jnum(st[q]->ci_hi));
                    json_object_set_new(s, "ci", ci);
                    json_object_set_new(s, "p_perm", cli_jnum(st[q]->p_perm));
                    json_object_set_new(s, "n_boot_used", json_integer(st[q]->n_boot_used));
                    const char *pmn = mtr_stats_p_method_name(st[q]->p_method);
                    const char *ppn = mtr_stats_p_method_name(st[q]->p_perm_method);
                    json_object_set_new(s, "p_method", pmn ? json_string(pmn) : json_null());
                    json_object_set_new(s, "p_perm_method", ppn ? json_string(ppn) : json_null());
                    json_object_set_new(s, "n_perm", json_integer((json_int_t)st[q]->n_perm_used));
                    json_object_set_new(o, q ? "spearman" : "pearson", s);
                }
                if (l == L) json_object_set_new(jtask, "band_mean", o);
                else json_array_append_new(jlayers, o);
            } else {
                const char *spm = mtr_stats_p_method_name(r.spearman.p_method);
                const char *ppm = mtr_stats_p_method_name(r.spearman.p_perm_method);
                printf("%s\t%s\t%s\t%zu\t%.6f\t%.6g\t%.6f\t%.6f\t%.6g\t%.6f\t%.6g\t%.6f\t%.6f\t%.6g\t%s\t%s\n", model, task,
                       lname, r.n, r.pearson.r, r.pearson.p, r.pearson.ci_lo, r.pearson.ci_hi, r.pearson.p_perm,
                       r.spearman.r, r.spearman.p, r.spearman.ci_lo, r.spearman.ci_hi, r.spearman.p_perm,
                       spm ? spm : "-", ppm ? ppm : "-");
            }
        }
        if (n_verdicts < 16) verdict(verdicts[n_verdicts++], sizeof verdicts[0], model, task, &band, &band_res, co.level);
        if (json) {
            json_object_set_new(jtask, "layers", jlayers);
            json_object_set_new(jtask, "verdict", json_string(verdicts[n_verdicts - 1]));
            json_array_append_new(json_object_get(jroot, "results"), jtask);
        }
    }
    if (json) {
        ex = cli_print_json(VERB, jroot);
        jroot = NULL;
    } else {
        for (size_t i = 0; i < n_verdicts; i++) printf("# verdict: %s\n", verdicts[i]);
    }
out_free:
    json_decref(jroot);
    free(x);
    free(y);
    free(tl);
    free(tasks);
    mtr_tables_free(t);
    mtr_accuracy_free(acc);
    mtr_langs_free(langs);
    return ex;
}
