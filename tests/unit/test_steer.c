/* test_steer.c — steering files (traces/STEERING.md): building and validating a description, HDF5 and JSON
 * round trips, refusal of bad files, model checks, the four operations on logits, and both exports. */
#include <jansson.h>
#include <math.h>

#include "mtr_steer.h"
#include "testutil.h"

#define NEAR_EPS(a, b) ck_assert_msg(fabs((a) - (b)) < 1e-18 + 1e-12 * fabs(b), "%s = %.17g, want %.17g", #a, (double)(a), (double)(b))

static char dir[256];

static void setup(void) { tu_tmpdir(dir, sizeof dir, "steer"); }
static void teardown(void) { tu_rmrf(dir); }

static mtr_steer *make(mtr_steer_op op)
{
    mtr_steer *s = NULL;
    TU_OK(mtr_steer_create(&s, "synthetic/moe-L6-E8", 6, 8, 2, op));
    TU_OK(mtr_steer_add(s, 3, 5, NAN, 0.41));
    TU_OK(mtr_steer_add(s, 2, 1, NAN, 0.35));
    TU_OK(mtr_steer_add(s, 3, 0, NAN, NAN));
    TU_OK(mtr_steer_set_provenance(s, "{\"tau\":0.3,\"band\":{\"first\":2,\"last\":5}}"));
    return s;
}

static void same(const mtr_steer *a, const mtr_steer *b)
{
    ck_assert_str_eq(a->model_id, b->model_id);
    ck_assert_str_eq(a->name, b->name);
    ck_assert_uint_eq(a->n_layers, b->n_layers);
    ck_assert_uint_eq(a->n_experts, b->n_experts);
    ck_assert_uint_eq(a->top_k, b->top_k);
    ck_assert_int_eq(a->op, b->op);
    ck_assert(a->lambda == b->lambda && a->eps == b->eps && a->eps_mode == b->eps_mode && a->seed == b->seed);
    ck_assert_uint_eq(a->n_target, b->n_target);
    for (uint32_t i = 0; i < a->n_target; i++) ck_assert_uint_eq(a->target_layers[i], b->target_layers[i]);
    ck_assert_uint_eq(a->n_sel, b->n_sel);
    for (size_t i = 0; i < a->n_sel; i++) {
        ck_assert_uint_eq(a->experts[i].layer, b->experts[i].layer);
        ck_assert_uint_eq(a->experts[i].expert, b->experts[i].expert);
        ck_assert(a->experts[i].score == b->experts[i].score || (isnan(a->experts[i].score) && isnan(b->experts[i].score)));
    }
    ck_assert(memcmp(a->coef, b->coef, (size_t)a->n_layers * a->n_experts * sizeof(float)) == 0);
    for (uint32_t l = 0; l < a->n_layers; l++) ck_assert_int_eq(a->layer_index[l], b->layer_index[l]);
    json_t *pa = json_loads(a->provenance, 0, NULL), *pb = json_loads(b->provenance, 0, NULL);
    ck_assert(json_equal(pa, pb));
    json_decref(pa);
    json_decref(pb);
}

START_TEST(test_build_validate)
{
    mtr_steer *s = make(MTR_STEER_SOFT);
    ck_assert_uint_eq(s->n_sel, 3);
    ck_assert_uint_eq(s->experts[0].layer, 2); /* kept sorted by (layer, expert) */
    ck_assert_uint_eq(s->experts[1].expert, 0);
    ck_assert_uint_eq(s->n_target, 2);
    ck_assert(s->coef[3 * 8 + 5] == 0.5f);
    TU_OK(mtr_steer_validate(s));
    ck_assert_int_eq(mtr_steer_add(s, 3, 5, NAN, 0), MTR_EDUP);
    ck_assert_int_eq(mtr_steer_add(s, 6, 0, NAN, 0), MTR_EINVAL);
    ck_assert_int_eq(mtr_steer_set_provenance(s, "[1]"), MTR_EINVAL);
    s->coef[0] = 1.0f; /* a coefficient outside the set */
    ck_assert_int_eq(mtr_steer_validate(s), MTR_EINVAL);
    mtr_steer_destroy(s);
    /* hard: at most top-k forced experts per layer */
    TU_OK(mtr_steer_create(&s, "m", 6, 8, 2, MTR_STEER_HARD));
    TU_OK(mtr_steer_add(s, 1, 0, NAN, 0));
    TU_OK(mtr_steer_add(s, 1, 1, NAN, 0));
    TU_OK(mtr_steer_validate(s));
    TU_OK(mtr_steer_add(s, 1, 2, NAN, 0));
    ck_assert_int_eq(mtr_steer_validate(s), MTR_EINVAL);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "more than top-k"));
    mtr_steer_destroy(s);
    ck_assert_int_eq(mtr_steer_create(&s, "m", 6, 8, 9, MTR_STEER_HARD), MTR_EINVAL);
    mtr_steer_destroy(NULL);
}
END_TEST

