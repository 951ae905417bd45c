"""The bridge's wire format (sip/bridge.py): what one side writes, the other reads back, and
what a broken peer gets."""

from __future__ import annotations

import asyncio
import struct

import pytest

from sip.bridge import FRAME_BYTES, PLAY_CHUNK, BridgeError, BridgeStream, Kind, pack_audio, pack_event, pack_play


async def pipe(data: bytes) -> BridgeStream:
    """A BridgeStream reading `data` then end of stream."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return BridgeStream(reader, None)  # type: ignore[arg-type]


async def test_events_audio_and_play_read_back_in_order() -> None:
    frames = [bytes([i % 256]) * FRAME_BYTES for i in range(PLAY_CHUNK + 3)]
    data = (pack_event(7, {"type": "offer", "user": "100"}) + pack_audio(7, b"\x01\x02" * 160, 12.5)
            + b"".join(pack_play(7, 3, frames)))
    stream = await pipe(data)
    offer = await stream.read()
    assert offer is not None and offer.kind is Kind.EVENT and offer.call == 7
    assert offer.event == {"type": "offer", "user": "100"}
    audio = await stream.read()
    assert audio is not None and audio.pcm == b"\x01\x02" * 160 and audio.sent_at == 12.5
    first, second = await stream.read(), await stream.read()
    assert first is not None and second is not None
    assert (first.key, second.key) == (3, 3)
    assert list(first.frames + second.frames) == frames  # split in two, nothing lost
    assert await stream.read() is None  # the other side went away


@pytest.mark.parametrize(("data", "error"), [
    (struct.pack("!IBI", 5 + 4, 3, 1) + b"nope", "not JSON"),
    (struct.pack("!IBI", 5 + 2, 3, 1) + b"[]", "without a type"),
    (struct.pack("!IBI", 5 + 4 + 7, 2, 1) + b"\0" * 11, "not whole frames"),
    (struct.pack("!IBI", 5, 9, 1), "unknown message kind 9"),
    (struct.pack("!IBI", 1 << 24, 3, 1), "a message of"),
])
async def test_a_broken_message_is_an_error_naming_it(data: bytes, error: str) -> None:
    stream = await pipe(data)
    with pytest.raises(BridgeError, match=error):
        await stream.read()


async def test_a_message_cut_short_reads_as_the_end() -> None:
    stream = await pipe(pack_event(1, {"type": "dtmf", "digit": "5"})[:-3])
    assert await stream.read() is None
