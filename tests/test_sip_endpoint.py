"""The pjsua2 user agent (sip/endpoint.py, sip/call.py) with real sipp callers.

Each test starts a real `SipEndpoint` on high random ports and a `Recorder` as the call's
event sink (the interface the agent implements), then checks what a caller would notice: the
audio heard is the audio sent, the audio played reaches the caller, the digits pressed
arrive, refusals carry the right code, and hostile traffic leaves the next call untouched.
"""

from __future__ import annotations

import dataclasses
import random
import socket
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.calls.info import EndReason
from app.dialplans import Dialplan
from app.settings import SipSettings
from sip.endpoint import SipEndpoint
from sip.screen import DigestAuth, Offer, Screen
from tests.sip_helpers import (
    RtpListener,
    clip_ulaw,
    free_port,
    free_port_range,
    run_sipp,
    similarity,
    tone_ulaw,
)

pytestmark = pytest.mark.sip  # real SIP peers: pjsua2 answering sipp / sipvicious

PLAN = Dialplan(name="test", match={"sip": ("100", "support*")})


class Recorder:
    """A call's event sink that keeps everything (called from pjsua2's threads)."""

    def __init__(self, offer: Offer, serial: int) -> None:
        self.offer = offer
        self.serial = serial
        self.pcm = bytearray()
        self.outbound: deque[bytes] = deque()  # frames to play into the call
        self.digits: list[str] = []
        self.reason: str | None = None
        self.stats: dict[str, float] | None = None
        self.done = threading.Event()
        self.transfer: list[tuple[int, str, bool]] = []  # what SipEndpoint.transfer reported

    def audio(self, pcm: bytes) -> None:
        self.pcm += pcm

    def dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def ended(self, reason: EndReason) -> None:
        self.reason = reason
        self.done.set()

    def rtp_stats(self, stats: dict[str, float]) -> None:
        self.stats = stats

    def next_frame(self) -> bytes | None:
        try:
            return self.outbound.popleft()
        except IndexError:
            return None

    def transferred(self, code: int, reason: str, final: bool) -> None:
        self.transfer.append((code, reason, final))


class UserAgent:
    """A running SipEndpoint whose admitted calls are routed as the service does (404 from
    `refuse` when PLAN does not take the number), recorded and answered unless told."""

    def __init__(self, settings: SipSettings, *, answer: bool = True, auth: DigestAuth | None = None,
                 transfer_to: str | None = None) -> None:
        self.settings = settings
        self.calls: list[Recorder] = []
        self._answer = answer
        self._transfer_to = transfer_to
        screen = Screen(settings.allow_from, auth, settings.max_calls)
        self.endpoint = SipEndpoint(settings, screen, self._admit)

    def _admit(self, offer: Offer, serial: int) -> Recorder:
        rec = Recorder(offer, serial)
        if not PLAN.matches("sip", offer.user):
            self.endpoint.refuse(serial, 404, "Not Found")
            return rec
        self.calls.append(rec)
        if self._answer:
            self.endpoint.answer(serial, 200)
        if self._transfer_to is not None:  # right after the 200, before the caller's ACK
            self.endpoint.transfer(serial, self._transfer_to, rec.transferred)
        return rec

    @property
    def port(self) -> int:
        return self.settings.port


def sip_settings(**changes: object) -> SipSettings:
    base = SipSettings(host="127.0.0.1", port=free_port(), rtp_port_start=free_port_range(40),
                       rtp_port_count=40, max_calls=4, rtp_timeout_s=30)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def start_ua() -> Iterator[type[UserAgent]]:
    started: list[UserAgent] = []

    def start(settings: SipSettings | None = None, **kwargs: object) -> UserAgent:
        ua = UserAgent(settings or sip_settings(), **kwargs)  # type: ignore[arg-type]
        ua.endpoint.start()
        started.append(ua)
        return ua

    yield start  # type: ignore[misc]
    for ua in started:
        ua.endpoint.stop()


