"""`supervise top` in a real pseudo-terminal, its screen read through a terminal emulator (pyte).

The view runs as `python -m supervise top` with a pty as its controlling
terminal, as in a shell: keys are written to the pty's master side, and what
the program draws is fed to pyte, which keeps the screen a person would see.
Every wait is for a condition on that screen, with a deadline.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading

import pyte
import pytest
from helpers import Supervisor, wait_until

CONFIG = """
[apps.web]
command = ["{python}", "{workers}/sleeper.py"]
instances = 3
max_memory = "1G"   # memory sampled every 0.5 s, so MEM is known at once

[apps.worker]
command = ["{python}", "{workers}/sleeper.py"]
instances = 2
max_memory = "1G"
"""
NAMES = ["web:0", "web:1", "web:2", "worker:0", "worker:1"]
COLS, ROWS = 140, 40
# SGR parameters that set a colour: 30-39, 40-49, 90-97, 100-107 (38/48 start 256-colour and RGB ones).
_SGR = re.compile(rb"\x1b\[([0-9;:]*)m")
_COLOUR = {*range(30, 50), *range(90, 98), *range(100, 108)}


class Screen(pyte.Screen):
    """pyte's screen, plus the three controls of xterm that ncurses uses and pyte 0.8 lacks: REP
    (repeat the last character: a run of blanks), SU and SD (scroll the region up or down)."""

    last = " "

    def draw(self, data: str) -> None:
        super().draw(data)
        if data:
            self.last = data[-1]

    def repeat(self, count: int = 1, **_: object) -> None:
        self.draw(self.last * max(1, count))

    def scroll_up(self, count: int = 1, **_: object) -> None:
        self._scroll(count, self.index, at_top=False)

    def scroll_down(self, count: int = 1, **_: object) -> None:
        self._scroll(count, self.reverse_index, at_top=True)

    def _scroll(self, count: int, step, at_top: bool) -> None:
        top, bottom = self.margins or pyte.screens.Margins(0, self.lines - 1)
        x, y = self.cursor.x, self.cursor.y
        self.cursor.y = top if at_top else bottom
        for _ in range(max(1, count)):
            step()
        self.cursor.x, self.cursor.y = x, y


class Stream(pyte.ByteStream):
    csi = {**pyte.ByteStream.csi, "b": "repeat", "S": "scroll_up", "T": "scroll_down"}


class Terminal:
    """A command in a pseudo-terminal of COLS x ROWS; ``screen`` is what it shows, ``raw`` what it wrote."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.modes = termios.tcgetattr(self.slave)  # as a shell leaves it: cooked, echoing
        self.screen = Screen(COLS, ROWS)
        self._stream = Stream(self.screen)
        self._lock = threading.Lock()
        self.raw = bytearray()
        self.proc = subprocess.Popen(
            argv, stdin=self.slave, stdout=self.slave, stderr=self.slave, env=dict(env, TERM="xterm-256color"),
            cwd=cwd, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # its controlling terminal: Ctrl-C works
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave side is closed
                return
            if not data:
                return
            with self._lock:
                self.raw += data
                self._stream.feed(data)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.screen.display)

    def text(self) -> str:
        return "\n".join(self.lines())

    def row(self, name: str) -> list[str] | None:
        """The cells of instance ``name``'s row, split on blanks (LAST EXIT is several)."""
        for line in self.lines():
            cells = line.split()
            if cells and cells[0] == name and len(cells) >= 9:
                return cells
        return None

    def instance_order(self) -> list[str]:
        return [line.split()[0] for line in self.lines() if line.split() and line.split()[0] in NAMES]

    def colour_of(self, word: str, row: str) -> str | None:
        """pyte's foreground colour of the first cell of ``word`` in the row of instance ``row``."""
        with self._lock:
            for y, line in enumerate(self.screen.display):
                x = line.find(word)
                if line.startswith(row + " ") and x >= 0:
                    return self.screen.buffer[y][x].fg
        return None

    def press(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_for(self, predicate, timeout: float = 10.0, message: str = ""):
        try:
            return wait_until(predicate, timeout, interval=0.02, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- screen ---\n{self.text()}") from None

    def exit_code(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def restored(self) -> bool:
        """The terminal's modes are those it had before (echo, canonical input) after the program left."""
        return termios.tcgetattr(self.slave) == self.modes

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.slave)
        self._reader.join(5)
        os.close(self.master)


@pytest.fixture
def terminal():
    """Factory: ``terminal(sup, *args)`` runs `supervise top ARGS -c CONFIG` in a pty; closed after the test."""
    made: list[Terminal] = []

    def start(sup: Supervisor, *args: str, env: dict[str, str] | None = None) -> Terminal:
        argv = [sys.executable, "-m", "supervise", "top", *args, "-c", str(sup.config)]
        term = Terminal(argv, env or sup.env, str(sup.dir))
        made.append(term)
        return term

    yield start
    for term in made:
        term.close()


def _colour_sgr(raw: bytes) -> list[bytes]:
    found = []
    for match in _SGR.finditer(raw):
        params = [p for p in re.split(rb"[;:]", match.group(1)) if p]
        if any(int(p) in _COLOUR for p in params):
            found.append(match.group(0))
    return found


def _mem(cell: str) -> float:
    return float(cell[:-1]) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[cell[-1]]


def test_rows_restart_sort_filter_and_quit(supervisor, terminal):
    sup = supervisor(CONFIG)
    sup.wait_all_running(5)
    term = terminal(sup)
    term.wait_for(lambda: all((r := term.row(n)) and r[1] == "running" for n in NAMES), message="every row")
    # An instance first sampled in the 50 ms after its start has no CPU average yet (sampler._cpu_of):
    # it shows from the next pass, 5 s later while somebody looks. So both are waited for.
    term.wait_for(lambda: all((r := term.row(n)) and r[3] != "-" and r[4] != "-" for n in NAMES), timeout=20,
                  message="every CPU and MEM known (sampled every 5 s)")
    text = term.text()
    assert "APP" in text and re.search(r"^web\s+3/3\s", text, re.M) and re.search(r"^worker\s+2/2\s", text, re.M)
    assert "EVENTS" in text and "q quit" in text
    assert term.colour_of("running", "web:0") == "green"  # colours, as NO_COLOR is not set
    assert re.fullmatch(r"\d+\.\d", term.row("web:1")[3])  # CPU: sampled with MEM (issue 13)

    # A worker SIGKILLed: its restart shows at once, in its row and in the events pane.
    pid = sup.status()["web:1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    # (RESTARTS is the 8th cell: PROCS shows beside MEM now that every instance has a process count.)
    term.wait_for(lambda: (r := term.row("web:1")) and r[7] == "1" and r[2] != str(pid) and r[1] == "running",
                  timeout=5, message="web:1's restart in its row")
    term.wait_for(lambda: re.search(r"web:1 running -> \w+\s+crashed \(signal 9\)", term.text()),
                  timeout=5, message="the crash in the events pane")

    term.press("r")  # restarts, highest first
    term.wait_for(lambda: term.instance_order()[:1] == ["web:1"], message="web:1 first by restarts")
    assert "[sort restarts desc]" in term.text()
    term.press("m")  # memory, highest first
    term.wait_for(lambda: "[sort mem desc]" in term.text(), message="sorted by memory")

    def by_memory() -> bool:
        """One snapshot of the screen (a sample may repaint it between two reads) in memory order."""
        rows = [cells for line in term.lines() if (cells := line.split()) and cells[0] in NAMES and len(cells) >= 9]
        mems = [cells[4] for cells in rows]
        known = [_mem(m) for m in mems if m != "-"]  # a fresh process's is not sampled yet: listed last
        return len(known) >= 4 and "-" not in mems[:len(known)] and known == sorted(known, reverse=True)
    term.wait_for(by_memory, message="the rows in memory order, highest first")
    term.press("n")
    term.wait_for(lambda: term.instance_order() == NAMES, message="name order again")

    term.press("a")  # the first app only
    term.wait_for(lambda: term.instance_order() == NAMES[:3], message="web only")
    assert not re.search(r"^worker\s", term.text(), re.M)  # nor its totals
    term.press("a")
    term.wait_for(lambda: term.instance_order() == NAMES[3:], message="worker only")
    term.press("a")
    term.wait_for(lambda: term.instance_order() == NAMES, message="all apps after the last")
    term.press("/wor\r")  # typed: part of a name
    term.wait_for(lambda: term.instance_order() == NAMES[3:], message="worker, typed")
    term.press("\x1b")
    term.wait_for(lambda: term.instance_order() == NAMES, message="all apps after Esc")

    term.press("q")
    assert term.exit_code() == 0
    assert term.restored()
    tail = bytes(term.raw[-200:])
    assert b"\x1b[?1049l" in tail and b"\x1b[?25h" in tail, tail  # main screen back, cursor shown


def test_no_color_daemon_restart_and_ctrl_c(supervisor, terminal):
    sup = supervisor(CONFIG)
    sup.wait_all_running(5)
    term = terminal(sup, env=dict(sup.env, NO_COLOR="1"))
    term.wait_for(lambda: all(term.row(n) for n in NAMES), message="every row")
    first = re.search(r"daemon (\d+)", term.text()).group(1)

    assert sup.stop_daemon() == 0
    term.wait_for(lambda: "daemon not running, retrying" in term.text(), message="the daemon gone")
    sup.start()
    term.wait_for(lambda: (m := re.search(r"daemon (\d+)", term.text())) and m.group(1) != first
                  and all(term.row(n) for n in NAMES), timeout=20, message="the new daemon's instances")
    term.wait_for(lambda: "connected to the daemon" in term.text(), message="the reconnection noted")

    # The new daemon's instances are `starting` for ready_after, then `running`.
    term.wait_for(lambda: term.colour_of("running", "web:0") is not None, message="web:0 running again")
    assert _colour_sgr(bytes(term.raw)) == []
    assert term.colour_of("running", "web:0") == "default"
    term.press("\x03")  # Ctrl-C: SIGINT through the terminal
    assert term.exit_code() == 0
    assert term.restored()


def test_batch_mode_in_a_terminal_prints_plain_tables(supervisor, terminal):
    sup = supervisor(CONFIG)
    sup.wait_all_running(5)
    term = terminal(sup, "--batch", "-n", "2", "--interval", "0.2")
    assert term.exit_code() == 0
    raw = bytes(term.raw)
    assert b"\x1b" not in raw  # no screen control, no colour: lines, as for a log
    text = raw.decode()
    assert text.count("supervise top") == 2
    for name in NAMES:
        assert len(re.findall(rf"^{name}\s+running\s", text, re.M)) == 2, text


def test_plain_tables_when_stdout_is_not_a_terminal(supervisor):
    sup = supervisor(CONFIG)
    sup.wait_all_running(5)
    result = sup.cli("top", "-n", "3", "--interval", "0.1", "--sort", "restarts")
    assert result.returncode == 0, result.stderr
    tables = result.stdout.split("supervise top")[1:]
    assert len(tables) == 3, result.stdout
    for table in tables:
        assert "NAME" in table and "APP" in table
        for name in NAMES:
            assert re.search(rf"^{name}\s+running\s", table, re.M), table
    assert re.search(r"web:0 starting -> running", tables[0])  # the recent events, once
    assert "\x1b" not in result.stdout
    only = sup.cli("top", "-n", "1", "worker")
    assert only.returncode == 0 and "worker:1" in only.stdout and "web:0" not in only.stdout
    assert sup.cli("top", "-n", "1", "nosuchapp").returncode == 2


def test_plain_without_a_daemon_exits_3(tmp_path):
    sup = Supervisor(tmp_path, CONFIG)
    result = sup.cli("top", "-n", "1")
    assert result.returncode == 3, result
    assert "no supervise daemon is running" in result.stderr
    assert sup.cli("top", "--interval", "0").returncode == 2


def test_interactive_without_a_daemon_waits_for_one_and_sigterm_quits(tmp_path, terminal):
    sup = Supervisor(tmp_path, CONFIG)
    term = terminal(sup)
    term.wait_for(lambda: "daemon not running, retrying" in term.lines()[0], message="the daemon missing")
    assert "q quit" in term.lines()[-1]
    term.proc.send_signal(signal.SIGTERM)  # as a session ending would: the terminal is still put back
    assert term.exit_code() == 0
    assert term.restored()
