"""The shipped web example behind a shared listen socket: serves, and always drains promptly."""

import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"



def test_web_instances_share_the_socket_and_stop_fast_after_serving(supervisor):
    port = free_port()
    sup = supervisor(f"""
    [apps.web]
    command = ["{sys.executable}", "{EXAMPLES / 'web.py'}"]
    instances = 3
    readiness = "heartbeat"
    listen = ["127.0.0.1:{port}"]
    stop_timeout = "20s"
    """)
    for i in range(3):
        sup.wait_state(f"web:{i}", "running")
    # Every connection wakes all three; an instance that loses the accept()
    # must not stay blocked in it. Concurrent bursts make such races likely.
    def get(_):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
            return json.loads(reply.read())["instance"]

    with ThreadPoolExecutor(16) as pool:
        seen = set(pool.map(get, range(400)))
    assert len(seen) >= 2  # served by several instances
    began = time.monotonic()
    assert sup.cli("stop", "web").returncode == 0
    assert time.monotonic() - began < 5.0, "an instance waited out stop_timeout"
    exits = [i["last_exit"] for i in sup.status().values()]
    assert all(e == {"reason": "stopped", "code": 0, "signal": None} for e in exits), exits
