"""Real etcd servers and a misbehaving TCP link, for tests of cluster mode.

``EtcdServer`` and ``EtcdCluster`` run /usr/bin/etcd on loopback ports with
fast elections; they are throwaway, so stopping is always SIGKILL (SIGTERM
can spend seconds handing leadership over). ``TcpProxy`` sits between a
client and etcd to cut, blackhole or slow the link.

Readiness and every other wait poll with a deadline; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import external_tool, free_port

START_TIMEOUT = 30.0  # generous: a loaded 2-core CI machine


def etcd_binary() -> str:
    return external_tool("etcd", why="Debian: apt-get install etcd-server")


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll condition() until it returns something truthy; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def gateway(endpoint: str, path: str, body: dict[str, Any] | None = None, timeout: float = 1.0) -> dict[str, Any]:
    """POST to etcd's JSON gateway without our client (so fixtures don't depend on what they test)."""
    request = urllib.request.Request(
        endpoint + path, data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback http)
        result: dict[str, Any] = json.loads(response.read())
        return result


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert, made by openssl."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_tls(directory: Path) -> TlsFiles:
    """Make TlsFiles in directory (skips the test when openssl is missing: TLS is an extra)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make certificates for the TLS test")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    for name, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(extensions)
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                    directory / "client.crt", directory / "client.key")


