/* test_corpus.c — the corpus module (capture/mtr_corpus.h) on small files written into a temp dir: each capture
 * format round trip, filters, multiple-choice sets (generic, Belebele and Global-MMLU raw fields), generation sets
 * (JSONL, TSV with header, MGSM's headerless TSV), every data error naming its file and line, the prompt templates
 * of config/prompts.json, and the numeric answer check. */
#include <sys/stat.h>

#include "mtr_corpus.h"
#include "testutil.h"

#define CORPUS_OK(expr)                                                                               \
    do {                                                                                              \
        int cp_rc_ = (expr);                                                                          \
        ck_assert_msg(cp_rc_ == 0, "%s -> %s: %s", #expr, mtr_strerror(cp_rc_), mtr_errmsg()); \
    } while (0)

static char tmp[4096];

static void setup(void) { tu_tmpdir(tmp, sizeof tmp, "corpus"); }
static void teardown(void) { tu_rmrf(tmp); }

/* write content (n bytes, or strlen if n is 0) to tmp/name; the path goes to buf */
static const char *put(char *buf, size_t cap, const char *name, const char *content, size_t n)
{
    snprintf(buf, cap, "%s/%s", tmp, name);
    FILE *f = fopen(buf, "wb");
    ck_assert_ptr_nonnull(f);
    size_t k = n ? n : strlen(content);
    ck_assert_uint_eq(fwrite(content, 1, k, f), k);
    ck_assert_int_eq(fclose(f), 0);
    return buf;
}

static const char *sub(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmp, name);
    ck_assert_int_eq(mkdir(buf, 0755), 0);
    return buf;
}

/* the error detail names the file and the line ("name:line:") */
static void expect_error(int rc, int want, const char *name, size_t line, const char *what)
{
    const char *m = mtr_errmsg();
    char at[256];
    snprintf(at, sizeof at, "%s:%zu:", name, line);
    ck_assert_msg(rc == want, "rc %d (%s), want %d: %s", rc, mtr_strerror(rc), want, m);
    ck_assert_msg(strstr(m, at) != NULL, "'%s' does not name %s", m, at);
    ck_assert_msg(!what || strstr(m, what) != NULL, "'%s' does not say '%s'", m, what);
    ck_assert_ptr_null(strchr(m, '\n'));
}

static void expect_item(const mtr_corpus_item *it, const char *unit, const char *lang, const char *dataset,
                        const char *text, size_t line)
{
    ck_assert_ptr_nonnull(it);
    ck_assert_str_eq(it->unit_id, unit);
    ck_assert_str_eq(it->lang, lang);
    ck_assert_str_eq(it->dataset, dataset);
    if (text) ck_assert_str_eq(it->text, text);
    ck_assert_uint_eq(it->line, line);
}

/* ---- capture corpora ------------------------------------------------------------------------------------- */

START_TEST(jsonl_roundtrip)
{
    char p[4200];
    put(p, sizeof p, "corpus.jsonl",
        "{\"unit_id\": \"u1\", \"lang\": \"en\", \"dataset\": \"flores\", \"text\": \"Hello \\u00e9 world\", "
        "\"x\": [1]}\n"
        "\n"
        "   \n"
        "{\"unit_id\": 7, \"lang\": \"fra_Latn\", \"text\": \"Bonjour\\nle monde\", \"id\": 99}\r\n"
        "{\"unit_id\": \"u1\", \"lang\": \"fra_Latn\", \"dataset\": null, \"messages\": [{\"role\": \"system\", "
        "\"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Salut\"}]}",
        0);
    mtr_corpus_opts o = MTR_CORPUS_OPTS_INIT;
    o.dataset = "dflt";
    mtr_corpus *c = NULL;
    CORPUS_OK(mtr_corpus_load(&c, p, &o));
    ck_assert_int_eq(mtr_corpus_format_of(c), MTR_CORPUS_JSONL);
    ck_assert_uint_eq(mtr_corpus_count(c), 3);
    const mtr_corpus_item *it = mtr_corpus_get(c, 0);
    expect_item(it, "u1", "en", "flores", "Hello \xc3\xa9 world", 1);
    ck_assert_str_eq(it->file, p);
    ck_assert_ptr_null(it->item_id);
    ck_assert_ptr_null(it->messages);
    it = mtr_corpus_get(c, 1);
    expect_item(it, "7", "fra_Latn", "dflt", "Bonjour\nle monde", 4);
    ck_assert_str_eq(it->item_id, "99");
    it = mtr_corpus_get(c, 2);
    expect_item(it, "u1", "fra_Latn", "dflt", NULL, 5);
    ck_assert_ptr_null(it->text);
    ck_assert_uint_eq(it->n_messages, 2);
    ck_assert_str_eq(it->messages[0].role, "system");
    ck_assert_str_eq(it->messages[1].content, "Salut");
    ck_assert_ptr_null(mtr_corpus_get(c, 3));
    mtr_corpus_destroy(c);
    mtr_corpus_destroy(NULL);

    /* .json is JSONL too; a forced format overrides the name */
    char q[4200];
    put(q, sizeof q, "c.json", "{\"unit_id\": \"a\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"x\"}\n", 0);
    CORPUS_OK(mtr_corpus_load(&c, q, NULL));
    ck_assert_uint_eq(mtr_corpus_count(c), 1);
    mtr_corpus_destroy(c);
    put(q, sizeof q, "c.txt", "{\"unit_id\": \"a\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"x\"}\n", 0);
    ck_assert_int_eq(mtr_corpus_load(&c, q, NULL), MTR_EINVAL);
    ck_assert_ptr_null(c);
    o = (mtr_corpus_opts)MTR_CORPUS_OPTS_INIT;
    CORPUS_OK(mtr_corpus_format_parse(&o.format, "jsonl"));
    CORPUS_OK(mtr_corpus_load(&c, q, &o));
    mtr_corpus_destroy(c);
    ck_assert_int_eq(mtr_corpus_format_parse(&o.format, "csv"), MTR_EINVAL);
    ck_assert_str_eq(mtr_corpus_format_name(MTR_CORPUS_FLORES), "flores");
    ck_assert_ptr_null(mtr_corpus_format_name((mtr_corpus_format)99));
}
END_TEST

