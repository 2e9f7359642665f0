#!/bin/sh
# Regenerate the seed corpora of the fuzz targets of tests/fuzz/fuzz.mk (config, corpus, stats, steer) from the
# repository's own files and a small synth -> reduce -> stats run. Run from the repository root after `make`;
# the results are committed (tests/fuzz/corpus/<name>/seed-*). Regression inputs (crash-*) are not touched.
# Layout of a seed: fuzz_config: one byte (which tiny checkpoint) + config.json; fuzz_corpus and fuzz_stats: one
# byte (which reader) + the file, several files joined by the separator line "--8<--" (fuzz_util.h);
# fuzz_steer: one byte (0: the file as it is, 1: a JSON object the target writes as HDF5) + the file.
set -eu
PY=/usr/bin/python3
export HDF5_PLUGIN_PATH="$PWD/lib/plugin"
C=tests/fuzz/corpus
T=$(mktemp -d "${TMPDIR:-/tmp}/mtr-seeds-XXXXXX")
trap 'rm -rf "$T"' EXIT
mkdir -p $C/config $C/corpus $C/stats $C/steer
rm -f $C/config/seed-* $C/corpus/seed-* $C/stats/seed-* $C/steer/seed-*

# mode byte + file(s): seed DIR NAME MODE FILE...
seed() {
    dir=$1 name=$2 mode=$3
    shift 3
    $PY - "$dir/seed-$name" "$mode" "$@" <<'EOF'
import sys
out, mode, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
parts = [open(f, "rb").read() for f in files]
with open(out, "wb") as f:
    f.write(bytes([mode]) + b"\n--8<--\n".join(parts))
EOF
}

# config: each tiny checkpoint's config.json (index = its position in fuzz_config.c's list)
i=0
for m in qwen3_moe olmoe mixtral qwen2_moe qwen3_moe_bf16 mixtral_llama3 qwen3_moe_yarn qwen3_moe_yarn_ratio; do
    seed $C/config "$m" $i tests/models/tiny/$m/config.json
    i=$((i + 1))
done

# corpus: every reader on a few lines of the bundled data
head -n 4 tests/data/udhr-mini.jsonl >"$T/c.jsonl"
$PY - "$T" <<'EOF'
import json, sys
t = sys.argv[1]
rows = [json.loads(l) for l in open(t + "/c.jsonl", encoding="utf-8")]
with open(t + "/c.tsv", "w", encoding="utf-8") as f:
    f.write("unit_id\tlang\tdataset\ttext\n")
    for r in rows:
        f.write("%s\t%s\t%s\t%s\\twith a tab\\\\\n" % (r["unit_id"], r["lang"], r["dataset"], r["text"][:60]))
for lang in ("eng_Latn", "fra_Latn"):
    with open(t + "/" + lang, "w", encoding="utf-8") as f:
        f.write(lang + ".dev\n" + "".join(r["text"][:50] + "\n" for r in rows[:2]))
