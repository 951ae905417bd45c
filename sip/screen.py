"""Screening an incoming INVITE before anything is answered: who may call, and whom.

Pure functions over the raw SIP message text, so they run on the SIP thread without touching
pjsua2 and are tested without a network. `Screen.check(offer)` returns the final answer for a
call that must be refused (403 outside `allow_from`, 401 with a digest challenge, 486 over
capacity) or None for a call to take. Which dialplan takes it is the service's question, not
the worker's (sip/agent.py answers 404 when none does).

Digest authentication (RFC 2617/7616, MD5, qop=auth) uses stateless nonces: `<t>.<hmac(t)>`
signed with a per-process key, valid for `NONCE_TTL_S`, so no table of nonces can be flooded.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

NONCE_TTL_S = 300

_REQUEST_LINE = re.compile(r"^[A-Z]+\s+(sips?|tel):([^\s;?>]*)", re.IGNORECASE)
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class Offer:
    """What an incoming INVITE asks for, as read from the message."""

    call_id: str
    from_: str
    to: str
    user: str  # the Request-URI user part ("100" in sip:100@host)
    source_ip: str
    message: str  # the whole message as received


@dataclass(frozen=True, slots=True)
class Verdict:
    """A final answer refusing a call: status code, reason phrase, extra headers."""

    code: int
    reason: str
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def request_user(message: str) -> str:
    """The user part of the Request-URI (unescaped); "" when it has none."""
    first = message.lstrip().split("\n", 1)[0]
    match = _REQUEST_LINE.match(first)
    if match is None:
        return ""
    scheme, target = match.group(1).lower(), match.group(2)
    if scheme == "tel":
        return unquote(target)
    return unquote(target.split("@", 1)[0]) if "@" in target else ""


def header(message: str, *names: str) -> str:
    """The value of the first header named one of `names` (case-insensitive), else ""."""
    wanted = {n.lower() for n in names}
    head = message.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    for line in head.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in wanted:
            return value.strip()
    return ""


def address_uri(value: str) -> str:
    """The URI of a From/To header value (`"Al" <sip:al@x>;tag=1` -> `sip:al@x`)."""
    if "<" in value:
        return value.split("<", 1)[1].split(">", 1)[0].strip()
    return value.split(";", 1)[0].strip()


def source_ip(address: str) -> str:
    """The host of a pjsua "ip:port" or "[v6]:port" source address."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


class DigestAuth:
    """Challenges and verifies digest credentials for inbound INVITEs."""

    def __init__(self, username: str, password: str, realm: str = "hearsay", key: bytes | None = None) -> None:
        self.username = username
        self.realm = realm
        self._ha1 = _md5(f"{username}:{realm}:{password}")
        # Shared by every worker of one service, so a nonce one issued is good at another.
        self._key = key or secrets.token_bytes(32)

    def challenge(self) -> Verdict:
        """A 401 carrying a fresh `WWW-Authenticate` challenge."""
        stamp = str(int(time.time()))
        nonce = f"{stamp}.{self._sign(stamp)}"
        value = f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'
        return Verdict(401, "Unauthorized", (("WWW-Authenticate", value),))

    def verify(self, method: str, authorization: str) -> bool:
        """Whether an `Authorization` header answers one of our challenges correctly."""
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() != "digest":
            return False
        params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                  for m in _PARAM.finditer(rest)}
        nonce = params.get("nonce", "")
        if params.get("username") != self.username or params.get("realm") != self.realm:
            return False
        if not self._nonce_fresh(nonce):
            return False
        ha2 = _md5(f"{method}:{params.get('uri', '')}")
        qop = params.get("qop")
        if qop:
            nc, cnonce = params.get("nc", ""), params.get("cnonce", "")
            expected = _md5(f"{self._ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
        else:
            expected = _md5(f"{self._ha1}:{nonce}:{ha2}")
        return hmac.compare_digest(expected, params.get("response", "").lower())

    def _sign(self, stamp: str) -> str:
        return hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def _nonce_fresh(self, nonce: str) -> bool:
        stamp, _, mac = nonce.partition(".")
        if not stamp.isdigit() or not hmac.compare_digest(mac, self._sign(stamp)):
            return False
        return 0 <= time.time() - int(stamp) <= NONCE_TTL_S


class Screen:
    """The rules an INVITE must pass, in order: source address, credentials, capacity."""

    def __init__(self, allow_from: Sequence[str], auth: DigestAuth | None,
                 max_calls: int) -> None:
        try:
            self._networks = [ipaddress.ip_network(c, strict=False) for c in allow_from]
        except ValueError as exc:
            raise ValueError(f"sip.allow_from: {exc}") from None
        self._auth = auth
        self.max_calls = max_calls

    def admits(self, ip: str) -> bool:
        """Whether `allow_from` lets this address call (an empty list lets anyone)."""
        if not self._networks:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._networks)

    def check(self, offer: Offer, active_calls: int) -> Verdict | None:
        """The refusal for a call to refuse, None for one to take."""
        if not self.admits(offer.source_ip):
            return Verdict(403, "Forbidden")
        if self._auth is not None:
            given = header(offer.message, "Authorization")
            if not given or not self._auth.verify("INVITE", given):
                return self._auth.challenge()
        if active_calls >= self.max_calls:
            return Verdict(486, "Busy Here")
        return None


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
