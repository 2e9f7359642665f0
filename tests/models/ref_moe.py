"""ref_moe.py — the PyTorch reference forward the native engine (capture/engine/model*.c) is tested and benchmarked
against: Hugging Face MoE checkpoints (qwen3_moe, olmoe, mixtral, qwen2_moe, gpt_oss, phimoe, deepseek_v2;
config.json + model.safetensors or shards + index, tensor names as on the Hub) run with the arithmetic of the
transformers eager modeling code, in the model's dtype (f32, or bf16/f16 with the f32 upcasts transformers does:
RMSNorm, rotary tables, attention softmax, router softmax). Written from the transformers modeling files
(modeling_qwen3_moe.py, modeling_olmoe.py, modeling_mixtral.py, modeling_qwen2_moe.py, modeling_gpt_oss.py with
integrations/mxfp4.py, modeling_phimoe.py, modeling_deepseek_v2.py, modeling_rope_utils.py); attention is the eager
path. gpt_oss is GptOssModel (below), which MoeModel(dir) returns for that model_type.

deepseek_v2: multi-head latent attention (optional q low-rank path with its RMSNorm, keys and values from the
RMS-normalised latent of kv_a_proj_with_mqa, interleaved rotary embedding on the rope part of each query and on
the shared key, computed in f32 complex arithmetic), dense layers before first_k_dense_replace (and off
moe_layer_freq), shared experts added ungated, and DeepSeek's router on f32 gate logits: softmax or sigmoid
scores, greedy / group_limited_greedy (groups scored by their best expert) / noaux_tc (scores plus
e_score_correction_bias for the choice only, groups scored by their best two), experts outside the chosen groups
masked to 0, weights the unbiased scores, renormalised if norm_topk_prob, times routed_scaling_factor, kept in f32
when they multiply the expert outputs. The softmax scale is (nope + rope)^-0.5 times YaRN's
mscale(factor, mscale_all_dim)^2, as DeepSeek's code and transformers' deepseek_v3 have it (transformers'
deepseek_v2 leaves that factor out).

phimoe (Phi-3.5-MoE): LayerNorm with bias, q/k/v/o biases (attention_bias), LM-head bias (lm_head_bias), LongRoPE
and sparsemixer routing (below). LongRoPE follows the current transformers code and Microsoft's original: the
short or long factors and short_mscale or long_mscale by the length of the forward (the largest position + 1)
against original_max_position_embeddings; a generation whose length crosses it recomputes the whole sequence
(PhimoeForCausalLM.prepare_inputs_for_generation drops the cache there), which generate() here does at every
step anyway. (transformers 4.4x-4.5x took the long factors whenever max_position_embeddings exceeds the original.)

Router steering (docs/ARCHITECTURE.md §4, traces/STEERING.md) is applied to the raw gate outputs before softmax/top-k with
the arithmetic of mtr_steer_apply (fixed eps; gaussian eps is not reproduced here).

Run from anywhere with /usr/bin/python3 (Debian's torch):  ref_moe.py DIR [ids ...]  prints logits and routing.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

ARCHS = ("qwen3_moe", "olmoe", "mixtral", "qwen2_moe", "gpt_oss", "phimoe", "deepseek_v2")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- configuration ---------------------------------------------------------------------------------------------

class Config:
    """The fields of a config.json that the forward uses, with the defaults of the transformers config classes."""

    def __init__(self, d):
        self.raw = d
        mt = d.get("model_type")
        if mt not in ARCHS:
            raise ValueError(f"model_type {mt!r} is not one of {ARCHS}")
        self.model_type = mt
        g = d.get
        # gpt_oss: the published config.json names no dtype; the tensors are bf16 (GptOssModel takes theirs)
        self.dtype_implicit = not (g("torch_dtype") or g("dtype"))
        self.dtype_name = g("torch_dtype") or g("dtype") or ("bfloat16" if mt == "gpt_oss" else "float32")
        if self.dtype_name not in TORCH_DTYPES:
            raise ValueError(f"torch_dtype {self.dtype_name!r} is not supported")
        self.dtype = TORCH_DTYPES[self.dtype_name]
        self.vocab_size = d["vocab_size"]
        self.hidden_size = d["hidden_size"]
        self.n_layers = d["num_hidden_layers"]
        self.n_heads = d["num_attention_heads"]
        self.n_kv_heads = g("num_key_value_heads") or self.n_heads
        if mt == "olmoe":  # OlmoeAttention: head_dim = hidden_size // num_heads, whatever the config says
            self.head_dim = self.hidden_size // self.n_heads
        elif mt == "deepseek_v2":  # DeepseekV2Config: head_dim is the rotary part
            self.head_dim = g("qk_rope_head_dim", 64)
        else:
            self.head_dim = g("head_dim") or self.hidden_size // self.n_heads
        self.rms_eps = g("rms_norm_eps", 1e-5 if mt in ("olmoe", "mixtral", "gpt_oss", "phimoe") else 1e-6)
        self.rope_theta = float(g("rope_theta", {"mixtral": 1e6, "phimoe": 1e6, "gpt_oss": 150000.0}.get(mt, 10000.0)))
        self.rope_scaling = g("rope_scaling")
        self.max_pos = g("max_position_embeddings", 4096)
        self.partial_rotary_factor = g("partial_rotary_factor", 1.0)
        self.tie = bool(g("tie_word_embeddings", False))
        self.top_k = d["num_experts_per_tok"]
        self.clip_qkv = None
        self.qkv_bias = self.o_bias = False
        self.shared_inter = 0
        self.intermediate_size = g("intermediate_size")
        self.layernorm = self.lm_head_bias = False  # LayerNorm with bias instead of RMSNorm; LM-head bias
        self.sparsemixer_eps = None                  # phimoe: sparsemixer's jitter eps
        self.orig_max_pos = g("original_max_position_embeddings")
        self.mla = False
        if mt == "deepseek_v2":
            self.mla = True
            self.n_experts = g("n_routed_experts", 64)
            self.moe_inter = g("moe_intermediate_size", 1407)
            self.intermediate_size = g("intermediate_size", 11008)
            self.n_shared = g("n_shared_experts", 2) or 0
            self.q_lora_rank = g("q_lora_rank", 1536)
            self.kv_lora_rank = g("kv_lora_rank", 512)
            self.qk_nope = g("qk_nope_head_dim", 128)
            self.v_head_dim = g("v_head_dim", 128)
            self.qkv_bias, self.o_bias = False, bool(g("attention_bias", False))
            self.norm_topk_prob = bool(g("norm_topk_prob", False))
            self.topk_method = g("topk_method") or "greedy"
            self.n_group = g("n_group") or 1
            self.topk_group = g("topk_group") or 1
            self.scoring = g("scoring_func") or "softmax"
            self.routed_scaling = float(g("routed_scaling_factor", 1.0))
            self.attn_scale = (self.qk_nope + self.head_dim) ** -0.5
            rs = g("rope_scaling") or {}
            if rs.get("mscale_all_dim") and rs.get("factor", 1) > 1:
                self.attn_scale *= _get_mscale(rs["factor"], rs["mscale_all_dim"]) ** 2
        elif mt == "phimoe":
            self.n_experts = g("num_local_experts", 16)
            self.moe_inter = g("intermediate_size", 6400)
            self.norm_topk_prob = False
            self.qkv_bias = self.o_bias = bool(g("attention_bias", False))
            self.layernorm = True
            self.lm_head_bias = bool(g("lm_head_bias", False))
            self.sparsemixer_eps = float(g("router_jitter_noise", 0.01))
            if self.top_k != 2:
                raise ValueError("phimoe: sparsemixer routes exactly 2 experts (num_experts_per_tok 2)")
        elif mt == "mixtral":
            self.n_experts = d["num_local_experts"]
            self.moe_inter = d["intermediate_size"]
            self.norm_topk_prob = True  # MixtralSparseMoeBlock always renormalises the top-k weights
            self.qkv_bias = self.o_bias = False
        elif mt == "olmoe":
            self.n_experts = d["num_experts"]
            self.moe_inter = d["intermediate_size"]
            self.norm_topk_prob = bool(g("norm_topk_prob", False))
            self.qkv_bias = self.o_bias = bool(g("attention_bias", False))
            self.clip_qkv = g("clip_qkv")
        elif mt == "gpt_oss":
            self.n_experts = d["num_local_experts"]
            self.moe_inter = d["intermediate_size"]
            self.norm_topk_prob = False  # softmax over the top-k logits: sums to 1 by construction
            self.qkv_bias = self.o_bias = bool(g("attention_bias", True))
            self.swiglu_alpha = float(g("swiglu_alpha", 1.702))
            self.swiglu_limit = float(g("swiglu_limit", 7.0))
        else:
            self.n_experts = d["num_experts"]
            self.moe_inter = d["moe_intermediate_size"]
            self.norm_topk_prob = bool(g("norm_topk_prob", False))
            if mt == "qwen2_moe":
                self.qkv_bias = bool(g("qkv_bias", True))  # Qwen2MoeAttention: q/k/v biased, o_proj not
                self.shared_inter = d["shared_expert_intermediate_size"]
            else:
                self.qkv_bias = self.o_bias = bool(g("attention_bias", False))
        # which decoder layers are sparse
        if mt in ("qwen3_moe", "qwen2_moe"):
            only = g("mlp_only_layers") or []
            step = g("decoder_sparse_step", 1)
            self.is_moe = [(i not in only) and self.n_experts > 0 and (i + 1) % step == 0 for i in range(self.n_layers)]
        elif mt == "deepseek_v2":
            k, f = g("first_k_dense_replace", 0), g("moe_layer_freq", 1)
            self.is_moe = [i >= k and i % f == 0 for i in range(self.n_layers)]
        else:
            self.is_moe = [True] * self.n_layers
        self.moe_layers = [i for i, m in enumerate(self.is_moe) if m]
        # sliding window per layer (None: full causal attention)
        sw = g("sliding_window")
        self.window = [None] * self.n_layers
        if mt in ("mixtral", "phimoe") and sw:
            self.window = [sw] * self.n_layers
        elif mt == "qwen3_moe" and g("use_sliding_window", False) and sw:
            self.window = [sw] * self.n_layers
        elif mt == "qwen2_moe" and g("use_sliding_window", False) and sw:
            types = g("layer_types") or [
                "sliding_attention" if (i + 1) % 2 and i < g("max_window_layers", 28) else "full_attention"
                for i in range(self.n_layers)]
            self.window = [sw if t == "sliding_attention" else None for t in types]
        elif mt == "gpt_oss" and sw:  # GptOssConfig: sliding on even (0-based) layers unless layer_types says
            types = g("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention"
                                         for i in range(self.n_layers)]
            self.window = [sw if t == "sliding_attention" else None for t in types]

    @classmethod
    def load(cls, directory):
        with open(os.path.join(directory, "config.json")) as f:
            return cls(json.load(f))


# ---- rotary embedding (modeling_rope_utils.py) ----------------------------------------------------------------

def _get_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def longrope_parameters(cfg, rs, seq_len):
    """LongRoPE (_compute_longrope_parameters, PhimoeRotaryEmbedding.forward): the long factors and long_mscale when
    the forward's length exceeds original_max_position_embeddings, else the short ones; without an mscale the
    attention factor (given, or sqrt(1 + ln(factor) / ln(original)) with factor = max_position / original)."""
    base = cfg.rope_theta
    dim = int(cfg.head_dim * cfg.partial_rotary_factor)
    orig = rs.get("original_max_position_embeddings") or cfg.orig_max_pos or cfg.max_pos
    long = seq_len is not None and seq_len > orig
    ext = torch.tensor(rs["long_factor" if long else "short_factor"], dtype=torch.float32)
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv = 1.0 / (ext * base ** shape)
    mscale = rs.get("long_mscale" if long else "short_mscale")
    if mscale is None:
        mscale = rs.get("attention_factor")
        if mscale is None:
            factor = rs.get("factor") or cfg.max_pos / orig
            mscale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    return inv, float(mscale)


def rope_parameters(cfg, seq_len=None):
    """(inv_freq f32 (dim/2,), attention_scaling) as ROPE_INIT_FUNCTIONS computes them for this config.
    seq_len: the current sequence length, used by "dynamic" and "longrope"."""
    rs = cfg.rope_scaling or {}
    rtype = rs.get("rope_type", rs.get("type", "default")) if rs else "default"
    base = cfg.rope_theta
    dim = int(cfg.head_dim * cfg.partial_rotary_factor)
    ar = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float)

    def default(b=base):
        return 1.0 / (b ** (ar / dim))

    if rtype == "default":
        return default(), 1.0
    if rtype == "longrope":
        return longrope_parameters(cfg, rs, seq_len)
    factor = rs["factor"]
    if rtype == "linear":
        return default() / factor, 1.0
    if rtype == "dynamic":
        L = cfg.max_pos
        s = L if seq_len is None else max(seq_len, L)
        b = base * ((factor * s / L) - (factor - 1)) ** (dim / (dim - 2))
        return default(b), 1.0
    if rtype == "yarn":
        attention_factor = rs.get("attention_factor")
        mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
        if "original_max_position_embeddings" in rs:
            orig = rs["original_max_position_embeddings"]
            factor = cfg.max_pos / orig
        else:
            orig = cfg.max_pos
        if attention_factor is None:
            if mscale and mscale_all_dim:
                attention_factor = float(_get_mscale(factor, mscale) / _get_mscale(factor, mscale_all_dim))
            else:
                attention_factor = _get_mscale(factor)
        beta_fast = rs.get("beta_fast") or 32
        beta_slow = rs.get("beta_slow") or 1
        truncate = rs.get("truncate", True)

        def corr_dim(rot):
            return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

        lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
        if truncate:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
        inv_extra = 1.0 / pos_freqs
        inv_inter = 1.0 / (factor * pos_freqs)
        extra_factor = 1 - ramp
        inv = inv_inter * (1 - extra_factor) + inv_extra * extra_factor
        return inv, attention_factor
    if rtype == "llama3":
        inv = default()
        lf, hf = rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wl, high_wl = old / lf, old / hf
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - lf) / (hf - lf)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        return torch.where(medium, smoothed, inv_l), 1.0
    raise ValueError(f"rope_scaling type {rtype!r} is not supported")


def rope_tables(cfg, positions, dtype):
    """cos, sin (B, T, head_dim) in `dtype` for int64 positions (B, T): computed in f32, scaled, then cast."""
    seq_len = int(positions.max()) + 1
    inv, scale = rope_parameters(cfg, seq_len)
    B = positions.shape[0]
    freqs = (inv[None, :, None].float().expand(B, -1, 1) @ positions[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos() * scale
    sin = emb.sin() * scale
    return cos.to(dtype), sin.to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


# ---- steering ---------------------------------------------------------------------------------------------------

class Steering:
    """A router intervention (docs/ARCHITECTURE.md §4): coef (n_moe_layers, n_experts) float32, op soft|hard|off|bias,
    fixed eps. Layers are 0-based MoE layer indices, as in steering files."""

    def __init__(self, op, coef, lam=0.0, eps=0.01, eps_mode="fixed", name="", model_id="", layer_index=None,
                 top_k=None):
        if op not in ("soft", "hard", "off", "bias"):
            raise ValueError(f"unknown op {op!r}")
        if eps_mode != "fixed":
            raise ValueError("only fixed eps is reproduced by the reference")
        self.op, self.lam, self.eps, self.eps_mode = op, float(lam), float(eps), eps_mode
        self.coef = np.asarray(coef, dtype=np.float32)
        self.name, self.model_id, self.layer_index, self.top_k = name, model_id, layer_index, top_k
        self.target_layers = [int(l) for l in np.nonzero(np.any(self.coef != 0, axis=1))[0]]

    @classmethod
    def from_spec(cls, op, experts, n_layers, n_experts, lam=0.5, eps=0.01, **kw):
        """experts: {moe_layer: [expert, ...]} (coef = lambda for soft, +1 for hard, -1 for off) or
        {moe_layer: {expert: coef}}."""
        coef = np.zeros((n_layers, n_experts), dtype=np.float32)
        for l, es in experts.items():
            items = es.items() if isinstance(es, dict) else [(e, None) for e in es]
            for e, c in items:
                if c is None:
                    c = lam if op == "soft" else (-1.0 if op == "off" else 1.0)
                coef[int(l), int(e)] = c
        return cls(op, coef, lam=lam, eps=eps, **kw)

    @classmethod
    def load_json(cls, path):
        with open(path) as f:
            d = json.load(f)
        if d.get("format") != "moetrace-steering":
            raise ValueError(f"{path}: not a moetrace steering file")
        return cls(d["op"], d["coef"], lam=d["lambda"], eps=d["eps"], eps_mode=d["eps_mode"], name=d.get("name", ""),
                   model_id=d.get("model_id", ""), layer_index=d.get("layer_index"), top_k=d.get("top_k"))

    def to_json(self):
        """The JSON twin of a steering file (traces/STEERING.md) for this intervention."""
        nl, ne = self.coef.shape
        ex = [[int(l), int(e)] for l, e in zip(*np.nonzero(self.coef))]
        return {"format": "moetrace-steering", "format_version": 1, "producer": "tests/models/ref_moe.py",
                "name": self.name, "model_id": self.model_id, "n_layers": nl, "n_experts": ne,
                "top_k": self.top_k, "layer_index": self.layer_index,
                "indexing": "layers are 0-based MoE layer indices; experts 0-based", "op": self.op,
                "lambda": self.lam, "eps_mode": self.eps_mode, "eps": self.eps, "seed": 0,
                "target_layers": self.target_layers, "experts": ex, "scores": [None] * len(ex), "provenance": {},
                "coef": [[float(x) for x in row] for row in self.coef]}

    def apply(self, z, layer):
        """Steered copy of the router logits z (N, E) at MoE layer `layer`, as float32 (mtr_steer_apply: max, min
        and population std of the unmodified row in double; hard/off at least one float32 step beyond)."""
        if layer not in self.target_layers:
            return z
        c = self.coef[layer]
        sel = [int(e) for e in np.nonzero(c)[0]]
        rows = z.detach().to(torch.float32).cpu().numpy().copy()
        E = rows.shape[1]
        f32 = np.float32
        for row in rows:
            vals = [float(v) for v in row]
            mx, mn = max(vals), min(vals)
            s = 0.0
            for v in vals:
                s += v
            mean = s / E
            sq = 0.0
            for v in vals:
                sq += (v - mean) * (v - mean)
            sd = math.sqrt(sq / E)
            eps = abs(self.eps)
            up, down = f32(mx + eps), f32(mn - eps)
            if not up > f32(mx):
                up = np.nextafter(f32(mx), f32(np.inf))
            if not down < f32(mn):
                down = np.nextafter(f32(mn), f32(-np.inf))
            for e in sel:
                ce = float(c[e])
                if self.op == "soft":
                    row[e] = f32(vals[e] + ce * sd)
                elif self.op == "hard":
                    row[e] = up if ce > 0 else down
                elif self.op == "off":
                    row[e] = down if ce < 0 else up
                else:
                    row[e] = f32(row[e]) + f32(ce)
        return torch.from_numpy(rows)


# ---- the model ----------------------------------------------------------------------------------------------------

def expected_tensors(cfg):
    """name -> shape of every tensor a checkpoint of this config holds, as on the Hub."""
    if cfg.model_type == "gpt_oss":
        return gptoss_expected_tensors(cfg)
    H, hd, nh, nkv, E = cfg.hidden_size, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.n_experts
    t = {"model.embed_tokens.weight": (cfg.vocab_size, H), "model.norm.weight": (H,)}
    if cfg.layernorm:
        t["model.norm.bias"] = (H,)
    if not cfg.tie:
        t["lm_head.weight"] = (cfg.vocab_size, H)
    if cfg.lm_head_bias:
        t["lm_head.bias"] = (cfg.vocab_size,)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (H,)
        t[p + "post_attention_layernorm.weight"] = (H,)
        if cfg.layernorm:
            t[p + "input_layernorm.bias"] = (H,)
            t[p + "post_attention_layernorm.bias"] = (H,)
        a = p + "self_attn."
        if cfg.mla:
            _mla_tensors(t, cfg, i)
            continue
        t[a + "q_proj.weight"] = (nh * hd, H)
        t[a + "k_proj.weight"] = (nkv * hd, H)
        t[a + "v_proj.weight"] = (nkv * hd, H)
        t[a + "o_proj.weight"] = (H, nh * hd)
        if cfg.qkv_bias:
            t[a + "q_proj.bias"], t[a + "k_proj.bias"], t[a + "v_proj.bias"] = (nh * hd,), (nkv * hd,), (nkv * hd,)
        if cfg.o_bias:
            t[a + "o_proj.bias"] = (H,)
        if cfg.model_type == "qwen3_moe":
            t[a + "q_norm.weight"] = (hd,)
            t[a + "k_norm.weight"] = (hd,)
        elif cfg.model_type == "olmoe":
            t[a + "q_norm.weight"] = (nh * hd,)
            t[a + "k_norm.weight"] = (nkv * hd,)
        if cfg.model_type in ("mixtral", "phimoe"):
            m = p + "block_sparse_moe."
            t[m + "gate.weight"] = (E, H)
            for e in range(E):
                t[m + f"experts.{e}.w1.weight"] = (cfg.moe_inter, H)
                t[m + f"experts.{e}.w3.weight"] = (cfg.moe_inter, H)
                t[m + f"experts.{e}.w2.weight"] = (H, cfg.moe_inter)
            continue
        m = p + "mlp."
        if not cfg.is_moe[i]:
            t[m + "gate_proj.weight"] = (cfg.intermediate_size, H)
            t[m + "up_proj.weight"] = (cfg.intermediate_size, H)
            t[m + "down_proj.weight"] = (H, cfg.intermediate_size)
            continue
        t[m + "gate.weight"] = (E, H)
        for e in range(E):
            t[m + f"experts.{e}.gate_proj.weight"] = (cfg.moe_inter, H)
            t[m + f"experts.{e}.up_proj.weight"] = (cfg.moe_inter, H)
            t[m + f"experts.{e}.down_proj.weight"] = (H, cfg.moe_inter)
        if cfg.model_type == "qwen2_moe":
            t[m + "shared_expert.gate_proj.weight"] = (cfg.shared_inter, H)
            t[m + "shared_expert.up_proj.weight"] = (cfg.shared_inter, H)
            t[m + "shared_expert.down_proj.weight"] = (H, cfg.shared_inter)
            t[m + "shared_expert_gate.weight"] = (1, H)
    return t


def _mla_tensors(t, cfg, i):
    """deepseek_v2's tensors of layer i beyond the norms (attention, MLP or experts, shared experts, bias)."""
    H, nh, E = cfg.hidden_size, cfg.n_heads, cfg.n_experts
    qkd, rd = cfg.qk_nope + cfg.head_dim, cfg.head_dim
    a = f"model.layers.{i}.self_attn."
    if cfg.q_lora_rank:
        t[a + "q_a_proj.weight"] = (cfg.q_lora_rank, H)
        if cfg.o_bias:
            t[a + "q_a_proj.bias"] = (cfg.q_lora_rank,)
        t[a + "q_a_layernorm.weight"] = (cfg.q_lora_rank,)
        t[a + "q_b_proj.weight"] = (nh * qkd, cfg.q_lora_rank)
    else:
        t[a + "q_proj.weight"] = (nh * qkd, H)
    t[a + "kv_a_proj_with_mqa.weight"] = (cfg.kv_lora_rank + rd, H)
    if cfg.o_bias:
        t[a + "kv_a_proj_with_mqa.bias"] = (cfg.kv_lora_rank + rd,)
        t[a + "o_proj.bias"] = (H,)
    t[a + "kv_a_layernorm.weight"] = (cfg.kv_lora_rank,)
    t[a + "kv_b_proj.weight"] = (nh * (cfg.qk_nope + cfg.v_head_dim), cfg.kv_lora_rank)
    t[a + "o_proj.weight"] = (H, nh * cfg.v_head_dim)
    m = f"model.layers.{i}.mlp."
    if not cfg.is_moe[i]:
        t[m + "gate_proj.weight"] = (cfg.intermediate_size, H)
        t[m + "up_proj.weight"] = (cfg.intermediate_size, H)
        t[m + "down_proj.weight"] = (H, cfg.intermediate_size)
        return
    t[m + "gate.weight"] = (E, H)
    if cfg.topk_method == "noaux_tc":
        t[m + "gate.e_score_correction_bias"] = (E,)
    for e in range(E):
        t[m + f"experts.{e}.gate_proj.weight"] = (cfg.moe_inter, H)
        t[m + f"experts.{e}.up_proj.weight"] = (cfg.moe_inter, H)
        t[m + f"experts.{e}.down_proj.weight"] = (H, cfg.moe_inter)
    if cfg.n_shared:
        S = cfg.moe_inter * cfg.n_shared
        t[m + "shared_experts.gate_proj.weight"] = (S, H)
        t[m + "shared_experts.up_proj.weight"] = (S, H)
        t[m + "shared_experts.down_proj.weight"] = (H, S)


