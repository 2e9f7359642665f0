/* test_trace.c — writer/reader round trips, shards, resume, crash safety and every reader error. */
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"

#define L 3
#define E 10
#define K 2

static const char *LANGS[] = {"eng_Latn", "fra_Latn", "bam_Latn"};
static const char *DSETS[] = {"flores", "math"};

static void model_init(mtr_model_info *m)
{
    mtr_model_info_init(m, "test/tiny-moe", "qwen3_moe", L, E, K);
    m->n_decoder_layers = 5;
    m->layer_index[0] = 1;
    m->layer_index[1] = 2;
    m->layer_index[2] = 4;
    m->renormalize = true;
}

static uint32_t seq_len(uint64_t seq) { return 1 + (uint32_t)(tu_hash(seq) % 70); }

static void fill_meta(mtr_seq_meta *meta, char *unit, uint64_t seq)
{
    snprintf(unit, 32, "u%04llu", (unsigned long long)(seq / 3));
    meta->seq_id = seq;
    meta->unit_id = unit;
    meta->lang = LANGS[seq % 3];
    meta->dataset = DSETS[(seq / 3) % 2];
    meta->n_tokens = seq_len(seq);
    meta->flags = 0;
}

/* append sequences [first, first+n) with logits given in `in` dtype */
static void append_range(mtr_writer *w, uint64_t first, uint64_t n, mtr_dtype in)
{
    for (uint64_t s = first; s < first + n; s++) {
        mtr_seq_meta meta;
        char unit[32];
        fill_meta(&meta, unit, s);
        uint32_t T = meta.n_tokens;
        float *z = tu_make_logits(s, T, L, E);
        void *buf = z;
        uint16_t *h = NULL;
        if (in != MTR_DTYPE_F32) {
            h = malloc((size_t)T * L * E * 2);
            mtr_convert(h, in, z, MTR_DTYPE_F32, (size_t)T * L * E);
            buf = h;
        }
        int32_t *ids = malloc(T * 4), *pos = malloc(T * 4);
        uint8_t *roles = malloc(T);
        for (uint32_t t = 0; t < T; t++) {
            ids[t] = (int32_t)(s * 1000 + t);
            pos[t] = (int32_t)t + 7;
            roles[t] = (uint8_t)(t % MTR_ROLE_COUNT);
        }
        TU_OK(mtr_writer_append(w, &meta, ids, pos, roles, buf, in));
        free(z);
        free(h);
        free(ids);
        free(pos);
        free(roles);
    }
}

/* the value stored for a logit, after conversion f32 -> (in) -> (stored) */
static float expect(float x, mtr_dtype in, mtr_dtype stored)
{
    uint16_t h;
    if (in != MTR_DTYPE_F32) {
        mtr_convert(&h, in, &x, MTR_DTYPE_F32, 1);
        mtr_convert(&x, MTR_DTYPE_F32, &h, in, 1);
    }
    if (stored != MTR_DTYPE_F32) {
        mtr_convert(&h, stored, &x, MTR_DTYPE_F32, 1);
        mtr_convert(&x, MTR_DTYPE_F32, &h, stored, 1);
    }
    return x;
}

