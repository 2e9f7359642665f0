#!/usr/bin/python3
"""hf_run.py — the capture and evaluation jobs of a recipe for models the native engine does not run (Phi-3.5-MoE,
GPT-OSS): Hugging Face transformers + PyTorch, with moetrace's router hooks (capture/python/moetrace), doing what
`moetrace-capture run` does for the others.

  hf_run.py capture --model DIR --corpus PATH --out RUN [--langs A,B] [--dataset D] [--format flores|jsonl]
                    [--limit N] [--dtype bf16|f16|f32] [--no-chat] [--steer FILE]
      teacher-forced forward over every item (chat template, enable_thinking off), router logits of every MoE
      layer streamed to `moetrace-capture ingest --out RUN`
  hf_run.py eval --model DIR --layout belebele|global-mmlu|mgsm --corpus FILE --out DIR [--lang CODE]
                 [--max-new N] [--limit N] [--steer FILE] [--prompts FILE]
      belebele / global-mmlu: multiple-choice log-likelihood of " A".." D" after the prompt templates of
      config/prompts.json (belebele, mmlu); mgsm: greedy decoding, exact match of the final number (template
      mgsm); writes DIR/accuracy.tsv (lang task metric value n) as moetrace-capture run does

The file readers, prompts and scoring take any model whose forward returns logits (or an object with .logits)
and any tokenizer with encode/decode (+ apply_chat_template for capture), so tests drive them with small models.
Needs torch and numpy; transformers only when --model is a checkpoint directory. Exit 0, 1 usage, 2 bad input,
3 I/O or engine failure.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
for p in (os.path.join(HERE, "..", "..", "capture", "python"), os.path.join(HERE, "..", "python")):
    if os.path.isdir(os.path.join(p, "moetrace")):
        sys.path.insert(0, os.path.normpath(p))
PROG = "hf_run.py"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class InputError(Exception):
    """Bad input data: one line naming the file, exit 2."""


# ---- reading --------------------------------------------------------------------------------------------------------

def _jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except ValueError as e:
                    raise InputError(f"{path}:{n}: not JSON ({e})") from None
    return rows


def capture_items(path, fmt=None, langs=None, dataset=None, limit=None):
    """[(unit_id, lang, dataset, text or messages)] of a moetrace JSONL corpus or a FLORES-style directory
    (one file per language, <lang>.<split>, line i = unit i), filtered by langs, at most limit per language."""
    fmt = fmt or ("flores" if os.path.isdir(path) else "jsonl")
    items = []
    if fmt == "flores":
        files = sorted(f for f in os.listdir(path) if "." in f and not f.startswith("."))
        for f in files:
            lang = f.split(".")[0]
            if langs and lang not in langs:
                continue
            with open(os.path.join(path, f), encoding="utf-8") as fh:
                lines = [l.rstrip("\n") for l in fh]
            for i, t in enumerate(lines[:limit] if limit else lines, 1):
                if not t.strip():
                    raise InputError(f"{path}/{f}:{i}: empty line")
                items.append((str(i), lang, dataset or os.path.basename(os.path.normpath(path)), t))
    else:
        per = {}
        for n, r in _jsonl(path):
            lang, ds = r.get("lang"), r.get("dataset") or dataset
            if not isinstance(lang, str) or not ds or r.get("unit_id") is None:
                raise InputError(f"{path}:{n}: missing \"unit_id\", \"lang\" or \"dataset\"")
            if langs and lang not in langs:
                continue
            if limit and per.get(lang, 0) >= limit:
                continue
            content = r.get("messages") if r.get("messages") is not None else r.get("text")
            if not content:
                raise InputError(f"{path}:{n}: no \"text\" or \"messages\"")
            per[lang] = per.get(lang, 0) + 1
            items.append((str(r["unit_id"]), lang, ds, content))
    if not items:
        raise InputError(f"{path}: no items" + (f" in {','.join(langs)}" if langs else ""))
    return items


def mc_items(path, lang=None, limit=None):
    """[(unit_id, lang, dataset, passage or None, question, choices, answer index)] of a multiple-choice JSONL:
    moetrace's fields, Belebele's (flores_passage, mc_answer1.., correct_answer_num, dialect, link) or
    Global-MMLU's (option_a.., answer letter)."""
    out = []
    for n, r in _jsonl(path):
        where = f"{path}:{n}"
        g = r.get("lang") or r.get("dialect") or lang
        choices = r.get("choices")
        raw_bele = choices is None and "mc_answer1" in r
        if choices is None:
            keys = [f"mc_answer{i}" for i in range(1, 27)] if raw_bele else [f"option_{c}" for c in "abcdefghij"]
            choices = []
            for k in keys:
                if k not in r:
                    break
                choices.append(r[k])
        if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise InputError(f"{where}: fewer than 2 choices")
        a = r.get("answer", r.get("correct_answer_num"))
        if raw_bele and "answer" not in r:
            a = int(a) - 1
        elif isinstance(a, str) and len(a) == 1 and a in LETTERS:
            a = LETTERS.index(a)
        elif isinstance(a, str) and a in choices:
            a = choices.index(a)
        if not isinstance(a, int) or not 0 <= a < len(choices):
            raise InputError(f"{where}: answer {r.get('answer', r.get('correct_answer_num'))!r} names no choice")
        unit = r.get("unit_id", r.get("sample_id"))
        if unit is None and "link" in r:
            unit = f"{r['link']}#{r.get('question_number', '')}"
        ds = r.get("dataset") or ("belebele" if raw_bele else None)
        if not g or unit is None or not ds or not r.get("question"):
            raise InputError(f"{where}: missing unit_id, lang, dataset or question")
        out.append((str(unit), g, ds, r.get("passage", r.get("flores_passage")), r["question"], choices, a))
        if limit and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{path}: no items")
    return out


