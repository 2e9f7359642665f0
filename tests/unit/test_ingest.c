/* test_ingest.c — the ingest stream (traces/INGEST.md, capture/mtr_ingest.h): encode/decode round trips, every
 * kind of malformed or truncated input refused with its offset (and never read past), the pipeline writing a run
 * equal to the frames, bad frames keeping earlier sequences, back-pressure under a slow writer with a bounded
 * buffer, resume, and a replay of the fuzz seed corpus (tests/fuzz/corpus/ingest). */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>

#include "mtr_ingest.h"
#include "testutil.h"

#define L 3
#define E 8
static char dir[256];

static void setup(void) { tu_tmpdir(dir, sizeof dir, "ingest"); }
static void teardown(void) { tu_rmrf(dir); }

typedef struct {
    unsigned char *data;
    size_t len, cap;
} buf;

static void put(buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void model_of(mtr_model_info *m) { mtr_model_info_init(m, "test/moe", "olmoe", L, E, 2); }

static void add_header(buf *b)
{
    mtr_model_info m;
    model_of(&m);
    void *h = NULL;
    size_t n = 0;
    mtr_ingest_header_extra x = MTR_INGEST_HEADER_EXTRA_INIT;
    x.producer = "test";
    x.corpus_id = "corpus-1";
    x.capture_settings = "{\"k\":1}";
    x.has_logits_dtype = true;
    x.logits_dtype = MTR_DTYPE_F32;
    TU_OK(mtr_ingest_encode_header(&h, &n, &m, &x));
    put(b, h, n);
    free(h);
}

static uint32_t len_of(uint64_t s) { return 1 + (uint32_t)(s * 7 % 23); }

/* sequence s: tokens len_of(s), logits tu_logit, all per-token arrays for even s, none for odd s */
static void add_seq(buf *b, uint64_t s)
{
    uint32_t T = len_of(s);
    float *z = tu_make_logits(s, T, L, E);
    int32_t ids[64], pos[64];
    uint8_t roles[64];
    for (uint32_t t = 0; t < T; t++) ids[t] = (int32_t)(s * 100 + t), pos[t] = (int32_t)t + 3, roles[t] = (uint8_t)(t % 4);
    char unit[32];
    snprintf(unit, sizeof unit, "unit-%llu", (unsigned long long)s / 2);
    mtr_seq_meta meta = {s, unit, s % 2 ? "fra_Latn" : "eng_Latn", "flores", T, s % 3 == 0 ? MTR_SEQ_TRUNCATED : 0};
    size_t cap = (size_t)mtr_ingest_seq_frame_bytes(L, E, T, MTR_DTYPE_F32, strlen(unit), 8, 6, 7), n = 0;
    unsigned char *f = malloc(cap);
    bool all = s % 2 == 0;
    TU_OK(mtr_ingest_encode_seq(f, cap, &n, L, E, &meta, all ? ids : NULL, all ? pos : NULL, all ? roles : NULL, z,
                                MTR_DTYPE_F32));
    ck_assert(all ? n == cap : n < cap);
    put(b, f, n);
    free(f);
    free(z);
}

static void add_end(buf *b, uint64_t n)
{
    unsigned char e[24];
    mtr_ingest_encode_end(e, n);
    put(b, e, sizeof e);
}

static buf stream(uint64_t n)
{
    buf b = {0};
    add_header(&b);
    for (uint64_t s = 0; s < n; s++) add_seq(&b, s);
    add_end(&b, n);
    return b;
}

/* decode everything; returns the final code (0 = clean end) and the sequences seen */
static int decode_all(const buf *b, uint64_t *n_seq, uint64_t *bad_at)
{
    mtr_ingest_mem m = {b->data, b->len, 0};
    mtr_ingest_decoder *d = NULL;
    *n_seq = 0;
    int rc = mtr_ingest_decoder_create(&d, mtr_ingest_mem_read, &m, 1u << 20);
    if (rc) return rc;
    mtr_ingest_seq q;
    while ((rc = mtr_ingest_decoder_next(d, &q)) == 1) (*n_seq)++;
    if (bad_at) *bad_at = mtr_ingest_decoder_bad_offset(d);
    mtr_ingest_decoder_destroy(d);
    return rc;
}

START_TEST(roundtrip)
{
    buf b = stream(6);
    mtr_ingest_mem m = {b.data, b.len, 0};
    mtr_ingest_decoder *d = NULL;
    TU_OK(mtr_ingest_decoder_create(&d, mtr_ingest_mem_read, &m, 0));
    const mtr_ingest_header *h = mtr_ingest_decoder_header(d);
    ck_assert_str_eq(h->model.model_id, "test/moe");
    ck_assert_uint_eq(h->model.n_layers, L);
    ck_assert_uint_eq(h->model.n_experts, E);
    ck_assert_str_eq(h->producer, "test");
    ck_assert_str_eq(h->corpus_id, "corpus-1");
    ck_assert(h->has_logits_dtype && h->logits_dtype == MTR_DTYPE_F32);
    ck_assert_ptr_null(h->steering);
    mtr_ingest_seq q;
    for (uint64_t s = 0; s < 6; s++) {
        ck_assert_int_eq(mtr_ingest_decoder_next(d, &q), 1);
        uint32_t T = len_of(s);
        ck_assert_uint_eq(q.meta.seq_id, s);
        ck_assert_uint_eq(q.meta.n_tokens, T);
        ck_assert_uint_eq(q.index, s);
        ck_assert_str_eq(q.meta.lang, s % 2 ? "fra_Latn" : "eng_Latn");
        ck_assert_str_eq(q.meta.dataset, "flores");
        ck_assert_uint_eq(q.meta.flags, s % 3 == 0 ? MTR_SEQ_TRUNCATED : 0);
        ck_assert_int_eq(q.token_ids != NULL, s % 2 == 0);
        ck_assert_int_eq(q.roles != NULL, s % 2 == 0);
        if (q.token_ids)
            for (uint32_t t = 0; t < T; t++) {
                ck_assert_int_eq(q.token_ids[t], (int32_t)(s * 100 + t));
                ck_assert_int_eq(q.positions[t], (int32_t)t + 3);
                ck_assert_uint_eq(q.roles[t], t % 4);
            }
        const float *z = q.logits;
        ck_assert_uint_eq((uintptr_t)z % 8, 0);
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t l = 0; l < L; l++)
                for (uint32_t e = 0; e < E; e++) ck_assert(z[((size_t)t * L + l) * E + e] == tu_logit(s, t, l, e));
    }
    ck_assert_int_eq(mtr_ingest_decoder_next(d, &q), 0);
    ck_assert_int_eq(mtr_ingest_decoder_next(d, &q), 0);
    ck_assert_uint_eq(mtr_ingest_decoder_offset(d), b.len);
    mtr_ingest_decoder_destroy(d);
    free(b.data);
}
END_TEST

