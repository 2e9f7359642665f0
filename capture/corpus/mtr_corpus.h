/* mtr_corpus.h — the inputs of `moetrace-capture run`: capture corpora (sequences to run through the model),
 * multiple-choice scoring sets (Belebele / MMLU style), generation sets (MGSM style), and the prompt templates that
 * turn scoring and generation items into model input (config/prompts.json).
 *
 * Everything is read into memory at load time and validated as a whole, whatever the filters (except that a
 * FLORES directory's files of languages left out by opts.langs are not read): text must be UTF-8
 * (invalid bytes and NUL are refused with the byte offset), text fields must not be empty or only white space, and
 * every error names the file, the 1-based line and what is wrong ("corpus.jsonl:17: missing \"lang\""). A UTF-8
 * byte-order mark at the start of a file is skipped; lines end at '\n' and one '\r' before it is dropped. Unicode
 * normalisation is not done here (the tokenizer normalises). Items keep file order.
 *
 * Capture corpora (mtr_corpus_load), format from the path or forced with opts.format:
 *   - JSONL (*.jsonl, *.json): one JSON object per line: "unit_id" (string or integer, stored as its decimal
 *     text), "lang", "dataset" (or opts.dataset), optional "id", and exactly one of "text" (string) or "messages"
 *     (non-empty array of {"role", "content"} strings). Blank lines are skipped, unknown keys ignored, a key given
 *     as null counts as absent. (unit_id, lang, dataset) must be unique: a repeat names both lines.
 *   - FLORES-style directory: one file per language, lang = the file name up to its first '.' (eng_Latn.devtest,
 *     fra_Latn.dev, en.txt); files whose names start with '.' or hold no '.' are not read. Line i of every file
 *     is unit i: unit_id = opts.unit_prefix + i (1-based). All files must have the same number of lines; two files
 *     of one language are refused. dataset = opts.dataset, else the directory's base name. Items come unit by
 *     unit (unit 1 in every language in file-name order, then unit 2, ...), so opts.max_items keeps whole
 *     parallel units where it can.
 *   - TSV (*.tsv): a header line naming the columns, with at least unit_id, lang, text (optional: dataset, id;
 *     others ignored); every row has as many fields as the header; empty lines are skipped. Fields cannot hold a
 *     tab or a newline, so in the text column "\t", "\n" and "\\" are decoded to a tab, a newline and one
 *     backslash; any other backslash stays as it is.
 *
 * Multiple-choice sets (mtr_mc_load), JSONL only. Fields (the Belebele / Global-MMLU raw names in brackets are
 * read when the generic one is absent, so the datasets' own files load unchanged):
 *   unit_id [link, link + "#" + question_number], lang [dialect], dataset (else opts.dataset, else "belebele"
 *   for a line with Belebele's raw fields), passage [flores_passage] (optional), question, choices: an array of
 *   2..26 strings [mc_answer1, mc_answer2, ... or option_a, option_b, ...: consecutive, from the first],
 *   answer [correct_answer_num, Belebele's 1-based number as integer or string]. "answer" may be
 *     - an integer: the 0-based index of the correct choice;
 *     - a one-letter string "A".."Z" (upper case): A = first choice;
 *     - a string equal to the text of exactly one choice.
 *   A one-letter string is read as a letter; if it is also the text of a different choice it is refused as
 *   ambiguous. A digit string such as "2" is only matched against choice texts (use an integer for an index).
 *
 * Generation sets (mtr_gen_load), JSONL or TSV. Fields: unit_id (string or integer; default opts.unit_prefix +
 * line number), lang (else opts.lang), dataset (else opts.dataset), question, answer: a number as JSON number or
 * string ("1,234", "-5", "12.5"), checked at load time. MGSM's raw "answer_number" is preferred to "answer" when
 * present (MGSM's "answer" holds a worked solution or null). TSV: either a header naming at least question and
 * answer (optional: unit_id, lang, dataset; the question column is unescaped as the text column above), or MGSM's
 * own two-column files without a header (question<TAB>answer, read as they are, no unescaping). A TSV without a
 * lang column takes opts.lang, else the part of the file name's stem after its last '_' (mgsm_fr.tsv -> "fr", the
 * whole stem without '_'); without a dataset column it takes opts.dataset, else the part before the '_' ("mgsm"),
 * else the whole stem.
 *
 * Filters (opts.langs, opts.datasets) and opts.max_items apply after validation, in that order; a language or
 * dataset named in a filter that no item has is an error (a typo would otherwise pass silently).
 *
 * Prompt templates (mtr_prompts_load): a JSON file {"templates": {NAME: {...}, ...}} (other top-level keys, such
 * as a description, are ignored; unknown keys inside a template are refused); each template has "kind"
 * ("mc" or "gen") and "prompt"; mc templates may set "choice_line" (default "{letter}. {choice}") and
 * "continuation" (default " {letter}"; " {choice}" scores the choice text); gen templates may set "stop" (an
 * array of strings ending generation). Placeholders are {name}; "{{" and "}}" give literal braces, a '}' that
 * closes nothing is literal, a '{' that opens no placeholder is refused. Allowed:
 *   mc prompt:    {passage} {question} {choices} {choice_0}..{choice_25} {n_choices} {unit_id} {lang} {dataset}
 *                 where {choices} is one choice_line per choice, joined with "\n";
 *   choice_line, continuation: {letter} (A, B, ...) {choice} (its text) {number} (1-based);
 *   gen prompt:   {question} {unit_id} {lang} {dataset}.
 * Any other placeholder is refused when the file is loaded, naming the template and its line. Values are
 * inserted as they are (no trimming, no escaping). Rendering an item that lacks a value the template uses (no
 * passage for {passage}, fewer choices than {choice_3}) is an error naming the template and the item's line.
 *
 * Conventions (as traces/moetrace.h): functions return 0 or a negative mtr_err; after an error
 * mtr_errmsg() holds a one-line detail for the calling thread. Nothing prints or exits. Loaded objects are
 * immutable and may be read from several threads; they are freed with _destroy, which accepts NULL. Strings in
 * items are borrowed from their object and valid until it is destroyed.
 */
