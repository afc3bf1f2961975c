"""Imports point downward: the pure core touches no OS layer, the CLI never loads the daemon."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "supervise"
PURE = ["config", "config_units", "config_lines", "policy", "instance", "core", "events", "timers", "history",
        "protocol"]
OS_SIDE = {"asyncio", "zmq", "psutil", "structlog", "subprocess", "socket", "threading", "time", "watchfiles",
           "supervise.daemon", "supervise.process", "supervise.cgroups", "supervise.heartbeats",
           "supervise.sampler", "supervise.listeners", "supervise.log"}


def top_level_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in tree.body:  # module level only: imports inside functions are deliberate and lazy
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_nothing_of_the_os_side(module):
    assert not top_level_imports(module) & OS_SIDE


def test_the_control_cli_loads_neither_pyzmq_nor_the_daemon():
    code = ("import sys, supervise.cli; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('zmq', 'asyncio', 'psutil', 'structlog') or m in ('supervise.daemon', 'supervise.config')]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
