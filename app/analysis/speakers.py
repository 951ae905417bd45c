"""Who speaks when: voice embeddings of short windows, clustered per recording.

The embeddings are Resemblyzer's (a 3-layer LSTM d-vector model, 256 dimensions, whose
weights ship in its wheel: nothing is downloaded). One embedding is computed for every
1.6 s window, every 0.25 s, over the whole recording; the windows whose centre lies in
speech are clustered by spectral clustering (Wang et al., "Speaker Diarization with LSTM",
2018): the cosine affinity of each window is pruned to its nearest neighbours (a quarter of
the windows, at most 30: 7.5 s of speech, so that a speaker who talks for less than a
quarter of a long recording is not tied to the one who talks most), symmetrised, and the
number of speakers is the largest gap in the eigenvalues of its normalised
Laplacian (or the number given). A recording of one voice has no such gap and comes out as
one speaker. Long recordings cluster a spread sample of at most `MAX_WINDOWS` windows and
give every window the nearest centroid's label, so the cost stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

RATE = 16000
HOP_FRAMES = 25  # 10 ms mel frames between windows: 4 windows a second
WINDOW_FRAMES = 160  # the model's 1.6 s window
BATCH = 256  # windows per forward pass
PRUNE = 0.25  # share of each window's neighbours kept in the affinity ...
MAX_NEIGHBOURS = 30  # ... and at most this many
MAX_SPEAKERS = 8
MAX_WINDOWS = 1500  # windows clustered directly (eigendecomposition is cubic in this)
TARGET_DBFS = -30.0  # Resemblyzer's training loudness


class SpeakerEncoder:
    """The loaded embedding model (one per process; blocking methods, call them off the loop)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model

    @classmethod
    def load(cls) -> SpeakerEncoder:
        """Load Resemblyzer's encoder from its wheel (about a second)."""
        from resemblyzer import VoiceEncoder

        return cls(VoiceEncoder("cpu", verbose=False).eval())

    def embed(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of every window of `audio` (float32 at 16 kHz) and each window's centre
        in seconds: arrays (n, 256) and (n,)."""
        from resemblyzer.audio import wav_to_mel_spectrogram

        audio = np.asarray(audio, dtype=np.float32)
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if len(audio) else 0.0
        if rms > 0:
            gain = 10 ** ((TARGET_DBFS - 20 * np.log10(rms)) / 20)
            audio = audio * min(gain, 100.0)
        short = WINDOW_FRAMES * RATE // 100 - len(audio)
        if short > 0:
            audio = np.pad(audio, (0, short))
        mel = wav_to_mel_spectrogram(audio)
        starts = np.arange(0, max(1, len(mel) - WINDOW_FRAMES + 1), HOP_FRAMES)
        out = []
        with torch.no_grad():
            for i in range(0, len(starts), BATCH):
                batch = np.stack([mel[s:s + WINDOW_FRAMES] for s in starts[i:i + BATCH]])
                out.append(self._model(torch.from_numpy(batch)).numpy())
        centres = (starts + WINDOW_FRAMES / 2) / 100.0
        return np.concatenate(out), centres


def cluster(embeddings: np.ndarray, speakers: int | None = None) -> np.ndarray:
    """A speaker number (0, 1, ...) per embedding (rows L2-normed)."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if speakers == 1 or n < 4:
        return np.zeros(n, dtype=np.int64)
    if n > MAX_WINDOWS:
        sample = np.linspace(0, n - 1, MAX_WINDOWS).round().astype(int)
        labels = cluster(embeddings[sample], speakers)
        centroids = np.stack([embeddings[sample][labels == k].mean(axis=0) for k in range(labels.max() + 1)])
        return np.asarray(np.argmax(embeddings @ centroids.T, axis=1), dtype=np.int64)
    similarity = embeddings @ embeddings.T
    keep = max(2, min(int(np.ceil(PRUNE * n)), MAX_NEIGHBOURS))
    nearest = np.argsort(-similarity, axis=1)[:, :keep]
    affinity = np.zeros_like(similarity)
    rows = np.arange(n)[:, None]
    affinity[rows, nearest] = similarity[rows, nearest]
    affinity = np.maximum(np.maximum(affinity, affinity.T), 0.0)
    degree = np.maximum(affinity.sum(axis=1), 1e-9)
    scale = 1.0 / np.sqrt(degree)
    laplacian = np.eye(n) - scale[:, None] * affinity * scale[None, :]
    values, vectors = np.linalg.eigh(laplacian)
    if speakers is None:
        most = min(MAX_SPEAKERS, n - 1)
        speakers = int(np.argmax(np.diff(values[:most + 1]))) + 1
    if speakers <= 1:
        return np.zeros(n, dtype=np.int64)
    points = vectors[:, :speakers]
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-9)
    _, labels = kmeans2(points, speakers, seed=0, minit="++")
    return _by_first_appearance(np.asarray(labels, dtype=np.int64))


def smooth(labels: np.ndarray, width: int = 3) -> np.ndarray:
    """Each label replaced by the most common one among its `width` neighbours (a speaker
    turn shorter than that is more likely a window straddling two voices)."""
    if len(labels) < width:
        return labels
    half = width // 2
    padded = np.concatenate([labels[:1].repeat(half), labels, labels[-1:].repeat(half)])
    return np.array([np.bincount(padded[i:i + width]).argmax() for i in range(len(labels))], dtype=np.int64)


def _by_first_appearance(labels: np.ndarray) -> np.ndarray:
    order: dict[int, int] = {}
    for label in labels.tolist():
        order.setdefault(label, len(order))
    return np.array([order[x] for x in labels.tolist()], dtype=np.int64)


def in_speech(centres: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """Which window centres fall inside one of `spans` (start_s, end_s)."""
    mask = np.zeros(len(centres), dtype=bool)
    for start, end in spans:
        mask |= (centres >= start) & (centres <= end)
    return mask
