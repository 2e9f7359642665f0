# moetrace-capture run on the committed tiny checkpoints (tests/models/tiny): usage errors, capture of the bundled
# UDHR corpus into a valid run whose router logits equal the PyTorch reference's, --layers, --resume, steering
# (forced experts in every token's top-k), score and generate end to end into accuracy tables that moetrace-stats
# reads, and a run into moetrace-reduce.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
CAP="$BIN/moetrace-capture"
M="$TESTS/models/tiny"
Q="$M/qwen3_moe"
CORPUS="$TESTS/data/udhr-mini.jsonl"
have_torch=0
$PY -c 'import torch, h5py' 2>/dev/null && have_torch=1

expect_exit 0 "run --help" "$CAP" run --help
expect_out "run help names the modes" "score"
expect_exit 1 "run without --model" "$CAP" run --corpus "$CORPUS" --out "$WORK/x"
expect_err_line "without --model: one line" "are required"
expect_exit 1 "run bad --mode" "$CAP" run --model "$Q" --corpus "$CORPUS" --out "$WORK/x" --mode train
expect_exit 1 "run bad --layers" "$CAP" run --model "$Q" --corpus "$CORPUS" --out "$WORK/x" --layers 0-9
expect_err_line "bad --layers: one line" "1-based MoE layers"
expect_exit 2 "run model dir without config" "$CAP" run --model "$WORK" --corpus "$CORPUS" --out "$WORK/x"
expect_err_line "missing config: names config.json" "config.json"
printf '{"unit_id": "1", "lang": "en", "dataset": "d"}\n' >"$WORK/bad.jsonl"
expect_exit 2 "run corpus item without text" "$CAP" run --model "$Q" --corpus "$WORK/bad.jsonl" --out "$WORK/x"
expect_err_line "bad corpus: file and line" "bad.jsonl:1"
cp -r "$Q" "$WORK/trunc"
f="$WORK/trunc/model.safetensors"
head -c $(($(wc -c <"$f") - 100)) "$f" >"$f.t" && mv "$f.t" "$f"
expect_exit 2 "run truncated safetensors" "$CAP" run --model "$WORK/trunc" --corpus "$CORPUS" --out "$WORK/x"
expect_err_line "truncated weights: names the file" "model.safetensors"

# capture: two languages of the bundled corpus, logits stored as f32
expect_exit 0 "capture udhr" "$CAP" run --model "$Q" --corpus "$CORPUS" --langs eng_Latn,fra_Latn --limit 12 \
    --out "$WORK/r1" --dtype f32 --no-sync --json
expect_out "capture: 12 items" '"items_written": ?12'
expect_exit 0 "captured run is valid (info --deep)" "$BIN/moetrace-info" --deep "$WORK/r1"
expect_exit 0 "captured run json" "$BIN/moetrace-info" --json "$WORK/r1"
expect_out "run records the model type" '"model_type": "qwen3_moe"'

# the tokens are the tokenizer's (chat template on: the tokenizer has one)
n_tok=$("$BIN/moetrace-info" --json "$WORK/r1" | $PY -c 'import json,sys; print(json.load(sys.stdin)["n_tokens"])' 2>/dev/null)
if [ -n "$n_tok" ] && [ "$n_tok" -gt 12 ]; then ok "capture stored tokens ($n_tok)"; else not_ok "capture stored tokens" "n_tokens '$n_tok'"; fi

if [ $have_torch -eq 1 ]; then
    # router logits of every stored token equal the PyTorch reference on the same ids
    out=$($PY - "$WORK/r1" "$Q" "$TESTS/models" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from ref_moe import MoeModel
m = MoeModel(sys.argv[2])
worst, n, roles_ok = 0.0, 0, True
for shard in sorted(glob.glob(sys.argv[1] + "/shard-*.h5")):
    with h5py.File(shard, "r") as f:
        ids, z = f["tok/token_id"][:], f["router/logits"][:]
        off, cnt = f["seq/token_offset"][:], f["seq/n_tokens"][:]
        roles = f["tok/role"][:]
        for o, c in zip(off, cnt):
            _, routers = m.forward([int(t) for t in ids[o:o + c]])
            ref = torch.stack([r.float() for r in routers], 1).numpy()
            got = z[o:o + c]
            worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)))
            roles_ok &= bool((roles[o:o + c] == 1).any() and (roles[o:o + c] == 0).any())
            n += 1
