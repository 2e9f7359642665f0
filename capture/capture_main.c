/* capture_main.c — the moetrace-capture binary: dispatch to subcommands and their command lines.
 *
 * Verbs: run (the native engine), synth, tokenize, ingest — one file capture/cmd_NAME.c each. Help goes to stdout, diagnostics and progress to stderr, machine-readable output (--json) to stdout.
 * Exit status: 0 ok, 1 bad usage, 2 bad input data, 3 I/O or internal failure.
 */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "moetrace.h"

/* ---- dispatch -------------------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    void (*help)(void);
    const char *summary;
} command;

static const command commands[] = {
    {"synth", cmd_synth, synth_help, "write synthetic traces with planted multilingual routing structure"},
    {"tokenize", cmd_tokenize, tokenize_help, "token ids of text with a Hugging Face tokenizer.json, and back"},
    {"ingest", cmd_ingest, ingest_help, "write router logits streamed by another engine (traces/INGEST.md)"},
    {"run", cmd_run, run_help, "run a Hugging Face MoE checkpoint natively: capture, score, generate, steer"},
};

static void main_help(void)
{
    printf("Usage: %s <command> [options]\n"
           "       %s help [command] | --help | --version\n"
           "\n"
           "Capture Mixture-of-Experts router logits into moetrace traces (trace format v%d).\n"
           "\n"
           "Commands:\n",
           PROG, PROG, MTR_FORMAT_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %-10s %s\n", commands[i].name, commands[i].summary);
    printf("\nRun '%s <command> --help' for the options of a command.\n\n%s", PROG, exit_status_text);
}

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static int unknown_command(const char *name)
{
    errorf(NULL, "unknown command '%s' (see --help)", name);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    mtr_cli_set_prog(PROG);
    if (argc < 2) {
        errorf(NULL, "missing command (see --help)");
        return EXIT_USAGE;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0) {
        main_help();
        return EXIT_OK;
    }
    if (strcmp(verb, "--version") == 0) {
        print_version();
        return EXIT_OK;
    }
    if (strcmp(verb, "help") == 0) {
        if (argc < 3) {
            main_help();
            return EXIT_OK;
        }
        const command *c = find_command(argv[2]);
        if (!c)
            return unknown_command(argv[2]);
        c->help();
        return EXIT_OK;
    }
    if (verb[0] == '-') {
        errorf(NULL, "unknown option '%s' (see --help)", verb);
        return EXIT_USAGE;
    }
    const command *c = find_command(verb);
    if (!c)
        return unknown_command(verb);
    return c->run(argc - 1, argv + 1);
}
