/* fuzz_tokenizer_load.c — libFuzzer target for the tokenizer.json loader: arbitrary bytes as tokenizer.json
 * (the part after a first NUL byte, if any, as tokenizer_config.json); a loaded tokenizer also encodes and
 * decodes a fixed text and renders its chat template. Build and run with `make fuzz-tokenizer`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mtr_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *json = (const char *)data, *cfg = NULL;
    size_t jlen = size, clen = 0;
    const uint8_t *nul = memchr(data, 0, size);
    if (nul) {
        jlen = (size_t)(nul - data);
        cfg = (const char *)nul + 1;
        clen = size - jlen - 1;
    }
    mtr_tok *t = NULL;
    if (mtr_tok_load_buffers(&t, json, jlen, cfg, clen) == 0) {
        static const char text[] = "Hello, world! 123 \xc3\xa9t\xc3\xa9 <|endoftext|>  \n\n\xe4\xb8\x96";
        mtr_tok_ids ids = MTR_TOK_IDS_INIT;
        if (mtr_tok_encode(&ids, t, text, sizeof text - 1, MTR_TOK_ADD_SPECIAL) == 0) {
            char *s = NULL;
            if (mtr_tok_decode(&s, NULL, t, ids.ids, ids.n, 0) == 0) free(s);
        }
        mtr_tok_ids_free(&ids);
        if (mtr_tok_has_chat_template(t)) {
            mtr_tok_message m[2] = {{"system", "s"}, {"user", "u"}};
            char *r = NULL;
            if (mtr_tok_apply_chat_template(&r, t, m, 2, NULL) == 0) free(r);
        }
        mtr_tok_destroy(t);
    }
    return 0;
}
