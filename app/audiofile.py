"""Reading audio files with PyAV, block by block, for `transcribe` and the benchmarks.

Any container and codec PyAV (FFmpeg) reads comes out as mono 16-bit PCM at the rate asked
for, in blocks, so a long file streams through the pipeline without being loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


class AudioFileError(Exception):
    """A file that is missing or holds no readable audio; the message says which."""


@dataclass(frozen=True, slots=True)
class AudioFileInfo:
    path: Path
    duration_s: float | None  # from the container; None when it does not say


def probe(path: str | Path) -> AudioFileInfo:
    """Check that `path` opens and has an audio stream; return its duration if known."""
    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"{p}: no such file")
    if not p.is_file():
        raise AudioFileError(f"{p}: not a file")
    try:
        with av.open(str(p)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{p}: no audio stream in this file")
            stream = container.streams.audio[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            return AudioFileInfo(p, duration)
    except AudioFileError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioFileError(f"{p}: cannot read audio ({exc})") from None


def iter_pcm16(path: str | Path, sample_rate: int, block_s: float = 1.0) -> Iterator[np.ndarray]:
    """Yield the file's audio as mono int16 blocks of about `block_s` at `sample_rate`."""
    p = Path(path)
    block = int(sample_rate * block_s)
    pending: list[np.ndarray] = []
    size = 0
    decoded_any = False
    try:
        with av.open(str(p)) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    decoded_any = True
                    pending.append(samples)
                    size += len(samples)
                    if size >= block:
                        yield np.concatenate(pending)
                        pending, size = [], 0
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
                decoded_any = True
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise AudioFileError(f"{p}: cannot decode audio ({exc})") from None
    if not decoded_any:
        raise AudioFileError(f"{p}: the file holds no audio samples")
    if pending:
        yield np.concatenate(pending)
