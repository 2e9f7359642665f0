"""test_hf_run.py — config/recipes/hf_run.py, the recipes' capture and evaluation for models the native engine does
not run, driven with the small PhiMoE and GPT-OSS models of tiny_moe.py and a byte tokenizer: the readers take the
bundled corpora and the datasets' own formats, capture streams exactly the model's router logits into a trace,
multiple-choice scoring picks the choice an independent log-likelihood computation picks, generation decodes
greedily, and a steering file changes the scores. Prints "ok NAME" / "not ok NAME: why". Environment: BIN, LIB.
Run with /usr/bin/python3."""
import glob
import json
import os
import sys
import tempfile
import traceback

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "capture", "python"))
sys.path.insert(0, os.path.join(ROOT, "config", "recipes"))
sys.path.insert(0, HERE)
BIN = os.environ.get("BIN", os.path.join(ROOT, "bin"))
LIB = os.environ.get("LIB", os.path.join(ROOT, "lib"))
os.environ["HDF5_PLUGIN_PATH"] = os.path.join(LIB, "plugin")
os.environ["MOETRACE_CAPTURE"] = os.path.join(BIN, "moetrace-capture")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import hf_run  # noqa: E402
import moetrace  # noqa: E402
import tiny_moe  # noqa: E402

torch.set_num_threads(1)
WORK = tempfile.mkdtemp(prefix="mtr-hf-")
DATA = os.path.join(ROOT, "tests", "data")
failures = 0


def case(name):
    def wrap(fn):
        global failures
        try:
            fn()
            print(f"ok {name}")
        except Exception as e:  # a failing case must not stop the others
            failures += 1
            tb = traceback.extract_tb(e.__traceback__)[-1]
            print(f"not ok {name}: {type(e).__name__}: {e} (line {tb.lineno})".replace("\n", " "))
        return fn
    return wrap


class ByteTok:
    """UTF-8 bytes mod the vocabulary; a BOS id first unless add_special_tokens=False."""

    def __init__(self, vocab=97):
        self.vocab, self.eos_token_id = vocab, None

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [2 + b % (self.vocab - 2) for b in text.encode("utf-8")]

    def decode(self, ids):
        return "".join(chr(48 + i % 10) for i in ids)


@case("capture items: moetrace JSONL (limit per language) and a FLORES-style directory")
def _():
    items = hf_run.capture_items(os.path.join(DATA, "udhr-mini.jsonl"), langs=["eng_Latn", "fra_Latn"], limit=3)
    assert [i[1] for i in items].count("eng_Latn") == 3 and len(items) == 6, items
    d = os.path.join(WORK, "flores")
    os.makedirs(d)
    for g, lines in (("eng_Latn", ["One.", "Two."]), ("fra_Latn", ["Un.", "Deux."])):
        open(os.path.join(d, f"{g}.devtest"), "w").write("\n".join(lines) + "\n")
    items = hf_run.capture_items(d, langs=["fra_Latn"], dataset="flores")
    assert items == [("1", "fra_Latn", "flores", "Un."), ("2", "fra_Latn", "flores", "Deux.")], items
    try:
        hf_run.capture_items(os.path.join(DATA, "udhr-mini.jsonl"), langs=["xxx_Zzzz"])
        raise AssertionError("no items accepted")
    except hf_run.InputError as e:
        assert "no items" in str(e)


@case("capture (PhiMoE): the trace holds the model's router logits for every item")
def _():
    model = tiny_moe.build("phimoe", n_layers=3, E=8, k=2)
    items = hf_run.capture_items(os.path.join(DATA, "udhr-mini.jsonl"), langs=["eng_Latn", "deu_Latn"], limit=2)
    run = os.path.join(WORK, "run-phi")
    tiny_moe.clear(model)
    n = hf_run.capture(model, ByteTok(), items, run, chat=False, corpus_id="udhr-mini",
                       ingest_args=("--no-sync", "--quiet"))
    ref = tiny_moe.reference_logits(model)  # (T, L, E) over every forward, in order
    seqs, parts = [], []
    for path in sorted(glob.glob(os.path.join(run, "shard-*.h5"))):
        with h5py.File(path, "r") as f:
            assert f.attrs["model_type"] in (b"phimoe", "phimoe")
            raw = f["router/logits"][()]
            seqs += [(int(s), l.decode() if isinstance(l, bytes) else l) for s, l in zip(f["seq/seq_id"][()], f["seq/lang"][()])]
            got = (raw.astype(np.uint32) << 16).view(np.float32) if raw.dtype == np.uint16 else raw
            parts.append(got)
    got = np.concatenate(parts)
    assert n == 4 and len(seqs) == 4 and sorted(l for _, l in seqs) == ["deu_Latn"] * 2 + ["eng_Latn"] * 2, seqs
    want = ref.to(torch.float32).numpy()
    assert got.size == want.size and np.array_equal(got.reshape(want.shape), want), (got.shape, want.shape)


def independent_scores(model, tok, prompt, conts):
    """Log-likelihood of each continuation, the whole string in one forward, log-softmax in float64."""
    out = []
    for c in conts:
        ctx, whole = tok.encode(prompt), tok.encode(prompt + c)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([whole]))[0].double(), -1)
        out.append(sum(float(lp[t - 1, whole[t]]) for t in range(len(ctx), len(whole))))
    return out


