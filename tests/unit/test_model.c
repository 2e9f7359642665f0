/* test_model.c — the inference engine against the PyTorch reference: router logits of every MoE layer and the
 * final logits of the committed tiny checkpoints (tests/models/tiny/<name>/golden.safetensors, made by
 * tests/models/make_tiny.py), batched and token-by-token through the KV cache, greedy generation, steering, thread
 * independence, and the safetensors validation errors. */
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <sys/stat.h>

#include "model_internal.h"
#include "mtr_model.h"
#include "testutil.h"

static const char *models_dir(void)
{
    const char *d = getenv("MTR_TEST_MODELS");
    return d ? d : "tests/models/tiny";
}

typedef struct {
    char name[256];
    char dir[640];
} tiny;

static size_t list_tiny(tiny *out, size_t cap)
{
    DIR *d = opendir(models_dir());
    ck_assert_msg(d != NULL, "%s: missing (run from the repository root)", models_dir());
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        if (e->d_name[0] == '.') continue;
        char g[1024];
        snprintf(g, sizeof g, "%s/%s/golden.safetensors", models_dir(), e->d_name);
        struct stat st;
        if (stat(g, &st) != 0) continue;
        snprintf(out[n].name, sizeof out[n].name, "%s", e->d_name);
        snprintf(out[n].dir, sizeof out[n].dir, "%.300s/%.255s", models_dir(), e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static float *golden_f32(const mtr_st *g, const char *name, size_t *n)
{
    const mtr_st_tensor *t = mtr_st_find(g, name);
    if (!t) return NULL;
    float *v = malloc((size_t)t->n_elems * sizeof *v + 1);
    mtr_st_to_f32(v, t);
    if (n) *n = (size_t)t->n_elems;
    return v;
}

static int32_t *golden_ids(const mtr_st *g, const char *name, size_t *n)
{
    float *f = golden_f32(g, name, n);
    if (!f) return NULL;
    int32_t *ids = malloc(*n * sizeof *ids + 1);
    for (size_t i = 0; i < *n; i++) ids[i] = (int32_t)f[i];
    free(f);
    return ids;
}

/* max |a - b| over max |b|: the error relative to the tensor's scale */
static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        num = d > num || isnan(d) ? d : num;
        den = fabs((double)b[i]) > den ? fabs((double)b[i]) : den;
    }
    return den > 0 ? num / den : num;
}

static double tolerance(const mtr_model *m)
{
    return mtr_model_get_config(m)->dtype == MTR_DTYPE_F32 ? 1e-4 : 8e-3;
}

/* Router (n_moe_layers, T, E) golden vs ours (T, n_moe_layers, E). */
static double router_err(const float *ours, const float *gold, uint32_t T, uint32_t L, uint32_t E)
{
    float *re = malloc((size_t)T * L * E * sizeof *re);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t t = 0; t < T; t++)
            memcpy(re + ((size_t)l * T + t) * E, ours + ((size_t)t * L + l) * E, E * sizeof(float));
    double e = rel_err(re, gold, (size_t)T * L * E);
    free(re);
    return e;
}

/* Greedy decoding of n_gen tokens after ids (T) through the KV cache (under steer, if set) gives the golden
 * tokens `name` (the reference recomputes the whole prefix at every step). */
static void check_greedy(mtr_model *m, const mtr_st *g, const char *name, const int32_t *ids, uint32_t T,
                         const mtr_steer *steer, const char *model)
{
    const mtr_model_config *c = mtr_model_get_config(m);
    size_t ng = 0;
    int32_t *gen = golden_ids(g, name, &ng);
    ck_assert_msg(gen != NULL && ng > 0, "%s: golden '%s' missing", model, name);
    mtr_session *s = NULL;
    TU_OK(mtr_session_create(&s, m, (uint32_t)(T + ng + 1), T));
    float *last = malloc(c->vocab_size * sizeof *last);
    mtr_forward_io io = MTR_FORWARD_IO_INIT;
    io.logits = last;
    io.n_logits = 1;
    io.steer = steer;
    TU_OK(mtr_model_forward(s, ids, T, &io));
    for (size_t k = 0; k < ng; k++) {
        int32_t best = 0;
        for (uint32_t v = 1; v < c->vocab_size; v++)
            if (last[v] > last[best]) best = (int32_t)v;
        ck_assert_msg(best == gen[k], "%s %s: generated token %zu is %d, reference %d", model, name, k, best, gen[k]);
        TU_OK(mtr_model_forward(s, &best, 1, &io));
    }
    free(last);
    free(gen);
    mtr_session_destroy(s);
}

