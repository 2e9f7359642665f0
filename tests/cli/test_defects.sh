# Regression tests for defects found by a hostile-input and fault battery: a full disk under every writer, flipped
# bits in a shard, templates that nest, loop or repeat without bound, shards that disagree with their run or with
# themselves, incomplete or out-of-range stats tables, error details, and resumes that must equal one whole run.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
CAP="$BIN/moetrace-capture"
ST="$BIN/moetrace-stats"
R="$BIN/moetrace-reduce"
Q="$TESTS/models/tiny/qwen3_moe"
CORPUS="$TESTS/data/udhr-mini.jsonl"
MS="$TESTS/python/make_stream.py"

nseq() { "$TOOLS/mtr_dump" "$1" 2>/dev/null | wc -l; }

# ---- 1. a full disk under synth, run and ingest (tests/cli/disk_full.sh, in a tmpfs: as root, else in a user
# namespace of our own where mounting one is allowed) ----
if [ "$(id -u)" -eq 0 ]; then
    sh "$TESTS/cli/disk_full.sh"
elif unshare -rm true 2>/dev/null; then
    unshare -rm sh "$TESTS/cli/disk_full.sh"
else
    echo "ok disk full # skip: no tmpfs can be mounted (not root, no user namespaces)"
fi

# ---- 12. a killed synth run is continued by synth --resume, which equals a whole run ----
SYN="--layers 6 --experts 16 --units 60 --shard-bytes 100K --seed 9 --no-progress --quiet"
$CAP synth --out "$WORK/k" $SYN --threads 1 2>/dev/null &
pid=$!
i=0
while [ $i -lt 200 ] && ! ls "$WORK/k"/shard-*.h5 >/dev/null 2>&1; do sleep 0.05; i=$((i + 1)); done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if grep -q '"complete": false' "$WORK/k/run.json"; then ok "synth killed part-way"; else not_ok "synth killed part-way" "the run finished first"; fi
expect_exit 1 "synth on a killed run without --resume: exit 1" $CAP synth --out "$WORK/k" $SYN
expect_err_line "synth on a killed run: names the way out" "continue it with --resume"
expect_exit 2 "synth --resume with other parameters is refused" $CAP synth --out "$WORK/k" $SYN --seed 10 --resume
expect_err_line "synth --resume, other parameters: names the one that differs" "truth.json: the run was made with seed 9, not 10"
expect_exit 0 "synth --resume completes a killed run" $CAP synth --out "$WORK/k" $SYN --resume --json
expect_out "synth --resume keeps what was stored" '"n_skipped": [1-9]'
$CAP synth --out "$WORK/k-whole" $SYN
"$TOOLS/mtr_dump" "$WORK/k" --logits "$WORK/k.f32" >"$WORK/k.seq" 2>&1
"$TOOLS/mtr_dump" "$WORK/k-whole" --logits "$WORK/k-whole.f32" >"$WORK/k-whole.seq" 2>&1
if [ "$(wc -l <"$WORK/k-whole.seq")" -gt 0 ] && cmp -s "$WORK/k.seq" "$WORK/k-whole.seq" &&
    cmp -s "$WORK/k.f32" "$WORK/k-whole.f32"; then
    ok "synth --resume: the run equals a whole run (sequences and logits)"
else not_ok "synth --resume: the run equals a whole run" "$(wc -l <"$WORK/k.seq") vs $(wc -l <"$WORK/k-whole.seq") sequences"; fi
expect_exit 0 "synth --resume: the run is complete and valid" "$BIN/moetrace-info" --deep "$WORK/k"
