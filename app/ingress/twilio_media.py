"""One Twilio Media Stream: turns the socket's messages into a `Call` on the `CallHub`.

`MediaSession.run()` reads the socket until `stop` or until it closes:

    start    -> resolve the dialplan (the `dialplan` parameter from our TwiML, else the `To`
                number), start the call (`call.started` carries callSid/streamSid/accountSid)
    media    -> the track's `JitterBuffer` places it by timestamp -> `call.push` (inbound,
                the caller) or `call.push_agent` (outbound, speaker "agent", when the
                dialplan's `agent_track` is on and Twilio streams both tracks)
    dtmf     -> `call.dtmf(digit)`
    mark     -> the sender's mark listeners (talk-back learns its audio has played)
    stop     -> flush, `call.end("hangup")`; a socket that closes or goes idle without `stop`
                ends the call too ("disconnected"), so what was heard is still delivered

A bad frame (not JSON, unknown event, media before start, bad base64, wrong size) is logged
with the streamSid and skipped: the call goes on. `TwilioSender` is the typed sending side
(media, mark, clear) for bidirectional streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import WSMsgType, web

from app.calls import Call, CallHub, CallInfo, CallRejected, CallSource
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
from app.pipeline.errors import EngineError
from app.pipeline.events import AudioFormat, Encoding

log = logging.getLogger("hearsay.twilio")

MULAW_8K = AudioFormat(Encoding.MULAW, 8000)
IDLE_TIMEOUT_S = 30.0  # Twilio sends media every 20 ms; this much silence means the peer is gone
BAD_FRAMES_LOGGED = 20  # per stream; after that they are only counted


class TwilioSender:
    """Sends audio and control messages back into a bidirectional Twilio stream."""

    def __init__(self, ws: web.WebSocketResponse, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self._ws = ws
        self._mark_listeners: list[Callable[[str], None]] = []

    def listen_marks(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(name)` when Twilio reports a mark played; returns an unsubscriber."""
        self._mark_listeners.append(callback)
        return lambda: self._mark_listeners.remove(callback) if callback in self._mark_listeners else None

    def mark_played(self, name: str) -> None:
        """Twilio echoed mark `name`: tell the listeners (a failing one is logged)."""
        for callback in list(self._mark_listeners):
            try:
                callback(name)
            except Exception:
                log.exception("twilio stream %s: a mark listener failed", self.stream_sid)

    async def send_media(self, payload: bytes) -> None:
        """Queue 8 kHz μ-law audio for Twilio to play to the caller."""
        if not payload:
            raise ValueError("media payload must not be empty")
        await self._send(OutboundMedia(self.stream_sid, payload))

    async def send_mark(self, name: str) -> None:
        """Mark the end of the audio queued so far; Twilio echoes it once that has played."""
        if not name:
            raise ValueError("mark name must not be empty")
        await self._send(OutboundMark(self.stream_sid, name))

    async def send_clear(self) -> None:
        """Drop the audio Twilio has not played yet (barge-in)."""
        await self._send(Clear(self.stream_sid))

    async def _send(self, message: OutboundMessage) -> None:
        await self._ws.send_str(encode_message(message))


class MediaSession:
    """Reads one Media Streams socket and drives its call. Owned by the WebSocket handler."""

    def __init__(self, ws: web.WebSocketResponse, hub: CallHub,
                 senders: dict[str, TwilioSender]) -> None:
        self._ws = ws
        self._hub = hub
        self._senders = senders
        self.stream_sid = ""
        self.call: Call | None = None
        self.bad_frames = 0
        self.sender: TwilioSender | None = None
        self._inbound = JitterBuffer()
        self._outbound = JitterBuffer()
        self._agent = False

    async def run(self) -> None:
        """Serve the stream until `stop` or the socket ends; the call is always ended."""
        reason = "disconnected"
        try:
            while not self._ws.closed:
                try:
                    msg = await self._ws.receive(timeout=IDLE_TIMEOUT_S)
                except TimeoutError:
                    log.warning("twilio stream %s: no message for %.0f s, ending the call",
                                self.stream_sid or "-", IDLE_TIMEOUT_S)
                    reason = "timeout"
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
                    reason = "hangup"
                    break
                if not await self._handle(message):
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
        elif self.sender is not None:
            self.sender.mark_played(message.name)
        return True

    async def _start(self, start: Start) -> bool:
        self.stream_sid = start.stream_sid
        params = start.custom_parameters
        to, from_ = params.get("To", ""), params.get("From", "")
        dialplans = self._hub.dialplans
        plan = dialplans.by_name(params["dialplan"]) if params.get("dialplan") else dialplans.match_twilio(to)
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
        try:
            self.call = await self._hub.start(info, MULAW_8K, agent_audio=MULAW_8K if self._agent else None)
        except (CallRejected, EngineError) as exc:
            log.warning("twilio stream %s (call %s): call refused: %s", start.stream_sid, start.call_sid, exc)
            await self._ws.close(message=str(exc).encode()[:120])
            return False
        self.sender = TwilioSender(self._ws, start.stream_sid)
        self._senders[self.call.id] = self.sender
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

    async def _finish(self, reason: str) -> None:
        call = self.call
        if call is None:
            return
        self._senders.pop(call.id, None)
        if not call.ended:
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
