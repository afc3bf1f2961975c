"""CURVE keys and authentication for a TCP control endpoint.

The ipc control socket is guarded by file permissions; a TCP endpoint has
none, so the contract requires ZeroMQ CURVE on it: the daemon proves who it is
with its secret key, and only clients whose public keys the operator listed
get through. This module is the whole of that: key files (in pyzmq's, i.e.
czmq's zcert, format, so ``zmq.auth.load_certificate`` and other ZeroMQ
tools read them), the server side (a ZAP handler that knows the allowed keys)
and the client side.

Secret keys never appear in an error message, a ``repr`` or a log line, and
public keys only through :func:`mask`.

pyzmq is imported at module level: the CLI must import this module lazily
(inside ``keygen`` or a TCP command), never at its top, or every ``status``
would pay for loading libzmq.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import struct
from collections.abc import Collection
from dataclasses import field
from pathlib import Path

import zmq
import zmq.auth.thread
from zmq.utils import z85

from supervise.frozen import frozen

__all__ = ["CurveError", "KeyPair", "ServerAuth", "ZAP_DOMAIN", "generate", "keygen", "load_public",
           "load_secret", "mask", "secure_client", "secure_server"]

KEY_LENGTH = 40  # a 32-byte Curve25519 key in Z85
ZAP_DOMAIN = "supervise.control"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
MAX_KEY_FILE = 64 * 1024  # a key file is a few hundred bytes; anything far bigger is something else

_Z85_CHARS = frozenset(z85.Z85CHARS.decode())

# The banners pyzmq's zmq.auth.create_certificates writes, so that our files
# are indistinguishable from its own.
_SECRET_BANNER = """#   ****  Generated on {now} by pyzmq  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""
_PUBLIC_BANNER = """#   ****  Generated on {now} by pyzmq  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange. Store public certificates in your home
#   directory, in the .curve subdirectory.

"""


class CurveError(ValueError):
    """A key or key file that cannot be used; the message names it and says what to do."""


@frozen
class KeyPair:
    """A CURVE key pair as Z85 text. The secret is left out of ``repr`` so a stray log line cannot leak it."""

    public: str
    secret: str = field(repr=False)


def mask(key: str) -> str:
    """Enough of a public key to tell keys apart in a log line; never pass a secret here."""
    return key[:8] + "…"


def generate() -> KeyPair:
    """A fresh key pair from libzmq's generator."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode("ascii"), secret.decode("ascii"))


def keygen(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` (secret, mode 0600) into ``directory``.

    Existing files are never overwritten: replacing a key locks out every
    peer that trusts the old one, so that must be a deliberate ``rm``. The
    directory is created (mode 0700) if missing. Returns (public, secret) paths.
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise CurveError(f"key name {name!r} must be a plain file name (no '/')")
    directory = Path(directory)
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    existing = [str(p) for p in (public_path, secret_path) if p.exists() or p.is_symlink()]
    if existing:
        raise CurveError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
                         "refusing to overwrite a key (remove it first if you really mean to replace it)")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CurveError(f"cannot create key directory {directory}: {exc.strerror}") from None
    pair = generate()
    now = datetime.datetime.now()
    secret_text = _SECRET_BANNER.format(now=now) + _curve_section(pair.public, pair.secret)
    public_text = _PUBLIC_BANNER.format(now=now) + _curve_section(pair.public)
    _create(secret_path, secret_text, 0o600)
    try:
        _create(public_path, public_text, 0o644)
    except CurveError:
        secret_path.unlink(missing_ok=True)
        raise
    return public_path, secret_path


def load_secret(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair in a ``.key_secret`` file, refused if others could read it (as ssh does)."""
    path = Path(path)
    text, mode = _read(path, "secret key file")
    if mode & 0o077:
        raise CurveError(f"{path}: secret key file is accessible by group or others (mode {mode & 0o777:04o}); "
                         f"run `chmod 600 {path}`")
    keys = _parse(path, text)
    secret = keys.get("secret-key")
    if secret is None:
        if "public-key" in keys:
            raise CurveError(f"{path}: holds only a public key; the secret key is in the matching "
                             f"{SECRET_SUFFIX} file")
        raise CurveError(f"{path}: not a CURVE key file (no secret-key line)")
    problem = _key_problem(secret)
    if problem:
        raise CurveError(f"{path}: secret-key {problem}")
    derived = zmq.curve_public(secret.encode("ascii")).decode("ascii")
    public = keys.get("public-key", derived)
    if public != derived:
        raise CurveError(f"{path}: public-key does not belong to secret-key (the file is damaged or edited)")
    return KeyPair(derived, secret)