START_TEST(test_golden_forward)
{
    tiny list[32];
    size_t n_models = list_tiny(list, 32);
    ck_assert_msg(n_models >= 5, "expected the tiny checkpoints of 4 architectures + bf16 in %s, found %zu",
                  models_dir(), n_models);
    bool seen[MTR_ARCH_COUNT] = {0};
    for (size_t mi = 0; mi < n_models; mi++) {
        mtr_model *m = NULL;
        TU_OK(mtr_model_load(&m, list[mi].dir, NULL));
        const mtr_model_config *c = mtr_model_get_config(m);
        seen[c->arch] = true;
        char gp[1100];
        snprintf(gp, sizeof gp, "%s/golden.safetensors", list[mi].dir);
        mtr_st *g = NULL;
        TU_OK(mtr_st_open(&g, gp));
        size_t nl = 0;
        int32_t *moe_layers = golden_ids(g, "moe_layers", &nl);
        ck_assert_ptr_nonnull(moe_layers);
        ck_assert_uint_eq(nl, c->n_moe_layers);
        for (size_t i = 0; i < nl; i++) ck_assert_int_eq(moe_layers[i], c->moe_layer_index[i]);
        free(moe_layers);
        const double tol = tolerance(m);
        for (int p = 0;; p++) {
            char name[64];
            snprintf(name, sizeof name, "prompt_%d", p);
            size_t T = 0;
            int32_t *ids = golden_ids(g, name, &T);
            if (!ids) {
                ck_assert_msg(p >= 3, "%s: golden has %d prompts", list[mi].name, p);
                break;
            }
            size_t nr = 0, nlg = 0;
            snprintf(name, sizeof name, "router_%d", p);
            float *gr = golden_f32(g, name, &nr);
            snprintf(name, sizeof name, "logits_%d", p);
            float *gl = golden_f32(g, name, &nlg);
            ck_assert_ptr_nonnull(gr);
            ck_assert_ptr_nonnull(gl);
            ck_assert_uint_eq(nr, T * c->n_moe_layers * c->n_experts);
            ck_assert_uint_eq(nlg, T * c->vocab_size);
            float *router = malloc(nr * sizeof *router), *logits = malloc(nlg * sizeof *logits);
            /* one batch */
            mtr_session *s = NULL;
            TU_OK(mtr_session_create(&s, m, 64, 64));
            mtr_forward_io io = MTR_FORWARD_IO_INIT;
            io.router = router;
            io.logits = logits;
            io.n_logits = (uint32_t)T;
            TU_OK(mtr_model_forward(s, ids, (uint32_t)T, &io));
            double er = router_err(router, gr, (uint32_t)T, c->n_moe_layers, c->n_experts);
            double el = rel_err(logits, gl, nlg);
            ck_assert_msg(er <= tol && el <= tol, "%s prompt %d batched: router err %.3g, logits err %.3g (tol %.g)",
                          list[mi].name, p, er, el, tol);
            /* token by token through the cache */
            mtr_session_reset(s);
            float *r1 = malloc(nr * sizeof *r1 + 1), *l1 = malloc(nlg * sizeof *l1 + 1);
            float *rt = malloc((size_t)c->n_moe_layers * c->n_experts * sizeof *rt);
            for (size_t t = 0; t < T; t++) {
                io.router = rt;
                io.logits = l1 + t * c->vocab_size;
                io.n_logits = 1;
                TU_OK(mtr_model_forward(s, ids + t, 1, &io));
                memcpy(r1 + t * c->n_moe_layers * c->n_experts, rt,
                       (size_t)c->n_moe_layers * c->n_experts * sizeof *rt);
            }
            /* LongRoPE rotates by the length of the forward: fed one by one, the positions up to the original
             * length are (rightly) rotated short while the golden's whole-prompt forward rotated them long; from
             * the crossing on the engine recomputes its cache long and must agree again */
            size_t t0 = 0;
            if (c->rope_type == MTR_ROPE_LONGROPE && (double)T > c->rope_orig_max_pos) t0 = (size_t)c->rope_orig_max_pos;
            const size_t rrow = (size_t)c->n_moe_layers * c->n_experts;
            er = router_err(r1 + t0 * rrow, gr, (uint32_t)(T - t0), c->n_moe_layers, c->n_experts);
            if (t0) { /* the golden's rows t0.. of each layer */
                float *sub = malloc((T - t0) * rrow * sizeof *sub);
                for (uint32_t l = 0; l < c->n_moe_layers; l++)
                    memcpy(sub + l * (T - t0) * c->n_experts, gr + (l * T + t0) * c->n_experts,
                           (T - t0) * c->n_experts * sizeof *sub);
                er = router_err(r1 + t0 * rrow, sub, (uint32_t)(T - t0), c->n_moe_layers, c->n_experts);
                free(sub);
            }
            el = rel_err(l1 + t0 * c->vocab_size, gl + t0 * c->vocab_size, (T - t0) * c->vocab_size);
            ck_assert_msg(er <= tol && el <= tol, "%s prompt %d cached (from %zu): router err %.3g, logits err %.3g",
                          list[mi].name, p, t0, er, el);
            /* greedy generation through the cache equals the reference's full recompute */
            snprintf(name, sizeof name, "generate_%d", p);
            check_greedy(m, g, name, ids, (uint32_t)T, NULL, list[mi].name);
            mtr_session_destroy(s);
            free(ids);
            free(gr);
            free(gl);
            free(router);
            free(logits);
            free(r1);
            free(l1);
            free(rt);
        }
        mtr_st_close(g);
        mtr_model_destroy(m);
    }
    for (int a = 0; a < MTR_ARCH_COUNT; a++) ck_assert_msg(seen[a], "no tiny checkpoint of architecture %d", a);
}
END_TEST

