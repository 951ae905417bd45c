"""Topics: the key phrases of a transcript, by YAKE! (statistical keyword extraction from the
text alone: no model, nothing downloaded).

YAKE scores a phrase lower the more relevant it is; `key_phrases` turns that into a relevance
in (0, 1], 1.0 for the best phrase, so higher means more relevant as elsewhere in the API.
"""

from __future__ import annotations

MAX_PHRASES = 10
MAX_WORDS = 3  # longest phrase


def key_phrases(text: str, top: int = MAX_PHRASES) -> list[tuple[str, float]]:
    """Up to `top` key phrases of `text`, most relevant first, with their relevance."""
    import yake

    if not text.strip():
        return []
    extractor = yake.KeywordExtractor(lan="en", n=MAX_WORDS, dedupLim=0.7, top=top)
    found = sorted(extractor.extract_keywords(text), key=lambda kw: kw[1])
    if not found:
        return []
    best = max(found[0][1], 1e-12)
    return [(str(phrase), round(float(best / max(score, 1e-12)), 4)) for phrase, score in found]
