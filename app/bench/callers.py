"""Callers for the load benchmarks: who calls when, saying what, and how their finals score.

Callers load the service the way phone calls do: each starts at its own moment (uniformly
within `stagger_s` of the first, seeded), says `per_call` different clips from `POOL` (caller n
starts at clip 3n, so neighbours differ) with GAP_S of silence after each, and stays HOLD_S
after the last before hanging up. Audio is 8 kHz, sent in 20 ms frames in real time.

A clip's latency is from its true end of speech (`speech_end_s`, the moment the caller sent
that audio) to the arrival at the webhook consumer of the `utterance.final` covering it, both
on this process's monotonic clock. WER is pooled over every call: all the errors over all the
reference words, each call's `call.ended` transcript against its clips' references.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.audiofile import iter_pcm16
from app.bench.common import SPEECH_DIR, normalize, speech_end_s

# Twelve clips whose speech ends a sentence (or a list of cards), so each is a caller who has
# finished their turn: a load benchmark measures how fast a finished turn reaches the webhook.
# (A clip stopping mid-sentence, such as LJ001-0004 ending on a comma, is a caller who paused;
# the end-of-turn policy makes it wait up to [turn] max_silence_ms on purpose, and `bench
# engine` measures that.)
POOL = ("arctic-aew-a0001", "timit-LDC93S1", "ljspeech-LJ001-0009", "arctic-aew-a0002", "cards-005",
        "ljspeech-LJ001-0005", "arctic-aew-a0003", "ljspeech-LJ001-0013", "jfk",
        "ljspeech-LJ001-0002", "ljspeech-LJ001-0015", "ljspeech-LJ001-0008")
RATE = 8000
LEAD_S, GAP_S, HOLD_S = 1.0, 1.5, 1.5
# The load benchmarks measure what N callers cost, so the service lets all N in: no call
# limit from its speed or from how late finals come ([asr] busy_late_ms; `bench soak` keeps
# that limit and counts the callers it refuses).
LET_EVERY_CALLER_IN: dict[str, dict[str, Any]] = {"asr": {"busy_late_ms": 0}}
# An utterance.final covers a clip's end if it ends no earlier than this before it (Whisper's
# end times are coarse) and starts before it.
COVER_SLACK_S = 0.6


def add_load_arguments(parser: argparse.ArgumentParser, callers: str = "callers") -> None:
    """The options every load benchmark shares (who calls, saying what, against which settings)."""
    parser.add_argument("--stagger-s", type=float, default=3.0,
                        help=f"{callers} start within this many seconds of each other (default 3)")
    parser.add_argument("--clips-per-call", type=int, default=3, help="clips each one says (default 3)")
    parser.add_argument("--speech-dir", default=str(SPEECH_DIR),
                        help="directory with manifest.tsv (default: $HEARSAY_SPEECH_DIR or ../shared/speech)")
    parser.add_argument("--config", default="settings.toml", help="the service's settings file")
    parser.add_argument("--interim", action="store_true",
                        help="ask for interim results too (every [asr] interim_interval_ms while a caller talks)")
    parser.add_argument("--baseline", action="store_true",
                        help="also transcribe each call's audio alone, afterwards, through the same engine and "
                             "settings (as `transcribe --telephone` does), and report that WER next to the load's")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


class Arrivals(dict[str, float]):
    """When each webhook event first reached the consumer (event id -> monotonic time); pass
    it as the consumer's `on_event`."""

    def __call__(self, event: Mapping[str, Any], at: float) -> None:
        self.setdefault(str(event["id"]), at)


@dataclass(frozen=True, slots=True)
class Clip:
    id: str
    samples: np.ndarray  # 8 kHz, float32 in [-1, 1]
    reference: str


@dataclass(frozen=True, slots=True)
class CallerPlan:
    """One caller: when it calls (seconds after the first), what it says, and where in its
    call (seconds from the first frame) each clip's speech ends."""

    index: int
    start_s: float
    clips: tuple[Clip, ...]
    samples: np.ndarray  # the whole call at 8 kHz
    ends_s: tuple[float, ...]

    @property
    def reference(self) -> str:
        return " ".join(c.reference for c in self.clips)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / RATE


@dataclass(slots=True)
class CallOutcome:
    """What one caller did: its call's id and when its audio second 0 was sent."""

    plan: CallerPlan
    call_id: str
    started_at: float


def load_pool(speech_dir: Path, ids: Sequence[str] = POOL) -> list[Clip]:
    rows = (speech_dir / "manifest.tsv").read_text().splitlines()
    manifest = {r.split("\t")[0]: r.split("\t") for r in rows[1:]}
    clips = []
    for clip_id in ids:
        if clip_id not in manifest:
            raise SystemExit(f"unknown clip {clip_id!r} (see {speech_dir}/manifest.tsv)")
        pcm = np.concatenate(list(iter_pcm16(speech_dir / manifest[clip_id][1], RATE)))
        clips.append(Clip(clip_id, pcm.astype(np.float32) / 32768, manifest[clip_id][5]))
    return clips


def plan_call(pool: Sequence[Clip], index: int, *, per_call: int = 3, start_s: float = 0.0) -> CallerPlan:
    """Caller `index`'s call: clips `per_call * index` onwards of the pool, in turn."""
    clips = tuple(pool[(per_call * index + k) % len(pool)] for k in range(per_call))
    parts = [np.zeros(int(LEAD_S * RATE), np.float32)]
    ends, at = [], LEAD_S
    for clip in clips:
        ends.append(at + speech_end_s(clip.samples, RATE))
        parts += [clip.samples, np.zeros(int(GAP_S * RATE), np.float32)]
        at += len(clip.samples) / RATE + GAP_S
    return CallerPlan(index, start_s, clips, np.concatenate(parts), tuple(ends))


