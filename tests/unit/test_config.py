"""supervise.toml loading: final types, defaults, units, and located errors."""

from __future__ import annotations

import dataclasses
import pickle
import signal
from pathlib import Path
from textwrap import dedent

import pytest

from supervise.config import units as units
from supervise.config.lines import LineIndex, key_text
from supervise.config.loader import ConfigError, Problem, load
from supervise.config.locate import locate_state_dir
from supervise.config.model import AppConfig, BackoffConfig, Config, CrashLoopConfig, Readiness, Restart
from supervise.config.units import Invalid

APP = '[apps.web]\ncommand = "run"\n'  # tested key goes on line 3


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own directory, so errors read ``supervise.toml:N:``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str, name: str = "supervise.toml") -> Path:
    path = Path(name)
    path.write_text(dedent(text).lstrip("\n"))
    return path


def load_text(text: str) -> Config:
    return load(write(text))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text)
    return [str(problem) for problem in caught.value.problems]


# -- valid configs -------------------------------------------------------------

FULL = """
[supervise]
state_dir  = "run/state"
log_format = "json"
log_level  = "WARNING"

[apps.db]
command = ["postgres", "-D", "data dir"]

[apps.web]
command   = "python3 examples/web.py --port {port} --name '{app}:{instance}'"
instances = 4
port      = 8000
cwd       = "srv"
env       = { MODE = "prod", WORKERS = 3, RATIO = 1.5, DEBUG = false }
restart   = "on-failure"
stop_signal  = "INT"
stop_timeout = "10s"
readiness    = "heartbeat"
start_timeout = 30
heartbeat_timeout = "1.5s"
max_memory   = "300M"
watch        = ["examples/*.py"]
watch_ignore = ["*.pyc", "*.tmp"]
listen       = ["127.0.0.1:8080", "[::1]:0", "localhost:9000", "unix:web.sock"]
depends_on   = ["db"]
log_max_size = "1G"
log_backups  = 7
backoff      = { initial = "100ms", max = "30s", multiplier = 1.5, jitter = 0, reset_after = "2m" }
crash_loop   = { max_restarts = 3, window = "60s", cooldown = "5m" }
chaos        = true
"""


def test_full_config_parses_to_final_types(in_tmp: Path) -> None:
    (in_tmp / "srv").mkdir()
    config = load_text(FULL)
    assert config.path == in_tmp / "supervise.toml" and config.path.is_absolute()
    assert config.supervise.state_dir == in_tmp / "run" / "state"
    assert (config.supervise.log_format, config.supervise.log_level) == ("json", "warning")
    assert list(config.apps) == ["db", "web"]
    assert config.apps["db"].command == ("postgres", "-D", "data dir")
    web = config.apps["web"]
    assert web == AppConfig(
        name="web",
        command=("python3", "examples/web.py", "--port", "{port}", "--name", "{app}:{instance}"),
        cwd=in_tmp / "srv",
        instances=4,
        env={"MODE": "prod", "WORKERS": "3", "RATIO": "1.5", "DEBUG": "false"},
        restart=Restart.ON_FAILURE,
        stop_signal=signal.SIGINT,
        stop_timeout=10.0,
        readiness=Readiness.HEARTBEAT,
        start_timeout=30.0,
        heartbeat_timeout=1.5,
        max_memory=300 * 2**20,
        watch=("examples/*.py",),
        watch_ignore=("*.pyc", "*.tmp"),
        listen=("127.0.0.1:8080", "[::1]:0", "localhost:9000", f"unix:{in_tmp / 'web.sock'}"),
        depends_on=("db",),
        log_max_size=2**30,
        log_backups=7,
        backoff=BackoffConfig(initial=0.1, max=30.0, multiplier=1.5, jitter=0.0, reset_after=120.0),
        crash_loop=CrashLoopConfig(max_restarts=3, window=60.0, cooldown=300.0),
        port=8000,
        chaos=True,
    )
    assert type(web.start_timeout) is float and type(web.backoff.jitter) is float
    assert isinstance(web.stop_signal, signal.Signals)
    assert web.argv(2) == ["python3", "examples/web.py", "--port", "8002", "--name", "web:2"]


