"""The read-only web dashboard on the metrics endpoint: a real daemon, read by a real headless Chromium.

The browser test needs Debian's `chromium` and `chromium-driver` and the
`selenium` package (`.ci/run` installs them): missing, it fails, it does not
skip. Run as a script, this module writes the README's screenshot:

    python3 tests/integration/test_dashboard.py docs/dashboard.png
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import Supervisor, external_tool, free_port, wait_until  # noqa: E402

from supervise.runtime import dashboard  # noqa: E402
from supervise.runtime.http import HttpServer  # noqa: E402

RESTART_SHOWN_WITHIN = 1.0
"""Seconds from a worker's SIGKILL to the page showing its new process: the issue's figure."""

BURST_LINES = 3000

CONFIG = """
[supervise]
metrics = "127.0.0.1:{metrics_port}"

[apps.web]
command = "{python} {workers}/sleeper.py"
instances = 3

[apps.jobs]
command = "{python} {workers}/stamped.py 0.2"
instances = 2

[apps.burst]
command = ["{python}", "-c", "import time\\nfor i in range(BURST): print('burst line', i)\\ntime.sleep(3600)"]
instances = 1
""".replace("BURST", str(BURST_LINES))


# -- a daemon with its HTTP endpoint -------------------------------------------------------------

def get(url: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    parts = url.split("/", 3)
    host, port = parts[2].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, "/" + (parts[3] if len(parts) > 3 else ""))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def answering(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


@pytest.fixture
def daemon(supervisor: Callable[..., Supervisor]) -> tuple[Supervisor, str]:
    port = free_port()
    sup = supervisor(CONFIG.replace("{metrics_port}", str(port)))
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answering(base + "/api/status"), timeout=15, message="the dashboard to answer")
    sup.wait_all_running(6)
    return sup, base


# -- a headless Chromium -------------------------------------------------------------------------

def start_browser(profile: Path, width: int = 1400, height: int = 900) -> Any:
    """Chromium through chromedriver, headless; missing, it fails under .ci/run (helpers.external_tool)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = external_tool("chromium", "chromium-browser", why="Debian: apt-get install chromium chromium-driver")
    driver = external_tool("chromedriver", why="Debian: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
                "--disable-extensions", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def quit_browser(browser: Any) -> None:
    """Quit, then make sure chromedriver and every Chromium process are gone (by pid)."""
    pid = browser.service.process.pid
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    browser.quit()
    _, alive = psutil.wait_procs(family, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = start_browser(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        quit_browser(driver)


ROWS_JS = """
return [...document.querySelectorAll('tr[data-name][data-role="slot"]')].map(row => ({
  name: row.dataset.name, state: row.dataset.state,
  pid: row.querySelector('[data-col="pid"]').textContent,
  restarts: row.querySelector('[data-col="restarts"]').textContent,
  exit: row.querySelector('[data-col="exit"]').textContent}));
"""


def shown(browser: Any) -> dict[str, dict[str, str]]:
    """Instance rows as the page shows them, by name."""
    return {row["name"]: row for row in browser.execute_script(ROWS_JS)}


def poll(browser: Any, condition: Callable[[Any], Any], timeout: float, interval: float = 0.01) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=interval).until(condition)


def click_row(browser: Any, selector: str, timeout: float = 10) -> None:
    """Click the table row `selector` names. The page redraws its rows at every status update: a
    row found a moment before may be gone (stale) when clicked, so find it and click it again."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked(driver: Any) -> bool:
        try:
            driver.find_element("css selector", selector).click()
        except StaleElementReferenceException:
            return False
        return True
    poll(browser, clicked, timeout)


# -- the page in a browser -----------------------------------------------------------------------

def test_the_page_shows_every_instance_a_restart_within_a_second_and_logs_on_click(daemon, browser):
    sup, base = daemon
    browser.get(base + "/")
    status = sup.status()
    assert len(status) == 6

    def every_instance(driver: Any) -> dict[str, dict[str, str]] | None:
        rows = shown(driver)
        ok = rows.keys() == status.keys() and all(
            rows[n]["pid"] == str(status[n]["pid"]) and rows[n]["state"] == "running" for n in status)
        return rows if ok else None

    poll(browser, every_instance, timeout=15)
    poll(browser, lambda d: d.find_element("id", "connection").get_attribute("data-state") == "live", timeout=10)
    assert "burst" in browser.find_element("css selector", 'section[data-app="burst"] h2').text

    # SIGKILL a worker: the page shows its new process within a second, from the event stream.
    victim = status["web:1"]
    restarts = victim["restarts"]
    start = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted(driver: Any) -> dict[str, str] | None:
        row = shown(driver).get("web:1")
        if row and row["pid"] not in ("-", str(victim["pid"])) and row["restarts"] == str(restarts + 1):
            return row
        return None

    row = poll(browser, restarted, timeout=10)
    latency = time.monotonic() - start
    print(f"\ndashboard: web:1's restart shown {latency * 1000:.0f} ms after its SIGKILL")
    assert latency <= RESTART_SHOWN_WITHIN, f"the restart took {latency:.3f}s to show"
    assert "crashed (signal 9)" in row["exit"]
    new_pid = sup.wait_state("web:1", "running")["pid"]
    poll(browser, lambda d: shown(d)["web:1"]["pid"] == str(new_pid), timeout=5)
    feed = browser.find_element("id", "feed").text
    assert "web:1 running → backoff" in feed or "web:1 running → starting" in feed, feed

    # Click an instance: its last log lines appear.
    pid0 = status["web:0"]["pid"]
    click_row(browser, 'tr[data-name="web:0"][data-role="slot"]')
    poll(browser, lambda d: f"up web:0 {pid0}" in d.find_element("id", "log-lines").text, timeout=5)
    assert browser.find_element("id", "log-title").text == "web:0"
    click_row(browser, 'tr[data-name="burst:0"][data-role="slot"]')
    poll(browser, lambda d: d.find_element("id", "log-lines").text.endswith(f"burst line {BURST_LINES - 1}"),
         timeout=5)
    assert "web:0" not in browser.find_element("id", "log-lines").text

    # Read-only and self-contained: nothing on the page acts, every request is a GET to the daemon.
    controls = "return document.querySelectorAll('button, form, input, select, textarea').length"
    assert browser.execute_script(controls) == 0
    requests = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent" and params.get("documentURL", "").startswith(base):
            requests.append((params["request"]["method"], params["request"]["url"]))
    urls = {url.split("?")[0] for _, url in requests}
    assert {f"{base}/", f"{base}/dashboard.js", f"{base}/dashboard.css", f"{base}/api/status", f"{base}/api/events",
            f"{base}/api/logs"} <= urls, urls
    foreign = [url for _, url in requests if not url.startswith(base + "/") and not url.startswith("data:")]
    assert not foreign, f"the page fetched from elsewhere: {foreign}"
    assert {method for method, _ in requests} == {"GET"}, requests
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # a Content-Security-Policy violation would be one


MARKUP = "<script>window.pwned=2</script><b>bold</b>"


def test_daemon_text_is_shown_as_text_never_as_markup(supervisor, browser):
    """Markup in a spawn error and in log lines appears literally; nothing of it runs or renders."""
    port = free_port()
    sup = supervisor(f"""
        [supervise]
        metrics = "127.0.0.1:{port}"

        [apps.echo]
        command = ["{{python}}", "-c", "import time; print('{MARKUP}'); time.sleep(3600)"]

        [apps.broken]
        command = ["/nonexistent/<img src=x onerror=window.pwned=1>"]
        restart = "never"
        """)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answering(base + "/api/status"), timeout=15, message="the dashboard to answer")
    sup.wait_all_running(1, "echo")
    browser.get(base + "/")
    poll(browser, lambda d: "<img src=x onerror=window.pwned=1>" in shown(d).get("broken:0", {}).get("exit", ""),
         timeout=15)
    click_row(browser, 'tr[data-name="echo:0"]')
    poll(browser, lambda d: MARKUP in d.find_element("id", "log-lines").text,
         timeout=5)
    assert browser.execute_script("return [window.pwned, document.querySelectorAll('img, b, main script').length]") \
        == [None, 0]


# -- plain HTTP ----------------------------------------------------------------------------------

def logs(base: str, query: str) -> tuple[int, dict[str, Any]]:
    status, _, body = get(f"{base}/api/logs?{query}")
    return status, json.loads(body)


def test_api_logs_is_bounded_and_knows_its_instances(daemon):
    sup, base = daemon
    wait_until(lambda: logs(base, "name=burst:0&lines=1")[1]["lines"] == [f"burst line {BURST_LINES - 1}"],
               message="burst:0 to have written its lines")
    status, body = logs(base, "name=burst:0&lines=5")
    assert status == 200 and body["lines"] == [f"burst line {i}" for i in range(BURST_LINES - 5, BURST_LINES)]
    assert body["name"] == "burst:0" and body["path"].endswith("burst.0.log") and body["complete"]
    status, body = logs(base, "name=burst:0&lines=100000")
    assert status == 200 and len(body["lines"]) == dashboard.MAX_LINES
    assert body["lines"][-1] == f"burst line {BURST_LINES - 1}"
    assert logs(base, "name=burst:0")[1]["lines"][0] == f"burst line {BURST_LINES - dashboard.DEFAULT_LINES}"
    assert logs(base, "name=burst:0&lines=0") == (200, {**body, "lines": []})
    wait_until(lambda: logs(base, "name=jobs:1&lines=3")[1]["lines"], message="jobs:1 to have written a line")
    for query in ("name=web:7", "name=nope:0", "name=..%2F..%2Fetc%2Fpasswd:0", "name=web:00"):
        status, body = logs(base, query)
        assert status == 404 and "no instance named" in body["error"], (query, body)
    for query in ("name=web", "", "name=web:x", "name=web:0&lines=-1", "name=web:0&lines=ten", "name=web:0&lines=1e3"):
        assert logs(base, query)[0] == 400, query


def test_api_status_page_and_methods(daemon):
    sup, base = daemon
    code, headers, body = get(base + "/api/status")
    result = json.loads(body)
    assert code == 200 and headers["content-type"] == "application/json"
    names = {i["name"] for app in result["apps"] for i in app["instances"]}
    assert names == set(sup.status()) and result["daemon"]["pid"] == sup.proc.pid
    code, headers, body = get(base + "/")
    assert code == 200 and headers["content-type"].startswith("text/html") and b"dashboard.js" in body
    assert "default-src 'none'" in headers["content-security-policy"] and "frame-ancestors 'none'" in \
        headers["content-security-policy"]
    for asset in ("/dashboard.js", "/dashboard.css"):
        assert get(base + asset)[0] == 200
    for method in ("POST", "PUT", "DELETE"):
        for path in ("/", "/api/status", "/api/logs?name=web:0", "/api/events"):
            assert get(base + path, method)[0] == 405, (method, path)


def test_api_events_streams_each_published_event(daemon):
    sup, base = daemon
    old = sup.status()["web:2"]["pid"]
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/events")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        assert response.fp.readline() == f"retry: {dashboard.RETRY_MS}\n".encode()
        assert response.fp.readline() == b"\n"
        restart = subprocess.Popen([sys.executable, "-m", "supervise", "restart", "web:2", "-c", str(sup.config)],
                                   env=sup.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "state" and e.get("name") == "web:2" and e["to"] == "running"
                      and e["pid"] not in (None, old) for e in seen):
            line = response.fp.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: "):
                assert response.fp.readline() == b"\n"
                seen.append(json.loads(line[6:]))
        assert restart.wait(30) == 0
        # The newest events already published come first (a page's feed starts with them), then each live one.
        assert any(e["type"] == "daemon" and e["event"] == "started" for e in seen)
        assert [e["seq"] for e in seen] == list(range(seen[0]["seq"], seen[-1]["seq"] + 1))
        ours = [(e["from"], e["to"]) for e in seen if e.get("name") == "web:2" and e["seq"] > seen[0]["seq"]]
        assert ours[-1] == ("starting", "running") and ("running", "stopping") in ours[-4:], ours
    finally:
        conn.close()


# -- the event stream's bounds, in-process -------------------------------------------------------

def test_a_browser_that_stops_reading_is_dropped_and_never_blocks_the_loop(tmp_path):
    """Publishing never waits for a stream; one that falls MAX_QUEUE events behind is ended."""
    listeners: list[dashboard.Listener] = []
    source = dashboard.Source(status=lambda: {"apps": []}, log_file=lambda app, index: tmp_path / f"{app}.{index}",
                              subscribe=listeners.append)

    async def scenario() -> tuple[float, int, int]:
        server = HttpServer("127.0.0.1", 0)
        board = dashboard.install(server, source)
        await server.start()
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", server.port))
        slow.send(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await _until(lambda: len(board.followers) == 1)
        stamped = json.dumps({"seq": 1, "type": "state", "padding": "x" * 2000}).encode()
        worst = 0.0
        for _ in range(20):  # far more than the socket and the queue hold, never reading
            began = time.perf_counter()
            for _ in range(dashboard.MAX_QUEUE):
                listeners[0]({"type": "state"}, stamped)
            worst = max(worst, time.perf_counter() - began)
            await asyncio.sleep(0)
        await _until(lambda: not board.followers)
        dropped = board.dropped
        slow.close()
        server.close()
        return worst, dropped, len(board.followers)

    worst, dropped, left = asyncio.run(scenario())
    assert dropped == 1 and left == 0
    assert worst < 0.5, f"publishing {dashboard.MAX_QUEUE} events took {worst:.3f}s"


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_tail_reads_the_end_of_a_file_only(tmp_path):
    path = tmp_path / "x.log"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(100000)) + b"partial \xff")
    lines, complete = dashboard.tail(path, 3)
    assert lines == ["99998", "99999", "partial \ufffd"] and complete
    lines, complete = dashboard.tail(path, 1000, limit=100)
    assert complete is False and 0 < len(lines) < 40 and lines[-1] == "partial \ufffd"
    assert all(line.isdigit() for line in lines[:-1])  # the cut line at the start is left out
    path.write_bytes(b"a\nb\n")
    assert dashboard.tail(path, 10) == (["a", "b"], True)
    path.write_bytes(b"")
    assert dashboard.tail(path, 10) == ([], True)


# -- the README's screenshot ---------------------------------------------------------------------

SCREENSHOT_CONFIG = """
[supervise]
metrics = "127.0.0.1:{metrics_port}"

[apps.web]
command = ["sh", "-c", "sleep 1.5 && exec {python} {examples}/web.py --port {port}"]  # a slow start: the rollout shows
port = {web_port}
instances = 4
readiness = "heartbeat"
heartbeat_timeout = "5s"
max_memory = "200M"

[apps.worker]
command = "{python} {examples}/worker.py"
instances = 3

[apps.flaky]
command = "{python} {examples}/flaky.py"
instances = 1
"""


def screenshot(path: Path) -> None:
    """A realistic example: three apps, a crash or two, a rollout under way, one instance's log open."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = (SCREENSHOT_CONFIG.replace("{metrics_port}", str(port)).replace("{examples}", str(examples))
                  .replace("{web_port}", str(free_port())))
        sup = Supervisor(Path(tmp), config).start()
        browser = None
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: answering(base + "/api/status"), timeout=15)
            sup.wait_all_running(None, "web", "worker")
            time.sleep(4)  # some jobs in the workers' logs, maybe a crash of flaky's
            os.kill(sup.status()["worker:1"]["pid"], signal.SIGKILL)
            sup.wait_state("worker:1", "running")
            browser = start_browser(Path(tmp) / "profile", 1440, 1000)
            browser.get(base + "/")
            poll(browser, lambda d: len(shown(d)) == 8, timeout=15)
            click_row(browser, 'tr[data-name="worker:0"][data-role="slot"]')
            poll(browser, lambda d: d.find_element("id", "log-lines").get_attribute("data-count"), timeout=5)
            reload = subprocess.Popen([sys.executable, "-m", "supervise", "reload", "web", "-c", str(sup.config)],
                                      env=sup.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rolling = 'return document.querySelector(\'[data-rollout="running"] progress\')?.value'
            poll(browser, lambda d: (d.execute_script(rolling) or 0) >= 2, timeout=60, interval=0.05)
            browser.save_screenshot(str(path))
            reload.wait(60)
        finally:
            if browser is not None:
                quit_browser(browser)
            sup.cleanup()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png")
    screenshot(target)
    print(f"wrote {target}")