print(n, worst, roles_ok)
EOF
)
    set -- $out
    if [ "${1:-0}" -eq 12 ] && $PY -c "import sys; sys.exit(0 if float('${2:-1}') <= 1e-4 else 1)" 2>/dev/null; then
        ok "captured router logits equal the reference (max rel err $2)"
    else not_ok "captured router logits equal the reference" "$out"; fi
    if [ "${3:-}" = "True" ]; then ok "chat template tokens are role template, text tokens role prompt"
    else not_ok "roles" "$out"; fi
else
    echo "ok captured logits vs reference # skip: no torch"
fi

# --layers: one MoE layer recorded, identical to that layer of the full capture
expect_exit 0 "capture --layers 2" "$CAP" run --model "$Q" --corpus "$CORPUS" --langs eng_Latn,fra_Latn \
    --limit 12 --out "$WORK/r2" --dtype f32 --no-sync --layers 2 --quiet
if [ $have_torch -eq 1 ]; then
    same=$($PY - "$WORK/r1" "$WORK/r2" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np
a = h5py.File(sorted(glob.glob(sys.argv[1] + "/shard-*.h5"))[0], "r")["router/logits"][:]
b = h5py.File(sorted(glob.glob(sys.argv[2] + "/shard-*.h5"))[0], "r")["router/logits"][:]
print(b.shape[1] == 1 and np.array_equal(a[:, 1], b[:, 0]))
EOF
)
    if [ "$same" = "True" ]; then ok "--layers 2 equals layer 2 of the full capture"; else not_ok "--layers 2" "$same"; fi
fi

# --resume: the first 4 items, then all 12 with the 4 skipped
expect_exit 0 "capture first 4" "$CAP" run --model "$Q" --corpus "$CORPUS" --langs eng_Latn,fra_Latn --limit 4 \
    --out "$WORK/r3" --no-sync --quiet
expect_exit 1 "capture into an existing run" "$CAP" run --model "$Q" --corpus "$CORPUS" --out "$WORK/r3" --limit 4
expect_exit 0 "capture --resume" "$CAP" run --model "$Q" --corpus "$CORPUS" --langs eng_Latn,fra_Latn --limit 12 \
    --out "$WORK/r3" --no-sync --resume --json
expect_out "resume skipped the 4 stored items" '"items_skipped_resume": ?4'
expect_out "resume wrote the other 8" '"items_written": ?8'
expect_exit 0 "resumed run is valid" "$BIN/moetrace-info" --deep "$WORK/r3"

# steering: force experts 1 and 6 into the top-k of MoE layer 2 (0-based 1); the trace records the steered logits
n_moe=$($PY -c "import json; c=json.load(open('$Q/config.json')); L=c['num_hidden_layers']; \
print(sum(1 for i in range(L) if i not in c.get('mlp_only_layers', []) and (i+1) % c.get('decoder_sparse_step',1) == 0))")
$PY - "$Q" "$WORK/hard.json" "$n_moe" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
L, E, K = int(sys.argv[3]), c["num_experts"], c["num_experts_per_tok"]
moe = [i for i in range(c["num_hidden_layers"]) if i not in c.get("mlp_only_layers", []) and (i + 1) % c.get("decoder_sparse_step", 1) == 0]
coef = [[0.0] * E for _ in range(L)]
coef[1][1] = coef[1][6] = 1.0
json.dump({"format": "moetrace-steering", "format_version": 1, "producer": "test", "name": "hard",
           "model_id": c.get("_name_or_path") or "qwen3_moe", "n_layers": L, "n_experts": E, "top_k": K,
           "layer_index": moe, "indexing": "0-based", "op": "hard", "lambda": 0.5, "eps_mode": "fixed",
           "eps": 0.01, "seed": 1, "target_layers": [1], "experts": [[1, 1], [1, 6]], "scores": [None, None],
           "provenance": {}, "coef": coef}, open(sys.argv[2], "w"))
EOF
expect_exit 0 "capture --steer hard" "$CAP" run --model "$Q" --corpus "$CORPUS" --langs eng_Latn --limit 3 \
    --out "$WORK/r4" --dtype f32 --no-sync --quiet --steer "$WORK/hard.json"
