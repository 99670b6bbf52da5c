#!/usr/bin/env bash
# Installs everything napari-unet needs into ./.venv; safe to run again (it only fills gaps).
# System packages (Xvfb, Qt's xcb libraries, Mesa GL) come from apt when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-keysyms1 libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 libxcb-xfixes0
  libxcb-shape0 libxcb-image0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libglib2.0-0)

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "napari-unet needs Python >= 3.10 with venv: install it (e.g. 'apt-get install -y python3 python3-venv') or set PYTHON=/path/to/python3." >&2
  exit 1
fi

missing=()
# Debian's own python3 has no venv/ensurepip until python3-venv is installed.
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=("python3-venv")
fi
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "napari-unet: missing system packages; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv || { echo "napari-unet: could not create a venv; run: sudo apt-get install -y python3-venv" >&2; exit 1; }
fi
stamp=.venv/.napari-unet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing napari-unet and its Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # The distribution was called "napari-unet" before it became "napari-unet-loop" (that name on PyPI is another
  # plugin); a .venv from then still has it, and two distributions would register the same plugin twice.
  if .venv/bin/python -m pip show -q napari-unet >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y napari-unet
  fi
  .venv/bin/python -m pip install -q -e ".[gui,test,bioimageio]"
  touch "$stamp"
else
  echo "[setup] .venv is up to date"
fi
