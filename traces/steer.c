/* steer.c — steering files (traces/STEERING.md, docs/ARCHITECTURE.md §4): the in-memory description, its HDF5 file and
 * JSON twin, validation on load, application to router logits, and the EasySteer / flat-matrix exports. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "mtr_steer.h"

#define A_NAME "name"
#define A_OP "op"
#define A_LAMBDA "lambda"
#define A_EPS_MODE "eps_mode"
#define A_EPS "eps"
#define A_SEED "seed"
#define A_PROVENANCE "provenance"
#define D_TARGETS "target_layers"
#define D_EXPERTS "experts"
#define D_SCORES "scores"
#define D_COEF "coef"

/* ---- names ------------------------------------------------------------------------------------------------ */

#define MTR_X_NAME(name, str) str,
static const char *const op_names[] = {MTR_STEER_OP_LIST(MTR_X_NAME)};
static const char *const eps_names[] = {MTR_STEER_EPS_LIST(MTR_X_NAME)};
#undef MTR_X_NAME

const char *mtr_steer_op_name(mtr_steer_op op) { return (unsigned)op < MTR_STEER_OP_COUNT ? op_names[op] : NULL; }
const char *mtr_steer_eps_name(mtr_steer_eps e) { return (unsigned)e < MTR_STEER_EPS_COUNT ? eps_names[e] : NULL; }

int mtr_steer_op_parse(mtr_steer_op *out, const char *s)
{
    for (int i = 0; i < MTR_STEER_OP_COUNT; i++)
        if (s && !strcmp(s, op_names[i])) return (*out = (mtr_steer_op)i, 0);
    return mtr_fail(MTR_EINVAL, "unknown steering operation '%s' (soft, hard, off, bias)", s ? s : "");
}

int mtr_steer_eps_parse(mtr_steer_eps *out, const char *s)
{
    for (int i = 0; i < MTR_STEER_EPS_COUNT; i++)
        if (s && !strcmp(s, eps_names[i])) return (*out = (mtr_steer_eps)i, 0);
    return mtr_fail(MTR_EINVAL, "unknown eps mode '%s' (gaussian, fixed)", s ? s : "");
}

/* ---- the description -------------------------------------------------------------------------------------- */

void mtr_steer_destroy(mtr_steer *s)
{
    if (!s) return;
    free(s->layer_index);
    free(s->target_layers);
    free(s->experts);
    free(s->coef);
    free(s->provenance);
    free(s);
}

int mtr_steer_create(mtr_steer **out, const char *model_id, uint32_t n_layers, uint32_t n_experts, uint32_t top_k,
                     mtr_steer_op op)
{
    *out = NULL;
    if (n_layers == 0 || n_layers > MTR_MAX_LAYERS || n_experts == 0 || n_experts > MTR_MAX_EXPERTS || top_k == 0 ||
        top_k > n_experts || top_k > MTR_MAX_TOPK || (unsigned)op >= MTR_STEER_OP_COUNT)
        return mtr_fail(MTR_EINVAL, "steering: bad dimensions (%u layers, %u experts, top-%u) or operation", n_layers,
                        n_experts, top_k);
    mtr_steer *s = calloc(1, sizeof *s);
    if (!s) return mtr_fail(MTR_ENOMEM, "out of memory");
    s->layer_index = malloc(n_layers * sizeof *s->layer_index);
    s->coef = calloc((size_t)n_layers * n_experts, sizeof *s->coef);
    s->provenance = strdup("{}");
    if (!s->layer_index || !s->coef || !s->provenance) {
        mtr_steer_destroy(s);
        return mtr_fail(MTR_ENOMEM, "out of memory");
    }
    snprintf(s->model_id, sizeof s->model_id, "%s", model_id ? model_id : "");
    snprintf(s->name, sizeof s->name, "%s", mtr_steer_op_name(op));
    for (uint32_t l = 0; l < n_layers; l++) s->layer_index[l] = (int32_t)l;
    s->n_layers = n_layers;
    s->n_experts = n_experts;
    s->top_k = top_k;
    s->op = op;
    s->lambda = MTR_STEER_DEFAULT_LAMBDA;
    s->eps_mode = MTR_STEER_EPS_GAUSSIAN;
    s->eps = MTR_STEER_DEFAULT_EPS_SD;
    *out = s;
    return 0;
}

static int add_target(mtr_steer *s, uint32_t layer)
{
    uint32_t i = 0;
    while (i < s->n_target && s->target_layers[i] < layer) i++;
    if (i < s->n_target && s->target_layers[i] == layer) return 0;
    uint32_t *t = realloc(s->target_layers, (s->n_target + 1) * sizeof *t);
    if (!t) return mtr_fail(MTR_ENOMEM, "out of memory");
    memmove(t + i + 1, t + i, (s->n_target - i) * sizeof *t);
    t[i] = layer;
    s->target_layers = t;
    s->n_target++;
    return 0;
}

int mtr_steer_add(mtr_steer *s, uint32_t layer, uint32_t expert, double coef, double score)
{
    if (layer >= s->n_layers || expert >= s->n_experts)
        return mtr_fail(MTR_EINVAL, "steering: expert (%u, %u) outside %u layers x %u experts", layer, expert,
                        s->n_layers, s->n_experts);
    if (isnan(coef)) {
        switch (s->op) {
        case MTR_STEER_SOFT: coef = s->lambda; break;
        case MTR_STEER_HARD: coef = 1.0; break;
        case MTR_STEER_OFF: coef = -1.0; break;
        default: return mtr_fail(MTR_EINVAL, "steering: a bias needs an explicit coefficient");
        }
    }
    if (!isfinite(coef) || coef == 0.0)
        return mtr_fail(MTR_EINVAL, "steering: coefficient of (%u, %u) must be finite and non-zero", layer, expert);
    size_t i = 0;
    while (i < s->n_sel && (s->experts[i].layer < layer || (s->experts[i].layer == layer && s->experts[i].expert < expert)))
        i++;
    if (i < s->n_sel && s->experts[i].layer == layer && s->experts[i].expert == expert)
        return mtr_fail(MTR_EDUP, "steering: expert (%u, %u) added twice", layer, expert);
    mtr_steer_expert *v = realloc(s->experts, (s->n_sel + 1) * sizeof *v);
    if (!v) return mtr_fail(MTR_ENOMEM, "out of memory");
    memmove(v + i + 1, v + i, (s->n_sel - i) * sizeof *v);
    v[i] = (mtr_steer_expert){layer, expert, score};
    s->experts = v;
    s->n_sel++;
    s->coef[(size_t)layer * s->n_experts + expert] = (float)coef;
    return add_target(s, layer);
}

