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
