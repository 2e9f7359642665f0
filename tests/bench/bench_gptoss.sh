# gpt_oss: the native engine against PyTorch (the reference model of tests/models/ref_moe.py, GptOssModel: experts
# dequantised once at load as transformers does without its triton kernels, only the selected experts run) on a
# random GPT-OSS-shaped checkpoint with MXFP4 experts (~250 MB, made once in the git-ignored tests/.cache): prefill
# to the next-token logits, tokens/s at 1 and 2 threads, target >= 1.5x the peer; and the peak RSS of a prefill
# on the MXFP4 checkpoint (f32 dense tensors, and bf16 as published) against its file size, target <= 1.2x (the
# experts are dequantised a block of rows at a time into per-thread scratch, never as a whole).
set -u
CACHE=tests/.cache/bench-gptoss
CACHEB=tests/.cache/bench-gptoss-bf16
DATA=build/bench-data/gptoss
mkdir -p "$DATA"
if ! $PY -c 'import torch' 2>/dev/null; then
    echo "bench_gptoss: skipped (no torch under $PY)"
    exit 0
fi
REPEAT=${MTR_BENCH_REPEAT:-3} # MTR_BENCH_THREADS="1 2" (default) the thread counts timed
status=0
med() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for d in "$CACHE:f32" "$CACHEB:bf16"; do
    [ -f "${d%%:*}/config.json" ] && continue
    OPENBLAS_NUM_THREADS=1 $PY tests/bench/torch_prefill.py "${d%%:*}" --arch gpt_oss --dtype "${d##*:}" --make-only ||
        { echo "bench_gptoss: making ${d%%:*} failed"; exit 1; }
done
for t in ${MTR_BENCH_THREADS:-1 2}; do
    # rounds alternate the peer and the engine, so load that comes and goes on a shared machine hits both alike
    : >"$DATA/torch.$t" && : >"$DATA/eng.$t"
    r=0
    while [ $r -lt "$REPEAT" ]; do
        OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t $PY tests/bench/torch_prefill.py "$CACHE" --arch gpt_oss \
            --threads "$t" --repeat 1 --head last >>"$DATA/torch.$t" || { echo "bench_gptoss: torch peer failed"; exit 1; }
        rm -rf "$DATA"/run-*
        OPENBLAS_NUM_THREADS=1 "$TOOLS/engine_prefill" "$CACHE" "$CACHE/prefill_ids.txt" "$t" 1 "$DATA" last \
            >>"$DATA/eng.$t" || { echo "bench_gptoss: engine failed"; exit 1; }
        r=$((r + 1))
    done
    tt=$(grep -o 'tokens_per_s=[0-9.]*' "$DATA/torch.$t" | cut -d= -f2 | med)
    et=$(grep '^engine_prefill_tokens_per_s=' "$DATA/eng.$t" | cut -d= -f2 | med)
    echo "gpt_oss threads=$t torch rounds: $(grep -o 'tokens_per_s=[0-9.]*' "$DATA/torch.$t" | cut -d= -f2 | tr '\n' ' ')"
    echo "gpt_oss threads=$t engine rounds: $(grep '^engine_prefill_tokens_per_s=' "$DATA/eng.$t" | cut -d= -f2 | tr '\n' ' ')"
    grep '^engine_phase_seconds' "$DATA/eng.$t" | tail -n 1 | sed "s/^/gpt_oss threads=$t last round: /"
    ratio=$(awk -v a="$et" -v b="$tt" 'BEGIN { printf "%.2f", a / b }')
    met=$(awk -v r="$ratio" 'BEGIN { print (r >= 1.5) ? "met" : "MISSED" }')
    [ "$met" = met ] || status=1
    echo "gpt_oss threads=$t next-token prefill engine $et tokens/s vs torch $tt tokens/s (medians of $REPEAT alternating rounds) = ${ratio}x (target >= 1.5x: $met)"
done
# memory: one 256-token sequence (a capture item's size) through each MXFP4 checkpoint
head -n 1 "$CACHE/prefill_ids.txt" >"$DATA/ids1.txt"
for m in "$CACHE" "$CACHEB"; do
    rm -rf "$DATA"/run-*
    out=$(OPENBLAS_NUM_THREADS=1 "$TOOLS/engine_prefill" "$m" "$DATA/ids1.txt" 1 1 "$DATA" last) ||
        { echo "bench_gptoss: engine failed on $m"; exit 1; }
    dt=$(echo "$out" | sed -n 's/^engine_dtype=//p')
    rss=$(echo "$out" | sed -n 's/^peak_rss_bytes=\([0-9]*\).*/\1/p')
    fb=$(cat "$m"/*.safetensors | wc -c)
    rr=$(awk -v a="$rss" -v b="$fb" 'BEGIN { printf "%.3f", a / b }')
    rmet=$(awk -v r="$rr" 'BEGIN { print (r <= 1.2) ? "met" : "MISSED" }')
    [ "$rmet" = met ] || status=1
    echo "gpt_oss $dt + MXFP4 checkpoint ($fb bytes): peak RSS $rss bytes = ${rr}x the file size (target <= 1.2x: $rmet); $(echo "$out" | grep '^peak_rss_bytes' | sed 's/^peak_rss_bytes=[0-9]* //')"
done
rm -rf "$DATA"
exit $status
