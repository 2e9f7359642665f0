/* model.c — loading a Hugging Face MoE checkpoint: config.json into mtr_model_config, the safetensors weights
 * bound to each layer with their shapes checked against the config, and the rotary frequencies (default, linear,
 * dynamic, yarn and llama3 scaling as transformers' modeling_rope_utils computes them). */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

static const char *const arch_names[] = {
#define MTR_X_STR(name, str) str,
    MTR_ARCH_LIST(MTR_X_STR)
#undef MTR_X_STR
};

/* ---- config.json ----------------------------------------------------------------------------------------- */

typedef struct {
    json_t *root;
    const char *path;
    int rc;
} cfg_reader;

/* Integer field; def < 0 means required. */
static uint32_t get_u32(cfg_reader *r, const char *key, int64_t def, uint32_t lo, uint32_t hi)
{
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) {
        if (def < 0 && !r->rc) r->rc = mtr_fail(MTR_EFORMAT, "%s: missing \"%s\"", r->path, key);
        return def < 0 ? 0 : (uint32_t)def;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        if (!r->rc)
            r->rc = mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be an integer in [%u, %u]", r->path, key, lo, hi);
        return lo;
    }
    return (uint32_t)json_integer_value(v);
}

static double get_num(json_t *obj, cfg_reader *r, const char *key, double def, bool positive)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || (positive && json_number_value(v) <= 0)) {
        if (!r->rc) r->rc = mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be a %snumber", r->path, key,
                                     positive ? "positive " : "");
        return def;
    }
    return json_number_value(v);
}

static bool get_bool(cfg_reader *r, const char *key, bool def)
{
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_boolean(v)) {
        if (!r->rc) r->rc = mtr_fail(MTR_EFORMAT, "%s: \"%s\" must be true or false", r->path, key);
        return def;
    }
    return json_is_true(v);
}

static int32_t get_token_id(cfg_reader *r, const char *key)
{
    json_t *v = json_object_get(r->root, key);
    if (json_is_array(v)) v = json_array_get(v, 0); /* some configs list several eos ids: the first is used */
    return json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < INT32_MAX
               ? (int32_t)json_integer_value(v)
               : -1;
}

static int parse_rope(mtr_model_config *c, cfg_reader *r)
{
    c->rope_type = MTR_ROPE_DEFAULT;
    c->rope_factor = 1;
    c->rope_attention_factor = 1;
    c->rope_orig_max_pos = c->max_position_embeddings;
    json_t *rs = json_object_get(r->root, "rope_scaling");
    if (!rs || json_is_null(rs)) return r->rc;
    if (!json_is_object(rs)) return mtr_fail(MTR_EFORMAT, "%s: \"rope_scaling\" is not an object", r->path);
    json_t *jt = json_object_get(rs, "rope_type");
    if (!jt) jt = json_object_get(rs, "type");
    const char *t = json_string_value(jt);
    if (!t) return mtr_fail(MTR_EFORMAT, "%s: rope_scaling has no \"rope_type\"", r->path);
    if (strcmp(t, "default") == 0) return r->rc;
    if (strcmp(t, "longrope") == 0) return mtr_longrope_config(c, rs, r->root, r->path);
    c->rope_factor = get_num(rs, r, "factor", NAN, true);
    if (!isfinite(c->rope_factor) && !r->rc)
        r->rc = mtr_fail(MTR_EFORMAT, "%s: rope_scaling \"%s\" needs a positive \"factor\"", r->path, t);
    c->rope_orig_max_pos = get_num(rs, r, "original_max_position_embeddings", c->max_position_embeddings, true);
    if (strcmp(t, "linear") == 0) c->rope_type = MTR_ROPE_LINEAR;
    else if (strcmp(t, "dynamic") == 0) c->rope_type = MTR_ROPE_DYNAMIC;
    else if (strcmp(t, "yarn") == 0) {
        c->rope_type = MTR_ROPE_YARN;
        c->rope_beta_fast = get_num(rs, r, "beta_fast", 32, true);
        c->rope_beta_slow = get_num(rs, r, "beta_slow", 1, true);
        json_t *tr = json_object_get(rs, "truncate");
        if (tr && !json_is_boolean(tr) && !r->rc)
            r->rc = mtr_fail(MTR_EFORMAT, "%s: rope_scaling \"truncate\" is not true or false", r->path);
        c->rope_yarn_truncate = !json_is_false(tr);
        double mscale = get_num(rs, r, "mscale", 0, false), mscale_all = get_num(rs, r, "mscale_all_dim", 0, false);
        /* with original_max_position_embeddings given, transformers (>= 4.48, _compute_yarn_parameters) scales by
         * max_position_embeddings / original, not by "factor", both in the frequencies and the attention factor */
        if (json_object_get(rs, "original_max_position_embeddings") && c->rope_orig_max_pos > 0)
            c->rope_factor = (double)c->max_position_embeddings / c->rope_orig_max_pos;
        double f = c->rope_factor;
#define YARN_MSCALE(scale, m) ((scale) <= 1 ? 1.0 : 0.1 * (m) * log(scale) + 1.0)
        double af = get_num(rs, r, "attention_factor", NAN, true);
        if (isfinite(af)) c->rope_attention_factor = af;
        else if (mscale != 0 && mscale_all != 0)
            c->rope_attention_factor = YARN_MSCALE(f, mscale) / YARN_MSCALE(f, mscale_all);
        else c->rope_attention_factor = YARN_MSCALE(f, 1.0);
#undef YARN_MSCALE
    } else if (strcmp(t, "llama3") == 0) {
        c->rope_type = MTR_ROPE_LLAMA3;
        c->rope_low_freq_factor = get_num(rs, r, "low_freq_factor", NAN, true);
        c->rope_high_freq_factor = get_num(rs, r, "high_freq_factor", NAN, true);
        if ((!isfinite(c->rope_low_freq_factor) || !isfinite(c->rope_high_freq_factor) ||
             c->rope_high_freq_factor <= c->rope_low_freq_factor) && !r->rc)
            r->rc = mtr_fail(MTR_EFORMAT, "%s: rope_scaling llama3 needs low_freq_factor < high_freq_factor", r->path);
    } else
        return mtr_fail(MTR_EFORMAT, "%s: rope_scaling type \"%s\" is not supported (default, linear, dynamic, "
                        "yarn, llama3, longrope)", r->path, t);
    return r->rc;
}

