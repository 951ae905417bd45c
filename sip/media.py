"""The outbound side of a SIP call: what the caller hears (`SipMedia`, a `CallMedia`).

`SipMedia` lives in the service; the frames it plays go to a `FrameSink`, the call's
`FrameQueue` in its SIP worker (sip/frames.py), and progress comes back:

    service loop   SipMedia.play(pcm, rate) -> frames_of(..., 8000) -> sink.put (PLAY on the bridge)
    worker         FramePlayer.onFrameRequested (sip/call.py), every 20 ms -> FrameQueue.take
                   -> pjsua2's conference bridge -> the call's RTP stream
    worker         when a playback's last frame is taken, or every PROGRESS_FRAMES frames:
                   the frames taken per playback -> (bridge) -> SipMedia.progress(taken)
                   -> Playback.played, Playback.settle(FINISHED)

So `Playback.frames_played` counts the frames the bridge actually took (it lags by up to
PROGRESS_FRAMES while playing), and a playback is FINISHED as soon as its last frame has gone
to the RTP stream. `clear()` interrupts what is playing at once; the frames the worker took
meanwhile still arrive as progress and are counted where a playback is still known.

`SipMedia.transfer(target)` moves the caller elsewhere with a REFER: the SIP thread sends it
and reports its progress (a `TransferReport`) back through `post`; a 2xx in the caller's NOTIFY
is success (the SIP thread then hangs up, and the call ends `TRANSFERRED`), a refusal or a
failure raises `TransferFailed` and the call goes on. Nothing here imports pjsua2.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.calls.info import EndReason
from app.calls.media import MediaUnsupported, Playback, PlaybackState, check_sip_uri, frames_of
from sip.types import SAMPLE_RATE, TransferReport

# How long transfer() waits for the REFER's answer (a live peer answers at once; over UDP
# pjsua2 retransmits it meanwhile), and then, once it was accepted, for the outcome: the
# caller's side is calling the target, which may ring for a while.
REFER_ANSWER_S = 5.0
TRANSFER_RESULT_S = 30.0


class TransferFailed(MediaUnsupported):
    """The caller was not moved: its side refused the REFER, reported that the target failed,
    did not say in time, or the call ended first. Unless it ended, the call goes on.

    `code` is the SIP status that said so (the REFER's answer or the NOTIFY's sipfrag), None
    when there was none (a timeout, the call ended, the REFER could not be sent). A
    `MediaUnsupported`, so whoever turns that into an `action.error` covers this too.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Transfer:
    """The transfer under way (loop)."""

    target: str
    outcome: asyncio.Future[None]
    result_timeout_s: float
    deadline: asyncio.Timeout | None = None
    accepted: bool = False


class FrameSink(Protocol):
    """Where a call's outbound frames go: the worker's `FrameQueue` (sip/frames.py), reached
    over the bridge by the service. `clear` drops what is queued; the sink then answers with
    `SipMedia.cleared(taken)`, the frames taken per playback key not yet reported."""

    def put(self, key: int, frames: list[bytes]) -> None: ...

    def clear(self) -> None: ...