/* every prefix of a stream: refused as truncated (never a crash, never a clean end) */
START_TEST(every_truncation)
{
    buf b = stream(3);
    for (size_t cut = 0; cut < b.len; cut++) {
        buf c = {b.data, cut, cut};
        uint64_t n = 0, at = 0;
        int rc = decode_all(&c, &n, &at);
        ck_assert_msg(rc == MTR_ETRUNCATED, "cut %zu: rc %d", cut, rc);
        ck_assert(n <= 3);
        ck_assert(at <= cut);
    }
    free(b.data);
}
END_TEST

static size_t header_len(void)
{
    buf h = {0};
    add_header(&h);
    free(h.data);
    return h.len;
}

/* patch one field of a 2-sequence stream and check the error code and reported offset */
static void corrupt(size_t at, const void *val, size_t n, int want_rc, uint64_t want_seqs, const char *needle)
{
    buf b = stream(2);
    memcpy(b.data + at, val, n);
    uint64_t got = 0, bad = 0;
    int rc = decode_all(&b, &got, &bad);
    ck_assert_msg(rc == want_rc, "patch at %zu: rc %d (%s), wanted %d", at, rc, mtr_errmsg(), want_rc);
    ck_assert_uint_eq(got, want_seqs);
    if (needle) ck_assert_msg(strstr(mtr_errmsg(), needle), "message: %s", mtr_errmsg());
    free(b.data);
}

