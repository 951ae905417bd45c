"""`python -m app outbox list|retry|purge`: the operator's view of the webhook outbox.

    list   [--status S] [--limit N]   a table of events, newest first, and counts per status
    list   --id EVT                   one event in full, with its body
    retry  [--id EVT ...]             make dead/stopped events pending again (default: all dead)
    purge  --status S                 delete every event of a status (e.g. delivered)

It opens the same SQLite file as a running server (WAL allows both); a running server sends
retried events within its poll interval (about a second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from app.delivery.outbox import Outbox, OutboxRecord, Status
from app.settings import SettingsError, load_settings

ACTIONS = ("list", "retry", "purge")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="list events, retry dead ones, or purge a status")
    parser.add_argument("--config", default=None, help="settings file (default: settings.toml if present)")
    parser.add_argument("--status", choices=[s.value for s in Status], help="only events of this status")
    parser.add_argument("--id", action="append", default=[], dest="ids", metavar="EVENT_ID",
                        help="an event id (repeatable)")
    parser.add_argument("--limit", type=int, default=50, help="most events to list (default 50)")


def run(args: argparse.Namespace) -> int:
    try:
        path = _outbox_path(args.config)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not path.exists():
        print(f"error: no outbox at {path} (nothing has been sent yet, or another [webhooks] outbox)",
              file=sys.stderr)
        return 1
    return asyncio.run(_main(path, args, sys.stdout))


def _outbox_path(config: str | None) -> Path:
    if config is None and Path("settings.toml").exists():
        config = "settings.toml"
    return Path(load_settings(config).webhooks.outbox)


async def _main(path: Path, args: argparse.Namespace, out: TextIO) -> int:
    outbox = await Outbox.open(path)
    try:
        if args.action == "list":
            return await _list(outbox, args, out)
        if args.action == "retry":
            count = await outbox.retry(args.ids or None)
            if args.ids and count < len(args.ids):
                print(f"requeued {count} of {len(args.ids)} events (only dead or stopped events can be "
                      "retried)", file=out)
                return 1
            print(f"requeued {count} event{'s' if count != 1 else ''}", file=out)
            return 0
        if args.status is None:
            print("error: purge needs --status (e.g. --status delivered)", file=sys.stderr)
            return 2
        count = await outbox.purge(Status(args.status))
        print(f"purged {count} {args.status} event{'s' if count != 1 else ''}", file=out)
        return 0
    finally:
        await outbox.close()


async def _list(outbox: Outbox, args: argparse.Namespace, out: TextIO) -> int:
    if args.ids:
        missing = 0
        for event_id in args.ids:
            record = await outbox.get(event_id)
            if record is None:
                print(f"{event_id}: not found", file=out)
                missing += 1
            else:
                _detail(record, out)
        return 1 if missing else 0
    status = Status(args.status) if args.status else None
    records = await outbox.list(status, args.limit)
    counts = await outbox.counts()
    print("  ".join(f"{s.value}={n}" for s, n in counts.items()), file=out)
    if not records:
        print("no events", file=out)
        return 0
    rows: list[tuple[str, ...]] = [_HEADINGS, *(_row(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)
    return 0


_HEADINGS = ("ID", "TYPE", "CALL", "STATUS", "TRIES", "CREATED", "NEXT/UPDATED", "LAST ERROR")


def _row(record: OutboxRecord) -> tuple[str, ...]:
    event = record.event
    when = record.next_at if record.status is Status.PENDING else record.updated_at
    return (event.id, event.type.value, event.call_id, record.status.value,
            str(record.attempts), _stamp(event.created_at), _stamp(when), _short(record.last_error, 60))


def _detail(record: OutboxRecord, out: TextIO) -> None:
    event = record.event
    print(f"id:         {event.id}", file=out)
    print(f"type:       {event.type.value}", file=out)
    print(f"call:       {event.call_id}", file=out)
    print(f"status:     {record.status.value} after {record.attempts} attempt(s)", file=out)
    print(f"url:        {event.url or '(none: stored only)'}", file=out)
    print(f"created:    {_stamp(event.created_at)}", file=out)
    if record.status is Status.PENDING:
        print(f"next try:   {_stamp(record.next_at)} (in {max(0.0, record.next_at - time.time()):.1f}s)",
              file=out)
    if record.last_error:
        print(f"last error: {record.last_error}", file=out)
    print("body:", file=out)
    print(json.dumps(event.payload(), indent=2, ensure_ascii=False), file=out)


def _stamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
