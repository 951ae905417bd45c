"""The durable webhook outbox: every event is committed to SQLite (WAL) before delivery.

An event's life:

    add() -> pending --2xx--------------------------> delivered
                     --error, attempts left--------> pending (next_at later)   [mark_retry]
                     --error, no attempts left-----> dead                       [mark_dead]
                     --410 for the call------------> stopped (all of the call)  [mark_stopped_call]
          -> stored   (no webhook URL: kept and logged, never sent)
          -> stopped  (the call already got a 410)
    retry(): dead/stopped -> pending;  purge(status): delete.

All SQLite work runs on one dedicated thread that owns the connection, so the event loop never
waits on the disk; the async methods hand work to that thread. `synchronous=FULL` makes a
returned `add()` survive a crash of the process and of the machine (later state changes are
not fsynced one by one: a power cut may at worst cause a re-send with the same event id).
The database holds each event's webhook secret (needed to sign retries after a restart); it
is created mode 0600.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from app.delivery.events import EventType, WebhookEvent

log = logging.getLogger("hearsay.webhook")
T = TypeVar("T")


class Status(StrEnum):
    """Where an event stands in the outbox."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    STOPPED = "stopped"
    STORED = "stored"


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An event as the outbox holds it, with its delivery state."""

    seq: int
    event: WebhookEvent
    status: Status
    attempts: int
    next_at: float
    last_error: str
    updated_at: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    call_id    TEXT NOT NULL,
    created_at REAL NOT NULL,
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    body       BLOB NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_status ON events (status, next_at);
CREATE INDEX IF NOT EXISTS events_call ON events (call_id, status, seq);
CREATE TABLE IF NOT EXISTS stopped_calls (call_id TEXT PRIMARY KEY, stopped_at REAL NOT NULL);
"""
_COLUMNS = ("seq, id, type, call_id, created_at, url, secret, body, status, attempts, next_at,"
            " last_error, updated_at")


