# Crash safety: moetrace-capture run (tiny checkpoint) and moetrace-capture ingest killed with SIGKILL at random
# points (KILL_POINTS in all, default 20, split between the two; KILL_SEED, default 15, makes them reproducible),
# each followed by checks of the finished shards (bit-exact against an uninterrupted run), the manifest and
# info --deep, and a --resume that must end with exactly the reference's sequences; then a reducer run beside a
# running capture. The harness is tests/cli/kill_harness.py; it prints the kill points it tried.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
OPENBLAS_NUM_THREADS=1 "$PY" "$TESTS/cli/kill_harness.py" --bin "$BIN" --tests "$TESTS" --work "$WORK/kill" \
    --points "${KILL_POINTS:-20}" --seed "${KILL_SEED:-15}"
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 1 ] && not_ok "kill harness" "exit $rc"
true
