"""The package's layers, and which may import which: imports point down, and never in a circle.

    cli, worker, client   front ends: the `supervise` command, the library workers import, the Python API
    control, runtime      the control client; the daemon and everything it does to the OS
    cluster               etcd: the client of its gateway, this node's agent (lease, watch, leader)
    core                  the supervisor, sans-IO: events in, actions out
    config, wire          the config as data; what crosses a socket, and where the sockets are
    frozen                the frozen dataclass every layer's values are made of (supervise.frozen)

A layer may import its own modules and those of the layers its rule names;
function-level (lazy) imports count too, since they run all the same. The
pure modules may not import anything that touches processes, sockets,
threads or the clock, so they can be driven by a fake clock in tests.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "supervise"

MAY_IMPORT = {
    "frozen": set(),
    "config": {"frozen"},
    "wire": {"frozen"},
    "dashboard": set(),  # the web page's static files (no code); runtime/dashboard.py serves them
    "core": {"config", "wire", "frozen"},
    "control": {"config", "wire", "frozen"},
    "cluster": {"core", "config", "wire", "frozen"},
    "runtime": {"cluster", "core", "config", "wire", "frozen"},
    "worker": {"wire"},
    "client": {"control"},  # supervise.client: the public face of control.api
    "cli": {"control", "runtime", "cluster", "core", "config", "wire", "frozen"},
    "__main__": {"cli"},
}
"""Layer -> the other layers it may import."""

PURE = ("supervise.config", "supervise.core", "supervise.wire.protocol", "supervise.frozen")
OS_SIDE = {"asyncio", "zmq", "psutil", "structlog", "subprocess", "socket", "threading", "time", "watchfiles",
           "supervise.runtime", "fcntl", "select", "ctypes"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules `path` imports, as dotted names (`from a import b` counts as `a` and `a.b`)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "supervise" and len(parts) > 1 else None


MODULES = modules()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m)))
def test_imports_point_down(module):
    own = layer(module)
    assert own in MAY_IMPORT, f"{module}: a layer the rules do not name; add it to MAY_IMPORT"
    allowed = MAY_IMPORT[own] | {own}
    wrong = sorted(i for i in imports(MODULES[module]) if layer(i) and layer(i) not in allowed)
    assert not wrong, f"{module} ({own}) imports {wrong}; {own} may import only {sorted(allowed)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(PURE)))
def test_pure_modules_import_nothing_of_the_os_side(module):
    found = imports(MODULES[module])
    bad = sorted(i for i in found if i in OS_SIDE or i.startswith("supervise.runtime."))
    assert not bad, f"{module} is pure but imports {bad}"


def test_no_import_cycles():
    """Module-level imports form no cycle (a lazy import inside a function is a deliberate deferral)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {m for m in imports(path, top_level_only=True) if m in MODULES and m != name}
    # A package's __init__ re-exporting its modules is not a cycle with them.
    for name in graph:
        graph[name] = {m for m in graph[name] if not (MODULES[m].name == "__init__.py" and name.startswith(m + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_layer_rules_find_an_upward_import(tmp_path):
    """The rules can fail: a core module importing the runtime is caught."""
    bad = tmp_path / "x.py"
    bad.write_text("from supervise.runtime import process\n")
    assert "supervise.runtime" in imports(bad) and layer("supervise.runtime") not in MAY_IMPORT["core"]


def test_the_control_cli_loads_neither_pyzmq_nor_the_daemon():
    code = ("import sys, supervise.cli; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('zmq', 'asyncio', 'psutil', 'structlog') or m.startswith(('supervise.runtime', 'supervise.core')) "
            "or m == 'supervise.config.loader']; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
