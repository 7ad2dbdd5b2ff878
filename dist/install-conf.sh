#!/bin/sh
# meson install step for the example configuration: install SRC as DEST
# unless DEST is already there, so that `meson install` never replaces a
# configuration the administrator made (with DESTDIR, for packages, the
# staging tree is empty and the file always goes in). Paths are absolute
# (CONTRACT.md fixes /etc/tern/tern.conf whatever the prefix).
#   install-conf.sh SRC DEST
set -eu
src=$1
dest=${DESTDIR:-}$2
if [ -e "$dest" ] || [ -L "$dest" ]; then
    echo "Keeping existing $dest (the new example is $src)"
    exit 0
fi
install -d -m 0755 "$(dirname "$dest")"
install -m 0644 "$src" "$dest"
echo "Installing $src to $dest"
