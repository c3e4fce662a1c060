#!/usr/bin/env bash
# Install everything the harness, the firmware builds and the tests need on Debian/Ubuntu.
# Safe to run again; used by .ci/run, the README's Quick start and the GitHub workflow.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

APT_PACKAGES=(
  python3 python3-pip python3-venv                 # the harness
  build-essential cmake pkg-config libcjson-dev   # linux target: host build of the C core
  mtools dosfstools                                # read back / fsck the FAT image
  qemu-system-misc gcc-xtensa-lx106 picolibc-xtensa-lx106-elf   # xtensa-sim target ...
  gcc-12-source dpkg-dev                          # ... its soft-float routines; cJSON's source
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

# xtensa-sim compiles cJSON from Debian's source package: that needs a deb-src entry.
if ! grep -rqs "^Types:.*deb-src" /etc/apt/sources.list.d/ && ! grep -qs "^deb-src" /etc/apt/sources.list; then
  src_list=/etc/apt/sources.list.d/tinyllm-deb-src.sources
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    # same mirrors and suites as the binary packages, source type
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | $SUDO tee "$src_list" >/dev/null
  else
    grep -h "^deb " /etc/apt/sources.list 2>/dev/null | sed 's/^deb /deb-src /' | $SUDO tee "${src_list%.sources}.list" >/dev/null
  fi
  $SUDO apt-get update -qq
fi
bash "$here/ci/fetch-cjson-source.sh" || echo "ci/setup.sh: could not fetch cJSON's source; the xtensa-sim tests will be skipped"

# A distribution's own python3 (Debian 12, Ubuntu 24.04) refuses pip installs (PEP 668): then the
# harness lives in .venv, and ci/python.sh tells the other scripts which interpreter to use.
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && $PY -c 'import os, sys, sysconfig; sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
  [ -x "$here/.venv/bin/python" ] || $PY -m venv "$here/.venv"
fi
PY=$(bash "$here/ci/python.sh")
# torch first and pinned to the release this project is tested with. On PyPI a Linux torch
# wheel brings CUDA libraries (GBs); TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# takes the CPU build instead where that index is reachable.
torch_index=()
[ -n "${TORCH_INDEX_URL:-}" ] && torch_index=(--index-url "$TORCH_INDEX_URL")
$PY -m pip install -q --disable-pip-version-check "${torch_index[@]}" "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check "setuptools<81"
$PY -m pip install -q --disable-pip-version-check -e "$here[dev]"
