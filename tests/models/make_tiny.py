"""make_tiny.py — builds the tiny Hugging Face-layout MoE checkpoints under tests/models/tiny/<name>/ (config.json
as transformers writes it, safetensors weights with the Hub's tensor names, a byte-level tokenizer without merges,
a ChatML chat template) and their golden outputs from the PyTorch reference (ref_moe.py): golden.safetensors and
the steering files the steered goldens were made with. Deterministic: seeded weights, fixed prompts.

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 tests/models/make_tiny.py [--out DIR] [--only NAME ...] [--check]

--check rebuilds into a temporary directory and compares with the committed files (weights, configs and tokenizer
byte for byte; goldens to 0 ulp of f32 / exactly for ids) instead of writing. See tests/models/tiny/README.md.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ref_moe  # noqa: E402
import safetensors_io  # noqa: E402

VOCAB = 300
N_GEN = 8
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 256, 257, 258
BOS, IM_START, EOS = 256, 257, 258
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


# ---- tokenizer ------------------------------------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's byte -> printable character table, as (bytes in vocabulary order, their characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return bs, [chr(c) for c in cs]


BYTE_ORDER, BYTE_CHARS = bytes_to_unicode()
BYTE_ID = {b: i for i, b in enumerate(BYTE_ORDER)}  # byte value -> token id


def encode_text(parts):
    """Token ids of a list of str (text, encoded as UTF-8 bytes) and int (a special token id)."""
    ids = []
    for p in parts:
        ids += [p] if isinstance(p, int) else [BYTE_ID[b] for b in p.encode("utf-8")]
    return ids


def tokenizer_json():
    added = [{"id": 256 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(SPECIAL)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {c: i for i, c in enumerate(BYTE_CHARS)}, "merges": []},
    }


def tokenizer_config():
    dec = {str(256 + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                          "special": True} for i, s in enumerate(SPECIAL)}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": dec,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# ---- configs (key sets and order as transformers writes them for each model_type) -----------------------------------

def qwen3_moe_config(**over):
    c = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "decoder_sparse_step": 1,
        "eos_token_id": EOS,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 48,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 4096,
        "max_window_layers": 3,
        "mlp_only_layers": [0],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": 24,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    c.update(over)
    return dict(sorted(c.items()))


def olmoe_config(**over):
    c = {
        "architectures": ["OlmoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "clip_qkv": 2.5,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "hidden_size": 48,
        "initializer_range": 0.02,
        "intermediate_size": 24,
        "max_position_embeddings": 4096,
        "model_type": "olmoe",
        "norm_topk_prob": False,
        "num_attention_heads": 3,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 3,
        "output_router_logits": False,
        "pad_token_id": BOS,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    c.update(over)
    return dict(sorted(c.items()))


def mixtral_config(**over):
    c = {
        "architectures": ["MixtralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 32,
        "max_position_embeddings": 4096,
        "model_type": "mixtral",
        "num_attention_heads": 2,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 1,
        "num_local_experts": 8,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02,
        "router_jitter_noise": 0.0,
        "sliding_window": 16,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    c.update(over)
    return dict(sorted(c.items()))


def qwen2_moe_config(**over):
    c = {
        "architectures": ["Qwen2MoeForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "decoder_sparse_step": 2,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 8192,
        "max_window_layers": 4,
        "mlp_only_layers": [],
        "model_type": "qwen2_moe",
        "moe_intermediate_size": 16,
        "norm_topk_prob": False,
        "num_attention_heads": 2,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "qkv_bias": True,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 64,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    c.update(over)
    return dict(sorted(c.items()))


def gpt_oss_config(**over):
    """As the published gpt-oss config.json (no torch_dtype, MXFP4 quantization_config, yarn with truncate false,
    max_position_embeddings / original = factor = 32, alternating layer_types), scaled down."""
    c = {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": EOS,
        "experts_per_token": 4,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initial_context_length": 64,
        "initializer_range": 0.02,
        "intermediate_size": 32,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "max_position_embeddings": 2048,
        "model_type": "gpt_oss",
        "num_attention_heads": 4,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 4,
        "num_key_value_heads": 2,
        "num_local_experts": 8,
        "output_router_logits": False,
        "pad_token_id": BOS,
        "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                           "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 64,
                         "rope_type": "yarn", "truncate": False},
        "rope_theta": 150000,
        "router_aux_loss_coef": 0.9,
        "sliding_window": 8,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "transformers_version": "4.55.0.dev0",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    c.update(over)
    return dict(sorted(c.items()))


def phimoe_config(**over):
    """PhimoeConfig as save_pretrained writes it (Phi-3.5-MoE's keys: LayerNorm, biases, LongRoPE with short/long
    factors and mscales, sparsemixer's router_jitter_noise). LongRoPE's original length (12) lies inside the
    golden prompts and generations, so both factor sets and the recomputation at the crossing are exercised; the
    jitter eps is larger than Phi-3.5-MoE's 0.01 so sparsemixer's second and later kept experts carry weight."""
    rs = {"long_factor": [1.0, 1.1, 1.4, 2.0, 3.5, 6.0, 10.0, 16.0], "long_mscale": 1.19,
          "original_max_position_embeddings": 12, "rope_type": "longrope",
          "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.3, 1.5, 1.8], "short_mscale": 1.05, "type": "longrope"}
    c = {
        "architectures": ["PhimoeForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "input_jitter_noise": 0.01,
        "intermediate_size": 32,
        "lm_head_bias": True,
        "max_position_embeddings": 48,
        "model_type": "phimoe",
        "num_attention_heads": 2,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 1,
        "num_local_experts": 8,
        "original_max_position_embeddings": 12,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_scaling": rs,
        "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.0,
        "router_jitter_noise": 0.1,
        "sliding_window": 20,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    c.update(over)
    return dict(sorted(c.items()))


def deepseek_v2_config(**over):
    """DeepseekV2Config as save_pretrained writes it, with the keys DeepSeek's own configs add (scoring_func,
    moe_layer_freq): multi-head latent attention without the q low-rank path, v_head_dim unlike qk_nope_head_dim,
    a dense first layer, one shared expert, group-limited greedy routing (4 groups, 2 kept), softmax scores scaled by
    routed_scaling_factor 2.5, YaRN with mscale_all_dim (the softmax scale's factor) unlike mscale."""
    c = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "first_k_dense_replace": 1,
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "kv_lora_rank": 16,
        "max_position_embeddings": 64,
        "mlp_bias": False,
        "model_type": "deepseek_v2",
        "moe_intermediate_size": 16,
        "moe_layer_freq": 1,
        "n_group": 4,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "norm_topk_prob": False,
        "num_attention_heads": 2,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "q_lora_rank": None,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 0.8,
                         "original_max_position_embeddings": 16, "rope_type": "yarn", "type": "yarn"},
        "rope_theta": 10000.0,
        "routed_scaling_factor": 2.5,
        "scoring_func": "softmax",
        "tie_word_embeddings": False,
        "topk_group": 2,
        "topk_method": "group_limited_greedy",
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "v_head_dim": 12,
        "vocab_size": VOCAB,
    }
    c.update(over)
    return dict(sorted(c.items()))


