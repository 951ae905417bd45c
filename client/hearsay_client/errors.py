"""The SDK's errors, one family rooted at `HearsayError`:

    HearsayError
    ├── AuthenticationError   the server refused the API key (HTTP 401); not retryable
    ├── ConfigError           the session's config was refused (by the SDK or the server); not retryable
    ├── ServerBusyError       the server is at its session limit or not ready; retryable
    ├── ConnectionLostError   the connection dropped and could not be re-established;
    │                         `untranscribed` names the audio that was not transcribed
    ├── SessionError          the server ended the session with an error (`code`), e.g. session_too_long
    ├── InvalidAudioError     audio the session's encoding cannot hold (e.g. half a LINEAR16 sample)
    └── SessionClosedError    the session was already closed or finalized

Each carries `code` (the server's error code where there is one) and `retryable`.
"""

from __future__ import annotations

from hearsay_client.types import AudioSpan


class HearsayError(Exception):
    """Anything the SDK reports. `code`: the server's error code, or the SDK's own."""

    retryable = False

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class AuthenticationError(HearsayError):
    """The server wants a valid API key (`Hearsay(api_key=...)`)."""


class ConfigError(HearsayError, ValueError):
    """A config key or value the SDK or the server refuses; the message names the key."""


class ServerBusyError(HearsayError):
    """The server is at its limit of sessions, or not ready; try again later."""

    retryable = True


class ConnectionLostError(HearsayError):
    """The connection dropped and the SDK gave up reconnecting.

    `untranscribed`: the spans of session audio (seconds from the session's start) that were
    sent or given to `send_audio` but have no transcript."""

    retryable = True

    def __init__(self, message: str, untranscribed: tuple[AudioSpan, ...] = (), code: str = "connection_lost") -> None:
        super().__init__(message, code)
        self.untranscribed = untranscribed


class SessionError(HearsayError):
    """The server reported an error that ends the session (`code` says which)."""


class InvalidAudioError(HearsayError, ValueError):
    """Audio that cannot be whole samples of the session's encoding."""


class SessionClosedError(HearsayError):
    """The session is closed (or finalized): it takes no more audio."""
