"""A local webhook consumer that verifies Hearsay's signatures: the benchmark's (and the
tests') stand-in for a voice assistant.

    consumer = WebhookConsumer(secret="whsec_test")
    url = await consumer.start()           # http://127.0.0.1:<port>/hook
    ... point a dialplan's webhook.url at it ...
    await consumer.wait_for(lambda c: c.of_type("call.ended"))
    await consumer.stop()

Every POST is checked (`Hearsay-Signature` over the raw body, `Hearsay-Event-Id` equal to
the body's id); a bad one is answered 401 and counted in `rejected`. `status` sets the answer
for the next requests (e.g. 503 to play a consumer that is down); only 2xx answers count as
received. `on_event(event, arrived_at)` is called for each accepted event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from app.delivery.sign import EVENT_ID_HEADER, HEADER, verify


class WebhookConsumer:
    """An aiohttp server on 127.0.0.1 that records the events Hearsay POSTs to it."""

    def __init__(self, secret: str, *, on_event: Callable[[dict[str, Any], float], None] | None = None
                 ) -> None:
        self.secret = secret
        self.status = 200
        self.events: list[dict[str, Any]] = []  # accepted (2xx) events, in arrival order
        self.attempts: list[str] = []  # every event id POSTed, whatever the answer
        self.rejected = 0
        self._on_event = on_event
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen (an ephemeral port by default); returns the webhook URL."""
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

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

    async def wait_for(self, ready: Callable[[WebhookConsumer], Any]) -> Any:
        """Wait until `ready(self)` is truthy and return it (bound it with `asyncio.timeout`)."""
        async with self._changed:
            while not (value := ready(self)):
                await self._changed.wait()
            return value

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.monotonic()
        header = request.headers.get(HEADER, "")
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if (not isinstance(event, dict) or not verify(self.secret, body, header)
                or request.headers.get(EVENT_ID_HEADER) != event.get("id")):
            self.rejected += 1
            return web.json_response({"error": "bad signature"}, status=401)
        self.attempts.append(event["id"])
        status = self.status
        if 200 <= status < 300:
            self.events.append(event)
            if self._on_event is not None:
                self._on_event(event, arrived)
        async with self._changed:
            self._changed.notify_all()
        return web.json_response({}, status=status)
