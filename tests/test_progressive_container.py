"""`app/progressive/container.py`: files decoded while their bytes arrive, split anywhere,
in every container the progressive endpoint promises (real files made with PyAV)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from media_helpers import FORMATS, encode, join

from app.audiofile import AudioFileError
from app.progressive.container import ChunkedFile, decode


def decode_in_pieces(data: bytes, piece: int) -> tuple[int, int]:
    """Feed `data` in `piece`-byte chunks to a decoder thread; (samples decoded before the
    last chunk arrived, samples in all)."""
    file = ChunkedFile(len(data))
    counts: list[int] = []
    errors: list[BaseException] = []

    def on_pcm(block: np.ndarray) -> None:
        counts.append(len(block))

    def work() -> None:
        try:
            decode(file, 16000, on_pcm)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    for i in range(0, len(data) - piece, piece):
        file.append(data[i:i + piece])
    deadline = time.monotonic() + 30
    while not (file.starved or errors) and time.monotonic() < deadline:
        time.sleep(0.005)  # until the decoder has taken all it can before the file ends
    before_end = sum(counts)
    file.append(data[(len(data) - 1) // piece * piece:])
    file.end()
    thread.join(30)
    if errors:
        raise errors[0]
    return before_end, sum(counts)


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_container_decodes_whole_from_chunks_split_anywhere(kind: str) -> None:
    pcm, _ = join(["jfk"], gap_s=0.0)
    data = encode(pcm, kind)
    before_end, total = decode_in_pieces(data, 1009)  # a prime: boundaries fall anywhere in frames
    # Codecs add or trim a frame or two of padding (mp3's encoder delay, AAC priming).
    assert total == pytest.approx(len(pcm), abs=2400), kind
    if kind == "m4a-index-at-end":
        assert before_end == 0  # nothing can be decoded before the index, which comes last
    else:
        assert before_end > len(pcm) / 2, "decoding waited for the end of the file"


def test_a_file_that_is_not_audio_is_refused() -> None:
    with pytest.raises(AudioFileError):
        decode_in_pieces(b"this is not an audio file, just some text. " * 200, 512)


def test_bytes_past_the_limit_are_refused() -> None:
    from app.progressive.container import FileTooLarge

    file = ChunkedFile(10)
    file.append(b"12345")
    with pytest.raises(FileTooLarge):
        file.append(b"123456")
