"""Webhook event bodies: the JSON a voice assistant receives (PRODUCT.md, "Webhooks")."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from app.delivery import events
from app.delivery.events import CallRef, EventType
from app.pipeline.types import Transcript, Word

CALL = CallRef(id="call_1", source="sip", from_="sip:alice@example.com", to="100", dialplan="support")
HOOK = {"url": "http://127.0.0.1:9/hook", "secret": "whsec_x"}


def final(index: int, text: str, start: float, end: float, words: tuple[Word, ...] = ()) -> Transcript:
    return Transcript(index=index, text=text, start_s=start, end_s=end, is_final=True,
                      confidence=0.912345, language="en", words=words)


def test_utterance_final_body_has_the_documented_fields() -> None:
    event = events.utterance_final(CALL, final(0, "I need help with my order.", 1.2, 3.8512), **HOOK)
    body = json.loads(event.body)
    assert body == {
        "id": event.id, "type": "utterance.final", "created_at": body["created_at"],
        "call": {"id": "call_1", "source": "sip", "from": "sip:alice@example.com", "to": "100",
                 "dialplan": "support"},
        "utterance": {"index": 0, "text": "I need help with my order.", "start_s": 1.2, "end_s": 3.851,
                      "confidence": 0.912, "language": "en"},
    }
    assert re.fullmatch(r"evt_[0-9a-f]{24}", event.id)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["created_at"])
    assert abs(datetime.fromisoformat(body["created_at"]).timestamp() - event.created_at) < 0.002
    assert (event.type, event.call_id, event.url, event.secret) == (
        EventType.UTTERANCE_FINAL, "call_1", HOOK["url"], HOOK["secret"])


def test_words_and_speaker_appear_when_present() -> None:
    words = (Word("hello", 0.5, 0.9, 0.98), Word("there", 0.9, 1.3, 0.87))
    event = events.utterance_partial(CALL, final(2, "hello there", 0.5, 1.3, words), speaker="agent", **HOOK)
    utterance = event.payload()["utterance"]
    assert event.payload()["type"] == "utterance.partial"
    assert utterance["speaker"] == "agent"
    assert utterance["words"] == [
        {"text": "hello", "start_s": 0.5, "end_s": 0.9, "probability": 0.98},
        {"text": "there", "start_s": 0.9, "end_s": 1.3, "probability": 0.87},
    ]


def test_call_started_carries_metadata_and_each_event_gets_its_own_id() -> None:
    a = events.call_started(CALL, metadata={"X-Customer": "42"}, **HOOK)
    b = events.call_started(CALL, **HOOK)
    assert a.payload()["call"]["metadata"] == {"X-Customer": "42"}
    assert "metadata" not in b.payload()["call"]
    assert a.id != b.id


def test_dtmf_body_and_bad_digit() -> None:
    assert events.dtmf(CALL, "#", **HOOK).payload()["dtmf"] == {"digit": "#"}
    with pytest.raises(ValueError, match="dtmf digit"):
        events.dtmf(CALL, "x", **HOOK)


def test_call_ended_has_full_transcript_and_utterances() -> None:
    said = [events.Utterance(final(0, "Hello.", 0.4, 1.0)),
            events.Utterance(final(1, "How can I help?", 1.5, 2.5), "agent"),
            events.Utterance(final(2, "", 3.0, 3.1))]
    body = events.call_ended(CALL, said, duration_s=12.34567, reason="hangup", **HOOK).payload()
    assert body["type"] == "call.ended"
    assert body["transcript"] == "Hello. How can I help?"
    assert [u["text"] for u in body["utterances"]] == ["Hello.", "How can I help?", ""]
    assert body["utterances"][1]["speaker"] == "agent"
    assert (body["duration_s"], body["reason"]) == (12.346, "hangup")


def test_body_bytes_are_fixed_and_unicode_is_kept_readable() -> None:
    event = events.utterance_final(CALL, final(0, "café ✓", 0, 1), **HOOK)
    assert "café ✓".encode() in event.body
    assert event.payload()["utterance"]["text"] == "café ✓"
