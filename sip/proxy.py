"""Kamailio in front of the SIP workers: its configuration, and the child process that runs it.

    plan = ProxyPlan(host="0.0.0.0", port=5060, transports=("udp", "tcp"), allow_from=(),
                     workers=(("127.0.0.1", 40101), ("127.0.0.1", 40102)))
    proxy = KamailioProxy(plan, workdir)
    await proxy.start()    # config written, Kamailio answering on host:port; else ProxyStartError
    proxy.health()         # {"status": "ok", "pid": ..., "restarts": 0, "workers": [...]}
    await proxy.stop()

With `[sip] max_calls` above what one worker carries, Kamailio owns the public `host:port`
and spreads calls over the workers; `render_config` (and the script in `ROUTING`) says how.
RTP flows straight between caller and worker. Kamailio runs in the foreground in its own
process group, its log lines come out of `logging.getLogger("hearsay.kamailio")`, it is
started again (with backoff) whenever it exits while the service runs, and it dies with this
process (PR_SET_PDEATHSIG).

`ProxyStartError` (a `SipStartError`) says in one line why Kamailio would not start: missing
(`missing_kamailio(max_calls)`, which a caller can show before starting anything), its
configuration refused, its port taken, or no answer in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import secrets
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip.errors import SipStartError
from sip.proxy_config import (
    LIST_NAME,
    SERVER_NAME,
    ProxyPlan,
    render_config,
    render_dispatcher_list,
    transports,
    worker_uri,
)

log = logging.getLogger("hearsay.sip")

CONFIG_NAME = "kamailio.cfg"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
RESTART_S = 0.5
RESTART_MAX_S = 10.0
STABLE_S = 30.0

# Kamailio's level tag -> ours. ALERT is what its main process says of children it reaps.
_LEVELS = {"ALERT": logging.ERROR, "BUG": logging.ERROR, "CRITICAL": logging.ERROR, "ERROR": logging.ERROR,
           "WARNING": logging.WARNING, "NOTICE": logging.INFO, "INFO": logging.INFO, "DEBUG": logging.DEBUG}
# " 3(1240) WARNING: <script>: text" (the number before the pid is Kamailio's process rank)
_LOG_LINE = re.compile(r"^\s*-?\d+\(\d+\)\s+([A-Z]*):\s?(?:<script>:\s)?(.*)$")
_WORKER_EVENT = re.compile(r"^hearsay: worker (sip:\S+) is (up|down)")


class ProxyStartError(SipStartError):
    """Kamailio would not start; the message says why in one line."""


def missing_kamailio(max_calls: int) -> str:
    """What to tell the user when `[sip] max_calls` needs Kamailio and there is none."""
    return f"sip.max_calls = {max_calls} needs Kamailio in front of the SIP workers: apt-get install -y kamailio"


def kamailio_binary(max_calls: int, binary: str | None = None) -> str:
    """The Kamailio executable: `binary` when given, else `kamailio` on PATH, else
    /usr/sbin/kamailio (Debian installs it there, often outside a user's PATH).

    Raises ProxyStartError(missing_kamailio(max_calls)) when there is none."""
    candidates = [binary] if binary else [shutil.which("kamailio"), "/usr/sbin/kamailio"]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ProxyStartError(missing_kamailio(max_calls))


# -- the process -------------------------------------------------------------------------------


class KamailioProxy:
    """Kamailio for `plan`, run from `workdir` (its config, dispatcher list and runtime files),
    as a supervised child process (see the module docstring). `binary` overrides where
    Kamailio is found (`kamailio_binary`)."""

    def __init__(self, plan: ProxyPlan, workdir: Path, *, binary: str | None = None) -> None:
        self.plan = plan
        self.workdir = Path(workdir)
        self._binary = binary
        self._run: _Run | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._status = "stopped"
        self._restarts = 0
        self._stopping = False
        self._workers = {worker_uri(address, port): "active" for address, port in plan.workers}
        self._log = logging.getLogger("hearsay.kamailio")

    @property
    def config_path(self) -> Path:
        return self.workdir / CONFIG_NAME

    @property
    def pid(self) -> int | None:
        """Kamailio's main process while it runs."""
        run = self._run
        return run.pid if run is not None and run.running else None

    async def start(self) -> None:
        """Write the config and dispatcher list, start Kamailio and wait until it answers
        OPTIONS on the plan's address; from then on keep it running until `stop`.

        Raises ProxyStartError (Kamailio missing, its config refused, its port taken, no
        answer in START_TIMEOUT_S) or ValueError (a bad plan, see `render_config`)."""
        if self._supervisor is not None:
            raise RuntimeError("the proxy is already running")
        self._stopping = False
        self._status = "starting"
        try:
            self._binary = kamailio_binary(self.plan.capacity, self._binary)
            config = render_config(self.plan, self.workdir / LIST_NAME)
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / LIST_NAME).write_text(render_dispatcher_list(self.plan))
            self.config_path.write_text(config)
            _check_port_free(self.plan)
            await self._launch()
        except BaseException:
            self._status = "failed"
            raise
        self._status = "ok"
        self._supervisor = asyncio.create_task(self._supervise(), name="kamailio-supervisor")

    async def stop(self) -> None:
        """Stop supervising, then SIGTERM Kamailio (SIGKILL after STOP_TIMEOUT_S)."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        run, self._run = self._run, None
        if run is not None:
            run.send(signal.SIGTERM)
            try:
                await asyncio.wait_for(run.output.exited.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("Kamailio did not stop in %.0f s: killing it", STOP_TIMEOUT_S)
            await run.close()
        self._status = "stopped"

    def health(self) -> dict[str, Any]:
        """Status ("starting", "ok", "restarting", "failed", "stopped"), Kamailio's pid, how
        often it was restarted, and each worker's dispatcher state ("active" until Kamailio
        reports it down, "inactive" until it answers pings again)."""
        return {
            "status": self._status, "pid": self.pid, "restarts": self._restarts,
            "listen": f"{self.plan.host}:{self.plan.port}", "transports": list(self.plan.transports),
            "workers": [{"uri": uri, "duid": f"w{i}", "state": state}
                        for i, (uri, state) in enumerate(self._workers.items())],
        }

    async def _launch(self) -> None:
        """One Kamailio run, answering OPTIONS before this returns; otherwise it is gone and
        ProxyStartError says why."""
        assert self._binary is not None
        loop = asyncio.get_running_loop()
        transport, output = await loop.subprocess_exec(
            lambda: _Output(self._log_line),
            self._binary, "-DD", "-E", "-f", str(self.config_path), "-Y", str(self.workdir), "-m", "64", "-M", "8",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir, start_new_session=True, preexec_fn=_die_with(os.getpid()))
        run = _Run(transport, output, loop.time())
        self._run = run
        self._workers = dict.fromkeys(self._workers, "active")  # as a fresh dispatcher has them
        try:
            await self._until_answering(run)
        except BaseException:
            self._run = None
            await run.close()
            raise

    async def _until_answering(self, run: _Run) -> None:
        address = self.plan.probe_address
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        probe, _ = await loop.create_datagram_endpoint(lambda: _Replies(replies), remote_addr=address, family=family)
        try:
            while True:
                if not run.running:
                    await run.close()
                    raise ProxyStartError(self._why_not(run))
                if loop.time() > deadline:
                    raise ProxyStartError(f"Kamailio did not answer on {address[0]}:{address[1]} "
                                          f"within {START_TIMEOUT_S:.0f} s")
                probe.sendto(_options(probe.get_extra_info("sockname"), address))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        while True:
                            reply = await replies.get()
                            if reply.startswith(b"SIP/2.0 ") and SERVER_NAME.encode() in reply:
                                return
        finally:
            probe.close()

    def _why_not(self, run: _Run) -> str:
        errors = [e for e in run.output.errors if "SCTP" not in e]
        in_use = next((e for e in errors if "Address already in use" in e), None)
        if in_use is not None:
            return f"Kamailio could not bind {self.plan.host}:{self.plan.port}: the port is in use"
        return f"Kamailio exited at start (code {run.returncode}): {errors[0] if errors else 'no error logged'}"

    async def _supervise(self) -> None:
        """Wait on the running Kamailio; whenever it exits, start it again after a backoff
        (RESTART_S doubling to RESTART_MAX_S, back to RESTART_S after a run of STABLE_S)."""
        loop = asyncio.get_running_loop()
        delay = RESTART_S
        while True:
            run = self._run
            assert run is not None
            await run.output.exited.wait()
            await run.close()
            ran = loop.time() - run.started_at
            if ran >= STABLE_S:
                delay = RESTART_S
            self._status = "restarting"
            log.error("Kamailio exited (code %s) after %.1f s; starting it again in %.1f s", run.returncode, ran, delay)
            while True:
                await asyncio.sleep(delay)
                delay = min(RESTART_MAX_S, delay * 2)
                self._restarts += 1
                try:
                    await self._launch()
                    break
                except ProxyStartError as exc:
                    log.error("Kamailio did not come back: %s; trying again in %.1f s", exc, delay)
            self._status = "ok"
            log.info("Kamailio is back (pid %s, restart %d)", self.pid, self._restarts)

    def _log_line(self, line: str, pid: int, output: _Output) -> None:
        """One line of Kamailio's output into our logging, at its level."""
        match = _LOG_LINE.match(line)
        if match is None:  # the "Listening on" table, or a message from before logging is set up
            level, text = (logging.ERROR if line.startswith("ERROR") else logging.DEBUG), line.strip()
        else:
            level, text = _LEVELS.get(match.group(1), logging.INFO), match.group(2)
        if level == logging.INFO and not text.startswith("hearsay:"):
            level = logging.DEBUG  # Kamailio's own start-up notes; our script's lines stay INFO
        if level >= logging.ERROR:
            output.errors.append(text)
        event = _WORKER_EVENT.match(text)
        if event is not None and event.group(1) in self._workers:
            self._workers[event.group(1)] = "active" if event.group(2) == "up" else "inactive"
        if self._stopping:
            level = min(level, logging.INFO)  # its processes' farewells are not errors
        self._log.log(level, "%s", text, extra={"kamailio_pid": pid})


