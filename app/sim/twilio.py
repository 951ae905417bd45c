"""`python -m app twilio-sim`: play Twilio's part of a call, so a set-up can be tried with no account.

It does what Twilio does when a number's voice webhook points at Hearsay:

1. optionally POSTs the voice webhook (`--voice-url`) with Twilio's form fields, signed with
   `X-Twilio-Signature` when `--auth-token` is given, and follows the TwiML's
   `<Connect><Stream url=…>` and its `<Parameter>`s (a `<Reject/>` ends the run);
2. opens the Media Streams WebSocket (signing the upgrade too) and sends `connected`, `start`,
   then the file as 20 ms, 160-byte μ-law `media` frames with increasing `sequenceNumber`,
   `chunk` and `timestamp`, paced in real time (or `--speed N` times faster), then the
   `--dtmf` digits, then `--hold` seconds of silence, then `stop`.

Like Twilio, it plays what the server sends back: `mark`s are echoed once the `media` queued
before them has "played" (in real time), and `clear` returns pending marks at once. When the
server closes the socket (a hang-up), the call is over: nothing more is sent.

`SimCall.network` can damage the inbound media on its way (late, repeated and lost frames) to
show that the server places audio by timestamp, and `SimCall.echo_db` returns what the
server plays on the inbound track, as a phone line's echo does. The reusable core is
`stream_call(session, SimCall(...))`, used by the tests and by
`python -m app bench twilio`; `read_wav_mulaw` and `post_voice_webhook` are its helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from twilio.request_validator import RequestValidator

from app.ingress.twilio_protocol import (
    FRAME_BYTES,
    FRAME_MS,
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
    TwilioMessage,
    TwilioProtocolError,
    encode_message,
    parse_outbound,
)
from app.ingress.twilio_twiml import VoiceAnswer, parse_answer
from app.pipeline.decode import decode_pcm16, encode
from app.pipeline.types import Encoding
from app.sim.wav import read_wav_mulaw

__all__ = ["NetworkFaults", "SimCall", "SimResult", "VoiceAnswer", "post_voice_webhook", "read_wav_mulaw",
           "stream_call"]

SILENCE_FRAME = b"\xff" * FRAME_BYTES
DTMF_GAP_FRAMES = 10  # 200 ms of audio between pressed keys


async def post_voice_webhook(
    session: aiohttp.ClientSession,
    url: str,
    *,
    from_: str,
    to: str,
    call_sid: str,
    auth_token: str = "",
    account_sid: str = "AC" + "0" * 32,
) -> VoiceAnswer:
    """POST Twilio's voice-webhook form to `url` (signed when `auth_token` is set); read the TwiML.

    Raises ValueError when the answer is not 200 with TwiML.
    """
    form = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": to,
        "Caller": from_,
        "Direction": "inbound",
        "From": from_,
        "To": to,
    }
    headers = {}
    if auth_token:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, form)
    async with session.post(url, data=form, headers=headers) as response:
        text = await response.text()
        if response.status != 200:
            raise ValueError(f"voice webhook answered {response.status}: {text[:200]}")
    return parse_answer(text)


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class SimCall:
    """What one simulated call sends. `audio` and `outbound_audio` are 8 kHz μ-law bytes."""

    url: str
    audio: bytes
    speed: float = 1.0  # 1 = real time; 0 = as fast as the socket takes it
    dtmf: str = ""
    hold_s: float = 0.0
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    auth_token: str = ""  # signs the WebSocket upgrade like Twilio does
    outbound_audio: bytes | None = None  # the other party, sent as the "outbound" track
    send_stop: bool = True  # False: the socket just closes, as when a connection drops
    # Raw text frames sent before `start`, and before media frame N (tests: malformed input).
    before_start: Sequence[str] = ()
    inject: Mapping[int, Sequence[str]] = field(default_factory=dict)
    network: NetworkFaults | None = None  # a bad network between "Twilio" and the server
    # The phone line's echo: what the server plays comes back on the inbound track, this many
    # dB down and this much later (None: no echo). Needs speed 1: it is played out in time.
    echo_db: float | None = None
    echo_delay_ms: int = 120
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    account_sid: str = "AC" + "0" * 32


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    """Damage to the inbound media on its way: late, repeated and lost frames (deterministic)."""

    reorder_frames: int = 0  # each frame may arrive up to this many frames late
    duplicate_every: int = 0  # every Nth frame arrives twice
    drop_every: int = 0  # every Nth frame never arrives
    seed: int = 0


class _Network:
    """Schedules inbound media frames for sending according to `NetworkFaults`."""

    def __init__(self, faults: NetworkFaults | None) -> None:
        self._faults = faults or NetworkFaults()
        self._rng = random.Random(self._faults.seed)
        self._due: dict[int, list[str]] = {}

    def put(self, slot: int, text: str) -> None:
        f = self._faults
        if f.drop_every and (slot + 1) % f.drop_every == 0:
            return
        at = slot + (self._rng.randint(0, f.reorder_frames) if f.reorder_frames else 0)
        self._due.setdefault(at, []).append(text)
        if f.duplicate_every and (slot + 1) % f.duplicate_every == 0:
            self._due.setdefault(at + 1, []).append(text)

    def take(self, slot: int) -> list[str]:
        return self._due.pop(slot, [])

    def rest(self) -> list[str]:
        return [text for slot in sorted(self._due) for text in self._due.pop(slot)]


@dataclass(slots=True)
class SimResult:
    """What happened on one simulated call."""

    call_sid: str
    stream_sid: str
    frames_sent: int = 0
    audio_s: float = 0.0
    started_at: float = 0.0  # time.monotonic() when the first media frame was sent
    received: list[OutboundMessage] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)  # time.monotonic() of each in `received`
    bad_replies: list[str] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    closed_by_server: bool = False  # the server hung up before the audio was all sent


class _Playback:
    """Twilio's playout of the server's audio: when each mark is due to come back, and what
    is playing now (for the line echo)."""

    def __init__(self) -> None:
        self._play_until = 0.0
        self.due: list[tuple[float, str]] = []
        self._queued = bytearray()  # μ-law bytes waiting to be played, in order

    def add(self, message: OutboundMessage, now: float) -> None:
        if isinstance(message, OutboundMedia):
            self._play_until = max(self._play_until, now) + len(message.payload) / 8000
            self._queued += message.payload
        elif isinstance(message, OutboundMark):
            self.due.append((max(self._play_until, now), message.name))
        elif isinstance(message, Clear):
            self._play_until = now
            self.due = [(now, name) for _, name in self.due]
            self._queued.clear()

    def take_due(self, now: float) -> list[str]:
        ready = [name for at, name in self.due if at <= now]
        self.due = [(at, name) for at, name in self.due if at > now]
        return ready

    def play_frame(self) -> bytes:
        """The next 20 ms the caller hears (silence when nothing is queued)."""
        frame = bytes(self._queued[:FRAME_BYTES])
        del self._queued[:FRAME_BYTES]
        return frame + SILENCE_FRAME[len(frame):]


class _Echo:
    """The line echo: frames heard by the caller come back `delay` frames later, `db` down."""

    def __init__(self, db: float, delay_ms: int) -> None:
        self._gain = 10 ** (-abs(db) / 20)
        self._line: deque[bytes] = deque([SILENCE_FRAME] * max(0, delay_ms // FRAME_MS))

    def mix(self, heard: bytes, inbound: bytes) -> bytes:
        self._line.append(heard)
        echo = decode_pcm16(self._line.popleft(), Encoding.MULAW).astype(np.float32) / 32768
        caller = decode_pcm16(inbound, Encoding.MULAW).astype(np.float32) / 32768
        return encode(np.clip(caller + echo * self._gain, -1, 1), Encoding.MULAW)


async def stream_call(session: aiohttp.ClientSession, call: SimCall) -> SimResult:
    """Run one call's Media Stream against `call.url`; returns when the socket is closed
    (by us after `stop`, or by the server hanging up)."""
    result = SimResult(call_sid=call.call_sid, stream_sid=call.stream_sid)
    headers = {}
    if call.auth_token:
        headers["X-Twilio-Signature"] = RequestValidator(call.auth_token).compute_signature(call.url, {})
    playback = _Playback()
    async with session.ws_connect(call.url, headers=headers, max_msg_size=0) as ws:
        receiver = asyncio.create_task(_receive(ws, result, playback))
        try:
            await _send(ws, call, result, playback)
        except ConnectionError:  # the server closed the socket between our check and the send
            result.closed_by_server = True
        finally:
            await ws.close()
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
    return result


async def _receive(ws: aiohttp.ClientWebSocketResponse, result: SimResult, playback: _Playback) -> None:
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.TEXT:
            continue
        try:
            message = parse_outbound(msg.data)
        except TwilioProtocolError as exc:
            result.bad_replies.append(str(exc))
            continue
        result.received.append(message)
        result.received_at.append(time.monotonic())
        playback.add(message, time.monotonic())


async def _send(
    ws: aiohttp.ClientWebSocketResponse, call: SimCall, result: SimResult, playback: _Playback
) -> None:
    seq = 0

    async def send(message: TwilioMessage) -> None:
        await ws.send_str(encode_message(message))

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    await send(Connected())
    for raw in call.before_start:
        await ws.send_str(raw)
    tracks = ("inbound", "outbound") if call.outbound_audio is not None else ("inbound",)
    await send(Start(next_seq(), call.stream_sid, call.account_sid, call.call_sid, tracks,
                     dict(call.custom_parameters)))
    frames = _frames(call.audio)
    outbound = _frames(call.outbound_audio or b"")
    extra = len(call.dtmf) * DTMF_GAP_FRAMES + round(call.hold_s * 1000 / FRAME_MS)
    total = len(frames) + extra
    network = _Network(call.network)
    echo = _Echo(call.echo_db, call.echo_delay_ms) if call.echo_db is not None else None
    loop = asyncio.get_running_loop()
    result.started_at = time.monotonic()
    t0 = loop.time()
    for n in range(total):
        if ws.closed:
            result.closed_by_server = True
            return
        if call.speed > 0:
            delay = t0 + n * FRAME_MS / 1000 / call.speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        for raw in call.inject.get(n, ()):
            await ws.send_str(raw)
        if n >= len(frames) and (n - len(frames)) % DTMF_GAP_FRAMES == 0:
            key = (n - len(frames)) // DTMF_GAP_FRAMES
            if key < len(call.dtmf):
                await send(Dtmf(next_seq(), call.stream_sid, call.dtmf[key]))
        payload = frames[n] if n < len(frames) else SILENCE_FRAME
        if echo is not None:
            payload = echo.mix(playback.play_frame(), payload)
        network.put(n, encode_message(Media(next_seq(), call.stream_sid, "inbound", n + 1, n * FRAME_MS,
                                            payload)))
        for text in network.take(n):
            await ws.send_str(text)
        if call.outbound_audio is not None:
            other = outbound[n] if n < len(outbound) else SILENCE_FRAME
            await send(Media(next_seq(), call.stream_sid, "outbound", n + 1, n * FRAME_MS, other))
        for name in playback.take_due(time.monotonic()):
            await send(Mark(next_seq(), call.stream_sid, name))
            result.marks_echoed.append(name)
        result.frames_sent = n + 1
    for text in network.rest():
        await ws.send_str(text)
    result.audio_s = total * FRAME_MS / 1000
    if call.send_stop:
        await send(Stop(next_seq(), call.stream_sid, call.account_sid, call.call_sid))


def _frames(audio: bytes) -> list[bytes]:
    """Split μ-law audio into 160-byte frames; the last is padded with silence."""
    frames = [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
    if frames and len(frames[-1]) < FRAME_BYTES:
        frames[-1] = frames[-1] + SILENCE_FRAME[len(frames[-1]) :]
    return frames


# --- command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="WAV file: 16-bit PCM at any rate, or 8 kHz μ-law")
    parser.add_argument("--url", help="Media Streams WebSocket, e.g. ws://127.0.0.1:8080/twilio/media "
                        "(default: the Stream url in the voice webhook's TwiML)")
    parser.add_argument("--voice-url", help="POST the voice webhook here first, e.g. "
                        "http://127.0.0.1:8080/twilio/voice")
    parser.add_argument("--auth-token", default="", help="Twilio auth token: sign requests like Twilio")
    parser.add_argument("--from", dest="from_", default="+15550100000", help="caller number (From)")
    parser.add_argument("--to", default="+15550001111", help="called number (To), used for routing")
    parser.add_argument("--speed", type=float, default=1.0, help="pacing: 1 = real time, 2 = twice as "
                        "fast, 0 = as fast as possible (default 1)")
    parser.add_argument("--dtmf", default="", help="keys to press after the audio, e.g. 12#")
    parser.add_argument("--lead", type=float, default=0.0, help="seconds of silence before the audio "
                        "(e.g. to hear a greeting first; default 0)")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds of silence after the audio "
                        "before hanging up (default 1)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="extra <Parameter> for the stream's start message (repeatable)")
    parser.add_argument("--heard", metavar="FILE.wav", help="write what the caller heard (the audio "
                        "the server played into the call) to this WAV file (8 kHz, 16-bit)")


def run(args: argparse.Namespace) -> int:
    try:
        audio = read_wav_mulaw(Path(args.file))
    except (OSError, ValueError) as exc:
        print(f"twilio-sim: {exc}", file=sys.stderr)
        return 2
    if not args.url and not args.voice_url:
        print("twilio-sim: give --url or --voice-url", file=sys.stderr)
        return 2
    if args.speed < 0 or args.lead < 0 or args.hold < 0:
        print("twilio-sim: --speed, --lead and --hold must not be negative", file=sys.stderr)
        return 2
    audio = SILENCE_FRAME * round(args.lead * 1000 / FRAME_MS) + audio
    try:
        params = dict(p.split("=", 1) for p in args.param)
    except ValueError:
        print("twilio-sim: --param takes NAME=VALUE", file=sys.stderr)
        return 2
    return asyncio.run(_main(args, audio, params))


async def _main(args: argparse.Namespace, audio: bytes, params: dict[str, str]) -> int:
    call_sid = new_sid("CA")
    async with aiohttp.ClientSession() as session:
        url = args.url
        if args.voice_url:
            try:
                answer = await post_voice_webhook(session, args.voice_url, auth_token=args.auth_token,
                                                  from_=args.from_, to=args.to, call_sid=call_sid)
            except (aiohttp.ClientError, ValueError) as exc:
                print(f"twilio-sim: voice webhook failed: {exc}", file=sys.stderr)
                return 1
            if answer.rejected:
                print("twilio-sim: the call was rejected (<Reject/>)", file=sys.stderr)
                return 1
            print(f"twilio-sim: TwiML streams to {answer.stream_url} with {dict(answer.parameters)}",
                  file=sys.stderr)
            url = url or answer.stream_url
            params = {**answer.parameters, **params}
        call = SimCall(url=url, audio=audio, speed=args.speed, dtmf=args.dtmf, hold_s=args.hold,
                       custom_parameters=params, auth_token=args.auth_token, call_sid=call_sid)
        print(f"twilio-sim: streaming {len(audio) / 8000:.2f} s to {url}", file=sys.stderr)
        try:
            result = await stream_call(session, call)
        except (aiohttp.ClientError, OSError) as exc:
            print(f"twilio-sim: media stream failed: {exc}", file=sys.stderr)
            return 1
    summary: dict[str, Any] = {
        "callSid": result.call_sid,
        "streamSid": result.stream_sid,
        "frames": result.frames_sent,
        "audio_s": result.audio_s,
        "received": {k: sum(type(m).__name__ == k for m in result.received)
                     for k in ("OutboundMedia", "OutboundMark", "Clear")},
    }
    if args.heard:
        heard = b"".join(m.payload for m in result.received if isinstance(m, OutboundMedia))
        _write_wav(Path(args.heard), decode_pcm16(heard, Encoding.MULAW).astype("<i2").tobytes())
        summary["heard"] = {"file": args.heard, "seconds": round(len(heard) / 8000, 2)}
    print(json.dumps(summary))
    return 0


def _write_wav(path: Path, pcm: bytes) -> None:
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm)
