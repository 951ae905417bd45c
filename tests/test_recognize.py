"""Whisper on real utterances: the words heard, silence rejected, loops cut.

WER bounds are scored over several clips at once and set from what they measure on several
CTranslate2 kernel paths (see tests/test_engine.py) plus two more wrong words: one word is
several percent of WER on a short clip, and CPU families differ by about that much.
"""

import numpy as np
import pytest
import speech

from app.pipeline.decode import decode
from app.pipeline.engine import SpeechEngine
from app.pipeline.recognize import Context, Recognizer, cut_repetitions
from app.pipeline.resample import resample_whole
from app.pipeline.types import Encoding


@pytest.fixture(scope="module")
def recognizer(loaded_engine: SpeechEngine) -> Recognizer:
    return loaded_engine.recognizer(None)


def over_phone(clip_id: str) -> np.ndarray:
    return resample_whole(decode(speech.telephone(speech.load(clip_id)), Encoding.MULAW), 8000)


def references(clip_ids: list[str]) -> str:
    return " ".join(speech.reference(c) for c in clip_ids)


def test_hears_the_words_through_a_phone_channel(recognizer: Recognizer) -> None:
    clip_ids = ["jfk", "ljspeech-LJ001-0005", "arctic-aew-a0003", "cards-005"]  # 1 to 11 s
    results = [recognizer.transcribe(over_phone(c)) for c in clip_ids]
    text = " ".join(r.text for r in results)
    # 67 words; 3 wrong on every kernel path measured ("fellow America", "just be", "four of
    # close"): 4.5 %. A word costs 1.5 %: 8 % allows 5 wrong.
    assert speech.wer(references(clip_ids), text) <= 0.08, text
    for result in results:
        assert result.language == "en"
        assert 0.3 < result.confidence <= 1.0


def test_short_utterances_do_not_loop(recognizer: Recognizer) -> None:
    # the failure the spliced encoding exists to prevent: "ten of clubs ten of clubs ..."
    clip_ids = ["cards-001", "cards-003", "ljspeech-LJ001-0002", "ljspeech-LJ001-0008"]  # 1 to 2 s
    texts = [recognizer.transcribe(over_phone(c)).text for c in clip_ids]
    for clip_id, text in zip(clip_ids, texts, strict=True):
        assert len(text.split()) <= len(speech.reference(clip_id).split()) + 1, text
    # 14 words; none wrong on any kernel path measured. A word costs 7.1 %: 15 % allows 2.
    assert speech.wer(references(clip_ids), " ".join(texts)) <= 0.15, texts


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
    # A looping number has no spaces: its groups are words too.
    assert cut_repetitions("1,0001, 9,0002,10,0001,0001,0001,0001,0001,0001,0001,", 4) == (
        "1,0001, 9,0002,10,0001,0001,0001,0001,")
    assert cut_repetitions("Basel, Paris, Lyon and Vienna.", 1) == "Basel, Paris, Lyon and Vienna."


def test_a_batch_hears_what_each_utterance_alone_hears(recognizer: Recognizer) -> None:
    clips = ["arctic-aew-a0001", "cards-003", "ljspeech-LJ001-0005"]  # 1.5 s to 8 s: padded to the longest
    batch = recognizer.transcribe_batch([over_phone(c) for c in clips])
    assert len(batch) == len(clips)
    alone = [recognizer.transcribe(over_phone(c)) for c in clips]
    for clip_id, result in zip(clips, batch, strict=True):
        assert len(result.text.split()) <= len(speech.reference(clip_id).split()) + 3  # no loop on the short one
    batch_text, alone_text = " ".join(r.text for r in batch), " ".join(r.text for r in alone)
    # 36 words; the batch and each alone both get 1 wrong ("just be") on every kernel path
    # measured. Padding to the longest changes the encoder's input a little: 6 % lets the
    # batch have 2 more words wrong.
    assert speech.wer(references(clips), batch_text) <= speech.wer(references(clips), alone_text) + 0.06, batch_text


