"""`CallHub`: the one way into a call for every ingress (SIP, Twilio, `/v1/stream`).

    plan = hub.dialplans.match(CallSource.SIP, user)     # or .by_name(name) / .default
    call = await hub.start(CallInfo(id, CallSource.SIP, from_, to, plan), AudioFormat(...),
                           media=the_ingress_outbound_side)        # emits call.started
    ...
    await hub.close()                                      # shutdown: ends every live call

`start` raises only `CallRejected` (its `reason` a `Rejection`), before anything is emitted,
so each ingress maps one error family to its own answer (SIP 503/488, a WebSocket error code,
a closed Twilio stream).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.calls.call import Call
from app.calls.info import CallInfo, CallRejected, CallSource, EndReason, Rejection, Track
from app.calls.lateness import CallLimit, RecentLateness
from app.calls.media import CallMedia
from app.dialplans import Dialplans
from app.logs import bind_call
from app.metrics import Metrics
from app.pipeline.errors import AudioFormatError, UnknownModelError
from app.pipeline.quality import QualityThresholds
from app.pipeline.types import AudioFormat

if TYPE_CHECKING:
    from app.delivery.outbox import Outbox
    from app.pipeline.engine import SpeechEngine
    from app.pipeline.engine_stream import EngineStream

log = logging.getLogger("hearsay.calls")


class CallHub:
    """Starts calls on the shared engine and keeps the live ones (for health and shutdown).

    `dialplans` may be replaced at any time (SIGHUP reload); calls keep the plan they started
    with. `outbox=None` (tests of the engine alone) writes no events.
    """

    def __init__(self, engine: SpeechEngine | None, dialplans: Dialplans, outbox: Outbox | None,
                 metrics: Metrics | None = None, *, echo_margin_db: float = 10.0, max_live_calls: int = 0,
                 busy_late_ms: int = 0, starting_limit: int | None = None,
                 quality: QualityThresholds | None = None) -> None:
        self.engine = engine
        self.max_live_calls = max_live_calls
        self.busy_late_s = busy_late_ms / 1000
        self.lateness = RecentLateness()  # of every call's finals (calls.lateness)
        self.call_limit = CallLimit(self.busy_late_s, start=starting_limit)  # from the speed, then learned
        self.dialplans = dialplans
        self.outbox = outbox
        self.metrics = metrics or Metrics()
        self.echo_margin_db = echo_margin_db
        self.quality = quality or QualityThresholds()
        self.metrics.recent_lateness.set_function(self.lateness.p90)
        self.metrics.learned_call_limit.set_function(lambda: self.call_limit.limit or 0)
        self._calls: dict[str, Call] = {}
        self._observers: list[Callable[[Call], None]] = []
        self._closing = False

    @property
    def active(self) -> int:
        return len(self._calls)

    def admit(self, *, already: bool = False) -> str | None:
        """Let a new call in (None) or say why it is refused as busy: `max_live_calls` are
        live, or the engine is behind: the live calls' finals have lately come more than
        `busy_late_ms` late, or as many calls are live as this machine was found to hear in
        time (before any final was late: as its speed suggests, `starting_limit`), or one was
        let in just now (calls.lateness, docs/engine.md). `already`: the call
        was let in before (a Twilio call, at its voice webhook: once its media stream connects
        the caller has been answered), so only `max_live_calls` counts."""
        live = len(self._calls)
        if 0 < self.max_live_calls <= live:
            return f"{live} calls are live, the most this server takes ([asr] max_live_calls); try again shortly"
        if already or not self.busy_late_s:
            return None
        late = self.lateness.p90()
        before = self.call_limit.limit
        limit = self.call_limit.update(live, late, self.lateness.p90(since=self.call_limit.changed))
        if limit != before:
            log.warning("this machine hears %s calls in time now (was %s; finals %.0f ms late with %d live, "
                        "[asr] busy_late_ms %.0f)", limit, before or "not known", late * 1000, live,
                        self.busy_late_s * 1000)
        if late > self.busy_late_s:
            return (f"the speech engine is behind: finals have lately come {late * 1000:.0f} ms late (more than "
                    f"[asr] busy_late_ms, {self.busy_late_s * 1000:.0f}); try again shortly")
        if limit is not None and live >= limit:
            found = "has lately heard in time" if self.call_limit.learned else "takes until its finals say more"
            return f"{live} calls are live, the most this machine {found} ([asr] busy_late_ms); try again shortly"
        if self.call_limit.paced():
            return "calls are let in one a second while this machine is near its limit; try again shortly"
        self.call_limit.admit()
        return None

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def calls(self) -> list[Call]:
        return list(self._calls.values())

    def observe(self, on_start: Callable[[Call], None]) -> None:
        """Call `on_start(call)` for every call started from now on, after `call.started` is
        queued (talk-back attaches itself this way). One that raises is logged and ignored."""
        self._observers.append(on_start)

    async def start(self, info: CallInfo, audio: AudioFormat, *, language: str | None = None,
                    model: str | None = None, interim_results: bool = False,
                    word_timestamps: bool | None = None, agent_audio: AudioFormat | None = None,
                    media: CallMedia | None = None, prompt: str | None = None) -> Call:
        """Open the engine stream(s) and emit `call.started`.

        `language`/`model` override the dialplan's; interim results are computed when the
        caller asks (`interim_results`) or the dialplan wants `utterance.partial` events;
        `word_timestamps` None follows `[asr] word_timestamps`. `agent_audio` opens a second
        track; `media` is the call's outbound side (None: `NoMedia`); `prompt` is the caller
        track's vocabulary (app.ingress.vocabulary).
        Raises `CallRejected` before anything is emitted; a call id already live is rejected.
        """
        if self._closing:
            raise CallRejected(Rejection.UNAVAILABLE, "the service is shutting down")
        if self.engine is None:
            raise CallRejected(Rejection.UNAVAILABLE, "the speech engine is not loaded")
        if info.id in self._calls:
            raise CallRejected(Rejection.DUPLICATE, f"call {info.id} is already in progress")
        if (busy := self.admit(already=info.source is CallSource.TWILIO)) is not None:
            self.metrics.refused_busy.labels(info.source.value).inc()
            raise CallRejected(Rejection.BUSY, busy)
        plan = info.dialplan
        tracks = {Track.CALLER: audio}
        if agent_audio is not None:
            tracks[Track.AGENT] = agent_audio
        streams: dict[Track, EngineStream] = {}
        try:
            for track, fmt in tracks.items():
                streams[track] = self.engine.stream(
                    fmt, language=language or (plan.language if plan else None),
                    model=model or (plan.model if plan else None),
                    interim_results=interim_results or (plan is not None and plan.interim_results),
                    word_timestamps=word_timestamps, prompt=prompt if track is Track.CALLER else None)
        except BaseException as exc:
            for stream in streams.values():
                await stream.aclose()
            if isinstance(exc, AudioFormatError):
                raise CallRejected(Rejection.UNSUPPORTED_AUDIO, str(exc)) from exc
            if isinstance(exc, UnknownModelError):
                raise CallRejected(Rejection.UNKNOWN_MODEL, str(exc)) from exc
            if isinstance(exc, ValueError):  # e.g. a language code the model does not know
                raise CallRejected(Rejection.INVALID_CONFIG, str(exc)) from exc
            raise  # anything else is a bug: it goes up as it is
        call = Call(info, streams, self.outbox, self.metrics, self._closed, media, self.echo_margin_db,
                    self.quality, self.lateness)
        self._calls[info.id] = call
        self.metrics.calls.labels(info.source.value).inc()
        self.metrics.active_sessions.labels(info.source.value).inc()
        call.events.started(info.metadata)
        with bind_call(info.id):
            log.info("call started: %s from %r to %r, dialplan %s", info.source.value, info.from_,
                     info.to, plan.name if plan else "-")
            for on_start in list(self._observers):
                try:
                    on_start(call)
                except Exception:
                    log.exception("a call observer failed")
        return call

    async def close(self, reason: EndReason = EndReason.SHUTDOWN) -> None:
        """Refuse new calls and end every live one (finals and call.ended reach the outbox)."""
        self._closing = True
        await asyncio.gather(*(call.end(reason) for call in self.calls()), return_exceptions=True)

    def _closed(self, call: Call) -> None:
        self._calls.pop(call.id, None)
