/* cli.c — what the moetrace-capture commands add to the shared command-line conventions (traces/mtr_cli.h):
 * options only (no command takes positional arguments) and the version line. */
#include <stdio.h>

#include "cli.h"

int cli_next_option(const char *cmd, int argc, char **argv, int *i, const cli_option *opts, size_t n_opts,
                    const cli_option **opt, const char **val)
{
    int rc = mtr_cli_next(cmd, argc, argv, i, opts, n_opts, opt, val);
    if (rc == MTR_CLI_POSITIONAL) {
        mtr_cli_error(cmd, "unexpected argument '%s' (see --help)", *val ? *val : "--");
        return EXIT_USAGE;
    }
    return rc;
}

void print_version(void)
{
    printf("%s %s (trace format %d.%d)\n", PROG, MTR_VERSION_STRING, MTR_FORMAT_VERSION, MTR_FORMAT_MINOR);
}
