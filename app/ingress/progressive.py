"""`/v1/progressive`: long files sent in chunks, transcribed while they arrive (docs/sdk.md).

    POST   /v1/progressive                      create: JSON config -> 201 {id, status, progress}
    POST   /v1/progressive/{id}/chunks?offset=N  the file's bytes from offset N (raw body, any size)
    POST   /v1/progressive/{id}/finalize?total_bytes=N   the file is complete
    GET    /v1/progressive/{id}?since=K&wait=S   state; segments from index K; waits up to S s for news
    DELETE /v1/progressive/{id}                  forget it

Chunks may split the file anywhere. `offset` makes an upload resumable: bytes the server
already has are skipped, and a chunk that would leave a hole gets 409 `invalid_offset` with
`expected_offset`. Every answer carries the job's state (`progressive_protocol.snapshot`).
Jobs live in memory: a client can go away and fetch its result by id later (for
`[progressive] keep_s`), but not across a restart of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from app.analysis import Analysis
from app.auth import authorized
from app.ingress import progressive_protocol as proto
from app.keys import ENGINE, SETTINGS
from app.pipeline.errors import UnknownModelError
from app.progressive.container import FileTooLarge
from app.progressive.job import OffsetMismatch, ProgressiveJob, Status
from app.progressive.store import JobStore

JOBS: web.AppKey[JobStore] = web.AppKey("progressive_jobs")
ANALYSIS: web.AppKey[Analysis] = web.AppKey("analysis")  # speakers and topics, shared by the jobs

READ_BYTES = 1 << 18  # a chunk's body is read in pieces of this size
MAX_WAIT_S = 60.0
EXPIRY_EVERY_S = 60.0


def setup(app: web.Application) -> None:
    """Register the endpoints and the jobs' context on `app`."""
    app.cleanup_ctx.append(_jobs_ctx)
    app.router.add_post("/v1/progressive", create)
    app.router.add_post("/v1/progressive/{id}/chunks", chunk)
    app.router.add_post("/v1/progressive/{id}/finalize", finalize)
    app.router.add_get("/v1/progressive/{id}", fetch)
    app.router.add_delete("/v1/progressive/{id}", delete)


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    store = JobStore(app[SETTINGS].progressive.keep_s)
    analysis = Analysis()
    app[JOBS] = store
    app[ANALYSIS] = analysis

    async def expire() -> None:
        while True:
            await asyncio.sleep(EXPIRY_EVERY_S)
            await store.expire()

    janitor = asyncio.create_task(expire(), name="progressive-expiry")
    yield
    janitor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await janitor
    await store.close()
    await asyncio.get_running_loop().run_in_executor(None, analysis.close)


def _answer(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _refuse(status: int, code: str, message: str, **extra: Any) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 404: web.HTTPNotFound, 409: web.HTTPConflict,
           413: web.HTTPRequestEntityTooLarge, 503: web.HTTPServiceUnavailable}[status]
    text = json.dumps(proto.error(code, message, **extra))
    if cls is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(max_size=0, actual_size=0, text=text, content_type="application/json")
    return cls(text=text, content_type="application/json")


def _job(request: web.Request) -> ProgressiveJob:
    if not authorized(request, request.app[SETTINGS].auth.api_keys):
        raise _refuse(401, "unauthorized", "send 'Authorization: Bearer <key>' or ?api_key=<key>")
    job = request.app[JOBS].get(request.match_info["id"])
    if job is None:
        raise _refuse(404, "not_found", f"no progressive session {request.match_info['id'][:64]!r} "
                      "(unknown, deleted, or expired)")
    return job


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise _refuse(400, "invalid_offset" if "bytes" in name or name == "offset" else "invalid_request",
                      f"{name}: expected a non-negative integer")
    return int(raw)


async def create(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    if not authorized(request, settings.auth.api_keys):
        raise _refuse(401, "unauthorized", "send 'Authorization: Bearer <key>' or ?api_key=<key>")
    engine = app[ENGINE]
    if engine is None:
        raise _refuse(503, "unavailable", "the speech engine is not loaded")
    try:
        raw = await request.json() if request.can_read_body else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _refuse(400, "invalid_json", "the body must be a JSON object") from None
    try:
        config = proto.parse_config(raw)
    except proto.ConfigError as exc:
        raise _refuse(400, "invalid_config", str(exc)) from None
    store = app[JOBS]
    if store.unfinished >= settings.progressive.max_sessions:
        raise _refuse(503, "too_many_sessions", f"the server is at its limit of "
                      f"{settings.progressive.max_sessions} progressive sessions; try again later")
    job = ProgressiveJob("prog_" + secrets.token_hex(10), config, engine, app[ANALYSIS],
                         settings.progressive.max_file_bytes)
    try:
        await job.start()
    except UnknownModelError as exc:
        raise _refuse(400, "unknown_model", str(exc)) from None
    store.add(job)
    return _answer(201, proto.snapshot(job))


async def chunk(request: web.Request) -> web.Response:
    job = _job(request)
    if job.status is not Status.RECEIVING:
        raise _refuse(409, "not_receiving", f"the session is {job.status.value}; it takes no more bytes",
                      state=job.status.value)
    position = _int_param(request, "offset", job.received_bytes)
    assert position is not None
    try:
        async for data in request.content.iter_chunked(READ_BYTES):
            job.append(position, data)
            position += len(data)
    except OffsetMismatch as exc:
        raise _refuse(409, "invalid_offset", str(exc), expected_offset=exc.expected) from None
    except FileTooLarge as exc:
        raise _refuse(413, "file_too_large", str(exc)) from None
    return _answer(200, proto.snapshot(job, _int_param(request, "since", 0) or 0))


async def finalize(request: web.Request) -> web.Response:
    job = _job(request)
    total = _int_param(request, "total_bytes", None)
    if total is not None and job.status is Status.RECEIVING and total != job.received_bytes:
        raise _refuse(409, "invalid_offset", f"the server has {job.received_bytes} of {total} bytes",
                      expected_offset=job.received_bytes)
    job.end()
    return _answer(202, proto.snapshot(job, _int_param(request, "since", 0) or 0))


async def fetch(request: web.Request) -> web.Response:
    job = _job(request)
    try:
        wait_s = min(float(request.query.get("wait", "0")), MAX_WAIT_S)
    except ValueError:
        raise _refuse(400, "invalid_request", "wait: expected seconds") from None
    since = _int_param(request, "since", 0) or 0
    if wait_s > 0 and not job.finished and job.segments[since:] == []:
        await job.wait(wait_s)
    return _answer(200, proto.snapshot(job, since))


async def delete(request: web.Request) -> web.Response:
    job = _job(request)
    await request.app[JOBS].remove(job.id)
    return web.Response(status=204)
