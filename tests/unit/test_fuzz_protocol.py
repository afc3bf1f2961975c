"""Property tests of every parser of untrusted bytes on the wire.

protocol.decode_request / decode_heartbeat (the daemon reading clients and
workers), decode_reply / decode_daemon_message (the CLI and workers reading
the daemon) and supervise.zmtp (the CLI's own ZMTP client) get arbitrary
frames: each either returns its message or raises its own error class
(ProtocolError, ZmtpError), never anything else. Valid messages round-trip.

Hypothesis prints the falsifying example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import json
import math
import struct
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from supervise.wire import protocol, zmtp
from supervise.wire.protocol import Heartbeat, ProtocolError, Request

FAST = settings(max_examples=200, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
QUICK = settings(FAST, max_examples=100)

# -- JSON building blocks ----------------------------------------------------------------

EDGE_TEXT = st.sampled_from(["", "\x00", "\ud800", "\udfff", "\U0001F600", "\u202e", "\ufeff",
                             "é", "e\u0301", "\uffff", "web:0", "x" * 256, "x" * 257, "a" * 64, "a" * 65])
TEXT = st.one_of(st.text(max_size=40), EDGE_TEXT)
NUMBERS = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 2, 100_000, 100_001,
                                                                                      86_400, 86_400.0001, 1e-320]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)

# Raw JSON texts json.dumps never writes: non-standard tokens, numbers past every limit, deep nesting.
RAW_VALUES = st.one_of(
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "0x10", "01", "+1",
                     "1.", ".5", "tru", "nul", '"\\ud800"', '"\\u0000"', '"\\x41"', "'single'", "[1,]", "{,}",
                     '"unterminated', "]", "}", "", "\x00"]),
    st.integers(4290, 4400).map(lambda n: "9" * n),  # around sys.get_int_max_str_digits()
    st.integers(1, 20_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 5_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(1, 20_000).map(lambda n: "[" * n),
)


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def with_raw(body: dict, key: str, raw: str) -> bytes:
    """``body`` as JSON, ``key``'s value replaced by a raw JSON text (possibly invalid)."""
    return json.dumps({**body, key: "@@"}, separators=(",", ":")).replace('"@@"', raw, 1).encode("utf-8", "replace")


REQUEST_FIELDS = ("v", "cmd", "targets", "count", "timeout", "since", "follow", "id", "dry_run", "keep_workers",
                  "options")
HEARTBEAT_FIELDS = ("v", "type", "name", "token", "pid", "status", "ready")
VALID_REQUEST = {"v": 1, "cmd": "scale", "targets": ["web"], "count": 3, "timeout": 5, "id": "x",
                 "options": {"rate": "2/s", "seed": 7}}
VALID_HEARTBEAT = {"v": 1, "type": "beat", "name": "web:0", "token": "t0k", "pid": 42, "status": {"q": 1},
                   "ready": True}


@st.composite
def mutated(draw, valid: dict, fields: tuple[str, ...]) -> bytes:
    """A valid body with fields replaced by values of any type, removed, or added."""
    body = dict(valid)
    for key in draw(st.lists(st.sampled_from(fields), max_size=4)):
        match draw(st.sampled_from(["replace", "delete", "raw"])):
            case "replace":
                body[key] = draw(st.one_of(JSON, st.sampled_from(list(protocol.VERBS | protocol.HEARTBEAT_TYPES))))
            case "delete":
                body.pop(key, None)
            case "raw":
                return with_raw(body, key, draw(RAW_VALUES))
    body.update(draw(st.dictionaries(TEXT, JSON, max_size=3)))
    return dumps(body)


def sized(limit: int) -> st.SearchStrategy[bytes]:
    """A well-formed request padded to within a few bytes of ``limit``, on either side."""
    head, tail = b'{"v":1,"cmd":"status","type":"beat","name":"a","token":"b","id":"', b'"}'
    return st.integers(-3, 3).map(lambda d: head + b"x" * (limit + d - len(head) - len(tail)) + tail)


def frame_strategy(valid: dict, fields: tuple[str, ...], limit: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        mutated(valid, fields),
        JSON.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
        RAW_VALUES.map(lambda raw: raw.encode("utf-8", "replace")),
        st.tuples(mutated(valid, fields), st.integers(0, 10_000)).map(lambda t: t[0][: t[1]]),  # truncated
        st.tuples(mutated(valid, fields), st.binary(min_size=1, max_size=4), st.integers(0, 400))
        .map(lambda t: t[0][: t[2]] + t[1] + t[0][t[2]:]),  # a stray (often invalid UTF-8) byte inside
        st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig"]).map(
            lambda enc: json.dumps(valid).encode(enc)),
        sized(limit),
    )


