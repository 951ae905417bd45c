"""SIP worker processes under the service (sip/workers.py, sip/worker.py): crash isolation.

The service runs with SIP on loopback ports; sipp calls in and streams speech; a real webhook
consumer keeps the events. The worker carrying the call is killed with SIGKILL, as a pjlib
abort would end it: the call must end as `sip_worker_lost` with what was heard delivered, the
service must go on, and a new worker must answer the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from service_helpers import make_settings, reference, wer, write_dialplan

from app.bench.consumer import WebhookConsumer
from app.server import create_app
from app.settings import Settings
from sip.errors import SipStartError
from tests.sip_helpers import clip_ulaw, enable_sip, free_port, run_sipp_async, sipp_args

pytestmark = pytest.mark.sip

WAIT_S = 90
# A restarted worker serves in about 1.5 s here (python start-up, pjsua2 init); the issue's
# promise is 5 s, and a loaded CI box gets room on top.
RESTART_BOUND_S = 12.0


def sip_settings(tmp_path: Path, consumer: WebhookConsumer) -> Settings:
    write_dialplan(tmp_path / "dialplans", "support", consumer.url, catch_all=True)
    return enable_sip(make_settings(tmp_path), rtp_timeout_s=60)


async def health(server: TestServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        return dict(await (await http.get(server.make_url("/health"))).json())


@contextlib.asynccontextmanager
async def sipp_call(settings: Settings, cwd: Path, pause_ms: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """A sipp caller streaming cwd/clip.ulaw, then silent for `pause_ms`; killed on the way out."""
    proc = await asyncio.create_subprocess_exec(
        *sipp_args("uac_stream.xml", settings.sip.port, "100", pause_ms=pause_ms), cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_a_killed_worker_ends_its_call_as_lost_and_a_new_one_answers_the_next(
    engine: Any, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    settings = sip_settings(tmp_path, consumer)
    server = TestServer(create_app(settings, engine=engine), host="127.0.0.1")
    await server.start_server()
    try:
        (worker,) = (await health(server))["components"]["sip"]["workers"]
        assert worker["state"] == "serving" and worker["pid"]
        clip_ulaw("arctic-aew-a0003", tmp_path, tail_s=1.0)
        async with sipp_call(settings, tmp_path, pause_ms=30_000):
            async with asyncio.timeout(WAIT_S):
                (final,) = await consumer.wait_for(lambda c: c.of_type("utterance.final"))
            call_id = final["call"]["id"]
            assert (await health(server))["components"]["sip"]["active_calls"] == 1
            os.kill(worker["pid"], signal.SIGKILL)
            killed_at = time.monotonic()
            async with asyncio.timeout(WAIT_S):
                (ended,) = await consumer.wait_for(lambda c: c.of_type("call.ended", call_id))
        assert ended["reason"] == "sip_worker_lost"
        # What was heard before the crash was delivered, in full.
        heard = " ".join(e["utterance"]["text"] for e in consumer.of_type("utterance.final", call_id))
        assert wer(reference("arctic-aew-a0003"), heard) <= 0.25, heard

        # The service is up all along, and a new worker takes over.
        while True:
            sip = (await health(server))["components"]["sip"]
            (now,) = sip["workers"]
            if now["state"] == "serving":
                break
            assert time.monotonic() - killed_at < RESTART_BOUND_S, sip
            await asyncio.sleep(0.1)
        assert now["pid"] != worker["pid"] and now["restarts"] == 1 and sip["status"] == "ok"
        async with aiohttp.ClientSession() as http:
            metrics = await (await http.get(server.make_url("/metrics"))).text()
        assert 'hearsay_sip_worker_restarts_total{worker="0"} 1.0' in metrics
        assert 'hearsay_sip_worker_up{worker="0"} 1.0' in metrics

        clip_ulaw("timit-LDC93S1", tmp_path, tail_s=1.0)
        result = await run_sipp_async("uac_stream.xml", settings.sip.port, "100", tmp_path, pause_ms=5000)
        assert result.returncode == 0, result.output
        async with asyncio.timeout(WAIT_S):
            second = await consumer.wait_for(
                lambda c: [e for e in c.of_type("call.ended") if e["call"]["id"] != call_id])
        assert second[0]["reason"] == "hangup"
        heard = " ".join(e["utterance"]["text"] for e in consumer.of_type("utterance.final", second[0]["call"]["id"]))
        assert wer(reference("timit-LDC93S1"), heard) <= 0.3, heard
        assert consumer.rejected == 0
    finally:
        await server.close()


async def test_a_port_in_use_stops_start_up_naming_it(engine: Any, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    port = free_port()
    settings = dataclasses.replace(settings, sip=dataclasses.replace(
        enable_sip(settings).sip, port=port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        server = TestServer(create_app(settings, engine=engine), host="127.0.0.1")
        with pytest.raises(SipStartError, match=f"sip.port: cannot listen on 127.0.0.1:{port}"):
            await server.start_server()
        await server.close()


async def test_pjsua_lines_come_out_of_the_services_logging_not_stdout(
    engine: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = enable_sip(make_settings(tmp_path))
    settings = dataclasses.replace(settings, log=dataclasses.replace(settings.log, level="debug"))
    server = TestServer(create_app(settings, engine=engine), host="127.0.0.1")
    await server.start_server()
    await server.close()
    # pjsua's own lines, through the worker's bridge (pjsua: ...) and its stdout (pjlib's
    # start-up banner), at DEBUG, tagged with the worker.
    pjsua = [r for r in caplog.records if r.getMessage().startswith("sip-worker 0: pjsua:")]
    banner = [r for r in caplog.records if r.name == "hearsay.sip.worker"]
    assert pjsua and banner, [r.getMessage() for r in caplog.records][:20]
    assert {r.levelno for r in pjsua + banner} == {logging.DEBUG}
    out, err = capfd.readouterr()
    assert "pjsua" not in out and "pjlib" not in out and "pjlib" not in err