START_TEST(test_round_trip)
{
    char h5[512], js[512], js2[512];
    mtr_steer *s = make(MTR_STEER_HARD), *a = NULL, *b = NULL;
    s->eps_mode = MTR_STEER_EPS_FIXED;
    s->eps = 0.01;
    s->seed = 77;
    snprintf(s->name, sizeof s->name, "task");
    snprintf(h5, sizeof h5, "%s/task.h5", dir);
    snprintf(js, sizeof js, "%s/task.json", dir);
    TU_OK(mtr_steer_write(s, h5, NULL)); /* the twin's name is derived */
    TU_OK(mtr_steer_load(&a, h5));
    TU_OK(mtr_steer_load(&b, js));
    same(s, a);
    same(s, b);
    /* the twin of the loaded file is the same text */
    snprintf(js2, sizeof js2, "%s/again.json", dir);
    snprintf(h5, sizeof h5, "%s/again.h5", dir);
    TU_OK(mtr_steer_write(b, h5, js2));
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", js, js2);
    ck_assert_int_eq(system(cmd), 0);
    mtr_model_info m;
    mtr_model_info_init(&m, "synthetic/moe-L6-E8", "synthetic", 6, 8, 2);
    TU_OK(mtr_steer_check_model(a, &m));
    mtr_model_info_init(&m, "synthetic/moe-L6-E8", "synthetic", 6, 16, 2);
    ck_assert_int_eq(mtr_steer_check_model(a, &m), MTR_EMISMATCH);
    mtr_model_info_init(&m, "other", "synthetic", 6, 8, 2);
    ck_assert_int_eq(mtr_steer_check_model(a, &m), MTR_EMISMATCH);
    mtr_steer_destroy(a);
    mtr_steer_destroy(b);
    mtr_steer_destroy(s);
}
END_TEST

START_TEST(test_bad_files)
{
    char p[512];
    mtr_steer *s = NULL;
    snprintf(p, sizeof p, "%s/nope.h5", dir);
    ck_assert_int_eq(mtr_steer_load(&s, p), MTR_ENOTFOUND);
    snprintf(p, sizeof p, "%s/x.json", dir);
    FILE *f = fopen(p, "w");
    fputs("{\"format\": \"moetrace-steering\", \"format_version\": 2}", f);
    fclose(f);
    ck_assert_int_eq(mtr_steer_load(&s, p), MTR_EVERSION);
    f = fopen(p, "w");
    fputs("{\"format\": \"other\"}", f);
    fclose(f);
    ck_assert_int_eq(mtr_steer_load(&s, p), MTR_EFORMAT);
    /* a hard file forcing more than top-k experts in a layer is refused on load */
    mtr_steer *h = make(MTR_STEER_SOFT);
    char h5[512];
    snprintf(h5, sizeof h5, "%s/x.h5", dir);
    TU_OK(mtr_steer_write(h, h5, NULL)); /* twin: x.json */
    json_t *j = json_load_file(p, 0, NULL);
    json_object_set_new(j, "op", json_string("hard"));
    json_t *row = json_array_get(json_object_get(j, "coef"), 3);
    json_array_set_new(row, 7, json_real(1.0));
    json_array_append_new(json_object_get(j, "experts"), json_pack("[i,i]", 3, 7));
    json_array_append_new(json_object_get(j, "scores"), json_null());
    json_dump_file(j, p, 0);
    json_decref(j);
    ck_assert_msg(mtr_steer_load(&s, p) == MTR_EFORMAT, "%s", mtr_errmsg()); /* experts [3,7] after [3,5]: sorted, but 3 forced > top-2 */
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "top-k"));
    ck_assert_ptr_null(s);
    mtr_steer_destroy(h);
    /* an HDF5 file that is not a steering file */
    snprintf(p, sizeof p, "%s/trace", dir);
    mtr_model_info m;
    mtr_model_info_init(&m, "x", "x", 2, 4, 2);
    mtr_writer *w = NULL;
    mtr_writer_opts o = MTR_WRITER_OPTS_INIT;
    o.sync = false;
    TU_OK(mtr_writer_create(&w, p, &m, &o));
    TU_OK(mtr_writer_close(w));
    snprintf(p, sizeof p, "%s/trace/shard-000000.h5", dir);
    if (access(p, R_OK) == 0) ck_assert_int_eq(mtr_steer_load(&s, p), MTR_EFORMAT);
}
END_TEST