def test_defaults(in_tmp: Path) -> None:
    config = load_text('[apps.worker]\ncommand = "python3 worker.py"\n')
    assert config.supervise.state_dir == in_tmp / ".supervise"
    assert (config.supervise.log_format, config.supervise.log_level) == ("console", "info")
    worker = config.apps["worker"]
    assert worker == AppConfig(name="worker", command=("python3", "worker.py"), cwd=in_tmp)
    assert worker.heartbeat_timeout is None and worker.max_memory is None and worker.port is None
    assert worker.readiness is Readiness.NONE and worker.restart is Restart.ALWAYS
    assert worker.backoff == BackoffConfig() and worker.crash_loop == CrashLoopConfig()


def test_empty_file_is_a_config_without_apps() -> None:
    assert load_text("").apps == {}


def test_config_is_frozen() -> None:
    config = load_text(APP)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.apps["web"].instances = 3  # type: ignore[misc]


def test_apps_keep_file_order() -> None:
    text = "".join(f'[apps.{name}]\ncommand = "x"\n' for name in ["zeta", "alpha", "mid", "a.b-c_9"])
    assert list(load_text(text.replace("a.b-c_9", '"a.b-c_9"')).apps) == ["zeta", "alpha", "mid", "a.b-c_9"]


def test_paths_are_relative_to_the_config_file(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (in_tmp / "etc" / "app").mkdir(parents=True)
    write('[supervise]\nstate_dir = "../state"\n[apps.web]\ncommand = "x"\ncwd = "app"\n', "etc/s.toml")
    monkeypatch.chdir("/")
    config = load(in_tmp / "etc" / "s.toml")
    assert config.supervise.state_dir == in_tmp / "state"
    assert config.apps["web"].cwd == in_tmp / "etc" / "app"


def test_dotted_keys_and_header_tables_mean_the_same() -> None:
    config = load_text("""
        apps.web.command = "x"
        apps.web.backoff.initial = "1s"
        [apps.api]
        command = "y"
        crash_loop.window = "2m"
        [apps.api.backoff]
        max = "1m"
        """)
    assert config.apps["web"].backoff.initial == 1.0
    assert config.apps["api"].crash_loop.window == 120.0 and config.apps["api"].backoff.max == 60.0


# -- units ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0), (2, 2.0), (1.5, 1.5), ("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0),
        ("1.5s", 1.5), (".5s", 0.5), ("2m30s", 150.0), ("1h 30m", 5400.0), ("10S", 10.0), ("0s", 0.0),
    ],
)
def test_duration_valid(value: object, seconds: float) -> None:
    assert units.duration(value) == seconds
    assert type(units.duration(value)) is float


@pytest.mark.parametrize(
    "value",
    ["ten", "10", "", "5 minutes", "1d", "-5s", "5s-", "s", "ms10", True, [1], {"s": 1}, float("inf"), float("nan")],
)
def test_duration_invalid(value: object) -> None:
    with pytest.raises(Invalid, match=r'expected a duration like "500ms", "10s" or "5m", got '):
        units.duration(value)


def test_duration_bounds() -> None:
    with pytest.raises(Invalid, match="expected a duration >= 0, got -1"):
        units.duration(-1)
    with pytest.raises(Invalid, match='expected a duration > 0, got "0ms"'):
        units.duration("0ms", positive=True)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0), (1024, 1024), ("100B", 100), ("512K", 512 * 1024), ("300M", 300 * 2**20), ("1G", 2**30),
        ("300MB", 300 * 2**20), ("300MiB", 300 * 2**20), ("1.5G", 3 * 2**29), ("2k", 2048), ("1T", 2**40),
        ("64 KiB", 65536), ("7", 7),
    ],
)
def test_size_valid(value: object, size: int) -> None:
    assert units.size(value) == size
    assert type(units.size(value)) is int


@pytest.mark.parametrize("value", ["lots", "", "300X", "M", "-1M", "1iB", "300 MiBs", 1.5, True, ["1M"]])
def test_size_invalid(value: object) -> None:
    with pytest.raises(Invalid, match=r'expected a size like "512K", "300M" or "1G", got '):
        units.size(value)


def test_size_bounds() -> None:
    with pytest.raises(Invalid, match="expected a size >= 0, got -1"):
        units.size(-1)
    with pytest.raises(Invalid, match='expected a size > 0, got "0M"'):
        units.size("0M", positive=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("SIGTERM", signal.SIGTERM), ("TERM", signal.SIGTERM), ("term", signal.SIGTERM), ("sigint", signal.SIGINT),
     ("HUP", signal.SIGHUP), (9, signal.SIGKILL), (15, signal.SIGTERM)],
)
def test_signal_valid(value: object, expected: signal.Signals) -> None:
    assert units.stop_signal(value) is expected


@pytest.mark.parametrize("value", ["SIGFOO", "", "SIG_DFL", 0, 999, -1, True, 1.5])
def test_signal_invalid(value: object) -> None:
    with pytest.raises(Invalid, match='expected a signal like "SIGTERM" or a number'):
        units.stop_signal(value)


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1:8080", "0.0.0.0:0", "[::1]:8080", "[::]:65535", "localhost:80", "my-host.example.com:443",
     "unix:/run/web.sock", "unix:@abstract"],
)
def test_listen_valid(value: str) -> None:
    assert units.listen_address(Path("/base"), value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost", "expected an address"), (":8080", "expected an address"),
        ("host:", "expected an address"), ("host:http", "expected an address"),
        ("127.0.0.1:65536", "port from 0 to 65535"),
        ("300.1.1.1:80", "IPv4 address"), ("[::g]:80", r"IPv4 address, \[IPv6\] address"),
        ("::1:80", "host name"), ("-bad:80", "host name"), ("unix:", "socket path"),
        (8080, "expected an address"),
    ],
)
def test_listen_invalid(value: object, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        units.listen_address(Path("/base"), value)


def test_listen_relative_unix_path_is_made_absolute() -> None:
    assert units.listen_address(Path("/base"), "unix:run/web.sock") == "unix:/base/run/web.sock"


@pytest.mark.parametrize(
    ("value", "shown"),
    [("four", '"four"'), (True, "true"), (2.0, "2.0"), ([1, "a"], '[1, "a"]'), ({"a": 1}, "{ a = 1 }"),
     ("x" * 100, '"' + "x" * 56 + "...")],
)
def test_show_writes_values_as_toml(value: object, shown: str) -> None:
    assert units.show(value) == shown


# -- command templates ---------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "port", "argv"),
    [
        ('"w --port {port}"', 8000, ["w", "--port", "8003"]),
        ('"w {app} {instance}"', None, ["w", "web", "3"]),
        ('["w", "--name={app}:{instance}", "a b"]', None, ["w", "--name=web:3", "a b"]),
        ('''"sh -c 'echo {{literal}} {instance}'"''', None, ["sh", "-c", "echo {literal} 3"]),
        ('"w {port:05d}"', 80, ["w", "00083"]),
    ],
)
def test_argv_templates(command: str, port: int | None, argv: list[str]) -> None:
    port_line = "" if port is None else f"port = {port}\n"
    app = load_text(f"[apps.web]\ncommand = {command}\n{port_line}instances = 4\n").apps["web"]
    assert app.argv(3) == argv


# -- bad configs: each names file, line, key path and what was expected --------

