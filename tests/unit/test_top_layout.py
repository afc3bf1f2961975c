"""`supervise top`'s pure layer: keys -> the view, a status result -> rows, totals, events, the screen."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervise.cli import render, top, top_screen
from supervise.cli.top_screen import View


def inst(name, state="running", pid=100, cpu=None, rss=None, restarts=0, **more):
    base = {"name": name, "index": int(name.rsplit(":", 1)[1]), "state": state, "pid": pid, "restarts": restarts,
            "uptime": 12.5, "rss": rss, "heartbeat_age": None, "last_exit": None}
    if cpu is not None:
        base["cpu"] = cpu
    return base | more


def result(*apps):
    return {"apps": [{"name": name, "instances": list(insts)} for name, insts in apps], "daemon": {"pid": 42}}


RESULT = result(
    ("web", [inst("web:0", cpu=1.5, rss=10 << 20), inst("web:1", cpu=None, rss=30 << 20, restarts=4),
             inst("web:2", cpu=80.0, rss=None, restarts=1)]),
    ("webhook", [inst("webhook:0", cpu=3.0, rss=20 << 20)]),
    ("worker", [inst("worker:0", state="backoff", pid=None, restarts=7,
                     last_exit={"reason": "crashed", "code": 1, "signal": None})]),
)
APPS = ["web", "webhook", "worker"]


def names(view, res=RESULT):
    return [i["name"] for i in top_screen.instances(res, view)]


def text(line):
    return "".join(t for t, _ in line)


# -- keys ------------------------------------------------------------------------------------

def test_sort_keys_choose_and_reverse():
    view = View()
    assert (view.sort, view.descending) == ("name", False)
    for key, sort in (("c", "cpu"), ("m", "mem"), ("r", "restarts")):
        view.key(key)
        assert (view.sort, view.descending) == (sort, True)  # numbers: highest first
    view.key("r")
    assert (view.sort, view.descending) == ("restarts", False)  # the same key again: reversed
    view.key("n")
    assert (view.sort, view.descending) == ("name", False)
    view.key("n")
    assert view.descending


def test_a_cycles_through_the_apps_then_all():
    view = View()
    seen = []
    for _ in range(4):
        view.key("a", APPS)
        seen.append(view.app)
    assert seen == ["web", "webhook", "worker", None]
    view.key("a", [])  # no apps known (no daemon): nothing to cycle
    assert view.app is None


def test_slash_types_a_name_enter_applies_esc_cancels():
    view = View()
    for key in "/wxb":
        view.key(key)
    assert view.prompt == "wxb" and view.app is None
    view.key("KEY_BACKSPACE")
    view.key("\x7f")
    assert view.prompt == "w"
    view.key("o")
    view.key("q")  # typed, not quit
    assert not view.quit
    view.key("KEY_BACKSPACE")
    view.key("\r")
    assert (view.app, view.prompt) == ("wo", None)
    view.key("/")
    view.key("x")
    view.key("\x1b")  # cancel: the filter stays
    assert (view.app, view.prompt) == ("wo", None)
    view.key("\x1b")  # Esc outside the prompt: all apps
    assert view.app is None
    view.key("/")
    view.key("\n")  # empty: all apps
    assert view.app is None and view.prompt is None
    view.key("q")
    assert view.quit


def test_scroll_keys():
    view = View()
    view.page = 10
    view.key("KEY_DOWN")
    view.key("j")
    assert view.scroll == 2
    view.key("KEY_UP")
    view.key("KEY_UP")
    view.key("KEY_UP")
    assert view.scroll == 0
    view.key("KEY_NPAGE")
    assert view.scroll == 9
    view.key("KEY_PPAGE")
    assert view.scroll == 0
    view.key("KEY_END")
    assert view.scroll > 10**6  # clamped by the frame
    view.key("KEY_HOME")
    assert view.scroll == 0
    view.key("KEY_F(1)")  # unknown keys do nothing
    assert view.scroll == 0 and not view.quit


# -- rows and totals -------------------------------------------------------------------------

def test_sorts_put_unknown_figures_last():
    assert names(View()) == ["web:0", "web:1", "web:2", "webhook:0", "worker:0"]
    assert names(View("name", ), ) == names(View())
    view = View("name")
    view.descending = True
    assert names(view) == ["worker:0", "webhook:0", "web:2", "web:1", "web:0"]
    assert names(View("cpu")) == ["web:2", "webhook:0", "web:0", "web:1", "worker:0"]
    ascending = View("cpu")
    ascending.descending = False
    assert names(ascending) == ["web:0", "webhook:0", "web:2", "web:1", "worker:0"]  # unknown still last
    assert names(View("mem")) == ["web:1", "webhook:0", "web:0", "web:2", "worker:0"]
    assert names(View("restarts")) == ["worker:0", "web:1", "web:2", "web:0", "webhook:0"]  # ties: name order


def test_app_filter_exact_name_else_part_of_one():
    assert names(View(app="web")) == ["web:0", "web:1", "web:2"]  # not webhook: the exact name wins
    assert names(View(app="eb")) == ["web:0", "web:1", "web:2", "webhook:0"]
    assert names(View(app="nothing")) == []
    assert top_screen.selected_apps(RESULT, View()) is None
    assert top_screen.selected_apps(RESULT, View(restricted=True)) == set(APPS)
    assert top_screen.selected_apps(None, View(app="web")) is None


@pytest.mark.parametrize(("cpu", "shown"), [(None, "-"), ("n/a", "-"), (True, "-"), (0, "0.0"), (12.345, "12.3"),
                                            (250.0, "250.0")])
def test_cpu_text(cpu, shown):
    assert top_screen.cpu_text(cpu) == shown


def test_instance_cells():
    assert top_screen.instance_cells(inst("web:1", cpu=2.25, rss=3 << 20, restarts=2, heartbeat_age=0.5)) == [
        "web:1", "running", "100", "2.2", "3.0M", "12s", "2", "0.5s", "-"]
    cells = top_screen.instance_cells(RESULT["apps"][2]["instances"][0], processes=True)
    assert cells == ["worker:0", "backoff", "-", "-", "-", "-", "12s", "7", "-", "crashed (exit code 1)"]


def test_app_totals():
    web, _, worker = (top_screen.app_cells(app) for app in RESULT["apps"])
    assert web == ["web", "3/3", "81.5", "40.0M", "5", "-"]  # CPU and memory: the sum of what is known
    assert worker == ["worker", "0/1", "-", "-", "7", "1 backoff"]
    waiting = {"name": "api", "instances": [], "waiting_for": ["db"],
               "rollout": {"state": "running", "generation": 3, "replaced": 1, "total": 4}}
    assert top_screen.app_cells(waiting) == ["api", "0/0", "-", "-", "0",
                                             "waiting for db, rolling to generation 3 (1/4)"]


# -- events ----------------------------------------------------------------------------------

EVENTS = [
    {"type": "state", "name": "web:1", "app": "web", "from": "running", "to": "backoff",
     "exit": {"reason": "crashed", "code": None, "signal": 9}},
    {"type": "state", "name": "web:1", "from": "starting", "to": "running"},
    {"type": "removed", "name": "web:3", "app": "web"},
    {"type": "scaled", "app": "web", "instances": 4},
    {"type": "daemon", "event": "stalled", "seconds": 1.5},
    {"type": "daemon", "event": "started"},
    {"type": "rollout", "app": "web", "event": "failed", "generation": 2, "replaced": 1, "total": 3,
     "error": "web:1 did not become ready"},
    {"type": "replaced", "name": "web:0", "reason": "memory", "old_pid": 1, "pid": 2},
    {"type": "config", "event": "reloaded", "changes": []},
    {"type": "chaos", "id": 3, "event": "harm", "name": "web:2", "signal": "KILL", "pid": 9},
    {"type": "chaos", "id": 3, "event": "done", "harms": 5},
    {"type": "watch", "event": "changed", "apps": ["web"], "paths": ["a.py"], "more": 2},
    {"type": "output", "event": "dropping", "name": "web:0", "app": "web", "error": "disk full"},
    {"type": "brand-new", "x": 1},
]


@pytest.mark.parametrize("event", EVENTS)
def test_event_text_is_the_events_verbs_wording(event):
    subject, words, _ = render.event_words(event)
    assert top_screen.event_text(event) == f"{subject} {words}"
    assert subject and words


def test_event_text_of_the_views_own_notes():
    assert top_screen.event_text({"type": "top", "event": "lost", "text": "daemon not running, retrying"}) == \
        "daemon not running, retrying"
    assert top_screen.event_text(EVENTS[0]) == "web:1 running -> backoff  crashed (signal 9)"


def test_event_line_and_style():
    line = top_screen.event_line({"type": "daemon", "event": "started", "time": 1_700_000_000.5})
    assert re.fullmatch(r"\d\d:\d\d:\d\d daemon started", line)
    assert top_screen.event_style({"type": "state", "to": "backoff"}) == "bad"
    assert top_screen.event_style({"type": "state", "to": "running"}) == "good"
    assert top_screen.event_style({"type": "state", "to": "starting", "exit": {"reason": "hung"}}) == "bad"
    assert top_screen.event_style({"type": "scaled"}) == "normal"


def test_events_follow_the_app_filter():
    events = [{"type": "state", "app": "web", "name": "web:0"}, {"type": "state", "name": "worker:0"},
              {"type": "daemon", "event": "started"}, {"type": "scaled", "app": "worker"}]
    assert top_screen.shown_events(events, None) == events
    assert top_screen.shown_events(events, {"web"}) == [events[0], events[2]]  # the daemon's are everyone's


# -- the screen ------------------------------------------------------------------------------

def screen(res=RESULT, view=None, width=100, height=30, error=None, events=()):
    view = view or View()
    lines = top_screen.frame(res, error, list(events), view, width, height, "s.toml", "12:00:00")
    return [text(line) for line in lines], view


def test_frame_lays_out_title_apps_instances_events_footer():
    events = [{"type": "state", "name": f"web:{i % 3}", "app": "web", "from": "starting", "to": "running",
               "time": 0} for i in range(20)]
    lines, _ = screen(events=events)
    assert len(lines) == 30 and all(len(line) <= 100 for line in lines)
    assert lines[0].startswith("supervise top  s.toml  daemon 42  5 instances: 4 running, 1 backoff")
    assert lines[0].rstrip().endswith("12:00:00")
    assert lines[1].split() == ["APP", "RUNNING", "CPU%", "MEM", "RESTARTS", "NOTE"]
    assert [line.split()[0] for line in lines[2:5]] == APPS
    assert lines[5].split()[:9] == ["NAME", "STATE", "PID", "CPU%", "MEM", "UPTIME", "RESTARTS", "BEAT", "LAST"]
    assert [line.split()[0] for line in lines[6:11]] == ["web:0", "web:1", "web:2", "webhook:0", "worker:0"]
    start = lines.index(next(line for line in lines if line.startswith("EVENTS")))
    assert start == 30 - 1 - 7  # the events pane at the bottom, above the footer: a quarter of the body
    assert all(line.endswith("web:2 starting -> running") or "web:" in line for line in lines[start + 1:-1])
    assert lines[-1].startswith("q quit") and len(lines[-1]) <= 99  # the bottom-right cell stays free


def test_frame_aligns_numbers_right():
    lines, _ = screen()
    header = next(line for line in lines if line.startswith("NAME"))
    rows = [line for line in lines if line.split() and line.split()[0] in ("web:0", "web:1", "web:2")]
    end = header.index("CPU%") + len("CPU%")
    assert [row[end - 4:end].strip() for row in rows] == ["1.5", "-", "80.0"]


def test_frame_scrolls_and_clamps():
    many = result(("w", [inst(f"w:{i}") for i in range(100)]))
    view = View()
    lines, _ = screen(many, view, height=20)
    header = next(line for line in lines if line.startswith("NAME"))
    assert header.rstrip().endswith(f"[1-{view.page} of 100]")
    view.key("KEY_END")
    lines, _ = screen(many, view, height=20)
    assert view.scroll == 100 - view.page
    assert any(line.startswith("w:99 ") for line in lines)
    assert not any(line.startswith("w:0 ") for line in lines)


def test_frame_shows_the_view_and_a_filter_matching_nothing():
    view = View("cpu", app="zzz")
    lines, _ = screen(view=view)
    assert any("no app matches 'zzz'" in line for line in lines)
    assert any(line.startswith("NAME") and line.rstrip().endswith("[sort cpu desc; app zzz]") for line in lines)


def test_frame_without_a_daemon():
    lines, _ = screen(res=None, error=top_screen.NOT_RUNNING, events=[{"type": "top", "event": "lost", "time": 0,
                                                                 "text": top_screen.NOT_RUNNING}])
    assert top_screen.NOT_RUNNING in lines[0] and top_screen.NOT_RUNNING in lines[1]
    pane = lines[lines.index(next(line for line in lines if line.startswith("EVENTS"))):]
    assert pane[1].endswith(top_screen.NOT_RUNNING)  # the note in the events pane too


def test_prompt_in_the_footer():
    view = View()
    view.key("/")
    view.key("w")
    lines, _ = screen(view=view)
    assert lines[-1].startswith("app: w_")


@settings(max_examples=200, deadline=None)
@given(width=st.integers(0, 200), height=st.integers(0, 60), count=st.integers(0, 40),
       sort=st.sampled_from(["name", "cpu", "mem", "restarts"]), scroll=st.integers(0, 100))
def test_frame_always_fits_the_screen(width, height, count, sort, scroll):
    res = result(("a", [inst(f"a:{i}", cpu=float(i % 7) if i % 3 else None, rss=i << 20) for i in range(count)]),
                 ("b", []))
    view = View(sort)
    view.scroll = scroll
    lines = top_screen.frame(res, None, [{"type": "daemon", "event": "started", "time": 0}] * 3, view, width, height)
    assert len(lines) == max(0, height) if width > 0 else lines == []
    assert all(len(text(line)) <= width for line in lines)
    if height > 0 and width > 0:
        assert len(text(lines[-1])) <= width - 1
    assert 0 <= view.scroll


# -- plain tables ----------------------------------------------------------------------------

def test_plain_text():
    events = [{"type": "state", "name": "worker:0", "app": "worker", "from": "running", "to": "backoff", "time": 0}]
    out = top_screen.plain_text(RESULT, None, events, View(), "s.toml", "12:00:00")
    blocks = out.rstrip("\n").split("\n\n")
    assert blocks[0] == "supervise top  s.toml  daemon 42  5 instances: 4 running, 1 backoff  12:00:00"
    assert blocks[1].splitlines()[0].split() == ["APP", "RUNNING", "CPU%", "MEM", "RESTARTS", "NOTE"]
    assert [line.split()[0] for line in blocks[2].splitlines()[1:]] == ["web:0", "web:1", "web:2", "webhook:0",
                                                                        "worker:0"]
    assert blocks[3].endswith("worker:0 running -> backoff")
    assert "\x1b" not in out and not any(line != line.rstrip() for line in out.splitlines())
    only_web = top_screen.plain_text(RESULT, None, events, View(app="web"))
    assert "worker" not in only_web


def test_processes_column_only_when_the_daemon_reports_it():
    with_procs = result(("a", [inst("a:0", processes=3)]))
    lines, _ = screen(with_procs)
    header = next(line for line in lines if line.startswith("NAME"))
    assert "PROCS" in header
    assert "PROCS" not in next(line for line in screen()[0] if line.startswith("NAME"))


@pytest.mark.parametrize(("env", "colour"), [({}, True), ({"NO_COLOR": ""}, True), ({"NO_COLOR": "1"}, False),
                                             ({"NO_COLOR": "0"}, False)])
def test_no_color(env, colour):
    assert top.colour_wanted(env) is colour
