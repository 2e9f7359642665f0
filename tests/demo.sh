#!/bin/sh
# make demo: the longest end-to-end path that exists: a synthetic trace set with planted structure (6 languages,
# 2 datasets, 24 layers x 64 experts) -> validation (moetrace info) -> routing metrics (moetrace-reduce) ->
# statistics (moetrace-stats: alignment vs accuracy with CIs, the middle band, task experts, steering files).
# Says where things are.
set -eu
# the fast synthetic self-check first, then the trained model (tests/demo_udhr.sh)
BIN=$1
OUT=$2
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== moetrace-capture synth: synthetic traces with planted routing structure"
"$BIN/moetrace-capture" synth --out "$OUT/run" --layers 24 --experts 64 --top-k 6 --units 30 --seed 2510 \
    --langs eng_Latn:1.0,fra_Latn:0.9,zho_Hans:0.75,hin_Deva:0.5,ary_Arab:0.3,bam_Latn:0.1 \
    --datasets flores,math --shard-bytes 16M
echo
echo "== moetrace info --deep: what the run holds, validated chunk by chunk"
"$BIN/moetrace" info --deep "$OUT/run" | tee "$OUT/info.txt"
"$BIN/moetrace" info --json "$OUT/run" >"$OUT/info.json"
echo
echo "== moetrace-reduce: per-sequence summaries, then tables (divergence from English, entropy, frequencies, ...)"
"$BIN/moetrace-reduce" "$OUT/run" -o "$OUT/tables" --rd math:eng_Latn flores:eng_Latn
echo
echo "Divergence from English by layer 1..24 (entropy-normalised JSD; planted middle band: layers 6-19):"
awk -F'\t' '!/^#/ { d[$1] = d[$1] sprintf(" %.2f", $3) } END { for (l in d) printf "  %-9s%s\n", l, d[l] }' \
    "$OUT/tables/div_from_en.tsv" | sort
echo
echo "== moetrace-stats: does middle-layer alignment with English track accuracy? (planted accuracies)"
# the one band of every later step and figure (notebooks refuse stats made with another band)
"$BIN/moetrace-stats" band --tables "$OUT/tables" --band 6-19 >"$OUT/band.txt"
grep "^# band:" "$OUT/band.txt" | sed "s/^# /middle /"
"$BIN/moetrace-stats" correlate --tables "$OUT/tables/tables.h5" --accuracy "$OUT/run/accuracy.tsv" \
    --band 6-19 --json >"$OUT/correlate.json"
"$BIN/moetrace-stats" correlate --tables "$OUT/tables/tables.h5" --accuracy "$OUT/run/accuracy.tsv" \
    --band 6-19 >"$OUT/correlate.tsv"
grep '^# verdict' "$OUT/correlate.tsv"
"$BIN/moetrace-stats" experts --tables "$OUT/tables" --dataset math --tau 0.2 --band 6-19 >"$OUT/experts.tsv"
echo "task experts (math, tau 0.2, band 6-19): $(grep -c '^task' "$OUT/experts.tsv") selected; planted: 28"
"$BIN/moetrace-stats" steer --tables "$OUT/tables" --dataset math --tau 0.2 --band 6-19 \
    --model-id synthetic/moe-L24-E64 --top-k 6 --out "$OUT/steer" >/dev/null
echo "steering files (selection and controls): $(ls "$OUT/steer"/*.h5 | wc -l) in $OUT/steer"
echo
TINY=tests/models/tiny/qwen3_moe
echo "== moetrace-capture run: the native engine on a bundled checkpoint ($TINY: a tiny Qwen3-MoE made by"
echo "   tests/models/make_tiny.py with random weights, so its numbers show the pipeline, not multilingual science)"
mkdir -p "$OUT/engine"
"$BIN/moetrace-capture" run --model "$TINY" --corpus tests/data/udhr-mini.jsonl --out "$OUT/engine/run" --quiet \
    --json >"$OUT/engine/capture.json"
echo "captured: $("$BIN/moetrace" info "$OUT/engine/run" | grep '^sequences')"
"$BIN/moetrace-reduce" "$OUT/engine/run" -o "$OUT/engine/tables" >/dev/null 2>&1
echo "Divergence from English by MoE layer (UDHR articles 1-30, 8 languages):"
awk -F'\t' '!/^#/ { d[$1] = d[$1] sprintf(" %.3f", $3) } END { for (l in d) printf "  %-9s%s\n", l, d[l] }' \
    "$OUT/engine/tables/div_from_en.tsv" | sort
