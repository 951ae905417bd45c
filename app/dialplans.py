"""Dialplans: which calls a route takes and where their words go (`dialplans/*.toml`).

A dialplan file looks like this (the keys users rely on are listed in docs/architecture.md):

    name = "support"
    [match]                          # one list of fnmatch globs per call source; "*" = any
    sip_user = ["100", "support*"]   # SIP: the Request-URI user part (also spelled `sip`)
    twilio_to = ["+15550001111"]     # Twilio: the To number (also spelled `twilio`)
    [webhook]
    url = "https://bot.example.com/hearsay"   # empty: events are logged and kept in the outbox
    secret = "whsec_..."                      # HMAC key for Hearsay-Signature
    quality_warnings = false                  # also POST quality.warning events (docs/quality.md)
    [recognition]
    language = "en"
    model = "mini"
    interim_results = false          # also POST utterance.partial events
    agent_track = false              # Twilio only: also transcribe the outbound track as "agent"
    [talkback]
    greeting = "Hello, how can I help?"   # spoken when the call is answered (or:)
    greeting_play = "welcome.wav"         # played when the call is answered (URL or media_dir file)
    voice = "joe"                         # the voice of `say` (default: [talkback] voice)

`Dialplans.load(directory)` reads every `*.toml` in file-name order and validates it here, at
the edge: an unknown key, a missing table or a value of the wrong type raises
`DialplanError` whose message starts with the file and the key ("dialplans/x.toml:
match.sip_user: ..."). Matching is first match wins, in file-name order:
`Dialplans.match(source, key)` with the call's source ("sip", "twilio") and its routing key
(the SIP user, the Twilio To number). A new ingress adds its source to `MATCH_KEYS`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

# `[match]` key -> the call source (`app.calls.CallSource` value) whose routing key it globs.
MATCH_KEYS: dict[str, str] = {
    "sip": "sip",
    "sip_user": "sip",  # the documented spelling
    "twilio": "twilio",
    "twilio_to": "twilio",  # the documented spelling
}


class DialplanError(ValueError):
    """A dialplan file is unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Dialplan:
    """One route: the calls it takes (`match`: source -> globs) and where events go."""

    name: str
    file: Path = field(default_factory=Path)
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    webhook_url: str = ""
    webhook_secret: str = ""
    language: str = "en"
    model: str = "mini"
    interim_results: bool = False
    quality_warnings: bool = False
    transcribe_agent: bool = False
    greeting: str = ""
    greeting_play: str = ""
    voice: str = ""

    def greeting_actions(self) -> dict[str, list[dict[str, str]]] | None:
        """The greeting as an answer body (`{"actions": [...]}`), or None when there is none."""
        actions: list[dict[str, str]] = []
        if self.greeting_play:
            actions.append({"play": self.greeting_play})
        if self.greeting:
            actions.append({"say": self.greeting, **({"voice": self.voice} if self.voice else {})})
        return {"actions": actions} if actions else None

    def matches(self, source: str, key: str) -> bool:
        """Whether a call from `source` with routing `key` matches one of this route's globs."""
        return any(fnmatchcase(key, pattern) for pattern in self.match.get(source, ()))

    @property
    def is_catch_all(self) -> bool:
        """Whether this route takes any call of some kind (a "*" pattern)."""
        return any("*" in patterns for patterns in self.match.values())


class Dialplans:
    """An immutable, ordered set of dialplans; the first match wins, in file-name order."""

    __slots__ = ("_by_name", "_plans")

    def __init__(self, plans: Iterable[Dialplan] = ()) -> None:
        self._plans: tuple[Dialplan, ...] = tuple(plans)
        by_name: dict[str, Dialplan] = {}
        for plan in self._plans:
            if plan.name in by_name:
                first = by_name[plan.name].file
                raise DialplanError(f"{plan.file}: name: {plan.name!r} is already used by {first}")
            by_name[plan.name] = plan
        self._by_name = by_name

    @classmethod
    def load(cls, directory: str | Path, *, language: str = "en", model: str = "mini") -> Dialplans:
        """Read and validate every `*.toml` in `directory`, in file-name order.

        `language` and `model` are the defaults for files that leave them out (normally the
        `[asr]` settings). Blocking file I/O: call it at start-up or from an executor.
        """
        root = Path(directory)
        if not root.is_dir():
            raise DialplanError(f"{root}: dialplan directory not found")
        files = sorted(p for p in root.glob("*.toml") if p.is_file())
        return cls(load_file(path, language=language, model=model) for path in files)

    def match(self, source: str, key: str) -> Dialplan | None:
        """The first dialplan (file-name order) whose globs for `source` match `key`."""
        return next((p for p in self._plans if p.matches(source, key)), None)

    def by_name(self, name: str) -> Dialplan | None:
        """The dialplan called `name`, if any."""
        return self._by_name.get(name)

    @property
    def default(self) -> Dialplan | None:
        """The plan named "default", else the first catch-all plan, else None."""
        named = self._by_name.get("default")
        if named is not None:
            return named
        return next((p for p in self._plans if p.is_catch_all), None)

    def __iter__(self) -> Iterator[Dialplan]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)

    def __repr__(self) -> str:
        return f"Dialplans({[p.name for p in self._plans]!r})"


