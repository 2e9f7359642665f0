#!/bin/sh
# make bench: every benchmark in build/bench, each printing its ratios against peers measured in the same run.
# Data goes to build/bench-data (git-ignored) and is removed afterwards. MTR_BENCH_BYTES sets the input size.
set -u
status=0
mkdir -p build/bench-data
for b in "$BENCH"/bench_*; do
    [ -x "$b" ] || continue
    case "$b" in *.d) continue ;; esac
    echo "== $(basename "$b")"
    OPENBLAS_NUM_THREADS=1 "$b" build/bench-data || status=1
done
for s in tests/bench/bench_*.sh; do
    [ -f "$s" ] || continue
    echo "== $(basename "$s" .sh)"
    BIN="$BIN" LIB="$LIB" TOOLS="$TOOLS" PY="$PY" sh "$s" || status=1
done
rm -rf build/bench-data
exit $status