def apply_rotary_emb(x, freqs_cis):
    """modeling_deepseek_v2.apply_rotary_emb for one tensor (..., T, rope): pairs (2i, 2i + 1) as complex numbers
    times freqs_cis (T, rope / 2), in f32, cast back to x's dtype."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis).flatten(-2).type_as(x)


def deepseek_route(cfg, zr, bias):
    """DeepSeek's router on the f32 logits routed on zr (N, E): (weights (N, K) f32, experts (N, K), the masked
    choice scores (N, E), the group scores (N, G) or None). Sorting is stable (ties to the lower index)."""
    N, E = zr.shape
    scores = torch.sigmoid(zr) if cfg.scoring == "sigmoid" else F.softmax(zr, dim=-1, dtype=torch.float32)
    choice = scores + bias[None] if cfg.topk_method == "noaux_tc" else scores
    groups = None
    if cfg.topk_method in ("group_limited_greedy", "noaux_tc") and cfg.n_group > 1:
        gv = choice.view(N, cfg.n_group, -1)
        if cfg.topk_method == "noaux_tc":
            groups = torch.sort(gv, dim=-1, descending=True, stable=True)[0][..., :2].sum(-1)
        else:
            groups = gv.max(dim=-1).values
        gidx = torch.sort(groups, dim=-1, descending=True, stable=True)[1][:, :cfg.topk_group]
        gmask = torch.zeros_like(groups).scatter_(1, gidx, 1)
        smask = gmask.unsqueeze(-1).expand(N, cfg.n_group, E // cfg.n_group).reshape(N, -1)
        choice = choice.masked_fill(~smask.bool(), 0.0)
    order = torch.sort(choice, dim=-1, descending=True, stable=True)[1][:, :cfg.top_k]
    w = scores.gather(1, order)
    if cfg.top_k > 1 and cfg.norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return w * cfg.routed_scaling, order, choice, groups


def rms_norm(x, w, eps):
    """RMSNorm as transformers: statistics in f32, normalised value cast back, then weight * value."""
    dt = x.dtype
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(dt)


def layer_norm(x, w, b, eps, up):
    """nn.LayerNorm with weight and bias; for bf16/f16 (up) computed in f32 and rounded once, as the CPU and CUDA
    kernels do."""
    if up:
        return F.layer_norm(x.float(), x.shape[-1:], w.float(), b.float(), eps).to(x.dtype)
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


def sparsemixer(scores, jitter_eps, top_k=2):
    """modeling_phimoe.sparsemixer with training=False: (multipliers (N, k), experts (N, k)) in the dtype of scores,
    its element-wise arithmetic as torch does it in that dtype. Round r masks, among the experts not chosen yet,
    those whose relative gap to the round's maximum exceeds 2 eps and takes the softmax at the maximum."""
    mult, sel = [], []
    masked_scores = scores
    for _ in range(top_k):
        with torch.no_grad():
            thr, ind = masked_scores.max(dim=-1, keepdim=True)
            factor = scores.abs().clamp(min=thr)
            mask = ((thr - scores) / factor) > (2 * jitter_eps)
        gates = torch.softmax(masked_scores.masked_fill(mask, float("-inf")), dim=-1)
        mult.append(gates.gather(dim=-1, index=ind))
        sel.append(ind)
        masked_scores = torch.scatter(masked_scores, -1, ind, float("-inf"))
    return torch.cat(mult, dim=-1), torch.cat(sel, dim=-1)


