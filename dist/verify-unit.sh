#!/bin/sh
# Check tern.service with systemd-analyze verify (unknown or misspelt
# settings, bad values, a command that cannot run), pointing ExecStart at
# the ternd just built, since nothing is installed yet. Documentation=
# names manual pages that are not installed yet either: left out here, the
# installed unit is verified by tests/package/run.sh. Skipped (77) without
# systemd-analyze.
#   verify-unit.sh UNIT TERND
set -eu
command -v systemd-analyze >/dev/null 2>&1 || exit 77
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed -e "s|^ExecStart=[^ ]*/ternd |ExecStart=$2 |" -e '/^Documentation=/d' "$1" >"$dir/tern.service"
out=$(systemd-analyze verify "$dir/tern.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
    echo "$out"
    exit 1
fi
