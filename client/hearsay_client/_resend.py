"""What lets a session survive a dropped connection: the audio of one stream that the server
has not finished with (`ResendBuffer`), and reconnecting with backoff (`reconnect`). Used by
the real-time session (one stream) and the meeting session (one stream per participant).

A stream's audio is addressed by absolute byte offset from its start. The buffer holds
[acked, written): the server is done with everything before `acked` (its finals have come),
so after a reconnect the new connection starts at `acked` (`base`) and everything after it is
sent again; a result's times on that connection are moved by `base_s`. The buffer is bounded
(`max_buffer_s`): when it overflows, the oldest audio goes. Audio that went after it was sent
is only at risk (its finals may still come); audio that went unsent, or at risk when the
connection dropped, is lost for good and reported (`untranscribed`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from hearsay_client._transport import Backoff
from hearsay_client.errors import ConnectionLostError, HearsayError
from hearsay_client.types import AudioSpan

log = logging.getLogger("hearsay_client")

T = TypeVar("T")
Span = tuple[int, int]  # [start, end) in bytes of the stream


class ResendBuffer:
    """One stream's unacknowledged audio and where its current connection stands."""

    def __init__(self, sample_rate: int, bytes_per_sample: int, max_buffer_s: float) -> None:
        self._rate = sample_rate
        self._sample = bytes_per_sample
        self.bytes_per_s = sample_rate * bytes_per_sample
        self._limit = int(max_buffer_s * sample_rate) * bytes_per_sample
        self._audio = bytearray()  # [acked, written)
        self.acked = 0  # everything before this has its finals (or was given up)
        self.written = 0  # bytes appended
        self.base = 0  # where the current connection's audio starts
        self.sent = 0  # how far the current connection has been sent
        self._at_risk: list[Span] = []  # sent, dropped from the buffer, finals not yet seen
        self._lost: list[Span] = []  # not transcribed, for good

    @property
    def backlog(self) -> int:
        """Bytes appended but not yet sent on the current connection."""
        return self.written - self.sent

    @property
    def unacked(self) -> int:
        """Bytes the server has not finished with (they would be sent again)."""
        return self.written - self.acked

    @property
    def base_s(self) -> float:
        """Where the current connection's audio starts, in seconds of the stream."""
        return self.base / self.bytes_per_s

    def bytes_at(self, seconds: float) -> int:
        """The byte offset `seconds` into the stream (whole samples)."""
        return round(seconds * self._rate) * self._sample

    def append(self, chunk: bytes, *, connected: bool) -> None:
        """More audio; the oldest goes if the buffer overflows (`connected`: whether what was
        sent on the current connection may still get its finals)."""
        self._audio += chunk
        self.written += len(chunk)
        excess = len(self._audio) - self._limit
        if excess <= 0:
            return
        drop_to = self.acked + excess
        sent_end = min(drop_to, self.sent) if connected else self.acked
        if sent_end > self.acked:
            _add_span(self._at_risk, self.acked, sent_end)
        if drop_to > sent_end:
            _add_span(self._lost, sent_end, drop_to)
            log.warning("the resend buffer is full: %.2f s of audio will not be transcribed",
                        (drop_to - sent_end) / self.bytes_per_s)
        del self._audio[:excess]
        self.acked = drop_to

    def restart(self) -> None:
        """A new connection: it starts at the first unacknowledged byte."""
        self.base = self.sent = self.acked

    def next_frame(self, limit: int) -> bytes | None:
        """The next unsent audio (at most `limit` bytes; b"" when all is sent), or None when
        unsent audio was dropped (overflow): the connection must start afresh, or its times
        would be wrong."""
        if self.sent < self.acked:
            return None
        start = self.sent - self.acked
        return bytes(self._audio[start:start + limit])

    def mark_sent(self, count: int) -> None:
        self.sent += count

    def ack(self, offset: int) -> None:
        """The server is done with the audio before `offset`: it need not be resent."""
        offset = min(max(offset, self.acked), self.sent)
        self._at_risk = [(max(a, offset), b) for a, b in self._at_risk if b > offset]
        if offset > self.acked:
            del self._audio[:offset - self.acked]
            self.acked = offset

    def connection_lost(self) -> None:
        """The connection dropped: finals for audio no longer buffered will not come now."""
        self._lost.extend(self._at_risk)
        self._at_risk = []

    def untranscribed(self, shift_s: float = 0.0, speaker: str | None = None) -> tuple[AudioSpan, ...]:
        """Spans known not to be transcribed, moved by `shift_s` (e.g. onto a meeting clock)."""
        return self._spans(self._lost, shift_s, speaker)

    def pending(self, shift_s: float = 0.0, speaker: str | None = None) -> tuple[AudioSpan, ...]:
        """Every span without a transcript yet: lost, at risk, and still buffered."""
        spans = self._lost + self._at_risk
        if self.written > self.acked:
            spans = [*spans, (self.acked, self.written)]
        return self._spans(sorted(spans), shift_s, speaker)

    def _spans(self, spans: list[Span], shift_s: float, speaker: str | None) -> tuple[AudioSpan, ...]:
        return tuple(AudioSpan(round(shift_s + a / self.bytes_per_s, 3), round(shift_s + b / self.bytes_per_s, 3),
                               speaker) for a, b in spans)


async def reconnect(backoff: Backoff, connect: Callable[[], Awaitable[T]],
                    pending: Callable[[], tuple[AudioSpan, ...]]) -> T:
    """`connect()` again with exponential backoff and jitter until it works; a non-retryable
    error ends it at once, and running out of attempts raises ConnectionLostError naming the
    `pending()` audio."""
    for attempt in range(backoff.max_attempts):
        await asyncio.sleep(backoff.delay(attempt))
        try:
            return await connect()
        except HearsayError as exc:
            if not exc.retryable:
                raise
            log.info("reconnect attempt %d failed: %s", attempt + 1, exc)
    raise ConnectionLostError(f"the connection dropped and {backoff.max_attempts} reconnects failed", pending())


def _add_span(spans: list[Span], start: int, end: int) -> None:
    if spans and spans[-1][1] == start:
        spans[-1] = (spans[-1][0], end)
    else:
        spans.append((start, end))
