"""Talk-back end to end: the assistant answers with actions and the caller hears them.

A real Hearsay app with the session engine, a real webhook consumer that answers events with
actions, and the Twilio simulator as the caller, in real time (Twilio plays audio out in real
time; its marks come back once the caller has heard it). What the caller heard is transcribed
with the same engine and scored against the text that was said.

WER bounds are "k / n": n words said, k allowed wrong: Piper's voice through 8 kHz μ-law and
tiny.en, measured here (0-1 words wrong on these prompts), plus two for other CPUs' kernels.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from service_helpers import SECRET, StartApp, heard_by_caller, make_settings, transcribe_mulaw
from speech import clip_path, reference, wer

from app.bench.common import RunningApp
from app.bench.consumer import WebhookConsumer
from app.sim.twilio import SimCall, SimResult, read_wav_mulaw, stream_call

pytestmark = pytest.mark.realtime

BALANCE = "Your balance is four dollars and twenty cents."  # 8 words
WELCOME = "Welcome to the help line."  # 5 words
LONG = ("Thank you for calling. Our opening hours are nine to five on weekdays, and ten to two "
        "on Saturdays. You can also find answers to most questions on our website.")


def silence(seconds: float) -> bytes:
    return b"\xff" * round(seconds * 8000)


def clip(name: str) -> bytes:
    return read_wav_mulaw(clip_path(name))


def events_of(consumer: WebhookConsumer, call_id: str, kind: str) -> list[dict[str, Any]]:
    return consumer.of_type(kind, call_id)


async def start(running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path, *,
                greeting: str = "", **talkback: Any) -> RunningApp:
    plans = tmp_path / "dialplans"
    plans.mkdir(exist_ok=True)
    extra = f'[talkback]\ngreeting = "{greeting}"\n' if greeting else ""
    (plans / "bot.toml").write_text(
        f'name = "bot"\n[match]\ntwilio_to = ["*"]\n[webhook]\nurl = "{consumer.url}"\nsecret = "{SECRET}"\n'
        + extra)
    return await running_app(make_settings(tmp_path, talkback=talkback))


async def call(hearsay: RunningApp, audio: bytes, **options: Any) -> SimResult:
    url = hearsay.url("/twilio/media").replace("http://", "ws://")
    sim = SimCall(url=url, audio=audio, speed=1.0, custom_parameters={"dialplan": "bot"}, **options)
    async with aiohttp.ClientSession() as session:
        return await stream_call(session, sim)


def answer_to(kind: str, actions: list[dict[str, Any]]) -> Any:
    return lambda event: {"actions": actions} if event["type"] == kind else None


async def test_say_is_heard_by_the_caller_then_hangup_ends_the_call(
    engine: Any, running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    hearsay = await start(running_app, consumer, tmp_path)
    consumer.reply_to = answer_to("call.started", [{"say": BALANCE}, {"hangup": True}])
    result = await call(hearsay, silence(15.0))
    ended = await consumer.wait(result.call_sid)
    assert ended["reason"] == "agent_hangup"
    assert result.closed_by_server  # the stream closed: Twilio ends the call
    started = events_of(consumer, result.call_sid, "playback.started")
    finished = events_of(consumer, result.call_sid, "playback.finished")
    assert len(started) == len(finished) == 1
    assert started[0]["playback"]["text"] == BALANCE and finished[0]["playback"]["id"] == started[0]["playback"]["id"]
    played = finished[0]["playback"]
    assert 1.5 < played["duration_s"] < 6 and played["heard_s"] == pytest.approx(played["duration_s"], abs=0.1)
    heard = await transcribe_mulaw(engine, heard_by_caller(result))
    assert wer(BALANCE, heard) <= 2 / 8, heard


async def test_greeting_then_the_answer_to_an_utterance_with_a_bad_action_in_it(
    engine: Any, running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    hearsay = await start(running_app, consumer, tmp_path, greeting=WELCOME)
    consumer.reply_to = answer_to("utterance.final", [
        {"shout": "hello"}, {"say": BALANCE}, {"transfer": "sip:200@pbx.example.com"}, {"hangup": True}])
    # The caller speaks after the greeting, then waits for the answer.
    result = await call(hearsay, silence(3.0) + clip("arctic-aew-a0001") + silence(14.0))
    ended = await consumer.wait(result.call_sid)
    assert ended["reason"] == "agent_hangup"
    # 8 words said; tiny.en hears them exactly here.
    assert wer(reference("arctic-aew-a0001"), ended["transcript"]) <= 2 / 8, ended["transcript"]
    errors = [e["error"] for e in events_of(consumer, result.call_sid, "action.error")]
    assert [e["index"] for e in errors] == [0, 2]
    assert errors[0]["action"] == {"shout": "hello"} and "exactly one of say" in errors[0]["message"]
    assert "Twilio" in errors[1]["message"]  # a Twilio call is moved with Twilio's REST API
    texts = [e["playback"]["text"] for e in events_of(consumer, result.call_sid, "playback.finished")]
    assert texts == [WELCOME, BALANCE]
    heard = await transcribe_mulaw(engine, heard_by_caller(result))
    assert wer(f"{WELCOME} {BALANCE}", heard) <= 3 / 13, heard


async def test_the_caller_barges_in_and_is_heard(
    engine: Any, running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    hearsay = await start(running_app, consumer, tmp_path)
    consumer.reply_to = answer_to("call.started", [{"say": LONG}, {"say": BALANCE}])
    # The prompt is about 10 s long; the caller talks over it after 4 s.
    result = await call(hearsay, silence(4.0) + clip("arctic-aew-a0003") + silence(2.0))
    ended = await consumer.wait(result.call_sid)
    kinds = [type(m).__name__ for m in result.received]
    assert "Clear" in kinds
    interrupted = events_of(consumer, result.call_sid, "playback.interrupted")
    assert len(interrupted) == 1 and interrupted[0]["playback"]["text"] == LONG
    assert 1.0 < interrupted[0]["playback"]["heard_s"] < 7.0
    assert events_of(consumer, result.call_sid, "playback.finished") == []  # BALANCE was dropped
    # 11 words; heard exactly here.
    assert wer(reference("arctic-aew-a0003"), ended["transcript"]) <= 2 / 11, ended["transcript"]


@pytest.mark.parametrize("gate", [True, False])
async def test_the_prompts_echo_is_not_taken_for_the_caller(
    gate: bool, running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    """The line echoes the prompt back 20 dB down. With the echo gate, nothing is transcribed
    and the prompt plays to the end; without it (a 60 dB margin), the same echo is heard as the
    caller, which shows the test can fail."""
    hearsay = await start(running_app, consumer, tmp_path, echo_margin_db=10.0 if gate else 60.0)
    prompt = "Thank you for calling. Our opening hours are nine to five on weekdays."
    consumer.reply_to = answer_to("call.started", [{"say": prompt, "interruptible": False}, {"hangup": True}])
    result = await call(hearsay, silence(15.0), echo_db=20.0)
    ended = await consumer.wait(result.call_sid)
    assert events_of(consumer, result.call_sid, "playback.finished")
    if gate:
        assert ended["utterances"] == [], ended["transcript"]
    else:
        assert ended["utterances"], "the echo should have been heard without the gate"


async def test_a_private_address_is_refused_and_actions_can_be_posted(
    running_app: StartApp, consumer: WebhookConsumer, tmp_path: Path
) -> None:
    hearsay = await start(running_app, consumer, tmp_path)
    consumer.reply_to = answer_to("call.started", [{"play": consumer.url + "/hold.wav"}])
    audio = silence(6.0)

    async def post_later(call_sid: str) -> list[tuple[int, dict[str, Any]]]:
        await consumer.wait(call_sid, "action.error")  # the answer's `play` was refused first
        answers = []
        async with aiohttp.ClientSession() as session:
            for target, body in ((call_sid, {"actions": [{"pause": 0.1}, {"hangup": "yes"}, {"hangup": True}]}),
                                 ("CA" + "0" * 32, {"actions": [{"hangup": True}]}),
                                 (call_sid, ["not", "an", "object"])):
                async with session.post(hearsay.url(f"/v1/calls/{target}/actions"), json=body) as response:
                    answers.append((response.status, await response.json()))
        return answers

    sim = SimCall(url="", audio=b"")
    result, answers = await asyncio.gather(call(hearsay, audio, call_sid=sim.call_sid), post_later(sim.call_sid))
    ended = await consumer.wait(result.call_sid)
    errors = [e["error"] for e in events_of(consumer, result.call_sid, "action.error")]
    refused = next(e for e in errors if "play" in e["action"])
    assert "127.0.0.1" in refused["message"]  # loopback: refused unless allow_private_urls
    assert answers[0] == (202, {"call_id": result.call_sid, "queued": 2,
                                "errors": [{"index": 1, "message": answers[0][1]["errors"][0]["message"]}]})
    assert answers[0][1]["errors"][0]["message"].startswith("actions[1].hangup: expected true")
    assert answers[1][0] == 404 and answers[1][1]["error"] == "unknown_call"
    assert answers[2][0] == 400
    assert ended["reason"] == "agent_hangup"  # the posted hangup ended the call
