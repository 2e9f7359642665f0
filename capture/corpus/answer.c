/* answer.c — the numeric answer check of generation sets: the last number of a text, normalised, against the gold. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "corpus_internal.h"

/* ---- numbers --------------------------------------------------------------------------------------------- */

/* Normalise sign + a run of digits, ',' and '.' (commas dropped, anything from a second '.' on ignored) into out.
 * MTR_ENOTFOUND without a digit, MTR_EINVAL if it does not fit. */
static int norm_number(char *out, size_t cap, bool neg, const char *s, size_t n)
{
    size_t i = 0, ib = 0, fb = 0;
    char ip[MTR_CORPUS_NUMBER_MAX], fp[MTR_CORPUS_NUMBER_MAX];
    bool digit = false, frac = false;
    for (; i < n; i++) {
        char c = s[i];
        if (c == ',') continue;
        if (c == '.') {
            if (frac) break;
            frac = true;
            continue;
        }
        digit = true;
        if (!frac) {
            if (ib == 0 && c == '0') continue; /* leading zero */
            if (ib + 1 >= sizeof ip) return MTR_EINVAL;
            ip[ib++] = c;
        } else {
            if (fb + 1 >= sizeof fp) return MTR_EINVAL;
            fp[fb++] = c;
        }
    }
    if (!digit) return MTR_ENOTFOUND;
    while (fb && fp[fb - 1] == '0') fb--;
    if (!ib && !fb) neg = false; /* no "-0" */
    size_t need = (neg ? 1 : 0) + (ib ? ib : 1) + (fb ? fb + 1 : 0) + 1;
    if (need > cap) return MTR_EINVAL;
    size_t k = 0;
    if (neg) out[k++] = '-';
    if (ib) memcpy(out + k, ip, ib), k += ib;
    else out[k++] = '0';
    if (fb) {
        out[k++] = '.';
        memcpy(out + k, fp, fb);
        k += fb;
    }
    out[k] = '\0';
    return 0;
}

static bool is_num_char(int c) { return corp_is_digit(c) || c == ',' || c == '.'; }

/* A gold answer: white space, an optional sign, digits with ',' and at most one '.', white space. */
int corp_parse_gold(char *out, size_t cap, const char *s)
{
    size_t n = strlen(s), b = 0, e = n;
    while (b < e && corp_is_space((unsigned char)s[b])) b++;
    while (e > b && corp_is_space((unsigned char)s[e - 1])) e--;
    bool neg = false;
    if (b < e && (s[b] == '-' || s[b] == '+')) neg = s[b++] == '-';
    size_t dots = 0;
    for (size_t i = b; i < e; i++) {
        if (!is_num_char((unsigned char)s[i])) return MTR_EINVAL;
        dots += s[i] == '.';
    }
    if (dots > 1) return MTR_EINVAL;
    int rc = norm_number(out, cap, neg, s + b, e - b);
    return rc == MTR_ENOTFOUND ? MTR_EINVAL : rc;
}

int mtr_corpus_extract_number(char *out, size_t cap, const char *text)
{
    if (!text) return MTR_ENOTFOUND;
    size_t n = strlen(text), bs = 0, be = 0;
    bool found = false;
    for (size_t i = 0; i < n;) {
        if (!is_num_char((unsigned char)text[i])) {
            i++;
            continue;
        }
        size_t s = i;
        bool digit = false;
        for (; i < n && is_num_char((unsigned char)text[i]); i++) digit |= corp_is_digit((unsigned char)text[i]);
        if (digit) bs = s, be = i, found = true;
    }
    if (!found) return MTR_ENOTFOUND;
    while (be > bs && (text[be - 1] == '.' || text[be - 1] == ',')) be--; /* "... is 42." */
    while (bs < be && (text[bs] == ',' || (text[bs] == '.' && !(bs + 1 < be && corp_is_digit((unsigned char)text[bs + 1])))))
        bs++;
    bool neg = bs > 0 && text[bs - 1] == '-' &&
               !(bs > 1 && (corp_is_digit((unsigned char)text[bs - 2]) || corp_is_alpha((unsigned char)text[bs - 2])));
    return norm_number(out, cap, neg, text + bs, be - bs);
}

bool mtr_corpus_answer_matches(const char *gold, const char *generated)
{
    char g[MTR_CORPUS_NUMBER_MAX], p[MTR_CORPUS_NUMBER_MAX];
    if (!gold || corp_parse_gold(g, sizeof g, gold) != 0) return false;
    if (mtr_corpus_extract_number(p, sizeof p, generated) != 0) return false;
    return strcmp(g, p) == 0;
}
