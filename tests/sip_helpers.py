"""Shared pieces for the SIP tests: free ports, SIP settings, clips as sipp streams them,
running sipp, and an RTP listener that hears what Hearsay plays into a call. (A caller that
talks and listens on sipp's own media socket is heard with app/bench/rtp.py's
`LoopbackTap` instead.)

Not a test module itself; used by test_sip_endpoint, test_sip_agent and test_talkback_sip.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import soundfile

from app.bench.common import SPEECH_DIR as SPEECH
from app.bench.rtp import RtpPacket, parse_rtp
from app.pipeline.decode import decode_pcm16, encode
from app.pipeline.resample import resample_whole
from app.pipeline.types import Encoding
from app.settings import Settings

SIPP_DIR = Path(__file__).resolve().parent / "sipp"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for UDP and TCP on 127.0.0.1 right now (high, ephemeral range)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def free_port_range(count: int) -> int:
    """The first of `count` consecutive ports that are free for UDP now."""
    while True:
        start = free_port()
        if start + count > 65000:
            continue
        sockets = []
        try:
            for p in range(start, start + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind(("127.0.0.1", p))
            return start
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


def enable_sip(settings: Settings, **sip: Any) -> Settings:
    """`settings` with the SIP user agent on, on 127.0.0.1 at a free port with free RTP ports
    (high, random: tests may run beside each other), plus `sip` overrides."""
    return dataclasses.replace(settings, sip=dataclasses.replace(
        settings.sip, enabled=True, host="127.0.0.1", port=free_port(),
        rtp_port_start=free_port_range(40), rtp_port_count=40, **sip))


def clip_ulaw(name: str, directory: Path, *, tail_s: float = 0.0) -> bytes:
    """Write `directory/clip.ulaw` (what sipp's rtp_stream plays: raw 8 kHz mu-law) from a
    speech clip, with `tail_s` of silence after it; returns the 8 kHz PCM it encodes."""
    samples, rate = soundfile.read(SPEECH / f"{name}.wav", dtype="float32")
    audio = np.concatenate([resample_whole(samples, rate, 8000), np.zeros(int(tail_s * 8000), np.float32)])
    return _write_ulaw(directory, audio)


def tone_ulaw(directory: Path, seconds: float, hz: float = 440.0) -> bytes:
    """Write a tone as `directory/clip.ulaw`; returns its 8 kHz PCM."""
    t = np.arange(int(seconds * 8000)) / 8000
    return _write_ulaw(directory, (8000 / 32768 * np.sin(2 * np.pi * hz * t)).astype(np.float32))


def _write_ulaw(directory: Path, audio: np.ndarray) -> bytes:
    """Write `directory/clip.ulaw`; returns the 8 kHz PCM a receiver decodes from it."""
    ulaw = encode(audio, Encoding.MULAW)
    (directory / "clip.ulaw").write_bytes(ulaw)
    return decode_pcm16(ulaw, Encoding.MULAW).astype("<i2").tobytes()


def similarity(received: bytes, sent: bytes, chunk_s: float = 0.2) -> float:
    """How faithfully `sent` is found in `received`: the median, over the clip's 200 ms
    chunks that carry sound, of each chunk's best normalised cross-correlation near where it
    belongs (1.0 = bit-exact). A frame the jitter buffer drops spoils only its own chunk."""
    rx = np.frombuffer(received, dtype="<i2").astype(np.float64)
    ref = np.frombuffer(sent, dtype="<i2").astype(np.float64)
    if len(rx) < len(ref) // 2 or not ref.any():
        return 0.0
    n = int(chunk_s * 8000)
    slack = 8000  # one second either side of the chunk's expected place
    padded = np.concatenate([np.zeros(slack), rx, np.zeros(slack + len(ref))])
    scores = []
    for start in range(0, len(ref) - n + 1, n):
        seg = ref[start:start + n]
        if np.sqrt(np.mean(seg**2)) < 100:  # near silence: nothing to match
            continue
        window = padded[start:start + len(rx) - len(ref) + 2 * slack + n]
        corr = np.correlate(window, seg, "valid")
        energy = np.sqrt(np.convolve(window**2, np.ones(n), "valid"))
        ncc = corr / (energy * np.linalg.norm(seg) + 1e-9)
        scores.append(float(ncc.max()))
    return float(np.median(scores)) if scores else 0.0


@dataclass(frozen=True, slots=True)
class SippResult:
    returncode: int
    output: str
    log: str  # what the scenario's <log> actions wrote


def sipp_args(scenario: str, port: int, user: str, *, pause_ms: int = 1000, calls: int = 1,
              rate: float = 10.0, extra: tuple[str, ...] = (), log_file: Path | None = None,
              media_port: int | None = None) -> list[str]:
    """sipp's command line; `media_port` is its media socket's (-mp: where rtp_stream sends
    from), a free one by default."""
    local = free_port()
    media = free_port_range(8) if media_port is None else media_port
    args = ["sipp", f"127.0.0.1:{port}", "-sf", str(SIPP_DIR / scenario), "-s", user,
            "-m", str(calls), "-l", str(calls), "-r", str(rate), "-d", str(pause_ms),
            "-i", "127.0.0.1", "-p", str(local), "-mp", str(media), "-nostdin",
            "-timeout", "90s", "-timeout_error", "-max_recv_loops", "1000"]
    if log_file is not None:
        args += ["-trace_logs", "-log_file", str(log_file)]
    return args + list(extra)


def run_sipp(scenario: str, port: int, user: str, cwd: Path, **kwargs: object) -> SippResult:
    """Run sipp to completion (blocking) with its working directory `cwd`."""
    log_file = cwd / f"sipp-{free_port()}.log"
    args = sipp_args(scenario, port, user, log_file=log_file, **kwargs)  # type: ignore[arg-type]
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    log = log_file.read_text() if log_file.exists() else ""
    return SippResult(done.returncode, done.stdout[-3000:] + done.stderr[-3000:], log)


async def run_sipp_async(scenario: str, port: int, user: str, cwd: Path, **kwargs: object) -> SippResult:
    """`run_sipp` without blocking the event loop."""
    log_file = cwd / f"sipp-{free_port()}.log"
    args = sipp_args(scenario, port, user, log_file=log_file, **kwargs)  # type: ignore[arg-type]
    proc = await asyncio.create_subprocess_exec(*args, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 150)
    log = log_file.read_text() if log_file.exists() else ""
    return SippResult(proc.returncode or 0, out.decode(errors="replace")[-6000:], log)


class RtpListener:
    """A UDP socket on 127.0.0.1 keeping every RTP packet sent to it, read on its own thread
    so arrival times do not depend on the event loop: the ear of a sipp caller whose SDP
    points here (`uac_listen.xml`, `-key rtp_port <port>`). The port above it swallows RTCP.

        with RtpListener() as ear:
            ...
        ear.pcm()     # the PCMU packets, decoded, in sequence order
    """

    def __init__(self) -> None:
        self.port = free_port_range(2)
        self.packets: list[RtpPacket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._rtp.bind(("127.0.0.1", self.port))
        self._rtcp.bind(("127.0.0.1", self.port + 1))
        self._rtp.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, name="rtp-listener", daemon=True)

    def __enter__(self) -> RtpListener:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(2)
        self._rtp.close()
        self._rtcp.close()

    def audio_packets(self) -> list[RtpPacket]:
        """The PCMU packets so far (payload type 0), in sequence order."""
        with self._lock:
            packets = [p for p in self.packets if p.payload_type == 0]
        return sorted(packets, key=lambda p: p.seq)  # one call's worth: no 16-bit wrap to fear

    def pcm(self, packets: list[RtpPacket] | None = None) -> bytes:
        """`packets` (default: every PCMU packet so far) decoded to 8 kHz s16le."""
        payload = b"".join(p.payload for p in (self.audio_packets() if packets is None else packets))
        return decode_pcm16(payload, Encoding.MULAW).astype("<i2").tobytes()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._rtp.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            packet = parse_rtp(data, time.monotonic())
            if packet is not None:
                with self._lock:
                    self.packets.append(packet)


KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"

REGISTRAR_CFG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=1
disable_tcp=yes
auto_aliases=no
listen=udp:127.0.0.1:{port}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "auth.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("registrar", "min_expires", 1)
request_route {{
	if (is_method("OPTIONS")) {{
		sl_send_reply("200", "OK");
		exit;
	}}
	if (!is_method("REGISTER")) {{
		sl_send_reply("405", "Method Not Allowed");
		exit;
	}}
	if (!is_present_hf("Authorization")) {{
		www_challenge("hearsay.test", "0");
		exit;
	}}
	xlog("L_INFO", "REGISTER from $si:$sp contact $ct\\n");
	save("location");
}}
"""


def _write_registrar(directory: Path) -> tuple[int, Path]:
    port = free_port()
    directory.mkdir()
    (directory / "registrar.cfg").write_text(REGISTRAR_CFG.format(port=port))
    return port, directory / "registrar.log"


@contextlib.asynccontextmanager
async def run_registrar(directory: Path) -> AsyncIterator[tuple[int, Path]]:
    """A Kamailio as a trunk's registrar (challenges, then saves any binding and logs each
    REGISTER's source and Contact): its UDP port on 127.0.0.1 and its log file."""
    port, log = _write_registrar(directory)
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            KAMAILIO, "-DD", "-E", "-f", str(directory / "registrar.cfg"), "-Y", str(directory), "-m", "32", "-M", "4",
            stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while await options(port, wait_s=0.2) != "SIP/2.0 200 OK":
            assert process.returncode is None and time.monotonic() < deadline, log.read_text()
        yield port, log
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)


async def options(port: int, *, source: str = "127.0.0.1", wait_s: float = 0.5) -> str | None:
    """Send one OPTIONS from `source` to 127.0.0.1:`port`; the reply's status line, or None."""
    return await asyncio.to_thread(_options_blocking, port, source, wait_s)


def _options_blocking(port: int, source: str, wait_s: float) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(wait_s)
        local = s.getsockname()[1]
        tag = secrets.token_hex(5)
        s.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {source}:{local};branch=z9hG4bK{tag}\r\n"
                  f"From: <sip:probe@{source}>;tag={tag}\r\nTo: <sip:127.0.0.1:{port}>\r\n"
                  f"Call-ID: {tag}@probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                  ).encode(), ("127.0.0.1", port))
        try:
            return s.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
        except TimeoutError:
            return None