/* read every sequence back and compare with what was written */
static void verify_run(mtr_run *r, uint64_t n_expected, mtr_dtype in, mtr_dtype stored)
{
    ck_assert_uint_eq(mtr_run_n_seqs(r), n_expected);
    const mtr_model_info *m = mtr_run_model(r);
    ck_assert_uint_eq(m->n_layers, L);
    ck_assert_uint_eq(m->n_experts, E);
    ck_assert_uint_eq(m->top_k, K);
    ck_assert_int_eq(m->layer_index[2], 4);
    ck_assert(m->renormalize);
    ck_assert_str_eq(m->model_type, "qwen3_moe");
    bool *seen = calloc(n_expected, 1);
    for (size_t i = 0; i < mtr_run_n_seqs(r); i++) {
        const mtr_seq_info *q = mtr_run_seq(r, i);
        ck_assert_uint_lt(q->seq_id, n_expected);
        ck_assert(!seen[q->seq_id]);
        seen[q->seq_id] = true;
        mtr_seq_meta meta;
        char unit[32];
        fill_meta(&meta, unit, q->seq_id);
        ck_assert_str_eq(q->unit_id, unit);
        ck_assert_str_eq(q->lang, meta.lang);
        ck_assert_str_eq(q->dataset, meta.dataset);
        ck_assert_uint_eq(q->n_tokens, meta.n_tokens);
        size_t n = (size_t)q->n_tokens * L * E;
        float *got = tu_guarded(n * 4);
        TU_OK(mtr_run_read_logits(r, i, got));
        ck_assert(tu_guard_ok(got, n * 4));
        for (uint32_t t = 0; t < q->n_tokens; t++)
            for (uint32_t l = 0; l < L; l++)
                for (uint32_t e = 0; e < E; e++) {
                    float want = expect(tu_logit(q->seq_id, t, l, e), in, stored);
                    float have = got[((size_t)t * L + l) * E + e];
                    ck_assert_msg(memcmp(&want, &have, 4) == 0, "seq %llu t %u l %u e %u: %a != %a",
                                  (unsigned long long)q->seq_id, t, l, e, have, want);
                }
        int32_t *ids = tu_guarded(q->n_tokens * 4), *pos = tu_guarded(q->n_tokens * 4);
        uint8_t *roles = tu_guarded(q->n_tokens);
        TU_OK(mtr_run_read_tokens(r, i, ids, pos, roles));
        for (uint32_t t = 0; t < q->n_tokens; t++) {
            ck_assert_int_eq(ids[t], (int32_t)(q->seq_id * 1000 + t));
            ck_assert_int_eq(pos[t], (int32_t)t + 7);
            ck_assert_uint_eq(roles[t], t % MTR_ROLE_COUNT);
        }
        ck_assert(tu_guard_ok(ids, q->n_tokens * 4) && tu_guard_ok(pos, q->n_tokens * 4) &&
                  tu_guard_ok(roles, q->n_tokens));
        free(ids);
        free(pos);
        free(roles);
        free(got);
    }
    free(seen);
}

static mtr_writer *new_writer(const char *dir, mtr_dtype stored, uint32_t chunk, uint64_t shard_bytes, bool resume)
{
    mtr_model_info m;
    model_init(&m);
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.stored_dtype = stored;
    o.chunk_tokens = chunk;
    o.shard_bytes = shard_bytes;
    o.resume = resume;
    o.sync = false;
    o.run_id = "test-run";
    o.n_threads = 2;
    mtr_writer *w = NULL;
    TU_OK(mtr_writer_create(&w, dir, &m, &o));
    return w;
}

static void roundtrip(mtr_dtype in, mtr_dtype stored, uint32_t chunk, uint64_t shard_bytes, uint64_t n)
{
    char dir[256];
    tu_tmpdir(dir, sizeof dir, "rt");
    mtr_writer *w = new_writer(dir, stored, chunk, shard_bytes, false);
    append_range(w, 0, n, in);
    mtr_writer_stats st;
    mtr_writer_get_stats(w, &st);
    ck_assert_uint_eq(st.n_sequences, n);
    TU_OK(mtr_writer_close(w));
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, dir, 0));
    verify_run(r, n, in, stored);
    ck_assert(mtr_run_get_meta(r, 0)->manifest_complete);
    ck_assert_uint_eq(mtr_run_get_meta(r, 0)->stored_dtype, stored);
    ck_assert_str_eq(mtr_run_get_meta(r, 0)->run_id, "test-run");
    if (shard_bytes < 100000) ck_assert_uint_gt(mtr_run_n_shards(r), 3);
    mtr_run_close(r);
    tu_rmrf(dir);
}

START_TEST(roundtrip_f32_exact) { roundtrip(MTR_DTYPE_F32, MTR_DTYPE_F32, 256, 1 << 30, 60); }
END_TEST
START_TEST(roundtrip_bf16_rne) { roundtrip(MTR_DTYPE_F32, MTR_DTYPE_BF16, 16, 1 << 30, 60); }
END_TEST
START_TEST(roundtrip_f16_rne) { roundtrip(MTR_DTYPE_F32, MTR_DTYPE_F16, 7, 1 << 30, 60); }
END_TEST
START_TEST(roundtrip_bf16_input) { roundtrip(MTR_DTYPE_BF16, MTR_DTYPE_BF16, 32, 1 << 30, 30); }
END_TEST
START_TEST(roundtrip_f16_input_to_bf16) { roundtrip(MTR_DTYPE_F16, MTR_DTYPE_BF16, 32, 1 << 30, 30); }
END_TEST
START_TEST(roundtrip_many_shards) { roundtrip(MTR_DTYPE_F32, MTR_DTYPE_BF16, 8, 4000, 90); }
END_TEST

