# moetrace-capture tokenize: command line, a byte-level tokenizer without merges (committed fixture), and the
# reference comparison — Qwen3, gpt-oss and DeepSeek-V3 ids against the @lenml/tokenizers oracle on UDHR texts in
# 32 languages plus edge cases, decode(encode(x)) == x, and chat-template ids (tests/tokenizer/). The oracle's
# output is cached in tests/.cache/tok (keyed by the scripts and packages), so later runs only run the C side.
. "$TESTS/cli/lib.sh"
CAP="$BIN/moetrace-capture"
FIX="$TESTS/tokenizer/fixtures/bytelevel-nomerges"

expect_exit 0 "tokenize --help" "$CAP" tokenize --help
expect_out "tokenize help lists exit status" "Exit status"
expect_exit 0 "capture --help lists tokenize" "$CAP" --help
expect_out "tokenize in the command list" "^  tokenize "
expect_exit 1 "tokenize without --tokenizer" "$CAP" tokenize
expect_err_line "no tokenizer: one line" "no tokenizer given"
expect_exit 1 "tokenize bad option" "$CAP" tokenize --tokenizer "$FIX" --bogus
expect_exit 2 "tokenize missing tokenizer" "$CAP" tokenize --tokenizer "$WORK/nope" "$FIX/tokenizer.json"
expect_err_line "missing tokenizer: one line naming it" "$WORK/nope"
printf '{"model": {"type": "Unigram", "vocab": []}}' >"$WORK/bad.json"
expect_exit 2 "tokenize unsupported model" "$CAP" tokenize --tokenizer "$WORK/bad.json" /dev/null
expect_err_line "unsupported model: one line" "Unigram"

printf 'hi there\n\n<|eos|>x\n' >"$WORK/in.txt"
expect_exit 0 "no-merges tokenizer encodes" "$CAP" tokenize --tokenizer "$FIX" "$WORK/in.txt"
if [ "$(cat "$WORK/out")" = "$(printf '104 105 32 116 104 101 114 101\n\n256 120')" ]; then ok "no-merges: byte ids, empty line, special token"
else not_ok "no-merges: byte ids, empty line, special token" "$(head -c 200 "$WORK/out")"; fi
expect_exit 0 "--add-special appends eos" "$CAP" tokenize --tokenizer "$FIX/tokenizer.json" --add-special "$WORK/in.txt"
expect_out "eos appended" "^104 105 32 116 104 101 114 101 256$"
expect_exit 0 "--split-special" "$CAP" tokenize --tokenizer "$FIX" --split-special "$WORK/in.txt"
expect_out "special string as text" "^60 124 101 111 115 124 62 120$"
expect_exit 0 "--tokens" "$CAP" tokenize --tokenizer "$FIX" --tokens "$WORK/in.txt"
expect_out "token strings in the byte-level alphabet" "^h i Ġ t h e r e$"
printf '104 105 32 256\n240 159\n' >"$WORK/ids.txt"
expect_exit 0 "--decode" "$CAP" tokenize --tokenizer "$FIX" --decode "$WORK/ids.txt"
if [ "$(head -n 1 "$WORK/out")" = "hi <|eos|>" ] && [ "$(sed -n 2p "$WORK/out")" = "$(printf '\357\277\275')" ]; then
    ok "decode: text, and U+FFFD for a cut UTF-8 sequence"
else not_ok "decode: text, and U+FFFD for a cut UTF-8 sequence" "$(head -c 200 "$WORK/out")"; fi
printf '7 999999\n' >"$WORK/badids.txt"
expect_exit 2 "--decode of an unknown id" "$CAP" tokenize --tokenizer "$FIX" --decode "$WORK/badids.txt"
expect_err_line "unknown id: one line" "999999"
printf 'ok\nbad \377\376 bytes\n' >"$WORK/invalid.txt"
expect_exit 2 "invalid UTF-8 is refused" "$CAP" tokenize --tokenizer "$FIX" "$WORK/invalid.txt"
expect_err_line "invalid UTF-8: one line with line and byte" "line 2: invalid UTF-8 at byte 4"
printf '{"messages": [{"role": "user", "content": "a\\nb"}]}\n{"text": "c"}\n' >"$WORK/chat.jsonl"
expect_exit 0 "--chat --render" "$CAP" tokenize --tokenizer "$FIX" --jsonl --chat --render --generation-prompt "$WORK/chat.jsonl"
expect_out "rendered template" '^"<user>a\\nb\\n<assistant>"$'
expect_exit 1 "--render without --chat" "$CAP" tokenize --tokenizer "$FIX" --render "$WORK/chat.jsonl"
expect_exit 1 "messages without --chat" "$CAP" tokenize --tokenizer "$FIX" --jsonl "$WORK/chat.jsonl"

# ---- the reference comparison ----
NM=$(sh "$TESTS/tokenizer/setup.sh")
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "ok tokenizer oracle comparison # SKIP reference packages unavailable"
    exit 0
fi
T="$TESTS/tokenizer"
C="$TESTS/.cache/tok"
mkdir -p "$C"
key=$(cat "$T/texts.mjs" "$T/oracle.mjs" "$TESTS/.cache/npm/.stamp" | cksum | cut -d' ' -f1)
if [ "$(cat "$C/key" 2>/dev/null)" != "$key" ]; then
    rm -f "$C"/*
    node "$T/texts.mjs" "$NM" >"$C/texts.jsonl" && grep -v 'u0000' "$C/texts.jsonl" >"$C/chat.jsonl" || exit 1
    for m in qwen3 gptoss deepseek_v3; do
        node "$T/oracle.mjs" "$NM" "$m" "$C/texts.jsonl" ids >"$C/oracle-$m.jsonl" || exit 1
    done
    for m in qwen3 deepseek_v3; do
        node "$T/oracle.mjs" "$NM" "$m" "$C/chat.jsonl" chat >"$C/oracle-chat-$m.jsonl" || exit 1
    done
    echo "$key" >"$C/key"
fi
for m in qwen3:nfc gptoss:none deepseek_v3:none; do
    name=${m%%:*}
    dir="$NM/@lenml/tokenizer-$name/models"
    if "$CAP" tokenize --jsonl --tokenizer "$dir" "$C/texts.jsonl" >"$WORK/ids-$name.txt" 2>"$WORK/err"; then
        node "$T/compare.mjs" "ids $name (oracle)" "$C/texts.jsonl" "$C/oracle-$name.jsonl" "$WORK/ids-$name.txt"
    else not_ok "ids $name (oracle)" "$(head -c 300 "$WORK/err")"; fi
    "$CAP" tokenize --decode --jsonl --tokenizer "$dir" "$WORK/ids-$name.txt" >"$WORK/dec-$name.jsonl" 2>"$WORK/err" ||
        not_ok "decode $name" "$(head -c 300 "$WORK/err")"
    node "$T/roundtrip.mjs" "decode(encode(x)) == x $name" "$C/texts.jsonl" "$WORK/dec-$name.jsonl" "${m#*:}"
done
for name in qwen3 deepseek_v3; do
    dir="$NM/@lenml/tokenizer-$name/models"
    if "$CAP" tokenize --jsonl --chat --thinking off --tokenizer "$dir" "$C/chat.jsonl" >"$WORK/chat-$name.txt" 2>"$WORK/err"; then
        node "$T/compare.mjs" "chat template $name (oracle)" "$C/chat.jsonl" "$C/oracle-chat-$name.jsonl" "$WORK/chat-$name.txt"
    else not_ok "chat template $name (oracle)" "$(head -c 300 "$WORK/err")"; fi
done
