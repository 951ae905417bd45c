"""How `[sip]` becomes processes: which workers run, what each binds, and whether Kamailio
fronts them. Pure functions, no pjsua2 and no I/O but finding free loopback ports.

    max_calls <= 4   one worker binds `[sip] host:port` itself (no proxy): the embedded default
    max_calls  > 4   ceil(max_calls / 4) workers on loopback UDP ports, each with its own slice
                     of the RTP range; Kamailio owns `[sip] host:port` and dispatches to them

A worker gets its `WorkerConfig` over the bridge as JSON when it connects (sip/bridge.py), so
a restarted worker binds the same ports and the proxy's dispatcher list stays valid.
"""

from __future__ import annotations

import dataclasses
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.settings import SipRegistration, SipSettings

# What one pjsua2 process carries: the pjsua2-python wheel is built with PJSUA_MAX_CALLS = 4.
CALLS_PER_WORKER = 4
LOOPBACK = "127.0.0.1"
# RTP and RTCP ports one call needs, and the slack pjsua2 wants while a closed pair is reused.
PORTS_PER_CALL = 4
WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything one SIP worker needs to run (sent to it as JSON).

    `sip` is what its endpoint binds and enforces (behind the proxy: a loopback UDP port, no
    `allow_from`, which the proxy enforces, and its share of `max_calls`); `media_host` is
    where its RTP binds and what its SDP carries; `proxied` says Kamailio is in front, so the
    caller's address comes in `X-Hearsay-Source` and refusals go out at once (the proxy limits
    floods); `outbound_proxy` and `contact` route its trunk registrations through the proxy
    with the public address as Contact; `nonce_key` makes digest nonces valid on every worker.
    """

    index: int
    sip: SipSettings
    media_host: str
    proxied: bool = False
    outbound_proxy: str = ""
    contact: str = ""
    nonce_key: str = ""
    log_level: str = "info"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WorkerConfig:
        sip = dict(raw["sip"])
        sip["registrations"] = [SipRegistration(**r) for r in sip.get("registrations", [])]
        return cls(**{**raw, "sip": SipSettings(**sip)})


@dataclass(frozen=True, slots=True)
class Topology:
    """The workers to run and, when there is more than one, the proxy's public side."""

    workers: tuple[WorkerConfig, ...]
    proxied: bool

    @property
    def worker_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple((w.sip.host, w.sip.port) for w in self.workers)


def worker_count(max_calls: int) -> int:
    return max(1, math.ceil(max_calls / CALLS_PER_WORKER))


def plan(settings: SipSettings, *, nonce_key: str, log_level: str = "info",
         worker_ports: Sequence[int] | None = None, public_host: str | None = None) -> Topology:
    """The processes `settings` asks for. `worker_ports` are the workers' loopback SIP ports
    (found free when not given); `public_host` is the address a registrar should call back
    (the `[sip] host`, or this machine's outward address when that is a wildcard).

    Raises ValueError when the RTP range cannot give each worker its calls' ports."""
    n = worker_count(settings.max_calls)
    if n == 1:
        worker = WorkerConfig(0, settings, settings.host, nonce_key=nonce_key, log_level=log_level)
        return Topology((worker,), proxied=False)
    slice_ = settings.rtp_port_count // n
    if slice_ < CALLS_PER_WORKER * PORTS_PER_CALL:
        raise ValueError(f"sip.rtp_port_count = {settings.rtp_port_count} leaves {slice_} ports to each of "
                         f"{n} SIP workers; give it at least {n * CALLS_PER_WORKER * PORTS_PER_CALL}")
    ports = list(worker_ports) if worker_ports is not None else free_udp_ports(n)
    proxy_host = LOOPBACK if settings.host in WILDCARDS else settings.host
    public = public_host or (outward_address() if settings.host in WILDCARDS else settings.host)
    workers = []
    for i in range(n):
        share = min(CALLS_PER_WORKER, settings.max_calls - i * CALLS_PER_WORKER)
        sip = dataclasses.replace(
            settings, host=LOOPBACK, port=ports[i], transports=["udp"], max_calls=share, allow_from=[],
            rtp_port_start=settings.rtp_port_start + i * slice_, rtp_port_count=slice_,
            registrations=settings.registrations if i == 0 else [])
        workers.append(WorkerConfig(
            i, sip, settings.host, proxied=True, outbound_proxy=f"sip:{proxy_host}:{settings.port};lr",
            contact=f"{public}:{settings.port}", nonce_key=nonce_key, log_level=log_level))
    return Topology(tuple(workers), proxied=True)


def free_udp_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """`n` UDP ports free on `host` right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def outward_address() -> str:
    """This machine's address on its default route (no packet is sent); loopback without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing table is consulted
            return str(s.getsockname()[0])
        except OSError:
            return LOOPBACK
