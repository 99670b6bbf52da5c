#!/usr/bin/env bash
# Quick start, command 2: install everything (scripts/setup.sh), check the lint rules, build the docs and run the whole test suite headless.
# napari's GUI tests run under Xvfb, started by pytest-xvfb. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# The lint rules in pyproject.toml ([tool.ruff]) first: a finding fails the run like a failing test.
.venv/bin/ruff check --no-cache .
# Then the documentation (mkdocs.yml, docs/): --strict fails on a link to a missing page or heading. Not --quiet:
# it hides the warnings that --strict counts, so a broken link would pass. The log is shown only on failure.
docs_site=$(mktemp -d)
if ! NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$docs_site" >"$docs_site.log" 2>&1; then
  cat "$docs_site.log" >&2
  echo "napari-unet: the documentation does not build (mkdocs build --strict, above)" >&2
  rm -rf "$docs_site" "$docs_site.log"
  exit 1
fi
rm -rf "$docs_site" "$docs_site.log"
# pytest exits 5 when it collects no test: that is a failure here, as it should be.
exec .venv/bin/python -m pytest "$@"
