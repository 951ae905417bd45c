"""The jitter buffer puts Twilio media on the call timeline by timestamp."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.ingress.twilio_jitter import MULAW_SILENCE, JitterBuffer

FRAME = 160  # 20 ms at 8 kHz


def frame(n: int) -> bytes:
    """A recognisable 20 ms chunk: every byte says which frame it was."""
    return bytes([n % 250]) * FRAME


def play(buffer: JitterBuffer, frames: list[tuple[int, bytes]]) -> bytes:
    return b"".join(buffer.put(ts, payload) for ts, payload in frames) + buffer.flush()


def test_in_order_chunks_come_straight_back() -> None:
    buffer = JitterBuffer()
    for n in range(5):
        assert buffer.put(n * 20, frame(n)) == frame(n)
    assert buffer.flush() == b""
    assert buffer.position == 5 * FRAME


def test_swapped_chunks_are_put_back_in_order() -> None:
    buffer = JitterBuffer()
    assert buffer.put(0, frame(0)) == frame(0)
    assert buffer.put(40, frame(2)) == b""  # held: frame 1 is missing
    assert buffer.put(20, frame(1)) == frame(1) + frame(2)


def test_duplicates_are_dropped() -> None:
    buffer = JitterBuffer()
    out = play(buffer, [(0, frame(0)), (20, frame(1)), (20, frame(1)), (0, frame(0)), (40, frame(2))])
    assert out == frame(0) + frame(1) + frame(2)
    assert buffer.duplicates == 2


def test_a_lost_chunk_becomes_silence_once_the_window_passes() -> None:
    buffer = JitterBuffer(window_ms=60)
    out = buffer.put(0, frame(0))
    for n in range(2, 7):  # frame 1 never arrives
        out += buffer.put(n * 20, frame(n))
    assert out[:FRAME] == frame(0)
    assert out[FRAME : 2 * FRAME] == bytes([MULAW_SILENCE]) * FRAME
    assert out[2 * FRAME :].startswith(frame(2))
    assert buffer.silence_samples == FRAME


def test_a_chunk_later_than_the_window_is_dropped_not_misplaced() -> None:
    buffer = JitterBuffer(window_ms=40)
    frames = [(0, frame(0))] + [(n * 20, frame(n)) for n in range(2, 6)] + [(20, frame(1))]
    out = play(buffer, frames)
    assert len(out) == 6 * FRAME
    assert out[FRAME : 2 * FRAME] == bytes([MULAW_SILENCE]) * FRAME


def test_stream_starting_late_is_padded_from_zero() -> None:
    buffer = JitterBuffer()
    out = play(buffer, [(100, frame(5)), (120, frame(6))])
    assert out == bytes([MULAW_SILENCE]) * (5 * FRAME) + frame(5) + frame(6)


def test_overlapping_chunk_is_trimmed() -> None:
    buffer = JitterBuffer()
    out = play(buffer, [(0, bytes([1]) * 320), (20, bytes([2]) * 320)])
    assert out == bytes([1]) * 320 + bytes([2]) * 160


def test_a_huge_timestamp_jump_inserts_at_most_max_gap() -> None:
    buffer = JitterBuffer(max_gap_ms=1000)
    out = play(buffer, [(0, frame(0)), (10**9, frame(1)), (10**9 + 20, frame(2))])
    assert len(out) == 3 * FRAME + 8000
    assert out.endswith(frame(1) + frame(2))
    assert buffer.discontinuities == 1


@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=60))
def test_reordering_within_the_window_restores_the_stream(delays: list[int]) -> None:
    """Each frame may arrive up to 3 frames late; the output is always the original."""
    arrivals = sorted(range(len(delays)), key=lambda n: (n + delays[n], n))
    buffer = JitterBuffer(window_ms=100)
    out = play(buffer, [(n * 20, frame(n)) for n in arrivals])
    assert out == b"".join(frame(n) for n in range(len(delays)))
    assert buffer.silence_samples == 0
