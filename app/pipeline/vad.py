"""VAD stage: Silero VAD cuts a 16 kHz stream into utterances.

`SileroVAD` is the model, loaded once per process. It is stateless: each `VADStream` keeps
its own recurrent state and context, so one model serves every call and `SileroVAD.infer`
can run the next 32 ms chunk of many streams as one batch.

A `VADStream` turns speech probabilities into events:
- `SpeechStarted` once the speech has lasted `min_speech_ms` (a click or a cough is not an
  utterance); its `start_s` is where the utterance's audio begins, pre-roll included;
- `SpeechPaused` once the speaker has been quiet for `speech_pad_ms`: the utterance as it
  would be finalised now (so recognition can start before the end is confirmed);
- `SpeechResumed` if they go on talking after a pause;
- `UtteranceEnded` after `min_silence_ms` of quiet, at `flush()`, or when `max_utterance_s`
  forces a cut at the quietest recent point (the speech goes on as a new utterance, with its
  own `SpeechStarted`).

With an end-of-turn model (`VADStream(..., turn_silence_s=...)`) a pause does not end the
utterance by itself: after `SpeechPaused` the stream waits for a verdict (`awaiting_verdict`,
and `ready` is 0 until then, so the verdict applies to exactly the audio it judged, live or
from a file), and `resolve_pause(end_after_s)` says how much silence ends this utterance
(0: at once). Speech that resumes first continues the same utterance. Without a verdict
(`flush`) the utterance ends as usual. So an utterance is a whole turn.

The stream's first utterance, if its speech is heard within `OPENING_S`, takes the audio from
the stream's start, not only `preroll_ms` of it: from a fresh state Silero can take most of a
second to hear a soft first word (a sentence spoken from the first instant, "The forms of
...", was heard from 0.70 s with 8 ms of silence before it and lost "The forms"), and a
caller who speaks as the line opens must not lose it.

Bursts shorter than `min_speech_ms` are discarded without any event, so every `SpeechStarted`
is followed by exactly one `UtteranceEnded`, and the events of one utterance come in the order
started, (paused, resumed)*, [paused], ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.settings import VadSettings

SAMPLE_RATE = 16000
CHUNK = 512  # samples per Silero step at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk Silero sees with each step
OPENING_S = 0.75  # speech heard this early in a stream takes the audio from its start
_OPENING = int(OPENING_S * SAMPLE_RATE)
_STATE_SHAPE = (2, 1, 128)


class SileroVAD:
    """The Silero VAD network (torch JIT, CPU), shared by all streams."""

    def __init__(self, network: torch.jit.ScriptModule) -> None:
        self._net = network

    @classmethod
    def load(cls) -> SileroVAD:
        from silero_vad import load_silero_vad

        return cls(load_silero_vad(onnx=False)._model)

    def stream(self, settings: VadSettings, turn_silence_s: float | None = None) -> VADStream:
        return VADStream(settings, turn_silence_s)

    def infer(self, streams: list[VADStream]) -> None:
        """Run each stream's next chunk as one batch and hand each its probability.

        Blocking (a fraction of a millisecond per stream); call it off the event loop, from
        one thread at a time.
        """
        inputs = [s.next_input() for s in streams]
        x = torch.from_numpy(np.stack([i[0] for i in inputs]))
        state = torch.cat([i[1] for i in inputs], dim=1)
        with torch.inference_mode():
            probs, new_state = self._net(x, state)
        for k, s in enumerate(streams):
            s.accept(float(probs[k, 0]), new_state[:, k : k + 1, :].clone())


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    start_s: float  # where the utterance's audio begins (pre-roll included), not when announced


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    start_s: float
    end_s: float
    audio: np.ndarray


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    at_s: float


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    start_s: float
    end_s: float
    audio: np.ndarray
    forced: bool = False
    decided_s: float = 0.0  # how much of the stream the VAD had heard when it ended the utterance


VadEvent = SpeechStarted | SpeechPaused | SpeechResumed | UtteranceEnded


class _Timeline:
    """Recent 16 kHz audio addressed by absolute sample index, growing without copying much."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE * 4, dtype=np.float32)
        self.start = 0  # absolute index of _data[0]
        self.end = 0  # absolute index one past the last sample

    def append(self, samples: np.ndarray) -> None:
        used = self.end - self.start
        if used + len(samples) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), used + len(samples)), dtype=np.float32)
            grown[:used] = self._data[:used]
            self._data = grown
        self._data[used : used + len(samples)] = samples
        self.end += len(samples)

    def slice(self, a: int, b: int) -> np.ndarray:
        a, b = max(a, self.start), min(b, self.end)
        return self._data[a - self.start : b - self.start].copy()

    def forget_before(self, index: int) -> None:
        index = min(index, self.end)
        if index <= self.start:
            return
        keep = self.end - index
        self._data[:keep] = self._data[index - self.start : self.end - self.start]
        self.start = index


