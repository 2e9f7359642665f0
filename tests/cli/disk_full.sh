# disk_full.sh — run by test_defects.sh where a tmpfs can be mounted (as root, or in a user namespace): synth, run
# and ingest on a 2 MB tmpfs exit 3 with one line (not by a signal in HDF5's exit handler), keep their finished
# shards, and complete the run by --resume once there is space again.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
CAP="$BIN/moetrace-capture"
Q="$TESTS/models/tiny/qwen3_moe"
CORPUS="$TESTS/data/udhr-mini.jsonl"
MS="$TESTS/python/make_stream.py"
nseq() { "$TOOLS/mtr_dump" "$1" 2>/dev/null | wc -l; }

FULL="$WORK/full"
mkdir -p "$FULL"
if ! mount -t tmpfs -o size=2m tmpfs "$FULL" 2>"$WORK/err"; then
    echo "ok disk full # skip: cannot mount a tmpfs: $(head -c 200 "$WORK/err")"
    exit 0
fi
trap 'umount "$FULL" 2>/dev/null; rm -rf "$WORK"' EXIT INT TERM
# full_run NAME OUT CMD...: CMD fills the disk part-way: exit 3 and one line, naming the run directory OUT once
full_run() {
    fr=$1
    out=$2
    shift 2
    expect_exit 3 "$fr: exit 3" "$@"
    expect_err_line "$fr: one line" "cannot write"
    n=$(grep -o -F "$out" "$WORK/err" | wc -l)
    if [ "$n" -eq 1 ]; then ok "$fr: names $out once"; else not_ok "$fr: names $out once" "$n times: $(head -c 300 "$WORK/err")"; fi
}
# space_back X: the disk has room again: the run moves off the full tmpfs (a run directory is self-contained)
space_back() { cp -r "$FULL/$1" "$WORK/$1" && rm -rf "${FULL:?}/$1"; }

full_run "synth, disk full" "$FULL/s" "$CAP" synth --out "$FULL/s" --layers 8 --experts 32 --units 20 --shard-bytes 300K \
    --no-progress --quiet
n_done=$(ls "$FULL/s"/shard-*.h5 2>/dev/null | wc -l)
if [ "$n_done" -ge 1 ]; then ok "synth, disk full: finished shards kept ($n_done)"; else not_ok "synth, disk full: finished shards kept" "none"; fi
expect_exit 0 "synth, disk full: finished shards are valid" "$BIN/moetrace-info" --deep "$FULL/s"
space_back s
expect_exit 0 "synth, disk full: --resume completes the run" "$CAP" synth --out "$WORK/s" --layers 8 --experts 32 \
    --units 20 --shard-bytes 300K --no-progress --quiet --resume
"$CAP" synth --out "$WORK/s-whole" --layers 8 --experts 32 --units 20 --shard-bytes 300K --no-progress --quiet
"$TOOLS/mtr_dump" "$WORK/s" --logits "$WORK/s.f32" >"$WORK/s.seq" 2>&1
"$TOOLS/mtr_dump" "$WORK/s-whole" --logits "$WORK/s-whole.f32" >"$WORK/s-whole.seq" 2>&1
if [ "$(wc -l <"$WORK/s-whole.seq")" -gt 0 ] && cmp -s "$WORK/s.seq" "$WORK/s-whole.seq" &&
    cmp -s "$WORK/s.f32" "$WORK/s-whole.f32"; then
    ok "synth, disk full: resumed run equals a whole run (sequences and logits)"
else not_ok "synth, disk full: resumed run equals a whole run" "$(wc -l <"$WORK/s.seq") vs $(wc -l <"$WORK/s-whole.seq") sequences"; fi

full_run "run, disk full" "$FULL/r" "$CAP" run --model "$Q" --corpus "$CORPUS" --out "$FULL/r" --dtype f32 --shard-bytes 200K \
    --no-sync --quiet
n_done=$(ls "$FULL/r"/shard-*.h5 2>/dev/null | wc -l)
if [ "$n_done" -ge 1 ]; then ok "run, disk full: finished shards kept ($n_done)"; else not_ok "run, disk full: finished shards kept" "none"; fi
space_back r
expect_exit 0 "run, disk full: --resume completes the run" "$CAP" run --model "$Q" --corpus "$CORPUS" --out "$WORK/r" \
    --dtype f32 --shard-bytes 200K --no-sync --quiet --resume
if [ "$(nseq "$WORK/r")" -eq 240 ]; then ok "run, disk full: resumed run has every item"; else not_ok "run, disk full: resumed run has every item" "$(nseq "$WORK/r")"; fi

$PY "$MS" 600 --layers 8 --experts 32 >"$WORK/s600"
full_run "ingest, disk full" "$FULL/i" "$CAP" ingest --out "$FULL/i" --input "$WORK/s600" --shard-bytes 200K --no-sync --quiet
n_done=$(ls "$FULL/i"/shard-*.h5 2>/dev/null | wc -l)
if [ "$n_done" -ge 1 ]; then ok "ingest, disk full: finished shards kept ($n_done)"; else not_ok "ingest, disk full: finished shards kept" "none"; fi
space_back i
expect_exit 0 "ingest, disk full: --resume completes the run" "$CAP" ingest --out "$WORK/i" --input "$WORK/s600" \
    --shard-bytes 200K --no-sync --quiet --resume
if [ "$(nseq "$WORK/i")" -eq 600 ]; then ok "ingest, disk full: resumed run has every sequence"; else not_ok "ingest, disk full: resumed run has every sequence" "$(nseq "$WORK/i")"; fi
umount "$FULL"