static int parse_config(mtr_model_config *c, const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        FILE *f = fopen(path, "r");
        if (!f) return mtr_fail(MTR_ENOTFOUND, "%s: cannot open: %s", path, strerror(errno));
        fclose(f);
        return mtr_fail(MTR_EFORMAT, "%s: not valid JSON: %s (line %d)", path, jerr.text, jerr.line);
    }
    cfg_reader r = {root, path, 0};
    int rc = 0;
    uint32_t sparse_step = 1;
    json_t *mlp_only = NULL;
    if (!json_is_object(root)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (!mt) {
        rc = mtr_fail(MTR_EFORMAT, "%s: missing \"model_type\"", path);
        goto done;
    }
    int arch = -1;
    for (int i = 0; i < MTR_ARCH_COUNT; i++)
        if (strcmp(mt, arch_names[i]) == 0) arch = i;
    if (arch < 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: model_type \"%s\" is not supported (qwen3_moe, olmoe, mixtral, qwen2_moe, "
                      "gpt_oss, phimoe, deepseek_v2)",
                      path, mt);
        goto done;
    }
    c->arch = (mtr_arch)arch;
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    const char *nop = json_string_value(json_object_get(root, "_name_or_path"));
    if (nop && *nop) snprintf(c->name_or_path, sizeof c->name_or_path, "%s", nop);
    else {
        const char *base = strrchr(dir, '/');
        base = base && base[1] ? base + 1 : dir;
        snprintf(c->name_or_path, sizeof c->name_or_path, "%s", base);
    }
    const char *td = json_string_value(json_object_get(root, "torch_dtype"));
    if (!td) td = json_string_value(json_object_get(root, "dtype"));
    if (!td || strcmp(td, "float32") == 0) c->dtype = MTR_DTYPE_F32;
    else if (strcmp(td, "bfloat16") == 0) c->dtype = MTR_DTYPE_BF16;
    else if (strcmp(td, "float16") == 0) c->dtype = MTR_DTYPE_F16;
    else {
        rc = mtr_fail(MTR_EFORMAT, "%s: torch_dtype \"%s\" is not supported (float32, bfloat16, float16)", path, td);
        goto done;
    }
    const uint32_t big = 1u << 24;
    c->vocab_size = get_u32(&r, "vocab_size", -1, 1, 1u << 22);
    c->hidden_size = get_u32(&r, "hidden_size", -1, 1, 1u << 16);
    c->n_layers = get_u32(&r, "num_hidden_layers", -1, 1, MTR_MAX_LAYERS);
    c->n_heads = get_u32(&r, "num_attention_heads", -1, 1, 4096);
    c->n_kv_heads = get_u32(&r, "num_key_value_heads", c->n_heads, 1, 4096);
    if (r.rc) goto parsed;
    c->head_dim = get_u32(&r, "head_dim", c->hidden_size / c->n_heads, 2, 4096);
    c->max_position_embeddings = get_u32(&r, "max_position_embeddings", 4096, 1, 1u << 30);
    c->rms_eps = get_num(root, &r, "rms_norm_eps", 1e-6, true);
    c->rope_theta = get_num(root, &r, "rope_theta", 10000, true);
    c->tie_word_embeddings = get_bool(&r, "tie_word_embeddings", false);
    c->bos_token_id = get_token_id(&r, "bos_token_id");
    c->eos_token_id = get_token_id(&r, "eos_token_id");
    c->top_k = get_u32(&r, "num_experts_per_tok", -1, 1, MTR_MAX_TOPK);
    switch (c->arch) {
    case MTR_ARCH_QWEN3_MOE:
    case MTR_ARCH_QWEN2_MOE:
        c->n_experts = get_u32(&r, "num_experts", -1, 1, MTR_MAX_EXPERTS);
        c->moe_intermediate_size = get_u32(&r, "moe_intermediate_size", -1, 1, big);
        c->intermediate_size = get_u32(&r, "intermediate_size", 0, 0, big);
        c->norm_topk_prob = get_bool(&r, "norm_topk_prob", false);
        sparse_step = get_u32(&r, "decoder_sparse_step", 1, 1, MTR_MAX_LAYERS);
        mlp_only = json_object_get(root, "mlp_only_layers");
        if (c->arch == MTR_ARCH_QWEN2_MOE) {
            c->shared_expert_intermediate_size = get_u32(&r, "shared_expert_intermediate_size", 0, 0, big);
            c->qkv_bias = get_bool(&r, "qkv_bias", true);
        } else {
            c->qkv_bias = c->o_bias = get_bool(&r, "attention_bias", false);
        }
        if (get_bool(&r, "use_sliding_window", false) && !r.rc)
            r.rc = mtr_fail(MTR_EFORMAT, "%s: use_sliding_window true is not supported for %s", path, mt);
        break;
    case MTR_ARCH_OLMOE:
        c->n_experts = get_u32(&r, "num_experts", -1, 1, MTR_MAX_EXPERTS);
        c->moe_intermediate_size = get_u32(&r, "intermediate_size", -1, 1, big);
        c->norm_topk_prob = get_bool(&r, "norm_topk_prob", false);
        c->qkv_bias = c->o_bias = get_bool(&r, "attention_bias", false);
        c->clip_qkv = (float)get_num(root, &r, "clip_qkv", 0, true);
        break;
    case MTR_ARCH_MIXTRAL:
        c->n_experts = get_u32(&r, "num_local_experts", -1, 1, MTR_MAX_EXPERTS);
        c->moe_intermediate_size = get_u32(&r, "intermediate_size", -1, 1, big);
        c->norm_topk_prob = true;
        c->sliding_window = get_u32(&r, "sliding_window", 0, 0, 1u << 30);
        break;
    case MTR_ARCH_GPT_OSS:
        c->n_experts = get_u32(&r, "num_local_experts", -1, 1, MTR_MAX_EXPERTS);
        c->moe_intermediate_size = get_u32(&r, "intermediate_size", -1, 1, big);
        c->qkv_bias = c->o_bias = get_bool(&r, "attention_bias", true);
        c->sliding_window = get_u32(&r, "sliding_window", 0, 0, 1u << 30);
        c->dtype_implicit = !json_object_get(root, "torch_dtype") && !json_object_get(root, "dtype");
        if (!r.rc) r.rc = mtr_gptoss_config(c, root, path);
        break;
    case MTR_ARCH_PHIMOE:
        if (!r.rc) r.rc = mtr_phimoe_config(c, root, path);
        break;
    case MTR_ARCH_DEEPSEEK_V2:
        if (!r.rc) r.rc = mtr_deepseek_config(c, root, path);
        break;
    default: break;
    }
