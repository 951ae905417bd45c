"""`python -m app bench progressive`: long files through `/v1/progressive` against stock
faster-whisper, and diarization error on the two-speaker conversation.

- A long file: every clip of the speech directory that has a transcript, joined with 1 s of
  silence between them (`--repeat` times), encoded as MP3. The SDK sends it to the real app
  in `--chunk-mb` chunks and waits for the transcript: throughput in x real time (audio
  seconds per second, from create to the final answer, upload included) and WER. Then the same
  MP3 through stock `WhisperModel.transcribe()` (beam 1, the same loaded model): time and WER.
  Then once more through `/v1/progressive` with `diarize` and `topics`, for their cost.
- The conversation (`conversation-*.wav` and its RTTM) with `diarize`: DER with no collar and
  with the usual 0.25 s collar, and the number of speakers found.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.audiofile import iter_pcm16
from app.bench.common import SPEECH_DIR, serve_app, wer
from app.bench.der import Turn, der, read_rttm
from app.bench.media import encode
from app.pipeline.engine import SpeechEngine
from app.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speech", default=str(SPEECH_DIR), help="directory with manifest.tsv and the clips")
    parser.add_argument("--config", default="settings.toml")
    parser.add_argument("--repeat", type=int, default=1, help="join the clips this many times (default 1: ~3 min)")
    parser.add_argument("--chunk-mb", type=float, default=5.0, help="upload chunk size in MB (default 5)")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    import tempfile

    settings = load_settings(args.config if Path(args.config).is_file() else None)
    speech = Path(args.speech)
    pcm, reference = long_recording(speech, args.repeat)
    mp3 = encode(pcm, "mp3")
    conversation = next(speech.glob("conversation-*.wav"))
    talk = (conversation.name, conversation.read_bytes(), read_rttm(next(speech.glob("conversation-*.rttm"))))
    engine = SpeechEngine.load(settings.asr, settings.vad)
    try:
        with tempfile.TemporaryDirectory(prefix="hearsay-bench-") as tmp:
            settings = _local(settings, Path(tmp))
            report = asyncio.run(_bench(settings, engine, mp3, len(pcm) / 16000, reference, talk,
                                        int(args.chunk_mb * 1_000_000)))
    finally:
        engine.close()
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def long_recording(speech: Path, repeat: int) -> tuple[np.ndarray, str]:
    """Every transcript clip joined with 1 s gaps, `repeat` times: int16 samples and the reference."""
    parts, texts = [], []
    with (speech / "manifest.tsv").open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["kind"] == "transcript"]
    for _ in range(repeat):
        for row in rows:
            parts += [np.concatenate(list(iter_pcm16(speech / row["file"], 16000))), np.zeros(16000, np.int16)]
            texts.append(row["reference"])
    return np.concatenate(parts).astype(np.int16), " ".join(texts)


def _local(settings: Any, tmp: Path) -> Any:
    import dataclasses

    plans = tmp / "dialplans"
    plans.mkdir()
    return dataclasses.replace(
        settings, http=dataclasses.replace(settings.http, host="127.0.0.1", port=0),
        sip=dataclasses.replace(settings.sip, enabled=False),
        talkback=dataclasses.replace(settings.talkback, preload_voice=False),
        dialplans=dataclasses.replace(settings.dialplans, dir=str(plans)),
        webhooks=dataclasses.replace(settings.webhooks, outbox=str(tmp / "outbox.sqlite3")))


async def _progressive(url: str, data: bytes, chunk: int, config: dict[str, Any]) -> tuple[Any, float]:
    from hearsay_client import Hearsay

    began = time.perf_counter()
    async with Hearsay(url=url) as client:
        prog = await client.streaming.create_progressive_session(config)
        for i in range(0, len(data), chunk):
            await prog.send_chunk(data[i:i + chunk])
        final = await prog.finalize()
    return final, time.perf_counter() - began


async def _bench(settings: Any, engine: SpeechEngine, mp3: bytes, duration_s: float, reference: str,
                 talk: tuple[str, bytes, list[Turn]], chunk: int) -> dict[str, Any]:
    report: dict[str, Any] = {"audio_s": round(duration_s, 1), "mp3_bytes": len(mp3), "chunk_bytes": chunk}
    async with serve_app(settings, engine=engine) as app:
        url = app.url("/", "ws").rstrip("/")
        await _progressive(url, mp3[: len(mp3) // 20], chunk, {})  # warm-up
        final, spent = await _progressive(url, mp3, chunk, {"return_segments": True})
        report["progressive"] = {"wall_s": round(spent, 2), "x_realtime": round(duration_s / spent, 1),
                                 "wer_pct": round(100 * wer(reference, final.text), 2),
                                 "segments": len(final.segments)}
        final, spent = await _progressive(url, mp3, chunk, {"diarize": True, "topics": True})
        report["progressive_diarize_topics"] = {"wall_s": round(spent, 2), "x_realtime": round(duration_s / spent, 1),
                                                "speakers": len(final.speakers),
                                                "topics": [t.text for t in final.topics[:5]]}
        name, wav, turns = talk
        final, spent = await _progressive(url, wav, chunk, {"diarize": True})
        hyp = [Turn(s.start_s, s.end_s, s.speaker or "") for s in final.segments]
        report["diarization"] = {"file": name, "speakers_found": len(final.speakers),
                                 "speakers_true": len({t.speaker for t in turns}),
                                 "der_pct": round(100 * der(turns, hyp).rate, 1),
                                 "der_collar_025_pct": round(100 * der(turns, hyp, 0.25).rate, 1),
                                 "wall_s": round(spent, 2)}
    report["stock"] = await asyncio.get_running_loop().run_in_executor(None, _stock, engine, mp3, duration_s,
                                                                        reference)
    return report


def _stock(engine: SpeechEngine, mp3: bytes, duration_s: float, reference: str) -> dict[str, Any]:
    import io

    model = engine.recognizer(None).whisper
    began = time.perf_counter()
    segments, _ = model.transcribe(io.BytesIO(mp3), beam_size=1, language="en")
    text = " ".join(s.text.strip() for s in segments)
    spent = time.perf_counter() - began
    return {"wall_s": round(spent, 2), "x_realtime": round(duration_s / spent, 1),
            "wer_pct": round(100 * wer(reference, text), 2)}


def print_report(r: dict[str, Any]) -> None:
    print(f"long file: {r['audio_s']} s of speech clips as MP3 ({r['mp3_bytes']} bytes), "
          f"sent in {r['chunk_bytes']}-byte chunks")
    print(f"{'':34s}{'x real time':>12s}{'WER %':>8s}{'wall s':>8s}")
    for name, key in (("/v1/progressive", "progressive"), ("stock WhisperModel.transcribe()", "stock")):
        f = r[key]
        print(f"{name:34s}{f['x_realtime']:12.1f}{f['wer_pct']:8.2f}{f['wall_s']:8.1f}")
    d = r["progressive_diarize_topics"]
    print(f"{'/v1/progressive diarize+topics':34s}{d['x_realtime']:12.1f}{'':>8s}{d['wall_s']:8.1f}"
          f"   speakers {d['speakers']}, topics {d['topics']}")
    c = r["diarization"]
    print(f"diarization of {c['file']}: {c['speakers_found']} speakers found ({c['speakers_true']} true), "
          f"DER {c['der_pct']} % (collar 0.25 s: {c['der_collar_025_pct']} %)")