#ifndef MTR_CORPUS_H
#define MTR_CORPUS_H

#include <stdbool.h>
#include <stddef.h>

#include "moetrace.h"
#include "mtr_tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MTR_CORPUS_MAX_KEY 4096   /* bytes of a unit_id, lang or dataset */
#define MTR_CORPUS_MAX_CHOICES 26 /* choices of a multiple-choice item (letters A..Z) */
#define MTR_CORPUS_NUMBER_MAX 128 /* bytes of a normalised number, NUL included */
#define MTR_CORPUS_ENGLISH "en,eng_Latn,eng" /* a value for opts.require_lang */

/* Input formats: enum value, printed name. Grows only at the end. */
#define MTR_CORPUS_FORMAT_LIST(X)  \
    X(MTR_CORPUS_AUTO, "auto")     \
    X(MTR_CORPUS_JSONL, "jsonl")   \
    X(MTR_CORPUS_FLORES, "flores") \
    X(MTR_CORPUS_TSV, "tsv")

#define MTR_X_FMT(name, str) name,
typedef enum { MTR_CORPUS_FORMAT_LIST(MTR_X_FMT) } mtr_corpus_format;
#undef MTR_X_FMT

/* Options of every loader; fields a loader does not use are ignored. Start from MTR_CORPUS_OPTS_INIT. */
typedef struct {
    mtr_corpus_format format; /* MTR_CORPUS_AUTO: a directory is FLORES, *.jsonl / *.json JSONL, *.tsv TSV */
    const char *dataset;      /* dataset of JSONL items that name none and of TSV files without a dataset column
                                 (FLORES: instead of the directory's name) */
    const char *lang;         /* lang of JSONL items that name none; for a generation TSV without a lang column,
                                 instead of the file name (a capture TSV needs its lang column) */
    const char *langs;        /* comma-separated languages to keep; NULL or "" keeps all */
    const char *datasets;     /* comma-separated datasets to keep; NULL or "" keeps all */
    size_t max_items;         /* keep at most this many items after the filters; 0 = all */
    const char *unit_prefix;  /* unit_id of line-numbered items = prefix + line number; NULL = "" */
    const char *require_lang; /* comma-separated; at least one must be among the kept items (e.g.
                                 MTR_CORPUS_ENGLISH); NULL = no requirement */
} mtr_corpus_opts;
#define MTR_CORPUS_OPTS_INIT {MTR_CORPUS_AUTO, NULL, NULL, NULL, NULL, 0, NULL, NULL}


/* Printed name of a format ("jsonl"); NULL if out of range. */
const char *mtr_corpus_format_name(mtr_corpus_format f);
/* Parse a printed name into *out. 0, or MTR_EINVAL for an unknown name (detail set). */
int mtr_corpus_format_parse(mtr_corpus_format *out, const char *s);

