"""What the benchmarks share, so their figures mean the same thing.

- `speech_end_s`: the one definition of a clip's "true end of speech" that every latency is
  measured from: the end of the last 10 ms window whose RMS reaches 10 % of the loudest
  window's (20 dB down). Conservative: quiet trailing breath does not count as speech, so it
  cannot shorten a measured latency.
- `wer`: word error rate after Whisper's English normalisation (needs the test extras).
- `bench_service`: the real app on 127.0.0.1 with one dialplan, `bench`, whose webhook is a
  local signature-checking consumer; the outbox and dialplans live in a temporary directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from app.bench.consumer import WebhookConsumer
from app.settings import Settings

SECRET = "whsec_bench"


def speech_end_s(samples: np.ndarray, rate: int) -> float:
    """Seconds from the start of `samples` (any scale) to the end of their speech."""
    hop = rate // 100
    windows = np.asarray(samples, dtype=np.float64)[: len(samples) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((windows**2).mean(axis=1))
    if not len(rms) or rms.max() <= 0:
        return 0.0
    loud = np.nonzero(rms >= 0.1 * rms.max())[0]
    return float((loud[-1] + 1) * hop / rate)


def wer(reference: str, hypothesis: str) -> float:
    """Normalised word error rate; NaN when the test extras (jiwer, whisper-normalizer) are missing."""
    try:
        import jiwer
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        return float("nan")
    norm = EnglishTextNormalizer()
    return float(jiwer.wer(norm(reference), norm(hypothesis) or "<empty>"))


@dataclass
class BenchService:
    """A running app and its webhook consumer."""

    app: web.Application
    host: str  # "127.0.0.1:<port>" of the HTTP server
    consumer: WebhookConsumer
    workdir: Path

    def dropped_frames(self, source: str) -> int:
        from app.server import METRICS

        metric = self.app[METRICS].dropped_frames
        return int(sum(s.value for family in metric.collect() for s in family.samples
                       if s.name.endswith("_total") and s.labels.get("source") == source))


@contextlib.asynccontextmanager
async def bench_service(settings: Settings, *, match: str = "", engine: Any = None,
                        on_event: Callable[[dict[str, Any], float], None] | None = None,
                        ) -> AsyncIterator[BenchService]:
    """Run the app with the `bench` dialplan (its `[match]` body is `match`) until the block ends.

    `settings` should already carry what the benchmark changes (SIP on or off, ports, limits);
    this sets the HTTP address, the outbox and the dialplans directory.
    """
    from app.server import create_app

    consumer = WebhookConsumer(SECRET, on_event=on_event)
    url = await consumer.start()
    try:
        with tempfile.TemporaryDirectory(prefix="hearsay-bench-") as tmp:
            workdir = Path(tmp)
            plans = workdir / "dialplans"
            plans.mkdir()
            (plans / "bench.toml").write_text(
                f'name = "bench"\n[match]\n{match}\n[webhook]\nurl = "{url}"\nsecret = "{SECRET}"\n')
            settings = dataclasses.replace(
                settings,
                http=dataclasses.replace(settings.http, host="127.0.0.1", port=0),
                dialplans=dataclasses.replace(settings.dialplans, dir=str(plans)),
                webhooks=dataclasses.replace(settings.webhooks, outbox=str(workdir / "outbox.sqlite3")),
            )
            runner = web.AppRunner(create_app(settings, engine=engine), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                host = f"127.0.0.1:{runner.addresses[0][1]}"
                yield BenchService(runner.app, host, consumer, workdir)
            finally:
                await runner.cleanup()
    finally:
        await consumer.stop()
