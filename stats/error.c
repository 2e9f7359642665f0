/* error.c — GSL error-handler set-up and small shared helpers of libmtrstats (errors go through libmoetrace's
 * mtr_fail / mtr_errmsg). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_errno.h>

#include "stats_internal.h"


static pthread_once_t gsl_once = PTHREAD_ONCE_INIT;
static void gsl_off(void) { gsl_set_error_handler_off(); }
void mtr_stats_gsl_init(void) { pthread_once(&gsl_once, gsl_off); }

gsl_rng *mtr_stats_rng(uint64_t seed)
{
    mtr_stats_gsl_init();
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    if (!r) return NULL;
    gsl_rng_set(r, (unsigned long)(seed & 0xffffffffu));
    return r;
}

char *mtr_stats_strdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d) mtr_fail(MTR_ENOMEM, "out of memory");
    return d;
}

int mtr_stats_parse_double(double *out, const char *s)
{
    char *end;
    if (!s || !*s) return -1;
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0' || (errno == ERANGE && isinf(v))) return -1;
    *out = v;
    return 0;
}

int mtr_stats_parse_u32(uint32_t *out, const char *s)
{
    char *end;
    if (!s || *s < '0' || *s > '9') return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno || v > 0xffffffffull) return -1;
    *out = (uint32_t)v;
    return 0;
}