START_TEST(iterator_matches_reads)
{
    char dir[256];
    tu_tmpdir(dir, sizeof dir, "it");
    mtr_writer *w = new_writer(dir, MTR_DTYPE_BF16, 16, 20000, false);
    append_range(w, 0, 80, MTR_DTYPE_F32);
    TU_OK(mtr_writer_close(w));
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, dir, 0));
    size_t *sel = NULL, nsel = 0;
    TU_OK(mtr_run_select(&sel, &nsel, r, "fra_Latn", NULL, NULL));
    ck_assert_uint_gt(nsel, 10);
    for (size_t i = 0; i < nsel; i++) ck_assert_str_eq(mtr_run_seq(r, sel[i])->lang, "fra_Latn");
    for (int threads = 1; threads <= 2; threads++) {
        mtr_iter_opts io = {threads, 3};
        mtr_iter *it = NULL;
        TU_OK(mtr_iter_create(&it, r, sel, nsel, &io));
        mtr_block b;
        size_t k = 0;
        uint32_t next_tok = 0;
        float *ref = NULL;
        int rc;
        while ((rc = mtr_iter_next(it, &b)) == 1) {
            if (b.seq != sel[k] || b.tok0 != next_tok) {
                /* a new sequence starts: the previous one must have been complete */
                ck_assert_uint_eq(next_tok, mtr_run_seq(r, sel[k])->n_tokens);
                k++;
                next_tok = 0;
            }
            ck_assert_uint_eq(b.seq, sel[k]);
            ck_assert_uint_eq(b.tok0, next_tok);
            if (b.tok0 == 0) {
                free(ref);
                ref = malloc((size_t)mtr_run_seq(r, b.seq)->n_tokens * L * E * 4);
                TU_OK(mtr_run_read_logits(r, b.seq, ref));
            }
            ck_assert_mem_eq(b.logits, ref + (size_t)b.tok0 * L * E, (size_t)b.n_tokens * L * E * 4);
            next_tok += b.n_tokens;
        }
        ck_assert_int_eq(rc, 0);
        ck_assert_uint_eq(k, nsel - 1);
        ck_assert_uint_eq(next_tok, mtr_run_seq(r, sel[k])->n_tokens);
        free(ref);
        mtr_iter_destroy(it);
    }
    size_t *none = NULL, nnone = 7;
    TU_OK(mtr_run_select(&none, &nnone, r, "fra_Latn", "math", "no-such-unit"));
    ck_assert_uint_eq(nnone, 0);
    free(sel);
    mtr_run_close(r);
    tu_rmrf(dir);
}
END_TEST

START_TEST(topk_store_matches_route)
{
    char dir[256];
    tu_tmpdir(dir, sizeof dir, "topk");
    mtr_model_info m;
    model_init(&m);
    float bias[L * E];
    for (int i = 0; i < L * E; i++) bias[i] = (i % 7 == 0) ? 0.5f : 0.0f;
    m.selection_bias = bias;
    m.score_fn = MTR_SCORE_SIGMOID;
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.store_logits = false;
    o.store_topk = true;
    o.sync = false;
    mtr_writer *w = NULL;
    TU_OK(mtr_writer_create(&w, dir, &m, &o));
    append_range(w, 0, 12, MTR_DTYPE_F32);
    TU_OK(mtr_writer_close(w));
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, dir, 0));
    ck_assert(mtr_run_model(r)->selection_bias != NULL);
    ck_assert(mtr_run_model(r)->selection_bias[7] == 0.5f);
    ck_assert_uint_eq(mtr_run_get_meta(r, 0)->stored, MTR_STORED_TOPK);
    float *tmp = malloc(E * 4);
    ck_assert_int_eq(mtr_run_read_logits(r, 0, tmp), MTR_ENOTFOUND);
    for (size_t i = 0; i < mtr_run_n_seqs(r); i++) {
        const mtr_seq_info *q = mtr_run_seq(r, i);
        uint16_t *ids = malloc((size_t)q->n_tokens * L * K * 2);
        float *wt = malloc((size_t)q->n_tokens * L * K * 4);
        TU_OK(mtr_run_read_topk(r, i, ids, wt));
        float *z = tu_make_logits(q->seq_id, q->n_tokens, L, E);
        for (uint32_t t = 0; t < q->n_tokens; t++)
            for (uint32_t l = 0; l < L; l++) {
                uint16_t want[K];
                float ww[K];
                mtr_route(&m, l, z + ((size_t)t * L + l) * E, want, ww, tmp);
                for (int k = 0; k < K; k++) {
                    ck_assert_uint_eq(ids[((size_t)t * L + l) * K + k], want[k]);
                    ck_assert(wt[((size_t)t * L + l) * K + k] == ww[k]);
                }
            }
        free(z);
        free(ids);
        free(wt);
    }
    free(tmp);
    mtr_run_close(r);
    tu_rmrf(dir);
}
END_TEST

