"""One call's pass through the pipeline: audio in, transcripts and speech events out.

    stream = engine.stream(AudioFormat(Encoding.MULAW, 8000))
    await stream.feed(payload)      # or stream.push(payload) from a real-time source
    async for result in stream.results():   # Transcript | SpeechEvent
        ...
    await stream.finish()           # end of audio: the open utterance is finalised

Audio is decoded, resampled to 16 kHz and cut into utterances by the VAD (through the
engine's shared `VadBatcher`); each utterance is recognised on the engine's `AsrScheduler`.
Interims are asked for every `interim_interval_ms` while someone speaks, at most one at a
time. A final is started speculatively when the speaker pauses (`SpeechPaused`), so that by
the time the silence confirms the end of the utterance its text is usually ready; if they go
on talking the guess is withdrawn.

With an end-of-turn model (the engine's `TurnBatcher`), each pause is also scored: the VAD
waits for the verdict (`turn.end_after_s`, from the model's probability and, when it says
"finished", how sure Whisper is that the speculative transcript ends a sentence), which says
how much silence ends the utterance. So
an utterance is the caller's whole turn, and a pause mid-sentence does not split it.

An utterance that starts within `context_gap_s` of the end of one the turn policy was not sure
had finished (its pause was judged unsure or unfinished, or not judged) is decoded after it
(`recognize.Context`: its audio, and its final's text forced as the transcript's start), so a
sentence cut at a long pause is still decoded with what came before; its final waits for the
previous one's, which it would be published after anyway.

`results()` yields, for each utterance `index` (0, 1, ... in stream order):
- `SpeechEvent`s as soon as the VAD decides, never held back: STARTED once the utterance has
  `min_speech_ms` of speech (`at_s` is where its audio begins, the final's `start_s`), PAUSED
  and RESUMED while the speaker pauses and goes on, ENDED when it ends (`at_s` is the final's
  `end_s`). A burst shorter than `min_speech_ms` is discarded by the VAD before any event, so
  every STARTED is followed by exactly one ENDED, and ENDED never comes before STARTED. The
  events of an utterance may come before the final of the previous one (barge-in needs them
  at once).
- interim `Transcript`s of the utterance, between its STARTED and its ENDED;
- its final `Transcript`, after its ENDED and after every earlier utterance's final. A final
  whose text is empty (noise heard as nothing) or whose recognition failed is not emitted, so
  an ENDED may have no final. Its `end_of_turn` is true unless `max_utterance_s` cut the
  speech (the turn goes on in the next utterance).

`results()` ends after `finish()` (every STARTED then has its ENDED), after `aclose()`, or
if processing fails (`finish()` raises the error); the last two abandon the open utterance,
which then gets no ENDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

import numpy as np

from app.pipeline.decode import decode
from app.pipeline.errors import AudioFormatError, StreamClosedError
from app.pipeline.recognize import Context, Recognition, Recognizer
from app.pipeline.resample import Resampler
from app.pipeline.scheduling import AsrScheduler, Priority, TurnBatcher, VadBatcher
from app.pipeline.turn import end_after_s
from app.pipeline.types import (
    AudioFormat,
    Encoding,
    EngineResult,
    SpeechEvent,
    SpeechEventKind,
    Transcript,
)
from app.pipeline.vad import (
    SAMPLE_RATE,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    UtteranceEnded,
    VadEvent,
    VADStream,
)
from app.settings import TurnSettings

log = logging.getLogger(__name__)
JUDGED_LOG = "hearsay.turns"  # one DEBUG record per judged pause (EngineStream._judge)
judged_log = logging.getLogger(JUDGED_LOG)
CONTEXT_GAP_FILL_S = 0.3  # silence put between a context and its utterance, at most
CONTEXT_MAX_S = 10.0  # a longer previous utterance is not decoded again as context


class EngineStream:
    """One call's pass through the pipeline. Made by `SpeechEngine.stream()`; use it from the
    event loop it was made on. See the module doc for what `results()` yields."""

    # Backlog (seconds of audio not yet through the VAD): feed() waits above the first,
    # push() drops above the second.
    FEED_BACKLOG_S = 2.0
    PUSH_BACKLOG_S = 20.0

    def __init__(self, audio: AudioFormat, *, vad: VADStream, vad_batcher: VadBatcher,
                 asr: AsrScheduler, recognizer: Recognizer, language: str | None,
                 interim_interval_s: float, word_timestamps: bool, prompt: str | None = None,
                 turns: TurnBatcher | None = None, turn_settings: TurnSettings | None = None,
                 context_gap_s: float = 0.0) -> None:
        """`interim_interval_s` of 0 asks for no interims; `prompt` is the vocabulary given to
        the recognizer as previous text. `turns` (with `turn_settings`): the end-of-turn model
        that judges each pause; `vad` must then be a turn-mode stream. `context_gap_s`: how
        soon after an utterance the next is decoded after it (0: never; module doc)."""
        self.format = audio
        self._vad = vad
        self._vad_batcher = vad_batcher
        self._asr = asr
        self._recognizer = recognizer
        self._language = None if language in (None, "", "auto") else language
        self._interim_every = interim_interval_s
        self._words = word_timestamps
        self._prompt = prompt
        self._resampler = Resampler(audio.sample_rate, 16000)
        self._inbox: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._bytes_per_s = audio.sample_rate * audio.bytes_per_sample
        self._has_audio = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._closing = False
        self._failed = False  # processing stopped on an unexpected error
        # Finals waiting to be published in utterance order (None: no more utterances).
        self._finals_in_order: asyncio.Queue[asyncio.Future[Transcript | None] | None] = asyncio.Queue()
        self._results: asyncio.Queue[EngineResult | None] = asyncio.Queue()
        self._index = 0  # index of the open (or next) utterance
        self._last_interim_at = 0.0
        self._interim_busy = False
        self._pending_finals = 0
        self._speculation: tuple[float, asyncio.Future[Recognition]] | None = None
        self._turns = turns
        self._turn_settings = turn_settings or TurnSettings()
        self._verdict: asyncio.Task[float] | None = None
        self._ends_after_s: float | None = None  # the last verdict: silence that ends the turn
        self._context_gap_s = context_gap_s
        self._previous: tuple[UtteranceEnded, asyncio.Future[Recognition]] | None = None
        self.received_bytes = 0
        self.dropped_frames = 0
        loop = asyncio.get_running_loop()
        vad_batcher.attach(vad)
        self._worker = loop.create_task(self._process(), name="engine-stream")
        self._emitter = loop.create_task(self._emit(), name="engine-emit")

    # -- input ---------------------------------------------------------------------------
    @property
    def duration_s(self) -> float:
        """Seconds of audio received so far."""
        return self.received_bytes / self._bytes_per_s

    def _check(self, payload: bytes) -> None:
        if self._failed:
            raise StreamClosedError("the stream stopped after an internal error (logged); no more audio is accepted")
        if self._closing:
            raise StreamClosedError("the stream is finished; no more audio is accepted")
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
        """Add audio, waiting while the backlog is full (flow control for fast sources).

        Raises AudioFormatError for a payload that cannot be in the stream's format, and
        StreamClosedError after `finish()` or `aclose()`."""
        self._check(payload)
        await self._has_room.wait()
        self._enqueue(payload)

    def push(self, payload: bytes) -> bool:
        """Add audio without waiting; returns False (and counts a drop) when far behind.
        Raises like `feed()`."""
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
        """Abandon the stream without finalising: `results()` ends at once."""
        self._closing = True
        for task in (self._worker, self._emitter):
            task.cancel()
        for task in (self._worker, self._emitter):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._results.put_nowait(None)

    async def results(self) -> AsyncIterator[EngineResult]:
        """Speech events and transcripts (see the module doc); ends after `finish()` or
        `aclose()`."""
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
                    await self._segment(self._resampler.process(samples))
                    self._maybe_interim()
                    if self._backlog_bytes <= self.FEED_BACKLOG_S * self._bytes_per_s:
                        self._has_room.set()
                if self._closing and not self._inbox:
                    await self._segment(self._resampler.process(np.zeros(0, np.float32), final=True))
                    self._handle(self._vad.flush())
                    return
        except Exception:
            # A bug, not bad audio (that is refused in `_check`): the finals already queued
            # still go out, and the source is told at its next frame instead of feeding a
            # stream that no longer reads.
            log.exception("stream processing failed; the stream takes no more audio")
            self._failed = True
            self._closing = True
        finally:
            if self._verdict is not None:
                self._verdict.cancel()
            self._vad_batcher.detach(self._vad)
            self._has_room.set()
            self._finals_in_order.put_nowait(None)

    async def _segment(self, samples: np.ndarray) -> None:
        self._vad.append(samples)
        while True:
            if self._verdict is not None:
                # The VAD stops at a scored pause until its verdict: live or from a file, the
                # verdict applies to exactly the audio it judged.
                verdict, self._verdict = self._verdict, None
                self._ends_after_s = await verdict
                self._vad.resolve_pause(self._ends_after_s)
            elif self._vad.ready:
                await self._vad_batcher.step(self._vad)
            else:
                return
            self._handle(self._vad.take_events())

    def _handle(self, events: list[VadEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._last_interim_at = event.start_s
                self._announce(SpeechEventKind.STARTED, event.start_s)
            elif isinstance(event, SpeechPaused):
                self._speculation = (event.end_s, self._submit_final(event.start_s, event.audio))
                if self._turns is not None:
                    self._verdict = asyncio.get_running_loop().create_task(
                        self._judge(self._turns, event.audio, self._speculation[1], event.end_s),
                        name="turn-verdict")
                self._announce(SpeechEventKind.PAUSED, event.end_s)
            elif isinstance(event, SpeechResumed):
                self._ends_after_s = None
                self._drop_speculation()
                self._announce(SpeechEventKind.RESUMED, event.at_s)
            elif isinstance(event, UtteranceEnded):
                future = None
                if self._speculation and abs(self._speculation[0] - event.end_s) < 1e-6:
                    future = self._speculation[1]
                    self._speculation = None
                self._drop_speculation()
                if future is None:
                    future = self._submit_final(event.start_s, event.audio)
                self._announce(SpeechEventKind.ENDED, event.end_s)
                self._queue_final(self._index, event, future)
                self._previous = (event, future) if self._is_context(event) else None
                self._ends_after_s = None
                self._index += 1

    async def _judge(self, turns: TurnBatcher, audio: np.ndarray,
                     speculation: asyncio.Future[Recognition], at_s: float) -> float:
        """Seconds of silence that end the turn paused in `audio` (which runs `speech_pad_ms`
        past the end of speech, at `at_s`). Each verdict is logged at DEBUG on `JUDGED_LOG`
        with its inputs (`at_s`, `turn_probability`, `sentence_end` in the record), which is
        how `bench pauses` reads them."""
        s = self._turn_settings
        # The model hears only `probe_trim_ms` after the speech: with more trailing silence
        # it calls mid-sentence pauses finished far more often.
        extra = int((self._vad.settings.speech_pad_ms - s.probe_trim_ms) * SAMPLE_RATE / 1000)
        try:
            probability = await turns.score(audio[: len(audio) - extra])
        except Exception:
            log.exception("end-of-turn model failed; this pause waits unsure_silence_ms")
            return s.unsure_silence_ms / 1000
        heard = None
        if probability >= s.complete_threshold or s.number_silence_ms:
            # Whisper's view (its sentence end, its last word) is needed for a "finished" score
            # and by the number rule; the final needs those words anyway.
            await asyncio.wait([speculation])
            heard = _heard(speculation)
        sentence_end = heard.sentence_end if heard else None
        text = heard.text if heard else None
        judged_log.debug("pause at %.2f s judged: turn model %.3f, sentence end %s, words %r", at_s,
                         probability, sentence_end, text,
                         extra={"at_s": at_s, "turn_probability": probability, "sentence_end": sentence_end})
        return end_after_s(probability, sentence_end, s, self._vad.settings.min_silence_ms / 1000, text)

    def _announce(self, kind: SpeechEventKind, at_s: float) -> None:
        # Straight to the results: a speech event is never held behind a pending final.
        self._results.put_nowait(SpeechEvent(kind, self._index, round(at_s, 3), time.monotonic()))

    def _submit(self, priority: Priority, audio: np.ndarray) -> asyncio.Future[Recognition]:
        return self._asr.submit(priority, audio, self._recognizer, self._language, self._words, self._prompt)

    def _is_context(self, ended: UtteranceEnded) -> bool:
        """Whether `ended`, which just ended, is context for the next utterance: only with
        `context_gap_s`, at most `CONTEXT_MAX_S` long, and only a turn the policy was not sure
        had ended (a finished sentence is not, even when the caller goes on at once)."""
        quickest = self._vad.settings.min_silence_ms / 1000
        finished = self._ends_after_s is not None and self._ends_after_s <= quickest
        return bool(self._context_gap_s) and len(ended.audio) <= CONTEXT_MAX_S * SAMPLE_RATE and not finished

    def _submit_final(self, start_s: float, audio: np.ndarray) -> asyncio.Future[Recognition]:
        """The final's recognition of the utterance starting at `start_s`: in the context of the
        previous utterance when that one is kept as context (its turn end was not sure) and
        ended less than `context_gap_s` before (module doc)."""
        previous = self._previous
        if previous is None or start_s - previous[0].end_s > self._context_gap_s:
            return self._submit(Priority.FINAL, audio)
        return asyncio.get_running_loop().create_task(self._after(previous, start_s, audio), name="final-in-context")

    async def _after(self, previous: tuple[UtteranceEnded, asyncio.Future[Recognition]], start_s: float,
                     audio: np.ndarray) -> Recognition:
        ended, recognition = previous
        # Waited on, never awaited: withdrawing this final must not cancel the previous one.
        await asyncio.wait([recognition])
        context = None
        if not recognition.cancelled() and recognition.exception() is None and recognition.result().text:
            # The previous utterance's audio up to where this one's starts (their edges may
            # overlap by the VAD's padding), then the silence between them, at most CONTEXT_GAP_FILL_S.
            before = ended.audio[: max(0, round((start_s - ended.start_s) * SAMPLE_RATE))]
            pause = np.zeros(int(min(max(0.0, start_s - ended.end_s), CONTEXT_GAP_FILL_S) * SAMPLE_RATE), np.float32)
            context = Context(np.concatenate([before, pause]), recognition.result().text)
        return await self._asr.submit(Priority.FINAL, audio, self._recognizer, self._language, self._words,
                                      self._prompt, context)

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
            return self._transcript(index, ended.start_s, ended.end_s, done.result(), final=True,
                                    end_of_turn=not ended.forced, decided_s=ended.decided_s)

        out: asyncio.Future[Transcript | None] = asyncio.get_running_loop().create_future()

        def settle(done: asyncio.Future[Recognition]) -> None:
            if not out.done():
                out.set_result(to_transcript(done))

        future.add_done_callback(settle)
        self._pending_finals += 1
        self._finals_in_order.put_nowait(out)

    def _maybe_interim(self) -> None:
        if not self._interim_every or self._interim_busy:
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
        future = self._submit(Priority.INTERIM, audio)

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
                    final: bool, end_of_turn: bool = False, decided_s: float = 0.0) -> Transcript:
        words = tuple(type(w)(w.text, round(start_s + w.start_s, 3), round(start_s + w.end_s, 3),
                              w.probability) for w in result.words)
        return Transcript(index=index, text=result.text, start_s=round(start_s, 3),
                          end_s=round(end_s, 3), is_final=final, confidence=round(result.confidence, 3),
                          language=result.language, words=words, emitted_at=time.monotonic(),
                          compute_s=result.compute_s, end_of_turn=end_of_turn, decided_s=round(decided_s, 3))

    async def _emit(self) -> None:
        """Publish finals in utterance order (recognition may finish out of order)."""
        try:
            while True:
                pending = await self._finals_in_order.get()
                if pending is None:
                    return
                transcript = await pending
                self._pending_finals -= 1
                if transcript is not None and transcript.text:
                    self._results.put_nowait(transcript)
        finally:
            self._results.put_nowait(None)


def _heard(recognition: asyncio.Future[Recognition]) -> Recognition | None:
    """A finished recognition's result, or None when it failed or was dropped."""
    if recognition.cancelled() or recognition.exception() is not None:
        return None
    return recognition.result()
