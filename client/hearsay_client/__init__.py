"""Hearsay's Python SDK: real-time, progressive and meeting transcription sessions.

    from hearsay_client import Hearsay

    client = Hearsay(url="ws://localhost:8080", api_key=None)
    session = await client.streaming.create_session({"sample_rate": 16000, "interim_results": True})

Depends on aiohttp only. See the README of the Hearsay repository (SDK section) and docs/sdk.md.
"""

from hearsay_client._transport import Backoff
from hearsay_client.client import Hearsay, Streaming
from hearsay_client.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    HearsayError,
    InvalidAudioError,
    ServerBusyError,
    SessionClosedError,
    SessionError,
)
from hearsay_client.meeting import MeetingSession
from hearsay_client.pool import ConnectionPool
from hearsay_client.progressive import ProgressiveSession
from hearsay_client.realtime import StreamingSession
from hearsay_client.types import (
    AudioSpan,
    FinalTranscript,
    MeetingSummary,
    Progress,
    ProgressiveResult,
    ProgressiveTranscript,
    Segment,
    SpeakerSummary,
    StreamingResult,
    Topic,
    Word,
)

__all__ = [
    "AudioSpan",
    "AuthenticationError",
    "Backoff",
    "ConfigError",
    "ConnectionLostError",
    "ConnectionPool",
    "FinalTranscript",
    "Hearsay",
    "HearsayError",
    "InvalidAudioError",
    "MeetingSession",
    "MeetingSummary",
    "Progress",
    "ProgressiveResult",
    "ProgressiveSession",
    "ProgressiveTranscript",
    "Segment",
    "ServerBusyError",
    "SessionClosedError",
    "SessionError",
    "SpeakerSummary",
    "Streaming",
    "StreamingResult",
    "StreamingSession",
    "Topic",
    "Word",
]
