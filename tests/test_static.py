"""Types and lint, as part of the suite: a regression in either fails CI like any other test.

mypy checks the whole package (strict on the pure layers: see pyproject.toml);
ruff checks the package, the tests, the benchmarks and the examples.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_finds_no_errors():
    result = run("mypy", "--no-error-summary")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing():
    result = run("ruff", "check", "--no-cache", "supervise", "tests", "benchmarks", "examples")
    assert result.returncode == 0, result.stdout + result.stderr
