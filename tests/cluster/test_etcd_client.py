"""supervise.cluster.etcd against a real etcd: no mocks.

Failures are made for real: SIGKILL, SIGSTOP, closed ports, and a TcpProxy
that blackholes the link. Every wait has a deadline; timing bounds are
generous, for a loaded 2-core machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from etcdtools import EtcdCluster, EtcdServer, TcpProxy, free_port, gateway, make_tls, wait_for

from supervise.cluster.etcd import (
    AuthFailed,
    Compacted,
    Compare,
    Etcd,
    EtcdError,
    LeaseNotFound,
    Op,
    TxnResult,
    Unavailable,
    Watch,
    WatchEvent,
    prefix_end,
)

ProxyFactory = Callable[[str, int], TcpProxy]


@pytest.fixture
def clients() -> Iterator[Callable[..., Etcd]]:
    """Factory of Etcd clients, all closed after the test."""
    made: list[Etcd] = []

    def make(endpoints: list[str], **options: Any) -> Etcd:
        client = Etcd(endpoints, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    """Threads for calls that block (a watch's next); the test closes what they block on."""
    pool = ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def closed_endpoint() -> str:
    """An endpoint where nothing listens: connects are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def next_batch(watch: Watch) -> list[WatchEvent] | str:
    """next(watch), with the end of the iteration as the string "stopped" (a Future cannot carry StopIteration)."""
    try:
        return next(watch)
    except StopIteration:
        return "stopped"


def collect(watch: Watch, count: int) -> list[WatchEvent]:
    """The next `count` events of a watch (its idle_timeout bounds each wait)."""
    events: list[WatchEvent] = []
    while len(events) < count:
        events += next(watch)
    return events


def error_within(future: Future[object], seconds: float) -> tuple[BaseException | None, float]:
    """The exception the future ends with, and how long after this call it ended."""
    began = time.monotonic()
    error = future.exception(timeout=seconds)
    return error, time.monotonic() - began


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "text",
    ["", "  ", "127.0.0.1", "ftp://127.0.0.1:2379", "http://127.0.0.1:port", "http://127.0.0.1:70000",
     "http://:2379", "http://127.0.0.1:2379/v3", "http://user@127.0.0.1:2379", "127.0.0.1 :2379"],
)  # fmt: skip
def test_bad_endpoint_text_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="etcd endpoint") as caught:
        Etcd([text])
    assert repr(text) in str(caught.value)


def test_configuration_mistakes_are_refused() -> None:
    with pytest.raises(TypeError, match="list of str"):
        Etcd("http://127.0.0.1:2379")
    with pytest.raises(ValueError, match="no etcd endpoints"):
        Etcd([])
    with pytest.raises(ValueError, match="timeout"):
        Etcd(["127.0.0.1:2379"], timeout=0)
    with pytest.raises(ValueError, match="user and password"):
        Etcd(["127.0.0.1:2379"], user="root")


def test_endpoints_are_normalised() -> None:
    client = Etcd(["127.0.0.1:2379", "http://localhost:2380/", "https://[::1]:2381", "127.0.0.1:2379"])
    assert client.endpoints == ("http://127.0.0.1:2379", "http://localhost:2380", "https://[::1]:2381")


def test_prefix_end() -> None:
    assert prefix_end(b"/app/") == b"/app0"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_compare_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="operator"):
        Compare.create("k", "==", 0)
    with pytest.raises(TypeError, match="bytes"):
        Compare("k", "VALUE", "EQUAL", 1)
    assert Compare.value("k", "!=", "x") == Compare("k", "VALUE", "NOT_EQUAL", b"x")


# ---------------------------------------------------------------- keys, leases, txn


def test_put_get_get_prefix_delete_round_trip(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    first = client.put("/app/a", b"1")
    client.put("/app/b", "zwei")
    client.put("/app/\u00fc", b"\x00\xff")
    client.put("/apps", b"not under /app/")

    a = client.get("/app/a")
    assert a is not None and a.value == b"1" and a.key == "/app/a"
    assert (a.create_revision, a.mod_revision, a.version, a.lease) == (first, first, 1, 0)
    assert client.get("/app/missing") is None

    kvs, revision = client.get_prefix("/app/")
    assert [(kv.key, kv.value) for kv in kvs] == [("/app/a", b"1"), ("/app/b", b"zwei"), ("/app/\u00fc", b"\x00\xff")]
    assert revision == first + 3
    assert len(client.get_prefix("")[0]) == 4

    second = client.put("/app/a", b"2")
    a = client.get("/app/a")
    assert a is not None and (a.value, a.create_revision, a.mod_revision, a.version) == (b"2", first, second, 2)

    assert client.delete("/app/a") == 1
    assert client.delete("/app/a") == 0
    assert client.delete("/app/", prefix=True) == 2
    assert client.get_prefix("/app/")[0] == []
    assert client.get("/apps") is not None


def test_lease_bound_key_vanishes_on_revoke(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    lease, ttl = client.grant(30)
    assert ttl == 30
    client.put("/lease/key", b"v", lease=lease)
    kv = client.get("/lease/key")
    assert kv is not None and kv.lease == lease
    assert 0 < client.keepalive(lease) <= 30

    client.revoke(lease)
    assert client.get("/lease/key") is None
    with pytest.raises(LeaseNotFound, match=etcd.endpoint):
        client.revoke(lease)
    with pytest.raises(LeaseNotFound):
        client.put("/lease/key", b"v", lease=lease)


def test_keepalive_of_revoked_lease_raises_lease_not_found(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    lease, _ = client.grant(30)
    client.revoke(lease)
    with pytest.raises(LeaseNotFound, match="not found"):
        client.keepalive(lease)
    with pytest.raises(LeaseNotFound):
        client.keepalive(0x1234)  # never existed


def test_txn_create_revision_compare_is_an_election(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    lease_a, _ = client.grant(30)
    lease_b, _ = client.grant(30)

    def campaign(name: str, lease: int) -> TxnResult:
        return client.txn([Compare.create("/leader", "=", 0)], [Op.put("/leader", name, lease)], [Op.get("/leader")])

    won = campaign("a", lease_a)
    assert won.succeeded and won.responses == [None] and won.revision > 0
    lost = campaign("b", lease_b)
    assert not lost.succeeded
    [holder] = lost.responses[0]  # type: ignore[misc]
    assert (holder.value, holder.lease, holder.create_revision) == (b"a", lease_a, won.revision)

    # Resign only while still the holder: value and lease must match.
    stale = client.txn([Compare.value("/leader", "=", b"b")], [Op.delete("/leader")])
    assert not stale.succeeded and stale.responses == []
    resigned = client.txn(
        [Compare.value("/leader", "=", b"a"), Compare.lease("/leader", "=", lease_a),
         Compare.version("/leader", "=", 1), Compare.mod("/leader", "<", 1 << 40)],
        [Op.delete("/leader"), Op.get("/leader", prefix=True)],
    )  # fmt: skip
    assert resigned.succeeded and resigned.responses == [1, []]

    again = campaign("b", lease_b)
    assert again.succeeded
    client.revoke(lease_b)  # the leader's death: its key goes with its lease
    assert client.get("/leader") is None


def test_many_threads_share_one_client(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                client.put(f"/threads/{n}/{i}", str(i))
                kv = client.get(f"/threads/{n}/{i}")
                assert kv is not None and kv.value == str(i).encode()
        except BaseException as e:  # noqa: BLE001 (handed to the test thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(client.get_prefix("/threads/")[0]) == 160


def test_pooled_connections_survive_an_etcd_restart(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    client.put("/restart", b"1")
    etcd.restart()
    assert client.put("/restart", b"2") > 0  # the pooled connection is stale: retried on a fresh one
    kv = client.get("/restart")
    assert kv is not None and kv.value == b"2"


# ---------------------------------------------------------------- watch


def test_watch_sees_puts_and_deletes_in_order(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    _, read_at = client.get_prefix("/w/")
    r1 = client.put("/w/a", b"1")  # before the watch: replayed from history
    r2 = client.put("/w/b", b"2")
    with client.watch("/w/", read_at + 1, idle_timeout=10) as watch:
        client.put("/other", b"not watched")
        assert client.delete("/w/a") == 1
        r3 = client.get_prefix("/w/")[1]  # the revision of the delete: nothing else writes
        r4 = client.put("/w/b", b"3")
        events = collect(watch, 4)
        assert [(e.kind, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == [
            ("put", "/w/a", b"1", r1),
            ("put", "/w/b", b"2", r2),
            ("delete", "/w/a", b"", r3),
            ("put", "/w/b", b"3", r4),
        ]
        assert events[3].kv.version == 2 and events[3].kv.create_revision == r2
        assert watch.last_revision == r4
    with pytest.raises(StopIteration):
        next(watch)


def test_watch_from_now_starts_after_the_current_revision(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    before = client.put("/now/old", b"x")
    with client.watch("/now/", 0, idle_timeout=10) as watch:
        assert watch.last_revision == before
        after = client.put("/now/new", b"y")
        [event] = next(watch)
        assert (event.kv.key, event.kv.mod_revision) == ("/now/new", after)


def test_watch_raises_compacted_past_its_start_revision(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint])
    first = client.put("/c/k", b"1")
    client.put("/c/k", b"2")
    last = client.put("/c/k", b"3")
    gateway(etcd.endpoint, "/v3/kv/compaction", {"revision": str(last)})
    watch = client.watch("/c/", first, idle_timeout=10)
    with pytest.raises(Compacted, match="compacted") as caught:
        next(watch)
    assert caught.value.compact_revision == last
    with pytest.raises(StopIteration):
        next(watch)

    with pytest.raises(EtcdError, match="compacted"):  # compacting again: etcd's error, passed on
        client.compact(last)


def test_watch_ends_unavailable_when_etcd_is_killed(
    etcd: EtcdServer, clients: Callable[..., Etcd], background: ThreadPoolExecutor
) -> None:
    client = clients([etcd.endpoint])
    idle = 3.0
    watch = client.watch("/kill/", 0, idle_timeout=idle)
    pending = background.submit(next_batch, watch)
    etcd.kill()
    error, elapsed = error_within(pending, idle + 10)
    assert isinstance(error, Unavailable), error
    assert elapsed < idle + 1
    assert etcd.endpoint in str(error)


def test_watch_ends_unavailable_when_etcd_hangs(
    etcd: EtcdServer, clients: Callable[..., Etcd], background: ThreadPoolExecutor
) -> None:
    client = clients([etcd.endpoint])
    idle = 1.0
    watch = client.watch("/hang/", 0, idle_timeout=idle)
    etcd.pause()
    began = time.monotonic()
    error = background.submit(next_batch, watch).exception(timeout=idle + 10)
    elapsed = time.monotonic() - began
    etcd.resume()
    assert isinstance(error, Unavailable) and "nothing received for 1s" in str(error), error
    assert idle * 0.9 <= elapsed < idle + 1


def test_watch_ends_unavailable_when_the_link_is_blackholed(
    etcd: EtcdServer, clients: Callable[..., Etcd], tcp_proxy: ProxyFactory, background: ThreadPoolExecutor
) -> None:
    proxy = tcp_proxy("127.0.0.1", etcd.client_port)
    client = clients([proxy.endpoint])
    direct = clients([etcd.endpoint])
    idle = 1.5
    watch = client.watch("/bh/", 0, idle_timeout=idle)
    direct.put("/bh/k", b"1")
    assert [e.kv.value for e in next(watch)] == [b"1"]  # the link works

    proxy.cut("blackhole")
    began = time.monotonic()
    pending = background.submit(next_batch, watch)
    direct.put("/bh/k", b"2")  # an event the partition swallows
    error, _ = error_within(pending, idle + 10)
    elapsed = time.monotonic() - began
    assert isinstance(error, Unavailable) and "nothing received" in str(error), error
    assert idle * 0.9 <= elapsed < idle + 1

    proxy.restore()  # the caller's recovery: re-read, watch again from where the last watch got
    kvs, _ = client.get_prefix("/bh/")
    assert [kv.value for kv in kvs] == [b"2"]
    with client.watch("/bh/", watch.last_revision + 1, idle_timeout=10) as again:
        assert [e.kv.value for e in next(again)] == [b"2"]


def test_watch_close_from_another_thread_unblocks_next(
    etcd: EtcdServer, clients: Callable[..., Etcd], background: ThreadPoolExecutor
) -> None:
    client = clients([etcd.endpoint])
    watch = client.watch("/close/", 0, idle_timeout=60)
    pending = background.submit(next_batch, watch)
    wait_for(lambda: watch._reading, 10, "next() to block in its read")
    began = time.monotonic()
    watch.close()
    assert pending.result(timeout=10) == "stopped"
    assert time.monotonic() - began < 1.0
    with pytest.raises(StopIteration):
        next(watch)
    watch.close()  # idempotent


def test_progress_notifications_keep_a_quiet_watch_alive(
    tmp_path: Path, clients: Callable[..., Etcd], background: ThreadPoolExecutor
) -> None:
    server = EtcdServer(tmp_path / "etcd", extra_args=["--experimental-watch-progress-notify-interval", "200ms"])
    try:
        server.start()
        client = clients([server.endpoint])
        revision = client.put("/quiet/k", b"1")
        watch = client.watch("/other/", revision + 1, idle_timeout=1.0)
        pending = background.submit(next_batch, watch)
        # Quiet for well over idle_timeout: only progress notifications arrive, and they count.
        quiet_until = time.monotonic() + 2.5
        while time.monotonic() < quiet_until:
            assert not pending.done(), pending.exception()
            time.sleep(0.1)
        assert watch.last_revision == revision
        watch.close()
        assert pending.result(timeout=10) == "stopped"
    finally:
        server.stop()


# ---------------------------------------------------------------- endpoints failing


def test_dead_first_endpoint_fails_over_to_the_second(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    dead = closed_endpoint()
    client = clients([dead, etcd.endpoint], timeout=1.0)
    client.put("/failover", b"1")
    kv = client.get("/failover")
    assert kv is not None and kv.value == b"1"
    assert client.status()["endpoint"] == etcd.endpoint


def test_all_endpoints_dead_is_unavailable_within_bounded_time(clients: Callable[..., Etcd]) -> None:
    endpoints = [closed_endpoint() for _ in range(3)]
    timeout = 0.5
    client = clients(endpoints, timeout=timeout)
    began = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        client.get("/x")
    assert time.monotonic() - began < 3 * timeout * len(endpoints)
    message = str(caught.value)
    assert "etcd get: no endpoint answered" in message
    assert all(f"{endpoint}: connection refused" in message for endpoint in endpoints), message
    with pytest.raises(Unavailable):
        client.watch("/x/", 0)


def test_blackholed_endpoint_times_out_and_the_good_one_is_remembered(
    etcd: EtcdServer, clients: Callable[..., Etcd], tcp_proxy: ProxyFactory
) -> None:
    proxy = tcp_proxy("127.0.0.1", etcd.client_port)
    proxy.cut("blackhole")
    timeout = 1.5

    alone = clients([proxy.endpoint], timeout=timeout)
    began = time.monotonic()
    with pytest.raises(Unavailable, match=f"{proxy.endpoint}: no answer within 1.5s"):
        alone.get("/bh")
    assert timeout * 0.9 <= time.monotonic() - began < 3 * timeout

    both = clients([proxy.endpoint, etcd.endpoint], timeout=timeout)
    began = time.monotonic()
    both.put("/bh", b"1")
    assert time.monotonic() - began >= timeout * 0.9  # waited for the blackhole first
    began = time.monotonic()
    kv = both.get("/bh")
    assert time.monotonic() - began < timeout * 0.9  # then started at the one that answered
    assert kv is not None and kv.value == b"1"

    proxy.restore()
    assert alone.get("/bh") is not None


def test_refused_proxy_and_a_slow_link(
    etcd: EtcdServer, clients: Callable[..., Etcd], tcp_proxy: ProxyFactory
) -> None:
    proxy = tcp_proxy("127.0.0.1", etcd.client_port)
    client = clients([proxy.endpoint], timeout=1.0)
    client.put("/slow", b"1")  # a pooled connection through the proxy now exists

    proxy.cut("refuse")
    with pytest.raises(Unavailable, match="connection refused"):
        client.get("/slow")
    proxy.restore()
    assert client.get("/slow") is not None

    proxy.delay(0.1)  # latency below the timeout is fine
    assert client.get("/slow") is not None
    proxy.delay(0.8)  # 0.8s each way: more than the 1s a call may take
    began = time.monotonic()
    with pytest.raises(Unavailable, match="no answer within 1s"):
        client.get("/slow")
    assert time.monotonic() - began < 3.0


def test_paused_etcd_times_out_rather_than_hangs(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    client = clients([etcd.endpoint], timeout=0.5)
    client.put("/paused", b"1")
    etcd.pause()
    try:
        began = time.monotonic()
        with pytest.raises(Unavailable, match="no answer within 0.5s"):
            client.put("/paused", b"2")
        assert time.monotonic() - began < 1.5
    finally:
        etcd.resume()
    assert client.get("/paused") is not None


def test_cluster_keeps_working_after_the_leader_is_killed(
    etcd_cluster: EtcdCluster, clients: Callable[..., Etcd]
) -> None:
    client = clients(etcd_cluster.endpoints, timeout=1.0)
    client.put("/cluster/before", b"1")
    watch = client.watch("/cluster/", 0, idle_timeout=10)
    leader = etcd_cluster.leader()
    leader.kill()

    deadline = time.monotonic() + 30
    while True:
        try:
            revision = client.put("/cluster/after", b"2")
            break
        except EtcdError:
            assert time.monotonic() < deadline, "no write succeeded within 30s of the leader's death"
            time.sleep(0.05)
    kv = client.get("/cluster/before")
    assert kv is not None and kv.value == b"1"
    assert etcd_cluster.leader() is not leader

    # A watch on the killed member ends; one on the survivors sees the write.
    if watch.endpoint == leader.endpoint:
        with pytest.raises(Unavailable):
            collect(watch, 1)
        watch = client.watch("/cluster/", revision, idle_timeout=10)
    [event] = collect(watch, 1)
    assert (event.kv.key, event.kv.mod_revision) == ("/cluster/after", revision)
    watch.close()


# ---------------------------------------------------------------- TLS and auth


def test_tls_with_client_certificate(tmp_path: Path, clients: Callable[..., Etcd]) -> None:
    tls = make_tls(tmp_path / "tls")
    server = EtcdServer(tmp_path / "etcd", tls=tls)
    try:
        server.start()
        bare = server.endpoint.removeprefix("https://")
        client = clients([bare], ca=str(tls.ca), cert=str(tls.client_cert), key=str(tls.client_key))
        assert client.endpoints == (server.endpoint,)
        revision = client.put("/tls", b"1")
        with client.watch("/tls", revision, idle_timeout=10) as watch:
            assert [e.kv.value for e in next(watch)] == [b"1"]

        no_cert = clients([server.endpoint], ca=str(tls.ca), timeout=1.0)
        with pytest.raises(Unavailable, match=server.endpoint):
            no_cert.get("/tls")
    finally:
        server.stop()


def test_user_and_password(etcd: EtcdServer, clients: Callable[..., Etcd]) -> None:
    for path, body in (
        ("/v3/auth/user/add", {"name": "root", "password": "rootpw"}),
        ("/v3/auth/role/add", {"name": "root"}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
        ("/v3/auth/enable", {}),
    ):
        gateway(etcd.endpoint, path, body)

    client = clients([etcd.endpoint], user="root", password="rootpw")
    revision = client.put("/auth", b"1")
    with client.watch("/auth", revision, idle_timeout=10) as watch:
        assert [e.kv.value for e in next(watch)] == [b"1"]

    # A token the member does not know (expired, or the member lost it): authenticate again, once.
    client._token = "stale.1"
    assert client.put("/auth", b"2") > revision
    client._token = "stale.2"
    with client.watch("/auth", revision, idle_timeout=10) as watch:
        assert len(next(watch)) >= 1

    with pytest.raises(AuthFailed, match="authentication failed"):
        clients([etcd.endpoint], user="root", password="wrong").get("/auth")
    with pytest.raises(AuthFailed, match="user name is empty"):
        clients([etcd.endpoint]).get("/auth")