def frames_strategy(valid: dict, fields: tuple[str, ...], limit: int) -> st.SearchStrategy[list[bytes]]:
    frame = frame_strategy(valid, fields, limit)
    return st.one_of(frame.map(lambda f: [f]), st.lists(frame, max_size=5))


# -- decode_request -----------------------------------------------------------------------


def check_request(req: Request) -> None:
    """What a decoded request promises the daemon."""
    assert isinstance(req, Request)
    assert req.cmd in protocol.VERBS
    assert isinstance(req.targets, tuple) and all(isinstance(t, str) and 0 < len(t) <= 256 for t in req.targets)
    assert req.count is None or (type(req.count) is int and 0 <= req.count <= 100_000)
    assert req.timeout is None or (type(req.timeout) is float and 0 < req.timeout <= 86_400)
    assert type(req.since) is int and req.since >= 0
    assert all(type(flag) is bool for flag in (req.follow, req.dry_run, req.keep_workers))
    assert req.id is None or type(req.id) in (str, int, float)
    assert type(req.id) is not float or math.isfinite(req.id)
    if req.options is not None:
        assert isinstance(req.options, dict) and len(req.options) <= 16
        for key, value in req.options.items():
            assert isinstance(key, str) and len(key) <= 32
            assert value is None or type(value) in (bool, int, float, str)
            assert not isinstance(value, str) or len(value) <= 64
            assert not isinstance(value, float) or math.isfinite(value)


def normalized(req: Request) -> Request:
    """What encode_request keeps: since and follow only mean something to `events`; no options is None."""
    req = req._replace(options=req.options or None)
    return req if req.cmd == "events" else req._replace(since=0, follow=False)


@FAST
@given(frames_strategy(VALID_REQUEST, REQUEST_FIELDS, protocol.MAX_REQUEST_BYTES))
def test_decode_request_returns_a_request_or_raises_protocol_error(frames: list[bytes]) -> None:
    try:
        req = protocol.decode_request(frames)
    except ProtocolError:
        return
    check_request(req)
    assert protocol.decode_request([protocol.encode_request(req)]) == normalized(req)


REQUEST_IDS = st.one_of(st.none(), st.text(max_size=20), st.integers(-(2**64), 2**64),
                        st.floats(allow_nan=False, allow_infinity=False))


OPTION_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64),
                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=64))


@st.composite
def requests(draw) -> Request:
    cmd = draw(st.sampled_from(sorted(protocol.VERBS)))
    events = cmd == "events"
    return Request(
        cmd=cmd,
        targets=tuple(draw(st.lists(st.text(min_size=1, max_size=256).filter(lambda t: 0 < len(t) <= 256)
                                    | EDGE_TEXT.filter(lambda t: 0 < len(t) <= 256), max_size=4))),
        count=draw(st.none() | st.integers(0, 100_000)),
        timeout=draw(st.none() | st.floats(min_value=1e-9, max_value=86_400)),
        since=draw(st.integers(0, 2**63)) if events else 0,
        follow=draw(st.booleans()) if events else False,
        id=draw(REQUEST_IDS),
        dry_run=draw(st.booleans()),
        keep_workers=draw(st.booleans()),
        options=draw(st.none() | st.dictionaries(st.text(max_size=32), OPTION_VALUES, min_size=1, max_size=16)),
    )


@FAST
@given(requests())
def test_request_round_trip(req: Request) -> None:
    assert protocol.decode_request([protocol.encode_request(req)]) == req


# -- decode_heartbeat ---------------------------------------------------------------------

STATUS_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64),
                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=256))


@st.composite
def heartbeats(draw) -> Heartbeat:
    kind = draw(st.sampled_from(sorted(protocol.HEARTBEAT_TYPES)))
    name_text = st.text(min_size=1, max_size=256) | EDGE_TEXT.filter(lambda t: 0 < len(t) <= 256)
    return Heartbeat(
        type=kind,
        name=draw(name_text),
        token=draw(name_text),
        pid=draw(st.none() | st.integers(1, 2**64)),
        status=draw(st.none() | st.dictionaries(st.text(max_size=64), STATUS_VALUES, min_size=1, max_size=32)),
        ready=draw(st.booleans()) if kind == "beat" else False,
    )


