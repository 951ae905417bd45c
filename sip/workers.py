"""The service's side of its SIP workers: start them, hold their bridges, restart the dead.

    pool = WorkerPool(topology, handler)
    await pool.start()     # every worker serving, or SipStartError with the first one's reason
    pool.health()          # one dict per worker: state, pid, calls, restarts, ...
    await pool.stop()      # `stop` to each (it hangs its calls up), then wait for them to exit

Each worker is `python -m app sip-worker --bridge <socket> --worker N` (sip/worker.py), a child
process connected back over a unix socket in a private temporary directory. The pool sends it
its `WorkerConfig`, waits for `ready`, and hands every call message to `handler`
(`on_message(link, message)`); log lines the worker sends come out of this process's logging,
and so do its stdout and stderr (pjlib's console lines, an assertion's last words).

A worker that exits or drops its bridge while the service runs is reported once
(`handler.on_lost(link)`: its calls end as `sip_worker_lost`) and started again after a
backoff (RESTART_S doubling up to RESTART_MAX_S; reset once one has served STABLE_S), on the
same ports, so the proxy's dispatcher list stays right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sip.bridge import BridgeError, BridgeStream, Message
from sip.errors import SipStartError
from sip.topology import Topology, WorkerConfig

log = logging.getLogger("hearsay.sip")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
RESTART_S = 0.25
RESTART_MAX_S = 10.0
STABLE_S = 30.0


class WorkerState(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class LinkHandler(Protocol):
    def on_message(self, link: WorkerLink, message: Message) -> None: ...

    def on_lost(self, link: WorkerLink) -> None: ...


class WorkerLink:
    """The bridge to one running worker process (what `handler` talks to)."""

    def __init__(self, index: int, stream: BridgeStream) -> None:
        self.index = index
        self.stream = stream
        self.calls: dict[int, Any] = {}  # the handler's per-call objects, by the worker's serial
        self.lost = False

    def send_event(self, call: int, event: dict[str, Any]) -> None:
        if not self.lost:
            self.stream.send_event(call, event)

    def send_play(self, call: int, key: int, frames: list[bytes]) -> None:
        if not self.lost:
            self.stream.send_play(call, key, frames)


@dataclass
class _Slot:
    """One worker's place in the pool, kept across its restarts."""

    config: WorkerConfig
    state: WorkerState = WorkerState.STARTING
    process: asyncio.subprocess.Process | None = None
    link: WorkerLink | None = None
    restarts: int = 0
    failures: int = 0  # restarts in a row without serving STABLE_S
    serving_since: float = 0.0
    error: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    ready: asyncio.Future[str] | None = None  # "" once serving, else why it failed


