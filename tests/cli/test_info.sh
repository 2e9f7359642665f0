# moetrace / moetrace info: dispatch, help and exit codes, the description of a run, --json, --deep, and a
# one-line error naming the file for every kind of bad trace.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"

expect_exit 0 "moetrace --help" "$BIN/moetrace" --help
expect_out "help lists info" "info"
expect_exit 1 "moetrace with no verb" "$BIN/moetrace"
expect_exit 127 "moetrace unknown verb" "$BIN/moetrace" frobnicate
expect_err_line "unknown verb: one line" "frobnicate"
expect_exit 0 "moetrace info --help (dispatched)" "$BIN/moetrace" info --help
expect_out "info help lists exit codes" "Exit codes"
expect_exit 1 "info without a run" "$BIN/moetrace" info
expect_err_line "info without a run: one line" "no run given"
expect_exit 1 "info bad option" "$BIN/moetrace-info" --bogus "$WORK"
expect_exit 2 "info on a missing path" "$BIN/moetrace" info "$WORK/nope"
expect_err_line "missing path: one line naming it" "$WORK/nope"

run="$WORK/run"
"$BIN/moetrace-capture" synth --out "$run" --layers 6 --experts 16 --top-k 4 --units 4 --seed 3 \
    --langs eng_Latn:1,fra_Latn:0.8,bam_Latn:0.1 --datasets flores --shard-bytes 300K --quiet
nseq=$("$TOOLS/mtr_dump" "$run" | wc -l)
ntok=$("$TOOLS/mtr_dump" "$run" | awk '{s += $5} END {print s}')
expect_exit 0 "info on a synthetic run" "$BIN/moetrace" info "$run"
expect_out "info: model line" "^model +synthetic/moe-L6-E16 .*6 MoE layers.*16 experts, top-4"
expect_out "info: sequence and token totals" "^sequences +$nseq in 4 parallel units, $ntok tokens"
expect_out "info: languages x datasets table" "^bam_Latn +flores +4 "
expect_out "info: compression ratio" "stored: [2-9]\.[0-9]+x smaller"
expect_out "info: verdict" "^verdict +valid"

expect_exit 0 "info --json" "$BIN/moetrace" info --json --deep "$run"
if "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["valid"] and d["deep"], d
assert d["n_sequences"] == int(sys.argv[2]) and d["n_tokens"] == int(sys.argv[3]), d
assert d["model"]["n_experts"] == 16 and d["router"]["score_fn"] == "softmax"
assert {r["lang"] for r in d["table"]} == {"eng_Latn", "fra_Latn", "bam_Latn"}
assert d["nonfinite_values"] == 0 and d["compression_ratio"] > 2
' "$WORK/out" "$nseq" "$ntok"; then ok "info --json content"; else not_ok "info --json content" "$(head -c 300 "$WORK/out")"; fi

# partial and unlisted shards are reported and ignored
first=$(ls "$run"/shard-*.h5 | head -n 1)
cp "$first" "$run/shard-000098.h5"
cp "$first" "$run/shard-000099.h5.partial"
expect_exit 0 "info ignores partial and unlisted shards" "$BIN/moetrace" info "$run"
expect_out "info reports them" "1 partial \(ignored\), 1 not in the manifest"
expect_out "info counts only listed shards" "^sequences +$nseq "
expect_exit 2 "info refuses a .partial shard by path" "$BIN/moetrace" info "$run/shard-000099.h5.partial"
expect_err_line "partial: one line" "partial shard"
expect_exit 0 "info --allow-partial opens it" "$BIN/moetrace" info --allow-partial "$run/shard-000099.h5.partial"
rm -f "$run/shard-000098.h5" "$run/shard-000099.h5.partial"

# a corrupted chunk passes the structural check but not --deep
bad="$WORK/bad"
cp -r "$run" "$bad"
off=$("$PY" -c '
import h5py, sys
with h5py.File(sys.argv[1], "r") as f:
    ci = f["router/logits"].id.get_chunk_info(0)
    print(ci.byte_offset + ci.size // 2)' "$bad/$(basename "$first")")
printf 'garbagegarbagegarbagegarbage' | dd of="$bad/$(basename "$first")" bs=1 seek="$off" conv=notrunc 2>/dev/null
expect_exit 0 "corrupt chunk: structure still valid" "$BIN/moetrace" info "$bad"
expect_exit 2 "corrupt chunk: --deep fails" "$BIN/moetrace" info --deep "$bad"
expect_err_line "corrupt chunk: one line naming the chunk" "chunk 0"

# truncated shard, wrong version, not a trace
cp -r "$run" "$WORK/trunc"
f="$WORK/trunc/$(basename "$first")"
truncate -s $(($(stat -c %s "$f") / 2)) "$f"
expect_exit 2 "truncated shard" "$BIN/moetrace" info "$WORK/trunc"
expect_err_line "truncated: one line naming the file" "$(basename "$first").*truncated"
cp -r "$run" "$WORK/ver"
"$PY" -c '
import h5py, numpy, sys
with h5py.File(sys.argv[1], "r+") as f:
    f.attrs.modify("format_version", numpy.uint32(9))' "$WORK/ver/$(basename "$first")"
expect_exit 2 "unknown format version" "$BIN/moetrace" info "$WORK/ver"
expect_err_line "version: one line" "format_version 9"
echo "not a trace" >"$WORK/junk.h5"
expect_exit 2 "not an HDF5 file" "$BIN/moetrace" info "$WORK/junk.h5"
expect_err_line "not HDF5: one line" "junk.h5: not an HDF5 file"