class EtcdServer:
    """One etcd member on loopback ports, data in its own directory.

    Alone (the default) it is a one-member cluster; EtcdCluster passes
    ``initial_cluster`` to make it one of several.
    """

    def __init__(self, directory: Path, name: str = "etcd0", *, client_port: int | None = None,
                 peer_port: int | None = None, initial_cluster: str | None = None,
                 cluster_token: str | None = None, extra_args: Sequence[str] = (),
                 tls: TlsFiles | None = None) -> None:
        self.directory = directory
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.tls = tls
        self.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.cluster_token = cluster_token or f"test-{uuid.uuid4().hex[:12]}"
        self.extra_args = list(extra_args)
        self.data_dir = directory / f"{name}.data"
        self.log_path = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0  # how long the last start took until ready

    def __repr__(self) -> str:
        return f"<EtcdServer {self.name} {self.endpoint} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        """Start the process; do not wait (members of a cluster are ready only together)."""
        assert not self.running, f"{self} already runs"
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", self.cluster_token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", str(self.log_path),
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip
        if self.tls is not None:
            argv += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        with open(self.directory / f"{self.name}.out", "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self._spawned_at = time.monotonic()

    def healthy(self) -> bool:
        """Answers /health with "true": it serves and sees a leader."""
        self.check_alive()
        context = self.tls.client_context() if self.tls is not None else None
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=0.5, context=context) as response:  # noqa: S310
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> EtcdServer:
        wait_for(self.healthy, timeout, f"{self} to be healthy")
        self.start_seconds = time.monotonic() - self._spawned_at
        return self

    def start(self) -> EtcdServer:
        self.spawn()
        return self.wait_ready()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"{self} exited with {self.proc.returncode}; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self.log_path, self.directory / f"{self.name}.out"):
            if path.exists():
                text += "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        return text or "(empty)"

    def status(self) -> dict[str, Any]:
        return gateway(self.endpoint, "/v3/maintenance/status")

    def member_id(self) -> str:
        return str(self.status()["header"]["member_id"])

    def kill(self) -> None:
        """SIGKILL and reap: a crash, as far as the cluster can tell."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: its sockets stay open but nothing answers, like a hung host."""
        assert self.proc is not None and self.running
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None and self.running
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, wait: bool = True) -> EtcdServer:
        """Kill if running, then start again on the same data dir and ports."""
        self.kill()
        self.spawn()
        return self.wait_ready() if wait else self

    def stop(self) -> None:
        """Idempotent cleanup: kill (also when paused) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.kill()


class EtcdCluster:
    """n members on loopback sharing one --initial-cluster; ready when all answer and a leader exists."""

    def __init__(self, directory: Path, n: int = 3, extra_args: Sequence[str] = ()) -> None:
        token = f"test-{uuid.uuid4().hex[:12]}"
        names = [f"etcd{i}" for i in range(n)]
        peers = {name: free_port() for name in names}
        initial = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers.items())
        self.members = [
            EtcdServer(directory, name, peer_port=peers[name], initial_cluster=initial, cluster_token=token,
                       extra_args=extra_args)
            for name in names
        ]
        self.start_seconds = 0.0

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        began = time.monotonic()
        for member in self.members:
            member.spawn()
        self.wait_ready()
        self.start_seconds = time.monotonic() - began
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        for member in self.members:
            if member.proc is not None:
                member.wait_ready(timeout)
        wait_for(self._leader_or_none, timeout, "the cluster to agree on a leader")

    def _leader_or_none(self) -> EtcdServer | None:
        leaders: set[str] = set()
        ids: dict[str, EtcdServer] = {}
        for member in self.members:
            if not member.running:
                continue
            try:
                status = member.status()
            except (OSError, ValueError):
                return None
            leaders.add(str(status.get("leader", "0")))
            ids[str(status["header"]["member_id"])] = member
        if len(leaders) != 1:
            return None
        return ids.get(leaders.pop())

    def leader(self, timeout: float = START_TIMEOUT) -> EtcdServer:
        """The member the running members agree is leader (waiting for one, if need be)."""
        leader: EtcdServer = wait_for(self._leader_or_none, timeout, "a leader")
        return leader

    def kill_all(self) -> None:
        for member in self.members:
            member.kill()

    def restart_all(self) -> None:
        self.kill_all()
        for member in self.members:
            member.spawn()
        self.wait_ready()

    def stop(self) -> None:
        for member in self.members:
            member.stop()


class TcpProxy:
    """A TCP forwarder on a free loopback port to (target_host, target_port), to break links on purpose.

    ``cut("blackhole")`` is a network partition: connections, existing and new,
    stay open (new ones are accepted) but no byte passes either way until
    ``restore()``, when the held bytes flow again, as TCP would retransmit them.
    ``cut("refuse")`` is a dead host's port: existing connections are reset and
    the port is closed, so new connects are refused, until ``restore()``.
    ``delay(seconds)`` holds every chunk that long before forwarding it.
    """

    _POLL = 0.1  # how often blocked threads look at the state (they use socket timeouts)

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._state = threading.Condition()
        self._mode = "open"  # open | blackhole | refuse
        self._delay = 0.0
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._listen()

    def __repr__(self) -> str:
        return f"<TcpProxy {self.endpoint} -> {self.target[0]}:{self.target[1]} {self._mode}>"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(self._POLL)
        self._listener = listener
        self._spawn(self._accept_loop, listener)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"tcpproxy-{self.port}")
        with self._state:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            with self._state:
                if self._closed or self._listener is not listener:
                    break
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            self._track(client)
            self._spawn(self._serve, client)
        listener.close()

    def _track(self, sock: socket.socket) -> None:
        sock.settimeout(self._POLL)
        with self._state:
            self._sockets.add(sock)

    def _wait_open(self) -> bool:
        """Hold while blackholed; False when the proxy closed or refuses."""
        with self._state:
            while self._mode == "blackhole" and not self._closed:
                self._state.wait(self._POLL)
            return self._mode == "open" and not self._closed

    def _serve(self, client: socket.socket) -> None:
        if not self._wait_open():
            self._drop(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._drop(client)
            return
        self._track(upstream)
        self._spawn(self._pump, upstream, client)
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except TimeoutError:
                with self._state:
                    if self._closed or self._mode == "refuse" or source not in self._sockets:
                        break
                continue
            except OSError:
                break
            if not data or not self._wait_open():
                break
            with self._state:
                delay = self._delay
            if delay:
                time.sleep(delay)  # the latency being simulated, not synchronisation
            try:
                sink.sendall(data)
            except OSError:
                break
        self._drop(source)
        self._drop(sink)

    def _drop(self, sock: socket.socket) -> None:
        with self._state:
            self._sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more
        sock.close()

    def cut(self, mode: str = "blackhole") -> None:
        """Break the link: "blackhole" (silence, a partition) or "refuse" (reset, port closed)."""
        if mode not in ("blackhole", "refuse"):
            raise ValueError(f"cut mode {mode!r}: blackhole or refuse")
        with self._state:
            self._mode = mode
            self._state.notify_all()
            listener, sockets = self._listener, list(self._sockets)
            if mode == "refuse":
                self._listener = None
        if mode == "refuse":
            if listener is not None:
                # shutdown ends LISTEN at once; a bare close could wait for the accept thread's poll,
                # and a connect in that window would be accepted and then reset, not refused.
                try:
                    listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not listening any more
                listener.close()
            for sock in sockets:
                # RST rather than FIN: the far end learns of it as of a dead host.
                with self._state:
                    self._sockets.discard(sock)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass  # closed by its pump meanwhile
                sock.close()

    def restore(self) -> None:
        with self._state:
            previous, self._mode = self._mode, "open"
            self._state.notify_all()
        if previous == "refuse":
            self._listen()

    def delay(self, seconds: float) -> None:
        with self._state:
            self._delay = seconds

    def close(self) -> None:
        with self._state:
            self._closed = True
            self._state.notify_all()
            listener, self._listener = self._listener, None
            sockets, threads = list(self._sockets), list(self._threads)
        if listener is not None:
            listener.close()
        for sock in sockets:
            self._drop(sock)
        for thread in threads:
            thread.join(timeout=5)