int mtr_steer_set_targets(mtr_steer *s, const uint32_t *layers, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (layers[i] >= s->n_layers)
            return mtr_fail(MTR_EINVAL, "steering: target layer %u outside %u layers", layers[i], s->n_layers);
    free(s->target_layers);
    s->target_layers = NULL;
    s->n_target = 0;
    for (uint32_t i = 0; i < n; i++) {
        int rc = add_target(s, layers[i]);
        if (rc) return rc;
    }
    return 0;
}

int mtr_steer_set_provenance(mtr_steer *s, const char *json_object)
{
    json_error_t err;
    json_t *j = json_loads(json_object ? json_object : "", 0, &err);
    bool ok = json_is_object(j);
    json_decref(j);
    if (!ok) return mtr_fail(MTR_EINVAL, "steering: provenance is not a JSON object");
    char *p = strdup(json_object);
    if (!p) return mtr_fail(MTR_ENOMEM, "out of memory");
    free(s->provenance);
    s->provenance = p;
    return 0;
}

static bool is_target(const mtr_steer *s, uint32_t layer)
{
    for (uint32_t i = 0; i < s->n_target; i++)
        if (s->target_layers[i] == layer) return true;
    return false;
}

int mtr_steer_validate(const mtr_steer *s)
{
    if (s->n_layers == 0 || s->n_layers > MTR_MAX_LAYERS || s->n_experts == 0 || s->n_experts > MTR_MAX_EXPERTS ||
        s->top_k == 0 || s->top_k > s->n_experts || s->top_k > MTR_MAX_TOPK)
        return mtr_fail(MTR_EINVAL, "steering: bad dimensions (%u layers, %u experts, top-%u)", s->n_layers,
                        s->n_experts, s->top_k);
    if ((unsigned)s->op >= MTR_STEER_OP_COUNT || (unsigned)s->eps_mode >= MTR_STEER_EPS_COUNT)
        return mtr_fail(MTR_EINVAL, "steering: unknown operation or eps mode");
    if (s->op == MTR_STEER_SOFT && !isfinite(s->lambda)) return mtr_fail(MTR_EINVAL, "steering: lambda is not finite");
    if ((s->op == MTR_STEER_HARD || s->op == MTR_STEER_OFF) && !(isfinite(s->eps) && s->eps >= 0.0))
        return mtr_fail(MTR_EINVAL, "steering: eps %g is not a finite non-negative number", s->eps);
    for (uint32_t i = 0; i < s->n_target; i++) {
        if (s->target_layers[i] >= s->n_layers)
            return mtr_fail(MTR_EINVAL, "steering: target layer %u outside %u layers", s->target_layers[i], s->n_layers);
        if (i && s->target_layers[i] <= s->target_layers[i - 1])
            return mtr_fail(MTR_EINVAL, "steering: target layers not increasing");
    }
    for (uint32_t l = 0; l < s->n_layers; l++)
        if (s->layer_index[l] < 0 || (l && s->layer_index[l] <= s->layer_index[l - 1]))
            return mtr_fail(MTR_EINVAL, "steering: layer map not increasing at MoE layer %u", l);
    size_t n_nonzero = 0;
    for (size_t i = 0; i < (size_t)s->n_layers * s->n_experts; i++) {
        if (!isfinite(s->coef[i]))
            return mtr_fail(MTR_EINVAL, "steering: coefficient (%zu, %zu) is not finite", i / s->n_experts,
                            i % s->n_experts);
        n_nonzero += s->coef[i] != 0.0f;
    }
    if (n_nonzero != s->n_sel)
        return mtr_fail(MTR_EINVAL, "steering: %zu non-zero coefficients but %zu selected experts", n_nonzero, s->n_sel);
    uint32_t forced = 0, cur = UINT32_MAX;
    for (size_t i = 0; i < s->n_sel; i++) {
        const mtr_steer_expert *e = &s->experts[i];
        if (e->layer >= s->n_layers || e->expert >= s->n_experts)
            return mtr_fail(MTR_EINVAL, "steering: expert (%u, %u) outside %u layers x %u experts", e->layer,
                            e->expert, s->n_layers, s->n_experts);
        if (i && (e->layer < s->experts[i - 1].layer ||
                  (e->layer == s->experts[i - 1].layer && e->expert <= s->experts[i - 1].expert)))
            return mtr_fail(MTR_EINVAL, "steering: experts not sorted by (layer, expert) or repeated");
        if (!is_target(s, e->layer))
            return mtr_fail(MTR_EINVAL, "steering: expert (%u, %u) is in a layer that is not a target", e->layer,
                            e->expert);
        float c = s->coef[(size_t)e->layer * s->n_experts + e->expert];
        if (c == 0.0f)
            return mtr_fail(MTR_EINVAL, "steering: expert (%u, %u) has a zero coefficient", e->layer, e->expert);
        if (e->layer != cur) {
            cur = e->layer;
            forced = 0;
        }
        if (s->op == MTR_STEER_HARD && c > 0.0f && ++forced > s->top_k)
            return mtr_fail(MTR_EINVAL, "steering: layer %u forces more than top-k = %u experts (hard)", e->layer + 1,
                            s->top_k);
    }
    return 0;
}


