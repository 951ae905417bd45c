"""A local webhook consumer that verifies Hearsay's signatures: the stand-in for a voice
assistant in the benchmarks and the tests.

    async with WebhookConsumer(secret="whsec_test") as consumer:   # or await start()/stop()
        ... point a dialplan's webhook.url at consumer.url ...
        ended = await consumer.wait(call_id)                        # its call.ended event
        finals = consumer.of_type("utterance.final", call_id)

Every POST is checked (`Hearsay-Signature` over the raw body, `Hearsay-Event-Id` equal to the
body's id); a bad one is answered 401 and only counted in `rejected`. A good one is recorded
in `received` whatever it is answered; only those answered 2xx also go to `events` (and to
`on_event(event, arrived_at)`).

Knobs, for playing an assistant that misbehaves:
- `status` is the answer to every event, or `answer(event)` picks one per event (503 plays a
  consumer that is down, 410 one that wants no more of the call);
- `reply` is the JSON body sent with 2xx answers (None: an empty body, which is no answer),
  or `reply_to(event)` picks one per event (an assistant answering with talk-back actions);
- `hold(call_id)` keeps that call's requests waiting until the returned event is set (a slow
  consumer, or one that times out);
- `stop()` then `start()` takes it down and brings it back on the same port.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

from app.delivery.sign import EVENT_ID_HEADER, HEADER, verify

WAIT_S = 120.0  # how long `wait` and `wait_for` wait by default: a guard against hangs only


@dataclass(frozen=True, slots=True)
class Delivery:
    """One signed POST, as it arrived, and the status it was answered."""

    event: dict[str, Any]  # the parsed body
    body: bytes
    headers: dict[str, str]
    status: int
    arrived_at: float  # time.monotonic()

    @property
    def event_id(self) -> str:
        return str(self.event["id"])

    @property
    def call_id(self) -> str:
        return str(self.event["call"]["id"])


class WebhookConsumer:
    """An aiohttp server on 127.0.0.1 that records the events Hearsay POSTs to it."""

    def __init__(self, secret: str, *, on_event: Callable[[dict[str, Any], float], None] | None = None
                 ) -> None:
        self.secret = secret
        self.status = 200
        self.answer: Callable[[dict[str, Any]], int] | None = None
        self.reply: Any = None
        self.reply_to: Callable[[dict[str, Any]], Any] | None = None
        self.received: list[Delivery] = []  # every signed POST, in arrival order
        self.events: list[dict[str, Any]] = []  # the events answered 2xx, in arrival order
        self.rejected = 0  # POSTs with a bad signature or event id
        self.url = ""
        self.port = 0
        self._on_event = on_event
        self._holds: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        """Listen on `port` (by default the port of an earlier start, else an ephemeral one);
        returns the webhook URL."""
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, self.port if port is None else port).start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://{host}:{self.port}/hook"
        return self.url

    async def stop(self) -> None:
        """Stop listening: connections to the port are refused until `start()`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookConsumer:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def hold(self, call_id: str) -> asyncio.Event:
        """Keep requests for `call_id` waiting (before they are recorded) until the returned
        event is set."""
        return self._holds.setdefault(call_id, asyncio.Event())

    @property
    def attempts(self) -> list[str]:
        """The event id of every signed POST, in arrival order (a retry appears again)."""
        return [d.event_id for d in self.received]

    def of_type(self, kind: str, call_id: str | None = None) -> list[dict[str, Any]]:
        """Accepted events of `kind` (for one call if `call_id`), first delivery per id."""
        seen: set[str] = set()
        found = []
        for event in self.events:
            wanted = event["type"] == kind and (call_id is None or event["call"]["id"] == call_id)
            if wanted and event["id"] not in seen:
                seen.add(event["id"])
                found.append(event)
        return found

    async def wait_for(self, ready: Callable[[WebhookConsumer], Any], timeout_s: float | None = WAIT_S) -> Any:
        """Wait until `ready(self)` is truthy (re-checked after each POST) and return it;
        TimeoutError after `timeout_s` (None: no limit)."""
        async with asyncio.timeout(timeout_s), self._changed:
            while not (value := ready(self)):
                await self._changed.wait()
            return value

    async def wait(self, call_id: str, kind: str = "call.ended", timeout_s: float | None = WAIT_S
                   ) -> dict[str, Any]:
        """The first accepted event of `kind` for `call_id`, waiting for it if need be."""
        found: list[dict[str, Any]] = await self.wait_for(lambda c: c.of_type(kind, call_id), timeout_s)
        return found[0]

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.monotonic()
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if (not isinstance(event, dict) or not verify(self.secret, body, request.headers.get(HEADER, ""))
                or request.headers.get(EVENT_ID_HEADER) != event.get("id")):
            self.rejected += 1
            await self._notify()
            return web.json_response({"error": "bad signature"}, status=401)
        call = event.get("call")
        gate = self._holds.get(str(call.get("id"))) if isinstance(call, dict) else None
        if gate is not None:
            await gate.wait()
        status = self.status if self.answer is None else self.answer(event)
        self.received.append(Delivery(event, body, dict(request.headers), status, arrived))
        if 200 <= status < 300:
            self.events.append(event)
            if self._on_event is not None:
                self._on_event(event, arrived)
        await self._notify()
        reply = self.reply_to(event) if self.reply_to is not None else self.reply
        if 200 <= status < 300 and reply is not None:
            return web.json_response(reply, status=status)
        return web.Response(status=status)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
