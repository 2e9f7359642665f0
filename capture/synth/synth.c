/* synth.c — `moetrace-capture synth`: deterministic synthetic router logits with planted multilingual structure,
 * written through the libmoetrace writer (traces/FORMAT.md), with the planted truth beside the run.
 *
 * Planted model
 * -------------
 * Layers l = 1..L (1-based here and in truth.json), experts e = 0..E-1, languages g with alignment strength
 * s_g in [0,1] (English: s = 1), datasets d (d = 0 the generic corpus, d >= 1 tasks), middle band [a, b].
 *
 *   Sharedness     w(l) = 1 for a <= l <= b; below the band w(l) = (1 - cos(pi (l-1)/(a-1))) / 2, above it
 *                  w(l) = (1 - cos(pi (L-l)/(L-b))) / 2, so w = 0 at layers 1 and L and rises smoothly to the band.
 *   Expert sets    O[g,l]: lang_experts experts drawn from a stream keyed by (seed, language code, layer).
 *                  S[l] = O[eng_Latn,l] is the shared set. T[d,l] (task d, band layers only): task_experts experts
 *                  keyed by (seed, dataset name, layer), never in S[l]. Other languages' O[g,l] avoid S[l] and the
 *                  task experts of the layer when enough experts remain (else only S[l], else nothing).
 *   Mixing         alpha[g,l] = w(l) * s_g.
 *   Mean logits    mu[g,d,l,e] = B * (alpha[g,l] * 1[e in S[l]] + (1 - alpha[g,l]) * 1[e in O[g,l]])
 *                              + task_boost * s_g * 1[d >= 1, a <= l <= b, e in T[d,l]]
 *   Logits         z[t,l,e] = mu[g,d,l,e] + seq_noise * c[l,e] + noise * n[t,l,e], c and n iid N(0,1);
 *                  c is drawn once per sequence, n per token.
 *   Accuracy       acc[g,d] = clip(0.25 + 0.65 s_g + acc_noise * N(0,1), 0, 1) for each task d.
 *
 * English routes to S[l] at every layer. Another language routes to its own experts where w is small (first and
 * last layers) and moves towards S[l] inside the band in proportion to s_g, so divergence from English is
 * U-shaped over depth and, inside the band, falls as s_g grows; accuracy rises with s_g, so band divergence and
 * accuracy are negatively correlated across languages. Task experts are promoted on task datasets in band layers
 * only, more strongly in languages that route like English.
 *
 * Sequences: lengths are lognormal (a per-unit factor shared by the languages of a parallel unit times a small
 * per-language factor) clipped to [len_min, len_max]. Roles: SYNTH_TEMPLATE_TOKENS template tokens, then prompt;
 * task datasets end with a response (the last 40% of the non-template tokens). Template tokens have fixed ids
 * 1.., the others uniform ids in [SYNTH_FIRST_TEXT_ID, MTR_SYNTH_VOCAB). seq_id counts in the order
 * (dataset, unit, language) with languages and datasets in the order given.
 *
 * Determinism: every random quantity comes from its own xoshiro256** stream seeded through splitmix64 from the
 * seed and names (dataset, language) and numbers (unit, layer), never from a thread-dependent state; sequences are
 * generated in parallel batches and appended in seq_id order.
 */
#include "mtr_synth.h"

#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define SYNTH_PI 3.14159265358979323846
#define SYNTH_MAX_CODE 64              /* language codes and dataset names, including the NUL */
#define SYNTH_TEMPLATE_TOKENS 3u       /* like "<|im_start|>", "user", "\n" */
#define SYNTH_FIRST_TEXT_ID 16         /* ids below are reserved for template tokens */
#define SYNTH_LEN_SD_UNIT 0.5          /* log-length sd shared by the languages of a unit */
#define SYNTH_LEN_SD_LANG 0.1          /* log-length sd of each language's translation */
#define SYNTH_BATCH_BYTES_PER_THREAD ((uint64_t)16 << 20)
#define SYNTH_BATCH_BYTES_MIN ((uint64_t)64 << 20)
#define SYNTH_BATCH_BYTES_MAX ((uint64_t)512 << 20)
#define SYNTH_BATCH_SEQS_MAX 4096u
#define SYNTH_MAX_SEQ_BYTES ((uint64_t)1 << 32) /* one sequence's f32 logits must fit in this */

/* Stream tags: one per kind of random quantity, so streams never collide across kinds. */
enum { TAG_LEN_UNIT = 1, TAG_LEN_LANG, TAG_SEQ, TAG_LANG_SET, TAG_TASK_SET, TAG_ACC };

/* ---- errors ---------------------------------------------------------------------------------------------- */

/* An error raised inside libmoetrace: keep its detail. */
static int synth_fail_lib(int err)
{
    if (!mtr_errmsg()[0]) mtr_fail(err, "%s", mtr_strerror(err));
    return err;
}

/* ---- random numbers -------------------------------------------------------------------------------------- */

static uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t mix64(uint64_t a, uint64_t b)
{
    uint64_t x = a ^ b;
    return splitmix64_next(&x);
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then mixed */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return mix64(h, 0);
}

typedef struct {
    uint64_t s[4];
} rng_t;

