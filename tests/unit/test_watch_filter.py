"""supervise.watch, the pure part: roots to watch and which apps a changed path concerns."""

from __future__ import annotations

import re

import pytest

from supervise.config.model import AppConfig, Config, SuperviseConfig
from supervise.runtime.watch import (
    DEFAULT_IGNORED_DIRS,
    Watcher,
    WatchFilter,
    compile_glob,
    pattern_root,
    watch_roots,
)

BASE = "/proj"


def apps_for(path: str, watch: tuple[str, ...], ignore: tuple[str, ...] = (),
             state_dir: str | None = None) -> frozenset[str]:
    """The apps of ``path`` (relative to BASE unless absolute) when one app "web" has these patterns."""
    watch_filter = WatchFilter.build(BASE, {"web": (watch, ignore)}, state_dir)
    return watch_filter.apps_for(path if path.startswith("/") else f"{BASE}/{path}")


def matches(path: str, *watch: str, ignore: tuple[str, ...] = ()) -> bool:
    return apps_for(path, watch, ignore) == {"web"}


# -- roots --------------------------------------------------------------------


@pytest.mark.parametrize("pattern, root", [
    ("examples/*.py", "/proj/examples"),
    ("src/", "/proj/src"),
    ("src", "/proj/src"),
    ("./src/pkg/**/*.py", "/proj/src/pkg"),
    ("**/*.py", "/proj"),
    ("*.py", "/proj"),
    ("a/b[12]/c.py", "/proj/a"),
    ("a/b?/c.py", "/proj/a"),
    ("/etc/myapp/*.conf", "/etc/myapp"),
    ("/etc/myapp/conf.d/", "/etc/myapp/conf.d"),
    ("../shared/*.py", "/shared"),
])
def test_pattern_root_is_the_leading_glob_free_directory(pattern, root):
    assert pattern_root(BASE, pattern) == root


def test_roots_are_deduplicated_and_nested_roots_dropped(tmp_path):
    patterns = ["src/*.py", "src/pkg/*.py", "src/**/*.toml", "lib/*.py", "lib/*.pyi", "/etc/x/*.conf"]
    assert watch_roots(tmp_path, patterns) == ("/etc/x", f"{tmp_path}/lib", f"{tmp_path}/src")


def test_a_root_covering_the_config_dir_swallows_every_other_inside_it(tmp_path):
    assert watch_roots(tmp_path, ["src/*.py", "**/*.toml", "docs/"]) == (str(tmp_path),)


def test_a_sibling_with_a_common_prefix_is_not_nested(tmp_path):
    assert watch_roots(tmp_path, ["src/*.py", "src2/*.py"]) == (f"{tmp_path}/src", f"{tmp_path}/src2")


