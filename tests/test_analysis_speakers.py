"""`app/analysis/speakers.py` and `segments.py`: real voices through Resemblyzer's encoder
(its weights ship in its wheel) and the clustering that counts them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from speech import load

from app.analysis.speakers import SpeakerEncoder, cluster, in_speech


@pytest.fixture(scope="module")
def encoder() -> Iterator[SpeakerEncoder]:
    yield SpeakerEncoder.load()


def voices(clip_ids: list[str]) -> np.ndarray:
    return np.concatenate([load(c) for c in clip_ids])


def test_one_voice_is_one_speaker(encoder: SpeakerEncoder) -> None:
    embeddings, centres = encoder.embed(voices([f"ljspeech-LJ001-{i:04d}" for i in range(1, 6)]))
    assert len(embeddings) == len(centres) and len(centres) > 100  # 4 windows a second over 34 s
    assert set(cluster(embeddings).tolist()) == {0}


def test_two_voices_are_two_speakers_split_where_the_voice_changes(encoder: SpeakerEncoder) -> None:
    jfk = load("jfk")
    embeddings, centres = encoder.embed(np.concatenate([jfk, voices(["ljspeech-LJ001-0001", "ljspeech-LJ001-0003"])]))
    labels = cluster(embeddings)
    assert set(labels.tolist()) == {0, 1}
    change = len(jfk) / 16000
    # Windows wholly inside one voice carry that voice's label (a 1.6 s window straddles the change).
    assert set(labels[centres < change - 0.8].tolist()) == {0}
    assert set(labels[centres > change + 0.8].tolist()) == {1}


def test_voices_that_speak_little_are_not_lost_beside_one_that_speaks_most(encoder: SpeakerEncoder) -> None:
    lj = [f"ljspeech-LJ001-{i:04d}" for i in range(1, 17)]  # 110 s of one voice
    others = ["jfk", "arctic-aew-a0001", "arctic-aew-a0002", "arctic-aew-a0003"]  # 11 s each
    source = {c: c.split("-")[0] for c in lj + others}
    order = lj[:8] + others[:1] + lj[8:] + others[1:]
    embeddings, centres = encoder.embed(voices(order))
    labels = cluster(embeddings)
    ends = np.cumsum([len(load(c)) / 16000 for c in order])
    owner = [source[order[int(np.searchsorted(ends, t))]] for t in centres]
    by_source: dict[str, set[int]] = {}
    for who, label, t in zip(owner, labels.tolist(), centres, strict=True):
        if np.min(np.abs(ends - t)) > 0.8:  # windows wholly inside one clip
            by_source.setdefault(who, set()).add(label)
    assert len(set(labels.tolist())) == 3
    assert all(len(found) == 1 for found in by_source.values()), by_source
    assert len({min(found) for found in by_source.values()}) == 3


def test_a_known_number_of_speakers_is_used(encoder: SpeakerEncoder) -> None:
    embeddings, _ = encoder.embed(voices(["jfk", "arctic-aew-a0001", "ljspeech-LJ001-0001"]))
    assert len(set(cluster(embeddings, speakers=3).tolist())) == 3
    assert set(cluster(embeddings, speakers=1).tolist()) == {0}


def test_windows_in_speech() -> None:
    mask = in_speech(np.array([0.5, 1.5, 2.5, 3.5]), [(1.0, 2.0), (3.0, 4.0)])
    assert mask.tolist() == [False, True, False, True]
