"""One SIP call on the pjsua2 side: answering, media in and out, DTMF, and how it ended.

Everything here runs on the SIP thread (pjsua2 callbacks and the endpoint's jobs), except
`FrameTap.onFrameReceived` and `FramePlayer.onFrameRequested`, which run on pjsua2's media
clock thread. Nothing here touches asyncio: what a call hears and does goes to its
`CallEvents`, whose methods are thread-safe hand-overs (the agent implements them with
`loop.call_soon_threadsafe`), and what it says comes from `CallEvents.next_frame`, a
thread-safe queue (sip/media.py).

A callback that raises would unwind through pjsua2's C++ and abort the process, so every
callback body catches and logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import pjsua2 as pj

from app.calls.info import EndReason
from sip.screen import Offer
from sip.types import SAMPLE_RATE, TransferReport
from sip.vectors import vector_reader

log = logging.getLogger("hearsay.sip")

# The tap and the player carry 16-bit mono PCM at SAMPLE_RATE in frames of this length
# (320 bytes), the conference bridge's clock.
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2


class CallEvents(Protocol):
    """Where a call's audio, digits and end go, and where what it plays comes from. Called
    from pjsua2's threads: must not block."""

    def audio(self, pcm: bytes) -> None: ...

    def dtmf(self, digit: str) -> None: ...

    def ended(self, reason: EndReason) -> None: ...

    def rtp_stats(self, stats: dict[str, float]) -> None:
        """The call's RTP receive statistics (`rtp_stats()` below), once, just before `ended`."""
        ...

    def next_frame(self) -> bytes | None:
        """The next 20 ms frame to play into the call (FRAME_BYTES of s16le), or None."""
        ...


class FrameTap(pj.AudioMediaPort):
    """A conference-bridge sink that receives a call's audio as 8 kHz s16le 20 ms frames and
    hands them to `events` (None: dropped). Reused from call to call (see `MediaPorts`)."""

    def __init__(self, events: CallEvents | None = None) -> None:
        super().__init__()
        self.events = events
        self.frames = 0
        self._read = vector_reader()

    def open(self, name: str) -> None:
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, SAMPLE_RATE, 1, FRAME_MS * 1000, 16)
        self.createPort(name, fmt)

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        try:
            events = self.events
            if events is not None and frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
                self.frames += 1
                events.audio(self._read(frame.buf))
        except Exception:
            log.exception("the media tap failed to hand over a frame")


class FramePlayer(pj.AudioMediaPort):
    """A conference-bridge source that plays a call's outbound audio: every 20 ms the bridge
    asks for a frame and gets `next_frame()` (8 kHz s16le, FRAME_BYTES), or no frame when
    there is nothing to say (the caller then hears silence). Reused from call to call."""

    def __init__(self, next_frame: Callable[[], bytes | None] | None = None) -> None:
        super().__init__()
        self.next_frame = next_frame
        self.frames = 0

    def open(self, name: str) -> None:
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, SAMPLE_RATE, 1, FRAME_MS * 1000, 16)
        self.createPort(name, fmt)

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        try:
            source = self.next_frame
            pcm = source() if source is not None else None
            if pcm is None:
                frame.type = pj.PJMEDIA_FRAME_TYPE_NONE
                return
            if len(pcm) != FRAME_BYTES:  # pjsua2 copies at most the size it asked for
                pcm = pcm[:FRAME_BYTES].ljust(FRAME_BYTES, b"\0")
            frame.buf = pj.ByteVector(pcm)
            frame.size = FRAME_BYTES
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            self.frames += 1
        except Exception:
            log.exception("the media player failed to take a frame")


class MediaPorts:
    """The endpoint's tap/player pairs, reused from call to call (SIP thread only).

    pjsua2 2.15's conference bridge removes ports asynchronously, on its clock thread, while
    an `AudioMediaPort`'s destructor releases the port's memory at once; destroying one while
    calls run risks a use-after-free (pjproject#4200) and took the process down twice in our
    test runs. So a pair is made once, handed to each new call, taken back (and muted) when
    the call is gone, and never destroyed (see `clear`).
    """

    def __init__(self) -> None:
        self._free: list[tuple[FrameTap, FramePlayer]] = []
        self._all: list[tuple[FrameTap, FramePlayer]] = []

    def acquire(self, events: CallEvents) -> tuple[FrameTap, FramePlayer]:
        if self._free:
            tap, player = self._free.pop()
        else:
            n = len(self._all)
            tap, player = FrameTap(), FramePlayer()
            tap.open(f"tap-{n}")
            player.open(f"player-{n}")
            self._all.append((tap, player))
        tap.events, player.next_frame = events, events.next_frame
        return tap, player

    def release(self, tap: FrameTap | None, player: FramePlayer | None) -> None:
        if tap is None or player is None:
            return
        tap.events, player.next_frame = None, None
        self._free.append((tap, player))

    def clear(self) -> None:
        """Forget every pair at shutdown without destroying them: even then the bridge's clock
        runs until `libDestroy`, so a destructor would race it as mid-run (a test run that
        started endpoints one after another segfaulted in the next `libCreate`). They are
        handed to C++ (`__disown__`), which never frees them: a few hundred bytes per pair,
        once per endpoint, and an endpoint lives as long as its worker process."""
        for tap, player in self._all:
            tap.events, player.next_frame = None, None
            tap.__disown__()
            player.__disown__()
        self._free.clear()
        self._all.clear()