def test_a_plain_file_is_watched_through_its_directory_so_atomic_saves_are_seen(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.toml").write_text("")
    assert watch_roots(tmp_path, ["conf/app.toml"]) == (f"{tmp_path}/conf",)


def test_a_missing_glob_free_path_stays_a_root_so_it_is_reported_missing(tmp_path):
    assert watch_roots(tmp_path, ["exmaples"]) == (f"{tmp_path}/exmaples",)


def test_two_apps_sharing_a_root_watch_it_once(tmp_path):
    watch_filter = WatchFilter.build(tmp_path, {"web": (["src/web/*.py"], []), "api": (["src/**/*.py"], [])})
    assert watch_roots(watch_filter.base, watch_filter.patterns) == (f"{tmp_path}/src",)
    assert watch_filter.apps_for(f"{tmp_path}/src/web/a.py") == {"web", "api"}
    assert watch_filter.apps_for(f"{tmp_path}/src/api/a.py") == {"api"}


def test_missing_roots_are_listed_by_the_watcher_without_starting_it(tmp_path):
    (tmp_path / "src").mkdir()
    watcher = Watcher(WatchFilter.build(tmp_path, {"web": (["src/*.py", "ghost/*.py"], [])}), lambda *_: None)
    assert watcher.roots == (f"{tmp_path}/ghost", f"{tmp_path}/src")
    assert watcher.missing_roots == (f"{tmp_path}/ghost",)


# -- globs --------------------------------------------------------------------


@pytest.mark.parametrize("glob, name, hit", [
    ("*.py", "a.py", True), ("*.py", "a.pyc", False), ("*.py", ".hidden.py", True),
    ("?.py", "a.py", True), ("?.py", "ab.py", False),
    ("[ab].py", "b.py", True), ("[ab].py", "c.py", False), ("[!ab].py", "c.py", True), ("[!ab].py", "a.py", False),
    ("[a-c]x", "bx", True), ("[a-c]x", "dx", False), ("[]]x", "]x", True), ("[x", "[x", True),
    ("a.b", "a.b", True), ("a.b", "axb", False), ("a+(b)", "a+(b)", True), ("**", "any", True),
])
def test_segment_globs(glob, name, hit):
    assert bool(re.fullmatch(compile_glob(glob), name)) is hit


def test_a_star_stays_within_one_segment():
    assert matches("examples/a.py", "examples/*.py")
    assert not matches("examples/sub/a.py", "examples/*.py")
    assert not matches("examplesX/a.py", "examples/*.py")
    assert not matches("a.py", "examples/*.py")


@pytest.mark.parametrize("path, hit", [
    ("src/a.py", True), ("src/x/a.py", True), ("src/x/y/z/a.py", True), ("src/a.txt", False), ("lib/a.py", False),
])
def test_double_star_spans_any_number_of_directories(path, hit):
    assert matches(path, "src/**/*.py") is hit


def test_double_star_alone_and_at_the_start():
    assert matches("a/b/c.txt", "**")
    assert matches("c.py", "**/*.py") and matches("a/b/c.py", "**/*.py")
    assert matches("src/x/tests/t.py", "src/**/tests/*.py") and matches("src/tests/t.py", "src/**/tests/*.py")


@pytest.mark.parametrize("pattern", ["examples", "examples/", "./examples", "examples/**"])
def test_a_pattern_naming_a_directory_matches_everything_under_it(pattern):
    assert matches("examples/web.py", pattern)
    assert matches("examples/deep/er/data.json", pattern)
    assert not matches("examples2/web.py", pattern)
    assert not matches("other/examples.py", pattern)


def test_a_single_file_pattern():
    assert matches("conf/app.toml", "conf/app.toml")
    assert not matches("conf/app.toml.bak", "conf/app.toml")


def test_absolute_patterns_and_patterns_outside_the_config_dir():
    assert matches("/etc/myapp/a.conf", "/etc/myapp/*.conf")
    assert not matches("/etc/other/a.conf", "/etc/myapp/*.conf")
    assert matches("/shared/lib.py", "../shared/*.py")
    assert not matches("/proj/shared/lib.py", "../shared/*.py")


def test_defaults_apply_below_an_outside_root_but_not_to_its_ancestors():
    assert matches("/opt/venv/lib/app/a.py", "/opt/venv/lib/app/*.py")  # "venv" above the root does not count
    assert not matches("/opt/venv/lib/app/__pycache__/a.py", "/opt/venv/lib/app/**")


def test_a_relative_pattern_never_matches_outside_the_config_dir():
    assert not matches("/elsewhere/a.py", "**/*.py")


# -- watch_ignore -------------------------------------------------------------


def test_an_ignore_without_a_slash_matches_the_basename_anywhere():
    ignore = ("*.log", "secret.py")
    assert not matches("app.log", "**", ignore=ignore)
    assert not matches("deep/er/app.log", "**", ignore=ignore)
    assert not matches("x/secret.py", "**", ignore=ignore)
    assert matches("x/secret.py.txt", "**", ignore=ignore)
    assert matches("app.py", "**", ignore=ignore)


def test_an_ignore_without_a_slash_also_matches_a_directory_and_all_below():
    assert not matches("src/build/out.py", "**/*.py", ignore=("build",))
    assert not matches("src/build/out.py", "**/*.py", ignore=("build/",))
    assert matches("src/builder/out.py", "**/*.py", ignore=("build",))


def test_an_ignore_with_a_slash_is_a_path_from_the_config_dir():
    ignore = ("src/generated/*.py", "src/vendor/")
    assert not matches("src/generated/a.py", "src/**", ignore=ignore)
    assert matches("src/generated/sub/a.py", "src/**", ignore=ignore)
    assert matches("other/src/generated/a.py", "**", ignore=ignore)
    assert not matches("src/vendor/x/y.py", "src/**", ignore=ignore)
    assert not matches("src/a.py", "src/**", ignore=("**/a.py",))


def test_ignores_are_per_app():
    watch_filter = WatchFilter.build(BASE, {"web": (["src/**"], ["*.html"]), "docs": (["src/**"], ["*.py"])})
    assert watch_filter.apps_for("/proj/src/a.py") == {"web"}
    assert watch_filter.apps_for("/proj/src/a.html") == {"docs"}


@pytest.mark.parametrize("directory", sorted(DEFAULT_IGNORED_DIRS))
def test_default_ignored_directories(directory):
    assert not matches(f"{directory}/a.py", "**")
    assert not matches(f"src/{directory}/deep/a.py", "**")
    assert not matches(f"src/{directory}", "**")
    assert matches(f"src/{directory}x/a.py", "**")


@pytest.mark.parametrize("name", [
    "a.py.swp", ".a.py.swp", "a.swo", "a.swx", "a.py~", ".#a.py", "#a.py#", "4913", "x.py.tmp", "big.part",
    "a.py___jb_tmp___", "a.py___jb_old___", ".a.py.kate-swp", "a.pyc", "a.pyo",
])
def test_default_ignored_file_names(name):
    assert not matches(f"src/{name}", "src/**")
    assert not matches(f"src/{name}", f"src/{name}")  # even when named outright


@pytest.mark.parametrize("name", ["a.py", "swp.py", "a.tmpl", "49130", "kate-swp", "a.part.py"])
def test_lookalikes_of_default_ignores_are_kept(name):
    assert matches(f"src/{name}", "src/**")


def test_nothing_inside_the_state_dir_counts():
    state = "/proj/.supervise"
    assert apps_for(".supervise/logs/web.0.log", ("**",), state_dir=state) == frozenset()
    assert apps_for(".supervise", ("**",), state_dir=state) == frozenset()
    assert apps_for(".supervise-notes.txt", ("**",), state_dir=state) == {"web"}
    assert apps_for("run/state/x", ("run/**",), state_dir="/proj/run/state") == frozenset()


# -- batches and the watchfiles filter contract -------------------------------


def test_a_batch_names_the_apps_and_keeps_only_paths_that_concern_one():
    watch_filter = WatchFilter.build(BASE, {"web": (["web/**"], []), "api": (["api/**"], []), "idle": (["x/*"], [])})
    apps, paths = watch_filter.batch(["/proj/web/a.py", "/proj/api/b.py", "/proj/web/a.py", "/proj/README",
                                      "/proj/web/__pycache__/a.pyc"])
    assert apps == {"web", "api"}
    assert paths == ("/proj/api/b.py", "/proj/web/a.py")


def test_a_batch_of_unwatched_paths_concerns_no_app():
    watch_filter = WatchFilter.build(BASE, {"web": (["web/**"], [])})
    assert watch_filter.batch(["/proj/README", "/proj/web/.a.swp"]) == (frozenset(), ())


def test_the_filter_is_a_watchfiles_watch_filter():
    from watchfiles import Change

    watch_filter = WatchFilter.build(BASE, {"web": (["src/*.py"], [])})
    assert watch_filter(Change.modified, "/proj/src/a.py") is True
    assert watch_filter(Change.deleted, "/proj/src/a.py") is True
    assert watch_filter(Change.added, "/proj/src/a.pyc") is False


def test_from_config_skips_apps_without_watch(tmp_path):
    def app(name: str, **kwargs) -> AppConfig:
        return AppConfig(name=name, command=("true",), cwd=tmp_path, **kwargs)

    apps = {"web": app("web", watch=("src/*.py",), watch_ignore=("src/x.py",)), "db": app("db")}
    config = Config(path=tmp_path / "supervise.toml", supervise=SuperviseConfig(state_dir=tmp_path / ".s"),
                    apps=apps)
    watch_filter = WatchFilter.from_config(config)
    assert [a.name for a in watch_filter.apps] == ["web"]
    assert watch_filter.apps_for(f"{tmp_path}/src/a.py") == {"web"}
    assert watch_filter.apps_for(f"{tmp_path}/src/x.py") == frozenset()
    assert watch_filter.state_dir == f"{tmp_path}/.s"
    assert Watcher.from_config(config, lambda *_: None) is not None
    quiet = Config(path=config.path, supervise=config.supervise, apps={"db": apps["db"]})
    assert Watcher.from_config(quiet, lambda *_: None) is None


def test_a_filter_is_immutable():
    watch_filter = WatchFilter.build(BASE, {"web": (["src/*.py"], [])})
    with pytest.raises(AttributeError):
        watch_filter.base = "/elsewhere"  # type: ignore[misc]
