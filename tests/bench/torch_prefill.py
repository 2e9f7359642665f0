"""torch_prefill.py — the PyTorch peer of the engine benchmark: times prefill (a batch of token sequences through
the whole model) with the reference forward of tests/models/ref_moe.py, eager torch under no_grad, on a random
f32 checkpoint shaped as Qwen3-MoE (default), Phi-3.5-MoE (--arch phimoe) or DeepSeek-V2-Lite (--arch
deepseek_v2) that it creates on first use in the directory given (a git-ignored cache):

    /usr/bin/python3 tests/bench/torch_prefill.py DIR [--arch qwen3_moe|gpt_oss|phimoe|deepseek_v2] [--threads N]
                     [--repeat R] [--batch B] [--tokens T] [--seed S] [--ids FILE] [--head all|last|none]
                     [--dtype f32|bf16]

--arch gpt_oss makes a GPT-OSS-shaped checkpoint instead (MXFP4 experts, the published layout; dense tensors f32,
or bf16 with --dtype bf16 and no torch_dtype in config.json, as published); the reference dequantises the experts
once at load, as transformers does without the triton kernels, and runs only the selected experts.

DIR gets config.json, three safetensors shards + index, tokenizer.json/tokenizer_config.json (byte level, no
merges) and prefill_ids.txt: B lines of T space-separated ids (seeded), the sequences timed, for the C bench
to read (--ids FILE uses/creates another file). --head all computes the logits of every position (the Hugging
Face forward), last only of the last position, none stops after the last MoE layer's router (what a router
capture needs). Prints one line:

    torch_prefill tokens_per_s=... seconds=... threads=N params=... batch=BxT head=... repeat=R (median)
"""
import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(os.path.dirname(HERE), "models")

# Qwen3-MoE shape, scaled down: 12 layers, hidden 768, 16 query / 4 key-value heads of 64, 32 experts, top-4
BENCH_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 256,
    "decoder_sparse_step": 1,
    "eos_token_id": 258,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "max_position_embeddings": 4096,
    "max_window_layers": 12,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 128,
    "norm_topk_prob": True,
    "num_attention_heads": 16,
    "num_experts": 32,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 12,
    "num_key_value_heads": 4,
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
    "vocab_size": 32000,
}
# Phi-3.5-MoE shape, scaled down as above: 16 experts of 256 (top-2: as many active expert parameters per token as
# the Qwen3 shape's 4 of 128), LayerNorm, biases, LongRoPE (256-token prompts stay short of the original 4096)
PHIMOE_CONFIG = {
    "architectures": ["PhimoeForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "bos_token_id": 256,
    "eos_token_id": 258,
    "hidden_act": "silu",
    "hidden_size": 768,
    "initializer_range": 0.02,
    "input_jitter_noise": 0.01,
    "intermediate_size": 256,
    "lm_head_bias": True,
    "max_position_embeddings": 131072,
    "model_type": "phimoe",
    "num_attention_heads": 12,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 12,
    "num_key_value_heads": 4,
    "num_local_experts": 16,
    "original_max_position_embeddings": 4096,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"long_factor": [1.0 + 0.5 * i for i in range(32)], "long_mscale": 1.243163121016122,
                     "original_max_position_embeddings": 4096, "rope_type": "longrope",
                     "short_factor": [1.0 + 0.02 * i for i in range(32)], "short_mscale": 1.243163121016122,
                     "type": "longrope"},
    "rope_theta": 10000.0,
    "router_aux_loss_coef": 0.0,
    "router_jitter_noise": 0.01,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "vocab_size": 32064,
}
# DeepSeek-V2-Lite's shape, scaled down as above: latent attention (kv_lora 256, no q low rank, nope 64 + rope 32,
# v 64), a dense first layer, 32 routed experts of 128 (top-4) and 2 shared, greedy softmax routing, YaRN
DEEPSEEK_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 256,
    "eos_token_id": 258,
    "first_k_dense_replace": 1,
    "head_dim": 32,
    "hidden_act": "silu",
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "kv_lora_rank": 256,
    "max_position_embeddings": 163840,
    "mlp_bias": False,
    "model_type": "deepseek_v2",
    "moe_intermediate_size": 128,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 32,
    "n_shared_experts": 2,
    "norm_topk_prob": False,
    "num_attention_heads": 12,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 12,
    "num_key_value_heads": 12,
    "pretraining_tp": 1,
    "q_lora_rank": None,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 32,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000.0,
    "routed_scaling_factor": 1.0,
    "scoring_func": "softmax",
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "greedy",
    "torch_dtype": "float32",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "v_head_dim": 64,
    "vocab_size": 32000,
}
SHARD_BYTES = 300 << 20

# GPT-OSS shape, scaled down: 8 layers alternating sliding (128) / full attention, hidden 768, 12 query / 4
# key-value heads of 64 with sinks, 32 experts of 512 in MXFP4, top-4, YaRN as published (factor 32, truncate false)
GPTOSS_CONFIG = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 258,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 768,
    "initial_context_length": 4096,
    "intermediate_size": 512,
    "layer_types": ["sliding_attention", "full_attention"] * 4,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 12,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 8,
    "num_key_value_heads": 4,
    "num_local_experts": 32,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                       "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "transformers_version": "4.55.0.dev0",
    "use_cache": True,
    "vocab_size": 8192,
}
CONFIGS = {"qwen3_moe": BENCH_CONFIG, "gpt_oss": GPTOSS_CONFIG, "phimoe": PHIMOE_CONFIG,
           "deepseek_v2": DEEPSEEK_CONFIG}


