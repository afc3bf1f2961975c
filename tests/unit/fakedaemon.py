"""The daemon's side of the heartbeat channel for the worker client's tests: a real pyzmq ROUTER on
an ipc endpoint (its fixtures, `endpoint`, `daemon` and `thread_errors`, are in conftest.py).

Nothing of the client is mocked; a test waits on the ROUTER with a timeout, never on a sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from supervise.wire import protocol

TIMEOUT = 5.0  # a deadline for what should happen in about a millisecond


class FakeDaemon:
    """A ROUTER that reads heartbeats and writes back; it can go away and come back."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.router: zmq.Socket | None = None

    def bind(self) -> FakeDaemon:
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.endpoint)
        return self

    def unbind(self) -> None:
        self.router.close(linger=0)
        self.router = None

    def recv(self, timeout: float = TIMEOUT) -> tuple[bytes, protocol.Heartbeat]:
        if not self.router.poll(int(timeout * 1000)):
            raise AssertionError(f"no heartbeat message within {timeout}s")
        identity, *frames = self.router.recv_multipart()
        return identity, protocol.decode_heartbeat(frames)

    def recv_until(self, predicate: Callable[[protocol.Heartbeat], bool],
                   timeout: float = TIMEOUT) -> list[protocol.Heartbeat]:
        """Every message up to and including the first that matches."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            _, msg = self.recv(max(0.0, deadline - time.monotonic()))
            got.append(msg)
            if predicate(msg):
                return got

    def collect(self, seconds: float) -> list[protocol.Heartbeat]:
        """Every message that arrives within the next ``seconds``."""
        deadline = time.monotonic() + seconds
        got = []
        while (left := deadline - time.monotonic()) > 0:
            if self.router.poll(max(1, int(left * 1000))):
                got.append(protocol.decode_heartbeat(self.router.recv_multipart()[1:]))
        return got

    def silent(self, timeout: float) -> bool:
        """Nothing arrives within ``timeout`` seconds."""
        return not self.router.poll(int(timeout * 1000))

    def send(self, identity: bytes, *frames: bytes) -> None:
        self.router.send_multipart([identity, *frames])

    def drain(self, identity: bytes) -> None:
        self.send(identity, protocol.DRAIN)

    def promote(self, identity: bytes, name: str = "web:2", index: int = 2, port: int | None = 8002) -> None:
        self.send(identity, protocol.promote_message(name, index, port))

    def close(self) -> None:
        self.ctx.destroy(linger=0)
