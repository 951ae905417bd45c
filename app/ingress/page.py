"""`GET /`: the live-caption page, and `/static/`: its files (`app/static`: HTML, CSS and the
`hearsay.js` client, served as they are; there is no front-end build step).

The page streams the microphone to `/v1/stream` as `WEBM_OPUS` and shows captions and the
quality figures (docs/streaming.md).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parents[1] / "static"


def setup(app: web.Application) -> None:
    """Register `GET /` and `GET /static/...` on `app`."""
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, name="static", append_version=False)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
