/* stats_internal.h — private helpers shared by the files of libmtrstats (not installed). */
#ifndef MTR_STATS_INTERNAL_H
#define MTR_STATS_INTERNAL_H

#include <gsl/gsl_rng.h>

#include "mtr_stats.h"

/* Switch GSL's abort-on-error handler off (once per process, thread-safe). */
void mtr_stats_gsl_init(void);
/* A mt19937 generator seeded with seed mod 2^32; NULL on allocation failure. */
gsl_rng *mtr_stats_rng(uint64_t seed);
/* strdup that reports MTR_ENOMEM through mtr_fail (NULL on failure). */
char *mtr_stats_strdup(const char *s);
/* Parse a finite or NaN double that fills the whole string; 0 or -1. */
int mtr_stats_parse_double(double *out, const char *s);
/* Parse an unsigned integer that fills the whole string; 0 or -1. */
int mtr_stats_parse_u32(uint32_t *out, const char *s);

#endif
