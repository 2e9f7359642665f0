/* mtr_steer.h — steering files (docs/ARCHITECTURE.md §4; traces/STEERING.md is normative): read, write, validate, apply
 * and export the self-describing description of a router intervention.
 *
 * A steering file is an HDF5 file (steer.h5) with a JSON twin (steer.json) holding the same content: the model
 * it is for (id, n_layers, n_experts, top_k, layer map), the operation (soft | hard | off | bias) with its
 * parameters (lambda; eps and whether it is drawn from N(0, eps^2) or fixed), the target layers, the expert set,
 * a dense (n_layers, n_experts) coefficient matrix and provenance (a JSON object: traces, dataset, tau, band,
 * selection rule, control). moetrace-stats writes them; capture loads them and applies them to router logits.
 * Exporters write the EasySteer `moe_router` layer-config JSON and a flat f32 matrix with a JSON sidecar.
 *
 * Layers are 0-based MoE layer indices in memory and on disk (as in traces); experts are 0-based.
 * Conventions as moetrace.h: 0 or a negative mtr_err with mtr_errmsg(); nothing prints or exits.
 */
#ifndef MTR_STEER_H
#define MTR_STEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moetrace.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MTR_STEER_FORMAT_NAME "moetrace-steering"
#define MTR_STEER_FORMAT_VERSION 1
#define MTR_STEER_FLAT_FORMAT_NAME "moetrace-steering-matrix"
#define MTR_STEER_DEFAULT_LAMBDA 0.5 /* the paper's soft lambda */
#define MTR_STEER_DEFAULT_EPS_SD 1e-6 /* hard/off eps ~ N(0, sd^2), the paper's rule */
#define MTR_STEER_STEERMOE_EPS 0.01   /* SteerMoE's fixed eps */

/* operations (value, name); enums only grow at the end */
#define MTR_STEER_OP_LIST(X)   \
    X(MTR_STEER_SOFT, "soft")  \
    X(MTR_STEER_HARD, "hard")  \
    X(MTR_STEER_OFF, "off")    \
    X(MTR_STEER_BIAS, "bias")

#define MTR_STEER_EPS_LIST(X)          \
    X(MTR_STEER_EPS_GAUSSIAN, "gaussian") \
    X(MTR_STEER_EPS_FIXED, "fixed")

#define MTR_X_ENUM(name, str) name,
typedef enum { MTR_STEER_OP_LIST(MTR_X_ENUM) MTR_STEER_OP_COUNT } mtr_steer_op;
typedef enum { MTR_STEER_EPS_LIST(MTR_X_ENUM) MTR_STEER_EPS_COUNT } mtr_steer_eps;
#undef MTR_X_ENUM

typedef struct {
    uint32_t layer;  /* 0-based MoE layer */
    uint32_t expert;
    double score;    /* what selected it (e.g. Delta); NaN if none */
} mtr_steer_expert;

typedef struct {
    char name[64];               /* intervention name, e.g. "task", "outside_band", "random" */
    char model_id[MTR_MAX_NAME];
    uint32_t n_layers, n_experts, top_k;
    int32_t *layer_index;        /* (n_layers) MoE layer -> 0-based decoder layer */
    mtr_steer_op op;
    double lambda;               /* soft: multiple of std(z) added (negative demotes); else unused */
    mtr_steer_eps eps_mode;      /* hard / off: how eps is chosen */
    double eps;                  /* gaussian: standard deviation; fixed: the value */
    uint64_t seed;               /* gaussian eps: seed of the generator */
    uint32_t n_target;
    uint32_t *target_layers;     /* (n_target) increasing, 0-based */
    size_t n_sel;
    mtr_steer_expert *experts;   /* (n_sel) sorted by (layer, expert) */
    float *coef;                 /* (n_layers, n_experts): soft lambda, hard +1, off -1, bias b; 0 elsewhere */
    char *provenance;            /* JSON object text */
} mtr_steer;

MTR_API const char *mtr_steer_op_name(mtr_steer_op op);          /* NULL if out of range */
MTR_API int mtr_steer_op_parse(mtr_steer_op *out, const char *s); /* 0 or MTR_EINVAL */
MTR_API const char *mtr_steer_eps_name(mtr_steer_eps e);
MTR_API int mtr_steer_eps_parse(mtr_steer_eps *out, const char *s);

/* A new empty steering description: identity layer map, lambda 0.5, eps N(0, 1e-6^2) with seed 0, no targets,
 * no experts, provenance "{}". MTR_EINVAL for dimensions outside the moetrace limits. Free with
 * mtr_steer_destroy (accepts NULL). */
