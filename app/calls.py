"""Calls: one `Call` per phone call or streaming session, started through the `CallHub`.

Every ingress (SIP, Twilio, `/v1/stream`) starts its calls here, so every source gets the same
webhook events, metrics and utterance numbering:

    call = await hub.start(CallInfo(id, CallSource.SIP, from_, to, dialplan), AudioFormat(...))
    call.push(payload) / await call.feed(payload)   # caller audio, as for EngineStream
    call.push_agent(payload)                        # the second ("agent") track, if asked for
    call.dtmf("5")
    unlisten = call.listen(on_transcript, on_end)   # or: async for t in call.transcripts()
    await call.end("hangup")                        # finalises, emits call.ended; idempotent

A `Call` wraps one `EngineStream` per track and owns one task per track that consumes the
stream's transcripts. Finals are numbered per call (0, 1, ...), kept for `call.ended`, and
written to the outbox as `utterance.final`; interims become `utterance.partial` only when the
dialplan asks. Events are queued synchronously and written by one writer task per call, so
the outbox sees them in the order they happened. A call whose `dialplan` is None emits no
webhook events (its listeners still get every transcript).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from app.delivery import events
from app.delivery.events import CallRef, WebhookEvent
from app.dialplans import Dialplan, Dialplans
from app.logs import bind_call
from app.metrics import Metrics
from app.pipeline.events import AudioFormat, Transcript

if TYPE_CHECKING:
    from app.delivery.outbox import Outbox
    from app.pipeline.engine import EngineStream, SpeechEngine

log = logging.getLogger("hearsay.calls")

TranscriptListener = Callable[[Transcript], None]
EndListener = Callable[[], None]


class CallSource(StrEnum):
    """Where a call's audio comes from (the `call.source` of webhook events)."""

    SIP = "sip"
    TWILIO = "twilio"
    STREAM = "stream"


class CallRejected(Exception):
    """The hub cannot start a call now (shutting down, or no speech engine)."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who is calling whom, through which route. `dialplan=None`: no webhook events."""

    id: str
    source: CallSource
    from_: str
    to: str
    dialplan: Dialplan | None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def ref(self) -> CallRef:
        name = self.dialplan.name if self.dialplan is not None else ""
        return CallRef(id=self.id, source=self.source.value, from_=self.from_, to=self.to, dialplan=name)


