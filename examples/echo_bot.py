"""A voice bot in 50 lines: it says back what the caller said.

    python examples/echo_bot.py --port 9000 --secret whsec_demo

Point a dialplan at it (dialplans/default.toml):

    [webhook]
    url = "http://127.0.0.1:9000/hook"
    secret = "whsec_demo"

Every event Hearsay POSTs is signed (docs/webhooks.md); this bot checks the signature, and
answers each `utterance.final` with actions that Hearsay speaks into the call.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time

from aiohttp import web


def signed(secret: str, body: bytes, header: str, tolerance_s: float = 300) -> bool:
    """Check `Hearsay-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    stamp, mac = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, mac)


def make_app(secret: str) -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if not signed(secret, body, request.headers.get("Hearsay-Signature", "")):
            return web.Response(status=401)
        event = json.loads(body)
        print(event["type"], event.get("utterance", {}).get("text", ""), flush=True)
        if event["type"] == "call.started":
            return web.json_response({"actions": [{"say": "Hello! Say something and I will repeat it."}]})
        if event["type"] == "utterance.final" and event["utterance"]["text"].strip():
            return web.json_response({"actions": [{"say": "You said: " + event["utterance"]["text"]}]})
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", default="whsec_demo")
    args = parser.parse_args()
    web.run_app(make_app(args.secret), host="127.0.0.1", port=args.port)
