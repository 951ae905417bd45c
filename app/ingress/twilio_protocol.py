"""Twilio Media Streams wire format: typed messages, a validating parser, serializers.

This module knows only the JSON that crosses the socket (Twilio's documented "Media Streams -
WebSocket Messages"); it knows nothing of calls or audio processing. Twilio -> us:

    connected  {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start      {"event": "start", "sequenceNumber": "1", "streamSid": "MZ…", "start": {
                 "streamSid", "accountSid", "callSid", "tracks": ["inbound", …],
                 "customParameters": {…}, "mediaFormat": {"encoding": "audio/x-mulaw",
                 "sampleRate": 8000, "channels": 1}}}
    media      {"event": "media", "sequenceNumber": "3", "streamSid": "MZ…", "media": {
                 "track": "inbound", "chunk": "2", "timestamp": "20", "payload": "<base64>"}}
    dtmf       {"event": "dtmf", "streamSid": "MZ…", "sequenceNumber": "5",
                "dtmf": {"track": "inbound_track", "digit": "1"}}
    mark       {"event": "mark", "sequenceNumber": "4", "streamSid": "MZ…", "mark": {"name": "…"}}
    stop       {"event": "stop", "sequenceNumber": "5", "streamSid": "MZ…",
                "stop": {"accountSid": "AC…", "callSid": "CA…"}}

Us -> Twilio (bidirectional streams): `media` (payload only), `mark` and `clear`.

`parse_message` turns one text frame into one of the frozen dataclasses below or raises
`TwilioProtocolError` whose message names the offending field. Twilio sends counters
(`sequenceNumber`, `chunk`, `timestamp`) as decimal strings; integers are accepted too.
The `to_json` methods produce exactly Twilio's shapes and `parse_outbound` reads what a server
sends back, so the simulator and the server share one definition of the protocol.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.delivery.events import DTMF_DIGITS

MULAW_ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160 bytes of μ-law per 20 ms frame
# Twilio sends 20 ms frames; anything beyond 200 ms in one message is not Twilio.
MAX_MEDIA_PAYLOAD_BYTES = 10 * FRAME_BYTES
TRACKS = ("inbound", "outbound")


class TwilioProtocolError(ValueError):
    """A text frame that is not a valid Media Streams message; the message says why."""


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """The audio format Twilio announces in `start` (always 8 kHz mono μ-law today)."""

    encoding: str = MULAW_ENCODING
    sample_rate: int = SAMPLE_RATE
    channels: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "sampleRate": self.sample_rate, "channels": self.channels}


@dataclass(frozen=True, slots=True)
class Connected:
    """First message on every stream: names the protocol and its version."""

    protocol: str = "Call"
    version: str = "1.0.0"

    def to_json(self) -> dict[str, Any]:
        return {"event": "connected", "protocol": self.protocol, "version": self.version}


@dataclass(frozen=True, slots=True)
class Start:
    """Stream metadata, sent once after `connected`."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    media_format: MediaFormat = field(default_factory=MediaFormat)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "start",
            "sequenceNumber": str(self.sequence_number),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": list(self.tracks),
                "customParameters": dict(self.custom_parameters),
                "mediaFormat": self.media_format.to_json(),
            },
            "streamSid": self.stream_sid,
        }


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of audio: `timestamp` is milliseconds from the start of the stream."""

    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "media",
            "sequenceNumber": str(self.sequence_number),
            "media": {
                "track": self.track,
                "chunk": str(self.chunk),
                "timestamp": str(self.timestamp_ms),
                "payload": base64.b64encode(self.payload).decode("ascii"),
            },
            "streamSid": self.stream_sid,
        }


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the caller pressed (only on bidirectional streams)."""

    sequence_number: int
    stream_sid: str
    digit: str
    track: str = "inbound_track"

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "dtmf",
            "streamSid": self.stream_sid,
            "sequenceNumber": str(self.sequence_number),
            "dtmf": {"track": self.track, "digit": self.digit},
        }


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio's echo of a mark we sent: the audio before it has finished playing."""

    sequence_number: int
    stream_sid: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "mark",
            "sequenceNumber": str(self.sequence_number),
            "streamSid": self.stream_sid,
            "mark": {"name": self.name},
        }


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream has ended (the call hung up or the stream was stopped)."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "stop",
            "sequenceNumber": str(self.sequence_number),
            "streamSid": self.stream_sid,
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
        }


TwilioMessage = Connected | Start | Media | Dtmf | Mark | Stop


def parse_message(text: str | bytes) -> TwilioMessage:
    """Validate one text frame from Twilio and return its typed message."""
    data = _json_object(text)
    event = data.get("event")
    parser = _PARSERS.get(event) if isinstance(event, str) else None
    if parser is None:
        raise TwilioProtocolError(f"unknown event {event!r}")
    return parser(data)


