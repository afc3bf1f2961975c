"""Under systemd: the daemon speaks sd_notify. This test plays systemd's side on a datagram socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from helpers import file_text


def receive_until(sock: socket.socket, predicate: Callable[[str], bool], timeout: float = 15.0) -> list[str]:
    """Messages (one string each) until one satisfies `predicate`; fails after `timeout`.

    A blocking receive with the time left, not wait_until's polling: a datagram is an event.
    """
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(f"no matching notification in {timeout}s; got {seen}") from None
        seen.append(message)
        if predicate(message):
            return seen


def test_ready_status_watchdog_and_stopping(supervisor, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        sup = supervisor("""
        [apps.web]
        command = ["{python}", "{workers}/beater.py"]
        instances = 2
        readiness = "heartbeat"
        [apps.env]
        command = ["{python}", "{workers}/env_names.py", "NOTIFY", "WATCHDOG"]
        """, start=False)
        sup.env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        sup.start(wait=False)
        seen = receive_until(systemd, lambda m: "READY=1" in m)
        ready = seen[-1]
        assert f"MAINPID={sup.proc.pid}" in ready and "STATUS=3 running, 0 starting" in ready, ready
        status = sup.status()
        assert all(i["state"] == "running" for i in status.values()), "READY=1 only once every app has started"
        # WATCHDOG=1 every half WATCHDOG_USEC, from the event loop
        receive_until(systemd, lambda m: m == "WATCHDOG=1\n", timeout=5)
        receive_until(systemd, lambda m: m == "WATCHDOG=1\n", timeout=5)
        # The notification variables are the daemon's: workers never see them.
        assert file_text(sup.dir / ".supervise" / "logs" / "env.0.log") == "[]"
        sup.proc.terminate()
        receive_until(systemd, lambda m: "STOPPING=1" in m)
        assert sup.proc.wait(20) == 0
