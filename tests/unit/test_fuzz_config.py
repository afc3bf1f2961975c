"""Property tests of supervise.config.load on arbitrary and on generated TOML.

Whatever the file holds, ``load`` returns a Config or raises ConfigError, whose
every problem is one line, ``<path>:<LINE>: <key.path>: <message>`` (the line
whenever the key is written in the file) — never another exception. A config
that loads comes back equal from ``loads(config.text, path)``.

Hypothesis prints the falsifying example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from supervise.config import loader as cfg
from supervise.config.lines import key_text
from supervise.config.loader import ConfigError
from supervise.config.locate import locate_state_dir
from supervise.config.model import AppConfig, BackoffConfig, Config, CrashLoopConfig, SuperviseConfig

SETTINGS = settings(max_examples=200, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])

APP_KEYS = tuple(f.name for f in dataclasses.fields(AppConfig) if f.name != "name")
SUPERVISE_KEYS = tuple(f.name for f in dataclasses.fields(SuperviseConfig))
BACKOFF_KEYS = tuple(f.name for f in dataclasses.fields(BackoffConfig))
CRASH_LOOP_KEYS = tuple(f.name for f in dataclasses.fields(CrashLoopConfig))
NESTED = {"backoff": BACKOFF_KEYS, "crash_loop": CRASH_LOOP_KEYS}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every example (hypothesis re-runs a test body many times)."""
    root = tmp_path_factory.mktemp("fuzz-config")
    (root / "srv").mkdir()
    (root / "file").write_text("not a directory")
    return root


def raising(error: Exception):
    """A load function that fails with ``error``: to check an outcome already in hand."""

    def load() -> Config:
        raise error

    return load


def check_outcome(path: Path, load) -> Config | None:
    """The property every input must satisfy; returns the Config when there is one."""
    try:
        config = load()
    except ConfigError as error:
        assert error.problems, "a ConfigError without problems"
        for problem in error.problems:
            text = str(problem)
            assert "\n" not in text and "\r" not in text, f"a problem on more than one line: {text!r}"
            assert text.startswith(f"{path}:" if problem.line is None else f"{path}:{problem.line}: "), text
            assert problem.line is None or problem.line >= 1
            assert problem.message and "Traceback" not in text
        return None
    assert isinstance(config, Config)
    return config


# -- (a) arbitrary bytes and text ------------------------------------------------------------

APP = '[apps.w]\ncommand = "run"\n'
RAW_VALUES = st.one_of(
    st.sampled_from([
        "inf", "-inf", "nan", "+nan", "1e400", "-1e400", "0x7FFFFFFFFFFFFFFFF", "1_000", "1__0", "0b102",
        "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "9999-99-99", "true", "True", '"\\u0000"',
        '"~\\u0000"', '"\\ud800"', '"\\U0010FFFF"', '"\\U00110000"', "'''a\nb'''", '"""\n"""', "[1, 'a', 2.0]",
        "{ a = 1, a = 2 }", "{ a.b = 1 }", "[", "{", '"unterminated', "'lit'", '"{port:>999999999999}"',
        '"{port:>99999}"', '"{instance.__class__}"', '"{nope}"', '"{"', '"x {port} y"', '"unix:\\u0000"',
        '"127.0.0.1:' + "9" * 5000 + '"', '"' + "9" * 400 + 'M"', '"' + "9" * 400 + 'ms"', "-0", "-0.0",
    ]),
    st.integers(4290, 4310).map(lambda n: "9" * n),  # around sys.get_int_max_str_digits()
    st.integers(300, 320).map(lambda n: "9" * n),  # past float's range
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 1500).map(lambda n: "{a=" * n + "1" + "}" * n),
    st.integers(1, 3000).map(lambda n: "[" * n),
    st.text(max_size=30).map(json.dumps),
)
ANY_KEY = st.one_of(st.sampled_from(APP_KEYS + SUPERVISE_KEYS + ("backoff.max", "crash_loop.window", "supervise",
                                                                   "apps", "apps.x.command")),
                    st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True), st.text(max_size=8).map(json.dumps))
