"""`GET /v1/stream`: the streaming transcription WebSocket (docs/streaming.md; the wire format
is in `stream_protocol`).

One `StreamSession` per connection. It reads the socket in one task and feeds audio into its
`Call` with `await call.feed()`, which waits while the engine's backlog is full: a client
faster than real time is then simply not read until the engine catches up (TCP pushes back),
so memory stays bounded. Results go the other way through a small per-session send queue
served by a sender task: a client that reads slowly loses interim results first (the oldest
are dropped when the queue is full), never finals, and never holds up the engine or anyone
else.

A session ends on `stop_transcription`, after the first final with `singleUtterance`, when a
limit is hit, when the client goes away, when the assistant hangs up (`call.media.hangup()`),
or at shutdown. Ending finalises the open utterance, sends the last results,
`transcription_complete`, and closes the socket cleanly.

The session has no outbound audio: `call.media.play()` raises `MediaUnsupported` (the
protocol sends JSON text only; docs/streaming.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from app.auth import authorized
from app.calls import Call, CallInfo, CallRejected, CallSource, EndReason, NoMedia, Rejection
from app.ingress import stream_protocol as proto
from app.ingress.stream_container import FORMAT as CONTAINER_FORMAT
from app.ingress.stream_container import AudioFileError, ContainerFeed, FileTooLarge
from app.ingress.stream_protocol import ErrorCode, ProtocolError
from app.keys import CALL_HUB, METRICS, SETTINGS
from app.logs import bind_call
from app.pipeline.errors import AudioFormatError, StreamClosedError
from app.pipeline.quality import QualityReport, QualityWarning
from app.pipeline.types import Transcript

log = logging.getLogger("hearsay.stream")

SESSIONS: web.AppKey[set[StreamSession]] = web.AppKey("stream_sessions")

SEND_QUEUE_LIMIT = 32  # messages waiting for a slow client before interims are dropped
DRAIN_TIMEOUT_S = 10.0  # how long the last results may take to reach the client at the end
# How a refused call reads on the wire.
_REJECTION_CODES = {
    Rejection.UNAVAILABLE: ErrorCode.UNAVAILABLE,
    Rejection.DUPLICATE: ErrorCode.UNAVAILABLE,
    Rejection.BUSY: ErrorCode.SERVER_BUSY,
    Rejection.UNKNOWN_MODEL: ErrorCode.UNKNOWN_MODEL,
    Rejection.UNSUPPORTED_AUDIO: ErrorCode.UNSUPPORTED_ENCODING,
    Rejection.INVALID_CONFIG: ErrorCode.INVALID_CONFIG,
}
# The most a WEBM_OPUS session may send a second, on average: Opus at its 510 kbit/s maximum.
_CONTAINER_BYTES_PER_S = 64_000
# aiohttp refuses (and closes on) frames above this; ours answers "message_too_large" below it.
_HARD_LIMIT_FACTOR = 4


def setup(app: web.Application) -> None:
    """Register `GET /v1/stream` and its shutdown hook on `app`."""
    app[SESSIONS] = set()
    app.router.add_get("/v1/stream", handle)
    # First of the shutdown hooks: sessions end their own calls and say goodbye (1001).
    app.on_shutdown.insert(0, _end_sessions)


async def _end_sessions(app: web.Application) -> None:
    live: set[StreamSession] = app[SESSIONS]
    sessions = list(live)
    for session in sessions:
        session.request_end(EndReason.SHUTDOWN)
    await asyncio.gather(*(s.done.wait() for s in sessions))


async def handle(request: web.Request) -> web.StreamResponse:
    """Authenticate before the upgrade (401), then run one session on the socket."""
    app = request.app
    settings = app[SETTINGS]
    if not authorized(request, settings.auth.api_keys):
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthorized",
                             "message": "send 'Authorization: Bearer <key>' or ?api_key=<key>"}),
            content_type="application/json", headers={"WWW-Authenticate": "Bearer"})
    limit = settings.stream.max_message_bytes
    ws = web.WebSocketResponse(max_msg_size=limit * _HARD_LIMIT_FACTOR, heartbeat=30.0)
    await ws.prepare(request)
    session = StreamSession(app, ws, request.remote or "")
    with bind_call(session.id):
        if len(app[SESSIONS]) >= settings.stream.max_sessions:
            app[METRICS].stream_errors.labels(ErrorCode.TOO_MANY_SESSIONS.value).inc()
            await ws.send_json(proto.error(ErrorCode.TOO_MANY_SESSIONS,
                                           f"the server is at its limit of {settings.stream.max_sessions} "
                                           "sessions; try again later"))
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
            return ws
        app[SESSIONS].add(session)
        try:
            await session.run()
        finally:
            app[SESSIONS].discard(session)
            session.done.set()
    return ws


class StreamSession:
    """One `/v1/stream` connection: protocol state, its Call, and its send queue."""

    def __init__(self, app: web.Application, ws: web.WebSocketResponse, remote: str) -> None:
        self.id = "sess_" + secrets.token_hex(10)
        self.done = asyncio.Event()
        self._app = app
        self._ws = ws
        self._remote = remote
        self._settings = app[SETTINGS]
        self._call: Call | None = None
        self._container: ContainerFeed | None = None  # for WEBM_OPUS: its incremental decoder
        self._config = proto.StreamConfig()
        self._finals: list[Transcript] = []  # the finals sent to the client
        self._outgoing: deque[tuple[bool, str]] = deque()  # (droppable, JSON text)
        self._wake = asyncio.Event()
        self._closing = False
        self._dropped_interims = 0
        self._end: asyncio.Future[tuple[EndReason, ErrorCode | None, str]] = (
            asyncio.get_running_loop().create_future())

    def request_end(self, reason: EndReason, code: ErrorCode | None = None, message: str = "") -> None:
        """Ask the session to end (first request wins); `code` sends an error first."""
        if not self._end.done():
            self._end.set_result((reason, code, message))

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name=f"{self.id}-send")
        reader = asyncio.create_task(self._read_loop(), name=f"{self.id}-read")
        try:
            waiters: list[asyncio.Future[Any]] = [reader, self._end]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            self.request_end(EndReason.DISCONNECTED)
            reason, code, message = self._end.result()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self._finish(reason, code, message)
            try:
                await asyncio.wait_for(asyncio.shield(sender), DRAIN_TIMEOUT_S)
            except TimeoutError:
                log.warning("client did not take the last results within %.0f s", DRAIN_TIMEOUT_S)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if self._call is not None:
                await self._call.end(EndReason.DISCONNECTED)
            if self._container is not None:
                await self._container.aclose()  # no decoder thread outlives its session
            if not self._ws.closed:
                await self._ws.close()

    # -- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        limit = self._settings.stream.max_message_bytes
        async for msg in self._ws:
            if msg.type is WSMsgType.TEXT:
                data: str | bytes = msg.data
                # UTF-8 takes at most 4 bytes a character: encode only when it could matter.
                size = len(data) if len(data) * 4 <= limit else len(msg.data.encode("utf-8", "replace"))
            elif msg.type is WSMsgType.BINARY:
                size, data = len(msg.data), msg.data
            else:
                break
            if size > limit:
                self.request_end(EndReason.MESSAGE_TOO_LARGE, ErrorCode.MESSAGE_TOO_LARGE,
                                 f"a message of {size} bytes is over the limit of {limit} bytes")
                return
            try:
                message = proto.parse_text(data) if isinstance(data, str) else proto.Audio(data)
                await self._handle(message)
            except ProtocolError as exc:
                self._send_error(exc.code, exc.message)
            if self._end.done():
                return

    async def _handle(self, message: proto.Message) -> None:
        if isinstance(message, proto.Start):
            await self._start(message.config)
        elif self._call is None:
            raise ProtocolError(ErrorCode.NOT_STARTED, "send start_transcription first")
        elif isinstance(message, proto.Stop):
            self.request_end(EndReason.STOP)
        else:
            await self._audio(self._call, message.payload)

    async def _start(self, config: proto.StreamConfig) -> None:
        if self._call is not None:
            raise ProtocolError(ErrorCode.ALREADY_STARTED, "this session has already started")
        hub = self._app[CALL_HUB]
        if config.dialplan is not None:
            plan = hub.dialplans.by_name(config.dialplan)
            if plan is None:
                raise ProtocolError(ErrorCode.UNKNOWN_DIALPLAN, f"no dialplan named {config.dialplan!r}")
        else:
            plan = hub.dialplans.default
        info = CallInfo(id=self.id, source=CallSource.STREAM, from_=self._remote, to="/v1/stream",
                        dialplan=plan)
        try:
            audio = CONTAINER_FORMAT if config.container else config.audio
            call = await hub.start(info, audio, language=config.language, model=config.model,
                                   interim_results=config.interim_results,
                                   word_timestamps=True if config.words else None,
                                   media=_SessionMedia(self), prompt=config.vocabulary)
        except CallRejected as exc:
            raise ProtocolError(_REJECTION_CODES[exc.reason], exc.message) from None
        self._config = config
        self._call = call
        if config.container:
            limit = self._settings.stream.max_session_s * _CONTAINER_BYTES_PER_S
            self._container = ContainerFeed(call.feed, limit, self.id, self._container_failed)
        # The call can end without us (the hub closing it): then the session ends too.
        call.listen(self._on_transcript, lambda: self._call_ended(call))
        call.on_quality(self._on_quality)
        self._queue(proto.started(self.id), droppable=False)
        log.info("stream session started: %s %d Hz, dialplan %s", config.container or config.audio.encoding.value,
                 audio.sample_rate, plan.name if plan else "-")

    def _call_ended(self, call: Call) -> None:
        if call.end_reason is EndReason.ERROR:
            self.request_end(EndReason.ERROR, ErrorCode.INTERNAL_ERROR,
                             "transcription stopped on an internal error; the session ends with the finals so far")
        else:
            self.request_end(call.end_reason or EndReason.SHUTDOWN)

    async def _audio(self, call: Call, payload: bytes) -> None:
        if self._container is not None:
            self._container_audio(self._container, payload)
        else:
            proto.check_audio(payload, self._config.audio)
            if not payload:
                return
            try:
                await call.feed(payload)
            except StreamClosedError:
                return  # the call is ending (shutdown, hang-up); the session ends with it
            except AudioFormatError as exc:
                raise ProtocolError(ErrorCode.INVALID_AUDIO, str(exc)) from None
        limit = self._settings.stream.max_session_s
        if call.duration_s > limit:
            self.request_end(EndReason.SESSION_TOO_LONG, ErrorCode.SESSION_TOO_LONG,
                             f"the session passed the limit of {limit} s of audio")

    def _container_audio(self, container: ContainerFeed, payload: bytes) -> None:
        try:
            container.append(payload)
        except FileTooLarge as exc:
            self.request_end(EndReason.SESSION_TOO_LONG, ErrorCode.SESSION_TOO_LONG, str(exc))

    def _container_failed(self, exc: AudioFileError) -> None:
        # The container cannot be read past this point: nothing later could be heard. What
        # was decoded before is still finalised and sent.
        self._send_error(ErrorCode.INVALID_AUDIO, str(exc))
        self.request_end(EndReason.INVALID_AUDIO)

    async def _drain_container(self, finalise: bool) -> None:
        if self._container is None:
            return
        if finalise:
            await self._container.finish()
        else:
            await self._container.aclose()

    # -- results ----------------------------------------------------------------------------

    def _on_transcript(self, transcript: Transcript) -> None:
        if self._config.single_utterance and self._finals:
            return  # the session is ending; later speech is not this session's
        if transcript.is_final:
            self._finals.append(transcript)
            self._queue(proto.result(transcript, words=self._config.words), droppable=False)
            if self._config.single_utterance:
                self.request_end(EndReason.SINGLE_UTTERANCE)
        elif self._config.interim_results:
            self._queue(proto.result(transcript, words=self._config.words), droppable=True)

    def _on_quality(self, report: QualityReport, warnings: list[QualityWarning]) -> None:
        # Figures come every second and the next one supersedes them; warnings are not dropped.
        self._queue(proto.quality(report), droppable=True)
        for warning in warnings:
            self._queue(proto.quality_warning(warning), droppable=False)

    async def _finish(self, reason: EndReason, code: ErrorCode | None, message: str) -> None:
        if code is not None:
            self._send_error(code, message)
        call = self._call
        if call is not None:
            await self._drain_container(finalise=reason is not EndReason.SINGLE_UTTERANCE and code is None)
            if reason is EndReason.SINGLE_UTTERANCE:
                await call.abort(reason)  # audio after the first utterance is not transcribed
            else:
                await call.end(reason)
            self._queue(proto.complete(self._finals, call.duration_s), droppable=False)
        if self._dropped_interims:
            log.info("dropped %d interim results for a slow client", self._dropped_interims)
        self._closing = True
        self._wake.set()

    def _send_error(self, code: ErrorCode, message: str) -> None:
        self._app[METRICS].stream_errors.labels(code.value).inc()
        self._queue(proto.error(code, message), droppable=False)

    def _queue(self, message: dict[str, Any], *, droppable: bool) -> None:
        if len(self._outgoing) >= SEND_QUEUE_LIMIT:
            oldest = next((i for i, (d, _) in enumerate(self._outgoing) if d), None)
            if oldest is not None:
                del self._outgoing[oldest]
                self._dropped_interims += 1
            elif droppable:
                self._dropped_interims += 1
                return
        self._outgoing.append((droppable, json.dumps(message, ensure_ascii=False)))
        self._wake.set()

    async def _send_loop(self) -> None:
        """Send queued messages in order; after `_finish`, drain and close the socket."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outgoing:
                _, text = self._outgoing.popleft()
                try:
                    await self._ws.send_str(text)
                except (ConnectionError, RuntimeError):
                    self._outgoing.clear()  # the client is gone; nothing more to send
                    break
            if self._closing:
                if not self._ws.closed:
                    await self._ws.close(code=_close_code(self._end))
                return


class _SessionMedia(NoMedia):
    """A session's outbound side: no audio (the protocol is JSON text), but the assistant can
    hang up, which ends the session like `stop_transcription` (reason `agent_hangup`)."""

    def __init__(self, session: StreamSession) -> None:
        super().__init__("a /v1/stream session has no outbound audio", sample_rate=16000)
        self._session = session

    async def hangup(self, reason: EndReason = EndReason.AGENT_HANGUP) -> None:
        self._session.request_end(reason)


def _close_code(end: asyncio.Future[tuple[EndReason, ErrorCode | None, str]]) -> int:
    code = end.result()[1] if end.done() else None
    if code is ErrorCode.MESSAGE_TOO_LARGE:
        return WSCloseCode.MESSAGE_TOO_BIG
    if code is ErrorCode.INTERNAL_ERROR:
        return WSCloseCode.INTERNAL_ERROR
    if code is not None:
        return WSCloseCode.POLICY_VIOLATION
    return WSCloseCode.GOING_AWAY if end.done() and end.result()[0] is EndReason.SHUTDOWN else WSCloseCode.OK