expect_exit 0 "steered run json" "$BIN/moetrace-info" --json "$WORK/r4"
expect_out "the trace records the steering" 'hard'
if [ $have_torch -eq 1 ]; then
    forced=$($PY - "$WORK/r4" "$WORK/hard.json" "$TESTS/../capture/python" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np, torch
sys.path.insert(0, sys.argv[3])
import moetrace
f = h5py.File(sorted(glob.glob(sys.argv[1] + "/shard-*.h5"))[0], "r")
z = torch.as_tensor(f["router/logits"][:])  # the raw gate outputs (FORMAT.md 2.2); the spec gives the steered ones
k = int(f.attrs["top_k"])
st, _ = moetrace.SteeringFile.load(sys.argv[2]).apply(z[:, 1], 1, None)
top = torch.topk(st, k, -1).indices
flags = f["seq/flags"][:]
print(bool(all(1 in t and 6 in t for t in top.tolist()) and (flags & 2).all()), z.shape[0])
EOF
)
    case "$forced" in True*) ok "hard steering: experts 1 and 6 in every token's top-k, sequences flagged steered";; *) not_ok "hard steering" "$forced";; esac
fi
printf '%s\n' '{"format": "moetrace-steering"}' >"$WORK/badsteer.json"
expect_exit 2 "capture --steer malformed file" "$CAP" run --model "$Q" --corpus "$CORPUS" --limit 1 \
    --out "$WORK/r5" --steer "$WORK/badsteer.json"
expect_err_line "malformed steering: one line naming it" "badsteer.json"

# score: a multiple-choice set; accuracy per language that moetrace-stats reads
cat >"$WORK/mc.jsonl" <<'EOF'
{"unit_id": "1", "lang": "eng_Latn", "dataset": "mc", "passage": "The cat sat on the mat.", "question": "Where did the cat sit?", "choices": ["mat", "hat", "bat", "cat"], "answer": 0}
{"unit_id": "1", "lang": "fra_Latn", "dataset": "mc", "passage": "Le chat est sur le tapis.", "question": "Où est le chat ?", "choices": ["tapis", "chapeau", "lit", "mur"], "answer": "A"}
{"unit_id": "2", "lang": "eng_Latn", "dataset": "mc", "passage": "It rains.", "question": "Weather?", "choices": ["sun", "rain", "snow", "wind"], "answer": "rain"}
{"unit_id": "2", "lang": "fra_Latn", "dataset": "mc", "passage": "Il pleut.", "question": "Le temps ?", "choices": ["soleil", "pluie", "neige", "vent"], "answer": 1}
EOF
expect_exit 0 "score" "$CAP" run --mode score --model "$Q" --corpus "$WORK/mc.jsonl" --out "$WORK/s1" \
    --trace "$WORK/s1run" --no-sync --quiet
n_acc=$(grep -c "	mc	accuracy	" "$WORK/s1/accuracy.tsv" 2>/dev/null)
if [ "$n_acc" = 2 ]; then ok "score: accuracy per language"; else not_ok "score accuracy.tsv" "$(cat "$WORK/s1/accuracy.tsv" 2>&1)"; fi
n_items=$(($(wc -l <"$WORK/s1/items.tsv") - 1))
if [ "$n_items" -eq 4 ]; then ok "score: one line per item"; else not_ok "score items" "$n_items"; fi
expect_exit 0 "score trace is valid" "$BIN/moetrace-info" --deep "$WORK/s1run"
if [ $have_torch -eq 1 ]; then
    # the log-likelihoods equal the reference's sum of log-softmax over the continuation tokens
    chk=$($PY - "$Q" "$WORK/s1/items.tsv" "$TESTS/models" "$CAP" "$WORK" <<'EOF' 2>&1
import json, subprocess, sys, torch
sys.path.insert(0, sys.argv[3])
from ref_moe import MoeModel
m = MoeModel(sys.argv[1])
def ids(text):
    out = subprocess.run([sys.argv[4], "tokenize", "--jsonl", "--tokenizer", sys.argv[1]], input=json.dumps({"text": text}),
                         capture_output=True, text=True, check=True).stdout.split()
    return [int(x) for x in out]
prompt = "P: The cat sat on the mat.\nQ: Where did the cat sit?\nA: mat\nB: hat\nC: bat\nD: cat\nAnswer:"
row = open(sys.argv[2]).read().splitlines()[1].split("\t")
got = [float(x) for x in row[7].split(",")]
worst = 0
for k, letter in enumerate("ABCD"):
    ctx, whole = ids(prompt), ids(prompt + " " + letter)
    logits, _ = m.forward(whole)
    lp = torch.log_softmax(logits.float(), -1)
    ref = sum(float(lp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))
    worst = max(worst, abs(ref - got[k]))
print(worst)
EOF
)
    if $PY -c "import sys; sys.exit(0 if float('$chk') < 1e-3 else 1)" 2>/dev/null; then
        ok "score log-likelihoods equal the reference (max abs diff $chk)"
    else not_ok "score log-likelihoods" "$chk"; fi
