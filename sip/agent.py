"""The asyncio-facing SIP user agent: SIP calls become `CallHub` calls.

    agent = SipAgent(settings.sip, hub, loop)
    await agent.start()        # raises SipStartError (e.g. the port is taken)
    agent.health()             # {"status": "ok", "active_calls": ..., "registrations": [...]}
    await agent.stop()         # hangs up, destroys pjsua2, waits for every call's end

`hub` is anything with the `CallHub` surface used here (`Hub` below): `dialplans.match(source,
user)` (read on the SIP thread, so it must be a pure lookup) and `await start(info, audio,
media=...)` returning a call with `push(pcm)`, `dtmf(digit)`, `end_reason` and
`await end(reason)`.

A call's life: the SIP thread screens the INVITE (403/401/404/486) and admits it with a
`_Bridge`; the bridge starts the hub call on the loop, with a `SipMedia` as its outbound side,
and then asks the SIP thread to answer 200, or refuses it when the hub does (`REFUSALS`).
Frames, digits and the end cross threads only through `loop.call_soon_threadsafe`, in order,
so every frame heard reaches the call before its end; frames played go the other way through
the `SipMedia`'s lock-guarded queue (sip/media.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from app.calls import CallInfo, CallMedia, CallRejected, CallSource, EndReason, Rejection
from app.dialplans import Dialplan
from app.keys import CALL_HUB, HEALTH_CHECKS, SETTINGS
from app.pipeline.errors import StreamClosedError
from app.pipeline.types import AudioFormat, Encoding
from app.settings import SipSettings
from sip.endpoint import MAX_ADMITTED, SipEndpoint, SipStartError
from sip.media import SAMPLE_RATE, SipMedia, TransferReport
from sip.screen import DigestAuth, Offer, Screen

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("hearsay.sip")

__all__ = ["REFUSALS", "SipAgent", "SipStartError", "setup", "sip_ctx"]

# Frames kept while the hub call is being started (20 ms each: 10 s).
MAX_EARLY_FRAMES = 500

# How a call the hub refuses is answered. 503 where another try (or another server) may work;
# 488 when our engine cannot take the audio we would negotiate; 500 where the dialplan asks
# for what this server cannot do (a model not loaded, a language the model lacks), which no
# retry here fixes. Anything but CallRejected is a bug: logged with its traceback, 500.
REFUSALS: Mapping[Rejection, tuple[int, str]] = {
    Rejection.UNAVAILABLE: (503, "Service Unavailable"),
    Rejection.DUPLICATE: (503, "Service Unavailable"),
    Rejection.UNSUPPORTED_AUDIO: (488, "Not Acceptable Here"),
    Rejection.UNKNOWN_MODEL: (500, "Server Internal Error"),
    Rejection.INVALID_CONFIG: (500, "Server Internal Error"),
}
INTERNAL_ERROR = (500, "Server Internal Error")

Post = Callable[..., object]  # post(fn, *args): run fn(*args) on the loop; callable from any thread


class LiveCall(Protocol):
    """What the agent needs from a started call (app.calls.Call)."""

    @property
    def end_reason(self) -> EndReason | None: ...

    def push(self, payload: bytes) -> bool: ...

    def dtmf(self, digit: str) -> None: ...

    async def end(self, reason: EndReason = ...) -> None: ...


class DialplanLookup(Protocol):
    def match(self, source: str, key: str) -> Dialplan | None: ...


class Hub(Protocol):
    """The slice of `app.calls.CallHub` the agent uses."""

    @property
    def dialplans(self) -> DialplanLookup: ...

    async def start(self, info: CallInfo, audio: AudioFormat, *,
                    media: CallMedia | None = ...) -> LiveCall: ...


class SipAgent:
    """Runs the pjsua2 user agent for the service and connects its calls to the hub."""

    def __init__(self, settings: SipSettings, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self._hub = hub
        self._loop = loop
        auth = (DigestAuth(settings.auth_username, settings.auth_password)
                if settings.auth_username else None)
        max_calls = settings.max_calls
        if max_calls > MAX_ADMITTED:
            log.warning("sip.max_calls = %d: this pjsua2 build carries at most %d calls at once; using %d",
                        max_calls, MAX_ADMITTED, MAX_ADMITTED)
            max_calls = MAX_ADMITTED
        screen = Screen(settings.allow_from, auth, self._route, max_calls)
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
        return self._hub.dialplans.match(CallSource.SIP, user)

    def _admit(self, offer: Offer, plan: Dialplan, serial: int) -> _Bridge:
        bridge = _Bridge(offer, plan, serial, hub=self._hub, endpoint=self._endpoint,
                         post=self._post, run=self._run)
        self._post(bridge.begin)
        return bridge

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the service is gone
            self._loop.call_soon_threadsafe(fn, *args)

    # -- loop -------------------------------------------------------------------------------

    def _run(self, work: Awaitable[None]) -> None:
        """Run `work` as a task that `stop` waits for."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Bridge:
    """One admitted SIP call as the loop sees it. `audio`, `dtmf`, `ended` (SIP and media
    threads) only hand over; `next_frame` (media thread) only takes from the `SipMedia`'s
    thread-safe queue; everything else runs on the loop."""

    def __init__(self, offer: Offer, plan: Dialplan, serial: int, *, hub: Hub, endpoint: SipEndpoint,
                 post: Post, run: Callable[[Awaitable[None]], None]) -> None:
        self._offer = offer
        self._plan = plan
        self._serial = serial
        self._hub = hub
        self._endpoint = endpoint
        self._post = post
        self._run = run
        self._call: LiveCall | None = None
        self._early: list[bytes] = []
        self._end_reason: EndReason | None = None
        self.media = SipMedia(post, self._hang_up, self._media_closed, self._transfer)

    # Called on pjsua2's threads: hand over only.
    def audio(self, pcm: bytes) -> None:
        self._post(self._on_audio, pcm)

    def dtmf(self, digit: str) -> None:
        self._post(self._on_dtmf, digit)

    def ended(self, reason: EndReason) -> None:
        self._post(self._on_ended, reason)

    def next_frame(self) -> bytes | None:
        return self.media.frames.take()

    # On the loop.
    def begin(self) -> None:
        self._run(self._start())

    async def _start(self) -> None:
        offer = self._offer
        info = CallInfo(id=offer.call_id, source=CallSource.SIP, from_=offer.from_, to=offer.to,
                        dialplan=self._plan, metadata=_metadata(offer))
        try:
            call = await self._hub.start(info, AudioFormat(Encoding.LINEAR16, SAMPLE_RATE), media=self.media)
        except CallRejected as exc:
            code, phrase = REFUSALS.get(exc.reason, INTERNAL_ERROR)
            log.warning("SIP call %s refused by the hub (%s: %s): %d %s", offer.call_id,
                        exc.reason.value, exc.message, code, phrase)
            self._endpoint.answer(self._serial, code, phrase)
            return
        except Exception:
            log.exception("SIP call %s: starting the call failed", offer.call_id)
            self._endpoint.answer(self._serial, *INTERNAL_ERROR)
            return
        self._call = call
        for pcm in self._early:
            call.push(pcm)
        self._early.clear()
        if self._end_reason is not None:
            await call.end(self._end_reason)
            return
        self._endpoint.answer(self._serial, 200)

    def _on_audio(self, pcm: bytes) -> None:
        if self._call is not None and self._end_reason is None:
            # StreamClosedError: the call is ending on the loop's side; its media's aclose
            # hangs the SIP leg up.
            with contextlib.suppress(StreamClosedError):
                self._call.push(pcm)
        elif self._call is None and len(self._early) < MAX_EARLY_FRAMES:
            self._early.append(pcm)

    def _on_dtmf(self, digit: str) -> None:
        if self._call is None or self._end_reason is not None:
            return
        try:
            self._call.dtmf(digit)
        except ValueError:
            log.warning("SIP call %s: ignoring DTMF %r", self._offer.call_id, digit)

    def _on_ended(self, reason: EndReason) -> None:
        if self._end_reason is not None:
            return
        self._end_reason = reason
        if self._call is not None:
            self._run(self._call.end(reason))
        # else: _start() ends the call as soon as the hub has it

    def _hang_up(self, reason: EndReason) -> None:
        # media.hangup(): BYE now; the call ends with `reason` when pjsua2 reports it gone.
        if self._end_reason is None:
            self._endpoint.hang_up(self._serial, reason)

    def _transfer(self, target: str, report: TransferReport) -> None:
        # media.transfer(): REFER now; the SIP thread reports back and hangs up on success.
        self._endpoint.transfer(self._serial, target, report)

    def _media_closed(self) -> None:
        # The call ended on the loop's side (hub shutdown, or ended by its owner) while the SIP
        # leg is still up: hang that up too.
        if self._end_reason is None:
            self._end_reason = (self._call.end_reason if self._call is not None else None) or EndReason.HANGUP
            self._endpoint.hang_up(self._serial, self._end_reason)


def _metadata(offer: Offer) -> Mapping[str, Any]:
    return {"sip_user": offer.user, "source_ip": offer.source_ip}


def setup(app: web.Application) -> None:
    """Run the SIP user agent with the app when `[sip] enabled` (adds `sip_ctx`)."""
    if app[SETTINGS].sip.enabled:
        app.cleanup_ctx.append(sip_ctx)


async def sip_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp `cleanup_ctx`: run the SIP user agent for the app's `CallHub`.

    Appended after the hub's own context, so on shutdown the agent hangs up its calls and
    stops before the hub ends what remains.
    """
    settings = app[SETTINGS].sip
    agent = SipAgent(settings, app[CALL_HUB], asyncio.get_running_loop())
    await agent.start()
    app[HEALTH_CHECKS]["sip"] = agent.health
    try:
        yield
    finally:
        app[HEALTH_CHECKS].pop("sip", None)
        with contextlib.suppress(Exception):
            await agent.stop()
