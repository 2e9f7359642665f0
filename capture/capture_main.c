/* capture_main.c — the moetrace-capture binary: dispatch to subcommands and their command lines.
 *
 * Only `synth` (capture/synth.h) is built for now; the other verbs of DESIGN.md §5 answer that they are not
 * available. Help goes to stdout, diagnostics and progress to stderr, machine-readable output (--json) to stdout.
 * Exit status: 0 ok, 1 bad usage, 2 bad input data, 3 I/O or internal failure.
 */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moetrace.h"
#include "synth.h"

#define PROG "moetrace-capture"

enum { EXIT_OK = 0, EXIT_USAGE = 1, EXIT_DATA = 2, EXIT_IO = 3 };

static const char exit_status_text[] =
    "Exit status:\n"
    "  0  success\n"
    "  1  bad usage: unknown command or option, bad option value, --out already holds a run\n"
    "  2  bad input data\n"
    "  3  I/O or internal failure\n";

/* Verbs of the full tool that this build does not have yet. */
static const char *const planned_verbs[] = {"run", "ingest", "tokenize"};

static void print_version(void)
{
    printf("%s %s (trace format %d.%d)\n", PROG, MTR_VERSION_STRING, MTR_FORMAT_VERSION, MTR_FORMAT_MINOR);
}

