"""`python -m app bench soak --minutes M --calls N`: N callers talking for M minutes, no let-up.

The service runs as users run it (app/bench/served.py). N caller slots each place a Twilio
call (the simulator, as `bench twilio` does; with `--ingress stream`, a `/v1/stream` session
of 8 kHz MULAW, as `bench stream` does), say three clips, hang up, and call again a moment
later (0-1 s), with the next clips of the pool, until M minutes have passed; then the last
calls finish. Every minute it reports the clips whose speech ended in that minute
(end of speech -> webhook p50/p95/max), calls completed, the service's resident memory, its
open file descriptors and the calls it refused as busy (such a caller tries again 1 s later).
At the end: finals lost (clips no final covers, and calls with no `call.ended`), RSS growth
after the first five minutes (or the first minute in a shorter run) and over the second half
(the service's memory warms up for 10-20 minutes at 24 callers, then stays flat), and whether
the fd count stayed flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from app.bench.callers import (
    HOLD_S,
    Arrivals,
    CallerPlan,
    CallOutcome,
    Clip,
    add_load_arguments,
    clip_latencies,
    load_pool,
    percentiles_ms,
    plan_call,
)
from app.bench.served import ServedService, rss_mb, served
from app.bench.stream import stream_session
from app.pipeline.decode import encode
from app.pipeline.types import Encoding
from app.sim.twilio import SimCall, new_sid, post_voice_webhook, stream_call

TOKEN = "bench-auth-token"
BASELINE_MINUTE = 5  # RSS growth is measured against this minute's (the first, in shorter runs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0, help="how long callers keep calling (default 30)")
    parser.add_argument("--calls", type=int, default=24, help="callers talking at once (default 24)")
    parser.add_argument("--ingress", choices=("twilio", "stream"), default="twilio",
                        help="how callers reach the service: Twilio Media Streams or /v1/stream (default twilio)")
    add_load_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.minutes <= 0:
        print("bench soak: --calls and --minutes must be positive", file=sys.stderr)
        return 2
    summary = asyncio.run(_soak(args))
    if args.json:
        print(json.dumps(summary))
    else:
        _print(summary)
    return 0


async def _soak(args: argparse.Namespace) -> dict[str, Any]:
    pool = load_pool(Path(args.speech_dir))
    arrivals = Arrivals()
    overrides: dict[str, dict[str, Any]] = {"twilio": {"auth_token": TOKEN}, "sip": {"enabled": False},
                                            "auth": {"api_keys": []}, "stream": {"max_sessions": max(64, args.calls)}}
    outcomes: list[CallOutcome] = []
    refused: list[float] = []  # when a call was refused as busy (each caller tries again 1 s later)
    samples: list[dict[str, Any]] = []
    match = 'twilio_to = ["*"]' if args.ingress == "twilio" else ""
    async with served(args.config, overrides, match=match, on_event=arrivals) as service:
        t0 = time.monotonic()
        until = t0 + args.minutes * 60
        counter = iter(range(10**9))
        sampler = asyncio.create_task(_sample_every_minute(service, t0, samples))
        print(f"bench soak: {args.calls} {args.ingress} callers for {args.minutes:g} min ...", file=sys.stderr)
        call = _twilio_call if args.ingress == "twilio" else _stream_call
        await asyncio.gather(*(_slot(service, pool, lambda: next(counter), until, outcomes, refused, slot, call)
                               for slot in range(args.calls)))
        await asyncio.sleep(2.0)  # the last finals' deliveries
        sampler.cancel()
        samples.append(_sample(service, t0))
        events = list(service.consumer.events)
    return _summarise(outcomes, refused, events, arrivals, samples, t0)


# One call of a slot: its outcome, or None when the service refused it as busy.
Caller = Callable[[ServedService, CallerPlan, int], Awaitable[CallOutcome | None]]


async def _slot(service: ServedService, pool: list[Clip], next_index: Callable[[], int], until: float,
                outcomes: list[CallOutcome], refused: list[float], slot: int, call: Caller) -> None:
    rng = random.Random(slot)
    await asyncio.sleep(rng.uniform(0.0, 3.0))
    while time.monotonic() < until:
        outcome = await call(service, plan_call(pool, next_index()), slot)
        if outcome is None:  # busy: try again shortly, as a caller would
            refused.append(time.monotonic())
            await asyncio.sleep(1.0)
            continue
        outcomes.append(outcome)
        await asyncio.sleep(rng.uniform(0.0, 1.0))


async def _twilio_call(service: ServedService, plan: CallerPlan, slot: int) -> CallOutcome | None:
    call_sid = new_sid("CA")
    async with aiohttp.ClientSession() as session:
        answer = await post_voice_webhook(session, f"http://{service.http}/twilio/voice",
                                          from_=f"+1555010{slot:04d}", to="+15550001111",
                                          call_sid=call_sid, auth_token=TOKEN)
        if answer.rejected:
            return None
        result = await stream_call(session, SimCall(
            url=answer.stream_url, audio=encode(plan.samples, Encoding.MULAW), hold_s=HOLD_S,
            custom_parameters=answer.parameters, auth_token=TOKEN, call_sid=call_sid))
    return CallOutcome(plan, call_sid, result.started_at)


async def _stream_call(service: ServedService, plan: CallerPlan, slot: int) -> CallOutcome | None:
    async with aiohttp.ClientSession() as session:
        return await stream_session(session, f"ws://{service.http}/v1/stream", plan, service.consumer, [])


async def _sample_every_minute(service: ServedService, t0: float, samples: list[dict[str, Any]]) -> None:
    while True:
        await asyncio.sleep(60 - (time.monotonic() - t0) % 60)
        samples.append(_sample(service, t0))


def _sample(service: ServedService, t0: float) -> dict[str, Any]:
    pid = service.process.pid
    return {"at_min": round((time.monotonic() - t0) / 60, 2), "rss_mb": round(rss_mb(pid)),
            "open_fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


def _summarise(outcomes: list[CallOutcome], refused: list[float], events: list[dict[str, Any]],
               arrivals: dict[str, float], samples: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    clips = clip_latencies(outcomes, events, arrivals)
    ended = {e["call"]["id"] for e in events if e["type"] == "call.ended"}
    minutes = []
    for m in range(max(1, round(max((s["at_min"] for s in samples), default=1)))):
        lat = [lat for at, lat in clips if lat is not None and m * 60 <= at - t0 < (m + 1) * 60]
        sample = min(samples, key=lambda s: abs(s["at_min"] - (m + 1)), default={})
        minutes.append({"minute": m + 1, "clips": len(lat), **percentiles_ms(lat),
                        "refused": sum(m * 60 <= at - t0 < (m + 1) * 60 for at in refused),
                        "rss_mb": sample.get("rss_mb"), "open_fds": sample.get("open_fds")})
    base = minutes[min(BASELINE_MINUTE, len(minutes)) - 1]
    half = minutes[(len(minutes) - 1) // 2]  # the service's memory warms up for 10-20 minutes
    last = samples[-1]
    return {
        "baseline_minute": base["minute"],
        "calls_placed": len(outcomes), "calls_without_end": sum(o.call_id not in ended for o in outcomes),
        "calls_refused_busy": len(refused),
        "clips": len(clips), "finals_lost": sum(lat is None for _, lat in clips),
        **percentiles_ms([lat for _, lat in clips if lat is not None]),
        "rss_growth_percent": round(100 * (last["rss_mb"] - base["rss_mb"]) / base["rss_mb"], 1),
        "rss_growth_second_half_percent": round(100 * (last["rss_mb"] - half["rss_mb"]) / half["rss_mb"], 1),
        "fds_at_baseline": base["open_fds"], "fds_at_end": last["open_fds"],
        "per_minute": minutes,
    }


def _print(s: dict[str, Any]) -> None:
    print(f"soak: {s['calls_placed']} calls, {s['clips']} clips; finals lost {s['finals_lost']}, "
          f"calls without call.ended {s['calls_without_end']}, refused busy {s['calls_refused_busy']}")
    print(f"  end of speech -> webhook: p50 {s['latency_p50_ms']} ms, p95 {s['latency_p95_ms']} ms, "
          f"max {s['latency_max_ms']} ms")
    print(f"  RSS growth after minute {s['baseline_minute']}: {s['rss_growth_percent']} % (over the second half: "
          f"{s['rss_growth_second_half_percent']} %)   open fds "
          f"{s['fds_at_baseline']} -> {s['fds_at_end']}")
    print("  minute  clips  p50  p95  max (ms)  RSS MB  fds  refused")
    for m in s["per_minute"]:
        print(f"  {m['minute']:6d} {m['clips']:6d} {m['latency_p50_ms']} {m['latency_p95_ms']} "
              f"{m['latency_max_ms']}  {m['rss_mb']}  {m['open_fds']}  {m['refused']}")
