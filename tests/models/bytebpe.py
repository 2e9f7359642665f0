"""bytebpe.py — a byte-level BPE tokenizer in the Hugging Face tokenizers layout, trained and run in plain Python:
NFC normaliser, gpt-oss's (o200k) split pattern followed by the GPT-2 byte-to-character map, BPE merges by rank,
added special tokens matched before anything else. train() learns merges from weighted texts; Tokenizer encodes
as the tokenizers library does for this configuration (checked id for id against moetrace-capture tokenize and the
@lenml/tokenizers reference by tests/models/train_udhr_moe.py --check-tokenizer); to_json() writes tokenizer.json.

The split pattern uses Unicode classes (\\p{L}, \\p{Lu}, \\p{M}, \\p{N}, ...) that Python's re lacks: they are
spelled out as explicit code-point ranges built from unicodedata, and \\s as the White_Space property (as PCRE2
with UCP and the Rust regex crate read it).
"""
import heapq
import os
import re
import sys
import unicodedata
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny import BYTE_CHARS, BYTE_ORDER  # noqa: E402  (GPT-2's byte -> character table)

# gpt-oss / o200k pre-tokenizer pattern, as its tokenizer.json writes it
SPLIT_PATTERN = (
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
BYTE_ID = {b: i for i, b in enumerate(BYTE_ORDER)}  # byte value -> base token id


def _ranges(pred):
    """A character-class body (no brackets) for the code points where pred(category) holds."""
    out, start, prev = [], None, None
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            hit = False
        else:
            hit = pred(unicodedata.category(chr(cp)))
        if hit and start is None:
            start = cp
        if not hit and start is not None:
            out.append((start, prev))
            start = None
        prev = cp
    if start is not None:
        out.append((start, prev))

    def esc(cp):
        return f"\\U{cp:08x}"
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in out)


def _python_pattern(pattern):
    """The split pattern with \\p{..} and \\s / \\S replaced by explicit classes Python's re understands."""
    cats = {}

    def cls(name):
        if name not in cats:
            if len(name) == 1:
                cats[name] = _ranges(lambda c, n=name: c[0] == n)
            else:
                cats[name] = _ranges(lambda c, n=name: c == n)
        return cats[name]

    out, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1]
            if nxt == "p":
                j = pattern.index("}", i)
                body = cls(pattern[i + 3:j])
                out.append(body if in_class else f"[{body}]")
                i = j + 1
                continue
            if nxt == "s":
                out.append(WHITE_SPACE if in_class else f"[{WHITE_SPACE}]")
                i += 2
                continue
            if nxt == "S":
                if in_class:
                    raise ValueError("\\S inside a class is not supported")
                out.append(f"[^{WHITE_SPACE}]")
                i += 2
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if ch == "[":
            in_class = True
        elif ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)


_SPLIT = None