LINES = st.one_of(
    st.sampled_from(["[supervise]", "[apps]", "[apps.w]", "[apps.w.backoff]", "[[apps.w]]", "[apps.'a b']",
                     "[apps.\"\\u0000\"]", "[ apps . x ]", "", "# comment", "\t", "[", "]]", "\x00", "\ufeff"]),
    st.tuples(ANY_KEY, RAW_VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.text(max_size=40),
)
TOMLISH = st.lists(LINES, max_size=12).map(lambda lines: APP + "\n".join(lines) + "\n")
ARBITRARY = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    TOMLISH.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(TOMLISH, st.binary(min_size=1, max_size=4), st.integers(0, 60))  # stray bytes, often bad UTF-8
    .map(lambda t: t[0].encode("utf-8", "surrogatepass")[: t[2]] + t[1] + t[0].encode("utf-8", "surrogatepass")[t[2]:]),
)


@SETTINGS
@given(ARBITRARY)
def test_load_arbitrary_bytes(workdir: Path, data: bytes) -> None:
    path = workdir / "supervise.toml"
    path.write_bytes(data)
    config = check_outcome(path, lambda: cfg.load(path))
    event("loaded" if config else "refused")
    if config is not None:
        assert cfg.loads(config.text, path) == config
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    check_outcome(path, lambda: cfg.loads(text, path))


POISON = [
    APP + "instances = " + "9" * 5000,
    APP + "instances = " + "[" * 3000 + "]" * 3000,
    APP + "env = " + "{a=" * 3000 + "1" + "}" * 3000,
    APP + "stop_timeout = " + "9" * 400,
    APP + "backoff = { multiplier = " + "9" * 400 + " }",
    APP + 'max_memory = "' + "9" * 400 + 'M"',
    APP + 'listen = ["a:' + "9" * 5000 + '"]',
    '[supervise]\nstate_dir = "~\\u0000"\n' + APP,
    '[supervise]\nstate_dir = "a\\u0000b"\n' + APP,
    APP + 'cwd = "~\\u0000x"',
    APP + 'listen = ["unix:~\\u0000"]',
    '[apps.w]\ncommand = "x {port:>999999999999}"\nport = 80',
    '[apps.w]\ncommand = ["a", "b\\u0000"]',
    APP + 'cwd = "no\\nsuch"',
    APP + 'env = { "a\\nb" = [] }',
    APP + 'command = "x {app.\\nx}"',
    APP + 'cwd = "' + "x" * 300 + '"',
    '[supervise]\ncontrol_clients = ["~\\u0000"]\n' + APP,
]


@pytest.mark.parametrize("text", POISON, ids=[f"poison{i}" for i in range(len(POISON))])
def test_known_poison(workdir: Path, text: str) -> None:
    """Each of these once escaped as RecursionError, ValueError, OverflowError, OSError or
    MemoryError, or passed `check` only to fail in the daemon (a NUL), or printed a problem on
    two lines."""
    path = workdir / "poison.toml"
    path.write_text(text)
    assert check_outcome(path, lambda: cfg.load(path)) is None
    assert check_outcome(path, lambda: cfg.loads(text, path)) is None


def test_locate_state_dir_with_a_nul(workdir: Path) -> None:
    path = workdir / "nul.toml"
    path.write_text('[supervise]\nstate_dir = "~\\u0000"\n')
    assert locate_state_dir(path) == workdir / ".supervise"


# -- (b) generated, syntactically valid TOML ------------------------------------------------

BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if BARE.fullmatch(key) else toml_string(key)


