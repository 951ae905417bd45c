"""CallHub and Call with the real engine and a real SQLite outbox (no server): the events a
call writes, in order, with per-call utterance numbering."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from service_helpers import clip, reference, silence, telephone, wer

from app.calls import CallHub, CallInfo, CallRejected, CallSource, EndReason, MediaUnsupported, Rejection
from app.delivery.outbox import Outbox
from app.dialplans import Dialplan, Dialplans
from app.pipeline.types import AudioFormat, Encoding, SpeechEvent, SpeechEventKind, Transcript

PHONE = AudioFormat(Encoding.MULAW, 8000)
PLAN = Dialplan(name="support", webhook_url="http://127.0.0.1:9/hook", webhook_secret="s",
                match={"sip": ("*",)})
FRAME = 160  # 20 ms of 8 kHz mu-law


@pytest.fixture
async def outbox(tmp_path: Path) -> Any:
    box = await Outbox.open(tmp_path / "outbox.sqlite3")
    yield box
    await box.close()


def info(call_id: str, plan: Dialplan | None = PLAN, source: CallSource = CallSource.SIP) -> CallInfo:
    return CallInfo(id=call_id, source=source, from_="sip:alice@example.org", to="100", dialplan=plan,
                    metadata={"sip_user": "100"})


async def payloads(outbox: Outbox, call_id: str) -> list[dict[str, Any]]:
    records = sorted(await outbox.list(limit=1000), key=lambda r: r.seq)
    return [r.event.payload() for r in records if r.event.call_id == call_id]


async def play(call: Any, audio: bytes) -> None:
    for i in range(0, len(audio), FRAME):
        await call.feed(audio[i:i + FRAME])


async def test_a_call_writes_started_finals_dtmf_and_ended_in_order(engine: Any, outbox: Outbox) -> None:
    hub = CallHub(engine, Dialplans([PLAN]), outbox)
    call = await hub.start(info("c1"), PHONE)
    assert hub.active == 1 and hub.get("c1") is call
    heard: list[Transcript] = []
    ended: list[bool] = []
    first_final = asyncio.Event()

    def on_transcript(t: Transcript) -> None:
        heard.append(t)
        if t.is_final:
            first_final.set()

    call.listen(on_transcript, lambda: ended.append(True))
    await play(call, telephone(clip("ljspeech-LJ001-0002") + silence(1.2)))
    await asyncio.wait_for(first_final.wait(), 30)
    call.dtmf("5")  # pressed after the first sentence was heard
    with pytest.raises(ValueError, match="dtmf digit"):
        call.dtmf("x")
    await play(call, telephone(clip("ljspeech-LJ001-0008")))  # still talking at hang-up
    await call.end("hangup")
    await call.end("again")  # idempotent
    assert ended == [True] and hub.active == 0 and call.ended

    events = await payloads(outbox, "c1")
    assert [e["type"] for e in events] == [
        "call.started", "utterance.final", "dtmf", "utterance.final", "call.ended"]
    started, first, key, second, end = events
    assert started["call"] == {"id": "c1", "source": "sip", "from": "sip:alice@example.org", "to": "100",
                               "dialplan": "support", "metadata": {"sip_user": "100"}}
    assert key["dtmf"] == {"digit": "5"}
    assert [first["utterance"]["index"], second["utterance"]["index"]] == [0, 1]
    assert wer(reference("ljspeech-LJ001-0002"), first["utterance"]["text"]) < 0.3
    assert wer(reference("ljspeech-LJ001-0008"), second["utterance"]["text"]) < 0.3  # finalised at end
    assert first["utterance"]["end_s"] <= second["utterance"]["start_s"]
    assert end["reason"] == "hangup"
    assert end["transcript"] == f'{first["utterance"]["text"]} {second["utterance"]["text"]}'
    assert [u["index"] for u in end["utterances"]] == [0, 1]
    assert [t.text for t in heard if t.is_final] == [first["utterance"]["text"], second["utterance"]["text"]]
    assert call.transcript == end["transcript"]


async def test_partials_only_when_the_dialplan_asks(engine: Any, outbox: Outbox) -> None:
    chatty = Dialplan(name="chatty", webhook_url="http://127.0.0.1:9/hook", interim_results=True)
    hub = CallHub(engine, Dialplans([chatty]), outbox)
    call = await hub.start(info("c2", chatty), PHONE)
    audio = telephone(clip("jfk") + silence(1.0))
    for i in range(0, len(audio), 1600):  # 200 ms at a time, twice real time: interims appear
        await call.feed(audio[i:i + 1600])
        await asyncio.sleep(0.1)
    await call.end()
    types = [e["type"] for e in await payloads(outbox, "c2")]
    assert "utterance.partial" in types
    assert types.index("utterance.partial") < types.index("utterance.final")
    assert types[-1] == "call.ended"


async def test_no_dialplan_means_no_events_but_listeners_still_hear(engine: Any, outbox: Outbox) -> None:
    hub = CallHub(engine, Dialplans([]), outbox)
    call = await hub.start(info("c3", None, CallSource.STREAM), AudioFormat(Encoding.LINEAR16, 16000))

    async def listen() -> list[Transcript]:
        return [t async for t in call.transcripts()]

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)
    await call.feed(clip("ljspeech-LJ001-0002") + silence(1.0))
    await call.end()
    heard = await listener
    assert wer(reference("ljspeech-LJ001-0002"), " ".join(t.text for t in heard if t.is_final)) < 0.3
    assert await payloads(outbox, "c3") == []


async def test_two_tracks_are_labelled_by_speaker(engine: Any, outbox: Outbox) -> None:
    hub = CallHub(engine, Dialplans([PLAN]), outbox)
    call = await hub.start(info("c4", source=CallSource.TWILIO), PHONE, agent_audio=PHONE)
    caller = telephone(clip("ljspeech-LJ001-0002") + silence(1.0))
    agent = telephone(silence(0.5) + clip("ljspeech-LJ001-0008") + silence(1.0))
    for i in range(0, max(len(caller), len(agent)), FRAME):
        if i < len(caller):
            call.push(caller[i:i + FRAME])
        if i < len(agent):
            call.push_agent(agent[i:i + FRAME])
        await asyncio.sleep(0)
    await call.end()
    finals = [e["utterance"] for e in await payloads(outbox, "c4") if e["type"] == "utterance.final"]
    by_speaker = {u["speaker"]: u["text"] for u in finals}
    assert wer(reference("ljspeech-LJ001-0002"), by_speaker["caller"]) < 0.3
    assert wer(reference("ljspeech-LJ001-0008"), by_speaker["agent"]) < 0.3
    assert sorted(u["index"] for u in finals) == [0, 1]


async def test_closing_the_hub_ends_calls_and_refuses_new_ones(engine: Any, outbox: Outbox) -> None:
    hub = CallHub(engine, Dialplans([PLAN]), outbox)
    first = await hub.start(info("c5"), PHONE)
    with pytest.raises(CallRejected, match="already in progress") as duplicate:
        await hub.start(info("c5"), PHONE)
    assert duplicate.value.reason is Rejection.DUPLICATE
    await play(first, telephone(clip("ljspeech-LJ001-0002")))  # mid-utterance at shutdown
    await hub.close()
    assert first.ended and hub.active == 0
    with pytest.raises(CallRejected, match="shutting down") as closing:
        await hub.start(info("c6"), PHONE)
    assert closing.value.reason is Rejection.UNAVAILABLE
    events = await payloads(outbox, "c5")
    assert [e["type"] for e in events] == ["call.started", "utterance.final", "call.ended"]
    assert events[-1]["reason"] == "shutdown"
    assert wer(reference("ljspeech-LJ001-0002"), events[-1]["transcript"]) < 0.3


@pytest.mark.parametrize(("audio", "options", "reason", "complaint"), [
    (AudioFormat(Encoding.MULAW, 4000), {}, Rejection.UNSUPPORTED_AUDIO, "sample rate 4000 Hz"),
    (PHONE, {"model": "huge"}, Rejection.UNKNOWN_MODEL, "'huge' is not loaded"),
    (PHONE, {"language": "de"}, Rejection.UNKNOWN_MODEL, "needs a multilingual model"),
])
async def test_every_refusal_is_one_call_rejected_and_nothing_is_written(
    engine: Any, outbox: Outbox, audio: AudioFormat, options: dict[str, Any], reason: Rejection,
    complaint: str,
) -> None:
    hub = CallHub(engine, Dialplans([PLAN]), outbox)
    with pytest.raises(CallRejected, match=complaint) as refused:
        await hub.start(info("c7"), audio, **options)
    assert refused.value.reason is reason
    assert hub.active == 0 and await payloads(outbox, "c7") == []


async def test_speech_events_reach_listeners_before_the_final(engine: Any, outbox: Outbox) -> None:
    """Barge-in and turn-taking read these: speech started as soon as the caller speaks, ended
    once the turn's silence is heard, both before the final text of that utterance."""
    hub = CallHub(engine, Dialplans([PLAN]), outbox)
    call = await hub.start(info("c8"), PHONE)
    seen: list[SpeechEvent | Transcript] = []
    call.listen(lambda t: seen.append(t) if t.is_final else None, on_speech=seen.append)
    await play(call, telephone(silence(1.0) + clip("ljspeech-LJ001-0002") + silence(1.5)))
    await call.end(EndReason.HANGUP)
    kinds = [e.kind if isinstance(e, SpeechEvent) else "final" for e in seen]
    assert kinds[0] is SpeechEventKind.STARTED and "final" in kinds
    assert kinds.index(SpeechEventKind.ENDED) < kinds.index("final")
    started = next(e for e in seen if isinstance(e, SpeechEvent))
    final = next(e for e in seen if isinstance(e, Transcript))
    assert 0.5 <= started.at_s <= 1.3  # speech begins 1.0 s into the call
    ended = next(e for e in seen if isinstance(e, SpeechEvent) and e.kind is SpeechEventKind.ENDED)
    assert ended.at_s == pytest.approx(final.end_s, abs=0.05)