static void rng_seed(rng_t *r, uint64_t seed, uint64_t tag, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t x = mix64(mix64(mix64(mix64(seed, tag), a), b), c);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64_next(&x);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(rng_t *r) /* xoshiro256** */
{
    uint64_t *s = r->s;
    uint64_t out = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

/* Uniform in (0, 1]: safe to take the log of. */
static inline double rng_uniform_pos(rng_t *r) { return (double)((rng_next(r) >> 11) + 1) * 0x1.0p-53; }

/* Uniform integer in [0, n). The modulo bias is below n / 2^64, far under anything measurable here. */
static inline uint64_t rng_below(rng_t *r, uint64_t n) { return rng_next(r) % n; }

/* Ziggurat for N(0,1) with 256 layers of equal area v. Layer 0 is the base strip [0, x0] x [0, f(r)] whose part
 * beyond r stands for the tail; layer i >= 1 is [0, x_i] x [f(x_i), f(x_{i+1})], with x_1 = r and x_256 = 0.
 * About 99% of draws take one 64-bit number, a multiply and a compare; the tail is sampled exactly, so the
 * extremes that divergence and top-k statistics are sensitive to have the right frequency. */
#define ZIG_N 256
#define ZIG_R 3.6541528853610088

typedef struct {
    double x[ZIG_N + 1]; /* layer right edges */
    double f[ZIG_N + 1]; /* exp(-x^2/2) at the edges */
    double k[ZIG_N];     /* x[i+1] / x[i]: below this the point is inside the curve */
} zig_tables;

static void zig_init(zig_tables *z)
{
    const double r = ZIG_R, fr = exp(-0.5 * r * r);
    const double v = r * fr + sqrt(0.5 * SYNTH_PI) * erfc(r / sqrt(2.0)); /* area of every layer */
    z->x[0] = v / fr;
    z->x[1] = r;
    for (int i = 1; i < ZIG_N - 1; i++) {
        double y = exp(-0.5 * z->x[i] * z->x[i]) + v / z->x[i];
        z->x[i + 1] = y < 1.0 ? sqrt(-2.0 * log(y)) : 0.0;
    }
    z->x[ZIG_N] = 0.0;
    for (int i = 0; i <= ZIG_N; i++)
        z->f[i] = exp(-0.5 * z->x[i] * z->x[i]);
    for (int i = 0; i < ZIG_N; i++)
        z->k[i] = z->x[i + 1] / z->x[i];
}

/* The rare rest of a draw that fell outside the inner rectangle of layer i (u in [-1, 1) scaled that layer):
 * the tail (i = 0) or the wedge test; a rejected wedge point starts a new draw. Kept out of line so that the fast
 * path inlines into the token loops. */
static double zig_slow(rng_t *r, const zig_tables *z, unsigned i, double u) __attribute__((noinline));

/* N(0,1). The low 8 bits pick the layer, the upper 56 bits a signed position in [-1, 1), so the two are independent;
 * the sign rides on the position instead of a data-dependent branch. */
static inline double zig_normal(rng_t *r, const zig_tables *z)
{
    uint64_t bits = rng_next(r);
    unsigned i = (unsigned)(bits & (ZIG_N - 1));
    double u = (double)((int64_t)(bits >> 8) - ((int64_t)1 << 55)) * 0x1.0p-55; /* [-1, 1) */
    if (fabs(u) < z->k[i])
        return u * z->x[i];
    return zig_slow(r, z, i, u);
}

static double zig_slow(rng_t *r, const zig_tables *z, unsigned i, double u)
{
    for (;;) {
        double x = u * z->x[i], ax = fabs(x);
        if (i == 0) {
            double a, b;
            do {
                a = -log(rng_uniform_pos(r)) / ZIG_R;
                b = -log(rng_uniform_pos(r));
            } while (b + b < a * a);
            return u < 0 ? -(ZIG_R + a) : ZIG_R + a;
        }
        double y = z->f[i] + rng_uniform_pos(r) * (z->f[i + 1] - z->f[i]);
        if (y < exp(-0.5 * ax * ax))
            return x;
        uint64_t bits = rng_next(r);
        i = (unsigned)(bits & (ZIG_N - 1));
        u = (double)((int64_t)(bits >> 8) - ((int64_t)1 << 55)) * 0x1.0p-55;
        if (fabs(u) < z->k[i])
            return u * z->x[i];
    }
}

/* ---- parsed lists and the planted model ------------------------------------------------------------------ */

typedef struct {
    char code[SYNTH_MAX_CODE];
    double strength;
    uint64_t hash;
    int rank; /* expected closeness to English: 1 = closest; 0 for English */
} synth_lang;

typedef struct {
    char name[SYNTH_MAX_CODE];
    uint64_t hash;
} synth_dataset;

typedef struct {
    uint32_t L, E, K, n_le, n_te; /* layers, experts, top-k, experts per language set, per task set */
    uint32_t band_a, band_b;      /* 1-based inclusive */
    synth_lang *langs;            /* (n_langs) */
    size_t n_langs, eng;
    synth_dataset *ds;            /* (n_ds); ds[0] is the generic corpus */
    size_t n_ds;
    double *w;                    /* (L) sharedness */
    uint32_t *own;                /* (n_langs, L, n_le) sorted; own[eng] is the shared set */
    uint32_t *task;               /* (n_ds, L, n_te) sorted; rows of d = 0 and of layers outside the band unused */
    float *mu;                    /* (n_langs, L, E) language profile */
    float *boost;                 /* (n_ds, L, E) task boost before the strength factor */
    double *acc;                  /* (n_langs, n_ds) planted accuracy; column 0 unused */
    zig_tables zig;
    uint32_t n_units;             /* units per dataset to write */
    uint64_t n_seqs, n_tokens;    /* totals of the plan */
} synth_model;

static bool code_char_ok(char c, bool allow_dot)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
           (allow_dot && c == '.');
}

/* Copy [s, e) without surrounding blanks into out; check length and characters. */
static int take_name(char *out, const char *s, const char *e, const char *opt, bool allow_dot)
{
    while (s < e && (*s == ' ' || *s == '\t'))
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    size_t n = (size_t)(e - s);
    if (n == 0)
        return mtr_fail(MTR_EINVAL, "%s: empty name in the list", opt);
    if (n >= SYNTH_MAX_CODE)
        return mtr_fail(MTR_EINVAL, "%s: name '%.*s' is longer than %d characters", opt, (int)n, s,
                          SYNTH_MAX_CODE - 1);
    for (size_t i = 0; i < n; i++)
        if (!code_char_ok(s[i], allow_dot))
            return mtr_fail(MTR_EINVAL, "%s: '%.*s' has a character other than letters, digits, '_', '-'%s", opt,
                              (int)n, s, allow_dot ? ", '.'" : "");
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static size_t count_items(const char *s)
{
    size_t n = 1;
    for (; *s; s++)
        n += (*s == ',');
    return n;
}

/* "code[:strength],..." -> langs (malloc'd). English may omit its strength; it must be 1. */
static int parse_langs(synth_lang **out, size_t *n_out, size_t *eng_out, const char *spec)
{
    size_t cap = count_items(spec), n = 0, eng = SIZE_MAX;
    synth_lang *v = calloc(cap, sizeof *v);
    if (!v)
        return mtr_fail(MTR_ENOMEM, "--langs: out of memory");
    int rc = 0;
    for (const char *p = spec;;) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *colon = memchr(p, ':', (size_t)(end - p));
        synth_lang *lg = &v[n];
        rc = take_name(lg->code, p, colon ? colon : end, "--langs", false);
        if (rc)
            goto fail;
        bool is_eng = strcmp(lg->code, MTR_SYNTH_ENGLISH) == 0;
        if (colon) {
            char num[64];
            size_t k = (size_t)(end - colon - 1);
            if (k == 0 || k >= sizeof num) {
                rc = mtr_fail(MTR_EINVAL, "--langs: bad strength for '%s'", lg->code);
                goto fail;
            }
            memcpy(num, colon + 1, k);
            num[k] = '\0';
            char *stop = NULL;
            errno = 0;
            double s = strtod(num, &stop);
            while (stop && (*stop == ' ' || *stop == '\t'))
                stop++;
            if (stop == num || *stop != '\0' || errno || !(s >= 0.0 && s <= 1.0)) {
                rc = mtr_fail(MTR_EINVAL, "--langs: strength of '%s' must be a number in [0,1], got '%s'",
                                lg->code, num);
                goto fail;
            }
            lg->strength = s;
        } else if (is_eng) {
            lg->strength = 1.0;
        } else {
            rc = mtr_fail(MTR_EINVAL, "--langs: '%s' needs a strength (code:strength)", lg->code);
            goto fail;
        }
        if (is_eng && lg->strength != 1.0) {
            rc = mtr_fail(MTR_EINVAL, "--langs: %s is the reference and must have strength 1", MTR_SYNTH_ENGLISH);
            goto fail;
        }
        for (size_t i = 0; i < n; i++)
            if (strcmp(v[i].code, lg->code) == 0) {
                rc = mtr_fail(MTR_EINVAL, "--langs: '%s' is given twice", lg->code);
                goto fail;
            }
        lg->hash = hash_str(lg->code);
        if (is_eng)
            eng = n;
        n++;
        if (!*end)
            break;
        p = end + 1;
    }
    if (eng == SIZE_MAX) {
        rc = mtr_fail(MTR_EINVAL, "--langs: %s must be present (it is the reference language)", MTR_SYNTH_ENGLISH);
        goto fail;
    }
    /* Competition ranking of the other languages by decreasing strength. */
    for (size_t i = 0; i < n; i++) {
        v[i].rank = 0;
        if (i == eng)
            continue;
        v[i].rank = 1;
        for (size_t j = 0; j < n; j++)
            if (j != eng && v[j].strength > v[i].strength)
                v[i].rank++;
    }
    *out = v;
    *n_out = n;
    *eng_out = eng;
    return 0;
fail:
    free(v);
    return rc;
}

static int parse_datasets(synth_dataset **out, size_t *n_out, const char *spec)
{
    size_t cap = count_items(spec), n = 0;
    synth_dataset *v = calloc(cap, sizeof *v);
    if (!v)
        return mtr_fail(MTR_ENOMEM, "--datasets: out of memory");
    int rc = 0;
    for (const char *p = spec;;) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        rc = take_name(v[n].name, p, end, "--datasets", true);
        if (rc)
            goto fail;
        for (size_t i = 0; i < n; i++)
            if (strcmp(v[i].name, v[n].name) == 0) {
                rc = mtr_fail(MTR_EINVAL, "--datasets: '%s' is given twice", v[n].name);
                goto fail;
            }
        v[n].hash = hash_str(v[n].name);
        n++;
        if (!*end)
            break;
        p = end + 1;
    }
    *out = v;
    *n_out = n;
    return 0;
fail:
    free(v);
    return rc;
}

