"""`python -m app sip-worker --bridge PATH --worker N`: one pjsua2 endpoint in a process of its own.

The service starts and supervises these (sip/workers.py); nobody runs one by hand. A worker
connects to the service's bridge socket, says hello, is sent its `WorkerConfig`
(sip/topology.py), starts its `SipEndpoint` and reports `ready` (or `failed` with the reason,
e.g. the port is taken). From then on every INVITE it screens in (allow_from, digest auth,
capacity) goes to the service as an `offer`, and the call's audio, digits and end follow it;
the service answers it, plays into it, clears, hangs up or transfers (sip/bridge.py has the
wire format, docs/sip.md the events). Log lines, pjsua's included, go to the service over the
bridge, so they come out of the service's logging.

A worker lives as long as its bridge: when the service goes (or sends `stop`, or SIGTERM
comes) it hangs its calls up and exits. If the worker dies instead, the service ends its calls
as `sip_worker_lost` and starts another in its place.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from app.calls.info import EndReason
from sip.bridge import BridgeError, BridgeStream, Kind, Message
from sip.endpoint import REFUSE_DELAY_S, EndpointOptions, SipEndpoint
from sip.errors import SipStartError
from sip.frames import FrameQueue
from sip.screen import DigestAuth, Offer, Screen
from sip.topology import WorkerConfig

log = logging.getLogger("hearsay.sip")

STATUS_INTERVAL_S = 1.0
# Bytes waiting for the service to read before a worker drops its callers' audio (about a
# minute of four calls).
MAX_BUFFERED_BYTES = 4 << 20
SOURCE_HEADER = "X-Hearsay-Source"  # set by the proxy in front (sip/proxy.py)
EXIT_START_FAILED = 3

Post = Callable[..., object]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bridge", required=True, metavar="PATH", help="the service's bridge socket")
    parser.add_argument("--worker", type=int, required=True, metavar="N", help="this worker's number")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"sip-worker {args.worker}: %(levelname)s %(name)s: %(message)s")
    return asyncio.run(Worker(args.bridge, args.worker).run())


class Worker:
    """The worker process's life: connect, configure, serve calls until told to stop."""

    def __init__(self, bridge_path: str, index: int) -> None:
        self._path = bridge_path
        self._index = index
        self._calls: dict[int, _WorkerCall] = {}
        self._endpoint: SipEndpoint | None = None
        self._bridge: BridgeStream | None = None
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        reader, writer = await asyncio.open_unix_connection(self._path)
        bridge = self._bridge = BridgeStream(reader, writer)
        bridge.send_event(0, {"type": "hello", "worker": self._index, "pid": os.getpid()})
        first = await bridge.read()
        if first is None or first.event is None or first.event["type"] != "config":
            log.error("the service sent no configuration")
            return 1
        config = WorkerConfig.from_json(first.event["config"])
        _forward_logs(bridge, loop, config.log_level)
        endpoint = self._endpoint = _endpoint(config, self._admit)
        try:
            await loop.run_in_executor(None, endpoint.start)
        except SipStartError as exc:
            bridge.send_event(0, {"type": "failed", "error": str(exc)})
            await bridge.drain()
            await bridge.aclose()
            return EXIT_START_FAILED
        bridge.send_event(0, {"type": "ready", "transports": endpoint.transports})
        reading = asyncio.create_task(self._read(bridge))
        status = asyncio.create_task(self._report_status(bridge, endpoint))
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reading, status, stopping):
                task.cancel()
            await asyncio.gather(reading, status, stopping, return_exceptions=True)
            # Hangs every call up; their `ended` reach the service while the bridge is open.
            await loop.run_in_executor(None, endpoint.stop)
            await asyncio.sleep(0)
            await bridge.drain()
            await bridge.aclose()
        return 0

    # -- the SIP thread: admission ----------------------------------------------------------

    def _admit(self, offer: Offer, serial: int) -> _WorkerCall:
        call = _WorkerCall(serial, self._post)
        self._post(self._offer, call, offer)
        return call

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting
            self._loop.call_soon_threadsafe(fn, *args)

    # -- the loop ---------------------------------------------------------------------------

    def _offer(self, call: _WorkerCall, offer: Offer) -> None:
        assert self._bridge is not None
        call.bridge = self._bridge
        self._calls[call.serial] = call
        call.on_gone = self._calls.pop
        self._bridge.send_event(call.serial, {
            "type": "offer", "call_id": offer.call_id, "from": offer.from_, "to": offer.to,
            "user": offer.user, "source_ip": offer.source_ip})

    async def _read(self, bridge: BridgeStream) -> None:
        while True:
            try:
                message = await bridge.read()
            except BridgeError as exc:
                log.error("the service broke the bridge protocol: %s", exc)
                return
            if message is None:
                log.info("the service closed the bridge")
                return
            try:
                self._dispatch(message)
            except Exception:  # one bad message must not cost the other calls
                log.exception("handling %s for call %d failed", message.kind.name, message.call)

    def _dispatch(self, message: Message) -> None:
        endpoint = self._endpoint
        assert endpoint is not None
        call = self._calls.get(message.call)
        if message.kind is Kind.PLAY:
            if call is not None:
                call.frames.put(message.key, list(message.frames))
            return
        if message.kind is not Kind.EVENT or message.event is None:
            return
        event = message.event
        kind = event["type"]
        if kind == "stop":
            self._stop.set()
        elif kind == "answer":
            headers = tuple((str(k), str(v)) for k, v in dict(event.get("headers") or {}).items())
            endpoint.answer(message.call, int(event["code"]), str(event.get("reason", "")), headers)
        elif kind == "refuse":
            endpoint.refuse(message.call, int(event["code"]), str(event.get("reason", "")))
        elif kind == "hangup":
            endpoint.hang_up(message.call, EndReason(event["reason"]))
        elif kind == "clear" and call is not None:
            call.send_taken("cleared", call.frames.clear())
        elif kind == "transfer" and call is not None:
            endpoint.transfer(message.call, str(event["target"]), call.transfer_report)

    async def _report_status(self, bridge: BridgeStream, endpoint: SipEndpoint) -> None:
        while True:
            bridge.send_event(0, {
                "type": "status", "active_calls": endpoint.active_calls, "refused_calls": endpoint.refused,
                "registrations": [r.as_dict() for r in endpoint.registrations()]})
            await asyncio.sleep(STATUS_INTERVAL_S)