def load_public(value: str | os.PathLike[str]) -> str:
    """A public key given as 40 characters of Z85, or as the path of a ``.key``/``.key_secret`` file.

    A ``str`` of exactly 40 characters that does not end in ``.key`` or
    ``.key_secret`` is taken as a key; anything else (and any ``Path``) as a file.
    """
    if isinstance(value, str) and len(value) == KEY_LENGTH and not value.endswith((PUBLIC_SUFFIX, SECRET_SUFFIX)):
        problem = _key_problem(value)
        if problem:
            # Masked even when wrong: a secret pasted here by mistake must not reach a log.
            raise CurveError(f"public key {mask(value)!r} {problem} (a file path of exactly {KEY_LENGTH} "
                             "characters? write it as ./PATH)")
        return value
    path = Path(value)
    text, _ = _read(path, "public key file")
    public = _parse(path, text).get("public-key")
    if public is None:
        raise CurveError(f"{path}: not a CURVE key file (no public-key line)")
    problem = _key_problem(public)
    if problem:
        raise CurveError(f"{path}: public-key {problem}")
    return public


class ServerAuth:
    """The running ZAP handler of a CURVE server socket; ``stop()`` it after closing the socket.

    ``refused`` counts handshakes that got as far as presenting a client key
    not on the list (a refused client keeps reconnecting, so one client counts
    many times); ``accepted`` counts those let in. Handshakes that fail earlier
    (a client without CURVE, or with the wrong server key) are dropped by
    libzmq without asking ZAP, so they are not counted here.

    The handler runs on its own thread (pyzmq's ThreadAuthenticator, which
    owns a private event loop) so it never touches the daemon's asyncio loop.
    The counters are written on that thread and only read elsewhere.
    """

    def __init__(self, ctx: zmq.Context, clients: frozenset[str], fail_closed: bool) -> None:
        self.clients = clients
        self.fail_closed = fail_closed
        self.refused = 0
        self.accepted = 0
        # A private logger that is switched off: pyzmq logs client keys in full
        # at debug level, and a daemon that enables debug logging must not
        # inherit that. It is not registered with logging's global manager.
        quiet = logging.Logger("supervise.curve.zap")
        quiet.disabled = True
        self._auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=quiet)
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        try:
            self._auth.start()
        except zmq.ZMQError as exc:
            self._auth.stop()
            if exc.errno == zmq.EADDRINUSE:
                raise CurveError("another ZAP authenticator already runs in this ZeroMQ context "
                                 "(one per context: give the CURVE socket its own context)") from None
            raise

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: ``key`` is the client's public key in Z85."""
        if key.decode("ascii", "replace") in self.clients:
            self.accepted += 1
            return True
        self.refused += 1
        return False

    @property
    def running(self) -> bool:
        return self._auth.is_alive()

    def stop(self) -> None:
        """Stop the handler thread (idempotent). Close the socket first: see :func:`secure_server`."""
        self._auth.stop()

    def __enter__(self) -> ServerAuth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def secure_server(socket: zmq.Socket, secret: KeyPair, allowed_clients: Collection[str],
                  ctx: zmq.Context | None = None) -> ServerAuth:
    """Make ``socket`` a CURVE server that lets in only ``allowed_clients`` (Z85 public keys).

    Call it before ``bind``: libzmq applies security options to endpoints
    bound afterwards only. ``ctx`` must be the socket's own context (the ZAP
    handler is found through an inproc endpoint of that context), and only one
    handler can run per context.

    Without a ZAP handler, libzmq lets every CURVE client in. The socket is
    therefore put in a ZAP domain with ZMQ_ZAP_ENFORCE_DOMAIN, so that a
    handler that is stopped or has died means nobody gets in, not everybody.
    Where libzmq lacks that option (``ServerAuth.fail_closed`` is False), close
    the socket before calling ``stop()``.
    """
    if isinstance(allowed_clients, str):
        raise CurveError("allowed_clients must be a collection of public keys, not one string")
    if not allowed_clients:
        raise CurveError("no client keys: nobody could connect")
    for index, key in enumerate(allowed_clients):
        problem = _key_problem(key) if isinstance(key, str) else "is not a string"
        if problem:
            raise CurveError(f"client key #{index + 1} {problem}")
    _check_pair(secret)
    _check_unused(socket, "secure_server", "bind")
    if ctx is not None and ctx.underlying != socket.context.underlying:
        raise CurveError("ctx is not the socket's context: the ZAP handler would never be asked")
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_SECRETKEY, secret.secret.encode("ascii"))
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    try:
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        fail_closed = True
    except (AttributeError, zmq.ZMQError):  # libzmq or pyzmq built without the (draft) option
        fail_closed = False
    return ServerAuth(socket.context, frozenset(allowed_clients), fail_closed)


