"""The speech pipeline, one stage per module, in flow order:

decode -> resample -> vad -> recognize, tied together per call by `engine_stream.EngineStream`
and scheduled for all calls by `scheduling`; `engine.SpeechEngine` loads the models once per
process (`models` resolves their names) and opens the streams.

The engine's contract is importable from here: `SpeechEngine`, `EngineStream`, the value types
that go in and come out (`AudioFormat`, `Encoding`, `Transcript`, `Word`, `SpeechEvent`,
`SpeechEventKind`, `EngineResult`), the errors, and `MIN_RATE`/`MAX_RATE`, the sample rates
(Hz) a stream accepts. `SpeechEngine` and `EngineStream` are imported on first use (a module
`__getattr__`): they bring in torch and CTranslate2, which take seconds, and this package is
also imported by light modules (`decode`, the wire protocols) that need none of that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from app.pipeline.errors import (
    AudioFormatError,
    EngineError,
    StreamClosedError,
    UnknownModelError,
)
from app.pipeline.types import (
    AudioFormat,
    Encoding,
    EngineResult,
    SpeechEvent,
    SpeechEventKind,
    Transcript,
    Word,
)

if TYPE_CHECKING:
    from app.pipeline.engine import SpeechEngine
    from app.pipeline.engine_stream import EngineStream

# The sample rates (Hz) a stream accepts: from narrowband telephony to studio audio.
MIN_RATE = 8000
MAX_RATE = 48000

__all__ = [
    "MAX_RATE",
    "MIN_RATE",
    "AudioFormat",
    "AudioFormatError",
    "Encoding",
    "EngineError",
    "EngineResult",
    "EngineStream",
    "SpeechEngine",
    "SpeechEvent",
    "SpeechEventKind",
    "StreamClosedError",
    "Transcript",
    "UnknownModelError",
    "Word",
]

_LAZY = {"SpeechEngine": "app.pipeline.engine", "EngineStream": "app.pipeline.engine_stream"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
