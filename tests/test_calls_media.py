"""The outbound side's shared parts: PCM cut into 20 ms frames at the peer's rate, and the
paced player that sends them on the loop's clock (what Twilio calls use)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.calls.media import LEAD_FRAMES, MediaUnsupported, PacedPlayer, PlaybackState, frames_of


def tone(seconds: float, rate: int, hz: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def test_frames_are_20_ms_at_the_peer_rate_and_keep_the_pitch() -> None:
    frames = frames_of(tone(1.01, 16000), 16000, 8000)
    assert len(frames) == 51 and {len(f) for f in frames} == {320}  # the last one padded
    samples = np.frombuffer(b"".join(frames[:50]), "<i2").astype(np.float32)
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.argmax(spectrum) * 8000 / len(samples) == pytest.approx(440, abs=2)
    assert np.frombuffer(frames[-1][-100:], "<i2").any() == False  # noqa: E712 (padding is silence)
    with pytest.raises(ValueError, match="even number of bytes"):
        frames_of(b"\0\0\0", 8000, 8000)


async def test_the_player_paces_frames_in_real_time_and_finishes() -> None:
    loop = asyncio.get_running_loop()
    sent: list[float] = []

    async def send(frame: bytes) -> None:
        assert len(frame) == 320
        sent.append(loop.time())

    player = PacedPlayer(8000, send)
    started = loop.time()
    playback = player.play(tone(1.0, 16000), 16000)
    assert await asyncio.wait_for(playback.wait(), 5) is PlaybackState.FINISHED
    assert playback.frames_played == playback.frames == len(sent) == 50
    # The last frame leaves LEAD_FRAMES early, so 50 frames take 49 - LEAD_FRAMES frame times;
    # the upper bound only guards against a player that is far too slow (a loaded machine).
    elapsed = sent[-1] - started
    assert (49 - LEAD_FRAMES) * 0.02 - 0.01 <= elapsed <= 3.0
    await player.aclose()


async def test_clear_interrupts_the_queue_and_closing_refuses_more() -> None:
    sent: list[bytes] = []

    async def send(frame: bytes) -> None:
        sent.append(frame)

    player = PacedPlayer(8000, send)
    first = player.play(tone(2.0, 8000), 8000)
    second = player.play(tone(1.0, 8000), 8000)
    await asyncio.sleep(0.3)
    assert player.clear() == [first, second]
    assert await first.wait() is await second.wait() is PlaybackState.INTERRUPTED
    assert 0 < first.frames_played < first.frames and second.frames_played == 0
    count = len(sent)
    await asyncio.sleep(0.1)
    assert len(sent) == count  # nothing goes out after the clear
    await player.aclose()
    with pytest.raises(MediaUnsupported):
        player.play(tone(0.1, 8000), 8000)
