# config/recipes: every bundled recipe passes --dry-run and its plan has the jobs and commands the paper's
# experiment needs; broken recipes (unknown model, unknown language, band outside the layers, missing field, ...)
# give one line naming the file and exit 2; and a small recipe on the bundled tiny checkpoint and test data runs
# end to end through the Slurm job scripts with a stand-in sbatch/srun (jobs run at once, in order): prepare,
# capture, MPI-free reduce, evaluation, analysis, steered evaluation, effects, ready for the notebooks. hf_run.py
# (models the native engine does not run) is tested with small PyTorch models (tests/python/test_hf_run.py).
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
top=$(cd "$TESTS/.." && pwd)
R="$top/config/recipes/moetrace-recipe"
RD="$top/config/recipes"

expect_exit 0 "moetrace-recipe --help" "$PY" "$R" --help
expect_out "help names --dry-run" "--dry-run"
expect_exit 1 "no recipe: usage, exit 1" "$PY" "$R"
expect_exit 1 "unknown option: exit 1" "$PY" "$R" --frobnicate "$RD/olmoe-1b-7b.json"
expect_exit 0 "moetrace recipe dispatches" "$BIN/moetrace" recipe --help

# ---- the bundled recipes ----------------------------------------------------------------------------------------
for n in qwen3-30b-a3b phi-3.5-moe gpt-oss-20b olmoe-1b-7b; do
    expect_exit 0 "$n: --dry-run" "$PY" "$R" --dry-run --set OUT=/scratch/t "$RD/$n.json"
    cp "$WORK/out" "$WORK/plan-$n"
done
P="$WORK/plan-qwen3-30b-a3b"
grep -q "^model: Qwen/Qwen3-30B-A3B (profile qwen3-30b-a3b: qwen3_moe, 48 layers x 128 experts, top-8).*engine native" "$P" &&
    ok "qwen3: model from its profile, native engine" || not_ok "qwen3: model line" "$(grep '^model' "$P")"
grep -q "^band: 8-35 (1-based, inclusive; profile qwen3-30b-a3b)" "$P" && ok "qwen3: the paper's band 8-35" ||
    not_ok "qwen3: band" "$(grep '^band' "$P")"
jobs=$(sed -n 's/^[0-9]*\. \([a-z-]*\):.*/\1/p' "$P" | tr '\n' ' ')
[ "$jobs" = "prepare capture reduce eval-baseline analysis eval-steered effects " ] && ok "qwen3: the jobs in order" ||
    not_ok "qwen3: the jobs in order" "$jobs"
grep -q "^2\. capture: .*\[array of 17; after: prepare\]" "$P" && ok "qwen3: capture is an array of 17 (15 FLORES languages, 2 task corpora)" ||
    not_ok "qwen3: capture array" "$(grep '^2\.' "$P")"
grep -q "^   \[1\] mkdir -p /scratch/t/qwen3-30b-a3b/runs/flores && moetrace-capture run --model /shared/models/Qwen3-30B-A3B --corpus /shared/data/moetrace/flores200_dataset/devtest --langs eng_Latn --dataset flores --out /scratch/t/qwen3-30b-a3b/runs/flores/eng_Latn" "$P" &&
    ok "qwen3: a capture command, variables expanded (--set OUT)" || not_ok "qwen3: capture command" "$(grep -m1 'capture run' "$P")"
grep -q "^   sbatch .*--nodes=4 --ntasks-per-node=2 .*slurm-reduce.sbatch /scratch/t/qwen3-30b-a3b/runs/flores/eng_Latn .* /scratch/t/qwen3-30b-a3b/tables$" "$P" &&
    ok "qwen3: reduce is one MPI job over every run" || not_ok "qwen3: reduce" "$(grep -A1 '^3\.' "$P")"
grep -q "moetrace-stats band --tables /scratch/t/qwen3-30b-a3b/tables --profile $top/config/models/qwen3-30b-a3b.json --band 8-35 > /scratch/t/qwen3-30b-a3b/band.txt" "$P" &&
    [ "$(grep -c -- "--band /scratch/t/qwen3-30b-a3b/band.txt" "$P")" -ge 8 ] &&
    ok "qwen3: one band file, every later stats step uses it" || not_ok "qwen3: band file" "$(grep -c -- '--band /scratch' "$P")"
grep -q "steer .*--dataset math .*--tau 0.4 .*--op soft --lambda 0.5 --controls outside,multilingual,random,deactivate --out /scratch/t/qwen3-30b-a3b/mgsm-math/steer" "$P" &&
    grep -q "steer .*--dataset medical .*--tau 0.5 .*--op hard" "$P" && ok "qwen3: the paper's two interventions" ||
    not_ok "qwen3: interventions" "$(grep 'stats steer' "$P" | head -c 300)"
