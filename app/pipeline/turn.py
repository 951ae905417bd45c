"""Turn stage: has the caller finished, or only paused? (between the VAD and the final)

`SmartTurn` is the end-of-turn model, loaded once per process: Smart Turn v3 (a Whisper-tiny
encoder with a classifier, ONNX) reads the last 8 s of a turn's 16 kHz audio and gives the
probability that the speaker has finished. It is stateless, so one model serves every call
and `score` takes the pauses of several streams at once (the engine's `TurnBatcher` gathers
them). It runs on one onnxruntime thread: the machine's other cores belong to Whisper.

Two things about how it runs, both measured on this machine (docs/engine.md):
- Each pause is its own run of the network, never a batch: on the CPU a batch costs more per
  pause than one at a time (33-38 ms against 27-30 ms at 2-8 pauses), and onnxruntime's memory
  arena keeps whatever the largest batch needed (about 80 MB more after each batch of 8), so
  one input shape keeps the process's memory flat.
- The attention softmax runs in float. The file is a QDQ int8 model, and onnxruntime fuses
  each DequantizeLinear -> Softmax -> QuantizeLinear into a QLinearSoftmax that costs 8 of the
  network's 28 ms; computed in float it costs 1 ms (`_float_softmax`), with the same verdicts
  on the dev sets' pauses.

`end_after_s` is the policy: from that probability and Whisper's own view of the words so far
(`Recognition.sentence_end`: how sure it is that its transcript ends with a full stop, question
or exclamation mark), how much silence (from the end of speech) ends the turn:
- both at least their thresholds (`complete_threshold`, `sentence_end_threshold`): `[vad]
  min_silence_ms`, as without a model (shorter pauses inside a sentence are common, and the
  model is asked at `speech_pad_ms`, before they are over);
- the model below `incomplete_threshold`: the speaker is mid-sentence; `max_silence_ms`;
- the words so far end in a digit (`open_number`): a caller reading a number (a card, a
  phone number, a postcode) pauses between its groups; `number_silence_ms`;
- anything else: `unsure_silence_ms`.
Why two signals and three levels: on 8 kHz phone audio the model alone calls many mid-sentence
pauses finished (a reader's comma sounds final to it), and a single threshold either cuts those
or keeps callers who have finished waiting for `max_silence_ms`; docs/engine.md has the figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
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
        graph = _float_softmax(onnx.load(str(path))).SerializeToString()
        return cls(ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"]))

    def score(self, turns: list[np.ndarray]) -> list[float]:
        """The probability that each speaker has finished, from the end of each turn's 16 kHz
        audio (the last 8 s are read; a shorter turn is padded with silence before it).

        Blocking (about 25 ms per turn on one core); call it off the event loop, from one
        thread at a time."""
        return [self._score_one(audio) for audio in turns]

    def _score_one(self, audio: np.ndarray) -> float:
        (prob,) = self._session.run(None, {self._input: self._log_mel(audio)[np.newaxis]})
        return float(np.asarray(prob).reshape(()))

    def _log_mel(self, audio: np.ndarray) -> np.ndarray:
        window = np.zeros(_WINDOW, dtype=np.float32)
        tail = np.asarray(audio, dtype=np.float32)[-_WINDOW:]
        window[_WINDOW - len(tail):] = tail
        # The waveform is normalised to zero mean and unit variance first, as in training.
        window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        return np.asarray(self._features(window, padding=0)[:, :_FRAMES], dtype=np.float32)


# Between a DequantizeLinear and the Softmax it feeds, onnxruntime's QDQ fusion no longer
# matches; a multiplication by exactly 1 it would remove first, so the factor is 1 + 2**-20
# (it moves the attention logits by a millionth, far below the int8 steps around them).
_UNFUSE = 1.0 + 2.0**-20


def _float_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each softmax fed by a DequantizeLinear kept in float (see the module doc):
    a Mul by `_UNFUSE` goes between them. Changes `model` in place and returns it."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    factor = "hearsay_unfuse_softmax"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(_UNFUSE, dtype=np.float32), factor))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        source = producers.get(node.input[0]) if node.op_type == "Softmax" else None
        if source is not None and source.op_type == "DequantizeLinear":
            scaled = f"{node.name}_unfused_input"
            nodes.append(onnx.helper.make_node("Mul", [node.input[0], factor], [scaled], name=f"{node.name}_unfuse"))
            node.input[0] = scaled
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def end_after_s(probability: float, sentence_end: float | None, settings: TurnSettings,
                min_silence_s: float, text: str | None = None) -> float:
    """Seconds of silence after the end of speech that end the turn, given the model's
    `probability` that the speaker has finished, Whisper's `sentence_end` probability for
    the turn's transcript so far and that transcript's `text` (None when not needed or not
    known); `min_silence_s` is the shortest ([vad] min_silence_ms). See the module doc."""
    if (probability >= settings.complete_threshold and sentence_end is not None
            and sentence_end >= settings.sentence_end_threshold):
        return min_silence_s
    if settings.number_silence_ms and text is not None and open_number(text):
        return settings.number_silence_ms / 1000
    if probability < settings.incomplete_threshold:
        return settings.max_silence_ms / 1000
    return settings.unsure_silence_ms / 1000


def open_number(text: str) -> bool:
    """Whether a transcript ends in a digit, a comma, dash or full stop after it aside
    ("1,0001", "my card is 4321,", "90210."): a number that may go on. Whisper often writes a
    full stop after each group of a number read in groups, so a full stop does not close it
    (a turn that both signals call finished has ended before this is asked, `end_after_s`);
    a question or exclamation mark does."""
    end = text.rstrip(" ,;:-.")
    return bool(end) and end[-1].isdigit()