static const char *opt_langs(const mtr_synth_opts *o) { return o->langs ? o->langs : MTR_SYNTH_DEFAULT_LANGS; }
static const char *opt_datasets(const mtr_synth_opts *o)
{
    return o->datasets ? o->datasets : MTR_SYNTH_DEFAULT_DATASETS;
}
static uint32_t opt_lang_experts(const mtr_synth_opts *o) { return o->lang_experts ? o->lang_experts : o->top_k; }

/* The middle ~60% of the layers, centred. */
static void default_band(uint32_t L, uint32_t *a, uint32_t *b)
{
    uint32_t n = (uint32_t)floor(0.6 * L + 0.5);
    if (n < 1)
        n = 1;
    *a = (L - n) / 2 + 1;
    *b = *a + n - 1;
}

static bool finite_in(double x, double lo, double hi) { return isfinite(x) && x >= lo && x <= hi; }

int mtr_synth_opts_check(const mtr_synth_opts *o)
{
    if (!o)
        return mtr_fail(MTR_EINVAL, "no options");
    if (!o->out_dir || !*o->out_dir)
        return mtr_fail(MTR_EINVAL, "--out RUN is required");
    if (o->n_layers < 1 || o->n_layers > MTR_MAX_LAYERS)
        return mtr_fail(MTR_EINVAL, "--layers must be in 1..%d, got %u", MTR_MAX_LAYERS, o->n_layers);
    if (o->n_experts < 2 || o->n_experts > MTR_MAX_EXPERTS)
        return mtr_fail(MTR_EINVAL, "--experts must be in 2..%d, got %u", MTR_MAX_EXPERTS, o->n_experts);
    if (o->top_k < 1 || o->top_k > MTR_MAX_TOPK || o->top_k > o->n_experts)
        return mtr_fail(MTR_EINVAL, "--top-k must be in 1..%u, got %u",
                          o->n_experts < MTR_MAX_TOPK ? o->n_experts : (unsigned)MTR_MAX_TOPK, o->top_k);
    uint32_t le = opt_lang_experts(o);
    if (le > o->n_experts)
        return mtr_fail(MTR_EINVAL, "--lang-experts %u exceeds --experts %u", le, o->n_experts);
    if (o->task_experts > o->n_experts - le)
        return mtr_fail(MTR_EINVAL, "--task-experts %u: at most %u (task experts avoid the %u shared experts)",
                          o->task_experts, o->n_experts - le, le);
    if ((o->band_first == 0) != (o->band_last == 0))
        return mtr_fail(MTR_EINVAL, "--band needs both ends");
    if (o->band_first && (o->band_first > o->band_last || o->band_last > o->n_layers))
        return mtr_fail(MTR_EINVAL, "--band %u-%u must satisfy 1 <= A <= B <= %u (--layers)", o->band_first,
                          o->band_last, o->n_layers);
    if (o->n_units < 1 || o->n_units > MTR_SYNTH_MAX_UNITS)
        return mtr_fail(MTR_EINVAL, "--units must be in 1..%u, got %u", MTR_SYNTH_MAX_UNITS, o->n_units);
    if (o->len_min < 1 || o->len_min > o->len_max || o->len_max > MTR_SYNTH_MAX_LEN)
        return mtr_fail(MTR_EINVAL, "sequence lengths need 1 <= --len-min (%u) <= --len-max (%u) <= %u", o->len_min,
                          o->len_max, MTR_SYNTH_MAX_LEN);
    if (!finite_in(o->len_mean, 1.0, (double)MTR_SYNTH_MAX_LEN))
        return mtr_fail(MTR_EINVAL, "--len-mean must be in 1..%u, got %g", MTR_SYNTH_MAX_LEN, o->len_mean);
    if ((uint64_t)o->len_max * o->n_layers * o->n_experts * sizeof(float) > SYNTH_MAX_SEQ_BYTES)
        return mtr_fail(MTR_EINVAL, "--len-max %u x %u layers x %u experts is too large for one sequence",
                          o->len_max, o->n_layers, o->n_experts);
    if (o->seed > (uint64_t)INT64_MAX)
        return mtr_fail(MTR_EINVAL, "--seed must be below 2^63");
    if (!finite_in(o->scale, -1e6, 1e6) || !finite_in(o->noise, 0.0, 1e6) || !finite_in(o->seq_noise, 0.0, 1e6) ||
        !finite_in(o->task_boost, -1e6, 1e6) || !finite_in(o->acc_noise, 0.0, 1.0))
        return mtr_fail(MTR_EINVAL, "model knobs must be finite, --noise/--seq-noise >= 0, --acc-noise in [0,1]");
    if ((unsigned)o->stored_dtype >= MTR_DTYPE_COUNT)
        return mtr_fail(MTR_EINVAL, "unknown stored dtype %d", (int)o->stored_dtype);
    if (!o->store_logits && !o->store_topk)
        return mtr_fail(MTR_EINVAL, "--store: nothing to store");
    if (o->n_threads < 0)
        return mtr_fail(MTR_EINVAL, "--threads must be >= 0");
    if (o->model_id && (!*o->model_id || strlen(o->model_id) >= MTR_MAX_NAME))
        return mtr_fail(MTR_EINVAL, "--model-id must have 1..%d characters", MTR_MAX_NAME - 1);
    if (o->run_id && (!*o->run_id || strlen(o->run_id) >= MTR_MAX_NAME))
        return mtr_fail(MTR_EINVAL, "--run-id must have 1..%d characters", MTR_MAX_NAME - 1);

    synth_lang *langs = NULL;
    synth_dataset *ds = NULL;
    size_t n_langs = 0, n_ds = 0, eng = 0;
    int rc = parse_langs(&langs, &n_langs, &eng, opt_langs(o));
    if (!rc)
        rc = parse_datasets(&ds, &n_ds, opt_datasets(o));
    free(langs);
    free(ds);
    return rc;
}