"$BIN/moetrace-capture" run --mode score --model "$TINY" --corpus tests/data/mc-mini.jsonl --out "$OUT/engine/score" \
    --trace "$OUT/engine/score-run" --quiet
"$BIN/moetrace-capture" run --mode generate --model "$TINY" --corpus tests/data/gen-mini.jsonl --max-new 8 \
    --out "$OUT/engine/generate" --quiet
echo "multiple-choice accuracy (8 items, chance 0.25) and generation exact match (4 items):"
grep -h -v '^#' "$OUT/engine/score/accuracy.tsv" "$OUT/engine/generate/accuracy.tsv" | sed 's/^/  /'
echo
echo "== closing the loop: task experts of the multiple-choice prompts -> steering file -> scored again under it"
"$BIN/moetrace-reduce" "$OUT/engine/run" "$OUT/engine/score-run" -o "$OUT/engine/tables-mc" >/dev/null 2>&1
"$BIN/moetrace-stats" steer --tables "$OUT/engine/tables-mc" --dataset mc-mini --generic udhr --tau 0.05 \
    --band 1-2 --op hard --out "$OUT/engine/steer" >"$OUT/engine/steer.tsv" 2>"$OUT/engine/steer.log"
echo "steering files for $(grep -m1 '^task' "$OUT/engine/steer.tsv" | cut -f4) task experts (hard, MoE layers 1-2): $OUT/engine/steer"
"$BIN/moetrace-capture" run --mode score --model "$TINY" --corpus tests/data/mc-mini.jsonl \
    --out "$OUT/engine/score-steered" --steer "$OUT/engine/steer/task.h5" --quiet
"$BIN/moetrace-stats" effect --baseline "$OUT/engine/score/accuracy.tsv" \
    --steered "$OUT/engine/score-steered/accuracy.tsv" --steer "$OUT/engine/steer/task.h5" --metric accuracy \
    >"$OUT/engine/effect.tsv"
awk -F'\t' '!/^#/ { printf "steering effect: mean accuracy over non-English languages %s -> %s (gain %s, 95%% CI %s..%s)\n", $7, $8, $9, $10, $11 }' \
    "$OUT/engine/effect.tsv"
echo
echo "Results:"
echo "  trace run        $OUT/run  (run.json + shard-*.h5; planted truth in truth.json, accuracies in accuracy.tsv)"
echo "  description      $OUT/info.txt, $OUT/info.json"
echo "  summaries        $OUT/tables/summaries.h5  (format: reduce/SUMMARIES.md)"
echo "  tables           $OUT/tables/*.tsv and $OUT/tables/tables.h5"
echo "  statistics       $OUT/correlate.tsv (.json), $OUT/band.txt, $OUT/experts.tsv"
echo "  steering files   $OUT/steer/*.h5 (+ .json twins, EasySteer and flat f32 exports; traces/STEERING.md)"
echo "  engine           $OUT/engine/run (capture), engine/tables, engine/score and engine/generate"
echo "                   (accuracy.tsv, accuracy.json, items.tsv), engine/steer, engine/effect.tsv"
echo "  read with h5py   HDF5_PLUGIN_PATH=$(dirname "$BIN")/lib/plugin /usr/bin/python3 -c 'import h5py; ...'"
echo
echo "== notebooks: the paper's figures from these results, executed headless"
MOETRACE_EXECUTED="$OUT/notebooks" sh notebooks/run.sh "$OUT"

echo
echo "################################################################################################################"
echo "== real routing: the bundled MoE trained on UDHR text (tests/models/udhr-moe), nothing planted"
sh tests/demo_udhr.sh "$BIN" "$OUT/udhr"
echo
echo "Where to look:"
echo "  report           $OUT/udhr/report.md   (measured on the trained model: curve, band, correlation, steering)"
echo "  figures          $OUT/udhr/figures/  (trained model)   $OUT/figures/  (synthetic self-check)"
echo "  synthetic run    $OUT/  (planted structure, the fast self-check above)"
