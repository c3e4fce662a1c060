#!/usr/bin/env bash
# Install everything the harness, the firmware builds and the tests need on Debian/Ubuntu.
# Safe to run again; used by .ci/run, the README's Quick start and the GitHub workflow.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

APT_PACKAGES=(
  build-essential cmake pkg-config libcjson-dev   # linux target: host build of the C core
  mtools dosfstools                                # read back / fsck the FAT image
  qemu-system-misc gcc-xtensa-lx106 picolibc-xtensa-lx106-elf   # xtensa-sim target
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ci/setup.sh: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0" "setuptools<81"
$PY -m pip install -q --disable-pip-version-check -e "$here[dev]"
