"""producer.py — capture the raw router logits of a Hugging Face MoE model during its forward passes and stream
them to `moetrace-capture ingest`, one frame per sequence (traces/INGEST.md).

Forward hooks read the router's own output (or, for routers that return something else, recompute
F.linear(input, weight, bias)), so the trace never depends on what a transformers version returns as
`router_logits`. Logits stay on the model's device until the sequence ends, then go to the CPU once.
"""
from contextlib import contextmanager

from . import frames, registry
from .sinks import ProcessSink


class Capture:
    """Attach to `model`; stream to `sink` (a ProcessSink, FileSink, SocketSink or anything with write/close),
    or start `moetrace-capture ingest --out OUT [*ingest_args]`. Close (or leave the `with` block) to finish
    the stream; close raises IngestError if ingest failed."""

    def __init__(self, model, out=None, sink=None, ingest_args=(), model_id=None, model_type=None, top_k=None,
                 corpus_id=None, capture_settings=None, steering=None):
        import torch
        self.model = model
        self.arch = registry.find_arch(model, model_type)
        self.routers = registry.find_routers(model, self.arch)
        self.desc = registry.describe(model, self.arch, self.routers, model_id=model_id, top_k=top_k)
        self.L, self.E = self.desc["n_layers"], self.desc["n_experts"]
        wdt = self.routers[0][2].weight.dtype
        self.logits_dtype = {torch.bfloat16: "bf16", torch.float16: "f16"}.get(wdt, "f32")
        if sink is None:
            if out is None:
                raise ValueError("give out= (a run directory for a new ingest process) or sink=")
            sink = ProcessSink(out, ingest_args)
        self.sink = sink
        spec = getattr(steering, "steer", steering)
        settings = dict(capture_settings or {})
        settings.setdefault("hooks", self.arch.kind)
        settings.setdefault("router_modules", [n for _, n, _ in self.routers])
        self.sink.write(frames.encode_header(self.desc, logits_dtype=self.logits_dtype, corpus_id=corpus_id,
                                             capture_settings=settings,
                                             steering=getattr(spec, "spec", None)))
        self.n_sent = 0
        self._rows = None
        self._handles = [mod.register_forward_hook(self._hook(pos)) for pos, (_, _, mod) in enumerate(self.routers)]
        self._closed = False

    # ---- hooks ---------------------------------------------------------------------------------------------

    def _hook(self, pos):
        import torch.nn.functional as F

        def hook(mod, inputs, output):
            if self._rows is None:
                return
            if self.arch.kind == "linear":
                stash = getattr(mod, "_moetrace_unsteered", None)
                z = stash[1] if stash is not None and stash[0] is output else output
            else:
                x = inputs[0].reshape(-1, mod.weight.shape[1])
                z = F.linear(x, mod.weight, getattr(mod, "bias", None))
            self._rows[pos].append(z.detach().reshape(-1, self.E))
        return hook

    def _steered(self):
        return any(getattr(m, "_moetrace_steered", False) for _, _, m in self.routers)

    # ---- sequences -----------------------------------------------------------------------------------------

    @contextmanager
    def sequence(self, seq_id, unit_id="", lang="", dataset="", token_ids=None, positions=None, roles=None,
                 flags=0):
        """Every forward call inside the block (a prefill, then any generation steps) adds tokens to one
        sequence, sent when the block ends. token_ids / positions / roles cover all its tokens (or None)."""
        import torch
        self._rows = [[] for _ in range(self.L)]
        try:
            yield self
            rows = self._rows
        finally:
            self._rows = None
        per_layer = [torch.cat(r, 0) if r else None for r in rows]
        if any(r is None for r in per_layer):
            raise RuntimeError("a router did not run inside the sequence block")
        T = per_layer[0].shape[0]
        if any(r.shape[0] != T for r in per_layer):
            raise RuntimeError("routers saw different numbers of tokens")
        self._send(seq_id, torch.stack(per_layer, 1), unit_id, lang, dataset, token_ids, positions, roles, flags)

    @contextmanager
    def batch(self, metas, attention_mask):
        """A padded batch of B sequences in one forward call (prefill): metas is a list of B dicts (seq_id,
        unit_id, lang, dataset, roles, flags); attention_mask (B, T) marks real tokens; token_ids and positions
        may be (B, T) tensors in the dicts' place as keys "input_ids" / "position_ids" of the first meta."""
        import torch
        self._rows = [[] for _ in range(self.L)]
        try:
            yield self
            rows = self._rows
        finally:
            self._rows = None
        mask = torch.as_tensor(attention_mask).bool()
        B, T = mask.shape
        per_layer = torch.stack([torch.cat(r, 0) for r in rows], 1)  # (B*T, L, E)
        if per_layer.shape[0] != B * T:
            raise RuntimeError(f"routers saw {per_layer.shape[0]} tokens, the mask covers {B} x {T}")
        per_layer = per_layer.reshape(B, T, self.L, self.E)
        for b, meta in enumerate(metas):
            m = mask[b].to(per_layer.device)
            meta = dict(meta)
            for key in ("token_ids", "positions", "roles"):
                v = meta.get(key)
                if v is not None and hasattr(v, "shape") and len(v) == T:
                    meta[key] = torch.as_tensor(v)[mask[b]]
            self._send(meta.pop("seq_id"), per_layer[b][m], meta.pop("unit_id", ""), meta.pop("lang", ""),
                       meta.pop("dataset", ""), meta.pop("token_ids", None), meta.pop("positions", None),
                       meta.pop("roles", None), meta.pop("flags", 0))

    def run(self, input_ids, seq_id, unit_id="", lang="", dataset="", roles=None, flags=0, **forward_kwargs):
        """Teacher-forced capture of one sequence: model(input_ids) under torch.no_grad(), token ids recorded.
        input_ids: (T,) or (1, T). Returns the model's output."""
        import torch
        ids = torch.as_tensor(input_ids).reshape(1, -1)
        with torch.no_grad(), self.sequence(seq_id, unit_id, lang, dataset, token_ids=ids[0], roles=roles,
                                            flags=flags):
            return self.model(input_ids=ids.to(self._device()), **forward_kwargs)

    def _device(self):
        return self.routers[0][2].weight.device

    def _send(self, seq_id, logits, unit_id, lang, dataset, token_ids, positions, roles, flags):
        if self._steered():
            flags |= frames.SEQ_STEERED
        self.sink.write(frames.encode_seq(self.L, self.E, int(seq_id), logits, unit_id, lang, dataset,
                                          token_ids, positions, roles, flags))
        self.n_sent += 1

    # ---- end -----------------------------------------------------------------------------------------------

    def close(self):
        """Remove the hooks, send the end frame and wait for ingest (raises IngestError if it failed)."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            h.remove()
        self.sink.write(frames.encode_end(self.n_sent))
        self.sink.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            for h in self._handles:
                h.remove()
            try:
                self.sink.close()  # no end frame: ingest keeps the sequences sent and reports the early end
            except Exception:
                pass
