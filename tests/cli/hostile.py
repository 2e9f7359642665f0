"""hostile.py — the hostile-input battery behind tests/cli/test_hostile.sh: broken files made from good ones (shards,
compressed chunks, safetensors, tokenizer.json, config.json, corpora, ingest streams, steering and accuracy files),
each fed to the program that reads it. Every case must end with exit 2 (bad data; a few are usage errors, 1), one
line on stderr naming the file and the problem, and never a crash (exit >= 128 or a sanitizer report).
Absurd sizes are read under a 2 GiB address-space limit (not under sanitizers), so an allocation sized by the
file's numbers fails as out-of-memory (exit 3) instead of passing.
Usage: hostile.py --bin BIN --tests TESTS --work DIR"""
import argparse
import glob
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys

import h5py
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--tests", required=True)
ap.add_argument("--work", required=True)
a = ap.parse_args()
sys.path.insert(0, os.path.join(a.tests, "..", "capture", "python"))
from moetrace import frames  # noqa: E402

B = a.bin
CAP, INFO, RED, STATS = (os.path.join(B, x) for x in ("moetrace-capture", "moetrace-info", "moetrace-reduce",
                                                       "moetrace-stats"))
W = a.work
os.makedirs(W, exist_ok=True)
TINY = os.path.join(a.tests, "models", "tiny", "qwen3_moe")
SANITIZED = bool(os.environ.get("MTR_SANITIZE"))
counts = {"ok": 0, "bad": 0}


def limit_memory():
    lim = 2 << 30
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


def case(name, cmd, want=2, names=None, about=None, stdin=None, capped=False):
    """Run cmd; it must exit `want` (an int or a tuple), never crash, and print one stderr line that contains
    `names` (the file) once and matches the regular expression `about` (the problem) outside the paths it names;
    no part of the line is repeated ("PATH: PATH: ...")."""
    r = subprocess.run(cmd, capture_output=True, stdin=stdin,
                       preexec_fn=limit_memory if capped and not SANITIZED else None)
    err = r.stderr.decode(errors="replace").strip()
    lines = err.splitlines()
    wants = want if isinstance(want, tuple) else (want,)
    why = []
    if r.returncode < 0 or r.returncode >= 128:
        why.append("crashed (exit %d)" % r.returncode)
    elif r.returncode not in wants:
        why.append("exit %d, wanted %s" % (r.returncode, "/".join(map(str, wants))))
    if "Sanitizer" in err or "runtime error" in err:
        why.append("sanitizer report")
    elif len(lines) != 1:
        why.append("%d stderr lines" % len(lines))
    if names and names not in err:
        why.append("does not name %s" % names)
    elif names and err.count(names) > 1:
        why.append("names %s %d times" % (names, err.count(names)))
    twice = re.search(r"(?:^|\s)(\S[^:]*: )\1", err)
    if twice:
        why.append("repeats %r" % twice.group(1))
    said = re.sub(re.escape(W) + r"[^:]*", "", err)  # the problem must be told by the words, not the file name
    if about and not re.search(about, said, re.I):
        why.append("does not say /%s/" % about)
    if why:
        counts["bad"] += 1
        print("not ok %s: %s; stderr: %s" % (name, ", ".join(why), err[:400].replace("\n", " | ")), flush=True)
    else:
        counts["ok"] += 1
        print("ok %s (exit %d: %s)" % (name, r.returncode, err[:160]), flush=True)
    return r


def fresh(name, src):
    d = os.path.join(W, name)
    if os.path.isdir(src):
        shutil.copytree(src, d)
    else:
        shutil.copy(src, d)
    return d