class Ops:
    """Matrix products and SiLU in the model dtype. For bf16/f16 each is computed in f32 (f32 accumulation) and
    rounded once to the model dtype, as current PyTorch kernels and cuBLAS do. native=True uses the tensor's own
    kernels instead: Debian's torch 1.13 CPU rounds every product and partial sum of a non-transposed bf16
    matmul/bmm (attention) to bf16 and evaluates bf16 SiLU as x / (1 + exp(-x)) with a rounding after every
    step, which no other implementation reproduces (F.linear already accumulates in f32 there)."""

    def __init__(self, dtype, native=False):
        self.up = dtype != torch.float32 and not native

    def linear(self, x, w, b=None):
        if not self.up:
            return F.linear(x, w, b)
        return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)

    def matmul(self, a, b):
        return torch.matmul(a.float(), b.float()).to(a.dtype) if self.up else torch.matmul(a, b)

    def silu(self, x):
        return F.silu(x.float()).to(x.dtype) if self.up else F.silu(x)

    def gated_mlp(self, x, wg, wu, wd):
        return self.linear(self.silu(self.linear(x, wg)) * self.linear(x, wu), wd)


class MoeModel:
    """A checkpoint directory loaded for the reference forward. weights: the tensors, in the stored dtype."""

    def __new__(cls, directory, *args, **kwargs):
        if cls is MoeModel and Config.load(directory).model_type == "gpt_oss":
            cls = GptOssModel
        return super().__new__(cls)

    def __init__(self, directory, weights=None, native_kernels=False):
        self.dir = directory
        self.cfg = Config.load(directory)
        self.ops = Ops(self.cfg.dtype, native_kernels)
        w = safetensors_io.load_checkpoint(directory) if weights is None else weights
        want = expected_tensors(self.cfg)
        missing = sorted(set(want) - set(w))
        extra = sorted(set(w) - set(want))
        if missing or extra:
            raise ValueError(f"{directory}: missing tensors {missing[:4]}, unexpected {extra[:4]}")
        for k, shape in want.items():
            if tuple(w[k].shape) != tuple(shape):
                raise ValueError(f"{directory}: {k} has shape {tuple(w[k].shape)}, expected {shape}")
            if w[k].dtype != self.cfg.dtype:
                raise ValueError(f"{directory}: {k} is {w[k].dtype}, config says {self.cfg.dtype_name}")
        self.w = w

    # -- blocks --

    def attention_mla(self, i, x, freqs, mask):
        """deepseek_v2's multi-head latent attention; freqs: (B, T, rope / 2) complex f32 (times the attention
        factor)."""
        cfg, w, op = self.cfg, self.w, self.ops
        B, T, _ = x.shape
        a = f"model.layers.{i}.self_attn."
        nh, nope, rd, vd = cfg.n_heads, cfg.qk_nope, cfg.head_dim, cfg.v_head_dim
        if cfg.q_lora_rank:
            qa = op.linear(x, w[a + "q_a_proj.weight"], w.get(a + "q_a_proj.bias"))
            q = op.linear(rms_norm(qa, w[a + "q_a_layernorm.weight"], 1e-6), w[a + "q_b_proj.weight"])
        else:
            q = op.linear(x, w[a + "q_proj.weight"])
        q = q.view(B, T, nh, nope + rd).transpose(1, 2)
        q_nope, q_pe = torch.split(q, [nope, rd], dim=-1)
        ckv = op.linear(x, w[a + "kv_a_proj_with_mqa.weight"], w.get(a + "kv_a_proj_with_mqa.bias"))
        k_lat, k_pe = torch.split(ckv, [cfg.kv_lora_rank, rd], dim=-1)
        kv = op.linear(rms_norm(k_lat, w[a + "kv_a_layernorm.weight"], 1e-6), w[a + "kv_b_proj.weight"])
        kv = kv.view(B, T, nh, nope + vd).transpose(1, 2)
        k_nope, v = torch.split(kv, [nope, vd], dim=-1)
        k_pe = k_pe.view(B, 1, T, rd)
        fc = freqs.unsqueeze(1)
        q_pe, k_pe = apply_rotary_emb(q_pe, fc), apply_rotary_emb(k_pe, fc)
        q = torch.cat((q_nope, q_pe), dim=-1)
        k = torch.cat((k_nope, k_pe.expand(B, nh, T, rd)), dim=-1)
        att = op.matmul(q, k.transpose(2, 3)) * cfg.attn_scale
        att = att + mask
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        o = op.matmul(att, v).transpose(1, 2).contiguous().reshape(B, T, nh * vd)
        return op.linear(o, w[a + "o_proj.weight"], w.get(a + "o_proj.bias"))

    def moe_deepseek(self, i, x2, moe_idx, steer, rec):
        """deepseek_v2's MoE block on x2 (N, H): f32 router, experts weighted by f32 weights, shared experts."""
        cfg, w = self.cfg, self.w
        m = f"model.layers.{i}.mlp."
        z = F.linear(x2.float(), w[m + "gate.weight"].float())  # DeepSeek's gate: f32 whatever the dtype
        zr = steer.apply(z, moe_idx) if steer is not None else z
        bias = w.get(m + "gate.e_score_correction_bias")
        wts, sel, choice, groups = deepseek_route(cfg, zr, None if bias is None else bias.float())
        rec.append({"router": z, "routed_on": zr, "selected": sel, "weights": wts, "choice": choice,
                    "groups": groups})
        out = torch.zeros_like(x2)
        mask = F.one_hot(sel, num_classes=cfg.n_experts).permute(2, 1, 0)
        for e in (mask.sum(dim=(-1, -2)) > 0).nonzero(as_tuple=True)[0].tolist():
            slot, tok = torch.where(mask[e])
            ex = m + f"experts.{e}."
            y = self.ops.gated_mlp(x2[tok], *(w[ex + n + ".weight"] for n in ("gate_proj", "up_proj", "down_proj")))
            out.index_add_(0, tok, (y * wts[tok, slot, None]).to(x2.dtype))
        if cfg.n_shared:
            se = m + "shared_experts."
            out = out + self.ops.gated_mlp(x2, *(w[se + n + ".weight"] for n in ("gate_proj", "up_proj", "down_proj")))
        return out

    def attention(self, i, x, cos, sin, mask):
        cfg, w = self.cfg, self.w
        B, T, _ = x.shape
        a = f"model.layers.{i}.self_attn."
        nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        op = self.ops
        q = op.linear(x, w[a + "q_proj.weight"], w.get(a + "q_proj.bias"))
        k = op.linear(x, w[a + "k_proj.weight"], w.get(a + "k_proj.bias"))
        v = op.linear(x, w[a + "v_proj.weight"], w.get(a + "v_proj.bias"))
        if cfg.model_type == "olmoe":  # norms over the whole projection, then clipping
            q = rms_norm(q, w[a + "q_norm.weight"], cfg.rms_eps)
            k = rms_norm(k, w[a + "k_norm.weight"], cfg.rms_eps)
            if cfg.clip_qkv is not None:
                q, k, v = (t.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv) for t in (q, k, v))
        q = q.view(B, T, nh, hd)
        k = k.view(B, T, nkv, hd)
        if cfg.model_type == "qwen3_moe":  # norms over each head's head_dim
            q = rms_norm(q, w[a + "q_norm.weight"], cfg.rms_eps)
            k = rms_norm(k, w[a + "k_norm.weight"], cfg.rms_eps)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, nkv, hd).transpose(1, 2)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * c) + (rotate_half(q) * s)
        k = (k * c) + (rotate_half(k) * s)
        rep = nh // nkv
        if rep > 1:
            k = k[:, :, None].expand(B, nkv, rep, T, hd).reshape(B, nh, T, hd)
            v = v[:, :, None].expand(B, nkv, rep, T, hd).reshape(B, nh, T, hd)
        att = op.matmul(q, k.transpose(2, 3)) * (hd ** -0.5)
        att = att + mask
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        o = op.matmul(att, v).transpose(1, 2).contiguous().reshape(B, T, nh * hd)
        return op.linear(o, w[a + "o_proj.weight"], w.get(a + "o_proj.bias"))

    def route(self, z, moe_idx, steer):
        """(routing weights (N, K) model dtype, selected experts (N, K), logits routed on) from gate outputs z.
        Softmax in f32 over all experts, top-k (ties: lower expert index), renormalised if the model does."""
        cfg = self.cfg
        zr = steer.apply(z, moe_idx) if steer is not None else z
        if cfg.sparsemixer_eps is not None:
            # in the dtype of the logits routed on: the model's, or f32 for steered logits
            wts, order = sparsemixer(zr, cfg.sparsemixer_eps, cfg.top_k)
            return wts.to(z.dtype), order, zr
        p = F.softmax(zr, dim=1, dtype=torch.float32)
        order = torch.sort(p, dim=-1, descending=True, stable=True)[1][:, :cfg.top_k]
        wts = torch.gather(p, 1, order)
        if cfg.norm_topk_prob:
            wts = wts / wts.sum(dim=-1, keepdim=True)
        return wts.to(z.dtype), order, zr

    def moe(self, i, x, moe_idx, steer, rec):
        cfg, w = self.cfg, self.w
        B, T, H = x.shape
        x2 = x.reshape(-1, H)
        if cfg.mla:
            return self.moe_deepseek(i, x2, moe_idx, steer, rec).reshape(B, T, H)
        if cfg.model_type in ("mixtral", "phimoe"):
            m = f"model.layers.{i}.block_sparse_moe."
            names = ("w1", "w3", "w2")
        else:
            m = f"model.layers.{i}.mlp."
            names = ("gate_proj", "up_proj", "down_proj")
        z = self.ops.linear(x2, w[m + "gate.weight"])  # raw router logits, model dtype
        wts, sel, zr = self.route(z, moe_idx, steer)
        rec.append({"router": z, "routed_on": zr, "selected": sel, "weights": wts})
        out = torch.zeros_like(x2)
        # the experts one after another, each over the tokens routed to it (index_add_ in expert order)
        mask = F.one_hot(sel, num_classes=cfg.n_experts).permute(2, 1, 0)  # (E, K, N)
        hit = (mask.sum(dim=(-1, -2)) > 0).nonzero(as_tuple=True)[0].tolist()
        for e in hit:
            slot, tok = torch.where(mask[e])
            ex = m + f"experts.{e}."
            y = self.ops.gated_mlp(x2[tok], *(w[ex + n + ".weight"] for n in names))
            out.index_add_(0, tok, (y * wts[tok, slot, None]).to(x2.dtype))
        if cfg.model_type == "qwen2_moe":
            se = m + "shared_expert."
            ys = self.ops.gated_mlp(x2, w[se + "gate_proj.weight"], w[se + "up_proj.weight"],
                                    w[se + "down_proj.weight"])
            ys = torch.sigmoid(self.ops.linear(x2, w[m + "shared_expert_gate.weight"])) * ys
            out = out + ys
        return out.reshape(B, T, H)

    def dense(self, i, x):
        m = f"model.layers.{i}.mlp."
        w = self.w
        return self.ops.gated_mlp(x, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"])

    def norm(self, x, prefix):
        """The decoder's norm at prefix (input_layernorm, post_attention_layernorm, model.norm): RMSNorm, or
        LayerNorm with bias (phimoe)."""
        w, cfg = self.w, self.cfg
        if cfg.layernorm:
            return layer_norm(x, w[prefix + ".weight"], w[prefix + ".bias"], cfg.rms_eps, self.ops.up)
        return rms_norm(x, w[prefix + ".weight"], cfg.rms_eps)

    def causal_mask(self, T, window, dtype):
        q = torch.arange(T)[:, None]
        kv = torch.arange(T)[None, :]
        ok = kv <= q
        if window is not None:
            ok = ok & (q - kv < window)
        mask = torch.zeros(T, T, dtype=dtype)
        mask.masked_fill_(~ok, torch.finfo(dtype).min)
        return mask[None, None]

    # -- forward --

    @torch.no_grad()
    def forward_full(self, ids, steer=None, stop_after_last_moe=False, logits_positions=None):
        """Run token ids (T,) or (B, T). Returns a dict: logits (B, T, V) model dtype; moe (one dict per MoE layer:
        router (B*T, E) raw gate outputs in model dtype, routed_on (the steered logits, f32, or router),
        selected (B*T, K), weights (B*T, K)). stop_after_last_moe: no logits (None), the layers after the last
        MoE layer skipped; logits_positions: a slice of positions to compute logits for (logits_to_keep)."""
        cfg, w = self.cfg, self.w
        ids = torch.as_tensor(ids, dtype=torch.int64)
        if ids.dim() == 1:
            ids = ids[None]
        B, T = ids.shape
        if int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size:
            raise ValueError("token id outside the vocabulary")
        x = F.embedding(ids, w["model.embed_tokens.weight"])
        pos = torch.arange(T, dtype=torch.int64)[None].expand(B, T)
        cos, sin = rope_tables(cfg, pos, cfg.dtype)
        if cfg.mla:  # torch.polar(1, pos * inv_freq) times the attention factor, complex f32
            inv, af = rope_parameters(cfg, T)
            ang = pos[:, :, None].float() * inv[None, None, :].float()
            freqs = torch.polar(torch.ones_like(ang), ang) * af
        masks = {}
        rec = []
        for i in range(cfg.n_layers):
            win = cfg.window[i] if cfg.window[i] is not None and cfg.window[i] < T else None
            if win not in masks:
                masks[win] = self.causal_mask(T, win, cfg.dtype)
            p = f"model.layers.{i}."
            h = self.norm(x, p + "input_layernorm")
            x = x + (self.attention_mla(i, h, freqs, masks[win]) if cfg.mla else
                     self.attention(i, h, cos, sin, masks[win]))
            h = self.norm(x, p + "post_attention_layernorm")
            if cfg.is_moe[i]:
                x = x + self.moe(i, h, len(rec), steer, rec)
            else:
                x = x + self.dense(i, h)
            if stop_after_last_moe and i == cfg.moe_layers[-1]:
                return {"logits": None, "moe": rec}
        x = self.norm(x, "model.norm")
        if logits_positions is not None:
            x = x[:, logits_positions]
        head = w["model.embed_tokens.weight"] if cfg.tie else w["lm_head.weight"]
        return {"logits": self.ops.linear(x, head, w.get("lm_head.bias")), "moe": rec}

    def forward(self, ids, steer=None):
        """logits (T, V) and the list of raw router logits (T, E) per MoE layer, in the model dtype, for a 1-D id
        sequence (for a batch (B, T): logits (B, T, V), routers (B*T, E))."""
        out = self.forward_full(ids, steer)
        logits = out["logits"]
        if torch.as_tensor(ids).dim() == 1:
            logits = logits[0]
        return logits, [r["router"] for r in out["moe"]]

    @torch.no_grad()
    def generate(self, ids, n, steer=None):
        """Greedy continuation of n tokens, recomputing the whole prefix at every step (no cache); ties go to
        the lowest id (torch.argmax over the f32 logits of the last position)."""
        seq = [int(t) for t in ids]
        new = []
        for _ in range(n):
            logits = self.forward_full(seq, steer)["logits"][0, -1].to(torch.float32)
            nxt = int(torch.argmax(logits))
            seq.append(nxt)
            new.append(nxt)
        return new


# ---- gpt_oss (modeling_gpt_oss.py, integrations/mxfp4.py) --------------------------------------------------------

FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def gptoss_expected_tensors(cfg):
    """name -> shape of a gpt_oss checkpoint as published: dense tensors in the model dtype, experts in MXFP4
    (*_blocks (E, rows, cols/32, 16) and *_scales (E, rows, cols/32), U8) with their biases in the model dtype."""
    H, hd, nh, nkv, E, I = cfg.hidden_size, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.n_experts, cfg.moe_inter
    t = {"model.embed_tokens.weight": (cfg.vocab_size, H), "model.norm.weight": (H,)}
    if not cfg.tie:
        t["lm_head.weight"] = (cfg.vocab_size, H)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (H,)
        t[p + "post_attention_layernorm.weight"] = (H,)
        a = p + "self_attn."
        for n, rows, cols in (("q_proj", nh * hd, H), ("k_proj", nkv * hd, H), ("v_proj", nkv * hd, H),
                              ("o_proj", H, nh * hd)):
            t[a + n + ".weight"] = (rows, cols)
            if (n == "o_proj" and cfg.o_bias) or (n != "o_proj" and cfg.qkv_bias):
                t[a + n + ".bias"] = (rows,)
        t[a + "sinks"] = (nh,)
        m = p + "mlp."
        t[m + "router.weight"] = (E, H)
        t[m + "router.bias"] = (E,)
        for n, rows, cols in (("gate_up_proj", 2 * I, H), ("down_proj", H, I)):
            t[m + f"experts.{n}_blocks"] = (E, rows, cols // 32, 16)
            t[m + f"experts.{n}_scales"] = (E, rows, cols // 32)
            t[m + f"experts.{n}_bias"] = (E, rows)
    return t


def mxfp4_dequantize(blocks, scales):
    """(E, rows, cols) float32 of MXFP4 blocks (E, rows, G, 16) u8 and scales (E, rows, G) u8 as
    convert_moe_packed_tensors reads them: the low nibble of each byte is the even element, the high nibble the odd
    one, each e2m1 code times 2**(scale - 127) (exact in float32 and in bfloat16)."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    b = blocks.to(torch.int64)
    vals = torch.stack((lut[b & 0x0F], lut[b >> 4]), dim=-1).reshape(*blocks.shape[:-1], 32)
    vals = torch.ldexp(vals, (scales.to(torch.int32) - 127)[..., None].to(torch.float32))
    return vals.reshape(blocks.shape[0], blocks.shape[1], -1)


class GptOssModel(MoeModel):
    """gpt_oss with the arithmetic of GptOssForCausalLM in eval mode, after transformers dequantised the MXFP4
    experts (on a machine without the triton kernels, as on CPU): gate_up_proj (E, H, 2I) with gate/up interleaved
    in the last dimension, down_proj (E, I, H). Differences from the other architectures: RMSNorm weight kept in
    f32 (one rounding of weight * x), q/k/v/o biases, per-head sink logits in the attention softmax (with the
    maximum subtracted in the model dtype), sliding window on the layers layer_types names, a router Linear with
    bias whose top-k logits are softmaxed (in the model dtype), experts x @ W + b with the clamped SwiGLU
    (gate <= limit, |up| <= limit, (up + 1) * gate * sigmoid(alpha * gate)). The eval path weighs every expert's
    output by a routing score that is zero off the top-k and sums over the experts; here only the selected experts
    run (the others add exact zeros) and the sum is accumulated in f32 in expert order, rounded once."""

    def __init__(self, directory, weights=None, native_kernels=False):
        self.dir = directory
        self.cfg = cfg = Config.load(directory)
        w = safetensors_io.load_checkpoint(directory) if weights is None else weights
        if cfg.dtype_implicit and "model.embed_tokens.weight" in w:
            cfg.dtype = w["model.embed_tokens.weight"].dtype
            cfg.dtype_name = {v: k for k, v in TORCH_DTYPES.items()}[cfg.dtype]
        self.ops = Ops(cfg.dtype, False)
        want = expected_tensors(cfg)
        missing = sorted(set(want) - set(w))
        extra = sorted(set(w) - set(want))
        if missing or extra:
            raise ValueError(f"{directory}: missing tensors {missing[:4]}, unexpected {extra[:4]}")
        for k, shape in want.items():
            if tuple(w[k].shape) != tuple(shape):
                raise ValueError(f"{directory}: {k} has shape {tuple(w[k].shape)}, expected {shape}")
            dt = torch.uint8 if k.endswith(("_blocks", "_scales")) else cfg.dtype
            if w[k].dtype != dt:
                raise ValueError(f"{directory}: {k} is {w[k].dtype}, expected {dt}")
        self.w = dict(w)
        for i in range(cfg.n_layers):
            e = f"model.layers.{i}.mlp.experts."
            for n in ("gate_up_proj", "down_proj"):  # the nn.Parameter layouts (E, in, out)
                dq = mxfp4_dequantize(w[e + n + "_blocks"], w[e + n + "_scales"])
                self.w[e + n] = dq.transpose(1, 2).contiguous().to(cfg.dtype)

    def norm(self, x, prefix):
        """GptOssRMSNorm: (weight * x_normalised).to(dtype) with the weight kept in f32: one rounding."""
        wt = self.w[prefix + ".weight"]
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.cfg.rms_eps)
        return (wt.float() * h).to(x.dtype)

    def attention(self, i, x, cos, sin, mask):
        cfg, w, op = self.cfg, self.w, self.ops
        B, T, _ = x.shape
        a = f"model.layers.{i}.self_attn."
        nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q = op.linear(x, w[a + "q_proj.weight"], w.get(a + "q_proj.bias")).view(B, T, nh, hd).transpose(1, 2)
        k = op.linear(x, w[a + "k_proj.weight"], w.get(a + "k_proj.bias")).view(B, T, nkv, hd).transpose(1, 2)
        v = op.linear(x, w[a + "v_proj.weight"], w.get(a + "v_proj.bias")).view(B, T, nkv, hd).transpose(1, 2)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * c) + (rotate_half(q) * s)
        k = (k * c) + (rotate_half(k) * s)
        rep = nh // nkv
        if rep > 1:
            k = k[:, :, None].expand(B, nkv, rep, T, hd).reshape(B, nh, T, hd)
            v = v[:, :, None].expand(B, nkv, rep, T, hd).reshape(B, nh, T, hd)
        att = op.matmul(q, k.transpose(2, 3)) * (hd ** -0.5)
        att = att + mask
        sinks = w[a + "sinks"].reshape(1, -1, 1, 1).expand(B, -1, T, 1).to(att.dtype)
        comb = torch.cat([att, sinks], dim=-1)
        comb = comb - comb.max(dim=-1, keepdim=True).values
        probs = F.softmax(comb.float(), dim=-1).to(comb.dtype)[..., :-1]  # the sink column dropped
        o = op.matmul(probs, v).transpose(1, 2).contiguous().reshape(B, T, nh * hd)
        return op.linear(o, w[a + "o_proj.weight"], w.get(a + "o_proj.bias"))

    def route(self, z, moe_idx, steer):
        """GptOssTopKRouter: top-k of the (steered) logits, ties to the lower index, softmax over those k."""
        zr = steer.apply(z, moe_idx) if steer is not None else z
        order = torch.sort(zr.float(), dim=-1, descending=True, stable=True)[1][:, :self.cfg.top_k]
        top = torch.gather(zr.float(), 1, order)
        return F.softmax(top, dim=1).to(z.dtype), order, zr

    def moe(self, i, x, moe_idx, steer, rec):
        cfg, w, op = self.cfg, self.w, self.ops
        B, T, H = x.shape
        dt = x.dtype
        x2 = x.reshape(-1, H)
        m = f"model.layers.{i}.mlp."
        z = op.linear(x2, w[m + "router.weight"], w[m + "router.bias"])  # raw router logits, bias included
        wts, sel, zr = self.route(z, moe_idx, steer)
        rec.append({"router": z, "routed_on": zr, "selected": sel, "weights": wts})
        acc = torch.zeros(x2.shape, dtype=torch.float32)
        mask = F.one_hot(sel, num_classes=cfg.n_experts).permute(2, 1, 0)  # (E, K, N)
        hit = (mask.sum(dim=(-1, -2)) > 0).nonzero(as_tuple=True)[0].tolist()
        alpha, limit = cfg.swiglu_alpha, cfg.swiglu_limit
        e_ = m + "experts."
        for e in hit:
            slot, tok = torch.where(mask[e])
            # every elementwise step in the model dtype, as the eager code computes it
            gu = (op.matmul(x2[tok], w[e_ + "gate_up_proj"][e]).float() + w[e_ + "gate_up_proj_bias"][e].float()).to(dt)
            gate, up = gu[..., ::2], gu[..., 1::2]
            gate = gate.clamp(min=None, max=limit)
            up = up.clamp(min=-limit, max=limit)
            sg = torch.sigmoid((gate.float() * alpha).to(dt).float()).to(dt)
            glu = (gate.float() * sg.float()).to(dt)
            h = ((up.float() + 1).to(dt).float() * glu.float()).to(dt)
            y = (op.matmul(h, w[e_ + "down_proj"][e]).float() + w[e_ + "down_proj_bias"][e].float()).to(dt)
            acc.index_add_(0, tok, (y.float() * wts[tok, slot, None].float()).to(dt).float())
        return acc.to(dt).reshape(B, T, H)


def main(argv):
    if not argv:
        print(__doc__)
        return 1
    m = MoeModel(argv[0])
    ids = [int(x) for x in argv[1:]] or [1, 2, 3]
    logits, routers = m.forward(ids)
    print(f"{m.cfg.model_type} dtype={m.cfg.dtype_name} moe_layers={m.cfg.moe_layers}")
    print("argmax", torch.argmax(logits.float(), -1).tolist())
    for l, r in zip(m.cfg.moe_layers, routers):
        print(f"layer {l} top-{m.cfg.top_k}", torch.topk(r.float(), m.cfg.top_k, -1)[1].tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
