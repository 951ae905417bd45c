"""The pjsua2 `Endpoint` on its own thread: library life cycle, transports, accounts, calls.

Every pjsua2 object is created, used and destroyed on the one thread `SipEndpoint` starts
(the "SIP thread"), which polls the library with `libHandleEvents` (`threadCnt=0`,
`mainThreadOnly`), runs jobs posted from other threads with `call_soon`, checks RTP timeouts,
and drops the references of finished calls so Python frees them there too. Only the media
clock thread calls in on its own (`FrameTap.onFrameReceived`, `FramePlayer.onFrameRequested`),
and it only hands frames over or takes them from a thread-safe queue.

    SipEndpoint(settings, screen, admit, options).start()   # blocking: raises SipStartError
    endpoint.call_soon(fn)                          # any thread: run fn on the SIP thread
    endpoint.answer(serial, 200) / endpoint.hang_up(serial, reason)
    endpoint.refuse(serial, 404, "Not Found")       # a refusal, sent REFUSE_DELAY_S late
    endpoint.transfer(serial, target, report)       # REFER; BYE once the NOTIFY says 2xx
    endpoint.stop()                                 # blocking: hangs up, destroys the library

Shutdown hangs up every call and waits (briefly) for each to disconnect, unregisters the
trunks, frees calls, taps, players and accounts, and only then calls `libDestroy`: a `pj.Call` that
outlived the library would abort the process. pjsua2 allows one `Endpoint` per process, so
one `SipEndpoint` may run at a time (start another after the first has stopped).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pjsua2 as pj

from app.calls.info import EndReason
from app.settings import SipSettings
from sip.account import (
    InboundAccount,
    RegisteredAccount,
    RegistrationState,
    inbound_config,
    registration_config,
)
from sip.call import CallEvents, MediaPorts, SipCall
from sip.errors import SipStartError
from sip.screen import Offer, Screen, Verdict, address_uri, header, request_user, source_ip
from sip.types import TransferReport

log = logging.getLogger("hearsay.sip")

POLL_MS = 10  # libHandleEvents timeout: the longest a posted job waits
TICK_S = 1.0  # how often RTP timeouts are checked
HANGUP_WAIT_S = 3.0  # how long shutdown waits for calls to disconnect
# The pjsua2-python wheel is built with PJSUA_MAX_CALLS = 4: whatever maxCalls says, pjsua
# holds four calls and answers a fifth INVITE 486 itself (measured with sipp placing 8 calls
# against maxCalls = 20: 4 accepted). Its media ioqueue also holds only 64 sockets, 2 per
# call, a closed one reusable ~0.5 s later, and pjlib aborts the process past that; refusals
# are therefore sent REFUSE_DELAY_S late, so an INVITE flood churns slots at most once a
# second (a proxy in front limits floods itself: see EndpointOptions.refuse_delay_s). More
# calls than MAX_ADMITTED take more worker processes (sip/topology.py).
CALL_SLOTS = 4
MAX_ADMITTED = 4
REFUSE_DELAY_S = 1.0
JB_MAX_MS = 1000  # the jitter buffer absorbs bursts up to this long

# (offer, serial) -> the admitted call's event sink; runs on the SIP thread. Whoever admits
# the call answers it later with `answer` (200, or a refusal) or `refuse`.
AdmitHandler = Callable[[Offer, int], CallEvents]

_CODEC_IDS = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G722": "G722/16000"}
_PJ_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING}


@dataclass(frozen=True, slots=True)
class EndpointOptions:
    """How this endpoint sits in the service (sip/topology.py's `WorkerConfig` sets them).

    `media_host`: where RTP binds and what SDP carries (None: `settings.host`).
    `outbound_proxy`, `contact`: trunk registrations go through this proxy URI and register
    this host:port as their Contact (a proxy in front owns the public address).
    `source_header`: a header the proxy in front sets to the caller's address.
    `refuse_delay_s`: how late refusals go out (see REFUSE_DELAY_S).
    `log_level`: the Python level pjsua's own lines are wanted at.
    """

    media_host: str | None = None
    outbound_proxy: str = ""
    contact: str = ""
    source_header: str = ""
    refuse_delay_s: float = REFUSE_DELAY_S
    log_level: int = logging.INFO


class _LogWriter(pj.LogWriter):
    """Forwards pjsua's own log lines to Python logging (called from any pjsua2 thread)."""

    def write(self, entry: pj.LogEntry) -> None:
        try:
            level = _PJ_LOG_LEVELS.get(entry.level, logging.DEBUG)
            log.log(level, "pjsua: %s", entry.msg.rstrip())
        except Exception:  # a raise here would unwind through C++
            pass


class SipEndpoint:
    """One running pjsua2 user agent (see the module docstring for the thread contract)."""

    def __init__(self, settings: SipSettings, screen: Screen, admit: AdmitHandler,
                 options: EndpointOptions | None = None) -> None:
        self.settings = settings
        self.options = options or EndpointOptions()
        if screen.max_calls > MAX_ADMITTED:
            raise ValueError(f"screen.max_calls = {screen.max_calls}: this pjsua2 build carries at most "
                             f"{MAX_ADMITTED} calls at once")
        self._screen = screen
        self._admit = admit
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._start_error: str | None = None
        # Below: touched only on the SIP thread (reads of the counters from elsewhere are fine).
        self._ep: pj.Endpoint | None = None
        self._writer: _LogWriter | None = None
        self._accounts: list[InboundAccount] = []
        self._calls: dict[int, SipCall] = {}
        self._admitted: set[int] = set()
        self._graveyard: list[SipCall] = []
        self._ports = MediaPorts()
        self._serial = 0
        self._closing = False
        self.transports: list[str] = []
        self.refused = 0
        self._refusals: list[tuple[float, int, Verdict]] = []  # (when, serial, answer)

    # -- any thread -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._ready.is_set()

    @property
    def active_calls(self) -> int:
        return len(self._admitted)

    def registrations(self) -> list[RegistrationState]:
        return [a.state for a in list(self._accounts) if isinstance(a, RegisteredAccount)]

    def start(self, timeout: float = 15.0) -> None:
        """Start the SIP thread and wait until the library listens (raises SipStartError)."""
        self._thread = threading.Thread(target=self._run, name="sip", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SipStartError("the SIP user agent did not start in time")
        if self._start_error is not None:
            self._thread.join(timeout)
            raise SipStartError(self._start_error)

    def stop(self, timeout: float = 15.0) -> None:
        """Hang up every call, destroy the library, and join the SIP thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the SIP thread did not stop in %.0f s", timeout)

    def call_soon(self, job: Callable[[], None]) -> None:
        """Run `job` on the SIP thread (it must not block)."""
        self._jobs.put(job)

    def answer(self, serial: int, code: int, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer an admitted call's INVITE (200 takes it; >= 300 refuses it, with `headers`
        such as Retry-After)."""
        self.call_soon(lambda: self._answer(serial, code, reason, headers))

    def refuse(self, serial: int, code: int, reason: str) -> None:
        """Refuse an admitted call the way screening does (`refuse_delay_s` late, counted in
        `refused`): for refusals a scanner provokes, such as 404 for an unknown number."""
        self.call_soon(lambda: self._refuse(serial, Verdict(code, reason)))

    def hang_up(self, serial: int, reason: EndReason) -> None:
        """End a call from our side; its `CallEvents.ended` reports `reason`."""
        self.call_soon(lambda: self._hang_up(serial, reason))

    def transfer(self, serial: int, target: str, report: TransferReport) -> None:
        """Ask the caller to move the call to `target` (a SIP URI) with a REFER. `report(code,
        reason, final)` runs on the SIP thread (so it must only hand over): (100, "Accepted")
        when the REFER got its 2xx, then each NOTIFY's status; a final one ends it. One that
        could not be sent is reported as (0, why, True). Once the caller's side reports 2xx
        (the target answered), the call is hung up (BYE) and ends as `TRANSFERRED`."""
        self.call_soon(lambda: self._transfer(serial, target, report))

    # -- the SIP thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._open()
        except Exception as exc:
            self._start_error = _describe(exc, self.settings)
            log.error("SIP user agent failed to start: %s", self._start_error)
            self._ready.set()
            self._destroy()
            return
        self._ready.set()
        next_tick = time.monotonic() + TICK_S
        while not self._stop.is_set():
            self._poll()
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK_S
                self._check_media()
        self._shutdown()

    def _poll(self, msec: int = POLL_MS) -> None:
        assert self._ep is not None
        try:
            self._ep.libHandleEvents(msec)
        except Exception:
            log.exception("libHandleEvents failed")
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            try:
                job()
            except Exception:
                log.exception("a SIP job failed")
        if self._refusals and self._refusals[0][0] <= time.monotonic():
            self._send_refusals(time.monotonic())
        self._graveyard.clear()

    def _send_refusals(self, now: float) -> None:
        while self._refusals and self._refusals[0][0] <= now:
            _, serial, verdict = self._refusals.pop(0)
            call = self._calls.get(serial)
            if call is not None and not call.gone:
                try:
                    call.respond(verdict.code, verdict.reason, verdict.headers)
                except pj.Error as exc:
                    log.debug("refusing %s: %s", call.offer.call_id, exc.info())

    def _open(self) -> None:
        s = self.settings
        ep = pj.Endpoint()
        self._ep = ep
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = CALL_SLOTS
        cfg.uaConfig.userAgent = "Hearsay"
        self._writer = _LogWriter()
        cfg.logConfig.writer = self._writer
        # pjsua's levels 3 and up are its chatter, logged at DEBUG (see _LogWriter).
        pj_level = 5 if self.options.log_level <= logging.DEBUG else 2
        cfg.logConfig.level = pj_level
        cfg.logConfig.consoleLevel = pj_level
        cfg.logConfig.decor = 0
        cfg.medConfig.clockRate = 8000
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.jbMax = JB_MAX_MS
        ep.libInit(cfg)
        kinds = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP}
        for name in s.transports:
            tcfg = pj.TransportConfig()
            tcfg.port = s.port
            if s.host not in ("0.0.0.0", ""):
                tcfg.boundAddress = s.host
            ep.transportCreate(kinds[name], tcfg)
            self.transports.append(f"{name}:{s.host}:{s.port}")
        ep.libStart()
        ep.audDevManager().setNullDev()
        self._set_codecs(ep)
        media_host = self.options.media_host if self.options.media_host is not None else s.host
        inbound = InboundAccount(self._incoming)
        inbound.create(inbound_config(s, media_host), True)
        self._accounts.append(inbound)
        for reg in s.registrations:
            account = RegisteredAccount(reg, self._incoming)
            account.create(registration_config(reg, s, media_host, self.options.outbound_proxy,
                                               self.options.contact))
            self._accounts.append(account)
        log.info("SIP user agent listening on %s", ", ".join(self.transports))

    def _set_codecs(self, ep: pj.Endpoint) -> None:
        wanted = [_CODEC_IDS[c.upper()] for c in self.settings.codecs]
        for codec in ep.codecEnum2():
            cid = codec.codecId
            rank = next((i for i, w in enumerate(wanted) if cid.startswith(w)), None)
            ep.codecSetPriority(cid, 0 if rank is None else 250 - rank)

    def _incoming(self, account: pj.Account, prm: pj.OnIncomingCallParam) -> None:
        msg = prm.rdata.wholeMsg
        ip = source_ip(prm.rdata.srcAddress)
        if self.options.source_header:
            ip = header(msg, self.options.source_header) or ip
        offer = Offer(call_id=header(msg, "Call-ID", "i"), from_=address_uri(header(msg, "From", "f")),
                      to=address_uri(header(msg, "To", "t")), user=request_user(msg),
                      source_ip=ip, message=msg)
        self._serial += 1
        call = SipCall(account, prm.callId, self._serial, offer, self._gone, self._ports)
        self._calls[call.serial] = call
        if self._closing:
            call.respond(503, "Service Unavailable")
            return
        verdict = self._screen.check(offer, self.active_calls)
        if verdict is not None:
            self._refuse(call.serial, verdict)
            return
        self._admitted.add(call.serial)
        call.events = self._admit(offer, call.serial)

    def _refuse(self, serial: int, verdict: Verdict) -> None:
        call = self._calls.get(serial)
        if call is None or call.gone:
            return
        self.refused += 1
        self._admitted.discard(serial)
        log.info("SIP call %s from %s to %r refused: %d %s", call.offer.call_id, call.offer.source_ip,
                 call.offer.user, verdict.code, verdict.reason)
        self._refusals.append((time.monotonic() + self.options.refuse_delay_s, serial, verdict))

    def _answer(self, serial: int, code: int, reason: str, headers: tuple[tuple[str, str], ...]) -> None:
        call = self._calls.get(serial)
        if call is not None and not call.gone:
            try:
                call.respond(code, reason, headers)
            except pj.Error as exc:
                log.warning("answering %s failed: %s", call.offer.call_id, exc.info())

    def _hang_up(self, serial: int, reason: EndReason) -> None:
        call = self._calls.get(serial)
        if call is not None:
            call.hang_up(reason, code=0 if call.confirmed else 480)

    def _transfer(self, serial: int, target: str, report: TransferReport) -> None:
        call = self._calls.get(serial)
        if call is None or call.gone:
            report(0, "the call is over", True)
            return

        def status(code: int, reason: str, final: bool) -> None:
            report(code, reason, final)
            if code // 100 == 2:
                # Hang up once this callback has returned, so the NOTIFY's own 200 goes out
                # before our BYE.
                log.info("SIP call %s transferred to %s (%d %s)", call.offer.call_id, target, code, reason)
                self.call_soon(lambda: self._hang_up(serial, EndReason.TRANSFERRED))

        call.transfer(target, status)

    def _gone(self, call: SipCall) -> None:
        self._calls.pop(call.serial, None)
        self._admitted.discard(call.serial)
        self._ports.release(call.tap, call.player)  # muted now, reused by a later call
        call.tap = call.player = None
        self._graveyard.append(call)  # freed after the callback returns, still on this thread

    def _check_media(self) -> None:
        limit = self.settings.rtp_timeout_s
        if limit <= 0:
            return
        now = time.monotonic()
        for call in list(self._calls.values()):
            if call.media_silence_s(now) >= limit:
                log.info("SIP call %s: no RTP for %d s, hanging up", call.offer.call_id, limit)
                call.hang_up(EndReason.RTP_TIMEOUT)

    def _shutdown(self) -> None:
        # Each step is its own method so that no local variable here keeps a pjsua2 object
        # alive past libDestroy (a pj.Call freed after the library aborts the process).
        self._closing = True
        self._send_refusals(float("inf"))
        self._hang_up_all()
        deadline = time.monotonic() + HANGUP_WAIT_S
        while self._calls and time.monotonic() < deadline:
            self._poll(20)
        if self._unregister_all():
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                self._poll(20)
        self._destroy()

    def _hang_up_all(self) -> None:
        for call in list(self._calls.values()):
            call.hang_up(EndReason.SHUTDOWN, code=0 if call.confirmed else 503)

    def _unregister_all(self) -> bool:
        registered = [a for a in self._accounts if isinstance(a, RegisteredAccount)]
        for account in registered:
            with contextlib.suppress(pj.Error):
                account.shutdown()
        return bool(registered)

    def _destroy(self) -> None:
        # Everything that wraps a pjsua2 object goes before the library does.
        self._forget_objects()
        gc.collect()
        if self._ep is not None:
            try:
                self._ep.libDestroy()
            except Exception:
                log.exception("libDestroy failed")
            self._ep = None
        self._writer = None
        gc.collect()
        log.info("SIP user agent stopped")

    def _forget_objects(self) -> None:
        for call in self._calls.values():
            call.tap = None
            call.player = None
        self._ports.clear()
        self._calls.clear()
        self._graveyard.clear()
        self._accounts.clear()


def _describe(exc: Exception, settings: SipSettings) -> str:
    detail = exc.info() if isinstance(exc, pj.Error) else str(exc)
    if "transportCreate" in detail or "Address already in use" in detail:
        return f"sip.port: cannot listen on {settings.host}:{settings.port}: {detail}"
    return detail