def pretokenize(text):
    """The pieces the split pattern cuts text into (Isolated: matches and the text between them)."""
    global _SPLIT
    if _SPLIT is None:
        _SPLIT = re.compile(_python_pattern(SPLIT_PATTERN))
    out, pos = [], 0
    for m in _SPLIT.finditer(text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        if m.end() > m.start():
            out.append(m.group())
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


# ---- training -------------------------------------------------------------------------------------------------------

def train(weighted_texts, n_merges):
    """Merges [(id a, id b)] (new ids 256, 257, ... in order) and the byte strings of all ids, learned from
    [(text, weight)]: each text NFC-normalised and pre-tokenized, pieces counted with the weight; then n_merges
    times the most frequent adjacent pair (ties: the smaller pair of byte strings) is merged everywhere."""
    counts = Counter()
    for text, w in weighted_texts:
        for piece in pretokenize(unicodedata.normalize("NFC", text)):
            counts[piece] += w
    tok_bytes = [bytes([b]) for b in BYTE_ORDER]
    words = [[BYTE_ID[b] for b in p.encode("utf-8")] for p in sorted(counts)]
    freq = [counts[p] for p in sorted(counts)]
    pair_count = Counter()
    pair_words = {}
    for wi, sym in enumerate(words):
        for a, b in zip(sym, sym[1:]):
            pair_count[(a, b)] += freq[wi]
            pair_words.setdefault((a, b), set()).add(wi)

    def key(p):
        return (-pair_count[p], tok_bytes[p[0]], tok_bytes[p[1]])

    heap = [key(p) + (p,) for p in pair_count]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        negc, _, _, p = heapq.heappop(heap)
        if pair_count.get(p, 0) != -negc or negc == 0:
            continue  # stale entry
        new = len(tok_bytes)
        tok_bytes.append(tok_bytes[p[0]] + tok_bytes[p[1]])
        merges.append(p)
        touched = set()
        for wi in sorted(pair_words.pop(p, ())):
            sym, f = words[wi], freq[wi]
            for a, b in zip(sym, sym[1:]):
                pair_count[(a, b)] -= f
                touched.add((a, b))
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == p[0] and sym[i + 1] == p[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            words[wi] = out
            for a, b in zip(out, out[1:]):
                pair_count[(a, b)] += f
                pair_words.setdefault((a, b), set()).add(wi)
                touched.add((a, b))
        pair_count.pop(p, None)
        for q in touched:
            c = pair_count.get(q, 0)
            if c > 0:
                heapq.heappush(heap, key(q) + (q,))
            else:
                pair_count.pop(q, None)
    return merges, tok_bytes


# ---- encoding -------------------------------------------------------------------------------------------------------

class Tokenizer:
    """Encoder for merges learned by train(); specials: {string: id} (ids after the BPE vocabulary)."""

    def __init__(self, merges, specials):
        self.merges = list(merges)
        self.rank = {p: i for i, p in enumerate(self.merges)}
        self.new_id = {p: 256 + i for i, p in enumerate(self.merges)}
        self.tok_bytes = [bytes([b]) for b in BYTE_ORDER]
        for a, b in self.merges:
            self.tok_bytes.append(self.tok_bytes[a] + self.tok_bytes[b])
        self.specials = dict(specials)
        self.special_re = re.compile("|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True)))
        self.cache = {}

    def _bpe(self, piece):
        if piece in self.cache:
            return self.cache[piece]
        sym = [BYTE_ID[b] for b in piece.encode("utf-8")]
        while len(sym) > 1:
            best = min(zip(sym, sym[1:]), key=lambda q: self.rank.get(q, 1 << 30))
            if best not in self.rank:
                break
            new, out, i = self.new_id[best], [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        self.cache[piece] = sym
        return sym

    def encode_plain(self, text):
        """Ids of text with no special tokens in it."""
        ids = []
        for piece in pretokenize(unicodedata.normalize("NFC", text)):
            ids += self._bpe(piece)
        return ids

    def encode(self, text):
        """Ids of text, special token strings matched first (add_special_tokens has nothing to add here)."""
        ids, pos = [], 0
        for m in self.special_re.finditer(text):
            if m.start() > pos:
                ids += self.encode_plain(text[pos:m.start()])
            ids.append(self.specials[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self.encode_plain(text[pos:])
        return ids

    def decode_bytes(self, ids):
        inv = {v: k.encode("utf-8") for k, v in self.specials.items()}
        return b"".join(inv[i] if i in inv else self.tok_bytes[i] for i in ids)

    def token_str(self, i):
        return "".join(BYTE_CHARS[BYTE_ID[b]] for b in self.tok_bytes[i])

    def to_json(self):
        """tokenizer.json (a dict) for this tokenizer."""
        vocab = {self.token_str(i): i for i in range(len(self.tok_bytes))}
        if len(vocab) != len(self.tok_bytes):
            raise ValueError("two tokens with the same bytes")
        added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for s, i in sorted(self.specials.items(), key=lambda x: x[1])]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab,
                      "merges": [f"{self.token_str(a)} {self.token_str(b)}" for a, b in self.merges]},
        }
