# Regression tests for defects found by a hostile-input and fault battery: a full disk under every writer, flipped
# bits in a shard, templates that nest, loop or repeat without bound, shards that disagree with their run or with
# themselves, incomplete or out-of-range stats tables, error details, and resumes that must equal one whole run.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
CAP="$BIN/moetrace-capture"
ST="$BIN/moetrace-stats"
R="$BIN/moetrace-reduce"
Q="$TESTS/models/tiny/qwen3_moe"
CORPUS="$TESTS/data/udhr-mini.jsonl"
MS="$TESTS/python/make_stream.py"

nseq() { "$TOOLS/mtr_dump" "$1" 2>/dev/null | wc -l; }

# ---- 1. a full disk under synth, run and ingest (tests/cli/disk_full.sh, in a tmpfs: as root, else in a user
# namespace of our own where mounting one is allowed) ----
if [ "$(id -u)" -eq 0 ]; then
    sh "$TESTS/cli/disk_full.sh"
elif unshare -rm true 2>/dev/null; then
    unshare -rm sh "$TESTS/cli/disk_full.sh"
else
    echo "ok disk full # skip: no tmpfs can be mounted (not root, no user namespaces)"
fi

# ---- 12. a killed synth run is continued by synth --resume, which equals a whole run ----
SYN="--layers 6 --experts 16 --units 60 --shard-bytes 100K --seed 9 --no-progress --quiet"
$CAP synth --out "$WORK/k" $SYN --threads 1 2>/dev/null &
pid=$!
i=0
while [ $i -lt 200 ] && ! ls "$WORK/k"/shard-*.h5 >/dev/null 2>&1; do sleep 0.05; i=$((i + 1)); done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if grep -q '"complete": false' "$WORK/k/run.json"; then ok "synth killed part-way"; else not_ok "synth killed part-way" "the run finished first"; fi
expect_exit 1 "synth on a killed run without --resume: exit 1" $CAP synth --out "$WORK/k" $SYN
expect_err_line "synth on a killed run: names the way out" "continue it with --resume"
expect_exit 2 "synth --resume with other parameters is refused" $CAP synth --out "$WORK/k" $SYN --seed 10 --resume
expect_err_line "synth --resume, other parameters: names the one that differs" "truth.json: the run was made with seed 9, not 10"
expect_exit 0 "synth --resume completes a killed run" $CAP synth --out "$WORK/k" $SYN --resume --json
expect_out "synth --resume keeps what was stored" '"n_skipped": [1-9]'
$CAP synth --out "$WORK/k-whole" $SYN
"$TOOLS/mtr_dump" "$WORK/k" --logits "$WORK/k.f32" >"$WORK/k.seq" 2>&1
"$TOOLS/mtr_dump" "$WORK/k-whole" --logits "$WORK/k-whole.f32" >"$WORK/k-whole.seq" 2>&1
if [ "$(wc -l <"$WORK/k-whole.seq")" -gt 0 ] && cmp -s "$WORK/k.seq" "$WORK/k-whole.seq" &&
    cmp -s "$WORK/k.f32" "$WORK/k-whole.f32"; then
    ok "synth --resume: the run equals a whole run (sequences and logits)"
else not_ok "synth --resume: the run equals a whole run" "$(wc -l <"$WORK/k.seq") vs $(wc -l <"$WORK/k-whole.seq") sequences"; fi
expect_exit 0 "synth --resume: the run is complete and valid" "$BIN/moetrace-info" --deep "$WORK/k"

# ---- 4. a shard whose root stored_dtype disagrees with its logits' dtype attribute is refused ----
SMALL="--layers 4 --experts 8 --top-k 2 --units 4 --langs eng_Latn:1,fra_Latn:0.6 --datasets flores,math --len-mean 12 --no-progress --quiet"
$CAP synth --out "$WORK/d4" $SMALL --shard-bytes 4K --seed 4
$PY - "$WORK/d4/shard-000001.h5" <<'PYEOF'
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    f.attrs["stored_dtype"] = "f16"   # the logits stay bf16 (dataset attribute dtype)
PYEOF
expect_exit 2 "stored_dtype disagreeing with the logits dtype: info refuses" "$BIN/moetrace-info" --deep "$WORK/d4"
expect_err_line "stored_dtype disagreement: one line naming shard and both" "shard-000001.h5: .*dtype 'bf16'.*stored_dtype 'f16'"
expect_exit 2 "stored_dtype disagreement: reduce refuses" "$R" summarize "$WORK/d4" -o "$WORK/d4.h5"