START_TEST(filters)
{
    char p[4200];
    put(p, sizeof p, "f.jsonl",
        "{\"unit_id\": \"1\", \"lang\": \"en\", \"dataset\": \"a\", \"text\": \"one\"}\n"
        "{\"unit_id\": \"1\", \"lang\": \"de\", \"dataset\": \"a\", \"text\": \"eins\"}\n"
        "{\"unit_id\": \"1\", \"lang\": \"fr\", \"dataset\": \"b\", \"text\": \"un\"}\n"
        "{\"unit_id\": \"2\", \"lang\": \"en\", \"dataset\": \"b\", \"text\": \"two\"}\n"
        "{\"unit_id\": \"2\", \"lang\": \"de\", \"dataset\": \"a\", \"text\": \"zwei\"}\n",
        0);
    mtr_corpus *c = NULL;
    mtr_corpus_opts o = MTR_CORPUS_OPTS_INIT;
    o.langs = "de,,en";
    o.datasets = "a";
    CORPUS_OK(mtr_corpus_load(&c, p, &o));
    ck_assert_uint_eq(mtr_corpus_count(c), 3);
    ck_assert_str_eq(mtr_corpus_get(c, 2)->text, "zwei");
    mtr_corpus_destroy(c);
    o.max_items = 2;
    o.require_lang = MTR_CORPUS_ENGLISH;
    CORPUS_OK(mtr_corpus_load(&c, p, &o));
    ck_assert_uint_eq(mtr_corpus_count(c), 2);
    ck_assert_str_eq(mtr_corpus_get(c, 1)->text, "eins");
    mtr_corpus_destroy(c);
    /* English is required but filtered out */
    o = (mtr_corpus_opts)MTR_CORPUS_OPTS_INIT;
    o.langs = "fr,de";
    o.require_lang = "en,eng_Latn";
    ck_assert_int_eq(mtr_corpus_load(&c, p, &o), MTR_ENOTFOUND);
    ck_assert(strstr(mtr_errmsg(), "f.jsonl") && strstr(mtr_errmsg(), "en,eng_Latn"));
    /* a filter naming a language no item has */
    o = (mtr_corpus_opts)MTR_CORPUS_OPTS_INIT;
    o.langs = "en,xx";
    ck_assert_int_eq(mtr_corpus_load(&c, p, &o), MTR_ENOTFOUND);
    ck_assert(strstr(mtr_errmsg(), "\"xx\""));
    o.langs = NULL;
    o.datasets = "zz";
    ck_assert_int_eq(mtr_corpus_load(&c, p, &o), MTR_ENOTFOUND);
    ck_assert(strstr(mtr_errmsg(), "\"zz\""));
    ck_assert_ptr_null(c);
}
END_TEST

START_TEST(flores_dir)
{
    char d[4000], p[4200];
    sub(d, sizeof d, "devtest");
    put(p, sizeof p, "devtest/eng_Latn.devtest", "\xef\xbb\xbfHello.\r\nSecond line.\r\nThird.", 0);
    put(p, sizeof p, "devtest/fra_Latn.devtest", "Bonjour.\nDeuxi\xc3\xa8me.\nTroisi\xc3\xa8me.\n", 0);
    put(p, sizeof p, "devtest/deu_Latn.devtest", "Hallo.\nZweite.\nDritte.\n", 0);
    put(p, sizeof p, "devtest/.hidden.txt", "x\n", 0);
    put(p, sizeof p, "devtest/README", "not a language\n", 0);
    mtr_corpus *c = NULL;
    CORPUS_OK(mtr_corpus_load(&c, d, NULL));
    ck_assert_int_eq(mtr_corpus_format_of(c), MTR_CORPUS_FLORES);
    ck_assert_uint_eq(mtr_corpus_count(c), 9);
    /* unit by unit, languages in file-name order */
    expect_item(mtr_corpus_get(c, 0), "1", "deu_Latn", "devtest", "Hallo.", 1);
    expect_item(mtr_corpus_get(c, 1), "1", "eng_Latn", "devtest", "Hello.", 1);
    expect_item(mtr_corpus_get(c, 2), "1", "fra_Latn", "devtest", "Bonjour.", 1);
    expect_item(mtr_corpus_get(c, 4), "2", "eng_Latn", "devtest", "Second line.", 2);
    expect_item(mtr_corpus_get(c, 8), "3", "fra_Latn", "devtest", "Troisi\xc3\xa8me.", 3);
    ck_assert(strstr(mtr_corpus_get(c, 8)->file, "fra_Latn.devtest") != NULL);
    mtr_corpus_destroy(c);

    mtr_corpus_opts o = MTR_CORPUS_OPTS_INIT;
    o.langs = "fra_Latn,eng_Latn";
    o.unit_prefix = "flores-";
    o.dataset = "flores200";
    o.require_lang = MTR_CORPUS_ENGLISH;
    o.max_items = 3;
    snprintf(p, sizeof p, "%s/", d); /* a trailing slash */
    CORPUS_OK(mtr_corpus_load(&c, p, &o));
    ck_assert_uint_eq(mtr_corpus_count(c), 3);
    expect_item(mtr_corpus_get(c, 0), "flores-1", "eng_Latn", "flores200", "Hello.", 1);
    expect_item(mtr_corpus_get(c, 1), "flores-1", "fra_Latn", "flores200", "Bonjour.", 1);
    expect_item(mtr_corpus_get(c, 2), "flores-2", "eng_Latn", "flores200", "Second line.", 2);
    mtr_corpus_destroy(c);

    o = (mtr_corpus_opts)MTR_CORPUS_OPTS_INIT;
    o.langs = "deu_Latn";
    o.require_lang = MTR_CORPUS_ENGLISH;
    ck_assert_int_eq(mtr_corpus_load(&c, d, &o), MTR_ENOTFOUND);
    o.require_lang = NULL;
    o.langs = "deu_Latn,spa_Latn";
    ck_assert_int_eq(mtr_corpus_load(&c, d, &o), MTR_ENOTFOUND);
    ck_assert(strstr(mtr_errmsg(), "spa_Latn") != NULL);
    o.langs = NULL;
    o.format = MTR_CORPUS_JSONL; /* a directory is only FLORES */
    ck_assert_int_eq(mtr_corpus_load(&c, d, &o), MTR_EINVAL);

    /* two files of one language */
    put(p, sizeof p, "devtest/eng_Latn.dev", "a\nb\nc\n", 0);
    ck_assert_int_eq(mtr_corpus_load(&c, d, NULL), MTR_EFORMAT);
    ck_assert(strstr(mtr_errmsg(), "eng_Latn.dev") && strstr(mtr_errmsg(), "eng_Latn.devtest"));
    ck_assert_ptr_null(c);
}
END_TEST

