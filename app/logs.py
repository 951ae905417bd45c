"""Structured logging: every line carries the id of the call or session it is about.

`setup_logging(settings.log)` configures the root logger once, at start-up. With
`[log] format = "json"` each record is one JSON object per line
(`{"ts", "level", "logger", "message", "call_id"?, ...extra}`); with `"text"` it is a
readable line with `[call_id]` after the level.

The call id travels in a `ContextVar`: `with bind_call(call_id): ...` sets it for the block and
for every task created inside it (asyncio copies the context into new tasks), so the per-call
consumer task and the WebSocket handler log with their id without passing it around.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from app.settings import LogSettings

CALL_ID: ContextVar[str | None] = ContextVar("hearsay_call_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is emitted.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextmanager
def bind_call(call_id: str) -> Iterator[None]:
    """Tag every log line written in this block (and in tasks started here) with `call_id`."""
    token = CALL_ID.set(call_id)
    try:
        yield
    finally:
        CALL_ID.reset(token)


class _CallIdFilter(logging.Filter):
    """Copies the current call id onto the record (as `call_id`) unless `extra` set one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = CALL_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields are kept as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level [call_id] logger: message`, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(call_tag)s%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None)
        record.call_tag = f"[{call_id}] " if call_id else ""
        return super().format(record)


def setup_logging(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Send all logging to `stream` (stderr) in the configured format and level."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_CallIdFilter())
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # aiohttp's access log is one line per request; keep it, but at the configured level.
    logging.getLogger("aiohttp.access").setLevel(max(root.level, logging.INFO))
