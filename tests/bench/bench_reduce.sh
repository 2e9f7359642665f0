# bench_reduce.sh — moetrace-reduce phase 1 against its peers, measured in the same run on the same file:
# the floor (raw chunk read + zstd + unshuffle alone, mtr_floor), 1 vs 2 threads, 1 vs 2 MPI ranks, the NumPy/h5py
# reference on one thread, and peak RSS on a 4x larger trace. Medians of alternating rounds.
# Environment: BIN, TOOLS, MTR_BENCH_BYTES (f32-equivalent bytes of the trace, default 2.2 GB = 1.1 GB bf16).
set -u
export HDF5_PLUGIN_PATH="$LIB/plugin" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
D=build/bench-data/reduce
rm -rf "$D" && mkdir -p "$D"
bytes=${MTR_BENCH_BYTES:-2200000000}
rounds=${MTR_BENCH_ROUNDS:-3}
synth() { "$BIN/moetrace-capture" synth --out "$1" --layers 48 --experts 128 --top-k 8 --target-bytes "$2" \
    --len-mean 200 --len-max 512 --langs eng_Latn:1,fra_Latn:0.8,zho_Hans:0.6,hin_Deva:0.4,bam_Latn:0.1 --quiet; }
synth "$D/run" "$bytes" || exit 1
secs() { "$BIN/moetrace-reduce" summarize "$@" --json -q | sed -n 's/.*"seconds": \([0-9.e+-]*\).*/\1/p'; }
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
: >"$D/floor"; : >"$D/t1"; : >"$D/t2"; : >"$D/r1"; : >"$D/r2"
"$TOOLS/mtr_floor" "$D/run" 1 >/dev/null # warm the page cache
for i in $(seq "$rounds"); do
    "$TOOLS/mtr_floor" "$D/run" 1 | cut -d' ' -f1 >>"$D/floor"
    secs "$D/run" -o "$D/s.h5" --threads 1 >>"$D/t1"
    secs "$D/run" -o "$D/s.h5" --threads 2 >>"$D/t2"
    OMP_NUM_THREADS=1 mpirun -np 1 "$BIN/moetrace-reduce" summarize "$D/run" -o "$D/m.h5" --threads 1 --json -q |
        sed -n 's/.*"seconds": \([0-9.e+-]*\).*/\1/p' >>"$D/r1"
    OMP_NUM_THREADS=1 mpirun -np 2 "$BIN/moetrace-reduce" summarize "$D/run" -o "$D/m.h5" --threads 1 --json -q |
        sed -n 's/.*"seconds": \([0-9.e+-]*\).*/\1/p' >>"$D/r2"
done
floor=$(median <"$D/floor"); t1=$(median <"$D/t1"); t2=$(median <"$D/t2"); r1=$(median <"$D/r1"); r2=$(median <"$D/r2")
tokens=$("$BIN/moetrace" info --json "$D/run" | sed -n 's/^  "n_tokens": \([0-9]*\).*/\1/p')
np_out=$("$PY" tests/bench/numpy_phase1.py "$D/run" 40)
np_s=${np_out% *}; np_tok=${np_out#* }
miss=0
report() { # name value target
    if awk -v v="$2" -v t="$3" 'BEGIN {exit !(v >= t)}'; then s=ok; else s=MISSED; miss=1; fi
    printf '%-52s %8.2f x  (target >= %s) %s\n' "$1" "$2" "$3" "$s"
}
echo "# bench_reduce: 48 layers x 128 experts, bf16, $tokens tokens ($(awk -v b="$bytes" 'BEGIN {printf "%.2f", b / 1e9}') GB f32-equivalent); medians of $rounds rounds"
printf 'floor (pread + zstd + unshuffle), 1 thread       %8.2f s\n' "$floor"
printf 'phase 1, 1 thread                                %8.2f s  (%.0f tokens/s)\n' "$t1" "$(awk -v n="$tokens" -v t="$t1" 'BEGIN {print n / t}')"
printf 'phase 1, 2 threads                               %8.2f s\n' "$t2"
printf 'phase 1, 1 MPI rank / 2 MPI ranks (1 thread each) %7.2f s / %.2f s\n' "$r1" "$r2"
printf 'NumPy/h5py reference, 1 thread, %s tokens       %8.2f s  (%.0f tokens/s)\n' "$np_tok" "$np_s" "$(awk -v n="$np_tok" -v t="$np_s" 'BEGIN {print n / t}')"
report "phase 1 (1 thread) vs the floor" "$(awk -v a="$floor" -v b="$t1" 'BEGIN {print a / b}')" 0.8
report "2 threads vs 1 thread" "$(awk -v a="$t1" -v b="$t2" 'BEGIN {print a / b}')" 1.7
report "2 MPI ranks vs 1 rank" "$(awk -v a="$r1" -v b="$r2" 'BEGIN {print a / b}')" 1.7
report "vs NumPy/h5py (tokens/s, 1 thread each)" "$(awk -v n="$tokens" -v t="$t1" -v m="$np_tok" -v s="$np_s" 'BEGIN {print (n / t) / (m / s)}')" 10
# memory does not grow with the trace set: peak RSS on a 4x larger trace
synth "$D/run4" "$((bytes * 4))" || exit 1
rss1=$(/usr/bin/time -f %M "$BIN/moetrace-reduce" summarize "$D/run" -o "$D/s.h5" --threads 2 -q 2>&1 >/dev/null | tail -n 1)
rss4=$(/usr/bin/time -f %M "$BIN/moetrace-reduce" summarize "$D/run4" -o "$D/s4.h5" --threads 2 -q 2>&1 >/dev/null | tail -n 1)
printf 'peak RSS: %s KB on the trace, %s KB on one 4x larger\n' "$rss1" "$rss4"
report "RSS(1x) / RSS(4x), i.e. 4x trace within 1.2x" "$(awk -v a="$rss1" -v b="$rss4" 'BEGIN {print a / b}')" 0.8333
rm -rf "$D"
exit $miss
