"""Worker output travels through a pipe the daemon reads, and that pipe outlives the daemon.

The worker holds a read end of its own pipe: a SIGKILLed daemon breaks nobody's stdout (no EPIPE,
no SIGPIPE). While no daemon reads, the worker's writes fill the pipe and wait; the next daemon
opens the pipe again through /proc and not a line is lost or repeated.
"""

from __future__ import annotations

import os
import re
import signal
import time

from helpers import wait_until

APPS = """
[apps.chatty]
command = ["{python}", "{workers}/chatty.py", "2000"]
log_max_size = "100M"
stop_timeout = "2s"
"""


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^line (\d{8}) x+$", text, flags=re.M)]


def test_output_survives_the_daemons_death_with_no_line_lost(supervisor, tmp_path):
    sup = supervisor(APPS)
    pid = sup.wait_all_running(1)["chatty:0"]["pid"]
    log = tmp_path / ".supervise" / "logs" / "chatty.0.log"
    wait_until(lambda: len(numbers(log.read_text())) > 200, 10, message="output in the log")
    sup.proc.send_signal(signal.SIGKILL)
    sup.proc.wait(10)
    written = len(numbers(log.read_text()))
    time.sleep(1.0)  # the scenario: no daemon for a second, long enough to fill the pipe (64 KiB: 0.3 s here)
    assert os.path.exists(f"/proc/{pid}"), "the worker died with the daemon"
    stalled = len(numbers(log.read_text()))
    assert stalled == written, "something wrote the log while no daemon ran"

    sup.start()
    inst = sup.wait_all_running(1)["chatty:0"]
    assert inst["pid"] == pid and inst["restarts"] == 0, inst
    # More than a pipe's worth after the restart: what waited in the pipe, then the new lines.
    wait_until(lambda: len(numbers(log.read_text())) > stalled + 2000, 15, message="output flowing again")
    found = numbers(log.read_text())
    assert found == list(range(found[0], found[0] + len(found))), "a line lost, repeated or out of order"
    assert sup.status()["chatty:0"]["log_dropped"] == 0


def test_a_workers_last_words_are_in_the_log_when_its_exit_is_reported(supervisor, tmp_path):
    sup = supervisor("""
    [apps.last]
    command = ["{python}", "-c", "import sys; print('x' * 200000); print('last words', flush=True); sys.exit(3)"]
    backoff = { initial = "10s" }
    """)
    inst = wait_until(lambda: (s := sup.status()["last:0"])["last_exit"] and s, 15, message="the exit reported")
    assert inst["last_exit"]["code"] == 3
    text = (tmp_path / ".supervise" / "logs" / "last.0.log").read_text()
    assert text.endswith("last words\n") and "x" * 200000 in text
