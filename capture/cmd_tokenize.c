/* cmd_tokenize.c — `moetrace-capture tokenize`: the ids (or token strings) a model sees for each input item,
 * and ids back to text, through the tokenizer module (capture/mtr_tokenizer.h). Lets users check what a capture
 * fed the model. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "mtr_tokenizer.h"

void tokenize_help(void)
{
    printf("Usage: %s tokenize --tokenizer DIR|FILE [options] [INPUT]\n"
           "\n"
           "Encode UTF-8 text with a Hugging Face tokenizer.json (and tokenizer_config.json beside it) and print\n"
           "the ids of each input item as one space-separated line. INPUT is a file or - for stdin (default).\n"
           "\n"
           "Input:\n"
           "  --tokenizer PATH       directory holding tokenizer.json, or the tokenizer.json file (required)\n"
           "  --jsonl                each line is a JSON object with \"text\" or chat \"messages\"\n"
           "                         ([{\"role\", \"content\"}, ...]); default: each line is one text\n"
           "  --chat                 pass each item through the chat template first: a text becomes one user\n"
           "                         turn, messages are used as given\n"
           "  --generation-prompt    chat: end with the assistant prompt (add_generation_prompt=True)\n"
           "  --thinking on|off      chat: pass enable_thinking=True/False to the template (default: unset)\n"
           "  --add-special          add the post-processor's tokens (bos/eos) as add_special_tokens=True does;\n"
           "                         ignored with --chat, whose template places them\n"
           "  --split-special        treat special-token strings in the text as plain text\n"
           "\n"
           "Output:\n"
           "  --tokens               print token strings (as tokenizer.json spells them) instead of ids\n"
           "  --decode               input lines are space-separated ids: print their text, one line each\n"
           "                         (with --jsonl, as JSON strings, so newlines in the text stay visible)\n"
           "  --skip-special         --decode: leave special tokens out\n"
           "  --render               --chat: print the rendered template text instead of ids (as a JSON string)\n"
           "\n"
           "Invalid UTF-8 in the input is an error naming the line and byte (exit 2), never replaced silently.\n"
           "\n%s",
           PROG, exit_status_text);
}

typedef struct {
    const char *tokenizer;
    bool jsonl, chat, gen_prompt, add_special, split_special, tokens, decode, skip_special, render;
    int thinking;
} tok_opts;

static int print_ids(const mtr_tok *t, const mtr_tok_ids *ids, bool tokens)
{
    for (size_t i = 0; i < ids->n; i++) {
        if (i) putchar(' ');
        if (tokens) fputs(mtr_tok_id_to_token(t, ids->ids[i]), stdout);
        else printf("%d", ids->ids[i]);
    }
    putchar('\n');
    return ferror(stdout) ? -1 : 0;
}

/* Parse one line of ids; 0 or -1 with a message */
static int parse_id_line(mtr_tok_ids *out, const char *line, char *err, size_t errcap)
{
    out->n = 0;
    const char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p || *p == '\n' || *p == '\r') break;
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            snprintf(err, errcap, "not an id: '%.20s'", p);
            return -1;
        }
        if (out->n == out->cap) {
            size_t cap = out->cap ? 2 * out->cap : 64;
            int32_t *ids = realloc(out->ids, cap * sizeof *ids);
            if (!ids) {
                snprintf(err, errcap, "out of memory");
                return -1;
            }
            out->ids = ids;
            out->cap = cap;
        }
        out->ids[out->n++] = (int32_t)v;
        p = end;
    }
    return 0;
}

