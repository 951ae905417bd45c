"""What a whole recording says beyond its words: who spoke when (`speakers`, `segments`) and
what it was about (`topics`). Used by `/v1/progressive` once a file is transcribed.

    analysis = Analysis()                                   # one per app; models load on first use
    segments = await analysis.diarize(pcm16, 16000, finals, speakers=None)
    phrases = await analysis.topics(text)                   # [(phrase, relevance)]
    analysis.close()

Both run on the analysis thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from app.analysis.speakers import SpeakerEncoder
    from app.pipeline.types import Transcript


@dataclass(frozen=True, slots=True)
class Segment:
    """A final stretch of transcript; `speaker` is a label ("speaker_0", ...) when diarized."""

    index: int
    text: str
    start_s: float
    end_s: float
    confidence: float
    speaker: str | None = None


class Analysis:
    """The speaker encoder (loaded once, on first use) and the key-phrase extractor."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="analysis")
        self._encoder: SpeakerEncoder | None = None
        self._loading = asyncio.Lock()

    async def diarize(self, audio: np.ndarray, rate: int, finals: Sequence[Transcript],
                      speakers: int | None = None) -> list[Segment]:
        """`finals` (with word times) split and labelled by speaker; `audio` is the whole
        recording (int16 mono at `rate`), `speakers` the number of speakers if known."""
        from app.analysis.segments import label_segments

        encoder = await self._speaker_encoder()
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, label_segments, encoder, audio, rate, list(finals), speakers)

    async def topics(self, text: str) -> list[tuple[str, float]]:
        """The transcript's key phrases with their relevance (1.0 the most relevant)."""
        from app.analysis.topics import key_phrases

        return await asyncio.get_running_loop().run_in_executor(self._pool, key_phrases, text)

    async def _speaker_encoder(self) -> SpeakerEncoder:
        async with self._loading:
            if self._encoder is None:
                from app.analysis.speakers import SpeakerEncoder

                self._encoder = await asyncio.get_running_loop().run_in_executor(self._pool, SpeakerEncoder.load)
            return self._encoder

    def close(self) -> None:
        """Stop the analysis thread (blocking)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
