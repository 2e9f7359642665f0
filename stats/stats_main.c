/* stats_main.c — `moetrace-stats VERB ...`: dispatch to the verbs (stats/cmd_*.c), top-level help and version.
 * `moetrace stats ...` reaches here through the umbrella command. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} verb;

static const verb verbs[] = {
    {"correlate", cmd_correlate, "alignment (divergence from English) vs accuracy: r, rho, p, bootstrap CI, permutation p"},
    {"band", cmd_band, "the middle band: from a model profile or detected from the U-curve"},
    {"experts", cmd_experts, "task experts A+(D, tau, band) and multilingual-specialised experts"},
    {"overlap", cmd_overlap, "overlap of task and multilingual experts as a function of tau"},
    {"steer", cmd_steer, "steering files for the selection and every control, with EasySteer and flat exports"},
    {"effect", cmd_effect, "intervention effects: per-language gains, mean, paired bootstrap CI, sign test"},
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: %s <verb> [options]   (also: moetrace stats <verb> ...)\n\nVerbs:\n", PROG);
    for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++) fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].summary);
    fprintf(f, "\n`%s <verb> --help` for the options of a verb.\n  --help     this text\n  --version  print the "
               "version\n\n%s",
            PROG, exit_status_text);
}

int main(int argc, char **argv)
{
    mtr_cli_set_prog(PROG);
    /* the command line, recorded in every output's provenance */
    size_t len = 1;
    for (int i = 0; i < argc; i++) len += strlen(argv[i]) + 1;
    char *cmd = malloc(len);
    if (cmd) {
        cmd[0] = '\0';
        for (int i = 0; i < argc; i++) {
            const char *a = i == 0 ? PROG : argv[i];
            strcat(cmd, a);
            if (i + 1 < argc) strcat(cmd, " ");
        }
        for (char *p = cmd; *p; p++)
            if (*p == '\n' || *p == '\t') *p = ' ';
        cli_command_line = cmd;
    }
    int rc;
    if (argc < 2) {
        usage(stderr);
        rc = EXIT_USAGE;
    } else if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        rc = EXIT_OK;
    } else if (!strcmp(argv[1], "--version")) {
        printf("%s %s\n", PROG, MTR_VERSION_STRING);
        rc = EXIT_OK;
    } else {
        rc = -1;
        for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++)
            if (!strcmp(argv[1], verbs[i].name)) rc = verbs[i].run(argc - 1, argv + 1);
        if (rc < 0) {
            cli_error(NULL, "unknown verb '%s' (see %s --help)", argv[1], PROG);
            rc = EXIT_USAGE;
        }
    }
    if (fflush(stdout) != 0 && rc == EXIT_OK) {
        cli_error(NULL, "cannot write to stdout");
        rc = EXIT_IO;
    }
    free(cmd);
    return rc;
}
