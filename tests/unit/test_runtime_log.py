"""BugLog: every bug's traceback reaches the log, but a repeated one cannot flood it."""

from __future__ import annotations

from typing import Any

from supervise.runtime.log import BugLog


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        raise AssertionError("bugs are errors")

    def warning(self, event: str, **fields: Any) -> None:
        raise AssertionError("bugs are errors")

    def error(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))


def raised(message: str) -> Exception:
    try:
        raise ValueError(message)
    except ValueError as error:
        return error


def test_the_first_bug_is_logged_at_once_with_its_traceback() -> None:
    log = Recorder()
    BugLog(log, "dropped", clock=lambda: 100.0)(raised("boom"), name="web:0")
    [(event, fields)] = log.records
    assert event == "dropped"
    assert fields["error"] == "ValueError: boom" and fields["name"] == "web:0"
    assert fields["exc_info"].__traceback__ is not None
    assert "left_out" not in fields


def test_later_bugs_wait_out_the_interval_and_say_how_many_were_left_out() -> None:
    log = Recorder()
    now = [0.0]
    bug = BugLog(log, "dropped", interval=10.0, clock=lambda: now[0])
    bug(raised("first"))
    for second in range(1, 10):
        now[0] = float(second)
        bug(raised(f"at {second}"))
    assert len(log.records) == 1
    now[0] = 10.0
    bug(raised("after the interval"))
    assert [fields["error"] for _, fields in log.records] == ["ValueError: first", "ValueError: after the interval"]
    assert log.records[1][1]["left_out"] == 9
    now[0] = 20.0
    bug(raised("alone"))
    assert "left_out" not in log.records[2][1]