class _Output(asyncio.SubprocessProtocol):
    """Kamailio's stdout and stderr (one pipe), line by line to `on_line`; `exited` is set when
    its main process exits, whoever still holds the pipe (its children, after a SIGKILL)."""

    def __init__(self, on_line: Callable[[str, int, _Output], None]) -> None:
        self.on_line = on_line
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()  # exited, and the pipe closed
        self.errors: list[str] = []  # the run's error lines, for ProxyStartError
        self.pid = 0
        self._partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.pid = transport.get_pid()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            self._emit(raw)
        if len(self._partial) > 65536:  # no newline in sight: log what there is
            self._emit(self._partial)
            self._partial = b""

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = b""

    def process_exited(self) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def _emit(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        if line.strip():
            self.on_line(line, self.pid, self)


@dataclass
class _Run:
    """One Kamailio process: its transport, its output, when it started (loop time)."""

    transport: asyncio.SubprocessTransport
    output: _Output
    started_at: float
    closed: bool = False

    @property
    def pid(self) -> int:
        return self.transport.get_pid()

    @property
    def running(self) -> bool:
        return not self.output.exited.is_set()

    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode()

    def send(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.transport.send_signal(sig)

    async def close(self) -> None:
        """Make sure nothing of this run is left: its main process killed if still there,
        then the rest of its process group (children outlive a main process killed with
        SIGKILL), and its output read to the end. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.send(signal.SIGKILL)
        await self.output.exited.wait()
        # Kamailio's pid names its group while any member lives, so this reaches only them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.output.closed.wait(), 2.0)
        self.transport.close()


class _Replies(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while Kamailio is not listening yet


def _options(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    """An OPTIONS to Kamailio itself, sent from `local`."""
    host = f"[{local[0]}]" if ":" in local[0] else local[0]
    target = f"[{remote[0]}]:{remote[1]}" if ":" in remote[0] else f"{remote[0]}:{remote[1]}"
    tag = secrets.token_hex(6)
    return (f"OPTIONS sip:{target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{local[1]};branch=z9hG4bK{tag};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:hearsay@{host}>;tag={tag}\r\n"
            f"To: <sip:{target}>\r\n"
            f"Call-ID: {tag}@hearsay\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def _check_port_free(plan: ProxyPlan) -> None:
    """ProxyStartError when the plan's port is taken. Kamailio binds UDP with SO_REUSEADDR, so
    a second Kamailio (or a SIP worker) on the same port would not stop it: ask first."""
    host = "::" if plan.host == "::" else (plan.host or "0.0.0.0")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kinds = [socket.SOCK_DGRAM] + ([socket.SOCK_STREAM] if "tcp" in transports(plan.transports) else [])
    for kind in kinds:
        with socket.socket(family, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Kamailio does: TIME_WAIT is no owner
            try:
                s.bind((host, plan.port))
            except OSError as exc:
                proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
                raise ProxyStartError(f"Kamailio cannot listen on {proto} {plan.host}:{plan.port}: "
                                      f"{exc.strerror or exc}") from None


def _die_with(parent: int) -> Callable[[], None]:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies, so that Kamailio
    never outlives the service (SIGTERM lets it stop its own children). prctl is looked up
    here, before the fork; the child only calls it. The signal comes when the *thread* that
    forked exits, so start Kamailio from the event loop's thread, as `KamailioProxy` does."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took hold
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


_PR_SET_PDEATHSIG = 1
