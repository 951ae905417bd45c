"""The bridge between the service and its SIP workers: one unix-socket stream per worker.

Each `python -m app sip-worker` process connects to the service's socket and keeps that one
connection for its life; everything about its calls travels on it, in order, as messages:

    u32 length | u8 kind | u32 call | body          (big-endian; length counts what follows)

`call` is the worker's serial number for the call (0 for the worker itself). Kinds:

    AUDIO  worker -> service   f64 monotonic time the frame left pjsua2 | 20 ms of the
                               caller's audio, 8 kHz s16le (320 bytes)
    PLAY   service -> worker   u32 playback key | 20 ms frames to play, 8 kHz s16le
    EVENT  both ways           a JSON object with a "type" (docs/sip.md lists them)

Audio rides in binary so that a frame costs one small write; everything else is JSON because
it is rare. The monotonic clock is system-wide on Linux, so the service measures each frame's
time on the bridge (`hearsay_sip_bridge_latency_seconds`). A message never exceeds
`MAX_MESSAGE` bytes; a longer playback is sent as several PLAY messages with the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

_HEAD = struct.Struct("!IBI")  # length, kind, call
_STAMP = struct.Struct("!d")
_KEY = struct.Struct("!I")
MAX_MESSAGE = 1 << 20
FRAME_BYTES = 320  # 20 ms at 8 kHz, 16-bit
# Frames per PLAY message: 10 s of audio, well under MAX_MESSAGE.
PLAY_CHUNK = 500


class Kind(IntEnum):
    AUDIO = 1
    PLAY = 2
    EVENT = 3


class BridgeError(Exception):
    """The other side broke the protocol (a message too long, an unknown kind, bad JSON)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message off the bridge; `event` for EVENT, `pcm`/`sent_at` for AUDIO,
    `key`/`frames` for PLAY."""

    kind: Kind
    call: int
    event: dict[str, Any] | None = None
    pcm: bytes = b""
    sent_at: float = 0.0
    key: int = 0
    frames: tuple[bytes, ...] = ()


def pack_event(call: int, event: dict[str, Any]) -> bytes:
    body = json.dumps(event, separators=(",", ":")).encode()
    return _HEAD.pack(len(body) + 5, Kind.EVENT, call) + body


def pack_audio(call: int, pcm: bytes, sent_at: float) -> bytes:
    return _HEAD.pack(len(pcm) + 13, Kind.AUDIO, call) + _STAMP.pack(sent_at) + pcm


def pack_play(call: int, key: int, frames: list[bytes]) -> list[bytes]:
    """PLAY messages carrying `frames` (each FRAME_BYTES long) in order."""
    out = []
    for i in range(0, len(frames), PLAY_CHUNK):
        body = b"".join(frames[i:i + PLAY_CHUNK])
        out.append(_HEAD.pack(len(body) + 9, Kind.PLAY, call) + _KEY.pack(key) + body)
    return out


def unpack(kind: int, call: int, body: bytes) -> Message:
    """Read one message's body (raises BridgeError for anything malformed)."""
    if kind == Kind.AUDIO:
        if len(body) < _STAMP.size:
            raise BridgeError("an AUDIO message without its time stamp")
        (sent_at,) = _STAMP.unpack_from(body)
        return Message(Kind.AUDIO, call, pcm=body[_STAMP.size:], sent_at=sent_at)
    if kind == Kind.PLAY:
        if len(body) < _KEY.size or (len(body) - _KEY.size) % FRAME_BYTES:
            raise BridgeError(f"a PLAY message of {len(body)} bytes is not whole frames")
        (key,) = _KEY.unpack_from(body)
        data = body[_KEY.size:]
        frames = tuple(data[i:i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES))
        return Message(Kind.PLAY, call, key=key, frames=frames)
    if kind == Kind.EVENT:
        try:
            event = json.loads(body)
        except ValueError as exc:
            raise BridgeError(f"an EVENT that is not JSON: {exc}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise BridgeError("an EVENT without a type")
        return Message(Kind.EVENT, call, event=event)
    raise BridgeError(f"unknown message kind {kind}")


class BridgeStream:
    """One end of a bridge connection: `send_*` queue bytes at once (never block), `read()`
    returns the next message, or None once the other side has gone."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the other side."""
        return self._writer.transport.get_write_buffer_size()

    @property
    def closing(self) -> bool:
        return self._writer.is_closing()

    def send_event(self, call: int, event: dict[str, Any]) -> None:
        self._write(pack_event(call, event))

    def send_audio(self, call: int, pcm: bytes, sent_at: float) -> None:
        self._write(pack_audio(call, pcm, sent_at))

    def send_play(self, call: int, key: int, frames: list[bytes]) -> None:
        for message in pack_play(call, key, frames):
            self._write(message)

    async def read(self) -> Message | None:
        try:
            head = await self._reader.readexactly(_HEAD.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length, kind, call = _HEAD.unpack(head)
        if not 5 <= length <= MAX_MESSAGE:
            raise BridgeError(f"a message of {length} bytes")
        try:
            body = await self._reader.readexactly(length - 5)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return unpack(kind, call, body)

    async def drain(self) -> None:
        if not self._writer.is_closing():
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    def _write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)
