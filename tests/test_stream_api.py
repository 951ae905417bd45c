"""`/v1/stream` end to end: a real WebSocket client streams real clips to the real app, and a
real webhook consumer (verifying signatures) receives the words.

Uses the test kit of tests/conftest.py: `running_app` (with the session's shared engine) and
the `consumer` webhook.

WER bounds are "k / n": n words in the reference, of which k may come out wrong. k is what
tiny.en gets wrong here on every CPU kernel path tried (AVX-512 and AVX2 oneDNN, MKL), plus
two: int8 kernels differ between CPU families, and a word or two moves between them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from service_helpers import (
    StartApp,
    clip,
    make_settings,
    next_message,
    receive_all,
    reference,
    send_audio,
    silence,
    telephone,
    wer,
    write_dialplan,
)
from speech import words

from app.bench.consumer import WebhookConsumer
from app.calls import EndReason

START = {"type": "start_transcription", "config": {"sampleRate": 16000, "encoding": "LINEAR16"}}
STOP = {"type": "stop_transcription"}


def start(**config: Any) -> dict[str, Any]:
    return {"type": "start_transcription", "config": {**START["config"], **config}}


def is_interim(message: dict[str, Any]) -> bool:
    return message["type"] == "transcription_result" and not message["result"]["isFinal"]


def finals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["result"] for m in messages if m["type"] == "transcription_result" and m["result"]["isFinal"]]


async def test_clip_words_reach_client_and_webhook(running_app: StartApp, tmp_path: Path,
                                                   consumer: WebhookConsumer) -> None:
    write_dialplan(tmp_path / "dialplans", "bot", consumer.url)
    server = await running_app(make_settings(tmp_path))
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(server.url("/v1/stream")) as ws:
        await ws.send_json(start(dialplan="bot"))
        started = await next_message(ws)
        assert started["type"] == "transcription_started"
        session_id = started["sessionId"]
        audio = clip("jfk") + silence(1.0)
        half = len(audio) // 2 & ~1
        await send_audio(ws, audio[:half], binary=True)  # binary frames ...
        await send_audio(ws, audio[half:], binary=False)  # ... and base64 JSON, same stream
        await ws.send_json(STOP)
        messages = await receive_all(ws)
        assert ws.close_code == 1000

    complete = messages[-1]
    assert complete["type"] == "transcription_complete"
    assert wer(reference("jfk"), complete["result"]["text"]) <= 2 / 22  # 0 wrong
    assert complete["result"]["duration"] == pytest.approx(12.0, abs=0.05)
    results = finals(messages)
    assert [r["index"] for r in results] == list(range(len(results)))
    assert [s["text"] for s in complete["result"]["segments"]] == [r["transcript"] for r in results]
    for r in results:
        assert 0 <= r["start_s"] < r["end_s"] <= 12.0 and r["timestamp"] == r["end_s"]
        assert 0 < r["confidence"] <= 1
        assert r["endOfTurn"] is True  # each final here ends the speaker's turn

    ended = await consumer.wait(session_id)
    assert consumer.rejected == 0
    assert ended["call"] == {"id": session_id, "source": "stream", "from": "127.0.0.1",
                             "to": "/v1/stream", "dialplan": "bot"}
    assert wer(reference("jfk"), ended["transcript"]) <= 2 / 22
    hooked = consumer.of_type("utterance.final", session_id)
    assert [e["utterance"]["text"] for e in hooked] == [r["transcript"] for r in results]
    assert consumer.of_type("call.started", session_id)
    types = [e["type"] for e in consumer.events]
    assert types[0] == "call.started" and types[-1] == "call.ended"


@pytest.mark.realtime  # interims need the audio to arrive over time
async def test_telephone_audio_interims_and_single_utterance(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url("/v1/stream")) as ws:
            await ws.send_json(start(encoding="MULAW", sampleRate=8000, interimResults=True))
            assert (await next_message(ws))["type"] == "transcription_started"
            messages: list[dict[str, Any]] = []
            reader = asyncio.create_task(receive_all(ws, into=messages))
            audio = telephone(clip("jfk") + silence(1.0))
            for i in range(0, len(audio), 1600):  # 200 ms a message
                # Twice real time until the first interim is back, then as fast as the server
                # takes it: an interim is dropped when its utterance's final is due first, so
                # audio that all arrives at once may get none.
                if i and not any(is_interim(m) for m in messages):
                    await asyncio.sleep(0.1)
                await ws.send_bytes(audio[i:i + 1600])
            await ws.send_json(STOP)
            await reader
        interims = [m["result"] for m in messages if is_interim(m)]
        assert interims, "interimResults=true gives interim results"
        assert not any(r["endOfTurn"] for r in interims)
        assert wer(reference("jfk"), messages[-1]["result"]["text"]) <= 5 / 22  # 3 wrong over the phone

        # singleUtterance: the session ends by itself after the first final.
        async with http.ws_connect(server.url("/v1/stream")) as ws:
            await ws.send_json(start(singleUtterance=True))
            await next_message(ws)
            two = clip("arctic-aew-a0003") + silence(1.5) + clip("ljspeech-LJ001-0008") + silence(1.5)
            await send_audio(ws, two)
            messages = await receive_all(ws)
        assert len(finals(messages)) == 1
        assert messages[-1]["type"] == "transcription_complete"
        assert wer(reference("arctic-aew-a0003"), messages[-1]["result"]["text"]) <= 2 / 11  # 0 wrong


async def test_two_concurrent_sessions_keep_their_own_words(running_app: StartApp, tmp_path: Path,
                                                            consumer: WebhookConsumer) -> None:
    write_dialplan(tmp_path / "dialplans", "bot", consumer.url)
    names = ["jfk", "ljspeech-LJ001-0009"]

    async def session(http: aiohttp.ClientSession, server: Any, name: str) -> tuple[str, str]:
        async with http.ws_connect(server.url("/v1/stream")) as ws:
            await ws.send_json(start(dialplan="bot"))
            session_id = (await next_message(ws))["sessionId"]
            await send_audio(ws, clip(name) + silence(1.0), chunk=640)
            await ws.send_json(STOP)
            messages = await receive_all(ws)
        return session_id, messages[-1]["result"]["text"]

    server = await running_app(make_settings(tmp_path))
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(session(http, server, n) for n in names))
    for name, (session_id, text) in zip(names, results, strict=True):
        bound = 2 / words(reference(name))  # 0 wrong of 22 and of 19
        assert wer(reference(name), text) <= bound, (name, text)
        ended = await consumer.wait(session_id)
        assert wer(reference(name), ended["transcript"]) <= bound


async def test_bad_input_gets_error_codes_and_the_session_goes_on(running_app: StartApp, tmp_path: Path) -> None:
    write_dialplan(tmp_path / "dialplans", "quiet")
    server = await running_app(make_settings(tmp_path))
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(server.url("/v1/stream")) as ws:

        async def error_for(message: str | bytes | dict[str, Any]) -> str:
            if isinstance(message, dict):
                await ws.send_json(message)
            elif isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
            reply = await next_message(ws)
            assert reply["type"] == "error" and reply["message"], reply
            return str(reply["code"])

        assert await error_for("{not json") == "invalid_json"
        assert await error_for("[1, 2]") == "invalid_json"
        assert await error_for({"config": {}}) == "invalid_message"
        assert await error_for({"type": "dance"}) == "unknown_type"
        assert await error_for(b"\x00\x01" * 100) == "not_started"
        assert await error_for({"type": "audio_data", "audio": "AAAA"}) == "not_started"
        assert await error_for(STOP) == "not_started"
        assert await error_for(start(encoding="OGG_OPUS")) == "unsupported_encoding"
        assert await error_for(start(encoding="FLAC9")) == "unsupported_encoding"
        assert await error_for(start(sampleRate=4000)) == "unsupported_sample_rate"
        assert await error_for(start(sampleRate="fast")) == "invalid_config"
        assert await error_for(start(interimResults="yes")) == "invalid_config"
        assert await error_for(start(colour="blue")) == "invalid_config"
        assert await error_for(start(dialplan="nope")) == "unknown_dialplan"
        assert await error_for(start(model="gigantic")) == "unknown_model"

        await ws.send_json(start(dialplan="quiet"))
        assert (await next_message(ws))["type"] == "transcription_started"
        assert await error_for(start()) == "already_started"
        assert await error_for({"type": "audio_data", "audio": "not base64!"}) == "invalid_base64"
        assert await error_for({"type": "audio_data", "audio": 5}) == "invalid_message"
        assert await error_for(b"\x00\x01\x02") == "invalid_audio"
        odd = base64.b64encode(b"\x00" * 321).decode()
        assert await error_for({"type": "audio_data", "audio": odd}) == "invalid_audio"

        # ... and the session still transcribes.
        await send_audio(ws, clip("ljspeech-LJ001-0004") + silence(1.0))
        await ws.send_json(STOP)
        messages = await receive_all(ws)
    assert messages[-1]["type"] == "transcription_complete"
    assert wer(reference("ljspeech-LJ001-0004"), messages[-1]["result"]["text"]) <= 2 / 14  # 0 wrong


async def test_a_session_whose_transcription_fails_inside_ends_with_internal_error(
        running_app: StartApp, tmp_path: Path, consumer: WebhookConsumer, a_bug_in_the_turn_policy: None) -> None:
    # A bug in the turn policy stands in for any unexpected error inside the engine stream:
    # the client is told and the session closes (before, it went on, its audio ignored), and
    # the assistant gets call.ended with reason "error".
    write_dialplan(tmp_path / "dialplans", "bot", consumer.url)
    server = await running_app(make_settings(tmp_path))
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url("/v1/stream")) as ws:
        await ws.send_json(start(dialplan="bot"))
        session_id = (await next_message(ws))["sessionId"]
        await send_audio(ws, clip("jfk") + silence(1.0), binary=True)
        messages = [m for m in await asyncio.wait_for(receive_all(ws), 30) if m["type"] != "quality"]
        assert ws.close_code == 1011
    assert messages[0]["type"] == "error" and messages[0]["code"] == "internal_error", messages[0]
    assert messages[-1]["type"] == "transcription_complete"
    ended = await consumer.wait(session_id)
    assert ended["reason"] == "error"


async def test_limits_answer_with_a_code_then_close(running_app: StartApp, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, stream={"max_message_bytes": 4096, "max_sessions": 1,
                                               "max_session_s": 2})
    server = await running_app(settings)
    async with aiohttp.ClientSession() as http:
        url = server.url("/v1/stream")
        async with http.ws_connect(url) as ws:
            await ws.send_json(START)
            await next_message(ws)
            # a second session while the first is open
            async with http.ws_connect(url) as other:
                messages = await receive_all(other)
            assert [m.get("code") for m in messages] == ["too_many_sessions"]
            assert other.close_code == 1013

            await ws.send_bytes(b"\x00" * 5000)
            messages = await receive_all(ws)
        assert messages[0]["code"] == "message_too_large"
        assert messages[-1]["type"] == "transcription_complete"
        assert ws.close_code == 1009

        async with http.ws_connect(url) as ws:
            await ws.send_json(START)
            await next_message(ws)
            await send_audio(ws, silence(3.0), chunk=3200)
            messages = await receive_all(ws)
        # quality figures come each second of audio; the error is the first thing after them
        messages = [m for m in messages if m["type"] != "quality"]
        assert messages[0]["code"] == "session_too_long"
        assert messages[-1]["type"] == "transcription_complete"
        assert ws.close_code == 1008


async def test_a_server_takes_as_many_sessions_as_its_speed_suggests_before_any_final(
    running_app: StartApp, tmp_path: Path
) -> None:
    # No other limit: on a fast machine the speed alone would let in more than the defaults.
    settings = make_settings(tmp_path, asr={"busy_late_ms": 300, "max_live_calls": 0}, stream={"max_sessions": 10_000})
    server = await running_app(settings)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url("/metrics")) as response:
            gauge = next(line for line in (await response.text()).splitlines()
                         if line.startswith("hearsay_learned_call_limit "))
        limit = int(float(gauge.split()[1]))  # what start-up measured (docs/engine.md), on any machine
        assert limit >= 1
        sessions = [await http.ws_connect(server.url("/v1/stream")) for _ in range(limit + 1)]
        for ws in sessions[:limit]:
            await ws.send_json(START)
            assert (await next_message(ws))["type"] == "transcription_started"
        await sessions[limit].send_json(START)
        busy = await next_message(sessions[limit])
        assert busy["type"] == "error" and busy["code"] == "server_busy", busy
        assert "busy_late_ms" in busy["message"]
        for ws in sessions:
            await ws.close()


async def test_a_server_at_its_call_limit_answers_server_busy_and_takes_the_retry(
    running_app: StartApp, tmp_path: Path
) -> None:
    server = await running_app(make_settings(tmp_path, asr={"max_live_calls": 1}))
    async with aiohttp.ClientSession() as http:
        url = server.url("/v1/stream", "ws")
        async with http.ws_connect(url) as first, http.ws_connect(url) as second:
            await first.send_json(START)
            assert (await next_message(first))["type"] == "transcription_started"
            await second.send_json(START)
            busy = await next_message(second)
            assert busy["type"] == "error" and busy["code"] == "server_busy", busy
            assert "max_live_calls" in busy["message"]
            # The refused session stays open, not started: once the first ends, it is taken.
            await first.send_json({"type": "stop_transcription"})
            await receive_all(first)
            for _ in range(100):
                await second.send_json(START)
                answer = await next_message(second)
                if answer["type"] == "transcription_started":
                    break
                assert answer["code"] == "server_busy"
                await asyncio.sleep(0.05)
            assert answer["type"] == "transcription_started"


async def test_api_keys_are_checked_before_the_upgrade(running_app: StartApp, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth={"api_keys": ["k-123"]})
    server = await running_app(settings)
    async with aiohttp.ClientSession() as http:
        url = server.url("/v1/stream")
        for headers, query in (({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?api_key=nope")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{url}{query}", headers=headers)
            assert refused.value.status == 401
        async with http.get(url) as response:
            assert response.status == 401
            assert json.loads(await response.text())["error"] == "unauthorized"
        for headers, query in (({"Authorization": "Bearer k-123"}, ""), ({}, "?api_key=k-123")):
            async with http.ws_connect(f"{url}{query}", headers=headers) as ws:
                await ws.send_json(START)
                assert (await next_message(ws))["type"] == "transcription_started"
                await ws.send_json(STOP)
                messages = await receive_all(ws)
            assert messages[-1] == {"type": "transcription_complete",
                                    "result": {"text": "", "segments": [], "duration": 0.0}}


async def test_shutdown_finishes_open_sessions(running_app: StartApp, tmp_path: Path, consumer: WebhookConsumer) -> None:
    write_dialplan(tmp_path / "dialplans", "bot", consumer.url)
    server = await running_app(make_settings(tmp_path))
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(server.url("/v1/stream")) as ws:
        await ws.send_json(start(dialplan="bot"))
        session_id = (await next_message(ws))["sessionId"]
        await send_audio(ws, clip("arctic-aew-a0003"))  # no silence, no stop: mid-utterance
        await ws.send_json({"type": "barrier"})  # answered in order: all audio was taken
        while (reply := await next_message(ws))["type"] == "quality":
            pass
        assert reply["code"] == "unknown_type"
        reader = asyncio.create_task(receive_all(ws))
        await server.close()  # what SIGTERM does: the app shuts down gracefully
        messages = await reader
        assert ws.close_code == 1001
    assert messages[-1]["type"] == "transcription_complete"
    assert wer(reference("arctic-aew-a0003"), messages[-1]["result"]["text"]) <= 2 / 11  # 0 wrong
    ended = await consumer.wait(session_id)
    assert ended["reason"] == EndReason.SHUTDOWN
    assert [e["utterance"]["text"] for e in consumer.of_type("utterance.final", session_id)] == [
        messages[-1]["result"]["text"]]


async def test_a_client_that_does_not_read_does_not_hold_up_others(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    async with aiohttp.ClientSession() as http:
        url = server.url("/v1/stream")
        async with http.ws_connect(url) as lazy, http.ws_connect(url) as busy:
            await lazy.send_json(start(interimResults=True, words=True))
            await busy.send_json(start())
            assert (await next_message(busy))["type"] == "transcription_started"
            # the lazy client sends lots of speech and never reads its results ...
            await send_audio(lazy, (clip("jfk") + silence(0.5)) * 3, chunk=16000)
            # ... while the other session is served in full
            await send_audio(busy, clip("arctic-aew-a0003") + silence(1.0))
            await busy.send_json(STOP)
            messages = await receive_all(busy)
            assert wer(reference("arctic-aew-a0003"), messages[-1]["result"]["text"]) <= 2 / 11  # 0 wrong
            await lazy.send_json(STOP)
            lazy_messages = await receive_all(lazy)
    results = finals(lazy_messages)
    assert len(results) >= 3 and all("words" in r for r in results)
    assert lazy_messages[-1]["type"] == "transcription_complete"
    # 0 wrong of 66; the same audio three times repeats a kernel's word changes three times
    assert wer(" ".join([reference("jfk")] * 3), lazy_messages[-1]["result"]["text"]) <= 6 / 66
