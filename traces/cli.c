/* cli.c — the command-line conventions shared by every moetrace program (traces/mtr_cli.h): one-line errors,
 * exit statuses, the option parser and option values. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mtr_cli.h"

const char mtr_cli_exit_text[] =
    "Exit status:\n"
    "  0  success\n"
    "  1  bad usage: unknown command or option, bad option value, an output that already exists\n"
    "  2  bad input data: malformed, truncated or inconsistent files, unknown names, missing values\n"
    "  3  I/O or internal failure\n";

static const char *prog = "moetrace";

void mtr_cli_set_prog(const char *p) { prog = p ? p : "moetrace"; }

void mtr_cli_error(const char *verb, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, verb ? "%s %s: " : "%s: ", prog, verb);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

bool mtr_cli_names(const char *detail, const char *what)
{
    if (!detail || !what || !*what) return false;
    size_t n = strlen(what);
    if (strncmp(detail, what, n) != 0) return false;
    if (what[n - 1] == '/') return true;
    return detail[n] == '\0' || detail[n] == ':' || detail[n] == ' ' || detail[n] == '/';
}

int mtr_cli_fail(const char *verb, int err, const char *what)
{
    const char *detail = mtr_errmsg()[0] ? mtr_errmsg() : mtr_strerror(err);
    if (what && *what && !mtr_cli_names(detail, what))
        mtr_cli_error(verb, "%s: %s", what, detail);
    else
        mtr_cli_error(verb, "%s", detail);
    return mtr_exit_code(err);
}

/* ---- options --------------------------------------------------------------------------------------------- */

int mtr_cli_next(const char *verb, int argc, char **argv, int *i, const mtr_cli_option *opts, size_t n_opts,
                 const mtr_cli_option **opt, const char **val)
{
    const char *arg = argv[*i];
    *opt = NULL;
    *val = NULL;
    if (strcmp(arg, "-h") == 0) return MTR_CLI_HELP;
    if (strcmp(arg, "--") == 0) {
        if (*i + 1 >= argc) {
            *val = NULL;
            return MTR_CLI_POSITIONAL;
        }
        *val = argv[++*i];
        return MTR_CLI_POSITIONAL;
    }
    if (arg[0] != '-' || arg[1] == '\0') {
        *val = arg;
        return MTR_CLI_POSITIONAL;
    }
    if (strncmp(arg, "--", 2) != 0) {
        for (size_t k = 0; arg[2] == '\0' && k < n_opts; k++)
            if (opts[k].name[0] == arg[1] && opts[k].name[1] == '\0') *opt = &opts[k];
        if (!*opt) {
            mtr_cli_error(verb, "unknown option '%s' (see --help)", arg);
            return MTR_EXIT_USAGE;
        }
        if ((*opt)->has_arg) {
            if (*i + 1 >= argc) {
                mtr_cli_error(verb, "%s needs a value", arg);
                return MTR_EXIT_USAGE;
            }
            *val = argv[++*i];
        }
        return 0;
    }
    const char *name = arg + 2, *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    for (size_t k = 0; k < n_opts; k++)
        if (strlen(opts[k].name) == name_len && strncmp(opts[k].name, name, name_len) == 0) *opt = &opts[k];
    if (!*opt) {
        if (name_len == 4 && strncmp(name, "help", 4) == 0 && !eq) return MTR_CLI_HELP;
        mtr_cli_error(verb, "unknown option '--%.*s' (see --help)", (int)name_len, name);
        return MTR_EXIT_USAGE;
    }
    if ((*opt)->has_arg) {
        if (eq)
            *val = eq + 1;
        else if (*i + 1 < argc)
            *val = argv[++*i];
        else {
            mtr_cli_error(verb, "--%s needs a value", (*opt)->name);
            return MTR_EXIT_USAGE;
        }
    } else if (eq) {
        mtr_cli_error(verb, "--%s takes no value", (*opt)->name);
        return MTR_EXIT_USAGE;
    }
    return 0;
}

int mtr_cli_id(const char *verb, int argc, char **argv, int *i, const mtr_cli_option *opts, size_t n_opts,
               const char **val, const char **first_pos)
{
    const mtr_cli_option *opt = NULL;
    int rc = mtr_cli_next(verb, argc, argv, i, opts, n_opts, &opt, val);
    if (rc == MTR_CLI_HELP) return 'h';
    if (rc == MTR_CLI_POSITIONAL) {
        if (!*first_pos) *first_pos = *val;
        return 0;
    }
    return rc ? -1 : opt->id;
}

/* ---- option values --------------------------------------------------------------------------------------- */

int mtr_cli_parse_u64(uint64_t *out, const char *s)
{
    if (!s || *s < '0' || *s > '9') return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

int mtr_cli_parse_u32_in(uint32_t *out, const char *s, uint32_t lo, uint32_t hi)
{
    uint64_t v;
    if (mtr_cli_parse_u64(&v, s) || v < lo || v > hi) return -1;
    *out = (uint32_t)v;
    return 0;
}

int mtr_cli_parse_double(double *out, const char *s)
{
    if (!s || !*s) return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

int mtr_cli_parse_bytes(uint64_t *out, const char *s)
{
    if (!s || *s < '0' || *s > '9') return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) return -1;
    int shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: return -1;
    }
    if (shift && (strcmp(end, "") == 0 || strcmp(end, "B") == 0 || strcmp(end, "iB") == 0)) end += strlen(end);
    if (*end) return -1;
    if (shift && v > (UINT64_MAX >> shift)) return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/* ---- progress -------------------------------------------------------------------------------------------- */

double mtr_cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void mtr_cli_format_bytes(char *buf, size_t cap, uint64_t n)
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
