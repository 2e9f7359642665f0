# moetrace-reduce: the optimised path against the plain C reference and an independent NumPy reference;
# identical outputs for 1/2 threads x 1/2 MPI ranks; the planted truth of a synthetic run recovered; NaN tokens
# excluded and counted; every bad input a one-line error.
. "$TESTS/cli/lib.sh"
export HDF5_PLUGIN_PATH="$LIB/plugin" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
R="$BIN/moetrace-reduce"
check_py() { # name-prefix, then the script's arguments: relays its ok / not ok lines
    "$PY" "$TESTS/reduce/check_reduce.py" "$@" 2>&1 | sed 's/^\(not \)\{0,1\}ok /&/'
}

small="$WORK/small"
mkdir -p "$small"
"$BIN/moetrace-capture" synth --out "$small/run" --layers 6 --experts 16 --top-k 3 --units 8 --seed 5 \
    --langs eng_Latn:1,fra_Latn:0.7,bam_Latn:0.1 --len-mean 20 --len-max 60 --shard-bytes 40K --quiet
expect_exit 0 "reduce RUN -o DIR (both phases)" "$R" "$small/run" -o "$small/out" --jaccard-pairs 100000 -q
for t in div_from_en div_pairwise entropy jaccard freq delta specialisation top_experts units_missing_en; do
    [ -s "$small/out/$t.tsv" ] || missing="${missing:-} $t.tsv"
done
[ -z "${missing:-}" ] && ok "every table written" || not_ok "every table written" "missing:$missing"
check_py numpy "$small/run" "$small/out/summaries.h5" "$small/out"
expect_exit 0 "serial C reference" "$R" reference "$small/run" -o "$small/ref.h5" --jaccard-pairs 100000 -q
check_py same "$small/ref.h5" "$small/out/summaries.h5" --tol 1e-5 | sed 's/^ok same/ok reference vs optimised:/; s/^not ok same/not ok reference vs optimised:/'

# 1 or 2 threads x 1 or 2 ranks: bitwise the same (sampled Jaccard pairs included)
for t in 1 2; do
    expect_exit 0 "summarize, $t thread(s)" "$R" summarize "$small/run" -o "$small/t$t.h5" --threads "$t" --jaccard-pairs 50 -q
    # (leak checking is off for MPI runs: OpenMPI's plugins leave allocations behind in modules it has unloaded)
    expect_exit 0 "summarize, 2 ranks x $t thread(s)" env ASAN_OPTIONS=detect_leaks=0 mpirun -np 2 "$R" summarize "$small/run" -o "$small/m$t.h5" \
        --threads "$t" --jaccard-pairs 50 -q
done
for f in t2 m1 m2; do
    check_py same "$small/t1.h5" "$small/$f.h5" | sed "s/^ok same/ok t1 = $f:/; s/^not ok same/not ok t1 = $f:/"
done
[ ! -e "$small/m1.h5.rank0000.part" ] && ok "MPI rank parts removed" || not_ok "MPI parts" "left behind"

# enough sequences for whole 64-row chunks on both sides of the rank boundaries: rank 0 joins the parts by copying
# their stored chunks and re-encodes only the chunks that straddle two parts (and the short last one)
many="$WORK/many"
mkdir -p "$many"
"$BIN/moetrace-capture" synth --out "$many/run" --layers 3 --experts 8 --top-k 2 --units 110 --seed 9 \
    --langs eng_Latn:1,fra_Latn:0.7,bam_Latn:0.2 --len-mean 6 --len-max 12 --quiet
"$R" summarize "$many/run" -o "$many/t1.h5" --threads 1 --jaccard-pairs 50 -q
for np in 2 3; do
    expect_exit 0 "summarize, $np ranks over $(ls "$many/run" | grep -c '^shard') shard(s)" env ASAN_OPTIONS=detect_leaks=0 \
        mpirun -np "$np" "$R" summarize "$many/run" -o "$many/m$np.h5" --threads 1 --jaccard-pairs 50 -q
    check_py same "$many/t1.h5" "$many/m$np.h5" | sed "s/^ok same/ok 1 thread = $np ranks, chunks joined as stored:/; s/^not ok same/not ok 1 thread = $np ranks:/"
