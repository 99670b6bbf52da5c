#!/usr/bin/env bash
# Quick start, command 2: install everything (scripts/setup.sh), check the lint rules and run the whole test suite headless.
# napari's GUI tests run under Xvfb, started by pytest-xvfb. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# The lint rules in pyproject.toml ([tool.ruff]) first: a finding fails the run like a failing test.
.venv/bin/ruff check --no-cache .
# pytest exits 5 when it collects no test: that is a failure here, as it should be.
exec .venv/bin/python -m pytest "$@"
