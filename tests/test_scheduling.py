"""AsrScheduler with the real recognizer: finals first, and a final never queues behind
interims while a second worker exists."""

import asyncio

import numpy as np
import speech

from app.pipeline.engine import SpeechEngine
from app.pipeline.scheduling import AsrScheduler, Priority


async def test_a_final_does_not_wait_for_interims_already_running(loaded_engine: SpeechEngine) -> None:
    recognizer = loaded_engine.recognizer(None)
    long_turn = speech.load("jfk")  # 11 s: an interim of a long turn
    short_final = speech.load("ljspeech-LJ001-0002")  # 2.2 s
    scheduler = AsrScheduler(workers=2)
    scheduler.start()
    try:
        done: list[str] = []
        interims = [scheduler.submit(Priority.INTERIM, long_turn, recognizer, "en", False) for _ in range(4)]
        for future in interims:
            future.add_done_callback(lambda _: done.append("interim"))
        await asyncio.sleep(0)  # the workers take their jobs
        final = scheduler.submit(Priority.FINAL, short_final, recognizer, "en", False)
        final.add_done_callback(lambda _: done.append("final"))
        result = await final
        await asyncio.gather(*interims)
    finally:
        await scheduler.aclose()
        scheduler.close()
    # The second worker takes finals only, so the final ran at once beside the interims.
    # (When any worker took interims, both were busy with 11 s interims and it waited.)
    assert done[0] == "final", done
    assert speech.wer(speech.reference("ljspeech-LJ001-0002"), result.text) <= 1 / 4
    assert all("ask not" in f.result().text.lower() for f in interims)


async def test_interims_still_run_with_one_worker(loaded_engine: SpeechEngine) -> None:
    recognizer = loaded_engine.recognizer(None)
    scheduler = AsrScheduler(workers=1)
    scheduler.start()
    try:
        interim = scheduler.submit(Priority.INTERIM, speech.load("ljspeech-LJ001-0002"), recognizer, "en", False)
        result = await asyncio.wait_for(interim, 60)
    finally:
        await scheduler.aclose()
        scheduler.close()
    assert "modern" in result.text.lower()


async def test_a_withdrawn_job_is_not_run(loaded_engine: SpeechEngine) -> None:
    recognizer = loaded_engine.recognizer(None)
    scheduler = AsrScheduler(workers=1)
    scheduler.start()
    try:
        silence = np.zeros(16000, np.float32)
        first = scheduler.submit(Priority.FINAL, speech.load("jfk"), recognizer, "en", False)
        withdrawn = scheduler.submit(Priority.FINAL, silence, recognizer, "en", False)
        withdrawn.cancel()
        last = scheduler.submit(Priority.FINAL, speech.load("ljspeech-LJ001-0002"), recognizer, "en", False)
        texts = [r.text for r in await asyncio.gather(first, last)]
    finally:
        await scheduler.aclose()
        scheduler.close()
    assert withdrawn.cancelled()
    assert "country" in texts[0].lower() and "modern" in texts[1].lower()
