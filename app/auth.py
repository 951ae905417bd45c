"""API keys for the HTTP surfaces (`[auth] api_keys`): `/v1/stream` and `/v1/calls/.../actions`."""

from __future__ import annotations

import hmac

from aiohttp import web


def authorized(request: web.Request, api_keys: list[str]) -> bool:
    """Whether the request carries one of `api_keys` (always true when none are set), as
    `Authorization: Bearer <key>` or `?api_key=<key>`; compared in constant time."""
    if not api_keys:
        return True
    offered = request.query.get("api_key", "")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        offered = token.strip()
    return bool(offered) and any(hmac.compare_digest(offered.encode(), k.encode()) for k in api_keys)
