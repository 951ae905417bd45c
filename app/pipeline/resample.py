"""Resample stage: a streaming polyphase resampler (any rate -> 16 kHz for the models).

Feeding a signal frame by frame gives exactly the samples that resampling the whole signal
at once gives (`resample_whole`), so 20 ms frames join without clicks. The filter's group
delay is removed, so sample n of the output is at time n / out_rate of the input.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np
from scipy import signal

_TAPS_PER_PHASE = 24


@lru_cache(maxsize=32)
def _design(up: int, down: int) -> tuple[np.ndarray, int]:
    """Low-pass FIR for the upsampled rate, and the output delay it introduces (samples)."""
    scale = max(up, down)
    # An odd length of 2 * k * down + 1 taps centres the delay on a whole output sample.
    half = (_TAPS_PER_PHASE * scale) // (2 * down) * down
    taps = 2 * half + 1
    h = signal.firwin(taps, 0.92 / scale, window=("kaiser", 7.0)) * up
    return h.astype(np.float64), half // down


class Resampler:
    """Stateful rate converter for one stream. `process` may be called with any block size."""

    def __init__(self, in_rate: int, out_rate: int = 16000) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        g = gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        self.in_rate, self.out_rate = in_rate, out_rate
        self._h, self._delay = _design(self.up, self.down)
        self._buf = np.zeros(0, dtype=np.float64)
        self._buf_start = 0  # absolute input index of _buf[0]; a multiple of `down`
        self._next_out = 0  # absolute index (before delay removal) of the next output sample
        self._received = 0

    @property
    def passthrough(self) -> bool:
        return self.up == self.down == 1

    def process(self, samples: np.ndarray, final: bool = False) -> np.ndarray:
        """Resample the next block; with `final=True` also flush the filter's tail."""
        if self.passthrough:
            return samples.astype(np.float32, copy=False)
        self._buf = np.concatenate([self._buf, samples.astype(np.float64, copy=False)])
        self._received += len(samples)
        end = self._received
        if final:
            # Pad with silence so the outputs up to the input's true end are complete.
            pad = len(self._h) // self.up + 1
            self._buf = np.concatenate([self._buf, np.zeros(pad)])
            end += pad
        # Output n depends on input up to floor(n * down / up).
        last = ((end - 1) * self.up) // self.down
        if final:
            last = min(last, self._delay + (self._received * self.up) // self.down - 1)
        out = self._compute(last)
        self._trim()
        return out

    def _compute(self, last: int) -> np.ndarray:
        if last < self._next_out:
            return np.zeros(0, dtype=np.float32)
        y = signal.upfirdn(self._h, self._buf, self.up, self.down)
        offset = self._buf_start * self.up // self.down
        first = self._next_out
        chunk = y[first - offset : last - offset + 1]
        self._next_out = last + 1
        skip = max(0, self._delay - first)
        return chunk[skip:].astype(np.float32)

    def _trim(self) -> None:
        # The next output needs input from index ceil((n*down - taps + 1) / up) on.
        need = (self._next_out * self.down - len(self._h) + 1) // self.up
        start = max(0, need - 1) // self.down * self.down
        if start > self._buf_start:
            self._buf = self._buf[start - self._buf_start :]
            self._buf_start = start


def resample_whole(samples: np.ndarray, in_rate: int, out_rate: int = 16000) -> np.ndarray:
    """Resample a whole signal at once (reference for the streaming path, and for files)."""
    return Resampler(in_rate, out_rate).process(samples, final=True)
