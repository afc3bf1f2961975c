"""supervise.curve on real TCP sockets: only listed client keys get through to a CURVE ROUTER.

The handshake outcome is read from a socket monitor on the server, so every
"gets nothing" below is first proven by libzmq reporting that handshake as
failed, not inferred from a silence of some length.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import zmq
from helpers import wait_until
from zmq.utils.monitor import recv_monitor_message

from supervise.wire import curve
from supervise.wire.curve import CurveError, KeyPair

TIMEOUT = 5.0
HANDSHAKE_MS = 2000  # a handshake still unfinished by then fails (and is reported): no wait is open-ended
QUIET_MS = 200  # after libzmq reported the handshake failed: a last look that nothing slipped through
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclass
class Server:
    sock: zmq.Socket
    auth: curve.ServerAuth
    keys: KeyPair
    allowed: KeyPair
    endpoint: str
    monitor: zmq.Socket

    def next_handshake(self) -> zmq.Event:
        """The outcome of the next handshake on the server, as libzmq reports it."""
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            if self.monitor.poll(int(left * 1000) + 1):
                event = recv_monitor_message(self.monitor)["event"]
                if event & HANDSHAKE_EVENTS:
                    return zmq.Event(event)
        raise AssertionError(f"no handshake on the server within {TIMEOUT}s")

    def receives_nothing(self) -> bool:
        return self.sock.poll(QUIET_MS) == 0


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    # Every socket is closed by the fixtures below (their teardown runs first),
    # so term() returning proves nothing, the ZAP thread included, kept one open.
    context.term()


@pytest.fixture
def server(ctx: zmq.Context) -> Iterator[Server]:
    with contextlib.ExitStack() as stack:
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        stack.callback(sock.close)
        keys, allowed = curve.generate(), curve.generate()
        auth = curve.secure_server(sock, keys, [allowed.public], ctx)
        stack.callback(lambda: (auth.stop(), _assert_stopped(auth)))  # runs after the socket is closed
        stack.callback(sock.close)  # closed before the handler stops: the order secure_server asks for
        monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        monitor.linger = 0
        stack.callback(monitor.close)
        stack.callback(sock.disable_monitor)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        yield Server(sock, auth, keys, allowed, f"tcp://127.0.0.1:{port}", monitor)


def _assert_stopped(auth: curve.ServerAuth) -> None:
    assert not auth.running, "the ZAP handler thread outlived stop()"


@pytest.fixture
def client(ctx: zmq.Context, server: Server) -> Iterator[Callable[..., zmq.Socket]]:
    """Factory: a DEALER, set up by ``secure`` (None: no CURVE at all), connected to the server."""
    made: list[zmq.Socket] = []

    def make(secure: Callable[[zmq.Socket], None] | None) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndtimeo = int(TIMEOUT * 1000)  # a send never blocks the test for good (see refused_send)
        made.append(sock)
        if secure is not None:
            secure(sock)
        sock.connect(server.endpoint)
        return sock

    yield make
    for sock in made:
        sock.close()


def as_client(keys: KeyPair, server_public: str) -> Callable[[zmq.Socket], None]:
    return lambda sock: curve.secure_client(sock, keys, server_public)


def refused_send(dealer: zmq.Socket, data: bytes) -> None:
    """A stranger's send: queued if its connection is still being set up, or refused at once when the
    server has already turned the handshake down (a DEALER with no peer would block: that is no
    failure of the server's, which is what the tests check)."""
    with contextlib.suppress(zmq.Again):
        dealer.send(data, zmq.NOBLOCK)


# -- who gets in ---------------------------------------------------------------------------


def test_an_allowed_client_exchanges_messages(server, client):
    dealer = client(as_client(server.allowed, server.keys.public))
    dealer.send(b'{"v": 1, "cmd": "status"}')
    assert server.sock.poll(int(TIMEOUT * 1000)), "the allowed client's request never arrived"
    frames = server.sock.recv_multipart(copy=False)
    assert frames[-1].bytes == b'{"v": 1, "cmd": "status"}'
    # libzmq stamps each message with the ZAP User-Id: the daemon can tell (and log, masked) who asked.
    assert frames[-1].get("User-Id") == server.allowed.public
    server.sock.send_multipart([frames[0].bytes, b'{"v": 1, "ok": true}'])
    assert dealer.poll(int(TIMEOUT * 1000)), "the reply never came back"
    assert dealer.recv() == b'{"v": 1, "ok": true}'
    assert (server.auth.accepted, server.auth.refused) == (1, 0)


def test_a_client_key_not_on_the_list_gets_nothing(server, client, caplog):
    caplog.set_level(logging.DEBUG)  # pyzmq's authenticator would log the full client key at debug
    stranger = curve.generate()
    dealer = client(as_client(stranger, server.keys.public))
    refused_send(dealer, b"let me in")
    assert server.next_handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    wait_until(lambda: server.auth.refused >= 1, timeout=TIMEOUT, message="the refusal to be counted")
    assert server.receives_nothing()
    assert dealer.poll(0) == 0
    assert server.auth.accepted == 0
    assert not [r for r in caplog.records if stranger.public in r.getMessage()]


def test_a_client_without_curve_gets_nothing(server, client):
    dealer = client(None)
    refused_send(dealer, b"let me in")
    assert server.next_handshake() == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL  # NULL against CURVE
    assert server.receives_nothing()
    assert dealer.poll(0) == 0
    # Refused by libzmq before ZAP is asked: not in the counters (see ServerAuth).
    assert (server.auth.accepted, server.auth.refused) == (0, 0)


def test_a_client_with_the_wrong_server_key_gets_nothing(server, client):
    impostor_server = curve.generate()
    dealer = client(as_client(server.allowed, impostor_server.public))  # an allowed key, the wrong server
    refused_send(dealer, b"let me in")
    assert server.next_handshake() == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL  # HELLO cannot be decrypted
    assert server.receives_nothing()
    assert dealer.poll(0) == 0
    assert (server.auth.accepted, server.auth.refused) == (0, 0)


def test_a_refused_client_does_not_disturb_an_allowed_one(server, client):
    stranger = client(as_client(curve.generate(), server.keys.public))
    refused_send(stranger, b"let me in")
    assert server.next_handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    friend = client(as_client(server.allowed, server.keys.public))
    friend.send(b"hello")
    assert server.sock.poll(int(TIMEOUT * 1000))
    assert server.sock.recv_multipart()[-1] == b"hello"
    assert server.receives_nothing()


def test_without_the_handler_nobody_gets_in(server, client):
    if not server.auth.fail_closed:
        pytest.skip("this libzmq lacks ZMQ_ZAP_ENFORCE_DOMAIN")
    server.auth.stop()
    dealer = client(as_client(server.allowed, server.keys.public))
    refused_send(dealer, b"let me in")
    # Usually refused at once (no ZAP handler to ask). The handler's inproc endpoint
    # is released asynchronously, though: a handshake that still finds it waits for
    # an answer that never comes, and fails at HANDSHAKE_IVL. Either way, nobody is let in.
    assert server.next_handshake() != zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert server.receives_nothing()
    assert dealer.poll(0) == 0


def test_plain_sockets_in_the_same_context_are_untouched(ctx, server):
    """The daemon's heartbeat ROUTER shares its context with the control socket and has no CURVE."""
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.linger = dealer.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"beat")
        assert router.poll(int(TIMEOUT * 1000))
        assert router.recv_multipart()[-1] == b"beat"
    finally:
        router.close()
        dealer.close()
    assert (server.auth.accepted, server.auth.refused) == (0, 0)