def check_heartbeat(msg: Heartbeat) -> None:
    assert isinstance(msg, Heartbeat)
    assert msg.type in protocol.HEARTBEAT_TYPES
    assert isinstance(msg.name, str) and 0 < len(msg.name) <= 256
    assert isinstance(msg.token, str) and 0 < len(msg.token) <= 256
    assert msg.pid is None or (type(msg.pid) is int and msg.pid > 0)
    assert type(msg.ready) is bool
    if msg.status is not None:
        assert isinstance(msg.status, dict) and len(msg.status) <= protocol.MAX_STATUS_FIELDS
        for key, value in msg.status.items():
            assert isinstance(key, str) and len(key) <= 64
            assert value is None or type(value) in (bool, int, str) or (type(value) is float and math.isfinite(value))
            assert not isinstance(value, str) or len(value) <= protocol.MAX_STATUS_TEXT


@FAST
@given(frames_strategy(VALID_HEARTBEAT, HEARTBEAT_FIELDS, protocol.MAX_HEARTBEAT_BYTES))
def test_decode_heartbeat_returns_a_heartbeat_or_raises_protocol_error(frames: list[bytes]) -> None:
    try:
        msg = protocol.decode_heartbeat(frames)
    except ProtocolError:
        return
    check_heartbeat(msg)
    again = protocol.decode_heartbeat([protocol.encode_heartbeat(msg)])
    assert again == msg._replace(status=msg.status or None, ready=msg.ready and msg.type == "beat")


@FAST
@given(heartbeats())
def test_heartbeat_round_trip(msg: Heartbeat) -> None:
    encoded = protocol.encode_heartbeat(msg)
    assume(len(encoded) <= protocol.MAX_HEARTBEAT_BYTES)
    assert protocol.decode_heartbeat([encoded]) == msg


@FAST
@given(st.sampled_from(HEARTBEAT_FIELDS + REQUEST_FIELDS),
       st.one_of(JSON.map(lambda v: json.dumps(v)), RAW_VALUES))
def test_every_field_with_every_type(field: str, raw: str) -> None:
    """Each field of a valid message given a value of every type, or raw text: never a crash."""
    for valid, decode in ((VALID_HEARTBEAT, protocol.decode_heartbeat), (VALID_REQUEST, protocol.decode_request)):
        try:
            check = check_heartbeat if decode is protocol.decode_heartbeat else check_request
            check(decode([with_raw(valid, field, raw)]))
        except ProtocolError:
            pass


POISON = {"nan": "NaN", "infinity": "Infinity", "-infinity": "-Infinity", "1e999": "1e999",
          "4301-digits": "9" * 4301, "open-5000": "[" * 5000, "array-5000": "[" * 5000 + "]" * 5000,
          "object-3000": '{"a":' * 3000 + "1" + "}" * 3000}


@pytest.mark.parametrize("raw", POISON.values(), ids=POISON.keys())
@pytest.mark.parametrize("decode", [protocol.decode_request, protocol.decode_heartbeat,
                                    protocol.decode_daemon_message, protocol.decode_reply],
                         ids=["request", "heartbeat", "daemon_message", "reply"])
def test_known_poison(decode, raw: str) -> None:
    """Each of these once escaped as RecursionError, ValueError or TypeError (or passed, NaN)."""
    for field in ("v", "type", "cmd", "id", "status", "event", "result"):
        try:
            decode([with_raw({"v": 1, "cmd": "status", "type": "beat", "name": "a", "token": "b", "ok": True},
                             field, raw)])
        except ProtocolError:
            pass
    with pytest.raises(ProtocolError):
        decode([raw.encode()])


STRICT = {  # decode_heartbeat let these through (or raised TypeError, for a list or object type)
    "type-list": b'{"v":1,"type":[],"name":"a","token":"b"}',
    "type-object": b'{"v":1,"type":{},"name":"a","token":"b"}',
    "v-true": b'{"v":true,"type":"beat","name":"a","token":"b"}',
    "v-1.0": b'{"v":1.0,"type":"beat","name":"a","token":"b"}',
    "status-NaN": b'{"v":1,"type":"beat","name":"a","token":"b","status":{"x":NaN}}',
    "status-1e999": b'{"v":1,"type":"beat","name":"a","token":"b","status":{"x":1e999}}',
    "utf-16": '{"v":1,"type":"beat","name":"a","token":"b"}'.encode("utf-16"),
}


