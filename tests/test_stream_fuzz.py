"""Property-based: whatever a client sends to `/v1/stream`, every reply is a JSON object of a
known type (errors with a code), the socket closes cleanly, and the server still serves a good
session afterwards."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import clip, make_settings, receive_all, reference, send_audio, silence, wer

from app.bench.common import RunningApp, serve_app
from app.ingress.stream_protocol import ErrorCode

REPLY_TYPES = {"transcription_started", "transcription_result", "transcription_complete", "error",
               "quality", "quality_warning"}
CODES = {c.value for c in ErrorCode}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10)
configs = st.fixed_dictionaries({}, optional={
    "sampleRate": st.sampled_from([8000, 16000, 44100, 4000, 96000]) | json_values,
    "encoding": st.sampled_from(["LINEAR16", "MULAW", "ALAW", "WEBM_OPUS", "mulaw"]) | json_values,
    "interimResults": st.booleans() | json_values,
    "singleUtterance": st.booleans(),
    "language": st.sampled_from(["en", "auto", "fr"]) | json_values,
    "model": st.sampled_from(["mini", "huge"]),
    "dialplan": st.sampled_from(["fuzz", "nope"]),
    "words": st.booleans(),
})
messages = st.one_of(
    st.builds(lambda c: json.dumps({"type": "start_transcription", "config": c}), configs),
    st.builds(lambda b: json.dumps({"type": "audio_data", "audio": base64.b64encode(b).decode()}),
              st.binary(max_size=2000)),
    st.builds(lambda t: json.dumps({"type": "audio_data", "audio": t}), st.text(max_size=50)),
    st.builds(lambda v: json.dumps({"type": v}), json_values),
    st.builds(json.dumps, json_values),
    st.text(max_size=200),
    st.binary(max_size=3000),
)


@pytest.fixture(scope="module")
async def server(loaded_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningApp]:
    """One app for the whole module (the `running_app` fixture's is per test)."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    (tmp / "dialplans").mkdir()
    (tmp / "dialplans" / "fuzz.toml").write_text('name = "fuzz"\n')
    async with serve_app(make_settings(tmp, stream={"max_message_bytes": 2048}), engine=loaded_engine) as live:
        yield live
    await loaded_engine.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sent=st.lists(messages, min_size=1, max_size=8))
async def test_any_message_sequence_gets_well_formed_replies(server: RunningApp, sent: list[Any]) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url("/v1/stream")) as ws:
        try:
            for message in sent:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
            await ws.send_json({"type": "stop_transcription"})
            await ws.send_json({"type": "start_transcription", "config": {}})
            await ws.send_json({"type": "stop_transcription"})
        except ConnectionResetError:
            pass  # the server closed the session (a limit); its replies are still read below
        replies = await receive_all(ws, wait_s=60)
        assert ws.close_code in (1000, 1008, 1009), ws.close_code
    for reply in replies:
        assert reply["type"] in REPLY_TYPES, reply
        if reply["type"] == "error":
            assert reply["code"] in CODES and isinstance(reply["message"], str), reply
    assert replies[-1]["type"] in ("transcription_complete", "error")


async def test_a_good_session_after_the_fuzzing(server: RunningApp) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url("/v1/stream")) as ws:
        await ws.send_json({"type": "start_transcription", "config": {"dialplan": "fuzz"}})
        await send_audio(ws, clip("ljspeech-LJ001-0004") + silence(1.0), chunk=2000)
        await ws.send_json({"type": "stop_transcription"})
        replies = await receive_all(ws)
    assert replies[0]["type"] == "transcription_started"
    # 14 words, 0 wrong on every CPU kernel path tried; 2 may change between CPU families
    assert wer(reference("ljspeech-LJ001-0004"), replies[-1]["result"]["text"]) <= 2 / 14
