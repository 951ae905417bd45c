"""RTP as a SIP caller hears it, for the SIP benchmarks and tests: the packet parser, a test of
whether a PCMU packet carries sound, and `LoopbackTap`, which records the RTP to and from
ports on the loopback interface with the kernel's arrival times."""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from app.pipeline.decode import decode_pcm16
from app.pipeline.types import Encoding

SOUND = 16


def carries_sound(packet: RtpPacket) -> bool:
    """Whether a PCMU packet carries sound (peaks above `SOUND`), not the bridge's silence."""
    return bool(packet.payload) and int(np.abs(decode_pcm16(packet.payload, Encoding.MULAW)).max()) > SOUND


@dataclass(frozen=True, slots=True)
class RtpPacket:
    at: float  # time.monotonic() when it arrived
    seq: int
    timestamp: int
    payload_type: int
    payload: bytes


def parse_rtp(data: bytes, at: float) -> RtpPacket | None:
    """The RTP packet in a UDP payload, or None if it is not one."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    csrcs, extension = data[0] & 0x0F, data[0] & 0x10
    payload_type = data[1] & 0x7F
    seq, timestamp = struct.unpack_from("!HI", data, 2)
    start = 12 + 4 * csrcs
    if extension:
        if len(data) < start + 4:
            return None
        (words,) = struct.unpack_from("!H", data, start + 2)
        start += 4 + 4 * words
    end = len(data) - (data[-1] if data[0] & 0x20 else 0)  # padding
    return RtpPacket(at, seq, timestamp, payload_type, data[start:end])


_ETH_P_IP = 0x0800
_PACKET_HOST = 0  # the receiving side's copy (lo shows each packet leaving, then arriving)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class LoopbackTap:
    """The RTP on the loopback interface to and from the UDP ports it watches, each packet
    stamped with the kernel's arrival time (as `time.monotonic()`): an AF_PACKET socket on
    `lo`, read on its own thread. It hears a SIP caller that sends and receives on a socket
    the tap does not own (sipp's media socket), in both directions on one clock. Linux only;
    needs CAP_NET_RAW (as sipp's play_pcap_audio does): `PermissionError` otherwise.

        with LoopbackTap() as tap:
            tap.watch(port)
            ...
        tap.received(port)   # the PCMU packets sent to port, in arrival order
        tap.sent(port)       # those sent from it
    """

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_IP))
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._socket.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._socket.bind(("lo", _ETH_P_IP))
        self._socket.settimeout(0.1)
        self._ports: set[int] = set()
        self._packets: list[tuple[int, int, RtpPacket]] = []  # (source port, destination port, packet)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="loopback-tap", daemon=True)

    def __enter__(self) -> LoopbackTap:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(2)
        self._socket.close()

    def watch(self, port: int) -> None:
        """Keep the RTP sent to and from UDP `port` on 127.0.0.1 from now on."""
        with self._lock:
            self._ports.add(port)

    def received(self, port: int) -> list[RtpPacket]:
        """The PCMU packets (payload type 0) sent to `port` so far, in arrival order."""
        with self._lock:
            return [p for _, dst, p in self._packets if dst == port and p.payload_type == 0]

    def sent(self, port: int) -> list[RtpPacket]:
        """The PCMU packets sent from `port` so far, in arrival order."""
        with self._lock:
            return [p for src, _, p in self._packets if src == port and p.payload_type == 0]

    def _read(self) -> None:
        # The kernel stamps packets on CLOCK_REALTIME; convert once to the monotonic clock.
        offset = time.time() - time.monotonic()
        while not self._stop.is_set():
            try:
                data, ancillary, _, address = self._socket.recvmsg(65535, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] != _PACKET_HOST or len(data) < 28 or data[9] != socket.IPPROTO_UDP:
                continue
            header = (data[0] & 0x0F) * 4
            src, dst = struct.unpack_from("!HH", data, header)
            with self._lock:
                if src not in self._ports and dst not in self._ports:
                    continue
            packet = parse_rtp(data[header + 8:], _arrival(ancillary, offset))
            if packet is not None:
                with self._lock:
                    self._packets.append((src, dst, packet))


def _arrival(ancillary: list[tuple[int, int, bytes]], offset: float) -> float:
    """The kernel's timestamp of a packet (SCM_TIMESTAMPNS) on the monotonic clock."""
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
            sec, nsec = struct.unpack_from("@qq", value)
            return float(sec + nsec / 1e9 - offset)
    return time.monotonic()
