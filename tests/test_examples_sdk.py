"""The SDK examples run as a user runs them, against the real server, and print the right words."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from service_helpers import StartApp, make_settings
from speech import clip_path, reference, wer, words

from app.bench.media import encode

REPO = Path(__file__).resolve().parents[1]


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_realtime_example(running_app: StartApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = await running_app(make_settings(tmp_path))
    text = await load_example("sdk_realtime").main(str(clip_path("jfk")), server.url("/", "ws").rstrip("/"), fast=True)
    assert wer(reference("jfk"), text) <= 2 / 22
    assert "country" in capsys.readouterr().out


async def test_progressive_example_with_speakers_and_topics(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    import soundfile

    pcm, _ = soundfile.read(clip_path("conversation-pyannote-2spk"), dtype="int16")
    mp3 = tmp_path / "talk.mp3"
    mp3.write_bytes(encode(pcm, "mp3"))
    final = await load_example("sdk_progressive").main(str(mp3), server.url("/", "ws").rstrip("/"),
                                                       diarize=True, topics=True)
    assert len(final.speakers) == 2 and final.topics
    assert "New Jersey" in final.text


async def test_meeting_example(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    summary = await load_example("sdk_meeting").main(
        {"alice": str(clip_path("jfk")), "bob": str(clip_path("arctic-aew-a0003"))},
        server.url("/", "ws").rstrip("/"), fast=True)
    said = {s.id: " ".join(x.text for x in summary.segments if x.speaker == s.id) for s in summary.speakers}
    assert wer(reference("jfk"), said["alice"]) <= 2 / 22
    assert wer(reference("arctic-aew-a0003"), said["bob"]) <= 2 / words(reference("arctic-aew-a0003"))
