/* reduce_main.c — moetrace-reduce: command line for phase 1 (summarize), phase 2 (tables) and both at once.
 * Built with MPI when OpenMPI is present: started by mpirun, ranks share the sequences of phase 1 and rank 0
 * joins their parts and makes the tables; started directly, it runs as one process without touching MPI. */
#include <errno.h>
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef MTR_WITH_MPI
#include <mpi.h>
#endif

#include "mtr_cli.h"
#include "mtr_reduce.h"

#define PROG "moetrace-reduce"

static int g_rank = 0, g_size = 1;
static bool g_mpi = false;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moetrace-reduce RUN... -o DIR [options]            both phases: DIR/summaries.h5 and DIR/*.tsv\n"
            "       moetrace-reduce summarize RUN... -o SUMMARIES.h5 [options]\n"
            "       moetrace-reduce tables SUMMARIES.h5 -o DIR [options]\n"
            "       moetrace-reduce reference RUN... -o SUMMARIES.h5   plain serial reference of phase 1 (slow)\n"
            "       mpirun -np N moetrace-reduce ...                   ranks share the sequences of phase 1\n"
            "\n"
            "Phase 1 (per sequence and layer): token count, importance q (mean routing weights), top-k activation\n"
            "counts, entropy of q, mean token entropy, top-k Jaccard consistency; NaN/Inf tokens are excluded and\n"
            "counted. Phase 2 tables (TSV with # provenance, 1-based layers, and tables.h5): div_from_en.tsv,\n"
            "div_pairwise.tsv, entropy.tsv, jaccard.tsv, freq.tsv, delta.tsv, specialisation.tsv, top_experts.tsv,\n"
            "units_missing_en.tsv, rd.tsv (with --rd). See reduce/SUMMARIES.md.\n"
            "\n"
            "Phase 1 options:\n"
            "  --weights full|topk  q from the full softmax (default) or the weights the model applies\n"
            "  --roles LIST         count only these token roles (template,prompt,response,generated; default all)\n"
            "  --jaccard-pairs N    all token pairs up to N per sequence, then N sampled pairs (default 4096)\n"
            "  --seed S             seed of the pair sample (default fixed)\n"
            "  --allow-partial      reduce the finished shards of a run that has partial shards or was not closed\n"
            "Phase 2 options:\n"
            "  --english CODE       the reference language (default eng_Latn)\n"
            "  --base-dataset D     the generic dataset whose parallel units are compared (default flores if\n"
            "                       present, else the dataset with most languages); also the Delta base\n"
            "  --base-lang CODE     language of the Delta base slice (default: --english)\n"
            "  --rd A B             SteerMoE risk difference between slices dataset:lang A and B\n"
            "  --min-count N        specialisation: experts with fewer activations are not scored (default 100)\n"
            "  --top N              top experts per language and layer (default 10)\n"
            "Common:\n"
            "  --threads N          OpenMP threads (default: all cores)\n"
            "  --progress, --no-progress   progress on stderr (default: when stderr is a terminal)\n"
            "  --json               a JSON summary on stdout;  -q, --quiet   no summary line\n"
            "  --help, --version\n"
            "\n"
            "Exit codes: 0 success, 1 bad usage, 2 bad input data, 3 I/O or internal failure.\n");
}

static void fail_line(const char *verb, int rc)
{
    if (g_rank == 0 || g_mpi) mtr_cli_fail(verb, rc, NULL);
}

typedef struct {
    double t0, last;
    bool on;
} progress_state;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    progress_state *p = ctx;
    double t = now();
    if (!p->on || (t - p->last < 0.5 && done < total)) return;
    p->last = t;
    double rate = done / (t - p->t0 + 1e-9), eta = rate > 0 ? (double)(total - done) / rate : 0;
    fprintf(stderr, "\r" PROG ": %llu/%llu tokens (%.0f%%), %.0f tokens/s, ETA %.0f s   ", (unsigned long long)done,
            (unsigned long long)total, total ? 100.0 * done / total : 100.0, rate, eta);
    if (done >= total) fputc('\n', stderr);
}

/* MPI: the worst status of all ranks, so every rank exits the same way */
static int agree(int rc)
{
#ifdef MTR_WITH_MPI
    if (g_mpi) {
        int worst = rc;
        MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        return worst;
    }
#endif
    return rc;
}

