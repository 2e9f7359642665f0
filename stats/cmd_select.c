/* cmd_select.c — expert selection verbs: `experts` (task and multilingual-specialised experts), `overlap`
 * (their overlap as a function of tau) and `steer` (one steering file per intervention: the selection and every
 * control, each with its EasySteer and flat-matrix exports). docs/ARCHITECTURE.md §3 "Specialisation", §4. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "mtr_steer.h"

typedef struct {
    const char *tables, *dataset, *generic, *english, *profile, *band, *out, *controls, *model_id, *taus;
    double tau, ml_tau, alpha, lambda, eps;
    bool has_ml_tau, has_eps, json, ml_in_band;
    mtr_ml_rule ml_rule;
    mtr_steer_op op;
    mtr_steer_eps eps_mode;
    uint32_t cap, top_k;
    uint64_t seed;
} sel_args;

static void common_help(void)
{
    printf("Selection:\n"
           "  --tables DIR           reduce tables with freq.tsv (and/or delta.tsv)\n"
           "  --dataset D            task dataset (required), e.g. math\n"
           "  --generic G            generic corpus, the Delta baseline with English (default flores, else the\n"
           "                         first other dataset)\n"
           "  --english CODE         English (default eng_Latn)\n"
           "  --tau X                Delta threshold (default 0.3)\n"
           "  --ml-rule delta|3sd    multilingual experts: Delta(lang) > tau for any non-English language on the\n"
           "                         generic corpus, or mean-weight difference > 3 population SDs of its layer\n"
           "  --ml-tau X             tau of the multilingual rule (default: --tau)\n"
           "  --ml-in-band           restrict multilingual experts to the band (default: all layers)\n"
           "  --cap K                at most K task experts per layer, largest Delta first (default: none; top-k\n"
           "                         for --op hard)\n"
           "Band (1-based, inclusive):\n"
           "  --profile NAME|FILE    model profile: band, model id, dimensions\n"
           "  --band A-B|detect|FILE  the band, detected, or that of a moetrace-stats output such as band.txt\n"
           "                         (default: the profile's, else detected)\n"
           "  --alpha X              detection threshold (default 0.2)\n");
}

static int parse_sel(sel_args *a, const char *verb, int argc, char **argv, void (*help)(void))
{
    enum { O_TABLES = 256, O_DATASET, O_GENERIC, O_ENG, O_TAU, O_MLRULE, O_MLTAU, O_MLBAND, O_CAP, O_PROFILE,
           O_BAND, O_ALPHA, O_OUT, O_OP, O_LAMBDA, O_EPSMODE, O_EPS, O_SEED, O_CONTROLS, O_MODELID, O_TOPK, O_TAUS,
           O_JSON };
    static const mtr_cli_option opts[] = {
        {"tables", O_TABLES, true}, {"dataset", O_DATASET, true}, {"generic", O_GENERIC, true},
        {"english", O_ENG, true}, {"tau", O_TAU, true}, {"ml-rule", O_MLRULE, true},
        {"ml-tau", O_MLTAU, true}, {"ml-in-band", O_MLBAND, false}, {"cap", O_CAP, true},
        {"profile", O_PROFILE, true}, {"band", O_BAND, true}, {"alpha", O_ALPHA, true}, {"out", O_OUT, true},
        {"op", O_OP, true}, {"lambda", O_LAMBDA, true}, {"eps-mode", O_EPSMODE, true}, {"eps", O_EPS, true},
        {"seed", O_SEED, true}, {"controls", O_CONTROLS, true}, {"model-id", O_MODELID, true},
        {"top-k", O_TOPK, true}, {"taus", O_TAUS, true}, {"json", O_JSON, false}, {"help", 'h', false}};
    memset(a, 0, sizeof *a);
    a->english = "eng_Latn";
    a->tau = 0.3;
    a->alpha = 0.2;
    a->lambda = MTR_STEER_DEFAULT_LAMBDA;
    a->eps = MTR_STEER_DEFAULT_EPS_SD;
    a->seed = 1;
    a->op = MTR_STEER_SOFT;
    a->eps_mode = MTR_STEER_EPS_GAUSSIAN;
    a->controls = "outside,multilingual,random,deactivate";
    a->taus = "0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5";
    int c;
    const char *first_pos = NULL;
    for (int ai = 1; ai < argc; ai++) {
        const char *val = NULL;
        c = mtr_cli_id(verb, argc, argv, &ai, opts, sizeof opts / sizeof opts[0], &val, &first_pos);
        if (c <= 0) {
            if (c < 0) return EXIT_USAGE;
            continue;
        }
        double *dv = NULL;
        const char *dname = NULL;
        switch (c) {
        case 'h': help(); return -2;
        case O_TABLES: a->tables = val; break;
        case O_DATASET: a->dataset = val; break;
        case O_GENERIC: a->generic = val; break;
        case O_ENG: a->english = val; break;
        case O_PROFILE: a->profile = val; break;
        case O_BAND: a->band = val; break;
        case O_OUT: a->out = val; break;
        case O_CONTROLS: a->controls = val; break;
        case O_MODELID: a->model_id = val; break;
        case O_TAUS: a->taus = val; break;
        case O_JSON: a->json = true; break;
        case O_MLBAND: a->ml_in_band = true; break;
        case O_TAU: dv = &a->tau, dname = "tau"; break;
        case O_MLTAU: dv = &a->ml_tau, dname = "ml-tau", a->has_ml_tau = true; break;
        case O_ALPHA: dv = &a->alpha, dname = "alpha"; break;
        case O_LAMBDA: dv = &a->lambda, dname = "lambda"; break;
        case O_EPS: dv = &a->eps, dname = "eps", a->has_eps = true; break;
        case O_MLRULE:
            if (!strcmp(val, "delta")) a->ml_rule = MTR_ML_DELTA;
            else if (!strcmp(val, "3sd")) a->ml_rule = MTR_ML_3SD;
            else {
                cli_error(verb, "--ml-rule '%s' is not delta or 3sd", val);
                return EXIT_USAGE;
            }
            break;
        case O_OP:
            if (mtr_steer_op_parse(&a->op, val)) {
                cli_error(verb, "--op '%s' is not soft, hard, off or bias", val);
                return EXIT_USAGE;
            }
            break;
        case O_EPSMODE:
            if (mtr_steer_eps_parse(&a->eps_mode, val)) {
                cli_error(verb, "--eps-mode '%s' is not gaussian or fixed", val);
                return EXIT_USAGE;
            }
            break;
        case O_CAP:
        case O_TOPK:
            if (cli_parse_u32(c == O_CAP ? &a->cap : &a->top_k, val) || (c == O_TOPK && a->top_k == 0)) {
                cli_error(verb, "--%s '%s' is not a positive integer", c == O_CAP ? "cap" : "top-k", val);
                return EXIT_USAGE;
            }
            break;
        case O_SEED:
            if (cli_parse_u64(&a->seed, val)) {
                cli_error(verb, "--seed '%s' is not a non-negative integer", val);
                return EXIT_USAGE;
            }
            break;
        default:
            break;
        }
        if (dv && cli_parse_double(dv, val)) {
            cli_error(verb, "--%s '%s' is not a number", dname, val);
            return EXIT_USAGE;
        }
    }
    if (first_pos) {
        cli_error(verb, "unexpected argument '%s'", first_pos);
        return EXIT_USAGE;
    }
    if (!a->tables || !a->dataset) {
        cli_error(verb, "--tables and --dataset are required (see --help)");
        return EXIT_USAGE;
    }
    if (a->alpha < 0 || a->alpha > 1) {
        cli_error(verb, "--alpha %g is not in [0, 1]", a->alpha);
        return EXIT_USAGE;
    }
    if (!a->has_ml_tau) a->ml_tau = a->tau;
    if (!a->has_eps && a->eps_mode == MTR_STEER_EPS_FIXED) a->eps = MTR_STEER_STEERMOE_EPS;
    return 0;
}

/* Loaded inputs shared by the three verbs. */
typedef struct {
    mtr_tables *t;
    mtr_profile prof;
    bool has_prof;
    cli_band band;
    const char *generic;
} sel_ctx;