BAD = [  # (text, line, key path, message fragment)
    # unknown keys, with did-you-mean
    ("[supervize]\n", 1, "supervize", 'unknown key (did you mean "supervise"?)'),
    ('[supervise]\nstate_dri = "x"\n', 2, "supervise.state_dri", 'unknown key (did you mean "state_dir"?)'),
    (APP + "instnces = 2\n", 3, "apps.web.instnces", 'unknown key (did you mean "instances"?)'),
    (APP + "colour = 2\n", 3, "apps.web.colour", "unknown key"),
    (APP + 'backoff = { intial = "1s" }\n', 3, "apps.web.backoff.intial",
     'unknown key (did you mean "initial"?)'),
    (APP + "[apps.web.backoff]\nmultipler = 2\n", 4, "apps.web.backoff.multipler",
     'did you mean "multiplier"?'),
    (APP + "crash_loop.max_restart = 2\n", 3, "apps.web.crash_loop.max_restart",
     'did you mean "max_restarts"?'),
    # wrong types, negative values, bool for int
    (APP + 'instances = "four"\n', 3, "apps.web.instances",
     'expected an integer >= 0, "max" (one per CPU) or "max-N" (N fewer than the CPUs), got "four"'),
    (APP + "instances = -1\n", 3, "apps.web.instances", "expected an integer >= 0, got -1"),
    (APP + "instances = true\n", 3, "apps.web.instances", "expected an integer >= 0, got true"),
    (APP + "instances = 2.0\n", 3, "apps.web.instances", "expected an integer >= 0, got 2.0"),
    (APP + "log_backups = -2\n", 3, "apps.web.log_backups", "expected an integer >= 0, got -2"),
    (APP + "stop_timeout = -1\n", 3, "apps.web.stop_timeout", "expected a duration >= 0, got -1"),
    (APP + 'start_timeout = "ten"\n', 3, "apps.web.start_timeout",
     'expected a duration like "500ms", "10s" or "5m", got "ten"'),
    (APP + "heartbeat_timeout = 0\n", 3, "apps.web.heartbeat_timeout", "expected a duration > 0, got 0"),
    (APP + 'max_memory = "lots"\n', 3, "apps.web.max_memory", 'expected a size like "512K"'),
    (APP + "max_memory = 0\n", 3, "apps.web.max_memory", "expected a size > 0, got 0"),
    (APP + 'log_max_size = "0K"\n', 3, "apps.web.log_max_size", 'expected a size > 0, got "0K"'),
    (APP + 'chaos = "yes"\n', 3, "apps.web.chaos", 'expected true or false, got "yes"'),
    (APP + 'restart = "on_failure"\n', 3, "apps.web.restart",
     'expected one of "always", "on-failure", "never", got "on_failure" (did you mean "on-failure"?)'),
    (APP + 'readiness = "tcp"\n', 3, "apps.web.readiness",
     'readiness = "tcp" probes 127.0.0.1:{port} and needs the app\'s port key'),
    (APP + 'readiness = "beat"\n', 3, "apps.web.readiness", 'expected one of "none", "heartbeat", "notify"'),
    (APP + 'watch = "*.py"\n', 3, "apps.web.watch", 'expected an array of strings, got "*.py"'),
    (APP + 'watch_ignore = ["*.pyc", 3]\n', 3, "apps.web.watch_ignore[1]", "expected a non-empty string, got 3"),
    # command and its templates
    ("[apps.web]\ninstances = 2\n", 1, "apps.web.command", "missing"),
    ('[apps.web]\ncommand = ""\n', 2, "apps.web.command", 'expected a non-empty command, got ""'),
    ("[apps.web]\ncommand = []\n", 2, "apps.web.command", "non-empty array of strings, got []"),
    ("[apps.web]\ncommand = 3\n", 2, "apps.web.command", "expected a command string"),
    ('[apps.web]\ncommand = ["run", 1]\n', 2, "apps.web.command[1]", "expected a non-empty string, got 1"),
    ('[apps.web]\ncommand = "run \'x"\n', 2, "apps.web.command", "cannot split into words: No closing quotation"),
    ('[apps.web]\ncommand = "run {nme}"\n', 2, "apps.web.command", "unknown placeholder {nme}"),
    ('[apps.web]\ncommand = "run {prot}"\nport = 80\n', 2, "apps.web.command", "(did you mean {port}?)"),
    ('[apps.web]\ncommand = ["run", "{}"]\n', 2, "apps.web.command[1]", "unknown placeholder {}"),
    ('[apps.web]\ncommand = "run {port"\nport = 80\n', 2, "apps.web.command", 'stray brace in "{port"'),
    ('[apps.web]\ncommand = "run }"\n', 2, "apps.web.command", "stray brace"),
    ('[apps.web]\ncommand = "run {port!z}"\nport = 80\n', 2, "apps.web.command", 'bad template "{port!z}"'),
    ('[apps.web]\ncommand = "run --port {port}"\n', 2, "apps.web.command", "uses {port} but the app has no port key"),
    ('[apps.web]\ncommand = ["run", "{port}"]\n', 2, "apps.web.command[1]", "no port key"),
    # ports, signals, addresses, paths, env
    (APP + "port = 0\n", 3, "apps.web.port", "expected an integer from 1 to 65535, got 0"),
    (APP + "port = true\n", 3, "apps.web.port", "got true"),
    (APP + "port = 65535\ninstances = 2\n", 3, "apps.web.port", "2 instances from port 65535 run to 65536, past 65535"),
    (APP + 'stop_signal = "SIGFOO"\n', 3, "apps.web.stop_signal",
     'expected a signal like "SIGTERM" or a number, got "SIGFOO"'),
    (APP + 'stop_signal = "SIGTREM"\n', 3, "apps.web.stop_signal", '(did you mean "SIGTERM"?)'),
    (APP + "stop_signal = 999\n", 3, "apps.web.stop_signal", "got 999"),
    (APP + 'listen = ["127.0.0.1:8080", "localhost"]\n', 3, "apps.web.listen[1]",
     'expected an address "host:port" (like "127.0.0.1:8080" or "[::1]:8080") or "unix:/path", got "localhost"'),
    (APP + 'listen = "127.0.0.1:80"\n', 3, "apps.web.listen", "expected an array of addresses"),
    (APP + 'cwd = "missing"\n', 3, "apps.web.cwd", "no such directory: "),
    (APP + 'cwd = "supervise.toml"\n', 3, "apps.web.cwd", "not a directory: "),
    (APP + "cwd = 1\n", 3, "apps.web.cwd", "expected a non-empty string, got 1"),
    (APP + 'env = "MODE=prod"\n', 3, "apps.web.env", 'expected a table like { MODE = "prod" }'),
    (APP + "env = { MODE = [1] }\n", 3, "apps.web.env.MODE", "expected a string, number or boolean, got [1]"),
    (APP + 'env = { "A=B" = "x" }\n', 3, 'apps.web.env."A=B"', "may not be empty or contain"),
    # backoff and crash_loop
    (APP + "backoff = 3\n", 3, "apps.web.backoff", "expected a table like"),
    (APP + "backoff = { multiplier = 0.5 }\n", 3, "apps.web.backoff.multiplier", "expected a number >= 1, got 0.5"),
    (APP + "backoff = { jitter = 1.5 }\n", 3, "apps.web.backoff.jitter", "expected a number from 0 to 1, got 1.5"),
    (APP + 'backoff = { initial = "2s", max = "1s" }\n', 3, "apps.web.backoff.max", "max (1s) must be >= initial (2s)"),
    (APP + 'backoff.initial = "1m"\n', 3, "apps.web.backoff.initial", "max (30s) must be >= initial (60s)"),
    (APP + "crash_loop = { max_restarts = -1 }\n", 3, "apps.web.crash_loop.max_restarts", "got -1"),
    (APP + 'crash_loop = { window = "x" }\n', 3, "apps.web.crash_loop.window", "expected a duration"),
    # dependencies
    (APP + 'depends_on = ["dbb"]\n[apps.db]\ncommand = "x"\n', 3, "apps.web.depends_on[0]",
     'no app named "dbb" (did you mean "db"?)'),
    (APP + 'depends_on = ["web"]\n', 3, "apps.web.depends_on[0]", "an app cannot depend on itself"),
    # [supervise] and the shape of the file
    ("[supervise]\nstate_dir = 3\n", 2, "supervise.state_dir", "expected a non-empty string, got 3"),
    ('[supervise]\nlog_format = "xml"\n', 2, "supervise.log_format", 'expected one of "console", "json", got "xml"'),
    ('[supervise]\nlog_level = "verbose"\n', 2, "supervise.log_level", 'got "verbose"'),
    ("supervise = 1\n", 1, "supervise", "expected a table, got 1"),
    ("apps = 3\n", 1, "apps", "expected a table of apps like [apps.web], got 3"),
    ('[[apps]]\ncommand = "x"\n', 1, "apps", "expected a table of apps"),
    ("apps.web = 3\n", 1, "apps.web", "expected a table like [apps.web], got 3"),
    ('[apps."web:1"]\ncommand = "x"\n', 1, 'apps."web:1"', 'app names may use only letters, digits, "_", "." and "-"'),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), BAD, ids=[f"{case[2]}-{case[1]}" for case in BAD])
