"""Webhook delivery as the voice assistant sees it: a real aiohttp consumer on 127.0.0.1 that
checks every signature, against a real SQLite outbox and the real delivery worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.delivery import events
from app.delivery.events import CallRef, WebhookEvent
from app.delivery.outbox import Outbox, OutboxRecord, Status
from app.delivery.sign import verify
from app.delivery.worker import Deliverer, DeliveryResult, Outcome
from app.pipeline.events import Transcript
from app.settings import WebhookSettings

SECRET = "whsec_test"
REPO = Path(__file__).resolve().parent.parent
FAST = WebhookSettings(timeout_s=2.0, max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05)
PATIENT = WebhookSettings(timeout_s=2.0, max_attempts=1000, backoff_initial_s=0.01, backoff_max_s=0.05)


@dataclass
class Received:
    event_id: str
    body: bytes
    headers: dict[str, str]

    @property
    def payload(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


@dataclass
class Consumer:
    """The assistant's webhook: verifies signatures, records what arrives, answers as told."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    bad_signatures: int = 0
    # payload -> (status, JSON answer or None); default 200 with no body
    answer: Callable[[dict[str, Any]], tuple[int, Any]] = lambda payload: (200, None)
    hold: asyncio.Event | None = None  # while set to an unset Event, calls named "slow" wait
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not verify(SECRET, body, request.headers.get("Hearsay-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        payload = json.loads(body)
        if self.hold is not None and payload["call"]["id"] == "slow":
            await self.hold.wait()
        status, answer = self.answer(payload)
        async with self._arrived:
            self.received.append(Received(request.headers["Hearsay-Event-Id"], body, dict(request.headers)))
            self._arrived.notify_all()
        if answer is None:
            return web.Response(status=status)
        return web.json_response(answer, status=status)

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[Received]:
        async with asyncio.timeout(seconds), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received

    def of_call(self, call_id: str) -> list[Received]:
        return [r for r in self.received if r.payload["call"]["id"] == call_id]

    def ids(self) -> list[str]:
        return [r.event_id for r in self.received]


@pytest.fixture
async def consumer() -> AsyncIterator[Consumer]:
    c = Consumer()
    await c.start()
    yield c
    await c.stop()


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


async def wait_status(outbox: Outbox, event_id: str, status: Status, seconds: float = 10.0) -> OutboxRecord:
    """Wait until the outbox shows `event_id` with `status` (the worker updates it)."""
    async with asyncio.timeout(seconds):
        while True:
            record = await outbox.get(event_id)
            if record is not None and record.status is status:
                return record
            await asyncio.sleep(0.005)


async def test_event_arrives_signed_with_its_id_and_exact_body(
        consumer: Consumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    answers: list[tuple[str, Any]] = []
    results: list[DeliveryResult] = []
    consumer.answer = lambda payload: (200, {"actions": [{"type": "say", "text": "One moment."}]})
    deliverer = Deliverer(outbox, session, FAST, on_result=results.append,
                          on_answer=lambda event, answer: answers.append((event.id, answer)))
    await deliverer.start()
    try:
        event = said("call-a", 0, consumer.url)
        await outbox.add(event)
        (got,) = await consumer.wait_for(1)
        await wait_status(outbox, event.id, Status.DELIVERED)
    finally:
        await deliverer.stop()
    assert got.body == event.body
    assert got.payload["utterance"]["text"] == "call-a utterance 0"
    assert got.event_id == event.id
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "Hearsay/0.1"
    assert consumer.bad_signatures == 0
    assert answers == [(event.id, {"actions": [{"type": "say", "text": "One moment."}]})]
    assert [(r.outcome, r.status, r.attempt) for r in results] == [(Outcome.DELIVERED, 200, 1)]
    assert await outbox.depth() == 0


async def test_500_twice_then_200_is_delivered_once_with_the_same_id(
        consumer: Consumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    statuses = iter([500, 500, 200])
    consumer.answer = lambda payload: (next(statuses), None)
    deliverer = Deliverer(outbox, session, FAST)
    await deliverer.start()
    try:
        event = said("call-a", 0, consumer.url)
        await outbox.add(event)
        await consumer.wait_for(3)
        await wait_status(outbox, event.id, Status.DELIVERED)
        await asyncio.sleep(0.2)  # room for a wrong fourth attempt to show up
    finally:
        await deliverer.stop()
    assert consumer.ids() == [event.id] * 3
    assert {r.body for r in consumer.received} == {event.body}
    record = await outbox.get(event.id)
    assert record is not None and record.attempts == 3


async def test_consumer_down_then_up_gets_everything_in_per_call_order(
        consumer: Consumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    await consumer.stop()  # the assistant is down; its port now refuses connections
    deliverer = Deliverer(outbox, session, PATIENT)
    await deliverer.start()
    try:
        sent = [said(call, i, consumer.url) for i in range(5) for call in ("call-a", "call-b", "call-c")]
        for event in sent:
            await outbox.add(event)
        await asyncio.sleep(0.3)  # several failed rounds
        assert await outbox.depth() == len(sent)
        await consumer.start()  # back on the same port
        await consumer.wait_for(len(sent))
        for event in sent:
            await wait_status(outbox, event.id, Status.DELIVERED)
    finally:
        await deliverer.stop()
    assert sorted(consumer.ids()) == sorted(e.id for e in sent)  # each exactly once
    for call in ("call-a", "call-b", "call-c"):
        order = [r.payload["utterance"]["index"] for r in consumer.of_call(call)]
        assert order == [0, 1, 2, 3, 4]


async def test_a_slow_call_does_not_hold_up_other_calls(
        consumer: Consumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    consumer.hold = asyncio.Event()
    deliverer = Deliverer(outbox, session, FAST)
    await deliverer.start()
    try:
        await outbox.add(said("slow", 0, consumer.url))
        await outbox.add(said("slow", 1, consumer.url))
        fast = [said("fast", i, consumer.url) for i in range(3)]
        for event in fast:
            await outbox.add(event)
        await consumer.wait_for(3)
        assert consumer.ids() == [e.id for e in fast]
        consumer.hold.set()
        await consumer.wait_for(5)
    finally:
        await deliverer.stop()
    slow = [r.payload["utterance"]["index"] for r in consumer.of_call("slow")]
    assert slow == [0, 1]


async def test_410_stops_that_calls_later_events_only(
        consumer: Consumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    def answer(payload: dict[str, Any]) -> tuple[int, Any]:
        gone = payload["call"]["id"] == "call-a" and payload["utterance"]["index"] == 1
        return (410 if gone else 200, None)

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
        assert await outbox.add(late) is Status.STOPPED
        await asyncio.sleep(0.1)
    finally:
        await deliverer.stop()
    assert [r.event_id for r in consumer.of_call("call-a")] == [a[0].id, a[1].id]
    assert sorted(r.event_id for r in consumer.of_call("call-b")) == sorted(e.id for e in b)
    statuses = [record.status for e in a if (record := await outbox.get(e.id)) is not None]
    assert statuses == [Status.DELIVERED, Status.STOPPED, Status.STOPPED, Status.STOPPED]


async def test_dead_letter_after_max_attempts_then_operator_retry(
        consumer: Consumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    broken = True
    consumer.answer = lambda payload: (503 if broken and payload["utterance"]["index"] == 0 else 200, None)
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
        assert consumer.ids() == [first.id] * 3 + [second.id]
        assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY, Outcome.DEAD, Outcome.DELIVERED]

        broken = False
        assert await outbox.retry() == 1
        await wait_status(outbox, first.id, Status.DELIVERED)
    finally:
        await deliverer.stop()
    assert consumer.ids() == [first.id] * 3 + [second.id, first.id]


async def test_timeouts_and_garbage_answers_are_handled(
        consumer: Consumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    consumer.hold = asyncio.Event()
    answers: list[Any] = []
    settings = WebhookSettings(timeout_s=0.2, max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.02)
    consumer.answer = lambda payload: (200, None)
    deliverer = Deliverer(outbox, session, settings, on_answer=lambda e, a: answers.append(a))
    await deliverer.start()
    try:
        event = said("slow", 0, consumer.url)
        await outbox.add(event)
        async with asyncio.timeout(5):
            while True:
                record = await outbox.get(event.id)
                if record is not None and record.attempts >= 1:
                    break
                await asyncio.sleep(0.01)
        assert record.status is Status.PENDING and "timed out" in record.last_error
        consumer.hold.set()
        await wait_status(outbox, event.id, Status.DELIVERED)
    finally:
        await deliverer.stop()
    assert answers == []  # an empty 200 is no answer


async def test_events_without_a_webhook_url_are_stored_not_sent(
        consumer: Consumer, outbox: Outbox, session: aiohttp.ClientSession) -> None:
    deliverer = Deliverer(outbox, session, FAST)
    await deliverer.start()
    try:
        local = said("call-a", 0, "")
        assert await outbox.add(local) is Status.STORED
        sent = said("call-b", 0, consumer.url)
        await outbox.add(sent)
        await consumer.wait_for(1)
    finally:
        await deliverer.stop()
    assert consumer.ids() == [sent.id]
    stored = await outbox.list(Status.STORED)
    assert [r.event.payload()["utterance"]["text"] for r in stored] == ["call-a utterance 0"]


async def test_stop_keeps_undeliverable_events_for_the_next_run(
        consumer: Consumer, tmp_path: Path, session: aiohttp.ClientSession) -> None:
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
        await consumer.wait_for(3)
    finally:
        await deliverer.stop()
        await reopened.close()
    assert consumer.ids() == [e.id for e in sent]


WRITER = """
import asyncio, sys
from app.delivery import events
from app.delivery.events import CallRef
from app.delivery.outbox import Outbox
from app.pipeline.events import Transcript

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


async def test_events_survive_kill_9_and_are_delivered_once_after_restart(
        consumer: Consumer, tmp_path: Path, session: aiohttp.ClientSession) -> None:
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
        await consumer.wait_for(20)
        await asyncio.sleep(0.2)  # room for a duplicate to show up
    finally:
        await deliverer.stop()
        await outbox.close()
    texts = [r.payload["utterance"]["text"] for r in consumer.received]
    assert texts == [f"said {i}" for i in range(20)]
    assert len(set(consumer.ids())) == 20
    assert consumer.bad_signatures == 0



@pytest.mark.parametrize("keep_days", [0.0, 1e-9])
async def test_old_delivered_events_are_purged_unless_kept_forever(
        outbox: Outbox, session: aiohttp.ClientSession, keep_days: float) -> None:
    done, dead = said("call-a", 0, "http://127.0.0.1:9/"), said("call-b", 0, "http://127.0.0.1:9/")
    for event in (done, dead):
        await outbox.add(event)
    await outbox.mark_delivered(done.id, 1)
    await outbox.mark_dead(dead.id, "HTTP 500", 5)
    settings = WebhookSettings(keep_delivered_days=keep_days)
    deliverer = Deliverer(outbox, session, settings)
    await deliverer.start()
    try:
        async with asyncio.timeout(5):
            while keep_days:  # the dispatcher's first round purges
                if await outbox.get(done.id) is None:
                    break
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    finally:
        await deliverer.stop()
    left = {r.event.id for r in await outbox.list()}
    assert dead.id in left  # dead letters wait for an operator
    assert (done.id in left) is (keep_days == 0)