def model_specs():
    """name -> (config, seed, shards, steering specs). Steering: {op: {moe_layer: {expert: coef}}}; the last MoE
    layer is written -1."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    return {
        "qwen3_moe": dict(config=qwen3_moe_config(), seed=None, shards=1),
        "qwen3_moe_bf16": dict(config=qwen3_moe_config(torch_dtype="bfloat16"), seed=None, shards=1,
                               same_weights_as="qwen3_moe"),
        "olmoe": dict(config=olmoe_config(), seed=None, shards=1),
        "mixtral": dict(config=mixtral_config(), seed=None, shards=2),
        "qwen2_moe": dict(config=qwen2_moe_config(), seed=None, shards=1),
        "qwen3_moe_yarn": dict(config=qwen3_moe_config(
            hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_hidden_layers=2,
            mlp_only_layers=[], max_window_layers=2, moe_intermediate_size=16, intermediate_size=32,
            rope_theta=10000.0, max_position_embeddings=256, rope_scaling=yarn), seed=None, shards=1),
        # max_position_embeddings / original (2.5) differs from factor (4): transformers (>= 4.48) uses the ratio;
        # and the correction range not truncated to whole dimensions
        "qwen3_moe_yarn_ratio": dict(config=qwen3_moe_config(
            hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_hidden_layers=2,
            mlp_only_layers=[], max_window_layers=2, moe_intermediate_size=16, intermediate_size=32,
            rope_theta=10000.0, max_position_embeddings=160, rope_scaling=dict(yarn, truncate=False)),
            seed=None, shards=1),
        "mixtral_llama3": dict(config=mixtral_config(
            num_hidden_layers=2, sliding_window=None, rope_theta=10000.0, max_position_embeddings=512,
            intermediate_size=16, rope_scaling=llama3), seed=None, shards=1),
        # MXFP4 experts; f32 dense tensors, then the published form: bf16 and no torch_dtype in config.json
        "gpt_oss": dict(config=gpt_oss_config(torch_dtype="float32"), seed=None, shards=2),
        "gpt_oss_bf16": dict(config=gpt_oss_config(), seed=None, shards=2, same_weights_as="gpt_oss"),
        "phimoe": dict(config=phimoe_config(), seed=None, shards=1),
        "phimoe_bf16": dict(config=phimoe_config(torch_dtype="bfloat16"), seed=None, shards=1,
                            same_weights_as="phimoe"),
        "deepseek_v2": dict(config=deepseek_v2_config(), seed=None, shards=1),
        # DeepSeek-V3's router in a deepseek_v2 config: sigmoid scores, e_score_correction_bias for the choice
        # only, groups scored by their best two, renormalised then scaled; q through the low-rank path; biases
        "deepseek_v2_noaux": dict(config=deepseek_v2_config(
            attention_bias=True, first_k_dense_replace=0, num_hidden_layers=2, q_lora_rank=24, n_shared_experts=2,
            topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, rope_scaling=None),
            seed=None, shards=1, gate_std=0.25),
    }


STEER = {
    "hard": {0: {3: 1.0, 5: -1.0}, -1: {1: 1.0, 6: 1.0}},
    "soft": {0: {2: 1.0, 4: -1.0}, -1: {0: 0.5, 7: 0.5}},
}
STEER_EPS = 0.01
STEER_LAMBDA = {"hard": 0.0, "soft": 1.0}
PROMPT_PARTS = [
    [IM_START],
    ["Bonjour"],
    [IM_START, "user\n\u00c7a va ? \u4f60\u597d", EOS, "\n"],
]
PROMPTS = [encode_text(p) for p in PROMPT_PARTS]
assert [len(p) for p in PROMPTS] == [1, 7, 23], [len(p) for p in PROMPTS]


# ---- weights ---------------------------------------------------------------------------------------------------------

def make_weights(cfg, seed, gate_std=1.0):
    """f32 weights for every tensor of the config, drawn in name order from one seeded generator (MXFP4 blocks and
    scales as uint8). gate_std: the router's (sigmoid scores need logits of a few units, not tens)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(ref_moe.expected_tensors(cfg).items()):
        leaf = name.rsplit(".", 2)[-2]
        if name.endswith("e_score_correction_bias"):
            t = 0.05 * torch.randn(shape, generator=g)
        elif name.endswith("_blocks"):  # every e2m1 code pair
            t = torch.randint(0, 256, shape, generator=g).to(torch.uint8)
        elif name.endswith("_scales"):
            # e8m0 exponents 2^-4 .. 2^-2 for gate_up (gate and up spread past the SwiGLU clamp of 7 now and then),
            # 2^-8 .. 2^-6 for down
            lo = 123 if "gate_up" in name else 119
            t = torch.randint(lo, lo + 3, shape, generator=g).to(torch.uint8)
        elif name.endswith("sinks"):
            t = 1.0 * torch.randn(shape, generator=g)
        elif name.endswith("_bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("router.weight"):
            t = 0.5 * torch.randn(shape, generator=g)  # hidden 64: logits spread as the gates' below
        elif name.endswith(".bias"):  # attention, LM head and (phimoe) LayerNorm biases
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("norm.weight") or leaf.endswith("layernorm") or leaf in ("q_norm", "k_norm", "norm"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif leaf == "embed_tokens":
            t = 0.5 * torch.randn(shape, generator=g)
        elif leaf == "shared_expert_gate":
            t = 0.5 * torch.randn(shape, generator=g)
        elif leaf == "gate":
            t = gate_std * torch.randn(shape, generator=g)  # wide router logits: top-k not decided by rounding
        elif name == "lm_head.weight":
            t = 0.3 * torch.randn(shape, generator=g)
        else:
            t = 0.15 * torch.randn(shape, generator=g)
        out[name] = t.contiguous()
    return out


# ---- goldens ---------------------------------------------------------------------------------------------------------

def steering_for(cfg, op, model_id):
    nl = len(cfg.moe_layers)
    spec = {(l if l >= 0 else nl + l): es for l, es in STEER[op].items()}
    return ref_moe.Steering.from_spec(op, spec, nl, cfg.n_experts, lam=STEER_LAMBDA[op], eps=STEER_EPS,
                                      name=f"golden_{op}", model_id=model_id, layer_index=cfg.moe_layers,
                                      top_k=cfg.top_k)


def margins(model, ids, n_prompt, steer=None):
    """(smallest gap between the k-th and (k+1)-th logit routed on, over tokens and MoE layers; the gaps between
    the two largest final logits at the positions greedy generation chose from) for one forward of prompt +
    generated ids."""
    out = model.forward_full(ids, steer)
    k = model.cfg.top_k
    rm = float("inf")
    for r in out["moe"]:
        # what the choice is made on: the logits, or DeepSeek's masked choice scores and its group scores (in
        # units of 0.009 logits: probabilities and sigmoids are some 100 times narrower)
        sc = 90.0 if "choice" in r else 1.0
        z = torch.sort(r.get("choice", r["routed_on"]).float(), dim=-1, descending=True)[0]
        rm = min(rm, sc * float((z[:, k - 1] - z[:, k]).min()))
        if r.get("groups") is not None:
            tg = model.cfg.topk_group
            gs = torch.sort(r["groups"].float(), dim=-1, descending=True)[0]
            rm = min(rm, sc * float((gs[:, tg - 1] - gs[:, tg]).min()))
    lg = torch.sort(out["logits"][0, n_prompt - 1:-1].float(), dim=-1, descending=True)[0]
    return rm, (lg[:, 0] - lg[:, 1])


def mask_margin(model, ids, steer=None):
    """sparsemixer: the smallest distance of a relative gap (t - z_e) / max(|z_e|, t) from its mask threshold
    2 eps, over tokens, MoE layers, both rounds and the experts still in the round (inf for other routers), so
    that rounding does not decide which experts share a weight."""
    eps = model.cfg.sparsemixer_eps
    if eps is None:
        return float("inf")
    out = model.forward_full(ids, steer)
    best = float("inf")
    for r in out["moe"]:
        z = r["routed_on"].double()
        chosen = torch.zeros_like(z, dtype=torch.bool)
        for rnd in range(model.cfg.top_k):
            t = z.masked_fill(chosen, float("-inf")).max(dim=-1, keepdim=True)[0]
            gap = (t - z) / torch.maximum(z.abs(), t)
            d = (gap - 2 * eps).abs().masked_fill(chosen, float("inf"))
            best = min(best, float(d.min()))
            chosen |= z == t
    return best


def goldens(model, cfg, steers):
    """The golden tensors and the margins report of a model."""
    t = {"moe_layers": torch.tensor(cfg.moe_layers, dtype=torch.int64)}
    rep = {"router_margin": float("inf"), "router_margin_steered": float("inf"), "logit_margin": float("inf")}
    meta = {}

    def run(prompt, steer, sfx):
        gen = model.generate(prompt, N_GEN, steer)
        out = model.forward_full(prompt, steer)
        rm, lm = margins(model, prompt + gen, len(prompt), steer)
        key = "router_margin" if steer is None else "router_margin_steered"
        rep[key] = min(rep[key], rm)
        rep["mask_margin"] = min(rep.get("mask_margin", float("inf")), mask_margin(model, prompt + gen, steer))
        rep["logit_margin"] = min(rep["logit_margin"], float(lm.min()))
        t["generate_margin" + sfx] = lm
        t["logits" + sfx] = out["logits"][0].float()
        rout = torch.stack([r["routed_on"].float() for r in out["moe"]])
        raw = torch.stack([r["router"].float() for r in out["moe"]])
        t["router" + sfx] = rout
        if steer is not None:
            t["router_raw" + sfx] = raw
        t["selected" + sfx] = torch.stack([r["selected"] for r in out["moe"]]).to(torch.int64)
        t["generate" + sfx] = torch.tensor(gen, dtype=torch.int64)

    for i, p in enumerate(PROMPTS):
        t[f"prompt_{i}"] = torch.tensor(p, dtype=torch.int64)
        run(p, None, f"_{i}")
    for op, st in steers.items():
        run(PROMPTS[2], st, f"_steer_{op}_2")
        ex = {str(l): {str(e): float(st.coef[l, e]) for e in np.nonzero(st.coef[l])[0]} for l in st.target_layers}
        meta[f"steer_{op}_2"] = json.dumps({"op": op, "layers": st.target_layers, "experts": ex,
                                            "lambda": st.lam, "eps": st.eps, "eps_mode": st.eps_mode,
                                            "layer_indexing": "0-based MoE layer (see moe_layers)",
                                            "file": f"steer_{op}.json"}, sort_keys=True)
    return t, meta, rep


def build(name, spec, outdir, weights_cache, seed_tries=64):
    cfgd = spec["config"]
    cfg = ref_moe.Config(cfgd)
    if "same_weights_as" in spec:
        seed, w32 = weights_cache[spec["same_weights_as"]]
    else:
        # the first seed whose routing and greedy choices are far from ties (checked in f32 and, for models with a
        # bf16 twin, in bf16 too)
        twins = [n for n, s in model_specs().items() if s.get("same_weights_as") == name]
        best = None
        for seed in range(1000, 1000 + seed_tries):
            w32 = make_weights(cfg, seed, spec.get("gate_std", 1.0))
            score = float("inf")
            variants = [(cfgd, w32)] + [(model_specs()[n]["config"], cast_weights(w32, torch.bfloat16))
                                        for n in twins]
            for cd, w in variants:
                m = _model_from(cd, w)
                bf16 = m.cfg.dtype == torch.bfloat16
                for st in [None] + [steering_for(m.cfg, op, name) for op in STEER]:
                    for p in (PROMPTS if st is None else PROMPTS[2:]):
                        gen = m.generate(p, N_GEN, st)
                        rm, lm = margins(m, p + gen, len(p), st)
                        # (hard steering itself leaves a gap of eps = 0.01 above the original maximum)
                        score = min(score, rm / 0.009, float(lm.min()) / (0.03 if bf16 else 0.005),
                                    mask_margin(m, p + gen, st) / 0.002)
            if best is None or score > best[0]:
                best = (score, seed, w32)
            if score >= 1.0:
                break
        _, seed, w32 = best
    weights_cache[name] = (seed, w32)
    w = cast_weights(w32, cfg.dtype)
    d = os.path.join(outdir, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfgd, f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS, "eos_token_id": EOS, "transformers_version": cfgd["transformers_version"]},
                  f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(), f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(), f, indent=2, ensure_ascii=False)
        f.write("\n")
    if spec["shards"] > 1:
        safetensors_io.save_sharded(w, d, n_shards=spec["shards"])
    else:
        safetensors_io.save_file(w, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    model = ref_moe.MoeModel(d)
    steers = {op: steering_for(model.cfg, op, "") for op in STEER}
    for op, st in steers.items():
        with open(os.path.join(d, f"steer_{op}.json"), "w") as f:
            json.dump(st.to_json(), f, indent=1)
            f.write("\n")
    t, meta, rep = goldens(model, model.cfg, steers)
    meta.update({"format": "pt", "torch_version": torch.__version__, "dtype": cfg.dtype_name,
                 "model_type": cfg.model_type, "weights_seed": str(seed), "n_generate": str(N_GEN),
                 "min_router_margin": f"{rep['router_margin']:.6g}",
                 "min_router_margin_steered": f"{rep['router_margin_steered']:.6g}",
                 "min_greedy_margin": f"{rep['logit_margin']:.6g}",
                 **({"min_sparsemixer_mask_margin": f"{rep['mask_margin']:.6g}"}
                    if cfg.sparsemixer_eps is not None else {}),
                 "arithmetic": "transformers eager; bf16/f16 products and SiLU in f32, rounded once (ref_moe.Ops)",
                 "producer": "tests/models/make_tiny.py (ref_moe.py, eager arithmetic, no KV cache)"})
    safetensors_io.save_file(t, os.path.join(d, "golden.safetensors"), metadata=meta)
    rep.update(seed=seed, params=sum(v.numel() for v in w.values()),
               bytes=sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)))
    return rep


