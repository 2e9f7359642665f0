/* cli.h — helpers shared by the moetrace-capture commands (capture/cmd_*.c) and their entry points.
 * A new command is a file capture/cmd_NAME.c defining cmd_NAME and NAME_help, declared here and listed in the
 * command table of capture_main.c. */
#ifndef MTR_CAPTURE_CLI_H
#define MTR_CAPTURE_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "mtr_cli.h"

#define PROG "moetrace-capture"

/* The shared command-line conventions (traces/mtr_cli.h) under the short names the commands use. */
enum { EXIT_OK = MTR_EXIT_OK, EXIT_USAGE = MTR_EXIT_USAGE, EXIT_DATA = MTR_EXIT_DATA, EXIT_IO = MTR_EXIT_IO };
#define exit_status_text mtr_cli_exit_text
#define errorf mtr_cli_error
#define exit_code_for mtr_exit_code
#define now_seconds mtr_cli_now
#define format_bytes mtr_cli_format_bytes
#define parse_u64 mtr_cli_parse_u64
#define parse_u32_in mtr_cli_parse_u32_in
#define parse_double mtr_cli_parse_double
#define parse_bytes mtr_cli_parse_bytes
typedef mtr_cli_option cli_option;
#define CLI_HELP MTR_CLI_HELP
/* Parse the option at argv[*i]: as mtr_cli_next, but a positional argument is a usage error. */
int cli_next_option(const char *cmd, int argc, char **argv, int *i, const cli_option *opts, size_t n_opts,
                    const cli_option **opt, const char **val);
void print_version(void);

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
