"""pjsua2 accounts: the local one that takes inbound calls, and optional trunk registrations.

Every account hands its incoming INVITEs to the same `IncomingHandler` (the endpoint), so a
call arriving through a registered trunk is screened and routed like any other. A
registration's state is kept as an immutable `RegistrationState` that other threads may read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pjsua2 as pj

from app.settings import SipRegistration, SipSettings

log = logging.getLogger("hearsay.sip")

IncomingHandler = Callable[[pj.Account, pj.OnIncomingCallParam], None]


@dataclass(frozen=True, slots=True)
class RegistrationState:
    """Where one trunk registration stands (for `/health`)."""

    registrar: str
    username: str
    state: str = "registering"  # registering | registered | failed | unregistered
    code: int = 0
    reason: str = ""
    expires_s: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"registrar": self.registrar, "username": self.username, "state": self.state,
                "code": self.code, "reason": self.reason, "expires_s": self.expires_s}


class InboundAccount(pj.Account):
    """An account whose incoming calls go to `on_incoming` (SIP thread)."""

    def __init__(self, on_incoming: IncomingHandler) -> None:
        super().__init__()
        self._on_incoming = on_incoming

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        try:
            self._on_incoming(self, prm)
        except Exception:
            log.exception("handling an incoming call failed")


class RegisteredAccount(InboundAccount):
    """A registration to a trunk or PBX; re-registers on its own and tracks its state."""

    def __init__(self, reg: SipRegistration, on_incoming: IncomingHandler) -> None:
        super().__init__(on_incoming)
        self.state = RegistrationState(reg.registrar, reg.username)

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        try:
            info = self.getInfo()
            if prm.code // 100 == 2 and info.regExpiresSec > 0:
                state = "registered"
            elif prm.code // 100 == 2:
                state = "unregistered"
            else:
                state = "failed"
            self.state = RegistrationState(self.state.registrar, self.state.username, state,
                                           int(prm.code), str(prm.reason), int(info.regExpiresSec))
            log.info("registration %s@%s: %s (%s %s)", self.state.username, self.state.registrar,
                     state, prm.code, prm.reason)
        except Exception:
            log.exception("onRegState failed")


def inbound_config(settings: SipSettings, media_host: str) -> pj.AccountConfig:
    """The local account: no registration, takes any call addressed to us."""
    cfg = pj.AccountConfig()
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    cfg.idUri = f"sip:hearsay@{shown}:{settings.port}"
    _media_defaults(cfg, settings, media_host)
    return cfg


def registration_config(reg: SipRegistration, settings: SipSettings, media_host: str,
                        outbound_proxy: str = "", contact: str = "") -> pj.AccountConfig:
    """An account that registers `reg.username` at `reg.registrar` with digest credentials;
    through `outbound_proxy` and with `contact` (host:port) as its Contact when given, so that
    a proxy in front of this worker is where the registrar sends calls."""
    registrar = reg.registrar if reg.registrar.startswith(("sip:", "sips:")) else f"sip:{reg.registrar}"
    domain = registrar.split(":", 1)[1].split(";", 1)[0]
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:{reg.username}@{domain}"
    cfg.regConfig.registrarUri = registrar
    cfg.regConfig.timeoutSec = reg.expiry_s
    cfg.regConfig.retryIntervalSec = 30
    cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", reg.realm or "*", reg.username, 0, reg.password))
    if outbound_proxy:
        cfg.sipConfig.proxies.append(outbound_proxy)
    if contact:
        cfg.sipConfig.contactForced = f"<sip:{reg.username}@{contact}>"
        cfg.natConfig.viaRewriteUse = False
        cfg.natConfig.contactRewriteUse = False
    _media_defaults(cfg, settings, media_host)
    return cfg


def _media_defaults(cfg: pj.AccountConfig, settings: SipSettings, media_host: str) -> None:
    # No SRTP, no ICE: a plain RTP endpoint inside the configured port range.
    cfg.natConfig.iceEnabled = False
    cfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_DISABLED
    cfg.mediaConfig.transportConfig.port = settings.rtp_port_start
    cfg.mediaConfig.transportConfig.portRange = settings.rtp_port_count
    if media_host not in ("0.0.0.0", "::", ""):
        cfg.mediaConfig.transportConfig.boundAddress = media_host
