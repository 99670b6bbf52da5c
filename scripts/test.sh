#!/usr/bin/env bash
# Quick start, command 2: install everything (scripts/setup.sh) and run the whole test suite headless.
# napari's GUI tests run under Xvfb, started by pytest-xvfb. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# pytest exits 5 when it collects no test: that is a failure here, as it should be.
exec .venv/bin/python -m pytest "$@"