START_TEST(flores_errors)
{
    char d[4200], p[4200];
    sub(d, sizeof d, "ragged");
    put(p, sizeof p, "ragged/en.txt", "a\nb\nc\n", 0);
    put(p, sizeof p, "ragged/fr.txt", "a\nb\n", 0);
    mtr_corpus *c = NULL;
    expect_error(mtr_corpus_load(&c, d, NULL), MTR_EFORMAT, "ragged/fr.txt", 3, "2 lines");
    ck_assert(strstr(mtr_errmsg(), "en.txt has 3") != NULL);
    ck_assert_ptr_null(c);

    sub(d, sizeof d, "blank");
    put(p, sizeof p, "blank/en.txt", "a\n  \nc\n", 0);
    expect_error(mtr_corpus_load(&c, d, NULL), MTR_EFORMAT, "blank/en.txt", 2, "empty");

    sub(d, sizeof d, "badutf");
    put(p, sizeof p, "badutf/en.txt", "ok\nbad \xc3\x28 here\n", 0);
    expect_error(mtr_corpus_load(&c, d, NULL), MTR_EFORMAT, "badutf/en.txt", 2, "invalid UTF-8 at byte 7");

    sub(d, sizeof d, "nolang");
    put(p, sizeof p, "nolang/README", "x\n", 0);
    ck_assert_int_eq(mtr_corpus_load(&c, d, NULL), MTR_EFORMAT);
    ck_assert(strstr(mtr_errmsg(), "nolang") != NULL);
    snprintf(p, sizeof p, "%s/missing", tmp);
    ck_assert_int_eq(mtr_corpus_load(&c, p, NULL), MTR_ENOTFOUND);
}
END_TEST

START_TEST(tsv_roundtrip)
{
    char p[4200];
    put(p, sizeof p, "c.tsv",
        "id\tunit_id\tlang\ttext\tnote\n"
        "a1\tu1\ten\tone\\ttab\\nnewline \\\\n and \\q\tx\n"
        "\n"
        "\tu2\tfr\tdeux\ty\n",
        0);
    mtr_corpus_opts o = MTR_CORPUS_OPTS_INIT;
    o.dataset = "tsvset";
    mtr_corpus *c = NULL;
    CORPUS_OK(mtr_corpus_load(&c, p, &o));
    ck_assert_int_eq(mtr_corpus_format_of(c), MTR_CORPUS_TSV);
    ck_assert_uint_eq(mtr_corpus_count(c), 2);
    expect_item(mtr_corpus_get(c, 0), "u1", "en", "tsvset", "one\ttab\nnewline \\n and \\q", 2);
    ck_assert_str_eq(mtr_corpus_get(c, 0)->item_id, "a1");
    expect_item(mtr_corpus_get(c, 1), "u2", "fr", "tsvset", "deux", 4);
    ck_assert_ptr_null(mtr_corpus_get(c, 1)->item_id);
    mtr_corpus_destroy(c);

    /* no dataset column and no default */
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EFORMAT, "c.tsv", 2, "dataset");
    put(p, sizeof p, "d.tsv", "unit_id\tlang\tdataset\ttext\nu1\ten\td\ttext\nu2\ten\td\n", 0);
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EFORMAT, "d.tsv", 3, "3 fields, the header has 4");
    put(p, sizeof p, "e.tsv", "unit_id\tlang\tbody\nu1\ten\tx\n", 0);
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EFORMAT, "e.tsv", 1, "\"text\"");
    put(p, sizeof p, "f.tsv", "unit_id\tlang\tdataset\ttext\nu1\ten\td\tx\nu1\ten\td\ty\n", 0);
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EDUP, "f.tsv", 3, "line 2");
    put(p, sizeof p, "g.tsv", "unit_id\tlang\tdataset\ttext\nu1\ten\td\t\\n\n", 0);
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EFORMAT, "g.tsv", 2, "empty \"text\"");
    ck_assert_ptr_null(c);
}
END_TEST

