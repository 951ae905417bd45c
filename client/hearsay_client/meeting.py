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
`words`, `vocabulary`, and the SDK's `max_buffer_s` and `reconnect` (as for real-time
sessions). A participant joining late or leaving early (`remove_participant`) is normal; their
audio is placed on the meeting clock where it arrives (docs/sdk.md).

A meeting survives a dropped connection as a real-time session does (`_resend`): it keeps each
participant's audio since the end of their last final received, reconnects with backoff and
jitter, starts a new server meeting with the same `meeting_id` and everyone still in it, each
placed on the meeting clock (`offsetS`) where their unfinished audio starts, and sends that
audio again; someone who had left comes back only for that, and leaves again. Results keep
meeting time across reconnects, finals are numbered on, and `finalize()` merges every final
of every connection (`reconnects` says how many). Each participant's buffer is bounded by
`max_buffer_s`; audio that could not be resent is reported per participant (`untranscribed`).
With `reconnect: False` a dropped connection ends the meeting with ConnectionLostError.
Until a new participant's join is answered (after a reconnect, if one is under way),
`send_audio` for them waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from hearsay_client._meeting_summary import by_time as _by_time
from hearsay_client._meeting_summary import merged_summary
from hearsay_client._resend import ResendBuffer
from hearsay_client._session import FATAL_CODES, FRAME_BYTES, SEND_AHEAD_S, ReconnectingSession
from hearsay_client._transport import Transport, error_from_wire
from hearsay_client.config import StreamingConfig, participant_spec
from hearsay_client.errors import ConfigError, ConnectionLostError, InvalidAudioError, SessionClosedError
from hearsay_client.types import AudioSpan, MeetingSummary, Segment, SpeakerSummary, StreamingResult

log = logging.getLogger("hearsay_client")

_JOIN_CODES = {"unknown_model", "invalid_config", "duplicate_participant", "too_many_participants"}


@dataclass(eq=False)
class _Participant:
    """A participant as the SDK keeps them: their join spec, the audio the server has not
    finished with, and where their audio sits on the meeting clock."""

    spec: dict[str, Any]
    buffer: ResendBuffer
    offset_s: float | None = None  # meeting time of their first byte; known once it is sent
    language: str = ""  # as the server confirmed it
    leaving: bool = False  # remove_participant was called
    left_s: float | None = None  # from the server's participant_left

    @property
    def id(self) -> str:
        return str(self.spec["id"])

    def end_s(self, bytes_per_s: int) -> float:
        """The meeting time their audio has reached."""
        return (self.offset_s or 0.0) + self.buffer.written / bytes_per_s


