"""tiny_moe.py — small PyTorch MoE models with the module names and router shapes of the Hugging Face classes
(Qwen2-MoE, Qwen3-MoE, OLMoE, Mixtral, PhiMoE, GPT-OSS), for the producer and steering tests. Every MoE block
keeps the router logits it computed in `last_logits` (a list, one entry per forward call): the reference the
trace is compared with."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, model_type, **kw):
        self.model_type = model_type
        self._name_or_path = f"tiny/{model_type}"
        self.__dict__.update(kw)


class Expert(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.up = nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.up(x)))


class SoftmaxMoE(nn.Module):
    """Qwen/OLMoE/Mixtral shape: a gate Linear (router_name) over flattened tokens, softmax, top-k."""

    def __init__(self, d, E, k, renorm, shared=False):
        super().__init__()
        self.gate = nn.Linear(d, E, bias=False)
        self.experts = nn.ModuleList(Expert(d, 16) for _ in range(E))
        self.k, self.renorm = k, renorm
        if shared:
            self.shared_expert = Expert(d, 16)
            self.shared_expert_gate = nn.Linear(d, 1, bias=False)
        self.last_logits = []

    def forward(self, x):
        B, T, d = x.shape
        h = x.reshape(-1, d)
        logits = self.gate(h)
        self.last_logits.append(logits.detach().clone())
        w = F.softmax(logits, dim=-1, dtype=torch.float32)
        w, idx = torch.topk(w, self.k, dim=-1)
        if self.renorm:
            w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(h)
        for e, ex in enumerate(self.experts):
            rows, slot = torch.nonzero(idx == e, as_tuple=True)
            if len(rows):
                out[rows] += (w[rows, slot, None] * ex(h[rows])).to(h.dtype)
        if hasattr(self, "shared_expert"):
            out = out + torch.sigmoid(self.shared_expert_gate(h)) * self.shared_expert(h)
        return out.reshape(B, T, d)


class GptOssRouter(nn.Module):
    """GPT-OSS shape: weight (E, d) and bias (E), returns (scores scattered into zeros, indices), not logits."""

    def __init__(self, d, E, k):
        super().__init__()
        self.top_k, self.num_experts = k, E
        self.weight = nn.Parameter(torch.randn(E, d) * 0.2)
        self.bias = nn.Parameter(torch.randn(E) * 0.1)
        self.last_logits = []

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.weight.shape[1])
        logits = F.linear(hidden_states, self.weight, self.bias)
        self.last_logits.append(logits.detach().clone())
        v, i = torch.topk(logits, self.top_k, dim=-1)
        v = F.softmax(v, dim=1, dtype=v.dtype)
        return torch.zeros_like(logits).scatter_(1, i, v), i


class GptOssMLP(nn.Module):
    def __init__(self, d, E, k):
        super().__init__()
        self.router = GptOssRouter(d, E, k)
        self.experts = nn.ModuleList(Expert(d, 16) for _ in range(E))

    def forward(self, x):
        B, T, d = x.shape
        h = x.reshape(-1, d)
        scores, idx = self.router(h)
        out = torch.zeros_like(h)
        for e, ex in enumerate(self.experts):
            rows = torch.nonzero((idx == e).any(-1), as_tuple=True)[0]
            if len(rows):
                out[rows] += scores[rows, e, None] * ex(h[rows])
        return out.reshape(B, T, d)


class DenseMLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up = nn.Linear(d, 32)
        self.down = nn.Linear(32, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Layer(nn.Module):
    def __init__(self, d, mlp, slot):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        setattr(self, slot, mlp)
        self.slot = slot

    def forward(self, x):
        x = x + torch.tanh(self.mix(self.norm(x)))
        return x + getattr(self, self.slot)(self.norm(x))


class Inner(nn.Module):
    def __init__(self, vocab, d, layers):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(layers)

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


class TinyForCausalLM(nn.Module):
    def __init__(self, config, layers, vocab, d):
        super().__init__()
        self.config = config
        self.model = Inner(vocab, d, layers)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, **kw):
        return self.lm_head(self.model(input_ids))

    def moe_blocks(self):
        """[(decoder layer, block holding last_logits)] of the MoE layers."""
        out = []
        for i, layer in enumerate(self.model.layers):
            m = getattr(layer, layer.slot)
            if isinstance(m, GptOssMLP):
                out.append((i, m.router))
            elif isinstance(m, SoftmaxMoE):
                out.append((i, m))
        return out


def build(model_type, n_layers=4, E=8, k=2, d=32, vocab=97, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layers, cfg = [], None
    if model_type in ("qwen2_moe", "qwen3_moe", "olmoe"):
        dense = {1} if model_type == "qwen2_moe" else set()
        renorm = model_type != "olmoe"
        cfg = Config(model_type, num_experts=E, num_experts_per_tok=k, norm_topk_prob=renorm,
                     num_hidden_layers=n_layers, mlp_only_layers=sorted(dense))
        for i in range(n_layers):
            mlp = DenseMLP(d) if i in dense else SoftmaxMoE(d, E, k, renorm, shared=model_type == "qwen2_moe")
            layers.append(Layer(d, mlp, "mlp"))
    elif model_type in ("mixtral", "phimoe"):
        cfg = Config(model_type, num_local_experts=E, num_experts_per_tok=k, num_hidden_layers=n_layers)
        layers = [Layer(d, SoftmaxMoE(d, E, k, True), "block_sparse_moe") for _ in range(n_layers)]
    elif model_type == "gpt_oss":
        cfg = Config(model_type, num_local_experts=E, num_experts_per_tok=k, experts_per_token=k,
                     num_hidden_layers=n_layers)
        layers = [Layer(d, GptOssMLP(d, E, k), "mlp") for _ in range(n_layers)]
    else:
        raise ValueError(model_type)
    m = TinyForCausalLM(cfg, layers, vocab, d).to(dtype)
    m.eval()
    return m


def clear(model):
    for _, b in model.moe_blocks():
        b.last_logits.clear()


def reference_logits(model):
    """(T, L, E) logits the model computed since the last clear(), all forward calls concatenated."""
    return torch.stack([torch.cat(b.last_logits, 0) for _, b in model.moe_blocks()], 1)
