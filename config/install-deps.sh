#!/bin/sh
# Install the Debian packages listed in config/debian-packages.txt that are missing: `apt-get update` once, then
# one `apt-get install`. Used by `make deps` (and so by every target that builds), so a fresh Debian 12 machine
# needs nothing done by hand.
set -eu
list=${1:-config/debian-packages.txt}
missing=""
for p in $(grep -v '^[[:space:]]*#' "$list" | tr -s ' \t' '\n\n' | grep -v '^$'); do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
    *"install ok installed"*) ;;
    *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0
echo "moetrace: installing missing Debian packages:$missing" >&2
if [ "$(id -u)" != 0 ]; then
    echo "moetrace: not root; run as root or install them:  apt-get install$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
