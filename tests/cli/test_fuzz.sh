# The libFuzzer targets (tests/fuzz/fuzz.mk, built by make check with clang, ASan + UBSan): each replays its
# committed seed corpus tests/fuzz/corpus/<name> — regression inputs of every finding included — then fuzzes for
# a few seconds from a fixed libFuzzer seed (FUZZ_SMOKE_SECONDS, default 3), so a finding here is reproducible.
# `make fuzz` runs them for long. Under a GCC sanitizer build (make asan) the clang targets are not built.
. "$TESTS/cli/lib.sh"
root=$(cd "$TESTS/.." && pwd)
FUZZ=${FUZZ:-$root/build/fuzz}
if [ -n "${MTR_SANITIZE:-}" ]; then
    echo "skip fuzz targets: the plain make check runs them (this build is -fsanitize=$MTR_SANITIZE with GCC)"
    exit 0
fi
targets=$(env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$root" fuzz-list 2>/dev/null)
n=$(echo $targets | wc -w)
if [ "$n" -lt 8 ]; then not_ok "fuzz target list" "read '$targets' from fuzz.mk"; fi
cd "$root" && FUZZ="$FUZZ" sh tests/fuzz/run.sh smoke "${FUZZ_SMOKE_SECONDS:-3}" $targets
true