def toml_string(text: str) -> str:
    """A TOML basic string (json's escapes are TOML's, but for DEL, which TOML wants escaped)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: object) -> str:
    match value:
        case bool():
            return "true" if value else "false"
        case int():
            return str(value)
        case float():
            if math.isnan(value):
                return "nan"
            return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
        case str():
            return toml_string(value)
        case list():
            return "[" + ", ".join(map(toml_value, value)) + "]"
        case dict():
            return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        case _:  # dates and times
            return value.isoformat()


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # TOML has no lone surrogates
TOML_SCALARS = st.one_of(
    TEXT, st.booleans(),
    st.integers(), st.integers(-(2**64), 2**64), st.integers(min_value=10**300, max_value=10**320),
    st.floats(), st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -0.0, 1e308, 5e-324]),
    st.datetimes(),
    st.datetimes(timezones=st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))),
    st.dates(), st.times(),
)
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=10)

PLAIN = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
DURATIONS = st.one_of(st.sampled_from(["500ms", "10s", "1.5s", "2m30s", "1h", "0", "0s", ".5s", "1 s", "2M"]),
                      st.integers(0, 100), st.floats(0, 1000))
POSITIVE_DURATIONS = st.one_of(st.sampled_from(["500ms", "10s", "1.5s", "1h"]), st.integers(1, 100),
                               st.floats(0.001, 1000))
SIZES = st.one_of(st.sampled_from(["100B", "512K", "300M", "300MiB", "1G", "2 g", "1.5k"]), st.integers(1, 2**40))
NAMES = st.one_of(st.sampled_from(["web", "db", "w-1", "a_b", "a.b", "x" * 40]),
                  st.from_regex(r"[a-z]{1,6}", fullmatch=True))
VALID = {  # values each key accepts (alone: cross-key rules may still refuse a combination)
    "command": st.one_of(st.sampled_from(["python3 w.py", "run {app} {instance}", "a 'b c'", "w {instance:02}"]),
                         st.lists(st.sampled_from(["python3", "-c", "{app}", "{instance}", "x y", "{{x}}"]),
                                  min_size=1, max_size=4)),
    "cwd": st.sampled_from([".", "srv", "./srv/", "~"]),
    "instances": st.integers(0, 8),
    "env": st.dictionaries(st.sampled_from(["MODE", "N", "X_1", "é"]),
                           st.one_of(PLAIN, st.integers(), st.booleans(), st.floats(allow_nan=False)), max_size=3),
    "restart": st.sampled_from(["always", "on-failure", "never"]),
    "stop_signal": st.one_of(st.sampled_from(["SIGTERM", "TERM", "int", "hup", " sigusr1 "]),
                             st.sampled_from([1, 2, 15])),
    "stop_timeout": DURATIONS, "start_timeout": DURATIONS, "heartbeat_timeout": POSITIVE_DURATIONS,
    "readiness": st.sampled_from(["none", "heartbeat"]),
    "max_memory": SIZES, "log_max_size": SIZES,
    "max_processes": st.integers(1, 100),
    "watch": st.lists(PLAIN, max_size=3), "watch_ignore": st.lists(PLAIN, max_size=2),
    "listen": st.lists(st.sampled_from(["127.0.0.1:8080", "[::1]:0", "localhost:9000", "unix:web.sock", "unix:@abs",
                                        "example.com.:1"]), max_size=3),
    "depends_on": st.lists(st.sampled_from(["web", "db"]), max_size=1),
    "log_backups": st.integers(0, 10),
    "port": st.integers(1, 60_000),
    "chaos": st.booleans(),
    "reload_surge": st.integers(0, 4),
    "initial": DURATIONS, "max": DURATIONS, "reset_after": DURATIONS, "window": DURATIONS, "cooldown": DURATIONS,
    "multiplier": st.one_of(st.floats(1, 10), st.integers(1, 5)), "jitter": st.floats(0, 1),
    "max_restarts": st.integers(0, 20),
    "state_dir": st.sampled_from([".supervise", "run/state", "/tmp/x", "~/.sv"]),
    "log_format": st.sampled_from(["console", "json"]),
    "log_level": st.sampled_from(["info", "DEBUG", "Warning", "error"]),
}
BAD = {  # near misses and edge cases, key by key
    "command": st.sampled_from(["srv --port {port}", "x {nope}", "x {", "''", "", "{port:>99999}", "a\0b", []]),
    "cwd": st.sampled_from(["file", "missing", "", "a\nb", "a\0b"]),
    "instances": st.sampled_from([-1, 1.5, "4", 2**64]),
    "env": st.sampled_from([{"A=B": 1}, {"": "x"}, {"A": [1]}, {"A": "a\0b"}, {"A": {}}, "MODE=prod"]),
    "restart": st.sampled_from(["Always", "sometimes", True]),
    "stop_signal": st.sampled_from(["SIGFOO", "TREM", 0, -1, 99, 10**30, ""]),
    "stop_timeout": st.sampled_from(["-1s", "10", "1d", "s", -1, 1e309, 10**400, "1e3s"]),
    "heartbeat_timeout": st.sampled_from([0, "0s", -0.0]),
    "readiness": st.sampled_from(["beat", "None"]),
    "max_memory": st.sampled_from([0, "0M", "-1M", "1X", "9" * 400 + "M", 1.5]),
    "max_processes": st.sampled_from([0, -1]),
    "watch": st.sampled_from(["*.py", [""], [1]]),
    "listen": st.sampled_from([["host"], ["1.2.3.4:99999"], ["[zz]:1"], ["-bad:1"], ["unix:"], ["a:" + "9" * 5000],
                               ["1.2.3.256:1"], "127.0.0.1:80"]),
    "depends_on": st.sampled_from([["ghost"], ["a.b"], "db", [1]]),
    "port": st.sampled_from([0, 65536, -1, "80"]),
    "chaos": st.sampled_from(["yes", 1]),
    "reload_surge": st.sampled_from([-1, 0.5]),
    "multiplier": st.sampled_from([0.5, 10**400, math.inf, math.nan]), "jitter": st.sampled_from([-0.5, 1.5]),
    "max_restarts": st.sampled_from([-1, 1.0]),
    "state_dir": st.sampled_from(["", "a\0b", 1]),
    "control": st.sampled_from(["tcp://1.2.3.4:0", "tcp://[::1]:99999", "tcp://h:" + "9" * 5000, "ipc://x", ""]),
    "control_key": st.sampled_from(["", "~\0", "a\0b", 1]),
    "control_clients": st.sampled_from([["~\0"], ["a\0b.key"], [""], "k", [1], ["x" * 40]]),
    "log_format": st.sampled_from(["xml", "JSON"]),
    "log_level": st.sampled_from(["loud", ""]),
}


@st.composite
def table(draw, known: tuple[str, ...], mixed: bool) -> dict:
    """Known keys with valid values, or (mixed) near misses, any TOML value, and unknown keys."""
    body = {}
    for key in draw(st.lists(st.sampled_from(known), unique=True, max_size=len(known))):
        roll = draw(st.integers(0, 9)) if mixed else 0
        if roll < 6 and key in VALID:
            body[key] = draw(VALID[key])
        elif roll < 8 and key in BAD:
            body[key] = draw(BAD[key])
        else:
            body[key] = draw(TOML_VALUES)
    if mixed and draw(st.integers(0, 3)) == 0:
        for key in draw(st.lists(st.one_of(TEXT, st.sampled_from(["instnces", "comand", "backof", "Port"])),
                                 max_size=2)):
            body.setdefault(key, draw(TOML_VALUES))
    return body


@st.composite
def documents(draw) -> dict:
    """A supervise.toml as data; about half are meant to load (valid values only)."""
    mixed = draw(st.booleans())
    doc: dict = {}
    if draw(st.booleans()):
        doc["supervise"] = draw(table(SUPERVISE_KEYS, mixed))
    apps = {}
    for name in draw(st.lists(st.one_of(NAMES, TEXT) if mixed else NAMES, max_size=3, unique=True)):
        app = draw(table(APP_KEYS, mixed))
        if "command" not in app and (not mixed or draw(st.integers(0, 9)) < 8):
            app["command"] = draw(VALID["command"])
        for nested, keys in NESTED.items():
            if nested in app and (not mixed or draw(st.integers(0, 2)) > 0):
                app[nested] = draw(table(keys, mixed))
        apps[name] = app
    if apps or draw(st.booleans()):
        doc["apps"] = apps
    if mixed and draw(st.integers(0, 5)) == 0:
        doc.setdefault(draw(TEXT.filter(lambda k: k not in ("supervise", "apps"))), draw(TOML_VALUES))
    return doc


class Writer:
    """Writes a document as TOML and remembers the line of every key path, as a user would point to it."""

    def __init__(self, inline_nested: bool) -> None:
        self.lines: list[str] = []
        self.where: dict[tuple, int] = {}
        self.inline_nested = inline_nested

    def record(self, path: tuple, line: int) -> None:
        for end in range(1, len(path) + 1):
            self.where.setdefault(path[:end], line)

    def record_value(self, path: tuple, value: object, line: int) -> None:
        self.record(path, line)
        if isinstance(value, dict):
            for key, item in value.items():
                self.record_value(path + (key,), item, line)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.record_value(path + (index,), item, line)

    def header(self, path: tuple) -> None:
        self.lines.append("[" + ".".join(map(toml_key, path)) + "]")
        self.record(path, len(self.lines))

    def pair(self, path: tuple, value: object) -> None:
        self.lines.append(f"{toml_key(path[-1])} = {toml_value(value)}")
        self.record_value(path, value, len(self.lines))

    def table(self, path: tuple, body: dict) -> None:
        later = {}
        for key, value in body.items():
            if key in NESTED and isinstance(value, dict) and not self.inline_nested and len(path) == 2:
                later[key] = value
            else:
                self.pair(path + (key,), value)
        for key, value in later.items():
            self.header(path + (key,))
            for inner, item in value.items():
                self.pair(path + (key, inner), item)

    def document(self, doc: dict) -> str:
        for key, value in doc.items():  # top-level keys come before any header
            if key not in ("supervise", "apps") or (key == "apps" and not value):
                self.pair((key,), value)
        if "supervise" in doc:
            self.header(("supervise",))
            self.table(("supervise",), doc["supervise"])
        if "apps" in doc:
            for name, body in doc["apps"].items():
                self.header(("apps", name))
                self.table(("apps", name), body)
        return "\n".join(self.lines) + "\n"


def expected_line(where: dict[tuple, int], key: str) -> int | None:
    """The line of the longest written key path that ``key`` is, or starts with."""
    best, best_len = None, -1
    for path, line in where.items():
        text = key_text(path)
        if (key == text or key.startswith(text + ".") or key.startswith(text + "[")) and len(text) > best_len:
            best, best_len = line, len(text)
    return best


def check_final_types(config: Config, workdir: Path) -> None:
    """A Config that loads holds final types only (seconds as float, bytes as int, ...)."""
    assert config.path == workdir / "supervise.toml"
    assert config.supervise.state_dir.is_absolute()
    for name, app in config.apps.items():
        assert app.name == name and app.command and all(type(part) is str and "\0" not in part for part in app.command)
        assert app.cwd.is_absolute() and app.cwd.is_dir()
        assert type(app.instances) is int and app.instances >= 0
        assert isinstance(app.stop_signal, signal.Signals)
        for seconds in (app.stop_timeout, app.start_timeout, app.backoff.initial, app.backoff.max,
                        app.backoff.reset_after, app.crash_loop.window, app.crash_loop.cooldown):
            assert type(seconds) is float and 0 <= seconds < math.inf
        assert app.heartbeat_timeout is None or 0 < app.heartbeat_timeout < math.inf
        assert app.max_memory is None or (type(app.max_memory) is int and app.max_memory > 0)
        assert type(app.log_max_size) is int and app.log_max_size > 0
        assert app.backoff.max >= app.backoff.initial and 1 <= app.backoff.multiplier and 0 <= app.backoff.jitter <= 1
        assert all(type(k) is str and type(v) is str for k, v in app.env.items())
        assert app.port is None or 1 <= app.port <= 65535 - max(app.instances - 1, 0)
        for index in range(min(app.instances, 3)):
            assert all(type(part) is str for part in app.argv(index))


@SETTINGS
@given(documents(), st.booleans())
def test_load_generated_toml(workdir: Path, doc: dict, inline_nested: bool) -> None:
    writer = Writer(inline_nested)
    text = writer.document(doc)
    path = workdir / "supervise.toml"
    path.write_text(text)
    try:
        config = cfg.load(path)
    except ConfigError as error:
        event(f"refused ({min(len(error.problems), 3)}+ problems)")
        check_outcome(path, raising(error))
        for problem in error.problems:
            assert problem.key, f"generated TOML is valid TOML, yet: {problem}"
            assert problem.line == expected_line(writer.where, problem.key), (problem, text)
        return
    event(f"loaded ({min(len(config.apps), 2)}+ apps)")
    check_final_types(config, workdir)
    assert config.text == text
    assert cfg.loads(config.text, path) == config
    assert cfg.load(path) == config


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(APP_KEYS), TOML_VALUES), max_size=6, unique_by=lambda kv: kv[0]))
def test_every_app_key_with_every_toml_type(workdir: Path, pairs: list[tuple[str, object]]) -> None:
    """Each known key of an app given values of every TOML type, reported on its own line."""
    writer = Writer(inline_nested=True)
    text = writer.document({"apps": {"w": {"command": "run", **dict(pairs)}}})
    path = workdir / "supervise.toml"
    path.write_text(text)
    try:
        cfg.load(path)
    except ConfigError as error:
        check_outcome(path, raising(error))
        for problem in error.problems:
            assert problem.line == expected_line(writer.where, problem.key), (problem, text)
