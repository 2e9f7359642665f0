#!/bin/sh
# Draw the paper's figures from a moetrace results directory: executes every notebooks/NN_*.ipynb headless
# (nbconvert, a kernel on Debian's /usr/bin/python3, matplotlib Agg) into executed copies, then says where the
# figures are. The committed notebooks are never modified.
#
#   notebooks/run.sh RESULTS_DIR [FIGURES_DIR]
#
# RESULTS_DIR holds tables/ (moetrace-reduce) and the moetrace-stats outputs beside it, as `make demo` writes
# them (band.txt, correlate.json, experts.tsv, overlap.tsv, steer/, run/accuracy.tsv, effects/NAME.json: the
# layout is in notebooks/moetrace_figures.py); FIGURES_DIR defaults to RESULTS_DIR/figures. A figure whose inputs
# are missing is skipped and named; stats outputs made with another band than band.txt's fail the figure.
# Environment: MOETRACE_EXECUTED (where the executed copies go; default notebooks/executed, git-ignored),
# PY (default /usr/bin/python3), MOETRACE_JOBS (notebooks run at once; default the CPUs, at most 4),
# MOETRACE_TIMEOUT (seconds per cell, default 600); MOETRACE_BAND, MOETRACE_ACCURACY, MOETRACE_STEER and
# MOETRACE_PAIRWISE_LAYERS reach the notebooks (notebooks/moetrace_figures.py).
# Exit status: 0 every notebook ran, 1 bad usage, 2 not a results directory, 3 Jupyter missing or a notebook
# failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-/usr/bin/python3}
prog=notebooks/run.sh

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$here/run.sh"; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $prog RESULTS_DIR [FIGURES_DIR]" >&2
    exit 1
fi
if [ ! -d "$1" ]; then
    echo "$prog: $1: no such directory" >&2
    exit 2
fi
results=$(cd "$1" && pwd)
if [ ! -f "$results/tables/div_from_en.tsv" ] && [ ! -f "$results/div_from_en.tsv" ]; then
    echo "$prog: $results: not a moetrace results directory (no tables/div_from_en.tsv; run moetrace-reduce)" >&2
    exit 2
fi
figures=${2:-$results/figures}
executed=${MOETRACE_EXECUTED:-$here/executed}
if ! mkdir -p "$figures" "$executed"; then
    echo "$prog: cannot create $figures or $executed" >&2
    exit 3
fi
figures=$(cd "$figures" && pwd)
executed=$(cd "$executed" && pwd)
if ! "$PY" -c 'import matplotlib, nbformat, nbclient, nbconvert, ipykernel' 2>/dev/null; then
    echo "$prog: $PY lacks Jupyter or matplotlib (Debian: python3-matplotlib python3-nbconvert python3-ipykernel; make deps installs them)" >&2
    exit 3
fi

# A private kernelspec, so the kernel is $PY whatever kernels the user has installed under the name python3;
# connection files in a scratch runtime directory.
kernel=moetrace-python3
kdir="$executed/.jupyter/kernels/$kernel"
mkdir -p "$kdir"
"$PY" - "$kdir/kernel.json" "$PY" <<'EOF' || exit 3
import json, sys
json.dump({"argv": [sys.argv[2], "-m", "ipykernel_launcher", "-f", "{connection_file}"],
           "display_name": "Python 3 (moetrace, " + sys.argv[2] + ")", "language": "python",
           "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}},
          open(sys.argv[1], "w"), indent=1)
EOF
runtime=$(mktemp -d "${TMPDIR:-/tmp}/moetrace-nb-XXXXXX") || exit 3
trap 'rm -rf "$runtime"' EXIT INT TERM
JUPYTER_PATH="$executed/.jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
JUPYTER_RUNTIME_DIR="$runtime"
MOETRACE_RESULTS="$results"
MOETRACE_FIGURES="$figures"
MPLBACKEND=Agg
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export JUPYTER_PATH JUPYTER_RUNTIME_DIR MOETRACE_RESULTS MOETRACE_FIGURES MPLBACKEND PYTHONPATH
# a home without a writable ~/.ipython or matplotlib cache still runs
[ -w "${HOME:-/nonexistent}" ] || export IPYTHONDIR="$runtime/ipython" MPLCONFIGDIR="$runtime/mpl"

# Each notebook in its own nbconvert and kernel, MOETRACE_JOBS at a time (default: the CPUs, at most 4).
jobs=${MOETRACE_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$jobs" -gt 4 ] 2>/dev/null && jobs=4
[ "$jobs" -ge 1 ] 2>/dev/null || jobs=1
run_one() {
    "$PY" -m nbconvert --to notebook --execute --ExecutePreprocessor.kernel_name="$kernel" \
        --ExecutePreprocessor.timeout="${MOETRACE_TIMEOUT:-600}" --output-dir "$executed" --output "$1" "$here/$1" \
        >"$runtime/$1.log" 2>&1
    echo $? >"$runtime/$1.rc"
}
names=""
running=0
for nb in "$here"/[0-9]*.ipynb; do
    [ -f "$nb" ] || continue
    name=$(basename "$nb")
    names="$names $name"
    run_one "$name" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait
        running=0
    fi
done
wait
if [ -z "$names" ]; then
    echo "$prog: no notebooks in $here" >&2
    exit 3
fi
failed=0
for name in $names; do
    if [ "$(cat "$runtime/$name.rc" 2>/dev/null)" = 0 ]; then
        # a figure whose inputs are missing is skipped by the notebook, which says so
        skipped=$("$PY" -c '
import json, sys
for c in json.load(open(sys.argv[1]))["cells"]:
    for o in c.get("outputs", []):
        for line in "".join(o.get("text", "")).splitlines():
            if line.startswith("skipped "):
                print(line)
' "$executed/$name")
        echo "ran $name${skipped:+: $skipped}"
    else
        failed=$((failed + 1))
        echo "$prog: $name failed: $(grep -E '^[A-Za-z]*(Error|Exception)' "$runtime/$name.log" | tail -n 1)" >&2
        sed 's/^/  /' "$runtime/$name.log" | tail -n 15 >&2
    fi
done
echo "executed notebooks: $executed"
echo "figures:            $figures"
for f in "$figures"/*.png; do [ -f "$f" ] && echo "  $(basename "$f")  (+ .pdf)"; done
[ "$failed" -eq 0 ] || exit 3