START_TEST(malformed)
{
    size_t h = header_len(), f0 = h, body0 = f0 + 16;
    uint32_t u32;
    uint64_t u64;
    uint16_t u16;
    unsigned char c;
    corrupt(0, "X", 1, MTR_EFORMAT, 0, "magic");
    u16 = 2;
    corrupt(8, &u16, 2, MTR_EVERSION, 0, "version 2");
    u32 = 0;
    corrupt(12, &u32, 4, MTR_EFORMAT, 0, "header length");
    u32 = 0xffffffffu;
    corrupt(12, &u32, 4, MTR_EFORMAT, 0, "header length");
    corrupt(16, "[", 1, MTR_EFORMAT, 0, "header");
    corrupt(f0, "SEQX", 4, MTR_EFORMAT, 0, "tag");
    u32 = 1;
    corrupt(f0 + 4, &u32, 4, MTR_EFORMAT, 0, "reserved");
    u64 = (uint64_t)1 << 50; /* huge body: refused before any allocation */
    corrupt(f0 + 8, &u64, 8, MTR_EFORMAT, 0, "body");
    u64 = 40;
    corrupt(f0 + 8, &u64, 8, MTR_EFORMAT, 0, "does not match");
    u32 = 0;
    corrupt(body0 + 8, &u32, 4, MTR_EFORMAT, 0, "n_tokens");
    u32 = 1u << 30;
    corrupt(body0 + 8, &u32, 4, MTR_EFORMAT, 0, "n_tokens");
    u32 = 0x80;
    corrupt(body0 + 12, &u32, 4, MTR_EFORMAT, 0, "flags");
    c = 7;
    corrupt(body0 + 16, &c, 1, MTR_EFORMAT, 0, "dtype");
    c = 9;
    corrupt(body0 + 17, &c, 1, MTR_EFORMAT, 0, "fields");
    u16 = 5000;
    corrupt(body0 + 18, &u16, 2, MTR_EFORMAT, 0, "longer");
    u32 = E + 1;
    corrupt(body0 + 28, &u32, 4, MTR_EFORMAT, 0, "header says");
    corrupt(body0 + 32, "\xff", 1, MTR_EFORMAT, 0, "UTF-8");
    /* a role of 9 in sequence 0 (roles follow strings, token ids and positions) */
    size_t slen = strlen("unit-0") + 8 + 6, T0 = len_of(0);
    size_t roles0 = body0 + 32 + ((slen + 7) & ~7u) + 2 * ((T0 * 4 + 7) & ~7u);
    c = 9;
    corrupt(roles0, &c, 1, MTR_EFORMAT, 0, "role");
    /* end frame announcing the wrong count, then a bad end tag */
    buf b = stream(2);
    u64 = 5;
    memcpy(b.data + b.len - 8, &u64, 8);
    uint64_t n = 0, at = 0;
    ck_assert_int_eq(decode_all(&b, &n, &at), MTR_EFORMAT);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(at, b.len - 24);
    b.len -= 24; /* no end frame at all */
    ck_assert_int_eq(decode_all(&b, &n, &at), MTR_ETRUNCATED);
    ck_assert_msg(strstr(mtr_errmsg(), "without an end frame"), "%s", mtr_errmsg());
    ck_assert_uint_eq(at, b.len);
    free(b.data);
}
END_TEST

START_TEST(encoder_refuses)
{
    unsigned char f[4096];
    size_t n = 0;
    float z[L * E] = {0};
    mtr_seq_meta meta = {1, "u", "eng_Latn", "d", 1, 0};
    ck_assert_int_eq(mtr_ingest_encode_seq(f, 10, &n, L, E, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32), MTR_EINVAL);
    meta.n_tokens = 0;
    ck_assert_int_eq(mtr_ingest_encode_seq(f, sizeof f, &n, L, E, &meta, NULL, NULL, NULL, z, MTR_DTYPE_F32), MTR_EINVAL);
    ck_assert_uint_eq(mtr_ingest_seq_frame_bytes(L, E, 1, MTR_DTYPE_F32, 5000, 0, 0, 0), 0);
    mtr_model_info m;
    model_of(&m);
    m.top_k = 0;
    void *h = NULL;
    ck_assert_int_eq(mtr_ingest_encode_header(&h, &n, &m, NULL), MTR_EINVAL);
    ck_assert_ptr_null(h);
}
END_TEST

/* ---- pipeline ---------------------------------------------------------------------------------------------- */

typedef struct {
    int fd;
    const buf *b;
    size_t chunk;
} feeder;

static void *feed(void *arg)
{
    feeder *f = arg;
    for (size_t o = 0; o < f->b->len;) {
        size_t n = f->b->len - o < f->chunk ? f->b->len - o : f->chunk;
        ssize_t w = write(f->fd, f->b->data + o, n);
        if (w <= 0) break;
        o += (size_t)w;
    }
    close(f->fd);
    return NULL;
}

