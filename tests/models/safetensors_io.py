"""safetensors_io.py — read and write safetensors files (and sharded checkpoints with an index) with numpy and
torch only, byte for byte as the reference Rust crate writes them: 8-byte little-endian header length, a compact
JSON header ("__metadata__" first, then the tensors in data order, each {"dtype","shape","data_offsets"}) padded
with spaces to a multiple of 8 bytes, then the tensors' little-endian C-order bytes back to back with no gaps.

Dtypes: F32, F16, BF16, I64, I32 (also F64, I16, I8, U8, BOOL for reading). BF16 has no numpy type: it is read
as a torch.bfloat16 tensor (load) or as float32 widened exactly (load_numpy), and written from a torch.bfloat16
tensor or from a uint16 numpy array of raw bits with dtype="BF16".

Usage: /usr/bin/python3 safetensors_io.py --selftest   (checks the crate's own test vectors)
"""
import json
import os
import struct
import sys

import numpy as np

# numpy dtype of each safetensors dtype's raw bytes (BF16 as raw uint16 bits)
_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
       "I8": "i1", "U8": "u1", "BOOL": "?"}
_SIZE = {k: np.dtype(v).itemsize for k, v in _NP.items()}
# the crate's Dtype enum order (it sorts tensors by descending dtype, then by name)
_RUST_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64",
               "I64", "U64"]
_MAX_HEADER = 100_000_000


def _torch():
    import torch
    return torch


def _as_raw(t, dtype=None):
    """(safetensors dtype, C-contiguous little-endian numpy array of the raw element bytes) of a tensor/array."""
    if not isinstance(t, np.ndarray):
        torch = _torch()
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:
                if dtype not in (None, "BF16"):
                    raise ValueError(f"a bfloat16 tensor cannot be written as {dtype}")
                return "BF16", t.view(torch.int16).numpy().view("<u2").copy()
            t = t.numpy()
        else:
            t = np.asarray(t)
    if dtype is None:
        kinds = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
                 np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16", np.dtype("int8"): "I8",
                 np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}
        dtype = kinds.get(t.dtype.newbyteorder("=") if t.dtype.byteorder not in "=|" else t.dtype)
        if dtype is None:
            raise ValueError(f"numpy dtype {t.dtype} has no safetensors dtype here")
    if dtype not in _NP:
        raise ValueError(f"unsupported safetensors dtype {dtype}")
    if dtype == "BF16":
        if t.dtype.itemsize != 2 or t.dtype.kind not in "ui":
            raise ValueError("BF16 from numpy needs the raw bits as a 16-bit integer array")
        return dtype, _c_order(np.asarray(t).astype("<u2", copy=False))
    return dtype, _c_order(np.asarray(t, dtype=_NP[dtype]))


def _c_order(a):
    # (np.ascontiguousarray would turn a 0-d array into 1-d); no copy when the array is already C-ordered
    return a if a.flags.c_contiguous else a.copy(order="C")


def serialize(tensors, metadata=None, order="rust"):
    """The bytes of a safetensors file. tensors: dict name -> tensor/array, or a list of (name, tensor) or
    (name, tensor, dtype). order: "rust" sorts as the crate does (descending dtype, then name); "given" keeps the
    order of `tensors`. metadata: dict str -> str (written as "__metadata__"), or None."""
    head, arrays = _prepare(tensors, metadata, order)
    return b"".join([head] + [a.tobytes(order="C") for a in arrays])


