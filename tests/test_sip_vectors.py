"""sip/vectors.py: a media frame's bytes read straight from pjsua2's vector are SWIG's bytes."""

import os

import pjsua2 as pj
import pytest

from sip.vectors import read_storage, vector_reader


@pytest.mark.parametrize("size", [0, 1, 160, 320, 4096])
def test_read_storage_gives_the_vectors_bytes(size: int) -> None:
    payload = os.urandom(size)
    vector = pj.ByteVector(payload)
    assert read_storage(vector) == bytes(vector) == payload


def test_a_frames_buffer_reads_the_same_through_the_frame() -> None:
    frame = pj.MediaFrame()
    payload = os.urandom(320)
    frame.buf = pj.ByteVector(payload)
    assert vector_reader()(frame.buf) == payload


def test_this_build_takes_the_fast_path() -> None:
    # pjsua2-python's wheels use libstdc++; if this fails, frames are still read correctly,
    # only about 100 times slower (and a warning says so).
    assert vector_reader() is read_storage
