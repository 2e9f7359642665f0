# The bundled trained checkpoint tests/models/udhr-moe on its own corpus (tests/data/udhr20): its tokenizer encodes
# held-out texts id for id as the @lenml/tokenizers reference; a capture of held-out articles in four scripts has
# the router logits (and top-k experts) of the PyTorch reference; scoring cloze items gives the reference's
# log-likelihoods, and accuracy.tsv a row per language.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
CAP="$BIN/moetrace-capture"
M="$TESTS/models/udhr-moe"
D="$TESTS/data/udhr20"
have_torch=0
$PY -c 'import torch, h5py' 2>/dev/null && have_torch=1

# tokenizer: the C encoder against the JavaScript reference on every held-out text and 60 cloze continuations
$PY - "$D" "$WORK/texts.jsonl" "$WORK/cloze.jsonl" <<'EOF'
import json, sys
d, out, sub = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l)["text"] for l in open(d + "/heldout.jsonl", encoding="utf-8")]
items = [json.loads(l) for l in open(d + "/cloze.jsonl", encoding="utf-8")][::12]
rows += [it["question"] + it["choices"][0] for it in items]
with open(out, "w", encoding="utf-8") as f:
    for i, t in enumerate(rows):
        f.write(json.dumps({"id": f"t{i}", "text": t}, ensure_ascii=False) + "\n")
# three cloze items of English and three of Amharic for scoring
with open(sub, "w", encoding="utf-8") as f:
    for lang in ("eng_Latn", "amh_Ethi"):
        for line in [l for l in open(d + "/cloze.jsonl", encoding="utf-8") if f'"lang": "{lang}"' in l][:3]:
            f.write(line)
EOF
expect_exit 0 "tokenize held-out texts with the bundled tokenizer" "$CAP" tokenize --jsonl --tokenizer "$M" "$WORK/texts.jsonl"
cp "$WORK/out" "$WORK/ids.txt"
NM=$(sh "$TESTS/tokenizer/setup.sh" 2>/dev/null)
if [ $? -eq 0 ]; then
    if node "$TESTS/tokenizer/oracle.mjs" "$NM" "$M" "$WORK/texts.jsonl" ids >"$WORK/oracle.jsonl" 2>"$WORK/err"; then
        node "$TESTS/tokenizer/compare.mjs" "udhr-moe tokenizer (oracle)" "$WORK/texts.jsonl" "$WORK/oracle.jsonl" "$WORK/ids.txt"
    else not_ok "udhr-moe tokenizer (oracle)" "$(head -c 300 "$WORK/err")"; fi
else
    echo "ok udhr-moe tokenizer (oracle) # SKIP reference packages unavailable"
fi

# capture: two held-out articles in English, Chinese, Hindi and Amharic, logits as f32
expect_exit 0 "capture held-out articles" "$CAP" run --model "$M" --corpus "$D/heldout.jsonl" \
    --langs eng_Latn,zho_Hans,hin_Deva,amh_Ethi --limit 8 --out "$WORK/r1" --dtype f32 --store both --no-sync --json