parsed:
    if (r.rc) {
        rc = r.rc;
        goto done;
    }
    if (c->n_heads % c->n_kv_heads) {
        rc = mtr_fail(MTR_EFORMAT, "%s: num_attention_heads %u is not a multiple of num_key_value_heads %u", path,
                      c->n_heads, c->n_kv_heads);
        goto done;
    }
    if (c->head_dim % 2) {
        rc = mtr_fail(MTR_EFORMAT, "%s: head_dim %u is odd (rotary embedding needs pairs)", path, c->head_dim);
        goto done;
    }
    if (c->top_k > c->n_experts) {
        rc = mtr_fail(MTR_EFORMAT, "%s: num_experts_per_tok %u exceeds the %u experts", path, c->top_k, c->n_experts);
        goto done;
    }
    if ((rc = parse_rope(c, &r))) goto done;
    c->is_moe = calloc(c->n_layers, sizeof *c->is_moe);
    c->moe_layer_index = calloc(c->n_layers, sizeof *c->moe_layer_index);
    if (!c->is_moe || !c->moe_layer_index) {
        rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (uint32_t l = 0; l < c->n_layers; l++)
        c->is_moe[l] = c->arch == MTR_ARCH_DEEPSEEK_V2 ? l >= c->first_k_dense_replace && l % c->moe_layer_freq == 0
                                                       : (l + 1) % sparse_step == 0;
    if (mlp_only && !json_is_null(mlp_only)) {
        if (!json_is_array(mlp_only)) {
            rc = mtr_fail(MTR_EFORMAT, "%s: \"mlp_only_layers\" is not a list", path);
            goto done;
        }
        for (size_t i = 0; i < json_array_size(mlp_only); i++) {
            json_t *x = json_array_get(mlp_only, i);
            if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= c->n_layers) {
                rc = mtr_fail(MTR_EFORMAT, "%s: mlp_only_layers[%zu] is not a layer index below %u", path, i,
                              c->n_layers);
                goto done;
            }
            c->is_moe[json_integer_value(x)] = false;
        }
    }
    for (uint32_t l = 0; l < c->n_layers; l++)
        if (c->is_moe[l]) c->moe_layer_index[c->n_moe_layers++] = (int32_t)l;
    if (c->n_moe_layers == 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: no layer is a mixture-of-experts layer", path);
        goto done;
    }
    if (c->n_moe_layers < c->n_layers && c->intermediate_size == 0) {
        rc = mtr_fail(MTR_EFORMAT, "%s: dense layers need \"intermediate_size\"", path);
        goto done;
    }
