# Golden `h5dump -pH` of a tiny trace: the on-disk layout (groups, datasets, types, shapes, chunking, filters,
# attributes) must not change unnoticed. Byte counts and file offsets depend on the zstd build and are masked.
# Regenerate after an intended format change: UPDATE_GOLDEN=1 make check.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
golden="$TESTS/golden/tiny.h5dump"
"$BIN/moetrace-capture" synth --out "$WORK/tiny" --layers 2 --experts 4 --top-k 2 --units 2 --seed 1 \
    --langs eng_Latn:1,fra_Latn:0.5 --datasets flores --store both --quiet
h5dump -pH "$WORK/tiny/shard-000000.h5" | sed -e '1s|".*"|"tiny.h5"|' \
    -e 's/^\( *SIZE \)[0-9]*.*/\1<masked>/' -e 's/^\( *OFFSET \)[0-9]*/\1<masked>/' >"$WORK/dump"
if [ "${UPDATE_GOLDEN:-0}" = 1 ]; then cp "$WORK/dump" "$golden"; fi
if diff -u "$golden" "$WORK/dump" >"$WORK/diff"; then
    ok "h5dump -pH of a tiny trace matches tests/golden/tiny.h5dump"
else
    not_ok "h5dump -pH golden" "$(head -c 600 "$WORK/diff")"
fi
# and the data itself reads back through the plugin (h5dump exits 0 even when it cannot)
h5dump -d /router/logits "$WORK/tiny/shard-000000.h5" >"$WORK/data" 2>&1
if grep -q '(0,0,0):' "$WORK/data"; then ok "h5dump prints the logits"; else not_ok "h5dump data" "$(head -c 300 "$WORK/data")"; fi
h5dump -d /router/topk_ids "$WORK/tiny/shard-000000.h5" >"$WORK/data" 2>&1
if grep -q 'H5T_STD_U8LE' "$WORK/data" && grep -q '(0,0,0):' "$WORK/data"; then ok "top-k ids stored as u8"; else not_ok "top-k ids" "$(head -c 300 "$WORK/data")"; fi