class VADStream:
    """Per-stream segmentation state. Feed 16 kHz samples with `append`; see module doc.

    `turn_silence_s` (an end-of-turn model decides): the silence that ends an utterance while
    no verdict says otherwise ([turn] max_silence_ms); None: `min_silence_ms` ends it."""

    def __init__(self, settings: VadSettings, turn_silence_s: float | None = None) -> None:
        self.settings = settings
        self._turns = turn_silence_s is not None
        self._default_end = int((turn_silence_s or 0) * SAMPLE_RATE)
        self._end_silence = self._default_end  # what ends the open pause (turn mode)
        self._awaiting = False
        self._on = settings.threshold
        self._off = max(settings.threshold - 0.15, 0.01)
        self._pad = int(settings.speech_pad_ms * SAMPLE_RATE / 1000)
        self._preroll = int(settings.preroll_ms * SAMPLE_RATE / 1000)
        self._min_silence = int(settings.min_silence_ms * SAMPLE_RATE / 1000)
        self._min_speech = int(settings.min_speech_ms * SAMPLE_RATE / 1000)
        self._max_len = int(settings.max_utterance_s * SAMPLE_RATE)
        self._audio = _Timeline()
        self._state = torch.zeros(_STATE_SHAPE)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pos = 0  # absolute index of the next chunk to classify
        self._events: list[VadEvent] = []
        self._speaking = False
        self._confirmed = False  # the open utterance has min_speech_ms of speech: announced
        self._utt_start = 0  # absolute index where the current utterance's speech began
        self._voiced = 0  # voiced samples in the current utterance
        self._silence_start: int | None = None
        self._paused_sent = False
        self._probs: list[tuple[int, float]] = []  # (chunk index, prob) within the utterance
        self._ended_any = False  # an utterance was announced and has ended

    # -- feeding -------------------------------------------------------------------------
    def append(self, samples: np.ndarray) -> None:
        self._audio.append(samples)

    @property
    def ready(self) -> int:
        """Number of whole chunks waiting to be classified (0 while awaiting a verdict)."""
        if self._awaiting:
            return 0
        return (self._audio.end - self._pos) // CHUNK

    @property
    def awaiting_verdict(self) -> bool:
        """A pause was announced and the end-of-turn verdict on it is due (`resolve_pause`)."""
        return self._awaiting

    def resolve_pause(self, end_after_s: float) -> None:
        """The verdict on the pause last announced: the utterance ends once the silence has
        lasted `end_after_s` (0: now), unless speech resumes first. Events: `take_events`.
        A verdict that comes after the utterance ended anyway (a `max_utterance_s` cut in the
        chunk that announced the pause) is ignored."""
        if not self._awaiting:
            return
        self._awaiting = False
        self._end_silence = int(end_after_s * SAMPLE_RATE)
        if self._speaking and self._silence_start is not None and self._pos - self._silence_start >= self._end_silence:
            self._end_utterance(self._silence_start, forced=False)

    @property
    def speaking(self) -> bool:
        return self._speaking

    def next_input(self) -> tuple[np.ndarray, torch.Tensor]:
        chunk = self._audio.slice(self._pos, self._pos + CHUNK)
        return np.concatenate([self._context, chunk]), self._state

    def accept(self, prob: float, state: torch.Tensor) -> None:
        """Take the network's verdict on the chunk from `next_input`."""
        chunk_start = self._pos
        self._context = self._audio.slice(chunk_start + CHUNK - CONTEXT, chunk_start + CHUNK)
        self._state = state
        self._pos += CHUNK
        self._step(chunk_start, prob)
        if not self._speaking and self._pos > _OPENING:
            self._audio.forget_before(self._pos - self._preroll - CHUNK)

    def take_events(self) -> list[VadEvent]:
        events, self._events = self._events, []
        return events

    def current(self) -> tuple[float, np.ndarray] | None:
        """The open utterance so far (start time, audio), once announced, for interim results."""
        if not self._confirmed:
            return None
        start = max(self._start_index(), self._audio.start)
        return start / SAMPLE_RATE, self._audio.slice(start, self._pos)

    def flush(self) -> list[VadEvent]:
        """End of stream: close an open utterance (classifying what is left as silence)."""
        self._awaiting = False
        if self._speaking:
            end = self._silence_start if self._silence_start is not None else self._audio.end
            self._end_utterance(end, forced=False, decided=self._audio.end)
        return self.take_events()

    # -- segmentation --------------------------------------------------------------------
    def _step(self, chunk_start: int, prob: float) -> None:
        chunk_end = chunk_start + CHUNK
        if not self._speaking:
            if prob >= self._on:
                self._speaking = True
                self._confirmed = False
                self._utt_start = chunk_start
                self._voiced = CHUNK
                self._silence_start = None
                self._paused_sent = False
                self._probs = [(chunk_start, prob)]
                self._confirm()
            return
        self._probs.append((chunk_start, prob))
        if prob >= self._on:
            self._voiced += CHUNK
            self._confirm()
            if self._silence_start is not None:
                if self._paused_sent:
                    self._events.append(SpeechResumed(chunk_start / SAMPLE_RATE))
                self._silence_start = None
                self._paused_sent = False
                self._end_silence = self._default_end
        elif prob < self._off:
            if self._silence_start is None:
                self._silence_start = chunk_start
            quiet = chunk_end - self._silence_start
            # An announced utterance under an end-of-turn model ends when its verdict says;
            # a burst too short to be announced still ends at min_silence_ms.
            ends_at = self._end_silence if self._turns and self._confirmed else self._min_silence
            if quiet >= ends_at:
                self._end_utterance(self._silence_start, forced=False)
                return
            if not self._paused_sent and quiet >= self._pad and self._confirmed:
                self._paused_sent = True
                start = self._start_index()
                end = self._silence_start + self._pad
                self._events.append(
                    SpeechPaused(start / SAMPLE_RATE, end / SAMPLE_RATE, self._audio.slice(start, end))
                )
                self._awaiting = self._turns
        if chunk_end - self._start_index() >= self._max_len:
            self._force_cut()

    def _confirm(self) -> None:
        """Announce the open utterance once it has `min_speech_ms` of speech."""
        if not self._confirmed and self._voiced >= self._min_speech:
            self._confirmed = True
            self._events.append(SpeechStarted(self._start_index() / SAMPLE_RATE))

    def _start_index(self) -> int:
        if self._utt_start < _OPENING and not self._ended_any:  # Silero may have heard it late
            return self._audio.start
        return max(self._utt_start - self._preroll, self._audio.start, 0)

    def _end_utterance(self, speech_end: int, forced: bool, decided: int | None = None) -> None:
        start = self._start_index()
        end = min(speech_end + (0 if forced else self._pad), self._audio.end)
        decided = self._pos if decided is None else decided
        if self._confirmed:  # else a burst too short to be speech: it was never announced
            self._events.append(UtteranceEnded(start / SAMPLE_RATE, end / SAMPLE_RATE,
                                               self._audio.slice(start, end), forced, decided / SAMPLE_RATE))
            self._ended_any = True
        self._speaking = False
        self._confirmed = False
        self._silence_start = None
        self._paused_sent = False
        self._awaiting = False
        self._end_silence = self._default_end
        self._probs = []

    def _force_cut(self) -> None:
        """Cut an over-long utterance at its quietest chunk in the latter half."""
        half = len(self._probs) // 2
        candidates = self._probs[half:-1] or self._probs[-1:]
        cut_at, _ = min(candidates, key=lambda cp: cp[1])
        cut = cut_at + CHUNK // 2
        remaining = [(i, p) for i, p in self._probs if i >= cut_at]
        self._end_utterance(cut, forced=True)
        # The speech goes on: the next utterance starts at the cut, with no extra padding.
        self._speaking = True
        self._utt_start = cut + self._preroll
        self._voiced = sum(CHUNK for _, p in remaining if p >= self._on)
        self._probs = remaining
        self._confirm()