@case("eval belebele layout (GPT-OSS): picks = independent log-likelihoods, accuracy.tsv per language")
def _():
    model = tiny_moe.build("gpt_oss", n_layers=2, E=8, k=2)
    tok = ByteTok()
    path = os.path.join(DATA, "mc-mini.jsonl")
    out = os.path.join(WORK, "ev")
    acc = hf_run.evaluate(model, tok, "belebele", path, out)
    items = hf_run.mc_items(path)
    t = hf_run.load_templates()["belebele"]
    want = {}
    for unit, g, ds, passage, q, choices, answer in items:
        prompt, conts = hf_run.render_mc(t, passage, q, choices)
        s = independent_scores(model, tok, prompt, conts)
        c, n = want.get((g, ds), (0, 0))
        want[(g, ds)] = (c + (int(np.argmax(s)) == answer), n + 1)
    assert acc == want, (acc, want)
    rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "accuracy.tsv")) if not l.startswith("#")]
    assert len(rows) == len(want) and all(r[2] == "accuracy" and float(r[3]) == want[(r[0], r[1])][0] / want[(r[0], r[1])][1]
                                          for r in rows), rows


@case("mc readers: Belebele's and Global-MMLU's own fields")
def _():
    p = os.path.join(WORK, "raw.jsonl")
    with open(p, "w") as f:
        f.write(json.dumps({"link": "x", "question_number": 1, "dialect": "fra_Latn", "flores_passage": "P",
                            "question": "Q?", "mc_answer1": "a", "mc_answer2": "b", "mc_answer3": "c",
                            "mc_answer4": "d", "correct_answer_num": "3"}) + "\n")
        f.write(json.dumps({"sample_id": "anatomy/test/0", "lang": "sw", "dataset": "global_mmlu_full:anatomy",
                            "question": "Q2", "option_a": "w", "option_b": "x", "option_c": "y", "option_d": "z",
                            "answer": "D"}) + "\n")
    a, b = hf_run.mc_items(p)
    assert a == ("x#1", "fra_Latn", "belebele", "P", "Q?", ["a", "b", "c", "d"], 2), a
    assert b == ("anatomy/test/0", "sw", "global_mmlu_full:anatomy", None, "Q2", ["w", "x", "y", "z"], 3), b
    prompt, conts = hf_run.render_mc(hf_run.load_templates()["mmlu"], None, "Q2", ["w", "x", "y", "z"])
    assert prompt == "Q2\nA. w\nB. x\nC. y\nD. z\nAnswer:" and conts == [" A", " B", " C", " D"], (prompt, conts)


@case("eval mgsm layout: greedy decoding, final-number match, MGSM's TSV read")
def _():
    assert hf_run.final_number("so 1,234 apples") == 1234.0 and hf_run.final_number("none") is None
    p = os.path.join(WORK, "mgsm_sw.tsv")
    open(p, "w").write("Una tufaha 3. Ngapi?\t3\nMbili?\t2\n")
    items = hf_run.gen_items(p)
    assert items[0] == ("1", "sw", "mgsm", "Una tufaha 3. Ngapi?", "3"), items
    model = tiny_moe.build("phimoe", n_layers=2, E=8, k=2)
    out = os.path.join(WORK, "gen")
    acc = hf_run.evaluate(model, ByteTok(), "mgsm", p, out, max_new=3)
    assert acc[("sw", "mgsm")][1] == 2
    got = [l.split("\t") for l in open(os.path.join(out, "items.tsv")) if not l.startswith("#")]
    assert all(len(r[3]) <= 3 for r in got), got  # at most max_new tokens (one character each)


@case("eval under a steering file: the hook changes the log-likelihoods")
def _():
    model = tiny_moe.build("phimoe", n_layers=2, E=8, k=2)
    tok = ByteTok()
    s = {"format": "moetrace-steering", "format_version": 1, "name": "task", "model_id": "tiny/phimoe",
         "n_layers": 2, "n_experts": 8, "top_k": 2, "layer_index": [0, 1], "op": "soft", "lambda": 2.0,
         "eps_mode": "gaussian", "eps": 1e-6, "seed": 1, "target_layers": [0, 1], "experts": [[0, 3], [1, 5]],
         "scores": [None, None], "provenance": {},
         "coef": [[2.0 if e == 3 else 0.0 for e in range(8)], [2.0 if e == 5 else 0.0 for e in range(8)]]}
    sp = os.path.join(WORK, "steer.json")
    json.dump(s, open(sp, "w"))
    prompt, conts = "P: x\nQ: y\nA: a\nB: b\nAnswer:", [" A", " B"]
    base = [hf_run.score_choice(model, tok, prompt, c) for c in conts]
    with moetrace.SteeringHook(model, sp):
        steered = [hf_run.score_choice(model, tok, prompt, c) for c in conts]
    after = [hf_run.score_choice(model, tok, prompt, c) for c in conts]
    assert base != steered and base == after, (base, steered, after)


print(f"# {failures} failed")
sys.exit(1 if failures else 0)
