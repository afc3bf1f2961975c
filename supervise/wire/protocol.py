"""Wire formats of the control channel, in one place, versioned.

Every message is one ZeroMQ frame holding a UTF-8 JSON object with ``"v": 1``.
Decoding is strict: anything malformed raises :class:`ProtocolError`, which
the daemon counts and answers (or drops) without ever letting it escape into
its loop. docs/protocol.md is the human-readable copy of this module.
"""

from __future__ import annotations

import json
import math
from collections import namedtuple
from collections.abc import Mapping

# Messages are namedtuples, not dataclasses: the CLI imports this module, and
# dataclasses (with inspect) would cost it more time than the request itself.
# Nor typing.NamedTuple: `typing` is not otherwise imported by the CLI, and
# costs 2-3 ms (python -X importtime, python3.11 -S).

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024

VERBS = frozenset({"status", "start", "stop", "restart", "scale", "reload", "shutdown", "events", "chaos",
                   "cluster", "signal"})
MAX_SIGNAL = 64  # Linux's signals are 1..64 (NSIG 65); the daemon refuses numbers no signal has


class ProtocolError(ValueError):
    """A frame that is not a valid message; the text says what is wrong with it."""


Request = namedtuple("Request", "cmd targets count timeout since follow id dry_run keep_workers options signal tree",
                     defaults=((), None, None, 0, False, None, False, False, None, None, False))
Request.__doc__ = """A control request. ``count``: scale's new size; ``timeout``: give up waiting
after this; ``since``/``follow``: events replay and live streaming; ``id``: echoed back;
``dry_run``: reload only says what it would do; ``keep_workers``: shutdown leaves the
workers running for the next daemon to adopt; ``options``: a flat object of a verb's
other settings (chaos: rate, duration, signal, seed, force); ``signal``: the signal
number `signal` sends; ``tree``: `signal` reaches every process of each instance's tree."""


