import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from etcdtools import EtcdCluster, EtcdServer, TcpProxy  # noqa: E402
from nodes import Node  # noqa: E402


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A started one-member etcd with its data in tmp_path; killed after the test."""
    server = EtcdServer(tmp_path / "etcd")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A started three-member etcd cluster; every member killed after the test."""
    cluster = EtcdCluster(tmp_path / "cluster", 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """Factory: ``tcp_proxy(host, port)`` gives a forwarder; all are closed after the test."""
    made: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Factory: ``make_node(name, endpoints, apps, **options)`` gives a started daemon in the cluster.

    Every node is stopped (SIGTERM, then SIGKILL) and everything it left killed after the test; a
    process left behind fails the test.
    """
    made: list[Node] = []

    def make(name: str, endpoints: list[str], apps: str, start: bool = True, **options: object) -> Node:
        node = Node(tmp_path / name, name, endpoints, apps, **options)  # type: ignore[arg-type]
        made.append(node)
        return node.start() if start else node

    yield make
    for node in made:  # resume any paused one, so that it can drain
        if node.proc is not None and node.proc.poll() is None:
            node.resume()
    leaked = [pid for node in made for pid in node.cleanup()]
    assert not leaked, f"processes left behind after the test: {leaked}"