class Outbox:
    """The SQLite outbox. Open with `await Outbox.open(path)`; close with `await close()`."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self.path = path
        self._executor = executor
        self._conn = conn
        self._listeners: builtins.list[Callable[[], None]] = []
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> Outbox:
        """Open (creating it and its parent directories if needed) the outbox at `path`."""
        where = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, where)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(where, executor, conn)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (on the event loop) after each `add()` of a pending event."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    async def add(self, event: WebhookEvent) -> Status:
        """Commit `event` to disk; returns its status (pending, or stored/stopped)."""
        status = await self._run(_insert, event)
        if status is Status.PENDING:
            for callback in list(self._listeners):
                callback()
        elif status is Status.STORED:
            log.info("webhook event stored (dialplan has no webhook.url): %s",
                     event.body.decode(errors="replace"), extra={"call_id": event.call_id})
        return status

    async def due(self, now: float | None = None, limit: int = 100,
                  exclude_calls: Iterable[str] = ()) -> builtins.list[OutboxRecord]:
        """Pending events ready to send, oldest first: each call's first pending event, if due.

        Only a call's earliest pending event is returned, which keeps per-call order: a later
        event of that call waits until the earlier one is delivered, dead or stopped.
        """
        at = time.time() if now is None else now
        return await self._run(_due, at, limit, tuple(exclude_calls))

    async def next_for_call(self, call_id: str, now: float | None = None) -> OutboxRecord | None:
        """The call's earliest pending event if it is due now, else None."""
        at = time.time() if now is None else now
        return await self._run(_head_of_call, call_id, at)

    async def next_attempt_at(self) -> float | None:
        """When the earliest waiting retry falls due (Unix seconds), or None with nothing pending."""
        return await self._run(_next_attempt_at)

    async def mark_delivered(self, event_id: str, attempts: int | None = None) -> None:
        await self._run(_update, event_id, Status.DELIVERED, attempts, None, "")

    async def mark_retry(self, event_id: str, attempts: int, next_at: float, error: str) -> None:
        await self._run(_update, event_id, Status.PENDING, attempts, next_at, error)

    async def mark_dead(self, event_id: str, error: str, attempts: int | None = None) -> None:
        await self._run(_update, event_id, Status.DEAD, attempts, None, error)

    async def mark_stored(self, event_id: str) -> None:
        await self._run(_update, event_id, Status.STORED, None, None, "no webhook url")

    async def mark_stopped_call(self, call_id: str, error: str = "consumer answered 410 Gone") -> int:
        """Stop all deliveries of a call (now and for its later events); returns events stopped."""
        return await self._run(_stop_call, call_id, error)

    async def depth(self) -> int:
        """How many events wait to be delivered."""
        return await self._run(_count, Status.PENDING)

    async def count(self, status: Status) -> int:
        return await self._run(_count, status)

    async def counts(self) -> dict[Status, int]:
        """How many events there are of each status."""
        return await self._run(_counts)

    async def get(self, event_id: str) -> OutboxRecord | None:
        return await self._run(_get, event_id)

    async def list(self, status: Status | None = None, limit: int = 100) -> builtins.list[OutboxRecord]:
        """Events, newest first, optionally of one status."""
        return await self._run(_list, status, limit)

    async def retry(self, ids: Iterable[str] | None = None) -> int:
        """Make dead or stopped events pending again (all dead ones when `ids` is None)."""
        chosen = None if ids is None else tuple(ids)
        count = await self._run(_retry, chosen)
        if count:
            for callback in list(self._listeners):
                callback()
        return count

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete the events of `status` (last changed before `older_than`, if given)."""
        return await self._run(_purge, status, older_than)

    async def close(self) -> None:
        """Close the database; further calls fail."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._conn.close)
        finally:
            self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError(f"outbox {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn, *args)


# Everything below runs on the outbox thread.

def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600)
    conn = sqlite3.connect(path, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # state changes; _insert asks for FULL
    conn.executescript(_SCHEMA)
    return conn


def _record(row: tuple[Any, ...]) -> OutboxRecord:
    seq, eid, kind, call_id, created, url, secret, body, status, attempts, next_at, error, updated = row
    event = WebhookEvent(id=eid, type=EventType(kind), call_id=call_id, created_at=created,
                         body=bytes(body), url=url, secret=secret)
    return OutboxRecord(seq=seq, event=event, status=Status(status), attempts=attempts,
                        next_at=next_at, last_error=error, updated_at=updated)


def _insert(conn: sqlite3.Connection, event: WebhookEvent) -> Status:
    now = time.time()
    # A new event is fsynced before add() returns. State changes after it (delivered, retry)
    # are not: losing one to a power cut only means a re-send with the same event id.
    conn.execute("PRAGMA synchronous=FULL")
    try:
        return _insert_synced(conn, event, now)
    finally:
        conn.execute("PRAGMA synchronous=NORMAL")


def _insert_synced(conn: sqlite3.Connection, event: WebhookEvent, now: float) -> Status:
    with conn:
        stopped = conn.execute("SELECT 1 FROM stopped_calls WHERE call_id = ?", (event.call_id,)).fetchone()
        if stopped:
            status, error = Status.STOPPED, "call stopped by a 410 answer"
        elif not event.url:
            status, error = Status.STORED, "no webhook url"
        else:
            status, error = Status.PENDING, ""
        conn.execute(
            f"INSERT INTO events ({_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (event.id, event.type.value, event.call_id, event.created_at, event.url, event.secret,
             event.body, status.value, now, error, now),
        )
    return status


def _due(conn: sqlite3.Connection, now: float, limit: int, exclude: tuple[str, ...]) -> list[OutboxRecord]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events AS e WHERE status = 'pending' AND next_at <= ?"
        " AND seq = (SELECT MIN(seq) FROM events WHERE call_id = e.call_id AND status = 'pending')"
        " ORDER BY seq LIMIT ?",
        (now, limit + len(exclude)),
    ).fetchall()
    skip = set(exclude)
    return [_record(r) for r in rows if r[3] not in skip][:limit]