def test_bad_config_is_located(text: str, line: int, key: str, message: str) -> None:
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(f"supervise.toml:{line}: {key}: "), found
    assert message in found[0], found


def test_dependency_cycle_reports_the_path() -> None:
    found = problems("""
        [apps.a]
        command = "x"
        [apps.b]
        command = "x"
        depends_on = ["c"]
        [apps.c]
        command = "x"
        depends_on = ["d"]
        [apps.d]
        command = "x"
        depends_on = ["b", "a"]
        """)
    assert found == ["supervise.toml:5: apps.b.depends_on: dependency cycle: b -> c -> d -> b"]


def test_toml_syntax_error_has_its_line() -> None:
    found = problems('[apps.web]\ncommand = "x"\ninstances = = 3\n')
    assert found == ["supervise.toml:3: invalid TOML: invalid value (column 13)"]


def test_duplicate_key_is_a_toml_error() -> None:
    found = problems('[apps.web]\ncommand = "x"\ncommand = "y"\n')
    assert len(found) == 1 and found[0].startswith("supervise.toml:3: invalid TOML: ")


def test_unterminated_table_at_end_of_file() -> None:
    assert problems('[apps.web]\ncommand = "x"\n[apps')[0].startswith("supervise.toml:3: invalid TOML: ")


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as caught:
        load("nope.toml")
    assert str(caught.value) == "nope.toml: no such file"
    assert caught.value.problems == [Problem(Path("nope.toml"), None, "", "no such file")]


