/* test_reduce.c — the per-token kernels of moetrace-reduce (kernels.c, kernels_avx2.c) against plain references:
 * the token kernel (softmax weights, top-k counts and bitset, token entropy; f32 and bf16 rows; weights into q or
 * through f32 partial sums) with ties, all-equal rows, extreme ranges, k = 1, k = n, k > 8 and n not a multiple
 * of 8, on the AVX2 path and with it switched off; the checked widening and the NaN/Inf scan of bf16 rows; the
 * Jaccard consistency of top-k sets. Outputs are guarded. */
#include <float.h>
#include <math.h>

#include "reduce_internal.h"
#include "testutil.h"

/* the reference selection: a stable sort by descending logit, ties to the lower index */
static void ref_topk(uint32_t *ids, const float *z, uint32_t n, uint32_t k)
{
    uint32_t order[1024];
    for (uint32_t e = 0; e < n; e++) order[e] = e;
    for (uint32_t a = 1; a < n; a++)
        for (uint32_t b = a; b > 0 && z[order[b]] > z[order[b - 1]]; b--) {
            uint32_t t = order[b];
            order[b] = order[b - 1];
            order[b - 1] = t;
        }
    for (uint32_t i = 0; i < k; i++) ids[i] = order[i];
}

/* one row through mtr_token_accumulate (into zeroed, guarded outputs; weights straight into q, or through f32
 * partial sums and mtr_token_flush) and through the double-precision reference */
static void check_row_into(const float *z, uint32_t n, uint32_t k, const char *what, bool use_qf)
{
    mtr_model_info m;
    mtr_model_info_init(&m, "test", "test", 1, n, k);
    const uint32_t words = (n + 63) / 64;
    double *q = tu_guarded(n * sizeof *q), *ent = tu_guarded(sizeof *ent);
    uint32_t *a = tu_guarded(n * sizeof *a);
    uint64_t *bits = tu_guarded(words * sizeof *bits);
    float *scratch = tu_guarded(2 * n * sizeof *scratch), hint = -FLT_MAX;
    memset(q, 0, n * sizeof *q);
    memset(a, 0, n * sizeof *a);
    memset(bits, 0xff, words * sizeof *bits); /* the kernel sets every word */
    *ent = 0;
    float *qf = use_qf ? tu_guarded(n * sizeof *qf) : NULL;
    if (qf) memset(qf, 0, n * sizeof *qf);
    mtr_token_acc acc = {q, a, ent, bits, &hint, qf};
    mtr_token_accumulate(&m, 0, z, false, &acc, scratch);
    if (qf) {
        mtr_token_flush(q, qf, n);
        for (uint32_t e = 0; e < n; e++) ck_assert(qf[e] == 0);
        ck_assert_msg(tu_guard_ok(qf, n * sizeof *qf), "%s: n %u k %u: write past qf", what, n, k);
        free(qf);
    }

    double mx = -INFINITY, sum = 0, h = 0;
    for (uint32_t e = 0; e < n; e++) mx = fmax(mx, z[e]);
    for (uint32_t e = 0; e < n; e++) sum += exp((double)z[e] - mx);
    for (uint32_t e = 0; e < n; e++) {
        double p = exp((double)z[e] - mx) / sum;
        ck_assert_msg(fabs(q[e] - p) <= 2e-6 * p + 1e-30, "%s: n %u k %u q[%u] = %.9g, want %.9g", what, n, k, e,
                      q[e], p);
        if (p > 0) h -= p * log(p);
    }
    ck_assert_msg(fabs(*ent - h) <= 2e-5, "%s: n %u k %u entropy %.9g, want %.9g", what, n, k, *ent, h);
    uint32_t ids[1024], want_a[1024] = {0};
    uint64_t want_bits[16] = {0};
    ref_topk(ids, z, n, k);
    for (uint32_t i = 0; i < k; i++) {
        want_a[ids[i]] = 1;
        want_bits[ids[i] >> 6] |= (uint64_t)1 << (ids[i] & 63);
    }
    for (uint32_t e = 0; e < n; e++)
        ck_assert_msg(a[e] == want_a[e], "%s: n %u k %u count of expert %u is %u, want %u", what, n, k, e, a[e],
                      want_a[e]);
    for (uint32_t w = 0; w < words; w++)
        ck_assert_msg(bits[w] == want_bits[w], "%s: n %u k %u selection word %u %016llx, want %016llx", what, n, k, w,
                      (unsigned long long)bits[w], (unsigned long long)want_bits[w]);
    /* a row that bf16 holds exactly: the bf16 entry point gives the same bits */
    bool exact = true;
    uint16_t *zb = tu_guarded(n * sizeof *zb);
    for (uint32_t e = 0; e < n; e++) {
        zb[e] = (uint16_t)(mtr_f32_to_bf16(z[e]));
        exact &= mtr_bf16_to_f32(zb[e]) == z[e];
    }
    if (exact && mtr_token_bf16_direct(&m, false)) {
        double *q2 = calloc(n, sizeof *q2), ent2 = 0;
        uint32_t *a2 = calloc(n, sizeof *a2);
        uint64_t bits2[16];
        float *qf2 = use_qf ? calloc(n, sizeof *qf2) : NULL;
        mtr_token_acc acc2 = {q2, a2, &ent2, bits2, &hint, qf2};
        mtr_token_accumulate_bf16(&m, zb, &acc2, scratch);
        if (qf2) mtr_token_flush(q2, qf2, n);
        ck_assert_msg(memcmp(q, q2, n * sizeof *q) == 0 && memcmp(a, a2, n * sizeof *a) == 0 &&
                          memcmp(bits, bits2, words * sizeof *bits) == 0 && ent2 == *ent,
                      "%s: n %u k %u: bf16 entry point differs", what, n, k);
        free(q2);
        free(a2);
        free(qf2);
    }
    ck_assert(tu_guard_ok(zb, n * sizeof *zb));
    free(zb);
    ck_assert_msg(tu_guard_ok(q, n * sizeof *q) && tu_guard_ok(a, n * sizeof *a) &&
                      tu_guard_ok(bits, words * sizeof *bits) && tu_guard_ok(ent, sizeof *ent) &&
                      tu_guard_ok(scratch, 2 * n * sizeof *scratch),
                  "%s: n %u k %u: write past an output", what, n, k);
    free(q);
    free(ent);
    free(a);
    free(bits);
    free(scratch);
}

