#!/bin/sh
# Build the Debian packages (tern, tern-mta) with dpkg-buildpackage -b -us
# -uc from a clean export of this checkout: its tracked files and new ones
# that are not ignored, so no build directory gets in. OUTDIR receives the
# exported tree (OUTDIR/tern) and, beside it, the .deb, .buildinfo and
# .changes files.
#   build-deb.sh OUTDIR
set -eu
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
out=$(realpath -m "$1")
rm -rf "$out"
mkdir -p "$out/tern"
# A file deleted but not yet committed is listed and missing: leave it out.
(cd "$top" && git ls-files -z -co --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$out/tern"
cd "$out/tern"
DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-parallel=$(nproc)} dpkg-buildpackage -b -us -uc