@pytest.mark.parametrize("frame", STRICT.values(), ids=STRICT.keys())
def test_heartbeat_strictness(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_heartbeat([frame])


# -- the client side: replies and daemon messages -------------------------------------------

REPLY_BODIES = st.one_of(
    st.fixed_dictionaries({"v": st.just(1), "ok": st.booleans()}, optional={
        "result": JSON, "error": JSON, "usage": JSON, "id": JSON, "event": JSON}),
    st.builds(dict, st.dictionaries(TEXT, JSON, max_size=4)),
)


@FAST
@given(st.one_of(REPLY_BODIES.map(lambda b: [json.dumps(b).encode("utf-8", "surrogatepass")]),
                 frames_strategy({"v": 1, "ok": False, "error": "e", "usage": True}, ("v", "ok", "error", "usage",
                                                                                      "result", "event"), 1 << 16)))
def test_decode_reply_and_daemon_message_never_crash(frames: list[bytes]) -> None:
    try:
        reply = protocol.decode_reply(frames)
    except ProtocolError:
        pass
    else:
        assert isinstance(reply, protocol.Reply) and type(reply.ok) is bool
        assert reply.event is None or isinstance(reply.event, dict)
        assert reply.ok or isinstance(reply.error, str)
    try:
        assert isinstance(protocol.decode_daemon_message(frames), str)
    except ProtocolError:
        pass


@QUICK
@given(st.booleans(), JSON.filter(lambda v: not (isinstance(v, float) and math.isnan(v))), st.text(max_size=50),
       st.booleans(), st.none() | st.text(max_size=10) | st.integers())
def test_reply_round_trip(ok: bool, result: object, error: str, usage: bool, rid: object) -> None:
    assume(not _has_nan(result))
    reply = protocol.decode_reply([protocol.encode_reply(ok, result, error, usage, id=rid)])
    assert reply == (protocol.Reply(True, result) if ok else protocol.Reply(False, error=error, usage=usage))


@QUICK
@given(st.booleans(), JSON.filter(lambda v: not (isinstance(v, float) and math.isnan(v))), st.text(max_size=50),
       st.none() | st.text(max_size=10) | st.integers())
def test_result_json_cuts_out_exactly_the_result_or_declines(ok: bool, result: object, error: str,
                                                             rid: object) -> None:
    """What `status --json` prints: the result's own JSON when the reply is ok and carries no id;
    otherwise None, and the caller decodes."""
    assume(not _has_nan(result))
    raw = protocol.result_json([protocol.encode_reply(ok, result, error, id=rid)])
    if ok and rid is None:
        assert raw is not None and json.loads(raw) == result
    else:
        assert raw is None


@QUICK
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_result_json_never_crashes(frames: list[bytes]) -> None:
    raw = protocol.result_json(frames)
    assert raw is None or isinstance(raw, bytes)


def _has_nan(value: object) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, list):
        return any(map(_has_nan, value))
    if isinstance(value, dict):
        return any(map(_has_nan, value.values()))
    return False


# -- zmtp: the CLI's client reading whatever is on the other end of the socket -------------

GREETING = zmtp._GREETING


class FakeSocket:
    """Plays back ``data`` in the given chunk sizes, then EOF; swallows what is sent."""

    def __init__(self, data: bytes, chunks: list[int]) -> None:
        self.data, self.chunks, self.sent = data, chunks, bytearray()

    def settimeout(self, _timeout: float | None) -> None:
        pass

    def recv(self, limit: int) -> bytes:
        size = min(limit, self.chunks.pop(0) if self.chunks else limit)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


def frame_bytes(flags: int, body: bytes, long: bool | None = None) -> bytes:
    if long is None:
        long = len(body) > 255
    return (struct.pack(">BQ", flags | 0x02, len(body)) if long else struct.pack(">BB", flags, len(body))) + body


def command_bytes(name: bytes, body: bytes) -> bytes:
    return frame_bytes(0x04, bytes([len(name)]) + name + body)


