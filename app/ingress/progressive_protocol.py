"""The `/v1/progressive` wire format: the create config, and the answers' JSON.

Config (POST /v1/progressive, a JSON object; every key optional):

    {"model": "mini", "language": "en", "diarize": false, "speakers": null,
     "topics": false, "return_segments": true, "vocabulary": "..." | ["...", ...]}

An unknown key or a wrong type is a 400 `invalid_config` naming the key.
"""

from __future__ import annotations

from typing import Any

from app.ingress.vocabulary import parse_vocabulary
from app.progressive.job import JobConfig, ProgressiveJob, Status


class ConfigError(ValueError):
    """A config the endpoint refuses; the message names the key."""


_BOOLS = ("diarize", "topics", "return_segments")
_STRINGS = ("model", "language")
_KNOWN = {*_BOOLS, *_STRINGS, "speakers", "vocabulary"}


def parse_config(raw: Any) -> JobConfig:
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a JSON object")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ConfigError(f"config.{unknown[0][:64]}: unknown key (known: {', '.join(sorted(_KNOWN))})")
    options: dict[str, Any] = {}
    for key in _BOOLS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError(f"config.{key}: expected true or false")
            options[key] = raw[key]
    for key in _STRINGS:
        if raw.get(key) is not None:
            if not isinstance(raw[key], str) or not raw[key].strip() or len(raw[key]) > 256:
                raise ConfigError(f"config.{key}: expected a non-empty string")
            options[key] = raw[key].strip()
    speakers = raw.get("speakers")
    if speakers is not None:
        if not isinstance(speakers, int) or isinstance(speakers, bool) or not 1 <= speakers <= 8:
            raise ConfigError("config.speakers: expected an integer from 1 to 8")
        options["speakers"] = speakers
    if raw.get("vocabulary") is not None:
        try:
            options["vocabulary"] = parse_vocabulary(raw["vocabulary"], "config.vocabulary")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return JobConfig(**options)


def snapshot(job: ProgressiveJob, since: int = 0) -> dict[str, Any]:
    """The job's state as the endpoints answer it."""
    config = job.config
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        "progress": {
            "received_bytes": job.received_bytes,
            "decoded_s": round(job.decoded_s, 3),
            "transcribed_s": round(job.segments[-1].end_s, 3) if job.segments else 0.0,
            "realtime_factor": round(job.realtime_factor(), 2),
        },
    }
    segments = job.segments
    body["segment_count"] = len(segments)
    if config.return_segments:
        body["segments"] = [_segment(s) for s in segments[max(since, 0):]]
    if job.status is Status.DONE:
        body["text"] = job.text
        body["duration"] = round(job.decoded_s, 3)
        body["processing_s"] = round((job.finished_at or job.created_at) - job.created_at, 3)
        if config.diarize:
            body["speakers"] = sorted({s.speaker for s in segments if s.speaker})
        if config.topics:
            body["topics"] = [{"text": text, "score": score} for text, score in job.topics]
    if job.error is not None:
        body["error"] = {"code": job.error[0], "message": job.error[1]}
    return body


def _segment(s: Any) -> dict[str, Any]:
    out = {"index": s.index, "text": s.text, "start_s": s.start_s, "end_s": s.end_s,
           "confidence": round(s.confidence, 3)}
    if s.speaker is not None:
        out["speaker"] = s.speaker
    return out


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}
