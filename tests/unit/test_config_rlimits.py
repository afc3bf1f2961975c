"""An app's ``rlimits`` table: final types, and located errors for what cannot be a limit."""

from __future__ import annotations

import pytest
from test_config import in_tmp, load_text, problems  # noqa: F401  (in_tmp: an autouse fixture)

from supervise.config.model import RLIMIT_KEYS

APP = '[apps.web]\ncommand = "run"\n'  # the tested key goes on line 3


def test_absent_means_inherited():
    assert load_text(APP).apps["web"].rlimits == {}


def test_values_parse_to_ints_and_none_for_unlimited():
    app = load_text(APP + 'rlimits = { nofile = 65536, core = 0, nproc = "unlimited" }\n').apps["web"]
    assert app.rlimits == {"nofile": 65536, "core": 0, "nproc": None}
    assert all(type(value) is int for value in (app.rlimits["nofile"], app.rlimits["core"]))


def test_a_table_of_its_own_works_as_well():
    app = load_text(APP + "[apps.web.rlimits]\ncore = 1073741824\n").apps["web"]
    assert app.rlimits == {"core": 1 << 30}


def test_the_keys_are_the_models():
    assert RLIMIT_KEYS == ("nofile", "core", "nproc")


@pytest.mark.parametrize(("value", "expected"), [
    ("-1", "expected an integer >= 0 or \"unlimited\", got -1"),
    ('"infinite"', 'expected an integer >= 0 or "unlimited", got "infinite"'),
    ('"4096"', 'expected an integer >= 0 or "unlimited", got "4096"'),
    ("1.5", 'expected an integer >= 0 or "unlimited", got 1.5'),
    ("true", 'expected an integer >= 0 or "unlimited", got true'),
])
def test_bad_values_are_located(value, expected):
    assert problems(APP + f"rlimits = {{ nproc = {value} }}\n") == [
        f"supervise.toml:3: apps.web.rlimits.nproc: {expected}"]


def test_nofile_cannot_be_unlimited():
    [problem] = problems(APP + 'rlimits = { nofile = "unlimited" }\n')
    assert problem.startswith("supervise.toml:3: apps.web.rlimits.nofile: nofile cannot be \"unlimited\"")
    [problem] = problems(APP + "rlimits = { nofile = -5 }\n")
    assert problem == "supervise.toml:3: apps.web.rlimits.nofile: expected an integer >= 0, got -5"


def test_unknown_key_says_did_you_mean():
    [problem] = problems(APP + "rlimits = { nofiles = 1024 }\n")
    assert problem.startswith('supervise.toml:3: apps.web.rlimits.nofiles: unknown limit (did you mean "nofile"?)')
    assert "nofile, core, nproc" in problem


def test_every_bad_entry_is_reported_on_its_own_line():
    text = APP + "[apps.web.rlimits]\nnofile = 1024\ncores = 0\nnproc = -2\n"
    assert [p.split(": ")[0:2] for p in problems(text)] == [
        ["supervise.toml:5", "apps.web.rlimits.cores"], ["supervise.toml:6", "apps.web.rlimits.nproc"]]


@pytest.mark.parametrize("value", ["4096", '"nofile=4096"', "[4096]"])
def test_not_a_table(value):
    [problem] = problems(APP + f"rlimits = {value}\n")
    assert problem.startswith("supervise.toml:3: apps.web.rlimits: expected a table like { nofile = 65536")


def test_rlimits_is_no_unknown_key_of_an_app_and_a_typo_of_it_is():
    [problem] = problems(APP + "rlimit = { core = 0 }\n")
    assert problem == 'supervise.toml:3: apps.web.rlimit: unknown key (did you mean "rlimits"?)'
