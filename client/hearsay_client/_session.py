"""What a real-time session and a meeting share: one WebSocket at a time carrying the session
(replaced after a drop by the subclass's reconnect), a sender and a receiver per connection,
the results feed, and how the session ends (`_finish`) or is closed (`close`).

A subclass says what its server session is (`_kind`, the start message and the first answer
it expects, through `_handshake`) and provides `_send_loop` and `_receive_loop` (one
connection's two halves; the receiver returns True when the session is complete) and
`_connect` (a new server session on a new connection, in `_ws`). `_run` carries the session
over connections; after a drop it asks the subclass `_owed` (is anything left to
transcribe?) and `_pending` (what would be lost), reconnects with backoff, and `_dropped` and
`_reconnected` let the subclass react.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Self

import aiohttp

from hearsay_client._resend import ResendBuffer, reconnect
from hearsay_client._results import Callback, ResultFeed
from hearsay_client._transport import Transport, error_from_wire
from hearsay_client.config import StreamingConfig
from hearsay_client.errors import ConnectionLostError, HearsayError, SessionClosedError, SessionError
from hearsay_client.types import AudioSpan, StreamingResult

START_TIMEOUT_S = 30.0
FRAME_BYTES = 32_000  # most audio in one binary frame (1 s of 16 kHz LINEAR16)
SEND_AHEAD_S = 4.0  # send_audio waits while more than this is queued on a live connection
FATAL_CODES = {"session_too_long", "message_too_large"}  # the server ends the session after these


class ReconnectingSession:
    """The connection-carrying half of a session (module doc); use it from one event loop."""

    _kind = "session"  # how messages name it ("session", "meeting")

    def __init__(self, transport: Transport, config: StreamingConfig) -> None:
        self._transport = transport
        self._config = config
        self._sample = config.bytes_per_sample
        self._bps = config.bytes_per_s
        self._feed: ResultFeed[StreamingResult] = ResultFeed()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._wake = asyncio.Event()  # the sender has something to send
        self._room = asyncio.Event()  # send_audio may go on (not too much queued)
        self._room.set()
        self._stop_requested = False
        self._closed = False
        self._fatal: HearsayError | None = None
        self._runner: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.server_sessions: list[str] = []  # the server's sessionId of each connection
        self.reconnects = 0

    @property
    def session_id(self) -> str:
        """The server's id for the first connection."""
        return self.server_sessions[0] if self.server_sessions else ""

    @property
    def connected(self) -> bool:
        """Whether a connection carries the session now (False from a drop to its reconnect)."""
        return self._ws is not None

    async def stream(self) -> AsyncIterator[StreamingResult]:
        """Results in order until the session ends; raises the session's error (e.g.
        ConnectionLostError) after the last result if it failed."""
        async for result in self._feed.stream():
            yield result

    def on_result(self, callback: Callback[StreamingResult]) -> None:
        """Call `callback(result)` for every result from now on (a plain function or a
        coroutine function; called in order, on the SDK's task)."""
        self._feed.add_callback(callback)

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
            self._done.set_exception(SessionClosedError(f"the {self._kind} was closed"))
            self._done.exception()  # retrieved: nobody may be waiting
        await self._feed.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _queue(self, buffer: ResendBuffer, pcm: bytes) -> None:
        """Keep `pcm` in `buffer` and wake the sender; on a live connection, wait while more
        than SEND_AHEAD_S of the buffer's audio is queued, so a fast source is paced."""
        buffer.append(pcm, connected=self._ws is not None)
        self._wake.set()
        if self._ws is not None and buffer.backlog > SEND_AHEAD_S * self._bps:
            self._room.clear()
            await self._room.wait()

    async def _end_of_audio(self) -> None:
        """No more audio: ask the sender to stop the server session, then wait for the end
        and for every result to be handed over."""
        if self._closed:
            raise SessionClosedError(f"the {self._kind} is closed")
        self._stop_requested = True
        self._wake.set()
        try:
            await asyncio.shield(self._done)
        finally:
            await self._feed.drain()

    # -- connections ------------------------------------------------------------------------

    async def _handshake(self, ws: aiohttp.ClientWebSocketResponse, start: dict[str, Any],
                         started: str) -> dict[str, Any]:
        """Send `start` and read the server's answer, which must be `started` (typed errors
        otherwise); closes `ws` if it fails. Records the server's sessionId."""
        try:
            await ws.send_json(start)
            msg = await ws.receive(timeout=START_TIMEOUT_S)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionLostError(f"the server closed the connection before the {self._kind} started "
                                          f"({msg.type.name} {ws.close_code})")
            data: dict[str, Any] = json.loads(msg.data)
            if data.get("type") == "error":
                raise error_from_wire(str(data.get("code", "")), str(data.get("message", "")))
            if data.get("type") != started:
                raise SessionError(f"unexpected first message {data.get('type')!r}", "protocol")
        except BaseException:
            await ws.close()
            raise
        self.server_sessions.append(str(data.get("sessionId", "")))
        return data

    def _finish(self, error: BaseException | None) -> None:
        """The session is over (`error`: how it failed)."""
        self._room.set()
        if not self._done.done():
            if error is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(error)
        self._feed.end(error)

    async def _run(self) -> None:
        """Serve the connection; after a drop, reconnect (resending what is owed) until the
        session is complete, fails, or nothing is owed any more. Ends with `_finish`."""
        try:
            while True:
                assert self._ws is not None
                complete = await self._serve(self._ws)
                await self._ws.close()
                self._ws = None
                self._room.set()
                self._dropped()
                if self._fatal is not None:
                    raise self._fatal
                if complete or not await self._owed():
                    break
                if not self._config.reconnect:
                    raise ConnectionLostError(f"the {self._kind}'s connection dropped (reconnect is off)",
                                              self._pending())
                await reconnect(self._transport.backoff, self._connect, self._pending)
                self.reconnects += 1
                self._reconnected()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._finish(exc)
            return
        self._finish(None)

    def _dropped(self) -> None:
        """The connection has just dropped (or ended)."""

    async def _owed(self) -> bool:
        """After a drop: whether anything is left to transcribe (the session reconnects for
        it; False ends the session complete as it is)."""
        raise NotImplementedError

    def _pending(self) -> tuple[AudioSpan, ...]:
        """The audio a drop without reconnecting would leave untranscribed."""
        raise NotImplementedError

    async def _connect(self) -> None:
        """A new connection in `_ws` carrying a new server session, with the owed audio (if
        any) queued to be resent. Typed errors if the server refuses."""
        raise NotImplementedError

    def _reconnected(self) -> None:
        """A reconnect has just succeeded (`reconnects` counts it)."""

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        """Send and receive on one connection until it ends; True when the session is complete."""
        self._wake.set()  # send what is buffered (after a reconnect: everything not yet finished)
        sender = asyncio.create_task(self._send_loop(ws), name=f"hearsay-{self._kind}-send")
        try:
            return await self._receive_loop(ws)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await sender

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        raise NotImplementedError

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        raise NotImplementedError