_TABLES: dict[str, frozenset[str]] = {
    "match": frozenset(MATCH_KEYS),
    "webhook": frozenset({"url", "secret", "quality_warnings"}),
    "recognition": frozenset({"language", "model", "interim_results", "agent_track"}),
    "talkback": frozenset({"greeting", "greeting_play", "voice"}),
}


def load_file(path: str | Path, *, language: str = "en", model: str = "mini") -> Dialplan:
    """Read and validate one dialplan file (blocking file I/O)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DialplanError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DialplanError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise DialplanError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, path, language=language, model=model)


def parse(raw: Mapping[str, Any], path: Path, *, language: str = "en", model: str = "mini") -> Dialplan:
    """Validate a decoded dialplan table; errors name `path` and the offending key."""
    unknown = sorted(set(raw) - {"name", *_TABLES})
    if unknown:
        raise DialplanError(f"{path}: {unknown[0]}: unknown key")
    tables: dict[str, Mapping[str, Any]] = {}
    for table, keys in _TABLES.items():
        value = raw.get(table, {})
        if not isinstance(value, Mapping):
            raise DialplanError(f"{path}: {table}: expected a table, got {value!r}")
        extra = sorted(set(value) - keys)
        if extra:
            raise DialplanError(f"{path}: {table}.{extra[0]}: unknown key")
        tables[table] = value

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise DialplanError(f"{path}: name: expected a non-empty string, got {name!r}")
    match, webhook, recognition = tables["match"], tables["webhook"], tables["recognition"]
    talkback = tables["talkback"]
    url = _string(webhook, "url", "", path, "webhook")
    if url and not url.startswith(("http://", "https://")):
        raise DialplanError(f"{path}: webhook.url: expected an http:// or https:// URL, got {url!r}")
    plan = Dialplan(
        name=name,
        file=path,
        match=_match(match, path),
        webhook_url=url,
        webhook_secret=_string(webhook, "secret", "", path, "webhook"),
        quality_warnings=_bool(webhook, "quality_warnings", path, "webhook"),
        language=_string(recognition, "language", language, path, "recognition"),
        model=_string(recognition, "model", model, path, "recognition"),
        interim_results=_bool(recognition, "interim_results", path),
        transcribe_agent=_bool(recognition, "agent_track", path),
        greeting=_string(talkback, "greeting", "", path, "talkback"),
        greeting_play=_string(talkback, "greeting_play", "", path, "talkback"),
        voice=_string(talkback, "voice", "", path, "talkback"),
    )
    if not plan.language:
        raise DialplanError(f"{path}: recognition.language: must not be empty")
    if not plan.model:
        raise DialplanError(f"{path}: recognition.model: must not be empty")
    return plan


def _match(table: Mapping[str, Any], path: Path) -> dict[str, tuple[str, ...]]:
    by_source: dict[str, tuple[str, ...]] = {}
    for key in sorted(table):
        source = MATCH_KEYS[key]
        by_source[source] = by_source.get(source, ()) + _patterns(table, key, path)
    return by_source


def _patterns(table: Mapping[str, Any], key: str, path: Path) -> tuple[str, ...]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DialplanError(f"{path}: match.{key}: expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def _string(table: Mapping[str, Any], key: str, default: str, path: Path, section: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise DialplanError(f"{path}: {section}.{key}: expected a string, got {value!r}")
    return value.strip()


def _bool(table: Mapping[str, Any], key: str, path: Path, where: str = "recognition") -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise DialplanError(f"{path}: {where}.{key}: expected true or false, got {value!r}")
    return value
