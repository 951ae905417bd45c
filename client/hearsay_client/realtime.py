"""A real-time session over `/v1/stream`, which survives dropped connections.

    session = await client.streaming.create_session({"sample_rate": 16000, "interim_results": True})
    await session.send_audio(chunk)          # any time, from any task
    async for result in session.stream():    # interim and final StreamingResults
        ...
    final = await session.finalize()         # FinalTranscript: every final, across reconnects

No audio is lost across a reconnect. The session keeps the audio sent since the end of the
last final it received (the server has finished with everything before it); when the
connection drops, it reconnects with exponential backoff and jitter, starts a new server
session and sends that audio again, moving the new session's times onto the session's own
clock. Audio given to `send_audio` meanwhile is kept too. The buffer is bounded
(`max_buffer_s`): when it overflows, the oldest audio goes, and if a reconnect then needs it,
its span is reported (`untranscribed`) rather than silently missing. (The buffer and the
reconnect loop are `_resend`'s, shared with the meeting session.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from hearsay_client._resend import ResendBuffer, reconnect
from hearsay_client._results import Callback, ResultFeed
from hearsay_client._transport import Transport, error_from_wire
from hearsay_client.config import StreamingConfig
from hearsay_client.errors import (
    ConnectionLostError,
    HearsayError,
    InvalidAudioError,
    SessionClosedError,
    SessionError,
)
from hearsay_client.types import AudioSpan, FinalTranscript, Segment, StreamingResult

log = logging.getLogger("hearsay_client")

START_TIMEOUT_S = 30.0
FRAME_BYTES = 32_000  # largest binary frame sent (1 s of 16 kHz LINEAR16)
SEND_AHEAD_S = 4.0  # send_audio waits while more than this is queued on a live connection
_FATAL_CODES = {"session_too_long", "message_too_large"}  # the server ends the session after these


class StreamingSession:
    """One real-time transcription session (see the module doc). Made by
    `client.streaming.create_session()`; use it from one event loop."""

    def __init__(self, transport: Transport, config: StreamingConfig) -> None:
        self._transport = transport
        self._config = config
        self._bps = config.bytes_per_s
        self._sample = config.bytes_per_sample
        self._feed: ResultFeed[StreamingResult] = ResultFeed()
        self._finals: list[Segment] = []
        self.server_sessions: list[str] = []  # the server's sessionId of each connection
        self._buffer = ResendBuffer(config.sample_rate, self._sample, config.max_buffer_s)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._stop_requested = False
        self._closed = False
        self._fatal: HearsayError | None = None
        self._runner: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reconnects = 0

    @property
    def session_id(self) -> str:
        """The server's id for the first connection of this session."""
        return self.server_sessions[0] if self.server_sessions else ""

    @property
    def connected(self) -> bool:
        """Whether a connection carries the session now (False from a drop to its reconnect)."""
        return self._ws is not None

    @property
    def duration_s(self) -> float:
        """Seconds of audio given to `send_audio`."""
        return self._buffer.written / self._bps

    @property
    def untranscribed(self) -> tuple[AudioSpan, ...]:
        """Spans of audio known not to be transcribed (buffer overflow across a reconnect)."""
        return self._buffer.untranscribed()

    async def start(self) -> None:
        """Connect and start the server session; typed errors if the server refuses."""
        self._ws = await self._connect()
        self._runner = asyncio.create_task(self._run(), name="hearsay-session")

    # -- the application's side -----------------------------------------------------------

    async def send_audio(self, chunk: bytes) -> None:
        """Queue audio (whole samples in the session's encoding). Returns at once while the
        connection is down (the audio is kept for resending); on a live connection it waits
        while more than a few seconds are queued, so a fast source is paced by the server."""
        if self._closed or self._stop_requested:
            raise SessionClosedError("the session is finalized or closed; it takes no more audio")
        if self._fatal is not None:
            raise self._fatal
        if self._done.done() and (failure := self._done.exception()) is not None:
            raise failure
        if len(chunk) % self._sample:
            raise InvalidAudioError(f"{self._config.encoding} audio needs whole {self._sample}-byte samples; "
                                    f"got {len(chunk)} bytes", "invalid_audio")
        if not chunk:
            return
        self._buffer.append(chunk, connected=self._ws is not None)
        self._wake.set()
        if self._ws is not None and self._buffer.backlog > SEND_AHEAD_S * self._bps:
            self._room.clear()
            await self._room.wait()

    async def stream(self) -> AsyncIterator[StreamingResult]:
        """Interim and final results in order, until the session ends; raises the session's
        error (e.g. ConnectionLostError) after the last result if it failed."""
        async for result in self._feed.stream():
            yield result

    def on_result(self, callback: Callback[StreamingResult]) -> None:
        """Call `callback(result)` for every result from now on (a plain function or a
        coroutine function; called in order, on the SDK's task)."""
        self._feed.add_callback(callback)

    async def finalize(self) -> FinalTranscript:
        """End of audio: wait for the last finals and return the whole transcript."""
        if self._closed:
            raise SessionClosedError("the session is closed")
        self._stop_requested = True
        self._wake.set()
        try:
            await asyncio.shield(self._done)
        finally:
            await self._feed.drain()
        segments = tuple(self._finals)
        return FinalTranscript(text=" ".join(s.text for s in segments if s.text), segments=segments,
                               duration=round(self.duration_s, 3), untranscribed=self.untranscribed,
                               reconnects=self.reconnects)

    async def close(self) -> None:
        """Stop at once (without waiting for the last finals); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._ws is not None:
            await self._ws.close()
        if not self._done.done():
            self._done.set_exception(SessionClosedError("the session was closed"))
            self._done.exception()  # retrieved: nobody may be waiting
        await self._feed.aclose()

    async def __aenter__(self) -> StreamingSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connections ------------------------------------------------------------------------

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        ws = await self._transport.websocket("/v1/stream")
        try:
            await ws.send_json({"type": "start_transcription", "config": self._config.wire})
            msg = await ws.receive(timeout=START_TIMEOUT_S)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionLostError(f"the server closed the connection before the session started "
                                          f"({msg.type.name} {ws.close_code})")
            data = json.loads(msg.data)
            if data.get("type") == "error":
                raise error_from_wire(str(data.get("code", "")), str(data.get("message", "")))
            if data.get("type") != "transcription_started":
                raise SessionError(f"unexpected first message {data.get('type')!r}", "protocol")
            self.server_sessions.append(str(data.get("sessionId", "")))
        except BaseException:
            await ws.close()
            raise
        self._buffer.restart()
        return ws

    async def _reconnect(self) -> aiohttp.ClientWebSocketResponse:
        ws = await reconnect(self._transport.backoff, self._connect, self._buffer.pending)
        self.reconnects += 1
        log.info("reconnected (server session %s); resending %.2f s of audio",
                 self.server_sessions[-1], self._buffer.unacked / self._bps)
        return ws

    async def _run(self) -> None:
        try:
            while True:
                assert self._ws is not None
                complete = await self._serve(self._ws)
                await self._ws.close()
                self._ws = None
                self._room.set()
                if self._fatal is not None:
                    raise self._fatal
                if complete:
                    break
                self._buffer.connection_lost()
                while not (self._stop_requested or self._buffer.unacked):
                    self._wake.clear()
                    await self._wake.wait()
                if not self._buffer.unacked:
                    break  # nothing left to transcribe: the session is complete as it is
                if not self._config.reconnect:
                    raise ConnectionLostError("the connection dropped (reconnect is off)", self._buffer.pending())
                self._ws = await self._reconnect()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._finish(exc)
            return
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        self._room.set()
        if not self._done.done():
            if error is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(error)
        self._feed.end(error)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Send and receive on one connection until it ends; True when the session is complete."""
        self._wake.set()  # send what is buffered (after a reconnect: everything not yet acknowledged)
        sender = asyncio.create_task(self._send_loop(ws), name="hearsay-send")
        try:
            return await self._receive_loop(ws)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await sender

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        stop_sent = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self._buffer.backlog > 0:
                    frame = self._buffer.next_frame(FRAME_BYTES)
                    if frame is None:  # unsent audio was dropped (overflow): start afresh
                        await ws.close()
                        return
                    await ws.send_bytes(frame)
                    self._buffer.mark_sent(len(frame))
                    if self._buffer.backlog <= SEND_AHEAD_S * self._bps:
                        self._room.set()
                if self._stop_requested and not stop_sent:
                    await ws.send_json({"type": "stop_transcription"})
                    stop_sent = True
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                return  # the receiver sees the close and reconnects

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data: dict[str, Any] = json.loads(msg.data)
            kind = data.get("type")
            if kind == "transcription_result":
                self._on_result(data["result"])
            elif kind == "transcription_complete":
                # The server finished everything this connection sent.
                self._buffer.ack(self._buffer.sent)
                if self._stop_requested and self._buffer.backlog <= 0:
                    return True
                if self._config.wire.get("singleUtterance") and self._finals:
                    return True
            elif kind == "error":
                code, message = str(data.get("code", "")), str(data.get("message", ""))
                if code in _FATAL_CODES:
                    self._fatal = error_from_wire(code, message)
                else:
                    log.warning("server error %s: %s", code, message)
        return False

    # -- bookkeeping --------------------------------------------------------------------------

    def _on_result(self, body: dict[str, Any]) -> None:
        buffer = self._buffer
        result = StreamingResult.from_wire(body, offset_s=buffer.base_s, index=len(self._finals))
        if result.is_final:
            self._finals.append(Segment(result.index, result.transcript, result.start_s, result.end_s,
                                        result.confidence))
            buffer.ack(buffer.base + buffer.bytes_at(float(body["end_s"])))
        self._feed.publish(result)