/* n distinct experts from pool (pool_n of them, reordered in place), sorted ascending into out. */
static void pick_set(uint32_t *out, uint32_t n, uint32_t *pool, uint32_t pool_n, rng_t *r)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t j = i + (uint32_t)rng_below(r, pool_n - i);
        uint32_t t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v = pool[i], j = i;
        for (; j > 0 && out[j - 1] > v; j--)
            out[j] = out[j - 1];
        out[j] = v;
    }
}

static double sharedness(uint32_t l, uint32_t L, uint32_t a, uint32_t b)
{
    if (l < a)
        return 0.5 * (1.0 - cos(SYNTH_PI * (double)(l - 1) / (double)(a - 1)));
    if (l > b)
        return 0.5 * (1.0 - cos(SYNTH_PI * (double)(L - l) / (double)(L - b)));
    return 1.0;
}

static void model_free(synth_model *m)
{
    free(m->langs);
    free(m->ds);
    free(m->w);
    free(m->own);
    free(m->task);
    free(m->mu);
    free(m->boost);
    free(m->acc);
    memset(m, 0, sizeof *m);
}

static uint32_t seq_length(const synth_model *m, const mtr_synth_opts *o, size_t d, uint32_t u, size_t g)
{
    rng_t ru, rl;
    rng_seed(&ru, o->seed, TAG_LEN_UNIT, m->ds[d].hash, u, 0);
    rng_seed(&rl, o->seed, TAG_LEN_LANG, m->ds[d].hash, u, m->langs[g].hash);
    const double su = SYNTH_LEN_SD_UNIT, sl = SYNTH_LEN_SD_LANG;
    double lx = log(o->len_mean) - 0.5 * (su * su + sl * sl) + su * zig_normal(&ru, &m->zig) +
                sl * zig_normal(&rl, &m->zig);
    double x = floor(exp(lx) + 0.5);
    if (!(x >= (double)o->len_min))
        return o->len_min;
    if (x > (double)o->len_max)
        return o->len_max;
    return (uint32_t)x;
}