expect_out "capture: 8 items" '"items_written": ?8'
expect_exit 0 "capture is a valid run" "$BIN/moetrace-info" --deep "$WORK/r1"
if [ $have_torch -eq 1 ]; then
    out=$($PY - "$WORK/r1" "$M" "$TESTS/models" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from ref_moe import MoeModel
m = MoeModel(sys.argv[2])
K = m.cfg.top_k
worst, n, n_tok, n_sel_diff, n_close = 0.0, 0, 0, 0, 0
for shard in sorted(glob.glob(sys.argv[1] + "/shard-*.h5")):
    with h5py.File(shard, "r") as f:
        ids, z, top = f["tok/token_id"][:], f["router/logits"][:], f["router/topk_ids"][:]
        off, cnt = f["seq/token_offset"][:], f["seq/n_tokens"][:]
        for o, c in zip(off, cnt):
            _, routers = m.forward([int(t) for t in ids[o:o + c]])
            ref = torch.stack([r.float() for r in routers], 1).numpy()  # (T, layers, E)
            got = z[o:o + c]
            worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
            srt = -np.sort(-ref, axis=-1)
            clear = (srt[..., K - 1] - srt[..., K]) > 1e-4  # the k-th and (k+1)-th logits not within rounding
            want = np.sort(np.argsort(-ref, axis=-1, kind="stable")[..., :K], axis=-1)
            have = np.sort(top[o:o + c].astype(np.int64), axis=-1)
            n_sel_diff += int((np.any(want != have, axis=-1) & clear).sum())
            n_close += int((~clear).sum())
            n += 1
            n_tok += int(c)
print(n, n_tok, worst, n_sel_diff, n_close)
EOF
)
    set -- $out
    if [ "${1:-0}" -eq 8 ] && $PY -c "import sys; sys.exit(0 if float('${3:-1}') <= 1e-4 else 1)" 2>/dev/null; then
        ok "router logits of $2 tokens equal the reference (max rel err $3)"
    else not_ok "router logits equal the reference" "$out"; fi
    if [ "${4:-x}" = 0 ]; then ok "top-k experts equal the reference's ($5 near-ties left out)"
    else not_ok "top-k experts equal the reference's" "$out"; fi
else
    echo "ok router logits vs reference # SKIP no torch"
fi

# score: three cloze items in English and three in Amharic, the log-likelihoods the reference gives
expect_exit 0 "score cloze items" "$CAP" run --mode score --model "$M" --corpus "$WORK/cloze.jsonl" \
    --prompts "$D/prompts.json" --template cloze --no-chat --out "$WORK/s1" --quiet
n_acc=$(grep -c "	udhr-cloze	accuracy	" "$WORK/s1/accuracy.tsv" 2>/dev/null)
if [ "$n_acc" = 2 ]; then ok "score: accuracy per language"; else not_ok "score accuracy.tsv" "$(cat "$WORK/s1/accuracy.tsv" 2>&1)"; fi
if [ $have_torch -eq 1 ]; then
    chk=$($PY - "$M" "$WORK/s1/items.tsv" "$TESTS/models" "$CAP" "$D/cloze.jsonl" <<'EOF' 2>&1
import json, subprocess, sys, torch
sys.path.insert(0, sys.argv[3])
from ref_moe import MoeModel
m = MoeModel(sys.argv[1])
def ids(texts):
    inp = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    out = subprocess.run([sys.argv[4], "tokenize", "--jsonl", "--tokenizer", sys.argv[1]], input=inp,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return [[int(x) for x in line.split()] for line in out]
items = {(it["unit_id"], it["lang"]): it for it in map(json.loads, open(sys.argv[5], encoding="utf-8"))}
worst, n = 0.0, 0
for row in open(sys.argv[2]).read().splitlines()[1:]:
    f = row.split("\t")
    it = items[(f[0], f[1])]
    got = [float(x) for x in f[7].split(",")]
    enc = ids([it["question"]] + [it["question"] + ch for ch in it["choices"]])
    c = len(enc[0])
    for k, whole in enumerate(enc[1:]):
        logits, _ = m.forward(whole)
        lp = torch.log_softmax(logits.float(), -1)
        ref = sum(float(lp[t - 1, whole[t]]) for t in range(c, len(whole)))
        worst = max(worst, abs(ref - got[k]))
        n += 1
print(n, worst)
EOF
)
    set -- $chk
    if [ "${1:-0}" -eq 24 ] && $PY -c "import sys; sys.exit(0 if float('${2:-1}') < 1e-3 else 1)" 2>/dev/null; then
        ok "cloze log-likelihoods of 24 choices equal the reference (max abs diff $2)"
    else not_ok "cloze log-likelihoods equal the reference" "$chk"; fi
fi
