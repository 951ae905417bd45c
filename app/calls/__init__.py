"""Calls: one `Call` per phone call or streaming session, started through the `CallHub`.

Every ingress (SIP, Twilio, `/v1/stream`) starts its calls here, so every source gets the same
webhook events, metrics, utterance numbering and outbound media contract. One module a job:

    info     CallInfo, CallSource, Track, EndReason, CallRejected / Rejection (value types)
    hub      CallHub: dialplan in hand, start a call (the only way in), close them all
    call     Call: engine stream(s) in, transcripts and speech events out
    writer   EventWriter: one call's webhook events, in order, to the outbox
    clock    ArrivalClock: when the caller's audio arrived (latency metrics)
    media    CallMedia: the way out (play, clear, hang up), Playback, PacedPlayer

See docs/architecture.md for the contract.
"""

from app.calls.call import Call
from app.calls.hub import CallHub
from app.calls.info import CallInfo, CallRejected, CallSource, EndReason, Rejection, Track
from app.calls.media import CallMedia, MediaUnsupported, NoMedia, Playback, PlaybackState

__all__ = [
    "Call",
    "CallHub",
    "CallInfo",
    "CallMedia",
    "CallRejected",
    "CallSource",
    "EndReason",
    "MediaUnsupported",
    "NoMedia",
    "Playback",
    "PlaybackState",
    "Rejection",
    "Track",
]