static int model_build(synth_model *m, const mtr_synth_opts *o)
{
    int rc = 0;
    uint32_t *pool = NULL, *excl = NULL;
    memset(m, 0, sizeof *m);
    m->L = o->n_layers;
    m->E = o->n_experts;
    m->K = o->top_k;
    m->n_le = opt_lang_experts(o);
    m->n_te = o->task_experts;
    if (o->band_first) {
        m->band_a = o->band_first;
        m->band_b = o->band_last;
    } else {
        default_band(m->L, &m->band_a, &m->band_b);
    }
    zig_init(&m->zig);
    rc = parse_langs(&m->langs, &m->n_langs, &m->eng, opt_langs(o));
    if (rc)
        goto fail;
    rc = parse_datasets(&m->ds, &m->n_ds, opt_datasets(o));
    if (rc)
        goto fail;

    const size_t L = m->L, E = m->E, G = m->n_langs, D = m->n_ds;
    m->w = calloc(L, sizeof *m->w);
    m->own = calloc(G * L * (m->n_le ? m->n_le : 1), sizeof *m->own);
    m->task = calloc(D * L * (m->n_te ? m->n_te : 1), sizeof *m->task);
    m->mu = calloc(G * L * E, sizeof *m->mu);
    m->boost = calloc(D * L * E, sizeof *m->boost);
    m->acc = calloc(G * D, sizeof *m->acc);
    pool = malloc(E * sizeof *pool);
    excl = malloc(E * sizeof *excl);
    if (!m->w || !m->own || !m->task || !m->mu || !m->boost || !m->acc || !pool || !excl) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory for the planted model (%zu languages, %zu layers, %zu experts)",
                        G, L, E);
        goto fail;
    }

    for (uint32_t l = 1; l <= m->L; l++) {
        const size_t li = l - 1;
        const bool in_band = l >= m->band_a && l <= m->band_b;
        m->w[li] = sharedness(l, m->L, m->band_a, m->band_b);
        rng_t r;

        /* Shared set: English's own set, from all experts. */
        uint32_t *shared = &m->own[(m->eng * L + li) * m->n_le];
        for (uint32_t e = 0; e < m->E; e++)
            pool[e] = e;
        rng_seed(&r, o->seed, TAG_LANG_SET, m->langs[m->eng].hash, l, 0);
        pick_set(shared, m->n_le, pool, m->E, &r);

        /* excl[e]: 1 = shared, 2 = a task expert of this layer. */
        memset(excl, 0, E * sizeof *excl);
        for (uint32_t i = 0; i < m->n_le; i++)
            excl[shared[i]] = 1;
        for (size_t d = 1; d < D && in_band; d++) {
            uint32_t n = 0;
            for (uint32_t e = 0; e < m->E; e++)
                if (excl[e] != 1)
                    pool[n++] = e;
            uint32_t *t = &m->task[(d * L + li) * m->n_te];
            rng_seed(&r, o->seed, TAG_TASK_SET, m->ds[d].hash, l, 0);
            pick_set(t, m->n_te, pool, n, &r);
            for (uint32_t i = 0; i < m->n_te; i++) {
                excl[t[i]] = 2;
                m->boost[(d * L + li) * E + t[i]] = (float)o->task_boost;
            }
        }
        uint32_t n_free = 0, n_unshared = 0;
        for (uint32_t e = 0; e < m->E; e++) {
            n_free += excl[e] == 0;
            n_unshared += excl[e] != 1;
        }
        int level = n_free >= m->n_le ? 2 : n_unshared >= m->n_le ? 1 : 0; /* how much a language set avoids */

        for (size_t g = 0; g < G; g++) {
            if (g == m->eng)
                continue;
            uint32_t n = 0;
            for (uint32_t e = 0; e < m->E; e++)
                if ((level == 2 && excl[e] == 0) || (level == 1 && excl[e] != 1) || level == 0)
                    pool[n++] = e;
            rng_seed(&r, o->seed, TAG_LANG_SET, m->langs[g].hash, l, 0);
            pick_set(&m->own[(g * L + li) * m->n_le], m->n_le, pool, n, &r);
        }

        for (size_t g = 0; g < G; g++) {
            double alpha = m->w[li] * m->langs[g].strength;
            float *mu = &m->mu[(g * L + li) * E];
            const uint32_t *own = &m->own[(g * L + li) * m->n_le];
            for (uint32_t i = 0; i < m->n_le; i++) {
                mu[shared[i]] += (float)(o->scale * alpha);
                mu[own[i]] += (float)(o->scale * (1.0 - alpha));
            }
        }
    }

    for (size_t g = 0; g < G; g++)
        for (size_t d = 1; d < D; d++) {
            rng_t r;
            rng_seed(&r, o->seed, TAG_ACC, m->langs[g].hash, m->ds[d].hash, 0);
            double a = 0.25 + 0.65 * m->langs[g].strength + o->acc_noise * zig_normal(&r, &m->zig);
            m->acc[g * D + d] = a < 0.0 ? 0.0 : a > 1.0 ? 1.0 : a;
        }

    /* Units to write, and the totals of the plan (lengths are cheap to draw, so they are drawn twice). */
    const uint64_t tok_bytes = (uint64_t)L * E * sizeof(float);
    m->n_units = o->n_units;
    if (o->target_bytes) {
        uint64_t raw = 0;
        uint32_t u = 0;
        while (raw < o->target_bytes || u < o->n_units) {
            if (u >= MTR_SYNTH_MAX_UNITS) {
                rc = mtr_fail(MTR_EINVAL, "--target-bytes %llu needs more than %u units",
                                (unsigned long long)o->target_bytes, MTR_SYNTH_MAX_UNITS);
                goto fail;
            }
            for (size_t d = 0; d < D; d++)
                for (size_t g = 0; g < G; g++)
                    raw += seq_length(m, o, d, u, g) * tok_bytes;
            u++;
        }
        m->n_units = u;
    }
    m->n_seqs = (uint64_t)D * m->n_units * G;
    for (size_t d = 0; d < D; d++)
        for (uint32_t u = 0; u < m->n_units; u++)
            for (size_t g = 0; g < G; g++)
                m->n_tokens += seq_length(m, o, d, u, g);
    free(pool);
    free(excl);
    return 0;
fail:
    free(pool);
    free(excl);
    model_free(m);
    return rc;
}

/* ---- one sequence ---------------------------------------------------------------------------------------- */

typedef struct {
    uint64_t seq_id;
    uint32_t d, u, g, n_tokens;
    uint64_t tok0; /* first token row inside the batch buffers */
} synth_seq;

/* Fill tokens, roles and logits (n_tokens, L, E) of one sequence. base: scratch (L, E). */
static void gen_sequence(const synth_model *m, const mtr_synth_opts *o, const synth_seq *q, float *base,
                         float *logits, int32_t *tok, int32_t *pos, uint8_t *role)
{
    const size_t LE = (size_t)m->L * m->E;
    const float s = (float)m->langs[q->g].strength;
    const float *mu = &m->mu[q->g * LE];
    const float *boost = &m->boost[q->d * LE];
    rng_t r;
    rng_seed(&r, o->seed, TAG_SEQ, m->ds[q->d].hash, q->u, m->langs[q->g].hash);

    for (size_t i = 0; i < LE; i++)
        base[i] = mu[i] + s * boost[i];
    const float seq_sd = (float)o->seq_noise;
    for (size_t i = 0; i < LE; i++)
        base[i] += seq_sd * (float)zig_normal(&r, &m->zig);

    const uint32_t n = q->n_tokens;
    const uint32_t n_tmpl = n >= 2 ? (n - 1 < SYNTH_TEMPLATE_TOKENS ? n - 1 : SYNTH_TEMPLATE_TOKENS) : 0;
    const uint32_t rest = n - n_tmpl;
    const uint32_t n_resp = q->d >= 1 ? rest * 2 / 5 : 0;
    for (uint32_t t = 0; t < n; t++) {
        pos[t] = (int32_t)t;
        if (t < n_tmpl) {
            role[t] = MTR_ROLE_TEMPLATE;
            tok[t] = (int32_t)(1 + t);
        } else {
            role[t] = t >= n - n_resp ? MTR_ROLE_RESPONSE : MTR_ROLE_PROMPT;
            tok[t] = (int32_t)(SYNTH_FIRST_TEXT_ID + rng_below(&r, MTR_SYNTH_VOCAB - SYNTH_FIRST_TEXT_ID));
        }
    }

    const float sd = (float)o->noise;
    for (uint32_t t = 0; t < n; t++) {
        float *row = logits + (size_t)t * LE;
        for (size_t i = 0; i < LE; i++)
            row[i] = (float)zig_normal(&r, &m->zig);
        for (size_t i = 0; i < LE; i++)
            row[i] = base[i] + sd * row[i];
    }
}

/* ---- truth files ----------------------------------------------------------------------------------------- */

