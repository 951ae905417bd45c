"""Twilio: the voice webhook (`POST /twilio/voice`) and the Media Streams socket (`GET /twilio/media`).

Point a Twilio number's "A call comes in" webhook at `https://<public_url>/twilio/voice`.
Hearsay routes the call by its `To` number through the dialplans and answers TwiML
`<Connect><Stream url="wss://<public_url>/twilio/media">` with `<Parameter>`s `dialplan`,
`From` and `To`; no route answers `<Reject/>`, and a server at `[asr] max_live_calls`
`<Reject reason="busy"/>`. Twilio then opens the media socket, served
by `twilio_media.MediaSession`.

When `[twilio] auth_token` is set, both requests must carry a valid `X-Twilio-Signature`
(checked with the `twilio` package's `RequestValidator`) over the URL as Twilio requested it:
`[http] public_url` plus the path when set, else the request's own URL with
`X-Forwarded-Proto` / `X-Forwarded-Host` from a reverse proxy applied. A bad signature gets
403 and a log line.

Each call's outbound side (`call.media`, a `TwilioMedia`) speaks into bidirectional streams.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from twilio.request_validator import RequestValidator

from app.calls import CallSource
from app.ingress.twilio_media import MediaSession
from app.ingress.twilio_twiml import TWIML_CONTENT_TYPE, connect_stream, reject
from app.keys import CALL_HUB, SETTINGS

log = logging.getLogger("hearsay.twilio")

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
MAX_MESSAGE_BYTES = 64 * 1024  # a 20 ms media message is about 300 bytes


def setup(app: web.Application) -> None:
    """Register the Twilio routes on the Hearsay app."""
    app.router.add_post(VOICE_PATH, voice)
    app.router.add_get(MEDIA_PATH, media)


def external_base(request: web.Request, *, websocket: bool = False) -> str:
    """Where Twilio reaches us: `[http] public_url`, else scheme://host from the request and proxy."""
    base = request.app[SETTINGS].http.public_url.strip().rstrip("/")
    if not base:
        proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
        base = f"{proto}://{host}"
    return _scheme_for(base, websocket)


def external_url(request: web.Request, *, websocket: bool = False) -> str:
    """This request's URL as the caller (Twilio) requested it, path and query included."""
    return external_base(request, websocket=websocket) + str(request.rel_url)


def _scheme_for(base: str, websocket: bool) -> str:
    scheme, sep, rest = base.partition("://")
    if not sep:
        return base
    secure = scheme in ("https", "wss")
    if websocket:
        return ("wss" if secure else "ws") + "://" + rest
    return ("https" if secure else "http") + "://" + rest


def _signed(request: web.Request, urls: list[str], params: Mapping[str, Any]) -> bool:
    token = request.app[SETTINGS].twilio.auth_token
    if not token:
        return True
    signature = request.headers.get("X-Twilio-Signature", "")
    validator = RequestValidator(token)
    if signature and any(validator.validate(url, params, signature) for url in urls):
        return True
    log.warning("twilio: %s %s refused: %s X-Twilio-Signature (checked against %s)", request.method,
                request.path, "invalid" if signature else "missing", urls[0])
    return False


async def voice(request: web.Request) -> web.Response:
    """Twilio's voice webhook: answer TwiML that streams the call to us, or rejects it."""
    form = await request.post()
    if not _signed(request, [external_url(request)], form):
        raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    to, from_, call_sid = str(form.get("To", "")), str(form.get("From", "")), str(form.get("CallSid", ""))
    hub = request.app[CALL_HUB]
    plan = hub.dialplans.match(CallSource.TWILIO, to)
    if plan is None:
        log.warning("twilio call %s from %r to %r: no dialplan takes it, rejected", call_sid, from_, to)
        return web.Response(text=reject(), content_type=TWIML_CONTENT_TYPE)
    if (busy := hub.admit()) is not None:
        log.warning("twilio call %s from %r to %r: rejected busy: %s", call_sid, from_, to, busy)
        hub.metrics.refused_busy.labels(CallSource.TWILIO.value).inc()
        return web.Response(text=reject("busy"), content_type=TWIML_CONTENT_TYPE)
    stream_url = external_base(request, websocket=True) + MEDIA_PATH
    log.info("twilio call %s from %r to %r: dialplan %s, streaming to %s", call_sid, from_, to,
             plan.name, stream_url)
    twiml = connect_stream(stream_url, {"dialplan": plan.name, "From": from_, "To": to})
    return web.Response(text=twiml, content_type=TWIML_CONTENT_TYPE)


async def media(request: web.Request) -> web.StreamResponse:
    """The Media Streams WebSocket: one call per connection."""
    url = external_url(request, websocket=True)
    if not _signed(request, [url, _scheme_for(url, False)], {}):
        raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    session = MediaSession(ws, request.app[CALL_HUB])
    try:
        await session.run()
    finally:
        await ws.close()
    return ws
