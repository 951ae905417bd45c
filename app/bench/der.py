"""Diarization error rate (DER): how much of the reference speech time is attributed to the
wrong speaker, missed, or invented, after the best one-to-one mapping of speaker labels.

    reference = read_rttm(Path("conversation-pyannote-2spk.rttm"))   # [Turn(start_s, end_s, speaker)]
    score = der(reference, hypothesis, collar_s=0.25)                 # DerScore(...).rate

Scored on a 10 ms grid, as NIST's md-eval does in effect: each frame has the set of reference
speakers and the set of hypothesis speakers active in it; a frame within `collar_s` of a
reference turn's start or end is not scored (human turn boundaries are not that precise), and
overlapped speech is scored (a frame with two reference speakers needs two hypothesis
speakers). The label mapping maximises the time both agree on (Hungarian assignment).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

FRAME_S = 0.01


@dataclass(frozen=True, slots=True)
class Turn:
    """One speaker speaking from `start_s` to `end_s`."""

    start_s: float
    end_s: float
    speaker: str


@dataclass(frozen=True, slots=True)
class DerScore:
    """The parts of the error, in seconds of scored reference speech."""

    total_s: float  # reference speech scored (overlap counted once per speaker)
    missed_s: float
    false_alarm_s: float
    confusion_s: float

    @property
    def rate(self) -> float:
        if self.total_s <= 0:
            return 0.0
        return (self.missed_s + self.false_alarm_s + self.confusion_s) / self.total_s


def read_rttm(path: Path) -> list[Turn]:
    """The SPEAKER lines of an RTTM file (onset in field 4, duration in 5, name in 8)."""
    turns = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "SPEAKER":
            start, duration = float(fields[3]), float(fields[4])
            turns.append(Turn(start, start + duration, fields[7]))
    return turns


def _activity(turns: Sequence[Turn], frames: int) -> tuple[list[str], np.ndarray]:
    names = sorted({t.speaker for t in turns})
    active = np.zeros((len(names), frames), dtype=bool)
    for t in turns:
        active[names.index(t.speaker), round(t.start_s / FRAME_S):round(t.end_s / FRAME_S)] = True
    return names, active


def der(reference: Sequence[Turn], hypothesis: Iterable[Turn], collar_s: float = 0.0) -> DerScore:
    """Score `hypothesis` against `reference` (see the module doc)."""
    hyp = list(hypothesis)
    end_s = max([t.end_s for t in reference] + [t.end_s for t in hyp] + [0.0])
    frames = round(end_s / FRAME_S) + 1
    _, ref = _activity(reference, frames)
    _, out = _activity(hyp, frames)
    scored = np.ones(frames, dtype=bool)
    if collar_s > 0:
        pad = round(collar_s / FRAME_S)
        for t in reference:
            for edge in (round(t.start_s / FRAME_S), round(t.end_s / FRAME_S)):
                scored[max(0, edge - pad):edge + pad] = False
    ref, out = ref[:, scored], out[:, scored]
    n_ref, n_out = ref.sum(axis=0), out.sum(axis=0)
    correct = 0
    if len(ref) and len(out):
        agree = ref.astype(np.int64) @ out.T.astype(np.int64)  # frames both have, per label pair
        rows, cols = linear_sum_assignment(-agree)
        correct = int(agree[rows, cols].sum())
    total = int(n_ref.sum())
    missed = int(np.maximum(n_ref - n_out, 0).sum())
    false_alarm = int(np.maximum(n_out - n_ref, 0).sum())
    confusion = int(np.minimum(n_ref, n_out).sum()) - correct
    return DerScore(total * FRAME_S, missed * FRAME_S, false_alarm * FRAME_S, confusion * FRAME_S)
