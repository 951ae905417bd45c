"""Audio files made in memory for the progressive tests: clips of the speech directory joined
into one recording (`join`), encoded into any container PyAV writes (`encode`, shared with the
benchmark). Not a test module itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from speech import load

from app.bench.media import FORMATS, encode

__all__ = ["FORMATS", "Placed", "encode", "join"]


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