START_TEST(test_golden_steering)
{
    tiny list[32];
    size_t n_models = list_tiny(list, 32);
    size_t checked = 0;
    for (size_t mi = 0; mi < n_models; mi++) {
        mtr_model *m = NULL;
        TU_OK(mtr_model_load(&m, list[mi].dir, NULL));
        const mtr_model_config *c = mtr_model_get_config(m);
        char gp[1100];
        snprintf(gp, sizeof gp, "%s/golden.safetensors", list[mi].dir);
        mtr_st *g = NULL;
        TU_OK(mtr_st_open(&g, gp));
        for (size_t ti = 0; ti < mtr_st_count(g); ti++) {
            const char *tn = mtr_st_get(g, ti)->name;
            if (strncmp(tn, "router_steer_", 13) != 0) continue;
            const char *tag = tn + 13;
            char key[160], name[160];
            snprintf(key, sizeof key, "steer_%s", tag);
            const char *spec = mtr_st_metadata(g, key);
            ck_assert_msg(spec != NULL, "%s: no metadata '%s' for %s", list[mi].name, key, tn);
            /* the steering file the reference applied, read through libmoetrace */
            json_t *j = json_loads(spec, 0, NULL);
            ck_assert_ptr_nonnull(j);
            const char *file = json_string_value(json_object_get(j, "file"));
            ck_assert_ptr_nonnull(file);
            char sp[1400];
            snprintf(sp, sizeof sp, "%s/%s", list[mi].dir, file);
            json_decref(j);
            mtr_steer *st = NULL;
            TU_OK(mtr_steer_load(&st, sp));
            const char *us = strrchr(tag, '_');
            ck_assert_ptr_nonnull(us);
            snprintf(name, sizeof name, "prompt_%s", us + 1);
            size_t T = 0, nr = 0, nlg = 0;
            int32_t *ids = golden_ids(g, name, &T);
            ck_assert_ptr_nonnull(ids);
            float *gr = golden_f32(g, tn, &nr);
            snprintf(name, sizeof name, "logits_steer_%s", tag);
            float *gl = golden_f32(g, name, &nlg);
            ck_assert_ptr_nonnull(gl);
            float *router = malloc(nr * sizeof *router), *logits = malloc(nlg * sizeof *logits);
            mtr_session *s = NULL;
            TU_OK(mtr_session_create(&s, m, 64, 64));
            mtr_forward_io io = MTR_FORWARD_IO_INIT;
            io.router = router;
            io.logits = logits;
            io.n_logits = (uint32_t)T;
            io.steer = st;
            TU_OK(mtr_model_forward(s, ids, (uint32_t)T, &io));
            double tol = tolerance(m);
            /* the engine reports the raw gate outputs (what a trace stores); the steered logits follow from the
             * spec and must be those the reference routed on */
            snprintf(name, sizeof name, "router_raw_steer_%s", tag);
            float *graw = golden_f32(g, name, NULL);
            ck_assert_ptr_nonnull(graw);
            double eraw = router_err(router, graw, (uint32_t)T, c->n_moe_layers, c->n_experts);
            float *steered = malloc(nr * sizeof *steered);
            memcpy(steered, router, nr * sizeof *steered);
            for (uint32_t t = 0; t < T; t++)
                for (uint32_t l = 0; l < c->n_moe_layers; l++)
                    mtr_steer_apply(st, l, steered + ((size_t)t * c->n_moe_layers + l) * c->n_experts, NULL);
            double er = router_err(steered, gr, (uint32_t)T, c->n_moe_layers, c->n_experts);
            double el = rel_err(logits, gl, nlg);
            ck_assert_msg(eraw <= tol && er <= tol && el <= tol,
                          "%s %s: raw router err %.3g, steered router err %.3g, logits err %.3g", list[mi].name, tn,
                          eraw, er, el);
            free(graw);
            free(steered);
            /* greedy generation under steering, through the cache */
            snprintf(name, sizeof name, "generate_steer_%s", tag);
            check_greedy(m, g, name, ids, (uint32_t)T, st, list[mi].name);
            checked++;
            mtr_session_destroy(s);
            mtr_steer_destroy(st);
            free(ids);
            free(gr);
            free(gl);
            free(router);
            free(logits);
        }
        mtr_st_close(g);
        mtr_model_destroy(m);
    }
    ck_assert_msg(checked >= 2, "only %zu steered goldens found", checked);
}
END_TEST

static mtr_model *load_first(const char *arch)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", models_dir(), arch);
    mtr_model *m = NULL;
    TU_OK(mtr_model_load(&m, dir, NULL));
    return m;
}

static const int32_t probe_ids[] = {72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 200, 17, 3};
#define N_PROBE ((uint32_t)(sizeof probe_ids / sizeof probe_ids[0]))

