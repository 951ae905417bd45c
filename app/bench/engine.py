"""`python -m app bench engine`: Hearsay's streaming engine against stock faster-whisper.

On each of two dev sets (`devsets`: `speech`, the clips the engine was tuned on, and
`passages`, speech it was not), every item crosses the telephone channel (8 kHz G.711 mu-law)
and then goes, in the same run and on the same loaded model:
- through Hearsay: an `EngineStream` fed 20 ms frames as fast as it takes them (WER,
  finalisation compute per utterance, real-time factor);
- through stock `WhisperModel.transcribe()` on the whole item (beam 1), the usual approach.
With `--shifts K` both WER passes run K times, the k-th with k/K of 32 ms of silence before
each item: where the VAD's 32 ms chunks and Whisper's 10 ms frames fall on the speech moves
the WER of either by a point or two on these sets (a phone call starts wherever it starts),
so the mean over the shifts is the steadier comparison.
Per set it also measures:
- the false-cut rate: sentences with a pause of 300, 500 or 700 ms inserted at the word
  boundary nearest their middle; the share that come out as more than one final;
- end-of-turn latency: finished sentences played in real time, from the true end of speech
  to the final (p50/p95); and time to the first interim.
Then the end-of-turn model's CPU per call, and that 60 s of silence and the noise clip give
no words.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.bench.common import SPEECH_DIR, normalize, speech_end_s
from app.bench.devsets import Item, load_wav, passage_set, sentence_set, speech_set, split_at_middle_word
from app.pipeline.decode import decode, encode
from app.pipeline.engine import SpeechEngine
from app.pipeline.resample import resample_whole
from app.pipeline.types import AudioFormat, Encoding, Transcript
from app.settings import load_settings

if TYPE_CHECKING:
    from piper.voice import PiperVoice

FRAME = 160  # 20 ms of 8 kHz mu-law
TAIL_S = 1.0  # silence after each item of the WER pass
TURN_TAIL_S = 2.0  # ... of the latency and false-cut passes: longer than [turn] max_silence_ms
SHIFT_SPAN_S = 0.032  # --shifts spreads the items' starts over one VAD chunk
PAUSES_S = (0.3, 0.5, 0.7)
MIN_SPLIT_WORDS = 6
REALTIME_CLIPS = ("jfk", "ljspeech-LJ001-0005", "arctic-aew-a0003", "timit-LDC93S1", "cards-005",
                  "ljspeech-LJ001-0013", "arctic-aew-a0001", "arctic-aew-a0002", "ljspeech-LJ001-0009",
                  "cards-001")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speech", default=str(SPEECH_DIR),
                        help=f"directory with manifest.tsv and the clips (default: {SPEECH_DIR}; "
                             "or set HEARSAY_SPEECH_DIR)")
    parser.add_argument("--config", default="settings.toml")
    parser.add_argument("--sets", default="speech,passages", help="dev sets to run (default: both)")
    parser.add_argument("--no-realtime", action="store_true", help="skip the real-time latency pass")
    parser.add_argument("--shifts", type=int, default=1, metavar="K",
                        help="run the WER passes K times, each item starting k/K of 32 ms later the k-th "
                             "time, and report the mean (default 1)")
    parser.add_argument("--json", help="also write the figures to this JSON file")


@dataclass
class Figures:
    wer: float = 0.0
    finalize_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    audio_s: float = 0.0
    hyps: dict[str, str] = field(default_factory=dict)


@dataclass
class DevSet:
    name: str
    items: list[Item]  # WER
    sentences: list[Item]  # split for false cuts
    finished: list[Item]  # played in real time for end-of-turn latency


def run(args: argparse.Namespace) -> int:
    from app.talkback.tts import load_piper_voice

    settings = load_settings(args.config if Path(args.config).is_file() else None)
    sets = dev_sets(Path(args.speech), load_piper_voice(), args.sets.split(","))
    engine = SpeechEngine.load(settings.asr, settings.vad, turn=settings.turn)
    try:
        report = asyncio.run(_bench(engine, sets, Path(args.speech), not args.no_realtime, max(1, args.shifts)))
    finally:
        engine.close()
    report["settings"] = {"asr": f"{settings.asr.model} ({settings.asr.compute_type})",
                          "turn": repr(settings.turn), "vad_min_silence_ms": settings.vad.min_silence_ms}
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def dev_sets(speech_dir: Path, voice: PiperVoice, names: list[str]) -> list[DevSet]:
    sets = []
    if "speech" in names:
        clips = speech_set(speech_dir)
        sentences = [c for c in clips if len(normalize(c.reference).split()) >= MIN_SPLIT_WORDS]
        sets.append(DevSet("speech", clips, sentences, [c for c in clips if c.id in REALTIME_CLIPS]))
    if "passages" in names:
        spoken = sentence_set(voice)
        finished = [i for i in spoken if i.id.startswith("piper-sentence-")]
        sets.append(DevSet("passages", passage_set(speech_dir, voice), spoken, finished))
    return sets


def telephone(audio: np.ndarray, tail_s: float, lead_s: float = 0.0) -> bytes:
    padded = np.concatenate([np.zeros(int(lead_s * 16000), np.float32), audio,
                             np.zeros(int(tail_s * 16000), np.float32)])
    return encode(resample_whole(padded, 16000, 8000), Encoding.MULAW)


async def _bench(engine: SpeechEngine, sets: list[DevSet], speech_dir: Path, realtime: bool,
                 shifts: int = 1) -> dict[str, object]:
    for item in sets[0].items[:2]:  # warm-up
        await stream_ulaw(engine, telephone(item.audio, TAIL_S))
    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"}
    for dev in sets:
        report[dev.name] = await _bench_set(engine, dev, realtime, shifts)
    report["turn_model_ms_per_call"] = await asyncio.to_thread(_turn_cpu, engine, sets[0].finished or sets[0].items)
    report["silence_60s_words"], report["noise_clip_words"] = await _no_words(engine, speech_dir)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return report


async def _bench_set(engine: SpeechEngine, dev: DevSet, realtime: bool, shifts: int = 1) -> dict[str, object]:
    leads = [k * SHIFT_SPAN_S / shifts for k in range(shifts)]
    hearsays, stocks = [], []  # per lead
    for lead_s in leads:
        hearsays.append(await _hearsay(engine, dev.items, lead_s))
        stocks.append(await asyncio.to_thread(_stock, engine, dev.items, lead_s))
    cuts = await _false_cuts(engine, dev.sentences)
    live = await _realtime(engine, dev.finished) if realtime else {}
    report = {"items": len(dev.items), "hearsay": _summary(hearsays[0]), "stock": _summary(stocks[0]),
              "false_cuts": cuts, "realtime": live}
    if shifts > 1:
        h = [round(f.wer * 100, 2) for f in hearsays]
        s = [round(f.wer * 100, 2) for f in stocks]
        report["shifted"] = {"lead_ms": [round(lead_s * 1000, 1) for lead_s in leads], "hearsay_wer_pct": h,
                             "stock_wer_pct": s, "hearsay_mean": round(float(np.mean(h)), 2),
                             "stock_mean": round(float(np.mean(s)), 2)}
    return report


async def _hearsay(engine: SpeechEngine, items: list[Item], lead_s: float) -> Figures:
    figures = Figures()
    for item in items:
        ulaw = telephone(item.audio, TAIL_S, lead_s)
        began = time.perf_counter()
        results, _ = await stream_ulaw(engine, ulaw)
        figures.wall_s += time.perf_counter() - began
        figures.audio_s += len(ulaw) / 8000
        finals = [t for t in results if t.is_final]
        figures.finalize_ms += [t.compute_s * 1000 for t in finals]
        figures.hyps[item.id] = " ".join(t.text for t in finals)
    figures.wer = score(items, figures.hyps)
    return figures


async def stream_ulaw(engine: SpeechEngine, ulaw: bytes, pace: bool = False) -> tuple[list[Transcript], float]:
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


def _stock(engine: SpeechEngine, items: list[Item], lead_s: float = 0.0) -> Figures:
    model = engine.recognizer(None).whisper
    figures = Figures()
    for item in items:
        ulaw = telephone(item.audio, TAIL_S, lead_s)
        audio = resample_whole(decode(ulaw, Encoding.MULAW), 8000)
        began = time.perf_counter()
        segments, _ = model.transcribe(audio, beam_size=1, language="en")
        text = " ".join(s.text.strip() for s in segments)
        spent = time.perf_counter() - began
        figures.finalize_ms.append(spent * 1000)
        figures.wall_s += spent
        figures.audio_s += len(ulaw) / 8000
        figures.hyps[item.id] = text
    figures.wer = score(items, figures.hyps)
    return figures


async def _false_cuts(engine: SpeechEngine, sentences: list[Item]) -> dict[str, object]:
    """Per pause length: sentences split into more than one final, of those split."""
    model = engine.recognizer(None).whisper
    split: dict[float, list[str]] = {p: [] for p in PAUSES_S}
    counted = 0
    for item in sentences:
        variants = await asyncio.to_thread(split_at_middle_word, item, model, PAUSES_S)
        if not variants:
            continue
        counted += 1
        for pause, audio in zip(PAUSES_S, variants, strict=True):
            results, _ = await stream_ulaw(engine, telephone(audio, TURN_TAIL_S))
            if sum(t.is_final for t in results) > 1:
                split[pause].append(item.id)
    return {f"{int(p * 1000)}ms": {"sentences": counted, "split": len(ids),
                                   "rate_pct": round(100 * len(ids) / counted, 1) if counted else None,
                                   "which": ids} for p, ids in split.items()}


async def _no_words(engine: SpeechEngine, speech_dir: Path) -> tuple[int, int]:
    silence = encode(np.zeros(60 * 8000, np.float32), Encoding.MULAW)
    noise = resample_whole(load_wav(speech_dir / "noise-dishes.wav"), 16000, 8000)
    counts = []
    for ulaw in (silence, encode(noise, Encoding.MULAW)):
        results, _ = await stream_ulaw(engine, ulaw)
        counts.append(sum(len(t.text.split()) for t in results if t.is_final))
    return counts[0], counts[1]


async def _realtime(engine: SpeechEngine, items: list[Item]) -> dict[str, object]:
    first_interim, latency = [], []
    for item in items:
        results, start = await stream_ulaw(engine, telephone(item.audio, TURN_TAIL_S), pace=True)
        interims = [t for t in results if not t.is_final]
        finals = [t for t in results if t.is_final]
        if interims:
            first_interim.append(interims[0].emitted_at - start - interims[0].start_s)
        if finals:
            latency.append(finals[-1].emitted_at - start - speech_end_s(item.audio, 16000))
    return {"clips": len(items), "first_interim_s": _pcts(first_interim), "end_of_turn_s": _pcts(latency)}


def _turn_cpu(engine: SpeechEngine, items: list[Item]) -> dict[str, float] | None:
    """CPU time (this thread's) of one end-of-turn model call, on the end of each item."""
    if engine.turn_model is None:
        return None
    spent = []
    for item in (items * 4)[:20]:
        began = time.thread_time()
        engine.turn_model.score([item.audio])
        spent.append((time.thread_time() - began) * 1000)
    return {"p50": round(float(np.median(spent)), 1), "p95": round(float(np.percentile(spent, 95)), 1)}


def score(items: list[Item], hyps: dict[str, str]) -> float:
    import jiwer

    refs = [normalize(i.reference) for i in items]
    out = [normalize(hyps.get(i.id, "")) for i in items]
    return float(jiwer.wer(refs, out))


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": round(float(np.median(values)), 3), "p95": round(float(np.percentile(values, 95)), 3),
            "max": round(max(values), 3), "n": len(values)}


