/* fuzz_tokenizer_encode.c — libFuzzer target for encode on arbitrary bytes: the first byte picks one of the
 * committed small tokenizers (tests/fuzz/tokenizers/, chosen to cover byte-level, byte-fallback/Metaspace and
 * WordPiece-style prefix models) and the flags; the rest is the text. Valid UTF-8 must encode and decode back
 * without error; anything else must be refused with MTR_EINVAL. Build and run with `make fuzz-tokenizer`. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mtr_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef FUZZ_TOKENIZER_DIR
#define FUZZ_TOKENIZER_DIR "tests/fuzz/tokenizers"
#endif

static const char *const names[] = {"bytelevel.json", "metaspace.json", "pieces.json"};
#define N_TOK (sizeof names / sizeof names[0])
static mtr_tok *toks[N_TOK];

static mtr_tok *get(size_t i)
{
    if (!toks[i]) {
        char path[512];
        const char *dir = getenv("FUZZ_TOKENIZER_DIR") ? getenv("FUZZ_TOKENIZER_DIR") : FUZZ_TOKENIZER_DIR;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (mtr_tok_load(&toks[i], path) != 0) {
            fprintf(stderr, "cannot load %s: %s\n", path, mtr_errmsg());
            abort();
        }
    }
    return toks[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    mtr_tok *t = get(data[0] % N_TOK);
    unsigned flags = (data[0] >> 4) & 3u;
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    int rc = mtr_tok_encode(&ids, t, (const char *)data + 1, size - 1, flags);
    if (rc != 0 && rc != MTR_EINVAL) abort();
    if (rc == 0) {
        char *s = NULL;
        if (mtr_tok_decode(&s, NULL, t, ids.ids, ids.n, data[0] & 0x40 ? MTR_TOK_SKIP_SPECIAL : 0) != 0) abort();
        free(s);
    }
    mtr_tok_ids_free(&ids);
    return 0;
}
