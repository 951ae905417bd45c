"""Webhook delivery as the voice assistant sees it: a real aiohttp consumer on 127.0.0.1 that
checks every signature (the `consumer` fixture), against a real SQLite outbox and the real
delivery worker.

"Nothing more arrives" is checked by `Deliverer.stop()`: it dispatches whatever is due once
more and waits for it, so a wrong extra attempt that is due shows up before the assertions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from service_helpers import SECRET

from app.bench.consumer import Delivery, WebhookConsumer
from app.delivery import events
from app.delivery.events import CallRef, WebhookEvent
from app.delivery.outbox import Outbox, OutboxRecord, Status
from app.delivery.worker import Deliverer, DeliveryResult, Outcome
from app.pipeline.types import Transcript
from app.settings import WebhookSettings

REPO = Path(__file__).resolve().parent.parent
FAST = WebhookSettings(timeout_s=2.0, max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05)
PATIENT = WebhookSettings(timeout_s=2.0, max_attempts=1000, backoff_initial_s=0.01, backoff_max_s=0.05)


async def arrived(consumer: WebhookConsumer, count: int) -> list[Delivery]:
    """Wait until the consumer has had `count` signed POSTs (any answer); all of them."""
    deliveries: list[Delivery] = await consumer.wait_for(lambda c: len(c.received) >= count and c.received,
                                                         timeout_s=10)
    return deliveries


def of_call(consumer: WebhookConsumer, call_id: str) -> list[Delivery]:
    return [d for d in consumer.received if d.call_id == call_id]


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "var" / "outbox.sqlite3")
    yield box
    await box.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def said(call: str, index: int, url: str) -> WebhookEvent:
    ref = CallRef(id=call, source="stream", from_="tester", to="bot", dialplan="test")
    text = f"{call} utterance {index}"
    return events.utterance_final(ref, Transcript(index, text, index, index + 0.5, True, 0.9, "en"),
                                  url=url, secret=SECRET)


async def wait_record(outbox: Outbox, event_id: str, ready: Callable[[OutboxRecord], bool],
                      seconds: float = 10.0) -> OutboxRecord:
    """Wait until the outbox's record of `event_id` is `ready` (the worker updates it)."""
    async with asyncio.timeout(seconds):
        while True:
            record = await outbox.get(event_id)
            if record is not None and ready(record):
                return record
            await asyncio.sleep(0.005)


async def wait_status(outbox: Outbox, event_id: str, status: Status, seconds: float = 10.0) -> OutboxRecord:
    return await wait_record(outbox, event_id, lambda r: r.status is status, seconds)


