"""The speech engine: models loaded once per process, one `EngineStream` per call.

    engine = SpeechEngine.load(settings.asr, settings.vad, turn=settings.turn)   # blocking: at start-up
    stream = engine.stream(AudioFormat(Encoding.MULAW, 8000), language="en")
    ...
    await engine.aclose()   # on the loop the streams ran on
    engine.close()          # then, off it: joins the inference threads

Per stream, audio flows decode -> resample -> VAD -> turn -> recognize (one module each, tied
together by `engine_stream.EngineStream`); the VAD, end-of-turn and recognition work of all
streams goes through shared schedulers (`scheduling`), which the engine owns. Results come out of
`EngineStream.results()`; see `engine_stream` for their order and docs/architecture.md for
the contract.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from threadpoolctl import threadpool_limits

from app.pipeline import MAX_RATE, MIN_RATE, models
from app.pipeline.engine_stream import EngineStream
from app.pipeline.errors import AudioFormatError, UnknownModelError
from app.pipeline.recognize import Recognizer
from app.pipeline.scheduling import AsrScheduler, TurnBatcher, VadBatcher
from app.pipeline.turn import SmartTurn
from app.pipeline.types import AudioFormat, Encoding
from app.pipeline.vad import SileroVAD
from app.settings import AsrSettings, TurnSettings, VadSettings


class SpeechEngine:
    """Loaded models (Silero VAD, the end-of-turn model, one or more Whisper models) shared by
    all streams."""

    def __init__(self, vad: SileroVAD, recognizers: dict[str, Recognizer],
                 asr: AsrSettings, vad_settings: VadSettings,
                 turn_model: SmartTurn | None = None, turn_settings: TurnSettings | None = None) -> None:
        self.vad = vad
        self.recognizers = recognizers
        self.turn_model = turn_model
        self.asr_settings = asr
        self.vad_settings = vad_settings
        self.turn_settings = turn_settings or TurnSettings()
        self._vad_batcher = VadBatcher(vad)
        self._turns = TurnBatcher(turn_model) if turn_model is not None else None
        self._asr = AsrScheduler(asr.workers)

    @classmethod
    def load(cls, asr: AsrSettings, vad: VadSettings, extra_models: Iterable[str] = (),
             turn: TurnSettings | None = None) -> SpeechEngine:
        """Load Silero, the end-of-turn model (`turn.model`; the default settings' when None)
        and the Whisper models (`asr.model` plus `extra_models`). Blocking. UnknownModelError
        names a model that is not installed."""
        # Every model runs on threads of its own (see `scheduling`), so nothing may fan out
        # further. numpy's OpenBLAS would: it splits each product (the log-mel filterbank of
        # every decode and every scored pause) over the cores, and its helper thread then spins
        # for about 0.1 s waiting for the next one, a third of a core at 24 calls (docs/engine.md).
        torch.set_num_threads(1)
        threadpool_limits(1, user_api="blas")
        turn = turn or TurnSettings()
        turn_path = models.resolve_turn(turn.model)
        recognizers: dict[str, Recognizer] = {}
        for name in dict.fromkeys([asr.model, *extra_models]):
            recognizers[name] = Recognizer.load(models.resolve(name, asr.model_cache_dir), asr)
        turn_model = SmartTurn.load(turn_path) if turn_path is not None else None
        return cls(SileroVAD.load(), recognizers, asr, vad, turn_model, turn)

    @property
    def default_model(self) -> str:
        return self.asr_settings.model

    def recognizer(self, name: str | None) -> Recognizer:
        """The loaded model `name` (None: the default); UnknownModelError if not loaded."""
        name = name or self.default_model
        if name not in self.recognizers:
            loaded = ", ".join(self.recognizers)
            raise UnknownModelError(f"model {name!r} is not loaded by this server (loaded: {loaded})")
        return self.recognizers[name]

    def stream(self, audio: AudioFormat, *, language: str | None = None, model: str | None = None,
               interim_results: bool = True, word_timestamps: bool | None = None,
               prompt: str | None = None) -> EngineStream:
        """Open a stream for one call. Must be called on the event loop that will feed it.

        Raises AudioFormatError for an encoding or a sample rate (MIN_RATE to MAX_RATE Hz) the
        engine cannot read, UnknownModelError for a model that is not loaded or a language the
        model does not speak."""
        if not isinstance(audio.encoding, Encoding):
            raise AudioFormatError(f"unsupported encoding {audio.encoding!r}")
        if not MIN_RATE <= audio.sample_rate <= MAX_RATE:
            raise AudioFormatError(
                f"sample rate {audio.sample_rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        recognizer = self.recognizer(model)
        if language and language not in ("auto", "en") and not recognizer.multilingual:
            name = model or self.default_model
            raise UnknownModelError(
                f"language {language!r} needs a multilingual model; {name!r} is English-only")
        self._vad_batcher.start()
        self._asr.start()
        turn_silence_s = None
        if self._turns is not None:
            self._turns.start()
            turn_silence_s = self.turn_settings.max_silence_ms / 1000
        interim_ms = self.asr_settings.interim_interval_ms if interim_results else 0
        words = self.asr_settings.word_timestamps if word_timestamps is None else word_timestamps
        return EngineStream(audio, vad=self.vad.stream(self.vad_settings, turn_silence_s),
                            vad_batcher=self._vad_batcher, asr=self._asr, recognizer=recognizer,
                            language=language, interim_interval_s=max(interim_ms, 0) / 1000,
                            word_timestamps=words, prompt=prompt, turns=self._turns,
                            turn_settings=self.turn_settings,
                            context_gap_s=max(self.asr_settings.context_gap_ms, 0) / 1000)

    async def aclose(self) -> None:
        """Stop the schedulers' tasks (streams still open stop getting results). The next
        `stream()` starts them again, on its own loop."""
        await self._vad_batcher.aclose()
        if self._turns is not None:
            await self._turns.aclose()
        await self._asr.aclose()

    def close(self) -> None:
        """Shut down the inference threads (blocking); after `aclose()`."""
        self._vad_batcher.close()
        if self._turns is not None:
            self._turns.close()
        self._asr.close()