# ---- traces -------------------------------------------------------------------------------------------------
def stream(path, n=6, L=4, E=8, T=40, bad=None, langs=("eng_Latn", "fra_Latn")):
    m = dict(model_id="test/hostile", model_type="qwen3_moe", n_layers=L, n_experts=E, top_k=2, renormalize=True)
    base = np.random.default_rng(3).standard_normal((T, L, E)).astype(np.float32)
    with open(path, "wb") as f:
        f.write(frames.encode_header(m, logits_dtype="f32", corpus_id="hostile"))
        for s in range(n):
            z = base + np.float32(s)
            if bad and s in bad:
                z[bad[s]] = np.float32(np.nan) if s % 2 == 0 else np.float32(np.inf)
            f.write(frames.encode_seq(L, E, s, z, "u%d" % (s // len(langs)), langs[s % len(langs)], "flores",
                                      token_ids=np.arange(T) + s))
        f.write(frames.encode_end(n))


def ingest(run, path, *extra):
    r = subprocess.run([CAP, "ingest", "--out", run, "--input", path, "--no-sync", "--quiet", *extra],
                       capture_output=True)
    assert r.returncode == 0, r.stderr


stream(os.path.join(W, "s.bin"))
GOOD = os.path.join(W, "good")
ingest(GOOD, os.path.join(W, "s.bin"), "--dtype", "bf16")
SHARD = sorted(glob.glob(GOOD + "/shard-*.h5"))[0]
case_base = os.path.basename(SHARD)


def shard_case(tag, mutate, about=None, capped=False, reduce=True):
    """A copy of the good run with its shard changed by mutate(path); info --deep and reduce must refuse it."""
    run = fresh("run-" + tag, GOOD)
    p = os.path.join(run, case_base)
    mutate(p)
    case("shard %s: info --deep" % tag, [INFO, "--deep", run], names=case_base, about=about, capped=capped)
    if reduce:
        case("shard %s: reduce" % tag, [RED, run, "-o", run + "-out", "-q", "--threads", "1"], names=case_base,
             about=about, capped=capped)


def truncate_to(frac):
    def f(p):
        n = os.path.getsize(p)
        with open(p, "r+b") as fh:
            fh.truncate(int(n * frac) if frac < 1 else n - 1)
    return f


for frac in (0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 1.0):
    shard_case("truncated to %g" % frac if frac < 1 else "truncated by one byte", truncate_to(frac),
               about="truncat|damaged|not .*HDF5|signature|cannot|empty")


def chunk_extent(p):
    with h5py.File(p, "r") as f:
        ci = f["router/logits"].id.get_chunk_info(0)
        return ci.byte_offset, ci.size


def flip_in_chunk(where):
    def f(p):
        off, size = chunk_extent(p)
        pos = off + int(size * where)
        with open(p, "r+b") as fh:
            fh.seek(pos)
            b = fh.read(1)
            fh.seek(pos)
            fh.write(bytes([b[0] ^ 0x10]))
    return f


for where in (0.0, 0.01, 0.5, 0.999):
    shard_case("compressed chunk, bit flipped at %g of it" % where, flip_in_chunk(where),
               about="corrupt|checksum|decompress|zstd|chunk")


def chunk_replaced(p):
    """the first chunk overwritten by a valid zstd frame of the wrong decoded size"""
    off, size = chunk_extent(p)
    import zlib  # noqa: F401  (zstd is not in Python's standard library: write a raw-block frame by hand)
    payload = b"\0" * 16
    frame = b"\x28\xb5\x2f\xfd" + bytes([0x20 | 0x00, len(payload)]) + bytes([0x01 | (len(payload) << 3), 0, 0]) + payload
    frame = frame[:size].ljust(size, b"\0")
    with open(p, "r+b") as fh:
        fh.seek(off)
        fh.write(frame)


shard_case("compressed chunk replaced by a short zstd frame", chunk_replaced, about="corrupt|chunk|decod|size")


def set_attr(name, value, dtype=None):
    def f(p):
        with h5py.File(p, "r+") as fh:
            if dtype:
                fh.attrs.create(name, value, dtype=dtype)
            else:
                fh.attrs[name] = value
    return f


shard_case("format_version 2", set_attr("format_version", 2, "u4"), about="version")
shard_case("format not moetrace", set_attr("format", "hdf5-other"), about="format|not a moetrace")
shard_case("n_layers 3, logits have 4", set_attr("n_layers", 3, "u4"), about="layer|shape|dimension|disagree|match")
shard_case("n_experts 9, logits have 8", set_attr("n_experts", 9, "u4"), about="expert|shape|dimension|match")
shard_case("top_k 0", set_attr("top_k", 0, "u4"), about="top")
shard_case("layer_index not increasing", set_attr("layer_index", np.array([0, 2, 1, 3], "i4")), about="layer_index|increas")
shard_case("n_tokens larger than the datasets", lambda p: set_attr("n_tokens", 41 * 6, "u8")(p), about="token|length|shape")
shard_case("n_tokens absurd (2^50)", set_attr("n_tokens", 1 << 50, "u8"), about="token|implausib|length|shape", capped=True)
shard_case("n_sequences absurd (2^40)", set_attr("n_sequences", 1 << 40, "u8"), about="sequence|implausib|length", capped=True)
shard_case("n_experts absurd (4e9)", set_attr("n_experts", 4000000000, "u4"), about="expert|range|limit", capped=True)
shard_case("n_layers absurd (2^31)", set_attr("n_layers", 1 << 31, "u4"), about="layer|range|limit", capped=True)
shard_case("n_sequences missing (unfinished)", lambda p: h5py.File(p, "r+").attrs.__delitem__("n_sequences"),
           about="not finished|unfinished|partial|n_sequences")


def seq_tokens_beyond(p):
    with h5py.File(p, "r+") as fh:
        n = fh["seq/n_tokens"][()]
        n[-1] += 1000
        fh["seq/n_tokens"][...] = n


def seq_offsets_overlap(p):
    with h5py.File(p, "r+") as fh:
        o = fh["seq/token_offset"][()]
        o[1] = 1
        fh["seq/token_offset"][...] = o


shard_case("a sequence running past n_tokens", seq_tokens_beyond, about="token|range|outside|beyond")
shard_case("token ranges overlapping", seq_offsets_overlap, about="token|overlap|disjoint|ascending|range")


def logits_dtype_attr(p):
    with h5py.File(p, "r+") as fh:
        fh["router/logits"].attrs["dtype"] = "f64"


shard_case("logits dtype attribute unknown", logits_dtype_attr, about="dtype")


def local_heap_size(k, size):
    """The k-th group local heap ("HEAP", version 0) declares a data segment of `size` bytes (HDF5 1.10 allocates
    what it declares before reading it)."""
    def f(p):
        with open(p, "r+b") as fh:
            data = fh.read()
            at = [m.start() for m in re.finditer(b"HEAP\x00", data)]
            if k >= len(at):
                raise SystemExit("%s has %d local heaps, not %d" % (p, len(at), k + 1))
            fh.seek(at[k] + 8)
            fh.write(struct.pack("<Q", size))
    return f


with open(SHARD, "rb") as _fh:
    N_HEAPS = len(re.findall(b"HEAP\x00", _fh.read()))
if N_HEAPS < 4:  # the root group, seq, tok and router
    print("not ok shard local heaps: %d found, expected the root group's and three groups'" % N_HEAPS)
for k in range(N_HEAPS):
    shard_case("local heap %d of %d declares 2^56 bytes" % (k + 1, N_HEAPS), local_heap_size(k, 1 << 56),
               about="local heap")

# NaN / Inf logits: counted, reported by info, flagged per sequence, excluded by reduce
stream(os.path.join(W, "nan.bin"), bad={1: (0, 2, 3), 2: (5, 1, 0), 4: (slice(0, 3), 0, 1)})
NAN = os.path.join(W, "nan-run")
ingest(NAN, os.path.join(W, "nan.bin"), "--dtype", "bf16")
r = subprocess.run([INFO, "--deep", "--json", NAN], capture_output=True, text=True)
try:
    nonfinite = json.loads(r.stdout).get("n_nonfinite", json.loads(r.stdout).get("nonfinite"))
except ValueError:
    nonfinite = None
with h5py.File(sorted(glob.glob(NAN + "/shard-*.h5"))[0], "r") as f:
    flagged = [int(x) for x in f["seq/seq_id"][()][(f["seq/flags"][()] & 4) != 0]]
txt = subprocess.run([INFO, "--deep", NAN], capture_output=True, text=True).stdout
m = re.search(r"(\d+) NaN/Inf values", txt)
if r.returncode == 0 and flagged == [1, 2, 4] and m and int(m.group(1)) == 5:
    print("ok NaN/Inf logits: info --deep counts 5 values, sequences 1, 2, 4 flagged (bit 2)")
else:
    print("not ok NaN/Inf logits counted: exit %d, flagged %s, info says %s" % (r.returncode, flagged,
                                                                                 m.group(0) if m else txt[-300:]))
r = subprocess.run([RED, NAN, "-o", NAN + "-out", "--threads", "1"], capture_output=True, text=True)
m = re.search(r"(\d+) NaN/Inf excluded", r.stderr)
used = {}
if r.returncode == 0:
    with h5py.File(NAN + "-out/summaries.h5", "r") as f:
        used = dict(zip(f["seq/seq_id"][()].tolist(), f["seq/n_used"][()].tolist()))
if r.returncode == 0 and m and int(m.group(1)) == 5 and used.get(1) == 39 and used.get(4) == 37 and used.get(0) == 40:
    print("ok NaN/Inf logits: reduce excludes the 5 tokens (sequence 4 keeps 37 of 40) and says so")
else:
    print("not ok NaN/Inf logits excluded by reduce: exit %d, %s, used %s" % (r.returncode, r.stderr.strip()[-300:],
                                                                              used))

# ---- safetensors ----------------------------------------------------------------------------------------------
ST = os.path.join(TINY, "model.safetensors")
raw = open(ST, "rb").read()
hlen = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + hlen])