static int load_ctx(sel_ctx *x, const sel_args *a, const char *verb)
{
    int rc;
    memset(x, 0, sizeof *x);
    if ((rc = mtr_tables_open(&x->t, a->tables))) return cli_fail(verb, rc, mtr_errmsg());
    if (!x->t->freq && !x->t->delta) {
        cli_error(verb, "%s: no freq.tsv or delta.tsv: nothing to select from", a->tables);
        return EXIT_DATA;
    }
    if (a->profile) {
        if ((rc = mtr_profile_load(&x->prof, a->profile))) return cli_fail(verb, rc, mtr_errmsg());
        x->has_prof = true;
        if (x->t->n_layers > x->prof.n_layers || x->t->n_experts > x->prof.n_experts) {
            cli_error(verb, "%s: tables have %u layers x %u experts, more than profile %s (%u x %u)", a->tables,
                      x->t->n_layers, x->t->n_experts, x->prof.name, x->prof.n_layers, x->prof.n_experts);
            return EXIT_DATA;
        }
    }
    x->generic = a->generic;
    if (!x->generic) {
        if (mtr_tables_dataset(x->t, "flores") >= 0) x->generic = "flores";
        for (size_t i = 0; i < x->t->n_datasets && !x->generic; i++)
            if (strcmp(x->t->datasets[i], a->dataset)) x->generic = x->t->datasets[i];
        if (!x->generic) {
            cli_error(verb, "%s: no generic corpus besides '%s' (give --generic)", a->tables, a->dataset);
            return EXIT_DATA;
        }
    }
    if (mtr_tables_dataset(x->t, a->dataset) < 0) {
        cli_error(verb, "%s: no dataset '%s' in the tables", a->tables, a->dataset);
        return EXIT_DATA;
    }
    int ex = cli_resolve_band(&x->band, verb, a->band, x->has_prof ? &x->prof : NULL, x->t, a->english, a->alpha);
    if (ex) return ex;
    if (x->band.band.last > x->t->n_layers) {
        cli_error(verb, "band %u-%u lies outside the %u layers of %s", x->band.band.first, x->band.band.last,
                  x->t->n_layers, a->tables);
        return EXIT_DATA;
    }
    return 0;
}

