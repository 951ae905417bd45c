"""`app/analysis/topics.py`: key phrases of a real transcript (YAKE!, no model download)."""

from __future__ import annotations

from speech import reference

from app.analysis.topics import key_phrases


def test_key_phrases_of_a_transcript_most_relevant_first() -> None:
    text = " ".join(reference(f"ljspeech-LJ001-{i:04d}") for i in range(1, 11))
    phrases = key_phrases(text)
    assert 0 < len(phrases) <= 10
    assert phrases[0][1] == 1.0 and all(0 < score <= 1.0 for _, score in phrases)
    assert [s for _, s in phrases] == sorted((s for _, s in phrases), reverse=True)
    # The passage is about printing and books.
    assert any("print" in p.lower() or "book" in p.lower() for p, _ in phrases[:5]), phrases


def test_nothing_said_has_no_topics() -> None:
    assert key_phrases("   ") == []