def model_with(tag, blob=None, hdr=None):
    d = os.path.join(W, "model-" + tag)
    shutil.copytree(TINY, d, ignore=shutil.ignore_patterns("golden.safetensors"))
    if hdr is not None:
        text = json.dumps(hdr).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        blob = struct.pack("<Q", len(text)) + text + raw[8 + hlen:]
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(blob)
    return d


def run_model(tag, d, about):
    case("safetensors %s" % tag, [CAP, "run", "--model", d, "--corpus", os.path.join(a.tests, "data", "udhr-mini.jsonl"),
                                  "--limit", "1", "--out", os.path.join(W, "x-" + tag)],
         names="model.safetensors", about=about, capped=True)


run_model("header length past the file", model_with("hl", blob=struct.pack("<Q", len(raw)) + raw[8:]), "header|length|size|truncat")
run_model("header length 2^63", model_with("hl2", blob=struct.pack("<Q", 1 << 63) + raw[8:]), "header|length|size")
run_model("header length 0", model_with("hl0", blob=struct.pack("<Q", 0) + raw[8:]), "header|JSON|length")
run_model("bad JSON", model_with("js", blob=raw[:8] + b"[" + raw[9:]), "JSON|header")
run_model("header not an object", model_with("arr", blob=struct.pack("<Q", 8) + b"[1,2,3] " + raw[8 + hlen:]),
          "object|header|JSON")
