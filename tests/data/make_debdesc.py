#!/usr/bin/python3
"""Build tests/data/debdesc/: an English task-like domain (software package descriptions) from the Debian package
database of the machine it runs on (/var/lib/dpkg/status, the installed packages), for finding "task experts"
against general English text. The built files are committed, since installed packages differ between machines;
this script records how they were made. One JSONL line per package: unit_id "deb-<package>", lang eng_Latn,
dataset "debian", text = synopsis, newline, the long description reflowed (wrapped lines joined, paragraphs and
verbatim lines on lines of their own), NFC. Descriptions shorter than MIN_BODY characters and repeated ones are
dropped; N_KEEP are drawn with a seeded generator and split train / held-out.

Usage: make_debdesc.py [STATUS_FILE [OUT_DIR]]
"""
import json
import os
import random
import re
import sys
import unicodedata

SEED = 20251004
MIN_BODY = 150
N_KEEP = 320
N_HELDOUT = 80


def reflow(body_lines):
    """Debian's extended description (lines without their leading space) as text: " ." lines end a paragraph,
    lines starting with a space are verbatim, other lines of a paragraph are joined with one space."""
    out, para = [], []
    for ln in body_lines:
        if ln == ".":
            if para:
                out.append(" ".join(para))
                para = []
        elif ln.startswith(" "):
            if para:
                out.append(" ".join(para))
                para = []
            out.append(ln.rstrip())
        else:
            para.append(ln.strip())
    if para:
        out.append(" ".join(para))
    return "\n".join(out)


def packages(path):
    """[(package, synopsis, reflowed long description)] of the installed packages, in file order."""
    text = open(path, encoding="utf-8").read()
    out = []
    for para in text.split("\n\n"):
        m = re.search(r"^Package: (\S+)$", para, re.M)
        s = re.search(r"^Status: (.+)$", para, re.M)
        d = re.search(r"^Description: (.*(?:\n [^\n]*)*)", para, re.M)
        if not (m and s and d) or not s.group(1).endswith(" installed"):
            continue
        lines = d.group(1).split("\n")
        out.append((m.group(1), lines[0].strip(), reflow([ln[1:] for ln in lines[1:]])))
    return out


def main():
    if len(sys.argv) > 3:
        print(__doc__.strip(), file=sys.stderr)
        return 1
    status = sys.argv[1] if len(sys.argv) > 1 else "/var/lib/dpkg/status"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "debdesc")
    try:
        pk = packages(status)
    except OSError as e:
        print(f"{status}: {e.strerror}", file=sys.stderr)
        return 3
    seen, rows = set(), []
    for name, syn, body in sorted(pk):
        if len(body) < MIN_BODY or body in seen:
            continue
        seen.add(body)
        rows.append({"unit_id": f"deb-{name}", "lang": "eng_Latn", "dataset": "debian",
                     "text": unicodedata.normalize("NFC", f"{syn}\n{body}")})
    if len(rows) < N_KEEP:
        print(f"{status}: only {len(rows)} usable descriptions, {N_KEEP} wanted", file=sys.stderr)
        return 2
    rng = random.Random(SEED)
    keep = rng.sample(rows, N_KEEP)
    held = sorted(keep[:N_HELDOUT], key=lambda r: r["unit_id"])
    train = sorted(keep[N_HELDOUT:], key=lambda r: r["unit_id"])
    os.makedirs(out, exist_ok=True)
    for split, part in (("train", train), ("heldout", held)):
        with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