done:
    json_decref(root);
    return rc;
}

/* ---- rotary frequencies ---------------------------------------------------------------------------------- */

static void rope_frequencies(mtr_model *m)
{
    const mtr_model_config *c = &m->cfg;
    uint32_t half = c->head_dim / 2, dim = c->head_dim;
    double base = c->rope_theta;
    m->attn_factor = (float)c->rope_attention_factor;
    for (uint32_t i = 0; i < half; i++) {
        /* transformers builds the exponent as float32 arange(0, dim, 2) / dim */
        float expo = (float)(2 * i) / (float)dim;
        double inv = 1.0 / pow(base, (double)expo);
        switch (c->rope_type) {
        case MTR_ROPE_LINEAR: inv /= c->rope_factor; break;
        case MTR_ROPE_YARN: {
            double orig = c->rope_orig_max_pos;
            double lo = dim * log(orig / (c->rope_beta_fast * 2 * M_PI)) / (2 * log(base));
            double hi = dim * log(orig / (c->rope_beta_slow * 2 * M_PI)) / (2 * log(base));
            if (c->rope_yarn_truncate) {
                lo = floor(lo);
                hi = ceil(hi);
            }
            if (lo < 0) lo = 0;
            if (hi > dim - 1) hi = dim - 1;
            if (lo == hi) hi += 0.001;
            double ramp = ((double)i - lo) / (hi - lo);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double extrap = 1 - ramp;
            inv = inv / c->rope_factor * (1 - extrap) + inv * extrap;
            break;
        }
        case MTR_ROPE_LLAMA3: {
            double old = c->rope_orig_max_pos, lf = c->rope_low_freq_factor, hf = c->rope_high_freq_factor;
            double wavelen = 2 * M_PI / inv, low_wl = old / lf, high_wl = old / hf;
            if (wavelen > low_wl) inv = inv / c->rope_factor;
            else if (wavelen >= high_wl) {
                double smooth = (old / wavelen - lf) / (hf - lf);
                inv = (1 - smooth) * inv / c->rope_factor + smooth * inv;
            }
            break;
        }
        default: break;
        }
        m->inv_freq[i] = (float)inv;
    }
}

