"""One call's webhook events, bound to its dialplan's URL and secret, written in order.

`EventWriter` turns what happens on a call into `app.delivery.events` bodies and queues them
synchronously; one writer task per call adds them to the outbox, so the outbox sees a call's
events in the order they happened. A call with no dialplan writes nothing, and with no
outbox (tests of the engine alone) events are built and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from app.delivery import events
from app.delivery.events import CallRef, Utterance, WebhookEvent

if TYPE_CHECKING:
    from app.delivery.outbox import Outbox
    from app.dialplans import Dialplan
    from app.pipeline.quality import QualityReport, QualityWarning
    from app.pipeline.types import Transcript

log = logging.getLogger("hearsay.calls")


class EventWriter:
    """Builds and writes one call's webhook events; `close()` writes what is queued."""

    def __init__(self, ref: CallRef, plan: Dialplan | None, outbox: Outbox | None) -> None:
        self._ref = ref
        self._plan = plan
        self._outbox = outbox
        self._pending: asyncio.Queue[WebhookEvent | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._write(), name=f"call-{ref.id}-events")

    @property
    def wants_partials(self) -> bool:
        return self._plan is not None and self._plan.interim_results

    def started(self, metadata: Mapping[str, Any] | None) -> None:
        self._emit(lambda url, secret: events.call_started(self._ref, url=url, secret=secret,
                                                           metadata=metadata or None))

    def final(self, transcript: Transcript, speaker: str | None) -> None:
        self._emit(lambda url, secret: events.utterance_final(self._ref, transcript, url=url,
                                                              secret=secret, speaker=speaker))

    def partial(self, transcript: Transcript, speaker: str | None) -> None:
        if self.wants_partials:
            self._emit(lambda url, secret: events.utterance_partial(self._ref, transcript, url=url,
                                                                    secret=secret, speaker=speaker))

    def dtmf(self, digit: str) -> None:
        """Raises ValueError for a key that is not a DTMF digit (even with no dialplan)."""
        if digit not in events.DTMF_DIGITS:
            raise ValueError(f"dtmf digit: expected one of 0-9 * # A-D, got {digit!r}")
        self._emit(lambda url, secret: events.dtmf(self._ref, digit, url=url, secret=secret))

    def ended(self, utterances: Sequence[Utterance], duration_s: float, reason: str,
              quality: Mapping[str, Any] | None = None) -> None:
        self._emit(lambda url, secret: events.call_ended(self._ref, utterances, duration_s=duration_s,
                                                         reason=reason, url=url, secret=secret,
                                                         quality=quality))

    def quality_warning(self, warning: QualityWarning, report: QualityReport) -> None:
        """`quality.warning`, only for dialplans that opt in (`[events] quality_warnings`)."""
        if self._plan is not None and self._plan.quality_warnings:
            self._emit(lambda url, secret: events.quality_warning(self._ref, warning, report,
                                                                  url=url, secret=secret))

    def playback(self, state: str, details: Mapping[str, Any]) -> None:
        """`playback.started|finished|interrupted`."""
        self._emit(lambda url, secret: events.playback(self._ref, state, details, url=url, secret=secret))

    def action_error(self, index: int, action: Any, message: str) -> None:
        self._emit(lambda url, secret: events.action_error(self._ref, index, action, message,
                                                           url=url, secret=secret))

    async def close(self) -> None:
        """Write everything queued, then stop the writer task."""
        self._pending.put_nowait(None)
        await self._task

    def _emit(self, build: Callable[[str, str], WebhookEvent]) -> None:
        plan = self._plan
        if plan is not None:
            self._pending.put_nowait(build(plan.webhook_url, plan.webhook_secret))

    async def _write(self) -> None:
        while (event := await self._pending.get()) is not None:
            if self._outbox is None:
                continue
            try:
                await self._outbox.add(event)
            except Exception:
                log.exception("could not write %s %s to the outbox", event.type, event.id)