static int path_join(char *buf, size_t cap, const char *dir, const char *name)
{
    int k = snprintf(buf, cap, "%s/%s", dir, name);
    if (k < 0 || (size_t)k >= cap)
        return mtr_fail(MTR_EINVAL, "%s: path too long", dir);
    return 0;
}

/* Write data to dir/name through a temporary file, fsync and rename, so readers see the old or the new file. */
static int write_file_atomic(const char *dir, const char *name, const char *data, size_t len)
{
    char path[4096], tmp[4096 + 8];
    int rc = path_join(path, sizeof path, dir, name);
    if (rc)
        return rc;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return mtr_fail(MTR_EIO, "%s: %s", tmp, strerror(errno));
    bool ok = fwrite(data, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int e = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        return mtr_fail(MTR_EIO, "%s: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        return mtr_fail(MTR_EIO, "%s: %s", path, strerror(e));
    }
    return 0;
}

/* Sets a key; remembers a failed allocation in *bad (checked once at the end). */
static void jset(json_t *obj, const char *key, json_t *v, bool *bad)
{
    if (!v || !obj || json_object_set_new(obj, key, v) != 0)
        *bad = true;
}

static void jpush(json_t *arr, json_t *v, bool *bad)
{
    if (!v || !arr || json_array_append_new(arr, v) != 0)
        *bad = true;
}

static json_t *json_u32_list(const uint32_t *v, size_t n, bool *bad)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        jpush(a, json_integer(v[i]), bad);
    return a;
}

static const char *store_name(const mtr_synth_opts *o)
{
    return o->store_logits && o->store_topk ? "both" : o->store_topk ? "topk" : "logits";
}

/* Every parameter that shapes the data (threads and progress do not). Also the writer's capture_settings. */
static json_t *params_json(const synth_model *m, const mtr_synth_opts *o, const char *model_id, bool *bad)
{
    json_t *p = json_object();
    jset(p, "generator", json_string("moetrace-capture synth"), bad);
    jset(p, "seed", json_integer((json_int_t)o->seed), bad);
    jset(p, "layers", json_integer(m->L), bad);
    jset(p, "experts", json_integer(m->E), bad);
    jset(p, "top_k", json_integer(m->K), bad);
    jset(p, "langs", json_string(opt_langs(o)), bad);
    jset(p, "datasets", json_string(opt_datasets(o)), bad);
    jset(p, "units", json_integer(o->n_units), bad);
    jset(p, "units_written", json_integer(m->n_units), bad);
    jset(p, "len_mean", json_real(o->len_mean), bad);
    jset(p, "len_min", json_integer(o->len_min), bad);
    jset(p, "len_max", json_integer(o->len_max), bad);
    json_t *band = json_array();
    jpush(band, json_integer(m->band_a), bad);
    jpush(band, json_integer(m->band_b), bad);
    jset(p, "band", band, bad);
    jset(p, "task_experts", json_integer(m->n_te), bad);
    jset(p, "lang_experts", json_integer(m->n_le), bad);
    jset(p, "scale", json_real(o->scale), bad);
    jset(p, "noise", json_real(o->noise), bad);
    jset(p, "seq_noise", json_real(o->seq_noise), bad);
    jset(p, "task_boost", json_real(o->task_boost), bad);
    jset(p, "acc_noise", json_real(o->acc_noise), bad);
    jset(p, "template_tokens", json_integer(SYNTH_TEMPLATE_TOKENS), bad);
    jset(p, "vocab", json_integer(MTR_SYNTH_VOCAB), bad);
    jset(p, "dtype", json_string(mtr_dtype_name(o->stored_dtype)), bad);
    jset(p, "store", json_string(store_name(o)), bad);
    const mtr_writer_opts wdef = MTR_WRITER_OPTS_INIT;
    jset(p, "shard_bytes", json_integer((json_int_t)(o->shard_bytes ? o->shard_bytes : wdef.shard_bytes)), bad);
    jset(p, "target_bytes", json_integer((json_int_t)o->target_bytes), bad);
    jset(p, "model_id", json_string(model_id), bad);
    return p;
}

static const char truth_model_text[] =
    "mu[g,d,l,e] = scale*(alpha[g,l]*1[e in shared[l]] + (1-alpha[g,l])*1[e in own[g,l]])"
    " + task_boost*strength[g]*1[d is a task, l in band, e in task_experts[d,l]];"
    " alpha[g,l] = sharedness[l]*strength[g];"
    " z[t,l,e] = mu[g,d,l,e] + seq_noise*N(0,1) per sequence and (l,e) + noise*N(0,1) per token;"
    " accuracy[g,d] = clip(0.25 + 0.65*strength[g] + acc_noise*N(0,1), 0, 1)";

