#!/usr/bin/python3
"""train_udhr_moe.py — trains the bundled small qwen3_moe checkpoint tests/models/udhr-moe/ on real text: the
20-language UDHR corpus (tests/data/udhr20, train articles only) and English Debian package descriptions
(tests/data/debdesc, train part), languages given different amounts of data (resource tiers below). Also trains
its byte-level BPE tokenizer (bytebpe.py). The forward is the PyTorch reference's (ref_moe.py), run with
gradients; the loss is next-token cross-entropy plus the usual load-balancing loss of the routers. Deterministic
for a given torch build and thread count (seeded; one thread).

Writes DIR: config.json, generation_config.json, model.safetensors (f32), tokenizer.json, tokenizer_config.json
(ChatML chat template), languages.tsv (tiers and training data per language) and results.json (losses, held-out
bits per byte and cloze multiple-choice accuracy per language, measured here with the reference forward).

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 /usr/bin/python3 tests/models/train_udhr_moe.py [--out DIR]
        [--epochs N] [--max-steps N] [--log FILE]
    ... --eval-only DIR        re-measure results.json of a trained checkpoint
    ... --check-tokenizer DIR  write DIR/tok-texts.jsonl and DIR/tok-python.txt (ids of every corpus text by this
                               file's encoder) to compare with moetrace-capture tokenize and tests/tokenizer/oracle.mjs
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")
sys.path.insert(0, HERE)
import bytebpe  # noqa: E402
import make_tiny  # noqa: E402
import ref_moe  # noqa: E402
import safetensors_io  # noqa: E402

SEED = 20251004
VOCAB = 2048
SPECIALS = {"<|endoftext|>": VOCAB - 3, "<|im_start|>": VOCAB - 2, "<|im_end|>": VOCAB - 1}
BOS, IM_START, IM_END = VOCAB - 3, VOCAB - 2, VOCAB - 1
N_MERGES = VOCAB - 256 - len(SPECIALS)

# resource tiers: (languages, train articles used (of 23), times each is repeated per epoch)
TIERS = [
    ("high", ["eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "rus_Cyrl", "zho_Hans"], 23, 4),
    ("mid", ["jpn_Jpan", "kor_Hang", "arb_Arab", "hin_Deva", "vie_Latn", "tur_Latn"], 23, 2),
    ("low", ["ben_Beng", "tha_Thai", "swh_Latn", "hau_Latn"], 12, 1),
    ("very_low", ["yor_Latn", "amh_Ethi", "bam_Latn", "zul_Latn"], 6, 1),
]
DEBIAN_REPEAT = 1
CHAT_FRACTION = 0.25  # share of training documents wrapped as one ChatML user turn

ARCH = dict(hidden_size=128, num_hidden_layers=10, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            num_experts=16, num_experts_per_tok=2, moe_intermediate_size=24, intermediate_size=256,
            mlp_only_layers=[], max_window_layers=10, norm_topk_prob=True, tie_word_embeddings=True,
            max_position_embeddings=1024, rope_theta=10000.0, router_aux_loss_coef=0.01, vocab_size=VOCAB,
            bos_token_id=BOS, eos_token_id=IM_END)
TRAIN = dict(seq_len=256, batch_tokens=2048, lr=4e-3, min_lr_ratio=0.1, warmup=30, weight_decay=0.1,
             betas=(0.9, 0.95), clip=1.0, init_std=0.02, epochs=6)


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- data -------------------------------------------------------------------------------------------------------

def mixture():
    """[(lang, dataset, unit_id, text, repeat)] of one epoch, and the per-language table for languages.tsv."""
    train = load_jsonl(os.path.join(DATA, "udhr20", "train.jsonl"))
    by_lang = {}
    for r in train:
        by_lang.setdefault(r["lang"], []).append(r)
    units = sorted({r["unit_id"] for r in train})
    order = random.Random(f"{SEED}:articles").sample(units, len(units))  # the articles a tier keeps: a prefix
    docs, table = [], []
    for tier, langs, n_art, rep in TIERS:
        keep = set(order[:n_art])
        for lang in langs:
            rows = [r for r in by_lang[lang] if r["unit_id"] in keep]
            docs += [(lang, "udhr", r["unit_id"], r["text"], rep) for r in rows]
            table.append({"lang": lang, "tier": tier, "articles": len(rows), "repeat": rep,
                          "bytes_per_epoch": rep * sum(len(r["text"].encode()) for r in rows)})
    deb = load_jsonl(os.path.join(DATA, "debdesc", "train.jsonl"))
    docs += [("eng_Latn", "debian", r["unit_id"], r["text"], DEBIAN_REPEAT) for r in deb]
    table.append({"lang": "eng_Latn (debian)", "tier": "task", "articles": len(deb), "repeat": DEBIAN_REPEAT,
                  "bytes_per_epoch": DEBIAN_REPEAT * sum(len(r["text"].encode()) for r in deb)})
    return docs, table


def chat_wrap(text):
    return f"<|im_start|>user\n{text}<|im_end|>\n"


def epoch_batches(docs, tok, epoch, cache):
    """Token batches of one epoch: every document repeat times (a seeded quarter of them as a chat turn), cut into
    windows of at most seq_len tokens, shuffled, then grouped by length into batches of about batch_tokens."""
    rng = random.Random(f"{SEED}:epoch:{epoch}")
    seqs = []
    for lang, ds, uid, text, rep in docs:
        for _ in range(rep):
            chat = rng.random() < CHAT_FRACTION
            key = (ds, lang, uid, chat)
            if key not in cache:
                cache[key] = tok.encode(chat_wrap(text) if chat else text)
            ids = cache[key]
            L = TRAIN["seq_len"]
            seqs += [ids[i:i + L] for i in range(0, len(ids), L) if len(ids[i:i + L]) >= 2]
    rng.shuffle(seqs)
    batches = []
    for g in range(0, len(seqs), 64):
        group = sorted(seqs[g:g + 64], key=len)
        cur = []
        for s in group:
            if cur and (len(cur) + 1) * len(s) > TRAIN["batch_tokens"]:
                batches.append(cur)
                cur = []
            cur.append(s)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def pad(seqs):
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.int64)
    valid = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        valid[i, :len(s)] = True
    return ids, valid


# ---- model ------------------------------------------------------------------------------------------------------

def config():
    return make_tiny.qwen3_moe_config(**ARCH)


def init_weights(cfg):
    """f32 weights drawn in name order from one seeded generator: matrices and embeddings N(0, init_std), norms 1."""
    g = torch.Generator().manual_seed(SEED)
    out = {}
    for name, shape in sorted(ref_moe.expected_tensors(cfg).items()):
        if name.endswith("norm.weight"):
            t = torch.ones(shape)
        else:
            t = TRAIN["init_std"] * torch.randn(shape, generator=g)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                t /= math.sqrt(2 * cfg.n_layers)  # residual branches scaled with depth (GPT-2)
        out[name] = torch.nn.Parameter(t.contiguous())
    return out


def build_model(cfgd, weights):
    d = tempfile.mkdtemp(prefix="udhrmoe")
    try:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfgd, f)
        return ref_moe.MoeModel(d, weights=weights)
    finally:
        shutil.rmtree(d)


def attention(model, i, x, cos, sin, mask):
    """model.attention (qwen3_moe: per-head q/k norms, rotary, grouped-query heads) computed with fewer passes over
    the (T, T) scores for training speed: the 1/sqrt(head_dim) scale applied to q, the heads sharing a kv head
    stacked into one batched product, the causal mask added by baddbmm. mask: (1, rep*T, T) additive."""
    cfg, w = model.cfg, model.w
    B, T, _ = x.shape
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    a = f"model.layers.{i}.self_attn."
    q = F.linear(x, w[a + "q_proj.weight"]).view(B, T, nh, hd)
    k = F.linear(x, w[a + "k_proj.weight"]).view(B, T, nkv, hd)
    v = F.linear(x, w[a + "v_proj.weight"]).view(B, T, nkv, hd)
    q = ref_moe.rms_norm(q, w[a + "q_norm.weight"], cfg.rms_eps).transpose(1, 2)
    k = ref_moe.rms_norm(k, w[a + "k_norm.weight"], cfg.rms_eps).transpose(1, 2)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    q = (q * c + ref_moe.rotate_half(q) * s) * (hd ** -0.5)
    k = k * c + ref_moe.rotate_half(k) * s
    q = q.reshape(B * nkv, nh // nkv * T, hd)  # (B, nkv, rep, T, hd): head h uses kv head h // rep
    k = k.reshape(B * nkv, T, hd)
    v = v.transpose(1, 2).reshape(B * nkv, T, hd)
    att = torch.baddbmm(mask, q, k.transpose(1, 2)).softmax(-1)
    o = torch.bmm(att, v).view(B, nh, T, hd).transpose(1, 2).reshape(B, T, nh * hd)
    return F.linear(o, w[a + "o_proj.weight"])


def moe(model, i, h, rec):
    """model.moe (qwen3_moe: router softmax, top-k, renormalised weights; model.route itself) with one gather and one
    scatter per layer for training speed: the (token, slot) pairs sorted by expert, each expert run on its
    contiguous chunk. Appends {"router": raw logits, "selected"} to rec."""
    cfg, w = model.cfg, model.w
    B, T, H = h.shape
    x2 = h.reshape(-1, H)
    m = f"model.layers.{i}.mlp."
    z = F.linear(x2, w[m + "gate.weight"])
    wts, sel, _ = model.route(z, len(rec), None)
    rec.append({"router": z, "selected": sel})
    flat = sel.reshape(-1)
    order = torch.sort(flat, stable=True)[1]
    tok = order // cfg.top_k
    counts = torch.bincount(flat, minlength=cfg.n_experts).tolist()
    ys = []
    for e, chunk in enumerate(torch.split(x2.index_select(0, tok), counts)):
        if counts[e]:
            ex = m + f"experts.{e}."
            a = F.silu(F.linear(chunk, w[ex + "gate_proj.weight"])) * F.linear(chunk, w[ex + "up_proj.weight"])
            ys.append(F.linear(a, w[ex + "down_proj.weight"]))
    y = torch.cat(ys) * wts.reshape(-1)[order, None]
    return torch.zeros_like(x2).index_add(0, tok, y).reshape(B, T, H)


def forward(model, ids):
    """(logits (B, T, V), router records) of the reference forward (ref_moe.MoeModel.forward_full: its norms and
    routing) with gradients, attention and MoE block as attention() and moe() above. f32 only."""
    cfg, w = model.cfg, model.w
    B, T = ids.shape
    x = F.embedding(ids, w["model.embed_tokens.weight"])
    cos, sin = ref_moe.rope_tables(cfg, torch.arange(T, dtype=torch.int64)[None].expand(B, T), cfg.dtype)
    mask = model.causal_mask(T, None, cfg.dtype)[0, 0].repeat(cfg.n_heads // cfg.n_kv_heads, 1)[None]
    rec = []
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        x = x + attention(model, i, ref_moe.rms_norm(x, w[p + "input_layernorm.weight"], cfg.rms_eps), cos, sin, mask)
        h = ref_moe.rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg.rms_eps)
        x = x + moe(model, i, h, rec)
    x = ref_moe.rms_norm(x, w["model.norm.weight"], cfg.rms_eps)
    head = w["model.embed_tokens.weight"] if cfg.tie else w["lm_head.weight"]
    return F.linear(x, head), rec


def balance_loss(moe, valid, n_experts, top_k):
    """Load-balancing loss (Switch / transformers load_balancing_loss_func) per MoE layer over the valid tokens,
    averaged over layers: E * sum_e (share of routed slots to e) * (mean router probability of e)."""
    v = valid.reshape(-1)
    total = 0.0
    for r in moe:
        p = F.softmax(r["router"][v].float(), dim=-1)
        sel = r["selected"][v]
        share = F.one_hot(sel, n_experts).float().sum(1).mean(0) / top_k
        total = total + n_experts * (share * p.mean(0)).sum()
    return total / len(moe)


def lr_at(step, total):
    if step < TRAIN["warmup"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
    t = (step - TRAIN["warmup"]) / max(1, total - TRAIN["warmup"])
    lo = TRAIN["min_lr_ratio"]
    return TRAIN["lr"] * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


# ---- evaluation -----------------------------------------------------------------------------------------------------

@torch.no_grad()
def token_logprobs(model, seqs):
    """For each id list, log p(ids[t] | ids[:t]) for t >= 1 (a list of 1-D tensors), batched by length."""
    out = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and (j - i + 1) * len(seqs[order[j]]) <= 8192:
            j += 1
        j = max(j, i + 1)
        idx = order[i:j]
        ids, valid = pad([seqs[k] for k in idx])
        logits, _ = forward(model, ids)
        lp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        for b, k in enumerate(idx):
            out[k] = lp[b, :len(seqs[k]) - 1].clone()
        i = j
    return out


def bits_per_byte(model, tok, rows):
    """{(dataset, lang): [bits, bytes]} over texts: each text's tokens after its first, in bits, and their bytes."""
    seqs = [tok.encode_plain(r["text"]) for r in rows]
    lps = token_logprobs(model, seqs)
    acc = {}
    for r, s, lp in zip(rows, seqs, lps):
        a = acc.setdefault((r["dataset"], r["lang"]), [0.0, 0])
        a[0] += float(-lp.sum()) / math.log(2)
        a[1] += len(tok.decode_bytes(s[1:]))
    return acc


