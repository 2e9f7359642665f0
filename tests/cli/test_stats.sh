# moetrace-stats on a synthetic trace set (synth -> reduce -> stats): the planted alignment/accuracy relation,
# band and task experts are recovered; every statistic matches scipy/numpy (tests/stats/oracle.py, which also
# reproduces the seeded bootstrap and permutations); steering files round-trip through h5py and the exports;
# bad inputs give one-line errors with exit 2.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
S="$BIN/moetrace-stats"
ORACLE="$TESTS/stats/oracle.py"

expect_exit 0 "stats --help" "$S" --help
expect_out "help lists the verbs" "correlate.*"
expect_exit 0 "moetrace stats dispatches" "$BIN/moetrace" stats correlate --help
expect_out "correlate help lists exit codes" "Exit status"
expect_exit 1 "stats without a verb" "$S"
expect_exit 1 "stats unknown verb" "$S" frobnicate
expect_err_line "unknown verb: one line" "unknown verb 'frobnicate'"
expect_exit 1 "correlate without --tables" "$S" correlate --accuracy x.tsv
expect_exit 1 "correlate bad option" "$S" correlate --bogus
expect_exit 1 "correlate bad --alpha" "$S" correlate --tables a --accuracy b --alpha 2

run="$WORK/run"
langs=eng_Latn:1,fra_Latn:0.9,deu_Latn:0.8,spa_Latn:0.7,zho_Hans:0.6,hin_Deva:0.45,swh_Latn:0.3,yor_Latn:0.2,bam_Latn:0.1
"$BIN/moetrace-capture" synth --out "$run" --layers 16 --experts 32 --top-k 4 --units 16 --seed 7 \
    --langs "$langs" --datasets flores,math --quiet || not_ok "synth" "exit $?"
"$BIN/moetrace-reduce" "$run" -o "$WORK/tab" -q || not_ok "reduce" "exit $?"
tab="$WORK/tab"
acc="$run/accuracy.tsv"

# ---- correlate -------------------------------------------------------------------------------------------
expect_exit 0 "correlate (TSV)" "$S" correlate --tables "$tab" --accuracy "$acc" --profile synthetic-l16-e32
cp "$WORK/out" "$WORK/correlate.tsv"
expect_out "correlate: column header" "^#model	task	layer	n_langs	pearson_r"
expect_out "correlate: band row" "^synthetic-l16-e32	math	band	8	-0\.9"
expect_out "correlate: verdict recovers the planted negative relation" "^# verdict: .*band 4-13.*strong negative"
expect_out "correlate: band source named" "^# band: 4-13 .*profile synthetic-l16-e32"
expect_exit 0 "correlate --json" "$S" correlate --tables "$tab" --accuracy "$acc" --profile synthetic-l16-e32 --json
cp "$WORK/out" "$WORK/c.json"
if "$PY" "$ORACLE" correlate "$tab" "$acc" "$WORK/c.json" >"$WORK/oracle" 2>&1; then ok "correlate matches scipy and the seeded resampling"
else not_ok "correlate matches scipy and the seeded resampling" "$(head -c 400 "$WORK/oracle")"; fi
"$S" correlate --tables "$tab" --accuracy "$acc" --profile synthetic-l16-e32 --json >"$WORK/c2.json"
if cmp -s "$WORK/c.json" "$WORK/c2.json"; then ok "correlate is reproducible from the seed"; else not_ok "correlate is reproducible from the seed" "outputs differ"; fi
"$S" correlate --tables "$tab" --accuracy "$acc" --profile synthetic-l16-e32 --json --seed 9 >"$WORK/c3.json"
if ! cmp -s "$WORK/c.json" "$WORK/c3.json"; then ok "another seed gives other CIs"; else not_ok "another seed gives other CIs" "identical"; fi
if "$PY" "$ORACLE" correlate "$tab" "$acc" "$WORK/c3.json" >/dev/null 2>&1; then ok "seed 9 matches the oracle too"; else not_ok "seed 9 matches the oracle too" "mismatch"; fi

expect_exit 0 "correlate (TSV) for the p methods" "$S" correlate --tables "$tab" --accuracy "$acc" --band 4-13
expect_out "8 languages: Spearman p and permutation p exact (columns)" "^model	math	band	8	.*	exact	exact$"
expect_out "8 languages: the verdict names the exact method" "^# verdict: .*Spearman rho = .*\(exact: all 40320 orderings\)"

