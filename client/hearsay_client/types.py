"""The values the SDK hands back: results, segments and summaries (frozen dataclasses).

Times are seconds of the session's audio from its start (for a meeting, of meeting time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AudioSpan:
    """A stretch of session audio, in seconds from the session's start (for a meeting, of
    meeting time, and `speaker` says whose audio it is)."""

    start_s: float
    end_s: float
    speaker: str | None = None


@dataclass(frozen=True, slots=True)
class Word:
    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True, slots=True)
class StreamingResult:
    """One result of a real-time or meeting session.

    Interim results (`is_final=False`) cover the utterance so far and may change; the final
    comes once per utterance. `timestamp` is the end of the utterance. `index` numbers the
    finals from 0 (an interim carries the index its final will have). `speaker_id` is set in
    meetings."""

    transcript: str
    is_final: bool
    confidence: float
    timestamp: float
    start_s: float
    end_s: float
    index: int
    language: str = ""
    words: tuple[Word, ...] = ()
    speaker_id: str | None = None
    end_of_turn: bool | None = None  # when the server says whether the final ended the turn

    @classmethod
    def from_wire(cls, body: dict[str, Any], *, offset_s: float = 0.0, index: int | None = None,
                  speaker_id: str | None = None) -> StreamingResult:
        """A `transcription_result`'s `result` object, its times moved by `offset_s`."""
        words = tuple(Word(w["word"], round(w["start_s"] + offset_s, 3), round(w["end_s"] + offset_s, 3),
                           w.get("confidence", 0.0)) for w in body.get("words", ()))
        end_of_turn = body.get("endOfTurn")
        return cls(transcript=body["transcript"], is_final=bool(body["isFinal"]),
                   confidence=float(body.get("confidence", 0.0)),
                   timestamp=round(float(body["timestamp"]) + offset_s, 3),
                   start_s=round(float(body.get("start_s", 0.0)) + offset_s, 3),
                   end_s=round(float(body.get("end_s", body["timestamp"])) + offset_s, 3),
                   index=int(body.get("index", 0)) if index is None else index,
                   language=str(body.get("language", "")), words=words,
                   speaker_id=speaker_id if speaker_id is not None else body.get("speakerId"),
                   end_of_turn=end_of_turn if isinstance(end_of_turn, bool) else None)


@dataclass(frozen=True, slots=True)
class Segment:
    """A final stretch of transcript. `speaker`: a speaker label (diarized recordings) or a
    participant id (meetings); None when not known."""

    index: int
    text: str
    start_s: float
    end_s: float
    confidence: float
    speaker: str | None = None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Segment:
        return cls(index=int(body["index"]), text=str(body["text"]), start_s=float(body["start_s"]),
                   end_s=float(body["end_s"]), confidence=float(body.get("confidence", 0.0)),
                   speaker=body.get("speaker"))


@dataclass(frozen=True, slots=True)
class FinalTranscript:
    """What `StreamingSession.finalize()` returns: every final of the session (across
    reconnects), the audio duration, and any audio that could not be transcribed."""

    text: str
    segments: tuple[Segment, ...]
    duration: float
    untranscribed: tuple[AudioSpan, ...] = ()
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class Topic:
    """A key phrase of the transcript; `score` is its relevance, 1.0 the most relevant."""

    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a progressive session has got."""

    received_bytes: int  # bytes of the file the server holds
    decoded_s: float  # seconds of audio decoded so far
    transcribed_s: float  # end of the last final segment
    realtime_factor: float  # seconds of audio decoded per second of processing


@dataclass(frozen=True, slots=True)
class ProgressiveResult:
    """A progressive session's state: `segments` are the final segments ready so far.
    `status`: receiving, finishing, done or failed."""

    id: str
    status: str
    segments: tuple[Segment, ...]
    progress: Progress
    error: str = ""


@dataclass(frozen=True, slots=True)
class ProgressiveTranscript:
    """A finished progressive session. `speakers` are the distinct labels when diarized;
    `topics` the key phrases when asked for."""

    id: str
    text: str
    segments: tuple[Segment, ...]
    duration: float
    topics: tuple[Topic, ...] = ()
    speakers: tuple[str, ...] = ()
    processing_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SpeakerSummary:
    """One meeting participant: when they joined and left (meeting seconds) and what they said."""

    id: str
    language: str
    joined_s: float
    left_s: float
    talk_time_s: float
    words: int


@dataclass(frozen=True, slots=True)
class MeetingSummary:
    """What `MeetingSession.finalize()` returns: every participant's finals merged in time order
    (across reconnects), and any participant's audio that could not be transcribed."""

    meeting_id: str
    full_transcript: str
    speakers: tuple[SpeakerSummary, ...]
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    duration: float = 0.0
    untranscribed: tuple[AudioSpan, ...] = ()
    reconnects: int = 0
