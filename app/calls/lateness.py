"""How late finals come lately: the load signal behind `[asr] busy_late_ms`.

A final is *late* by the time from the arrival of the audio at which the engine ended its
utterance (where the turn's silence wait ran out: `Transcript.decided_s`) to the final being
ready. That is the engine's own delay, the end-of-turn policy's waits excluded: what is left
of the recognition, and any queueing for the VAD, the end-of-turn model or a recognizer. On a
machine that keeps up it stays small; once the live calls are more than the machine can hear
in time, it grows for every call. `CallHub` feeds one `RecentLateness` from all its calls and
refuses new calls while its 90th percentile is above the setting, and past a `CallLimit`:
learned from it, and before any final is late, from the machine's speed (`starting_limit`;
docs/engine.md, Under load).
"""

from __future__ import annotations

import time
from collections import deque

WINDOW_S = 10.0  # the finals of this many seconds count
MIN_FINALS = 8  # fewer finals than this in the window say nothing about the load


class RecentLateness:
    """The lateness of the finals of the last `window_s` seconds (monotonic clock), each with
    when its call was let in."""

    def __init__(self, window_s: float = WINDOW_S, min_count: int = MIN_FINALS) -> None:
        self._window_s = window_s
        self._min_count = min_count
        self._finals: deque[tuple[float, float, float]] = deque()  # (when ready, how late, call let in)

    def add(self, late_s: float, call_started: float = 0.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._finals.append((now, late_s, call_started))
        self._forget(now)

    def p90(self, since: float | None = None, now: float | None = None) -> float:
        """The 90th percentile of the window's lateness (only of calls let in at or after
        `since`, if given); 0 with fewer than `min_count` such finals."""
        self._forget(time.monotonic() if now is None else now)
        late = sorted(s for _, s, started in self._finals if since is None or started >= since)
        if len(late) < self._min_count:
            return 0.0
        return late[min(len(late) - 1, int(0.9 * len(late)))]

    def _forget(self, now: float) -> None:
        while self._finals and self._finals[0][0] < now - self._window_s:
            self._finals.popleft()


# A machine's first call limit, before any final has said how it copes: proportional to its
# speed (how long one worker takes to encode 8 s of audio, `Recognizer.encode_ms`) and to its
# inference workers. On the 2-core machine of docs/engine.md (tiny.en encodes in 42-48 ms, two
# workers) the limit learned under a soak settled at 15 calls, and a burst of more callers
# than that made every call late for its first minute: 15 * 44 ms / 2 workers.
CALL_MS_PER_WORKER = 330.0


def starting_limit(encode_ms: float, workers: int, most: int = 0) -> int:
    """How many live calls a machine is let take before its finals have said how it copes:
    `CALL_MS_PER_WORKER * workers / encode_ms`, at least one and at most `most` (when not 0)."""
    calls = max(1, int(CALL_MS_PER_WORKER * max(workers, 1) / max(encode_ms, 1e-3)))
    return min(calls, most) if most > 0 else calls


RAISE_EVERY_S = 30.0  # a learned limit goes up by one call this often while finals come in time
ADMIT_EVERY_S = 1.0  # once a limit is learned, new calls are let in at most this often


class CallLimit:
    """How many live calls this machine hears in time, learned from how late finals come.

    Refusing new calls only while finals are late would let every waiting caller in at once
    as soon as they are not (the window empties), and the machine would be behind again. So
    the first time finals come later than `late_s`, the limit becomes three quarters of the
    calls live then. It drops by a quarter of itself again when the finals of calls let in
    since it last changed are late too (those of calls from before are the old limit's, and
    an engine that fell behind takes a while to catch up); while finals come in time, it goes
    up by one call every `RAISE_EVERY_S` the calls are at it. TCP finds its window the same
    way. And once a limit is learned, calls are let in one at a time (`admit_every_s`):
    callers let in together speak and stop together, and their finals come late together (a
    switch's sessions-per-second).

    `start` (from `starting_limit`) is the limit before any final is late: it moves as a
    learned one does, but calls are not paced under it until lateness has moved it. Without
    it, every caller of a burst is let in before the first finals come."""

    def __init__(self, late_s: float, raise_every_s: float = RAISE_EVERY_S,
                 admit_every_s: float = ADMIT_EVERY_S, start: int | None = None,
                 now: float | None = None) -> None:
        self._late_s = late_s
        self._raise_every_s = raise_every_s
        self._admit_every_s = admit_every_s
        self._admitted = -float("inf")
        self.limit: int | None = start if late_s else None  # None: no limit yet
        self.learned = False  # whether late finals have set or moved the limit
        # When the limit last changed (monotonic clock): a starting limit, now.
        self.changed = -float("inf")
        if self.limit is not None:
            self.changed = time.monotonic() if now is None else now

    def update(self, live: int, late: float, late_since_change: float, now: float | None = None) -> int | None:
        """The limit, after finals have lately come `late` seconds late (90th percentile) with
        `live` calls live, and `late_since_change` those of calls let in since `changed`."""
        now = time.monotonic() if now is None else now
        if not self._late_s:
            return None
        if self.limit is None:
            if late > self._late_s:
                self.limit, self.changed, self.learned = max(1, live * 3 // 4), now, True
        elif late_since_change > self._late_s:
            self.limit, self.changed, self.learned = max(1, self.limit * 3 // 4), now, True
        elif late <= self._late_s and live >= self.limit and now - self.changed >= self._raise_every_s:
            self.limit, self.changed = self.limit + 1, now
        return self.limit

    def paced(self, now: float | None = None) -> bool:
        """Whether a new call must wait its turn (late finals have set the limit and one was
        let in less than `admit_every_s` ago)."""
        now = time.monotonic() if now is None else now
        return self.learned and now - self._admitted < self._admit_every_s

    def admit(self, now: float | None = None) -> None:
        """A new call was let in."""
        self._admitted = time.monotonic() if now is None else now
