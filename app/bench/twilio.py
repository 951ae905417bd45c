"""`python -m app bench twilio --calls N`: N Twilio callers against the service, in real time.

The service runs as users run it (`python -m app serve`, its own process, app/bench/served.py);
this process is the load: N copies of the simulator (app/sim/twilio.py), each POSTing the
voice webhook (signed) and then streaming its clips as Twilio Media Streams do, 20 ms μ-law
frames as base64 JSON, in real time. Callers start within `--stagger-s` of each other and say
different clips (app/bench/callers.py), and a signature-checking webhook consumer in this
process receives the finals.

Reported: end of speech -> webhook p50/p95/max, pooled WER, the service's CPU (percent of one
core) and peak RSS, this load generator's CPU, and frames the engine dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp

from app.bench.baseline import add_baseline
from app.bench.callers import (
    HOLD_S,
    LET_EVERY_CALLER_IN,
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
from app.pipeline.types import Encoding
from app.sim.twilio import SimCall, new_sid, post_voice_webhook, stream_call

TOKEN = "bench-auth-token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=1, help="concurrent callers (default 1)")
    add_load_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.calls < 1:
        print("bench twilio: --calls must be at least 1", file=sys.stderr)
        return 2
    summary = add_baseline(args, args.calls, asyncio.run(_bench(args)))
    print(json.dumps(summary) if args.json else format_summary("twilio", summary))
    return 0


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    plans = plans_for(args, args.calls)
    arrivals = Arrivals()
    overrides: dict[str, dict[str, Any]] = {
        **LET_EVERY_CALLER_IN, "twilio": {"auth_token": TOKEN}, "sip": {"enabled": False}}
    print(f"bench twilio: starting the service and {args.calls} caller(s) ...", file=sys.stderr)
    async with served(args.config, overrides, match='twilio_to = ["*"]',
                      interim=args.interim, on_event=arrivals) as service:
        window = service.window()
        outcomes = await asyncio.gather(*(_call(service.http, plan, service.consumer) for plan in plans))
        usage = window.close()
        figures = await service.figures("twilio")
    return {**score(outcomes, service.consumer.events, arrivals), **usage, **figures}


async def _call(host: str, plan: CallerPlan, consumer: WebhookConsumer) -> CallOutcome:
    await asyncio.sleep(plan.start_s)
    call_sid = new_sid("CA")
    async with aiohttp.ClientSession() as session:
        answer = await post_voice_webhook(session, f"http://{host}/twilio/voice", from_=f"+1555010{plan.index:04d}",
                                          to="+15550001111", call_sid=call_sid, auth_token=TOKEN)
        result = await stream_call(session, SimCall(
            url=answer.stream_url, audio=encode(plan.samples, Encoding.MULAW), hold_s=HOLD_S,
            custom_parameters=answer.parameters, auth_token=TOKEN, call_sid=call_sid))
    await consumer.wait(call_sid, "call.ended", timeout_s=120)
    return CallOutcome(plan, call_sid, result.started_at)
