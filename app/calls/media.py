"""The outbound side of a call: what the caller hears.

Every ingress gives its calls one `CallMedia` (passed to `CallHub.start(..., media=)`):

    playback = call.media.play(pcm, 16000)   # 16-bit mono PCM at any rate; queued after
                                             # what is already playing, sent in 20 ms frames
    await playback.wait()                    # FINISHED (the caller heard it all) or INTERRUPTED
    playback.frames, playback.frames_played  # what was queued, what actually went out
    call.media.clear()                       # barge-in: stop now, drop the queue
    await call.media.hangup()                # end the call from our side
    await call.media.transfer("sip:200@pbx")  # SIP REFER; MediaUnsupported elsewhere

Implementations: Twilio sends `media` messages on a 20 ms clock (`PacedPlayer` below) and a
`mark` after each playback, which Twilio echoes once the caller has heard it; SIP hands frames
to a pjsua2 media port that the conference bridge pulls every 20 ms; `/v1/stream` has no
outbound audio (`play` raises `MediaUnsupported`) but can hang up. A call started without
media gets `NoMedia`.

All methods are called on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Protocol

import numpy as np

from app.calls.info import EndReason
from app.pipeline.resample import resample_whole

log = logging.getLogger("hearsay.media")

FRAME_MS = 20
# PacedPlayer sends this far ahead of the clock, so a busy event loop does not starve the
# peer's buffer; `clear` still stops within this much audio.
LEAD_FRAMES = 3


# A transfer target as a Refer-To header can carry it: sip: or sips:, a host, no spaces,
# quotes or angle brackets.
_SIP_URI = re.compile(r"""
    (?i:sips?):
    (?:[^@\s<>"\x00-\x1f\x7f]+@)?                                  # user[:password]@
    (?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])  # host, or [IPv6]
    (?::[0-9]{1,5})?                                                 # port
    (?:[;?][^\s<>"\x00-\x1f\x7f]*)?                                 # ;params ?headers
    """, re.VERBOSE)


def check_sip_uri(target: object) -> None:
    """Raise ValueError unless `target` is a SIP URI fit for `CallMedia.transfer` (the one
    rule for the webhook's `transfer` action and the SIP user agent alike)."""
    if not isinstance(target, str) or _SIP_URI.fullmatch(target) is None:
        raise ValueError(f"transfer target must be a SIP URI such as sip:200@pbx.example.com "
                         f"(sip: or sips:, no spaces or <>), got {target!r}")


class MediaUnsupported(Exception):
    """This call has no outbound side for what was asked (e.g. audio into a /v1/stream session)."""


class PlaybackState(StrEnum):
    QUEUED = "queued"
    PLAYING = "playing"
    FINISHED = "finished"  # every frame went out (Twilio: and its mark came back)
    INTERRUPTED = "interrupted"  # cleared, or the call ended first


class Playback:
    """One `play()` request: its 20 ms frames, how many went out, and how it ended."""

    def __init__(self, frames: int) -> None:
        self.id = "pb_" + secrets.token_hex(6)
        self.frames = frames
        self.frames_played = 0
        self.state = PlaybackState.QUEUED
        self._done: asyncio.Future[PlaybackState] = asyncio.get_running_loop().create_future()

    @property
    def done(self) -> bool:
        return self._done.done()

    async def wait(self) -> PlaybackState:
        """Wait until the playback has finished or was interrupted; returns which."""
        return await asyncio.shield(self._done)

    def played(self, frames: int = 1) -> None:
        """`frames` more went out to the caller (called by the ingress)."""
        if not self.done:
            self.state = PlaybackState.PLAYING
            self.frames_played = min(self.frames, self.frames_played + frames)

    def settle(self, state: PlaybackState) -> None:
        """The playback is over (`FINISHED` or `INTERRUPTED`); later calls are ignored."""
        if not self.done:
            self.state = state
            self._done.set_result(state)

    def __repr__(self) -> str:
        return f"Playback({self.id}, {self.state.value}, {self.frames_played}/{self.frames} frames)"


class CallMedia(Protocol):
    """The outbound side of one call; see the module docstring."""

    @property
    def sample_rate(self) -> int:
        """The rate the peer plays at (frames are resampled to it)."""
        ...

    def play(self, pcm: bytes, rate: int) -> Playback:
        """Queue 16-bit little-endian mono PCM at `rate` Hz (raises MediaUnsupported)."""
        ...

    def clear(self) -> list[Playback]:
        """Stop what is playing and drop the queue; returns the playbacks interrupted."""
        ...

    async def hangup(self, reason: EndReason = EndReason.AGENT_HANGUP) -> None:
        """End the call from our side; the call then ends with `reason`."""
        ...

    async def transfer(self, target: str) -> None:
        """Ask the caller's side to move the call to `target` (SIP: REFER); raises
        MediaUnsupported where the source cannot (Twilio moves calls through its REST API)."""
        ...

    async def aclose(self) -> None:
        """The call is over: stop sending; whatever is queued is interrupted."""
        ...


class NoMedia:
    """For calls whose source cannot carry audio back or be hung up by us."""

    def __init__(self, why: str = "this call has no outbound audio", sample_rate: int = 8000) -> None:
        self._why = why
        self.sample_rate = sample_rate

    def play(self, pcm: bytes, rate: int) -> Playback:
        raise MediaUnsupported(self._why)

    def clear(self) -> list[Playback]:
        return []

    async def hangup(self, reason: EndReason = EndReason.AGENT_HANGUP) -> None:
        raise MediaUnsupported(self._why)

    async def transfer(self, target: str) -> None:
        raise MediaUnsupported(self._why)

    async def aclose(self) -> None:
        return None


def frames_of(pcm: bytes, rate: int, out_rate: int) -> list[bytes]:
    """`pcm` (s16le mono at `rate`) as s16le frames of 20 ms at `out_rate`, the last padded
    with silence. Raises ValueError for an odd byte count or a rate that is not positive."""
    if len(pcm) % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm)}")
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    if rate != out_rate:
        samples = resample_whole(samples, rate, out_rate)
    step = out_rate * FRAME_MS // 1000
    pad = -len(samples) % step
    pcm16 = np.clip(np.round(np.concatenate([samples, np.zeros(pad, np.float32)]) * 32768),
                    -32768, 32767).astype("<i2").tobytes()
    size = step * 2
    return [pcm16[i:i + size] for i in range(0, len(pcm16), size)]


class PacedPlayer:
    """Playbacks sent frame by frame on the loop's 20 ms clock, for peers that take audio as
    fast as it is sent (Twilio). `send(frame)` sends one s16le frame at `sample_rate`;
    `after(playback)` runs once a playback's last frame is sent (Twilio: send a mark). The
    playback is settled by the ingress (a returning mark), or here when `after` is None."""

    def __init__(self, sample_rate: int, send: Callable[[bytes], Awaitable[None]],
                 after: Callable[[Playback], Awaitable[None]] | None = None) -> None:
        self.sample_rate = sample_rate
        self._send = send
        self._after = after
        self._queue: deque[tuple[Playback, deque[bytes]]] = deque()
        self._sent: list[Playback] = []  # all frames out, waiting to be settled by the ingress
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def play(self, pcm: bytes, rate: int) -> Playback:
        if self._closed:
            raise MediaUnsupported("the call is over")
        frames = frames_of(pcm, rate, self.sample_rate)
        playback = Playback(len(frames))
        self._queue.append((playback, deque(frames)))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="paced-player")
        self._wake.set()
        return playback

    def clear(self) -> list[Playback]:
        stopped = [p for p, _ in self._queue] + [p for p in self._sent if not p.done]
        self._queue.clear()
        self._sent.clear()
        for playback in stopped:
            playback.settle(PlaybackState.INTERRUPTED)
        return stopped

    def sent(self) -> list[Playback]:
        """Playbacks whose frames all went out and that are not settled yet, oldest first."""
        self._sent = [p for p in self._sent if not p.done]
        return list(self._sent)

    async def aclose(self) -> None:
        self._closed = True
        self.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        frame_s = FRAME_MS / 1000
        while True:
            await self._wake.wait()
            self._wake.clear()
            start = loop.time()
            n = 0
            while self._queue:
                playback, frames = self._queue[0]
                delay = start + (n - LEAD_FRAMES) * frame_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not self._queue or self._queue[0][0] is not playback:
                    continue  # cleared while we slept
                try:
                    await self._send(frames.popleft())
                except (ConnectionError, RuntimeError) as exc:
                    log.info("outbound audio stopped: %s", exc)
                    self._closed = True
                    self.clear()
                    return
                n += 1
                playback.played()
                if not frames:
                    self._queue.popleft()
                    await self._finished(playback)
                if loop.time() - (start + n * frame_s) > 10 * frame_s:
                    start, n = loop.time(), 0  # far behind (a stalled loop): do not burst to catch up

    async def _finished(self, playback: Playback) -> None:
        if self._after is None:
            playback.settle(PlaybackState.FINISHED)
            return
        self._sent.append(playback)
        await self._after(playback)
