"""Talk-back for the whole app: one voice and one media fetcher, a `CallTalk` per live call.

    talkback_ctx   (aiohttp cleanup_ctx, after the call hub's) opens the media fetcher, starts
                   loading the text-to-speech voice in an executor (`[talkback] preload_voice`;
                   else on the first `say`) without holding up start-up, and attaches a
                   `CallTalk` to every call the hub starts (speaking the dialplan's greeting)
    answers        a 2xx webhook answer to `call.started`, `utterance.final` or `dtmf` carrying
                   `{"actions": [...]}` is handed to that call's `CallTalk` (Deliverer.on_answer)
    POST /v1/calls/{call_id}/actions
                   the same body at any time (API keys as for /v1/stream): 202 with how many
                   actions were queued and the problems with the rest; 404 for a call that is
                   not live; 400 for a body that is not a JSON object

If the voice cannot be loaded, the service still runs: `say` actions then fail with an
`action.error` naming the reason, and /health shows talk-back as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from app.auth import authorized
from app.calls import Call
from app.delivery.events import EventType, WebhookEvent
from app.keys import CALL_HUB, HEALTH_CHECKS, SETTINGS, TALKBACK
from app.talkback.fetch import MediaFetcher
from app.talkback.runner import CallTalk

if TYPE_CHECKING:
    from app.settings import TalkbackSettings
    from app.talkback.tts import Speaker

log = logging.getLogger("hearsay.talkback")

# The events whose webhook answer may carry actions.
ANSWERABLE = frozenset({EventType.CALL_STARTED, EventType.UTTERANCE_FINAL, EventType.DTMF})
ACTIONS_PATH = "/v1/calls/{call_id}/actions"


class Talkback:
    """Attaches a `CallTalk` to each live call and routes actions to it."""

    def __init__(self, settings: TalkbackSettings, fetcher: MediaFetcher, *, bargein_delay_s: float) -> None:
        self.settings = settings
        self._loading: asyncio.Future[Speaker] | None = None
        self._fetcher = fetcher
        self._bargein_delay_s = bargein_delay_s
        self._talks: dict[str, CallTalk] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def attach(self, call: Call) -> None:
        """Give `call` its talk-back (the hub calls this as each call starts)."""
        plan = call.info.dialplan
        default_voice = plan.voice if plan is not None and plan.voice else None

        def speak(text: str, voice: str | None) -> AsyncGenerator[tuple[bytes, int], None]:
            return self._speak(text, voice or default_voice)

        talk = CallTalk(call, speak=speak, load=self._load, bargein_delay_s=self._bargein_delay_s)
        self._talks[call.id] = talk
        call.listen(lambda _t: None, lambda: self._detach(call.id))
        greeting = plan.greeting_actions() if plan is not None else None
        if greeting is not None:
            talk.submit(greeting)

    def answer(self, event: WebhookEvent, body: Any) -> None:
        """A 2xx webhook answer (`Deliverer.on_answer`): its actions go to the event's call."""
        if event.type not in ANSWERABLE or not isinstance(body, dict) or "actions" not in body:
            return
        talk = self._talks.get(event.call_id)
        if talk is None:
            log.info("actions answered to %s %s: call %s is over; ignored", event.type, event.id, event.call_id)
            return
        talk.submit(body)

    def submit(self, call_id: str, body: Any) -> tuple[int, list[dict[str, Any]]] | None:
        """Queue actions for a live call: (queued, problems), or None when it is not live."""
        talk = self._talks.get(call_id)
        if talk is None:
            return None
        queued, problems = talk.submit(body)
        return queued, [{"index": p.index, "message": p.message} for p in problems]

    @property
    def speaker(self) -> Speaker | None:
        """The loaded voice (None before it is asked for, while it loads, or if it failed)."""
        loading = self._loading
        if loading is None or not loading.done() or loading.cancelled() or loading.exception():
            return None
        return loading.result()

    @property
    def speaker_error(self) -> str:
        """Why the voice failed to load ("" unless it did)."""
        loading = self._loading
        if loading is None or not loading.done() or loading.cancelled() or not loading.exception():
            return ""
        exc = loading.exception()
        return f"{type(exc).__name__}: {exc}"

    async def loaded_speaker(self) -> Speaker:
        """The voice, loading it (in an executor) if nobody has yet; raises if it cannot load."""
        return await asyncio.shield(self._load_speaker())

    def health(self) -> dict[str, Any]:
        if self.speaker_error:
            return {"status": "failed", "error": self.speaker_error}
        voices = list(self.speaker.voices) if self.speaker is not None else []
        return {"status": "ok", "voice_loaded": self.speaker is not None, "voices": voices,
                "active_calls": len(self._talks)}

    def preload(self) -> None:
        """Start loading the voice now (in an executor), so the first `say` does not wait."""
        self._load_speaker()

    async def aclose(self) -> None:
        talks, self._talks = list(self._talks.values()), {}
        await asyncio.gather(*(t.aclose() for t in talks), *self._closing, return_exceptions=True)
        if self._loading is not None:
            with contextlib.suppress(Exception):
                speaker = await self._loading
                await speaker.aclose()

    def _load_speaker(self) -> asyncio.Future[Speaker]:
        if self._loading is None:
            loop = asyncio.get_running_loop()
            started = time.monotonic()

            def load() -> Speaker:
                from app.talkback.tts import Speaker

                return Speaker.load(self.settings)

            def loaded(done: asyncio.Future[Speaker]) -> None:
                if self.speaker_error:
                    log.error("the talk-back voice failed to load; `say` actions will fail: %s",
                              self.speaker_error)
                elif self.speaker is not None:
                    log.info("talk-back voice loaded (%s) in %.1f s", self.settings.voice,
                             time.monotonic() - started)

            self._loading = loop.run_in_executor(None, load)
            self._loading.add_done_callback(loaded)
        return self._loading

    async def _speak(self, text: str, voice: str | None) -> AsyncGenerator[tuple[bytes, int], None]:
        try:
            speaker = await self.loaded_speaker()
        except Exception as exc:
            raise RuntimeError(f"text-to-speech is unavailable: {type(exc).__name__}: {exc}") from None
        async with contextlib.aclosing(speaker.synthesize(text, voice)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _load(self, source: str) -> tuple[bytes, int]:
        media = await self._fetcher.load(source)
        return media.pcm, media.sample_rate

    def _detach(self, call_id: str) -> None:
        talk = self._talks.pop(call_id, None)
        if talk is not None:
            task = asyncio.ensure_future(talk.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


def setup(app: web.Application) -> None:
    """Add talk-back to the app: its context (after the hub's) and its endpoint."""
    app.cleanup_ctx.append(talkback_ctx)
    app.router.add_post(ACTIONS_PATH, post_actions)


async def talkback_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    fetcher = MediaFetcher(settings.talkback)
    bargein_delay_s = max(0, settings.talkback.bargein_min_speech_ms - settings.vad.min_speech_ms) / 1000
    talkback = Talkback(settings.talkback, fetcher, bargein_delay_s=bargein_delay_s)
    if settings.talkback.preload_voice:
        talkback.preload()
    app[TALKBACK] = talkback
    app[CALL_HUB].observe(talkback.attach)
    app[HEALTH_CHECKS]["talkback"] = talkback.health
    try:
        yield
    finally:
        app[HEALTH_CHECKS].pop("talkback", None)
        await talkback.aclose()
        await fetcher.aclose()


async def post_actions(request: web.Request) -> web.Response:
    """`POST /v1/calls/{call_id}/actions`: actions for a live call, outside a webhook answer."""
    app = request.app
    if not authorized(request, app[SETTINGS].auth.api_keys):
        return _json(401, {"error": "unauthorized",
                           "message": "send 'Authorization: Bearer <key>' or ?api_key=<key>"},
                     headers={"WWW-Authenticate": "Bearer"})
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _json(400, {"error": "invalid_json", "message": "the body is not JSON"})
    if not isinstance(body, dict) or "actions" not in body:
        return _json(400, {"error": "invalid_body", "message": 'expected {"actions": [...]}'})
    call_id = request.match_info["call_id"]
    talkback = app.get(TALKBACK)
    result = talkback.submit(call_id, body) if talkback is not None else None
    if result is None:
        return _json(404, {"error": "unknown_call", "message": f"no live call {call_id!r}"})
    queued, problems = result
    return _json(202, {"call_id": call_id, "queued": queued, "errors": problems})


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)
