"""Transcripts split and labelled by speaker: the diarization of one recording, in the
shape `/v1/progressive` returns.

Each word takes the speaker of the speech window nearest its middle; an utterance whose
words change speaker is split there (Whisper's VAD utterances often hold both sides of a
quick exchange). An utterance without word times takes its windows' majority speaker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from app.analysis import Segment
from app.analysis.speakers import SpeakerEncoder, cluster, in_speech, smooth
from app.pipeline.types import Transcript, Word


def label_segments(encoder: SpeakerEncoder, audio: np.ndarray, rate: int, finals: Sequence[Transcript],
                   speakers: int | None = None) -> list[Segment]:
    """`finals` as speaker-labelled segments, numbered from 0 (blocking)."""
    if rate != 16000:
        raise ValueError("the speaker encoder takes 16 kHz audio")
    samples = np.asarray(audio, dtype=np.float32) / 32768.0
    embeddings, centres = encoder.embed(samples)
    speech = in_speech(centres, [(t.start_s, t.end_s) for t in finals])
    labels = np.full(len(centres), -1, dtype=np.int64)
    if speech.any():
        labels[speech] = smooth(cluster(embeddings[speech], speakers))
    at, who = centres[labels >= 0], labels[labels >= 0]

    def speaker_at(t: float) -> int:
        return int(who[np.abs(at - t).argmin()]) if len(at) else 0

    segments: list[Segment] = []
    for final in finals:
        for text, start, end, label in _split(final, speaker_at):
            segments.append(Segment(len(segments), text, round(start, 3), round(end, 3), final.confidence,
                                    f"speaker_{label}"))
    return segments


def _split(final: Transcript, speaker_at: Callable[[float], int]) -> list[tuple[str, float, float, int]]:
    if not final.words:
        middle = (final.start_s + final.end_s) / 2
        return [(final.text, final.start_s, final.end_s, speaker_at(middle))]
    runs: list[tuple[list[Word], int]] = []
    for word in final.words:
        label = speaker_at((word.start_s + word.end_s) / 2)
        if _is_punctuation(word.text) and runs:
            runs[-1][0].append(word)  # punctuation stays with the word before it
        elif runs and runs[-1][1] == label:
            runs[-1][0].append(word)
        else:
            runs.append(([word], label))
    if len(runs) == 1:
        return [(final.text, final.start_s, final.end_s, runs[0][1])]
    out = []
    for i, (words, label) in enumerate(runs):
        start = final.start_s if i == 0 else words[0].start_s
        end = final.end_s if i == len(runs) - 1 else words[-1].end_s
        out.append((_join(words), start, end, label))
    return out


def _is_punctuation(text: str) -> bool:
    return not re.search(r"\w", text)


def _join(words: Sequence[Word]) -> str:
    text = ""
    for word in words:
        text += word.text if (_is_punctuation(word.text) or not text) else " " + word.text
    return text
