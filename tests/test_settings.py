"""settings.toml, environment overrides and start-up errors."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, load_settings, speech_dir

REPO = Path(__file__).resolve().parents[1]


def test_settings_toml_lists_every_setting_with_its_default() -> None:
    shipped = tomllib.loads((REPO / "settings.toml").read_text())
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        values = getattr(defaults, section.name)
        for f in dataclasses.fields(values):
            if f.name == "registrations":
                continue  # an optional array of tables, shown commented out
            assert f.name in shipped[section.name], f"settings.toml lacks {section.name}.{f.name}"
            assert shipped[section.name][f.name] == getattr(values, f.name), f"{section.name}.{f.name}"


def test_environment_overrides_any_key() -> None:
    env = {"HEARSAY_HTTP_PORT": "8081", "HEARSAY_SIP_ENABLED": "false", "HEARSAY_ASR_MODEL": "mini",
           "HEARSAY_DIALPLANS_DIR": "/etc/hearsay/dialplans", "HEARSAY_AUTH_API_KEYS": '["k1","k2"]',
           "HEARSAY_VAD_THRESHOLD": "0.6"}
    s = load_settings(REPO / "settings.toml", environ=env)
    assert (s.http.port, s.sip.enabled, s.dialplans.dir) == (8081, False, "/etc/hearsay/dialplans")
    assert s.auth.api_keys == ["k1", "k2"] and s.vad.threshold == 0.6


@pytest.mark.parametrize("env,message", [
    ({"HEARSAY_HTTP_PORTT": "1"}, "unknown setting http.portt"),
    ({"HEARSAY_NOPE_X": "1"}, "HEARSAY_NOPE_X: unknown settings section"),
    ({"HEARSAY_HTTP_PORT": "eighty"}, "HEARSAY_HTTP_PORT: expected an integer"),
    ({"HEARSAY_SIP_ENABLED": "maybe"}, "HEARSAY_SIP_ENABLED: expected true or false"),
    ({"HEARSAY_LOG_FORMAT": "xml"}, "log.format"),
    ({"HEARSAY_VAD_THRESHOLD": "1.5"}, "vad.threshold"),
    ({"HEARSAY_TURN_INCOMPLETE_THRESHOLD": "0.95"}, "turn.incomplete_threshold: must not be above"),
    ({"HEARSAY_TURN_UNSURE_SILENCE_MS": "100"}, "turn.unsure_silence_ms"),
    ({"HEARSAY_TURN_NUMBER_SILENCE_MS": "-5"}, "turn.number_silence_ms"),
    ({"HEARSAY_TURN_PROBE_TRIM_MS": "500"}, "turn.probe_trim_ms"),
    ({"HEARSAY_ASR_MALLOC_ARENAS": "-1"}, "asr.malloc_arenas: must not be negative"),
])
def test_bad_environment_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(REPO / "settings.toml", environ=env)


def test_bad_file_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('[http]\nport = "x"\n')
    with pytest.raises(SettingsError, match="http.port: expected an integer"):
        load_settings(tmp_path / "s.toml", environ={})
    (tmp_path / "s.toml").write_text("[asr]\nmodle = 'mini'\n")
    with pytest.raises(SettingsError, match="unknown setting asr.modle"):
        load_settings(tmp_path / "s.toml", environ={})
    (tmp_path / "s.toml").write_text("[asr\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(tmp_path / "s.toml", environ={})


def test_the_speech_directory_is_beside_the_repository_unless_the_environment_says() -> None:
    assert speech_dir({}) == REPO.parent / "shared" / "speech"
    assert speech_dir({"HEARSAY_SPEECH_DIR": "/data/clips"}) == Path("/data/clips")
    # not a setting: the service starts with it set
    assert load_settings(REPO / "settings.toml", environ={"HEARSAY_SPEECH_DIR": "/data/clips"}) == Settings()


@pytest.mark.process
def test_serve_refuses_to_start_on_a_bad_setting() -> None:
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "app", "serve"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HEARSAY_HTTP_PORT": "nope"})
    assert proc.returncode != 0
    assert "HEARSAY_HTTP_PORT" in proc.stderr
