# The figure notebooks (notebooks/): the committed notebooks carry no outputs; on a small synthetic results set
# (synth -> reduce -> stats band/correlate/experts/overlap/steer/effect, every step on the band of band.txt) the
# numbers notebooks/moetrace_figures.py plots equal the TSV and JSON files they come from, every figure shows the
# one band, and stats outputs made with another band are refused; notebooks/run.sh executes every notebook
# headless on /usr/bin/python3 and writes each figure as a valid, non-blank PNG and a PDF. Skipped (one
# "ok ... # skip") only when matplotlib or Jupyter is not installed for $PY.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
top=$(cd "$TESTS/.." && pwd)
NB="$top/notebooks"
S="$BIN/moetrace-stats"
FIGS="fig1_divergence fig2_pairwise fig3_entropy_jaccard fig4_alignment_accuracy fig5_task_experts
fig6_specialisation fig7_steering fig8_divergence_accuracy fig9_layer_correlation fig10_overlap fig11_effects"

# ---- committed notebooks: no outputs, no execution counts (plain JSON, needs no Jupyter) ---------------------
cat >"$WORK/nb_clean.py" <<'EOF'
import json, sys
bad = []
for name in sys.argv[1:]:
    label, _, path = name.partition("=")
    try:
        nb = json.load(open(path, encoding="utf-8"))
    except ValueError as e:
        bad.append(f"{label}: not JSON ({e})")
        continue
    for i, c in enumerate(nb.get("cells", [])):
        if c.get("cell_type") == "code" and (c.get("outputs") or c.get("execution_count") is not None):
            bad.append(f"{label}: cell {i} has outputs or an execution count")
