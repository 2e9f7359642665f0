# Hostile and malformed inputs (tests/cli/hostile.py): truncated and bit-flipped shards and compressed chunks, wrong
# format version, attributes disagreeing with datasets, absurd declared sizes (under a 2 GiB address-space limit),
# NaN/Inf logits (counted, flagged, excluded by reduce), broken safetensors / config.json / tokenizer.json, corpora
# with invalid UTF-8, repeated pairs or no English, ingest streams cut at every byte of their frames, steering
# files for another model, accuracy files with unknown languages. Each: exit 2 (a few 1), one stderr line naming
# the file and the problem, no crash.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
OPENBLAS_NUM_THREADS=1 "$PY" "$TESTS/cli/hostile.py" --bin "$BIN" --tests "$TESTS" --work "$WORK/hostile"
rc=$?
[ $rc -ne 0 ] && not_ok "hostile battery" "exit $rc"
true
