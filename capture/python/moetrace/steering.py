"""steering.py — apply a moetrace steering file (docs/ARCHITECTURE.md §4, traces/mtr_steer.h) to the router logits of a
PyTorch model, with the same arithmetic as the native engine's mtr_steer_apply:

  soft  z_e += coef_e * std(z)      (population std over the experts, in float64, rounded to the logits' dtype)
  hard  z_e  = max(z) + |eps|       (coef > 0; coef < 0: min(z) - |eps|), at least one float32 step beyond,
                                    and for bf16/f16 logits at least one step of that dtype, so rounding the
                                    result back cannot tie it with the extreme
  off   z_e  = min(z) - |eps|       (coef < 0; coef > 0: max(z) + |eps|)
  bias  z_e += coef_e               (in float32)

max, min and std are of the unmodified logits (NaN ignored by max/min). Gaussian eps ~ N(0, eps^2) comes from a
splitmix64 + Box-Muller generator: one draw per token and non-zero coefficient, experts in ascending order,
tokens in the order of the gate's rows. MoE layer l's generator starts at seed XOR ((l + 1) * 0x9E3779B97F4A7C15)
and continues over every forward call until `reseed()`.
"""
import json

import numpy as np

OPS = ("soft", "hard", "off", "bias")
_M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def layer_seed(seed, layer):
    """Start state of MoE layer `layer`'s eps generator."""
    return (seed ^ ((layer + 1) * GOLDEN)) & _M64