START_TEST(nonfinite_flagged)
{
    char dir[256];
    tu_tmpdir(dir, sizeof dir, "nan");
    mtr_writer *w = new_writer(dir, MTR_DTYPE_BF16, 16, 1 << 30, false);
    float z[2 * L * E];
    for (int i = 0; i < 2 * L * E; i++) z[i] = (float)i;
    mtr_seq_meta meta = {1, "u1", "eng_Latn", "flores", 2, 0};
    TU_OK(mtr_writer_append(w, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32));
    z[37] = NAN;
    meta.seq_id = 2;
    TU_OK(mtr_writer_append(w, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32));
    ck_assert_int_eq(mtr_writer_append(w, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32), MTR_EDUP);
    TU_OK(mtr_writer_close(w));
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, dir, 0));
    ck_assert_uint_eq(mtr_run_seq(r, 0)->flags & MTR_SEQ_NONFINITE, 0);
    ck_assert_uint_eq(mtr_run_seq(r, 1)->flags & MTR_SEQ_NONFINITE, MTR_SEQ_NONFINITE);
    float got[2 * L * E];
    TU_OK(mtr_run_read_logits(r, 1, got));
    ck_assert(isnan(got[37]));
    int32_t pos[2];
    uint8_t roles[2];
    TU_OK(mtr_run_read_tokens(r, 1, NULL, pos, roles));
    ck_assert_int_eq(pos[1], 1);
    ck_assert_uint_eq(roles[0], MTR_ROLE_PROMPT);
    mtr_run_close(r);
    tu_rmrf(dir);
}
END_TEST

START_TEST(existing_run_and_resume_rules)
{
    char dir[256];
    tu_tmpdir(dir, sizeof dir, "exist");
    mtr_writer *w = new_writer(dir, MTR_DTYPE_BF16, 16, 1 << 30, false);
    append_range(w, 0, 5, MTR_DTYPE_F32);
    TU_OK(mtr_writer_close(w));
    mtr_model_info m;
    model_init(&m);
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.sync = false;
    ck_assert_int_eq(mtr_writer_create(&w, dir, &m, &o), MTR_EEXIST);
    o.resume = true;
    m.n_experts = E + 1;
    ck_assert_int_eq(mtr_writer_create(&w, dir, &m, &o), MTR_EMISMATCH);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), dir));
    model_init(&m);
    o.stored_dtype = MTR_DTYPE_F32;
    ck_assert_int_eq(mtr_writer_create(&w, dir, &m, &o), MTR_EMISMATCH);
    tu_rmrf(dir);
}
END_TEST

