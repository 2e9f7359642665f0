# The figure notebooks (notebooks/): the committed notebooks carry no outputs; on a small synthetic results set
# (synth -> reduce -> stats band/correlate/experts/steer) the numbers notebooks/moetrace_figures.py plots equal
# the TSV and JSON files they come from; notebooks/run.sh executes every notebook headless on /usr/bin/python3
# and writes each figure as a valid, non-blank PNG and a PDF. Skipped (one "ok ... # skip") only when
# matplotlib or Jupyter is not installed for $PY.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
top=$(cd "$TESTS/.." && pwd)
NB="$top/notebooks"
S="$BIN/moetrace-stats"
FIGS="fig1_divergence fig2_pairwise fig3_entropy_jaccard fig4_alignment_accuracy fig5_task_experts
fig6_specialisation fig7_steering"

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
if [ -f "$1" ] && [ $# -ge 7 ]; then ok "notebooks: $# figure notebooks"; else not_ok "notebooks" "want 7 notebooks/NN_*.ipynb, found $#"; fi
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
    "$S" correlate --tables "$R/tables" --accuracy "$R/run/accuracy.tsv" --band 3-6 --json >"$R/correlate.json" &&
    "$S" experts --tables "$R/tables" --dataset math --tau 0.2 --band 3-6 >"$R/experts.tsv" &&
    "$S" steer --tables "$R/tables" --dataset math --tau 0.2 --band 3-6 --model-id synthetic/moe-L8-E16 --top-k 2 \
        --out "$R/steer" >/dev/null 2>"$WORK/err"
then ok "small results set: synth -> reduce -> stats"
else not_ok "small results set" "$(head -c 300 "$WORK/err")"; exit 1; fi

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

# a results directory with only the tables: the figures that need stats outputs are skipped, not failed
bare = os.path.join(R, "..", "bare")
os.makedirs(bare, exist_ok=True)
if not os.path.exists(os.path.join(bare, "tables")):
    os.symlink(T, os.path.join(bare, "tables"))
rb = mf.Results(bare, os.path.join(bare, "figs"))
done = {n: mf.draw(rb, n, show=False) for n in mf.FIGURES}
check("tables only: correlate, steering figures skipped, the others drawn",
      done["fig4_alignment_accuracy"] is None and done["fig7_steering"] is None
      and all(done[n] for n in ("fig1_divergence", "fig2_pairwise", "fig3_entropy_jaccard", "fig5_task_experts",
                                "fig6_specialisation")), {k: bool(v) for k, v in done.items()})
EOF
if "$PY" "$WORK/nb_numbers.py" "$NB" "$R" >"$WORK/numbers.out" 2>"$WORK/numbers.err"; then
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
if [ -f "$1" ] && [ $# -ge 7 ] && out=$("$PY" "$WORK/nb_executed.py" "$@" 2>&1); then ok "executed notebooks show their figure, no errors"
else not_ok "executed notebooks show their figure, no errors" "$# executed; ${out:-}"; fi
cp "$1" "$WORK/dirty.ipynb"
expect_exit 1 "check-clean rejects a notebook with outputs" "$PY" "$NB/moetrace_figures.py" check-clean "$WORK/dirty.ipynb"
"$PY" "$NB/moetrace_figures.py" strip "$WORK/dirty.ipynb"
expect_exit 0 "strip removes the outputs" "$PY" "$NB/moetrace_figures.py" check-clean "$WORK/dirty.ipynb"
