"""A progressive session: a long file sent in chunks (any size, split anywhere) to
`/v1/progressive`, transcribed by the server while it arrives.

    prog = await client.streaming.create_progressive_session(
        {"model": "mini", "language": "en", "diarize": True, "topics": True, "return_segments": True})
    result = await prog.send_chunk(five_megabytes)   # ProgressiveResult: the segments ready so far
    final = await prog.finalize()                    # ProgressiveTranscript: .text .segments .topics .duration

Each chunk is sent with its byte offset, so a chunk whose answer was lost is simply sent
again (the server skips what it already has); connection failures are retried with backoff.
The server keeps the session after the client goes away: `resume_progressive_session(id)`
picks it up again (from where the server's bytes end) or fetches its result.

Config keys: `model`, `language`, `diarize` (speaker labels), `speakers` (their number, if
known), `topics` (key phrases), `return_segments` (default True), `vocabulary` (hot words:
a string or a list of strings).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from hearsay_client._results import Callback, ResultFeed
from hearsay_client._transport import Transport
from hearsay_client.config import check_keys, vocabulary
from hearsay_client.errors import ConfigError, HearsayError, SessionError
from hearsay_client.types import Progress, ProgressiveResult, ProgressiveTranscript, Segment, Topic

PROGRESSIVE_KEYS = {"model", "language", "diarize", "speakers", "topics", "return_segments", "vocabulary"}
POLL_WAIT_S = 30.0  # each status request waits this long on the server for news
T = TypeVar("T")


def progressive_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check a progressive config (see the module doc); the wire config."""
    check_keys(raw, PROGRESSIVE_KEYS, "config")
    wire: dict[str, Any] = {}
    for key in ("diarize", "topics", "return_segments"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError(f"config.{key}: expected True or False", "invalid_config")
            wire[key] = raw[key]
    for key in ("model", "language"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str) or not raw[key].strip():
                raise ConfigError(f"config.{key}: expected a non-empty string", "invalid_config")
            wire[key] = raw[key]
    if raw.get("speakers") is not None:
        if not isinstance(raw["speakers"], int) or isinstance(raw["speakers"], bool):
            raise ConfigError("config.speakers: expected an integer", "invalid_config")
        wire["speakers"] = raw["speakers"]
    if raw.get("vocabulary") is not None:
        wire["vocabulary"] = vocabulary(raw["vocabulary"], "config.vocabulary")
    return wire


class ProgressiveSession:
    """One file's progressive transcription (see the module doc)."""

    def __init__(self, transport: Transport, config: dict[str, Any]) -> None:
        self._transport = transport
        self._config = config
        self.id = ""
        self._sent = 0
        self._segments: list[Segment] = []
        self._feed: ResultFeed[ProgressiveResult] = ResultFeed()

    @property
    def sent_bytes(self) -> int:
        """Bytes of the file the server has acknowledged."""
        return self._sent

    async def start(self) -> None:
        body = await self._retrying(lambda: self._transport.request("POST", "/v1/progressive", json=self._config))
        self.id = str(body["id"])

    @classmethod
    async def resume(cls, transport: Transport, session_id: str) -> ProgressiveSession:
        """The session `session_id`, ready to take the next bytes of the file (`sent_bytes`)."""
        session = cls(transport, {})
        session.id = session_id
        body = await session._retrying(lambda: transport.request("GET", f"/v1/progressive/{session_id}"))
        session._sent = int(body["progress"]["received_bytes"])
        session._read(body)
        return session

    async def send_chunk(self, data: bytes) -> ProgressiveResult:
        """Send the next bytes of the file; the session's state, with every segment ready so far."""
        offset = self._sent
        body = await self._retrying(lambda: self._transport.request(
            "POST", f"/v1/progressive/{self.id}/chunks", data=data,
            params={"offset": str(offset), "since": str(len(self._segments))}))
        self._sent = int(body["progress"]["received_bytes"])
        return self._read(body)

    async def status(self, wait_s: float = 0.0) -> ProgressiveResult:
        """The session's state now (or after up to `wait_s` seconds, as soon as there is news)."""
        body = await self._get(wait_s)
        return self._read(body)

    async def stream(self, wait_s: float = POLL_WAIT_S) -> AsyncIterator[ProgressiveResult]:
        """The session's state each time it changes (new segments, a new status), until it is
        done or failed; run it beside the task that sends the chunks."""
        seen: tuple[int, str] | None = None
        while True:
            result = await self.status(wait_s)
            if result.status == "done":  # segments may be split by speaker now: take them afresh
                self._segments = []
                result = await self.status()
            if (len(result.segments), result.status) != seen:
                seen = (len(result.segments), result.status)
                yield result
            if result.status in ("done", "failed"):
                return

    def on_result(self, callback: Callback[ProgressiveResult]) -> None:
        """Call `callback(result)` with every state the session hears of (each chunk's answer,
        each status), a plain function or a coroutine function."""
        self._feed.add_callback(callback)

    async def finalize(self, timeout_s: float | None = None) -> ProgressiveTranscript:
        """The file is complete: wait for the transcript (and speakers, topics)."""
        async with asyncio.timeout(timeout_s):
            body = await self._retrying(lambda: self._transport.request(
                "POST", f"/v1/progressive/{self.id}/finalize",
                params={"total_bytes": str(self._sent), "since": str(len(self._segments))}))
            while body["status"] not in ("done", "failed"):
                body = await self._get(POLL_WAIT_S)
            if body["status"] == "failed":
                error = body.get("error", {})
                raise SessionError(str(error.get("message", "the transcription failed")), str(error.get("code", "")))
            self._segments = []  # segments may be split by speaker now: take them afresh
            body = await self._get(0.0)
        self._read(body)
        self._feed.end()
        await self._feed.drain()
        return ProgressiveTranscript(
            id=self.id, text=str(body.get("text", "")), segments=tuple(self._segments),
            duration=float(body.get("duration", 0.0)),
            topics=tuple(Topic(t["text"], float(t["score"])) for t in body.get("topics", ())),
            speakers=tuple(body.get("speakers", ())), processing_s=float(body.get("processing_s", 0.0)))

    async def delete(self) -> None:
        """Have the server forget the session."""
        await self._retrying(lambda: self._transport.request("DELETE", f"/v1/progressive/{self.id}"))

    async def close(self) -> None:
        """Let the callbacks see what came, then stop them; the server keeps the session until
        it expires (see `delete`)."""
        self._feed.end()
        await self._feed.drain()
        await self._feed.aclose()

    async def __aenter__(self) -> ProgressiveSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _get(self, wait_s: float) -> dict[str, Any]:
        params = {"since": str(len(self._segments)), "wait": str(wait_s)}
        return await self._retrying(lambda: self._transport.request(
            "GET", f"/v1/progressive/{self.id}", params=params, timeout_s=wait_s + 30.0))

    def _read(self, body: dict[str, Any]) -> ProgressiveResult:
        fresh = [Segment.from_wire(s) for s in body.get("segments", ())]
        known = {s.index for s in self._segments}
        self._segments.extend(s for s in fresh if s.index not in known)
        p = body.get("progress", {})
        progress = Progress(received_bytes=int(p.get("received_bytes", 0)), decoded_s=float(p.get("decoded_s", 0.0)),
                            transcribed_s=float(p.get("transcribed_s", 0.0)),
                            realtime_factor=float(p.get("realtime_factor", 0.0)))
        error = body.get("error")
        result = ProgressiveResult(id=self.id, status=str(body["status"]), segments=tuple(self._segments),
                                   progress=progress, error=str(error.get("message", "")) if error else "")
        self._feed.publish(result)
        return result

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        backoff = self._transport.backoff
        for attempt in range(backoff.max_attempts):
            try:
                return await call()
            except HearsayError as exc:
                if not exc.retryable or attempt == backoff.max_attempts - 1:
                    raise
                await asyncio.sleep(backoff.delay(attempt))
        raise AssertionError("unreachable")