fi

# generate: greedy decoding with the cache; items.tsv holds the text, accuracy per language
printf '%s\n' '{"unit_id": "1", "lang": "eng_Latn", "dataset": "mgsm", "question": "2 + 2 = ?", "answer": 4}' \
    '{"unit_id": "1", "lang": "fra_Latn", "dataset": "mgsm", "question": "2 + 2 = ?", "answer": "4"}' >"$WORK/gen.jsonl"
expect_exit 0 "generate" "$CAP" run --mode generate --model "$Q" --corpus "$WORK/gen.jsonl" --out "$WORK/g1" \
    --max-new 6 --trace "$WORK/g1run" --no-sync --quiet
n_gen=$(grep -c "	mgsm	accuracy	" "$WORK/g1/accuracy.tsv" 2>/dev/null)
if [ "$n_gen" = 2 ]; then ok "generate: accuracy per language"; else not_ok "generate accuracy.tsv" "$(cat "$WORK/g1/accuracy.tsv" 2>&1)"; fi
expect_exit 0 "generate trace is valid" "$BIN/moetrace-info" --deep "$WORK/g1run"
expect_exit 0 "generated tokens are recorded" "$BIN/moetrace-info" --json "$WORK/g1run"

# end to end: a capture into moetrace-reduce, divergence from English for every MoE layer
expect_exit 0 "capture 3 languages" "$CAP" run --model "$Q" --corpus "$CORPUS" --langs eng_Latn,fra_Latn,zho_Hans \
    --limit 18 --out "$WORK/r6" --no-sync --quiet
expect_exit 0 "reduce the capture" "$BIN/moetrace-reduce" "$WORK/r6" -o "$WORK/t6"
n_div=$(grep -vc '^#' "$WORK/t6/div_from_en.tsv" 2>/dev/null)
if [ "$n_div" -eq $((2 * n_moe)) ]; then ok "div_from_en: 2 languages x $n_moe layers"; else not_ok "div_from_en rows" "$n_div"; fi

# a capture killed with SIGKILL mid-run, then resumed: every finished shard is kept, the run ends complete and valid
$PY - "$CORPUS" "$WORK/big.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for rep in range(12):
        for r in rows:
            f.write(json.dumps(dict(r, unit_id=f"{r['unit_id']}-{rep}"), ensure_ascii=False) + "\n")
PYEOF
total=$(wc -l <"$WORK/big.jsonl")
"$CAP" run --model "$Q" --corpus "$WORK/big.jsonl" --out "$WORK/r8" --batch 64 --threads 1 --shard-bytes 64K \
    --quiet >/dev/null 2>&1 &
pid=$!
sleep 1.5
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
# every finished shard counts, also one renamed just before the kill but not yet in the manifest (resume adopts
# it; moetrace-info lists it apart as an orphan)
stored_before=$($PY -c 'import glob, h5py, sys; print(sum(len(h5py.File(f, "r")["seq/seq_id"]) for f in glob.glob(sys.argv[1] + "/shard-*.h5")))' "$WORK/r8" 2>/dev/null || echo 0)
# a resume must be given what decides the stored bits (here --batch); anything else is refused before a shard is
# touched, naming the setting
expect_exit 2 "resume with another --batch refused" "$CAP" run --model "$Q" --corpus "$WORK/big.jsonl" \
    --out "$WORK/r8" --resume --batch 32 --shard-bytes 64K --quiet
expect_err_line "resume with another --batch: names the setting and both values" "'batch' 64 in the run, 32 now"
expect_exit 2 "resume with steering the run did not have refused" "$CAP" run --model "$Q" --corpus "$WORK/big.jsonl" \
    --out "$WORK/r8" --resume --batch 64 --shard-bytes 64K --quiet --steer "$Q/steer_hard.json"
expect_err_line "resume with other steering: says so" "resumed with other steering than the run was started with"
expect_exit 2 "resume with --langs the run did not have refused" "$CAP" run --model "$Q" --corpus "$WORK/big.jsonl" \
    --out "$WORK/r8" --resume --batch 64 --langs eng_Latn --shard-bytes 64K --quiet
expect_err_line "resume with --langs: names it" "'langs' null in the run, \"eng_Latn\" now"
# the same files by a relative path from another directory are the same settings (paths are recorded resolved)
expect_exit 0 "resume after SIGKILL (relative paths, another directory)" sh -c 'cd "$1" && shift && exec "$@"' sh \
    "$(dirname "$WORK")" "$CAP" run --model "$Q" --corpus "$(basename "$WORK")/big.jsonl" --out "$WORK/r8" --resume \
    --batch 64 --shard-bytes 64K --json
