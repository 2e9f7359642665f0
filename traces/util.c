/* util.c — the small helpers of mtr_util.h shared by every moetrace library: whole-file reads, UTF-8
 * validation, growable buffers. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mtr_util.h"

/* ---- files ----------------------------------------------------------------------------------------------- */

int mtr_read_file(char **out, size_t *len, const char *path, size_t max_bytes)
{
    *out = NULL;
    *len = 0;
    int rc = 0;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = errno == ENOENT ? mtr_fail(MTR_ENOTFOUND, "%s: no such file", path)
                             : mtr_fail(MTR_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = mtr_fail(MTR_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = mtr_fail(MTR_EINVAL, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        rc = mtr_fail(MTR_EFORMAT, "%s: %llu bytes, more than the %zu this file may have", path,
                      (unsigned long long)st.st_size, max_bytes);
        goto out;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    buf = malloc(cap);
    if (!buf) {
        rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        if (n + 1 == cap) { /* the file grew while being read */
            if (cap > max_bytes) {
                rc = mtr_fail(MTR_EFORMAT, "%s: grew past the %zu bytes this file may have", path, max_bytes);
                goto out;
            }
            char *q = realloc(buf, cap * 2);
            if (!q) {
                rc = mtr_fail(MTR_ENOMEM, "%s: out of memory", path);
                goto out;
            }
            buf = q;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = mtr_fail(MTR_EIO, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    if (fd >= 0) close(fd);
    return rc;
}

/* ---- UTF-8 ----------------------------------------------------------------------------------------------- */

size_t mtr_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;
        if (c == 0xED && s[1] >= 0xA0) return 0;
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;
        if (c == 0xF4 && s[1] >= 0x90) return 0;
        return 4;
    }
    return 0;
}

size_t mtr_utf8_valid_prefix(const char *s, size_t n, bool nul_ok)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        /* ASCII runs eight bytes at a time (a NUL byte drops to the byte loop when it matters) */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (w & 0x8080808080808080ULL) break;
            if (!nul_ok && ((w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL)) break;
            i += 8;
        }
        if (i >= n) break;
        if (u[i] == 0 && !nul_ok) return i;
        size_t k = mtr_utf8_seq(u + i, n - i);
        if (!k) return i;
        i += k;
    }
    return n;
}

/* ---- buffers --------------------------------------------------------------------------------------------- */

int mtr_buf_reserve(mtr_buf *b, size_t extra)
{
    if (b->n + extra + 1 <= b->cap) return 0;
    if (b->n + extra + 1 > UINT32_MAX) return mtr_fail(MTR_EINVAL, "text longer than 4 GiB");
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return mtr_fail(MTR_ENOMEM, "out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return 0;
}

int mtr_buf_put(mtr_buf *b, const void *p, size_t n)
{
    int rc = mtr_buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

void mtr_buf_free(mtr_buf *b)
{
    if (!b) return;
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}