MTR_API int mtr_steer_create(mtr_steer **out, const char *model_id, uint32_t n_layers, uint32_t n_experts, uint32_t top_k,
                     mtr_steer_op op);
MTR_API void mtr_steer_destroy(mtr_steer *s);
/* Add expert (layer, expert) with its coefficient: coef NaN means the operation's default (soft: s->lambda,
 * hard: +1, off: -1; bias needs a finite coef). Its layer becomes a target layer. MTR_EINVAL out of range,
 * MTR_EDUP if already present. */
MTR_API int mtr_steer_add(mtr_steer *s, uint32_t layer, uint32_t expert, double coef, double score);
/* Replace the target layers (0-based, any order, duplicates merged). */
MTR_API int mtr_steer_set_targets(mtr_steer *s, const uint32_t *layers, uint32_t n);
/* Replace the provenance: must be the text of a JSON object. */
MTR_API int mtr_steer_set_provenance(mtr_steer *s, const char *json_object);
/* Self-consistency: dimensions, op parameters, every expert inside a target layer with a non-zero coefficient
 * and no coefficient outside the set; hard: at most top_k forced experts per layer. MTR_EINVAL / MTR_EFORMAT
 * with a detail. */
MTR_API int mtr_steer_validate(const mtr_steer *s);
/* Does the file fit this model (model id, n_layers, n_experts, top_k, layer map)? MTR_EMISMATCH otherwise. */
MTR_API int mtr_steer_check_model(const mtr_steer *s, const mtr_model_info *m);

/* Write the HDF5 file and its JSON twin (json_path NULL: h5_path with ".h5" replaced by ".json", or ".json"
 * appended). The description is validated first. MTR_EIO / MTR_EHDF5. */
MTR_API int mtr_steer_write(const mtr_steer *s, const char *h5_path, const char *json_path);
/* Load a steering file, HDF5 or its JSON twin (by content), and validate it. MTR_ENOTFOUND, MTR_EFORMAT,
 * MTR_EVERSION (an unknown major version), MTR_EINVAL (inconsistent content). */
MTR_API int mtr_steer_load(mtr_steer **out, const char *path);

/* Apply the intervention to one token's router logits z (n_experts) at MoE layer `layer`, in place, before the
 * model's own softmax / top-k: soft z_e += coef * std(z) (population std over the experts), hard z_e = max(z) +
 * eps, off z_e = min(z) - eps, bias z_e += coef; max, min and std are of the unmodified logits. Gaussian eps is
 * drawn per forced expert from *rng (a splitmix64 state the caller seeds, e.g. with s->seed; NULL: eps = 0).
 * Layers outside the targets are left alone. */
MTR_API void mtr_steer_apply(const mtr_steer *s, uint32_t layer, float *z, uint64_t *rng);
/* Start state of MoE layer `layer`'s gaussian-eps generator: seed XOR ((layer + 1) * 0x9E3779B97F4A7C15), one
 * generator per layer continuing over the tokens in order, as the native engine and the PyTorch hook use it. */
MTR_API uint64_t mtr_steer_layer_seed(uint64_t seed, uint32_t layer);

/* EasySteer `moe_router` layer config (traces/STEERING.md "Exports"): {"layer_configs": {"<decoder layer>":
 * {...}}, "moetrace": {provenance}}. soft: {"mode": "soft", "expert_ids": [...], "lambda": coef * sqrt((E-1)/E)}
 * (EasySteer multiplies the n-1 std, moetrace the population std: the same z'); hard / off: {"mode": "activate" |
 * "deactivate", "expert_ids": [...], "epsilon": eps}, a layer with both signs "activate_ids" + "deactivate_ids".
 * *lossy (may be NULL) is set for gaussian eps, which EasySteer's fixed epsilon cannot express. MTR_EINVAL for op
 * bias (no such mode) and for a soft layer whose experts have different coefficients (one lambda per layer). */
MTR_API int mtr_steer_export_easysteer(const mtr_steer *s, const char *path, bool *lossy);
/* The coefficient matrix as raw little-endian f32 (n_layers, n_experts), row-major, in bin_path, and a JSON
 * sidecar describing it (shape, dtype, byte order, op and parameters, model) in json_path. */
MTR_API int mtr_steer_export_flat(const mtr_steer *s, const char *bin_path, const char *json_path);

#ifdef __cplusplus
}
#endif
#endif
