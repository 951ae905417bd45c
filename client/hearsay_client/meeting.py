"""A meeting session over `/v1/meetings`: one recognizer per participant on the server,
results merged in meeting-time order and tagged with `speaker_id`.

    meeting = await client.streaming.create_meeting_session({"meeting_id": "m1",
        "participants": [{"id": "alice", "language": "en"}, {"id": "bob"}]})
    await meeting.send_audio(pcm, speaker_id="alice")   # a new id joins the meeting by itself
    async for result in meeting.stream():
        print(result.speaker_id, result.transcript)
    summary = await meeting.finalize()                   # .full_transcript .speakers .segments .duration

Config keys: `meeting_id`, `participants` (each `id`, optional `language`, `offset_s`),
`sample_rate`, `encoding`, `language` (everyone's default), `model`, `interim_results`,
`words`. A participant joining late or leaving early (`remove_participant`) is normal; their
audio is placed on the meeting clock where it arrives (docs/sdk.md). A meeting does not
reconnect: a dropped connection ends it with ConnectionLostError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from hearsay_client._results import Callback, ResultFeed
from hearsay_client._transport import Transport, error_from_wire
from hearsay_client.config import ENCODINGS, check_keys, streaming_config
from hearsay_client.errors import (
    ConfigError,
    ConnectionLostError,
    HearsayError,
    InvalidAudioError,
    SessionClosedError,
    SessionError,
)
from hearsay_client.types import MeetingSummary, Segment, SpeakerSummary, StreamingResult

log = logging.getLogger("hearsay_client")

MEETING_KEYS = {"meeting_id", "participants", "sample_rate", "encoding", "language", "model",
                "interim_results", "words", "vocabulary"}
PARTICIPANT_KEYS = {"id", "language", "offset_s"}
START_TIMEOUT_S = 30.0


def _participant(raw: Any, where: str) -> dict[str, Any]:
    check_keys(raw, PARTICIPANT_KEYS, where)
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        raise ConfigError(f"{where}.id: expected a non-empty string", "invalid_config")
    wire: dict[str, Any] = {"id": raw["id"]}
    if raw.get("language") is not None:
        wire["language"] = raw["language"]
    if raw.get("offset_s") is not None:
        wire["offsetS"] = raw["offset_s"]
    return wire


def meeting_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check a meeting config; the wire config (`start_meeting`)."""
    check_keys(raw, MEETING_KEYS, "config")
    audio = {k: raw[k] for k in ("sample_rate", "encoding", "language", "model", "interim_results", "words",
                                 "vocabulary") if k in raw}
    wire = dict(streaming_config(audio).wire)
    if raw.get("meeting_id") is not None:
        wire["meetingId"] = raw["meeting_id"]
    people = raw.get("participants", [])
    if not isinstance(people, list | tuple):
        raise ConfigError("config.participants: expected a list", "invalid_config")
    wire["participants"] = [_participant(p, f"config.participants[{i}]") for i, p in enumerate(people)]
    return wire


