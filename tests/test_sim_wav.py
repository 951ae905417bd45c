"""The simulator's WAV reader: what a Twilio call would carry for a file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from app.pipeline.decode import decode
from app.pipeline.types import Encoding
from app.sim.wav import read_wav_mulaw


def write_wav(path: Path, body: bytes, *, tag: int, channels: int, rate: int, bits: int) -> Path:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return path


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_8khz_mulaw_is_sent_byte_for_byte(tmp_path: Path) -> None:
    body = bytes(range(256)) * 40
    path = write_wav(tmp_path / "ulaw.wav", body, tag=7, channels=1, rate=8000, bits=8)
    assert read_wav_mulaw(path) == body


def test_16khz_pcm_becomes_8khz_mulaw_of_the_same_sound(tmp_path: Path) -> None:
    pcm = (tone(16000) * 32767).astype("<i2").tobytes()
    path = write_wav(tmp_path / "pcm.wav", pcm, tag=1, channels=1, rate=16000, bits=16)
    mulaw = read_wav_mulaw(path)
    assert len(mulaw) == 8000
    heard = decode(mulaw, Encoding.MULAW)
    expected = tone(8000)
    assert np.corrcoef(heard[100:-100], expected[100:-100])[0, 1] > 0.99


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    left = (tone(8000) * 32767).astype("<i2")
    both = np.stack([left, left], axis=1).reshape(-1).astype("<i2").tobytes()
    path = write_wav(tmp_path / "stereo.wav", both, tag=1, channels=2, rate=8000, bits=16)
    assert len(read_wav_mulaw(path)) == 8000


def test_unsupported_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    float_wav = write_wav(tmp_path / "float.wav", b"\0" * 64, tag=3, channels=1, rate=8000, bits=32)
    with pytest.raises(ValueError, match="unsupported WAV format 3"):
        read_wav_mulaw(float_wav)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(ValueError, match="not a WAV"):
        read_wav_mulaw(text)