class MeetingSession(ReconnectingSession):
    """One meeting (see the module doc). Made by `client.streaming.create_meeting_session()`;
    use it from one event loop. `stream()` (every participant's results, `speaker_id` says
    whose, finals in meeting-time order), `on_result()`, `close()`, `session_id` and
    `connected` are `ReconnectingSession`'s."""

    _kind = "meeting"

    def __init__(self, transport: Transport, config: StreamingConfig) -> None:
        super().__init__(transport, config)
        self._people: dict[str, _Participant] = {}
        for spec in config.wire["participants"]:
            self._people[spec["id"]] = self._participant(spec)
        self._present: set[str] = set()  # the participants of the current server meeting
        self._joining: dict[str, asyncio.Future[str]] = {}
        self._finals: list[StreamingResult] = []  # every final, across reconnects
        self._index_base = 0  # finals before the current server meeting's
        self._connected = asyncio.Event()  # set while a connection carries the meeting, and at its end
        self._stop_sent = False
        self._left_sent: set[str] = set()
        self._summary: dict[str, Any] = {}  # the last server meeting's meeting_complete
        self.meeting_id = str(config.wire.get("meetingId", ""))

    @property
    def untranscribed(self) -> tuple[AudioSpan, ...]:
        """Each participant's audio known not to be transcribed (meeting seconds; `speaker` says whose)."""
        return _by_time(p.buffer.untranscribed(p.offset_s or 0.0, p.id) for p in self._people.values())

    async def start(self) -> None:
        """Connect and start the server's meeting; typed errors if the server refuses."""
        await self._connect()
        self._runner = asyncio.create_task(self._run(), name="hearsay-meeting")

    # -- the application's side -----------------------------------------------------------

    async def add_participant(self, participant_id: str, language: str | None = None,
                              offset_s: float | None = None) -> None:
        """Add a participant now (ConfigError if the server refuses them, e.g. their language).
        While the connection is down, this waits for the reconnect."""
        spec = participant_spec({"id": participant_id, "language": language, "offset_s": offset_s}, "participant")
        self._check_open()
        if participant_id in self._people:
            raise ConfigError(f"participant {participant_id!r} has already joined", "duplicate_participant")
        while True:
            ws = await self._connection()
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._joining[participant_id] = waiter
            try:
                await ws.send_json({"type": "join", "participant": spec})
                confirmed = await waiter
            except (ConnectionError, RuntimeError, aiohttp.ClientError, ConnectionLostError):
                continue  # the next connection, or the meeting's failure, decides
            finally:
                self._joining.pop(participant_id, None)
            if self._ws is ws:
                break  # else the meeting reconnected meanwhile, without them: join the new one
        person = self._participant(spec)
        person.language = confirmed
        self._people[participant_id] = person
        self._present.add(participant_id)

    async def remove_participant(self, participant_id: str) -> None:
        """The participant left: their last words are finalised (after the audio already given).
        ConfigError for an id not in the meeting; their later `send_audio` raises SessionClosedError."""
        self._check_open()
        person = self._people.get(participant_id)
        if person is None:
            raise ConfigError(f"no participant {participant_id!r} in the meeting", "unknown_participant")
        person.leaving = True
        self._wake.set()

    async def send_audio(self, pcm: bytes, speaker_id: str) -> None:
        """`speaker_id`'s audio (whole samples in the meeting's encoding); a new id joins first.
        Returns at once while the connection is down (the audio is kept for resending); on a
        live connection it waits while more than a few seconds are queued."""
        self._check_open()
        if len(pcm) % self._sample:
            raise InvalidAudioError(f"audio needs whole {self._sample}-byte samples; got {len(pcm)} bytes",
                                    "invalid_audio")
        if len(speaker_id.encode("utf-8")) > 255:
            raise ConfigError("speaker_id: at most 255 bytes of UTF-8", "invalid_config")
        if speaker_id not in self._people:
            await self.add_participant(speaker_id)
        person = self._people[speaker_id]
        if person.leaving:
            raise SessionClosedError(f"participant {speaker_id!r} has left the meeting")
        if not pcm:
            return
        if self._ws is None and person.offset_s is None and person.spec.get("offsetS") is None:
            # First words during an outage: they start where the meeting had got to (the
            # new server meeting is told so), not where the resent audio happens to be.
            person.offset_s = max((p.end_s(self._bps) for p in self._people.values() if p.offset_s is not None),
                                  default=0.0)
        await self._queue(person.buffer, pcm)

    async def finalize(self) -> MeetingSummary:
        """End the meeting: every participant's last words, merged (across reconnects)."""
        await self._end_of_audio()
        if not self.reconnects:
            return self._server_summary(self._summary)
        return merged_summary(self.meeting_id, self._finals, self._speakers(), self.untranscribed, self.reconnects)

    def _check_open(self) -> None:
        if self._closed or self._stop_requested:
            raise SessionClosedError("the meeting is finalized or closed")
        if self._fatal is not None:
            raise self._fatal
        if self._done.done():
            raise self._failure()

    def _failure(self) -> BaseException:
        failure = self._done.exception() if not self._done.cancelled() else None
        return failure if failure is not None else SessionClosedError("the meeting has ended")

    async def _connection(self) -> aiohttp.ClientWebSocketResponse:
        """The live connection; waits through a reconnect, raises the meeting's failure."""
        while self._ws is None:
            if self._done.done():
                raise self._failure()
            await self._connected.wait()
        return self._ws

    # -- connections ------------------------------------------------------------------------

    def _participant(self, spec: dict[str, Any]) -> _Participant:
        return _Participant(spec, ResendBuffer(self._config.sample_rate, self._sample, self._config.max_buffer_s))

    def _rejoin_spec(self, person: _Participant) -> dict[str, Any]:
        """Their join spec for a new server meeting: placed where their unfinished audio starts."""
        spec = dict(person.spec)
        if person.offset_s is not None:
            spec["offsetS"] = round(person.offset_s + person.buffer.acked / self._bps, 6)
        return spec

    async def _connect(self) -> None:
        # Someone who left is back only while the server owes them finals; they leave again.
        specs = [self._rejoin_spec(p) for p in self._people.values() if not p.leaving or p.buffer.unacked]
        # The server names a meeting that has no id; a reconnect keeps that name.
        config = {**self._config.wire, "participants": specs}
        if self.meeting_id:
            config["meetingId"] = self.meeting_id
        ws = await self._transport.websocket("/v1/meetings")
        data = await self._handshake(ws, {"type": "start_meeting", "config": config}, "meeting_started")
        self.meeting_id = str(data.get("meetingId", self.meeting_id))
        self._present = {s["id"] for s in specs}
        for person in self._people.values():
            person.buffer.restart()
        self._index_base = len(self._finals)
        self._stop_sent = False
        self._left_sent = set()
        self._ws = ws
        self._connected.set()

    def _dropped(self) -> None:
        self._connected.clear()
        for waiter in self._joining.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLostError("the meeting's connection dropped"))

    async def _owed(self) -> bool:
        for person in self._people.values():
            person.buffer.connection_lost()
        return True  # the meeting goes on for whoever is still in it

    def _reconnected(self) -> None:
        log.info("meeting %s reconnected (server session %s); resending %.2f s of audio", self.meeting_id,
                 self.server_sessions[-1], sum(p.buffer.unacked for p in self._people.values()) / self._bps)

    def _finish(self, error: BaseException | None) -> None:
        self._connected.set()  # wakes whoever waits for a connection, to see the end
        super()._finish(error)

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if not await self._send_pending(ws):
                    await ws.close()  # unsent audio was dropped (overflow): start afresh
                    return
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                return  # the receiver sees the close and reconnects

    async def _send_pending(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Everyone's unsent audio (a frame each in turn), then leaves, then the stop once all
        is sent; False when a participant's unsent audio was dropped."""
        present = [p for p in self._people.values() if p.id in self._present]
        busy = True
        while busy:
            busy = False
            for person in present:
                if person.buffer.backlog <= 0:
                    continue
                frame = person.buffer.next_frame(FRAME_BYTES)
                if frame is None:
                    return False
                if person.offset_s is None:
                    person.offset_s = self._arrival_s(person)
                head = person.id.encode("utf-8")
                await ws.send_bytes(bytes([len(head)]) + head + frame)
                person.buffer.mark_sent(len(frame))
                busy = True
            if all(p.buffer.backlog <= SEND_AHEAD_S * self._bps for p in present):
                self._room.set()
        for person in present:
            if person.leaving and person.id not in self._left_sent:
                self._left_sent.add(person.id)
                await ws.send_json({"type": "leave", "participantId": person.id})
        if self._stop_requested and not self._stop_sent and all(p.buffer.backlog <= 0 for p in present):
            self._stop_sent = True
            await ws.send_json({"type": "stop_meeting"})
        return True

    def _arrival_s(self, person: _Participant) -> float:
        """Where the server places a participant's first audio: their `offset_s`, else the
        meeting time reached (the most audio anyone has sent on this connection), as
        `app.meetings.meeting` does, so the SDK knows the offset without asking."""
        if person.spec.get("offsetS") is not None:
            return float(person.spec["offsetS"])
        return max(((p.offset_s or 0.0) + p.buffer.sent / self._bps for p in self._people.values()
                    if p.id in self._present and p.offset_s is not None and p.buffer.sent > p.buffer.base),
                   default=0.0)

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data: dict[str, Any] = json.loads(msg.data)
            kind = data.get("type")
            if kind == "transcription_result":
                self._on_result(data["result"])
            elif kind == "participant_joined":
                self._on_joined(data["participant"])
            elif kind == "participant_left":
                if (person := self._people.get(str(data.get("participantId")))) is not None:
                    person.left_s = float(data.get("left_s", 0.0))
            elif kind == "meeting_complete":
                self._summary = data["result"]
                if self._stop_sent:
                    return True
                # The server ended the meeting by itself (e.g. shutting down), having finished
                # everything it was sent: nothing is owed, and the meeting goes on elsewhere.
                for pid in self._present:
                    self._people[pid].buffer.ack(self._people[pid].buffer.sent)
            elif kind == "error":
                self._on_error(str(data.get("code", "")), str(data.get("message", "")))
        return False

    # -- bookkeeping --------------------------------------------------------------------------

    def _on_result(self, body: dict[str, Any]) -> None:
        # The server already placed the times on the meeting clock (each participant rejoins
        # at offsetS = where their resent audio starts); only the finals' numbering restarts.
        result = StreamingResult.from_wire(body, index=int(body.get("index", 0)) + self._index_base)
        if result.is_final:
            self._finals.append(result)
            person = self._people.get(result.speaker_id or "")
            if person is not None and person.offset_s is not None:
                person.buffer.ack(person.buffer.bytes_at(result.end_s - person.offset_s))
        self._feed.publish(result)

    def _on_joined(self, info: dict[str, Any]) -> None:
        pid, language = str(info.get("id", "")), str(info.get("language", ""))
        if (person := self._people.get(pid)) is not None:
            person.language = language
        waiter = self._joining.get(pid)
        if waiter is not None and not waiter.done():
            waiter.set_result(language)

    def _on_error(self, code: str, message: str) -> None:
        failure = error_from_wire(code, message)
        pending = [w for w in self._joining.values() if not w.done()]
        if pending and code in _JOIN_CODES:
            pending[0].set_exception(ConfigError(message, code))
        elif code in FATAL_CODES:
            self._fatal = failure
        else:
            log.warning("meeting error %s: %s", code, message)

    def _pending(self) -> tuple[AudioSpan, ...]:
        return _by_time(p.buffer.pending(p.offset_s or 0.0, p.id) for p in self._people.values())

    def _speakers(self) -> list[SpeakerSummary]:
        speakers = []
        for person in self._people.values():
            end_s = person.end_s(self._bps)
            speakers.append(SpeakerSummary(person.id, person.language, round(person.offset_s or 0.0, 3),
                                           round(person.left_s if person.left_s is not None else end_s, 3),
                                           0.0, 0))
        return speakers

    def _server_summary(self, body: dict[str, Any]) -> MeetingSummary:
        return MeetingSummary(
            meeting_id=str(body.get("meetingId", self.meeting_id)), full_transcript=str(body.get("text", "")),
            speakers=tuple(SpeakerSummary(s["id"], s.get("language", ""), float(s["joined_s"]), float(s["left_s"]),
                                          float(s["talk_time_s"]), int(s["words"])) for s in body.get("speakers", ())),
            segments=tuple(Segment.from_wire(s) for s in body.get("segments", ())),
            duration=float(body.get("duration", 0.0)), untranscribed=self.untranscribed)
