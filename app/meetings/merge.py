"""Finals of several participants, released in meeting-time order.

Each participant's stream produces its own finals in its own order, and a later-starting
utterance of one participant can be recognised before an earlier one of another. A final is
therefore held while another participant has an utterance that started earlier and has no
final yet (known from the engine's speech-started events); it is released as soon as that
utterance's final is out, or when that participant's stream ends. An utterance that turns out
to have no final (noise heard as nothing) would hold the others forever, so nothing is held
longer than `hold_s`: order is then given up for latency, and the late final goes out as it
comes. `hold_s` must outlast a turn's end: up to `[turn] number_silence_ms` (1.5 s) of silence
after the last word, then the final's decoding (a few hundred ms, more under load).

Not thread-safe; call it from the event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TimeOrderMerger(Generic[T]):
    """Holds items (finals) until no participant can still produce an earlier one."""

    def __init__(self, release: Callable[[T], None], hold_s: float = 4.0) -> None:
        self._release = release
        self.hold_s = hold_s
        self._open: dict[str, dict[int, float]] = {}  # participant -> utterance index -> start (meeting s)
        self._held: list[tuple[float, int, float, str, T]] = []  # (start, seq, held since, participant, item)
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def started(self, participant: str, index: int, start_s: float) -> None:
        """`participant`'s utterance `index` began at `start_s`; its final will follow."""
        self._open.setdefault(participant, {})[index] = start_s

    def final(self, participant: str, index: int, start_s: float, item: T) -> None:
        """`participant`'s final for utterance `index` (which settles every earlier one)."""
        pending = self._open.get(participant, {})
        for done in [i for i in pending if i <= index]:
            del pending[done]
        heapq.heappush(self._held, (start_s, next(self._seq), time.monotonic(), participant, item))
        self._flush()

    def finished(self, participant: str) -> None:
        """`participant`'s stream has ended: it will start nothing more."""
        self._open.pop(participant, None)
        self._flush()

    def drain(self) -> None:
        """Release everything held (the meeting is over)."""
        self._open.clear()
        self._flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        now = time.monotonic()
        while self._held:
            start, _, since, participant, item = self._held[0]
            waiting_on = [s for p, opened in self._open.items() if p != participant
                          for s in opened.values() if s < start]
            if waiting_on and now - since < self.hold_s:
                self._schedule(since + self.hold_s - now)
                return
            heapq.heappop(self._held)
            self._release(item)

    def _schedule(self, delay_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(delay_s, 0.0), self._flush)
