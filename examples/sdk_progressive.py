"""A long recording (any format: mp3, wav, m4a, ogg, webm, ...) transcribed progressively
with the Python SDK: sent in 5 MB chunks, segments printed as they are ready, then speakers
and topics.

    pip install ./client
    python examples/sdk_progressive.py talk.mp3 [--url ws://localhost:8080] [--diarize] [--topics]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator

from hearsay_client import Hearsay, ProgressiveTranscript

CHUNK = 5 * 1024 * 1024


def read_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


async def main(path: str, url: str, api_key: str | None = None, diarize: bool = False,
               topics: bool = False) -> ProgressiveTranscript:
    chunks = read_chunks(path)
    async with Hearsay(url=url, api_key=api_key) as client:
        prog = await client.streaming.create_progressive_session({
            "model": "mini", "language": "en", "diarize": diarize, "topics": topics, "return_segments": True})
        print(f"session {prog.id}")
        shown = 0
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:  # never block the loop
            result = await prog.send_chunk(chunk)
            for segment in result.segments[shown:]:
                print(f"[{segment.start_s:7.2f} - {segment.end_s:7.2f}] {segment.text}")
            shown = len(result.segments)
            p = result.progress
            print(f"  sent {p.received_bytes} bytes; {p.decoded_s:.0f} s decoded so far")
        final = await prog.finalize()
    print()
    for segment in final.segments:
        who = f"{segment.speaker}: " if segment.speaker else ""
        print(f"[{segment.start_s:7.2f} - {segment.end_s:7.2f}] {who}{segment.text}")
    print(f"\n{final.duration:.1f} s of audio in {final.processing_s:.1f} s "
          f"({final.duration / max(final.processing_s, 1e-9):.1f}x real time)")
    if final.speakers:
        print("speakers:", ", ".join(final.speakers))
    if final.topics:
        print("topics:", ", ".join(t.text for t in final.topics))
    return final


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--url", default="ws://localhost:8080")
    parser.add_argument("--api-key")
    parser.add_argument("--diarize", action="store_true", help="label segments by speaker")
    parser.add_argument("--topics", action="store_true", help="key phrases of the transcript")
    args = parser.parse_args()
    asyncio.run(main(args.file, args.url, args.api_key, args.diarize, args.topics))