# five languages in perfect order: rho = -1, whose exact two-sided p is 2/120 (the t approximation says ~1e-24)
"$BIN/moetrace-capture" synth --out "$WORK/run5" --layers 8 --experts 16 --top-k 2 --units 6 --seed 5 --band 3-6 \
    --langs eng_Latn:1,fra_Latn:0.9,deu_Latn:0.7,zho_Hans:0.6,hin_Deva:0.4,bam_Latn:0.1 --datasets flores,math \
    --quiet && "$BIN/moetrace-reduce" "$WORK/run5" -o "$WORK/tab5" -q || not_ok "synth 5 languages" "failed"
expect_exit 0 "correlate, 5 languages" "$S" correlate --tables "$WORK/tab5" --accuracy "$WORK/run5/accuracy.tsv" --band 3-6
expect_out "5 languages, rho = -1: Spearman p = 2/120, exact" "^model	math	band	5	.*	-1\.000000	0\.0166667	.*	exact	exact$"
expect_out "5 languages: the verdict says exact and warns about the bootstrap CI" \
    "^# verdict: .*Spearman rho = -1\.000, p = 0\.0167 \(exact: all 120 orderings\); 5 languages; .*bootstrap CI is unreliable"
if grep -q 'e-2[0-9]' "$WORK/out"; then not_ok "5 languages: no t-approximation p of 1e-20 or so" "$(grep 'e-2' "$WORK/out" | head -c 200)"
else ok "5 languages: no t-approximation p of 1e-20 or so"; fi
"$S" correlate --tables "$WORK/tab5" --accuracy "$WORK/run5/accuracy.tsv" --band 3-6 --json >"$WORK/c5.json"
if "$PY" "$ORACLE" correlate "$WORK/tab5" "$WORK/run5/accuracy.tsv" "$WORK/c5.json" >"$WORK/oracle" 2>&1; then ok "5 languages: exact p-values match a brute-force enumeration"
else not_ok "5 languages: exact p-values match a brute-force enumeration" "$(head -c 400 "$WORK/oracle")"; fi
# more than 10 languages: Spearman's p is scipy's t approximation, permutations are sampled (seeded)
"$BIN/moetrace-capture" synth --out "$WORK/run12" --layers 6 --experts 16 --top-k 2 --units 4 --seed 11 --band 2-5 \
    --langs eng_Latn:1,fra_Latn:0.95,deu_Latn:0.9,spa_Latn:0.85,ita_Latn:0.8,por_Latn:0.7,zho_Hans:0.6,jpn_Jpan:0.55,hin_Deva:0.45,ben_Beng:0.35,swh_Latn:0.3,yor_Latn:0.2,bam_Latn:0.1 \
    --datasets flores,math --quiet && "$BIN/moetrace-reduce" "$WORK/run12" -o "$WORK/tab12" -q || not_ok "synth 12 languages" "failed"
"$S" correlate --tables "$WORK/tab12" --accuracy "$WORK/run12/accuracy.tsv" --band 2-5 --permutations 2000 --bootstrap 2000 --json >"$WORK/c12.json"
if "$PY" -c 'import json,sys; b=json.load(open(sys.argv[1]))["results"][0]["band_mean"]; assert b["spearman"]["p_method"] == "t" and b["spearman"]["p_perm_method"] == "monte-carlo" and b["spearman"]["n_perm"] == 2000, b' "$WORK/c12.json" 2>"$WORK/py" &&
    "$PY" "$ORACLE" correlate "$WORK/tab12" "$WORK/run12/accuracy.tsv" "$WORK/c12.json" >"$WORK/oracle" 2>&1
then ok "12 languages: t approximation and seeded permutations match scipy/numpy"
else not_ok "12 languages: t approximation and seeded permutations match scipy/numpy" "$(cat "$WORK/py" "$WORK/oracle" | head -c 400)"; fi

# lm-evaluation-harness input: belebele_<flores> tasks with acc,none
"$PY" - "$acc" "$WORK/lmeval.json" <<'PYEOF'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if not l.startswith("#")]
res = {f"belebele_{r[0]}": {"acc,none": float(r[3]), "acc_stderr,none": 0.01, "alias": r[0]} for r in rows}
res["belebele"] = {"acc,none": 0.5}
json.dump({"results": res, "config": {}}, open(sys.argv[2], "w"))
PYEOF
expect_exit 0 "correlate reads lm-eval results JSON" "$S" correlate --tables "$tab" --accuracy "$WORK/lmeval.json" --band 4-13
expect_out "lm-eval: task belebele, same band r" "^model	belebele	band	8	-0\.9"
expect_out "lm-eval: format recorded" "^# accuracy: .*\(lm-eval\)"

