"""When did the caller's audio arrive? The clock behind the end-to-end latency metrics.

An ingress hands a call its audio as it arrives; `ArrivalClock.mark(stream_s)` notes, after
each payload, how many seconds of audio the call holds and when that was. A final result for
speech ending at `end_s` then measures its latency from `arrival_of(end_s)`: the moment the
last of that speech reached Hearsay, network and jitter buffers excluded.
"""

from __future__ import annotations

import time
from collections import deque

# 4096 payloads: 80 s of 20 ms frames, longer than any utterance waits for its final.
HISTORY = 4096


class ArrivalClock:
    """(seconds of stream audio received, monotonic time) pairs, the newest `HISTORY` kept."""

    def __init__(self) -> None:
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=HISTORY)

    def mark(self, stream_s: float, at: float | None = None) -> None:
        """The stream now holds `stream_s` seconds of audio, received at `at` (default: now)."""
        self._arrivals.append((stream_s, time.monotonic() if at is None else at))

    def arrival_of(self, stream_s: float) -> float | None:
        """When the audio at `stream_s` seconds arrived (None: too long ago, or not yet)."""
        for seconds, at in self._arrivals:
            if seconds >= stream_s:
                return at
        return None