def _json_object(text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TwilioProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TwilioProtocolError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _payload(media: dict[str, Any]) -> bytes:
    encoded = _str(media, "payload", "media.media")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TwilioProtocolError(f"media.payload: not base64: {exc}") from None


def _parse_connected(data: dict[str, Any]) -> Connected:
    return Connected(protocol=_str(data, "protocol", "connected"), version=_str(data, "version", "connected"))


def _parse_start(data: dict[str, Any]) -> Start:
    body = _object(data, "start", "start")
    stream_sid = _str(body, "streamSid", "start.start")
    tracks = body.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not tracks or any(t not in TRACKS for t in tracks):
        raise TwilioProtocolError(f"start.tracks: expected a list of {'/'.join(TRACKS)}, got {tracks!r}")
    params = body.get("customParameters", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise TwilioProtocolError("start.customParameters: expected an object of strings")
    fmt = _object(body, "mediaFormat", "start")
    media_format = MediaFormat(
        encoding=_str(fmt, "encoding", "start.mediaFormat"),
        sample_rate=_int(fmt, "sampleRate", "start.mediaFormat"),
        channels=_int(fmt, "channels", "start.mediaFormat"),
    )
    if media_format != MediaFormat():
        raise TwilioProtocolError(f"start.mediaFormat: only 8 kHz mono {MULAW_ENCODING} is supported")
    return Start(
        sequence_number=_int(data, "sequenceNumber", "start"),
        stream_sid=stream_sid,
        account_sid=_str(body, "accountSid", "start.start"),
        call_sid=_str(body, "callSid", "start.start"),
        tracks=tuple(tracks),
        custom_parameters=dict(params),
        media_format=media_format,
    )


def _parse_media(data: dict[str, Any]) -> Media:
    body = _object(data, "media", "media")
    track = body.get("track", "inbound")
    if track not in TRACKS:
        raise TwilioProtocolError(f"media.track: expected {' or '.join(TRACKS)}, got {track!r}")
    payload = _payload(body)
    if not 0 < len(payload) <= MAX_MEDIA_PAYLOAD_BYTES:
        raise TwilioProtocolError(
            f"media.payload: {len(payload)} bytes, expected 1 to {MAX_MEDIA_PAYLOAD_BYTES}"
        )
    return Media(
        sequence_number=_int(data, "sequenceNumber", "media"),
        stream_sid=_str(data, "streamSid", "media"),
        track=track,
        chunk=_int(body, "chunk", "media.media"),
        timestamp_ms=_int(body, "timestamp", "media.media"),
        payload=payload,
    )


def _parse_dtmf(data: dict[str, Any]) -> Dtmf:
    body = _object(data, "dtmf", "dtmf")
    digit = _str(body, "digit", "dtmf.dtmf")
    if len(digit) != 1 or digit.upper() not in DTMF_DIGITS:
        raise TwilioProtocolError(f"dtmf.digit: expected one of 0-9 * # A-D, got {digit!r}")
    return Dtmf(
        sequence_number=_int(data, "sequenceNumber", "dtmf"),
        stream_sid=_str(data, "streamSid", "dtmf"),
        digit=digit.upper(),
        track=str(body.get("track", "inbound_track")),
    )


def _parse_mark(data: dict[str, Any]) -> Mark:
    body = _object(data, "mark", "mark")
    return Mark(
        sequence_number=_int(data, "sequenceNumber", "mark"),
        stream_sid=_str(data, "streamSid", "mark"),
        name=_str(body, "name", "mark.mark"),
    )


def _parse_stop(data: dict[str, Any]) -> Stop:
    body = _object(data, "stop", "stop")
    return Stop(
        sequence_number=_int(data, "sequenceNumber", "stop"),
        stream_sid=_str(data, "streamSid", "stop"),
        account_sid=_str(body, "accountSid", "stop.stop"),
        call_sid=_str(body, "callSid", "stop.stop"),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], TwilioMessage]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}


def _object(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise TwilioProtocolError(f"{where}.{key}: expected an object, got {value!r}")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise TwilioProtocolError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise TwilioProtocolError(f"{where}.{key}: expected a non-negative integer, got {value!r}")


# --- messages we send to Twilio (bidirectional streams) ---------------------------------


@dataclass(frozen=True, slots=True)
class OutboundMedia:
    """Audio for Twilio to play to the caller: 8 kHz μ-law bytes."""

    stream_sid: str
    payload: bytes

    def to_json(self) -> dict[str, Any]:
        body = {"payload": base64.b64encode(self.payload).decode("ascii")}
        return {"event": "media", "streamSid": self.stream_sid, "media": body}


@dataclass(frozen=True, slots=True)
class OutboundMark:
    """A mark after queued audio: Twilio echoes it back once that audio has played."""

    stream_sid: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": self.name}}


@dataclass(frozen=True, slots=True)
class Clear:
    """Drop the audio not yet played (Twilio then echoes the pending marks)."""

    stream_sid: str

    def to_json(self) -> dict[str, Any]:
        return {"event": "clear", "streamSid": self.stream_sid}


OutboundMessage = OutboundMedia | OutboundMark | Clear


def encode_message(message: TwilioMessage | OutboundMessage) -> str:
    """A message as the JSON text frame that goes on the wire."""
    return json.dumps(message.to_json(), separators=(",", ":"))


def parse_outbound(text: str | bytes) -> OutboundMessage:
    """Validate one frame a server sent to Twilio (the simulator plays Twilio's part)."""
    data = _json_object(text)
    event = data.get("event")
    stream_sid = _str(data, "streamSid", str(event))
    if event == "media":
        return OutboundMedia(stream_sid, _payload(_object(data, "media", "media")))
    if event == "mark":
        return OutboundMark(stream_sid, _str(_object(data, "mark", "mark"), "name", "mark.mark"))
    if event == "clear":
        return Clear(stream_sid)
    raise TwilioProtocolError(f"unknown outbound event {event!r}")
