"""`python -m app bench soak --minutes M --calls N`: N callers talking for M minutes, no let-up.

The service runs as users run it (app/bench/served.py). N caller slots each place a Twilio
call (the simulator, as `bench twilio` does; with `--ingress stream`, a `/v1/stream` session
of 8 kHz MULAW, as `bench stream` does; with `--ingress sip`, a sipp call through Kamailio to
the SIP workers, as `bench sip` does), say three clips, hang up, and call again a moment
later (0-1 s), with the next clips of the pool, until M minutes have passed; then the last
calls finish. Every minute it reports the clips whose speech ended in that minute
(end of speech -> webhook p50/p95/max), calls completed, the service's resident memory, its
open file descriptors (the SIP workers' too) and the calls it refused as busy (such a caller
tries again 1 s later; over SIP, after the 503's Retry-After). At the end: finals lost (clips
no final covers, and calls with no `call.ended`), RSS growth after the first five minutes (or
the first minute in a shorter run) and over the second half, and whether the fd count stayed
flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from app.bench.sip import CALLER_NICE, PORT, sip_call, sip_settings, sip_workers
from app.bench.stream import stream_session
from app.pipeline.decode import encode
from app.pipeline.types import Encoding
from app.sim.twilio import SimCall, new_sid, post_voice_webhook, stream_call
from sip.agent import BUSY_RETRY_AFTER_S

TOKEN = "bench-auth-token"
BASELINE_MINUTE = 5  # RSS growth is measured against this minute's (the first, in shorter runs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0, help="how long callers keep calling (default 30)")
    parser.add_argument("--calls", type=int, default=24, help="callers talking at once (default 24)")
    parser.add_argument("--ingress", choices=tuple(INGRESSES), default="twilio",
                        help="how callers reach the service: Twilio Media Streams, /v1/stream or SIP "
                             "(default twilio)")
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
    ingress = INGRESSES[args.ingress]
    sip = sip_settings(PORT, max(4, args.calls)) if args.ingress == "sip" else {"enabled": False}
    overrides: dict[str, dict[str, Any]] = {"twilio": {"auth_token": TOKEN}, "sip": sip,
                                            "auth": {"api_keys": []}, "stream": {"max_sessions": max(64, args.calls)}}
    outcomes: list[CallOutcome] = []
    refused: list[float] = []  # when a call was refused as busy (its caller tries again, INGRESSES)
    samples: list[dict[str, Any]] = []
    async with served(args.config, overrides, match=ingress.match, on_event=arrivals) as service:
        t0 = time.monotonic()
        until = t0 + args.minutes * 60
        counter = iter(range(10**9))
        workers = await sip_workers(service) if args.ingress == "sip" else []
        sampler = asyncio.create_task(_sample_every_minute(service, workers, t0, samples))
        print(f"bench soak: {args.calls} {args.ingress} callers for {args.minutes:g} min ...", file=sys.stderr)
        await asyncio.gather(*(_slot(service, pool, lambda: next(counter), until, outcomes, refused, slot, ingress)
                               for slot in range(args.calls)))
        await asyncio.sleep(2.0)  # the last finals' deliveries
        sampler.cancel()
        samples.append(_sample(service, workers, t0))
        events = list(service.consumer.events)
    return _summarise(outcomes, refused, events, arrivals, samples, t0)


# One call of a slot: its outcome, or None when the service refused it as busy.
Caller = Callable[[ServedService, CallerPlan, int], Awaitable[CallOutcome | None]]


async def _slot(service: ServedService, pool: list[Clip], next_index: Callable[[], int], until: float,
                outcomes: list[CallOutcome], refused: list[float], slot: int, ingress: Ingress) -> None:
    rng = random.Random(slot)
    await asyncio.sleep(rng.uniform(0.0, 3.0))
    while time.monotonic() < until:
        outcome = await ingress.call(service, plan_call(pool, next_index()), slot)
        if outcome is None:  # busy: try again shortly, as a caller would
            refused.append(time.monotonic())
            await asyncio.sleep(ingress.retry_s)
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


async def _sip_call(service: ServedService, plan: CallerPlan, slot: int) -> CallOutcome | None:
    return await sip_call(service, plan, PORT, CALLER_NICE, slot=slot)


@dataclass(frozen=True, slots=True)
class Ingress:
    """How the soak's callers reach the service: `call` places one call; one refused as busy
    waits `retry_s` before calling again (a second over Twilio and /v1/stream; over SIP, the
    Retry-After of the service's 503, as a trunk holds calls back that long); `match` is the
    bench dialplan's [match] line for its calls."""

    call: Caller
    retry_s: float
    match: str


INGRESSES = {"twilio": Ingress(_twilio_call, 1.0, 'twilio_to = ["*"]'), "stream": Ingress(_stream_call, 1.0, ""),
             "sip": Ingress(_sip_call, BUSY_RETRY_AFTER_S, 'sip_user = ["*"]')}


async def _sample_every_minute(service: ServedService, workers: list[int], t0: float,
                               samples: list[dict[str, Any]]) -> None:
    while True:
        await asyncio.sleep(60 - (time.monotonic() - t0) % 60)
        samples.append(_sample(service, workers, t0))


def _sample(service: ServedService, workers: list[int], t0: float) -> dict[str, Any]:
    """The service's RSS and open fds now; with SIP workers, theirs summed too."""
    pid = service.process.pid
    sample = {"at_min": round((time.monotonic() - t0) / 60, 2), "rss_mb": round(rss_mb(pid)), "open_fds": _fds(pid)}
    if workers:
        sample |= {"workers_rss_mb": round(sum(rss_mb(w) for w in workers)),
                   "workers_fds": sum(_fds(w) for w in workers)}
    return sample


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _summarise(outcomes: list[CallOutcome], refused: list[float], events: list[dict[str, Any]],
               arrivals: dict[str, float], samples: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    clips = clip_latencies(outcomes, events, arrivals)
    ended = {e["call"]["id"] for e in events if e["type"] == "call.ended"}
    minutes: list[dict[str, Any]] = []
    for m in range(max(1, round(max((s["at_min"] for s in samples), default=1)))):
        lat = [lat for at, lat in clips if lat is not None and m * 60 <= at - t0 < (m + 1) * 60]
        sample = min(samples, key=lambda s: abs(s["at_min"] - (m + 1)), default={})
        minutes.append({"minute": m + 1, "clips": len(lat), **percentiles_ms(lat),
                        "refused": sum(m * 60 <= at - t0 < (m + 1) * 60 for at in refused),
                        **{k: sample.get(k) for k in ("rss_mb", "open_fds", "workers_rss_mb", "workers_fds")
                           if k in sample}})
    base = minutes[min(BASELINE_MINUTE, len(minutes)) - 1]
    half = minutes[(len(minutes) - 1) // 2]
    last = samples[-1]
    return {
        "baseline_minute": base["minute"],
        "calls_placed": len(outcomes), "calls_without_end": sum(o.call_id not in ended for o in outcomes),
        "calls_refused_busy": len(refused),
        "clips": len(clips), "finals_lost": sum(lat is None for _, lat in clips),
        **percentiles_ms([lat for _, lat in clips if lat is not None]),
        "rss_growth_percent": _growth(base["rss_mb"], last["rss_mb"]),
        "rss_growth_second_half_percent": _growth(half["rss_mb"], last["rss_mb"]),
        "fds_at_baseline": base["open_fds"], "fds_at_end": last["open_fds"],
        **({"workers_rss_growth_percent": _growth(base["workers_rss_mb"], last["workers_rss_mb"]),
            "workers_fds_at_baseline": base["workers_fds"], "workers_fds_at_end": last["workers_fds"]}
           if "workers_rss_mb" in last else {}),
        "per_minute": minutes,
    }


def _growth(before: float, after: float) -> float:
    return round(100 * (after - before) / before, 1)


def _print(s: dict[str, Any]) -> None:
    print(f"soak: {s['calls_placed']} calls, {s['clips']} clips; finals lost {s['finals_lost']}, "
          f"calls without call.ended {s['calls_without_end']}, refused busy {s['calls_refused_busy']}")
    print(f"  end of speech -> webhook: p50 {s['latency_p50_ms']} ms, p95 {s['latency_p95_ms']} ms, "
          f"max {s['latency_max_ms']} ms")
    print(f"  RSS growth after minute {s['baseline_minute']}: {s['rss_growth_percent']} % (over the second half: "
          f"{s['rss_growth_second_half_percent']} %)   open fds "
          f"{s['fds_at_baseline']} -> {s['fds_at_end']}")
    workers = "workers_rss_growth_percent" in s
    if workers:
        print(f"  SIP workers: RSS growth {s['workers_rss_growth_percent']} %   open fds "
              f"{s['workers_fds_at_baseline']} -> {s['workers_fds_at_end']}")
    print("  minute  clips  p50  p95  max (ms)  RSS MB  fds  refused" + ("  workers' RSS MB  fds" if workers else ""))
    for m in s["per_minute"]:
        print(f"  {m['minute']:6d} {m['clips']:6d} {m['latency_p50_ms']} {m['latency_p95_ms']} "
              f"{m['latency_max_ms']}  {m['rss_mb']}  {m['open_fds']}  {m['refused']}"
              + (f"  {m['workers_rss_mb']}  {m['workers_fds']}" if workers else ""))
