/* testutil.h — shared helpers for the unit tests: deterministic logits, temp dirs, guard bytes. */
#ifndef MTR_TESTUTIL_H
#define MTR_TESTUTIL_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moetrace.h"

static inline uint64_t tu_hash(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* A logit that depends only on (seq, token, layer, expert): tests recompute what they wrote. */
static inline float tu_logit(uint64_t seq, uint32_t t, uint32_t l, uint32_t e)
{
    uint64_t h = tu_hash(seq * 0x100000001b3ULL ^ tu_hash(((uint64_t)t << 32) ^ ((uint64_t)l << 16) ^ e));
    return (float)((double)(h >> 11) / 9007199254740992.0 * 16.0 - 8.0);
}

static inline float *tu_make_logits(uint64_t seq, uint32_t T, uint32_t L, uint32_t E)
{
    float *z = malloc((size_t)T * L * E * sizeof *z);
    for (uint32_t t = 0; t < T; t++)
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t e = 0; e < E; e++) z[((size_t)t * L + l) * E + e] = tu_logit(seq, t, l, e);
    return z;
}

/* A fresh empty directory under $TMPDIR (or /tmp); path in buf. */
static inline void tu_tmpdir(char *buf, size_t cap, const char *tag)
{
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(buf, cap, "%s/mtr-%s-XXXXXX", base, tag);
    ck_assert_ptr_nonnull(mkdtemp(buf));
}

static inline void tu_rmrf(const char *path)
{
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    ck_assert_int_eq(system(cmd), 0);
}

#define TU_GUARD 0x5a
#define TU_GUARD_N 64
/* malloc n bytes followed by TU_GUARD_N guard bytes */
static inline void *tu_guarded(size_t n)
{
    unsigned char *p = malloc(n + TU_GUARD_N);
    memset(p + n, TU_GUARD, TU_GUARD_N);
    return p;
}
static inline int tu_guard_ok(const void *p, size_t n)
{
    const unsigned char *q = (const unsigned char *)p + n;
    for (int i = 0; i < TU_GUARD_N; i++)
        if (q[i] != TU_GUARD) return 0;
    return 1;
}

#define TU_OK(expr)                                                                            \
    do {                                                                                       \
        int tu_rc_ = (expr);                                                                   \
        ck_assert_msg(tu_rc_ == 0, "%s -> %s: %s", #expr, mtr_strerror(tu_rc_), mtr_errmsg()); \
    } while (0)

#endif