class SteeringFile:
    """A loaded steering file: op, lam, eps_mode, eps, seed, n_layers, n_experts, top_k, layer_index,
    target_layers, coef ((n_layers, n_experts) float32), model_id, name, spec (the JSON-able description)."""

    def __init__(self, d):
        if d.get("format") != "moetrace-steering":
            raise ValueError("not a moetrace steering file")
        if int(d.get("format_version", 0)) != 1:
            raise ValueError(f"steering format version {d.get('format_version')} (this module reads 1)")
        self.name = d.get("name", "")
        self.model_id = d.get("model_id", "")
        self.n_layers, self.n_experts, self.top_k = int(d["n_layers"]), int(d["n_experts"]), int(d["top_k"])
        self.layer_index = [int(x) for x in d.get("layer_index", range(self.n_layers))]
        self.op = d["op"]
        if self.op not in OPS:
            raise ValueError(f"unknown steering operation {self.op!r}")
        self.lam = float(d["lambda"])
        self.eps_mode = d["eps_mode"]
        self.eps = float(d["eps"])
        self.seed = int(d.get("seed", 0)) & _M64
        self.target_layers = sorted(int(x) for x in d["target_layers"])
        self.coef = np.asarray(d["coef"], dtype=np.float32).reshape(self.n_layers, self.n_experts)
        if not np.all(np.isfinite(self.coef)):
            raise ValueError("a coefficient is not finite")
        self.spec = {k: d[k] for k in ("name", "model_id", "op", "lambda", "eps_mode", "eps", "seed", "target_layers")
                     if k in d}
        self.spec["format"] = "moetrace-steering"
        self.spec["n_selected"] = int(np.count_nonzero(self.coef))

    @classmethod
    def load(cls, path):
        """Load steer.h5 (with h5py) or its JSON twin (standard library only), told apart by content."""
        with open(path, "rb") as f:
            sig = f.read(8)
        if sig == b"\x89HDF\r\n\x1a\n":
            import h5py
            with h5py.File(path, "r") as f:
                a = f.attrs

                def s(x):
                    return x.decode() if isinstance(x, bytes) else str(x)
                d = {"format": s(a["format"]), "format_version": int(a["format_version"]), "name": s(a["name"]),
                     "model_id": s(a["model_id"]), "n_layers": int(a["n_layers"]), "n_experts": int(a["n_experts"]),
                     "top_k": int(a["top_k"]), "layer_index": [int(x) for x in a["layer_index"]], "op": s(a["op"]),
                     "lambda": float(a["lambda"]), "eps_mode": s(a["eps_mode"]), "eps": float(a["eps"]),
                     "seed": int(a["seed"]), "target_layers": [int(x) for x in f["target_layers"][()]],
                     "coef": f["coef"][()]}
            return cls(d)
        with open(path, "rb") as f:
            return cls(json.loads(f.read()))

    def check_model(self, model_desc):
        """Raise ValueError if the file is for another model shape (moetrace model description dict)."""
        md = model_desc
        if self.model_id and md.get("model_id") and self.model_id != md["model_id"]:
            raise ValueError(f"steering file is for model {self.model_id!r}, not {md['model_id']!r}")
        if (self.n_layers, self.n_experts, self.top_k) != (md["n_layers"], md["n_experts"], md["top_k"]):
            raise ValueError(f"steering file has {self.n_layers} layers x {self.n_experts} experts, top-{self.top_k};"
                             f" the model {md['n_layers']} x {md['n_experts']}, top-{md['top_k']}")
        if list(self.layer_index) != list(md["layer_index"]):
            raise ValueError("steering file maps MoE layers to other decoder layers than the model")

    # ---- arithmetic ----------------------------------------------------------------------------------------

    def gaussian_eps(self, state, n_rows, n_sel):
        """(n_rows, n_sel) N(0, eps^2) draws and the new state; two splitmix64 outputs per draw."""
        n = n_rows * n_sel
        if n == 0:
            return np.zeros((n_rows, n_sel)), state
        k = np.arange(1, 2 * n + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z = np.uint64(state) + k * np.uint64(GOLDEN)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        u = (z >> np.uint64(11)).astype(np.float64)
        u1 = (u[0::2] + 1.0) / 9007199254740992.0
        u2 = u[1::2] / 9007199254740992.0
        g = np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u2)
        return (self.eps * g).reshape(n_rows, n_sel), (state + 2 * n * GOLDEN) & _M64

    def apply(self, z, layer, state=None):
        """Steered copy of z (torch tensor (..., n_experts), any float dtype) at MoE layer `layer`, and the new
        generator state (None: eps = 0 for gaussian eps, as mtr_steer_apply with rng NULL)."""
        import torch
        if layer not in self.target_layers:
            return z, state
        c = self.coef[layer]
        sel = np.nonzero(c)[0]
        if len(sel) == 0:
            return z, state
        shape, dt = z.shape, z.dtype
        zf = z.reshape(-1, shape[-1]).to(torch.float32)
        zd = zf.to(torch.float64)
        idx = torch.as_tensor(sel, device=z.device)
        cs = torch.as_tensor(c[sel], device=z.device)
        E = shape[-1]
        if self.eps_mode == "fixed":
            eps = torch.full((zf.shape[0], len(sel)), self.eps, dtype=torch.float64, device=z.device)
        elif state is not None:
            g, state = self.gaussian_eps(state, zf.shape[0], len(sel))
            eps = torch.as_tensor(g, device=z.device)
        else:
            eps = torch.zeros((zf.shape[0], len(sel)), dtype=torch.float64, device=z.device)
        out = zf.clone()
        if self.op == "bias":
            out[:, idx] = zf[:, idx] + cs.to(torch.float32)
        elif self.op == "soft":
            # sequential sums (cumsum) so the float64 std is bit-identical to the C loop
            mean = zd.cumsum(-1)[:, -1] / E
            d = zd - mean[:, None]
            sd = torch.sqrt((d * d).cumsum(-1)[:, -1] / E)
            out[:, idx] = (zd[:, idx] + cs.to(torch.float64)[None, :] * sd[:, None]).to(torch.float32)
        else:
            nan = torch.isnan(zd)
            mx = torch.where(nan, torch.full_like(zd, -np.inf), zd).amax(-1)
            mn = torch.where(nan, torch.full_like(zd, np.inf), zd).amin(-1)
            # |eps| and at least one float32 step beyond the extreme, as mtr_steer_apply does
            eps = eps.abs()
            mx32, mn32 = mx.to(torch.float32)[:, None], mn.to(torch.float32)[:, None]
            up = (mx[:, None] + eps).to(torch.float32)
            down = (mn[:, None] - eps).to(torch.float32)
            up = torch.where(up > mx32, up, torch.nextafter(mx32, torch.full_like(mx32, np.inf)))
            down = torch.where(down < mn32, down, torch.nextafter(mn32, torch.full_like(mn32, -np.inf)))
            if dt in (torch.bfloat16, torch.float16):
                # the result goes back to the model's dtype: keep the forced value at least one step of that
                # dtype beyond the extreme, or rounding could tie it with the original maximum (or minimum)
                up = torch.maximum(up, mx32 + _dtype_step(mx32, dt))
                down = torch.minimum(down, mn32 - _dtype_step(mn32, dt))
            out[:, idx] = torch.where((cs > 0)[None, :], up, down)
        return out.to(dt).reshape(shape), state