def test_directory_instead_of_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load(in_tmp)


def test_not_utf8() -> None:
    Path("supervise.toml").write_bytes(b'[apps.web]\ncommand = "\xff"\n')
    with pytest.raises(ConfigError, match=r"^supervise.toml:2: not UTF-8 text$"):
        load("supervise.toml")


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text("""
            [supervise]
            log_levl = "info"

            [apps.web]
            command = "run --port {port}"
            instances = "four"
            stop_signal = "NOPE"
            backoff = { initial = "1x", jitter = 2 }
            depends_on = ["ghost"]
            """)
    assert str(caught.value).splitlines() == [
        'supervise.toml:2: supervise.log_levl: unknown key (did you mean "log_level"?)',
        "supervise.toml:5: apps.web.command: uses {port} but the app has no port key",
        'supervise.toml:6: apps.web.instances: expected an integer >= 0, "max" (one per CPU) or "max-N" (N fewer '
        'than the CPUs), got "four"',
        'supervise.toml:7: apps.web.stop_signal: expected a signal like "SIGTERM" or a number, got "NOPE"',
        'supervise.toml:8: apps.web.backoff.initial: expected a duration like "500ms", "10s" or "5m", got "1x"',
        "supervise.toml:8: apps.web.backoff.jitter: expected a number from 0 to 1, got 2",
        'supervise.toml:9: apps.web.depends_on[0]: no app named "ghost"',
    ]


def test_every_bad_item_of_an_array_is_reported() -> None:
    found = problems(APP + 'listen = ["nope", "127.0.0.1:1", "x:99999"]\n')
    assert [problem.split(": ")[1] for problem in found] == ["apps.web.listen[0]", "apps.web.listen[2]"]


def test_config_error_pickles_and_problem_formats() -> None:
    problem = Problem(Path("supervise.toml"), 14, "apps.web.instances", 'expected an integer >= 0, got "four"')
    assert str(problem) == 'supervise.toml:14: apps.web.instances: expected an integer >= 0, got "four"'
    error = ConfigError([problem, Problem(Path("s.toml"), None, "apps", "oops")])
    assert str(error) == str(problem) + "\ns.toml: apps: oops"
    assert pickle.loads(pickle.dumps(error)).problems == error.problems


# -- line numbers ----------------------------------------------------------------


def test_dotted_keys_get_their_own_lines() -> None:
    found = problems("""
        apps.web.command = "x"
        apps.web.instances = "four"

        [apps.api]
        command = "y"
        backoff.initial = "soon"
        """)
    assert [problem.split(": ")[0:2] for problem in found] == [
        ["supervise.toml:2", "apps.web.instances"],
        ["supervise.toml:6", "apps.api.backoff.initial"],
    ]