# ---- 5. run consistency: a shard listed twice, a shard of another run ----
$CAP synth --out "$WORK/d5" $SMALL --shard-bytes 4K --seed 5 --run-id run-a
$CAP synth --out "$WORK/d5b" $SMALL --shard-bytes 4K --seed 6 --run-id run-b
cp -r "$WORK/d5" "$WORK/d5twice"
$PY - "$WORK/d5twice/run.json" <<'PYEOF'
import sys, json
m = json.load(open(sys.argv[1]))
m["shards"].append(dict(m["shards"][0]))
json.dump(m, open(sys.argv[1], "w"))
PYEOF
expect_exit 2 "a shard listed twice in run.json: info refuses" "$BIN/moetrace-info" --deep "$WORK/d5twice"
expect_err_line "shard listed twice: one line naming it" "run.json lists shard-000000.h5 twice"
expect_exit 2 "a shard listed twice: reduce refuses" "$R" summarize "$WORK/d5twice" -o "$WORK/d5twice.h5"
cp -r "$WORK/d5" "$WORK/d5other"
cp "$WORK/d5b/shard-000001.h5" "$WORK/d5other/shard-000001.h5"
expect_exit 2 "a shard of another run: info refuses" "$BIN/moetrace-info" --deep "$WORK/d5other"
expect_err_line "another run's shard: one line naming both run ids" "shard-000001.h5: run_id 'run-b'.*'run-a'"
expect_exit 2 "a shard of another run: reduce refuses" "$R" summarize "$WORK/d5other" -o "$WORK/d5other.h5"
# the same sequences under another name (a copied shard listed as its own file) repeat seq_ids
cp -r "$WORK/d5" "$WORK/d5dup"
cp "$WORK/d5dup/shard-000000.h5" "$WORK/d5dup/shard-000099.h5"
$PY - "$WORK/d5dup/run.json" <<'PYEOF'
import sys, json
m = json.load(open(sys.argv[1]))
e = dict(m["shards"][0]); e["file"] = "shard-000099.h5"
m["shards"].append(e)
json.dump(m, open(sys.argv[1], "w"))
PYEOF
expect_exit 2 "a seq_id in two shards: info refuses" "$BIN/moetrace-info" "$WORK/d5dup"
expect_err_line "repeated seq_id: one line naming both shards" "seq_id [0-9]* is in both shard-000000.h5 and shard-000099.h5"
expect_exit 0 "two runs together keep their own seq_ids" "$BIN/moetrace-info" "$WORK/d5" "$WORK/d5b"

# ---- 3, 8, 11. hostile chat templates: deep nesting, a loop without end, a long string repetition ----
FIX="$TESTS/tokenizer/fixtures/bytelevel-nomerges"
printf '{"messages": [{"role": "user", "content": "hi"}]}\n' >"$WORK/chat1.jsonl"
# tokenizer_with NAME TEMPLATE-FILE: a copy of the fixture whose chat template is the file's text
tokenizer_with() {
    mkdir -p "$WORK/$1"
    cp "$FIX/tokenizer.json" "$WORK/$1/"
    $PY -c 'import json, sys; json.dump({"eos_token": "<|eos|>", "chat_template": open(sys.argv[1]).read()}, open(sys.argv[2], "w"))' \
        "$2" "$WORK/$1/tokenizer_config.json"
}
for kind in paren bracket brace; do
    $PY -c '
import sys
o, c = {"paren": ("(", ")"), "bracket": ("[", "]"), "brace": ("{\"k\": ", " }")}[sys.argv[1]]
sys.stdout.write("{{ " + o * 30000 + "1" + c * 30000 + " }}")' "$kind" >"$WORK/t-$kind"
    tokenizer_with "tok-$kind" "$WORK/t-$kind"
    expect_exit 2 "template nested 30000 deep ($kind): exit 2" "$CAP" tokenize --tokenizer "$WORK/tok-$kind" --jsonl --chat --render "$WORK/chat1.jsonl"
    expect_err_line "template nested 30000 deep ($kind): one line" "nested too deeply"