static int check_complete(mtr_run *r, bool allow_partial)
{
    for (size_t i = 0; i < mtr_run_n_runs(r); i++) {
        const mtr_run_meta *m = mtr_run_get_meta(r, i);
        if (allow_partial) continue;
        if (m->n_partial || !m->manifest_complete) {
            /* name the run by one of its shards */
            const char *path = "?";
            for (size_t q = 0; q < mtr_run_n_seqs(r); q++)
                if (mtr_run_seq(r, q)->run == i) {
                    path = mtr_run_shard(r, mtr_run_seq(r, q)->shard)->path;
                    break;
                }
            fprintf(stderr, PROG ": %s: run %s is incomplete (%u partial shard%s%s); resume the capture, or pass "
                            "--allow-partial to reduce its finished shards\n",
                    path, m->run_id, m->n_partial, m->n_partial == 1 ? "" : "s",
                    m->manifest_complete ? "" : ", writer not closed");
            return MTR_EPARTIAL;
        }
    }
    return 0;
}

static int run_summarize(const char *out, const char *const *runs, size_t n_runs, mtr_summ_opts *o,
                         bool allow_partial, bool reference, bool json, bool quiet)
{
    mtr_run *r = NULL;
    int rc = mtr_run_open_many(&r, runs, n_runs, 0);
    if (rc) {
        if (g_rank == 0) mtr_cli_fail("summarize", rc, NULL);
        return agree(rc);
    }
    if ((rc = check_complete(r, allow_partial))) {
        mtr_run_close(r);
        return agree(rc);
    }
    mtr_summ_stats st = {0};
    double t0 = now();
    char part[4200];
    const char *target = out;
    if (g_size > 1 && !reference) {
        snprintf(part, sizeof part, "%s.rank%04d.part", out, g_rank);
        target = part;
    }
    o->rank = g_rank;
    o->n_ranks = g_size;
    if (reference) /* serial by definition: under mpirun, rank 0 alone writes the whole file */
        rc = g_rank == 0 ? mtr_summarize_reference(target, r, o) : 0;
    else
        rc = mtr_summarize(target, r, runs, n_runs, o, &st);
    if (rc) fail_line("summarize", rc);
    rc = agree(rc);
#ifdef MTR_WITH_MPI
    if (g_mpi) {
        uint64_t mine[5] = {st.n_sequences, st.n_tokens, st.n_used, st.n_nonfinite, st.n_empty}, all[5];
        MPI_Reduce(mine, all, 5, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
        st = (mtr_summ_stats){all[0], all[1], all[2], all[3], all[4]};
        if (!rc && g_rank == 0 && g_size > 1 && !reference) {
            char **parts = malloc((size_t)g_size * sizeof *parts);
            for (int k = 0; k < g_size; k++) {
                parts[k] = malloc(4200);
                snprintf(parts[k], 4200, "%s.rank%04d.part", out, k);
            }
            rc = mtr_summaries_concat(out, (const char *const *)parts, (size_t)g_size);
            if (rc) fail_line("summarize", rc);
            for (int k = 0; k < g_size; k++) {
                if (!rc) unlink(parts[k]);
                free(parts[k]);
            }
            free(parts);
        }
        rc = agree(rc);
    }
#endif
    double dt = now() - t0;
    if (!rc && g_rank == 0 && json) {
        json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:i, s:i}", "summaries", out, "sequences",
                              (json_int_t)st.n_sequences, "tokens", (json_int_t)st.n_tokens, "tokens_used",
                              (json_int_t)st.n_used, "tokens_nonfinite", (json_int_t)st.n_nonfinite, "empty_sequences",
                              (json_int_t)st.n_empty, "seconds", dt, "tokens_per_second", st.n_tokens / (dt + 1e-9),
                              "threads", o->n_threads > 0 ? o->n_threads : omp_get_max_threads(), "ranks", g_size);
        json_dumpf(j, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(j);
    } else if (!rc && g_rank == 0 && !quiet) {
        fprintf(stderr, PROG ": summarised %llu sequences (%llu tokens, %llu NaN/Inf excluded) into %s in %.2f s\n",
                (unsigned long long)st.n_sequences, (unsigned long long)st.n_tokens,
                (unsigned long long)st.n_nonfinite, out, dt);
    }
    mtr_run_close(r);
    return rc;
}