def properties(props: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(bytes([len(n)]) + n + struct.pack(">I", len(v)) + v for n, v in props)


def ready(socket_type: bytes = b"ROUTER", extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    return command_bytes(b"READY", properties([(b"Socket-Type", socket_type), *extra]))


@st.composite
def greetings(draw) -> bytes:
    """Mostly-valid ZMTP greetings, one field at a time made wrong."""
    parts = [b"\xff", b"\x00" * 8, b"\x7f", b"\x03", b"\x01", b"NULL".ljust(20, b"\x00"), b"\x00", b"\x00" * 31]
    for index in draw(st.lists(st.integers(0, len(parts) - 1), max_size=2)):
        parts[index] = draw(st.binary(min_size=len(parts[index]), max_size=len(parts[index])))
    if draw(st.booleans()):
        parts[5] = draw(st.sampled_from([b"CURVE", b"PLAIN", b"NULL\x00x", b"", b"null"])).ljust(20, b"\x00")
    return b"".join(parts)


@st.composite
def zmtp_frames(draw) -> bytes:
    """One frame or command as a peer might send it: valid, lying about its size, or odd."""
    kind = draw(st.sampled_from(["message", "command", "ready", "ping", "error", "bad-flags", "lying-size", "raw"]))
    body = draw(st.binary(max_size=300))
    match kind:
        case "message":
            return frame_bytes(draw(st.sampled_from([0, 1])), body, draw(st.none() | st.booleans()))
        case "command":
            name = draw(st.sampled_from([b"PONG", b"SUBSCRIBE", b"", b"X" * 255, b"READY"]))
            return command_bytes(name, body) if len(name) < 255 else frame_bytes(0x04, b"\xff" + name[:10])
        case "ready":
            props = draw(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=20)), max_size=3))
            raw = properties(props)
            if draw(st.booleans()) and raw:
                raw = raw[: draw(st.integers(0, len(raw) - 1))]  # truncated properties
            socket_type = draw(st.sampled_from([b"ROUTER", b"DEALER", b"PUB", b"", b"router"]))
            return command_bytes(b"READY", properties([(b"Socket-Type", socket_type)]) + raw)
        case "ping":
            return command_bytes(b"PING", body)
        case "error":
            return command_bytes(b"ERROR", body)
        case "bad-flags":
            return frame_bytes(draw(st.integers(0, 255)), body, draw(st.none() | st.booleans()))
        case "lying-size":
            size = draw(st.sampled_from([0, 1, 255, 256, zmtp.MAX_FRAME, zmtp.MAX_FRAME + 1, 2**63, 2**64 - 1]))
            return struct.pack(">BQ", draw(st.sampled_from([0x02, 0x03, 0x06])), size) + body
        case _:
            return body


STREAMS = st.one_of(
    st.binary(max_size=500),
    st.tuples(greetings(), st.lists(zmtp_frames(), max_size=6)).map(lambda t: t[0] + b"".join(t[1])),
    st.tuples(st.just(GREETING + ready()), st.lists(zmtp_frames(), max_size=8), st.binary(max_size=20))
    .map(lambda t: t[0] + b"".join(t[1]) + t[2]),
)
CHUNKS = st.lists(st.integers(1, 300), max_size=20)


@FAST
@given(STREAMS, CHUNKS)
def test_zmtp_parsing_raises_only_zmtp_error(data: bytes, chunks: list[int]) -> None:
    conn = zmtp.DealerConnection(FakeSocket(data, chunks), timeout=1.0)
    deadline = time.monotonic() + 60
    try:
        conn._handshake(deadline)
        for _ in range(20):
            message = conn.recv(60.0)
            assert message and all(isinstance(part, bytes) for part in message)
    except zmtp.ZmtpError:
        pass


@QUICK
@given(st.lists(st.lists(st.binary(max_size=400), min_size=1, max_size=4), max_size=5),
       st.lists(st.sampled_from([b"PING", b"PONG"]), max_size=3), CHUNKS)
def test_zmtp_well_formed_stream_round_trips(messages: list[list[bytes]], commands: list[bytes],
                                             chunks: list[int]) -> None:
    """Whatever the chunking, a valid stream yields exactly its messages; PINGs are answered."""
    stream = GREETING + ready(extra=[(b"Identity", b"")])
    for name in commands:
        stream += command_bytes(name, b"\x00\x10ctx")
    for message in messages:
        stream += b"".join(frame_bytes(0 if i == len(message) - 1 else 1, part) for i, part in enumerate(message))
    sock = FakeSocket(stream, chunks)
    conn = zmtp.DealerConnection(sock, timeout=1.0)
    conn._handshake(time.monotonic() + 60)
    assert [conn.recv(60.0) for _ in messages] == messages
    with pytest.raises(zmtp.ZmtpError, match="closed"):
        conn.recv(60.0)
    assert sock.sent.count(b"\x04PONGctx") == commands.count(b"PING")


@QUICK
@given(st.binary(max_size=200))
def test_zmtp_command_helpers(data: bytes) -> None:
    try:
        assert isinstance(zmtp._properties(data), dict)
    except zmtp.ZmtpError:
        pass
    assert isinstance(zmtp._reason(data), str)
    for flags in (0x04, 0x00, 0x06):
        try:
            name, rest = zmtp.DealerConnection._split_command(flags, data)
            assert isinstance(name, bytes) and isinstance(rest, bytes)
        except zmtp.ZmtpError:
            pass
