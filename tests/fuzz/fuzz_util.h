/* fuzz_util.h — helpers shared by the file-reading libFuzzer targets (tests/fuzz/fuzz_*.c): a private scratch
 * directory made once per process, writing an input (or one part of it) to a named file there, and splitting an
 * input into parts at a separator line so one input can stand for several files (a FLORES directory, a tables
 * directory, a steering file with its model). Header-only: every target is one translation unit. */
#ifndef MTR_FUZZ_UTIL_H
#define MTR_FUZZ_UTIL_H

#include <dirent.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* parts of one input are separated by this line ("\n--8<--\n"); the seed corpora use it */
#define FUZZ_SEP "\n--8<--\n"
#define FUZZ_SEP_LEN 8
#define FUZZ_MAX_PARTS 8

/* The scratch directory (created on first use under $TMPDIR, removed by nobody: libFuzzer ends by exit or crash,
 * so it is made once and reused; each file is rewritten per input). */
/* moetrace-stats' table loader (fuzz_tables_open.c): 0 or the mtr_err of mtr_tables_open */
int fuzz_tables_open(const char *path);

static inline const char *fuzz_dir(void)
{
    static char dir[256];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/mtr-fuzz-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) abort();
    }
    return dir;
}

/* Write n bytes to fuzz_dir()/name (replacing it); the path goes to path (cap bytes). 0, or -1 on I/O failure. */
static inline int fuzz_write(char *path, size_t cap, const char *name, const uint8_t *data, size_t n)
{
    snprintf(path, cap, "%s/%s", fuzz_dir(), name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, data + done, n - done);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    close(fd);
    return 0;
}

/* Split data at FUZZ_SEP into at most max parts (the last part keeps any further separators): part i is
 * (ptr[i], len[i]). Returns the number of parts (>= 1). */
static inline size_t fuzz_split(const uint8_t **ptr, size_t *len, size_t max, const uint8_t *data, size_t n)
{
    size_t k = 0, start = 0;
    for (size_t i = 0; k + 1 < max && i + FUZZ_SEP_LEN <= n; i++)
        if (memcmp(data + i, FUZZ_SEP, FUZZ_SEP_LEN) == 0) {
            ptr[k] = data + start;
            len[k++] = i - start;
            start = i + FUZZ_SEP_LEN;
            i = start - 1;
        }
    ptr[k] = data + start;
    len[k++] = n - start;
    return k;
}

/* An empty directory fuzz_dir()/sub for this input (files of the previous input removed); its path goes to path. */
static inline void fuzz_empty_dir(char *path, size_t cap, const char *sub)
{
    snprintf(path, cap, "%s/%s", fuzz_dir(), sub);
    mkdir(path, 0700);
    DIR *d = opendir(path);
    if (!d) abort();
    struct dirent *e;
    char f[1024];
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' || (e->d_name[1] && (e->d_name[1] != '.' || e->d_name[2]))) {
            snprintf(f, sizeof f, "%s/%s", path, e->d_name);
            unlink(f);
        }
    closedir(d);
}

#endif
