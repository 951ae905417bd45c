"""The examples run as a user runs them: `examples/echo_bot.py` answers a call through Hearsay."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from service_helpers import StartApp, heard_by_caller, make_settings, transcribe_mulaw
from speech import clip_path, reference, wer

from app.sim.twilio import SimCall, read_wav_mulaw, stream_call

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.realtime


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_echo_bot_says_back_what_the_caller_said(
    engine: Any, running_app: StartApp, tmp_path: Path
) -> None:
    bot = web.AppRunner(load_example("echo_bot").make_app("whsec_demo"))
    await bot.setup()
    site = web.TCPSite(bot, "127.0.0.1", 0)
    await site.start()
    try:
        port = bot.addresses[0][1]
        plans = tmp_path / "dialplans"
        plans.mkdir()
        (plans / "default.toml").write_text(
            f'name = "default"\n[match]\ntwilio_to = ["*"]\n'
            f'[webhook]\nurl = "http://127.0.0.1:{port}/hook"\nsecret = "whsec_demo"\n')
        # The voice loaded at start-up, as `make run` does, and the caller quiet for 6 s: the
        # greeting (call.started -> webhook -> say -> Piper -> playback, about 2.5 s of speech)
        # must be over before the caller talks, or the caller barges in on it. With 4 s and the
        # voice loaded on the first say, a loaded CI machine cut "repeat it" off the greeting.
        hearsay = await running_app(make_settings(tmp_path, talkback={"preload_voice": True}))
        url = hearsay.url("/twilio/media").replace("http://", "ws://")
        silence = b"\xff" * 8000
        caller = silence * 6 + read_wav_mulaw(clip_path("arctic-aew-a0003")) + silence * 7
        async with aiohttp.ClientSession() as session:
            result = await stream_call(session, SimCall(url=url, audio=caller, speed=1.0))
    finally:
        await bot.cleanup()
    heard = await transcribe_mulaw(engine, heard_by_caller(result))
    said = "Hello! Say something and I will repeat it. You said: " + reference("arctic-aew-a0003")
    # 20 words: the bot's greeting and the caller's words as Piper says them back, heard by
    # tiny.en through μ-law twice over (the caller's words were transcribed once already, so
    # a mistake there counts again here); 0-1 words differ here, so 4 allows three more.
    # (A clip full of names, "Philip Steels, etc.", came back 7 words off: plain words only.)
    assert wer(said, heard) <= 4 / 20, heard