def gen_items(path, lang=None, limit=None):
    """[(unit_id, lang, dataset, question, answer)] of MGSM's TSV (question<TAB>answer, lang from mgsm_<lang>.tsv)
    or a JSONL with question and answer."""
    out = []
    if path.endswith(".tsv"):
        m = re.match(r"^([A-Za-z]+)_([A-Za-z-]+)\.tsv$", os.path.basename(path))
        ds, g = (m.group(1), m.group(2)) if m else ("mgsm", lang)
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    raise InputError(f"{path}:{n}: not question<TAB>answer")
                out.append((str(n), lang or g, ds, parts[0], parts[1]))
    else:
        for n, r in _jsonl(path):
            if not r.get("question") or r.get("answer") is None:
                raise InputError(f"{path}:{n}: missing question or answer")
            out.append((str(r.get("unit_id", n)), r.get("lang", lang), r.get("dataset", "mgsm"), r["question"],
                        str(r["answer"])))
    if limit:
        out = out[:limit]
    if not out:
        raise InputError(f"{path}: no items")
    return out


# ---- prompts (config/prompts.json) ------------------------------------------------------------------------------------

def load_templates(path=None):
    path = path or os.path.join(HERE, "..", "prompts.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)["templates"]


def render_mc(t, passage, question, choices):
    fields = {"passage": passage or "", "question": question}
    for i, c in enumerate(choices):
        fields[f"choice_{i}"] = c
    if "{choices}" in t["prompt"]:
        fields["choices"] = "\n".join(t["choice_line"].replace("{letter}", LETTERS[i]).replace("{choice}", c)
                                      for i, c in enumerate(choices))
    prompt = t["prompt"]
    for k, v in fields.items():
        prompt = prompt.replace("{" + k + "}", v)
    return prompt, [t["continuation"].replace("{letter}", LETTERS[i]) for i in range(len(choices))]


def final_number(text):
    """The last number in text (commas dropped), as MGSM's exact match reads answers; None if there is none."""
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    if not nums:
        return None
    v = nums[-1].replace(",", "")
    return float(v) if v not in ("-", "") else None


# ---- the model --------------------------------------------------------------------------------------------------------

def _logits(model, ids):
    import torch
    with torch.no_grad():
        out = model(input_ids=ids)
    return getattr(out, "logits", out)


def score_choice(model, tok, prompt, cont):
    """Sum of log-probabilities of the continuation tokens after the prompt (the context encoded alone, the
    continuation as the tokens the whole string adds)."""
    import torch
    ctx = tok.encode(prompt)
    whole = tok.encode(prompt + cont)
    n = len(whole) - len(ctx) if whole[:len(ctx)] == ctx else len(tok.encode(cont, add_special_tokens=False))
    ids = torch.tensor([whole])
    lp = torch.log_softmax(_logits(model, ids)[0].float(), dim=-1)
    T = len(whole)
    return float(sum(lp[t - 1, whole[t]] for t in range(T - n, T)))


def generate(model, tok, prompt, max_new, stops, eos):
    import torch
    ids = tok.encode(prompt)
    out = []
    for _ in range(max_new):
        nxt = int(_logits(model, torch.tensor([ids + out]))[0, -1].argmax())
        if eos is not None and nxt == eos:
            break
        out.append(nxt)
        text = tok.decode(out)
        if any(s in text for s in stops):
            break
    text = tok.decode(out)
    for s in stops:
        text = text.split(s)[0]
    return text


def evaluate(model, tok, layout, path, out_dir, lang=None, limit=None, max_new=256, templates=None, eos=None):
    """Accuracy per (lang, task) written to out_dir/accuracy.tsv; returns {(lang, task): (correct, n)}."""
    templates = templates or load_templates()
    acc, rows = {}, []
    if layout in ("belebele", "global-mmlu"):
        t = templates["belebele" if layout == "belebele" else "mmlu"]
        for unit, g, ds, passage, question, choices, answer in mc_items(path, lang, limit):
            prompt, conts = render_mc(t, passage, question, choices)
            scores = [score_choice(model, tok, prompt, c) for c in conts]
            pick = max(range(len(scores)), key=lambda i: scores[i])
            c, n = acc.get((g, ds), (0, 0))
            acc[(g, ds)] = (c + (pick == answer), n + 1)
            rows.append((unit, g, ds, pick, answer))
    elif layout == "mgsm":
        t = templates["mgsm"]
        for unit, g, ds, question, answer in gen_items(path, lang, limit):
            text = generate(model, tok, t["prompt"].replace("{question}", question), max_new, t.get("stop", []), eos)
            got, want = final_number(text), final_number(answer)
            ok = got is not None and want is not None and abs(got - want) < 1e-9
            c, n = acc.get((g, ds), (0, 0))
            acc[(g, ds)] = (c + ok, n + 1)
            rows.append((unit, g, ds, text.replace("\t", " ").replace("\n", " "), answer))
    else:
        raise InputError(f"layout '{layout}' is not belebele, global-mmlu or mgsm")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "accuracy.tsv.tmp"), "w", encoding="utf-8") as f:
        f.write(f"# {PROG} eval: layout {layout}, {path}\n#lang\ttask\tmetric\tvalue\tn\n")
        for (g, ds), (c, n) in acc.items():
            f.write(f"{g}\t{ds}\taccuracy\t{c / n:.6f}\t{n}\n")
    os.replace(os.path.join(out_dir, "accuracy.tsv.tmp"), os.path.join(out_dir, "accuracy.tsv"))
    with open(os.path.join(out_dir, "items.tsv"), "w", encoding="utf-8") as f:
        f.write("#unit_id\tlang\ttask\tgot\twant\n")
        for r in rows:
            f.write("\t".join(map(str, r)) + "\n")
    return acc