def cast_weights(w, dtype):
    """The floating-point tensors in dtype; the MXFP4 uint8 tensors as they are."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in w.items()}


def _model_from(cfgd, w):
    tmp = tempfile.mkdtemp(prefix="tiny")
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfgd, f)
        return ref_moe.MoeModel(tmp, weights=w)
    finally:
        shutil.rmtree(tmp)


def summary(name, cfgd, rep):
    cfg = ref_moe.Config(cfgd)
    rs = cfgd.get("rope_scaling")
    return (f"{name}: {cfg.model_type} {cfg.dtype_name} layers={cfg.n_layers} hidden={cfg.hidden_size} "
            f"heads={cfg.n_heads} kv={cfg.n_kv_heads} head_dim={cfg.head_dim} experts={cfg.n_experts} "
            f"k={cfg.top_k} moe_layers={cfg.moe_layers} tied={cfg.tie} "
            f"rope={rs['rope_type'] if rs else 'default'} window={cfg.window[0]} params={rep['params']} "
            f"bytes={rep['bytes']} seed={rep['seed']} min_router_margin={rep['router_margin']:.4g} "
            f"(steered {rep['router_margin_steered']:.4g}) min_greedy_margin={rep['logit_margin']:.4g}")


def compare_dirs(a, b):
    """Differences between two built trees (file lists, bytes)."""
    bad = []
    for root, _, files in os.walk(a):
        for fn in files:
            pa = os.path.join(root, fn)
            pb = os.path.join(b, os.path.relpath(pa, a))
            if not os.path.exists(pb):
                bad.append(f"{pb}: missing")
            elif open(pa, "rb").read() != open(pb, "rb").read():
                bad.append(f"{pb}: differs")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "tiny"))
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    specs = model_specs()
    names = a.only or list(specs)
    out = tempfile.mkdtemp(prefix="tinycheck") if a.check else a.out
    os.makedirs(out, exist_ok=True)
    cache = {}
    for n in names:
        src = specs[n].get("same_weights_as")
        if src and src not in cache:
            build(src, specs[src], tempfile.mkdtemp(prefix="tinydep"), cache)
        rep = build(n, specs[n], out, cache)
        print(summary(n, specs[n]["config"], rep), flush=True)
    if a.check:
        bad = []
        for n in names:
            bad += compare_dirs(os.path.join(out, n), os.path.join(a.out, n))
        shutil.rmtree(out)
        print("\n".join(bad) if bad else "check: the committed checkpoints and goldens are reproduced exactly")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