names = [k for k in header if k != "__metadata__"]
h = json.loads(json.dumps(header))
t0, t1 = names[0], names[1]
h[t1]["data_offsets"] = [h[t0]["data_offsets"][0], h[t0]["data_offsets"][0] + (h[t1]["data_offsets"][1] - h[t1]["data_offsets"][0])]
run_model("overlapping offsets", model_with("ov", hdr=h), "overlap|offset")
h = json.loads(json.dumps(header))
h[t0]["data_offsets"] = [h[t0]["data_offsets"][0], len(raw) * 4]
run_model("offsets past the file", model_with("oor", hdr=h), "offset|outside|past|range|size|shape")
h = json.loads(json.dumps(header))
h[t0]["dtype"] = "Q7"
run_model("unknown dtype", model_with("dt", hdr=h), "dtype")
h = json.loads(json.dumps(header))
h[t0]["shape"] = [1 << 40, 1 << 40]
run_model("shape disagreeing with offsets", model_with("sh", hdr=h), "shape|offset|size|bytes")
h = json.loads(json.dumps(header))
h[t0]["data_offsets"] = "0-10"
run_model("offsets of the wrong type", model_with("ty", hdr=h), "offset")

# ---- config.json ----------------------------------------------------------------------------------------------
cfg = json.load(open(os.path.join(TINY, "config.json")))


def config_case(tag, change, about):
    d = os.path.join(W, "cfg-" + tag)
    shutil.copytree(TINY, d, ignore=shutil.ignore_patterns("golden.safetensors"))
    c = json.loads(json.dumps(cfg))
    change(c)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(c if isinstance(c, str) else json.dumps(c))
    case("config.json %s" % tag, [CAP, "run", "--model", d, "--corpus", os.path.join(a.tests, "data", "udhr-mini.jsonl"),
                                  "--limit", "1", "--out", os.path.join(W, "y-" + tag)],
         names="config.json", about=about, capped=True)


config_case("hidden_size missing", lambda c: c.pop("hidden_size"), "hidden_size")
config_case("num_experts a string", lambda c: c.__setitem__("num_experts", "8"), "num_experts")
config_case("num_hidden_layers negative", lambda c: c.__setitem__("num_hidden_layers", -3), "num_hidden_layers")
config_case("vocab_size absurd", lambda c: c.__setitem__("vocab_size", 1 << 40), "vocab_size")
config_case("rope_scaling a list", lambda c: c.__setitem__("rope_scaling", [1, 2]), "rope_scaling")
config_case("mlp_only_layers a number", lambda c: c.__setitem__("mlp_only_layers", 3), "mlp_only_layers")
config_case("model_type unknown", lambda c: c.__setitem__("model_type", "gpt2"), "model_type")
config_case("model_type missing", lambda c: c.pop("model_type"), "model_type")
config_case("rms_norm_eps a string", lambda c: c.__setitem__("rms_norm_eps", "1e-6"), "rms_norm_eps")
config_case("num_experts_per_tok above num_experts", lambda c: c.__setitem__("num_experts_per_tok", 99), "num_experts_per_tok")
os.makedirs(os.path.join(W, "cfg-array"))
for f in os.listdir(TINY):
    if f not in ("golden.safetensors", "config.json"):
        shutil.copy(os.path.join(TINY, f), os.path.join(W, "cfg-array"))
with open(os.path.join(W, "cfg-array", "config.json"), "w") as f:
    f.write("[1, 2, 3]")
case("config.json not an object (array)", [CAP, "run", "--model", os.path.join(W, "cfg-array"), "--corpus",
                                          os.path.join(a.tests, "data", "udhr-mini.jsonl"), "--limit", "1", "--out",
                                          os.path.join(W, "y-arr")], names="config.json", about="object")
