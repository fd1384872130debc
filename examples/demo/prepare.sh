#!/bin/sh
# Copies the host's static busybox into the build contexts of the demo images.
#
# Nothing can be pulled from a public registry here, so both images (the service in app/ and the
# test suite, built from this directory with tests/Dockerfile) are built FROM scratch around one
# static busybox binary. The binary is not kept in git (app/busybox is in .gitignore): run this once
# before `cdlib build`. Running it again changes nothing unless the host's busybox changed.
#
# usage: examples/demo/prepare.sh [BUSYBOX]     (default: /bin/busybox, from busybox-static)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=${1:-/bin/busybox}
dest="$here/app/busybox"

if [ ! -x "$src" ]; then
    echo "prepare: $src not found or not executable; install busybox-static or pass the path" >&2
    exit 2
fi
# a dynamically linked busybox would not run in a scratch image (no libc there)
if ! "$src" sh -c 'exit 0' >/dev/null 2>&1; then
    echo "prepare: $src does not run" >&2
    exit 2
fi
if command -v file >/dev/null 2>&1 && file -L "$src" | grep -q 'dynamically linked'; then
    echo "prepare: $src is dynamically linked; a FROM scratch image needs a static busybox (busybox-static)" >&2
    exit 2
fi

if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    echo "prepare: $dest is up to date"
else
    cp "$src" "$dest.tmp"
    chmod 0755 "$dest.tmp"
    mv "$dest.tmp" "$dest"
    echo "prepare: copied $src to $dest"
fi
