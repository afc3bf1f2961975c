"""The recipes of docs/recipes.md, run as written: the real servers under supervise, under keep-alive load,
through a rolling reload, counting every failed request.

Each test loads the recipe's own config from examples/recipes/ (only the port, the directory and how the
server is found change), so the docs show what is tested. gunicorn and uvicorn come with the test extra;
node is the system's (.ci/run installs Debian's nodejs; elsewhere the Node test is skipped without it).
"""

from __future__ import annotations

import contextlib
import shlex
import sqlite3
import sys
import threading
from pathlib import Path

import psutil
import pytest
from helpers import external_tool, free_port, wait_until
from keepalive_load import KeepAliveLoad

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
CLIENTS = 8  # connections, each sending its next request as soon as it has the answer (as wrk does)
RATE = 2000  # requests/s in all at most: leaves the servers (2 cores on CI) time to boot
ADDRESS = "127.0.0.1:8000"


def recipe(name: str, port: int | None = None, replace: dict[str, str] | None = None) -> str:
    """examples/recipes/<name>.toml for a test: its cwd made absolute, its address a free port, `replace` applied."""
    text = (RECIPES / f"{name}.toml").read_text()
    edits = {'cwd = "."': f'cwd = "{RECIPES}"', **({ADDRESS: f"127.0.0.1:{port}"} if port else {}), **(replace or {})}
    for old, new in edits.items():
        assert old in text, f"{name}.toml no longer has {old!r}"
        text = text.replace(old, new)
    return text


def python_module(tool: str) -> str:
    """`tool` as this interpreter's module: the one pip installed with the test extra, not a shim on PATH."""
    return f"{shlex.quote(sys.executable)} -m {tool}"


