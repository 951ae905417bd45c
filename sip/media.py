"""The outbound side of a SIP call: what the caller hears (`SipMedia`, a `CallMedia`).

Three threads take part, and only `FrameQueue` is shared between them:

    loop          SipMedia.play(pcm, rate) -> frames_of(..., 8000) -> FrameQueue.put
    media clock   FramePlayer.onFrameRequested (sip/call.py), every 20 ms -> FrameQueue.take
                  -> pjsua2's conference bridge -> the call's RTP stream
    media clock   -> `on_progress()` (a `loop.call_soon_threadsafe` hand-over), at most one
                  outstanding: when a playback's last frame is taken, or every
                  PROGRESS_FRAMES frames -> SipMedia._progress on the loop -> Playback.played,
                  Playback.settle(FINISHED)

So `Playback.frames_played` counts the frames the bridge actually took (it lags by up to
PROGRESS_FRAMES while playing, and is exact when a playback finishes or is cleared), and a
playback is FINISHED as soon as its last frame has gone to the RTP stream. Nothing here
imports pjsua2.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable

from app.calls.info import EndReason
from app.calls.media import MediaUnsupported, Playback, PlaybackState, frames_of

SAMPLE_RATE = 8000  # the conference bridge's rate: what FramePlayer hands it
# While a playback plays, the media thread reports progress every this many frames (0.5 s);
# its end is reported at once. Two hand-overs a second per call instead of fifty.
PROGRESS_FRAMES = 25


class FrameQueue:
    """One call's outbound 20 ms frames in play order; thread-safe (a lock, no asyncio).

    The loop `put`s and `clear`s and `collect`s; pjsua2's media clock thread `take`s and
    counts what it took per playback key. `on_progress` is called from `take` (so it must be
    a thread-safe hand-over that does not block) when a playback's last frame is taken or
    PROGRESS_FRAMES frames went unreported, and not again until the loop has `collect`ed.
    """

    def __init__(self, on_progress: Callable[[], object]) -> None:
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._frames: deque[tuple[int, bytes, bool]] = deque()  # (key, frame, last of its playback)
        self._taken: dict[int, int] = {}  # frames taken per key since the last collect
        self._unreported = 0
        self._pending = False  # an on_progress hand-over is on its way to the loop

    def put(self, key: int, frames: list[bytes]) -> None:
        """Queue one playback's frames (loop)."""
        last = len(frames) - 1
        with self._lock:
            self._frames.extend((key, frame, i == last) for i, frame in enumerate(frames))

    def take(self) -> bytes | None:
        """The next frame to play, or None when there is nothing to play (media thread)."""
        with self._lock:
            if not self._frames:
                return None
            key, frame, last = self._frames.popleft()
            self._taken[key] = self._taken.get(key, 0) + 1
            self._unreported += 1
            report = not self._pending and (last or self._unreported >= PROGRESS_FRAMES)
            if report:
                self._pending = True
        if report:
            self._on_progress()
        return frame

    def collect(self) -> dict[int, int]:
        """Frames taken per playback key since the last collect (loop)."""
        with self._lock:
            return self._collect()

    def clear(self) -> dict[int, int]:
        """Drop every queued frame; returns what was taken since the last collect (loop)."""
        with self._lock:
            self._frames.clear()
            return self._collect()

    def _collect(self) -> dict[int, int]:
        taken, self._taken = self._taken, {}
        self._unreported = 0
        self._pending = False
        return taken


class SipMedia:
    """`CallMedia` for one SIP call (see the module docstring for how frames cross threads).

    `post(fn)` runs `fn` on the loop from any thread; `hang_up(reason)` asks the SIP thread
    to end the call with a BYE, after which the call ends with `reason`; `on_close()` runs
    when the call is over (`aclose`), so the SIP leg can be hung up if it is still up. All
    methods but `frames.take` are for the event loop.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, post: Callable[[Callable[[], None]], object], hang_up: Callable[[EndReason], None],
                 on_close: Callable[[], None]) -> None:
        self.frames = FrameQueue(lambda: post(self._progress))
        self.hung_up: EndReason | None = None
        self._hang_up = hang_up
        self._on_close = on_close
        self._playing: dict[int, Playback] = {}  # by key, in play order
        self._keys = itertools.count()
        self._closed = False

    def play(self, pcm: bytes, rate: int) -> Playback:
        if self._closed:
            raise MediaUnsupported("the call is over")
        frames = frames_of(pcm, rate, self.sample_rate)
        playback = Playback(len(frames))
        if not frames:
            playback.settle(PlaybackState.FINISHED)
            return playback
        key = next(self._keys)
        self._playing[key] = playback
        self.frames.put(key, frames)
        return playback

    def clear(self) -> list[Playback]:
        # Count what the bridge took up to now first: a playback whose last frame just went
        # is FINISHED, not interrupted.
        self._apply(self.frames.clear())
        stopped = list(self._playing.values())
        self._playing.clear()
        for playback in stopped:
            playback.settle(PlaybackState.INTERRUPTED)
        return stopped

    async def hangup(self, reason: EndReason = EndReason.AGENT_HANGUP) -> None:
        """Ask the SIP thread to send BYE; returns at once (`call.wait_ended()` waits for the
        end, which comes once pjsua2 reports the call disconnected)."""
        if self.hung_up is None and not self._closed:
            self.hung_up = reason
            self._hang_up(reason)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.clear()
            self._on_close()

    def _progress(self) -> None:
        self._apply(self.frames.collect())

    def _apply(self, taken: dict[int, int]) -> None:
        for key, count in taken.items():
            playback = self._playing.get(key)
            if playback is None:  # cleared meanwhile
                continue
            playback.played(count)
            if playback.frames_played >= playback.frames:
                del self._playing[key]
                playback.settle(PlaybackState.FINISHED)
