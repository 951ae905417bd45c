"""Text-to-speech (app/talkback/tts.py) with the real voices, heard by the real Whisper engine.

WER bounds. Piper's rendering is random (its noise scales), so each run hears a different
rendering; the bounds below come from 12 renderings of each Piper prompt on this machine's
kernels and 4 more on each of CT2_FORCE_CPU_ISA=AVX2/AVX512, ONEDNN_MAX_CPU_ISA=AVX2 and
CT2_USE_MKL=1 (espeak-ng is deterministic: one rendering per path), plus two more wrong words.
"""

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import speech
from piper.voice import PiperVoice

from app.pipeline import Transcript
from app.pipeline.engine import SpeechEngine
from app.pipeline.types import AudioFormat, Encoding
from app.settings import TalkbackSettings
from app.talkback import tts
from app.talkback.tts import Speaker, TtsError, UnknownVoiceError, VoiceUnavailableError

REPO = Path(__file__).resolve().parents[1]
BALANCE = "Your balance is four dollars and twenty cents. Is there anything else I can help you with?"
SHIPPED = "Thank you for calling. Your order has shipped and should arrive on Tuesday."
FOUR_SENTENCES = ("Thank you for calling. Your order has shipped. It should arrive on Tuesday. "
                  "Is there anything else I can help you with?")


@pytest.fixture(scope="module")
def speaker() -> Iterator[Speaker]:
    speaker = Speaker.load(TalkbackSettings())
    yield speaker
    speaker.close()


