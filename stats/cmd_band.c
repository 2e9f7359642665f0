/* cmd_band.c — `moetrace-stats band`: the language-mean divergence-from-English curve per layer and the middle
 * band, from a model profile or detected from the U-curve (docs/ARCHITECTURE.md §3 "Middle band"), saying which. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define VERB "band"

static void help(void)
{
    printf("Usage: %s " VERB " --tables DIR [--profile NAME|FILE] [--band A-B|detect|FILE] [--alpha X] [--json]\n"
           "\n"
           "Print the mean over non-English languages of the divergence from English per layer (the U-curve) and the\n"
           "middle band: the profile's (the paper's bands: Qwen3-30B-A3B 8-35, Phi-3.5-MoE 8-17, GPT-OSS-20B 4-19,\n"
           "1-based inclusive), the one given, or the one detected as the longest run of layers whose mean divergence\n"
           "is at most min + alpha*(max - min). When the band is not detected, the detected band is reported beside\n"
           "it for comparison.\n"
           "\n"
           "  --tables DIR           reduce tables with div_from_en.tsv\n"
           "  --profile NAME|FILE    model profile (config/models/NAME.json)\n"
           "  --band A-B|detect|FILE  use this band / force detection / the band of a moetrace-stats output\n"
           "                         (this verb's TSV or JSON, correlate.json, ...)\n"
           "  --alpha X              detection threshold (default 0.2)\n"
           "  --english CODE         reference language (default eng_Latn)\n"
           "  --json                 JSON instead of TSV\n"
           "  -h, --help             this help\n"
           "\n"
           "TSV columns: layer (1-based) mean_div n_langs in_band.\n\n%s",
           PROG, exit_status_text);
}

int cmd_band(int argc, char **argv)
{
    enum { O_TABLES = 256, O_PROFILE, O_BAND, O_ALPHA, O_ENG, O_JSON };
    static const mtr_cli_option opts[] = {
        {"tables", O_TABLES, true}, {"profile", O_PROFILE, true}, {"band", O_BAND, true},
        {"alpha", O_ALPHA, true}, {"english", O_ENG, true}, {"json", O_JSON, false}, {"help", 'h', false}};
    const char *tables_path = NULL, *profile_arg = NULL, *band_arg = NULL, *english = "eng_Latn";
    double alpha = 0.2;
    bool json = false;
    int c;
    const char *first_pos = NULL;
    for (int ai = 1; ai < argc; ai++) {
        const char *val = NULL;
        c = mtr_cli_id(VERB, argc, argv, &ai, opts, sizeof opts / sizeof opts[0], &val, &first_pos);
        if (c <= 0) {
            if (c < 0) return EXIT_USAGE;
            continue;
        }
        switch (c) {
        case 'h': help(); return EXIT_OK;
        case O_TABLES: tables_path = val; break;
        case O_PROFILE: profile_arg = val; break;
        case O_BAND: band_arg = val; break;
        case O_ENG: english = val; break;
        case O_JSON: json = true; break;
        case O_ALPHA:
            if (cli_parse_double(&alpha, val) || alpha < 0 || alpha > 1) {
                cli_error(VERB, "--alpha '%s' is not a number in [0, 1]", val);
                return EXIT_USAGE;
            }
            break;
        default:
            break;
        }
    }
    if (first_pos || !tables_path) {
        cli_error(VERB, first_pos ? "unexpected argument '%s'" : "--tables is required (see --help)",
                  first_pos ? first_pos : "");
        return EXIT_USAGE;
    }
    int rc, ex = EXIT_OK;
    mtr_tables *t = NULL;
    mtr_profile prof;
    double *curve = NULL;
    cli_band band;
    mtr_band det;
    bool have_det = false;
    if ((rc = mtr_tables_open(&t, tables_path)) || (profile_arg && (rc = mtr_profile_load(&prof, profile_arg)))) {
        ex = cli_fail(VERB, rc, mtr_errmsg());
        goto out_free;
    }
    if (!t->div_en) {
        cli_error(VERB, "%s: no div_from_en.tsv", tables_path);
        ex = EXIT_DATA;
        goto out_free;
    }
    if ((ex = cli_resolve_band(&band, VERB, band_arg, profile_arg ? &prof : NULL, t, english, alpha))) goto out_free;
    curve = malloc((t->n_layers + 1) * sizeof *curve);
    if (!curve) {
        ex = cli_fail(VERB, MTR_ENOMEM, "out of memory");
        goto out_free;
    }
    mtr_band_curve(curve, t, english);
    if (!band.band.detected && mtr_band_detect(&det, curve, 1, t->n_layers, alpha) == 0) have_det = true;
    if (json) {
        json_t *root = json_object(), *layers = json_array(), *jb = json_object();
        json_object_set_new(root, "producer", json_string(PROG " " VERB " " MTR_VERSION_STRING));
        json_object_set_new(root, "command", json_string(cli_command_line));
        json_object_set_new(root, "tables", json_string(tables_path));
        json_object_set_new(jb, "first", json_integer(band.band.first));
        json_object_set_new(jb, "last", json_integer(band.band.last));
        json_object_set_new(jb, "indexing", json_string("1-based inclusive"));
        json_object_set_new(jb, "detected", json_boolean(band.band.detected));
        json_object_set_new(jb, "source", json_string(band.source));
        if (band.band.detected) {
            json_object_set_new(jb, "alpha", json_real(band.band.alpha));
            json_object_set_new(jb, "threshold", json_real(band.band.threshold));
        }
        json_object_set_new(root, "band", jb);
        if (have_det) {
            json_t *jd = json_object();
            json_object_set_new(jd, "first", json_integer(det.first));
            json_object_set_new(jd, "last", json_integer(det.last));
            json_object_set_new(jd, "alpha", json_real(det.alpha));
            json_object_set_new(jd, "threshold", json_real(det.threshold));
            json_object_set_new(root, "detected_band", jd);
        }
        for (uint32_t l = 0; l < t->n_layers; l++) {
            json_t *o = json_object();
            json_object_set_new(o, "layer", json_integer(l + 1));
            json_object_set_new(o, "mean_div", cli_jnum(curve[l]));
            json_object_set_new(o, "in_band", json_boolean(l + 1 >= band.band.first && l + 1 <= band.band.last));
            json_array_append_new(layers, o);
        }
        json_object_set_new(root, "layers", layers);
        ex = cli_print_json(VERB, root);
        goto out_free;
    }
    cli_provenance(stdout, VERB);
    printf("# tables: %s\n", tables_path);
    printf("# band: %u-%u (1-based, inclusive): %s\n", band.band.first, band.band.last, band.source);
    if (have_det)
        printf("# detected band for comparison: %u-%u (alpha=%g, threshold=%.6g)\n", det.first, det.last, det.alpha,
               det.threshold);
    for (size_t i = 0; i < t->n_prov; i++) printf("# input %s\n", t->prov[i]);
    printf("#layer\tmean_div\tn_langs\tin_band\n");
    for (uint32_t l = 0; l < t->n_layers; l++) {
        size_t n = 0;
        for (size_t g = 0; g < t->n_langs; g++) n += strcmp(t->langs[g], english) && !isnan(t->div_en[g * t->n_layers + l]);
        printf("%u\t%.6f\t%zu\t%d\n", l + 1, curve[l], n, l + 1 >= band.band.first && l + 1 <= band.band.last);
    }
out_free:
    free(curve);
    mtr_tables_free(t);
    return ex;
}