/* ---- weights --------------------------------------------------------------------------------------------- */

typedef mtr_binder binder;

static const mtr_st_tensor *find_tensor(binder *b, const char *name, uint32_t d0, uint32_t d1, uint32_t ndim)
{
    if (b->rc) return NULL;
    const mtr_st_tensor *t = mtr_st_find(b->m->st, name);
    if (!t) {
        b->rc = mtr_fail(MTR_EMISMATCH, "%s: the weights lack tensor '%s' that config.json implies", b->dir, name);
        return NULL;
    }
    bool ok = t->ndim == ndim && t->shape[0] == d0 && (ndim < 2 || t->shape[1] == d1);
    if (!ok) {
        char got[128] = "";
        size_t o = 0;
        for (uint32_t i = 0; i < t->ndim && o < sizeof got - 24; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%llu", i ? ", " : "", (unsigned long long)t->shape[i]);
        if (ndim == 2)
            b->rc = mtr_fail(MTR_EMISMATCH, "%s: tensor '%s' has shape [%s], config.json implies [%u, %u]",
                             mtr_st_file_path(b->m->st, t->file), name, got, d0, d1);
        else
            b->rc = mtr_fail(MTR_EMISMATCH, "%s: tensor '%s' has shape [%s], config.json implies [%u]",
                             mtr_st_file_path(b->m->st, t->file), name, got, d0);
        return NULL;
    }
    mtr_dtype want = b->m->cfg.dtype;
    mtr_st_dtype sd = want == MTR_DTYPE_F32 ? MTR_ST_F32 : want == MTR_DTYPE_BF16 ? MTR_ST_BF16 : MTR_ST_F16;
    if (t->dtype != sd && !(b->f32_ok && t->dtype == MTR_ST_F32)) {
        b->rc = mtr_fail(MTR_EMISMATCH, "%s: tensor '%s' is %s but config.json says torch_dtype %s",
                         mtr_st_file_path(b->m->st, t->file), name, mtr_st_dtype_name(t->dtype),
                         mtr_dtype_name(want));
        return NULL;
    }
    b->used++;
    b->m->n_params += t->n_elems;
    return t;
}

/* Matrices are read in place from the mapping, as arrays of their dtype. A tensor at an offset that is not a
 * multiple of its element size (safetensors does not require alignment; its own writer aligns) is copied once
 * into aligned memory the model owns. */
static const void *aligned_data(binder *b, const mtr_st_tensor *t)
{
    size_t esz = t->n_elems ? (size_t)(t->nbytes / t->n_elems) : 1;
    if (esz <= 1 || (uintptr_t)t->data % esz == 0) return t->data;
    mtr_model *m = b->m;
    void **grown = realloc(m->copies, (m->n_copies + 1) * sizeof *grown);
    size_t sz = ((size_t)t->nbytes + 63) & ~(size_t)63;
    void *c = grown ? aligned_alloc(64, sz ? sz : 64) : NULL;
    if (grown) m->copies = grown;
    if (!c) {
        b->rc = mtr_fail(MTR_ENOMEM, "%s: out of memory copying tensor '%s'", b->dir, t->name);
        return NULL;
    }
    memcpy(c, t->data, (size_t)t->nbytes);
    m->copies[m->n_copies++] = c;
    return c;
}

static mtr_mat bind_mat(binder *b, const char *name, uint32_t rows, uint32_t cols)
{
    mtr_mat w = {0};
    const mtr_st_tensor *t = find_tensor(b, name, rows, cols, 2);
    const void *data = t ? aligned_data(b, t) : NULL;
    if (data) w = (mtr_mat){data, b->m->cfg.dtype, rows, cols, NULL};
    return w;
}

static float *bind_vec(binder *b, const char *name, uint32_t n)
{
    const mtr_st_tensor *t = find_tensor(b, name, n, 0, 1);
    if (!t) return NULL;
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) {
        b->rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", b->dir);
        return NULL;
    }
    mtr_st_to_f32(v, t);
    return v;
}

