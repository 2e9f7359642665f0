/* moetrace_main.c — the umbrella command: `moetrace VERB ARGS...` runs `moetrace-VERB ARGS...`, looked up first
 * beside this executable, then on PATH (as git does for its subcommands). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "moetrace.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moetrace <verb> [args...]\n"
            "\n"
            "Verbs (each is the program moetrace-<verb>; `moetrace <verb> --help` for its options):\n"
            "  info      describe runs and shards: model, router semantics, sequences, compression, validity\n"
            "  capture   write traces: synth (planted structure), ingest (from other engines), tokenize\n"
            "  reduce    routing metrics over trace sets\n"
            "  stats     statistics, middle bands, expert selection, steering files\n"
            "  recipe    the paper's experiment on a Slurm cluster from a recipe (config/recipes/)\n"
            "\n"
            "  --help     this text        --version  print the version\n"
            "\n"
            "Exit codes: 0 success, 1 bad usage, 2 bad input data, 3 I/O or internal failure;\n"
            "127 when moetrace-<verb> is not installed.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("moetrace %s (trace format %d)\n", MTR_VERSION_STRING, MTR_FORMAT_VERSION);
        return 0;
    }
    if (argv[1][0] == '-' || strchr(argv[1], '/')) {
        fprintf(stderr, "moetrace: '%s' is not a verb (see moetrace --help)\n", argv[1]);
        return 1;
    }
    char prog[256], path[PATH_MAX + 300], self[PATH_MAX];
    snprintf(prog, sizeof prog, "moetrace-%s", argv[1]);
    argv[1] = prog;
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(path, sizeof path, "%s/%s", self, prog);
            if (access(path, X_OK) == 0) execv(path, argv + 1);
        }
    }
    execvp(prog, argv + 1);
    fprintf(stderr, "moetrace: '%s' is not a moetrace verb (%s: %s)\n", argv[1] + 9, prog, strerror(errno));
    return 127;
}
