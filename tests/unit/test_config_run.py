"""The keys of issue 14: probes, listen tables, run-as, env files, includes, instances per CPU,
shell commands, recycling, other supervisors' key names, and the warnings `check` prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_config import in_tmp, load_text, problems, write  # noqa: F401  (in_tmp: an autouse fixture)

from supervise.config import commands, dotenv
from supervise.config.loader import ConfigError, load
from supervise.config.model import ListenOptions, Probe, ProbeKind, Readiness

APP = '[apps.web]\ncommand = "run"\n'  # the tested key goes on line 3
PORTED = '[apps.web]\ncommand = "run"\nport = 8000\n'  # ... on line 4
REPO = Path(__file__).resolve().parents[2]


def app(text: str):
    return load_text(text).apps["web"]


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# -- readiness -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["none", "heartbeat", "notify"])
def test_readiness_names_without_a_probe(name):
    web = app(APP + f'readiness = "{name}"\n')
    assert web.readiness is Readiness(name) and web.readiness_probe is None


def test_readiness_http_and_tcp_strings_probe_the_instance_port():
    web = app(PORTED + 'readiness = "http"\ninstances = 2\n')
    assert web.readiness is Readiness.HTTP
    assert web.readiness_probe == Probe(ProbeKind.HTTP, ("http://127.0.0.1:{port}/",), 1.0, 1.0, 3, 1)
    assert web.readiness_probe.render("web", 1, web.port) == ("http://127.0.0.1:8001/",)
    web = app(PORTED + 'readiness = "tcp"\n')
    assert (web.readiness, web.readiness_probe.target) == (Readiness.TCP, ("127.0.0.1:{port}",))


@pytest.mark.parametrize("kind", ["http", "tcp"])
def test_readiness_string_probe_needs_a_port(kind):
    found = one_problem(APP + f'readiness = "{kind}"\n')
    assert found.startswith(f'supervise.toml:3: apps.web.readiness: readiness = "{kind}" probes ')
    assert "needs the app's port key" in found and f"readiness = {{ {kind} = " in found


def test_readiness_exec_string_asks_for_the_command():
    found = one_problem(APP + 'readiness = "exec"\n')
    assert found.startswith('supervise.toml:3: apps.web.readiness: readiness = "exec" needs the command to run')
    assert 'readiness = { exec = ["./check", "{instance}"] }' in found


def test_readiness_unknown_name_lists_the_choices():
    found = one_problem(APP + 'readiness = "notfy"\n')
    assert 'expected one of "none", "heartbeat", "notify", "http", "tcp", "exec" or a probe table' in found
    assert '(did you mean "notify"?)' in found


def test_readiness_http_table_with_settings():
    web = app(APP + 'readiness = { http = "http://127.0.0.1:9000/health?x={instance}", interval = "500ms", '
                    'timeout = "2s", failures = 5, successes = 2 }\n')
    assert web.readiness is Readiness.HTTP
    assert web.readiness_probe == Probe(ProbeKind.HTTP, ("http://127.0.0.1:9000/health?x={instance}",), 0.5, 2.0, 5, 2)


def test_readiness_http_path_is_on_the_instance_port():
    web = app(PORTED + 'readiness = { http = "/health" }\n')
    assert web.readiness_probe.target == ("http://127.0.0.1:{port}/health",)
    found = one_problem(APP + 'readiness = { http = "/health" }\n')
    assert found.startswith("supervise.toml:3: apps.web.readiness.http: a path alone is probed on ")
    assert '"http://127.0.0.1:8080/health"' in found


def test_readiness_tcp_table_host_port_and_unix(tmp_path):
    assert app(PORTED + 'readiness = { tcp = "127.0.0.1:{port}" }\n').readiness_probe.target == ("127.0.0.1:{port}",)
    web = app(APP + 'readiness = { tcp = "unix:run/web-{instance}.sock" }\n')
    assert web.readiness is Readiness.TCP
    assert web.readiness_probe.target == (f"unix:{tmp_path}/run/web-{{instance}}.sock",)
    assert app(APP + 'readiness = { tcp = "unix:@abs" }\n').readiness_probe.target == ("unix:@abs",)


def test_readiness_exec_table_string_and_array():
    web = app(APP + "readiness = { exec = \"./check --name '{app} {instance}'\" }\n")
    assert web.readiness is Readiness.EXEC
    assert web.readiness_probe.target == ("./check", "--name", "{app} {instance}")
    assert app(APP + 'readiness = { exec = ["./check", "{instance}"] }\n').readiness_probe.target == (
        "./check", "{instance}")


def test_probe_defaults():
    probe = app(APP + 'readiness = { exec = ["true"] }\n').readiness_probe
    assert (probe.interval, probe.timeout, probe.failures, probe.successes) == (1.0, 1.0, 3, 1)
    probe = app(APP + 'liveness = { exec = ["true"] }\n').liveness
    assert (probe.interval, probe.timeout, probe.failures) == (10.0, 1.0, 3)


PROBE_PROBLEMS = [  # (probe table, key path under apps.web.readiness, message fragment)
    ("{}", "", "a probe has exactly one of http, tcp or exec (got none)"),
    ('{ interval = "1s" }', "", "got none"),
    ('{ http = "/h", tcp = "127.0.0.1:1" }', "", "(got http and tcp)"),
    ('{ htp = "/h", exec = ["x"] }', ".htp", 'unknown key (did you mean "http"?)'),
    ('{ exec = ["x"], interval = 0 }', ".interval", "expected a duration > 0, got 0"),
    ('{ exec = ["x"], timeout = "soon" }', ".timeout", "expected a duration like"),
    ('{ exec = ["x"], failures = 0 }', ".failures", "expected an integer >= 1, got 0"),
    ('{ exec = ["x"], successes = true }', ".successes", "expected an integer >= 1, got true"),
    ('{ http = "https://127.0.0.1/h" }', ".http", "https probes are not supported"),
    ('{ http = "ftp://127.0.0.1/h" }', ".http", 'expected an http:// URL like "http://127.0.0.1:{port}/health"'),
    ('{ http = "http:///h" }', ".http", "expected an http:// URL"),
    ('{ http = "http://127.0.0.1:0/h" }', ".http", "a port from 1 to 65535"),
    ('{ http = "http://127.0.0.1:99999/h" }', ".http", "a port from 1 to 65535"),
    ('{ http = "http://h/{nope}" }', ".http", "unknown placeholder {nope}"),
    ('{ http = "http://127.0.0.1:{port}/" }', ".http", "uses {port} but the app has no port key"),
    ('{ http = 80 }', ".http", "expected a non-empty string, got 80"),
    ('{ tcp = "localhost" }', ".tcp", "expected an address"),
    ('{ tcp = "127.0.0.1:0" }', ".tcp", "a port from 1 to 65535"),
    ('{ tcp = "127.0.0.1:{port}" }', ".tcp", "uses {port} but the app has no port key"),
    ('{ exec = [] }', ".exec", "non-empty array of strings"),
    ('{ exec = ["x", "{port}"] }', ".exec[1]", "uses {port} but the app has no port key"),
    ('{ exec = "x {port}" }', ".exec", "uses {port} but the app has no port key"),
    ('{ exec = "x {inst}" }', ".exec", "unknown placeholder {inst}"),
]


@pytest.mark.parametrize(("table", "key", "message"), PROBE_PROBLEMS, ids=[case[0] for case in PROBE_PROBLEMS])
def test_probe_problems_are_located(table, key, message):
    found = one_problem(APP + f"readiness = {table}\n")
    assert found.startswith(f"supervise.toml:3: apps.web.readiness{key}: "), found
    assert message in found, found


def test_probe_keys_on_their_own_lines_are_located():
    found = problems(APP + '[apps.web.readiness]\nhttp = "/h"\ninterval = "fast"\n')
    assert [problem.split(": ")[:2] for problem in found] == [
        ["supervise.toml:4", "apps.web.readiness.http"], ["supervise.toml:5", "apps.web.readiness.interval"]]


def test_readiness_not_a_string_or_table():
    assert one_problem(APP + "readiness = 3\n").startswith("supervise.toml:3: apps.web.readiness: expected one of")


# -- liveness --------------------------------------------------------------------------


def test_liveness_forms():
    web = app(PORTED + 'liveness = "http"\n')
    assert web.liveness == Probe(ProbeKind.HTTP, ("http://127.0.0.1:{port}/",), interval=10.0)
    assert web.readiness is Readiness.NONE and web.readiness_probe is None
    web = app(PORTED + 'liveness = { tcp = "127.0.0.1:{port}", interval = "5s", failures = 2 }\n')
    assert web.liveness == Probe(ProbeKind.TCP, ("127.0.0.1:{port}",), 5.0, 1.0, 2, 1)
    assert app(APP).liveness is None


def test_liveness_refuses_successes_and_other_names():
    found = one_problem(APP + 'liveness = { exec = ["x"], successes = 2 }\n')
    assert found.startswith("supervise.toml:3: apps.web.liveness.successes: successes is for readiness only")
    for value in ('"exec"', '"none"', '"heartbeat"', "3"):
        found = one_problem(APP + f"liveness = {value}\n")
        assert found.startswith('supervise.toml:3: apps.web.liveness: expected "http", "tcp" or a probe table')
    assert "needs the app's port key" in one_problem(APP + 'liveness = "tcp"\n')


# -- ready_after -----------------------------------------------------------------------


def test_ready_after():
    assert app(APP).ready_after == 1.0
    assert app(APP + 'ready_after = "2.5s"\n').ready_after == 2.5
    assert app(APP + "ready_after = 0\n").ready_after == 0.0
    assert one_problem(APP + "ready_after = -1\n") == (
        "supervise.toml:3: apps.web.ready_after: expected a duration >= 0, got -1")


def test_ready_after_with_a_readiness_signal_is_a_warning():
    config = load_text(APP + 'readiness = "heartbeat"\nready_after = "3s"\n')
    [warning] = config.warnings
    assert warning.startswith('supervise.toml:4: apps.web.ready_after: counts only with readiness = "none"')
    assert load_text(APP + 'readiness = "none"\nready_after = "3s"\n').warnings == ()


# -- listen tables ---------------------------------------------------------------------


def test_listen_tables_and_strings_mix(tmp_path):
    web = app(APP + 'listen = ["127.0.0.1:8080", { address = "[::1]:9000", nodelay = false, backlog = 4096, '
                    'reuseport = true }, { address = "unix:web.sock", mode = "0660", owner = "nobody", '
                    'group = "nogroup" }, { address = "unix:b.sock", mode = 0o600, owner = 0, group = 0 }]\n')
    sock, other = f"unix:{tmp_path}/web.sock", f"unix:{tmp_path}/b.sock"
    assert web.listen == ("127.0.0.1:8080", "[::1]:9000", sock, other)
    assert web.listen_options == {
        "[::1]:9000": ListenOptions(nodelay=False, backlog=4096, reuseport=True),
        sock: ListenOptions(mode=0o660, owner="nobody", group="nogroup"),
        other: ListenOptions(mode=0o600, owner="0", group="0"),
    }
    assert web.listen_option("127.0.0.1:8080") == ListenOptions()


@pytest.mark.parametrize(("mode", "bits"), [('"0660"', 0o660), ('"660"', 0o660), ('"0o640"', 0o640),
                                            ("0o777", 0o777), ("0", 0), ('"0000"', 0)])
def test_listen_mode_forms(mode, bits):
    web = app(APP + f'listen = [{{ address = "unix:/tmp/x.sock", mode = {mode} }}]\n')
    assert web.listen_options["unix:/tmp/x.sock"].mode == bits


LISTEN_PROBLEMS = [  # (entry, key path under apps.web.listen[0], message fragment)
    ('{ backlog = 10 }', "", "missing address, like { address ="),
    ('{ address = "nohost" }', ".address", "expected an address"),
    ('{ address = "127.0.0.1:80", mode = "0660" }', ".mode", "mode is for unix: sockets only"),
    ('{ address = "127.0.0.1:80", owner = "nobody" }', ".owner", "owner is for unix: sockets only"),
    ('{ address = "127.0.0.1:80", group = "nogroup" }', ".group", "group is for unix: sockets only"),
    ('{ address = "unix:/x.sock", nodelay = true }', ".nodelay", "nodelay is for TCP sockets only"),
    ('{ address = "unix:/x.sock", reuseport = true }', ".reuseport", "reuseport is for TCP sockets only"),
    ('{ address = "unix:@abs", mode = "0600" }', ".mode", "an abstract one"),
    ('{ address = "127.0.0.1:80", backlog = 0 }', ".backlog", "expected an integer from 1 to 65535, got 0"),
    ('{ address = "127.0.0.1:80", backlog = 70000 }', ".backlog", "from 1 to 65535"),
    ('{ address = "127.0.0.1:80", nodelay = "yes" }', ".nodelay", 'expected true or false, got "yes"'),
    ('{ address = "unix:/x.sock", mode = 660 }', ".mode", '(660 is a decimal number here: write 0o660 or "0660")'),
    ('{ address = "unix:/x.sock", mode = "1777" }', ".mode", 'expected permission bits like "0660"'),
    ('{ address = "unix:/x.sock", mode = "rw" }', ".mode", 'expected permission bits like "0660"'),
    ('{ address = "unix:/x.sock", owner = "no-such-user-x" }', ".owner", 'no such user: "no-such-user-x"'),
    ('{ address = "unix:/x.sock", group = "no-such-group-x" }', ".group", 'no such group: "no-such-group-x"'),
    ('{ address = "unix:/x.sock", owner = -1 }', ".owner", "expected a user name or a numeric id, got -1"),
    ('{ address = "127.0.0.1:80", nodely = true }', ".nodely", 'unknown key (did you mean "nodelay"?)'),
    ("3", "", 'or a table like { address = "127.0.0.1:8080"'),
]


@pytest.mark.parametrize(("entry", "key", "message"), LISTEN_PROBLEMS, ids=[case[0] for case in LISTEN_PROBLEMS])
def test_listen_table_problems_are_located(entry, key, message):
    found = one_problem(APP + f"listen = [{entry}]\n")
    assert found.startswith(f"supervise.toml:3: apps.web.listen[0]{key}: "), found
    assert message in found, found


def test_listen_table_items_on_their_own_lines():
    found = problems(APP + 'listen = [\n  "127.0.0.1:1",\n  { address = "unix:/x", nodelay = true },\n]\n')
    assert found == ["supervise.toml:5: apps.web.listen[1].nodelay: nodelay is for TCP sockets only, not a unix: one"]


# -- user, group, umask ----------------------------------------------------------------


def test_user_group_umask():
    web = app(APP + 'user = "nobody"\ngroup = "nogroup"\numask = "0027"\n')
    assert (web.user, web.group, web.umask) == ("nobody", "nogroup", 0o027)
    web = app(APP + "user = 65534\ngroup = 0\numask = 0o002\n")
    assert (web.user, web.group, web.umask) == ("65534", "0", 0o002)
    assert (app(APP).user, app(APP).group, app(APP).umask) == (None, None, None)


@pytest.mark.parametrize(("line", "key", "message"), [
    ('user = "no-such-user-x"', "user", 'no such user: "no-such-user-x"'),
    ('group = "no-such-group-x"', "group", 'no such group: "no-such-group-x"'),
    ('user = ""', "user", 'expected a user name or a numeric id, got ""'),
    ('user = "a\\u0000b"', "user", "no such user"),
    ('umask = "0999"', "umask", 'expected a umask like "0022" or 0o022, got "0999"'),
    ("umask = 22", "umask", 'umask = 22 is a decimal number (0o26 in octal): permission bits are written in octal, '
                            'like 0o22 or "0022"'),
    ("umask = 18", "umask", 'like 0o022 or "0022"'),
    ("umask = 1000", "umask", "expected a umask"),
    ("user = 4000000000000", "user", "expected a user name or a numeric id"),
    ('user = "4000000000000"', "user", "below 2**32"),
])
def test_run_as_problems(line, key, message):
    found = one_problem(APP + line + "\n")
    assert found.startswith(f"supervise.toml:3: apps.web.{key}: "), found
    assert message in found, found


@pytest.mark.parametrize(("line", "bits"), [("umask = 0o022", 0o022), ("umask = 7", 7), ("umask = 0", 0),
                                            ('umask = "22"', None), ("umask = 0o77 # = 63", 0o77)])
def test_umask_in_octal(line, bits):
    if bits is None:
        assert "expected a umask" in one_problem(APP + line + "\n")
    else:
        assert app(APP + line + "\n").umask == bits


def test_a_decimal_listen_mode_is_refused_on_its_line():
    found = problems(APP + 'listen = [\n  { address = "unix:/a", mode = 0o600 },\n'
                           '  { address = "unix:/b", mode = 400 },\n]\n')
    assert found == ['supervise.toml:5: apps.web.listen[1].mode: mode = 400 is a decimal number (0o620 in octal): '
                     'permission bits are written in octal, like 0o400 or "0400"']


def test_a_numeric_user_without_an_entry_needs_a_group():
    uid = next(uid for uid in range(40000, 50000) if not _has_uid(uid))
    found = one_problem(APP + f"user = {uid}\n")
    assert found.startswith(f"supervise.toml:3: apps.web.user: uid {uid} has no entry in the user database")
    assert app(APP + f"user = {uid}\ngroup = 0\n").user == str(uid)


def _has_uid(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_switching_user_needs_a_root_daemon(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 12345)
    monkeypatch.setattr(os, "getegid", lambda: 12345)
    found = problems(APP + 'user = "nobody"\ngroup = "nogroup"\n')
    assert found[0].startswith('supervise.toml:3: apps.web.user: running as "nobody" needs the daemon to run as root '
                               "(it runs as 12345)")
    assert found[1].startswith('supervise.toml:4: apps.web.group: running as group "nogroup" needs the daemon to run '
                               "as root")
    assert app(APP + "user = 12345\ngroup = 12345\numask = 0o077\n").user == "12345"  # its own: fine


# -- env_file --------------------------------------------------------------------------


def test_env_file_is_merged_under_env(tmp_path):
    (tmp_path / ".env").write_text("A=from-file\nB=file-only\n")
    web = app(APP + 'env_file = ".env"\nenv = { A = "from-env" }\n')
    assert web.env == {"A": "from-env", "B": "file-only"}
    assert web.env_file == tmp_path / ".env"


def test_env_files_later_wins_and_paths_are_relative_to_the_config(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "a.env").write_text("A=1\nB=1\n")
    (tmp_path / "etc" / "b.env").write_text("B=2\n")
    write(APP + 'env_file = ["a.env", "b.env"]\n', "etc/s.toml")
    monkeypatch.chdir("/")
    web = load(tmp_path / "etc" / "s.toml").apps["web"]
    assert web.env == {"A": "1", "B": "2"} and web.env_file == tmp_path / "etc" / "a.env"


def test_env_file_syntax():
    text = (
        "# a comment\n"
        "\n"
        "PLAIN=value\n"
        "  SPACED = spaced value   # trailing comment\n"
        "export EXPORTED=yes\n"
        "HASH=a#b\n"
        "EMPTY=\n"
        "SINGLE='literal $HOME \\n # not a comment'\n"
        'DOUBLE="tab\\there \\"quoted\\" back\\\\slash\\nnewline" # comment\n'
        "MULTI=\"line one\n"
        "line two\"\n"
        "UNKNOWN_ESCAPE=\"a\\qb\"\n"
        "DOLLAR=$HOME\n"
        "CRLF=x\r\n"
    )
    values, errors = dotenv.parse(text)
    assert errors == []
    assert values == {
        "PLAIN": "value", "SPACED": "spaced value", "EXPORTED": "yes", "HASH": "a#b", "EMPTY": "",
        "SINGLE": "literal $HOME \\n # not a comment", "DOUBLE": 'tab\there "quoted" back\\slash\nnewline',
        "MULTI": "line one\nline two", "UNKNOWN_ESCAPE": "a\\qb", "DOLLAR": "$HOME", "CRLF": "x",
    }


@pytest.mark.parametrize(("text", "line", "message"), [
    ("A=1\nno equals sign\n", 2, 'expected KEY=VALUE, got "no equals sign"'),
    ("A=1\n\n1BAD=x\n", 3, 'not a valid environment name: "1BAD"'),
    ("WITH SPACE=x\n", 1, 'not a valid environment name: "WITH SPACE"'),
    ("=x\n", 1, 'not a valid environment name: ""'),
    ('A="open\nB=2\n', 1, 'no closing " for the value that starts here'),
    ("A='x' y\n", 1, "unexpected text after the closing '"),
    ("A=\"x\\u0000\"\nB=a\x00b\n", 2, "B: a value cannot contain a NUL character"),
])
def test_env_file_bad_lines(text, line, message):
    values, errors = dotenv.parse(text)
    assert [(at, found) for at, found in errors if message in found] == [(line, errors[-1][1])], errors


def test_env_file_errors_name_the_env_file_and_its_line(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "web.env").write_text("A=1\n\nthis is not an assignment\nB=2\n")
    found = one_problem(APP + 'env_file = "conf/web.env"\n')
    assert found == ('conf/web.env:3: apps.web.env_file: expected KEY=VALUE, got "this is not an assignment"')


def test_env_file_array_errors_name_the_item(tmp_path):
    (tmp_path / "ok.env").write_text("A=1\n")
    found = one_problem(APP + 'env_file = ["ok.env", "missing.env"]\n')
    assert found == "supervise.toml:3: apps.web.env_file[1]: no such file: missing.env"


@pytest.mark.parametrize(("value", "message"), [
    ('"missing.env"', "no such file: missing.env"),
    ('"."', "is a directory, not an env file: ."),
    ("[]", 'expected a path or an array of paths, like ".env" or [".env", ".env.local"], got []'),
    ("3", 'expected a path or an array of paths, like ".env" or [".env", ".env.local"], got 3'),
    ('""', 'expected a non-empty string, got ""'),
])
def test_env_file_problems(value, message):
    assert one_problem(APP + f"env_file = {value}\n") == f"supervise.toml:3: apps.web.env_file: {message}"


def test_env_file_not_utf8(tmp_path):
    (tmp_path / "bad.env").write_bytes(b"A=1\nB=\xff\n")
    assert one_problem(APP + 'env_file = "bad.env"\n') == "bad.env:2: apps.web.env_file: not UTF-8 text"


def test_env_file_is_read_again_on_each_load(tmp_path):
    (tmp_path / ".env").write_text("A=1\n")
    write(APP + 'env_file = ".env"\n')
    assert load("supervise.toml").apps["web"].env == {"A": "1"}
    (tmp_path / ".env").write_text("A=2\n")
    assert load("supervise.toml").apps["web"].env == {"A": "2"}


# -- include ---------------------------------------------------------------------------


def test_include_merges_apps_in_order(tmp_path):
    (tmp_path / "conf.d").mkdir()
    write('[apps.b]\ncommand = "b"\n[apps.a]\ncommand = "a"\n', "conf.d/20-b.toml")
    write('[apps.c]\ncommand = "c"\ndepends_on = ["main"]\n', "conf.d/10-c.toml")
    write('[apps.x]\ncommand = "x"\n', "extra.toml")
    write('[supervise]\ninclude = ["conf.d/*.toml", "extra.toml", "nothing/*.toml"]\n'
          '[apps.main]\ncommand = "m"\n')
    config = load("supervise.toml")
    assert list(config.apps) == ["main", "c", "b", "a", "x"]
    conf = tmp_path / "conf.d"
    assert config.included == (conf / "10-c.toml", conf / "20-b.toml", tmp_path / "extra.toml")
    assert config.supervise.include == ("conf.d/*.toml", "extra.toml", "nothing/*.toml")
    assert config.text == Path("supervise.toml").read_text()


def test_include_skips_the_main_file_directories_and_repeats(tmp_path):
    (tmp_path / "sub.toml").mkdir()
    write('[apps.x]\ncommand = "x"\n', "x.toml")
    write('[supervise]\ninclude = ["*.toml", "x.toml"]\n[apps.main]\ncommand = "m"\n')
    config = load("supervise.toml")
    assert list(config.apps) == ["main", "x"] and config.included == (tmp_path / "x.toml",)


def test_an_included_files_error_names_that_file_and_line(tmp_path):
    (tmp_path / "conf.d").mkdir()
    write('[apps.ok]\ncommand = "x"\n\n[apps.web]\ncommand = "x"\ninstances = "four"\n', "conf.d/web.toml")
    write('[supervise]\ninclude = ["conf.d/*.toml"]\n[apps.main]\ncommand = "m"\ninstances = -1\n')
    with pytest.raises(ConfigError) as caught:
        load("supervise.toml")
    assert [str(problem).split(": ")[:2] for problem in caught.value.problems] == [
        ["supervise.toml:5", "apps.main.instances"], ["conf.d/web.toml:6", "apps.web.instances"]]


def test_an_included_file_may_hold_only_apps(tmp_path):
    write('[supervise]\nlog_level = "debug"\n\n[apps.x]\ncommand = "x"\nbogus = 1\n', "inc.toml")
    write('[supervise]\ninclude = ["inc.toml"]\n')
    found = problems_of("supervise.toml")
    assert found == [
        "inc.toml:1: supervise: an included file may hold only [apps.*] tables; [supervise] belongs in the main "
        "file, supervise.toml",
        'inc.toml:6: apps.x.bogus: unknown key',
    ]


def test_an_app_defined_twice_names_both_places(tmp_path):
    write('# more apps\n[apps.web]\ncommand = "y"\n', "inc.toml")
    write('[supervise]\ninclude = ["inc.toml"]\n\n[apps.web]\ncommand = "x"\n')
    assert problems_of("supervise.toml") == [
        'inc.toml:2: apps.web: app "web" is defined twice: first at supervise.toml:4']


def test_an_included_file_with_bad_toml(tmp_path):
    write("[apps.x\n", "inc.toml")
    write('[supervise]\ninclude = ["inc.toml"]\n')
    [found] = problems_of("supervise.toml")
    assert found.startswith("inc.toml:1: invalid TOML: ")


def test_include_problems():
    assert one_problem('[supervise]\ninclude = "conf.d/*.toml"\n') == (
        'supervise.toml:2: supervise.include: expected an array of globs, got "conf.d/*.toml"')
    assert one_problem('[supervise]\ninclude = ["a", ""]\n').startswith("supervise.toml:2: supervise.include[1]: ")


def problems_of(path: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return [str(problem) for problem in caught.value.problems]


# -- instances -------------------------------------------------------------------------


def test_instances_per_cpu(monkeypatch):
    monkeypatch.setattr(commands, "cpus", lambda: 8)
    assert app(APP + 'instances = "max"\n').instances == 8
    assert app(APP + 'instances = "max-1"\n').instances == 7
    assert app(APP + 'instances = "max-0"\n').instances == 8
    assert app(APP + 'instances = "max-20"\n').instances == 1
    assert app(APP + "instances = 3\n").instances == 3


def test_cpus_is_this_process_affinity():
    assert commands.cpus() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ['"maximum"', '"max+1"', '"max-"', '"max-x"', '"4"', '""'])
def test_instances_bad_strings(value):
    found = one_problem(APP + f"instances = {value}\n")
    assert found.startswith('supervise.toml:3: apps.web.instances: expected an integer >= 0, "max" (one per CPU) or '
                            '"max-N"'), found


# -- shell -----------------------------------------------------------------------------


def test_shell_keeps_the_command_whole():
    web = app('[apps.web]\ncommand = "exec python3 w.py --port {port} 2>&1 | tee $LOG"\nshell = true\nport = 80\n')
    assert web.shell and web.command == ("exec python3 w.py --port {port} 2>&1 | tee $LOG",)
    assert web.argv(1) == ["/bin/sh", "-c", "exec python3 w.py --port 81 2>&1 | tee $LOG"]
    assert load_text('[apps.web]\ncommand = "a | b"\nshell = true\n').warnings == ()


def test_shell_needs_a_string_command():
    found = one_problem('[apps.web]\ncommand = ["a", "b"]\nshell = true\n')
    assert found.startswith("supervise.toml:2: apps.web.command: with shell = true, command is one string")


def test_shell_command_braces_say_how_to_write_a_shell_variable():
    found = one_problem('[apps.web]\ncommand = "echo ${HOME}"\nshell = true\n')
    assert "unknown placeholder {HOME}" in found and "write $VAR, or ${{VAR}} for ${VAR}" in found
    assert app('[apps.web]\ncommand = "echo ${{HOME}}"\nshell = true\n').argv(0) == ["/bin/sh", "-c", "echo ${HOME}"]


def test_shell_must_be_a_boolean():
    assert one_problem(APP + 'shell = "yes"\n') == 'supervise.toml:3: apps.web.shell: expected true or false, got "yes"'


@pytest.mark.parametrize(("command", "found"), [
    ("run $PORT", "$PORT (a variable)"),
    ('run "$HOME/x"', "$HOME (a variable)"),
    ("run ${{X}}", "${...} (a variable)"),
    ("run $(date)", "$(...) (command substitution)"),
    ("run `date`", "`...` (command substitution)"),
    ("a; b", "; (a command separator)"),
    ("a | b", "| (a pipe)"),
    ("a|b", "| (a pipe)"),
    ("a && b", "&& (and-then)"),
    ("a || b", "|| (or-else)"),
    ("a &", "& (run in the background)"),
    ("curl http://h/x?a=1&b=2", "& (run in the background)"),
    ("a > out.log", "> (a redirection)"),
    ("a 2>&1", "> (a redirection)"),
    ("a < in", "< (a redirection)"),
    ("a *.py", "* (a file name pattern)"),
    ("a file?.txt", "? (a file name pattern)"),
    ("a ~/x", "~ (the home directory)"),
    ("~/bin/a", "~ (the home directory)"),
    ("exec gunicorn app:app", "exec (a shell builtin)"),
    ("cd /srv", "cd (a shell builtin)"),
    ("PORT=8000 node app.js", "PORT=... before the program (a variable assignment: use env, or env_file)"),
    ("python3 -c 'print(1)' $X", "$X (a variable)"),
])
def test_shell_syntax_is_found(command, found):
    assert commands.shell_syntax(command) == found


@pytest.mark.parametrize("command", [
    "python3 w.py --port {port}",
    "run 'a | b' \"c ; d\" 'it''s'",
    "run '$HOME' '*'",
    "run \\$HOME \\| \\*",
    "run --name '{app}:{instance}'",
    "curl http://h/x?a=1",
    "run --glob=*.py",
    "run a~b price$ 5$",
    "run \"a > b\"",
    'sh -c "exec w"',
    'sh -c "exec w --port $PORT > log"',
    "/bin/bash -c 'a | b'",
    "node app.js --flag=PORT=1",
    "'PORT=1' node",
    "",
])
def test_no_shell_syntax_in(command):
    assert commands.shell_syntax(command) is None


def test_shell_syntax_is_a_warning_not_an_error():
    config = load_text('[apps.web]\ncommand = "python3 w.py > out.log"\n')
    assert config.warnings == (
        "supervise.toml:2: apps.web.command: > (a redirection) is shell syntax, but no shell runs this command: it "
        "reaches the program as written; set shell = true to run it through /bin/sh -c, or write command as an array "
        "to say it is meant literally",)
    assert load_text('[apps.web]\ncommand = ["python3", "w.py", ">", "out.log"]\n').warnings == ()


# -- max_age ---------------------------------------------------------------------------


def test_max_age():
    web = app(APP + 'max_age = "24h"\nmax_age_jitter = "30m"\n')
    assert (web.max_age, web.max_age_jitter) == (86400.0, 1800.0)
    assert (app(APP).max_age, app(APP).max_age_jitter) == (None, 0.0)


@pytest.mark.parametrize(("lines", "found"), [
    ("max_age = 0", "supervise.toml:3: apps.web.max_age: expected a duration > 0, got 0"),
    ('max_age = "1h"\nmax_age_jitter = -1',
     "supervise.toml:4: apps.web.max_age_jitter: expected a duration >= 0, got -1"),
    ('max_age_jitter = "5m"', 'supervise.toml:3: apps.web.max_age_jitter: spreads max_age, which is not set: add '
                              'max_age, like max_age = "24h"'),
])
def test_max_age_problems(lines, found):
    assert one_problem(APP + lines + "\n") == found


# -- other supervisors' names ----------------------------------------------------------


@pytest.mark.parametrize(("key", "points_to"), [
    ("restart_delay", "backoff = { initial"), ("autorestart", "restart here"), ("numprocs", "instances here"),
    ("startsecs", "ready_after"), ("min_uptime", "ready_after"), ("stopwaitsecs", "stop_timeout"),
    ("kill_timeout", "stop_timeout"), ("stopsignal", "stop_signal"), ("directory", "cwd here"),
    ("environment", "env here"), ("max_memory_restart", "max_memory here"),
    ("startretries", "crash_loop.max_restarts"), ("cron_restart", "max_age here"), ("max_requests", "gunicorn"),
])
def test_other_supervisors_keys_point_to_ours(key, points_to):
    found = one_problem(APP + f"{key} = 1\n")
    assert found.startswith(f"supervise.toml:3: apps.web.{key}: unknown key: "), found
    assert points_to in found and "did you mean" not in found


def test_the_model_only_fields_are_not_keys():
    for key in ("readiness_probe", "listen_options"):
        assert one_problem(APP + f"{key} = 1\n").startswith(f"supervise.toml:3: apps.web.{key}: unknown key")


# -- probes on a shared listen socket --------------------------------------------------


@pytest.mark.parametrize("probe", [
    'readiness = { tcp = "127.0.0.1:8080" }',
    'readiness = { http = "http://localhost:8080/health" }',
    'liveness = { http = "http://127.0.0.1:8080/" }',
    'readiness = "http"\nport = 8080',
])
def test_a_probe_of_a_shared_listen_socket_is_a_warning(probe):
    config = load_text(APP + 'listen = ["0.0.0.0:8080"]\n' + probe + "\n")
    [warning] = config.warnings
    key = probe.split(" ")[0]
    assert warning.startswith(f'supervise.toml:4: apps.web.{key}: probes "0.0.0.0:8080", a shared listen socket: '
                              "every instance accepts there"), warning
    assert "per-instance address with {port}" in warning


def test_a_probe_of_a_shared_unix_socket_is_a_warning(tmp_path):
    config = load_text(APP + 'listen = ["unix:web.sock"]\nreadiness = { tcp = "unix:web.sock" }\n')
    assert len(config.warnings) == 1 and "a shared listen socket" in config.warnings[0]


@pytest.mark.parametrize("probe", [
    'readiness = { tcp = "127.0.0.1:{port}" }\nport = 9000',
    'readiness = { tcp = "127.0.0.1:8081" }',
    'readiness = { tcp = "10.0.0.1:8080" }\nlisten = ["127.0.0.1:8080"]',
    'readiness = { exec = ["curl", "127.0.0.1:8080"] }',
    'readiness = { tcp = "unix:other.sock" }',
])
def test_a_probe_elsewhere_is_no_warning(probe):
    text = APP + probe + "\n"
    if "listen" not in probe:
        text += 'listen = ["0.0.0.0:8080", "unix:web.sock"]\n'
    assert load_text(text).warnings == ()


# -- supervise check -------------------------------------------------------------------


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "supervise", "check", "-c", str(path)], capture_output=True,
                          text=True, env=env, timeout=60, cwd=path.parent)


def test_check_prints_warnings_and_exits_0(tmp_path):
    write('[supervise]\nstate_dir = "st"\n[apps.web]\ncommand = "python3 w.py | tee log"\nready_after = "2s"\n'
          'readiness = "heartbeat"\n')
    result = run_check(tmp_path / "supervise.toml")
    assert result.returncode == 0, result.stderr
    assert "ok (1 apps, 1 instances)" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings[:2] == [
        f"warning: {tmp_path / 'supervise.toml'}:4: apps.web.command: | (a pipe) is shell syntax, but no shell runs "
        "this command: it reaches the program as written; set shell = true to run it through /bin/sh -c, or write "
        "command as an array to say it is meant literally",
        f'warning: {tmp_path / "supervise.toml"}:5: apps.web.ready_after: counts only with readiness = "none": with '
        'readiness = "heartbeat" an instance is ready when the readiness signal says so, and this is ignored',
    ]


def test_check_of_an_included_error_exits_2(tmp_path):
    write('[apps.web]\ncommand = "x"\nreadiness = "exec"\n', "inc.toml")
    write('[supervise]\nstate_dir = "st"\ninclude = ["inc.toml"]\n')
    result = run_check(tmp_path / "supervise.toml")
    assert result.returncode == 2
    assert f"{tmp_path / 'inc.toml'}:3: apps.web.readiness: readiness = \"exec\" needs the command" in result.stderr
