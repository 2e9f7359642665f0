/* test_dtype.c — element conversion, byte shuffle and top-k selection against plain references. */
#include <math.h>

#include "testutil.h"

static float bits_f(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

START_TEST(bf16_round_to_nearest_even)
{
    ck_assert_uint_eq(mtr_f32_to_bf16(1.0f), 0x3f80);
    /* exactly half way: ties go to the even mantissa */
    ck_assert_uint_eq(mtr_f32_to_bf16(bits_f(0x3f808000u)), 0x3f80);
    ck_assert_uint_eq(mtr_f32_to_bf16(bits_f(0x3f818000u)), 0x3f82);
    /* just above half way rounds up */
    ck_assert_uint_eq(mtr_f32_to_bf16(bits_f(0x3f808001u)), 0x3f81);
    ck_assert_uint_eq(mtr_f32_to_bf16(-2.0f), 0xc000);
    ck_assert_uint_eq(mtr_f32_to_bf16(INFINITY), 0x7f80);
    /* the largest finite f32 rounds to bf16 infinity */
    ck_assert_uint_eq(mtr_f32_to_bf16(bits_f(0x7f7fffffu)), 0x7f80);
    uint16_t n = mtr_f32_to_bf16(bits_f(0x7f800001u)); /* signalling NaN with payload in low bits only */
    ck_assert(isnan(mtr_bf16_to_f32(n)));
}
END_TEST

START_TEST(bf16_exhaustive_roundtrip)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float x = mtr_bf16_to_f32((uint16_t)h);
        if (isnan(x)) continue;
        ck_assert_uint_eq(mtr_f32_to_bf16(x), h);
    }
}
END_TEST

