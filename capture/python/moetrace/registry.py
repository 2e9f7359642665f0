"""registry.py — where the router of each Hugging Face MoE architecture lives and what its logits mean.

Each entry names the router module of one decoder layer by a regular expression over module names (the layer
number is the first group), how to get the raw logits from it, and the routing semantics recorded in the trace
(traces/FORMAT.md §2.2). Add an architecture with `register(...)`.

kind "linear": the module is the gate Linear; its output is the logits (a forward hook reads, and the steering
hook replaces, that output). kind "router": the module computes the logits internally and returns something
else (GPT-OSS's router returns scores and indices, and what it returns changed between transformers versions);
the logits are recomputed from its input as F.linear(x, weight, bias), and steering replaces its forward.
"""
import re
from dataclasses import dataclass, field


@dataclass
class Arch:
    model_type: str
    pattern: str                  # regex over module names; group 1 = decoder layer index
    kind: str = "linear"          # "linear" | "router"
    score_fn: str = "softmax"     # softmax | sigmoid | topk_softmax | sparsemixer
    jitter_attr: str = "router_jitter_noise"  # sparsemixer: the config attribute holding its eps (default 0.01)
    renormalize: object = False   # bool, or the config attribute that says it
    router_bias: bool = False
    top_k_attrs: tuple = ("num_experts_per_tok", "experts_per_token", "moe_topk")
    route: object = None          # for kind "router": fn(module, steered_logits) -> what the module returns
    notes: str = ""
    regex: object = field(init=False, repr=False)

    def __post_init__(self):
        self.regex = re.compile(self.pattern)


REGISTRY = {}


def register(arch):
    """Add or replace an architecture (keyed by its model_type)."""
    REGISTRY[arch.model_type] = arch
    return arch


def _gpt_oss_route(module, logits):
    """GPT-OSS routing on (steered) logits: top-k on the logits, softmax over the k, scattered into zeros — what
    transformers' GptOssTopKRouter returns (router_scores, router_indices)."""
    import torch
    k = module.top_k
    top_v, top_i = torch.topk(logits, k, dim=-1)
    top_v = torch.nn.functional.softmax(top_v, dim=1, dtype=top_v.dtype)
    scores = torch.zeros_like(logits).scatter_(1, top_i, top_v)
    return scores, top_i


_MLP_GATE = r"(?:^|\.)layers\.(\d+)\.mlp\.gate$"
_SPARSE_GATE = r"(?:^|\.)layers\.(\d+)\.block_sparse_moe\.gate$"
register(Arch("qwen2_moe", _MLP_GATE, renormalize="norm_topk_prob"))
register(Arch("qwen3_moe", _MLP_GATE, renormalize="norm_topk_prob"))
register(Arch("olmoe", _MLP_GATE, renormalize="norm_topk_prob"))
register(Arch("mixtral", _SPARSE_GATE, renormalize=True))
register(Arch("phimoe", _SPARSE_GATE, score_fn="sparsemixer", renormalize=False,
              notes="PhiMoE's sparsemixer top-2 (FORMAT.md 2.2); its eps is config.router_jitter_noise; the gate "
                    "Linear's output is the logits, so steering acts before sparsemixer"))
register(Arch("gpt_oss", r"(?:^|\.)layers\.(\d+)\.mlp\.router$", kind="router", score_fn="topk_softmax",
              renormalize=False, router_bias=True, route=_gpt_oss_route))


def find_arch(model, model_type=None):
    """The registry entry for a model (by config.model_type, or the given name)."""
    mt = model_type or getattr(getattr(model, "config", None), "model_type", None)
    if mt not in REGISTRY:
        raise KeyError(f"no router registered for model_type {mt!r} (known: {', '.join(sorted(REGISTRY))}); "
                       "add one with moetrace.registry.register(Arch(...))")
    return REGISTRY[mt]


def find_routers(model, arch):
    """[(decoder layer, module name, module)] of every router, by decoder layer."""
    found = []
    for name, mod in model.named_modules():
        m = arch.regex.search(name)
        if m:
            found.append((int(m.group(1)), name, mod))
    found.sort(key=lambda x: x[0])
    if not found:
        raise ValueError(f"no module of this {arch.model_type} model matches {arch.pattern!r}")
    return found


def describe(model, arch, routers, model_id=None, top_k=None):
    """The model description of the ingest header (dict), from the config and the router modules."""
    cfg = getattr(model, "config", None)
    w = routers[0][2].weight
    n_experts = int(w.shape[0])
    if top_k is None:
        for a in arch.top_k_attrs:
            if cfg is not None and getattr(cfg, a, None):
                top_k = int(getattr(cfg, a))
                break
    if top_k is None:
        raise ValueError("top_k is not in the config; pass top_k=")
    ren = arch.renormalize
    if isinstance(ren, str):
        ren = bool(getattr(cfg, ren, False)) if cfg is not None else False
    n_dec = getattr(cfg, "num_hidden_layers", None) if cfg is not None else None
    layers = [l for l, _, _ in routers]
    has_bias = arch.router_bias or getattr(routers[0][2], "bias", None) is not None
    d = {
        "model_id": model_id or getattr(cfg, "_name_or_path", "") or arch.model_type,
        "model_type": arch.model_type,
        "n_layers": len(routers),
        "n_decoder_layers": int(n_dec or layers[-1] + 1),
        "layer_index": layers,
        "n_experts": n_experts,
        "top_k": int(top_k),
        "score_fn": arch.score_fn,
        "renormalize": bool(ren),
        "router_bias": bool(has_bias),
        "selection_bias": None,
    }
    if arch.score_fn == "sparsemixer":
        eps = getattr(cfg, arch.jitter_attr, None) if cfg is not None else None
        d["sparsemixer_eps"] = float(0.01 if eps is None else eps)  # PhimoeConfig's default
    return d