done
printf '{%% for i in range(100000) %%}{%% for j in range(100000) %%}{%% endfor %%}{%% endfor %%}' >"$WORK/t-loop"
tokenizer_with tok-loop "$WORK/t-loop"
# bounded by its step budget: refused within the script's time limit, not after minutes
expect_exit 2 "template looping 10^10 times: exit 2" timeout 120 "$CAP" tokenize --tokenizer "$WORK/tok-loop" --jsonl --chat --render "$WORK/chat1.jsonl"
expect_err_line "template looping 10^10 times: one line" "steps"
printf "{{ 'a' * 200000 }}" >"$WORK/t-rep"
tokenizer_with tok-rep "$WORK/t-rep"
expect_exit 2 "string repetition of 200000: exit 2" "$CAP" tokenize --tokenizer "$WORK/tok-rep" --jsonl --chat --render "$WORK/chat1.jsonl"
expect_err_line "string repetition of 200000: one line" "repetition"

# ---- 6, 7. stats: incomplete divergence tables and accuracies outside [0, 1] are refused ----
$CAP synth --out "$WORK/st" --layers 8 --experts 16 --top-k 2 --units 6 --seed 7 --no-progress --quiet \
    --langs eng_Latn:1,fra_Latn:0.9,deu_Latn:0.8,zho_Hans:0.6,hin_Deva:0.45,bam_Latn:0.1 --datasets flores,math
"$R" "$WORK/st" -o "$WORK/st-tab" -q
ACC="$WORK/st/accuracy.tsv"
expect_exit 0 "stats on whole tables" "$ST" correlate --tables "$WORK/st-tab" --accuracy "$ACC" --band 2-6
# table_without NAME AWK-CONDITION: a copy of the tables whose div_from_en.tsv drops the rows matching
table_without() {
    cp -r "$WORK/st-tab" "$WORK/$1"
    awk -F '\t' "/^#/ || !($2)" "$WORK/st-tab/div_from_en.tsv" >"$WORK/$1/div_from_en.tsv"
}
table_without st-row '$1 == "hin_Deva" && $2 == 4'
expect_exit 2 "div_from_en without one (language, layer) row: correlate refuses" "$ST" correlate --tables "$WORK/st-row" --accuracy "$ACC" --band 2-6
expect_err_line "missing row: one line naming it" "no row for hin_Deva layer 4"
expect_exit 2 "div_from_en without one row: band refuses" "$ST" band --tables "$WORK/st-row" --band detect
table_without st-layer '$2 == 5'
expect_exit 2 "div_from_en without layer 5: correlate refuses" "$ST" correlate --tables "$WORK/st-layer" --accuracy "$ACC" --band 2-6
expect_err_line "missing layer: one line" "layer 5"
table_without st-last '$2 == 8'
rm -f "$WORK/st-last/entropy.tsv" "$WORK/st-last/freq.tsv" "$WORK/st-last/delta.tsv"
expect_exit 2 "div_from_en without the last layer: band refuses" "$ST" band --tables "$WORK/st-last" --band detect
expect_err_line "missing last layer: one line naming the model's count" "layers 1..7 but the model has 8"
sed 's/^\(zho_Hans\tmath\taccuracy\t\)[0-9.]*/\17.5/' "$ACC" >"$WORK/acc75.tsv"
expect_exit 2 "accuracy 7.5: correlate refuses" "$ST" correlate --tables "$WORK/st-tab" --accuracy "$WORK/acc75.tsv" --band 2-6
expect_err_line "accuracy 7.5: one line naming it" "accuracy 7.5 for zho_Hans math is outside \[0, 1\]"

# ---- 9. error details: the right value, the right shard, each path once, a reason for every refusal ----
$CAP synth --out "$WORK/d9" $SMALL --shard-bytes 4K --seed 9
# once_in NAME TEXT: the last command's one stderr line holds TEXT exactly once
once_in() {
    n=$(grep -o -F -- "$2" "$WORK/err" | wc -l)
    if [ "$n" -eq 1 ]; then ok "$1"; else not_ok "$1" "$n times: $(head -c 300 "$WORK/err")"; fi
}
# manifest NAME PYTHON: a copy of d9 whose run.json m is changed by PYTHON
manifest() {
    cp -r "$WORK/d9" "$WORK/$1"
    $PY -c "import json, sys; m = json.load(open(sys.argv[1])); $2; json.dump(m, open(sys.argv[1], 'w'))" "$WORK/$1/run.json"
}
manifest d9ver 'm["format_version"] = "1"'
expect_exit 2 "run.json format_version a string: info refuses" "$BIN/moetrace-info" "$WORK/d9ver"
expect_err_line "run.json format_version a string: said to be no integer (not 'format_version 0')" \
    "run.json: format_version is a string, not an integer"
