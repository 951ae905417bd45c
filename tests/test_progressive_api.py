"""`/v1/progressive` over plain HTTP (app/ingress/progressive.py): resumable offsets, the
state a client comes back to, and the refusals, with the real app and engine."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from media_helpers import encode, join
from service_helpers import StartApp, make_settings, reference, wer
from speech import words


async def test_offsets_make_an_upload_resumable(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path))
    pcm, _ = join(["jfk"], gap_s=0.5)
    wav = encode(pcm, "wav")
    base = server.url("/v1/progressive")
    async with aiohttp.ClientSession() as http:
        async with http.post(base, json={"return_segments": True}) as resp:
            assert resp.status == 201
            job = (await resp.json())["id"]
        chunks = f"{base}/{job}/chunks"
        async with http.post(chunks, params={"offset": "0"}, data=wav[:40_000]) as resp:
            assert (await resp.json())["progress"]["received_bytes"] == 40_000
        # The answer was "lost": the client sends an overlapping chunk again; only new bytes count.
        async with http.post(chunks, params={"offset": "30000"}, data=wav[30_000:80_000]) as resp:
            assert (await resp.json())["progress"]["received_bytes"] == 80_000
        async with http.post(chunks, params={"offset": "90000"}, data=wav[90_000:]) as resp:
            assert resp.status == 409
            assert await resp.json() == {"error": "invalid_offset", "message": "the next chunk must start at byte 80000",
                                         "expected_offset": 80_000}
        async with http.post(f"{base}/{job}/finalize", params={"total_bytes": str(len(wav))}) as resp:
            assert resp.status == 409 and (await resp.json())["expected_offset"] == 80_000
        async with http.post(chunks, params={"offset": "80000"}, data=wav[80_000:]) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/{job}/finalize", params={"total_bytes": str(len(wav))}) as resp:
            assert resp.status == 202
        state: dict = {"status": "finishing"}
        while state["status"] not in ("done", "failed"):
            async with http.get(f"{base}/{job}", params={"wait": "10"}) as resp:
                state = await resp.json()
        async with http.post(chunks, data=b"more") as resp:
            assert resp.status == 409 and (await resp.json())["error"] == "not_receiving"
        async with http.delete(f"{base}/{job}") as resp:
            assert resp.status == 204
        async with http.get(f"{base}/{job}") as resp:
            assert resp.status == 404
    assert state["status"] == "done" and state["duration"] == 11.5
    assert wer(reference("jfk"), state["text"]) <= 2 / words(reference("jfk"))
    assert [s["index"] for s in state["segments"]] == list(range(state["segment_count"]))


async def test_refusals_name_the_problem(running_app: StartApp, tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path, progressive={"max_sessions": 1, "max_file_bytes": 1000}))
    base = server.url("/v1/progressive")
    async with aiohttp.ClientSession() as http:
        async with http.post(base, json={"diarize": True, "colour": "blue"}) as resp:
            assert resp.status == 400 and (await resp.json())["message"].startswith("config.colour: unknown key")
        async with http.post(base, data=b"{not json") as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
        async with http.post(base, json={}) as resp:
            job = (await resp.json())["id"]
        async with http.post(base, json={}) as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "too_many_sessions"
        async with http.post(f"{base}/{job}/chunks", data=b"x" * 1001) as resp:
            assert resp.status == 413 and (await resp.json())["error"] == "file_too_large"
