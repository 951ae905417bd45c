"""`python -m app serve [--config settings.toml] [--dialplans DIR]`: run the service.

Loads and validates the settings (a bad key stops start-up with exit code 2 and one line
naming it), sets up logging, starts the aiohttp app on `[http] host:port`, and runs until
SIGTERM or SIGINT. Shutdown is graceful: the listener closes, every live call is finalised
(its in-flight utterance becomes a final), deliverable events are flushed and the rest stay
in the outbox for the next start. SIGHUP reloads the dialplans (a bad set is logged and the
old one kept).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys

from aiohttp import web

from app.collector import freeze_startup
from app.dialplans import DialplanError
from app.logs import setup_logging
from app.malloc import limit_arenas
from app.settings import Settings, SettingsError, load_settings
from sip.errors import SipStartError

log = logging.getLogger("hearsay.serve")

# Seconds aiohttp waits for open connections (WebSocket sessions ending) at shutdown.
SHUTDOWN_TIMEOUT_S = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="settings.toml", metavar="FILE",
                        help="settings file (default: settings.toml)")
    parser.add_argument("--dialplans", metavar="DIR", help="dialplan directory (overrides [dialplans] dir)")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"hearsay: {exc}", file=sys.stderr)
        return 2
    if args.dialplans:
        settings = dataclasses.replace(
            settings, dialplans=dataclasses.replace(settings.dialplans, dir=args.dialplans))
    setup_logging(settings.log)
    limit_arenas(settings.asr.malloc_arenas)  # before any thread starts (app/malloc.py)
    try:
        asyncio.run(serve(settings))
    except DialplanError as exc:
        log.error("cannot start: %s", exc)
        return 2
    except (OSError, SipStartError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def serve(settings: Settings) -> None:
    """Run the app until SIGTERM/SIGINT; SIGHUP reloads the dialplans."""
    from app.server import create_app, reload_dialplans

    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()
    loop = asyncio.get_running_loop()

    def reload() -> None:
        task = loop.create_task(reload_dialplans(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        site = web.TCPSite(runner, settings.http.host, settings.http.port)
        await site.start()
        freeze_startup()  # the models and modules, out of the cycle collector's way (app/collector.py)
        log.info("Hearsay listening on http://%s:%d", settings.http.host, settings.http.port)
        await stop.wait()
        log.info("shutting down: finishing calls and flushing webhooks")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await asyncio.gather(*reloads, return_exceptions=True)
        await runner.cleanup()
    log.info("stopped")
