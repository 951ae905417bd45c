"""The aiohttp application: shared state under typed `AppKey`s, resources in `cleanup_ctx`.

`create_app(settings)` builds the app; nothing is opened until the app starts. Start-up opens,
in order (shutdown closes in reverse):

    engine      SpeechEngine.load() in an executor (or the one passed in, e.g. by tests);
                a failure is kept, /health answers 503 and calls are refused
    http        one aiohttp ClientSession for webhook POSTs
    outbox      the SQLite outbox and the Deliverer worker (stop flushes what it can)
    calls       the dialplans (a bad file stops start-up) and the CallHub, which holds the
                live set (`hub.dialplans`, replaced by SIGHUP); closing the hub ends every
                live call, so in-flight utterances are finalised and their events reach the
                outbox before the Deliverer stops
    ingress     each source's own context (the SIP workers, and Kamailio in front of several)
    talkback    the text-to-speech voice and the media fetcher; a CallTalk per call, fed by the
                Deliverer's webhook answers and POST /v1/calls/{id}/actions (app.talkback)

`on_shutdown` also closes the hub, so WebSocket handlers see their calls end (and send their
final results) while the server is still draining connections.

Ingress modules add their routes through `INGRESS` below; `/health` and `/metrics` live here.
The shared state's keys are in `app.keys`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from app.calls import CallHub
from app.calls.lateness import starting_limit
from app.delivery.events import WebhookEvent
from app.delivery.outbox import Outbox
from app.delivery.worker import Deliverer, DeliveryResult
from app.dialplans import DialplanError, Dialplans
from app.ingress import meetings, page, progressive, stream_api, twilio
from app.keys import (
    CALL_HUB,
    DELIVERER,
    ENGINE,
    ENGINE_ERROR,
    HEALTH_CHECKS,
    HTTP_SESSION,
    METRICS,
    OUTBOX,
    SETTINGS,
    TALKBACK,
)
from app.metrics import CONTENT_TYPE, Metrics
from app.pipeline.quality import QualityThresholds
from app.settings import Settings
from app.talkback import service as talkback
from sip import agent as sip_agent

if TYPE_CHECKING:
    from app.pipeline.engine import SpeechEngine

log = logging.getLogger("hearsay.server")

# Each audio source registers its routes (and any cleanup_ctx of its own) with setup(app).
# SIP comes after the hub's context, so on shutdown the agent stops before the hub ends the
# remaining calls; it adds nothing when `[sip] enabled` is false.
INGRESS: tuple[Callable[[web.Application], None], ...] = (
    stream_api.setup,  # GET /v1/stream
    twilio.setup,  # POST /twilio/voice, GET /twilio/media
    sip_agent.setup,  # the SIP workers
    progressive.setup,  # /v1/progressive: long files in chunks
    meetings.setup,  # GET /v1/meetings: one recognizer per participant
    page.setup,  # GET /: the live-caption page (microphone -> /v1/stream)
)

# How long shutdown waits for the Deliverer to send what is due before leaving it in the outbox.
FLUSH_TIMEOUT_S = 5.0


def create_app(settings: Settings, *, engine: SpeechEngine | None = None) -> web.Application:
    """The Hearsay web application. Pass `engine` to share one already loaded (tests)."""
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[HEALTH_CHECKS] = {}
    app[ENGINE_ERROR] = ""
    app.cleanup_ctx.append(_engine_ctx(engine))
    app.cleanup_ctx.append(_http_ctx)
    app.cleanup_ctx.append(_outbox_ctx)
    app.cleanup_ctx.append(_calls_ctx)
    app.on_shutdown.append(_end_calls)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    for setup in INGRESS:
        setup(app)
    talkback.setup(app)  # after the hub (and SIP): it attaches to every call the hub starts
    return app


# -- resources ----------------------------------------------------------------------------------

def _engine_ctx(given: SpeechEngine | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        if given is not None:
            app[ENGINE] = given
            yield
            return
        settings = app[SETTINGS]
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            from app.pipeline.engine import SpeechEngine

            app[ENGINE] = await loop.run_in_executor(
                None, SpeechEngine.load, settings.asr, settings.vad, (), settings.turn)
            log.info("speech engine loaded (model %s) in %.1f s", settings.asr.model,
                     time.monotonic() - started)
        except Exception as exc:
            log.exception("the speech engine failed to load")
            app[ENGINE] = None
            app[ENGINE_ERROR] = f"{type(exc).__name__}: {exc}"
        yield
        loaded = app[ENGINE]
        if loaded is not None:
            await loaded.aclose()
            await loop.run_in_executor(None, loaded.close)

    return engine_ctx


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=app[SETTINGS].webhooks.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "Hearsay"}) as session:
        app[HTTP_SESSION] = session
        yield


async def _outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    outbox = await Outbox.open(settings.webhooks.outbox)
    app[OUTBOX] = outbox

    def count_delivery(result: DeliveryResult) -> None:
        metrics.webhook_deliveries.labels(result.outcome.value).inc()

    def hand_over_answer(event: WebhookEvent, body: Any) -> None:
        talk = app.get(TALKBACK)  # absent until talk-back has started, and after it stopped
        if talk is not None:
            talk.answer(event, body)

    deliverer = Deliverer(outbox, app[HTTP_SESSION], settings.webhooks, on_result=count_delivery,
                          on_answer=hand_over_answer)
    app[DELIVERER] = deliverer
    await deliverer.start()
    try:
        yield
    finally:
        await deliverer.stop(FLUSH_TIMEOUT_S)
        await outbox.close()


async def _calls_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    plans = await asyncio.get_running_loop().run_in_executor(None, load_dialplans, settings)
    log.info("dialplans loaded from %s: %s", settings.dialplans.dir,
             ", ".join(p.name for p in plans) or "(none)")
    hub = CallHub(app[ENGINE], plans, app[OUTBOX], app[METRICS],
                  echo_margin_db=settings.talkback.echo_margin_db, max_live_calls=settings.asr.max_live_calls,
                  busy_late_ms=settings.asr.busy_late_ms, starting_limit=await _starting_limit(app),
                  quality=QualityThresholds(**dataclasses.asdict(settings.quality)))
    app[CALL_HUB] = hub
    yield
    await hub.close()


async def _starting_limit(app: web.Application) -> int | None:
    """The live calls let in before any final has said how this machine copes (None: no
    limit but max_live_calls), from how fast it encodes (calls.lateness.starting_limit)."""
    asr, engine = app[SETTINGS].asr, app[ENGINE]
    if not asr.busy_late_ms or engine is None:
        return None
    try:
        encode_ms = await asyncio.get_running_loop().run_in_executor(None, engine.recognizer(None).encode_ms)
    except Exception:
        log.exception("timing the speech engine failed; no call limit but max_live_calls until finals are late")
        return None
    limit = starting_limit(encode_ms, asr.workers, asr.max_live_calls)
    log.info("this machine encodes 8 s of audio in %.0f ms: up to %d live calls to start with "
             "(then learned from how late finals come, [asr] busy_late_ms)", encode_ms, limit)
    return limit


async def _end_calls(app: web.Application) -> None:
    hub = app.get(CALL_HUB)
    if hub is not None:
        await hub.close()


# -- dialplans ----------------------------------------------------------------------------------

def load_dialplans(settings: Settings) -> Dialplans:
    """Read the dialplan directory (blocking; raises DialplanError naming the file and key)."""
    return Dialplans.load(settings.dialplans.dir, language=settings.asr.language, model=settings.asr.model)


async def reload_dialplans(app: web.Application) -> bool:
    """Re-read the dialplans (SIGHUP). A bad set is logged and the old one kept; live calls
    keep the plan they started with. Returns whether the new set is in use."""
    try:
        plans = await asyncio.get_running_loop().run_in_executor(None, load_dialplans, app[SETTINGS])
    except DialplanError as exc:
        log.error("dialplan reload failed, keeping the previous set: %s", exc)
        return False
    app[CALL_HUB].dialplans = plans
    log.info("dialplans reloaded: %s", ", ".join(p.name for p in plans) or "(none)")
    return True


# -- endpoints ----------------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    """`GET /health`: 200 "healthy" when the engine is loaded, else 503 "unhealthy"."""
    app = request.app
    settings = app[SETTINGS]
    engine_error = app[ENGINE_ERROR]
    components: dict[str, dict[str, Any]] = {
        "engine": {"status": "failed", "error": engine_error} if engine_error else {"status": "ok"},
        "dialplans": {"status": "ok", "loaded": [p.name for p in app[CALL_HUB].dialplans]},
    }
    depth = -1
    try:
        depth = await app[OUTBOX].depth()
        components["outbox"] = {"status": "ok", "path": str(settings.webhooks.outbox)}
    except Exception as exc:
        components["outbox"] = {"status": "failed", "error": str(exc)}
    for name, check in app[HEALTH_CHECKS].items():
        try:
            components[name] = check()
        except Exception as exc:
            components[name] = {"status": "failed", "error": str(exc)}
    healthy = not engine_error and all(c.get("status") == "ok" for c in components.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "model": settings.asr.model,
        "outbox_depth": depth,
        "active_sessions": app[CALL_HUB].active,
        "components": components,
    }
    return web.json_response(body, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: the Prometheus text exposition."""
    app = request.app
    registry = app[METRICS]
    try:
        registry.outbox_depth.set(await app[OUTBOX].depth())
    except Exception:
        log.warning("outbox depth unavailable for /metrics", exc_info=True)
    # A component's health check also sets its gauges (the SIP workers' up and calls).
    for name, check in app[HEALTH_CHECKS].items():
        try:
            check()
        except Exception:
            log.warning("%s health unavailable for /metrics", name, exc_info=True)
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE})
