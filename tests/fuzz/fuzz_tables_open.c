/* fuzz_tables_open.c — moetrace-stats' table loader for fuzz_summaries.c, in a unit of its own: mtr_stats.h's
 * mtr_tables (a type) and mtr_reduce.h's mtr_tables (a function) cannot meet in one file. */
#include "fuzz_util.h"
#include "mtr_stats.h"

int fuzz_tables_open(const char *path)
{
    mtr_tables *t = NULL;
    int rc = mtr_tables_open(&t, path);
    mtr_tables_free(t);
    return rc;
}
