"""Recognize stage: Whisper (faster-whisper / CTranslate2) on one utterance at a time.

One `Recognizer` per model per process, shared by every stream; `transcribe` is blocking and
thread-safe (CTranslate2 runs `workers` requests in parallel), so the engine calls it from
its own threads, never from the event loop.

The fast path. Stock Whisper pads every input to 30 s, and on a phone utterance of a few
seconds most of the encoder's time goes to that padding. Encoding only the utterance is
several times faster, but then the decoder sees a short context it never saw in training and
loops ("ten of clubs ten of clubs ..."). So we encode the utterance plus a little silence and
splice the result onto the encoder output of 30 s of silence, computed once at load time:
the decoder gets the full-length context it expects, whose tail is what silence looks like.
`python -m app bench engine` measures both paths on the same clips.

Context across utterances. An utterance decoded on its own has lost what came just before it,
which a whole-clip decode has ("may be considered" heard as "maybe consider it" after a cut at
"purpose,"). Given a `Context` (the previous utterance's audio and its final's text), the
utterance is decoded after that audio with that text forced as the start of the transcript,
and only what follows the forced text is its result.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from app.pipeline.types import Word
from app.settings import AsrSettings

SAMPLE_RATE = 16000
_FRAMES_PER_S = 100  # mel frames
_WINDOW_S = 30
_TAIL_S = 1.0  # silence encoded with the utterance, so its last word is not at the edge
_MAX_TOKENS = 440
_MAX_POSITIONS = 448  # Whisper's decoder context, in tokens
_MAX_PROMPT_TOKENS = _MAX_POSITIONS // 2 - 1  # Whisper's limit for previous text: 223


@dataclass(frozen=True, slots=True)
class Recognition:
    """What Whisper heard in one utterance. Word times are relative to the audio's start."""

    text: str
    confidence: float
    language: str
    no_speech_prob: float
    avg_logprob: float
    words: tuple[Word, ...]
    compute_s: float
    # Whisper's probability that the transcript ends with a full stop, question or exclamation
    # mark, at the step where it ended (its punctuation, or the end of text when it has none):
    # how sure it is that a sentence ended. Asked for with `sentence_end=True`, else 0.
    sentence_end: float = 0.0


@dataclass(frozen=True, slots=True)
class Context:
    """What the speaker said just before an utterance (module doc): the audio up to where the
    utterance's own starts (16 kHz), and the text recognised in it."""

    audio: np.ndarray
    text: str


