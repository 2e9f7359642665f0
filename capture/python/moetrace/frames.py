"""frames.py — the moetrace ingest stream (traces/INGEST.md) in Python: encode the header, sequence frames and
the end frame that `moetrace-capture ingest` reads, and decode them again (for tests and tools).

Only the standard library and numpy are needed. Arrays are written little-endian, as the format requires.
"""
import json
import struct

import numpy as np

MAGIC = b"\x89MTRING\n"
VERSION = 1
MINOR = 0
TAG_SEQ = b"SEQ\x00"
TAG_END = b"END\x00"
HAS_TOKEN_IDS, HAS_POSITIONS, HAS_ROLES = 1, 2, 4
DTYPES = {"f32": 0, "bf16": 1, "f16": 2}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ROLES = {"template": 0, "prompt": 1, "response": 2, "generated": 3}
MAX_TOKENS = 1 << 24
MAX_STRING = 4096
SEQ_TRUNCATED, SEQ_STEERED = 1, 2


def _pad8(n):
    return (n + 7) & ~7


def encode_header(model, logits_dtype=None, producer="moetrace-python", producer_version=None, corpus_id=None,
                  capture_settings=None, steering=None):
    """Stream prelude + header. model: dict with model_id, model_type, n_layers, n_decoder_layers, layer_index,
    n_experts, top_k, score_fn, renormalize, router_bias, selection_bias (None or (L, E) numbers), and with
    score_fn "sparsemixer" its sparsemixer_eps."""
    from . import __version__
    h = {k: model[k] for k in ("model_id", "model_type", "n_layers", "n_experts", "top_k")}
    h["n_decoder_layers"] = int(model.get("n_decoder_layers", model["n_layers"]))
    h["layer_index"] = [int(x) for x in model.get("layer_index", range(model["n_layers"]))]
    h["score_fn"] = model.get("score_fn", "softmax")
    h["renormalize"] = bool(model.get("renormalize", False))
    h["router_bias"] = bool(model.get("router_bias", False))
    sb = model.get("selection_bias")
    h["selection_bias"] = None if sb is None else np.asarray(sb, dtype=np.float64).tolist()
    if h["score_fn"] == "sparsemixer":
        h["sparsemixer_eps"] = float(model["sparsemixer_eps"])
    if logits_dtype:
        h["logits_dtype"] = logits_dtype
    h["producer"] = producer
    h["producer_version"] = producer_version or __version__
    if corpus_id:
        h["corpus_id"] = corpus_id
    if capture_settings is not None:
        h["capture_settings"] = capture_settings
    if steering is not None:
        h["steering"] = steering
    text = json.dumps(h, separators=(",", ":"), ensure_ascii=True).encode()
    return MAGIC + struct.pack("<HHI", VERSION, MINOR, len(text)) + text


def logits_bytes(logits):
    """(dtype name, little-endian bytes) of a numpy array or torch tensor of logits (f32, bf16 or f16)."""
    mod = type(logits).__module__
    if mod.startswith("torch"):
        import torch
        t = logits.detach().contiguous()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            return "bf16", t.view(torch.int16).numpy().astype("<i2", copy=False).tobytes()
        if t.dtype == torch.float16:
            return "f16", t.numpy().astype("<f2", copy=False).tobytes()
        return "f32", t.to(torch.float32).numpy().astype("<f4", copy=False).tobytes()
    a = np.ascontiguousarray(logits)
    if a.dtype == np.float16:
        return "f16", a.astype("<f2", copy=False).tobytes()
    if a.dtype == np.uint16:  # bf16 bit patterns
        return "bf16", a.astype("<u2", copy=False).tobytes()
    return "f32", a.astype("<f4", copy=False).tobytes()


