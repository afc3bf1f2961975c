"""An HTTP load generator for loopback: what "zero failed requests" is measured with.

Each client thread opens a connection, sends one GET with `Connection: close`,
reads the whole response and checks the status: a refused or reset
connection, a timeout, a short or non-200 response all count as failures,
with their reason kept. Bounded in requests and time, so a test never hangs
on it; paced to a total rate when asked, open-loop per thread.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

REQUEST_TIMEOUT = 10.0


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failures, with their reason
    latencies: list[float] = field(default_factory=list)  # seconds, of successful requests
    elapsed: float = 0.0
    by_pid: dict[int, int] = field(default_factory=dict)  # answers per serving pid, when the body names one

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def rate(self) -> float:
        return (self.ok + self.failed) / self.elapsed if self.elapsed else 0.0

    def summary(self) -> str:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        lat = f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms" if p50 is not None else "no latencies"
        return (f"{self.ok} ok, {self.failed} failed in {self.elapsed:.1f}s ({self.rate:.0f}/s), {lat}"
                + (f"; first errors: {self.errors[:3]}" if self.errors else ""))


class LoadGenerator:
    def __init__(self, port: int, clients: int = 8, rate: float | None = None, max_requests: int = 100_000,
                 max_seconds: float = 120.0, path: str = "/", host: str = "127.0.0.1") -> None:
        self.address = (host, port)
        self.clients = clients
        self.interval = clients / rate if rate else 0.0  # per thread
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        self._started = 0.0
        self.sent = 0

    def start(self) -> LoadGenerator:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, requests: int, timeout: float = 30.0) -> None:
        """Block until at least `requests` more have completed (ok or failed)."""
        goal = self.result.ok + self.result.failed + requests
        deadline = time.monotonic() + timeout
        while self.result.ok + self.result.failed < goal:
            if time.monotonic() > deadline or self._stop.is_set():
                raise AssertionError(f"load generator: {requests} requests did not complete in {timeout}s: "
                                     + self.result.summary())
            time.sleep(0.005)

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 5)
        self.result.elapsed = time.monotonic() - self._started
        return self.result

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _client(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                if self.sent >= self.max_requests or time.monotonic() - self._started > self.max_seconds:
                    self._stop.set()
                    return
                self.sent += 1
            began = time.monotonic()
            try:
                pid = self._one()
            except (OSError, ValueError) as exc:  # refused, reset, timed out, or a bad answer: a failure
                with self._lock:
                    self.result.failed += 1
                    if len(self.result.errors) < 20:
                        self.result.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                took = time.monotonic() - began
                with self._lock:
                    self.result.ok += 1
                    self.result.latencies.append(took)
                    if pid is not None:
                        self.result.by_pid[pid] = self.result.by_pid.get(pid, 0) + 1
            if self.interval:
                next_at += self.interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    self._stop.wait(pause)
                else:
                    next_at = time.monotonic()  # behind: no burst to catch up

    def _one(self) -> int | None:
        with socket.create_connection(self.address, timeout=REQUEST_TIMEOUT) as sock:
            sock.sendall(self.request)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        data = b"".join(chunks)
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.") or status.split(b" ")[1:2] != [b"200"]:
            raise ValueError(f"bad response {status[:60]!r} ({len(data)} bytes)")
        length = _content_length(head)
        if length is not None and len(body) != length:
            raise ValueError(f"short body: {len(body)} of {length} bytes")
        marker = body.find(b'"pid": ')
        if marker >= 0:
            end = body.find(b",", marker)
            return int(body[marker + 7:end])
        return None


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None
