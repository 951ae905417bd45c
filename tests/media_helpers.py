"""Audio files made in memory for the progressive tests: clips of the speech directory joined
into one recording, encoded into any container PyAV writes. Not a test module itself."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import av
import numpy as np
from speech import load

# container format -> (codec, encoder sample rate, muxer options)
FORMATS = {
    "mp3": ("mp3", "libmp3lame", 16000, {}),
    "wav": ("wav", "pcm_s16le", 16000, {}),
    "ogg": ("ogg", "libopus", 48000, {}),
    "webm": ("webm", "libopus", 48000, {}),
    "m4a": ("ipod", "aac", 16000, {"movflags": "faststart"}),
    "m4a-index-at-end": ("ipod", "aac", 16000, {}),
}


@dataclass(frozen=True)
class Placed:
    """Where a clip sits in a joined recording."""

    clip_id: str
    start_s: float
    end_s: float


def join(clip_ids: list[str], gap_s: float = 1.0) -> tuple[np.ndarray, list[Placed]]:
    """The clips (16 kHz) one after another with `gap_s` of silence after each, as int16."""
    parts: list[np.ndarray] = []
    placed = []
    at = 0
    for clip_id in clip_ids:
        samples = load(clip_id)
        placed.append(Placed(clip_id, at / 16000, (at + len(samples)) / 16000))
        parts += [samples, np.zeros(int(gap_s * 16000), np.float32)]
        at += len(samples) + int(gap_s * 16000)
    return (np.concatenate(parts) * 32767).astype(np.int16), placed


def encode(pcm: np.ndarray, kind: str) -> bytes:
    """16 kHz mono int16 samples as a file of `kind` (a key of FORMATS)."""
    container_format, codec, rate, options = FORMATS[kind]
    # A real file: MP4's faststart rewrites the file to move its index to the front.
    with tempfile.NamedTemporaryFile(suffix="." + container_format) as out:
        _write(out.name, pcm, container_format, codec, rate, options)
        return out.read()


def _write(path: str, pcm: np.ndarray, container_format: str, codec: str, rate: int,
           options: dict[str, str]) -> None:
    with av.open(path, "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate,
                                      frame_size=stream.frame_size or None)
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(piece))
        container.mux(stream.encode(None))
