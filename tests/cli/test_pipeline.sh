# The pipeline end to end on a synthetic run: synth -> reduce -> stats, reading the reduce tables both as TSVs and
# as tables.h5 (the same numbers either way), recovering the planted alignment-accuracy relation, the planted
# band and the planted task experts, and writing steering files that libmoetrace validates.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
S="$BIN/moetrace-stats"
mkdir -p "$WORK/p"
"$BIN/moetrace-capture" synth --out "$WORK/p/run" --layers 16 --experts 32 --top-k 4 --units 12 --seed 7 \
    --langs eng_Latn:1,fra_Latn:0.9,deu_Latn:0.8,zho_Hans:0.6,hin_Deva:0.45,swh_Latn:0.3,bam_Latn:0.1 --quiet
expect_exit 0 "reduce the run" "$BIN/moetrace-reduce" "$WORK/p/run" -o "$WORK/p/t" -q
T="$WORK/p/t"
for form in "$T" "$T/tables.h5"; do
    n=$(basename "$form")
    expect_exit 0 "correlate reads $n" "$S" correlate --tables "$form" --accuracy "$WORK/p/run/accuracy.tsv" --band 4-13
    grep -v '^#' "$WORK/out" >"$WORK/corr-$n"
    expect_out "correlate ($n): strong negative band correlation, as planted" "^# verdict: .*strong negative correlation"
    expect_exit 0 "band detect reads $n" "$S" band --tables "$form" --band detect
    grep -v '^#' "$WORK/out" >"$WORK/band-$n"
    expect_exit 0 "experts reads $n" "$S" experts --tables "$form" --dataset math --tau 0.2 --band 4-13
    grep -v '^#' "$WORK/out" >"$WORK/exp-$n"
done
for what in corr band exp; do
    cmp -s "$WORK/$what-t" "$WORK/$what-tables.h5" && ok "$what: TSV and tables.h5 give the same numbers" ||
        not_ok "$what: TSV vs tables.h5" "$(diff "$WORK/$what-t" "$WORK/$what-tables.h5" | head -c 300)"
done
awk -F'\t' '$3 == "band" && $5 < -0.9 {found = 1} END {exit !found}' "$WORK/corr-t" &&
    ok "band-mean Pearson r < -0.9 across the non-English languages" || not_ok "band r" "$(grep band "$WORK/corr-t")"
# the selected task experts are the planted ones
"$PY" -c '
import json, sys
truth = {tuple(p) for p in json.load(open(sys.argv[1]))["task_experts"]["math"]}
got = set()
for line in open(sys.argv[2]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "task":
        got.add((int(f[1]), int(f[2])))
assert got == truth, (sorted(got - truth), sorted(truth - got))
' "$WORK/p/run/truth.json" "$WORK/exp-t" && ok "task experts = the planted ones" || not_ok "task experts" "differ from truth.json"
expect_exit 0 "steering files for the selection and its controls" "$S" steer --tables "$T/tables.h5" --dataset math \
    --tau 0.2 --band 4-13 --model-id synthetic/moe-L16-E32 --top-k 4 --out "$WORK/p/steer"
n_h5=$(ls "$WORK/p/steer"/*.h5 2>/dev/null | wc -l)
[ "$n_h5" -ge 5 ] && ok "one steering file per intervention ($n_h5)" || not_ok "steering files" "$n_h5 files"
