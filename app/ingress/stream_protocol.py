"""The `/v1/stream` wire format: parsing client messages and building server messages.

Client -> server (JSON text frames; audio may also come as binary frames):

    {"type": "start_transcription", "config": {...StreamConfig keys...}}
    {"type": "audio_data", "audio": "<base64>"}
    {"type": "stop_transcription"}

Server -> client: `transcription_started`, `transcription_result`, `quality`,
`quality_warning`, `transcription_complete`, `error` (see the builders below). Everything a
client sends is validated here and rejected with a `ProtocolError` whose `code` is one of
`ErrorCode`; nothing here touches the socket.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.ingress.vocabulary import parse_vocabulary
from app.pipeline import MAX_RATE, MIN_RATE
from app.pipeline.quality import QualityReport, QualityWarning
from app.pipeline.types import AudioFormat, Encoding, Transcript


class ErrorCode(StrEnum):
    """The `code` of an `error` message."""

    INVALID_JSON = "invalid_json"  # a text frame that is not a JSON object
    INVALID_MESSAGE = "invalid_message"  # no "type", or a field of the wrong type
    UNKNOWN_TYPE = "unknown_type"
    NOT_STARTED = "not_started"  # audio or stop before start_transcription
    ALREADY_STARTED = "already_started"  # a second start_transcription
    INVALID_CONFIG = "invalid_config"  # an unknown or ill-typed config key
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
    UNKNOWN_DIALPLAN = "unknown_dialplan"
    UNKNOWN_MODEL = "unknown_model"
    INVALID_BASE64 = "invalid_base64"
    INVALID_AUDIO = "invalid_audio"  # e.g. an odd number of bytes of LINEAR16
    MESSAGE_TOO_LARGE = "message_too_large"
    SESSION_TOO_LONG = "session_too_long"
    TOO_MANY_SESSIONS = "too_many_sessions"
    UNAVAILABLE = "unavailable"  # no speech engine, or the service is shutting down
    SERVER_BUSY = "server_busy"  # `[asr] max_live_calls` calls are live: try again shortly
    INTERNAL_ERROR = "internal_error"


class ProtocolError(Exception):
    """A client message the protocol rejects; `code` goes into the `error` message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """A validated `start_transcription` config."""

    audio: AudioFormat = field(default_factory=AudioFormat)
    language: str | None = None  # None: the dialplan's (or the engine's) default
    model: str | None = None
    interim_results: bool = False
    single_utterance: bool = False
    dialplan: str | None = None
    words: bool = False
    vocabulary: str | None = None  # the recognizer's prompt (app.ingress.vocabulary)
    # A container the audio comes in (`WEBM_OPUS`); `audio` is then what it is decoded to.
    container: str | None = None


@dataclass(frozen=True, slots=True)
class Start:
    config: StreamConfig


@dataclass(frozen=True, slots=True)
class Audio:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Message = Start | Audio | Stop

_ENCODINGS = {e.value: e for e in Encoding}
_CONTAINERS = {"WEBM_OPUS"}  # decoded by app.ingress.stream_container to 16 kHz LINEAR16
_NOT_YET = {"OGG_OPUS", "OPUS", "FLAC", "MP3"}
_BOOLEANS = {"interimResults": "interim_results", "singleUtterance": "single_utterance",
             "words": "words", "enableWordTimeOffsets": "words"}
_STRINGS = {"language": "language", "model": "model", "dialplan": "dialplan"}
_KNOWN = {"sampleRate", "encoding", "vocabulary", *_BOOLEANS, *_STRINGS}


