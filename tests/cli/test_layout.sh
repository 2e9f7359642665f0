# test_layout.sh — the layering rules of docs/ARCHITECTURE.md, checked on the tree and the built programs:
#  1. every program, unit test and tool links only archives it uses (at least one of each archive's objects ends up
#     in the binary);
#  2. a product source includes, from outside its own component, only public headers (moetrace.h, mtr_*.h), and
#     never by a relative path;
#  3. libmoetrace.so exports exactly the functions its public headers declare, and nothing else.
. "$TESTS/cli/lib.sh"
top=$(cd "$TESTS/.." && pwd)
build=$(cd "$BIN/.." && pwd)

# ---- 1. archives linked and used ----
make -s -n -B -C "$top" BUILD="$build" check 2>/dev/null |
    grep -E -- '-o [^ ]*/(bin/moetrace[a-z-]*|build/tests/test_[a-z_]+|build/tools/[a-z_]+)( |$)' >"$WORK/links"
n_links=$(wc -l <"$WORK/links")
[ "$n_links" -ge 5 ] && ok "link lines of the programs and tests found ($n_links)" ||
    not_ok "link lines" "only $n_links found in make -n output"
# unused_archives BINARY ARCHIVE...: prints the archives none of whose global symbols is in BINARY
unused_archives() {
    bin=$1
    shift
    nm --defined-only "$bin" 2>/dev/null | awk '{print $3}' | sort -u >"$WORK/have"
    for a in "$@"; do
        nm --defined-only -g "$a" 2>/dev/null | awk 'NF == 3 && $2 ~ /[TDBR]/ {print $3}' | sort -u >"$WORK/defs"
        [ -n "$(comm -12 "$WORK/have" "$WORK/defs" | head -n 1)" ] || echo "$(basename "$bin")<-$(basename "$a")"
    done
}
bad=""
checked=0
while read -r line; do
    # shellcheck disable=SC2086
    set -- $line
    out=""
    archives=""
    while [ $# -gt 0 ]; do
        case "$1" in
        -o) out=$2; shift ;;
        *.a) case "$1" in /*) archives="$archives $1" ;; *) archives="$archives $top/$1" ;; esac ;;
        esac
        shift
    done
    case "$out" in /*) ;; *) out="$top/$out" ;; esac
    [ -x "$out" ] || continue
    # shellcheck disable=SC2086
    set -- $archives
    checked=$((checked + $#))
    bad="$bad$(unused_archives "$out" "$@" | tr '\n' ' ')"
done <"$WORK/links"
[ "$checked" -ge 10 ] && [ -z "$bad" ] && ok "no binary links an archive it does not use ($checked links checked)" ||
    not_ok "no binary links an archive it does not use" "checked $checked; unused: $bad"
# the check catches an archive linked for nothing
echo 'int main(void) { return 0; }' >"$WORK/empty.c"
cc -o "$WORK/empty" "$WORK/empty.c" "$LIB/libmtrstats.a" 2>/dev/null
[ "$(unused_archives "$WORK/empty" "$LIB/libmtrstats.a")" = "empty<-libmtrstats.a" ] &&
    ok "an archive linked but unused is reported" || not_ok "unused-archive self-check" "not reported"

# ---- 2. cross-component includes are public headers ----
# components: traces, reduce, stats, capture (the program) and each room under capture/
comp_of() {
    case "$1" in
    capture/*/*) echo "$1" | cut -d/ -f1-2 ;;
    *) echo "$1" | cut -d/ -f1 ;;
    esac
}
# check_includes ROOT: prints "N" (includes read) then one line per violation
check_includes() {
    (
        cd "$1" || exit 1
        n=0
        for f in $(find traces reduce stats capture -name '*.[ch]' -not -path 'capture/python/*' 2>/dev/null | sort); do
            c=$(comp_of "$f")
            for h in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f"); do
                n=$((n + 1))
                case "$h" in */*) echo "$f:$h(by path)"; continue ;; esac
                [ -f "$c/$h" ] && continue
                case "$h" in
                moetrace.h | mtr_*.h)
                    [ -n "$(find traces reduce stats capture -name "$h" 2>/dev/null | head -n 1)" ] ||
                        echo "$f:$h(no such header)"
                    ;;
                *) echo "$f:$h(private to another component)" ;;
                esac
            done
        done
        echo "count $n"
    )
}
check_includes "$top" >"$WORK/inc"
n_inc=$(sed -n 's/^count //p' "$WORK/inc")
viol=$(grep -v '^count ' "$WORK/inc" | tr '\n' ' ')
[ "${n_inc:-0}" -ge 50 ] && [ -z "$viol" ] &&
    ok "cross-component includes are public headers only ($n_inc includes checked)" ||
    not_ok "cross-component includes are public headers only" "checked ${n_inc:-0}: $viol"
# the rule catches what it should: a private header and a relative path across components
mkdir -p "$WORK/t/stats" "$WORK/t/reduce" "$WORK/t/traces" "$WORK/t/capture/engine"
touch "$WORK/t/reduce/reduce_internal.h" "$WORK/t/traces/internal.h" "$WORK/t/traces/moetrace.h"
printf '#include "reduce_internal.h"\n#include "moetrace.h"\n' >"$WORK/t/stats/x.c"
printf '#include "../../traces/internal.h"\n' >"$WORK/t/capture/engine/y.c"
check_includes "$WORK/t" >"$WORK/inc2"
grep -q 'stats/x.c:reduce_internal.h' "$WORK/inc2" && grep -q 'capture/engine/y.c:.*by path' "$WORK/inc2" &&
    ! grep -q 'moetrace.h' "$WORK/inc2" &&
    ok "the include rule refuses private and relative includes, accepts public ones" ||
    not_ok "include rule self-check" "$(tr '\n' ' ' <"$WORK/inc2")"

# ---- 3. what libmoetrace.so exports ----
nm -D --defined-only "$LIB/libmoetrace.so" | awk '$2 ~ /[TDBR]/ {print $3}' | sort -u >"$WORK/exports"
cat traces/moetrace.h traces/mtr_steer.h traces/mtr_format.h traces/mtr_util.h traces/mtr_h5.h |
    sed -n 's/^MTR_API[^(]*[ *]\(mtr_[a-z0-9_]*\)(.*/\1/p' | sort -u >"$WORK/declared"
extra=$(comm -23 "$WORK/exports" "$WORK/declared" | tr '\n' ' ')
missing=$(comm -13 "$WORK/exports" "$WORK/declared" | tr '\n' ' ')
n_exp=$(wc -l <"$WORK/exports")
[ "$n_exp" -ge 40 ] && [ -z "$extra" ] && [ -z "$missing" ] &&
    ok "libmoetrace.so exports exactly its public API ($n_exp functions)" ||
    not_ok "libmoetrace.so exports exactly its public API" "exported $n_exp; not declared: $extra; declared, not exported: $missing"