static int run_pipe(const buf *b, const char *out, const mtr_ingest_opts *o, mtr_ingest_result *res)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    /* a run that stops reading closes its end: the feeder's next write must fail with EPIPE, not kill the test */
    signal(SIGPIPE, SIG_IGN);
    feeder f = {p[1], b, 4093};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, feed, &f), 0);
    int rc = mtr_ingest_run(res, p[0], out, o);
    close(p[0]); /* unblocks a feeder the run stopped reading from */
    pthread_join(th, NULL);
    return rc;
}

static void check_run(const char *path, uint64_t first, uint64_t n)
{
    mtr_run *r = NULL;
    TU_OK(mtr_run_open(&r, path, 0));
    ck_assert_uint_eq(mtr_run_n_seqs(r), n);
    ck_assert(mtr_run_get_meta(r, 0)->manifest_complete);
    for (size_t i = 0; i < n; i++) {
        const mtr_seq_info *si = mtr_run_seq(r, i);
        uint64_t s = si->seq_id;
        ck_assert(s >= first && s < first + n);
        uint32_t T = len_of(s);
        ck_assert_uint_eq(si->n_tokens, T);
        ck_assert_str_eq(si->dataset, "flores");
        float *z = tu_guarded((size_t)T * L * E * sizeof *z);
        int32_t ids[64], pos[64];
        uint8_t roles[64];
        TU_OK(mtr_run_read_logits(r, i, z));
        TU_OK(mtr_run_read_tokens(r, i, ids, pos, roles));
        ck_assert(tu_guard_ok(z, (size_t)T * L * E * sizeof *z));
        for (uint32_t t = 0; t < T; t++) {
            ck_assert_int_eq(ids[t], s % 2 == 0 ? (int32_t)(s * 100 + t) : -1);
            ck_assert_int_eq(pos[t], s % 2 == 0 ? (int32_t)t + 3 : (int32_t)t);
            for (uint32_t l = 0; l < L; l++)
                for (uint32_t e = 0; e < E; e++) ck_assert(z[((size_t)t * L + l) * E + e] == tu_logit(s, t, l, e));
        }
        free(z);
    }
    mtr_run_close(r);
}

START_TEST(pipeline_writes_run)
{
    buf b = stream(40);
    char out[300];
    snprintf(out, sizeof out, "%s/run", dir);
    mtr_ingest_opts o = MTR_INGEST_OPTS_INIT;
    o.writer.sync = false;
    o.writer.shard_bytes = 4096; /* several shards */
    mtr_ingest_result res;
    TU_OK(run_pipe(&b, out, &o, &res));
    ck_assert_uint_eq(res.n_written, 40);
    ck_assert_uint_eq(res.bytes_read, b.len);
    ck_assert(!res.bad_frame);
    check_run(out, 0, 40);
    free(b.data);
}
END_TEST

START_TEST(pipeline_bad_frame_keeps_earlier)
{
    buf b = {0};
    add_header(&b);
    for (uint64_t s = 0; s < 5; s++) add_seq(&b, s);
    size_t bad = b.len;
    add_seq(&b, 5);
    b.data[bad + 16 + 16] = 9; /* dtype of sequence 5 */
    add_seq(&b, 6);
    add_end(&b, 7);
    char out[300];
    snprintf(out, sizeof out, "%s/run", dir);
    mtr_ingest_opts o = MTR_INGEST_OPTS_INIT;
    o.writer.sync = false;
    mtr_ingest_result res;
    ck_assert_int_eq(run_pipe(&b, out, &o, &res), MTR_EFORMAT);
    ck_assert(res.bad_frame);
    ck_assert_uint_eq(res.bad_offset, bad);
    char want[64];
    snprintf(want, sizeof want, "byte %zu:", bad);
    ck_assert_msg(strstr(mtr_errmsg(), want), "%s", mtr_errmsg());
    check_run(out, 0, 5);
    /* truncated in the middle of sequence 3's logits */
    buf c = stream(5);
    size_t cut = header_len();
    for (uint64_t s = 0; s < 3; s++) cut += (size_t)mtr_ingest_seq_frame_bytes(L, E, len_of(s), MTR_DTYPE_F32, 6, 8, 6, s % 2 ? 0 : 7);
    c.len = cut + 100;
    snprintf(out, sizeof out, "%s/run2", dir);
    ck_assert_int_eq(run_pipe(&c, out, &o, &res), MTR_ETRUNCATED);
    ck_assert_uint_eq(res.bad_offset, cut);
    check_run(out, 0, 3);
    free(b.data);
    free(c.data);
}
END_TEST