grep -q "^   \[[0-9]*\] mkdir -p .* && moetrace-capture run --mode generate .*mgsm_sw.tsv --out /scratch/t/qwen3-30b-a3b/eval/mgsm/mgsm-math-random/swh_Latn .*--steer /scratch/t/qwen3-30b-a3b/mgsm-math/steer/random.h5" "$P" &&
    ok "qwen3: steered MGSM in Swahili under the random control" || not_ok "qwen3: steered eval" "missing"
grep -q "effect .*--steer /scratch/t/qwen3-30b-a3b/gmmlu-medical/steer/deactivate.h5 .* > /scratch/t/qwen3-30b-a3b/gmmlu-medical/effects/deactivate.json" "$P" &&
    ok "qwen3: effects/NAME.json per steering file" || not_ok "qwen3: effects" "missing"
grep -q "hf_run.py capture --model /shared/models/Phi-3.5-MoE-instruct" "$WORK/plan-phi-3.5-moe" &&
    grep -q "engine torch" "$WORK/plan-phi-3.5-moe" && grep -q "gpus-per-task=1" "$WORK/plan-phi-3.5-moe" &&
    ok "phi-3.5-moe: PyTorch engine on GPU nodes, band 8-17" || not_ok "phi-3.5-moe" "$(grep '^model\|^band' "$WORK/plan-phi-3.5-moe")"
grep -q "^band: 8-17" "$WORK/plan-phi-3.5-moe" && grep -q "^band: 4-19" "$WORK/plan-gpt-oss-20b" &&
    grep -q "hf_run.py eval --model /shared/models/gpt-oss-20b --layout mgsm" "$WORK/plan-gpt-oss-20b" &&
    ok "gpt-oss-20b: band 4-19, hf_run.py evaluation" || not_ok "gpt-oss-20b" "$(grep '^band' "$WORK/plan-gpt-oss-20b")"
O="$WORK/plan-olmoe-1b-7b"
jobs=$(sed -n 's/^[0-9]*\. \([a-z-]*\):.*/\1/p' "$O" | tr '\n' ' ')
[ "$jobs" = "capture reduce eval-baseline analysis " ] && grep -q "moetrace-stats band .*--band detect" "$O" &&
    ok "olmoe: analysis only, band detected" || not_ok "olmoe" "$jobs"

# ---- broken recipes: one line, exit 2 ---------------------------------------------------------------------------
cat >"$WORK/break.py" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
what = sys.argv[2]
if what == "model": r["model"]["profile"] = "mistral-9000"
elif what == "language": r["languages"].append("xx_Zzzz")
elif what == "band": r["band"] = {"first": 30, "last": 60}
elif what == "field": del r["corpora"]["flores"]["path"]
elif what == "unknown": r["corpora"]["flores"]["pathh"] = "/x"
elif what == "eval-lang": r["evaluations"]["mgsm"]["languages"].append("yor_Latn")
elif what == "tau": r["interventions"][0]["tau"] = 1.5
elif what == "dataset": r["interventions"][0]["dataset"] = "flores"
elif what == "time": r["slurm"]["capture"]["time"] = "24h"
elif what == "engine": r["model"]["engine"] = "native"
elif what == "variable": r["output"] = "${NOWHERE_XYZ}/x"
elif what == "version": r["format_version"] = 2
json.dump(r, open(sys.argv[3], "w"))
EOF
check_broken() {
    name=$1 base=$2 kind=$3 pattern=$4
    "$PY" "$WORK/break.py" "$RD/$base.json" "$kind" "$WORK/bad-$kind.json"
    expect_exit 2 "broken recipe ($name): exit 2" "$PY" "$R" --dry-run "$WORK/bad-$kind.json"
    expect_err_line "broken recipe ($name): one line naming the file" "^moetrace-recipe: $WORK/bad-$kind.json: $pattern"
}
check_broken "unknown model" qwen3-30b-a3b model "model: unknown model profile 'mistral-9000'"
check_broken "unknown language" qwen3-30b-a3b language "languages: unknown language 'xx_Zzzz'"
check_broken "band outside the layers" qwen3-30b-a3b band "band: 30-60 is not within the 48 layers"
check_broken "missing field" qwen3-30b-a3b field "corpora.flores: missing field \"path\""
check_broken "unknown field" qwen3-30b-a3b unknown "corpora.flores: unknown field \"pathh\""
check_broken "language MGSM lacks" qwen3-30b-a3b eval-lang "evaluations.mgsm: the dataset has no language yor_Latn"
check_broken "tau out of range" qwen3-30b-a3b tau "interventions\[0\]: tau 1.5 is not in (0, 1\]"
check_broken "steering a generic corpus" qwen3-30b-a3b dataset "interventions\[0\]: dataset 'flores' is not a task corpus"
check_broken "Slurm time" qwen3-30b-a3b time "slurm.capture: time '24h' is not \[D-\]HH:MM:SS"
check_broken "native engine for GPT-OSS" gpt-oss-20b engine "model: the native engine does not run gpt_oss"
check_broken "undefined variable" olmoe-1b-7b variable "output: variable \${NOWHERE_XYZ} is not defined"
check_broken "future format version" olmoe-1b-7b version "format_version 2"
printf '{"format": "moetrace-recipe",' >"$WORK/bad-json.json"
expect_exit 2 "not JSON: exit 2" "$PY" "$R" --dry-run "$WORK/bad-json.json"
expect_err_line "not JSON: one line" "bad-json.json: not JSON"
expect_exit 2 "--check-files: data not there, exit 2" "$PY" "$R" --dry-run --check-files --set MODELS="$WORK/nomodels" "$RD/olmoe-1b-7b.json"
expect_err_line "--check-files: names the missing checkpoint" "model.checkpoint: $WORK/nomodels/OLMoE-1B-7B-0125-Instruct/config.json does not exist"

