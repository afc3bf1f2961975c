"""A small client of etcd's v3 JSON gateway (``POST /v3/...``), stdlib only.

Why our own client: etcd3gw talks to one endpoint, its watch never ends when
etcd dies or compacts, and it has no per-call timeout; gRPC clients warn when
the process forks, and the daemon forks workers. The gateway is HTTP/1.1 and
JSON, so ``http.client`` is enough (the approach of Patroni's etcd3 backend):

* Every call has a deadline per endpoint attempt (``timeout``) and moves on to
  the next endpoint when one does not answer; the next call starts at the
  endpoint that answered last. When each endpoint failed once, the call raises
  ``Unavailable`` naming every endpoint's error. Nothing waits forever.
* A watch is one streaming POST on a connection of its own that always ends:
  ``Compacted``, ``Unavailable`` (the link broke, or was silent for
  ``idle_timeout``), or ``StopIteration`` after ``close()``. The caller then
  re-reads the prefix and watches again from the revision that read returned.

Keys are str (UTF-8), values bytes; the gateway's base64 and its int64 fields
sent as strings stay inside this module.

A write whose answer was lost (timeout, reset) may still have been applied,
and is then sent to the next endpoint: a txn may find its own earlier effect
(its compare fails), a revoke may find the lease already gone. Callers keep
writes verifiable (txn compares on revisions) instead of trusting a single
answer; the same holds for any etcd client.
"""

from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from supervise.frozen import frozen

Json = dict[str, Any]
T = TypeVar("T")

# gRPC codes after which another member may well answer: DeadlineExceeded, Unavailable
# ("no leader", "leader changed", "request timed out").
_TRY_ELSEWHERE_CODES = frozenset({4, 14})
# Messages after which authenticating again (once) should help: the member lost our token
# (simple tokens live in memory and die with a restart) or never got one.
_TOKEN_MESSAGES = ("invalid auth token", "user name is empty", "revision of auth store is old")
_AUTH_MESSAGES = ("authentication failed", "permission denied", "invalid auth token", "user name is empty")
_IDLE_CONNECTIONS_PER_ENDPOINT = 8
# A pooled connection the server closed while idle fails like this on its next use, before
# etcd saw the request: one retry on a fresh connection is safe.
_STALE_CONNECTION = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.BadStatusLine)


# ---------------------------------------------------------------- results and errors


@frozen
class KeyValue:
    """One key as etcd stores it; revisions say when it was created and last changed."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@frozen
class WatchEvent:
    """A change seen by a watch: for "delete", ``kv.value`` is b"" and ``kv.mod_revision``
    is the revision of the delete."""

    kind: str  # "put" or "delete"
    kv: KeyValue


class EtcdError(Exception):
    """Base of this module's errors; the message says what failed and on which endpoint(s)."""


class Unavailable(EtcdError):
    """No endpoint answered in time (each was tried once), or a watch's link broke or went silent."""


class LeaseNotFound(EtcdError):
    """The lease expired or was revoked: whatever it kept alive is gone."""


