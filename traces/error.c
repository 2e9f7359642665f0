/* error.c — pinned error codes, their names, and the per-thread detail message behind mtr_errmsg(). */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char tl_msg[1024];

const char *mtr_strerror(int err)
{
#define MTR_X_STR(name, val, str) \
    case val:                     \
        return str;
    switch (err) {
        MTR_ERROR_LIST(MTR_X_STR)
    }
#undef MTR_X_STR
    return "unknown error";
}

const char *mtr_errmsg(void) { return tl_msg; }

void mtr_clear_error(void) { tl_msg[0] = '\0'; }

int mtr_fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_msg, sizeof tl_msg, fmt, ap);
    va_end(ap);
    /* one line: fold any newline a caller's string smuggled in */
    for (char *p = tl_msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return err;
}
