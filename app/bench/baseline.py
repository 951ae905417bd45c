"""The load benchmarks' accuracy baseline (`--baseline`): each call's audio transcribed alone.

After the load run, every distinct call the callers made is fed, one at a time and as fast as
the engine takes it, through an engine stream of this process with the service's settings and
the same 8 kHz μ-law bytes a caller sent (what `python -m app transcribe --telephone` does). The
pooled WER of those transcripts, against the same references, is what the service's accuracy
under load is compared with: any difference is what the load costs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.bench.callers import CallerPlan, plans_for, pooled_wer
from app.pipeline.decode import encode
from app.pipeline.engine import SpeechEngine
from app.pipeline.types import AudioFormat, Encoding, Transcript
from app.settings import load_settings

BLOCK_BYTES = 8000  # 1 s of 8 kHz μ-law per feed


def add_baseline(args: argparse.Namespace, n: int, summary: dict[str, Any]) -> dict[str, Any]:
    """`summary` with `wer_alone` when `--baseline` was asked for."""
    if args.baseline:
        summary["wer_alone"] = one_at_a_time_wer(args.config, plans_for(args, n))
    return summary


def one_at_a_time_wer(config: str, plans: Sequence[CallerPlan]) -> float | None:
    """Pooled WER of `plans` with each call transcribed alone (blocking; loads its own engine)."""
    settings = load_settings(config if Path(config).is_file() else None)
    engine = SpeechEngine.load(settings.asr, settings.vad, [], turn=settings.turn)
    try:
        texts = asyncio.run(_transcribe_all(engine, plans))
    finally:
        engine.close()
    return pooled_wer([p.reference for p in plans], [texts[_key(p)] for p in plans])


def _key(plan: CallerPlan) -> tuple[str, ...]:
    return tuple(c.id for c in plan.clips)  # callers saying the same clips send the same audio


async def _transcribe_all(engine: SpeechEngine, plans: Sequence[CallerPlan]) -> dict[tuple[str, ...], str]:
    texts: dict[tuple[str, ...], str] = {}
    try:
        for plan in plans:
            if _key(plan) not in texts:
                texts[_key(plan)] = await _transcribe(engine, plan.samples)
    finally:
        await engine.aclose()
    return texts


async def _transcribe(engine: SpeechEngine, samples: np.ndarray) -> str:
    stream = engine.stream(AudioFormat(Encoding.MULAW, 8000), interim_results=False)
    finals: list[str] = []

    async def collect() -> None:
        async for result in stream.results():
            if isinstance(result, Transcript):
                finals.append(result.text)

    collector = asyncio.create_task(collect())
    audio = encode(samples, Encoding.MULAW)
    for at in range(0, len(audio), BLOCK_BYTES):
        await stream.feed(audio[at:at + BLOCK_BYTES])
    await stream.finish()
    await collector
    return " ".join(finals)