config_case("hidden_size not matching the weights", lambda c: c.__setitem__("hidden_size", cfg["hidden_size"] * 2),
            "shape|hidden|tensor")

# ---- tokenizer.json -------------------------------------------------------------------------------------------
tok = json.load(open(os.path.join(TINY, "tokenizer.json"), encoding="utf-8"))


def tok_case(tag, change, about):
    d = os.path.join(W, "tok-" + tag)
    os.makedirs(d)
    for f in ("tokenizer_config.json", "config.json"):
        shutil.copy(os.path.join(TINY, f), d)
    t = json.loads(json.dumps(tok))
    change(t)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(t, f)
    case("tokenizer.json %s" % tag, [CAP, "tokenize", "--tokenizer", d], stdin=subprocess.DEVNULL,
         names="tokenizer.json", about=about)


tok_case("model missing", lambda t: t.pop("model"), "model")
tok_case("model.type unknown", lambda t: t["model"].__setitem__("type", "Unigramz"), "type|model")
tok_case("vocab an array", lambda t: t["model"].__setitem__("vocab", [1, 2]), "vocab")
tok_case("vocab id a string", lambda t: t["model"]["vocab"].__setitem__(next(iter(t["model"]["vocab"])), "7"), "vocab|id|integer")
tok_case("merges an object", lambda t: t["model"].__setitem__("merges", {"a": 1}), "merges")
tok_case("merges naming unknown tokens", lambda t: t["model"]["merges"].insert(0, "qqqzz1 qqqzz2"), "merge")
tok_case("added_tokens entry without content", lambda t: t.__setitem__("added_tokens", [{"id": 3}]), "added_tokens|content")
tok_case("pre_tokenizer type a number", lambda t: t.__setitem__("pre_tokenizer", {"type": 5}), "pre_tokenizer|type")
tok_case("normalizer unknown", lambda t: t.__setitem__("normalizer", {"type": "Frobnicate"}), "normalizer|Frobnicate")

# ---- corpora --------------------------------------------------------------------------------------------------
rows = [json.loads(x) for x in open(os.path.join(a.tests, "data", "udhr-mini.jsonl"), encoding="utf-8")][:16]


def corpus_case(tag, data, about, name="c.jsonl"):
    p = os.path.join(W, "corpus-" + re.sub("[^A-Za-z0-9]+", "_", tag) + "-" + name)
    with open(p, "wb") as f:
        f.write(data)
    case("corpus %s" % tag, [CAP, "run", "--model", TINY, "--corpus", p, "--out", p + ".run"],
         names=os.path.basename(p), about=about)


good_lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
bad = list(good_lines)
bad[3] = bad[3].replace(b"\"text\": \"", b"\"text\": \"ab\xc3\x28cd", 1)
corpus_case("invalid UTF-8 (JSONL)", b"\n".join(bad) + b"\n", r"UTF-8")
bad = list(good_lines)
bad[2] = bad[2].replace(b"\"text\": \"", b"\"text\": \"\xff\xfe")
corpus_case("invalid UTF-8 bytes at a text's start", b"\n".join(bad) + b"\n", r"UTF-8")
corpus_case("duplicate unit/language pair", b"\n".join(good_lines + [good_lines[0]]) + b"\n", r"repeat|duplicate|twice")
tsv = "unit_id\tlang\tdataset\ttext\n" + "".join("%s\t%s\tudhr\t%s\n" % (r["unit_id"], r["lang"], r["text"][:40]) for r in rows)
corpus_case("TSV invalid UTF-8", tsv.encode().replace(b"\tudhr\t", b"\tudhr\t\xc0\xaf", 1), r"UTF-8", name="c.tsv")
corpus_case("TSV duplicate pair", (tsv + tsv.splitlines()[1] + "\n").encode(), r"repeat|duplicate|twice", name="c.tsv")
corpus_case("TSV ragged row", (tsv + "u9\teng_Latn\n").encode(), r"field|column", name="c.tsv")
corpus_case("JSONL a line not JSON", b"\n".join(good_lines[:3] + [b"{not json"]) + b"\n", r"JSON")
corpus_case("JSONL text not a string", b"\n".join(good_lines[:3] + [b'{"unit_id": "z", "lang": "eng_Latn", "dataset": "d", "text": 5}']) + b"\n", r"text")
fl = os.path.join(W, "flores-bad")
os.makedirs(fl)
open(os.path.join(fl, "eng_Latn.dev"), "wb").write(b"one\ntwo\nthree\n")
open(os.path.join(fl, "fra_Latn.dev"), "wb").write(b"un\ndeux\n")
case("corpus FLORES files of unequal length", [CAP, "run", "--model", TINY, "--corpus", fl, "--out", fl + ".run"],
     names="fra_Latn.dev", about="line")