def encode_request(req: Request) -> bytes:
    body: dict[str, object] = {"v": VERSION, "cmd": req.cmd}
    if req.targets:
        body["targets"] = list(req.targets)
    for name in ("count", "timeout", "id"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.cmd == "events":
        body["since"] = req.since
        body["follow"] = req.follow
    if req.dry_run:
        body["dry_run"] = True
    if req.keep_workers:
        body["keep_workers"] = True
    if req.options:
        body["options"] = req.options
    if req.signal is not None:
        body["signal"] = req.signal
    if req.tree:
        body["tree"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def _not_json(token: str) -> float:
    raise ProtocolError(f"{token} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number {text[:20]} is out of range")
    return value


# Strict JSON: json accepts NaN, Infinity and 1e999 (inf), which are not JSON and would come
# back out of `status --json`. (A decoder built once costs less per message than json.loads.)
_STRICT = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def _object(frames: list[bytes], limit: int, strict: bool = True) -> dict[str, object]:
    if len(frames) != 1:
        raise ProtocolError(f"expected 1 frame, got {len(frames)}")
    raw = frames[0]
    if len(raw) > limit:
        raise ProtocolError(f"message of {len(raw)} bytes exceeds the {limit}-byte limit")
    try:
        body = _STRICT.decode(raw.decode("utf-8")) if strict else json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    except ProtocolError:
        raise
    except ValueError:  # an integer of more digits than sys.get_int_max_str_digits() (4300)
        raise ProtocolError("JSON number too long") from None
    if not isinstance(body, dict):
        raise ProtocolError("expected a JSON object")
    if _as_int(body.get("v")) != VERSION:  # not true or 1.0, which == 1
        raise ProtocolError(f"unsupported protocol version {body.get('v')!r} (this daemon speaks {VERSION})")
    return body


def _as_int(value: object) -> int | None:
    """``value`` if it is a JSON integer, else None: Python counts True as the integer 1."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def decode_request(frames: list[bytes]) -> Request:
    body = _object(frames, MAX_REQUEST_BYTES)
    cmd = body.get("cmd")
    if not isinstance(cmd, str) or cmd not in VERBS:
        raise ProtocolError(f"unknown cmd {cmd!r} (expected one of {', '.join(sorted(VERBS))})")
    targets = body.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) and 0 < len(t) <= 256 for t in targets):
        raise ProtocolError("targets must be a list of app or instance names")
    raw_count = body.get("count")
    count = _as_int(raw_count)
    if raw_count is not None and (count is None or not 0 <= count <= 100_000):
        raise ProtocolError("count must be an integer from 0 to 100000")
    timeout = body.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                or not 0 < timeout <= 86_400):
        raise ProtocolError("timeout must be a number of seconds, 0 < timeout <= 86400")
    since = _as_int(body.get("since", 0))
    if since is None or since < 0:
        raise ProtocolError("since must be an integer >= 0")
    follow = body.get("follow", False)
    if not isinstance(follow, bool):
        raise ProtocolError("follow must be true or false")
    rid = body.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int, float))):
        raise ProtocolError("id must be a string or a number")
    dry_run, keep = body.get("dry_run", False), body.get("keep_workers", False)
    if not isinstance(dry_run, bool) or not isinstance(keep, bool):
        raise ProtocolError("dry_run and keep_workers must be true or false")
    options = body.get("options")
    if options is not None and (not isinstance(options, dict) or len(options) > 16 or not all(
            isinstance(k, str) and len(k) <= 32 and (v is None or isinstance(v, (bool, int, float, str))) and
            (not isinstance(v, str) or len(v) <= 64) for k, v in options.items())):
        raise ProtocolError("options must be an object of at most 16 scalar fields")
    raw_signal = body.get("signal")
    sig = _as_int(raw_signal)
    if raw_signal is not None and (sig is None or not 0 < sig <= MAX_SIGNAL):
        raise ProtocolError(f"signal must be a signal number from 1 to {MAX_SIGNAL}")
    tree = body.get("tree", False)
    if not isinstance(tree, bool):
        raise ProtocolError("tree must be true or false")
    return Request(cmd, tuple(targets), count, None if timeout is None else float(timeout), since, follow, rid,
                   dry_run, keep, options, sig, tree)


def encode_reply(ok: bool, result: object = None, error: str | None = None, usage: bool = False,
                 id: object = None) -> bytes:
    body: dict[str, object] = {"v": VERSION, "ok": ok}
    if id is not None:
        body["id"] = id
    if ok:
        body["result"] = result  # last: see result_json
    else:
        body["error"] = error
        if usage:
            body["usage"] = True
    return json.dumps(body, separators=(",", ":")).encode()


_OK_RESULT = b'{"v":%d,"ok":true,"result":' % VERSION


def result_json(frames: list[bytes]) -> bytes | None:
    """An ok reply's ``result`` as the JSON text the daemon wrote, cut out instead of decoded.

    `status --json` at 5,000 instances prints 1.4 MB that it would otherwise
    decode and encode again (about 33 ms of a 110 ms command). The daemon's
    encoders write ``result`` last, after ``id`` if any, so a reply that
    begins exactly ``{"v":1,"ok":true,"result":`` holds it up to its last
    byte. None for any other reply (a refusal, an id, another shape): decode it.
    """
    if len(frames) != 1:
        return None
    raw = frames[0]
    if raw.startswith(_OK_RESULT) and raw.endswith(b"}"):
        return raw[len(_OK_RESULT):-1]
    return None


def encode_event(event: bytes) -> bytes:
    """A live event pushed to a following ``events`` client; ``event`` is its JSON (history.py)."""
    return b'{"v":%d,"event":%s}' % (VERSION, event)


def encode_events_reply(events: list[bytes], first: int, last: int, id: object = None) -> bytes:
    """The reply to ``events`` (``result``: ``events``, ``first``, ``last``), with the events
    spliced in as the JSON they are held as rather than decoded and encoded again."""
    head = b'{"v":%d,"ok":true,' % VERSION
    if id is not None:  # before the result, which comes last (result_json)
        head += b'"id":' + json.dumps(id, separators=(",", ":")).encode() + b","
    return head + b'"result":{"events":[%s],"first":%d,"last":%d}}' % (b",".join(events), first, last)


Reply = namedtuple("Reply", "ok result error usage event", defaults=(None, None, False, None))
Reply.__doc__ = """A decoded reply; ``event`` is set instead on a live event pushed to a follower."""


def decode_reply(frames: list[bytes]) -> Reply:
    body = _object(frames, 1 << 30, strict=False)
    if "event" in body:
        if not isinstance(body["event"], dict):
            raise ProtocolError("event must be an object")
        return Reply(True, event=body["event"])
    ok = body.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("reply without a boolean 'ok'")
    if ok:
        return Reply(True, body.get("result"))
    error = body.get("error")
    return Reply(False, error=str(error), usage=body.get("usage") is True)


def describe_exit(last_exit: Mapping[str, object] | None) -> str:
    """A status ``last_exit`` object as one phrase, the same wherever it is shown.

    ``"crashed (exit code 1)"``, ``"hung (signal 15)"``, ``"lost"`` (the OS
    said nothing), ``"crashed: cannot execute 'x': ..."`` (the spawn itself
    failed); ``"-"`` when there has been no exit yet (None or empty).
    The CLI's table, its messages and the daemon's replies all use this,
    so a user sees one wording for one exit.
    """
    if not last_exit:
        return "-"
    reason, code, signal, error = (last_exit.get(key) for key in ("reason", "code", "signal", "error"))
    if signal:
        text = f"{reason} (signal {signal})"
    elif code is not None:
        text = f"{reason} (exit code {code})"
    else:
        text = str(reason)
    return f"{text}: {error}" if error else text


# -- worker environment --------------------------------------------------------------
#
# What the daemon sets in every worker's environment (DESIGN.md): the worker
# library reads them, the daemon writes them, adoption reads them back from
# /proc. The names are the contract; docs/protocol.md lists them too.

ENV_APP = "SUPERVISE_APP"
"""The app's name."""
ENV_INSTANCE = "SUPERVISE_INSTANCE"
"""The instance's index in its app, from 0, as decimal text."""
ENV_NAME = "SUPERVISE_NAME"
"""The instance's name, ``app:index`` (``web:0``); heartbeats carry it."""
ENV_HEARTBEAT = "SUPERVISE_HEARTBEAT"
"""The daemon's heartbeat endpoint, ``ipc://<state_dir>/heartbeat.sock``."""
ENV_TOKEN = "SUPERVISE_TOKEN"
"""This spawn's secret; a heartbeat with another token is ignored (and counted)."""
ENV_HEARTBEAT_INTERVAL = "SUPERVISE_HEARTBEAT_INTERVAL"
"""Seconds between beats, as decimal text."""
ENV_FENCING_TOKEN = "SUPERVISE_FENCING_TOKEN"
"""A cluster instance's fencing token, decimal: strictly increasing per slot across every placement
(the etcd revision that placed it here), so a database or lock can refuse a stale holder."""
ENV_FENCING_DEADLINE = "SUPERVISE_FENCING_DEADLINE"
"""A singleton's deadline on the host's monotonic clock (CLOCK_MONOTONIC seconds, decimal): the
worker stops by itself when it passes unrenewed (``fence`` messages extend it)."""
ENV_ROLE = "SUPERVISE_ROLE"
"""``"spare"`` (``ROLE_SPARE``) for a warm spare: started, ready and idle until a ``promote`` message
gives it a slot; absent for an active instance."""
ENV_PORT = "SUPERVISE_PORT"
"""The instance's own port (the app's ``port`` + index), decimal text: set for instances of apps with
a ``port`` key; absent for a spare, which learns its port from the ``promote`` message."""

ROLE_SPARE = "spare"
"""The value of ``SUPERVISE_ROLE`` that makes a worker a spare."""


# -- heartbeat channel ---------------------------------------------------------------
#
# Workers connect a DEALER to the daemon's ROUTER at $SUPERVISE_HEARTBEAT and
# send one-frame JSON messages; the daemon answers only with a drain request.

MAX_HEARTBEAT_BYTES = 16 * 1024
MAX_STATUS_FIELDS = 32
MAX_STATUS_TEXT = 256
HEARTBEAT_TYPES = frozenset({"ready", "beat", "drained"})


Heartbeat = namedtuple("Heartbeat", "type name token pid status ready", defaults=(None, None, False))
Heartbeat.__doc__ = """One message from a worker: ``ready`` (startup done, also a beat), ``beat``
(alive; optional status fields; ``ready`` once the worker has said so, so that a daemon
that took over from a dead one learns it too), or ``drained`` (no work in flight, stop me now)."""


def encode_heartbeat(msg: Heartbeat) -> bytes:
    body: dict[str, object] = {"v": VERSION, "type": msg.type, "name": msg.name, "token": msg.token}
    if msg.pid is not None:
        body["pid"] = msg.pid
    if msg.status:
        body["status"] = msg.status
    if msg.ready and msg.type == "beat":
        body["ready"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def decode_heartbeat(frames: list[bytes]) -> Heartbeat:
    body = _object(frames, MAX_HEARTBEAT_BYTES)
    kind, name, token = body.get("type"), body.get("name"), body.get("token")
    if not isinstance(kind, str) or kind not in HEARTBEAT_TYPES:  # a list or dict is unhashable
        raise ProtocolError(f"unknown heartbeat type {kind!r}")
    if not isinstance(name, str) or not 0 < len(name) <= 256:
        raise ProtocolError("name must be the instance name, e.g. \"web:0\"")
    if not isinstance(token, str) or not 0 < len(token) <= 256:
        raise ProtocolError("token must be the SUPERVISE_TOKEN string")
    raw_pid = body.get("pid")
    pid = _as_int(raw_pid)
    if raw_pid is not None and (pid is None or pid <= 0):
        raise ProtocolError("pid must be a positive integer")
    status = body.get("status")
    if status is not None:
        if not isinstance(status, dict) or len(status) > MAX_STATUS_FIELDS:
            raise ProtocolError(f"status must be an object of at most {MAX_STATUS_FIELDS} fields")
        for key, value in status.items():
            if len(key) > 64 or not (value is None or isinstance(value, (bool, int, float))
                                     or (isinstance(value, str) and len(value) <= MAX_STATUS_TEXT)):
                raise ProtocolError(f"status field {key[:64]!r} must be a number, boolean, null "
                                    f"or a string of at most {MAX_STATUS_TEXT} characters")
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise ProtocolError("ready must be true or false")
    return Heartbeat(kind, name, token, pid, status, ready)


DRAIN = json.dumps({"v": VERSION, "type": "drain"}, separators=(",", ":")).encode()
"""Daemon -> worker: finish in-flight work, then send ``drained`` (or just exit)."""


def fence_message(until: float) -> bytes:
    """Daemon -> singleton worker: the lease was renewed, run until ``until`` (monotonic seconds)."""
    return json.dumps({"v": VERSION, "type": "fence", "until": until}, separators=(",", ":")).encode()


def promote_message(name: str, index: int, port: int | None) -> bytes:
    """Daemon -> spare worker: take over slot ``index`` as ``name`` (serving on ``port``, if the app has one)."""
    return json.dumps({"v": VERSION, "type": "promote", "name": name, "index": index, "port": port},
                      separators=(",", ":")).encode()


def decode_daemon_message(frames: list[bytes]) -> str:
    """The type of a message from the daemon to a worker (``drain``, ``fence``, ``promote``)."""
    return _daemon_body(frames)[0]


def decode_fence(frames: list[bytes]) -> float:
    """The ``until`` of a ``fence`` message."""
    kind, body = _daemon_body(frames)
    until = body.get("until")
    if kind != "fence" or isinstance(until, bool) or not isinstance(until, (int, float)) \
            or not math.isfinite(until):
        raise ProtocolError("a fence message needs a finite number until")
    return float(until)


def decode_promote(frames: list[bytes]) -> tuple[str, int, int | None]:
    """The ``(name, index, port)`` of a ``promote`` message. Strict, because a spare acts on it:
    a wrong name would make every later message of the worker be rejected."""
    kind, body = _daemon_body(frames)
    if kind != "promote":
        raise ProtocolError(f"expected a promote message, got type {kind!r}")
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 256:
        raise ProtocolError("name must be the instance name, e.g. \"web:2\"")
    index = _as_int(body.get("index"))
    if index is None or index < 0:
        raise ProtocolError("index must be an integer >= 0")
    raw_port = body.get("port")
    port = _as_int(raw_port)
    if raw_port is not None and (port is None or not 0 < port <= 65535):
        raise ProtocolError("port must be null or an integer from 1 to 65535")
    return name, index, port


def _daemon_body(frames: list[bytes]) -> tuple[str, dict[str, object]]:
    body = _object(frames, MAX_HEARTBEAT_BYTES)
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message without a type")
    return kind, body