/* Validate a steering file just read; the detail names the file it came from. A description that breaks the
 * rules is bad input data here (MTR_EFORMAT), where for mtr_steer_validate's callers it is a bad argument. */
static int validate_loaded(const mtr_steer *s, const char *path)
{
    int rc = mtr_steer_validate(s);
    if (rc) {
        char detail[1024];
        snprintf(detail, sizeof detail, "%s", mtr_errmsg());
        rc = mtr_fail(rc == MTR_EINVAL ? MTR_EFORMAT : rc, "%s: %s", path, detail);
    }
    return rc;
}

int mtr_steer_check_model(const mtr_steer *s, const mtr_model_info *m)
{
    if (s->model_id[0] && m->model_id[0] && strcmp(s->model_id, m->model_id))
        return mtr_fail(MTR_EMISMATCH, "steering file is for model '%s', not '%s'", s->model_id, m->model_id);
    if (s->n_layers != m->n_layers || s->n_experts != m->n_experts || s->top_k != m->top_k)
        return mtr_fail(MTR_EMISMATCH, "steering file has %u layers x %u experts, top-%u; the model %u x %u, top-%u",
                        s->n_layers, s->n_experts, s->top_k, m->n_layers, m->n_experts, m->top_k);
    for (uint32_t l = 0; l < s->n_layers; l++)
        if (s->layer_index[l] != m->layer_index[l])
            return mtr_fail(MTR_EMISMATCH, "steering file maps MoE layer %u to decoder layer %d, the model to %d", l,
                            s->layer_index[l], m->layer_index[l]);
    return 0;
}

/* ---- HDF5 ------------------------------------------------------------------------------------------------- */

static int set_f64(hid_t obj, const char *name, double v)
{
    int rc = 0;
    hid_t sp = H5Screate(H5S_SCALAR), a = H5I_INVALID_HID;
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    a = H5Acreate2(obj, name, H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, H5T_NATIVE_DOUBLE, &v) < 0) rc = mtr_fail(MTR_EHDF5, "cannot write attribute '%s'", name);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc;
}

static int write_dataset(hid_t f, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                         const void *data)
{
    int rc = 0;
    hid_t sp = H5Screate_simple(rank, dims, NULL), d = H5I_INVALID_HID;
    if (sp < 0) return mtr_fail(MTR_EHDF5, "cannot make the dataspace of '%s'", name);
    d = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    if (d < 0 || (n && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0))
        rc = mtr_fail(MTR_EHDF5, "cannot write dataset '%s'", name);
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    return rc;
}

/* Read dataset `name` of the expected rank into a new buffer of mtype elements; dims checked against want
 * (0 in want = any). */
static int read_dataset(void **out, hsize_t *dims, hid_t f, const char *name, hid_t mtype, size_t esize, int rank,
                        const hsize_t *want, const char *file)
{
    int rc = 0;
    hid_t d = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    void *buf = NULL;
    *out = NULL;
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0) return mtr_fail(MTR_EFORMAT, "%s: dataset '%s' missing", file, name);
    if ((rc = mtr_h5_check_object(f, name, file))) return rc;
    d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d >= 0 && (rc = mtr_h5_check_storage(d, name, file))) goto out_close;
    sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
    if (sp < 0 || H5Sget_simple_extent_ndims(sp) != rank) {
        rc = mtr_fail(MTR_EFORMAT, "%s: dataset '%s' is not %d-dimensional", file, name, rank);
        goto out_close;
    }
    H5Sget_simple_extent_dims(sp, dims, NULL);
    hsize_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (want[i] && dims[i] != want[i]) {
            rc = mtr_fail(MTR_EFORMAT, "%s: dataset '%s' has extent %llu in dimension %d, expected %llu", file, name,
                          (unsigned long long)dims[i], i, (unsigned long long)want[i]);
            goto out_close;
        }
        if (dims[i] > ((hsize_t)1 << 28)) {
            rc = mtr_fail(MTR_EFORMAT, "%s: dataset '%s' is implausibly large", file, name);
            goto out_close;
        }
        n *= dims[i];
    }
    buf = malloc((size_t)(n ? n : 1) * esize);
    if (!buf) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_close;
    }
    if (n && mtr_h5_dread(d, mtype, H5S_ALL, H5S_ALL, buf) < 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: cannot read dataset '%s'", file, name);
        goto out_close;
    }
    *out = buf;
    buf = NULL;
out_close:
    free(buf);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return rc;
}