skipped=$(sed -n 's/.*"items_skipped_resume": *\([0-9]*\).*/\1/p' "$WORK/out")
if [ -n "$skipped" ] && [ "$skipped" -eq "${stored_before:-0}" ]; then
    ok "resume kept the $skipped sequences finished before the kill"
else not_ok "resume after kill" "skipped '$skipped', stored before '$stored_before'"; fi
n_after=$("$BIN/moetrace-info" --json "$WORK/r8" | $PY -c 'import json,sys; print(json.load(sys.stdin)["n_sequences"])')
if [ "$n_after" -eq "$total" ]; then ok "resumed run holds all $total sequences"; else not_ok "resumed run" "$n_after of $total"; fi
expect_exit 0 "resumed run is valid (info --deep)" "$BIN/moetrace-info" --deep "$WORK/r8"

# other corpus forms: a FLORES-style directory (one file per language, line-aligned) and a TSV
mkdir -p "$WORK/flores"
$PY - "$CORPUS" "$WORK/flores" "$WORK/c.tsv" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
for lang in ("eng_Latn", "fra_Latn"):
    with open(f"{sys.argv[2]}/{lang}.dev", "w", encoding="utf-8") as f:
        for r in [r for r in rows if r["lang"] == lang][:5]:
            f.write(r["text"] + "\n")
with open(sys.argv[3], "w", encoding="utf-8") as f:
    f.write("unit_id\tlang\tdataset\ttext\n")
    for r in rows[:6]:
        f.write(f"{r['unit_id']}\t{r['lang']}\tudhr\t{r['text']}\n")
PYEOF
expect_exit 0 "capture a FLORES-style directory" "$CAP" run --model "$Q" --corpus "$WORK/flores" --out "$WORK/r9" \
    --no-sync --json
expect_out "flores: 10 items" '"items_written": ?10'
expect_exit 0 "flores run json" "$BIN/moetrace-info" --json "$WORK/r9"
expect_out "flores: 5 parallel units" '"n_units": ?5'
expect_exit 0 "capture a TSV corpus" "$CAP" run --model "$Q" --corpus "$WORK/c.tsv" --out "$WORK/r10" --no-sync --json
expect_out "tsv: 6 items" '"items_written": ?6'
# scoring through the chat template (the prompt as one user turn, the continuation after the assistant prompt)
expect_exit 0 "score --chat" "$CAP" run --mode score --chat --model "$Q" --corpus "$WORK/mc.jsonl" --out "$WORK/s2" \
    --no-sync --quiet
cp -r "$Q" "$WORK/notemplate"
$PY -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c.pop('chat_template', None); json.dump(c, open(p, 'w'))" \
    "$WORK/notemplate/tokenizer_config.json"
expect_exit 1 "score --chat without a template" "$CAP" run --mode score --chat --model "$WORK/notemplate" \
    --corpus "$WORK/mc.jsonl" --out "$WORK/s3"
expect_err_line "no template: one line" "no chat template"

# a chat item: scaffolding is role template (0), the user turn prompt (1), the assistant turn response (2)
printf '%s\n' '{"unit_id": "1", "lang": "eng_Latn", "dataset": "chat", "messages": [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Two plus two is four."}]}' >"$WORK/chat.jsonl"
expect_exit 0 "capture a chat item" "$CAP" run --model "$Q" --corpus "$WORK/chat.jsonl" --out "$WORK/r11" --no-sync --quiet
if [ $have_torch -eq 1 ]; then
    roles=$($PY - "$WORK/r11" "$CAP" "$Q" <<'PYEOF' 2>&1
import glob, subprocess, sys, h5py
f = h5py.File(glob.glob(sys.argv[1] + "/shard-*.h5")[0], "r")
r = list(f["tok/role"][:])
runs = [r[0]] + [b for a, b in zip(r, r[1:]) if a != b]
# the user text and the assistant text, each as the tokenizer encodes it alone, appear under their roles
def enc(t):
    return subprocess.run([sys.argv[2], "tokenize", "--tokenizer", sys.argv[3]], input=t, capture_output=True,
                          text=True, check=True).stdout.split()
ids = [str(x) for x in f["tok/token_id"][:]]
p = [i for i, x in zip(ids, r) if x == 1]
a = [i for i, x in zip(ids, r) if x == 2]
print(runs == [0, 1, 0, 2, 0] and p == enc("What is two plus two?") and a == enc("Two plus two is four."))
PYEOF
)
    if [ "$roles" = "True" ]; then ok "chat roles: template / prompt / response"; else not_ok "chat roles" "$roles"; fi