async def test_a_call_without_media_says_so_plainly(engine: Any, outbox: Outbox) -> None:
    hub = CallHub(engine, Dialplans([PLAN]), outbox)
    call = await hub.start(info("c9"), PHONE)
    with pytest.raises(MediaUnsupported, match="no outbound audio"):
        call.media.play(b"\0\0" * 160, 8000)
    assert call.media.clear() == []
    await call.end()
    assert call.end_reason is EndReason.HANGUP


async def test_the_hub_refuses_new_calls_while_the_engine_is_behind(engine: Any, outbox: Outbox) -> None:
    guarded = CallHub(engine, Dialplans([]), outbox, busy_late_ms=100)
    unguarded = CallHub(engine, Dialplans([]), outbox)  # busy_late_ms 0: never for this
    wideband = AudioFormat(Encoding.LINEAR16, 16000)
    turn = clip("ljspeech-LJ001-0002") + silence(1.3)
    # Two callers' audio reaches the engine faster than it can hear it, as it does on a machine
    # with more calls than it can take: 17.5 s each at once, five turns per caller.
    calls = [await guarded.start(info(f"c{i}", None, CallSource.STREAM), wideband) for i in (1, 2)]

    async def finals(call: Any) -> list[str]:
        return [t.text for t in [t async for t in call.transcripts()] if t.is_final]

    listeners = [asyncio.create_task(finals(call)) for call in calls]
    await asyncio.sleep(0)
    audio = turn * 5
    pushed = [call.push(audio[i:i + 640]) for i in range(0, len(audio), 640) for call in calls]
    for call in calls:
        await call.end()
    heard = await asyncio.gather(*listeners)
    assert all(pushed)  # nothing dropped ...
    assert [sum("modern" in text.lower() for text in texts) for texts in heard] == [5, 5]  # ... nor lost
    with pytest.raises(CallRejected) as refused:
        await guarded.start(info("c3"), PHONE)
    assert refused.value.reason is Rejection.BUSY and "busy_late_ms" in refused.value.message
    assert guarded.get("c3") is None
    gauge = next(line for line in guarded.metrics.render().decode().splitlines()
                 if line.startswith("hearsay_recent_lateness_seconds "))
    assert float(gauge.split()[1]) > 0.1  # what an operator's dashboard shows
    assert (await unguarded.start(info("c4"), PHONE)).id == "c4"
    # A Twilio call was let in at its voice webhook; its media stream is not refused later.
    assert (await guarded.start(info("c5", None, CallSource.TWILIO), PHONE)).id == "c5"
    await guarded.close()
    await unguarded.close()