def encode_seq(n_layers, n_experts, seq_id, logits, unit_id="", lang="", dataset="", token_ids=None,
               positions=None, roles=None, flags=0):
    """One sequence frame. logits: (n_tokens, n_layers, n_experts) as numpy (f32, f16, or uint16 = bf16 bits)
    or a torch tensor (f32, bf16, f16). token_ids, positions (int32) and roles (uint8 or role names) may be None."""
    shape = tuple(logits.shape)
    if len(shape) != 3 or shape[1] != n_layers or shape[2] != n_experts:
        raise ValueError(f"logits have shape {shape}, expected (T, {n_layers}, {n_experts})")
    T = shape[0]
    if not 1 <= T <= MAX_TOKENS:
        raise ValueError(f"a sequence needs 1..{MAX_TOKENS} tokens, got {T}")
    dt, data = logits_bytes(logits)
    strings = [s.encode("utf-8") for s in (unit_id, lang, dataset)]
    for s in strings:
        if len(s) > MAX_STRING or b"\x00" in s:
            raise ValueError("unit_id, lang and dataset must be at most 4096 UTF-8 bytes without NUL")
    fields = 0
    parts = []
    sb = b"".join(strings)
    parts.append(sb + b"\x00" * (_pad8(len(sb)) - len(sb)))
    for bit, arr, typ in ((HAS_TOKEN_IDS, token_ids, "<i4"), (HAS_POSITIONS, positions, "<i4"), (HAS_ROLES, roles, "u1")):
        if arr is None:
            continue
        if typ == "u1" and len(arr) and isinstance(arr[0], str):
            arr = [ROLES[r] for r in arr]
        if hasattr(arr, "detach"):
            arr = arr.detach().cpu().numpy()
        b = np.ascontiguousarray(np.asarray(arr).reshape(-1), dtype=typ)
        if b.shape[0] != T:
            raise ValueError(f"a per-token array has {b.shape[0]} entries for {T} tokens")
        fields |= bit
        raw = b.tobytes()
        parts.append(raw + b"\x00" * (_pad8(len(raw)) - len(raw)))
    parts.append(data + b"\x00" * (_pad8(len(data)) - len(data)))
    fixed = struct.pack("<QIIBBHHHII", seq_id, T, flags, DTYPES[dt], fields, len(strings[0]), len(strings[1]),
                        len(strings[2]), n_layers, n_experts)
    body = fixed + b"".join(parts)
    return TAG_SEQ + struct.pack("<IQ", 0, len(body)) + body


def encode_end(n_sequences):
    return TAG_END + struct.pack("<IQQ", 0, 8, n_sequences)


def decode(data):
    """Decode a whole stream held in bytes: (header dict, list of sequence dicts, ended). Raises ValueError on
    malformed input. A reference reader for tests; ingest's C decoder is the normative one."""
    if data[:8] != MAGIC:
        raise ValueError("bad magic")
    major, minor, n = struct.unpack_from("<HHI", data, 8)
    if major != VERSION:
        raise ValueError(f"version {major}")
    header = json.loads(data[16:16 + n])
    L, E = header["n_layers"], header["n_experts"]
    pos, seqs = 16 + n, []
    while pos < len(data):
        tag, res, blen = struct.unpack_from("<4sIQ", data, pos)
        body = data[pos + 16:pos + 16 + blen]
        if len(body) != blen:
            raise ValueError(f"truncated frame at {pos}")
        if tag == TAG_END:
            if struct.unpack_from("<Q", body)[0] != len(seqs):
                raise ValueError("end frame count")
            return header, seqs, True
        seq_id, T, flags, dt, fields, ul, gl, dl, fl, fe = struct.unpack_from("<QIIBBHHHII", body)
        if (fl, fe) != (L, E):
            raise ValueError("dims")
        p = 32
        s = body[p:p + ul + gl + dl]
        seq = {"seq_id": seq_id, "n_tokens": T, "flags": flags, "dtype": DTYPE_NAMES[dt],
               "unit_id": s[:ul].decode(), "lang": s[ul:ul + gl].decode(), "dataset": s[ul + gl:].decode()}
        p += _pad8(ul + gl + dl)
        for bit, name, typ, size in ((1, "token_ids", "<i4", 4), (2, "positions", "<i4", 4), (4, "roles", "u1", 1)):
            if fields & bit:
                seq[name] = np.frombuffer(body, dtype=typ, count=T, offset=p)
                p += _pad8(T * size)
        typ = {"f32": "<f4", "bf16": "<u2", "f16": "<f2"}[seq["dtype"]]
        seq["logits"] = np.frombuffer(body, dtype=typ, count=T * L * E, offset=p).reshape(T, L, E)
        seqs.append(seq)
        pos += 16 + blen
    return header, seqs, False