static int write_h5(const mtr_steer *s, const char *path)
{
    int rc = 0;
    hid_t f = H5I_INVALID_HID;
    uint32_t *pairs = NULL;
    double *scores = NULL;
    mtr_h5_quiet();
    f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_EIO, "%s: cannot create", path);
    char created[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if ((rc = mtr_h5_set_str(f, MTR_A_FORMAT, MTR_STEER_FORMAT_NAME)) ||
        (rc = mtr_h5_set_u32(f, MTR_A_FORMAT_VERSION, MTR_STEER_FORMAT_VERSION)) ||
        (rc = mtr_h5_set_str(f, MTR_A_PRODUCER, "libmoetrace")) ||
        (rc = mtr_h5_set_str(f, MTR_A_PRODUCER_VERSION, MTR_VERSION_STRING)) ||
        (rc = mtr_h5_set_str(f, MTR_A_CREATED, created)) || (rc = mtr_h5_set_str(f, A_NAME, s->name)) ||
        (rc = mtr_h5_set_str(f, MTR_A_MODEL_ID, s->model_id)) ||
        (rc = mtr_h5_set_u32(f, MTR_A_N_LAYERS, s->n_layers)) ||
        (rc = mtr_h5_set_u32(f, MTR_A_N_EXPERTS, s->n_experts)) || (rc = mtr_h5_set_u32(f, MTR_A_TOP_K, s->top_k)) ||
        (rc = mtr_h5_set_i32v(f, MTR_A_LAYER_INDEX, s->layer_index, s->n_layers)) ||
        (rc = mtr_h5_set_str(f, A_OP, mtr_steer_op_name(s->op))) || (rc = set_f64(f, A_LAMBDA, s->lambda)) ||
        (rc = mtr_h5_set_str(f, A_EPS_MODE, mtr_steer_eps_name(s->eps_mode))) || (rc = set_f64(f, A_EPS, s->eps)) ||
        (rc = mtr_h5_set_u64(f, A_SEED, s->seed)) || (rc = mtr_h5_set_str(f, A_PROVENANCE, s->provenance)))
        goto out_close;
    pairs = malloc((s->n_sel * 2 + 1) * sizeof *pairs);
    scores = malloc((s->n_sel + 1) * sizeof *scores);
    if (!pairs || !scores) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_close;
    }
    for (size_t i = 0; i < s->n_sel; i++) {
        pairs[2 * i] = s->experts[i].layer;
        pairs[2 * i + 1] = s->experts[i].expert;
        scores[i] = s->experts[i].score;
    }
    hsize_t dt[1] = {s->n_target}, de[2] = {s->n_sel, 2}, ds[1] = {s->n_sel}, dc[2] = {s->n_layers, s->n_experts};
    if ((rc = write_dataset(f, D_TARGETS, H5T_STD_U32LE, H5T_NATIVE_UINT32, 1, dt, s->target_layers)) ||
        (rc = write_dataset(f, D_EXPERTS, H5T_STD_U32LE, H5T_NATIVE_UINT32, 2, de, pairs)) ||
        (rc = write_dataset(f, D_SCORES, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, ds, scores)) ||
        (rc = write_dataset(f, D_COEF, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dc, s->coef)))
        goto out_close;
out_close:
    free(pairs);
    free(scores);
    if (H5Fclose(f) < 0 && !rc) rc = mtr_fail(MTR_EIO, "%s: cannot close", path);
    if (rc && !strstr(mtr_errmsg(), path)) {
        char detail[1024];
        snprintf(detail, sizeof detail, "%s", mtr_errmsg());
        mtr_fail(rc, "%s: %s", path, detail);
    }
    return rc;
}

static int load_h5(mtr_steer **out, const char *path)
{
    int rc = 0;
    hid_t f = H5I_INVALID_HID;
    mtr_steer *s = NULL;
    char buf[MTR_MAX_NAME], *prov = NULL;
    uint64_t v64;
    uint32_t *targets = NULL, *pairs = NULL;
    double *scores = NULL;
    float *coef = NULL;
    *out = NULL;
    mtr_h5_quiet();
    if ((rc = mtr_h5_check_file(path))) return rc;
    f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return mtr_fail(MTR_EFORMAT, "%s: not an HDF5 file", path);
    /* the root group's header, attributes and local heap before any of them is read or a name looked up */
    if ((rc = mtr_h5_check_attrs(f, path)) || (rc = mtr_h5_get_str(f, MTR_A_FORMAT, buf, sizeof buf, path)))
        goto out_close;
    if (strcmp(buf, MTR_STEER_FORMAT_NAME)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: not a steering file (format '%s')", path, buf);
        goto out_close;
    }
    if ((rc = mtr_h5_get_u64(f, MTR_A_FORMAT_VERSION, &v64, path))) goto out_close;
    if (v64 != MTR_STEER_FORMAT_VERSION) {
        rc = mtr_fail(MTR_EVERSION, "%s: steering format version %llu (this library reads %d)", path,
                      (unsigned long long)v64, MTR_STEER_FORMAT_VERSION);
        goto out_close;
    }
    uint64_t nl, ne, k;
    if ((rc = mtr_h5_get_u64(f, MTR_A_N_LAYERS, &nl, path)) || (rc = mtr_h5_get_u64(f, MTR_A_N_EXPERTS, &ne, path)) ||
        (rc = mtr_h5_get_u64(f, MTR_A_TOP_K, &k, path)) || (rc = mtr_h5_get_str(f, A_OP, buf, sizeof buf, path)))
        goto out_close;
    mtr_steer_op op;
    if (mtr_steer_op_parse(&op, buf)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: unknown operation '%s'", path, buf);
        goto out_close;
    }
    if (nl > MTR_MAX_LAYERS || ne > MTR_MAX_EXPERTS || k > MTR_MAX_TOPK ||
        mtr_steer_create(&s, "", (uint32_t)nl, (uint32_t)ne, (uint32_t)k, op)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: bad dimensions (%llu layers, %llu experts, top-%llu)", path,
                      (unsigned long long)nl, (unsigned long long)ne, (unsigned long long)k);
        goto out_close;
    }
    if ((rc = mtr_h5_get_str(f, MTR_A_MODEL_ID, s->model_id, sizeof s->model_id, path)) ||
        (rc = mtr_h5_get_str(f, A_NAME, s->name, sizeof s->name, path)) ||
        (rc = mtr_h5_get_i32v(f, MTR_A_LAYER_INDEX, s->layer_index, s->n_layers, path)) ||
        (rc = mtr_h5_get_f64(f, A_LAMBDA, &s->lambda, path)) || (rc = mtr_h5_get_f64(f, A_EPS, &s->eps, path)) ||
        (rc = mtr_h5_get_u64(f, A_SEED, &s->seed, path)) ||
        (rc = mtr_h5_get_str(f, A_EPS_MODE, buf, sizeof buf, path)) ||
        (rc = mtr_h5_get_str_alloc(f, A_PROVENANCE, &prov, path)))
        goto out_close;
    if (mtr_steer_eps_parse(&s->eps_mode, buf)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: unknown eps mode '%s'", path, buf);
        goto out_close;
    }
    if (mtr_steer_set_provenance(s, prov)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: provenance is not a JSON object", path);
        goto out_close;
    }
    hsize_t dims[2], any1[1] = {0}, w2[2] = {0, 2}, wc[2] = {s->n_layers, s->n_experts};
    if ((rc = read_dataset((void **)&targets, dims, f, D_TARGETS, H5T_NATIVE_UINT32, 4, 1, any1, path))) goto out_close;
    size_t n_target = (size_t)dims[0];
    if ((rc = read_dataset((void **)&pairs, dims, f, D_EXPERTS, H5T_NATIVE_UINT32, 4, 2, w2, path))) goto out_close;
    size_t n_sel = (size_t)dims[0];
    hsize_t ws[1] = {n_sel};
    if (n_sel && (rc = read_dataset((void **)&scores, dims, f, D_SCORES, H5T_NATIVE_DOUBLE, 8, 1, ws, path)))
        goto out_close;
    if ((rc = read_dataset((void **)&coef, dims, f, D_COEF, H5T_NATIVE_FLOAT, 4, 2, wc, path))) goto out_close;
    for (size_t i = 0; i < n_target; i++)
        if (targets[i] >= s->n_layers || (i && targets[i] <= targets[i - 1])) {
            rc = mtr_fail(MTR_EFORMAT, "%s: target layers not increasing inside 0..%u", path, s->n_layers - 1);
            goto out_close;
        }
    s->target_layers = targets;
    s->n_target = (uint32_t)n_target;
    targets = NULL;
    s->experts = malloc((n_sel + 1) * sizeof *s->experts);
    if (!s->experts) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_close;
    }
    for (size_t i = 0; i < n_sel; i++)
        s->experts[i] = (mtr_steer_expert){pairs[2 * i], pairs[2 * i + 1], scores ? scores[i] : NAN};
    s->n_sel = n_sel;
    free(s->coef);
    s->coef = coef;
    coef = NULL;
    if ((rc = validate_loaded(s, path))) goto out_close;
    *out = s;
    s = NULL;
