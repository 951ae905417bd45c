"""The echo gate on its own clock: what we play, when it plays, and what counts as its echo."""

from __future__ import annotations

import numpy as np

from app.calls.echo import WINDOW_S, EchoGate


def tone(seconds: float, amplitude: float, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def pcm(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def test_audio_20_db_below_the_prompt_is_echo_and_louder_speech_is_not() -> None:
    gate = EchoGate(margin_db=10)
    assert not gate.armed and not gate.is_echo(tone(0.02, 0.001), now=0.0)
    gate.played(pcm(tone(2.0, 0.5)), 8000, now=100.0)  # plays from 100.0 to 102.0
    assert gate.is_echo(tone(0.02, 0.05), now=100.5)  # -20 dB: the line's echo
    assert not gate.is_echo(tone(0.02, 0.4), now=100.5)  # the caller talking over it
    assert gate.is_echo(tone(0.02, 0.05), now=102.0 + WINDOW_S - 0.05)  # echo comes late
    assert not gate.is_echo(tone(0.02, 0.05), now=102.0 + WINDOW_S + 0.1)  # long over
    assert not gate.is_echo(tone(0.02, 0.05), now=99.0)  # before it played
    assert gate.gated == 2


def test_queued_audio_plays_after_what_is_queued_and_clear_drops_the_rest() -> None:
    gate = EchoGate(margin_db=10)
    gate.played(pcm(tone(1.0, 0.5)), 8000, now=10.0)
    gate.played(pcm(tone(1.0, 0.5)), 8000, now=10.2)  # queued: plays from 11.0 to 12.0
    assert gate.is_echo(tone(0.02, 0.05), now=11.8)
    gate.cleared(now=10.5)  # barge-in: nothing after 10.5 plays
    assert gate.is_echo(tone(0.02, 0.05), now=10.9)  # what did play may still echo
    assert not gate.is_echo(tone(0.02, 0.05), now=11.8)
    gate.played(pcm(tone(0.5, 0.5)), 8000, now=10.6)  # after a clear, plays at once
    assert gate.is_echo(tone(0.02, 0.05), now=10.8)