/* every data error of a JSONL corpus: code, file and line */
START_TEST(jsonl_errors)
{
    static const struct {
        const char *body;
        int rc;
        size_t line;
        const char *what;
    } cases[] = {
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"ok\"}\n"
         "{\"unit_id\": \"u\", \"lang\": ",
         MTR_EFORMAT, 2, "not JSON"},
        {"\n\n[1, 2]\n", MTR_EFORMAT, 3, "not a JSON object"},
        {"{\"unit_id\": \"u\", \"dataset\": \"d\", \"text\": \"t\"}\n", MTR_EFORMAT, 1, "missing \"lang\""},
        {"{\"lang\": \"en\", \"dataset\": \"d\", \"text\": \"t\"}\n", MTR_EFORMAT, 1, "missing \"unit_id\""},
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"text\": \"t\"}\n", MTR_EFORMAT, 1, "missing \"dataset\""},
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\"}\n", MTR_EFORMAT, 1, "missing \"text\""},
        {"{\"unit_id\": 1.5, \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"t\"}\n", MTR_EFORMAT, 1,
         "string or an integer"},
        {"{\"unit_id\": \"u\", \"lang\": 3, \"dataset\": \"d\", \"text\": \"t\"}\n", MTR_EFORMAT, 1, "\"lang\""},
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \" \\n\\t\"}\n", MTR_EFORMAT, 1,
         "empty \"text\""},
        {"{\"unit_id\": \"u\", \"lang\": \"\", \"dataset\": \"d\", \"text\": \"t\"}\n", MTR_EFORMAT, 1,
         "empty \"lang\""},
        {"{\"unit_id\": \"u\\tv\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"t\"}\n", MTR_EFORMAT, 1,
         "control character"},
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"t\", \"messages\": []}\n", MTR_EFORMAT,
         1, "both"},
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\", \"messages\": []}\n", MTR_EFORMAT, 1,
         "empty \"messages\""},
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\", \"messages\": [{\"role\": \"user\"}]}\n",
         MTR_EFORMAT, 1, "\"content\""},
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"a\\u0000b\"}\n", MTR_EFORMAT, 1,
         "not JSON"},
        {"{\"unit_id\": \"u\", \"lang\": \"en\", \"lang\": \"fr\", \"dataset\": \"d\", \"text\": \"t\"}\n", MTR_EFORMAT,
         1, "not JSON"},
        {"{\"unit_id\": \"u1\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"a\"}\n"
         "{\"unit_id\": \"u1\", \"lang\": \"fr\", \"dataset\": \"d\", \"text\": \"b\"}\n"
         "{\"unit_id\": \"u2\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"c\"}\n"
         "{\"unit_id\": \"u1\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"d\"}\n",
         MTR_EDUP, 4, "also on line 1"},
        {"{\"unit_id\": 5, \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"a\"}\n"
         "{\"unit_id\": \"5\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"b\"}\n",
         MTR_EDUP, 2, "duplicate unit \"5\""},
    };
    char p[4200];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "bad%zu.jsonl", i);
        put(p, sizeof p, name, cases[i].body, 0);
        mtr_corpus *c = NULL;
        int rc = mtr_corpus_load(&c, p, NULL);
        ck_assert_msg(c == NULL, "case %zu", i);
        expect_error(rc, cases[i].rc, name, cases[i].line, cases[i].what);
    }
    /* invalid UTF-8 and NUL bytes: the byte offset in the file */
    static const char bad_utf8[] = "{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"a\"}\n"
                                   "{\"unit_id\": \"v\", \"lang\": \"en\", \"dataset\": \"d\", "
                                   "\"text\": \"\xed\xa0\x80\"}\n";
    put(p, sizeof p, "utf.jsonl", bad_utf8, sizeof bad_utf8 - 1);
    mtr_corpus *c = NULL;
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EFORMAT, "utf.jsonl", 2, "invalid UTF-8 at byte 116");
    static const char nul[] = "{\"unit_id\": \"u\", \"lang\": \"en\", \"dataset\": \"d\", \"text\": \"a\0\"}\n";
    put(p, sizeof p, "nul.jsonl", nul, sizeof nul - 1);
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EFORMAT, "nul.jsonl", 1, "NUL byte at byte 57");
    static const char overlong[] = "\xc0\xaf\n";
    put(p, sizeof p, "ol.jsonl", overlong, sizeof overlong - 1);
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EFORMAT, "ol.jsonl", 1, "invalid UTF-8 at byte 0");
    static const char cut[] = "{\"a\": \"\xe2\x82";
    put(p, sizeof p, "cut.jsonl", cut, sizeof cut - 1);
    expect_error(mtr_corpus_load(&c, p, NULL), MTR_EFORMAT, "cut.jsonl", 1, "invalid UTF-8");
    snprintf(p, sizeof p, "%s/none.jsonl", tmp);
    ck_assert_int_eq(mtr_corpus_load(&c, p, NULL), MTR_ENOTFOUND);
    ck_assert(strstr(mtr_errmsg(), "none.jsonl") != NULL);
}
END_TEST

/* ---- multiple-choice sets -------------------------------------------------------------------------------- */

START_TEST(mc_generic_and_raw)
{
    char p[4200];
    put(p, sizeof p, "mc.jsonl",
        "{\"unit_id\": \"q1\", \"lang\": \"en\", \"dataset\": \"mmlu\", \"question\": \"2+2?\", "
        "\"choices\": [\"3\", \"4\", \"5\"], \"answer\": 1}\n"
        "{\"unit_id\": \"q2\", \"lang\": \"en\", \"dataset\": \"mmlu\", \"question\": \"Sky?\", \"choices\": [\"red\", "
        "\"green\", \"blue\", \"black\"], \"answer\": \"C\"}\n"
        "{\"unit_id\": \"q3\", \"lang\": \"en\", \"dataset\": \"mmlu\", \"passage\": \"P.\", \"question\": \"Q?\", "
        "\"choices\": [\"yes\", \"no\"], \"answer\": \"no\"}\n"
        "{\"unit_id\": \"q4\", \"lang\": \"en\", \"dataset\": \"mmlu\", \"question\": \"Q?\", "
        "\"choices\": [\"A\", \"x\"], \"answer\": \"A\"}\n",
        0);
    mtr_mc *s = NULL;
    CORPUS_OK(mtr_mc_load(&s, p, NULL));
    ck_assert_uint_eq(mtr_mc_count(s), 4);
    const mtr_mc_item *it = mtr_mc_get(s, 0);
    ck_assert_str_eq(it->unit_id, "q1");
    ck_assert_uint_eq(it->n_choices, 3);
    ck_assert_str_eq(it->choices[2], "5");
    ck_assert_uint_eq(it->answer, 1);
    ck_assert_ptr_null(it->passage);
    ck_assert_uint_eq(mtr_mc_get(s, 1)->answer, 2);
    ck_assert_uint_eq(mtr_mc_get(s, 2)->answer, 1);
    ck_assert_str_eq(mtr_mc_get(s, 2)->passage, "P.");
    ck_assert_uint_eq(mtr_mc_get(s, 3)->answer, 0); /* "A": letter and text of the same choice */
    ck_assert_ptr_null(mtr_mc_get(s, 4));
    mtr_mc_destroy(s);
    mtr_mc_destroy(NULL);
}
END_TEST

