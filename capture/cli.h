/* cli.h — helpers shared by the moetrace-capture commands (capture/cmd_*.c) and their entry points.
 * A new command is a file capture/cmd_NAME.c defining cmd_NAME and NAME_help, declared here and listed in the
 * command table of capture_main.c. */
#ifndef MTR_CAPTURE_CLI_H
#define MTR_CAPTURE_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "moetrace.h"

#define PROG "moetrace-capture"

enum { EXIT_OK = 0, EXIT_USAGE = 1, EXIT_DATA = 2, EXIT_IO = 3 };

extern const char exit_status_text[];

/* One line on stderr: "moetrace-capture[ cmd]: message". */
void errorf(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Exit status for a library error code (0 / 1 usage / 2 data / 3 I/O). */
int exit_code_for(int err);
double now_seconds(void);
void print_version(void);
/* "123 B", "1.5 MiB", ... */
void format_bytes(char *buf, size_t cap, uint64_t n);
/* Option values: 0 on success, -1 if s is not a valid value (nothing written). */
int parse_u64(uint64_t *out, const char *s);
int parse_u32_in(uint32_t *out, const char *s, uint32_t lo, uint32_t hi);
int parse_double(double *out, const char *s);
/* Byte count with an optional binary suffix: 123, 64K, 512M, 2G, 1T (also KB, KiB, ...). */
int parse_bytes(uint64_t *out, const char *s);

/* ---- options: --name VALUE, --name=VALUE, --flag, and -h ---- */
typedef struct {
    const char *name; /* without the leading "--" */
    int id;
    bool has_arg;
} cli_option;

#define CLI_HELP (-1)
/* Parse the option at argv[*i] (moving *i past a separate value): 0 with *opt and *val (NULL for a flag) set,
 * CLI_HELP for -h, or EXIT_USAGE after a one-line error naming cmd. */
int cli_next_option(const char *cmd, int argc, char **argv, int *i, const cli_option *opts, size_t n_opts,
                    const cli_option **opt, const char **val);

/* ---- commands ---- */
int cmd_synth(int argc, char **argv);
void synth_help(void);
int cmd_tokenize(int argc, char **argv);
void tokenize_help(void);
int cmd_ingest(int argc, char **argv);
void ingest_help(void);
int cmd_run(int argc, char **argv);
void run_help(void);

#endif
