/* jinja.h — the Jinja subset Hugging Face chat templates use (capture/tokenizer/jinja.c): expressions, filters,
 * tests, if/for/set/macro, loop variables, string methods (the subset is listed at the top of jinja.c). The
 * tokenizer renders tokenizer_config.json's chat_template through it. */
#ifndef MTR_TOKENIZER_JINJA_H
#define MTR_TOKENIZER_JINJA_H

#include <jansson.h>

/* Render template src with a context object (borrowed); *out malloc'd, free with free(). Errors: MTR_EFORMAT
 * (syntax or evaluation error, detail in mtr_errmsg() with line and column), MTR_ENOMEM. */
int tk_jinja_render(char **out, const char *src, json_t *ctx);

#endif