def plans_for(args: argparse.Namespace, n: int) -> list[CallerPlan]:
    """The callers of a load benchmark run with the options of `add_load_arguments`."""
    return plan_callers(load_pool(Path(args.speech_dir)), n, per_call=args.clips_per_call, stagger_s=args.stagger_s)


def plan_callers(pool: Sequence[Clip], n: int, *, per_call: int = 3, stagger_s: float = 3.0,
                 seed: int = 0) -> list[CallerPlan]:
    rng = random.Random(seed)
    starts = sorted(rng.uniform(0.0, stagger_s) for _ in range(n)) if n > 1 else [0.0]
    return [plan_call(pool, i, per_call=per_call, start_s=starts[i] - starts[0]) for i in range(n)]


def clip_latencies(outcomes: Sequence[CallOutcome], events: Sequence[Mapping[str, Any]],
                   arrivals: Mapping[str, float]) -> list[tuple[float, float | None]]:
    """(when the clip's speech ended, its latency or None when no final covers it) per clip."""
    by_call: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        if event["type"] == "utterance.final":
            by_call.setdefault(event["call"]["id"], []).append(event)
    out: list[tuple[float, float | None]] = []
    for outcome in outcomes:
        finals = by_call.get(outcome.call_id, [])
        for end_s in outcome.plan.ends_s:
            spoken_at = outcome.started_at + end_s
            covering = [e for e in finals if e["utterance"]["end_s"] >= end_s - COVER_SLACK_S
                        and e["utterance"]["start_s"] <= end_s and e["id"] in arrivals]
            out.append((spoken_at, arrivals[covering[0]["id"]] - spoken_at if covering else None))
    return out


def percentiles_ms(latencies: Sequence[float]) -> dict[str, int | None]:
    if not latencies:
        return {"latency_p50_ms": None, "latency_p95_ms": None, "latency_max_ms": None}
    lat = np.array(latencies)
    return {"latency_p50_ms": round(float(np.percentile(lat, 50)) * 1000),
            "latency_p95_ms": round(float(np.percentile(lat, 95)) * 1000),
            "latency_max_ms": round(float(lat.max()) * 1000)}


def score(outcomes: Sequence[CallOutcome], events: Sequence[Mapping[str, Any]],
          arrivals: Mapping[str, float]) -> dict[str, Any]:
    """Latency p50/p95/max (ms), utterances measured and missed, pooled WER, calls ended."""
    clips = clip_latencies(outcomes, events, arrivals)
    latencies = [lat for _, lat in clips if lat is not None]
    ended = {e["call"]["id"]: e for e in events if e["type"] == "call.ended"}
    refs = [o.plan.reference for o in outcomes]
    hyps = [ended[o.call_id]["transcript"] if o.call_id in ended else "" for o in outcomes]
    return {
        "calls": len(outcomes), "calls_ended": sum(o.call_id in ended for o in outcomes),
        "utterances_measured": len(latencies), "utterances_missed": len(clips) - len(latencies),
        **percentiles_ms(latencies),
        "wer": pooled_wer(refs, hyps),
    }


def pooled_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    """All the word errors over all the reference words (None without the test extras)."""
    try:
        import jiwer
    except ImportError:
        return None
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        return None
    return round(float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])), 4)


def format_summary(name: str, s: Mapping[str, Any]) -> str:
    """The human-readable lines of a load benchmark's summary (`score` plus usage figures)."""
    return (f"{name} bench: {s['calls']} caller(s), {s['calls_ended']} ended, real time, separate processes\n"
            f"  end of speech -> webhook: p50 {s['latency_p50_ms']} ms, p95 {s['latency_p95_ms']} ms, "
            f"max {s['latency_max_ms']} ms ({s['utterances_measured']} utterances, "
            f"{s['utterances_missed']} missed)\n"
            f"  WER {s['wer']}{_alone(s)}   service CPU {s['service_cpu_percent']}% of one core, peak RSS "
            f"{s['service_peak_rss_mb']} MB   load generator CPU {s['load_cpu_percent']}%   "
            f"dropped frames {s['dropped_frames']}" + _inside(s))


def _inside(s: Mapping[str, Any]) -> str:
    if "inside_p50_ms_at_most" not in s:
        return ""
    return (f"\n  inside the service (its clock; histogram bucket bounds): last audio -> outbox p50 <= "
            f"{s['inside_p50_ms_at_most']} ms, p95 <= {s['inside_p95_ms_at_most']} ms; recognizer compute p50 <= "
            f"{s['compute_p50_ms_at_most']}, p95 <= {s['compute_p95_ms_at_most']} ms; silence waits and queueing "
            f"p50 <= {s['waits_p50_ms_at_most']}, p95 <= {s['waits_p95_ms_at_most']} ms; finals late after their "
            f"turn ended p50 <= {s['late_p50_ms_at_most']}, p95 <= {s['late_p95_ms_at_most']} ms")


def _alone(s: Mapping[str, Any]) -> str:
    return f" (each call alone: {s['wer_alone']})" if "wer_alone" in s else ""
