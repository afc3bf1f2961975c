"""Exec probe checks: run a command, pass on exit code 0, kill its process group at the timeout.

Exec probes and the daemon's reaper: the daemon is a child subreaper whose
one reaper (process.reap) collects every child with ``waitpid(-1)``, so it
may reap a probe's process before anyone reads its exit status; asyncio's
child watchers would fight it the same way. So the status does not travel by
waitpid at all: the command runs under ``/bin/sh -c '"$@" >&2; echo $?'``,
the shell writes the command's status to a pipe of ours, and whoever reaps
the shell (the daemon's reaper, as for any orphan) reaps a process whose
status nobody needs. Which reaper runs first does not matter, and
process.py is unchanged. The price is one /bin/sh per check (a check costs the daemon about
0.6 ms of CPU in all, benchmarks/probes.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from supervise.frozen import frozen
from supervise.runtime.probe_checks import Check, Context, Done, first_line, seconds

__all__ = ["ExecTarget"]

OUTPUT_LIMIT = 4096  # bytes of an exec probe's output kept (the rest is read and dropped)
# The wrapper: the command's stdout and stderr both go to the output pipe (fd 2); the shell's own
# stdout is the status pipe, which only it holds, so it reaches EOF when the shell exits.
EXEC_WRAPPER = '"$@" >&2; echo $?'
_DISARMED_RETURNCODE = -(2**31)


@frozen
class ExecTarget:
    """Runs argv in cwd with env: passes on exit code 0."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]

    def start(self, ctx: Context, timeout: float, done: Done) -> Check:
        return _Exec(ctx.loop, self, timeout, done)


class _Exec:
    """Run the command in its own session; its status arrives on a pipe (see the module's docstring).

    At the timeout (or when cancelled) the whole process group is killed:
    that is safe while the status pipe is open, since the shell, whose pid
    is the group's id, has then not exited, so its pid cannot have been reused.
    """

    __slots__ = ("_loop", "_target", "_timeout", "_done", "_pid", "_out", "_status_fd", "_output",
                 "_status", "_over")

    def __init__(self, loop: asyncio.AbstractEventLoop, exec_target: ExecTarget, timeout: float, done: Done) -> None:
        self._loop = loop
        self._target = exec_target
        self._timeout = timeout
        self._done = done
        self._pid = 0
        self._out = -1  # read end of the command's stdout and stderr
        self._status_fd = -1  # read end of the shell's stdout: the exit status, then EOF
        self._output = b""
        self._status = b""
        self._over = False
        try:
            self._spawn()
        except OSError as exc:
            self._finish(self._spawn_failed(exc))
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop: it fails, saying why
            self._finish(f"probe error: {type(exc).__name__}: {exc}")

    def _spawn(self) -> None:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        self._out = out_r
        try:
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(out_w)
            raise
        self._status_fd = status_r
        try:
            # Popen, as process.spawn does (vfork: cheap however big the daemon), with no pipes of its own.
            proc = subprocess.Popen(
                ("/bin/sh", "-c", EXEC_WRAPPER, "supervise-probe", *self._target.argv),
                cwd=self._target.cwd, env=dict(self._target.env), stdin=subprocess.DEVNULL,
                stdout=status_w, stderr=out_w, close_fds=True,
                start_new_session=True,  # its own process group, killed whole at the timeout
            )
        finally:
            os.close(out_w)
            os.close(status_w)
        # Never let this Popen waitpid (its __del__ would, through subprocess._active): the
        # daemon's reaper owns every child, and the status comes by pipe. As process._disarm.
        proc.returncode = _DISARMED_RETURNCODE
        self._pid = proc.pid
        os.set_blocking(out_r, False)
        os.set_blocking(status_r, False)
        self._loop.add_reader(out_r, self._on_output)
        self._loop.add_reader(status_r, self._on_status)

    def _spawn_failed(self, exc: OSError) -> str:
        if exc.filename is not None and os.fsdecode(exc.filename) == os.fsdecode(self._target.cwd):
            return f"cannot run the probe in {self._target.cwd}: {exc.strerror}"
        return f"cannot start the probe {self._target.argv[0]!r}: {exc.strerror or exc}"

    def cancel(self) -> None:
        if not self._over:
            self._kill_if_running()
            self._close()

    def _on_output(self) -> None:
        try:
            self._drain_output()
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop: it fails, saying why
            self._fail_with(f"probe error: {type(exc).__name__}: {exc}")

    def _drain_output(self) -> None:
        while self._out >= 0:
            try:
                data = os.read(self._out, 65536)
            except (BlockingIOError, InterruptedError):
                return
            if not data:  # the command closed its output (maybe before it exits)
                self._loop.remove_reader(self._out)
                os.close(self._out)
                self._out = -1
                return
            if len(self._output) < OUTPUT_LIMIT:
                self._output += data[:OUTPUT_LIMIT - len(self._output)]

    def _on_status(self) -> None:
        try:
            if self._read_status():
                self._drain_output()  # all it wrote before it exited is in the pipe by now
                self._finish(self._verdict())
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop: it fails, saying why
            self._fail_with(f"probe error: {type(exc).__name__}: {exc}")

    def _read_status(self) -> bool:
        """Read what the shell wrote; True at EOF (the shell has exited)."""
        while True:
            try:
                data = os.read(self._status_fd, 64)
            except (BlockingIOError, InterruptedError):
                return False
            if not data:
                return True
            self._status = (self._status + data)[-64:]

    def _verdict(self) -> str | None:
        text = self._status.decode(errors="replace").strip()
        if not text.isdigit():  # the shell was killed before it could say
            return f"{self._target.argv[0]} was killed before it finished"
        code = int(text)
        if code == 0:
            return None
        said = first_line(self._output)
        what = f"exit code {code}"
        if code > 128 and code - 128 in signal.valid_signals():  # the shell's way to say "killed by signal"
            what += f" ({signal.Signals(code - 128).name})"
        return f"{what}: {said}" if said else what

    def expire(self) -> None:
        if self._over:
            return
        try:
            if self._read_status():  # it finished just now: its status stands
                self._drain_output()
                self._finish(self._verdict())
                return
            self._kill_if_running()
            self._finish(f"timed out after {seconds(self._timeout)} running {self._target.argv[0]}")
        except Exception as exc:  # noqa: BLE001 - a probe never raises into the loop: it fails, saying why
            self._fail_with(f"probe error: {type(exc).__name__}: {exc}")

    def _kill_if_running(self) -> None:
        """SIGKILL to the shell's process group, while the shell has not exited (its pid is ours)."""
        try:
            if self._pid and self._status_fd >= 0 and not self._read_status():
                os.killpg(self._pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # every member of the group has exited already
        except OSError:
            pass  # the status pipe is unreadable: we cannot know the pid is still ours, so leave it

    def _fail_with(self, reason: str) -> None:
        self._kill_if_running()
        self._finish(reason)

    def _finish(self, reason: str | None) -> None:
        if self._over:
            return
        self._close()
        self._done(reason)

    def _close(self) -> None:
        if self._over:
            return
        self._over = True
        for fd in (self._out, self._status_fd):
            if fd >= 0:
                self._loop.remove_reader(fd)
                os.close(fd)
        self._out = self._status_fd = -1
