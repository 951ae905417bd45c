"""`python -m app transcribe FILE`: a file through the same engine stream a live call uses.

The file is decoded block by block and fed to an `EngineStream` as fast as the engine takes
it (flow control, not real time); each final utterance is printed as it is ready. With
`--telephone` the audio first crosses an 8 kHz G.711 mu-law channel, exactly the bytes a
phone call would carry. Exit codes: 0 done, 2 the file cannot be read, 1 any other error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

import numpy as np

from app.audiofile import AudioFileError, iter_pcm16, probe
from app.pipeline.decode import encode
from app.pipeline.engine import SpeechEngine
from app.pipeline.errors import EngineError
from app.pipeline.types import AudioFormat, Encoding, EngineResult, Transcript
from app.settings import SettingsError, load_settings

PROGRESS_MIN_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="audio file (any format PyAV/FFmpeg reads)")
    parser.add_argument("--telephone", action="store_true",
                        help="pass the audio through an 8 kHz G.711 mu-law channel first")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per final utterance on stdout")
    parser.add_argument("--model", help="model name or CTranslate2 directory (default: [asr] model)")
    parser.add_argument("--language", help="language code, or auto (default: [asr] language)")
    parser.add_argument("--words", action="store_true", help="include word timings (with --json)")
    parser.add_argument("--config", default="settings.toml", help="settings file (default: settings.toml)")


def run(args: argparse.Namespace) -> int:
    try:
        info = probe(args.file)
    except AudioFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        config = args.config if Path(args.config).is_file() else None
        settings = load_settings(config)
        engine = SpeechEngine.load(settings.asr, settings.vad, [args.model] if args.model else [],
                                   turn=settings.turn)
    except (SettingsError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_transcribe(engine, args, info.duration_s))
    except AudioFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()


async def _transcribe(engine: SpeechEngine, args: argparse.Namespace, duration_s: float | None) -> int:
    audio = AudioFormat(Encoding.MULAW, 8000) if args.telephone else AudioFormat(Encoding.LINEAR16, 16000)
    stream = engine.stream(audio, model=args.model, language=args.language, interim_results=False,
                           word_timestamps=args.words)
    progress = _Progress(duration_s, sys.stderr)
    printer = asyncio.create_task(_print_results(stream.results(), args.json, sys.stdout))
    try:
        blocks = iter_pcm16(args.file, audio.sample_rate)
        while (block := await asyncio.to_thread(next, blocks, None)) is not None:
            payload = (encode(block.astype(np.float32) / 32768.0, Encoding.MULAW)
                       if args.telephone else block.astype("<i2").tobytes())
            await stream.feed(payload)
            progress.update(stream.duration_s)
        await stream.finish()
        await printer
    finally:
        await engine.aclose()
        progress.done()
    return 0


async def _print_results(results: AsyncIterator[EngineResult], as_json: bool, out: TextIO) -> None:
    async for result in results:
        if isinstance(result, Transcript):  # finals only (no interims asked); speech events are not printed
            out.write(_format(result, as_json) + "\n")
            out.flush()


def _format(t: Transcript, as_json: bool) -> str:
    if not as_json:
        return f"[{t.start_s:7.2f} -> {t.end_s:7.2f}] {t.text}"
    body: dict[str, object] = {"index": t.index, "text": t.text, "start_s": t.start_s, "end_s": t.end_s,
                               "confidence": t.confidence, "language": t.language}
    if t.words:
        body["words"] = [{"word": w.text, "start_s": w.start_s, "end_s": w.end_s,
                          "probability": round(w.probability, 3)} for w in t.words]
    return json.dumps(body, ensure_ascii=False)


class _Progress:
    """A progress bar on stderr, for files longer than a minute."""

    def __init__(self, total_s: float | None, out: TextIO) -> None:
        self._total = total_s if total_s and total_s >= PROGRESS_MIN_S else None
        self._out = out
        self._shown = -1

    def update(self, done_s: float) -> None:
        if self._total is None:
            return
        pct = min(100, int(100 * done_s / self._total))
        if pct != self._shown:
            self._shown = pct
            bar = "#" * (pct // 4)
            self._out.write(f"\r[{bar:<25}] {pct:3d}%  {done_s:7.1f}/{self._total:.1f} s")
            self._out.flush()

    def done(self) -> None:
        if self._total is not None and self._shown >= 0:
            self._out.write("\n")
            self._out.flush()