open(os.path.join(fl, "fra_Latn.dev"), "wb").write(b"un\nde\xffux\ntrois\n")
case("corpus FLORES invalid UTF-8", [CAP, "run", "--model", TINY, "--corpus", fl, "--out", fl + ".run2"],
     names="fra_Latn.dev", about="UTF-8")

# units without English: captured (they are data), then reduce lists them apart and leaves them out of the
# divergence from English; a corpus without any English cannot give a divergence from English at all
noen = [r for r in rows if r["lang"] != "eng_Latn"]
p = os.path.join(W, "noen.jsonl")
with open(p, "w", encoding="utf-8") as f:
    for r in noen[:6]:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for r in rows:
        if r["unit_id"] == rows[0]["unit_id"]:
            f.write(json.dumps(dict(r, unit_id="with-en"), ensure_ascii=False) + "\n")
subprocess.run([CAP, "run", "--model", TINY, "--corpus", p, "--out", p + ".run", "--no-sync", "--quiet"], check=True)
r = subprocess.run([RED, p + ".run", "-o", p + ".out", "-q", "--threads", "1"], capture_output=True, text=True)
miss = [x for x in open(p + ".out/units_missing_en.tsv") if not x.startswith("#")] if r.returncode == 0 else []
if r.returncode == 0 and len(miss) == 6 and all("with-en" not in x for x in miss):
    print("ok units without English: reduce lists the 6 sequences of units lacking English in units_missing_en.tsv")
else:
    print("not ok units without English: exit %d %s; listed %d" % (r.returncode, r.stderr.strip()[:200], len(miss)))
p2 = os.path.join(W, "noen-at-all.jsonl")
with open(p2, "w", encoding="utf-8") as f:
    for r in noen[:6]:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
subprocess.run([CAP, "run", "--model", TINY, "--corpus", p2, "--out", p2 + ".run", "--no-sync", "--quiet"], check=True)
case("reduce of a run without English", [RED, p2 + ".run", "-o", p2 + ".out", "-q", "--threads", "1"],
     want=(1, 2), about="eng_Latn|English")

# ---- ingest frames cut at every byte offset -------------------------------------------------------------------
# two small sequence frames and the end frame, cut at every byte offset of the frames (and every 16th of the
# header): exit 2, one line naming the offset, every whole frame before the cut kept
m = dict(model_id="t/cut", model_type="qwen3_moe", n_layers=2, n_experts=4, top_k=2)
pieces = [frames.encode_header(m, logits_dtype="f32")]
for sid in range(2):
    pieces.append(frames.encode_seq(2, 4, sid, np.full((3, 2, 4), sid, np.float32), "u", ("eng_Latn", "fra_Latn")[sid],
                                    "d", token_ids=np.arange(3)))
pieces.append(frames.encode_end(2))
full = b"".join(pieces)
ends = np.cumsum([len(x) for x in pieces])  # byte after the header, frame 0, frame 1, end frame
hdr_len = int(ends[0])
offsets = sorted(set(range(0, hdr_len, 16)) | set(range(hdr_len, len(full))))
fails = []
os.makedirs(os.path.join(W, "cut"))
for cut in offsets:
    run = os.path.join(W, "cut", str(cut))
    r = subprocess.run([CAP, "ingest", "--out", run, "--no-sync", "--quiet"], input=full[:cut], capture_output=True)
    err = r.stderr.decode(errors="replace").strip()
    want_kept = int(sum(1 for e in ends[1:3] if cut >= e))
    kept = 0
    for sh in glob.glob(run + "/shard-*.h5"):
        with h5py.File(sh, "r") as f:
            kept += len(f["seq/seq_id"])
    if r.returncode != 2 or len(err.splitlines()) != 1 or "byte" not in err or kept != want_kept:
        fails.append("cut %d: exit %d kept %d (want %d): %s" % (cut, r.returncode, kept, want_kept, err[:120]))
    shutil.rmtree(run, ignore_errors=True)
if fails:
    print("not ok ingest stream cut at %d byte offsets: %d wrong: %s" % (len(offsets), len(fails), fails[:3]))
else:
    print("ok ingest stream cut at each of the %d byte offsets of its frames (and every 16th of its %d-byte header):"
          " exit 2, one line with the offset, whole frames kept" % (len(full) - hdr_len, hdr_len))

# ---- steering files -------------------------------------------------------------------------------------------
st = json.load(open(os.path.join(TINY, "steer_hard.json")))


