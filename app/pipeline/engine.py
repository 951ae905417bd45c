"""The speech engine: models loaded once, one `EngineStream` per call.

Per stream, audio flows decode -> resample -> VAD -> recognize (one module each); this module
only schedules them. Two shared schedulers keep the machine busy with useful work:

- VAD: streams with whole 32 ms chunks wait on one batcher, which runs all of them through
  Silero as one batch on the VAD thread (32 streams cost about what 4 do alone).
- Recognition: a priority queue in front of `[asr] workers` threads. Finals go before
  interims, jobs waiting together run as one batch (calls that stop talking at the same
  moment cost little more than one), an interim is skipped while the stream already has one
  queued, and a final is
  started speculatively when the speaker pauses (`SpeechPaused`), so that by the time the
  silence confirms the end of the utterance its text is usually ready.

Results come out of `EngineStream.results()` in order: interims of an utterance, then its
final. See docs/architecture.md for the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from app.pipeline import models
from app.pipeline.decode import decode
from app.pipeline.errors import AudioFormatError, UnknownModelError
from app.pipeline.events import AudioFormat, Encoding, Transcript
from app.pipeline.recognize import Recognition, Recognizer
from app.pipeline.resample import Resampler
from app.pipeline.vad import (
    SileroVAD,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    UtteranceEnded,
    VadEvent,
    VADStream,
)
from app.settings import AsrSettings, VadSettings

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8000, 48000
_FINAL, _INTERIM = 0, 1
_VAD_STEPS_PER_BATCH = 16
_VAD_GATHER_S = 0.01  # how long the VAD batcher waits for more streams to join a batch
_MAX_BATCH = 4  # utterances recognised in one pass


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    audio: np.ndarray = field(compare=False)
    recognizer: Recognizer = field(compare=False)
    language: str | None = field(compare=False)
    words: bool = field(compare=False)
    future: asyncio.Future[Recognition] = field(compare=False)


class SpeechEngine:
    """Loaded models (Silero VAD, one or more Whisper models) shared by all streams."""

    def __init__(self, vad: SileroVAD, recognizers: dict[str, Recognizer],
                 asr: AsrSettings, vad_settings: VadSettings) -> None:
        self.vad = vad
        self.recognizers = recognizers
        self.asr_settings = asr
        self.vad_settings = vad_settings
        self._vad_pool = ThreadPoolExecutor(1, thread_name_prefix="vad")
        self._asr_pool = ThreadPoolExecutor(asr.workers, thread_name_prefix="asr")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._vad_waiting: list[tuple[VADStream, asyncio.Future[None]]] = []
        self._vad_wake = asyncio.Event()
        self._jobs: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self.open_streams: set[EngineStream] = set()  # streams whose audio is still flowing

    @classmethod
    def load(cls, asr: AsrSettings, vad: VadSettings, extra_models: Iterable[str] = ()) -> SpeechEngine:
        """Load Silero and the Whisper models (`asr.model` plus `extra_models`). Blocking."""
        torch.set_num_threads(1)
        recognizers: dict[str, Recognizer] = {}
        for name in dict.fromkeys([asr.model, *extra_models]):
            recognizers[name] = Recognizer.load(models.resolve(name, asr.model_cache_dir), asr)
        return cls(SileroVAD.load(), recognizers, asr, vad)

    @property
    def default_model(self) -> str:
        return self.asr_settings.model

    def recognizer(self, name: str | None) -> Recognizer:
        name = name or self.default_model
        if name not in self.recognizers:
            loaded = ", ".join(self.recognizers)
            raise UnknownModelError(f"model {name!r} is not loaded by this server (loaded: {loaded})")
        return self.recognizers[name]

    def stream(self, audio: AudioFormat, *, language: str | None = None, model: str | None = None,
               interim_results: bool = True, word_timestamps: bool | None = None) -> EngineStream:
        """Open a stream for one call. Must be called on the event loop that will feed it."""
        if not isinstance(audio.encoding, Encoding):
            raise AudioFormatError(f"unsupported encoding {audio.encoding!r}")
        if not MIN_RATE <= audio.sample_rate <= MAX_RATE:
            raise AudioFormatError(
                f"sample rate {audio.sample_rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        recognizer = self.recognizer(model)
        if language and language not in ("auto", "en") and not recognizer.multilingual:
            name = model or self.default_model
            raise UnknownModelError(
                f"language {language!r} needs a multilingual model; {name!r} is English-only")
        self._start_schedulers()
        words = self.asr_settings.word_timestamps if word_timestamps is None else word_timestamps
        return EngineStream(self, audio, recognizer, language, interim_results, words)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._loop = None

    def close(self) -> None:
        self._vad_pool.shutdown(wait=True, cancel_futures=True)
        self._asr_pool.shutdown(wait=True, cancel_futures=True)

    # -- schedulers ----------------------------------------------------------------------
    def _start_schedulers(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._tasks:
            return
        self._loop = loop
        self._vad_wake = asyncio.Event()
        self._jobs = asyncio.PriorityQueue()
        self._tasks = [loop.create_task(self._vad_batcher(), name="vad-batcher")]
        self._tasks += [loop.create_task(self._asr_worker(), name=f"asr-{i}")
                        for i in range(self.asr_settings.workers)]

    async def vad_step(self, stream: VADStream) -> None:
        """Classify the stream's ready chunks (batched with other streams')."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._vad_waiting.append((stream, future))
        self._vad_wake.set()
        await future

    async def _vad_batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._vad_wake.wait()
            if len(self._vad_waiting) < len(self.open_streams):
                # Let other streams' chunks join: one batch of many costs about what one
                # costs. A lone stream (a file being transcribed) never waits.
                await asyncio.sleep(_VAD_GATHER_S)
            self._vad_wake.clear()
            batch, self._vad_waiting = self._vad_waiting, []
            if not batch:
                continue
            try:
                await loop.run_in_executor(self._vad_pool, self._run_vad, [s for s, _ in batch])
            except Exception as exc:  # a broken batch fails its streams, not the batcher
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _run_vad(self, streams: list[VADStream]) -> None:
        active = streams
        for _ in range(_VAD_STEPS_PER_BATCH):
            active = [s for s in active if s.ready]
            if not active:
                return
            self.vad.infer(active)

    def submit(self, priority: int, audio: np.ndarray, recognizer: Recognizer,
               language: str | None, words: bool) -> asyncio.Future[Recognition]:
        future: asyncio.Future[Recognition] = asyncio.get_running_loop().create_future()
        job = _Job(priority, next(self._seq), audio, recognizer, language, words, future)
        self._jobs.put_nowait(job)
        return future

    async def _asr_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._jobs.get()
            if job.future.done():  # cancelled while queued
                continue
            batch = [job, *self._take_batchable(job)]
            try:
                results = await loop.run_in_executor(
                    self._asr_pool, job.recognizer.transcribe_batch,
                    [j.audio for j in batch], job.language, job.words)
            except Exception as exc:
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j, result in zip(batch, results, strict=True):
                if not j.future.done():
                    j.future.set_result(result)

    def _take_batchable(self, first: _Job) -> list[_Job]:
        """Queued jobs that can run in one batch with `first` (same priority and model)."""
        taken: list[_Job] = []
        other: list[_Job] = []
        # Take only this worker's share of the queue: a batch costs about three quarters of
        # its utterances one by one, so two workers each doing half beat one doing all.
        share = -(-(self._jobs.qsize() + 1) // self.asr_settings.workers)
        while len(taken) < min(_MAX_BATCH, share) - 1 and not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job.future.done():
                continue
            if job.priority != first.priority:
                other.append(job)  # the queue is ordered: nothing of first's priority is left
                break
            same = (job.recognizer, job.language, job.words) == (first.recognizer, first.language, first.words)
            (taken if same else other).append(job)
        for job in other:
            self._jobs.put_nowait(job)
        return taken


class EngineStream:
    """One call's pass through the pipeline. Use from the event loop; see the module doc."""

    # Backlog (seconds of audio not yet through the VAD): feed() waits above the first,
    # push() drops above the second.
    FEED_BACKLOG_S = 2.0
    PUSH_BACKLOG_S = 20.0

    def __init__(self, engine: SpeechEngine, audio: AudioFormat, recognizer: Recognizer,
                 language: str | None, interim_results: bool, word_timestamps: bool) -> None:
        self._engine = engine
        self.format = audio
        self._recognizer = recognizer
        self._language = None if language in (None, "", "auto") else language
        self._interim = interim_results and engine.asr_settings.interim_interval_ms > 0
        self._interim_every = engine.asr_settings.interim_interval_ms / 1000
        self._words = word_timestamps
        self._resampler = Resampler(audio.sample_rate, 16000)
        self._vad = engine.vad.stream(engine.vad_settings)
        self._inbox: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._bytes_per_s = audio.sample_rate * audio.bytes_per_sample
        self._has_audio = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._closing = False
        self._outbox: asyncio.Queue[asyncio.Future[Transcript | None] | None] = asyncio.Queue()
        self._results: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._index = 0  # index of the open (or next) utterance
        self._utt_start = 0.0
        self._last_interim_at = 0.0
        self._interim_busy = False
        self._pending_finals = 0
        self._speculation: tuple[float, asyncio.Future[Recognition]] | None = None
        self.received_bytes = 0
        self.dropped_frames = 0
        loop = asyncio.get_running_loop()
        engine.open_streams.add(self)
        self._worker = loop.create_task(self._process(), name="engine-stream")
        self._emitter = loop.create_task(self._emit(), name="engine-emit")

    # -- input ---------------------------------------------------------------------------
    @property
    def duration_s(self) -> float:
        return self.received_bytes / self._bytes_per_s

    def _check(self, payload: bytes) -> None:
        if self._closing:
            raise AudioFormatError("the stream is finished; no more audio is accepted")
        if self.format.encoding is Encoding.LINEAR16 and len(payload) % 2:
            raise AudioFormatError(f"LINEAR16 audio must have an even number of bytes, got {len(payload)}")

    def _enqueue(self, payload: bytes) -> None:
        self._inbox.append(payload)
        self._backlog_bytes += len(payload)
        self.received_bytes += len(payload)
        self._has_audio.set()
        if self._backlog_bytes > self.FEED_BACKLOG_S * self._bytes_per_s:
            self._has_room.clear()

    async def feed(self, payload: bytes) -> None:
        """Add audio, waiting while the backlog is full (flow control for fast sources)."""
        self._check(payload)
        await self._has_room.wait()
        self._enqueue(payload)

    def push(self, payload: bytes) -> bool:
        """Add audio without waiting; returns False (and counts a drop) when far behind."""
        self._check(payload)
        if self._backlog_bytes > self.PUSH_BACKLOG_S * self._bytes_per_s:
            self.dropped_frames += 1
            return False
        self._enqueue(payload)
        return True

    async def finish(self) -> None:
        """End of audio: finalise the open utterance, then end `results()`."""
        if not self._closing:
            self._closing = True
            self._has_audio.set()
        await asyncio.gather(asyncio.shield(self._worker), asyncio.shield(self._emitter))

    async def aclose(self) -> None:
        """Abandon the stream without finalising."""
        self._closing = True
        for task in (self._worker, self._emitter):
            task.cancel()
        for task in (self._worker, self._emitter):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._results.put_nowait(None)

    async def results(self) -> AsyncIterator[Transcript]:
        """Interim and final transcripts in order; ends after `finish()`."""
        while True:
            item = await self._results.get()
            if item is None:
                return
            yield item

    # -- processing ----------------------------------------------------------------------
    async def _process(self) -> None:
        try:
            while True:
                await self._has_audio.wait()
                self._has_audio.clear()
                while self._inbox:
                    payload = self._inbox.popleft()
                    self._backlog_bytes -= len(payload)
                    samples = decode(payload, self.format.encoding)
                    self._vad.append(self._resampler.process(samples))
                    while self._vad.ready:
                        await self._engine.vad_step(self._vad)
                        self._handle(self._vad.take_events())
                    self._maybe_interim()
                    if self._backlog_bytes <= self.FEED_BACKLOG_S * self._bytes_per_s:
                        self._has_room.set()
                if self._closing and not self._inbox:
                    self._vad.append(self._resampler.process(np.zeros(0, np.float32), final=True))
                    while self._vad.ready:
                        await self._engine.vad_step(self._vad)
                        self._handle(self._vad.take_events())
                    self._handle(self._vad.flush())
                    return
        finally:
            self._engine.open_streams.discard(self)
            self._has_room.set()
            self._outbox.put_nowait(None)

    def _handle(self, events: list[VadEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._utt_start = event.start_s
                self._last_interim_at = event.start_s
            elif isinstance(event, SpeechPaused):
                self._speculation = (event.end_s, self._submit(_FINAL, event.audio))
            elif isinstance(event, SpeechResumed):
                self._drop_speculation()
            elif isinstance(event, UtteranceEnded):
                future = None
                if self._speculation and abs(self._speculation[0] - event.end_s) < 1e-6:
                    future = self._speculation[1]
                    self._speculation = None
                self._drop_speculation()
                if future is None:
                    future = self._submit(_FINAL, event.audio)
                self._queue_final(self._index, event, future)
                self._index += 1

    def _submit(self, priority: int, audio: np.ndarray) -> asyncio.Future[Recognition]:
        return self._engine.submit(priority, audio, self._recognizer, self._language, self._words)

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation[1].cancel()
            self._speculation = None

    def _queue_final(self, index: int, ended: UtteranceEnded, future: asyncio.Future[Recognition]) -> None:
        def to_transcript(done: asyncio.Future[Recognition]) -> Transcript | None:
            if done.cancelled():
                return None
            if done.exception() is not None:
                log.error("recognition failed for utterance %d", index, exc_info=done.exception())
                return None
            return self._transcript(index, ended.start_s, ended.end_s, done.result(), final=True)

        out: asyncio.Future[Transcript | None] = asyncio.get_running_loop().create_future()

        def settle(done: asyncio.Future[Recognition]) -> None:
            if not out.done():
                out.set_result(to_transcript(done))

        future.add_done_callback(settle)
        self._pending_finals += 1
        self._outbox.put_nowait(out)

    def _maybe_interim(self) -> None:
        if not self._interim or self._interim_busy:
            return
        current = self._vad.current()
        if current is None:
            return
        start_s, audio = current
        now_s = start_s + len(audio) / 16000
        if now_s - self._last_interim_at < self._interim_every:
            return
        self._last_interim_at = now_s
        self._interim_busy = True
        index = self._index
        future = self._submit(_INTERIM, audio)

        def deliver(done: asyncio.Future[Recognition]) -> None:
            self._interim_busy = False
            if (done.cancelled() or done.exception() is not None or index != self._index
                    or self._pending_finals):
                return  # a final is due first (or supersedes this): keep results in order
            result = done.result()
            if result.text:
                self._results.put_nowait(self._transcript(index, start_s, now_s, result, final=False))

        future.add_done_callback(deliver)

    def _transcript(self, index: int, start_s: float, end_s: float, result: Recognition,
                    final: bool) -> Transcript:
        words = tuple(type(w)(w.text, round(start_s + w.start_s, 3), round(start_s + w.end_s, 3),
                              w.probability) for w in result.words)
        return Transcript(index=index, text=result.text, start_s=round(start_s, 3),
                          end_s=round(end_s, 3), is_final=final, confidence=round(result.confidence, 3),
                          language=result.language, words=words, emitted_at=time.monotonic(),
                          compute_s=result.compute_s)

    async def _emit(self) -> None:
        """Publish finals in utterance order (recognition may finish out of order)."""
        try:
            while True:
                pending = await self._outbox.get()
                if pending is None:
                    return
                transcript = await pending
                self._pending_finals -= 1
                if transcript is not None and transcript.text:
                    self._results.put_nowait(transcript)
        finally:
            self._results.put_nowait(None)
