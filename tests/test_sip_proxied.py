"""SIP at scale: the service with `[sip] max_calls` above 4 runs Kamailio in front of several
pjsua2 workers (sip/agent.py, sip/topology.py, sip/workers.py, sip/proxy.py).

Real peers all the way: sipp places the calls to Kamailio on the public port, Kamailio
dispatches them to worker processes, the workers bridge their audio to the service's engine,
and a signature-checking aiohttp consumer receives the webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from service_helpers import make_settings, reference, wer, write_dialplan

from app.bench.consumer import WebhookConsumer
from app.server import create_app
from app.settings import Settings, SipRegistration
from tests.sip_helpers import (
    clip_ulaw,
    free_port,
    free_port_range,
    run_registrar,
    run_sipp,
    run_sipp_async,
    sipp_args,
)

pytestmark = pytest.mark.sip

WAIT_S = 120
CLIP = "arctic-aew-a0003"  # 3 s, 11 words
# Each call streams CLIP plus 1 s of silence, then holds this long before its BYE.
HOLD_MS = 5000


def proxied_settings(tmp_path: Path, consumer: WebhookConsumer, max_calls: int) -> Settings:
    # Number 100 only: scans try others, and each number answered would hold a call.
    write_dialplan(tmp_path / "dialplans", "support", consumer.url)
    plan = tmp_path / "dialplans" / "support.toml"
    plan.write_text(plan.read_text().replace("sip_user = []", 'sip_user = ["100"]'))
    settings = make_settings(tmp_path)
    ports = 16 * max_calls // 4  # each worker gets its slice of the RTP range: 16 ports
    return dataclasses.replace(settings, sip=dataclasses.replace(
        settings.sip, enabled=True, host="127.0.0.1", port=free_port(), max_calls=max_calls, rtp_timeout_s=60,
        rtp_port_start=free_port_range(ports), rtp_port_count=ports))


@contextlib.asynccontextmanager
async def service(settings: Settings, engine: Any) -> AsyncIterator[TestServer]:
    server = TestServer(create_app(settings, engine=engine), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def sip_health(server: TestServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        return dict((await (await http.get(server.make_url("/health"))).json())["components"]["sip"])


async def until(check: Any, timeout_s: float = WAIT_S) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            if value := await check():
                return value
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def callers(settings: Settings, cwd: Path, n: int, hold_ms: int = HOLD_MS
                  ) -> AsyncIterator[asyncio.subprocess.Process]:
    """One sipp process placing `n` calls at once, each streaming cwd/clip.ulaw."""
    proc = await asyncio.create_subprocess_exec(
        *sipp_args("uac_stream.xml", settings.sip.port, "100", calls=n, rate=n, pause_ms=hold_ms),
        "-rp", "1000", cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def heard(consumer: WebhookConsumer, call_id: str) -> str:
    return " ".join(e["utterance"]["text"] for e in consumer.of_type("utterance.final", call_id))


async def test_sixteen_calls_through_the_proxy_are_all_heard_and_a_seventeenth_is_busy(
    engine: Any, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    settings = proxied_settings(tmp_path, consumer, max_calls=16)
    clip_ulaw(CLIP, tmp_path, tail_s=1.0)
    async with service(settings, engine) as server:
        sip = await sip_health(server)
        assert sip["status"] == "ok" and sip["proxy"]["status"] == "ok"
        assert [w["state"] for w in sip["workers"]] == ["serving"] * 4
        async with callers(settings, tmp_path, 16, hold_ms=HOLD_MS + 3000) as calls:
            sip = await until(lambda: _with_calls(server, 16))
            # Spread by load: four on each worker.
            assert sorted(w["active_calls"] for w in sip["workers"]) == [4, 4, 4, 4], sip
            refused = await run_sipp_async("uac_refused.xml", settings.sip.port, "100", tmp_path)
            assert "refused 486" in refused.log, refused.output
            assert await asyncio.wait_for(calls.wait(), WAIT_S) == 0
        async with asyncio.timeout(WAIT_S):
            ended = await consumer.wait_for(lambda c: len(c.of_type("call.ended")) >= 16 and c.of_type("call.ended"))
    assert len(ended) == 16 and {e["reason"] for e in ended} == {"hangup"}
    errors = [wer(reference(CLIP), heard(consumer, e["call"]["id"])) for e in ended]
    # One clip, sixteen times over the network at once: each is heard nearly whole (a tiny.en
    # slip costs 1 of 11 words; the bound leaves room for 2).
    assert max(errors) <= 2 / 11, errors
    assert consumer.rejected == 0


async def test_a_call_the_engine_is_too_busy_for_is_refused_by_one_worker_not_by_each(
    engine: Any, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    # Two workers share one engine, which takes one live call: the worker asked first answers
    # 503 with a Retry-After, and the proxy hands that to the caller without asking the other
    # (it would only ask the same engine again).
    settings = proxied_settings(tmp_path, consumer, max_calls=8)
    settings = dataclasses.replace(settings, asr=dataclasses.replace(settings.asr, max_live_calls=1))
    clip_ulaw(CLIP, tmp_path, tail_s=1.0)
    async with service(settings, engine) as server:
        assert [w["state"] for w in (await sip_health(server))["workers"]] == ["serving"] * 2
        async with callers(settings, tmp_path, 1, hold_ms=HOLD_MS) as calls:
            await until(lambda: _with_calls(server, 1))
            refused = await run_sipp_async("uac_refused.xml", settings.sip.port, "100", tmp_path)
            assert "refused 503 retry-after 5" in refused.log, refused.output
            async with aiohttp.ClientSession() as http:
                metrics = await (await http.get(server.make_url("/metrics"))).text()
            assert 'hearsay_refused_busy_total{source="sip"} 1.0' in metrics.splitlines()
            assert await asyncio.wait_for(calls.wait(), WAIT_S) == 0
        async with asyncio.timeout(WAIT_S):
            (ended,) = await consumer.wait_for(lambda c: c.of_type("call.ended"))
    assert ended["reason"] == "hangup"
    assert wer(reference(CLIP), heard(consumer, ended["call"]["id"])) <= 2 / 11


async def _with_calls(server: TestServer, n: int) -> dict[str, Any] | None:
    sip = await sip_health(server)
    return sip if sip["active_calls"] >= n else None


async def test_a_killed_worker_ends_only_its_own_calls_and_is_replaced(
    engine: Any, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    settings = proxied_settings(tmp_path, consumer, max_calls=8)
    clip_ulaw(CLIP, tmp_path, tail_s=1.0)
    async with service(settings, engine) as server:
        async with callers(settings, tmp_path, 8, hold_ms=HOLD_MS + 3000):
            sip = await until(lambda: _with_calls(server, 8))
            victim = sip["workers"][0]
            assert victim["active_calls"] == 4
            # The first words are in (a final for every call), then the worker dies.
            await consumer.wait_for(lambda c: len({e["call"]["id"] for e in c.of_type("utterance.final")}) >= 8,
                                    timeout_s=WAIT_S)
            os.kill(victim["pid"], signal.SIGKILL)
            async with asyncio.timeout(WAIT_S):
                ended = await consumer.wait_for(lambda c: len(c.of_type("call.ended")) >= 8 and c.of_type("call.ended"))
        reasons = sorted(e["reason"] for e in ended)
        assert reasons == ["hangup"] * 4 + ["sip_worker_lost"] * 4
        for e in ended:  # the lost calls too: what was heard before the crash was delivered
            assert wer(reference(CLIP), heard(consumer, e["call"]["id"])) <= 2 / 11
        sip = await until(lambda: _serving(server, victim["pid"]), timeout_s=15)
        assert sip["workers"][0]["restarts"] == 1 and sip["workers"][1]["restarts"] == 0
        # A new call is answered and heard.
        result = await run_sipp_async("uac_stream.xml", settings.sip.port, "100", tmp_path, pause_ms=HOLD_MS)
        assert result.returncode == 0, result.output
        async with asyncio.timeout(WAIT_S):
            await consumer.wait_for(lambda c: len(c.of_type("call.ended")) >= 9)
        last = consumer.of_type("call.ended")[-1]
        assert last["reason"] == "hangup" and wer(reference(CLIP), heard(consumer, last["call"]["id"])) <= 2 / 11


async def _serving(server: TestServer, old_pid: int) -> dict[str, Any] | None:
    sip = await sip_health(server)
    first = sip["workers"][0]
    return sip if first["state"] == "serving" and first["pid"] != old_pid else None


async def test_scans_and_an_invite_flood_through_the_proxy_leave_the_service_answering(
    engine: Any, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    settings = proxied_settings(tmp_path, consumer, max_calls=8)
    target = f"127.0.0.1:{settings.sip.port}"
    async with service(settings, engine) as server:
        await asyncio.to_thread(subprocess.run, ["svmap", "-p", str(settings.sip.port), "127.0.0.1"],
                                capture_output=True, timeout=60, check=False)
        await asyncio.to_thread(subprocess.run, ["svwar", "-e", "100-140", "-m", "INVITE", "--maximumtime", "15", target],
                                capture_output=True, timeout=120, check=False)
        flood = tmp_path / "flood"
        flood.mkdir()
        await asyncio.to_thread(run_sipp, "uac_refused.xml", settings.sip.port, "nobody", flood, calls=300, rate=200)
        sip = await sip_health(server)
        assert sip["status"] == "ok" and [w["state"] for w in sip["workers"]] == ["serving"] * 2
        # (svwar stops after 15 s: once pike drops its requests it would wait on each.)
        # The flood came from 127.0.0.1, like the next caller: Kamailio's pike ignores the
        # address until it has been quiet for its window.
        await asyncio.sleep(5)
        clip_ulaw(CLIP, tmp_path, tail_s=1.0)
        result = await run_sipp_async("uac_stream.xml", settings.sip.port, "100", tmp_path, pause_ms=HOLD_MS)
        assert result.returncode == 0, result.output
        async with asyncio.timeout(WAIT_S):
            (ended,) = await consumer.wait_for(lambda c: c.of_type("call.ended"))
        assert wer(reference(CLIP), heard(consumer, ended["call"]["id"])) <= 2 / 11


async def test_a_trunk_registration_goes_through_the_proxy_with_the_public_contact_and_is_refreshed(
    engine: Any, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    async with run_registrar(tmp_path / "registrar") as (registrar_port, registrar_log):
        settings = proxied_settings(tmp_path, consumer, max_calls=8)
        trunk = SipRegistration(registrar=f"127.0.0.1:{registrar_port}", username="100", password="pw",
                                expiry_s=8)
        settings = dataclasses.replace(settings, sip=dataclasses.replace(settings.sip, registrations=[trunk]))
        async with service(settings, engine) as server:
            contact = f"contact <sip:100@127.0.0.1:{settings.sip.port}>"

            async def refreshed() -> list[str]:
                seen = [line for line in registrar_log.read_text().splitlines() if "REGISTER from" in line]
                return seen if len(seen) >= 2 else []

            # pjsua2 refreshes an 8 s registration about 5 s before it lapses.
            registers = await until(refreshed, timeout_s=30)
            sip = await sip_health(server)
        # Sent by worker 0 through Kamailio (the registrar sees the proxy's address), naming the
        # public address as the Contact, so the trunk's calls come to the proxy.
        for line in registers[:2]:
            assert f"REGISTER from 127.0.0.1:{settings.sip.port} {contact}" in line, line
        (state,) = sip["registrations"]
        assert state["state"] == "registered" and state["code"] == 200, state