static void free_ctx(sel_ctx *x) { mtr_tables_free(x->t); }

static json_t *set_json(const mtr_expert_set *s)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < s->n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "layer", json_integer(s->v[i].layer + 1));
        json_object_set_new(o, "expert", json_integer(s->v[i].expert));
        json_object_set_new(o, "score", cli_jnum(s->v[i].score));
        json_array_append_new(arr, o);
    }
    return arr;
}

/* ---- experts ---------------------------------------------------------------------------------------------- */

static void experts_help(void)
{
    printf("Usage: %s experts --tables DIR --dataset D [options]\n\n"
           "Task experts A+(D, tau, band) = {(l, e): l in band, Delta > tau}, Delta = f(D, English) - f(generic,\n"
           "English), and multilingual-specialised experts. TSV columns: set (task|multilingual) layer (1-based)\n"
           "expert score.\n\n",
           PROG);
    common_help();
    printf("  --json                 JSON instead of TSV\n  -h, --help             this help\n\n%s", exit_status_text);
}

int cmd_experts(int argc, char **argv)
{
    sel_args a;
    sel_ctx x;
    int ex = parse_sel(&a, "experts", argc, argv, experts_help);
    if (ex) return ex == -2 ? EXIT_OK : ex;
    mtr_expert_set task = {0}, ml = {0};
    int rc;
    if ((ex = load_ctx(&x, &a, "experts"))) goto out_free;
    if ((rc = mtr_select_task(&task, x.t, a.dataset, x.generic, a.english, a.tau, &x.band.band, a.cap)) ||
        (rc = mtr_select_multilingual(&ml, x.t, x.generic, a.english, a.ml_rule, a.ml_tau,
                                      a.ml_in_band ? &x.band.band : NULL))) {
        ex = cli_fail("experts", rc, mtr_errmsg());
        goto out_free;
    }
    if (a.json) {
        json_t *root = json_object();
        json_object_set_new(root, "producer", json_string(PROG " experts " MTR_VERSION_STRING));
        json_object_set_new(root, "command", json_string(cli_command_line));
        json_object_set_new(root, "dataset", json_string(a.dataset));
        json_object_set_new(root, "generic", json_string(x.generic));
        json_object_set_new(root, "tau", json_real(a.tau));
        json_object_set_new(root, "band", json_pack("{s:i,s:i,s:s}", "first", (int)x.band.band.first, "last",
                                                    (int)x.band.band.last, "source", x.band.source));
        json_object_set_new(root, "ml_rule", json_string(a.ml_rule == MTR_ML_3SD ? "3sd" : "delta"));
        json_object_set_new(root, "ml_tau", json_real(a.ml_tau));
        json_object_set_new(root, "task", set_json(&task));
        json_object_set_new(root, "task_dropped_by_cap", json_integer((json_int_t)task.n_dropped));
        json_object_set_new(root, "multilingual", set_json(&ml));
        ex = cli_print_json("experts", root);
        goto out_free;
    }
    cli_provenance(stdout, "experts");
    printf("# tables: %s\n# band: %u-%u (1-based, inclusive): %s\n", a.tables, x.band.band.first, x.band.band.last,
           x.band.source);
    printf("# task experts: dataset %s, Delta = f(%s, %s) - f(%s, %s) > tau = %g, band layers only%s\n", a.dataset,
           a.dataset, a.english, x.generic, a.english, a.tau, a.cap ? ", capped per layer" : "");
    printf("# multilingual experts: rule %s, tau %g, generic corpus %s, %s\n", a.ml_rule == MTR_ML_3SD ? "3sd" : "delta",
           a.ml_tau, x.generic, a.ml_in_band ? "band layers" : "all layers");
    printf("# counts: task %zu (%zu dropped by the cap), multilingual %zu\n", task.n, task.n_dropped, ml.n);
    for (size_t i = 0; i < x.t->n_prov; i++) printf("# input %s\n", x.t->prov[i]);
    printf("#set\tlayer\texpert\tscore\n");
    for (size_t i = 0; i < task.n; i++) printf("task\t%u\t%u\t%.6f\n", task.v[i].layer + 1, task.v[i].expert, task.v[i].score);
    for (size_t i = 0; i < ml.n; i++) printf("multilingual\t%u\t%u\t%.6f\n", ml.v[i].layer + 1, ml.v[i].expert, ml.v[i].score);
out_free:
    mtr_expert_set_free(&task);
    mtr_expert_set_free(&ml);
    free_ctx(&x);
    return ex;
}

