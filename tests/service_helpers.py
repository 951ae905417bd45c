"""Plain helpers for the service tests: clips as PCM bytes, WER, settings and dialplans in
tmp_path, and a WebSocket client's sending and reading.

Not a test module itself. The running app and the webhook consumer are fixtures
(`running_app`, `consumer` in conftest.py); everything here is a plain function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import speech

from app.bench.common import RunningApp
from app.settings import Settings, load_settings

SECRET = "whsec_test"  # the webhook secret of the test dialplans and of the `consumer` fixture

# The type of the `running_app` fixture: `await running_app(settings, own_engine=False)`.
StartApp = Callable[..., Awaitable[RunningApp]]


def clip(name: str) -> bytes:
    """The clip's PCM s16le samples (16 kHz mono)."""
    with wave.open(str(speech.clip_path(name)), "rb") as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        return wav.readframes(wav.getnframes())


reference = speech.reference
wer = speech.wer


def telephone(pcm16k: bytes) -> bytes:
    """16 kHz PCM as a caller's phone sends it: 8 kHz G.711 mu-law."""
    return speech.telephone(np.frombuffer(pcm16k, "<i2").astype(np.float32) / 32768)


def silence(seconds: float, rate: int = 16000) -> bytes:
    return b"\x00\x00" * int(seconds * rate)


def write_dialplan(directory: Path, name: str, url: str = "", *, secret: str = SECRET,
                   interim: bool = False, catch_all: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    match = '["*"]' if catch_all else "[]"
    (directory / f"{name}.toml").write_text(
        f'name = "{name}"\n[match]\nsip_user = {match}\ntwilio_to = {match}\n'
        f'[webhook]\nurl = "{url}"\nsecret = "{secret}"\n'
        f'[recognition]\nlanguage = "en"\nmodel = "mini"\ninterim_results = {str(interim).lower()}\n')


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Default settings with the outbox and dialplans in `tmp_path` and SIP off, plus overrides
    given per section (e.g. `stream={"max_sessions": 1}`)."""
    base = load_settings(None, environ={})
    dialplans = tmp_path / "dialplans"
    dialplans.mkdir(exist_ok=True)
    changes: dict[str, Any] = {
        "webhooks": dataclasses.replace(base.webhooks, outbox=str(tmp_path / "outbox.sqlite3"),
                                        backoff_initial_s=0.1, backoff_max_s=0.5),
        "dialplans": dataclasses.replace(base.dialplans, dir=str(dialplans)),
        "sip": dataclasses.replace(base.sip, enabled=False),
        # The voice loads on the first `say` (a test that never speaks does not pay for it).
        "talkback": dataclasses.replace(base.talkback, preload_voice=False),
        "http": dataclasses.replace(base.http, host="127.0.0.1", port=0),
        # The tests share one engine and feed it unlike callers do (whole clips at once, so their
        # finals come late by design); the learned call limit has tests of its own (test_calls,
        # test_lateness).
        "asr": dataclasses.replace(base.asr, busy_late_ms=0),
    }
    for section, values in sections.items():
        current = changes.get(section, getattr(base, section))
        changes[section] = dataclasses.replace(current, **values)
    return dataclasses.replace(base, **changes)


async def until(ready: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Return once `ready()` is truthy, polled every 5 ms: for state that has no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while not ready():  # noqa: ASYNC110 (polled state, nothing to await)
            await asyncio.sleep(0.005)


async def send_audio(ws: aiohttp.ClientWebSocketResponse, audio: bytes, *, chunk: int = 3200,
                     binary: bool = True, pause_s: float = 0.0) -> None:
    """Send `audio` in chunks (binary or base64 JSON), as fast as the server takes it or with
    `pause_s` between chunks."""
    import base64

    for i in range(0, len(audio), chunk):
        if pause_s and i:
            await asyncio.sleep(pause_s)
        part = audio[i:i + chunk]
        if binary:
            await ws.send_bytes(part)
        else:
            await ws.send_json({"type": "audio_data", "audio": base64.b64encode(part).decode()})


async def receive_all(ws: aiohttp.ClientWebSocketResponse, wait_s: float = 120.0,
                      into: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every message the server sends until it closes the socket (each must be JSON text),
    appended to `into` as they arrive if given (for a reader running beside the sender)."""
    messages = [] if into is None else into
    async with asyncio.timeout(wait_s):
        async for msg in ws:
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            messages.append(json.loads(msg.data))
    return messages


async def next_message(ws: aiohttp.ClientWebSocketResponse, wait_s: float = 30.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=wait_s)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    result: dict[str, Any] = json.loads(msg.data)
    return result


def heard_by_caller(result: Any) -> bytes:
    """The μ-law audio a Twilio simulator call (`SimResult`) received from the server, in order."""
    return b"".join(m.payload for m in result.received if type(m).__name__ == "OutboundMedia")


async def transcribe_mulaw(engine: Any, mulaw: bytes) -> str:
    """What the engine hears in 8 kHz μ-law audio: the finals' text, joined."""
    from app.pipeline.types import AudioFormat, Encoding, Transcript

    stream = engine.stream(AudioFormat(Encoding.MULAW, 8000))
    for i in range(0, len(mulaw), 1600):
        await stream.feed(mulaw[i:i + 1600])
    await stream.finish()
    return " ".join([r.text async for r in stream.results() if isinstance(r, Transcript) and r.is_final])


def webm_opus(pcm16k: bytes) -> bytes:
    """16 kHz PCM as a browser's MediaRecorder sends it: Opus at 48 kHz in a WebM container."""
    import io

    import av

    samples = np.frombuffer(pcm16k, "<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.rate = 16000
    out = io.BytesIO()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        for resampled in av.AudioResampler(format="s16", layout="mono", rate=48000).resample(frame):
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return out.getvalue()