class SipMedia:
    """`CallMedia` for one SIP call (see the module docstring for how frames cross threads).

    `frames` takes what is played (see above); `post(fn)` runs `fn` on the loop from any
    thread; `hang_up(reason)` asks the SIP side to end the call with a BYE, after which the
    call ends with `reason`; `on_close()` runs when the call is over (`aclose`), so the SIP
    leg can be hung up if it is still up; `transfer(target, report)` asks the SIP side to send
    a REFER and report its progress (`TransferReport`, from any thread), hanging up once it
    succeeded. All methods are for the event loop.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, frames: FrameSink, post: Callable[[Callable[[], None]], object],
                 hang_up: Callable[[EndReason], None], on_close: Callable[[], None],
                 transfer: Callable[[str, TransferReport], None]) -> None:
        self.frames = frames
        self.hung_up: EndReason | None = None
        self._hang_up = hang_up
        self._on_close = on_close
        self._post = post
        self._send_transfer = transfer
        self._transfer: _Transfer | None = None
        self._playing: dict[int, Playback] = {}  # by key, in play order
        self._clearing: dict[int, Playback] = {}  # cleared, waiting for `cleared`
        self._keys = itertools.count()
        self._closed = False

    def play(self, pcm: bytes, rate: int) -> Playback:
        if self._closed:
            raise MediaUnsupported("the call is over")
        frames = frames_of(pcm, rate, self.sample_rate)
        playback = Playback(len(frames))
        if not frames:
            playback.settle(PlaybackState.FINISHED)
            return playback
        key = next(self._keys)
        self._playing[key] = playback
        self.frames.put(key, frames)
        return playback

    def clear(self) -> list[Playback]:
        """Stop what is playing and queued at once; the stopped playbacks settle INTERRUPTED
        when the worker has said how many of their frames went out (`cleared`), so their
        `frames_played` is exact (one bridge round trip, about a millisecond)."""
        stopped = list(self._playing.values())
        self._clearing.update(self._playing)
        self._playing.clear()
        self.frames.clear()
        return stopped

    def cleared(self, taken: dict[int, int]) -> None:
        """The sink's answer to `clear`: the last frames taken before it."""
        for key, count in taken.items():
            playback = self._clearing.get(key)
            if playback is not None:
                playback.played(count)
        clearing, self._clearing = self._clearing, {}
        for playback in clearing.values():
            # One whose last frame went before the clear was heard whole.
            whole = playback.frames_played >= playback.frames
            playback.settle(PlaybackState.FINISHED if whole else PlaybackState.INTERRUPTED)

    async def hangup(self, reason: EndReason = EndReason.AGENT_HANGUP) -> None:
        """Ask the SIP thread to send BYE; returns at once (`call.wait_ended()` waits for the
        end, which comes once pjsua2 reports the call disconnected)."""
        if self.hung_up is None and not self._closed:
            self.hung_up = reason
            self._hang_up(reason)

    async def transfer(self, target: str, *, answer_timeout_s: float = REFER_ANSWER_S,
                       result_timeout_s: float = TRANSFER_RESULT_S) -> None:
        """Move the caller to `target` (a SIP URI) with a REFER, and return once the caller's
        side reports that the target answered (a 2xx sipfrag in its NOTIFY): we then hang up
        (BYE), and the call ends `TRANSFERRED` shortly after (`call.wait_ended()`).

        Raises ValueError for a target that is not a SIP URI (nothing is sent),
        MediaUnsupported once the call is over, and TransferFailed when the REFER is refused
        (e.g. 603) or not answered within `answer_timeout_s`, when the NOTIFY reports a failure
        (e.g. 486 from the target) or no outcome comes within `result_timeout_s` of the
        acceptance, when another transfer is under way, or when the call ends first; the call
        goes on in each case but the last. A 2xx that comes after the timeout still hangs up.
        """
        check_sip_uri(target)
        if self._closed or self.hung_up is not None:
            raise MediaUnsupported("the call is over")
        if self._transfer is not None:
            raise TransferFailed(f"a transfer to {self._transfer.target} is already under way")
        pending = _Transfer(target, asyncio.get_running_loop().create_future(), result_timeout_s)
        self._transfer = pending

        def report(code: int, reason: str, final: bool) -> None:  # the SIP thread
            self._post(functools.partial(self._transfer_status, pending, code, reason, final))

        try:
            async with asyncio.timeout(answer_timeout_s) as pending.deadline:
                self._send_transfer(target, report)
                await pending.outcome
        except TimeoutError:
            if pending.accepted:
                raise TransferFailed(f"the transfer to {target} was accepted, but no outcome came "
                                     f"within {result_timeout_s:g} s") from None
            raise TransferFailed(f"no answer to the REFER to {target} within {answer_timeout_s:g} s") from None
        finally:
            if self._transfer is pending:
                self._transfer = None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.clear()
            self.cleared({})  # the call is over: no answer is waited for
            if self._transfer is not None and not self._transfer.outcome.done():
                self._transfer.outcome.set_exception(TransferFailed(
                    f"the call ended before the transfer to {self._transfer.target} completed"))
            self._on_close()

    def _transfer_status(self, pending: _Transfer, code: int, reason: str, final: bool) -> None:
        if pending.outcome.done():  # timed out, or the call ended
            return
        if code // 100 == 2:
            self.hung_up = EndReason.TRANSFERRED  # the SIP thread is sending the BYE
            pending.outcome.set_result(None)
        elif final or not 100 <= code < 300:
            if code == 0:
                message = f"the transfer to {pending.target} failed: {reason}"
            elif pending.accepted:
                message = f"the transfer to {pending.target} failed: {code} {reason}"
            else:
                message = f"the caller's side refused the transfer to {pending.target}: {code} {reason}"
            pending.outcome.set_exception(TransferFailed(message, code or None))
        elif not pending.accepted:
            pending.accepted = True
            if pending.deadline is not None:
                loop = asyncio.get_running_loop()
                pending.deadline.reschedule(loop.time() + pending.result_timeout_s)

    def progress(self, taken: dict[int, int]) -> None:
        """Count frames the SIP side took, per playback key (keys no longer playing are
        ignored); a playback all of whose frames were taken is FINISHED."""
        for key, count in taken.items():
            playback = self._playing.get(key)
            if playback is None:  # cleared meanwhile
                continue
            playback.played(count)
            if playback.frames_played >= playback.frames:
                del self._playing[key]
                playback.settle(PlaybackState.FINISHED)
