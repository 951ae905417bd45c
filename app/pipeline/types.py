"""The small value types that flow between pipeline stages and out of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Encoding(StrEnum):
    """Wire encodings the engine accepts (names as in the streaming protocol)."""

    LINEAR16 = "LINEAR16"  # PCM signed 16-bit little-endian
    MULAW = "MULAW"  # G.711 mu-law
    ALAW = "ALAW"  # G.711 A-law


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """How a source's bytes are to be read: encoding and sample rate (mono)."""

    encoding: Encoding = Encoding.LINEAR16
    sample_rate: int = 16000

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is Encoding.LINEAR16 else 1


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word with its time in stream seconds."""

    text: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognition result for one utterance.

    Interim results (`is_final=False`) cover the utterance so far and may change; the final
    one is emitted once, when the utterance ends: with an end-of-turn model, when the caller's
    turn ends, not at every pause. Times are seconds of stream audio
    from the start of the stream.
    """

    index: int
    text: str
    start_s: float
    end_s: float
    is_final: bool
    confidence: float
    language: str
    words: tuple[Word, ...] = field(default_factory=tuple)
    # When the engine had the result ready, on the `time.monotonic()` clock (for latency metrics).
    emitted_at: float = 0.0
    # Seconds of recognizer compute behind this result.
    compute_s: float = 0.0
    # A final that also ends the caller's turn (Deepgram's speech_final): false only when
    # `max_utterance_s` cut a long turn and it goes on in the next utterance.
    end_of_turn: bool = False
    # A final's: how much of the stream had been heard when the engine ended the utterance
    # (where the turn's silence wait ran out); its lateness is measured from that audio's arrival.
    decided_s: float = 0.0


class SpeechEventKind(StrEnum):
    """What the VAD noticed about the speaker (livekit's START/END_OF_SPEECH, pipecat's
    user-started/stopped-speaking frames)."""

    # Sent once `min_speech_ms` of speech is heard (shorter bursts are not announced); `at_s`
    # is where the utterance's audio begins, pre-roll included: its transcripts' `start_s`.
    STARTED = "speech_started"
    PAUSED = "speech_paused"  # a short quiet (`at_s`: the end if it ends now); a speculative final starts
    RESUMED = "speech_resumed"  # speech went on after a pause: the same utterance continues
    # The utterance ended at `at_s` (its final's `end_s`); its final follows unless Whisper
    # heard nothing in it. Every STARTED gets one ENDED unless the stream is abandoned (aclose).
    ENDED = "speech_ended"


@dataclass(frozen=True, slots=True)
class SpeechEvent:
    """A moment in the speaker's turn, in stream seconds, for utterance `index` (the same
    numbering as that utterance's `Transcript`s). Emitted as soon as the VAD decides, so a
    speech event may come before the final result of an earlier utterance."""

    kind: SpeechEventKind
    index: int
    at_s: float
    # When the engine decided, on the `time.monotonic()` clock.
    emitted_at: float = 0.0


EngineResult = Transcript | SpeechEvent
"""What `EngineStream.results()` yields."""
