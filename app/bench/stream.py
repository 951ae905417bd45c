"""`python -m app bench stream --sessions N`: end-to-end latency of the streaming API.

Starts the real app in this process (engine, outbox, delivery worker) on 127.0.0.1 with a
local signature-checking webhook consumer (`app.bench.consumer`), then runs N concurrent
`/v1/stream` sessions. Each session streams clips from the speech directory in real time, in
20 ms binary frames, with `--gap-s` of silence after each clip (so the VAD can end the
utterance). A clip's true end of speech is its end minus its trailing silence; latency is
from the moment that audio was "spoken" (the session's start + its stream time) to the
arrival at the consumer of the clip's last `utterance.final`.

Reports p50/p95/max latency, clips with no final, CPU (percent of one core) and RSS of this
process (server and clients together; clients are light), dropped frames, and how far the
clients' sending fell behind real time (non-zero means the server pushed back).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import resource
import statistics
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from app.bench.common import SPEECH_DIR, bench_service, speech_end_s
from app.settings import Settings, load_settings

FRAME_S = 0.02


@dataclass(frozen=True, slots=True)
class Clip:
    """One speech clip: 16 kHz PCM, and where its speech ends (seconds from its start)."""

    name: str
    pcm: bytes
    speech_end_s: float

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 32000


@dataclass(slots=True)
class SessionLog:
    """What one session sent (clip windows) and when it started, to score its finals."""

    index: int
    session_id: str = ""
    started_at: float = 0.0  # monotonic time of stream second 0
    # (clip name, start, end of speech, end) in stream seconds
    windows: list[tuple[str, float, float, float]] = field(default_factory=list)
    max_lag_s: float = 0.0
    text: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    parser.add_argument("--clips", type=int, default=4, help="clips per session (default 4)")
    parser.add_argument("--gap-s", type=float, default=1.5, help="silence after each clip (default 1.5)")
    parser.add_argument("--speech", default=str(SPEECH_DIR),
                        help="directory with manifest.tsv (default: $HEARSAY_SPEECH_DIR or ../shared/speech)")
    parser.add_argument("--config", default="settings.toml", help="settings file ([asr], [vad])")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.sessions < 1 or args.clips < 1:
        print("bench stream: --sessions and --clips must be at least 1")
        return 2
    clips = load_clips(Path(args.speech))
    if not clips:
        print(f"bench stream: no transcript clips found in {args.speech}")
        return 2
    settings = load_settings(args.config) if Path(args.config).exists() else load_settings(None)
    report = asyncio.run(bench(settings, clips, args.sessions, args.clips, args.gap_s))
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def load_clips(directory: Path) -> list[Clip]:
    """The 16 kHz transcript clips of the manifest, with their end of speech."""
    clips = []
    with (directory / "manifest.tsv").open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["kind"] != "transcript" or row["sample_rate"] != "16000":
                continue
            with wave.open(str(directory / row["file"]), "rb") as wav:
                pcm = wav.readframes(wav.getnframes())
            clips.append(Clip(row["id"], pcm, speech_end_s(np.frombuffer(pcm, np.int16), 16000)))
    return clips


def bench_settings(settings: Settings, sessions: int) -> Settings:
    return dataclasses.replace(
        settings,
        stream=dataclasses.replace(settings.stream, max_sessions=max(settings.stream.max_sessions, sessions)),
        sip=dataclasses.replace(settings.sip, enabled=False),
        auth=dataclasses.replace(settings.auth, api_keys=[]),
    )


async def bench(settings: Settings, clips: list[Clip], sessions: int, per_session: int,
                gap_s: float) -> dict[str, Any]:
    arrivals: dict[str, list[tuple[float, float]]] = {}  # session id -> [(end_s, arrived_at)]

    def on_event(event: dict[str, Any], arrived_at: float) -> None:
        if event["type"] == "utterance.final":
            arrivals.setdefault(event["call"]["id"], []).append((event["utterance"]["end_s"], arrived_at))

    async with bench_service(bench_settings(settings, sessions), on_event=on_event) as service:
        url = f"ws://{service.host}/v1/stream"
        cpu0, wall0 = time.process_time(), time.monotonic()
        logs = [SessionLog(i) for i in range(sessions)]
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(
                stream_session(http, url, log, pick(clips, log.index, per_session), gap_s)
                for log in logs))
        await service.consumer.wait_for(
            lambda c: all(c.of_type("call.ended", log.session_id) for log in logs), timeout_s=60)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        dropped = service.dropped_frames("stream")
        rejected = service.consumer.rejected
    return score(logs, arrivals, cpu / wall if wall else 0.0, dropped, rejected)


def pick(clips: list[Clip], session: int, count: int) -> list[Clip]:
    """`count` clips for a session, rotated so that concurrent sessions say different things."""
    return [clips[(session * count + k) % len(clips)] for k in range(count)]


async def stream_session(http: aiohttp.ClientSession, url: str, log: SessionLog, clips: list[Clip],
                         gap_s: float) -> None:
    """Stream `clips` (each followed by `gap_s` of silence) in real time, 20 ms a frame."""
    frame_bytes = int(16000 * FRAME_S) * 2
    audio = bytearray()
    for clip in clips:
        start = len(audio) / 32000
        audio += clip.pcm + b"\x00\x00" * int(16000 * gap_s)
        log.windows.append((clip.name, start, start + clip.speech_end_s, len(audio) / 32000))
    loop = asyncio.get_running_loop()
    async with http.ws_connect(url) as ws:
        await ws.send_json({"type": "start_transcription",
                            "config": {"sampleRate": 16000, "encoding": "LINEAR16", "dialplan": "bench"}})
        started = json.loads((await ws.receive(timeout=30)).data)
        log.session_id = started["sessionId"]
        receiver = asyncio.create_task(_receive(ws, log))
        t0 = loop.time()
        log.started_at = t0  # the loop's clock is time.monotonic(), as the consumer's

        for k in range(0, len(audio) // frame_bytes):
            due = t0 + (k + 1) * FRAME_S  # a frame leaves once its 20 ms have been "spoken"
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                log.max_lag_s = max(log.max_lag_s, -delay)
            await ws.send_bytes(bytes(audio[k * frame_bytes:(k + 1) * frame_bytes]))
        await ws.send_json({"type": "stop_transcription"})
        await receiver


async def _receive(ws: aiohttp.ClientWebSocketResponse, log: SessionLog) -> None:
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            message = json.loads(msg.data)
            if message["type"] == "transcription_complete":
                log.text = message["result"]["text"]


def score(logs: list[SessionLog], arrivals: dict[str, list[tuple[float, float]]], cpu_share: float,
          dropped: float, rejected: int) -> dict[str, Any]:
    latencies: list[float] = []
    missed = 0
    for log in logs:
        finals = arrivals.get(log.session_id, [])
        for _, start, end_of_speech, end in log.windows:
            mine = [(end_s, at) for end_s, at in finals if start < end_s <= end]
            if not mine:
                missed += 1
                continue
            _, arrived = max(mine)  # the clip's last utterance
            latencies.append(arrived - (log.started_at + end_of_speech))
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))] if ordered else float("nan")

    return {
        "sessions": len(logs),
        "clips": sum(len(log.windows) for log in logs),
        "clips_without_final": missed,
        "latency_p50_ms": round(pct(0.50) * 1000),
        "latency_p95_ms": round(pct(0.95) * 1000),
        "latency_max_ms": round(max(ordered) * 1000) if ordered else None,
        "latency_mean_ms": round(statistics.fmean(ordered) * 1000) if ordered else None,
        "cpu_percent_of_one_core": round(cpu_share * 100, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "dropped_frames": int(dropped),
        "max_send_lag_ms": round(max(log.max_lag_s for log in logs) * 1000),
        "bad_signatures": rejected,
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"stream benchmark: {report['sessions']} concurrent session(s), {report['clips']} clips "
          "in real time (20 ms frames)")
    print(f"  end of speech -> webhook: p50 {report['latency_p50_ms']} ms, "
          f"p95 {report['latency_p95_ms']} ms, "
          f"max {report['latency_max_ms']} ms ({report['clips_without_final']} clips without a final)")
    print(f"  CPU {report['cpu_percent_of_one_core']} % of one core, peak RSS {report['peak_rss_mb']} MB")
    print(f"  dropped frames {report['dropped_frames']}, max client send lag {report['max_send_lag_ms']} ms, "
          f"bad signatures {report['bad_signatures']}")
