"""One call's talk-back: the assistant's actions carried out in order, and barge-in.

    talk = CallTalk(call, speak=speaker.synthesize, load=fetcher.load, bargein_delay_s=0.1)
    talk.submit(answer_body)        # from a webhook answer or POST /v1/calls/{id}/actions
    await talk.aclose()             # the call ended

Action lists run one after another, each action in order, on one task per call, so a slow
text-to-speech or download never holds up listening (the call's audio goes to the engine
on its own path). `say` is streamed: each rendered chunk is queued on `call.media` as soon as
it exists, so the caller hears the first sentence while the next is being rendered.

Every `say`/`play` is reported as `playback.started`, then `playback.finished` or
`playback.interrupted`, with how many seconds went out (`heard_s`). An action that cannot be
carried out (bad shape, unknown voice, a refused URL, transfer on Twilio) is reported as
`action.error` and skipped; the call goes on.

Barge-in: while interruptible audio plays, the caller's speech (`SpeechEvent` STARTED, then
`bargein_delay_s` more without ENDED, so that speech of `[talkback] bargein_min_speech_ms`
in all stops it) clears the call's media at once; the rest of that action list is dropped,
since the assistant will answer what the caller says now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from app.calls import Call, MediaUnsupported, Playback, PlaybackState
from app.calls.media import FRAME_MS
from app.logs import bind_call
from app.pipeline.types import SpeechEvent, SpeechEventKind
from app.talkback.actions import ActionProblem, Hangup, Numbered, Pause, Play, Say, Transfer, parse_actions

log = logging.getLogger("hearsay.talkback")

Speak = Callable[[str, str | None], AsyncGenerator[tuple[bytes, int], None]]
Load = Callable[[str], Awaitable[tuple[bytes, int]]]
_FRAME_S = FRAME_MS / 1000


class CallTalk:
    """Carries out one call's actions; see the module docstring."""

    def __init__(self, call: Call, *, speak: Speak, load: Load, bargein_delay_s: float) -> None:
        self.call = call
        self._speak = speak
        self._load = load
        self._bargein_delay_s = max(0.0, bargein_delay_s)
        self._lists: asyncio.Queue[list[Numbered] | None] = asyncio.Queue()
        self._interruptible = False  # interruptible audio is playing or being rendered
        self._barged_in = False
        self._timer: asyncio.TimerHandle | None = None
        self._done = False
        with bind_call(call.id):
            self._task = asyncio.create_task(self._run(), name=f"call-{call.id}-talkback")
        self._unlisten = call.listen(lambda _t: None, on_speech=self._on_speech)

    def submit(self, body: Any) -> tuple[int, list[ActionProblem]]:
        """Queue the actions of an answer body; report each bad one as `action.error` now.
        Returns how many actions were queued, and the problems."""
        actions, problems = parse_actions(body)
        for problem in problems:
            self._error(problem.index, problem.action, problem.message)
        if not actions or self._done:
            return 0, problems
        self._lists.put_nowait(actions)
        return len(actions), problems

    async def aclose(self) -> None:
        """Stop (the call is over); what is queued is dropped."""
        self._done = True
        self._unlisten()
        self._cancel_timer()
        self._lists.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    # -- running actions --------------------------------------------------------------------

    async def _run(self) -> None:
        while (actions := await self._lists.get()) is not None:
            self._barged_in = False
            for numbered in actions:
                if self._done or self.call.ended:
                    return
                try:
                    finished = await self._do(numbered)
                except Exception as exc:  # a failed action is reported, never a stuck call
                    log.warning("action %d (%s) failed: %s", numbered.index, type(numbered.action).__name__, exc)
                    self._error(numbered.index, numbered.raw, f"actions[{numbered.index}]: {_describe(exc)}")
                    continue
                if not finished:
                    break  # barged in (drop the rest), hung up or transferred

    async def _do(self, numbered: Numbered) -> bool:
        """Carry out one action; False when the rest of the list must not run."""
        action = numbered.action
        if isinstance(action, Say):
            details = {"id": "", "action": "say", "text": action.text}
            return await self._play(self._speak(action.text, action.voice), details, action.interruptible)
        if isinstance(action, Play):
            details = {"id": "", "action": "play", "source": action.source}
            return await self._play(self._loaded(action.source), details, action.interruptible)
        if isinstance(action, Pause):
            await asyncio.sleep(action.seconds)
            return True
        if isinstance(action, Hangup):
            await self.call.media.hangup()
            return False
        assert isinstance(action, Transfer)
        await self.call.media.transfer(action.target)
        return False

    async def _loaded(self, source: str) -> AsyncGenerator[tuple[bytes, int], None]:
        yield await self._load(source)

    async def _play(self, chunks: AsyncGenerator[tuple[bytes, int], None], details: dict[str, Any],
                    interruptible: bool) -> bool:
        playbacks: list[Playback] = []
        self._interruptible = interruptible
        try:
            async with contextlib.aclosing(chunks):  # stopping early stops the rendering too
                async for pcm, rate in chunks:
                    if self._barged_in or self.call.ended:
                        break
                    playback = self.call.media.play(pcm, rate)
                    playbacks.append(playback)
                    if len(playbacks) == 1:
                        details["id"] = playback.id
                        self.call.events.playback("started", details)
            if playbacks:
                await playbacks[-1].wait()
        finally:
            self._interruptible = False
            self._cancel_timer()
        if not playbacks:
            return not self._barged_in
        frames = sum(p.frames for p in playbacks)
        played = sum(p.frames_played for p in playbacks)
        interrupted = self._barged_in or any(p.state is PlaybackState.INTERRUPTED for p in playbacks)
        details.update(duration_s=round(frames * _FRAME_S, 2), heard_s=round(played * _FRAME_S, 2))
        self.call.events.playback("interrupted" if interrupted else "finished", details)
        return not interrupted

    # -- barge-in ---------------------------------------------------------------------------

    def _on_speech(self, event: SpeechEvent) -> None:
        if event.kind is SpeechEventKind.STARTED and self._interruptible and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._bargein_delay_s, self._barge_in)
        elif event.kind is SpeechEventKind.ENDED:
            self._cancel_timer()  # too short to be the caller taking the turn

    def _barge_in(self) -> None:
        self._timer = None
        if not self._interruptible or self._barged_in:
            return
        self._barged_in = True
        stopped = self.call.media.clear()
        log.info("barge-in: the caller spoke; %d playbacks stopped", len(stopped))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _error(self, index: int, action: Any, message: str) -> None:
        log.warning("action.error: %s", message)
        if not self.call.ended:
            self.call.events.action_error(index, action, message)


def _describe(exc: Exception) -> str:
    if type(exc) is MediaUnsupported:  # its subclasses (a declined transfer) say what happened
        return f"not possible on this call: {exc}"
    return str(exc) or type(exc).__name__