def _prepare(tensors, metadata, order):
    """(8-byte length + padded header, the raw arrays in data order)."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    prepared, seen = [], set()
    for it in items:
        name, t, dt = (it[0], it[1], it[2]) if len(it) == 3 else (it[0], it[1], None)
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"bad tensor name {name!r}")
        if name in seen:
            raise ValueError(f"tensor {name!r} named twice")
        seen.add(name)
        dtype, raw = _as_raw(t, dt)
        prepared.append((name, dtype, list(raw.shape), raw))
    if order == "rust":
        prepared.sort(key=lambda p: p[0])
        prepared.sort(key=lambda p: _RUST_ORDER.index(p[1]), reverse=True)  # stable: names stay sorted
    elif order != "given":
        raise ValueError(f"order must be 'rust' or 'given', not {order!r}")
    header, off = {}, 0
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("__metadata__ must map strings to strings")
        header["__metadata__"] = dict(metadata)
    for name, dtype, shape, raw in prepared:
        n = raw.size * _SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return struct.pack("<Q", len(hb)) + hb, [raw for _, _, _, raw in prepared]


def save_file(tensors, path, metadata=None, order="rust"):
    """Write a safetensors file (see serialize), tensor by tensor; a temporary is written and renamed into place.
    Returns the file size."""
    head, arrays = _prepare(tensors, metadata, order)
    tmp = f"{path}.tmp{os.getpid()}"
    n = len(head)
    with open(tmp, "wb") as f:
        f.write(head)
        for a in arrays:
            f.write(memoryview(a.reshape(-1)).cast("B") if a.size else b"")
            n += a.nbytes
    os.replace(tmp, path)
    return n


def read_header(path_or_bytes):
    """(header dict without "__metadata__", metadata dict or None, data offset) of a file, validated like the
    crate: length in range, JSON object, known dtypes, offsets contiguous from 0 and matching dtype x shape, and
    the data area ending exactly at the end of the file."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        buf = bytes(path_or_bytes)
        total = len(buf)
        head = buf[:8]
    else:
        total = os.path.getsize(path_or_bytes)
        with open(path_or_bytes, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            buf = head + f.read(min(n, _MAX_HEADER))
    if len(head) < 8:
        raise ValueError("header too small")
    n = struct.unpack("<Q", head)[0]
    if n > _MAX_HEADER or 8 + n > total:
        raise ValueError(f"invalid header length {n}")
    hdr = json.loads(buf[8:8 + n].decode("utf-8"))
    if not isinstance(hdr, dict):
        raise ValueError("header is not a JSON object")
    meta = hdr.pop("__metadata__", None)
    spans = []
    for name, info in hdr.items():
        dt, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        if dt not in _SIZE:
            raise ValueError(f"{name}: unsupported dtype {dt}")
        count = 1
        for s in shape:
            if not isinstance(s, int) or s < 0:
                raise ValueError(f"{name}: bad shape {shape}")
            count *= s
        if e < b or e - b != count * _SIZE[dt]:
            raise ValueError(f"{name}: data_offsets {b, e} do not match {dt} {shape}")
        spans.append((b, e, name))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise ValueError(f"{name}: data_offsets start at {b}, expected {pos} (gap or overlap)")
        pos = e
    if 8 + n + pos != total:
        raise ValueError(f"data area is {total - 8 - n} bytes, the header describes {pos}")
    return hdr, meta, 8 + n


def _read_raw(path):
    with open(path, "rb") as f:
        buf = f.read()
    hdr, meta, start = read_header(buf)
    order = sorted(hdr, key=lambda k: hdr[k]["data_offsets"][0])
    out = {}
    for name in order:
        info = hdr[name]
        b, e = info["data_offsets"]
        arr = np.frombuffer(buf, dtype=_NP[info["dtype"]], count=(e - b) // _SIZE[info["dtype"]],
                            offset=start + b).reshape(info["shape"])
        out[name] = (info["dtype"], arr)
    return out, meta


def load_numpy(path, bf16="f32"):
    """dict name -> numpy array (in file order) and the metadata. BF16 is widened exactly to float32 (bf16="f32")
    or kept as raw uint16 bits (bf16="raw")."""
    raw, meta = _read_raw(path)
    out = {}
    for name, (dt, arr) in raw.items():
        if dt == "BF16" and bf16 == "f32":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = np.array(arr)  # own, writable, native byte order
    return out, meta


def load(path):
    """dict name -> torch tensor (BF16 as torch.bfloat16) in file order, and the metadata."""
    torch = _torch()
    raw, meta = _read_raw(path)
    out = {}
    for name, (dt, arr) in raw.items():
        if dt == "BF16":
            out[name] = torch.from_numpy(np.array(arr).view(np.int16)).view(torch.bfloat16)
        else:
            out[name] = torch.from_numpy(np.array(arr).astype(arr.dtype.newbyteorder("="), copy=False))
    return out, meta


def _nbytes(t):
    if isinstance(t, np.ndarray):
        return t.nbytes
    return t.numel() * t.element_size()


def shard_name(i, n):
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def save_sharded(tensors, directory, n_shards=None, max_shard_bytes=None, metadata=None):
    """Write a sharded checkpoint as save_pretrained does: model-0000i-of-0000N.safetensors files (tensors in name
    order, split into consecutive groups) and model.safetensors.index.json {"metadata": {"total_size"},
    "weight_map": {name: file}}. Give n_shards (groups of about equal bytes) or max_shard_bytes. Returns the index."""
    metadata = {"format": "pt"} if metadata is None else metadata
    items = sorted((dict(tensors) if not isinstance(tensors, dict) else tensors).items())
    sizes = [_nbytes(t) for _, t in items]
    total = sum(sizes)
    groups, cur, cur_b = [], [], 0
    if n_shards is not None:
        target = total / n_shards
        acc = 0
        for (name, t), s in zip(items, sizes):
            # start a new shard when this one has reached its share (keeping at most n_shards)
            if cur and acc + s / 2 > target * (len(groups) + 1) and len(groups) < n_shards - 1:
                groups.append(cur)
                cur = []
            cur.append((name, t))
            acc += s
        groups.append(cur)
    else:
        for (name, t), s in zip(items, sizes):
            if cur and cur_b + s > max_shard_bytes:
                groups.append(cur)
                cur, cur_b = [], 0
            cur.append((name, t))
            cur_b += s
        groups.append(cur)
    os.makedirs(directory, exist_ok=True)
    weight_map = {}
    for i, g in enumerate(groups):
        fn = shard_name(i, len(groups))
        save_file(g, os.path.join(directory, fn), metadata=metadata)
        for name, _ in g:
            weight_map[name] = fn
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return index


def load_checkpoint(directory, numpy=False):
    """All tensors of a checkpoint directory: model.safetensors, or the shards listed in
    model.safetensors.index.json (every listed tensor must be in the file the index names, and nothing else)."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    loader = load_numpy if numpy else load
    if os.path.exists(index):
        with open(index) as f:
            wm = json.load(f)["weight_map"]
        out = {}
        for fn in sorted(set(wm.values())):
            part, _ = loader(os.path.join(directory, fn))
            listed = {k for k, v in wm.items() if v == fn}
            if set(part) != listed:
                raise ValueError(f"{fn}: holds {sorted(set(part) ^ listed)[:3]}... other than the index says")
            out.update(part)
        return out
    return loader(single)[0]


def _selftest():
    torch = _torch()
    # the crate's own test vectors (safetensors/src/tensor.rs: test_serialization, test_empty,
    # test_serialization_forced_alignement)
    data = np.arange(6, dtype=np.float32)
    got = serialize({"attn.0": data.reshape(1, 2, 3)})
    want = bytes([64, 0, 0, 0, 0, 0, 0, 0]) + b'{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}' + \
        data.tobytes()
    assert got == want, "test_serialization"
    assert serialize({}) == bytes([8, 0, 0, 0, 0, 0, 0, 0]) + b"{}      ", "test_empty"
    assert serialize({}, {"framework": "pt"}) == bytes([40, 0, 0, 0, 0, 0, 0, 0]) + \
        b'{"__metadata__":{"framework":"pt"}}     ', "test_empty with metadata"
    got = serialize({"attn0": data.reshape(1, 1, 2, 3)})
    assert got[:8] == bytes([72, 0, 0, 0, 0, 0, 0, 0]) and got[8 + 65:8 + 72] == b" " * 7, "forced alignment"
    # round trips of every writable dtype, bf16 bits exact
    g = torch.Generator().manual_seed(0)
    t = {"a.f32": torch.randn(3, 5, generator=g), "b.bf16": torch.randn(4, 3, generator=g).to(torch.bfloat16),
         "c.f16": torch.randn(7, generator=g).half(), "d.i64": torch.arange(-3, 9), "e.i32": torch.arange(5).int(),
         "f.scalar": torch.tensor(2.5)}
    buf = serialize(t, {"format": "pt"})
    hdr, meta, start = read_header(buf)
    assert meta == {"format": "pt"} and start % 8 == 0
    names = sorted(hdr, key=lambda k: hdr[k]["data_offsets"][0])
    assert names == ["d.i64", "a.f32", "f.scalar", "e.i32", "b.bf16", "c.f16"], names
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.safetensors")
        save_file(t, p, {"format": "pt"})
        back, meta = load(p)
        for k, v in t.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
        npy, _ = load_numpy(p)
        assert np.array_equal(npy["b.bf16"], t["b.bf16"].float().numpy())
        idx = save_sharded(t, os.path.join(d, "sh"), n_shards=2)
        assert len(set(idx["weight_map"].values())) == 2
        back = load_checkpoint(os.path.join(d, "sh"))
        assert all(torch.equal(back[k], v) for k, v in t.items())
        # corruptions are refused
        raw = bytearray(open(p, "rb").read())
        for bad in (raw[:-1], raw + b"\0", raw[:8 + 3]):
            try:
                read_header(bytes(bad))
            except (ValueError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            raise AssertionError("a corrupt file was accepted")
    print("safetensors_io selftest ok")


if __name__ == "__main__":
    if sys.argv[1:] == ["--selftest"]:
        _selftest()
    elif len(sys.argv) == 2:
        hdr, meta, start = read_header(sys.argv[1])
        print(json.dumps({"__metadata__": meta, "data_start": start, "tensors": hdr}, indent=1))
    else:
        print(__doc__)
        sys.exit(1)