class Call:
    """One live call: its engine stream(s), its utterances, and the events it emits."""

    def __init__(self, info: CallInfo, streams: Mapping[str, EngineStream], outbox: Outbox | None,
                 metrics: Metrics, on_closed: Callable[[Call], None]) -> None:
        self.info = info
        self.started_at = time.monotonic()
        self._streams = dict(streams)
        self._two_tracks = len(self._streams) > 1
        self._outbox = outbox
        self._metrics = metrics
        self._on_closed = on_closed
        self._ref = info.ref()
        self._next_index = 0
        self._utterances: list[tuple[Transcript, str | None]] = []
        self._listeners: list[tuple[TranscriptListener, EndListener | None]] = []
        self._pending: asyncio.Queue[WebhookEvent | None] = asyncio.Queue()
        # (seconds of caller audio received, monotonic time): when did audio at t arrive?
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=4096)
        self._ending: asyncio.Future[None] | None = None
        self._ended = asyncio.Event()
        with bind_call(info.id):
            self._writer = asyncio.create_task(self._write_events(), name=f"call-{info.id}-events")
            self._consumers = [
                asyncio.create_task(self._consume(track, stream), name=f"call-{info.id}-{track}")
                for track, stream in self._streams.items()
            ]

    # -- identity and state ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def duration_s(self) -> float:
        """Seconds of caller audio received so far."""
        return self._streams["caller"].duration_s

    @property
    def dropped_frames(self) -> int:
        return sum(s.dropped_frames for s in self._streams.values())

    @property
    def utterances(self) -> list[Transcript]:
        """The final utterances so far, in order, numbered from 0."""
        return [t for t, _ in self._utterances]

    @property
    def transcript(self) -> str:
        """The full text of the call so far."""
        return " ".join(t.text for t, _ in self._utterances if t.text)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def wait_ended(self) -> None:
        """Wait until the call has ended (for whatever reason) and `call.ended` is written."""
        await self._ended.wait()

    # -- audio in ---------------------------------------------------------------------------

    def push(self, payload: bytes) -> bool:
        """Caller audio from a real-time source; never waits. False: dropped (engine behind)."""
        ok = self._streams["caller"].push(payload)
        self._arrived()
        return ok

    async def feed(self, payload: bytes) -> None:
        """Caller audio from a source that can wait (waits while the engine's backlog is full)."""
        await self._streams["caller"].feed(payload)
        self._arrived()

    def push_agent(self, payload: bytes) -> bool:
        """The second track (e.g. Twilio's outbound audio); only for calls started with one."""
        stream = self._streams.get("agent")
        if stream is None:
            raise RuntimeError(f"call {self.id} has no agent track")
        return stream.push(payload)

    def dtmf(self, digit: str) -> None:
        """A key the caller pressed: emits a `dtmf` event (ValueError for a non-DTMF digit)."""
        plan = self.info.dialplan
        if plan is not None and not self.ended:
            self._emit(events.dtmf(self._ref, digit, url=plan.webhook_url, secret=plan.webhook_secret))

    # -- transcripts out --------------------------------------------------------------------

    def listen(self, on_transcript: TranscriptListener,
               on_end: EndListener | None = None) -> Callable[[], None]:
        """Call `on_transcript` with every interim and final result (finals carry the call's
        utterance index) and `on_end` once the call has ended. The callbacks run on the event
        loop and must not block; one that raises is logged and ignored. Returns an unsubscriber.
        """
        entry = (on_transcript, on_end)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    async def transcripts(self) -> AsyncIterator[Transcript]:
        """Every result from now until the call ends (unbounded buffer: results are small)."""
        queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        unlisten = self.listen(queue.put_nowait, lambda: queue.put_nowait(None))
        try:
            if self.ended:
                return
            while (item := await queue.get()) is not None:
                yield item
        finally:
            unlisten()

    # -- the end ----------------------------------------------------------------------------

    async def end(self, reason: str = "hangup") -> None:
        """Finalise the open utterance, emit `call.ended`, release the streams. Idempotent:
        later calls (with any reason) wait for the first one to finish."""
        await self._close(reason, finalise=True)

    async def abort(self, reason: str = "aborted") -> None:
        """End the call without finalising the open utterance (its audio is dropped); still
        emits `call.ended` with the finals so far. Idempotent like `end`."""
        await self._close(reason, finalise=False)

    async def _close(self, reason: str, *, finalise: bool) -> None:
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._finish(reason, finalise))
        await asyncio.shield(self._ending)

    async def _finish(self, reason: str, finalise: bool) -> None:
        with bind_call(self.id):
            for stream in self._streams.values():
                try:
                    if finalise:
                        await stream.finish()
                    else:
                        await stream.aclose()
                except Exception:
                    log.exception("closing the engine stream failed")
                    with contextlib.suppress(Exception):
                        await stream.aclose()
            await asyncio.gather(*self._consumers, return_exceptions=True)
            plan = self.info.dialplan
            if plan is not None:
                self._emit(events.call_ended(
                    self._ref, [(t, s) if s else t for t, s in self._utterances],
                    duration_s=self.duration_s, reason=reason,
                    url=plan.webhook_url, secret=plan.webhook_secret))
            self._pending.put_nowait(None)
            await self._writer
            source = self.info.source.value
            self._metrics.active_sessions.labels(source).dec()
            self._metrics.audio_seconds.labels(source).inc(self.duration_s)
            self._metrics.dropped_frames.labels(source).inc(self.dropped_frames)
            log.info("call ended (%s): %d utterances, %.1f s of audio", reason,
                     len(self._utterances), self.duration_s)
            self._ended.set()
            self._on_closed(self)
            for _, on_end in list(self._listeners):
                if on_end is not None:
                    self._safely(on_end)

    # -- internals --------------------------------------------------------------------------

    def _arrived(self) -> None:
        self._arrivals.append((self._streams["caller"].duration_s, time.monotonic()))

    def _arrival_of(self, stream_s: float) -> float | None:
        """When the caller audio at `stream_s` seconds arrived (None: too long ago)."""
        for seconds, at in self._arrivals:
            if seconds >= stream_s:
                return at
        return None

    async def _consume(self, track: str, stream: EngineStream) -> None:
        speaker = track if self._two_tracks else None
        try:
            async for result in stream.results():
                self._on_result(result, speaker)
        except Exception:
            log.exception("the %s track's engine stream failed", track)

    def _on_result(self, result: Transcript, speaker: str | None) -> None:
        plan = self.info.dialplan
        result = replace(result, index=self._next_index)
        if result.is_final:
            self._next_index += 1
            self._utterances.append((result, speaker))
            self._metrics.utterances.labels(self.info.source.value).inc()
            if speaker in (None, "caller"):
                self._observe_latency(result)
            if plan is not None:
                self._emit(events.utterance_final(self._ref, result, url=plan.webhook_url,
                                                  secret=plan.webhook_secret, speaker=speaker))
            log.info("utterance %d: %s", result.index, result.text)
        elif plan is not None and plan.interim_results:
            self._emit(events.utterance_partial(self._ref, result, url=plan.webhook_url,
                                                secret=plan.webhook_secret, speaker=speaker))
        for on_transcript, _ in list(self._listeners):
            self._safely(on_transcript, result)

    def _observe_latency(self, result: Transcript) -> None:
        # end of speech arrived -> (VAD waits for silence, queues) -> recognizer compute -> here
        arrived = self._arrival_of(result.end_s)
        self._metrics.asr_latency.observe(result.compute_s)
        if arrived is None:
            return
        if result.emitted_at:
            self._metrics.vad_latency.observe(max(0.0, result.emitted_at - arrived - result.compute_s))
        self._metrics.end_to_end_latency.labels(self.info.source.value).observe(
            max(0.0, time.monotonic() - arrived))

    def _emit(self, event: WebhookEvent) -> None:
        self._pending.put_nowait(event)

    async def _write_events(self) -> None:
        while (event := await self._pending.get()) is not None:
            if self._outbox is None:
                continue
            try:
                await self._outbox.add(event)
            except Exception:
                log.exception("could not write %s %s to the outbox", event.type, event.id)

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("a transcript listener failed")


