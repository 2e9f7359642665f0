"""h5py interop: an independent reader and writer of moetrace traces through the libh5zstd.so plugin.

    h5py_interop.py read RUN DUMP_TXT DUMP_F32   h5py reads the run; compare with libmoetrace's dump
    h5py_interop.py rewrite SHARD OUT [--no-shuffle] [--level N] [--chunk C]
                                                   copy a shard, re-compressing /router/logits with h5py's
                                                   own filter pipeline (filter 32015 from the plugin)

Run with Debian's /usr/bin/python3 and HDF5_PLUGIN_PATH pointing at the plugin directory. Exit 0 on success;
on a mismatch print one line saying what differs and exit 1.
"""
import json
import os
import sys

import h5py
import numpy as np


def to_f32(raw, dtype):
    if dtype == "f32":
        return raw.astype(np.float32)
    if dtype == "bf16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "f16":
        return raw.view(np.float16).astype(np.float32)
    raise SystemExit(f"unknown dtype {dtype}")


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def read(run, dump_txt, dump_f32):
    with open(os.path.join(run, "run.json")) as f:
        man = json.load(f)
    rows, chunks = [], []
    for sh in man["shards"]:
        with h5py.File(os.path.join(run, sh["file"]), "r") as h:
            assert text(h.attrs["format"]) == "moetrace", "format attribute"
            assert int(h.attrs["format_version"]) == 1, "format_version"
            L, E = int(h.attrs["n_layers"]), int(h.attrs["n_experts"])
            lg = h["router/logits"]
            assert lg.shape == (int(h.attrs["n_tokens"]), L, E), f"logits shape {lg.shape}"
            dt = text(lg.attrs["dtype"])
            z = to_f32(lg[...], dt)
            if not np.isfinite(z).any() and z.size:
                raise SystemExit("all logits read as non-finite: plugin missing?")
            seq = h["seq"]
            for i in range(len(seq["seq_id"])):
                off, n = int(seq["token_offset"][i]), int(seq["n_tokens"][i])
                rows.append("%d %s %s %s %d %d" % (int(seq["seq_id"][i]), text(seq["unit_id"][i]),
                                                   text(seq["lang"][i]), text(seq["dataset"][i]), n,
                                                   int(seq["flags"][i])))
                chunks.append(z[off:off + n].reshape(-1))
    with open(dump_txt) as f:
        want_rows = [l.rstrip("\n") for l in f]
    if rows != want_rows:
        bad = next(i for i, (a, b) in enumerate(zip(rows + [""], want_rows + [""])) if a != b)
        raise SystemExit(f"sequence table differs at row {bad}: h5py {rows[bad:bad+1]} vs C {want_rows[bad:bad+1]}")
    ours = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    theirs = np.fromfile(dump_f32, dtype="<f4")
    if ours.shape != theirs.shape:
        raise SystemExit(f"logit count differs: h5py {ours.size}, C {theirs.size}")
    same = (ours.view(np.uint32) == theirs.view(np.uint32))
    if not same.all():
        i = int(np.argmin(same))
        raise SystemExit(f"logit {i} differs: h5py {ours[i]!r}, C {theirs[i]!r}")
    print(f"h5py read {len(rows)} sequences, {ours.size} logits, bit-identical to libmoetrace")


def rewrite(src, dst, shuffle, level, chunk):
    with h5py.File(src, "r") as h, h5py.File(dst, "w") as o:
        for k, v in h.attrs.items():
            o.attrs[k] = v
        for g in ("seq", "tok", "router"):
            o.create_group(g)
        for name in ("seq", "tok"):
            for k, d in h[name].items():
                o[name].create_dataset(k, data=d[...], dtype=d.dtype)
        lg = h["router/logits"]
        T, L, E = lg.shape
        c = min(chunk, max(T, 1))
        d = o["router"].create_dataset("logits", data=lg[...], chunks=(c, L, E), compression=32015,
                                       compression_opts=(level,), shuffle=shuffle, maxshape=(None, L, E))
        d.attrs["dtype"] = lg.attrs["dtype"]
    print(f"rewrote {src} -> {dst} with h5py (shuffle={shuffle}, level={level}, chunk={chunk})")


def main(argv):
    if len(argv) >= 4 and argv[0] == "read":
        read(argv[1], argv[2], argv[3])
    elif len(argv) >= 3 and argv[0] == "rewrite":
        rest = argv[3:]
        level = int(rest[rest.index("--level") + 1]) if "--level" in rest else 3
        chunk = int(rest[rest.index("--chunk") + 1]) if "--chunk" in rest else 100
        rewrite(argv[1], argv[2], "--no-shuffle" not in rest, level, chunk)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
