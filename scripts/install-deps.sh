#!/bin/sh
# Install the Debian packages tern needs to build, run and test. Idempotent
# and quiet when everything is present. Needs root (or sudo) only when
# something is missing.
set -eu
pkgs="meson ninja-build pkg-config gcc clang libclang-rt-14-dev libevent-dev libssl-dev
libc-ares-dev libcrypt-dev libcmocka-dev python3 python3-pytest python3-aiosmtpd swaks
dnsmasq-base python3-dkim python3-yaml openssl"
missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
