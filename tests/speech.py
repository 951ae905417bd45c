"""Real speech for tests: the clips in ../shared/speech, a telephone channel, and WER scoring."""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import jiwer
import numpy as np
import soundfile
from whisper_normalizer.english import EnglishTextNormalizer

from app.pipeline.decode import encode
from app.pipeline.events import Encoding
from app.pipeline.resample import resample_whole

SPEECH_DIR = Path(__file__).resolve().parents[2] / "shared" / "speech"


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


_normalize = EnglishTextNormalizer()


def wer(ref: str, hyp: str) -> float:
    """Word error rate after Whisper's English normalisation of both sides."""
    r, h = _normalize(ref), _normalize(hyp)
    if not r.strip():
        return 0.0 if not h.strip() else 1.0
    return float(jiwer.wer(r, h))