static void check_row(const float *z, uint32_t n, uint32_t k, const char *what)
{
    check_row_into(z, n, k, what, false);
    check_row_into(z, n, k, what, true);
}

/* every row kind at one (n, k) */
static void check_shapes(uint32_t n, uint32_t k, uint64_t seed)
{
    float z[1024] = {0};
    for (uint32_t e = 0; e < n; e++) z[e] = tu_logit(seed, 1, 2, e); /* distinct, in [-8, 8) */
    check_row(z, n, k, "random");
    for (uint32_t e = 0; e < n; e++) z[e] = (float)(tu_hash(seed * 977 + e) % 5); /* many ties at the threshold */
    check_row(z, n, k, "ties");
    for (uint32_t e = 0; e < n; e++) z[e] = mtr_bf16_to_f32(mtr_f32_to_bf16(tu_logit(seed, 3, 1, e) * 0.25f));
    check_row(z, n, k, "bf16-rounded");
    for (uint32_t e = 0; e < n; e++) z[e] = 0.5f;
    check_row(z, n, k, "all equal");
    for (uint32_t e = 0; e < n; e++) z[e] = (float)e; /* the selection at the high end */
    check_row(z, n, k, "ascending");
    for (uint32_t e = 0; e < n; e++) z[e] = -(float)e;
    check_row(z, n, k, "descending");
    for (uint32_t e = 0; e < n; e++) z[e] = e % 3 ? -FLT_MAX : 1e30f * (float)(e % 7); /* beyond exp's range */
    check_row(z, n, k, "extreme");
    for (uint32_t e = 0; e < n; e++) z[e] = (e % 2 ? -100.0f : 0.0f) + (float)(e % 4); /* terms below 1e-38 */
    check_row(z, n, k, "underflow");
}

static const uint32_t SIZES[] = {1,  2,  3,   7,   8,   9,   13,  16,  32,  60,  63,
                                 64, 65, 67, 100, 127, 128, 129, 136, 192, 256, 300};

static void check_all_shapes(void)
{
    for (size_t i = 0; i < sizeof SIZES / sizeof *SIZES; i++) {
        const uint32_t n = SIZES[i];
        const uint32_t ks[] = {1, 2, 4, 7, 8, 9, 16, n};
        for (size_t j = 0; j < sizeof ks / sizeof *ks; j++)
            if (ks[j] <= n && ks[j] <= MTR_MAX_TOPK) check_shapes(n, ks[j], n * 100 + ks[j]);
    }
}

START_TEST(token_kernel_simd)
{
    mtr_reduce_set_simd(true);
    check_all_shapes();
}
END_TEST

START_TEST(token_kernel_portable)
{
    mtr_reduce_set_simd(false);
    check_all_shapes();
    mtr_reduce_set_simd(true);
}
END_TEST

