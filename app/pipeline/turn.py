"""Turn stage: has the caller finished, or only paused? (between the VAD and the final)

`SmartTurn` is the end-of-turn model, loaded once per process: Smart Turn v3 (a Whisper-tiny
encoder with a classifier, ONNX) reads the last 8 s of a turn's 16 kHz audio and gives the
probability that the speaker has finished. It is stateless, so one model serves every call
and `score` takes a batch (the engine's `TurnBatcher` gathers the streams' pauses). It runs
on one onnxruntime thread: the machine's other cores belong to Whisper.

`end_after_s` is the policy: from that probability and Whisper's own view of the words so far
(`Recognition.sentence_end`: how sure it is that its transcript ends with a full stop, question
or exclamation mark), how much silence (from the end of speech) ends the turn:
- both at least their thresholds (`complete_threshold`, `sentence_end_threshold`): `[vad]
  min_silence_ms`, as without a model (shorter pauses inside a sentence are common, and the
  model is asked at `speech_pad_ms`, before they are over);
- the model below `incomplete_threshold`: the speaker is mid-sentence; `max_silence_ms`;
- anything else: `unsure_silence_ms`.
Why two signals and three levels: on 8 kHz phone audio the model alone calls many mid-sentence
pauses finished (a reader's comma sounds final to it), and a single threshold either cuts those
or keeps callers who have finished waiting for `max_silence_ms`; docs/engine.md has the figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from faster_whisper.feature_extractor import FeatureExtractor

from app.settings import TurnSettings

SAMPLE_RATE = 16000
WINDOW_S = 8  # the model reads the last 8 s of the turn
_WINDOW = WINDOW_S * SAMPLE_RATE
_FRAMES = WINDOW_S * 100  # log-mel frames of 10 ms


class SmartTurn:
    """The Smart Turn v3 network on onnxruntime (CPU, one thread), shared by all streams."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name
        # Whisper's log-mel front end for an 8 s window; Smart Turn was trained on the
        # features of transformers' WhisperFeatureExtractor(chunk_length=8), which this matches.
        self._features = FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=WINDOW_S)

    @classmethod
    def load(cls, path: Path) -> SmartTurn:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return cls(ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"]))

    def score(self, turns: list[np.ndarray]) -> list[float]:
        """The probability that each speaker has finished, from the end of each turn's 16 kHz
        audio (the last 8 s are read; a shorter turn is padded with silence before it).

        Blocking (about 35 ms per turn on one core); call it off the event loop, from one
        thread at a time."""
        features = np.stack([self._log_mel(audio) for audio in turns])
        (probs,) = self._session.run(None, {self._input: features})
        return [float(p) for p in np.asarray(probs).reshape(len(turns))]

    def _log_mel(self, audio: np.ndarray) -> np.ndarray:
        window = np.zeros(_WINDOW, dtype=np.float32)
        tail = np.asarray(audio, dtype=np.float32)[-_WINDOW:]
        window[_WINDOW - len(tail):] = tail
        # The waveform is normalised to zero mean and unit variance first, as in training.
        window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        return np.asarray(self._features(window, padding=0)[:, :_FRAMES], dtype=np.float32)


def end_after_s(probability: float, sentence_end: float | None, settings: TurnSettings,
                min_silence_s: float) -> float:
    """Seconds of silence after the end of speech that end the turn, given the model's
    `probability` that the speaker has finished and Whisper's `sentence_end` probability for
    the turn's transcript so far (None when not needed or not known); `min_silence_s` is the
    shortest ([vad] min_silence_ms). See the module doc."""
    if (probability >= settings.complete_threshold and sentence_end is not None
            and sentence_end >= settings.sentence_end_threshold):
        return min_silence_s
    if probability < settings.incomplete_threshold:
        return settings.max_silence_ms / 1000
    return settings.unsure_silence_ms / 1000
