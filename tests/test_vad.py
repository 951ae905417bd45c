"""Silero VAD segmentation on real speech."""

import itertools

import numpy as np
import pytest
import speech

from app.pipeline.vad import SileroVAD, SpeechPaused, SpeechStarted, UtteranceEnded
from app.settings import VadSettings


@pytest.fixture(scope="module")
def model() -> SileroVAD:
    return SileroVAD.load()


def run(model: SileroVAD, audio: np.ndarray, settings: VadSettings | None = None) -> list[object]:
    stream = model.stream(settings or VadSettings())
    events: list[object] = []
    for i in range(0, len(audio), 320):  # 20 ms blocks
        stream.append(audio[i : i + 320])
        while stream.ready:
            model.infer([stream])
            events += stream.take_events()
    return events + stream.flush()


def ended(events: list[object]) -> list[UtteranceEnded]:
    return [e for e in events if isinstance(e, UtteranceEnded)]


def test_two_sentences_apart_give_two_utterances_at_the_right_times(model: SileroVAD) -> None:
    a, b = speech.load("ljspeech-LJ001-0002"), speech.load("ljspeech-LJ001-0008")
    audio = np.concatenate([speech.silence(1.0), a, speech.silence(1.5), b, speech.silence(1.0)])
    utts = ended(run(model, audio))
    assert len(utts) == 2
    b_start = 1.0 + len(a) / 16000 + 1.5
    assert 0.4 <= utts[0].start_s <= 1.4 and utts[0].end_s <= b_start  # pre-roll reaches back
    assert b_start - 0.6 <= utts[1].start_s <= b_start + 0.5
    assert utts[1].end_s <= len(audio) / 16000
    # the utterance audio is the span it claims
    assert abs(len(utts[0].audio) / 16000 - (utts[0].end_s - utts[0].start_s)) < 0.01


def test_silence_gives_no_events(model: SileroVAD) -> None:
    assert run(model, speech.silence(10.0)) == []


def test_pause_is_announced_before_the_end(model: SileroVAD) -> None:
    audio = np.concatenate([speech.load("cards-003"), speech.silence(1.0)])
    events = run(model, audio)
    kinds = [type(e) for e in events]
    assert kinds.index(SpeechStarted) < kinds.index(SpeechPaused) < kinds.index(UtteranceEnded)
    paused = next(e for e in events if isinstance(e, SpeechPaused))
    assert paused.end_s == ended(events)[0].end_s  # the speculative audio is the final audio


def test_long_speech_is_cut_at_max_utterance(model: SileroVAD) -> None:
    audio = np.concatenate([speech.load("ljspeech-LJ001-0001"), speech.load("ljspeech-LJ001-0003")])
    utts = ended(run(model, audio, VadSettings(max_utterance_s=6.0)))
    assert len(utts) >= 3
    assert all(u.end_s - u.start_s <= 6.05 for u in utts)
    assert any(u.forced for u in utts)
    # the cuts leave no gap: consecutive forced pieces meet
    for first, second in itertools.pairwise(utts):
        if first.forced:
            assert abs(second.start_s - first.end_s) < 0.05


def test_short_click_is_not_an_utterance(model: SileroVAD) -> None:
    burst = speech.load("cards-001")[4000:5600]  # 100 ms of speech
    audio = np.concatenate([speech.silence(1.0), burst, speech.silence(1.0)])
    assert ended(run(model, audio, VadSettings(min_speech_ms=250))) == []
