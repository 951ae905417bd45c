"""The outbound side of a SIP call: what the caller hears (`SipMedia`, a `CallMedia`).

Three threads take part, and only `FrameQueue` is shared between them:

    loop          SipMedia.play(pcm, rate) -> frames_of(..., 8000) -> FrameQueue.put
    media clock   FramePlayer.onFrameRequested (sip/call.py), every 20 ms -> FrameQueue.take
                  -> pjsua2's conference bridge -> the call's RTP stream
    media clock   -> `on_progress()` (a `loop.call_soon_threadsafe` hand-over), at most one
                  outstanding: when a playback's last frame is taken, or every
                  PROGRESS_FRAMES frames -> SipMedia._progress on the loop -> Playback.played,
                  Playback.settle(FINISHED)

So `Playback.frames_played` counts the frames the bridge actually took (it lags by up to
PROGRESS_FRAMES while playing, and is exact when a playback finishes or is cleared), and a
playback is FINISHED as soon as its last frame has gone to the RTP stream.

`SipMedia.transfer(target)` moves the caller elsewhere with a REFER: the SIP thread sends it
and reports its progress (a `TransferReport`) back through `post`; a 2xx in the caller's NOTIFY
is success (the SIP thread then hangs up, and the call ends `TRANSFERRED`), a refusal or a
failure raises `TransferFailed` and the call goes on. Nothing here imports pjsua2.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.calls.info import EndReason
from app.calls.media import MediaUnsupported, Playback, PlaybackState, check_sip_uri, frames_of

SAMPLE_RATE = 8000  # the conference bridge's rate: what FramePlayer hands it
# While a playback plays, the media thread reports progress every this many frames (0.5 s);
# its end is reported at once. Two hand-overs a second per call instead of fifty.
PROGRESS_FRAMES = 25
# How long transfer() waits for the REFER's answer (a live peer answers at once; over UDP
# pjsua2 retransmits it meanwhile), and then, once it was accepted, for the outcome: the
# caller's side is calling the target, which may ring for a while.
REFER_ANSWER_S = 5.0
TRANSFER_RESULT_S = 30.0

# A transfer's progress, called on the SIP thread as report(code, reason, final): the REFER's
# 2xx comes as (100, "Accepted", False), then each NOTIFY's sipfrag status (final once the
# subscription ends); a refused REFER as its answer (e.g. 603), one never sent as (0, why, True).
TransferReport = Callable[[int, str, bool], None]

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


class FrameQueue:
    """One call's outbound 20 ms frames in play order; thread-safe (a lock, no asyncio).

    The loop `put`s and `clear`s and `collect`s; pjsua2's media clock thread `take`s and
    counts what it took per playback key. `on_progress` is called from `take` (so it must be
    a thread-safe hand-over that does not block) when a playback's last frame is taken or
    PROGRESS_FRAMES frames went unreported, and not again until the loop has `collect`ed.
    """

    def __init__(self, on_progress: Callable[[], object]) -> None:
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._frames: deque[tuple[int, bytes, bool]] = deque()  # (key, frame, last of its playback)
        self._taken: dict[int, int] = {}  # frames taken per key since the last collect
        self._unreported = 0
        self._pending = False  # an on_progress hand-over is on its way to the loop

    def put(self, key: int, frames: list[bytes]) -> None:
        """Queue one playback's frames (loop)."""
        last = len(frames) - 1
        with self._lock:
            self._frames.extend((key, frame, i == last) for i, frame in enumerate(frames))

    def take(self) -> bytes | None:
        """The next frame to play, or None when there is nothing to play (media thread)."""
        with self._lock:
            if not self._frames:
                return None
            key, frame, last = self._frames.popleft()
            self._taken[key] = self._taken.get(key, 0) + 1
            self._unreported += 1
            report = not self._pending and (last or self._unreported >= PROGRESS_FRAMES)
            if report:
                self._pending = True
        if report:
            self._on_progress()
        return frame

    def collect(self) -> dict[int, int]:
        """Frames taken per playback key since the last collect (loop)."""
        with self._lock:
            return self._collect()

    def clear(self) -> dict[int, int]:
        """Drop every queued frame; returns what was taken since the last collect (loop)."""
        with self._lock:
            self._frames.clear()
            return self._collect()

    def _collect(self) -> dict[int, int]:
        taken, self._taken = self._taken, {}
        self._unreported = 0
        self._pending = False
        return taken


class SipMedia:
    """`CallMedia` for one SIP call (see the module docstring for how frames cross threads).

    `post(fn)` runs `fn` on the loop from any thread; `hang_up(reason)` asks the SIP thread
    to end the call with a BYE, after which the call ends with `reason`; `on_close()` runs
    when the call is over (`aclose`), so the SIP leg can be hung up if it is still up;
    `transfer(target, report)` asks the SIP thread to send a REFER and report its progress
    (`TransferReport`), hanging up once it succeeded. All methods but `frames.take` are for
    the event loop.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, post: Callable[[Callable[[], None]], object], hang_up: Callable[[EndReason], None],
                 on_close: Callable[[], None], transfer: Callable[[str, TransferReport], None]) -> None:
        self.frames = FrameQueue(lambda: post(self._progress))
        self.hung_up: EndReason | None = None
        self._hang_up = hang_up
        self._on_close = on_close
        self._post = post
        self._send_transfer = transfer
        self._transfer: _Transfer | None = None
        self._playing: dict[int, Playback] = {}  # by key, in play order
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
        # Count what the bridge took up to now first: a playback whose last frame just went
        # is FINISHED, not interrupted.
        self._apply(self.frames.clear())
        stopped = list(self._playing.values())
        self._playing.clear()
        for playback in stopped:
            playback.settle(PlaybackState.INTERRUPTED)
        return stopped

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

    def _progress(self) -> None:
        self._apply(self.frames.collect())

    def _apply(self, taken: dict[int, int]) -> None:
        for key, count in taken.items():
            playback = self._playing.get(key)
            if playback is None:  # cleared meanwhile
                continue
            playback.played(count)
            if playback.frames_played >= playback.frames:
                del self._playing[key]
                playback.settle(PlaybackState.FINISHED)
