"""A meeting's summary put together by the SDK, for a meeting that reconnected: each server
meeting only knows its own stretch, so the SDK merges every final it received. It has the
shape of the server's `meeting_complete` (`app.meetings.meeting.Meeting.summary`)."""

from __future__ import annotations

from collections.abc import Iterable

from hearsay_client.types import AudioSpan, MeetingSummary, Segment, SpeakerSummary, StreamingResult


def merged_summary(meeting_id: str, finals: Iterable[StreamingResult], people: Iterable[SpeakerSummary],
                   untranscribed: tuple[AudioSpan, ...], reconnects: int) -> MeetingSummary:
    """Every final in meeting-time order, and each participant's talk time and words from
    them (`people` gives who, their language, and when they joined and left)."""
    ordered = sorted(finals, key=lambda r: r.start_s)
    segments = tuple(Segment(i, r.transcript, r.start_s, r.end_s, round(r.confidence, 3), r.speaker_id)
                     for i, r in enumerate(ordered))
    speakers = []
    for person in people:
        said = [s for s in segments if s.speaker == person.id]
        speakers.append(SpeakerSummary(person.id, person.language, person.joined_s, person.left_s,
                                       round(sum(s.end_s - s.start_s for s in said), 3),
                                       sum(len(s.text.split()) for s in said)))
    return MeetingSummary(meeting_id=meeting_id, full_transcript=" ".join(f"{s.speaker}: {s.text}" for s in segments),
                          speakers=tuple(speakers), segments=segments,
                          duration=round(max((s.left_s for s in speakers), default=0.0), 3),
                          untranscribed=untranscribed, reconnects=reconnects)


def by_time(spans: Iterable[tuple[AudioSpan, ...]]) -> tuple[AudioSpan, ...]:
    """Several participants' spans as one list in meeting-time order."""
    return tuple(sorted((s for group in spans for s in group), key=lambda s: (s.start_s, s.speaker or "")))