/* raw router logits (N_PROBE, n_moe_layers, n_experts) of the probe, and its last-token logits into *last */
static float *run_router(mtr_model *m, const mtr_steer *st, float **last)
{
    const mtr_model_config *c = mtr_model_get_config(m);
    float *r = malloc((size_t)N_PROBE * c->n_moe_layers * c->n_experts * sizeof *r);
    *last = malloc(c->vocab_size * sizeof **last);
    uint64_t rng[MTR_MAX_LAYERS];
    for (uint32_t l = 0; l < c->n_moe_layers; l++) rng[l] = mtr_steer_layer_seed(st ? st->seed : 0, l);
    mtr_session *s = NULL;
    TU_OK(mtr_session_create(&s, m, 64, 64));
    mtr_forward_io io = MTR_FORWARD_IO_INIT;
    io.router = r;
    io.logits = *last;
    io.n_logits = 1;
    io.steer = st;
    io.steer_rng = st ? rng : NULL;
    TU_OK(mtr_model_forward(s, probe_ids, N_PROBE, &io));
    mtr_session_destroy(s);
    return r;
}

/* Steering the first MoE layer: the raw gate outputs of that layer are untouched (the intervention comes after
 * the gate), the later layers and the final logits move (the model routed differently), and the steered logits
 * the spec gives put the forced experts (hard) in every token's top-k, or shift them by lambda * std(z) (soft). */
START_TEST(test_steering_properties)
{
    mtr_model *m = load_first("qwen3_moe");
    const mtr_model_config *c = mtr_model_get_config(m);
    const uint32_t L = c->n_moe_layers, E = c->n_experts, K = c->top_k, tl = 0;
    float *base_last = NULL;
    float *base = run_router(m, NULL, &base_last);
    for (int op = 0; op < 2; op++) {
        mtr_steer *st = NULL;
        TU_OK(mtr_steer_create(&st, c->name_or_path, L, E, K, op == 0 ? MTR_STEER_HARD : MTR_STEER_SOFT));
        st->lambda = 3.0; /* soft: strong enough to change some token's top-k in this model */
        TU_OK(mtr_steer_add(st, tl, 3, NAN, NAN));
        TU_OK(mtr_steer_add(st, tl, 5, NAN, NAN));
        float *last = NULL;
        float *r = run_router(m, st, &last);
        bool later_moved = false;
        for (uint32_t t = 0; t < N_PROBE; t++) {
            ck_assert_mem_eq(r + ((size_t)t * L + tl) * E, base + ((size_t)t * L + tl) * E, E * sizeof(float));
            for (uint32_t l = tl + 1; l < L; l++)
                later_moved |= memcmp(r + ((size_t)t * L + l) * E, base + ((size_t)t * L + l) * E, E * 4) != 0;
            float z0[256], z1[256];
            memcpy(z0, base + ((size_t)t * L + tl) * E, E * sizeof(float));
            memcpy(z1, z0, E * sizeof(float));
            mtr_steer_apply(st, tl, z1, NULL);
            double mean = 0, var = 0;
            for (uint32_t e = 0; e < E; e++) mean += z0[e];
            mean /= E;
            for (uint32_t e = 0; e < E; e++) var += (z0[e] - mean) * (z0[e] - mean);
            double sd = sqrt(var / E);
            for (uint32_t e = 0; e < E; e++) {
                if (e == 3 || e == 5) {
                    if (op == 1) ck_assert_float_eq_tol(z1[e] - z0[e], 3.0 * sd, 1e-5 * (1 + fabs(z0[e])));
                    continue;
                }
                ck_assert_float_eq(z1[e], z0[e]);
            }
            if (op == 0) {
                uint16_t ids[MTR_MAX_TOPK];
                mtr_topk(ids, z1, E, K);
                bool has3 = false, has5 = false;
                for (uint32_t j = 0; j < K; j++) has3 |= ids[j] == 3, has5 |= ids[j] == 5;
                ck_assert_msg(has3 && has5, "token %u: forced experts not in the top-%u", t, K);
            }
        }
        ck_assert_msg(later_moved || L == 1, "steering layer %u changed nothing downstream", tl);
        ck_assert_msg(memcmp(last, base_last, c->vocab_size * sizeof(float)) != 0, "final logits unchanged");
        free(r);
        free(last);
        mtr_steer_destroy(st);
    }
    free(base);
    free(base_last);
    mtr_model_destroy(m);
}
END_TEST

/* Sparsemixer's element-wise steps in the model dtype: a relative gap of 0.20068 in f32 rounds to bf16's 0.2002,
 * which is not above bf16(2 eps = 0.2), so the bf16 model keeps the expert (weight 0.715, as PyTorch computes it in
 * bf16) where the f32 rule masks it (weight 1); steered logits (f32 values) take the f32 rule. */
