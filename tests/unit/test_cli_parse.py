"""The CLI's argparse-free fast path must read every argv exactly as argparse does."""

from types import SimpleNamespace

import pytest

from supervise.cli import VERBS
from supervise.cli.parser import build_parser, fast_parse

SAME = [
    ["status"], ["status", "--json"], ["status", "web", "web:1", "--json"], ["status", "-c", "x.toml"],
    ["status", "--config", "a b.toml", "web"], ["start", "web"], ["stop", "web:0", "--timeout", "3.5"],
    ["restart", "-c", "c.toml", "web", "worker"], ["shutdown"], ["shutdown", "-c", "/tmp/s.toml"],
    ["run"], ["run", "-c", "/etc/s.toml"], ["run", "--config", "s.toml"], ["shutdown", "--keep-workers"],
    ["status", "web", "-c", "x.toml", "--json"], ["start", "--timeout", "1e3", "web"],
]
DECLINED = [
    [], ["status", "--jsn"], ["start"], ["stop", "--timeout"], ["stop", "web", "--timeout", "soon"],
    ["shutdown", "now"], ["status", "-c"], ["scale", "web", "2"], ["logs", "web"], ["--help"], ["status", "-h"],
    ["run", "web"], ["run", "--bogus"], ["run", "-h"],
]


@pytest.mark.parametrize("argv", SAME, ids=" ".join)
def test_fast_path_matches_argparse(argv):
    fast = fast_parse(argv)
    assert fast is not None
    assert vars(fast) == vars(build_parser().parse_args(argv, namespace=SimpleNamespace()))


@pytest.mark.parametrize("argv", DECLINED, ids=lambda a: " ".join(a) or "(none)")
def test_fast_path_leaves_the_rest_to_argparse(argv):
    assert fast_parse(argv) is None


def test_every_verb_the_parser_knows_has_a_function_and_no_other():
    parser = build_parser()
    (subparsers,) = [action for action in parser._actions if action.dest == "verb"]
    assert set(subparsers.choices) == set(VERBS)
