# h5py reads traces through the libh5zstd.so plugin and gets libmoetrace's numbers bit for bit; h5py writes
# 32015-compressed logits (with and without shuffle, other chunking and level) that libmoetrace reads back.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
run="$WORK/run"
"$BIN/moetrace-capture" synth --out "$run" --layers 4 --experts 16 --top-k 2 --units 3 --seed 7 \
    --shard-bytes 200K --quiet || { not_ok synth "synth failed"; exit 1; }
n_shards=$(ls "$run"/shard-*.h5 | wc -l)
[ "$n_shards" -ge 2 ] && ok "synth wrote several shards ($n_shards)" || not_ok shards "only $n_shards shard"

"$TOOLS/mtr_dump" "$run" --logits "$WORK/c.f32" >"$WORK/c.txt"
expect_exit 0 "h5py reads the run bit-identically" \
    "$PY" "$TESTS/interop/h5py_interop.py" read "$run" "$WORK/c.txt" "$WORK/c.f32"

first=$(ls "$run"/shard-*.h5 | head -n 1)
"$TOOLS/mtr_dump" "$first" --logits "$WORK/one.f32" --tokens "$WORK/one.tok" >"$WORK/one.txt"
for variant in "--level 3 --chunk 100" "--no-shuffle --level 1 --chunk 33" "--level 19 --chunk 256"; do
    rm -f "$WORK/h5py.h5"
    # shellcheck disable=SC2086
    "$PY" "$TESTS/interop/h5py_interop.py" rewrite "$first" "$WORK/h5py.h5" $variant >/dev/null 2>"$WORK/err" ||
        { not_ok "h5py writes ($variant)" "$(head -c 300 "$WORK/err")"; continue; }
    "$TOOLS/mtr_dump" "$WORK/h5py.h5" --logits "$WORK/h.f32" --tokens "$WORK/h.tok" >"$WORK/h.txt" 2>"$WORK/err"
    if cmp -s "$WORK/h.f32" "$WORK/one.f32" && cmp -s "$WORK/h.txt" "$WORK/one.txt" && cmp -s "$WORK/h.tok" "$WORK/one.tok"; then
        ok "libmoetrace reads h5py-written logits ($variant)"
    else
        not_ok "libmoetrace reads h5py-written logits ($variant)" "$(head -c 300 "$WORK/err")"
    fi
done

# without the plugin h5dump prints no data but exits 0: the data must be checked, not the exit code
env -u HDF5_PLUGIN_PATH h5dump -d /router/logits -c "1,1,4" "$first" >"$WORK/noplug" 2>&1
HDF5_PLUGIN_PATH="$LIB/plugin" h5dump -d /router/logits -c "1,1,4" "$first" >"$WORK/plug" 2>&1
if grep -q '(0,0,0):' "$WORK/plug" && ! grep -q '(0,0,0):' "$WORK/noplug"; then
    ok "h5dump reads logits only through the plugin"
else
    not_ok "h5dump reads logits only through the plugin" "$(head -c 300 "$WORK/plug")"
fi
