"""`supervise events` on a terminal: one readable line per event, for every type docs/protocol.md lists."""

from __future__ import annotations

import re
import time

import pytest

from supervise.cli import render

NOW = time.mktime((2026, 11, 30, 20, 31, 5, 0, 0, -1)) + 0.123  # local time 20:31:05.123
STAMP = "20:31:05.123"


def line(event: dict, **kw) -> str:
    return render.event_line({"seq": 42, "time": NOW, **event}, today=NOW, **kw)


def words(event: dict) -> tuple[str, str]:
    """(subject, text) of the event's line, from its fixed columns."""
    text = line(event)
    match = re.fullmatch(rf"{re.escape(STAMP)} +#42  (\S+) +(.*)", text)
    assert match, text
    return match[1], match[2]


@pytest.mark.parametrize(("event", "subject", "text"), [
    ({"type": "state", "name": "web:1", "app": "web", "index": 1, "from": "running", "to": "backoff", "pid": None,
      "generation": 1, "exit": {"reason": "crashed", "code": 1, "signal": None}},
     "web:1", "running -> backoff  crashed (exit code 1)"),
    ({"type": "state", "name": "web:1", "app": "web", "index": 1, "from": "running", "to": "backoff", "pid": None,
      "generation": 1, "exit": {"reason": "hung", "code": None, "signal": 9}},
     "web:1", "running -> backoff  hung (signal 9)"),
    ({"type": "state", "name": "web:0", "app": "web", "index": 0, "from": "backoff", "to": "starting", "pid": 4242,
      "generation": 2}, "web:0", "backoff -> starting  pid 4242"),
    ({"type": "state", "name": "web:0", "app": "web", "index": 0, "from": "running", "to": "stopping", "pid": 4242,
      "generation": 1, "reason": "memory"}, "web:0", "running -> stopping  (memory)"),
    ({"type": "removed", "name": "web:3", "app": "web", "index": 3}, "web:3", "removed (scaled down)"),
    ({"type": "scaled", "app": "web", "instances": 5}, "web", "scaled to 5 instances"),
    ({"type": "daemon", "event": "started"}, "daemon", "started"),
    ({"type": "daemon", "event": "draining"}, "daemon", "draining"),
    ({"type": "daemon", "event": "stalled", "seconds": 1.5}, "daemon",
     "stalled: its loop stood still for 1.5s (liveness judged afresh)"),
    ({"type": "daemon", "event": "spawn-failed", "name": "web:0", "app": "web", "error": "out of fds",
      "retry_in": 1.0}, "web:0", "spawn failed (the daemon's fault): out of fds; retried in 1.0s"),
    ({"type": "rollout", "app": "web", "event": "started", "generation": 2, "total": 3, "cause": "reload"},
     "web", "rollout to generation 2 started (3 instances, reload)"),
    ({"type": "rollout", "app": "web", "event": "failed", "generation": 2, "replaced": 1, "total": 3,
      "error": "web:1 did not become ready"}, "web",
     "rollout to generation 2 failed (1/3 replaced): web:1 did not become ready"),
    ({"type": "replaced", "name": "web:1", "app": "web", "index": 1, "generation": 2, "pid": 200, "reason": "reload",
      "old_pid": 100}, "web:1", "replaced pid 100 by pid 200 (generation 2, reload)"),
    ({"type": "promoted", "name": "web:1", "app": "web", "index": 1, "spare": "web:spare-0", "pid": 300,
      "old_pid": 200, "reason": "crashed", "generation": 2}, "web:1",
     "spare web:spare-0 promoted: pid 300 in place of pid 200 (crashed)"),
    ({"type": "config", "event": "reloaded", "path": "/x/supervise.toml",
      "changes": [{"app": "web", "action": "roll"}, {"app": "mail", "action": "start"}]},
     "config", "reloaded: web roll, mail start"),
    ({"type": "config", "event": "reloaded", "path": "/x", "changes": []}, "config", "reloaded: nothing changed"),
    ({"type": "app", "app": "old", "event": "removed"}, "old", "removed from the config: its last instance is gone"),
    ({"type": "chaos", "id": 3, "event": "started", "targets": ["web"], "rate": 2, "duration": 30, "signal": "KILL",
      "seed": 7}, "chaos", "#3 started: SIGKILL to web at 2/s for 30s (seed 7)"),
    ({"type": "chaos", "id": 3, "event": "harm", "name": "web:2", "pid": 77, "signal": "SIGKILL"},
     "web:2", "chaos #3: SIGKILL to pid 77"),
    ({"type": "chaos", "id": 3, "event": "done", "harms": 12}, "chaos", "#3 done: 12 harms"),
    ({"type": "watch", "event": "changed", "apps": ["web"], "paths": ["a.py", "b.py"], "more": 3},
     "watch", "changed: a.py, b.py and 3 more; rolling web"),
    ({"type": "output", "event": "dropping", "name": "web:0", "app": "web", "error": "No space left on device",
      "path": "/s/logs/web.0.log"}, "web:0", "output dropped from now on: No space left on device (/s/logs/web.0.log)"),
    ({"type": "output", "event": "resumed", "name": "web:0", "app": "web", "dropped_lines": 12, "error": "x",
      "path": "/p"}, "web:0", "output written again; 12 lines were dropped"),
    ({"type": "output", "event": "rotation-failed", "name": "web:0", "app": "web", "error": "EACCES", "path": "/p"},
     "web:0", "log rotation failed: EACCES (/p)"),
    ({"type": "checkpoint", "event": "failing", "error": "No space left on device", "path": "/s/checkpoint.json"},
     "checkpoint", "cannot be written: No space left on device (/s/checkpoint.json)"),
    ({"type": "checkpoint", "event": "recovered", "error": "x", "path": "/p"}, "checkpoint", "written again"),
    ({"type": "budget", "event": "held", "app": "web", "name": "web:1", "index": 1, "reason": "crashed", "pid": None,
      "unavailable": 2, "max_unavailable": 1}, "web:1", "budget: restart held (crashed), 2/1 unavailable"),
    ({"type": "cluster", "event": "joined", "node": "n1", "lease": "7f"}, "cluster",
     "joined the cluster as n1 (lease 7f)"),
    ({"type": "cluster", "event": "node-lost", "node": "n2"}, "cluster", "node n2 lost"),
    ({"type": "cluster", "event": "leader", "node": "n3"}, "cluster", "n3 is the leader"),
    ({"type": "cluster", "event": "moving", "name": "db:0", "node": "n2", "from": "n1"}, "db:0",
     "moving from n1 to n2"),
    ({"type": "cluster", "event": "fenced", "node": "n1", "why": "lease lost", "stopped": ["db:0"]},
     "cluster", "n1 fenced (lease lost): stopped db:0"),
    ({"type": "cluster", "event": "rolling", "app": "web", "generation": 4, "node": "n1"},
     "cluster", "web: rolling generation 4 on n1"),
])
def test_every_documented_event_type_reads_as_words(event, subject, text):
    assert words(event) == (subject, text)