class _WorkerCall:
    """One admitted call inside the worker (`CallEvents` for sip/call.py): what pjsua2's
    threads report is posted to the loop and sent on the bridge in order; what the service
    plays waits in `frames` for the media clock."""

    def __init__(self, serial: int, post: Post) -> None:
        self.serial = serial
        self._post = post
        self.bridge: BridgeStream | None = None
        self.on_gone: Callable[[int], Any] | None = None
        self.frames = FrameQueue(lambda: post(self._progress))
        self.dropped = 0

    # pjsua2's threads: hand over only.
    def audio(self, pcm: bytes) -> None:
        self._post(self._send_audio, pcm, time.monotonic())

    def dtmf(self, digit: str) -> None:
        self._post(self._send, {"type": "dtmf", "digit": digit})

    def ended(self, reason: EndReason) -> None:
        self._post(self._ended, reason)

    def rtp_stats(self, stats: dict[str, float]) -> None:
        self._post(self._send, {"type": "rtp_stats", **stats})

    def next_frame(self) -> bytes | None:
        return self.frames.take()

    def transfer_report(self, code: int, reason: str, final: bool) -> None:
        self._post(self._send, {"type": "transfer", "code": code, "reason": reason, "final": final})

    # The loop.
    def send_taken(self, kind: str, taken: dict[int, int]) -> None:
        """`progress` (only when frames were taken) or `cleared` (always: the service waits)."""
        if taken or kind == "cleared":
            self._send({"type": kind, "taken": {str(k): v for k, v in taken.items()}})

    def _progress(self) -> None:
        self.send_taken("progress", self.frames.collect())

    def _send_audio(self, pcm: bytes, sent_at: float) -> None:
        if self.bridge is None:
            return
        if self.bridge.buffered > MAX_BUFFERED_BYTES:
            # The service has stopped reading (stalled or dying): drop audio rather than grow
            # without bound; the call's end still gets through when it does read again.
            self.dropped += 1
            if self.dropped in (1, 500, 5000):
                log.warning("SIP call %d: the service is not reading the bridge; %d frames dropped",
                            self.serial, self.dropped)
            return
        self.bridge.send_audio(self.serial, pcm, sent_at)

    def _send(self, event: dict[str, Any]) -> None:
        if self.bridge is not None:
            self.bridge.send_event(self.serial, event)

    def _ended(self, reason: EndReason) -> None:
        self._progress()
        self._send({"type": "ended", "reason": reason.value})
        if self.on_gone is not None:
            self.on_gone(self.serial)


def _endpoint(config: WorkerConfig, admit: Callable[[Offer, int], _WorkerCall]) -> SipEndpoint:
    s = config.sip
    auth = (DigestAuth(s.auth_username, s.auth_password, key=bytes.fromhex(config.nonce_key) or None)
            if s.auth_username else None)
    screen = Screen(s.allow_from, auth, s.max_calls)
    options = EndpointOptions(
        media_host=config.media_host, outbound_proxy=config.outbound_proxy, contact=config.contact,
        source_header=SOURCE_HEADER if config.proxied else "",
        refuse_delay_s=0.0 if config.proxied else REFUSE_DELAY_S,
        log_level=logging.getLevelName(config.log_level.upper()))
    return SipEndpoint(s, screen, admit, options)


class _BridgeLogHandler(logging.Handler):
    """Sends log records to the service as `log` events (from any thread)."""

    def __init__(self, bridge: BridgeStream, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._bridge = bridge
        self._loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            event = {"type": "log", "level": record.levelno, "logger": record.name, "message": message}
            self._loop.call_soon_threadsafe(self._bridge.send_event, 0, event)
        except Exception:  # never let logging take a pjsua2 callback down
            self.handleError(record)


def _forward_logs(bridge: BridgeStream, loop: asyncio.AbstractEventLoop, level: str) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_BridgeLogHandler(bridge, loop))
    root.setLevel(level.upper())