/* ---- overlap ---------------------------------------------------------------------------------------------- */

static void overlap_help(void)
{
    printf("Usage: %s overlap --tables DIR --dataset D [--taus LIST] [options]\n\n"
           "For each tau: the number of task experts, multilingual-specialised experts (both at that tau) and of\n"
           "experts in both sets (the paper finds none at tau >= 0.3). TSV columns: tau n_task n_multilingual\n"
           "n_overlap overlap (layer:expert list, 1-based layers).\n\n",
           PROG);
    common_help();
    printf("  --taus LIST            comma-separated taus (default 0.05,0.1,...,0.5)\n"
           "  --json                 JSON instead of TSV\n  -h, --help             this help\n\n%s",
           exit_status_text);
}

int cmd_overlap(int argc, char **argv)
{
    sel_args a;
    sel_ctx x;
    int ex = parse_sel(&a, "overlap", argc, argv, overlap_help);
    if (ex) return ex == -2 ? EXIT_OK : ex;
    double taus[64];
    size_t n_taus = 0;
    char list[1024];
    snprintf(list, sizeof list, "%s", a.taus);
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n_taus == 64 || cli_parse_double(&taus[n_taus], tok)) {
            cli_error("overlap", "--taus: '%s' is not a number (at most 64 values)", tok);
            return EXIT_USAGE;
        }
        n_taus++;
    }
    json_t *root = NULL, *rows = NULL;
    if ((ex = load_ctx(&x, &a, "overlap"))) goto out_free;
    if (a.json) {
        root = json_object();
        rows = json_array();
        json_object_set_new(root, "producer", json_string(PROG " overlap " MTR_VERSION_STRING));
        json_object_set_new(root, "command", json_string(cli_command_line));
        json_object_set_new(root, "band", json_pack("{s:i,s:i,s:s}", "first", (int)x.band.band.first, "last",
                                                    (int)x.band.band.last, "source", x.band.source));
    } else {
        cli_provenance(stdout, "overlap");
        printf("# tables: %s\n# band: %u-%u (1-based, inclusive): %s\n", a.tables, x.band.band.first,
               x.band.band.last, x.band.source);
        printf("# task experts: dataset %s vs %s (English), band layers; multilingual: rule %s on %s, %s\n", a.dataset,
               x.generic, a.ml_rule == MTR_ML_3SD ? "3sd" : "delta", x.generic,
               a.ml_in_band ? "band layers" : "all layers");
        printf("#tau\tn_task\tn_multilingual\tn_overlap\toverlap\n");
    }
    for (size_t k = 0; k < n_taus; k++) {
        mtr_expert_set task = {0}, ml = {0};
        int rc = mtr_select_task(&task, x.t, a.dataset, x.generic, a.english, taus[k], &x.band.band, a.cap);
        if (!rc)
            rc = mtr_select_multilingual(&ml, x.t, x.generic, a.english, a.ml_rule, taus[k],
                                         a.ml_in_band ? &x.band.band : NULL);
        if (rc) {
            mtr_expert_set_free(&task);
            ex = cli_fail("overlap", rc, mtr_errmsg());
            goto out_free;
        }
        size_t n_both = 0;
        char both[4096] = "";
        size_t o = 0;
        for (size_t i = 0; i < task.n; i++)
            if (mtr_expert_set_has(&ml, task.v[i].layer, task.v[i].expert)) {
                n_both++;
                if (o + 32 < sizeof both)
                    o += (size_t)snprintf(both + o, sizeof both - o, "%s%u:%u", o ? "," : "", task.v[i].layer + 1,
                                          task.v[i].expert);
            }
        if (a.json) {
            json_array_append_new(rows, json_pack("{s:f,s:i,s:i,s:i,s:s}", "tau", taus[k], "n_task", (int)task.n,
                                                  "n_multilingual", (int)ml.n, "n_overlap", (int)n_both, "overlap", both));
        } else {
            printf("%g\t%zu\t%zu\t%zu\t%s\n", taus[k], task.n, ml.n, n_both, n_both ? both : "-");
        }
        mtr_expert_set_free(&task);
        mtr_expert_set_free(&ml);
    }
    if (a.json) {
        json_object_set_new(root, "rows", rows);
        rows = NULL;
        ex = cli_print_json("overlap", root);
        root = NULL;
    }