class Recognizer:
    """A loaded Whisper model and the precomputed encoding of silence."""

    def __init__(self, model: WhisperModel, settings: AsrSettings) -> None:
        self._model = model
        self._settings = settings
        self.multilingual = bool(model.model.is_multilingual)
        silence = np.zeros(_WINDOW_S * SAMPLE_RATE, dtype=np.float32)
        self._silence_enc = self._encode_batch(silence[None])
        self._tokenizers: dict[str, Tokenizer] = {}
        self._stop_tokens: dict[Tokenizer, list[int]] = {}

    @classmethod
    def load(cls, model_dir: Path, settings: AsrSettings) -> Recognizer:
        model = WhisperModel(
            str(model_dir), device="cpu", compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads, num_workers=settings.workers,
        )
        return cls(model, settings)

    @property
    def whisper(self) -> WhisperModel:
        """The underlying faster-whisper model (the benchmark compares it, used stock)."""
        return self._model

    def encode_ms(self, seconds: float = 8.0, runs: int = 5) -> float:
        """How long one worker takes to encode `seconds` of audio on this machine, in ms (the
        median of `runs`, after one to warm up): a measure of the machine's speed for this
        model that does not depend on what is said. Blocking (about 0.3 s on a 2-core machine
        for tiny.en); the call limit starts from it (`calls.lateness.starting_limit`)."""
        audio = np.zeros((1, int(seconds * SAMPLE_RATE)), dtype=np.float32)
        self._encode_batch(audio)
        took = []
        for _ in range(runs):
            began = time.perf_counter()
            self._encode_batch(audio)
            took.append((time.perf_counter() - began) * 1000)
        return statistics.median(took)

    def _encode_batch(self, audio: np.ndarray) -> np.ndarray:
        """Encoder output for equal-length 16 kHz rows: (batch, positions, width)."""
        frames = round(audio.shape[1] / SAMPLE_RATE * _FRAMES_PER_S) // 2 * 2
        feats = np.stack([self._model.feature_extractor(row, padding=0)[:, :frames] for row in audio])
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32))
        return np.array(self._model.model.encode(view, to_cpu=True))

    def _tokenizer(self, language: str) -> Tokenizer:
        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self._model.hf_tokenizer, self.multilingual, task="transcribe",
                language=language if self.multilingual else "en",
            )
        return self._tokenizers[language]

    def transcribe(self, audio: np.ndarray, language: str | None = None,
                   word_timestamps: bool = False, prompt: str | None = None,
                   sentence_end: bool = False) -> Recognition:
        """Recognise one utterance (16 kHz float32, at most 30 s)."""
        return self.transcribe_batch([audio], language, word_timestamps, prompt, sentence_end)[0]

    def transcribe_batch(self, items: list[np.ndarray], language: str | None = None,
                         word_timestamps: bool = False, prompt: str | None = None,
                         sentence_end: bool = False,
                   contexts: Sequence[Context | None] | None = None) -> list[Recognition]:
        """Recognise several utterances in one pass of the model.

        One batch costs much less than its utterances one by one, which is what keeps the
        latency of calls that finish speaking at the same moment low. Each utterance is padded
        to the longest (extra silence is harmless: it is what the spliced tail looks like).
        `contexts` (one per item, or None) are decoded before their utterances (module doc);
        a context that would not leave the utterance its whole length in the window is ignored.
        """
        began = time.perf_counter()
        own = [min(len(a) / SAMPLE_RATE, _WINDOW_S - _TAIL_S) for a in items]
        contexts = [c if c is not None and (len(c.audio) + len(a)) / SAMPLE_RATE <= _WINDOW_S - _TAIL_S else None
                    for a, c in zip(items, contexts or [None] * len(items), strict=True)]
        joined = [a if c is None else np.concatenate([c.audio, a]) for a, c in zip(items, contexts, strict=True)]
        durations = [min(len(a) / SAMPLE_RATE, _WINDOW_S - _TAIL_S) for a in joined]
        length_s = min(float(_WINDOW_S), np.ceil(max(durations) + _TAIL_S))
        padded = np.zeros((len(items), int(length_s * SAMPLE_RATE)), dtype=np.float32)
        for row, audio in zip(padded, joined, strict=True):
            usable = audio[: len(row)]
            row[: len(usable)] = usable
        short = self._encode_batch(padded)
        enc = np.repeat(self._silence_enc, len(items), axis=0)
        enc[:, : short.shape[1]] = short
        enc_view = ctranslate2.StorageView.from_array(enc)

        langs = self._pick_languages(enc_view, language, len(items))
        toks = [self._tokenizer(lang) for lang in langs]
        # `prompt` (a session's vocabulary) goes in as "previous text", as Whisper's
        # initial_prompt does: it biases spelling and names without being transcribed.
        forced = [[] if c is None else tok.encode(" " + c.text.strip()) for c, tok in zip(contexts, toks, strict=True)]
        prompts = [[*self._previous(tok, prompt), *tok.sot_sequence, tok.no_timestamps, *f]
                   for tok, f in zip(toks, forced, strict=True)]
        # CTranslate2 (4.8, measured) returns at most half of max_length tokens, the forced
        # text included: the budget is twice the utterance's bound plus the forced text.
        longest_forced = max(len(f) for f in forced)
        start = len(prompts[0]) - len(forced[0])
        max_length = 2 * (min(_MAX_TOKENS, int(12 + 8 * max(own))) + longest_forced) + start
        # Whisper has 448 decoder positions, the prompt included: a decode that loops after a
        # long vocabulary prompt would otherwise run past them and fail (no final at all).
        max_length = min(max_length, 2 * (_MAX_POSITIONS - start - longest_forced))
        results = self._model.model.generate(
            enc_view, prompts, beam_size=self._settings.beam_size, max_length=max_length,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
            return_logits_vocab=sentence_end or longest_forced > 0,
        )
        out = []
        for k, (result, tok, lang) in enumerate(zip(results, toks, langs, strict=True)):
            generated = [t for t in result.sequences_ids[0] if t < tok.eot]
            skip = len(forced[k])  # the forced text, which is not this utterance's
            tokens = generated[skip:][: int(12 + 8 * own[k])]  # the batch's bound is the longest item's
            no_speech = float(result.no_speech_prob)
            if forced[k]:
                # The score and the no-speech probability describe the context as well; the
                # utterance's own tokens are judged by their own log-probabilities.
                avg_logprob = _mean_logprob(result.logits[0], generated, skip, tok.eot)
            else:
                avg_logprob = float(result.scores[0]) if result.scores else -10.0
            text = tok.decode(tokens).strip()
            if self._is_silence(text, no_speech, avg_logprob):
                text, tokens = "", []
            text = cut_repetitions(text, self._settings.max_repeats)
            words: tuple[Word, ...] = ()
            if word_timestamps and tokens:
                one = ctranslate2.StorageView.from_array(np.ascontiguousarray(enc[k : k + 1]))
                offset_s = (len(joined[k]) - len(items[k])) / SAMPLE_RATE  # the context's length
                words = self._align(tok, generated[:skip], tokens, one, durations[k], offset_s)
            out.append(Recognition(
                text=text, confidence=float(np.clip(np.exp(avg_logprob), 0.0, 1.0)), language=lang,
                no_speech_prob=no_speech, avg_logprob=avg_logprob, words=words,
                compute_s=time.perf_counter() - began,
                sentence_end=(self._sentence_end(tok, generated[:skip] + tokens, result.logits[0])
                              if sentence_end and tokens else 0.0),
            ))
        # After a context, noise is heard as "You" (the no-speech probability reads the context's
        # speech), but with a low log-probability: a doubtful or empty result is decoded again
        # alone, where the silence guards apply as they would without the context.
        again = [k for k, r in enumerate(out) if forced[k] and (
            not r.text or r.avg_logprob < self._settings.log_prob_threshold)]
        if again:
            alone = self.transcribe_batch([items[k] for k in again], language, word_timestamps, prompt, sentence_end)
            for k, result in zip(again, alone, strict=True):
                out[k] = result
        return out

    @staticmethod
    def _previous(tok: Tokenizer, prompt: str | None) -> list[int]:
        if not prompt or not prompt.strip():
            return []
        return [tok.sot_prev, *tok.encode(" " + prompt.strip())[-_MAX_PROMPT_TOKENS:]]

    def _sentence_end(self, tok: Tokenizer, tokens: list[int], logits: list[ctranslate2.StorageView]) -> float:
        if tok not in self._stop_tokens:
            self._stop_tokens[tok] = [tok.encode(mark)[0] for mark in (".", "?", "!")]
        if not logits:
            return 0.0
        # The step that ended the text: its last punctuation mark, or the end-of-text token.
        step = len(tokens) - 1 if not tok.decode(tokens[-1:]).strip().isalnum() else len(tokens)
        log_probs = _log_probs(logits[min(step, len(logits) - 1)])
        return float(np.exp(log_probs[self._stop_tokens[tok]]).sum())

    def _pick_languages(self, enc: ctranslate2.StorageView, language: str | None, count: int) -> list[str]:
        wanted = language or self._settings.language
        if not self.multilingual:
            return ["en"] * count
        if wanted and wanted != "auto":
            return [wanted] * count
        return [str(found[0][0]).strip("<|>") for found in self._model.model.detect_language(enc)]

    def _is_silence(self, text: str, no_speech: float, avg_logprob: float) -> bool:
        if not re.search(r"\w", text):
            return True
        # Whisper's own rule (both signals) misses its favourite hallucination: silence heard
        # as "you" with fair confidence. A no-speech probability halfway from the threshold
        # to certainty is enough on its own.
        s = self._settings
        if no_speech <= s.no_speech_threshold:
            return False
        return avg_logprob < s.log_prob_threshold or no_speech > (1 + s.no_speech_threshold) / 2

    def _align(self, tok: Tokenizer, forced: list[int], tokens: list[int], enc: ctranslate2.StorageView,
               duration: float, offset_s: float) -> tuple[Word, ...]:
        """Word timings of `tokens`, aligned after the `forced` context tokens on the whole
        audio, in seconds from `offset_s` (where the utterance's own audio starts)."""
        frames = int(duration * _FRAMES_PER_S)
        aligned = self._model.find_alignment(tok, [forced + tokens], enc, frames)[0]
        words, seen = [], 0
        for w in aligned:
            seen += len(w["tokens"])
            if seen <= len(forced) or not w["word"].strip():
                continue
            words.append(Word(text=w["word"].strip(), start_s=max(0.0, float(w["start"]) - offset_s),
                              end_s=max(0.0, float(w["end"]) - offset_s), probability=float(w["probability"])))
        return tuple(words)


