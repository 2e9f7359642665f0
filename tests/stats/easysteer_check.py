#!/usr/bin/python3
"""easysteer_check.py — the EasySteer exports of moetrace steering files against EasySteer's documented schema
and rule (run with /usr/bin/python3).

  easysteer_check.py STEER_DIR NAME...   check STEER_DIR/NAME.easysteer.json for each NAME
  easysteer_check.py --self-test         the validator refuses configs that break the schema

Where EasySteer documents the `moe_router` layer config (cited in traces/STEERING.md "Exports"):
  [R] ZJU-REAL/EasySteer, replications/steermoe/README.md: "A steering config is a JSON file mapping layers to
      expert lists": {"layer_configs": {"7": {"mode": "deactivate", "expert_ids": [30, 25]}, "9": {"mode":
      "activate", "activate_ids": [12], "deactivate_ids": [35]}}}.
  [A] ZJU-REAL/EasySteer-vllm-v1, vllm/steer_vectors/algorithms/moe_router.py (commit 431de6bf),
      MoERouterAlgorithm: the load_from_path docstring ("File format"), its checks (integer layer ids; mode one of
      activate, deactivate, soft, soft_topk, soft_random or an alias boost, suppress, soft_hard, steermoe;
      activate/deactivate need expert_ids, activate_ids or deactivate_ids; the soft modes need expert_ids;
      optional epsilon, lambda, topk) and _transform: soft z' = z + lambda * z.std(dim=-1) (torch's default std,
      divisor n-1); activate/deactivate: s = log_softmax(z), s[ids] = max(s) + epsilon / min(s) - epsilon,
      epsilon default 0.01.

SCHEMA below writes [R] + [A] down in JSON-Schema terms; `validate` implements the keywords it uses. Each file is
also checked against its JSON twin (NAME.json, traces/STEERING.md): the same experts under the decoder-layer keys,
and EasySteer's rule applied with torch to random router logits gives the routing moetrace's rule gives (soft:
the same z'; hard/off: the same top-k set and routing weights). Prints "ok" or one line per problem and exits 1.
"""
import json
import math
import re
import sys

import numpy as np

IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "uniqueItems": True}
TOGGLE_MODES = ["activate", "deactivate", "boost", "suppress", "soft_hard", "steermoe"]
SOFT_MODES = ["soft", "soft_topk", "soft_random"]
LAYER = {
    "type": "object",
    "required": ["mode"],
    "properties": {
        "mode": {"enum": TOGGLE_MODES + SOFT_MODES},
        "expert_ids": IDS,
        "activate_ids": IDS,
        "deactivate_ids": IDS,
        "epsilon": {"type": "number", "minimum": 0},
        "lambda": {"type": "number"},
        "topk": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
    # [A]: a toggle layer needs some ids; a soft layer needs expert_ids
    "if_mode": {
        "toggle": {"anyNonEmpty": ["expert_ids", "activate_ids", "deactivate_ids"]},
        "soft": {"required": ["expert_ids"], "anyNonEmpty": ["expert_ids"]},
    },
}
SCHEMA = {
    "type": "object",
    "required": ["layer_configs"],
    "properties": {
        "layer_configs": {
            "type": "object",
            "minProperties": 1,  # [A]: "No layer configurations found" otherwise
            "propertyNames": {"pattern": r"^(0|[1-9][0-9]*)$"},  # [A]: int(layer_str)
            "additionalProperties": LAYER,
        },
        # not read by EasySteer (it takes layer_configs only); moetrace's provenance
        "moetrace": {"type": "object"},
    },
    "additionalProperties": False,
}

TYPES = {"object": dict, "array": list, "string": str}


def validate(v, schema, path="$"):
    """Problems of value v under schema (the JSON-Schema keywords used above, plus if_mode / anyNonEmpty)."""
    bad = []
    t = schema.get("type")
    if t == "integer":
        if not (isinstance(v, int) and not isinstance(v, bool)):
            return [f"{path}: {v!r} is not an integer"]
    elif t == "number":
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            return [f"{path}: {v!r} is not a finite number"]
    elif t and not isinstance(v, TYPES[t]):
        return [f"{path}: {type(v).__name__} where {t} is wanted"]
    if "enum" in schema and v not in schema["enum"]:
        bad.append(f"{path}: {v!r} is not one of {schema['enum']}")
    if "minimum" in schema and v < schema["minimum"]:
        bad.append(f"{path}: {v} < {schema['minimum']}")
    if isinstance(v, list):
        for i, x in enumerate(v):
            bad += validate(x, schema.get("items", {}), f"{path}[{i}]")
        if schema.get("uniqueItems") and len(set(map(json.dumps, v))) != len(v):
            bad.append(f"{path}: repeated items")
    if isinstance(v, dict):
        for k in schema.get("required", []):
            if k not in v:
                bad.append(f"{path}: no '{k}'")
        if len(v) < schema.get("minProperties", 0):
            bad.append(f"{path}: fewer than {schema['minProperties']} entries")
        pat = schema.get("propertyNames", {}).get("pattern")
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for k, x in v.items():
            if pat and not re.match(pat, k):
                bad.append(f"{path}: key {k!r} does not match {pat}")
            if k in props:
                bad += validate(x, props[k], f"{path}.{k}")
            elif extra is False:
                bad.append(f"{path}: unknown key '{k}'")
            elif isinstance(extra, dict):
                bad += validate(x, extra, f"{path}.{k}")
        rule = schema.get("if_mode", {}).get("toggle" if v.get("mode") in TOGGLE_MODES else "soft")
        if rule and v.get("mode") in TOGGLE_MODES + SOFT_MODES:
            for k in rule.get("required", []):
                if k not in v:
                    bad.append(f"{path}: mode {v['mode']} needs '{k}'")
            if not any(isinstance(v.get(k), list) and v.get(k) for k in rule["anyNonEmpty"]):
                bad.append(f"{path}: mode {v['mode']} lists no experts ({', '.join(rule['anyNonEmpty'])})")
    return bad


def moetrace_apply(z, coef, op, eps):
    """traces/STEERING.md: soft z + coef * population std(z); hard/off max(z) + |eps| / min(z) - |eps| (eps fixed,
    or its standard deviation when gaussian: the smallest-step reading is enough to compare routings)."""
    z = z.astype(np.float64)
    out = z.copy()
    sd = z.std(axis=-1, keepdims=True)
    mx, mn = z.max(axis=-1, keepdims=True), z.min(axis=-1, keepdims=True)
    for e in np.nonzero(coef)[0]:
        if op == "soft":
            out[:, e] = z[:, e] + coef[e] * sd[:, 0]
        elif op == "hard" and coef[e] > 0:
            out[:, e] = mx[:, 0] + abs(eps)
        else:
            out[:, e] = mn[:, 0] - abs(eps)
    return out


def easysteer_apply(torch, z, cfg):
    """EasySteer's _transform [A] for one layer's config, with torch as EasySteer runs it."""
    t = torch.tensor(z, dtype=torch.float64)
    mode = cfg["mode"]
    if mode == "soft":
        t = t.clone()
        t[:, cfg["expert_ids"]] += cfg.get("lambda", 0.5) * t.std(dim=-1, keepdim=True)
        return t.numpy()
    act = list(cfg.get("activate_ids") or []) + (cfg.get("expert_ids") or [] if mode == "activate" else [])
    de = list(cfg.get("deactivate_ids") or []) + (cfg.get("expert_ids") or [] if mode == "deactivate" else [])
    eps = cfg.get("epsilon", 0.01)
    s = torch.nn.functional.log_softmax(t, dim=-1)
    mx, mn = s.max(dim=-1, keepdim=True)[0], s.min(dim=-1, keepdim=True)[0]
    if act:
        s[:, act] = mx + eps
    if de:
        s[:, de] = mn - eps
    return s.numpy()


def routing(z, k):
    """softmax over the experts, then the top-k set and its renormalised weights (Qwen3-style)."""
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    top = np.sort(np.argsort(-p, axis=-1, kind="stable")[:, :k], axis=-1)
    w = np.take_along_axis(p, top, axis=-1)
    return top, w / w.sum(axis=-1, keepdims=True)


def check(d, name, torch):
    bad = []
    es = json.load(open(f"{d}/{name}.easysteer.json"))
    twin = json.load(open(f"{d}/{name}.json"))
    bad += [f"{name}: {b}" for b in validate(es, SCHEMA)]
    if bad:
        return bad
    L, E, K, op = twin["n_layers"], twin["n_experts"], twin["top_k"], twin["op"]
    coef = np.array(twin["coef"], dtype=np.float32).reshape(L, E)
    lmap = twin["layer_index"]
    want = {}
    for layer, expert in twin["experts"]:
        want.setdefault(str(lmap[layer]), set()).add(expert)
    cfgs = es["layer_configs"]
    got = {k: set(v.get("expert_ids", []) + v.get("activate_ids", []) + v.get("deactivate_ids", []))
           for k, v in cfgs.items()}
    if got != want:
        bad.append(f"{name}: experts by decoder layer {got} differ from the twin's {want}")
        return bad
    rng = np.random.default_rng(7)
    for moe_layer in twin["target_layers"]:
        key = str(lmap[moe_layer])
        if key not in cfgs:
            continue
        cfg = cfgs[key]
        for e in got[key]:
            if not (0 <= e < E):
                bad.append(f"{name}: layer {key}: expert {e} outside 0..{E - 1}")
        if op == "soft" and cfg["mode"] != "soft":
            bad.append(f"{name}: layer {key}: soft steering exported as mode {cfg['mode']}")
        if op in ("hard", "off") and cfg["mode"] not in ("activate", "deactivate"):
            bad.append(f"{name}: layer {key}: {op} steering exported as mode {cfg['mode']}")
        z = rng.normal(0.0, 1.5, size=(64, E))
        a = moetrace_apply(z, coef[moe_layer].astype(np.float64), op, twin["eps"])
        b = easysteer_apply(torch, z, cfg)
        if op == "soft":
            # the same logits: EasySteer's lambda * n-1 std equals moetrace's lambda * population std
            if not np.allclose(a, b, rtol=0, atol=1e-12):
                bad.append(f"{name}: layer {key}: EasySteer's soft rule gives other logits (max diff "
                           f"{np.abs(a - b).max():.3g}; lambda {cfg.get('lambda')})")
        ta, wa = routing(a, K)
        tb, wb = routing(b, K)
        if not np.array_equal(ta, tb) or not np.allclose(wa, wb, rtol=0, atol=1e-6):
            bad.append(f"{name}: layer {key}: EasySteer's rule routes differently from moetrace's (top-k sets "
                       f"differ for {int((ta != tb).any(axis=1).sum())} of 64 tokens; weights by up to "
                       f"{np.abs(wa - wb).max() if np.array_equal(ta, tb) else float('nan'):.3g})")
    return bad


def self_test():
    good = {"layer_configs": {"7": {"mode": "deactivate", "expert_ids": [30, 25]},
                              "9": {"mode": "activate", "activate_ids": [12], "deactivate_ids": [35]},
                              "25": {"mode": "soft", "expert_ids": [3, 7, 12], "lambda": 0.5}}}
    broken = [
        {},
        {"layer_configs": {}},
        {"layer_configs": {"x7": {"mode": "soft", "expert_ids": [1]}}},
        {"layer_configs": {"7": {"mode": "boosted", "expert_ids": [1]}}},
        {"layer_configs": {"7": {"mode": "activate"}}},
        {"layer_configs": {"7": {"mode": "soft", "lambda": 0.5}}},
        {"layer_configs": {"7": {"mode": "soft", "expert_ids": [1], "lambda": "0.5"}}},
        {"layer_configs": {"7": {"mode": "soft", "expert_ids": [1, 1]}}},
        {"layer_configs": {"7": {"mode": "activate", "expert_ids": [-1]}}},
        {"layer_configs": {"7": {"mode": "activate", "expert_ids": [1], "weight": 2}}},
        {"layer_configs": {"7": {"mode": "activate", "expert_ids": [1]}}, "extra": 1},
    ]
    bad = [f"valid config refused: {validate(good, SCHEMA)}"] if validate(good, SCHEMA) else []
    for i, b in enumerate(broken):
        if not validate(b, SCHEMA):
            bad.append(f"broken config {i} accepted: {json.dumps(b)}")
    return bad


def main():
    if sys.argv[1:] == ["--self-test"]:
        bad = self_test()
    elif len(sys.argv) >= 3:
        import torch
        torch.set_num_threads(1)
        bad = []
        for name in sys.argv[2:]:
            bad += check(sys.argv[1], name, torch)
    else:
        sys.exit("usage: easysteer_check.py STEER_DIR NAME... | --self-test")
    for b in bad[:20]:
        print(b)
    if bad:
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
