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
  clang                                            # ci/fuzz.sh: libFuzzer targets of the core
  shellcheck                                       # actionlint checks the workflows' shell steps with it
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

# libFuzzer's runtime comes with clang's version-numbered runtime package (Debian 12:
# libclang-rt-14-dev; Ubuntu 24.04: libclang-rt-18-dev); ci/fuzz.sh says so if it is missing.
clang_major=$(clang -dumpversion 2>/dev/null | cut -d. -f1 || true)
if [ -n "$clang_major" ] && ! dpkg-query -W -f='${Status}' "libclang-rt-$clang_major-dev" 2>/dev/null | grep -q "install ok installed"; then
  echo "ci/setup.sh: apt-get install libclang-rt-$clang_major-dev"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "libclang-rt-$clang_major-dev" >/dev/null ||
    echo "ci/setup.sh: libclang-rt-$clang_major-dev not installable here: ci/fuzz.sh will be skipped"
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

# The harness always lives in the project's own .venv: never in a user's global interpreter (a
# second clone would re-point an editable install there), and it works where python3 is
# externally managed (PEP 668: Debian 12, Ubuntu 24.04). ci/python.sh prints its interpreter.
# PYTHON=/path/to/python uses that interpreter as it is instead (e.g. inside a container).
if [ -z "${PYTHON:-}" ]; then
  [ -x "$here/.venv/bin/python" ] || python3 -m venv "$here/.venv"
fi
PY=$(bash "$here/ci/python.sh")
# torch first and pinned to the release this project is tested with. On PyPI a Linux torch
# wheel brings CUDA libraries (GBs); TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# takes the CPU build instead where that index is reachable.
torch_index=()
[ -n "${TORCH_INDEX_URL:-}" ] && torch_index=(--index-url "$TORCH_INDEX_URL")
$PY -m pip install -q --no-compile --disable-pip-version-check "${torch_index[@]}" "torch==2.13.0"
$PY -m pip install -q --no-compile --disable-pip-version-check "setuptools<81"
# [esp32]: pytest-embedded's idf + qemu + serial-esp (board) services and esptool >= 5 (pytest-embedded 2.x merges
# the flash image with `esptool merge-bin`; ESP-IDF's own Python keeps esptool 4.x for idf.py).
$PY -m pip install -q --no-compile --disable-pip-version-check -e "$here[dev,esp32]"

# The esp32 target needs ESP-IDF, its xtensa-esp32 toolchain and Espressif's QEMU. A user's own
# ESP-IDF (IDF_PATH exported, as in the espressif/idf container) is used as it is. Otherwise, where
# a prebuilt bundle of the three sits beside the repository (ESPRESSIF_BUNDLE, default
# ../shared/espressif; this project's own machines), it is installed into ESPRESSIF_HOME and
# the harness finds it there (harness/targets/__init__.py). Neither: the esp32 cases are skipped with the reason.
bundle=${ESPRESSIF_BUNDLE:-$here/../shared/espressif}
if [ -z "${IDF_PATH:-}" ] && [ -f "$bundle/install.sh" ]; then
  dest=${ESPRESSIF_HOME:-$HOME/.cache/tinyllm-espressif}
  echo "ci/setup.sh: ESP-IDF + Espressif QEMU from $bundle into $dest"
  bash "$bundle/install.sh" "$dest" | tail -n 1
fi
