"""Benchmark peer: the phase-1 summaries of moetrace-reduce computed with NumPy/h5py on one thread, for the first
N sequences of a run. Prints "seconds tokens". Same quantities as moetrace-reduce summarize: importance q, top-k
counts, entropy of q, mean token entropy, Jaccard over min(all, 4096) token pairs per sequence."""
import json
import os
import sys
import time

import h5py
import numpy as np

run, limit = sys.argv[1], int(sys.argv[2])
with open(os.path.join(run, "run.json")) as f:
    man = json.load(f)
t0 = time.perf_counter()
tokens = done = 0
rng = np.random.default_rng(0)
for sh in man["shards"]:
    with h5py.File(os.path.join(run, sh["file"]), "r") as h:
        k = int(h.attrs["top_k"])
        lg, seq = h["router/logits"], h["seq"]
        offs, lens = seq["token_offset"][...], seq["n_tokens"][...]
        for o, n in zip(offs, lens):
            if done >= limit:
                break
            z = (lg[o:o + n].astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            z = z[np.isfinite(z).reshape(n, -1).all(axis=1)]
            T, L, E = z.shape
            p = np.exp(z - z.max(axis=2, keepdims=True))
            p /= p.sum(axis=2, keepdims=True)
            q = p.mean(axis=0)
            ent_q = -(q * np.log(np.where(q > 0, q, 1))).sum(axis=1)
            tent = (-(p * np.log(np.where(p > 0, p, 1))).sum(axis=2)).mean(axis=0)
            top = np.argpartition(-z, k - 1, axis=2)[:, :, :k]
            counts = np.zeros((L, E), np.int64)
            for l in range(L):
                np.add.at(counts[l], top[:, l, :].ravel(), 1)
            sets = np.zeros((T, L, E), bool)
            np.put_along_axis(sets, top, True, axis=2)
            pairs = T * (T - 1) // 2
            if pairs <= 4096:
                i, j = np.triu_indices(T, 1)
            else:
                i = rng.integers(0, T, 4096)
                j = (i + rng.integers(1, T, 4096)) % T
            inter = (sets[i] & sets[j]).sum(axis=2)
            jac = (inter / (2 * k - inter)).mean(axis=0)
            tokens += int(n)
            done += 1
print(f"{time.perf_counter() - t0:.6f} {tokens}")
