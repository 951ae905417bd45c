"""`python -m app bench twilio --calls N`: N simulated Twilio calls at once, in real time.

In one process: the speech engine, a Hearsay server on a loopback port (signature checks on),
a signature-checking webhook consumer, and N copies of the simulator (`twilio_sim`), each
POSTing the voice webhook and then streaming a few speech clips separated by silence as
20 ms μ-law frames in real time.

End-to-end latency is measured per clip: from the true end of its speech (the last loud
20 ms frame, at the moment the simulator sent it) to the arrival at the webhook of the
`utterance.final` that covers it. Reported: latency p50/p95/max, word error rate, process
CPU (percent of one core) and peak RSS, and audio frames the engine dropped. Targets (as for
the streaming API) on the 2-core reference machine: at 1 call p50 <= 700 ms, p95 <= 1000 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from app.bench.common import SPEECH_DIR, bench_service, speech_end_s, wer
from app.bench.consumer import WebhookConsumer
from app.pipeline.decode import decode
from app.pipeline.types import Encoding
from app.settings import Settings, TwilioSettings, load_settings
from app.sim.twilio import SimCall, new_sid, post_voice_webhook, stream_call
from app.sim.wav import read_wav_mulaw

DEFAULT_CLIPS = ("arctic-aew-a0001", "timit-LDC93S1", "cards-005", "arctic-aew-a0003")
TOKEN = "bench-auth-token"
LEAD_S, GAP_S, HOLD_S = 1.0, 2.0, 1.5
TARGET_P50_S, TARGET_P95_S = 0.7, 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=1, help="concurrent simulated calls (default 1)")
    parser.add_argument("--clips", default=",".join(DEFAULT_CLIPS),
                        help="comma-separated clip ids from the speech directory, played in turn")
    parser.add_argument("--speech-dir", default=str(SPEECH_DIR),
                        help="directory with manifest.tsv (default: $HEARSAY_SPEECH_DIR or ../shared/speech)")
    parser.add_argument("--config", default="settings.toml", help="settings file (engine settings)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.calls < 1:
        print("bench twilio: --calls must be at least 1", file=sys.stderr)
        return 2
    summary = asyncio.run(_bench(args))
    if args.json:
        print(json.dumps(summary))
    else:
        _print(summary)
    return 0


@dataclass(frozen=True, slots=True)
class _Clip:
    id: str
    audio: bytes  # 8 kHz μ-law
    reference: str
    speech_end_s: float  # end of speech within the clip


@dataclass(frozen=True, slots=True)
class _Segment:
    """Where one clip sits in a call: its true end of speech in call seconds."""

    clip: _Clip
    end_s: float


def _base_settings(path: str) -> Settings:
    """The engine settings to measure: the settings file (with env overrides) if it exists."""
    return load_settings(path) if Path(path).exists() else Settings()


def _load_clips(speech_dir: Path, ids: list[str]) -> list[_Clip]:
    rows = (speech_dir / "manifest.tsv").read_text().splitlines()
    manifest = {r.split("\t")[0]: r.split("\t") for r in rows[1:]}
    clips = []
    for clip_id in ids:
        if clip_id not in manifest:
            raise SystemExit(f"bench twilio: unknown clip {clip_id!r} (see {speech_dir}/manifest.tsv)")
        audio = read_wav_mulaw(speech_dir / manifest[clip_id][1])
        clips.append(_Clip(clip_id, audio, manifest[clip_id][5], speech_end_s(decode(audio, Encoding.MULAW), 8000)))
    return clips


def _call_audio(clips: list[_Clip], rotate: int) -> tuple[bytes, list[_Segment]]:
    order = clips[rotate % len(clips):] + clips[: rotate % len(clips)]
    audio = b"\xff" * int(LEAD_S * 8000)
    segments = []
    for clip in order:
        segments.append(_Segment(clip, len(audio) / 8000 + clip.speech_end_s))
        audio += clip.audio + b"\xff" * int(GAP_S * 8000)
    return audio, segments


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from app.pipeline.engine import SpeechEngine

    loop = asyncio.get_running_loop()
    base = await loop.run_in_executor(None, _base_settings, args.config)
    clips = await loop.run_in_executor(None, _load_clips, Path(args.speech_dir),
                                       [c for c in args.clips.split(",") if c])
    print(f"bench twilio: loading the engine ({base.asr.model}) ...", file=sys.stderr)
    engine = await loop.run_in_executor(None, SpeechEngine.load, base.asr, base.vad, (), base.turn)
    arrivals: dict[str, float] = {}

    def arrived(event: dict[str, Any], at: float) -> None:
        arrivals.setdefault(event["id"], at)

    settings = replace(base, twilio=TwilioSettings(auth_token=TOKEN), sip=replace(base.sip, enabled=False))
    try:
        async with bench_service(settings, match='twilio_to = ["*"]', engine=engine, on_event=arrived) as service:
            cpu0, wall0 = time.process_time(), time.monotonic()
            calls = await asyncio.gather(*(_one_call(service.host, clips, n, service.consumer)
                                           for n in range(args.calls)))
            cpu = time.process_time() - cpu0
            wall = time.monotonic() - wall0
            dropped = service.dropped_frames("twilio")
    finally:
        await engine.aclose()
        await loop.run_in_executor(None, engine.close)
    latencies, wers, missed = [], [], 0
    for started_at, segments, events in calls:
        finals = [e for e in events if e["type"] == "utterance.final"]
        for seg in segments:
            covering = [e for e in finals if e["utterance"]["end_s"] >= seg.end_s - 0.6
                        and e["utterance"]["start_s"] <= seg.end_s]
            if not covering:
                missed += 1
                continue
            latencies.append(arrivals[covering[0]["id"]] - (started_at + seg.end_s))
        ended = next(e for e in events if e["type"] == "call.ended")
        wers.append(wer(" ".join(s.clip.reference for s in segments), ended["transcript"]))
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "calls": args.calls,
        "clips_per_call": len(clips),
        "utterances_measured": len(latencies),
        "utterances_missed": missed,
        "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1000),
        "latency_p95_ms": round(float(np.percentile(lat, 95)) * 1000),
        "latency_max_ms": round(float(lat.max()) * 1000),
        "wer": round(float(np.mean(wers)), 3),
        "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "dropped_frames": dropped,
        "wall_s": round(wall, 1),
    }


async def _one_call(host: str, clips: list[_Clip], n: int, consumer: WebhookConsumer
                    ) -> tuple[float, list[_Segment], list[dict[str, Any]]]:
    audio, segments = _call_audio(clips, n)
    call_sid = new_sid("CA")
    async with aiohttp.ClientSession() as session:
        answer = await post_voice_webhook(session, f"http://{host}/twilio/voice", from_=f"+1555010{n:04d}",
                                          to="+15550001111", call_sid=call_sid, auth_token=TOKEN)
        result = await stream_call(session, SimCall(
            url=answer.stream_url, audio=audio, hold_s=HOLD_S, custom_parameters=answer.parameters,
            auth_token=TOKEN, call_sid=call_sid))
    await consumer.wait(call_sid, "call.ended", timeout_s=120)
    events = [e for e in consumer.events if e["call"]["id"] == call_sid]
    return result.started_at, segments, events


def _print(s: dict[str, Any]) -> None:
    print(f"twilio bench: {s['calls']} concurrent call(s), {s['clips_per_call']} clips each, real time")
    print(f"  end of speech -> webhook: p50 {s['latency_p50_ms']} ms, p95 {s['latency_p95_ms']} ms, "
          f"max {s['latency_max_ms']} ms ({s['utterances_measured']} utterances, "
          f"{s['utterances_missed']} missed)")
    print(f"  WER {s['wer']:.3f}   CPU {s['cpu_percent_of_one_core']}% of one core   "
          f"peak RSS {s['peak_rss_mb']} MB   dropped frames {s['dropped_frames']}")
    if s["calls"] == 1:
        ok = s["latency_p50_ms"] <= TARGET_P50_S * 1000 and s["latency_p95_ms"] <= TARGET_P95_S * 1000
        print(f"  target at 1 call (p50 <= 700 ms, p95 <= 1000 ms): {'met' if ok else 'NOT met'}")
