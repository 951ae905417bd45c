"""Loading `play` audio (`app/talkback/fetch.py`) from a real aiohttp server on 127.0.0.1 (and a
second one on 127.0.0.2, for redirects) and from a real `media_dir`, decoding real speech clips
as WAV and MP3 (encoded here with PyAV's libmp3lame).

The servers count the requests that reach them, so "refused" means refused before connecting,
not an error after the request went out. Loopback is private, so tests that fetch use
`allow_private_urls`, or a `check_address` that treats 127.0.0.1 alone as public.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import re
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from speech import SPEECH_DIR

from app.settings import TalkbackSettings
from app.talkback.fetch import (
    MAX_DURATION_S,
    AddressCheck,
    IPAddress,
    Media,
    MediaError,
    MediaFetcher,
    address_refusal,
    is_legacy_ipv4,
)

CLIP = SPEECH_DIR / "cards-001.wav"  # 16 kHz mono 16-bit, about 1.1 s
SLOW_S = 30.0  # how long the slow route stalls: far beyond any timeout used here


def clip_pcm() -> bytes:
    samples, rate = soundfile.read(CLIP, dtype="int16")
    assert rate == 16000 and samples.ndim == 1
    return bytes(samples.astype("<i2").tobytes())


def write_mp3(path: Path, samples: np.ndarray, rate: int) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def only_first_loopback(address: IPAddress) -> str | None:
    """The address rule with 127.0.0.1 taken as public: a stand-in for a public server."""
    return None if address == IPv4Address("127.0.0.1") else address_refusal(address)


class MediaServer:
    """An aiohttp server serving the clip in the ways a media host might, counting requests."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.hits: list[str] = []
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/media/{name}", self._file)
        app.router.add_get("/chunked/{name}", self._chunked)
        app.router.add_get("/gzip/{name}", self._gzip)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/page.html", self._page)
        app.router.add_get("/empty", self._empty)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/loop", self._loop)
        self.app = app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.hits.append(request.path)
        return await handler(request)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        path = self.files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        """The file without Content-Length, in chunks of 4 KiB."""
        data = self.files[request.match_info["name"]].read_bytes()
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(data), 4096):
            await response.write(data[i:i + 4096])
        await response.write_eof()
        return response

    async def _gzip(self, request: web.Request) -> web.StreamResponse:
        data = gzip.compress(self.files[request.match_info["name"]].read_bytes())
        return web.Response(body=data, headers={"Content-Type": "audio/wav", "Content-Encoding": "gzip"})

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        """Headers and a first chunk at once, then nothing for SLOW_S."""
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(self.files["clip.wav"].read_bytes()[:1024])
        await asyncio.sleep(SLOW_S)
        return response

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html><body>Hold music is coming soon</body></html>", content_type="text/html")

    async def _empty(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"", content_type="audio/wav")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    async def _loop(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("served")
    mp3 = folder / "clip.mp3"
    samples, rate = soundfile.read(CLIP, dtype="int16")
    write_mp3(mp3, samples, rate)
    return {"clip.wav": CLIP, "clip.mp3": mp3}


@pytest.fixture
async def media_server(files: dict[str, Path]) -> AsyncIterator[tuple[MediaServer, TestServer]]:
    server = MediaServer(files)
    running = TestServer(server.app, host="127.0.0.1")
    async with running:
        yield server, running


@pytest.fixture
async def other_server(files: dict[str, Path]) -> AsyncIterator[tuple[MediaServer, TestServer]]:
    """The same routes on 127.0.0.2 (Linux routes all of 127.0.0.0/8 to loopback)."""
    server = MediaServer(files)
    running = TestServer(server.app, host="127.0.0.2")
    async with running:
        yield server, running


@pytest.fixture
def settings(tmp_path: Path) -> TalkbackSettings:
    media = tmp_path / "media"
    (media / "greetings").mkdir(parents=True)
    (media / "greetings" / "welcome.wav").write_bytes(CLIP.read_bytes())
    return TalkbackSettings(media_dir=str(media), allow_private_urls=False, fetch_timeout_s=5.0,
                            max_fetch_bytes=1_000_000)


async def load(settings: TalkbackSettings, source: str, *, check_address: AddressCheck | None = None,
               max_duration_s: float = MAX_DURATION_S) -> Media:
    async with MediaFetcher(settings, check_address=check_address, max_duration_s=max_duration_s) as fetcher:
        return await fetcher.load(source)


def allowing(settings: TalkbackSettings) -> TalkbackSettings:
    return dataclasses.replace(settings, allow_private_urls=True)


# -- the address rule ------------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e",
    "2002:808:808::1",  # 6to4 around a public IPv4 address
    "64:ff9b::808:808",  # NAT64 around a public IPv4 address
])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ip_address(address)) is None


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.1.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("fec0::1", "private"),  # deprecated site-local
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"), ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("100.64.0.1", "not a public"),  # carrier-grade NAT
    ("192.0.2.1", "private"),  # documentation
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 around 127.0.0.1
    ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 around 169.254.169.254
])
def test_private_addresses_refused(address: str, kind: str) -> None:
    why = address_refusal(ip_address(address))
    assert why is not None and kind in why


