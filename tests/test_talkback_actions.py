"""The actions of a webhook answer: the valid ones in order, each bad one named by index and field."""

from __future__ import annotations

from typing import Any

import pytest

from app.talkback.actions import Hangup, Pause, Play, Say, Transfer, parse_actions


def test_a_full_answer_is_read_in_order() -> None:
    body = {"actions": [{"say": " Your balance is four dollars. ", "voice": "joe", "interruptible": False},
                        {"play": "https://example.com/hold.wav"}, {"pause": 1.5},
                        {"transfer": "sip:200@pbx.example.com"}, {"hangup": True}]}
    actions, problems = parse_actions(body)
    assert problems == []
    assert [a.action for a in actions] == [
        Say("Your balance is four dollars.", "joe", False), Play("https://example.com/hold.wav"),
        Pause(1.5), Transfer("sip:200@pbx.example.com"), Hangup()]
    assert [a.index for a in actions] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("body", [None, {}, {"ok": True}, "text", []])
def test_an_answer_without_actions_asks_for_nothing(body: Any) -> None:
    assert parse_actions(body) == ([], [])


@pytest.mark.parametrize(("action", "complaint"), [
    ({"say": ""}, "actions[1].say: expected non-empty text"),
    ({"say": "hi", "play": "x.wav"}, "actions[1]: expected exactly one of say, play, pause, hangup, transfer (found say, play)"),
    ({"shout": "hi"}, "actions[1]: expected exactly one of"),
    ({"say": "hi", "volume": 3}, "actions[1].volume: unknown option for say"),
    ({"say": "hi", "interruptible": "yes"}, "actions[1].interruptible: expected true or false"),
    ({"pause": -1}, "actions[1].pause: expected seconds from 0 to 60"),
    ({"pause": True}, "actions[1].pause: expected seconds"),
    ({"pause": float("nan")}, "actions[1].pause: expected seconds"),
    ({"hangup": "now"}, "actions[1].hangup: expected true"),
    ({"transfer": "tel:+15550001111"}, "actions[1].transfer: expected a SIP URI"),
    ("say hi", "actions[1]: expected an object"),
])
def test_a_bad_action_is_named_and_the_others_still_run(action: Any, complaint: str) -> None:
    actions, problems = parse_actions({"actions": [{"say": "first"}, action, {"hangup": True}]})
    assert [a.action for a in actions] == [Say("first"), Hangup()]
    assert len(problems) == 1 and problems[0].index == 1 and problems[0].action == action
    assert problems[0].message.startswith(complaint), problems[0].message


def test_actions_that_are_not_a_list_and_too_many_actions() -> None:
    _, problems = parse_actions({"actions": {"say": "hi"}})
    assert problems[0].message == "actions: expected a list, got dict"
    actions, problems = parse_actions({"actions": [{"pause": 0}] * 40})
    assert len(actions) == 32 and "more than 32 actions" in problems[0].message