mtr_mat mtr_bind_mat(mtr_binder *b, const char *name, uint32_t rows, uint32_t cols)
{
    return bind_mat(b, name, rows, cols);
}

float *mtr_bind_vec(mtr_binder *b, const char *name, uint32_t n) { return bind_vec(b, name, n); }

float *mtr_bind_vec_f32(mtr_binder *b, const char *name, uint32_t n)
{
    b->f32_ok = true;
    float *v = bind_vec(b, name, n);
    b->f32_ok = false;
    return v;
}

void mtr_bind_nomem(mtr_binder *b)
{
    if (!b->rc) b->rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", b->dir);
}

static void bind_layer(binder *b, uint32_t l)
{
    mtr_model *m = b->m;
    const mtr_model_config *c = &m->cfg;
    mtr_layer *L = &m->layers[l];
    char n[256];
    const uint32_t H = c->hidden_size, qd = c->n_heads * c->head_dim, kd = c->n_kv_heads * c->head_dim;
#define NAME(...) (snprintf(n, sizeof n, __VA_ARGS__), n)
    L->in_norm = bind_vec(b, NAME("model.layers.%u.input_layernorm.weight", l), H);
    L->post_norm = bind_vec(b, NAME("model.layers.%u.post_attention_layernorm.weight", l), H);
    if (c->norm_bias) {
        L->in_norm_b = bind_vec(b, NAME("model.layers.%u.input_layernorm.bias", l), H);
        L->post_norm_b = bind_vec(b, NAME("model.layers.%u.post_attention_layernorm.bias", l), H);
    }
    if (c->arch == MTR_ARCH_DEEPSEEK_V2) { /* multi-head latent attention: tensors of its own */
        mtr_deepseek_bind_attention(b, m, l);
        goto ffn;
    }
    L->q = bind_mat(b, NAME("model.layers.%u.self_attn.q_proj.weight", l), qd, H);
    L->k = bind_mat(b, NAME("model.layers.%u.self_attn.k_proj.weight", l), kd, H);
    L->v = bind_mat(b, NAME("model.layers.%u.self_attn.v_proj.weight", l), kd, H);
    L->o = bind_mat(b, NAME("model.layers.%u.self_attn.o_proj.weight", l), H, qd);
    if (c->qkv_bias) {
        L->q_bias = bind_vec(b, NAME("model.layers.%u.self_attn.q_proj.bias", l), qd);
        L->k_bias = bind_vec(b, NAME("model.layers.%u.self_attn.k_proj.bias", l), kd);
        L->v_bias = bind_vec(b, NAME("model.layers.%u.self_attn.v_proj.bias", l), kd);
    }
    if (c->o_bias) L->o_bias = bind_vec(b, NAME("model.layers.%u.self_attn.o_proj.bias", l), H);
    if (c->arch == MTR_ARCH_QWEN3_MOE) {
        L->q_norm = bind_vec(b, NAME("model.layers.%u.self_attn.q_norm.weight", l), c->head_dim);
        L->k_norm = bind_vec(b, NAME("model.layers.%u.self_attn.k_norm.weight", l), c->head_dim);
    } else if (c->arch == MTR_ARCH_OLMOE) {
        L->q_norm = bind_vec(b, NAME("model.layers.%u.self_attn.q_norm.weight", l), qd);
        L->k_norm = bind_vec(b, NAME("model.layers.%u.self_attn.k_norm.weight", l), kd);
    }
ffn:
    L->moe = c->is_moe[l];
    L->moe_index = -1;
    L->window = !c->is_sliding || c->is_sliding[l] ? c->sliding_window : 0;
    if (c->arch == MTR_ARCH_GPT_OSS) {
        mtr_gptoss_bind_layer(b, l);
        return;
    }
    const bool mix = c->arch == MTR_ARCH_MIXTRAL || c->arch == MTR_ARCH_PHIMOE; /* block_sparse_moe, w1/w3/w2 */
    const char *blk = mix ? "block_sparse_moe" : "mlp";
    if (!L->moe) {
        L->gate = bind_mat(b, NAME("model.layers.%u.mlp.gate_proj.weight", l), c->intermediate_size, H);
        L->up = bind_mat(b, NAME("model.layers.%u.mlp.up_proj.weight", l), c->intermediate_size, H);
        L->down = bind_mat(b, NAME("model.layers.%u.mlp.down_proj.weight", l), H, c->intermediate_size);
        L->has_mlp = true;
        return;
    }
    const uint32_t E = c->n_experts, I = c->moe_intermediate_size;
    L->router = bind_mat(b, NAME("model.layers.%u.%s.gate.weight", l, blk), E, H);
    L->e_gate = calloc(E, sizeof *L->e_gate);
    L->e_up = calloc(E, sizeof *L->e_up);
    L->e_down = calloc(E, sizeof *L->e_down);
    if (!L->e_gate || !L->e_up || !L->e_down) {
        if (!b->rc) b->rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", b->dir);
        return;
    }
    for (uint32_t e = 0; e < E && !b->rc; e++) {
        L->e_gate[e] = bind_mat(b, NAME("model.layers.%u.%s.experts.%u.%s.weight", l, blk, e, mix ? "w1" : "gate_proj"),
                                I, H);
        L->e_up[e] = bind_mat(b, NAME("model.layers.%u.%s.experts.%u.%s.weight", l, blk, e, mix ? "w3" : "up_proj"),
                              I, H);
        L->e_down[e] = bind_mat(b, NAME("model.layers.%u.%s.experts.%u.%s.weight", l, blk, e, mix ? "w2" : "down_proj"),
                                H, I);
    }
    if (c->arch == MTR_ARCH_QWEN2_MOE && c->shared_expert_intermediate_size) {
        const uint32_t S = c->shared_expert_intermediate_size;
        L->gate = bind_mat(b, NAME("model.layers.%u.mlp.shared_expert.gate_proj.weight", l), S, H);
        L->up = bind_mat(b, NAME("model.layers.%u.mlp.shared_expert.up_proj.weight", l), S, H);
        L->down = bind_mat(b, NAME("model.layers.%u.mlp.shared_expert.down_proj.weight", l), H, S);
        const mtr_st_tensor *t = find_tensor(b, NAME("model.layers.%u.mlp.shared_expert_gate.weight", l), 1, H, 2);
        if (t && (L->shared_gate = malloc((size_t)H * sizeof(float))) != NULL) mtr_st_to_f32(L->shared_gate, t);
        else if (t && !b->rc) b->rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", b->dir);
        L->has_mlp = true;
    }
    if (c->arch == MTR_ARCH_DEEPSEEK_V2) mtr_deepseek_bind_moe(b, m, l);
#undef NAME
}

