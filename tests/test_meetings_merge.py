"""`app/meetings/merge.py`: finals of several participants come out in meeting-time order."""

from __future__ import annotations

import asyncio

from service_helpers import until

from app.meetings.merge import TimeOrderMerger


async def test_a_final_waits_for_an_earlier_utterance_of_someone_else() -> None:
    out: list[str] = []
    merger: TimeOrderMerger[str] = TimeOrderMerger(out.append, hold_s=30.0)
    merger.started("alice", 0, 1.0)
    merger.started("bob", 0, 2.0)
    merger.final("bob", 0, 2.0, "bob: later")  # recognised first, but bob began after alice
    assert out == []
    merger.final("alice", 0, 1.0, "alice: earlier")
    assert out == ["alice: earlier", "bob: later"]
    merger.started("bob", 1, 5.0)
    merger.final("alice", 1, 6.0, "alice: after bob's start")
    assert out[2:] == []
    merger.finished("bob")  # bob's stream ended: his open utterance will have no final
    assert out[2:] == ["alice: after bob's start"]
    merger.close()


async def test_nothing_is_held_longer_than_hold_s() -> None:
    out: list[str] = []
    merger: TimeOrderMerger[str] = TimeOrderMerger(out.append, hold_s=0.05)
    merger.started("alice", 0, 1.0)  # noise: Whisper will hear nothing, no final comes
    merger.final("bob", 0, 2.0, "bob")
    assert out == []
    await until(lambda: out == ["bob"])
    merger.close()


async def test_drain_releases_everything_in_order() -> None:
    out: list[str] = []
    merger: TimeOrderMerger[str] = TimeOrderMerger(out.append, hold_s=30.0)
    merger.started("carol", 0, 0.5)
    merger.final("bob", 0, 3.0, "b")
    merger.final("alice", 0, 2.0, "a")
    merger.drain()
    assert out == ["a", "b"]
    await asyncio.sleep(0)
    merger.close()
