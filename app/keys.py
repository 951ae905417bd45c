"""The application's shared state, one typed `web.AppKey` each (aiohttp's "No Singletons Please").

`app.server.create_app` fills them; handlers and ingress modules read them from here, so no
module needs to import the app factory (and the factory can import every ingress at the top).
Keys owned by one ingress (its live sessions) stay in that ingress's module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import aiohttp

    from app.calls import CallHub
    from app.delivery.outbox import Outbox
    from app.delivery.worker import Deliverer
    from app.metrics import Metrics
    from app.pipeline import SpeechEngine
    from app.settings import Settings
    from app.talkback.service import Talkback

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
ENGINE: web.AppKey[SpeechEngine | None] = web.AppKey("engine")
ENGINE_ERROR: web.AppKey[str] = web.AppKey("engine_error")  # why the engine failed to load, or ""
HTTP_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("http_session")
OUTBOX: web.AppKey[Outbox] = web.AppKey("outbox")
DELIVERER: web.AppKey[Deliverer] = web.AppKey("deliverer")
CALL_HUB: web.AppKey[CallHub] = web.AppKey("call_hub")
TALKBACK: web.AppKey[Talkback] = web.AppKey("talkback")  # the assistant's answers spoken into calls
# name -> check(); each returns {"status": "ok" | "failed" | ..., ...details} for /health.
HEALTH_CHECKS: web.AppKey[dict[str, Callable[[], dict[str, Any]]]] = web.AppKey("health_checks")