done
# more ranks than sequences: some parts are empty
few="$WORK/few"
mkdir -p "$few"
"$BIN/moetrace-capture" synth --out "$few/run" --layers 3 --experts 8 --top-k 2 --units 1 --seed 4 \
    --langs eng_Latn:1,fra_Latn:1 --len-mean 6 --len-max 12 --quiet
"$R" summarize "$few/run" -o "$few/t1.h5" --threads 1 -q
expect_exit 0 "summarize, 5 ranks over $("$PY" -c "import h5py,glob; print(sum(len(h5py.File(f)['seq/seq_id']) for f in glob.glob('$few/run/shard-*.h5')))") sequences" \
    env ASAN_OPTIONS=detect_leaks=0 mpirun -np 5 "$R" summarize "$few/run" -o "$few/m5.h5" --threads 1 -q
check_py same "$few/t1.h5" "$few/m5.h5" | sed "s/^ok same/ok 1 thread = 5 ranks, empty parts:/; s/^not ok same/not ok 1 thread = 5 ranks:/"
# a rank's part left behind (its root says row_offset) is not a summaries file
cp "$many/t1.h5" "$many/part.h5"
"$PY" -c 'import h5py, numpy, sys; h5py.File(sys.argv[1], "a").attrs["row_offset"] = numpy.uint32(5)' "$many/part.h5"
expect_exit 2 "tables refuses a rank's part" "$R" tables "$many/part.h5" -o "$many/tp"
expect_err_line "rank's part: one line naming it" "$many/part.h5: one rank's part of an MPI summarize"
expect_exit 0 "reference under 2 ranks: rank 0 alone writes it" env ASAN_OPTIONS=detect_leaks=0 \
    mpirun -np 2 "$R" reference "$many/run" -o "$many/ref2.h5" --jaccard-pairs 50 -q
"$R" reference "$many/run" -o "$many/ref1.h5" --jaccard-pairs 50 -q
check_py same "$many/ref1.h5" "$many/ref2.h5" | sed "s/^ok same/ok reference, 1 = 2 ranks (no rows twice):/; s/^not ok same/not ok reference, 1 = 2 ranks:/"

# the shapes the token kernel has its own code for: 128 and 64 experts with top-8 (bf16 rows go to it directly,
# f32 rows widened), and a row length that is not a multiple of 8; NumPy and C references, 1 = 2 threads
for shape in "128 8 bf16" "64 8 f32" "60 4 bf16"; do
    set -- $shape
    d="$WORK/shape-$1-$2-$3"
    mkdir -p "$d"
    "$BIN/moetrace-capture" synth --out "$d/run" --layers 5 --experts "$1" --top-k "$2" --dtype "$3" --units 3 --seed 3 \
        --langs eng_Latn:1,fra_Latn:0.6 --len-mean 30 --len-max 90 --quiet
    expect_exit 0 "reduce $1 experts, top-$2, $3" "$R" "$d/run" -o "$d/out" --jaccard-pairs 100000 --threads 1 -q
    check_py numpy "$d/run" "$d/out/summaries.h5" "$d/out" | sed "s/^ok numpy:/ok numpy ($shape):/; s/^not ok numpy:/not ok numpy ($shape):/"
    "$R" reference "$d/run" -o "$d/ref.h5" --jaccard-pairs 100000 -q
    check_py same "$d/ref.h5" "$d/out/summaries.h5" --tol 1e-5 |
        sed "s/^ok same/ok reference vs optimised ($shape):/; s/^not ok same/not ok reference vs optimised ($shape):/"
    "$R" summarize "$d/run" -o "$d/t2.h5" --jaccard-pairs 100000 --threads 2 -q
    check_py same "$d/out/summaries.h5" "$d/t2.h5" | sed "s/^ok same/ok 1 = 2 threads ($shape):/; s/^not ok same/not ok 1 = 2 threads ($shape):/"
done