manifest d9trav 'm["shards"][1]["file"] = "../x.h5"'
expect_exit 2 "run.json listing ../x.h5 as a shard: info refuses" "$BIN/moetrace-info" "$WORK/d9trav"
expect_err_line "shard path out of the run: the refusal gives its reason" \
    "shard entry 1, \"../x.h5\", is not a file name in the run directory"
manifest d9dot 'm["shards"][0]["file"] = ".."'
expect_exit 2 "run.json listing .. as a shard: info refuses" "$BIN/moetrace-info" "$WORK/d9dot"
expect_err_line "shard '..': the refusal gives its reason" "shard entry 0, \"..\", is not a file name in the run directory"
manifest d9nofile 'm["shards"][0]["file"] = 7'
expect_exit 2 "run.json shard entry without a file name: info refuses" "$BIN/moetrace-info" "$WORK/d9nofile"
expect_err_line "shard entry without a file name: said so" "shard entry 0 has no \"file\" string"
# a string-typed format_version attribute in a shard is no integer, not "format_version 0"
cp -r "$WORK/d9" "$WORK/d9sver"
$PY -c 'import h5py, sys; h5py.File(sys.argv[1], "r+").attrs["format_version"] = "1"' "$WORK/d9sver/shard-000000.h5"
expect_exit 2 "shard format_version a string: info refuses" "$BIN/moetrace-info" "$WORK/d9sver"
expect_err_line "shard format_version a string: said to be no integer" "shard-000000.h5: attribute 'format_version' is not an integer"
# the first shard of a run holds another model: it is blamed, not the good second shard
cp -r "$WORK/d9" "$WORK/d9model"
$PY -c 'import h5py, sys; h5py.File(sys.argv[1], "r+").attrs["model_id"] = "other/model"' "$WORK/d9model/shard-000000.h5"
expect_exit 2 "first shard of another model: info refuses" "$BIN/moetrace-info" "$WORK/d9model"
expect_err_line "first shard of another model: that shard is blamed" "shard-000000.h5: model 'other/model' is not the run's"
expect_exit 2 "first shard of another model: reduce refuses" "$R" summarize "$WORK/d9model" -o "$WORK/d9model.h5"
expect_err_line "first shard of another model: reduce blames that shard" "shard-000000.h5: model 'other/model' is not the run's"
# two runs of different models: the second is blamed and the first named
$CAP synth --out "$WORK/d9e16" --layers 4 --experts 16 --top-k 2 --units 4 --langs eng_Latn:1,fra_Latn:0.6 \
    --datasets flores,math --len-mean 12 --no-progress --quiet --seed 9
expect_exit 2 "runs of two models together: info refuses" "$BIN/moetrace-info" "$WORK/d9" "$WORK/d9e16"
expect_err_line "runs of two models: the second blamed, the first named" \
    "d9e16/shard-000000.h5: model dimensions (4 layers, 16 experts, top-2) differ from (4, 8, 2) of .*d9/shard-000000.h5"
# a tokenizer error names tokenizer.json once (the library's detail named it already)
mkdir -p "$WORK/tok9"
$PY -c '
import json, sys
t = json.load(open(sys.argv[1])); del t["model"]; json.dump(t, open(sys.argv[2], "w"))' "$FIX/tokenizer.json" "$WORK/tok9/tokenizer.json"
printf 'hello\n' >"$WORK/hello.txt"
expect_exit 2 "tokenizer.json without a model: tokenize refuses" "$CAP" tokenize --tokenizer "$WORK/tok9" "$WORK/hello.txt"
expect_err_line "tokenizer.json without a model: said so" "tok9/tokenizer.json: no \"model\" object"
once_in "tokenizer.json without a model: the file named once" "tokenizer.json"
# a program adding the run directory to a detail that starts with it names it once
$PY "$MS" 4 --layers 4 --experts 8 >"$WORK/st4"
$CAP ingest --out "$WORK/i9" --input "$WORK/st4" --no-sync --quiet
expect_exit 1 "ingest into an existing run without --resume: exit 1" $CAP ingest --out "$WORK/i9" --input "$WORK/st4" --no-sync --quiet
expect_err_line "ingest into an existing run: says so" "i9: a run already exists here"
once_in "ingest into an existing run: the run directory named once" "$WORK/i9"