class Compacted(EtcdError):
    """The watch's start revision is compacted away: re-read, then watch from the new revision."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class AuthFailed(EtcdError):
    """Wrong user or password, or the user may not do this."""


class _TryElsewhere(Exception):
    """This endpoint did not answer (or cannot serve now); the text says why."""


# ---------------------------------------------------------------- transactions

_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}
_TARGET_FIELDS = {
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VERSION": "version",
    "VALUE": "value",
    "LEASE": "lease",
}


def _result_of(op: str) -> str:
    try:
        return _RESULTS[op]
    except KeyError:
        raise ValueError(f"compare operator {op!r}: expected one of {', '.join(_RESULTS)}") from None


@frozen
class Compare:
    """One condition of a txn: ``target`` of ``key`` compared (``result``) with ``operand``.

    The operand field is not called ``value`` because ``Compare.value(...)`` is the
    constructor of VALUE comparisons, and a slotted dataclass cannot have both.
    A key that does not exist has create/mod revision, version and lease 0, which
    makes ``Compare.create(key, "=", 0)`` the "nobody holds it" test of an election.
    """

    key: str
    target: str  # CREATE | MOD | VERSION | VALUE | LEASE
    result: str  # EQUAL | GREATER | LESS | NOT_EQUAL
    operand: int | bytes

    def __post_init__(self) -> None:
        if self.target not in _TARGET_FIELDS:
            raise ValueError(f"compare target {self.target!r}: expected one of {', '.join(_TARGET_FIELDS)}")
        if self.result not in _RESULTS.values():
            raise ValueError(f"compare result {self.result!r}: expected one of {', '.join(_RESULTS.values())}")
        wanted = bytes if self.target == "VALUE" else int
        if not isinstance(self.operand, wanted) or isinstance(self.operand, bool):
            raise TypeError(f"compare {self.target} needs a {wanted.__name__} operand, got {self.operand!r}")

    @classmethod
    def create(cls, key: str, op: str, revision: int) -> Compare:
        return cls(key, "CREATE", _result_of(op), revision)

    @classmethod
    def mod(cls, key: str, op: str, revision: int) -> Compare:
        return cls(key, "MOD", _result_of(op), revision)

    @classmethod
    def version(cls, key: str, op: str, version: int) -> Compare:
        return cls(key, "VERSION", _result_of(op), version)

    @classmethod
    def value(cls, key: str, op: str, value: bytes | str) -> Compare:
        return cls(key, "VALUE", _result_of(op), _bytes(value))

    @classmethod
    def lease(cls, key: str, op: str, lease: int) -> Compare:
        return cls(key, "LEASE", _result_of(op), lease)

    def to_json(self) -> Json:
        operand = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {"key": _b64(self.key), "target": self.target, "result": self.result,
                _TARGET_FIELDS[self.target]: operand}


@frozen
class Op:
    """One operation of a txn branch; build it with ``Op.put``, ``Op.delete`` or ``Op.get``."""

    kind: str  # "put" | "delete" | "get"
    key: str
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("put", "delete", "get"):
            raise ValueError(f"txn op kind {self.kind!r}: expected put, delete or get")

    @staticmethod
    def put(key: str, value: bytes | str, lease: int = 0) -> Op:
        return Op("put", key, _bytes(value), lease)

    @staticmethod
    def delete(key: str, prefix: bool = False) -> Op:
        return Op("delete", key, prefix=prefix)

    @staticmethod
    def get(key: str, prefix: bool = False) -> Op:
        return Op("get", key, prefix=prefix)

    def to_json(self) -> Json:
        if self.kind == "put":
            request: Json = {"key": _b64(self.key), "value": _b64(self.value)}
            if self.lease:
                request["lease"] = str(self.lease)
            return {"request_put": request}
        if self.kind == "delete":
            return {"request_delete_range": _range(self.key, self.prefix)}
        return {"request_range": _range(self.key, self.prefix)}


@frozen
class TxnResult:
    """Which branch ran, at which revision, and each op's answer in order:
    get -> its KeyValues, put -> None, delete -> how many keys it deleted."""

    succeeded: bool
    revision: int
    responses: list[list[KeyValue] | int | None]


# ---------------------------------------------------------------- encoding


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _b64(value: bytes | str) -> str:
    return base64.b64encode(_bytes(value)).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix": the prefix with its last byte
    incremented, trailing 0xff bytes dropped first; b"\\0" (to the end of the keyspace) when
    no byte can be incremented."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def _range(key: str, prefix: bool) -> Json:
    raw = _bytes(key)
    if not prefix:
        return {"key": _b64(raw)}
    # The empty prefix is every key: etcd rejects an empty key, and b"\0".."\0" is the whole keyspace.
    return {"key": _b64(raw or b"\0"), "range_end": _b64(prefix_end(raw))}


def _kv(raw: Json) -> KeyValue:
    return KeyValue(
        key=_unb64(raw.get("key", "")).decode("utf-8", "surrogateescape"),
        value=_unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _revision(data: Json) -> int:
    return int((data.get("header") or {}).get("revision", 0))


def _error_of(data: object, raw: bytes, status: int) -> tuple[int, str]:
    """(gRPC code, message) of a gateway error: unary bodies are {"error", "message", "code"},
    streams send {"error": {"grpc_code", "message", ...}}; anything else is the HTTP status."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return int(error.get("grpc_code", 2)), str(error.get("message", error))
        if error or "code" in data:
            return int(data.get("code", 2)), str(data.get("message") or error)
    text = raw[:200].decode("utf-8", "replace").strip()
    return (14 if status >= 500 else 2), f"HTTP {status}: {text or 'no body'}"


