/* cmd_synth.c — `moetrace-capture synth`: the command line of the synthetic trace generator (capture/synth.h). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "mtr_synth.h"

/* ---- synth ----------------------------------------------------------------------------------------------- */

void synth_help(void)
{
    printf("Usage: %s synth --out RUN [options]\n"
           "\n"
           "Write a deterministic synthetic trace run with planted multilingual routing structure, and the planted\n"
           "truth beside it (RUN/%s, RUN/%s). The same seed and parameters give byte-identical\n"
           "logits for any --threads.\n"
           "\n"
           "Shape:\n"
           "  --out RUN              run directory to create (required; must not hold a run, unless --resume)\n"
           "  --resume               continue the run in RUN (killed, or stopped by a full disk) with the same\n"
           "                         parameters: the sequences of its finished shards are kept, the rest generated\n"
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
    S_NO_PROGRESS, S_JSON, S_HELP, S_VERSION, S_RESUME
};

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
    {"resume", S_RESUME, false},
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
    json_object_set_new(j, "n_skipped", json_integer((json_int_t)r->n_skipped));
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

int cmd_synth(int argc, char **argv)
{
    const char *cmd = "synth";
    mtr_synth_opts o = MTR_SYNTH_OPTS_INIT;
    bool quiet = false, json = false;
    int progress = -1; /* -1: if stderr is a terminal */

    for (int i = 1; i < argc; i++) {
        const cli_option *opt;
        const char *val;
        int r = cli_next_option(cmd, argc, argv, &i, synth_options, sizeof synth_options / sizeof synth_options[0], &opt, &val);
        if (r == CLI_HELP) {
            synth_help();
            return EXIT_OK;
        }
        if (r) return r;

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
        case S_RESUME: o.resume = true; break;
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
        errorf(cmd, "%s", mtr_errmsg());
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
        errorf(cmd, "%s", *mtr_errmsg() ? mtr_errmsg() : mtr_strerror(rc));
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

