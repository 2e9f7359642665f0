/* cli.c — helpers shared by the moetrace-capture commands: one-line errors, exit codes, option values. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

const char exit_status_text[] =
    "Exit status:\n"
    "  0  success\n"
    "  1  bad usage: unknown command or option, bad option value, --out already holds a run\n"
    "  2  bad input data\n"
    "  3  I/O or internal failure\n";

/* One line on stderr: "moetrace-capture[ cmd]: message". */
void errorf(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, cmd ? "%s %s: " : "%s: ", PROG, cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int exit_code_for(int err)
{
    switch (err) {
    case MTR_OK:
        return EXIT_OK;
    case MTR_EINVAL:
    case MTR_EEXIST:
        return EXIT_USAGE;
    case MTR_EFORMAT:
    case MTR_EVERSION:
    case MTR_EPARTIAL:
    case MTR_ECORRUPT:
    case MTR_EMISMATCH:
    case MTR_ETRUNCATED:
    case MTR_EDUP:
        return EXIT_DATA;
    default:
        return EXIT_IO;
    }
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void format_bytes(char *buf, size_t cap, uint64_t n)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double x = (double)n;
    int i = 0;
    while (x >= 1024.0 && i < 5) {
        x /= 1024.0;
        i++;
    }
    if (i == 0)
        snprintf(buf, cap, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, cap, "%.1f %s", x, unit[i]);
}

/* ---- option values --------------------------------------------------------------------------------------- */

int parse_u64(uint64_t *out, const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int parse_u32_in(uint32_t *out, const char *s, uint32_t lo, uint32_t hi)
{
    uint64_t v;
    if (parse_u64(&v, s) || v < lo || v > hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int parse_double(double *out, const char *s)
{
    if (!s || !*s)
        return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s)
        return -1;
    *out = v;
    return 0;
}

/* Byte count with an optional binary suffix: 123, 64K, 512M, 2G, 1T (also KB, KiB, ...). */
int parse_bytes(uint64_t *out, const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    int shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default:
        return -1;
    }
    if (shift && (strcmp(end, "") == 0 || strcmp(end, "B") == 0 || strcmp(end, "iB") == 0))
        end += strlen(end);
    if (*end)
        return -1;
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}


void print_version(void)
{
    printf("%s %s (trace format %d.%d)\n", PROG, MTR_VERSION_STRING, MTR_FORMAT_VERSION, MTR_FORMAT_MINOR);
}

int cli_next_option(const char *cmd, int argc, char **argv, int *i, const cli_option *opts, size_t n_opts,
                    const cli_option **opt, const char **val)
{
    const char *arg = argv[*i];
    *opt = NULL;
    *val = NULL;
    if (strcmp(arg, "-h") == 0) return CLI_HELP;
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
        errorf(cmd, "unexpected argument '%s' (see --help)", arg);
        return EXIT_USAGE;
    }
    const char *name = arg + 2, *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    for (size_t k = 0; k < n_opts; k++)
        if (strlen(opts[k].name) == name_len && strncmp(opts[k].name, name, name_len) == 0) *opt = &opts[k];
    if (!*opt) {
        errorf(cmd, "unknown option '--%.*s' (see --help)", (int)name_len, name);
        return EXIT_USAGE;
    }
    if ((*opt)->has_arg) {
        if (eq)
            *val = eq + 1;
        else if (*i + 1 < argc)
            *val = argv[++*i];
        else {
            errorf(cmd, "--%s needs a value", (*opt)->name);
            return EXIT_USAGE;
        }
    } else if (eq) {
        errorf(cmd, "--%s takes no value", (*opt)->name);
        return EXIT_USAGE;
    }
    return 0;
}