START_TEST(pipeline_backpressure_bounded)
{
    buf b = {0};
    add_header(&b);
    for (uint64_t s = 0; s < 60; s++) add_seq(&b, s);
    add_end(&b, 60);
    char out[300];
    snprintf(out, sizeof out, "%s/run", dir);
    mtr_ingest_opts o = MTR_INGEST_OPTS_INIT;
    o.writer.sync = false;
    o.buffer_bytes = 64 << 10;
    o.max_frames = 4;
    o.throttle_us = 2000; /* the writer is far slower than the feeder */
    mtr_ingest_result res;
    TU_OK(run_pipe(&b, out, &o, &res));
    ck_assert_uint_eq(res.n_written, 60);
    ck_assert_uint_le(res.peak_frames, 4);
    ck_assert_uint_le(res.peak_buffered, 64 << 10);
    ck_assert_uint_gt(res.n_stalls, 0);
    check_run(out, 0, 60);
    free(b.data);
}
END_TEST

START_TEST(pipeline_resume_and_duplicates)
{
    char out[300];
    snprintf(out, sizeof out, "%s/run", dir);
    mtr_ingest_opts o = MTR_INGEST_OPTS_INIT;
    o.writer.sync = false;
    mtr_ingest_result res;
    buf b = stream(10);
    TU_OK(run_pipe(&b, out, &o, &res));
    ck_assert_int_eq(run_pipe(&b, out, &o, &res), MTR_EEXIST);
    buf c = stream(14);
    o.writer.resume = true;
    TU_OK(run_pipe(&c, out, &o, &res));
    ck_assert_uint_eq(res.n_skipped, 10);
    ck_assert_uint_eq(res.n_written, 4);
    check_run(out, 0, 14);
    /* a seq_id twice in one stream: bad data at the second frame, the first kept */
    buf d = {0};
    add_header(&d);
    add_seq(&d, 0);
    size_t second = d.len;
    add_seq(&d, 0);
    add_end(&d, 2);
    snprintf(out, sizeof out, "%s/dup", dir);
    o.writer.resume = false;
    ck_assert_int_eq(run_pipe(&d, out, &o, &res), MTR_EDUP);
    ck_assert(res.bad_frame && res.bad_offset == second);
    check_run(out, 0, 1);
    free(b.data);
    free(c.data);
    free(d.data);
}
END_TEST

/* every file of the fuzz seed corpus decodes to a clean end or a pinned error, never anything else */
START_TEST(fuzz_corpus_replay)
{
    const char *base = "tests/fuzz/corpus/ingest";
    DIR *dp = opendir(base);
    ck_assert_ptr_nonnull(dp);
    struct dirent *de;
    int n_files = 0, n_ok = 0;
    while ((de = readdir(dp))) {
        if (de->d_name[0] == '.') continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", base, de->d_name);
        FILE *f = fopen(path, "rb");
        ck_assert_ptr_nonnull(f);
        buf b = {0};
        unsigned char tmp[65536];
        size_t k;
        while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) put(&b, tmp, k);
        fclose(f);
        uint64_t n = 0;
        int rc = decode_all(&b, &n, NULL);
        ck_assert_msg(rc == 0 || rc == MTR_EFORMAT || rc == MTR_ETRUNCATED || rc == MTR_EVERSION, "%s: rc %d", path, rc);
        ck_assert_msg((rc == 0) == (strncmp(de->d_name, "valid", 5) == 0), "%s: rc %d (%s)", path, rc,
                      mtr_errmsg());
        n_ok += rc == 0;
        n_files++;
        free(b.data);
    }
    closedir(dp);
    ck_assert_int_ge(n_files, 4);
    ck_assert_int_ge(n_ok, 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ingest");
    TCase *c = tcase_create("ingest");
    tcase_add_checked_fixture(c, setup, teardown);
    tcase_set_timeout(c, 60);
    tcase_add_test(c, roundtrip);
    tcase_add_test(c, every_truncation);
    tcase_add_test(c, malformed);
    tcase_add_test(c, encoder_refuses);
    tcase_add_test(c, pipeline_writes_run);
    tcase_add_test(c, pipeline_bad_frame_keeps_earlier);
    tcase_add_test(c, pipeline_backpressure_bounded);
    tcase_add_test(c, pipeline_resume_and_duplicates);
    tcase_add_test(c, fuzz_corpus_replay);
    suite_add_tcase(s, c);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
