"""supervise.wire.zmtp against a real libzmq ROUTER (pyzmq), plus a few hand-made bad peers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from supervise.wire.zmtp import MAX_FRAME, DealerConnection, ZmtpError, ipc_path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def router(ctx: zmq.Context, tmp_path: Path) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(TIMEOUT * 1000))
    path = str(tmp_path / "control.sock")
    sock.bind(f"ipc://{path}")
    return sock, path


def test_ipc_path() -> None:
    assert ipc_path("ipc:///x/y") == "/x/y"
    for bad in ("tcp://127.0.0.1:5555", "ipc://", "/x/y"):
        with pytest.raises(ValueError):
            ipc_path(bad)


def test_round_trip_multipart_and_long_frame(router: tuple[zmq.Socket, str]) -> None:
    sock, path = router
    start = time.perf_counter()
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        conn.send([b"hello"])
        identity, payload = sock.recv_multipart()
        assert payload == b"hello"
        sock.send_multipart([identity, b"a", b"b" * 1000])
        assert conn.recv(TIMEOUT) == [b"a", b"b" * 1000]
    print(f"\nconnect+send+recv round trip: {(time.perf_counter() - start) * 1000:.2f} ms")
    # Edge sizes: empty frames, 255 (last short) and 256 (first long) bytes, DEALER->ROUTER too.
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        frames = [b"", b"x" * 255, b"y" * 256, b""]
        conn.send(frames)
        identity, *got = sock.recv_multipart()
        assert got == frames
        sock.send_multipart([identity, *frames])
        assert conn.recv(TIMEOUT) == frames


def test_many_messages(router: tuple[zmq.Socket, str]) -> None:
    sock, path = router
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        start = time.perf_counter()
        for i in range(1000):
            conn.send([b"req", str(i).encode()])
            identity, *msg = sock.recv_multipart()
            assert msg == [b"req", str(i).encode()]
            sock.send_multipart([identity, b"rep", str(i).encode()])
            assert conn.recv(TIMEOUT) == [b"rep", str(i).encode()]
        print(f"\n1000 round trips on one connection: {(time.perf_counter() - start) * 1000:.1f} ms")
        for i in range(1000):
            conn.send([str(i).encode()])
        for i in range(1000):
            identity, msg = sock.recv_multipart()
            assert msg == str(i).encode()
        for i in range(1000):
            sock.send_multipart([identity, str(i).encode(), b"z" * (i % 300)])
        for i in range(1000):
            assert conn.recv(TIMEOUT) == [str(i).encode(), b"z" * (i % 300)]


def test_ten_megabyte_frame_both_ways(router: tuple[zmq.Socket, str]) -> None:
    sock, path = router
    big = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        sender = threading.Thread(target=conn.send, args=([b"head", big],))
        sender.start()  # 10 MB exceeds the socket buffers: the peer must read concurrently
        identity, head, got = sock.recv_multipart()
        sender.join()
        assert (head, got) == (b"head", big)
        sock.send_multipart([identity, big])
        assert conn.recv(TIMEOUT) == [big]


def test_recv_timeout_keeps_connection_usable(router: tuple[zmq.Socket, str]) -> None:
    sock, path = router
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.recv(0.2)
        assert 0.15 < time.monotonic() - start < 2.0
        conn.send([b"ping"])
        identity, _ = sock.recv_multipart()
        sock.send_multipart([identity, b"pong"])
        assert conn.recv(TIMEOUT) == [b"pong"]


def test_heartbeats_are_answered(ctx: zmq.Context, tmp_path: Path) -> None:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 20)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 150)
    sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
    path = str(tmp_path / "hb.sock")
    sock.bind(f"ipc://{path}")
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        with pytest.raises(TimeoutError):
            conn.recv(0.5)  # PINGs arrive and are answered meanwhile
        conn.send([b"still", b"alive"])
        identity, *msg = sock.recv_multipart()
        assert msg == [b"still", b"alive"]
        sock.send_multipart([identity, b"yes"])
        assert conn.recv(TIMEOUT) == [b"yes"]


def test_no_socket_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DealerConnection.connect_ipc(str(tmp_path / "missing.sock"), TIMEOUT)


def test_socket_file_without_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    with pytest.raises(ConnectionRefusedError):
        DealerConnection.connect_ipc(path, TIMEOUT)


def test_peer_closes_mid_recv(ctx: zmq.Context, router: tuple[zmq.Socket, str]) -> None:
    sock, path = router
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        timer = threading.Timer(0.1, lambda: sock.close(linger=0))
        timer.start()
        with pytest.raises(ZmtpError, match="closed"):
            conn.recv(TIMEOUT)
        timer.join()


# -- hand-made peers for what libzmq will not do ----------------------------------------

ROUTER_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
ROUTER_READY = b"\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER"


def fake_peer(tmp_path: Path, script: Callable[[socket.socket], None]) -> tuple[str, threading.Thread]:
    """Listen on a unix socket, accept one client and run ``script`` on it in a thread."""
    path = str(tmp_path / "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        with listener:
            client, _ = listener.accept()
            with client:
                script(client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return path, thread


def read_handshake(client: socket.socket) -> None:
    """Swallow the client's greeting and READY (same length as ROUTER_READY)."""
    data = b""
    while len(data) < 64 + len(ROUTER_READY):
        data += client.recv(4096)