def test_the_columns_hold_time_number_subject_and_text():
    text = line({"type": "state", "name": "web:1", "from": "running", "to": "backoff",
                 "exit": {"reason": "crashed", "code": 1, "signal": None}})
    assert text == f"{STAMP}    #42  web:1       running -> backoff  crashed (exit code 1)"


def test_an_unknown_type_gets_its_fields_as_key_value():
    event = {"type": "frobnicated", "app": "web", "event": "twice", "count": 2, "note": "a b", "list": [1, "x"]}
    assert words(event) == ("web", 'frobnicated twice count=2 note="a b" list=[1, "x"]')


@pytest.mark.parametrize("event", [
    {"type": "state", "name": "web:1"},  # a known type with fields missing: a line all the same
    {"type": "cluster", "event": "something-new", "node": "n1"},
    {"type": "rollout", "app": "web", "event": "paused", "generation": "two"},
    {"type": "config", "event": "reloaded", "changes": "not a list"},
    {},
])
def test_a_field_missing_or_of_another_shape_never_fails(event):
    subject, text = words(event)
    assert subject and text


def test_an_event_of_another_day_shows_its_date():
    yesterday = NOW - 86400
    text = render.event_line({"seq": 1, "time": yesterday, "type": "daemon", "event": "started"}, today=NOW)
    assert text.startswith(time.strftime("%Y-%m-%d ", time.localtime(yesterday)) + STAMP)
    assert render.clock(None) == "--:--:--.---" and render.clock("soon") == "--:--:--.---"


def test_colour_only_when_asked():
    event = {"type": "state", "name": "web:1", "from": "backoff", "to": "failed"}
    plain, coloured = line(event), line(event, colour=True)
    assert "\x1b[" not in plain
    assert "\x1b[31mbackoff -> failed\x1b[0m" in coloured
    assert re.sub(r"\x1b\[\d+m", "", coloured) == plain
