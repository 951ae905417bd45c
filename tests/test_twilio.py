"""Twilio end to end: the simulator calls a real Hearsay server; a real webhook consumer hears it.

Every test here plays Twilio with `app.ingress.twilio_sim` (signed voice webhook, then the
Media Stream in real time) against `create_app` on a loopback port, with the shared Whisper
engine, and asserts what the voice assistant's webhook receives.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from speech import clip_path, reference, wer
from twilio.request_validator import RequestValidator

from app.delivery.sign import verify
from app.ingress.twilio import TWILIO_SENDERS
from app.ingress.twilio_sim import (
    NetworkFaults,
    SimCall,
    SimResult,
    post_voice_webhook,
    read_wav_mulaw,
    stream_call,
)
from app.pipeline.decode import decode
from app.pipeline.events import Encoding
from app.server import create_app
from app.settings import (
    DialplanSettings,
    HttpSettings,
    Settings,
    SipSettings,
    TwilioSettings,
    WebhookSettings,
)

TOKEN = "test-auth-token"
SECRET = "whsec_test"
SUPPORT = "+15550001111"  # routed to the "support" dialplan
AGENTS = "+16660002222"  # routed to "agents", which also transcribes the outbound track
UNROUTED = "+447700900000"
WAIT_S = 120.0  # a guard against hangs only; nothing here asserts on time


def clip(name: str) -> bytes:
    """A clip as Twilio would carry it, read the way `python -m app twilio-sim` reads it."""
    return read_wav_mulaw(clip_path(name))


def speech_bounds(mulaw: bytes) -> tuple[float, float]:
    """First and last 20 ms frame louder than a tenth of the loudest: the true speech span."""
    samples = decode(mulaw, Encoding.MULAW)
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.nonzero(rms > 0.1 * rms.max())[0]
    return float(loud[0]) * 0.02, float(loud[-1] + 1) * 0.02


def silence(seconds: float) -> bytes:
    return b"\xff" * round(seconds * 8000)


@dataclass
class Consumer:
    """The voice assistant: a real aiohttp server that checks signatures and keeps events."""

    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, body, request.headers.get("Hearsay-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.events.append(json.loads(body))
        self.changed.set()
        return web.json_response({})

    def of(self, call_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["call"]["id"] == call_id and (kind is None or e["type"] == kind)]

    async def wait(self, call_id: str, kind: str = "call.ended") -> dict[str, Any]:
        async def until() -> dict[str, Any]:
            while not (found := self.of(call_id, kind)):
                self.changed.clear()
                await self.changed.wait()
            return found[0]

        return await asyncio.wait_for(until(), WAIT_S)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def consumer() -> AsyncIterator[Consumer]:
    sink = Consumer()
    app = web.Application()
    app.router.add_post("/hook", sink.handle)
    runner, host = await _serve(app)
    sink.url = f"http://{host}/hook"
    yield sink
    await runner.cleanup()


def _settings(tmp: Path, consumer: Consumer, public_url: str = "") -> Settings:
    plans = tmp / "dialplans"
    plans.mkdir(exist_ok=True)
    hook = f'[webhook]\nurl = "{consumer.url}"\nsecret = "{SECRET}"\n'
    (plans / "10-support.toml").write_text(f'name = "support"\n[match]\ntwilio_to = ["+1555*"]\n{hook}')
    (plans / "20-agents.toml").write_text(
        f'name = "agents"\n[match]\ntwilio_to = ["+1666*"]\n{hook}[recognition]\nagent_track = true\n')
    return Settings(
        http=HttpSettings(host="127.0.0.1", port=0, public_url=public_url),
        twilio=TwilioSettings(auth_token=TOKEN),
        sip=SipSettings(enabled=False),
        webhooks=WebhookSettings(outbox=str(tmp / "outbox.sqlite3"), backoff_initial_s=0.05),
        dialplans=DialplanSettings(dir=str(plans)),
    )


@dataclass
class Hearsay:
    host: str
    app: web.Application

    @property
    def voice_url(self) -> str:
        return f"http://{self.host}/twilio/voice"

    @property
    def media_url(self) -> str:
        return f"ws://{self.host}/twilio/media"


@pytest.fixture
async def hearsay(engine: Any, consumer: Consumer, tmp_path: Path) -> AsyncIterator[Hearsay]:
    app = create_app(_settings(tmp_path, consumer), engine=engine)
    runner, host = await _serve(app)
    yield Hearsay(host, app)
    await runner.cleanup()


async def place_call(hearsay: Hearsay, audio: bytes, *, to: str = SUPPORT, **options: Any) -> SimResult:
    """Do what Twilio does: signed voice webhook, then the Media Stream its TwiML names."""
    async with aiohttp.ClientSession() as session:
        call_sid = options.pop("call_sid", None) or SimCall(url="", audio=b"").call_sid
        answer = await post_voice_webhook(session, hearsay.voice_url, from_="+15557654321", to=to,
                                          call_sid=call_sid, auth_token=TOKEN)
        assert not answer.rejected
        call = SimCall(url=answer.stream_url, audio=audio, custom_parameters=answer.parameters,
                       auth_token=TOKEN, call_sid=call_sid, **{"hold_s": 1.0, **options})
        return await stream_call(session, call)


# -- the voice webhook ----------------------------------------------------------------------


async def test_voice_webhook_answers_twiml_streaming_to_the_media_socket(hearsay: Hearsay) -> None:
    async with aiohttp.ClientSession() as session:
        answer = await post_voice_webhook(session, hearsay.voice_url, from_="+15557654321", to=SUPPORT,
                                          call_sid="CA" + "1" * 32, auth_token=TOKEN)
    assert not answer.rejected
    assert answer.stream_url == hearsay.media_url
    assert answer.parameters == {"dialplan": "support", "From": "+15557654321", "To": SUPPORT}


async def test_a_number_no_dialplan_takes_is_rejected(hearsay: Hearsay) -> None:
    async with aiohttp.ClientSession() as session:
        answer = await post_voice_webhook(session, hearsay.voice_url, from_="+15557654321", to=UNROUTED,
                                          call_sid="CA" + "2" * 32, auth_token=TOKEN)
    assert answer.rejected


async def test_a_bad_signature_is_refused_with_403(hearsay: Hearsay) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="answered 403"):
            await post_voice_webhook(session, hearsay.voice_url, from_="+1", to=SUPPORT,
                                     call_sid="CA" + "3" * 32, auth_token="not-the-token")
        async with session.post(hearsay.voice_url, data={"To": SUPPORT}) as unsigned:
            assert unsigned.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await stream_call(session, SimCall(url=hearsay.media_url, audio=silence(0.2),
                                               auth_token="not-the-token"))
        assert refused.value.status == 403


async def test_signatures_are_checked_against_the_url_twilio_used_behind_a_proxy(
    engine: Any, consumer: Consumer, tmp_path: Path
) -> None:
    app = create_app(_settings(tmp_path, consumer), engine=engine)
    runner, host = await _serve(app)
    public = "https://hearsay.example.com/twilio/voice"
    form = {"CallSid": "CA" + "4" * 32, "From": "+15557654321", "To": SUPPORT}
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hearsay.example.com",
               "X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(public, form)}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://{host}/twilio/voice", data=form, headers=headers) as resp:
                assert resp.status == 200
                assert 'url="wss://hearsay.example.com/twilio/media"' in await resp.text()
            # The same signature does not hold for the URL we were reached on directly.
            async with session.post(f"http://{host}/twilio/voice", data=form,
                                    headers={"X-Twilio-Signature": headers["X-Twilio-Signature"]}) as resp:
                assert resp.status == 403
    finally:
        await runner.cleanup()


async def test_public_url_setting_names_the_stream_url_and_the_signed_url(
    engine: Any, consumer: Consumer, tmp_path: Path
) -> None:
    app = create_app(_settings(tmp_path, consumer, public_url="https://calls.example.org"), engine=engine)
    runner, host = await _serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            form = {"CallSid": "CA" + "5" * 32, "From": "+15557654321", "To": SUPPORT}
            signature = RequestValidator(TOKEN).compute_signature(
                "https://calls.example.org/twilio/voice", form)
            async with session.post(f"http://{host}/twilio/voice", data=form,
                                    headers={"X-Twilio-Signature": signature}) as resp:
                assert resp.status == 200
                assert 'url="wss://calls.example.org/twilio/media"' in await resp.text()
    finally:
        await runner.cleanup()


# -- calls ----------------------------------------------------------------------------------


async def test_the_callers_words_reach_the_webhook(hearsay: Hearsay, consumer: Consumer) -> None:
    result = await place_call(hearsay, clip("jfk"))
    ended = await consumer.wait(result.call_sid)
    started = consumer.of(result.call_sid, "call.started")[0]
    assert started["call"]["source"] == "twilio"
    assert started["call"]["from"] == "+15557654321" and started["call"]["to"] == SUPPORT
    assert started["call"]["dialplan"] == "support"
    assert started["call"]["metadata"]["callSid"] == result.call_sid
    assert started["call"]["metadata"]["streamSid"] == result.stream_sid
    finals = consumer.of(result.call_sid, "utterance.final")
    heard = " ".join(e["utterance"]["text"] for e in finals)
    assert wer(reference("jfk"), heard) <= 0.25, heard
    assert wer(reference("jfk"), ended["transcript"]) <= 0.25
    assert ended["reason"] == "hangup"
    assert consumer.bad_signatures == 0


async def test_utterance_times_match_the_audio(hearsay: Hearsay, consumer: Consumer) -> None:
    lead = 1.5  # the caller is silent for this long before speaking
    speech = clip("arctic-aew-a0003")
    begin, end = speech_bounds(speech)
    result = await place_call(hearsay, silence(lead) + speech)
    await consumer.wait(result.call_sid)
    utterances = [e["utterance"] for e in consumer.of(result.call_sid, "utterance.final")]
    assert utterances, "nothing was heard"
    assert lead + begin - 0.8 <= utterances[0]["start_s"] <= lead + begin + 0.3  # start includes pre-roll
    assert lead + end - 0.3 <= utterances[-1]["end_s"] <= lead + end + 0.6
    assert wer(reference("arctic-aew-a0003"), " ".join(u["text"] for u in utterances)) <= 0.3


async def test_late_repeated_and_lost_frames_do_not_shift_the_times(
    hearsay: Hearsay, consumer: Consumer
) -> None:
    lead = 1.5
    speech = clip("arctic-aew-a0003")
    begin, end = speech_bounds(speech)
    bad_network = NetworkFaults(reorder_frames=3, duplicate_every=7, drop_every=40, seed=4)
    result = await place_call(hearsay, silence(lead) + speech, network=bad_network)
    ended = await consumer.wait(result.call_sid)
    utterances = ended["utterances"]
    assert utterances, "nothing was heard"
    assert lead + begin - 0.8 <= utterances[0]["start_s"] <= lead + begin + 0.3  # start includes pre-roll
    assert lead + end - 0.3 <= utterances[-1]["end_s"] <= lead + end + 0.6
    assert wer(reference("arctic-aew-a0003"), ended["transcript"]) <= 0.3, ended["transcript"]
    assert ended["duration_s"] == pytest.approx(result.audio_s, abs=0.03)


async def test_pressed_keys_reach_the_webhook(hearsay: Hearsay, consumer: Consumer) -> None:
    result = await place_call(hearsay, clip("cards-001"), dtmf="4#")
    await consumer.wait(result.call_sid)
    digits = [e["dtmf"]["digit"] for e in consumer.of(result.call_sid, "dtmf")]
    assert digits == ["4", "#"]


def _media(stream_sid: str, payload: bytes, timestamp: int = 0) -> str:
    return json.dumps({"event": "media", "sequenceNumber": "99", "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": "1", "timestamp": str(timestamp),
                                 "payload": base64.b64encode(payload).decode()}})


async def test_malformed_frames_are_skipped_and_the_call_still_transcribes(
    hearsay: Hearsay, consumer: Consumer
) -> None:
    stream_sid = "MZ" + "b" * 32
    garbage = {
        5: ["this is not json", '{"event": "hello"}', "[1, 2, 3]"],
        20: [json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": "%%%"}}),
             _media(stream_sid, b"\xff" * 5000, 400)],
        40: [_media(stream_sid, b"", 800), '{"event": "dtmf", "dtmf": {"digit": "99"}}'],
    }
    result = await place_call(hearsay, clip("timit-LDC93S1"), stream_sid=stream_sid,
                              before_start=[_media(stream_sid, b"\xff" * 160)], inject=garbage)
    ended = await consumer.wait(result.call_sid)
    assert wer(reference("timit-LDC93S1"), ended["transcript"]) <= 0.3, ended["transcript"]
    assert ended["reason"] == "hangup"


async def test_two_concurrent_calls_stay_separate(hearsay: Hearsay, consumer: Consumer) -> None:
    one, two = await asyncio.gather(
        place_call(hearsay, clip("cards-005")),
        place_call(hearsay, clip("arctic-aew-a0001")),
    )
    first, second = await consumer.wait(one.call_sid), await consumer.wait(two.call_sid)
    assert wer(reference("cards-005"), first["transcript"]) <= 0.3, first["transcript"]
    assert wer(reference("arctic-aew-a0001"), second["transcript"]) <= 0.35, second["transcript"]
    assert "clubs" not in second["transcript"].lower()
    assert "danger" not in first["transcript"].lower()


async def test_a_dropped_connection_still_ends_the_call_with_what_was_heard(
    hearsay: Hearsay, consumer: Consumer
) -> None:
    result = await place_call(hearsay, clip("cards-005"), send_stop=False, hold_s=0.0)
    ended = await consumer.wait(result.call_sid)
    assert ended["reason"] != "hangup"
    assert wer(reference("cards-005"), ended["transcript"]) <= 0.3, ended["transcript"]


async def test_the_outbound_track_is_transcribed_as_the_agent(hearsay: Hearsay, consumer: Consumer) -> None:
    caller = clip("timit-LDC93S1") + silence(3.5)
    agent = silence(3.5) + clip("cards-005")
    result = await place_call(hearsay, caller, to=AGENTS, outbound_audio=agent)
    ended = await consumer.wait(result.call_sid)
    by_speaker: dict[str, str] = {}
    for u in ended["utterances"]:
        by_speaker[u["speaker"]] = (by_speaker.get(u["speaker"], "") + " " + u["text"]).strip()
    assert wer(reference("timit-LDC93S1"), by_speaker.get("caller", "")) <= 0.3, by_speaker
    assert wer(reference("cards-005"), by_speaker.get("agent", "")) <= 0.3, by_speaker


async def test_the_server_can_speak_mark_and_clear_into_the_call(
    hearsay: Hearsay, consumer: Consumer
) -> None:
    played: list[str] = []

    async def talk_back(call_sid: str) -> None:
        await consumer.wait(call_sid, "call.started")  # the stream is live: its sender exists
        sender = hearsay.app[TWILIO_SENDERS][call_sid]
        sender.listen_marks(played.append)
        await sender.send_media(b"\x7f" * 1600)  # 200 ms to play
        await sender.send_mark("reply-1")
        await sender.send_clear()

    call_sid = "CA" + "c" * 32
    result, _ = await asyncio.gather(
        place_call(hearsay, clip("cards-001"), call_sid=call_sid, hold_s=3.0), talk_back(call_sid))
    kinds = [type(m).__name__ for m in result.received]
    assert kinds == ["OutboundMedia", "OutboundMark", "Clear"]
    assert result.marks_echoed == ["reply-1"]
    await consumer.wait(call_sid)
    assert played == ["reply-1"]


async def test_the_command_line_simulator_places_a_call(hearsay: Hearsay, consumer: Consumer) -> None:
    """`python -m app twilio-sim --voice-url … FILE`, run as a user would, is heard."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "twilio-sim", "--voice-url", hearsay.voice_url,
        "--auth-token", TOKEN, "--to", SUPPORT, "--speed", "2", "--dtmf", "7",
        str(clip_path("cards-005")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[1])
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 0, err.decode()
    summary = json.loads(out)
    ended = await consumer.wait(summary["callSid"])
    assert wer(reference("cards-005"), ended["transcript"]) <= 0.3, ended["transcript"]
    assert [e["dtmf"]["digit"] for e in consumer.of(summary["callSid"], "dtmf")] == ["7"]


async def test_the_command_line_simulator_reports_a_rejected_call(hearsay: Hearsay) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "twilio-sim", "--voice-url", hearsay.voice_url,
        "--auth-token", TOKEN, "--to", UNROUTED, str(clip_path("cards-001")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[1])
    _, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 1
    assert "rejected" in err.decode()
