"""Container audio on `/v1/stream` (`WEBM_OPUS`): the bytes of one WebM/Opus file arrive in
`audio_data` messages split at arbitrary byte boundaries (a browser's `MediaRecorder`
chunks), are decoded as they arrive, and reach the call as 16 kHz LINEAR16.

    feed = ContainerFeed(call.feed, max_bytes, name, on_error)
    feed.append(payload) ...     # on the event loop, as messages arrive
    await feed.finish()          # end of audio: waits until everything decodable reached the call
    await feed.aclose()          # give up (the session is ending without finalising)

The decoding itself is `app.progressive.container` (the same incremental PyAV decoder as
`/v1/progressive`), on a thread of its own that blocks for bytes. Each decoded block goes to
the call with `run_coroutine_threadsafe(call.feed(...))`, so the decoder waits while the
engine is behind, exactly as for a LINEAR16 client. A file that cannot be decoded calls
`on_error` (on the event loop) as soon as the decoder gives up; later bytes are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from app.audiofile import AudioFileError
from app.pipeline.types import AudioFormat, Encoding
from app.progressive.container import ChunkedFile, FileTooLarge, decode

RATE = 16000
FORMAT = AudioFormat(Encoding.LINEAR16, RATE)  # what the call is started with
BLOCK_S = 0.1  # the decoder hands over at least this often while bytes keep coming

__all__ = ["FORMAT", "AudioFileError", "ContainerFeed", "FileTooLarge"]  # what stream_api needs


class ContainerFeed:
    """One session's container: bytes in on the event loop, PCM out to `feed` in order."""

    def __init__(self, feed: Callable[[bytes], Coroutine[Any, Any, None]], max_bytes: int, name: str,
                 on_error: Callable[[AudioFileError], None]) -> None:
        self._feed = feed
        self._on_error = on_error
        self._file = ChunkedFile(max_bytes)
        self._loop = asyncio.get_running_loop()
        self._decoded: asyncio.Future[None] = self._loop.create_future()
        threading.Thread(target=self._work, name=f"decode-{name}", daemon=True).start()

    def append(self, payload: bytes) -> None:
        """More bytes of the file (ignored once decoding has stopped); FileTooLarge."""
        if not self._file.ended and not self._decoded.done():
            self._file.append(payload)

    async def finish(self) -> None:
        """No more bytes: wait until the rest is decoded and fed (or decoding has failed)."""
        self._file.end()
        with contextlib.suppress(Exception):
            await asyncio.shield(self._decoded)

    async def aclose(self) -> None:
        """Stop decoding; what was not yet fed is dropped."""
        self._file.abort()
        with contextlib.suppress(Exception):
            await asyncio.shield(self._decoded)

    def _work(self) -> None:
        error: BaseException | None = None
        try:
            decode(self._file, RATE, self._on_pcm, block_s=BLOCK_S)
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop may be gone (shutdown)
            self._loop.call_soon_threadsafe(self._settle, error)

    def _on_pcm(self, block: np.ndarray) -> None:
        if self._file.aborted:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._feed(block.astype("<i2").tobytes()), self._loop).result()
        except Exception:
            self._file.abort()  # the call no longer takes audio: stop decoding

    def _settle(self, error: BaseException | None) -> None:
        if self._decoded.done():
            return
        self._decoded.set_result(None)
        if isinstance(error, AudioFileError) and not self._file.aborted:
            self._on_error(error)
        elif error is not None and not isinstance(error, AudioFileError):
            self._on_error(AudioFileError(f"cannot decode audio ({type(error).__name__}: {error})"))
