"""The schedulers every stream of a `SpeechEngine` shares, so the machine does useful work.

- `VadBatcher`: streams with whole 32 ms chunks wait on one batcher, which runs all of them
  through Silero as one batch on the VAD thread (32 streams cost about what 4 do alone).
- `TurnBatcher`: the end-of-turn model's questions (has this caller finished?) from all
  streams, taken together to one thread of their own (the model answers them one by one).
- `AsrScheduler`: a priority queue in front of `[asr] workers` threads. Finals go before
  interims (`Priority`), and jobs waiting together run as one batch (calls that stop talking
  at the same moment cost little more than one). Only the first worker runs interims: a
  batch cannot be interrupted, so with two or more workers a final never waits for interims
  to finish.

The engine makes one of each and owns them: `start()` binds them to the running event loop
(again when a later stream runs on another loop), `aclose()` stops their tasks and `close()`
their threads. Their other methods are what `EngineStream` uses; callers of the engine never
see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from app.pipeline.recognize import Context, Recognition, Recognizer
from app.pipeline.turn import SmartTurn
from app.pipeline.vad import SileroVAD, VADStream

log = logging.getLogger(__name__)

VAD_STEPS_PER_BATCH = 16  # chunks a stream may have classified per `VadBatcher.step`
_VAD_GATHER_S = 0.01  # how long the VAD batcher waits for more streams to join a batch
_MAX_BATCH = 4  # utterances recognised in one pass
_MAX_TURN_BATCH = 8  # pauses taken to the end-of-turn model's thread in one call


class Priority(IntEnum):
    """Order of recognition jobs: lower goes first."""

    FINAL = 0  # the text of an ended (or, speculatively, paused) utterance
    INTERIM = 1  # the text so far of an utterance still being spoken


class _OneThreadBatcher:
    """What the VAD and end-of-turn batchers share: one model thread, and one task on the
    event loop (`_run`, the subclass's) that gathers waiting requests into batches for it.

    `start()` binds the task to the running loop, again when a later stream runs on another
    loop (whatever waited on the old loop is dead with it: `_reset`); `aclose()` stops the task,
    `close()` the thread."""

    _name = "batcher"

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._name)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the batcher on the running loop, unless it already runs there."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._reset()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"{self._name}-batcher")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def close(self) -> None:
        """Stop the model's thread (blocking); after `aclose()`."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _reset(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        raise NotImplementedError


class VadBatcher(_OneThreadBatcher):
    """Runs the next chunks of every waiting stream through Silero as one batch, on one thread.

    A stream is `attach`ed while its audio flows and `detach`ed when it ends; `step` classifies
    a stream's ready chunks. A batch waits a little for the attached streams that have not
    asked yet, since one batch of many costs about what one stream costs alone.
    """

    _name = "vad"

    def __init__(self, vad: SileroVAD) -> None:
        super().__init__()
        self._vad = vad
        self._attached: set[VADStream] = set()
        self._waiting: list[tuple[VADStream, asyncio.Future[None]]] = []

    def _reset(self) -> None:
        self._attached.clear()
        self._waiting = []

    def attach(self, stream: VADStream) -> None:
        """Count `stream` among those whose audio still flows (so batches wait for it)."""
        self._attached.add(stream)

    def detach(self, stream: VADStream) -> None:
        """`stream`'s audio has ended: batches no longer wait for it."""
        self._attached.discard(stream)

    async def step(self, stream: VADStream) -> None:
        """Classify up to `VAD_STEPS_PER_BATCH` of the stream's ready chunks, in one batch with
        the other waiting streams'; the stream's events are then ready in `take_events()`.
        Raises what the batch raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((stream, future))
        self._wake.set()
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if len(self._waiting) < len(self._attached):
                # Let other streams' chunks join: one batch of many costs about what one
                # costs. A lone stream (a file being transcribed) never waits.
                await asyncio.sleep(_VAD_GATHER_S)
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            if not batch:
                continue
            try:
                await loop.run_in_executor(self._pool, self._infer, [s for s, _ in batch])
            except Exception as exc:  # a broken batch fails its streams, not the batcher
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _infer(self, streams: list[VADStream]) -> None:
        active = streams
        for _ in range(VAD_STEPS_PER_BATCH):
            active = [s for s in active if s.ready]
            if not active:
                return
            self._vad.infer(active)


class TurnBatcher(_OneThreadBatcher):
    """Scores pauses with the end-of-turn model on one thread, those waiting together in one
    call (one thread keeps it off the cores Whisper uses, and taking them together saves a
    queue hop per pause; the model still scores them one by one, app/pipeline/turn.py)."""

    _name = "turn"

    def __init__(self, model: SmartTurn) -> None:
        super().__init__()
        self._model = model
        self._waiting: list[tuple[np.ndarray, asyncio.Future[float]]] = []

    def _reset(self) -> None:
        self._waiting = []

    async def score(self, audio: np.ndarray) -> float:
        """The probability that the speaker of this turn (16 kHz audio up to just after the
        end of speech) has finished. Raises what the model raised."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append((audio, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch = [item for item in self._waiting[:_MAX_TURN_BATCH] if not item[1].done()]
                del self._waiting[:_MAX_TURN_BATCH]
                if not batch:
                    continue
                try:
                    probs = await loop.run_in_executor(self._pool, self._model.score, [a for a, _ in batch])
                except Exception as exc:  # a broken batch fails its streams, not the batcher
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), prob in zip(batch, probs, strict=True):
                    if not fut.done():
                        fut.set_result(prob)


