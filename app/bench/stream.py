"""`python -m app bench stream --sessions N`: N `/v1/stream` callers against the service.

The service runs as users run it (`python -m app serve`, its own process, app/bench/served.py);
this process is the load: N WebSocket sessions, each sending 8 kHz μ-law in 20 ms binary
frames in real time, as a telephony bridge would (`--rate 16000 --linear16` for wideband
PCM instead). Sessions start within `--stagger-s` of each other and say different clips
(app/bench/callers.py); a signature-checking webhook consumer in this process receives the
finals.

Reported: end of speech -> webhook p50/p95/max, pooled WER, the service's CPU (percent of one
core) and peak RSS, this load generator's CPU, frames the engine dropped, and how far the
sessions' sending fell behind real time (non-zero means the server pushed back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from app.bench.callers import (
    HOLD_S,
    RATE,
    CallerPlan,
    CallOutcome,
    format_summary,
    load_pool,
    plan_callers,
    score,
)
from app.bench.common import SPEECH_DIR
from app.bench.consumer import WebhookConsumer
from app.bench.served import own_usage, served
from app.pipeline.decode import encode
from app.pipeline.resample import resample_whole
from app.pipeline.types import Encoding

FRAME_S = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    parser.add_argument("--stagger-s", type=float, default=3.0,
                        help="sessions start within this many seconds of each other (default 3)")
    parser.add_argument("--clips-per-call", type=int, default=3, help="clips each session says (default 3)")
    parser.add_argument("--linear16", action="store_true", help="send 16 kHz LINEAR16 instead of 8 kHz MULAW")
    parser.add_argument("--speech-dir", default=str(SPEECH_DIR),
                        help="directory with manifest.tsv (default: $HEARSAY_SPEECH_DIR or ../shared/speech)")
    parser.add_argument("--config", default="settings.toml", help="the service's settings file")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.sessions < 1:
        print("bench stream: --sessions must be at least 1", file=sys.stderr)
        return 2
    summary = asyncio.run(_bench(args))
    print(json.dumps(summary) if args.json else
          format_summary("stream", summary) + f"\n  max send lag {summary['max_send_lag_ms']} ms")
    return 0


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    plans = plan_callers(load_pool(Path(args.speech_dir)), args.sessions, per_call=args.clips_per_call,
                         stagger_s=args.stagger_s)
    arrivals: dict[str, float] = {}

    def arrived(event: dict[str, Any], at: float) -> None:
        arrivals.setdefault(event["id"], at)

    overrides: dict[str, dict[str, Any]] = {
        "sip": {"enabled": False}, "auth": {"api_keys": []},
        "stream": {"max_sessions": max(64, args.sessions)}}
    lags: list[float] = []
    print(f"bench stream: starting the service and {args.sessions} session(s) ...", file=sys.stderr)
    async with served(args.config, overrides, match="", on_event=arrived) as service:
        before, cpu0, wall0 = service.usage(), time.process_time(), time.monotonic()
        async with aiohttp.ClientSession() as http:
            outcomes = await asyncio.gather(*(
                _session(http, f"ws://{service.http}/v1/stream", plan, args.linear16, lags, service.consumer)
                for plan in plans))
        wall = time.monotonic() - wall0
        after, load_cpu = service.usage(), time.process_time() - cpu0
        dropped = await service.dropped_frames("stream")
    summary = score(outcomes, service.consumer.events, arrivals)
    summary.update(
        service_cpu_percent=round(100 * (after.cpu_s - before.cpu_s) / wall, 1),
        service_peak_rss_mb=after.peak_rss_mb,
        load_cpu_percent=round(100 * load_cpu / wall, 1), load_peak_rss_mb=own_usage().peak_rss_mb,
        dropped_frames=dropped, max_send_lag_ms=round(max(lags, default=0.0) * 1000), wall_s=round(wall, 1))
    return summary


async def _session(http: aiohttp.ClientSession, url: str, plan: CallerPlan, linear16: bool, lags: list[float],
                   consumer: WebhookConsumer) -> CallOutcome:
    """One caller: start, stream its audio in real time, stop; its id and stream second 0."""
    await asyncio.sleep(plan.start_s)
    samples = np.concatenate([plan.samples, np.zeros(int(HOLD_S * RATE), np.float32)])
    if linear16:
        pcm = resample_whole(samples, RATE, 16000)
        audio = (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()
        config = {"sampleRate": 16000, "encoding": "LINEAR16"}
        frame = int(16000 * FRAME_S) * 2
    else:
        audio = encode(samples, Encoding.MULAW)
        config = {"sampleRate": RATE, "encoding": "MULAW"}
        frame = int(RATE * FRAME_S)
    loop = asyncio.get_running_loop()
    lag = 0.0
    async with http.ws_connect(url) as ws:
        await ws.send_json({"type": "start_transcription", "config": {**config, "dialplan": "bench"}})
        session_id = json.loads((await ws.receive(timeout=30)).data)["sessionId"]
        receiver = asyncio.create_task(_drain(ws))
        t0 = loop.time()  # the loop's clock is time.monotonic(), as the consumer's
        for k in range(len(audio) // frame):
            delay = t0 + (k + 1) * FRAME_S - loop.time()  # a frame leaves once its 20 ms were "spoken"
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = max(lag, -delay)
            await ws.send_bytes(audio[k * frame:(k + 1) * frame])
        await ws.send_json({"type": "stop_transcription"})
        await receiver
    lags.append(lag)
    await consumer.wait(session_id, "call.ended", timeout_s=120)
    return CallOutcome(plan, session_id, t0)


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass
