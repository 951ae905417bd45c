"""`client/hearsay_client/pool.py`: more files than the server takes sessions at once, through
the pool, all transcribed (a busy server is waited for, not an error for the caller)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hearsay_client import Backoff, ConnectionPool
from service_helpers import StartApp, clip, make_settings, reference, silence, wer
from speech import words

CLIPS = ["cards-005", "arctic-aew-a0001", "arctic-aew-a0002", "timit-LDC93S1"]


async def test_the_pool_transcribes_more_files_than_the_server_takes_at_once(running_app: StartApp,
                                                                            tmp_path: Path) -> None:
    server = await running_app(make_settings(tmp_path, stream={"max_sessions": 2}))
    # Three slots for a server that takes two: one session at a time meets "too many sessions"
    # and is retried until a slot frees up.
    async with ConnectionPool(server.url("/", "ws").rstrip("/"), max_sessions=3,
                              backoff=Backoff(initial_s=0.05, max_s=0.5, max_attempts=100)) as pool:
        finals = await asyncio.gather(*(pool.transcribe(clip(c) + silence(0.5), {"sample_rate": 16000})
                                        for c in CLIPS))
    for clip_id, final in zip(CLIPS, finals, strict=True):
        assert wer(reference(clip_id), final.text) <= 2 / words(reference(clip_id)), (clip_id, final.text)
