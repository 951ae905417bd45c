"""Calls: one `Call` per phone call or streaming session, started through the `CallHub`.

Every ingress (SIP, Twilio, `/v1/stream`) starts its calls here, so every source gets the same
webhook events, metrics, utterance numbering and outbound media contract. One module a job:

    info     CallInfo, CallSource, Track, EndReason, CallRejected / Rejection (value types)
    hub      CallHub: dialplan in hand, start a call (the only way in), close them all
    call     Call: engine stream(s) in, transcripts and speech events out
    writer   EventWriter: one call's webhook events, in order, to the outbox
    clock    ArrivalClock: when the caller's audio arrived (latency metrics)
    media    CallMedia: the way out (play, clear, hang up), Playback, PacedPlayer

See docs/architecture.md for the contract. The value types of `info` load with the package;
the rest on first use (a module `__getattr__`), because `call` and `media` bring in numpy and
scipy, which the SIP worker processes, importing `EndReason`, have no use for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from app.calls.info import CallInfo, CallRejected, CallSource, EndReason, Rejection, Track

if TYPE_CHECKING:
    from app.calls.call import Call
    from app.calls.hub import CallHub
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

_LAZY = {"Call": "app.calls.call", "CallHub": "app.calls.hub", "CallMedia": "app.calls.media",
         "MediaUnsupported": "app.calls.media", "NoMedia": "app.calls.media", "Playback": "app.calls.media",
         "PlaybackState": "app.calls.media"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