print("; ".join(bad))
sys.exit(1 if bad else 0)
EOF
set -- "$NB"/[0-9]*.ipynb
if [ -f "$1" ] && [ $# -ge 11 ]; then ok "notebooks: $# figure notebooks"; else not_ok "notebooks" "want 11 notebooks/NN_*.ipynb, found $#"; fi
args=""
for f in "$NB"/*.ipynb; do [ -f "$f" ] && args="$args notebooks/$(basename "$f")=$f"; done
# shellcheck disable=SC2086
if out=$("$PY" "$WORK/nb_clean.py" $args 2>&1); then ok "notebooks in the tree carry no outputs"
else not_ok "notebooks in the tree carry no outputs" "$out (strip: $PY notebooks/moetrace_figures.py strip FILE)"; fi
if git -C "$top" rev-parse HEAD >/dev/null 2>&1; then
    args=""
    for p in $(git -C "$top" ls-tree --name-only HEAD notebooks/ 2>/dev/null | grep '\.ipynb$'); do
        git -C "$top" show "HEAD:$p" >"$WORK/$(basename "$p")" && args="$args HEAD:$p=$WORK/$(basename "$p")"
    done
    # shellcheck disable=SC2086
    if [ -z "$args" ]; then ok "committed notebooks carry no outputs # skip: none committed yet"
    elif out=$("$PY" "$WORK/nb_clean.py" $args 2>&1); then ok "committed notebooks (HEAD) carry no outputs"
    else not_ok "committed notebooks (HEAD) carry no outputs" "$out"; fi
fi

if ! "$PY" -c 'import matplotlib, numpy, nbformat, nbclient, nbconvert, ipykernel' 2>"$WORK/imp"; then
    ok "notebooks # skip: $PY lacks matplotlib or Jupyter ($(tail -n 1 "$WORK/imp")); make deps installs them"
    exit 0
fi

# ---- a small results set, laid out as make demo lays it out ------------------------------------------------
R="$WORK/results"
mkdir -p "$R"
if "$BIN/moetrace-capture" synth --out "$R/run" --layers 8 --experts 16 --top-k 2 --units 6 --seed 5 --band 3-6 \
    --langs eng_Latn:1,fra_Latn:0.9,zho_Hans:0.6,hin_Deva:0.4,bam_Latn:0.1 --datasets flores,math --quiet &&
    "$BIN/moetrace-reduce" "$R/run" -o "$R/tables" -q &&
    "$S" band --tables "$R/tables" --band detect >"$R/band.txt" &&
    "$S" correlate --tables "$R/tables" --accuracy "$R/run/accuracy.tsv" --band "$R/band.txt" --json >"$R/correlate.json" &&
    "$S" experts --tables "$R/tables" --dataset math --tau 0.2 --band "$R/band.txt" >"$R/experts.tsv" &&
    "$S" overlap --tables "$R/tables" --dataset math --band "$R/band.txt" --taus 0.02,0.05,0.1,0.2,0.3,0.4 \
        >"$R/overlap.tsv" &&
    "$S" steer --tables "$R/tables" --dataset math --tau 0.2 --band "$R/band.txt" --model-id synthetic/moe-L8-E16 --top-k 2 \
        --out "$R/steer" >/dev/null 2>"$WORK/err"
then ok "small results set: synth -> reduce -> stats, one band file"
else not_ok "small results set" "$(head -c 300 "$WORK/err")"; exit 1; fi

# Steered accuracies: the synthetic set has no model to run under a steering file, so they are made up here
# (fixed gains per intervention and language); the demo gets them from the engine (capture run --mode score
# --steer). What the effects figure reads is the real layout: effects/NAME.json = moetrace-stats effect --json
# --steer steer/NAME.h5, one per steering file.
mkdir -p "$R/effects" "$WORK/steered"
"$PY" - "$R/run/accuracy.tsv" "$WORK/steered" <<'PYEOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if not l.startswith("#")]
gain = {"task": [0.004, 0.012, 0.02, 0.031, 0.045], "outside_band": [-0.01, -0.02, 0.0, -0.03, -0.015],
        "multilingual": [0.0, -0.012, -0.02, -0.01, -0.04], "random": [0.002, -0.004, 0.0, 0.006, -0.003],
        "deactivate": [-0.002, -0.03, -0.05, -0.04, -0.06]}
for name, g in gain.items():
    with open(f"{sys.argv[2]}/{name}.tsv", "w") as f:
        f.write("#lang\ttask\tmetric\tvalue\tn\n")
        for r, d in zip(rows, g):
            f.write(f"{r[0]}\t{r[1]}\t{r[2]}\t{float(r[3]) + d:.6f}\t{r[4]}\n")
PYEOF
n_eff=0
for n in task outside_band multilingual random deactivate; do
    "$S" effect --baseline "$R/run/accuracy.tsv" --steered "$WORK/steered/$n.tsv" --steer "$R/steer/$n.h5" --json \
        >"$R/effects/$n.json" 2>>"$WORK/err" && n_eff=$((n_eff + 1))
done
[ "$n_eff" -eq 5 ] && ok "effects/NAME.json for the selection and 4 controls" || not_ok "effects" "$n_eff of 5: $(head -c 300 "$WORK/err")"

# ---- the module's numbers are the files' numbers ---------------------------------------------------------
cat >"$WORK/nb_numbers.py" <<'EOF'
import json, os, sys
import numpy as np
nb, R = sys.argv[1], sys.argv[2]
sys.path.insert(0, nb)
import moetrace_figures as mf

def check(name, cond, why=""):
    print(f"ok {name}" if cond else f"not ok {name}: {why}")

def rows(path):
    """Independent TSV reading: the last '#'-line with tabs before the data is the header."""
    header, out = None, []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith("#"):
            if "\t" in line and not out:
                header = line[1:].split("\t")
        elif line:
            out.append(dict(zip(header, line.split("\t"))))
    return out

T = os.path.join(R, "tables")
res = mf.Results(R, os.path.join(R, "figs"))
check("results: default figures directory is <results>/figures", mf.Results(R).figures == mf.Path(R).resolve() / "figures")
envfigs = os.path.realpath(os.path.join(R, "env-figs"))
os.environ["MOETRACE_RESULTS"], os.environ["MOETRACE_FIGURES"] = R, envfigs
e = mf.Results.from_env()
check("results: MOETRACE_RESULTS and MOETRACE_FIGURES", str(e.root) == os.path.realpath(R) and str(e.figures) == envfigs)

# band: band.txt's
bt = [l for l in open(os.path.join(R, "band.txt")) if l.startswith("# band: ")][0]
a, b = bt.split()[2].split("-")
band = mf.middle_band(res)
check("band: the band of band.txt", (band.first, band.last) == (int(a), int(b)), f"{band} vs {a}-{b}")

def lines(fig):
    return {l.get_gid(): l for ax in fig.axes for l in ax.get_lines() if l.get_gid()}

def images(fig):
    return {im.get_gid(): im.get_array() for ax in fig.axes for im in ax.get_images()}

# fig 1: the plotted series are div_from_en.tsv
div = {}
for r in rows(os.path.join(T, "div_from_en.tsv")):
    div.setdefault(r["lang"], {})[int(r["layer"])] = float(r["div"])
L = max(max(v) for v in div.values())
got = lines(mf.fig_divergence(res))
same = set(got) == set(div) and all(
    list(got[g].get_xdata()) == sorted(div[g]) and list(got[g].get_ydata()) == [div[g][l] for l in sorted(div[g])]
    for g in div)
check("fig1: one line per language, the values of div_from_en.tsv", same, f"{sorted(got)} vs {sorted(div)}")

# fig 2: the heatmaps are div_pairwise.tsv at layers 1, centre of the band, L
pw = {}
for r in rows(os.path.join(T, "div_pairwise.tsv")):
    pw[(int(r["layer"]), r["lang_a"], r["lang_b"])] = float(r["div"])
want_layers = [1, (band.first + band.last) // 2, L]
check("fig2: early, middle, late layers", mf.pairwise_layers(res) == want_layers, f"{mf.pairwise_layers(res)}")
ims = images(mf.fig_pairwise(res))
langs = sorted({k[1] for k in pw} | {k[2] for k in pw})
ok2 = set(ims) == {f"layer-{l}" for l in want_layers}
for l in want_layers:
    m = np.asarray(ims.get(f"layer-{l}"))
    for i, x in enumerate(langs):
        for j, y in enumerate(langs):
            want = 0.0 if i == j else pw.get((l, min(x, y), max(x, y)))
            ok2 = ok2 and m[i, j] == want
check("fig2: heatmaps equal div_pairwise.tsv (symmetric, zero diagonal)", ok2)

# fig 3: entropy.tsv and jaccard.tsv
got = lines(mf.fig_profiles(res))
ok3 = True
for name, col in (("entropy", "entropy"), ("jaccard", "jaccard")):
    per = {}
    for r in rows(os.path.join(T, f"{name}.tsv")):
        per.setdefault(r["lang"], {})[int(r["layer"])] = float(r[col])
    for g, d in per.items():
        l = got.get(f"{name}:{g}")
        ok3 = ok3 and l is not None and list(l.get_ydata()) == [d[k] for k in sorted(d)]
    ok3 = ok3 and len([k for k in got if k.startswith(name + ":")]) == len(per)
check("fig3: entropy and Jaccard lines equal entropy.tsv and jaccard.tsv", ok3)

# fig 4: points = (band mean of div_from_en, accuracy); their Pearson r is correlate.json's
c = json.load(open(os.path.join(R, "correlate.json")))
acc = {}
for r in rows(os.path.join(R, "run", "accuracy.tsv")):
    acc.setdefault((r["lang"], r["task"]), float(r["value"]))
fig = mf.fig_alignment_accuracy(res)
for t in c["results"]:
    sc = [s for ax in fig.axes for s in ax.collections if s.get_gid() == f"points:{t['task']}"]
    pts = np.asarray(sc[0].get_offsets()) if sc else np.zeros((0, 2))
    b0, b1 = c["band"]["first"], c["band"]["last"]
    want = np.array([[np.mean([div[g][l] for l in range(b0, b1 + 1)]), acc[(g, t["task"])]] for g in t["languages"]])
    check(f"fig4 ({t['task']}): points are the band-mean divergence and the accuracy",
          pts.shape == want.shape and np.allclose(pts, want, rtol=0, atol=1e-12), f"{pts} vs {want}")
    r = np.corrcoef(pts[:, 0], pts[:, 1])[0, 1] if len(pts) > 2 else float("nan")
    check(f"fig4 ({t['task']}): Pearson r of the points = correlate.json's band r",
          abs(r - t["band_mean"]["pearson"]["r"]) < 1e-6, f"{r} vs {t['band_mean']['pearson']['r']}")
    text = " ".join(tx.get_text() for ax in fig.axes for tx in ax.texts)
    ci = t["band_mean"]["pearson"]["ci"]
    check(f"fig4 ({t['task']}): r and its CI are printed", f"r = {t['band_mean']['pearson']['r']:.3f}" in text
          and f"{ci[0]:.3f}, {ci[1]:.3f}" in text, text)

# fig 5: Delta image = delta.tsv (math, English); circles = experts.tsv task set
fig = mf.fig_task_experts(res)
d = np.full((L, 16), np.nan)
for r in rows(os.path.join(T, "delta.tsv")):
    if r["dataset"] == "math" and r["lang"] == "eng_Latn":
        d[int(r["layer"]) - 1, int(r["expert"])] = float(r["delta"])
img = np.asarray(images(fig)["delta"])
check("fig5: Delta heatmap (row = layer - 1) equals delta.tsv math:eng_Latn", np.array_equal(img, d))
sel = sorted((int(r["expert"]), int(r["layer"])) for r in rows(os.path.join(R, "experts.tsv")) if r["set"] == "task")
sc = [s for ax in fig.axes for s in ax.collections if s.get_gid() == "selected"]
got5 = sorted(map(tuple, np.asarray(sc[0].get_offsets()).astype(int).tolist())) if sc else []
check("fig5: circled experts = the task set of experts.tsv", got5 == sel and len(sel) > 0, f"{got5} vs {sel}")

# fig 6: mean top-language share of the scored experts per layer
sp = [r for r in rows(os.path.join(T, "specialisation.tsv")) if r["scored"] == "1"]
ls = sorted({int(r["layer"]) for r in sp})
want = [np.mean([float(r["top_share"]) for r in sp if int(r["layer"]) == l]) for l in ls]
fig = mf.fig_specialisation(res)
m = lines(fig)["mean"]
check("fig6: mean top-language share by layer = specialisation.tsv",
      list(m.get_xdata()) == ls and np.allclose(m.get_ydata(), want, rtol=0, atol=1e-12))
bars = [p for ax in fig.axes for p in ax.patches if (p.get_gid() or "").startswith("count:")]
n_spec = sum(1 for r in sp if float(r["top_share"]) >= 0.5)
check("fig6: stacked bars count the experts with top share >= 0.5", sum(p.get_height() for p in bars) == n_spec,
      f"{sum(p.get_height() for p in bars)} vs {n_spec}")

# fig 7: the coefficient matrix = the flat f32 export of the same steering file
meta = json.load(open(os.path.join(R, "steer", "task.f32.json")))
flat = np.fromfile(os.path.join(R, "steer", meta["data_file"]), dtype="<f4").reshape(meta["shape"])
img = np.asarray(images(mf.fig_steering(res))["coef"])
check("fig7: coefficient image = steer/task.f32", img.shape == flat.shape and np.array_equal(img.astype("<f4"), flat)
      and np.count_nonzero(flat) > 0)

# one band everywhere: every shaded band, fig5's band lines and fig4's axis are band.txt's
def spans(fig):
    out = []
    for ax in fig.axes:
        for p in ax.patches:
            if p.get_gid() == "band":
                xs = np.asarray(p.get_xy())[:, 0]
                out.append((float(xs.min()), float(xs.max())))
    return out

want_span = (band.first - 0.5, band.last + 0.5)
for name in ("fig1_divergence", "fig3_entropy_jaccard", "fig6_specialisation", "fig8_divergence_accuracy",
             "fig9_layer_correlation"):
    sp = spans(getattr(mf, mf.FIGURES[name][0])(res))
    check(f"{name}: shades the band of band.txt", len(sp) >= 1 and all(s == want_span for s in sp), f"{sp} vs {want_span}")
f5 = mf.fig_task_experts(res)
hl = sorted(float(l.get_ydata()[0]) for ax in f5.axes for l in ax.get_lines() if l.get_linestyle() == "--" and len(l.get_ydata()))
check("fig5: band lines at band.txt's band", hl == [band.first - 0.5, band.last + 0.5], f"{hl}")
xl = " ".join(ax.get_xlabel() for ax in mf.fig_alignment_accuracy(res).axes)
check("fig4: the band of band.txt", f"layers {band.first}-{band.last}" in xl, xl)

# fig 8: curves coloured by accuracy (RdYlGn over the accuracies' range), a colour bar
fig = mf.fig_divergence_accuracy(res)
got = lines(fig)
task = c["results"][0]["task"]
accs = {g: acc[(g, task)] for g in div if (g, task) in acc}
lo, hi = min(accs.values()), max(accs.values())
import matplotlib
cmap = matplotlib.colormaps["RdYlGn"]
ok8 = set(got) == set(div) and all(list(got[g].get_ydata()) == [div[g][l] for l in sorted(div[g])] for g in div)
ok8c = all(np.allclose(matplotlib.colors.to_rgba(got[g].get_color()), cmap((accs[g] - lo) / (hi - lo))) for g in accs)
check("fig8: one line per language, the values of div_from_en.tsv", ok8, f"{sorted(got)}")
check("fig8: each line coloured by its accuracy (RdYlGn, min..max)", ok8c and len(accs) == len(div))
cbar = [ax for ax in fig.axes if ax.get_ylabel() == f"accuracy ({task})"]
check("fig8: a colour bar labelled with the task's accuracy", len(cbar) == 1 and
      np.allclose(cbar[0].get_ylim(), (lo, hi)), [ax.get_ylabel() for ax in fig.axes])

# fig 9: per-layer r and its CI = correlate.json
got = lines(mf.fig_layer_correlation(res))
for t in c["results"]:
    k = t["task"]
    ls = [r["layer"] for r in t["layers"]]
    nan = lambda v: float("nan") if v is None else v
    for key, vals in (("r", [nan(r["pearson"]["r"]) for r in t["layers"]]),
                      ("ci_lo", [nan(r["pearson"]["ci"][0]) for r in t["layers"]]),
                      ("ci_hi", [nan(r["pearson"]["ci"][1]) for r in t["layers"]]),
                      ("rho", [nan(r["spearman"]["r"]) for r in t["layers"]])):
        l = got.get(f"{key}:{k}")
        check(f"fig9 ({k}): {key} per layer = correlate.json", l is not None and list(l.get_xdata()) == ls and
              np.allclose(l.get_ydata(), vals, rtol=0, atol=0, equal_nan=True), f"{l and list(l.get_ydata())} vs {vals}")
    bl = got.get(f"band:{k}")
    check(f"fig9 ({k}): band-mean r over the band", bl is not None and list(bl.get_ydata()) == [t["band_mean"]["pearson"]["r"]] * 2
          and list(bl.get_xdata()) == list(want_span))

# fig 10: counts per tau = overlap.tsv
ov = rows(os.path.join(R, "overlap.tsv"))
got = lines(mf.fig_overlap(res))
for col in ("n_task", "n_multilingual", "n_overlap"):
    l = got.get(col)
    check(f"fig10: {col} by tau = overlap.tsv", l is not None and list(l.get_xdata()) == [float(r["tau"]) for r in ov]
          and list(l.get_ydata()) == [float(r[col]) for r in ov], f"{l and list(l.get_ydata())}")
check("fig10: overlap data not trivial", max(float(r["n_task"]) for r in ov) > 0 and max(float(r["n_multilingual"]) for r in ov) > 0)

# fig 11: per-language gains and means with CIs = effects/NAME.json
fig = mf.fig_effects(res)
names = ["task", "outside_band", "multilingual", "random", "deactivate"]
for n in names:
    e = json.load(open(os.path.join(R, "effects", f"{n}.json")))["rows"][0]
    per = [x["gain"] for x in e["per_lang"] if x["lang"] != "eng_Latn"]
    bars = [p.get_height() for ax in fig.axes for p in ax.patches if p.get_gid() == f"gain:{n}"]
    check(f"fig11: {n}: one bar per language, the gains of effects/{n}.json", bars == per and len(per) == 4, f"{bars} vs {per}")
    m = [l for ax in fig.axes for l in ax.get_lines() if l.get_gid() == f"mean:{n}"]
    ci = [col for ax in fig.axes for col in ax.collections if col.get_gid() == f"ci:{n}"]
    seg = np.asarray(ci[0].get_segments()[0])[:, 1].tolist() if ci else []
    check(f"fig11: {n}: mean gain and its CI", len(m) == 1 and list(m[0].get_ydata()) == [e["gain"]] and
          np.allclose(sorted(seg), e["gain_ci"], rtol=0, atol=1e-15), f"{seg} vs {e['gain_ci']}")
check("fig11: the order is the selection, then the controls", mf.intervention_effects(res)["names"] == names)

# another band anywhere is refused, not drawn
import shutil, subprocess
mis = os.path.join(R, "..", "mismatch")
shutil.copytree(R, mis, symlinks=True, ignore=shutil.ignore_patterns("figs", "env-figs"))
other = f"{band.first}-{band.last + 1}" if band.last < L else f"{band.first - 1}-{band.last}"
S = os.environ["STATS"]
subprocess.run([S, "correlate", "--tables", os.path.join(mis, "tables"), "--accuracy", os.path.join(mis, "run", "accuracy.tsv"),
                "--band", other, "--json"], stdout=open(os.path.join(mis, "correlate.json"), "w"), check=True)
subprocess.run([S, "overlap", "--tables", os.path.join(mis, "tables"), "--dataset", "math", "--band", other],
               stdout=open(os.path.join(mis, "overlap.tsv"), "w"), check=True)
rm = mf.Results(mis, os.path.join(mis, "figs"))
for fn in ("fig_alignment_accuracy", "fig_layer_correlation", "fig_overlap"):
    try:
        getattr(mf, fn)(rm)
        check(f"{fn}: stats made with band {other} refused", False, "drawn")
    except mf.BandMismatch as ex:
        check(f"{fn}: stats made with band {other} refused", f"band {other}" in str(ex) and "band.txt" in str(ex), str(ex))
ej = json.load(open(os.path.join(mis, "effects", "task.json")))
ej["rows"][0]["layers"] = "1-2"
json.dump(ej, open(os.path.join(mis, "effects", "task.json"), "w"))
try:
    mf.fig_effects(rm)
    check("fig_effects: a selection steered outside the band refused", False, "drawn")
except mf.BandMismatch as ex:
    check("fig_effects: a selection steered outside the band refused", "task" in str(ex), str(ex))

# a results directory with only the tables: the figures that need stats outputs are skipped, not failed
bare = os.path.join(R, "..", "bare")
os.makedirs(bare, exist_ok=True)
if not os.path.exists(os.path.join(bare, "tables")):
    os.symlink(T, os.path.join(bare, "tables"))
rb = mf.Results(bare, os.path.join(bare, "figs"))
done = {n: mf.draw(rb, n, show=False) for n in mf.FIGURES}
check("tables only: correlate, accuracy, overlap, steering, effects figures skipped, the others drawn",
      all(done[n] is None for n in ("fig4_alignment_accuracy", "fig7_steering", "fig8_divergence_accuracy",
                                    "fig9_layer_correlation", "fig10_overlap", "fig11_effects"))
      and all(done[n] for n in ("fig1_divergence", "fig2_pairwise", "fig3_entropy_jaccard", "fig5_task_experts",
                                "fig6_specialisation")), {k: bool(v) for k, v in done.items()})
EOF
if STATS="$S" "$PY" "$WORK/nb_numbers.py" "$NB" "$R" >"$WORK/numbers.out" 2>"$WORK/numbers.err"; then
    grep -E '^(not )?ok ' "$WORK/numbers.out"
else
    grep -E '^(not )?ok ' "$WORK/numbers.out"
    not_ok "module numbers" "$(tail -c 400 "$WORK/numbers.err")"
fi

# ---- notebooks/run.sh: every notebook headless, every figure written -------------------------------------------
expect_exit 1 "run.sh without arguments" sh "$NB/run.sh"
expect_exit 2 "run.sh on a directory without tables" sh "$NB/run.sh" "$WORK"
expect_err_line "run.sh: one-line error naming the directory" "not a moetrace results directory"
sum_before=$(cat "$NB"/*.ipynb | cksum)
start=$(date +%s)
MOETRACE_EXECUTED="$WORK/executed" PY="$PY" sh "$NB/run.sh" "$R" "$WORK/figures" >"$WORK/run.out" 2>"$WORK/run.err"
rc=$?
secs=$(($(date +%s) - start))
if [ "$rc" -eq 0 ]; then ok "run.sh executes every notebook (${secs}s)"
else not_ok "run.sh executes every notebook" "exit $rc: $(head -c 600 "$WORK/run.err")"; fi
grep -q "^figures: *$WORK/figures" "$WORK/run.out" && ok "run.sh says where the figures are" ||
    not_ok "run.sh says where the figures are" "$(head -c 300 "$WORK/run.out")"
[ "$(cat "$NB"/*.ipynb | cksum)" = "$sum_before" ] && ok "run.sh leaves the committed notebooks alone" ||
    not_ok "run.sh leaves the committed notebooks alone" "notebooks changed"
[ -f "$WORK/executed/.jupyter/kernels/moetrace-python3/kernel.json" ] &&
    grep -q "\"$PY\"" "$WORK/executed/.jupyter/kernels/moetrace-python3/kernel.json" &&
    ok "the kernel is $PY" || not_ok "the kernel is $PY" "$(cat "$WORK/executed/.jupyter/kernels"/*/kernel.json 2>&1)"

