"""What the benchmarks (and the tests) share, so their figures mean the same thing.

- `SPEECH_DIR`: the speech clips (`manifest.tsv` and the WAVs), `$HEARSAY_SPEECH_DIR` or
  `shared/speech` beside the repository (`app.settings.speech_dir`).
- `speech_end_s`: the one definition of a clip's "true end of speech" that every latency is
  measured from: the end of the last 10 ms window whose RMS reaches 10 % of the loudest
  window's (20 dB down). Conservative: quiet trailing breath does not count as speech, so it
  cannot shorten a measured latency. `speech_start_s` is its counterpart (barge-in is
  measured from it).
- `wer`: word error rate after Whisper's English normalisation (needs the test extras).
- `RunningApp`: the real app served on a loopback port (ephemeral by default).
- `bench_service`: the real app on 127.0.0.1 with one dialplan, `bench`, whose webhook is a
  local signature-checking consumer; the outbox and dialplans live in a temporary directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from app.bench.consumer import WebhookConsumer
from app.settings import Settings, speech_dir

if TYPE_CHECKING:
    from app.pipeline.engine import SpeechEngine

SECRET = "whsec_bench"
SPEECH_DIR = speech_dir()


def _loud_windows(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Indices of the 10 ms windows whose RMS reaches 10 % of the loudest's, and the hop."""
    hop = rate // 100
    windows = np.asarray(samples, dtype=np.float64)[: len(samples) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((windows**2).mean(axis=1))
    if not len(rms) or rms.max() <= 0:
        return np.empty(0, dtype=np.int64), hop
    return np.nonzero(rms >= 0.1 * rms.max())[0], hop


def speech_end_s(samples: np.ndarray, rate: int) -> float:
    """Seconds from the start of `samples` (any scale) to the end of their speech."""
    loud, hop = _loud_windows(samples, rate)
    return float((loud[-1] + 1) * hop / rate) if len(loud) else 0.0


def speech_start_s(samples: np.ndarray, rate: int) -> float:
    """Seconds from the start of `samples` to the start of their speech (same definition)."""
    loud, hop = _loud_windows(samples, rate)
    return float(loud[0] * hop / rate) if len(loud) else 0.0


@functools.cache
def _normalizer() -> Callable[[str], str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    normalizer: Callable[[str], str] = EnglishTextNormalizer()
    return normalizer


def normalize(text: str) -> str:
    """`text` as `wer` compares it: Whisper's English normalisation (case, punctuation,
    "fourteen" vs "14"). Needs the test extras (whisper-normalizer)."""
    return _normalizer()(text).strip()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference`, both normalised (`normalize`). An
    empty reference scores 0.0 against nothing and 1.0 against anything. NaN when the test
    extras (jiwer, whisper-normalizer) are missing."""
    try:
        import jiwer

        ref, hyp = normalize(reference), normalize(hypothesis)
    except ImportError:
        return float("nan")
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp))


@dataclass
class RunningApp:
    """The real app (`create_app`) served on a loopback port until `close()`."""

    app: web.Application
    host: str  # "127.0.0.1:<port>"
    _runner: web.AppRunner | None

    @classmethod
    async def start(cls, settings: Settings, *, engine: SpeechEngine | None = None,
                    host: str = "127.0.0.1", port: int = 0) -> RunningApp:
        """Start the app (its cleanup contexts run now: a bad dialplan raises here) and listen;
        `engine=None` makes it load its own from `settings`."""
        from app.server import create_app

        runner = web.AppRunner(create_app(settings, engine=engine), access_log=None)
        try:
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()  # close what start-up opened before it failed
            raise
        return cls(runner.app, f"{host}:{runner.addresses[0][1]}", runner)

    def url(self, path: str = "/", scheme: str = "http") -> str:
        """`scheme://host:port/path`, e.g. `url("/v1/stream", "ws")`."""
        return f"{scheme}://{self.host}{path}"

    async def close(self) -> None:
        """Shut down as SIGTERM does (live calls are finalised); a second call does nothing."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_app(settings: Settings, *, engine: SpeechEngine | None = None) -> AsyncIterator[RunningApp]:
    """`RunningApp.start(...)` until the block ends."""
    running = await RunningApp.start(settings, engine=engine)
    try:
        yield running
    finally:
        await running.close()


@dataclass
class BenchService:
    """A running app and its webhook consumer."""

    app: web.Application
    host: str  # "127.0.0.1:<port>" of the HTTP server
    consumer: WebhookConsumer
    workdir: Path

    def dropped_frames(self, source: str) -> int:
        from app.keys import METRICS

        metric = self.app[METRICS].dropped_frames
        return int(sum(s.value for family in metric.collect() for s in family.samples
                       if s.name.endswith("_total") and s.labels.get("source") == source))


@contextlib.asynccontextmanager
async def bench_service(settings: Settings, *, match: str = "", engine: SpeechEngine | None = None,
                        on_event: Callable[[dict[str, Any], float], None] | None = None,
                        ) -> AsyncIterator[BenchService]:
    """Run the app with the `bench` dialplan (its `[match]` body is `match`) until the block ends.

    `settings` should already carry what the benchmark changes (SIP on or off, ports, limits);
    this sets the HTTP address, the outbox and the dialplans directory.
    """
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
            async with serve_app(settings, engine=engine) as running:
                yield BenchService(running.app, running.host, consumer, workdir)
    finally:
        await consumer.stop()