class MeetingSession:
    """One meeting (see the module doc)."""

    def __init__(self, transport: Transport, config: dict[str, Any]) -> None:
        self._transport = transport
        self._config = config
        self._sample = ENCODINGS[config.get("encoding", "LINEAR16")]
        self._feed: ResultFeed[StreamingResult] = ResultFeed()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._joined: set[str] = {p["id"] for p in config["participants"]}
        self._joining: dict[str, asyncio.Future[None]] = {}
        self._complete: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self.meeting_id = str(config.get("meetingId", ""))
        self.session_id = ""

    async def start(self) -> None:
        ws = await self._transport.websocket("/v1/meetings")
        try:
            await ws.send_json({"type": "start_meeting", "config": self._config})
            msg = await ws.receive(timeout=START_TIMEOUT_S)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionLostError("the server closed the connection before the meeting started "
                                          f"({ws.close_code})")
            data = json.loads(msg.data)
            if data.get("type") == "error":
                raise error_from_wire(str(data.get("code", "")), str(data.get("message", "")))
            if data.get("type") != "meeting_started":
                raise SessionError(f"unexpected first message {data.get('type')!r}", "protocol")
        except BaseException:
            await ws.close()
            raise
        self.meeting_id = str(data.get("meetingId", self.meeting_id))
        self.session_id = str(data.get("sessionId", ""))
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws), name="hearsay-meeting")

    async def add_participant(self, participant_id: str, language: str | None = None,
                              offset_s: float | None = None) -> None:
        """Add a participant now (ConfigError if the server refuses them, e.g. their language)."""
        ws = self._live()
        spec = _participant({"id": participant_id, "language": language, "offset_s": offset_s}, "participant")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._joining[participant_id] = waiter
        await ws.send_json({"type": "join", "participant": spec})
        try:
            await waiter
        finally:
            self._joining.pop(participant_id, None)
        self._joined.add(participant_id)

    async def remove_participant(self, participant_id: str) -> None:
        """The participant left: their last words are finalised."""
        await self._live().send_json({"type": "leave", "participantId": participant_id})

    async def send_audio(self, pcm: bytes, speaker_id: str) -> None:
        """`speaker_id`'s audio (whole samples in the meeting's encoding)."""
        ws = self._live()
        if len(pcm) % self._sample:
            raise InvalidAudioError(f"audio needs whole {self._sample}-byte samples; got {len(pcm)} bytes",
                                    "invalid_audio")
        if speaker_id not in self._joined:
            await self.add_participant(speaker_id)
        head = speaker_id.encode("utf-8")
        if len(head) > 255:
            raise ConfigError("speaker_id: at most 255 bytes of UTF-8", "invalid_config")
        try:
            await ws.send_bytes(bytes([len(head)]) + head + pcm)
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionLostError(f"the meeting's connection dropped: {exc}") from None

    async def stream(self) -> AsyncIterator[StreamingResult]:
        """Every participant's results (`speaker_id` says whose), finals in meeting-time order."""
        async for result in self._feed.stream():
            yield result

    def on_result(self, callback: Callback[StreamingResult]) -> None:
        self._feed.add_callback(callback)

    async def finalize(self) -> MeetingSummary:
        """End the meeting: every participant's last words, merged."""
        ws = self._live()
        self._stopping = True
        await ws.send_json({"type": "stop_meeting"})
        body = await asyncio.shield(self._complete)
        await self._feed.drain()
        return MeetingSummary(
            meeting_id=str(body.get("meetingId", self.meeting_id)), full_transcript=str(body.get("text", "")),
            speakers=tuple(SpeakerSummary(s["id"], s.get("language", ""), float(s["joined_s"]), float(s["left_s"]),
                                          float(s["talk_time_s"]), int(s["words"])) for s in body.get("speakers", ())),
            segments=tuple(Segment.from_wire(s) for s in body.get("segments", ())),
            duration=float(body.get("duration", 0.0)))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._feed.aclose()

    async def __aenter__(self) -> MeetingSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _live(self) -> aiohttp.ClientWebSocketResponse:
        if self._closed or self._stopping or self._ws is None:
            raise SessionClosedError("the meeting is finalized or closed")
        if self._complete.done():
            failure = self._complete.exception()
            raise failure if failure is not None else SessionClosedError("the meeting has ended")
        return self._ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        error: HearsayError | None = None
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "transcription_result":
                self._feed.publish(StreamingResult.from_wire(data["result"]))
            elif kind == "participant_joined":
                waiter = self._joining.get(data["participant"]["id"])
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif kind == "meeting_complete":
                if not self._complete.done():
                    self._complete.set_result(data["result"])
            elif kind == "error":
                failure = error_from_wire(str(data.get("code", "")), str(data.get("message", "")))
                pending = [w for w in self._joining.values() if not w.done()]
                if pending and failure.code in ("unknown_model", "invalid_config", "duplicate_participant",
                                                "too_many_participants"):
                    pending[0].set_exception(ConfigError(failure.message, failure.code))
                elif failure.code in ("session_too_long", "message_too_large"):
                    error = failure
                else:
                    log.warning("meeting error %s: %s", failure.code, failure.message)
        if not self._complete.done():
            self._complete.set_exception(error or ConnectionLostError("the meeting's connection dropped"))
        for waiter in self._joining.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLostError("the meeting's connection dropped"))
        self._feed.end(None if self._complete.exception() is None else self._complete.exception())