out_free:
    json_decref(rows);
    json_decref(root);
    free_ctx(&x);
    return ex;
}

/* ---- steer ------------------------------------------------------------------------------------------------ */

static void steer_help(void)
{
    printf("Usage: %s steer --tables DIR --dataset D --out DIR [options]\n\n"
           "Select the task experts and write one steering file per intervention into --out: NAME.h5 + NAME.json\n"
           "(traces/STEERING.md), NAME.easysteer.json (EasySteer moe_router layer config: soft as mode soft with\n"
           "its lambda, hard/off as activate/deactivate; none for --op bias, which EasySteer lacks) and NAME.f32 +\n"
           "NAME.f32.json (flat f32 matrix with a sidecar). Interventions: task (the selection), and the controls\n"
           "built the same way: outside (the same number of experts with the largest Delta outside the band, early\n"
           "and late layers), multilingual (the same number of multilingual-specialised experts, band layers),\n"
           "random (as many experts per layer, drawn uniformly among the layer's other experts, seeded), deactivate\n"
           "(the task experts with op off; soft steering: lambda negated). Prints one TSV row per file.\n\n",
           PROG);
    common_help();
    printf("Steering:\n"
           "  --out DIR              output directory (made if missing)\n"
           "  --op soft|hard|off|bias  operation (default soft)\n"
           "  --lambda X             soft: multiple of std(z) (default 0.5); bias: the value added to z\n"
           "  --eps-mode gaussian|fixed  hard/off: eps ~ N(0, eps^2) seeded, or a fixed eps (default gaussian)\n"
           "  --eps X                default 1e-6 (gaussian sd) or 0.01 (fixed, SteerMoE's)\n"
           "  --seed S               seed of the random control and of gaussian eps (default 1)\n"
           "  --controls LIST        subset of outside,multilingual,random,deactivate, or none (default all)\n"
           "  --model-id ID          model id without a profile; --top-k K likewise\n"
           "  --json                 JSON summary instead of TSV\n"
           "  -h, --help             this help\n\n%s",
           exit_status_text);
}

static bool want_control(const char *list, const char *name)
{
    if (!strcmp(list, "all")) return true;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return true;
    return false;
}

/* Hard steering cannot force more than top-k experts into one layer: keep the first cap of each layer (the sets
 * list experts in their rule's order of preference) and say how many were dropped. */
static size_t cap_per_layer(mtr_expert_set *set, uint32_t cap)
{
    if (!cap) return 0;
    uint32_t per[MTR_MAX_LAYERS] = {0};
    size_t k = 0, dropped = 0;
    for (size_t i = 0; i < set->n; i++) {
        uint32_t l = set->v[i].layer;
        if (l < MTR_MAX_LAYERS && per[l] >= cap) {
            dropped++;
            continue;
        }
        if (l < MTR_MAX_LAYERS) per[l]++;
        set->v[k++] = set->v[i];
    }
    set->n = k;
    return dropped;
}