def _head_of_call(conn: sqlite3.Connection, call_id: str, now: float) -> OutboxRecord | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE call_id = ? AND status = 'pending' ORDER BY seq LIMIT 1",
        (call_id,),
    ).fetchone()
    if row is None or row[10] > now:
        return None
    return _record(row)


def _next_attempt_at(conn: sqlite3.Connection) -> float | None:
    (at,) = conn.execute(
        "SELECT MIN(next_at) FROM events AS e WHERE status = 'pending'"
        " AND seq = (SELECT MIN(seq) FROM events WHERE call_id = e.call_id AND status = 'pending')"
    ).fetchone()
    return None if at is None else float(at)


def _update(conn: sqlite3.Connection, event_id: str, status: Status, attempts: int | None,
            next_at: float | None, error: str) -> None:
    with conn:
        conn.execute(
            "UPDATE events SET status = ?, attempts = COALESCE(?, attempts),"
            " next_at = COALESCE(?, next_at), last_error = ?, updated_at = ? WHERE id = ?",
            (status.value, attempts, next_at, error, time.time(), event_id),
        )


def _stop_call(conn: sqlite3.Connection, call_id: str, error: str) -> int:
    now = time.time()
    with conn:
        conn.execute("INSERT OR REPLACE INTO stopped_calls (call_id, stopped_at) VALUES (?, ?)",
                     (call_id, now))
        cur = conn.execute(
            "UPDATE events SET status = 'stopped', last_error = ?, updated_at = ?"
            " WHERE call_id = ? AND status = 'pending'",
            (error, now, call_id),
        )
    return cur.rowcount


def _count(conn: sqlite3.Connection, status: Status) -> int:
    (n,) = conn.execute("SELECT COUNT(*) FROM events WHERE status = ?", (status.value,)).fetchone()
    return int(n)


def _counts(conn: sqlite3.Connection) -> dict[Status, int]:
    found = dict(conn.execute("SELECT status, COUNT(*) FROM events GROUP BY status").fetchall())
    return {status: int(found.get(status.value, 0)) for status in Status}


def _get(conn: sqlite3.Connection, event_id: str) -> OutboxRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else _record(row)


def _list(conn: sqlite3.Connection, status: Status | None, limit: int) -> list[OutboxRecord]:
    if status is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq DESC LIMIT ?", (limit,))
    else:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE status = ? ORDER BY seq DESC LIMIT ?",
                            (status.value, limit))
    return [_record(r) for r in rows.fetchall()]


def _retry(conn: sqlite3.Connection, ids: tuple[str, ...] | None) -> int:
    now = time.time()
    with conn:
        if ids is None:
            targets = [r[0] for r in conn.execute("SELECT id FROM events WHERE status = 'dead'")]
        else:
            marks = ",".join("?" * len(ids))
            targets = [r[0] for r in conn.execute(
                f"SELECT id FROM events WHERE id IN ({marks}) AND status IN ('dead', 'stopped')", ids)]
        for event_id in targets:
            conn.execute("DELETE FROM stopped_calls WHERE call_id ="
                         " (SELECT call_id FROM events WHERE id = ? AND status = 'stopped')", (event_id,))
            conn.execute("UPDATE events SET status = 'pending', attempts = 0, next_at = ?, last_error = '',"
                         " updated_at = ? WHERE id = ?", (now, now, event_id))
    return len(targets)


def _purge(conn: sqlite3.Connection, status: Status, older_than: float | None) -> int:
    with conn:
        cur = conn.execute("DELETE FROM events WHERE status = ? AND updated_at < ?",
                           (status.value, math.inf if older_than is None else older_than))
    return cur.rowcount

