"""The SIP user agent inside the real service (sip/agent.py): sipp calls, the webhook hears.

The app runs with SIP enabled on high random ports and the session's speech engine; a real
aiohttp webhook consumer checks signatures and keeps the events. sipp dials in and streams a
speech clip as G.711 mu-law; the consumer must receive call.started (with the SIP Call-ID,
From, To), the right words in utterance.final, the digits pressed, and call.ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from service_helpers import SECRET, make_settings, reference, wer, write_dialplan

from app.bench.consumer import WebhookConsumer
from app.server import create_app
from app.settings import Settings
from tests.sip_helpers import clip_ulaw, free_port, free_port_range, run_sipp_async

WAIT_S = 90


@pytest.fixture
async def consumer() -> AsyncIterator[WebhookConsumer]:
    hook = WebhookConsumer(SECRET)
    await hook.start()
    yield hook
    await hook.stop()


def sip_app_settings(tmp_path: Path, consumer: WebhookConsumer, **sip: Any) -> Settings:
    write_dialplan(tmp_path / "dialplans", "support", consumer.url)
    (tmp_path / "dialplans" / "support.toml").write_text(
        (tmp_path / "dialplans" / "support.toml").read_text().replace("sip_user = []", 'sip_user = ["100"]'))
    settings = make_settings(tmp_path)
    return dataclasses.replace(settings, sip=dataclasses.replace(
        settings.sip, enabled=True, host="127.0.0.1", port=free_port(),
        rtp_port_start=free_port_range(40), rtp_port_count=40, **sip))


async def test_sipp_call_reaches_the_webhook_with_the_right_words(
    engine: Any, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    settings = sip_app_settings(tmp_path, consumer)
    server = TestServer(create_app(settings, engine=engine), host="127.0.0.1")
    await server.start_server()
    try:
        clip_ulaw("arctic-aew-a0003", tmp_path, tail_s=1.0)
        result = await run_sipp_async("uac_stream.xml", settings.sip.port, "100", tmp_path, pause_ms=5000)
        assert result.returncode == 0, result.output
        async with asyncio.timeout(WAIT_S):
            (ended,) = await consumer.wait_for(lambda c: c.of_type("call.ended"))
        call = ended["call"]
        assert call["source"] == "sip"
        assert call["dialplan"] == "support"
        assert call["from"].startswith("sip:sipp@127.0.0.1")
        assert call["to"] == f"sip:100@127.0.0.1:{settings.sip.port}"
        (started,) = consumer.of_type("call.started", call["id"])
        assert started["call"]["id"] == call["id"]
        finals = consumer.of_type("utterance.final", call["id"])
        heard = " ".join(e["utterance"]["text"] for e in finals)
        assert wer(reference("arctic-aew-a0003"), heard) <= 0.25, heard
        assert consumer.rejected == 0
        async with aiohttp.ClientSession() as http:
            health = await (await http.get(server.make_url("/health"))).json()
        assert health["components"]["sip"]["status"] == "ok"
        assert health["components"]["sip"]["active_calls"] == 0
    finally:
        await server.close()


async def test_dtmf_and_refusals_through_the_service(
    engine: Any, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    settings = sip_app_settings(tmp_path, consumer)
    server = TestServer(create_app(settings, engine=engine), host="127.0.0.1")
    await server.start_server()
    try:
        result = await run_sipp_async("uac_dtmf.xml", settings.sip.port, "100", tmp_path)
        assert result.returncode == 0, result.output
        async with asyncio.timeout(WAIT_S):
            (ended,) = await consumer.wait_for(lambda c: c.of_type("call.ended"))
        digits = [e["dtmf"]["digit"] for e in consumer.of_type("dtmf", ended["call"]["id"])]
        assert digits == ["1", "5", "9", "*", "#", "0", "7"]
        refused = await run_sipp_async("uac_refused.xml", settings.sip.port, "555", tmp_path)
        assert "refused 404" in refused.log, refused.output
    finally:
        await server.close()