/* ---- capture corpora ------------------------------------------------------------------------------------- */

/* A chat turn (role, content): the tokenizer's type, so messages go to mtr_tok_apply_chat_template() as they are. */
typedef mtr_tok_message mtr_corpus_message;

typedef struct {
    const char *unit_id;  /* parallel-alignment key, shared by the translations of one unit */
    const char *lang;     /* as given ("en", "fra_Latn") */
    const char *dataset;
    const char *item_id;  /* the optional "id" field; NULL when absent */
    const char *text;     /* the sequence; NULL when the item is a chat (messages) */
    const mtr_corpus_message *messages; /* (n_messages) chat turns, or NULL when the item is text */
    size_t n_messages;
    const char *file;     /* file the item was read from */
    size_t line;          /* 1-based line in file */
} mtr_corpus_item;

typedef struct mtr_corpus mtr_corpus;

/* Load a capture corpus from path (file or FLORES directory) with opts (NULL: defaults). *out is owned by the
 * caller (mtr_corpus_destroy) and NULL on error. Errors: MTR_ENOTFOUND (no such file; a language or dataset
 * of a filter or of require_lang that no item has), MTR_EIO, MTR_EINVAL (bad options, or a format that cannot be
 * told from the name), MTR_EFORMAT (bad data: not JSON, missing or mistyped field, invalid UTF-8, empty text,
 * ragged FLORES files, bad TSV row), MTR_EDUP (a repeated (unit_id, lang, dataset); both lines named),
 * MTR_ENOMEM. */
int mtr_corpus_load(mtr_corpus **out, const char *path, const mtr_corpus_opts *opts);

/* Number of items kept. */
size_t mtr_corpus_count(const mtr_corpus *c);

/* Item i (file order); NULL if i >= count. Borrowed. */
const mtr_corpus_item *mtr_corpus_get(const mtr_corpus *c, size_t i);

/* The format the corpus was read as (never MTR_CORPUS_AUTO). */
mtr_corpus_format mtr_corpus_format_of(const mtr_corpus *c);

/* Free everything; accepts NULL. */
void mtr_corpus_destroy(mtr_corpus *c);

/* ---- multiple-choice scoring sets ------------------------------------------------------------------------ */

typedef struct {
    const char *unit_id, *lang, *dataset;
    const char *passage;               /* NULL when the item has none */
    const char *question;
    const char *const *choices;        /* (n_choices) choice texts, 2..26 */
    size_t n_choices;
    size_t answer;                     /* 0-based index of the correct choice */
    const char *file;
    size_t line;
} mtr_mc_item;

typedef struct mtr_mc mtr_mc;

/* Load a multiple-choice set (JSONL; forcing another format is MTR_EINVAL). Ownership, options and errors as
 * mtr_corpus_load(); a bad answer (index out of range, letter past the last choice, text matching no choice or
 * an ambiguous letter) is MTR_EFORMAT. */
int mtr_mc_load(mtr_mc **out, const char *path, const mtr_corpus_opts *opts);
/* Number of items kept. */
size_t mtr_mc_count(const mtr_mc *s);
/* Item i; NULL if i >= count. Borrowed. */
const mtr_mc_item *mtr_mc_get(const mtr_mc *s, size_t i);
/* Free everything; accepts NULL. */
void mtr_mc_destroy(mtr_mc *s);

/* ---- generation sets ------------------------------------------------------------------------------------- */

typedef struct {
    const char *unit_id, *lang, *dataset;
    const char *question;
    const char *answer; /* the gold number as given ("1,234"; a JSON number as JSON writes it) */
    const char *file;
    size_t line;
} mtr_gen_item;

typedef struct mtr_gen mtr_gen;

/* Load a generation set (JSONL or TSV). Ownership, options and errors as mtr_corpus_load(); an answer that is
 * not a plain decimal number is MTR_EFORMAT. */
int mtr_gen_load(mtr_gen **out, const char *path, const mtr_corpus_opts *opts);
/* Number of items kept. */
size_t mtr_gen_count(const mtr_gen *s);
/* Item i; NULL if i >= count. Borrowed. */
const mtr_gen_item *mtr_gen_get(const mtr_gen *s, size_t i);
/* Free everything; accepts NULL. */
void mtr_gen_destroy(mtr_gen *s);

/* ---- answers of generation sets ------------------------------------------------------------------------- */

