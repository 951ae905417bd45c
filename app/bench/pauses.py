"""`python -m app bench pauses`: what the end-of-turn policy has to go on, at every pause.

Each sentence of `bench engine`'s dev sets (app/bench/devsets.py), as spoken and with a 500 ms
pause put at the word boundary nearest its middle, crosses the telephone channel and goes
through the engine. At every pause the VAD announces, the verdict's inputs are recorded (the
`hearsay.turns` DEBUG records of `EngineStream._judge`): Smart Turn's probability that the
caller has finished and Whisper's probability that its transcript ends a sentence.

A pause is *mid-sentence* unless it is the item's last; the last is a *finished turn* when the
reference ends with `.`, `?` or `!` (an LJSpeech fragment that stops on a comma is neither). So
Whisper's view is known at every pause, `[turn] complete_threshold` is 0 for the run: pauses
the shipped policy would not ask Whisper about are asked, and where that changes a verdict it
can move later pauses of the same item.

Printed, per dev set and together, for a grid of (Smart Turn, sentence end) thresholds: the
share of finished turns that take the fast path (final after `[vad] min_silence_ms`) and the
share of mid-sentence pauses that would be cut as finished at any length; the shipped pair is
marked. docs/engine.md reads the table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from app.bench.common import SPEECH_DIR
from app.bench.devsets import Item, split_at_middle_word
from app.bench.engine import TURN_TAIL_S, dev_sets, stream_ulaw, telephone
from app.pipeline.engine import SpeechEngine
from app.pipeline.engine_stream import JUDGED_LOG
from app.settings import TurnSettings, load_settings

SMART_TURN = (0.5, 0.7, 0.9, 0.95)
SENTENCE_END = (0.7, 0.8, 0.85, 0.9)


@dataclass(frozen=True, slots=True)
class Pause:
    dev_set: str
    item: str
    label: str  # "finished", "mid" or "unfinished-end"
    smart_turn: float
    sentence_end: float | None


class _Judged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[float, float | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((getattr(record, "turn_probability", 0.0), getattr(record, "sentence_end", None)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speech", default=str(SPEECH_DIR), help="directory with manifest.tsv and the clips")
    parser.add_argument("--config", default="settings.toml")
    parser.add_argument("--sets", default="speech,passages", help="dev sets (default: speech,passages)")
    parser.add_argument("--json", help="also write every pause to this JSON file")


def run(args: argparse.Namespace) -> int:
    from app.talkback.tts import load_piper_voice

    settings = load_settings(args.config if Path(args.config).is_file() else None)
    if settings.turn.model == "none":
        print("bench pauses: [turn] model is none; nothing judges pauses")
        return 2
    sets = dev_sets(Path(args.speech), load_piper_voice(), args.sets.split(","))
    asking = dataclasses.replace(settings.turn, complete_threshold=0.0)
    engine = SpeechEngine.load(settings.asr, settings.vad, turn=asking)
    judged = _Judged()
    logger = logging.getLogger(JUDGED_LOG)
    logger.addHandler(judged)
    logger.setLevel(logging.DEBUG)
    try:
        pauses = asyncio.run(_collect(engine, [(d.name, d.sentences) for d in sets], judged))
    finally:
        logger.removeHandler(judged)
        engine.close()
    print(report(pauses, settings.turn))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(p) for p in pauses], indent=1))
    return 0


async def _collect(engine: SpeechEngine, sets: list[tuple[str, list[Item]]], judged: _Judged) -> list[Pause]:
    model = engine.recognizer(None).whisper
    pauses: list[Pause] = []
    try:
        for name, items in sets:
            for item in items:
                variants = await asyncio.to_thread(split_at_middle_word, item, model, (0.5,))
                for audio in [item.audio, *variants]:
                    judged.seen.clear()
                    await stream_ulaw(engine, telephone(audio, TURN_TAIL_S))
                    pauses += _label(name, item, judged.seen)
    finally:
        await engine.aclose()
    return pauses


def _label(dev_set: str, item: Item, seen: list[tuple[float, float | None]]) -> list[Pause]:
    last = "finished" if item.reference.strip().strip('"')[-1:] in ".?!" else "unfinished-end"
    return [Pause(dev_set, item.id, last if k == len(seen) - 1 else "mid", st, se)
            for k, (st, se) in enumerate(seen)]


def report(pauses: list[Pause], shipped: TurnSettings) -> str:
    groups = sorted({p.dev_set for p in pauses})
    lines = ["fast path: share of finished turns / share of mid-sentence pauses called finished",
             "Smart Turn >=  sentence end >=  " + "  ".join(f"{g:>17s}" for g in [*groups, "all"])]
    for st in SMART_TURN:
        for se in SENTENCE_END:
            cells = [_cell([p for p in pauses if p.dev_set == g or g == "all"], st, se) for g in [*groups, "all"]]
            mark = "  <- shipped" if (st, se) == (shipped.complete_threshold, shipped.sentence_end_threshold) else ""
            lines.append(f"{st:13.2f}  {se:15.2f}  " + "  ".join(f"{c:>17s}" for c in cells) + mark)
    counts = {label: sum(p.label == label for p in pauses) for label in ("finished", "mid", "unfinished-end")}
    lines.append("pauses: " + ", ".join(f"{n} {label}" for label, n in counts.items()))
    return "\n".join(lines)


def _cell(pauses: list[Pause], st: float, se: float) -> str:
    def fast(p: Pause) -> bool:
        return p.smart_turn >= st and p.sentence_end is not None and p.sentence_end >= se

    finished = [p for p in pauses if p.label == "finished"]
    mid = [p for p in pauses if p.label == "mid"]
    if not finished or not mid:
        return "-"
    return f"{100 * sum(map(fast, finished)) / len(finished):3.0f} % / {100 * sum(map(fast, mid)) / len(mid):3.0f} %"