# ---- band ------------------------------------------------------------------------------------------------
expect_exit 0 "band --band detect" "$S" band --tables "$tab" --band detect
planted=$("$PY" -c 'import json,sys; b=json.load(open(sys.argv[1]))["band"]; print("%d-%d" % (b[0], b[1]))' "$run/truth.json")
expect_out "band detection recovers the planted band $planted" "^# band: $planted .*detected from the U-curve"
expect_exit 0 "band from the profile, detection beside it" "$S" band --tables "$tab" --profile synthetic-l16-e32
expect_out "band: profile band and detected band" "^# detected band for comparison: $planted"
run24="$WORK/run24"
"$BIN/moetrace-capture" synth --out "$run24" --layers 24 --experts 16 --top-k 2 --units 8 --seed 3 --band 5-19 \
    --langs eng_Latn:1,fra_Latn:0.8,hin_Deva:0.5,bam_Latn:0.2 --datasets flores --quiet
"$BIN/moetrace-reduce" "$run24" -o "$WORK/tab24" -q
expect_exit 0 "band on a 24-layer set" "$S" band --tables "$WORK/tab24" --json
# the planted sharedness ramps up outside the band (0.9 one layer above it here): the detected band may take in
# a neighbouring layer that is nearly fully shared, never one that is not
if "$PY" -c '
import json, sys
b = json.load(open(sys.argv[1]))["band"]
w = json.load(open(sys.argv[2]))["sharedness"]
assert b["detected"] and abs(b["first"] - 5) <= 1 and abs(b["last"] - 19) <= 1, b
assert all(w[l - 1] >= 0.75 for l in range(b["first"], b["last"] + 1)), (b, w)
' "$WORK/out" "$run24/truth.json" 2>"$WORK/py"
then ok "band detection recovers planted 5-19 of 24 (edges: shared >= 0.75)"; else not_ok "band detection recovers planted 5-19 of 24 (edges: shared >= 0.75)" "$(tail -c 300 "$WORK/py")"; fi

# one band for every step: --band FILE takes the band of a moetrace-stats output (band.txt, band --json, ...)
"$S" band --tables "$tab" --band detect >"$WORK/band.txt"
"$S" band --tables "$tab" --band 5-11 --json >"$WORK/band.json"
expect_exit 0 "correlate --band band.txt" "$S" correlate --tables "$tab" --accuracy "$acc" --band "$WORK/band.txt"
expect_out "--band band.txt: the band of band.txt, source named" "^# band: $planted .*from $WORK/band.txt: detected from the U-curve"
expect_exit 0 "experts --band band.json" "$S" experts --tables "$tab" --dataset math --band "$WORK/band.json"
expect_out "--band band.json: its band" "^# band: 5-11 .*from $WORK/band.json"
expect_exit 1 "--band with a missing file: exit 1" "$S" experts --tables "$tab" --dataset math --band "$WORK/no-band.txt"
expect_err_line "--band missing file: one line" "no-band.txt: not A-B, detect or a readable band file"
expect_exit 2 "--band with a file holding no band: exit 2" "$S" experts --tables "$tab" --dataset math --band "$acc"
expect_err_line "--band file without a band: one line naming it" "accuracy.tsv: no band in it"
printf '# band: 3-40 (1-based, inclusive): made up\n' >"$WORK/band40.txt"
expect_exit 2 "--band file with a band outside the layers: exit 2" "$S" experts --tables "$tab" --dataset math --band "$WORK/band40.txt"
expect_err_line "--band file outside the layers: one line" "band40.txt: band 3-40: .* <= 16"

# ---- experts and overlap ---------------------------------------------------------------------------------
expect_exit 0 "experts --json" "$S" experts --tables "$tab" --dataset math --profile synthetic-l16-e32 --tau 0.2 --json
if "$PY" -c '
import json, sys
got = {(e["layer"], e["expert"]) for e in json.load(open(sys.argv[1]))["task"]}
want = {tuple(p) for p in json.load(open(sys.argv[2]))["task_experts"]["math"]}
assert got == want, (sorted(got - want), sorted(want - got))
' "$WORK/out" "$run/truth.json" 2>"$WORK/py"; then ok "task experts at tau 0.2 = the planted task experts"
else not_ok "task experts at tau 0.2 = the planted task experts" "$(tail -c 300 "$WORK/py")"; fi
expect_exit 0 "overlap" "$S" overlap --tables "$tab" --dataset math --profile synthetic-l16-e32
expect_out "overlap: none at tau 0.3" "^0\.3	[0-9]+	[0-9]+	0	-"
expect_exit 0 "experts 3sd rule" "$S" experts --tables "$tab" --dataset math --profile synthetic-l16-e32 --ml-rule 3sd
expect_out "experts 3sd: counts reported" "^# counts: task [0-9]+ .*multilingual [0-9]+"