async def test_before_any_final_the_hub_takes_the_calls_its_starting_limit_allows(
        engine: Any, outbox: Outbox) -> None:
    hub = CallHub(engine, Dialplans([PLAN]), outbox, busy_late_ms=300, starting_limit=1)
    first = await hub.start(info("c1"), PHONE)
    with pytest.raises(CallRejected) as refused:
        await hub.start(info("c2"), PHONE)
    assert refused.value.reason is Rejection.BUSY and "until its finals say more" in refused.value.message
    # A Twilio call was let in at its voice webhook; its media stream is not refused later.
    twilio = await hub.start(info("c3", None, CallSource.TWILIO), PHONE)
    assert hub.get("c3") is twilio
    await first.end()
    await twilio.end()
    assert (await hub.start(info("c4"), PHONE)).id == "c4"
    await hub.close()


async def test_the_hub_refuses_past_max_live_calls_until_one_ends(engine: Any, outbox: Outbox) -> None:
    hub = CallHub(engine, Dialplans([PLAN]), outbox, max_live_calls=2)
    first, _ = await hub.start(info("c1"), PHONE), await hub.start(info("c2"), PHONE)
    assert hub.admit() is not None
    with pytest.raises(CallRejected) as refused:
        await hub.start(info("c3"), PHONE)
    assert refused.value.reason is Rejection.BUSY and "max_live_calls" in refused.value.message
    assert hub.get("c3") is None and hub.active == 2
    await first.end()
    assert hub.admit() is None and (await hub.start(info("c3"), PHONE)).id == "c3"
    await hub.close()
