"""Dialplans: loading the shipped and user-written route files, matching calls, naming errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.dialplans import Dialplan, DialplanError, Dialplans

REPO = Path(__file__).resolve().parent.parent

SUPPORT = """
name = "support"
[match]
sip_user = ["100", "support*"]
twilio_to = ["+15550001111"]
[webhook]
url = "https://bot.example.com/hearsay"
secret = "whsec_abc"
[recognition]
language = "en"
model = "mini"
interim_results = true
agent_track = true
"""

SALES = """
name = "sales"
[match]
sip_user = ["2??"]
twilio_to = ["+1555222*"]
[webhook]
url = "http://127.0.0.1:9000/hook"
secret = "s2"
"""

CATCH_ALL = """
name = "fallback"
[match]
sip_user = ["*"]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_shipped_default_takes_every_call_and_keeps_events_local() -> None:
    plans = Dialplans.load(REPO / "dialplans")
    default = plans.default
    assert default is not None and default.name == "default"
    assert plans.match("sip", "anything") is default
    assert plans.match("twilio", "+44123") is default
    assert default.webhook_url == ""  # events go to the log and the outbox
    assert default.language == "en" and default.model == "mini" and not default.interim_results


def test_keys_are_read_as_product_md_describes(tmp_path: Path) -> None:
    write(tmp_path, "10-support.toml", SUPPORT)
    plan = Dialplans.load(tmp_path).by_name("support")
    assert plan == Dialplan(
        name="support", file=tmp_path / "10-support.toml", match={"sip": ("100", "support*"), "twilio": ("+15550001111",)},
        webhook_url="https://bot.example.com/hearsay",
        webhook_secret="whsec_abc", language="en", model="mini", interim_results=True,
        transcribe_agent=True,
    )


def test_first_match_wins_in_file_name_order(tmp_path: Path) -> None:
    write(tmp_path, "20-sales.toml", SALES)
    write(tmp_path, "10-support.toml", SUPPORT)
    write(tmp_path, "99-fallback.toml", CATCH_ALL)
    write(tmp_path, "notes.txt", "not a dialplan")
    plans = Dialplans.load(tmp_path)
    assert [p.name for p in plans] == ["support", "sales", "fallback"]
    assert len(plans) == 3
    def match(user: str) -> Dialplan | None:
        return plans.match("sip", user)

    assert (match("100").name, match("support-eu").name, match("250").name) == ("support", "support", "sales")
    assert match("2500").name == "fallback"  # "2??" is exactly three characters
    assert match("1000").name == "fallback"
    assert plans.match("twilio", "+15550001111").name == "support"
    assert plans.match("twilio", "+15552229999").name == "sales"
    assert plans.match("twilio", "+15559999999") is None  # no twilio catch-all: refused
    assert plans.default is not None and plans.default.name == "fallback"


def test_no_catch_all_means_no_default_and_unmatched_calls_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "support.toml", SUPPORT)
    plans = Dialplans.load(tmp_path)
    assert plans.default is None
    assert plans.match("sip", "999") is None
    assert plans.by_name("nope") is None


def test_missing_name_uses_file_name_and_missing_settings_use_defaults(tmp_path: Path) -> None:
    write(tmp_path, "night.toml", '[match]\nsip_user = "9*"\n')
    plan = Dialplans.load(tmp_path, language="de", model="base").by_name("night")
    assert plan is not None
    assert plan.match == {"sip": ("9*",)}
    assert (plan.language, plan.model, plan.webhook_url) == ("de", "base", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\ncolour = "red"\n', "colour: unknown key"),
        ('[match]\nsip_users = ["1"]\n', "match.sip_users: unknown key"),
        ("[match]\nsip_user = [1, 2]\n", "match.sip_user: expected a list of non-empty strings"),
        ('[match]\ntwilio_to = ""\n', "match.twilio_to: expected a list of non-empty strings"),
        ("[recognition]\ninterim_results = \"yes\"\n", "recognition.interim_results: expected true or false"),
        ("[recognition]\nagent_track = 1\n", "recognition.agent_track: expected true or false"),
        ("[webhook]\nquality_warnings = \"on\"\n", "webhook.quality_warnings: expected true or false"),
        ("[webhook]\nurl = 42\n", "webhook.url: expected a string"),
        ('[webhook]\nurl = "ftp://x"\n', "webhook.url: expected an http:// or https:// URL"),
        ('webhook = "http://x"\n', "webhook: expected a table"),
        ("name = 3\n", "name: expected a non-empty string"),
        ('[recognition]\nlanguage = ""\n', "recognition.language: must not be empty"),
        ("name = [\n", "not valid TOML"),
    ],
)
def test_bad_file_is_refused_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "a-good.toml", SUPPORT)
    write(tmp_path, "b-bad.toml", text)
    with pytest.raises(DialplanError) as caught:
        Dialplans.load(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'b-bad.toml'}: ")
    assert expected in message


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "one.toml", SUPPORT)
    write(tmp_path, "two.toml", SUPPORT)
    with pytest.raises(DialplanError, match=r"two\.toml: name: 'support' is already used by .*one\.toml"):
        Dialplans.load(tmp_path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DialplanError, match="dialplan directory not found"):
        Dialplans.load(tmp_path / "nope")


def test_relative_directory_names_the_file_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dialplans").mkdir()
    write(tmp_path / "dialplans", "x.toml", "[match]\nsip_user = 5\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DialplanError) as caught:
        Dialplans.load("dialplans")
    assert str(caught.value).startswith("dialplans/x.toml: match.sip_user: ")


def test_match_keys_are_per_source_and_the_documented_spellings_are_aliases(tmp_path: Path) -> None:
    write(tmp_path, "both.toml", '[match]\nsip = ["1*"]\nsip_user = ["200"]\ntwilio = ["+44*"]\n')
    plans = Dialplans.load(tmp_path)
    plan = plans.by_name("both")
    assert plan is not None and plan.match == {"sip": ("1*", "200"), "twilio": ("+44*",)}
    assert plans.match("sip", "150") is plan and plans.match("sip", "200") is plan
    assert plans.match("twilio", "+4420") is plan
    assert plans.match("twilio", "150") is None  # a key is only matched against its own source
    assert plans.match("stream", "150") is None


def test_every_match_key_names_a_call_source() -> None:
    from app.calls import CallSource
    from app.dialplans import MATCH_KEYS

    assert set(MATCH_KEYS.values()) <= {s.value for s in CallSource}
