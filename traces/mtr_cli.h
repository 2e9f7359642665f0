/* mtr_cli.h — the command-line conventions every moetrace program shares (lib/libmtr_cli.a): one error printer
 * ("program[ verb]: detail", one line on stderr), one exit-status rule (mtr_exit_code in moetrace.h), one option
 * parser (--name VALUE, --name=VALUE, --flag, -h; other arguments handed back as positional), option values and
 * the small formatting helpers of progress lines. Nothing here touches a trace; it prints only to stderr. */
#ifndef MTR_CLI_H
#define MTR_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moetrace.h"

enum { MTR_EXIT_OK = 0, MTR_EXIT_USAGE = 1, MTR_EXIT_DATA = 2, MTR_EXIT_IO = 3 };

/* The "Exit status:" paragraph of every --help. */
extern const char mtr_cli_exit_text[];

/* Name the program for mtr_cli_error ("moetrace-capture"); borrowed, call once at the start of main. */
void mtr_cli_set_prog(const char *prog);
/* One line on stderr: "program[ verb]: message" (verb may be NULL). */
void mtr_cli_error(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Report a failed library call: "program[ verb]: [what: ]detail" where detail is mtr_errmsg() (or the code's
 * name when empty); returns mtr_exit_code(err). what may be NULL; it is left out when detail already starts with
 * it (mtr_cli_names), so a path is never printed twice. */
int mtr_cli_fail(const char *verb, int err, const char *what);
/* Whether detail starts by naming what: what itself, followed by its end, ':', ' ' or '/' (a file inside the
 * directory what). A caller adding what as context to such a detail would print it twice. */
bool mtr_cli_names(const char *detail, const char *what);

/* ---- options ---- */
typedef struct {
    const char *name; /* without the leading "--" */
    int id;
    bool has_arg;
} mtr_cli_option; /* a one-letter name ("o") is the short option -o */

#define MTR_CLI_HELP (-1)       /* -h or --help was given */
#define MTR_CLI_POSITIONAL (-2) /* argv[*i] is not an option: *val is it */
/* Parse the argument at argv[*i] (moving *i past a separate value): 0 with *opt and *val (NULL for a flag) set
 * for --name, --name=VALUE, --name VALUE, -x and -x VALUE; MTR_CLI_HELP for -h / --help (when no option of that
 * name is declared); MTR_CLI_POSITIONAL with *val = the argument when it does not start with "-" (or is "-"
 * itself), and for the argument after a "--"; else a one-line error naming verb and MTR_EXIT_USAGE. The usual
 * loop: for (int i = 1; i < argc; i++) { int r = mtr_cli_next(...); ... switch (opt->id) ... } */
int mtr_cli_next(const char *verb, int argc, char **argv, int *i, const mtr_cli_option *opts, size_t n_opts,
                 const mtr_cli_option **opt, const char **val);

/* The short form of the option loop for commands whose ids are all > 0 and that take at most one positional
 * argument: returns the option's id (*val its value, NULL for a flag), 'h' for an undeclared -h / --help, 0 for a
 * positional argument (kept in *first_pos when that is still NULL; the caller decides whether it may have one), or
 * -1 after a one-line usage error. */
int mtr_cli_id(const char *verb, int argc, char **argv, int *i, const mtr_cli_option *opts, size_t n_opts,
               const char **val, const char **first_pos);

/* Option values: 0 on success, -1 if s is not a valid value (nothing written). */
int mtr_cli_parse_u64(uint64_t *out, const char *s);
int mtr_cli_parse_u32_in(uint32_t *out, const char *s, uint32_t lo, uint32_t hi);
/* A finite number filling the whole string. */
int mtr_cli_parse_double(double *out, const char *s);
/* Byte count with an optional binary suffix: 123, 64K, 512M, 2G, 1T (also KB, KiB, ...). */
int mtr_cli_parse_bytes(uint64_t *out, const char *s);

/* ---- progress ---- */
double mtr_cli_now(void); /* monotonic seconds */
/* "123 B", "1.5 MiB", ... */
void mtr_cli_format_bytes(char *buf, size_t cap, uint64_t n);

#endif