static void free_layer(mtr_layer *L)
{
    free(L->in_norm);
    free(L->post_norm);
    free(L->q_bias);
    free(L->k_bias);
    free(L->v_bias);
    free(L->o_bias);
    free(L->q_norm);
    free(L->k_norm);
    free(L->e_gate);
    free(L->e_up);
    free(L->e_down);
    free(L->shared_gate);
    free(L->sinks);
    free(L->router_bias);
    free(L->e_gu_bias);
    free(L->e_down_bias);
    free(L->in_norm_b);
    free(L->post_norm_b);
    mtr_deepseek_free_layer(L);
}

int mtr_model_load(mtr_model **out, const char *dir, const mtr_model_opts *opts)
{
    *out = NULL;
    mtr_model_opts o = MTR_MODEL_OPTS_INIT;
    if (opts) o = *opts;
    mtr_model *m = calloc(1, sizeof *m);
    if (!m) return mtr_fail(MTR_ENOMEM, "%s: out of memory", dir);
    m->n_threads = o.n_threads;
    int rc = parse_config(&m->cfg, dir);
    if (rc) goto fail;
    if ((rc = mtr_st_open(&m->st, dir))) goto fail;
    if (m->cfg.arch == MTR_ARCH_GPT_OSS && (rc = mtr_gptoss_prepare(m, dir))) goto fail;
    const mtr_model_config *c = &m->cfg;
    m->layers = calloc(c->n_layers, sizeof *m->layers);
    m->inv_freq = malloc(c->head_dim / 2 * sizeof *m->inv_freq);
    if (!m->layers || !m->inv_freq) {
        rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    binder b = {m, dir, 0, 0, false};
    m->embed = bind_mat(&b, "model.embed_tokens.weight", c->vocab_size, c->hidden_size);
    m->final_norm = bind_vec(&b, "model.norm.weight", c->hidden_size);
    if (c->norm_bias) m->final_norm_b = bind_vec(&b, "model.norm.bias", c->hidden_size);
    if (c->lm_head_bias) m->lm_head_b = bind_vec(&b, "lm_head.bias", c->vocab_size);
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
        /* some tied checkpoints still store the copy: check it, count it as used, not as parameters */
        if (mtr_st_find(m->st, "lm_head.weight") &&
            find_tensor(&b, "lm_head.weight", c->vocab_size, c->hidden_size, 2))
            m->n_params -= (uint64_t)c->vocab_size * c->hidden_size;
    } else
        m->lm_head = bind_mat(&b, "lm_head.weight", c->vocab_size, c->hidden_size);
    for (uint32_t l = 0; l < c->n_layers && !b.rc; l++) bind_layer(&b, l);
    if ((rc = b.rc)) goto fail;
    if (b.used != mtr_st_count(m->st)) {
        /* name the first tensor nobody claimed: a different architecture or a config that hides layers */
        for (size_t i = 0; i < mtr_st_count(m->st); i++) {
            const char *name = mtr_st_get(m->st, i)->name;
            bool known = strncmp(name, "model.layers.", 13) != 0 && strcmp(name, "lm_head.weight") != 0 &&
                         strcmp(name, "model.embed_tokens.weight") != 0 && strcmp(name, "model.norm.weight") != 0;
            if (known) {
                rc = mtr_fail(MTR_EMISMATCH, "%s: tensor '%s' is not part of a %s model as config.json describes it",
                              dir, name, c->model_type);
                goto fail;
            }
        }
        rc = mtr_fail(MTR_EMISMATCH, "%s: the weights hold %zu tensors, a %s model as configured uses %zu", dir,
                      mtr_st_count(m->st), c->model_type, b.used);
        goto fail;
    }
    for (size_t i = 0; i < mtr_st_count(m->st); i++) m->weight_bytes += mtr_st_get(m->st, i)->nbytes;
    rope_frequencies(m);
    if (c->rope_type == MTR_ROPE_LONGROPE && (rc = mtr_longrope_frequencies(m))) goto fail;
    for (uint32_t k = 0, l = 0; l < c->n_layers; l++)
        if (c->is_moe[l]) m->layers[l].moe_index = (int32_t)k++;
    mtr_model_info_init(&m->info, c->name_or_path, c->model_type, c->n_moe_layers, c->n_experts, c->top_k);
    m->info.n_decoder_layers = c->n_layers;
    for (uint32_t k = 0; k < c->n_moe_layers; k++) m->info.layer_index[k] = c->moe_layer_index[k];
    m->info.score_fn = MTR_SCORE_SOFTMAX;
    m->info.renormalize = c->norm_topk_prob;
    m->info.router_bias = false;
    if (c->arch == MTR_ARCH_GPT_OSS) { /* top-k on the logits (with the router bias), softmax over the k */
        m->info.score_fn = MTR_SCORE_TOPK_SOFTMAX;
        m->info.router_bias = true;
    }
    if (c->arch == MTR_ARCH_PHIMOE) mtr_phimoe_info(m);
    if (c->arch == MTR_ARCH_DEEPSEEK_V2) mtr_deepseek_info(m);
    *out = m;
    return 0;
fail:
    mtr_model_destroy(m);
    return rc;
}