# the planted truth of a larger synthetic run
big="$WORK/big"
mkdir -p "$big"
"$BIN/moetrace-capture" synth --out "$big/run" --layers 16 --experts 32 --top-k 4 --units 24 --seed 11 \
    --langs eng_Latn:1,fra_Latn:0.9,deu_Latn:0.7,hin_Deva:0.45,ary_Arab:0.25,bam_Latn:0.05 --datasets flores,math --quiet
expect_exit 0 "reduce a 6-language run" "$R" "$big/run" -o "$big/out" -q
check_py planted "$big/run" "$big/out"
expect_exit 0 "risk difference between slices" "$R" tables "$big/out/summaries.h5" -o "$big/rd" --rd math:eng_Latn flores:eng_Latn -q
awk -F'\t' '!/^#/ && ($3 - $4 - $5 > 1e-12 || $4 - $3 + $5 > 1e-12) {bad = 1} END {exit bad}' "$big/rd/rd.tsv" &&
    ok "rd.tsv: rd = p_a - p_b" || not_ok "rd.tsv" "inconsistent rows"

# NaN logits: the token is excluded and counted, never averaged in
nan="$WORK/nan"
cp -r "$small/run" "$nan"
"$PY" -c '
import h5py, sys
with h5py.File(sys.argv[1], "r+") as f:
    d = f["router/logits"]
    row = d[3]               # reading loads the filter plugin, which writing then needs
    row[2, 5] = 0x7fc0       # bf16 NaN in token 3 (first sequence)
    d[3] = row
' "$nan/shard-000000.h5"
expect_exit 0 "reduce a run with a NaN logit" "$R" summarize "$nan" -o "$WORK/nan.h5" -q
"$PY" -c '
import h5py, numpy as np, sys
with h5py.File(sys.argv[1]) as f:
    bad, used, ntok = f["seq/n_nonfinite"][...], f["seq/n_used"][...], f["seq/n_tokens"][...]
    q = f["importance"][...]
assert bad[0] == 1 and bad[1:].sum() == 0, bad
assert used[0] == ntok[0] - 1 and np.isfinite(q).all()
' "$WORK/nan.h5" && ok "NaN token excluded and counted" || not_ok "NaN token" "not excluded"

# bad input: one line, the right exit code
expect_exit 1 "no -o" "$R" "$small/run"
expect_err_line "no -o: one line" "needs at least one run and -o"
expect_exit 2 "not a run" "$R" "$WORK/nothing" -o "$WORK/x"
expect_err_line "not a run: one line naming it" "$WORK/nothing"
mkdir -p "$WORK/noen"
"$BIN/moetrace-capture" synth --out "$WORK/noen/run" --layers 4 --experts 8 --top-k 2 --units 3 --seed 1 \
    --langs eng_Latn:1,fra_Latn:0.5 --quiet
"$R" summarize "$WORK/noen/run" -o "$WORK/noen/s.h5" -q
expect_exit 1 "tables without the English reference language" "$R" tables "$WORK/noen/s.h5" -o "$WORK/noen/t" --english xxx_Latn
expect_err_line "no English: one line" "no xxx_Latn sequences"
"$BIN/moetrace-capture" synth --out "$WORK/noen/other" --layers 4 --experts 12 --top-k 2 --units 3 --seed 1 \
    --langs eng_Latn:1 --quiet
expect_exit 2 "runs of different models" "$R" summarize "$WORK/noen/run" "$WORK/noen/other" -o "$WORK/mixed.h5"
expect_err_line "different models: one line" "differ"
cp "$small/run/shard-000000.h5" "$small/run/shard-000077.h5.partial"
expect_exit 2 "a run with a partial shard is refused" "$R" summarize "$small/run" -o "$WORK/p.h5"
expect_err_line "partial: one line with the way out" "allow-partial"
expect_exit 0 "--allow-partial reduces the finished shards" "$R" summarize "$small/run" -o "$WORK/p.h5" --allow-partial -q
rm -f "$small/run/shard-000077.h5.partial"
expect_exit 2 "tables of a non-summaries file" "$R" tables "$small/run/shard-000000.h5" -o "$WORK/t2"
expect_err_line "non-summaries: one line" "not a moetrace summaries file"
