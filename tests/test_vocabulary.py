"""`app/ingress/vocabulary.py`: a session's hot words or prompt, as every ingress reads it."""

from __future__ import annotations

import pytest

from app.ingress.vocabulary import parse_vocabulary


def test_a_string_is_a_prompt_and_a_list_a_glossary() -> None:
    assert parse_vocabulary("  Meeting about the Q3 budget.  ", "v") == "Meeting about the Q3 budget."
    assert parse_vocabulary(["Philip Steels", " Gutenberg "], "v") == "Vocabulary: Philip Steels; Gutenberg."


@pytest.mark.parametrize("bad", ["", [], ["ok", ""], 42, "x" * 1001])
def test_bad_vocabulary_names_the_key(bad: object) -> None:
    with pytest.raises(ValueError, match="config.vocabulary"):
        parse_vocabulary(bad, "config.vocabulary")