def _mean_logprob(logits: list[ctranslate2.StorageView], generated: list[int], start: int, eot: int) -> float:
    """The mean log-probability of `generated[start:]` and the end of text, from the logits of
    each step (the average Whisper's own score gives a transcript, over these steps only)."""
    steps = [*generated[start:], eot][: max(0, len(logits) - start)]
    if not steps:
        return -10.0
    return float(np.mean([_log_probs(logits[start + i])[token] for i, token in enumerate(steps)]))


def _log_probs(step: ctranslate2.StorageView) -> np.ndarray:
    """Log-probabilities over the vocabulary from one decoding step's logits."""
    scores = np.asarray(step, dtype=np.float64).reshape(-1)
    shifted = scores - scores.max()
    return shifted - np.log(np.exp(shifted).sum())


def cut_repetitions(text: str, max_repeats: int) -> str:
    """Cut a phrase repeated more than `max_repeats` times in a row (Whisper's loop failure).
    Words are split at spaces and at commas, since a looping number has no spaces
    ("10,0001,0001,0001,...")."""
    units = _UNIT.findall(text)  # each word with the comma and spaces after it
    words = [unit.rstrip().rstrip(",") for unit in units]
    if max_repeats <= 0 or len(words) <= max_repeats:
        return text
    for n in range(1, 9):
        i = 0
        while i + n * (max_repeats + 1) <= len(words):
            gram = words[i : i + n]
            count = 1
            while words[i + count * n : i + (count + 1) * n] == gram:
                count += 1
            if count > max_repeats:
                del words[i + max_repeats * n : i + count * n]
                del units[i + max_repeats * n : i + count * n]
            i += 1
    return "".join(units).strip()


_UNIT = re.compile(r"[^\s,]+,?\s*|,\s*")