def tree_pids(instances: dict[str, dict]) -> set[int]:
    """The pids of these instances and of all their descendants (gunicorn's workers answer, not its master)."""
    pids = set()
    for inst in instances.values():
        pids.add(inst["pid"])
        try:
            pids.update(child.pid for child in psutil.Process(inst["pid"]).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return pids


def reload_under_load(sup, port: int, app: str, instances: int = 4,
                      keepalive: bool = True) -> tuple[KeepAliveLoad, int]:
    """`supervise reload APP` while KeepAliveLoad runs; then load until the new generation has served.

    Returns the load (stopped) and the exit code of `reload`. Checks that every old instance is gone and that
    the requests after the reload were answered by the new instances' processes only.
    """
    old = sup.wait_all_running(instances, app)
    with KeepAliveLoad(port, clients=CLIENTS, rate=RATE, max_seconds=60) as load:
        load.wait_for(200)
        reload = sup.cli("reload", app, timeout=60)
        if reload.returncode == 0:
            new = sup.wait_all_running(instances, app)
            assert not {i["pid"] for i in old.values()} & {i["pid"] for i in new.values()}
            served_before = dict(load.result.by_pid)
            load.wait_for(200)
            new_pids = tree_pids(new)
            late = {pid for pid, n in load.result.by_pid.items() if n > served_before.get(pid, 0)}
            assert late and late <= new_pids, f"answered after the reload by {late - new_pids}, not the new instances"
        else:
            load.wait_for(200)
    if keepalive:
        assert load.connections < load.result.ok / 5, "the connections were not kept alive"
    return load, reload.returncode


def report(load: KeepAliveLoad) -> str:
    return (f"{load.result.summary()}; {load.connections} connections, {load.stale} closed by the server while "
            f"idle; failures by reason: {load.reasons}")


# -- gunicorn ----------------------------------------------------------------------------------------------


# Not "sync --threads 4": given threads, gunicorn runs gthread whatever the worker class says.
@pytest.mark.parametrize("worker", ["--worker-class sync", "--worker-class gthread --threads 4"],
                         ids=["sync", "gthread"])
def test_gunicorn_rolling_reload_drops_nothing(supervisor, worker):
    port = free_port()
    sup = supervisor(recipe("gunicorn", port, {
        '"gunicorn ': f'"{python_module("gunicorn")} ',
        "--worker-class gthread --threads 4": worker,
    }))
    load, code = reload_under_load(sup, port, "web", keepalive="gthread" in worker)  # sync answers Connection: close
    assert code == 0
    print(report(load))
    assert load.result.failed == 0, report(load)


def boot_failure_under_load(sup, config: str, port: int) -> None:
    """Reload onto RECIPE_BOOT_FAIL=1 under load: `reload` exits 1, the old instances serve on, nothing fails.

    With it set, the app's import takes 2 s and then raises: a database that is down at boot.
    """
    old = sup.wait_all_running(4, "web")
    sup.config.write_text(config.replace("instances = 4", 'instances = 4\nenv = { RECIPE_BOOT_FAIL = "1" }'))
    with KeepAliveLoad(port, clients=CLIENTS, rate=RATE, max_seconds=60) as load:
        load.wait_for(200)
        reload = sup.cli("reload", timeout=60)
        load.wait_for(200)
    print(reload.stdout + reload.stderr, report(load))
    assert reload.returncode == 1, reload.stdout + reload.stderr
    assert "did not become ready" in reload.stderr, reload.stderr
    assert load.result.failed == 0, report(load)
    running = sup.wait_all_running(4, "web")
    assert {i["pid"] for i in running.values()} == {i["pid"] for i in old.values()}, "the old instances were replaced"
    assert set(load.result.by_pid) <= tree_pids(old)


def test_gunicorn_app_that_dies_during_boot_fails_the_reload_and_the_old_instances_serve_on(supervisor):
    port = free_port()
    config = recipe("gunicorn", port, {'"gunicorn ': f'"{python_module("gunicorn")} '})
    boot_failure_under_load(supervisor(config), config, port)


def test_gunicorn_preload_notify_is_ready_only_once_the_app_is_loaded(supervisor):
    """No supervise code in the app: readiness is gunicorn's own READY=1, which --preload sends after the import."""
    port = free_port()
    config = recipe("gunicorn-notify", port, {'"gunicorn ': f'"{python_module("gunicorn")} '})
    boot_failure_under_load(supervisor(config), config, port)


# -- uvicorn -----------------------------------------------------------------------------------------------

# uvicorn closes the kept-alive connections that are idle when it stops, under any request a client has just sent
# on one: at most one request per connection per stopping instance (docs/recipes.md, "Why some servers drop").
UVICORN_DROP_BOUND = CLIENTS * 4


def test_uvicorn_rolling_reload(supervisor):
    port = free_port()
    sup = supervisor(recipe("uvicorn", port, {'"uvicorn ': f'"{python_module("uvicorn")} '}))
    load, code = reload_under_load(sup, port, "api")
    assert code == 0
    print(f"uvicorn, rolling reload of 4: {report(load)}")
    assert load.result.failed <= UVICORN_DROP_BOUND, report(load)
    # Only requests sent on a connection uvicorn closed as idle: EOF, or a reset (at recv() or at send()).
    assert set(load.reasons) <= {"ServerClosed: closed before the response",
                                 "ConnectionResetError: [Errno 104] Connection reset by peer",
                                 "BrokenPipeError: [Errno 32] Broken pipe"}, report(load)


# -- Node.js -----------------------------------------------------------------------------------------------


def test_node_rolling_reload_drops_nothing(supervisor):
    node = external_tool("node", "nodejs", why="the Node.js recipe runs a real Node HTTP server")
    port = free_port()
    sup = supervisor(recipe("node", port, {'"node ': f'"{node} '}))
    load, code = reload_under_load(sup, port, "node")
    assert code == 0
    print(report(load))
    assert load.result.failed == 0, report(load)


# -- a queue consumer --------------------------------------------------------------------------------------


def test_queue_consumer_rolling_reload_loses_no_message(supervisor, tmp_path):
    queue = tmp_path / "jobs.sqlite3"
    sup = supervisor(recipe("consumer", replace={
        '"python3 ': f'"{shlex.quote(sys.executable)} ',
        "--queue jobs.sqlite3": f"--queue {queue}",
    }))
    old = sup.wait_all_running(4, "consumer")
    db = sqlite3.connect(queue, timeout=30, isolation_level=None)
    produced = 0
    stop = threading.Event()

    def produce() -> None:  # 10 jobs every 20 ms (500/s) while the reload runs: the consumers keep up
        nonlocal produced
        with contextlib.closing(sqlite3.connect(queue, timeout=30, isolation_level=None)) as mine:  # its own
            while not stop.wait(0.02) and produced < 20_000:
                mine.execute("BEGIN IMMEDIATE")
                mine.executemany("INSERT INTO jobs (payload) VALUES (?)", [(f"job {produced + i}",) for i in range(10)])
                mine.execute("COMMIT")
                produced += 10

    def done() -> int:
        return db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchall()[0][0]

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: done() >= 100, timeout=10, message="the consumers to get going")
        reload = sup.cli("reload", "consumer", timeout=60)
    finally:
        stop.set()
        producer.join()
    assert reload.returncode == 0, reload.stdout + reload.stderr
    wait_until(lambda: done() == produced, timeout=30, message=f"all {produced} jobs done")
    new = sup.wait_all_running(4, "consumer")
    assert not {i["pid"] for i in old.values()} & {i["pid"] for i in new.values()}
    rows = db.execute("SELECT state, attempts, count(*) FROM jobs GROUP BY state, attempts").fetchall()
    db.close()
    assert rows == [("done", 1, produced)], rows  # each taken once and acknowledged: none lost, none redone
    print(f"queue consumer, rolling reload of 4: {produced} jobs, each done once")


# -- the docs show what is tested --------------------------------------------------------------------------


def test_docs_show_the_recipes_as_tested():
    text = DOCS.read_text()
    for name in ("gunicorn.toml", "gunicorn_conf.py", "gunicorn-notify.toml", "uvicorn.toml", "node.toml",
                 "consumer.toml"):
        assert (RECIPES / name).read_text().strip() in text, f"docs/recipes.md does not show examples/recipes/{name}"
