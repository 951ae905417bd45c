"""A SIP call's outbound frames inside its worker: the queue pjsua2's media clock plays from.

The worker's loop `put`s the frames the service sends (PLAY on the bridge) and `clear`s them;
the media clock thread `take`s one every 20 ms (sip/call.py's `FramePlayer`). What was taken
goes back to the service as progress, counted per playback key, so it can tell when a
playback finished (sip/media.py).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

# While a playback plays, the media thread reports progress every this many frames (0.5 s);
# its end is reported at once. Two messages a second per call instead of fifty.
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
