"""The event history and the replies built from it: what a client decodes is what was published."""

import json

import pytest

from supervise.runtime.history import History
from supervise.wire import protocol


def test_events_are_numbered_stamped_and_replayed_after_a_seq() -> None:
    history = History()
    for i in range(5):
        history.append({"type": "state", "name": f"web:{i}"}, 1000.0 + i)
    events = [json.loads(raw) for raw in history.since(2)]
    assert [e["seq"] for e in events] == [3, 4, 5]
    assert events[0] == {"seq": 3, "time": 1002.0, "type": "state", "name": "web:2"}
    assert history.since(5) == [] and history.since(99) == []
    assert (history.first_seq, history.last_seq) == (1, 5)


def test_a_full_history_drops_the_oldest_and_says_where_it_starts() -> None:
    history = History(limit=3)
    assert history.first_seq == 1 and history.since(0) == []
    for i in range(10):
        history.append({"i": i}, 0.0)
    assert (history.first_seq, history.last_seq) == (8, 10)
    assert [json.loads(raw)["seq"] for raw in history.since(0)] == [8, 9, 10]
    assert [json.loads(raw)["seq"] for raw in history.since(8)] == [9, 10]


@pytest.mark.parametrize("rid", [None, 7, "abc", {"nested": ["x", 1]}])
def test_the_spliced_events_reply_decodes_like_an_ordinary_reply(rid) -> None:
    history = History()
    for name in ("a:0", 'quote"and\\slash', "ünïcode"):
        history.append({"type": "state", "name": name, "exit": {"code": None, "signal": 9}}, 12.5)
    raw = protocol.encode_events_reply(history.since(0), history.first_seq, history.last_seq, id=rid)
    events = [json.loads(e) for e in history.since(0)]
    assert json.loads(raw) == json.loads(protocol.encode_reply(
        True, {"events": events, "first": 1, "last": 3}, id=rid))
    reply = protocol.decode_reply([raw])
    assert reply.ok and reply.result["events"] == events
    cut = protocol.result_json([raw])  # the result comes last, after any id
    assert json.loads(cut) == reply.result if rid is None else cut is None


def test_an_empty_events_reply_is_valid_json() -> None:
    reply = protocol.decode_reply([protocol.encode_events_reply([], 1, 0)])
    assert reply.result == {"events": [], "first": 1, "last": 0}


def test_a_pushed_event_decodes_to_the_stamped_event() -> None:
    raw = History().append({"type": "daemon", "event": "draining"}, 5.0)
    assert protocol.decode_reply([protocol.encode_event(raw)]).event == {
        "seq": 1, "time": 5.0, "type": "daemon", "event": "draining"}
