"""The live-caption page (`GET /`, app/ingress/page.py, app/static/) in a real browser:
Debian's chromium, headless, its fake microphone playing a clip, driven by Playwright. The
test presses Start as a person would and waits for the clip's words in the caption area and
for the quality meter to move.

Chromium plays the fake microphone in real time and loops it; the clip is 9.7 s, so its words
are on the page within about 12 s here (timeouts below are generous: 90 s).
"""

from __future__ import annotations

import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech
from service_helpers import StartApp, make_settings, reference, wer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CLIP = "ljspeech-LJ001-0001"
WORDS = len(reference(CLIP).split())

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)")


def launch(pw: Any, microphone: Path) -> Any:
    return pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        "--no-sandbox",  # CI containers run as root
    ])


async def test_start_shows_captions_and_quality(running_app: StartApp, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    server = await running_app(make_settings(tmp_path))
    async with async_playwright() as pw:
        browser = await launch(pw, speech.clip_path(CLIP))
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            await page.goto(server.url("/"))
            assert await page.get_by_role("button", name="Start captions").is_enabled()
            await page.get_by_role("button", name="Start captions").click()
            await page.locator("#recording").wait_for(state="visible")

            # The clip's words (27), as finals in the caption log.
            await page.wait_for_function(
                f"document.getElementById('final').textContent.split(/\\s+/).length >= {WORDS}", timeout=90_000)
            # The meter moved off its resting value, and a level is written out.
            await page.wait_for_function("document.getElementById('level').value > -60", timeout=30_000)
            level = await page.locator("#level-text").text_content()

            await page.get_by_role("button", name="Stop captions").click()
            await page.locator("#recording").wait_for(state="hidden")
            captions = await page.locator("#final").text_content()
            error = await page.locator("#error").text_content()
        finally:
            await browser.close()

    assert problems == [] and not error
    assert level and "dBFS" in level
    assert captions is not None
    heard = " ".join(captions.split()[:WORDS])
    # Through the browser's echo cancelling, noise suppression and Opus, and cut into
    # utterances where the browser's timing puts the pauses: 0 wrong here, 4 allowed.
    assert wer(reference(CLIP), heard) <= 4 / 27, captions


async def test_a_quiet_microphone_shows_a_warning(running_app: StartApp, tmp_path: Path) -> None:
    # The page turns the browser's automatic gain control off: with it on, chromium lifted
    # this -50 dBFS microphone to -24 dBFS and nobody was told. Measured here: -50 dBFS.
    from playwright.async_api import async_playwright

    clip = speech.load(CLIP).astype(np.float64)
    quiet = clip * np.sqrt(10 ** (-50 / 10) / np.mean(np.square(clip)))  # -50 dBFS
    microphone = tmp_path / "quiet.wav"
    with wave.open(str(microphone), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(np.round(quiet * 32768).astype("<i2").tobytes())
    server = await running_app(make_settings(tmp_path))
    async with async_playwright() as pw:
        browser = await launch(pw, microphone)
        try:
            page = await browser.new_page()
            await page.goto(server.url("/"))
            await page.get_by_role("button", name="Start captions").click()
            warning = page.locator("#warnings li[data-kind=low_volume]")
            await warning.first.wait_for(timeout=60_000)
            text = await warning.first.text_content()
            await page.get_by_role("button", name="Stop captions").click()
        finally:
            await browser.close()
    assert text and "dBFS" in text
