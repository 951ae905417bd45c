"""One meeting: a speech-engine stream per participant, on one meeting clock.

    meeting = Meeting(config, engine, on_result)
    await meeting.join(ParticipantSpec("carol", language="en"))   # or listed in the config
    await meeting.audio("alice", pcm)      # the participant's stream opens on their first audio
    await meeting.leave("bob")             # bob's last words are finalised
    await meeting.finish()                 # everyone's; then meeting.summary()

The meeting clock is the audio itself: a participant's stream opens at the meeting time of
their first audio (the most audio any participant has sent so far, or `offset_s` if their
join gave one), and their results are moved onto the meeting clock by that offset. Real-time
clients send audio continuously, so this is the wall clock since the meeting began; a client
replaying recordings faster than real time gets the same times. A participant joining late
or leaving early is normal. `on_result(participant_id, transcript)` gets interims at once
and finals merged in meeting-time order (`merge.TimeOrderMerger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from app.meetings.merge import TimeOrderMerger
from app.pipeline.types import AudioFormat, SpeechEvent, SpeechEventKind, Transcript, Word

if TYPE_CHECKING:
    from app.pipeline.engine import SpeechEngine
    from app.pipeline.engine_stream import EngineStream

log = logging.getLogger("hearsay.meetings")

MAX_PARTICIPANTS = 32


class MeetingError(Exception):
    """A participant the meeting cannot take (`code`: a /v1/meetings error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ParticipantSpec:
    id: str
    language: str | None = None
    offset_s: float | None = None  # where their audio starts on the meeting clock (None: on arrival)


@dataclass(frozen=True, slots=True)
class MeetingConfig:
    meeting_id: str
    audio: AudioFormat = field(default_factory=AudioFormat)
    language: str | None = None
    model: str | None = None
    interim_results: bool = False
    words: bool = False
    participants: tuple[ParticipantSpec, ...] = ()
    vocabulary: str | None = None  # everyone's (app.ingress.vocabulary)


@dataclass
class Participant:
    spec: ParticipantSpec
    stream: EngineStream | None = None
    offset_s: float = 0.0
    left_s: float | None = None
    reader: asyncio.Task[None] | None = None
    finals: list[Transcript] = field(default_factory=list)

    @property
    def language(self) -> str | None:
        return self.spec.language

    def clock_s(self) -> float:
        return self.offset_s + (self.stream.duration_s if self.stream is not None else 0.0)


Listener = Callable[[str, Transcript], None]


class Meeting:
    """A meeting's participants and their streams (see the module doc)."""

    def __init__(self, config: MeetingConfig, engine: SpeechEngine, on_result: Listener) -> None:
        self.config = config
        self._engine = engine
        self._on_result = on_result
        self._people: dict[str, Participant] = {}
        self._merger: TimeOrderMerger[tuple[str, Transcript]] = TimeOrderMerger(self._release)
        self._released: list[tuple[str, Transcript]] = []

    @property
    def clock_s(self) -> float:
        """The meeting time reached: the most audio any participant has sent."""
        return max((p.clock_s() for p in self._people.values()), default=0.0)

    def participant(self, participant_id: str) -> Participant | None:
        return self._people.get(participant_id)

    async def join(self, spec: ParticipantSpec) -> Participant:
        """Add a participant; MeetingError if the id is taken, the meeting is full, or their
        language or the model is not available."""
        if spec.id in self._people:
            raise MeetingError("duplicate_participant", f"participant {spec.id!r} has already joined")
        if len(self._people) >= MAX_PARTICIPANTS:
            raise MeetingError("too_many_participants", f"a meeting takes at most {MAX_PARTICIPANTS} participants")
        probe = self._open(spec)  # the engine's own checks (model, language), before anyone waits on it
        await probe.aclose()
        person = Participant(spec)
        self._people[spec.id] = person
        return person

    async def audio(self, participant_id: str, payload: bytes) -> None:
        """The participant's audio (opens their stream on the first)."""
        person = self._people.get(participant_id)
        if person is None:
            raise MeetingError("unknown_participant", f"no participant {participant_id[:64]!r}; send join first")
        if person.left_s is not None:
            raise MeetingError("participant_left", f"participant {participant_id!r} has left the meeting")
        if person.stream is None:
            person.offset_s = person.spec.offset_s if person.spec.offset_s is not None else self.clock_s
            person.stream = self._open(person.spec)
            person.reader = asyncio.create_task(self._read(person), name=f"meeting-{participant_id}")
        await person.stream.feed(payload)

    async def leave(self, participant_id: str) -> float:
        """Finalise the participant's audio; their meeting time of leaving."""
        person = self._people.get(participant_id)
        if person is None:
            raise MeetingError("unknown_participant", f"no participant {participant_id[:64]!r}")
        if person.left_s is None:
            person.left_s = person.clock_s()
            await self._finish(person)
        return person.left_s

    async def finish(self) -> None:
        """End of the meeting: every stream finalised, every final released."""
        for person in self._people.values():
            if person.left_s is None:
                person.left_s = person.clock_s()
        await asyncio.gather(*(self._finish(p) for p in self._people.values()))
        self._merger.drain()
        self._merger.close()

    async def aclose(self) -> None:
        """Abandon the meeting without finalising."""
        self._merger.close()
        for person in self._people.values():
            if person.stream is not None:
                await person.stream.aclose()
            if person.reader is not None:
                person.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await person.reader

    def summary(self) -> dict[str, Any]:
        """The meeting's whole transcript: segments in time order, who spoke how much."""
        segments = [{"index": i, "speaker": who, "text": t.text, "start_s": t.start_s, "end_s": t.end_s,
                     "confidence": round(t.confidence, 3)} for i, (who, t) in enumerate(self._released)]
        speakers = []
        for pid, person in self._people.items():
            said = [t for who, t in self._released if who == pid]
            speakers.append({
                "id": pid, "language": person.language or self.config.language or "",
                "joined_s": round(person.offset_s, 3), "left_s": round(person.left_s or person.clock_s(), 3),
                "talk_time_s": round(sum(t.end_s - t.start_s for t in said), 3),
                "words": sum(len(t.text.split()) for t in said)})
        return {"meetingId": self.config.meeting_id,
                "text": " ".join(f"{who}: {t.text}" for who, t in self._released),
                "segments": segments, "speakers": speakers, "duration": round(self.clock_s, 3)}

    # -- inside ---------------------------------------------------------------------------

    def _open(self, spec: ParticipantSpec) -> EngineStream:
        return self._engine.stream(self.config.audio, language=spec.language or self.config.language,
                                   model=self.config.model, interim_results=self.config.interim_results,
                                   word_timestamps=self.config.words, prompt=self.config.vocabulary)

    async def _finish(self, person: Participant) -> None:
        if person.stream is not None:
            await person.stream.finish()
        if person.reader is not None:
            await person.reader
        self._merger.finished(person.spec.id)

    async def _read(self, person: Participant) -> None:
        assert person.stream is not None
        pid = person.spec.id
        async for result in person.stream.results():
            if isinstance(result, SpeechEvent):
                if result.kind is SpeechEventKind.STARTED:
                    self._merger.started(pid, result.index, person.offset_s + result.at_s)
                continue
            moved = _moved(result, person.offset_s)
            if moved.is_final:
                person.finals.append(moved)
                self._merger.final(pid, result.index, moved.start_s, (pid, moved))
            else:
                self._on_result(pid, moved)
        self._merger.finished(pid)

    def _release(self, item: tuple[str, Transcript]) -> None:
        pid, transcript = item
        transcript = replace(transcript, index=len(self._released))
        self._released.append((pid, transcript))
        self._on_result(pid, transcript)

    @property
    def finals_released(self) -> int:
        return len(self._released)


def _moved(t: Transcript, offset_s: float) -> Transcript:
    words = tuple(Word(w.text, round(w.start_s + offset_s, 3), round(w.end_s + offset_s, 3), w.probability)
                  for w in t.words)
    return replace(t, start_s=round(t.start_s + offset_s, 3), end_s=round(t.end_s + offset_s, 3), words=words)
