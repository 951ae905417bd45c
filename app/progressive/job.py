"""One progressive transcription: a file arriving in chunks, decoded and transcribed as it
arrives, on the same engine as live calls, as fast as the engine goes.

    job = ProgressiveJob(id, config, engine, analysis, max_bytes)
    await job.start()
    job.append(offset, chunk)      # any size, at any byte boundary; resent bytes are skipped
    job.end()                      # the file is complete: finish, then speakers and topics
    await job.wait(timeout_s)      # until something changes
    job.snapshot(since=0)          # status, progress, segments (the wire shape)

The decoder runs on a thread of its own and feeds the engine stream with
`run_coroutine_threadsafe(stream.feed(...))`, so it waits while the engine is busy: memory
stays bounded by the file's bytes, not by its decoded audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from app.audiofile import AudioFileError
from app.pipeline.types import AudioFormat, Encoding, Transcript
from app.progressive.container import ChunkedFile, decode

if TYPE_CHECKING:
    from app.analysis import Analysis, Segment
    from app.pipeline.engine import SpeechEngine

log = logging.getLogger("hearsay.progressive")

RATE = 16000


class Status(StrEnum):
    RECEIVING = "receiving"  # chunks are welcome; what arrived is being transcribed
    FINISHING = "finishing"  # the file is complete; the last of it (and speakers, topics) in progress
    DONE = "done"
    FAILED = "failed"


class OffsetMismatch(Exception):
    """A chunk that does not continue the file: `expected` is the offset to send next."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"the next chunk must start at byte {expected}")
        self.expected = expected


@dataclass(frozen=True, slots=True)
class JobConfig:
    """A validated progressive config (app.ingress.progressive_protocol)."""

    model: str | None = None
    language: str | None = None
    diarize: bool = False
    speakers: int | None = None  # the number of speakers, when known
    topics: bool = False
    return_segments: bool = True
    vocabulary: str | None = None


class ProgressiveJob:
    """One file's transcription (see the module doc)."""

    def __init__(self, job_id: str, config: JobConfig, engine: SpeechEngine, analysis: Analysis | None,
                 max_bytes: int) -> None:
        self.id = job_id
        self.config = config
        self.status = Status.RECEIVING
        self.error: tuple[str, str] | None = None  # (code, message) when FAILED
        self.created_at = self.touched_at = time.monotonic()
        self.finished_at: float | None = None
        self._engine = engine
        self._analysis = analysis
        self._file = ChunkedFile(max_bytes)
        self._finals: list[Transcript] = []
        self._segments: list[Segment] | None = None  # the labelled segments, once analysed
        self._topics: list[tuple[str, float]] = []
        self._pcm: list[np.ndarray] = []  # kept for the speaker analysis only
        self._decoded_samples = 0
        self._decode_began: float | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the engine stream (raises its errors: unknown model, language) and start."""
        stream = self._engine.stream(AudioFormat(Encoding.LINEAR16, RATE), language=self.config.language,
                                     model=self.config.model, interim_results=False,
                                     word_timestamps=self.config.diarize, prompt=self.config.vocabulary)
        self._task = asyncio.create_task(self._run(stream), name=f"progressive-{self.id}")

    # -- input --------------------------------------------------------------------------------

    @property
    def received_bytes(self) -> int:
        return self._file.size

    def append(self, offset: int, chunk: bytes) -> int:
        """Add the part of `chunk` (which starts at byte `offset`) that is new; returns how
        many bytes were new. OffsetMismatch if it would leave a hole; FileTooLarge."""
        self.touched_at = time.monotonic()
        if self.status is not Status.RECEIVING:
            return 0
        have = self._file.size
        if offset > have:
            raise OffsetMismatch(have)
        fresh = chunk[have - offset:]
        if fresh:
            self._file.append(fresh)
        return len(fresh)

    def end(self) -> None:
        """The file is complete."""
        self.touched_at = time.monotonic()
        if self.status is Status.RECEIVING:
            self.status = Status.FINISHING
            self._file.end()
            self._notify()

    async def aclose(self) -> None:
        """Abandon the job (expiry, DELETE, shutdown)."""
        self._file.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, timeout_s: float) -> None:
        """Wait until something changes (a segment, the status), at most `timeout_s`."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    @property
    def finished(self) -> bool:
        return self.status in (Status.DONE, Status.FAILED)

    # -- work ---------------------------------------------------------------------------------

    async def _run(self, stream: Any) -> None:
        loop = asyncio.get_running_loop()
        collector = asyncio.create_task(self._collect(stream))
        decoded: asyncio.Future[None] = loop.create_future()

        def on_pcm(block: np.ndarray) -> None:
            asyncio.run_coroutine_threadsafe(self._take(stream, block), loop).result()

        def work() -> None:
            error: BaseException | None = None
            try:
                decode(self._file, RATE, on_pcm)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be gone (shutdown)
                loop.call_soon_threadsafe(_settle, decoded, error)

        threading.Thread(target=work, name=f"decode-{self.id}", daemon=True).start()
        try:
            await decoded
            await stream.finish()
            await collector
            await self._analyse()
            self.status = Status.DONE
        except AudioFileError as exc:
            self._fail("invalid_audio", str(exc))
        except asyncio.CancelledError:
            self._file.abort()
            raise
        except Exception as exc:
            log.exception("progressive job %s failed", self.id)
            self._fail("internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            if not collector.done():
                await stream.aclose()
                collector.cancel()
            self.finished_at = time.monotonic()
            self._pcm = []
            self._notify()

    async def _take(self, stream: Any, block: np.ndarray) -> None:
        if self._decode_began is None:
            self._decode_began = time.monotonic()
        pcm = block.astype("<i2")
        if self.config.diarize:
            self._pcm.append(pcm)
        self._decoded_samples += len(pcm)
        await stream.feed(pcm.tobytes())

    async def _collect(self, stream: Any) -> None:
        async for result in stream.results():
            if isinstance(result, Transcript) and result.is_final:
                self._finals.append(result)
                self._notify()

    async def _analyse(self) -> None:
        if self._analysis is None or not (self.config.diarize or self.config.topics):
            return
        if self.config.diarize and self._finals:
            audio = np.concatenate(self._pcm) if self._pcm else np.zeros(0, np.int16)
            self._segments = await self._analysis.diarize(audio, RATE, self._finals, self.config.speakers)
        if self.config.topics:
            self._topics = await self._analysis.topics(self.text)

    def _fail(self, code: str, message: str) -> None:
        self.status = Status.FAILED
        self.error = (code, message)
        self._file.abort()
        log.info("progressive job %s failed: %s", self.id, message)

    def _notify(self) -> None:
        self._changed.set()

    # -- what it has ------------------------------------------------------------------------

    @property
    def segments(self) -> list[Segment]:
        from app.analysis import Segment

        if self._segments is not None:
            return self._segments
        return [Segment(i, t.text, t.start_s, t.end_s, t.confidence) for i, t in enumerate(self._finals)]

    @property
    def text(self) -> str:
        return " ".join(t.text for t in self._finals if t.text)

    @property
    def decoded_s(self) -> float:
        return self._decoded_samples / RATE

    def realtime_factor(self) -> float:
        """Seconds of audio decoded and fed per second since decoding began (until done)."""
        if self._decode_began is None:
            return 0.0
        end = self.finished_at or time.monotonic()
        return self.decoded_s / max(end - self._decode_began, 1e-6)

    @property
    def topics(self) -> list[tuple[str, float]]:
        return self._topics


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
