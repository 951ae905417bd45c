"""Silero VAD segmentation on real speech."""

import itertools
import re

import numpy as np
import pytest
import speech

from app.pipeline.vad import CHUNK, SileroVAD, SpeechPaused, SpeechResumed, SpeechStarted, UtteranceEnded
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


def assert_each_start_is_ended(events: list[object]) -> None:
    """Utterance by utterance: started, (paused, resumed)*, [paused], ended, at the same start."""
    letters = {SpeechStarted: "S", SpeechPaused: "P", SpeechResumed: "R", UtteranceEnded: "E"}
    kinds = "".join(letters[type(e)] for e in events)
    assert re.fullmatch(r"(S(PR)*P?E)*", kinds), kinds
    starts = [e.start_s for e in events if isinstance(e, SpeechStarted)]
    assert starts == [e.start_s for e in ended(events)]


def test_two_sentences_apart_give_two_utterances_at_the_right_times(model: SileroVAD) -> None:
    a, b = speech.load("ljspeech-LJ001-0002"), speech.load("ljspeech-LJ001-0008")
    audio = np.concatenate([speech.silence(1.0), a, speech.silence(1.5), b, speech.silence(1.0)])
    events = run(model, audio)
    assert_each_start_is_ended(events)
    utts = ended(events)
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
    events = run(model, audio, VadSettings(max_utterance_s=6.0))
    assert_each_start_is_ended(events)
    utts = ended(events)
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
    assert run(model, audio, VadSettings(min_speech_ms=250)) == []  # not even SpeechStarted
    # the same burst is announced (and then ended) once it is long enough to count
    events = run(model, audio, VadSettings(min_speech_ms=32))
    assert [type(e) for e in events] == [SpeechStarted, SpeechPaused, UtteranceEnded]


def test_speech_is_announced_once_it_has_lasted_min_speech(model: SileroVAD) -> None:
    audio = np.concatenate([speech.silence(1.0), speech.load("cards-003"), speech.silence(1.0)])

    def announced(settings: VadSettings) -> tuple[float, float]:
        """(stream time when SpeechStarted came, its start_s)"""
        stream = model.stream(settings)
        for k in range(0, len(audio), CHUNK):
            stream.append(audio[k : k + CHUNK])
            while stream.ready:
                model.infer([stream])
                started = [e for e in stream.take_events() if isinstance(e, SpeechStarted)]
                if started:
                    return (k + CHUNK) / 16000, started[0].start_s
        raise AssertionError("speech never announced")

    at_once, start = announced(VadSettings(min_speech_ms=0))
    later, same_start = announced(VadSettings(min_speech_ms=200))
    assert same_start == start  # announced late, but it tells where the speech began
    assert later - at_once >= 6 * CHUNK / 16000  # 7 voiced chunks make 200 ms; the 1st announced at once


def run_turns(model: SileroVAD, audio: np.ndarray, verdict_s: float) -> list[object]:
    """As `run`, in turn mode: every pause waits for a verdict, which is `verdict_s`."""
    stream = model.stream(VadSettings(), turn_silence_s=1.2)
    events: list[object] = []
    for i in range(0, len(audio), 320):
        stream.append(audio[i : i + 320])
        while stream.ready or stream.awaiting_verdict:
            if stream.awaiting_verdict:
                assert stream.ready == 0  # nothing is classified past a pause being judged
                stream.resolve_pause(verdict_s)
            else:
                model.infer([stream])
            events += stream.take_events()
    return events + stream.flush()


def test_a_pause_judged_unfinished_keeps_the_sentence_whole(model: SileroVAD) -> None:
    # One LJSpeech sentence read over two clips, with a 0.6 s pause between them.
    a, b = speech.load("ljspeech-LJ001-0001"), speech.load("ljspeech-LJ001-0002")
    audio = np.concatenate([a, speech.silence(0.6), b, speech.silence(2.0)])
    held = run_turns(model, audio, verdict_s=1.2)
    assert_each_start_is_ended(held)
    assert len(ended(held)) == 1  # resumed speech continues the same utterance
    assert any(isinstance(e, SpeechResumed) for e in held)
    # Verdicts of "finished" end it at the pauses (the reader's comma after "concerned" too),
    # as min_silence_ms does without a model.
    assert len(ended(run_turns(model, audio, verdict_s=0.35))) == len(ended(run(model, audio))) >= 2


def test_without_a_verdict_a_pause_waits_for_max_silence(model: SileroVAD) -> None:
    audio = np.concatenate([speech.load("cards-003"), speech.silence(1.0)])
    stream = model.stream(VadSettings(), turn_silence_s=1.2)
    stream.append(audio)
    while stream.ready:
        model.infer([stream])
    assert stream.awaiting_verdict and stream.ready == 0
    assert [type(e) for e in stream.take_events()] == [SpeechStarted, SpeechPaused]
    # The stream ends before any verdict: the utterance is still closed, once.
    assert [type(e) for e in stream.flush()] == [UtteranceEnded]