/* One input item -> its output line. Returns an exit status. */
static int do_item(mtr_tok *t, const tok_opts *o, char *line, size_t len, size_t lineno, mtr_tok_ids *ids)
{
    int rc = 0, status = EXIT_OK;
    json_t *doc = NULL;
    char *rendered = NULL;
    mtr_tok_message *msgs = NULL;
    const char *text = line;
    size_t tlen = len;

    if (o->decode) {
        char err[96];
        char *s = NULL;
        size_t slen = 0;
        if (parse_id_line(ids, line, err, sizeof err)) {
            errorf("tokenize", "line %zu: %s", lineno, err);
            return EXIT_DATA;
        }
        if ((rc = mtr_tok_decode(&s, &slen, t, ids->ids, ids->n, o->skip_special ? MTR_TOK_SKIP_SPECIAL : 0))) {
            errorf("tokenize", "line %zu: %s", lineno, mtr_errmsg());
            return rc == MTR_ENOMEM ? EXIT_IO : EXIT_DATA;
        }
        if (o->jsonl) {
            json_t *js = json_stringn(s, slen);
            char *d = js ? json_dumps(js, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
            if (d) puts(d);
            free(d);
            json_decref(js);
        } else {
            fwrite(s, 1, slen, stdout);
            putchar('\n');
        }
        free(s);
        return EXIT_OK;
    }

    size_t nmsg = 0;
    if (o->jsonl) {
        json_error_t jerr;
        doc = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
        json_t *tx = json_object_get(doc, "text"), *ms = json_object_get(doc, "messages");
        if (!json_is_object(doc) || (!json_is_string(tx) && !json_is_array(ms))) {
            errorf("tokenize", "line %zu: not a JSON object with \"text\" or \"messages\"", lineno);
            status = EXIT_DATA;
            goto done;
        }
        if (json_is_array(ms)) {
            if (!o->chat) {
                errorf("tokenize", "line %zu: chat messages need --chat", lineno);
                status = EXIT_USAGE;
                goto done;
            }
            nmsg = json_array_size(ms);
            msgs = calloc(nmsg ? nmsg : 1, sizeof *msgs);
            if (!msgs) {
                status = EXIT_IO;
                goto done;
            }
            for (size_t i = 0; i < nmsg; i++) {
                json_t *m = json_array_get(ms, i);
                msgs[i].role = json_string_value(json_object_get(m, "role"));
                msgs[i].content = json_string_value(json_object_get(m, "content"));
                if (!msgs[i].role || !msgs[i].content) {
                    errorf("tokenize", "line %zu: message %zu needs string role and content", lineno, i);
                    status = EXIT_DATA;
                    goto done;
                }
            }
        } else {
            text = json_string_value(tx);
            tlen = json_string_length(tx);
        }
    }
    if (o->chat) {
        mtr_tok_message one = {"user", text};
        mtr_tok_chat_opts co = MTR_TOK_CHAT_OPTS_INIT;
        co.add_generation_prompt = o->gen_prompt;
        co.enable_thinking = o->thinking;
        if (!msgs && strlen(text) != tlen) {
            errorf("tokenize", "line %zu: text with a NUL byte cannot go through a chat template", lineno);
            status = EXIT_DATA;
            goto done;
        }
        if ((rc = mtr_tok_apply_chat_template(&rendered, t, msgs ? msgs : &one, msgs ? nmsg : 1, &co))) {
            errorf("tokenize", "line %zu: chat template: %s", lineno, mtr_errmsg());
            status = rc == MTR_ENOTFOUND ? EXIT_USAGE : EXIT_DATA;
            goto done;
        }
        text = rendered;
        tlen = strlen(rendered);
        if (o->render) {
            json_t *js = json_string(rendered);
            char *d = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
            if (d) puts(d);
            free(d);
            json_decref(js);
            goto done;
        }
    }
    unsigned flags = (o->add_special && !o->chat ? MTR_TOK_ADD_SPECIAL : 0) |
                     (o->split_special ? MTR_TOK_SPLIT_SPECIAL : 0);
    ids->n = 0;
    if ((rc = mtr_tok_encode(ids, t, text, tlen, flags))) {
        errorf("tokenize", "line %zu: %s", lineno, mtr_errmsg());
        status = rc == MTR_ENOMEM ? EXIT_IO : EXIT_DATA;
        goto done;
    }
    if (print_ids(t, ids, o->tokens)) status = EXIT_IO;
done:
    free(msgs);
    free(rendered);
    json_decref(doc);
    return status;
}

int cmd_tokenize(int argc, char **argv)
{
    enum { O_TOK = 256, O_JSONL, O_CHAT, O_GEN, O_THINK, O_ADD, O_SPLIT, O_TOKENS, O_DECODE, O_SKIP, O_RENDER, O_HELP };
    static const mtr_cli_option lopts[] = {
        {"tokenizer", O_TOK, true}, {"jsonl", O_JSONL, false}, {"chat", O_CHAT, false},
        {"generation-prompt", O_GEN, false}, {"thinking", O_THINK, true}, {"add-special", O_ADD, false},
        {"split-special", O_SPLIT, false}, {"tokens", O_TOKENS, false}, {"decode", O_DECODE, false},
        {"skip-special", O_SKIP, false}, {"render", O_RENDER, false}, {"help", O_HELP, false}};
    tok_opts o;
    memset(&o, 0, sizeof o);
    o.thinking = -1;
    int c;
    const char *first_pos = NULL, *second_pos = NULL;
    for (int ai = 1; ai < argc; ai++) {
        const mtr_cli_option *opt = NULL;
        const char *val = NULL;
        int pr = mtr_cli_next("tokenize", argc, argv, &ai, lopts, sizeof lopts / sizeof lopts[0], &opt, &val);
        if (pr == MTR_CLI_POSITIONAL) {
            if (!first_pos) first_pos = val;
            else if (!second_pos) second_pos = val;
            continue;
        }
        if (pr > 0) return pr;
        c = pr == MTR_CLI_HELP ? 'h' : opt->id;
        switch (c) {
        case O_TOK: o.tokenizer = val; break;
        case O_JSONL: o.jsonl = true; break;
        case O_CHAT: o.chat = true; break;
        case O_GEN: o.gen_prompt = true; break;
        case O_THINK:
            if (strcmp(val, "on") == 0) o.thinking = 1;
            else if (strcmp(val, "off") == 0) o.thinking = 0;
            else {
                errorf("tokenize", "--thinking takes on or off, not '%s'", val);
                return EXIT_USAGE;
            }
            break;
        case O_ADD: o.add_special = true; break;
        case O_SPLIT: o.split_special = true; break;
        case O_TOKENS: o.tokens = true; break;
        case O_DECODE: o.decode = true; break;
        case O_SKIP: o.skip_special = true; break;
        case O_RENDER: o.render = true; break;
        case 'h': case O_HELP: tokenize_help(); return EXIT_OK;
        default:
            break;
        }
    }
    if (!o.tokenizer) {
        errorf("tokenize", "no tokenizer given (--tokenizer DIR|FILE)");
        return EXIT_USAGE;
    }
    if (second_pos) {
        errorf("tokenize", "one input at most, got '%s' and '%s'", first_pos, second_pos);
        return EXIT_USAGE;
    }
    if (o.decode && (o.chat || o.tokens)) {
        errorf("tokenize", "--decode cannot be combined with --chat or --tokens");
        return EXIT_USAGE;
    }
    if (o.render && !o.chat) {
        errorf("tokenize", "--render needs --chat");
        return EXIT_USAGE;
    }
    const char *in = first_pos ? first_pos : "-";
    FILE *f = strcmp(in, "-") == 0 ? stdin : fopen(in, "rb");
    if (!f) {
        errorf("tokenize", "%s: %s", in, strerror(errno));
        return EXIT_DATA;
    }
    mtr_tok *t = NULL;
    int rc = mtr_tok_load(&t, o.tokenizer);
    if (rc) {
        errorf("tokenize", "%s", mtr_errmsg());
        if (f != stdin) fclose(f);
        return rc == MTR_ENOTFOUND ? EXIT_DATA : exit_code_for(rc);
    }
    if (o.chat && !mtr_tok_has_chat_template(t)) {
        errorf("tokenize", "%s: the tokenizer has no chat template", o.tokenizer);
        mtr_tok_destroy(t);
        if (f != stdin) fclose(f);
        return EXIT_USAGE;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int status = EXIT_OK;
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    while (status == EXIT_OK && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
        status = do_item(t, &o, line, (size_t)n, lineno, &ids);
    }
    if (status == EXIT_OK && ferror(f)) {
        errorf("tokenize", "%s: read error", in);
        status = EXIT_IO;
    }
    if (fflush(stdout) != 0 && status == EXIT_OK) status = EXIT_IO;
    free(line);
    mtr_tok_ids_free(&ids);
    mtr_tok_destroy(t);
    if (f != stdin) fclose(f);
    return status;
}
