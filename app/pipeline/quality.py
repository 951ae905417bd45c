"""Quality stage: how good a call's audio is, as figures a person can act on.

    monitor = QualityMonitor(sample_rate, QualityThresholds(...))
    monitor.audio(samples)          # decoded caller audio, float32 in [-1, 1], in order
    monitor.speech(event)           # the VAD's speech events (where the speech is)
    monitor.transcript(result)      # finals: speech rate and confidence
    monitor.latency(seconds)        # end of speech -> its final, as the call measured it
    monitor.end()                   # no more audio: the VAD has judged all of it
    report = monitor.report()       # the figures over the last `window_s` of audio
    for warning in monitor.warnings(report, now_s): ...

Audio is cut into 20 ms frames; for each the mean power and the number of clipped samples
are kept for `window_s`. The VAD says which frames are speech: the input level is the mean
power of the speech frames (of the loudest tenth of the frames when there is no speech), the
noise floor the mean power of the rest (less the newest second, which the VAD may not have
judged yet), and the SNR `(speech - noise) / noise` from those
two means (speech frames hold speech plus noise). Means, not percentiles, so that a noise
that comes and goes (dishes) counts with its real power. The VAD's speech includes its
pre-roll and padding (about half a second an utterance), which pulls the SNR down a little
at high noise: about 1 dB at 0 dB SNR on the test clips (docs/quality.md).

Warnings compare a report with `QualityThresholds`; each kind is repeated at most every
`warning_interval_s`. Pure computation: no I/O, no clock of its own (`now_s` comes in).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from app.pipeline.types import SpeechEvent, SpeechEventKind, Transcript

FRAME_S = 0.02
CLIP_LEVEL = 0.999  # a sample this close to full scale counts as clipped
_FLOOR_DB = -100.0  # what digital silence reads as
# The newest audio the VAD may not have judged yet (it announces speech after `min_speech_ms`,
# and may be behind): outside speech it counts as neither speech nor noise until the end.
UNDECIDED_S = 1.0
_RATE_UTTERANCES = 5  # speech rate: over the last finals
_MIN_RATE_S = 2.0  # ... once they hold this much speech (a short "yes" says nothing about rate)


class WarningKind(StrEnum):
    LOW_VOLUME = "low_volume"
    HIGH_NOISE = "high_noise"
    CLIPPING = "clipping"
    LOW_CONFIDENCE = "low_confidence"
    FAST_SPEECH = "fast_speech"


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    """When a figure is bad enough to warn about (settings `[quality]`)."""

    low_volume_dbfs: float = -40.0  # input level below this
    high_noise_snr_db: float = 10.0  # SNR below this
    clipping_ratio: float = 0.01  # more than this share of samples at full scale
    low_confidence: float = 0.5  # a final's confidence below this
    fast_speech_wpm: float = 220.0  # speech rate above this
    warning_interval_s: float = 10.0  # the same warning at most this often
    window_s: float = 10.0  # the figures cover this much recent audio
    min_audio_s: float = 2.0  # no audio warnings before this much audio is in the window


@dataclass(frozen=True, slots=True)
class QualityReport:
    """The figures over the recent audio; None where there is nothing to measure yet."""

    audio_s: float  # seconds of audio the figures cover
    level_dbfs: float
    noise_floor_dbfs: float | None
    snr_db: float | None
    clipping_ratio: float
    speech_ratio: float
    speech_rate_wpm: float | None
    confidence: float | None
    latency_s: float | None

    def as_dict(self) -> dict[str, float | None]:
        """As JSON (the `quality` message, `call.ended.quality`), rounded to what means something."""
        return {"audio_s": round(self.audio_s, 2), "level_dbfs": _r(self.level_dbfs),
                "noise_floor_dbfs": _r(self.noise_floor_dbfs), "snr_db": _r(self.snr_db),
                "clipping_ratio": round(self.clipping_ratio, 5), "speech_ratio": round(self.speech_ratio, 3),
                "speech_rate_wpm": _r(self.speech_rate_wpm), "confidence": _r(self.confidence, 3),
                "latency_s": _r(self.latency_s, 3)}


@dataclass(frozen=True, slots=True)
class QualityWarning:
    """A figure past its threshold: `value` is the figure, `threshold` the limit it crossed."""

    kind: WarningKind
    value: float
    threshold: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "value": round(self.value, 5), "threshold": self.threshold,
                "message": self.message}


class QualityMonitor:
    """One call's quality figures (per-call state; see the module docstring)."""

    def __init__(self, sample_rate: int, thresholds: QualityThresholds | None = None) -> None:
        self.thresholds = thresholds or QualityThresholds()
        self._frame = max(1, round(sample_rate * FRAME_S))
        self._keep = max(1, round(self.thresholds.window_s / FRAME_S))
        self._power: deque[float] = deque(maxlen=self._keep)
        self._clipped: deque[int] = deque(maxlen=self._keep)
        self._frames = 0  # frames ever measured: frame i covers [i, i + 1) * FRAME_S
        self._rest = np.zeros(0, np.float32)
        self._speech: list[list[float]] = []  # [start_s, end_s] (end inf while open)
        self._finals: deque[Transcript] = deque(maxlen=_RATE_UTTERANCES)
        self._latency: float | None = None
        self._warned: dict[WarningKind, float] = {}
        self._ended = False

    # -- input ------------------------------------------------------------------------------

    def audio(self, samples: np.ndarray) -> None:
        data = np.concatenate([self._rest, samples.astype(np.float32, copy=False)])
        whole = len(data) // self._frame * self._frame
        frames = data[:whole].reshape(-1, self._frame)
        self._rest = data[whole:]
        if not len(frames):
            return
        self._power.extend(np.mean(np.square(frames, dtype=np.float64), axis=1).tolist())
        self._clipped.extend(np.count_nonzero(np.abs(frames) >= CLIP_LEVEL, axis=1).tolist())
        self._frames += len(frames)

    def speech(self, event: SpeechEvent) -> None:
        if event.kind is SpeechEventKind.STARTED:
            self._speech.append([event.at_s, math.inf])
        elif event.kind is SpeechEventKind.ENDED and self._speech:
            self._speech[-1][1] = event.at_s
        horizon = (self._frames - self._keep) * FRAME_S
        while len(self._speech) > 1 and self._speech[0][1] < horizon:
            del self._speech[0]

    def transcript(self, result: Transcript) -> None:
        if result.is_final and result.text.strip():
            self._finals.append(result)

    def latency(self, seconds: float) -> None:
        self._latency = seconds

    def end(self) -> None:
        self._ended = True

    # -- output -----------------------------------------------------------------------------

    def report(self) -> QualityReport:
        power = np.fromiter(self._power, np.float64, len(self._power))
        n = len(power)
        if not n:
            return QualityReport(0.0, _FLOOR_DB, None, None, 0.0, 0.0, self._rate(), self._confidence(),
                                 self._latency)
        is_speech = self._speech_mask(n)
        speech, noise = power[is_speech], power[~is_speech & ~self._undecided(n)]
        loudest = np.sort(power)[-max(1, n // 10):]
        level = float(np.mean(speech if len(speech) else loudest))
        floor = float(np.mean(noise)) if len(noise) else None
        snr = None
        if len(speech) and floor is not None:
            snr = _db(max(level - floor, 1e-12) / max(floor, 1e-12))
        return QualityReport(
            audio_s=n * FRAME_S, level_dbfs=_db(level), noise_floor_dbfs=None if floor is None else _db(floor),
            snr_db=snr, clipping_ratio=sum(self._clipped) / (n * self._frame),
            speech_ratio=len(speech) / n, speech_rate_wpm=self._rate(), confidence=self._confidence(),
            latency_s=self._latency)

    def warnings(self, report: QualityReport, now_s: float) -> list[QualityWarning]:
        """The warnings `report` calls for, less those given within `warning_interval_s`."""
        t = self.thresholds
        found: list[QualityWarning] = []
        if report.audio_s >= t.min_audio_s:
            # Only while someone speaks: a caller listening in silence is not too quiet.
            if report.speech_ratio > 0 and report.level_dbfs < t.low_volume_dbfs:
                found.append(QualityWarning(WarningKind.LOW_VOLUME, report.level_dbfs, t.low_volume_dbfs,
                                            f"the input level is {report.level_dbfs:.0f} dBFS: "
                                            "move closer to the microphone or turn it up"))
            if report.snr_db is not None and report.snr_db < t.high_noise_snr_db:
                found.append(QualityWarning(WarningKind.HIGH_NOISE, report.snr_db, t.high_noise_snr_db,
                                            f"the speech is only {report.snr_db:.1f} dB above the noise"))
            if report.clipping_ratio > t.clipping_ratio:
                found.append(QualityWarning(WarningKind.CLIPPING, report.clipping_ratio, t.clipping_ratio,
                                            f"{report.clipping_ratio:.1%} of the samples are clipped: "
                                            "turn the microphone down"))
        if report.confidence is not None and report.confidence < t.low_confidence:
            found.append(QualityWarning(WarningKind.LOW_CONFIDENCE, report.confidence, t.low_confidence,
                                        f"the last words were recognised with confidence {report.confidence:.2f}"))
        if report.speech_rate_wpm is not None and report.speech_rate_wpm > t.fast_speech_wpm:
            found.append(QualityWarning(WarningKind.FAST_SPEECH, report.speech_rate_wpm, t.fast_speech_wpm,
                                        f"{report.speech_rate_wpm:.0f} words a minute: a little slower, please"))
        due = [w for w in found if now_s - self._warned.get(w.kind, -math.inf) >= t.warning_interval_s]
        for w in due:
            self._warned[w.kind] = now_s
        return due

    # -- internals --------------------------------------------------------------------------

    def _speech_mask(self, n: int) -> np.ndarray:
        first = self._frames - n
        centres = (np.arange(first, self._frames) + 0.5) * FRAME_S
        mask = np.zeros(n, bool)
        for start, end in self._speech:
            mask |= (centres >= start) & (centres < end)
        return mask

    def _undecided(self, n: int) -> np.ndarray:
        undecided = np.zeros(n, bool)
        if not self._ended:
            undecided[max(0, n - round(UNDECIDED_S / FRAME_S)):] = True
        return undecided

    def _rate(self) -> float | None:
        seconds = sum(t.end_s - t.start_s for t in self._finals)
        if seconds < _MIN_RATE_S:
            return None
        words = sum(len(t.words) if t.words else len(t.text.split()) for t in self._finals)
        return 60.0 * words / seconds

    def _confidence(self) -> float | None:
        return self._finals[-1].confidence if self._finals else None


def _db(power: float) -> float:
    return max(_FLOOR_DB, 10.0 * math.log10(power)) if power > 0 else _FLOOR_DB


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
