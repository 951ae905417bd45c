"""`python -m app outbox list|retry|purge`, run as an operator would, against a real outbox."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from service_helpers import SECRET

from app.bench.consumer import WebhookConsumer
from app.delivery import events
from app.delivery.events import CallRef, WebhookEvent
from app.delivery.outbox import Outbox, Status
from app.delivery.worker import Deliverer
from app.pipeline.types import Transcript
from app.settings import WebhookSettings

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.process  # each `app_cli` call is a new `python -m app outbox` process


def said(call: str, index: int, url: str = "http://127.0.0.1:9/hook") -> WebhookEvent:
    ref = CallRef(id=call, source="sip", from_="alice", to="100", dialplan="support")
    transcript = Transcript(index, f"words {index}", index, index + 1, True, 0.8, "en")
    return events.utterance_final(ref, transcript, url=url, secret=SECRET)


async def app_cli(config: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARSAY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "outbox", *args, "--config", str(config), cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(f'[webhooks]\noutbox = "{tmp_path / "var" / "outbox.sqlite3"}"\n')
    return path


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "var" / "outbox.sqlite3")
    yield box
    await box.close()


async def test_list_shows_a_table_counts_and_one_event_in_full(config: Path, outbox: Outbox) -> None:
    a, b, c = said("call-1", 0), said("call-1", 1), said("call-2", 0)
    for event in (a, b, c):
        await outbox.add(event)
    await outbox.mark_delivered(a.id, 1)
    await outbox.mark_dead(b.id, "HTTP 500", 15)

    code, out, _ = await app_cli(config, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "pending=1  delivered=1  dead=1  stopped=0  stored=0"
    assert lines[1].split() == ["ID", "TYPE", "CALL", "STATUS", "TRIES", "CREATED", "NEXT/UPDATED", "LAST",
                                "ERROR"]
    assert [line.split()[0] for line in lines[2:]] == [c.id, b.id, a.id]  # newest first
    dead_row = next(line for line in lines if line.startswith(b.id))
    assert "utterance.final" in dead_row and "call-1" in dead_row and " dead " in dead_row
    assert dead_row.endswith("HTTP 500")

    code, out, _ = await app_cli(config, "list", "--status", "dead")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[2:]] == [b.id]

    code, out, _ = await app_cli(config, "list", "--id", b.id)
    assert code == 0
    assert f"id:         {b.id}" in out and "last error: HTTP 500" in out
    body = json.loads(out.split("body:\n", 1)[1])
    assert body["utterance"]["text"] == "words 1"

    code, out, _ = await app_cli(config, "list", "--id", "evt_missing")
    assert code == 1 and "evt_missing: not found" in out


async def test_retry_and_purge(config: Path, outbox: Outbox) -> None:
    dead, done = said("call-1", 0), said("call-1", 1)
    await outbox.add(dead)
    await outbox.add(done)
    await outbox.mark_dead(dead.id, "HTTP 500", 15)
    await outbox.mark_delivered(done.id, 1)

    assert await app_cli(config, "retry", "--id", done.id) == (
        1, "requeued 0 of 1 events (only dead or stopped events can be retried)\n", "")
    assert await app_cli(config, "retry") == (0, "requeued 1 event\n", "")
    record = await outbox.get(dead.id)
    assert record is not None and record.status is Status.PENDING

    code, _, err = await app_cli(config, "purge")
    assert code == 2 and "purge needs --status" in err
    assert await app_cli(config, "purge", "--status", "delivered") == (0, "purged 1 delivered event\n", "")
    assert [r.event.id for r in await outbox.list()] == [dead.id]


async def test_missing_outbox_and_bad_config_are_reported(tmp_path: Path, config: Path) -> None:
    code, _, err = await app_cli(config, "list")
    assert code == 1 and "no outbox at" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[webhooks]\noutbx = 1\n")
    code, _, err = await app_cli(bad, "list")
    assert code == 2 and "webhooks.outbx" in err


async def test_a_running_deliverer_sends_what_the_operator_retries(
        config: Path, outbox: Outbox, consumer: WebhookConsumer) -> None:
    consumer.status = 204
    event = said("call-1", 0, url=consumer.url)
    await outbox.add(event)
    await outbox.mark_dead(event.id, "HTTP 500", 15)  # died while the assistant was broken

    settings = WebhookSettings(backoff_initial_s=0.01, backoff_max_s=0.05)
    async with aiohttp.ClientSession() as session:
        deliverer = Deliverer(outbox, session, settings, poll_interval_s=0.05)
        await deliverer.start()
        try:
            assert (await app_cli(config, "retry"))[0] == 0  # another process changes the file
            await consumer.wait(event.call_id, "utterance.final", timeout_s=10)
        finally:
            await deliverer.stop()
    assert consumer.attempts == [event.id]
    assert consumer.rejected == 0