def make_checkpoint(d, seed, arch="qwen3_moe", dtype="f32"):
    """Random weights (std as a trained model's order of magnitude; router wider so routing is not uniform)."""
    import torch
    import make_tiny
    import ref_moe
    import safetensors_io
    config = dict(CONFIGS[arch])
    if arch == "gpt_oss" and dtype == "f32":
        config["torch_dtype"] = "float32"
    elif arch != "gpt_oss" and dtype == "bf16":
        config["torch_dtype"] = "bfloat16"
    cfg = ref_moe.Config(config)
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape in sorted(ref_moe.expected_tensors(cfg).items()):
        fan_in = shape[-1]
        if name.endswith("_blocks"):
            t = torch.randint(0, 256, shape, generator=g).to(torch.uint8)
        elif name.endswith("_scales"):  # 2^-6 .. 2^-4 times e2m1 codes (rms ~2.9): std ~ 1 / sqrt(fan_in)
            t = torch.randint(121, 124, shape, generator=g).to(torch.uint8)
        elif name.endswith(("_bias", ".bias", "sinks")):
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("router.weight"):
            t = torch.randn(shape, generator=g) * (2.0 / fan_in ** 0.5)
        elif name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith((".mlp.gate.weight", ".block_sparse_moe.gate.weight")):
            t = torch.randn(shape, generator=g) * (2.0 / fan_in ** 0.5)
        elif name == "model.embed_tokens.weight":
            t = torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) * (1.0 / fan_in ** 0.5)
        w[name] = t.to(torch.bfloat16) if dtype == "bf16" and t.is_floating_point() else t
    tmp = d.rstrip("/") + f".partial{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    safetensors_io.save_sharded(w, tmp, max_shard_bytes=SHARD_BYTES)
    for fn, obj in (("tokenizer.json", make_tiny.tokenizer_json()),
                    ("tokenizer_config.json", make_tiny.tokenizer_config()),
                    ("config.json", config)):
        with open(os.path.join(tmp, fn), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
    if os.path.isdir(d):  # an empty or incomplete directory the caller made
        for fn in os.listdir(tmp):
            os.replace(os.path.join(tmp, fn), os.path.join(d, fn))
        os.rmdir(tmp)
    else:
        os.replace(tmp, d)


def main():
    ap = argparse.ArgumentParser(description="time prefill of the PyTorch reference MoE forward")
    ap.add_argument("dir")
    ap.add_argument("--arch", choices=sorted(CONFIGS), default="qwen3_moe", help="shape of a checkpoint made in DIR")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ids", help="ids file (default DIR/prefill_ids.txt); created from --seed if missing")
    ap.add_argument("--head", choices=("all", "last", "none"), default="all")
    ap.add_argument("--dtype", choices=("f32", "bf16"), default="f32", help="of a checkpoint made here")
    ap.add_argument("--make-only", action="store_true", help="make the checkpoint and the ids, time nothing")
    a = ap.parse_args()
    if a.threads < 1 or a.repeat < 1 or a.batch < 1 or a.tokens < 1:
        ap.error("--threads, --repeat, --batch and --tokens must be positive")
    # Debian's torch does its matrix products in OpenBLAS (pthreads), which takes its thread count from the
    # environment at load time, not from torch.set_num_threads
    os.environ["OPENBLAS_NUM_THREADS"] = str(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    # torch's OpenMP workers spin between parallel regions and then starve OpenBLAS's own threads (measured: a
    # 2-thread prefill 15x slower than 1 thread); passive waiting gives the cores back
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, MODELS)
    import torch
    import ref_moe
    torch.set_num_threads(a.threads)

    if not os.path.exists(os.path.join(a.dir, "config.json")):
        t0 = time.time()
        make_checkpoint(a.dir, a.seed, a.arch, a.dtype)
        print(f"torch_prefill: made {a.dir} in {time.time() - t0:.1f} s", file=sys.stderr)
    ids_path = a.ids or os.path.join(a.dir, "prefill_ids.txt")
    if not os.path.exists(ids_path):
        g = torch.Generator().manual_seed(a.seed + 1)
        ids = torch.randint(0, 256, (a.batch, a.tokens), generator=g)
        with open(ids_path + ".tmp", "w") as f:
            for row in ids.tolist():
                f.write(" ".join(map(str, row)) + "\n")
        os.replace(ids_path + ".tmp", ids_path)
    with open(ids_path) as f:
        rows = [[int(x) for x in line.split()] for line in f if line.strip()]
    if len({len(r) for r in rows}) != 1:
        sys.exit(f"torch_prefill: {ids_path}: the sequences differ in length (a batch needs equal lengths)")
    ids = torch.tensor(rows, dtype=torch.int64)
    B, T = ids.shape
    if a.make_only:
        return 0

    model = ref_moe.MoeModel(a.dir)
    params = sum(t.numel() for t in model.w.values())

    def run():
        if a.head == "none":
            return model.forward_full(ids, stop_after_last_moe=True)
        if a.head == "last":
            return model.forward_full(ids, logits_positions=slice(T - 1, T))
        return model.forward_full(ids)

    run()  # warm-up: first-call allocations and thread start-up are not prefill
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    print(f"torch_prefill tokens_per_s={B * T / med:.1f} seconds={med:.4f} threads={a.threads} params={params} "
          f"batch={B}x{T} head={a.head} repeat={a.repeat} torch={torch.__version__} dtype={model.cfg.dtype_name} "
          f"model_type={model.cfg.model_type}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