def _summary(f: Figures) -> dict[str, object]:
    return {"wer_pct": round(f.wer * 100, 2), "finalize_ms": _pcts(f.finalize_ms),
            "rtf": round(f.wall_s / f.audio_s, 4) if f.audio_s else None, "transcripts": f.hyps}


def print_report(r: dict[str, object]) -> None:
    settings = r["settings"]
    assert isinstance(settings, dict)
    print(f"engine benchmark, 8 kHz mu-law, model {settings['asr']}; {r['machine']}")
    print(f"turn: {settings['turn']}")
    for name in ("speech", "passages"):
        dev = r.get(name)
        if not isinstance(dev, dict):
            continue
        h, s = dev["hearsay"], dev["stock"]
        print(f"\n[{name}] {dev['items']} items")
        print(f"{'':28s}{'WER %':>8s}{'finalize p50 ms':>17s}{'p95 ms':>9s}{'RTF':>8s}")
        for label, f in (("hearsay streaming", h), ("stock transcribe() per item", s)):
            fin = f["finalize_ms"]
            print(f"{label:28s}{f['wer_pct']:8.2f}{fin.get('p50', 0):17.0f}{fin.get('p95', 0):9.0f}{f['rtf']:8.3f}")
        print(f"streaming - stock: {h['wer_pct'] - s['wer_pct']:+.2f} points")
        shifted = dev.get("shifted")
        if isinstance(shifted, dict):
            print(f"started {', '.join(f'{ms:g}' for ms in shifted['lead_ms'])} ms later: hearsay "
                  f"{shifted['hearsay_wer_pct']} mean {shifted['hearsay_mean']:.2f}, stock "
                  f"{shifted['stock_wer_pct']} mean {shifted['stock_mean']:.2f}; streaming - stock "
                  f"{shifted['hearsay_mean'] - shifted['stock_mean']:+.2f} points")
        cuts = dev["false_cuts"]
        print("false cuts: " + "; ".join(f"{k} pause {v['split']}/{v['sentences']} ({v['rate_pct']} %)"
                                         for k, v in cuts.items()))
        live = dev.get("realtime")
        if isinstance(live, dict) and live:
            print(f"real time ({live['clips']} finished sentences): end of speech -> final "
                  f"{live['end_of_turn_s']}; first interim after speech start {live['first_interim_s']}")
    print(f"\nend-of-turn model CPU per call (ms): {r['turn_model_ms_per_call']}")
    print(f"words on 60 s of silence: {r['silence_60s_words']}; on the noise clip: {r['noise_clip_words']}")
    print(f"peak RSS: {r['peak_rss_mb']} MB")
