"""The SDK's real-time session (`client/hearsay_client/realtime.py`) against the real server:
real clips through `/v1/stream`, the bundled Whisper model, a real network cut in between.

WER bounds are "k / n" as in test_stream_api.py: n words in the reference, k allowed wrong
(what tiny.en gets wrong here, plus two for other CPU kernels).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from hearsay_client import (
    AuthenticationError,
    Backoff,
    ConfigError,
    ConnectionLostError,
    Hearsay,
    InvalidAudioError,
    ServerBusyError,
    SessionClosedError,
    StreamingResult,
    StreamingSession,
)
from net_helpers import TcpProxy
from service_helpers import StartApp, clip, make_settings, reference, silence, until, wer
from speech import words

FAST = Backoff(initial_s=0.05, max_s=0.5, max_attempts=40)  # reconnects within a test's patience


async def send_paced(session: StreamingSession, audio: bytes, speed: float = 2.0, chunk: int = 3200) -> None:
    """Send `audio` (16 kHz LINEAR16) in 100 ms chunks at `speed` times real time."""
    for i in range(0, len(audio), chunk):
        await session.send_audio(audio[i:i + chunk])
        await asyncio.sleep(chunk / 32000 / speed)


async def test_a_clip_gives_partials_then_a_final_with_the_right_words(running_app: StartApp,
                                                                         tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    async with Hearsay(url=server.url("/", "ws").rstrip("/")) as client:
        session = await client.streaming.create_session({
            "sample_rate": 16000, "encoding": "LINEAR16", "language": "en", "interim_results": True,
            "single_utterance": False, "model": "mini"})
        results: list[StreamingResult] = []
        called: list[StreamingResult] = []

        async def collect() -> None:
            async for result in session.stream():
                results.append(result)

        async def on_result(result: StreamingResult) -> None:
            called.append(result)

        session.on_result(on_result)
        reader = asyncio.create_task(collect())
        await send_paced(session, clip("jfk") + silence(1.0))
        final = await session.finalize()
        await reader
        await session.close()

    first_final = next(i for i, r in enumerate(results) if r.is_final)
    assert any(not r.is_final and r.transcript for r in results[:first_final]), "no partial before the final"
    assert wer(reference("jfk"), final.text) <= 2 / 22  # 0 wrong
    assert [r.transcript for r in results if r.is_final] == [s.text for s in final.segments]
    assert called == results  # the callback saw the same results, in the same order
    assert final.duration == pytest.approx(12.0, abs=0.01)
    assert final.reconnects == 0 and final.untranscribed == ()
    last = results[-1]
    assert last.is_final and 0.0 < last.confidence <= 1.0 and 10.0 < last.timestamp <= 12.0
    with pytest.raises(SessionClosedError):
        await session.send_audio(b"\x00\x00")


async def test_the_server_dropping_the_socket_mid_session_loses_no_words(running_app: StartApp,
                                                                           tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    first = clip("arctic-aew-a0001") + silence(1.0)
    second = clip("jfk") + silence(1.0)
    port = int(server.host.rsplit(":", 1)[1])
    async with TcpProxy("127.0.0.1", port) as proxy, \
            Hearsay(url=f"ws://127.0.0.1:{proxy.port}", backoff=FAST) as client:
        session = await client.streaming.create_session({"sample_rate": 16000})
        finals: list[StreamingResult] = []
        got_first = asyncio.Event()

        def on_result(result: StreamingResult) -> None:
            if result.is_final:
                finals.append(result)
                got_first.set()

        session.on_result(on_result)
        half = len(second) // 2 & ~1
        await send_paced(session, first + second[:half], speed=4.0)
        await asyncio.wait_for(got_first.wait(), 60)
        proxy.sever()  # mid-sentence of the second clip: its words were sent but not answered
        await send_paced(session, second[half:], speed=4.0)
        final = await session.finalize()
        await session.close()

    assert final.reconnects >= 1 and proxy.connections >= 2
    assert final.untranscribed == ()
    said = reference("arctic-aew-a0001") + " " + reference("jfk")
    # 31 words; 0-1 wrong when the utterance is cut by the resend point, so 3 allows two more.
    # A word lost or transcribed twice would each count.
    assert wer(said, final.text) <= 3 / words(said), final.text
    starts = [s.start_s for s in final.segments]
    assert starts == sorted(starts) and final.segments[-1].end_s <= final.duration
    # The second clip's words sit where the second clip is in the session's audio.
    jfk_start = len(first) / 32000
    assert min(s.start_s for s in final.segments if "country" in s.text) >= jfk_start - 0.5


async def test_a_long_outage_is_reported_as_the_exact_untranscribed_span(running_app: StartApp,
                                                                           tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    port = int(server.host.rsplit(":", 1)[1])
    async with TcpProxy("127.0.0.1", port) as proxy, \
            Hearsay(url=f"ws://127.0.0.1:{proxy.port}", backoff=FAST) as client:
        session = await client.streaming.create_session({"sample_rate": 16000, "max_buffer_s": 2.0})
        await session.send_audio(silence(1.0))
        proxy.refusing = True
        proxy.sever()
        await until(lambda: not session.connected)  # the SDK has noticed the drop
        await session.send_audio(silence(4.0))  # while nobody answers: 3 s more than the buffer holds
        proxy.refusing = False
        await until(lambda: session.reconnects == 1)
        # Sent as it is spoken: what overflows now was sent, and its final clears it.
        await send_paced(session, clip("cards-005") + silence(1.0), speed=4.0)
        final = await session.finalize()
        await session.close()
    # The buffer kept the last 2 s; everything before them since the last acknowledged audio
    # (none: silence has no final) went: 0 to 3 s of the 5 s of silence.
    assert [(s.start_s, s.end_s) for s in final.untranscribed] == [(0.0, 3.0)]
    assert wer(reference("cards-005"), final.text) <= 2 / words(reference("cards-005"))


async def test_typed_errors_for_bad_config_bad_key_and_a_full_server(running_app: StartApp,
                                                                        tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path, auth={"api_keys": ["k1"]}, stream={"max_sessions": 1}))
    url = server.url("/", "ws").rstrip("/")
    async with Hearsay(url=url, api_key="wrong") as bad:
        with pytest.raises(AuthenticationError):
            await bad.streaming.create_session({"sample_rate": 16000})
    async with Hearsay(url=url, api_key="k1") as client:
        with pytest.raises(ConfigError, match="config.sample_rat"):
            await client.streaming.create_session({"sample_rat": 16000})  # the SDK's own check
        with pytest.raises(ConfigError) as rate:
            await client.streaming.create_session({"sample_rate": 4000})
        assert rate.value.code == "unsupported_sample_rate" and not rate.value.retryable
        with pytest.raises(ConfigError) as model:
            await client.streaming.create_session({"model": "enormous"})
        assert model.value.code == "unknown_model"
        session = await client.streaming.create_session({"sample_rate": 16000})
        with pytest.raises(InvalidAudioError):
            await session.send_audio(b"\x00")
        with pytest.raises(ServerBusyError) as busy:
            await client.streaming.create_session({"sample_rate": 16000})
        assert busy.value.retryable
        await session.close()


async def test_reconnect_off_fails_with_the_audio_not_transcribed(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    port = int(server.host.rsplit(":", 1)[1])
    async with TcpProxy("127.0.0.1", port) as proxy, \
            Hearsay(url=f"ws://127.0.0.1:{proxy.port}", backoff=dataclasses.replace(FAST, max_attempts=2)) as client:
        session = await client.streaming.create_session({"sample_rate": 16000})
        await session.send_audio(silence(0.5))
        proxy.refusing = True
        proxy.sever()
        await session.send_audio(silence(0.5))
        with pytest.raises(ConnectionLostError) as lost:
            await session.finalize()
        await session.close()
    assert [(s.start_s, s.end_s) for s in lost.value.untranscribed] == [(0.0, 1.0)]


async def test_vocabulary_gets_a_name_spelled_right(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    async with Hearsay(url=server.url("/", "ws").rstrip("/")) as client:
        session = await client.streaming.create_session({"sample_rate": 16000,
                                                         "vocabulary": ["Philip Steels", "Gutenberg"]})
        await session.send_audio(clip("arctic-aew-a0001") + silence(1.0))
        final = await session.finalize()
        await session.close()
    # Without the vocabulary tiny.en writes "Philip Stieles" here; with it, the name as given,
    # and nothing of the vocabulary leaks into the text ("Gutenberg" is not said).
    assert "Philip Steels" in final.text and "Gutenberg" not in final.text, final.text
    assert wer(reference("arctic-aew-a0001"), final.text) <= 2 / words(reference("arctic-aew-a0001"))
