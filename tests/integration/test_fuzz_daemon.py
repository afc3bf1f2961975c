"""A live daemon under hostile traffic on its control and heartbeat sockets.

Random and malicious messages (raw pyzmq DEALER/REQ clients), floods, spoofed
heartbeats (right names, wrong or stolen tokens) and raw non-ZMTP bytes on the
unix sockets are thrown at a daemon supervising three heartbeat workers, while
a monitor thread keeps asking it for its status. The daemon must keep its pid,
keep answering, keep every untouched worker running with the same pid and a
fresh heartbeat, count what it dropped, and still restart a worker that is
killed in the middle of the flood.

The traffic comes from ``random.Random(seed)``: the seed is printed, and
``FUZZ_SEED=<seed>`` replays the same traffic. ``pytest -s`` prints the counts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import zmq
from helpers import wait_until

from supervise.wire import protocol

CONFIG = """
[apps.beat]
command = ["{python}", "{workers}/beater.py"]
instances = 3
readiness = "heartbeat"
heartbeat_timeout = "2s"
stop_timeout = "1s"
"""
NAMES = ("beat:0", "beat:1", "beat:2")
VICTIM = "beat:2"  # killed during the flood; the others must not notice a thing
HEARTBEAT_TIMEOUT = 2.0
FLOOD = 20_000  # messages at least, heartbeat and control together...
FLOOD_SECONDS = 3.0  # ...for at least this long: a stalled heartbeat reader would show
FOLLOWERS = 80  # more than the daemon keeps (64)
SEND_TIMEOUT_MS = 10_000  # a blocked send (daemon not reading at all) fails the test instead of hanging it

# JSON values of every type, for "wrong type in every field"; some are valid for some fields.
VALUES = [None, True, False, 0, 1, -1, 2, 7, 1.5, -0.0, 1e308, 10**30, -(10**30), "", "x", "beat:0", "1",
          "\u0000", "\ud800", "\U0001F600", "\u202e", "é" * 300, [], [1], ["beat"], {}, {"a": 1}, {"v": 1}]
# JSON texts json.dumps does not write: non-standard tokens, numbers past every limit, deep nesting.
RAW_TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 5000, "-" + "9" * 4400,
              "[" * 3000 + "]" * 3000, '{"a":' * 2000 + "1" + "}" * 2000, "[" * 12000, '"\\ud800"',
              '"\\u0000"', "0x10", "01", "+1", "true1", "tru", '"unterminated']
# Names of nothing that exists, some meant to confuse a lookup.
# (Non-ASCII digits are left to test_instance_names_take_ascii_digits_only.)
BOGUS_TARGETS = ["nope", "nope:0", "beat:99", "beat:-1", "beat:+1", "beat: 1", "beat:1_0", "beat:x", "beat:",
                 ":0", "beat:0:0", "\ud800", "a\u0000b", "\u202ebeat:0", "\U0001F600", "é" * 256]
BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xef\xbb\xbf", b"\x00", b"\xfe\xff"]


@dataclass
class Tally:
    """What was sent, by what the daemon should make of it."""

    hb_malformed: int = 0  # one-frame-or-more messages decode_heartbeat refuses
    hb_spoofed: int = 0  # well-formed heartbeats with a wrong, stale or stolen token
    hb_oversized: int = 0  # frames past MAXMSGSIZE: ZeroMQ drops the connection, nothing is counted
    ctl_malformed: int = 0
    ctl_oversized: int = 0
    ctl_legit: int = 0  # harmless valid requests (status, events) mixed into the flood
    ctl_bogus: int = 0  # valid requests for names that do not exist (answered with an error)
    flood: int = 0  # messages of the flood, of every kind
    req_replies: int = 0  # error replies read back on REQ sockets
    raw_connections: int = 0
    raw_bytes: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def note(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    @property
    def malicious(self) -> int:
        return (self.hb_malformed + self.hb_spoofed + self.hb_oversized + self.ctl_malformed
                + self.ctl_oversized + self.ctl_bogus + self.raw_connections)


# -- payloads -------------------------------------------------------------------------


def _dumps(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _with_raw(body: dict, key: str, raw: str) -> bytes:
    """``body`` as JSON with ``key``'s value replaced by a raw JSON text."""
    text = json.dumps({**body, key: "@@"}, separators=(",", ":"))
    return text.replace('"@@"', raw, 1).encode("utf-8", "surrogatepass")


