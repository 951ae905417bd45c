"""The service's side of SIP: its calls, carried by SIP worker processes, become `CallHub` calls.

    agent = SipAgent(settings.sip, hub, metrics=metrics, log_level="info")
    await agent.start()        # raises SipStartError (a port is taken, Kamailio is missing, ...)
    agent.health()             # {"status": "ok", "workers": [...], "active_calls": ..., ...}
    await agent.stop()         # the workers hang up and exit; every call's end is awaited

pjsua2 never loads in this process. `sip/topology.py` turns `[sip]` into workers (one binding
`[sip] host:port` itself up to 4 calls, else one per 4 calls behind Kamailio, sip/proxy.py),
`sip/workers.py` runs them and their bridges, and this module turns each call a worker offers
into a hub call: it routes it (404 without a dialplan), starts it on the hub with a `SipMedia`
as its outbound side, and tells the worker to answer 200, or refuses it as the hub does
(`REFUSALS`). The call's frames, digits and end arrive in order on the worker's bridge, so
every frame heard reaches the call before its end; a worker that dies ends its calls as
`sip_worker_lost`, with everything heard up to then finalised and delivered.

`hub` is anything with the `CallHub` surface used here (`Hub` below): `dialplans.match(source,
user)` and `await start(info, audio, media=...)` returning a call with `push(pcm)`,
`dtmf(digit)`, `end_reason` and `await end(reason)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.calls import CallInfo, CallMedia, CallRejected, CallSource, EndReason, Rejection
from app.dialplans import Dialplan
from app.keys import CALL_HUB, HEALTH_CHECKS, METRICS, SETTINGS
from app.metrics import Metrics
from app.pipeline.errors import StreamClosedError
from app.pipeline.types import AudioFormat, Encoding
from app.settings import SipSettings
from sip.bridge import Kind, Message
from sip.errors import SipStartError
from sip.media import SipMedia
from sip.proxy import KamailioProxy, ProxyPlan, kamailio_binary
from sip.topology import CALLS_PER_WORKER, Topology, plan
from sip.types import SAMPLE_RATE, TransferReport
from sip.workers import WorkerLink, WorkerPool

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
    Rejection.BUSY: (503, "Service Unavailable"),
    Rejection.UNSUPPORTED_AUDIO: (488, "Not Acceptable Here"),
    Rejection.UNKNOWN_MODEL: (500, "Server Internal Error"),
    Rejection.INVALID_CONFIG: (500, "Server Internal Error"),
}
INTERNAL_ERROR = (500, "Server Internal Error")
# Seconds a caller refused as busy is asked to wait before trying again (Retry-After).
BUSY_RETRY_AFTER_S = 5
NOT_FOUND = (404, "Not Found")


class LiveCall(Protocol):
    """What the agent needs from a started call (app.calls.Call)."""

    @property
    def end_reason(self) -> EndReason | None: ...

    def push(self, payload: bytes) -> bool: ...

    def dtmf(self, digit: str) -> None: ...

    async def end(self, reason: EndReason = ...) -> None: ...

    # What only the transport knows (RTP loss and jitter), for `call.ended.quality`.
    media_quality: dict[str, Any]


class DialplanLookup(Protocol):
    def match(self, source: str, key: str) -> Dialplan | None: ...


class Hub(Protocol):
    """The slice of `app.calls.CallHub` the agent uses."""

    @property
    def dialplans(self) -> DialplanLookup: ...

    async def start(self, info: CallInfo, audio: AudioFormat, *,
                    media: CallMedia | None = ...) -> LiveCall: ...


class SipAgent:
    """Runs the SIP workers (and the proxy in front of them) and connects their calls to the hub."""

    def __init__(self, settings: SipSettings, hub: Hub, *, metrics: Metrics | None = None,
                 log_level: str = "info") -> None:
        self.settings = settings
        self._hub = hub
        self._metrics = metrics
        try:
            self._topology: Topology = plan(settings, nonce_key=secrets.token_hex(32), log_level=log_level)
        except ValueError as exc:
            raise SipStartError(str(exc)) from None
        self._pool = WorkerPool(self._topology, self, on_restart=self._count_restart)
        self._proxy: KamailioProxy | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    async def start(self) -> None:
        """Start the workers, and Kamailio in front of them when there are several; wait until
        each answers (raises SipStartError, e.g. ProxyStartError when Kamailio is missing)."""
        if self._topology.proxied:
            kamailio_binary(self.settings.max_calls)  # before anything starts
        await self._pool.start()
        self._started = True
        if self._topology.proxied:
            s = self.settings
            proxy = KamailioProxy(ProxyPlan(
                host=s.host, port=s.port, transports=tuple(s.transports), allow_from=tuple(s.allow_from),
                workers=self._topology.worker_addresses, calls_per_worker=CALLS_PER_WORKER,
                max_calls=s.max_calls), Path(tempfile.mkdtemp(prefix="hearsay-kamailio-")))
            try:
                await proxy.start()
            except BaseException:
                await self.stop()
                shutil.rmtree(proxy.workdir, ignore_errors=True)
                raise
            self._proxy = proxy

    async def stop(self) -> None:
        """Stop the proxy (no new calls), then the workers (they hang up their calls), then
        wait for each call's end."""
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            await proxy.stop()
            shutil.rmtree(proxy.workdir, ignore_errors=True)
        if self._started:
            self._started = False
            await self._pool.stop()
        await asyncio.sleep(0)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def health(self) -> dict[str, Any]:
        """The SIP side's state for `/health`: one entry per worker."""
        workers = self._pool.health()
        serving = sum(w["state"] == "serving" for w in workers)
        status = "ok" if serving == len(workers) else "degraded" if serving else "failed"
        if self._metrics is not None:
            for w in workers:
                self._metrics.sip_worker_up.labels(str(w["worker"])).set(int(w["state"] == "serving"))
                self._metrics.sip_worker_calls.labels(str(w["worker"])).set(w["active_calls"])
        health: dict[str, Any] = {
            "status": status,
            "workers": workers,
            "active_calls": sum(w["active_calls"] for w in workers),
            "refused_calls": sum(w["refused_calls"] for w in workers),
            "registrations": self._pool.registrations(),
        }
        if self._proxy is not None:
            proxy = health["proxy"] = self._proxy.health()
            if proxy["status"] != "ok" and status == "ok":
                health["status"] = "degraded"
        return health

    # -- the workers' messages (sip/workers.py's LinkHandler) -------------------------------

    def on_message(self, link: WorkerLink, message: Message) -> None:
        bridge = link.calls.get(message.call)
        if message.kind is Kind.AUDIO:
            if bridge is not None:
                if self._metrics is not None:
                    self._metrics.sip_bridge_latency.observe(time.monotonic() - message.sent_at)
                bridge.audio(message.pcm)
            return
        event = message.event
        if event is None:
            return
        kind = event["type"]
        if kind == "offer":
            bridge = _Bridge(_offer(event), message.call, link, hub=self._hub, run=self._run)
            link.calls[message.call] = bridge
            bridge.begin()
        elif bridge is None:
            return
        elif kind == "dtmf":
            bridge.dtmf(str(event["digit"]))
        elif kind == "rtp_stats":
            bridge.rtp_stats({k: v for k, v in event.items() if k.startswith("rtp_") and isinstance(v, int | float)})
        elif kind == "ended":
            link.calls.pop(message.call, None)
            bridge.ended(EndReason(event["reason"]))
        elif kind == "progress":
            bridge.media.progress({int(k): int(v) for k, v in event["taken"].items()})
        elif kind == "cleared":
            bridge.media.cleared({int(k): int(v) for k, v in event["taken"].items()})
        elif kind == "transfer":
            bridge.transfer_status(int(event["code"]), str(event["reason"]), bool(event["final"]))

    def on_lost(self, link: WorkerLink) -> None:
        calls, link.calls = link.calls, {}
        for bridge in calls.values():
            bridge.ended(EndReason.SIP_WORKER_LOST)

    def _count_restart(self, index: int) -> None:
        if self._metrics is not None:
            self._metrics.sip_worker_restarts.labels(str(index)).inc()

    def _run(self, work: Awaitable[None]) -> None:
        """Run `work` as a task that `stop` waits for."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@dataclass(frozen=True, slots=True)
class Offer:
    """The call a worker offers, as its INVITE said."""

    call_id: str
    from_: str
    to: str
    user: str
    source_ip: str


def _offer(event: dict[str, Any]) -> Offer:
    return Offer(str(event["call_id"]), str(event["from"]), str(event["to"]), str(event["user"]),
                 str(event["source_ip"]))


class _RemoteFrames:
    """A call's `FrameSink` in the service: frames go to the worker's queue over the bridge."""

    def __init__(self, link: WorkerLink, serial: int) -> None:
        self._link = link
        self._serial = serial

    def put(self, key: int, frames: list[bytes]) -> None:
        self._link.send_play(self._serial, key, frames)

    def clear(self) -> None:
        self._link.send_event(self._serial, {"type": "clear"})


class _Bridge:
    """One call a worker offered, as the loop sees it: started on the hub, fed what the
    worker hears, and the worker told what the hub decides. Everything runs on the loop."""

    def __init__(self, offer: Offer, serial: int, link: WorkerLink, *, hub: Hub,
                 run: Callable[[Awaitable[None]], None]) -> None:
        self._offer = offer
        self._serial = serial
        self._link = link
        self._hub = hub
        self._run = run
        self._call: LiveCall | None = None
        self._early: list[bytes] = []
        self._end_reason: EndReason | None = None
        self._transfer_report: TransferReport | None = None
        loop = asyncio.get_running_loop()
        self.media = SipMedia(_RemoteFrames(link, serial), loop.call_soon_threadsafe, self._hang_up,
                              self._media_closed, self._transfer)

    def begin(self) -> None:
        self._run(self._start())

    def audio(self, pcm: bytes) -> None:
        if self._call is not None and self._end_reason is None:
            # StreamClosedError: the call is ending on the loop's side; its media's aclose
            # hangs the SIP leg up.
            with contextlib.suppress(StreamClosedError):
                self._call.push(pcm)
        elif self._call is None and len(self._early) < MAX_EARLY_FRAMES:
            self._early.append(pcm)

    def dtmf(self, digit: str) -> None:
        if self._call is None or self._end_reason is not None:
            return
        try:
            self._call.dtmf(digit)
        except ValueError:
            log.warning("SIP call %s: ignoring DTMF %r", self._offer.call_id, digit)

    def rtp_stats(self, stats: dict[str, float]) -> None:
        """RTP loss and jitter, just before the end: they ride on `call.ended.quality`."""
        if self._call is not None:
            self._call.media_quality.update(stats)

    def ended(self, reason: EndReason) -> None:
        if self._end_reason is not None:
            return
        self._end_reason = reason
        report, self._transfer_report = self._transfer_report, None
        if report is not None:
            report(0, "the call ended before the transfer completed", True)
        if self._call is not None:
            self._run(self._call.end(reason))
        # else: _start() ends the call as soon as the hub has it

    def transfer_status(self, code: int, reason: str, final: bool) -> None:
        report = self._transfer_report
        if final:
            self._transfer_report = None
        if report is not None:
            report(code, reason, final)

    async def _start(self) -> None:
        offer = self._offer
        plan = self._hub.dialplans.match(CallSource.SIP, offer.user)
        if plan is None:
            log.info("SIP call %s from %s to %r refused: no dialplan takes it", offer.call_id,
                     offer.source_ip, offer.user)
            self._send("refuse", code=NOT_FOUND[0], reason=NOT_FOUND[1])
            return
        info = CallInfo(id=offer.call_id, source=CallSource.SIP, from_=offer.from_, to=offer.to,
                        dialplan=plan, metadata=_metadata(offer))
        try:
            call = await self._hub.start(info, AudioFormat(Encoding.LINEAR16, SAMPLE_RATE), media=self.media)
        except CallRejected as exc:
            code, phrase = REFUSALS.get(exc.reason, INTERNAL_ERROR)
            log.warning("SIP call %s refused by the hub (%s: %s): %d %s", offer.call_id,
                        exc.reason.value, exc.message, code, phrase)
            headers = {"Retry-After": str(BUSY_RETRY_AFTER_S)} if exc.reason is Rejection.BUSY else {}
            self._send("answer", code=code, reason=phrase, headers=headers)
            return
        except Exception:
            log.exception("SIP call %s: starting the call failed", offer.call_id)
            self._send("answer", code=INTERNAL_ERROR[0], reason=INTERNAL_ERROR[1])
            return
        self._call = call
        for pcm in self._early:
            call.push(pcm)
        self._early.clear()
        if self._end_reason is not None:
            await call.end(self._end_reason)
            return
        self._send("answer", code=200)

    def _send(self, kind: str, **fields: Any) -> None:
        self._link.send_event(self._serial, {"type": kind, **fields})

    def _hang_up(self, reason: EndReason) -> None:
        # media.hangup(): BYE now; the call ends with `reason` when the worker reports it gone.
        if self._end_reason is None:
            self._send("hangup", reason=reason.value)

    def _transfer(self, target: str, report: TransferReport) -> None:
        # media.transfer(): REFER now; the worker reports back and hangs up on success.
        if self._end_reason is not None:
            report(0, "the call is over", True)
            return
        self._transfer_report = report
        self._send("transfer", target=target)

    def _media_closed(self) -> None:
        # The call ended on the loop's side (hub shutdown, or ended by its owner) while the SIP
        # leg is still up: hang that up too.
        if self._end_reason is None:
            self._end_reason = (self._call.end_reason if self._call is not None else None) or EndReason.HANGUP
            self._send("hangup", reason=self._end_reason.value)


def _metadata(offer: Offer) -> Mapping[str, Any]:
    return {"sip_user": offer.user, "source_ip": offer.source_ip}


def setup(app: web.Application) -> None:
    """Run SIP with the app when `[sip] enabled` (adds `sip_ctx`)."""
    if app[SETTINGS].sip.enabled:
        app.cleanup_ctx.append(sip_ctx)


async def sip_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp `cleanup_ctx`: run the SIP workers for the app's `CallHub`.

    Appended after the hub's own context, so on shutdown the workers hang up their calls and
    stop before the hub ends what remains.
    """
    settings = app[SETTINGS]
    agent = SipAgent(settings.sip, app[CALL_HUB], metrics=app[METRICS], log_level=settings.log.level)
    await agent.start()
    app[HEALTH_CHECKS]["sip"] = agent.health
    try:
        yield
    finally:
        app[HEALTH_CHECKS].pop("sip", None)
        with contextlib.suppress(Exception):
            await agent.stop()