START_TEST(mc_belebele_raw)
{
    char p[4200];
    put(p, sizeof p, "eng_Latn.jsonl",
        "{\"link\": \"https://en.wikibooks.org/wiki/X\", \"question_number\": 1, \"flores_passage\": \"The passage.\", "
        "\"question\": \"What?\", \"mc_answer1\": \"a1\", \"mc_answer2\": \"a2\", \"mc_answer3\": \"a3\", "
        "\"mc_answer4\": \"a4\", \"correct_answer_num\": \"3\", \"dialect\": \"eng_Latn\", \"ds\": \"2023-05-03\"}\n"
        "{\"link\": \"https://en.wikibooks.org/wiki/X\", \"question_number\": 2, \"flores_passage\": \"The passage.\", "
        "\"question\": \"Why?\", \"mc_answer1\": \"b1\", \"mc_answer2\": \"b2\", \"mc_answer3\": \"b3\", "
        "\"mc_answer4\": \"b4\", \"correct_answer_num\": 1, \"dialect\": \"eng_Latn\", \"ds\": \"2023-05-03\"}\n",
        0);
    mtr_mc *s = NULL;
    CORPUS_OK(mtr_mc_load(&s, p, NULL));
    ck_assert_uint_eq(mtr_mc_count(s), 2);
    const mtr_mc_item *it = mtr_mc_get(s, 0);
    ck_assert_str_eq(it->unit_id, "https://en.wikibooks.org/wiki/X#1");
    ck_assert_str_eq(it->lang, "eng_Latn");
    ck_assert_str_eq(it->dataset, "belebele");
    ck_assert_str_eq(it->passage, "The passage.");
    ck_assert_str_eq(it->question, "What?");
    ck_assert_uint_eq(it->n_choices, 4);
    ck_assert_str_eq(it->choices[3], "a4");
    ck_assert_uint_eq(it->answer, 2);
    ck_assert_uint_eq(mtr_mc_get(s, 1)->answer, 0);
    ck_assert_str_eq(mtr_mc_get(s, 1)->unit_id, "https://en.wikibooks.org/wiki/X#2");
    mtr_mc_destroy(s);

    /* Global-MMLU: option_a.., a letter answer, lang and dataset from the options */
    put(p, sizeof p, "gmmlu.jsonl",
        "{\"sample_id\": \"s1\", \"unit_id\": \"virology/1\", \"question\": \"Q?\", \"option_a\": \"w\", "
        "\"option_b\": \"x\", \"option_c\": \"y\", \"option_d\": \"z\", \"answer\": \"D\"}\n",
        0);
    mtr_corpus_opts o = MTR_CORPUS_OPTS_INIT;
    ck_assert_int_eq(mtr_mc_load(&s, p, &o), MTR_EFORMAT);
    ck_assert(strstr(mtr_errmsg(), "gmmlu.jsonl:1: missing \"lang\""));
    o.lang = "sw";
    o.dataset = "global_mmlu";
    CORPUS_OK(mtr_mc_load(&s, p, &o));
    ck_assert_str_eq(mtr_mc_get(s, 0)->lang, "sw");
    ck_assert_str_eq(mtr_mc_get(s, 0)->dataset, "global_mmlu");
    ck_assert_uint_eq(mtr_mc_get(s, 0)->n_choices, 4);
    ck_assert_uint_eq(mtr_mc_get(s, 0)->answer, 3);
    mtr_mc_destroy(s);

    put(p, sizeof p, "mc.tsv", "unit_id\tlang\n", 0);
    ck_assert_int_eq(mtr_mc_load(&s, p, NULL), MTR_EINVAL);
    ck_assert_ptr_null(s);
}
END_TEST

START_TEST(mc_errors)
{
#define MC_HEAD "{\"unit_id\": \"q\", \"lang\": \"en\", \"dataset\": \"d\", \"question\": \"Q?\", "
    static const struct {
        const char *body;
        const char *what;
    } cases[] = {
        {MC_HEAD "\"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": \"E\"}", "\"E\" but the item has 4 choices"},
        {MC_HEAD "\"choices\": [\"a\", \"b\"], \"answer\": \"e\"}", "neither a letter A to B"},
        {MC_HEAD "\"choices\": [\"a\", \"b\"], \"answer\": 2}", "not a choice index"},
        {MC_HEAD "\"choices\": [\"a\", \"b\"], \"answer\": -1}", "not a choice index"},
        {MC_HEAD "\"choices\": [\"a\", \"b\"], \"answer\": \"1\"}", "neither a letter"},
        {MC_HEAD "\"choices\": [\"x\", \"A\"], \"answer\": \"A\"}", "ambiguous"},
        {MC_HEAD "\"choices\": [\"x\", \"x\"], \"answer\": \"x\"}", "text of 2 choices"},
        {MC_HEAD "\"choices\": [\"a\"], \"answer\": 0}", "1 choices"},
        {MC_HEAD "\"choices\": [\"a\", \" \"], \"answer\": 0}", "choice 1 is empty"},
        {MC_HEAD "\"choices\": [\"a\", 2], \"answer\": 0}", "choice 1 is not a string"},
        {MC_HEAD "\"choices\": [\"a\", \"b\"], \"answer\": true}", "must be an index"},
        {MC_HEAD "\"choices\": [\"a\", \"b\"]}", "missing \"answer\""},
        {MC_HEAD "\"answer\": 0}", "missing \"choices\""},
        {"{\"unit_id\": \"q\", \"lang\": \"en\", \"dataset\": \"d\", \"choices\": [\"a\", \"b\"], \"answer\": 0}",
         "missing \"question\""},
        {"{\"link\": \"l\", \"dialect\": \"en\", \"question\": \"Q\", \"mc_answer1\": \"a\", \"mc_answer2\": \"b\", "
         "\"correct_answer_num\": \"5\"}",
         "\"correct_answer_num\" must be 1 to 2"},
    };
#undef MC_HEAD
    char p[4200];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[64], body[1024];
        snprintf(name, sizeof name, "mcbad%zu.jsonl", i);
        snprintf(body, sizeof body, "\n%s\n", cases[i].body); /* line 2 */
        put(p, sizeof p, name, body, 0);
        mtr_mc *s = NULL;
        int rc = mtr_mc_load(&s, p, NULL);
        ck_assert_msg(s == NULL, "case %zu", i);
        expect_error(rc, MTR_EFORMAT, name, 2, cases[i].what);
    }
    /* 27 choices */
    char body[2048] = "{\"unit_id\": \"q\", \"lang\": \"en\", \"dataset\": \"d\", \"question\": \"Q?\", \"answer\": 0, "
                      "\"choices\": [\"c0\"";
    for (int i = 1; i < 27; i++) snprintf(body + strlen(body), sizeof body - strlen(body), ", \"c%d\"", i);
    strcat(body, "]}\n");
    put(p, sizeof p, "many.jsonl", body, 0);
    mtr_mc *s = NULL;
    expect_error(mtr_mc_load(&s, p, NULL), MTR_EFORMAT, "many.jsonl", 1, "27 choices");
    /* a duplicate across raw Belebele lines */
    put(p, sizeof p, "dup.jsonl",
        "{\"link\": \"l\", \"question_number\": 1, \"dialect\": \"en\", \"question\": \"Q\", \"mc_answer1\": \"a\", "
        "\"mc_answer2\": \"b\", \"correct_answer_num\": 1}\n"
        "{\"link\": \"l\", \"question_number\": 1, \"dialect\": \"en\", \"question\": \"Q\", \"mc_answer1\": \"a\", "
        "\"mc_answer2\": \"b\", \"correct_answer_num\": 1}\n",
        0);
    expect_error(mtr_mc_load(&s, p, NULL), MTR_EDUP, "dup.jsonl", 2, "l#1");
}
END_TEST

