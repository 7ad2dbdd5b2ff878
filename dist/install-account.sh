#!/bin/sh
# Make the `tern` account from its sysusers.d entry and, when given, the
# spool from the tmpfiles.d entry: a meson install step for a real install
# (never with DESTDIR: packages do this in their postinst) and, for the
# account only, `make run`. Needs root; otherwise it says what to run.
#   install-account.sh SYSUSERS_FILE [TMPFILES_FILE]
set -eu
sysusers=$1
tmpfiles=${2:-}
if [ "$(id -u)" -ne 0 ]; then
    echo "Not root: run 'systemd-sysusers $sysusers'${tmpfiles:+ and 'systemd-tmpfiles --create $tmpfiles'} as root"
    exit 0
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$sysusers"
else
    getent passwd tern >/dev/null ||
        useradd --system --user-group --home-dir /var/spool/tern --no-create-home \
            --shell /usr/sbin/nologin --comment "tern SMTP relay" tern
    getent group tern-drop >/dev/null || groupadd --system tern-drop
fi
[ -n "$tmpfiles" ] || exit 0
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create "$tmpfiles"
else
    install -d -m 0700 -o tern -g tern /var/spool/tern
    install -d -m 1730 -o tern -g tern-drop /var/spool/tern-maildrop
fi
