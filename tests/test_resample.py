"""The streaming resampler equals whole-signal resampling, at every supported rate."""

import numpy as np
import pytest

from app.pipeline.resample import Resampler, resample_whole


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000])
def test_frame_by_frame_equals_whole_signal(rate: int) -> None:
    rng = np.random.default_rng(rate)
    x = (rng.standard_normal(rate) * 0.1).astype(np.float32)
    whole = resample_whole(x, rate)
    r = Resampler(rate)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 600))
        parts.append(r.process(x[i : i + n]))
        i += n
    parts.append(r.process(np.zeros(0, np.float32), final=True))
    streamed = np.concatenate(parts)
    assert len(streamed) == len(whole) == 16000
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_20ms_telephone_frames_join_without_clicks() -> None:
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    r = Resampler(8000)
    out = np.concatenate([r.process(tone[i : i + 160]) for i in range(0, 8000, 160)])
    expected = 0.5 * np.sin(2 * np.pi * 300 * np.arange(len(out)) / 16000)
    # after the filter settles, every output sample sits on the ideal sine: no boundary clicks
    assert np.max(np.abs(out[200:] - expected[200:])) < 1e-3


def test_no_delay_tone_keeps_its_phase() -> None:
    t = np.arange(8000) / 8000
    y = resample_whole(np.sin(2 * np.pi * 440 * t).astype(np.float32), 8000)
    ref = np.sin(2 * np.pi * 440 * np.arange(len(y)) / 16000)
    assert np.max(np.abs(y[1000:-1000] - ref[1000:-1000])) < 1e-3


def test_downsampling_removes_content_above_the_new_nyquist() -> None:
    t = np.arange(16000) / 16000
    high = np.sin(2 * np.pi * 6000 * t).astype(np.float32)  # above 4 kHz
    y = resample_whole(high, 16000, 8000)
    assert np.sqrt(np.mean(y[400:-400] ** 2)) < 0.01


def test_bad_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        Resampler(0)