out_close:
    free(prov);
    free(targets);
    free(pairs);
    free(scores);
    free(coef);
    mtr_steer_destroy(s);
    H5Fclose(f);
    return rc;
}

/* ---- JSON twin -------------------------------------------------------------------------------------------- */

static json_t *to_json(const mtr_steer *s)
{
    json_t *root = json_object(), *targets = json_array(), *experts = json_array(), *scores = json_array();
    json_t *coef = json_array(), *lmap = json_array(), *prov = json_loads(s->provenance, 0, NULL);
    json_object_set_new(root, "format", json_string(MTR_STEER_FORMAT_NAME));
    json_object_set_new(root, "format_version", json_integer(MTR_STEER_FORMAT_VERSION));
    json_object_set_new(root, "producer", json_string("libmoetrace " MTR_VERSION_STRING));
    json_object_set_new(root, "name", json_string(s->name));
    json_object_set_new(root, "model_id", json_string(s->model_id));
    json_object_set_new(root, "n_layers", json_integer(s->n_layers));
    json_object_set_new(root, "n_experts", json_integer(s->n_experts));
    json_object_set_new(root, "top_k", json_integer(s->top_k));
    for (uint32_t l = 0; l < s->n_layers; l++) json_array_append_new(lmap, json_integer(s->layer_index[l]));
    json_object_set_new(root, "layer_index", lmap);
    json_object_set_new(root, "indexing", json_string("layers are 0-based MoE layer indices; experts 0-based"));
    json_object_set_new(root, "op", json_string(mtr_steer_op_name(s->op)));
    json_object_set_new(root, "lambda", json_real(s->lambda));
    json_object_set_new(root, "eps_mode", json_string(mtr_steer_eps_name(s->eps_mode)));
    json_object_set_new(root, "eps", json_real(s->eps));
    json_object_set_new(root, "seed", json_integer((json_int_t)s->seed));
    for (uint32_t i = 0; i < s->n_target; i++) json_array_append_new(targets, json_integer(s->target_layers[i]));
    json_object_set_new(root, "target_layers", targets);
    for (size_t i = 0; i < s->n_sel; i++) {
        json_t *p = json_array();
        json_array_append_new(p, json_integer(s->experts[i].layer));
        json_array_append_new(p, json_integer(s->experts[i].expert));
        json_array_append_new(experts, p);
        json_array_append_new(scores, isfinite(s->experts[i].score) ? json_real(s->experts[i].score) : json_null());
    }
    json_object_set_new(root, "experts", experts);
    json_object_set_new(root, "scores", scores);
    json_object_set_new(root, "provenance", prov ? prov : json_object());
    for (uint32_t l = 0; l < s->n_layers; l++) {
        json_t *row = json_array();
        for (uint32_t e = 0; e < s->n_experts; e++)
            json_array_append_new(row, json_real(s->coef[(size_t)l * s->n_experts + e]));
        json_array_append_new(coef, row);
    }
    json_object_set_new(root, "coef", coef);
    return root;
}

static int json_u32(uint32_t *out, json_t *o, const char *key, const char *path)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0xffffffffLL)
        return mtr_fail(MTR_EFORMAT, "%s: '%s' must be a non-negative integer", path, key);
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

static int json_num(double *out, json_t *o, const char *key, const char *path)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v)) return mtr_fail(MTR_EFORMAT, "%s: '%s' must be a number", path, key);
    *out = json_number_value(v);
    return 0;
}

