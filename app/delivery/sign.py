"""The `Hearsay-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

The consumer recomputes the HMAC over the raw request body with the dialplan's
`webhook.secret`, compares in constant time, and rejects a timestamp older than a tolerance
(replay protection). Several `v1=` values may appear (secret rotation); any match is valid.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Hearsay-Signature"
EVENT_ID_HEADER = "Hearsay-Event-Id"


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The header value signing `body` at `timestamp` (now when None)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_digest(secret, body, t)}"


def verify(secret: str | bytes, body: bytes, header: str, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """Whether `header` is a valid signature of `body` made within `tolerance_s` of `now`."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, body, timestamp)
    return any(hmac.compare_digest(expected, c) for c in candidates)


def _digest(secret: str | bytes, body: bytes, timestamp: int) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