# -- misuse is refused before anything is exposed -------------------------------------------


@pytest.fixture
def router(ctx: zmq.Context) -> Iterator[zmq.Socket]:
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    yield sock
    sock.close()


def test_no_client_keys_is_refused(router):
    with pytest.raises(CurveError, match="^no client keys: nobody could connect$"):
        curve.secure_server(router, curve.generate(), [])


def test_one_string_instead_of_a_list_is_refused(router):
    with pytest.raises(CurveError, match="collection of public keys"):
        curve.secure_server(router, curve.generate(), curve.generate().public)


def test_a_bad_client_key_is_refused(router):
    with pytest.raises(CurveError, match="client key #2 is not a 40-character"):
        curve.secure_server(router, curve.generate(), [curve.generate().public, "short"])


def test_a_mismatched_server_pair_is_refused(router):
    mixed = KeyPair(curve.generate().public, curve.generate().secret)
    with pytest.raises(CurveError, match="does not belong"):
        curve.secure_server(router, mixed, [curve.generate().public])


def test_secure_server_after_bind_is_refused(router):
    router.bind_to_random_port("tcp://127.0.0.1")
    with pytest.raises(CurveError, match="before bind"):
        curve.secure_server(router, curve.generate(), [curve.generate().public])


def test_secure_client_after_connect_is_refused(ctx):
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.linger = 0
        dealer.connect("tcp://127.0.0.1:9")
        with pytest.raises(CurveError, match="before connect"):
            curve.secure_client(dealer, curve.generate(), curve.generate().public)
    finally:
        dealer.close()


def test_secure_client_with_a_bad_server_key_is_refused(ctx):
    dealer = ctx.socket(zmq.DEALER)
    try:
        with pytest.raises(CurveError, match="server public key is not a 40-character"):
            curve.secure_client(dealer, curve.generate(), "nope")
    finally:
        dealer.close(linger=0)


def test_a_second_handler_in_one_context_is_refused(ctx, server, router):
    with pytest.raises(CurveError, match="another ZAP authenticator"):
        curve.secure_server(router, curve.generate(), [curve.generate().public])


def test_another_context_is_refused(router):
    other = zmq.Context()
    try:
        with pytest.raises(CurveError, match="not the socket's context"):
            curve.secure_server(router, curve.generate(), [curve.generate().public], other)
    finally:
        other.term()