@dataclass(order=True)
class _Job:
    priority: Priority
    seq: int  # first come, first served within a priority
    audio: np.ndarray = field(compare=False)
    recognizer: Recognizer = field(compare=False)
    language: str | None = field(compare=False)
    words: bool = field(compare=False)
    future: asyncio.Future[Recognition] = field(compare=False)
    prompt: str | None = field(default=None, compare=False)  # the stream's vocabulary
    context: Context | None = field(default=None, compare=False)  # what was said just before


class _JobQueue:
    """Queued jobs, lowest (priority, seq) first; a worker may ask for finals only."""

    def __init__(self) -> None:
        self._heap: list[_Job] = []
        self._arrived = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, job: _Job) -> None:
        heapq.heappush(self._heap, job)
        self._arrived.set()

    def take(self, finals_only: bool) -> _Job | None:
        """The first job still wanted (withdrawn ones are dropped), or None."""
        while self._heap and self._heap[0].future.done():
            heapq.heappop(self._heap)
        if self._heap and (not finals_only or self._heap[0].priority is Priority.FINAL):
            return heapq.heappop(self._heap)
        return None

    async def get(self, finals_only: bool) -> _Job:
        while (job := self.take(finals_only)) is None:
            self._arrived.clear()
            await self._arrived.wait()
        return job


class AsrScheduler:
    """Recognition jobs of all streams, by priority, on `workers` threads, batched where they
    can be. Worker 0 takes any job; the others take finals only (module doc)."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="asr")
        self._jobs = _JobQueue()
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Run the workers on the running loop, unless they already run there."""
        loop = asyncio.get_running_loop()
        if self._tasks and self._tasks[0].get_loop() is loop and not any(t.done() for t in self._tasks):
            return
        self._jobs = _JobQueue()
        self._tasks = [loop.create_task(self._work(finals_only=i > 0), name=f"asr-{i}")
                       for i in range(self._workers)]

    def submit(self, priority: Priority, audio: np.ndarray, recognizer: Recognizer,
               language: str | None, words: bool, prompt: str | None = None,
               context: Context | None = None) -> asyncio.Future[Recognition]:
        """Queue one utterance (16 kHz) for recognition, decoded after `context` if given.
        Cancelling the future withdraws the job if it has not started (a job that has started
        still runs, its result unused).
        Finals come back with Whisper's `sentence_end` (the end-of-turn policy reads it)."""
        future: asyncio.Future[Recognition] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Job(priority, next(self._seq), audio, recognizer, language, words, future, prompt, context))
        return future

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def close(self) -> None:
        """Stop the recognition threads (blocking); after `aclose()`."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _work(self, finals_only: bool) -> None:
        while True:
            job = await self._jobs.get(finals_only)
            await self._run([job, *self._take_batchable(job)])

    async def _run(self, batch: list[_Job]) -> None:
        """Decode `batch` (jobs `_take_batchable` grouped) and settle each job's future. One
        utterance's failure must not cost the others their finals (other calls' among them):
        a batch that fails is decoded again one job at a time, and only the failing one fails."""
        job = batch[0]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(
                job.recognizer.transcribe_batch, [j.audio for j in batch], job.language, job.words,
                job.prompt, sentence_end=job.priority is Priority.FINAL, contexts=[j.context for j in batch]))
        except Exception as exc:
            if len(batch) == 1:
                if not job.future.done():
                    job.future.set_exception(exc)
                return
            log.exception("a recognition batch of %d failed; decoding each alone", len(batch))
            for j in batch:
                await self._run([j])
            return
        for j, result in zip(batch, results, strict=True):
            if not j.future.done():
                j.future.set_result(result)

    def _take_batchable(self, first: _Job) -> list[_Job]:
        """Queued jobs that can run in one batch with `first` (same priority and model)."""
        taken: list[_Job] = []
        other: list[_Job] = []
        # Take only this worker's share of the queue: a batch costs about three quarters of
        # its utterances one by one, so two workers each doing half beat one doing all.
        share = -(-(len(self._jobs) + 1) // self._workers)
        while len(taken) < min(_MAX_BATCH, share) - 1:
            job = self._jobs.take(finals_only=first.priority is Priority.FINAL)
            if job is None:
                break
            if job.priority != first.priority:
                other.append(job)  # the queue is ordered: nothing of first's priority is left
                break
            same = ((job.recognizer, job.language, job.words, job.prompt)
                    == (first.recognizer, first.language, first.words, first.prompt))
            (taken if same else other).append(job)
        for job in other:
            self._jobs.put(job)
        return taken
