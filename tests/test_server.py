"""The service: /health, /metrics, dialplan loading and reload, and `python -m app serve` as a
real process (start, graceful stop, kill -9 mid-stream and restart without losing a final)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
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
    wer,
    write_dialplan,
)

from app.bench.consumer import WebhookConsumer
from app.delivery.outbox import Outbox, Status
from app.dialplans import DialplanError
from app.keys import CALL_HUB
from app.server import reload_dialplans

REPO = Path(__file__).resolve().parents[1]


async def test_health_and_metrics(running_app: StartApp, tmp_path: Path) -> None:
    write_dialplan(tmp_path / "dialplans", "default", catch_all=True)
    server = await running_app(make_settings(tmp_path))
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url("/health")) as response:
            assert response.status == 200
            health = await response.json()
        assert health["status"] == "healthy"
        assert health["model"] == "mini"
        assert health["outbox_depth"] == 0 and health["active_sessions"] == 0
        assert health["components"]["engine"] == {"status": "ok"}
        assert health["components"]["dialplans"]["loaded"] == ["default"]

        async with http.ws_connect(server.url("/v1/stream")) as ws:
            await ws.send_json({"type": "start_transcription", "config": {}})
            await next_message(ws)
            async with http.get(server.url("/health")) as response:
                assert (await response.json())["active_sessions"] == 1
            await send_audio(ws, clip("ljspeech-LJ001-0002") + silence(1.0))
            await ws.send_json({"type": "stop_transcription"})
            await receive_all(ws)

        async with http.get(server.url("/metrics")) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['hearsay_calls_total{source="stream"}'] == 1
    assert samples['hearsay_active_sessions{source="stream"}'] == 0
    assert samples['hearsay_utterances_total{source="stream"}'] == 1
    assert samples['hearsay_audio_seconds_total{source="stream"}'] == pytest.approx(2.9, abs=0.05)
    assert samples["hearsay_end_to_end_latency_seconds_count{source=\"stream\"}"] == 1
    assert samples["hearsay_asr_latency_seconds_count"] == 1
    # the default plan has no webhook.url: its events are stored, not waiting for delivery
    assert samples["hearsay_outbox_depth"] == 0
    for name in ("hearsay_vad_latency_seconds", "hearsay_webhook_deliveries", "hearsay_dropped_frames"):
        assert f"# TYPE {name}" in text


async def test_health_is_503_when_the_engine_cannot_load(running_app: StartApp, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, asr={"model": str(tmp_path / "no-such-model")})
    server = await running_app(settings, own_engine=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url("/health")) as response:
            assert response.status == 503
            health = await response.json()
        assert health["status"] == "unhealthy"
        assert health["components"]["engine"]["status"] == "failed"
        async with http.ws_connect(server.url("/v1/stream")) as ws:
            await ws.send_json({"type": "start_transcription", "config": {}})
            reply = await next_message(ws)
        assert reply["code"] == "unavailable"


async def test_a_bad_dialplan_stops_start_up_and_a_bad_reload_keeps_the_old_set(
        running_app: StartApp, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    plans = tmp_path / "dialplans"
    (plans / "broken.toml").write_text('name = "broken"\n[match]\nsip_usr = ["1"]\n')
    with pytest.raises(DialplanError, match=r"broken\.toml: match\.sip_usr"):
        await running_app(settings)

    (plans / "broken.toml").unlink()
    write_dialplan(plans, "a")
    app = (await running_app(settings)).app
    assert [p.name for p in app[CALL_HUB].dialplans] == ["a"]
    write_dialplan(plans, "b")
    assert await reload_dialplans(app)
    assert [p.name for p in app[CALL_HUB].dialplans] == ["a", "b"]
    (plans / "c.toml").write_text("name = 5\n")
    assert not await reload_dialplans(app)
    assert [p.name for p in app[CALL_HUB].dialplans] == ["a", "b"]


def _free_port() -> int:
    # Probed, not bound by serve (port 0): serve logs the configured port, not the one it bound.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HEARSAY_HTTP_HOST": "127.0.0.1", "HEARSAY_HTTP_PORT": str(port),
           "HEARSAY_SIP_ENABLED": "false", "HEARSAY_WEBHOOKS_OUTBOX": str(tmp_path / "outbox.sqlite3"),
           "HEARSAY_WEBHOOKS_BACKOFF_INITIAL_S": "0.1", "HEARSAY_WEBHOOKS_BACKOFF_MAX_S": "0.5",
           "HEARSAY_LOG_FORMAT": "json"}
    log = (tmp_path / "serve.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "app", "serve", "--config", "settings.toml",
                             "--dialplans", str(tmp_path / "dialplans")],
                            cwd=REPO, env=env, stdout=log, stderr=log)


async def _wait_healthy(http: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(120):
        while True:
            assert process.poll() is None, "serve exited during start-up"
            try:
                async with http.get(f"{base}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


@pytest.mark.process
async def test_serve_survives_kill_9_mid_stream_and_reloads_on_sighup(
        consumer: WebhookConsumer, tmp_path: Path) -> None:
    consumer.status = 503  # the assistant is down while Hearsay is killed
    write_dialplan(tmp_path / "dialplans", "bot", consumer.url)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process = _serve(tmp_path, port)
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_healthy(http, base, process)
            async with http.ws_connect(f"{base}/v1/stream") as ws:
                await ws.send_json({"type": "start_transcription", "config": {"dialplan": "bot"}})
                session_id = (await next_message(ws))["sessionId"]
                names = ["arctic-aew-a0003", "ljspeech-LJ001-0004"]  # one utterance each
                for name in names:
                    # LJ001-0004 stops mid-sentence ("... the true printed book,"): its turn
                    # ends after [turn] max_silence_ms (1.2 s) of silence, which must arrive.
                    await send_audio(ws, clip(name) + silence(2.0))
                heard: list[dict[str, Any]] = []
                while len(heard) < len(names):
                    message = await next_message(ws, wait_s=60)
                    if message["type"] == "transcription_result" and message["result"]["isFinal"]:
                        heard.append(message["result"])
                # the finals are committed to the outbox (read here by a second connection)
                outbox = await Outbox.open(tmp_path / "outbox.sqlite3")
                try:
                    for _ in range(600):
                        pending = await outbox.list(Status.PENDING)
                        if len([r for r in pending if r.event.type == "utterance.final"]) == len(names):
                            break
                        await asyncio.sleep(0.05)
                    else:
                        pytest.fail("the finals never reached the outbox")
                finally:
                    await outbox.close()
                assert consumer.attempts, "Hearsay tried to deliver while the consumer was down"
                process.kill()  # kill -9, mid-session: the stream is still open
                process.wait(10)
        consumer.status = 200
        process = _serve(tmp_path, port)
        async with aiohttp.ClientSession() as http:
            await _wait_healthy(http, base, process)
            async with asyncio.timeout(60):
                finals = await consumer.wait_for(
                    lambda c: len(c.of_type("utterance.final", session_id)) >= len(names)
                    and c.of_type("utterance.final", session_id))
            # SIGHUP re-reads the dialplans
            write_dialplan(tmp_path / "dialplans", "later")
            process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"{base}/health") as response:
                        if "later" in (await response.json())["components"]["dialplans"]["loaded"]:
                            break
                    await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert [e["utterance"]["text"] for e in finals] == [r["transcript"] for r in heard]
    # 25 words, 0 wrong on every CPU kernel path tried; 2 may change between CPU families
    said = " ".join(reference(name) for name in names)
    assert wer(said, " ".join(e["utterance"]["text"] for e in finals)) <= 2 / 25
    accepted_ids = [e["id"] for e in consumer.events]
    assert len(accepted_ids) == len(set(accepted_ids)), "each event delivered exactly once"
    assert consumer.rejected == 0