class WorkerPool:
    """Runs the topology's workers as child processes (see the module docstring)."""

    def __init__(self, topology: Topology, handler: LinkHandler, *,
                 on_restart: Callable[[int], None] | None = None) -> None:
        self._slots = [_Slot(config) for config in topology.workers]
        self._handler = handler
        self._on_restart = on_restart
        self._dir: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._supervisors: set[asyncio.Task[None]] = set()

    @property
    def socket_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "bridge.sock"

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="hearsay-sip-"))
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))
        loop = asyncio.get_running_loop()
        for slot in self._slots:
            slot.ready = loop.create_future()
            self._supervise(slot)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                errors = [await slot.ready for slot in self._slots]  # type: ignore[misc]
        except TimeoutError:
            errors = ["a SIP worker did not start in time"]
        failed = next((e for e in errors if e), None)
        if failed is not None:
            await self.stop()
            raise SipStartError(failed)

    async def stop(self) -> None:
        self._stopping = True
        for slot in self._slots:
            if slot.link is not None:
                slot.link.send_event(0, {"type": "stop"})
        if self._supervisors:
            _, pending = await asyncio.wait(self._supervisors, timeout=STOP_TIMEOUT_S)
            for slot in self._slots:
                if slot.process is not None and slot.process.returncode is None:
                    log.error("SIP worker %d did not stop in %.0f s: killing it", slot.config.index, STOP_TIMEOUT_S)
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.kill()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=5.0)
                for task in stuck:
                    task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def health(self) -> list[dict[str, Any]]:
        out = []
        for slot in self._slots:
            entry: dict[str, Any] = {
                "worker": slot.config.index, "state": slot.state.value,
                "pid": slot.process.pid if slot.process is not None else None,
                "sip": f"{slot.config.sip.host}:{slot.config.sip.port}",
                "max_calls": slot.config.sip.max_calls, "restarts": slot.restarts,
                "active_calls": len(slot.link.calls) if slot.link is not None else 0,
                "refused_calls": slot.status.get("refused_calls", 0),
            }
            if slot.error:
                entry["error"] = slot.error
            out.append(entry)
        return out

    def registrations(self) -> list[dict[str, Any]]:
        return [r for slot in self._slots for r in slot.status.get("registrations", [])]

    # -- processes --------------------------------------------------------------------------

    def _supervise(self, slot: _Slot) -> None:
        task = asyncio.create_task(self._keep_running(slot), name=f"sip-worker-{slot.config.index}")
        self._supervisors.add(task)
        task.add_done_callback(self._supervisors.discard)

    async def _keep_running(self, slot: _Slot) -> None:
        """Run the slot's worker, and again each time it exits, until the pool stops."""
        while not self._stopping:
            code = await self._run_once(slot)
            self._lose(slot)
            if self._stopping:
                break
            if slot.ready is not None and not slot.ready.done():
                await asyncio.sleep(0.5)  # its `failed` may still be on the way
                if not slot.ready.done():
                    slot.ready.set_result(slot.error or f"SIP worker {slot.config.index} exited ({code})")
                slot.state = WorkerState.FAILED
                return
            stable = slot.serving_since and time.monotonic() - slot.serving_since >= STABLE_S
            slot.failures = 1 if stable else slot.failures + 1
            delay = min(RESTART_MAX_S, RESTART_S * 2 ** (slot.failures - 1))
            slot.state = WorkerState.RESTARTING
            log.error("SIP worker %d exited (%s); starting it again in %.2f s", slot.config.index, code, delay)
            await asyncio.sleep(delay)
            slot.restarts += 1
            if self._on_restart is not None:
                self._on_restart(slot.config.index)
        slot.state = WorkerState.STOPPED

    async def _run_once(self, slot: _Slot) -> int | None:
        slot.serving_since = 0.0
        slot.error = ""
        process = slot.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "sip-worker", "--bridge", str(self.socket_path),
            "--worker", str(slot.config.index),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None
        index = slot.config.index
        outputs = [asyncio.create_task(_log_lines(process.stdout, index, logging.DEBUG)),
                   asyncio.create_task(_log_lines(process.stderr, index, logging.WARNING))]
        try:
            return await process.wait()
        finally:
            await asyncio.gather(*outputs, return_exceptions=True)

    def _lose(self, slot: _Slot) -> None:
        link, slot.link = slot.link, None
        if link is not None and not link.lost:
            link.lost = True
            if not self._stopping:
                log.error("SIP worker %d lost with %d call(s)", slot.config.index, len(link.calls))
            self._handler.on_lost(link)

    # -- bridges ----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = BridgeStream(reader, writer)
        try:
            hello = await asyncio.wait_for(stream.read(), START_TIMEOUT_S)
        except (TimeoutError, BridgeError):
            hello = None
        slot = self._slot_for(hello)
        if slot is None:
            await stream.aclose()
            return
        link = slot.link = WorkerLink(slot.config.index, stream)
        stream.send_event(0, {"type": "config", "config": slot.config.to_json()})
        try:
            await self._serve(slot, link)
        finally:
            if slot.link is link:
                self._lose(slot)
            await stream.aclose()
            # A worker that dropped its bridge but lives on is of no use: end it, and the
            # supervisor starts another.
            if slot.process is not None and slot.process.returncode is None and not self._stopping:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()

    def _slot_for(self, hello: Message | None) -> _Slot | None:
        if hello is None or hello.event is None or hello.event.get("type") != "hello":
            log.warning("a connection on the SIP bridge did not say hello; closed")
            return None
        index, pid = hello.event.get("worker"), hello.event.get("pid")
        for slot in self._slots:
            if slot.config.index == index and slot.process is not None and slot.process.pid == pid:
                return slot
        log.warning("SIP bridge: hello from an unknown worker %r (pid %r); closed", index, pid)
        return None

    async def _serve(self, slot: _Slot, link: WorkerLink) -> None:
        while True:
            try:
                message = await link.stream.read()
            except BridgeError as exc:
                log.error("SIP worker %d broke the bridge protocol: %s", slot.config.index, exc)
                return
            if message is None:
                return
            try:
                if message.call:
                    self._handler.on_message(link, message)
                elif message.event is not None:
                    self._worker_event(slot, message.event)
            except Exception:  # a bug handling one message must not cost the worker's calls
                log.exception("SIP worker %d: handling %s for call %d failed", slot.config.index,
                              message.kind.name, message.call)

    def _worker_event(self, slot: _Slot, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "log":
            logging.getLogger(str(event.get("logger") or "hearsay.sip")).log(
                int(event.get("level", logging.INFO)), "sip-worker %d: %s", slot.config.index, event.get("message", ""))
        elif kind == "status":
            slot.status = event
        elif kind == "ready":
            slot.state = WorkerState.SERVING
            slot.serving_since = time.monotonic()
            log.info("SIP worker %d serving on %s (pid %s)", slot.config.index,
                     ", ".join(event.get("transports", [])), slot.process.pid if slot.process else "?")
            if slot.ready is not None and not slot.ready.done():
                slot.ready.set_result("")
        elif kind == "failed":
            slot.error = str(event.get("error", "failed to start"))
            log.error("SIP worker %d failed to start: %s", slot.config.index, slot.error)
            if slot.ready is not None and not slot.ready.done():
                slot.ready.set_result(slot.error)


async def _log_lines(stream: asyncio.StreamReader, index: int, level: int) -> None:
    """A worker's stdout/stderr, line by line, into our logging."""
    out = logging.getLogger("hearsay.sip.worker")
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if text:
            out.log(level, "sip-worker %d: %s", index, text)