static int load_json(mtr_steer **out, const char *path)
{
    int rc = 0;
    json_error_t err;
    mtr_steer *s = NULL;
    char *prov = NULL;
    json_t *root = json_load_file(path, 0, &err);
    *out = NULL;
    if (!root) return mtr_fail(MTR_EFORMAT, "%s:%d: invalid JSON: %s", path, err.line, err.text);
    json_t *fmt = json_object_get(root, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), MTR_STEER_FORMAT_NAME)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: not a steering file (format is not \"%s\")", path, MTR_STEER_FORMAT_NAME);
        goto out_free;
    }
    uint32_t ver, nl, ne, k;
    if ((rc = json_u32(&ver, root, "format_version", path))) goto out_free;
    if (ver != MTR_STEER_FORMAT_VERSION) {
        rc = mtr_fail(MTR_EVERSION, "%s: steering format version %u (this library reads %d)", path, ver,
                      MTR_STEER_FORMAT_VERSION);
        goto out_free;
    }
    if ((rc = json_u32(&nl, root, "n_layers", path)) || (rc = json_u32(&ne, root, "n_experts", path)) ||
        (rc = json_u32(&k, root, "top_k", path)))
        goto out_free;
    mtr_steer_op op;
    json_t *jop = json_object_get(root, "op");
    if (!json_is_string(jop) || mtr_steer_op_parse(&op, json_string_value(jop))) {
        rc = mtr_fail(MTR_EFORMAT, "%s: 'op' must be soft, hard, off or bias", path);
        goto out_free;
    }
    if (mtr_steer_create(&s, "", nl, ne, k, op)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: bad dimensions (%u layers, %u experts, top-%u)", path, nl, ne, k);
        goto out_free;
    }
    json_t *v;
    if (json_is_string(v = json_object_get(root, "model_id"))) snprintf(s->model_id, sizeof s->model_id, "%s", json_string_value(v));
    if (json_is_string(v = json_object_get(root, "name"))) snprintf(s->name, sizeof s->name, "%s", json_string_value(v));
    json_t *jeps = json_object_get(root, "eps_mode");
    if (!json_is_string(jeps) || mtr_steer_eps_parse(&s->eps_mode, json_string_value(jeps))) {
        rc = mtr_fail(MTR_EFORMAT, "%s: 'eps_mode' must be gaussian or fixed", path);
        goto out_free;
    }
    if ((rc = json_num(&s->lambda, root, "lambda", path)) || (rc = json_num(&s->eps, root, "eps", path))) goto out_free;
    v = json_object_get(root, "seed");
    s->seed = json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
    json_t *lmap = json_object_get(root, "layer_index");
    if (lmap) {
        if (!json_is_array(lmap) || json_array_size(lmap) != nl) {
            rc = mtr_fail(MTR_EFORMAT, "%s: 'layer_index' must list %u layers", path, nl);
            goto out_free;
        }
        for (uint32_t l = 0; l < nl; l++) s->layer_index[l] = (int32_t)json_integer_value(json_array_get(lmap, l));
    }
    json_t *jt = json_object_get(root, "target_layers"), *je = json_object_get(root, "experts");
    json_t *js = json_object_get(root, "scores"), *jc = json_object_get(root, "coef");
    if (!json_is_array(jt) || !json_is_array(je) || !json_is_array(jc) || json_array_size(jc) != nl) {
        rc = mtr_fail(MTR_EFORMAT, "%s: needs arrays target_layers, experts and coef (%u rows)", path, nl);
        goto out_free;
    }
    size_t i;
    json_t *x;
    json_array_foreach(jt, i, x) {
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= nl ||
            (rc = add_target(s, (uint32_t)json_integer_value(x)))) {
            rc = rc ? rc : mtr_fail(MTR_EFORMAT, "%s: target_layers[%zu] outside 0..%u", path, i, nl - 1);
            goto out_free;
        }
    }
    s->experts = malloc((json_array_size(je) + 1) * sizeof *s->experts);
    if (!s->experts) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    json_array_foreach(je, i, x) {
        json_t *jl = json_array_get(x, 0), *jx = json_array_get(x, 1), *sc = json_array_get(js, i);
        if (json_array_size(x) != 2 || !json_is_integer(jl) || !json_is_integer(jx) || json_integer_value(jl) < 0 ||
            json_integer_value(jx) < 0 || json_integer_value(jl) >= nl || json_integer_value(jx) >= ne) {
            rc = mtr_fail(MTR_EFORMAT, "%s: experts[%zu] is not [layer, expert] inside %u x %u", path, i, nl, ne);
            goto out_free;
        }
        s->experts[i] = (mtr_steer_expert){(uint32_t)json_integer_value(jl), (uint32_t)json_integer_value(jx),
                                           json_is_number(sc) ? json_number_value(sc) : NAN};
        s->n_sel++;
    }
    for (uint32_t l = 0; l < nl; l++) {
        json_t *row = json_array_get(jc, l);
        if (!json_is_array(row) || json_array_size(row) != ne) {
            rc = mtr_fail(MTR_EFORMAT, "%s: coef row %u does not have %u values", path, l, ne);
            goto out_free;
        }
        for (uint32_t e = 0; e < ne; e++) {
            json_t *c = json_array_get(row, e);
            if (!json_is_number(c)) {
                rc = mtr_fail(MTR_EFORMAT, "%s: coef[%u][%u] is not a number", path, l, e);
                goto out_free;
            }
            s->coef[(size_t)l * ne + e] = (float)json_number_value(c);
        }
    }
    json_t *jp = json_object_get(root, "provenance");
    prov = jp ? json_dumps(jp, JSON_COMPACT) : strdup("{}");
    if (!prov || mtr_steer_set_provenance(s, prov)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: provenance is not a JSON object", path);
        goto out_free;
    }
    if ((rc = validate_loaded(s, path))) goto out_free;
    *out = s;
    s = NULL;
out_free:
    free(prov);
    mtr_steer_destroy(s);
    json_decref(root);
    return rc;
}

/* ---- public I/O ------------------------------------------------------------------------------------------- */

static int dump_json(json_t *root, const char *path, size_t flags)
{
    if (!root) return mtr_fail(MTR_ENOMEM, "out of memory");
    int rc = json_dump_file(root, path, flags) == 0 ? 0 : mtr_fail(MTR_EIO, "%s: cannot write", path);
    json_decref(root);
    return rc;
}