/* A crash leaves the shard in progress as *.partial: readers ignore it; resume drops it and redoes its sequences. */
START_TEST(resume_after_crash)
{
    char dir[256];
    tu_tmpdir(dir, sizeof dir, "resume");
    mtr_writer *w = new_writer(dir, MTR_DTYPE_BF16, 16, 1 << 30, false);
    append_range(w, 0, 20, MTR_DTYPE_F32);
    TU_OK(mtr_writer_flush(w));
    append_range(w, 20, 10, MTR_DTYPE_F32);
    mtr_writer_destroy(w); /* what a kill leaves: shard-000001.h5.partial */
    char partial[512];
    snprintf(partial, sizeof partial, "%s/shard-000001.h5.partial", dir);
    ck_assert_int_eq(access(partial, F_OK), 0);

    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, dir, 0));
    ck_assert_uint_eq(mtr_run_n_seqs(r), 20);
    ck_assert_uint_eq(mtr_run_get_meta(r, 0)->n_partial, 1);
    ck_assert(!mtr_run_get_meta(r, 0)->manifest_complete);
    mtr_run_close(r);
    ck_assert_int_eq(mtr_run_open(&r, partial, 0), MTR_EPARTIAL);

    w = new_writer(dir, MTR_DTYPE_BF16, 16, 1 << 30, true);
    ck_assert_int_ne(access(partial, F_OK), 0);
    for (uint64_t s = 0; s < 20; s++) ck_assert(mtr_writer_has_seq(w, s));
    for (uint64_t s = 20; s < 40; s++) ck_assert(!mtr_writer_has_seq(w, s));
    append_range(w, 20, 20, MTR_DTYPE_F32);
    TU_OK(mtr_writer_close(w));
    TU_OK(mtr_run_open(&r, dir, 0));
    verify_run(r, 40, MTR_DTYPE_F32, MTR_DTYPE_BF16);
    ck_assert(mtr_run_get_meta(r, 0)->manifest_complete);
    ck_assert_str_eq(mtr_run_get_meta(r, 0)->run_id, "test-run");
    mtr_run_close(r);
    tu_rmrf(dir);
}
END_TEST

/* SIGKILL a writer at a random moment: every finished shard stays readable, the manifest lists only finished
 * shards, and a resumed writer completes the run with exactly the right sequences. */
START_TEST(sigkill_mid_run)
{
    char dir[256];
    tu_tmpdir(dir, sizeof dir, "kill");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        mtr_writer *w = new_writer(dir, MTR_DTYPE_BF16, 16, 6000, false);
        for (uint64_t s = 0; s < 1000000; s++) append_range(w, s, 1, MTR_DTYPE_F32);
        _exit(0);
    }
    /* wait until a few shards are finished, then kill without warning */
    char path[512];
    for (int tries = 0; tries < 2000; tries++) {
        snprintf(path, sizeof path, "%s/shard-000004.h5", dir);
        if (access(path, F_OK) == 0) break;
        usleep(5000);
    }
    usleep((useconds_t)(tu_hash((uint64_t)getpid()) % 20000));
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    ck_assert(WIFSIGNALED(status));

    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, dir, 0));
    size_t n = mtr_run_n_seqs(r);
    ck_assert_uint_gt(mtr_run_n_shards(r), 3);
    /* finished sequences are exactly 0..n-1 (written in order) and their data is intact */
    verify_run(r, n, MTR_DTYPE_F32, MTR_DTYPE_BF16);
    mtr_run_close(r);

    mtr_writer *w = new_writer(dir, MTR_DTYPE_BF16, 16, 6000, true);
    uint64_t total = n + 25;
    for (uint64_t s = 0; s < total; s++)
        if (!mtr_writer_has_seq(w, s)) append_range(w, s, 1, MTR_DTYPE_F32);
    TU_OK(mtr_writer_close(w));
    TU_OK(mtr_run_open(&r, dir, 0));
    verify_run(r, total, MTR_DTYPE_F32, MTR_DTYPE_BF16);
    ck_assert_uint_eq(mtr_run_get_meta(r, 0)->n_partial, 0);
    mtr_run_close(r);
    tu_rmrf(dir);
}
END_TEST

/* ---- reader errors ---- */

static void make_small_run(char *dir, size_t cap, const char *tag)
{
    tu_tmpdir(dir, cap, tag);
    mtr_writer *w = new_writer(dir, MTR_DTYPE_BF16, 16, 1 << 30, false);
    append_range(w, 0, 12, MTR_DTYPE_F32);
    TU_OK(mtr_writer_close(w));
}

static void copy_file(const char *from, const char *to, long truncate_to)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    ck_assert_int_eq(system(cmd), 0);
    if (truncate_to >= 0) ck_assert_int_eq(truncate(to, truncate_to), 0);
}

