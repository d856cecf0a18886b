#!/usr/bin/env bash
# Creates a SoftHSM v2 token directory for Imprint.
#
# Usage: create-token.sh DIR LABEL SO_PIN USER_PIN
#
# Writes DIR/softhsm2.conf from softhsm2.conf.in (beside this script),
# creates DIR/tokens, initializes one token labelled LABEL in it with the
# given security-officer and user PINs, and prints the line that selects the
# configuration:
#
#   export SOFTHSM2_CONF=DIR/softhsm2.conf
#
# so `eval "$(create-token.sh …)"` sets it in the calling shell. Everything
# else goes to standard error. Refuses to touch a DIR that already holds a
# configuration or a token directory. PINs are 4 to 255 characters (SoftHSM's
# limits); they are passed to softhsm2-util on its command line.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") DIR LABEL SO_PIN USER_PIN" >&2
    exit 2
}

[ "$#" -eq 4 ] || usage
dir=$1
label=$2
so_pin=$3
user_pin=$4
[ -n "$dir" ] && [ -n "$label" ] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
template=$here/softhsm2.conf.in
[ -r "$template" ] || { echo "error: template $template not found" >&2; exit 1; }

if ! command -v softhsm2-util >/dev/null 2>&1; then
    echo "error: softhsm2-util not found (Debian and Ubuntu: apt-get install softhsm2)" >&2
    exit 1
fi

if [ "$(printf '%s' "$label" | wc -c)" -gt 32 ]; then
    echo "error: a token label has at most 32 bytes" >&2
    exit 2
fi

for pin in "$so_pin" "$user_pin"; do
    if [ "${#pin}" -lt 4 ] || [ "${#pin}" -gt 255 ]; then
        echo "error: PINs have 4 to 255 characters" >&2
        exit 2
    fi
done

case "$dir" in
    *$'\n'*) echo "error: DIR must not contain a newline" >&2; exit 2 ;;
esac

# Token files and the configuration are for this user only.
umask 077

mkdir -p -- "$dir"
dir=$(cd -- "$dir" && pwd)
conf=$dir/softhsm2.conf
tokens=$dir/tokens

if [ -e "$tokens" ] || [ -e "$conf" ]; then
    echo "error: $dir already holds a SoftHSM configuration or token directory; not overwriting" >&2
    exit 1
fi

cleanup() {
    rm -rf -- "$tokens" "$conf"
}
trap cleanup ERR

mkdir -- "$tokens"
escaped=$(printf '%s' "$tokens" | sed 's/[\\&|]/\\&/g')
sed "s|@TOKENDIR@|$escaped|" "$template" >"$conf"

SOFTHSM2_CONF=$conf softhsm2-util --init-token --free \
    --label "$label" --so-pin "$so_pin" --pin "$user_pin" </dev/null >&2

trap - ERR
printf 'export SOFTHSM2_CONF=%q\n' "$conf"