def cloze_accuracy(model, tok, items):
    """{lang: (n, correct, correct_norm)} scoring each choice as moetrace-capture run --mode score does with the
    template "{question}" + "{choice}" without a chat template: encode(context) and encode(context + choice), the
    choice's log-likelihood = the log-probabilities of the joint ids past the context's length (normalised: per
    byte of the choice)."""
    seqs, meta = [], []
    for it in items:
        c = len(tok.encode(it["question"]))
        for k, ch in enumerate(it["choices"]):
            seqs.append(tok.encode(it["question"] + ch))
            meta.append((c, len(ch.encode())))
    lps = token_logprobs(model, seqs)
    res, q = {}, 0
    for it in items:
        ll, lln = [], []
        for _ in it["choices"]:
            (c, nb), lp = meta[q], lps[q]
            s = float(lp[c - 1:].sum()) if len(seqs[q]) > c else -math.inf
            ll.append(s)
            lln.append(s / nb)
            q += 1
        r = res.setdefault(it["lang"], [0, 0, 0])
        r[0] += 1
        r[1] += int(max(range(len(ll)), key=lambda k: (ll[k], -k)) == it["answer"])
        r[2] += int(max(range(len(lln)), key=lambda k: (lln[k], -k)) == it["answer"])
    return res


@torch.no_grad()
def fast_vs_reference(model, tok):
    """Largest |difference| of the logits of forward() and the reference's own forward_full on three held-out
    texts (the evaluation uses forward())."""
    worst = 0.0
    for r in load_jsonl(os.path.join(DATA, "udhr20", "heldout.jsonl"))[:3]:
        ids = torch.tensor([tok.encode_plain(r["text"])])
        worst = max(worst, float((forward(model, ids)[0] - model.forward_full(ids)["logits"]).abs().max()))
    return worst


