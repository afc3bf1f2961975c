"""Only our own user may talk to the daemon: file modes, and the peer's uid checked by the socket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NOBODY = 65534
PROBE = r"""
import os, sys, zmq
os.setgid(65534); os.setuid(65534)
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.connect("ipc://" + sys.argv[1])
s.send(b'{"v": 1, "cmd": "status"}')
print("answered" if s.poll(2000) else "refused")
"""


def test_state_dir_and_control_socket_are_owner_only(supervisor):
    sup = supervisor('[apps.a]\ncommand = ["{python}", "{workers}/sleeper.py"]\n')
    state = sup.dir / ".supervise"
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "control.sock").stat().st_mode & 0o777 == 0o600


def test_another_user_is_refused_even_when_the_modes_let_it_in(supervisor):
    assert os.getuid() == 0, "this test switches to another user; CI runs as root"
    sup = supervisor('[apps.a]\ncommand = ["{python}", "{workers}/sleeper.py"]\n')
    socket = sup.dir / ".supervise" / "control.sock"
    # Open the way for another user: every directory on the path, and the socket
    # itself (a mistake an operator could make). Restored afterwards.
    opened = [p for p in (socket, *socket.parents) if p != Path("/")]
    modes = {p: p.stat().st_mode & 0o777 for p in opened}
    try:
        for path in opened:
            os.chmod(path, modes[path] | (0o666 if path == socket else 0o755))
        probe = subprocess.run([sys.executable, "-c", PROBE, str(socket)], capture_output=True, text=True,
                               timeout=30)
        assert probe.stdout.strip() == "refused", probe.stdout + probe.stderr
    finally:
        for path, mode in modes.items():
            os.chmod(path, mode)
    assert sup.cli("status").returncode == 0  # and we still get in