START_TEST(test_apply)
{
    const float z0[8] = {0.5f, -1.0f, 2.0f, 0.0f, 1.0f, -2.0f, 0.25f, 3.0f};
    float z[8];
    double mean = 0, sq = 0;
    for (int e = 0; e < 8; e++) mean += z0[e] / 8.0;
    for (int e = 0; e < 8; e++) sq += (z0[e] - mean) * (z0[e] - mean);
    double sd = sqrt(sq / 8);
    mtr_steer *s = make(MTR_STEER_SOFT);
    memcpy(z, z0, sizeof z);
    mtr_steer_apply(s, 3, z, NULL);
    ck_assert(fabs(z[5] - (z0[5] + 0.5 * sd)) < 1e-6 && fabs(z[0] - (z0[0] + 0.5 * sd)) < 1e-6 && z[7] == z0[7]);
    memcpy(z, z0, sizeof z);
    mtr_steer_apply(s, 4, z, NULL); /* not a target layer */
    ck_assert(memcmp(z, z0, sizeof z) == 0);
    mtr_steer_destroy(s);
    s = make(MTR_STEER_HARD);
    s->eps_mode = MTR_STEER_EPS_FIXED;
    s->eps = 0.01;
    memcpy(z, z0, sizeof z);
    mtr_steer_apply(s, 3, z, NULL);
    ck_assert(fabs(z[5] - 3.01f) < 1e-6 && fabs(z[0] - 3.01f) < 1e-6);
    uint16_t ids[2];
    float scratch[8];
    mtr_model_info m;
    mtr_model_info_init(&m, "x", "x", 6, 8, 2);
    mtr_route(&m, 3, z, ids, NULL, scratch);
    ck_assert((ids[0] == 0 && ids[1] == 5) || (ids[0] == 5 && ids[1] == 0)); /* both forced into the top-2 */
    s->eps_mode = MTR_STEER_EPS_GAUSSIAN;
    s->eps = 1e-6;
    uint64_t rng = 42, rng2 = 42;
    float z2[8];
    memcpy(z, z0, sizeof z);
    memcpy(z2, z0, sizeof z2);
    mtr_steer_apply(s, 3, z, &rng);
    mtr_steer_apply(s, 3, z2, &rng2);
    ck_assert(memcmp(z, z2, sizeof z) == 0 && fabs(z[5] - 3.0f) < 1e-4);
    /* gaussian eps of either sign, and an eps below the float step at the maximum: the forced experts still end
     * strictly above every other logit, so they are always selected */
    for (int trial = 0; trial < 200; trial++) {
        float big[8];
        for (int e = 0; e < 8; e++) big[e] = z0[e] + 100.0f; /* float step at 103 is ~7.6e-6 > eps */
        mtr_steer_apply(s, 3, big, &rng);
        ck_assert(big[0] > 103.0f && big[5] > 103.0f);
        mtr_route(&m, 3, big, ids, NULL, scratch);
        ck_assert((ids[0] == 0 && ids[1] == 5) || (ids[0] == 5 && ids[1] == 0));
    }
    memcpy(z, z0, sizeof z);
    mtr_steer_apply(s, 3, z, NULL); /* no generator: eps 0, still one step above */
    ck_assert(z[0] > 3.0f && z[5] > 3.0f);
    mtr_steer_destroy(s);
    s = make(MTR_STEER_OFF);
    s->eps_mode = MTR_STEER_EPS_FIXED;
    s->eps = 0.01;
    memcpy(z, z0, sizeof z);
    mtr_steer_apply(s, 2, z, NULL);
    ck_assert(fabs(z[1] - (-2.01f)) < 1e-6);
    mtr_steer_destroy(s);
    TU_OK(mtr_steer_create(&s, "x", 6, 8, 2, MTR_STEER_BIAS));
    ck_assert_int_eq(mtr_steer_add(s, 1, 1, NAN, 0), MTR_EINVAL);
    TU_OK(mtr_steer_add(s, 1, 1, -0.75, 0));
    memcpy(z, z0, sizeof z);
    mtr_steer_apply(s, 1, z, NULL);
    ck_assert(z[1] == -1.75f);
    mtr_steer_destroy(s);
}
END_TEST

