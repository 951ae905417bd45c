"""`python -m app bench sip --calls N`: N concurrent sipp calls, each streaming speech.

In one process: the speech engine, a Hearsay server and a signature-checking webhook consumer.
SIP runs as the service runs it: one worker process up to 4 calls, else one per 4 calls behind
Kamailio (docs/sip.md). One `sipp` process, on its own, places N calls at once
(tests/sipp/uac_stream.xml) to `[sip] port`, each streaming the same μ-law file in real time:
a second of silence, then a few speech clips separated by silence, then a BYE.

Latency per clip: from the true end of its speech (the moment its last loud frame was due
at Hearsay, counted from when the hub started the call, just before the 200 OK) to the arrival
at the webhook of the `utterance.final` covering it. Reported: p50/p95/max, WER, process CPU
(percent of one core) and peak RSS of the service and of each SIP worker, the bridge's added
latency per frame (worker's pjsua2 -> service, p50/p95 from `hearsay_sip_bridge_latency_seconds`
buckets: "<= x ms"), frames the engine dropped, and audio lost on the way (seconds sent minus
seconds the call received). Target: the largest N with p95 <= 1.5 s and no lost audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.audiofile import iter_pcm16
from app.bench.common import SPEECH_DIR, bench_service, speech_end_s, wer
from app.bench.consumer import WebhookConsumer
from app.keys import CALL_HUB, HEALTH_CHECKS, METRICS
from app.pipeline.decode import encode
from app.pipeline.types import Encoding
from app.settings import Settings, load_settings

DEFAULT_CLIPS = ("arctic-aew-a0001", "timit-LDC93S1", "cards-005")
REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "tests" / "sipp" / "uac_stream.xml"
LEAD_S, GAP_S = 1.0, 2.0
TARGET_P95_S = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=1, help="concurrent sipp calls (default 1)")
    parser.add_argument("--clips", default=",".join(DEFAULT_CLIPS), help="comma-separated clip ids")
    parser.add_argument("--speech-dir", default=str(SPEECH_DIR), help="directory with the clips")
    parser.add_argument("--config", default="settings.toml", help="settings file (engine settings)")
    parser.add_argument("--port", type=int, default=25060, help="SIP port for the run (default 25060)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.calls < 1:
        print("bench sip: --calls must be at least 1", file=sys.stderr)
        return 2
    summary = asyncio.run(_bench(args))
    print(json.dumps(summary) if args.json else _format(summary))
    return 0


def _clip(speech_dir: Path, clip_id: str) -> tuple[np.ndarray, str]:
    """The clip at 8 kHz (float samples) and its reference transcript."""
    audio = np.concatenate(list(iter_pcm16(speech_dir / f"{clip_id}.wav", 8000))).astype(np.float32) / 32768
    reference = ""
    for line in (speech_dir / "manifest.tsv").read_text().splitlines()[1:]:
        cols = line.split("\t")
        if cols[0] == clip_id:
            reference = cols[5]
    return audio, reference


def _call_file(speech_dir: Path, ids: list[str], directory: Path) -> tuple[list[tuple[float, str]], float]:
    """Write directory/clip.ulaw; returns [(end of speech s, reference)] and the file's length."""
    parts = [np.zeros(int(LEAD_S * 8000), np.float32)]
    ends = []
    at = LEAD_S
    for clip_id in ids:
        audio, reference = _clip(speech_dir, clip_id)
        ends.append((at + speech_end_s(audio, 8000), reference))
        parts += [audio, np.zeros(int(GAP_S * 8000), np.float32)]
        at += (len(audio) / 8000) + GAP_S
    audio = np.concatenate(parts)
    (directory / "clip.ulaw").write_bytes(encode(audio, Encoding.MULAW))
    return ends, len(audio) / 8000


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from app.pipeline.engine import SpeechEngine

    loop = asyncio.get_running_loop()
    base: Settings = await loop.run_in_executor(None, load_settings, args.config)
    print(f"bench sip: loading the engine ({base.asr.model}) ...", file=sys.stderr)
    engine = await loop.run_in_executor(None, SpeechEngine.load, base.asr, base.vad, (), base.turn)
    arrivals: dict[str, float] = {}

    def arrived(event: dict[str, Any], at: float) -> None:
        arrivals.setdefault(event["id"], at)

    started: dict[str, float] = {}
    settings = replace(base, sip=replace(base.sip, enabled=True, host="127.0.0.1", port=args.port, allow_from=[],
                                         auth_username="", registrations=[], rtp_port_start=args.port + 1000))
    try:
        async with bench_service(settings, match='sip_user = ["*"]', engine=engine, on_event=arrived) as service:
            consumer = service.consumer
            ends, length_s = _call_file(Path(args.speech_dir), [c for c in args.clips.split(",") if c],
                                        service.workdir)
            hub = service.app[CALL_HUB]

            async def watch() -> None:
                while True:
                    for call in hub.calls():
                        started.setdefault(call.id, call.started_at)
                    await asyncio.sleep(0.01)

            watcher = asyncio.ensure_future(watch())
            workers = [w["pid"] for w in service.app[HEALTH_CHECKS]["sip"]()["workers"]]
            worker_cpu0 = [_cpu_s(pid) for pid in workers]
            cpu0, wall0 = time.process_time(), time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    "sipp", f"127.0.0.1:{args.port}", "-sf", str(SCENARIO), "-s", "100",
                    "-m", str(args.calls), "-l", str(args.calls), "-r", str(args.calls), "-rp", "1000",
                    "-d", str(int((length_s + 0.5) * 1000)), "-i", "127.0.0.1", "-p", str(args.port + 1),
                    "-mp", str(args.port + 3000), "-nostdin", "-timeout", "300s",
                    cwd=service.workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
                _, err = await proc.communicate()
                if proc.returncode:
                    print(f"bench sip: sipp exited {proc.returncode}: {err.decode()[-500:]}", file=sys.stderr)
                async with asyncio.timeout(120):
                    await consumer.wait_for(lambda c: len(c.of_type("call.ended")) >= args.calls)
            finally:
                cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
                watcher.cancel()
                dropped = service.dropped_frames("sip")
                worker_stats = [{"pid": pid, "peak_rss_mb": _peak_rss_mb(pid),
                                 "cpu_percent_of_one_core": round(100 * (_cpu_s(pid) - c0) / wall, 1)}
                                for pid, c0 in zip(workers, worker_cpu0, strict=True)]
                bridge = _bucket_percentiles(service.app[METRICS].sip_bridge_latency, (50, 95))
    finally:
        await engine.aclose()
        await loop.run_in_executor(None, engine.close)
    summary = _summarise(args.calls, consumer, arrivals, started, ends, length_s, cpu, wall, int(dropped))
    summary["workers"] = worker_stats
    summary["bridge_p50_ms_at_most"], summary["bridge_p95_ms_at_most"] = bridge
    return summary


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return 0


