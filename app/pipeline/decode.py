"""Decode stage: wire bytes -> float32 samples in [-1, 1].

G.711 mu-law and A-law are expanded through 256-entry tables built from the ITU-T G.711
definitions; PCM is signed 16-bit little-endian. The encoders (used by the telephone-channel
simulation, the Twilio simulator and talk-back) are the exact inverses on G.711's grid.
"""

from __future__ import annotations

import numpy as np

from app.pipeline.errors import AudioFormatError
from app.pipeline.types import Encoding

_BIAS = 0x84
_CLIP = 32635


def _mulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


MULAW_TO_PCM16 = _mulaw_table()
ALAW_TO_PCM16 = _alaw_table()


def _encoder_table(decode_table: np.ndarray) -> np.ndarray:
    """For each of the 65536 int16 values, the code whose decoded value is nearest."""
    order = np.argsort(decode_table.astype(np.int32), kind="stable")
    levels = decode_table[order].astype(np.int32)
    values = np.arange(-32768, 32768, dtype=np.int32)
    right = np.clip(np.searchsorted(levels, values), 1, len(levels) - 1)
    left = right - 1
    nearer_left = (values - levels[left]) <= (levels[right] - values)
    return order[np.where(nearer_left, left, right)].astype(np.uint8)


_PCM16_TO_MULAW = _encoder_table(MULAW_TO_PCM16)
_PCM16_TO_ALAW = _encoder_table(ALAW_TO_PCM16)


def decode_pcm16(payload: bytes, encoding: Encoding) -> np.ndarray:
    """Wire bytes -> int16 samples. LINEAR16 payloads must hold whole samples."""
    if encoding is Encoding.LINEAR16:
        if len(payload) % 2:
            raise AudioFormatError(f"LINEAR16 audio must have an even number of bytes, got {len(payload)}")
        return np.frombuffer(payload, dtype="<i2").astype(np.int16, copy=False)
    codes = np.frombuffer(payload, dtype=np.uint8)
    if encoding is Encoding.MULAW:
        return MULAW_TO_PCM16[codes]
    if encoding is Encoding.ALAW:
        return ALAW_TO_PCM16[codes]
    raise AudioFormatError(f"unsupported encoding {encoding!r}")


def decode(payload: bytes, encoding: Encoding) -> np.ndarray:
    """Wire bytes -> float32 samples in [-1, 1]."""
    return decode_pcm16(payload, encoding).astype(np.float32) / 32768.0


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 samples in [-1, 1] -> int16, clipped."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def encode(samples: np.ndarray, encoding: Encoding) -> bytes:
    """float32 samples in [-1, 1] -> wire bytes in `encoding`."""
    pcm = to_pcm16(samples)
    if encoding is Encoding.LINEAR16:
        return pcm.astype("<i2").tobytes()
    index = pcm.astype(np.int32) + 32768
    if encoding is Encoding.MULAW:
        return _PCM16_TO_MULAW[index].tobytes()
    if encoding is Encoding.ALAW:
        return _PCM16_TO_ALAW[index].tobytes()
    raise AudioFormatError(f"unsupported encoding {encoding!r}")