/* ---- generation sets ------------------------------------------------------------------------------------- */

START_TEST(gen_sets)
{
    char p[4200];
    /* MGSM's own TSV: no header, question<TAB>answer, lang and dataset from the file name */
    put(p, sizeof p, "mgsm_fr.tsv",
        "Janet a 16 \\n \"canards\".\t18\n"
        "Combien?\t1,234\n",
        0);
    mtr_gen *g = NULL;
    CORPUS_OK(mtr_gen_load(&g, p, NULL));
    ck_assert_uint_eq(mtr_gen_count(g), 2);
    const mtr_gen_item *it = mtr_gen_get(g, 0);
    ck_assert_str_eq(it->unit_id, "1");
    ck_assert_str_eq(it->lang, "fr");
    ck_assert_str_eq(it->dataset, "mgsm");
    ck_assert_str_eq(it->question, "Janet a 16 \\n \"canards\"."); /* read as it is */
    ck_assert_str_eq(it->answer, "18");
    ck_assert_uint_eq(it->line, 1);
    ck_assert_str_eq(mtr_gen_get(g, 1)->unit_id, "2");
    ck_assert_str_eq(mtr_gen_get(g, 1)->answer, "1,234");
    ck_assert_ptr_null(mtr_gen_get(g, 2));
    mtr_gen_destroy(g);
    mtr_corpus_opts o = MTR_CORPUS_OPTS_INIT;
    o.lang = "fra_Latn";
    o.unit_prefix = "mgsm-";
    CORPUS_OK(mtr_gen_load(&g, p, &o));
    ck_assert_str_eq(mtr_gen_get(g, 0)->lang, "fra_Latn");
    ck_assert_str_eq(mtr_gen_get(g, 1)->unit_id, "mgsm-2");
    mtr_gen_destroy(g);

    /* TSV with a header */
    put(p, sizeof p, "gen.tsv", "unit_id\tlang\tquestion\tanswer\nu1\tde\tZwei\\tplus zwei?\t4\n", 0);
    CORPUS_OK(mtr_gen_load(&g, p, NULL));
    it = mtr_gen_get(g, 0);
    ck_assert_str_eq(it->unit_id, "u1");
    ck_assert_str_eq(it->lang, "de");
    ck_assert_str_eq(it->dataset, "gen");
    ck_assert_str_eq(it->question, "Zwei\tplus zwei?");
    ck_assert_uint_eq(it->line, 2);
    mtr_gen_destroy(g);

    /* JSONL: numbers and strings, MGSM's answer_number over its worked answer */
    put(p, sizeof p, "gen.jsonl",
        "{\"unit_id\": 1, \"lang\": \"en\", \"dataset\": \"mgsm\", \"question\": \"Q1\", \"answer\": 18}\n"
        "{\"lang\": \"en\", \"dataset\": \"mgsm\", \"question\": \"Q2\", \"answer\": \"Step by step\", "
        "\"answer_number\": 12.5}\n"
        "{\"unit_id\": \"x\", \"lang\": \"en\", \"dataset\": \"mgsm\", \"question\": \"Q3\", "
        "\"answer\": \" -1,000 \"}\n",
        0);
    CORPUS_OK(mtr_gen_load(&g, p, NULL));
    ck_assert_uint_eq(mtr_gen_count(g), 3);
    ck_assert_str_eq(mtr_gen_get(g, 0)->answer, "18");
    ck_assert_str_eq(mtr_gen_get(g, 1)->answer, "12.5");
    ck_assert_str_eq(mtr_gen_get(g, 1)->unit_id, "2");
    ck_assert(mtr_corpus_answer_matches(mtr_gen_get(g, 2)->answer, "so it is -1000."));
    mtr_gen_destroy(g);

    /* errors */
    put(p, sizeof p, "bad.jsonl",
        "{\"lang\": \"en\", \"dataset\": \"m\", \"question\": \"Q\", \"answer\": 1}\n"
        "{\"lang\": \"en\", \"dataset\": \"m\", \"question\": \"Q\", \"answer\": \"twelve\"}\n",
        0);
    expect_error(mtr_gen_load(&g, p, NULL), MTR_EFORMAT, "bad.jsonl", 2, "not a plain decimal");
    put(p, sizeof p, "bad2.jsonl", "{\"lang\": \"en\", \"dataset\": \"m\", \"answer\": 1}\n", 0);
    expect_error(mtr_gen_load(&g, p, NULL), MTR_EFORMAT, "bad2.jsonl", 1, "missing \"question\"");
    put(p, sizeof p, "bad3.jsonl", "{\"lang\": \"en\", \"dataset\": \"m\", \"question\": \"Q\"}\n", 0);
    expect_error(mtr_gen_load(&g, p, NULL), MTR_EFORMAT, "bad3.jsonl", 1, "missing \"answer\"");
    put(p, sizeof p, "mgsm_en.tsv", "Q1\t5\nQ2\tfive\n", 0);
    expect_error(mtr_gen_load(&g, p, NULL), MTR_EFORMAT, "mgsm_en.tsv", 2, "not a plain decimal");
    put(p, sizeof p, "mgsm_de.tsv", "Q1\t5\nQ2\t6\textra\n", 0);
    expect_error(mtr_gen_load(&g, p, NULL), MTR_EFORMAT, "mgsm_de.tsv", 2, "fields");
    put(p, sizeof p, "mgsm_ja.tsv", "Q1\t5\n\t6\n", 0);
    expect_error(mtr_gen_load(&g, p, NULL), MTR_EFORMAT, "mgsm_ja.tsv", 2, "empty \"question\"");
    put(p, sizeof p, "three.tsv", "a\tb\tc\n", 0);
    expect_error(mtr_gen_load(&g, p, NULL), MTR_EFORMAT, "three.tsv", 1, "\"question\"");
    put(p, sizeof p, "dup.jsonl",
        "{\"unit_id\": \"a\", \"lang\": \"en\", \"dataset\": \"m\", \"question\": \"Q\", \"answer\": 1}\n"
        "{\"unit_id\": \"a\", \"lang\": \"en\", \"dataset\": \"m\", \"question\": \"Q\", \"answer\": 1}\n",
        0);
    expect_error(mtr_gen_load(&g, p, NULL), MTR_EDUP, "dup.jsonl", 2, "also on line 1");
    ck_assert_ptr_null(g);
}
END_TEST

