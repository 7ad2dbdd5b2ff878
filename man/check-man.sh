#!/bin/sh
# Format each manual page as man(1) does and fail on any warning of groff
# (bad macros, unknown escapes, lines that cannot be set) or of man-db, the
# check lintian's groff-message runs.
# Skipped (77) where man-db or groff is missing (a minimal build chroot).
#   check-man.sh PAGE...
set -eu
command -v man >/dev/null 2>&1 && command -v groff >/dev/null 2>&1 || exit 77
status=0
for page in "$@"; do
    out=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 \
        man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null) || status=1
    out2=$(groff -ww -z -man -Tutf8 "$page" 2>&1) || status=1
    if [ -n "$out$out2" ]; then
        printf '%s:\n%s\n%s\n' "$page" "$out" "$out2"
        status=1
    fi
done
exit $status
