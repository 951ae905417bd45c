"""One Twilio Media Stream: turns the socket's messages into a `Call` on the `CallHub`.

`MediaSession.run()` reads the socket until `stop` or until it closes:

    start    -> resolve the dialplan (the `dialplan` parameter from our TwiML, else the `To`
                number), start the call (`call.started` carries callSid/streamSid/accountSid)
    media    -> the track's `JitterBuffer` places it by timestamp -> `call.push` (inbound,
                the caller) or `call.push_agent` (outbound, speaker "agent", when the
                dialplan's `agent_track` is on and Twilio streams both tracks)
    dtmf     -> `call.dtmf(digit)`
    mark     -> `TwilioMedia.mark_played`: the playback it closes was heard
    stop     -> flush, `call.end(HANGUP)`; a socket that closes or goes idle without `stop`
                ends the call too (DISCONNECTED, TIMEOUT), so what was heard is still delivered

A bad frame (not JSON, unknown event, media before start, bad base64, wrong size) is logged
with the streamSid and skipped: the call goes on. A frame that arrives after the call has
ended elsewhere (shutdown finalising it) ends the session quietly. `TwilioMedia` is the call's
outbound side (`call.media`): audio, marks and `clear` back into bidirectional streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from app.calls import (
    Call,
    CallHub,
    CallInfo,
    CallRejected,
    CallSource,
    EndReason,
    MediaUnsupported,
    Playback,
    PlaybackState,
)
from app.calls.media import PacedPlayer
from app.ingress.twilio_jitter import JitterBuffer
from app.ingress.twilio_protocol import (
    Clear,
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundMark,
    OutboundMedia,
    OutboundMessage,
    Start,
    Stop,
    TwilioProtocolError,
    encode_message,
    parse_message,
)
from app.pipeline.decode import encode
from app.pipeline.errors import StreamClosedError
from app.pipeline.types import AudioFormat, Encoding

log = logging.getLogger("hearsay.twilio")

MULAW_8K = AudioFormat(Encoding.MULAW, 8000)
IDLE_TIMEOUT_S = 30.0  # Twilio sends media every 20 ms; this much silence means the peer is gone
BAD_FRAMES_LOGGED = 20  # per stream; after that they are only counted


class TwilioMedia:
    """The outbound side of a bidirectional Twilio stream (`CallMedia`).

    `play` sends 8 kHz μ-law `media` messages on a 20 ms clock, then a `mark` named after the
    playback; Twilio echoes the mark once the caller has heard everything before it, and only
    then is the playback FINISHED. `clear` stops our queue and sends Twilio's `clear`, which
    drops what Twilio has buffered (its marks come back at once and are ignored: those
    playbacks are already INTERRUPTED). `hangup` closes the socket, which ends a `<Connect>`
    stream and, with no TwiML after it, the call.
    """

    sample_rate = 8000

    def __init__(self, ws: web.WebSocketResponse, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self._ws = ws
        self._player = PacedPlayer(self.sample_rate, self._send_frame, self._send_mark)
        self._hangup: EndReason | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def hung_up(self) -> EndReason | None:
        """Why we hung up, if we did (the session ends the call with this reason)."""
        return self._hangup

    def play(self, pcm: bytes, rate: int) -> Playback:
        return self._player.play(pcm, rate)

    def clear(self) -> list[Playback]:
        stopped = self._player.clear()
        if stopped and not self._ws.closed:
            # Fire and forget on purpose: barge-in must not wait on the socket; a closed
            # socket here only means the call is ending anyway.
            self._background(self._send(Clear(self.stream_sid)))
        return stopped

    async def hangup(self, reason: EndReason = EndReason.AGENT_HANGUP) -> None:
        if self._hangup is None:
            self._hangup = reason
            await self._ws.close(message=b"hangup")

    async def transfer(self, target: str) -> None:
        raise MediaUnsupported("a Twilio call is moved with Twilio's REST API (update the call's "
                               "TwiML), not from the media stream")

    async def aclose(self) -> None:
        await self._player.aclose()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task

    def mark_played(self, name: str) -> None:
        """Twilio echoed mark `name`: the playback it closes (and any before it) was heard."""
        for playback in self._player.sent():
            playback.settle(PlaybackState.FINISHED)
            if playback.id == name:
                return
        log.debug("twilio stream %s: mark %r is not one of ours (or was cleared)", self.stream_sid, name)

    async def _send_frame(self, pcm: bytes) -> None:
        payload = encode(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, Encoding.MULAW)
        await self._send(OutboundMedia(self.stream_sid, payload))

    async def _send_mark(self, playback: Playback) -> None:
        await self._send(OutboundMark(self.stream_sid, playback.id))

    async def _send(self, message: OutboundMessage) -> None:
        await self._ws.send_str(encode_message(message))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class MediaSession:
    """Reads one Media Streams socket and drives its call. Owned by the WebSocket handler."""

    def __init__(self, ws: web.WebSocketResponse, hub: CallHub) -> None:
        self._ws = ws
        self._hub = hub
        self.stream_sid = ""
        self.call: Call | None = None
        self.bad_frames = 0
        self.media: TwilioMedia | None = None
        self._inbound = JitterBuffer()
        self._outbound = JitterBuffer()
        self._agent = False

    async def run(self) -> None:
        """Serve the stream until `stop` or the socket ends; the call is always ended."""
        reason = EndReason.DISCONNECTED
        try:
            while not self._ws.closed:
                try:
                    msg = await self._ws.receive(timeout=IDLE_TIMEOUT_S)
                except TimeoutError:
                    log.warning("twilio stream %s: no message for %.0f s, ending the call",
                                self.stream_sid or "-", IDLE_TIMEOUT_S)
                    reason = EndReason.TIMEOUT
                    break
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type is not WSMsgType.TEXT:
                    self._bad(f"unexpected {msg.type.name} frame")
                    continue
                try:
                    message = parse_message(msg.data)
                except TwilioProtocolError as exc:
                    self._bad(str(exc))
                    continue
                if isinstance(message, Stop):
                    reason = EndReason.HANGUP
                    break
                try:
                    if not await self._handle(message):
                        break
                except StreamClosedError:  # the call was ended elsewhere (shutdown) meanwhile
                    break
                if self.call is not None and self.call.ended:  # ended elsewhere (shutdown)
                    break
        finally:
            await self._finish(reason)

    async def _handle(self, message: Connected | Start | Media | Dtmf | Mark) -> bool:
        """Act on one message; False ends the session."""
        if isinstance(message, Connected):
            return True
        if isinstance(message, Start):
            if self.call is not None:
                self._bad("a second start message")
                return True
            return await self._start(message)
        if self.call is None:
            self._bad(f"{type(message).__name__.lower()} before start")
            return True
        if message.stream_sid != self.stream_sid:
            self._bad(f"streamSid {message.stream_sid} does not match the stream")
            return True
        if isinstance(message, Media):
            self._media(self.call, message)
        elif isinstance(message, Dtmf):
            self.call.dtmf(message.digit)
        elif self.media is not None:
            self.media.mark_played(message.name)
        return True

    async def _start(self, start: Start) -> bool:
        self.stream_sid = start.stream_sid
        params = start.custom_parameters
        to, from_ = params.get("To", ""), params.get("From", "")
        dialplans = self._hub.dialplans
        plan = (dialplans.by_name(params["dialplan"]) if params.get("dialplan")
                else dialplans.match(CallSource.TWILIO, to))
        if plan is None:
            log.warning("twilio stream %s (call %s): no dialplan for dialplan=%r To=%r; closing",
                        start.stream_sid, start.call_sid, params.get("dialplan"), to)
            await self._ws.close(message=b"no dialplan takes this call")
            return False
        self._agent = plan.transcribe_agent and "outbound" in start.tracks
        metadata: dict[str, object] = {"callSid": start.call_sid, "streamSid": start.stream_sid,
                    "accountSid": start.account_sid, "tracks": list(start.tracks)}
        extra = {k: v for k, v in params.items() if k not in ("dialplan", "From", "To")}
        if extra:
            metadata["customParameters"] = extra
        info = CallInfo(id=start.call_sid, source=CallSource.TWILIO, from_=from_, to=to,
                        dialplan=plan, metadata=metadata)
        media = TwilioMedia(self._ws, start.stream_sid)
        try:
            self.call = await self._hub.start(info, MULAW_8K, agent_audio=MULAW_8K if self._agent else None,
                                              media=media)
        except CallRejected as exc:
            log.warning("twilio stream %s (call %s): call refused: %s", start.stream_sid, start.call_sid, exc)
            await self._ws.close(message=str(exc).encode()[:120])
            return False
        self.media = media
        log.info("twilio stream %s: call %s from %r to %r, dialplan %s, tracks %s", start.stream_sid,
                 start.call_sid, from_, to, plan.name, ",".join(start.tracks))
        return True

    def _media(self, call: Call, media: Media) -> None:
        if media.track == "inbound":
            audio = self._inbound.put(media.timestamp_ms, media.payload)
            if audio:
                call.push(audio)
        elif self._agent:
            audio = self._outbound.put(media.timestamp_ms, media.payload)
            if audio:
                call.push_agent(audio)

    async def _finish(self, reason: EndReason) -> None:
        call = self.call
        if call is None:
            return
        if self.media is not None and self.media.hung_up is not None:
            reason = self.media.hung_up
        with contextlib.suppress(StreamClosedError):  # ended elsewhere (shutdown) meanwhile
            tail = self._inbound.flush()
            if tail:
                call.push(tail)
            if self._agent:
                tail = self._outbound.flush()
                if tail:
                    call.push_agent(tail)
        if self.bad_frames:
            log.warning("twilio stream %s: %d bad frames skipped", self.stream_sid, self.bad_frames)
        jitter = self._inbound
        if jitter.duplicates or jitter.silence_samples or jitter.discontinuities:
            log.info("twilio stream %s: %d duplicate chunks dropped, %.2f s of gaps filled, "
                     "%d clock jumps", self.stream_sid, jitter.duplicates,
                     jitter.silence_samples / 8000, jitter.discontinuities)
        await call.end(reason)

    def _bad(self, problem: str) -> None:
        self.bad_frames += 1
        if self.bad_frames <= BAD_FRAMES_LOGGED:
            log.warning("twilio stream %s: bad frame skipped: %s", self.stream_sid or "-", problem)
