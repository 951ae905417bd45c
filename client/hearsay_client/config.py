"""Session configs: the SDK's keys (snake_case, as the well-known streaming SDKs spell them)
checked here and mapped onto the server's wire keys.

| SDK key            | `/v1/stream` config key | notes |
|--------------------|-------------------------|-------|
| `sample_rate`      | `sampleRate`            | 8000-48000 (default 16000) |
| `encoding`         | `encoding`              | LINEAR16 (default), MULAW, ALAW |
| `language`         | `language`              | "en", "auto", ... |
| `model`            | `model`                 | "mini", ... |
| `interim_results`  | `interimResults`        | default False |
| `single_utterance` | `singleUtterance`       | default False |
| `words`            | `words`                 | per-word times |
| `dialplan`         | `dialplan`              | whose webhook also gets the events |
| `vocabulary`       | `vocabulary`            | hot words / initial prompt: a string or a list of strings |
| `max_buffer_s`     | (SDK only)              | audio kept for resending across a reconnect (default 300) |
| `reconnect`        | (SDK only)              | reconnect on a dropped connection (default True) |

A meeting (`meeting_config`) takes the same audio keys and the SDK's own, plus `meeting_id`
and `participants` (each `id`, optional `language` and `offset_s`).

An unknown key, or a value of the wrong type, raises `ConfigError` before anything is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hearsay_client.errors import ConfigError

ENCODINGS = {"LINEAR16": 2, "MULAW": 1, "ALAW": 1}  # bytes per sample

_WIRE_BOOLS = {"interim_results": "interimResults", "single_utterance": "singleUtterance", "words": "words"}
_WIRE_STRINGS = {"language": "language", "model": "model", "dialplan": "dialplan"}
_SDK_ONLY = {"max_buffer_s", "reconnect"}
STREAMING_KEYS = {"sample_rate", "encoding", "vocabulary", *_WIRE_BOOLS, *_WIRE_STRINGS, *_SDK_ONLY}
_MEETING_STREAM_KEYS = ("sample_rate", "encoding", "language", "model", "interim_results", "words",
                        "vocabulary", "max_buffer_s", "reconnect")
MEETING_KEYS = {"meeting_id", "participants", *_MEETING_STREAM_KEYS}
PARTICIPANT_KEYS = {"id", "language", "offset_s"}


@dataclass(frozen=True, slots=True)
class StreamingConfig:
    """A checked real-time session config. `wire` is the `start_transcription` config (for a
    meeting, the `start_meeting` config)."""

    wire: dict[str, Any]
    sample_rate: int
    encoding: str
    max_buffer_s: float
    reconnect: bool

    @property
    def bytes_per_sample(self) -> int:
        return ENCODINGS[self.encoding]

    @property
    def bytes_per_s(self) -> int:
        return self.sample_rate * self.bytes_per_sample


def check_keys(raw: Mapping[str, Any], known: set[str], what: str) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{what} must be a mapping", "invalid_config")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{what}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})",
                          "invalid_config")


def vocabulary(value: Any, where: str) -> str | list[str]:
    """A vocabulary: a non-empty string, or a list of non-empty strings."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    raise ConfigError(f"{where}: expected a string or a list of strings", "invalid_config")


def streaming_config(raw: Mapping[str, Any]) -> StreamingConfig:
    """Check a real-time session config and map it onto the wire (see the module doc)."""
    check_keys(raw, STREAMING_KEYS, "config")
    wire: dict[str, Any] = {}
    rate = raw.get("sample_rate", 16000)
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise ConfigError("config.sample_rate: expected an integer", "invalid_config")
    encoding = raw.get("encoding", "LINEAR16")
    if not isinstance(encoding, str) or encoding.upper() not in ENCODINGS:
        raise ConfigError(f"config.encoding: expected one of {', '.join(ENCODINGS)}", "unsupported_encoding")
    wire["sampleRate"] = rate
    wire["encoding"] = encoding.upper()
    for key, name in _WIRE_BOOLS.items():
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError(f"config.{key}: expected True or False", "invalid_config")
            wire[name] = raw[key]
    for key, name in _WIRE_STRINGS.items():
        if key in raw and raw[key] is not None:
            if not isinstance(raw[key], str) or not raw[key].strip():
                raise ConfigError(f"config.{key}: expected a non-empty string", "invalid_config")
            wire[name] = raw[key]
    if raw.get("vocabulary") is not None:
        wire["vocabulary"] = vocabulary(raw["vocabulary"], "config.vocabulary")
    max_buffer_s = raw.get("max_buffer_s", 300.0)
    if not isinstance(max_buffer_s, int | float) or isinstance(max_buffer_s, bool) or max_buffer_s <= 0:
        raise ConfigError("config.max_buffer_s: expected a positive number of seconds", "invalid_config")
    reconnect = raw.get("reconnect", True)
    if not isinstance(reconnect, bool):
        raise ConfigError("config.reconnect: expected True or False", "invalid_config")
    return StreamingConfig(wire, rate, encoding.upper(), float(max_buffer_s), reconnect)


def participant_spec(raw: Any, where: str) -> dict[str, Any]:
    """Check a meeting participant (`id`, optional `language`, `offset_s`); their wire spec."""
    check_keys(raw, PARTICIPANT_KEYS, where)
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        raise ConfigError(f"{where}.id: expected a non-empty string", "invalid_config")
    wire: dict[str, Any] = {"id": raw["id"]}
    if raw.get("language") is not None:
        wire["language"] = raw["language"]
    if raw.get("offset_s") is not None:
        wire["offsetS"] = raw["offset_s"]
    return wire


def meeting_config(raw: Mapping[str, Any]) -> StreamingConfig:
    """Check a meeting config; its `wire` is the `start_meeting` config."""
    check_keys(raw, MEETING_KEYS, "config")
    stream = streaming_config({k: raw[k] for k in _MEETING_STREAM_KEYS if k in raw})
    wire = dict(stream.wire)
    if raw.get("meeting_id") is not None:
        wire["meetingId"] = raw["meeting_id"]
    people = raw.get("participants", [])
    if not isinstance(people, list | tuple):
        raise ConfigError("config.participants: expected a list", "invalid_config")
    wire["participants"] = [participant_spec(p, f"config.participants[{i}]") for i, p in enumerate(people)]
    return replace(stream, wire=wire)