/* The last number in text, normalised, into out (cap bytes, MTR_CORPUS_NUMBER_MAX is enough): a number is a run
 * of ASCII digits, ',' and '.' holding a digit, with a '-' right before it read as a sign unless a digit or
 * letter precedes the '-'; trailing '.' and ',' are dropped (sentence punctuation), commas removed, anything
 * from a second '.' on ignored. Normalised: no '+', no leading zeros, no trailing fraction zeros, no "-0"
 * ("1,234.50" -> "1234.5", "-007" -> "-7", "3." -> "3"). Only ASCII digits count, like lm-evaluation-harness's
 * flexible extraction. Returns 0, MTR_ENOTFOUND if text holds no number, MTR_EINVAL if it does not fit cap.
 * No detail message is set. */
int mtr_corpus_extract_number(char *out, size_t cap, const char *text);

/* true if the last number of generated (as mtr_corpus_extract_number) equals gold numerically. gold is a plain
 * decimal ("1234", "1,234", "-5", "12.50", white space around allowed). Comparison is exact on the decimal
 * values, so "1234.50" matches "1234.5" and "12" does not match "120". false if either has no number. */
bool mtr_corpus_answer_matches(const char *gold, const char *generated);

/* ---- prompt templates ------------------------------------------------------------------------------------ */

typedef enum { MTR_PROMPT_MC = 1, MTR_PROMPT_GEN = 2 } mtr_prompt_kind;

typedef struct mtr_prompts mtr_prompts;

/* Load prompt templates from a JSON file (format in the introduction). *out is owned by the caller
 * (mtr_prompts_destroy). Errors: MTR_ENOTFOUND (no file), MTR_EIO, MTR_EFORMAT (not JSON, a template without
 * kind or prompt, an unknown key, an unknown placeholder or a lone '{': the detail names the file, the line of
 * the template and the template), MTR_ENOMEM. */
int mtr_prompts_load(mtr_prompts **out, const char *path);

/* Same from len bytes of JSON text; name stands for the file in error details. Errors as mtr_prompts_load()
 * without MTR_ENOTFOUND / MTR_EIO. */
int mtr_prompts_load_buffer(mtr_prompts **out, const char *json, size_t len, const char *name);

/* Free everything; accepts NULL. */
void mtr_prompts_destroy(mtr_prompts *p);

/* Number of templates, and the name of template i (file order; NULL if out of range; borrowed). */
size_t mtr_prompts_count(const mtr_prompts *p);
const char *mtr_prompts_name(const mtr_prompts *p, size_t i);

/* MTR_PROMPT_MC or MTR_PROMPT_GEN for the template called name, or MTR_ENOTFOUND (detail set). */
int mtr_prompts_kind(const mtr_prompts *p, const char *name);

/* The stop strings of generation template name: *out = (n) borrowed strings (NULL when n is 0). Errors:
 * MTR_ENOTFOUND (no such template), MTR_EINVAL (not a gen template). */
int mtr_prompts_stops(const char *const **out, size_t *n, const mtr_prompts *p, const char *name);

/* A rendered multiple-choice item: the prompt and one continuation per choice, all malloc'd; free with
 * mtr_prompt_mc_free(). A choice is scored as the log-likelihood of its continuation after the prompt. */
typedef struct {
    char *prompt;
    char **continuations; /* (n_continuations), one per choice, in choice order */
    size_t n_continuations;
} mtr_prompt_mc;

/* Render item through mc template name into *out (overwritten; on error left empty). Errors: MTR_ENOTFOUND (no
 * such template), MTR_EINVAL (not an mc template; the template uses {passage} and the item has none, or
 * {choice_N} past its last choice: the detail names the template and the item's file and line), MTR_ENOMEM. */
int mtr_prompt_render_mc(mtr_prompt_mc *out, const mtr_prompts *p, const char *name, const mtr_mc_item *item);

/* Free the strings of a rendered item and reset it to empty; accepts NULL. */
void mtr_prompt_mc_free(mtr_prompt_mc *m);

/* Render item through gen template name. *out is malloc'd and NUL-terminated, owned by the caller (free()); NULL
 * on error. Errors: MTR_ENOTFOUND (no such template), MTR_EINVAL (not a gen template), MTR_ENOMEM. */
int mtr_prompt_render_gen(char **out, const mtr_prompts *p, const char *name, const mtr_gen_item *item);

#ifdef __cplusplus
}
#endif

#endif
