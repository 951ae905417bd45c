"""The delivery worker: sends the outbox's events to their webhooks, signed, in per-call order.

`Deliverer` owns one background task (the dispatcher) and one short-lived task per call with
something due (a lane). A lane sends its call's events one after another, so a call's events
arrive in order, while different calls are delivered in parallel (at most `concurrency`).

Answers: 2xx = delivered (a JSON body goes to `on_answer`); 410 = stop the call's deliveries;
anything else, a timeout or a network error = retry after an exponential backoff with jitter
(`backoff_initial_s` doubling up to `backoff_max_s`, at least any `Retry-After`), until
`max_attempts`, then the event is dead-lettered. A retried event keeps its id and body.

The dispatcher wakes when the outbox reports an `add()` (so the POST follows within a few
milliseconds), when a retry falls due, and at least every `poll_interval_s` (to see events
another process, e.g. `python -m app outbox retry`, made pending). At `start()` it picks up
whatever a previous run left pending. Every few minutes it purges events delivered more than
`keep_delivered_days` ago, so the outbox does not grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from app.delivery.events import WebhookEvent
from app.delivery.outbox import Outbox, OutboxRecord, Status
from app.delivery.sign import EVENT_ID_HEADER, HEADER, sign
from app.settings import WebhookSettings

log = logging.getLogger("hearsay.webhook")

USER_AGENT = "Hearsay/0.1"
MAX_ANSWER_BYTES = 1 << 20
PRUNE_INTERVAL_S = 600.0  # how often delivered events past `keep_delivered_days` are purged


class Outcome(StrEnum):
    """What became of one delivery attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """One attempt's result, for metrics and logs (`on_result`)."""

    event: WebhookEvent
    outcome: Outcome
    attempt: int
    status: int | None  # HTTP status, None for a network error or timeout
    error: str
    elapsed_s: float  # the attempt's duration
    age_s: float  # from the event's creation to the end of this attempt


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before the retry that follows failed attempt number `attempt` (1-based).

    Exponential (`initial_s * 2**(attempt-1)`, capped at `max_s`) with "equal jitter": a
    uniformly random value between half and all of it, so retries of many events spread out.
    """
    base = min(max_s, initial_s * 2.0 ** min(attempt - 1, 60))
    return base / 2 + rng.uniform(0.0, base / 2)


class Deliverer:
    """Delivers due outbox events until stopped. `await start()`, then `await stop()`."""

    def __init__(
        self,
        outbox: Outbox,
        session: aiohttp.ClientSession,
        settings: WebhookSettings,
        *,
        on_result: Callable[[DeliveryResult], None] | None = None,
        on_answer: Callable[[WebhookEvent, Any], None] | None = None,
        concurrency: int = 16,
        poll_interval_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._outbox = outbox
        self._session = session
        self._settings = settings
        self._on_result = on_result
        self._on_answer = on_answer
        self._concurrency = concurrency
        self._poll_interval_s = poll_interval_s
        self._rng = rng or random.Random()
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._wake = asyncio.Event()
        self._next_retry_at = math.inf
        self._pruned_at = -math.inf
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start delivering, beginning with whatever the outbox already holds."""
        if self._task is not None:
            raise RuntimeError("Deliverer already started")
        self._outbox.add_listener(self.nudge)
        # Retries a previous run scheduled fall due at their time, not at the next poll.
        self._next_retry_at = await self._outbox.next_attempt_at() or math.inf
        self._task = asyncio.create_task(self._dispatch_loop(), name="webhook-dispatcher")

    def nudge(self) -> None:
        """Look for due events now (called by the outbox after each `add()`)."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Calls with a delivery under way."""
        return len(self._lanes)

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Deliver what is due for up to `flush_timeout_s`, then stop; the rest stays queued."""
        task, self._task = self._task, None
        if task is None:
            return
        self._outbox.remove_listener(self.nudge)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            async with asyncio.timeout(flush_timeout_s):
                while True:
                    try:
                        await self._dispatch()
                    except Exception:
                        log.exception("webhook flush: reading the outbox failed")
                        break
                    if not self._lanes:
                        break
                    await asyncio.wait(list(self._lanes.values()), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            log.warning("webhook flush timed out after %.1fs; undelivered events stay in the outbox",
                        flush_timeout_s)
        finally:
            lanes = list(self._lanes.values())
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            self._lanes.clear()

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._dispatch()
            except Exception:
                log.exception("webhook dispatcher: reading the outbox failed; trying again")
                await asyncio.sleep(self._poll_interval_s)
                continue
            now = time.time()
            if now >= self._pruned_at + PRUNE_INTERVAL_S:
                self._pruned_at = now
                await self._prune(now)
            if self._next_retry_at <= now:
                # That retry was just dispatched; the next one (scheduled by an earlier failure)
                # may fall due before the next poll: wake for it then, not up to a poll late.
                upcoming = await self._outbox.next_attempt_at()
                self._next_retry_at = upcoming if upcoming is not None and upcoming > now else math.inf
            delay = max(0.0, min(self._poll_interval_s, self._next_retry_at - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _prune(self, now: float) -> None:
        """Forget delivered events older than `keep_delivered_days` (0 keeps them)."""
        days = self._settings.keep_delivered_days
        if days <= 0:
            return
        try:
            count = await self._outbox.purge(Status.DELIVERED, older_than=now - days * 86400)
        except Exception:
            log.exception("webhook outbox: purging old delivered events failed")
            return
        if count:
            log.info("webhook outbox: purged %d events delivered more than %g days ago", count, days)

    async def _dispatch(self) -> None:
        """Start a lane for each call whose next event is due, up to the concurrency limit."""
        free = self._concurrency - len(self._lanes)
        if free <= 0:
            return
        for record in await self._outbox.due(time.time(), free, exclude_calls=tuple(self._lanes)):
            call_id = record.event.call_id
            if call_id in self._lanes:
                continue
            lane = asyncio.create_task(self._lane(record), name=f"webhook-lane-{call_id}")
            self._lanes[call_id] = lane
            lane.add_done_callback(functools.partial(self._lane_done, call_id))

    def _lane_done(self, call_id: str, task: asyncio.Task[None]) -> None:
        if self._lanes.get(call_id) is task:
            del self._lanes[call_id]
        if not task.cancelled() and task.exception() is not None:
            # Most likely the outbox failed (disk full?). No immediate wake: the next poll
            # tries again, rather than re-sending in a tight loop.
            log.error("webhook lane for call %s failed", call_id, exc_info=task.exception(),
                      extra={"call_id": call_id})
            return
        self._wake.set()

    async def _lane(self, record: OutboxRecord) -> None:
        """Send one call's due events in order until it has none due or one must wait."""
        current: OutboxRecord | None = record
        while current is not None:
            outcome = await self._attempt(current)
            if outcome in (Outcome.RETRY, Outcome.STOPPED):
                return
            current = await self._outbox.next_for_call(current.event.call_id)

    async def _attempt(self, record: OutboxRecord) -> Outcome:
        event = record.event
        attempt = record.attempts + 1
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            HEADER: sign(event.secret, event.body),
            EVENT_ID_HEADER: event.id,
        }
        status: int | None = None
        answer = b""
        retry_after = 0.0
        started = time.monotonic()
        try:
            async with self._session.post(event.url, data=event.body, headers=headers,
                                          timeout=self._timeout, allow_redirects=False) as resp:
                status = resp.status
                if 200 <= status < 300:
                    answer = await resp.content.read(MAX_ANSWER_BYTES)
                retry_after = _retry_after(resp.headers.get("Retry-After"))
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except TimeoutError:
            error = f"timed out after {self._settings.timeout_s}s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # anything else the request raised: still a retryable failure
            log.exception("webhook %s: unexpected error sending to %s", event.id, event.url)
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - started
        extra = {"call_id": event.call_id, "event_id": event.id}

        if status is not None and 200 <= status < 300:
            await self._outbox.mark_delivered(event.id, attempt)
            outcome = Outcome.DELIVERED
            log.debug("webhook %s %s delivered (HTTP %d, attempt %d)", event.type, event.id, status,
                      attempt, extra=extra)
            self._answer(event, answer)
        elif status == 410:
            await self._outbox.mark_stopped_call(event.call_id)
            outcome = Outcome.STOPPED
            log.info("webhook answered 410 for %s: stopping deliveries of call %s", event.id,
                     event.call_id, extra=extra)
        elif attempt >= self._settings.max_attempts:
            await self._outbox.mark_dead(event.id, error, attempt)
            outcome = Outcome.DEAD
            log.error("webhook %s %s dead after %d attempts: %s", event.type, event.id, attempt, error,
                      extra=extra)
        else:
            delay = backoff_delay(attempt, self._settings.backoff_initial_s, self._settings.backoff_max_s,
                                  self._rng)
            delay = min(max(delay, retry_after), max(self._settings.backoff_max_s, delay))
            next_at = time.time() + delay
            await self._outbox.mark_retry(event.id, attempt, next_at, error)
            self._next_retry_at = min(self._next_retry_at, next_at)
            self._wake.set()
            outcome = Outcome.RETRY
            log.warning("webhook %s %s attempt %d failed (%s); retrying in %.2fs", event.type, event.id,
                        attempt, error, delay, extra=extra)

        if self._on_result is not None:
            result = DeliveryResult(event=event, outcome=outcome, attempt=attempt, status=status,
                                    error=error, elapsed_s=elapsed, age_s=time.time() - event.created_at)
            try:
                self._on_result(result)
            except Exception:
                log.exception("webhook on_result callback failed", extra=extra)
        return outcome

    def _answer(self, event: WebhookEvent, raw: bytes) -> None:
        if self._on_answer is None or not raw.strip():
            return
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return
        try:
            self._on_answer(event, parsed)
        except Exception:
            log.exception("webhook on_answer callback failed", extra={"call_id": event.call_id})


def _retry_after(value: str | None) -> float:
    """Seconds from a `Retry-After` header given in seconds (dates are ignored)."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0