fi
# the score trace goes through moetrace-reduce like any capture
expect_exit 0 "reduce the score trace" "$BIN/moetrace-reduce" "$WORK/s1run" -o "$WORK/t7"

# closing the loop: the same multiple-choice set scored without and with the steering file, the effect per
# language by moetrace-stats
$PY - "$WORK/mc.jsonl" "$WORK/mc4.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for lang in ("eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl", "zho_Hans"):
        for r in rows:
            f.write(json.dumps(dict(r, lang=lang, unit_id=r["unit_id"] + r["lang"][:3]), ensure_ascii=False) + "\n")
PYEOF
expect_exit 0 "score baseline (5 languages)" "$CAP" run --mode score --model "$Q" --corpus "$WORK/mc4.jsonl" \
    --out "$WORK/e0" --no-sync --quiet
expect_exit 0 "score under steering" "$CAP" run --mode score --model "$Q" --corpus "$WORK/mc4.jsonl" \
    --out "$WORK/e1" --no-sync --quiet --steer "$WORK/hard.json"
expect_exit 0 "steering effect (moetrace-stats effect)" "$BIN/moetrace-stats" effect --baseline "$WORK/e0/accuracy.tsv" \
    --steered "$WORK/e1/accuracy.tsv" --steer "$WORK/hard.json" --task mc --json
expect_out "effect names the operation" '"op": ?"hard'
if cmp -s "$WORK/e0/items.tsv" "$WORK/e1/items.tsv"; then not_ok "steering changes the log-likelihoods" "items.tsv identical"
else ok "steering changes the log-likelihoods"; fi

# steering files selected by moetrace-stats from this model's own tables carry its MoE layer map and top-k, and
# every one of them (task and controls, hard: at most top-k forced per layer) steers the engine
expect_exit 0 "score with a routing trace" "$CAP" run --mode score --model "$Q" --corpus "$WORK/mc4.jsonl" \
    --out "$WORK/e2" --trace "$WORK/e2run" --no-sync --quiet
expect_exit 0 "reduce capture + score traces" "$BIN/moetrace-reduce" "$WORK/r1" "$WORK/e2run" -o "$WORK/t8"
expect_exit 0 "stats steer from the engine's tables" "$BIN/moetrace-stats" steer --tables "$WORK/t8" --dataset mc \
    --generic udhr --tau 0.01 --band 1-2 --op hard --out "$WORK/st8"