def test_truncated_message_then_close(tmp_path: Path) -> None:
    def script(client: socket.socket) -> None:
        client.sendall(ROUTER_GREETING + ROUTER_READY)
        read_handshake(client)
        client.sendall(b"\x01\x03abc" + b"\x00\x0ahal")  # second frame cut short

    path, thread = fake_peer(tmp_path, script)
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        with pytest.raises(ZmtpError, match="closed"):
            conn.recv(TIMEOUT)
    thread.join()


def test_oversized_frame_rejected(tmp_path: Path) -> None:
    def script(client: socket.socket) -> None:
        client.sendall(ROUTER_GREETING + ROUTER_READY)
        read_handshake(client)
        client.sendall(b"\x02" + (MAX_FRAME + 1).to_bytes(8, "big"))
        time.sleep(0.5)

    path, thread = fake_peer(tmp_path, script)
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        with pytest.raises(ZmtpError, match="limit"):
            conn.recv(TIMEOUT)
    thread.join()


def test_ping_between_messages_is_answered_and_command_inside_message_rejected(tmp_path: Path) -> None:
    replies: list[bytes] = []

    def script(client: socket.socket) -> None:
        client.sendall(ROUTER_GREETING + ROUTER_READY)
        read_handshake(client)
        client.sendall(b"\x04\x09\x04PING\x00\x0aab" + b"\x00\x02ok")  # PING ttl=10 ctx="ab", then [b"ok"]
        replies.append(client.recv(4096))
        client.sendall(b"\x01\x01x" + b"\x04\x09\x04PING\x00\x0aab")
        time.sleep(0.5)

    path, thread = fake_peer(tmp_path, script)
    with DealerConnection.connect_ipc(path, TIMEOUT) as conn:
        assert conn.recv(TIMEOUT) == [b"ok"]
        with pytest.raises(ZmtpError, match="inside a multipart"):
            conn.recv(TIMEOUT)
    thread.join()
    assert replies == [b"\x04\x07\x04PONGab"]


@pytest.mark.parametrize(
    ("greeting", "ready", "match"),
    [
        (b"GET / HTTP/1.1\r\n".ljust(64, b"x"), b"", "signature"),
        (ROUTER_GREETING[:10] + b"\x02" + ROUTER_GREETING[11:], b"", "ZMTP 2"),
        (ROUTER_GREETING[:12] + b"CURVE".ljust(20, b"\x00") + ROUTER_GREETING[32:], b"", "CURVE"),
        (ROUTER_GREETING, ROUTER_READY.replace(b"ROUTER", b"PUBxxx"), "socket type"),
        (ROUTER_GREETING, b"\x04\x0d\x05ERROR\x06denied", "denied"),
    ],
)
def test_bad_handshakes(tmp_path: Path, greeting: bytes, ready: bytes, match: str) -> None:
    def script(client: socket.socket) -> None:
        client.sendall(greeting + ready)
        time.sleep(0.5)

    path, thread = fake_peer(tmp_path, script)
    with pytest.raises(ZmtpError, match=match):
        DealerConnection.connect_ipc(path, TIMEOUT)
    thread.join()


def test_silent_listener_times_out(tmp_path: Path) -> None:
    path, thread = fake_peer(tmp_path, lambda client: time.sleep(0.6))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        DealerConnection.connect_ipc(path, 0.2)
    assert time.monotonic() - start < 0.5
    thread.join()


def test_import_does_not_pull_in_zmq() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import supervise.wire.zmtp; "
        "print(f'{(time.perf_counter() - t) * 1000:.2f}'); "
        "assert 'zmq' not in sys.modules, sorted(m for m in sys.modules if 'zmq' in m)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    print(f"\nimport supervise.wire.zmtp: {out.stdout.strip()} ms")
