"""A minimal ZMTP 3.x DEALER client over ``ipc://`` using only the standard library.

Why: ``import zmq`` alone costs ~25 ms, too much for a CLI that must answer in well
under 60 ms.  The daemon binds a pyzmq ROUTER on ``ipc://<state_dir>/control.sock``,
which is a plain AF_UNIX stream socket speaking ZMTP 3 (RFC 23/ZMTP, 37/ZMTP for
3.1).  This module speaks just enough of it: NULL mechanism, DEALER socket type,
multipart messages, PING answered with PONG.  Nothing here imports more than
``socket``, ``struct`` and ``time``.
"""

from __future__ import annotations

# _socket, not socket: the wrapper module pulls in selectors and enum
# conversions, a few ms the CLI does not need for one stream connection.
import _socket
import struct
import time
from types import TracebackType

__all__ = ["ZmtpError", "DealerConnection", "ipc_path", "MAX_FRAME"]

MAX_FRAME = 64 * 1024 * 1024  # refuse larger frames: a corrupt size must not eat memory
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
# Signature FF <8 padding> 7F, version 3.1 (what libzmq 4.3 sends; it accepts 3.0 too),
# mechanism "NULL" padded to 20 bytes, as-server 0, 31 bytes of filler: 64 bytes.
_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


class ZmtpError(Exception):
    """The peer broke the protocol, sent an ERROR command, or closed the connection."""


def ipc_path(endpoint: str) -> str:
    """Return the filesystem path of an ``ipc://`` endpoint ("ipc:///x/y" -> "/x/y")."""
    if not endpoint.startswith("ipc://") or len(endpoint) == len("ipc://"):
        raise ValueError(f"not an ipc:// endpoint: {endpoint!r}")
    return endpoint[len("ipc://"):]


def _command(name: bytes, body: bytes = b"") -> bytes:
    """Encode one command frame (flags, size, name-length, name, body)."""
    data = bytes([len(name)]) + name + body
    if len(data) > 255:
        return struct.pack(">BQ", _COMMAND | _LONG, len(data)) + data
    return struct.pack(">BB", _COMMAND, len(data)) + data