static int write_one(json_t *summary, const sel_args *a, const sel_ctx *x, const char *name, const mtr_expert_set *set,
                     mtr_steer_op op, double lambda, const char *rule, uint32_t n_layers, uint32_t n_experts,
                     uint32_t top_k, const char *model_id, const int32_t *layer_index)
{
    int rc;
    mtr_steer *s = NULL;
    char h5[4200], js[4200], es[4200], fb[4200], fj[4200];
    if ((rc = mtr_steer_create(&s, model_id, n_layers, n_experts, top_k, op))) return cli_fail("steer", rc, mtr_errmsg());
    if (layer_index) memcpy(s->layer_index, layer_index, n_layers * sizeof *layer_index);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->lambda = lambda;
    s->eps_mode = a->eps_mode;
    s->eps = a->eps;
    s->seed = a->seed;
    /* NaN: the op's default coefficient (soft lambda, hard +1, off -1); bias adds --lambda itself */
    double coef = op == MTR_STEER_BIAS ? lambda : NAN;
    for (size_t i = 0; i < set->n && !rc; i++) rc = mtr_steer_add(s, set->v[i].layer, set->v[i].expert, coef, set->v[i].score);
    /* provenance: what was selected how (layers 1-based here, as in every table people read) */
    json_t *p = json_pack("{s:s,s:s,s:s,s:s,s:f,s:{s:i,s:i,s:s,s:s},s:s,s:s,s:I}", "tables", a->tables, "dataset",
                          a->dataset, "generic", x->generic, "english", a->english, "tau", a->tau, "band", "first",
                          (int)x->band.band.first, "last", (int)x->band.band.last, "indexing", "1-based inclusive",
                          "source", x->band.source, "selection_rule", rule, "intervention", name, "seed",
                          (json_int_t)a->seed);
    char *ptext = p ? json_dumps(p, JSON_COMPACT) : NULL;
    json_decref(p);
    if (!rc) rc = ptext ? mtr_steer_set_provenance(s, ptext) : MTR_ENOMEM;
    free(ptext);
    if (!rc && s->n_target == 0) {
        /* an empty set still says which layers it was meant for */
        uint32_t lay[MTR_MAX_LAYERS], n = 0;
        for (uint32_t l = x->band.band.first; l <= x->band.band.last; l++) lay[n++] = l - 1;
        rc = mtr_steer_set_targets(s, lay, n);
    }
    snprintf(h5, sizeof h5, "%s/%s.h5", a->out, name);
    snprintf(js, sizeof js, "%s/%s.json", a->out, name);
    snprintf(es, sizeof es, "%s/%s.easysteer.json", a->out, name);
    snprintf(fb, sizeof fb, "%s/%s.f32", a->out, name);
    snprintf(fj, sizeof fj, "%s/%s.f32.json", a->out, name);
    bool lossy = false;
    if (!rc) rc = mtr_steer_write(s, h5, js);
    /* EasySteer has no additive-bias mode: a bias file gets no EasySteer export (cmd_steer says so once) */
    if (!rc && op != MTR_STEER_BIAS) rc = mtr_steer_export_easysteer(s, es, &lossy);
    if (!rc) rc = mtr_steer_export_flat(s, fb, fj);
    if (rc) {
        int ex = cli_fail("steer", rc, mtr_errmsg());
        mtr_steer_destroy(s);
        return ex;
    }
    char layers[2048] = "";
    size_t o = 0;
    for (uint32_t i = 0; i < s->n_target && o + 16 < sizeof layers; i++) {
        uint32_t j = i;
        while (j + 1 < s->n_target && s->target_layers[j + 1] == s->target_layers[j] + 1) j++;
        if (j > i) o += (size_t)snprintf(layers + o, sizeof layers - o, "%s%u-%u", o ? "," : "", s->target_layers[i] + 1, s->target_layers[j] + 1);
        else o += (size_t)snprintf(layers + o, sizeof layers - o, "%s%u", o ? "," : "", s->target_layers[i] + 1);
        i = j;
    }
    if (summary) {
        json_array_append_new(summary, json_pack("{s:s,s:s,s:f,s:i,s:s,s:s,s:o,s:b}", "name", name, "op",
                                                 mtr_steer_op_name(op), "lambda", lambda, "n_experts", (int)s->n_sel,
                                                 "layers", layers, "file", h5, "easysteer",
                                                 op == MTR_STEER_BIAS ? json_null() : json_string(es),
                                                 "easysteer_lossy", lossy));
    } else {
        printf("%s\t%s\t%g\t%zu\t%s\t%s\n", name, mtr_steer_op_name(op),
               op == MTR_STEER_SOFT || op == MTR_STEER_BIAS ? lambda : s->eps,
               s->n_sel, layers[0] ? layers : "-", h5);
    }
    mtr_steer_destroy(s);
    return 0;
}

