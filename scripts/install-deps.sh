#!/bin/sh
# Install the Debian packages tern needs. Idempotent and quiet when
# everything is present; needs root (or sudo) only when something is missing.
#   install-deps.sh          build and run
#   install-deps.sh --test   also everything the test suite uses
set -eu
pkgs="meson ninja-build pkg-config gcc libevent-dev libssl-dev libc-ares-dev libcrypt-dev openssl
libcmocka-dev python3 libsystemd-dev systemd"
if [ "${1:-}" = "--test" ]; then
    # Real peers and verifiers for the end-to-end tests, libFuzzer (clang),
    # and a private Postfix instance used as a SASL client of tern.
    pkgs="$pkgs clang libclang-rt-14-dev python3-pytest python3-aiosmtpd
swaks dnsmasq-base python3-dkim python3-yaml postfix libsasl2-modules"
    # The manual page checks and the Debian package test (make package-test).
    pkgs="$pkgs man-db groff-base git dpkg-dev debhelper lintian"
fi
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
# Postfix is only a test peer: no system mail configuration, no system instance.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
