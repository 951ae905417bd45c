"""Kamailio in front of the SIP workers (sip/proxy.py), with real Kamailio and real sipp.

sipp UAS processes on loopback ports stand in for the pjsua2 workers (`uas_answer.xml`
answers; `uas_busy.xml` and `uas_unavailable.xml` refuse with 486 and 503; all of them answer
the proxy's OPTIONS pings) and sipp UACs call through the proxy. A second Kamailio plays a trunk's registrar. Several
loopback addresses (127.0.0.1, .2, .3) give the callers distinct source IPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sip_helpers import SIPP_DIR, SippResult, free_port, free_port_range, options, run_registrar

import sip.proxy_config
from sip.errors import SipStartError
from sip.proxy import KamailioProxy, ProxyStartError, kamailio_binary, missing_kamailio
from sip.proxy_config import ProxyPlan

pytestmark = pytest.mark.sip  # real SIP peers: Kamailio between sipp callers and sipp workers

REPO = Path(__file__).resolve().parents[1]


# -- stand-in workers, callers and probes -------------------------------------------------------


class Uas:
    """A sipp UAS on 127.0.0.1:`port` playing a SIP worker (`scenario` from tests/sipp, `keys`
    as sipp `-key`s). `log()` is what its scenario logged, `messages()` every message it
    sent and received."""

    def __init__(self, directory: Path, scenario: str, keys: dict[str, str], port: int) -> None:
        self.port = port
        self.scenario = scenario
        self._dir = directory
        self._keys = keys
        self._log = directory / f"uas-{port}.log"
        self._messages = directory / f"uas-{port}.msg"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def start(self) -> None:
        keys = [arg for key, value in self._keys.items() for arg in ("-key", key, value)]
        self._process = await asyncio.create_subprocess_exec(
            "sipp", "-sf", str(SIPP_DIR / self.scenario), "-i", "127.0.0.1", "-p", str(self.port),
            "-mp", str(free_port_range(8)), "-nostdin", "-trace_logs", "-log_file", str(self._log),
            "-trace_msg", "-message_file", str(self._messages), *keys,
            cwd=self._dir, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        # A deadline, not a wait: sipp binds within milliseconds, but a CI machine busy with
        # other tests once took more than 3 s to start it.
        await until(lambda: _udp_taken(self.port), 15.0, f"sipp UAS on {self.port} did not start")

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    def log(self) -> str:
        return self._log.read_text() if self._log.exists() else ""

    def messages(self) -> str:
        return self._messages.read_text() if self._messages.exists() else ""

    def count(self, word: str) -> int:
        return len(re.findall(rf"^{word} ", self.log(), re.MULTILINE))


StartUas = Callable[..., Awaitable[Uas]]
StartProxy = Callable[..., Awaitable[KamailioProxy]]


@pytest.fixture
async def start_uas(tmp_path: Path) -> AsyncIterator[StartUas]:
    """`await start_uas("uas_busy.xml")`: a running stand-in worker (default: one that answers)."""
    started: list[Uas] = []

    async def start(scenario: str = "uas_answer.xml", port: int | None = None, **keys: str) -> Uas:
        uas = Uas(tmp_path, scenario, keys, port or free_port())
        started.append(uas)
        await uas.start()
        return uas

    yield start
    for uas in started:
        await uas.stop()


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    """`await start_proxy(workers, **plan)`: Kamailio on 127.0.0.1 at a free port, in front of
    `workers` ((address, port) pairs or Uas); stopped after the test."""
    started: list[KamailioProxy] = []

    async def start(workers: list[Uas | tuple[str, int]], **plan: object) -> KamailioProxy:
        addresses = tuple(w.address if isinstance(w, Uas) else w for w in workers)
        settings: dict[str, object] = {"host": "127.0.0.1", "port": free_port(), "transports": ("udp", "tcp"),
                                       "allow_from": (), "workers": addresses, **plan}
        proxy = KamailioProxy(ProxyPlan(**settings), tmp_path / f"proxy-{len(started)}")  # type: ignore[arg-type]
        started.append(proxy)
        await proxy.start()
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


async def call(scenario: str, proxy: KamailioProxy, directory: Path, *, calls: int = 1, pause_ms: int = 300,
               source: str = "127.0.0.1", transport: str = "u1", timeout_s: int = 15,
               extra: tuple[str, ...] = ()) -> SippResult:
    """Run a sipp UAC (`scenario`) from `source` to the proxy until it is done."""
    log = directory / f"uac-{secrets.token_hex(4)}.log"
    args = ["sipp", f"127.0.0.1:{proxy.plan.port}", "-sf", str(SIPP_DIR / scenario), "-s", "100",
            "-m", str(calls), "-l", str(calls), "-r", "50", "-d", str(pause_ms), "-t", transport,
            "-i", source, "-p", str(free_port()), "-mp", str(free_port_range(8)), "-nostdin",
            "-timeout", f"{timeout_s}s", "-timeout_error", "-trace_logs", "-log_file", str(log), *extra]
    process = await asyncio.create_subprocess_exec(*args, cwd=directory, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout_s + 15)
    return SippResult(process.returncode or 0, out.decode(errors="replace")[-4000:],
                      log.read_text() if log.exists() else "")


def _udp_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


async def eventually(get: Callable[[], object], expected: object, within_s: float = 3.0) -> None:
    """Assert that `get()` comes to equal `expected` (a sipp log line lands a moment after the
    message it logs went out)."""
    with contextlib.suppress(AssertionError):
        await until(lambda: get() == expected, within_s, "")
    assert get() == expected


async def until(check: Callable[[], object], within_s: float, message: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.05)


def lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(word)]


# -- calls through the proxy ------------------------------------------------------------------


async def test_calls_spread_over_the_workers_and_end_through_the_proxy(start_uas, start_proxy, tmp_path: Path) -> None:
    a, b = await start_uas(), await start_uas()
    proxy = await start_proxy([a, b])
    result = await call("uac_proxy_call.xml", proxy, tmp_path, calls=4, pause_ms=1000)
    assert result.returncode == 0, result.output
    assert len(lines(result.log, "ANSWERED")) == 4
    # least-loaded: the four overlapping calls alternate between the two workers
    await eventually(lambda: (a.count("INVITE"), b.count("INVITE")), (2, 2))
    # ACK and BYE followed the route set through the proxy and reached the worker that answered
    await eventually(lambda: (a.count("BYE"), b.count("BYE")), (2, 2))
    assert f"Record-Route: <sip:127.0.0.1:{proxy.plan.port};lr;hs=ds>" in a.messages()


async def test_a_call_over_tcp_reaches_a_udp_worker(start_uas, start_proxy, tmp_path: Path) -> None:
    worker = await start_uas()
    proxy = await start_proxy([worker])
    result = await call("uac_proxy_call.xml", proxy, tmp_path, transport="t1")
    assert result.returncode == 0, result.output
    await eventually(lambda: worker.count("BYE"), 1)
    # the proxy records both of its sockets, so in-dialog requests cross transports too
    assert f"Record-Route: <sip:127.0.0.1:{proxy.plan.port};transport=tcp;r2=on;lr;hs=ds>" in worker.messages()


async def test_a_wildcard_host_is_served_on_each_address(start_uas, start_proxy, tmp_path: Path) -> None:
    worker = await start_uas()
    proxy = await start_proxy([worker], host="0.0.0.0", transports=("udp",))
    result = await call("uac_proxy_call.xml", proxy, tmp_path)
    assert result.returncode == 0, result.output
    await eventually(lambda: worker.count("BYE"), 1)
    # a socket per address, so that Via and Record-Route name the one the caller reached
    assert f"Record-Route: <sip:127.0.0.1:{proxy.plan.port};lr;hs=ds>" in worker.messages()


async def test_when_every_worker_is_full_the_proxy_answers_486(start_uas, start_proxy, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, "hearsay.kamailio")
    a, b = await start_uas(), await start_uas()
    proxy = await start_proxy([a, b], calls_per_worker=1)
    holders = asyncio.create_task(call("uac_proxy_call.xml", proxy, tmp_path, calls=2, pause_ms=2000))
    await until(lambda: a.count("INVITE") + b.count("INVITE") == 2, 5.0, "the two held calls did not arrive")
    refused = await call("uac_refused.xml", proxy, tmp_path)
    assert lines(refused.log, "refused") == ["refused 486"], refused.output
    await eventually(lambda: (a.count("INVITE"), b.count("INVITE")), (1, 1))  # the workers never saw the third call
    assert any(r.levelno == logging.WARNING and "every worker is busy" in r.getMessage() for r in caplog.records)
    assert (await holders).returncode == 0
    # their BYEs gave the capacity back
    again = await call("uac_proxy_call.xml", proxy, tmp_path)
    assert again.returncode == 0, again.output


@pytest.mark.parametrize("refusing", ["uas_busy.xml", "uas_unavailable.xml"])  # 486, 503
async def test_a_worker_refusing_hands_the_call_to_the_next(start_uas, start_proxy, tmp_path: Path,
                                                            refusing: str) -> None:
    refuser = await start_uas(refusing)
    answerer = await start_uas()
    proxy = await start_proxy([refuser, answerer])
    result = await call("uac_proxy_call.xml", proxy, tmp_path)
    assert result.returncode == 0, result.output
    await eventually(lambda: refuser.count("REFUSED"), 1)  # the least-loaded pick went there first
    await eventually(lambda: (answerer.count("INVITE"), answerer.count("BYE")), (1, 1))


async def test_a_worker_that_does_not_answer_is_skipped(start_uas, start_proxy, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, "hearsay.kamailio")
    silent = ("127.0.0.1", free_port())  # nothing listens: the INVITE times out there (fr_timer 2 s)
    answerer = await start_uas()
    proxy = await start_proxy([silent, answerer])
    started = time.monotonic()
    result = await call("uac_proxy_call.xml", proxy, tmp_path)
    assert result.returncode == 0, result.output
    await eventually(lambda: answerer.count("INVITE"), 1)
    assert 1.5 < time.monotonic() - started < 6
    assert any(f"worker sip:127.0.0.1:{silent[1]} did not answer" in r.getMessage() for r in caplog.records)
    # marked down at once: the next call goes straight to the worker that answers
    started = time.monotonic()
    assert (await call("uac_proxy_call.xml", proxy, tmp_path, pause_ms=0)).returncode == 0
    assert time.monotonic() - started < 1.5


async def test_when_every_worker_refuses_the_caller_hears_it(start_uas, start_proxy, tmp_path: Path) -> None:
    a = await start_uas("uas_busy.xml")
    b = await start_uas("uas_unavailable.xml")
    proxy = await start_proxy([a, b], calls_per_worker=1)
    for n in (1, 2):  # the second call finds both free again: a failed call holds no capacity
        refused = await call("uac_refused.xml", proxy, tmp_path)
        # the last refusal, sent by Kamailio itself with a Retry-After (relayed, it would be a 500)
        assert lines(refused.log, "refused") == ["refused 503 retry-after 5"], refused.output
        await eventually(lambda: (a.count("REFUSED"), b.count("REFUSED")), (n, n))


# -- the edge: who may call, and what the workers learn -----------------------------------------


async def test_a_caller_outside_allow_from_gets_403_and_the_workers_see_nothing(start_uas, start_proxy,
                                                                               tmp_path: Path) -> None:
    worker = await start_uas()
    proxy = await start_proxy([worker], allow_from=("127.0.0.2/32", "192.0.2.0/24"))
    refused = await call("uac_refused.xml", proxy, tmp_path, source="127.0.0.1")
    assert lines(refused.log, "refused") == ["refused 403"], refused.output
    await eventually(lambda: worker.count("INVITE"), 0)
    allowed = await call("uac_proxy_call.xml", proxy, tmp_path, source="127.0.0.2")
    assert allowed.returncode == 0, allowed.output
    await eventually(lambda: worker.count("INVITE"), 1)


async def test_the_worker_learns_the_callers_address_and_no_forged_one(start_uas, start_proxy, tmp_path: Path) -> None:
    worker = await start_uas()
    proxy = await start_proxy([worker])
    for source in ("127.0.0.1", "127.0.0.2"):  # uac_proxy_call.xml says X-Hearsay-Source: 203.0.113.9
        assert (await call("uac_proxy_call.xml", proxy, tmp_path, source=source, pause_ms=0)).returncode == 0
    assert re.findall(r"^INVITE \S+ source=(\S*)$", worker.log(), re.MULTILINE) == ["127.0.0.1", "127.0.0.2"]
    invites = [m for m in worker.messages().split("\n\n") if m.lstrip().startswith("INVITE ")]
    assert len(invites) == 2
    for invite in invites:
        assert len(re.findall(r"^X-Hearsay-Source:", invite, re.MULTILINE | re.IGNORECASE)) == 1
        assert "203.0.113.9" not in invite


async def test_in_dialog_requests_from_outside_go_only_to_workers(start_uas, start_proxy) -> None:
    worker = await start_uas()
    proxy = await start_proxy([worker])
    elsewhere = free_port()
    reply = await asyncio.to_thread(_bye_blocking, proxy.plan.port, f"sip:x@127.0.0.1:{elsewhere}")
    assert reply is not None and reply.startswith("SIP/2.0 403"), reply


def _bye_blocking(port: int, target: str) -> str | None:
    """An in-dialog BYE routed through the proxy (Route: the proxy) towards `target`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(1.0)
        local = s.getsockname()[1]
        s.sendto((f"BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKbye1\r\n"
                  f"Route: <sip:127.0.0.1:{port};lr>\r\nFrom: <sip:a@127.0.0.1>;tag=a\r\n"
                  f"To: <sip:b@127.0.0.1>;tag=b\r\nCall-ID: relay@test\r\nCSeq: 2 BYE\r\n"
                  "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
        try:
            return s.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
        except TimeoutError:
            return None


async def test_a_flood_is_blocked_per_source_and_the_proxy_carries_on(start_uas, start_proxy, tmp_path: Path,
                                                                      caplog) -> None:
    caplog.set_level(logging.INFO, "hearsay.kamailio")
    worker = await start_uas("uas_busy.xml")
    proxy = await start_proxy([worker], pike_density=10, pike_interval_s=1)
    flood = asyncio.create_task(call("uac_refused.xml", proxy, tmp_path, calls=150, source="127.0.0.3",
                                     timeout_s=3, extra=("-r", "100")))
    await asyncio.sleep(0.8)
    assert await options(proxy.plan.port, source="127.0.0.3") is None  # 127.0.0.3 is ignored now ...
    assert await options(proxy.plan.port, source="127.0.0.1") == "SIP/2.0 200 OK"  # ... and only it
    flooded = await flood
    answered = len(lines(flooded.log, "refused"))
    assert 0 < answered < 100, flooded.output
    await eventually(lambda: worker.count("REFUSED"), answered)  # what was dropped never reached a worker
    warnings = [r for r in caplog.records if "127.0.0.3 is flooding" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    # once it has been quiet for a sampling interval or two, it is heard again
    deadline = time.monotonic() + 8
    while await options(proxy.plan.port, source="127.0.0.3") != "SIP/2.0 200 OK":
        assert time.monotonic() < deadline, "127.0.0.3 stayed blocked"
    assert proxy.health()["status"] == "ok" and proxy.health()["restarts"] == 0


# -- requests from the workers ------------------------------------------------------------------


@pytest.fixture
async def registrar(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A second Kamailio as a trunk's registrar: its port and its log."""
    async with run_registrar(tmp_path / "registrar") as found:
        yield found


async def test_a_workers_register_is_relayed_to_the_registrar(start_proxy, registrar, tmp_path: Path) -> None:
    registrar_port, registrar_log = registrar
    worker_port = free_port()  # the sipp REGISTERing below sends from the worker's own port
    proxy = await start_proxy([("127.0.0.1", worker_port)])
    result = await call("reg_via_proxy.xml", proxy, tmp_path,
                        extra=("-p", str(worker_port), "-key", "registrar", f"127.0.0.1:{registrar_port}",
                               "-key", "contact", f"192.0.2.10:{proxy.plan.port}"))
    assert result.returncode == 0, result.output
    assert len(lines(result.log, "REGISTERED")) == 1
    # through the proxy (its address, not the worker's), Contact as the worker wrote it
    expected = f"REGISTER from 127.0.0.1:{proxy.plan.port} contact <sip:100@192.0.2.10:{proxy.plan.port}>"
    assert expected in registrar_log.read_text()


# -- the process --------------------------------------------------------------------------------


async def test_missing_kamailio_says_how_to_install_it(tmp_path: Path) -> None:
    assert missing_kamailio(12) == ("sip.max_calls = 12 needs Kamailio in front of the SIP workers: "
                                    "apt-get install -y kamailio")
    with pytest.raises(ProxyStartError, match="apt-get install -y kamailio"):
        kamailio_binary(12, str(tmp_path / "kamailio"))
    plan = ProxyPlan("127.0.0.1", free_port(), ("udp",), (), (("127.0.0.1", 5071), ("127.0.0.1", 5072)), max_calls=8)
    proxy = KamailioProxy(plan, tmp_path / "proxy", binary=str(tmp_path / "nowhere" / "kamailio"))
    with pytest.raises(SipStartError, match=r"^sip\.max_calls = 8 needs Kamailio .*apt-get install -y kamailio$"):
        await proxy.start()
    assert proxy.health()["status"] == "failed"


async def test_a_taken_port_is_reported(start_proxy) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ProxyStartError, match=f"udp 127.0.0.1:{port}: Address already in use"):
            await start_proxy([("127.0.0.1", free_port())], port=port)


async def test_a_config_kamailio_refuses_is_reported_with_its_error(start_proxy, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, "hearsay.kamailio")
    monkeypatch.setattr(sip.proxy_config, "ROUTING", sip.proxy_config.ROUTING + "\nroute[BROKEN] { no_such_function(); }\n")
    with pytest.raises(ProxyStartError, match=r"^Kamailio exited at start \(code 255\): .*no_such_function"):
        await start_proxy([("127.0.0.1", free_port())])
    errors = [r for r in caplog.records if r.name == "hearsay.kamailio" and r.levelno == logging.ERROR]
    assert any("no_such_function" in r.getMessage() for r in errors)


async def test_kamailio_killed_is_started_again(start_uas, start_proxy, tmp_path: Path, caplog) -> None:
    worker = await start_uas()
    proxy = await start_proxy([worker])
    first = proxy.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    await until(lambda: proxy.pid not in (None, first) and proxy.health()["status"] == "ok", 5.0,
                f"Kamailio was not back within 5 s: {proxy.health()}")
    assert await options(proxy.plan.port) == "SIP/2.0 200 OK"
    assert time.monotonic() - killed < 5
    assert proxy.health()["restarts"] == 1
    assert _group_members(first) == []  # nothing is left of the killed one's processes
    assert any(r.name == "hearsay.sip" and r.levelno == logging.ERROR and "Kamailio exited" in r.getMessage()
               for r in caplog.records)
    assert (await call("uac_proxy_call.xml", proxy, tmp_path, pause_ms=0)).returncode == 0


async def test_kamailio_dies_with_the_service(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from sip.proxy import KamailioProxy
        from sip.proxy_config import ProxyPlan
        async def main():
            plan = ProxyPlan("127.0.0.1", {free_port()}, ("udp",), (), (("127.0.0.1", {free_port()}),))
            proxy = KamailioProxy(plan, Path({str(tmp_path / "proxy")!r}))
            await proxy.start()
            print(proxy.pid, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    service = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=REPO,
                                                   stdout=asyncio.subprocess.PIPE)
    assert service.stdout is not None
    pid = int(await asyncio.wait_for(service.stdout.readline(), 15))
    service.kill()  # no chance to stop anything
    await service.wait()
    await until(lambda: not _group_members(pid), 5.0, "Kamailio outlived the service")


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes in process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


async def test_kamailio_logs_come_out_of_python_logging_at_their_level(start_proxy, caplog) -> None:
    caplog.set_level(logging.DEBUG, "hearsay.kamailio")
    proxy = await start_proxy([("127.0.0.1", free_port())], allow_from=("192.0.2.0/24",))
    assert await options(proxy.plan.port) == "SIP/2.0 403 Forbidden"
    ours = [r for r in caplog.records if r.name == "hearsay.kamailio"]
    # Kamailio's own notes are DEBUG; our script's lines keep their level.
    assert any(r.levelno == logging.DEBUG and r.getMessage() == "Listening on" for r in ours)
    refusal = next(r for r in ours if "refused (403)" in r.getMessage())
    assert refusal.levelno == logging.INFO
    assert refusal.getMessage() == "hearsay: OPTIONS from 127.0.0.1 refused (403): not in sip.allow_from"
    assert getattr(refusal, "kamailio_pid", None) == proxy.pid
