"""What a call is, where it came from, why it ended, and why one was refused.

Small value types shared by every ingress and by the webhook events; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from app.delivery.events import CallRef

if TYPE_CHECKING:
    from app.dialplans import Dialplan


class CallSource(StrEnum):
    """Where a call's audio comes from (the `call.source` of webhook events)."""

    SIP = "sip"
    TWILIO = "twilio"
    STREAM = "stream"


class Track(StrEnum):
    """Whose voice an engine stream carries (`utterance.speaker` on two-track calls)."""

    CALLER = "caller"
    AGENT = "agent"  # e.g. Twilio's outbound track, when the dialplan's `agent_track` is on


class EndReason(StrEnum):
    """Why a call ended: the `reason` of `call.ended`, the same values for every source
    (the table in docs/webhooks.md is the contract)."""

    HANGUP = "hangup"  # the caller hung up (SIP BYE, Twilio `stop`)
    CANCEL = "cancel"  # SIP: the caller gave up before the call was answered
    REJECTED = "rejected"  # SIP: the call was refused before it was answered
    DISCONNECTED = "disconnected"  # the connection dropped without a goodbye
    TIMEOUT = "timeout"  # Twilio: no message for 30 s
    RTP_TIMEOUT = "rtp_timeout"  # SIP: no RTP for `[sip] rtp_timeout_s`
    SIP_WORKER_LOST = "sip_worker_lost"  # SIP: the worker process carrying the call died
    STOP = "stop"  # /v1/stream: the client sent stop_transcription
    SINGLE_UTTERANCE = "single_utterance"  # /v1/stream: the first final ended the session
    MESSAGE_TOO_LARGE = "message_too_large"  # /v1/stream: a message over the limit
    SESSION_TOO_LONG = "session_too_long"  # /v1/stream: more audio than `[stream] max_session_s`
    INVALID_AUDIO = "invalid_audio"  # /v1/stream: a WEBM_OPUS container that cannot be decoded
    AGENT_HANGUP = "agent_hangup"  # Hearsay hung up, as the assistant asked
    TRANSFERRED = "transferred"  # SIP: the caller was moved elsewhere (REFER), as the assistant asked
    SHUTDOWN = "shutdown"  # the service is stopping
    ERROR = "error"  # Hearsay could not go on transcribing the call (an internal error, logged)


class Rejection(StrEnum):
    """Why `CallHub.start` refused a call (each ingress maps it to its own answer)."""

    UNAVAILABLE = "unavailable"  # shutting down, or the speech engine is not loaded
    BUSY = "busy"  # `[asr] max_live_calls` calls are live: try again shortly
    DUPLICATE = "duplicate"  # a call with this id is already live
    UNSUPPORTED_AUDIO = "unsupported_audio"  # an encoding or sample rate the engine cannot take
    UNKNOWN_MODEL = "unknown_model"  # a model that is not loaded
    INVALID_CONFIG = "invalid_config"  # e.g. a language the model does not speak


class CallRejected(Exception):
    """The hub cannot start this call; `reason` says why, the message says it for people."""

    def __init__(self, reason: Rejection, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who is calling whom, through which route. `dialplan=None`: no webhook events."""

    id: str
    source: CallSource
    from_: str
    to: str
    dialplan: Dialplan | None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def ref(self) -> CallRef:
        name = self.dialplan.name if self.dialplan is not None else ""
        return CallRef(id=self.id, source=self.source.value, from_=self.from_, to=self.to, dialplan=name)
