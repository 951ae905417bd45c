"""The SQLite outbox: what it keeps on disk, in what order it hands events out, and what
operators can do with it. Real SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.delivery import events
from app.delivery.events import CallRef, WebhookEvent
from app.delivery.outbox import Outbox, Status
from app.pipeline.types import Transcript

URL = "http://127.0.0.1:9/hook"


def said(call: str, index: int, url: str = URL) -> WebhookEvent:
    ref = CallRef(id=call, source="twilio", from_="+15550000001", to="+15550001111", dialplan="support")
    transcript = Transcript(index, f"{call} {index}", index, index + 1, True, 0.8, "en")
    return events.utterance_final(ref, transcript, url=url, secret="whsec_x")


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "nested" / "dir" / "outbox.sqlite3")
    yield box
    await box.close()


async def test_file_is_created_private_in_wal_mode_and_events_are_on_disk(outbox: Outbox) -> None:
    event = said("c1", 0)
    assert await outbox.add(event) is Status.PENDING
    assert stat.S_IMODE(outbox.path.stat().st_mode) == 0o600  # it holds webhook secrets
    # A second, independent connection (another process would see the same) reads it back.
    with sqlite3.connect(outbox.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        row = other.execute("SELECT id, body, status FROM events").fetchone()
    assert row == (event.id, event.body, "pending")


async def test_reopened_outbox_returns_the_same_event(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = await Outbox.open(path)
    event = said("c1", 0)
    await first.add(event)
    await first.close()
    second = await Outbox.open(path)
    try:
        (record,) = await second.due()
    finally:
        await second.close()
    assert record.event == event
    assert (record.status, record.attempts) == (Status.PENDING, 0)


async def test_due_gives_each_calls_oldest_event_oldest_first(outbox: Outbox) -> None:
    a0, b0, a1, c0 = said("a", 0), said("b", 0), said("a", 1), said("c", 0)
    for event in (a0, b0, a1, c0):
        await outbox.add(event)
    assert [r.event.id for r in await outbox.due()] == [a0.id, b0.id, c0.id]
    assert [r.event.id for r in await outbox.due(limit=2)] == [a0.id, b0.id]
    assert [r.event.id for r in await outbox.due(exclude_calls=["a"])] == [b0.id, c0.id]

    await outbox.mark_delivered(a0.id, 1)
    assert [r.event.id for r in await outbox.due()] == [b0.id, a1.id, c0.id]
    assert (await outbox.next_for_call("a")).event.id == a1.id  # type: ignore[union-attr]


async def test_a_waiting_retry_holds_back_its_calls_later_events(outbox: Outbox) -> None:
    a0, a1, b0 = said("a", 0), said("a", 1), said("b", 0)
    for event in (a0, a1, b0):
        await outbox.add(event)
    later = time.time() + 60
    await outbox.mark_retry(a0.id, 1, later, "HTTP 500")
    assert [r.event.id for r in await outbox.due()] == [b0.id]
    assert await outbox.next_for_call("a") is None
    assert await outbox.next_attempt_at() == pytest.approx(time.time(), abs=5)  # b0 is due now
    await outbox.mark_delivered(b0.id, 1)
    assert await outbox.next_attempt_at() == pytest.approx(later)
    assert [r.event.id for r in await outbox.due(now=later + 1)] == [a0.id]
    record = await outbox.get(a0.id)
    assert record is not None and (record.attempts, record.last_error) == (1, "HTTP 500")


async def test_dead_event_lets_the_next_one_through_and_retry_requeues_it(outbox: Outbox) -> None:
    a0, a1 = said("a", 0), said("a", 1)
    await outbox.add(a0)
    await outbox.add(a1)
    await outbox.mark_dead(a0.id, "HTTP 500", 15)
    assert [r.event.id for r in await outbox.due()] == [a1.id]
    assert await outbox.retry() == 1
    record = await outbox.get(a0.id)
    assert record is not None
    assert (record.status, record.attempts, record.last_error) == (Status.PENDING, 0, "")
    assert await outbox.depth() == 2


async def test_410_stops_a_call_now_and_later_until_retried(outbox: Outbox) -> None:
    a0, a1, b0 = said("a", 0), said("a", 1), said("b", 0)
    for event in (a0, a1, b0):
        await outbox.add(event)
    assert await outbox.mark_stopped_call("a") == 2
    assert await outbox.add(said("a", 2)) is Status.STOPPED
    assert [r.event.id for r in await outbox.due()] == [b0.id]
    assert await outbox.retry([a0.id]) == 1  # an operator overrides the 410
    assert await outbox.add(said("a", 3)) is Status.PENDING
    assert await outbox.retry([b0.id]) == 0  # only dead or stopped events can be retried


async def test_events_without_a_url_are_stored_and_never_due(outbox: Outbox) -> None:
    assert await outbox.add(said("a", 0, url="")) is Status.STORED
    assert await outbox.due() == []
    assert await outbox.depth() == 0
    assert (await outbox.counts())[Status.STORED] == 1


async def test_adding_the_same_event_twice_keeps_one(outbox: Outbox) -> None:
    event = said("a", 0)
    await outbox.add(event)
    await outbox.add(event)
    assert len(await outbox.list()) == 1


async def test_list_counts_and_purge(outbox: Outbox) -> None:
    sent = [said("a", i) for i in range(4)]
    for event in sent:
        await outbox.add(event)
    await outbox.mark_delivered(sent[0].id, 1)
    await outbox.mark_delivered(sent[1].id, 2)
    await outbox.mark_dead(sent[2].id, "HTTP 400")
    counts = await outbox.counts()
    assert (counts[Status.DELIVERED], counts[Status.DEAD], counts[Status.PENDING]) == (2, 1, 1)
    assert [r.event.id for r in await outbox.list()] == [e.id for e in reversed(sent)]
    assert [r.event.id for r in await outbox.list(Status.DELIVERED, limit=1)] == [sent[1].id]
    assert await outbox.purge(Status.DELIVERED, older_than=time.time() - 3600) == 0  # both are recent
    assert await outbox.purge(Status.DELIVERED) == 2
    assert [r.event.id for r in await outbox.list()] == [sent[3].id, sent[2].id]


async def test_the_event_loop_keeps_running_while_the_outbox_writes(outbox: Outbox) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        for i in range(50):
            await outbox.add(said("a", i))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert ticks >= 50  # the loop ran the ticker during every add()
    assert await outbox.depth() == 50


async def test_closed_outbox_refuses_work(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "o.sqlite3")
    await box.close()
    await box.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await box.depth()


async def test_listener_is_told_about_pending_events_only(outbox: Outbox) -> None:
    told: list[str] = []
    outbox.add_listener(lambda: told.append("added"))
    await outbox.add(said("a", 0))
    await outbox.add(said("a", 1, url=""))
    assert told == ["added"]