def test_quoted_and_spaced_headers() -> None:
    found = problems("""
        # a comment with [brackets] and key = "value"
        [ apps . "my.app" ]   # trailing comment
        command = 'x'
        'instances' = -1
        """)
    assert found == ['supervise.toml:4: apps."my.app".instances: expected an integer >= 0, got -1']


def test_multiline_strings_and_arrays_do_not_confuse_lines() -> None:
    found = problems('''
        [apps.web]
        command = """
        run
        [apps.fake]
        instances = "no"
        """
        watch = [
          "a.py",  # comment ]
          3,
        ]
        env = { A = "}", B = { x = 1 } }
        stop_timeout = 'C:\\path'
        restart = "x"
        ''')
    assert [problem.split(": ")[0:2] for problem in found] == [
        ["supervise.toml:9", "apps.web.watch[1]"],
        ["supervise.toml:11", "apps.web.env.B"],
        ["supervise.toml:12", "apps.web.stop_timeout"],
        ["supervise.toml:13", "apps.web.restart"],
    ]


def test_missing_key_falls_back_to_its_table() -> None:
    found = problems('[supervise]\nlog_level = "info"\n\n\n[apps.web]\ninstances = 1\n')
    assert found[0].startswith("supervise.toml:5: apps.web.command: missing")


def test_line_index_directly() -> None:
    lines = LineIndex(dedent("""\
        title = "x"
        [a]
        b.c = 1
        d = { e = 2, "f g" = [1, { h = 3 }] }
        s = '''
        [z]
        '''
        [[arr]]
        k = 1
        """))
    assert lines.line_of(("title",)) == 1
    assert lines.line_of(("a",)) == 2
    assert lines.line_of(("a", "b")) == lines.line_of(("a", "b", "c")) == 3
    assert lines.line_of(("a", "d", "f g", 1, "h")) == 4
    assert lines.line_of(("a", "d", "missing", 3)) == 4
    assert lines.line_of(("z",)) is None
    assert lines.line_of(("arr", "k")) == 9
    assert lines.line_of(("arr",)) == 8


def test_key_text_quotes_what_toml_would() -> None:
    assert key_text(("apps", "my.app", "listen", 1)) == 'apps."my.app".listen[1]'
    assert key_text(("apps", "web-1_x")) == "apps.web-1_x"


# -- locate_state_dir ------------------------------------------------------------


def test_locate_state_dir_of_a_broken_but_toml_file(in_tmp: Path) -> None:
    write('[supervise]\nstate_dir = "var/sv"\nbogus = 1\n[apps.web]\ninstances = "four"\n')
    assert locate_state_dir("supervise.toml") == in_tmp / "var" / "sv"


@pytest.mark.parametrize("text", ["", "[supervise]\nstate_dir = 3\n", "supervise = 3\n", "[apps.x]\n"])
def test_locate_state_dir_defaults(in_tmp: Path, text: str) -> None:
    write(text)
    assert locate_state_dir(in_tmp / "supervise.toml") == in_tmp / ".supervise"


def test_locate_state_dir_needs_a_toml_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        locate_state_dir("missing.toml")
    write("[supervise\nstate_dir = 'var'\n")  # a form the scanner leaves to tomllib
    with pytest.raises(ConfigError, match=r"^supervise.toml:1: invalid TOML"):
        locate_state_dir("supervise.toml")


def test_reload_surge_defaults_to_one_and_to_zero_for_apps_that_bind_their_own_port() -> None:
    config = load_text("""
    [apps.a]
    command = "x"
    [apps.b]
    command = "x --port {port}"
    port = 9000
    [apps.c]
    command = "x --port {port}"
    port = 9100
    listen = ["127.0.0.1:9200"]
    [apps.d]
    command = "x"
    reload_surge = 3
    """)
    assert [app.surge() for app in config.apps.values()] == [1, 0, 1, 3]


def test_reload_surge_must_be_a_count() -> None:
    found = problems("""
    [apps.a]
    command = "x"
    reload_surge = -1
    """)
    assert found == ["supervise.toml:3: apps.a.reload_surge: expected an integer >= 0, got -1"]
