"""Twilio end to end: the simulator calls a real Hearsay server; a real webhook consumer hears it.

Every test here plays Twilio with `app.sim.twilio` (signed voice webhook, then the
Media Stream) against `create_app` on a loopback port, with the shared Whisper engine, and
asserts what the voice assistant's webhook receives. Calls are streamed as fast as the socket
takes them: the server places audio by the media timestamps (not by arrival), so utterance
times and words do not depend on pacing. Only talk-back, which Twilio plays out in real time
(marks come back when the caller has heard the audio), runs in real time.

WER bounds are "k / n": n words in the reference, of which k may come out wrong. k is what
tiny.en gets wrong here over the 8 kHz telephone path, on every CPU kernel path tried (AVX-512
and AVX2 oneDNN, MKL), plus two: int8 kernels differ between CPU families, and a word or two
moves between them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from service_helpers import SECRET, StartApp, heard_by_caller, make_settings, transcribe_mulaw, until
from speech import clip_path, reference, wer
from twilio.request_validator import RequestValidator

from app.bench.common import RunningApp, speech_end_s, speech_start_s
from app.bench.consumer import WebhookConsumer
from app.calls import EndReason, PlaybackState
from app.keys import CALL_HUB
from app.pipeline.decode import decode
from app.pipeline.types import Encoding
from app.settings import Settings
from app.sim.twilio import (
    NetworkFaults,
    SimCall,
    SimResult,
    post_voice_webhook,
    read_wav_mulaw,
    stream_call,
)

TOKEN = "test-auth-token"
SUPPORT = "+15550001111"  # routed to the "support" dialplan
AGENTS = "+16660002222"  # routed to "agents", which also transcribes the outbound track
UNROUTED = "+447700900000"
WAIT_S = 120.0  # a guard against hangs only; nothing here asserts on time


def clip(name: str) -> bytes:
    """A clip as Twilio would carry it, read the way `python -m app twilio-sim` reads it."""
    return read_wav_mulaw(clip_path(name))


def speech_bounds(mulaw: bytes) -> tuple[float, float]:
    """The true speech span of a clip, as the benchmarks define it (app.bench.common)."""
    samples = decode(mulaw, Encoding.MULAW)
    return speech_start_s(samples, 8000), speech_end_s(samples, 8000)


def silence(seconds: float) -> bytes:
    return b"\xff" * round(seconds * 8000)


def _settings(tmp: Path, consumer: WebhookConsumer, public_url: str = "") -> Settings:
    plans = tmp / "dialplans"
    plans.mkdir(exist_ok=True)
    hook = f'[webhook]\nurl = "{consumer.url}"\nsecret = "{SECRET}"\n'
    (plans / "10-support.toml").write_text(f'name = "support"\n[match]\ntwilio_to = ["+1555*"]\n{hook}')
    (plans / "20-agents.toml").write_text(
        f'name = "agents"\n[match]\ntwilio_to = ["+1666*"]\n{hook}[recognition]\nagent_track = true\n')
    return make_settings(tmp, twilio={"auth_token": TOKEN}, http={"public_url": public_url})


def voice_url(hearsay: RunningApp) -> str:
    return hearsay.url("/twilio/voice")


def media_url(hearsay: RunningApp) -> str:
    return hearsay.url("/twilio/media", "ws")


@pytest.fixture
async def hearsay(running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path) -> RunningApp:
    """Hearsay with the "support" and "agents" dialplans, both posting to `consumer`."""
    return await running_app(_settings(tmp_path, consumer))


async def place_call(hearsay: RunningApp, audio: bytes, *, to: str = SUPPORT, **options: Any) -> SimResult:
    """Do what Twilio does: signed voice webhook, then the Media Stream its TwiML names."""
    async with aiohttp.ClientSession() as session:
        call_sid = options.pop("call_sid", None) or SimCall(url="", audio=b"").call_sid
        answer = await post_voice_webhook(session, voice_url(hearsay), from_="+15557654321", to=to,
                                          call_sid=call_sid, auth_token=TOKEN)
        assert not answer.rejected
        call = SimCall(url=answer.stream_url, audio=audio, custom_parameters=answer.parameters,
                       auth_token=TOKEN, call_sid=call_sid, **{"hold_s": 1.0, "speed": 0.0, **options})
        return await stream_call(session, call)


# -- the voice webhook ----------------------------------------------------------------------


async def test_voice_webhook_answers_twiml_streaming_to_the_media_socket(hearsay: RunningApp) -> None:
    async with aiohttp.ClientSession() as session:
        answer = await post_voice_webhook(session, voice_url(hearsay), from_="+15557654321", to=SUPPORT,
                                          call_sid="CA" + "1" * 32, auth_token=TOKEN)
    assert not answer.rejected
    assert answer.stream_url == media_url(hearsay)
    assert answer.parameters == {"dialplan": "support", "From": "+15557654321", "To": SUPPORT}


async def test_a_number_no_dialplan_takes_is_rejected(hearsay: RunningApp) -> None:
    async with aiohttp.ClientSession() as session:
        answer = await post_voice_webhook(session, voice_url(hearsay), from_="+15557654321", to=UNROUTED,
                                          call_sid="CA" + "2" * 32, auth_token=TOKEN)
    assert answer.rejected


async def test_a_server_at_its_call_limit_rejects_busy_until_a_call_ends(
    running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, consumer)
    hearsay = await running_app(dataclasses.replace(settings, asr=dataclasses.replace(settings.asr, max_live_calls=1)))
    async with aiohttp.ClientSession() as session:
        # One live call (a /v1/stream session: the limit counts every source).
        async with session.ws_connect(hearsay.url("/v1/stream", "ws")) as ws:
            await ws.send_json({"type": "start_transcription", "config": {"sampleRate": 8000, "encoding": "MULAW"}})
            assert json.loads((await ws.receive(timeout=30)).data)["type"] == "transcription_started"
            answer = await post_voice_webhook(session, voice_url(hearsay), from_="+15557654321", to=SUPPORT,
                                              call_sid="CA" + "3" * 32, auth_token=TOKEN)
            assert answer.rejected and answer.reject_reason == "busy"
            await ws.send_json({"type": "stop_transcription"})
            async for _ in ws:
                pass
        await until(lambda: hearsay.app[CALL_HUB].active == 0)
        answer = await post_voice_webhook(session, voice_url(hearsay), from_="+15557654321", to=SUPPORT,
                                          call_sid="CA" + "4" * 32, auth_token=TOKEN)
        assert not answer.rejected
        metrics = await (await session.get(hearsay.url("/metrics"))).text()
    assert 'hearsay_refused_busy_total{source="twilio"} 1.0' in metrics


async def test_a_bad_signature_is_refused_with_403(hearsay: RunningApp) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="answered 403"):
            await post_voice_webhook(session, voice_url(hearsay), from_="+1", to=SUPPORT,
                                     call_sid="CA" + "3" * 32, auth_token="not-the-token")
        async with session.post(voice_url(hearsay), data={"To": SUPPORT}) as unsigned:
            assert unsigned.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await stream_call(session, SimCall(url=media_url(hearsay), audio=silence(0.2),
                                               auth_token="not-the-token"))
        assert refused.value.status == 403


async def test_signatures_are_checked_against_the_url_twilio_used_behind_a_proxy(hearsay: RunningApp) -> None:
    host = hearsay.host
    public = "https://hearsay.example.com/twilio/voice"
    form = {"CallSid": "CA" + "4" * 32, "From": "+15557654321", "To": SUPPORT}
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hearsay.example.com",
               "X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(public, form)}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{host}/twilio/voice", data=form, headers=headers) as resp:
            assert resp.status == 200
            assert 'url="wss://hearsay.example.com/twilio/media"' in await resp.text()
        # The same signature does not hold for the URL we were reached on directly.
        async with session.post(f"http://{host}/twilio/voice", data=form,
                                headers={"X-Twilio-Signature": headers["X-Twilio-Signature"]}) as resp:
            assert resp.status == 403


async def test_public_url_setting_names_the_stream_url_and_the_signed_url(
    running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    host = (await running_app(_settings(tmp_path, consumer, public_url="https://calls.example.org"))).host
    async with aiohttp.ClientSession() as session:
        form = {"CallSid": "CA" + "5" * 32, "From": "+15557654321", "To": SUPPORT}
        signature = RequestValidator(TOKEN).compute_signature(
            "https://calls.example.org/twilio/voice", form)
        async with session.post(f"http://{host}/twilio/voice", data=form,
                                headers={"X-Twilio-Signature": signature}) as resp:
            assert resp.status == 200
            assert 'url="wss://calls.example.org/twilio/media"' in await resp.text()


# -- calls ----------------------------------------------------------------------------------


async def test_the_callers_words_reach_the_webhook(hearsay: RunningApp, consumer: WebhookConsumer) -> None:
    result = await place_call(hearsay, clip("jfk"))
    ended = await consumer.wait(result.call_sid)
    started = consumer.of_type("call.started", result.call_sid)[0]
    assert started["call"]["source"] == "twilio"
    assert started["call"]["from"] == "+15557654321" and started["call"]["to"] == SUPPORT
    assert started["call"]["dialplan"] == "support"
    assert started["call"]["metadata"]["callSid"] == result.call_sid
    assert started["call"]["metadata"]["streamSid"] == result.stream_sid
    finals = consumer.of_type("utterance.final", result.call_sid)
    heard = " ".join(e["utterance"]["text"] for e in finals)
    assert wer(reference("jfk"), heard) <= 5 / 22, heard  # 3 wrong ("so am I", "America")
    assert wer(reference("jfk"), ended["transcript"]) <= 5 / 22
    assert ended["reason"] == EndReason.HANGUP
    # The call's audio-quality figures: jfk (-17 dBFS mean power) over G.711, clean enough.
    assert -25 < ended["quality"]["level_dbfs"] < -10 and ended["quality"]["clipping_ratio"] == 0
    assert consumer.rejected == 0


async def test_utterance_times_match_the_audio(hearsay: RunningApp, consumer: WebhookConsumer) -> None:
    lead = 1.5  # the caller is silent for this long before speaking
    speech = clip("arctic-aew-a0003")
    begin, end = speech_bounds(speech)
    result = await place_call(hearsay, silence(lead) + speech)
    await consumer.wait(result.call_sid)
    utterances = [e["utterance"] for e in consumer.of_type("utterance.final", result.call_sid)]
    assert utterances, "nothing was heard"
    assert lead + begin - 0.8 <= utterances[0]["start_s"] <= lead + begin + 0.3  # start includes pre-roll
    assert lead + end - 0.3 <= utterances[-1]["end_s"] <= lead + end + 0.6
    assert wer(reference("arctic-aew-a0003"), " ".join(u["text"] for u in utterances)) <= 2 / 11  # 0 wrong


async def test_late_repeated_and_lost_frames_do_not_shift_the_times(
    hearsay: RunningApp, consumer: WebhookConsumer
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
    assert wer(reference("arctic-aew-a0003"), ended["transcript"]) <= 2 / 11, ended["transcript"]  # 0 wrong
    assert ended["duration_s"] == pytest.approx(result.audio_s, abs=0.03)


async def test_pressed_keys_reach_the_webhook(hearsay: RunningApp, consumer: WebhookConsumer) -> None:
    result = await place_call(hearsay, clip("cards-001"), dtmf="4#")
    await consumer.wait(result.call_sid)
    digits = [e["dtmf"]["digit"] for e in consumer.of_type("dtmf", result.call_sid)]
    assert digits == ["4", "#"]


def _media(stream_sid: str, payload: bytes, timestamp: int = 0) -> str:
    return json.dumps({"event": "media", "sequenceNumber": "99", "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": "1", "timestamp": str(timestamp),
                                 "payload": base64.b64encode(payload).decode()}})


async def test_malformed_frames_are_skipped_and_the_call_still_transcribes(
    hearsay: RunningApp, consumer: WebhookConsumer
) -> None:
    stream_sid = "MZ" + "b" * 32
    garbage = {
        5: ["this is not json", '{"event": "hello"}', "[1, 2, 3]"],
        20: [json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": "%%%"}}),
             _media(stream_sid, b"\xff" * 5000, 400)],
        40: [_media(stream_sid, b"", 800), '{"event": "dtmf", "dtmf": {"digit": "99"}}'],
    }
    said = clip("timit-LDC93S1") + silence(1.0) + clip("arctic-aew-a0003")
    result = await place_call(hearsay, said, stream_sid=stream_sid,
                              before_start=[_media(stream_sid, b"\xff" * 160)], inject=garbage)
    ended = await consumer.wait(result.call_sid)
    heard_right = f'{reference("timit-LDC93S1")} {reference("arctic-aew-a0003")}'
    assert wer(heard_right, ended["transcript"]) <= 4 / 22, ended["transcript"]  # 2 wrong ("dog", "and")
    assert ended["reason"] == EndReason.HANGUP


async def test_two_concurrent_calls_stay_separate(hearsay: RunningApp, consumer: WebhookConsumer) -> None:
    one, two = await asyncio.gather(
        place_call(hearsay, clip("cards-005")),
        place_call(hearsay, clip("arctic-aew-a0001")),
    )
    first, second = await consumer.wait(one.call_sid), await consumer.wait(two.call_sid)
    assert wer(reference("cards-005"), first["transcript"]) <= 3 / 9, first["transcript"]  # 1 wrong ("close")
    assert wer(reference("arctic-aew-a0001"), second["transcript"]) <= 2 / 8, second["transcript"]  # 0 wrong
    assert "clubs" not in second["transcript"].lower()
    assert "danger" not in first["transcript"].lower()


async def test_a_dropped_connection_still_ends_the_call_with_what_was_heard(
    hearsay: RunningApp, consumer: WebhookConsumer
) -> None:
    result = await place_call(hearsay, clip("cards-005"), send_stop=False, hold_s=0.0)
    ended = await consumer.wait(result.call_sid)
    assert ended["reason"] == EndReason.DISCONNECTED
    assert wer(reference("cards-005"), ended["transcript"]) <= 3 / 9, ended["transcript"]  # 1 wrong


async def test_the_outbound_track_is_transcribed_as_the_agent(hearsay: RunningApp, consumer: WebhookConsumer) -> None:
    caller = clip("timit-LDC93S1") + silence(3.5)
    agent = silence(3.5) + clip("cards-005")
    result = await place_call(hearsay, caller, to=AGENTS, outbound_audio=agent)
    ended = await consumer.wait(result.call_sid)
    by_speaker: dict[str, str] = {}
    for u in ended["utterances"]:
        by_speaker[u["speaker"]] = (by_speaker.get(u["speaker"], "") + " " + u["text"]).strip()
    assert wer(reference("timit-LDC93S1"), by_speaker.get("caller", "")) <= 4 / 11, by_speaker  # 2 wrong
    assert wer(reference("cards-005"), by_speaker.get("agent", "")) <= 3 / 9, by_speaker  # 1 wrong


async def _live_call(hearsay: RunningApp, consumer: WebhookConsumer, call_sid: str) -> Any:
    await consumer.wait(call_sid, "call.started")
    call = hearsay.app[CALL_HUB].get(call_sid)
    assert call is not None
    return call


def _pcm16k(name: str) -> bytes:
    import soundfile

    samples, rate = soundfile.read(clip_path(name), dtype="int16")
    assert rate == 16000
    return samples.tobytes()


async def test_audio_played_into_the_call_is_heard_and_its_mark_comes_back(
    engine: Any, hearsay: RunningApp, consumer: WebhookConsumer
) -> None:
    """Talk-back's path: `call.media.play()` a 16 kHz WAV; the caller (the simulator, playing
    out in real time as Twilio does) receives μ-law media, then the mark, which it echoes.
    Then the assistant hangs up (the caller would have waited for more)."""
    call_sid = "CA" + "c" * 32
    reply = _pcm16k("arctic-aew-a0003")  # 3.5 s
    reply = reply[: len(reply) // 640 * 640]  # whole 20 ms frames (the tail is silence)

    async def talk_back() -> PlaybackState:
        call = await _live_call(hearsay, consumer, call_sid)
        playback = call.media.play(reply, 16000)
        state = await asyncio.wait_for(playback.wait(), WAIT_S)
        assert playback.frames_played == playback.frames == -(-len(reply) // 640)
        await call.media.hangup()
        return state

    result, state = await asyncio.gather(
        place_call(hearsay, silence(30.0), call_sid=call_sid, speed=1.0, hold_s=0.0), talk_back())
    assert state is PlaybackState.FINISHED
    kinds = [type(m).__name__ for m in result.received]
    assert kinds[-1] == "OutboundMark" and set(kinds[:-1]) == {"OutboundMedia"}
    assert result.marks_echoed == [result.received[-1].name]  # type: ignore[union-attr]
    heard = await transcribe_mulaw(engine, heard_by_caller(result))
    assert wer(reference("arctic-aew-a0003"), heard) <= 2 / 11, heard  # 0 wrong
    await consumer.wait(call_sid)


@pytest.mark.realtime
async def test_clear_interrupts_what_is_playing(hearsay: RunningApp, consumer: WebhookConsumer) -> None:
    call_sid = "CA" + "d" * 32
    stopped: list[Any] = []

    async def barge_in() -> None:
        call = await _live_call(hearsay, consumer, call_sid)
        first = call.media.play(_pcm16k("jfk"), 16000)  # 11 s
        second = call.media.play(_pcm16k("ljspeech-LJ001-0002"), 16000)
        await until(lambda: first.frames_played >= 10)  # mid-reply: 200 ms out, past the lead
        assert call.media.clear() == [first, second]
        stopped.extend([first, second, await first.wait(), await second.wait()])
        await asyncio.sleep(0.3)  # the caller listens on: 15 frame times for a wrong frame to show
        await call.media.hangup()

    result, _ = await asyncio.gather(
        place_call(hearsay, silence(30.0), call_sid=call_sid, speed=1.0, hold_s=0.0), barge_in())
    first, second, first_state, second_state = stopped
    assert first_state is second_state is PlaybackState.INTERRUPTED
    assert 0 < first.frames_played < first.frames / 4 and second.frames_played == 0
    kinds = [type(m).__name__ for m in result.received]
    assert "Clear" in kinds and "OutboundMark" not in kinds
    assert set(kinds[kinds.index("Clear"):]) == {"Clear"}  # nothing sent after the clear
    assert kinds.count("OutboundMedia") == first.frames_played


@pytest.mark.realtime
async def test_hanging_up_ends_the_call_as_agent_hangup(hearsay: RunningApp, consumer: WebhookConsumer) -> None:
    call_sid = "CA" + "e" * 32

    async def hang_up() -> None:
        call = await _live_call(hearsay, consumer, call_sid)
        await call.media.hangup()

    result, _ = await asyncio.gather(
        place_call(hearsay, clip("cards-001") + silence(30.0), call_sid=call_sid, speed=1.0), hang_up())
    ended = await consumer.wait(call_sid)
    assert ended["reason"] == EndReason.AGENT_HANGUP == "agent_hangup"
    assert result.closed_by_server  # the socket closed under the caller: Twilio ends the call
    assert result.frames_sent < len(clip("cards-001")) / 160 + 30.0 / 0.02


@pytest.mark.realtime  # the stream must fail while the call is still sending
async def test_a_call_whose_transcription_fails_inside_ends_with_reason_error(
        hearsay: RunningApp, consumer: WebhookConsumer, a_bug_in_the_turn_policy: None) -> None:
    # A bug in the turn policy stands in for any unexpected error inside the engine stream:
    # the call ends at once (the socket closes under the caller, as a hang-up would), and
    # the assistant hears why. Before, the call went on, its audio unheard, until the caller hung up.
    audio = clip("cards-001") + silence(10.0)  # in real time: the stream fails at the first pause
    result = await asyncio.wait_for(place_call(hearsay, audio, speed=1.0), 30)
    ended = await consumer.wait(result.call_sid)
    assert ended["reason"] == EndReason.ERROR == "error"
    assert result.closed_by_server
    assert result.frames_sent < len(audio) / 160 / 2


@pytest.mark.realtime
async def test_a_frame_during_shutdown_ends_the_session_cleanly(
    hearsay: RunningApp, consumer: WebhookConsumer, caplog: pytest.LogCaptureFixture
) -> None:
    """Shutdown finalises every call while Twilio keeps sending media: the late frames must
    not escape `MediaSession.run` (no handler error), and the call still ends "shutdown"."""
    app = hearsay.app
    call_sid = "CA" + "f" * 32

    async def shut_down() -> None:
        call = await _live_call(hearsay, consumer, call_sid)
        await asyncio.sleep(0.5)  # mid-sentence
        await app[CALL_HUB].close()
        assert call.ended

    try:
        await asyncio.gather(
            place_call(hearsay, clip("jfk"), call_sid=call_sid, speed=1.0, send_stop=False), shut_down())
    finally:
        await hearsay.close()
    ended = await consumer.wait(call_sid)
    assert ended["reason"] == EndReason.SHUTDOWN
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.process
async def test_the_command_line_simulator_places_a_call(hearsay: RunningApp, consumer: WebhookConsumer) -> None:
    """`python -m app twilio-sim --voice-url … FILE`, run as a user would, is heard."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "twilio-sim", "--voice-url", voice_url(hearsay),
        "--auth-token", TOKEN, "--to", SUPPORT, "--speed", "0", "--dtmf", "7",
        str(clip_path("cards-005")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[1])
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 0, err.decode()
    summary = json.loads(out)
    ended = await consumer.wait(summary["callSid"])
    assert wer(reference("cards-005"), ended["transcript"]) <= 3 / 9, ended["transcript"]  # 1 wrong
    assert [e["dtmf"]["digit"] for e in consumer.of_type("dtmf", summary["callSid"])] == ["7"]


@pytest.mark.process
async def test_the_command_line_simulator_reports_a_rejected_call(hearsay: RunningApp) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "twilio-sim", "--voice-url", voice_url(hearsay),
        "--auth-token", TOKEN, "--to", UNROUTED, str(clip_path("cards-001")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[1])
    _, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 1
    assert "rejected" in err.decode()