cat >"$WORK/nb_png.py" <<'EOF'
import struct, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.image as mpimg
import numpy as np
png, pdf = sys.argv[1], sys.argv[2]
data = open(png, "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
assert data[12:16] == b"IHDR", "no IHDR chunk"
w, h = struct.unpack(">II", data[16:24])
assert w >= 400 and h >= 300, f"only {w}x{h} pixels"
assert data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND", "truncated (no IEND)"
img = mpimg.imread(png)
assert img.shape[:2] == (h, w), f"decodes to {img.shape}"
rgb = (img[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
colours = len(np.unique(rgb, axis=0))
ink = float(np.mean(rgb.min(axis=1) < 200))
assert colours >= 16, f"only {colours} colours"
assert 0.01 < ink < 0.95, f"ink coverage {ink:.3f}"
p = open(pdf, "rb").read()
assert p[:5] == b"%PDF-" and b"%%EOF" in p[-64:] and len(p) > 4000, "not a whole PDF"
print(f"{w}x{h}, {colours} colours, ink {ink:.2f}")
EOF
for f in $FIGS; do
    if [ ! -f "$WORK/figures/$f.png" ]; then not_ok "figure $f" "no $f.png"; continue; fi
    if out=$("$PY" "$WORK/nb_png.py" "$WORK/figures/$f.png" "$WORK/figures/$f.pdf" 2>&1); then ok "figure $f: valid PNG ($out) and PDF"
    else not_ok "figure $f" "$(printf '%s' "$out" | tail -n 1)"; fi
done

# the executed copies: outputs with the figure, no errors; the hygiene check catches them, strip cleans them
cat >"$WORK/nb_executed.py" <<'EOF'
import json, sys
bad = []
for p in sys.argv[1:]:
    nb = json.load(open(p))
    outs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    if any(o.get("output_type") == "error" for o in outs):
        bad.append(f"{p}: error output")
    if not any("image/png" in o.get("data", {}) for o in outs):
        bad.append(f"{p}: no figure shown")
print("; ".join(bad))
sys.exit(1 if bad else 0)
EOF
set -- "$WORK/executed"/[0-9]*.ipynb
if [ -f "$1" ] && [ $# -ge 11 ] && out=$("$PY" "$WORK/nb_executed.py" "$@" 2>&1); then ok "executed notebooks show their figure, no errors"
else not_ok "executed notebooks show their figure, no errors" "$# executed; ${out:-}"; fi
cp "$1" "$WORK/dirty.ipynb"
expect_exit 1 "check-clean rejects a notebook with outputs" "$PY" "$NB/moetrace_figures.py" check-clean "$WORK/dirty.ipynb"
"$PY" "$NB/moetrace_figures.py" strip "$WORK/dirty.ipynb"
expect_exit 0 "strip removes the outputs" "$PY" "$NB/moetrace_figures.py" check-clean "$WORK/dirty.ipynb"
