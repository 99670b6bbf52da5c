#!/usr/bin/env bash
# Quick start, command 1: install everything, then run the main job. With a display: napari with
# the plugin's widgets docked and a sample loaded. Without one: the headless demo of the whole
# predict -> correct -> fine-tune -> predict loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/napari-unet gui "$@"
else
  echo "[quickstart] no display found: running the headless demo (napari-unet demo)"
  exec .venv/bin/napari-unet demo "$@"
fi