nfiles=0
for f in "$WORK"/st8/*.h5; do
    [ -f "$f" ] || continue
    nfiles=$((nfiles + 1))
    if "$CAP" run --mode score --model "$Q" --corpus "$WORK/mc.jsonl" --out "$WORK/e3" --steer "$f" --no-sync \
        --quiet 2>"$WORK/err"; then ok "steers the engine: $(basename "$f")"
    else not_ok "steers the engine: $(basename "$f")" "$(cat "$WORK/err")"; fi
done
if [ "$nfiles" -ge 4 ]; then ok "stats wrote $nfiles steering files"; else not_ok "stats steering files" "$nfiles"; fi

# phimoe (Phi-3.5-MoE: LayerNorm, biases, LongRoPE, sparsemixer) end to end: capture -> the trace records
# sparsemixer with its eps -> logits equal the reference -> moetrace-reduce with the model's own weights (checked
# against an independent NumPy sparsemixer and the serial reference) -> moetrace-stats band and correlate
PH="$M/phimoe"
PL=eng_Latn,fra_Latn,deu_Latn,rus_Cyrl,zho_Hans
expect_exit 0 "phimoe: capture 5 languages" "$CAP" run --model "$PH" --corpus "$CORPUS" --langs "$PL" --limit 40 \
    --out "$WORK/ph" --dtype f32 --no-sync --quiet
expect_exit 0 "phimoe: run is valid (info --deep)" "$BIN/moetrace-info" --deep "$WORK/ph"
expect_exit 0 "phimoe: info --json" "$BIN/moetrace-info" --json "$WORK/ph"
expect_out "phimoe: the trace records sparsemixer" '"score_fn": "sparsemixer"'
expect_out "phimoe: with the config's jitter eps" '"sparsemixer_eps": 0.1[0-9]*,?$'
expect_exit 0 "phimoe: reduce --weights topk" "$BIN/moetrace-reduce" "$WORK/ph" -o "$WORK/pht" --weights topk -q
expect_exit 0 "phimoe: serial reference --weights topk" "$BIN/moetrace-reduce" reference "$WORK/ph" \
    -o "$WORK/phref.h5" --weights topk -q
if [ $have_torch -eq 1 ]; then
    out=$($PY - "$WORK/ph" "$PH" "$TESTS/models" "$WORK/pht/summaries.h5" "$WORK/phref.h5" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np
sys.path.insert(0, sys.argv[3])
from ref_moe import MoeModel
m = MoeModel(sys.argv[2])
eps = m.cfg.sparsemixer_eps
def sparsemixer(z):  # (E,) float64 -> weights (E,), zero outside the two chosen experts
    w, done = np.zeros_like(z), []
    for e in np.argsort(-z, kind="stable")[:2]:
        keep = [j for j in range(len(z)) if j not in done and not (z[e] - z[j]) / max(abs(z[j]), z[e]) > 2 * eps]
        w[e] = 1.0 / np.exp(z[keep] - z[e]).sum()
        done.append(e)
    return w
worst, n, q = 0.0, 0, {}
for shard in sorted(glob.glob(sys.argv[1] + "/shard-*.h5")):
    with h5py.File(shard, "r") as f:
        ids, z = f["tok/token_id"][:], f["router/logits"][:].astype(np.float64)
        for sid, o, c in zip(f["seq/seq_id"][:], f["seq/token_offset"][:], f["seq/n_tokens"][:]):
            _, routers = m.forward([int(t) for t in ids[o:o + c]])
            ref = np.stack([r.float().numpy() for r in routers], 1)
            worst = max(worst, float(np.abs(z[o:o + c] - ref).max() / np.abs(ref).max()))
            q[int(sid)] = np.mean([[sparsemixer(z[t, l]) for l in range(z.shape[1])] for t in range(o, o + c)], 0)
            n += 1
errs = []
for path in sys.argv[4:]:
    with h5py.File(path, "r") as s:
        got = dict(zip(s["seq/seq_id"][:].tolist(), s["importance"][:]))
        errs.append(max(float(np.abs(got[k] - v).max()) for k, v in q.items()))
sums = np.array([v.sum(-1) for v in q.values()])
print(n, worst, errs[0], errs[1], bool((sums < 1.999).any() and (sums > 1.0).all()))
EOF
)
    set -- $out
    if [ "${1:-0}" -eq 40 ] && $PY -c "import sys; sys.exit(0 if float('${2:-1}') <= 1e-4 else 1)" 2>/dev/null; then
        ok "phimoe: captured router logits equal the reference (max rel err $2)"
    else not_ok "phimoe: captured logits vs reference" "$out"; fi
    if $PY -c "import sys; sys.exit(0 if max(float('${3:-1}'), float('${4:-1}')) <= 1e-6 else 1)" 2>/dev/null; then
        ok "phimoe: --weights topk importance = NumPy sparsemixer (optimised $3, reference $4)"
    else not_ok "phimoe: sparsemixer importance" "$out"; fi
    if [ "${5:-}" = True ]; then ok "phimoe: sparsemixer weights are neither a softmax nor renormalised (sums in (1, 2))"
    else not_ok "phimoe: sparsemixer weight sums" "$out"; fi
fi
n_div=$(grep -vc '^#' "$WORK/pht/div_from_en.tsv" 2>/dev/null)
if [ "$n_div" -eq 12 ]; then ok "phimoe: div_from_en: 4 languages x 3 layers"; else not_ok "phimoe: div_from_en rows" "$n_div"; fi
expect_exit 0 "phimoe: stats band" "$BIN/moetrace-stats" band --tables "$WORK/pht" --band detect
expect_out "phimoe: band lists the 3 MoE layers" '^3	'
# a multiple-choice set whose items differ per language (passages from the corpus), so accuracy varies
$PY - "$CORPUS" "$WORK/phmc.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for lang in ("eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl", "zho_Hans"):
        for i, r in enumerate([r for r in rows if r["lang"] == lang][:8]):
            words = r["text"].split() or [r["text"]]
            choices = [words[j % len(words)][:12] for j in (0, 3, 5, 8)]
            f.write(json.dumps({"unit_id": f"{i}", "lang": lang, "dataset": "mc", "passage": r["text"][:80],
                                "question": "?", "choices": choices, "answer": (i * 7 + len(lang)) % 4},
                               ensure_ascii=False) + "\n")
PYEOF
expect_exit 0 "phimoe: score (5 languages)" "$CAP" run --mode score --model "$PH" --corpus "$WORK/phmc.jsonl" \
    --out "$WORK/phs" --no-sync --quiet
expect_exit 0 "phimoe: stats correlate" "$BIN/moetrace-stats" correlate --tables "$WORK/pht" \
    --accuracy "$WORK/phs/accuracy.tsv" --band 1-3 --bootstrap 200 --permutations 200
expect_out "phimoe: correlate gives its verdict" '^# verdict: '

# deepseek_v2 (latent attention, shared experts, DeepSeek's router) end to end: the trace stores the raw f32 gate
# logits (as the reference computes them) and, for noaux_tc, the selection-only correction bias of every MoE layer
# (of the recorded ones with --layers), which moetrace-reduce carries into its summaries
for ds in deepseek_v2 deepseek_v2_noaux; do
    expect_exit 0 "$ds: capture" "$CAP" run --model "$M/$ds" --corpus "$CORPUS" --langs eng_Latn,fra_Latn,zho_Hans \
        --limit 12 --out "$WORK/$ds" --dtype f32 --no-sync --quiet
    expect_exit 0 "$ds: run is valid (info --deep)" "$BIN/moetrace-info" --deep "$WORK/$ds"
    expect_exit 0 "$ds: reduce" "$BIN/moetrace-reduce" "$WORK/$ds" -o "$WORK/$ds-t" -q
    if [ $have_torch -eq 1 ]; then
        out=$($PY - "$WORK/$ds" "$M/$ds" "$TESTS/models" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np
sys.path.insert(0, sys.argv[3])
from ref_moe import MoeModel
m = MoeModel(sys.argv[2])
worst, n, bias_ok = 0.0, 0, True
for shard in sorted(glob.glob(sys.argv[1] + "/shard-*.h5")):
    with h5py.File(shard, "r") as f:
        ids, z = f["tok/token_id"][:], f["router/logits"][:]
        for o, c in zip(f["seq/token_offset"][:], f["seq/n_tokens"][:]):
            _, routers = m.forward([int(t) for t in ids[o:o + c]])
            ref = np.stack([r.float().numpy() for r in routers], 1)
            worst = max(worst, float(np.abs(z[o:o + c] - ref).max() / np.abs(ref).max()))
            n += 1
        want = [m.w[f"model.layers.{l}.mlp.gate.e_score_correction_bias"].numpy() for l in m.cfg.moe_layers] \
            if m.cfg.topk_method == "noaux_tc" else None
        has = bool(f.attrs["selection_bias"])
        bias_ok &= (has and np.array_equal(f["router/selection_bias"][:], np.stack(want))) if want else not has
        bias_ok &= f.attrs["score_fn"] == m.cfg.scoring and bool(f.attrs["renormalize"]) == m.cfg.norm_topk_prob
print(n, worst, bias_ok)
EOF
)
        set -- $out
        if [ "${1:-0}" -eq 12 ] && $PY -c "import sys; sys.exit(0 if float('${2:-1}') <= 1e-4 else 1)" 2>/dev/null; then
            ok "$ds: captured f32 router logits equal the reference (max rel err $2)"
        else not_ok "$ds: captured logits vs reference" "$out"; fi
        if [ "${3:-}" = True ]; then ok "$ds: score function, renormalisation and correction bias recorded"
        else not_ok "$ds: routing description" "$out"; fi
    fi
done
expect_exit 0 "deepseek_v2_noaux: capture --layers 2" "$CAP" run --model "$M/deepseek_v2_noaux" --corpus "$CORPUS" \
    --langs eng_Latn --limit 2 --out "$WORK/dsl" --no-sync --quiet --layers 2
if [ $have_torch -eq 1 ]; then
    same=$($PY - "$WORK/dsl" "$M/deepseek_v2_noaux" "$TESTS/models" <<'EOF' 2>&1
import glob, sys, h5py, numpy as np
sys.path.insert(0, sys.argv[3])
import safetensors_io
w = safetensors_io.load_checkpoint(sys.argv[2], numpy=True)
f = h5py.File(sorted(glob.glob(sys.argv[1] + "/shard-*.h5"))[0], "r")
print(np.array_equal(f["router/selection_bias"][:], w["model.layers.1.mlp.gate.e_score_correction_bias"][None]))
EOF
)
    if [ "$same" = True ]; then ok "deepseek_v2_noaux: --layers 2 stores that layer's correction bias"
    else not_ok "deepseek_v2_noaux: --layers bias" "$same"; fi
fi
