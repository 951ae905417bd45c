"""`python -m app bench talkback --calls N --rounds R [--transport twilio|sip|both]`: how fast
the assistant's answer is heard, and how fast the caller's voice stops it, over Twilio Media
Streams and over SIP.

In one process: the speech engine and the talk-back voice, a Hearsay server on loopback ports
(SIP on when asked for), a webhook consumer that answers each `call.started` with a long
`say` (a different text each call, so nothing comes from the prompt cache), and N callers at
a time, R rounds per transport. Each caller is silent for a few seconds, then talks over the
prompt.

Twilio (the simulator, `app.sim.twilio`):
- answer -> first audio: from the moment the consumer sends its answer to the moment the
  caller receives the first `media` message of the reply (text-to-speech, queueing and the
  socket included);
- barge-in: from the true start of the caller's speech (the first loud 20 ms frame, at the
  moment the simulator sent it) to the caller receiving `clear`.

SIP (one sipp process per call, tests/sipp/uac_talk_over.xml: it streams the clip with
rtp_stream from its media socket, and its SDP offers that socket, so it is where the caller
hears; a `LoopbackTap` on that port sees both directions with kernel timestamps):
- answer -> first audio: from the consumer's answer to the first RTP packet reaching the
  caller that carries sound (the bridge's silence before it decodes to 0), so the voice's
  leading silence counts here, unlike Twilio's first `media` message;
- barge-in: from the true start of the caller's speech (the first packet sipp's rtp_stream
  sent, plus the clip's first loud frame) to the first packet after the last one that carried
  the prompt: the moment the caller's line went quiet. (Should the prompt be in a pause when
  it is cut, this reads early by what is left of the pause.) A SIP call answers its
  `utterance.final` with a hang-up, so the call ends as soon as the caller was heard.

Both barge-in figures include the echo gate (app/calls/echo.py): while the prompt plays, the
caller's frames more than `echo_margin_db` below it are withheld from the VAD, so a caller at
a normal level under a loud prompt is detected a little later than one alone.

For comparison, in the same run: rendering each prompt whole before playing it (what a
non-streaming text-to-speech step costs before the first audio). Reported as p50/p95/max.
The SIP part needs sipp and CAP_NET_RAW (the tap is an AF_PACKET socket on `lo`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.bench.common import SPEECH_DIR, bench_service, speech_start_s
from app.bench.consumer import WebhookConsumer
from app.bench.rtp import LoopbackTap, RtpPacket, carries_sound
from app.keys import TALKBACK
from app.pipeline.decode import decode
from app.pipeline.types import Encoding
from app.settings import Settings, load_settings
from app.sim.twilio import SimCall, SimResult, stream_call
from app.sim.wav import read_wav_mulaw

CLIP = "arctic-aew-a0003"
SPEAKS_AT_S = 4.0  # the caller starts talking this long into the call
PROMPT = ("Thank you for calling, caller number {n}. Our opening hours are nine to five on weekdays, "
          "and ten to two on Saturdays. You can also find answers to most questions on our website.")
REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "tests" / "sipp" / "uac_talk_over.xml"
MAX_SIP_CALLS = 4  # the pjsua2 wheel's PJSUA_MAX_CALLS (docs/sip.md)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=1, help="concurrent calls per round (default 1; SIP: at most 4)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of calls per transport (default 5)")
    parser.add_argument("--transport", choices=("twilio", "sip", "both"), default="both",
                        help="which callers (default both)")
    parser.add_argument("--sip-port", type=int, default=26060,
                        help="SIP port for the run (default 26060); Hearsay's RTP from +1000, sipp's from +1 and +3000")
    parser.add_argument("--config", default="settings.toml", help="settings file")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.rounds < 1:
        print("bench talkback: --calls and --rounds must be at least 1", file=sys.stderr)
        return 2
    sip = args.transport in ("sip", "both")
    if sip and args.calls > MAX_SIP_CALLS:
        print(f"bench talkback: SIP takes at most {MAX_SIP_CALLS} calls at once (docs/sip.md)", file=sys.stderr)
        return 2
    if sip:
        try:
            with LoopbackTap():
                pass
        except PermissionError:
            print("bench talkback: the SIP part needs CAP_NET_RAW (its loopback tap); try --transport twilio",
                  file=sys.stderr)
            return 2
    settings = load_settings(args.config if Path(args.config).is_file() else None)
    settings = replace(settings, sip=replace(
        settings.sip, enabled=sip, host="127.0.0.1", port=args.sip_port, rtp_port_start=args.sip_port + 1000,
        rtp_port_count=200, allow_from=[], auth_username="", registrations=[]))
    summary = asyncio.run(_bench(args, settings, read_wav_mulaw(SPEECH_DIR / f"{CLIP}.wav")))
    print(json.dumps(summary) if args.json else _text(summary))
    return 0


async def _bench(args: argparse.Namespace, settings: Settings, caller_speech: bytes) -> dict[str, Any]:
    answered: dict[str, float] = {}
    prompts: list[str] = []

    def reply(event: dict[str, Any]) -> Any:
        if event["type"] == "utterance.final" and event["call"]["source"] == "sip":
            return {"actions": [{"hangup": True}]}  # heard: end the call (sipp waits for our BYE)
        if event["type"] != "call.started":
            return None
        prompts.append(PROMPT.format(n=len(prompts) + 1))
        answered[event["call"]["id"]] = time.monotonic()
        return {"actions": [{"say": prompts[-1]}]}

    summary: dict[str, Any] = {"calls": args.calls, "rounds": args.rounds}
    async with bench_service(settings, match='twilio_to = ["*"]\nsip_user = ["*"]') as service:
        service.consumer.reply_to = reply
        talkback = service.app[TALKBACK]
        await talkback.loaded_speaker()  # measure speech, not the voice's first load
        if args.transport in ("twilio", "both"):
            summary["twilio"] = await _twilio(args, service.host, caller_speech, answered)
        if args.transport in ("sip", "both"):
            summary["sip"] = await _sip(args, settings, service.workdir, caller_speech, answered,
                                        service.consumer)
        speaker = await talkback.loaded_speaker()
        whole: list[float] = []
        for n in range(len(prompts)):
            started = time.monotonic()
            async for _ in speaker.synthesize(PROMPT.format(n=1000 + n)):
                pass
            whole.append(time.monotonic() - started)
    summary["whole_prompt_render_s"] = _stats(whole)
    return summary


# -- Twilio -----------------------------------------------------------------------------------

async def _twilio(args: argparse.Namespace, host: str, caller_speech: bytes, answered: dict[str, float]
                  ) -> dict[str, Any]:
    onset_s = SPEAKS_AT_S + speech_start_s(decode(caller_speech, Encoding.MULAW), 8000)
    audio = b"\xff" * int(SPEAKS_AT_S * 8000) + caller_speech + b"\xff" * 16000
    first_audio: list[float] = []
    bargein: list[float] = []
    missed = 0
    for _ in range(args.rounds):
        results = await asyncio.gather(*(_twilio_call(f"ws://{host}/twilio/media", audio) for _ in range(args.calls)))
        for result in results:
            heard = _first(result, "OutboundMedia")
            cleared = _first(result, "Clear")
            if heard is None or cleared is None or result.call_sid not in answered:
                missed += 1
                continue
            first_audio.append(heard - answered[result.call_sid])
            bargein.append(cleared - (result.started_at + onset_s))
    return {"missed": missed, "answer_to_first_audio_s": _stats(first_audio),
            "bargein_onset_to_clear_s": _stats(bargein)}


async def _twilio_call(url: str, audio: bytes) -> SimResult:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return await stream_call(session, SimCall(url=url, audio=audio, speed=1.0,
                                                  custom_parameters={"dialplan": "bench"}))


def _first(result: SimResult, kind: str) -> float | None:
    return next((at for message, at in zip(result.received, result.received_at, strict=True)
                 if type(message).__name__ == kind), None)


# -- SIP --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SipCaller:
    """One sipp process: its SIP port (the From URI's) and its media socket's port."""

    sip_port: int
    media_port: int


async def _sip(args: argparse.Namespace, settings: Settings, workdir: Path, caller_speech: bytes,
               answered: dict[str, float], consumer: WebhookConsumer) -> dict[str, Any]:
    (workdir / "clip.ulaw").write_bytes(caller_speech + b"\xff" * 8000)  # what rtp_stream sends
    loud_s = speech_start_s(decode(caller_speech, Encoding.MULAW), 8000)
    first_audio: list[float] = []
    bargein: list[float] = []
    missed = 0
    with LoopbackTap() as tap:
        for round_ in range(args.rounds):
            callers = [SipCaller(args.sip_port + 1 + 2 * i, args.sip_port + 3000 + 10 * (round_ * args.calls + i))
                       for i in range(args.calls)]
            for caller in callers:
                tap.watch(caller.media_port)
            await asyncio.gather(*(_sipp(settings.sip.port, caller, workdir) for caller in callers))
            for caller in callers:
                started = [e for e in consumer.of_type("call.started")
                           if e["call"]["from"].endswith(f"@127.0.0.1:{caller.sip_port}")]
                call_id = started[-1]["call"]["id"] if started else ""
                measured = _sip_figures(tap.received(caller.media_port), tap.sent(caller.media_port),
                                        answered.get(call_id), loud_s)
                if measured is None:
                    missed += 1
                    continue
                first_audio.append(measured[0])
                bargein.append(measured[1])
    return {"missed": missed, "answer_to_first_audio_s": _stats(first_audio),
            "bargein_onset_to_quiet_s": _stats(bargein)}


async def _sipp(port: int, caller: SipCaller, workdir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIO), "-s", "100", "-m", "1", "-l", "1",
        "-d", str(int(SPEAKS_AT_S * 1000)), "-i", "127.0.0.1", "-p", str(caller.sip_port),
        "-mp", str(caller.media_port), "-nostdin", "-timeout", "60s", "-timeout_error",
        cwd=workdir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        print(f"bench talkback: sipp exited {proc.returncode}: {err.decode()[-500:]}", file=sys.stderr)


def _sip_figures(heard: list[RtpPacket], said: list[RtpPacket], answered: float | None, loud_s: float
                 ) -> tuple[float, float] | None:
    """(answer -> first sound at the caller, speech onset -> the caller's line quiet), or None
    when the call has no reply, no speech, or the prompt ended before the caller spoke."""
    loud = [i for i, p in enumerate(heard) if carries_sound(p)]
    if answered is None or not loud or not said or loud[-1] + 1 >= len(heard):
        return None
    onset = said[0].at + loud_s
    if heard[loud[-1]].at < onset:
        return None  # nothing was interrupted
    return heard[loud[0]].at - answered, heard[loud[-1] + 1].at - onset


# -- figures ----------------------------------------------------------------------------------

def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    array = np.array(values) * 1000
    return {"n": len(values), "p50_ms": round(float(np.percentile(array, 50))),
            "p95_ms": round(float(np.percentile(array, 95))), "max_ms": round(float(array.max()))}


def _text(summary: dict[str, Any]) -> str:
    def line(name: str, s: dict[str, float]) -> str:
        if not s["n"]:
            return f"  {name}: no samples"
        return f"  {name}: p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, max {s['max_ms']} ms (n={s['n']})"

    lines = [f"talk-back benchmark: {summary['calls']} call(s) x {summary['rounds']} rounds per transport"]
    if "twilio" in summary:
        twilio = summary["twilio"]
        lines += [f" Twilio ({twilio['missed']} without a reply or a barge-in)",
                  line("answer -> first audio at the caller", twilio["answer_to_first_audio_s"]),
                  line("caller's speech onset -> clear", twilio["bargein_onset_to_clear_s"])]
    if "sip" in summary:
        sip = summary["sip"]
        lines += [f" SIP ({sip['missed']} without a reply or a barge-in)",
                  line("answer -> first RTP with sound at the caller", sip["answer_to_first_audio_s"]),
                  line("caller's speech onset -> the caller's RTP quiet", sip["bargein_onset_to_quiet_s"])]
    lines.append(line("rendering a whole prompt first (for comparison)", summary["whole_prompt_render_s"]))
    return "\n".join(lines)
