"""Shared fixtures: the test kit.

- `loaded_engine` / `engine`: one speech engine (real Whisper tiny.en + Silero) for the session;
- `consumer`: a real webhook consumer (`app.bench.consumer.WebhookConsumer`) on 127.0.0.1,
  checking signatures made with `service_helpers.SECRET`;
- `running_app`: starts the real app (`create_app`) on 127.0.0.1, an ephemeral port, sharing
  the session's engine; everything it started is closed after the test.

Plain helpers (clips, settings, dialplans, WebSocket I/O) are in `service_helpers.py`, real
speech and WER in `speech.py`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_helpers import SECRET, StartApp

from app.bench.common import RunningApp
from app.bench.consumer import WebhookConsumer
from app.pipeline.engine import SpeechEngine
from app.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """The shipped defaults (settings.toml) without environment overrides."""
    return load_settings(REPO / "settings.toml", environ={})


@pytest.fixture(scope="session")
def loaded_engine(base_settings: Settings) -> Iterator[SpeechEngine]:
    engine = SpeechEngine.load(base_settings.asr, base_settings.vad, turn=base_settings.turn)
    yield engine
    engine.close()


@pytest.fixture
async def engine(loaded_engine: SpeechEngine) -> AsyncIterator[SpeechEngine]:
    """The session's engine, its schedulers bound to the running loop for this test."""
    yield loaded_engine
    await loaded_engine.aclose()


@pytest.fixture
async def consumer() -> AsyncIterator[WebhookConsumer]:
    """The voice assistant's webhook: `consumer.url` takes events signed with `SECRET`."""
    async with WebhookConsumer(SECRET) as hook:
        yield hook


@pytest.fixture
async def running_app(engine: SpeechEngine, consumer: WebhookConsumer) -> AsyncIterator[StartApp]:
    """`await running_app(settings)` serves the real app with the session's engine and returns
    its `RunningApp` (`.app`, `.host`, `.url(path)`, `.close()`); `own_engine=True` lets the app
    load one from `settings` instead. Start-up errors (a bad dialplan) raise from the call.

    The apps close before `consumer` stops, so what they flush at shutdown still arrives."""
    started: list[RunningApp] = []

    async def start(settings: Settings, *, own_engine: bool = False) -> RunningApp:
        running = await RunningApp.start(settings, engine=None if own_engine else engine)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.close()


@pytest.fixture
def a_bug_in_the_turn_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine stream's turn policy raises at its first judged pause: it stands in for
    any unexpected error inside a stream's processing (`monkeypatch.undo()` takes it away)."""
    def broken(*args: object) -> float:
        raise RuntimeError("a bug")

    monkeypatch.setattr("app.pipeline.engine_stream.end_after_s", broken)