START_TEST(test_sparsemixer_dtype)
{
    const float z[8] = {-0.63671875f, -1.7734375f, 3.671875f, 4.59375f, 1.8515625f, -0.12109375f, 2.015625f, 2.328125f};
    uint16_t ids[2];
    float w[2], scratch[8];
    mtr_model *mb = load_first("phimoe_bf16"), *mf = load_first("phimoe");
    ck_assert_double_eq(mtr_model_get_config(mb)->router_jitter, 0.1);
    mtr_phimoe_route(mb, 0, z, NULL, ids, w, scratch);
    ck_assert_uint_eq(ids[0], 3);
    ck_assert_uint_eq(ids[1], 2);
    ck_assert_float_eq(w[0], 0.71484375f);
    ck_assert_float_eq(w[1], 1.0f);
    mtr_phimoe_route(mf, 0, z, NULL, ids, w, scratch);
    ck_assert_float_eq(w[0], 1.0f);
    mtr_steer *st = NULL;
    TU_OK(mtr_steer_create(&st, "", 3, 8, 2, MTR_STEER_SOFT));
    TU_OK(mtr_steer_add(st, 0, 1, NAN, NAN));
    mtr_phimoe_route(mb, 0, z, st, ids, w, scratch);
    ck_assert_float_eq(w[0], 1.0f);
    mtr_phimoe_route(mb, 1, z, st, ids, w, scratch); /* layer 1 is not a target: bf16 rule */
    ck_assert_float_eq(w[0], 0.71484375f);
    mtr_steer_destroy(st);
    mtr_model_destroy(mb);
    mtr_model_destroy(mf);
}
END_TEST

/* A packed batch of the golden prompts (independent sequences in one forward) gives each prompt's golden router
 * logits and final logits. */
START_TEST(test_golden_packed)
{
    tiny list[32];
    size_t n_models = list_tiny(list, 32);
    for (size_t mi = 0; mi < n_models; mi++) {
        mtr_model *m = NULL;
        TU_OK(mtr_model_load(&m, list[mi].dir, NULL));
        const mtr_model_config *c = mtr_model_get_config(m);
        char gp[1100];
        snprintf(gp, sizeof gp, "%s/golden.safetensors", list[mi].dir);
        mtr_st *g = NULL;
        TU_OK(mtr_st_open(&g, gp));
        int32_t *ids[3];
        uint32_t lens[3], total = 0;
        for (int p = 0; p < 3; p++) {
            char name[32];
            snprintf(name, sizeof name, "prompt_%d", p);
            size_t T = 0;
            ids[p] = golden_ids(g, name, &T);
            ck_assert_ptr_nonnull(ids[p]);
            lens[p] = (uint32_t)T;
            total += lens[p];
        }
        int32_t *all = malloc(total * sizeof *all);
        for (uint32_t p = 0, at = 0; p < 3; at += lens[p], p++) memcpy(all + at, ids[p], lens[p] * sizeof *all);
        const size_t rrow = (size_t)c->n_moe_layers * c->n_experts;
        float *router = malloc(total * rrow * sizeof *router), *logits = malloc((size_t)total * c->vocab_size * 4);
        mtr_session *s = NULL;
        TU_OK(mtr_session_create(&s, m, 64, 64));
        mtr_forward_io io = MTR_FORWARD_IO_INIT;
        io.router = router;
        io.logits = logits;
        io.n_logits = total;
        io.seq_lens = lens;
        io.n_seqs = 3;
        TU_OK(mtr_model_forward(s, all, total, &io));
        /* the session cannot continue a packed batch */
        ck_assert_int_eq(mtr_model_forward(s, all, 1, NULL), MTR_EINVAL);
        const double tol = tolerance(m);
        for (uint32_t p = 0, at = 0; p < 3; at += lens[p], p++) {
            char name[32];
            snprintf(name, sizeof name, "router_%u", p);
            float *gr = golden_f32(g, name, NULL);
            snprintf(name, sizeof name, "logits_%u", p);
            float *gl = golden_f32(g, name, NULL);
            double er = router_err(router + at * rrow, gr, lens[p], c->n_moe_layers, c->n_experts);
            double el = rel_err(logits + (size_t)at * c->vocab_size, gl, (size_t)lens[p] * c->vocab_size);
            ck_assert_msg(er <= tol && el <= tol, "%s packed prompt %u: router err %.3g, logits err %.3g",
                          list[mi].name, p, er, el);
            free(gr);
            free(gl);
        }
        for (int p = 0; p < 3; p++) free(ids[p]);
        free(all);
        free(router);
        free(logits);
        mtr_session_destroy(s);
        mtr_st_close(g);
        mtr_model_destroy(m);
    }
}
END_TEST

/* Results do not depend on the number of threads. */
START_TEST(test_threads_identical)
{
    tiny list[32];
    size_t n_models = list_tiny(list, 32);
    for (size_t mi = 0; mi < n_models; mi++) {
        float *out[2];
        size_t bytes = 0;
        for (int nt = 1; nt <= 2; nt++) {
            mtr_model_opts o = MTR_MODEL_OPTS_INIT;
            o.n_threads = nt;
            mtr_model *m = NULL;
            TU_OK(mtr_model_load(&m, list[mi].dir, &o));
            const mtr_model_config *c = mtr_model_get_config(m);
            bytes = ((size_t)N_PROBE * c->n_moe_layers * c->n_experts + c->vocab_size) * sizeof(float);
            out[nt - 1] = malloc(bytes);
            mtr_session *s = NULL;
            TU_OK(mtr_session_create(&s, m, 64, 64));
            mtr_forward_io io = MTR_FORWARD_IO_INIT;
            io.router = out[nt - 1];
            io.logits = out[nt - 1] + (size_t)N_PROBE * c->n_moe_layers * c->n_experts;
            io.n_logits = 1;
            TU_OK(mtr_model_forward(s, probe_ids, N_PROBE, &io));
            mtr_session_destroy(s);
            mtr_model_destroy(m);
        }
        ck_assert_msg(memcmp(out[0], out[1], bytes) == 0, "%s: 1 and 2 threads differ", list[mi].name);
        free(out[0]);
        free(out[1]);
    }
}
END_TEST