/* both paths give the same selection token after token, the same counts, and weights within float rounding */
START_TEST(token_kernel_paths_agree)
{
    const uint32_t L = 3, E = 128, K = 8, T = 300;
    mtr_model_info m;
    mtr_model_info_init(&m, "test", "test", L, E, K);
    double *q[2], ent[2][3] = {{0}};
    uint32_t *a[2];
    uint64_t bits[2][2];
    float scratch[2 * 128], hint[2][3];
    for (int p = 0; p < 2; p++) {
        q[p] = calloc((size_t)L * E, sizeof **q);
        a[p] = calloc((size_t)L * E, sizeof **a);
        for (uint32_t l = 0; l < L; l++) hint[p][l] = -FLT_MAX;
    }
    float *z = tu_make_logits(7, T, L, E);
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t l = 0; l < L; l++) {
            for (int p = 0; p < 2; p++) {
                mtr_reduce_set_simd(p == 0);
                mtr_token_acc acc = {q[p] + l * E, a[p] + l * E, &ent[p][l], bits[p], &hint[p][l], NULL};
                mtr_token_accumulate(&m, l, z + ((size_t)t * L + l) * E, false, &acc, scratch);
            }
            ck_assert_mem_eq(bits[0], bits[1], sizeof bits[0]);
        }
    mtr_reduce_set_simd(true);
    ck_assert_mem_eq(a[0], a[1], (size_t)L * E * sizeof **a);
    for (uint32_t i = 0; i < L * E; i++) ck_assert_double_eq_tol(q[0][i], q[1][i], 1e-6 * q[1][i] + 1e-12);
    for (uint32_t l = 0; l < L; l++) ck_assert_double_eq_tol(ent[0][l], ent[1][l], 1e-4);
    for (int p = 0; p < 2; p++) {
        free(q[p]);
        free(a[p]);
    }
    free(z);
}
END_TEST

START_TEST(widen_checked_bf16)
{
    const size_t sizes[] = {1, 5, 15, 16, 17, 31, 32, 33, 128, 6144, 6151};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        const size_t n = sizes[si];
        uint16_t *src = malloc(n * sizeof *src);
        float *dst = tu_guarded(n * sizeof *dst), *want = malloc(n * sizeof *want);
        for (size_t i = 0; i < n; i++) src[i] = (uint16_t)tu_hash(n * 7 + i);
        for (size_t i = 0; i < n; i++)
            if ((src[i] & 0x7f80u) == 0x7f80u) src[i] ^= 0x0100u; /* finite: exponent not all ones */
        for (int simd = 1; simd >= 0; simd--) {
            mtr_reduce_set_simd(simd);
            ck_assert(!mtr_reduce_widen_checked(dst, src, MTR_DTYPE_BF16, n));
            ck_assert(!mtr_reduce_nonfinite_bf16(src, n));
            ck_assert(!mtr_widen_checked(want, src, MTR_DTYPE_BF16, n));
            ck_assert_mem_eq(dst, want, n * sizeof *dst);
            ck_assert(tu_guard_ok(dst, n * sizeof *dst));
            /* one NaN or Inf of either sign anywhere is found */
            const uint16_t bad[] = {0x7fc0, 0xffc0, 0x7f80, 0xff80, 0x7f81};
            for (size_t b = 0; b < sizeof bad / sizeof *bad; b++)
                for (size_t pos = 0; pos < n; pos += n > 40 ? n / 7 + 1 : 1) {
                    uint16_t keep = src[pos];
                    src[pos] = bad[b];
                    ck_assert_msg(mtr_reduce_widen_checked(dst, src, MTR_DTYPE_BF16, n),
                                  "n %zu: %04x at %zu not found", n, bad[b], pos);
                    ck_assert_msg(mtr_reduce_nonfinite_bf16(src, n), "n %zu: %04x at %zu not found", n, bad[b], pos);
                    src[pos] = keep;
                }
            size_t last = n - 1;
            uint16_t keep = src[last];
            src[last] = 0x7f80;
            ck_assert(mtr_reduce_widen_checked(dst, src, MTR_DTYPE_BF16, n));
            ck_assert(mtr_reduce_nonfinite_bf16(src, n));
            src[last] = 0x7f7f; /* the largest finite bf16 */
            ck_assert(!mtr_reduce_nonfinite_bf16(src, n));
            src[last] = 0xff7f;
            ck_assert(!mtr_reduce_nonfinite_bf16(src, n));
            src[last] = keep;
        }
        mtr_reduce_set_simd(true);
        free(src);
        free(dst);
        free(want);
    }
    /* other dtypes go through the library's checked widening */
    float f[3] = {1, INFINITY, 2}, out[3];
    ck_assert(mtr_reduce_widen_checked(out, f, MTR_DTYPE_F32, 3));
    f[1] = 3;
    ck_assert(!mtr_reduce_widen_checked(out, f, MTR_DTYPE_F32, 3));
    ck_assert(out[1] == 3);
}
END_TEST

