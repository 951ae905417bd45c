"""Place Twilio media chunks on the call's timeline by their `timestamp`, not by arrival.

Twilio stamps every `media` message with milliseconds since the stream started. Packets can
arrive late, twice, or out of order; audio must still land where it was spoken, or the
`start_s`/`end_s` of every later utterance drift. `JitterBuffer.put` takes one chunk and
returns the audio that is now ready, in order:

- in-order chunks come straight back (no added latency);
- a chunk that arrives early is held until the gap before it is filled or until the held
  audio spans more than `window_ms`, after which the gap becomes silence;
- a chunk whose audio was already played out (a duplicate, or one later than the window)
  is dropped; a chunk that partly overlaps is trimmed;
- a jump further than `max_gap_ms` is taken as a clock discontinuity: only `max_gap_ms` of
  silence is inserted, so a bogus timestamp cannot allocate hours of audio.

Works on one-byte-per-sample audio (μ-law), so byte positions are sample positions.
One buffer per track; not thread-safe (lives on the event loop with its call).
"""

from __future__ import annotations

MULAW_SILENCE = 0xFF  # μ-law code for 0


class JitterBuffer:
    """Reorders, de-duplicates and gap-fills one track of 8-bit audio."""

    def __init__(
        self,
        sample_rate: int = 8000,
        window_ms: int = 100,
        max_gap_ms: int = 30_000,
        silence: int = MULAW_SILENCE,
    ) -> None:
        if sample_rate <= 0 or window_ms < 0 or max_gap_ms <= 0:
            raise ValueError("sample_rate and max_gap_ms must be positive, window_ms not negative")
        self._per_ms = sample_rate / 1000.0
        self._window = round(window_ms * self._per_ms)
        self._max_gap = round(max_gap_ms * self._per_ms)
        self._silence = bytes([silence])
        self._next = 0  # position (in samples) of the next sample to release
        self._offset = 0  # samples removed from the timeline by discontinuities
        self._pending: dict[int, bytes] = {}
        self.duplicates = 0  # chunks dropped because their audio was already released
        self.silence_samples = 0  # samples of silence inserted for gaps
        self.discontinuities = 0  # timestamp jumps beyond max_gap_ms

    @property
    def position(self) -> int:
        """Samples released so far (the length of the call timeline)."""
        return self._next

    @property
    def held(self) -> int:
        """Chunks waiting for an earlier gap to be filled."""
        return len(self._pending)

    def put(self, timestamp_ms: int, payload: bytes) -> bytes:
        """Add one chunk; return the audio ready to play out (possibly empty)."""
        if not payload:
            return b""
        pos = round(timestamp_ms * self._per_ms) - self._offset
        if pos - self._furthest() > self._max_gap:
            self.discontinuities += 1
            jump = pos - self._furthest() - self._max_gap
            self._offset += jump
            pos -= jump
        if pos + len(payload) <= self._next or pos in self._pending:
            self.duplicates += 1
            return b""
        self._pending[pos] = payload
        return self._release(flush=False)

    def flush(self) -> bytes:
        """End of stream: release everything held, filling gaps with silence."""
        return self._release(flush=True)

    def _furthest(self) -> int:
        ends = [p + len(b) for p, b in self._pending.items()]
        return max([self._next, *ends])

    def _release(self, flush: bool) -> bytes:
        out: list[bytes] = []
        while self._pending:
            pos = min(self._pending)
            if pos > self._next:
                if not flush and self._furthest() - self._next <= self._window:
                    break
                gap = pos - self._next
                out.append(self._silence * gap)
                self.silence_samples += gap
                self._next = pos
            chunk = self._pending.pop(pos)
            if pos + len(chunk) <= self._next:
                self.duplicates += 1
                continue
            chunk = chunk[self._next - pos:]
            out.append(chunk)
            self._next += len(chunk)
        return b"".join(out)