def secure_client(socket: zmq.Socket, client: KeyPair, server_public: str) -> None:
    """Make ``socket`` a CURVE client of the server with ``server_public``; call it before ``connect``.

    A wrong server key or a client key the server does not list is not an
    error anywhere: libzmq retries silently, so the caller needs a timeout
    and should mention both causes when it expires.
    """
    problem = _key_problem(server_public) if isinstance(server_public, str) else "is not a string"
    if problem:
        raise CurveError(f"server public key {problem}")
    _check_pair(client)
    _check_unused(socket, "secure_client", "connect")
    socket.setsockopt(zmq.CURVE_SERVERKEY, server_public.encode("ascii"))
    socket.setsockopt(zmq.CURVE_PUBLICKEY, client.public.encode("ascii"))
    socket.setsockopt(zmq.CURVE_SECRETKEY, client.secret.encode("ascii"))


# -- helpers ------------------------------------------------------------------------------


def _key_problem(key: str) -> str | None:
    """What is wrong with a Z85 key, without quoting it (it may be a secret); None if nothing."""
    if len(key) != KEY_LENGTH:
        return f"is not a {KEY_LENGTH}-character Z85 key (it has {len(key)} characters)"
    bad = sorted(set(key) - _Z85_CHARS)
    if bad:
        return f"is not a Z85 key (it contains {len(bad)} character(s) outside the Z85 alphabet)"
    try:
        z85.decode(key)
    except (ValueError, struct.error):  # a 5-character group above 2**32 - 1
        return "is not a valid Z85 key (a group decodes to more than 32 bits)"
    return None


def _check_pair(pair: KeyPair) -> None:
    if not isinstance(pair, KeyPair):
        raise CurveError(f"expected a KeyPair, got {type(pair).__name__}")
    problem = _key_problem(pair.secret)
    if problem:
        raise CurveError(f"secret key {problem}")
    if zmq.curve_public(pair.secret.encode("ascii")).decode("ascii") != pair.public:
        raise CurveError("the key pair's public key does not belong to its secret key")


def _check_unused(socket: zmq.Socket, who: str, verb: str) -> None:
    # LAST_ENDPOINT is empty until the first bind or connect.
    if socket.getsockopt(zmq.LAST_ENDPOINT):
        raise CurveError(f"{who} must be called before {verb}: libzmq applies CURVE options only to "
                         "endpoints added after them")


def _curve_section(public: str, secret: str | None = None) -> str:
    lines = ["metadata", "curve", f'    public-key = "{public}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"')
    return "\n".join(lines) + "\n"


def _create(path: Path, text: str, mode: int) -> None:
    # O_EXCL makes "never overwrite" hold even against a file created since the
    # check; O_NOFOLLOW refuses a symlink planted at the name. fchmod pins the
    # mode whatever the umask is.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise CurveError(f"{path} already exists: refusing to overwrite a key") from None
    except OSError as exc:
        raise CurveError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise CurveError(f"cannot write {path}: {exc.strerror}") from None


def _read(path: Path, what: str) -> tuple[str, int]:
    """The text of a key file and its mode; the mode comes from the open file, not a second lookup."""
    try:
        # O_NONBLOCK: opening a FIFO planted at the name must not hang the daemon.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CurveError(f"{path}: no such {what} (create a key pair with `supervise keygen`)") from None
    except PermissionError:
        raise CurveError(f"{path}: cannot read the {what}: permission denied") from None
    except OSError as exc:
        raise CurveError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise CurveError(f"{path}: is {kind}, not a {what}")
        raw = b""
        while len(raw) <= MAX_KEY_FILE and (chunk := os.read(fd, MAX_KEY_FILE + 1)):
            raw += chunk
    except OSError as exc:
        raise CurveError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_KEY_FILE:
        raise CurveError(f"{path}: not a CURVE key file (larger than {MAX_KEY_FILE} bytes)")
    try:
        return raw.decode("ascii"), st.st_mode
    except UnicodeDecodeError:
        raise CurveError(f"{path}: not a CURVE key file (not ASCII text)") from None


def _parse(path: Path, text: str) -> dict[str, str]:
    """``public-key`` and ``secret-key`` from a zcert (ZPL) file; other lines are ignored, as zcert does."""
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        name, sep, value = line.strip().partition("=")
        name = name.strip()
        if not sep or name not in ("public-key", "secret-key"):
            continue
        if name in keys:
            raise CurveError(f"{path}:{number}: {name} appears twice")
        keys[name] = value.strip().strip("\"'")
    return keys
