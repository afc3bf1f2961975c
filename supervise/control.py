"""The control client used by the CLI.

It speaks ZMTP directly over the ipc socket (supervise.zmtp) instead of
importing pyzmq, which alone would cost more than the whole `status` budget.
"""

from __future__ import annotations

from collections.abc import Iterator

from supervise import protocol, zmtp
from supervise.paths import StatePaths


class NoDaemon(Exception):
    """No daemon holds this state dir (exit code 3)."""


class ControlError(Exception):
    """The daemon refused or failed the operation; ``usage`` marks a bad request (exit 2)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class Control:
    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths

    def _connect(self, timeout: float) -> zmtp.DealerConnection:
        where = self.paths.root
        if self.paths.lock_holder() is None:
            raise NoDaemon(f"no supervise daemon is running for state dir {where} "
                           "(start one with `supervise run -c FILE`)")
        try:
            return zmtp.DealerConnection.connect_ipc(str(self.paths.control_socket), timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(f"the supervise daemon for {where} is not accepting commands "
                           "(it may be starting or stopping; try again)") from None
        except TimeoutError:
            raise ControlError(f"the daemon for {where} did not answer within {timeout:g}s") from None
        except (OSError, zmtp.ZmtpError) as exc:
            raise ControlError(f"cannot talk to the daemon for {where}: {exc}") from None

    def request(self, req: protocol.Request, timeout: float = 10.0) -> object:
        """Send one request and return its result; raises ControlError on a refusal."""
        with self._connect(timeout) as conn:
            conn.send([protocol.encode_request(req)])
            reply = self._recv_reply(conn, timeout)
        return self._result(reply)

    def shutdown(self, keep_workers: bool = False) -> object:
        """Ask for a drain (or, keeping the workers, just an exit) and wait until the daemon is gone."""
        with self._connect(10.0) as conn:
            conn.send([protocol.encode_request(protocol.Request("shutdown", keep_workers=keep_workers))])
            result = self._result(self._recv_reply(conn, 10.0))
            try:
                while True:  # the daemon closes our connection as it exits
                    conn.recv(timeout=None)
            except zmtp.ZmtpError:
                pass
        self._wait_unlocked()
        return result

    def events(self, since: int, follow: bool) -> Iterator[dict]:
        """History after ``since``, then (with ``follow``) live events until the daemon exits."""
        with self._connect(10.0) as conn:
            conn.send([protocol.encode_request(protocol.Request("events", since=since, follow=follow))])
            result = self._result(self._recv_reply(conn, 10.0))
            last = since
            for event in result["events"]:
                last = event["seq"]
                yield event
            if not follow:
                return
            while True:
                try:
                    frames = conn.recv(timeout=None)
                except zmtp.ZmtpError:
                    return
                reply = protocol.decode_reply(frames)
                if reply.event is not None and reply.event.get("seq", 0) > last:
                    last = reply.event["seq"]
                    yield reply.event

    def _recv_reply(self, conn: zmtp.DealerConnection, timeout: float) -> protocol.Reply:
        try:
            frames = conn.recv(timeout)
        except TimeoutError:
            raise ControlError(f"the daemon did not answer within {timeout:g}s") from None
        except zmtp.ZmtpError:
            raise ControlError("the daemon closed the connection (is it shutting down?)") from None
        try:
            return protocol.decode_reply(frames)
        except protocol.ProtocolError as exc:
            raise ControlError(f"unreadable reply from the daemon: {exc}") from None

    @staticmethod
    def _result(reply: protocol.Reply) -> object:
        if not reply.ok:
            raise ControlError(reply.error or "failed", usage=reply.usage)
        return reply.result

    def _wait_unlocked(self) -> None:
        """The daemon releases its lock as its very last act; wait for it briefly."""
        import time

        deadline = time.monotonic() + 10.0
        while self.paths.lock_holder() is not None and time.monotonic() < deadline:
            time.sleep(0.002)
