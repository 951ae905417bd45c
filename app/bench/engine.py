"""`python -m app bench engine`: Hearsay's streaming engine against stock faster-whisper.

Every clip with a transcript in the speech directory crosses the telephone channel (8 kHz
G.711 mu-law) and then goes, in the same run and on the same loaded model:
- through Hearsay: an `EngineStream` fed 20 ms frames as fast as it takes them (WER,
  finalisation compute per utterance, real-time factor), then a real-time pass over a few
  clips (time to first interim, end of speech -> final latency);
- through stock `WhisperModel.transcribe()` on the whole clip (beam 1), the usual approach.
It also checks that 60 s of silence and the noise clip produce no words.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

from app.audiofile import iter_pcm16
from app.bench.common import SPEECH_DIR, speech_end_s
from app.pipeline.decode import decode, encode
from app.pipeline.engine import SpeechEngine
from app.pipeline.resample import resample_whole
from app.pipeline.types import AudioFormat, Encoding, Transcript
from app.settings import load_settings

FRAME = 160  # 20 ms of 8 kHz mu-law
TAIL_S = 1.0
REALTIME_CLIPS = ("jfk", "ljspeech-LJ001-0005", "arctic-aew-a0003", "timit-LDC93S1", "cards-005",
                  "ljspeech-LJ001-0013")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speech", default=str(SPEECH_DIR),
                        help=f"directory with manifest.tsv and the clips (default: {SPEECH_DIR}; "
                             "or set HEARSAY_SPEECH_DIR)")
    parser.add_argument("--config", default="settings.toml")
    parser.add_argument("--no-realtime", action="store_true", help="skip the real-time latency pass")
    parser.add_argument("--json", help="also write the figures to this JSON file")


@dataclass
class Clip:
    id: str
    reference: str
    ulaw: bytes  # the telephone channel's bytes, with TAIL_S of silence after the speech
    speech_end_s: float  # true end of speech in the clip (energy-based)
    duration_s: float


@dataclass
class Figures:
    wer: float = 0.0
    finalize_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    audio_s: float = 0.0
    hyps: dict[str, str] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config if Path(args.config).is_file() else None)
    clips = load_clips(Path(args.speech))
    engine = SpeechEngine.load(settings.asr, settings.vad)
    try:
        report = asyncio.run(_bench(engine, clips, Path(args.speech), not args.no_realtime))
    finally:
        engine.close()
    print_report(report, settings.asr.model, settings.asr.compute_type)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def load_clips(speech_dir: Path) -> list[Clip]:
    clips = []
    with (speech_dir / "manifest.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["kind"] != "transcript":
                continue
            audio = np.concatenate(list(iter_pcm16(speech_dir / row["file"], 16000))).astype(np.float32) / 32768
            padded = np.concatenate([audio, np.zeros(int(TAIL_S * 16000), np.float32)])
            ulaw = encode(resample_whole(padded, 16000, 8000), Encoding.MULAW)
            clips.append(Clip(row["id"], row["reference"], ulaw, speech_end_s(audio, 16000), len(audio) / 16000))
    return clips


async def _bench(engine: SpeechEngine, clips: list[Clip], speech_dir: Path, realtime: bool) -> dict[str, object]:
    for clip in clips[:2]:  # warm-up
        await _stream(engine, clip.ulaw)
    hearsay = Figures()
    for clip in clips:
        began = time.perf_counter()
        results, _ = await _stream(engine, clip.ulaw)
        hearsay.wall_s += time.perf_counter() - began
        hearsay.audio_s += len(clip.ulaw) / 8000
        finals = [t for t in results if t.is_final]
        hearsay.finalize_ms += [t.compute_s * 1000 for t in finals]
        hearsay.hyps[clip.id] = " ".join(t.text for t in finals)
    hearsay.wer = score(clips, hearsay.hyps)

    stock = await asyncio.to_thread(_stock, engine, clips)
    silence_words, noise_words = await _no_words(engine, speech_dir)
    live = await _realtime(engine, [c for c in clips if c.id in REALTIME_CLIPS]) if realtime else {}
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "clips": len(clips),
        "hearsay": _summary(hearsay),
        "stock": _summary(stock),
        "silence_60s_words": silence_words,
        "noise_clip_words": noise_words,
        "realtime": live,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


async def _stream(engine: SpeechEngine, ulaw: bytes, pace: bool = False) -> tuple[list[Transcript], float]:
    """Stream one clip; returns the results and the monotonic time its audio started."""
    stream = engine.stream(AudioFormat(Encoding.MULAW, 8000), interim_results=pace)
    results: list[Transcript] = []

    async def collect() -> None:
        async for result in stream.results():
            if isinstance(result, Transcript):  # speech events are not measured here
                results.append(result)

    collector = asyncio.create_task(collect())
    start = time.monotonic()
    for n, i in enumerate(range(0, len(ulaw), FRAME)):
        if pace:  # real time against an absolute clock, so pacing does not drift
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
        await stream.feed(ulaw[i : i + FRAME])
    await stream.finish()
    await collector
    return results, start


def _stock(engine: SpeechEngine, clips: list[Clip]) -> Figures:
    model = engine.recognizer(None).whisper
    figures = Figures()
    for clip in clips:
        audio = resample_whole(decode(clip.ulaw, Encoding.MULAW), 8000)
        began = time.perf_counter()
        segments, _ = model.transcribe(audio, beam_size=1, language="en")
        text = " ".join(s.text.strip() for s in segments)
        spent = time.perf_counter() - began
        figures.finalize_ms.append(spent * 1000)
        figures.wall_s += spent
        figures.audio_s += len(clip.ulaw) / 8000
        figures.hyps[clip.id] = text
    figures.wer = score(clips, figures.hyps)
    return figures


async def _no_words(engine: SpeechEngine, speech_dir: Path) -> tuple[int, int]:
    silence = encode(np.zeros(60 * 8000, np.float32), Encoding.MULAW)
    noise = np.concatenate(list(iter_pcm16(speech_dir / "noise-dishes.wav", 8000))).astype(np.float32) / 32768
    counts = []
    for ulaw in (silence, encode(noise, Encoding.MULAW)):
        results, _ = await _stream(engine, ulaw)
        counts.append(sum(len(t.text.split()) for t in results if t.is_final))
    return counts[0], counts[1]


async def _realtime(engine: SpeechEngine, clips: list[Clip]) -> dict[str, object]:
    first_interim, latency = [], []
    for clip in clips:
        results, start = await _stream(engine, clip.ulaw, pace=True)
        interims = [t for t in results if not t.is_final]
        finals = [t for t in results if t.is_final]
        if interims:
            first_interim.append(interims[0].emitted_at - start - interims[0].start_s)
        if finals:
            latency.append(finals[-1].emitted_at - start - clip.speech_end_s)
    return {"clips": len(clips), "first_interim_s": _pcts(first_interim), "end_of_speech_to_final_s": _pcts(latency)}


def score(clips: list[Clip], hyps: dict[str, str]) -> float:
    norm = EnglishTextNormalizer()
    refs = [norm(c.reference) for c in clips]
    out = [norm(hyps.get(c.id, "")) for c in clips]
    return float(jiwer.wer(refs, out))


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": round(float(np.median(values)), 3), "p95": round(float(np.percentile(values, 95)), 3),
            "max": round(max(values), 3), "n": len(values)}


def _summary(f: Figures) -> dict[str, object]:
    return {"wer_pct": round(f.wer * 100, 2), "finalize_ms": _pcts(f.finalize_ms),
            "rtf": round(f.wall_s / f.audio_s, 4) if f.audio_s else None, "transcripts": f.hyps}


def print_report(r: dict[str, object], model: str, compute_type: str) -> None:
    h, s = r["hearsay"], r["stock"]
    assert isinstance(h, dict) and isinstance(s, dict)
    print(f"engine benchmark: {r['clips']} clips through 8 kHz mu-law, model {model} ({compute_type}); {r['machine']}")
    print(f"{'':28s}{'WER %':>8s}{'finalize p50 ms':>17s}{'p95 ms':>9s}{'RTF':>8s}")
    for name, f in (("hearsay streaming", h), ("stock transcribe() per clip", s)):
        fin = f["finalize_ms"]
        print(f"{name:28s}{f['wer_pct']:8.2f}{fin.get('p50', 0):17.0f}{fin.get('p95', 0):9.0f}{f['rtf']:8.3f}")
    print(f"words on 60 s of silence: {r['silence_60s_words']}; on the noise clip: {r['noise_clip_words']}")
    live = r.get("realtime")
    if isinstance(live, dict) and live:
        print(f"real time ({live['clips']} clips): first interim after speech start {live['first_interim_s']}; "
              f"end of speech -> final {live['end_of_speech_to_final_s']}")
    print(f"peak RSS: {r['peak_rss_mb']} MB")
