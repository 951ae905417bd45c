"""Real speech for tests: the clips of the speech directory (`app.bench.common.SPEECH_DIR`:
$HEARSAY_SPEECH_DIR or ../shared/speech), a telephone channel, and WER scoring (`wer`, the
benchmarks' scorer)."""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import numpy as np
import soundfile

from app.bench.common import SPEECH_DIR, normalize, wer
from app.pipeline.decode import encode
from app.pipeline.resample import resample_whole
from app.pipeline.types import Encoding

__all__ = ["SPEECH_DIR", "clip_path", "load", "manifest", "reference", "silence", "telephone", "wer", "words"]


@cache
def manifest() -> dict[str, dict[str, str]]:
    with (SPEECH_DIR / "manifest.tsv").open() as f:
        return {row["id"]: row for row in csv.DictReader(f, delimiter="\t")}


def clip_path(clip_id: str) -> Path:
    return SPEECH_DIR / manifest()[clip_id]["file"]


def reference(clip_id: str) -> str:
    return manifest()[clip_id]["reference"]


def load(clip_id: str) -> np.ndarray:
    """The clip as float32 samples at its own rate (16 kHz unless the id ends in -8k)."""
    samples, _rate = soundfile.read(clip_path(clip_id), dtype="float32")
    return samples


def telephone(samples_16k: np.ndarray) -> bytes:
    """16 kHz audio as a phone call carries it: 8 kHz G.711 mu-law bytes."""
    return encode(resample_whole(samples_16k, 16000, 8000), Encoding.MULAW)


def silence(seconds: float, rate: int = 16000) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def words(text: str) -> int:
    """How many words `wer` counts in `text` (after normalisation): a WER bound of k/words(ref)
    lets k words of the reference come out wrong."""
    return len(normalize(text).split())
