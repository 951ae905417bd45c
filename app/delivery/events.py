"""Webhook events: what Hearsay POSTs to a dialplan's `webhook.url` (docs/webhooks.md).

Each builder returns a `WebhookEvent` whose JSON `body` is built once, here, so the outbox,
the signature and every retry use the same bytes and the same event id. Bodies:

    {"id": "evt_...", "type": "...", "created_at": "2026-11-23T18:00:00.123Z",
     "call": {"id", "source", "from", "to", "dialplan"},
     ...one of:
     "utterance": {"index", "text", "start_s", "end_s", "confidence", "language",
                   "words"?: [{"text", "start_s", "end_s", "probability"}], "speaker"?}
     "dtmf": {"digit"}
     "transcript": "full text", "utterances": [utterance...], "duration_s", "reason"
     "playback": {"id", "action", "text"? | "source"?, "duration_s", "heard_s"}
     "error": {"index", "action", "message"}}
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from app.pipeline.quality import QualityReport, QualityWarning
from app.pipeline.types import Transcript


class EventType(StrEnum):
    """The webhook event types."""

    CALL_STARTED = "call.started"
    UTTERANCE_PARTIAL = "utterance.partial"
    UTTERANCE_FINAL = "utterance.final"
    DTMF = "dtmf"
    CALL_ENDED = "call.ended"
    PLAYBACK_STARTED = "playback.started"
    PLAYBACK_FINISHED = "playback.finished"
    PLAYBACK_INTERRUPTED = "playback.interrupted"
    ACTION_ERROR = "action.error"
    QUALITY_WARNING = "quality.warning"


@dataclass(frozen=True, slots=True)
class CallRef:
    """The call an event belongs to, as it appears in the body's `call` object."""

    id: str
    source: str  # "sip" | "twilio" | "stream"
    from_: str
    to: str
    dialplan: str

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source, "from": self.from_, "to": self.to,
                "dialplan": self.dialplan}


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event to deliver: its stable id, the exact body bytes, and where it goes.

    `created_at` is Unix seconds; `url` empty means "no webhook: keep it in the outbox".
    """

    id: str
    type: EventType
    call_id: str
    created_at: float
    body: bytes
    url: str
    secret: str

    def payload(self) -> dict[str, Any]:
        """The body decoded again (for logs, tests and the CLI)."""
        result: dict[str, Any] = json.loads(self.body)
        return result


def new_event_id() -> str:
    """A fresh event id: "evt_" and 24 random hex digits."""
    return "evt_" + secrets.token_hex(12)


def call_started(call: CallRef, *, url: str, secret: str,
                 metadata: Mapping[str, Any] | None = None) -> WebhookEvent:
    """`call.started`; `metadata` (e.g. SIP headers, Twilio custom parameters) goes in `call`."""
    return _build(EventType.CALL_STARTED, call, url, secret, {}, metadata)


def utterance_partial(call: CallRef, transcript: Transcript, *, url: str, secret: str,
                      speaker: str | None = None) -> WebhookEvent:
    """`utterance.partial`: an interim result (only when the dialplan asks for them)."""
    return _build(EventType.UTTERANCE_PARTIAL, call, url, secret,
                  {"utterance": utterance_json(transcript, speaker)})


def utterance_final(call: CallRef, transcript: Transcript, *, url: str, secret: str,
                    speaker: str | None = None) -> WebhookEvent:
    """`utterance.final`: a finished utterance."""
    return _build(EventType.UTTERANCE_FINAL, call, url, secret,
                  {"utterance": utterance_json(transcript, speaker)})


DTMF_DIGITS = frozenset("0123456789*#ABCD")


def dtmf(call: CallRef, digit: str, *, url: str, secret: str) -> WebhookEvent:
    """`dtmf`: one key pressed by the caller (0-9, *, #, A-D)."""
    if digit not in DTMF_DIGITS:
        raise ValueError(f"dtmf digit: expected one of 0-9 * # A-D, got {digit!r}")
    return _build(EventType.DTMF, call, url, secret, {"dtmf": {"digit": digit}})


@dataclass(frozen=True, slots=True)
class Utterance:
    """A final utterance of a call and, on two-track calls, who spoke it ("caller", "agent")."""

    transcript: Transcript
    speaker: str | None = None


def call_ended(call: CallRef, utterances: Sequence[Utterance], *, duration_s: float, reason: str,
               url: str, secret: str, quality: Mapping[str, Any] | None = None) -> WebhookEvent:
    """`call.ended`: the full `transcript` text, the `utterances` list, duration and reason,
    and `quality`: the call's last quality figures (docs/quality.md) when there are any."""
    items = [utterance_json(u.transcript, u.speaker) for u in utterances]
    text = " ".join(item["text"] for item in items if item["text"])
    fields: dict[str, Any] = {
        "transcript": text,
        "utterances": items,
        "duration_s": round(float(duration_s), 3),
        "reason": reason,
    }
    if quality:
        fields["quality"] = dict(quality)
    return _build(EventType.CALL_ENDED, call, url, secret, fields)


def quality_warning(call: CallRef, warning: QualityWarning, report: QualityReport, *, url: str,
                    secret: str) -> WebhookEvent:
    """`quality.warning`: a figure past its threshold (`warning`) and the figures it came with."""
    return _build(EventType.QUALITY_WARNING, call, url, secret,
                  {"warning": warning.as_dict(), "quality": report.as_dict()})


PLAYBACK_TYPES = {"started": EventType.PLAYBACK_STARTED, "finished": EventType.PLAYBACK_FINISHED,
                  "interrupted": EventType.PLAYBACK_INTERRUPTED}


def playback(call: CallRef, state: str, details: Mapping[str, Any], *, url: str, secret: str) -> WebhookEvent:
    """`playback.started|finished|interrupted` (`state`): what talk-back played into the call;
    `details` is the `playback` object (`id`, `action`, `text` or `source`, `duration_s`,
    `heard_s`: how much of it went out to the caller)."""
    return _build(PLAYBACK_TYPES[state], call, url, secret, {"playback": dict(details)})


def action_error(call: CallRef, index: int, action: Any, message: str, *, url: str, secret: str) -> WebhookEvent:
    """`action.error`: action `index` of an answer (`action`, as received) was not carried out."""
    return _build(EventType.ACTION_ERROR, call, url, secret,
                  {"error": {"index": index, "action": action, "message": message}})


def utterance_json(transcript: Transcript, speaker: str | None = None) -> dict[str, Any]:
    """The `utterance` object of a body."""
    item: dict[str, Any] = {
        "index": transcript.index,
        "text": transcript.text,
        "start_s": round(transcript.start_s, 3),
        "end_s": round(transcript.end_s, 3),
        "confidence": round(transcript.confidence, 3),
        "language": transcript.language,
    }
    if transcript.words:
        item["words"] = [
            {"text": w.text, "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3),
             "probability": round(w.probability, 3)}
            for w in transcript.words
        ]
    if speaker is not None:
        item["speaker"] = speaker
    return item


def _build(kind: EventType, call: CallRef, url: str, secret: str, fields: Mapping[str, Any],
           metadata: Mapping[str, Any] | None = None) -> WebhookEvent:
    event_id = new_event_id()
    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    call_json: dict[str, Any] = dict(call.as_json())
    if metadata:
        call_json["metadata"] = dict(metadata)
    body = {"id": event_id, "type": kind.value, "created_at": stamp, "call": call_json, **fields}
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return WebhookEvent(id=event_id, type=kind, call_id=call.id, created_at=now, body=raw,
                        url=url, secret=secret)
