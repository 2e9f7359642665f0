#!/bin/sh
# Run libFuzzer targets (tests/fuzz/fuzz.mk), one after the other, from the repository root.
#   run.sh long SECONDS TARGET...   fuzz each for SECONDS; new inputs kept in $FUZZ/corpus-TARGET, crashes in
#                                   $FUZZ/TARGET-crash-*; prints "fuzzed TARGET N s: M runs, no finding" per target
#   run.sh smoke SECONDS TARGET...  replay the seed corpus, then fuzz SECONDS from a scratch copy; prints
#                                   "ok fuzz TARGET ..." / "not ok fuzz TARGET: why" (tests/cli/test_fuzz.sh)
# FUZZ: directory of the target binaries. Exit status: 0 if every target ran without a finding.
set -u
mode=$1
secs=$2
shift 2
: "${FUZZ:=build/fuzz}"
# UBSan findings stop the run (libFuzzer then keeps the input); leaks count (libFuzzer's default)
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export ASAN_OPTIONS="abort_on_error=0:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# leaks inside libraries we link, on error paths we cannot avoid (each explained there); matched by function,
# so the targets that open HDF5 files unwind malloc stacks fully (libhdf5 has no frame pointers)
export LSAN_OPTIONS="suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
opts="-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=30 -print_final_stats=1"
status=0
scratch=$(mktemp -d "${TMPDIR:-/tmp}/mtr-fuzz-run-XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM
for t in "$@"; do
    bin="$FUZZ/$t"
    case "$t" in
    fuzz_trace | fuzz_steer | fuzz_ingest | fuzz_stats | fuzz_summaries) unwind=fast_unwind_on_malloc=0 ;;
    *) unwind=fast_unwind_on_malloc=1 ;;
    esac
    seeds="tests/fuzz/corpus/${t#fuzz_}"
    mkdir -p "$seeds"
    log="$scratch/$t.log"
    if [ ! -x "$bin" ]; then
        echo "not ok fuzz $t: $bin not built"
        status=1
        continue
    fi
    if [ "$mode" = smoke ]; then
        nseed=$(find "$seeds" -type f | wc -l)
        # every committed seed (regression inputs included) runs once
        if ! ASAN_OPTIONS="$ASAN_OPTIONS:$unwind" "$bin" $opts -runs=0 -artifact_prefix="$scratch/$t-" "$seeds" >"$log" 2>&1; then
            echo "not ok fuzz $t: a seed fails: $(grep -m1 -E 'ERROR|runtime error|Test unit written' "$log")"
            status=1
            continue
        fi
        mkdir -p "$scratch/corpus-$t"
        if ASAN_OPTIONS="$ASAN_OPTIONS:$unwind" "$bin" $opts -seed=1 -max_total_time="$secs" -artifact_prefix="$scratch/$t-" "$scratch/corpus-$t" "$seeds" \
            >"$log" 2>&1; then
            runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
            echo "ok fuzz $t: $nseed seeds replayed, ${runs:-?} runs in $secs s"
        else
            echo "not ok fuzz $t: $(grep -m1 -E 'ERROR|runtime error' "$log"); input: $(ls "$scratch/$t-"* 2>/dev/null | head -1)"
            # keep what it found where a developer can pick it up
            mkdir -p "$FUZZ" && cp "$scratch/$t-"* "$FUZZ/" 2>/dev/null
            status=1
        fi
    else
        mkdir -p "$FUZZ/corpus-$t"
        echo "== $t ($secs s)"
        if ASAN_OPTIONS="$ASAN_OPTIONS:$unwind" "$bin" $opts -max_total_time="$secs" -artifact_prefix="$FUZZ/$t-" "$FUZZ/corpus-$t" "$seeds" >"$log" 2>&1; then
            runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
            cov=$(grep -E '^#[0-9]+.*cov:' "$log" | tail -n 1 | sed -E 's/.*cov: ([0-9]+).*/\1/')
            echo "fuzzed $t $secs s: ${runs:-?} runs, coverage ${cov:-?}, no finding"
        else
            tail -n 40 "$log"
            echo "fuzz $t: FINDING, input in $FUZZ/$t-*"
            status=1
            break
        fi
    fi
done
exit $status
