"""Wire formats of the control channel, in one place, versioned.

Every message is one ZeroMQ frame holding a UTF-8 JSON object with ``"v": 1``.
Decoding is strict: anything malformed raises :class:`ProtocolError`, which
the daemon counts and answers (or drops) without ever letting it escape into
its loop. docs/protocol.md is the human-readable copy of this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024

VERBS = frozenset({"status", "start", "stop", "restart", "scale", "shutdown", "events"})


class ProtocolError(ValueError):
    """A frame that is not a valid message; the text says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Request:
    cmd: str
    targets: tuple[str, ...] = ()
    count: int | None = None  # scale
    timeout: float | None = None  # start/stop/restart/scale: give up waiting after this
    since: int = 0  # events: replay history after this sequence number
    follow: bool = False  # events: keep streaming live events after the replay
    id: object = None  # echoed back, lets a client match replies


def encode_request(req: Request) -> bytes:
    body: dict = {"v": VERSION, "cmd": req.cmd}
    if req.targets:
        body["targets"] = list(req.targets)
    for name in ("count", "timeout", "id"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.cmd == "events":
        body["since"] = req.since
        body["follow"] = req.follow
    return json.dumps(body, separators=(",", ":")).encode()


def _object(frames: list[bytes], limit: int) -> dict:
    if len(frames) != 1:
        raise ProtocolError(f"expected 1 frame, got {len(frames)}")
    raw = frames[0]
    if len(raw) > limit:
        raise ProtocolError(f"message of {len(raw)} bytes exceeds the {limit}-byte limit")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("expected a JSON object")
    if body.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {body.get('v')!r} (this daemon speaks {VERSION})")
    return body


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_request(frames: list[bytes]) -> Request:
    body = _object(frames, MAX_REQUEST_BYTES)
    cmd = body.get("cmd")
    if not isinstance(cmd, str) or cmd not in VERBS:
        raise ProtocolError(f"unknown cmd {cmd!r} (expected one of {', '.join(sorted(VERBS))})")
    targets = body.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) and 0 < len(t) <= 256 for t in targets):
        raise ProtocolError("targets must be a list of app or instance names")
    count = body.get("count")
    if count is not None and (not _is_int(count) or not 0 <= count <= 100_000):
        raise ProtocolError("count must be an integer from 0 to 100000")
    timeout = body.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                or not 0 < timeout <= 86_400):
        raise ProtocolError("timeout must be a number of seconds, 0 < timeout <= 86400")
    since = body.get("since", 0)
    if not _is_int(since) or since < 0:
        raise ProtocolError("since must be an integer >= 0")
    follow = body.get("follow", False)
    if not isinstance(follow, bool):
        raise ProtocolError("follow must be true or false")
    rid = body.get("id")
    if rid is not None and not isinstance(rid, (str, int, float)):
        raise ProtocolError("id must be a string or a number")
    return Request(cmd, tuple(targets), count, None if timeout is None else float(timeout), since, follow, rid)


def encode_reply(ok: bool, result: object = None, error: str | None = None, usage: bool = False,
                 id: object = None) -> bytes:
    body: dict = {"v": VERSION, "ok": ok}
    if ok:
        body["result"] = result
    else:
        body["error"] = error
        if usage:
            body["usage"] = True
    if id is not None:
        body["id"] = id
    return json.dumps(body, separators=(",", ":")).encode()


def encode_event(event: dict) -> bytes:
    """A live event pushed to a following ``events`` client."""
    return json.dumps({"v": VERSION, "event": event}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    result: object = None
    error: str | None = None
    usage: bool = False
    event: dict | None = None  # set on a pushed live event instead of a reply


def decode_reply(frames: list[bytes]) -> Reply:
    body = _object(frames, 1 << 30)
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