with open(t + "/chat.jsonl", "w", encoding="utf-8") as f:
    f.write(json.dumps({"unit_id": 7, "lang": "eng_Latn", "dataset": "chat", "id": "x", "messages": [
        {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}) + "\n")
    f.write(json.dumps({"unit_id": 7, "lang": "fra_Latn", "dataset": "chat", "text": "Salut ?"}) + "\n")
with open(t + "/gen.tsv", "w", encoding="utf-8") as f:
    f.write("Anna has 3 apples\t7\nTom has 1,234.50 coins\t1,234.5\n")
with open(t + "/num", "w", encoding="utf-8") as f:
    f.write("so the answer is -1,234.50, not 3.")
EOF
head -n 4 tests/data/mc-mini.jsonl >"$T/mc.jsonl"
head -n 4 tests/data/gen-mini.jsonl >"$T/gen.jsonl"
seed $C/corpus jsonl 0 "$T/c.jsonl"
seed $C/corpus chat 0 "$T/chat.jsonl"
seed $C/corpus tsv 1 "$T/c.tsv"
seed $C/corpus flores 2 "$T/eng_Latn" "$T/fra_Latn"
seed $C/corpus mc 3 "$T/mc.jsonl"
seed $C/corpus gen-jsonl 4 "$T/gen.jsonl"
seed $C/corpus gen-tsv 5 "$T/gen.tsv"
seed $C/corpus prompts 6 config/prompts.json
seed $C/corpus filters 7 "$T/c.jsonl"
seed $C/corpus number 8 "$T/num"

# stats: tables and accuracy of a small synthetic run, the language table, a profile
bin/moetrace-capture synth --out "$T/run" --layers 4 --experts 4 --top-k 2 --units 2 \
    --langs eng_Latn:1,fra_Latn:0.8,zho_Hans:0.5 --datasets flores,math --len-mean 6 --len-max 8 --quiet
bin/moetrace-reduce "$T/run" -o "$T/tab" >/dev/null
$PY - "$T" <<'EOF'
import json, sys
t = sys.argv[1]
rows = [l.split("\t") for l in open(t + "/run/accuracy.tsv") if not l.startswith("#")]
json.dump({"accuracy": [{"lang": r[0], "task": r[1], "metric": r[2], "value": float(r[3]), "n": int(r[4])}
                        for r in rows]}, open(t + "/acc.json", "w"))
json.dump({"results": {"belebele_fra_Latn": {"acc,none": 0.5, "alias": "x"},
                       "mgsm_direct_de": {"exact_match,flexible-extract": 0.25},
                       "global_mmlu_full_fr_anatomy": {"acc,none": 0.4},
                       "global_mmlu_full_fr_law": {"acc,none": 0.6},
                       "mytask": {"acc,none": 0.7}}}, open(t + "/lm.json", "w"))
open(t + "/map.tsv", "w").write("mytask\tzho_Hans\tmy\n")
EOF
seed $C/stats tsv 0 "$T/tab/div_pairwise.tsv"
seed $C/stats acc-tsv 1 "$T/run/accuracy.tsv"
seed $C/stats acc-json 1 "$T/acc.json"
seed $C/stats lm-eval 1 "$T/lm.json"
seed $C/stats lm-eval-map 2 "$T/lm.json" "$T/map.tsv"
seed $C/stats tables 3 "$T/tab/div_from_en.tsv" "$T/tab/entropy.tsv" "$T/tab/freq.tsv" "$T/tab/delta.tsv"
seed $C/stats langs 4 config/languages.tsv
seed $C/stats profile 5 config/models/synthetic-l16-e32.json

# steer: files moetrace-stats writes (HDF5 and JSON, soft and hard) and a tiny checkpoint's
bin/moetrace-stats steer --tables "$T/tab" --dataset math --generic flores --tau 0.01 --band 2-3 --op soft \
    --out "$T/soft" >/dev/null
bin/moetrace-stats steer --tables "$T/tab" --dataset math --generic flores --tau 0.01 --band 2-3 --op hard \
    --out "$T/hard" >/dev/null
# raw (mode 0): the files as written; structured (mode 1): the JSON twins turned into HDF5 by the target
seed $C/steer raw-soft-h5 0 "$T/soft/task.h5"
seed $C/steer raw-hard-h5 0 "$T/hard/random.h5"
seed $C/steer raw-soft-json 0 "$T/soft/task.json"
seed $C/steer raw-off-json 0 "$T/hard/deactivate.json"
seed $C/steer raw-tiny-hard 0 tests/models/tiny/qwen3_moe/steer_hard.json
seed $C/steer h5-soft 1 "$T/soft/task.json"
seed $C/steer h5-hard 1 "$T/hard/random.json"
seed $C/steer h5-off 1 "$T/hard/deactivate.json"
seed $C/steer h5-tiny-soft 1 tests/models/tiny/olmoe/steer_soft.json
ls $C/config $C/corpus $C/stats $C/steer | wc -l