def _bucket_percentiles(histogram: Any, wanted: tuple[int, ...]) -> tuple[float | None, ...]:
    """For each percentile, the upper bound (ms) of the histogram bucket it falls in."""
    buckets = [(float(s.labels["le"]), s.value) for family in histogram.collect() for s in family.samples
               if s.name.endswith("_bucket")]
    total = buckets[-1][1] if buckets else 0
    if not total:
        return tuple(None for _ in wanted)
    return tuple(next(round(le * 1000, 1) for le, count in buckets if count >= total * p / 100) for p in wanted)


def _summarise(n: int, consumer: WebhookConsumer, arrivals: dict[str, float], started: dict[str, float],
               ends: list[tuple[float, str]], length_s: float, cpu: float, wall: float, dropped: int
               ) -> dict[str, Any]:
    latencies, wers, lost, missed = [], [], 0.0, 0
    for ended in consumer.of_type("call.ended"):
        call_id = ended["call"]["id"]
        finals = consumer.of_type("utterance.final", call_id)
        for end_s, _ in ends:
            covering = [e for e in finals if e["utterance"]["end_s"] >= end_s - 0.6
                        and e["utterance"]["start_s"] <= end_s]
            if not covering or call_id not in started:
                missed += 1
                continue
            latencies.append(arrivals[covering[0]["id"]] - (started[call_id] + end_s))
        wers.append(wer(" ".join(r for _, r in ends), ended.get("transcript", "")))
        lost += max(0.0, length_s - float(ended.get("duration_s", 0.0)))
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "calls": n, "calls_ended": len(consumer.of_type("call.ended")),
        "utterances_measured": len(latencies), "utterances_missed": missed,
        "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1000),
        "latency_p95_ms": round(float(np.percentile(lat, 95)) * 1000),
        "latency_max_ms": round(float(lat.max()) * 1000),
        "wer": round(float(np.mean(wers)), 3) if wers else None,
        "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "dropped_frames": dropped, "audio_lost_s": round(lost, 2), "wall_s": round(wall, 1),
    }


def _format(s: dict[str, Any]) -> str:
    ok = s["latency_p95_ms"] <= TARGET_P95_S * 1000 and s["audio_lost_s"] < 0.1 and s["dropped_frames"] == 0
    return (f"sip bench: {s['calls']} concurrent sipp call(s), {s['calls_ended']} ended\n"
            f"  end of speech -> webhook: p50 {s['latency_p50_ms']} ms, p95 {s['latency_p95_ms']} ms, "
            f"max {s['latency_max_ms']} ms ({s['utterances_measured']} utterances, "
            f"{s['utterances_missed']} missed)\n"
            f"  WER {s['wer']}   CPU {s['cpu_percent_of_one_core']}% of one core   peak RSS "
            f"{s['peak_rss_mb']} MB   dropped frames {s['dropped_frames']}   audio lost "
            f"{s['audio_lost_s']} s\n"
            f"  SIP workers: " + ", ".join(
                f"pid {w['pid']} CPU {w['cpu_percent_of_one_core']}% RSS {w['peak_rss_mb']} MB"
                for w in s["workers"]) + "\n"
            f"  bridge per frame: p50 <= {s['bridge_p50_ms_at_most']} ms, p95 <= {s['bridge_p95_ms_at_most']} ms\n"
            f"  target (p95 <= 1500 ms, no lost audio): {'met' if ok else 'NOT met'}")
