"""bench pauses: how pauses are labelled and how the trade-off table counts them."""

import numpy as np

from app.bench.devsets import Item
from app.bench.pauses import Pause, _label, report
from app.settings import TurnSettings


def item(reference: str) -> Item:
    return Item("x", reference, np.zeros(0, np.float32))


def test_only_the_last_pause_of_a_finished_sentence_is_a_finished_turn() -> None:
    seen = [(0.9, 0.8), (0.2, None), (0.99, 0.95)]
    assert [p.label for p in _label("speech", item("One, two, three."), seen)] == ["mid", "mid", "finished"]
    assert _label("speech", item("produced the block books,"), seen)[-1].label == "unfinished-end"


def test_the_table_counts_fast_finished_turns_and_mid_sentence_pauses_called_finished() -> None:
    pauses = [Pause("speech", "a", "finished", 0.98, 0.9), Pause("speech", "b", "finished", 0.98, 0.6),
              Pause("speech", "a", "mid", 0.95, 0.9), Pause("speech", "b", "mid", 0.1, 0.95),
              Pause("speech", "c", "unfinished-end", 0.99, 0.99)]
    table = report(pauses, TurnSettings())
    shipped = next(line for line in table.splitlines() if line.endswith("<- shipped"))
    # At 0.7 / 0.85: one of two finished turns is fast; one of two mid pauses is called finished.
    assert shipped.split()[:2] == ["0.70", "0.85"] and shipped.count("50 % /  50 %") == 2, table
    assert "2 finished, 2 mid, 1 unfinished-end" in table
