"""check_ref.py — checks the PyTorch reference (ref_moe.py) against a second, independent implementation written
the plain way: float64 numpy, its own config reading and rotary tables, attention one query token at a time with
an explicit causal (and sliding) window, and a dense MoE that runs every expert on every token and then keeps
the top-k by mask. A bug in either shows up as a large relative error or a different expert selection.

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 tests/models/check_ref.py [DIR ...]   (default: every tiny checkpoint)

Prints, per checkpoint and prompt, the max relative error (max |ref - plain| / max |plain|) of the final logits
and of the router logits, whether the selected experts and the greedy continuation agree, the same for the
steered forwards, and whether the committed golden.safetensors equals what the reference computes now.
Exit status 1 if an f32 checkpoint is off by more than 1e-4 relative or a selection of it differs, or a golden
differs from what the reference computes now.
"""
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_io  # noqa: E402


class Plain:
    """The independent float64 implementation."""

    def __init__(self, d):
        with open(os.path.join(d, "config.json")) as f:
            self.c = c = json.load(f)
        self.mt = c["model_type"]
        self.w = {k: v.astype(np.float64) for k, v in safetensors_io.load_checkpoint(d, numpy=True).items()}
        self.H = c["hidden_size"]
        self.nh = c["num_attention_heads"]
        self.nkv = c.get("num_key_value_heads") or self.nh
        self.hd = self.H // self.nh if self.mt == "olmoe" else (c.get("head_dim") or self.H // self.nh)
        self.eps = c["rms_norm_eps"]
        self.E = c["num_local_experts"] if self.mt in ("mixtral", "phimoe") else \
            c["n_routed_experts"] if self.mt == "deepseek_v2" else c["num_experts"]
        if self.mt == "deepseek_v2":
            self.hd = c["qk_rope_head_dim"]
        self.K = c["num_experts_per_tok"]
        self.renorm = True if self.mt == "mixtral" else bool(c.get("norm_topk_prob", False))
        self.jitter = c.get("router_jitter_noise", 0.01) if self.mt == "phimoe" else None
        L = c["num_hidden_layers"]
        if self.mt in ("qwen3_moe", "qwen2_moe"):
            only = set(c.get("mlp_only_layers") or [])
            step = c.get("decoder_sparse_step", 1)
            self.sparse = [l not in only and (l + 1) % step == 0 for l in range(L)]
        elif self.mt == "deepseek_v2":
            self.sparse = [l >= c.get("first_k_dense_replace", 0) and l % c.get("moe_layer_freq", 1) == 0
                           for l in range(L)]
        else:
            self.sparse = [True] * L
        self.moe_layers = [l for l in range(L) if self.sparse[l]]
        self.window = c.get("sliding_window") if self.mt in ("mixtral", "phimoe") or c.get("use_sliding_window") \
            else None
        self.inv, self.mscale = self.rotary()

    def rotary(self, length=None):
        c, d = self.c, self.hd
        theta = c.get("rope_theta", 10000.0)
        freq = np.array([theta ** (-(2.0 * i) / d) for i in range(d // 2)])
        rs = c.get("rope_scaling") or {}
        kind = rs.get("rope_type", rs.get("type", "default")) if rs else "default"
        if kind == "default":
            return freq, 1.0
        if kind == "longrope":  # LongRoPE: which factors and scale depends on the length of the forward
            orig = rs.get("original_max_position_embeddings", c.get("original_max_position_embeddings"))
            side = "long" if length is not None and length > orig else "short"
            return freq / np.array(rs[side + "_factor"]), rs[side + "_mscale"]
        s = rs["factor"]
        if kind == "linear":
            return freq / s, 1.0
        if kind == "yarn":
            orig = rs.get("original_max_position_embeddings", c["max_position_embeddings"])
            s = c["max_position_embeddings"] / orig if "original_max_position_embeddings" in rs else s

            def dim_of(rot):  # the dimension index whose wavelength makes `rot` turns over the original context
                return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(theta))
            lo, hi = dim_of(rs.get("beta_fast") or 32), dim_of(rs.get("beta_slow") or 1)
            if rs.get("truncate", True):  # whole dimensions unless "truncate" is false
                lo, hi = math.floor(lo), math.ceil(hi)
            lo, hi = max(lo, 0), min(hi, d - 1)
            hi = hi + 0.001 if hi == lo else hi
            ramp = np.clip((np.arange(d // 2) - lo) / (hi - lo), 0, 1)  # 0: keep, 1: interpolate
            inv = freq * (1 - ramp) + (freq / s) * ramp
            af = rs.get("attention_factor")
            if af is None and rs.get("mscale") and rs.get("mscale_all_dim"):  # DeepSeek's ratio of the two
                af = (0.1 * rs["mscale"] * math.log(s) + 1.0) / (0.1 * rs["mscale_all_dim"] * math.log(s) + 1.0)
            return inv, (af if af is not None else (0.1 * math.log(s) + 1.0 if s > 1 else 1.0))
        if kind == "llama3":
            old, lf, hf = rs["original_max_position_embeddings"], rs["low_freq_factor"], rs["high_freq_factor"]
            out = []
            for f in freq:
                wl = 2 * math.pi / f
                if wl < old / hf:
                    out.append(f)
                elif wl > old / lf:
                    out.append(f / s)
                else:
                    a = (old / wl - lf) / (hf - lf)
                    out.append((1 - a) * f / s + a * f)
            return np.array(out), 1.0
        raise ValueError(kind)

    def norm(self, x, w, b=None):
        if b is not None:  # LayerNorm with bias (phimoe)
            mu = x.mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + self.eps) * w + b
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):  # x (n_heads, hd) at one position: rotate pairs (i, i + hd/2)
        h = self.hd // 2
        ang = pos * self.inv
        c, s = np.cos(ang) * self.mscale, np.sin(ang) * self.mscale
        a, b = x[:, :h], x[:, h:]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=1)

    def mlp(self, x, g, u, d):
        a = x @ g.T
        return ((a / (1 + np.exp(-a))) * (x @ u.T)) @ d.T

    def layer_mla(self, l, x):
        """deepseek_v2's latent attention, one query at a time: per head, the no-rope parts of query and key from
        their projections, the rope parts rotated pairwise (2i, 2i + 1), the one rope key shared by the heads."""
        c, w = self.c, self.w
        p = f"model.layers.{l}.self_attn."
        T, nh, rd = x.shape[0], self.nh, self.hd
        nope, vd, kvl = c["qk_nope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
        ln = lambda v, g: v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + 1e-6) * g  # noqa: E731
        if c.get("q_lora_rank"):
            qa = x @ w[p + "q_a_proj.weight"].T + w.get(p + "q_a_proj.bias", 0)
            q = ln(qa, w[p + "q_a_layernorm.weight"]) @ w[p + "q_b_proj.weight"].T
        else:
            q = x @ w[p + "q_proj.weight"].T
        q = q.reshape(T, nh, nope + rd)
        lat = x @ w[p + "kv_a_proj_with_mqa.weight"].T + w.get(p + "kv_a_proj_with_mqa.bias", 0)
        kv = (ln(lat[:, :kvl], w[p + "kv_a_layernorm.weight"]) @ w[p + "kv_b_proj.weight"].T).reshape(T, nh, nope + vd)

        def rot(v, t):  # v (..., rd) at position t
            out = v.copy()
            for i in range(rd // 2):
                cs, sn = math.cos(t * self.inv[i]) * self.mscale, math.sin(t * self.inv[i]) * self.mscale
                out[..., 2 * i] = v[..., 2 * i] * cs - v[..., 2 * i + 1] * sn
                out[..., 2 * i + 1] = v[..., 2 * i] * sn + v[..., 2 * i + 1] * cs
            return out
        kpe = np.stack([rot(lat[t, kvl:], t) for t in range(T)])
        qpe = np.stack([rot(q[t, :, nope:], t) for t in range(T)])
        scale = (nope + rd) ** -0.5
        rs = c.get("rope_scaling") or {}
        if rs.get("mscale_all_dim") and rs.get("factor", 1) > 1:
            scale *= (0.1 * rs["mscale_all_dim"] * math.log(rs["factor"]) + 1.0) ** 2
        out = np.zeros((T, nh, vd))
        for t in range(T):
            for h in range(nh):
                sc = np.array([(q[t, h, :nope] @ kv[j, h, :nope] + qpe[t, h] @ kpe[j]) * scale for j in range(t + 1)])
                pr = np.exp(sc - sc.max())
                pr /= pr.sum()
                out[t, h] = sum(pr[j] * kv[j, h, nope:] for j in range(t + 1))
        return out.reshape(T, -1) @ w[p + "o_proj.weight"].T + w.get(p + "o_proj.bias", 0)

    def deepseek_gate(self, zr, l):
        """DeepSeek's router, token by token: (gate (T, E) weights at the chosen experts, chosen (T, K))."""
        c = self.c
        E, K, G = self.E, self.K, c.get("n_group") or 1
        method = c.get("topk_method") or "greedy"
        bias = self.w.get(f"model.layers.{l}.mlp.gate.e_score_correction_bias")
        gate, chosen = np.zeros_like(zr), []
        for t, row in enumerate(zr):
            sc = 1 / (1 + np.exp(-row)) if c.get("scoring_func") == "sigmoid" else np.exp(row - row.max())
            if c.get("scoring_func") != "sigmoid":
                sc = sc / sc.sum()
            pick = sc + bias if method == "noaux_tc" else sc.copy()
            if method != "greedy" and G > 1:
                size = E // G
                groups = [sorted(pick[g * size:(g + 1) * size], reverse=True) for g in range(G)]
                gs = [sum(v[:2]) if method == "noaux_tc" else v[0] for v in groups]
                keep = sorted(range(G), key=lambda g: (-gs[g], g))[:c["topk_group"]]
                for g in range(G):
                    if g not in keep:
                        pick[g * size:(g + 1) * size] = 0.0
            sel = sorted(range(E), key=lambda e: (-pick[e], e))[:K]
            wk = sc[sel]
            if K > 1 and c.get("norm_topk_prob"):
                wk = wk / (wk.sum() + 1e-20)
            gate[t, sel] = wk * c.get("routed_scaling_factor", 1.0)
            chosen.append(sel)
        return gate, np.array(chosen)

    def layer_attn(self, l, x):
        if self.mt == "deepseek_v2":
            return self.layer_mla(l, x)
        p = f"model.layers.{l}.self_attn."
        w = self.w
        T = x.shape[0]
        q = x @ w[p + "q_proj.weight"].T + w.get(p + "q_proj.bias", 0)
        k = x @ w[p + "k_proj.weight"].T + w.get(p + "k_proj.bias", 0)
        v = x @ w[p + "v_proj.weight"].T + w.get(p + "v_proj.bias", 0)
        if self.mt == "olmoe":
            q, k = self.norm(q, w[p + "q_norm.weight"]), self.norm(k, w[p + "k_norm.weight"])
            cl = self.c.get("clip_qkv")
            if cl is not None:
                q, k, v = np.clip(q, -cl, cl), np.clip(k, -cl, cl), np.clip(v, -cl, cl)
        q = q.reshape(T, self.nh, self.hd)
        k = k.reshape(T, self.nkv, self.hd)
        v = v.reshape(T, self.nkv, self.hd)
        if self.mt == "qwen3_moe":
            q, k = self.norm(q, w[p + "q_norm.weight"]), self.norm(k, w[p + "k_norm.weight"])
        q = np.stack([self.rope(q[t], t) for t in range(T)])
        k = np.stack([self.rope(k[t], t) for t in range(T)])
        out = np.zeros((T, self.nh, self.hd))
        group = self.nh // self.nkv
        for t in range(T):
            first = 0 if not self.window or T <= self.window else max(0, t - self.window + 1)
            for h in range(self.nh):
                kv = h // group
                sc = np.array([q[t, h] @ k[j, kv] for j in range(first, t + 1)]) / math.sqrt(self.hd)
                pr = np.exp(sc - sc.max())
                pr /= pr.sum()
                out[t, h] = sum(pr[j - first] * v[j, kv] for j in range(first, t + 1))
        return out.reshape(T, -1) @ w[p + "o_proj.weight"].T + w.get(p + "o_proj.bias", 0)

    def layer_moe(self, l, x, steer, moe_idx, rec):
        w = self.w
        if self.mt == "deepseek_v2":
            p = f"model.layers.{l}.mlp."
            z = x @ w[p + "gate.weight"].T
            zr = steer(z, moe_idx) if steer else z
            gate, sel = self.deepseek_gate(zr, l)
            names = ("gate_proj", "up_proj", "down_proj")
            out = sum(gate[:, e:e + 1] * self.mlp(x, *(w[p + f"experts.{e}.{n}.weight"] for n in names))
                      for e in range(self.E))
            if self.c.get("n_shared_experts"):
                out = out + self.mlp(x, *(w[p + f"shared_experts.{n}.weight"] for n in names))
            rec.append((z, zr, sel))
            return out
        mix = self.mt in ("mixtral", "phimoe")
        p = f"model.layers.{l}." + ("block_sparse_moe." if mix else "mlp.")
        z = x @ w[p + "gate.weight"].T
        zr = steer(z, moe_idx) if steer else z
        prob = np.exp(zr - zr.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        if self.jitter is not None:  # sparsemixer, token by token
            prob = np.zeros_like(zr)
            for t, row in enumerate(zr):
                done = []
                for e in np.argsort(-row, kind="stable")[:self.K]:
                    top = row[e]
                    near = [j for j in range(self.E) if j not in done and
                            not (top - row[j]) / max(abs(row[j]), top) > 2 * self.jitter]
                    prob[t, e] = 1.0 / sum(math.exp(row[j] - top) for j in near)
                    done.append(e)
        # every expert on every token, then a mask keeps the top-k (ties: lower index)
        ys = np.stack([self.mlp(x, *(w[p + f"experts.{e}.{n}.weight"] for n in
                                     (("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj"))))
                       for e in range(self.E)], axis=1)  # (T, E, H)
        sel = np.argsort(-prob, axis=-1, kind="stable")[:, :self.K]
        keep = np.zeros_like(prob)
        np.put_along_axis(keep, sel, 1.0, axis=-1)
        gate = prob * keep
        if self.renorm:
            gate = gate / gate.sum(-1, keepdims=True)
        out = np.einsum("te,teh->th", gate, ys)
        if self.mt == "qwen2_moe":
            s = p + "shared_expert."
            sh = self.mlp(x, w[s + "gate_proj.weight"], w[s + "up_proj.weight"], w[s + "down_proj.weight"])
            out = out + sh / (1 + np.exp(-(x @ w[p + "shared_expert_gate.weight"].T)))
        rec.append((z, zr, sel))
        return out

    def forward(self, ids, steer=None):
        w = self.w
        x = w["model.embed_tokens.weight"][ids]
        self.inv, self.mscale = self.rotary(len(ids))
        rec = []
        for l in range(self.c["num_hidden_layers"]):
            p = f"model.layers.{l}."
            x = x + self.layer_attn(l, self.norm(x, w[p + "input_layernorm.weight"], w.get(p + "input_layernorm.bias")))
            h = self.norm(x, w[p + "post_attention_layernorm.weight"], w.get(p + "post_attention_layernorm.bias"))
            if self.sparse[l]:
                x = x + self.layer_moe(l, h, steer, len(rec), rec)
            else:
                m = p + "mlp."
                x = x + self.mlp(h, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"])
        x = self.norm(x, w["model.norm.weight"], w.get("model.norm.bias"))
        head = w["model.embed_tokens.weight"] if self.c.get("tie_word_embeddings") else w["lm_head.weight"]
        return x @ head.T + w.get("lm_head.bias", 0), rec

    def generate(self, ids, n, steer=None):
        seq = list(ids)
        for _ in range(n):
            seq.append(int(np.argmax(self.forward(seq, steer)[0][-1])))
        return seq[len(ids):]


class PlainGptOss(Plain):
    """gpt_oss the plain way: e2m1 codes decoded from their sign/exponent/mantissa bits, attention with the sink
    as one more logit of the softmax per head, the router's top-k by logit with a softmax over those k, every
    expert on every token (clamped SwiGLU, biases) masked to the top-k."""

    def __init__(self, d):
        with open(os.path.join(d, "config.json")) as f:
            self.c = c = json.load(f)
        self.mt = c["model_type"]
        raw = safetensors_io.load_checkpoint(d, numpy=True)
        self.w = {k: v if k.endswith(("_blocks", "_scales")) else v.astype(np.float64) for k, v in raw.items()}
        self.H, self.nh, self.nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c["head_dim"]
        self.eps = c["rms_norm_eps"]
        self.E, self.K = c["num_local_experts"], c["num_experts_per_tok"]
        L = c["num_hidden_layers"]
        self.sparse = [True] * L
        self.moe_layers = list(range(L))
        types = c.get("layer_types") or ["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(L)]
        self.windows = [c["sliding_window"] if t == "sliding_attention" else None for t in types]
        self.alpha, self.limit = c.get("swiglu_alpha", 1.702), c.get("swiglu_limit", 7.0)
        self.inv, self.mscale = self.rotary()

    @staticmethod
    def e2m1(n):
        sign = -1.0 if n & 8 else 1.0
        ex, man = (n >> 1) & 3, n & 1
        return sign * (man * 0.5 if ex == 0 else 2.0 ** (ex - 1) * (1 + man / 2))

    def mxfp4(self, prefix, e):
        """Expert e's weight (rows, cols): block g of row r holds columns 32g .. 32g + 31, byte k the columns
        32g + 2k (low nibble) and 32g + 2k + 1 (high nibble), all times 2^(scale - 127)."""
        b, s = self.w[prefix + "_blocks"][e], self.w[prefix + "_scales"][e]
        R, G, _ = b.shape
        codes = np.array([self.e2m1(n) for n in range(16)])
        out = np.zeros((R, G * 32))
        for g in range(G):
            sc = 2.0 ** (s[:, g].astype(np.float64) - 127)
            for k in range(16):
                out[:, 32 * g + 2 * k] = codes[b[:, g, k] & 15] * sc
                out[:, 32 * g + 2 * k + 1] = codes[b[:, g, k] >> 4] * sc
        return out

    def layer_attn(self, l, x):
        p = f"model.layers.{l}.self_attn."
        w = self.w
        T = x.shape[0]
        q = (x @ w[p + "q_proj.weight"].T + w[p + "q_proj.bias"]).reshape(T, self.nh, self.hd)
        k = (x @ w[p + "k_proj.weight"].T + w[p + "k_proj.bias"]).reshape(T, self.nkv, self.hd)
        v = (x @ w[p + "v_proj.weight"].T + w[p + "v_proj.bias"]).reshape(T, self.nkv, self.hd)
        q = np.stack([self.rope(q[t], t) for t in range(T)])
        k = np.stack([self.rope(k[t], t) for t in range(T)])
        out = np.zeros((T, self.nh, self.hd))
        group, win = self.nh // self.nkv, self.windows[l]
        for t in range(T):
            first = 0 if not win else max(0, t - win + 1)
            for h in range(self.nh):
                kv = h // group
                sc = np.array([q[t, h] @ k[j, kv] for j in range(first, t + 1)]) / math.sqrt(self.hd)
                sink = w[p + "sinks"][h]
                m = max(sc.max(), sink)
                pr = np.exp(sc - m) / (np.exp(sc - m).sum() + math.exp(sink - m))
                out[t, h] = sum(pr[j - first] * v[j, kv] for j in range(first, t + 1))
        return out.reshape(T, -1) @ w[p + "o_proj.weight"].T + w[p + "o_proj.bias"]

    def layer_moe(self, l, x, steer, moe_idx, rec):
        w = self.w
        p = f"model.layers.{l}.mlp."
        z = x @ w[p + "router.weight"].T + w[p + "router.bias"]
        zr = steer(z, moe_idx) if steer else z
        sel = np.argsort(-zr, axis=-1, kind="stable")[:, :self.K]
        top = np.take_along_axis(zr, sel, axis=-1)
        wt = np.exp(top - top.max(-1, keepdims=True))
        wt /= wt.sum(-1, keepdims=True)
        gate = np.zeros_like(zr)
        np.put_along_axis(gate, sel, wt, axis=-1)
        ys = []
        for e in range(self.E):
            gu = x @ self.mxfp4(p + "experts.gate_up_proj", e).T + w[p + "experts.gate_up_proj_bias"][e]
            g = np.minimum(gu[:, 0::2], self.limit)
            u = np.clip(gu[:, 1::2], -self.limit, self.limit)
            h = (u + 1) * g / (1 + np.exp(-self.alpha * g))
            ys.append(h @ self.mxfp4(p + "experts.down_proj", e).T + w[p + "experts.down_proj_bias"][e])
        rec.append((z, zr, sel))
        return np.einsum("te,teh->th", gate, np.stack(ys, axis=1))


def plain_steering(path):
    """The steering rule of traces/STEERING.md (fixed eps), vectorised in float64, as a function (z, layer)."""
    with open(path) as f:
        d = json.load(f)
    coef = np.array(d["coef"], dtype=np.float32)
    eps, op = abs(d["eps"]), d["op"]

    def apply(z, layer):
        c = coef[layer]
        if not c.any():
            return z
        z32 = z.astype(np.float32).astype(np.float64)  # the engine steers the model-dtype values held in f32
        mx, mn = z32.max(-1, keepdims=True), z32.min(-1, keepdims=True)
        sd = z32.std(-1, keepdims=True)
        up = np.maximum((mx + eps).astype(np.float32), np.nextafter(mx.astype(np.float32), np.float32(np.inf)))
        dn = np.minimum((mn - eps).astype(np.float32), np.nextafter(mn.astype(np.float32), np.float32(-np.inf)))
        out = z32.copy()
        for e in np.nonzero(c)[0]:
            if op == "soft":
                out[:, e] = (z32[:, e] + float(c[e]) * sd[:, 0]).astype(np.float32)
            elif op in ("hard", "off"):
                out[:, e] = (up if c[e] > 0 else dn)[:, 0]
            else:
                out[:, e] = (z32[:, e].astype(np.float32) + c[e])
        return out
    return apply


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_dir(d):
    import torch
    import ref_moe
    torch.set_num_threads(1)
    m = ref_moe.MoeModel(d)
    pl = PlainGptOss(d) if m.cfg.model_type == "gpt_oss" else Plain(d)
    assert pl.moe_layers == m.cfg.moe_layers, (pl.moe_layers, m.cfg.moe_layers)
    gold, meta = safetensors_io.load(os.path.join(d, "golden.safetensors")) \
        if os.path.exists(os.path.join(d, "golden.safetensors")) else ({}, {})
    bf16 = m.cfg.dtype != torch.float32
    worst, ok = 0.0, True
    name = os.path.basename(os.path.normpath(d))
    cases = [(f"prompt_{i}", gold[f"prompt_{i}"].tolist(), None, f"_{i}") for i in range(3) if f"prompt_{i}" in gold]
    for op in ("hard", "soft"):
        sp = os.path.join(d, f"steer_{op}.json")
        if os.path.exists(sp) and "prompt_2" in gold:
            cases.append((f"steer_{op}", gold["prompt_2"].tolist(), (ref_moe.Steering.load_json(sp),
                                                                    plain_steering(sp)), f"_steer_{op}_2"))
    for label, ids, st, sfx in cases:
        out = m.forward_full(ids, st[0] if st else None)
        lg = out["logits"][0].float().numpy()
        plg, prec = pl.forward(ids, st[1] if st else None)
        e_log = rel(lg, plg)
        e_rt = max(rel(r["router"].float().numpy(), pz) for r, (pz, _, _) in zip(out["moe"], prec))
        e_ro = max(rel(r["routed_on"].float().numpy(), pzr) for r, (_, pzr, _) in zip(out["moe"], prec))
        same_sel, n_open = True, 0
        for r, (_, pzr, ps) in zip(out["moe"], prec):
            diff = ~np.all(np.sort(r["selected"].numpy(), -1) == np.sort(ps, -1), axis=-1)
            if bf16:
                # a bf16 forward drifts from float64 by about a percent: a top-k whose k-th / (k+1)-th gap lies
                # within twice the two logits' difference is not decided by either implementation
                z = r["routed_on"].float().numpy()
                zs = -np.sort(-z, axis=-1)
                k = m.cfg.top_k
                band = 2 * np.max(np.abs(z - pzr), axis=-1)
                open_ = zs[:, k - 1] - zs[:, k] <= band
                n_open += int(np.sum(diff & open_))
                diff &= ~open_
            same_sel &= not diff.any()
        g_ref = m.generate(ids, 4, st[0] if st else None)
        g_pl = pl.generate(ids, 4, st[1] if st else None)
        gold_eq = ""
        if "logits" + sfx in gold:
            router_now = torch.stack([r["routed_on"].float() for r in out["moe"]])
            gold_eq = (torch.equal(gold["logits" + sfx], out["logits"][0].float()) and
                       torch.equal(gold["router" + sfx], router_now) and gold["generate" + sfx][:4].tolist() == g_ref)
            gold_eq = " golden=" + ("same" if gold_eq else "DIFFERS")
        print(f"{name:16s} {label:11s} T={len(ids):2d} logits_rel={e_log:.2e} router_rel={e_rt:.2e} "
              f"routed_on_rel={e_ro:.2e} selection={'same' if same_sel else 'DIFFERENT'}"
              f"{f' ({n_open} within the bf16 error)' if n_open else ''} "
              f"greedy4={'same' if g_ref == g_pl else f'DIFFERENT {g_ref} {g_pl}'}{gold_eq}")
        worst = max(worst, e_log, e_rt)
        # bf16: the float64 comparison measures bf16 rounding; where it exceeds a router margin the selection
        # differs (gpt_oss_bf16: the clamped SwiGLU and the top-k softmax amplify it to a few percent), which is
        # reported, not failed; the engine is held to the bf16 reference itself (tests/unit/test_model.c)
        if (not bf16 and (not same_sel or e_log > 1e-4 or e_rt > 1e-4 or g_ref != g_pl)) or "DIFFERS" in gold_eq:
            ok = False
    return worst, ok


def main(argv):
    dirs = argv or [os.path.join(HERE, "tiny", n) for n in sorted(os.listdir(os.path.join(HERE, "tiny")))
                    if os.path.isdir(os.path.join(HERE, "tiny", n))]
    all_ok = True
    for d in dirs:
        worst, ok = check_dir(d)
        all_ok &= ok
    print("check_ref: " + ("ok" if all_ok else "FAILED"))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
