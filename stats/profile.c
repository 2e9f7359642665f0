/* profile.c — model profiles (config/models/NAME.json): dimensions, router semantics and the paper's middle
 * band (1-based inclusive), and where the configuration directory is. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "stats_internal.h"

static bool has_file(const char *dir, const char *name)
{
    char p[PATH_MAX + 64];
    if (snprintf(p, sizeof p, "%s/%s", dir, name) >= (int)sizeof p) return false;
    return access(p, R_OK) == 0;
}

void mtr_stats_config_dir(char *buf, size_t cap)
{
    const char *env = getenv("MOETRACE_CONFIG");
    if (env && *env) {
        snprintf(buf, cap, "%s", env);
        return;
    }
    char self[PATH_MAX], cand[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            static const char *const rel[] = {"../config", "../share/moetrace"};
            for (size_t i = 0; i < 2; i++) {
                snprintf(cand, sizeof cand, "%s/%s", self, rel[i]);
                if (has_file(cand, "languages.tsv")) {
                    snprintf(buf, cap, "%s", cand);
                    return;
                }
            }
        }
    }
    snprintf(buf, cap, "config");
}

static int get_u32(uint32_t *out, json_t *o, const char *key, const char *path, bool required)
{
    json_t *v = json_object_get(o, key);
    if (!v && !required) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0xffffffffLL)
        return mtr_fail(MTR_EFORMAT, "%s: '%s' must be a non-negative integer", path, key);
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

static void get_str(char *dst, size_t cap, json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_string(v)) snprintf(dst, cap, "%s", json_string_value(v));
}

int mtr_profile_load(mtr_profile *out, const char *name_or_path)
{
    int rc = 0;
    json_t *root = NULL;
    json_error_t jerr;
    memset(out, 0, sizeof *out);
    size_t ln = strlen(name_or_path);
    if (strchr(name_or_path, '/') || (ln > 5 && !strcmp(name_or_path + ln - 5, ".json"))) {
        snprintf(out->path, sizeof out->path, "%s", name_or_path);
    } else {
        char dir[PATH_MAX];
        mtr_stats_config_dir(dir, sizeof dir);
        if (snprintf(out->path, sizeof out->path, "%s/models/%s.json", dir, name_or_path) >= (int)sizeof out->path)
            return mtr_fail(MTR_EINVAL, "model profile name '%s' is too long", name_or_path);
    }
    const char *path = out->path;
    if (access(path, R_OK) != 0) return mtr_fail(MTR_ENOTFOUND, "%s: no such model profile", path);
    root = json_load_file(path, 0, &jerr);
    if (!root) return mtr_fail(MTR_EFORMAT, "%s:%d: invalid JSON: %s", path, jerr.line, jerr.text);
    if (!json_is_object(root)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: not a JSON object", path);
        goto out_free;
    }
    get_str(out->name, sizeof out->name, root, "name");
    get_str(out->model_id, sizeof out->model_id, root, "model_id");
    get_str(out->model_type, sizeof out->model_type, root, "model_type");
    if ((rc = get_u32(&out->n_layers, root, "n_layers", path, true)) ||
        (rc = get_u32(&out->n_experts, root, "n_experts", path, true)) ||
        (rc = get_u32(&out->top_k, root, "top_k", path, true)))
        goto out_free;
    if (!out->model_id[0]) {
        rc = mtr_fail(MTR_EFORMAT, "%s: 'model_id' missing", path);
        goto out_free;
    }
    if (out->n_layers == 0 || out->n_layers > MTR_MAX_LAYERS || out->n_experts == 0 ||
        out->n_experts > MTR_MAX_EXPERTS || out->top_k == 0 || out->top_k > out->n_experts ||
        out->top_k > MTR_MAX_TOPK) {
        rc = mtr_fail(MTR_EFORMAT, "%s: inconsistent dimensions (%u layers, %u experts, top-%u)", path,
                            out->n_layers, out->n_experts, out->top_k);
        goto out_free;
    }
    json_t *router = json_object_get(root, "router");
    if (json_is_object(router)) {
        get_str(out->score_fn, sizeof out->score_fn, router, "score_fn");
        get_str(out->routing, sizeof out->routing, router, "note");
        out->renormalize = json_is_true(json_object_get(router, "renormalize"));
        out->router_bias = json_is_true(json_object_get(router, "router_bias"));
    }
    mtr_score_fn sf;
    if (out->score_fn[0] && mtr_score_fn_parse(&sf, out->score_fn) != 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: router.score_fn '%s' is not softmax, sigmoid, topk_softmax or sparsemixer",
                      path, out->score_fn);
        goto out_free;
    }
    json_t *band = json_object_get(root, "middle_band");
    if (json_is_object(band)) {
        if ((rc = get_u32(&out->band_first, band, "first", path, true)) ||
            (rc = get_u32(&out->band_last, band, "last", path, true)))
            goto out_free;
        get_str(out->band_source, sizeof out->band_source, band, "source");
        if (out->band_first < 1 || out->band_first > out->band_last || out->band_last > out->n_layers) {
            rc = mtr_fail(MTR_EFORMAT, "%s: middle_band %u-%u is not inside layers 1-%u", path, out->band_first,
                                out->band_last, out->n_layers);
            goto out_free;
        }
    } else if (band && !json_is_null(band)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: middle_band must be an object {first, last} or null", path);
        goto out_free;
    }
    if (!out->name[0] && snprintf(out->name, sizeof out->name, "%s", out->model_id) >= (int)sizeof out->name)
        out->name[sizeof out->name - 1] = '\0';
out_free:
    json_decref(root);
    return rc;
}
