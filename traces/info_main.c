/* info_main.c — `moetrace info RUN...`: what a trace set holds and whether it is valid.
 * Model and router semantics, dimensions, a languages x datasets table of sequences and tokens, raw vs stored
 * bytes, shards complete / partial / unlisted, and a verdict; --deep also decodes every chunk; --json. */
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetrace.h"
#include "mtr_cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: moetrace info [options] RUN|SHARD...\n"
               "\n"
               "Describe one or more runs (directories with run.json) or shard files, and validate them.\n"
               "\n"
               "  --deep           also read and decode every logits chunk (checks data, not just structure)\n"
               "  --threads N      decoding threads for --deep (default: all cores)\n"
               "  --allow-partial  open a *.partial shard given by path (inspection of a killed capture)\n"
               "  --json           machine-readable output on stdout\n"
               "  -q, --quiet      print only the verdict\n"
               "  --help, --version\n"
               "\n"
               "Exit codes: 0 valid, 1 bad usage, 2 invalid or unreadable trace data, 3 I/O or internal failure.\n");
}

typedef struct {
    const char *lang, *dataset;
    uint64_t n_seq, n_tok;
} cell;

static int cell_cmp(const void *a, const void *b)
{
    const cell *x = a, *y = b;
    int c = strcmp(x->lang, y->lang);
    return c ? c : strcmp(x->dataset, y->dataset);
}

/* languages x datasets counts; *n_out cells, sorted */
static cell *tabulate(const mtr_run *r, size_t *n_out)
{
    size_t n = 0, cap = 16;
    cell *cells = malloc(cap * sizeof *cells);
    if (!cells) return NULL;
    for (size_t i = 0; i < mtr_run_n_seqs(r); i++) {
        const mtr_seq_info *s = mtr_run_seq(r, i);
        size_t c = 0;
        while (c < n && (strcmp(cells[c].lang, s->lang) || strcmp(cells[c].dataset, s->dataset))) c++;
        if (c == n) {
            if (n == cap) {
                cell *nc = realloc(cells, (cap *= 2) * sizeof *cells);
                if (!nc) {
                    free(cells);
                    return NULL;
                }
                cells = nc;
            }
            cells[n++] = (cell){s->lang, s->dataset, 0, 0};
        }
        cells[c].n_seq++;
        cells[c].n_tok += s->n_tokens;
    }
    qsort(cells, n, sizeof *cells, cell_cmp);
    *n_out = n;
    return cells;
}

static int seq_unit_cmp(const void *a, const void *b)
{
    const mtr_seq_info *x = *(const mtr_seq_info *const *)a, *y = *(const mtr_seq_info *const *)b;
    int c = strcmp(x->dataset, y->dataset);
    return c ? c : strcmp(x->unit_id, y->unit_id);
}

/* parallel units are keyed by (dataset, unit_id): the same passage in several languages */
static size_t count_units(const mtr_run *r)
{
    size_t ns = mtr_run_n_seqs(r), n = 0;
    const mtr_seq_info **u = malloc((ns ? ns : 1) * sizeof *u);
    if (!u) return 0;
    for (size_t i = 0; i < ns; i++) u[i] = mtr_run_seq(r, i);
    qsort(u, ns, sizeof *u, seq_unit_cmp);
    for (size_t i = 0; i < ns; i++) n += i == 0 || seq_unit_cmp(&u[i], &u[i - 1]) != 0;
    free(u);
    return n;
}

/* Decode every logits chunk of every shard; count non-finite values. */
static int deep_check(mtr_run *r, int threads, uint64_t *nonfinite, char *err, size_t errcap)
{
    int rc = 0;
    *nonfinite = 0;
    const mtr_model_info *m = mtr_run_model(r);
    for (size_t s = 0; s < mtr_run_n_shards(r) && !rc; s++) {
        const mtr_shard_info *si = mtr_run_shard(r, s);
        if (!si->has_logits) continue;
        size_t floats = (size_t)si->chunk_tokens * m->n_layers * m->n_experts;
        uint64_t bad = 0;
        int first_err = 0;
#pragma omp parallel num_threads(threads) reduction(+ : bad)
        {
            mtr_decoder *d = NULL;
            float *buf = malloc(floats * sizeof *buf);
            int lrc = buf ? mtr_decoder_create(&d, r) : MTR_ENOMEM;
#pragma omp for schedule(dynamic, 1)
            for (size_t c = 0; c < si->n_chunks; c++) {
                if (lrc) continue;
                int e = mtr_decoder_load_f32(d, s, c, buf);
                if (e) {
#pragma omp critical
                    if (!first_err) {
                        first_err = e;
                        snprintf(err, errcap, "%s", mtr_errmsg());
                    }
                    continue;
                }
                size_t n = (size_t)mtr_run_chunks(r, s)[c].n_tok * m->n_layers * m->n_experts;
                for (size_t i = 0; i < n; i++) bad += !isfinite(buf[i]);
            }
            if (lrc) {
#pragma omp critical
                if (!first_err) {
                    first_err = lrc;
                    snprintf(err, errcap, "out of memory");
                }
            }
            mtr_decoder_destroy(d);
            free(buf);
        }
        *nonfinite += bad;
        rc = first_err;
    }
    return rc;
}

