#!/usr/bin/env bash
# cJSON sources for the bare-metal xtensa-sim build, from Debian's own source package (the
# same cJSON 1.7.15, with Debian's patches, that libcjson-dev installs for the linux target).
# Needs a deb-src entry (ci/setup.sh adds one) and dpkg-dev. Output: build/third_party/cjson.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=build/third_party/cjson
[ -f "$dest/cJSON.c" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get source --download-only -qq cjson >/dev/null 2>&1 && dpkg-source -x -q --no-check ./cjson_*.dsc src >/dev/null)
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$work/src" "$dest"
echo "cJSON source: $dest ($(sed -n 's/^Version: //p' "$work"/cjson_*.dsc))"
