"""`app/bench/der.py`: the diarization error rate the benchmark and the tests report."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bench.der import Turn, der, read_rttm


def test_labels_are_matched_whatever_their_names() -> None:
    reference = [Turn(0.0, 2.0, "A"), Turn(2.0, 4.0, "B")]
    assert der(reference, [Turn(0.0, 2.0, "x"), Turn(2.0, 4.0, "y")]).rate == 0.0


def test_missed_false_alarm_and_confusion_add_up() -> None:
    reference = [Turn(0.0, 2.0, "A"), Turn(2.0, 4.0, "B")]
    score = der(reference, [Turn(0.0, 3.0, "x"), Turn(5.0, 6.0, "x")])
    assert score.total_s == pytest.approx(4.0)
    assert score.missed_s == pytest.approx(1.0)  # 3-4 s: nobody
    assert score.false_alarm_s == pytest.approx(1.0)  # 5-6 s: nobody spoke
    assert score.confusion_s == pytest.approx(1.0)  # 2-3 s: B heard as A's label
    assert score.rate == pytest.approx(0.75)


def test_a_collar_forgives_boundaries(tmp_path: Path) -> None:
    rttm = tmp_path / "r.rttm"
    rttm.write_text("SPEAKER f 1 0.000 2.000 <NA> <NA> A <NA> <NA>\nSPEAKER f 1 2.000 2.000 <NA> <NA> B <NA> <NA>\n")
    reference = read_rttm(rttm)
    late = [Turn(0.0, 2.2, "x"), Turn(2.2, 4.0, "y")]
    assert der(reference, late).rate > 0
    assert der(reference, late, collar_s=0.25).rate == 0.0