START_TEST(f16_known_values)
{
    ck_assert_uint_eq(mtr_f32_to_f16(1.0f), 0x3c00);
    ck_assert_uint_eq(mtr_f32_to_f16(-2.0f), 0xc000);
    ck_assert_uint_eq(mtr_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(mtr_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_uint_eq(mtr_f32_to_f16(65520.0f), 0x7c00);
    ck_assert_uint_eq(mtr_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
    ck_assert_uint_eq(mtr_f32_to_f16(ldexpf(1.0f, -25)), 0x0000); /* tie to even: zero */
    ck_assert_uint_eq(mtr_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
    ck_assert_uint_eq(mtr_f32_to_f16(ldexpf(3.0f, -25)), 0x0002); /* 1.5 ulp: tie to even 2 */
    ck_assert_uint_eq(mtr_f32_to_f16(ldexpf(1.0f, -14)), 0x0400); /* smallest normal */
    ck_assert_uint_eq(mtr_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00); /* tie, even stays */
    ck_assert_uint_eq(mtr_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
    ck_assert(isnan(mtr_f16_to_f32(mtr_f32_to_f16(NAN))));
    ck_assert(mtr_f16_to_f32(0x7c00) == INFINITY);
    ck_assert(mtr_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
}
END_TEST

START_TEST(f16_exhaustive_roundtrip)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float x = mtr_f16_to_f32((uint16_t)h);
        if (isnan(x)) continue;
        ck_assert_uint_eq(mtr_f32_to_f16(x), h);
    }
}
END_TEST

/* f32 -> f16 against a reference that picks the nearer of the two neighbouring f16 values */
START_TEST(f16_matches_nearest_reference)
{
    for (uint64_t i = 0; i < 200000; i++) {
        float x = bits_f((uint32_t)tu_hash(i)) ;
        if (!isfinite(x) || fabsf(x) >= 65504.0f) continue;
        uint16_t h = mtr_f32_to_f16(x);
        double v = mtr_f16_to_f32(h), err = fabs(v - (double)x);
        uint16_t up = (uint16_t)(h + 1), dn = (uint16_t)(h - 1);
        if ((h & 0x7fff) != 0x7bff) ck_assert(fabs((double)mtr_f16_to_f32(up) - x) >= err);
        if ((h & 0x7fff) != 0) ck_assert(fabs((double)mtr_f16_to_f32(dn) - x) >= err);
    }
}
END_TEST

START_TEST(shuffle_layout_and_roundtrip)
{
    for (size_t esz = 1; esz <= 8; esz *= 2) {
        size_t n = 1001;
        uint8_t *src = malloc(n * esz), *sh = tu_guarded(n * esz), *back = tu_guarded(n * esz);
        for (size_t i = 0; i < n * esz; i++) src[i] = (uint8_t)tu_hash(i + esz);
        mtr_shuffle(sh, src, n, esz);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < esz; j++) ck_assert_uint_eq(sh[j * n + i], src[i * esz + j]);
        mtr_unshuffle(back, sh, n, esz);
        ck_assert_mem_eq(back, src, n * esz);
        ck_assert(tu_guard_ok(sh, n * esz) && tu_guard_ok(back, n * esz));
        free(src);
        free(sh);
        free(back);
    }
}
END_TEST

/* the fused chunk kernels give exactly the bytes / values of the two-step reference */
START_TEST(fused_pack_unpack_match_reference)
{
    size_t n = 3000, stride = 3100;
    float *x = malloc(n * 4), *back = tu_guarded(n * 4), *ref = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)tu_hash(i * 7 + 1);
        memcpy(&x[i], &u, 4); /* any bit pattern: NaN, Inf, subnormals included */
    }
    for (int t = 0; t < MTR_DTYPE_COUNT; t++) {
        size_t esz = mtr_dtype_size((mtr_dtype)t);
        uint8_t *conv = malloc(n * esz), *sh = malloc(n * esz), *fused = tu_guarded(n * esz);
        mtr_convert(conv, (mtr_dtype)t, x, MTR_DTYPE_F32, n);
        mtr_shuffle(sh, conv, n, esz);
        mtr_pack_shuffled(fused, x, n, (mtr_dtype)t);
        ck_assert_mem_eq(fused, sh, n * esz);
        ck_assert(tu_guard_ok(fused, n * esz));
        /* unpack from planes longer than n (a chunk's padding rows) */
        uint8_t *planes = calloc(stride * esz, 1);
        for (size_t j = 0; j < esz; j++) memcpy(planes + j * stride, sh + j * n, n);
        mtr_unpack_shuffled(back, planes, n, stride, (mtr_dtype)t);
        mtr_convert(ref, MTR_DTYPE_F32, conv, (mtr_dtype)t, n);
        ck_assert_mem_eq(back, ref, n * 4);
        ck_assert(tu_guard_ok(back, n * 4));
        free(conv);
        free(sh);
        free(fused);
        free(planes);
    }
    free(x);
    free(back);
    free(ref);
}
END_TEST

START_TEST(nonfinite_scan)
{
    float v[100];
    for (int i = 0; i < 100; i++) v[i] = (float)i - 50.0f;
    ck_assert(!mtr_any_nonfinite(v, MTR_DTYPE_F32, 100));
    v[99] = INFINITY;
    ck_assert(mtr_any_nonfinite(v, MTR_DTYPE_F32, 100));
    ck_assert(!mtr_any_nonfinite(v, MTR_DTYPE_F32, 99));
    uint16_t h[3] = {0x3f80, 0x7fc0, 0}; /* bf16: 1.0, NaN, 0 */
    ck_assert(mtr_any_nonfinite(h, MTR_DTYPE_BF16, 3));
    ck_assert(!mtr_any_nonfinite(h, MTR_DTYPE_BF16, 1));
    uint16_t g[3] = {0x3c00, 0x7bff, 0x7c00}; /* f16: 1.0, 65504, Inf */
    ck_assert(!mtr_any_nonfinite(g, MTR_DTYPE_F16, 2));
    ck_assert(mtr_any_nonfinite(g, MTR_DTYPE_F16, 3));
    /* the fused widen + check agrees with convert and scan, for every dtype */
    float w[3], ref[3];
    ck_assert(mtr_widen_checked(w, h, MTR_DTYPE_BF16, 3) && !mtr_widen_checked(w, h, MTR_DTYPE_BF16, 1));
    ck_assert(!mtr_widen_checked(w, g, MTR_DTYPE_F16, 2) && mtr_widen_checked(w, g, MTR_DTYPE_F16, 3));
    ck_assert(!mtr_widen_checked(w, v, MTR_DTYPE_F32, 3) && mtr_widen_checked(w, v + 97, MTR_DTYPE_F32, 3));
    uint16_t hb[3] = {0x3f80, 0xc040, 0x0001};
    mtr_widen_checked(w, hb, MTR_DTYPE_BF16, 3);
    mtr_convert(ref, MTR_DTYPE_F32, hb, MTR_DTYPE_BF16, 3);
    ck_assert_mem_eq(w, ref, sizeof w);
}
END_TEST

START_TEST(topk_selection_rule)
{
    uint16_t ids[8];
    float ties[6] = {1, 3, 3, 2, 3, 0};
    mtr_topk(ids, ties, 6, 3);
    ck_assert_uint_eq(ids[0], 1);
    ck_assert_uint_eq(ids[1], 2);
    ck_assert_uint_eq(ids[2], 4);
    float nan_row[4] = {NAN, -1, NAN, -2};
    mtr_topk(ids, nan_row, 4, 2);
    ck_assert_uint_eq(ids[0], 1);
    ck_assert_uint_eq(ids[1], 3);
    /* random rows against a full sort (stable, by descending value then index) */
    for (uint32_t row = 0; row < 2000; row++) {
        uint32_t n = 1 + row % 130, k = 1 + row % 8;
        if (k > n) k = n;
        float z[130];
        for (uint32_t e = 0; e < n; e++) z[e] = (float)(tu_hash(row * 1000 + e) % 17); /* many ties */
        mtr_topk(ids, z, n, k);
        uint32_t order[130];
        for (uint32_t e = 0; e < n; e++) order[e] = e;
        for (uint32_t a = 1; a < n; a++)
            for (uint32_t b = a; b > 0 && z[order[b]] > z[order[b - 1]]; b--) {
                uint32_t t = order[b];
                order[b] = order[b - 1];
                order[b - 1] = t;
            }
        for (uint32_t i = 0; i < k; i++) ck_assert_uint_eq(ids[i], order[i]);
    }
}
END_TEST

START_TEST(route_semantics)
{
    mtr_model_info m;
    float z[6] = {0.5f, 2.0f, -1.0f, 1.0f, 0.0f, 3.0f}, scratch[6], w[2];
    uint16_t ids[2];
    mtr_model_info_init(&m, "t", "t", 1, 6, 2);
    m.score_fn = MTR_SCORE_SOFTMAX;
    mtr_route(&m, 0, z, ids, w, scratch);
    double sum = 0;
    for (int e = 0; e < 6; e++) sum += exp(z[e]);
    ck_assert_uint_eq(ids[0], 5);
    ck_assert_uint_eq(ids[1], 1);
    ck_assert_double_eq_tol(w[0], exp(3.0) / sum, 1e-6);
    m.renormalize = true;
    mtr_route(&m, 0, z, ids, w, scratch);
    ck_assert_double_eq_tol(w[0], exp(3.0) / (exp(3.0) + exp(2.0)), 1e-6);
    m.score_fn = MTR_SCORE_TOPK_SOFTMAX;
    mtr_route(&m, 0, z, ids, w, scratch);
    ck_assert_double_eq_tol(w[1], exp(2.0) / (exp(3.0) + exp(2.0)), 1e-6);
    /* sigmoid with a selection-only bias: bias changes the choice, not the weight */
    float bias[6] = {0, 0, 5, 0, 0, 0};
    m.score_fn = MTR_SCORE_SIGMOID;
    m.renormalize = false;
    m.selection_bias = bias;
    mtr_route(&m, 0, z, ids, w, scratch);
    ck_assert_uint_eq(ids[0], 2);
    ck_assert_uint_eq(ids[1], 5);
    ck_assert_double_eq_tol(w[0], 1.0 / (1.0 + exp(1.0)), 1e-6);
}
END_TEST

/* sparsemixer (PhiMoE's inference routing): the top-2 logits; each weight the softmax at the round's maximum over
 * the experts within a relative gap of 2 eps of it, the first round's expert excluded from the second */
START_TEST(route_sparsemixer)
{
    mtr_model_info m;
    float scratch[5], w[2];
    uint16_t ids[2];
    mtr_model_info_init(&m, "t", "phimoe", 1, 5, 2);
    m.score_fn = MTR_SCORE_SPARSEMIXER;
    m.sparsemixer_eps = 0.01;
    ck_assert_int_eq(mtr_model_info_check(&m), 0);
    float z[5] = {1.0f, 0.99f, 0.985f, -2.0f, 0.96f};
    mtr_route(&m, 0, z, ids, w, scratch);
    ck_assert_uint_eq(ids[0], 0);
    ck_assert_uint_eq(ids[1], 1);
    /* round 1 keeps 0.99 (gap 0.01) and 0.985 (0.015), masks 0.96 (0.04) and -2 */
    ck_assert_double_eq_tol(w[0], 1.0 / (1.0 + exp(0.99 - 1.0) + exp(0.985 - 1.0)), 1e-6);
    /* round 2 at 0.99: 0.985 kept (0.005), 0.96 masked (0.0303); expert 0 gone though its gap is negative */
    ck_assert_double_eq_tol(w[1], 1.0 / (1.0 + exp(0.985 - 0.99)), 1e-6);
    /* negative logits: the divisor is |z_e| (>= the negative maximum) */
    float zn[5] = {-1.0f, -1.01f, -3.0f, -1.5f, -4.0f};
    mtr_route(&m, 0, zn, ids, w, scratch);
    ck_assert_uint_eq(ids[0], 0);
    ck_assert_uint_eq(ids[1], 1);
    ck_assert_double_eq_tol(w[0], 1.0 / (1.0 + exp(-0.01)), 1e-6);
    ck_assert_double_eq_tol(w[1], 1.0, 1e-7); /* -1.5: gap 0.49 / 1.5 */
    /* eps 0: only exact ties share the weight */
    m.sparsemixer_eps = 0;
    float zt[5] = {2.0f, 2.0f, 1.0f, 0.0f, 2.0f};
    mtr_route(&m, 0, zt, ids, w, scratch);
    ck_assert_uint_eq(ids[0], 0);
    ck_assert_uint_eq(ids[1], 1);
    ck_assert_double_eq_tol(w[0], 1.0 / 3.0, 1e-7);
    ck_assert_double_eq_tol(w[1], 0.5, 1e-7);
    /* renormalisation or a selection bias make no sense for it */
    m.renormalize = true;
    ck_assert_int_eq(mtr_model_info_check(&m), MTR_EINVAL);
    m.renormalize = false;
    m.sparsemixer_eps = -0.1;
    ck_assert_int_eq(mtr_model_info_check(&m), MTR_EINVAL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("dtype");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, bf16_round_to_nearest_even);
    tcase_add_test(tc, bf16_exhaustive_roundtrip);
    tcase_add_test(tc, f16_known_values);
    tcase_add_test(tc, f16_exhaustive_roundtrip);
    tcase_add_test(tc, f16_matches_nearest_reference);
    tcase_add_test(tc, shuffle_layout_and_roundtrip);
    tcase_add_test(tc, fused_pack_unpack_match_reference);
    tcase_add_test(tc, nonfinite_scan);
    tcase_add_test(tc, topk_selection_rule);
    tcase_add_test(tc, route_semantics);
    tcase_add_test(tc, route_sparsemixer);
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
