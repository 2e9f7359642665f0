# make install into a scratch prefix: programs, libraries, headers, pkg-config file, HDF5 plugin and config land
# where they should, and a program built against the installed library through pkg-config writes a trace that
# the installed moetrace-info validates and h5dump reads through the installed plugin.
. "$TESTS/cli/lib.sh"
top=$(cd "$TESTS/.." && pwd)
P="$WORK/prefix"
expect_exit 0 "make install PREFIX=..." make -s -C "$top" install PREFIX="$P"
for f in bin/moetrace bin/moetrace-info bin/moetrace-capture bin/moetrace-reduce bin/moetrace-stats \
    lib/libmoetrace.a lib/libmoetrace.so lib/hdf5/plugin/libh5zstd.so lib/pkgconfig/moetrace.pc \
    include/moetrace/moetrace.h include/moetrace/mtr_format.h include/moetrace/mtr_steer.h include/moetrace/mtr_h5.h \
    share/moetrace/languages.tsv share/moetrace/models/qwen3-30b-a3b.json share/doc/moetrace/FORMAT.md; do
    [ -e "$P/$f" ] || missing="${missing:-} $f"
done
[ -z "${missing:-}" ] && ok "installed files in place" || not_ok "installed files in place" "missing:$missing"
cat >"$WORK/user.c" <<'C'
#include <moetrace.h>
#include <mtr_h5.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv)
{
    mtr_model_info m;
    mtr_model_info_init(&m, "user/model", "olmoe", 2, 8, 2);
    mtr_writer *w;
    if (argc < 2 || mtr_writer_create(&w, argv[1], &m, NULL)) return 1;
    float z[3 * 2 * 8];
    for (int i = 0; i < 48; i++) z[i] = (float)(i % 7) - 3.0f;
    mtr_seq_meta s = {1, "u1", "eng_Latn", "flores", 3, 0};
    if (mtr_writer_append(w, &s, NULL, NULL, NULL, z, MTR_DTYPE_F32) || mtr_writer_close(w)) return 2;
    /* the checked-read API on what was written */
    char shard[4200];
    snprintf(shard, sizeof shard, "%s/shard-000000.h5", argv[1]);
    hid_t f = H5Fopen(shard, H5F_ACC_RDONLY, H5P_DEFAULT);
    char *fmt = NULL;
    if (f < 0 || mtr_h5_check_attrs(f, shard) || mtr_h5_check_object(f, "router/logits", shard) ||
        mtr_h5_get_str_alloc(f, "format", &fmt, shard))
        return 3;
    printf("written (%s)\n", fmt);
    free(fmt);
    H5Fclose(f);
    return 0;
}
C
if [ -n "${MTR_SANITIZE:-}" ]; then
    # the installed library carries the sanitizer runtime: an ordinary program cannot link and run it
    echo "skip pkg-config build and installed-library checks under -fsanitize=$MTR_SANITIZE"
    exit 0
fi
flags=$(PKG_CONFIG_PATH="$P/lib/pkgconfig" pkg-config --cflags --libs --static moetrace)
# shellcheck disable=SC2086
if cc -std=c11 -o "$WORK/user" "$WORK/user.c" $flags -Wl,-rpath,"$P/lib" 2>"$WORK/err" &&
    "$WORK/user" "$WORK/urun" >/dev/null 2>>"$WORK/err"; then
    ok "a program built with pkg-config moetrace writes a trace"
else
    not_ok "pkg-config build" "$(head -c 300 "$WORK/err")"
fi
expect_exit 0 "installed moetrace info validates it" "$P/bin/moetrace" info --deep "$WORK/urun"
HDF5_PLUGIN_PATH="$P/lib/hdf5/plugin" h5dump -d /router/logits "$WORK/urun/shard-000000.h5" >"$WORK/dump" 2>&1
grep -q '(0,0,0):' "$WORK/dump" && ok "h5dump reads it through the installed plugin" ||
    not_ok "installed plugin" "$(head -c 300 "$WORK/dump")"
# the installed programs end to end, from outside the source tree: synth -> reduce -> stats with a model profile
(cd / && "$P/bin/moetrace-capture" synth --out "$WORK/srun" --layers 16 --experts 32 --top-k 4 --units 4 --seed 3 \
    --langs eng_Latn:1,fra_Latn:0.8,bam_Latn:0.1 --quiet &&
    "$P/bin/moetrace-reduce" "$WORK/srun" -o "$WORK/stab" -q &&
    MOETRACE_CONFIG= "$P/bin/moetrace-stats" band --tables "$WORK/stab" --profile synthetic-l16-e32 >"$WORK/band" 2>&1) &&
    grep -q 'profile' "$WORK/band" && ok "installed programs run end to end and find the installed model profiles" ||
    not_ok "installed pipeline" "$(head -c 300 "$WORK/band")"