def steer_case(tag, change, about):
    s = json.loads(json.dumps(st))
    change(s)
    p = os.path.join(W, "steer-" + tag.replace(" ", "_") + ".json")
    json.dump(s, open(p, "w"))
    case("steering %s" % tag, [CAP, "run", "--model", TINY, "--corpus", os.path.join(a.tests, "data", "udhr-mini.jsonl"),
                               "--limit", "1", "--out", p + ".run", "--steer", p], names=os.path.basename(p), about=about)


def more_experts(s):
    s["n_experts"] *= 2
    s["coef"] = [row + [0.0] * len(row) for row in s["coef"]]


def more_layers(s):
    s["n_layers"] += 1
    s["layer_index"] = s["layer_index"] + [s["layer_index"][-1] + 1]
    s["coef"] = s["coef"] + [[0.0] * s["n_experts"]]


steer_case("for twice the experts", more_experts, "expert|match|model")
steer_case("for one more layer", more_layers, "layer|match|model")
steer_case("other top-k", lambda s: s.__setitem__("top_k", s["top_k"] + 1), "top|match|model")
steer_case("other layer map", lambda s: s.__setitem__("layer_index", [x + 1 for x in s["layer_index"]]), "layer|map|match")
steer_case("coef rows short", lambda s: s["coef"][0].pop(), "coef")
steer_case("format_version 9", lambda s: s.__setitem__("format_version", 9), "version")
steer_case("expert outside the model", lambda s: s["experts"].append([0, 999]), "expert")
steer_case("experts out of order", lambda s: s["experts"].reverse(), "sorted|order")

# ---- accuracy files -------------------------------------------------------------------------------------------
SY = os.path.join(W, "synth")
subprocess.run([CAP, "synth", "--out", SY, "--layers", "6", "--experts", "8", "--top-k", "2", "--units", "3",
                "--langs", "eng_Latn:1,fra_Latn:0.8,zho_Hans:0.5,hin_Deva:0.3", "--len-mean", "8", "--len-max", "12",
                "--quiet"], check=True)
subprocess.run([RED, SY, "-o", SY + "-tab", "-q", "--threads", "1"], check=True)
acc = open(SY + "/accuracy.tsv").read()


def acc_case(tag, text, about, name="acc.tsv"):
    p = os.path.join(W, "acc-" + tag.replace(" ", "_") + "-" + name)
    open(p, "w").write(text)
    case("accuracy %s" % tag, [STATS, "correlate", "--tables", SY + "-tab", "--accuracy", p, "--band", "2-4"],
         names=os.path.basename(p), about=about)


acc_case("unknown language code", acc.replace("zho_Hans", "xyz_Qqqq"), "xyz_Qqqq|language")
acc_case("unknown language (JSON)", json.dumps({"accuracy": [{"lang": "klingon", "task": "math", "metric": "accuracy",
                                                              "value": 0.5, "n": 3}]}), "klingon|language", name="acc.json")
acc_case("lm-eval task placed in no language", json.dumps({"results": {"belebele_qqq_Zzzz": {"acc,none": 0.5}}}),
         "qqq|language|task", name="results.json")
row = [x for x in acc.splitlines() if x and not x.startswith("#")][0]
acc_case("value not a number", acc.replace(row, row.replace("\t0.", "\tzero.")), "number|value")
acc_case("value NaN", acc.replace(acc.splitlines()[2].split("\t")[3], "nan"), "NaN|finite|value")
acc_case("duplicate row", acc + acc.splitlines()[-1] + "\n", "duplicate|twice|repeat")

# a steering file (HDF5) moetrace-stats selected for another model: 6 layers x 8 experts against the tiny 2-layer one
subprocess.run([STATS, "steer", "--tables", SY + "-tab", "--dataset", "math", "--generic", "flores", "--tau", "0.01",
                "--band", "2-4", "--op", "soft", "--out", SY + "-steer"], check=True, capture_output=True)
case("steering HDF5 file for another model", [CAP, "run", "--model", TINY, "--corpus",
                                             os.path.join(a.tests, "data", "udhr-mini.jsonl"), "--limit", "1", "--out",
                                             os.path.join(W, "steer-h5.run"), "--steer", SY + "-steer/task.h5"],
     names="task.h5", about="layer|model|match")



# ---- summaries.h5 and tables.h5 from elsewhere: seeded bit flips ------------------------------------------------
# reduce's phase 2 reads summaries.h5 and moetrace-stats reads tables.h5, files users move between machines. Each
# mutant gets 1-4 flipped bits, mostly in the metadata at the front of the file; every run must end in a result or
# a one-line error naming the file, never a crash or a hang.
# Under ASan, libhdf5's own leaks on the error paths of damaged files (tests/lsan.supp, each explained there) are
# suppressed by function, which needs full malloc stacks.
LSAN_ENV = dict(os.environ, LSAN_OPTIONS="suppressions=%s:print_suppressions=0" % os.path.join(a.tests, "lsan.supp"),
                ASAN_OPTIONS=":".join(x for x in (os.environ.get("ASAN_OPTIONS"), "fast_unwind_on_malloc=0") if x))