/* ---- answers --------------------------------------------------------------------------------------------- */

static void expect_number(const char *text, const char *want)
{
    char out[MTR_CORPUS_NUMBER_MAX];
    int rc = mtr_corpus_extract_number(out, sizeof out, text);
    if (!want) {
        ck_assert_msg(rc == MTR_ENOTFOUND, "'%s': found a number", text);
        return;
    }
    ck_assert_msg(rc == 0 && strcmp(out, want) == 0, "'%s': got '%s' (rc %d) want '%s'", text, rc ? "" : out, rc,
                  want);
}

START_TEST(answers)
{
    ck_assert(mtr_corpus_answer_matches("1234", "The answer is 1,234."));
    ck_assert(mtr_corpus_answer_matches("1,234", "1234"));
    ck_assert(!mtr_corpus_answer_matches("120", "12"));
    ck_assert(!mtr_corpus_answer_matches("12", "120"));
    ck_assert(mtr_corpus_answer_matches("1234.5", "Total: $1,234.50"));
    ck_assert(mtr_corpus_answer_matches("-5", "It drops to -5 degrees."));
    ck_assert(!mtr_corpus_answer_matches("5", "It drops to -5 degrees."));
    ck_assert(mtr_corpus_answer_matches("-5", "x = -5"));
    ck_assert(mtr_corpus_answer_matches("3", "5-2=3"));
    ck_assert(mtr_corpus_answer_matches("0.5", "half: .5"));
    ck_assert(mtr_corpus_answer_matches("0", "-0"));
    ck_assert(mtr_corpus_answer_matches("7", "First 3, then 5, finally 7"));
    ck_assert(mtr_corpus_answer_matches("18", "Answer: 18\n"));
    ck_assert(mtr_corpus_answer_matches(" +18 ", "18.00"));
    ck_assert(!mtr_corpus_answer_matches("18", "eighteen"));
    ck_assert(!mtr_corpus_answer_matches("18", ""));
    ck_assert(!mtr_corpus_answer_matches("eighteen", "18"));
    ck_assert(!mtr_corpus_answer_matches("1.2.3", "1.2"));
    ck_assert(!mtr_corpus_answer_matches(NULL, "1"));
    ck_assert(!mtr_corpus_answer_matches("1", NULL));
    expect_number("The answer is 1,234.", "1234");
    expect_number("1,234.50", "1234.5");
    expect_number("-007", "-7");
    expect_number("3.", "3");
    expect_number("v1.2.3", "1.2");
    expect_number("abc-4", "4");
    expect_number("(-4)", "-4");
    expect_number("0.000", "0");
    expect_number("Costs 12.5, not 13...", "13");
    expect_number("..., ,", NULL);
    expect_number("no digits", NULL);
    expect_number("\xe0\xa7\xa7\xe0\xa7\xa8", NULL); /* Bengali digits are not read (as lm-evaluation-harness) */
    char small[4];
    ck_assert_int_eq(mtr_corpus_extract_number(small, sizeof small, "12345"), MTR_EINVAL);
    ck_assert_int_eq(mtr_corpus_extract_number(small, sizeof small, "123"), 0);
    ck_assert_str_eq(small, "123");
}
END_TEST

/* ---- prompts --------------------------------------------------------------------------------------------- */

static mtr_mc_item mc_item(const char *passage, const char *const *choices, size_t n)
{
    mtr_mc_item it = {"u1", "en", "d", passage, "What?", choices, n, 0, "set.jsonl", 3};
    return it;
}

START_TEST(prompts_default_file)
{
    mtr_prompts *p = NULL;
    CORPUS_OK(mtr_prompts_load(&p, "config/prompts.json"));
    ck_assert_uint_eq(mtr_prompts_count(p), 3);
    ck_assert_str_eq(mtr_prompts_name(p, 0), "belebele");
    ck_assert_ptr_null(mtr_prompts_name(p, 3));
    ck_assert_int_eq(mtr_prompts_kind(p, "belebele"), MTR_PROMPT_MC);
    ck_assert_int_eq(mtr_prompts_kind(p, "mmlu"), MTR_PROMPT_MC);
    ck_assert_int_eq(mtr_prompts_kind(p, "mgsm"), MTR_PROMPT_GEN);
    ck_assert_int_eq(mtr_prompts_kind(p, "nope"), MTR_ENOTFOUND);
    ck_assert(strstr(mtr_errmsg(), "nope") != NULL);

    static const char *const ch4[] = {"a1", "a2", "a3", "a4"};
    mtr_mc_item it = mc_item("The passage.", ch4, 4);
    mtr_prompt_mc r;
    CORPUS_OK(mtr_prompt_render_mc(&r, p, "belebele", &it));
    ck_assert_str_eq(r.prompt, "P: The passage.\nQ: What?\nA: a1\nB: a2\nC: a3\nD: a4\nAnswer:");
    ck_assert_uint_eq(r.n_continuations, 4);
    ck_assert_str_eq(r.continuations[0], " A");
    ck_assert_str_eq(r.continuations[3], " D");
    mtr_prompt_mc_free(&r);
    mtr_prompt_mc_free(&r);
    mtr_prompt_mc_free(NULL);

    static const char *const ch3[] = {"3", "4", "5"};
    it = mc_item(NULL, ch3, 3);
    CORPUS_OK(mtr_prompt_render_mc(&r, p, "mmlu", &it));
    ck_assert_str_eq(r.prompt, "What?\nA. 3\nB. 4\nC. 5\nAnswer:");
    ck_assert_uint_eq(r.n_continuations, 3);
    ck_assert_str_eq(r.continuations[2], " C");
    mtr_prompt_mc_free(&r);

    /* belebele needs a passage and four choices */
    it = mc_item(NULL, ch4, 4);
    ck_assert_int_eq(mtr_prompt_render_mc(&r, p, "belebele", &it), MTR_EINVAL);
    ck_assert(strstr(mtr_errmsg(), "\"belebele\"") && strstr(mtr_errmsg(), "set.jsonl:3") &&
              strstr(mtr_errmsg(), "{passage}"));
    ck_assert_ptr_null(r.prompt);
    it = mc_item("P", ch3, 3);
    ck_assert_int_eq(mtr_prompt_render_mc(&r, p, "belebele", &it), MTR_EINVAL);
    ck_assert(strstr(mtr_errmsg(), "{choice_3}") != NULL);
    ck_assert_int_eq(mtr_prompt_render_mc(&r, p, "mgsm", &it), MTR_EINVAL);
    ck_assert_int_eq(mtr_prompt_render_mc(&r, p, "absent", &it), MTR_ENOTFOUND);

    mtr_gen_item g = {"7", "fr", "mgsm", "Combien?", "18", "mgsm_fr.tsv", 7};
    char *s = NULL;
    CORPUS_OK(mtr_prompt_render_gen(&s, p, "mgsm", &g));
    ck_assert_str_eq(s, "Question: Combien?\nAnswer:");
    free(s);
    ck_assert_int_eq(mtr_prompt_render_gen(&s, p, "mmlu", &g), MTR_EINVAL);
    ck_assert_ptr_null(s);
    const char *const *stops;
    size_t n;
    CORPUS_OK(mtr_prompts_stops(&stops, &n, p, "mgsm"));
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(stops[0], "\n\n");
    ck_assert_str_eq(stops[1], "\n");
    ck_assert_int_eq(mtr_prompts_stops(&stops, &n, p, "mmlu"), MTR_EINVAL);
    mtr_prompts_destroy(p);
    mtr_prompts_destroy(NULL);
}
END_TEST

