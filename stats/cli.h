/* cli.h — helpers shared by the moetrace-stats verbs (stats/cmd_*.c): one-line errors, exit codes, option
 * values, the inputs most verbs take (language table, tables, accuracy, profile, band) and TSV provenance. */
#ifndef MTR_STATS_CLI_H
#define MTR_STATS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "mtr_cli.h"
#include "mtr_stats.h"

#define PROG "moetrace-stats"

/* The shared command-line conventions (traces/mtr_cli.h) under the short names the verbs use. */
enum { EXIT_OK = MTR_EXIT_OK, EXIT_USAGE = MTR_EXIT_USAGE, EXIT_DATA = MTR_EXIT_DATA, EXIT_IO = MTR_EXIT_IO };
#define exit_status_text mtr_cli_exit_text
#define cli_error mtr_cli_error
#define cli_exit_code mtr_exit_code
#define cli_parse_u64 mtr_cli_parse_u64
#define cli_parse_double mtr_cli_parse_double
extern const char *cli_command_line; /* the whole command line, for provenance */

/* Report a library error with its detail (detail, else mtr_errmsg(), else the code's name); exit status. */
int cli_fail(const char *verb, int err, const char *detail);
int cli_parse_u32(uint32_t *out, const char *s);

/* The band a verb works on: --band A-B, --band detect, else the profile's, else detected. */
typedef struct {
    mtr_band band;
    char source[512]; /* "profile qwen3-30b-a3b (...)", "detected: alpha=0.5 ...", "given: --band 4-13" */
} cli_band;
/* t may lack div_en only when the band is given or comes from the profile. profile may be NULL. */
int cli_resolve_band(cli_band *out, const char *verb, const char *band_arg, const mtr_profile *profile,
                     const mtr_tables *t, const char *english, double alpha);

/* Load config/languages.tsv (or path): exit status or 0. */
int cli_load_langs(mtr_langs **out, const char *verb, const char *path);

/* Print the common provenance lines: "# moetrace-stats VERB VERSION", "# command: ...". */
void cli_provenance(FILE *f, const char *verb);
/* A JSON number, or null for NaN / infinity (JSON has no NaN). */
json_t *cli_jnum(double v);
/* Print root as indented JSON on stdout and release it; exit status. */
int cli_print_json(const char *verb, json_t *root);

/* verbs */
int cmd_correlate(int argc, char **argv);
int cmd_band(int argc, char **argv);
int cmd_experts(int argc, char **argv);
int cmd_overlap(int argc, char **argv);
int cmd_steer(int argc, char **argv);
int cmd_effect(int argc, char **argv);

#endif
