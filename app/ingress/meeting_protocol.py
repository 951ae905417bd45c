"""The `/v1/meetings` wire format (docs/sdk.md): parsing client messages, building server ones.

Client -> server (JSON text; audio also as binary frames `<n><n bytes of speaker id, UTF-8><audio>`):

    {"type": "start_meeting", "config": {"meetingId": "m1", "participants": [{"id": "alice", "language": "en"}],
                                         "sampleRate": 16000, "encoding": "LINEAR16", "model": "mini",
                                         "language": "en", "interimResults": false, "words": false}}
    {"type": "join", "participant": {"id": "carol", "language": "en", "offsetS": 12.5}}
    {"type": "leave", "participantId": "bob"}
    {"type": "audio_data", "speakerId": "alice", "audio": "<base64>"}
    {"type": "stop_meeting"}

Server -> client: `meeting_started`, `participant_joined`, `participant_left`,
`transcription_result` (the `/v1/stream` result plus `speakerId`), `meeting_complete`, `error`.
Audio, model and language keys are checked by `stream_protocol.parse_config`, so they mean
exactly what they mean on `/v1/stream`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from app.ingress import stream_protocol
from app.ingress.stream_protocol import ErrorCode, ProtocolError
from app.meetings.meeting import MeetingConfig, ParticipantSpec
from app.pipeline.types import Transcript

_ID = re.compile(r"^[\w.@:+-]{1,64}$")
_STREAM_KEYS = {"sampleRate", "encoding", "language", "model", "interimResults", "words", "vocabulary"}
_MEETING_KEYS = {"meetingId", "participants", *_STREAM_KEYS}


@dataclass(frozen=True, slots=True)
class StartMeeting:
    config: MeetingConfig


@dataclass(frozen=True, slots=True)
class Join:
    participant: ParticipantSpec


@dataclass(frozen=True, slots=True)
class Leave:
    participant_id: str


@dataclass(frozen=True, slots=True)
class SpeakerAudio:
    participant_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class StopMeeting:
    pass


Message = StartMeeting | Join | Leave | SpeakerAudio | StopMeeting


def _bad(code: ErrorCode, message: str) -> ProtocolError:
    return ProtocolError(code, message)


def participant_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise _bad(ErrorCode.INVALID_MESSAGE, f"{where}: expected an id of 1-64 letters, digits or ._@:+-")
    return value


def participant(raw: Any, where: str) -> ParticipantSpec:
    if not isinstance(raw, dict):
        raise _bad(ErrorCode.INVALID_CONFIG, f"{where}: expected an object with an \"id\"")
    unknown = sorted(set(raw) - {"id", "language", "offsetS"})
    if unknown:
        raise _bad(ErrorCode.INVALID_CONFIG, f"{where}.{unknown[0][:64]}: unknown key (id, language, offsetS)")
    language = raw.get("language")
    if language is not None and (not isinstance(language, str) or not language.strip()):
        raise _bad(ErrorCode.INVALID_CONFIG, f"{where}.language: expected a non-empty string")
    offset = raw.get("offsetS")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int | float) or offset < 0):
        raise _bad(ErrorCode.INVALID_CONFIG, f"{where}.offsetS: expected a non-negative number of seconds")
    return ParticipantSpec(participant_id(raw.get("id"), f"{where}.id"), language.strip() if language else None,
                           float(offset) if offset is not None else None)


def parse_config(raw: Any) -> MeetingConfig:
    if not isinstance(raw, dict):
        raise _bad(ErrorCode.INVALID_CONFIG, '"config" must be a JSON object')
    unknown = sorted(set(raw) - _MEETING_KEYS)
    if unknown:
        raise _bad(ErrorCode.INVALID_CONFIG, f"config.{unknown[0][:64]}: unknown key "
                   f"(known: {', '.join(sorted(_MEETING_KEYS))})")
    meeting_id = raw.get("meetingId")
    if meeting_id is not None and (not isinstance(meeting_id, str) or not meeting_id.strip() or len(meeting_id) > 128):
        raise _bad(ErrorCode.INVALID_CONFIG, "config.meetingId: expected a non-empty string")
    people = raw.get("participants", [])
    if not isinstance(people, list):
        raise _bad(ErrorCode.INVALID_CONFIG, "config.participants: expected a list")
    specs = tuple(participant(p, f"config.participants[{i}]") for i, p in enumerate(people))
    if len({s.id for s in specs}) != len(specs):
        raise _bad(ErrorCode.INVALID_CONFIG, "config.participants: each id once")
    stream = stream_protocol.parse_config({k: v for k, v in raw.items() if k in _STREAM_KEYS})
    return MeetingConfig(meeting_id=meeting_id or "", audio=stream.audio, language=stream.language,
                         model=stream.model, interim_results=stream.interim_results, words=stream.words,
                         participants=specs, vocabulary=stream.vocabulary)


def parse_text(text: str) -> Message:
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise _bad(ErrorCode.INVALID_JSON, "the message is not valid JSON") from None
    if not isinstance(raw, dict):
        raise _bad(ErrorCode.INVALID_JSON, "the message must be a JSON object")
    kind = raw.get("type")
    if kind == "start_meeting":
        return StartMeeting(parse_config(raw.get("config", {})))
    if kind == "join":
        return Join(participant(raw.get("participant"), "participant"))
    if kind == "leave":
        return Leave(participant_id(raw.get("participantId"), "participantId"))
    if kind == "audio_data":
        return SpeakerAudio(participant_id(raw.get("speakerId"), "speakerId"),
                            stream_protocol.decode_audio(raw.get("audio")))
    if kind == "stop_meeting":
        return StopMeeting()
    raise _bad(ErrorCode.UNKNOWN_TYPE, f"unknown message type {str(kind)[:64]!r} "
               "(start_meeting, join, leave, audio_data, stop_meeting)")


def parse_binary(data: bytes) -> SpeakerAudio:
    """A binary frame: one byte n, n bytes of speaker id (UTF-8), then the audio."""
    if not data or len(data) < 1 + data[0]:
        raise _bad(ErrorCode.INVALID_MESSAGE, "a binary frame starts with the speaker id's length and the id")
    try:
        speaker = data[1:1 + data[0]].decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(ErrorCode.INVALID_MESSAGE, "the binary frame's speaker id is not UTF-8") from None
    return SpeakerAudio(participant_id(speaker, "speaker id"), data[1 + data[0]:])


# -- server -> client ---------------------------------------------------------------------------

def started(meeting_id: str, session_id: str) -> dict[str, Any]:
    return {"type": "meeting_started", "meetingId": meeting_id, "sessionId": session_id}


def joined(spec: ParticipantSpec, language: str) -> dict[str, Any]:
    return {"type": "participant_joined", "participant": {"id": spec.id, "language": language}}


def left(participant_id: str, at_s: float) -> dict[str, Any]:
    return {"type": "participant_left", "participantId": participant_id, "left_s": round(at_s, 3)}


def result(speaker: str, transcript: Transcript, *, words: bool) -> dict[str, Any]:
    message = stream_protocol.result(transcript, words=words)
    message["result"]["speakerId"] = speaker
    return message


def complete(summary: dict[str, Any]) -> dict[str, Any]:
    return {"type": "meeting_complete", "result": summary}


def error(code: str, message: str) -> dict[str, Any]:
    """An `error`: the `/v1/stream` codes plus duplicate_participant, unknown_participant,
    too_many_participants and participant_left."""
    return {"type": "error", "code": code, "message": message}
