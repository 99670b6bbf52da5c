"""Collecting the core tests imports neither TensorFlow nor Keras: a quick `pytest tests/core -k …` or a
collection error costs seconds, not TensorFlow's start-up, and nothing here needs napari's process to have it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CORE_TESTS = Path(__file__).resolve().parent


def test_collecting_the_core_tests_imports_neither_tensorflow_nor_keras():
    script = ("import json, sys, pytest; "
              f"code = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', {str(CORE_TESTS)!r}]); "
              "print('MODULES ' + json.dumps({'code': int(code), 'tensorflow': 'tensorflow' in sys.modules, "
              "'keras': 'keras' in sys.modules}))")
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            cwd=CORE_TESTS.parents[1]).stdout
    found = json.loads(next(line for line in output.splitlines() if line.startswith("MODULES "))[8:])
    assert found == {"code": 0, "tensorflow": False, "keras": False}, output[-2000:]