static json_t *truth_json(const synth_model *m, const mtr_synth_opts *o, const char *model_id, bool *bad)
{
    const size_t L = m->L, D = m->n_ds, G = m->n_langs;
    json_t *t = json_object();
    jset(t, "format", json_string("moetrace-synth-truth"), bad);
    jset(t, "version", json_integer(1), bad);
    jset(t, "generator_version", json_string(MTR_VERSION_STRING), bad);
    jset(t, "indexing",
         json_string("layers are 1-based in 'band' and in [layer, expert] pairs; per-layer arrays list layers 1..L "
                     "in order; experts are 0-based"),
         bad);
    jset(t, "model", json_string(truth_model_text), bad);
    jset(t, "params", params_json(m, o, model_id, bad), bad);
    jset(t, "n_units", json_integer(m->n_units), bad);
    jset(t, "n_sequences", json_integer((json_int_t)m->n_seqs), bad);
    jset(t, "n_tokens", json_integer((json_int_t)m->n_tokens), bad);
    json_t *band = json_array();
    jpush(band, json_integer(m->band_a), bad);
    jpush(band, json_integer(m->band_b), bad);
    jset(t, "band", band, bad);

    json_t *w = json_array();
    for (size_t l = 0; l < L; l++)
        jpush(w, json_real(m->w[l]), bad);
    jset(t, "sharedness", w, bad);

    json_t *shared = json_array();
    for (size_t l = 0; l < L; l++)
        jpush(shared, json_u32_list(&m->own[(m->eng * L + l) * m->n_le], m->n_le, bad), bad);
    jset(t, "shared_experts", shared, bad);

    jset(t, "reference_lang", json_string(MTR_SYNTH_ENGLISH), bad);
    json_t *langs = json_array();
    for (size_t g = 0; g < G; g++) {
        const synth_lang *lg = &m->langs[g];
        json_t *o1 = json_object();
        jset(o1, "lang", json_string(lg->code), bad);
        jset(o1, "strength", json_real(lg->strength), bad);
        jset(o1, "expected_rank", json_integer(lg->rank), bad);
        json_t *alpha = json_array(), *own = json_array();
        for (size_t l = 0; l < L; l++) {
            jpush(alpha, json_real(m->w[l] * lg->strength), bad);
            jpush(own, json_u32_list(&m->own[(g * L + l) * m->n_le], m->n_le, bad), bad);
        }
        jset(o1, "alpha", alpha, bad);
        jset(o1, "own_experts", own, bad);
        jpush(langs, o1, bad);
    }
    jset(t, "languages", langs, bad);

    /* Non-English languages, closest to English (and most accurate) first; ties keep the input order. */
    json_t *order = json_array();
    for (int rank = 1; rank <= (int)G; rank++)
        for (size_t g = 0; g < G; g++)
            if (m->langs[g].rank == rank)
                jpush(order, json_string(m->langs[g].code), bad);
    json_t *eo = json_object();
    jset(eo, "divergence_from_english_in_band", order, bad);
    jset(eo, "accuracy", json_deep_copy(order), bad);
    jset(eo, "note", json_string("expected orders follow strength (most aligned first); lower band divergence "
                                 "and higher accuracy for higher strength"),
         bad);
    jset(t, "expected_order", eo, bad);

    jset(t, "generic_dataset", json_string(m->ds[0].name), bad);
    json_t *tasks = json_array(), *texp = json_object(), *acc = json_object();
    for (size_t d = 1; d < D; d++) {
        jpush(tasks, json_string(m->ds[d].name), bad);
        json_t *pairs = json_array();
        for (uint32_t l = m->band_a; l <= m->band_b; l++)
            for (uint32_t i = 0; i < m->n_te; i++) {
                json_t *pr = json_array();
                jpush(pr, json_integer(l), bad);
                jpush(pr, json_integer(m->task[(d * L + l - 1) * m->n_te + i]), bad);
                jpush(pairs, pr, bad);
            }
        jset(texp, m->ds[d].name, pairs, bad);
        json_t *a = json_object();
        for (size_t g = 0; g < G; g++)
            jset(a, m->langs[g].code, json_real(m->acc[g * D + d]), bad);
        jset(acc, m->ds[d].name, a, bad);
    }
    jset(t, "task_datasets", tasks, bad);
    jset(t, "task_experts", texp, bad);
    jset(t, "accuracy", acc, bad);
    return t;
}

static int write_truth(const synth_model *m, const mtr_synth_opts *o, const char *model_id)
{
    bool bad = false;
    int rc = 0;
    char *text = NULL, *tsv = NULL;
    size_t tsv_len = 0;
    FILE *mf = NULL;
    json_t *t = truth_json(m, o, model_id, &bad);
    if (!bad)
        text = json_dumps(t, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    if (bad || !text) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory building %s", MTR_SYNTH_TRUTH_NAME);
        goto done;
    }
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps leaves no newline; the terminating NUL is replaced and not written */
    rc = write_file_atomic(o->out_dir, MTR_SYNTH_TRUTH_NAME, text, n + 1);
    if (rc)
        goto done;

    mf = open_memstream(&tsv, &tsv_len);
    if (!mf) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory building %s", MTR_SYNTH_ACCURACY_NAME);
        goto done;
    }
    fprintf(mf, "# moetrace-capture synth %s: planted accuracy; seed=%llu langs=%s datasets=%s units=%u\n",
            MTR_VERSION_STRING, (unsigned long long)o->seed, opt_langs(o), opt_datasets(o), m->n_units);
    fprintf(mf, "#lang\ttask\tmetric\tvalue\tn\n");
    for (size_t d = 1; d < m->n_ds; d++)
        for (size_t g = 0; g < m->n_langs; g++)
            fprintf(mf, "%s\t%s\taccuracy\t%.6f\t%u\n", m->langs[g].code, m->ds[d].name, m->acc[g * m->n_ds + d],
                    m->n_units);
    if (fclose(mf) != 0) {
        mf = NULL;
        rc = mtr_fail(MTR_ENOMEM, "out of memory building %s", MTR_SYNTH_ACCURACY_NAME);
        goto done;
    }
    mf = NULL;
    rc = write_file_atomic(o->out_dir, MTR_SYNTH_ACCURACY_NAME, tsv, tsv_len);
done:
    if (mf)
        fclose(mf);
    free(tsv);
    free(text);
    json_decref(t);
    return rc;
}

/* Resume: the run must have been made with the same parameters (its truth.json records them), or its finished
 * shards and the sequences still to come would describe different planted models. A run killed before its
 * truth.json was written has none to compare. */
static int check_resume_params(const synth_model *m, const mtr_synth_opts *o, const char *model_id)
{
    char path[4096];
    int rc = path_join(path, sizeof path, o->out_dir, MTR_SYNTH_TRUTH_NAME);
    if (rc)
        return rc;
    if (access(path, F_OK) != 0)
        return 0;
    json_error_t jerr;
    json_t *t = json_load_file(path, 0, &jerr);
    if (!t)
        return mtr_fail(MTR_EFORMAT, "%s:%d: invalid JSON: %s", path, jerr.line, jerr.text);
    bool bad = false;
    json_t *now = params_json(m, o, model_id, &bad), *then = json_object_get(t, "params");
    if (bad) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
    } else if (!json_is_object(then)) {
        rc = mtr_fail(MTR_EFORMAT, "%s: no 'params' object", path);
    } else {
        const char *key;
        json_t *v;
        json_object_foreach(now, key, v)
        {
            if (json_equal(v, json_object_get(then, key)))
                continue;
            char *was = json_dumps(json_object_get(then, key), JSON_ENCODE_ANY | JSON_COMPACT);
            char *is = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            rc = mtr_fail(MTR_EMISMATCH, "%s: the run was made with %s %s, not %s: resume with its parameters",
                            path, key, was ? was : "(none)", is ? is : "?");
            free(was);
            free(is);
            break;
        }
    }
    json_decref(now);
    json_decref(t);
    return rc;
}

/* ---- the run --------------------------------------------------------------------------------------------- */

