"""A file that arrives in chunks, decoded while it arrives: any container PyAV (FFmpeg)
reads (mp3, wav, ogg, webm, m4a, ...), split at arbitrary byte boundaries.

    file = ChunkedFile(max_bytes)
    file.append(chunk) ... file.end()          # on the event loop, as chunks arrive
    decode(file, 16000, on_pcm)                # on a thread of its own: blocks for data

FFmpeg reads through a file object whose `read` waits until the bytes are there (or the
file has ended), so decoding runs as far as the bytes received allow and then waits. The
object is offered without `seek` (a stream, as a pipe would be): FFmpeg then never asks for
the file's size, which it would otherwise need to wait for (Ogg seeks to the end for the
duration; a size taken from the bytes so far breaks MP4). The one format that must seek is
an MP4/M4A whose index (`moov`) comes after its data (`mdat`): nothing in it can be decoded
before the index anyway, so such a file is opened seekable once it has all arrived. Bytes
already read are dropped from memory as a stream is decoded.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable

import av
import numpy as np

from app.audiofile import AudioFileError

_KEEP_BEHIND = 1 << 20  # bytes kept behind a stream's read position (FFmpeg's own buffer is smaller)


class FileTooLarge(Exception):
    """More bytes than the file may have."""


class ChunkedFile:
    """The bytes of one file, appended on one thread and read on another."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data = bytearray()
        self._base = 0  # offset of _data[0] in the file (bytes before it were dropped)
        self._size = 0
        self._ended = False
        self._aborted = False
        self._wanted: int | None = None  # where a waiting reader wants to read
        self._wants_end = False  # a reader is waiting for the end of the file
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._size

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def aborted(self) -> bool:
        return self._aborted

    @property
    def starved(self) -> bool:
        """Whether the reader is waiting for bytes not yet received (it has decoded all it can)."""
        with self._cond:
            if self._ended:
                return False
            return self._wants_end or (self._wanted is not None and self._wanted >= self._size)

    def append(self, chunk: bytes) -> None:
        """Add bytes at the end; FileTooLarge past `max_bytes`, ValueError after `end()`."""
        with self._cond:
            if self._ended:
                raise ValueError("the file has ended")
            if self._size + len(chunk) > self.max_bytes:
                raise FileTooLarge(f"the file is over the limit of {self.max_bytes} bytes")
            self._data += chunk
            self._size += len(chunk)
            self._cond.notify_all()

    def end(self) -> None:
        """No more bytes: readers get the rest, then end of file."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Give up: every read returns end of file at once."""
        with self._cond:
            self._aborted = self._ended = True
            self._data = bytearray()
            self._cond.notify_all()

    def available(self, pos: int) -> bool:
        """Whether a read at `pos` would return at once."""
        with self._cond:
            return self._aborted or self._ended or self._size > pos

    def read_at(self, pos: int, size: int) -> bytes:
        """Up to `size` bytes from `pos`, waiting until some are there; b"" at the end."""
        with self._cond:
            self._wanted = pos
            self._cond.wait_for(lambda: self._aborted or self._ended or self._size > pos)
            self._wanted = None
            if self._aborted or pos >= self._size:
                return b""
            if pos < self._base:
                raise OSError(f"bytes at {pos} were already dropped")
            start = pos - self._base
            return bytes(self._data[start:start + size])

    def wait_ended(self) -> int:
        """Wait for the end of the file; its size."""
        with self._cond:
            self._wants_end = True
            self._cond.wait_for(lambda: self._ended)
            self._wants_end = False
            return self._size

    def drop_before(self, pos: int) -> None:
        """Forget the bytes before `pos` (a stream never reads back)."""
        with self._cond:
            cut = min(pos, self._size) - self._base
            if cut > 0:
                del self._data[:cut]
                self._base += cut


class _Stream:
    """The file as a forward-only stream for PyAV (no `seek`). `before_wait` runs when a read
    is about to wait for bytes (the decoder hands over what it holds)."""

    def __init__(self, file: ChunkedFile, before_wait: Callable[[], None]) -> None:
        self._file = file
        self._pos = 0
        self._before_wait = before_wait

    def read(self, size: int) -> bytes:
        if not self._file.available(self._pos):
            self._before_wait()
        data = self._file.read_at(self._pos, size)
        self._pos += len(data)
        if self._pos > 2 * _KEEP_BEHIND:
            self._file.drop_before(self._pos - _KEEP_BEHIND)
        return data


class _Whole:
    """The whole file, seekable (used only once it has all arrived)."""

    def __init__(self, file: ChunkedFile, before_wait: Callable[[], None]) -> None:
        self._file = file
        self._pos = 0

    def read(self, size: int) -> bytes:
        data = self._file.read_at(self._pos, size)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            self._pos = self._file.wait_ended() + offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = offset
        return self._pos

    def tell(self) -> int:
        return self._pos


def index_at_end(file: ChunkedFile) -> bool:
    """Whether `file` is an MP4/M4A whose `moov` box comes after its `mdat` (waits for the
    top-level box headers it needs)."""
    if file.read_at(4, 4)[:4] != b"ftyp":
        return False
    pos = 0
    while True:
        head = b""
        while len(head) < 16 and (more := file.read_at(pos + len(head), 16 - len(head))):
            head += more
        if len(head) < 8:
            return True  # ended without a moov: let FFmpeg say what is wrong
        size, kind = struct.unpack(">I4s", head[:8])
        if size == 1 and len(head) >= 16:
            size = struct.unpack(">Q", head[8:16])[0]
        if kind == b"moov":
            return False
        if kind == b"mdat" or size < 8:
            return True
        pos += size


def decode(file: ChunkedFile, sample_rate: int, on_pcm: Callable[[np.ndarray], None],
           block_s: float = 1.0) -> None:
    """Decode the file's first audio stream as it arrives, handing mono int16 blocks of about
    `block_s` at `sample_rate` to `on_pcm` (on this thread; a shorter block when the decoder
    has to wait for bytes, so nothing decodable is held back). Blocking; AudioFileError if it
    cannot."""
    decoded_any = False
    pending: list[np.ndarray] = []
    size = 0
    block = int(sample_rate * block_s)

    def flush() -> None:
        nonlocal pending, size
        if pending:
            on_pcm(np.concatenate(pending))
            pending, size = [], 0

    source: _Stream | _Whole = _Whole(file, flush) if index_at_end(file) else _Stream(file, flush)

    try:
        with av.open(source, mode="r") as container:
            if not container.streams.audio:
                raise AudioFileError("no audio stream in this file")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    decoded_any = True
                    pending.append(out.to_ndarray().reshape(-1))
                    size += len(pending[-1])
                    if size >= block:  # a block a second: each hand-over crosses to the event loop
                        flush()
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
            flush()
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise AudioFileError(f"cannot decode audio ({exc})") from None
    if not decoded_any and not file.aborted:
        raise AudioFileError("the file holds no audio samples")