def parse_text(text: str) -> Message:
    """A client text frame as a message, or ProtocolError."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError(ErrorCode.INVALID_JSON, "the message is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "the message must be a JSON object")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, 'the message needs a string "type"')
    if kind == "start_transcription":
        return Start(parse_config(raw.get("config", {})))
    if kind == "audio_data":
        return Audio(decode_audio(raw.get("audio")))
    if kind == "stop_transcription":
        return Stop()
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:64]!r} "
                        "(start_transcription, audio_data, stop_transcription)")


def parse_config(raw: Any) -> StreamConfig:
    """Validate a `start_transcription` config object."""
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.INVALID_CONFIG, '"config" must be a JSON object')
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ProtocolError(ErrorCode.INVALID_CONFIG, f"config.{unknown[0][:64]}: unknown key "
                            f"(known: {', '.join(sorted(_KNOWN))})")
    options: dict[str, Any] = {}
    for key, name in _BOOLEANS.items():
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ProtocolError(ErrorCode.INVALID_CONFIG, f"config.{key}: expected true or false")
            options[name] = raw[key]
    for key, name in _STRINGS.items():
        if key in raw:
            value = raw[key]
            if not isinstance(value, str) or not value.strip() or len(value) > 256:
                raise ProtocolError(ErrorCode.INVALID_CONFIG, f"config.{key}: expected a non-empty string")
            options[name] = value.strip()
    if raw.get("vocabulary") is not None:
        try:
            options["vocabulary"] = parse_vocabulary(raw["vocabulary"], "config.vocabulary")
        except ValueError as exc:
            raise ProtocolError(ErrorCode.INVALID_CONFIG, str(exc)) from None
    encoding = raw.get("encoding")
    if isinstance(encoding, str) and encoding.upper() in _CONTAINERS:
        # The container says its own rate; the decoder hands the call 16 kHz PCM.
        return StreamConfig(container=encoding.upper(), **options)
    return StreamConfig(audio=_audio_format(raw), **options)


def _audio_format(raw: Mapping[str, Any]) -> AudioFormat:
    name = raw.get("encoding", "LINEAR16")
    if not isinstance(name, str):
        raise ProtocolError(ErrorCode.INVALID_CONFIG, "config.encoding: expected a string")
    encoding = _ENCODINGS.get(name.upper())
    if encoding is None:
        known = ", ".join([*_ENCODINGS, *sorted(_CONTAINERS)])
        why = "is not supported yet" if name.upper() in _NOT_YET else "is unknown"
        raise ProtocolError(ErrorCode.UNSUPPORTED_ENCODING,
                            f"config.encoding: {name[:64]!r} {why} (supported: {known})")
    rate = raw.get("sampleRate", 16000)
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise ProtocolError(ErrorCode.INVALID_CONFIG, "config.sampleRate: expected an integer")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(ErrorCode.UNSUPPORTED_SAMPLE_RATE,
                            f"config.sampleRate: {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
    return AudioFormat(encoding, rate)


def decode_audio(value: Any) -> bytes:
    """The bytes of an `audio_data` message's base64 `audio` field."""
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, 'audio_data needs a base64 string "audio"')
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.INVALID_BASE64, "audio: not valid base64") from None


def check_audio(payload: bytes, audio: AudioFormat) -> None:
    """Reject a payload that cannot be whole samples of `audio`."""
    if len(payload) % audio.bytes_per_sample:
        raise ProtocolError(ErrorCode.INVALID_AUDIO,
                            f"{audio.encoding.value} audio needs whole {audio.bytes_per_sample}-byte "
                            f"samples; got {len(payload)} bytes (dropped)")


# -- server -> client ---------------------------------------------------------------------------

def started(session_id: str) -> dict[str, Any]:
    return {"type": "transcription_started", "sessionId": session_id}


def result(transcript: Transcript, *, words: bool) -> dict[str, Any]:
    """A `transcription_result`; `timestamp` is the end of the utterance in stream seconds,
    `endOfTurn` whether this final also ends the caller's turn (always false on an interim)."""
    body: dict[str, Any] = {
        "transcript": transcript.text,
        "isFinal": transcript.is_final,
        "endOfTurn": transcript.is_final and transcript.end_of_turn,
        "confidence": round(transcript.confidence, 3),
        "timestamp": round(transcript.end_s, 3),
        "start_s": round(transcript.start_s, 3),
        "end_s": round(transcript.end_s, 3),
        "index": transcript.index,
        "language": transcript.language,
    }
    if words:
        body["words"] = [{"word": w.text, "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3),
                          "confidence": round(w.probability, 3)} for w in transcript.words]
    return {"type": "transcription_result", "result": body}


def complete(utterances: Sequence[Transcript], duration_s: float) -> dict[str, Any]:
    """`transcription_complete`: the full text, one segment per final utterance, the duration."""
    segments = [{"index": t.index, "text": t.text, "start_s": round(t.start_s, 3),
                 "end_s": round(t.end_s, 3), "confidence": round(t.confidence, 3)} for t in utterances]
    text = " ".join(t.text for t in utterances if t.text)
    return {"type": "transcription_complete",
            "result": {"text": text, "segments": segments, "duration": round(duration_s, 3)}}


def quality(report: QualityReport) -> dict[str, Any]:
    """`quality`: the audio-quality figures over the recent audio (docs/quality.md)."""
    return {"type": "quality", "quality": report.as_dict()}


def quality_warning(warning: QualityWarning) -> dict[str, Any]:
    """`quality_warning`: one figure past its threshold, e.g. `{"kind": "low_volume", ...}`."""
    return {"type": "quality_warning", "warning": warning.as_dict()}


def error(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code.value, "message": message}
