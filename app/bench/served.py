"""The service as users run it, for the load benchmarks: `python -m app serve` in a process
of its own, loaded by callers in this one.

    async with served("settings.toml", {"sip": {"enabled": False}}, match='twilio_to = ["*"]',
                      on_event=arrived) as service:
        service.http                 # "127.0.0.1:<port>"
        service.consumer             # the signature-checking webhook consumer (this process)
        service.usage()              # CPU seconds and peak RSS of the service (and its children)
        await service.figures("twilio")  # dropped frames and latency inside, from its /metrics

The settings file (when it exists) is read, the overrides applied, and the result written to a
temporary file with the HTTP address, the dialplans (one, `bench`, whose `[match]` body is
`match`, whose webhook is the consumer, and which asks for interim results with `interim`) and
the outbox in a temporary directory. Trunk
registrations are dropped: a benchmark registers nowhere. The service's log goes to
`<workdir>/serve.log`; its last lines are shown if it fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from app.bench.common import SECRET
from app.bench.consumer import WebhookConsumer

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds (user + system) and peak RSS (MB) of one process."""

    cpu_s: float
    peak_rss_mb: int


def process_usage(pid: int) -> Usage:
    """What process `pid` has used so far (Linux /proc); zeros once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return Usage(0.0, 0)
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return Usage(cpu, round(_status_kb(status, "VmHWM") / 1024))


def rss_mb(pid: int) -> float:
    """Process `pid`'s resident memory now (MB; Linux /proc), where `process_usage` gives its peak."""
    return _status_kb(Path(f"/proc/{pid}/status").read_text(), "VmRSS") / 1024


def _status_kb(status: str, field: str) -> int:
    """A kB figure of /proc/<pid>/status (0 when absent, as for a zombie)."""
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:")), 0)


def own_usage() -> Usage:
    """What this process (the load generator) has used so far."""
    return process_usage(os.getpid())


class Window:
    """CPU and peak memory over one measured stretch: of the service's processes (`pids`, the
    service first, then e.g. its SIP workers) and of the load generator (this process plus the
    children it has waited for, such as sipp callers)."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self._before = [process_usage(pid) for pid in pids]
        self._load0 = time.process_time() + _children_cpu_s()
        self._wall0 = time.monotonic()

    def close(self) -> dict[str, Any]:
        wall = time.monotonic() - self._wall0
        after = [process_usage(pid) for pid in self._pids]
        cpu = [round(100 * (a.cpu_s - b.cpu_s) / wall, 1) for a, b in zip(after, self._before, strict=True)]
        return {
            "service_cpu_percent": cpu[0], "service_peak_rss_mb": after[0].peak_rss_mb,
            "children": [{"cpu_percent": c, "peak_rss_mb": a.peak_rss_mb}
                         for c, a in zip(cpu[1:], after[1:], strict=True)],
            "load_cpu_percent": round(100 * (time.process_time() + _children_cpu_s() - self._load0) / wall, 1),
            "load_peak_rss_mb": own_usage().peak_rss_mb, "wall_s": round(wall, 1),
        }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ServedService:
    """A running `python -m app serve` and its webhook consumer."""

    process: asyncio.subprocess.Process
    http: str
    consumer: WebhookConsumer
    workdir: Path

    def usage(self) -> Usage:
        return process_usage(self.process.pid)

    def window(self, *others: int) -> Window:
        """Start measuring the service (and `others`, e.g. its SIP workers) and this process."""
        return Window([self.process.pid, *others])

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(f"http://{self.http}{path}") as answer:
            return await (answer.json() if path == "/health" else answer.text())

    async def figures(self, source: str, **histograms: str) -> dict[str, Any]:
        """What the service's own `/metrics` says after a run, read once: `dropped_frames` of
        the `source` ingress, and where the time went inside it, by its clock (bucket upper
        bounds, ms): last audio received -> final in the outbox (`inside_*`), and of that the
        recognizer's compute (`compute_*`) and the rest (`waits_*`: silence the VAD and the
        turn policy wait for, and queueing). Each `key=histogram` in `histograms` adds that
        histogram's `key_p50_ms_at_most` and `key_p95_ms_at_most` too."""
        metrics = await self.get("/metrics")
        out: dict[str, Any] = {"dropped_frames": int(_counter(metrics, "hearsay_dropped_frames_total", source=source))}
        for key, name in {**_INSIDE, **histograms}.items():
            out[f"{key}_p50_ms_at_most"], out[f"{key}_p95_ms_at_most"] = _histogram_ms(metrics, name, (50, 95))
        return out


