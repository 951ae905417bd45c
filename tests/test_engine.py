"""The whole engine stream on real speech through a phone channel."""

import asyncio

import numpy as np
import pytest
import speech

from app.pipeline.engine import SpeechEngine
from app.pipeline.errors import AudioFormatError, UnknownModelError
from app.pipeline.events import AudioFormat, Encoding, Transcript

ULAW_8K = AudioFormat(Encoding.MULAW, 8000)


async def run_stream(engine: SpeechEngine, payload: bytes, audio: AudioFormat = ULAW_8K,
                     frame: int = 160, pace_s: float = 0.0, **options: object) -> list[Transcript]:
    stream = engine.stream(audio, **options)  # type: ignore[arg-type]
    results: list[Transcript] = []

    async def collect() -> None:
        async for t in stream.results():
            results.append(t)

    collector = asyncio.create_task(collect())
    for i in range(0, len(payload), frame):
        await stream.feed(payload[i : i + frame])
        if pace_s:
            await asyncio.sleep(pace_s)
    await stream.finish()
    await collector
    return results


def finals(results: list[Transcript]) -> list[Transcript]:
    return [t for t in results if t.is_final]


async def test_a_call_is_heard_word_for_word(engine: SpeechEngine) -> None:
    audio = np.concatenate([speech.load("jfk"), speech.silence(1.0)])
    results = await run_stream(engine, speech.telephone(audio))
    text = " ".join(t.text for t in finals(results))
    assert speech.wer(speech.reference("jfk"), text) <= 0.10, text
    assert [t.index for t in finals(results)] == sorted(t.index for t in finals(results))


async def test_two_sentences_become_two_finals_with_their_times(engine: SpeechEngine) -> None:
    a, b = speech.load("ljspeech-LJ001-0008"), speech.load("timit-LDC93S1")
    audio = np.concatenate([speech.silence(0.5), a, speech.silence(1.5), b, speech.silence(1.0)])
    got = finals(await run_stream(engine, speech.telephone(audio)))
    assert len(got) == 2, [t.text for t in got]
    assert speech.wer(speech.reference("ljspeech-LJ001-0008"), got[0].text) <= 0.2
    assert speech.wer(speech.reference("timit-LDC93S1"), got[1].text) <= 0.3
    b_start = 0.5 + len(a) / 16000 + 1.5
    assert 0.0 <= got[0].start_s < got[0].end_s <= b_start
    assert b_start - 0.6 <= got[1].start_s < got[1].end_s <= len(audio) / 16000 + 0.01


async def test_linear16_at_16k_and_alaw_work_too(engine: SpeechEngine) -> None:
    x = np.concatenate([speech.load("arctic-aew-a0001"), speech.silence(1.0)])
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    got = finals(await run_stream(engine, pcm, AudioFormat(Encoding.LINEAR16, 16000), frame=640))
    assert speech.wer(speech.reference("arctic-aew-a0001"), " ".join(t.text for t in got)) <= 0.3


async def test_sixty_seconds_of_silence_and_the_noise_clip_give_no_words(engine: SpeechEngine) -> None:
    assert await run_stream(engine, speech.telephone(speech.silence(60.0)), frame=1600) == []
    noise = speech.load("noise-dishes")[: 16000 * 60]
    assert finals(await run_stream(engine, speech.telephone(noise), frame=1600)) == []


async def test_interim_results_arrive_before_the_final(engine: SpeechEngine) -> None:
    audio = np.concatenate([speech.load("ljspeech-LJ001-0005"), speech.silence(1.0)])
    results = await run_stream(engine, speech.telephone(audio), frame=800, pace_s=0.02)
    interims = [t for t in results if not t.is_final]
    assert interims, "no interim result for an 8 s sentence"
    first_final = results.index(finals(results)[0])
    assert results.index(interims[0]) < first_final
    assert all(t.start_s <= t.end_s for t in results)


async def test_bad_formats_are_refused_with_a_reason(engine: SpeechEngine) -> None:
    with pytest.raises(AudioFormatError, match="4000 Hz"):
        engine.stream(AudioFormat(Encoding.LINEAR16, 4000))
    with pytest.raises(UnknownModelError, match="not loaded"):
        engine.stream(ULAW_8K, model="pro")
    with pytest.raises(UnknownModelError, match="multilingual"):
        engine.stream(ULAW_8K, language="de")
    stream = engine.stream(AudioFormat(Encoding.LINEAR16, 16000))
    with pytest.raises(AudioFormatError, match="even number of bytes"):
        await stream.feed(b"\x00\x01\x02")
    await stream.finish()
    with pytest.raises(AudioFormatError, match="finished"):
        stream.push(b"\x00\x00")


async def test_two_streams_at_once_keep_their_own_words(engine: SpeechEngine) -> None:
    a = np.concatenate([speech.load("ljspeech-LJ001-0002"), speech.silence(1.0)])
    b = np.concatenate([speech.load("arctic-aew-a0003"), speech.silence(1.0)])
    ra, rb = await asyncio.gather(run_stream(engine, speech.telephone(a)), run_stream(engine, speech.telephone(b)))
    ta, tb = " ".join(t.text for t in finals(ra)), " ".join(t.text for t in finals(rb))
    assert speech.wer(speech.reference("ljspeech-LJ001-0002"), ta) <= 0.25, ta
    assert speech.wer(speech.reference("arctic-aew-a0003"), tb) <= 0.25, tb