def _properties(data: bytes) -> dict[str, bytes]:
    """Decode READY metadata: (name-len:1, name, value-len:4 BE, value)*; names lower-cased."""
    props: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        n = data[pos]
        name = data[pos + 1:pos + 1 + n]
        pos += 1 + n
        if pos + 4 > len(data):
            raise ZmtpError("truncated property in READY")
        (size,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + size > len(data):
            raise ZmtpError("truncated property in READY")
        props[name.decode("ascii", "replace").lower()] = data[pos:pos + size]
        pos += size
    return props


def _reason(data: bytes) -> str:
    """The reason string of an ERROR command body (length byte, then text)."""
    return data[1:1 + data[0]].decode("utf-8", "replace") if data else "(no reason)"


class DealerConnection:
    """A ZMTP 3.x DEALER peer over one stream socket (ipc:// only), NULL mechanism.

    Incoming bytes are kept in a buffer and a message is consumed only once it is
    complete, so a ``recv`` that times out mid-message leaves the stream in sync.
    """

    def __init__(self, sock: _socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout  # bounds each blocking send, as recv has its own
        self._buf = bytearray()

    @classmethod
    def connect_ipc(cls, path: str, timeout: float) -> DealerConnection:
        """Connect and handshake within ``timeout`` seconds overall.

        FileNotFoundError / ConnectionRefusedError from connect() propagate unchanged
        (they mean "no daemon"); TimeoutError if the handshake is not done in time.
        """
        deadline = time.monotonic() + timeout
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            conn = cls(sock, timeout)
            conn._handshake(deadline)
            return conn
        except BaseException:
            sock.close()
            raise

    def _handshake(self, deadline: float) -> None:
        """Exchange greetings and READY commands; validate the peer is a NULL ROUTER/DEALER."""
        self._sendall(_GREETING + _command(b"READY", b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"))
        greeting = self._read_exact(64, deadline)
        if greeting[0] != 0xFF or greeting[9] & 0x01 != 0x01:
            raise ZmtpError("peer is not speaking ZMTP (bad signature)")
        if greeting[10] < 3:
            raise ZmtpError(f"peer speaks ZMTP {greeting[10]}.x, need 3.x")
        mechanism = bytes(greeting[12:32]).rstrip(b"\x00")
        if mechanism != b"NULL":
            raise ZmtpError(f"peer wants security mechanism {mechanism!r}, only NULL is supported")
        while (frame := self._next_frame(0)) is None:
            self._fill(deadline)
        flags, body, end = frame
        del self._buf[:end]
        name, data = self._split_command(flags, body)
        if name == b"ERROR":
            raise ZmtpError(f"peer refused the handshake: {_reason(data)}")
        if name != b"READY":
            raise ZmtpError(f"expected READY, got {name!r}")
        socket_type = _properties(data).get("socket-type")
        if socket_type not in (b"ROUTER", b"DEALER"):
            raise ZmtpError(f"peer socket type {socket_type!r} cannot talk to a DEALER")

    def send(self, frames: list[bytes]) -> None:
        """Send one multipart message (MORE on all frames but the last)."""
        if not frames:
            raise ValueError("a message needs at least one frame")
        out: list[bytes] = []
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            more = _MORE if i < last else 0
            if len(frame) > 255:
                out.append(struct.pack(">BQ", more | _LONG, len(frame)))
            else:
                out.append(struct.pack(">BB", more, len(frame)))
            out.append(frame)
        self._sendall(b"".join(out))

    def recv(self, timeout: float | None) -> list[bytes]:
        """Return the next whole multipart message; ``None`` waits forever.

        Commands between messages are consumed (PING is answered with PONG).
        Raises TimeoutError on timeout, ZmtpError if the peer closes or misbehaves.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pos = 0
            frames: list[bytes] = []
            while (frame := self._next_frame(pos)) is not None:
                flags, body, pos = frame
                if flags & _COMMAND:  # only legal between messages; handle and drop it
                    if frames:
                        raise ZmtpError("command frame inside a multipart message")
                    del self._buf[:pos]
                    pos = 0
                    self._on_command(flags, body)
                    continue
                frames.append(body)
                if not flags & _MORE:
                    del self._buf[:pos]
                    return frames
            self._fill(deadline)

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        self._sock.close()

    def __enter__(self) -> DealerConnection:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    def _on_command(self, flags: int, body: bytes) -> None:
        name, data = self._split_command(flags, body)
        if name == b"PING":  # ping-ttl (2 bytes) then context, echoed back in PONG
            self._sendall(_command(b"PONG", data[2:]))
        elif name == b"ERROR":
            raise ZmtpError(f"peer sent ERROR: {_reason(data)}")

    @staticmethod
    def _split_command(flags: int, body: bytes) -> tuple[bytes, bytes]:
        if not flags & _COMMAND or not body or len(body) < 1 + body[0]:
            raise ZmtpError("malformed command frame")
        return body[1:1 + body[0]], body[1 + body[0]:]

    def _next_frame(self, pos: int) -> tuple[int, bytes, int] | None:
        """(flags, body, end) of the frame at ``pos`` if complete in the buffer; consumes nothing."""
        buf = self._buf
        if len(buf) < pos + 2:
            return None
        flags = buf[pos]
        if flags & ~(_MORE | _LONG | _COMMAND):
            raise ZmtpError(f"bad frame flags {flags:#x}")
        if flags & _LONG:
            if len(buf) < pos + 9:
                return None
            (size,) = struct.unpack_from(">Q", buf, pos + 1)
            head = 9
        else:
            size, head = buf[pos + 1], 2
        if size > MAX_FRAME:
            raise ZmtpError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
        if len(buf) < pos + head + size:
            return None
        end = pos + head + size
        return flags, bytes(buf[pos + head:end]), end

    def _read_exact(self, n: int, deadline: float | None) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _fill(self, deadline: float | None) -> None:
        """Append at least one byte from the socket to the buffer, or raise."""
        if deadline is None:
            self._sock.settimeout(None)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for the peer")
            self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError("timed out waiting for the peer") from None
        except ConnectionError as exc:
            raise ZmtpError(f"connection lost: {exc}") from exc
        if not chunk:
            raise ZmtpError("peer closed the connection")
        self._buf += chunk

    def _sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._timeout)
        try:
            self._sock.sendall(data)
        except ConnectionError as exc:
            raise ZmtpError(f"connection lost: {exc}") from exc
