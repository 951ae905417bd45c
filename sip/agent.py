"""The asyncio-facing SIP user agent: SIP calls become `CallHub` calls.

    agent = SipAgent(settings.sip, hub, loop)
    await agent.start()        # raises SipStartError (e.g. the port is taken)
    agent.health()             # {"status": "ok", "active_calls": ..., "registrations": [...]}
    await agent.stop()         # hangs up, destroys pjsua2, waits for every call's end

`hub` is anything with the `CallHub` surface used here: `dialplans.match_sip(user)` (read on
the SIP thread, so it must be a pure lookup) and `await start(info, audio)` returning a call
with `push(pcm)`, `dtmf(digit)` and `await end(reason)`.

A call's life: the SIP thread screens the INVITE (403/401/404/486) and admits it with a
`_Bridge`; the bridge starts the hub call on the loop and then asks the SIP thread to answer
200 (or 503 if the hub refuses). Frames, digits and the end cross threads only through
`loop.call_soon_threadsafe`, in order, so every frame heard reaches the call before its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from app.calls import CallInfo, CallSource
from app.dialplans import Dialplan
from app.pipeline.events import AudioFormat, Encoding
from app.settings import SipSettings
from sip.call import SAMPLE_RATE
from sip.endpoint import SipEndpoint, SipStartError
from sip.screen import DigestAuth, Offer, Screen

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("hearsay.sip")

__all__ = ["SipAgent", "SipStartError", "sip_ctx"]

# Frames kept while the hub call is being started (20 ms each: 10 s).
MAX_EARLY_FRAMES = 500


class LiveCall(Protocol):
    """What the agent needs from a started call (app.calls.Call)."""

    def push(self, payload: bytes) -> bool: ...

    def dtmf(self, digit: str) -> None: ...

    async def end(self, reason: str = ...) -> None: ...


class DialplanLookup(Protocol):
    def match_sip(self, user: str) -> Dialplan | None: ...


class Hub(Protocol):
    """The slice of `app.calls.CallHub` the agent uses."""

    @property
    def dialplans(self) -> DialplanLookup: ...

    async def start(self, info: CallInfo, audio: AudioFormat) -> LiveCall: ...


class SipAgent:
    """Runs the pjsua2 user agent for the service and connects its calls to the hub."""

    def __init__(self, settings: SipSettings, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self._hub = hub
        self._loop = loop
        auth = (DigestAuth(settings.auth_username, settings.auth_password)
                if settings.auth_username else None)
        screen = Screen(settings.allow_from, auth, self._route, settings.max_calls)
        self._endpoint = SipEndpoint(settings, screen, self._admit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    async def start(self) -> None:
        """Start the SIP thread and wait until it listens (raises SipStartError)."""
        await self._loop.run_in_executor(None, self._endpoint.start)
        self._started = True

    async def stop(self) -> None:
        """Hang up every call, destroy the library, then wait for each call's end."""
        if self._started:
            await self._loop.run_in_executor(None, self._endpoint.stop)
            self._started = False
        # The SIP thread's last hand-overs (frames, ends) are queued on the loop: let them run.
        await asyncio.sleep(0)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def health(self) -> dict[str, Any]:
        """The user agent's state for `/health`."""
        running = self._endpoint.running
        return {
            "status": "ok" if running else "failed",
            "transports": list(self._endpoint.transports),
            "active_calls": self._endpoint.active_calls,
            "refused_calls": self._endpoint.refused,
            "registrations": [r.as_dict() for r in self._endpoint.registrations()],
        }

    # -- SIP thread -------------------------------------------------------------------------

    def _route(self, user: str) -> Dialplan | None:
        return self._hub.dialplans.match_sip(user)

    def _admit(self, offer: Offer, plan: Dialplan, serial: int) -> _Bridge:
        bridge = _Bridge(self, offer, plan, serial)
        self._post(bridge.begin)
        return bridge

    def _post(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the service is gone
            self._loop.call_soon_threadsafe(fn, *args)

    # -- loop -------------------------------------------------------------------------------

    def _own(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Bridge:
    """One admitted SIP call as the loop sees it; its hand-over methods are thread-safe."""

    def __init__(self, agent: SipAgent, offer: Offer, plan: Dialplan, serial: int) -> None:
        self._agent = agent
        self._offer = offer
        self._plan = plan
        self._serial = serial
        self._call: LiveCall | None = None
        self._early: list[bytes] = []
        self._end_reason: str | None = None

    # Called on pjsua2's threads: hand over only.
    def audio(self, pcm: bytes) -> None:
        self._agent._post(self._on_audio, pcm)

    def dtmf(self, digit: str) -> None:
        self._agent._post(self._on_dtmf, digit)

    def ended(self, reason: str) -> None:
        self._agent._post(self._on_ended, reason)

    # On the loop.
    def begin(self) -> None:
        self._agent._own(asyncio.ensure_future(self._start()))

    async def _start(self) -> None:
        offer = self._offer
        info = CallInfo(id=offer.call_id, source=CallSource.SIP, from_=offer.from_, to=offer.to,
                        dialplan=self._plan, metadata=_metadata(offer))
        try:
            call = await self._agent._hub.start(info, AudioFormat(Encoding.LINEAR16, SAMPLE_RATE))
        except Exception as exc:
            log.warning("SIP call %s refused by the hub: %s", offer.call_id, exc)
            self._agent._endpoint.answer(self._serial, 503, "Service Unavailable")
            return
        self._call = call
        for pcm in self._early:
            call.push(pcm)
        self._early.clear()
        if self._end_reason is not None:
            await call.end(self._end_reason)
            return
        self._agent._endpoint.answer(self._serial, 200)

    def _on_audio(self, pcm: bytes) -> None:
        if self._call is not None and self._end_reason is None:
            try:
                self._call.push(pcm)
            except Exception as exc:  # the hub ended the call first (e.g. shutting down)
                log.info("SIP call %s: the hub call is over (%s), hanging up", self._offer.call_id, exc)
                self._end_reason = "ended"
                self._agent._endpoint.hang_up(self._serial, "ended")
        elif self._call is None and len(self._early) < MAX_EARLY_FRAMES:
            self._early.append(pcm)

    def _on_dtmf(self, digit: str) -> None:
        if self._call is None or self._end_reason is not None:
            return
        try:
            self._call.dtmf(digit)
        except ValueError:
            log.warning("SIP call %s: ignoring DTMF %r", self._offer.call_id, digit)

    def _on_ended(self, reason: str) -> None:
        if self._end_reason is not None:
            return
        self._end_reason = reason
        if self._call is not None:
            self._agent._own(asyncio.ensure_future(self._call.end(reason)))
        # else: _start() ends the call as soon as the hub has it


def _metadata(offer: Offer) -> Mapping[str, Any]:
    return {"sip_user": offer.user, "source_ip": offer.source_ip}


async def sip_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp `cleanup_ctx`: run the SIP user agent for the app's `CallHub` (if enabled).

    Appended after the hub's own context, so on shutdown the agent hangs up its calls and
    stops before the hub ends what remains.
    """
    from app.server import CALL_HUB, HEALTH_CHECKS, SETTINGS

    settings = app[SETTINGS].sip
    if not settings.enabled:
        yield
        return
    agent = SipAgent(settings, app[CALL_HUB], asyncio.get_running_loop())
    await agent.start()
    app[HEALTH_CHECKS]["sip"] = agent.health
    try:
        yield
    finally:
        app[HEALTH_CHECKS].pop("sip", None)
        with contextlib.suppress(Exception):
            await agent.stop()
