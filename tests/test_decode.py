"""G.711 and PCM decoding: exact tables, round trips, and bad input."""

import numpy as np
import pytest

from app.pipeline.decode import ALAW_TO_PCM16, MULAW_TO_PCM16, decode, decode_pcm16, encode
from app.pipeline.errors import AudioFormatError
from app.pipeline.types import Encoding


def test_mulaw_table_matches_g711_reference_points() -> None:
    # ITU-T G.711: 0xFF and 0x7F are the two zeros, 0x00 / 0x80 the extremes.
    assert MULAW_TO_PCM16[0xFF] == 0 and MULAW_TO_PCM16[0x7F] == 0
    assert MULAW_TO_PCM16[0x00] == -32124 and MULAW_TO_PCM16[0x80] == 32124


def test_alaw_table_matches_g711_reference_points() -> None:
    assert ALAW_TO_PCM16[0xD5] == 8 and ALAW_TO_PCM16[0x55] == -8
    assert ALAW_TO_PCM16[0xAA] == 32256 and ALAW_TO_PCM16[0x2A] == -32256


@pytest.mark.parametrize("encoding", [Encoding.MULAW, Encoding.ALAW])
def test_every_g711_code_survives_decode_then_encode(encoding: Encoding) -> None:
    codes = bytes(range(256))
    assert encode(decode(codes, encoding), encoding) == codes or (
        # mu-law has two codes for zero (0x7F and 0xFF); they may map to one another
        encoding is Encoding.MULAW
        and np.array_equal(decode(encode(decode(codes, encoding), encoding), encoding), decode(codes, encoding))
    )


@pytest.mark.parametrize("encoding", [Encoding.MULAW, Encoding.ALAW])
def test_speech_level_signal_round_trips_within_g711_step(encoding: Encoding) -> None:
    t = np.arange(8000) / 8000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = decode(encode(x, encoding), encoding)
    snr = 10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2))
    assert snr > 30  # G.711 gives about 38 dB on a full-scale-ish tone


def test_linear16_is_little_endian_and_exact() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768], dtype="<i2")
    assert np.array_equal(decode_pcm16(pcm.tobytes(), Encoding.LINEAR16), pcm)
    assert encode(decode(pcm.tobytes(), Encoding.LINEAR16), Encoding.LINEAR16) == pcm.tobytes()


def test_frames_of_any_size_decode_the_same_as_whole() -> None:
    codes = bytes(np.random.default_rng(0).integers(0, 256, 999, dtype=np.uint8))
    pieces = [codes[i : i + n] for i, n in zip(range(0, 999, 37), [37] * 27, strict=True)]
    joined = np.concatenate([decode(p, Encoding.MULAW) for p in pieces])
    assert np.array_equal(joined, decode(codes, Encoding.MULAW))


def test_odd_length_linear16_is_refused_with_the_byte_count() -> None:
    with pytest.raises(AudioFormatError, match="even number of bytes, got 3"):
        decode(b"\x00\x01\x02", Encoding.LINEAR16)


def test_empty_payload_decodes_to_nothing() -> None:
    assert len(decode(b"", Encoding.MULAW)) == 0