int cmd_steer(int argc, char **argv)
{
    sel_args a;
    sel_ctx x;
    int ex = parse_sel(&a, "steer", argc, argv, steer_help);
    if (ex) return ex == -2 ? EXIT_OK : ex;
    if (!a.out) {
        cli_error("steer", "--out is required (see --help)");
        return EXIT_USAGE;
    }
    static const char *const known[] = {"outside", "multilingual", "random", "deactivate"};
    if (strcmp(a.controls, "none") && strcmp(a.controls, "all")) {
        char list[512];
        snprintf(list, sizeof list, "%s", a.controls);
        for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            bool ok = false;
            for (size_t i = 0; i < 4; i++) ok |= !strcmp(tok, known[i]);
            if (!ok) {
                cli_error("steer", "--controls: unknown control '%s' (outside, multilingual, random, deactivate)", tok);
                return EXIT_USAGE;
            }
        }
    }
    mtr_expert_set task = {0}, ctl = {0}, ml = {0};
    double *delta = NULL;
    json_t *summary = NULL;
    int rc;
    if ((ex = load_ctx(&x, &a, "steer"))) goto out_free;
    uint32_t n_layers = x.has_prof ? x.prof.n_layers : x.t->n_layers;
    uint32_t n_experts = x.has_prof ? x.prof.n_experts : x.t->n_experts;
    /* the model the tables were reduced from (summaries.h5 beside them): its id, top-k and MoE layer map */
    mtr_model_info traced;
    bool has_traced = false;
    {
        char sp[4200];
        struct stat sst;
        if (stat(a.tables, &sst) == 0 && S_ISDIR(sst.st_mode)) snprintf(sp, sizeof sp, "%s/" MTR_OUT_SUMMARIES, a.tables);
        else {
            const char *slash = strrchr(a.tables, '/');
            snprintf(sp, sizeof sp, "%.*s" MTR_OUT_SUMMARIES, slash ? (int)(slash - a.tables + 1) : 0, a.tables);
        }
        has_traced = stat(sp, &sst) == 0 && mtr_model_info_read(&traced, NULL, sp) == 0 &&
                     traced.n_layers == n_layers && traced.n_experts == n_experts;
    }
    uint32_t top_k = a.top_k ? a.top_k : x.has_prof ? x.prof.top_k : has_traced ? traced.top_k : 0;
    const char *model_id = a.model_id ? a.model_id : x.has_prof ? x.prof.model_id : has_traced ? traced.model_id : NULL;
    const int32_t *layer_index = has_traced ? traced.layer_index : NULL;
    if (!top_k || !model_id) {
        cli_error("steer", "the model is unknown: give --profile, or --model-id and --top-k");
        ex = EXIT_USAGE;
        goto out_free;
    }
    if (mkdir(a.out, 0777) != 0 && errno != EEXIST) {
        cli_error("steer", "%s: cannot create: %s", a.out, strerror(errno));
        ex = EXIT_IO;
        goto out_free;
    }
    uint32_t cap = a.cap ? a.cap : a.op == MTR_STEER_HARD ? top_k : 0;
    if (a.op == MTR_STEER_HARD && cap > top_k) cap = top_k;
    delta = malloc(((size_t)x.t->n_layers * x.t->n_experts + 1) * sizeof *delta);
    if (!delta) {
        ex = cli_fail("steer", MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    if ((rc = mtr_select_delta(delta, x.t, a.dataset, a.english, x.generic, a.english)) ||
        (rc = mtr_select_task(&task, x.t, a.dataset, x.generic, a.english, a.tau, &x.band.band, cap))) {
        ex = cli_fail("steer", rc, mtr_errmsg());
        goto out_free;
    }
    if (task.n_dropped)
        cli_error("steer", "warning: %zu task experts refused: more than %u per layer (the top-k cap of hard steering)",
                  task.n_dropped, cap);
    if (task.n == 0) cli_error("steer", "warning: no expert has Delta > %g in band %u-%u: the files are empty", a.tau,
                               x.band.band.first, x.band.band.last);
    if (a.op == MTR_STEER_BIAS)
        cli_error("steer", "note: op bias has no EasySteer moe_router mode: no NAME.easysteer.json written");
    if (a.json) summary = json_array();
    else {
        cli_provenance(stdout, "steer");
        printf("# tables: %s\n# band: %u-%u (1-based, inclusive): %s\n", a.tables, x.band.band.first,
               x.band.band.last, x.band.source);
        printf("# task experts: dataset %s, Delta vs %s (English) > tau = %g; model %s, top-%u; eps %s %g\n", a.dataset,
               x.generic, a.tau, model_id, top_k, mtr_steer_eps_name(a.eps_mode), a.eps);
        printf("#name\top\tlambda_or_eps\tn_experts\tlayers\tfile\n");
    }
    char rule[256];
    snprintf(rule, sizeof rule, "task experts: Delta(%s, English vs %s) > %g in the band", a.dataset, x.generic, a.tau);
    if ((ex = write_one(summary, &a, &x, "task", &task, a.op, a.lambda, rule, n_layers, n_experts, top_k, model_id, layer_index)))
        goto out_free;
    if (want_control(a.controls, "outside")) {
        if ((rc = mtr_control_outside(&ctl, &task, delta, x.t->n_layers, x.t->n_experts, &x.band.band, cap))) {
            ex = cli_fail("steer", rc, mtr_errmsg());
            goto out_free;
        }
        snprintf(rule, sizeof rule, "control: the %zu experts with the largest Delta(%s) outside the band", task.n, a.dataset);
        ex = write_one(summary, &a, &x, "outside_band", &ctl, a.op, a.lambda, rule, n_layers, n_experts, top_k, model_id, layer_index);
        mtr_expert_set_free(&ctl);
        if (ex) goto out_free;
    }
    if (want_control(a.controls, "multilingual")) {
        if ((rc = mtr_select_multilingual(&ml, x.t, x.generic, a.english, a.ml_rule, a.ml_tau, &x.band.band)) ||
            (rc = mtr_control_multilingual(&ctl, &task, &ml))) {
            ex = cli_fail("steer", rc, mtr_errmsg());
            goto out_free;
        }
        size_t over = a.op == MTR_STEER_HARD ? cap_per_layer(&ctl, cap) : 0;
        if (over)
            cli_error("steer", "warning: %zu multilingual experts refused: more than %u per layer (the top-k cap of "
                               "hard steering)", over, cap);
        if (ctl.n < task.n)
            cli_error("steer", "warning: only %zu multilingual experts in the band for %zu task experts", ctl.n, task.n);
        snprintf(rule, sizeof rule, "control: the %zu multilingual-specialised experts (%s, tau %g) with the largest "
                                    "margin in the band", ctl.n, a.ml_rule == MTR_ML_3SD ? "3sd" : "delta", a.ml_tau);
        ex = write_one(summary, &a, &x, "multilingual", &ctl, a.op, a.lambda, rule, n_layers, n_experts, top_k, model_id, layer_index);
        mtr_expert_set_free(&ctl);
        if (ex) goto out_free;
    }
    if (want_control(a.controls, "random")) {
        if ((rc = mtr_control_random(&ctl, &task, x.t->n_experts, a.seed))) {
            ex = cli_fail("steer", rc, mtr_errmsg());
            goto out_free;
        }
        snprintf(rule, sizeof rule, "control: random experts matched per layer to the task experts (seed %llu)",
                 (unsigned long long)a.seed);
        ex = write_one(summary, &a, &x, "random", &ctl, a.op, a.lambda, rule, n_layers, n_experts, top_k, model_id, layer_index);
        mtr_expert_set_free(&ctl);
        if (ex) goto out_free;
    }
    if (want_control(a.controls, "deactivate")) {
        bool soft = a.op == MTR_STEER_SOFT;
        snprintf(rule, sizeof rule, "control: the task experts deactivated (%s)", soft ? "soft, lambda negated" : "off");
        if ((ex = write_one(summary, &a, &x, "deactivate", &task, soft ? MTR_STEER_SOFT : MTR_STEER_OFF,
                            soft ? -a.lambda : a.lambda, rule, n_layers, n_experts, top_k, model_id, layer_index)))
            goto out_free;
    }
    if (a.json) {
        json_t *root = json_object();
        json_object_set_new(root, "producer", json_string(PROG " steer " MTR_VERSION_STRING));
        json_object_set_new(root, "command", json_string(cli_command_line));
        json_object_set_new(root, "band", json_pack("{s:i,s:i,s:s}", "first", (int)x.band.band.first, "last",
                                                    (int)x.band.band.last, "source", x.band.source));
        json_object_set_new(root, "files", summary);
        summary = NULL;
        ex = cli_print_json("steer", root);
    }
out_free:
    json_decref(summary);
    free(delta);
    mtr_expert_set_free(&task);
    mtr_expert_set_free(&ctl);
    mtr_expert_set_free(&ml);
    free_ctx(&x);
    return ex;
}