def test_answers_and_hears_the_audio_sipp_streams(start_ua, tmp_path: Path) -> None:
    ua = start_ua()
    sent = clip_ulaw("timit-LDC93S1", tmp_path)
    result = run_sipp("uac_stream.xml", ua.port, "100", tmp_path, pause_ms=3600)
    assert result.returncode == 0, result.output
    (call,) = ua.calls
    assert call.done.wait(5)
    assert call.reason == "hangup"
    assert call.offer.user == "100"
    assert call.offer.from_.startswith("sip:sipp@127.0.0.1")
    assert similarity(bytes(call.pcm), sent) > 0.99
    # pjmedia's receive statistics came with the end: sipp's 20 ms packets over loopback, none lost.
    assert call.stats is not None
    assert call.stats["rtp_packets"] >= len(sent) // 320 - 5  # 20 ms of 8 kHz s16 each; a few may come before the media is up
    assert call.stats["rtp_lost"] == 0 and call.stats["rtp_loss_ratio"] == 0
    assert 0 <= call.stats["rtp_jitter_ms"] <= call.stats["rtp_jitter_max_ms"]


def test_plays_frames_into_the_call(start_ua, tmp_path: Path) -> None:
    ua = start_ua()
    t = np.arange(8000) / 8000  # one second of a 440 Hz tone at 8 kHz, 50 frames of 20 ms
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    frames = [tone[i:i + 320] for i in range(0, len(tone), 320)]
    outcome: list[int] = []
    with RtpListener() as ear:
        caller = threading.Thread(target=lambda: outcome.append(run_sipp(
            "uac_listen.xml", ua.port, "100", tmp_path, extra=("-key", "rtp_port", str(ear.port))).returncode))
        caller.start()
        for _ in range(200):
            if ua.calls:
                break
            threading.Event().wait(0.05)
        (call,) = ua.calls
        call.outbound.extend(frames)
        for _ in range(200):
            if not call.outbound:
                break
            threading.Event().wait(0.05)
        threading.Event().wait(0.2)
        ua.endpoint.hang_up(call.serial, EndReason.AGENT_HANGUP)
        caller.join(30)
    assert outcome == [0]  # sipp got our BYE
    assert call.done.wait(5)
    assert call.reason == "agent_hangup"
    # Each frame went out once, as one 20 ms PCMU packet; between them the bridge sends silence.
    loud = [p for p in ear.audio_packets() if np.frombuffer(ear.pcm([p]), "<i2").any()]
    assert len(loud) == len(frames)
    assert all(len(p.payload) == 160 for p in loud)
    assert similarity(ear.pcm(loud), tone) > 0.99


def test_dtmf_rfc2833_events_and_sip_info(start_ua, tmp_path: Path) -> None:
    ua = start_ua()
    result = run_sipp("uac_dtmf.xml", ua.port, "support-line", tmp_path)
    assert result.returncode == 0, result.output
    (call,) = ua.calls
    assert call.done.wait(5)
    assert call.digits == ["1", "5", "9", "*", "#", "0", "7"]


def test_unknown_user_gets_404(start_ua, tmp_path: Path) -> None:
    ua = start_ua()
    result = run_sipp("uac_refused.xml", ua.port, "999", tmp_path)
    assert result.returncode == 0, result.output
    assert "refused 404" in result.log
    assert ua.calls == []


def test_caller_outside_allow_from_gets_403(start_ua, tmp_path: Path) -> None:
    ua = start_ua(sip_settings(allow_from=["10.0.0.0/8", "192.168.1.0/24"]))
    result = run_sipp("uac_refused.xml", ua.port, "100", tmp_path)
    assert "refused 403" in result.log, result.output
    assert ua.calls == []


def test_caller_inside_allow_from_is_answered(start_ua, tmp_path: Path) -> None:
    ua = start_ua(sip_settings(allow_from=["127.0.0.0/8"]))
    tone_ulaw(tmp_path, 0.5)
    result = run_sipp("uac_stream.xml", ua.port, "100", tmp_path, pause_ms=700)
    assert result.returncode == 0, result.output
    assert len(ua.calls) == 1


def test_over_capacity_gets_486(start_ua, tmp_path: Path) -> None:
    ua = start_ua(sip_settings(max_calls=1))
    tone_ulaw(tmp_path, 4.0)
    busy_dir = tmp_path / "busy"
    busy_dir.mkdir()
    holder = threading.Thread(target=lambda: run_sipp("uac_stream.xml", ua.port, "100", tmp_path,
                                                      pause_ms=4000))
    holder.start()
    try:
        for _ in range(100):
            if ua.calls:
                break
            threading.Event().wait(0.05)
        result = run_sipp("uac_refused.xml", ua.port, "100", busy_dir)
        assert "refused 486" in result.log, result.output
    finally:
        holder.join()
    assert len(ua.calls) == 1


def test_cancel_before_answer_ends_the_call(start_ua, tmp_path: Path) -> None:
    ua = start_ua(answer=False)
    result = run_sipp("uac_cancel.xml", ua.port, "100", tmp_path)
    assert result.returncode == 0, result.output
    (call,) = ua.calls
    assert call.done.wait(5)
    assert call.reason == "cancel"


def test_transfer_asked_before_the_ack_refers_after_it_and_hangs_up(start_ua, tmp_path: Path) -> None:
    ua = start_ua(transfer_to="sip:200@pbx.example.com")
    result = run_sipp("uac_transfer.xml", ua.port, "100", tmp_path)
    assert result.returncode == 0, result.output  # REFER, 202, NOTIFY 200 answered, our BYE
    assert "refer-to <sip:200@pbx.example.com>" in " ".join(result.log.split())
    (call,) = ua.calls
    assert call.done.wait(5)
    assert call.transfer == [(100, "Accepted", False), (200, "OK", True)]
    assert call.reason == "transferred"


def test_a_callers_refer_is_declined(start_ua, tmp_path: Path) -> None:
    # pjsua2 would accept it (202) and place a call to its Refer-To on the same Call object.
    ua = start_ua()
    result = run_sipp("uac_refer.xml", ua.port, "100", tmp_path, pause_ms=0)
    assert result.returncode == 0, result.output
    assert "refer answered 603" in result.log
    (call,) = ua.calls
    assert call.done.wait(5)
    assert call.reason == "hangup"  # the caller's BYE; nothing else happened to the call


def test_rtp_timeout_hangs_up(start_ua, tmp_path: Path) -> None:
    ua = start_ua(sip_settings(rtp_timeout_s=2))
    tone_ulaw(tmp_path, 0.5)
    result = run_sipp("uac_until_bye.xml", ua.port, "100", tmp_path)
    assert result.returncode == 0, result.output
    (call,) = ua.calls
    assert call.done.wait(5)
    assert call.reason == "rtp_timeout"


def test_hold_and_resume_keep_the_call(start_ua, tmp_path: Path) -> None:
    ua = start_ua(sip_settings(rtp_timeout_s=2))
    sent = tone_ulaw(tmp_path, 1.0, hz=300)
    result = run_sipp("uac_hold.xml", ua.port, "100", tmp_path, pause_ms=3000)
    assert result.returncode == 0, result.output
    (call,) = ua.calls
    assert call.done.wait(5)
    assert call.reason == "hangup"  # not rtp_timeout: three silent seconds on hold are fine
    assert similarity(bytes(call.pcm), sent) > 0.99


def test_digest_auth_challenges_then_admits(start_ua, tmp_path: Path) -> None:
    ua = start_ua(auth=DigestAuth("pbx", "s3cret"))
    tone_ulaw(tmp_path, 0.5)
    result = run_sipp("uac_auth.xml", ua.port, "100", tmp_path, pause_ms=700,
                      extra=("-au", "pbx", "-ap", "s3cret"))
    assert result.returncode == 0, result.output
    assert len(ua.calls) == 1
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "clip.ulaw").write_bytes((tmp_path / "clip.ulaw").read_bytes())
    # Refused again, sipp would wait out its 90 s call timeout: 6 s is plenty (the 401 comes
    # after REFUSE_DELAY_S).
    result = run_sipp("uac_auth.xml", ua.port, "100", wrong,
                      extra=("-au", "pbx", "-ap", "guess", "-timeout", "6s"))
    assert result.returncode != 0
    assert len(ua.calls) == 1


def test_shutdown_hangs_up_a_call_in_progress(tmp_path: Path) -> None:
    ua = UserAgent(sip_settings())
    ua.endpoint.start()
    tone_ulaw(tmp_path, 20.0)
    outcome: list[int] = []
    caller = threading.Thread(target=lambda: outcome.append(
        run_sipp("uac_until_bye.xml", ua.port, "100", tmp_path).returncode))
    caller.start()
    for _ in range(200):
        if ua.calls and len(ua.calls[0].pcm) > 8000:
            break
        threading.Event().wait(0.05)
    ua.endpoint.stop()
    caller.join(30)
    assert outcome == [0]  # sipp got our BYE
    (call,) = ua.calls
    assert call.reason == "shutdown"


def test_garbage_and_scans_leave_the_next_call_working(start_ua, tmp_path: Path) -> None:
    ua = start_ua()
    rng = random.Random(5)
    garbage = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400))) for _ in range(200)]
    garbage += [b"INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: \r\n\r\n", b"\r\n\r\n", b"SIP/2.0 200\r\n",
                b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999\r\n\r\nabc", b"\x00" * 65000]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for datagram in garbage:
            s.sendto(datagram, ("127.0.0.1", ua.port))
    with socket.create_connection(("127.0.0.1", ua.port)) as tcp:
        tcp.sendall(b"\xff" * 5000 + b"INVITE garbage\r\n\r\n")
    target = f"127.0.0.1:{ua.port}"
    subprocess.run(["svmap", "-p", str(ua.port), "127.0.0.1"], capture_output=True, timeout=60, check=False)
    subprocess.run(["svwar", "-e", "100-140", "-m", "INVITE", target], capture_output=True, timeout=120,
                   check=False)
    subprocess.run(["svwar", "-e", "100-110", target], capture_output=True, timeout=120, check=False)
    sent = clip_ulaw("cards-005", tmp_path)
    result = run_sipp("uac_stream.xml", ua.port, "100", tmp_path, pause_ms=3800)
    assert result.returncode == 0, result.output
    call = ua.calls[-1]
    assert call.done.wait(5)
    assert similarity(bytes(call.pcm), sent) > 0.99


def test_invite_flood_does_not_disturb_a_call_in_progress(start_ua, tmp_path: Path) -> None:
    ua = start_ua(sip_settings(max_calls=2))
    sent = clip_ulaw("cards-005", tmp_path)
    holder_result: list[int] = []
    holder = threading.Thread(target=lambda: holder_result.append(
        run_sipp("uac_stream.xml", ua.port, "100", tmp_path, pause_ms=4000).returncode))
    holder.start()
    for _ in range(200):  # the call is up and talking before the flood starts
        if ua.calls and len(ua.calls[0].pcm) > 3200:
            break
        threading.Event().wait(0.05)
    flood_dir = tmp_path / "flood"
    flood_dir.mkdir()
    run_sipp("uac_refused.xml", ua.port, "nobody", flood_dir, calls=300, rate=200)
    holder.join(60)
    assert holder_result == [0]
    assert similarity(bytes(ua.calls[0].pcm), sent) > 0.99