/* ---- safetensors validation ------------------------------------------------------------------------------ */

static char tmp[512];

static void write_st(const char *path, const char *header, size_t data_bytes, long hlen_override)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint64_t n = hlen_override >= 0 ? (uint64_t)hlen_override : strlen(header);
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(n >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_bytes; i++) fputc((int)(i & 0xff), f);
    fclose(f);
}

static void expect_st_error(const char *header, size_t data, long hlen, int code, const char *needle)
{
    char p[600];
    snprintf(p, sizeof p, "%s/bad.safetensors", tmp);
    write_st(p, header, data, hlen);
    mtr_st *st = NULL;
    int rc = mtr_st_open(&st, p);
    ck_assert_msg(rc == code, "header %s: got %s (%s), want %s", header, mtr_strerror(rc), mtr_errmsg(),
                  mtr_strerror(code));
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(mtr_errmsg(), "bad.safetensors") && strstr(mtr_errmsg(), needle),
                  "message '%s' lacks the file or '%s'", mtr_errmsg(), needle);
}

/* MXFP4 rows (gpt_oss experts) against the format decoded from its bits: e2m1 = sign, 2 exponent bits, 1 mantissa
 * bit; low nibble first; times 2^(scale - 127), including the extreme scales (subnormal results, infinity) */
START_TEST(test_mxfp4_rows)
{
    enum { R = 5, C = 96, NB = C / 32 };
    uint8_t blocks[R * NB * 16], scales[R * NB];
    uint64_t st = 12345;
    for (size_t i = 0; i < sizeof blocks; i++) blocks[i] = (uint8_t)((st = st * 6364136223846793005ull + 1) >> 56);
    for (size_t i = 0; i < sizeof scales; i++) scales[i] = (uint8_t)(110 + 3 * i);
    scales[0] = 0;
    scales[1] = 1;
    scales[2] = 254;
    scales[3] = 255;
    mtr_mat W = {blocks, MTR_DTYPE_F32, R, C, scales};
    for (uint32_t r0 = 0; r0 < R; r0++) {
        uint32_t n = R - r0;
        float *got = tu_guarded((size_t)n * C * sizeof(float));
        mtr_mxfp4_rows(got, &W, r0, n);
        ck_assert(tu_guard_ok(got, (size_t)n * C * sizeof(float)));
        for (uint32_t r = 0; r < n; r++)
            for (uint32_t c = 0; c < C; c++) {
                uint32_t g = (r0 + r) * NB + c / 32, k = c % 32;
                unsigned nib = k % 2 ? blocks[g * 16 + k / 2] >> 4 : blocks[g * 16 + k / 2] & 15u;
                int ex = (int)(nib >> 1 & 3u), man = (int)(nib & 1u);
                double mag = ex == 0 ? 0.5 * man : ldexp(1.0 + 0.5 * man, ex - 1);
                /* in f32 as torch.ldexp computes it (x * 2^e): scale 255 (NaN in the MX spec) gives 0 * inf = NaN
                 * and +-inf, as transformers' dequantiser does */
                float w = (float)(nib & 8u ? -mag : mag) * ldexpf(1.f, (int)scales[g] - 127), v = got[(size_t)r * C + c];
                ck_assert_msg(v == w || (isnan(v) && isnan(w)), "row %u col %u: %g, want %g", r0 + r, c, v, w);
                ck_assert_msg(!signbit(v) == !signbit(w) || isnan(w), "row %u col %u: sign", r0 + r, c);
            }
        free(got);
    }
}
END_TEST

START_TEST(test_safetensors_errors)
{
    tu_tmpdir(tmp, sizeof tmp, "st");
    const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                       "\"__metadata__\":{\"format\":\"pt\"}}";
    char p[600];
    snprintf(p, sizeof p, "%s/good.safetensors", tmp);
    write_st(p, good, 16, -1);
    mtr_st *st = NULL;
    TU_OK(mtr_st_open(&st, p));
    ck_assert_uint_eq(mtr_st_count(st), 1);
    const mtr_st_tensor *t = mtr_st_find(st, "a");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->shape[0], 2);
    ck_assert_str_eq(mtr_st_metadata(st, "format"), "pt");
    ck_assert_ptr_null(mtr_st_find(st, "b"));
    mtr_st_close(st);

    expect_st_error(good, 8, -1, MTR_ETRUNCATED, "runs past");
    expect_st_error(good, 16, 1L << 40, MTR_EFORMAT, "header length");
    expect_st_error(good, 16, (long)strlen(good) + 100, MTR_ETRUNCATED, "header");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16, -1, MTR_EFORMAT,
                    "need 16");
    expect_st_error("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 16, -1, MTR_EFORMAT, "Q4");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                    16, -1, MTR_EFORMAT, "overlap");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 16, -1, MTR_EFORMAT, "shape");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 16, -1, MTR_EFORMAT,
                    "data_offsets");
    expect_st_error("[1,2,3]", 16, -1, MTR_EFORMAT, "not a JSON object");
    expect_st_error("{\"a\":", 16, -1, MTR_EFORMAT, "not valid JSON");
    tu_rmrf(tmp);
}
END_TEST

