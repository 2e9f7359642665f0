/* cli_common.c — helpers shared by the moetrace-stats verbs: one-line errors, exit codes, option values, the
 * band resolution rule (given > profile > detected) and provenance lines. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

const char *cli_command_line = "";

int cli_fail(const char *verb, int err, const char *detail)
{
    if (detail && *detail && detail != mtr_errmsg()) {
        cli_error(verb, "%s", detail);
        return mtr_exit_code(err);
    }
    return mtr_cli_fail(verb, err, NULL);
}

int cli_parse_u32(uint32_t *out, const char *s) { return mtr_cli_parse_u32_in(out, s, 0, 0xffffffffu); }

int cli_load_langs(mtr_langs **out, const char *verb, const char *path)
{
    char buf[PATH_MAX + 32];
    if (!path) {
        char dir[PATH_MAX];
        mtr_stats_config_dir(dir, sizeof dir);
        snprintf(buf, sizeof buf, "%.*s/languages.tsv", (int)(sizeof dir - 1), dir);
        path = buf;
    }
    int rc = mtr_langs_load(out, path);
    return rc ? cli_fail(verb, rc, mtr_errmsg()) : 0;
}

/* "A-B" with decimal A and B (what --band takes as a band rather than a file name) */
static bool looks_like_band(const char *s)
{
    size_t a = strspn(s, "0123456789");
    return a > 0 && s[a] == '-' && strspn(s + a + 1, "0123456789") > 0 && s[a + 1 + strspn(s + a + 1, "0123456789")] == '\0';
}

/* The band of a moetrace-stats output: a TSV whose "# band: A-B (1-based, inclusive): SOURCE" line `band`,
 * `correlate`, `experts`, `overlap` and `steer` print, or a JSON object with "band": {"first", "last", "source"}
 * (band --json, correlate --json, ...). One place holds the band every later step and figure uses. */
static int band_from_file(cli_band *out, const char *verb, const char *path, uint32_t n_layers)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error(verb, "--band %s: not A-B, detect or a readable band file (%s)", path, strerror(errno));
        return errno == ENOENT ? EXIT_USAGE : EXIT_IO;
    }
    char span[64] = "", src[400] = "";
    int c;
    while ((c = fgetc(f)) == ' ' || c == '\t' || c == '\r' || c == '\n') {}
    if (c == '{') {
        fclose(f);
        json_t *root = json_load_file(path, 0, NULL), *b = json_object_get(root, "band");
        json_t *jf = json_object_get(b, "first"), *jl = json_object_get(b, "last"), *js = json_object_get(b, "source");
        if (json_is_integer(jf) && json_is_integer(jl))
            snprintf(span, sizeof span, "%lld-%lld", (long long)json_integer_value(jf), (long long)json_integer_value(jl));
        if (json_is_string(js)) snprintf(src, sizeof src, "%s", json_string_value(js));
        json_decref(root);
    } else {
        rewind(f);
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        while ((len = getline(&line, &cap, f)) > 0) {
            if (strncmp(line, "# band: ", 8)) continue;
            line[strcspn(line, "\r\n")] = '\0';
            const char *l = line + 8, *s0 = strstr(l, "): ");
            size_t k = strspn(l, "0123456789-");
            if (k < sizeof span) snprintf(span, sizeof span, "%.*s", (int)k, l);
            if (s0) snprintf(src, sizeof src, "%s", s0 + 3);
            break;
        }
        free(line);
        fclose(f);
    }
    if (!span[0] || !looks_like_band(span)) {
        cli_error(verb, "%s: no band in it (want a moetrace-stats output: a '# band: A-B' line or JSON \"band\": "
                        "{\"first\", \"last\"})", path);
        return EXIT_DATA;
    }
    if (mtr_band_parse(&out->band, span, n_layers)) {
        cli_error(verb, "%s: band %s: %s", path, span, mtr_errmsg());
        return EXIT_DATA;
    }
    out->band.detected = strstr(src, "detected") != NULL;
    snprintf(out->source, sizeof out->source, "from %.100s: %.390s", path, src[0] ? src : "(no source given)");
    return 0;
}

int cli_resolve_band(cli_band *out, const char *verb, const char *band_arg, const mtr_profile *profile,
                     const mtr_tables *t, const char *english, double alpha)
{
    int rc;
    memset(out, 0, sizeof *out);
    uint32_t n_layers = profile ? profile->n_layers : t ? t->n_layers : 0;
    if (band_arg && strcmp(band_arg, "detect") != 0 && !looks_like_band(band_arg))
        return band_from_file(out, verb, band_arg, n_layers);
    if (band_arg && strcmp(band_arg, "detect") != 0) {
        if ((rc = mtr_band_parse(&out->band, band_arg, n_layers))) {
            cli_error(verb, "--band: %s", mtr_errmsg());
            return EXIT_USAGE;
        }
        snprintf(out->source, sizeof out->source, "given (--band %s)", band_arg);
        return 0;
    }
    if (!band_arg && profile && profile->band_first) {
        out->band.first = profile->band_first;
        out->band.last = profile->band_last;
        out->band.threshold = out->band.alpha = NAN;
        snprintf(out->source, sizeof out->source, "profile %s (%.400s)", profile->name,
                 profile->band_source[0] ? profile->band_source : profile->path);
        return 0;
    }
    if (!t || !t->div_en) {
        cli_error(verb, "%s: cannot detect the middle band without div_from_en.tsv (give --band A-B or a --profile "
                        "with a band)", t ? t->source : "tables");
        return EXIT_DATA;
    }
    double *curve = malloc((t->n_layers + 1) * sizeof *curve);
    if (!curve) return cli_fail(verb, MTR_ENOMEM, "out of memory");
    rc = mtr_band_curve(curve, t, english);
    if (!rc) rc = mtr_band_detect(&out->band, curve, 1, t->n_layers, alpha);
    free(curve);
    if (rc) return cli_fail(verb, rc, mtr_errmsg());
    snprintf(out->source, sizeof out->source,
             "detected from the U-curve: longest run of layers with language-mean divergence <= min + alpha*(max-min), "
             "alpha=%g, threshold=%.6g%s",
             alpha, out->band.threshold, profile && profile->band_first ? " (profile band overridden)" : "");
    return 0;
}

void cli_provenance(FILE *f, const char *verb)
{
    fprintf(f, "# %s %s %s (libmoetrace %s)\n", PROG, verb, MTR_VERSION_STRING, MTR_VERSION_STRING);
    fprintf(f, "# command: %s\n", cli_command_line);
}

json_t *cli_jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

int cli_print_json(const char *verb, json_t *root)
{
    if (!root) return cli_fail(verb, MTR_ENOMEM, "out of memory");
    int rc = json_dumpf(root, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    json_decref(root);
    fputc('\n', stdout);
    return rc ? cli_fail(verb, MTR_EIO, "cannot write JSON to stdout") : 0;
}
