# test_report.sh — notebooks/report.py on a synthetic results directory: the report quotes the band, the band
# correlation and the steering effect exactly as moetrace-stats wrote them, and a table row per language.
. "$TESTS/cli/lib.sh"
top=$(cd "$TESTS/.." && pwd)
R="$WORK/res"
mkdir -p "$R/eval/base" "$R/effects"
"$BIN/moetrace-capture" synth --out "$R/run" --layers 12 --experts 16 --top-k 2 --units 8 --seed 5 \
    --langs eng_Latn:1.0,fra_Latn:0.8,hin_Deva:0.5,yor_Latn:0.2 --datasets flores,math >/dev/null 2>&1
"$BIN/moetrace-reduce" "$R/run" -o "$R/tables" -q
cp "$R/run/accuracy.tsv" "$R/eval/base/accuracy.tsv"
"$BIN/moetrace-stats" band --tables "$R/tables" --band detect >"$R/band.txt"
"$BIN/moetrace-stats" correlate --tables "$R/tables/tables.h5" --accuracy "$R/run/accuracy.tsv" --band "$R/band.txt" \
    --json >"$R/correlate.json"
"$BIN/moetrace-stats" steer --tables "$R/tables" --dataset math --tau 0.05 --band "$R/band.txt" --model-id synthetic/x \
    --top-k 2 --out "$R/steer" >/dev/null 2>&1
# a steered accuracy file: every language 0.05 better (the figures' test does the same; synth cannot steer)
awk -F'\t' 'BEGIN{OFS="\t"} /^#/ {print; next} {$4 = sprintf("%.6f", $4 + 0.05); print}' "$R/run/accuracy.tsv" \
    >"$R/steered.tsv"
"$BIN/moetrace-stats" effect --baseline "$R/run/accuracy.tsv" --steered "$R/steered.tsv" --steer "$R/steer/task.h5" \
    --json >"$R/effects/task.json"
expect_exit 0 "report.py writes a report" "$PY" "$top/notebooks/report.py" "$R"
cp "$WORK/out" "$WORK/report.md"
"$PY" - "$R" "$WORK/report.md" <<'PYEOF' && ok "the report quotes band, correlation and effect as written" || not_ok "report numbers" "see above"
import json, sys
res, rep = sys.argv[1], open(sys.argv[2], encoding="utf-8").read()
c = json.load(open(res + "/correlate.json"))
b = c["band"]
r = c["results"] if isinstance(c["results"], dict) else c["results"][0]
pe = r["band_mean"]["pearson"]
e = json.load(open(res + "/effects/task.json"))["rows"][0]
want = [f"Middle band: layers {b['first']}-{b['last']}", f"Pearson r = {pe['r']:.3f}",
        f"95% CI {pe['ci'][0]:.3f} to {pe['ci'][1]:.3f}", f"gain {e['gain']:.3f}", "| yor_Latn |", "| hin_Deva |"]
missing = [w for w in want if w not in rep]
if missing:
    print("missing:", missing)
    sys.exit(1)
PYEOF
grep -q "gain 0.050" "$WORK/report.md" && ok "the planted +0.05 steering gain is reported" ||
    not_ok "steering gain" "$(grep -m1 Steering "$WORK/report.md")"
expect_exit 1 "report.py without a directory" "$PY" "$top/notebooks/report.py"