START_TEST(prompts_custom_and_errors)
{
    static const char good[] = "{\"templates\": {\n"
                               "  \"text\": {\"kind\": \"mc\", \"prompt\": \"{{{lang}}} [{unit_id}/{dataset}] "
                               "{question} ({n_choices}) }{choices}\", \"choice_line\": \"({number}) {choice}\", "
                               "\"continuation\": \" {choice}\"},\n"
                               "  \"g\": {\"kind\": \"gen\", \"prompt\": \"{lang}: {question}}}\"}\n"
                               "}}";
    mtr_prompts *p = NULL;
    CORPUS_OK(mtr_prompts_load_buffer(&p, good, sizeof good - 1, "custom.json"));
    static const char *const ch[] = {"yes", "no"};
    mtr_mc_item it = mc_item(NULL, ch, 2);
    mtr_prompt_mc r;
    CORPUS_OK(mtr_prompt_render_mc(&r, p, "text", &it));
    ck_assert_str_eq(r.prompt, "{en} [u1/d] What? (2) }(1) yes\n(2) no");
    ck_assert_str_eq(r.continuations[0], " yes");
    ck_assert_str_eq(r.continuations[1], " no");
    mtr_prompt_mc_free(&r);
    const char *const *stops = NULL;
    size_t n = 9;
    CORPUS_OK(mtr_prompts_stops(&stops, &n, p, "g"));
    ck_assert_uint_eq(n, 0);
    mtr_gen_item g = {"1", "de", "m", "Wie?", "1", NULL, 0};
    char *s;
    CORPUS_OK(mtr_prompt_render_gen(&s, p, "g", &g));
    ck_assert_str_eq(s, "de: Wie?}");
    free(s);
    mtr_prompts_destroy(p);

    static const struct {
        const char *json;
        size_t line;
        const char *what;
    } bad[] = {
        {"{\"templates\": {\n\n  \"mmlu\": {\"kind\": \"mc\", \"prompt\": \"{question} {subject}\"}}}", 3,
         "template \"mmlu\": unknown placeholder {subject}"},
        {"{\"templates\": {\n  \"g\": {\"kind\": \"gen\", \"prompt\": \"{passage}\"}}}", 2, "{passage}"},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"mc\", \"prompt\": \"{choice_26}\"}}}", 2, "{choice_26}"},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"mc\", \"prompt\": \"{choice_01}\"}}}", 2, "{choice_01}"},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"mc\", \"prompt\": \"q\", \"continuation\": \"{question}\"}}}", 2,
         "unknown placeholder {question} in \"continuation\""},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"mc\", \"prompt\": \"{ question}\"}}}", 2, "opens no placeholder"},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"mc\", \"prompt\": \"tail {\"}}}", 2, "opens no placeholder"},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"mc\", \"promt\": \"x\"}}}", 2, "unknown key \"promt\""},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"gen\", \"prompt\": \"x\", \"stop\": [1]}}}", 2, "\"stop\""},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"score\", \"prompt\": \"x\"}}}", 2, "\"kind\""},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"mc\"}}}", 2, "missing \"prompt\""},
        {"{\"templates\": {}}", 1, "no templates"},
        {"{\"other\": 1}", 1, "no \"templates\""},
        {"{\"templates\": {\n  \"m\": {\"kind\": \"mc\", \"prompt\": \"x\",}}}", 2, "not JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = mtr_prompts_load_buffer(&p, bad[i].json, strlen(bad[i].json), "custom.json");
        ck_assert_ptr_null(p);
        expect_error(rc, MTR_EFORMAT, "custom.json", bad[i].line, bad[i].what);
    }
    char path[4200];
    put(path, sizeof path, "prompts.json", bad[0].json, 0);
    expect_error(mtr_prompts_load(&p, path), MTR_EFORMAT, "prompts.json", 3, "\"mmlu\"");
    snprintf(path, sizeof path, "%s/absent.json", tmp);
    ck_assert_int_eq(mtr_prompts_load(&p, path), MTR_ENOTFOUND);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("corpus");
    TCase *tc = tcase_create("corpus");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, jsonl_roundtrip);
    tcase_add_test(tc, filters);
    tcase_add_test(tc, flores_dir);
    tcase_add_test(tc, flores_errors);
    tcase_add_test(tc, tsv_roundtrip);
    tcase_add_test(tc, jsonl_errors);
    tcase_add_test(tc, mc_generic_and_raw);
    tcase_add_test(tc, mc_belebele_raw);
    tcase_add_test(tc, mc_errors);
    tcase_add_test(tc, gen_sets);
    tcase_add_test(tc, answers);
    tcase_add_test(tc, prompts_default_file);
    tcase_add_test(tc, prompts_custom_and_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf == 0 ? 0 : 1;
}