# ---- steer -----------------------------------------------------------------------------------------------
st="$WORK/steer"
expect_exit 0 "steer soft with every control" "$S" steer --tables "$tab" --dataset math --profile synthetic-l16-e32 \
    --tau 0.2 --op soft --lambda 0.5 --out "$st"
expect_out "steer: task row" "^task	soft	0\.5	20	4-13	"
expect_out "steer: deactivate row" "^deactivate	soft	-0\.5	20	"
for n in task outside_band multilingual random deactivate; do
    if [ -f "$st/$n.h5" ] && [ -f "$st/$n.json" ] && [ -f "$st/$n.easysteer.json" ] && [ -f "$st/$n.f32" ] && [ -f "$st/$n.f32.json" ]
    then ok "steer wrote $n (h5, json, easysteer, f32)"; else not_ok "steer wrote $n (h5, json, easysteer, f32)" "missing"; fi
done
if "$PY" - "$st" "$run/truth.json" >"$WORK/py" 2>&1 <<'PYEOF'
import json, sys
import h5py, numpy as np
d, truth = sys.argv[1], json.load(open(sys.argv[2]))
band = truth["band"]
def load(n):
    with h5py.File(f"{d}/{n}.h5", "r") as f:
        a = dict(f.attrs)
        return a, f["experts"][()], f["coef"][()], f["target_layers"][()]