def _common_garbage(rng: random.Random, valid: dict, limit: int) -> tuple[str, list[bytes]]:
    """A malformed-looking message built from a valid body; shared by both channels."""
    kind = rng.choice(["bytes", "truncated", "version", "wrong-type", "raw-token", "deep", "multipart",
                       "empty", "utf8", "utf16", "not-object", "missing", "extra-keys", "huge-string"])
    encoded = _dumps(valid)
    match kind:
        case "bytes":
            frames = [rng.randbytes(rng.randint(0, 2000))]
        case "truncated":
            frames = [encoded[: rng.randrange(len(encoded))]]
        case "version":
            frames = [_dumps({**valid, "v": rng.choice([0, 2, -1, "1", None, 1.5, 10**20, [1], {"v": 1}])})]
        case "wrong-type":
            frames = [_dumps({**valid, rng.choice(list(valid)): rng.choice(VALUES)})]
        case "raw-token":
            frames = [_with_raw(valid, rng.choice(list(valid)), rng.choice(RAW_TOKENS))]
        case "deep":
            depth = rng.randint(100, limit // 2 - 10)
            opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
            frames = [(opener * depth + "1" + closer * rng.choice([depth, depth // 2, 0])).encode()[:limit]]
        case "multipart":
            frames = [rng.choice([encoded, b"", rng.randbytes(8)]) for _ in range(rng.randint(2, 60))]
        case "empty":
            frames = [b""] * rng.randint(1, 3)
        case "utf8":
            cut = rng.randrange(len(encoded))
            frames = [encoded[:cut] + rng.choice(BAD_UTF8) + encoded[cut:]]
        case "utf16":
            frames = [json.dumps(valid).encode(rng.choice(["utf-16", "utf-16-be", "utf-32", "latin-1"]), "replace")]
        case "not-object":
            frames = [_dumps(rng.choice([[valid], "status", 1, None, True, [], ""]))]
        case "missing":
            body = dict(valid)
            del body[rng.choice(list(body))]
            frames = [_dumps(body)]
        case "extra-keys":
            extra = {f"k{i}": rng.choice(VALUES) for i in range(rng.randint(1, 50))}
            # Under the frame limit, or ZeroMQ drops the connection and what follows on it
            # (~9 of the escaped "é" * 300 values pass a heartbeat's 16 KiB).
            while len(frame := _dumps({**valid, **extra})) > limit:
                extra.popitem()
            frames = [frame]
        case _:  # huge-string: one field holding most of the allowed frame
            frames = [_dumps({**valid, rng.choice(list(valid)): "x" * rng.randint(200, limit - 200)})]
    return kind, frames


def heartbeat_message(rng: random.Random, tokens: dict[str, str]) -> tuple[str, list[bytes]]:
    """A hostile heartbeat: garbage, or a well-formed spoof for a real instance name."""
    name = rng.choice(NAMES)
    valid = {"v": 1, "type": rng.choice(["ready", "beat", "drained"]), "name": name,
             "token": rng.randbytes(16).hex(), "pid": rng.randint(1, 2**22)}
    if rng.random() < 0.35:  # well-formed, wrong token: must be rejected and change nothing
        if tokens and rng.random() < 0.3:  # a real token, under another instance's name
            owner = rng.choice(sorted(tokens))
            valid["token"] = tokens[owner]
            valid["name"] = rng.choice([n for n in NAMES if n != owner])
        if rng.random() < 0.3:
            valid["status"] = {"inflight": rng.randint(0, 9), "note": "spoofed"}
        return "spoof", [_dumps(valid)]
    return _common_garbage(rng, valid, protocol.MAX_HEARTBEAT_BYTES)


def control_message(rng: random.Random) -> tuple[str, list[bytes]]:
    """A hostile control request (frames as a DEALER sends them)."""
    valid = {"v": 1, "cmd": rng.choice(sorted(protocol.VERBS)), "targets": [rng.choice(NAMES)],
             "count": rng.randint(0, 5), "timeout": 5, "since": 0, "follow": False, "id": rng.randint(0, 99),
             "dry_run": True, "keep_workers": True}
    kind, frames = _common_garbage(rng, valid, protocol.MAX_REQUEST_BYTES)
    if kind == "empty" or rng.random() < 0.1:
        frames = [b""] + frames  # looks like a REQ envelope to the ROUTER
    return kind, frames


def control_body(frames: list[bytes]) -> list[bytes]:
    """The frames the daemon decodes, once it has split off a DEALER's envelope (control_server)."""
    return frames[1:] if len(frames) >= 2 and frames[0] == b"" else frames


def decodes(decoder, frames: list[bytes]) -> object | None:
    try:
        return decoder(frames)
    except Exception:  # noqa: BLE001 - a decoder bug is the unit fuzz tests' business; here: malformed
        return None


def harmless(req: protocol.Request) -> bool:
    """A valid request the flood may send: it must not change what the daemon supervises."""
    return req.cmd == "status" or (req.cmd == "events" and not req.follow)


# -- clients --------------------------------------------------------------------------


def dealer(ctx: zmq.Context, path: Path, kind: int = zmq.DEALER) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, SEND_TIMEOUT_MS)
    sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    sock.connect(f"ipc://{path}")
    return sock


def ask(sock: zmq.Socket, req: protocol.Request, timeout: float = 5.0) -> protocol.Reply:
    sock.send(protocol.encode_request(req))
    assert sock.poll(timeout * 1000), f"no reply to {req.cmd} within {timeout}s"
    return protocol.decode_reply(sock.recv_multipart()[-1:])


class Monitor(threading.Thread):
    """Asks for the status every 50 ms over its own DEALER and remembers the worst it saw."""

    def __init__(self, ctx: zmq.Context, path: Path, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.ctx, self.path, self.pids = ctx, path, pids
        self.stop = threading.Event()
        self.samples = 0
        self.max_age = {name: 0.0 for name in pids}
        self.max_latency = 0.0
        self.problems: list[str] = []
        self.last: dict = {}

    def run(self) -> None:
        sock = dealer(self.ctx, self.path)
        try:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    reply = ask(sock, protocol.Request("status"), timeout=5.0)
                except AssertionError as error:
                    self.problems.append(str(error))
                    return
                self.max_latency = max(self.max_latency, time.monotonic() - start)
                self.samples += 1
                self.last = reply.result
                self.check(reply.result)
                self.stop.wait(0.05)
        finally:
            sock.close(linger=0)

    def check(self, result: dict) -> None:
        insts = {i["name"]: i for app in result["apps"] for i in app["instances"]}
        for name, pid in self.pids.items():
            inst = insts.get(name)
            if inst is None or inst["state"] != "running" or inst["pid"] != pid or inst["restarts"]:
                self.problems.append(f"{name} changed: {inst}")
                continue
            age = inst["heartbeat_age"]
            if age is not None:
                self.max_age[name] = max(self.max_age[name], age)
                if age >= HEARTBEAT_TIMEOUT:
                    self.problems.append(f"{name} heartbeat_age {age:.2f}s")


class CliPoller(threading.Thread):
    """Runs `supervise status --json` over and over until stopped; each must answer."""

    def __init__(self, sup) -> None:
        super().__init__(daemon=True)
        self.sup = sup
        self.stop = threading.Event()
        self.calls = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            result = self.sup.cli("status", "--json", timeout=30)
            self.calls += 1
            if result.returncode != 0 or "apps" not in json.loads(result.stdout or "{}"):
                self.failures.append(f"exit {result.returncode}: {result.stderr[-300:]}")


# -- raw bytes on the unix sockets ---------------------------------------------------------

GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32


def _command(name: bytes, body: bytes) -> bytes:
    data = bytes([len(name)]) + name + body
    return struct.pack(">BB", 0x04, len(data)) + data if len(data) < 256 else struct.pack(">BQ", 0x06, len(data)) + data


def _ready(socket_type: bytes) -> bytes:
    return _command(b"READY", b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type)


def raw_streams(rng: random.Random) -> list[tuple[str, bytes]]:
    """Byte streams that are not (valid) ZMTP, each for its own connection."""
    streams = [
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("half-greeting", GREETING[: rng.randint(1, 63)]),
        ("zmtp-1.0", b"\x01\x00"),
        ("zmtp-2.0", b"\xff" + b"\x00" * 8 + b"\x7f\x01\x05" + b"\x00"),
        ("bad-signature", b"\xfe" + GREETING[1:]),
        ("version-9", GREETING[:10] + b"\x09\x09" + GREETING[12:]),
        ("mechanism-CURVE", GREETING[:12] + b"CURVE".ljust(20, b"\x00") + GREETING[32:]),
        ("mechanism-PLAIN-as-server", GREETING[:12] + b"PLAIN".ljust(20, b"\x00") + b"\x01" + GREETING[33:]),
        ("mechanism-garbage", GREETING[:12] + rng.randbytes(20) + GREETING[32:]),
        ("ready-PUB", GREETING + _ready(b"PUB")),
        ("ready-garbage-type", GREETING + _ready(rng.randbytes(30))),
        ("ready-truncated-property", GREETING + _command(b"READY", b"\x0bSocket-Type\x00\x00\xff\xff")),
        ("not-ready-command", GREETING + _command(b"HELLO", b"x")),
        ("huge-frame-claim", GREETING + _ready(b"DEALER") + struct.pack(">BQ", 0x02, 2**63 - 1) + b"x" * 100),
        ("huge-command-claim", GREETING + struct.pack(">BQ", 0x06, 2**40)),
        ("bad-flags", GREETING + _ready(b"DEALER") + b"\xf8\x05hello"),
        ("message-before-ready", GREETING + b"\x00\x05hello"),
        ("long-then-close", GREETING + _ready(b"DEALER") + struct.pack(">BQ", 0x02, 10**6) + b"x" * 1000),
        ("ping-garbage", GREETING + _ready(b"DEALER") + _command(b"PING", rng.randbytes(rng.randint(0, 300)))),
        ("zeros", b"\x00" * rng.randint(1, 5000)),
        ("ones", b"\xff" * rng.randint(1, 5000)),
    ]
    streams += [(f"random-{i}", rng.randbytes(rng.randint(1, 20_000))) for i in range(20)]
    streams += [(f"greeting+random-{i}", GREETING + rng.randbytes(rng.randint(1, 3000))) for i in range(10)]
    return streams


def spray_raw(path: Path, streams: list[tuple[str, bytes]], tally: Tally) -> None:
    for kind, data in streams:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
            try:
                sock.sendall(data)
                if kind.startswith("half"):
                    continue  # close straight away
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # until the daemon gives up on us (or 2 s)
                    pass
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the daemon hung up on us: fine
        tally.raw_connections += 1
        tally.raw_bytes += len(data)
        tally.note("raw:" + kind.split("-")[0])


# -- the test ------------------------------------------------------------------------------


def daemon_counters(sock: zmq.Socket) -> dict:
    daemon = ask(sock, protocol.Request("status")).result["daemon"]
    return {**daemon["heartbeats"], "control_malformed": daemon["control_malformed"], "pid": daemon["pid"]}


def test_daemon_survives_hostile_traffic(supervisor):
    seed = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))
    print(f"\nFUZZ_SEED={seed}")
    rng = random.Random(seed)
    sup = supervisor(CONFIG)
    for name in NAMES:
        sup.wait_state(name, "running", timeout=15)
    state = sup.dir / ".supervise"
    control_path, heartbeat_path = state / "control.sock", state / "heartbeat.sock"
    daemon_pid = sup.proc.pid
    first = sup.status()
    pids = {name: first[name]["pid"] for name in NAMES}
    tokens = {name: psutil.Process(pid).environ()["SUPERVISE_TOKEN"] for name, pid in pids.items()}
    tally = Tally()
    ctx = zmq.Context()
    admin = dealer(ctx, control_path)
    before = daemon_counters(admin)
    assert before["pid"] == daemon_pid
    monitor = Monitor(ctx, control_path, {n: p for n, p in pids.items() if n != VICTIM})
    monitor.start()
    cli = CliPoller(sup)
    started = time.monotonic()
    try:
        # 1. REQ clients: every malformed request gets a "bad request" reply.
        req = dealer(ctx, control_path, zmq.REQ)
        for _ in range(40):
            kind, frames = control_message(rng)
            if decodes(protocol.decode_request, control_body(frames)) is not None:
                continue
            req.send_multipart(frames)
            assert req.poll(5000), f"no reply to a malformed request ({kind}) on a REQ socket"
            reply = protocol.decode_reply(req.recv_multipart())
            assert not reply.ok and reply.usage and reply.error.startswith("bad request: "), reply
            tally.ctl_malformed += 1
            tally.req_replies += 1
            tally.note("req:" + kind)
        req.close()

        # 2. Oversized frames: ZeroMQ drops the connection (MAXMSGSIZE); each on its own socket.
        for path, limit, attr in ((heartbeat_path, protocol.MAX_HEARTBEAT_BYTES, "hb_oversized"),
                                  (control_path, protocol.MAX_REQUEST_BYTES + 1024, "ctl_oversized")):
            sock = dealer(ctx, path)
            for _ in range(20):
                sock.send(b"{" + b" " * (limit + rng.randint(1, 4096)) + b"}")
                setattr(tally, attr, getattr(tally, attr) + 1)
            sock.close()
        # Past 64 KiB but under ZeroMQ's cut-off: decode_request refuses it.
        sock = dealer(ctx, control_path)
        for _ in range(5):
            sock.send(b'{"v":1,"cmd":"status","id":"' + b"x" * (protocol.MAX_REQUEST_BYTES + 10) + b'"}')
            tally.ctl_malformed += 1
        sock.close()

        # 3. Event followers that never read, more than the daemon keeps.
        followers = [dealer(ctx, control_path) for _ in range(FOLLOWERS)]
        for sock in followers:
            sock.send(protocol.encode_request(protocol.Request("events", follow=True)))
            tally.ctl_legit += 1

        # 4. The flood, as fast as it goes, for longer than heartbeat_timeout: heartbeat garbage
        # and spoofs, control garbage. One worker is killed early on; the CLI keeps asking.
        hb_socks = [dealer(ctx, heartbeat_path) for _ in range(4)]
        ctl_socks = [dealer(ctx, control_path) for _ in range(4)]
        cli.start()
        flood_start = time.monotonic()
        victim_pid = pids[VICTIM]
        killed = False
        while tally.flood < FLOOD or time.monotonic() - flood_start < FLOOD_SECONDS:
            if tally.flood == FLOOD // 4 and not killed:  # once: the count stays put while orders are skipped
                os.kill(victim_pid, signal.SIGKILL)
                killed = True
            if rng.random() < 0.5:
                kind, frames = heartbeat_message(rng, tokens)
                if decodes(protocol.decode_heartbeat, frames) is None:
                    tally.hb_malformed += 1
                else:
                    tally.hb_spoofed += 1
                rng.choice(hb_socks).send_multipart(frames)
                tally.note("hb:" + kind)
            else:
                kind, frames = control_message(rng)
                decoded = decodes(protocol.decode_request, control_body(frames))
                if decoded is None:
                    tally.ctl_malformed += 1
                elif harmless(decoded):
                    tally.ctl_legit += 1
                else:
                    continue  # a valid stop/restart/shutdown is not an attack, just an order
                rng.choice(ctl_socks).send_multipart(frames)
                tally.note("ctl:" + kind)
            tally.flood += 1
        flood_time = time.monotonic() - flood_start
        cli.stop.set()
        cli.join(30)
        assert cli.calls >= 2 and not cli.failures, cli.failures[:3]

        # The killed worker is back, restarted once for its crash, under a new token.
        replaced = sup.wait_state(VICTIM, "running", timeout=10)
        assert replaced["pid"] != victim_pid and replaced["restarts"] == 1
        assert replaced["last_exit"]["reason"] == "crashed"

        # 5. Its old token, now stale, under its own name; requests valid in form but naming
        # nothing that exists, with names meant to confuse (each must get an error, touch nothing).
        for _ in range(50):
            hb_socks[0].send(_dumps({"v": 1, "type": "beat", "name": VICTIM, "token": tokens[VICTIM]}))
            tally.hb_spoofed += 1
        ctl = dealer(ctx, control_path)  # the flood's sockets have unread replies queued
        for cmd in ("status", "start", "stop", "restart", "reload", "scale"):
            for target in BOGUS_TARGETS:
                reply = ask(ctl, protocol.Request(cmd, (target,), count=1 if cmd == "scale" else None, timeout=5))
                assert not reply.ok, (cmd, target, reply)
                tally.ctl_bogus += 1
        for sock in [*hb_socks, *ctl_socks, *followers, ctl]:
            sock.close()  # LINGER: whatever is queued still goes out

        # Every message reached the daemon and was counted: it never stopped reading.
        def counted():
            now = daemon_counters(admin)
            return (now["malformed"] - before["malformed"] >= tally.hb_malformed
                    and now["rejected"] - before["rejected"] >= tally.hb_spoofed
                    and now["control_malformed"] - before["control_malformed"] >= tally.ctl_malformed) and now
        after = wait_until(counted, timeout=20, interval=0.05,
                           message=f"the daemon to count everything ({tally})")

        # 6. Raw bytes, not ZeroMQ at all, onto both unix sockets. libzmq takes a stream that does
        # not start with 0xFF for a ZMTP 1.0 peer, so random bytes turn into many malformed
        # messages: counted, but not predictably many.
        spray_raw(control_path, raw_streams(rng), tally)
        spray_raw(heartbeat_path, raw_streams(rng), tally)

        attack_time = time.monotonic() - started
        status = sup.status()  # (the CLI's round trip also outlasts the heartbeat reader's 30 ms pause)
        after_raw = daemon_counters(admin)
    finally:
        cli.stop.set()
        monitor.stop.set()
        monitor.join(10)
        ctx.destroy(linger=0)

    print(f"sent: {tally.flood} flood messages in {flood_time:.2f}s ({cli.calls} CLI status calls meanwhile); "
          f"malicious total {tally.malicious}: "
          f"heartbeat malformed {tally.hb_malformed}, spoofed {tally.hb_spoofed}, oversized {tally.hb_oversized}; "
          f"control malformed {tally.ctl_malformed} ({tally.req_replies} answered on REQ), oversized "
          f"{tally.ctl_oversized}, harmless valid {tally.ctl_legit} ({FOLLOWERS} never-reading followers), "
          f"valid for bogus names {tally.ctl_bogus}; "
          f"raw connections {tally.raw_connections} ({tally.raw_bytes} bytes)")
    print(f"daemon counted: heartbeats malformed +{after['malformed'] - before['malformed']}, "
          f"rejected +{after['rejected'] - before['rejected']}, accepted +{after['accepted'] - before['accepted']}; "
          f"control_malformed +{after['control_malformed'] - before['control_malformed']}; "
          f"then from the raw bytes: heartbeats malformed +{after_raw['malformed'] - after['malformed']}, "
          f"control_malformed +{after_raw['control_malformed'] - after['control_malformed']}")
    print(f"monitor: {monitor.samples} status samples, worst latency {monitor.max_latency * 1000:.0f} ms, "
          f"max heartbeat_age {max(monitor.max_age.values()):.2f}s; attack took {attack_time:.2f}s")
    print("kinds:", json.dumps(dict(sorted(tally.kinds.items()))))

    assert not monitor.problems, monitor.problems[:5]
    assert monitor.samples >= 5
    # Exactly what was sent: nothing slipped through uncounted, nothing valid was miscounted.
    assert after["malformed"] - before["malformed"] == tally.hb_malformed
    # The killed worker's own last beat may still wait in the socket when its exit is reaped (its
    # token then stale): one rejection more than the flood's, at most.
    assert tally.hb_spoofed <= after["rejected"] - before["rejected"] <= tally.hb_spoofed + 1
    assert after["control_malformed"] - before["control_malformed"] == tally.ctl_malformed
    assert after["accepted"] > before["accepted"], "real heartbeats stopped flowing"
    assert after_raw["rejected"] == after["rejected"]  # raw bytes carry no well-formed heartbeat
    assert sup.proc.poll() is None and after["pid"] == after_raw["pid"] == daemon_pid
    untouched = [name for name in NAMES if name != VICTIM]
    assert all(status[name]["state"] == "running" and status[name]["pid"] == pids[name] for name in untouched)
    assert all(status[name]["heartbeat_age"] < HEARTBEAT_TIMEOUT for name in untouched)
    caused = sum(status[name]["restarts"] for name in untouched) + status[VICTIM]["restarts"] - 1
    print(f"restarts caused by the attack: {caused}")
    assert caused == 0

    # A legit command still works afterwards.
    result = sup.cli("restart", "beat:0")
    assert result.returncode == 0, result.stderr
    assert sup.wait_state("beat:0", "running")["pid"] != pids["beat:0"]
    assert sup.proc.poll() is None


def test_instance_names_take_ascii_digits_only(supervisor):
    sup = supervisor(CONFIG.replace("instances = 3", "instances = 2"))
    sup.wait_state("beat:1", "running", timeout=15)
    ctx = zmq.Context()
    try:
        sock = dealer(ctx, sup.dir / ".supervise" / "control.sock")
        for target in ("beat:\u0661", "beat:\u00b2", "beat:\uff11"):  # ARABIC-INDIC ONE, SUPERSCRIPT TWO, FULLWIDTH ONE
            reply = ask(sock, protocol.Request("status", (target,)), timeout=3.0)
            assert not reply.ok and reply.usage, (target, reply)
        assert ask(sock, protocol.Request("status")).ok  # the connection still works
    finally:
        ctx.destroy(linger=0)