void mtr_model_destroy(mtr_model *m)
{
    if (!m) return;
    if (m->layers)
        for (uint32_t l = 0; l < m->cfg.n_layers; l++) free_layer(&m->layers[l]);
    free(m->layers);
    free(m->final_norm);
    free(m->inv_freq);
    free(m->cfg.is_moe);
    free(m->cfg.moe_layer_index);
    free(m->cfg.is_sliding);
    free(m->final_norm_b);
    free(m->lm_head_b);
    free(m->inv_freq_long);
    free(m->selection_bias);
    for (size_t i = 0; i < m->n_copies; i++) free(m->copies[i]);
    free(m->copies);
    free(m->cfg.rope_short_factor);
    free(m->cfg.rope_long_factor);
    mtr_st_close(m->st);
    free(m);
}

const mtr_model_config *mtr_model_get_config(const mtr_model *m) { return &m->cfg; }
uint64_t mtr_model_n_params(const mtr_model *m) { return m->n_params; }
uint64_t mtr_model_weight_bytes(const mtr_model *m) { return m->weight_bytes; }

void mtr_model_info_of(mtr_model_info *out, const mtr_model *m, const char *model_id)
{
    *out = m->info;
    if (model_id && *model_id) snprintf(out->model_id, sizeof out->model_id, "%s", model_id);
}