int mtr_steer_write(const mtr_steer *s, const char *h5_path, const char *json_path)
{
    int rc = mtr_steer_validate(s);
    char twin[4200];
    if (rc) return rc;
    if (!json_path) {
        size_t n = strlen(h5_path);
        if (n > 3 && !strcmp(h5_path + n - 3, ".h5")) snprintf(twin, sizeof twin, "%.*s.json", (int)(n - 3), h5_path);
        else snprintf(twin, sizeof twin, "%s.json", h5_path);
        json_path = twin;
    }
    if ((rc = write_h5(s, h5_path))) return rc;
    return dump_json(to_json(s), json_path, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
}

int mtr_steer_load(mtr_steer **out, const char *path)
{
    unsigned char sig[8] = {0};
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return mtr_fail(errno == ENOENT ? MTR_ENOTFOUND : MTR_EIO, "%s: %s", path, strerror(errno));
    size_t n = fread(sig, 1, sizeof sig, f);
    fclose(f);
    static const unsigned char h5sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    if (n == 8 && !memcmp(sig, h5sig, 8)) return load_h5(out, path);
    return load_json(out, path);
}

/* ---- applying --------------------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* one N(0, 1) draw by Box-Muller from two 53-bit uniforms in (0, 1] and [0, 1) */
static double std_normal(uint64_t *x)
{
    double u1 = ((double)(splitmix64(x) >> 11) + 1.0) / 9007199254740992.0;
    double u2 = (double)(splitmix64(x) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void mtr_steer_apply(const mtr_steer *s, uint32_t layer, float *z, uint64_t *rng)
{
    if (layer >= s->n_layers || !is_target(s, layer)) return;
    const float *c = s->coef + (size_t)layer * s->n_experts;
    uint32_t E = s->n_experts;
    double mx = -INFINITY, mn = INFINITY, sum = 0.0, sq = 0.0;
    for (uint32_t e = 0; e < E; e++) {
        mx = fmax(mx, z[e]);
        mn = fmin(mn, z[e]);
        sum += z[e];
    }
    double mean = sum / E;
    for (uint32_t e = 0; e < E; e++) sq += (z[e] - mean) * (z[e] - mean);
    double sd = sqrt(sq / E);
    for (uint32_t e = 0; e < E; e++) {
        if (c[e] == 0.0f) continue;
        /* |eps|, and at least one float step: a forced expert must end strictly above the maximum (a deactivated
         * one strictly below the minimum), or a tie with the original extreme could keep it out of the top-k */
        double eps = fabs(s->eps_mode == MTR_STEER_EPS_FIXED ? s->eps : rng ? s->eps * std_normal(rng) : 0.0);
        float up = (float)(mx + eps), down = (float)(mn - eps);
        if (!(up > (float)mx)) up = nextafterf((float)mx, INFINITY);
        if (!(down < (float)mn)) down = nextafterf((float)mn, -INFINITY);
        switch (s->op) {
        case MTR_STEER_SOFT: z[e] = (float)(z[e] + c[e] * sd); break;
        case MTR_STEER_HARD: z[e] = c[e] > 0.0f ? up : down; break;
        case MTR_STEER_OFF: z[e] = c[e] < 0.0f ? down : up; break;
        case MTR_STEER_BIAS: z[e] = z[e] + c[e]; break;
        default: break;
        }
    }
}

/* ---- exports ---------------------------------------------------------------------------------------------- */

/* EasySteer's moe_router modes (ZJU-REAL/EasySteer-vllm-v1, vllm/steer_vectors/algorithms/moe_router.py):
 * "soft" adds lambda * z.std(dim=-1) — torch's default std, Bessel-corrected (divisor n - 1) — to the listed
 * experts; "activate" / "deactivate" set them to max / min of log_softmax(z) +/- epsilon (a per-token shift of
 * z, so the same routing as max(z) + eps / min(z) - eps here). moetrace's soft rule multiplies the population std
 * (divisor n), so the exported lambda is coef * sqrt((n - 1) / n): the same z'. */
int mtr_steer_export_easysteer(const mtr_steer *s, const char *path, bool *lossy)
{
    int rc = mtr_steer_validate(s);
    if (rc) return rc;
    if (s->op == MTR_STEER_BIAS)
        return mtr_fail(MTR_EINVAL, "%s: op bias (z + b) has no EasySteer moe_router mode (soft adds lambda * std(z), "
                                    "activate/deactivate force experts in or out)", path);
    bool soft = s->op == MTR_STEER_SOFT;
    double std_ratio = sqrt(((double)s->n_experts - 1.0) / (double)s->n_experts);
    if (lossy) *lossy = !soft && s->eps_mode == MTR_STEER_EPS_GAUSSIAN;
    json_t *root = json_object(), *cfg = json_object();
    for (uint32_t t = 0; t < s->n_target && !rc; t++) {
        uint32_t l = s->target_layers[t];
        json_t *pos = json_array(), *neg = json_array();
        float c0 = 0.0f;
        for (size_t i = 0; i < s->n_sel; i++) {
            if (s->experts[i].layer != l) continue;
            float c = s->coef[(size_t)l * s->n_experts + s->experts[i].expert];
            if (soft && c0 != 0.0f && c != c0)
                rc = mtr_fail(MTR_EINVAL, "%s: MoE layer %u has soft coefficients %g and %g: EasySteer's soft mode "
                                          "takes one lambda per layer", path, l, (double)c0, (double)c);
            if (c0 == 0.0f) c0 = c;
            json_array_append_new(soft || c > 0.0f ? pos : neg, json_integer(s->experts[i].expert));
        }
        json_t *lc = json_object();
        if (soft && json_array_size(pos)) {
            json_object_set_new(lc, "mode", json_string("soft"));
            json_object_set_new(lc, "expert_ids", pos);
            json_object_set_new(lc, "lambda", json_real((double)c0 * std_ratio));
            json_decref(neg);
        } else if (json_array_size(pos) && json_array_size(neg)) {
            json_object_set_new(lc, "mode", json_string("activate"));
            json_object_set_new(lc, "activate_ids", pos);
            json_object_set_new(lc, "deactivate_ids", neg);
            json_object_set_new(lc, "epsilon", json_real(s->eps));
        } else if (json_array_size(pos) || json_array_size(neg)) {
            bool act = json_array_size(pos) > 0;
            json_object_set_new(lc, "mode", json_string(act ? "activate" : "deactivate"));
            json_object_set_new(lc, "expert_ids", act ? pos : neg);
            json_object_set_new(lc, "epsilon", json_real(s->eps));
            json_decref(act ? neg : pos);
        } else {
            json_decref(pos);
            json_decref(neg);
            json_decref(lc);
            continue;
        }
        char key[16];
        snprintf(key, sizeof key, "%d", s->layer_index[l]);
        json_object_set_new(cfg, key, lc);
    }
    if (rc) {
        json_decref(cfg);
        json_decref(root);
        return rc;
    }
    json_object_set_new(root, "layer_configs", cfg);
    /* ignored by EasySteer's loader (it reads layer_configs only): where the file came from */
    json_t *m = json_object();
    json_object_set_new(m, "source", json_string("moetrace steering file (traces/STEERING.md), EasySteer export"));
    json_object_set_new(m, "name", json_string(s->name));
    json_object_set_new(m, "model_id", json_string(s->model_id));
    json_object_set_new(m, "op", json_string(mtr_steer_op_name(s->op)));
    json_object_set_new(m, "layer_keys", json_string("0-based decoder layers (layer_index of the MoE layers)"));
    if (soft) {
        json_object_set_new(m, "lambda", json_real(s->lambda));
        json_object_set_new(m, "lambda_conversion",
                            json_string("moetrace adds lambda * population std(z); EasySteer's soft mode multiplies "
                                        "torch.std (divisor n-1): exported lambda = lambda * sqrt((n_experts-1)/n_experts)"));
    } else {
        json_object_set_new(m, "eps_mode", json_string(mtr_steer_eps_name(s->eps_mode)));
        json_object_set_new(m, "eps", json_real(s->eps));
        if (s->eps_mode == MTR_STEER_EPS_GAUSSIAN)
            json_object_set_new(m, "epsilon_note", json_string("moetrace draws |eps| ~ |N(0, eps^2)| per forced expert "
                                                               "and token; EasySteer takes a fixed epsilon: eps written"));
    }
    json_object_set_new(root, "moetrace", m);
    return dump_json(root, path, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
}

int mtr_steer_export_flat(const mtr_steer *s, const char *bin_path, const char *json_path)
{
    int rc = mtr_steer_validate(s);
    if (rc) return rc;
    size_t n = (size_t)s->n_layers * s->n_experts;
    FILE *f = fopen(bin_path, "wb");
    if (!f) return mtr_fail(MTR_EIO, "%s: %s", bin_path, strerror(errno));
    for (size_t i = 0; i < n && !rc; i++) {
        uint32_t u;
        unsigned char b[4];
        memcpy(&u, &s->coef[i], 4);
        b[0] = (unsigned char)u;
        b[1] = (unsigned char)(u >> 8);
        b[2] = (unsigned char)(u >> 16);
        b[3] = (unsigned char)(u >> 24);
        if (fwrite(b, 1, 4, f) != 4) rc = mtr_fail(MTR_EIO, "%s: short write", bin_path);
    }
    if (fclose(f) != 0 && !rc) rc = mtr_fail(MTR_EIO, "%s: cannot close", bin_path);
    if (rc) return rc;
    json_t *root = json_object(), *shape = json_array(), *lmap = json_array(), *targets = json_array();
    const char *slash = strrchr(bin_path, '/');
    json_object_set_new(root, "format", json_string(MTR_STEER_FLAT_FORMAT_NAME));
    json_object_set_new(root, "format_version", json_integer(MTR_STEER_FORMAT_VERSION));
    json_object_set_new(root, "data_file", json_string(slash ? slash + 1 : bin_path));
    json_object_set_new(root, "dtype", json_string("float32"));
    json_object_set_new(root, "byte_order", json_string("little"));
    json_array_append_new(shape, json_integer(s->n_layers));
    json_array_append_new(shape, json_integer(s->n_experts));
    json_object_set_new(root, "shape", shape);
    json_object_set_new(root, "order", json_string("row-major (layer, expert); layers 0-based MoE layers"));
    json_object_set_new(root, "meaning",
                        json_string(s->op == MTR_STEER_SOFT   ? "z[e] += coef[l][e] * std(z)"
                                    : s->op == MTR_STEER_BIAS ? "z[e] += coef[l][e]"
                                                              : "coef > 0: z[e] = max(z) + eps; coef < 0: z[e] = min(z) - eps"));
    json_object_set_new(root, "name", json_string(s->name));
    json_object_set_new(root, "model_id", json_string(s->model_id));
    json_object_set_new(root, "top_k", json_integer(s->top_k));
    json_object_set_new(root, "op", json_string(mtr_steer_op_name(s->op)));
    json_object_set_new(root, "lambda", json_real(s->lambda));
    json_object_set_new(root, "eps_mode", json_string(mtr_steer_eps_name(s->eps_mode)));
    json_object_set_new(root, "eps", json_real(s->eps));
    json_object_set_new(root, "seed", json_integer((json_int_t)s->seed));
    for (uint32_t l = 0; l < s->n_layers; l++) json_array_append_new(lmap, json_integer(s->layer_index[l]));
    json_object_set_new(root, "layer_index", lmap);
    for (uint32_t i = 0; i < s->n_target; i++) json_array_append_new(targets, json_integer(s->target_layers[i]));
    json_object_set_new(root, "target_layers", targets);
    json_t *prov = json_loads(s->provenance, 0, NULL);
    json_object_set_new(root, "provenance", prov ? prov : json_object());
    return dump_json(root, json_path, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
}

uint64_t mtr_steer_layer_seed(uint64_t seed, uint32_t layer)
{
    return seed ^ ((uint64_t)(layer + 1) * 0x9e3779b97f4a7c15ULL);
}