def evaluate(model, tok, docs):
    model_rows = {"heldout": load_jsonl(os.path.join(DATA, "udhr20", "heldout.jsonl"))
                  + load_jsonl(os.path.join(DATA, "debdesc", "heldout.jsonl")),
                  "train": [{"dataset": ds, "lang": lang, "text": text} for lang, ds, _, text, _ in docs]}
    out = {}
    for split, rows in model_rows.items():
        for (ds, lang), (bits, nb) in sorted(bits_per_byte(model, tok, rows).items()):
            out.setdefault(f"{ds}:{lang}", {})[f"{split}_bpb"] = round(bits / nb, 4)
    cl = cloze_accuracy(model, tok, load_jsonl(os.path.join(DATA, "udhr20", "cloze.jsonl")))
    for lang, (n, c, cn) in sorted(cl.items()):
        e = out.setdefault(f"udhr:{lang}", {})
        e.update(cloze_n=n, cloze_acc=round(c / n, 4), cloze_acc_norm=round(cn / n, 4))
    return out


# ---- writing --------------------------------------------------------------------------------------------------------

def tokenizer_config():
    c = make_tiny.tokenizer_config()
    c["added_tokens_decoder"] = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for s, i in sorted(SPECIALS.items(), key=lambda x: x[1])}
    return c


