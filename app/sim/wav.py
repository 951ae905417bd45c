"""Read a WAV file as the 8 kHz μ-law bytes a Twilio call carries (for the simulator).

An 8 kHz mono μ-law WAV is passed through byte for byte. Anything else this reads (16-bit PCM
or A-law, any rate, any channel count) is mixed to mono, resampled to 8 kHz with the
pipeline's resampler and encoded with the pipeline's μ-law encoder, as a phone network would.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from app.pipeline.decode import decode, encode
from app.pipeline.resample import resample_whole
from app.pipeline.types import Encoding

_PCM, _ALAW, _MULAW, _EXTENSIBLE = 1, 6, 7, 0xFFFE


def read_wav_mulaw(path: Path) -> bytes:
    """The file's audio as 8 kHz mono μ-law; raises ValueError naming what is unsupported."""
    data = path.read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a WAV (RIFF/WAVE) file")
    fmt: tuple[int, int, int, int] | None = None
    body: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        chunk = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt " and len(chunk) >= 16:
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", chunk)
            if tag == _EXTENSIBLE and len(chunk) >= 26:
                tag = struct.unpack_from("<H", chunk, 24)[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            body = chunk
        pos += 8 + size + (size & 1)
    if fmt is None or body is None:
        raise ValueError(f"{path}: WAV file without a fmt or data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate <= 0:
        raise ValueError(f"{path}: bad WAV header ({channels} channels at {rate} Hz)")
    if tag == _MULAW and channels == 1 and rate == 8000:
        return body
    if tag == _PCM and bits == 16:
        encoding = Encoding.LINEAR16
    elif tag in (_MULAW, _ALAW) and bits == 8:
        encoding = Encoding.MULAW if tag == _MULAW else Encoding.ALAW
    else:
        raise ValueError(f"{path}: unsupported WAV format {tag} with {bits} bits "
                         "(use 16-bit PCM, μ-law or A-law)")
    width = 2 if encoding is Encoding.LINEAR16 else 1
    body = body[: len(body) - len(body) % (width * channels)]
    samples = decode(body, encoding).reshape(-1, channels).mean(axis=1).astype(np.float32)
    if rate != 8000:
        samples = resample_whole(samples, rate, 8000)
    return encode(samples, Encoding.MULAW)
