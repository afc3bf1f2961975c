"""A keep-alive HTTP load generator for loopback, counting every failed request with its reason.

tests/loadgen.py opens a connection per request (`Connection: close`), which
hides what servers do to kept-alive connections when they stop. Here each
client thread keeps one HTTP/1.1 connection and sends its requests on it one
after another, as wrk does. It reconnects when the server answers
`Connection: close`, and after a failure. Nothing is retried: a request sent
on a connection the server then closes without answering counts as failed
(`closed before the response`), and so does a reset, a timeout, a refused
connection, a short or non-200 response.

Before reusing a connection it checks, as urllib3 and browsers do, whether
the server has closed it meanwhile (readable at once: FIN or RST already
here). Such a connection is counted in `stale` and replaced, and the request
goes on the new one: no request was lost there. So `failed` counts what even a
careful client loses: requests the server had not closed the connection
under when they were sent. wrk does not check: to it every stale connection
is one more error as well (a read error).
"""

from __future__ import annotations

import json
import select
import socket
import threading

from loadgen import REQUEST_TIMEOUT, LoadGenerator


class ServerClosed(OSError):
    """The server closed the connection before a whole response came back."""


class KeepAliveLoad(LoadGenerator):
    """LoadGenerator's bookkeeping (result, pacing, bounds), on kept-alive connections."""

    def __init__(self, port: int, clients: int = 8, rate: float | None = None, max_requests: int = 100_000,
                 max_seconds: float = 120.0, path: str = "/", host: str = "127.0.0.1") -> None:
        super().__init__(port, clients, rate, max_requests, max_seconds, path, host)
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self.connections = 0  # opened, over all threads: one per request would mean no keep-alive
        self.stale = 0  # kept-alive connections the server closed while idle, seen before reuse
        self.reasons: dict[str, int] = {}  # failures by reason (the exception's class and message)
        self._local = threading.local()  # each client thread's _Connection

    def _client(self) -> None:
        self._local.conn = _Connection(self.address)
        try:
            super()._client()
        finally:
            self._local.conn.close()

    def _one(self) -> int | None:
        conn = self._local.conn
        if conn.sock is not None and conn.closed_by_server():
            conn.close()
            with self._lock:
                self.stale += 1
        try:
            if conn.sock is None:
                conn.open()
                with self._lock:
                    self.connections += 1
            conn.sock.sendall(self.request)
            status, headers, body = conn.read_response()
            if headers.get(b"connection", b"").lower() == b"close":
                conn.close()
            if status != 200:
                raise ValueError(f"status {status}")
        except (OSError, ValueError) as exc:
            conn.close()
            with self._lock:
                key = f"{type(exc).__name__}: {exc}"
                self.reasons[key] = self.reasons.get(key, 0) + 1
            raise
        if headers.get(b"content-type", b"").startswith(b"application/json"):
            pid = json.loads(body).get("pid")
            return pid if isinstance(pid, int) else None
        return None


class _Connection:
    """One kept-alive connection and what has been read from it but not yet used."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        self.buf = b""

    def open(self) -> None:
        self.sock = socket.create_connection(self.address, timeout=REQUEST_TIMEOUT)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def closed_by_server(self) -> bool:
        """Whether the idle connection is readable already: a FIN or RST (or stray bytes) from the server."""
        assert self.sock is not None
        return bool(self.buf) or bool(select.select([self.sock], [], [], 0)[0])

    def _more(self, what: str) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ServerClosed(f"closed before the {what}")
        self.buf += chunk

    def read_response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """(status, headers by lowercased name, body) of one response with a Content-Length or chunked body."""
        while b"\r\n\r\n" not in self.buf:
            self._more("response" if not self.buf else "end of the headers")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if not parts[0].startswith(b"HTTP/1.") or len(parts) < 2:
            raise ValueError(f"bad status line {lines[0][:60]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            while len(self.buf) < length:
                self._more("end of the body")
            body, self.buf = self.buf[:length], self.buf[length:]
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = self._chunked()
        else:
            raise ValueError("a response without Content-Length or chunked encoding")
        return int(parts[1]), headers, body

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                self._more("next chunk")
            size_line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self._more("end of a chunk")
            body += self.buf[:size]
            self.buf = self.buf[size + 2:]
            if size == 0:
                return body


__all__ = ["KeepAliveLoad", "ServerClosed"]
