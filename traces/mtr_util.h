/* mtr_util.h — small helpers every moetrace library needs once: whole-file reads with a size cap, UTF-8
 * validation and a growable byte buffer. Part of libmoetrace; errors go through mtr_fail / mtr_errmsg. */
#ifndef MTR_UTIL_H
#define MTR_UTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "moetrace.h"

/* Read the regular file at path whole into *out (malloc'd, NUL-terminated; free with free()), its length in *len.
 * Refuses files larger than max_bytes before allocating. Errors: MTR_ENOTFOUND (no such file), MTR_EINVAL (not a
 * regular file), MTR_EFORMAT (larger than max_bytes), MTR_EIO, MTR_ENOMEM; each detail names path. A file that
 * grows while it is read is read to its end. */
MTR_API int mtr_read_file(char **out, size_t *len, const char *path, size_t max_bytes);

/* Length of the longest prefix of s[0..n) that is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates,
 * nothing past U+10FFFF, no sequence cut at the end); n when all of it is. With nul_ok false a NUL byte also
 * ends the prefix (it would end a C string early). */
MTR_API size_t mtr_utf8_valid_prefix(const char *s, size_t n, bool nul_ok);
/* Length (1-4) of the well-formed UTF-8 sequence at s (n > 0), 0 if it is not one. */
MTR_API size_t mtr_utf8_seq(const unsigned char *s, size_t n);

/* A growable byte buffer, always NUL-terminated once something was put (p may be NULL while empty). */
typedef struct {
    char *p;
    size_t n, cap;
} mtr_buf;
#define MTR_BUF_INIT {NULL, 0, 0}
/* Room for extra more bytes plus the terminator; 0 or MTR_ENOMEM (MTR_EINVAL past 4 GiB). */
MTR_API int mtr_buf_reserve(mtr_buf *b, size_t extra);
/* Append n bytes of p; 0 or an error of mtr_buf_reserve. */
MTR_API int mtr_buf_put(mtr_buf *b, const void *p, size_t n);
/* Release the memory and empty the buffer; accepts NULL. */
MTR_API void mtr_buf_free(mtr_buf *b);

#endif