START_TEST(error_truncated_shard)
{
    char dir[256], shard[512], cut[512];
    make_small_run(dir, sizeof dir, "trunc");
    snprintf(shard, sizeof shard, "%s/shard-000000.h5", dir);
    struct stat st;
    ck_assert_int_eq(stat(shard, &st), 0);
    snprintf(cut, sizeof cut, "%s/cut.h5", dir);
    copy_file(shard, cut, st.st_size / 2);
    mtr_run *r = NULL;
    ck_assert_int_eq(mtr_run_open(&r, cut, 0), MTR_ETRUNCATED);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "cut.h5"));
    /* the same through the run directory: the listed shard is cut short */
    copy_file(cut, shard, -1);
    ck_assert_int_eq(mtr_run_open(&r, dir, 0), MTR_ETRUNCATED);
    tu_rmrf(dir);
}
END_TEST

START_TEST(error_wrong_version)
{
    char dir[256], shard[512];
    make_small_run(dir, sizeof dir, "ver");
    snprintf(shard, sizeof shard, "%s/shard-000000.h5", dir);
    hid_t f = H5Fopen(shard, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    hid_t a = H5Aopen(f, MTR_A_FORMAT_VERSION, H5P_DEFAULT);
    uint32_t v = 2;
    H5Awrite(a, H5T_NATIVE_UINT32, &v);
    H5Aclose(a);
    H5Fclose(f);
    mtr_run *r = NULL;
    ck_assert_int_eq(mtr_run_open(&r, shard, 0), MTR_EVERSION);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "format_version 2"));
    tu_rmrf(dir);
}
END_TEST

START_TEST(error_corrupt_chunk)
{
    char dir[256], shard[512];
    make_small_run(dir, sizeof dir, "corrupt");
    snprintf(shard, sizeof shard, "%s/shard-000000.h5", dir);
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, dir, 0));
    mtr_chunk_ref c = mtr_run_chunks(r, 0)[1];
    mtr_run_close(r);
    /* overwrite the middle of chunk 1 with garbage */
    int fd = open(shard, O_WRONLY);
    uint8_t junk[64];
    memset(junk, 0xa5, sizeof junk);
    ck_assert_int_eq(pwrite(fd, junk, sizeof junk, (off_t)(c.addr + c.size / 2)), (ssize_t)sizeof junk);
    close(fd);
    TU_OK(mtr_run_open(&r, dir, 0));
    int rc = 0;
    for (size_t i = 0; i < mtr_run_n_seqs(r) && !rc; i++) {
        float *buf = malloc((size_t)mtr_run_seq(r, i)->n_tokens * L * E * 4);
        rc = mtr_run_read_logits(r, i, buf);
        free(buf);
    }
    ck_assert_int_eq(rc, MTR_ECORRUPT);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "chunk 1"));
    /* the iterator reports it too, from worker threads */
    mtr_iter *it = NULL;
    mtr_iter_opts io = {2, 4};
    TU_OK(mtr_iter_create(&it, r, NULL, 0, &io));
    mtr_block b;
    while ((rc = mtr_iter_next(it, &b)) == 1) {
    }
    ck_assert_int_eq(rc, MTR_ECORRUPT);
    mtr_iter_destroy(it);
    mtr_run_close(r);
    tu_rmrf(dir);
}
END_TEST

START_TEST(error_not_a_trace)
{
    char dir[256], path[512];
    tu_tmpdir(dir, sizeof dir, "junk");
    mtr_run *r = NULL;
    ck_assert_int_eq(mtr_run_open(&r, dir, 0), MTR_ENOTFOUND); /* no run.json */
    snprintf(path, sizeof path, "%s/plain.h5", dir);
    FILE *f = fopen(path, "w");
    fputs("not hdf5 at all\n", f);
    fclose(f);
    ck_assert_int_eq(mtr_run_open(&r, path, 0), MTR_EFORMAT);
    hid_t h = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(h);
    ck_assert_int_eq(mtr_run_open(&r, path, 0), MTR_EFORMAT);
    snprintf(path, sizeof path, "%s/run.json", dir);
    f = fopen(path, "w");
    fputs("{\"format\": \"moetrace\", ", f);
    fclose(f);
    ck_assert_int_eq(mtr_run_open(&r, dir, 0), MTR_EFORMAT);
    ck_assert_int_eq(mtr_run_open(&r, "/nonexistent/run", 0), MTR_ENOTFOUND);
    tu_rmrf(dir);
}
END_TEST