# ---- 10. a resumed capture equals an uninterrupted one, bit for bit (items are packed into shared forwards) ----
# same_logits NAME A B: the two runs hold the same sequences with identical logits
same_logits() {
    "$TOOLS/mtr_dump" "$2" --logits "$WORK/a.f32" >"$WORK/a.seq" 2>&1
    "$TOOLS/mtr_dump" "$3" --logits "$WORK/b.f32" >"$WORK/b.seq" 2>&1
    if [ -s "$WORK/a.seq" ] && cmp -s "$WORK/a.seq" "$WORK/b.seq" && cmp -s "$WORK/a.f32" "$WORK/b.f32"; then ok "$1"
    else not_ok "$1" "$(wc -l <"$WORK/a.seq") vs $(wc -l <"$WORK/b.seq") sequences; $(cmp "$WORK/a.f32" "$WORK/b.f32" 2>&1 | head -c 200)"; fi
}
RUNQ="--model $Q --corpus $CORPUS --no-sync --quiet"
$CAP run $RUNQ --out "$WORK/cap-whole" --limit 60
$CAP run $RUNQ --out "$WORK/cap-27" --limit 27
expect_exit 0 "run --resume after --limit 27" $CAP run $RUNQ --out "$WORK/cap-27" --limit 60 --resume
same_logits "run --limit 27 then --resume equals one uninterrupted run (bf16 logits)" "$WORK/cap-whole" "$WORK/cap-27"
# a run with --limit N holds what a run without it holds for its first N items; resumed, what it holds for all
$CAP run $RUNQ --out "$WORK/cap-all32" --dtype f32
"$TOOLS/mtr_dump" "$WORK/cap-all32" --logits "$WORK/all.f32" >/dev/null 2>&1
for cut in 5 41; do
    $CAP run $RUNQ --out "$WORK/cap-$cut" --limit $cut --dtype f32
    "$TOOLS/mtr_dump" "$WORK/cap-$cut" --logits "$WORK/lim.f32" >/dev/null 2>&1
    if [ -s "$WORK/lim.f32" ] && cmp -s -n "$(wc -c <"$WORK/lim.f32")" "$WORK/lim.f32" "$WORK/all.f32"; then
        ok "--limit $cut holds what a whole run holds for its first $cut items"
    else not_ok "--limit $cut holds what a whole run holds for its first $cut items" "logits differ"; fi
    $CAP run $RUNQ --out "$WORK/cap-$cut" --limit 60 --resume --dtype f32
done
$CAP run $RUNQ --out "$WORK/cap-whole32" --limit 60 --dtype f32
same_logits "resumed after 5 items equals uninterrupted (f32)" "$WORK/cap-whole32" "$WORK/cap-5"
same_logits "resumed after 41 items equals uninterrupted (f32)" "$WORK/cap-whole32" "$WORK/cap-41"
# with gaussian steering eps the draws must not depend on the forwards a resume skips
$PY - "$Q" "$WORK/gauss.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
moe = [i for i in range(c["num_hidden_layers"]) if i not in c.get("mlp_only_layers", []) and (i + 1) % c.get("decoder_sparse_step", 1) == 0]
L, E, K = len(moe), c["num_experts"], c["num_experts_per_tok"]
coef = [[0.0] * E for _ in range(L)]
coef[1][1] = coef[1][6] = 1.0
json.dump({"format": "moetrace-steering", "format_version": 1, "producer": "test", "name": "gauss",
           "model_id": c.get("_name_or_path") or "qwen3_moe", "n_layers": L, "n_experts": E, "top_k": K,
           "layer_index": moe, "indexing": "0-based", "op": "hard", "lambda": 0.5, "eps_mode": "gaussian",
           "eps": 0.05, "seed": 3, "target_layers": [1], "experts": [[1, 1], [1, 6]], "scores": [None, None],
           "provenance": {}, "coef": coef}, open(sys.argv[2], "w"))
PYEOF
$CAP run $RUNQ --out "$WORK/g-whole" --limit 40 --dtype f32 --steer "$WORK/gauss.json"
$CAP run $RUNQ --out "$WORK/g-part" --limit 17 --dtype f32 --steer "$WORK/gauss.json"
$CAP run $RUNQ --out "$WORK/g-part" --limit 40 --dtype f32 --steer "$WORK/gauss.json" --resume
same_logits "resumed steered capture (gaussian eps) equals uninterrupted" "$WORK/g-whole" "$WORK/g-part"