def capture(model, tok, items, out, chat=True, model_id=None, corpus_id=None, ingest_args=()):
    """Every item through the model under moetrace.Capture (router logits of every MoE layer to ingest)."""
    import torch
    import moetrace
    with moetrace.Capture(model, out=out, model_id=model_id, corpus_id=corpus_id, ingest_args=ingest_args) as cap:
        for i, (unit, lang, ds, content) in enumerate(items):
            msgs = content if isinstance(content, list) else [{"role": "user", "content": content}]
            if chat and hasattr(tok, "apply_chat_template"):
                ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False,
                                              enable_thinking=False)
            else:
                ids = tok.encode("\n".join(m["content"] for m in msgs))
            cap.run(torch.tensor(ids), seq_id=i, unit_id=unit, lang=lang, dataset=ds)
    return len(items)


def load_model(path, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    td = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=td, device_map="auto")
    model.eval()
    return model, tok


# ---- command line -------------------------------------------------------------------------------------------------------

def main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--model", required=True)
    c.add_argument("--corpus", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--langs")
    c.add_argument("--dataset")
    c.add_argument("--format", choices=("flores", "jsonl"))
    c.add_argument("--limit", type=int)
    c.add_argument("--dtype", default="bf16", choices=("bf16", "f16", "f32"))
    c.add_argument("--no-chat", action="store_true")
    c.add_argument("--steer")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--layout", required=True, choices=("belebele", "global-mmlu", "mgsm"))
    e.add_argument("--corpus", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--lang")
    e.add_argument("--limit", type=int)
    e.add_argument("--max-new", type=int, default=256)
    e.add_argument("--dtype", default="bf16", choices=("bf16", "f16", "f32"))
    e.add_argument("--steer")
    e.add_argument("--prompts")
    a = ap.parse_args(argv[1:])
    try:
        if a.verb == "capture":
            items = capture_items(a.corpus, a.format, a.langs.split(",") if a.langs else None, a.dataset, a.limit)
        else:
            templates = load_templates(a.prompts)
        model, tok = load_model(a.model, a.dtype)
        import contextlib
        import moetrace
        steer = moetrace.SteeringHook(model, a.steer) if a.steer else contextlib.nullcontext()
        with steer:
            if a.verb == "capture":
                n = capture(model, tok, items, a.out, chat=not a.no_chat, corpus_id=os.path.basename(a.corpus))
                print(f"{a.out}: {n} sequences")
            else:
                acc = evaluate(model, tok, a.layout, a.corpus, a.out, a.lang, a.limit, a.max_new, templates,
                               getattr(tok, "eos_token_id", None))
                for (g, ds), (cnt, n) in acc.items():
                    print(f"{g}\t{ds}\taccuracy {cnt / n:.4f} ({n} items)")
    except InputError as ex:
        print(f"{PROG} {a.verb}: {ex}", file=sys.stderr)
        return 2
    except OSError as ex:
        print(f"{PROG} {a.verb}: {ex}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