/* One flipped bit anywhere in the global heap that holds a shard's strings (attributes and the /seq string
 * columns) gives a clean error naming the file, or a valid open; never a crash or a hang inside HDF5 (1.10 trusts
 * the object sizes in a heap collection). Every bit of the used part of the collection is tried. */
static void flip_and_open(const char *path, int fd, uint64_t off, int bit, uint8_t orig, size_t *n_err)
{
    uint8_t v = (uint8_t)(orig ^ (1u << bit));
    ck_assert_int_eq(pwrite(fd, &v, 1, (off_t)off), 1);
    mtr_run *r = NULL;
    int rc = mtr_run_open(&r, path, 0);
    if (rc == 0) {
        mtr_run_close(r);
    } else {
        ck_assert_msg(rc < 0 && strstr(mtr_errmsg(), path) && !strchr(mtr_errmsg(), '\n'),
                      "byte %llu bit %d: rc %d, message '%s'", (unsigned long long)off, bit, rc, mtr_errmsg());
        (*n_err)++;
    }
    ck_assert_int_eq(pwrite(fd, &orig, 1, (off_t)off), 1);
}

START_TEST(error_string_heap_bit_flips)
{
    char dir[256], shard[512], flip[512];
    make_small_run(dir, sizeof dir, "heapflip");
    snprintf(shard, sizeof shard, "%s/shard-000000.h5", dir);
    snprintf(flip, sizeof flip, "%s/flip.h5", dir);
    copy_file(shard, flip, -1);
    FILE *f = fopen(flip, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    rewind(f);
    uint8_t *d = malloc(n);
    ck_assert_uint_eq(fread(d, 1, n, f), n);
    fclose(f);
    /* the collection: "GCOL", version, size; objects (index, refs, reserved, size, data padded to 8) up to the
     * free-space object (index 0), whose header ends the used part */
    uint8_t *g = memmem(d, n, "GCOL", 4);
    ck_assert_ptr_nonnull(g);
    uint64_t g0 = (uint64_t)(g - d), end = g0 + 16;
    for (;;) {
        uint16_t idx;
        uint64_t sz;
        memcpy(&idx, d + end, 2);
        memcpy(&sz, d + end + 8, 8);
        end += 16;
        if (idx == 0) break;
        end += (sz + 7) / 8 * 8;
        ck_assert_uint_lt(end, n);
    }
    int fd = open(flip, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    size_t n_err = 0;
    for (uint64_t off = g0; off < end; off++)
        for (int bit = 0; bit < 8; bit++) flip_and_open(flip, fd, off, bit, d[off], &n_err);
    close(fd);
    /* the sizes of the objects are among the bits, so some flips must have been refused */
    ck_assert_uint_gt(n_err, 0);
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, flip, 0));
    mtr_run_close(r);
    free(d);
    tu_rmrf(dir);
}
END_TEST

START_TEST(error_mixed_models)
{
    char a[256], b[256];
    make_small_run(a, sizeof a, "mixa");
    tu_tmpdir(b, sizeof b, "mixb");
    mtr_model_info m;
    mtr_model_info_init(&m, "other/model", "olmoe", L, E + 2, K);
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.sync = false;
    mtr_writer *w = NULL;
    TU_OK(mtr_writer_create(&w, b, &m, &o));
    float z[L * (E + 2)];
    memset(z, 0, sizeof z);
    mtr_seq_meta meta = {1, "u", "eng_Latn", "flores", 1, 0};
    TU_OK(mtr_writer_append(w, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32));
    TU_OK(mtr_writer_close(w));
    const char *paths[2] = {a, b};
    mtr_run *r = NULL;
    ck_assert_int_eq(mtr_run_open_many(&r, paths, 2, 0), MTR_EMISMATCH);
    paths[1] = a;
    TU_OK(mtr_run_open_many(&r, paths, 2, 0));
    ck_assert_uint_eq(mtr_run_n_seqs(r), 24);
    ck_assert_uint_eq(mtr_run_n_runs(r), 2);
    mtr_run_close(r);
    tu_rmrf(a);
    tu_rmrf(b);
}
END_TEST

/* A caller adding context to the detail of a failed call passes mtr_errmsg() itself as an argument: the result is
 * the context and the detail, not the context twice or garbage ("F: F: "); a long detail is cut, still one line. */