@pytest.mark.parametrize(("host", "legacy"), [
    ("2130706433", True), ("0x7f000001", True), ("127.1", True), ("0177.0.0.1", True),
    ("0x7f.0.0.1", True), ("10.1", True),
    ("127.0.0.1", False), ("::1", False), ("example.com", False), ("media.example.com", False),
    ("1e100.net", False),
])
def test_legacy_ipv4_spellings(host: str, legacy: bool) -> None:
    assert is_legacy_ipv4(host) is legacy


# -- URLs ------------------------------------------------------------------------------------


async def test_loopback_refused_by_default_before_connecting(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    server, running = media_server
    url = str(running.make_url("/media/clip.wav"))
    with pytest.raises(MediaError, match=r"cannot connect to 127\.0\.0\.1:\d+: 127\.0\.0\.1 is a loopback address"):
        await load(settings, url)
    assert server.hits == []


async def test_host_name_is_judged_by_the_address_it_resolves_to(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    server, running = media_server
    url = f"http://localhost:{running.port}/media/clip.wav"
    with pytest.raises(MediaError, match=r"cannot connect to localhost:\d+: .*(127\.0\.0\.1|::1) is a loopback"):
        await load(settings, url)
    assert server.hits == []


async def test_allowed_private_url_gives_the_wav_samples(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    server, running = media_server
    media = await load(allowing(settings), str(running.make_url("/media/clip.wav")))
    assert media.sample_rate == 16000
    assert media.pcm == clip_pcm()
    assert media.duration_s == pytest.approx(soundfile.info(CLIP).duration)
    assert server.hits == ["/media/clip.wav"]


async def test_public_stand_in_is_fetched_through_the_check(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    """The positive control for the redirect test: the same check lets 127.0.0.1 through."""
    _server, running = media_server
    media = await load(settings, str(running.make_url("/media/clip.wav")), check_address=only_first_loopback)
    assert media.pcm == clip_pcm()


async def test_chunked_body_within_the_limit_loads(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    media = await load(allowing(settings), str(running.make_url("/chunked/clip.wav")))
    assert media.pcm == clip_pcm()


async def test_mp3_over_http_decodes(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    media = await load(allowing(settings), str(running.make_url("/media/clip.mp3")))
    assert media.sample_rate == 16000
    # MP3 adds encoder delay and padding: a frame (1152 samples) or two at most.
    assert abs(len(media.pcm) // 2 - len(clip_pcm()) // 2) <= 2 * 1152
    assert np.abs(np.frombuffer(media.pcm, "<i2")).max() > 1000  # speech, not silence


async def test_content_length_over_the_limit_refused_up_front(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    size = CLIP.stat().st_size
    small = dataclasses.replace(allowing(settings), max_fetch_bytes=size - 1)
    with pytest.raises(MediaError, match=rf"Content-Length {size} is over talkback.max_fetch_bytes \({size - 1}\)"):
        await load(small, str(running.make_url("/media/clip.wav")))


async def test_chunked_body_over_the_limit_refused_while_streaming(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    small = dataclasses.replace(allowing(settings), max_fetch_bytes=10_000)
    with pytest.raises(MediaError, match=r"the body is over talkback.max_fetch_bytes \(10000\)"):
        await load(small, str(running.make_url("/chunked/clip.wav")))


@pytest.mark.realtime
async def test_slow_server_hits_the_timeout(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    hasty = dataclasses.replace(allowing(settings), fetch_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(MediaError, match=r"not downloaded within talkback.fetch_timeout_s \(0.5 s\)"):
        await load(hasty, str(running.make_url("/slow")))
    assert time.monotonic() - started < 3.0


async def test_http_error_status_refused(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    with pytest.raises(MediaError, match=r"/media/missing.wav: the server answered 404 Not Found"):
        await load(allowing(settings), str(running.make_url("/media/missing.wav")))


async def test_compressed_body_refused(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    with pytest.raises(MediaError, match=r"the body is gzip-encoded"):
        await load(allowing(settings), str(running.make_url("/gzip/clip.wav")))


async def test_web_page_is_not_audio(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    url = str(running.make_url("/page.html"))
    with pytest.raises(MediaError) as refused:
        await load(allowing(settings), url)
    # No temporary file names or FFmpeg error numbers reach the webhook.
    assert str(refused.value) == f"{url}: cannot read audio (Invalid data found when processing input)"


async def test_empty_body_refused(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    url = str(running.make_url("/empty"))
    with pytest.raises(MediaError, match=f"^{re.escape(url)}: the body is empty$"):
        await load(allowing(settings), url)


async def test_redirect_to_a_refused_address_is_refused(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer],
        other_server: tuple[MediaServer, TestServer]) -> None:
    first, running = media_server
    second, other = other_server
    target = str(other.make_url("/media/clip.wav"))
    url = str(running.make_url("/redirect").with_query(to=target))
    with pytest.raises(MediaError, match=r"cannot connect to 127\.0\.0\.2:\d+: 127\.0\.0\.2 is a loopback address"):
        await load(settings, url, check_address=only_first_loopback)
    assert first.hits == ["/redirect"]
    assert second.hits == []
    # The same redirect where both hops are allowed arrives, so it is the rule that refused.
    media = await load(allowing(settings), url)
    assert media.pcm == clip_pcm()
    assert second.hits == ["/media/clip.wav"]


async def test_redirect_loop_is_cut_short(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    server, running = media_server
    with pytest.raises(MediaError, match=r"/loop: more than 5 redirects"):
        await load(allowing(settings), str(running.make_url("/loop")))
    assert len(server.hits) == 6


async def test_redirect_to_another_scheme_is_refused(
        settings: TalkbackSettings, media_server: tuple[MediaServer, TestServer]) -> None:
    _server, running = media_server
    url = str(running.make_url("/redirect").with_query(to="file:///etc/passwd"))
    with pytest.raises(MediaError, match=r"redirected to file:///etc/passwd, which is not an http\(s\) URL"):
        await load(allowing(settings), url)


@pytest.mark.parametrize(("url", "named"), [
    ("http://127.0.0.1/hold.wav", "127.0.0.1 is a loopback"),
    ("http://127.0.0.1:8080/hold.wav", "127.0.0.1 is a loopback"),
    ("https://127.0.0.1/hold.wav", "127.0.0.1 is a loopback"),
    ("http://[::1]/hold.wav", "::1 is a loopback"),
    ("http://[::ffff:127.0.0.1]/hold.wav", "is a loopback"),
    ("http://0.0.0.0/hold.wav", "0.0.0.0 is an unspecified"),
    ("http://[::]/hold.wav", ":: is an unspecified"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
    ("http://[fe80::1]/hold.wav", "fe80::1 is a link-local"),
    ("http://10.0.0.1/hold.wav", "10.0.0.1 is a private"),
    ("http://192.168.0.1/hold.wav", "192.168.0.1 is a private"),
    ("http://[fd00::1]/hold.wav", "fd00::1 is a private"),
    ("http://224.0.0.1/hold.wav", "224.0.0.1 is a multicast"),
    ("http://2130706433/hold.wav", "'2130706433' is a numeric IPv4 form"),
    ("http://0x7f000001/hold.wav", "'0x7f000001' is a numeric IPv4 form"),
    ("http://127.1/hold.wav", "'127.1' is a numeric IPv4 form"),
    ("http://0177.0.0.1/hold.wav", "'0177.0.0.1' is a numeric IPv4 form"),
])
async def test_ip_literals_refused(settings: TalkbackSettings, url: str, named: str) -> None:
    with pytest.raises(MediaError, match=f"^{re.escape(url)}: .*{re.escape(named)}"):
        await load(settings, url)


async def test_numeric_ipv4_forms_refused_even_when_private_urls_are_allowed(settings: TalkbackSettings) -> None:
    with pytest.raises(MediaError, match="numeric IPv4 form"):
        await load(allowing(settings), "http://2130706433/hold.wav")


@pytest.mark.parametrize("source", [
    "file:///etc/passwd", "FILE:///etc/passwd", "ftp://example.com/hold.wav", "gopher://example.com/_x",
    "data:audio/wav;base64,UklGRg==", "javascript:alert(1)",
])
async def test_other_schemes_refused(settings: TalkbackSettings, source: str) -> None:
    with pytest.raises(MediaError, match="unsupported scheme"):
        await load(allowing(settings), source)


# -- files under media_dir -------------------------------------------------------------------


async def test_file_under_media_dir_loads(settings: TalkbackSettings) -> None:
    media = await load(settings, "greetings/welcome.wav")
    assert (media.sample_rate, media.pcm) == (16000, clip_pcm())


async def test_relative_media_dir_is_taken_from_the_working_directory(
        settings: TalkbackSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(settings.media_dir).parent)
    media = await load(dataclasses.replace(settings, media_dir="media"), "greetings/welcome.wav")
    assert media.pcm == clip_pcm()


async def test_symlink_inside_media_dir_is_followed(settings: TalkbackSettings) -> None:
    (Path(settings.media_dir) / "hello.wav").symlink_to("greetings/welcome.wav")
    media = await load(settings, "hello.wav")
    assert media.pcm == clip_pcm()


@pytest.mark.parametrize(("source", "problem"), [
    ("../secret.wav", "leads outside talkback.media_dir"),
    ("greetings/../../secret.wav", "leads outside talkback.media_dir"),
    ("outside.wav", "leads outside talkback.media_dir"),  # a symlink out of media_dir
    ("greetings/../outside.wav", "leads outside talkback.media_dir"),
    ("{media}/greetings/welcome.wav", "an absolute path"),
    ("/etc/passwd", "an absolute path"),
    ("//example.com/hold.wav", "an absolute path"),  # a scheme-relative URL is no path here
    ("greetings/missing.wav", "no such file in talkback.media_dir"),
    ("greetings", "not a regular file"),
    ("", "not a file name"),
    ("a\x00b.wav", "not a file name"),
])
async def test_paths_that_escape_or_miss_are_refused(settings: TalkbackSettings, source: str, problem: str) -> None:
    media = Path(settings.media_dir)
    secret = media.parent / "secret.wav"
    secret.write_bytes(CLIP.read_bytes())
    (media / "outside.wav").symlink_to(secret)
    source = source.format(media=media)
    with pytest.raises(MediaError, match=problem):
        await load(settings, source)


async def test_file_that_is_not_audio_refused(settings: TalkbackSettings) -> None:
    (Path(settings.media_dir) / "notes.wav").write_text("These are not the samples you are looking for.\n" * 50)
    with pytest.raises(MediaError) as refused:
        await load(settings, "notes.wav")
    assert str(refused.value) == "notes.wav: cannot read audio (Invalid data found when processing input)"


async def test_decoded_length_is_limited(settings: TalkbackSettings) -> None:
    with pytest.raises(MediaError, match=r"greetings/welcome.wav: longer than 0.5 s"):
        await load(settings, "greetings/welcome.wav", max_duration_s=0.5)


async def test_decoded_length_is_counted_when_the_container_does_not_say(settings: TalkbackSettings) -> None:
    """A FLAC whose STREAMINFO leaves the length unknown (0): the samples are counted instead."""
    samples, rate = soundfile.read(CLIP, dtype="int16")
    path = Path(settings.media_dir) / "unknown-length.flac"
    soundfile.write(path, samples, rate)
    data = bytearray(path.read_bytes())
    # STREAMINFO follows "fLaC" and its 4-byte block header; total samples are the low 36
    # bits of its bytes 10-17.
    assert data[:4] == b"fLaC"
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(data)
    assert (await load(settings, "unknown-length.flac")).pcm == clip_pcm()
    with pytest.raises(MediaError, match=r"unknown-length.flac: longer than 0.5 s"):
        await load(settings, "unknown-length.flac", max_duration_s=0.5)


@pytest.mark.parametrize(("rate", "expected"), [(44100, 44100), (8000, 8000), (96000, 48000)])
async def test_stereo_comes_out_mono_at_the_file_rate(settings: TalkbackSettings, rate: int, expected: int) -> None:
    seconds = 0.5
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    soundfile.write(Path(settings.media_dir) / "tone.wav", np.stack([tone, tone], axis=1), rate, subtype="PCM_16")
    media = await load(settings, "tone.wav")
    assert media.sample_rate == expected
    assert media.duration_s == pytest.approx(seconds, abs=0.01)
    samples = np.frombuffer(media.pcm, "<i2")
    assert np.abs(samples).max() == pytest.approx(0.3 * 32767, rel=0.1)  # the two channels mixed, not summed
