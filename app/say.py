"""`python -m app say "TEXT" -o FILE.wav`: text spoken by a talk-back voice, into a WAV file.

For making test clips and hearing a voice before a caller does. The text goes through the same
`Speaker` that talk-back uses; with `--rate` the audio is resampled (as a phone call would carry
it at 8000). Exit codes: 0 written, 2 bad input (empty text, unknown or missing voice, a rate
out of range, a path that cannot be written), 1 any other error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from app.pipeline import MAX_RATE, MIN_RATE
from app.pipeline.resample import resample_whole
from app.settings import SettingsError, load_settings
from app.talkback.tts import Speaker, SynthesisError, TtsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="what to say")
    parser.add_argument("-o", "--output", required=True, help="WAV file to write (16-bit mono)")
    parser.add_argument("--voice", help="voice name: joe or espeak (default: [talkback] voice)")
    parser.add_argument("--rate", type=int, help=f"sample rate of the file, {MIN_RATE}-{MAX_RATE} Hz "
                                                 "(default: the voice's own)")
    parser.add_argument("--config", default="settings.toml", help="settings file (default: settings.toml)")


def run(args: argparse.Namespace) -> int:
    if not args.text.strip():
        return _fail(2, "nothing to say: the text is empty")
    if args.rate is not None and not MIN_RATE <= args.rate <= MAX_RATE:
        return _fail(2, f"--rate {args.rate} is outside {MIN_RATE}-{MAX_RATE} Hz")
    output = Path(args.output)
    try:
        # Opened first: a path that cannot be written fails before the voice loads.
        file = output.open("wb")
    except OSError as exc:
        return _fail(2, f"cannot write {output}: {exc.strerror or exc}")
    with file:
        code = _say(args, file)
    if code != 0:
        output.unlink(missing_ok=True)
    return code


def _say(args: argparse.Namespace, file: BinaryIO) -> int:
    try:
        config = args.config if Path(args.config).is_file() else None
        settings = load_settings(config).talkback
    except SettingsError as exc:
        return _fail(1, str(exc))
    try:
        speaker = Speaker.load(settings)
    except TtsError as exc:  # the configured voice cannot speak here
        return _fail(2, str(exc))
    try:
        rate = speaker.sample_rate(args.voice)
        pcm = asyncio.run(_render(speaker, args.text, args.voice))
    except SynthesisError as exc:
        return _fail(1, str(exc))
    except TtsError as exc:  # an unknown voice, or one not installed here
        return _fail(2, str(exc))
    finally:
        speaker.close()
    if args.rate is not None and args.rate != rate:
        samples = resample_whole(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, rate, args.rate)
        pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
        rate = args.rate
    try:
        with wave.open(file, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm)
    except OSError as exc:
        return _fail(1, f"cannot write {args.output}: {exc.strerror or exc}")
    print(f"{args.output}: {len(pcm) / 2 / rate:.2f} s at {rate} Hz", file=sys.stderr)
    return 0


async def _render(speaker: Speaker, text: str, voice: str | None) -> bytes:
    return b"".join([pcm async for pcm, _rate in speaker.synthesize(text, voice)])


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
