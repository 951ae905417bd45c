"""`WEBM_OPUS` on `/v1/stream` (app/ingress/stream_container.py): a WebM/Opus file, as a
browser's MediaRecorder makes it, sent in pieces cut at arbitrary byte boundaries, is heard
as the same words as the whole file sent at once; a broken container gets `invalid_audio`.

Real app, real engine, real PyAV; the file is made from a clip by libopus (tests/service_helpers).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import aiohttp
from service_helpers import (
    StartApp,
    clip,
    make_settings,
    next_message,
    receive_all,
    reference,
    silence,
    webm_opus,
    wer,
)

WEBM = {"type": "start_transcription", "config": {"encoding": "WEBM_OPUS"}}
STOP = {"type": "stop_transcription"}


async def transcribe(url: str, pieces: list[bytes]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json(WEBM)
        assert (await next_message(ws))["type"] == "transcription_started"
        for piece in pieces:
            await ws.send_bytes(piece)
        await ws.send_json(STOP)
        return await receive_all(ws)


def cut_at_random(data: bytes, seed: int) -> list[bytes]:
    """`data` in pieces of 1 byte to 4 kB, cut wherever the dice say (container headers,
    cluster and block boundaries included)."""
    rng = random.Random(seed)
    cuts = sorted({0, len(data), *(rng.randrange(1, len(data)) for _ in range(len(data) // 2000))})
    cuts += [1, 2, 3]  # the EBML header itself split byte by byte
    cuts = sorted(set(cuts))
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


async def test_webm_split_at_random_bytes_is_heard_like_the_whole_file(running_app: StartApp,
                                                                        tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    url = server.url("/v1/stream")
    webm = webm_opus(clip("jfk") + silence(1.0))
    pieces = cut_at_random(webm, seed=14)
    assert len(pieces) > 40 and b"".join(pieces) == webm

    whole = await transcribe(url, [webm])
    split = await transcribe(url, pieces)

    assert whole[-1]["type"] == "transcription_complete" and split[-1]["type"] == "transcription_complete"
    text = whole[-1]["result"]["text"]
    assert wer(reference("jfk"), text) <= 2 / 22  # 0 wrong (the Opus round trip changes nothing here)
    assert split[-1]["result"]["text"] == text
    # 12 s of audio; Opus pads its first frame by 6.5 ms (pre-skip is honoured) and the last to 20 ms.
    assert abs(split[-1]["result"]["duration"] - 12.0) < 0.05
    assert not [m for m in split if m["type"] == "error"]


async def test_a_broken_container_is_an_invalid_audio_error(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    messages = await transcribe(server.url("/v1/stream"), [b"this is not a webm file" * 200])
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["invalid_audio"], messages
    assert messages[-1]["type"] == "transcription_complete"
