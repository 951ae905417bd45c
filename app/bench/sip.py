"""`python -m app bench sip --calls N`: N SIP callers (sipp) against the service, in real time.

The service runs as users run it (`python -m app serve`, its own process, app/bench/served.py),
with SIP on loopback: one worker up to 4 calls, else one per 4 calls behind Kamailio
(`--max-calls`, default N; docs/sip.md). Each caller is its own `sipp` process
(tests/sipp/uac_stream.xml) streaming its clips as G.711 μ-law RTP in real time; callers start
within `--stagger-s` of each other and say different clips (app/bench/callers.py). A
signature-checking webhook consumer in this process receives the finals.

The sipp callers run at `--caller-nice` (19): they stand in for phones elsewhere, which take
none of the service's CPU, while each sipp process polls its sockets every millisecond (about
1000 context switches a second each, 30 000 at 32 callers, a fifth of a core). At nice 19
they yield the two cores to the service and its workers; if that makes them late, their audio
reaches the service late and the lateness counts against the latency, which is measured from
the end of speech in the planned audio. With `--caller-nice 0` they compete for the CPU.

A call's audio second 0 is taken as the `created_at` of its `call.started` (stamped as the
service admits the call, just before its 200 OK, so latencies come out a round trip long
rather than short). Reported: end of speech -> webhook p50/p95/max, pooled WER, CPU and peak
RSS of the service and of each SIP worker, the load generator's CPU (this process and its
sipp children), the bridge's added latency per frame (p50/p95 from the
`hearsay_sip_bridge_latency_seconds` buckets: "<= x ms"), and frames the engine dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

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
from app.bench.served import ServedService, free_udp_port, served
from app.pipeline.decode import encode
from app.pipeline.types import Encoding

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "tests" / "sipp" / "uac_stream.xml"
CALLER_NICE = 19
PORT = 25060  # the service's SIP port in a benchmark
# What sipp prints (and exits 1 on) when the INVITE is refused as busy where it expects the
# 200 (it ACKs the refusal first): 503 from the service, or 486 from the proxy when every SIP
# worker has its calls.
BUSY = re.compile(rb"received 'SIP/2\.0 (486|503) ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=1, help="concurrent sipp callers (default 1)")
    parser.add_argument("--max-calls", type=int, default=0,
                        help="[sip] max_calls for the run (default: --calls, at least 4); above 4, calls go "
                             "through Kamailio to SIP workers")
    parser.add_argument("--port", type=int, default=PORT, help=f"SIP port for the run (default {PORT})")
    parser.add_argument("--caller-nice", type=int, default=CALLER_NICE, metavar="N",
                        help=f"niceness of the sipp callers (default {CALLER_NICE}: they yield the CPU to "
                             "the service, as callers elsewhere would; 0: they compete for it)")
    add_load_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.calls < 1:
        print("bench sip: --calls must be at least 1", file=sys.stderr)
        return 2
    s = add_baseline(args, args.calls, asyncio.run(_bench(args)))
    if args.json:
        print(json.dumps(s))
    else:
        print(format_summary("sip", s))
        workers = ", ".join(f"CPU {w['cpu_percent']}% RSS {w['peak_rss_mb']} MB" for w in s["children"])
        print(f"  SIP workers: {workers}")
        print(f"  bridge per frame: p50 <= {s['bridge_p50_ms_at_most']} ms, p95 <= {s['bridge_p95_ms_at_most']} ms")
    return 0


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    plans = plans_for(args, args.calls)
    arrivals = Arrivals()
    max_calls = args.max_calls or max(4, args.calls)
    overrides: dict[str, dict[str, Any]] = {**LET_EVERY_CALLER_IN, "sip": sip_settings(args.port, max_calls)}
    print(f"bench sip: starting the service and {args.calls} caller(s) ...", file=sys.stderr)
    async with served(args.config, overrides, match='sip_user = ["*"]',
                      interim=args.interim, on_event=arrivals) as service:
        window = service.window(*await sip_workers(service))  # "children" in the summary: the SIP workers
        calls = await asyncio.gather(*(sip_call(service, plan, args.port, args.caller_nice) for plan in plans))
        outcomes = [c for c in calls if c is not None]
        if len(outcomes) < len(calls):
            raise RuntimeError(f"the service refused {len(calls) - len(outcomes)} SIP call(s) as busy")
        usage = window.close()
        figures = await service.figures("sip", bridge="hearsay_sip_bridge_latency_seconds")
    return {**score(outcomes, service.consumer.events, arrivals), **usage, **figures, "max_calls": max_calls,
            "caller_nice": args.caller_nice}


async def sip_workers(service: ServedService) -> list[int]:
    """The service's SIP worker processes (their pids, from /health)."""
    return [w["pid"] for w in (await service.get("/health"))["components"]["sip"]["workers"]]


def sip_settings(port: int, max_calls: int) -> dict[str, Any]:
    """The service's [sip] for a benchmark: on loopback at `port`, open to any caller, RTP
    ports above it, `max_calls` at once."""
    return {"enabled": True, "host": "127.0.0.1", "port": port, "allow_from": [], "auth_username": "",
            "rtp_port_start": port + 1000, "rtp_port_count": max(2000, 16 * max_calls), "max_calls": max_calls}


async def sip_call(service: ServedService, plan: CallerPlan, port: int, nice: int, *,
                   slot: int | None = None) -> CallOutcome | None:
    """One sipp process (at niceness `nice`) placing one call that streams the plan's audio;
    its call's outcome, or None when the service refused it as busy (503, or 486 from the
    proxy: sipp ACKs the refusal and exits 1). `slot` (default: the plan's index) picks the
    caller's RTP port and working directory, so a slot that calls again and again reuses its
    own."""
    await asyncio.sleep(plan.start_s)
    slot = plan.index if slot is None else slot
    directory = service.workdir / f"caller-{slot}"
    await asyncio.to_thread(_write_clip, directory, plan)
    proc = await asyncio.create_subprocess_exec(
        "nice", "-n", str(nice), "sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIO), "-s", "100", "-m", "1", "-l", "1",
        "-d", str(int((plan.duration_s + HOLD_S) * 1000)), "-i", "127.0.0.1", "-p", str(free_udp_port()),
        "-mp", str(port + 3000 + 8 * slot), "-nostdin", "-timeout", "300s",
        cwd=directory, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        if BUSY.search(err):
            return None
        print(f"bench sip: caller {slot}: sipp exited {proc.returncode}: {err.decode()[-300:]}",
              file=sys.stderr)
    call_id = f"1-{proc.pid}@127.0.0.1"
    started = await service.consumer.wait(call_id, "call.started", timeout_s=60)
    await service.consumer.wait(call_id, "call.ended", timeout_s=120)
    return CallOutcome(plan, call_id, _monotonic(started["created_at"]))


def _write_clip(directory: Path, plan: CallerPlan) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "clip.ulaw").write_bytes(encode(plan.samples, Encoding.MULAW))


def _monotonic(stamp: str) -> float:
    """A `created_at` (UTC, ms) on this process's monotonic clock."""
    wall = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return wall - (time.time() - time.monotonic())