@pytest.fixture
def syntheses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts Piper is asked to render during the test (`PiperVoice.synthesize` calls)."""
    texts: list[str] = []
    synthesize = PiperVoice.synthesize

    def counted(self: PiperVoice, text: str, *args: object, **kwargs: object) -> object:
        texts.append(text)
        return synthesize(self, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PiperVoice, "synthesize", counted)
    return texts


async def render(speaker: Speaker, text: str, voice: str | None = None) -> tuple[bytes, int]:
    chunks = [chunk async for chunk in speaker.synthesize(text, voice)]
    assert chunks and {rate for _pcm, rate in chunks} == {speaker.sample_rate(voice)}
    return b"".join(pcm for pcm, _rate in chunks), chunks[0][1]


async def heard(engine: SpeechEngine, pcm: bytes, rate: int) -> str:
    """What Whisper hears in 16-bit PCM at `rate`, fed in 20 ms frames, then half a second of silence."""
    stream = engine.stream(AudioFormat(Encoding.LINEAR16, rate), interim_results=False)
    texts: list[str] = []

    async def collect() -> None:
        async for result in stream.results():  # SpeechEvents come too
            if isinstance(result, Transcript) and result.is_final:
                texts.append(result.text)

    collector = asyncio.create_task(collect())
    frame = 2 * rate // 50
    for i in range(0, len(pcm), frame):
        await stream.feed(pcm[i : i + frame])
    await stream.feed(bytes(2 * rate // 2))
    await stream.finish()
    await collector
    return " ".join(texts)


async def test_piper_speech_is_heard_as_the_prompt(speaker: Speaker, engine: SpeechEngine) -> None:
    assert speaker.default_voice == "joe" and speaker.sample_rate() == 22050
    pcm, rate = await render(speaker, BALANCE)
    assert 3.5 < len(pcm) / 2 / rate < 6.5  # about 4.7 s of speech: not a click, not a loop
    text = await heard(engine, pcm, rate)
    # 13 words; none wrong in any rendering on any kernel path measured. A word costs 7.7 %:
    # the bound allows 2 wrong.
    assert speech.wer(BALANCE, text) <= 2 / speech.words(BALANCE), text


async def test_the_first_sentence_is_out_before_the_rest_is_rendered(speaker: Speaker,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rendered_at: list[float] = []  # when each sentence's inference finished
    to_audio = PiperVoice.phoneme_ids_to_audio

    def timed(self: PiperVoice, *args: object, **kwargs: object) -> object:
        audio = to_audio(self, *args, **kwargs)  # type: ignore[arg-type]
        rendered_at.append(time.perf_counter())
        return audio

    monkeypatch.setattr(PiperVoice, "phoneme_ids_to_audio", timed)
    arrived_at: list[float] = []
    async for _chunk in speaker.synthesize(FOUR_SENTENCES):
        arrived_at.append(time.perf_counter())
    assert len(arrived_at) == len(rendered_at) == 4  # a chunk per sentence
    # The last three sentences take about 200 ms to render after the first is out.
    assert arrived_at[0] < rendered_at[-1]


async def test_a_listener_that_stops_stops_the_rendering(speaker: Speaker, syntheses: list[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    to_audio = PiperVoice.phoneme_ids_to_audio
    sentences = 0

    def counted(self: PiperVoice, *args: object, **kwargs: object) -> object:
        nonlocal sentences
        sentences += 1
        return to_audio(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PiperVoice, "phoneme_ids_to_audio", counted)
    eight = f"{FOUR_SENTENCES} {FOUR_SENTENCES}"
    async with contextlib.aclosing(speaker.synthesize(eight)) as chunks:
        async for _chunk in chunks:
            break  # a barge-in
    await asyncio.sleep(0.5)  # the rest would have rendered by now (about 60 ms a sentence)
    # The sentence rendering ahead when the listener stopped finishes (one more if the loop
    # was slow to pass on the first); none after it starts.
    assert sentences <= 3
    await render(speaker, eight)
    assert len(syntheses) == 2  # an interrupted rendering was not cached


async def test_a_repeated_prompt_comes_from_the_cache(speaker: Speaker, syntheses: list[str]) -> None:
    text = "Please hold while I look that up."
    first = await render(speaker, text)
    assert len(syntheses) == 1
    started = time.perf_counter()
    # Spacing is not spoken, so it is the same prompt; Piper renders differently each time, so
    # identical bytes also prove the audio is the cached rendering.
    assert await render(speaker, "  Please hold  while I look\nthat up. ") == first
    assert time.perf_counter() - started < 0.05  # a rendering takes about 100 ms
    assert len(syntheses) == 1
    await render(speaker, text, "espeak")  # another voice is another prompt
    await render(speaker, text + " Thanks.")
    assert len(syntheses) == 2


async def test_the_cache_keeps_the_last_cache_entries_prompts(syntheses: list[str]) -> None:
    speaker = Speaker.load(TalkbackSettings(cache_entries=2))
    try:
        for text in ["One.", "Two.", "One.", "Three.", "One.", "Two."]:  # LRU: Two goes when Three comes
            await render(speaker, text)
        assert len(syntheses) == 4
    finally:
        await speaker.aclose()
    with pytest.raises(TtsError, match="closed"):
        await render(speaker, "One.")


async def test_the_cache_holds_at_most_cache_max_bytes(syntheses: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    speaker = Speaker.load(TalkbackSettings(cache_entries=10))
    long, short = "This is the first prompt, and a rather long one.", "Two."
    try:
        a, _rate = await render(speaker, long)
        b, _rate = await render(speaker, short)
        monkeypatch.setattr(tts, "CACHE_MAX_BYTES", len(a) + len(b))
        await render(speaker, "Hi.")  # far shorter than the long one, which goes to make room
        assert len(syntheses) == 3
        await render(speaker, short)
        await render(speaker, "Hi.")
        assert len(syntheses) == 3
        await render(speaker, long)
        assert len(syntheses) == 4
        await render(speaker, f"{long} {long} {long}")  # more than the whole cache may hold
        await render(speaker, long)
        assert len(syntheses) == 5  # it was not kept, and pushed nothing out
    finally:
        await speaker.aclose()
    with pytest.raises(TtsError, match="closed"):
        await render(speaker, "One.")


async def test_closing_the_speaker_ends_a_rendering_with_an_error() -> None:
    speaker = Speaker.load(TalkbackSettings())
    chunks = speaker.synthesize(FOUR_SENTENCES)
    await anext(chunks)
    await speaker.aclose()
    with pytest.raises(TtsError, match="closed while speaking"):
        async with asyncio.timeout(10):  # not a hang
            async for _chunk in chunks:
                pass


async def test_blank_text_yields_nothing(speaker: Speaker) -> None:
    assert [chunk async for chunk in speaker.synthesize(" \n\t ")] == []
    assert [chunk async for chunk in speaker.synthesize("", "espeak")] == []


async def test_an_unknown_voice_names_the_voices(speaker: Speaker) -> None:
    with pytest.raises(UnknownVoiceError, match=r"unknown voice 'amy' \(voices: joe, espeak\)"):
        await render(speaker, "Hello.", "amy")
    with pytest.raises(ValueError, match="voices: joe, espeak"):
        speaker.sample_rate("amy")
    with pytest.raises(UnknownVoiceError, match="voices: joe, espeak"):
        Speaker.load(TalkbackSettings(voice="amy"))


async def test_espeak_speech_is_heard_as_the_prompt(speaker: Speaker, engine: SpeechEngine) -> None:
    assert "espeak" in speaker.voices
    chunks = [chunk async for chunk in speaker.synthesize(SHIPPED, "espeak")]
    assert len(chunks) > 1  # passed on in blocks while espeak-ng speaks
    pcm, rate = b"".join(pcm for pcm, _rate in chunks), chunks[0][1]
    assert rate == speaker.sample_rate("espeak") == 22050
    text = await heard(engine, pcm, rate)
    # 13 words; none wrong on any kernel path measured (BALANCE loses 2, "help you with" heard
    # as "tell you will", on every path). A word costs 7.7 %: the bound allows 2 wrong.
    assert speech.wer(SHIPPED, text) <= 2 / speech.words(SHIPPED), text


async def test_without_espeak_ng_the_espeak_voice_says_how_to_install_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on it
    with pytest.raises(VoiceUnavailableError, match="apt-get install espeak-ng"):
        Speaker.load(TalkbackSettings(voice="espeak"))
    speaker = Speaker.load(TalkbackSettings())
    try:
        assert speaker.voices == ("joe",)
        with pytest.raises(VoiceUnavailableError, match="apt-get install espeak-ng"):
            await render(speaker, "Hello.", "espeak")
        assert (await render(speaker, "Hello."))[0]  # joe still speaks
    finally:
        await speaker.aclose()


def say(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "say", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.process
async def test_say_writes_a_wav_whose_words_are_heard(tmp_path: Path, engine: SpeechEngine) -> None:
    out = tmp_path / "balance.wav"
    proc = await asyncio.to_thread(say, BALANCE, "-o", str(out), "--rate", "8000")
    assert proc.returncode == 0, proc.stderr
    info = soundfile.info(out)
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
    samples, _rate = soundfile.read(out, dtype="int16")
    text = await heard(engine, samples.astype("<i2").tobytes(), 8000)
    # 13 words; none wrong at 8 kHz in any rendering on any kernel path measured. A word costs
    # 7.7 %: the bound allows 2 wrong.
    assert speech.wer(BALANCE, text) <= 2 / speech.words(BALANCE), text
    assert np.abs(samples).max() > 8000  # speech at a level a caller hears, not near-silence


@pytest.mark.process
@pytest.mark.parametrize(("args", "message"), [
    (["Hello.", "--voice", "amy"], "error: unknown voice 'amy' (voices: joe, espeak)"),
    (["Hello.", "--rate", "4000"], "error: --rate 4000 is outside 8000-48000 Hz"),
    (["   "], "error: nothing to say: the text is empty"),
])
def test_say_refuses_bad_input_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out.wav"
    proc = say(*args, "-o", str(out))
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [message])
    assert not out.exists()


@pytest.mark.process
def test_say_refuses_a_path_it_cannot_write(tmp_path: Path) -> None:
    proc = say("Hello.", "-o", str(tmp_path / "missing" / "out.wav"))
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (
        2, [f"error: cannot write {tmp_path / 'missing' / 'out.wav'}: No such file or directory"])