/* One line on stderr: "moetrace-capture[ cmd]: message". */
static void errorf(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void errorf(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, cmd ? "%s %s: " : "%s: ", PROG, cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int exit_code_for(int err)
{
    switch (err) {
    case MTR_OK:
        return EXIT_OK;
    case MTR_EINVAL:
    case MTR_EEXIST:
        return EXIT_USAGE;
    case MTR_EFORMAT:
    case MTR_EVERSION:
    case MTR_EPARTIAL:
    case MTR_ECORRUPT:
    case MTR_EMISMATCH:
    case MTR_ETRUNCATED:
    case MTR_EDUP:
        return EXIT_DATA;
    default:
        return EXIT_IO;
    }
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void format_bytes(char *buf, size_t cap, uint64_t n)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double x = (double)n;
    int i = 0;
    while (x >= 1024.0 && i < 5) {
        x /= 1024.0;
        i++;
    }
    if (i == 0)
        snprintf(buf, cap, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, cap, "%.1f %s", x, unit[i]);
}

/* ---- option values --------------------------------------------------------------------------------------- */

static int parse_u64(uint64_t *out, const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_u32_in(uint32_t *out, const char *s, uint32_t lo, uint32_t hi)
{
    uint64_t v;
    if (parse_u64(&v, s) || v < lo || v > hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_double(double *out, const char *s)
{
    if (!s || !*s)
        return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s)
        return -1;
    *out = v;
    return 0;
}

/* Byte count with an optional binary suffix: 123, 64K, 512M, 2G, 1T (also KB, KiB, ...). */
static int parse_bytes(uint64_t *out, const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    int shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default:
        return -1;
    }
    if (shift && (strcmp(end, "") == 0 || strcmp(end, "B") == 0 || strcmp(end, "iB") == 0))
        end += strlen(end);
    if (*end)
        return -1;
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/* ---- synth ----------------------------------------------------------------------------------------------- */

static void synth_help(void)
{
    printf("Usage: %s synth --out RUN [options]\n"
           "\n"
           "Write a deterministic synthetic trace run with planted multilingual routing structure, and the planted\n"
           "truth beside it (RUN/%s, RUN/%s). The same seed and parameters give byte-identical\n"
           "logits for any --threads.\n"
           "\n"
           "Shape:\n"
           "  --out RUN              run directory to create (required; must not hold a run)\n"
           "  --layers L             MoE layers (default 16)\n"
           "  --experts E            experts per layer (default 32)\n"
           "  --top-k K              experts selected per token (default 4)\n"
           "  --langs LIST           code:strength,... alignment strengths in [0,1]; %s is required\n"
           "                         (strength 1); default %s\n"
           "  --datasets LIST        first = generic corpus, others = tasks (default %s)\n"
           "  --units N              parallel units per dataset, each in every language (default 40)\n"
           "  --len-mean X           mean sequence length in tokens, lognormal (default 64)\n"
           "  --len-min N            shortest sequence (default 8)\n"
           "  --len-max N            longest sequence (default 256)\n"
           "  --target-bytes BYTES   add units until the raw f32 logits reach BYTES (e.g. 4G; default off)\n"
           "\n"
           "Planted structure:\n"
           "  --band A-B             shared middle band, 1-based inclusive (default: the middle ~60%% of layers)\n"
           "  --task-experts N       task experts per band layer and task dataset (default 2)\n"
           "  --lang-experts N       preferred experts per language and layer (default K)\n"
           "  --seed S               random seed, below 2^63 (default 1)\n"
           "  --scale B              height of the mean logit profile (default 3)\n"
           "  --noise SIGMA          per-token Gaussian noise (default 1)\n"
           "  --seq-noise SIGMA      per-sequence offset of each (layer, expert) (default 0.3)\n"
           "  --task-boost X         logit added to task experts in band layers, times strength (default 2)\n"
           "  --acc-noise SIGMA      noise on the planted accuracies 0.25 + 0.65*strength (default 0.02)\n"
           "\n"
           "Storage:\n"
           "  --dtype bf16|f16|f32   stored logits dtype (default bf16)\n"
           "  --store logits|topk|both  what to store (default logits)\n"
           "  --shard-bytes BYTES    start a new shard after this many stored bytes (K/M/G suffixes; default 1G)\n"
           "  --model-id ID          model id recorded in the trace (default synthetic/moe-L{L}-E{E})\n"
           "  --run-id ID            run id (default: generated)\n"
           "  --threads N            generation and compression threads (default: OpenMP default)\n"
           "\n"
           "Output:\n"
           "  --quiet                no summary line (and no progress unless --progress)\n"
           "  --progress, --no-progress  force the progress line on stderr on or off (default: on if a terminal)\n"
           "  --json                 print a JSON summary on stdout\n"
           "  -h, --help             this help\n"
           "  --version              print the version\n"
           "\n"
           "%s",
           PROG, MTR_SYNTH_TRUTH_NAME, MTR_SYNTH_ACCURACY_NAME, MTR_SYNTH_ENGLISH, MTR_SYNTH_DEFAULT_LANGS,
           MTR_SYNTH_DEFAULT_DATASETS, exit_status_text);
}

enum {
    S_OUT, S_LAYERS, S_EXPERTS, S_TOPK, S_LANGS, S_DATASETS, S_UNITS, S_LEN_MEAN, S_LEN_MIN, S_LEN_MAX,
    S_TARGET_BYTES, S_BAND, S_TASK_EXPERTS, S_LANG_EXPERTS, S_SEED, S_SCALE, S_NOISE, S_SEQ_NOISE, S_TASK_BOOST,
    S_ACC_NOISE, S_DTYPE, S_STORE, S_SHARD_BYTES, S_MODEL_ID, S_RUN_ID, S_THREADS, S_QUIET, S_PROGRESS,
    S_NO_PROGRESS, S_JSON, S_HELP, S_VERSION
};

typedef struct {
    const char *name; /* without the leading "--" */
    int id;
    bool has_arg;
} cli_option;

static const cli_option synth_options[] = {
    {"out", S_OUT, true},
    {"layers", S_LAYERS, true},
    {"experts", S_EXPERTS, true},
    {"top-k", S_TOPK, true},
    {"langs", S_LANGS, true},
    {"datasets", S_DATASETS, true},
    {"units", S_UNITS, true},
    {"len-mean", S_LEN_MEAN, true},
    {"len-min", S_LEN_MIN, true},
    {"len-max", S_LEN_MAX, true},
    {"target-bytes", S_TARGET_BYTES, true},
    {"band", S_BAND, true},
    {"task-experts", S_TASK_EXPERTS, true},
    {"lang-experts", S_LANG_EXPERTS, true},
    {"seed", S_SEED, true},
    {"scale", S_SCALE, true},
    {"noise", S_NOISE, true},
    {"seq-noise", S_SEQ_NOISE, true},
    {"task-boost", S_TASK_BOOST, true},
    {"acc-noise", S_ACC_NOISE, true},
    {"dtype", S_DTYPE, true},
    {"store", S_STORE, true},
    {"shard-bytes", S_SHARD_BYTES, true},
    {"model-id", S_MODEL_ID, true},
    {"run-id", S_RUN_ID, true},
    {"threads", S_THREADS, true},
    {"quiet", S_QUIET, false},
    {"progress", S_PROGRESS, false},
    {"no-progress", S_NO_PROGRESS, false},
    {"json", S_JSON, false},
    {"help", S_HELP, false},
    {"version", S_VERSION, false},
};

typedef struct {
    double t0, last;
    bool shown;
} progress_state;

static void synth_progress(void *ctx, uint64_t done, uint64_t total, uint64_t raw)
{
    progress_state *p = ctx;
    double t = now_seconds();
    if (done < total && t - p->last < 0.25)
        return;
    p->last = t;
    char b[32];
    format_bytes(b, sizeof b, raw);
    double el = t - p->t0;
    fprintf(stderr, "\r%s synth: %llu/%llu sequences (%.0f%%), %s raw, %.0f MiB/s   ", PROG,
            (unsigned long long)done, (unsigned long long)total, total ? 100.0 * (double)done / (double)total : 100.0,
            b, el > 0 ? (double)raw / el / 1048576.0 : 0.0);
    fflush(stderr);
    p->shown = true;
}

static int print_json_summary(const mtr_synth_opts *o, const mtr_synth_result *r, double seconds)
{
    json_t *j = json_object();
    json_t *band = json_array();
    if (!j || !band)
        goto oom;
    json_array_append_new(band, json_integer(r->band_first));
    json_array_append_new(band, json_integer(r->band_last));
    json_object_set_new(j, "out", json_string(o->out_dir));
    json_object_set_new(j, "n_units", json_integer(r->n_units));
    json_object_set_new(j, "n_sequences", json_integer((json_int_t)r->n_sequences));
    json_object_set_new(j, "n_tokens", json_integer((json_int_t)r->n_tokens));
    json_object_set_new(j, "raw_bytes", json_integer((json_int_t)r->raw_bytes));
    json_object_set_new(j, "stored_bytes", json_integer((json_int_t)r->stored_bytes));
    json_object_set_new(j, "n_shards", json_integer(r->n_shards));
    json_object_set_new(j, "band", band);
    band = NULL;
    json_object_set_new(j, "seconds", json_real(seconds));
    char *text = json_dumps(j, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(j);
    j = NULL;
    if (!text)
        goto oom;
    int ok = printf("%s\n", text) >= 0 && fflush(stdout) == 0;
    free(text);
    if (!ok) {
        errorf("synth", "writing the JSON summary: %s", strerror(errno));
        return EXIT_IO;
    }
    return EXIT_OK;
oom:
    json_decref(band);
    json_decref(j);
    errorf("synth", "out of memory");
    return EXIT_IO;
}

static int cmd_synth(int argc, char **argv)
{
    const char *cmd = "synth";
    mtr_synth_opts o = MTR_SYNTH_OPTS_INIT;
    bool quiet = false, json = false;
    int progress = -1; /* -1: if stderr is a terminal */

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0) {
            synth_help();
            return EXIT_OK;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            errorf(cmd, "unexpected argument '%s' (see --help)", arg);
            return EXIT_USAGE;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const cli_option *opt = NULL;
        for (size_t k = 0; k < sizeof synth_options / sizeof synth_options[0]; k++)
            if (strlen(synth_options[k].name) == name_len && strncmp(synth_options[k].name, name, name_len) == 0)
                opt = &synth_options[k];
        if (!opt) {
            errorf(cmd, "unknown option '--%.*s' (see --help)", (int)name_len, name);
            return EXIT_USAGE;
        }
        const char *val = NULL;
        if (opt->has_arg) {
            if (eq)
                val = eq + 1;
            else if (i + 1 < argc)
                val = argv[++i];
            else {
                errorf(cmd, "--%s needs a value", opt->name);
                return EXIT_USAGE;
            }
        } else if (eq) {
            errorf(cmd, "--%s takes no value", opt->name);
            return EXIT_USAGE;
        }

        int bad = 0;
        const char *want = "";
        switch (opt->id) {
        case S_OUT: o.out_dir = val; break;
        case S_LAYERS: bad = parse_u32_in(&o.n_layers, val, 1, MTR_MAX_LAYERS); want = "an integer in 1..1024"; break;
        case S_EXPERTS:
            bad = parse_u32_in(&o.n_experts, val, 2, MTR_MAX_EXPERTS);
            want = "an integer in 2..65535";
            break;
        case S_TOPK: bad = parse_u32_in(&o.top_k, val, 1, MTR_MAX_TOPK); want = "an integer in 1..64"; break;
        case S_LANGS: o.langs = val; break;
        case S_DATASETS: o.datasets = val; break;
        case S_UNITS:
            bad = parse_u32_in(&o.n_units, val, 1, MTR_SYNTH_MAX_UNITS);
            want = "a positive integer";
            break;
        case S_LEN_MEAN: bad = parse_double(&o.len_mean, val); want = "a number"; break;
        case S_LEN_MIN: bad = parse_u32_in(&o.len_min, val, 1, MTR_SYNTH_MAX_LEN); want = "a positive integer"; break;
        case S_LEN_MAX: bad = parse_u32_in(&o.len_max, val, 1, MTR_SYNTH_MAX_LEN); want = "a positive integer"; break;
        case S_TARGET_BYTES: bad = parse_bytes(&o.target_bytes, val); want = "a byte count such as 4G"; break;
        case S_BAND: {
            const char *dash = strchr(val, '-');
            char first[32];
            want = "A-B with 1 <= A <= B";
            if (!dash || (size_t)(dash - val) >= sizeof first) {
                bad = 1;
                break;
            }
            memcpy(first, val, (size_t)(dash - val));
            first[dash - val] = '\0';
            bad = parse_u32_in(&o.band_first, first, 1, MTR_MAX_LAYERS) ||
                  parse_u32_in(&o.band_last, dash + 1, 1, MTR_MAX_LAYERS) || o.band_first > o.band_last;
            break;
        }
        case S_TASK_EXPERTS:
            bad = parse_u32_in(&o.task_experts, val, 0, MTR_MAX_EXPERTS);
            want = "a non-negative integer";
            break;
        case S_LANG_EXPERTS:
            bad = parse_u32_in(&o.lang_experts, val, 1, MTR_MAX_EXPERTS);
            want = "a positive integer";
            break;
        case S_SEED: bad = parse_u64(&o.seed, val); want = "a non-negative integer"; break;
        case S_SCALE: bad = parse_double(&o.scale, val); want = "a number"; break;
        case S_NOISE: bad = parse_double(&o.noise, val); want = "a number"; break;
        case S_SEQ_NOISE: bad = parse_double(&o.seq_noise, val); want = "a number"; break;
        case S_TASK_BOOST: bad = parse_double(&o.task_boost, val); want = "a number"; break;
        case S_ACC_NOISE: bad = parse_double(&o.acc_noise, val); want = "a number"; break;
        case S_DTYPE: bad = mtr_dtype_parse(&o.stored_dtype, val) != 0; want = "bf16, f16 or f32"; break;
        case S_STORE:
            want = "logits, topk or both";
            if (strcmp(val, "logits") == 0) {
                o.store_logits = true;
                o.store_topk = false;
            } else if (strcmp(val, "topk") == 0) {
                o.store_logits = false;
                o.store_topk = true;
            } else if (strcmp(val, "both") == 0) {
                o.store_logits = true;
                o.store_topk = true;
            } else {
                bad = 1;
            }
            break;
        case S_SHARD_BYTES:
            bad = parse_bytes(&o.shard_bytes, val) || o.shard_bytes == 0;
            want = "a positive byte count such as 512M";
            break;
        case S_MODEL_ID: o.model_id = val; break;
        case S_RUN_ID: o.run_id = val; break;
        case S_THREADS: {
            uint32_t n = 0;
            bad = parse_u32_in(&n, val, 0, 4096);
            o.n_threads = (int)n;
            want = "an integer in 0..4096 (0 = default)";
            break;
        }
        case S_QUIET: quiet = true; break;
        case S_PROGRESS: progress = 1; break;
        case S_NO_PROGRESS: progress = 0; break;
        case S_JSON: json = true; break;
        case S_HELP: synth_help(); return EXIT_OK;
        case S_VERSION: print_version(); return EXIT_OK;
        default: break;
        }
        if (bad) {
            errorf(cmd, "--%s: expected %s, got '%s'", opt->name, want, val);
            return EXIT_USAGE;
        }
    }

    if (mtr_synth_opts_check(&o) != 0) {
        errorf(cmd, "%s", mtr_synth_errmsg());
        return EXIT_USAGE;
    }

    progress_state ps = {now_seconds(), 0.0, false};
    if (progress < 0)
        progress = !quiet && isatty(STDERR_FILENO);
    if (progress) {
        o.progress = synth_progress;
        o.progress_ctx = &ps;
    }

    mtr_synth_result res;
    int rc = mtr_synth_run(&o, &res);
    double seconds = now_seconds() - ps.t0;
    if (ps.shown)
        fputc('\n', stderr);
    if (rc) {
        errorf(cmd, "%s", *mtr_synth_errmsg() ? mtr_synth_errmsg() : mtr_strerror(rc));
        return exit_code_for(rc);
    }
    if (!quiet) {
        char raw[32], stored[32];
        format_bytes(raw, sizeof raw, res.raw_bytes);
        format_bytes(stored, sizeof stored, res.stored_bytes);
        fprintf(stderr,
                "%s synth: wrote %llu sequences (%u units, %llu tokens) to %s: %u shard%s, %s raw f32 -> %s stored %s, "
                "%.2f s\n",
                PROG, (unsigned long long)res.n_sequences, res.n_units, (unsigned long long)res.n_tokens, o.out_dir,
                res.n_shards, res.n_shards == 1 ? "" : "s", raw, stored, mtr_dtype_name(o.stored_dtype), seconds);
    }
    if (json)
        return print_json_summary(&o, &res, seconds);
    return EXIT_OK;
}

/* ---- dispatch -------------------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    void (*help)(void);
    const char *summary;
} command;

static const command commands[] = {
    {"synth", cmd_synth, synth_help, "write synthetic traces with planted multilingual routing structure"},
};

static void main_help(void)
{
    printf("Usage: %s <command> [options]\n"
           "       %s help [command] | --help | --version\n"
           "\n"
           "Capture Mixture-of-Experts router logits into moetrace traces (trace format v%d).\n"
           "\n"
           "Commands:\n",
           PROG, PROG, MTR_FORMAT_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %-10s %s\n", commands[i].name, commands[i].summary);
    printf("\nRun '%s <command> --help' for the options of a command.\n\n%s", PROG, exit_status_text);
}

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* Unknown verb: say whether it is a verb of the full tool missing from this build. */
static int unknown_command(const char *name)
{
    for (size_t i = 0; i < sizeof planned_verbs / sizeof planned_verbs[0]; i++)
        if (strcmp(planned_verbs[i], name) == 0) {
            errorf(NULL, "'%s' is not available in this build", name);
            return EXIT_USAGE;
        }
    errorf(NULL, "unknown command '%s' (see --help)", name);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        errorf(NULL, "missing command (see --help)");
        return EXIT_USAGE;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0) {
        main_help();
        return EXIT_OK;
    }
    if (strcmp(verb, "--version") == 0) {
        print_version();
        return EXIT_OK;
    }
    if (strcmp(verb, "help") == 0) {
        if (argc < 3) {
            main_help();
            return EXIT_OK;
        }
        const command *c = find_command(argv[2]);
        if (!c)
            return unknown_command(argv[2]);
        c->help();
        return EXIT_OK;
    }
    if (verb[0] == '-') {
        errorf(NULL, "unknown option '%s' (see --help)", verb);
        return EXIT_USAGE;
    }
    const command *c = find_command(verb);
    if (!c)
        return unknown_command(verb);
    return c->run(argc - 1, argv + 1);
}
