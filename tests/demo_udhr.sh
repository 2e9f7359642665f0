#!/bin/sh
# The real-routing part of `make demo`: the bundled MoE trained on UDHR text (tests/models/udhr-moe, see its
# README) captured on the bundled 20-language corpus with the native engine, reduced, analysed and steered, ending
# in the paper's figures and a Markdown report. Nothing here is planted: every number is what this model does.
#   tests/demo_udhr.sh BIN OUT
set -eu
BIN=$1
OUT=$2
PY=${PY:-/usr/bin/python3}
M=${MOETRACE_DEMO_MODEL:-tests/models/udhr-moe}
D=tests/data/udhr20
T=tests/data/debdesc
TAU=${MOETRACE_DEMO_TAU:-0.05}
rm -rf "$OUT"
mkdir -p "$OUT/eval" "$OUT/effects"
step() { echo; echo "== $*"; }

step "capture: router logits of every UDHR article in 20 languages and of English Debian package descriptions"
cat "$D/train.jsonl" "$D/heldout.jsonl" "$T/train.jsonl" >"$OUT/corpus.jsonl"
"$BIN/moetrace-capture" run --model "$M" --corpus "$OUT/corpus.jsonl" --out "$OUT/run" --quiet --json \
    >"$OUT/capture.json"
echo "captured: $("$BIN/moetrace" info "$OUT/run" | grep '^sequences')"

step "reduce: divergence from English per layer, entropy, expert frequencies, Delta"
"$BIN/moetrace-reduce" "$OUT/run" -o "$OUT/tables" -q --rd debian:eng_Latn udhr:eng_Latn

step "accuracy per language: held-out cloze items (4 choices, chance 0.25), scored by the engine"
"$BIN/moetrace-capture" run --mode score --model "$M" --corpus "$D/cloze.jsonl" --prompts "$D/prompts.json" \
    --template cloze --no-chat --out "$OUT/eval/base" --quiet

step "stats: the middle band, and does middle-band alignment with English track accuracy?"
"$BIN/moetrace-stats" band --tables "$OUT/tables" --band detect >"$OUT/band.txt"
grep "^# band:" "$OUT/band.txt" | sed "s/^# /middle /"
"$BIN/moetrace-stats" correlate --tables "$OUT/tables/tables.h5" --accuracy "$OUT/eval/base/accuracy.tsv" \
    --band "$OUT/band.txt" --json >"$OUT/correlate.json"
"$BIN/moetrace-stats" correlate --tables "$OUT/tables/tables.h5" --accuracy "$OUT/eval/base/accuracy.tsv" \
    --band "$OUT/band.txt" >"$OUT/correlate.tsv"
grep '^# verdict' "$OUT/correlate.tsv" || true

step "task experts of the Debian domain (tau $TAU), their overlap with multilingual experts, steering files"
"$BIN/moetrace-stats" experts --tables "$OUT/tables" --dataset debian --generic udhr --tau "$TAU" \
    --band "$OUT/band.txt" >"$OUT/experts.tsv"
"$BIN/moetrace-stats" overlap --tables "$OUT/tables" --dataset debian --generic udhr --band "$OUT/band.txt" \
    >"$OUT/overlap.tsv"
"$BIN/moetrace-stats" steer --tables "$OUT/tables" --dataset debian --generic udhr --tau "$TAU" \
    --band "$OUT/band.txt" --op soft --lambda 0.5 --out "$OUT/steer" >"$OUT/steer.tsv"
echo "steering files: $(ls "$OUT/steer"/*.h5 | xargs -n1 basename | tr '\n' ' ')"

step "steered evaluation per language: the selection and each control, scored like the baseline"
for f in "$OUT/steer"/*.h5; do
    name=$(basename "$f" .h5)
    "$BIN/moetrace-capture" run --mode score --model "$M" --corpus "$D/cloze.jsonl" --prompts "$D/prompts.json" \
        --template cloze --no-chat --steer "$f" --out "$OUT/eval/$name" --quiet
    "$BIN/moetrace-stats" effect --baseline "$OUT/eval/base/accuracy.tsv" --steered "$OUT/eval/$name/accuracy.tsv" \
        --steer "$f" --metric accuracy --json >"$OUT/effects/$name.json"
    "$BIN/moetrace-stats" effect --baseline "$OUT/eval/base/accuracy.tsv" --steered "$OUT/eval/$name/accuracy.tsv" \
        --steer "$f" --metric accuracy >"$OUT/effects/$name.tsv"
done

step "figures (notebooks, headless) and the report"
MOETRACE_EXECUTED="$OUT/notebooks" sh notebooks/run.sh "$OUT"
"$PY" notebooks/report.py "$OUT" >"$OUT/report.md"
echo
sed -n '/^## Headline/,/^## /p' "$OUT/report.md" | sed '$d'
echo "report: $OUT/report.md   figures: $OUT/figures/"