/* The fuzz target's seed corpus (tests/fuzz/corpus/safetensors) opens or fails cleanly; seed4 overlaps. */
START_TEST(test_safetensors_seeds)
{
    const char *dir = "tests/fuzz/corpus/safetensors";
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "%s: missing", dir);
    size_t n = 0, opened = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[600];
        snprintf(p, sizeof p, "%s/%.255s", dir, e->d_name);
        mtr_st *st = NULL;
        int rc = mtr_st_open(&st, p);
        if (rc == 0) {
            opened++;
            for (size_t i = 0; i < mtr_st_count(st); i++) {
                const mtr_st_tensor *t = mtr_st_get(st, i);
                float *f = malloc((size_t)t->n_elems * sizeof *f + 1);
                mtr_st_to_f32(f, t);
                free(f);
            }
            mtr_st_close(st);
        } else
            ck_assert_msg(strstr(mtr_errmsg(), e->d_name) != NULL, "%s: error '%s' does not name the file", p,
                          mtr_errmsg());
        n++;
    }
    closedir(d);
    ck_assert_uint_ge(n, 4);
    ck_assert_uint_ge(opened, 3);
}
END_TEST

/* A checkpoint whose weights disagree with its config.json is refused with the tensor named. */
START_TEST(test_model_mismatch)
{
    tu_tmpdir(tmp, sizeof tmp, "model");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cp -r %s/qwen3_moe/. %s/ && sed -i 's/\"num_experts\": *[0-9]*/\"num_experts\": 7/' "
             "%s/config.json", models_dir(), tmp, tmp);
    ck_assert_int_eq(system(cmd), 0);
    mtr_model *m = NULL;
    int rc = mtr_model_load(&m, tmp, NULL);
    ck_assert_msg(rc == MTR_EMISMATCH && strstr(mtr_errmsg(), "gate.weight"), "%s: %s", mtr_strerror(rc),
                  mtr_errmsg());
    snprintf(cmd, sizeof cmd, "sed -i 's/\"model_type\": *\"qwen3_moe\"/\"model_type\": \"llama\"/' %s/config.json",
             tmp);
    ck_assert_int_eq(system(cmd), 0);
    rc = mtr_model_load(&m, tmp, NULL);
    ck_assert_msg(rc == MTR_EFORMAT && strstr(mtr_errmsg(), "llama"), "%s", mtr_errmsg());
    /* sparsemixer routes two experts; DeepSeek's topk_method and group sizes are checked */
    static const char *const bad[][3] = {
        {"phimoe", "s/\"num_experts_per_tok\": *2/\"num_experts_per_tok\": 3/", "sparsemixer"},
        {"phimoe", "s/\"short_mscale\": *[0-9.]*/\"short_mscale\": \"x\"/", "short_mscale"},
        {"deepseek_v2", "s/\"group_limited_greedy\"/\"balanced\"/", "topk_method"},
        {"deepseek_v2", "s/\"n_group\": *4/\"n_group\": 3/", "n_group"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "rm -rf %s/* && cp -r %s/%s/. %s/ && sed -i '%s' %s/config.json", tmp, models_dir(),
                 bad[i][0], tmp, bad[i][1], tmp);
        ck_assert_int_eq(system(cmd), 0);
        rc = mtr_model_load(&m, tmp, NULL);
        ck_assert_msg(rc == MTR_EFORMAT && strstr(mtr_errmsg(), bad[i][2]) && strstr(mtr_errmsg(), "config.json"),
                      "%s / %s: %s: %s", bad[i][0], bad[i][1], mtr_strerror(rc), mtr_errmsg());
    }
    snprintf(cmd, sizeof cmd, "rm %s/config.json", tmp);
    ck_assert_int_eq(system(cmd), 0);
    rc = mtr_model_load(&m, tmp, NULL);
    ck_assert_msg(rc == MTR_ENOTFOUND && strstr(mtr_errmsg(), "config.json"), "%s", mtr_errmsg());
    tu_rmrf(tmp);
}
END_TEST

/* Copy src/name to dst/name with one more space in the header; returns how many tensors (other than U8) then
 * sit at offsets their dtype cannot be read at in place. */
