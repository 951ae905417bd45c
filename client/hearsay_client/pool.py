"""A connection pool for high-throughput callers: many real-time sessions against one server.

    async with ConnectionPool("ws://localhost:8080", max_sessions=8) as pool:
        finals = await asyncio.gather(*(pool.transcribe(pcm, {"sample_rate": 16000}) for pcm in files))
        async with pool.session({"interim_results": True}) as session:   # or one at a time, by hand
            ...

One aiohttp connector (keep-alive, at most `max_sessions` connections) shared by every
session; at most `max_sessions` sessions at a time, the rest wait their turn; a server at its
limit (ServerBusyError) is retried with the client's backoff instead of failing the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from hearsay_client._transport import Backoff
from hearsay_client.client import Hearsay
from hearsay_client.errors import ServerBusyError
from hearsay_client.realtime import StreamingSession
from hearsay_client.types import FinalTranscript


class ConnectionPool:
    """Bounded, shared connections to one Hearsay server (see the module doc)."""

    def __init__(self, url: str, api_key: str | None = None, *, max_sessions: int = 8,
                 backoff: Backoff | None = None) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._url = url
        self._api_key = api_key
        self._backoff = backoff or Backoff()
        self._slots = asyncio.Semaphore(max_sessions)
        self._max = max_sessions
        self._client: Hearsay | None = None

    def _hearsay(self) -> Hearsay:
        if self._client is None:
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._max))
            self._client = Hearsay(self._url, self._api_key, backoff=self._backoff, http=http)
        return self._client

    @contextlib.asynccontextmanager
    async def session(self, config: Mapping[str, Any] | None = None) -> AsyncIterator[StreamingSession]:
        """A real-time session from the pool, closed when the block ends."""
        async with self._slots:
            client = self._hearsay()
            for attempt in range(self._backoff.max_attempts):
                try:
                    session = await client.streaming.create_session(config)
                    break
                except ServerBusyError:
                    if attempt == self._backoff.max_attempts - 1:
                        raise
                    await asyncio.sleep(self._backoff.delay(attempt))
            try:
                yield session
            finally:
                await session.close()

    async def transcribe(self, audio: bytes, config: Mapping[str, Any] | None = None,
                         chunk_bytes: int = 32_000) -> FinalTranscript:
        """All of `audio` through one pooled session, as fast as the server takes it."""
        async with self.session(config) as session:
            for i in range(0, len(audio), chunk_bytes):
                await session.send_audio(audio[i:i + chunk_bytes])
            return await session.finalize()

    async def close(self) -> None:
        if self._client is not None:
            http = self._client._http
            await self._client.close()
            if http is not None:
                await http.close()
            self._client = None

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