async def test_event_arrives_signed_with_its_id_and_exact_body(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    answers: list[tuple[str, Any]] = []
    results: list[DeliveryResult] = []
    consumer.reply = {"actions": [{"type": "say", "text": "One moment."}]}
    deliverer = Deliverer(outbox, session, FAST, on_result=results.append,
                          on_answer=lambda event, answer: answers.append((event.id, answer)))
    await deliverer.start()
    try:
        event = said("call-a", 0, consumer.url)
        await outbox.add(event)
        (got,) = await arrived(consumer, 1)
        await wait_status(outbox, event.id, Status.DELIVERED)
    finally:
        await deliverer.stop()
    assert got.body == event.body
    assert got.event["utterance"]["text"] == "call-a utterance 0"
    assert got.event_id == event.id
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "Hearsay/0.1"
    assert consumer.rejected == 0
    assert answers == [(event.id, {"actions": [{"type": "say", "text": "One moment."}]})]
    assert [(r.outcome, r.status, r.attempt) for r in results] == [(Outcome.DELIVERED, 200, 1)]
    assert await outbox.depth() == 0


async def test_500_twice_then_200_is_delivered_once_with_the_same_id(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    statuses = iter([500, 500, 200])
    consumer.answer = lambda event: next(statuses)
    deliverer = Deliverer(outbox, session, FAST)
    await deliverer.start()
    try:
        event = said("call-a", 0, consumer.url)
        await outbox.add(event)
        await arrived(consumer, 3)
        await wait_status(outbox, event.id, Status.DELIVERED)
        # A wrong retry would be due within one backoff; stop() then flushes what is due.
        await asyncio.sleep(FAST.backoff_max_s)
    finally:
        await deliverer.stop()
    assert consumer.attempts == [event.id] * 3
    assert {d.body for d in consumer.received} == {event.body}
    record = await outbox.get(event.id)
    assert record is not None and record.attempts == 3


async def test_consumer_down_then_up_gets_everything_in_per_call_order(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    await consumer.stop()  # the assistant is down; its port now refuses connections
    deliverer = Deliverer(outbox, session, PATIENT)
    await deliverer.start()
    try:
        sent = [said(call, i, consumer.url) for i in range(5) for call in ("call-a", "call-b", "call-c")]
        for event in sent:
            await outbox.add(event)
        for first in sent[:3]:  # each call's first event has failed several times
            await wait_record(outbox, first.id, lambda r: r.attempts >= 3)
        assert await outbox.depth() == len(sent)
        await consumer.start()  # back on the same port
        await arrived(consumer, len(sent))
        for event in sent:
            await wait_status(outbox, event.id, Status.DELIVERED)
    finally:
        await deliverer.stop()
    assert sorted(consumer.attempts) == sorted(e.id for e in sent)  # each exactly once
    for call in ("call-a", "call-b", "call-c"):
        order = [d.event["utterance"]["index"] for d in of_call(consumer, call)]
        assert order == [0, 1, 2, 3, 4]


async def test_a_slow_call_does_not_hold_up_other_calls(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    release = consumer.hold("slow")
    deliverer = Deliverer(outbox, session, FAST)
    await deliverer.start()
    try:
        await outbox.add(said("slow", 0, consumer.url))
        await outbox.add(said("slow", 1, consumer.url))
        fast = [said("fast", i, consumer.url) for i in range(3)]
        for event in fast:
            await outbox.add(event)
        await arrived(consumer, 3)
        assert consumer.attempts == [e.id for e in fast]
        release.set()
        await arrived(consumer, 5)
    finally:
        await deliverer.stop()
    slow = [d.event["utterance"]["index"] for d in of_call(consumer, "slow")]
    assert slow == [0, 1]


async def test_410_stops_that_calls_later_events_only(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    def answer(event: dict[str, Any]) -> int:
        gone = event["call"]["id"] == "call-a" and event["utterance"]["index"] == 1
        return 410 if gone else 200

    consumer.answer = answer
    deliverer = Deliverer(outbox, session, FAST)
    await deliverer.start()
    try:
        a = [said("call-a", i, consumer.url) for i in range(4)]
        b = [said("call-b", i, consumer.url) for i in range(4)]
        for event in a + b:
            await outbox.add(event)
        for event in b:
            await wait_status(outbox, event.id, Status.DELIVERED)
        await wait_status(outbox, a[3].id, Status.STOPPED)
        late = said("call-a", 4, consumer.url)
        assert await outbox.add(late) is Status.STOPPED  # stop() would send it, were it due
    finally:
        await deliverer.stop()
    assert [d.event_id for d in of_call(consumer, "call-a")] == [a[0].id, a[1].id]
    assert sorted(d.event_id for d in of_call(consumer, "call-b")) == sorted(e.id for e in b)
    statuses = [record.status for e in a if (record := await outbox.get(e.id)) is not None]
    assert statuses == [Status.DELIVERED, Status.STOPPED, Status.STOPPED, Status.STOPPED]


async def test_dead_letter_after_max_attempts_then_operator_retry(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    broken = True
    consumer.answer = lambda event: 503 if broken and event["utterance"]["index"] == 0 else 200
    settings = WebhookSettings(timeout_s=2.0, max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02)
    results: list[DeliveryResult] = []
    deliverer = Deliverer(outbox, session, settings, on_result=results.append)
    await deliverer.start()
    try:
        first, second = said("call-a", 0, consumer.url), said("call-a", 1, consumer.url)
        await outbox.add(first)
        await outbox.add(second)
        dead = await wait_status(outbox, first.id, Status.DEAD)
        await wait_status(outbox, second.id, Status.DELIVERED)  # a dead event does not block its call
        assert dead.attempts == 3 and dead.last_error == "HTTP 503"
        assert consumer.attempts == [first.id] * 3 + [second.id]
        assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY, Outcome.DEAD, Outcome.DELIVERED]

        broken = False
        assert await outbox.retry() == 1
        await wait_status(outbox, first.id, Status.DELIVERED)
    finally:
        await deliverer.stop()
    assert consumer.attempts == [first.id] * 3 + [second.id, first.id]


async def test_timeouts_and_garbage_answers_are_handled(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    release = consumer.hold("slow")
    answers: list[Any] = []
    settings = WebhookSettings(timeout_s=0.2, max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.02)
    deliverer = Deliverer(outbox, session, settings, on_answer=lambda e, a: answers.append(a))
    await deliverer.start()
    try:
        event = said("slow", 0, consumer.url)
        await outbox.add(event)
        record = await wait_record(outbox, event.id, lambda r: r.attempts >= 1, seconds=5)
        assert record.status is Status.PENDING and "timed out" in record.last_error
        release.set()
        await wait_status(outbox, event.id, Status.DELIVERED)
    finally:
        await deliverer.stop()
    assert answers == []  # an empty 200 is no answer


async def test_events_without_a_webhook_url_are_stored_not_sent(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    deliverer = Deliverer(outbox, session, FAST)
    await deliverer.start()
    try:
        local = said("call-a", 0, "")
        assert await outbox.add(local) is Status.STORED
        sent = said("call-b", 0, consumer.url)
        await outbox.add(sent)
        await arrived(consumer, 1)
    finally:
        await deliverer.stop()
    assert consumer.attempts == [sent.id]
    stored = await outbox.list(Status.STORED)
    assert [r.event.payload()["utterance"]["text"] for r in stored] == ["call-a utterance 0"]


async def test_stop_keeps_undeliverable_events_for_the_next_run(
        consumer: WebhookConsumer, tmp_path: Path, session: aiohttp.ClientSession) -> None:
    path = tmp_path / "outbox.sqlite3"
    await consumer.stop()
    outbox = await Outbox.open(path)
    deliverer = Deliverer(outbox, session, PATIENT)
    await deliverer.start()
    sent = [said("call-a", i, consumer.url) for i in range(3)]
    for event in sent:
        await outbox.add(event)
    await deliverer.stop(flush_timeout_s=0.2)
    assert await outbox.depth() == 3
    await outbox.close()

    await consumer.start()
    reopened = await Outbox.open(path)
    deliverer = Deliverer(reopened, session, FAST)
    await deliverer.start()
    try:
        await arrived(consumer, 3)
    finally:
        await deliverer.stop()
        await reopened.close()
    assert consumer.attempts == [e.id for e in sent]


WRITER = """
import asyncio, sys
from app.delivery import events
from app.delivery.events import CallRef
from app.delivery.outbox import Outbox
from app.pipeline.types import Transcript

async def main(path, url, count):
    outbox = await Outbox.open(path)
    call = CallRef(id="killed", source="sip", from_="a", to="b", dialplan="test")
    for i in range(count):
        t = Transcript(i, f"said {i}", i, i + 0.5, True, 0.9, "en")
        await outbox.add(events.utterance_final(call, t, url=url, secret=sys.argv[4]))
    print("added", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.process
async def test_events_survive_kill_9_and_are_delivered_once_after_restart(
        consumer: WebhookConsumer, tmp_path: Path, session: aiohttp.ClientSession) -> None:
    path = tmp_path / "var" / "outbox.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), consumer.url, "20", SECRET,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        assert await proc.stdout.readline() == b"added\n"
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    assert consumer.received == []

    outbox = await Outbox.open(path)
    deliverer = Deliverer(outbox, session, FAST)
    await deliverer.start()
    try:
        await arrived(consumer, 20)
        for record in await outbox.list(limit=100):
            await wait_status(outbox, record.event.id, Status.DELIVERED)
    finally:
        await deliverer.stop()  # flushes a duplicate, were one due
        await outbox.close()
    texts = [d.event["utterance"]["text"] for d in consumer.received]
    assert texts == [f"said {i}" for i in range(20)]
    assert len(set(consumer.attempts)) == len(consumer.attempts) == 20
    assert consumer.rejected == 0


@pytest.mark.parametrize("keep_days", [0.0, 1e-9])
async def test_old_delivered_events_are_purged_unless_kept_forever(
        consumer: WebhookConsumer, outbox: Outbox, session: aiohttp.ClientSession, keep_days: float) -> None:
    done, dead = said("call-a", 0, "http://127.0.0.1:9/"), said("call-b", 0, "http://127.0.0.1:9/")
    for event in (done, dead):
        await outbox.add(event)
    await outbox.mark_delivered(done.id, 1)
    await outbox.mark_dead(dead.id, "HTTP 500", 5)
    settings = WebhookSettings(keep_delivered_days=keep_days)
    deliverer = Deliverer(outbox, session, settings)
    await deliverer.start()
    try:
        # The dispatcher's first round purges. A second call's event, added once the first
        # one was sent, is sent by a later round, so when it arrives the first round is over.
        for count, call in enumerate(("barrier-1", "barrier-2"), start=1):
            await outbox.add(said(call, 0, consumer.url))
            await arrived(consumer, count)
    finally:
        await deliverer.stop()
    left = {r.event.id for r in await outbox.list() if not r.event.call_id.startswith("barrier")}
    assert dead.id in left  # dead letters wait for an operator
    assert (done.id in left) is (keep_days == 0)
