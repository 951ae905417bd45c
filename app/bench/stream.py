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
from typing import Any

import aiohttp
import numpy as np

from app.bench.baseline import add_baseline
from app.bench.callers import (
    HOLD_S,
    LET_EVERY_CALLER_IN,
    RATE,
    Arrivals,
    CallerPlan,
    CallOutcome,
    add_load_arguments,
    format_summary,
    plans_for,
    score,
)
from app.bench.consumer import WebhookConsumer
from app.bench.served import served
from app.pipeline.decode import encode
from app.pipeline.resample import resample_whole
from app.pipeline.types import Encoding

FRAME_S = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    parser.add_argument("--linear16", action="store_true", help="send 16 kHz LINEAR16 instead of 8 kHz MULAW")
    add_load_arguments(parser, "sessions")


def run(args: argparse.Namespace) -> int:
    if args.sessions < 1:
        print("bench stream: --sessions must be at least 1", file=sys.stderr)
        return 2
    summary = add_baseline(args, args.sessions, asyncio.run(_bench(args)))
    print(json.dumps(summary) if args.json else
          format_summary("stream", summary) + f"\n  max send lag {summary['max_send_lag_ms']} ms")
    return 0


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    plans = plans_for(args, args.sessions)
    arrivals = Arrivals()
    overrides: dict[str, dict[str, Any]] = {
        **LET_EVERY_CALLER_IN,
        "sip": {"enabled": False}, "auth": {"api_keys": []},
        "stream": {"max_sessions": max(64, args.sessions)}}
    lags: list[float] = []
    print(f"bench stream: starting the service and {args.sessions} session(s) ...", file=sys.stderr)
    async with served(args.config, overrides, match="", interim=args.interim, on_event=arrivals) as service:
        window = service.window()
        async with aiohttp.ClientSession() as http:
            answered = await asyncio.gather(*(
                stream_session(http, f"ws://{service.http}/v1/stream", plan, service.consumer, lags,
                               linear16=args.linear16, interim=args.interim)
                for plan in plans))
        outcomes = [outcome for outcome in answered if outcome is not None]
        if len(outcomes) < len(plans):
            raise RuntimeError(f"{len(plans) - len(outcomes)} session(s) were refused as busy: "
                               "raise [asr] max_live_calls past --sessions")
        usage = window.close()
        figures = await service.figures("stream")
    return {**score(outcomes, service.consumer.events, arrivals), **usage, **figures,
            "max_send_lag_ms": round(max(lags, default=0.0) * 1000)}


async def stream_session(http: aiohttp.ClientSession, url: str, plan: CallerPlan, consumer: WebhookConsumer,
                         lags: list[float], *, linear16: bool = False, interim: bool = False) -> CallOutcome | None:
    """One caller: start, stream its audio in real time, stop; its id and stream second 0, or
    None when the service answered `server_busy` (the session is closed at once). The largest
    lag behind real time in sending goes to `lags`."""
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
        await ws.send_json({"type": "start_transcription", "config": {**config, "dialplan": "bench",
                                                                          "interimResults": interim}})
        answer = json.loads((await ws.receive(timeout=30)).data)
        if answer.get("code") == "server_busy":
            return None
        if "sessionId" not in answer:
            raise RuntimeError(f"the service did not start the session: {answer}")
        session_id = answer["sessionId"]
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