def _refusal(result: Json) -> tuple[int, str] | None:
    """(gRPC code, reason) of a watch etcd canceled for another cause than compaction, else None.

    Such a cancel (bad token, permission) names its code only inside the text:
    "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token".
    """
    if not result.get("canceled") or int(result.get("compact_revision", 0)):
        return None
    reason = str(result.get("cancel_reason") or "no reason given")
    code = 16 if "code = Unauthenticated" in reason else 7 if "code = PermissionDenied" in reason else 2
    return code, reason


def _final_error(code: int, message: str, context: str) -> EtcdError:
    text = f"{context}: {message} (gRPC code {code})"
    if "lease not found" in message:
        return LeaseNotFound(text)
    if code == 16 or any(m in message for m in _AUTH_MESSAGES):
        return AuthFailed(text)
    return EtcdError(text)


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# ---------------------------------------------------------------- endpoints and connections


@frozen
class _Endpoint:
    url: str  # normalised: scheme://host:port
    https: bool
    host: str
    port: int


def _parse_endpoint(text: object, tls: bool) -> _Endpoint:
    if not isinstance(text, str):
        raise TypeError(f"etcd endpoint {text!r}: expected a str like 'http://127.0.0.1:2379'")
    usage = "expected [http[s]://]host:port, e.g. http://127.0.0.1:2379"
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw):
        raise ValueError(f"etcd endpoint {text!r}: {usage}")
    parts = urlsplit(raw if "://" in raw else f"{'https' if tls else 'http'}://{raw}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"etcd endpoint {text!r}: scheme must be http or https ({usage})")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"etcd endpoint {text!r}: the port must be a number in 1..65535") from None
    if not parts.hostname or not port:
        raise ValueError(f"etcd endpoint {text!r}: needs a host and a port ({usage})")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"etcd endpoint {text!r}: no path, query or user part allowed ({usage})")
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return _Endpoint(f"{parts.scheme}://{shown}:{port}", parts.scheme == "https", host, port)


class _Deadline:
    """When the exchange under way on a connection must be over (time.monotonic)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = math.inf

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left


class _DeadlineReader(io.RawIOBase):
    """Reads a socket, each recv waiting only until the deadline.

    A socket timeout bounds each recv, not the whole answer: a peer trickling
    bytes could stretch a call far past its timeout. This bounds the total.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.remaining())
        return self._sock.recv_into(buffer)


class _Response(http.client.HTTPResponse):
    """An HTTP response read through a _DeadlineReader."""

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                 url: str | None = None, *, deadline: _Deadline) -> None:
        super().__init__(sock, debuglevel, method, url)
        self.fp.close()
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _Conn:
    """One HTTP connection to one endpoint, with the deadline its exchange obeys."""

    def __init__(self, index: int, endpoint: _Endpoint, context: ssl.SSLContext | None) -> None:
        self.index = index
        self.deadline = _Deadline()
        self.http: http.client.HTTPConnection
        if endpoint.https:
            self.http = http.client.HTTPSConnection(endpoint.host, endpoint.port, context=context)
        else:
            self.http = http.client.HTTPConnection(endpoint.host, endpoint.port)
        self.http.response_class = cast(
            type[http.client.HTTPResponse], functools.partial(_Response, deadline=self.deadline)
        )
        self.used = False  # it carried an exchange before: the server may have closed it since

    def exchange(self, path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        """POST and read the status line and headers, connecting first if needed, by the deadline."""
        remaining = self.deadline.remaining()
        if self.http.sock is None:
            self.http.timeout = remaining  # bounds connect (and the TLS handshake)
        else:
            self.http.sock.settimeout(remaining)
        self.used = True
        self.http.request("POST", path, body, headers)
        return self.http.getresponse()

    def shutdown(self) -> None:
        """Wake a thread blocked reading this connection (it sees end of stream); thread-safe."""
        sock = self.http.sock
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
            except OSError:
                pass  # already closed by its reader: nothing left to wake

    def close(self) -> None:
        self.http.close()
        self.used = False


# ---------------------------------------------------------------- the client


class Etcd:
    """A client of an etcd cluster's v3 JSON gateway, shared by many threads.

    Unary calls borrow a pooled keep-alive connection for their endpoint (one per
    concurrent caller); each watch has its own connection.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 1.0, ca: str | None = None,
                 cert: str | None = None, key: str | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        """endpoints: "http://h:2379", "https://h:2379" or "h:2379" (https when ca or cert is given);
        timeout: seconds one endpoint gets per call; ca/cert/key: PEM files for TLS; user/password:
        etcd authentication (the token is fetched on the first call and again when etcd rejects it)."""
        if isinstance(endpoints, (str, bytes)):
            raise TypeError(f"etcd endpoints must be a list of str, not one string: {endpoints!r}")
        if not timeout > 0:
            raise ValueError(f"etcd timeout must be > 0 seconds, got {timeout!r}")
        if key is not None and cert is None:
            raise ValueError("etcd client key given without a client cert")
        if (user is None) != (password is None):
            raise ValueError("etcd user and password go together: give both or neither")
        parsed: list[_Endpoint] = []
        for text in endpoints:
            endpoint = _parse_endpoint(text, tls=ca is not None or cert is not None)
            if endpoint not in parsed:
                parsed.append(endpoint)
        if not parsed:
            raise ValueError("no etcd endpoints given")
        self._endpoints = tuple(parsed)
        self.endpoints: tuple[str, ...] = tuple(e.url for e in parsed)
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if any(e.https for e in parsed):
            self._ssl = ssl.create_default_context(cafile=ca)
            if cert is not None:
                self._ssl.load_cert_chain(cert, key)
        self._user = user
        self._password = password
        self._lock = threading.Lock()
        self._preferred = 0  # index of the endpoint that answered last
        self._token: str | None = None  # None: not authenticated yet; "": auth not needed
        self._idle: list[list[_Conn]] = [[] for _ in parsed]
        self._closed = False

    def __repr__(self) -> str:
        return f"Etcd({list(self.endpoints)!r}, timeout={self.timeout!r})"

    def __enter__(self) -> Etcd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- keys

    def get(self, key: str) -> KeyValue | None:
        kvs = self._call("get", "/v3/kv/range", _range(key, False)).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under prefix in key order, and the revision they were read at: the
        revision to watch from (+1) so that no change is missed."""
        data = self._call("get_prefix", "/v3/kv/range", _range(prefix, True))
        return [_kv(kv) for kv in data.get("kvs") or []], _revision(data)

    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Store value under key (bound to lease, if not 0); returns the revision of the write."""
        return _revision(self._call("put", "/v3/kv/put", Op.put(key, value, lease).to_json()["request_put"]))

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete key (or every key under it); returns how many keys were deleted."""
        return int(self._call("delete", "/v3/kv/deleterange", _range(key, prefix)).get("deleted", 0))

    def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """If every compare holds, run the success ops, else the failure ops; atomically."""
        request = {
            "compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure],
        }
        data = self._call("txn", "/v3/kv/txn", request)
        responses: list[list[KeyValue] | int | None] = []
        for item in data.get("responses") or []:
            if "response_range" in item:
                responses.append([_kv(kv) for kv in item["response_range"].get("kvs") or []])
            elif "response_delete_range" in item:
                responses.append(int(item["response_delete_range"].get("deleted", 0)))
            else:
                responses.append(None)
        return TxnResult(bool(data.get("succeeded", False)), _revision(data), responses)

    def compact(self, revision: int, physical: bool = False) -> None:
        """Drop the history before revision (tests use it to provoke Compacted)."""
        self._call("compact", "/v3/kv/compaction", {"revision": str(revision), "physical": physical})

    # ---- leases

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease; returns (id, ttl granted), which etcd may raise to its minimum."""
        data = self._call("grant", "/v3/lease/grant", {"TTL": str(ttl)})
        if data.get("error"):
            raise EtcdError(f"etcd grant: {data['error']}")
        return int(data["ID"]), int(data["TTL"])

    def keepalive(self, lease: int) -> int:
        """Renew lease once; returns the TTL it has again. LeaseNotFound when it is gone."""
        data = self._call("keepalive", "/v3/lease/keepalive", {"ID": str(lease)})
        ttl = int((data.get("result") or data).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(f"etcd keepalive: lease {lease:#x} not found (expired or revoked)")
        return ttl

    def revoke(self, lease: int) -> None:
        """End lease now, deleting every key bound to it. LeaseNotFound if it is already gone."""
        self._call("revoke", "/v3/lease/revoke", {"ID": str(lease)})

    # ---- watch

    def watch(self, prefix: str, start_revision: int, *, idle_timeout: float = 5.0) -> Watch:
        """Watch every key under prefix from start_revision (0: from now on).

        Connecting follows the rules of a call (timeout, every endpoint once); after
        that the Watch yields batches until it ends with an error: see Watch.
        """
        if not idle_timeout > 0:
            raise ValueError(f"etcd watch idle_timeout must be > 0 seconds, got {idle_timeout!r}")
        create = {**_range(prefix, True), "start_revision": str(start_revision), "progress_notify": True}
        body = json.dumps({"create_request": create}).encode()
        return self._over_endpoints(
            "watch", lambda index: self._open_watch(index, body, start_revision, idle_timeout)
        )

    def _open_watch(self, index: int, body: bytes, start_revision: int, idle_timeout: float) -> Watch:
        endpoint = self._endpoints[index]
        conn = _Conn(index, endpoint, self._ssl)  # never pooled: the stream keeps it
        reauthenticated = False
        while True:
            token = self._ensure_token(index)
            conn.deadline.at = time.monotonic() + self.timeout
            try:
                response = conn.exchange("/v3/watch", body, self._headers(token))
                raw = response.read() if response.status != 200 else response.readline()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise _TryElsewhere(_describe(e, self.timeout)) from e
            if response.status == 200 and not raw:
                conn.close()
                raise _TryElsewhere("the watch stream ended before etcd created the watch")
            try:
                message = json.loads(raw)
            except ValueError:
                message = None
            if response.status == 200 and isinstance(message, dict) and "error" not in message:
                refusal = _refusal(message.get("result") or {})
                if refusal is None:
                    break
                code, text = refusal  # e.g. a token this member does not know
            else:
                code, text = _error_of(message, raw, response.status)
            conn.close()
            self._judge(code, text, "watch", endpoint, may_reauthenticate=not reauthenticated)
            reauthenticated = True
        with self._lock:
            self._preferred = index
        result = message.get("result") or {}
        pending = [] if result.get("created") and not result.get("canceled") and not result.get("events") else [message]
        last = _revision(result) if start_revision <= 0 else start_revision - 1
        return Watch(conn, response, endpoint.url, start_revision, idle_timeout, last, pending)

    # ---- diagnostics

    def status(self) -> dict[str, Any]:
        """/v3/maintenance/status of the endpoint that answered (its url added as "endpoint")."""
        holder: list[str] = []

        def attempt(index: int) -> Json:
            data = self._call_endpoint(index, "status", "/v3/maintenance/status", b"{}")
            holder.append(self._endpoints[index].url)
            return data

        data = self._over_endpoints("status", attempt)
        data["endpoint"] = holder[-1]
        return data

    def close(self) -> None:
        """Close the pooled connections; calls made after this fail. Open watches live on."""
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle for conn in conns]
            for conns in self._idle:
                conns.clear()
        for conn in idle:
            conn.close()

    # ---- the machinery of a call

    def _call(self, what: str, path: str, request: Json) -> Json:
        body = json.dumps(request).encode()
        return self._over_endpoints(what, lambda index: self._call_endpoint(index, what, path, body))

    def _over_endpoints(self, what: str, attempt: Callable[[int], T]) -> T:
        """attempt(index) on each endpoint in turn from the preferred one, until one answers."""
        with self._lock:
            if self._closed:
                raise EtcdError(f"etcd {what}: the client is closed")
            first = self._preferred
        failures: list[str] = []
        count = len(self._endpoints)
        for step in range(count):
            index = (first + step) % count
            try:
                result = attempt(index)
            except _TryElsewhere as e:
                failures.append(f"{self._endpoints[index].url}: {e}")
                continue
            with self._lock:
                self._preferred = index
            return result
        raise Unavailable(f"etcd {what}: no endpoint answered ({'; '.join(failures)})")

    def _call_endpoint(self, index: int, what: str, path: str, body: bytes) -> Json:
        endpoint = self._endpoints[index]
        reauthenticated = False
        while True:
            token = self._ensure_token(index)
            status, raw = self._post(index, path, body, token)
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            # Streaming endpoints (keepalive) answer 200 with {"error": {...}} inside.
            if status == 200 and isinstance(data, dict) and not isinstance(data.get("error"), dict):
                return data
            code, message = _error_of(data, raw, status)
            self._judge(code, message, what, endpoint, may_reauthenticate=not reauthenticated)
            reauthenticated = True

    def _judge(self, code: int, message: str, what: str, endpoint: _Endpoint, *, may_reauthenticate: bool) -> None:
        """Decide on an error answer: return to retry after authenticating again, or raise."""
        if code in _TRY_ELSEWHERE_CODES:
            raise _TryElsewhere(f"{message} (gRPC code {code})")
        if self._user is not None and may_reauthenticate and any(m in message for m in _TOKEN_MESSAGES):
            with self._lock:
                self._token = None
            return
        raise _final_error(code, message, f"etcd {what} on {endpoint.url}")

    def _ensure_token(self, index: int) -> str:
        """The token to send ("" for none), authenticating first when we have none yet."""
        if self._user is None:
            return ""
        with self._lock:
            token = self._token
        if token is not None:
            return token
        request = json.dumps({"name": self._user, "password": self._password}).encode()
        status, raw = self._post(index, "/v3/auth/authenticate", request, "")
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status == 200 and isinstance(data, dict):
            token = str(data.get("token") or "")
        else:
            code, message = _error_of(data, raw, status)
            if "authentication is not enabled" in message:
                token = ""
            elif code in _TRY_ELSEWHERE_CODES:
                raise _TryElsewhere(f"authenticate: {message} (gRPC code {code})")
            else:
                raise AuthFailed(f"etcd authenticate as {self._user!r} on {self._endpoints[index].url}: {message}")
        with self._lock:
            self._token = token
        return token

    @staticmethod
    def _headers(token: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        return headers

    def _post(self, index: int, path: str, body: bytes, token: str) -> tuple[int, bytes]:
        """One exchange with one endpoint within self.timeout: (HTTP status, body).
        Raises _TryElsewhere when the endpoint does not answer."""
        conn = self._checkout(index)
        conn.deadline.at = time.monotonic() + self.timeout
        headers = self._headers(token)
        while True:
            reused = conn.used
            try:
                response = conn.exchange(path, body, headers)
                raw = response.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if reused and isinstance(e, _STALE_CONNECTION):
                    continue  # closed by the server while pooled: once more on a fresh connection
                self._drop_idle(index)  # they went to the same dead or silent place
                raise _TryElsewhere(_describe(e, self.timeout)) from e
            if response.will_close:
                conn.close()
            else:
                self._checkin(conn)
            return response.status, raw

    def _checkout(self, index: int) -> _Conn:
        with self._lock:
            if self._idle[index]:
                return self._idle[index].pop()
        return _Conn(index, self._endpoints[index], self._ssl)

    def _checkin(self, conn: _Conn) -> None:
        with self._lock:
            idle = self._idle[conn.index]
            if not self._closed and len(idle) < _IDLE_CONNECTIONS_PER_ENDPOINT:
                idle.append(conn)
                return
        conn.close()

    def _drop_idle(self, index: int) -> None:
        with self._lock:
            idle, self._idle[index] = self._idle[index], []
        for conn in idle:
            conn.close()


class Watch:
    """Batches of WatchEvent under a prefix, from one streaming connection, until it ends.

    ``next()`` blocks until the next batch; it raises Compacted when the start
    revision was compacted, Unavailable when the connection breaks or ends or
    when nothing at all (not even a progress notification) arrived within
    ``idle_timeout`` - a silent link must end a watch, never hang it - and
    StopIteration after ``close()``. Progress notifications are asked for but
    etcd sends them only every 10 minutes by default, so on a quiet cluster
    the idle timeout ends the watch regularly: the caller re-reads and watches
    again, which also re-checks that etcd is there.

    ``last_revision``: every event up to this revision has been delivered;
    a new watch from ``last_revision + 1`` misses nothing.
    """

    def __init__(self, conn: _Conn, response: http.client.HTTPResponse, endpoint: str, start_revision: int,
                 idle_timeout: float, last_revision: int, pending: list[Json]) -> None:
        self._conn = conn
        self._response = response
        self.endpoint = endpoint
        self._start_revision = start_revision
        self.idle_timeout = idle_timeout
        self.last_revision = last_revision
        self._pending = pending
        self._lock = threading.Lock()
        self._ended = False  # no more batches: an error was raised, or close() was called
        self._closed = False
        self._reading = False

    def __repr__(self) -> str:
        return f"<Watch {self.endpoint} last_revision={self.last_revision}{' ended' if self._ended else ''}>"

    def __iter__(self) -> Watch:
        return self

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __next__(self) -> list[WatchEvent]:
        with self._lock:
            if self._ended:
                raise StopIteration
            self._reading = True
        try:
            while True:
                events = self._process(self._pending.pop(0) if self._pending else self._read())
                if events:
                    return events
        except EtcdError:
            with self._lock:
                self._ended = True
            raise
        finally:
            with self._lock:
                self._reading = False
                release = self._ended
            if release:
                self._conn.close()

    def close(self) -> None:
        """End the watch; a next() blocked in another thread returns promptly (StopIteration)."""
        with self._lock:
            self._closed = self._ended = True
            reading = self._reading
            if reading:
                self._conn.shutdown()  # the reader closes the connection on its way out
        if not reading:
            self._conn.close()

    def _read(self) -> Json:
        self._conn.deadline.at = time.monotonic() + self.idle_timeout
        try:
            line = self._response.readline()
        except (OSError, http.client.HTTPException) as e:
            if self._closed:
                raise StopIteration from None
            if isinstance(e, TimeoutError):
                raise Unavailable(
                    f"etcd watch on {self.endpoint}: nothing received for {self.idle_timeout:g}s "
                    "(not even a progress notification)"
                ) from None
            raise Unavailable(f"etcd watch on {self.endpoint}: connection lost ({_describe(e, 0)})") from e
        if self._closed:
            raise StopIteration
        if not line:
            raise Unavailable(f"etcd watch on {self.endpoint}: etcd ended the stream")
        try:
            message = json.loads(line)
        except ValueError:
            raise Unavailable(f"etcd watch on {self.endpoint}: unreadable message {line[:200]!r}") from None
        if not isinstance(message, dict):
            raise Unavailable(f"etcd watch on {self.endpoint}: unexpected message {line[:200]!r}")
        return cast(Json, message)

    def _process(self, message: Json) -> list[WatchEvent]:
        """The events of one message (often none), raising for errors and cancellations."""
        if message.get("error"):
            code, text = _error_of(message, b"", 200)
            context = f"etcd watch on {self.endpoint}"
            if code in _TRY_ELSEWHERE_CODES:
                raise Unavailable(f"{context}: {text} (gRPC code {code})")
            raise _final_error(code, text, context)
        result: Json = message.get("result") or {}
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0))
            if compact:
                raise Compacted(
                    f"etcd watch on {self.endpoint}: revision {self._start_revision} is compacted "
                    f"(history kept from {compact}); read again and watch from there",
                    compact,
                )
            code, reason = _refusal(result) or (2, "no reason given")
            raise _final_error(code, f"canceled by etcd: {reason}", f"etcd watch on {self.endpoint}")
        events = [_event(raw) for raw in result.get("events") or []]
        if events:
            self.last_revision = max(self.last_revision, events[-1].kv.mod_revision)
        elif not result.get("created"):
            # A progress notification: everything up to its header revision was delivered.
            self.last_revision = max(self.last_revision, _revision(result))
        return events


def _event(raw: Json) -> WatchEvent:
    return WatchEvent("delete" if raw.get("type") == "DELETE" else "put", _kv(raw.get("kv") or {}))
