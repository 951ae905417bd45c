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
import json
import logging
from typing import Any

import aiohttp

from hearsay_client._resend import ResendBuffer
from hearsay_client._session import FATAL_CODES, FRAME_BYTES, SEND_AHEAD_S, ReconnectingSession
from hearsay_client._transport import Transport, error_from_wire
from hearsay_client.config import StreamingConfig
from hearsay_client.errors import InvalidAudioError, SessionClosedError
from hearsay_client.types import AudioSpan, FinalTranscript, Segment, StreamingResult

log = logging.getLogger("hearsay_client")


class StreamingSession(ReconnectingSession):
    """One real-time transcription session (see the module doc). Made by
    `client.streaming.create_session()`; use it from one event loop. `stream()`, `on_result()`,
    `close()`, `session_id` and `connected` are `ReconnectingSession`'s."""

    def __init__(self, transport: Transport, config: StreamingConfig) -> None:
        super().__init__(transport, config)
        self._finals: list[Segment] = []
        self._buffer = ResendBuffer(config.sample_rate, self._sample, config.max_buffer_s)

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
        await self._connect()
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
        await self._queue(self._buffer, chunk)

    async def finalize(self) -> FinalTranscript:
        """End of audio: wait for the last finals and return the whole transcript."""
        await self._end_of_audio()
        segments = tuple(self._finals)
        return FinalTranscript(text=" ".join(s.text for s in segments if s.text), segments=segments,
                               duration=round(self.duration_s, 3), untranscribed=self.untranscribed,
                               reconnects=self.reconnects)

    # -- connections ------------------------------------------------------------------------

    async def _connect(self) -> None:
        ws = await self._transport.websocket("/v1/stream")
        await self._handshake(ws, {"type": "start_transcription", "config": self._config.wire},
                              "transcription_started")
        self._buffer.restart()
        self._ws = ws

    async def _owed(self) -> bool:
        self._buffer.connection_lost()
        while not (self._stop_requested or self._buffer.unacked):
            self._wake.clear()
            await self._wake.wait()
        return bool(self._buffer.unacked)  # nothing left: the session is complete as it is

    def _pending(self) -> tuple[AudioSpan, ...]:
        return self._buffer.pending()

    def _reconnected(self) -> None:
        log.info("reconnected (server session %s); resending %.2f s of audio",
                 self.server_sessions[-1], self._buffer.unacked / self._bps)

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
                if code in FATAL_CODES:
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
