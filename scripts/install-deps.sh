#!/bin/sh
# Install the Debian packages tern needs. Idempotent and quiet when
# everything is present; needs root (or sudo) only when something is missing.
#   install-deps.sh          build and run
#   install-deps.sh --test   also everything the test suite uses
# Packages are installed without their Recommends (a small, predictable
# set), so every package a test relies on is named here, down to the Perl
# modules behind swaks's TLS and AUTH; tests/system/conftest.py checks the
# same list at the start of the suite and names what is missing.
set -eu
# Compiler, build system and libraries (libseccomp for the process
# filters, libsystemd for readiness, libcurl4-openssl-dev for the event
# webhook's HTTP client, the MTA-STS fetch and TLS-RPT), zlib1g-dev for
# TLS-RPT's gzipped reports, libpsl-dev and publicsuffix for DMARC's
# organizational domains; openssl for the tools and tests;
# systemd's systemd-analyze checks tern.service, whose ExecReload runs
# procps's /bin/kill.
pkgs="meson ninja-build pkg-config gcc libc6-dev libevent-dev libssl-dev libc-ares-dev
libcrypt-dev openssl libcmocka-dev python3 libseccomp-dev libsystemd-dev systemd procps
libcurl4-openssl-dev zlib1g-dev libpsl-dev publicsuffix"
if [ "${1:-}" = "--test" ]; then
    # libFuzzer (clang and its runtime); pytest and the Python peers and
    # verifiers (aiosmtpd sinks, dkimpy with PyNaCl for ed25519, PyYAML for
    # the RFC 7208 suite); swaks with Net::SSLeay and IO::Socket::SSL for
    # STARTTLS and Authen::SASL for AUTH; dnsmasq for MX and DNS tests; a
    # private Postfix instance as a SASL client of tern, with the Cyrus
    # PLAIN/LOGIN plugins.
    pkgs="$pkgs clang libclang-rt-14-dev python3-pytest python3-aiosmtpd python3-dkim
python3-nacl python3-yaml swaks perl libnet-ssleay-perl libio-socket-ssl-perl
libauthen-sasl-perl dnsmasq-base postfix libsasl2-modules"
    # The manual page checks and the Debian package test (make package-test).
    pkgs="$pkgs man-db groff-base git dpkg-dev debhelper lintian"
    # A real browser for the dashboard test (test_dashboard.py): headless
    # Chromium runs the page's script against a live ternd.
    pkgs="$pkgs chromium"
    # The DANE tests' DNSSEC world (tests/system/dnssec.py): ldnsutils signs
    # a test zone, nsd serves it and unbound validates it, all in the
    # foreground on the tests' own loopback ports. Installing them may try to
    # start their system services on port 53 (policy-rc.d blocks that in a
    # chroot); the tests never use those.
    pkgs="$pkgs nsd unbound ldnsutils"
    # Milter filters (test_milter.py): python3-milter (libmilter) for a
    # filter of the test's own, and real rspamd in milter mode.
    pkgs="$pkgs python3-milter rspamd"
    # As root, the two end-to-end runs go side by side, each in a network
    # namespace of its own (tests/system/run-both.sh): unshare and ip.
    pkgs="$pkgs util-linux iproute2"
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