# ---- a small recipe end to end on the tiny checkpoint, through the Slurm scripts -------------------------------------
D="$WORK/data"
C="$WORK/config"
mkdir -p "$D/flores" "$D/belebele" "$D/mgsm" "$D/gmmlu" "$C/models" "$WORK/fakebin"
cp "$top/config/languages.tsv" "$C/"
cat >"$C/models/tiny-qwen3.json" <<'EOF'
{"name": "tiny-qwen3", "model_id": "qwen3_moe", "model_type": "qwen3_moe", "n_layers": 2, "n_decoder_layers": 3,
 "n_experts": 8, "top_k": 2, "router": {"score_fn": "softmax", "renormalize": true, "router_bias": false},
 "middle_band": {"first": 1, "last": 2, "indexing": "1-based inclusive", "source": "test"}}
EOF
"$PY" - "$top/tests/data" "$D" <<'EOF'
import json, os, sys
src, d = sys.argv[1], sys.argv[2]
langs = ["eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans", "rus_Cyrl"]
udhr = [json.loads(l) for l in open(f"{src}/udhr-mini.jsonl")]
for g in langs:  # FLORES-style: line i = unit i in every language
    rows = sorted((r for r in udhr if r["lang"] == g), key=lambda r: r["unit_id"])[:4]
    open(f"{d}/flores/{g}.devtest", "w").write("".join(r["text"].replace("\n", " ") + "\n" for r in rows))
mc = [json.loads(l) for l in open(f"{src}/mc-mini.jsonl")]
for g in langs:  # Belebele per language (rus_Cyrl reuses the English items)
    rows = [dict(r, lang=g) for r in mc if r["lang"] == (g if g != "rus_Cyrl" else "eng_Latn")]
    open(f"{d}/belebele/{g}.jsonl", "w").write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
gen = [json.loads(l) for l in open(f"{src}/gen-mini.jsonl")]
for b in ("en", "fr", "de", "zh", "ru"):
    rows = [r for r in gen if r["lang"] == ("fra_Latn" if b == "fr" else "eng_Latn")]
    open(f"{d}/mgsm/mgsm_{b}.tsv", "w").write("".join(f"{r['question']}\t{r['answer']}\n" for r in rows))
math = [{"prompt": f"Question: {r['question']}", "chosen": f"The answer is {r['answer']}.", "lang": "en"}
        for r in gen if r["lang"] == "eng_Latn"] + [{"prompt": "Frage?", "chosen": "1", "lang": "de"}]
json.dump(math, open(f"{d}/math.json", "w"))
for b in ("en", "fr", "de", "zh"):
    with open(f"{d}/gmmlu/{b}.jsonl", "w") as f:
        for i, s in enumerate(["virology", "nutrition", "virology", "anatomy"]):
            f.write(json.dumps({"sample_id": f"{s}/{i}", "subject": s, "question": f"Q{i} {s}?", "option_a": "one",
                                "option_b": "two", "option_c": "three", "option_d": "four", "answer": "ABCD"[i]}) + "\n")