_INSIDE = {"inside": "hearsay_end_to_end_latency_seconds", "compute": "hearsay_asr_latency_seconds",
           "waits": "hearsay_vad_latency_seconds", "late": "hearsay_final_lateness_seconds"}


def _counter(metrics: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples in `metrics` whose labels include `labels`."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


def _histogram_ms(metrics: str, name: str, wanted: tuple[int, ...]) -> tuple[float | None, ...]:
    """For each percentile of a histogram in `metrics` (all its label sets together), the
    upper bound (ms) of the bucket it falls in."""
    buckets: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{"):
            le = float(line.split('le="', 1)[1].split('"', 1)[0])
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    if not total:
        return tuple(None for _ in wanted)
    return tuple(next(round(le * 1000, 1) for le, count in ordered if count >= total * p / 100) for p in wanted)


@contextlib.asynccontextmanager
async def served(config: str, overrides: Mapping[str, Mapping[str, Any]], *, match: str, interim: bool = False,
                 on_event: Callable[[dict[str, Any], float], None] | None = None) -> AsyncIterator[ServedService]:
    """Run the service (see the module docstring) until the block ends, then SIGTERM it."""
    consumer = WebhookConsumer(SECRET, on_event=on_event)
    url = await consumer.start()
    try:
        with tempfile.TemporaryDirectory(prefix="hearsay-bench-") as tmp:
            workdir = Path(tmp)
            port = _free_port()
            settings_file = _write_settings(workdir, config, overrides, match, interim, url, port)
            with (workdir / "serve.log").open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "app", "serve", "--config", str(settings_file),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
            service = ServedService(process, f"127.0.0.1:{port}", consumer, workdir)
            try:
                await _until_healthy(service)
                yield service
            finally:
                if process.returncode is None:
                    process.terminate()
                    try:
                        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
                    except TimeoutError:
                        process.kill()
                        await process.wait()
    finally:
        await consumer.stop()


async def _until_healthy(service: ServedService) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if service.process.returncode is not None:
            tail = (service.workdir / "serve.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the service exited ({service.process.returncode}):\n{tail}")
        with contextlib.suppress(aiohttp.ClientError, ValueError):
            if (await service.get("/health")).get("status") == "healthy":
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service was not healthy within {START_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.2)


def _write_settings(workdir: Path, config: str, overrides: Mapping[str, Mapping[str, Any]], match: str,
                    interim: bool, url: str, port: int) -> Path:
    raw: dict[str, dict[str, Any]] = {}
    if Path(config).exists():
        raw = tomllib.loads(Path(config).read_text())
    plans = workdir / "dialplans"
    plans.mkdir()
    (plans / "bench.toml").write_text(
        f'name = "bench"\n[match]\n{match}\n[webhook]\nurl = "{url}"\nsecret = "{SECRET}"\n'
        f'[recognition]\ninterim_results = {"true" if interim else "false"}\n')
    fixed: dict[str, dict[str, Any]] = {
        "http": {"host": "127.0.0.1", "port": port},
        "dialplans": {"dir": str(plans)},
        "webhooks": {"outbox": str(workdir / "outbox.sqlite3")},
        "talkback": {"preload_voice": False},
    }
    for source in (fixed, overrides):
        for section, values in source.items():
            raw.setdefault(section, {}).update(values)
    raw.get("sip", {}).pop("registrations", None)
    path = workdir / "settings.toml"
    path.write_text(_toml(raw))
    return path


def _toml(raw: Mapping[str, Mapping[str, Any]]) -> str:
    """Flat sections of strings, numbers, booleans and lists of them, as TOML."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value(v)}" for key, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 right now (for a sipp caller's SIP socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
