"""The Media Streams wire format: Twilio's documented messages parse; bad frames say why."""

from __future__ import annotations

import base64
import json

import pytest

from app.ingress.twilio_protocol import (
    Clear,
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    TwilioProtocolError,
    encode_message,
    parse_message,
    parse_outbound,
)

# Shapes copied from Twilio's "Media Streams - WebSocket Messages" page.
CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "tracks": ["inbound", "outbound"],
        "customParameters": {"FirstName": "Jane", "LastName": "Doe"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
}
PAYLOAD = bytes(range(160))
MEDIA = {
    "event": "media",
    "sequenceNumber": "3",
    "media": {
        "track": "outbound",
        "chunk": "1",
        "timestamp": "5",
        "payload": base64.b64encode(PAYLOAD).decode(),
    },
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
}
DTMF = {
    "event": "dtmf",
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "sequenceNumber": "5",
    "dtmf": {"track": "inbound_track", "digit": "1"},
}
MARK = {
    "event": "mark",
    "sequenceNumber": "4",
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "mark": {"name": "my label"},
}
STOP = {
    "event": "stop",
    "sequenceNumber": "5",
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "stop": {
        "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    },
}
SID = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"


def test_documented_messages_parse_to_typed_values() -> None:
    assert parse_message(json.dumps(CONNECTED)) == Connected("Call", "1.0.0")
    start = parse_message(json.dumps(START))
    assert isinstance(start, Start)
    assert start.stream_sid == SID and start.call_sid.startswith("CA")
    assert start.tracks == ("inbound", "outbound")
    assert start.custom_parameters == {"FirstName": "Jane", "LastName": "Doe"}
    assert start.media_format == MediaFormat("audio/x-mulaw", 8000, 1)
    assert parse_message(json.dumps(MEDIA)) == Media(3, SID, "outbound", 1, 5, PAYLOAD)
    assert parse_message(json.dumps(DTMF)) == Dtmf(5, SID, "1", "inbound_track")
    assert parse_message(json.dumps(MARK)) == Mark(4, SID, "my label")
    stop = parse_message(json.dumps(STOP))
    assert isinstance(stop, Stop) and stop.call_sid.startswith("CA")


@pytest.mark.parametrize("message", [CONNECTED, START, MEDIA, DTMF, MARK, STOP])
def test_serialising_gives_back_twilios_exact_json(message: dict[str, object]) -> None:
    assert json.loads(encode_message(parse_message(json.dumps(message)))) == message


def _with(message: dict[str, object], path: str, value: object) -> str:
    data = json.loads(json.dumps(message))
    *parents, key = path.split(".")
    target = data
    for p in parents:
        target = target[p]
    if value is None:
        del target[key]
    else:
        target[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"event": "hello"}', "unknown event 'hello'"),
        ('{"no": "event"}', "unknown event None"),
        (_with(MEDIA, "media.payload", "%%%not-base64%%%"), "media.payload: not base64"),
        (_with(MEDIA, "media.payload", ""), "media.media.payload"),
        (_with(MEDIA, "media.payload", base64.b64encode(b"x" * 5000).decode()), "5000 bytes"),
        (_with(MEDIA, "media.timestamp", "-20"), "media.media.timestamp"),
        (_with(MEDIA, "media.chunk", None), "media.media.chunk"),
        (_with(MEDIA, "media.track", "sideways"), "media.track"),
        (_with(MEDIA, "media", "oops"), "media.media: expected an object"),
        (_with(START, "start.streamSid", None), "start.start.streamSid"),
        (_with(START, "start.tracks", ["both"]), "start.tracks"),
        (_with(START, "start.mediaFormat.sampleRate", 16000), "8 kHz mono"),
        (_with(START, "start.customParameters", {"a": 1}), "customParameters"),
        (_with(DTMF, "dtmf.digit", "12"), "dtmf.digit"),
        (_with(STOP, "stop.callSid", None), "stop.stop.callSid"),
        (_with(MARK, "mark.name", ""), "mark.mark.name"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frame: str, complaint: str) -> None:
    with pytest.raises(TwilioProtocolError, match=complaint.replace("*", r"\*")):
        parse_message(frame)


def test_integer_counters_are_accepted_too() -> None:
    media = parse_message(_with(MEDIA, "media.timestamp", 40))
    assert isinstance(media, Media) and media.timestamp_ms == 40


def test_outbound_messages_match_twilios_shapes() -> None:
    media = OutboundMedia(SID, b"\xff" * 160)
    assert json.loads(encode_message(media)) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(b"\xff" * 160).decode()},
    }
    assert json.loads(encode_message(OutboundMark(SID, "reply-1"))) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "reply-1"},
    }
    assert json.loads(encode_message(Clear(SID))) == {"event": "clear", "streamSid": SID}
    for message in (media, OutboundMark(SID, "reply-1"), Clear(SID)):
        assert parse_outbound(encode_message(message)) == message


def test_outbound_parser_rejects_unknown_events() -> None:
    with pytest.raises(TwilioProtocolError, match="unknown outbound event 'stop'"):
        parse_outbound(json.dumps(STOP))
