"""What an assistant can ask for: the `actions` of a webhook answer, validated at the edge.

    {"actions": [{"say": "Your balance is four dollars.", "voice": "joe", "interruptible": true},
                 {"play": "https://example.com/hold.wav"}, {"pause": 1.5},
                 {"transfer": "sip:200@pbx.example.com"}, {"hangup": true}]}

`parse_actions(body)` returns the valid actions, in order, and one `ActionProblem` per action
it cannot carry out; each problem names the action's index and field ("actions[2].pause:
expected seconds from 0 to 60"), and becomes an `action.error` event. A body without
`actions` asks for nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.calls.media import check_sip_uri

MAX_ACTIONS = 32  # per answer
MAX_SAY_CHARS = 2000
MAX_PAUSE_S = 60.0


@dataclass(frozen=True, slots=True)
class Say:
    text: str
    voice: str | None = None
    interruptible: bool = True


@dataclass(frozen=True, slots=True)
class Play:
    source: str  # an http(s) URL, or a path under [talkback] media_dir
    interruptible: bool = True


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class Transfer:
    target: str  # a SIP URI


Action = Say | Play | Pause | Hangup | Transfer


@dataclass(frozen=True, slots=True)
class ActionProblem:
    """Action `index` (as received: `action`) cannot be carried out; `message` says why."""

    index: int
    action: Any
    message: str


@dataclass(frozen=True, slots=True)
class Numbered:
    """A valid action and its index in the answer (for events about it)."""

    index: int
    action: Action
    raw: Any


_VERBS = ("say", "play", "pause", "hangup", "transfer")
_OPTIONS = {"say": {"voice", "interruptible"}, "play": {"interruptible"}}


def parse_actions(body: Any) -> tuple[list[Numbered], list[ActionProblem]]:
    """The valid actions of an answer body, in order, and the problems with the others."""
    if not isinstance(body, dict) or "actions" not in body:
        return [], []
    actions = body["actions"]
    if not isinstance(actions, list):
        return [], [ActionProblem(-1, actions, f"actions: expected a list, got {type(actions).__name__}")]
    valid: list[Numbered] = []
    problems: list[ActionProblem] = []
    for index, raw in enumerate(actions):
        if index >= MAX_ACTIONS:
            problems.append(ActionProblem(index, raw, f"actions[{index}]: more than {MAX_ACTIONS} actions "
                                                      "in one answer; the rest are ignored"))
            break
        try:
            valid.append(Numbered(index, _parse(raw, f"actions[{index}]"), raw))
        except ValueError as exc:
            problems.append(ActionProblem(index, raw, str(exc)))
    return valid, problems


def _parse(raw: Any, where: str) -> Action:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object like {{\"say\": \"...\"}}, got {_short(raw)}")
    verbs = [v for v in _VERBS if v in raw]
    if len(verbs) != 1:
        named = ", ".join(verbs) if verbs else "none"
        raise ValueError(f"{where}: expected exactly one of {', '.join(_VERBS)} (found {named})")
    verb = verbs[0]
    extra = sorted(set(raw) - {verb} - _OPTIONS.get(verb, set()))
    if extra:
        raise ValueError(f"{where}.{extra[0]}: unknown option for {verb}")
    value = raw[verb]
    if verb == "say":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}.say: expected non-empty text, got {_short(value)}")
        if len(value) > MAX_SAY_CHARS:
            raise ValueError(f"{where}.say: {len(value)} characters, at most {MAX_SAY_CHARS}")
        voice = raw.get("voice")
        if voice is not None and (not isinstance(voice, str) or not voice):
            raise ValueError(f"{where}.voice: expected a voice name, got {_short(voice)}")
        return Say(value.strip(), voice, _flag(raw, where))
    if verb == "play":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}.play: expected a URL or a file name, got {_short(value)}")
        return Play(value.strip(), _flag(raw, where))
    if verb == "pause":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not 0 <= value <= MAX_PAUSE_S:
            raise ValueError(f"{where}.pause: expected seconds from 0 to {MAX_PAUSE_S:g}, got {_short(value)}")
        return Pause(float(value))
    if verb == "hangup":
        if value is not True:
            raise ValueError(f"{where}.hangup: expected true, got {_short(value)}")
        return Hangup()
    try:
        check_sip_uri(value)
    except ValueError:
        raise ValueError(f"{where}.transfer: expected a SIP URI (sip:user@host), got {_short(value)}") from None
    return Transfer(value)


def _flag(raw: dict[str, Any], where: str) -> bool:
    value = raw.get("interruptible", True)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.interruptible: expected true or false, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."
