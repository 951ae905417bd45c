"""The audio of a `play` action: an http(s) URL or a file under `[talkback] media_dir`, decoded
to 16-bit mono PCM at the file's own rate.

    fetcher = MediaFetcher(settings.talkback)      # once per app, inside the running loop
    media = await fetcher.load("https://example.com/hold.wav")   # or "greetings/welcome.wav"
    call.media.play(media.pcm, media.sample_rate)
    await fetcher.aclose()

Whatever goes wrong is a `MediaError` whose message starts with the source and says what is
wrong (a refused address or path, too large, too slow, the HTTP status, not audio); the
talk-back runner reports it as `action.error`.

A URL is downloaded whole, within `fetch_timeout_s` (connection, redirects and body
together) and `max_fetch_bytes` (checked against Content-Length first, then counted while
the body streams in), then decoded off the event loop. A path is resolved under `media_dir`
and must stay inside it once symlinks are followed.

Server-side request forgery: the fetcher has its own `ClientSession` (the webhook deliverer's
is shared and left alone), whose connector makes every socket through a factory that first
judges the very address it is about to connect to (`address_refusal`). DNS has already been
answered at that point, so a name that resolves, or is rebound, to a private address, an IP
literal and every hop of a redirect are judged the same way, with no separate lookup that
could disagree with the connection. Legacy numeric IPv4 spellings (`2130706433`, `0x7f.1`,
`127.1`) are refused before any connection: they are a way to hide an address from a reader.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import av
import numpy as np
import yarl
from aiohttp import hdrs

from app.audiofile import AudioFileError, iter_pcm16, probe
from app.settings import TalkbackSettings

IPAddress = IPv4Address | IPv6Address
AddressCheck = Callable[[IPAddress], str | None]

MAX_DURATION_S = 600.0  # decoded audio longer than this is refused: a small file can decode huge
MAX_RATE = 48_000  # files at higher rates come out resampled to this; no call carries more
MAX_REDIRECTS = 5
USER_AGENT = "Hearsay"
_CHUNK = 1 << 16
_NAT64 = ip_network("64:ff9b::/96")
_ERRNO = re.compile(r"\[Errno -?\d+\] ")


class MediaError(Exception):
    """The source cannot be played; the message starts with the source and says why."""


@dataclass(frozen=True, slots=True)
class Media:
    """Decoded audio for `CallMedia.play`: 16-bit little-endian mono PCM at `sample_rate`."""

    pcm: bytes
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / (2 * self.sample_rate)


def address_refusal(address: IPAddress) -> str | None:
    """Why `address` is no public unicast address ("a loopback address", ...), or None if it is.

    IPv6 forms that carry an IPv4 address (`::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
    `2002:aabb:ccdd::`) are judged by the IPv4 address inside as well.
    """
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address_refusal(address.ipv4_mapped)
        if address in _NAT64:
            return address_refusal(IPv4Address(int(address) & 0xFFFF_FFFF))
        if address.sixtofour is not None and (why := address_refusal(address.sixtofour)):
            return why
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private or (isinstance(address, IPv6Address) and address.is_site_local):
        return "a private address"
    if not address.is_global:
        return "not a public address"  # e.g. 100.64.0.0/10, carrier-grade NAT
    return None


def is_legacy_ipv4(host: str) -> bool:
    """True for numeric IPv4 spellings other than the dotted quad that `inet_aton` (and so
    some resolvers) still accept: `2130706433`, `0x7f000001`, `127.1`, `0177.0.0.1`."""
    try:
        ip_address(host)
        return False
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


class _AddressRefused(OSError):
    def __init__(self, address: str, why: str) -> None:
        super().__init__(errno.EACCES, f"{address} is {why}, refused")


def _guarded_socket(check: AddressCheck) -> Callable[[Any], socket.socket]:
    """A socket factory for `TCPConnector` that refuses to make a socket for an address `check`
    objects to. aiohttp calls it with the resolved address of each connection attempt."""

    def create(addr_info: Any) -> socket.socket:
        family, type_, proto, _canonname, sockaddr = addr_info
        host = str(sockaddr[0])
        try:
            address = ip_address(host)
        except ValueError:
            raise _AddressRefused(host, "not an IP address") from None
        why = check(address)
        if why is not None:
            raise _AddressRefused(host, why)
        return socket.socket(family, type_, proto)

    return create


def _allow_all(_address: IPAddress) -> None:
    return None


class MediaFetcher:
    """Loads `play` sources (see the module docstring); one per app, closed with `aclose()`.

    Make it inside the running loop (it opens an aiohttp session). `check_address` replaces
    the address rule (default: `address_refusal`, or none when `allow_private_urls` is set),
    e.g. to let a test treat one loopback address as public.
    """

    def __init__(
        self,
        settings: TalkbackSettings,
        *,
        check_address: AddressCheck | None = None,
        max_duration_s: float = MAX_DURATION_S,
    ) -> None:
        if check_address is None:
            check_address = _allow_all if settings.allow_private_urls else address_refusal
        self._settings = settings
        self._max_duration_s = max_duration_s
        # Its own session: the connector's socket factory is the SSRF guard, and no cookies,
        # proxies from the environment or compressed bodies (a zip bomb) are wanted here.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(socket_factory=_guarded_socket(check_address)),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            auto_decompress=False,
            trust_env=False,
        )

    async def __aenter__(self) -> MediaFetcher:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._session.close()

    async def load(self, source: str) -> Media:
        """The audio `source` names: an http(s) URL, or a path relative to `media_dir`."""
        shown = _short(source)
        try:
            scheme = urlsplit(source).scheme.lower()
        except ValueError as exc:
            raise MediaError(f"{shown}: not a valid URL ({exc})") from None
        if scheme in ("http", "https"):
            data = await self._download(source, shown)
            if not data:
                raise MediaError(f"{shown}: the body is empty")
            return await asyncio.to_thread(_decode_bytes, data, shown, self._max_duration_s)
        if scheme:
            raise MediaError(f"{shown}: unsupported scheme {scheme!r}; `play` takes an http(s) URL "
                             f"or a path under talkback.media_dir")
        return await asyncio.to_thread(self._decode_local, source, shown)

    async def _download(self, source: str, shown: str) -> bytes:
        try:
            url = yarl.URL(source)
        except ValueError as exc:
            raise MediaError(f"{shown}: not a valid URL ({exc})") from None
        host = url.raw_host
        if not host:
            raise MediaError(f"{shown}: the URL has no host")
        if is_legacy_ipv4(host):
            raise MediaError(f"{shown}: {host!r} is a numeric IPv4 form; write the address as a "
                             f"dotted quad (a.b.c.d) or use a host name")
        limit = self._settings.max_fetch_bytes
        timeout_s = self._settings.fetch_timeout_s
        try:
            # aiohttp's max_redirects counts the redirect answer it refuses to follow as well.
            async with asyncio.timeout(timeout_s), self._session.get(url, max_redirects=MAX_REDIRECTS + 1) as resp:
                if not 200 <= resp.status < 300:
                    raise MediaError(f"{shown}: the server answered {resp.status} {_short(resp.reason or '', 60)}")
                encoding = resp.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise MediaError(f"{shown}: the body is {encoding}-encoded; serve it uncompressed")
                if resp.content_length is not None and resp.content_length > limit:
                    raise MediaError(f"{shown}: Content-Length {resp.content_length} is over "
                                     f"talkback.max_fetch_bytes ({limit})")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > limit:
                        raise MediaError(f"{shown}: the body is over talkback.max_fetch_bytes ({limit})")
                return bytes(body)
        except TimeoutError:
            raise MediaError(f"{shown}: not downloaded within talkback.fetch_timeout_s ({timeout_s:g} s)") from None
        except aiohttp.ClientConnectorError as exc:
            detail = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
            host = f"[{exc.host}]" if ":" in exc.host else exc.host
            raise MediaError(f"{shown}: cannot connect to {host}:{exc.port}: {detail}") from None
        except aiohttp.TooManyRedirects:
            raise MediaError(f"{shown}: more than {MAX_REDIRECTS} redirects") from None
        except aiohttp.NonHttpUrlRedirectClientError as exc:
            raise MediaError(f"{shown}: redirected to {_short(str(exc))}, which is not an http(s) URL") from None
        except aiohttp.InvalidUrlRedirectClientError as exc:
            raise MediaError(f"{shown}: redirected to an invalid URL ({_short(str(exc))})") from None
        except aiohttp.ClientError as exc:
            raise MediaError(f"{shown}: download failed ({_short(str(exc) or type(exc).__name__)})") from None

    def _decode_local(self, source: str, shown: str) -> Media:
        """Runs in a worker thread: resolving touches the file system."""
        if not source or "\x00" in source:
            raise MediaError(f"{shown}: not a file name")
        relative = Path(source)
        if relative.is_absolute():
            raise MediaError(f"{shown}: an absolute path; `play` takes a path relative to talkback.media_dir")
        root = Path(self._settings.media_dir).resolve()
        path = (root / relative).resolve()
        # Checked after resolving, so `..` and symlinks that lead out are caught alike.
        if not path.is_relative_to(root):
            raise MediaError(f"{shown}: leads outside talkback.media_dir")
        if not path.exists():
            raise MediaError(f"{shown}: no such file in talkback.media_dir")
        if not path.is_file():
            raise MediaError(f"{shown}: not a regular file")
        return _decode(path, shown, self._max_duration_s)


def _decode_bytes(data: bytes, shown: str, max_duration_s: float) -> Media:
    # PyAV reads paths (`app.audiofile`), so the body goes through a temporary file.
    with tempfile.NamedTemporaryFile(prefix="hearsay-play-") as f:
        f.write(data)
        f.flush()
        return _decode(Path(f.name), shown, max_duration_s)


def _decode(path: Path, shown: str, max_duration_s: float) -> Media:
    """The file's first audio stream as mono 16-bit PCM at its rate (at most `MAX_RATE`)."""
    too_long = MediaError(f"{shown}: longer than {max_duration_s:g} s")
    try:
        if (probe(path).duration_s or 0.0) > max_duration_s:
            raise too_long  # as the container says; the count below holds when it lies
        rate = min(_sample_rate(path), MAX_RATE)
        most = int(max_duration_s * rate)
        blocks: list[np.ndarray] = []
        size = 0
        for block in iter_pcm16(path, rate):
            size += len(block)
            if size > most:
                raise too_long
            blocks.append(block)
    except AudioFileError as exc:
        # The message goes to the webhook: no paths of this machine, no FFmpeg error numbers.
        detail = str(exc).removeprefix(f"{path}: ").replace(f": '{path}'", "").replace(str(path), "the file")
        raise MediaError(f"{shown}: {_ERRNO.sub('', detail)}") from None
    return Media(np.concatenate(blocks).astype("<i2", copy=False).tobytes(), rate)


def _sample_rate(path: Path) -> int:
    """The rate of the first audio stream of a file `probe` has accepted."""
    try:
        with av.open(str(path)) as container:
            rate = container.streams.audio[0].sample_rate
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise AudioFileError(f"{path}: cannot read audio ({exc})") from None
    if not rate or rate <= 0:
        raise AudioFileError(f"{path}: the audio stream has no sample rate")
    return int(rate)


def _short(text: str, most: int = 160) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"