def _dtype_step(x, dt):
    """The spacing of dtype dt (bfloat16: 8 significant bits, float16: 11) at the float32 values x (their
    magnitude's binade; the smallest normal spacing at 0), as float32."""
    import torch
    bits = 8 if dt == torch.bfloat16 else 11
    tiny = torch.finfo(dt).tiny
    _, e = torch.frexp(x.abs())
    step = torch.ldexp(torch.ones_like(x), (e - bits).to(torch.int32))
    return torch.clamp(step, min=tiny * 2.0 ** (1 - bits))


class SteeringHook:
    """Steer the routers of a Hugging Face MoE model with a steering file. Use as a context manager or call
    remove(). Works beside moetrace.Capture in either order: the trace keeps the unsteered logits and flags the
    sequences as steered."""

    def __init__(self, model, steering, model_type=None, check=True):
        from . import registry
        self.steer = steering if isinstance(steering, SteeringFile) else SteeringFile.load(steering)
        self.arch = registry.find_arch(model, model_type)
        routers = registry.find_routers(model, self.arch)
        if check:
            self.steer.check_model(registry.describe(model, self.arch, routers, model_id=self.steer.model_id or None,
                                                     top_k=self.steer.top_k))
        self.handles, self.patched = [], []
        self.states = {}
        for pos, (_, _, mod) in enumerate(routers):
            if pos not in self.steer.target_layers:
                continue
            self.states[pos] = layer_seed(self.steer.seed, pos)
            if self.arch.kind == "linear":
                self.handles.append(mod.register_forward_hook(self._linear_hook(pos)))
            else:
                self._patch_router(pos, mod)
            mod._moetrace_steered = True

    def reseed(self):
        """Restart every layer's eps generator (e.g. per sequence, for reproducible gaussian eps)."""
        for pos in self.states:
            self.states[pos] = layer_seed(self.steer.seed, pos)

    def _linear_hook(self, pos):
        def hook(mod, inputs, output):
            steered, self.states[pos] = self.steer.apply(output, pos, self.states[pos])
            mod._moetrace_unsteered = (steered, output)
            return steered
        return hook

    def _patch_router(self, pos, mod):
        import torch.nn.functional as F
        orig = mod.forward
        route = self.arch.route

        def forward(hidden_states, *args, **kwargs):
            x = hidden_states.reshape(-1, mod.weight.shape[1])
            z = F.linear(x, mod.weight, getattr(mod, "bias", None))
            steered, self.states[pos] = self.steer.apply(z, pos, self.states[pos])
            return route(mod, steered)
        mod.forward = forward
        self.patched.append((mod, orig))

    def remove(self):
        for h in self.handles:
            h.remove()
        for mod, orig in self.patched:
            mod.forward = orig
        self.handles, self.patched = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
