/* test_tokenizer.c — the tokenizer module on committed small tokenizers (tests/fuzz/tokenizers/, the byte-level
 * fixture in tests/tokenizer/fixtures/): every model option and pre-tokenizer behaviour with ids worked out by
 * hand, decode round trips, errors, the Jinja subset, and a replay of the fuzz seed corpora through the same
 * entry points as the libFuzzer targets (tests/fuzz/). The reference comparison is tests/cli/test_tokenize.sh. */
#include <dirent.h>

#include "mtr_tokenizer.h"
#include "testutil.h"

#define TOK_OK(expr)                                                                               \
    do {                                                                                           \
        int tk_rc_ = (expr);                                                                       \
        ck_assert_msg(tk_rc_ == 0, "%s -> %s: %s", #expr, mtr_strerror(tk_rc_), mtr_tok_errmsg()); \
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
    ck_assert(strstr(mtr_tok_errmsg(), "/nonexistent/dir") != NULL);
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
        ck_assert(mtr_tok_errmsg()[0] != '\0');
    }
    t = load("tests/tokenizer/fixtures/bytelevel-nomerges");
    mtr_tok_ids ids = MTR_TOK_IDS_INIT;
    TOK_OK(mtr_tok_encode(&ids, t, "ok", 2, 0));
    ck_assert_int_eq(mtr_tok_encode(&ids, t, "ab\xff", 3, MTR_TOK_ADD_SPECIAL), MTR_EINVAL);
    ck_assert_str_eq(mtr_tok_errmsg(), "invalid UTF-8 at byte 2");
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
    char *out = NULL;
    mtr_tok_message one = {"user", "x"};
    ck_assert_int_eq(mtr_tok_render_template(&out, "{% if x %}", &one, 1, NULL, NULL, NULL), MTR_EFORMAT);
    ck_assert_int_eq(mtr_tok_render_template(&out, "{{ raise_exception('nope') }}", &one, 1, NULL, NULL, NULL), MTR_EFORMAT);
    ck_assert(strstr(mtr_tok_errmsg(), "nope") != NULL);
    ck_assert_int_eq(mtr_tok_render_template(&out, "{% filter upper %}x{% endfilter %}", &one, 1, NULL, NULL, NULL), MTR_EFORMAT);
    ck_assert_ptr_null(out);
}
END_TEST

/* ---- replay of the fuzz seed corpora ---- */

#define LLVMFuzzerTestOneInput fuzz_load_one
#include "../fuzz/fuzz_tokenizer_load.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_encode_one
#include "../fuzz/fuzz_tokenizer_encode.c"
#undef LLVMFuzzerTestOneInput

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
    tcase_add_test(tc, fuzz_corpus_replay);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
