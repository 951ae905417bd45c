"""Structured logs: one JSON object per line, each carrying the call id of its context."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from app.logs import bind_call, setup_logging
from app.settings import LogSettings


async def test_json_lines_carry_the_call_id_into_tasks() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(LogSettings(level="info", format="json"), stream=out)
        log = logging.getLogger("hearsay.test")
        log.info("no call here")
        with bind_call("sess_1"):
            task = asyncio.create_task(asyncio.sleep(0, result=None))
            log.info("in the call", extra={"utterance": 3})
            inner = asyncio.create_task(_log_later(log))
        await task
        await inner
        log.debug("below the level")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [entry["message"] for entry in lines] == ["no call here", "in the call", "from a task", "failed"]
    assert "call_id" not in lines[0]
    assert lines[1]["call_id"] == "sess_1" and lines[1]["utterance"] == 3 and lines[1]["level"] == "info"
    assert lines[2]["call_id"] == "sess_1"  # the task inherited the context
    assert "ValueError: boom" in lines[3]["exception"]


async def _log_later(log: logging.Logger) -> None:
    await asyncio.sleep(0)
    log.info("from a task")


def test_text_lines_show_the_call_id() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(LogSettings(level="info", format="text"), stream=out)
        with bind_call("CA123"):
            logging.getLogger("hearsay.test").warning("hello")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert "WARNING [CA123] hearsay.test: hello" in out.getvalue()