def flip_campaign(tag, src, n, cmd_of, seed):
    data = open(src, "rb").read()
    rng = np.random.default_rng(seed)
    crashed, unclear, refused = [], [], 0
    for i in range(n):
        b = bytearray(data)
        for _ in range(int(rng.choice([1, 1, 2, 4]))):
            pos = int(rng.integers(min(16384, len(b)))) if rng.random() < 0.6 else int(rng.integers(len(b)))
            b[pos] ^= 1 << int(rng.integers(8))
        p = os.path.join(W, "flip-%s.h5" % tag)
        open(p, "wb").write(b)
        shutil.rmtree(p + "-out", ignore_errors=True)
        try:
            r = subprocess.run(cmd_of(p), capture_output=True, timeout=120, env=LSAN_ENV if SANITIZED else None,
                               preexec_fn=limit_memory if not SANITIZED else None)
        except subprocess.TimeoutExpired:
            crashed.append("mutant %d hangs" % i)
            continue
        err = r.stderr.decode(errors="replace").strip()
        if r.returncode < 0 or r.returncode >= 128 or "Sanitizer" in err or "runtime error" in err:
            crashed.append("mutant %d: exit %d %s" % (i, r.returncode, err[-200:]))
        elif r.returncode != 0:
            refused += 1
            if len(err.splitlines()) != 1 or p not in err:
                unclear.append("mutant %d: %r" % (i, err[:200]))
    if crashed or unclear:
        counts["bad"] += 1
        print("not ok %s: %d mutants crash or hang, %d fail unclearly: %s" % (tag, len(crashed), len(unclear),
                                                                             "; ".join((crashed + unclear)[:4])))
    elif refused == 0:
        counts["bad"] += 1
        print("not ok %s: no mutant was refused (the campaign damages nothing)" % tag)
    else:
        counts["ok"] += 1
        print("ok %s: %d mutants, %d refused with one line naming the file, none crashes" % (tag, n, refused))


flip_campaign("summaries.h5 bit flips, reduce tables", SY + "-tab/summaries.h5", 150,
              lambda p: [RED, "tables", p, "-o", p + "-out", "-q", "--threads", "1"], 15)
flip_campaign("tables.h5 bit flips, stats band", SY + "-tab/tables.h5", 150,
              lambda p: [STATS, "band", "--tables", p, "--band", "2-4"], 16)


def heap_object_size(src, dst, k=0):
    """The first global heap collection's k-th object claims more bytes than the collection holds."""
    b = bytearray(open(src, "rb").read())
    at = b.find(b"GCOL")
    if at < 0:
        raise SystemExit("%s has no global heap collection" % src)
    # "GCOL", version, 3 reserved, collection size (8), then objects: index (2), refs (2), reserved (4), size (8)
    obj = at + 16
    for _ in range(k):
        size = struct.unpack_from("<Q", b, obj + 8)[0]
        obj += 16 + (size + 7) // 8 * 8
    struct.pack_into("<Q", b, obj + 8, 1 << 40)
    open(dst, "wb").write(b)


for tag, src, cmd_of in (("summaries.h5", SY + "-tab/summaries.h5",
                          lambda p: [RED, "tables", p, "-o", p + "-out", "-q", "--threads", "1"]),
                         ("tables.h5", SY + "-tab/tables.h5", lambda p: [STATS, "band", "--tables", p, "--band", "2-4"])):
    p = os.path.join(W, "heap-" + tag)
    heap_object_size(src, p, 1)
    case("%s: a string's global heap object claims 2^40 bytes" % tag, cmd_of(p), names=os.path.basename(p),
         about="heap")
# a string of summaries.h5's sequence table (a chunked string dataset) whose reference claims another length
p = os.path.join(W, "heap-ref-summaries.h5")
shutil.copy(SY + "-tab/summaries.h5", p)
with h5py.File(p, "r") as fh:
    ci = fh["seq/lang"].id.get_chunk_info(0)
with open(p, "r+b") as fh:  # a reference: length (4), collection address (8), object index (4)
    fh.seek(ci.byte_offset)
    fh.write(struct.pack("<I", 1000))
case("summaries.h5: a sequence-table string reference claims 1000 bytes",
     [RED, "tables", p, "-o", p + "-out", "-q", "--threads", "1"], names=os.path.basename(p),
     about=r"/seq/lang.*heap object")

print("# hostile cases: %d passed, %d failed" % (counts["ok"], counts["bad"]))