START_TEST(error_detail_with_context)
{
    ck_assert_int_eq(mtr_fail(MTR_EFORMAT, "F"), MTR_EFORMAT);
    ck_assert_int_eq(mtr_fail(MTR_EFORMAT, "%s: %s", "a/b.h5", mtr_errmsg()), MTR_EFORMAT);
    ck_assert_str_eq(mtr_errmsg(), "a/b.h5: F");
    ck_assert_int_eq(mtr_fail(MTR_EIO, "%s (%s)", mtr_errmsg(), mtr_errmsg()), MTR_EIO);
    ck_assert_str_eq(mtr_errmsg(), "a/b.h5: F (a/b.h5: F)");
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    mtr_fail(MTR_EFORMAT, "%s\nmore", big);
    for (int i = 0; i < 3; i++) mtr_fail(MTR_EFORMAT, "p%d: %s", i, mtr_errmsg());
    ck_assert_ptr_null(strchr(mtr_errmsg(), '\n'));
    ck_assert(strncmp(mtr_errmsg(), "p2: p1: p0: xxx", 15) == 0);
    ck_assert_uint_eq(strspn(mtr_errmsg() + 12, "x"), strlen(mtr_errmsg() + 12)); /* cut inside the x's */
}
END_TEST

START_TEST(writer_rejects_bad_input)
{
    char dir[256];
    tu_tmpdir(dir, sizeof dir, "bad");
    mtr_model_info m;
    model_init(&m);
    m.top_k = E + 1;
    mtr_writer *w = NULL;
    ck_assert_int_eq(mtr_writer_create(&w, dir, &m, NULL), MTR_EINVAL);
    model_init(&m);
    m.layer_index[2] = 1; /* not increasing */
    ck_assert_int_eq(mtr_writer_create(&w, dir, &m, NULL), MTR_EINVAL);
    model_init(&m);
    w = new_writer(dir, MTR_DTYPE_BF16, 16, 1 << 30, false);
    float z[L * E] = {0};
    mtr_seq_meta meta = {1, "u", "eng_Latn", "flores", 0, 0};
    ck_assert_int_eq(mtr_writer_append(w, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32), MTR_EINVAL);
    meta.n_tokens = 1;
    uint8_t role = 9;
    ck_assert_int_eq(mtr_writer_append(w, &meta, NULL, NULL, &role, z, MTR_DTYPE_F32), MTR_EINVAL);
    ck_assert_int_eq(mtr_writer_append(w, &meta, NULL, NULL, NULL, NULL, MTR_DTYPE_F32), MTR_EINVAL);
    TU_OK(mtr_writer_append(w, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32));
    TU_OK(mtr_writer_close(w));
    tu_rmrf(dir);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("trace");
    TCase *tc = tcase_create("roundtrip");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, roundtrip_f32_exact);
    tcase_add_test(tc, roundtrip_bf16_rne);
    tcase_add_test(tc, roundtrip_f16_rne);
    tcase_add_test(tc, roundtrip_bf16_input);
    tcase_add_test(tc, roundtrip_f16_input_to_bf16);
    tcase_add_test(tc, roundtrip_many_shards);
    tcase_add_test(tc, iterator_matches_reads);
    tcase_add_test(tc, topk_store_matches_route);
    tcase_add_test(tc, nonfinite_flagged);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("crash");
    tcase_set_timeout(tr, 120);
    tcase_add_test(tr, existing_run_and_resume_rules);
    tcase_add_test(tr, resume_after_crash);
    tcase_add_test(tr, sigkill_mid_run);
    suite_add_tcase(s, tr);
    TCase *te = tcase_create("errors");
    tcase_set_timeout(te, 300);
    tcase_add_test(te, error_truncated_shard);
    tcase_add_test(te, error_wrong_version);
    tcase_add_test(te, error_corrupt_chunk);
    tcase_add_test(te, error_not_a_trace);
    tcase_add_test(te, error_mixed_models);
    tcase_add_test(te, error_string_heap_bit_flips);
    tcase_add_test(te, writer_rejects_bad_input);
    tcase_add_test(te, error_detail_with_context);
    suite_add_tcase(s, te);
    return s;
}

int main(void)
{
    if (!getenv("MTR_HDF5_ERRORS")) H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
