"""A session's `vocabulary` (hot words or an initial prompt), as every ingress reads it.

The recognizer gets it as Whisper's "previous text": it biases spellings and names toward
it without being transcribed. A string is used as it is (an initial prompt); a list of
hot words becomes "Vocabulary: a; b; c.", a form Whisper reads as a glossary rather than as
a sentence to go on with (a bare comma list made it append the next name to a clip that
ended with "etc.").
"""

from __future__ import annotations

from typing import Any

MAX_CHARS = 1000


def parse_vocabulary(value: Any, where: str) -> str:
    """The prompt for `value` (a string or a list of strings); ValueError naming `where`."""
    if isinstance(value, str) and value.strip():
        text = value.strip()
    elif isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        text = "Vocabulary: " + "; ".join(v.strip() for v in value) + "."
    else:
        raise ValueError(f"{where}: expected a string or a list of strings")
    if len(text) > MAX_CHARS:
        raise ValueError(f"{where}: at most {MAX_CHARS} characters")
    return text
