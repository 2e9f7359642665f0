# valgrind memcheck over a small end-to-end run of the main binaries: synth -> info --deep -> reduce -> stats
# (band, correlate, steer), ingest of a stream, and a native capture (with steering) on a tiny checkpoint. Each
# must be free of invalid reads and writes, uses of uninitialised values and definite leaks (memcheck's exit
# code 99 otherwise). Suppressions (tests/valgrind.supp) cover third-party libraries only. Skipped under a
# sanitizer build (valgrind cannot run ASan binaries).
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin"
if [ -n "${MTR_SANITIZE:-}" ]; then
    echo "skip valgrind: the binaries are built with -fsanitize=$MTR_SANITIZE"
    exit 0
fi
if ! command -v valgrind >/dev/null 2>&1; then not_ok "valgrind" "not installed (config/debian-packages.txt lists it)"; exit 0; fi
# OpenMP on two threads: the parallel paths run, and memcheck (which serialises threads) stays quick
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1
VG="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite
    --track-origins=no --suppressions=$TESTS/valgrind.supp"
vg() { # NAME CMD...: the command exits 0 under memcheck with no error
    name=$1
    shift
    $VG "$@" >"$WORK/out" 2>"$WORK/err"
    rc=$?
    if [ $rc -eq 0 ]; then ok "memcheck clean: $name"
    elif [ $rc -eq 99 ]; then not_ok "memcheck clean: $name" "$(grep -m3 -E '==[0-9]+== [A-Z]' "$WORK/err" | tr '\n' ' ')"
    else not_ok "memcheck clean: $name" "exit $rc: $(tail -c 300 "$WORK/err")"; fi
}
cd "$WORK" || exit 1
vg "synth" "$BIN/moetrace-capture" synth --out run --layers 4 --experts 8 --top-k 2 --units 2 --len-mean 8 \
    --len-max 12 --langs eng_Latn:1,fra_Latn:0.8,zho_Hans:0.5,hin_Deva:0.3 --shard-bytes 8K --quiet
vg "info --deep" "$BIN/moetrace-info" --deep run
vg "reduce" "$BIN/moetrace-reduce" run -o tab -q
vg "stats band" "$BIN/moetrace-stats" band --tables tab --band 2-3
vg "stats correlate" "$BIN/moetrace-stats" correlate --tables tab --accuracy run/accuracy.tsv --band 2-3 \
    --bootstrap 200 --permutations 200
vg "stats steer" "$BIN/moetrace-stats" steer --tables tab --dataset math --generic flores --tau 0.01 --band 2-3 \
    --op hard --out steer
"$PY" "$TESTS/python/make_stream.py" 5 >stream
vg "ingest" "$BIN/moetrace-capture" ingest --out ing --input stream --quiet
vg "capture run (tiny qwen3_moe, steered)" "$BIN/moetrace-capture" run --model "$TESTS/models/tiny/qwen3_moe" \
    --corpus "$TESTS/data/udhr-mini.jsonl" --limit 3 --out cap --shard-bytes 8K --quiet \
    --steer "$TESTS/models/tiny/qwen3_moe/steer_hard.json"
vg "info of the capture" "$BIN/moetrace-info" --deep cap
# the other engines: Phi-3.5-MoE (sparsemixer, LongRoPE), GPT-OSS (MXFP4 experts, sinks, sliding window, two
# shards) and DeepSeek-V2 (latent attention, shared experts, group-limited routing), each steered soft
for arch in phimoe gpt_oss deepseek_v2; do
    vg "capture run (tiny $arch, steered soft)" "$BIN/moetrace-capture" run --model "$TESTS/models/tiny/$arch" \
        --corpus "$TESTS/data/udhr-mini.jsonl" --limit 2 --out "cap-$arch" --shard-bytes 8K --quiet \
        --steer "$TESTS/models/tiny/$arch/steer_soft.json"
done
