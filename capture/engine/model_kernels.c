/* model_kernels.c — element-wise arithmetic of the engine's f32 path: the attention softmax row, RMSNorm and the
 * gated SiLU. Compiled with -O3 -ffast-math so exp vectorises through glibc's vector math (libmvec), with an AVX2
 * clone picked at run time; nothing here meets an infinity or NaN that it did not get as input (masked keys are
 * outside the ranges these functions see). bf16/f16 models take the rounding path in model_forward.c instead. */
#include <math.h>

#include "model_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MTR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MTR_CLONES
#endif

MTR_CLONES void mtr_mk_softmax(float *row, uint32_t n, float scale)
{
    float mx = row[0] * scale;
    for (uint32_t j = 1; j < n; j++) mx = fmaxf(mx, row[j] * scale);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (uint32_t j = 0; j < n; j++) {
        float v = expf(row[j] * scale - mx);
        row[j] = v;
        sum += v;
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (uint32_t j = 0; j < n; j++) row[j] *= inv;
}

MTR_CLONES void mtr_mk_rmsnorm(float *out, const float *in, const float *w, uint32_t d, float eps)
{
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (uint32_t j = 0; j < d; j++) ss += in[j] * in[j];
    const float r = 1.f / sqrtf(ss / (float)d + eps);
#pragma omp simd
    for (uint32_t j = 0; j < d; j++) out[j] = in[j] * r * w[j];
}

MTR_CLONES void mtr_mk_silu_mul(float *g, const float *u, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}
