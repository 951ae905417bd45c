"""Real-time transcription with the Python SDK: a WAV file streamed as if spoken live.

    pip install ./client
    python -m app say "Hello, I would like to check my balance." -o hello.wav
    python examples/sdk_realtime.py hello.wav [--url ws://localhost:8080] [--fast]

Prints interim results as they come and each final with its time; needs only hearsay-client
(the WAV must be 16-bit mono; the server resamples any rate).
"""

from __future__ import annotations

import argparse
import asyncio
import wave

from hearsay_client import Hearsay, StreamingResult


async def main(path: str, url: str, api_key: str | None = None, fast: bool = False) -> str:
    with wave.open(path, "rb") as wav:
        rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
    client = Hearsay(url=url, api_key=api_key)
    session = await client.streaming.create_session({
        "sample_rate": rate, "encoding": "LINEAR16", "language": "en",
        "interim_results": True, "single_utterance": False, "model": "mini"})

    def show(result: StreamingResult) -> None:
        if result.is_final:
            print(f"[{result.start_s:6.2f} - {result.end_s:6.2f}] {result.transcript}  ({result.confidence:.2f})")
        else:
            print(f"  ... {result.transcript}")

    session.on_result(show)
    chunk = rate // 10 * 2  # 100 ms
    for i in range(0, len(pcm), chunk):
        await session.send_audio(pcm[i:i + chunk])
        if not fast:
            await asyncio.sleep(0.1)  # as a microphone would deliver it
    await session.send_audio(b"\x00\x00" * rate)  # a second of silence ends the last sentence
    final = await session.finalize()
    await session.close()
    await client.close()
    print(f"\n{final.text}\n({final.duration:.1f} s of audio, {len(final.segments)} segments)")
    return final.text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wav")
    parser.add_argument("--url", default="ws://localhost:8080")
    parser.add_argument("--api-key")
    parser.add_argument("--fast", action="store_true", help="send as fast as the server takes it")
    args = parser.parse_args()
    asyncio.run(main(args.wav, args.url, args.api_key, args.fast))