EOF
cat >"$WORK/tiny.json" <<EOF
{"format": "moetrace-recipe", "format_version": 1, "name": "tiny", "variables": {"D": "$D"},
 "model": {"profile": "tiny-qwen3", "checkpoint": "$top/tests/models/tiny/qwen3_moe"},
 "languages": ["eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans", "rus_Cyrl"], "english": "eng_Latn",
 "output": "$WORK/out-tiny",
 "corpora": {"flores": {"layout": "flores200", "role": "generic", "path": "\${D}/flores"},
             "math": {"layout": "chat-jsonl", "role": "task", "path": "\${D}/math.json", "languages": ["eng_Latn"],
                      "user": "prompt", "assistant": "chosen", "user_regex": "^Question: (.*)$", "where": {"lang": "en"}}},
 "evaluations": {"belebele": {"layout": "belebele", "path": "\${D}/belebele", "correlate": true},
                 "mgsm": {"layout": "mgsm", "path": "\${D}/mgsm", "max_new": 6},
                 "gmmlu": {"layout": "global-mmlu", "path": "\${D}/gmmlu", "languages": ["eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans"],
                           "subjects": ["virology", "nutrition"], "items_per_subject": 1}},
 "band": "profile",
 "interventions": [{"name": "mgsm-math", "dataset": "math", "evaluation": "mgsm", "tau": 0.01, "op": "hard",
                    "eps_mode": "fixed"}],
 "slurm": {"defaults": {"cpus_per_task": 1, "time": "00:10:00"}}}
