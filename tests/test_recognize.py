"""Whisper on real utterances: the words heard, silence rejected, loops cut."""

import numpy as np
import pytest
import speech

from app.pipeline.decode import decode
from app.pipeline.engine import SpeechEngine
from app.pipeline.events import Encoding
from app.pipeline.recognize import Recognizer, cut_repetitions
from app.pipeline.resample import resample_whole


@pytest.fixture(scope="module")
def recognizer(loaded_engine: SpeechEngine) -> Recognizer:
    return loaded_engine.recognizer(None)


def over_phone(clip_id: str) -> np.ndarray:
    return resample_whole(decode(speech.telephone(speech.load(clip_id)), Encoding.MULAW), 8000)


@pytest.mark.parametrize("clip_id,max_wer", [
    ("jfk", 0.10), ("ljspeech-LJ001-0005", 0.10), ("arctic-aew-a0003", 0.15), ("cards-005", 0.35),
])
def test_hears_the_words_through_a_phone_channel(recognizer: Recognizer, clip_id: str, max_wer: float) -> None:
    result = recognizer.transcribe(over_phone(clip_id))
    assert speech.wer(speech.reference(clip_id), result.text) <= max_wer, result.text
    assert result.language == "en"
    assert 0.3 < result.confidence <= 1.0


def test_short_utterance_does_not_loop(recognizer: Recognizer) -> None:
    # the failure the spliced encoding exists to prevent: "ten of clubs ten of clubs ..."
    text = recognizer.transcribe(over_phone("cards-001")).text
    assert speech.wer("ten of clubs", text) <= 0.34, text
    assert len(text.split()) <= 4


def test_silence_and_noise_give_no_words(recognizer: Recognizer) -> None:
    assert recognizer.transcribe(speech.silence(5.0)).text == ""
    noise = speech.load("noise-dishes")[: 16000 * 8]
    assert recognizer.transcribe(noise * 0.05).text == ""


def test_word_timings_fall_inside_the_audio(recognizer: Recognizer) -> None:
    result = recognizer.transcribe(over_phone("arctic-aew-a0003"), word_timestamps=True)
    assert len(result.words) >= 8
    starts = [w.start_s for w in result.words]
    assert starts == sorted(starts)
    assert result.words[0].start_s >= 0 and result.words[-1].end_s <= 3.6


def test_repetition_loops_are_cut() -> None:
    assert cut_repetitions("ten of clubs " * 6, 2) == "ten of clubs ten of clubs"
    assert cut_repetitions("yes yes yes yes yes yes yes", 4) == "yes yes yes yes"
    assert cut_repetitions("one zero zero zero one", 4) == "one zero zero zero one"


def test_a_batch_hears_what_each_utterance_alone_hears(recognizer: Recognizer) -> None:
    clips = ["arctic-aew-a0001", "cards-003", "ljspeech-LJ001-0005"]  # 1.5 s to 8 s: padded to the longest
    batch = recognizer.transcribe_batch([over_phone(c) for c in clips])
    assert len(batch) == len(clips)
    for clip_id, result in zip(clips, batch, strict=True):
        alone = recognizer.transcribe(over_phone(clip_id)).text
        assert speech.wer(speech.reference(clip_id), result.text) <= speech.wer(speech.reference(clip_id), alone) + 0.1
        assert len(result.text.split()) <= len(speech.reference(clip_id).split()) + 3  # no loop on the short one
