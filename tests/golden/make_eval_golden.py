"""make_eval_golden.py — reference results of scoring and generation on the tiny checkpoints, for tests/unit/test_eval.c.

Independent of the C code under test (capture/eval/, capture/corpus/prompts.c, capture/engine/): prompts are
rendered here from the belebele / mgsm templates of config/prompts.json, log-likelihoods and greedy decoding run on
the PyTorch reference tests/models/ref_moe.py (no KV cache: every step is a whole forward). Only the tokenizer is the
C one (`moetrace-capture tokenize`, checked against the reference tokenizers in tests/tokenizer).

    OPENBLAS_NUM_THREADS=1 /usr/bin/python3 tests/golden/make_eval_golden.py bin/moetrace-capture > tests/golden/eval-tiny.json

It also writes tests/golden/eval-merges/ (tokenizer.json, tokenizer_config.json): the tokenizer of the tiny
qwen3_moe with two merges added ("Ġ f", "Ġ i"), so that with the template MERGES_TEMPLATE below a continuation
starting with " f" or " i" changes how the prompt's last token encodes (the path where the whole text is run again);
the tiny tokenizers have no merges, so with them a continuation never does.

Scoring, as lm-evaluation-harness: the log-likelihood of choice k is the sum over the tokens of
encode(prompt + continuation) after the first len(encode(prompt)) of the log-softmax at the preceding position.
Generation: argmax until an end-of-sequence id (config eos_token_id, the tokenizer's eos token, <|im_end|>), a stop
string of the template in the decoded text (the text cut there), MAX_NEW tokens or MAX_TOKENS positions.
"""
import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "tests", "models"))
from ref_moe import MoeModel  # noqa: E402

MODELS = ("qwen3_moe", "olmoe")
MAX_NEW = 12
MAX_TOKENS = 4096
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# the test has the same template (tests/unit/test_eval.c, MERGES_TEMPLATE)
MERGES_TEMPLATE = {"kind": "mc", "prompt": "{question}\nAnswer: ", "continuation": "{choice}"}


def write_merges_tokenizer(src, dst):
    os.makedirs(dst, exist_ok=True)
    t = json.load(open(os.path.join(src, "tokenizer.json")))
    t["model"]["vocab"]["\u0120f"] = 259
    t["model"]["vocab"]["\u0120i"] = 260
    t["model"]["merges"] = ["\u0120 f", "\u0120 i"]
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = f.read()
    with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        f.write(cfg)


def tokenize(cap, model_dir, texts, add_special):
    args = [cap, "tokenize", "--jsonl", "--tokenizer", model_dir] + (["--add-special"] if add_special else [])
    inp = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    out = subprocess.run(args, input=inp, capture_output=True, text=True, check=True).stdout.splitlines()
    return [[int(x) for x in line.split()] for line in out]


def decode(cap, model_dir, ids):
    args = [cap, "tokenize", "--decode", "--jsonl", "--skip-special", "--tokenizer", model_dir]
    out = subprocess.run(args, input=" ".join(map(str, ids)) + "\n", capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[0]) if ids else ""


def eos_ids(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tj = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    tc_path = os.path.join(model_dir, "tokenizer_config.json")
    tc = json.load(open(tc_path)) if os.path.exists(tc_path) else {}
    vocab = dict(tj["model"]["vocab"])
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    out = []
    if cfg.get("eos_token_id") is not None:
        out.append(cfg["eos_token_id"])
    eos = tc.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    for tok in (eos, "<|im_end|>"):
        if tok in vocab and vocab[tok] not in out:
            out.append(vocab[tok])
    return out, len(vocab)


def score(cap, tok_dir, m, items, tmpl):
    res = []
    for it in items:
        fields = {"passage": it["passage"], "question": it["question"]}
        for k, c in enumerate(it["choices"]):
            fields[f"choice_{k}"] = c
        prompt = tmpl["prompt"]
        for k, v in fields.items():
            prompt = prompt.replace("{" + k + "}", v)
        conts = [tmpl["continuation"].replace("{letter}", LETTERS[k]).replace("{choice}", c)
                 for k, c in enumerate(it["choices"])]
        enc = tokenize(cap, tok_dir, [prompt] + [prompt + c for c in conts], True)
        ctx, wholes = enc[0], enc[1:]
        ll, retok = [], 0
        for whole in wholes:
            retok += whole[:len(ctx)] != ctx
            logits, _ = m.forward(whole)
            lp = torch.log_softmax(logits.double(), -1)
            ll.append(sum(float(lp[t - 1, whole[t]]) for t in range(len(ctx), len(whole))))
        res.append({"unit_id": it["unit_id"], "lang": it["lang"], "loglik": ll, "prompt_tokens": len(ctx),
                    "retokenised": retok})
    return res


def generate(cap, model_dir, m, items, tmpl):
    eos, tok_vocab = eos_ids(model_dir)
    res = []
    for it in items:
        prompt = tmpl["prompt"].replace("{question}", it["question"])
        ids = tokenize(cap, model_dir, [prompt], True)[0]
        c = len(ids)
        text, margin = "", float("inf")
        while True:
            logits, _ = m.forward(ids)
            top2 = torch.topk(logits[-1].double(), 2)
            margin = min(margin, float(top2.values[0] - top2.values[1]))
            best = int(top2.indices[0])
            if best in eos:
                break
            ids.append(best)
            n_new = len(ids) - c
            text = decode(cap, model_dir, [t for t in ids[c:] if t < tok_vocab])
            cut = None
            for s in tmpl.get("stop", []):
                if s in text:
                    cut = text.index(s)
                    break
            if cut is not None:
                text = text[:cut]
                break
            if n_new >= MAX_NEW or c + n_new >= MAX_TOKENS:
                break
        res.append({"unit_id": it["unit_id"], "lang": it["lang"], "n_new": len(ids) - c, "generated": text,
                    "ids": ids[c:], "min_greedy_margin": margin})
    return res


def main():
    cap = os.path.abspath(sys.argv[1])
    prompts = json.load(open(os.path.join(TOP, "config", "prompts.json")))["templates"]
    mc = [json.loads(line) for line in open(os.path.join(TOP, "tests", "data", "mc-mini.jsonl"), encoding="utf-8")]
    gen = [json.loads(line) for line in open(os.path.join(TOP, "tests", "data", "gen-mini.jsonl"), encoding="utf-8")]
    out = {"producer": "tests/golden/make_eval_golden.py (ref_moe.py forward, moetrace-capture tokenize)",
           "torch_version": torch.__version__, "max_new": MAX_NEW, "models": {}}
    for name in MODELS:
        d = os.path.join(TOP, "tests", "models", "tiny", name)
        m = MoeModel(d)
        out["models"][name] = {"score": score(cap, d, m, mc, prompts["belebele"]),
                               "generate": generate(cap, d, m, gen, prompts["mgsm"])}
        if name == "qwen3_moe":
            merges = os.path.join(HERE, "eval-merges")
            write_merges_tokenizer(d, merges)
            out["models"][name]["score_merges"] = score(cap, merges, m, mc, MERGES_TEMPLATE)
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
