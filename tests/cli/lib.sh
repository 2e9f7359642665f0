# lib.sh — helpers for the CLI test scripts: each case prints "ok NAME" or "not ok NAME: why".
# Sourced by tests/cli/test_*.sh; BIN, LIB, PY and TESTS come from tests/run.sh.
set -u
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtr-cli-XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

ok() { echo "ok $1"; }
not_ok() { echo "not ok $1: $2"; }

# expect_exit CODE NAME CMD...: the command exits with CODE
expect_exit() {
    want=$1; name=$2; shift 2
    "$@" >"$WORK/out" 2>"$WORK/err"
    got=$?
    if [ "$got" -eq "$want" ]; then ok "$name"; else not_ok "$name" "exit $got, wanted $want: $(head -c 300 "$WORK/err")"; fi
}

# expect_err_line NAME PATTERN: the last command's stderr is one line matching PATTERN
expect_err_line() {
    n=$(wc -l <"$WORK/err")
    if [ "$n" -eq 1 ] && grep -q -- "$2" "$WORK/err"; then ok "$1"; else not_ok "$1" "stderr was: $(head -c 300 "$WORK/err")"; fi
}

# expect_out NAME PATTERN: the last command's stdout matches (grep -E) PATTERN
expect_out() {
    if grep -Eq -- "$2" "$WORK/out"; then ok "$1"; else not_ok "$1" "stdout lacks /$2/: $(head -c 300 "$WORK/out")"; fi
}