static int run_tables(const char *dir, const char *summaries, const mtr_tables_opts *t, bool quiet)
{
    if (g_rank != 0) return 0;
    mtr_summaries *s = NULL;
    int rc = mtr_summaries_open(&s, summaries);
    if (!rc) rc = mtr_tables(dir, s, t);
    if (rc)
        fail_line("tables", rc);
    else if (!quiet)
        fprintf(stderr, PROG ": tables of %zu sequences written to %s/\n", s->n_seqs, dir);
    mtr_summaries_close(s);
    return rc;
}

static int parse_roles(uint32_t *mask, const char *list)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    *mask = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        mtr_role r;
        if (mtr_role_parse(&r, tok)) return -1;
        *mask |= 1u << r;
    }
    return *mask ? 0 : -1;
}

int main(int argc, char **argv)
{
    mtr_cli_set_prog(PROG);
#ifdef MTR_WITH_MPI
    /* only when started by a launcher: a direct run must not pay for (or depend on) MPI start-up */
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK")) {
        MPI_Init(&argc, &argv);
        MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
        MPI_Comm_size(MPI_COMM_WORLD, &g_size);
        g_mpi = true;
    }
#endif
    int rc = 0;
    const char *verb = "all";
    int first = 1;
    if (argc > 1 && (!strcmp(argv[1], "summarize") || !strcmp(argv[1], "tables") || !strcmp(argv[1], "reference"))) {
        verb = argv[1];
        first = 2;
    }
    mtr_summ_opts so = MTR_SUMM_OPTS_INIT;
    mtr_tables_opts to = MTR_TABLES_OPTS_INIT;
    const char *out = NULL;
    bool json = false, quiet = false, allow_partial = false;
    progress_state ps = {now(), 0, isatty(2) != 0};
    enum { O_OUT = 1, O_THREADS, O_WEIGHTS, O_ROLES, O_JPAIRS, O_SEED, O_PARTIAL, O_ENG, O_BASE_DS, O_BASE_LANG,
           O_RD, O_MIN_COUNT, O_TOP, O_PROGRESS, O_NO_PROGRESS, O_JSON, O_QUIET, O_HELP, O_VERSION };
    static const mtr_cli_option opts[] = {
        {"output", O_OUT, true},          {"o", O_OUT, true},               {"threads", O_THREADS, true},
        {"weights", O_WEIGHTS, true},     {"roles", O_ROLES, true},         {"jaccard-pairs", O_JPAIRS, true},
        {"seed", O_SEED, true},           {"allow-partial", O_PARTIAL, false}, {"english", O_ENG, true},
        {"base-dataset", O_BASE_DS, true}, {"base-lang", O_BASE_LANG, true}, {"rd", O_RD, true},
        {"min-count", O_MIN_COUNT, true}, {"top", O_TOP, true},             {"progress", O_PROGRESS, false},
        {"no-progress", O_NO_PROGRESS, false}, {"json", O_JSON, false},     {"quiet", O_QUIET, false},
        {"q", O_QUIET, false},            {"help", O_HELP, false},          {"version", O_VERSION, false}};
    const char **in = calloc((size_t)argc, sizeof *in);
    size_t n_in = 0;
    const char *val = NULL;
    uint64_t v;
    if (!in) {
        rc = MTR_ENOMEM;
        goto finish;
    }
    for (int ai = first; ai < argc; ai++) {
        const mtr_cli_option *opt = NULL;
        int pr = mtr_cli_next(strcmp(verb, "all") ? verb : NULL, argc, argv, &ai, opts, sizeof opts / sizeof opts[0],
                              &opt, &val);
        if (pr == MTR_CLI_POSITIONAL) {
            if (val) in[n_in++] = val;
            continue;
        }
        if (pr == MTR_CLI_HELP) {
            usage(stdout);
            goto finish;
        }
        if (pr) {
            rc = MTR_EINVAL;
            goto finish;
        }
        switch (opt->id) {
        case O_OUT: out = val; break;
        case O_THREADS:
            if (mtr_cli_parse_u64(&v, val) || v < 1 || v > 1024) goto bad_value;
            so.n_threads = to.n_threads = (int)v;
            break;
        case O_WEIGHTS:
            if (!strcmp(val, "topk")) so.topk_weights = true;
            else if (strcmp(val, "full")) goto bad_value;
            break;
        case O_ROLES:
            if (parse_roles(&so.role_mask, val)) goto bad_value;
            break;
        case O_JPAIRS:
            if (mtr_cli_parse_u64(&v, val) || v < 1 || v > 100000000) goto bad_value;
            so.jaccard_pairs = (uint32_t)v;
            break;
        case O_SEED:
            if (mtr_cli_parse_u64(&so.seed, val)) goto bad_value;
            break;
        case O_PARTIAL: allow_partial = true; break;
        case O_ENG: to.english = val; break;
        case O_BASE_DS: to.base_dataset = val; break;
        case O_BASE_LANG: to.base_lang = val; break;
        case O_RD:
            /* two values: --rd DATASET:LANG DATASET:LANG */
            if (ai + 1 >= argc) goto bad_value;
            to.rd_a = val;
            to.rd_b = argv[++ai];
            break;
        case O_MIN_COUNT:
            if (mtr_cli_parse_u64(&v, val) || v > UINT32_MAX) goto bad_value;
            to.min_count = (uint32_t)v;
            break;
        case O_TOP:
            if (mtr_cli_parse_u64(&v, val) || v < 1 || v > MTR_MAX_TOPK) goto bad_value;
            to.top_n = (uint32_t)v;
            break;
        case O_PROGRESS: ps.on = true; break;
        case O_NO_PROGRESS: ps.on = false; break;
        case O_JSON: json = true; break;
        case O_QUIET: quiet = true; break;
        case O_HELP: usage(stdout); goto finish;
        case O_VERSION: printf(PROG " %s (trace format %d)\n", MTR_VERSION_STRING, MTR_FORMAT_VERSION); goto finish;
        default: break;
        }
    }
    if (ps.on && g_rank == 0) {
        so.progress = on_progress;
        so.progress_ctx = &ps;
    }
    if (!out || n_in == 0) {
        if (g_rank == 0) fprintf(stderr, PROG " %s: needs %s and -o (see --help)\n", verb,
                                 !strcmp(verb, "tables") ? "a summaries file" : "at least one run");
        rc = MTR_EINVAL;
        goto finish;
    }
    if (!strcmp(verb, "summarize") || !strcmp(verb, "reference")) {
        rc = run_summarize(out, in, n_in, &so, allow_partial, !strcmp(verb, "reference"), json, quiet);
    } else if (!strcmp(verb, "tables")) {
        if (n_in != 1) {
            fprintf(stderr, PROG " tables: give one summaries file\n");
            rc = MTR_EINVAL;
            goto finish;
        }
        rc = run_tables(out, in[0], &to, quiet);
    } else {
        char spath[4200];
        if (g_rank == 0 && mkdir(out, 0777) < 0 && errno != EEXIST) {
            fprintf(stderr, PROG ": %s: %s\n", out, strerror(errno));
            rc = MTR_EIO;
        }
        rc = agree(rc);
        snprintf(spath, sizeof spath, "%s/" MTR_OUT_SUMMARIES, out);
        if (!rc) rc = run_summarize(spath, in, n_in, &so, allow_partial, false, json, quiet);
        if (!rc) rc = run_tables(out, spath, &to, quiet);
    }
    goto finish;
bad_value:
    if (g_rank == 0) mtr_cli_error(NULL, "bad value '%s' for an option (see --help)", val ? val : "");
    rc = MTR_EINVAL;
finish:
    free(in);
#ifdef MTR_WITH_MPI
    if (g_mpi) MPI_Finalize();
#endif
    return mtr_exit_code(rc);
}
