"""The speech `bench engine` judges the engine on: two dev sets, and sentences split by pauses.

- `speech` (`speech_set`): every clip with a transcript in the speech directory, as it is.
  The engine's settings were tuned on these.
- `passages` (`passage_set`): speech the engine was not tuned on. Human sentences that span
  several clips of the speech directory (LJSpeech reads one sentence over two or three
  clips), joined with the pauses a reader leaves mid-sentence (0.35-0.7 s); and passages of
  a caller's kind (lists, addresses, numbers, questions) spoken by the Piper voice (without
  its random noise, so every run hears the same audio; at three speaking rates), sentence by
  sentence with 0.5-1.1 s between them and a 0.3-0.6 s pause inside every sentence that has
  a comma.
- `split_at_middle_word`: a sentence whose gap at the word boundary nearest its middle (found
  by Whisper's word timings on the clean audio) becomes a pause of a given length: what the
  false-cut rate is measured on.

Items are 16 kHz float32 with no trailing silence; the benchmark adds the phone channel.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.audiofile import iter_pcm16
from app.pipeline.resample import resample_whole

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from piper.voice import PiperVoice

RATE = 16000

# LJSpeech sentences read over several clips, and the pause put between the clips (s).
JOINED = (
    (("ljspeech-LJ001-0001", "ljspeech-LJ001-0002"), (0.5,)),
    (("ljspeech-LJ001-0003", "ljspeech-LJ001-0004", "ljspeech-LJ001-0005"), (0.4, 0.6)),
    (("ljspeech-LJ001-0006", "ljspeech-LJ001-0007", "ljspeech-LJ001-0008"), (0.7, 0.35)),
    (("ljspeech-LJ001-0010", "ljspeech-LJ001-0011"), (0.45,)),
    (("ljspeech-LJ001-0012", "ljspeech-LJ001-0013"), (0.55,)),
    (("ljspeech-LJ001-0014", "ljspeech-LJ001-0015"), (0.65,)),
)

# What callers say: one passage is one caller's turn or two.
PASSAGES = (
    ("Hello, I am calling about my order. It was supposed to arrive on Monday, but nothing came. "
     "Could you tell me where it is?"),
    ("We visited Basel, Paris, Lyon and Vienna last summer. The trains were late in every city, "
     "and we missed two concerts."),
    ("My address is twelve Garden Street, apartment four, in Springfield. "
     "The postcode is three one four one five."),
    ("I would like to book a table for six people on Friday evening, preferably near the window. "
     "One of us uses a wheelchair."),
    ("The heating in our flat stopped working yesterday, and the landlord does not answer his phone. "
     "What should I do?"),
    ("Please cancel the subscription, refund the last payment, and send me a confirmation by email. "
     "Thank you very much."),
    ("When I tried to log in this morning, the page said that my password had expired. "
     "I changed it twice, but it still does not work."),
    ("Our team meets on Tuesdays and Thursdays, usually at nine in the morning. "
     "Next week, however, the meeting moves to Wednesday afternoon."),
)

# Whole sentences, spoken on their own: end-of-turn latency and false cuts on the Piper voice.
SENTENCES = (
    "I need to change the date of my appointment to next Thursday.",
    "The printer on the second floor has been broken since last week.",
    "Can you send somebody to look at the washing machine tomorrow morning?",
    "My daughter lost her bank card somewhere between the school and the station.",
    "We ordered three large pizzas and a salad about an hour ago.",
    "The flight from Boston was cancelled because of the snow storm.",
    "I have been waiting for the technician since eight o'clock this morning.",
    "Please tell the doctor that the new medicine gives me a headache.",
)


@dataclass
class Item:
    id: str
    reference: str
    audio: np.ndarray  # 16 kHz float32, no trailing silence


def load_wav(path: Path) -> np.ndarray:
    return np.concatenate(list(iter_pcm16(path, RATE))).astype(np.float32) / 32768


def speech_set(speech_dir: Path) -> list[Item]:
    """Every clip of the speech directory that has a transcript."""
    items = []
    with (speech_dir / "manifest.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["kind"] == "transcript":
                items.append(Item(row["id"], row["reference"], load_wav(speech_dir / row["file"])))
    return items


def passage_set(speech_dir: Path, voice: PiperVoice) -> list[Item]:
    """The second dev set (module doc): joined LJSpeech sentences, then the Piper passages."""
    clips = {i.id: i for i in speech_set(speech_dir)}
    items = []
    for ids, pauses in JOINED:
        parts: list[np.ndarray] = []
        for k, clip_id in enumerate(ids):
            parts.append(_trim(clips[clip_id].audio))
            if k < len(pauses):
                parts.append(np.zeros(int(pauses[k] * RATE), np.float32))
        items.append(Item("+".join(i.removeprefix("ljspeech-") for i in ids),
                          " ".join(clips[i].reference for i in ids), np.concatenate(parts)))
    for n, passage in enumerate(PASSAGES):
        parts = []
        sentences = re.split(r"(?<=[.?!])\s+", passage)
        for k, sentence in enumerate(sentences):
            audio = speak(voice, sentence, n)
            if "," in sentence:
                audio = _pause_at_quietest_gap(audio, 0.3 + 0.1 * ((n + k) % 4))
            parts.append(audio)
            if k < len(sentences) - 1:
                parts.append(np.zeros(int((0.5 + 0.2 * ((n + k) % 4)) * RATE), np.float32))
        items.append(Item(f"piper-{n + 1}", passage, np.concatenate(parts)))
    return items


def sentence_set(voice: PiperVoice) -> list[Item]:
    """`SENTENCES` spoken by the Piper voice, one item each, then each sentence of `PASSAGES`."""
    items = [Item(f"piper-sentence-{n + 1}", text, speak(voice, text, n)) for n, text in enumerate(SENTENCES)]
    for n, passage in enumerate(PASSAGES):
        for k, sentence in enumerate(re.split(r"(?<=[.?!])\s+", passage)):
            items.append(Item(f"piper-{n + 1}.{k + 1}", sentence, speak(voice, sentence, n)))
    return items


def speak(voice: PiperVoice, text: str, variant: int = 0) -> np.ndarray:
    """`text` in the Piper voice at 16 kHz, trimmed of leading and trailing quiet; `variant`
    picks one of three speaking rates. Deterministic (no generator or duration noise)."""
    from piper.config import SynthesisConfig

    config = SynthesisConfig(length_scale=(1.0, 0.9, 1.12)[variant % 3], noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(voice.synthesize(text, syn_config=config))
    audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768
    return _trim(resample_whole(audio, voice.config.sample_rate, RATE))


def split_at_middle_word(item: Item, model: WhisperModel, pauses_s: Sequence[float]) -> list[np.ndarray]:
    """`item` with the gap at the word boundary nearest its middle (at least two words on each
    side) made a pause of each length in `pauses_s`: the quiet around the quietest 10 ms
    between the two words (down to 30 dB below the loudest, at most 0.3 s each way) is replaced
    by digital silence. [] when the sentence has fewer than five words."""
    segments, _ = model.transcribe(item.audio, beam_size=1, language="en", word_timestamps=True)
    words = [w for s in segments for w in s.words]
    if len(words) < 5:
        return []
    middle = len(item.audio) / RATE / 2
    k = min(range(2, len(words) - 1), key=lambda i: abs(words[i].start - middle))
    a, b = int(words[k - 1].end * RATE), int(words[k].start * RATE)
    cut = _quietest(item.audio, min(a, b) - 480, max(a, b) + 480)
    hop = RATE // 100
    rms = np.sqrt((item.audio[: len(item.audio) // hop * hop].reshape(-1, hop).astype(np.float64) ** 2).mean(axis=1))
    quiet = rms < 0.03 * rms.max()
    left = right = min(cut // hop, len(quiet) - 1)
    while left > 0 and quiet[left - 1] and (cut // hop - left) < 30:
        left -= 1
    while right < len(quiet) - 1 and quiet[right + 1] and (right - cut // hop) < 30:
        right += 1
    before, after = item.audio[: left * hop], item.audio[(right + 1) * hop :]
    return [np.concatenate([before, np.zeros(int(p * RATE), np.float32), after]) for p in pauses_s]


def _quietest(audio: np.ndarray, start: int, end: int) -> int:
    """The middle of the quietest 10 ms window between samples `start` and `end`."""
    hop = RATE // 100
    start, end = max(start, 0), min(end, len(audio))
    if end - start < hop:
        return (start + end) // 2
    frames = audio[start : start + (end - start) // hop * hop].reshape(-1, hop)
    return start + int(np.argmin((frames**2).mean(axis=1))) * hop + hop // 2


def _pause_at_quietest_gap(audio: np.ndarray, pause_s: float) -> np.ndarray:
    """A pause inserted in the quietest 10 ms of the middle half (a comma, where Piper has one)."""
    cut = _quietest(audio, len(audio) // 4, 3 * len(audio) // 4)
    return np.concatenate([audio[:cut], np.zeros(int(pause_s * RATE), np.float32), audio[cut:]])


def _trim(audio: np.ndarray) -> np.ndarray:
    """Without the leading and trailing 10 ms windows 40 dB below the loudest."""
    hop = RATE // 100
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    loud = np.nonzero(rms >= 0.01 * rms.max())[0] if len(rms) and rms.max() > 0 else np.empty(0, np.int64)
    if not len(loud):
        return audio
    return audio[max(loud[0] - 5, 0) * hop : (loud[-1] + 6) * hop]
