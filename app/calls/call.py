"""One live call: the engine stream of each track in, transcripts and events out, and the
call's outbound media.

    call.push(payload) / await call.feed(payload)   # caller audio, as for EngineStream
    call.push_agent(payload)                        # the second ("agent") track, if asked for
    call.dtmf("5")
    call.media.play(pcm, 16000)                     # speak into the call (see calls.media)
    unlisten = call.listen(on_transcript, on_end, on_speech=...)   # or: call.transcripts()
    call.on_quality(on_report)                      # quality figures and warnings (pipeline.quality)
    await call.end(EndReason.HANGUP)                # finalises, emits call.ended; idempotent

A `Call` owns one consumer task per track reading that track's `EngineStream.results()`.
Finals are numbered per call (0, 1, ...), kept for `call.ended`, and written as
`utterance.final`; interims become `utterance.partial` only when the dialplan asks. Speech
events of the caller's track go to `on_speech` listeners as soon as the engine has them.
The caller's audio, speech events and finals also feed the call's `QualityMonitor`: after
each second of caller audio, and once more at the end, its report (and any warnings) goes
to `on_quality` listeners and the warnings to `quality.warning` events (dialplans that opt
in); the last report rides on `call.ended`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from app.calls.clock import ArrivalClock
from app.calls.echo import EchoGate, OutboundTap
from app.calls.info import CallInfo, EndReason, Track
from app.calls.lateness import RecentLateness
from app.calls.media import CallMedia, NoMedia
from app.calls.writer import EventWriter
from app.delivery.events import Utterance
from app.logs import bind_call
from app.metrics import Metrics
from app.pipeline.decode import decode, encode
from app.pipeline.quality import QualityMonitor, QualityReport, QualityThresholds, QualityWarning
from app.pipeline.types import SpeechEvent, Transcript

if TYPE_CHECKING:
    from app.delivery.outbox import Outbox
    from app.pipeline.engine_stream import EngineStream

log = logging.getLogger("hearsay.calls")

TranscriptListener = Callable[[Transcript], None]
SpeechListener = Callable[[SpeechEvent], None]
EndListener = Callable[[], None]
QualityListener = Callable[[QualityReport, list[QualityWarning]], None]
# The quality figures a live call has as gauges in /metrics.
_GAUGED = ("level_dbfs", "noise_floor_dbfs", "snr_db", "clipping_ratio", "speech_ratio", "speech_rate_wpm",
           "confidence", "latency_s")


class Call:
    """One live call: its engine stream(s), its utterances, its events and its media."""

    def __init__(self, info: CallInfo, streams: Mapping[Track, EngineStream], outbox: Outbox | None,
                 metrics: Metrics, on_closed: Callable[[Call], None],
                 media: CallMedia | None = None, echo_margin_db: float = 10.0,
                 quality: QualityThresholds | None = None, lateness: RecentLateness | None = None) -> None:
        self.info = info
        self.started_at = time.monotonic()
        self.echo = EchoGate(echo_margin_db)
        # What the call plays goes through the echo gate's tap (calls.echo).
        self.media: CallMedia = OutboundTap(media if media is not None else NoMedia(), self.echo)
        self._streams = dict(streams)
        self._two_tracks = len(self._streams) > 1
        self._metrics = metrics
        self._on_closed = on_closed
        self._next_index = 0
        self._utterances: list[Utterance] = []
        self._listeners: list[tuple[TranscriptListener, EndListener | None, SpeechListener | None]] = []
        self._clock = ArrivalClock()
        self._lateness = lateness  # the hub's, fed with every caller final's (calls.lateness)
        self._ending: asyncio.Future[None] | None = None
        self._end_reason: EndReason | None = None
        self._ended = asyncio.Event()
        # Figures only the transport knows (SIP: RTP loss and jitter), set before the call ends.
        self.media_quality: dict[str, Any] = {}
        self.quality = QualityMonitor(self._streams[Track.CALLER].format.sample_rate, quality)
        self.last_quality: QualityReport | None = None
        self._quality_listeners: list[QualityListener] = []
        self._next_report_s = 1.0
        with bind_call(info.id):
            self.events = EventWriter(info.ref(), info.dialplan, outbox)
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
        return self._streams[Track.CALLER].duration_s

    @property
    def dropped_frames(self) -> int:
        return sum(s.dropped_frames for s in self._streams.values())

    @property
    def utterances(self) -> list[Transcript]:
        """The final utterances so far, in order, numbered from 0."""
        return [u.transcript for u in self._utterances]

    @property
    def transcript(self) -> str:
        """The full text of the call so far."""
        return " ".join(u.transcript.text for u in self._utterances if u.transcript.text)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def end_reason(self) -> EndReason | None:
        """Why the call is ending or ended (None while it is live)."""
        return self._end_reason

    async def wait_ended(self) -> None:
        """Wait until the call has ended (for whatever reason) and `call.ended` is written."""
        await self._ended.wait()

    # -- audio in ---------------------------------------------------------------------------

    def push(self, payload: bytes) -> bool:
        """Caller audio from a real-time source; never waits. False: dropped (engine behind).
        Raises StreamClosedError once the call is ending."""
        stream = self._streams[Track.CALLER]
        payload = self._unechoed(stream, payload)
        ok = stream.push(payload)
        self._clock.mark(stream.duration_s)
        self._measure(stream, payload)
        return ok

    async def feed(self, payload: bytes) -> None:
        """Caller audio from a source that can wait (waits while the engine's backlog is full)."""
        stream = self._streams[Track.CALLER]
        payload = self._unechoed(stream, payload)
        await stream.feed(payload)
        self._clock.mark(stream.duration_s)
        self._measure(stream, payload)

    def push_agent(self, payload: bytes) -> bool:
        """The second track (e.g. Twilio's outbound audio); only for calls started with one."""
        stream = self._streams.get(Track.AGENT)
        if stream is None:
            raise RuntimeError(f"call {self.id} has no agent track")
        return stream.push(payload)

    def dtmf(self, digit: str) -> None:
        """A key the caller pressed: emits a `dtmf` event (ValueError for a non-DTMF digit)."""
        if not self.ended:
            self.events.dtmf(digit)

    # -- results out ------------------------------------------------------------------------

    def listen(self, on_transcript: TranscriptListener, on_end: EndListener | None = None, *,
               on_speech: SpeechListener | None = None) -> Callable[[], None]:
        """Call `on_transcript` with every interim and final result (finals carry the call's
        utterance index), `on_speech` with the caller's speech events (started, paused,
        resumed, ended: barge-in and turn-taking) and `on_end` once the call has ended. The
        callbacks run on the event loop and must not block; one that raises is logged and
        ignored. Returns an unsubscriber.

        A speech event's `index` numbers the caller stream's utterances; it is not the call's
        utterance index, which counts only utterances that produced text (on both tracks).
        Speech that ends with no words (a cough) has STARTED and ENDED but no final."""
        entry = (on_transcript, on_end, on_speech)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    def on_quality(self, listener: QualityListener) -> Callable[[], None]:
        """Call `listener(report, warnings)` after each second of caller audio and once at the
        end (before `on_end`); on the event loop, must not block. Returns an unsubscriber."""
        self._quality_listeners.append(listener)
        return lambda: self._quality_listeners.remove(listener) if listener in self._quality_listeners else None

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

    async def end(self, reason: EndReason = EndReason.HANGUP) -> None:
        """Finalise the open utterance, emit `call.ended`, release the streams. Idempotent:
        later calls (with any reason) wait for the first one to finish."""
        await self._close(reason, finalise=True)

    async def abort(self, reason: EndReason) -> None:
        """End the call without finalising the open utterance (its audio is dropped); still
        emits `call.ended` with the finals so far. Idempotent like `end`."""
        await self._close(reason, finalise=False)

    async def _close(self, reason: EndReason, *, finalise: bool) -> None:
        ending = self._begin_ending(reason, finalise)
        await asyncio.shield(ending)

    def _begin_ending(self, reason: EndReason, finalise: bool) -> asyncio.Future[None]:
        """Start ending the call, unless it is already ending (the first reason wins)."""
        if self._ending is None:
            self._end_reason = EndReason(reason)
            self._ending = asyncio.ensure_future(self._finish(self._end_reason, finalise))
        return self._ending

    async def _finish(self, reason: EndReason, finalise: bool) -> None:
        with bind_call(self.id):
            try:
                await self.media.aclose()
            except Exception:
                log.exception("closing the call's media failed")
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
            self.quality.end()
            self._report()
            self.events.ended(self._utterances, self.duration_s, reason.value, self._quality_figures())
            await self.events.close()
            source = self.info.source.value
            self._metrics.active_sessions.labels(source).dec()
            self._metrics.audio_seconds.labels(source).inc(self.duration_s)
            self._metrics.dropped_frames.labels(source).inc(self.dropped_frames)
            self._gauge_quality(None)
            log.info("call ended (%s): %d utterances, %.1f s of audio", reason.value,
                     len(self._utterances), self.duration_s)
            self._ended.set()
            self._on_closed(self)
            for _, on_end, _ in list(self._listeners):
                if on_end is not None:
                    self._safely(on_end)

    # -- internals --------------------------------------------------------------------------

    def _unechoed(self, stream: EngineStream, payload: bytes) -> bytes:
        """`payload`, or silence as long when it is only the echo of what we are playing."""
        if not self.echo.armed or not payload:
            return payload
        encoding = stream.format.encoding
        samples = decode(payload, encoding)
        if not self.echo.is_echo(samples):
            return payload
        return encode(np.zeros(len(samples), np.float32), encoding)

    async def _consume(self, track: Track, stream: EngineStream) -> None:
        speaker = track.value if self._two_tracks else None
        try:
            async for result in stream.results():
                if isinstance(result, Transcript):
                    self._on_transcript(result, speaker)
                elif track is Track.CALLER:
                    self.quality.speech(result)
                    for _, _, on_speech in list(self._listeners):
                        if on_speech is not None:
                            self._safely(on_speech, result)
        except Exception:
            log.exception("the %s track's engine stream failed", track.value)
        if self._ending is None:
            # The stream ended without the call ending it: it stopped on an internal error
            # (logged by the engine). The call ends now, with the finals it has, rather than
            # going on with nothing to hear it. (Not awaited: ending waits for this task.)
            log.error("the %s track's engine stream stopped; the call ends", track.value)
            self._begin_ending(EndReason.ERROR, finalise=True)

    def _on_transcript(self, result: Transcript, speaker: str | None) -> None:
        result = replace(result, index=self._next_index)
        if result.is_final:
            self._next_index += 1
            self._utterances.append(Utterance(result, speaker))
            self._metrics.utterances.labels(self.info.source.value).inc()
            if speaker in (None, Track.CALLER):
                self._observe_latency(result)
                self.quality.transcript(result)
            self.events.final(result, speaker)
            log.info("utterance %d: %s", result.index, result.text)
        else:
            self.events.partial(result, speaker)
        for on_transcript, _, _ in list(self._listeners):
            self._safely(on_transcript, result)

    def _observe_latency(self, result: Transcript) -> None:
        # end of speech arrived -> (VAD waits for silence, queues) -> recognizer compute -> here
        arrived = self._clock.arrival_of(result.end_s)
        self._metrics.asr_latency.observe(result.compute_s)
        if arrived is None:
            return
        if result.emitted_at:
            self._metrics.vad_latency.observe(max(0.0, result.emitted_at - arrived - result.compute_s))
        decided = self._clock.arrival_of(result.decided_s) if result.decided_s else None
        if decided is not None and result.emitted_at:
            late = max(0.0, result.emitted_at - decided)
            self._metrics.final_lateness.observe(late)
            if self._lateness is not None:
                self._lateness.add(late, call_started=self.started_at)
        latency = max(0.0, time.monotonic() - arrived)
        self._metrics.end_to_end_latency.labels(self.info.source.value).observe(latency)
        self.quality.latency(latency)

    def _measure(self, stream: EngineStream, payload: bytes) -> None:
        """Feed the quality monitor; report after each whole second of caller audio."""
        if payload:
            self.quality.audio(decode(payload, stream.format.encoding))
        if stream.duration_s >= self._next_report_s:
            self._next_report_s = float(int(stream.duration_s) + 1)
            self._report()

    def _report(self) -> None:
        report = self.quality.report()
        warnings = self.quality.warnings(report, self.duration_s)
        self.last_quality = report
        self._gauge_quality(report)
        for warning in warnings:
            self._metrics.quality_warnings.labels(self.info.source.value, warning.kind.value).inc()
            log.info("quality warning %s: %.3g (threshold %.3g)", warning.kind.value, warning.value,
                     warning.threshold)
            self.events.quality_warning(warning, report)
        for listener in list(self._quality_listeners):
            self._safely(listener, report, warnings)

    def _gauge_quality(self, report: QualityReport | None) -> None:
        """The call's figures as `hearsay_call_quality` series; None: remove them (the end)."""
        gauge, source = self._metrics.call_quality, self.info.source.value
        figures = report.as_dict() if report is not None else {}
        for figure in _GAUGED:
            value = figures.get(figure)
            if value is None:
                with contextlib.suppress(KeyError):
                    gauge.remove(self.id, source, figure)
            else:
                gauge.labels(self.id, source, figure).set(value)

    def _quality_figures(self) -> dict[str, Any]:
        """What `call.ended` carries as `quality`: the last report, plus what the media adds
        (SIP: RTP loss and jitter)."""
        figures: dict[str, Any] = self.last_quality.as_dict() if self.last_quality else {}
        figures.update(self.media_quality)
        return figures

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("a call listener failed")
