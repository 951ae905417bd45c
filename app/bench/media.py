"""Audio files made in memory, for the progressive benchmark and tests: 16 kHz mono PCM
encoded into any container PyAV writes."""

from __future__ import annotations

import tempfile

import av
import numpy as np

# kind -> (container format, codec, encoder sample rate, muxer options)
FORMATS: dict[str, tuple[str, str, int, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", 16000, {}),
    "wav": ("wav", "pcm_s16le", 16000, {}),
    "ogg": ("ogg", "libopus", 48000, {}),
    "webm": ("webm", "libopus", 48000, {}),
    "m4a": ("ipod", "aac", 16000, {"movflags": "faststart"}),
    "m4a-index-at-end": ("ipod", "aac", 16000, {}),
}


def encode(pcm: np.ndarray, kind: str) -> bytes:
    """16 kHz mono int16 samples as a file of `kind` (a key of FORMATS)."""
    container_format, codec, rate, options = FORMATS[kind]
    # A real file: MP4's faststart rewrites the file to move its index to the front.
    with tempfile.NamedTemporaryFile(suffix="." + container_format) as out:
        with av.open(out.name, "w", format=container_format, options=options) as container:
            stream = container.add_stream(codec, rate=rate)
            if not isinstance(stream, av.AudioStream):
                raise ValueError(f"{codec} is not an audio codec")
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = 16000
            resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate,
                                          frame_size=stream.frame_size or None)
            for piece in [*resampler.resample(frame), *resampler.resample(None)]:
                container.mux(stream.encode(piece))
            container.mux(stream.encode(None))
        return out.read()