a, ex, coef, tl = load("task")
assert a["format"] == "moetrace-steering" and a["format_version"] == 1 and a["op"] == "soft", a
assert a["n_layers"] == 16 and a["n_experts"] == 32 and a["top_k"] == 4 and a["model_id"] == "synthetic/moe-L16-E32"
assert {(int(l) + 1, int(e)) for l, e in ex} == {tuple(p) for p in truth["task_experts"]["math"]}
assert np.allclose(coef[ex[:, 0], ex[:, 1]], 0.5) and np.count_nonzero(coef) == len(ex)
prov = json.loads(a["provenance"])
assert prov["tau"] == 0.2 and prov["band"]["first"] == band[0] and prov["dataset"] == "math", prov
j = json.load(open(f"{d}/task.json"))
assert j["experts"] == ex.tolist() and np.allclose(np.array(j["coef"]), coef) and j["op"] == "soft"
es = json.load(open(f"{d}/task.easysteer.json"))["layer_configs"]
assert {(int(k), e) for k, v in es.items() for e in v["expert_ids"]} == {(int(l), int(e)) for l, e in ex}
# soft steering is exported as EasySteer's soft mode, lambda rescaled from the population std to torch's n-1 std
assert all(v["mode"] == "soft" and abs(v["lambda"] - 0.5 * (31 / 32) ** 0.5) < 1e-12 for v in es.values()), es
flat = np.fromfile(f"{d}/task.f32", dtype="<f4").reshape(16, 32)
side = json.load(open(f"{d}/task.f32.json"))
assert side["shape"] == [16, 32] and side["dtype"] == "float32" and np.array_equal(flat, coef)
# controls: same size, outside the band / random matched per layer / multilingual in band
_, ox, _, _ = load("outside_band")
assert len(ox) == len(ex) and all(not (band[0] <= l + 1 <= band[1]) for l, _ in ox)
_, rx, _, _ = load("random")
assert sorted(np.bincount(rx[:, 0], minlength=16)) == sorted(np.bincount(ex[:, 0], minlength=16))
assert np.array_equal(np.bincount(rx[:, 0], minlength=16), np.bincount(ex[:, 0], minlength=16))
assert not ({(int(l), int(e)) for l, e in rx} & {(int(l), int(e)) for l, e in ex})
_, mx, _, _ = load("multilingual")
assert len(mx) == len(ex) and all(band[0] <= l + 1 <= band[1] for l, _ in mx)
a2, dx, dc, _ = load("deactivate")
assert np.array_equal(dx, ex) and np.allclose(dc[dx[:, 0], dx[:, 1]], -0.5)
print("ok")
PYEOF
then ok "steering files: h5py reads the selection, twin and exports agree, controls are matched"
else not_ok "steering files: h5py reads the selection, twin and exports agree, controls are matched" "$(tail -c 400 "$WORK/py")"; fi
# EasySteer exports: the schema EasySteer documents, and its rule (run with torch) routes as moetrace's does
ES="$TESTS/stats/easysteer_check.py"
if out=$("$PY" "$ES" --self-test 2>&1); then ok "EasySteer schema check refuses broken configs"; else not_ok "EasySteer schema check refuses broken configs" "$out"; fi
if out=$(OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$PY" "$ES" "$st" task outside_band multilingual random deactivate 2>&1)
then ok "EasySteer exports (soft, deactivate = negative lambda): schema and routing"
else not_ok "EasySteer exports (soft, deactivate = negative lambda): schema and routing" "$(printf '%s' "$out" | tail -c 400)"; fi
"$S" steer --tables "$tab" --dataset math --profile synthetic-l16-e32 --tau 0.2 --op soft --out "$WORK/steer2" >/dev/null
if cmp -s "$st/random.h5" "$WORK/steer2/random.h5" || cmp -s "$st/random.json" "$WORK/steer2/random.json"
then ok "random control reproducible from the seed"; else not_ok "random control reproducible from the seed" "differs"; fi
expect_exit 0 "steer hard caps at top-k per layer" "$S" steer --tables "$tab" --dataset math \
    --profile synthetic-l16-e32 --tau 0.05 --op hard --eps-mode fixed --controls deactivate --out "$WORK/steer3"
if "$PY" -c '
import h5py, numpy as np, sys, json
with h5py.File(sys.argv[1] + "/task.h5", "r") as f:
    ex = f["experts"][()]
    assert f.attrs["op"] == "hard" and f.attrs["eps_mode"] == "fixed" and abs(f.attrs["eps"] - 0.01) < 1e-12
assert np.bincount(ex[:, 0]).max() <= 4
with h5py.File(sys.argv[1] + "/deactivate.h5", "r") as f:
    assert f.attrs["op"] == "off" and (f["coef"][()] <= 0).all()
es = json.load(open(sys.argv[1] + "/deactivate.easysteer.json"))["layer_configs"]
assert all(v["mode"] == "deactivate" for v in es.values())
' "$WORK/steer3" 2>"$WORK/py"; then ok "hard: at most top-k forced per layer, deactivate is op off"
else not_ok "hard: at most top-k forced per layer, deactivate is op off" "$(tail -c 300 "$WORK/py")"; fi

if out=$(OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$PY" "$ES" "$WORK/steer3" task deactivate 2>&1)
then ok "EasySteer exports (hard with fixed eps, off): activate/deactivate with epsilon, schema and routing"
else not_ok "EasySteer exports (hard with fixed eps, off): schema and routing" "$(printf '%s' "$out" | tail -c 400)"; fi
expect_exit 0 "steer --op bias (--lambda is the bias)" "$S" steer --tables "$tab" --dataset math --profile synthetic-l16-e32 \
    --tau 0.2 --op bias --lambda 1.5 --controls random --out "$WORK/steer4"
expect_out "bias: the value added is printed" "^task	bias	1\.5	20	"
if [ -f "$WORK/steer4/task.h5" ] && [ ! -e "$WORK/steer4/task.easysteer.json" ] && grep -q "no EasySteer moe_router mode" "$WORK/err"
then ok "bias: no EasySteer export (EasySteer has no additive mode), said once"; else not_ok "bias: no EasySteer export" "$(cat "$WORK/err")"; fi

# ---- effect ----------------------------------------------------------------------------------------------
"$PY" - "$acc" "$WORK/base.tsv" "$WORK/steered.tsv" <<'PYEOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if not l.startswith("#")]
gains = [0.012, 0.02, -0.004, 0.031, 0.0, 0.018, 0.009, 0.025, -0.002]
with open(sys.argv[2], "w") as b, open(sys.argv[3], "w") as s:
    for f in (b, s):
        f.write("# test accuracies\n#lang\ttask\tmetric\tvalue\tn\n")
    for r, g in zip(rows, gains):
        b.write(f"{r[0]}\tmgsm\taccuracy\t{r[3]}\t250\n")
        s.write(f"{r[0]}\tmgsm\taccuracy\t{float(r[3]) + g:.6f}\t250\n")
PYEOF
expect_exit 0 "effect (paper table)" "$S" effect --baseline "$WORK/base.tsv" --steered "$WORK/steered.tsv" --steer "$st/task.h5"
expect_out "effect: paper layout header" "^#model	task	layers	tau	op	n_experts	baseline	steered	gain"
expect_out "effect: row from the steering file" "^synthetic/moe-L16-E32	mgsm	4-13	0\.2	soft, lambda=0\.5	20	"
expect_exit 0 "effect --json" "$S" effect --baseline "$WORK/base.tsv" --steered "$WORK/steered.tsv" --json
cp "$WORK/out" "$WORK/e.json"
if "$PY" "$ORACLE" effect "$WORK/base.tsv" "$WORK/steered.tsv" "$WORK/e.json" >"$WORK/oracle" 2>&1; then ok "effect matches numpy/scipy (paired bootstrap, sign test)"
else not_ok "effect matches numpy/scipy (paired bootstrap, sign test)" "$(head -c 400 "$WORK/oracle")"; fi
expect_exit 0 "effect --per-lang" "$S" effect --baseline "$WORK/base.tsv" --steered "$WORK/steered.tsv" --per-lang
expect_out "effect: per-language rows" "^mgsm	swh_Latn	"

# ---- bad inputs ------------------------------------------------------------------------------------------
sed 's/^hin_Deva/xx_Zzzz/' "$acc" >"$WORK/badlang.tsv"
expect_exit 2 "unknown language code: exit 2" "$S" correlate --tables "$tab" --accuracy "$WORK/badlang.tsv" --band 4-13
expect_err_line "unknown language code: one line naming file and code" "badlang.tsv:[0-9]*: unknown language code 'xx_Zzzz'"
grep -v '^hin_Deva' "$acc" >"$WORK/missing.tsv"
expect_exit 2 "language without accuracy: exit 2" "$S" correlate --tables "$tab" --accuracy "$WORK/missing.tsv" --band 4-13
expect_err_line "language without accuracy: one line" "missing.tsv: no accuracy for hin_Deva"
expect_exit 0 "--skip-missing drops it" "$S" correlate --tables "$tab" --accuracy "$WORK/missing.tsv" --band 4-13 --skip-missing
expect_out "--skip-missing: 7 languages" "	band	7	"
sed 's/^\(hin_Deva	[^	]*	[^	]*	\)[^	]*/\1nan/' "$acc" >"$WORK/nan.tsv"
expect_exit 2 "NaN accuracy: exit 2" "$S" correlate --tables "$tab" --accuracy "$WORK/nan.tsv" --band 4-13
expect_err_line "NaN accuracy: one line" "nan.tsv:[0-9]*: NaN accuracy for hin_Deva"
grep -E '^(#|eng_Latn|fra_Latn|deu_Latn)' "$acc" >"$WORK/two.tsv"
expect_exit 2 "fewer than 3 languages: exit 2" "$S" correlate --tables "$tab" --accuracy "$WORK/two.tsv" --band 4-13 --skip-missing
expect_err_line "fewer than 3 languages: one line" "2 non-English languages .* at least 3"
expect_exit 0 "correlate reads tables.h5" "$S" correlate --tables "$tab/tables.h5" --accuracy "$acc" --band 4-13
echo "not a table" >"$WORK/bad-tables.h5"
expect_exit 2 "a tables.h5 that is not HDF5: exit 2" "$S" correlate --tables "$WORK/bad-tables.h5" --accuracy "$acc" --band 4-13
expect_err_line "bad tables.h5: one line naming it" "bad-tables.h5: not an HDF5 file"
expect_exit 2 "missing tables: exit 2" "$S" band --tables "$WORK/nope"
expect_err_line "missing tables: one line naming it" "$WORK/nope"
expect_exit 1 "band outside the layers: exit 1" "$S" correlate --tables "$tab" --accuracy "$acc" --band 4-40
expect_exit 2 "unknown profile: exit 2" "$S" correlate --tables "$tab" --accuracy "$acc" --profile no-such-model
expect_err_line "unknown profile: one line" "no-such-model.json: no such model profile"
printf '{"format":"moetrace-steering","format_version":9}\n' >"$WORK/v9.json"
expect_exit 2 "steering file of a future version: exit 2" "$S" effect --baseline "$WORK/base.tsv" --steered "$WORK/steered.tsv" --steer "$WORK/v9.json"
expect_err_line "future steering version: one line" "steering format version 9"