static size_t shift_weights(const char *src, const char *dst, const char *name)
{
    char sp[1400], dp[1400];
    snprintf(sp, sizeof sp, "%s/%s", src, name);
    snprintf(dp, sizeof dp, "%s/%s", dst, name);
    FILE *f = fopen(sp, "rb"), *o = fopen(dp, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(o);
    unsigned char le[8];
    ck_assert_uint_eq(fread(le, 1, 8, f), 8);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)le[i] << (8 * i);
    ck_assert_msg(hl % 8 == 0, "%s: header length %llu, expected the aligned layout safetensors writes", sp,
                  (unsigned long long)hl);
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((hl + 1) >> (8 * i));
    fwrite(le, 1, 8, o);
    char buf[1 << 16];
    size_t n, left = (size_t)hl;
    while (left && (n = fread(buf, 1, left < sizeof buf ? left : sizeof buf, f)) > 0) {
        fwrite(buf, 1, n, o);
        left -= n;
    }
    fputc(' ', o);
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, o);
    fclose(f);
    ck_assert_int_eq(fclose(o), 0);
    mtr_st *st = NULL;
    TU_OK(mtr_st_open(&st, dp));
    size_t odd = 0;
    for (size_t i = 0; i < mtr_st_count(st); i++) {
        const mtr_st_tensor *t = mtr_st_get(st, i);
        odd += t->dtype != MTR_ST_U8 && (uintptr_t)t->data % 2 != 0;
    }
    mtr_st_close(st);
    return odd;
}

/* A checkpoint whose tensors sit at odd offsets (a header one byte longer: safetensors does not require
 * alignment) loads and gives the same router and final logits: weights the engine reads in place are copied
 * aligned. */
START_TEST(test_misaligned_weights)
{
    static const char *const names[] = {"qwen3_moe", "qwen3_moe_bf16", "gpt_oss_bf16"};
    tu_tmpdir(tmp, sizeof tmp, "odd");
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char src[1024], dst[1200], cmd[4096];
        snprintf(src, sizeof src, "%s/%s", models_dir(), names[k]);
        snprintf(dst, sizeof dst, "%s/%s", tmp, names[k]);
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s'/*.json '%s'/", dst, src, dst);
        ck_assert_int_eq(system(cmd), 0);
        /* every weight file with one more space in its header */
        DIR *dir = opendir(src);
        ck_assert_ptr_nonnull(dir);
        struct dirent *e;
        size_t odd = 0, files = 0;
        while ((e = readdir(dir))) {
            size_t len = strlen(e->d_name);
            if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") != 0 ||
                strcmp(e->d_name, "golden.safetensors") == 0)
                continue;
            odd += shift_weights(src, dst, e->d_name);
            files++;
        }
        closedir(dir);
        ck_assert_uint_gt(files, 0);
        ck_assert_msg(odd > 0, "%s: no misaligned tensor", dst);

        mtr_model *a = NULL, *b = NULL;
        TU_OK(mtr_model_load(&a, src, NULL));
        TU_OK(mtr_model_load(&b, dst, NULL));
        ck_assert_uint_gt(b->n_copies, 0);
        ck_assert_uint_eq(a->n_copies, 0);
        const mtr_model_config *c = mtr_model_get_config(a);
        int32_t ids[24];
        for (int i = 0; i < 24; i++) ids[i] = (int32_t)((7u * (unsigned)i + 3u) % c->vocab_size);
        size_t nr = 24 * (size_t)c->n_moe_layers * c->n_experts, nl = 24 * (size_t)c->vocab_size;
        float *ra = malloc(nr * sizeof *ra), *rb = malloc(nr * sizeof *rb);
        float *la = malloc(nl * sizeof *la), *lb = malloc(nl * sizeof *lb);
        mtr_model *mm[2] = {a, b};
        float *rr[2] = {ra, rb}, *ll[2] = {la, lb};
        for (int j = 0; j < 2; j++) {
            mtr_session *s = NULL;
            TU_OK(mtr_session_create(&s, mm[j], 32, 32));
            mtr_forward_io io = MTR_FORWARD_IO_INIT;
            io.router = rr[j];
            io.logits = ll[j];
            io.n_logits = 24;
            TU_OK(mtr_model_forward(s, ids, 24, &io));
            mtr_session_destroy(s);
        }
        /* the same weights; only vector loops that peel to an alignment may sum in another order */
        double er = rel_err(rb, ra, nr), el = rel_err(lb, la, nl);
        fprintf(stderr, "%s misaligned: router rel err %.3g, logits %.3g\n", names[k], er, el);
        ck_assert_msg(er < 1e-5 && el < 1e-5, "%s: misaligned copy differs: router %g, logits %g", names[k], er, el);
        free(ra);
        free(rb);
        free(la);
        free(lb);
        mtr_model_destroy(a);
        mtr_model_destroy(b);
    }
    tu_rmrf(tmp);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *c = tcase_create("model");
    tcase_set_timeout(c, 600);
    tcase_add_test(c, test_golden_forward);
    tcase_add_test(c, test_golden_steering);
    tcase_add_test(c, test_golden_packed);
    tcase_add_test(c, test_steering_properties);
    tcase_add_test(c, test_sparsemixer_dtype);
    tcase_add_test(c, test_threads_identical);
    tcase_add_test(c, test_safetensors_errors);
    tcase_add_test(c, test_mxfp4_rows);
    tcase_add_test(c, test_model_mismatch);
    tcase_add_test(c, test_safetensors_seeds);
    tcase_add_test(c, test_misaligned_weights);
    suite_add_tcase(s, c);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