class SipCall(pj.Call):
    """An incoming call: answered or refused by the agent, its audio forked to a `FrameTap`
    and a `FramePlayer` transmitting into it.

    `on_gone(self)` runs (on the SIP thread) once the call is disconnected; the endpoint then
    drops its references, so the pjsua2 objects are destroyed on the SIP thread.
    """

    def __init__(self, account: pj.Account, call_id: int, serial: int, offer: Offer,
                 on_gone: Callable[[SipCall], None], ports: MediaPorts) -> None:
        super().__init__(account, call_id)
        self.serial = serial
        self.offer = offer
        self.events: CallEvents | None = None
        self.tap: FrameTap | None = None
        self.player: FramePlayer | None = None
        self._ports = ports
        self.confirmed = False
        self.gone = False
        self._on_gone = on_gone
        self._end_reason: EndReason | None = None
        self._slot = -1
        self._audio_index = -1
        self._held = False
        self._rx_packets = -1
        self._stats: dict[str, float] | None = None  # the last RTP statistics taken
        self._rx_changed_at = time.monotonic()
        self._on_transfer: TransferReport | None = None
        self._refer_when_confirmed: str | None = None

    # -- actions (SIP thread) ---------------------------------------------------------------

    def respond(self, code: int, reason: str = "", headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a provisional or final answer to the INVITE (200 answers with our SDP)."""
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        if reason:
            prm.reason = reason
        for name, value in headers:
            hdr = pj.SipHeader()
            hdr.hName = name
            hdr.hValue = value
            prm.txOption.headers.append(hdr)
        if code >= 300 and self._end_reason is None:
            self._end_reason = EndReason.REJECTED
        self.answer(prm)

    def hang_up(self, reason: EndReason, code: int = 0) -> None:
        """End the call from our side (BYE, or `code` for one not yet answered)."""
        if self.gone:
            return
        if self._end_reason is None:
            self._end_reason = reason
        prm = pj.CallOpParam(True)
        if code:
            prm.statusCode = code
        try:
            self.rtp_stats()  # the last figures, while the stream is there
            self.hangup(prm)
        except pj.Error as exc:
            log.debug("hangup of %s: %s", self.offer.call_id, exc.info())

    def transfer(self, target: str, report: TransferReport) -> None:
        """Send a REFER asking the caller to call `target` (a SIP URI the caller of this method
        has checked); `report(code, reason, final)` gets its progress on this thread (see
        `TransferReport`). On a call answered but not yet confirmed (no ACK yet) the REFER
        waits for the ACK. Never raises: a REFER that cannot be sent is reported as (0, why,
        True), and so is the call ending while one is under way."""
        if self.gone:
            report(0, "the call is over", True)
            return
        self._on_transfer = report
        if self.confirmed:
            self._refer(target)
        else:
            self._refer_when_confirmed = target

    def media_silence_s(self, now: float) -> float:
        """Seconds since the last RTP packet arrived; 0 while on hold or before media."""
        if not self.confirmed or self._held or self._audio_index < 0 or self.gone:
            self._rx_changed_at = now
            return 0.0
        try:
            packets = self.getStreamStat(self._audio_index).rtcp.rxStat.pkt
        except pj.Error:
            return 0.0
        if packets != self._rx_packets:
            self._rx_packets = packets
            self._rx_changed_at = now
        return now - self._rx_changed_at

    def rtp_stats(self) -> dict[str, float] | None:
        """What pjmedia measured of the RTP it received: packets, lost packets (sequence
        gaps), the loss ratio and the interarrival jitter (RFC 3550, mean and max, ms). Taken
        when either side sends BYE (the stream is gone by the time the call is disconnected);
        the last figures taken once the call is over, None if there never was a stream."""
        if self._audio_index >= 0 and not self.gone:
            try:
                rx = self.getStreamStat(self._audio_index).rtcp.rxStat
            except pj.Error:
                return self._stats
            lost = max(0, int(rx.loss))
            expected = int(rx.pkt) + lost
            self._stats = {
                "rtp_packets": int(rx.pkt), "rtp_lost": lost,
                "rtp_loss_ratio": round(lost / expected, 5) if expected else 0.0,
                "rtp_jitter_ms": round(rx.jitterUsec.mean / 1000, 2) if rx.jitterUsec.n else 0.0,
                "rtp_jitter_max_ms": round(rx.jitterUsec.max / 1000, 2) if rx.jitterUsec.n else 0.0,
            }
        return self._stats

    # -- pjsua2 callbacks (SIP thread) ------------------------------------------------------

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        # A BYE from the caller: the stream is still there (it is gone by DISCONNECTED).
        try:
            tsx = prm.e.body.tsxState.tsx
            if tsx.method == "BYE" and tsx.role == pj.PJSIP_ROLE_UAS:
                self.rtp_stats()
        except Exception:
            log.exception("reading the RTP statistics failed")

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        try:
            info = self.getInfo()
            if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
                self.confirmed = True
                self._rx_changed_at = time.monotonic()
                if self._refer_when_confirmed is not None:
                    target, self._refer_when_confirmed = self._refer_when_confirmed, None
                    self._refer(target)
            elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.gone:
                self.gone = True
                reason = self._end_reason or (EndReason.HANGUP if self.confirmed else EndReason.CANCEL)
                log.info("SIP call %s ended: %s (%s %s)", self.offer.call_id, reason.value,
                         info.lastStatusCode, info.lastReason)
                self._transfer_over(0, "the call ended before the transfer completed")
                if self.events is not None:
                    if self._stats is not None:  # taken at the BYE (the stream is gone by now)
                        self.events.rtp_stats(self._stats)
                    self.events.ended(reason)
                self._on_gone(self)
        except Exception:
            log.exception("onCallState failed")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        try:
            info = self.getInfo()
            for media in info.media:
                if media.type != pj.PJMEDIA_TYPE_AUDIO:
                    continue
                self._audio_index = media.index
                self._held = media.status in (pj.PJSUA_CALL_MEDIA_REMOTE_HOLD, pj.PJSUA_CALL_MEDIA_NONE)
                if media.status == pj.PJSUA_CALL_MEDIA_ACTIVE and media.audioConfSlot != self._slot:
                    self._connect_media(media.index, media.audioConfSlot)
                break
        except Exception:
            log.exception("onCallMediaState failed")

    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:
        try:
            report = self._on_transfer
            if prm.finalNotify:
                self._on_transfer = None
            if report is not None:
                report(prm.statusCode, prm.reason, prm.finalNotify)
        except Exception:
            log.exception("onCallTransferStatus failed")

    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:
        # A REFER from the caller: pjsua2 would accept it and place a call to wherever it
        # points, on this same Call object. Hearsay places no calls: refuse it.
        try:
            prm.statusCode = 603
            log.info("SIP call %s: refused the caller's REFER to %s", self.offer.call_id, prm.dstUri)
        except Exception:
            log.exception("onCallTransferRequest failed")

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        try:
            if self.events is not None and prm.digit:
                self.events.dtmf(prm.digit.upper())
        except Exception:
            log.exception("onDtmfDigit failed")

    # -- internals --------------------------------------------------------------------------

    def _refer(self, target: str) -> None:
        try:
            # In angle brackets, so URI parameters stay the URI's, not the Refer-To header's.
            self.xfer(f"<{target}>", pj.CallOpParam(True))
        except pj.Error as exc:
            log.warning("SIP call %s: REFER to %s not sent: %s", self.offer.call_id, target, exc.info())
            self._transfer_over(0, f"the REFER could not be sent: {exc.reason}")

    def _transfer_over(self, code: int, reason: str) -> None:
        report, self._on_transfer = self._on_transfer, None
        self._refer_when_confirmed = None
        if report is not None:
            report(code, reason, True)

    def _connect_media(self, index: int, slot: int) -> None:
        # Called again with the new slot when a re-INVITE recreates the stream (hold/resume).
        if self.events is None:
            return
        if self.tap is None or self.player is None:
            self.tap, self.player = self._ports.acquire(self.events)
        audio = self.getAudioMedia(index)
        audio.startTransmit(self.tap)
        self.player.startTransmit(audio)
        self._slot = slot
        self._rx_changed_at = time.monotonic()