static void human(char *buf, size_t cap, double bytes)
{
    const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    int i = 0;
    while (bytes >= 1000 && i < 4) {
        bytes /= 1000;
        i++;
    }
    snprintf(buf, cap, i ? "%.1f %s" : "%.0f %s", bytes, u[i]);
}

int main(int argc, char **argv)
{
    mtr_cli_set_prog("moetrace info");
    int json = 0, quiet = 0, deep = 0, threads = 0;
    unsigned flags = 0;
    enum { O_JSON = 1, O_QUIET, O_DEEP, O_THREADS, O_PARTIAL, O_HELP, O_VERSION };
    static const mtr_cli_option opts[] = {
        {"json", O_JSON, false},       {"quiet", O_QUIET, false}, {"q", O_QUIET, false},
        {"deep", O_DEEP, false},       {"threads", O_THREADS, true}, {"allow-partial", O_PARTIAL, false},
        {"help", O_HELP, false},       {"version", O_VERSION, false}};
    const char **run_args = calloc((size_t)argc, sizeof *run_args);
    size_t n_runs = 0;
    if (!run_args) {
        mtr_cli_error(NULL, "out of memory");
        return 3;
    }
    for (int ai = 1; ai < argc; ai++) {
        const mtr_cli_option *opt = NULL;
        const char *val = NULL;
        int pr = mtr_cli_next(NULL, argc, argv, &ai, opts, sizeof opts / sizeof opts[0], &opt, &val);
        if (pr == MTR_CLI_POSITIONAL) {
            if (val) run_args[n_runs++] = val;
            continue;
        }
        if (pr == MTR_CLI_HELP) {
            usage(stdout);
            free(run_args);
            return 0;
        }
        if (pr) {
            free(run_args);
            return pr;
        }
        switch (opt->id) {
        case O_JSON: json = 1; break;
        case O_QUIET: quiet = 1; break;
        case O_DEEP: deep = 1; break;
        case O_THREADS: {
            uint32_t v;
            if (mtr_cli_parse_u32_in(&v, val, 1, 1024)) {
                mtr_cli_error(NULL, "--threads wants a number 1..1024, not '%s'", val);
                free(run_args);
                return 1;
            }
            threads = (int)v;
            break;
        }
        case O_PARTIAL: flags |= MTR_OPEN_ALLOW_PARTIAL; break;
        case O_HELP: usage(stdout); free(run_args); return 0;
        case O_VERSION:
            printf("moetrace-info %s (trace format %d)\n", MTR_VERSION_STRING, MTR_FORMAT_VERSION);
            free(run_args);
            return 0;
        default: break;
        }
    }
    if (n_runs == 0) {
        mtr_cli_error(NULL, "no run given (see --help)");
        free(run_args);
        return 1;
    }
    if (!threads) threads = omp_get_max_threads();

    mtr_run *r = NULL;
    int rc = mtr_run_open_many(&r, run_args, n_runs, flags);
    free(run_args);
    if (rc) {
        if (json) {
            json_t *o = json_pack("{s:b, s:s, s:s}", "valid", 0, "error", mtr_strerror(rc), "detail", mtr_errmsg());
            json_dumpf(o, stdout, JSON_INDENT(2));
            putchar('\n');
            json_decref(o);
        }
        mtr_cli_error(NULL, "%s", mtr_errmsg()[0] ? mtr_errmsg() : mtr_strerror(rc));
        return mtr_exit_code(rc);
    }

    const mtr_model_info *m = mtr_run_model(r);
    uint64_t n_tok = 0, stored = 0, nonfinite_seqs = 0;
    uint32_t n_partial = 0, n_orphans = 0;
    bool complete = true;
    for (size_t s = 0; s < mtr_run_n_shards(r); s++) {
        n_tok += mtr_run_shard(r, s)->n_tokens;
        stored += mtr_run_shard(r, s)->stored_bytes;
    }
    for (size_t i = 0; i < mtr_run_n_seqs(r); i++) nonfinite_seqs += (mtr_run_seq(r, i)->flags & MTR_SEQ_NONFINITE) != 0;
    for (size_t i = 0; i < mtr_run_n_runs(r); i++) {
        n_partial += mtr_run_get_meta(r, i)->n_partial;
        n_orphans += mtr_run_get_meta(r, i)->n_orphans;
        complete &= mtr_run_get_meta(r, i)->manifest_complete;
    }
    const mtr_run_meta *meta0 = mtr_run_get_meta(r, 0);
    bool has_logits = mtr_run_shard(r, 0)->has_logits;
    double raw = (double)n_tok * m->n_layers * m->n_experts * 4.0;
    size_t n_cells = 0, n_units = count_units(r);
    cell *cells = tabulate(r, &n_cells);

    uint64_t nonfinite = 0;
    char deep_err[1024] = "";
    int drc = deep ? deep_check(r, threads, &nonfinite, deep_err, sizeof deep_err) : 0;
    const char *verdict = drc ? "invalid" : deep ? "valid" : "valid (structure; --deep also decodes every chunk)";

    if (json) {
        json_t *o = json_object(), *runs = json_array(), *shards = json_array(), *table = json_array();
        for (size_t i = 0; i < mtr_run_n_runs(r); i++) {
            const mtr_run_meta *mm = mtr_run_get_meta(r, i);
            json_error_t je;
            json_t *steer = json_loads(mm->steering, JSON_DECODE_ANY, &je);
            json_array_append_new(runs, json_pack("{s:s, s:s, s:s, s:s, s:b, s:i, s:i, s:o}", "run_id", mm->run_id,
                                                  "producer", mm->producer, "producer_version", mm->producer_version,
                                                  "corpus_id", mm->corpus_id, "complete", mm->manifest_complete,
                                                  "partial_shards", (json_int_t)mm->n_partial, "unlisted_shards",
                                                  (json_int_t)mm->n_orphans, "steering",
                                                  steer ? steer : json_string(mm->steering)));
        }
        for (size_t s = 0; s < mtr_run_n_shards(r); s++) {
            const mtr_shard_info *si = mtr_run_shard(r, s);
            json_array_append_new(shards, json_pack("{s:s, s:I, s:I, s:I, s:I, s:i, s:b, s:b}", "path", si->path,
                                                    "n_sequences", (json_int_t)si->n_sequences, "n_tokens",
                                                    (json_int_t)si->n_tokens, "stored_bytes",
                                                    (json_int_t)si->stored_bytes, "file_bytes",
                                                    (json_int_t)si->file_bytes, "chunk_tokens",
                                                    (json_int_t)si->chunk_tokens, "logits", si->has_logits, "topk",
                                                    si->has_topk));
        }
        for (size_t i = 0; i < n_cells; i++)
            json_array_append_new(table, json_pack("{s:s, s:s, s:I, s:I}", "lang", cells[i].lang, "dataset",
                                                   cells[i].dataset, "sequences", (json_int_t)cells[i].n_seq,
                                                   "tokens", (json_int_t)cells[i].n_tok));
        json_t *li = json_array();
        for (uint32_t l = 0; l < m->n_layers; l++) json_array_append_new(li, json_integer(m->layer_index[l]));
        json_object_set_new(o, "model", json_pack("{s:s, s:s, s:i, s:i, s:o, s:i, s:i}", "model_id", m->model_id,
                                                  "model_type", m->model_type, "n_layers", (json_int_t)m->n_layers,
                                                  "n_decoder_layers", (json_int_t)m->n_decoder_layers, "layer_index",
                                                  li, "n_experts", (json_int_t)m->n_experts, "top_k",
                                                  (json_int_t)m->top_k));
        json_t *router = json_pack("{s:s, s:b, s:b, s:b}", "score_fn", mtr_score_fn_name(m->score_fn),
                                   "renormalize", m->renormalize, "router_bias", m->router_bias, "selection_bias",
                                   m->selection_bias != NULL);
        if (m->score_fn == MTR_SCORE_SPARSEMIXER)
            json_object_set_new(router, MTR_A_SPARSEMIXER_EPS, json_real(m->sparsemixer_eps));
        json_object_set_new(o, "router", router);
        json_object_set_new(o, "stored", json_pack("{s:s, s:s}", "what", mtr_stored_name(meta0->stored), "dtype",
                                                   mtr_dtype_name(meta0->stored_dtype)));
        json_object_set_new(o, "runs", runs);
        json_object_set_new(o, "shards", shards);
        json_object_set_new(o, "table", table);
        json_object_set_new(o, "n_sequences", json_integer((json_int_t)mtr_run_n_seqs(r)));
        json_object_set_new(o, "n_units", json_integer((json_int_t)n_units));
        json_object_set_new(o, "n_tokens", json_integer((json_int_t)n_tok));
        json_object_set_new(o, "raw_f32_bytes", json_real(raw));
        json_object_set_new(o, "stored_bytes", json_integer((json_int_t)stored));
        json_object_set_new(o, "compression_ratio", has_logits && stored ? json_real(raw / (double)stored) : json_null());
        json_object_set_new(o, "sequences_with_nonfinite", json_integer((json_int_t)nonfinite_seqs));
        if (deep) json_object_set_new(o, "nonfinite_values", json_integer((json_int_t)nonfinite));
        json_object_set_new(o, "deep", json_boolean(deep));
        json_object_set_new(o, "valid", json_boolean(!drc));
        if (drc) json_object_set_new(o, "error", json_string(deep_err));
        json_dumpf(o, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(o);
    } else if (!quiet) {
        char a[32], b[32];
        printf("runs       ");
        for (size_t i = 0; i < mtr_run_n_runs(r); i++) {
            const mtr_run_meta *mm = mtr_run_get_meta(r, i);
            printf("%s%s (%s %s%s)", i ? "\n           " : "", mm->run_id, mm->producer, mm->producer_version,
                   mm->manifest_complete ? ", complete" : ", not closed");
        }
        printf("\nmodel      %s (%s): %u MoE layers of %u decoder layers, %u experts, top-%u\n", m->model_id,
               m->model_type[0] ? m->model_type : "?", m->n_layers, m->n_decoder_layers, m->n_experts, m->top_k);
        char smx[64] = "";
        if (m->score_fn == MTR_SCORE_SPARSEMIXER) snprintf(smx, sizeof smx, " (eps %g)", m->sparsemixer_eps);
        printf("router     %s%s%s; router bias %s; selection-only bias %s\n", mtr_score_fn_name(m->score_fn), smx,
               m->renormalize ? ", top-k weights renormalised" : ", no renormalisation",
               m->router_bias ? "yes (included in logits)" : "no", m->selection_bias ? "yes (stored)" : "no");
        printf("stored     %s as %s", mtr_stored_name(meta0->stored), mtr_dtype_name(meta0->stored_dtype));
        if (has_logits) printf(", chunks of %u tokens, shuffle + zstd", mtr_run_shard(r, 0)->chunk_tokens);
        printf("\nsteering   %s\n", meta0->steering);
        printf("shards     %zu complete, %u partial (ignored), %u not in the manifest (ignored)\n",
               mtr_run_n_shards(r), n_partial, n_orphans);
        printf("sequences  %zu in %zu parallel units, %llu tokens", mtr_run_n_seqs(r), n_units,
               (unsigned long long)n_tok);
        if (nonfinite_seqs) printf(", %llu with NaN/Inf logits", (unsigned long long)nonfinite_seqs);
        human(a, sizeof a, raw);
        human(b, sizeof b, (double)stored);
        if (has_logits)
            printf("\nbytes      %s as f32, %s stored: %.2fx smaller\n", a, b, stored ? raw / (double)stored : 0.0);
        else
            printf("\nbytes      top-k only (no logits)\n");
        printf("\n%-14s %-14s %10s %12s\n", "lang", "dataset", "sequences", "tokens");
        for (size_t i = 0; i < n_cells; i++)
            printf("%-14s %-14s %10llu %12llu\n", cells[i].lang, cells[i].dataset, (unsigned long long)cells[i].n_seq,
                   (unsigned long long)cells[i].n_tok);
        printf("\n");
        if (deep && !drc) printf("checked    every chunk decoded; %llu NaN/Inf values\n", (unsigned long long)nonfinite);
    }
    if (!json) printf("verdict    %s%s%s\n", verdict, drc ? ": " : "", drc ? deep_err : "");
    if (drc) mtr_cli_error(NULL, "%s", deep_err);
    free(cells);
    mtr_run_close(r);
    return mtr_exit_code(drc);
}