START_TEST(test_exports)
{
    char es[512], fb[512], fj[512];
    mtr_steer *s = make(MTR_STEER_HARD);
    TU_OK(mtr_steer_add(s, 4, 6, -1.0, 0)); /* a deactivation beside activations */
    for (uint32_t l = 0; l < 6; l++) s->layer_index[l] = (int32_t)(2 * l + 1); /* MoE layer -> decoder layer */
    snprintf(es, sizeof es, "%s/x.easysteer.json", dir);
    snprintf(fb, sizeof fb, "%s/x.f32", dir);
    snprintf(fj, sizeof fj, "%s/x.f32.json", dir);
    bool lossy = false;
    TU_OK(mtr_steer_export_easysteer(s, es, &lossy));
    ck_assert(lossy); /* gaussian eps is not expressible there */
    json_t *j = json_load_file(es, 0, NULL), *cfg = json_object_get(j, "layer_configs");
    ck_assert_uint_eq(json_object_size(cfg), 3);
    json_t *l7 = json_object_get(cfg, "7"), *l5 = json_object_get(cfg, "5"), *l9 = json_object_get(cfg, "9");
    ck_assert_str_eq(json_string_value(json_object_get(l7, "mode")), "activate");
    ck_assert_uint_eq(json_array_size(json_object_get(l7, "expert_ids")), 2);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(l5, "expert_ids"), 0)), 1);
    ck_assert_str_eq(json_string_value(json_object_get(l9, "mode")), "deactivate");
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(l9, "expert_ids"), 0)), 6);
    NEAR_EPS(json_real_value(json_object_get(l9, "epsilon")), 1e-6);
    json_decref(j);
    /* soft: EasySteer's soft mode with lambda rescaled to torch's n-1 std (E = 8); one lambda per layer */
    mtr_steer *so = make(MTR_STEER_SOFT);
    TU_OK(mtr_steer_export_easysteer(so, es, &lossy));
    ck_assert(!lossy);
    j = json_load_file(es, 0, NULL);
    json_t *l3 = json_object_get(json_object_get(j, "layer_configs"), "3");
    ck_assert_str_eq(json_string_value(json_object_get(l3, "mode")), "soft");
    ck_assert_uint_eq(json_array_size(json_object_get(l3, "expert_ids")), 2);
    ck_assert(fabs(json_real_value(json_object_get(l3, "lambda")) - 0.5 * sqrt(7.0 / 8.0)) < 1e-15);
    ck_assert(json_object_get(l3, "epsilon") == NULL);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "moetrace"), "op")), "soft");
    json_decref(j);
    TU_OK(mtr_steer_add(so, 3, 7, 0.25, NAN)); /* a second lambda in layer 3 */
    ck_assert_int_eq(mtr_steer_export_easysteer(so, es, &lossy), MTR_EINVAL);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "one lambda per layer"));
    mtr_steer_destroy(so);
    /* hard with a fixed eps is expressible exactly; bias is not at all */
    s->eps_mode = MTR_STEER_EPS_FIXED;
    s->eps = 0.01;
    TU_OK(mtr_steer_export_easysteer(s, es, &lossy));
    ck_assert(!lossy);
    mtr_steer *bi = NULL;
    TU_OK(mtr_steer_create(&bi, "x", 6, 8, 2, MTR_STEER_BIAS));
    TU_OK(mtr_steer_add(bi, 1, 1, 0.75, 0));
    ck_assert_int_eq(mtr_steer_export_easysteer(bi, es, &lossy), MTR_EINVAL);
    ck_assert_ptr_nonnull(strstr(mtr_errmsg(), "bias"));
    mtr_steer_destroy(bi);
    TU_OK(mtr_steer_export_flat(s, fb, fj));
    FILE *f = fopen(fb, "rb");
    unsigned char buf[6 * 8 * 4 + 1];
    ck_assert_uint_eq(fread(buf, 1, sizeof buf, f), 6 * 8 * 4);
    fclose(f);
    for (size_t i = 0; i < 48; i++) {
        uint32_t u = (uint32_t)buf[4 * i] | (uint32_t)buf[4 * i + 1] << 8 | (uint32_t)buf[4 * i + 2] << 16 |
                     (uint32_t)buf[4 * i + 3] << 24;
        float v;
        memcpy(&v, &u, 4);
        ck_assert(v == s->coef[i]);
    }
    j = json_load_file(fj, 0, NULL);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(j, "shape"), 1)), 8);
    ck_assert_str_eq(json_string_value(json_object_get(j, "byte_order")), "little");
    ck_assert_str_eq(json_string_value(json_object_get(j, "data_file")), "x.f32");
    json_decref(j);
    mtr_steer_destroy(s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("steer");
    TCase *c = tcase_create("steer");
    tcase_add_checked_fixture(c, setup, teardown);
    tcase_add_test(c, test_build_validate);
    tcase_add_test(c, test_round_trip);
    tcase_add_test(c, test_bad_files);
    tcase_add_test(c, test_apply);
    tcase_add_test(c, test_exports);
    suite_add_tcase(s, c);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