/* the pair sampler's generator (splitmix64), written out again */
static uint64_t tu_hash_step(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Jaccard of top-k sets from their member lists, element by element */
static double ref_jaccard_pair(const uint64_t *a, const uint64_t *b, uint32_t words, uint32_t k)
{
    uint32_t inter = 0;
    for (uint32_t e = 0; e < 64 * words; e++) inter += ((a[e >> 6] >> (e & 63)) & 1) && ((b[e >> 6] >> (e & 63)) & 1);
    return (double)inter / (double)(2 * k - inter);
}

START_TEST(jaccard_against_sets)
{
    const uint32_t shapes[][3] = {{16, 3, 4}, {128, 8, 4}, {128, 8, 7}, {64, 8, 5}, {60, 4, 1}, {130, 5, 4},
                                  {256, 8, 4}, {8, 8, 4}, {128, 9, 3}, {128, 1, 6}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const uint32_t E = shapes[s][0], K = shapes[s][1], L = shapes[s][2], W = (E + 63) / 64, T = 40;
        uint64_t *bits = calloc((size_t)T * L * W, sizeof *bits);
        float *z = tu_make_logits(s + 1, T, L, E);
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t l = 0; l < L; l++) {
                uint32_t ids[1024];
                /* neighbouring tokens share experts: the sets overlap by varying amounts */
                float row[1024];
                for (uint32_t e = 0; e < E; e++)
                    row[e] = z[((size_t)(t / 3) * L + l) * E + e] + 0.3f * z[((size_t)t * L + l) * E + e];
                ref_topk(ids, row, E, K);
                for (uint32_t i = 0; i < K; i++)
                    bits[((size_t)t * L + l) * W + (ids[i] >> 6)] |= (uint64_t)1 << (ids[i] & 63);
            }
        double out[8], out2[8];
        uint32_t np, np2;
        for (int simd = 1; simd >= 0; simd--) {
            mtr_reduce_set_simd(simd);
            /* all pairs */
            mtr_jaccard_layers(out, bits, T, L, W, K, 100000, 1, &np);
            ck_assert_uint_eq(np, T * (T - 1) / 2);
            for (uint32_t l = 0; l < L; l++) {
                double sum = 0;
                for (uint32_t i = 0; i < T; i++)
                    for (uint32_t j = i + 1; j < T; j++)
                        sum += ref_jaccard_pair(bits + ((size_t)i * L + l) * W, bits + ((size_t)j * L + l) * W, W, K);
                ck_assert_msg(fabs(out[l] - sum / np) <= 1e-12, "E %u K %u L %u layer %u: %.17g, want %.17g", E, K, L,
                              l, out[l], sum / np);
            }
            /* a sample (more pairs than one round of 7-bit counters): the sampled pairs' mean, by the same rule */
            mtr_jaccard_layers(out, bits, T, L, W, K, 300, 9, &np);
            ck_assert_uint_eq(np, 300);
            uint64_t st = 9;
            double sum[8] = {0};
            for (uint32_t p = 0; p < 300; p++) {
                uint32_t i = (uint32_t)(tu_hash_step(&st) % T), j = (uint32_t)(tu_hash_step(&st) % (T - 1));
                if (j >= i) j++;
                for (uint32_t l = 0; l < L; l++)
                    sum[l] += ref_jaccard_pair(bits + ((size_t)i * L + l) * W, bits + ((size_t)j * L + l) * W, W, K);
            }
            for (uint32_t l = 0; l < L; l++) ck_assert_double_eq_tol(out[l], sum[l] / 300, 1e-12);
            if (simd) {
                memcpy(out2, out, sizeof out);
                np2 = np;
            } else {
                ck_assert_uint_eq(np, np2);
                for (uint32_t l = 0; l < L; l++) ck_assert_double_eq_tol(out[l], out2[l], 1e-12);
            }
        }
        mtr_reduce_set_simd(true);
        /* fewer than two tokens: NaN */
        mtr_jaccard_layers(out, bits, 1, L, W, K, 100, 9, &np);
        ck_assert(isnan(out[0]) && np == 0);
        free(bits);
        free(z);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("reduce");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, token_kernel_simd);
    tcase_add_test(tc, token_kernel_portable);
    tcase_add_test(tc, token_kernel_paths_agree);
    tcase_add_test(tc, widen_checked_bf16);
    tcase_add_test(tc, jaccard_against_sets);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
