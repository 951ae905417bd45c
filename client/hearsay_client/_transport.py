"""The one place that talks HTTP and WebSocket to the server: URLs, the API key, and turning
refusals into the SDK's typed errors."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from hearsay_client.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    HearsayError,
    ServerBusyError,
    SessionError,
)

# Server error codes (docs/streaming.md) by the SDK error they become.
_CONFIG_CODES = {"invalid_config", "unsupported_encoding", "unsupported_sample_rate", "unknown_model",
                 "unknown_dialplan", "invalid_chunk", "invalid_offset"}
_BUSY_CODES = {"too_many_sessions", "unavailable"}
HEARTBEAT_S = 15.0  # a silent dead connection is noticed within about this long


def error_from_wire(code: str, message: str) -> HearsayError:
    """The SDK error for a server `error` (code and message)."""
    if code in _CONFIG_CODES:
        return ConfigError(message, code)
    if code in _BUSY_CODES:
        return ServerBusyError(message, code)
    if code == "unauthorized":
        return AuthenticationError(message, code)
    return SessionError(message, code)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits a random 50-100 % of
    min(max_s, initial_s * 2**n), so clients dropped together do not return together."""

    initial_s: float = 0.2
    max_s: float = 10.0
    max_attempts: int = 8

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** attempt) * random.uniform(0.5, 1.0)


class Transport:
    """The server's base URL, the API key and the HTTP session every session shares."""

    def __init__(self, http: aiohttp.ClientSession, url: str, api_key: str | None, backoff: Backoff) -> None:
        base = url.rstrip("/")
        if base.startswith("ws://"):
            base = "http://" + base[5:]
        elif base.startswith("wss://"):
            base = "https://" + base[6:]
        elif not base.startswith(("http://", "https://")):
            raise ConfigError(f"url: expected ws://, wss://, http:// or https://, got {url!r}", "invalid_config")
        self.http = http
        self.base = base
        self.backoff = backoff
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def url(self, path: str, *, websocket: bool = False) -> str:
        if websocket:
            return "ws" + self.base[4:] + path
        return self.base + path

    async def websocket(self, path: str) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket; AuthenticationError on 401, ServerBusyError on 429/503,
        ConnectionLostError when the server cannot be reached."""
        try:
            return await self.http.ws_connect(self.url(path, websocket=True), headers=self._headers,
                                              heartbeat=HEARTBEAT_S, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise _http_error(exc.status, exc.message) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConnectionLostError(f"cannot connect to {self.base}: {exc or type(exc).__name__}") from None

    async def request(self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
                      params: Mapping[str, str] | None = None,
                      timeout_s: float | None = None) -> dict[str, Any]:
        """One HTTP request; the JSON answer, or the typed error for an error answer.
        Connection failures raise ConnectionLostError (retryable)."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self.http.request(method, self.url(path), json=json, data=data, params=params,
                                         headers=self._headers, timeout=timeout) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status >= 400:
                    info = body if isinstance(body, dict) else {}
                    code = str(info.get("error", info.get("code", "")))
                    message = str(info.get("message", f"HTTP {resp.status}"))
                    if resp.status == 401:
                        raise AuthenticationError(message, "unauthorized")
                    if resp.status in (429, 503) or code in _BUSY_CODES:
                        raise ServerBusyError(message, code or "unavailable")
                    raise error_from_wire(code, message)
                if resp.status == 204:
                    return {}
                if not isinstance(body, dict):
                    raise SessionError(f"{method} {path}: the answer is not a JSON object", "invalid_answer")
                return body
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError, TimeoutError) as exc:
            raise ConnectionLostError(f"{method} {path}: {exc or type(exc).__name__}") from None


def _http_error(status: int, message: str) -> HearsayError:
    if status == 401:
        return AuthenticationError("the server refused the API key (HTTP 401)", "unauthorized")
    if status in (429, 503):
        return ServerBusyError(f"the server is busy (HTTP {status})", "unavailable")
    return ConnectionLostError(f"the server refused the connection: HTTP {status} {message}", code=f"http_{status}")