def write_tokenizer(tok, d):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok.to_json(), f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(), f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_checkpoint(d, cfgd, weights, tok):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfgd, f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS, "eos_token_id": IM_END,
                   "transformers_version": cfgd["transformers_version"]}, f, indent=2)
        f.write("\n")
    write_tokenizer(tok, d)
    w = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    safetensors_io.save_file(w, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def load_tokenizer(d):
    """A bytebpe.Tokenizer from a tokenizer.json written by write_tokenizer."""
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    char_byte = {c: b for b, c in zip(bytebpe.BYTE_ORDER, bytebpe.BYTE_CHARS)}
    vocab = tj["model"]["vocab"]
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m.split(" ")
        merges.append((vocab[a], vocab[b]))
    tok = bytebpe.Tokenizer(merges, {t["content"]: t["id"] for t in tj["added_tokens"]})
    for s, i in vocab.items():
        if tok.tok_bytes[i] != bytes(char_byte[c] for c in s):
            raise ValueError(f"{d}/tokenizer.json: token {i} is not the merge of its pair")
    return tok


def train_tokenizer(docs):
    return bytebpe.Tokenizer(bytebpe.train([(t, rep) for _, _, _, t, rep in docs], N_MERGES)[0], SPECIALS)


# ---- main -----------------------------------------------------------------------------------------------------------

def log(f, msg):
    print(msg, flush=True)
    if f:
        f.write(msg + "\n")
        f.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "udhr-moe"))
    ap.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    ap.add_argument("--max-steps", type=int, default=0,
                    help="stop after this many steps, the schedule left as for all epochs (trial runs)")
    ap.add_argument("--lr", type=float, default=TRAIN["lr"])
    ap.add_argument("--batch-tokens", type=int, default=TRAIN["batch_tokens"])
    ap.add_argument("--no-eval", action="store_true", help="write the checkpoint without measuring it")
    ap.add_argument("--log")
    ap.add_argument("--eval-only")
    ap.add_argument("--check-tokenizer")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    TRAIN.update(lr=a.lr, batch_tokens=a.batch_tokens)
    docs, table = mixture()
    lf = open(a.log, "a") if a.log else None

    if a.eval_only:
        tok = load_tokenizer(a.eval_only)
        model = ref_moe.MoeModel(a.eval_only)
        res = evaluate(model, tok, docs)
        print(json.dumps(res, indent=1))
        return 0

    t0 = time.time()
    tok = train_tokenizer(docs)
    log(lf, f"tokenizer: {N_MERGES} merges in {time.time() - t0:.1f} s")
    if a.check_tokenizer:
        d = a.check_tokenizer
        write_tokenizer(tok, d)
        texts = [r["text"] for sub in ("udhr20/train", "udhr20/heldout", "debdesc/train", "debdesc/heldout")
                 for r in load_jsonl(os.path.join(DATA, sub + ".jsonl"))]
        texts += [it["question"] + ch for it in load_jsonl(os.path.join(DATA, "udhr20", "cloze.jsonl"))
                  for ch in it["choices"]]
        texts += [chat_wrap(t) for t in texts[:50]]
        with open(os.path.join(d, "tok-texts.jsonl"), "w", encoding="utf-8") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"t{i}", "text": t}, ensure_ascii=False) + "\n")
        with open(os.path.join(d, "tok-python.txt"), "w") as f:
            for t in texts:
                f.write(" ".join(map(str, tok.encode(t))) + "\n")
        return 0

    cfgd = config()
    cfg = ref_moe.Config(cfgd)
    weights = init_weights(cfg)
    model = build_model(cfgd, weights)
    n_params = sum(v.numel() for v in weights.values())
    decay = [v for k, v in sorted(weights.items()) if v.dim() == 2 and "embed" not in k]
    no_decay = [v for k, v in sorted(weights.items()) if not (v.dim() == 2 and "embed" not in k)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=TRAIN["lr"], betas=TRAIN["betas"])
    cache = {}
    n_batches = len(epoch_batches(docs, tok, 0, cache))
    total = n_batches * a.epochs
    stop = min(total, a.max_steps) if a.max_steps else total
    log(lf, f"params {n_params}; {len(docs)} documents; about {n_batches} batches per epoch; {total} steps; "
            f"lr {TRAIN['lr']}, batches of {TRAIN['batch_tokens']} tokens")
    curve, step, tokens = [], 0, 0
    ema = None
    t_train = time.time()
    for epoch in range(a.epochs):
        for batch in epoch_batches(docs, tok, epoch, cache):
            if step >= stop:
                break
            ids, valid = pad(batch)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total)
            logits, moe = forward(model, ids)
            tgt_valid = valid[:, 1:]
            ce = F.cross_entropy(logits[:, :-1][tgt_valid], ids[:, 1:][tgt_valid])
            bal = balance_loss(moe, valid, cfg.n_experts, cfg.top_k)
            loss = ce + cfgd["router_aux_loss_coef"] * bal
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(weights.values()), TRAIN["clip"])
            opt.step()
            tokens += int(valid.sum())
            step += 1
            ema = float(ce) if ema is None else 0.98 * ema + 0.02 * float(ce)
            if step % 25 == 0 or step == stop:
                el = time.time() - t_train
                curve.append({"step": step, "epoch": epoch, "ce": round(float(ce), 4), "ce_ema": round(ema, 4),
                              "balance": round(float(bal), 4), "tokens": tokens, "seconds": round(el, 1)})
                log(lf, f"step {step}/{total} epoch {epoch} ce {float(ce):.4f} (ema {ema:.4f}) balance "
                        f"{float(bal):.4f} lr {lr_at(step - 1, total):.2e} tokens {tokens} {el:.0f} s "
                        f"({tokens / el:.0f} tok/s)")
        if step >= stop:
            break
    train_seconds = time.time() - t_train
    write_checkpoint(a.out, cfgd, weights, tok)
    if a.no_eval:
        return 0
    # evaluate the checkpoint as written (the reference forward on the stored weights)
    model = ref_moe.MoeModel(a.out)
    t_eval = time.time()
    check = fast_vs_reference(model, tok)
    log(lf, f"training forward vs reference forward: max |diff| of logits {check:.3g}")
    res = evaluate(model, tok, docs)
    log(lf, f"evaluated in {time.time() - t_eval:.0f} s")
    with open(os.path.join(a.out, "languages.tsv"), "w") as f:
        f.write("#lang\ttier\ttrain_units\trepeat\ttrain_bytes_per_epoch\n")
        for r in table:
            f.write(f"{r['lang']}\t{r['tier']}\t{r['articles']}\t{r['repeat']}\t{r['bytes_per_epoch']}\n")
    summary = {"producer": "tests/models/train_udhr_moe.py", "seed": SEED, "torch_version": torch.__version__,
               "threads": torch.get_num_threads(), "params": n_params, "steps": step, "epochs": a.epochs,
               "train_tokens": tokens, "train_seconds": round(train_seconds, 1), "arch": ARCH, "train": TRAIN,
               "chat_fraction": CHAT_FRACTION, "tiers": [list(t) for t in TIERS], "debian_repeat": DEBIAN_REPEAT,
               "final_ce_ema": round(ema, 4), "eval_forward_max_diff": check, "curve": curve, "eval": res}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    for k, v in res.items():
        log(lf, f"{k}\t{json.dumps(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
