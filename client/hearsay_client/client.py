"""The client: `Hearsay(url=..., api_key=...)` and its `streaming` sessions.

    async with Hearsay(url="ws://localhost:8080", api_key=None) as client:
        session = await client.streaming.create_session({...})              # real time, /v1/stream
        prog = await client.streaming.create_progressive_session({...})     # long files, /v1/progressive
        meeting = await client.streaming.create_meeting_session({...})      # participants, /v1/meetings

One aiohttp `ClientSession` per client, shared by its sessions; it is opened on first use
(so a client can be made outside a running loop) and closed by `close()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from hearsay_client._transport import Backoff, Transport
from hearsay_client.config import meeting_config, streaming_config
from hearsay_client.meeting import MeetingSession
from hearsay_client.progressive import ProgressiveSession, progressive_config
from hearsay_client.realtime import StreamingSession


class Hearsay:
    """A Hearsay server. `url`: ws(s):// or http(s):// host and port; `api_key`: sent as
    `Authorization: Bearer` when the server wants one. `backoff` tunes reconnects."""

    def __init__(self, url: str = "ws://localhost:8080", api_key: str | None = None, *,
                 backoff: Backoff | None = None, http: aiohttp.ClientSession | None = None) -> None:
        self.url = url
        self.api_key = api_key
        self.backoff = backoff or Backoff()
        self._http = http
        self._own_http = http is None
        self.streaming = Streaming(self)

    def _transport(self) -> Transport:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
            self._own_http = True
        return Transport(self._http, self.url, self.api_key, self.backoff)

    async def close(self) -> None:
        """Close the HTTP session (if the client opened it). Sessions should be closed first."""
        if self._http is not None and self._own_http:
            await self._http.close()
        self._http = None

    async def __aenter__(self) -> Hearsay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Streaming:
    """The session factories (`client.streaming`)."""

    def __init__(self, client: Hearsay) -> None:
        self._client = client

    async def create_session(self, config: Mapping[str, Any] | None = None) -> StreamingSession:
        """A real-time session (config keys: `hearsay_client.config`). Raises ConfigError,
        AuthenticationError, ServerBusyError or ConnectionLostError if it cannot start."""
        session = StreamingSession(self._client._transport(), streaming_config(config or {}))
        await session.start()
        return session

    async def create_progressive_session(self, config: Mapping[str, Any] | None = None) -> ProgressiveSession:
        """A progressive session for a long file sent in chunks (`hearsay_client.progressive`)."""
        session = ProgressiveSession(self._client._transport(), progressive_config(config or {}))
        await session.start()
        return session

    async def resume_progressive_session(self, session_id: str) -> ProgressiveSession:
        """A progressive session created earlier (by this or another process), by its id."""
        return await ProgressiveSession.resume(self._client._transport(), session_id)

    async def create_meeting_session(self, config: Mapping[str, Any]) -> MeetingSession:
        """A meeting: one recognizer per participant, results merged in time order."""
        session = MeetingSession(self._client._transport(), meeting_config(config))
        await session.start()
        return session
