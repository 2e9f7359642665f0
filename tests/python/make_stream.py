"""make_stream.py — write an ingest stream (traces/INGEST.md) to stdout or a file for the CLI tests and the
benchmark: N sequences of deterministic f32 logits. Usage:
  make_stream.py N [--layers L] [--experts E] [--tokens T] [--start S] [--no-end] [--cut BYTES] [--slow SECONDS]
  [--out PATH]
--cut stops after BYTES bytes (a truncated stream); --slow sleeps between frames (a producer killed mid-way)."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "capture", "python"))
import numpy as np  # noqa: E402

from moetrace import frames  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("n", type=int)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--experts", type=int, default=16)
ap.add_argument("--tokens", type=int, default=20)
ap.add_argument("--start", type=int, default=0)
ap.add_argument("--no-end", action="store_true")
ap.add_argument("--cut", type=int, default=-1)
ap.add_argument("--slow", type=float, default=0.0)
ap.add_argument("--out", default="-")
a = ap.parse_args()
out = sys.stdout.buffer if a.out == "-" else open(a.out, "wb")
m = dict(model_id="test/stream", model_type="qwen3_moe", n_layers=a.layers, n_experts=a.experts, top_k=2,
         renormalize=True)
written = 0


def emit(b):
    global written
    if a.cut >= 0 and written + len(b) > a.cut:
        out.write(b[:a.cut - written])
        out.flush()
        sys.exit(0)
    out.write(b)
    written += len(b)


emit(frames.encode_header(m, logits_dtype="f32", corpus_id="cli-test"))
base = np.random.default_rng(5).standard_normal((a.tokens, a.layers, a.experts)).astype(np.float32)
for s in range(a.start, a.start + a.n):
    z = base + np.float32(s)  # sequence s: base + s, so readers can check values
    emit(frames.encode_seq(a.layers, a.experts, s, z, f"u{s // 2}", "eng_Latn" if s % 2 == 0 else "fra_Latn",
                           "flores", token_ids=np.arange(a.tokens) + s))
    if a.slow:
        out.flush()
        time.sleep(a.slow)
if not a.no_end:
    emit(frames.encode_end(a.n))
out.flush()
