"""A meeting with the Python SDK: each participant's WAV streamed at once, as if each spoke
into their own microphone; results merged in time order, then the summary.

    pip install ./client
    python -m app say "Hello, I would like to check my balance." -o hello.wav
    python -m app say "My card was charged twice last week." -o card.wav
    python examples/sdk_meeting.py alice=hello.wav bob=card.wav \
        [--url ws://localhost:8080] [--fast]

The WAVs must be 16-bit mono at one sample rate.
"""

from __future__ import annotations

import argparse
import asyncio
import wave

from hearsay_client import Hearsay, MeetingSession, MeetingSummary


async def speak(meeting: MeetingSession, who: str, pcm: bytes, rate: int, fast: bool) -> None:
    chunk = rate // 10 * 2  # 100 ms
    for i in range(0, len(pcm), chunk):
        await meeting.send_audio(pcm[i:i + chunk], speaker_id=who)
        await asyncio.sleep(0.02 if fast else 0.1)
    await meeting.send_audio(b"\x00\x00" * rate, speaker_id=who)


async def main(people: dict[str, str], url: str, api_key: str | None = None, fast: bool = False) -> MeetingSummary:
    audio = {}
    for who, path in people.items():
        with wave.open(path, "rb") as wav:
            audio[who] = (wav.getframerate(), wav.readframes(wav.getnframes()))
    rate = next(iter(audio.values()))[0]
    async with Hearsay(url=url, api_key=api_key) as client:
        meeting = await client.streaming.create_meeting_session({
            "meeting_id": "example", "sample_rate": rate,
            "participants": [{"id": who, "language": "en"} for who in people]})

        async def show() -> None:
            async for result in meeting.stream():
                if result.is_final:
                    print(f"[{result.start_s:6.2f}] {result.speaker_id}: {result.transcript}")

        printer = asyncio.create_task(show())
        await asyncio.gather(*(speak(meeting, who, pcm, rate, fast) for who, (_, pcm) in audio.items()))
        summary = await meeting.finalize()
        await printer
        await meeting.close()
    print(f"\n{summary.full_transcript}")
    for s in summary.speakers:
        print(f"{s.id}: {s.words} words, {s.talk_time_s:.1f} s of speech, "
              f"joined at {s.joined_s:.1f} s, left at {s.left_s:.1f} s")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("people", nargs="+", metavar="ID=FILE.wav")
    parser.add_argument("--url", default="ws://localhost:8080")
    parser.add_argument("--api-key")
    parser.add_argument("--fast", action="store_true", help="send faster than real time")
    args = parser.parse_args()
    asyncio.run(main(dict(p.split("=", 1) for p in args.people), args.url, args.api_key, args.fast))