static int max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int mtr_synth_run(const mtr_synth_opts *opts, mtr_synth_result *result)
{
    mtr_clear_error();
    int rc = mtr_synth_opts_check(opts);
    if (rc)
        return rc;
    const mtr_synth_opts *o = opts;

    synth_model m;
    mtr_model_info *info = NULL;
    mtr_writer *wr = NULL;
    json_t *settings = NULL;
    char *settings_text = NULL;
    float *logits = NULL, *scratch = NULL;
    int32_t *tok = NULL, *pos = NULL;
    uint8_t *role = NULL;
    synth_seq *batch = NULL;
    bool model_ok = false;

    rc = model_build(&m, o);
    if (rc)
        return rc;
    model_ok = true;

    char model_id[MTR_MAX_NAME];
    if (o->model_id)
        snprintf(model_id, sizeof model_id, "%s", o->model_id);
    else
        snprintf(model_id, sizeof model_id, "synthetic/moe-L%u-E%u", m.L, m.E);

    info = malloc(sizeof *info); /* large (layer map), so not on the stack */
    if (!info) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto cleanup;
    }
    mtr_model_info_init(info, model_id, "synthetic", m.L, m.E, m.K);

    bool bad = false;
    settings = params_json(&m, o, model_id, &bad);
    if (!bad)
        settings_text = json_dumps(settings, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    if (bad || !settings_text) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory");
        goto cleanup;
    }

    const int nt = o->n_threads > 0 ? o->n_threads : max_threads();
    mtr_writer_opts wo = MTR_WRITER_OPTS_INIT;
    wo.stored_dtype = o->stored_dtype;
    wo.store_logits = o->store_logits;
    wo.store_topk = o->store_topk;
    if (o->shard_bytes)
        wo.shard_bytes = o->shard_bytes;
    wo.n_threads = o->n_threads;
    wo.producer = "moetrace-capture synth";
    wo.producer_version = MTR_VERSION_STRING;
    wo.run_id = o->run_id;
    wo.corpus_id = "synthetic";
    wo.capture_settings = settings_text;
    wo.resume = o->resume;
    if (o->resume && (rc = check_resume_params(&m, o, model_id)))
        goto cleanup;
    rc = mtr_writer_create(&wr, o->out_dir, info, &wo);
    if (rc) {
        rc = synth_fail_lib(rc);
        goto cleanup;
    }
    rc = write_truth(&m, o, model_id);
    if (rc)
        goto cleanup;

    /* Batch buffers: enough tokens for a few MiB of logits per thread, and always for one longest sequence. */
    const size_t LE = (size_t)m.L * m.E;
    const uint64_t tok_bytes = (uint64_t)LE * sizeof(float);
    uint64_t budget = SYNTH_BATCH_BYTES_PER_THREAD * (uint64_t)nt;
    budget = budget < SYNTH_BATCH_BYTES_MIN ? SYNTH_BATCH_BYTES_MIN : budget;
    budget = budget > SYNTH_BATCH_BYTES_MAX ? SYNTH_BATCH_BYTES_MAX : budget;
    uint64_t tok_cap = budget / tok_bytes;
    if (tok_cap < o->len_max)
        tok_cap = o->len_max;
    uint64_t plan_cap = m.n_tokens < tok_cap ? m.n_tokens : tok_cap; /* no more than the run needs */
    if (plan_cap < o->len_max)
        plan_cap = o->len_max;
    tok_cap = plan_cap;
    logits = malloc(tok_cap * tok_bytes);
    tok = malloc(tok_cap * sizeof *tok);
    pos = malloc(tok_cap * sizeof *pos);
    role = malloc(tok_cap * sizeof *role);
    scratch = malloc((size_t)nt * LE * sizeof *scratch);
    batch = malloc(SYNTH_BATCH_SEQS_MAX * sizeof *batch);
    if (!logits || !tok || !pos || !role || !scratch || !batch) {
        rc = mtr_fail(MTR_ENOMEM, "out of memory for a batch of %llu tokens", (unsigned long long)tok_cap);
        goto cleanup;
    }

    const size_t G = m.n_langs;
    const uint64_t per_ds = (uint64_t)m.n_units * G;
    uint64_t next = 0, raw_done = 0, skipped = 0;
    char unit_id[32];
    while (next < m.n_seqs) {
        uint32_t nb = 0;
        uint64_t ntok = 0;
        while (next < m.n_seqs && nb < SYNTH_BATCH_SEQS_MAX) {
            if (o->resume && mtr_writer_has_seq(wr, next)) { /* every sequence is its own stream: skip freely */
                skipped++;
                next++;
                continue;
            }
            synth_seq q;
            q.seq_id = next;
            q.d = (uint32_t)(next / per_ds);
            q.u = (uint32_t)(next % per_ds / G);
            q.g = (uint32_t)(next % G);
            q.n_tokens = seq_length(&m, o, q.d, q.u, q.g);
            if (ntok + q.n_tokens > tok_cap)
                break;
            q.tok0 = ntok;
            ntok += q.n_tokens;
            batch[nb++] = q;
            next++;
        }

#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (uint32_t i = 0; i < nb; i++) {
            const synth_seq *q = &batch[i];
            gen_sequence(&m, o, q, scratch + (size_t)thread_num() * LE, logits + q->tok0 * LE, tok + q->tok0,
                         pos + q->tok0, role + q->tok0);
        }

        for (uint32_t i = 0; i < nb; i++) {
            const synth_seq *q = &batch[i];
            snprintf(unit_id, sizeof unit_id, "u%06u", q->u);
            mtr_seq_meta meta = {q->seq_id, unit_id, m.langs[q->g].code, m.ds[q->d].name, q->n_tokens, 0};
            rc = mtr_writer_append(wr, &meta, tok + q->tok0, pos + q->tok0, role + q->tok0, logits + q->tok0 * LE,
                                   MTR_DTYPE_F32);
            if (rc) {
                rc = synth_fail_lib(rc);
                goto cleanup;
            }
        }
        raw_done += ntok * tok_bytes;
        if (o->progress)
            o->progress(o->progress_ctx, next, m.n_seqs, raw_done);
    }

    /* Finish the last shard first so that the statistics count it. */
    rc = mtr_writer_flush(wr);
    if (rc) {
        rc = synth_fail_lib(rc);
        goto cleanup;
    }
    mtr_writer_stats st;
    mtr_writer_get_stats(wr, &st);
    rc = mtr_writer_close(wr);
    wr = NULL;
    if (rc) {
        rc = synth_fail_lib(rc);
        goto cleanup;
    }
    if (result) {
        result->n_units = m.n_units;
        result->band_first = m.band_a;
        result->band_last = m.band_b;
        result->n_sequences = st.n_sequences;
        result->n_tokens = st.n_tokens;
        result->raw_bytes = st.raw_bytes;
        result->stored_bytes = st.stored_bytes;
        result->n_shards = st.n_shards;
        result->n_skipped = skipped;
    }

cleanup:
    mtr_writer_destroy(wr);
    free(batch);
    free(scratch);
    free(role);
    free(pos);
    free(tok);
    free(logits);
    free(settings_text);
    json_decref(settings);
    free(info);
    if (model_ok)
        model_free(&m);
    return rc;
}
