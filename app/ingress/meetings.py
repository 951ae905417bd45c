"""`GET /v1/meetings`: a meeting over one WebSocket (docs/sdk.md; the wire format is in
`meeting_protocol`, the meeting itself in `app.meetings`).

One `MeetingSocket` per connection: it reads the socket in one task (audio is fed with
`await`, so a client faster than real time is paced by the engine, as on `/v1/stream`) and
sends results through a small queue served by its own task; a slow reader loses interims
first, never finals. The meeting ends on `stop_meeting`, when the client goes away, on
`[stream] max_session_s` of meeting time, or at shutdown: every participant's last words are
finalised, then `meeting_complete` (the merged transcript) and the close. Meetings count
against `[stream] max_sessions` on their own (a meeting is one session, whatever its size).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from dataclasses import replace
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from app.auth import authorized
from app.ingress import meeting_protocol as proto
from app.ingress import stream_protocol
from app.ingress.stream_protocol import ErrorCode, ProtocolError
from app.keys import ENGINE, SETTINGS
from app.meetings.meeting import Meeting, MeetingError
from app.pipeline.errors import AudioFormatError, StreamClosedError, UnknownModelError
from app.pipeline.types import Transcript

log = logging.getLogger("hearsay.meetings")

MEETINGS: web.AppKey[set[MeetingSocket]] = web.AppKey("meetings")
SEND_QUEUE_LIMIT = 32
DRAIN_TIMEOUT_S = 10.0


def setup(app: web.Application) -> None:
    app[MEETINGS] = set()
    app.router.add_get("/v1/meetings", handle)
    app.on_shutdown.insert(0, _end_meetings)


async def _end_meetings(app: web.Application) -> None:
    sockets: set[MeetingSocket] = app[MEETINGS]
    live = list(sockets)
    for meeting in live:
        meeting.request_end(shutdown=True)
    await asyncio.gather(*(m.done.wait() for m in live))


async def handle(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    if not authorized(request, settings.auth.api_keys):
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthorized",
                             "message": "send 'Authorization: Bearer <key>' or ?api_key=<key>"}),
            content_type="application/json", headers={"WWW-Authenticate": "Bearer"})
    ws = web.WebSocketResponse(max_msg_size=settings.stream.max_message_bytes * 4, heartbeat=30.0)
    await ws.prepare(request)
    if len(app[MEETINGS]) >= settings.stream.max_sessions:
        await ws.send_json(proto.error(ErrorCode.TOO_MANY_SESSIONS, "the server is at its limit of "
                                       f"{settings.stream.max_sessions} meetings; try again later"))
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
        return ws
    socket = MeetingSocket(app, ws)
    app[MEETINGS].add(socket)
    try:
        await socket.run()
    finally:
        app[MEETINGS].discard(socket)
        socket.done.set()
    return ws


class MeetingSocket:
    """One `/v1/meetings` connection: its meeting and its send queue."""

    def __init__(self, app: web.Application, ws: web.WebSocketResponse) -> None:
        self.id = "meet_" + secrets.token_hex(10)
        self.done = asyncio.Event()
        self._app = app
        self._ws = ws
        self._settings = app[SETTINGS]
        self._meeting: Meeting | None = None
        self._outgoing: deque[tuple[bool, str]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._close_code = WSCloseCode.OK
        self._end: asyncio.Future[tuple[bool, str | None, str]] = asyncio.get_running_loop().create_future()

    def request_end(self, *, shutdown: bool = False, code: str | None = None, message: str = "") -> None:
        if not self._end.done():
            self._end.set_result((shutdown, code, message))

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name=f"{self.id}-send")
        reader = asyncio.create_task(self._read_loop(), name=f"{self.id}-read")
        try:
            waiters: list[asyncio.Future[Any]] = [reader, self._end]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            self.request_end()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self._finish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sender), DRAIN_TIMEOUT_S)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if self._meeting is not None:
                await self._meeting.aclose()
            if not self._ws.closed:
                await self._ws.close()

    async def _read_loop(self) -> None:
        limit = self._settings.stream.max_message_bytes
        async for msg in self._ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            if len(msg.data) > limit:
                self.request_end(code=ErrorCode.MESSAGE_TOO_LARGE,
                                 message=f"a message of {len(msg.data)} bytes is over the limit of {limit} bytes")
                return
            try:
                message = proto.parse_text(msg.data) if msg.type is WSMsgType.TEXT else proto.parse_binary(msg.data)
                await self._handle(message)
            except ProtocolError as exc:
                self._queue(proto.error(exc.code, exc.message), droppable=False)
            except MeetingError as exc:
                self._queue(proto.error(exc.code, exc.message), droppable=False)
            if self._end.done():
                return

    async def _handle(self, message: proto.Message) -> None:
        if isinstance(message, proto.StartMeeting):
            await self._start(message)
            return
        meeting = self._meeting
        if meeting is None:
            raise ProtocolError(ErrorCode.NOT_STARTED, "send start_meeting first")
        if isinstance(message, proto.Join):
            person = await self._join(meeting, message.participant)
            self._queue(proto.joined(person.spec, person.language or meeting.config.language or ""), droppable=False)
        elif isinstance(message, proto.Leave):
            at_s = await meeting.leave(message.participant_id)
            self._queue(proto.left(message.participant_id, at_s), droppable=False)
        elif isinstance(message, proto.SpeakerAudio):
            stream_protocol.check_audio(message.payload, meeting.config.audio)
            if message.payload:
                with contextlib.suppress(StreamClosedError):
                    await meeting.audio(message.participant_id, message.payload)
            limit = self._settings.stream.max_session_s
            if meeting.clock_s > limit:
                self.request_end(code=ErrorCode.SESSION_TOO_LONG, message=f"the meeting passed {limit} s")
        else:
            self.request_end()

    async def _start(self, message: proto.StartMeeting) -> None:
        if self._meeting is not None:
            raise ProtocolError(ErrorCode.ALREADY_STARTED, "this meeting has already started")
        engine = self._app[ENGINE]
        if engine is None:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "the speech engine is not loaded")
        config = message.config
        meeting = Meeting(config, engine, self._on_result)
        for spec in config.participants:
            try:
                await self._join(meeting, spec)
            except (ProtocolError, MeetingError):
                await meeting.aclose()
                raise
        self._meeting = meeting
        self._queue(proto.started(config.meeting_id or self.id, self.id), droppable=False)
        for spec in config.participants:
            self._queue(proto.joined(spec, spec.language or config.language or ""), droppable=False)
        log.info("meeting %s started with %d participants", config.meeting_id or self.id, len(config.participants))

    async def _join(self, meeting: Meeting, spec: Any) -> Any:
        try:
            return await meeting.join(spec)
        except UnknownModelError as exc:
            raise ProtocolError(ErrorCode.UNKNOWN_MODEL, str(exc)) from None
        except (AudioFormatError, ValueError) as exc:
            raise ProtocolError(ErrorCode.INVALID_CONFIG, str(exc)) from None

    def _on_result(self, speaker: str, transcript: Transcript) -> None:
        meeting = self._meeting
        if meeting is None:
            return
        if not transcript.is_final:
            if not meeting.config.interim_results:
                return
            transcript = replace(transcript, index=meeting.finals_released)
        self._queue(proto.result(speaker, transcript, words=meeting.config.words), droppable=not transcript.is_final)

    async def _finish(self) -> None:
        shutdown, code, message = self._end.result()
        if code is not None:
            self._queue(proto.error(code, message), droppable=False)
        if self._meeting is not None:
            await self._meeting.finish()
            self._queue(proto.complete(self._meeting.summary()), droppable=False)
        self._closing = True
        self._close_code = (WSCloseCode.GOING_AWAY if shutdown else
                            WSCloseCode.POLICY_VIOLATION if code is not None else WSCloseCode.OK)
        self._wake.set()

    def _queue(self, message: dict[str, Any], *, droppable: bool) -> None:
        if len(self._outgoing) >= SEND_QUEUE_LIMIT:
            oldest = next((i for i, (d, _) in enumerate(self._outgoing) if d), None)
            if oldest is not None:
                del self._outgoing[oldest]
            elif droppable:
                return
        self._outgoing.append((droppable, json.dumps(message, ensure_ascii=False)))
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outgoing:
                _, text = self._outgoing.popleft()
                try:
                    await self._ws.send_str(text)
                except (ConnectionError, RuntimeError):
                    self._outgoing.clear()
                    break
            if self._closing:
                if not self._ws.closed:
                    await self._ws.close(code=self._close_code)
                return