def test_a_context_is_heard_but_only_the_utterances_own_words_come_back(recognizer: Recognizer) -> None:
    # One sentence read over two clips, cut between them: the second part is decoded after the
    # first (its audio, and its text forced as the transcript's start).
    before_id, own_id = "ljspeech-LJ001-0012", "ljspeech-LJ001-0013"
    before, own = over_phone(before_id), over_phone(own_id)
    context = Context(np.concatenate([before, np.zeros(4800, np.float32)]), speech.reference(before_id))
    (result,) = recognizer.transcribe_batch([own], word_timestamps=True, sentence_end=True, contexts=[context])
    # 7 words ("than in the same operations with ugly ones"); 0 wrong measured. 30 % allows 2.
    assert speech.wer(speech.reference(own_id), result.text) <= 0.30, result.text
    assert "printing" not in result.text.lower()  # nothing of the context comes back
    # word times count from the utterance's own start, as without a context
    assert result.words and 0.0 <= result.words[0].start_s < 1.0, result.words
    assert result.words[-1].end_s <= len(own) / 16000 + 0.05
    assert 0.3 < result.confidence <= 1.0


def test_noise_after_speech_gives_no_words_with_a_context(recognizer: Recognizer) -> None:
    before = over_phone("ljspeech-LJ001-0012")
    context = Context(before, recognizer.transcribe(before).text)
    noise = speech.load("noise-dishes")[: 16000 * 8]
    for level in (0.05, 0.3):
        (result,) = recognizer.transcribe_batch([noise * level], sentence_end=True, contexts=[context])
        assert result.text == "", (level, result.text)


def test_a_long_fast_utterance_is_heard_to_its_end(recognizer: Recognizer) -> None:
    # Three caller passages in one breath from the Piper voice at 1.5 times its speed (about
    # 260 words a minute, no random noise): 63 words in 14.6 s, within one 15 s utterance.
    # CTranslate2 returns at most half of max_length tokens; before the budget was doubled the
    # transcript stopped at "12 Garden Street" (15 % WER, "Springfield" never heard).
    from piper.config import SynthesisConfig

    from app.bench.devsets import PASSAGES
    from app.talkback.tts import load_piper_voice

    voice = load_piper_voice()
    text = " ".join(PASSAGES[:3])
    config = SynthesisConfig(length_scale=0.65, noise_scale=0.0, noise_w_scale=0.0)
    pcm = np.concatenate([c.audio_int16_array for c in voice.synthesize(text, syn_config=config)])
    audio = resample_whole(pcm.astype(np.float32) / 32768, voice.config.sample_rate, 16000)
    assert len(audio) / 16000 < 15.0
    result = recognizer.transcribe(resample_whole(decode(speech.telephone(audio), Encoding.MULAW), 8000))
    assert "springfield" in result.text.lower(), result.text
    # 59 words once normalised; 4 wrong measured ("post goes to"). A word costs 1.7 %: 12 % allows 7.
    assert speech.wer(text, result.text) <= 0.12, result.text


def test_a_decode_that_loops_after_a_long_vocabulary_prompt_still_gives_a_result(recognizer: Recognizer) -> None:
    # A vocabulary of one phrase over and over fills the prompt (223 tokens, half of Whisper's
    # 448 decoder positions) and makes tiny.en repeat it instead of hearing the speech. Asked
    # for twice the utterance's token bound, the loop ran past position 448 and CTranslate2
    # raised ("No position encodings are defined for positions >= 448"): no final at all.
    audio = np.concatenate([over_phone("jfk"), over_phone("ljspeech-LJ001-0015")])[: 20 * 16000]
    result = recognizer.transcribe(audio, prompt="alpha beta gamma delta " * 100)
    assert len(result.text.split()) <= 40, result.text  # the loop is cut, not returned whole