class CallHub:
    """Starts calls on the shared engine and keeps the live ones (for health and shutdown).

    `dialplans` may be replaced at any time (SIGHUP reload); calls keep the plan they started
    with. `outbox=None` (tests of the engine alone) writes no events.
    """

    def __init__(self, engine: SpeechEngine | None, dialplans: Dialplans, outbox: Outbox | None,
                 metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.dialplans = dialplans
        self.outbox = outbox
        self.metrics = metrics or Metrics()
        self._calls: dict[str, Call] = {}
        self._closing = False

    @property
    def active(self) -> int:
        return len(self._calls)

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def calls(self) -> list[Call]:
        return list(self._calls.values())

    async def start(self, info: CallInfo, audio: AudioFormat, *, language: str | None = None,
                    model: str | None = None, interim_results: bool = False,
                    word_timestamps: bool | None = None, agent_audio: AudioFormat | None = None) -> Call:
        """Open the engine stream(s) and emit `call.started`.

        `language`/`model` override the dialplan's; interim results are computed when the
        caller asks (`interim_results`) or the dialplan wants `utterance.partial` events;
        `word_timestamps` None follows `[asr] word_timestamps`.
        Raises `CallRejected`, or the engine's `AudioFormatError` / `UnknownModelError`
        before anything is emitted. A call id already live is rejected.
        """
        if self._closing:
            raise CallRejected("the service is shutting down")
        if self.engine is None:
            raise CallRejected("the speech engine is not loaded")
        if info.id in self._calls:
            raise CallRejected(f"call {info.id} is already in progress")
        plan = info.dialplan
        want_interims = interim_results or (plan is not None and plan.interim_results)
        options: dict[str, Any] = {"interim_results": want_interims}
        if word_timestamps is not None:
            options["word_timestamps"] = word_timestamps
        if language or plan is not None:
            options["language"] = language or (plan.language if plan else None)
        if model or plan is not None:
            options["model"] = model or (plan.model if plan else None)
        tracks = {"caller": audio} if agent_audio is None else {"caller": audio, "agent": agent_audio}
        streams: dict[str, EngineStream] = {}
        try:
            for track, fmt in tracks.items():
                streams[track] = self.engine.stream(fmt, **options)
        except Exception:
            for stream in streams.values():
                await stream.aclose()
            raise
        call = Call(info, streams, self.outbox, self.metrics, self._closed)
        self._calls[info.id] = call
        self.metrics.calls.labels(info.source.value).inc()
        self.metrics.active_sessions.labels(info.source.value).inc()
        if plan is not None:
            call._emit(events.call_started(info.ref(), url=plan.webhook_url, secret=plan.webhook_secret,
                                           metadata=info.metadata or None))
        with bind_call(info.id):
            log.info("call started: %s from %r to %r, dialplan %s", info.source.value, info.from_,
                     info.to, plan.name if plan else "-")
        return call

    async def close(self, reason: str = "shutdown") -> None:
        """Refuse new calls and end every live one (finals and call.ended reach the outbox)."""
        self._closing = True
        await asyncio.gather(*(call.end(reason) for call in self.calls()), return_exceptions=True)

    def _closed(self, call: Call) -> None:
        self._calls.pop(call.id, None)
