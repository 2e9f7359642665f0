#!/bin/sh
# The test runner behind `make check`: Check unit-test binaries, then the CLI / interop / crash scripts in
# tests/cli (each prints "ok NAME" or "not ok NAME: why" per case). Ends with one line: "N passed, N failed".
# Environment: BIN, LIB, UNIT, TOOLS (directories), PY (Debian's /usr/bin/python3).
set -u
here=$(cd "$(dirname "$0")" && pwd)
passed=0
failed=0
failures=""
export TMPDIR="${TMPDIR:-/tmp}"
# a script that hangs is stopped and counted as failed; sanitised builds run several times slower
limit=900
[ -n "${MTR_SANITIZE:-}" ] && limit=3600

for t in "$UNIT"/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d) continue ;; esac
    name=$(basename "$t")
    timeout -k 10 "$limit" "$t" >"${TMPDIR}/mtr-unit-$$" 2>&1
    rc=$?
    out=$(cat "${TMPDIR}/mtr-unit-$$")
    rm -f "${TMPDIR}/mtr-unit-$$"
    printf '%s\n' "$out" | grep -v '^Running suite' | sed "s/^/[$name] /"
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+%: Checks: ' | tail -n 1)
    if [ -z "$line" ]; then
        failed=$((failed + 1))
        failures="$failures unit:$name(crashed:rc=$rc)"
        continue
    fi
    n=$(printf '%s' "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
    f=$(printf '%s' "$line" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
    e=$(printf '%s' "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
    passed=$((passed + n - f - e))
    failed=$((failed + f + e))
    [ $((f + e)) -gt 0 ] && failures="$failures unit:$name"
done

log=$(mktemp "${TMPDIR}/mtr-test-XXXXXX")
trap 'rm -f "$log"' EXIT
for s in "$here"/cli/test_*.sh; do
    [ -f "$s" ] || continue
    name=$(basename "$s" .sh)
    # output goes through a file, not a pipe, so a stray background process cannot hold the runner
    BIN="$BIN" LIB="$LIB" TOOLS="$TOOLS" PY="$PY" TESTS="$here" timeout -k 10 "$limit" sh "$s" >"$log" 2>&1
    rc=$?
    out=$(cat "$log")
    printf '%s\n' "$out" | sed "s/^/[$name] /"
    ok=$(printf '%s\n' "$out" | grep -c '^ok ')
    bad=$(printf '%s\n' "$out" | grep -c '^not ok ')
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        bad=1
        echo "[$name] not ok: script exited $rc"
    fi
    passed=$((passed + ok))
    failed=$((failed + bad))
    [ "$bad" -gt 0 ] && failures="$failures cli:$name"
done

[ -n "$failures" ] && echo "failing:$failures"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
