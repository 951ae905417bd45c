"""Settings: `settings.toml` plus `HEARSAY_<SECTION>_<KEY>` environment overrides.

This is the only module that reads `os.environ`. Every section is a frozen dataclass whose
field defaults are the documented defaults (`settings.toml` mirrors them, and a test keeps
the two in step). An unknown key or a value of the wrong type raises `SettingsError` naming
the key, which stops start-up.

`speech_dir()` is not a setting: it tells the tests and benchmarks where the speech clips are
(`HEARSAY_SPEECH_DIR`), and the service never reads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting is unknown or has a bad value; the message names the key."""


SPEECH_DIR_VARIABLE = "HEARSAY_SPEECH_DIR"
# HEARSAY_* variables that are not `HEARSAY_<SECTION>_<KEY>` settings.
_NOT_SETTINGS = frozenset({SPEECH_DIR_VARIABLE})


def speech_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory of speech clips (`manifest.tsv` and the WAVs) that the tests and the
    benchmarks play: `$HEARSAY_SPEECH_DIR` when set, else `shared/speech` beside the repository."""
    env = os.environ if environ is None else environ
    if env.get(SPEECH_DIR_VARIABLE):
        return Path(env[SPEECH_DIR_VARIABLE]).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "speech"


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str = ""


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class AsrSettings:
    model: str = "mini"
    language: str = "en"
    compute_type: str = "int8"
    cpu_threads: int = 1
    workers: int = 2
    beam_size: int = 1
    interim_interval_ms: int = 1000
    context_gap_ms: int = 0
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    max_repeats: int = 4
    word_timestamps: bool = False
    model_cache_dir: str = "var/models"
    max_live_calls: int = 32
    busy_late_ms: int = 300
    malloc_arenas: int = 2


@dataclass(frozen=True, slots=True)
class VadSettings:
    threshold: float = 0.5
    min_speech_ms: int = 200
    min_silence_ms: int = 350
    speech_pad_ms: int = 200
    preroll_ms: int = 300
    max_utterance_s: float = 15.0


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """End-of-turn detection (docs/engine.md): what a pause means."""

    model: str = "smart-turn-v3.2"
    complete_threshold: float = 0.7
    sentence_end_threshold: float = 0.85
    incomplete_threshold: float = 0.05
    unsure_silence_ms: int = 600
    max_silence_ms: int = 1200
    probe_trim_ms: int = 100
    number_silence_ms: int = 1500


@dataclass(frozen=True, slots=True)
class DialplanSettings:
    dir: str = "dialplans"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    outbox: str = "var/outbox.sqlite3"
    timeout_s: float = 10.0
    max_attempts: int = 15
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 300.0
    keep_delivered_days: float = 7.0


@dataclass(frozen=True, slots=True)
class StreamSettings:
    max_message_bytes: int = 1_048_576
    max_session_s: int = 3600
    max_sessions: int = 64


@dataclass(frozen=True, slots=True)
class QualitySettings:
    """Audio-quality warnings (app.pipeline.quality.QualityThresholds takes these fields)."""

    low_volume_dbfs: float = -40.0
    high_noise_snr_db: float = 10.0
    clipping_ratio: float = 0.01
    low_confidence: float = 0.5
    fast_speech_wpm: float = 220.0
    warning_interval_s: float = 10.0
    window_s: float = 10.0
    min_audio_s: float = 2.0


@dataclass(frozen=True, slots=True)
class ProgressiveSettings:
    max_sessions: int = 8
    max_file_bytes: int = 1_073_741_824
    keep_s: int = 3600


@dataclass(frozen=True, slots=True)
class AuthSettings:
    api_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    auth_token: str = ""


@dataclass(frozen=True, slots=True)
class SipRegistration:
    registrar: str = ""
    username: str = ""
    password: str = ""
    realm: str = "*"
    expiry_s: int = 300


@dataclass(frozen=True, slots=True)
class SipSettings:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 5060
    transports: list[str] = field(default_factory=lambda: ["udp", "tcp"])
    rtp_port_start: int = 10000
    rtp_port_count: int = 2000
    codecs: list[str] = field(default_factory=lambda: ["PCMU", "PCMA", "G722"])
    max_calls: int = 4
    rtp_timeout_s: int = 30
    allow_from: list[str] = field(default_factory=list)
    auth_username: str = ""
    auth_password: str = ""
    registrations: list[SipRegistration] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TalkbackSettings:
    voice: str = "joe"
    preload_voice: bool = True
    cache_entries: int = 256
    media_dir: str = "media"
    allow_private_urls: bool = False
    fetch_timeout_s: float = 10.0
    max_fetch_bytes: int = 10_485_760
    bargein_min_speech_ms: int = 200
    echo_margin_db: float = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    """All of Hearsay's settings, one attribute per `settings.toml` section."""

    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    asr: AsrSettings = field(default_factory=AsrSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    turn: TurnSettings = field(default_factory=TurnSettings)
    dialplans: DialplanSettings = field(default_factory=DialplanSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    progressive: ProgressiveSettings = field(default_factory=ProgressiveSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    twilio: TwilioSettings = field(default_factory=TwilioSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    talkback: TalkbackSettings = field(default_factory=TalkbackSettings)


_CHOICES: dict[str, tuple[str, ...]] = {
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("text", "json"),
    "asr.compute_type": ("int8", "int8_float32", "float32", "int16", "default"),
}
_POSITIVE = {
    "http.port", "asr.cpu_threads", "asr.workers", "asr.beam_size", "sip.port",
    "sip.max_calls", "stream.max_message_bytes", "stream.max_sessions", "webhooks.max_attempts",
    "progressive.max_sessions", "progressive.max_file_bytes", "progressive.keep_s",
    "quality.warning_interval_s", "quality.window_s",
}


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (if given), apply `HEARSAY_*` overrides from `environ`, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SettingsError(f"settings file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    env = os.environ if environ is None else environ
    _apply_env(raw, env)
    settings = _build(Settings, raw, "")
    _validate(settings)
    return settings


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    for name, value in env.items():
        if not name.startswith("HEARSAY_") or name in _NOT_SETTINGS:
            continue
        rest = name[len("HEARSAY_"):].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            raise SettingsError(f"{name}: unknown settings section")
        key = rest[len(section) + 1:]
        raw.setdefault(section, {})[key] = _parse_env_value(name, value, _field_type(section, key, name))


def _field_type(section: str, key: str, origin: str) -> Any:
    cls = typing.get_type_hints(Settings)[section]
    hints = typing.get_type_hints(cls)
    if key not in hints:
        raise SettingsError(f"{origin}: unknown setting {section}.{key}")
    return hints[key]


def _parse_env_value(name: str, value: str, typ: Any) -> Any:
    if typ is bool:
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: expected true or false, got {value!r}")
    if typing.get_origin(typ) is list:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return [v.strip() for v in value.split(",") if v.strip()]
    if typ is int:
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{name}: expected an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {value!r}") from None
    return value


def _build(cls: Any, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "settings"
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise SettingsError(f"unknown setting {prefix}{unknown[0]}")
    kwargs = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in raw.items()}
    return cls(**kwargs)


def _coerce(typ: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, key + ".")
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise SettingsError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(typ, types.UnionType):
        raise SettingsError(f"{key}: unsupported type")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise SettingsError(f"{key}: expected true or false, got {value!r}")
    if typ in (int, str) and (type(value) is not typ):
        kind = "an integer" if typ is int else "a string"
        raise SettingsError(f"{key}: expected {kind}, got {value!r}")
    if typ is float and not isinstance(value, float):
        raise SettingsError(f"{key}: expected a number, got {value!r}")
    return value


def _validate(settings: Settings) -> None:
    for dotted, allowed in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(settings, section), key)
        if value not in allowed:
            raise SettingsError(f"{dotted}: {value!r} is not one of {', '.join(allowed)}")
    for dotted in _POSITIVE:
        section, key = dotted.split(".")
        if getattr(getattr(settings, section), key) <= 0:
            raise SettingsError(f"{dotted}: must be positive")
    vad = settings.vad
    if not 0.0 < vad.threshold < 1.0:
        raise SettingsError("vad.threshold: must be between 0 and 1")
    for name in ("min_speech_ms", "min_silence_ms", "speech_pad_ms", "preroll_ms"):
        if getattr(vad, name) < 0:
            raise SettingsError(f"vad.{name}: must not be negative")
    if vad.max_utterance_s < 1.0:
        raise SettingsError("vad.max_utterance_s: must be at least 1 second")
    if settings.asr.context_gap_ms < 0:
        raise SettingsError("asr.context_gap_ms: must not be negative (0: no context)")
    if settings.asr.busy_late_ms < 0:
        raise SettingsError("asr.busy_late_ms: must not be negative (0: never refuse for it)")
    if settings.asr.malloc_arenas < 0:
        raise SettingsError("asr.malloc_arenas: must not be negative (0: the C library's default)")
    _validate_turn(settings.turn, vad)
    for codec in settings.sip.codecs:
        if codec.upper() not in ("PCMU", "PCMA", "G722"):
            raise SettingsError(f"sip.codecs: unknown codec {codec!r} (PCMU, PCMA, G722)")
    for transport in settings.sip.transports:
        if transport not in ("udp", "tcp"):
            raise SettingsError(f"sip.transports: unknown transport {transport!r} (udp, tcp)")


def _validate_turn(turn: TurnSettings, vad: VadSettings) -> None:
    for name in ("complete_threshold", "sentence_end_threshold", "incomplete_threshold"):
        if not 0.0 <= getattr(turn, name) <= 1.0:
            raise SettingsError(f"turn.{name}: must be between 0 and 1")
    if turn.incomplete_threshold > turn.complete_threshold:
        raise SettingsError("turn.incomplete_threshold: must not be above turn.complete_threshold")
    if not 0 <= turn.probe_trim_ms <= vad.speech_pad_ms:
        raise SettingsError(f"turn.probe_trim_ms: must be between 0 and [vad] speech_pad_ms ({vad.speech_pad_ms})")
    if not vad.min_silence_ms <= turn.unsure_silence_ms <= turn.max_silence_ms:
        raise SettingsError("turn.unsure_silence_ms: must be between [vad] min_silence_ms and turn.max_silence_ms")
    if turn.number_silence_ms and turn.number_silence_ms < vad.min_silence_ms:
        raise SettingsError("turn.number_silence_ms: must be 0 (no such rule) or at least [vad] min_silence_ms")