EOF
# stand-ins: sbatch runs the job now (each array task in turn) and prints an id; srun runs its command
cat >"$WORK/fakebin/sbatch" <<'EOF'
#!/bin/sh
array=""
while [ $# -gt 0 ]; do
    case "$1" in --array=*) array=${1#--array=} ;; --dependency=*) echo "$1" >>"$FAKE_LOG" ;; --*) ;; *) break ;; esac
    shift
done
script=$1
shift
n=1
[ -n "$array" ] && n=${array#1-}
i=1
while [ "$i" -le "$n" ]; do
    SLURM_ARRAY_TASK_ID=$i SLURM_CPUS_PER_TASK=1 bash "$script" "$@" >>"$FAKE_LOG" 2>&1 || { echo "job failed: $script $*" >&2; exit 1; }
    i=$((i + 1))
done
echo "$(date +%N)$$"
EOF
cat >"$WORK/fakebin/srun" <<'EOF'
#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
exec "$@"
EOF
chmod +x "$WORK/fakebin/sbatch" "$WORK/fakebin/srun"
expect_exit 0 "tiny recipe: --dry-run --check-files" "$PY" "$R" --dry-run --check-files --config "$C" "$WORK/tiny.json"
start=$(date +%s)
FAKE_LOG="$WORK/jobs.log" PATH="$WORK/fakebin:$BIN:$PATH" OMP_NUM_THREADS=1 \
    "$PY" "$R" --config "$C" --no-figures "$WORK/tiny.json" >"$WORK/out" 2>"$WORK/err"
rc=$?
T="$WORK/out-tiny"
if [ "$rc" -eq 0 ] && [ "$(grep -c '^submitted ' "$WORK/out")" -eq 7 ]; then ok "tiny recipe: 7 jobs submitted and run ($(($(date +%s) - start))s)"
else not_ok "tiny recipe: submitted and run" "exit $rc: $(tail -c 300 "$WORK/err") $(tail -c 600 "$WORK/jobs.log")"; fi
grep -q -- "--dependency=afterok:" "$WORK/jobs.log" && ok "tiny recipe: later jobs depend on earlier ones (afterok)" ||
    not_ok "tiny recipe: dependencies" "none"
[ -f "$T/jobs/02-capture.cmds" ] && [ "$(wc -l <"$T/jobs/02-capture.cmds")" -eq 6 ] &&
    ok "tiny recipe: command files in OUTPUT/jobs (6 captures: 5 FLORES languages + math)" ||
    not_ok "tiny recipe: command files" "$(ls "$T/jobs" 2>&1)"
"$PY" - "$T" <<'EOF' >"$WORK/py" 2>&1
import json, os, sys
T = sys.argv[1]
def rows(p):
    return [l.rstrip("\n").split("\t") for l in open(p) if not l.startswith("#")]
prep = [json.loads(l) for l in open(f"{T}/prep/math.jsonl")]
assert len(prep) == 2 and all(r["lang"] == "eng_Latn" and r["messages"][0]["content"].endswith("?") and
                              not r["messages"][0]["content"].startswith("Question:") for r in prep), prep
g = [json.loads(l) for l in open(f"{T}/prep/gmmlu/fra_Latn.jsonl")]
assert [r["dataset"] for r in g] == ["global_mmlu_full:virology", "global_mmlu_full:nutrition"], g
assert os.path.isfile(f"{T}/tables/div_from_en.tsv")
assert {r[0] for r in rows(f"{T}/tables/div_from_en.tsv")} == {"fra_Latn", "deu_Latn", "zho_Hans", "rus_Cyrl"}
acc = [r for r in rows(f"{T}/accuracy.tsv") if r[2] == "accuracy"]
assert sorted(r[0] for r in acc) == sorted(["eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans", "rus_Cyrl"]), acc
gm = rows(f"{T}/eval/gmmlu/baseline.tsv")
assert {(r[1], r[3]) for r in gm if r[2] == "accuracy"} and {r[1] for r in gm} == {"global_mmlu_full:virology", "global_mmlu_full:nutrition"}, gm
band = [l for l in open(f"{T}/band.txt") if l.startswith("# band: ")]
assert band and band[0].startswith("# band: 1-2 "), band
c = json.load(open(f"{T}/correlate.json"))
assert c["band"]["first"] == 1 and c["band"]["last"] == 2 and c["results"][0]["task"] == "mc-mini", c["band"]
assert c["results"][0]["band_mean"]["spearman"]["p_method"] == "exact"
I = f"{T}/mgsm-math"
for n in ("task", "outside_band", "multilingual", "random", "deactivate"):
    assert os.path.isfile(f"{I}/steer/{n}.h5"), n
    e = json.load(open(f"{I}/effects/{n}.json"))
    assert e["intervention"] == n and e["rows"][0]["task"] == "mgsm" and e["rows"][0]["n_langs"] == 4, e
    steered = [r for r in rows(f"{T}/eval/mgsm/mgsm-math-{n}.tsv") if r[2] == "accuracy"]
    assert len(steered) == 5, steered
for f in ("tables", "band.txt", "correlate.json", "experts.tsv", "overlap.tsv"):
    assert os.path.exists(f"{I}/{f}"), f
print("ok")
EOF
if grep -q '^ok$' "$WORK/py"; then ok "tiny recipe: traces, tables, band file, correlation, steering files, steered runs and effects in the documented layout"
else not_ok "tiny recipe: outputs" "$(tail -c 500 "$WORK/py")"; fi
# the intervention directory is a results directory the figures module draws every figure from
if "$PY" -c 'import matplotlib' 2>/dev/null; then
    if "$PY" "$top/notebooks/moetrace_figures.py" draw "$T/mgsm-math" "$WORK/figs" >"$WORK/figs.out" 2>&1 &&
        [ -s "$WORK/figs/fig11_effects.png" ] && [ -s "$WORK/figs/fig9_layer_correlation.png" ] && ! grep -q "^skipped" "$WORK/figs.out"
    then ok "tiny recipe: every figure drawn from OUTPUT/mgsm-math"
    else not_ok "tiny recipe: figures" "$(tail -c 400 "$WORK/figs.out")"; fi
fi
# a failing job stops the submission: exit 3, the job named
cp "$WORK/tiny.json" "$WORK/tiny2.json"
sed -i "s|$WORK/out-tiny|$WORK/out-tiny2|; s|\"max_new\": 6|\"max_new\": 6, \"limit\": 1|" "$WORK/tiny2.json"
rm "$D/mgsm/mgsm_zh.tsv"
FAKE_LOG="$WORK/jobs2.log" PATH="$WORK/fakebin:$BIN:$PATH" "$PY" "$R" --config "$C" --no-figures "$WORK/tiny2.json" >"$WORK/out" 2>"$WORK/err"
rc=$?
[ "$rc" -eq 3 ] && grep -q "sbatch for job eval-baseline failed" "$WORK/err" && ok "a failing job: exit 3 naming it" ||
    not_ok "a failing job" "exit $rc: $(cat "$WORK/err")"

# ---- hf_run.py with small PyTorch models --------------------------------------------------------------------------
if "$PY" -c 'import torch, h5py' 2>/dev/null; then
    BIN="$BIN" LIB="$LIB" OPENBLAS_NUM_THREADS=1 "$PY" "$TESTS/python/test_hf_run.py" 2>"$WORK/pyerr" | grep -E '^(not )?ok ' ||
        not_ok "test_hf_run.py" "$(tail -c 300 "$WORK/pyerr")"
else
    ok "hf_run.py # skip: $PY lacks torch or h5py"
fi
