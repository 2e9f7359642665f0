/* error.c — pinned error codes, their names, the per-thread detail message behind mtr_errmsg() (the one error
 * channel of every moetrace library) and the exit status each code maps to. */
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
    /* formatted aside first: the arguments may point into tl_msg itself (a caller adding context to the detail
     * of a failed call) */
    char tmp[sizeof tl_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(tl_msg, tmp, sizeof tl_msg);
    /* one line: fold any newline a caller's string smuggled in */
    for (char *p = tl_msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return err;
}

int mtr_exit_code(int err)
{
    switch (err) {
    case MTR_OK:
        return 0;
    case MTR_EINVAL:
    case MTR_EEXIST:
        return 1;
    case MTR_EIO:
    case MTR_ENOMEM:
    case MTR_EHDF5:
        return 3;
    default:
        return err < 0 ? 2 : 3;
    }
}
