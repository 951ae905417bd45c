"""Shared fixtures. One speech engine (real Whisper tiny.en + Silero) serves the whole session."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.pipeline.engine import SpeechEngine
from app.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """The shipped defaults (settings.toml) without environment overrides."""
    return load_settings(REPO / "settings.toml", environ={})


@pytest.fixture(scope="session")
def loaded_engine(base_settings: Settings) -> Iterator[SpeechEngine]:
    engine = SpeechEngine.load(base_settings.asr, base_settings.vad)
    yield engine
    engine.close()


@pytest.fixture
async def engine(loaded_engine: SpeechEngine) -> AsyncIterator[SpeechEngine]:
    """The session's engine, its schedulers bound to the running loop for this test."""
    yield loaded_engine
    await loaded_engine.aclose()
